/*
 * http_request — the request object: its lifetime (answered requests freed once no user callback
 * runs on them), its accessors, and the delivery of its body to the handler
 * (http_req_body_start/pause) through the per-request kick timer.
 */
#include "net/http_internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"

static void req_pump(http_req_t *req);

/* ---------------------------------------------------------------------------------------------
 * Requests
 */

static void on_req_kick_closed(uv_handle_t *h)
{
    free(h->data);
}

void http_req_free(http_req_t *req)
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
void http_req_release(http_req_t *req)
{
    req->consumed = 1;
    if (req->cb_depth == 0)
        http_req_free(req);
}

/* Brackets a user callback that may answer the request. http_req_cb_leave() returns 1 (and frees
 * the request) if it was answered, so the caller must not touch it any more. */
void http_req_cb_enter(http_req_t *req)
{
    req->cb_depth++;
}

int http_req_cb_leave(http_req_t *req)
{
    req->cb_depth--;
    if (!req->consumed)
        return 0;
    if (req->cb_depth == 0)
        http_req_free(req);
    return 1;
}

static void on_kick(uv_timer_t *t)
{
    struct kick *k = t->data;
    if (k->req)
        req_pump(k->req);
}

/* Runs req_pump() from the loop soon. */
void http_req_kick(http_req_t *req)
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
void http_req_end_body(http_req_t *req, int err)
{
    if (req->body_ended)
        return;
    req->body_ended = 1;
    req->body_err = err;
    req_deliver_end(req);
}

struct hdr *http_req_find_header(const http_req_t *req, const char *name)
{
    for (size_t i = 0; i < req->nhdrs; i++) {
        if (strcasecmp(req->hdrs[i].name.data, name) == 0)
            return &req->hdrs[i];
    }
    return NULL;
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
    struct hdr *h = http_req_find_header(req, name);
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
    http_req_cb_enter(req);
    struct conn *c = req->conn;
    if (req->streaming && c && !req->body_ended) {
        /* Parses what is buffered and restarts reading; on_data and on_end run from there. */
        http_conn_process(c);
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
    http_req_cb_leave(req);
}

/* ---------------------------------------------------------------------------------------------
 * Streaming
 */

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
        rc = rc < 0 ? rc : http_conn_write_raw(c, &out);
        if (rc < 0) {
            buf_free(&out);
            http_conn_close_soon(c, rc);
        }
    }
    /* Inside http_conn_process() for this connection, its loop resumes parsing once the handler
     * returns; anywhere else, parsing must not start under the caller's feet. */
    if (c && c->processing && !c->close_soon && req->streaming && !req->body_ended)
        return;
    http_req_kick(req);
}

void http_req_body_pause(http_req_t *req, int paused)
{
    paused = paused != 0;
    if (req->consumed || (int)req->body_paused == paused)
        return;
    req->body_paused = (unsigned)paused;
    struct conn *c = req->conn;
    if (paused) {
        /* Inside http_conn_process() the parser stops at the end of this chunk and reading stops
         * when the loop ends; elsewhere stop reading now. */
        if (c && !c->processing)
            http_conn_update(c);
        return;
    }
    if (c && c->processing && !c->close_soon && req->streaming && !req->body_ended)
        return;
    http_req_kick(req);
}
