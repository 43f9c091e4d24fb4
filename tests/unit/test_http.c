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

static void handler(http_req_t *req, void *ctx)
{
    struct fixture *f = ctx;
    const char *path = http_req_path(req);
    atomic_fetch_add(&f->handled, 1);
    if (strcmp(path, "/slow") == 0) {
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
        cmocka_unit_test(test_listen_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
