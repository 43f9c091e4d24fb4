/*
 * pipe — see pipe.h.
 */
#include "api/pipe.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/buf.h"

#define CHUNK (256u << 10)

struct api_pipe {
    http_req_t *req;
    int fd;
    uv_poll_t poll;
    int poll_open;
    const char *content_type; /* send */
    char *chunk;              /* send */
    buf_t pending;            /* receive: body bytes not yet in the pipe */
    uint64_t bytes;
    int started;     /* send: the response was started */
    int eof;         /* send: the pipe is drained, or the client is gone */
    int body_ended;  /* receive */
    int body_err;    /* receive */
    int worker_done; /* api_pipe_worker_done() ran */
    int r;
    int ended; /* `end` ran */
    api_pipe_end_fn end;
    void *arg;
};

static void pipe_free(struct api_pipe *p)
{
    buf_free(&p->pending);
    free(p->chunk);
    free(p);
}

/* The loop's end is closed only from the poll handle's close callback: closing it earlier would
 * let the number be reused while libuv still has it registered. */
static void on_poll_closed(uv_handle_t *h)
{
    struct api_pipe *p = h->data;
    p->poll_open = 0;
    close(p->fd);
    p->fd = -1;
    if (p->ended)
        pipe_free(p);
}

static void close_loop_end(struct api_pipe *p)
{
    if (p->poll_open && !uv_is_closing((uv_handle_t *)&p->poll))
        uv_close((uv_handle_t *)&p->poll, on_poll_closed);
}

static int pipe_open(uv_loop_t *loop, http_req_t *req, int fd, api_pipe_end_fn end, void *arg,
                     struct api_pipe **out)
{
    struct api_pipe *p = calloc(1, sizeof(*p));
    if (!p || uv_poll_init(loop, &p->poll, fd) < 0) {
        free(p);
        close(fd);
        return -ENOMEM;
    }
    p->req = req;
    p->fd = fd;
    p->poll.data = p;
    p->poll_open = 1;
    p->end = end;
    p->arg = arg;
    buf_init(&p->pending);
    *out = p;
    return 0;
}

/* ---- send ----------------------------------------------------------------------------------- */

static void send_pump(struct api_pipe *p);

static void send_maybe_end(struct api_pipe *p)
{
    if (!p->worker_done || !p->eof || p->ended)
        return;
    p->ended = 1;
    /* A worker that failed after the first byte: the client must see the answer broken off,
     * not complete (an archive cut short would otherwise look whole). */
    if (p->started && p->r < 0)
        http_respond_abort(p->req);
    else if (p->started)
        http_respond_end(p->req);
    p->end(p->arg, p->r, p->started, p->bytes, 0);
    close_loop_end(p);
    if (!p->poll_open)
        pipe_free(p);
}

static void on_send_gone(http_req_t *req, void *arg)
{
    struct api_pipe *p = arg;
    (void)req;
    close_loop_end(p); /* a worker blocked on the full pipe gets EPIPE */
    p->eof = 1;
    send_maybe_end(p);
}

static void on_send_drain(http_req_t *req, void *arg)
{
    struct api_pipe *p = arg;
    (void)req;
    if (p->poll_open && !uv_is_closing((uv_handle_t *)&p->poll))
        send_pump(p);
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    send_pump(h->data);
}

static void send_pump(struct api_pipe *p)
{
    while (!p->eof) {
        if (p->started && http_respond_buffered(p->req) >= HTTP_RESPOND_HIGH_WATER) {
            uv_poll_stop(&p->poll); /* resumed by the drain callback */
            return;
        }
        ssize_t n = read(p->fd, p->chunk, CHUNK);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, on_readable);
            return;
        }
        if (n <= 0) /* EOF: the worker is done writing */
            break;
        if (!p->started) {
            p->started = 1;
            http_respond_start(p->req, 200, p->content_type, -1, NULL);
            http_respond_on_drain(p->req, on_send_drain, p);
        }
        p->bytes += (uint64_t)n;
        if (http_respond_write(p->req, p->chunk, (size_t)n) < 0) {
            close_loop_end(p); /* the client is gone: the worker's writes fail */
            break;
        }
    }
    p->eof = 1;
    if (p->poll_open && !uv_is_closing((uv_handle_t *)&p->poll))
        uv_poll_stop(&p->poll);
    send_maybe_end(p);
}

int api_pipe_send(uv_loop_t *loop, http_req_t *req, int fd, const char *content_type,
                  api_pipe_end_fn end, void *arg, struct api_pipe **out)
{
    struct api_pipe *p;
    int r = pipe_open(loop, req, fd, end, arg, &p);
    if (r < 0)
        return r;
    if (!(p->chunk = malloc(CHUNK))) {
        p->ended = 1; /* freed by the close callback; end never runs */
        close_loop_end(p);
        return -ENOMEM;
    }
    p->content_type = content_type;
    http_req_set_abort_cb(req, on_send_gone, p);
    send_pump(p);
    *out = p;
    return 0;
}

/* ---- receive -------------------------------------------------------------------------------- */

static void receive_feed(struct api_pipe *p);

static void on_writable(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    receive_feed(h->data);
}

static void receive_feed(struct api_pipe *p)
{
    int open = p->poll_open && !uv_is_closing((uv_handle_t *)&p->poll);
    while (p->pending.len && open) {
        ssize_t n = write(p->fd, p->pending.data, p->pending.len);
        if (n < 0 && errno == EAGAIN) {
            uv_poll_start(&p->poll, UV_WRITABLE, on_writable);
            http_req_body_pause(p->req, 1);
            return;
        }
        if (n < 0) { /* EPIPE: the worker stopped reading (error or done) */
            buf_reset(&p->pending);
            break;
        }
        buf_consume(&p->pending, (size_t)n);
    }
    if (open)
        uv_poll_stop(&p->poll);
    if (!p->body_ended)
        http_req_body_pause(p->req, 0);
    else
        close_loop_end(p); /* EOF for the worker */
}

static void on_body_data(http_req_t *req, const char *data, size_t len, void *arg)
{
    struct api_pipe *p = arg;
    (void)req;
    if (!p->poll_open || uv_is_closing((uv_handle_t *)&p->poll))
        return;
    p->bytes += len;
    buf_append(&p->pending, data, len);
    receive_feed(p);
}

static void on_body_end(http_req_t *req, int err, void *arg)
{
    struct api_pipe *p = arg;
    (void)req;
    p->body_ended = 1;
    if (err < 0) {
        /* A broken upload: the worker sees a truncated stream when the pipe closes. */
        p->body_err = err;
        buf_reset(&p->pending);
    }
    receive_feed(p);
}

int api_pipe_receive(uv_loop_t *loop, http_req_t *req, int fd, api_pipe_end_fn end, void *arg,
                     struct api_pipe **out)
{
    struct api_pipe *p;
    int r = pipe_open(loop, req, fd, end, arg, &p);
    if (r < 0)
        return r;
    http_req_body_start(req, on_body_data, on_body_end, p);
    *out = p;
    return 0;
}

/* ---- both ----------------------------------------------------------------------------------- */

void api_pipe_worker_done(struct api_pipe *p, int r)
{
    p->worker_done = 1;
    p->r = r;
    if (p->content_type) { /* send: the loop may not have read everything yet */
        if (!p->eof && p->poll_open && !uv_is_closing((uv_handle_t *)&p->poll))
            send_pump(p);
        else
            send_maybe_end(p);
        return;
    }
    p->ended = 1;
    close_loop_end(p);
    p->end(p->arg, r, 0, p->bytes, p->body_err);
    if (!p->poll_open)
        pipe_free(p);
}
