/*
 * http_response — answering requests: formatting responses, taking the answered request off its
 * connection, whole responses (http_respond*) and streamed ones (http_respond_start/write/end),
 * error answers that end a connection.
 */
#include "net/http_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

/* An unread streamed body up to this size is skipped to keep the connection; a bigger one costs
 * less as a new connection than as bytes to swallow. */
#define DRAIN_MAX (64 * 1024)

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
 * Output
 */

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
void http_conn_fail(struct conn *c, int status, const char *code, const char *msg)
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
        http_conn_close(c);
        return;
    }
    http_conn_write(c, &out);
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
        http_req_release(req);
        return;
    }
    int close = conn_detach(c, req);
    if (status < 100 || status > 999)
        status = 500;
    buf_t out = BUF_INIT;
    int rc = format_response(&out, status, content_type, body, len, extra_headers, close,
                             req->http10 && !close, req->is_head);
    http_req_release(req);
    if (rc < 0) {
        buf_free(&out);
        http_conn_close(c);
        return;
    }
    if (http_conn_write(c, &out) < 0)
        return;
    if (close)
        c->close_after_write = 1;
    /* Next pipelined request, reading and timers. A no-op when called from inside the handler
     * invocation in http_conn_process(), which carries on by itself. */
    http_conn_process(c);
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
    rc = rc < 0 ? rc : http_conn_write_raw(c, &out);
    if (rc < 0) {
        buf_free(&out);
        http_conn_close_soon(c, rc);
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
    rc = rc < 0 ? rc : http_conn_write_raw(c, &out);
    if (rc < 0) {
        buf_free(&out);
        http_conn_close_soon(c, rc);
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
        http_req_kick(req);
}

void http_respond_abort(http_req_t *req)
{
    if (req->consumed)
        return;
    if (!req->resp_started) {
        http_respond(req, 500, NULL, NULL, 0, NULL);
        return;
    }
    struct conn *c = req->conn;
    if (c)
        conn_detach(c, req);
    http_req_release(req);
    if (c)
        http_conn_close_soon(c, -ECONNABORTED);
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
        http_req_release(req);
        return;
    }
    int close = req->resp_close;
    /* A short Content-Length body can only be signalled by closing. */
    if (!req->resp_nobody && req->resp_remaining > 0)
        close = 1;
    int chunked = req->resp_chunked;
    close |= conn_detach(c, req);
    http_req_release(req);
    if (chunked) {
        buf_t out = BUF_INIT;
        if (buf_append_str(&out, "0\r\n\r\n") < 0) {
            buf_free(&out);
            http_conn_close(c);
            return;
        }
        if (http_conn_write(c, &out) < 0)
            return;
    }
    if (close) {
        c->close_after_write = 1;
        /* With nothing left in flight no write completion will start the linger. */
        if (c->pending_writes == 0)
            http_conn_linger(c);
    }
    http_conn_process(c);
}
