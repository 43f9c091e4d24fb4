/*
 * wsclient — blocking WebSocket client for the CLI. See wsclient.h.
 */
#include "cli/wsclient.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#define WSC_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WSC_READ_CHUNK (64 * 1024)
#define WSC_CLOSE_FLUSH_MS 1000

static void wsc_set_error(struct wsc *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void wsc_set_error(struct wsc *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof(w->error), fmt, ap);
    va_end(ap);
}

static int64_t wsc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wsc_deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : wsc_now_ms() + timeout_ms;
}

/* Cryptographically random bytes (the handshake key and the frame masks). */
static int wsc_random(void *p, size_t n)
{
    if (RAND_bytes(p, (int)n) == 1)
        return 0;
    unsigned char *b = p;
    while (n > 0) {
        ssize_t r = getrandom(b, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

void wsc_init(struct wsc *w)
{
    memset(w, 0, sizeof(*w));
    w->fd = -1;
    buf_init(&w->in);
    buf_init(&w->out);
    buf_init(&w->frag);
    w->max_message = WSC_DEFAULT_MAX_MESSAGE;
}

void wsc_msg_init(struct wsc_msg *m)
{
    memset(m, 0, sizeof(*m));
    buf_init(&m->data);
}

void wsc_msg_free(struct wsc_msg *m)
{
    buf_free(&m->data);
    wsc_msg_init(m);
}

static void wsc_drop(struct wsc *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    buf_reset(&w->out);
}

void wsc_free(struct wsc *w)
{
    wsc_drop(w);
    buf_free(&w->in);
    buf_free(&w->out);
    buf_free(&w->frag);
    wsc_init(w);
}

size_t wsc_pending_out(const struct wsc *w)
{
    return w->fd >= 0 ? w->out.len : 0;
}

/* ---- waiting and raw I/O ----------------------------------------------------------------- */

/* Wait for `events` on the socket until `deadline` (absolute ms, -1 none). Returns 0 when ready,
 * -ETIMEDOUT, -EINTR (cancelled) or -errno. */
static int wsc_wait(struct wsc *w, short events, int64_t deadline)
{
    struct pollfd p = {.fd = w->fd, .events = events};
    for (;;) {
        int r;
        if (w->cancel && *w->cancel)
            return -EINTR;
        if (deadline >= 0) {
            int64_t left = deadline - wsc_now_ms();
            if (left <= 0)
                return -ETIMEDOUT;
            struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
            r = w->wait_mask ? ppoll(&p, 1, &ts, w->wait_mask)
                             : poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        } else {
            r = w->wait_mask ? ppoll(&p, 1, NULL, w->wait_mask) : poll(&p, 1, -1);
        }
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

/* Send queued bytes without waiting. Returns 0 (possibly with bytes left) or -errno. */
static int wsc_flush_some(struct wsc *w)
{
    while (w->out.len > 0) {
        ssize_t n = send(w->fd, w->out.data, w->out.len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            int e = errno;
            wsc_set_error(w, "%s", strerror(e));
            return -e;
        }
        buf_consume(&w->out, (size_t)n);
    }
    return 0;
}

int wsc_flush(struct wsc *w, int timeout_ms)
{
    int64_t deadline = wsc_deadline(timeout_ms);
    if (w->fd < 0)
        return w->out.len ? -EPIPE : 0;
    for (;;) {
        int r = wsc_flush_some(w);
        if (r < 0)
            return r;
        if (w->out.len == 0)
            return 0;
        r = wsc_wait(w, POLLOUT, deadline);
        if (r < 0)
            return r;
    }
}

/* Read what is available into w->in. Returns the count (> 0), 0 at EOF, -EAGAIN or -errno. */
static ssize_t wsc_recv_some(struct wsc *w)
{
    int r = buf_reserve(&w->in, WSC_READ_CHUNK);
    if (r < 0)
        return r;
    for (;;) {
        ssize_t n = recv(w->fd, w->in.data + w->in.len, WSC_READ_CHUNK, 0);
        if (n > 0) {
            w->in.len += (size_t)n;
            w->in.data[w->in.len] = '\0';
            return n;
        }
        if (n == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -EAGAIN;
        return -errno;
    }
}

/* ---- frames ------------------------------------------------------------------------------ */

/* Append one masked frame to w->out. */
static int wsc_queue_frame(struct wsc *w, int opcode, const void *data, size_t len)
{
    unsigned char hdr[14];
    size_t hl = 2;
    unsigned char mask[4];
    int r = wsc_random(mask, sizeof(mask));
    if (r < 0) {
        wsc_set_error(w, "no random bytes for the frame mask: %s", strerror(-r));
        return r;
    }
    hdr[0] = (unsigned char)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        hdr[1] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        hdr[1] = 0x80 | 126;
        hdr[2] = (unsigned char)(len >> 8);
        hdr[3] = (unsigned char)len;
        hl = 4;
    } else {
        hdr[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            hdr[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
        hl = 10;
    }
    memcpy(hdr + hl, mask, 4);
    hl += 4;
    r = buf_reserve(&w->out, hl + len);
    if (r < 0) {
        wsc_set_error(w, "out of memory");
        return r;
    }
    memcpy(w->out.data + w->out.len, hdr, hl);
    unsigned char *dst = (unsigned char *)w->out.data + w->out.len + hl;
    const unsigned char *src = data;
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i] ^ mask[i & 3];
    w->out.len += hl + len;
    w->out.data[w->out.len] = '\0';
    return 0;
}

int wsc_send(struct wsc *w, int opcode, const void *data, size_t len)
{
    if (w->fd < 0 || w->close_sent) {
        wsc_set_error(w, "the connection is closed");
        return -EPIPE;
    }
    if (opcode != WSC_TEXT && opcode != WSC_BINARY && opcode != WSC_PING && opcode != WSC_PONG)
        return -EINVAL;
    if (opcode >= 8 && len > 125)
        return -EINVAL;
    int r = wsc_queue_frame(w, opcode, data, len);
    if (r < 0)
        return r;
    r = wsc_flush_some(w);
    if (r < 0)
        wsc_drop(w);
    return r;
}

/* Queue a close frame (once) and push it out, waiting a little. */
static void wsc_send_close(struct wsc *w, int code, const char *reason)
{
    unsigned char body[125];
    size_t n = 0;
    if (w->close_sent || w->fd < 0)
        return;
    if (code > 0 && code != 1005 && code != 1006) {
        body[0] = (unsigned char)(code >> 8);
        body[1] = (unsigned char)code;
        n = 2;
        if (reason) {
            size_t rl = strlen(reason);
            if (rl > sizeof(body) - 2)
                rl = sizeof(body) - 2;
            memcpy(body + 2, reason, rl);
            n += rl;
        }
    }
    w->close_sent = true;
    if (wsc_queue_frame(w, WSC_CLOSE, body, n) == 0)
        wsc_flush(w, WSC_CLOSE_FLUSH_MS);
}

/* The server broke the protocol: close with `code` and drop the connection. */
static int wsc_fail(struct wsc *w, int err, int code, const char *what)
{
    wsc_set_error(w, "%s", what);
    wsc_send_close(w, code, what);
    wsc_drop(w);
    return err;
}

struct wsc_frame {
    bool fin;
    int opcode;
    const unsigned char *payload;
    size_t len;
    size_t total; /* header + payload */
};

/* Parse the frame at the start of w->in. Returns 1 (complete), 0 (need more) or a failure. */
static int wsc_parse_frame(struct wsc *w, struct wsc_frame *f)
{
    const unsigned char *p = (const unsigned char *)w->in.data;
    size_t n = w->in.len, hl = 2;
    uint64_t len;

    if (n < 2)
        return 0;
    if (p[0] & 0x70)
        return wsc_fail(w, -EPROTO, 1002, "reserved bits set in a frame from the server");
    f->fin = (p[0] & 0x80) != 0;
    f->opcode = p[0] & 0x0f;
    if (p[1] & 0x80)
        return wsc_fail(w, -EPROTO, 1002, "masked frame from the server");
    len = p[1] & 0x7f;
    if (len == 126) {
        if (n < 4)
            return 0;
        len = (uint64_t)p[2] << 8 | p[3];
        hl = 4;
    } else if (len == 127) {
        if (n < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        if (len >> 63)
            return wsc_fail(w, -EPROTO, 1002, "bad frame length from the server");
        hl = 10;
    }
    if (f->opcode >= 8) {
        if (f->opcode > WSC_PONG)
            return wsc_fail(w, -EPROTO, 1002, "unknown opcode from the server");
        if (!f->fin || len > 125)
            return wsc_fail(w, -EPROTO, 1002, "bad control frame from the server");
    } else if (f->opcode > WSC_BINARY) {
        return wsc_fail(w, -EPROTO, 1002, "unknown opcode from the server");
    }
    if (len > w->max_message)
        return wsc_fail(w, -EMSGSIZE, 1009, "message from the server too large");
    if (n - hl < len)
        return 0;
    f->payload = p + hl;
    f->len = (size_t)len;
    f->total = hl + (size_t)len;
    return 1;
}

/* Act on one frame. Returns 1 when `m` holds a complete message, 0 to go on, or a failure. */
static int wsc_handle_frame(struct wsc *w, const struct wsc_frame *f, struct wsc_msg *m)
{
    int r;
    switch (f->opcode) {
    case WSC_PING:
        if (!w->close_sent && wsc_queue_frame(w, WSC_PONG, f->payload, f->len) == 0) {
            r = wsc_flush_some(w);
            if (r < 0)
                return r;
        }
        return 0;
    case WSC_PONG:
        return 0;
    case WSC_CLOSE: {
        int code = f->len >= 2 ? (f->payload[0] << 8 | f->payload[1]) : 1005;
        if (f->len == 1)
            return wsc_fail(w, -EPROTO, 1002, "bad close frame from the server");
        w->close_rcvd = true;
        wsc_send_close(w, code, NULL);
        buf_reset(&m->data);
        if (buf_append(&m->data, f->len > 2 ? f->payload + 2 : f->payload,
                       f->len > 2 ? f->len - 2 : 0) < 0)
            return -ENOMEM;
        m->opcode = WSC_CLOSE;
        m->close_code = code;
        return 1;
    }
    case WSC_TEXT:
    case WSC_BINARY:
        if (w->frag_opcode)
            return wsc_fail(w, -EPROTO, 1002, "new message inside a fragmented one");
        if (!f->fin) {
            buf_reset(&w->frag);
            if (buf_append(&w->frag, f->payload, f->len) < 0)
                return -ENOMEM;
            w->frag_opcode = f->opcode;
            return 0;
        }
        buf_reset(&m->data);
        if (buf_append(&m->data, f->payload, f->len) < 0)
            return -ENOMEM;
        m->opcode = f->opcode;
        m->close_code = 0;
        return 1;
    default: /* WSC_CONT */
        if (!w->frag_opcode)
            return wsc_fail(w, -EPROTO, 1002, "continuation frame without a message");
        if (w->frag.len + f->len > w->max_message)
            return wsc_fail(w, -EMSGSIZE, 1009, "message from the server too large");
        if (buf_append(&w->frag, f->payload, f->len) < 0)
            return -ENOMEM;
        if (!f->fin)
            return 0;
        if (buf_append(&w->frag, "", 0) < 0)
            return -ENOMEM;
        buf_free(&m->data);
        m->data = w->frag;
        buf_init(&w->frag);
        m->opcode = w->frag_opcode;
        m->close_code = 0;
        w->frag_opcode = 0;
        return 1;
    }
}

int wsc_recv(struct wsc *w, struct wsc_msg *m, int timeout_ms)
{
    int64_t deadline = wsc_deadline(timeout_ms);
    for (;;) {
        if (w->fd < 0 || w->close_rcvd) {
            wsc_set_error(w, "the connection is closed");
            return -EPIPE;
        }
        for (;;) {
            struct wsc_frame f;
            int r = wsc_parse_frame(w, &f);
            if (r < 0)
                return r;
            if (r == 0)
                break;
            r = wsc_handle_frame(w, &f, m);
            if (w->fd >= 0)
                buf_consume(&w->in, f.total);
            if (r == -ENOMEM)
                wsc_set_error(w, "out of memory");
            if (r != 0)
                return r < 0 ? r : 0;
        }
        ssize_t n = wsc_recv_some(w);
        if (n > 0)
            continue;
        if (n == 0 || n == -ECONNRESET) {
            wsc_set_error(w, "the connection was closed by the server");
            wsc_drop(w);
            return -ECONNRESET;
        }
        if (n != -EAGAIN) {
            wsc_set_error(w, "%s", strerror((int)-n));
            wsc_drop(w);
            return (int)n;
        }
        int r = wsc_flush_some(w);
        if (r < 0) {
            wsc_drop(w);
            return r;
        }
        r = wsc_wait(w, (short)(POLLIN | (w->out.len ? POLLOUT : 0)), deadline);
        if (r < 0)
            return r;
    }
}

int wsc_close(struct wsc *w, int code, const char *reason, int timeout_ms)
{
    int64_t deadline = wsc_deadline(timeout_ms);
    struct wsc_msg m;
    int r = 0;

    if (w->fd < 0)
        return 0;
    wsc_msg_init(&m);
    wsc_send_close(w, code, reason);
    while (w->fd >= 0 && !w->close_rcvd) {
        int left = deadline < 0 ? -1 : (int)(deadline - wsc_now_ms());
        if (deadline >= 0 && left <= 0) {
            r = -ETIMEDOUT;
            break;
        }
        r = wsc_recv(w, &m, left);
        if (r < 0) {
            if (r == -ECONNRESET || r == -EPIPE)
                r = 0; /* the server closed: that is the end we wait for */
            break;
        }
    }
    wsc_msg_free(&m);
    wsc_drop(w);
    return r;
}

/* ---- handshake --------------------------------------------------------------------------- */

int wsc_connect(struct wsc *w, struct client *c, const char *path, struct client_response *resp)
{
    unsigned char raw[16], digest[EVP_MAX_MD_SIZE];
    char key[32], expect[64], headers[256], both[96];
    unsigned int dlen = 0;
    int fd = -1;

    buf_reset(&w->in);
    buf_reset(&w->out);
    buf_reset(&w->frag);
    w->frag_opcode = 0;
    w->close_sent = w->close_rcvd = false;
    w->error[0] = '\0';

    int r = wsc_random(raw, sizeof(raw));
    if (r < 0) {
        wsc_set_error(w, "no random bytes for the handshake: %s", strerror(-r));
        client_response_free(resp);
        return r;
    }
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
    snprintf(both, sizeof(both), "%s%s", key, WSC_GUID);
    if (EVP_Digest(both, strlen(both), digest, &dlen, EVP_sha1(), NULL) != 1 || dlen != 20) {
        wsc_set_error(w, "SHA-1 is not available");
        client_response_free(resp);
        return -ENOSYS;
    }
    EVP_EncodeBlock((unsigned char *)expect, digest, (int)dlen);
    snprintf(headers, sizeof(headers),
             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
             "Sec-WebSocket-Version: 13\r\n",
             key);

    r = client_upgrade(c, path, headers, resp, &fd, &w->in);
    if (r < 0) {
        wsc_set_error(w, "%s", c->error[0] ? c->error : strerror(-r));
        return r;
    }
    if (fd < 0) {
        wsc_set_error(w, "the server answered HTTP %d instead of switching to WebSocket",
                      resp->status);
        return -EREMOTEIO;
    }
    const char *up = client_response_header(resp, "Upgrade");
    const char *conn = client_response_header(resp, "Connection");
    const char *accept = client_response_header(resp, "Sec-WebSocket-Accept");
    if (!up || !client_header_has_token(up, "websocket") || !conn ||
        !client_header_has_token(conn, "upgrade") || !accept || strcmp(accept, expect) != 0) {
        close(fd);
        buf_reset(&w->in);
        wsc_set_error(w, "malformed WebSocket handshake from the server%s",
                      accept && strcmp(accept, expect) != 0 ? " (wrong Sec-WebSocket-Accept)" : "");
        return -EPROTO;
    }
    w->fd = fd;
    w->wait_mask = c->wait_mask;
    w->cancel = c->cancel;
    return 0;
}
