/*
 * Unit tests for net/ws framing with input split exactly where a test wants it: the loop runs on
 * the test thread and a client on a unix socket sends a piece, then the loop runs until the
 * server has read it, so every piece reaches the server as its own read. These are the
 * regressions fuzz/fuzz_ws found (its inputs are reproduced here byte for byte).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "net/http.h"
#include "net/ws.h"

#define TURNS 1000

static const char handshake[] = "GET /ws HTTP/1.1\r\n"
                                "Upgrade: websocket\r\n"
                                "Connection: Upgrade\r\n"
                                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                "Sec-WebSocket-Version: 13\r\n"
                                "\r\n";

struct fixture {
    uv_loop_t loop;
    http_server_t *srv;
    char dir[64];
    struct sockaddr_un addr;
    int closes;
    int last_code;
    int fd;                 /* the client */
    unsigned char in[4096]; /* what the client received */
    size_t in_len;
};

static void on_message(ws_conn_t *ws, int binary, const char *data, size_t len, void *arg)
{
    ws_send_binary(ws, data, len);
}

static void on_close(ws_conn_t *ws, int code, void *arg)
{
    struct fixture *f = arg;
    f->closes++;
    f->last_code = code;
}

static const struct ws_callbacks callbacks = {.on_message = on_message, .on_close = on_close};

static void handler(http_req_t *req, void *ctx)
{
    ws_accept(req, &callbacks, ctx, 0);
}

static void on_done(void *arg)
{
    (void)arg;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char listen[128];
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/warren-test-ws-frames-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(http_server_new(&f->srv, &f->loop, NULL, handler, f), 0);
    snprintf(listen, sizeof(listen), "unix:%s/sock", f->dir);
    assert_int_equal(http_server_listen(f->srv, listen), 0);
    f->addr.sun_family = AF_UNIX;
    snprintf(f->addr.sun_path, sizeof(f->addr.sun_path), "%s/sock", f->dir);
    f->fd = -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->fd >= 0)
        close(f->fd);
    http_server_close(f->srv, on_done, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    http_server_free(f->srv);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    util_remove_tree(f->dir);
    free(f);
    return 0;
}

/* Runs the loop until the server has read everything the client sent and has nothing more to do
 * right now; collects what the server sent. */
static void settle(struct fixture *f)
{
    for (int turn = 0; turn < TURNS; turn++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        ssize_t n = recv(f->fd, f->in + f->in_len, sizeof(f->in) - f->in_len, MSG_DONTWAIT);
        if (n > 0)
            f->in_len += (size_t)n;
        int unread = 0;
        assert_int_equal(ioctl(f->fd, SIOCOUTQ, &unread), 0);
        if (n <= 0 && unread == 0 && uv_backend_timeout(&f->loop) != 0)
            return;
    }
    fail_msg("the server did not settle");
}

static void send_piece(struct fixture *f, const void *data, size_t len)
{
    assert_int_equal(send(f->fd, data, len, MSG_NOSIGNAL), (ssize_t)len);
    settle(f);
}

/* Connects and completes the handshake; f->in then holds what followed the 101. */
static void connect_ws(struct fixture *f)
{
    f->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(f->fd >= 0);
    assert_int_equal(connect(f->fd, (struct sockaddr *)&f->addr, sizeof(f->addr)), 0);
    send_piece(f, handshake, sizeof(handshake) - 1);
    const unsigned char *end = memmem(f->in, f->in_len, "\r\n\r\n", 4);
    assert_non_null(end);
    assert_memory_equal(f->in, "HTTP/1.1 101 ", 13);
    size_t head = (size_t)(end - f->in) + 4;
    memmove(f->in, f->in + head, f->in_len - head);
    f->in_len -= head;
}

/* The client closes; the loop runs until the server has reported the close. */
static void hang_up(struct fixture *f)
{
    close(f->fd);
    f->fd = -1;
    for (int turn = 0; turn < TURNS && f->closes == 0; turn++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->closes, 1);
}

/* fuzz_ws input a9 88 85 00000000 03e9 62 00 fe ...: a close frame (code 1001, reason "b\0\xfe")
 * arriving in 3-byte pieces. wslay checked the reason piece by piece, skipping the first two bytes
 * of each piece, so "\0\xfe" went unchecked and was echoed: a close reason that is not UTF-8. */
static void test_close_reason_not_utf8_in_pieces(void **state)
{
    struct fixture *f = *state;
    static const unsigned char frame[] = {0x88, 0x85, 0, 0, 0, 0, 0x03, 0xe9, 'b', 0x00, 0xfe};
    connect_ws(f);
    for (size_t off = 0; off < sizeof(frame); off += 3)
        send_piece(f, frame + off, sizeof(frame) - off < 3 ? sizeof(frame) - off : 3);
    /* Refused as invalid payload: a close frame with 1007 and nothing else. */
    static const unsigned char want[] = {0x88, 0x02, 0x03, 0xef};
    assert_int_equal(f->in_len, sizeof(want));
    assert_memory_equal(f->in, want, sizeof(want));
    hang_up(f);
    assert_int_equal(f->last_code, 1007);
}

/* The other half of the same wslay behaviour: a valid reason cut inside a two-byte character had
 * the continuation byte skipped, and was refused with 1007. It must be echoed. */
static void test_close_reason_utf8_in_pieces(void **state)
{
    struct fixture *f = *state;
    /* Code 1000, reason "a\xc3\xa9bc" (abc with an e acute), masked with 01 02 03 04. */
    static const unsigned char plain[] = {0x03, 0xe8, 'a', 0xc3, 0xa9, 'b', 'c'};
    unsigned char frame[6 + sizeof(plain)] = {0x88, 0x80 | sizeof(plain), 1, 2, 3, 4};
    for (size_t i = 0; i < sizeof(plain); i++)
        frame[6 + i] = plain[i] ^ frame[2 + i % 4];
    connect_ws(f);
    send_piece(f, frame, 10);                      /* header, code, "a\xc3" */
    send_piece(f, frame + 10, sizeof(frame) - 10); /* "\xa9bc" */
    unsigned char want[2 + sizeof(plain)] = {0x88, sizeof(plain)};
    memcpy(want + 2, plain, sizeof(plain));
    assert_int_equal(f->in_len, sizeof(want));
    assert_memory_equal(f->in, want, sizeof(want));
    hang_up(f);
    assert_int_equal(f->last_code, 1000);
}

/* Data before the close frame, all in one piece with it, still arrives in order. */
static void test_message_then_close(void **state)
{
    struct fixture *f = *state;
    static const unsigned char frames[] = {0x82, 0x82, 0, 0, 0, 0, 'h',  'i',
                                           0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8};
    static const unsigned char want[] = {0x82, 0x02, 'h', 'i', 0x88, 0x02, 0x03, 0xe8};
    connect_ws(f);
    send_piece(f, frames, sizeof(frames));
    assert_int_equal(f->in_len, sizeof(want));
    assert_memory_equal(f->in, want, sizeof(want));
    hang_up(f);
    assert_int_equal(f->last_code, 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_close_reason_not_utf8_in_pieces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_reason_utf8_in_pieces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_then_close, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
