/*
 * ws — WebSocket connections (RFC 6455, server side) on top of the HTTP server. wslay does the
 * framing; this module does the handshake, the I/O on the connection taken over from net/http,
 * keep-alive pings, the close handshake and output accounting.
 *
 * Everything runs on the loop thread of the HTTP server the connection came from.
 *
 * Lifetime: a ws_conn_t exists from a successful ws_accept() until on_close returns; it is freed
 * right after that, so the owner must drop its pointer there. on_close is called exactly once and
 * never from inside a ws_*() call (always from the loop), so the ws pointer stays valid in the
 * code that calls ws_send()/ws_close(). Calling ws_send()/ws_close() from any callback, on_close
 * included, is allowed (they are no-ops or fail with -EPIPE once the connection is closing).
 *
 * Closing: the peer's close frame is answered and reported with its code (1005 when it carried
 * none). ws_close() sends a close frame and waits up to 5 s for the peer's. A peer that breaks the
 * protocol gets a close frame with 1002 (framing errors: unmasked frame, unknown opcode, reserved
 * bits, fragmented or oversized control frame, ...), 1007 (text or a close reason that is not
 * UTF-8) or 1009 (a message over `max_message`). After the close handshake the server half-closes
 * the TCP connection, and drops it when the peer closes its end or the close timeout expires. A
 * peer silent for 30 s is pinged; one silent for 90 s is dropped (reported as 1006).
 *
 * Not supported: extensions (permessage-deflate is not negotiated, so reserved bits are errors)
 * and subprotocols (Sec-WebSocket-Protocol is never answered).
 *
 * Errors: functions returning int give 0 or -errno.
 */
#ifndef WARREN_NET_WS_H
#define WARREN_NET_WS_H

#include <stddef.h>

#include "net/http.h"

typedef struct ws_conn ws_conn_t;

struct ws_callbacks {
    /* A complete message (fragments reassembled). Text messages are valid UTF-8 (checked).
     * `data` is valid only during the call (not NUL-terminated; "" for an empty message). Not
     * called any more once the connection is closing (ws_close(), server shutdown). */
    void (*on_message)(ws_conn_t *ws, int binary, const char *data, size_t len, void *arg);
    /* The connection is gone (close handshake done, peer vanished, or error). Called exactly
     * once; `ws` is freed right after it returns. `code` is the close code received (the peer
     * started the close) or sent (we did: ws_close(), 1001 on server shutdown, 1002/1007/1009 on
     * errors); 1006 if the connection ended without a close frame either way (peer vanished,
     * idle timeout, I/O error). */
    void (*on_close)(ws_conn_t *ws, int code, void *arg);
    /* Optional: the queued output fell below WS_LOW_WATERMARK after having been above
     * WS_HIGH_WATERMARK (for producers that pause when ws_buffered() is high). */
    void (*on_drain)(ws_conn_t *ws, void *arg);
};

#define WS_HIGH_WATERMARK (1u << 20)
#define WS_LOW_WATERMARK (256u << 10)

/* Defaults: a reassembled incoming message (max_message 0), keep-alive and close timings. */
#define WS_DEFAULT_MAX_MESSAGE (16u << 20)
#define WS_PING_MS 30000u
#define WS_IDLE_MS 90000u
#define WS_CLOSE_MS 5000u

/* True when the request asks for a WebSocket upgrade (an `Upgrade` header with the token
 * "websocket" and a `Connection` header with the token "upgrade"), so that a route can give a
 * clear 400 to anything else. */
int ws_is_upgrade(const http_req_t *req);

/* Called from an HTTP handler with a request that asks for a WebSocket upgrade. Validates it
 * (GET, HTTP/1.1 or later, Upgrade: websocket, Connection contains "upgrade",
 * Sec-WebSocket-Version: 13, a 16-byte base64 Sec-WebSocket-Key). On success answers 101 with
 * Sec-WebSocket-Accept, takes over the connection and returns the ws (the request is consumed).
 * On failure answers 400 (or 426 with Sec-WebSocket-Version: 13 for a wrong or missing version,
 * 503 when out of memory) and returns NULL (request consumed); also NULL if the client is already
 * gone. `max_message` bounds a reassembled incoming message (larger → close 1009); 0 means
 * WS_DEFAULT_MAX_MESSAGE. `cb` is copied; `arg` is passed to the callbacks. No callback runs
 * before ws_accept() has returned: messages that arrived with the handshake are delivered from the
 * loop afterwards. */
ws_conn_t *ws_accept(http_req_t *req, const struct ws_callbacks *cb, void *arg, size_t max_message);

/* Queue a message; -EPIPE once closing/closed, -EINVAL for text that is not valid UTF-8,
 * -ENOMEM. Data is copied. */
int ws_send_text(ws_conn_t *ws, const char *data, size_t len);
/* ws_send_text() for text the caller built as valid UTF-8 (base64, escaped JSON of sanitized
 * text): the hot path of streaming, where a second pass over every byte is measurable. */
int ws_send_text_valid(ws_conn_t *ws, const char *data, size_t len);
int ws_send_binary(ws_conn_t *ws, const void *data, size_t len);

/* Bytes queued for the socket and not yet written: handed to uv_write and not completed, plus
 * what wslay still holds (frame headers included once framed). */
size_t ws_buffered(const ws_conn_t *ws);

/* Starts the close handshake (or closes at once if the peer is gone); on_close follows
 * (asynchronously, never from inside this call). `code` is sent as is if it may appear on the
 * wire (1000-1003, 1007-1014, 3000-4999), otherwise 1000 is sent; 0 sends a close frame without
 * a code. `reason` (NULL for none) is cut to 123 bytes at a UTF-8 character boundary. A no-op if
 * the connection is already closing. */
void ws_close(ws_conn_t *ws, int code, const char *reason);

/* Peer address text, like http_req_peer. */
const char *ws_peer(const ws_conn_t *ws);

/* Overrides the keep-alive and close timings of this connection (defaults WS_PING_MS,
 * WS_IDLE_MS, WS_CLOSE_MS); 0 keeps the current value. Mainly for tests. */
void ws_set_timeouts(ws_conn_t *ws, unsigned ping_ms, unsigned idle_ms, unsigned close_ms);

#endif
