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
 * Requests: a complete request (headers and whole body) is passed to the handler. The handler owns
 * the obligation to answer: it must call exactly one http_respond*() for every request, now or
 * later. The http_req_t stays valid until that call, even if the client has gone in between;
 * http_req_set_abort_cb() lets the handler hear that the client disconnected so it can cancel its
 * work (it must still respond; the answer is then discarded and the request freed).
 *
 * Errors: functions returning int give 0 or -errno.
 */
#ifndef WARREN_NET_HTTP_H
#define WARREN_NET_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <jansson.h>

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
 * http_server_free(). Requests still unanswered stay valid until answered. */
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

/* The reason phrase for a status code ("Not Found"), "Unknown" if not known. */
const char *http_status_text(int status);

#endif
