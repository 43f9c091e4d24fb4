/*
 * cli_exec — `warren run` (one-shot sandbox), `warren exec` (command in an existing sandbox) and
 * `warren start` (= `exec -d`, a detached command).
 *
 * run/exec come in three forms:
 *   - streamed (the default): output is written as it arrives (cli_stream.c, exec/ws); -i sends
 *     stdin to the command, otherwise the command's stdin is empty;
 *   - terminal (-t): the command runs on a terminal of the sandbox (cli_tty.c); with -i the local
 *     terminal is put in raw mode and everything typed goes to it;
 *   - --json: the one-shot POST .../exec, whose whole result is printed as JSON at the end.
 *
 * Signals: while a command runs, SIGINT/SIGTERM/SIGHUP are blocked and only delivered inside
 * waits (ppoll with the original mask), where a handler records the signal number
 * (cli_signal.c). The command is then killed (streamed: a "kill" message; --json: the exec
 * request is abandoned, which makes the daemon kill it; terminal: the terminal is deleted),
 * `run` removes its sandbox, and the exit status is 128+signal.
 */
#include "cli/cli_internal.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Read all of fd 0 into `out`. A closed stdin counts as empty. Returns 0 or -errno. */
static int cli_exec_read_stdin(buf_t *out)
{
    for (;;) {
        int r = buf_reserve(out, 65536);
        if (r < 0)
            return r;
        ssize_t n = read(0, out->data + out->len, 65536);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EBADF)
                return 0;
            return -errno;
        }
        out->len += (size_t)n;
        out->data[out->len] = '\0';
    }
}

struct cli_exec_opts {
    const char *cmd; /* "run", "exec" or "start" */
    json_t *env;     /* object: for run the sandbox env, otherwise the command env */
    const char *name;
    const char *image;    /* run --image */
    const char *template; /* run --template */
    const char *cwd;
    const char *user; /* --user */
    double timeout;
    bool has_timeout;
    bool json;
    bool interactive; /* -i */
    bool tty;         /* -t */
    bool detach;      /* exec -d */
    bool open_stdin;  /* start --open-stdin */
    json_t *create;   /* run: extra fields of the sandbox ("volumes" of -v), owned */
};

/* What to do with stdin in a request body. */
enum cli_stdin_mode {
    CLI_STDIN_NONE,  /* no stdin member */
    CLI_STDIN_READ,  /* read all of fd 0 and send it (stdin_b64; empty: "") */
    CLI_STDIN_EMPTY, /* "stdin": "" (the command's stdin is closed at once) */
};

/* Build a request body from CMD... (argv) and the options. with_env: put o->env in it. Returns
 * NULL after printing. */
static json_t *cli_exec_build_request(struct cli_exec_opts *o, int argc, char **argv, bool with_env,
                                      enum cli_stdin_mode stdin_mode)
{
    json_t *req = json_object();
    json_t *jargv = json_array();
    buf_t in = BUF_INIT, b64 = BUF_INIT;

    if (!req || !jargv)
        goto oom;
    for (int i = 0; i < argc; i++) {
        json_t *s = json_string(argv[i]);
        if (!s) {
            cli_usage_error(o->cmd, "argument %d is not valid UTF-8", i + 1);
            goto fail;
        }
        json_array_append_new(jargv, s);
    }
    /* No command (run --image IMAGE): the image's own (Entrypoint + Cmd). */
    if (argc > 0)
        json_object_set_new(req, "argv", jargv);
    else
        json_decref(jargv);
    jargv = NULL;
    if (with_env && json_object_size(o->env) > 0)
        json_object_set(req, "env", o->env);
    if (o->cwd) {
        json_t *s = json_string(o->cwd);
        if (!s) {
            cli_usage_error(o->cmd, "--cwd: not valid UTF-8");
            goto fail;
        }
        json_object_set_new(req, "cwd", s);
    }
    if (o->user) {
        json_t *s = json_string(o->user);
        if (!s) {
            cli_usage_error(o->cmd, "--user: not valid UTF-8");
            goto fail;
        }
        json_object_set_new(req, "user", s);
    }
    if (o->has_timeout)
        json_object_set_new(req, "timeout_s", json_real(o->timeout));
    if (stdin_mode == CLI_STDIN_READ) {
        int r = cli_exec_read_stdin(&in);
        if (r < 0) {
            fprintf(stderr, "warren: cannot read stdin: %s\n", strerror(-r));
            goto fail;
        }
        if (in.len > 0) {
            if (cli_b64_encode(&b64, in.data, in.len) < 0)
                goto oom;
            json_object_set_new(req, "stdin_b64", json_stringn(b64.data, b64.len));
        } else {
            stdin_mode = CLI_STDIN_EMPTY;
        }
    }
    if (stdin_mode == CLI_STDIN_EMPTY)
        json_object_set_new(req, "stdin", json_string(""));
    buf_free(&in);
    buf_free(&b64);
    return req;
oom:
    fprintf(stderr, "warren: out of memory\n");
fail:
    json_decref(jargv);
    json_decref(req);
    buf_free(&in);
    buf_free(&b64);
    return NULL;
}

/* Print a one-shot exec result (--json) and compute the exit status. */
static int cli_exec_report(json_t *res)
{
    json_t *jcode = json_object_get(res, "exit_code");
    json_t *jsig = json_object_get(res, "signal");
    bool timed_out = json_is_true(json_object_get(res, "timed_out"));
    int code;

    if (json_is_integer(jcode))
        code = (int)json_integer_value(jcode);
    else if (json_is_integer(jsig))
        code = 128 + (int)json_integer_value(jsig);
    else
        code = CLI_EXIT_API;
    if (code < 0 || code > 255)
        code = CLI_EXIT_API;
    if (timed_out)
        code = CLI_EXIT_TIMEOUT;

    if (cli_print_json(res) < 0)
        return CLI_EXIT_API;
    return code;
}

static int cli_exec_api_exit(enum cli_result r)
{
    switch (r) {
    case CLI_OK:
        return 0;
    case CLI_EUNREACHABLE:
        return CLI_EXIT_FAIL;
    default:
        return CLI_EXIT_API;
    }
}

/* Parse the options shared by run, exec and start. Returns -1 to continue, or an exit status. */
static int cli_exec_parse(struct cli_exec_opts *o, int argc, char **argv, int *first_arg)
{
    enum {
        OPT_NAME = 256,
        OPT_TIMEOUT,
        OPT_JSON,
        OPT_NO_STDIN,
        OPT_OPEN_STDIN,
        OPT_IMAGE,
        OPT_TEMPLATE
    };
    static const struct option run_opts[] = {
        {"env", required_argument, NULL, 'e'},
        {"name", required_argument, NULL, OPT_NAME},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"template", required_argument, NULL, OPT_TEMPLATE},
        {"cwd", required_argument, NULL, 'w'},
        {"workdir", required_argument, NULL, 'w'},
        {"user", required_argument, NULL, 'u'},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"interactive", no_argument, NULL, 'i'},
        {"stdin", no_argument, NULL, 'i'},
        {"tty", no_argument, NULL, 't'},
        {"volume", required_argument, NULL, 'v'},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const struct option exec_opts[] = {
        {"env", required_argument, NULL, 'e'},
        {"cwd", required_argument, NULL, 'w'},
        {"workdir", required_argument, NULL, 'w'},
        {"user", required_argument, NULL, 'u'},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"interactive", no_argument, NULL, 'i'},
        {"stdin", no_argument, NULL, 'i'},
        {"no-stdin", no_argument, NULL, OPT_NO_STDIN},
        {"tty", no_argument, NULL, 't'},
        {"detach", no_argument, NULL, 'd'},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const struct option start_opts[] = {
        {"env", required_argument, NULL, 'e'},
        {"cwd", required_argument, NULL, 'w'},
        {"workdir", required_argument, NULL, 'w'},
        {"user", required_argument, NULL, 'u'},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"interactive", no_argument, NULL, 'i'},
        {"stdin", no_argument, NULL, 'i'},
        {"open-stdin", no_argument, NULL, OPT_OPEN_STDIN},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const struct option *opts = exec_opts;
    const char *shorts = "+e:w:u:itdh";
    if (strcmp(o->cmd, "run") == 0) {
        opts = run_opts;
        shorts = "+e:w:u:v:ith";
    } else if (strcmp(o->cmd, "start") == 0) {
        opts = start_opts;
        shorts = "+e:w:u:ih";
    }
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    int ret = -1, opt;

    if (!av)
        return CLI_EXIT_FAIL;
    while ((opt = getopt_long(argc, av, shorts, opts, NULL)) != -1) {
        switch (opt) {
        case 'e':
            if (cli_kv_add(o->env, o->cmd, "--env", optarg, true) < 0)
                ret = CLI_EXIT_USAGE;
            break;
        case 'w':
            o->cwd = optarg;
            break;
        case 'u':
            o->user = optarg;
            break;
        case 'i':
            o->interactive = true;
            break;
        case 't':
            o->tty = true;
            break;
        case 'd':
            o->detach = true;
            break;
        case 'v':
            if ((!o->create && !(o->create = json_object())) ||
                cli_volume_arg(o->create, o->cmd, optarg) < 0)
                ret = CLI_EXIT_USAGE;
            break;
        case OPT_NAME:
            o->name = optarg;
            break;
        case OPT_IMAGE:
            o->image = optarg;
            break;
        case OPT_TEMPLATE:
            o->template = optarg;
            break;
        case OPT_TIMEOUT:
            if (cli_parse_seconds(o->cmd, "--timeout", optarg, &o->timeout) < 0)
                ret = CLI_EXIT_USAGE;
            o->has_timeout = true;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_NO_STDIN:
            o->interactive = false;
            break;
        case OPT_OPEN_STDIN:
            o->open_stdin = true;
            break;
        case 'h':
            cli_print_help(o->cmd, stdout);
            ret = 0;
            break;
        default:
            fprintf(stderr, "Try 'warren %s --help'.\n", o->cmd);
            ret = CLI_EXIT_USAGE;
            break;
        }
        if (ret >= 0)
            break;
    }
    *first_arg = optind;
    free(av);
    if (ret >= 0)
        return ret;
    if (o->tty && o->json)
        return cli_usage_error(o->cmd, "--json cannot be combined with -t");
    if (o->tty && o->has_timeout)
        return cli_usage_error(o->cmd, "--timeout cannot be combined with -t");
    /* terminals (POST .../terminals) run as the sandbox's default user: they take no "user" */
    if (o->tty && o->user)
        return cli_usage_error(o->cmd, "--user cannot be combined with -t");
    if (o->detach && (o->tty || o->json))
        return cli_usage_error(o->cmd, "-d cannot be combined with -t or --json");
    if (o->open_stdin && o->interactive)
        return cli_usage_error(o->cmd, "--open-stdin cannot be combined with -i");
    if (o->image && o->template)
        return cli_usage_error(o->cmd, "--image cannot be combined with --template");
    return -1;
}

/* Skip an optional "--" between SANDBOX and CMD (getopt already ate one before the first
 * non-option). */
static int cli_exec_skip_dashes(int argc, char **argv, int i)
{
    return (i < argc && strcmp(argv[i], "--") == 0) ? i + 1 : i;
}

/* A JSON array of the strings argv[0..argc-1] (NULL after a usage error). */
static json_t *cli_exec_argv_json(const char *cmd, int argc, char **argv)
{
    json_t *a = json_array();
    for (int i = 0; a && i < argc; i++) {
        json_t *s = json_string(argv[i]);
        if (!s) {
            cli_usage_error(cmd, "argument %d is not valid UTF-8", i + 1);
            json_decref(a);
            return NULL;
        }
        json_array_append_new(a, s);
    }
    return a;
}

/* The command in sandbox `sandbox`, once it exists and the signals are set up: streamed, on a
 * terminal, or one-shot (--json). `req` is the exec request/execute message (NULL with -t).
 * own_sandbox: `run` (the terminal need not be deleted, and cannot be detached from). */
static int cli_exec_in(struct client *c, struct cli_sigstate *sigst, struct cli_exec_opts *o,
                       const char *sandbox, json_t *req, int argc, char **argv, bool own_sandbox)
{
    if (o->json) {
        buf_t path = BUF_INIT;
        json_t *res = NULL;
        int ret;
        if (cli_path_sandbox(&path, sandbox) < 0 || buf_append_str(&path, "/exec") < 0) {
            buf_free(&path);
            fprintf(stderr, "warren: out of memory\n");
            return CLI_EXIT_API;
        }
        c->cancel = &cli_signal_caught;
        enum cli_result r = cli_api_call(c, "POST", path.data, req, &res, NULL);
        c->cancel = NULL;
        if (r == CLI_EINTR)
            ret = 128 + (cli_signal_caught ? cli_signal_caught : SIGINT);
        else if (r != CLI_OK)
            ret = cli_exec_api_exit(r);
        else if (!json_is_object(res)) {
            fprintf(stderr, "warren: the daemon's exec answer is not an object\n");
            ret = CLI_EXIT_API;
        } else
            ret = cli_exec_report(res);
        buf_free(&path);
        json_decref(res);
        return ret;
    }
    if (!o->tty) {
        struct cli_stream_req sreq = {
            .sandbox = sandbox,
            .execute = req,
            .forward_stdin = o->interactive,
            .kill_on_abort = true,
            .sig = sigst,
            .timeout = o->has_timeout ? o->timeout : 0,
        };
        return cli_stream_run(c, &sreq);
    }

    json_t *jargv = cli_exec_argv_json(o->cmd, argc, argv);
    char *tid = NULL;
    int ret;
    if (!jargv)
        return CLI_EXIT_USAGE;
    c->cancel = &cli_signal_caught;
    enum cli_result r =
        cli_tty_create(c, sandbox, jargv, own_sandbox ? NULL : o->env, o->cwd, &tid);
    c->cancel = NULL;
    json_decref(jargv);
    if (r == CLI_EINTR)
        return 128 + (cli_signal_caught ? cli_signal_caught : SIGINT);
    if (r != CLI_OK)
        return cli_exec_api_exit(r);
    struct cli_tty_req treq = {
        .sandbox = sandbox,
        .terminal_id = tid,
        .forward_stdin = o->interactive,
        .detach_keys = !own_sandbox,
        .sig = sigst,
    };
    bool detached = false;
    ret = cli_tty_session(c, &treq, &detached);
    if (detached)
        fprintf(stderr, "warren: detached from terminal %s; reattach with: warren attach %s %s\n",
                tid, sandbox, tid);
    else if (!own_sandbox)
        cli_tty_delete(c, sandbox, tid);
    free(tid);
    return ret;
}

int cli_cmd_run(int argc, char **argv)
{
    struct cli_exec_opts o = {.cmd = "run", .env = json_object()};
    struct cli_sigstate sigst;
    struct client c;
    json_t *create = NULL, *req = NULL, *sb = NULL;
    buf_t path = BUF_INIT;
    char *id = NULL;
    int first, ret;

    if (!o.env) {
        fprintf(stderr, "warren: out of memory\n");
        return CLI_EXIT_API;
    }
    ret = cli_exec_parse(&o, argc, argv, &first);
    if (ret >= 0)
        goto out_nofree;
    if (first >= argc && !o.tty && !o.image && !o.template) {
        ret = cli_usage_error("run", "missing the command to run");
        goto out_nofree;
    }

    create = o.create ? json_incref(o.create) : json_object();
    if (!create)
        goto oom;
    if (json_object_size(o.env) > 0)
        json_object_set(create, "env", o.env);
    if (o.image)
        json_object_set_new(create, "image", json_string(o.image));
    if (o.template)
        json_object_set_new(create, "template", json_string(o.template));
    if (o.name) {
        json_t *s = json_string(o.name);
        if (!s) {
            ret = cli_usage_error("run", "--name: not valid UTF-8");
            goto out_nofree;
        }
        json_object_set_new(create, "name", s);
    }
    if (!o.tty) {
        req = cli_exec_build_request(&o, argc - first, argv + first, false,
                                     o.json && o.interactive ? CLI_STDIN_READ : CLI_STDIN_NONE);
        if (!req) {
            ret = CLI_EXIT_USAGE;
            goto out_nofree;
        }
    }
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out_nofree;
    }

    cli_signals_setup(&sigst, &c);
    /* Creation is not cancellable: if it is interrupted we could not know which sandbox to
     * remove. A signal arriving meanwhile is acted upon once it is done. */
    enum cli_result r = cli_api_call(&c, "POST", "/v1/sandboxes", create, &sb, NULL);
    if (r != CLI_OK) {
        ret = cli_exec_api_exit(r);
        goto out;
    }
    const char *sid = json_string_value(json_object_get(sb, "id"));
    if (!sid || !(id = strdup(sid))) {
        fprintf(stderr, "warren: the daemon's answer has no sandbox id\n");
        ret = CLI_EXIT_API;
        goto out;
    }

    if (!cli_signal_caught)
        ret = cli_exec_in(&c, &sigst, &o, id, req, argc - first, argv + first, true);
    if (cli_signal_caught)
        ret = 128 + cli_signal_caught;

    /* Always remove the sandbox, even when interrupted (then not cancellable). */
    c.cancel = NULL;
    if (cli_path_sandbox(&path, id) < 0)
        goto oom_close;
    if (cli_api_call(&c, "DELETE", path.data, NULL, NULL, NULL) != CLI_OK)
        fprintf(stderr, "warren: sandbox %s may not have been removed\n", id);
    goto out;

oom_close:
    fprintf(stderr, "warren: out of memory\n");
    ret = CLI_EXIT_API;
out:
    cli_signals_restore(&sigst, &c);
    client_close(&c);
    goto out_nofree;
oom:
    fprintf(stderr, "warren: out of memory\n");
    ret = CLI_EXIT_API;
out_nofree:
    free(id);
    buf_free(&path);
    json_decref(create);
    json_decref(req);
    json_decref(sb);
    json_decref(o.env);
    json_decref(o.create);
    return ret;
}

/* `start` / `exec -d`: POST .../commands and print the command id. */
static int cli_exec_start(struct cli_exec_opts *o, const char *sandbox, int argc, char **argv)
{
    struct client c;
    json_t *req = NULL, *res = NULL;
    buf_t path = BUF_INIT;
    int ret;

    if (cli_path_sandbox(&path, sandbox) < 0 || buf_append_str(&path, "/commands") < 0) {
        fprintf(stderr, "warren: out of memory\n");
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    req = cli_exec_build_request(o, argc, argv, true,
                                 o->interactive  ? CLI_STDIN_READ
                                 : o->open_stdin ? CLI_STDIN_NONE
                                                 : CLI_STDIN_EMPTY);
    if (!req) {
        ret = CLI_EXIT_USAGE;
        goto out;
    }
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    if (cli_api_call(&c, "POST", path.data, req, &res, NULL) != CLI_OK) {
        ret = CLI_EXIT_FAIL;
    } else if (o->json) {
        ret = cli_print_json(res) < 0 ? CLI_EXIT_FAIL : 0;
    } else {
        const char *cid = json_string_value(json_object_get(res, "command_id"));
        if (!cid) {
            fprintf(stderr, "warren: the daemon's answer has no command id\n");
            ret = CLI_EXIT_FAIL;
        } else {
            printf("%s\n", cid);
            ret = fflush(stdout) == 0 ? 0 : CLI_EXIT_FAIL;
        }
    }
    client_close(&c);
out:
    buf_free(&path);
    json_decref(req);
    json_decref(res);
    return ret;
}

/* exec and start: SANDBOX [--] CMD... */
static int cli_exec_main(const char *cmd, int argc, char **argv)
{
    struct cli_exec_opts o = {.cmd = cmd, .env = json_object()};
    struct cli_sigstate sigst;
    struct client c;
    json_t *req = NULL;
    int first, ret;

    if (!o.env) {
        fprintf(stderr, "warren: out of memory\n");
        return CLI_EXIT_API;
    }
    ret = cli_exec_parse(&o, argc, argv, &first);
    if (ret >= 0)
        goto out;
    if (first >= argc) {
        ret = cli_usage_error(cmd, "missing the sandbox id or name");
        goto out;
    }
    const char *sandbox = argv[first];
    first = cli_exec_skip_dashes(argc, argv, first + 1);
    if (first >= argc && !o.tty) {
        ret = cli_usage_error(cmd, "missing the command to run");
        goto out;
    }
    if (o.detach || strcmp(cmd, "start") == 0) {
        ret = cli_exec_start(&o, sandbox, argc - first, argv + first);
        goto out;
    }
    if (!o.tty) {
        req = cli_exec_build_request(&o, argc - first, argv + first, true,
                                     o.json && o.interactive ? CLI_STDIN_READ : CLI_STDIN_NONE);
        if (!req) {
            ret = CLI_EXIT_USAGE;
            goto out;
        }
    }
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    cli_signals_setup(&sigst, &c);
    ret = cli_exec_in(&c, &sigst, &o, sandbox, req, argc - first, argv + first, false);
    if (cli_signal_caught)
        ret = 128 + cli_signal_caught;
    cli_signals_restore(&sigst, &c);
    client_close(&c);
out:
    json_decref(req);
    json_decref(o.env);
    return ret;
}

int cli_cmd_exec(int argc, char **argv)
{
    return cli_exec_main("exec", argc, argv);
}

int cli_cmd_start(int argc, char **argv)
{
    /* `warren start SANDBOX` alone starts a stopped sandbox, as `docker start` does; anything
     * more is a detached command (`warren start SANDBOX CMD...`). */
    if (argc == 2 && argv[1][0] != '-')
        return cli_sandbox_start(argc, argv);
    return cli_exec_main("start", argc, argv);
}
