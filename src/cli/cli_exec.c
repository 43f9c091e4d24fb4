/*
 * cli_exec — `warren run` (one-shot sandbox) and `warren exec` (command in an existing sandbox).
 *
 * Signals: while a command runs, SIGINT/SIGTERM/SIGHUP are blocked and only delivered inside the
 * client's waits (ppoll with the original mask), where a handler records the signal number. An
 * exec in flight is then abandoned (closing the connection makes the daemon kill the command's
 * process group), `run` removes its sandbox, and the exit status is 128+signal.
 */
#include "cli/cli_internal.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The signal that interrupted us (0 if none). The only global mutable state of the CLI. */
static volatile sig_atomic_t cli_signal_caught;

static void cli_exec_on_signal(int sig)
{
    if (!cli_signal_caught)
        cli_signal_caught = sig;
}

static const int cli_exec_signals[] = {SIGINT, SIGTERM, SIGHUP};
#define CLI_EXEC_NSIGNALS (sizeof(cli_exec_signals) / sizeof(cli_exec_signals[0]))

struct cli_exec_sigstate {
    sigset_t old_mask;  /* the mask before we blocked our signals */
    sigset_t wait_mask; /* old_mask minus our signals: used while waiting */
    struct sigaction old_act[CLI_EXEC_NSIGNALS];
    bool installed[CLI_EXEC_NSIGNALS];
};

static void cli_exec_signals_setup(struct cli_exec_sigstate *st, struct client *c)
{
    sigset_t block;
    sigemptyset(&block);
    for (size_t i = 0; i < CLI_EXEC_NSIGNALS; i++)
        sigaddset(&block, cli_exec_signals[i]);
    sigprocmask(SIG_BLOCK, &block, &st->old_mask);
    st->wait_mask = st->old_mask;
    cli_signal_caught = 0;
    for (size_t i = 0; i < CLI_EXEC_NSIGNALS; i++) {
        int sig = cli_exec_signals[i];
        st->installed[i] = false;
        if (sigaction(sig, NULL, &st->old_act[i]) < 0)
            continue;
        /* A signal ignored by whoever started us (nohup, `cmd &` in a script) stays ignored. */
        if (st->old_act[i].sa_handler == SIG_IGN)
            continue;
        struct sigaction sa = {.sa_handler = cli_exec_on_signal};
        sigemptyset(&sa.sa_mask);
        if (sigaction(sig, &sa, NULL) == 0) {
            st->installed[i] = true;
            sigdelset(&st->wait_mask, sig);
        }
    }
    c->wait_mask = &st->wait_mask;
}

static void cli_exec_signals_restore(struct cli_exec_sigstate *st, struct client *c)
{
    c->wait_mask = NULL;
    c->cancel = NULL;
    /* Deliver anything pending to our handler first, then put the old handlers back. */
    sigprocmask(SIG_SETMASK, &st->old_mask, NULL);
    for (size_t i = 0; i < CLI_EXEC_NSIGNALS; i++)
        if (st->installed[i])
            sigaction(cli_exec_signals[i], &st->old_act[i], NULL);
}

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
    const char *cmd; /* "run" or "exec" */
    json_t *env;     /* object: for run the sandbox env, for exec the command env */
    const char *name;
    const char *cwd;
    double timeout;
    bool has_timeout;
    bool json;
    bool send_stdin;
};

/* Build the exec request from CMD... (argv), options and stdin. Returns NULL after printing. */
static json_t *cli_exec_build_request(struct cli_exec_opts *o, int argc, char **argv, bool with_env)
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
    json_object_set_new(req, "argv", jargv);
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
    if (o->has_timeout)
        json_object_set_new(req, "timeout_s", json_real(o->timeout));
    if (o->send_stdin) {
        int r = cli_exec_read_stdin(&in);
        if (r < 0) {
            fprintf(stderr, "warren: cannot read stdin: %s\n", strerror(-r));
            goto fail;
        }
        if (in.len > 0) {
            if (cli_b64_encode(&b64, in.data, in.len) < 0)
                goto oom;
            json_object_set_new(req, "stdin_b64", json_stringn(b64.data, b64.len));
        }
    }
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

/* Write one output stream of an exec result ("stdout"/"stderr", or its "_b64" form) to fd. */
static void cli_exec_write_stream(json_t *res, const char *key, int fd)
{
    json_t *s = json_object_get(res, key);
    if (json_is_string(s)) {
        cli_write_all(fd, json_string_value(s), json_string_length(s));
        return;
    }
    char b64key[32];
    snprintf(b64key, sizeof(b64key), "%s_b64", key);
    s = json_object_get(res, b64key);
    if (!json_is_string(s))
        return;
    buf_t out = BUF_INIT;
    if (cli_b64_decode(&out, json_string_value(s), json_string_length(s)) < 0)
        fprintf(stderr, "warren: malformed %s in the daemon's answer\n", b64key);
    else
        cli_write_all(fd, out.data, out.len);
    buf_free(&out);
}

/* Present an exec result and compute the exit status. */
static int cli_exec_report(struct cli_exec_opts *o, json_t *res)
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

    if (o->json) {
        if (cli_print_json(res) < 0)
            return CLI_EXIT_API;
        return code;
    }
    cli_exec_write_stream(res, "stdout", 1);
    cli_exec_write_stream(res, "stderr", 2);
    if (json_is_true(json_object_get(res, "stdout_truncated")) ||
        json_is_true(json_object_get(res, "stderr_truncated")) ||
        json_is_true(json_object_get(res, "truncated"))) {
        bool so = json_is_true(json_object_get(res, "stdout_truncated"));
        bool se = json_is_true(json_object_get(res, "stderr_truncated"));
        fprintf(stderr, "warren: %s was truncated (max_output_bytes)\n",
                so && se ? "output"
                : so     ? "stdout"
                : se     ? "stderr"
                         : "output");
    }
    if (timed_out) {
        if (o->has_timeout)
            fprintf(stderr, "warren: command timed out after %g seconds\n", o->timeout);
        else
            fprintf(stderr, "warren: command timed out\n");
    }
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

/* Parse the options shared by run and exec. Returns -1 to continue, or an exit status. */
static int cli_exec_parse(struct cli_exec_opts *o, int argc, char **argv, int *first_arg)
{
    enum { OPT_NAME = 256, OPT_TIMEOUT, OPT_JSON, OPT_NO_STDIN };
    static const struct option run_opts[] = {
        {"env", required_argument, NULL, 'e'},
        {"name", required_argument, NULL, OPT_NAME},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"stdin", no_argument, NULL, 'i'},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const struct option exec_opts[] = {
        {"env", required_argument, NULL, 'e'},
        {"cwd", required_argument, NULL, 'w'},
        {"workdir", required_argument, NULL, 'w'},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"no-stdin", no_argument, NULL, OPT_NO_STDIN},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool is_run = strcmp(o->cmd, "run") == 0;
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    int ret = -1, opt;

    if (!av)
        return CLI_EXIT_FAIL;
    while ((opt = getopt_long(argc, av, is_run ? "+e:ih" : "+e:w:h", is_run ? run_opts : exec_opts,
                              NULL)) != -1) {
        switch (opt) {
        case 'e':
            if (cli_kv_add(o->env, o->cmd, "--env", optarg, true) < 0)
                ret = CLI_EXIT_USAGE;
            break;
        case 'w':
            o->cwd = optarg;
            break;
        case 'i':
            o->send_stdin = true;
            break;
        case OPT_NAME:
            o->name = optarg;
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
            o->send_stdin = false;
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
    return ret;
}

/* Skip an optional "--" between SANDBOX and CMD (getopt already ate one before the first
 * non-option). */
static int cli_exec_skip_dashes(int argc, char **argv, int i)
{
    return (i < argc && strcmp(argv[i], "--") == 0) ? i + 1 : i;
}

int cli_cmd_run(int argc, char **argv)
{
    struct cli_exec_opts o = {.cmd = "run", .env = json_object()};
    struct cli_exec_sigstate sigst;
    struct client c;
    json_t *create = NULL, *req = NULL, *sb = NULL, *res = NULL;
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
    if (first >= argc) {
        ret = cli_usage_error("run", "missing the command to run");
        goto out_nofree;
    }

    create = json_object();
    if (!create)
        goto oom;
    if (json_object_size(o.env) > 0)
        json_object_set(create, "env", o.env);
    if (o.name) {
        json_t *s = json_string(o.name);
        if (!s) {
            ret = cli_usage_error("run", "--name: not valid UTF-8");
            goto out_nofree;
        }
        json_object_set_new(create, "name", s);
    }
    req = cli_exec_build_request(&o, argc - first, argv + first, false);
    if (!req) {
        ret = CLI_EXIT_USAGE;
        goto out_nofree;
    }
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out_nofree;
    }

    cli_exec_signals_setup(&sigst, &c);
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
    if (cli_path_sandbox(&path, id) < 0 || buf_append_str(&path, "/exec") < 0)
        goto oom_close;

    if (!cli_signal_caught) {
        c.cancel = &cli_signal_caught;
        r = cli_api_call(&c, "POST", path.data, req, &res, NULL);
        c.cancel = NULL;
    } else {
        r = CLI_EINTR;
    }

    /* Always remove the sandbox, even when interrupted (then not cancellable). */
    buf_reset(&path);
    if (cli_path_sandbox(&path, id) < 0)
        goto oom_close;
    if (cli_api_call(&c, "DELETE", path.data, NULL, NULL, NULL) != CLI_OK)
        fprintf(stderr, "warren: sandbox %s may not have been removed\n", id);

    if (r == CLI_EINTR)
        ret = 128 + (cli_signal_caught ? cli_signal_caught : SIGINT);
    else if (r != CLI_OK)
        ret = cli_exec_api_exit(r);
    else if (!json_is_object(res)) {
        fprintf(stderr, "warren: the daemon's exec answer is not an object\n");
        ret = CLI_EXIT_API;
    } else
        ret = cli_exec_report(&o, res);
    goto out;

oom_close:
    fprintf(stderr, "warren: out of memory\n");
    ret = CLI_EXIT_API;
out:
    cli_exec_signals_restore(&sigst, &c);
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
    json_decref(res);
    json_decref(o.env);
    return ret;
}

int cli_cmd_exec(int argc, char **argv)
{
    struct cli_exec_opts o = {.cmd = "exec", .env = json_object(), .send_stdin = !isatty(0)};
    struct cli_exec_sigstate sigst;
    struct client c;
    json_t *req = NULL, *res = NULL;
    buf_t path = BUF_INIT;
    int first, ret;

    if (!o.env) {
        fprintf(stderr, "warren: out of memory\n");
        return CLI_EXIT_API;
    }
    ret = cli_exec_parse(&o, argc, argv, &first);
    if (ret >= 0)
        goto out;
    if (first >= argc) {
        ret = cli_usage_error("exec", "missing the sandbox id or name");
        goto out;
    }
    const char *sandbox = argv[first];
    first = cli_exec_skip_dashes(argc, argv, first + 1);
    if (first >= argc) {
        ret = cli_usage_error("exec", "missing the command to run");
        goto out;
    }
    if (cli_path_sandbox(&path, sandbox) < 0 || buf_append_str(&path, "/exec") < 0) {
        fprintf(stderr, "warren: out of memory\n");
        ret = CLI_EXIT_API;
        goto out;
    }
    req = cli_exec_build_request(&o, argc - first, argv + first, true);
    if (!req) {
        ret = CLI_EXIT_USAGE;
        goto out;
    }
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    cli_exec_signals_setup(&sigst, &c);
    c.cancel = &cli_signal_caught;
    enum cli_result r = cli_api_call(&c, "POST", path.data, req, &res, NULL);
    c.cancel = NULL;
    if (r == CLI_EINTR)
        ret = 128 + (cli_signal_caught ? cli_signal_caught : SIGINT);
    else if (r != CLI_OK)
        ret = cli_exec_api_exit(r);
    else if (!json_is_object(res)) {
        fprintf(stderr, "warren: the daemon's exec answer is not an object\n");
        ret = CLI_EXIT_API;
    } else
        ret = cli_exec_report(&o, res);
    cli_exec_signals_restore(&sigst, &c);
    client_close(&c);
out:
    buf_free(&path);
    json_decref(req);
    json_decref(res);
    json_decref(o.env);
    return ret;
}
