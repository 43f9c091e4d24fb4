/*
 * cli_commands — detached commands and terminals of a sandbox: `warren commands` (list),
 * `warren logs` (a command's output, optionally followed) and `warren attach` (a terminal).
 * `warren start` is in cli_exec.c (it shares the options of exec).
 */
#include "cli/cli_internal.h"
#include "core/util.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { OPT_JSON = 256, OPT_NO_STDIN, OPT_TAIL };

/* "/v1/sandboxes/<sb>/commands[/<cid>]" */
static int cli_commands_path(buf_t *b, const char *sandbox, const char *cid)
{
    if (cli_path_sandbox(b, sandbox) < 0 || buf_append_str(b, "/commands") < 0)
        return -1;
    if (cid && (buf_append_str(b, "/") < 0 || client_append_escaped(b, cid, 0) < 0))
        return -1;
    return 0;
}

/* The COMMAND column: the argv joined by spaces, or the shell string. Appended to `b`. */
static void cli_commands_describe(buf_t *b, json_t *cmd)
{
    json_t *argv = json_object_get(cmd, "argv");
    const char *shell = json_string_value(json_object_get(cmd, "shell"));
    if (json_is_array(argv)) {
        size_t i;
        json_t *a;
        json_array_foreach(argv, i, a)
        {
            const char *s = json_string_value(a);
            if (i > 0)
                buf_append_str(b, " ");
            if (s && *s && !strpbrk(s, " \t\n'\"\\$`"))
                buf_append_str(b, s);
            else
                buf_appendf(b, "'%s'", s ? s : "");
        }
    } else if (shell) {
        buf_append_str(b, shell);
    }
    if (!b->data)
        buf_append_str(b, "-");
    for (size_t i = 0; i < b->len; i++) /* keep the table one line per command */
        if (b->data[i] == '\n' || b->data[i] == '\t' || b->data[i] == '\r')
            b->data[i] = ' ';
}

static void cli_commands_print_table(json_t *list)
{
    enum { NCOLS = 6 };
    static const char *const heads[NCOLS] = {"COMMAND ID", "STATE",   "EXIT",
                                             "PID",        "STARTED", "COMMAND"};
    size_t n = json_array_size(list);
    char **cells = calloc(n * NCOLS + 1, sizeof(char *));
    int width[NCOLS];

    if (!cells) {
        fprintf(stderr, "warren: out of memory\n");
        return;
    }
    for (int k = 0; k < NCOLS; k++)
        width[k] = (int)strlen(heads[k]);
    for (size_t i = 0; i < n; i++) {
        json_t *cmd = json_array_get(list, i);
        const char *id = json_string_value(json_object_get(cmd, "command_id"));
        const char *state = json_string_value(json_object_get(cmd, "state"));
        const char *started = json_string_value(json_object_get(cmd, "started_at"));
        json_t *code = json_object_get(cmd, "exit_code");
        json_t *pid = json_object_get(cmd, "pid");
        buf_t desc = BUF_INIT;
        char **row = cells + i * NCOLS;

        cli_commands_describe(&desc, cmd);
        row[0] = strdup(id ? id : "-");
        row[1] = strdup(state ? state : "-");
        char num[48];
        if (json_is_integer(code)) {
            snprintf(num, sizeof(num), "%lld%s", (long long)json_integer_value(code),
                     json_is_true(json_object_get(cmd, "timed_out")) ? " (timeout)" : "");
            row[2] = strdup(num);
        } else {
            row[2] = strdup("-");
        }
        if (json_is_integer(pid) && json_integer_value(pid) > 0) {
            snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(pid));
            row[3] = strdup(num);
        } else {
            row[3] = strdup("-");
        }
        row[4] = strdup(started ? started : "-");
        row[5] = buf_steal(&desc);
        for (int k = 0; k < NCOLS; k++) {
            if (!row[k])
                row[k] = strdup("?");
            int w = row[k] ? (int)strlen(row[k]) : 1;
            if (w > width[k])
                width[k] = w;
        }
    }
    for (int k = 0; k < NCOLS - 1; k++)
        printf("%-*s  ", width[k], heads[k]);
    printf("%s\n", heads[NCOLS - 1]);
    for (size_t i = 0; i < n; i++) {
        char **row = cells + i * NCOLS;
        for (int k = 0; k < NCOLS - 1; k++)
            printf("%-*s  ", width[k], row[k] ? row[k] : "?");
        printf("%s\n", row[NCOLS - 1] ? row[NCOLS - 1] : "?");
    }
    for (size_t i = 0; i < n * NCOLS; i++)
        free(cells[i]);
    free(cells);
}

int cli_cmd_commands(int argc, char **argv)
{
    static const struct option opts[] = {
        {"quiet", no_argument, NULL, 'q'},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    bool json = false, quiet = false;
    int ret = -1, opt;
    buf_t path = BUF_INIT;

    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+qh", opts, NULL)) != -1) {
        if (opt == OPT_JSON)
            json = true;
        else if (opt == 'q')
            quiet = true;
        else
            ret = cli_common_opt("commands", opt);
    }
    if (ret >= 0)
        goto out;
    if (optind >= argc) {
        ret = cli_usage_error("commands", "missing the sandbox id or name");
        goto out;
    }
    if (optind + 1 < argc) {
        ret = cli_usage_error("commands", "unexpected argument '%s'", av[optind + 1]);
        goto out;
    }
    if (cli_commands_path(&path, argv[optind], NULL) < 0) {
        fprintf(stderr, "warren: out of memory\n");
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    ret =
        cli_print_list(path.data, "commands", "command_id", json, quiet, cli_commands_print_table);
out:
    free(av);
    buf_free(&path);
    return ret;
}

static int logs_write(void *arg, const void *data, size_t len)
{
    return util_write_all(STDOUT_FILENO, data, len);
}

/* `warren logs SANDBOX`: the sandbox's log, as the daemon sends it (followed: as it comes). */
static int logs_sandbox(const char *sandbox, bool follow, const char *tail)
{
    buf_t path = BUF_INIT;
    struct client c;
    struct client_response resp;
    int ret = CLI_EXIT_FAIL;
    if (cli_path_sandbox(&path, sandbox) < 0 || buf_append_str(&path, "/logs?follow=") < 0 ||
        buf_append_str(&path, follow ? "1" : "0") < 0 ||
        (tail && (buf_append_str(&path, "&tail=") < 0 || buf_append_str(&path, tail) < 0))) {
        fprintf(stderr, "warren: out of memory\n");
        buf_free(&path);
        return CLI_EXIT_FAIL;
    }
    if (cli_client_open(&c) < 0) {
        buf_free(&path);
        return CLI_EXIT_FAIL;
    }
    struct client_stream s = {.write_body = logs_write};
    int r = client_request_stream(&c, "GET", path.data, NULL, &s, &resp);
    if (r < 0)
        fprintf(stderr, "warren: logs: %s\n", c.error[0] ? c.error : strerror(-r));
    else if (resp.status < 200 || resp.status > 299)
        cli_report_api_error(&resp, NULL);
    else
        ret = 0;
    client_response_free(&resp);
    client_close(&c);
    buf_free(&path);
    return ret;
}

int cli_cmd_logs(int argc, char **argv)
{
    static const struct option opts[] = {
        {"follow", no_argument, NULL, 'f'},
        {"tail", required_argument, NULL, OPT_TAIL},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    bool follow = false;
    const char *tail = NULL;
    int ret = -1, opt;
    buf_t path = BUF_INIT;
    json_t *cmd = NULL;
    struct client c;

    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+fh", opts, NULL)) != -1) {
        if (opt == 'f')
            follow = true;
        else if (opt == OPT_TAIL)
            tail = optarg;
        else
            ret = cli_common_opt("logs", opt);
    }
    if (ret >= 0)
        goto out;
    if (tail && (!*tail || strspn(tail, "0123456789") != strlen(tail))) {
        ret = cli_usage_error("logs", "--tail wants a number of lines, got '%s'", tail);
        goto out;
    }
    if (optind >= argc) {
        ret = cli_usage_error("logs", "missing the sandbox id or name");
        goto out;
    }
    if (optind + 1 == argc) {
        ret = logs_sandbox(argv[optind], follow, tail);
        goto out;
    }
    if (tail) {
        ret = cli_usage_error("logs", "--tail is for a sandbox's log (no COMMAND_ID)");
        goto out;
    }
    if (optind + 2 < argc) {
        ret = cli_usage_error("logs", "unexpected argument '%s'", av[optind + 2]);
        goto out;
    }
    const char *sandbox = argv[optind], *cid = argv[optind + 1];
    if (cli_commands_path(&path, sandbox, cid) < 0) {
        fprintf(stderr, "warren: out of memory\n");
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    /* Where the output stands now: without -f, that is how far to read. */
    if (cli_api_call(&c, "GET", path.data, NULL, &cmd, NULL) != CLI_OK) {
        ret = CLI_EXIT_FAIL;
    } else {
        json_t *so = json_object_get(cmd, "stdout_bytes"),
               *se = json_object_get(cmd, "stderr_bytes");
        struct cli_stream_req req = {
            .sandbox = sandbox,
            .command_id = cid,
            .follow = follow,
            .until = {json_is_integer(so) ? (uint64_t)json_integer_value(so) : 0,
                      json_is_integer(se) ? (uint64_t)json_integer_value(se) : 0},
        };
        ret = cli_stream_run(&c, &req);
    }
    client_close(&c);
out:
    free(av);
    buf_free(&path);
    json_decref(cmd);
    return ret;
}

int cli_cmd_attach(int argc, char **argv)
{
    static const struct option opts[] = {
        {"no-stdin", no_argument, NULL, OPT_NO_STDIN},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    bool forward = true;
    int ret = -1, opt;
    struct client c;
    struct cli_sigstate sigst;

    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+h", opts, NULL)) != -1) {
        if (opt == OPT_NO_STDIN)
            forward = false;
        else
            ret = cli_common_opt("attach", opt);
    }
    if (ret >= 0)
        goto out;
    if (optind + 2 > argc) {
        ret = cli_usage_error("attach", optind >= argc ? "missing the sandbox id or name"
                                                       : "missing the terminal id");
        goto out;
    }
    if (optind + 2 < argc) {
        ret = cli_usage_error("attach", "unexpected argument '%s'", av[optind + 2]);
        goto out;
    }
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    cli_signals_setup(&sigst, &c);
    struct cli_tty_req req = {
        .sandbox = argv[optind],
        .terminal_id = argv[optind + 1],
        .forward_stdin = forward,
        .detach_keys = true,
        .sig = &sigst,
    };
    bool detached = false;
    ret = cli_tty_session(&c, &req, &detached);
    if (detached)
        fprintf(stderr, "warren: detached from terminal %s\n", argv[optind + 1]);
    cli_signals_restore(&sigst, &c);
    client_close(&c);
out:
    free(av);
    return ret;
}
