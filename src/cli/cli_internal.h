/*
 * cli_internal — helpers shared by the src/cli/cli*.c files. Not used outside src/cli.
 */
#ifndef WARREN_CLI_CLI_INTERNAL_H
#define WARREN_CLI_CLI_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
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

/* Commands (argv[0] is the subcommand name). Each returns an exit status. */
int cli_cmd_run(int argc, char **argv);
int cli_cmd_exec(int argc, char **argv);
int cli_cmd_create(int argc, char **argv);
int cli_cmd_ps(int argc, char **argv);
int cli_cmd_rm(int argc, char **argv);
int cli_cmd_info(int argc, char **argv);

/* Print the help text of `cmd` (a known subcommand) to `f`. Returns false if unknown. */
bool cli_print_help(const char *cmd, FILE *f);

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

/* Append "/v1/sandboxes/<id, escaped>" to `b`. Returns 0 or -ENOMEM. */
int cli_path_sandbox(buf_t *b, const char *id);

/* Parse "K=V" into `obj`[K] = V. If there is no '=' and `from_env` is set, the value is taken from
 * the CLI's own environment (and the entry is skipped when unset, like docker). Returns 0, or
 * prints a usage error and returns -1. */
int cli_kv_add(json_t *obj, const char *cmd, const char *opt, const char *arg, bool from_env);

/* Parse a timeout in seconds (> 0, finite). Returns 0 or -1 (after a usage error). */
int cli_parse_seconds(const char *cmd, const char *opt, const char *arg, double *out);

/* Print `j` to stdout as indented JSON plus a newline. Returns 0 or -1 on a write error. */
int cli_print_json(json_t *j);

/* Write all of `p` to `fd` (retrying short writes and EINTR). Returns 0 or -errno. */
int cli_write_all(int fd, const void *p, size_t n);

/* base64 (standard alphabet, padded) of `n` bytes, appended to `out`. Returns 0 or -ENOMEM. */
int cli_b64_encode(buf_t *out, const void *p, size_t n);
/* Decode base64 text into `out`. Returns 0, -EINVAL on malformed input, or -ENOMEM. */
int cli_b64_decode(buf_t *out, const char *s, size_t n);

#endif
