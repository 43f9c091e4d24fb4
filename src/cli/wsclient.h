/*
 * wsclient — a small blocking WebSocket client (RFC 6455, client side) for the `warren` CLI.
 *
 * The connection is made by the HTTP client (src/cli/client.h, so http:// and unix: URLs both
 * work) and upgraded: a random 16-byte key is sent and the server's Sec-WebSocket-Accept is
 * checked against base64(sha1(key + GUID)). After that the socket belongs to the `wsc`.
 *
 * Designed to be multiplexed with other file descriptors by the caller:
 *   - `w->fd` is the socket. Poll it for POLLIN, and for POLLOUT while wsc_pending_out() > 0.
 *   - wsc_recv() with a timeout of 0 never blocks: it parses what has arrived (reading the socket
 *     without waiting) and returns one complete message or -ETIMEDOUT. Call it until -ETIMEDOUT
 *     after the socket became readable: several messages may arrive in one read.
 *   - wsc_send() queues one frame (masked, as a client must) and sends what the socket accepts
 *     without blocking; the rest goes out with wsc_flush() or during later wsc_recv() waits.
 * Fragmented messages are reassembled, pings are answered with pongs (pongs are ignored), and a
 * close frame from the server is answered and returned as a WSC_CLOSE message. Extensions and
 * subprotocols are not negotiated.
 *
 * Waiting uses ppoll() with `wait_mask` when it is set and gives up with -EINTR when `*cancel`
 * is non-zero (both copied from the client at wsc_connect(); see client.h).
 *
 * Functions return 0 or a negative errno; `w->error` describes the last failure.
 */
#ifndef WARREN_CLI_WSCLIENT_H
#define WARREN_CLI_WSCLIENT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "cli/client.h"
#include "core/buf.h"

enum wsc_opcode {
    WSC_CONT = 0x0,
    WSC_TEXT = 0x1,
    WSC_BINARY = 0x2,
    WSC_CLOSE = 0x8,
    WSC_PING = 0x9,
    WSC_PONG = 0xA,
};

/* Default bound of a reassembled incoming message. */
#define WSC_DEFAULT_MAX_MESSAGE ((size_t)64 << 20)

struct wsc {
    int fd;             /* the connection (owned), -1 when closed */
    buf_t in;           /* received bytes not parsed yet */
    buf_t out;          /* framed bytes not sent yet */
    buf_t frag;         /* payload of a fragmented message being reassembled */
    int frag_opcode;    /* its opcode, 0 when none is in progress */
    bool close_sent;    /* we sent a close frame (nothing more may be sent) */
    bool close_rcvd;    /* the server's close frame arrived */
    size_t max_message; /* bound of a reassembled message (WSC_DEFAULT_MAX_MESSAGE by default) */
    const sigset_t *wait_mask;     /* see the header comment; borrowed */
    volatile sig_atomic_t *cancel; /* borrowed */
    char error[256];               /* description of the last failure */
};

struct wsc_msg {
    int opcode;     /* WSC_TEXT, WSC_BINARY or WSC_CLOSE */
    buf_t data;     /* the payload (owned; NUL-terminated once non-empty); the reason of a close */
    int close_code; /* WSC_CLOSE only: the code received (1005 when the frame had none) */
};

/* Prepare an unconnected `w` (always succeeds; wsc_free() is then safe). */
void wsc_init(struct wsc *w);

/* Open a new connection with `c` (its URL, wait_mask and cancel are used; `c` stays usable for
 * other requests) and upgrade `GET path` to a WebSocket. `resp` receives the HTTP answer and must
 * be released with client_response_free() in every case.
 * Returns 0 (connected), -EREMOTEIO when the server answered with a status other than 101 (the
 * answer is in `resp`: e.g. a 404 error document), -EPROTO for a 101 answer that is not a valid
 * handshake, or the errors of client_request() (c->connect_failed tells whether connecting
 * failed). w->error describes any failure. `w` must be initialised (wsc_init) and unconnected. */
int wsc_connect(struct wsc *w, struct client *c, const char *path, struct client_response *resp);

/* Queue one frame (opcode WSC_TEXT, WSC_BINARY, WSC_PING, WSC_PONG; use wsc_close() for close)
 * and send as much as possible without blocking. `data` is copied. Returns 0, -EPIPE after a
 * close was sent or the connection is gone, -EINVAL (control payload over 125 bytes), -ENOMEM,
 * or a socket error (the connection is then unusable). */
int wsc_send(struct wsc *w, int opcode, const void *data, size_t len);

/* Bytes queued and not yet sent. */
size_t wsc_pending_out(const struct wsc *w);

/* Send queued bytes, waiting up to timeout_ms (-1: no limit, 0: only what goes without waiting).
 * Returns 0 when everything is sent, -ETIMEDOUT, -EINTR (cancelled), or a socket error. */
int wsc_flush(struct wsc *w, int timeout_ms);

/* Receive one message into `m` (initialised with wsc_msg_init; its previous content is
 * replaced), waiting up to timeout_ms (-1: no limit, 0: do not wait). Returns:
 *   0            `m` holds a WSC_TEXT, WSC_BINARY or WSC_CLOSE message (a close is answered
 *                automatically; nothing can be sent after it and the next calls give -EPIPE)
 *   -ETIMEDOUT   no complete message in time
 *   -ECONNRESET  the connection ended without a close frame
 *   -EPROTO      the server broke the protocol (a 1002 close was sent)
 *   -EMSGSIZE    a message over max_message (a 1009 close was sent)
 *   -EPIPE       the close handshake is over or the connection is closed
 *   -EINTR       cancelled; other negative errno values for socket errors. */
int wsc_recv(struct wsc *w, struct wsc_msg *m, int timeout_ms);

/* Start (or finish) the close handshake: send a close frame with `code` (0: none) and `reason`
 * (may be NULL) unless one was sent, then wait up to timeout_ms for the server's close frame
 * (discarding messages) or the end of the connection, and close the socket. Returns 0 or -errno
 * (the socket is closed either way). */
int wsc_close(struct wsc *w, int code, const char *reason, int timeout_ms);

/* Close the socket at once (no handshake) and release everything `w` owns; it is then as after
 * wsc_init(). Safe to call twice. */
void wsc_free(struct wsc *w);

void wsc_msg_init(struct wsc_msg *m);
void wsc_msg_free(struct wsc_msg *m);

#endif
