/*
 * terminals — PTY programs: create, list, get, keys, screen, resize, recording, attach
 * (WebSocket), delete.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/util.h"
#include "session/exec.h"
#include "core/json.h"
#include "net/ws.h"
#include "session/keys.h"
#include "session/terminal.h"

#define ERRLEN 256

static int parse_size(json_t *body, int *cols, int *rows, char *err)
{
    long long c = *cols, r = *rows;
    if (json_opt_int(body, "cols", "cols", &c, err, ERRLEN) ||
        json_opt_int(body, "rows", "rows", &r, err, ERRLEN))
        return -EINVAL;
    if (c < TERMINAL_MIN_COLS || c > TERMINAL_MAX_COLS || r < TERMINAL_MIN_ROWS ||
        r > TERMINAL_MAX_ROWS) {
        snprintf(err, ERRLEN, "'cols' must be %d-%d and 'rows' %d-%d", TERMINAL_MIN_COLS,
                 TERMINAL_MAX_COLS, TERMINAL_MIN_ROWS, TERMINAL_MAX_ROWS);
        return -EINVAL;
    }
    *cols = (int)c;
    *rows = (int)r;
    return 0;
}

void api_terminal_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"cols", "rows", "argv", "record", "env", "cwd", NULL};
    char err[ERRLEN];
    const char *cwd;
    json_t *env = NULL, *argv_json;
    const char **argv = NULL;
    int cols = 80, rows = 24;
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    cwd = sandbox_default_cwd(sb);
    json_t *body = api_body_object(req);
    if (!body)
        return;
    json_t *record = json_object_get(body, "record");
    if (json_check_keys(body, keys, NULL, err, ERRLEN) || parse_size(body, &cols, &rows, err) ||
        json_opt_string(body, "cwd", "cwd", &cwd, err, ERRLEN) ||
        json_opt_string_map(body, "env", "env", &env, err, ERRLEN) ||
        (env && api_valid_env(env, err, ERRLEN) < 0))
        goto bad;
    if (record && !json_is_boolean(record)) {
        snprintf(err, ERRLEN, "'record' must be a boolean");
        goto bad;
    }
    if (cwd[0] != '/') {
        snprintf(err, ERRLEN, "'cwd' must be an absolute path");
        goto bad;
    }
    argv_json = json_object_get(body, "argv");
    if (argv_json && !json_is_null(argv_json)) {
        if (!json_is_array(argv_json) || json_array_size(argv_json) == 0) {
            snprintf(err, ERRLEN, "'argv' must be a non-empty array of strings");
            goto bad;
        }
        argv = calloc(json_array_size(argv_json) + 1, sizeof(char *));
        for (size_t i = 0; argv && i < json_array_size(argv_json); i++) {
            if (!json_is_string(json_array_get(argv_json, i)) ||
                !*json_string_value(json_array_get(argv_json, i))) {
                snprintf(err, ERRLEN, "'argv[%zu]' must be a non-empty string", i);
                goto bad;
            }
            argv[i] = json_string_value(json_array_get(argv_json, i));
        }
    }
    char **envv = exec_build_env(sb, env, "xterm-256color");
    struct terminal_spec spec = {.argv = argv,
                                 .env = (const char *const *)envv,
                                 .cwd = cwd,
                                 .cols = cols,
                                 .rows = rows,
                                 .record = json_is_true(record)};
    struct terminal *t;
    int r = envv ? terminal_create(sb, &spec, &t) : -ENOMEM;
    util_free_strv(envv);
    free(argv);
    json_t *audit = api_audit_command(body, NULL);
    json_object_set_new(audit, "cols", json_integer(cols));
    json_object_set_new(audit, "rows", json_integer(rows));
    json_object_set_new(audit, "record", json_boolean(spec.record));
    if (r == 0)
        json_object_set_new(audit, "terminal_id", json_string(terminal_id(t)));
    api_audit(ctx, req, "terminal.create", sb, r < 0 ? api_errno_status(r) : 201, audit);
    json_decref(body);
    if (r < 0) {
        http_respond_error(req, api_errno_status(r), api_errno_code(r), "%s", session_strerror(r));
        return;
    }
    http_respond_json(req, 201, api_terminal_json(t));
    return;
bad:
    api_audit(ctx, req, "terminal.create", sb, 400, api_audit_command(body, NULL));
    free(argv);
    json_decref(body);
    http_respond_error(req, 400, "bad_request", "%s", err);
}

void api_terminal_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *arr = json_array();
    for (struct terminal *t = sb->terminals; t; t = terminal_next(t))
        json_array_append_new(arr, api_terminal_json(t));
    http_respond_json(req, 200, json_pack("{s:o}", "terminals", arr));
}

static struct terminal *find_terminal(struct api_ctx *ctx, http_req_t *req,
                                      const struct route_params *p)
{
    struct sandbox *sb = api_find_sandbox(ctx, req, p);
    if (!sb)
        return NULL;
    const char *tid = route_param(p, "tid");
    struct terminal *t = tid ? terminal_find(sb, tid) : NULL;
    if (!t)
        http_respond_error(req, 404, "not_found", "terminal '%s' not found in sandbox '%s'",
                           tid ? tid : "", sb->id);
    return t;
}

void api_terminal_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    if (api_check_query(req, NULL) < 0)
        return;
    struct terminal *t = find_terminal(ctx, req, p);
    if (t)
        http_respond_json(req, 200, api_terminal_json(t));
}

void api_terminal_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    if (api_check_query(req, NULL) < 0)
        return;
    struct terminal *t = find_terminal(ctx, req, p);
    if (!t)
        return;
    terminal_destroy(t);
    http_respond(req, 204, NULL, NULL, 0, NULL);
}

void api_terminal_screen(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"history", NULL};
    if (api_check_query(req, params) < 0)
        return;
    struct terminal *t = find_terminal(ctx, req, p);
    if (!t)
        return;
    const char *h = http_req_query(req, "history");
    int row, col, cols, rows;
    char *text =
        terminal_screen(t, h && strcmp(h, "0") != 0 && strcmp(h, "false") != 0, &row, &col);
    terminal_size(t, &cols, &rows);
    if (!text) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    http_respond_json(req, 200,
                      json_pack("{s:s, s:{s:i, s:i}, s:i, s:i, s:s}", "text", text, "cursor", "row",
                                row, "col", col, "cols", cols, "rows", rows, "state",
                                terminal_running(t) ? "running" : "exited"));
    free(text);
}

void api_terminal_resize(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"cols", "rows", NULL};
    char err[ERRLEN];
    if (api_check_query(req, NULL) < 0)
        return;
    struct terminal *t = find_terminal(ctx, req, p);
    if (!t)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    int cols, rows;
    terminal_size(t, &cols, &rows);
    if (json_check_keys(body, keys, NULL, err, ERRLEN) || parse_size(body, &cols, &rows, err)) {
        json_decref(body);
        http_respond_error(req, 400, "bad_request", "%s", err);
        return;
    }
    json_decref(body);
    terminal_resize(t, cols, rows);
    http_respond_json(req, 200, api_terminal_json(t));
}

void api_terminal_recording(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"since", NULL};
    if (api_check_query(req, params) < 0)
        return;
    struct terminal *t = find_terminal(ctx, req, p);
    if (!t)
        return;
    const char *since_s = http_req_query(req, "since");
    char *end;
    unsigned long long since = since_s ? strtoull(since_s, &end, 10) : 0;
    if (since_s && (!*since_s || *end || since_s[0] == '-')) {
        http_respond_error(req, 400, "bad_request", "'since' must be a non-negative integer");
        return;
    }
    char *text, hdr[64];
    size_t len;
    uint64_t next;
    int r = terminal_recording(t, since, &text, &len, &next);
    if (r == -ENOENT) {
        http_respond_error(req, 404, "not_found",
                           "this terminal is not recorded (create it "
                           "with \"record\": true)");
        return;
    }
    if (r < 0) {
        http_respond_error(req, 500, "internal", "%s", strerror(-r));
        return;
    }
    snprintf(hdr, sizeof(hdr), "X-Next-Offset: %llu\r\n", (unsigned long long)next);
    http_respond(req, 200, "application/x-asciicast", text, len, hdr);
    free(text);
}

/* ---- keys, with an optional wait for the shell's prompt ------------------------------------ */

struct keys_call {
    http_req_t *req;
    struct terminal_wait *wait;
};

static void keys_settled(enum terminal_settle how, void *arg)
{
    struct keys_call *kc = arg;
    http_req_set_abort_cb(kc->req, NULL, NULL);
    http_respond_json(kc->req, 200,
                      json_pack("{s:b, s:b, s:b}", "ok", 1, "blocked", 1, "timed_out",
                                how == TERMINAL_SETTLE_TIMEOUT));
    free(kc);
}

static void keys_client_gone(http_req_t *req, void *arg)
{
    struct keys_call *kc = arg;
    terminal_wait_cancel(kc->wait);
    keys_settled(TERMINAL_SETTLED, kc);
}

void api_terminal_keys(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const kk[] = {"keys",       "text",       "literal", "block",
                                     "min_wait_s", "max_wait_s", NULL};
    char err[ERRLEN];
    double min_wait = 0.1, max_wait = 30;
    buf_t bytes = BUF_INIT;
    if (api_check_query(req, NULL) < 0)
        return;
    struct terminal *t = find_terminal(ctx, req, p);
    if (!t)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    json_t *keys = json_object_get(body, "keys"), *text = json_object_get(body, "text");
    int literal = json_is_true(json_object_get(body, "literal"));
    int block = json_is_true(json_object_get(body, "block"));
    if (json_check_keys(body, kk, NULL, err, ERRLEN) ||
        json_opt_number(body, "min_wait_s", "min_wait_s", &min_wait, err, ERRLEN) ||
        json_opt_number(body, "max_wait_s", "max_wait_s", &max_wait, err, ERRLEN))
        goto bad;
    if (!keys == !text || (text && !json_is_string(text))) {
        snprintf(err, ERRLEN,
                 "give 'keys' (a key name or list of key names and strings) or "
                 "'text' (a string)");
        goto bad;
    }
    if (min_wait < 0 || max_wait < 0 || max_wait > 600 || min_wait > max_wait) {
        snprintf(err, ERRLEN, "waits must be 0 <= min_wait_s <= max_wait_s <= 600");
        goto bad;
    }
    if (text) {
        buf_append(&bytes, json_string_value(text), json_string_length(text));
    } else {
        json_t *one = json_is_string(keys) ? json_pack("[O]", keys) : json_incref(keys);
        size_t i;
        json_t *k;
        if (!json_is_array(one) || json_array_size(one) == 0) {
            json_decref(one);
            snprintf(err, ERRLEN, "'keys' must be a string or a non-empty list of strings");
            goto bad;
        }
        json_array_foreach(one, i, k)
        {
            if (!json_is_string(k)) {
                json_decref(one);
                snprintf(err, ERRLEN, "'keys[%zu]' must be a string", i);
                goto bad;
            }
            /* Like tmux send-keys: a key name is translated, anything else is typed as is. */
            int r = literal ? 0 : keys_append(&bytes, json_string_value(k));
            if (r == 0)
                r = buf_append(&bytes, json_string_value(k), json_string_length(k));
            if (r < 0) {
                json_decref(one);
                json_decref(body);
                buf_free(&bytes);
                http_respond_error(req, 500, "internal", "out of memory");
                return;
            }
        }
        json_decref(one);
    }
    json_decref(body);
    body = NULL;
    if (!terminal_running(t)) {
        buf_free(&bytes);
        http_respond_error(req, 409, "conflict", "the terminal's program has exited");
        return;
    }
    /* What was typed is not recorded (it may be a password), only how much. */
    api_audit(
        ctx, req, "terminal.input", sandbox_find(ctx->reg, route_param(p, "id")), 200,
        json_pack("{s:s, s:I}", "terminal_id", terminal_id(t), "bytes", (json_int_t)bytes.len));
    terminal_write(t, bytes.data ? bytes.data : "", bytes.len);
    buf_free(&bytes);
    if (!block) {
        http_respond_json(req, 200,
                          json_pack("{s:b, s:b, s:b}", "ok", 1, "blocked", 0, "timed_out", 0));
        return;
    }
    struct keys_call *kc = calloc(1, sizeof(*kc));
    struct terminal_settle_spec spec = {.min_wait_s = min_wait, .max_wait_s = max_wait};
    if (kc)
        kc->req = req;
    if (!kc || terminal_wait_settled(t, &spec, keys_settled, kc, &kc->wait) < 0) {
        free(kc);
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    http_req_set_abort_cb(req, keys_client_gone, kc);
    return;
bad:
    buf_free(&bytes);
    json_decref(body);
    http_respond_error(req, 400, "bad_request", "%s", err);
}

/* ---- attach: live viewers over WebSocket ----------------------------------------------------- */

struct viewer {
    ws_conn_t *ws;
    struct terminal *t;
    struct terminal_watch *watch;
};

static void viewer_output(const char *data, size_t len, void *arg)
{
    struct viewer *v = arg;
    ws_send_binary(v->ws, data, len);
    if (ws_buffered(v->ws) > WS_HIGH_WATERMARK)
        terminal_watch_hold(v->watch, 1);
}

static void viewer_drain(ws_conn_t *ws, void *arg)
{
    struct viewer *v = arg;
    if (v->watch)
        terminal_watch_hold(v->watch, 0);
}

static void viewer_exit(void *arg)
{
    struct viewer *v = arg;
    char msg[96];
    json_t *o = api_terminal_json(v->t);
    json_t *code = json_object_get(o, "exit_code");
    snprintf(msg, sizeof(msg), "{\"type\":\"exit\",\"exit_code\":%d}",
             json_is_integer(code) ? (int)json_integer_value(code) : -1);
    json_decref(o);
    ws_send_text(v->ws, msg, strlen(msg));
    /* Called from the terminal while it ends or is destroyed: stop watching now. */
    terminal_unwatch(v->watch);
    v->watch = NULL;
    v->t = NULL;
    ws_close(v->ws, 1000, "terminal ended");
}

static void viewer_message(ws_conn_t *ws, int binary, const char *data, size_t len, void *arg)
{
    struct viewer *v = arg;
    if (!v->t)
        return;
    if (binary) {
        terminal_write(v->t, data, len);
        return;
    }
    json_error_t je;
    json_t *m = json_loadb(data, len, 0, &je);
    const char *type = m ? json_string_value(json_object_get(m, "type")) : NULL;
    char err[ERRLEN];
    int cols, rows;
    terminal_size(v->t, &cols, &rows);
    if (type && strcmp(type, "resize") == 0 && parse_size(m, &cols, &rows, err) == 0) {
        terminal_resize(v->t, cols, rows);
    } else if (type && strcmp(type, "input") == 0 && json_is_string(json_object_get(m, "data"))) {
        json_t *d = json_object_get(m, "data");
        terminal_write(v->t, json_string_value(d), json_string_length(d));
    } else {
        const char *e =
            "{\"type\":\"error\",\"error_type\":\"bad_request\",\"message\":"
            "\"text frames must be {\\\"type\\\":\\\"resize\\\",\\\"cols\\\",\\\"rows\\\"}"
            " or {\\\"type\\\":\\\"input\\\",\\\"data\\\"}; raw input goes in binary "
            "frames\"}";
        ws_send_text(ws, e, strlen(e));
    }
    json_decref(m);
}

static void viewer_close(ws_conn_t *ws, int code, void *arg)
{
    struct viewer *v = arg;
    if (v->watch)
        terminal_unwatch(v->watch);
    free(v);
}

static const struct ws_callbacks viewer_callbacks = {
    .on_message = viewer_message, .on_close = viewer_close, .on_drain = viewer_drain};

void api_terminal_attach(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    if (api_check_query(req, NULL) < 0)
        return;
    struct terminal *t = find_terminal(ctx, req, p);
    if (!t)
        return;
    if (!ws_is_upgrade(req)) {
        http_respond_error(req, 400, "bad_request", "this endpoint is a WebSocket");
        return;
    }
    struct viewer *v = calloc(1, sizeof(*v));
    if (!v) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    v->t = t;
    if (!(v->ws = ws_accept(req, &viewer_callbacks, v, 0))) {
        free(v);
        return;
    }
    /* A late viewer first gets the current screen, redrawn. */
    int row, col;
    char *screen = terminal_screen(t, 0, &row, &col);
    if (screen) {
        buf_t b = BUF_INIT;
        buf_append_str(&b, "\x1b[H\x1b[2J");
        for (char *line = screen, *nl; line; line = nl ? nl + 1 : NULL) {
            nl = strchr(line, '\n');
            buf_append(&b, line, nl ? (size_t)(nl - line) : strlen(line));
            if (nl)
                buf_append_str(&b, "\r\n");
        }
        buf_appendf(&b, "\x1b[%d;%dH", row + 1, col + 1);
        ws_send_binary(v->ws, b.data, b.len);
        buf_free(&b);
        free(screen);
    }
    if (!terminal_running(t)) {
        v->watch = terminal_watch(t, viewer_output, viewer_exit, v);
        if (v->watch)
            viewer_exit(v);
        return;
    }
    if (!(v->watch = terminal_watch(t, viewer_output, viewer_exit, v)))
        ws_close(v->ws, 1011, "out of memory");
}
