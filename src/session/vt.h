/*
 * vt — a terminal screen model: feed it a program's output, read back what a terminal would show.
 *
 * Built on libvterm (xterm-compatible: cursor movement, erasing, scroll regions, SGR, wide and
 * combining characters, the alternate screen used by full-screen programs like less and vi).
 * Lines that scroll off the top of the main screen are kept as plain text in a bounded scrollback;
 * when the terminal is made taller, the newest of them move back onto the screen, as in xterm.
 * Scrollback keeps text only (no colours or attributes). The alternate screen has no scrollback.
 *
 * The input is untrusted program output: any byte sequence is accepted. Not thread-safe.
 */
#ifndef WARREN_SESSION_VT_H
#define WARREN_SESSION_VT_H

#include <stddef.h>

/* Bounds for rows (1..VT_MAX_DIM) and cols (VT_MIN_COLS..VT_MAX_DIM): the screen costs about 80
 * bytes per cell (main + alternate), and libvterm 0.1.4 crashes on a wide character in a
 * one-column terminal. */
#define VT_MAX_DIM 1000
#define VT_MIN_COLS 2
/* Replies not taken with vt_take_replies are kept up to this many bytes; later ones are dropped
 * (a program flooding queries must not grow the daemon without bound). */
#define VT_MAX_REPLIES 65536

struct vt;

/* A terminal of rows x cols (see the bounds above) whose scrollback keeps up to `history` lines
 * (0 = none). Returns NULL with errno EINVAL for a bad size or ENOMEM. */
struct vt *vt_new(int rows, int cols, size_t history);
/* Frees everything; NULL is fine. */
void vt_free(struct vt *vt);
/* Interprets `len` bytes of the program's output. Sequences split across calls (escape sequences,
 * UTF-8) are reassembled; an incomplete UTF-8 character at the end waits for the next call. Any
 * input is safe: sequences that would trip known libvterm bugs are dropped or rewritten (see
 * vt.c), invalid UTF-8 shows as U+FFFD. Never fails: should the scrollback run out of memory,
 * lines are lost from it. */
void vt_feed(struct vt *vt, const char *data, size_t len);
/* Changes the size (as after a SIGWINCH); text is not re-wrapped. Shrinking pushes lines above
 * the cursor into the scrollback, growing pulls them back. Returns 0 or -EINVAL for a bad size. */
int vt_resize(struct vt *vt, int rows, int cols);
/* The visible screen as UTF-8 text: one line per row joined with '\n' (no final newline),
 * trailing spaces of each line trimmed, trailing empty lines kept (rows lines in all). A wide
 * character appears once; combining characters follow their base. With with_history non-zero,
 * the scrollback lines (oldest first) come before the screen, each followed by '\n'. Returns a
 * malloc'd string the caller frees, or NULL on ENOMEM. */
char *vt_screen_text(struct vt *vt, int with_history);
/* The cursor position, 0-based (row 0 is the top of the screen). */
void vt_cursor(struct vt *vt, int *row, int *col);
void vt_size(struct vt *vt, int *rows, int *cols);
/* Number of lines currently in the scrollback. */
size_t vt_history_lines(struct vt *vt);
/* Bytes the terminal itself sends to the program (answers to queries like DSR "ESC[6n" or DA
 * "ESC[c"), to be written to the program's input. Returns them and forgets them: a malloc'd
 * buffer with *len set, or NULL with *len 0 when there are none (or on ENOMEM, in which case
 * they are kept for the next call). */
char *vt_take_replies(struct vt *vt, size_t *len);

#endif
