/*
 * ws — WebSocket connections. See ws.h for the contract.
 *
 * Ownership: the connection's stream and timer stay owned by net/http (http_req_takeover); this
 * module uses them and ends them with http_takeover_release(). The ws_conn_t is freed in the
 * `closed` callback of the takeover, which runs after every callback of the handles (including
 * cancelled writes and shutdown) has run, so no libuv callback ever sees a freed ws. Requests
 * (write, shutdown) carry the ws in their own `data`: after the release the handles' `data` points
 * back at net/http's connection.
 *
 * Data flow: libuv reads into `in`; frame headers are pre-checked (guard_scan) and the checked
 * bytes are fed to wslay through its recv callback. wslay's send callback appends frames to `out`,
 * which is handed to uv_write right after every wslay_event_send(). Every queued message is
 * flushed at once, also from inside wslay_event_recv() (on_message calling ws_send()): wslay sends
 * control frames ahead of queued data and stops writing after a close frame, so data left in its
 * queue when a close frame is queued (ours, or its echo of the peer's) would be lost. wslay's queue
 * is therefore empty between calls, and ws_buffered() is the bytes inside uv_write requests.
 *
 * Closing the connection (ws_drop) never calls on_close itself: on_close runs from the libuv close
 * callback, which makes "never from inside a ws_*() call" hold by construction.
 */
#include "net/ws.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <wslay/wslay.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/util.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define KEY_LEN 24 /* base64 of 16 bytes */
#define ACCEPT_LEN 28
/* Read room per read; with buf_t growth (doubling from 64 bytes, plus a NUL) this keeps the read
 * buffer at 64 KiB, under glibc's mmap threshold, which matters as it is freed whenever empty. */
#define READ_CHUNK (60 * 1024)
#define PEER_LEN 64
#define MAX_REASON 123 /* a control frame carries 125 bytes: 2 for the code */

/* Pre-check of the frame headers in `in`, ahead of wslay. wslay rejects some malformed headers
 * (fragmented or oversized control frames, non-minimal lengths) by queueing a close frame without
 * a status code; RFC 6455 wants 1002, so such headers are caught here first and never reach
 * wslay. The peer's close frame is checked here too: wslay checks a close reason's UTF-8 piece by
 * piece as it reads it and skips the first two bytes of *every* piece (meant for the code), so a
 * reason that arrives in pieces may pass unchecked (and be echoed) or be refused wrongly. The
 * close frame is therefore held back until it is complete, its reason checked here, and handed to
 * wslay in one piece (on_wslay_recv). Everything else (masking, opcodes, reserved bits, UTF-8 of
 * data, sizes) is left to wslay. */
struct guard {
    size_t off;      /* bytes of `in` scanned */
    size_t valid;    /* bytes of `in` wslay may read: complete checked headers and their payload */
    uint64_t left;   /* payload bytes of the current frame not scanned yet */
    int bad;         /* a bad frame starts at `valid`: the close code to answer it with, or 0 */
    int has_close;   /* a complete close frame starts at close_at (wslay reads nothing after it) */
    size_t close_at; /* offset in `in` */
};

struct ws_conn {
    uv_stream_t *stream; /* owned by net/http, see the top of the file */
    uv_timer_t *timer;   /* start-up kick, then ping/idle checks, then the close deadline */
    wslay_event_context_ptr ctx;
    struct ws_callbacks cb;
    void *arg;
    buf_t in;       /* received, not yet read by wslay */
    size_t in_used; /* bytes of `in` read by wslay during the current wslay_event_recv() */
    struct guard g;
    buf_t out;       /* framed by wslay, not yet handed to uv_write */
    size_t inflight; /* bytes in uv_write requests not completed yet */
    uv_shutdown_t shutdown;
    uint64_t last_recv, last_ping, close_deadline; /* loop time, ms */
    unsigned ping_ms, idle_ms, close_ms;
    int close_code;        /* reported to on_close; 0 until a close frame was sent or received */
    unsigned started : 1;  /* the start-up kick ran: reading, leftover input processed */
    unsigned closing : 1;  /* a close frame was queued or received: no more messages either way */
    unsigned deadline : 1; /* close_deadline is set */
    unsigned shut : 1;     /* uv_shutdown() called */
    unsigned dead : 1;     /* http_takeover_release() called; waiting for `closed` */
    unsigned above_high : 1;
    char peer[PEER_LEN];
};

struct ws_wreq {
    uv_write_t req;
    char *data;
    size_t len;
};

static void ws_progress(struct ws_conn *ws);
static void ws_arm_timer(struct ws_conn *ws);

/* ---------------------------------------------------------------------------------------------
 * Handshake
 */

/* True if the comma-separated header `value` contains `token` (case-insensitive). */
static int has_token(const char *value, const char *token)
{
    size_t tlen = strlen(token);
    const char *p = value;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m > 0 && (p[m - 1] == ' ' || p[m - 1] == '\t'))
            m--;
        if (m == tlen && strncasecmp(p, token, tlen) == 0)
            return 1;
        p += n;
    }
    return 0;
}

/* The header value without surrounding blanks, as pointer and length. */
static const char *trimmed(const char *s, size_t *len)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    *len = n;
    return s;
}

int ws_is_upgrade(const http_req_t *req)
{
    const char *up = http_req_header(req, "Upgrade");
    const char *conn = http_req_header(req, "Connection");
    return up && conn && has_token(up, "websocket") && has_token(conn, "upgrade");
}

/* Checks the upgrade request; on success copies the key (NUL-terminated) and returns 0, else
 * returns the status to answer with and sets *why. */
static int check_handshake(const http_req_t *req, char key[KEY_LEN + 1], const char **why)
{
    if (!ws_is_upgrade(req)) {
        *why = "not a WebSocket upgrade request (Upgrade: websocket, Connection: upgrade)";
        return 400;
    }
    if (strcmp(http_req_method(req), "GET") != 0) {
        *why = "a WebSocket upgrade must use GET";
        return 400;
    }
    if (http_req_version(req) < 11) {
        *why = "a WebSocket upgrade needs HTTP/1.1";
        return 400;
    }
    size_t len;
    const char *v = http_req_header(req, "Sec-WebSocket-Version");
    v = v ? trimmed(v, &len) : NULL;
    if (!v || len != 2 || memcmp(v, "13", 2) != 0) {
        /* A missing version is an older protocol draft: same answer. */
        *why = "unsupported WebSocket version";
        return 426;
    }
    const char *k = http_req_header(req, "Sec-WebSocket-Key");
    k = k ? trimmed(k, &len) : NULL;
    unsigned char *raw = NULL;
    size_t rawlen = 0;
    if (!k || len != KEY_LEN || util_base64_decode(k, len, &raw, &rawlen) < 0 || rawlen != 16) {
        free(raw);
        *why = "missing or invalid Sec-WebSocket-Key";
        return 400;
    }
    free(raw);
    memcpy(key, k, KEY_LEN);
    key[KEY_LEN] = '\0';
    return 0;
}

/* Sec-WebSocket-Accept: base64(SHA-1(key + GUID)). */
static int accept_value(const char *key, char out[ACCEPT_LEN + 1])
{
    char in[KEY_LEN + sizeof(WS_GUID)];
    memcpy(in, key, KEY_LEN);
    memcpy(in + KEY_LEN, WS_GUID, sizeof(WS_GUID));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (!EVP_Digest(in, KEY_LEN + sizeof(WS_GUID) - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
        return -EIO;
    EVP_EncodeBlock((unsigned char *)out, md, 20);
    return 0;
}

static void respond_426(http_req_t *req)
{
    static const char body[] = "{\"error\":{\"code\":\"upgrade_required\",\"message\":"
                               "\"unsupported WebSocket version (13 is)\"}}\n";
    http_respond(req, 426, "application/json", body, sizeof(body) - 1,
                 "Sec-WebSocket-Version: 13\r\n");
}

/* ---------------------------------------------------------------------------------------------
 * Output
 */

static void ws_drop(struct ws_conn *ws)
{
    if (ws->dead)
        return;
    ws->dead = 1;
    http_takeover_release(ws->stream);
}

size_t ws_buffered(const ws_conn_t *ws)
{
    return ws->inflight + ws->out.len + wslay_event_get_queued_msg_length(ws->ctx);
}

static void on_ws_write(uv_write_t *w, int status)
{
    struct ws_wreq *wr = (struct ws_wreq *)w;
    struct ws_conn *ws = w->data;
    ws->inflight -= wr->len;
    free(wr->data);
    free(wr);
    if (ws->dead)
        return; /* cancelled by the release, or after it */
    if (status < 0) {
        ws_drop(ws);
        return;
    }
    if (ws->above_high && ws_buffered(ws) < WS_LOW_WATERMARK) {
        ws->above_high = 0;
        if (ws->cb.on_drain && !ws->closing) {
            ws->cb.on_drain(ws, ws->arg);
            if (ws->dead)
                return;
        }
    }
    /* The close handshake may be waiting for this write. */
    ws_progress(ws);
}

/* wslay send callback: frames are collected in `out`; never blocks. */
static ssize_t on_wslay_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                             int flags, void *user)
{
    struct ws_conn *ws = user;
    if (buf_append(&ws->out, data, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

/* Moves everything wslay has queued into one uv_write. */
static int ws_flush(struct ws_conn *ws)
{
    if (wslay_event_want_write(ws->ctx) && wslay_event_send(ws->ctx) < 0)
        return -ENOMEM; /* our callback fails only on allocation */
    if (ws->out.len == 0)
        return 0;
    struct ws_wreq *wr = malloc(sizeof(*wr));
    if (!wr)
        return -ENOMEM;
    wr->len = ws->out.len;
    wr->data = buf_steal(&ws->out);
    if (!wr->data) {
        free(wr);
        return -ENOMEM;
    }
    wr->req.data = ws;
    /* Not uv_buf_init(): its length parameter is an unsigned int. */
    uv_buf_t b = {.base = wr->data, .len = wr->len};
    int rc = uv_write(&wr->req, ws->stream, &b, 1, on_ws_write);
    if (rc < 0) {
        free(wr->data);
        free(wr);
        return rc;
    }
    ws->inflight += wr->len;
    return 0;
}

static void on_ws_shutdown(uv_shutdown_t *s, int status)
{
    struct ws_conn *ws = s->data;
    if (status < 0 && !ws->dead)
        ws_drop(ws);
}

/* Flushes output and moves the close handshake along; called after anything that may change the
 * state. */
static void ws_progress(struct ws_conn *ws)
{
    if (ws->dead)
        return;
    if (ws_flush(ws) < 0) {
        ws_drop(ws);
        return;
    }
    if (wslay_event_get_close_sent(ws->ctx)) {
        /* A close wslay started by itself (1002, 1007, 1009 on bad input): report its code. */
        if (!ws->close_code)
            ws->close_code = wslay_event_get_status_code_sent(ws->ctx);
        ws->closing = 1;
    }
    if (!ws->closing)
        return;
    if (!ws->deadline)
        ws_arm_timer(ws); /* switches to the close deadline */
    /* Close frames went both ways (or reading stopped on an error): half-close. The server ends
     * the TCP connection first (RFC 6455 7.1.1); waiting for the peer's FIN instead of closing
     * at once avoids a reset that could destroy our close frame before the peer read it.
     * uv_shutdown() itself waits for the pending writes. */
    if (!ws->shut && wslay_event_get_close_sent(ws->ctx) &&
        !wslay_event_get_read_enabled(ws->ctx)) {
        ws->shut = 1;
        ws->shutdown.data = ws;
        if (uv_shutdown(&ws->shutdown, ws->stream, on_ws_shutdown) < 0)
            ws_drop(ws);
    }
}

static int ws_queue(struct ws_conn *ws, uint8_t opcode, const void *data, size_t len)
{
    if (ws->dead || ws->closing)
        return -EPIPE;
    struct wslay_event_msg m = {opcode, data, len};
    int r = wslay_event_queue_msg(ws->ctx, &m);
    if (r == WSLAY_ERR_NO_MORE_MSG)
        return -EPIPE;
    if (r == WSLAY_ERR_NOMEM)
        return -ENOMEM;
    if (r < 0)
        return -EINVAL;
    if (ws_buffered(ws) > WS_HIGH_WATERMARK)
        ws->above_high = 1;
    ws_progress(ws);
    return 0;
}

int ws_send_text(ws_conn_t *ws, const char *data, size_t len)
{
    /* The peer would fail the connection with 1007. */
    if (!util_utf8_valid(data, len))
        return -EINVAL;
    return ws_queue(ws, WSLAY_TEXT_FRAME, data, len);
}

/* Frames one data message here and writes it: one copy instead of two (into wslay's queue, then
 * into `out`). wslay's queue is empty between calls (see the top), so flushing it first keeps
 * everything in order. A server's frames are never masked (RFC 6455 5.1). */
static int ws_write_frame(struct ws_conn *ws, uint8_t opcode, const void *data, size_t len)
{
    uint8_t hdr[10];
    size_t h = 0;
    if (ws->dead || ws->closing || wslay_event_get_close_sent(ws->ctx))
        return -EPIPE;
    if (ws_flush(ws) < 0) {
        ws_drop(ws);
        return -EPIPE;
    }
    hdr[h++] = (uint8_t)(0x80 | opcode); /* FIN */
    if (len < 126) {
        hdr[h++] = (uint8_t)len;
    } else if (len <= 0xffff) {
        hdr[h++] = 126;
        hdr[h++] = (uint8_t)(len >> 8);
        hdr[h++] = (uint8_t)len;
    } else {
        hdr[h++] = 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    struct ws_wreq *wr = malloc(sizeof(*wr));
    char *frame = malloc(h + len);
    if (!wr || !frame) {
        free(wr);
        free(frame);
        return -ENOMEM;
    }
    memcpy(frame, hdr, h);
    memcpy(frame + h, data, len);
    wr->data = frame;
    wr->len = h + len;
    wr->req.data = ws;
    uv_buf_t b = {.base = frame, .len = wr->len};
    int rc = uv_write(&wr->req, ws->stream, &b, 1, on_ws_write);
    if (rc < 0) {
        free(frame);
        free(wr);
        ws_drop(ws);
        return -EPIPE;
    }
    ws->inflight += wr->len;
    if (ws_buffered(ws) > WS_HIGH_WATERMARK)
        ws->above_high = 1;
    return 0;
}

int ws_send_text_valid(ws_conn_t *ws, const char *data, size_t len)
{
    return ws_write_frame(ws, WSLAY_TEXT_FRAME, data, len);
}

int ws_send_binary(ws_conn_t *ws, const void *data, size_t len)
{
    return ws_queue(ws, WSLAY_BINARY_FRAME, data, len);
}

static int code_sendable(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* Queues our close frame; the caller runs ws_progress(). */
static void ws_start_close(struct ws_conn *ws, int code, const char *reason)
{
    if (code != 0 && !code_sendable(code))
        code = 1000;
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > MAX_REASON)
        rlen = util_utf8_complete_prefix(reason, MAX_REASON);
    if (rlen && !util_utf8_valid(reason, rlen))
        rlen = 0; /* the peer would fail the connection over it */
    ws->closing = 1;
    ws->close_code = code ? code : 1005;
    int r = wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason, rlen);
    if (r < 0 && r != WSLAY_ERR_NO_MORE_MSG)
        ws_drop(ws); /* out of memory: no close frame, just end it */
}

void ws_close(ws_conn_t *ws, int code, const char *reason)
{
    if (ws->dead || ws->closing)
        return;
    ws_start_close(ws, code, reason);
    ws_progress(ws);
}

/* ---------------------------------------------------------------------------------------------
 * Input
 */

/* Whether the reason of the complete close frame at `h` (header of hlen bytes, then the payload)
 * is UTF-8. */
static int close_reason_valid(const unsigned char *h, size_t hlen, size_t plen)
{
    char reason[125];
    if (plen <= 2)
        return 1;
    const unsigned char *mask = (h[1] & 0x80) ? h + hlen - 4 : NULL;
    for (size_t i = 2; i < plen; i++)
        reason[i - 2] = (char)(mask ? h[hlen + i] ^ mask[i % 4] : h[hlen + i]);
    return util_utf8_valid(reason, plen - 2);
}

static void guard_scan(struct guard *g, const unsigned char *p, size_t len)
{
    while (!g->bad && g->off < len) {
        if (g->left > 0) {
            size_t n = len - g->off;
            if (n > g->left)
                n = (size_t)g->left;
            g->off += n;
            g->left -= n;
            g->valid = g->off;
            continue;
        }
        const unsigned char *h = p + g->off;
        size_t avail = len - g->off;
        if (avail < 2)
            break;
        unsigned fin = h[0] & 0x80, opcode = h[0] & 0x0f, len7 = h[1] & 0x7f;
        /* Control frames: not fragmented, at most 125 bytes, and a close body is empty or
         * starts with a 2-byte code. */
        if ((opcode & 0x08) &&
            (!fin || len7 > 125 || (opcode == WSLAY_CONNECTION_CLOSE && len7 == 1))) {
            g->bad = WSLAY_CODE_PROTOCOL_ERROR;
            break;
        }
        size_t hlen = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((h[1] & 0x80) ? 4 : 0);
        if (avail < hlen)
            break;
        uint64_t plen = len7;
        if (len7 == 126) {
            plen = (uint64_t)h[2] << 8 | h[3];
            if (plen < 126) {
                g->bad = WSLAY_CODE_PROTOCOL_ERROR; /* lengths must use the shortest form */
                break;
            }
        } else if (len7 == 127) {
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = plen << 8 | h[2 + i];
            if (plen < 65536 || (plen >> 63)) {
                g->bad = WSLAY_CODE_PROTOCOL_ERROR;
                break;
            }
        }
        if (opcode == WSLAY_CONNECTION_CLOSE && !g->has_close) {
            if (avail < hlen + plen)
                break; /* held back until complete */
            if (!close_reason_valid(h, hlen, (size_t)plen)) {
                g->bad = WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA;
                break;
            }
            g->has_close = 1;
            g->close_at = g->off;
            g->off += hlen + (size_t)plen;
            g->valid = g->off;
            continue;
        }
        g->off += hlen;
        g->left = plen;
        g->valid = g->off;
    }
}

/* wslay recv callback: hands out the checked part of `in`. */
static ssize_t on_wslay_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                             void *user)
{
    struct ws_conn *ws = user;
    size_t avail = ws->g.valid - ws->in_used;
    if (avail == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (len > avail)
        len = avail;
    /* Stop short of the close frame: wslay then asks for more only once it has used everything
     * before it, with its whole buffer free, and gets the close frame in one piece (see struct
     * guard). */
    if (ws->g.has_close && ws->in_used < ws->g.close_at && ws->g.close_at - ws->in_used < len)
        len = ws->g.close_at - ws->in_used;
    memcpy(buf, ws->in.data + ws->in_used, len);
    ws->in_used += len;
    return (ssize_t)len;
}

static void on_wslay_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a,
                         void *user)
{
    struct ws_conn *ws = user;
    if (a->opcode == WSLAY_TEXT_FRAME || a->opcode == WSLAY_BINARY_FRAME) {
        /* After ws_close() the owner expects nothing more. */
        if (ws->closing || ws->dead || !ws->cb.on_message)
            return;
        const char *data = a->msg ? (const char *)a->msg : "";
        ws->cb.on_message(ws, a->opcode == WSLAY_BINARY_FRAME, data, a->msg_length, ws->arg);
    } else if (a->opcode == WSLAY_CONNECTION_CLOSE && !ws->closing) {
        /* The peer started the close; wslay has queued the echo. */
        ws->closing = 1;
        ws->close_code = a->status_code ? a->status_code : 1005;
    }
    /* Pings are answered by wslay; pongs only count as traffic (last_recv). */
}

/* Feeds `in` to wslay. */
static void ws_process_input(struct ws_conn *ws)
{
    if (!ws->started || ws->dead || ws->in.len == 0)
        return;
    if (wslay_event_get_read_enabled(ws->ctx)) {
        guard_scan(&ws->g, (const unsigned char *)ws->in.data, ws->in.len);
        int r = wslay_event_recv(ws->ctx);
        buf_consume(&ws->in, ws->in_used);
        ws->g.off -= ws->in_used;
        ws->g.valid -= ws->in_used;
        ws->g.close_at -= ws->g.has_close ? ws->in_used : 0;
        ws->in_used = 0;
        if (r == WSLAY_ERR_NOMEM) {
            if (!ws->close_code)
                ws->close_code = 1011;
            ws_drop(ws);
            return;
        }
        /* Any other failure is a framing error the guard let through; wslay has queued a close
         * frame (without a code) and stopped reading. */
        if (r < 0 && !ws->close_code)
            ws->close_code = WSLAY_CODE_PROTOCOL_ERROR;
        if (ws->g.bad && wslay_event_get_read_enabled(ws->ctx)) {
            /* wslay has read everything before the bad frame. */
            wslay_event_shutdown_read(ws->ctx);
            wslay_event_queue_close(ws->ctx, (uint16_t)ws->g.bad, NULL, 0);
            if (!ws->close_code)
                ws->close_code = ws->g.bad;
        }
    }
    if (!wslay_event_get_read_enabled(ws->ctx)) {
        /* Nothing more is parsed (close received, or an error): input is only read to notice
         * the peer's FIN, and dropped. */
        ws->closing = 1;
        buf_free(&ws->in);
        memset(&ws->g, 0, sizeof(ws->g));
    } else if (ws->in.len == 0) {
        buf_free(&ws->in); /* idle connections hold no read buffer */
    }
}

static void on_ws_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct ws_conn *ws = h->data;
    if (buf_reserve(&ws->in, READ_CHUNK) < 0) {
        b->base = NULL; /* libuv reports UV_ENOBUFS */
        b->len = 0;
        return;
    }
    b->base = ws->in.data + ws->in.len;
    b->len = ws->in.cap - ws->in.len - 1; /* keep buf_t's terminating NUL */
}

static void on_ws_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct ws_conn *ws = s->data;
    if (ws->dead)
        return;
    if (nread < 0) {
        /* EOF, reset or no memory. After a close handshake this is the expected end; before,
         * the peer vanished (close_code stays 0: 1006). */
        ws_drop(ws);
        return;
    }
    if (nread == 0)
        return;
    ws->in.len += (size_t)nread;
    ws->in.data[ws->in.len] = '\0';
    ws->last_recv = uv_now(s->loop);
    ws_process_input(ws);
    ws_progress(ws);
}

/* ---------------------------------------------------------------------------------------------
 * Timer and life cycle
 */

static void on_ws_timer(uv_timer_t *t);

static void ws_start(struct ws_conn *ws)
{
    ws->started = 1;
    /* Bytes that came with the handshake go first, then the socket. */
    ws_process_input(ws);
    ws_progress(ws);
    if (ws->dead)
        return;
    if (uv_read_start(ws->stream, on_ws_alloc, on_ws_read) < 0)
        ws_drop(ws);
}

static void ws_arm_timer(struct ws_conn *ws)
{
    if (ws->dead)
        return;
    uint64_t now = uv_now(ws->timer->loop);
    uint64_t due;
    if (!ws->started) {
        due = now;
    } else if (ws->closing) {
        if (!ws->deadline) {
            ws->deadline = 1;
            ws->close_deadline = now + ws->close_ms;
        }
        due = ws->close_deadline;
    } else {
        uint64_t idle_due = ws->last_recv + ws->idle_ms;
        uint64_t quiet = ws->last_recv > ws->last_ping ? ws->last_recv : ws->last_ping;
        uint64_t ping_due = quiet + ws->ping_ms;
        due = idle_due < ping_due ? idle_due : ping_due;
    }
    uv_timer_start(ws->timer, on_ws_timer, due > now ? due - now : 0, 0);
}

static void on_ws_timer(uv_timer_t *t)
{
    struct ws_conn *ws = t->data;
    if (ws->dead)
        return;
    if (!ws->started) {
        /* The kick from ws_accept(): run from the loop so that no callback of the owner runs
         * before ws_accept() has returned. */
        ws_start(ws);
        ws_arm_timer(ws);
        return;
    }
    uint64_t now = uv_now(t->loop);
    if (ws->closing) {
        if (ws->deadline && now >= ws->close_deadline) {
            ws_drop(ws); /* the peer did not finish the close handshake in time */
            return;
        }
    } else if (now - ws->last_recv >= ws->idle_ms) {
        ws_drop(ws); /* silent for too long, pings unanswered: reported as 1006 */
        return;
    } else if (now - (ws->last_recv > ws->last_ping ? ws->last_recv : ws->last_ping) >=
               ws->ping_ms) {
        struct wslay_event_msg ping = {WSLAY_PING, NULL, 0};
        if (wslay_event_queue_msg(ws->ctx, &ping) == 0) {
            ws->last_ping = now;
            ws_progress(ws);
        }
    }
    ws_arm_timer(ws);
}

static void on_server_closing(void *owner)
{
    struct ws_conn *ws = owner;
    if (ws->dead)
        return;
    if (!ws->closing)
        ws_start_close(ws, WSLAY_CODE_GOING_AWAY, "going away");
    ws_progress(ws);
}

static void on_released(void *owner)
{
    struct ws_conn *ws = owner;
    ws->dead = 1;
    int code = ws->close_code ? ws->close_code : WSLAY_CODE_ABNORMAL_CLOSURE;
    log_debug("ws: %s closed (%d)", ws->peer, code);
    if (ws->cb.on_close)
        ws->cb.on_close(ws, code, ws->arg);
    wslay_event_context_free(ws->ctx);
    buf_free(&ws->in);
    buf_free(&ws->out);
    free(ws);
}

static const struct http_takeover_ops takeover_ops = {
    .server_closing = on_server_closing,
    .closed = on_released,
};

ws_conn_t *ws_accept(http_req_t *req, const struct ws_callbacks *cb, void *arg, size_t max_message)
{
    char key[KEY_LEN + 1], accept[ACCEPT_LEN + 1];
    const char *why = NULL;
    int status = check_handshake(req, key, &why);
    if (status == 426) {
        respond_426(req);
        return NULL;
    }
    if (status) {
        http_respond_error(req, status, "bad_request", "%s", why);
        return NULL;
    }

    struct ws_conn *ws = calloc(1, sizeof(*ws));
    buf_t resp = BUF_INIT;
    /* Only clients mask, so wslay never asks a server for a mask (genmask stays NULL). */
    struct wslay_event_callbacks wcb = {
        .recv_callback = on_wslay_recv,
        .send_callback = on_wslay_send,
        .on_msg_recv_callback = on_wslay_msg,
    };
    if (!ws || accept_value(key, accept) < 0 ||
        wslay_event_context_server_init(&ws->ctx, &wcb, ws) != 0 ||
        buf_appendf(&resp,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                    accept) < 0) {
        if (ws)
            wslay_event_context_free(ws->ctx);
        free(ws);
        buf_free(&resp);
        http_respond_error(req, 503, "unavailable", "out of memory");
        return NULL;
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx,
                                               max_message ? max_message : WS_DEFAULT_MAX_MESSAGE);
    if (cb)
        ws->cb = *cb;
    ws->arg = arg;
    ws->ping_ms = WS_PING_MS;
    ws->idle_ms = WS_IDLE_MS;
    ws->close_ms = WS_CLOSE_MS;
    snprintf(ws->peer, sizeof(ws->peer), "%s", http_req_peer(req));

    struct http_takeover tk;
    int rc = http_req_takeover(req, resp.data, resp.len, &takeover_ops, ws, &tk);
    buf_free(&resp);
    if (rc < 0) {
        wslay_event_context_free(ws->ctx);
        free(ws);
        return NULL;
    }
    ws->stream = tk.stream;
    ws->timer = tk.timer;
    ws->in = tk.pending;
    ws->stream->data = ws;
    ws->timer->data = ws;
    ws->last_recv = ws->last_ping = uv_now(ws->timer->loop);
    log_debug("ws: %s connected", ws->peer);
    ws_arm_timer(ws); /* the start-up kick */
    return ws;
}

const char *ws_peer(const ws_conn_t *ws)
{
    return ws->peer;
}

void ws_set_timeouts(ws_conn_t *ws, unsigned ping_ms, unsigned idle_ms, unsigned close_ms)
{
    if (ping_ms)
        ws->ping_ms = ping_ms;
    if (idle_ms)
        ws->idle_ms = idle_ms;
    if (close_ms)
        ws->close_ms = close_ms;
    if (ws->started && !ws->closing)
        ws_arm_timer(ws);
}
