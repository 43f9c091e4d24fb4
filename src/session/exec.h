/*
 * exec — one command run to completion in a sandbox, with its output collected in memory.
 *
 * exec_start() sends SPAWN to the sandbox's init; the init answers with the pid and the pipe fds,
 * which the loop then drains into per-stream buffers (bounded by max_output: the rest is read and
 * counted, so the command never blocks on a full pipe). When the init reports the command's exit,
 * what is left in the pipes is read and the callback fires. The command's own background
 * processes may keep running and holding the pipes; their later output is not collected.
 *
 * A timeout, exec_cancel() (e.g. the HTTP client went away) or the sandbox's death ends the
 * command: the first two SIGKILL its whole process group; the callback still fires exactly once.
 *
 * Ownership: the exec owns copies of everything in the spec. The struct exec is freed after the
 * callback returns and its handles are closed; do not use it after the callback.
 */
#ifndef WARREN_SESSION_EXEC_H
#define WARREN_SESSION_EXEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/buf.h"
#include "session/sandbox.h"

struct exec_spec {
    const char *const *argv; /* NULL-terminated, non-empty */
    const char *const *env;  /* NULL-terminated "K=V" list: the complete environment */
    const char *cwd;
    const void *stdin_data;
    size_t stdin_len;
    double timeout_s;  /* > 0 */
    size_t max_output; /* per stream */
};

struct exec_result {
    int error;             /* 0, or -errno when the command could not run at all */
    const char *error_msg; /* with error: why (static string) */
    int exit_code;         /* 128 + signal when signalled */
    int signal;            /* 0 if none */
    int timed_out;
    buf_t out, err; /* collected output (owned by the exec; valid during the cb) */
    int out_truncated, err_truncated;
    double duration_ms;
};

struct exec;
typedef void (*exec_done_cb)(struct exec *ex, struct exec_result *res, void *arg);

/* Returns 0 or -errno (-EPIPE: the sandbox is not running; -E2BIG: argv/env too large). */
int exec_start(struct sandbox *sb, const struct exec_spec *spec, exec_done_cb cb, void *arg,
               struct exec **out);
/* Kills the command's process group; the callback still fires (with the signal). */
void exec_cancel(struct exec *ex);

/* Hooks for sandbox.c: messages from the init, and the end of the sandbox. */
void exec_on_spawned(struct exec *ex, pid_t pid, int err, const int *fds, int nfds);
void exec_on_exit(struct exec *ex, int status);
void exec_on_sandbox_gone(struct exec *ex);
uint32_t exec_tag(const struct exec *ex);
struct exec *exec_next(const struct exec *ex);

#endif
