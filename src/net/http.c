/*
 * http — the HTTP/1.1 server. See http.h for the contract.
 *
 * Ownership, in one place:
 *   - A connection (struct conn) owns two uv handles (the stream and a timer). It is freed when
 *     both close callbacks have run, never earlier, so a conn pointer stays valid for the whole
 *     callback stack in which it was closed.
 *   - A request is owned by its connection while being parsed (conn->cur, conn->ready). Once passed
 *     to the handler (conn->active) it is owned by the handler until it responds; if the connection
 *     closes first, the request is detached (req->conn = NULL) and freed by the response.
 *   - The server counts every uv handle it opened; `done` runs when the count drops to zero after
 *     http_server_close().
 *   - A connection taken over by an upgrade (conn->upgraded) keeps its struct, handles, list entry
 *     and count here, but its I/O and timer belong to the new owner (whose pointer is then in the
 *     handles' `data`). It is closed by http_takeover_release() or, on http_server_close(), by the
 *     owner after ops->server_closing; ops->closed runs from the last close callback.
 *
 * Flow control: the parser is fed from conn->in and pauses after every complete request, so the
 * next request is parsed only once the previous response was queued (pipelining in order). While a
 * request is with the handler, reading continues (so a client hang-up is noticed and reported with
 * the abort callback) until READ_HIGH_WATER bytes are buffered. Input from a client that does not
 * read its responses is no longer parsed once WRITE_HIGH_WATER bytes are queued for it.
 *
 * Streaming bodies: a request claimed by the stream hook is dispatched from a pause in
 * on_headers_complete and stays conn->body_req (besides conn->active) until its body ended or it
 * was answered. The parser keeps running for it while the handler has started and not paused the
 * body; on_body hands the bytes straight to the handler. A pause inside on_body can leave the
 * parser just before on_message_complete with no input left, so conn->parse_pending then allows
 * one execute with zero bytes. An answer before the end of the body either skips a small rest
 * (conn->discarding) or closes the connection.
 *
 * User callbacks that may answer (and so free) a request while this file still looks at it run
 * with req->cb_depth raised: the answer then only marks the request consumed and the caller frees
 * it afterwards. Work the API must not do synchronously (delivering callbacks from inside
 * http_req_body_start() and friends) goes through a per-request zero-delay timer (struct kick).
 */
#include "net/http.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <llhttp.h>

#include "core/buf.h"
#include "core/log.h"

#define DEFAULT_MAX_HEADER_BYTES (16u * 1024)
#define DEFAULT_MAX_BODY_BYTES (16u * 1024 * 1024)
#define DEFAULT_MAX_CONNECTIONS 1024u
#define DEFAULT_IDLE_TIMEOUT_MS 60000u

#define LISTEN_BACKLOG 511
#define READ_BUF_SIZE (64 * 1024)
#define READ_HIGH_WATER (64 * 1024)
#define WRITE_HIGH_WATER (1024 * 1024)
/* After an error response we half-close and keep draining the client's input for a while before
 * closing: closing a socket with unread input makes the kernel send RST, which can destroy the
 * response before the client read it (typical with 413 while the client is still uploading). */
#define LINGER_MS 2000
#define PEER_LEN 64
/* An unread streamed body up to this size is skipped to keep the connection; a bigger one costs
 * less as a new connection than as bytes to swallow. */
#define DRAIN_MAX (64 * 1024)

struct hdr {
    buf_t name;
    buf_t value;
};

struct http_req {
    struct conn *conn; /* set while with the handler and the connection is open */
    const char *method;
    buf_t url;
    char *path;
    char *raw_query;
    char **qnames;
    char **qvalues;
    size_t nq;
    struct hdr *hdrs;
    size_t nhdrs, caphdrs;
    buf_t hfield, hvalue; /* the header being parsed */
    buf_t body;
    size_t header_bytes;     /* request line + headers, as seen by the parser callbacks */
    size_t raw_header_bytes; /* whole input chunks consumed before the headers ended */
    int headers_done;
    int keep_alive;
    int http10;
    int version; /* major * 10 + minor */
    int is_head;
    int gone;
    http_abort_fn abort_cb;
    void *abort_arg;
    char peer[PEER_LEN];

    /* Streaming (both directions); see the top of the file. */
    uv_loop_t *loop;
    struct kick *kick;      /* created on first use */
    unsigned cb_depth;      /* user callbacks running that may consume the request */
    int64_t content_length; /* declared; -1 chunked; 0 no body */
    http_body_data_fn on_data;
    http_body_end_fn on_end;
    void *body_arg;
    int body_err;                 /* valid once body_ended */
    unsigned consumed : 1;        /* answered; freed once cb_depth drops to 0 */
    unsigned streaming : 1;       /* dispatched before its body */
    unsigned expect_continue : 1; /* streaming and the client waits for a 100 */
    unsigned continue_sent : 1;   /* that 100 was queued */
    unsigned body_started : 1;    /* http_req_body_start() called */
    unsigned body_paused : 1;     /* http_req_body_pause() */
    unsigned body_ended : 1;      /* no more body (body_err says how it ended) */
    unsigned body_delivered : 1;  /* a buffered body went to on_data */
    unsigned end_delivered : 1;   /* on_end ran */
    unsigned resp_started : 1;    /* http_respond_start() called */
    unsigned resp_chunked : 1;    /* body written in chunked coding */
    unsigned resp_nobody : 1;     /* HEAD or a bodyless status: writes are discarded */
    unsigned resp_close : 1;      /* the headers said Connection: close */
    unsigned drain_armed : 1;     /* a write left HTTP_RESPOND_HIGH_WATER queued */
    int64_t resp_remaining;       /* Content-Length bytes still owed; -1 if not announced */
    void (*drain_cb)(http_req_t *req, void *arg);
    void *drain_arg;
};

/* A zero-delay timer that runs req_pump() from the loop. Separate from the request because its
 * handle outlives it (uv_close is asynchronous); `req` is cleared when the request is freed. */
struct kick {
    uv_timer_t timer;
    http_req_t *req;
};

struct conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer; /* idle timeout, then linger timeout */
    uv_shutdown_t shutdown;
    http_server_t *srv;
    struct conn *prev, *next;
    llhttp_t parser;
    buf_t in;             /* received, not yet parsed */
    http_req_t *cur;      /* being parsed */
    http_req_t *ready;    /* parsed, about to be dispatched */
    http_req_t *active;   /* with the handler */
    http_req_t *body_req; /* == active while its streamed body is being parsed */
    size_t out_bytes;     /* bytes in writes not yet completed */
    int close_err;        /* why the connection is closing (for on_end); 0: -ECONNRESET */
    /* Set by a parser callback that wants the connection answered with an error and closed. */
    int err_status;
    const char *err_code;
    const char *err_msg;
    unsigned pending_writes;
    int nhandles;
    unsigned closing : 1;           /* uv_close() called */
    unsigned reading : 1;           /* uv_read_start() active */
    unsigned processing : 1;        /* inside conn_process() (re-entrancy guard) */
    unsigned close_after_write : 1; /* no more requests; close once the output is flushed */
    unsigned lingering : 1;         /* output flushed, half-closed, draining input */
    unsigned eof : 1;               /* the client sent EOF */
    unsigned counted : 1;           /* counts towards max_connections */
    unsigned upgraded : 1;          /* taken over (http_req_takeover); see the top of the file */
    unsigned discarding : 1;        /* skipping the rest of an answered request's body */
    unsigned broken : 1;            /* the parser failed inside a streamed body: parse no more */
    unsigned parse_pending : 1;     /* the parser may progress without input (see top) */
    unsigned close_soon : 1;        /* closing from the timer (not from inside an API call) */
    const struct http_takeover_ops *tk_ops;
    void *tk_owner;
    char peer[PEER_LEN];
};

struct listener {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    http_server_t *srv;
    struct listener *next;
    int is_tcp;
    char *unix_path; /* unlinked on close */
};

struct http_server {
    uv_loop_t *loop;
    struct http_limits limits;
    http_handler_fn handler;
    http_stream_hook_fn wants_stream;
    void *ctx;
    llhttp_settings_t settings;
    struct listener *listeners;
    struct conn *conns;
    unsigned nconns;   /* counted connections (not rejected ones) */
    unsigned nhandles; /* uv handles not yet through their close callback */
    int port;
    int closing;
    int done_called;
    void (*done)(void *arg);
    void *done_arg;
    uv_timer_t kick; /* closed in http_server_close so `done` always runs from the loop */
    /* One read buffer for all connections: libuv calls alloc_cb and read_cb back to back for one
     * stream, and read_cb copies what it needs. */
    char rbuf[READ_BUF_SIZE];
};

struct wreq {
    uv_write_t req;
    char *data;
    size_t len;
};

static void conn_close(struct conn *c);
static void conn_process(struct conn *c);
static void conn_update(struct conn *c);
static void conn_linger(struct conn *c);
static void maybe_done(http_server_t *srv);
static void req_pump(http_req_t *req);
static void on_timer(uv_timer_t *t);
static void conn_set_reading(struct conn *c, int on);

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 */

const char *http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Entity";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 507:
        return "Insufficient Storage";
    default:
        return "Unknown";
    }
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string; `plus` turns '+' into ' ' (query syntax). Malformed
 * escapes are kept literally (lenient, like most servers). A decoded NUL would silently truncate
 * the C string, so it is reported through *nul and the caller rejects the request. */
static char *pct_decode(const char *s, size_t n, int plus, int *nul)
{
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = hexval(s[i + 1])) >= 0 &&
            (lo = hexval(s[i + 2])) >= 0) {
            char ch = (char)(hi * 16 + lo);
            if (ch == '\0')
                *nul = 1;
            out[o++] = ch;
            i += 2;
        } else if (plus && s[i] == '+') {
            out[o++] = ' ';
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* Builds the error object; messages can carry arbitrary bytes (paths, errno text) and jansson
 * refuses invalid UTF-8, so fall back to an ASCII-only copy rather than lose the error. */
static json_t *error_object(const char *code, const char *msg)
{
    json_t *o = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    if (o)
        return o;
    char *ascii = strdup(msg);
    if (!ascii)
        return NULL;
    for (char *p = ascii; *p; p++) {
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    }
    o = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", ascii);
    free(ascii);
    return o;
}

/* JSON text plus a newline (friendlier for curl users); steals `obj`. NULL obj → "". */
static char *json_body(json_t *obj, size_t *len)
{
    char *s = NULL;
    if (obj) {
        s = json_dumps(obj, JSON_COMPACT);
        json_decref(obj);
        if (!s)
            return NULL;
    }
    buf_t b = BUF_INIT;
    if (s) {
        int rc = buf_append_str(&b, s);
        free(s);
        if (rc < 0 || buf_append(&b, "\n", 1) < 0) {
            buf_free(&b);
            return NULL;
        }
    }
    *len = b.len;
    return buf_steal(&b);
}

static int status_bodyless(int status)
{
    return (status >= 100 && status < 200) || status == 204 || status == 304;
}

/* Formats a complete response into `out`: one buffer, one uv_write. */
static int format_response(buf_t *out, int status, const char *ctype, const void *body, size_t len,
                           const char *extra, int close, int keep_alive_10, int head)
{
    int rc = buf_appendf(out, "HTTP/1.1 %d %s\r\n", status, http_status_text(status));
    int bodyless = status_bodyless(status);
    if (!rc && !bodyless) {
        if (ctype && *ctype)
            rc = buf_appendf(out, "Content-Type: %s\r\n", ctype);
        if (!rc)
            rc = buf_appendf(out, "Content-Length: %zu\r\n", len);
    }
    if (!rc && close)
        rc = buf_append_str(out, "Connection: close\r\n");
    else if (!rc && keep_alive_10)
        rc = buf_append_str(out, "Connection: keep-alive\r\n"); /* 1.0 clients assume close */
    if (!rc && extra)
        rc = buf_append_str(out, extra);
    if (!rc)
        rc = buf_append(out, "\r\n", 2);
    if (!rc && !bodyless && !head && len)
        rc = buf_append(out, body, len);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Requests
 */

static void on_req_kick_closed(uv_handle_t *h)
{
    free(h->data);
}

static void req_free(http_req_t *req)
{
    if (!req)
        return;
    if (req->kick) {
        req->kick->req = NULL;
        uv_close((uv_handle_t *)&req->kick->timer, on_req_kick_closed);
    }
    buf_free(&req->url);
    free(req->path);
    free(req->raw_query);
    for (size_t i = 0; i < req->nq; i++) {
        free(req->qnames[i]);
        free(req->qvalues[i]);
    }
    free(req->qnames);
    free(req->qvalues);
    for (size_t i = 0; i < req->nhdrs; i++) {
        buf_free(&req->hdrs[i].name);
        buf_free(&req->hdrs[i].value);
    }
    free(req->hdrs);
    buf_free(&req->hfield);
    buf_free(&req->hvalue);
    buf_free(&req->body);
    free(req);
}

/* The request was answered: free it, or let the user callback running on it finish first. */
static void req_release(http_req_t *req)
{
    req->consumed = 1;
    if (req->cb_depth == 0)
        req_free(req);
}

/* Brackets a user callback that may answer the request. req_cb_leave() returns 1 (and frees the
 * request) if it was answered, so the caller must not touch it any more. */
static void req_cb_enter(http_req_t *req)
{
    req->cb_depth++;
}

static int req_cb_leave(http_req_t *req)
{
    req->cb_depth--;
    if (!req->consumed)
        return 0;
    if (req->cb_depth == 0)
        req_free(req);
    return 1;
}

static void on_kick(uv_timer_t *t)
{
    struct kick *k = t->data;
    if (k->req)
        req_pump(k->req);
}

/* Runs req_pump() from the loop soon. */
static void req_kick(http_req_t *req)
{
    if (!req->kick) {
        struct kick *k = calloc(1, sizeof(*k));
        if (!k) {
            /* Delivering synchronously is worse than late, but better than never. */
            log_error("http: out of memory; delivering request callbacks synchronously");
            req_pump(req);
            return;
        }
        uv_timer_init(req->loop, &k->timer);
        k->timer.data = k;
        k->req = req;
        req->kick = k;
    }
    uv_timer_start(&req->kick->timer, on_kick, 0, 0);
}

/* Runs on_end if it is due: the body ended (successfully only while not paused). */
static void req_deliver_end(http_req_t *req)
{
    if (!req->body_started || !req->body_ended || req->end_delivered || req->consumed)
        return;
    if (req->body_paused && req->body_err == 0)
        return;
    req->end_delivered = 1;
    if (req->on_end)
        req->on_end(req, req->body_err, req->body_arg);
}

/* The body ended (err 0) or cannot complete (err < 0); on_end runs now if the handler started
 * the body, else once it does. May answer and free the request. */
static void req_end_body(http_req_t *req, int err)
{
    if (req->body_ended)
        return;
    req->body_ended = 1;
    req->body_err = err;
    req_deliver_end(req);
}

static struct hdr *req_find_header(const http_req_t *req, const char *name)
{
    for (size_t i = 0; i < req->nhdrs; i++) {
        if (strcasecmp(req->hdrs[i].name.data, name) == 0)
            return &req->hdrs[i];
    }
    return NULL;
}

/* Stores the header just parsed; a repeated name is folded into the first one with ", ". */
static int req_commit_header(http_req_t *req)
{
    /* Make sure both strings exist (an empty value never reaches on_header_value). */
    if (buf_append(&req->hfield, "", 0) < 0 || buf_append(&req->hvalue, "", 0) < 0)
        return -ENOMEM;
    struct hdr *h = req_find_header(req, req->hfield.data);
    if (h) {
        if (buf_append(&h->value, ", ", 2) < 0 ||
            buf_append(&h->value, req->hvalue.data, req->hvalue.len) < 0)
            return -ENOMEM;
        buf_reset(&req->hfield);
        buf_reset(&req->hvalue);
        return 0;
    }
    if (req->nhdrs == req->caphdrs) {
        size_t cap = req->caphdrs ? req->caphdrs * 2 : 16;
        struct hdr *n = realloc(req->hdrs, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        req->hdrs = n;
        req->caphdrs = cap;
    }
    /* Move the buffers into the table rather than copying them. */
    req->hdrs[req->nhdrs].name = req->hfield;
    req->hdrs[req->nhdrs].value = req->hvalue;
    req->nhdrs++;
    buf_init(&req->hfield);
    buf_init(&req->hvalue);
    return 0;
}

static int req_add_query(http_req_t *req, const char *s, size_t n)
{
    const char *eq = memchr(s, '=', n);
    size_t nlen = eq ? (size_t)(eq - s) : n;
    int nul = 0;
    char *name = pct_decode(s, nlen, 1, &nul);
    char *value = eq ? pct_decode(eq + 1, n - nlen - 1, 1, &nul) : strdup("");
    char **qn = realloc(req->qnames, (req->nq + 1) * sizeof(*qn));
    if (qn)
        req->qnames = qn;
    char **qv = realloc(req->qvalues, (req->nq + 1) * sizeof(*qv));
    if (qv)
        req->qvalues = qv;
    if (!name || !value || !qn || !qv || nul) {
        free(name);
        free(value);
        return nul ? -EINVAL : -ENOMEM;
    }
    req->qnames[req->nq] = name;
    req->qvalues[req->nq] = value;
    req->nq++;
    return 0;
}

/* Splits the request target into the decoded path and the query. Only origin-form targets
 * ("/path?query") are served; absolute-form and "*" are rejected. */
static int req_parse_target(http_req_t *req, const char **why)
{
    const char *url = req->url.data ? req->url.data : "";
    if (url[0] != '/') {
        *why = "request target must start with '/'";
        return -EINVAL;
    }
    size_t plen = strcspn(url, "?");
    int nul = 0;
    req->path = pct_decode(url, plen, 0, &nul);
    if (!req->path)
        return -ENOMEM;
    if (nul) {
        *why = "NUL byte in path";
        return -EINVAL;
    }
    const char *q = url[plen] == '?' ? url + plen + 1 : "";
    req->raw_query = strdup(q);
    if (!req->raw_query)
        return -ENOMEM;
    while (*q) {
        size_t n = strcspn(q, "&");
        if (n > 0) {
            int rc = req_add_query(req, q, n);
            if (rc == -EINVAL) {
                *why = "NUL byte in query";
                return rc;
            }
            if (rc < 0)
                return rc;
        }
        q += n;
        if (*q == '&')
            q++;
    }
    return 0;
}

const char *http_req_method(const http_req_t *req)
{
    return req->method;
}

const char *http_req_path(const http_req_t *req)
{
    return req->path;
}

const char *http_req_raw_query(const http_req_t *req)
{
    return req->raw_query;
}

const char *http_req_query(const http_req_t *req, const char *name)
{
    for (size_t i = 0; i < req->nq; i++) {
        if (strcmp(req->qnames[i], name) == 0)
            return req->qvalues[i];
    }
    return NULL;
}

size_t http_req_query_count(const http_req_t *req)
{
    return req->nq;
}

const char *http_req_query_name(const http_req_t *req, size_t i)
{
    return i < req->nq ? req->qnames[i] : NULL;
}

const char *http_req_query_value(const http_req_t *req, size_t i)
{
    return i < req->nq ? req->qvalues[i] : NULL;
}

const char *http_req_header(const http_req_t *req, const char *name)
{
    struct hdr *h = req_find_header(req, name);
    return h ? h->value.data : NULL;
}

const char *http_req_body(const http_req_t *req, size_t *len)
{
    if (len)
        *len = req->body.len;
    return req->body.data ? req->body.data : "";
}

const char *http_req_peer(const http_req_t *req)
{
    return req->peer;
}

int http_req_version(const http_req_t *req)
{
    return req->version;
}

int http_req_gone(const http_req_t *req)
{
    return req->gone;
}

void http_req_set_abort_cb(http_req_t *req, http_abort_fn cb, void *arg)
{
    req->abort_cb = cb;
    req->abort_arg = arg;
}

int http_req_streaming(const http_req_t *req)
{
    return req->streaming;
}

int64_t http_req_content_length(const http_req_t *req)
{
    return req->content_length;
}

/* Delivers whatever is due for `req` from the loop (the kick timer): parsing of a streamed body,
 * a buffered body, on_end, a drain notification. */
static void req_pump(http_req_t *req)
{
    req_cb_enter(req);
    struct conn *c = req->conn;
    if (req->streaming && c && !req->body_ended) {
        /* Parses what is buffered and restarts reading; on_data and on_end run from there. */
        conn_process(c);
    } else if (!req->streaming && req->body_started && !req->body_delivered && !req->body_paused) {
        req->body_delivered = 1;
        if (req->body.len && req->on_data)
            req->on_data(req, req->body.data, req->body.len, req->body_arg);
    }
    if (!req->consumed && (req->streaming || req->body_delivered))
        req_deliver_end(req);
    c = req->conn;
    if (!req->consumed && c && req->drain_armed && req->drain_cb &&
        c->out_bytes < HTTP_RESPOND_LOW_WATER) {
        req->drain_armed = 0;
        req->drain_cb(req, req->drain_arg);
    }
    req_cb_leave(req);
}

/* ---------------------------------------------------------------------------------------------
 * Output
 */

static void on_write(uv_write_t *w, int status)
{
    struct wreq *wr = (struct wreq *)w;
    struct conn *c = w->data;
    c->out_bytes -= wr->len;
    free(wr->data);
    free(wr);
    c->pending_writes--;
    /* After a takeover the new owner notices a broken connection through its own I/O. */
    if (c->closing || c->upgraded)
        return;
    if (status < 0) {
        c->close_err = status;
        conn_close(c);
        return;
    }
    if (c->close_after_write) {
        if (c->pending_writes == 0)
            conn_linger(c);
        return;
    }
    http_req_t *req = c->active;
    if (req && req->drain_armed && req->drain_cb && c->out_bytes < HTTP_RESPOND_LOW_WATER) {
        req->drain_armed = 0;
        req->drain_cb(req, req->drain_arg);
        if (c->closing)
            return;
    }
    /* Parsing may have stopped because too much output was queued. */
    conn_process(c);
}

/* Queues `out` (taking its storage in every case); returns 0 or -errno. */
static int conn_write_raw(struct conn *c, buf_t *out)
{
    struct wreq *wr = malloc(sizeof(*wr));
    if (!wr) {
        buf_free(out);
        return -ENOMEM;
    }
    size_t len = out->len;
    wr->data = buf_steal(out);
    if (!wr->data) {
        free(wr);
        return -ENOMEM;
    }
    wr->len = len;
    /* Not uv_buf_init(): its length parameter is an unsigned int. */
    uv_buf_t b = {.base = wr->data, .len = len};
    wr->req.data = c;
    int rc = uv_write(&wr->req, &c->h.stream, &b, 1, on_write);
    if (rc < 0) {
        free(wr->data);
        free(wr);
        return rc;
    }
    c->pending_writes++;
    c->out_bytes += len;
    return 0;
}

/* Queues `out` (taking its storage). On failure the connection is closed and -errno returned. */
static int conn_write(struct conn *c, buf_t *out)
{
    int rc = conn_write_raw(c, out);
    if (rc < 0)
        conn_close(c);
    return rc;
}

/* Closes the connection from the loop instead of right away: used inside API calls a handler
 * makes on a live request, where conn_close() would run its abort callback (which may answer
 * and free the request) under the caller's feet. Until then the connection counts as gone. */
static void conn_close_soon(struct conn *c, int err)
{
    if (c->closing || c->close_soon)
        return;
    c->close_soon = 1;
    c->close_err = err;
    conn_set_reading(c, 0);
    uv_timer_start(&c->timer, on_timer, 0, 0);
}

/* Whether the unread rest of `req`'s streamed body may be skipped to keep the connection. */
static int body_skippable(const struct conn *c, const http_req_t *req)
{
    /* The client may or may not send a body it was not invited to send: framing is lost. */
    if (req->expect_continue && !req->continue_sent)
        return 0;
    if (c->broken || (c->parser.flags & F_CHUNKED))
        return 0;
    return c->parser.content_length <= DRAIN_MAX;
}

/* Takes an answered request off its connection. Returns 1 if the connection must close after
 * the response (no keep-alive, or a streamed body left unread that cannot be skipped). */
static int conn_detach(struct conn *c, http_req_t *req)
{
    int close = !req->keep_alive || c->srv->closing;
    if (c->body_req == req) {
        c->body_req = NULL;
        if (!close && body_skippable(c, req))
            c->discarding = 1;
        else
            close = 1;
    }
    c->active = NULL;
    req->conn = NULL;
    return close;
}

/* Answers with an error that ends the connection (no request is with the handler). */
static void conn_fail(struct conn *c, int status, const char *code, const char *msg)
{
    if (c->closing || c->close_after_write)
        return;
    c->close_after_write = 1;
    size_t len = 0;
    char *body = json_body(error_object(code, msg), &len);
    buf_t out = BUF_INIT;
    int rc = body ? format_response(&out, status, "application/json", body, len, NULL, 1, 0, 0)
                  : -ENOMEM;
    free(body);
    if (rc < 0) {
        buf_free(&out);
        conn_close(c);
        return;
    }
    conn_write(c, &out);
}

void http_respond(http_req_t *req, int status, const char *content_type, const void *body,
                  size_t len, const char *extra_headers)
{
    if (req->resp_started) {
        /* Misuse; ending the started response is the only answer still possible. */
        log_error("http: http_respond() after http_respond_start(); ending the response");
        http_respond_end(req);
        return;
    }
    struct conn *c = req->conn;
    if (!c || c->close_soon) {
        /* The client is gone (or this request was never dispatched): discard the answer. */
        if (c)
            conn_detach(c, req);
        req_release(req);
        return;
    }
    int close = conn_detach(c, req);
    if (status < 100 || status > 999)
        status = 500;
    buf_t out = BUF_INIT;
    int rc = format_response(&out, status, content_type, body, len, extra_headers, close,
                             req->http10 && !close, req->is_head);
    req_release(req);
    if (rc < 0) {
        buf_free(&out);
        conn_close(c);
        return;
    }
    if (conn_write(c, &out) < 0)
        return;
    if (close)
        c->close_after_write = 1;
    /* Next pipelined request, reading and timers. A no-op when called from inside the handler
     * invocation in conn_process(), which carries on by itself. */
    conn_process(c);
}

void http_respond_json(http_req_t *req, int status, json_t *obj)
{
    size_t len = 0;
    char *body = json_body(obj, &len);
    if (!body) {
        http_respond(req, 500, NULL, NULL, 0, NULL);
        return;
    }
    http_respond(req, status, "application/json", body, len, NULL);
    free(body);
}

void http_respond_error(http_req_t *req, int status, const char *code, const char *fmt, ...)
{
    buf_t msg = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    int rc = buf_vappendf(&msg, fmt, ap);
    va_end(ap);
    http_respond_json(req, status, error_object(code, rc < 0 ? "" : msg.data ? msg.data : ""));
    buf_free(&msg);
}

/* ---------------------------------------------------------------------------------------------
 * Streaming
 */

void http_server_set_stream_hook(http_server_t *srv, http_stream_hook_fn wants_stream)
{
    srv->wants_stream = wants_stream;
}

void http_req_body_start(http_req_t *req, http_body_data_fn on_data, http_body_end_fn on_end,
                         void *arg)
{
    if (req->body_started || req->consumed)
        return;
    req->body_started = 1;
    req->on_data = on_data;
    req->on_end = on_end;
    req->body_arg = arg;
    struct conn *c = req->conn;
    /* Only now: a handler that rejects the request without starting the body spares the client
     * the upload. Pointless once a final response is on its way. */
    if (c && !c->close_soon && req->expect_continue && !req->continue_sent && !req->body_ended &&
        !req->resp_started) {
        req->continue_sent = 1;
        buf_t out = BUF_INIT;
        int rc = buf_append_str(&out, "HTTP/1.1 100 Continue\r\n\r\n");
        rc = rc < 0 ? rc : conn_write_raw(c, &out);
        if (rc < 0) {
            buf_free(&out);
            conn_close_soon(c, rc);
        }
    }
    /* Inside conn_process() for this connection, its loop resumes parsing once the handler
     * returns; anywhere else, parsing must not start under the caller's feet. */
    if (c && c->processing && !c->close_soon && req->streaming && !req->body_ended)
        return;
    req_kick(req);
}

void http_req_body_pause(http_req_t *req, int paused)
{
    paused = paused != 0;
    if (req->consumed || (int)req->body_paused == paused)
        return;
    req->body_paused = (unsigned)paused;
    struct conn *c = req->conn;
    if (paused) {
        /* Inside conn_process() the parser stops at the end of this chunk and reading stops
         * when the loop ends; elsewhere stop reading now. */
        if (c && !c->processing)
            conn_update(c);
        return;
    }
    if (c && c->processing && !c->close_soon && req->streaming && !req->body_ended)
        return;
    req_kick(req);
}

int http_respond_start(http_req_t *req, int status, const char *content_type,
                       int64_t content_length, const char *extra_headers)
{
    if (req->resp_started || req->consumed)
        return -EINVAL;
    req->resp_started = 1;
    if (status < 100 || status > 999)
        status = 500;
    int bodyless = status_bodyless(status);
    req->resp_nobody = bodyless || req->is_head;
    req->resp_remaining = -1;
    struct conn *c = req->conn;
    if (!c || c->close_soon)
        return -EPIPE;
    int close = !req->keep_alive || c->srv->closing;
    int chunked = 0;
    buf_t out = BUF_INIT;
    int rc = buf_appendf(&out, "HTTP/1.1 %d %s\r\n", status, http_status_text(status));
    if (!rc && !bodyless) {
        if (content_type && *content_type)
            rc = buf_appendf(&out, "Content-Type: %s\r\n", content_type);
        if (!rc && content_length >= 0) {
            rc = buf_appendf(&out, "Content-Length: %" PRId64 "\r\n", content_length);
            req->resp_remaining = content_length;
        } else if (!rc && !req->http10) {
            rc = buf_append_str(&out, "Transfer-Encoding: chunked\r\n");
            chunked = 1;
        } else if (!rc) {
            close = 1; /* HTTP/1.0 has no chunked coding: the body ends with the connection */
        }
    }
    if (!rc && close)
        rc = buf_append_str(&out, "Connection: close\r\n");
    else if (!rc && req->http10)
        rc = buf_append_str(&out, "Connection: keep-alive\r\n");
    if (!rc && extra_headers)
        rc = buf_append_str(&out, extra_headers);
    if (!rc)
        rc = buf_append(&out, "\r\n", 2);
    req->resp_chunked = chunked && !req->resp_nobody;
    req->resp_close = (unsigned)close;
    rc = rc < 0 ? rc : conn_write_raw(c, &out);
    if (rc < 0) {
        buf_free(&out);
        conn_close_soon(c, rc);
    }
    return rc;
}

int http_respond_write(http_req_t *req, const void *data, size_t len)
{
    if (!req->resp_started || req->consumed)
        return -EINVAL;
    struct conn *c = req->conn;
    if (!c || c->close_soon)
        return -EPIPE;
    if (req->resp_nobody || len == 0)
        return 0; /* (an empty chunk would end a chunked body) */
    if (req->resp_remaining >= 0 && (uint64_t)len > (uint64_t)req->resp_remaining)
        return -EINVAL;
    buf_t out = BUF_INIT;
    int rc = buf_reserve(&out, len + 32);
    if (!rc && req->resp_chunked)
        rc = buf_appendf(&out, "%zx\r\n", len);
    if (!rc)
        rc = buf_append(&out, data, len);
    if (!rc && req->resp_chunked)
        rc = buf_append(&out, "\r\n", 2);
    rc = rc < 0 ? rc : conn_write_raw(c, &out);
    if (rc < 0) {
        buf_free(&out);
        conn_close_soon(c, rc);
        return rc;
    }
    if (req->resp_remaining > 0)
        req->resp_remaining -= (int64_t)len;
    if (c->out_bytes >= HTTP_RESPOND_HIGH_WATER)
        req->drain_armed = 1;
    return 0;
}

size_t http_respond_buffered(const http_req_t *req)
{
    const struct conn *c = req->conn;
    return c && !c->close_soon ? c->out_bytes : 0;
}

void http_respond_on_drain(http_req_t *req, void (*cb)(http_req_t *req, void *arg), void *arg)
{
    req->drain_cb = cb;
    req->drain_arg = arg;
    /* The queue may have drained already, with no write completion left to notice it. */
    struct conn *c = req->conn;
    if (cb && req->drain_armed && c && c->out_bytes < HTTP_RESPOND_LOW_WATER)
        req_kick(req);
}

void http_respond_end(http_req_t *req)
{
    if (req->consumed)
        return;
    if (!req->resp_started) {
        log_error("http: http_respond_end() without http_respond_start(); answering 500");
        http_respond(req, 500, NULL, NULL, 0, NULL);
        return;
    }
    struct conn *c = req->conn;
    if (!c || c->close_soon) {
        if (c)
            conn_detach(c, req);
        req_release(req);
        return;
    }
    int close = req->resp_close;
    /* A short Content-Length body can only be signalled by closing. */
    if (!req->resp_nobody && req->resp_remaining > 0)
        close = 1;
    int chunked = req->resp_chunked;
    close |= conn_detach(c, req);
    req_release(req);
    if (chunked) {
        buf_t out = BUF_INIT;
        if (buf_append_str(&out, "0\r\n\r\n") < 0) {
            buf_free(&out);
            conn_close(c);
            return;
        }
        if (conn_write(c, &out) < 0)
            return;
    }
    if (close) {
        c->close_after_write = 1;
        /* With nothing left in flight no write completion will start the linger. */
        if (c->pending_writes == 0)
            conn_linger(c);
    }
    conn_process(c);
}

/* ---------------------------------------------------------------------------------------------
 * Parser callbacks (parser->data is the connection)
 */

static int parse_fail(llhttp_t *p, int status, const char *code, const char *msg)
{
    struct conn *c = p->data;
    c->err_status = status;
    c->err_code = code;
    c->err_msg = msg;
    llhttp_set_error_reason(p, msg);
    return HPE_USER;
}

static int fail_nomem(llhttp_t *p)
{
    return parse_fail(p, 503, "unavailable", "out of memory");
}

/* Accounts request line and header bytes; the limit covers everything before the body. */
static int count_header_bytes(llhttp_t *p, size_t n)
{
    struct conn *c = p->data;
    http_req_t *req = c->cur;
    req->header_bytes += n;
    if (req->header_bytes > c->srv->limits.max_header_bytes)
        return parse_fail(p, 431, "headers_too_large", "request headers too large");
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    http_req_t *req = calloc(1, sizeof(*req));
    if (!req)
        return fail_nomem(p);
    memcpy(req->peer, c->peer, sizeof(req->peer));
    req->loop = c->srv->loop;
    req_free(c->cur);
    c->cur = req;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    int rc = count_header_bytes(p, len);
    if (rc)
        return rc;
    return buf_append(&c->cur->url, at, len) < 0 ? fail_nomem(p) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (!c->cur)
        return 0; /* trailers of a streamed or skipped body: dropped */
    int rc = count_header_bytes(p, len);
    if (rc)
        return rc;
    return buf_append(&c->cur->hfield, at, len) < 0 ? fail_nomem(p) : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (!c->cur)
        return 0;
    int rc = count_header_bytes(p, len);
    if (rc)
        return rc;
    return buf_append(&c->cur->hvalue, at, len) < 0 ? fail_nomem(p) : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (!c->cur)
        return 0;
    int rc = count_header_bytes(p, 4); /* ": " and CRLF */
    if (rc)
        return rc;
    return req_commit_header(c->cur) < 0 ? fail_nomem(p) : 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    http_req_t *req = c->cur;
    req->headers_done = 1;
    req->method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    req->is_head = llhttp_get_method(p) == HTTP_HEAD;
    req->http10 = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0;
    req->version = llhttp_get_http_major(p) * 10 + llhttp_get_http_minor(p);
    /* An upgrade request goes to the handler, which either takes the connection over
     * (http_req_takeover) or answers normally; then the connection is closed, as llhttp parses
     * nothing after an upgrade request and no other protocol is supported. An `Upgrade:` header
     * without `Connection: upgrade` is treated the same, to keep the rule simple. */
    req->keep_alive =
        llhttp_should_keep_alive(p) && !p->upgrade && !http_req_header(req, "Upgrade");

    const char *why = "malformed request target";
    int rc = req_parse_target(req, &why);
    if (rc < 0) {
        if (rc == -ENOMEM)
            fail_nomem(p);
        else
            parse_fail(p, 400, "bad_request", why);
        return -1; /* on_headers_complete reports errors with -1, not an errno */
    }

    int chunked = (p->flags & F_CHUNKED) != 0;
    int has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    int has_body = chunked || (has_length && p->content_length > 0);
    req->content_length = chunked ? -1 : has_length ? (int64_t)p->content_length : 0;
    const char *expect = http_req_header(req, "Expect");
    int wants_continue =
        expect && has_body && !req->http10 && strcasecmp(expect, "100-continue") == 0;

    /* The hook sees every request (so its answer does not depend on the framing), but only one
     * with a body goes out early: without one, the complete request is just as quick. */
    http_server_t *srv = c->srv;
    int upgrade = p->upgrade || http_req_header(req, "Upgrade");
    if (srv->wants_stream && !upgrade && srv->wants_stream(req, srv->ctx) == 1 && has_body) {
        req->streaming = 1;
        req->expect_continue = (unsigned)wants_continue;
        c->body_req = req;
        c->ready = req;
        c->cur = NULL;
        return HPE_PAUSED; /* dispatched by conn_process() */
    }

    /* A declared body over the limit is refused before reading any of it. */
    if (has_length && p->content_length > srv->limits.max_body_bytes) {
        parse_fail(p, 413, "payload_too_large", "request body too large");
        return -1;
    }

    if (wants_continue) {
        buf_t out = BUF_INIT;
        if (buf_append_str(&out, "HTTP/1.1 100 Continue\r\n\r\n") < 0) {
            fail_nomem(p);
            return -1;
        }
        if (conn_write(c, &out) < 0)
            return -1; /* the connection is closed */
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (len == 0 || c->discarding)
        return 0;
    if (c->body_req) {
        http_req_t *req = c->body_req;
        if (req->on_data) {
            req_cb_enter(req);
            req->on_data(req, at, len, req->body_arg);
            if (req_cb_leave(req)) {
                c->parse_pending = 1;
                return HPE_PAUSED; /* answered: conn_process() decides about the rest */
            }
        }
        if (c->closing || req->body_paused || c->body_req != req) {
            /* Stop right after this chunk. on_message_complete may be next without any input
             * left: allow conn_process() an execute with zero bytes. */
            c->parse_pending = 1;
            return HPE_PAUSED;
        }
        return 0;
    }
    http_req_t *req = c->cur;
    if (!req)
        return 0;
    /* Content-Length was checked up front; this catches chunked bodies growing too big. */
    if (len > c->srv->limits.max_body_bytes - req->body.len)
        return parse_fail(p, 413, "payload_too_large", "request body too large");
    return buf_append(&req->body, at, len) < 0 ? fail_nomem(p) : 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    /* Stop right after this request: the next one is parsed once this one is answered. */
    if (c->discarding) {
        c->discarding = 0;
        return HPE_PAUSED;
    }
    if (c->body_req) {
        http_req_t *req = c->body_req;
        c->body_req = NULL;
        req_end_body(req, 0); /* may answer (and free) the request */
        return HPE_PAUSED;
    }
    c->ready = c->cur;
    c->cur = NULL;
    if (c->ready)
        c->ready->body_ended = 1;
    return HPE_PAUSED;
}

/* ---------------------------------------------------------------------------------------------
 * Connections
 */

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    http_server_t *srv = c->srv;
    srv->nhandles--;
    if (--c->nhandles > 0)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    req_free(c->cur);
    req_free(c->ready);
    buf_free(&c->in);
    if (c->upgraded && c->tk_ops->closed)
        c->tk_ops->closed(c->tk_owner);
    free(c);
    maybe_done(srv);
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (c->counted)
        c->srv->nconns--;
    /* A new owner (takeover) may have repointed the handles' data; the close callbacks need c. */
    c->h.handle.data = c;
    c->timer.data = c;
    uv_close(&c->h.handle, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    http_req_t *req = c->active;
    c->body_req = NULL;
    if (req) {
        /* Detach first: the callbacks may respond (and so free the request) right away. */
        c->active = NULL;
        req->conn = NULL;
        req->gone = 1;
        req_cb_enter(req);
        /* A streamed body that did not end never will (on_end waits for body_start if need be). */
        req_end_body(req, c->close_err ? c->close_err : -ECONNRESET);
        http_abort_fn cb = req->abort_cb;
        req->abort_cb = NULL;
        if (cb && !req->consumed)
            cb(req, req->abort_arg);
        req_cb_leave(req);
    }
}

static void on_timer(uv_timer_t *t)
{
    /* Idle timeout, or the end of the linger period: either way the connection is done. */
    conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *s, int status)
{
    struct conn *c = s->handle->data;
    if (status < 0 && !c->closing)
        conn_close(c);
}

/* Everything is flushed and no more requests will be served: half-close and drain the input for
 * a while (see LINGER_MS) instead of closing right away. */
static void conn_linger(struct conn *c)
{
    if (c->closing || c->lingering)
        return;
    c->lingering = 1;
    if (c->eof || uv_shutdown(&c->shutdown, &c->h.stream, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
    conn_update(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct conn *c = h->data;
    b->base = c->srv->rbuf;
    b->len = sizeof(c->srv->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = s->data;
    if (c->closing || c->upgraded)
        return;
    if (nread < 0) {
        c->reading = 0;
        uv_read_stop(s);
        if (nread == UV_EOF && c->body_req && !c->lingering && !c->close_after_write) {
            /* The client may have sent its whole body and half-closed: parse what is buffered
             * first; conn_process() closes if the body cannot complete. No request can follow. */
            c->eof = 1;
            c->body_req->keep_alive = 0;
            conn_process(c);
            return;
        }
        if (nread == UV_EOF && !c->active && !c->lingering && c->pending_writes > 0) {
            /* A half-closed client may still be waiting for queued responses: send them. */
            c->eof = 1;
            c->close_after_write = 1;
            return;
        }
        /* A hang-up while the handler works is reported to it (abort callback): we cannot tell
         * a half-close from a close without writing, and long requests must be cancellable. */
        c->close_err = nread == UV_EOF ? -ECONNRESET : (int)nread;
        conn_close(c);
        return;
    }
    if (nread == 0 || c->close_after_write)
        return; /* after the last response, input is drained and ignored */
    if (buf_append(&c->in, b->base, (size_t)nread) < 0) {
        conn_close(c);
        return;
    }
    conn_process(c);
}

static void conn_set_reading(struct conn *c, int on)
{
    if (on && !c->reading) {
        if (uv_read_start(&c->h.stream, on_alloc, on_read) < 0) {
            conn_close(c);
            return;
        }
        c->reading = 1;
    } else if (!on && c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = 0;
    }
}

/* Reconciles reading and the idle timer with the connection's state. */
static void conn_update(struct conn *c)
{
    if (c->closing || c->upgraded || c->close_soon)
        return;
    if (c->lingering) {
        conn_set_reading(c, !c->eof);
        return;
    }
    int want = !c->eof && (c->close_after_write || c->in.len < READ_HIGH_WATER);
    /* A paused body stays in the kernel, so TCP flow control throttles the client. */
    if (c->body_req && c->body_req->body_started && c->body_req->body_paused)
        want = 0;
    conn_set_reading(c, want);
    if (c->closing)
        return;
    if (c->active)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, c->srv->limits.idle_timeout_ms, 0);
}

/* Whether the parser may run now: for the next request once the previous one was answered, or
 * for the streamed body of the current one while its handler takes it. */
static int conn_can_parse(const struct conn *c)
{
    if (c->closing || c->close_after_write || c->upgraded || c->broken || c->close_soon ||
        c->srv->closing)
        return 0;
    if (c->in.len == 0 && !c->parse_pending)
        return 0;
    if (c->body_req)
        return c->body_req->body_started && !c->body_req->body_paused;
    return !c->active;
}

/* The parser failed inside a streamed body: the handler hears it through on_end and answers;
 * the connection is closed after that answer. */
static void conn_body_failed(struct conn *c)
{
    http_req_t *req = c->body_req;
    c->body_req = NULL;
    c->broken = 1;
    req->keep_alive = 0;
    req_end_body(req, -EBADMSG);
}

/* Feeds buffered input to the parser and dispatches complete requests, one at a time. */
static void conn_process(struct conn *c)
{
    if (c->processing)
        return;
    c->processing = 1;
    http_server_t *srv = c->srv;
    while (conn_can_parse(c)) {
        if (uv_stream_get_write_queue_size(&c->h.stream) > WRITE_HIGH_WATER)
            break;
        /* Never NULL, even for a zero-byte execute: llhttp would lose an open body span. */
        const char *data = c->in.data ? c->in.data : "";
        size_t avail = c->in.len;
        c->parse_pending = 0;
        llhttp_errno_t err = llhttp_execute(&c->parser, data, avail);
        if (c->closing)
            break;
        size_t used = avail;
        if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
            if (err == HPE_PAUSED)
                llhttp_resume(&c->parser);
            else if (c->ready)
                c->ready->keep_alive = 0;
        } else if (err != HPE_OK) {
            if (c->body_req) {
                conn_body_failed(c);
                break;
            }
            if (c->err_status) {
                conn_fail(c, c->err_status, c->err_code, c->err_msg);
            } else {
                char msg[160];
                snprintf(msg, sizeof(msg), "malformed request: %s",
                         llhttp_get_error_reason(&c->parser));
                conn_fail(c, 400, "bad_request", msg);
            }
            break;
        }
        buf_consume(&c->in, used);
        if (err == HPE_OK && c->cur && !c->cur->headers_done) {
            /* Backstop for header bytes the callbacks never see (e.g. whitespace): the whole
             * chunk went into headers that are still not complete. */
            c->cur->raw_header_bytes += used;
            if (c->cur->raw_header_bytes > srv->limits.max_header_bytes) {
                conn_fail(c, 431, "headers_too_large", "request headers too large");
                break;
            }
        }
        if (c->ready) {
            http_req_t *req = c->ready;
            c->ready = NULL;
            c->active = req;
            req->conn = c;
            uv_timer_stop(&c->timer);
            srv->handler(req, srv->ctx);
        }
    }
    c->processing = 0;
    if (!c->closing && c->eof && c->body_req && c->in.len == 0 && !c->parse_pending) {
        /* The client half-closed before the end of the body. */
        c->close_err = -ECONNRESET;
        conn_close(c);
        return;
    }
    conn_update(c);
}

static void format_peer(struct conn *c, int is_tcp)
{
    snprintf(c->peer, sizeof(c->peer), "unix");
    if (!is_tcp)
        return;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) < 0)
        return;
    char ip[INET6_ADDRSTRLEN] = "";
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        uv_ip4_name(sin, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, ntohs(sin->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
        uv_ip6_name(sin6, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "[%s]:%u", ip, ntohs(sin6->sin6_port));
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct listener *l = server->data;
    http_server_t *srv = l->srv;
    if (status < 0) {
        log_warn("http: accept: %s", uv_strerror(status));
        return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        log_error("http: accept: out of memory");
        return;
    }
    c->srv = srv;
    if (l->is_tcp)
        uv_tcp_init(srv->loop, &c->h.tcp);
    else
        uv_pipe_init(srv->loop, &c->h.pipe, 0);
    uv_timer_init(srv->loop, &c->timer);
    c->h.handle.data = c;
    c->timer.data = c;
    c->nhandles = 2;
    srv->nhandles += 2;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;

    int rc = uv_accept(server, &c->h.stream);
    if (rc < 0) {
        log_warn("http: accept: %s", uv_strerror(rc));
        conn_close(c);
        return;
    }
    format_peer(c, l->is_tcp);
    if (l->is_tcp)
        uv_tcp_nodelay(&c->h.tcp, 1); /* small responses must not wait for Nagle */
    if (srv->nconns >= srv->limits.max_connections) {
        /* Accept and answer rather than leave the client hanging in the backlog. */
        conn_fail(c, 503, "unavailable", "too many connections");
    } else {
        c->counted = 1;
        srv->nconns++;
    }
    conn_update(c);
}

/* ---------------------------------------------------------------------------------------------
 * Server
 */

int http_server_new(http_server_t **out, uv_loop_t *loop, const struct http_limits *limits,
                    http_handler_fn handler, void *ctx)
{
    /* libuv writes with write(2)/writev(2), not send(MSG_NOSIGNAL): a client that resets its
     * connection would kill the process with SIGPIPE. Only the default disposition is replaced,
     * so a handler installed by the program is left alone. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    http_server_t *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    srv->loop = loop;
    srv->handler = handler;
    srv->ctx = ctx;
    srv->port = -1;
    if (limits)
        srv->limits = *limits;
    if (!srv->limits.max_header_bytes)
        srv->limits.max_header_bytes = DEFAULT_MAX_HEADER_BYTES;
    if (!srv->limits.max_body_bytes)
        srv->limits.max_body_bytes = DEFAULT_MAX_BODY_BYTES;
    if (!srv->limits.max_connections)
        srv->limits.max_connections = DEFAULT_MAX_CONNECTIONS;
    if (!srv->limits.idle_timeout_ms)
        srv->limits.idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS;

    llhttp_settings_init(&srv->settings);
    srv->settings.on_message_begin = on_message_begin;
    srv->settings.on_url = on_url;
    srv->settings.on_header_field = on_header_field;
    srv->settings.on_header_value = on_header_value;
    srv->settings.on_header_value_complete = on_header_value_complete;
    srv->settings.on_headers_complete = on_headers_complete;
    srv->settings.on_body = on_body;
    srv->settings.on_message_complete = on_message_complete;
    *out = srv;
    return 0;
}

static void maybe_done(http_server_t *srv)
{
    if (srv->closing && srv->nhandles == 0 && !srv->done_called) {
        srv->done_called = 1;
        if (srv->done)
            srv->done(srv->done_arg);
    }
}

static void on_listener_closed(uv_handle_t *h)
{
    struct listener *l = h->data;
    http_server_t *srv = l->srv;
    free(l->unix_path);
    free(l);
    srv->nhandles--;
    maybe_done(srv);
}

static void on_kick_closed(uv_handle_t *h)
{
    http_server_t *srv = h->data;
    srv->nhandles--;
    maybe_done(srv);
}

static int parse_port(const char *s, int *port)
{
    if (!*s)
        return -EINVAL;
    unsigned long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 65535)
            return -EINVAL;
    }
    *port = (int)v;
    return 0;
}

static int listen_tcp(http_server_t *srv, const char *addr)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *portstr;
    size_t hlen;
    int v6 = 0;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':')
            return -EINVAL;
        hlen = (size_t)(end - addr - 1);
        if (hlen >= sizeof(host))
            return -EINVAL;
        memcpy(host, addr + 1, hlen);
        portstr = end + 2;
        v6 = 1;
    } else {
        const char *colon = strrchr(addr, ':');
        if (!colon)
            return -EINVAL;
        hlen = (size_t)(colon - addr);
        if (hlen >= sizeof(host))
            return -EINVAL;
        memcpy(host, addr, hlen);
        portstr = colon + 1;
    }
    host[hlen] = '\0';
    int port;
    if (parse_port(portstr, &port) < 0)
        return -EINVAL;
    if (!v6 && (hlen == 0 || strcmp(host, "*") == 0))
        snprintf(host, sizeof(host), "0.0.0.0");
    else if (!v6 && strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");

    struct sockaddr_storage ss;
    int rc = v6 ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss)
                : uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc < 0)
        return -EINVAL;

    struct listener *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->srv = srv;
    l->is_tcp = 1;
    uv_tcp_init(srv->loop, &l->h.tcp);
    l->h.handle.data = l;
    srv->nhandles++;
    rc = uv_tcp_bind(&l->h.tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen(&l->h.stream, LISTEN_BACKLOG, on_connection);
    if (rc < 0) {
        uv_close(&l->h.handle, on_listener_closed);
        return rc;
    }
    if (srv->port < 0) {
        struct sockaddr_storage bound;
        int blen = sizeof(bound);
        if (uv_tcp_getsockname(&l->h.tcp, (struct sockaddr *)&bound, &blen) == 0) {
            srv->port = bound.ss_family == AF_INET6
                            ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                            : ntohs(((struct sockaddr_in *)&bound)->sin_port);
        }
    }
    l->next = srv->listeners;
    srv->listeners = l;
    return 0;
}

/* A socket file left by a previous run blocks bind(); remove it, but only if it is a socket and
 * nobody is accepting on it (so a second daemon does not steal a live one's address). */
static int unlink_stale_socket(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode))
        return -EADDRINUSE;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int live = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0;
    close(fd);
    if (live)
        return -EADDRINUSE;
    if (unlink(path) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}

static int listen_unix(http_server_t *srv, const char *path)
{
    struct sockaddr_un sun;
    if (!*path)
        return -EINVAL;
    /* libuv silently truncates long paths; refuse them instead. */
    if (strlen(path) >= sizeof(sun.sun_path))
        return -ENAMETOOLONG;
    int rc = unlink_stale_socket(path);
    if (rc < 0)
        return rc;
    struct listener *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->srv = srv;
    uv_pipe_init(srv->loop, &l->h.pipe, 0);
    l->h.handle.data = l;
    srv->nhandles++;
    rc = uv_pipe_bind(&l->h.pipe, path);
    if (rc == 0) {
        l->unix_path = strdup(path);
        if (!l->unix_path) {
            unlink(path);
            rc = -ENOMEM;
        }
    }
    if (rc == 0)
        rc = uv_listen(&l->h.stream, LISTEN_BACKLOG, on_connection);
    if (rc < 0) {
        if (l->unix_path)
            unlink(l->unix_path);
        uv_close(&l->h.handle, on_listener_closed);
        return rc;
    }
    l->next = srv->listeners;
    srv->listeners = l;
    return 0;
}

int http_server_listen(http_server_t *srv, const char *addr)
{
    if (!addr || srv->closing)
        return -EINVAL;
    if (strncmp(addr, "unix:", 5) == 0)
        return listen_unix(srv, addr + 5);
    return listen_tcp(srv, addr);
}

int http_server_port(const http_server_t *srv)
{
    return srv->port;
}

unsigned http_server_connections(const http_server_t *srv)
{
    return srv->nconns;
}

void http_server_close(http_server_t *srv, void (*done)(void *arg), void *arg)
{
    if (srv->closing)
        return;
    srv->closing = 1;
    srv->done = done;
    srv->done_arg = arg;
    for (struct listener *l = srv->listeners, *next; l; l = next) {
        next = l->next;
        if (l->unix_path)
            unlink(l->unix_path);
        uv_close(&l->h.handle, on_listener_closed);
    }
    srv->listeners = NULL;
    /* Connections are freed only from close callbacks, so `next` stays valid even though abort
     * callbacks run in between. */
    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->upgraded && !c->closing) {
            c->tk_ops->server_closing(c->tk_owner);
        } else {
            if (!c->close_err)
                c->close_err = -ECONNABORTED;
            conn_close(c);
        }
    }
    uv_timer_init(srv->loop, &srv->kick);
    srv->kick.data = srv;
    srv->nhandles++;
    uv_close((uv_handle_t *)&srv->kick, on_kick_closed);
}

void http_server_free(http_server_t *srv)
{
    if (!srv)
        return;
    if (srv->nhandles > 0) {
        /* Freeing now would leave libuv with dangling handles; a leak is the lesser evil. */
        log_error("http: server freed with %u open handles (close it first); leaking it",
                  srv->nhandles);
        return;
    }
    free(srv);
}

/* ---------------------------------------------------------------------------------------------
 * Takeover (protocol upgrades)
 */

int http_req_takeover(http_req_t *req, const void *response, size_t len,
                      const struct http_takeover_ops *ops, void *owner, struct http_takeover *out)
{
    struct conn *c = req->conn;
    req_free(req);
    if (!c)
        return -ENOTCONN;
    c->active = NULL;
    buf_t resp = BUF_INIT;
    if (buf_append(&resp, response, len) < 0) {
        conn_close(c);
        return -ENOMEM;
    }
    /* Queued behind any earlier pipelined responses; the owner's writes queue behind it. */
    int rc = conn_write(c, &resp);
    if (rc < 0)
        return rc;
    c->upgraded = 1;
    c->tk_ops = ops;
    c->tk_owner = owner;
    conn_set_reading(c, 0);
    uv_timer_stop(&c->timer);
    out->stream = &c->h.stream;
    out->timer = &c->timer;
    /* The parser stopped right after the request, so this is exactly what followed it. */
    out->pending = c->in;
    buf_init(&c->in);
    return 0;
}

void http_takeover_release(uv_stream_t *stream)
{
    /* The stream is the first member of its connection (see struct conn). */
    struct conn *c = (struct conn *)((char *)stream - offsetof(struct conn, h));
    conn_close(c);
}
