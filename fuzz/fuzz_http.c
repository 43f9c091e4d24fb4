/*
 * fuzz_http — the HTTP/1.1 server (net/http*.c on llhttp) and the router (net/router.c,
 * net/dispatch.c).
 *
 * Input: one option byte, then what a client sends on one connection.
 *   option & 3    pieces the bytes are sent in: all at once, 3, 13 or 128 bytes
 *   option & 4    half-close after sending
 * The server has small limits, so that inputs of a few KiB reach them. Its handler routes every
 * request with warren's route table and answers the ways the API does: JSON bodies parsed with
 * core/json, uploads streamed (through the API's own stream hook) with pauses and early answers,
 * downloads streamed with Content-Length or chunked, WebSocket upgrades accepted. Query
 * parameters pick the variant, so the fuzzer can reach each one.
 *
 * Oracle, besides the sanitizers: everything the server sends must parse as a sequence of HTTP
 * responses, one per request the handler saw (plus a final error for a request it never saw),
 * and the server must let go of the connection once the client closed it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <llhttp.h>

#include "api/api.h"
#include "core/json.h"
#include "core/log.h"
#include "harness.h"
#include "net/dispatch.h"
#include "net/http.h"
#include "net/router.h"
#include "net/ws.h"

#define MAX_SEEN 256
#define REPLY_CAP (1 << 20)

/* The patterns of the daemon's route tables: the native API's (api/api.c), then the atropos slot
 * protocol's (api/compat_atropos.c). */
static const struct route routes[] = {
    {"GET", "/healthz", NULL},
    {"GET", "/v1/info", NULL},
    {"POST", "/v1/sandboxes", NULL},
    {"GET", "/v1/sandboxes", NULL},
    {"GET", "/v1/sandboxes/{id}", NULL},
    {"DELETE", "/v1/sandboxes/{id}", NULL},
    {"PATCH", "/v1/sandboxes/{id}", NULL},
    {"POST", "/v1/sandboxes/{id}/pause", NULL},
    {"GET", "/v1/sandboxes/{id}/files", NULL},
    {"PUT", "/v1/sandboxes/{id}/files", NULL},
    {"DELETE", "/v1/sandboxes/{id}/files", NULL},
    {"GET", "/v1/sandboxes/{id}/files/list", NULL},
    {"GET", "/v1/sandboxes/{id}/archive", NULL},
    {"PUT", "/v1/sandboxes/{id}/archive", NULL},
    {"POST", "/v1/sandboxes/{id}/resume", NULL},
    {"POST", "/v1/sandboxes/{id}/exec", NULL},
    {"POST", "/v1/sandboxes/{id}/commands", NULL},
    {"GET", "/v1/sandboxes/{id}/commands", NULL},
    {"GET", "/v1/sandboxes/{id}/commands/{cid}", NULL},
    {"POST", "/v1/sandboxes/{id}/commands/{cid}/kill", NULL},
    {"GET", "/v1/sandboxes/{id}/commands/{cid}/stream", NULL},
    {"GET", "/v1/sandboxes/{id}/exec/ws", NULL},
    {"POST", "/v1/batch", NULL},
    {"POST", "/v1/sandboxes/{id}/shells", NULL},
    {"GET", "/v1/sandboxes/{id}/shells", NULL},
    {"POST", "/v1/sandboxes/{id}/shells/{sid}/run", NULL},
    {"DELETE", "/v1/sandboxes/{id}/shells/{sid}", NULL},
    {"POST", "/v1/sandboxes/{id}/terminals", NULL},
    {"GET", "/v1/sandboxes/{id}/terminals", NULL},
    {"GET", "/v1/sandboxes/{id}/terminals/{tid}", NULL},
    {"DELETE", "/v1/sandboxes/{id}/terminals/{tid}", NULL},
    {"POST", "/v1/sandboxes/{id}/terminals/{tid}/keys", NULL},
    {"GET", "/v1/sandboxes/{id}/terminals/{tid}/screen", NULL},
    {"POST", "/v1/sandboxes/{id}/terminals/{tid}/resize", NULL},
    {"GET", "/v1/sandboxes/{id}/terminals/{tid}/recording", NULL},
    {"GET", "/v1/sandboxes/{id}/terminals/{tid}/attach", NULL},
    {"GET", "/v1/audit", NULL},
};

static const struct route atropos_routes[] = {
    {"POST", "/execute", NULL},        {"POST", "/batch", NULL},
    {"GET", "/health", NULL},          {"POST", "/reset", NULL},
    {"GET", "/slots", NULL},           {"POST", "/artifacts/read", NULL},
    {"POST", "/artifacts/list", NULL}, {"POST", "/artifacts/archive", NULL},
};

#define NROUTES(t) (sizeof(t) / sizeof((t)[0]))

static uv_loop_t loop;
static http_server_t *server;
static struct sockaddr_un server_addr;
static unsigned idle_handles;

/* Requests the handler saw, in order: 1 for HEAD (its response has no body). */
static unsigned char seen_head[MAX_SEEN];
static size_t nseen;

/* The upload whose body is paused, resumed from the loop by `resume`. */
struct upload {
    http_req_t *req;
    size_t bytes;
    size_t limit;    /* answer 413 once more arrived (0: none) */
    size_t pause_at; /* pause every this many bytes (0: never) */
    size_t next_pause;
};
static uv_timer_t resume;
static struct upload *paused;

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static size_t query_size(http_req_t *req, const char *name, size_t def, size_t max)
{
    const char *v = http_req_query(req, name);
    if (!v)
        return def;
    size_t n = strtoul(v, NULL, 10);
    return n > max ? max : n;
}

/* ---- uploads ---------------------------------------------------------------------------- */

static void upload_finish(struct upload *u, int status, const char *what, int err)
{
    if (paused == u)
        paused = NULL;
    http_respond_error(u->req, status, status < 400 ? "ok" : "failed", "%s: %zu bytes (%d)", what,
                       u->bytes, err);
    free(u);
}

static void on_resume(uv_timer_t *t)
{
    struct upload *u = paused;
    paused = NULL;
    if (u)
        http_req_body_pause(u->req, 0);
}

static void upload_data(http_req_t *req, const char *data, size_t len, void *arg)
{
    struct upload *u = arg;
    u->bytes += len;
    if (u->limit && u->bytes > u->limit) {
        upload_finish(u, 413, "too large", 0);
        return;
    }
    if (u->pause_at && u->bytes >= u->next_pause) {
        u->next_pause = u->bytes + u->pause_at;
        http_req_body_pause(req, 1);
        paused = u;
        uv_timer_start(&resume, on_resume, 0, 0);
    }
}

static void upload_end(http_req_t *req, int err, void *arg)
{
    upload_finish(arg, err ? 400 : 201, "upload", err);
}

static void upload_abort(http_req_t *req, void *arg)
{
    upload_finish(arg, 499, "aborted", 0);
}

static void handle_upload(http_req_t *req)
{
    if (http_req_query(req, "reject")) {
        /* Early rejection: answered before (or without) reading the body. */
        http_respond_error(req, 413, "payload_too_large", "rejected up front");
        return;
    }
    struct upload *u = calloc(1, sizeof(*u));
    if (!u) {
        http_respond_error(req, 503, "unavailable", "out of memory");
        return;
    }
    u->req = req;
    u->limit = query_size(req, "limit", 0, 1 << 20);
    u->pause_at = query_size(req, "pause", 0, 1 << 20);
    u->next_pause = u->pause_at;
    http_req_set_abort_cb(req, upload_abort, u);
    http_req_body_start(req, upload_data, upload_end, u);
}

/* ---- downloads and the rest ------------------------------------------------------------- */

static void handle_download(http_req_t *req)
{
    static const char chunk[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    size_t pieces = query_size(req, "pieces", 3, 64);
    size_t piece = query_size(req, "piece", 16, sizeof(chunk) - 1);
    int64_t length = http_req_query(req, "chunked") ? -1 : (int64_t)(pieces * piece);
    if (http_req_query(req, "short") && length > 0)
        length++; /* one byte is never written: the connection must close after it */
    int rc = http_respond_start(req, 200, "application/octet-stream", length, "X-Fuzz: 1\r\n");
    for (size_t i = 0; rc == 0 && i < pieces; i++)
        rc = http_respond_write(req, chunk, piece);
    http_respond_end(req);
}

/* Echoes messages; "close<c><reason>" closes with code 990 + c. */
static void ws_echo(ws_conn_t *ws, int binary, const char *data, size_t len, void *arg)
{
    if (len >= 5 && memcmp(data, "close", 5) == 0) {
        char reason[160] = "";
        if (len > 6)
            snprintf(reason, sizeof(reason), "%.*s", (int)(len - 6), data + 6);
        ws_close(ws, len > 5 ? (unsigned char)data[5] + 990 : 1000, reason);
    } else if (binary) {
        ws_send_binary(ws, data, len);
    } else {
        ws_send_text_valid(ws, data, len);
    }
}

static const struct ws_callbacks ws_cbs = {.on_message = ws_echo};

static void handle_ws(http_req_t *req)
{
    if (!ws_is_upgrade(req)) {
        http_respond_error(req, 400, "bad_request", "this endpoint needs a WebSocket upgrade");
        return;
    }
    ws_accept(req, &ws_cbs, NULL, 256);
}

static void handle_json(http_req_t *req)
{
    static const char *const keys[] = {"argv", "shell", "env", "cwd", "stdin", "timeout_s", NULL};
    char err[256];
    size_t len;
    const char *body = http_req_body(req, &len);
    json_t *obj = json_parse_object(body, len, err, sizeof(err));
    if (!obj) {
        http_respond_error(req, 400, "bad_request", "%s", err);
        return;
    }
    if (json_check_keys(obj, keys, NULL, err, sizeof(err)) < 0) {
        json_decref(obj);
        http_respond_error(req, 400, "bad_request", "%s", err);
        return;
    }
    http_respond_json(req, 200, obj);
}

static void handle_plain(http_req_t *req, const struct route_params *params)
{
    buf_t b = BUF_INIT;
    for (size_t i = 0; i < params->count; i++)
        buf_appendf(&b, "%.*s=%s ", (int)params->name_lens[i], params->names[i], params->values[i]);
    for (size_t i = 0; i < http_req_query_count(req); i++)
        buf_appendf(&b, "?%s=%s ", http_req_query_name(req, i), http_req_query_value(req, i));
    const char *h = http_req_header(req, "X-Test");
    buf_appendf(&b, "x-test=%s raw=%s v=%d", h ? h : "", http_req_raw_query(req),
                http_req_version(req));
    /* Arbitrary bytes in an error message (the JSON falls back to ASCII). */
    http_respond_error(req, 200, "ok", "%s", b.data ? b.data : "");
    buf_free(&b);
}

static void handler(http_req_t *req, void *ctx)
{
    struct route_params params;
    const char *method = http_req_method(req);
    const char *path = http_req_path(req);
    if (nseen < MAX_SEEN)
        seen_head[nseen++] = strcmp(method, "HEAD") == 0;
    if (strcmp(method, "HEAD") == 0)
        method = "GET";
    /* As the daemon routes: the API's table, then the slot protocol's. */
    const struct route *table = routes;
    int i = dispatch_match(routes, NROUTES(routes), req, &params);
    if (i == -ENOENT) {
        table = atropos_routes;
        i = dispatch_match(atropos_routes, NROUTES(atropos_routes), req, &params);
    }
    if (i == -EPERM)
        return; /* answered 405 */
    if (i < 0) {
        http_respond_error(req, 404, "not_found", "no such resource: %s", path);
        return;
    }
    const char *pattern = table[i].pattern;
    if (ends_with(pattern, "/stream") || ends_with(pattern, "/ws") || ends_with(pattern, "/attach"))
        handle_ws(req);
    else if (strcmp(method, "PUT") == 0)
        handle_upload(req);
    else if (ends_with(pattern, "/files") || ends_with(pattern, "/archive") ||
             ends_with(pattern, "/recording"))
        handle_download(req);
    else if (strcmp(method, "POST") == 0)
        handle_json(req);
    else
        handle_plain(req, &params);
}

/* ---- the oracle: the reply parses as responses ------------------------------------------ */

struct resp_check {
    size_t finals; /* final (non-1xx) responses so far */
};

static int resp_headers_complete(llhttp_t *p)
{
    struct resp_check *rc = p->data;
    if (p->status_code < 200)
        return 0;
    size_t i = rc->finals++;
    /* A response to HEAD announces a body it does not carry. */
    return i < nseen && seen_head[i] ? 1 : 0;
}

static void check_reply(const struct fz_reply *r)
{
    llhttp_settings_t s;
    llhttp_t p;
    struct resp_check rc = {0};
    llhttp_settings_init(&s);
    s.on_headers_complete = resp_headers_complete;
    llhttp_init(&p, HTTP_RESPONSE, &s);
    p.data = &rc;
    llhttp_errno_t err = llhttp_execute(&p, (const char *)r->data, r->len);
    if (err != HPE_OK && err != HPE_PAUSED_UPGRADE)
        fz_fail("the server sent something that is not an HTTP response (%s: %s) at byte %zu "
                "of %zu",
                llhttp_errno_name(err), llhttp_get_error_reason(&p),
                (size_t)(llhttp_get_error_pos(&p) - (const char *)r->data), r->len);
    /* At most one answer per request the handler saw, and the error that ended the connection
     * (fewer when the client left before an answer). */
    if (rc.finals > nseen + 1)
        fz_fail("%zu responses for %zu requests", rc.finals, nseen);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[64], addr[128];
    log_set_level(LOG_ERROR);
    fz_scratch_dir("http", dir, sizeof(dir));
    struct http_limits limits = {
        .max_header_bytes = 2048,
        .max_body_bytes = 8192,
        .max_connections = 4,
        .idle_timeout_ms = 60000,
    };
    if (uv_loop_init(&loop) < 0 || http_server_new(&server, &loop, &limits, handler, NULL) < 0)
        fz_fail("cannot create the server");
    http_server_set_stream_hook(server, api_wants_stream);
    snprintf(addr, sizeof(addr), "unix:%s/http.sock", dir);
    if (http_server_listen(server, addr) < 0)
        fz_fail("cannot listen on %s", addr);
    server_addr.sun_family = AF_UNIX;
    snprintf(server_addr.sun_path, sizeof(server_addr.sun_path), "%s/http.sock", dir);
    uv_timer_init(&loop, &resume);
    idle_handles = fz_loop_handles(&loop);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t pieces[] = {0, 3, 13, 128};
    static uint8_t reply_buf[REPLY_CAP];
    if (size < 1)
        return 0;
    struct fz_reply reply = {reply_buf, 0, sizeof(reply_buf)};
    struct fz_client c = {
        .addr = (const struct sockaddr *)&server_addr,
        .addrlen = sizeof(server_addr),
        .piece = pieces[data[0] & 3],
        .half_close = (data[0] & 4) != 0,
        .idle_handles = idle_handles,
        .reply = &reply,
    };
    nseen = 0;
    fz_session(&loop, &c, data + 1, size - 1);
    if (paused)
        fz_fail("an upload is still paused after its connection closed");
    check_reply(&reply);
    return 0;
}
