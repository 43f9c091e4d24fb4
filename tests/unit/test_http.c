/*
 * Unit tests for net/http: a real server on 127.0.0.1 (port 0), its loop running in a background
 * thread, driven by blocking client sockets from the test thread (where cmocka's asserts live).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "net/http.h"

#define HDR_LIMIT 1024
#define BODY_LIMIT 4096

struct fixture {
    uv_loop_t loop;
    http_server_t *srv;
    uv_async_t stop;
    pthread_t thread;
    int port;
    char sock_path[108];
    atomic_int handled;
    atomic_int aborts;
    atomic_int slow_started;
    atomic_int slow_done;
    atomic_int slow_gone_at_respond;
    atomic_int done_called;
    int stop_sent;
    /* Streaming handlers (loop thread) report here. */
    atomic_int up_fail;       /* uploads that ended with an error */
    atomic_int up_err;        /* the last such error */
    atomic_int up_violations; /* on_data while paused, or a callback after on_end */
    atomic_int dl_epipe;      /* downloads whose write failed with -EPIPE */
    atomic_int dl_other_err;  /* ... with anything else */
    atomic_int dl_ended;      /* downloads ended with http_respond_end() */
    atomic_int dl_drains;     /* drain callbacks */
    atomic_int dl_aborts;
    atomic_int dl_inval; /* writes past Content-Length refused with -EINVAL */
};

/* ---------------------------------------------------------------------------------------------
 * Server side (runs on the loop thread)
 */

struct slow {
    uv_timer_t timer;
    http_req_t *req;
    struct fixture *f;
};

static void on_slow_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_slow_timer(uv_timer_t *t)
{
    struct slow *s = t->data;
    atomic_store(&s->f->slow_gone_at_respond, http_req_gone(s->req));
    /* Respond even if the client is gone: the contract says the request stays valid until then. */
    http_respond(s->req, 200, "text/plain", "late", 4, NULL);
    atomic_fetch_add(&s->f->slow_done, 1);
    uv_close((uv_handle_t *)&s->timer, on_slow_closed);
}

static void on_abort(http_req_t *req, void *arg)
{
    struct fixture *f = arg;
    /* No cmocka asserts on the loop thread: count only well-formed aborts. */
    if (http_req_gone(req))
        atomic_fetch_add(&f->aborts, 1);
}

static void on_abort_respond(http_req_t *req, void *arg)
{
    struct fixture *f = arg;
    if (http_req_gone(req))
        atomic_fetch_add(&f->aborts, 1);
    http_respond_error(req, 503, "unavailable", "client went away");
    atomic_fetch_add(&f->slow_done, 1);
}

static void echo(http_req_t *req)
{
    buf_t b = BUF_INIT;
    size_t blen;
    const char *body = http_req_body(req, &blen);
    buf_appendf(&b, "method=%s\npath=%s\nrawq=%s\nqcount=%zu\n", http_req_method(req),
                http_req_path(req), http_req_raw_query(req), http_req_query_count(req));
    for (size_t i = 0; i < http_req_query_count(req); i++)
        buf_appendf(&b, "q:%s=%s\n", http_req_query_name(req, i), http_req_query_value(req, i));
    const char *x = http_req_query(req, "x");
    buf_appendf(&b, "first_x=%s\n", x ? x : "(null)");
    const char *h = http_req_header(req, "x-test");
    buf_appendf(&b, "h:x-test=%s\n", h ? h : "(null)");
    buf_appendf(&b, "peer=%s\n", http_req_peer(req));
    buf_appendf(&b, "blen=%zu\nbody=", blen);
    buf_append(&b, body, blen);
    http_respond(req, 200, "text/plain", b.data, b.len, "X-Echo: 1\r\n");
    buf_free(&b);
}

/* The byte at offset `i` of every streamed test body: not periodic in any small power of two, so
 * lost, repeated or reordered pieces are caught. */
static unsigned char pattern(uint64_t i)
{
    return (unsigned char)((i * 131) ^ (i >> 9) ^ (i >> 17) ^ (i >> 25));
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#define FNV_INIT 0xcbf29ce484222325ULL

/* Streamed upload: counts and checksums the body, pausing now and then (`pause_every` bytes) for
 * 2 ms; optionally starts the body late (`delay` ms) or answers 507 after `fail_after` bytes. */
struct upload {
    http_req_t *req;
    struct fixture *f;
    uv_timer_t timer;
    uint64_t bytes, sum;
    size_t since_pause, pause_every, fail_after;
    int pauses;
    int paused;
    int ended;
};

static void on_upload_closed(uv_handle_t *h)
{
    free(h->data);
}

static void upload_done(struct upload *u)
{
    uv_close((uv_handle_t *)&u->timer, on_upload_closed);
}

static void upload_resume(uv_timer_t *t)
{
    struct upload *u = t->data;
    u->paused = 0;
    http_req_body_pause(u->req, 0);
}

static void upload_data(http_req_t *req, const char *data, size_t len, void *arg)
{
    struct upload *u = arg;
    if (u->paused || u->ended || len == 0)
        atomic_fetch_add(&u->f->up_violations, 1);
    u->bytes += len;
    u->sum = fnv1a(u->sum, data, len);
    if (u->fail_after && u->bytes >= u->fail_after) {
        /* Answering from inside on_data: no callback may follow. */
        u->ended = 1;
        http_respond_error(req, 507, "insufficient_storage", "full after %llu bytes",
                           (unsigned long long)u->bytes);
        upload_done(u);
        return;
    }
    u->since_pause += len;
    if (u->pause_every && u->since_pause >= u->pause_every) {
        u->since_pause = 0;
        u->paused = 1;
        u->pauses++;
        http_req_body_pause(req, 1);
        uv_timer_start(&u->timer, upload_resume, 2, 0);
    }
}

static void upload_end(http_req_t *req, int err, void *arg)
{
    struct upload *u = arg;
    if (u->ended)
        atomic_fetch_add(&u->f->up_violations, 1);
    u->ended = 1;
    if (err < 0) {
        atomic_store(&u->f->up_err, err);
        atomic_fetch_add(&u->f->up_fail, 1);
        http_respond_error(req, 400, "bad_request", "body failed: %d", err);
    } else {
        char msg[160];
        snprintf(msg, sizeof(msg), "bytes=%llu sum=%016llx pauses=%d streaming=%d",
                 (unsigned long long)u->bytes, (unsigned long long)u->sum, u->pauses,
                 http_req_streaming(req));
        http_respond(req, 200, "text/plain", msg, strlen(msg), NULL);
    }
    upload_done(u);
}

static void upload_begin(uv_timer_t *t)
{
    struct upload *u = t->data;
    http_req_body_start(u->req, upload_data, upload_end, u);
}

static void start_upload(struct fixture *f, http_req_t *req)
{
    struct upload *u = calloc(1, sizeof(*u));
    u->req = req;
    u->f = f;
    u->sum = FNV_INIT;
    const char *v = http_req_query(req, "pause");
    u->pause_every = v ? strtoul(v, NULL, 10) : 0;
    v = http_req_query(req, "fail_after");
    u->fail_after = v ? strtoul(v, NULL, 10) : 0;
    uv_timer_init(&f->loop, &u->timer);
    u->timer.data = u;
    v = http_req_query(req, "delay");
    if (v)
        uv_timer_start(&u->timer, upload_begin, strtoul(v, NULL, 10), 0);
    else
        http_req_body_start(req, upload_data, upload_end, u);
}

/* Streamed download of `n` pattern bytes, with Content-Length or chunked (`chunked=1`), written
 * while less than HTTP_RESPOND_HIGH_WATER is queued and continued from the drain callback.
 * `short=1` announces n but writes n/2; `over=1` tries one byte too many at the end. */
struct download {
    http_req_t *req;
    struct fixture *f;
    uint64_t total, sent;
    int over;
    int abort; /* `abort=1`: writes n/2 and breaks the response off (http_respond_abort) */
};

static void download_finish(struct download *d)
{
    if (d->over && http_respond_write(d->req, "x", 1) == -EINVAL)
        atomic_fetch_add(&d->f->dl_inval, 1);
    if (d->abort)
        http_respond_abort(d->req);
    else
        http_respond_end(d->req);
    atomic_fetch_add(&d->f->dl_ended, 1);
    free(d);
}

static void download_pump(struct download *d)
{
    char piece[65536];
    while (d->sent < d->total && http_respond_buffered(d->req) < HTTP_RESPOND_HIGH_WATER) {
        size_t n =
            d->total - d->sent < sizeof(piece) ? (size_t)(d->total - d->sent) : sizeof(piece);
        for (size_t i = 0; i < n; i++)
            piece[i] = (char)pattern(d->sent + i);
        int rc = http_respond_write(d->req, piece, n);
        if (rc < 0) {
            atomic_fetch_add(rc == -EPIPE ? &d->f->dl_epipe : &d->f->dl_other_err, 1);
            download_finish(d);
            return;
        }
        d->sent += n;
    }
    if (d->sent == d->total)
        download_finish(d);
}

static void download_drain(http_req_t *req, void *arg)
{
    struct download *d = arg;
    atomic_fetch_add(&d->f->dl_drains, 1);
    download_pump(d);
}

static void download_abort(http_req_t *req, void *arg)
{
    struct download *d = arg;
    atomic_fetch_add(&d->f->dl_aborts, 1);
    /* The next write fails with -EPIPE and the download ends itself. */
    download_pump(d);
}

static void start_download(struct fixture *f, http_req_t *req)
{
    struct download *d = calloc(1, sizeof(*d));
    d->req = req;
    d->f = f;
    const char *v = http_req_query(req, "n");
    uint64_t n = v ? strtoull(v, NULL, 10) : 0;
    int chunked = http_req_query(req, "chunked") != NULL;
    d->abort = http_req_query(req, "abort") != NULL;
    d->total = http_req_query(req, "short") || d->abort ? n / 2 : n;
    d->over = http_req_query(req, "over") != NULL;
    http_req_set_abort_cb(req, download_abort, d);
    http_respond_on_drain(req, download_drain, d);
    int rc = http_respond_start(req, 200, "application/octet-stream", chunked ? -1 : (int64_t)n,
                                "X-Stream: 1\r\n");
    if (rc < 0) {
        atomic_fetch_add(&f->dl_other_err, 1);
        download_finish(d);
        return;
    }
    download_pump(d);
}

/* Requests under /up and /reject are streamed; /bup uses the same handler without streaming. */
static int stream_hook(http_req_t *req, void *ctx)
{
    const char *path = http_req_path(req);
    return strcmp(path, "/up") == 0 || strcmp(path, "/reject") == 0;
}

static void handler(http_req_t *req, void *ctx)
{
    struct fixture *f = ctx;
    const char *path = http_req_path(req);
    atomic_fetch_add(&f->handled, 1);
    if (strcmp(path, "/up") == 0 || strcmp(path, "/bup") == 0) {
        start_upload(f, req);
    } else if (strcmp(path, "/reject") == 0) {
        /* Early rejection, without reading the body. */
        http_respond_error(req, 413, "payload_too_large", "no thanks");
    } else if (strcmp(path, "/down") == 0) {
        start_download(f, req);
    } else if (strcmp(path, "/slow") == 0) {
        const char *ms = http_req_query(req, "ms");
        struct slow *s = calloc(1, sizeof(*s));
        s->req = req;
        s->f = f;
        uv_timer_init(&f->loop, &s->timer);
        s->timer.data = s;
        http_req_set_abort_cb(req, on_abort, f);
        uv_timer_start(&s->timer, on_slow_timer, ms ? strtoul(ms, NULL, 10) : 300, 0);
        atomic_fetch_add(&f->slow_started, 1);
    } else if (strcmp(path, "/hang") == 0) {
        /* Answered only from the abort callback. */
        http_req_set_abort_cb(req, on_abort_respond, f);
        atomic_fetch_add(&f->slow_started, 1);
    } else if (strcmp(path, "/big") == 0) {
        const char *n = http_req_query(req, "n");
        size_t len = n ? strtoul(n, NULL, 10) : 0;
        char *body = malloc(len + 1);
        for (size_t i = 0; i < len; i++)
            body[i] = (char)('a' + i % 26);
        http_respond(req, 200, "application/octet-stream", body, len, NULL);
        free(body);
    } else if (strcmp(path, "/nocontent") == 0) {
        http_respond(req, 204, "text/plain", "ignored", 7, NULL);
    } else if (strcmp(path, "/json") == 0) {
        http_respond_json(req, 201, json_pack("{s:b}", "ok", 1));
    } else if (strcmp(path, "/empty-json") == 0) {
        http_respond_json(req, 200, NULL);
    } else if (strcmp(path, "/error") == 0) {
        http_respond_error(req, 404, "not_found", "no %s \"%d\"", "thing", 7);
    } else if (strcmp(path, "/bad-utf8") == 0) {
        http_respond_error(req, 400, "bad_request", "bad \xff byte");
    } else {
        echo(req);
    }
}

static void on_done(void *arg)
{
    struct fixture *f = arg;
    atomic_fetch_add(&f->done_called, 1);
}

static void on_done_flag(void *arg)
{
    (*(int *)arg)++;
}

static void on_stop(uv_async_t *a)
{
    struct fixture *f = a->data;
    http_server_close(f->srv, on_done, f);
    uv_close((uv_handle_t *)&f->stop, NULL);
}

static void *loop_thread(void *arg)
{
    struct fixture *f = arg;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int setup_with(void **state, unsigned max_conns, unsigned idle_ms, int with_unix)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    struct http_limits lim = {HDR_LIMIT, BODY_LIMIT, max_conns, idle_ms};
    assert_int_equal(http_server_new(&f->srv, &f->loop, &lim, handler, f), 0);
    http_server_set_stream_hook(f->srv, stream_hook);
    assert_int_equal(http_server_port(f->srv), -1);
    assert_int_equal(http_server_listen(f->srv, "127.0.0.1:0"), 0);
    f->port = http_server_port(f->srv);
    assert_true(f->port > 0);
    if (with_unix) {
        snprintf(f->sock_path, sizeof(f->sock_path), "/tmp/warren-test-http-%d.sock", getpid());
        /* Leave a stale socket file behind, as a crashed daemon would. */
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        strcpy(sun.sun_path, f->sock_path);
        unlink(f->sock_path);
        assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
        close(fd);
        char addr[128];
        snprintf(addr, sizeof(addr), "unix:%s", f->sock_path);
        assert_int_equal(http_server_listen(f->srv, addr), 0);
        /* A live socket must not be stolen. */
        http_server_t *other;
        assert_int_equal(http_server_new(&other, &f->loop, NULL, handler, f), 0);
        assert_int_equal(http_server_listen(other, addr), -EADDRINUSE);
        http_server_free(other);
    }
    assert_int_equal(uv_async_init(&f->loop, &f->stop, on_stop), 0);
    f->stop.data = f;
    assert_int_equal(pthread_create(&f->thread, NULL, loop_thread, f), 0);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, 64, 5000, 0);
}

static int setup_idle(void **state)
{
    return setup_with(state, 64, 200, 0);
}

static int setup_maxconn(void **state)
{
    return setup_with(state, 1, 5000, 0);
}

static int setup_unix(void **state)
{
    return setup_with(state, 64, 5000, 1);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (!f->stop_sent)
        uv_async_send(&f->stop);
    pthread_join(f->thread, NULL);
    assert_int_equal(atomic_load(&f->done_called), 1);
    assert_int_equal(http_server_connections(f->srv), 0);
    http_server_free(f->srv);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    if (f->sock_path[0]) {
        struct stat st;
        assert_int_equal(lstat(f->sock_path, &st), -1); /* removed on close */
    }
    free(f);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Client side (test thread)
 */

struct client {
    int fd;
    size_t len;
    char buf[1 << 17];
};

struct resp {
    int status;
    char head[8192];
    char body[1 << 16];
    size_t body_len;
};

static void set_timeout(int fd)
{
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    /* A server that stops reading for good fails the test instead of hanging it. */
    struct timeval stv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &stv, sizeof(stv));
}

static struct client *client_new(int port)
{
    struct client *c = calloc(1, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    set_timeout(c->fd);
    return c;
}

static struct client *client_new_unix(const char *path)
{
    struct client *c = calloc(1, sizeof(*c));
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, path);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    set_timeout(c->fd);
    return c;
}

static void client_free(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

static void client_send(struct client *c, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

static void client_sends(struct client *c, const char *s)
{
    client_send(c, s, strlen(s));
}

/* Reads more input; returns bytes read, 0 on EOF, -1 on error/timeout. */
static ssize_t client_fill(struct client *c)
{
    if (c->len == sizeof(c->buf))
        return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
    if (n > 0)
        c->len += (size_t)n;
    return n < 0 ? -1 : n;
}

/* Reads one response (leaving what follows buffered). `head_req`: a response to HEAD, so no body
 * follows even with a Content-Length. Returns 0, or -1 if the connection ended first. */
static int read_response(struct client *c, struct resp *r, int head_req)
{
    char *end;
    memset(r, 0, sizeof(*r));
    for (;;) {
        end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (end)
            break;
        if (client_fill(c) <= 0)
            return -1;
    }
    size_t hlen = (size_t)(end - c->buf) + 4;
    assert_true(hlen < sizeof(r->head));
    memcpy(r->head, c->buf, hlen);
    r->head[hlen] = '\0';
    assert_int_equal(sscanf(r->head, "HTTP/1.1 %d ", &r->status), 1);
    size_t cl = 0;
    char *p = strcasestr(r->head, "\r\nContent-Length:");
    if (p)
        cl = strtoul(p + 17, NULL, 10);
    if (head_req)
        cl = 0;
    assert_true(cl <= sizeof(r->body) - 1);
    while (c->len < hlen + cl) {
        if (client_fill(c) <= 0)
            return -1;
    }
    memcpy(r->body, c->buf + hlen, cl);
    r->body[cl] = '\0';
    r->body_len = cl;
    memmove(c->buf, c->buf + hlen + cl, c->len - hlen - cl);
    c->len -= hlen + cl;
    return 0;
}

/* True if the server closes the connection without sending anything more. */
static int client_sees_eof(struct client *c)
{
    if (c->len)
        return 0;
    char tmp[256];
    ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

static int has_header(const struct resp *r, const char *line)
{
    return strcasestr(r->head, line) != NULL;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int wait_for(atomic_int *v, int want, int ms)
{
    for (int i = 0; i < ms / 5; i++) {
        if (atomic_load(v) >= want)
            return 1;
        sleep_ms(5);
    }
    return atomic_load(v) >= want;
}

/* ---------------------------------------------------------------------------------------------
 * Tests
 */

static void test_simple_get(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, "GET /echo/a%20b%2Fc?x=1&y=a+b%21&z&&x=2&bad=%zz HTTP/1.1\r\nHost: t\r\n"
                    "X-Test: hi there\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "HTTP/1.1 200 OK\r\n"));
    assert_true(has_header(&r, "\r\nContent-Type: text/plain\r\n"));
    assert_true(has_header(&r, "\r\nX-Echo: 1\r\n"));
    assert_false(has_header(&r, "Connection:"));
    assert_non_null(strstr(r.body, "method=GET\n"));
    assert_non_null(strstr(r.body, "path=/echo/a b/c\n"));
    assert_non_null(strstr(r.body, "rawq=x=1&y=a+b%21&z&&x=2&bad=%zz\n"));
    assert_non_null(strstr(r.body, "qcount=5\n"));
    assert_non_null(strstr(r.body, "q:x=1\nq:y=a b!\nq:z=\nq:x=2\nq:bad=%zz\n"));
    assert_non_null(strstr(r.body, "first_x=1\n"));
    assert_non_null(strstr(r.body, "h:x-test=hi there\n"));
    assert_non_null(strstr(r.body, "peer=127.0.0.1:"));
    assert_non_null(strstr(r.body, "blen=0\nbody="));

    /* No query at all. */
    client_sends(c, "GET /plain HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "path=/plain\nrawq=\nqcount=0\n"));
    assert_non_null(strstr(r.body, "first_x=(null)\nh:x-test=(null)\n"));
    client_free(c);
}

static void test_post_body(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, "POST /echo HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "method=POST\n"));
    assert_non_null(strstr(r.body, "blen=11\nbody=hello world"));

    /* Body arriving in pieces, and a body exactly at the limit. */
    char *big = malloc(BODY_LIMIT);
    memset(big, 'b', BODY_LIMIT);
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "PUT /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n", BODY_LIMIT);
    client_sends(c, hdr);
    client_send(c, big, 100);
    sleep_ms(20);
    client_send(c, big + 100, BODY_LIMIT - 100);
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    char want[64];
    snprintf(want, sizeof(want), "blen=%d\n", BODY_LIMIT);
    assert_non_null(strstr(r.body, want));
    free(big);
    client_free(c);
}

static void test_keep_alive(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    for (int i = 0; i < 3; i++) {
        char req[128];
        snprintf(req, sizeof(req), "GET /echo?x=%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
        client_sends(c, req);
        assert_int_equal(read_response(c, &r, 0), 0);
        assert_int_equal(r.status, 200);
        char want[32];
        snprintf(want, sizeof(want), "first_x=%d\n", i);
        assert_non_null(strstr(r.body, want));
    }
    assert_int_equal(atomic_load(&f->handled), 3);
    client_free(c);
}

static void test_pipelined(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, "GET /echo?x=1 HTTP/1.1\r\n\r\n"
                    "POST /echo?x=2 HTTP/1.1\r\nContent-Length: 3\r\n\r\ntwo"
                    "POST /echo?x=3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nthree\r\n0\r\n\r\n"
                    "GET /echo?x=4 HTTP/1.1\r\n\r\n");
    for (int i = 1; i <= 4; i++) {
        assert_int_equal(read_response(c, &r, 0), 0);
        char want[32];
        snprintf(want, sizeof(want), "first_x=%d\n", i);
        assert_non_null(strstr(r.body, want));
    }
    assert_non_null(strstr(r.body, "blen=0\n"));

    /* The first request is answered late (from a timer): the second must wait for it. */
    client_sends(c, "GET /slow?ms=100 HTTP/1.1\r\n\r\nGET /echo?x=5 HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_string_equal(r.body, "late");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "first_x=5\n"));
    assert_int_equal(atomic_load(&f->aborts), 0);
    client_free(c);
}

static void test_byte_by_byte(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    const char *req = "POST /echo?x=split HTTP/1.1\r\nX-Test: one byte\r\nTransfer-Encoding: "
                      "chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    for (const char *p = req; *p; p++) {
        client_send(c, p, 1);
        sleep_ms(1);
    }
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "first_x=split\n"));
    assert_non_null(strstr(r.body, "h:x-test=one byte\n"));
    assert_non_null(strstr(r.body, "body=abc"));
    client_free(c);
}

static void test_chunked(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    sleep_ms(20);
    client_sends(c, "6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "blen=11\nbody=hello world"));

    /* Still usable afterwards. */
    client_sends(c, "GET /echo?x=after HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "first_x=after\n"));
    client_free(c);
}

static void test_expect_continue(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, "POST /echo HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 100);
    assert_string_equal(r.head, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_int_equal(atomic_load(&f->handled), 0);
    client_sends(c, "hello");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "body=hello"));

    /* No 100 for a body-less request. */
    client_sends(c, "GET /echo?x=e HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    client_free(c);
}

static void test_expect_too_large(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c,
                 "POST /echo HTTP/1.1\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 413);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_true(has_header(&r, "\r\nContent-Type: application/json\r\n"));
    assert_string_equal(r.body, "{\"error\":{\"code\":\"payload_too_large\","
                                "\"message\":\"request body too large\"}}\n");
    assert_true(client_sees_eof(c));
    assert_int_equal(atomic_load(&f->handled), 0);
    client_free(c);
}

static void test_header_too_large(void **state)
{
    struct fixture *f = *state;
    struct resp r;
    char big[HDR_LIMIT + 100];
    memset(big, 'h', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';

    /* One huge header value. */
    struct client *c = client_new(f->port);
    client_sends(c, "GET /echo HTTP/1.1\r\nX-Big: ");
    client_sends(c, big);
    client_sends(c, "\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 431);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(r.body, "\"code\":\"headers_too_large\""));
    assert_true(client_sees_eof(c));
    client_free(c);

    /* A huge URL. */
    c = client_new(f->port);
    client_sends(c, "GET /");
    client_sends(c, big);
    client_sends(c, " HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 431);
    client_free(c);

    /* Many small headers, not yet terminated. */
    c = client_new(f->port);
    client_sends(c, "GET /echo HTTP/1.1\r\n");
    for (int i = 0; i < 200; i++)
        client_sends(c, "X-Many: 1234567890\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 431);
    client_free(c);

    /* Whitespace the callbacks never see still counts. */
    c = client_new(f->port);
    client_sends(c, "GET /echo HTTP/1.1\r\nX-Space:");
    char spaces[HDR_LIMIT];
    memset(spaces, ' ', sizeof(spaces));
    client_send(c, spaces, sizeof(spaces));
    sleep_ms(20);
    client_send(c, spaces, sizeof(spaces));
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 431);
    client_free(c);

    /* Just under the limit is fine. */
    c = client_new(f->port);
    client_sends(c, "GET /echo HTTP/1.1\r\nX-Test: ");
    client_send(c, big, HDR_LIMIT - 100);
    client_sends(c, "\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    client_free(c);
    assert_int_equal(atomic_load(&f->handled), 1);
}

static void test_body_too_large(void **state)
{
    struct fixture *f = *state;
    struct resp r;
    char *big = malloc(BODY_LIMIT + 1);
    memset(big, 'b', BODY_LIMIT + 1);

    /* Declared length over the limit: refused before the body is read, even as it arrives. */
    struct client *c = client_new(f->port);
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "POST /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n", BODY_LIMIT + 1);
    client_sends(c, hdr);
    client_send(c, big, BODY_LIMIT + 1);
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 413);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(r.body, "\"code\":\"payload_too_large\""));
    assert_true(client_sees_eof(c));
    client_free(c);

    /* A chunked body growing past the limit. */
    c = client_new(f->port);
    client_sends(c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    snprintf(hdr, sizeof(hdr), "%x\r\n", BODY_LIMIT / 2);
    for (int i = 0; i < 3; i++) {
        client_sends(c, hdr);
        client_send(c, big, BODY_LIMIT / 2);
        client_sends(c, "\r\n");
    }
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 413);
    assert_true(client_sees_eof(c));
    client_free(c);
    free(big);
    assert_int_equal(atomic_load(&f->handled), 0);
}

static void expect_400(struct fixture *f, const char *req)
{
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, req);
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 400);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(r.body, "{\"error\":{\"code\":\"bad_request\",\"message\":\""));
    assert_true(client_sees_eof(c));
    client_free(c);
}

static void test_malformed(void **state)
{
    struct fixture *f = *state;
    expect_400(f, "GARBAGE\r\n\r\n");
    expect_400(f, "GET / HTTP/9.9\r\n\r\n");
    expect_400(f, "GET / HTTP/1.1\r\nBad Header\r\n\r\n");
    expect_400(f, "POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n");
    expect_400(f, "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
    expect_400(f, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    expect_400(f, "GET /a%00b HTTP/1.1\r\n\r\n");
    expect_400(f, "GET /a?x=%00 HTTP/1.1\r\n\r\n");
    expect_400(f, "GET http://example.com/ HTTP/1.1\r\n\r\n");
    expect_400(f, "OPTIONS * HTTP/1.1\r\n\r\n");
    assert_int_equal(atomic_load(&f->handled), 0);

    /* A good request followed by garbage: the first is answered, then 400. */
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, "GET /echo?x=ok HTTP/1.1\r\n\r\nNOT HTTP\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 400);
    assert_true(client_sees_eof(c));
    client_free(c);
}

static void test_abort(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    client_sends(c, "GET /slow?ms=300 HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&f->slow_started, 1, 2000));
    client_free(c); /* hang up before the answer */
    assert_true(wait_for(&f->aborts, 1, 2000));
    assert_int_equal(atomic_load(&f->slow_done), 0);
    /* The handler answers later; the answer is dropped, nothing crashes or leaks. */
    assert_true(wait_for(&f->slow_done, 1, 2000));
    assert_int_equal(atomic_load(&f->slow_gone_at_respond), 1);
    assert_int_equal(atomic_load(&f->aborts), 1);

    /* The server still works. */
    c = client_new(f->port);
    struct resp r;
    client_sends(c, "GET /echo HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    client_free(c);
}

static void test_server_close_aborts(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    client_sends(c, "GET /slow?ms=500 HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&f->slow_started, 1, 2000));
    /* Closing the server closes the connection and aborts the pending request; the loop keeps
     * running until the handler's timer answers the (now detached) request. */
    f->stop_sent = 1;
    uv_async_send(&f->stop);
    assert_true(wait_for(&f->aborts, 1, 2000));
    assert_true(client_sees_eof(c));
    assert_true(wait_for(&f->done_called, 1, 2000));
    client_free(c);
    assert_true(wait_for(&f->slow_done, 1, 2000));
    assert_int_equal(atomic_load(&f->slow_gone_at_respond), 1);
}

static void test_abort_responds(void **state)
{
    struct fixture *f = *state;
    /* The abort callback itself answers (and so frees) the request. */
    struct client *c = client_new(f->port);
    client_sends(c, "GET /hang HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&f->slow_started, 1, 2000));
    client_free(c);
    assert_true(wait_for(&f->slow_done, 1, 2000));
    assert_int_equal(atomic_load(&f->aborts), 1);

    /* Left pending at teardown: server close must abort it, and it answers from there. */
    c = client_new(f->port);
    client_sends(c, "GET /hang HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&f->slow_started, 2, 2000));
    client_free(c);
    assert_true(wait_for(&f->slow_done, 2, 2000));
    c = client_new(f->port);
    client_sends(c, "GET /hang HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&f->slow_started, 3, 2000));
    f->stop_sent = 1;
    uv_async_send(&f->stop);
    assert_true(wait_for(&f->done_called, 1, 2000));
    assert_int_equal(atomic_load(&f->slow_done), 3);
    assert_true(client_sees_eof(c));
    client_free(c);
}

/* Reads a response whose body may be large, checking the body pattern of /big. */
static int read_big(struct client *c, size_t want)
{
    struct resp *r = malloc(sizeof(*r));
    char *end;
    for (;;) {
        end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (end)
            break;
        if (client_fill(c) <= 0)
            return -1;
    }
    size_t hlen = (size_t)(end - c->buf) + 4;
    memcpy(r->head, c->buf, hlen);
    r->head[hlen] = '\0';
    char *p = strcasestr(r->head, "\r\nContent-Length:");
    size_t cl = p ? strtoul(p + 17, NULL, 10) : 0;
    free(r);
    if (cl != want)
        return -1;
    memmove(c->buf, c->buf + hlen, c->len - hlen);
    c->len -= hlen;
    size_t got = 0;
    while (got < cl) {
        if (c->len == 0 && client_fill(c) <= 0)
            return -1;
        size_t n = c->len < cl - got ? c->len : cl - got;
        for (size_t i = 0; i < n; i++) {
            if (c->buf[i] != (char)('a' + (got + i) % 26))
                return -1;
        }
        got += n;
        memmove(c->buf, c->buf + n, c->len - n);
        c->len -= n;
    }
    return 0;
}

static void test_backpressure(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    /* Several multi-megabyte answers requested at once by a client that reads late: output is
     * queued, parsing pauses, and everything still arrives complete and in order. */
    size_t sizes[] = {3 << 20, 10, 2 << 20, 1 << 20, 5};
    size_t n = sizeof(sizes) / sizeof(sizes[0]);
    for (size_t i = 0; i < n; i++) {
        char req[64];
        snprintf(req, sizeof(req), "GET /big?n=%zu HTTP/1.1\r\n\r\n", sizes[i]);
        client_sends(c, req);
    }
    sleep_ms(100);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(read_big(c, sizes[i]), 0);
    assert_int_equal(atomic_load(&f->handled), (int)n);
    client_free(c);
}

static void test_upgrade_refused(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    /* No upgrade support: the request is served as a normal one and the connection closed. */
    client_sends(c, "GET /echo HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                    "GET /echo HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_true(client_sees_eof(c));
    assert_int_equal(atomic_load(&f->handled), 1);
    client_free(c);
}

static void test_connection_close(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\nGET /echo HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_true(client_sees_eof(c));
    assert_int_equal(atomic_load(&f->handled), 1);
    client_free(c);
}

static void test_http10(void **state)
{
    struct fixture *f = *state;
    struct resp r;
    struct client *c = client_new(f->port);
    client_sends(c, "GET /echo HTTP/1.0\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_true(client_sees_eof(c));
    client_free(c);

    c = client_new(f->port);
    client_sends(c, "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_true(has_header(&r, "\r\nConnection: keep-alive\r\n"));
    client_sends(c, "GET /echo?x=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "first_x=2\n"));
    client_free(c);
}

static void test_head_and_204(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r, full;
    client_sends(c, "GET /echo?x=h HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &full, 0), 0);
    client_sends(c, "HEAD /echo?x=h HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 1), 0);
    assert_int_equal(r.status, 200);
    char want[64];
    /* The HEAD body would say "method=HEAD": one byte longer than the GET one. */
    snprintf(want, sizeof(want), "\r\nContent-Length: %zu\r\n", full.body_len + 1);
    assert_true(has_header(&r, want));
    assert_non_null(strstr(full.body, "method=GET\n"));

    client_sends(c, "GET /nocontent HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 204);
    assert_false(has_header(&r, "Content-Length"));
    assert_false(has_header(&r, "Content-Type"));

    /* Nothing stray was sent: the next response parses cleanly. */
    client_sends(c, "GET /echo?x=next HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "first_x=next\n"));
    client_free(c);
}

static void test_json_responses(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, "GET /json HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 201);
    assert_true(has_header(&r, "HTTP/1.1 201 Created\r\n"));
    assert_true(has_header(&r, "\r\nContent-Type: application/json\r\n"));
    assert_string_equal(r.body, "{\"ok\":true}\n");

    client_sends(c, "GET /empty-json HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "\r\nContent-Length: 0\r\n"));

    client_sends(c, "GET /error HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 404);
    assert_true(has_header(&r, "HTTP/1.1 404 Not Found\r\n"));
    assert_string_equal(
        r.body, "{\"error\":{\"code\":\"not_found\",\"message\":\"no thing \\\"7\\\"\"}}\n");
    assert_false(has_header(&r, "Connection: close")); /* handler errors keep the connection */

    client_sends(c, "GET /bad-utf8 HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 400);
    assert_string_equal(r.body,
                        "{\"error\":{\"code\":\"bad_request\",\"message\":\"bad ? byte\"}}\n");
    client_free(c);

    assert_string_equal(http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_text(299), "Unknown");
}

static void test_repeated_headers(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c,
                 "GET /echo HTTP/1.1\r\nX-Test: 1\r\nx-test: 2\r\nX-Empty:\r\nX-TEST: 3\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "h:x-test=1, 2, 3\n"));
    client_free(c);
}

static void test_idle_timeout(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    client_sends(c, "GET /echo HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_true(client_sees_eof(c));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 100 && ms < 2000);
    client_free(c);

    /* A request in progress is not cut by the idle timer. */
    c = client_new(f->port);
    client_sends(c, "GET /slow?ms=400 HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_string_equal(r.body, "late");
    assert_int_equal(atomic_load(&f->aborts), 0);
    client_free(c);
}

static void test_max_connections(void **state)
{
    struct fixture *f = *state;
    struct resp r;
    struct client *a = client_new(f->port);
    client_sends(a, "GET /echo HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(a, &r, 0), 0);
    assert_int_equal(r.status, 200);

    struct client *b = client_new(f->port);
    client_sends(b, "GET /echo HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(b, &r, 0), 0);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "\"code\":\"unavailable\""));
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_true(client_sees_eof(b));
    client_free(b);

    /* Once the first one leaves, a new one is served. */
    client_free(a);
    for (int i = 0; i < 100; i++) {
        b = client_new(f->port);
        client_sends(b, "GET /echo HTTP/1.1\r\n\r\n");
        assert_int_equal(read_response(b, &r, 0), 0);
        client_free(b);
        if (r.status == 200)
            break;
        sleep_ms(10); /* the server may not have noticed the hang-up yet */
    }
    assert_int_equal(r.status, 200);
}

static void test_unix_socket(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new_unix(f->sock_path);
    struct resp r;
    client_sends(c, "GET /echo?x=u HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "peer=unix\n"));
    client_free(c);
}

/* ---------------------------------------------------------------------------------------------
 * Streaming
 */

#define BIG_STREAM (64u << 20)

/* Sends `n` pattern bytes starting at offset *pos (advanced), adding them to *sum. */
static void send_pattern(struct client *c, uint64_t *pos, size_t n, uint64_t *sum)
{
    static char piece[1 << 17];
    while (n > 0) {
        size_t k = n < sizeof(piece) ? n : sizeof(piece);
        for (size_t i = 0; i < k; i++)
            piece[i] = (char)pattern(*pos + i);
        *sum = fnv1a(*sum, piece, k);
        client_send(c, piece, k);
        *pos += k;
        n -= k;
    }
}

/* Reads `n` body bytes, checking them against pattern() from offset *pos (advanced). */
static int read_pattern(struct client *c, uint64_t *pos, uint64_t n)
{
    while (n > 0) {
        if (c->len == 0 && client_fill(c) <= 0)
            return -1;
        size_t k = c->len < n ? c->len : (size_t)n;
        for (size_t i = 0; i < k; i++) {
            if ((unsigned char)c->buf[i] != pattern(*pos + i))
                return -1;
        }
        memmove(c->buf, c->buf + k, c->len - k);
        c->len -= k;
        *pos += k;
        n -= k;
    }
    return 0;
}

/* Reads a CRLF-terminated line (without the CRLF) into out. */
static int read_line(struct client *c, char *out, size_t cap)
{
    char *eol;
    while (!(eol = memmem(c->buf, c->len, "\r\n", 2))) {
        if (client_fill(c) <= 0)
            return -1;
    }
    size_t n = (size_t)(eol - c->buf);
    if (n >= cap)
        return -1;
    memcpy(out, c->buf, n);
    out[n] = '\0';
    memmove(c->buf, eol + 2, c->len - n - 2);
    c->len -= n + 2;
    return 0;
}

/* Reads a chunked body of pattern bytes; returns its length or -1. */
static int64_t read_chunked_pattern(struct client *c)
{
    uint64_t pos = 0;
    char line[64];
    for (;;) {
        if (read_line(c, line, sizeof(line)) < 0)
            return -1;
        char *end;
        unsigned long long n = strtoull(line, &end, 16);
        if (end == line || *end)
            return -1;
        if (n == 0)
            break;
        if (read_pattern(c, &pos, n) < 0 || read_line(c, line, sizeof(line)) < 0 || line[0])
            return -1;
    }
    if (read_line(c, line, sizeof(line)) < 0 || line[0]) /* no trailers */
        return -1;
    return (int64_t)pos;
}

/* Checks the "bytes=N sum=H pauses=P streaming=S" answer of an upload. */
static void expect_upload_ok(struct client *c, uint64_t bytes, uint64_t sum, int min_pauses,
                             int streaming)
{
    struct resp r;
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    unsigned long long got_bytes, got_sum;
    int pauses, got_streaming;
    assert_int_equal(sscanf(r.body, "bytes=%llu sum=%llx pauses=%d streaming=%d", &got_bytes,
                            &got_sum, &pauses, &got_streaming),
                     4);
    assert_int_equal(got_bytes, bytes);
    assert_true(got_sum == sum);
    assert_true(pauses >= min_pauses);
    assert_int_equal(got_streaming, streaming);
}

static void test_stream_upload(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    char hdr[160];

    /* 64 MiB with Content-Length (the buffered limit is 4 KiB), pausing every 4 MiB. */
    uint64_t pos = 0, sum = FNV_INIT;
    snprintf(hdr, sizeof(hdr), "PUT /up?pause=%u HTTP/1.1\r\nContent-Length: %u\r\n\r\n", 4u << 20,
             BIG_STREAM);
    client_sends(c, hdr);
    send_pattern(c, &pos, BIG_STREAM, &sum);
    expect_upload_ok(c, BIG_STREAM, sum, 15, 1);

    /* 64 MiB chunked, in chunks of awkward sizes (some with extensions), on the same
     * connection, pausing every MiB. */
    snprintf(hdr, sizeof(hdr), "POST /up?pause=%u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
             1u << 20);
    client_sends(c, hdr);
    static const size_t sizes[] = {1, 7, 4096, 65536, 100000, 30011, 2, 131072};
    pos = 0;
    sum = FNV_INIT;
    for (size_t i = 0; pos < BIG_STREAM; i++) {
        size_t n = sizes[i % (sizeof(sizes) / sizeof(sizes[0]))];
        if (n > BIG_STREAM - pos)
            n = BIG_STREAM - pos;
        snprintf(hdr, sizeof(hdr), i % 3 ? "%zx\r\n" : "%zx;ext=%zu\r\n", n, i);
        client_sends(c, hdr);
        send_pattern(c, &pos, n, &sum);
        client_sends(c, "\r\n");
    }
    client_sends(c, "0\r\nX-Trailer: 1\r\n\r\n");
    expect_upload_ok(c, BIG_STREAM, sum, 60, 1);

    /* Small streamed upload with a pipelined request behind it. */
    client_sends(c, "POST /up HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                    "GET /echo?x=after HTTP/1.1\r\n\r\n");
    expect_upload_ok(c, 5, fnv1a(FNV_INIT, "hello", 5), 0, 1);
    struct resp r;
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "first_x=after\n"));

    /* A request without a body, claimed by the hook: delivered whole; on_end(0) right away. */
    client_sends(c, "GET /up HTTP/1.1\r\n\r\n");
    expect_upload_ok(c, 0, FNV_INIT, 0, 0);

    /* body_start on a buffered (not streamed) request delivers the buffered body. */
    client_sends(c, "POST /bup HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    expect_upload_ok(c, 5, fnv1a(FNV_INIT, "abcde", 5), 0, 0);
    client_free(c);
    assert_int_equal(atomic_load(&f->up_violations), 0);
    assert_int_equal(atomic_load(&f->up_fail), 0);
}

static void test_stream_continue(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* The handler starts the body 300 ms late: no 100 before that. */
    client_sends(c, "PUT /up?delay=300 HTTP/1.1\r\nContent-Length: 5\r\n"
                    "Expect: 100-continue\r\n\r\n");
    assert_true(wait_for(&f->handled, 1, 2000));
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 150), 0);
    assert_int_equal(read_response(c, &r, 0), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 250);
    assert_string_equal(r.head, "HTTP/1.1 100 Continue\r\n\r\n");
    client_sends(c, "hello");
    expect_upload_ok(c, 5, fnv1a(FNV_INIT, "hello", 5), 0, 1);

    /* Started at once: the 100 comes at once, the connection stays usable. */
    client_sends(c, "PUT /up HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 100);
    client_sends(c, "abc");
    expect_upload_ok(c, 3, fnv1a(FNV_INIT, "abc", 3), 0, 1);
    client_free(c);
}

static void test_stream_reject(void **state)
{
    struct fixture *f = *state;
    struct resp r;

    /* 100-continue and 1 GiB announced: the answer comes without a 100 and without the body,
     * and the connection closes (the client might still send the body). */
    struct client *c = client_new(f->port);
    client_sends(c, "PUT /reject HTTP/1.1\r\nContent-Length: 1073741824\r\n"
                    "Expect: 100-continue\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 413);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(r.body, "\"code\":\"payload_too_large\""));
    assert_true(client_sees_eof(c));
    client_free(c);

    /* A small body sent anyway is skipped and the connection kept. */
    c = client_new(f->port);
    client_sends(c, "PUT /reject HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789"
                    "GET /echo?x=kept HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 413);
    assert_false(has_header(&r, "Connection: close"));
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "first_x=kept\n"));
    /* Also when the small body arrives only after the answer. */
    client_sends(c, "PUT /reject HTTP/1.1\r\nContent-Length: 10\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 413);
    client_sends(c, "0123456789GET /echo?x=kept2 HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "first_x=kept2\n"));
    client_free(c);

    /* A big body being sent: answered, then closed (the client's upload is swallowed while the
     * server lingers, so it still gets to read the answer). */
    c = client_new(f->port);
    size_t big = 1 << 20;
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "PUT /reject HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", big);
    client_sends(c, hdr);
    uint64_t pos = 0, sum = FNV_INIT;
    send_pattern(c, &pos, big, &sum);
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 413);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_true(client_sees_eof(c));
    client_free(c);

    /* A chunked body of unknown size: closed. */
    c = client_new(f->port);
    client_sends(c, "POST /reject HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 413);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_true(client_sees_eof(c));
    client_free(c);

    /* The handler answers from on_data after 256 KiB of a 2 MiB body: the rest is discarded,
     * the connection closed, and no callback follows. */
    c = client_new(f->port);
    snprintf(hdr, sizeof(hdr), "PUT /up?fail_after=%u HTTP/1.1\r\nContent-Length: %u\r\n\r\n",
             256u << 10, 2u << 20);
    client_sends(c, hdr);
    pos = 0;
    send_pattern(c, &pos, 2u << 20, &sum);
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 507);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_true(client_sees_eof(c));
    client_free(c);
    assert_int_equal(atomic_load(&f->up_violations), 0);
    assert_int_equal(atomic_load(&f->up_fail), 0);
}

static void test_stream_upload_errors(void **state)
{
    struct fixture *f = *state;
    struct resp r;

    /* The client vanishes after 1 MiB of 64 MiB: on_end reports an error. */
    struct client *c = client_new(f->port);
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "PUT /up?pause=%u HTTP/1.1\r\nContent-Length: %u\r\n\r\n",
             256u << 10, BIG_STREAM);
    client_sends(c, hdr);
    uint64_t pos = 0, sum = FNV_INIT;
    send_pattern(c, &pos, 1u << 20, &sum);
    client_free(c);
    assert_true(wait_for(&f->up_fail, 1, 3000));
    assert_true(atomic_load(&f->up_err) < 0);

    /* Vanishing before the handler started the body: on_end(err) once it does. */
    c = client_new(f->port);
    client_sends(c, "PUT /up?delay=200 HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc");
    assert_true(wait_for(&f->handled, 2, 2000));
    client_free(c);
    assert_true(wait_for(&f->up_fail, 2, 3000));
    assert_int_equal(atomic_load(&f->up_err), -ECONNRESET);

    /* Malformed chunked coding in the middle of the body: on_end(-EBADMSG), the handler's
     * answer is sent and the connection closed. */
    c = client_new(f->port);
    client_sends(c, "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    sleep_ms(50);
    client_sends(c, "zz\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 400);
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    assert_true(client_sees_eof(c));
    client_free(c);
    assert_int_equal(atomic_load(&f->up_fail), 3);
    assert_int_equal(atomic_load(&f->up_err), -EBADMSG);

    /* A half-close right after a complete body is not a hang-up: the answer still comes. */
    c = client_new(f->port);
    client_sends(c, "PUT /up?delay=100 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    shutdown(c->fd, SHUT_WR);
    expect_upload_ok(c, 5, fnv1a(FNV_INIT, "hello", 5), 0, 1);
    assert_true(client_sees_eof(c));
    client_free(c);
    assert_int_equal(atomic_load(&f->up_violations), 0);
    assert_int_equal(atomic_load(&f->up_fail), 3);
}

static void test_stream_download(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    char req[128];
    uint64_t pos = 0;

    /* 64 MiB with Content-Length; the server keeps at most ~1 MiB queued (drain callback). */
    snprintf(req, sizeof(req), "GET /down?n=%u HTTP/1.1\r\n\r\n", BIG_STREAM);
    client_sends(c, req);
    assert_int_equal(read_response(c, &r, 1), 0);
    assert_int_equal(r.status, 200);
    char want[64];
    snprintf(want, sizeof(want), "\r\nContent-Length: %u\r\n", BIG_STREAM);
    assert_true(has_header(&r, want));
    assert_true(has_header(&r, "\r\nX-Stream: 1\r\n"));
    assert_false(has_header(&r, "Transfer-Encoding"));
    sleep_ms(100); /* let the queue fill up */
    assert_int_equal(read_pattern(c, &pos, BIG_STREAM), 0);
    assert_true(wait_for(&f->dl_ended, 1, 2000));
    assert_true(atomic_load(&f->dl_drains) > 0);

    /* 64 MiB chunked, on the same connection. */
    int drains = atomic_load(&f->dl_drains);
    snprintf(req, sizeof(req), "GET /down?n=%u&chunked=1 HTTP/1.1\r\n\r\n", BIG_STREAM);
    client_sends(c, req);
    assert_int_equal(read_response(c, &r, 1), 0);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "\r\nTransfer-Encoding: chunked\r\n"));
    assert_false(has_header(&r, "Content-Length"));
    assert_int_equal(read_chunked_pattern(c), BIG_STREAM);
    assert_true(wait_for(&f->dl_ended, 2, 2000));
    assert_true(atomic_load(&f->dl_drains) > drains);
    assert_int_equal(c->len, 0);

    /* Still keep-alive. */
    client_sends(c, "GET /echo?x=after HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "first_x=after\n"));
    client_free(c);
    assert_int_equal(atomic_load(&f->dl_epipe), 0);
    assert_int_equal(atomic_load(&f->dl_other_err), 0);
}

/* A response broken off midway (http_respond_abort): chunked, the client never gets the last
 * chunk; with a Content-Length, fewer bytes; either way the connection closes. */
static void test_stream_download_abort(void **state)
{
    struct fixture *f = *state;
    struct resp r;
    char req[128];
    for (int chunked = 0; chunked < 2; chunked++) {
        struct client *c = client_new(f->port);
        uint64_t pos = 0;
        snprintf(req, sizeof(req), "GET /down?n=%u&abort=1%s HTTP/1.1\r\n\r\n", 1u << 20,
                 chunked ? "&chunked=1" : "");
        client_sends(c, req);
        assert_int_equal(read_response(c, &r, 1), 0);
        assert_int_equal(r.status, 200);
        if (chunked)
            assert_int_equal(read_chunked_pattern(c), -1);
        else
            assert_int_equal(read_pattern(c, &pos, 1u << 20), -1);
        client_free(c);
    }
}

static void test_stream_download_pipelined(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    uint64_t pos;

    /* Streamed responses (chunked, Content-Length, HEAD of both) between plain ones, all
     * pipelined in one go. */
    client_sends(c, "GET /down?n=1000&chunked=1 HTTP/1.1\r\n\r\n"
                    "GET /down?n=5000 HTTP/1.1\r\n\r\n"
                    "HEAD /down?n=777 HTTP/1.1\r\n\r\n"
                    "HEAD /down?n=777&chunked=1 HTTP/1.1\r\n\r\n"
                    "GET /down?n=0 HTTP/1.1\r\n\r\n"
                    "GET /down?n=0&chunked=1 HTTP/1.1\r\n\r\n"
                    "GET /echo?x=last HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 1), 0);
    assert_true(has_header(&r, "\r\nTransfer-Encoding: chunked\r\n"));
    assert_int_equal(read_chunked_pattern(c), 1000);

    assert_int_equal(read_response(c, &r, 1), 0);
    assert_true(has_header(&r, "\r\nContent-Length: 5000\r\n"));
    pos = 0;
    assert_int_equal(read_pattern(c, &pos, 5000), 0);

    assert_int_equal(read_response(c, &r, 1), 0);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "\r\nContent-Length: 777\r\n"));
    assert_int_equal(read_response(c, &r, 1), 0);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "\r\nTransfer-Encoding: chunked\r\n"));

    assert_int_equal(read_response(c, &r, 0), 0);
    assert_true(has_header(&r, "\r\nContent-Length: 0\r\n"));
    assert_int_equal(read_response(c, &r, 1), 0);
    assert_int_equal(read_chunked_pattern(c), 0);

    assert_int_equal(read_response(c, &r, 0), 0);
    assert_non_null(strstr(r.body, "first_x=last\n"));
    assert_int_equal(c->len, 0); /* nothing stray after the HEAD answers */
    client_free(c);
    assert_true(wait_for(&f->dl_ended, 6, 2000));

    /* Writing past the announced length is refused; writing less closes the connection. */
    c = client_new(f->port);
    client_sends(c, "GET /down?n=100&over=1 HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 1), 0);
    pos = 0;
    assert_int_equal(read_pattern(c, &pos, 100), 0);
    assert_true(wait_for(&f->dl_inval, 1, 2000));
    client_sends(c, "GET /down?n=100&short=1 HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 1), 0);
    assert_true(has_header(&r, "\r\nContent-Length: 100\r\n"));
    pos = 0;
    assert_int_equal(read_pattern(c, &pos, 50), 0);
    assert_true(client_sees_eof(c));
    client_free(c);

    /* HTTP/1.0 has no chunked coding: the body ends with the connection. */
    c = client_new(f->port);
    client_sends(c, "GET /down?n=3000&chunked=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_int_equal(read_response(c, &r, 1), 0);
    assert_false(has_header(&r, "Transfer-Encoding"));
    assert_true(has_header(&r, "\r\nConnection: close\r\n"));
    pos = 0;
    assert_int_equal(read_pattern(c, &pos, 3000), 0);
    assert_true(client_sees_eof(c));
    client_free(c);
    assert_int_equal(atomic_load(&f->dl_epipe), 0);
    assert_int_equal(atomic_load(&f->dl_other_err), 0);
}

static void test_stream_download_vanish(void **state)
{
    struct fixture *f = *state;
    struct client *c = client_new(f->port);
    struct resp r;
    char req[128];
    snprintf(req, sizeof(req), "GET /down?n=%u HTTP/1.1\r\n\r\n", BIG_STREAM);
    client_sends(c, req);
    assert_int_equal(read_response(c, &r, 1), 0);
    uint64_t pos = 0;
    assert_int_equal(read_pattern(c, &pos, 2u << 20), 0);
    client_free(c);
    /* The abort callback's write fails with -EPIPE and the handler still ends the request. */
    assert_true(wait_for(&f->dl_ended, 1, 3000));
    assert_int_equal(atomic_load(&f->dl_epipe), 1);
    assert_int_equal(atomic_load(&f->dl_aborts), 1);
    assert_int_equal(atomic_load(&f->dl_other_err), 0);

    /* The server carries on. */
    c = client_new(f->port);
    client_sends(c, "GET /echo HTTP/1.1\r\n\r\n");
    assert_int_equal(read_response(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    client_free(c);
}

static void test_stream_server_close(void **state)
{
    struct fixture *f = *state;
    /* An upload half-way through and a download nobody reads when the server closes: on_end
     * reports -ECONNABORTED, the download's write fails with -EPIPE, both still answer, and
     * the server finishes closing. */
    struct client *up = client_new(f->port);
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "PUT /up HTTP/1.1\r\nContent-Length: %u\r\n\r\n", BIG_STREAM);
    client_sends(up, hdr);
    uint64_t pos = 0, sum = FNV_INIT;
    send_pattern(up, &pos, 1u << 20, &sum);
    struct client *down = client_new(f->port);
    snprintf(hdr, sizeof(hdr), "GET /down?n=%u HTTP/1.1\r\n\r\n", BIG_STREAM);
    client_sends(down, hdr);
    sleep_ms(100); /* the download is now waiting for a drain */
    f->stop_sent = 1;
    uv_async_send(&f->stop);
    assert_true(wait_for(&f->done_called, 1, 3000));
    assert_int_equal(atomic_load(&f->up_fail), 1);
    assert_int_equal(atomic_load(&f->up_err), -ECONNABORTED);
    assert_int_equal(atomic_load(&f->dl_ended), 1);
    assert_int_equal(atomic_load(&f->dl_epipe), 1);
    assert_int_equal(atomic_load(&f->dl_aborts), 1);
    client_free(up);
    client_free(down);
}

static void test_listen_errors(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    http_server_t *srv;
    assert_int_equal(http_server_new(&srv, &loop, NULL, handler, NULL), 0);
    assert_int_equal(http_server_listen(srv, "nonsense"), -EINVAL);
    assert_int_equal(http_server_listen(srv, "127.0.0.1:99999"), -EINVAL);
    assert_int_equal(http_server_listen(srv, "127.0.0.1:"), -EINVAL);
    assert_int_equal(http_server_listen(srv, "300.1.1.1:80"), -EINVAL);
    assert_int_equal(http_server_listen(srv, "[::1:80"), -EINVAL);
    char longpath[200] = "unix:/tmp/";
    memset(longpath + 10, 'x', 150);
    assert_int_equal(http_server_listen(srv, longpath), -ENAMETOOLONG);
    /* libuv reports a missing directory as EACCES (for Windows parity); any error will do. */
    assert_true(http_server_listen(srv, "unix:/nonexistent-dir/x.sock") < 0);
    assert_int_equal(http_server_listen(srv, "[::1]:0"), 0);
    assert_true(http_server_port(srv) > 0);
    int done = 0;
    http_server_close(srv, on_done_flag, &done);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(done, 1);
    http_server_free(srv);
    assert_int_equal(uv_loop_close(&loop), 0);

    /* Closing a server that never listened still reports done from the loop. */
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(http_server_new(&srv, &loop, NULL, handler, NULL), 0);
    done = 0;
    http_server_close(srv, on_done_flag, &done);
    assert_int_equal(done, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(done, 1);
    http_server_free(srv);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_simple_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_byte_by_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_close_aborts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_responds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_and_204, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_responses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_repeated_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup_idle, teardown),
        cmocka_unit_test_setup_teardown(test_max_connections, setup_maxconn, teardown),
        cmocka_unit_test_setup_teardown(test_unix_socket, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_stream_upload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_reject, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_upload_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_download, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_download_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_download_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_download_vanish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_server_close, setup, teardown),
        cmocka_unit_test(test_listen_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
