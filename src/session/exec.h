/*
 * exec — one command run to completion in a sandbox, with its output collected in memory.
 *
 * Built on proc (proc.h): output goes into per-stream buffers bounded by max_output (the rest is
 * read and dropped, so the command never blocks on a full pipe); the callback fires when the
 * command's main process has exited and what it wrote is read. The command's own background
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

#include <jansson.h>
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
    int oom_killed; /* SIGKILLed while the sandbox's OOM-kill count went up */
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

/* The environment of a command in `sb`: defaults (PATH, HOME — the image User's home if it has
 * one, else /root —, HOSTNAME, LANG, TERM=`term`, and the proxy variables when the sandbox has an
 * egress proxy) < its image's Env (an image sandbox) < the sandbox's env and secrets < `env` (an
 * object of strings; may be NULL). A malloc'd NULL-terminated "K=V" list to free with
 * util_free_strv(), or NULL when out of memory. */
char **exec_build_env(const struct sandbox *sb, json_t *env, const char *term);

#endif
