/*
 * terminal — interactive programs on a pseudo-terminal of the sandbox, with a screen model
 * (libvterm, session/vt.h) that can be read as text, keys that can be sent by name
 * (session/keys.h), an optional asciicast v2 recording (session/asciicast.h) and any number of
 * live viewers (WebSocket attach).
 *
 * The terminal's output feeds the screen model, the recording and the viewers, in that order;
 * answers the model owes the program (cursor position reports, ...) are written back to it.
 * When the program exits the terminal stays (state "exited", with its screen and recording)
 * until it is deleted or its sandbox is.
 *
 * Ownership: the sandbox's list owns its terminals. Viewers are registered with
 * terminal_watch() and must unwatch before the terminal is destroyed; on destruction they get
 * on_exit and must unwatch from it. Loop thread only.
 */
#ifndef WARREN_SESSION_TERMINAL_H
#define WARREN_SESSION_TERMINAL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "session/proc.h"

#define TERMINAL_ID_MAX 20
#define TERMINAL_MIN_COLS 20
#define TERMINAL_MAX_COLS 500
#define TERMINAL_MIN_ROWS 10
#define TERMINAL_MAX_ROWS 200

struct terminal;
struct terminal_watch;

struct terminal_spec {
    const char *const *argv; /* NULL: the sandbox's bash (sh if none) */
    const char *const *env;  /* complete environment */
    const char *cwd;
    int cols, rows;
    int record;
};

int terminal_create(struct sandbox *sb, const struct terminal_spec *spec, struct terminal **out);
struct terminal *terminal_find(struct sandbox *sb, const char *id);
struct terminal *terminal_next(const struct terminal *t);
const char *terminal_id(const struct terminal *t);
struct terminal_info {
    const char *id;
    int running;
    int exit_code; /* once not running */
    int cols, rows;
    int recording;
    double created_at; /* epoch seconds */
};
void terminal_info(const struct terminal *t, struct terminal_info *out);
int terminal_running(const struct terminal *t);

/* Input bytes for the program (recorded as "i" events). -EPIPE once it has exited. */
int terminal_write(struct terminal *t, const void *data, size_t len);
int terminal_resize(struct terminal *t, int cols, int rows);
/* The screen as text (see vt_screen_text), and the cursor. malloc'd. */
char *terminal_screen(struct terminal *t, int with_history, int *row, int *col);
void terminal_size(const struct terminal *t, int *cols, int *rows);
/* The recording from `since` (see asciicast_read); -ENOENT when not recording. */
int terminal_recording(struct terminal *t, uint64_t since, char **text, size_t *len,
                       uint64_t *next);
/* True when the terminal's foreground process group is its first process's (a shell at its
 * prompt, nothing running in the foreground) — or when the program has exited. */
int terminal_idle(struct terminal *t);
/* Time of the last output (monotonic seconds). */
double terminal_last_output(const struct terminal *t);

/* Waiting for a terminal to settle after input (keys with `block`): the wait ends as
 * TERMINAL_SETTLED once the program is back at its shell prompt (terminal_idle) and the terminal
 * has printed nothing for TERMINAL_QUIET_S, no sooner than min_wait_s after the start and, when
 * echo_wait_s > 0, only after output that came after the start or after echo_wait_s (a shell
 * that has not read the keys yet is idle too); as TERMINAL_SETTLE_TIMEOUT after max_wait_s; as
 * TERMINAL_SETTLE_EXITED at once when the program exits or the terminal is destroyed. Checked
 * every TERMINAL_SETTLE_POLL_MS. `done` runs on the loop, once, after the wait is released. */
#define TERMINAL_QUIET_S 0.15
#define TERMINAL_SETTLE_POLL_MS 50
enum terminal_settle { TERMINAL_SETTLED, TERMINAL_SETTLE_TIMEOUT, TERMINAL_SETTLE_EXITED };
struct terminal_settle_spec {
    double min_wait_s, max_wait_s, echo_wait_s;
};
struct terminal_wait;
typedef void (*terminal_settle_fn)(enum terminal_settle how, void *arg);
/* 0 (*out: the wait, for terminal_wait_cancel) or -ENOMEM. */
int terminal_wait_settled(struct terminal *t, const struct terminal_settle_spec *spec,
                          terminal_settle_fn done, void *arg, struct terminal_wait **out);
/* Ends a wait without calling its `done`. Not from inside that `done` (the wait is gone then). */
void terminal_wait_cancel(struct terminal_wait *w);

struct terminal_watch *terminal_watch(struct terminal *t,
                                      void (*on_output)(const char *data, size_t len, void *arg),
                                      void (*on_exit)(void *arg), void *arg);
/* Backpressure from a viewer that cannot take more now (its connection is backed up): while any
 * watcher holds, the program's output is not read, so the program blocks once the pseudo-terminal
 * is full, and nothing is ever dropped for a slow viewer. A viewer must release (or unwatch) once
 * it drains. */
void terminal_watch_hold(struct terminal_watch *w, int held);
void terminal_unwatch(struct terminal_watch *w);

void terminal_destroy(struct terminal *t);
void terminal_drop_all(struct sandbox *sb);

#endif
