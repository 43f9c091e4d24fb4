/*
 * asciicast — an in-memory asciicast v2 recording of a terminal session.
 *
 * The recording is newline-delimited JSON: a header object, then one event array per line:
 *   {"version": 2, "width": 80, "height": 24, "timestamp": 1700000000, "env": {"TERM": ..., ...}}
 *   [0.248848, "o", "hello\r\n"]      output from the program
 *   [1.001376, "i", "ls\r"]           input sent to the program
 *   [2.500000, "r", "100x30"]         resize to COLSxROWS
 * Event times are seconds since the start of the recording, given by the caller (best taken from
 * a monotonic clock), written with 6 decimals and never decreasing: a time below the previous
 * event's is raised to it. Event strings are always valid UTF-8, JSON-escaped.
 *
 * Byte offsets address the logical stream of everything ever recorded (header first), so a reader
 * can poll with the offset it was given last time even after old events were dropped. Not
 * thread-safe.
 */
#ifndef WARREN_SESSION_ASCIICAST_H
#define WARREN_SESSION_ASCIICAST_H

#include <stddef.h>
#include <stdint.h>

struct asciicast;

/* Starts a recording of a cols x rows terminal that started at wall-clock `start_time` (seconds
 * since the epoch; only used for the header's "timestamp", its integer part). `term` and `shell` go
 * into the header's "env" (each may be NULL to leave it out; invalid UTF-8 in them becomes U+FFFD).
 * The recording is kept in memory up to `max_bytes` (header included): when an event would exceed
 * it, the oldest events are dropped whole. The header and the newest event are always kept, even if
 * they alone exceed max_bytes. Returns NULL on ENOMEM. */
struct asciicast *asciicast_new(int cols, int rows, double start_time, const char *term,
                                const char *shell, size_t max_bytes);
/* Frees the recording; NULL is fine. */
void asciicast_free(struct asciicast *c);

/* Records an output event [t, "o", data], t in seconds since the start. `data` may end inside a
 * multi-byte UTF-8 sequence: the incomplete tail is held back and prepended to the next call's
 * data, so each event holds whole characters (an event is not written if nothing but a held-back
 * tail remains). Invalid bytes become U+FFFD (one per maximal invalid subsequence). Returns 0 or
 * -ENOMEM (the event is then not recorded). */
int asciicast_output(struct asciicast *c, double t, const char *data, size_t len);
/* The same for input sent to the program ("i" events), with its own held-back tail. */
int asciicast_input(struct asciicast *c, double t, const char *data, size_t len);
/* Records a resize event [t, "r", "COLSxROWS"]. Returns 0 or -ENOMEM. */
int asciicast_resize(struct asciicast *c, double t, int cols, int rows);

/* The recording as text from byte offset `since` of the logical stream: header + events, one JSON
 * document per line, each ending in '\n'. since = 0 returns everything kept (header included).
 * Only whole lines are returned: a `since` inside a line starts at the next line, and a `since`
 * inside dropped events starts at the oldest kept event (without the header). *next receives the
 * offset to pass next time (the end of the stream, also when `since` lies beyond it). Returns a
 * malloc'd NUL-terminated string with *len set (possibly "" with *len 0), or NULL on ENOMEM. */
char *asciicast_read(struct asciicast *c, uint64_t since, size_t *len, uint64_t *next);

/* Offset one past the newest event: what *next of a read to the end would be. */
uint64_t asciicast_end(const struct asciicast *c);

#endif
