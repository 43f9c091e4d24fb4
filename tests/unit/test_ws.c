/*
 * Unit tests for net/ws: a real HTTP server on 127.0.0.1 (port 0) whose loop runs in a background
 * thread, driven by a minimal blocking WebSocket client (raw socket, masked frames) from the test
 * thread, where cmocka's asserts live. The loop thread only records what it saw in atomics.
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
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "net/http.h"
#include "net/ws.h"

#define SMALL_MAX 1024
#define FLOOD_CHUNK (64u << 10)
#define FLOOD_TOTAL (20u << 20)
#define BLAST_CHUNK (1u << 20)
#define BLAST_COUNT 20u
#define BIG (4u << 20)

struct fixture {
    uv_loop_t loop;
    http_server_t *srv;
    uv_async_t stop;
    pthread_t thread;
    int port;
    int stop_sent;
    atomic_int done_called;
    atomic_int handled;     /* HTTP requests seen by the handler */
    atomic_int accepted;    /* ws_accept() successes */
    atomic_int closes;      /* on_close calls */
    atomic_int last_code;   /* code of the last on_close */
    atomic_int close_epipe; /* on_close calls in which ws_send failed with -EPIPE */
    atomic_int messages;    /* on_message calls */
    atomic_int drains;      /* on_drain calls */
    atomic_int bad_text_rc; /* ws_send_text() of invalid UTF-8 */
    atomic_int flood_done;  /* the pausing producer sent everything */
    atomic_int blasts;      /* "blast" commands done */
    atomic_int conns;       /* http_server_connections() after the last ws_accept() */
    atomic_size_t buffered; /* ws_buffered() after the producer's last burst */
    atomic_size_t max_buffered;
};

/* ---------------------------------------------------------------------------------------------
 * Server side (loop thread)
 */

struct session {
    struct fixture *f;
    ws_conn_t *ws;
    char *chunk; /* producer data */
    size_t flood_sent;
    int flooding;
};

static void note_buffered(struct session *s)
{
    size_t b = ws_buffered(s->ws);
    atomic_store(&s->f->buffered, b);
    if (b > atomic_load(&s->f->max_buffered))
        atomic_store(&s->f->max_buffered, b);
}

/* Sends until the output is above the high watermark; on_drain continues. */
static void flood_more(struct session *s)
{
    while (s->flood_sent < FLOOD_TOTAL && ws_buffered(s->ws) <= WS_HIGH_WATERMARK) {
        memset(s->chunk, (int)((s->flood_sent / FLOOD_CHUNK) & 0xff), FLOOD_CHUNK);
        if (ws_send_binary(s->ws, s->chunk, FLOOD_CHUNK) < 0)
            return;
        s->flood_sent += FLOOD_CHUNK;
    }
    note_buffered(s);
    if (s->flood_sent >= FLOOD_TOTAL) {
        s->flooding = 0;
        atomic_store(&s->f->flood_done, 1);
    }
}

static void on_message(ws_conn_t *ws, int binary, const char *data, size_t len, void *arg)
{
    struct session *s = arg;
    struct fixture *f = s->f;
    atomic_fetch_add(&f->messages, 1);
    if (!binary && len == 8 && memcmp(data, "close-me", 8) == 0) {
        ws_close(ws, 4000, "bye");
        /* Already closing: both are refused or ignored. */
        if (ws_send_text(ws, "x", 1) != -EPIPE)
            atomic_store(&f->bad_text_rc, 1);
        ws_close(ws, 1000, "again");
    } else if (!binary && len == 15 && memcmp(data, "send-then-close", 15) == 0) {
        ws_send_text(ws, "last", 4);
        ws_close(ws, 1000, "done");
    } else if (!binary && len == 4 && memcmp(data, "peer", 4) == 0) {
        const char *p = ws_peer(ws);
        ws_send_text(ws, p, strlen(p));
    } else if (!binary && len == 7 && memcmp(data, "badtext", 7) == 0) {
        atomic_store(&f->bad_text_rc, ws_send_text(ws, "\xff", 1));
        ws_send_text(ws, "ok", 2);
    } else if (!binary && len == 5 && memcmp(data, "flood", 5) == 0) {
        s->chunk = malloc(FLOOD_CHUNK);
        s->flooding = 1;
        flood_more(s);
    } else if (!binary && len == 5 && memcmp(data, "blast", 5) == 0) {
        char *chunk = malloc(BLAST_CHUNK);
        for (unsigned i = 0; i < BLAST_COUNT; i++) {
            memset(chunk, (int)i, BLAST_CHUNK);
            ws_send_binary(ws, chunk, BLAST_CHUNK);
        }
        free(chunk);
        note_buffered(s);
        atomic_fetch_add(&f->blasts, 1);
    } else if (!binary && len == 3 && memcmp(data, "big", 3) == 0) {
        char *big = malloc(BIG);
        for (size_t i = 0; i < BIG; i++)
            big[i] = (char)(i * 7 + 3);
        ws_send_binary(ws, big, BIG);
        free(big);
    } else if (binary) {
        ws_send_binary(ws, data, len);
    } else {
        ws_send_text(ws, data, len);
    }
}

static void on_close(ws_conn_t *ws, int code, void *arg)
{
    struct session *s = arg;
    struct fixture *f = s->f;
    /* Both must be harmless here. */
    if (ws_send_text(ws, "late", 4) == -EPIPE)
        atomic_fetch_add(&f->close_epipe, 1);
    ws_close(ws, 1000, NULL);
    atomic_store(&f->last_code, code);
    atomic_fetch_add(&f->closes, 1);
    free(s->chunk);
    free(s);
}

static void on_drain(ws_conn_t *ws, void *arg)
{
    struct session *s = arg;
    atomic_fetch_add(&s->f->drains, 1);
    if (s->flooding)
        flood_more(s);
}

static const struct ws_callbacks callbacks = {on_message, on_close, on_drain};

static void handler(http_req_t *req, void *ctx)
{
    struct fixture *f = ctx;
    const char *path = http_req_path(req);
    atomic_fetch_add(&f->handled, 1);
    if (strncmp(path, "/ws", 3) != 0) {
        http_respond(req, 200, "text/plain", "plain", 5, NULL);
        return;
    }
    if (!ws_is_upgrade(req)) {
        http_respond_error(req, 400, "websocket_required", "this is a WebSocket endpoint");
        return;
    }
    struct session *s = calloc(1, sizeof(*s));
    s->f = f;
    size_t max = strcmp(path, "/ws-small") == 0 ? SMALL_MAX : 0;
    int fast = strcmp(path, "/ws-fast") == 0; /* `path` goes with the request */
    ws_conn_t *ws = ws_accept(req, &callbacks, s, max);
    if (!ws) {
        free(s);
        return;
    }
    s->ws = ws;
    atomic_fetch_add(&f->accepted, 1);
    atomic_store(&f->conns, (int)http_server_connections(f->srv));
    if (fast)
        ws_set_timeouts(ws, 100, 400, 300);
}

static void on_done(void *arg)
{
    struct fixture *f = arg;
    atomic_fetch_add(&f->done_called, 1);
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

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(http_server_new(&f->srv, &f->loop, NULL, handler, f), 0);
    assert_int_equal(http_server_listen(f->srv, "127.0.0.1:0"), 0);
    f->port = http_server_port(f->srv);
    assert_true(f->port > 0);
    assert_int_equal(uv_async_init(&f->loop, &f->stop, on_stop), 0);
    f->stop.data = f;
    assert_int_equal(pthread_create(&f->thread, NULL, loop_thread, f), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (!f->stop_sent)
        uv_async_send(&f->stop);
    pthread_join(f->thread, NULL);
    assert_int_equal(atomic_load(&f->done_called), 1);
    assert_int_equal(http_server_connections(f->srv), 0);
    /* Every accepted connection was reported closed exactly once (twice would be a double free
     * under ASan), and sending from on_close failed cleanly. */
    assert_int_equal(atomic_load(&f->closes), atomic_load(&f->accepted));
    assert_int_equal(atomic_load(&f->close_epipe), atomic_load(&f->closes));
    http_server_free(f->srv);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Client side (test thread)
 */

#define FIN 0x80u
#define OP_CONT 0x0u
#define OP_TEXT 0x1u
#define OP_BIN 0x2u
#define OP_CLOSE 0x8u
#define OP_PING 0x9u
#define OP_PONG 0xau

#define RFC_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define UPGRADE_HDRS                                                                               \
    "Host: test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"                      \
    "Sec-WebSocket-Key: " RFC_KEY "\r\nSec-WebSocket-Version: 13\r\n"

struct wsc {
    int fd;
    buf_t in;
};

struct frame {
    int fin;
    int op;
    buf_t data;
};

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

static int wait_above(atomic_size_t *v, size_t limit, int ms)
{
    for (int i = 0; i < ms / 5; i++) {
        if (atomic_load(v) > limit)
            return 1;
        sleep_ms(5);
    }
    return atomic_load(v) > limit;
}

static long elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

static struct wsc *wsc_connect(int port)
{
    struct wsc *c = calloc(1, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {5, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return c;
}

static void wsc_free(struct wsc *c)
{
    if (c->fd >= 0)
        close(c->fd);
    buf_free(&c->in);
    free(c);
}

static void send_all(struct wsc *c, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

static void send_str(struct wsc *c, const char *s)
{
    send_all(c, s, strlen(s));
}

/* Reads more input: bytes read, 0 on EOF (or reset), -1 on timeout/error. */
static ssize_t wsc_fill(struct wsc *c)
{
    assert_int_equal(buf_reserve(&c->in, 64 << 10), 0);
    ssize_t n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len - 1, 0);
    if (n > 0) {
        c->in.len += (size_t)n;
        return n;
    }
    if (n == 0 || errno == ECONNRESET)
        return 0;
    return -1;
}

/* Reads a response head; returns the status and copies the head (the body stays buffered). */
static int wsc_read_head(struct wsc *c, char *head, size_t cap)
{
    char *end;
    while (!(end = c->in.data ? memmem(c->in.data, c->in.len, "\r\n\r\n", 4) : NULL)) {
        if (wsc_fill(c) <= 0)
            return -1;
    }
    size_t hlen = (size_t)(end - c->in.data) + 4;
    assert_true(hlen < cap);
    memcpy(head, c->in.data, hlen);
    head[hlen] = '\0';
    buf_consume(&c->in, hlen);
    int status = 0;
    assert_int_equal(sscanf(head, "HTTP/1.1 %d ", &status), 1);
    return status;
}

/* Appends a client frame; `b0` is the first byte (FIN, RSV bits, opcode). */
static void frame_build(buf_t *out, unsigned b0, const void *data, size_t len, int masked)
{
    static const unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    unsigned char h[14];
    size_t hl = 0;
    unsigned mbit = masked ? 0x80 : 0;
    h[hl++] = (unsigned char)b0;
    if (len < 126) {
        h[hl++] = (unsigned char)(mbit | len);
    } else if (len < 65536) {
        h[hl++] = (unsigned char)(mbit | 126);
        h[hl++] = (unsigned char)(len >> 8);
        h[hl++] = (unsigned char)len;
    } else {
        h[hl++] = (unsigned char)(mbit | 127);
        for (int i = 7; i >= 0; i--)
            h[hl++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    if (masked) {
        memcpy(h + hl, key, 4);
        hl += 4;
    }
    assert_int_equal(buf_append(out, h, hl), 0);
    size_t off = out->len;
    assert_int_equal(buf_append(out, data, len), 0);
    if (masked) {
        for (size_t i = 0; i < len; i++)
            out->data[off + i] ^= (char)key[i % 4];
    }
}

static void wsc_send(struct wsc *c, unsigned b0, const void *data, size_t len)
{
    buf_t b = BUF_INIT;
    frame_build(&b, b0, data, len, 1);
    send_all(c, b.data, b.len);
    buf_free(&b);
}

static void wsc_send_close(struct wsc *c, int code, const char *reason)
{
    char p[128] = "";
    size_t n = 0;
    if (code) {
        p[0] = (char)(code >> 8);
        p[1] = (char)code;
        n = 2 + strlen(reason);
        memcpy(p + 2, reason, strlen(reason));
    }
    wsc_send(c, FIN | OP_CLOSE, p, n);
}

/* Reads one server frame into `fr`; returns its opcode, -1 on EOF/timeout. */
static int wsc_read_frame(struct wsc *c, struct frame *fr)
{
    for (;;) {
        const unsigned char *p = (const unsigned char *)c->in.data;
        if (c->in.len >= 2) {
            /* Server frames are never masked. */
            assert_int_equal(p[1] & 0x80, 0);
            uint64_t len = p[1] & 0x7f;
            size_t hl = len == 126 ? 4 : len == 127 ? 10 : 2;
            if (c->in.len >= hl) {
                if (len == 126) {
                    len = (uint64_t)p[2] << 8 | p[3];
                } else if (len == 127) {
                    len = 0;
                    for (int i = 0; i < 8; i++)
                        len = len << 8 | p[2 + i];
                }
                if (c->in.len >= hl + len) {
                    fr->fin = p[0] >> 7;
                    fr->op = p[0] & 0x0f;
                    buf_reset(&fr->data);
                    assert_int_equal(buf_append(&fr->data, p + hl, (size_t)len), 0);
                    buf_consume(&c->in, hl + (size_t)len);
                    return fr->op;
                }
            }
        }
        if (wsc_fill(c) <= 0)
            return -1;
    }
}

/* Opens a WebSocket on `path` (asserting the 101). */
static struct wsc *wsc_open(struct fixture *f, const char *path)
{
    struct wsc *c = wsc_connect(f->port);
    char req[512], head[2048];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\n" UPGRADE_HDRS "\r\n", path);
    send_str(c, req);
    assert_int_equal(wsc_read_head(c, head, sizeof(head)), 101);
    return c;
}

/* Reads frames up to a close frame; returns its code (0 if none), or -1 on EOF first. */
static int wsc_expect_close(struct wsc *c, char *reason, size_t cap)
{
    struct frame fr = {0};
    int op, code = -1;
    while ((op = wsc_read_frame(c, &fr)) >= 0) {
        if (op != (int)OP_CLOSE)
            continue;
        code = 0;
        if (fr.data.len >= 2) {
            const unsigned char *d = (const unsigned char *)fr.data.data;
            code = d[0] << 8 | d[1];
            if (reason)
                snprintf(reason, cap, "%.*s", (int)(fr.data.len - 2), fr.data.data + 2);
        } else if (reason) {
            reason[0] = '\0';
        }
        break;
    }
    buf_free(&fr.data);
    return code;
}

/* True if the server ends the connection without sending anything more. */
static int wsc_sees_eof(struct wsc *c)
{
    return c->in.len == 0 && wsc_fill(c) == 0;
}

/* The server ended its side (after the close handshake it half-closes and waits for ours):
 * close ours, as a client does. */
static void wsc_finish(struct wsc *c)
{
    assert_true(wsc_sees_eof(c));
    shutdown(c->fd, SHUT_WR);
}

/* Sends a message and checks that the same comes back. */
static void expect_echo(struct wsc *c, unsigned op, const void *data, size_t len)
{
    struct frame fr = {0};
    wsc_send(c, FIN | op, data, len);
    assert_int_equal(wsc_read_frame(c, &fr), (int)op);
    assert_int_equal(fr.fin, 1);
    assert_int_equal(fr.data.len, len);
    assert_memory_equal(fr.data.len ? fr.data.data : "", len ? data : "", len);
    buf_free(&fr.data);
}

/* The close handshake from the client side: our close, its echo, then the server's FIN. */
static void client_close(struct fixture *f, struct wsc *c, int code, const char *reason)
{
    int before = atomic_load(&f->closes);
    char got[128];
    wsc_send_close(c, code, reason);
    assert_int_equal(wsc_expect_close(c, got, sizeof(got)), code);
    if (code)
        assert_string_equal(got, reason);
    wsc_finish(c);
    assert_true(wait_for(&f->closes, before + 1, 2000));
    assert_int_equal(atomic_load(&f->last_code), code ? code : 1005);
}

/* ---------------------------------------------------------------------------------------------
 * Tests
 */

static void test_handshake(void **state)
{
    struct fixture *f = *state;
    struct wsc *c = wsc_connect(f->port);
    char head[2048];
    send_str(c, "GET /ws HTTP/1.1\r\n" UPGRADE_HDRS "\r\n");
    assert_int_equal(wsc_read_head(c, head, sizeof(head)), 101);
    assert_non_null(strstr(head, "HTTP/1.1 101 Switching Protocols\r\n"));
    assert_non_null(strcasestr(head, "\r\nUpgrade: websocket\r\n"));
    assert_non_null(strcasestr(head, "\r\nConnection: Upgrade\r\n"));
    assert_non_null(strstr(head, "\r\nSec-WebSocket-Accept: " RFC_ACCEPT "\r\n"));
    assert_null(strcasestr(head, "Content-Length"));
    assert_true(wait_for(&f->accepted, 1, 2000));
    assert_int_equal(atomic_load(&f->conns), 1); /* still counted by the HTTP server */

    /* Peer address, and invalid UTF-8 refused on the sending side. */
    struct frame fr = {0};
    wsc_send(c, FIN | OP_TEXT, "peer", 4);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_TEXT);
    assert_true(strncmp(fr.data.data, "127.0.0.1:", 10) == 0);
    wsc_send(c, FIN | OP_TEXT, "badtext", 7);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_TEXT);
    assert_string_equal(fr.data.data, "ok");
    assert_int_equal(atomic_load(&f->bad_text_rc), -EINVAL);
    buf_free(&fr.data);

    client_close(f, c, 1000, "");
    wsc_free(c);
}

static void test_echo(void **state)
{
    struct fixture *f = *state;
    struct wsc *c = wsc_open(f, "/ws");
    expect_echo(c, OP_TEXT, "hello", 5);
    expect_echo(c, OP_TEXT, "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15);
    expect_echo(c, OP_TEXT, "", 0);
    unsigned char bin[300];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (unsigned char)i;
    expect_echo(c, OP_BIN, bin, sizeof(bin));
    expect_echo(c, OP_BIN, bin, 0);
    /* 16-bit and 64-bit length forms. */
    char *mid = malloc(70000);
    memset(mid, 'm', 70000);
    expect_echo(c, OP_TEXT, mid, 200);
    expect_echo(c, OP_BIN, mid, 70000);
    free(mid);
    client_close(f, c, 1000, "bye");
    wsc_free(c);
}

static void test_fragmented(void **state)
{
    struct fixture *f = *state;
    struct wsc *c = wsc_open(f, "/ws");
    struct frame fr = {0};
    /* A ping between fragments is answered at once; the message arrives whole. The euro sign is
     * split across fragments, which is valid UTF-8 for the message. */
    wsc_send(c, OP_TEXT, "Hel", 3);
    wsc_send(c, FIN | OP_PING, "p1", 2);
    wsc_send(c, OP_CONT, "lo \xe2\x82", 5);
    wsc_send(c, FIN | OP_CONT, "\xac!", 2);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_PONG);
    assert_string_equal(fr.data.data, "p1");
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_TEXT);
    assert_int_equal(fr.fin, 1);
    assert_string_equal(fr.data.data, "Hello \xe2\x82\xac!");

    wsc_send(c, OP_BIN, "\x00\x01", 2);
    wsc_send(c, OP_CONT, "", 0);
    wsc_send(c, FIN | OP_CONT, "\x02", 1);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_BIN);
    assert_int_equal(fr.data.len, 3);
    assert_memory_equal(fr.data.data, "\x00\x01\x02", 3);
    buf_free(&fr.data);
    client_close(f, c, 1000, "");
    wsc_free(c);
}

static void test_ping_pong(void **state)
{
    struct fixture *f = *state;
    struct wsc *c = wsc_open(f, "/ws");
    struct frame fr = {0};
    wsc_send(c, FIN | OP_PING, "abc", 3);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_PONG);
    assert_string_equal(fr.data.data, "abc");
    wsc_send(c, FIN | OP_PING, "", 0);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_PONG);
    assert_int_equal(fr.data.len, 0);
    /* An unsolicited pong is ignored. */
    wsc_send(c, FIN | OP_PONG, "zz", 2);
    expect_echo(c, OP_TEXT, "after", 5);
    assert_int_equal(atomic_load(&f->messages), 1);
    buf_free(&fr.data);
    client_close(f, c, 0, NULL);
    wsc_free(c);
}

/* Sends `bytes` (raw, already framed) on a fresh connection to `path` and expects the server to
 * close with `code`, then finishes the close handshake. */
static void expect_failure(struct fixture *f, const char *path, const void *bytes, size_t len,
                           int code)
{
    struct wsc *c = wsc_open(f, path);
    int before = atomic_load(&f->closes);
    send_all(c, bytes, len);
    assert_int_equal(wsc_expect_close(c, NULL, 0), code);
    /* The server half-closes after its close frame; answering is still polite. */
    wsc_send_close(c, code, "");
    wsc_finish(c);
    assert_true(wait_for(&f->closes, before + 1, 2000));
    assert_int_equal(atomic_load(&f->last_code), code);
    wsc_free(c);
}

static void expect_frame_failure(struct fixture *f, unsigned b0, const void *data, size_t len,
                                 int masked, int code)
{
    buf_t b = BUF_INIT;
    frame_build(&b, b0, data, len, masked);
    expect_failure(f, "/ws", b.data, b.len, code);
    buf_free(&b);
}

static void test_too_large(void **state)
{
    struct fixture *f = *state;
    char *data = calloc(1, 2000);
    buf_t b = BUF_INIT;
    /* At the limit is fine. */
    struct wsc *c = wsc_open(f, "/ws-small");
    expect_echo(c, OP_BIN, data, SMALL_MAX);
    client_close(f, c, 1000, "");
    wsc_free(c);

    frame_build(&b, FIN | OP_BIN, data, SMALL_MAX + 1, 1);
    expect_failure(f, "/ws-small", b.data, b.len, 1009);
    /* The limit applies to the reassembled message. */
    buf_reset(&b);
    frame_build(&b, OP_TEXT, data, 600, 1);
    frame_build(&b, FIN | OP_CONT, data, 600, 1);
    expect_failure(f, "/ws-small", b.data, b.len, 1009);
    buf_free(&b);
    free(data);
    assert_int_equal(atomic_load(&f->messages), 1);
}

static void test_invalid_utf8(void **state)
{
    struct fixture *f = *state;
    expect_frame_failure(f, FIN | OP_TEXT, "ab\xff", 3, 1, 1007);
    expect_frame_failure(f, FIN | OP_TEXT, "\xed\xa0\x80", 3, 1, 1007); /* a surrogate */
    /* Cut in the middle of a character at the end of the message. */
    buf_t b = BUF_INIT;
    frame_build(&b, OP_TEXT, "ok", 2, 1);
    frame_build(&b, FIN | OP_CONT, "\xe2\x82", 2, 1);
    expect_failure(f, "/ws", b.data, b.len, 1007);
    /* The close reason must be UTF-8 too. */
    buf_reset(&b);
    frame_build(&b, FIN | OP_CLOSE, "\x03\xe8\xff", 3, 1);
    expect_failure(f, "/ws", b.data, b.len, 1007);
    buf_free(&b);
    assert_int_equal(atomic_load(&f->messages), 0);
}

static void test_protocol_errors(void **state)
{
    struct fixture *f = *state;
    char big[200];
    memset(big, 'x', sizeof(big));
    expect_frame_failure(f, FIN | OP_TEXT, "plain", 5, 0, 1002);     /* unmasked */
    expect_frame_failure(f, FIN | OP_BIN, "", 0, 0, 1002);           /* unmasked, empty */
    expect_frame_failure(f, FIN | 0x3, "x", 1, 1, 1002);             /* reserved opcode */
    expect_frame_failure(f, FIN | 0xb, "", 0, 1, 1002);              /* reserved control */
    expect_frame_failure(f, FIN | 0x40 | OP_TEXT, "x", 1, 1, 1002);  /* RSV1 */
    expect_frame_failure(f, FIN | OP_CONT, "x", 1, 1, 1002);         /* nothing to continue */
    expect_frame_failure(f, FIN | OP_PING, big, 126, 1, 1002);       /* control too long */
    expect_frame_failure(f, OP_PING, "x", 1, 1, 1002);               /* fragmented control */
    expect_frame_failure(f, FIN | OP_CLOSE, "\x03", 1, 1, 1002);     /* 1-byte close body */
    expect_frame_failure(f, FIN | OP_CLOSE, "\x03\xe7", 2, 1, 1002); /* close code 999 */
    expect_frame_failure(f, FIN | OP_CLOSE, "\x03\xee", 2, 1, 1002); /* close code 1006 */

    /* A new message while a fragmented one is open. */
    buf_t b = BUF_INIT;
    frame_build(&b, OP_TEXT, "a", 1, 1);
    frame_build(&b, FIN | OP_TEXT, "b", 1, 1);
    expect_failure(f, "/ws", b.data, b.len, 1002);
    /* A length not in its shortest form (5 in the 16-bit field). */
    static const unsigned char longform[] = {0x81, 0xfe, 0x00, 0x05, 0,   0,  0,
                                             0,    'h',  'e',  'l',  'l', 'o'};
    expect_failure(f, "/ws", longform, sizeof(longform), 1002);
    /* Messages before the bad frame are still delivered. */
    buf_reset(&b);
    frame_build(&b, FIN | OP_TEXT, "first", 5, 1);
    frame_build(&b, FIN | OP_PING, big, 126, 1);
    struct wsc *c = wsc_open(f, "/ws");
    send_all(c, b.data, b.len);
    struct frame fr = {0};
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_TEXT);
    assert_string_equal(fr.data.data, "first");
    assert_int_equal(wsc_expect_close(c, NULL, 0), 1002);
    assert_true(wsc_sees_eof(c)); /* no close answer from us: the server still ends it */
    wsc_free(c);
    buf_free(&fr.data);
    buf_free(&b);
    assert_int_equal(atomic_load(&f->messages), 1);
}

static void test_client_close(void **state)
{
    struct fixture *f = *state;
    struct wsc *c = wsc_open(f, "/ws");
    expect_echo(c, OP_TEXT, "x", 1);
    client_close(f, c, 4001, "done");
    wsc_free(c);

    /* No code: reported as 1005, echoed empty. */
    c = wsc_open(f, "/ws");
    client_close(f, c, 0, NULL);
    wsc_free(c);

    /* Close frame and FIN at once: the echo may not make it, the code still counts. */
    c = wsc_open(f, "/ws");
    wsc_send_close(c, 1001, "leaving");
    shutdown(c->fd, SHUT_WR);
    assert_true(wait_for(&f->closes, 3, 2000));
    assert_int_equal(atomic_load(&f->last_code), 1001);
    wsc_free(c);
}

static void test_client_vanishes(void **state)
{
    struct fixture *f = *state;
    struct wsc *c = wsc_open(f, "/ws");
    expect_echo(c, OP_TEXT, "x", 1);
    wsc_free(c);
    assert_true(wait_for(&f->closes, 1, 2000));
    assert_int_equal(atomic_load(&f->last_code), 1006);

    /* Gone right after the handshake request, before reading the 101. */
    c = wsc_connect(f->port);
    send_str(c, "GET /ws HTTP/1.1\r\n" UPGRADE_HDRS "\r\n");
    assert_true(wait_for(&f->accepted, 2, 2000));
    wsc_free(c);
    assert_true(wait_for(&f->closes, 2, 2000));
    assert_int_equal(atomic_load(&f->last_code), 1006);

    /* Gone in the middle of a message, with lots of output pending. */
    c = wsc_open(f, "/ws");
    wsc_send(c, FIN | OP_TEXT, "blast", 5);
    buf_t b = BUF_INIT;
    frame_build(&b, FIN | OP_BIN, "0123456789", 10, 1);
    send_all(c, b.data, 5);
    buf_free(&b);
    sleep_ms(50);
    wsc_free(c);
    assert_true(wait_for(&f->closes, 3, 2000));
    assert_int_equal(atomic_load(&f->last_code), 1006);

    /* Gone after the server started closing (it never gets the answer). */
    c = wsc_open(f, "/ws");
    wsc_send(c, FIN | OP_TEXT, "close-me", 8);
    assert_int_equal(wsc_expect_close(c, NULL, 0), 4000);
    wsc_free(c);
    assert_true(wait_for(&f->closes, 4, 2000));
    assert_int_equal(atomic_load(&f->last_code), 4000);
    assert_int_equal(atomic_load(&f->bad_text_rc), 0);
}

static void test_server_close(void **state)
{
    struct fixture *f = *state;
    char reason[128];
    struct wsc *c = wsc_open(f, "/ws");
    wsc_send(c, FIN | OP_TEXT, "close-me", 8);
    assert_int_equal(wsc_expect_close(c, reason, sizeof(reason)), 4000);
    assert_string_equal(reason, "bye");
    /* Nothing is delivered after ws_close(). */
    wsc_send(c, FIN | OP_TEXT, "ignored", 7);
    wsc_send_close(c, 4000, "");
    wsc_finish(c);
    assert_true(wait_for(&f->closes, 1, 2000));
    assert_int_equal(atomic_load(&f->last_code), 4000);
    assert_int_equal(atomic_load(&f->messages), 1);
    wsc_free(c);

    /* Queued output goes out before the close frame. */
    c = wsc_open(f, "/ws");
    struct frame fr = {0};
    wsc_send(c, FIN | OP_TEXT, "send-then-close", 15);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_TEXT);
    assert_string_equal(fr.data.data, "last");
    assert_int_equal(wsc_expect_close(c, reason, sizeof(reason)), 1000);
    assert_string_equal(reason, "done");
    wsc_send_close(c, 1000, "");
    wsc_finish(c);
    assert_true(wait_for(&f->closes, 2, 2000));
    wsc_free(c);
    buf_free(&fr.data);

    /* A peer that never answers the close is dropped after the close timeout. */
    c = wsc_open(f, "/ws-fast");
    wsc_send(c, FIN | OP_TEXT, "close-me", 8);
    assert_int_equal(wsc_expect_close(c, NULL, 0), 4000);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_true(wsc_sees_eof(c));
    long ms = elapsed_ms(&t0);
    assert_true(ms >= 150 && ms < 2000);
    assert_true(wait_for(&f->closes, 3, 2000));
    assert_int_equal(atomic_load(&f->last_code), 4000);
    wsc_free(c);
}

static void test_keepalive(void **state)
{
    struct fixture *f = *state;
    struct wsc *c = wsc_open(f, "/ws-fast"); /* ping after 100 ms, drop after 400 ms */
    struct frame fr = {0};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(wsc_read_frame(c, &fr), (int)OP_PING);
        wsc_send(c, FIN | OP_PONG, fr.data.data, fr.data.len);
    }
    /* Answered pings keep it alive well past the idle limit. */
    assert_true(elapsed_ms(&t0) >= 250);
    expect_echo(c, OP_TEXT, "alive", 5);
    /* Now silent: pinged again, then dropped without a close frame. */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int pings = 0, op;
    while ((op = wsc_read_frame(c, &fr)) == (int)OP_PING)
        pings++;
    assert_int_equal(op, -1);
    assert_true(pings >= 1);
    long ms = elapsed_ms(&t0);
    assert_true(ms >= 300 && ms < 2000);
    assert_true(wait_for(&f->closes, 1, 2000));
    assert_int_equal(atomic_load(&f->last_code), 1006);
    buf_free(&fr.data);
    wsc_free(c);
}

static void test_bad_handshakes(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *req;
        int status;
    } cases[] = {
        /* Not an upgrade at all: the route's ws_is_upgrade() check, and the connection stays. */
        {"GET /ws HTTP/1.1\r\nHost: t\r\n\r\n", 400},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n",
         400}, /* no key */
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " RFC_KEY "\r\nSec-WebSocket-Version: 12\r\n\r\n",
         426},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " RFC_KEY "\r\n\r\n",
         426}, /* no version */
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400}, /* 5-byte key */
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ!!\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400}, /* not base64 */
        {"POST /ws HTTP/1.1\r\n" UPGRADE_HDRS "Content-Length: 0\r\n\r\n", 400},
        {"GET /ws HTTP/1.0\r\n" UPGRADE_HDRS "\r\n", 400},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 400},
    };
    int handled = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct wsc *c = wsc_connect(f->port);
        char head[2048];
        send_str(c, cases[i].req);
        /* Anything pipelined after an upgrade request is not served. */
        send_str(c, "GET /plain HTTP/1.1\r\n\r\n");
        int status = wsc_read_head(c, head, sizeof(head));
        if (status != cases[i].status)
            fail_msg("case %zu: status %d, want %d", i, status, cases[i].status);
        handled++;
        if (status == 426)
            assert_non_null(strstr(head, "\r\nSec-WebSocket-Version: 13\r\n"));
        /* A JSON error body. */
        char *p = strcasestr(head, "\r\nContent-Length:");
        assert_non_null(p);
        size_t cl = strtoul(p + 17, NULL, 10);
        while (c->in.len < cl)
            assert_true(wsc_fill(c) > 0);
        assert_non_null(memmem(c->in.data, c->in.len, "{\"error\":", 9));
        buf_consume(&c->in, cl);
        if (i == 0) {
            /* Not an upgrade request: the connection goes on. */
            assert_null(strcasestr(head, "Connection: close"));
            assert_int_equal(wsc_read_head(c, head, sizeof(head)), 200);
            handled++;
        } else {
            assert_non_null(strcasestr(head, "\r\nConnection: close\r\n"));
            assert_true(wsc_sees_eof(c));
        }
        wsc_free(c);
        assert_int_equal(atomic_load(&f->handled), handled);
    }
    assert_int_equal(atomic_load(&f->accepted), 0);
}

static void test_upgrade_answered_normally(void **state)
{
    struct fixture *f = *state;
    /* A route that does not take the upgrade answers normally; the connection then ends. */
    struct wsc *c = wsc_connect(f->port);
    char head[2048];
    send_str(c, "GET /plain HTTP/1.1\r\n" UPGRADE_HDRS "\r\nGET /plain HTTP/1.1\r\n\r\n");
    assert_int_equal(wsc_read_head(c, head, sizeof(head)), 200);
    assert_non_null(strcasestr(head, "\r\nConnection: close\r\n"));
    while (c->in.len < 5)
        assert_true(wsc_fill(c) > 0);
    buf_consume(&c->in, 5);
    assert_true(wsc_sees_eof(c));
    assert_int_equal(atomic_load(&f->handled), 1);
    wsc_free(c);
}

static void test_first_frame_with_handshake(void **state)
{
    struct fixture *f = *state;
    struct wsc *c = wsc_connect(f->port);
    buf_t b = BUF_INIT;
    buf_append_str(&b, "GET /ws HTTP/1.1\r\n" UPGRADE_HDRS "\r\n");
    frame_build(&b, FIN | OP_TEXT, "early", 5, 1);
    frame_build(&b, FIN | OP_PING, "p", 1, 1);
    frame_build(&b, OP_BIN, "ab", 2, 1); /* and the start of a fragmented message */
    send_all(c, b.data, b.len);
    char head[2048];
    struct frame fr = {0};
    assert_int_equal(wsc_read_head(c, head, sizeof(head)), 101);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_TEXT);
    assert_string_equal(fr.data.data, "early");
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_PONG);
    assert_string_equal(fr.data.data, "p");
    wsc_send(c, FIN | OP_CONT, "c", 1);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_BIN);
    assert_int_equal(fr.data.len, 3);
    assert_memory_equal(fr.data.data, "abc", 3);

    /* Everything at once, close included. */
    buf_free(&fr.data);
    client_close(f, c, 1000, "");
    wsc_free(c);
    c = wsc_connect(f->port);
    buf_reset(&b);
    buf_append_str(&b, "GET /ws HTTP/1.1\r\n" UPGRADE_HDRS "\r\n");
    frame_build(&b, FIN | OP_TEXT, "one", 3, 1);
    frame_build(&b, FIN | OP_CLOSE, "\x0f\xa0", 2, 1); /* 4000 */
    send_all(c, b.data, b.len);
    assert_int_equal(wsc_read_head(c, head, sizeof(head)), 101);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_TEXT);
    assert_string_equal(fr.data.data, "one");
    assert_int_equal(wsc_expect_close(c, NULL, 0), 4000);
    wsc_finish(c);
    assert_true(wait_for(&f->closes, 2, 2000));
    assert_int_equal(atomic_load(&f->last_code), 4000);
    buf_free(&fr.data);
    buf_free(&b);
    wsc_free(c);
}

static void test_large_messages(void **state)
{
    struct fixture *f = *state;
    struct wsc *c = wsc_open(f, "/ws");
    char *big = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        big[i] = (char)(i * 31 + 7);
    expect_echo(c, OP_BIN, big, BIG);
    /* Server to client only. */
    struct frame fr = {0};
    wsc_send(c, FIN | OP_TEXT, "big", 3);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_BIN);
    assert_int_equal(fr.data.len, BIG);
    for (size_t i = 0; i < BIG; i++) {
        if (fr.data.data[i] != (char)(i * 7 + 3))
            fail_msg("byte %zu differs", i);
    }
    /* Text of the same size, sent in 3 fragments. */
    memset(big, 't', BIG);
    wsc_send(c, OP_TEXT, big, BIG / 2);
    wsc_send(c, OP_CONT, big, BIG / 4);
    wsc_send(c, FIN | OP_CONT, big, BIG / 4);
    assert_int_equal(wsc_read_frame(c, &fr), (int)OP_TEXT);
    assert_int_equal(fr.data.len, BIG);
    assert_memory_equal(fr.data.data, big, BIG);
    buf_free(&fr.data);
    free(big);
    client_close(f, c, 1000, "");
    wsc_free(c);
}

/* Reads `count` binary messages of `size` bytes, message i filled with byte (i & 0xff). */
static void read_pattern(struct wsc *c, unsigned count, size_t size)
{
    struct frame fr = {0};
    for (unsigned i = 0; i < count; i++) {
        assert_int_equal(wsc_read_frame(c, &fr), (int)OP_BIN);
        assert_int_equal(fr.data.len, size);
        for (size_t k = 0; k < size; k++) {
            if ((unsigned char)fr.data.data[k] != (i & 0xff))
                fail_msg("message %u byte %zu differs", i, k);
        }
    }
    buf_free(&fr.data);
}

static void test_backpressure(void **state)
{
    struct fixture *f = *state;
    /* A producer that pauses above the high watermark and resumes on on_drain: with a client
     * that does not read, it gets stuck (20 MiB is more than the socket buffers take). */
    struct wsc *c = wsc_open(f, "/ws");
    wsc_send(c, FIN | OP_TEXT, "flood", 5);
    assert_true(wait_above(&f->buffered, WS_HIGH_WATERMARK, 5000));
    sleep_ms(300);
    assert_int_equal(atomic_load(&f->flood_done), 0);
    assert_true(atomic_load(&f->buffered) > WS_HIGH_WATERMARK);
    int drains = atomic_load(&f->drains);
    read_pattern(c, FLOOD_TOTAL / FLOOD_CHUNK, FLOOD_CHUNK);
    assert_true(wait_for(&f->flood_done, 1, 2000));
    assert_true(atomic_load(&f->drains) > drains);
    client_close(f, c, 1000, "");
    wsc_free(c);

    /* 20 MiB queued at once: far above the high watermark, drained only once the client
     * reads. */
    atomic_store(&f->drains, 0);
    c = wsc_open(f, "/ws");
    wsc_send(c, FIN | OP_TEXT, "blast", 5);
    assert_true(wait_for(&f->blasts, 1, 5000));
    assert_true(atomic_load(&f->buffered) > 10 * WS_HIGH_WATERMARK);
    sleep_ms(200); /* the socket takes what it can; no drain without the client reading */
    assert_int_equal(atomic_load(&f->drains), 0);
    read_pattern(c, BLAST_COUNT, BLAST_CHUNK);
    assert_true(wait_for(&f->drains, 1, 2000));
    assert_int_equal(atomic_load(&f->drains), 1);
    client_close(f, c, 1000, "");
    wsc_free(c);
}

static void test_server_shutdown(void **state)
{
    struct fixture *f = *state;
    /* One client answers the 1001 close, the other does not and is dropped after the close
     * timeout; the server's `done` waits for both. */
    struct wsc *a = wsc_open(f, "/ws");
    struct wsc *b = wsc_open(f, "/ws-fast");
    expect_echo(a, OP_TEXT, "a", 1);
    expect_echo(b, OP_TEXT, "b", 1);
    assert_int_equal(atomic_load(&f->conns), 2);
    f->stop_sent = 1;
    uv_async_send(&f->stop);
    char reason[128];
    assert_int_equal(wsc_expect_close(a, reason, sizeof(reason)), 1001);
    assert_string_equal(reason, "going away");
    assert_int_equal(wsc_expect_close(b, NULL, 0), 1001);
    wsc_send_close(a, 1001, "");
    wsc_finish(a);
    assert_true(wsc_sees_eof(b)); /* dropped after the close timeout */
    assert_true(wait_for(&f->done_called, 1, 3000));
    assert_int_equal(atomic_load(&f->closes), 2);
    assert_int_equal(atomic_load(&f->last_code), 1001);
    wsc_free(a);
    wsc_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_handshake, setup, teardown),
        cmocka_unit_test_setup_teardown(test_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fragmented, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ping_pong, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_protocol_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_vanishes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_handshakes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_answered_normally, setup, teardown),
        cmocka_unit_test_setup_teardown(test_first_frame_with_handshake, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_shutdown, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
