/*
 * http — the HTTP/1.1 server (llhttp for parsing, libuv for I/O).
 *
 * Everything here runs on the loop thread that owns the server.
 *
 * Connections: keep-alive, pipelining (requests on one connection are handled strictly one after
 * another; the next one is parsed only after the previous response was queued), Content-Length and
 * chunked request bodies, `Expect: 100-continue`, `Connection: close`, HTTP/1.0. Limits: header
 * bytes (→ 431), body bytes (→ 413), concurrent connections (excess connections get a 503 and are
 * closed), idle keep-alive timeout. Parse errors answer 400 and close the connection. Output is
 * queued and written with uv_write; a client that stops reading never blocks others.
 *
 * Requests: a complete request (headers and whole body) is passed to the handler, unless the
 * stream hook (http_server_set_stream_hook) claims it when its headers are complete: then the body
 * is not buffered and the handler reads it with http_req_body_start() (see "Streaming request
 * bodies" below). The handler owns the obligation to answer: it must call exactly one
 * http_respond*() for every request, or http_respond_start() ... http_respond_end(), now or
 * later. The http_req_t stays valid until that final call, even if the client has gone in
 * between; http_req_set_abort_cb() lets the handler hear that the client disconnected so it can
 * cancel its work (it must still respond; the answer is then discarded and the request freed).
 *
 * Errors: functions returning int give 0 or -errno.
 */
#ifndef WARREN_NET_HTTP_H
#define WARREN_NET_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <jansson.h>

#include "core/buf.h"

typedef struct http_server http_server_t;
typedef struct http_req http_req_t;

typedef void (*http_handler_fn)(http_req_t *req, void *ctx);
typedef void (*http_abort_fn)(http_req_t *req, void *arg);

struct http_limits {
    size_t max_header_bytes;  /* request line + headers; default 16 KiB */
    size_t max_body_bytes;    /* default 16 MiB */
    unsigned max_connections; /* default 1024 */
    unsigned idle_timeout_ms; /* keep-alive idle timeout; default 60000 */
};

/* Creates a server on `loop`; a NULL `limits` (or zero members) means the defaults. If SIGPIPE
 * still has its default disposition it is set to SIG_IGN (writes to a reset connection must fail
 * with EPIPE, not kill the process). */
int http_server_new(http_server_t **out, uv_loop_t *loop, const struct http_limits *limits,
                    http_handler_fn handler, void *ctx);
/* Starts listening on "HOST:PORT" (IPv4, or [IPv6]:PORT) or "unix:/path". Port 0 picks a free one.
 * May be called more than once for several listeners. */
int http_server_listen(http_server_t *srv, const char *addr);
/* The port the first TCP listener is bound to (after listen), or -1. */
int http_server_port(const http_server_t *srv);
/* Number of open client connections. */
unsigned http_server_connections(const http_server_t *srv);
/* Stops accepting and closes every connection (pending requests get their abort callback). When
 * all handles are closed, `done(arg)` is called; the server may then be freed with
 * http_server_free(). Requests still unanswered stay valid until answered. Taken-over connections
 * (WebSockets, see below) are asked to close and `done` waits for them (a WebSocket finishes its
 * close handshake first, bounded by its close timeout). */
void http_server_close(http_server_t *srv, void (*done)(void *arg), void *arg);
void http_server_free(http_server_t *srv);

/* Request accessors. Strings are NUL-terminated and owned by the request. */
const char *http_req_method(const http_req_t *req);    /* "GET", "POST", ... */
const char *http_req_path(const http_req_t *req);      /* percent-decoded, without the query */
const char *http_req_raw_query(const http_req_t *req); /* as sent, without '?'; "" if none */
/* Value of query parameter `name` (percent- and '+'-decoded); NULL if absent; "" if no '='. */
const char *http_req_query(const http_req_t *req, const char *name);
/* Number of query parameters, and the i-th name/value (decoded). */
size_t http_req_query_count(const http_req_t *req);
const char *http_req_query_name(const http_req_t *req, size_t i);
const char *http_req_query_value(const http_req_t *req, size_t i);
/* Header lookup, case-insensitive; repeated headers are joined with ", ". NULL if absent. */
const char *http_req_header(const http_req_t *req, const char *name);
/* The complete body (NUL-terminated past len for convenience). */
const char *http_req_body(const http_req_t *req, size_t *len);
/* Peer address as text ("127.0.0.1:53412" or "unix"). */
const char *http_req_peer(const http_req_t *req);
/* HTTP version of the request as major * 10 + minor: 10 for HTTP/1.0, 11 for HTTP/1.1. */
int http_req_version(const http_req_t *req);
/* True once the client has disconnected. */
int http_req_gone(const http_req_t *req);
void http_req_set_abort_cb(http_req_t *req, http_abort_fn cb, void *arg);

/* Responses. Each consumes the request (it must not be used afterwards). Bodies are copied.
 * `extra_headers` is NULL or a string of complete "Name: value\r\n" lines. */
void http_respond(http_req_t *req, int status, const char *content_type, const void *body,
                  size_t len, const char *extra_headers);
/* JSON body; steals the reference to `obj` (which may be NULL for an empty body). */
void http_respond_json(http_req_t *req, int status, json_t *obj);
/* `{"error":{"code":code,"message":message}}` with the given status. */
void http_respond_error(http_req_t *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---------------------------------------------------------------------------------------------
 * Streaming request bodies.
 *
 * The stream hook runs on the loop thread for every request (except upgrades) as soon as its
 * headers are complete; method, path, query, headers and http_req_content_length() are available.
 * It must only inspect the request (never answer it). If it returns 1 and the request has a body,
 * the request goes to the handler right away: the body is neither buffered nor subject to
 * max_body_bytes (the handler enforces its own limit), `Expect: 100-continue` is not answered
 * yet, and http_req_body() is empty. A request without a body, or one the hook declines, is
 * delivered whole as usual. `ctx` is the server's handler context.
 *
 * The handler then either reads the body with http_req_body_start(), or answers without reading
 * it (early rejection: 404, 413, ...). Answering before the body ended discards the rest of it:
 * if what is left is small (a Content-Length body with at most 64 KiB unread, and no unanswered
 * 100-continue) it is skipped and the connection kept alive; otherwise the response carries
 * `Connection: close` (when it was not started earlier) and the connection is closed after it
 * (after a short linger that discards input, so the response is not destroyed by a TCP reset).
 * No body callback runs after the request was answered. Until the handler starts the body the
 * server reads ahead at most 64 KiB of it (enough to notice a hang-up). No idle timeout applies
 * while the handler holds a request, so a handler streaming from a slow client bounds the time
 * itself if it must.
 */
typedef int (*http_stream_hook_fn)(http_req_t *req, void *ctx);
typedef void (*http_body_data_fn)(http_req_t *req, const char *data, size_t len, void *arg);
typedef void (*http_body_end_fn)(http_req_t *req, int err, void *arg);

/* Installs (or, with NULL, removes) the stream hook. */
void http_server_set_stream_hook(http_server_t *srv, http_stream_hook_fn wants_stream);

/* 1 if the request was handed over before its body (claimed by the stream hook), else 0. */
int http_req_streaming(const http_req_t *req);
/* The declared Content-Length; -1 for a chunked body; 0 when there is no body. */
int64_t http_req_content_length(const http_req_t *req);

/* Starts delivering the body: `on_data` gets the decoded bytes (chunked coding removed; trailers
 * are dropped) as they arrive, in pieces of any size (the data is valid only during the call),
 * then `on_end` runs once, unless the request was answered first: err 0 after the whole body, or
 * err < 0 if the body cannot complete (-ECONNRESET or another -errno: the client went away or
 * half-closed early, -EBADMSG: malformed chunked coding, after which the connection is closed
 * once answered; -ECONNABORTED: the server is closing). If the client asked for
 * `100-continue`, the 100 is sent now. Callbacks never run from inside this call (nor from
 * http_req_body_pause()); they start from the loop. The callbacks may answer the request (after
 * which no further callback runs). Calling this a second time does nothing. Works on any request:
 * for one that was not streamed, the buffered body is delivered as one piece, then on_end(0). On a
 * client disconnect on_end runs before the abort callback (which runs only if on_end did not answer
 * the request). */
void http_req_body_start(http_req_t *req, http_body_data_fn on_data, http_body_end_fn on_end,
                         void *arg);
/* Backpressure: while paused no on_data (and no successful on_end) runs and the socket is not
 * read (the client is throttled by TCP; a hang-up is therefore noticed only after resuming). May
 * be called from on_data. A paused request still receives on_end with an error when the
 * connection fails or the server closes. */
void http_req_body_pause(http_req_t *req, int paused);

/* ---------------------------------------------------------------------------------------------
 * Streaming responses: http_respond_start(), any number of http_respond_write(), then
 * http_respond_end(), which consumes the request (http_respond*() after http_respond_start() is
 * a bug; it only ends the response). The connection stays busy (later pipelined
 * requests wait) until http_respond_end(). The abort callback and http_req_gone() work as for
 * any request; after a disconnect, writes fail with -EPIPE and the handler must still call
 * http_respond_end(). The writer should keep http_respond_buffered() bounded, e.g. write while
 * it is below HTTP_RESPOND_HIGH_WATER and otherwise wait for the drain callback.
 */
#define HTTP_RESPOND_HIGH_WATER (1024 * 1024)
#define HTTP_RESPOND_LOW_WATER (256 * 1024)

/* Sends the status line and headers. `content_length` >= 0 sends a Content-Length (then exactly
 * that many bytes must be written); -1 uses chunked coding (for an HTTP/1.0 client: no framing,
 * the body ends when the connection closes). For HEAD requests and for 1xx/204/304 statuses only
 * the headers are sent and writes are accepted and discarded. Returns 0, -EPIPE if the client is
 * gone (the request must still be ended), -EINVAL if a response was already started, or another
 * -errno (the connection is then closed soon after; the request must still be ended). */
int http_respond_start(http_req_t *req, int status, const char *content_type,
                       int64_t content_length, const char *extra_headers);
/* Queues `len` bytes (copied) as body data. Returns 0, -EPIPE if the client is gone, -EINVAL
 * before http_respond_start() or when it would exceed the announced Content-Length (nothing is
 * written then), or another -errno (the connection is then closed). */
int http_respond_write(http_req_t *req, const void *data, size_t len);
/* Bytes queued on the connection whose writes have not completed yet (0 once the client is
 * gone). This is the memory the response holds in the server. */
size_t http_respond_buffered(const http_req_t *req);
/* `cb` runs (from the loop) each time the queued output falls below HTTP_RESPOND_LOW_WATER after
 * a write left at least HTTP_RESPOND_HIGH_WATER queued. It does not run after a disconnect (use
 * the abort callback). NULL removes it. */
void http_respond_on_drain(http_req_t *req, void (*cb)(http_req_t *req, void *arg), void *arg);
/* Finishes the response (the terminating chunk if chunked) and consumes the request. If fewer
 * bytes than the announced Content-Length were written, the connection is closed after the data
 * (the client sees a short body), as it is after a close-delimited HTTP/1.0 body. Otherwise the
 * connection serves the next (pipelined) request. Called without http_respond_start(), it answers
 * 500. */
void http_respond_end(http_req_t *req);
/* Ends a started response as broken: the connection is closed without the body's end (no last
 * chunk, or fewer bytes than the Content-Length), so the client sees a truncated transfer instead
 * of a complete, wrong one. Consumes the request. Use it when what was being sent failed
 * midway. */
void http_respond_abort(http_req_t *req);

/* The reason phrase for a status code ("Not Found"), "Unknown" if not known. */
const char *http_status_text(int status);

/* ---------------------------------------------------------------------------------------------
 * Connection takeover, for protocol upgrades. Internal to net/: net/ws uses it; route handlers
 * call ws_accept() instead.
 *
 * A request that carries an `Upgrade:` header reaches the handler like any other; if it is
 * answered with http_respond*(), the connection is closed after the response (no other protocol
 * is supported). http_req_takeover() instead answers it with a raw response (the 101) and hands the
 * connection to a new owner: from then on the HTTP server neither reads, parses nor times out the
 * connection. It still counts it (http_server_connections, max_connections), tells the owner when
 * the server closes, and owns the memory of the stream and timer handles, which it frees only
 * after http_takeover_release() and the `closed` callback.
 */
struct http_takeover_ops {
    /* http_server_close() was called: the owner should wind the connection up and then call
     * http_takeover_release(). It may do so right away, from inside this callback. */
    void (*server_closing)(void *owner);
    /* Both handles are closed (every callback of theirs has run, pending writes completed with
     * UV_ECANCELED); this is the last call for the connection, always from a libuv close callback
     * (never from inside http_takeover_release()). The handles are freed right after it returns. */
    void (*closed)(void *owner);
};

struct http_takeover {
    /* The client connection, reading stopped. The owner may set its `data`, read and write it and
     * uv_shutdown() it, but must not uv_close() it (use http_takeover_release()). */
    uv_stream_t *stream;
    /* A timer on the same loop, stopped, for the owner's use (same rules as `stream`). */
    uv_timer_t *timer;
    /* Bytes the client sent after the request (already received, not parsed). The owner takes
     * the storage (buf_free() it). */
    buf_t pending;
};

/* Queues `response` (len bytes, copied: status line, headers and the empty line) and hands the
 * connection over as described above, filling `out`. Consumes the request in every case. Returns
 * 0, -ENOTCONN if the client is already gone, or another -errno if the response could not be
 * queued (the connection is then closed). `ops` must outlive the connection. */
int http_req_takeover(http_req_t *req, const void *response, size_t len,
                      const struct http_takeover_ops *ops, void *owner, struct http_takeover *out);
/* Closes a taken-over connection (a no-op if already closing); ops->closed follows. */
void http_takeover_release(uv_stream_t *stream);

#endif
