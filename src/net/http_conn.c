/*
 * http_conn — the life of a client connection: accepting it, reading into the parser and
 * dispatching complete requests (http_conn_process), queuing writes, idle and linger timers,
 * closing, and handing the connection over for a protocol upgrade.
 */
#include "net/http_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/log.h"

#define READ_HIGH_WATER (64 * 1024)
#define WRITE_HIGH_WATER (1024 * 1024)
/* After an error response we half-close and keep draining the client's input for a while before
 * closing: closing a socket with unread input makes the kernel send RST, which can destroy the
 * response before the client read it (typical with 413 while the client is still uploading). */
#define LINGER_MS 2000

struct wreq {
    uv_write_t req;
    char *data;
    size_t len;
};

static void on_timer(uv_timer_t *t);
static void conn_set_reading(struct conn *c, int on);

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
        http_conn_close(c);
        return;
    }
    if (c->close_after_write) {
        if (c->pending_writes == 0)
            http_conn_linger(c);
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
    http_conn_process(c);
}

/* Queues `out` (taking its storage in every case); returns 0 or -errno. */
int http_conn_write_raw(struct conn *c, buf_t *out)
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
int http_conn_write(struct conn *c, buf_t *out)
{
    int rc = http_conn_write_raw(c, out);
    if (rc < 0)
        http_conn_close(c);
    return rc;
}

/* Closes the connection from the loop instead of right away: used inside API calls a handler
 * makes on a live request, where http_conn_close() would run its abort callback (which may answer
 * and free the request) under the caller's feet. Until then the connection counts as gone. */
void http_conn_close_soon(struct conn *c, int err)
{
    if (c->closing || c->close_soon)
        return;
    c->close_soon = 1;
    c->close_err = err;
    conn_set_reading(c, 0);
    uv_timer_start(&c->timer, on_timer, 0, 0);
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
    http_req_free(c->cur);
    http_req_free(c->ready);
    buf_free(&c->in);
    if (c->upgraded && c->tk_ops->closed)
        c->tk_ops->closed(c->tk_owner);
    free(c);
    http_server_maybe_done(srv);
}

void http_conn_close(struct conn *c)
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
        http_req_cb_enter(req);
        /* A streamed body that did not end never will (on_end waits for body_start if need be). */
        http_req_end_body(req, c->close_err ? c->close_err : -ECONNRESET);
        http_abort_fn cb = req->abort_cb;
        req->abort_cb = NULL;
        if (cb && !req->consumed)
            cb(req, req->abort_arg);
        http_req_cb_leave(req);
    }
}

static void on_timer(uv_timer_t *t)
{
    /* Idle timeout, or the end of the linger period: either way the connection is done. */
    http_conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *s, int status)
{
    struct conn *c = s->handle->data;
    if (status < 0 && !c->closing)
        http_conn_close(c);
}

/* Everything is flushed and no more requests will be served: half-close and drain the input for
 * a while (see LINGER_MS) instead of closing right away. */
void http_conn_linger(struct conn *c)
{
    if (c->closing || c->lingering)
        return;
    c->lingering = 1;
    if (c->eof || uv_shutdown(&c->shutdown, &c->h.stream, on_shutdown) < 0) {
        http_conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
    http_conn_update(c);
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
             * first; http_conn_process() closes if the body cannot complete. No request can follow.
             */
            c->eof = 1;
            c->body_req->keep_alive = 0;
            http_conn_process(c);
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
        http_conn_close(c);
        return;
    }
    if (nread == 0 || c->close_after_write)
        return; /* after the last response, input is drained and ignored */
    if (buf_append(&c->in, b->base, (size_t)nread) < 0) {
        http_conn_close(c);
        return;
    }
    http_conn_process(c);
}

static void conn_set_reading(struct conn *c, int on)
{
    if (on && !c->reading) {
        if (uv_read_start(&c->h.stream, on_alloc, on_read) < 0) {
            http_conn_close(c);
            return;
        }
        c->reading = 1;
    } else if (!on && c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = 0;
    }
}

/* Reconciles reading and the idle timer with the connection's state. */
void http_conn_update(struct conn *c)
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
    http_req_end_body(req, -EBADMSG);
}

/* Feeds buffered input to the parser and dispatches complete requests, one at a time. */
void http_conn_process(struct conn *c)
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
                http_conn_fail(c, c->err_status, c->err_code, c->err_msg);
            } else {
                char msg[160];
                snprintf(msg, sizeof(msg), "malformed request: %s",
                         llhttp_get_error_reason(&c->parser));
                http_conn_fail(c, 400, "bad_request", msg);
            }
            break;
        }
        buf_consume(&c->in, used);
        if (err == HPE_OK && c->cur && !c->cur->headers_done) {
            /* Backstop for header bytes the callbacks never see (e.g. whitespace): the whole
             * chunk went into headers that are still not complete. */
            c->cur->raw_header_bytes += used;
            if (c->cur->raw_header_bytes > srv->limits.max_header_bytes) {
                http_conn_fail(c, 431, "headers_too_large", "request headers too large");
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
        http_conn_close(c);
        return;
    }
    http_conn_update(c);
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

void http_on_connection(uv_stream_t *server, int status)
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
        http_conn_close(c);
        return;
    }
    format_peer(c, l->is_tcp);
    if (l->is_tcp)
        uv_tcp_nodelay(&c->h.tcp, 1); /* small responses must not wait for Nagle */
    if (srv->nconns >= srv->limits.max_connections) {
        /* Accept and answer rather than leave the client hanging in the backlog. */
        http_conn_fail(c, 503, "unavailable", "too many connections");
    } else {
        c->counted = 1;
        srv->nconns++;
    }
    http_conn_update(c);
}

/* ---------------------------------------------------------------------------------------------
 * Takeover (protocol upgrades)
 */

int http_req_takeover(http_req_t *req, const void *response, size_t len,
                      const struct http_takeover_ops *ops, void *owner, struct http_takeover *out)
{
    struct conn *c = req->conn;
    http_req_free(req);
    if (!c)
        return -ENOTCONN;
    c->active = NULL;
    buf_t resp = BUF_INIT;
    if (buf_append(&resp, response, len) < 0) {
        http_conn_close(c);
        return -ENOMEM;
    }
    /* Queued behind any earlier pipelined responses; the owner's writes queue behind it. */
    int rc = http_conn_write(c, &resp);
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
    http_conn_close(c);
}
