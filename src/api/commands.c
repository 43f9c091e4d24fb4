/*
 * commands — POST /v1/sandboxes/{id}/exec: run a command to completion.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/json.h"
#include "core/util.h"
#include "session/exec.h"

#define ERRLEN 256
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct exec_call {
    http_req_t *req;
    struct exec *ex;
};

/* Adds "stdout"/"stdout_b64" (or stderr) to the result: text when it is valid UTF-8 (after
 * dropping a multi-byte character cut by truncation), base64 of the exact bytes otherwise. */
static void put_output(json_t *o, const char *name, const buf_t *b, int truncated)
{
    char b64name[32];
    size_t len = b->len;
    const char *data = b->data ? b->data : "";
    if (truncated)
        len = util_utf8_complete_prefix(data, len);
    if (util_utf8_valid(data, len)) {
        json_object_set_new(o, name, json_stringn(data, len));
        return;
    }
    char *enc = util_base64_encode(data, b->len);
    snprintf(b64name, sizeof(b64name), "%s_b64", name);
    json_object_set_new(o, name, json_null());
    json_object_set_new(o, b64name, enc ? json_string(enc) : json_null());
    free(enc);
}

static void on_exec_done(struct exec *ex, struct exec_result *res, void *arg)
{
    struct exec_call *call = arg;
    http_req_t *req = call->req;
    (void)ex;
    free(call);
    http_req_set_abort_cb(req, NULL, NULL);
    if (res->error) {
        int status = res->error == -ESRCH ? 409 : res->error == -EAGAIN ? 429 : 500;
        http_respond_error(req, status,
                           status == 409   ? "conflict"
                           : status == 429 ? "limit_reached"
                                           : "internal",
                           "%s", res->error_msg ? res->error_msg : strerror(-res->error));
        return;
    }
    json_t *o = json_pack("{s:i, s:o, s:b, s:b, s:b, s:b, s:f}", "exit_code", res->exit_code,
                          "signal", res->signal ? json_integer(res->signal) : json_null(),
                          "stdout_truncated", res->out_truncated, "stderr_truncated",
                          res->err_truncated, "truncated", res->out_truncated || res->err_truncated,
                          "timed_out", res->timed_out, "duration_ms", res->duration_ms);
    put_output(o, "stdout", &res->out, res->out_truncated);
    put_output(o, "stderr", &res->err, res->err_truncated);
    http_respond_json(req, 200, o);
}

static void on_client_gone(http_req_t *req, void *arg)
{
    struct exec_call *call = arg;
    (void)req;
    exec_cancel(call->ex); /* the answer would go nowhere: stop the command */
}

/* Builds the command's environment: defaults < sandbox env < exec env. */
static char **build_env(const struct sandbox *sb, json_t *exec_env)
{
    json_t *all = json_pack("{s:s, s:s, s:s, s:s, s:s}", "PATH", DEFAULT_PATH, "HOME", "/root",
                            "HOSTNAME", sb->name, "LANG", "C.UTF-8", "TERM", "xterm");
    if (!all)
        return NULL;
    json_object_update(all, sb->env);
    if (exec_env)
        json_object_update(all, exec_env);
    size_t n = json_object_size(all), i = 0;
    char **env = calloc(n + 1, sizeof(char *));
    const char *k;
    json_t *v;
    json_object_foreach(all, k, v)
    {
        if (!env)
            break;
        size_t len = strlen(k) + strlen(json_string_value(v)) + 2;
        if (!(env[i] = malloc(len)))
            break;
        snprintf(env[i++], len, "%s=%s", k, json_string_value(v));
    }
    json_decref(all);
    return env;
}

static void free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

void api_exec(struct server *srv, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {
        "argv", "shell", "env", "cwd", "stdin", "stdin_b64", "timeout_s", "max_output_bytes", NULL};
    char err[ERRLEN];
    const char *shell = NULL, *cwd = "/workspace", *stdin_text = NULL, *stdin_b64 = NULL;
    json_t *env = NULL, *argv_json;
    double timeout = srv->cfg.exec_timeout_default_s;
    long long max_out = (long long)srv->cfg.max_output_default;
    unsigned char *stdin_data = NULL;
    size_t stdin_len = 0;
    const char **argv = NULL;
    char **envv = NULL;
    int status = 400;

    if (api_check_query(req, NULL) < 0)
        return;
    struct sandbox *sb = api_find_sandbox(srv, req, p);
    if (!sb)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_string(body, "shell", "shell", &shell, err, ERRLEN) ||
        json_opt_string(body, "cwd", "cwd", &cwd, err, ERRLEN) ||
        json_opt_string(body, "stdin", "stdin", &stdin_text, err, ERRLEN) ||
        json_opt_string(body, "stdin_b64", "stdin_b64", &stdin_b64, err, ERRLEN) ||
        json_opt_string_map(body, "env", "env", &env, err, ERRLEN) ||
        json_opt_number(body, "timeout_s", "timeout_s", &timeout, err, ERRLEN) ||
        json_opt_int(body, "max_output_bytes", "max_output_bytes", &max_out, err, ERRLEN))
        goto bad;
    if (env && api_valid_env(env, err, ERRLEN) < 0)
        goto bad;

    argv_json = json_object_get(body, "argv");
    if (argv_json && json_is_null(argv_json))
        argv_json = NULL;
    if (!!argv_json == !!shell) {
        snprintf(err, ERRLEN,
                 "exactly one of 'argv' (array of strings) or 'shell' (string) is "
                 "required");
        goto bad;
    }
    if (argv_json) {
        if (!json_is_array(argv_json) || json_array_size(argv_json) == 0) {
            snprintf(err, ERRLEN, "'argv' must be a non-empty array of strings");
            goto bad;
        }
        argv = calloc(json_array_size(argv_json) + 1, sizeof(char *));
        if (!argv)
            goto oom;
        for (size_t i = 0; i < json_array_size(argv_json); i++) {
            json_t *a = json_array_get(argv_json, i);
            if (!json_is_string(a)) {
                snprintf(err, ERRLEN, "'argv[%zu]' must be a string", i);
                goto bad;
            }
            argv[i] = json_string_value(a);
        }
        if (!*argv[0]) {
            snprintf(err, ERRLEN, "'argv[0]' must not be empty");
            goto bad;
        }
    } else {
        argv = calloc(4, sizeof(char *));
        if (!argv)
            goto oom;
        argv[0] = "/bin/sh";
        argv[1] = "-c";
        argv[2] = shell;
    }
    if (cwd[0] != '/') {
        snprintf(err, ERRLEN, "'cwd' must be an absolute path");
        goto bad;
    }
    if (stdin_text && stdin_b64) {
        snprintf(err, ERRLEN, "give 'stdin' or 'stdin_b64', not both");
        goto bad;
    }
    if (stdin_b64 && util_base64_decode(stdin_b64, strlen(stdin_b64), &stdin_data, &stdin_len)) {
        snprintf(err, ERRLEN, "'stdin_b64' is not valid base64");
        goto bad;
    }
    if (!(timeout > 0)) {
        snprintf(err, ERRLEN, "'timeout_s' must be greater than 0");
        goto bad;
    }
    if (max_out < 0) {
        snprintf(err, ERRLEN, "'max_output_bytes' must not be negative");
        goto bad;
    }
    if (timeout > srv->cfg.exec_timeout_max_s || (size_t)max_out > srv->cfg.max_output_max) {
        status = 422;
        snprintf(err, ERRLEN, "above the daemon maxima (timeout_s %g, max_output_bytes %zu)",
                 srv->cfg.exec_timeout_max_s, srv->cfg.max_output_max);
        goto bad;
    }
    if (!(envv = build_env(sb, env)))
        goto oom;

    struct exec_spec spec = {
        .argv = argv,
        .env = (const char *const *)envv,
        .cwd = cwd,
        .stdin_data = stdin_data ? (const void *)stdin_data : stdin_text,
        .stdin_len = stdin_data   ? stdin_len
                     : stdin_text ? strlen(stdin_text)
                                  : 0,
        .timeout_s = timeout,
        .max_output = (size_t)max_out,
    };
    struct exec_call *call = calloc(1, sizeof(*call));
    if (!call)
        goto oom;
    call->req = req;
    int r = exec_start(sb, &spec, on_exec_done, call, &call->ex);
    if (r < 0) {
        free(call);
        status = r == -E2BIG ? 413 : r == -EPIPE ? 409 : 500;
        snprintf(err, ERRLEN, "%s",
                 r == -E2BIG   ? "argv and env are too large (64 KiB at most)"
                 : r == -EPIPE ? "the sandbox is not running"
                               : strerror(-r));
        goto bad;
    }
    http_req_set_abort_cb(req, on_client_gone, call);
    goto out;
oom:
    status = 500;
    snprintf(err, ERRLEN, "out of memory");
bad:
    http_respond_error(req, status,
                       status == 422   ? "unprocessable"
                       : status == 413 ? "payload_too_large"
                       : status == 409 ? "conflict"
                       : status == 500 ? "internal"
                                       : "bad_request",
                       "%s", err);
out:
    free(argv);
    free_strv(envv);
    free(stdin_data);
    json_decref(body);
}
