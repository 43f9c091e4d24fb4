/*
 * keys — tmux-style key names ("Enter", "C-c", "M-x", "Up", "F5") to the bytes a terminal sends.
 *
 * Sequences are xterm's in normal cursor-key mode: Up = ESC [ A, Home = ESC [ H, End = ESC [ F,
 * PageUp = ESC [ 5 ~, F1..F4 = ESC O P..S, F5 = ESC [ 15 ~ ... F12 = ESC [ 24 ~; Enter = CR,
 * BSpace = DEL (0x7f), Tab = HT, BTab = ESC [ Z, Escape = ESC, Space = ' '.
 *
 * Key names (case-sensitive; tmux matches them case-insensitively, but a literal word like "end"
 * or "up" sent as text must not turn into a key): Enter, Tab, BTab, Escape, BSpace, Space, Up,
 * Down, Left, Right, Home, End, PageUp / PgUp / PPage, PageDown / PgDn / NPage, IC / Insert,
 * DC / Delete, F1..F12.
 *
 * Modifier prefixes, in any order and either case: "C-" (or "^") control, "M-" meta, "S-" shift.
 * The key after them is a key name or a single character (any UTF-8 character for M-):
 *   - C-<char>: a..z (either case) -> 0x01..0x1a; @ and Space -> 0x00; [ \ ] ^ _ -> 0x1b..0x1f;
 *     ? -> 0x7f. Other characters and named keys other than Space take no C- (not a key name).
 *   - M-<key>: ESC followed by the key's bytes (M-x = ESC x, M-Enter = ESC CR, M-C-a = ESC 0x01).
 *   - S-<letter> is the upper-case letter; S-Tab is BTab; S- is ignored on Enter, Space, BSpace
 *     and Escape.
 *   - On arrows, Home, End, Insert, Delete, PageUp/Down and F1..F12 any modifiers use xterm's
 *     parameter 1 + shift + 2*meta + 4*control: C-Up = ESC [ 1 ; 5 A, S-F5 = ESC [ 15 ; 2 ~,
 *     M-F1 = ESC [ 1 ; 3 P.
 * A lone character without modifiers is not a key name (its bytes are the literal text anyway).
 */
#ifndef WARREN_SESSION_KEYS_H
#define WARREN_SESSION_KEYS_H

#include "core/buf.h"

/* Appends the bytes for one key name to `out`. Returns 1 if `name` was a key name (bytes
 * appended), 0 if it is not (nothing appended: callers then send the string literally, as tmux
 * send-keys does), or -ENOMEM (nothing appended). */
int keys_append(buf_t *out, const char *name);

#endif
