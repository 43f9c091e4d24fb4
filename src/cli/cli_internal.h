/*
 * cli_internal — helpers shared by the src/cli/cli*.c files. Not used outside src/cli.
 */
#ifndef WARREN_CLI_CLI_INTERNAL_H
#define WARREN_CLI_CLI_INTERNAL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "cli/client.h"
#include "core/buf.h"

#define CLI_DEFAULT_URL "http://127.0.0.1:7070"

/* Exit statuses. */
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2
#define CLI_EXIT_TIMEOUT 124
#define CLI_EXIT_API 125

/* Outcome of cli_api_call(). Every failure has been reported on stderr already. */
enum cli_result {
    CLI_OK = 0,
    CLI_EAPI = -1,         /* the daemon answered with an error status */
    CLI_EUNREACHABLE = -2, /* could not connect to the daemon */
    CLI_ETRANSPORT = -3,   /* the exchange failed (connection lost, malformed answer, ...) */
    CLI_EINTR = -4,        /* cancelled by a signal (client.cancel); nothing printed */
};

/* A progress bar on stderr (cli_progress.c): drawn only when `enabled` (stderr is a terminal
 * and no --quiet) and the transfer is over `min_bytes`; `label` (may be NULL) prefixes it. */
struct cli_progress {
    bool enabled;
    bool shown; /* a line was drawn: finish it with a newline */
    uint64_t min_bytes;
    const char *label;
    uint64_t total; /* 0: unknown */
    uint64_t done;
    double start, last;
};
void cli_progress_start(struct cli_progress *p, uint64_t total);
void cli_progress_add(struct cli_progress *p, size_t n);
void cli_progress_set(struct cli_progress *p, uint64_t done, uint64_t total);
/* Draws the final state (when ok) and ends the line. */
void cli_progress_finish(struct cli_progress *p, bool ok);
/* "12.3 MiB" */
void cli_human_bytes(char *out, size_t n, double v);

/* Commands (argv[0] is the subcommand name). Each returns an exit status. */
int cli_cmd_run(int argc, char **argv);
int cli_cmd_exec(int argc, char **argv);
int cli_cmd_create(int argc, char **argv);
int cli_cmd_ps(int argc, char **argv);
int cli_cmd_rm(int argc, char **argv);
int cli_cmd_info(int argc, char **argv);
int cli_cmd_start(int argc, char **argv);
int cli_cmd_commands(int argc, char **argv);
int cli_cmd_logs(int argc, char **argv);
int cli_cmd_attach(int argc, char **argv);
int cli_cmd_cp(int argc, char **argv);
int cli_cmd_stop(int argc, char **argv);
int cli_cmd_kill(int argc, char **argv);
int cli_cmd_pull(int argc, char **argv);
int cli_cmd_images(int argc, char **argv);
int cli_cmd_rmi(int argc, char **argv);
int cli_cmd_import(int argc, char **argv);
int cli_cmd_export(int argc, char **argv);
int cli_cmd_snapshot(int argc, char **argv);
int cli_cmd_fork(int argc, char **argv);
int cli_cmd_build(int argc, char **argv);
int cli_cmd_volume(int argc, char **argv);
/* `-v NAME:/PATH[:ro|:rw]` of create and run: appends {name, path, read_only} to body's
 * "volumes" (made if missing). Returns 0, or -1 after printing a usage error. */
int cli_volume_arg(json_t *body, const char *cmd, const char *arg);
int cli_cmd_pool(int argc, char **argv);
/* `warren start SANDBOX...` without a command: start stopped sandboxes again (cli_cmd_start
 * decides which form it is). */
int cli_sandbox_start(int argc, char **argv);

/* Print the help text of `cmd` (a known subcommand) to `f`. Returns false if unknown. */
bool cli_print_help(const char *cmd, FILE *f);

/* The getopt outcome every command shares: 'h' prints cmd's help (exit status 0); anything else
 * (an unknown option, a missing argument) prints a hint (CLI_EXIT_USAGE). */
int cli_common_opt(const char *cmd, int opt);

/* Report a usage error: "warren CMD: <message>" and a hint to use --help. Returns
 * CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A copy of argv for getopt_long whose argv[0] reads "warren CMD" (so getopt's own messages do),
 * written into `prog`. Resets getopt (optind = 0). Returns NULL on allocation failure; free()
 * the result. */
char **cli_getopt_argv(int argc, char **argv, char *prog, size_t progsz);

/* Open a client for $WARREN_URL (or the default). Prints the error and returns -1 on failure. */
int cli_client_open(struct client *c);

/* One API call. body: request JSON (borrowed) or NULL. out: receives the parsed JSON body of a
 * 2xx answer (new reference, NULL when the body is empty); may be NULL. what: prefix for the
 * error message ("warren: <what>: <message>") unless the message already names it; may be NULL. */
enum cli_result cli_api_call(struct client *c, const char *method, const char *path, json_t *body,
                             json_t **out, const char *what);

/* Print the error of a non-2xx answer like cli_api_call() does ("warren: <what>: <message>"). */
void cli_report_api_error(const struct client_response *resp, const char *what);

/* Append "/v1/sandboxes/<id, escaped>" to `b`. Returns 0 or -ENOMEM. */
int cli_path_sandbox(buf_t *b, const char *id);

/* Append "/v1/templates/<name, escaped as one segment>" to `b`. Returns 0 or -ENOMEM. */
int cli_path_template(buf_t *b, const char *name);

/* Print a template (pull, import, snapshot): as JSON, or as "NAME DIGEST". Returns the exit
 * status (CLI_EXIT_FAIL when stdout cannot be written). */
int cli_print_template(json_t *tpl, bool json);

/* Parse "K=V" into `obj`[K] = V. If there is no '=' and `from_env` is set, the value is taken from
 * the CLI's own environment (and the entry is skipped when unset, like docker). Returns 0, or
 * prints a usage error and returns -1. */
int cli_kv_add(json_t *obj, const char *cmd, const char *opt, const char *arg, bool from_env);

/* Parse a timeout in seconds (> 0, finite). Returns 0 or -1 (after a usage error). */
int cli_parse_seconds(const char *cmd, const char *opt, const char *arg, double *out);

/* Print `j` to stdout as indented JSON plus a newline. Returns 0 or -1 on a write error. */
int cli_print_json(json_t *j);

/* `ps` and `commands`: GETs `path` and prints its array `key` as JSON (json), one `id_key` per
 * line (quiet), or with print_table. Returns the exit status; failures are reported. */
int cli_print_list(const char *path, const char *key, const char *id_key, bool json, bool quiet,
                   void (*print_table)(json_t *list));

/* base64 (standard alphabet, padded) of `n` bytes, appended to `out`. Returns 0 or -ENOMEM. */
int cli_b64_encode(buf_t *out, const void *p, size_t n);
/* Decode base64 text into `out`. Returns 0, -EINVAL on malformed input, or -ENOMEM. */
int cli_b64_decode(buf_t *out, const char *s, size_t n);

/* ---- signals (cli_signal.c) ------------------------------------------------------------ */

/* Signal flags, the CLI's only global mutable state besides the saved terminal mode
 * (cli_tty.c). cli_signal_caught: the first of SIGINT/SIGTERM/SIGHUP received while the handlers
 * of cli_signals_setup() are installed (0 if none). cli_winch_caught: set on SIGWINCH, cleared by
 * whoever acts on it. */
extern volatile sig_atomic_t cli_signal_caught;
extern volatile sig_atomic_t cli_winch_caught;

#define CLI_NSIGNALS 4 /* SIGINT, SIGTERM, SIGHUP, SIGWINCH */

/* Saved signal state while a command runs. While installed, SIGINT/SIGTERM/SIGHUP/SIGWINCH are
 * blocked and only delivered inside waits that use `wait_mask` (ppoll), so a flag can be checked
 * and a wait entered without a race; SIGPIPE is ignored (a closed stdout shows up as EPIPE). A
 * signal ignored by whoever started us stays ignored. */
struct cli_sigstate {
    sigset_t old_mask;  /* the mask before */
    sigset_t wait_mask; /* old_mask minus the signals we handle: used while waiting */
    struct sigaction old_act[CLI_NSIGNALS];
    bool installed[CLI_NSIGNALS];
    struct sigaction old_pipe;
};

/* Install the handlers (clearing both flags) and set c->wait_mask (c may be NULL). */
void cli_signals_setup(struct cli_sigstate *st, struct client *c);
/* Deliver what is pending to our handlers, put the old handlers and mask back, and clear
 * c->wait_mask and c->cancel (c may be NULL). */
void cli_signals_restore(struct cli_sigstate *st, struct client *c);

/* ---- output of streamed commands (cli_stream.c) ------------------------------------------ */

/* Where a command's two streams stand: the absolute offsets of the next bytes to write to fd 1
 * (stdout) and fd 2 (stderr). Chunks are placed by their offset, so a chunk received again after
 * a reconnection is not written twice. */
struct cli_output {
    uint64_t off[2];
    int write_error; /* -errno of the first failed write to fd 1/2, 0 if none */
};

/* Handle a "stdout"/"stderr" (with data_b64 or data) or "gap" message of the streaming protocol.
 * Returns 1 when `msg` was one of those (written, or skipped as already seen), 0 when it is
 * another type, -EPROTO (malformed: reported on stderr) or the -errno of a failed write (also
 * kept in write_error; not reported). */
int cli_output_handle(struct cli_output *o, json_t *msg, const char *type);

/* A streamed command (exec/ws) or a detached command's output (commands/{cid}/stream). */
struct cli_stream_req {
    const char *sandbox;    /* id or name */
    json_t *execute;        /* exec: the execute message (borrowed); NULL: attach to command_id */
    const char *command_id; /* attach mode: the command */
    bool forward_stdin;     /* exec: send fd 0 as input (then eof); without, eof at once */
    bool follow;            /* attach mode: until the command ends (else see `until`) */
    uint64_t until[2];      /* attach mode without follow: stop once both offsets are reached
                             * (or after 0.5 s of silence, or at the exit message) */
    bool kill_on_abort;     /* kill the command if we give up (signal, stdout closed, ...) */
    const struct cli_sigstate *sig; /* installed signal state, or NULL (default handling) */
    double timeout;                 /* exec: the timeout asked for (0: none), for the message */
};

/* Run the stream, reconnecting (up to 5 attempts in a row) with the offsets reached when the
 * connection drops. Exec mode returns the command's exit status (128+N if killed by signal N,
 * 124 on timeout, 125 for errors, 128+N when we were interrupted by signal N); attach mode
 * returns 0, 1 for errors, or 128+N. */
int cli_stream_run(struct client *c, const struct cli_stream_req *req);

/* ---- terminals (cli_tty.c) --------------------------------------------------------------- */

struct cli_tty_req {
    const char *sandbox;     /* id or name */
    const char *terminal_id; /* the terminal to attach to */
    bool forward_stdin;      /* send fd 0 to the terminal (raw mode when it is a tty) */
    bool detach_keys;        /* Ctrl-] d detaches (the session then returns 0, *detached set) */
    const struct cli_sigstate *sig; /* installed signal state (required) */
};

/* The local window size (TIOCGWINSZ of fd 0, 1 or 2; else 80x24), clamped to what the daemon
 * accepts. */
void cli_tty_winsize(int *cols, int *rows);

/* Create a terminal: POST .../terminals {cols, rows, argv?, env?, cwd?} (argv/env borrowed, may
 * be NULL). *tid receives its id (malloc'd). Returns a cli_result (errors printed). */
enum cli_result cli_tty_create(struct client *c, const char *sandbox, json_t *argv, json_t *env,
                               const char *cwd, char **tid);

/* Best effort, errors ignored: DELETE the terminal (hangs up its program, removes it). */
void cli_tty_delete(struct client *c, const char *sandbox, const char *tid);

/* Attach to a terminal and pump bytes both ways until its program exits (returns its exit
 * status), we detach (0), a signal arrives (128+N) or the connection is lost for good (125).
 * The local terminal is in raw mode meanwhile and restored on every way out (also from atexit
 * and from fatal-signal handlers). */
int cli_tty_session(struct client *c, const struct cli_tty_req *req, bool *detached);

/* Restore the local terminal if cli_tty_session() put it in raw mode. Async-signal-safe. */
void cli_tty_restore(void);

#endif
