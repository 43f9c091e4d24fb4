/*
 * shell — persistent shells: one long-lived interactive bash (sh when the sandbox has no bash)
 * per shell, so cwd, variables, functions, aliases and background jobs persist between runs.
 *
 * How a run works, and why:
 *  - the shell runs on a pseudo-terminal with echo and output post-processing off, in
 *    interactive mode with job control but without line editing: every command line gets its
 *    own process group, so a timeout can interrupt exactly the foreground job (the terminal's
 *    foreground group, read with TIOCGPGRP) while background jobs and the shell survive;
 *  - the command travels as an ANSI-C quoted string that the shell evals (so unbalanced quotes
 *    or a syntax error cannot swallow the protocol), with stdin from /dev/null (a command that
 *    reads stdin sees EOF instead of eating the protocol);
 *  - completion is a line with a per-run random marker and the exit status, printed after the
 *    command on the terminal; everything before it is the run's output (stdout and stderr
 *    interleaved as on a terminal). The marker is preceded by a newline, so output without a
 *    trailing newline is recognised too, and a command cannot fake it without knowing the
 *    nonce;
 *  - timeout: SIGINT to the foreground group, then SIGKILL to it; if the shell itself was busy
 *    (a builtin loop), ^C interrupts it and the marker line is sent again. A shell that does not
 *    come back is replaced;
 *  - `exit` in a run ends the shell: that run reports shell_exited, and the next run starts a
 *    fresh shell and reports shell_restarted.
 * Runs on one shell are queued and executed one at a time.
 *
 * Ownership: the sandbox's list owns its shells (shell_destroy or sandbox destruction end them).
 * A run's callback fires exactly once; the result is valid during the callback. Loop thread only.
 */
#ifndef WARREN_SESSION_SHELL_H
#define WARREN_SESSION_SHELL_H

#include <stddef.h>

#include "core/buf.h"
#include "session/proc.h"

#define SHELL_ID_MAX 20

struct shell;
struct shell_run;

struct shell_result {
    int error;             /* 0, or -errno when the run could not happen */
    const char *error_msg; /* with error */
    int exit_code;
    int timed_out;
    int shell_exited;    /* the command ended the shell */
    int shell_restarted; /* a fresh shell was started for this run */
    buf_t output;
    int truncated;
    double duration_ms;
};

typedef void (*shell_run_cb)(struct shell_result *res, void *arg);

/* `env` is the complete environment ("K=V", NULL-terminated; copied), `cwd` the initial
 * directory. */
int shell_create(struct sandbox *sb, const char *const *env, const char *cwd, struct shell **out);
struct shell *shell_find(struct sandbox *sb, const char *id);
struct shell *shell_next(const struct shell *sh);
const char *shell_id(const struct shell *sh);
struct shell_info {
    const char *id;
    const char *state; /* "starting", "idle", "running", "exited" */
    double created_at; /* epoch seconds */
    int queued;        /* runs waiting or running */
};
void shell_info(const struct shell *sh, struct shell_info *out);
/* Queues a run. Returns 0 or -errno (-ENOMEM). */
int shell_run(struct shell *sh, const char *command, double timeout_s, size_t max_output,
              shell_run_cb cb, void *arg, struct shell_run **out);
/* The client is gone: interrupt the run if it is executing, drop it if queued. The callback
 * still fires. */
void shell_run_cancel(struct shell_run *run);
/* Ends the shell (SIGKILL to its session); pending runs complete with an error. */
void shell_destroy(struct shell *sh);
void shell_drop_all(struct sandbox *sb);

#endif
