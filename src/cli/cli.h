/*
 * cli — the client side of the `warren` binary: every subcommand except `serve`.
 *
 * The CLI talks to the daemon over HTTP (src/cli/client.h) at $WARREN_URL (default
 * http://127.0.0.1:7070; `unix:/path.sock` is accepted too).
 */
#ifndef WARREN_CLI_CLI_H
#define WARREN_CLI_CLI_H

#include <stdio.h>

/* Run one CLI subcommand. argv[0] is the subcommand ("run", "exec", "create", "ps", "rm", "info",
 * "start", "commands", "logs", "attach", "help"; "--help"/"-h" mean "help"), argv[1..argc-1] its
 * arguments. Returns the process exit status: 0 success, 1 failure (API error, daemon
 * unreachable, `rm` of an id that failed), 2 usage error; `run`/`exec`/`attach` return the
 * command's exit status (128+N if killed by signal N, 124 on timeout, 125 when the daemon reports
 * an error, 128+N when interrupted by signal N; `attach` 0 when detached). */
int cli_main(int argc, char **argv);

/* The top-level usage text (the list of subcommands), for main() to print when needed. */
void cli_print_usage(FILE *f);

#endif
