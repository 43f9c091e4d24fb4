/*
 * wsclient: the CLI's WebSocket client against a real peer. The handshake goes through a server
 * thread on a unix socket that checks the upgrade request and answers it (right or wrong); frame
 * handling runs on one end of a socketpair while the test plays the server on the other, byte
 * for byte: lengths of every size, fragments, pings, close handshakes, protocol violations,
 * oversized and truncated frames, timeouts and flow control.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cli/client.h"
#include "cli/wsclient.h"
#include "core/util.h"

#define PEER_TIMEOUT_MS 20000

/* ---------------------------------------------------------------------------------------------
 * The server's side of a socketpair
 */

struct pair {
    struct wsc w;
    int peer; /* the server's end (blocking) */
};

static void pair_open(struct pair *p)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
    wsc_init(&p->w);
    p->w.fd = sv[0];
    p->peer = sv[1];
}

static void pair_close(struct pair *p)
{
    wsc_free(&p->w);
    if (p->peer >= 0)
        close(p->peer);
    p->peer = -1;
}

/* Returns 0, or -1 if the client's end went away. */
static int send_all(int fd, const void *data, size_t n)
{
    const char *c = data;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static void peer_write(struct pair *p, const void *data, size_t n)
{
    assert_int_equal(send_all(p->peer, data, n), 0);
}

/* A server frame (unmasked) with the given first byte: header, then payload. */
static int send_frame(int fd, unsigned char b0, const void *data, size_t n)
{
    unsigned char h[10];
    size_t hl = 2;
    h[0] = b0;
    if (n < 126) {
        h[1] = (unsigned char)n;
    } else if (n <= 0xffff) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    return send_all(fd, h, hl) < 0 || (n && send_all(fd, data, n) < 0) ? -1 : 0;
}

static void peer_frame(struct pair *p, unsigned char b0, const void *data, size_t n)
{
    assert_int_equal(send_frame(p->peer, b0, data, n), 0);
}

/* A frame too big for the socket's buffer is written by a thread while the client reads. */
struct big_frame {
    pthread_t thread;
    int fd;
    unsigned char b0;
    const void *data;
    size_t len;
};

static void *big_frame_main(void *arg)
{
    struct big_frame *f = arg;
    return (void *)(intptr_t)send_frame(f->fd, f->b0, f->data, f->len);
}

static void big_frame_start(struct big_frame *f, struct pair *p, unsigned char b0, const void *data,
                            size_t len)
{
    *f = (struct big_frame){.fd = p->peer, .b0 = b0, .data = data, .len = len};
    assert_int_equal(pthread_create(&f->thread, NULL, big_frame_main, f), 0);
}

static void big_frame_end(struct big_frame *f)
{
    void *r;
    assert_int_equal(pthread_join(f->thread, &r), 0);
    assert_int_equal((intptr_t)r, 0);
}

static void peer_read_exact(struct pair *p, void *dst, size_t n)
{
    char *d = dst;
    while (n > 0) {
        struct pollfd pf = {.fd = p->peer, .events = POLLIN};
        assert_int_equal(poll(&pf, 1, PEER_TIMEOUT_MS), 1);
        ssize_t r = recv(p->peer, d, n, 0);
        assert_true(r > 0);
        d += r;
        n -= (size_t)r;
    }
}

/* Reads one frame the client sent: checks it is masked and final, unmasks it. */
static int peer_read_frame(struct pair *p, buf_t *payload)
{
    unsigned char h[14];
    peer_read_exact(p, h, 2);
    assert_true(h[0] & 0x80);         /* FIN: the client never fragments */
    assert_int_equal(h[0] & 0x70, 0); /* no reserved bits */
    assert_true(h[1] & 0x80);         /* masked, as a client must */
    uint64_t n = h[1] & 0x7f;
    if (n == 126) {
        peer_read_exact(p, h + 2, 2);
        n = (uint64_t)h[2] << 8 | h[3];
        assert_true(n >= 126); /* the shortest form */
    } else if (n == 127) {
        peer_read_exact(p, h + 2, 8);
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | h[2 + i];
        assert_true(n > 0xffff);
    }
    unsigned char mask[4];
    peer_read_exact(p, mask, 4);
    buf_reset(payload);
    assert_int_equal(buf_reserve(payload, (size_t)n), 0);
    peer_read_exact(p, payload->data, (size_t)n);
    for (size_t i = 0; i < n; i++)
        payload->data[i] ^= (char)mask[i & 3];
    payload->len = (size_t)n;
    payload->data[n] = '\0';
    return h[0] & 0x0f;
}

/* The client's answer to a violation: a close frame with `code`, then the connection is gone. */
static void expect_close_code(struct pair *p, int code)
{
    buf_t b = BUF_INIT;
    assert_int_equal(peer_read_frame(p, &b), WSC_CLOSE);
    assert_true(b.len >= 2);
    assert_int_equal(((unsigned char)b.data[0] << 8) | (unsigned char)b.data[1], code);
    buf_free(&b);
    char c;
    assert_int_equal(recv(p->peer, &c, 1, 0), 0);
}

/* ---------------------------------------------------------------------------------------------
 * Messages
 */

static void test_messages_of_every_length(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 300000};
    struct pair p;
    struct wsc_msg m;
    pair_open(&p);
    wsc_msg_init(&m);
    char *data = malloc(300000);
    assert_non_null(data);
    for (size_t i = 0; i < 300000; i++)
        data[i] = (char)(i * 7);
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        int op = i % 2 ? WSC_BINARY : WSC_TEXT;
        struct big_frame f;
        big_frame_start(&f, &p, (unsigned char)(0x80 | op), data, lens[i]);
        assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), 0);
        big_frame_end(&f);
        assert_int_equal(m.opcode, op);
        assert_int_equal(m.data.len, lens[i]);
        if (lens[i])
            assert_memory_equal(m.data.data, data, lens[i]);
    }
    /* Several messages in one read: each comes out of its own call, then nothing is left. */
    peer_frame(&p, 0x81, "one", 3);
    peer_frame(&p, 0x81, "two", 3);
    peer_frame(&p, 0x82, "3", 1);
    assert_int_equal(wsc_recv(&p.w, &m, 0), 0);
    assert_string_equal(m.data.data, "one");
    assert_int_equal(wsc_recv(&p.w, &m, 0), 0);
    assert_string_equal(m.data.data, "two");
    assert_int_equal(wsc_recv(&p.w, &m, 0), 0);
    assert_int_equal(m.opcode, WSC_BINARY);
    assert_int_equal(wsc_recv(&p.w, &m, 0), -ETIMEDOUT);
    free(data);
    wsc_msg_free(&m);
    pair_close(&p);
}

static void test_partial_frames_wait(void **state)
{
    (void)state;
    struct pair p;
    struct wsc_msg m;
    pair_open(&p);
    wsc_msg_init(&m);
    /* one byte at a time: nothing until the last one */
    static const unsigned char frame[] = {0x81, 126, 0x00, 0x80};
    char payload[128];
    memset(payload, 'p', sizeof(payload));
    for (size_t i = 0; i < sizeof(frame); i++) {
        peer_write(&p, frame + i, 1);
        assert_int_equal(wsc_recv(&p.w, &m, 0), -ETIMEDOUT);
    }
    for (size_t i = 0; i < sizeof(payload) - 1; i++) {
        peer_write(&p, payload + i, 1);
        assert_int_equal(wsc_recv(&p.w, &m, 0), -ETIMEDOUT);
    }
    /* a timed wait gives up at its deadline too */
    assert_int_equal(wsc_recv(&p.w, &m, 50), -ETIMEDOUT);
    peer_write(&p, payload, 1);
    assert_int_equal(wsc_recv(&p.w, &m, 0), 0);
    assert_int_equal(m.data.len, 128);
    assert_int_equal(m.data.data[127], 'p');
    wsc_msg_free(&m);
    pair_close(&p);
}

static void test_fragments_and_control_frames(void **state)
{
    (void)state;
    struct pair p;
    struct wsc_msg m;
    buf_t b = BUF_INIT;
    pair_open(&p);
    wsc_msg_init(&m);
    peer_frame(&p, 0x01, "frag", 4);           /* text, not final */
    peer_frame(&p, 0x89, "are you there", 13); /* a ping in between */
    peer_frame(&p, 0x00, "men", 3);            /* continuation */
    peer_frame(&p, 0x8A, "ignored", 7);        /* an unsolicited pong */
    peer_frame(&p, 0x80, "ted", 3);            /* final continuation */
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), 0);
    assert_int_equal(m.opcode, WSC_TEXT);
    assert_string_equal(m.data.data, "fragmented");
    /* the ping was answered with a pong carrying its payload */
    assert_int_equal(peer_read_frame(&p, &b), WSC_PONG);
    assert_string_equal(b.data, "are you there");
    /* a fragmented binary message of empty pieces */
    peer_frame(&p, 0x02, "", 0);
    peer_frame(&p, 0x80, "", 0);
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), 0);
    assert_int_equal(m.opcode, WSC_BINARY);
    assert_int_equal(m.data.len, 0);
    buf_free(&b);
    wsc_msg_free(&m);
    pair_close(&p);
}

/* Flushes what wsc_send() could not send at once while the test reads it on the other end. */
static void *flush_main(void *arg)
{
    return (void *)(intptr_t)wsc_flush(arg, PEER_TIMEOUT_MS);
}

static void test_send_frames(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 5, 125, 126, 65535, 65536, 1 << 20};
    struct pair p;
    buf_t b = BUF_INIT;
    pair_open(&p);
    char *data = malloc(1 << 20);
    assert_non_null(data);
    for (size_t i = 0; i < 1 << 20; i++)
        data[i] = (char)(i * 13 + 1);
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        int op = i % 2 ? WSC_BINARY : WSC_TEXT;
        pthread_t t;
        void *flushed;
        assert_int_equal(wsc_send(&p.w, op, data, lens[i]), 0);
        /* 1 MiB does not fit in the socket: the rest stays queued until flushed */
        if (lens[i] == 1 << 20)
            assert_true(wsc_pending_out(&p.w) > 0);
        assert_int_equal(pthread_create(&t, NULL, flush_main, &p.w), 0);
        assert_int_equal(peer_read_frame(&p, &b), op);
        assert_int_equal(pthread_join(t, &flushed), 0);
        assert_int_equal((intptr_t)flushed, 0);
        assert_int_equal(wsc_pending_out(&p.w), 0);
        assert_int_equal(b.len, lens[i]);
        if (lens[i])
            assert_memory_equal(b.data, data, lens[i]);
    }
    assert_int_equal(wsc_send(&p.w, WSC_PING, "hi", 2), 0);
    assert_int_equal(peer_read_frame(&p, &b), WSC_PING);
    assert_string_equal(b.data, "hi");
    assert_int_equal(wsc_send(&p.w, WSC_PONG, data, 125), 0);
    assert_int_equal(peer_read_frame(&p, &b), WSC_PONG);
    assert_int_equal(b.len, 125);
    /* control frames are short, close goes through wsc_close(), opcodes are checked */
    assert_int_equal(wsc_send(&p.w, WSC_PING, data, 126), -EINVAL);
    assert_int_equal(wsc_send(&p.w, WSC_CLOSE, NULL, 0), -EINVAL);
    assert_int_equal(wsc_send(&p.w, WSC_CONT, "x", 1), -EINVAL);
    assert_int_equal(wsc_send(&p.w, 3, "x", 1), -EINVAL);
    assert_int_equal(wsc_pending_out(&p.w), 0);
    free(data);
    buf_free(&b);
    pair_close(&p);
}

static void test_flush_timeout(void **state)
{
    (void)state;
    struct pair p;
    buf_t b = BUF_INIT;
    pair_open(&p);
    size_t n = 4 << 20;
    char *data = calloc(1, n);
    assert_non_null(data);
    /* The server reads nothing: the frame waits in the queue, and a flush gives up in time. */
    assert_int_equal(wsc_send(&p.w, WSC_BINARY, data, n), 0);
    size_t pending = wsc_pending_out(&p.w);
    assert_true(pending > 0);
    assert_int_equal(wsc_flush(&p.w, 0), -ETIMEDOUT);
    assert_int_equal(wsc_flush(&p.w, 50), -ETIMEDOUT);
    assert_int_equal(wsc_pending_out(&p.w), pending);
    /* Once the server reads, everything goes out. */
    pthread_t t;
    void *flushed;
    assert_int_equal(pthread_create(&t, NULL, flush_main, &p.w), 0);
    assert_int_equal(peer_read_frame(&p, &b), WSC_BINARY);
    assert_int_equal(pthread_join(t, &flushed), 0);
    assert_int_equal((intptr_t)flushed, 0);
    assert_int_equal(b.len, n);
    free(data);
    buf_free(&b);
    pair_close(&p);
}

/* ---------------------------------------------------------------------------------------------
 * Closing
 */

static void test_close_from_the_server(void **state)
{
    (void)state;
    struct pair p;
    struct wsc_msg m;
    buf_t b = BUF_INIT;
    pair_open(&p);
    wsc_msg_init(&m);
    peer_frame(&p, 0x88,
               "\x03\xe8"
               "bye now",
               9);
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), 0);
    assert_int_equal(m.opcode, WSC_CLOSE);
    assert_int_equal(m.close_code, 1000);
    assert_string_equal(m.data.data, "bye now");
    /* answered with the same code */
    assert_int_equal(peer_read_frame(&p, &b), WSC_CLOSE);
    assert_int_equal(b.len, 2);
    assert_memory_equal(b.data, "\x03\xe8", 2);
    /* after that: nothing more in either direction */
    assert_int_equal(wsc_recv(&p.w, &m, 0), -EPIPE);
    assert_int_equal(wsc_send(&p.w, WSC_TEXT, "x", 1), -EPIPE);
    assert_int_equal(wsc_close(&p.w, 1000, NULL, 100), 0);
    assert_int_equal(p.w.fd, -1);
    pair_close(&p);

    /* a close without a code: 1005 to the caller, an empty close back */
    pair_open(&p);
    peer_frame(&p, 0x88, "", 0);
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), 0);
    assert_int_equal(m.opcode, WSC_CLOSE);
    assert_int_equal(m.close_code, 1005);
    assert_int_equal(m.data.len, 0);
    assert_int_equal(peer_read_frame(&p, &b), WSC_CLOSE);
    assert_int_equal(b.len, 0);
    pair_close(&p);
    buf_free(&b);
    wsc_msg_free(&m);
}

static void test_close_handshake(void **state)
{
    (void)state;
    struct pair p;
    buf_t b = BUF_INIT;
    for (int answer = 0; answer < 2; answer++) {
        pair_open(&p);
        /* What the server sends meanwhile: a message still in flight (discarded by wsc_close),
         * then its close frame or just the end of the connection. */
        peer_frame(&p, 0x81, "late", 4);
        if (answer)
            peer_frame(&p, 0x88, "\x0f\xa0", 2);
        else
            shutdown(p.peer, SHUT_WR);
        assert_int_equal(wsc_close(&p.w, 4000, "done here", PEER_TIMEOUT_MS), 0);
        assert_int_equal(p.w.fd, -1);
        assert_int_equal(wsc_close(&p.w, 1000, NULL, 0), 0); /* already closed */
        /* our close frame, sent first */
        assert_int_equal(peer_read_frame(&p, &b), WSC_CLOSE);
        assert_int_equal(b.len, 11);
        assert_memory_equal(b.data,
                            "\x0f\xa0"
                            "done here",
                            11);
        pair_close(&p);
    }
    /* the server never answers: wsc_close() gives up at its deadline and closes anyway */
    pair_open(&p);
    assert_int_equal(wsc_close(&p.w, 1001, NULL, 100), -ETIMEDOUT);
    assert_int_equal(p.w.fd, -1);
    assert_int_equal(peer_read_frame(&p, &b), WSC_CLOSE);
    assert_int_equal(b.len, 2);
    assert_memory_equal(b.data, "\x03\xe9", 2);
    buf_free(&b);
    pair_close(&p);
}

static void test_connection_ends(void **state)
{
    (void)state;
    struct pair p;
    struct wsc_msg m;
    wsc_msg_init(&m);
    /* in the middle of a frame */
    pair_open(&p);
    peer_write(&p, "\x81\x05he", 4);
    shutdown(p.peer, SHUT_WR);
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), -ECONNRESET);
    assert_int_equal(p.w.fd, -1);
    assert_int_equal(wsc_recv(&p.w, &m, 0), -EPIPE);
    assert_int_equal(wsc_send(&p.w, WSC_TEXT, "x", 1), -EPIPE);
    pair_close(&p);
    /* between frames, without a close frame */
    pair_open(&p);
    peer_frame(&p, 0x81, "last", 4);
    close(p.peer);
    p.peer = -1;
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), 0);
    assert_string_equal(m.data.data, "last");
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), -ECONNRESET);
    pair_close(&p);
    wsc_msg_free(&m);
}

/* ---------------------------------------------------------------------------------------------
 * Violations
 */

static void test_protocol_violations(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        size_t len;
        int err, code;
    } cases[] = {
        {"\xc1\x01x", 3, -EPROTO, 1002},         /* RSV1 */
        {"\xa1\x01x", 3, -EPROTO, 1002},         /* RSV2 */
        {"\x81\x81\0\0\0\0x", 7, -EPROTO, 1002}, /* masked by the server */
        {"\x83\x01x", 3, -EPROTO, 1002},         /* reserved data opcode */
        {"\x8b\x00", 2, -EPROTO, 1002},          /* reserved control opcode */
        {"\x09\x00", 2, -EPROTO, 1002},          /* fragmented ping */
        {"\x89\x7e\x00\x7e", 4, -EPROTO, 1002},  /* 126-byte ping */
        {"\x80\x01x", 3, -EPROTO, 1002},         /* continuation of nothing */
        {"\x01\x01"
         "a"
         "\x81\x01"
         "b",
         6, -EPROTO, 1002},                                  /* new message inside one */
        {"\x88\x01x", 3, -EPROTO, 1002},                     /* close with a 1-byte body */
        {"\x82\x7f\x80\0\0\0\0\0\0\0", 10, -EPROTO, 1002},   /* 64-bit length, top bit */
        {"\x82\x7f\0\0\0\x01\0\0\0\0", 10, -EMSGSIZE, 1009}, /* 4 GiB */
    };
    struct wsc_msg m;
    wsc_msg_init(&m);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct pair p;
        pair_open(&p);
        peer_write(&p, cases[i].bytes, cases[i].len);
        int r = wsc_recv(&p.w, &m, PEER_TIMEOUT_MS);
        if (r != cases[i].err)
            fail_msg("case %zu: %d, expected %d (%s)", i, r, cases[i].err, p.w.error);
        assert_true(p.w.error[0] != '\0');
        assert_int_equal(p.w.fd, -1);
        expect_close_code(&p, cases[i].code);
        pair_close(&p);
    }
    wsc_msg_free(&m);
}

static void test_max_message(void **state)
{
    (void)state;
    struct pair p;
    struct wsc_msg m;
    char data[101];
    memset(data, 'm', sizeof(data));
    wsc_msg_init(&m);
    /* at the bound: fine; above it, whole or in fragments: 1009 */
    pair_open(&p);
    p.w.max_message = 100;
    peer_frame(&p, 0x82, data, 100);
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), 0);
    assert_int_equal(m.data.len, 100);
    peer_frame(&p, 0x82, data, 101);
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), -EMSGSIZE);
    expect_close_code(&p, 1009);
    pair_close(&p);

    pair_open(&p);
    p.w.max_message = 100;
    peer_frame(&p, 0x02, data, 60);
    peer_frame(&p, 0x80, data, 41);
    assert_int_equal(wsc_recv(&p.w, &m, PEER_TIMEOUT_MS), -EMSGSIZE);
    expect_close_code(&p, 1009);
    pair_close(&p);
    wsc_msg_free(&m);
}

static void test_cancel(void **state)
{
    (void)state;
    struct pair p;
    struct wsc_msg m;
    volatile sig_atomic_t cancel = 1;
    pair_open(&p);
    wsc_msg_init(&m);
    p.w.cancel = &cancel;
    assert_int_equal(wsc_recv(&p.w, &m, -1), -EINTR);
    /* what has arrived is still delivered: the cancel only stops waiting */
    peer_frame(&p, 0x81, "ok", 2);
    assert_int_equal(wsc_recv(&p.w, &m, -1), 0);
    assert_string_equal(m.data.data, "ok");
    wsc_msg_free(&m);
    pair_close(&p);
}

/* ---------------------------------------------------------------------------------------------
 * The handshake, against a server thread on a unix socket
 */

enum hs_mode { HS_GOOD, HS_GOOD_WITH_FRAME, HS_WRONG_ACCEPT, HS_NO_UPGRADE, HS_NOT_FOUND };

struct hs_server {
    int lfd;
    char dir[64];
    char url[160];
    pthread_t thread;
    enum hs_mode mode;
    char req[8192]; /* the upgrade request as received */
    char key[64];   /* its Sec-WebSocket-Key */
    int failed;     /* checked by hs_stop(): the thread does not assert */
};

static void accept_value(const char *key, char *out)
{
    char both[128];
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    snprintf(both, sizeof(both), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    EVP_Digest(both, strlen(both), digest, &dlen, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)out, digest, (int)dlen);
}

static void *hs_main(void *arg)
{
    struct hs_server *s = arg;
    struct pollfd pf = {.fd = s->lfd, .events = POLLIN};
    if (poll(&pf, 1, PEER_TIMEOUT_MS) != 1) {
        s->failed = 1;
        return NULL;
    }
    int fd = accept(s->lfd, NULL, NULL);
    size_t n = 0;
    while (fd >= 0 && !strstr(s->req, "\r\n\r\n") && n < sizeof(s->req) - 1) {
        pf = (struct pollfd){.fd = fd, .events = POLLIN};
        ssize_t r = poll(&pf, 1, PEER_TIMEOUT_MS) == 1 ? recv(fd, s->req + n, 64, 0) : -1;
        if (r <= 0)
            break;
        n += (size_t)r;
        s->req[n] = '\0';
    }
    const char *k = strstr(s->req, "\r\nSec-WebSocket-Key: ");
    if (fd < 0 || !strstr(s->req, "\r\n\r\n") || !k) {
        s->failed = 1;
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    sscanf(k + 21, "%63[^\r]", s->key);
    char accept[64], answer[512];
    accept_value(s->key, accept);
    if (s->mode == HS_WRONG_ACCEPT)
        accept_value("dGhlIHNhbXBsZSBub25jZQ==", accept);
    int len;
    if (s->mode == HS_NOT_FOUND)
        len = snprintf(answer, sizeof(answer),
                       "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                       "Content-Length: 25\r\n\r\n{\"error\":{\"code\":\"nope\"}}");
    else
        len = snprintf(answer, sizeof(answer),
                       "HTTP/1.1 101 Switching Protocols\r\n%s"
                       "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n%s",
                       s->mode == HS_NO_UPGRADE ? "" : "Upgrade: WebSocket\r\n", accept,
                       s->mode == HS_GOOD_WITH_FRAME ? "\x81\x05hello" : "");
    if (send(fd, answer, (size_t)len, MSG_NOSIGNAL) != len)
        s->failed = 1;
    /* hold the connection until the client is done with it */
    char sink[256];
    pf = (struct pollfd){.fd = fd, .events = POLLIN};
    while (poll(&pf, 1, PEER_TIMEOUT_MS) == 1 && recv(fd, sink, sizeof(sink), 0) > 0)
        ;
    close(fd);
    return NULL;
}

static void hs_start(struct hs_server *s, enum hs_mode mode)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memset(s, 0, sizeof(*s));
    s->mode = mode;
    snprintf(s->dir, sizeof(s->dir), "/tmp/warren-test-wsclient-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/s", s->dir);
    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->lfd >= 0);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s->lfd, 4), 0);
    snprintf(s->url, sizeof(s->url), "unix:%s", sa.sun_path);
    assert_int_equal(pthread_create(&s->thread, NULL, hs_main, s), 0);
}

static void hs_stop(struct hs_server *s)
{
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    close(s->lfd);
    util_remove_tree(s->dir);
    assert_int_equal(s->failed, 0);
}

static void test_handshake(void **state)
{
    (void)state;
    struct hs_server s;
    struct client c;
    struct client_response resp;
    struct wsc w;
    struct wsc_msg m;
    wsc_msg_init(&m);

    hs_start(&s, HS_GOOD_WITH_FRAME);
    assert_int_equal(client_open(&c, s.url), 0);
    wsc_init(&w);
    assert_int_equal(wsc_connect(&w, &c, "/v1/sandboxes/sb-1/exec/ws", &resp), 0);
    assert_int_equal(resp.status, 101);
    assert_true(w.fd >= 0);
    /* a frame that came with the 101 is not lost */
    assert_int_equal(wsc_recv(&w, &m, PEER_TIMEOUT_MS), 0);
    assert_string_equal(m.data.data, "hello");
    assert_int_equal(wsc_send(&w, WSC_TEXT, "hi", 2), 0);
    wsc_free(&w);
    client_response_free(&resp);
    hs_stop(&s);
    assert_true(strncmp(s.req, "GET /v1/sandboxes/sb-1/exec/ws HTTP/1.1\r\n", 41) == 0);
    assert_non_null(strstr(s.req, "\r\nUpgrade: websocket\r\n"));
    assert_non_null(strstr(s.req, "\r\nConnection: Upgrade\r\n"));
    assert_non_null(strstr(s.req, "\r\nSec-WebSocket-Version: 13\r\n"));
    /* the key: 16 random bytes in base64 */
    unsigned char *raw = NULL;
    size_t rawlen = 0;
    assert_int_equal(strlen(s.key), 24);
    assert_int_equal(util_base64_decode(s.key, 24, &raw, &rawlen), 0);
    assert_int_equal(rawlen, 16);
    free(raw);
    char first_key[64];
    snprintf(first_key, sizeof(first_key), "%s", s.key);

    /* a second connection on the same client, with a new key */
    hs_start(&s, HS_GOOD);
    client_close(&c);
    assert_int_equal(client_open(&c, s.url), 0);
    assert_int_equal(wsc_connect(&w, &c, "/ws", &resp), 0);
    assert_int_equal(wsc_close(&w, 1000, NULL, 100), -ETIMEDOUT); /* this server never answers */
    wsc_free(&w);
    client_response_free(&resp);
    hs_stop(&s);
    assert_string_not_equal(s.key, first_key);

    static const struct {
        enum hs_mode mode;
        int err;
        const char *says;
    } bad[] = {
        {HS_WRONG_ACCEPT, -EPROTO, "wrong Sec-WebSocket-Accept"},
        {HS_NO_UPGRADE, -EPROTO, "malformed WebSocket handshake"},
        {HS_NOT_FOUND, -EREMOTEIO, "HTTP 404"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        hs_start(&s, bad[i].mode);
        client_close(&c);
        assert_int_equal(client_open(&c, s.url), 0);
        wsc_init(&w);
        assert_int_equal(wsc_connect(&w, &c, "/ws", &resp), bad[i].err);
        assert_int_equal(w.fd, -1);
        assert_non_null(strstr(w.error, bad[i].says));
        if (bad[i].mode == HS_NOT_FOUND) {
            assert_int_equal(resp.status, 404);
            assert_string_equal(resp.body.data, "{\"error\":{\"code\":\"nope\"}}");
        }
        client_response_free(&resp);
        wsc_free(&w);
        client_disconnect(&c); /* lets the server thread end */
        hs_stop(&s);
    }
    client_close(&c);

    /* nobody there */
    assert_int_equal(client_open(&c, "unix:/nonexistent/warren.sock"), 0);
    assert_int_equal(wsc_connect(&w, &c, "/ws", &resp), -ENOENT);
    assert_int_equal(c.connect_failed, 1);
    assert_true(w.error[0] != '\0');
    client_response_free(&resp);
    wsc_free(&w);
    client_close(&c);
    wsc_msg_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages_of_every_length),
        cmocka_unit_test(test_partial_frames_wait),
        cmocka_unit_test(test_fragments_and_control_frames),
        cmocka_unit_test(test_send_frames),
        cmocka_unit_test(test_flush_timeout),
        cmocka_unit_test(test_close_from_the_server),
        cmocka_unit_test(test_close_handshake),
        cmocka_unit_test(test_connection_ends),
        cmocka_unit_test(test_protocol_violations),
        cmocka_unit_test(test_max_message),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_handshake),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
