/*
 * fuzz_ws — WebSocket framing (net/ws.c on wslay): what a client sends after a valid handshake.
 *
 * Input: one option byte, then the client's bytes after its upgrade request (frames, which
 * clients must mask; a zero mask key leaves the payload readable).
 *   option & 3    pieces the bytes are sent in: all at once, 3, 13 or 128 bytes
 *   option & 4    half-close after sending
 *   option & 8    a small message limit (64 bytes) instead of 4 KiB
 *   option & 16   the server sends two messages before reading anything
 * The server's on_message acts on the first byte of each message: 'c' closes (code 990 + the
 * next byte, the rest as reason), 'b' answers with a 70000-byte binary message, 't' echoes the
 * rest through ws_send_text() (which checks UTF-8), 'x' sends invalid UTF-8 (which must be
 * refused); anything else is echoed.
 *
 * Oracle, besides the sanitizers: what the server sends is a 101 and then well-formed server
 * frames (unmasked, final, known opcodes, minimal lengths, UTF-8 text, a sendable close code and
 * nothing after the close frame); every accepted connection reports on_close exactly once.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "core/log.h"
#include "core/util.h"
#include "harness.h"
#include "net/http.h"
#include "net/ws.h"

#define REPLY_CAP (1 << 20)
#define BIG 70000

static const char handshake[] = "GET /v1/sandboxes/sb-1/exec/ws HTTP/1.1\r\n"
                                "Host: warren\r\n"
                                "Upgrade: websocket\r\n"
                                "Connection: Upgrade\r\n"
                                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                "Sec-WebSocket-Version: 13\r\n"
                                "\r\n";

static uv_loop_t loop;
static http_server_t *server;
static struct sockaddr_un server_addr;
static unsigned idle_handles;
static unsigned options;
static int accepted, closed;

static void on_message(ws_conn_t *ws, int binary, const char *data, size_t len, void *arg)
{
    static char big[BIG];
    char reason[160] = "";
    switch (len ? data[0] : 0) {
    case 'c':
        if (len > 2)
            snprintf(reason, sizeof(reason), "%.*s", (int)(len - 2), data + 2);
        ws_close(ws, len > 1 ? (unsigned char)data[1] + 990 : 0, reason);
        break;
    case 'b':
        ws_send_binary(ws, big, sizeof(big));
        break;
    case 't':
        ws_send_text(ws, data + 1, len - 1);
        break;
    case 'x':
        if (ws_send_text(ws, "\xc0\xaf", 2) != -EINVAL)
            fz_fail("ws_send_text() accepted invalid UTF-8");
        break;
    default:
        if (binary)
            ws_send_binary(ws, data, len);
        else
            ws_send_text_valid(ws, data, len);
    }
}

static void on_close(ws_conn_t *ws, int code, void *arg)
{
    closed++;
    if (code != 1005 && code != 1006 && (code < 1000 || code > 4999))
        fz_fail("on_close with code %d", code);
    /* Allowed, and a no-op, from on_close. */
    if (ws_send_binary(ws, "x", 1) != -EPIPE)
        fz_fail("ws_send_binary() from on_close did not fail with EPIPE");
}

static const struct ws_callbacks callbacks = {.on_message = on_message, .on_close = on_close};

static void handler(http_req_t *req, void *ctx)
{
    ws_conn_t *ws = ws_accept(req, &callbacks, NULL, options & 8 ? 64 : 4096);
    if (!ws)
        return;
    accepted++;
    if (options & 16) {
        ws_send_text(ws, "hello", 5);
        ws_send_binary(ws, "\x00\x01\x02", 3);
    }
}

/* ---- the oracle ------------------------------------------------------------------------- */

static int code_sendable(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

static void check_frames(const uint8_t *p, size_t len)
{
    const char *end = memmem(p, len, "\r\n\r\n", 4);
    if (len == 0)
        return;
    if (len < 13 || memcmp(p, "HTTP/1.1 101 ", 13) != 0)
        fz_fail("the handshake was not answered with 101");
    if (!end)
        return;
    size_t off = (size_t)((const uint8_t *)end - p) + 4;
    int closed_seen = 0;
    while (off + 2 <= len) {
        unsigned b0 = p[off], b1 = p[off + 1], op = b0 & 0x0f;
        uint64_t plen = b1 & 0x7f;
        size_t h = 2;
        if (closed_seen)
            fz_fail("a frame after the close frame");
        if (!(b0 & 0x80) || (b0 & 0x70) || (b1 & 0x80))
            fz_fail("frame header %02x %02x: not final, reserved bits or masked", b0, b1);
        if (op != 1 && op != 2 && op != 8 && op != 9 && op != 10)
            fz_fail("opcode %u", op);
        if (plen == 126) {
            if (off + 4 > len)
                return;
            plen = (uint64_t)p[off + 2] << 8 | p[off + 3];
            h = 4;
            if (plen < 126)
                fz_fail("non-minimal 16-bit length %llu", (unsigned long long)plen);
        } else if (plen == 127) {
            if (off + 10 > len)
                return;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = plen << 8 | p[off + 2 + i];
            h = 10;
            if (plen < 65536 || plen >> 63)
                fz_fail("bad 64-bit length %llu", (unsigned long long)plen);
        }
        if ((op & 8) && plen > 125)
            fz_fail("control frame of %llu bytes", (unsigned long long)plen);
        if (off + h + plen > len)
            return; /* cut off when the client closed */
        const uint8_t *pl = p + off + h;
        if (op == 1 && !util_utf8_valid((const char *)pl, (size_t)plen))
            fz_fail("text frame that is not UTF-8");
        if (op == 8) {
            closed_seen = 1;
            if (plen == 1)
                fz_fail("close frame of 1 byte");
            if (plen >= 2 && !code_sendable((unsigned)pl[0] << 8 | pl[1]))
                fz_fail("close code %u sent", (unsigned)pl[0] << 8 | pl[1]);
            if (plen > 2 && !util_utf8_valid((const char *)pl + 2, (size_t)plen - 2))
                fz_fail("close reason that is not UTF-8");
        }
        off += h + (size_t)plen;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[64], addr[128];
    log_set_level(LOG_ERROR);
    fz_scratch_dir("ws", dir, sizeof(dir));
    if (uv_loop_init(&loop) < 0 || http_server_new(&server, &loop, NULL, handler, NULL) < 0)
        fz_fail("cannot create the server");
    snprintf(addr, sizeof(addr), "unix:%s/ws.sock", dir);
    if (http_server_listen(server, addr) < 0)
        fz_fail("cannot listen on %s", addr);
    server_addr.sun_family = AF_UNIX;
    snprintf(server_addr.sun_path, sizeof(server_addr.sun_path), "%s/ws.sock", dir);
    idle_handles = fz_loop_handles(&loop);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t pieces[] = {0, 3, 13, 128};
    static uint8_t input[sizeof(handshake) + 65536];
    static uint8_t reply_buf[REPLY_CAP];
    if (size < 1 || size - 1 > sizeof(input) - sizeof(handshake))
        return 0;
    options = data[0];
    /* The handshake goes in the first piece with the frames: the server must take bytes that
     * came with the upgrade request as frames. */
    memcpy(input, handshake, sizeof(handshake) - 1);
    memcpy(input + sizeof(handshake) - 1, data + 1, size - 1);
    struct fz_reply reply = {reply_buf, 0, sizeof(reply_buf)};
    struct fz_client c = {
        .addr = (const struct sockaddr *)&server_addr,
        .addrlen = sizeof(server_addr),
        .piece = pieces[options & 3],
        .first_piece = pieces[options & 3] ? sizeof(handshake) - 1 + pieces[options & 3] : 0,
        .half_close = (options & 4) != 0,
        .idle_handles = idle_handles,
        .reply = &reply,
    };
    accepted = closed = 0;
    fz_session(&loop, &c, input, sizeof(handshake) - 1 + size - 1);
    if (accepted != 1 || closed != 1)
        fz_fail("%d connections accepted, %d closed", accepted, closed);
    check_frames(reply.data, reply.len);
    return 0;
}
