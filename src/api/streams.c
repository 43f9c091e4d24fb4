/*
 * streams — WebSocket streaming of commands:
 *   GET /v1/sandboxes/{id}/commands/{cid}/stream?stdout_offset=&stderr_offset=&binary=&lossless=
 *       &kill_on_disconnect=   (attach to a detached command, from the given offsets)
 *   GET /v1/sandboxes/{id}/exec/ws   (first message {"type":"execute", ...} starts a command,
 *       or {"type":"reconnect","command_id","stdout_offset","stderr_offset"} re-attaches)
 *
 * Server → client: started, stdout/stderr {data|data_b64, offset}, gap {stream, offset, lost},
 * exit {exit_code, signal, timed_out}, error {error_type, message}. Client → server: input
 * {data|data_b64}, eof, kill {signal?}, resize (terminals only: an error here).
 *
 * Each connection reads the command's rings from its own offsets and sends while the socket's
 * queue is below the high watermark; it resumes when the queue drains or new output arrives, so a
 * slow client costs at most its rings plus one watermark of memory. A client that is attached gets
 * every byte: while it is a ring behind, the command's pipes are not read and the command blocks
 * in write, as it would with a slow reader on a pipe. Gaps are only for output nobody was
 * reading (before an attach, while disconnected) or for a client that asked lossless=false
 * (never slow the command down; see a gap instead). Text data is always valid
 * UTF-8: a multi-byte character is never split across messages (its start waits for the rest),
 * and bytes that are not UTF-8 are replaced by U+FFFD — ask for binary=true to get exact bytes
 * as data_b64. After the exit message the server closes with 1000.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/json.h"
#include "core/util.h"
#include "net/ws.h"
#include "session/command.h"

#define CHUNK (256u << 10)
#define ERRLEN 256

struct stream {
    struct api_ctx *ctx;
    struct sandbox *sb; /* exec/ws before the first message; ref held */
    ws_conn_t *ws;
    struct command *cmd;
    struct command_watch *watch;
    uint64_t off[3];
    int binary, lossless, kill_on_disconnect;
    int started_sent, exit_sent, closing;
    int in_pump;
    char *chunk; /* CHUNK bytes, and the message being built: kept for the connection's life */
    buf_t msg;
    char caller[64]; /* the client's address, for the audit log (the request is gone by then) */
};

static void send_json(struct stream *st, json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (text)
        ws_send_text(st->ws, text, strlen(text));
    free(text);
}

static void send_error(struct stream *st, const char *type, const char *msg)
{
    send_json(st,
              json_pack("{s:s, s:s, s:s}", "type", "error", "error_type", type, "message", msg));
}

/* Copies the valid UTF-8 of [p, p+n) into out, replacing invalid bytes by U+FFFD. A sequence cut
 * by the end is left out unless `final`. Returns the number of input bytes consumed. */
static size_t utf8_sanitize(const char *p, size_t n, int final, buf_t *out)
{
    size_t i = 0, keep = final ? n : util_utf8_complete_prefix(p, n);
    while (i < keep) {
        size_t j = i;
        while (j < keep && (unsigned char)p[j] < 0x80)
            j++;
        if (j > i)
            buf_append(out, p + i, j - i);
        i = j;
        if (i >= keep)
            break;
        size_t len;
        if (util_utf8_seq((const unsigned char *)p + i, keep - i, &len) == UTIL_UTF8_VALID) {
            buf_append(out, p + i, len);
            i += len;
        } else {
            buf_append(out, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    return keep;
}

static const char *stream_name(enum proc_stream s)
{
    return s == PROC_STDOUT ? "stdout" : "stderr";
}

/* Sends one chunk of stream s if any; returns 1 if something was sent or skipped. */
static int pump_stream(struct stream *st, enum proc_stream s, char *chunk)
{
    uint64_t gap = 0;
    int running = command_state(st->cmd) == CMD_RUNNING;
    size_t n = command_read(st->cmd, s, st->off[s], chunk, CHUNK, &gap);
    if (gap) {
        send_json(st, json_pack("{s:s, s:s, s:I, s:I}", "type", "gap", "stream", stream_name(s),
                                "offset", (json_int_t)st->off[s], "lost", (json_int_t)gap));
        st->off[s] += gap;
    }
    if (n == 0)
        return gap != 0;
    /* Built by hand: this is the hot path of streaming, and a JSON library here costs more
     * than everything else together. */
    buf_t msg = st->msg; /* reused: its storage stays faulted in */
    msg.len = 0;
    size_t used = n;
    buf_appendf(&msg, "{\"type\":\"%s\",\"%s\":\"", stream_name(s),
                st->binary ? "data_b64" : "data");
    if (st->binary) {
        if (buf_reserve(&msg, 4 * ((n + 2) / 3) + 3) == 0)
            msg.len += util_base64_encode_to(msg.data + msg.len, chunk, n);
    } else {
        buf_t text = BUF_INIT;
        /* The final bytes of an ended command are flushed even if they are a cut character. */
        int final = !running && st->off[s] + n >= command_end(st->cmd, s);
        used = utf8_sanitize(chunk, n, final, &text);
        json_escape_append(&msg, text.data ? text.data : "", text.len);
        buf_free(&text);
        if (used == 0) {
            st->msg = msg;
            return 0; /* only the start of a character: wait for the rest */
        }
    }
    buf_appendf(&msg, "\",\"offset\":%llu}", (unsigned long long)st->off[s]);
    if (msg.data) /* ASCII around base64, or sanitized text escaped: valid UTF-8 by making */
        ws_send_text_valid(st->ws, msg.data, msg.len);
    st->msg = msg;
    st->off[s] += used;
    return 1;
}

static void pump(struct stream *st)
{
    if (!st->cmd || st->closing || st->in_pump)
        return;
    st->in_pump = 1; /* sending can re-enter through callbacks */
    if (!st->chunk)
        st->chunk = malloc(CHUNK);
    char *chunk = st->chunk;
    if (!st->started_sent && command_pid(st->cmd) > 0) {
        send_json(st, json_pack("{s:s, s:s, s:i}", "type", "started", "command_id",
                                command_id(st->cmd), "pid", (int)command_pid(st->cmd)));
        st->started_sent = 1;
    }
    while (chunk && !st->closing && ws_buffered(st->ws) < WS_HIGH_WATERMARK) {
        int a = pump_stream(st, PROC_STDOUT, chunk);
        int b = pump_stream(st, PROC_STDERR, chunk);
        if (!a && !b)
            break;
    }
    command_watch_progress(st->watch, st->off[PROC_STDOUT], st->off[PROC_STDERR]);
    enum command_state state = command_state(st->cmd);
    if (state != CMD_RUNNING && !st->exit_sent && !st->closing &&
        st->off[PROC_STDOUT] >= command_end(st->cmd, PROC_STDOUT) &&
        st->off[PROC_STDERR] >= command_end(st->cmd, PROC_STDERR)) {
        int code, sig, timed_out;
        const char *error;
        command_result(st->cmd, &code, &sig, &timed_out, &error);
        st->exit_sent = 1;
        if (state == CMD_FAILED)
            send_error(st, "command_failed", error ? error : "the command could not run");
        else
            send_json(st,
                      json_pack("{s:s, s:i, s:o, s:b}", "type", "exit", "exit_code", code, "signal",
                                sig ? json_integer(sig) : json_null(), "timed_out", timed_out));
        st->closing = 1;
        ws_close(st->ws, 1000, "command ended");
    }
    st->in_pump = 0;
}

static void on_command_update(void *arg)
{
    pump(arg);
}

static int attach(struct stream *st, struct command *c, uint64_t out_off, uint64_t err_off)
{
    st->cmd = c;
    if (!(st->watch = command_watch(c, st->lossless, on_command_update, st)))
        return -ENOMEM;
    st->off[PROC_STDOUT] = out_off;
    st->off[PROC_STDERR] = err_off;
    pump(st);
    return 0;
}

static void on_drain(ws_conn_t *ws, void *arg)
{
    pump(arg);
}

static void on_close(ws_conn_t *ws, int code, void *arg)
{
    struct stream *st = arg;
    st->closing = 1;
    if (st->cmd && st->kill_on_disconnect && command_state(st->cmd) == CMD_RUNNING)
        command_kill(st->cmd, SIGKILL);
    if (st->watch)
        command_unwatch(st->watch);
    if (st->sb)
        sandbox_unref(st->sb);
    free(st->chunk);
    buf_free(&st->msg);
    free(st);
}

/* Reads an optional offset member; -1 when invalid. */
static long long opt_offset(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    return json_is_integer(v) && json_integer_value(v) >= 0 ? json_integer_value(v) : -1;
}

static void handle_first(struct stream *st, json_t *msg)
{
    static const char *const extra[] = {"type",     "binary",       "kill_on_disconnect",
                                        "lossless", "buffer_bytes", NULL};
    char err[ERRLEN];
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (type && strcmp(type, "reconnect") == 0) {
        static const char *const keys[] = {"type",          "command_id", "stdout_offset",
                                           "stderr_offset", "binary",     "kill_on_disconnect",
                                           "lossless",      NULL};
        const char *cid = json_string_value(json_object_get(msg, "command_id"));
        long long o1 = opt_offset(msg, "stdout_offset"), o2 = opt_offset(msg, "stderr_offset");
        struct command *c = cid ? command_find(st->sb, cid) : NULL;
        if (json_check_keys(msg, keys, NULL, err, ERRLEN) < 0 || o1 < 0 || o2 < 0 || !cid) {
            send_error(st, "bad_request",
                       o1 < 0 || o2 < 0 ? "offsets must be non-negative integers"
                       : !cid           ? "'command_id' is required"
                                        : err);
            goto close;
        }
        if (!c) {
            send_error(st, "not_found", "no such command in this sandbox");
            goto close;
        }
        api_audit_caller(st->ctx, st->caller, "command.stream", st->sb, 200,
                         json_pack("{s:s, s:s}", "command_id", cid, "via", "exec/ws reconnect"));
        st->binary = json_is_true(json_object_get(msg, "binary"));
        st->lossless = !json_is_false(json_object_get(msg, "lossless"));
        st->kill_on_disconnect = json_is_true(json_object_get(msg, "kill_on_disconnect"));
        if (attach(st, c, (uint64_t)o1, (uint64_t)o2) < 0)
            goto close;
        return;
    }
    if (!type || strcmp(type, "execute") != 0) {
        send_error(st, "bad_request",
                   "the first message must be {\"type\":\"execute\",...} or "
                   "{\"type\":\"reconnect\",...}");
        goto close;
    }
    struct api_run run;
    int status = api_parse_run(st->ctx, st->sb, msg, extra, &run, err, ERRLEN);
    long long ring = COMMAND_RING_DEFAULT;
    if (status == 0 && json_opt_int(msg, "buffer_bytes", "buffer_bytes", &ring, err, ERRLEN))
        status = 400;
    if (status == 0 && (ring < 4096 || ring > (long long)(256u << 20))) {
        status = ring < 4096 ? 400 : 422;
        snprintf(err, ERRLEN, "'buffer_bytes' must be between 4096 and 268435456");
    }
    if (status) {
        api_audit_caller(st->ctx, st->caller, "exec.ws", st->sb, status,
                         api_audit_command(msg, NULL));
        send_error(st, api_status_code(status), err);
        api_run_free(&run);
        goto close;
    }
    json_t *kod = json_object_get(msg, "kill_on_disconnect");
    st->kill_on_disconnect = kod ? json_is_true(kod) : 1;
    st->binary = json_is_true(json_object_get(msg, "binary"));
    st->lossless = !json_is_false(json_object_get(msg, "lossless"));
    struct command_spec spec = {
        .proc = {.argv = run.argv,
                 .env = (const char *const *)run.env,
                 .cwd = run.cwd,
                 .user = run.has_user ? &run.user : NULL},
        .stdin_data = run.stdin_data_ref,
        .stdin_len = run.stdin_len,
        .timeout_s = json_object_get(msg, "timeout_s") ? run.timeout_s : 0,
        .ring_bytes = (size_t)ring,
        .describe = run.describe,
    };
    struct command *c;
    int r = st->sb->state == SB_RUNNING ? command_start(st->sb, &spec, &c)
                                        : sandbox_unavailable(st->sb);
    json_t *audit = api_audit_command(msg, &run);
    if (!spec.timeout_s)
        json_object_set_new(audit, "timeout_s", json_null());
    if (r == 0)
        json_object_set_new(audit, "command_id", json_string(command_id(c)));
    api_audit_caller(st->ctx, st->caller, "exec.ws", st->sb, r < 0 ? api_errno_status(r) : 200,
                     audit);
    api_run_free(&run);
    if (r < 0) {
        send_error(st, api_errno_code(r), session_strerror(r));
        goto close;
    }
    if (attach(st, c, 0, 0) == 0)
        return;
close:
    st->closing = 1;
    ws_close(st->ws, 1008, "bad request");
}

static void on_message(ws_conn_t *ws, int binary, const char *data, size_t len, void *arg)
{
    struct stream *st = arg;
    json_error_t je;
    if (st->closing)
        return;
    json_t *msg = binary ? NULL : json_loadb(data, len, 0, &je);
    if (!msg || !json_is_object(msg)) {
        send_error(st, "bad_request", "messages must be JSON objects in text frames");
        json_decref(msg);
        if (!st->cmd) {
            st->closing = 1;
            ws_close(ws, 1008, "bad request");
        }
        return;
    }
    if (!st->cmd) {
        handle_first(st, msg);
        json_decref(msg);
        return;
    }
    const char *type = json_string_value(json_object_get(msg, "type"));
    char err[ERRLEN];
    if (!type) {
        send_error(st, "bad_request", "missing 'type'");
    } else if (strcmp(type, "input") == 0) {
        const char *text = json_string_value(json_object_get(msg, "data"));
        const char *b64 = json_string_value(json_object_get(msg, "data_b64"));
        unsigned char *bytes = NULL;
        size_t n = 0;
        if (text) {
            if (command_write(st->cmd, text, json_string_length(json_object_get(msg, "data"))) < 0)
                send_error(st, "conflict", "the command's stdin is closed");
        } else if (b64 && util_base64_decode(b64, strlen(b64), &bytes, &n) == 0) {
            if (command_write(st->cmd, bytes, n) < 0)
                send_error(st, "conflict", "the command's stdin is closed");
            free(bytes);
        } else {
            send_error(st, "bad_request", "input needs 'data' (text) or 'data_b64'");
        }
    } else if (strcmp(type, "eof") == 0) {
        command_close_stdin(st->cmd);
    } else if (strcmp(type, "kill") == 0) {
        int sig = SIGKILL;
        if (api_parse_signal(json_object_get(msg, "signal"), &sig, err, ERRLEN) < 0)
            send_error(st, "bad_request", err);
        else
            command_kill(st->cmd, sig);
    } else if (strcmp(type, "resize") == 0) {
        send_error(st, "bad_request", "this command has no terminal; use a terminal to resize");
    } else {
        snprintf(err, ERRLEN, "unknown message type '%s'", type);
        send_error(st, "bad_request", err);
    }
    json_decref(msg);
}

static const struct ws_callbacks stream_callbacks = {
    .on_message = on_message, .on_close = on_close, .on_drain = on_drain};

static struct stream *stream_new(struct api_ctx *ctx, struct sandbox *sb, http_req_t *req)
{
    struct stream *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->ctx = ctx;
    st->sb = sb;
    snprintf(st->caller, sizeof(st->caller), "%s", http_req_peer(req));
    sandbox_ref(sb);
    return st;
}

static int parse_flag(http_req_t *req, const char *name, int dflt)
{
    const char *v = http_req_query(req, name);
    if (!v)
        return dflt;
    return strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "") == 0;
}

void api_command_stream(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"stdout_offset", "stderr_offset",      "binary",
                                         "lossless",      "kill_on_disconnect", NULL};
    if (api_check_query(req, params) < 0)
        return;
    struct command *c = api_find_command(ctx, req, p);
    if (!c)
        return;
    if (!ws_is_upgrade(req)) {
        http_respond_error(req, 400, "bad_request", "this endpoint is a WebSocket");
        return;
    }
    unsigned long long off[2] = {0, 0};
    const char *names[2] = {"stdout_offset", "stderr_offset"};
    for (int i = 0; i < 2; i++) {
        const char *v = http_req_query(req, names[i]);
        char *end;
        if (v && (!*v || (off[i] = strtoull(v, &end, 10), *end) || v[0] == '-')) {
            http_respond_error(req, 400, "bad_request", "'%s' must be a non-negative integer",
                               names[i]);
            return;
        }
    }
    struct stream *st = stream_new(ctx, command_sandbox(c), req);
    if (!st) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    api_audit(ctx, req, "command.stream", st->sb, 200,
              json_pack("{s:s, s:s}", "command_id", command_id(c), "via", "stream"));
    st->binary = parse_flag(req, "binary", 0);
    st->lossless = parse_flag(req, "lossless", 1);
    st->kill_on_disconnect = parse_flag(req, "kill_on_disconnect", 0);
    if (!(st->ws = ws_accept(req, &stream_callbacks, st, WS_DEFAULT_MAX_MESSAGE))) {
        sandbox_unref(st->sb);
        free(st);
        return;
    }
    if (attach(st, c, off[0], off[1]) < 0) {
        st->closing = 1;
        ws_close(st->ws, 1011, "out of memory");
    }
}

void api_exec_ws(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    if (!ws_is_upgrade(req)) {
        http_respond_error(req, 400, "bad_request", "this endpoint is a WebSocket");
        return;
    }
    struct stream *st = stream_new(ctx, sb, req);
    if (!st) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    if (!(st->ws = ws_accept(req, &stream_callbacks, st, WS_DEFAULT_MAX_MESSAGE))) {
        sandbox_unref(st->sb);
        free(st);
    }
}
