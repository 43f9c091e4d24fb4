/*
 * command — a detached command: started in a sandbox, its stdout and stderr kept in
 * offset-addressed rings (core/ring.h) that any number of watchers (WebSocket streams) read
 * from their own offsets, reconnecting at will. It outlives its clients; after its exit it stays
 * listable for a grace period, then it is reaped.
 *
 * Flow control: with no lossless watcher, output is read as fast as the command writes and the
 * rings overwrite their oldest bytes (whoever attaches later sees a gap). While a lossless watcher
 * (what an attached client is, unless it opted out) is more than a ring's worth behind, the
 * command's pipes stop being read and the command blocks on its full pipe until it catches up.
 *
 * Durability: the rings live in memfds that the sandbox's init holds as well, with a note naming
 * the command (sandbox/proto.h), so a daemon that restarts takes the command over with its output
 * and offsets intact (command_adopt), and output written meanwhile waits in the pipes.
 *
 * Ownership: the sandbox's list holds a reference to each command until the command is reaped or
 * the sandbox is destroyed; every watcher holds one too. A command holds a reference to its
 * sandbox, so `command_sandbox()` stays valid as long as the command does. Loop thread only.
 */
#ifndef WARREN_SESSION_COMMAND_H
#define WARREN_SESSION_COMMAND_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "session/proc.h"

#define COMMAND_ID_MAX 20
#define COMMAND_RING_DEFAULT (4u << 20)
#define COMMAND_GRACE_S 600 /* exited commands stay listable this long */

struct command;
struct command_watch;

struct command_spec {
    struct proc_spec proc;
    const void *stdin_data; /* written first; stdin stays open unless close_stdin */
    size_t stdin_len;
    int close_stdin;
    double timeout_s;  /* 0 = none; on expiry the process group is SIGKILLed */
    size_t ring_bytes; /* per stream */
    json_t *describe;  /* {"argv": [...]} or {"shell": "..."}: echoed in listings (copied) */
};

enum command_state { CMD_RUNNING, CMD_EXITED, CMD_FAILED };

/* Returns 0 or -errno (as proc_start, plus -ENOMEM). The command is in the sandbox's list. */
int command_start(struct sandbox *sb, const struct command_spec *spec, struct command **out);
struct command *command_find(struct sandbox *sb, const char *id);
/* Takes over a command a previous daemon started, from what its init reports (the fds are
 * taken over in every case): same id, output and offsets; a command that ended meanwhile gets its
 * exit status once its output is read. No stdin, no timeout any more. Returns 0, -EINVAL (not a
 * command's record) or -ENOMEM. */
int command_adopt(struct sandbox *sb, const struct initctl_state *st);
/* True when a process's note (proc_spec.note) is a command's. */
int command_note_is_ours(const void *note, size_t len);
/* The next command in the sandbox's list (sb->commands is the first). */
struct command *command_next(const struct command *c);
const char *command_id(const struct command *c);
struct sandbox *command_sandbox(const struct command *c);
enum command_state command_state(const struct command *c);
/* Exit details once not running: exit code (128 + signal when signalled), signal (0 if none),
 * timed_out, and for CMD_FAILED a reason. */
void command_result(const struct command *c, int *exit_code, int *signal, int *timed_out,
                    const char **error);
pid_t command_pid(const struct command *c);
struct command_info {
    const char *id;
    pid_t pid;
    enum command_state state;
    int exit_code, signal, timed_out; /* once not running (see command_result) */
    const char *error;                /* CMD_FAILED: why */
    double started_at, ended_at;      /* epoch seconds; ended_at once not running */
    uint64_t stdout_bytes, stderr_bytes;
    const json_t *describe; /* {"argv": [...]} or {"shell": "..."} as started */
};
/* A snapshot of the command; the pointers stay valid while the command does. */
void command_info(const struct command *c, struct command_info *out);

int command_write(struct command *c, const void *data, size_t len);
void command_close_stdin(struct command *c);
/* Signals the command's whole process group. */
void command_kill(struct command *c, int sig);

void command_ref(struct command *c);
void command_unref(struct command *c);
/* Removes every command of a sandbox from its list (the sandbox is being destroyed). */
void command_drop_all(struct sandbox *sb);

/* Watchers. `on_update` is called when the command started (its pid is known), new output was
 * stored, or the command ended. */
struct command_watch *command_watch(struct command *c, int lossless, void (*on_update)(void *arg),
                                    void *arg);
/* Tells the command how far a watcher has read (it matters for lossless watchers). */
void command_watch_progress(struct command_watch *w, uint64_t out_off, uint64_t err_off);
void command_unwatch(struct command_watch *w);
/* Output: the total written to a stream, and copying access as ring_read(). */
uint64_t command_end(const struct command *c, enum proc_stream s);
size_t command_read(const struct command *c, enum proc_stream s, uint64_t offset, void *out,
                    size_t max, uint64_t *gap);

#endif
