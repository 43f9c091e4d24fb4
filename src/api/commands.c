/*
 * commands — POST /v1/sandboxes/{id}/exec: run a command to completion.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/json.h"
#include "core/util.h"
#include "session/command.h"
#include "session/exec.h"

#define ERRLEN 256

struct exec_call {
    http_req_t *req;
    struct exec *ex;
};

/* Adds "stdout"/"stdout_b64" (or stderr) to the result: text when it is valid UTF-8 (after
 * dropping a multi-byte character cut by truncation), base64 of the exact bytes otherwise. */
/* Text is valid UTF-8 without NUL bytes; anything else travels as base64 (NULs would cost six
 * bytes each as JSON escapes, and binary output is better read exactly). */
static int output_is_text(const char *data, size_t len)
{
    return util_utf8_valid(data, len) && !memchr(data, '\0', len);
}

void api_put_output(json_t *o, const char *name, const buf_t *b, int truncated)
{
    char b64name[32];
    size_t len = b->len;
    const char *data = b->data ? b->data : "";
    if (truncated)
        len = util_utf8_complete_prefix(data, len);
    if (output_is_text(data, len)) {
        json_object_set_new(o, name, json_stringn(data, len));
        return;
    }
    char *enc = util_base64_encode(data, b->len);
    snprintf(b64name, sizeof(b64name), "%s_b64", name);
    json_object_set_new(o, name, json_null());
    json_object_set_new(o, b64name, enc ? json_string(enc) : json_null());
    free(enc);
}

json_t *api_exec_result_json(const struct exec_result *res)
{
    if (res->error) {
        int status = api_errno_status(res->error);
        if (res->error == -ESRCH)
            status = 409;
        return json_pack("{s:{s:s, s:s}}", "error", "code", api_status_code(status), "message",
                         res->error_msg ? res->error_msg : strerror(-res->error));
    }
    json_t *o =
        json_pack("{s:i, s:o, s:b, s:b, s:b, s:b, s:b, s:f}", "exit_code", res->exit_code, "signal",
                  res->signal ? json_integer(res->signal) : json_null(), "stdout_truncated",
                  res->out_truncated, "stderr_truncated", res->err_truncated, "truncated",
                  res->out_truncated || res->err_truncated, "timed_out", res->timed_out,
                  "oom_killed", res->oom_killed, "duration_ms", res->duration_ms);
    api_put_output(o, "stdout", &res->out, res->out_truncated);
    api_put_output(o, "stderr", &res->err, res->err_truncated);
    return o;
}

#define PIECE (256u << 10)

/* Queues what `out` holds once it is large, so the response is never held twice in full. */
static void flush_piece(http_req_t *req, buf_t *out, int force)
{
    if (out->len && (force || out->len >= PIECE)) {
        http_respond_write(req, out->data, out->len);
        out->len = 0;
    }
}

/* What write_output() sends for one stream, decided once: its exact length is needed for the
 * Content-Length before anything is written. */
struct out_plan {
    const char *data;
    size_t len;   /* bytes of the stream sent */
    int text;     /* as a JSON string, else as base64 */
    size_t bytes; /* what it adds to the body */
};

static void plan_output(struct out_plan *pl, const char *name, const buf_t *b, int truncated)
{
    pl->data = b->data ? b->data : "";
    pl->len = truncated ? util_utf8_complete_prefix(pl->data, b->len) : b->len;
    pl->text = output_is_text(pl->data, pl->len);
    if (pl->text) {
        pl->bytes = strlen(name) + 6 + json_escape_len(pl->data, pl->len); /* ,"name":"..." */
    } else {
        pl->len = b->len;
        /* ,"name":null,"name_b64":"..." */
        pl->bytes = 2 * strlen(name) + 18 + 4 * ((pl->len + 2) / 3);
    }
}

static void write_output(http_req_t *req, buf_t *out, const char *name, const struct out_plan *pl)
{
    if (pl->text) {
        buf_appendf(out, ",\"%s\":\"", name);
        for (size_t off = 0; off < pl->len; off += PIECE) {
            json_escape_append(out, pl->data + off, pl->len - off < PIECE ? pl->len - off : PIECE);
            flush_piece(req, out, 0);
        }
        buf_append_str(out, "\"");
        return;
    }
    buf_appendf(out, ",\"%s\":null,\"%s_b64\":\"", name, name);
    const size_t step = PIECE / 4 * 3; /* whole base64 groups per piece */
    for (size_t off = 0; off < pl->len; off += step) {
        size_t n = pl->len - off < step ? pl->len - off : step;
        if (buf_reserve(out, 4 * ((n + 2) / 3) + 1) < 0)
            break;
        out->len += util_base64_encode_to(out->data + out->len, pl->data + off, n);
        flush_piece(req, out, 0);
    }
    buf_append_str(out, "\"");
}

/* The exec result, written as a stream of pieces with an exact Content-Length: a result with
 * 64 MiB of output must not be copied several times in memory, nor stall the loop building one
 * huge string. Same fields and order as api_exec_result_json(). */
static void respond_exec_result(http_req_t *req, struct exec_result *res)
{
    buf_t out = BUF_INIT;
    char sig[16] = "null";
    struct out_plan po, pe;
    if (res->signal)
        snprintf(sig, sizeof(sig), "%d", res->signal);
    buf_appendf(&out,
                "{\"exit_code\":%d,\"signal\":%s,\"stdout_truncated\":%s,"
                "\"stderr_truncated\":%s,\"truncated\":%s,\"timed_out\":%s,"
                "\"oom_killed\":%s,\"duration_ms\":%.3f",
                res->exit_code, sig, res->out_truncated ? "true" : "false",
                res->err_truncated ? "true" : "false",
                res->out_truncated || res->err_truncated ? "true" : "false",
                res->timed_out ? "true" : "false", res->oom_killed ? "true" : "false",
                res->duration_ms);
    plan_output(&po, "stdout", &res->out, res->out_truncated);
    plan_output(&pe, "stderr", &res->err, res->err_truncated);
    int64_t total = (int64_t)(out.len + po.bytes + pe.bytes + 2); /* + "}\n" */
    if (http_respond_start(req, 200, "application/json", total, NULL) < 0) {
        buf_free(&out);
        http_respond_end(req);
        return;
    }
    write_output(req, &out, "stdout", &po);
    write_output(req, &out, "stderr", &pe);
    buf_append_str(&out, "}\n");
    flush_piece(req, &out, 1);
    buf_free(&out);
    http_respond_end(req);
}

static void on_exec_done(struct exec *ex, struct exec_result *res, void *arg)
{
    struct exec_call *call = arg;
    http_req_t *req = call->req;
    (void)ex;
    free(call);
    http_req_set_abort_cb(req, NULL, NULL);
    if (res->error) {
        int status = res->error == -ESRCH ? 409 : api_errno_status(res->error);
        http_respond_json(req, status, api_exec_result_json(res));
        return;
    }
    respond_exec_result(req, res);
}

static void on_client_gone(http_req_t *req, void *arg)
{
    struct exec_call *call = arg;
    (void)req;
    exec_cancel(call->ex); /* the answer would go nowhere: stop the command */
}

void api_run_free(struct api_run *run)
{
    free(run->argv);
    util_free_strv(run->env);
    free(run->stdin_data);
    json_decref(run->describe);
    memset(run, 0, sizeof(*run));
}

int api_parse_run(struct api_ctx *ctx, const struct sandbox *sb, json_t *body,
                  const char *const *extra_keys, struct api_run *run, char *err, size_t errlen)
{
    static const char *const base[] = {"argv",  "shell",     "env",       "cwd",
                                       "stdin", "stdin_b64", "timeout_s", "max_output_bytes"};
    const char *keys[32];
    size_t nk = 0;
    const char *shell = NULL, *stdin_b64 = NULL, *term = "xterm";
    json_t *env = NULL, *argv_json;
    long long max_out = (long long)ctx->limits->max_output_default;

    memset(run, 0, sizeof(*run));
    run->cwd = sandbox_default_cwd(sb);
    run->timeout_s = ctx->limits->exec_timeout_default_s;
    for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
        keys[nk++] = base[i];
    for (size_t i = 0; extra_keys && extra_keys[i] && nk < 31; i++)
        keys[nk++] = extra_keys[i];
    keys[nk] = NULL;
    if (json_check_keys(body, keys, NULL, err, errlen) ||
        json_opt_string(body, "shell", "shell", &shell, err, errlen) ||
        json_opt_string(body, "cwd", "cwd", &run->cwd, err, errlen) ||
        json_opt_string(body, "stdin", "stdin", &run->stdin_text, err, errlen) ||
        json_opt_string(body, "stdin_b64", "stdin_b64", &stdin_b64, err, errlen) ||
        json_opt_string_map(body, "env", "env", &env, err, errlen) ||
        json_opt_number(body, "timeout_s", "timeout_s", &run->timeout_s, err, errlen) ||
        json_opt_int(body, "max_output_bytes", "max_output_bytes", &max_out, err, errlen))
        return 400;
    if (env && api_valid_env(env, err, errlen) < 0)
        return 400;

    argv_json = json_object_get(body, "argv");
    if (argv_json && json_is_null(argv_json))
        argv_json = NULL;
    if (argv_json && shell) {
        snprintf(err, errlen, "give 'argv' (array of strings) or 'shell' (string), not both");
        return 400;
    }
    if (!argv_json && !shell) {
        /* The image's own command, as `docker run IMAGE` without one. */
        const struct sandbox_image *img = sb->image;
        size_t ne = 0, nc = 0;
        while (img && img->entrypoint && img->entrypoint[ne])
            ne++;
        while (img && img->cmd && img->cmd[nc])
            nc++;
        if (ne + nc == 0) {
            snprintf(err, errlen, "'argv' (array of strings) or 'shell' (string) is required%s",
                     img ? " (the image has no Entrypoint or Cmd)" : "");
            return 400;
        }
        if (!(run->argv = calloc(ne + nc + 1, sizeof(char *))))
            goto oom;
        json_t *described = json_array();
        for (size_t i = 0; i < ne + nc; i++) {
            run->argv[i] = i < ne ? img->entrypoint[i] : img->cmd[i - ne];
            json_array_append_new(described, json_string(run->argv[i]));
        }
        run->describe = json_pack("{s:o}", "argv", described);
    } else if (argv_json) {
        if (!json_is_array(argv_json) || json_array_size(argv_json) == 0) {
            snprintf(err, errlen, "'argv' must be a non-empty array of strings");
            return 400;
        }
        if (!(run->argv = calloc(json_array_size(argv_json) + 1, sizeof(char *))))
            goto oom;
        for (size_t i = 0; i < json_array_size(argv_json); i++) {
            json_t *a = json_array_get(argv_json, i);
            if (!json_is_string(a)) {
                snprintf(err, errlen, "'argv[%zu]' must be a string", i);
                return 400;
            }
            run->argv[i] = json_string_value(a);
        }
        if (!*run->argv[0]) {
            snprintf(err, errlen, "'argv[0]' must not be empty");
            return 400;
        }
        run->describe = json_pack("{s:O}", "argv", argv_json);
    } else {
        if (!(run->argv = calloc(4, sizeof(char *))))
            goto oom;
        run->argv[0] = "/bin/sh";
        run->argv[1] = "-c";
        run->argv[2] = shell;
        run->describe = json_pack("{s:s}", "shell", shell);
    }
    if (run->cwd[0] != '/') {
        snprintf(err, errlen, "'cwd' must be an absolute path");
        return 400;
    }
    if (run->stdin_text && stdin_b64) {
        snprintf(err, errlen, "give 'stdin' or 'stdin_b64', not both");
        return 400;
    }
    if (stdin_b64 &&
        util_base64_decode(stdin_b64, strlen(stdin_b64), &run->stdin_data, &run->stdin_len)) {
        snprintf(err, errlen, "'stdin_b64' is not valid base64");
        return 400;
    }
    if (run->stdin_text) {
        run->stdin_data_ref = run->stdin_text;
        run->stdin_len = strlen(run->stdin_text);
    } else {
        run->stdin_data_ref = run->stdin_data;
    }
    if (!(run->timeout_s > 0)) {
        snprintf(err, errlen, "'timeout_s' must be greater than 0");
        return 400;
    }
    if (max_out < 0) {
        snprintf(err, errlen, "'max_output_bytes' must not be negative");
        return 400;
    }
    if (run->timeout_s > ctx->limits->exec_timeout_max_s ||
        (size_t)max_out > ctx->limits->max_output_max) {
        snprintf(err, errlen, "above the daemon maxima (timeout_s %g, max_output_bytes %zu)",
                 ctx->limits->exec_timeout_max_s, ctx->limits->max_output_max);
        return 422;
    }
    run->max_output = (size_t)max_out;
    if (!(run->env = exec_build_env(sb, env, term)))
        goto oom;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return 500;
}

void api_exec(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    char err[ERRLEN];
    struct api_run run;
    int status;
    const char *code = NULL; /* set for a session error: its own code */

    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if ((status = api_parse_run(ctx, sb, body, NULL, &run, err, ERRLEN)) != 0)
        goto bad;

    struct exec_spec spec = {
        .argv = run.argv,
        .env = (const char *const *)run.env,
        .cwd = run.cwd,
        .stdin_data = run.stdin_data_ref,
        .stdin_len = run.stdin_len,
        .timeout_s = run.timeout_s,
        .max_output = run.max_output,
    };
    struct exec_call *call = calloc(1, sizeof(*call));
    if (call)
        call->req = req;
    int r = call ? exec_start(sb, &spec, on_exec_done, call, &call->ex) : -ENOMEM;
    if (r < 0) {
        free(call);
        status = api_errno_status(r);
        code = api_errno_code(r);
        snprintf(err, ERRLEN, "%s", session_strerror(r));
        goto bad;
    }
    http_req_set_abort_cb(req, on_client_gone, call);
    api_audit(ctx, req, "exec", sb, 200, api_audit_command(body, &run));
    api_run_free(&run);
    json_decref(body);
    return;
bad:
    api_audit(ctx, req, "exec", sb, status, api_audit_command(body, NULL));
    http_respond_error(req, status, code ? code : api_status_code(status), "%s", err);
    api_run_free(&run);
    json_decref(body);
}

/* ---- detached commands ---------------------------------------------------------------------- */

struct start_call {
    http_req_t *req;
    struct command *cmd;
    struct command_watch *watch;
};

static void on_command_update(void *arg)
{
    struct start_call *call = arg;
    struct command *c = call->cmd;
    if (command_pid(c) <= 0 && command_state(c) == CMD_RUNNING)
        return;
    json_t *o = json_pack("{s:s, s:i}", "command_id", command_id(c), "pid", (int)command_pid(c));
    command_unwatch(call->watch);
    http_respond_json(call->req, 201, o);
    free(call);
}

void api_command_start(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const extra[] = {"buffer_bytes", NULL};
    char err[ERRLEN];
    struct api_run run;
    long long ring = COMMAND_RING_DEFAULT;
    int status;
    const char *code = NULL;

    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if ((status = api_parse_run(ctx, sb, body, extra, &run, err, ERRLEN)) != 0)
        goto bad;
    if (json_object_get(body, "max_output_bytes")) {
        status = 400;
        snprintf(err, ERRLEN,
                 "'max_output_bytes' does not apply to detached commands (their "
                 "output is streamed; see 'buffer_bytes')");
        goto bad;
    }
    if (!json_object_get(body, "timeout_s"))
        run.timeout_s = 0; /* detached commands run until they end unless asked otherwise */
    if (json_opt_int(body, "buffer_bytes", "buffer_bytes", &ring, err, ERRLEN)) {
        status = 400;
        goto bad;
    }
    if (ring < 4096 || ring > (long long)(256u << 20)) {
        status = ring < 4096 ? 400 : 422;
        snprintf(err, ERRLEN, "'buffer_bytes' must be between 4096 and 268435456");
        goto bad;
    }
    struct command_spec spec = {
        .proc = {.argv = run.argv, .env = (const char *const *)run.env, .cwd = run.cwd},
        .stdin_data = run.stdin_data_ref,
        .stdin_len = run.stdin_len,
        .close_stdin = run.stdin_data_ref != NULL,
        .timeout_s = run.timeout_s,
        .ring_bytes = (size_t)ring,
        .describe = run.describe,
    };
    struct command *cmd;
    struct start_call *call = calloc(1, sizeof(*call));
    int r = call ? command_start(sb, &spec, &cmd) : -ENOMEM;
    if (r < 0) {
        free(call);
        status = api_errno_status(r);
        code = api_errno_code(r);
        snprintf(err, ERRLEN, "%s", session_strerror(r));
        goto bad;
    }
    json_t *audit = api_audit_command(body, &run);
    json_object_set_new(audit, "command_id", json_string(command_id(cmd)));
    api_audit(ctx, req, "command.start", sb, 201, audit);
    /* Answer once the init has reported the pid (a few hundred microseconds). */
    call->req = req;
    call->cmd = cmd;
    if (!(call->watch = command_watch(cmd, 0, on_command_update, call))) {
        free(call);
        http_respond_json(
            req, 201, json_pack("{s:s, s:o}", "command_id", command_id(cmd), "pid", json_null()));
    }
    api_run_free(&run);
    json_decref(body);
    return;
bad:
    api_audit(ctx, req, "command.start", sb, status, api_audit_command(body, NULL));
    http_respond_error(req, status, code ? code : api_status_code(status), "%s", err);
    api_run_free(&run);
    json_decref(body);
}

void api_command_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *arr = json_array();
    for (struct command *c = sb->commands; c; c = command_next(c))
        json_array_append_new(arr, api_command_json(c));
    http_respond_json(req, 200, json_pack("{s:o}", "commands", arr));
}

struct command *api_find_command(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_find_sandbox(ctx, req, p);
    if (!sb)
        return NULL;
    const char *cid = route_param(p, "cid");
    struct command *c = cid ? command_find(sb, cid) : NULL;
    if (!c)
        http_respond_error(req, 404, "not_found", "command '%s' not found in sandbox '%s'",
                           cid ? cid : "", sb->id);
    return c;
}

void api_command_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    if (api_check_query(req, NULL) < 0)
        return;
    struct command *c = api_find_command(ctx, req, p);
    if (c)
        http_respond_json(req, 200, api_command_json(c));
}

void api_command_kill(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"signal", NULL};
    char err[ERRLEN];
    if (api_check_query(req, NULL) < 0)
        return;
    struct command *c = api_find_command(ctx, req, p);
    if (!c)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    int sig = SIGKILL;
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        api_parse_signal(json_object_get(body, "signal"), &sig, err, ERRLEN) < 0) {
        http_respond_error(req, 400, "bad_request", "%s", err);
        json_decref(body);
        return;
    }
    json_decref(body);
    api_audit(ctx, req, "command.kill", command_sandbox(c), 200,
              json_pack("{s:s, s:i}", "command_id", command_id(c), "signal", sig));
    command_kill(c, sig);
    http_respond_json(req, 200, api_command_json(c));
}

int api_parse_signal(json_t *v, int *sig, char *err, size_t errlen)
{
    static const struct {
        const char *name;
        int sig;
    } names[] = {{"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
                 {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"CONT", SIGCONT},
                 {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"ALRM", SIGALRM}, {"WINCH", SIGWINCH}};
    if (!v || json_is_null(v))
        return 0; /* keep the default */
    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        if (n >= 1 && n < 65) {
            *sig = (int)n;
            return 0;
        }
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strncmp(s, "SIG", 3) == 0)
            s += 3;
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            if (strcmp(s, names[i].name) == 0) {
                *sig = names[i].sig;
                return 0;
            }
        }
    }
    snprintf(err, errlen, "'signal' must be a signal number (1-64) or name like \"TERM\"");
    return -EINVAL;
}
