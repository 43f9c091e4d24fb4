/*
 * client — a small blocking HTTP/1.1 client for the `warren` CLI (never used by the daemon).
 *
 * It talks to one server, given as a base URL:
 *   http://HOST[:PORT][/PREFIX]     TCP (HOST may be a name, an IPv4 or a [bracketed] IPv6 address;
 *                                   PORT defaults to 80)
 *   unix:/path/to.sock              a unix stream socket (also unix:///path/to.sock)
 * One keep-alive connection is reused across requests. If the server has closed it in the meantime
 * (it is found readable/closed before sending, or sending fails, or it is closed before the first
 * byte of the answer), the client reconnects and sends the request again, once.
 *
 * Responses may use Content-Length, chunked transfer coding, or end at connection close.
 * All I/O is blocking from the caller's point of view (the socket is non-blocking internally, and
 * waits go through poll/ppoll, see `wait_mask` and `cancel` below).
 *
 * Every function returns 0 or a negative errno. When a call fails, `client.error` holds a short
 * human-readable description ("Connection refused", "malformed response: ...") and
 * `client.connect_failed` says whether the failure happened while connecting (the server could
 * not be reached at all) rather than during the exchange.
 */
#ifndef WARREN_CLI_CLIENT_H
#define WARREN_CLI_CLIENT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "core/buf.h"

struct client {
    int fd;                 /* -1 when not connected */
    char *url;              /* the base URL as given (owned), for messages */
    char *unix_path;        /* unix socket path (owned), or NULL for TCP */
    char *host;             /* TCP host without brackets (owned), or NULL */
    char *port;             /* TCP port (owned), or NULL */
    char *host_header;      /* value of the Host header (owned) */
    char *prefix;           /* path prefix from the URL without trailing '/', "" if none (owned) */
    buf_t in;               /* received bytes not consumed yet */
    unsigned conn_requests; /* requests completed on the current connection */

    /* Signal handling, both optional (NULL by default), set by the caller after client_open.
     * wait_mask: if set, every wait uses ppoll() with this signal mask, so a caller that keeps
     *   its signals blocked has them delivered only while the client waits (no race between
     *   checking a flag and blocking).
     * cancel: if set and non-zero (checked before every wait and after a wait is interrupted by a
     *   signal), the request is abandoned with -EINTR and the connection is closed. When NULL,
     *   interrupted waits are simply resumed. */
    const sigset_t *wait_mask;
    volatile sig_atomic_t *cancel;

    int connect_failed; /* 1 if the last failure happened while connecting */
    char error[256];    /* description of the last failure */
};

struct client_header {
    const char *name;  /* points into client_response.head */
    const char *value; /* leading/trailing whitespace removed */
};

struct client_response {
    int status;                    /* e.g. 200 */
    char *head;                    /* raw header block, split in place (owned) */
    struct client_header *headers; /* in the order received (owned) */
    size_t nheaders;
    buf_t body; /* the decoded body (dechunked); NUL-terminated when non-empty */
};

/* Parse `base_url` and prepare `c` (no connection is made yet). On failure (-EINVAL for a
 * malformed URL, -EPROTONOSUPPORT for a scheme other than http/unix, -ENOMEM), `c` is left in a
 * state that client_close() accepts and c->error says why. */
int client_open(struct client *c, const char *base_url);

/* Send one request and read the whole response into `out`.
 * method: "GET", "POST", ...; path: starts with '/', already percent-encoded, appended to the
 * URL's prefix. content_type may be NULL (no Content-Type header). body/len: the request body
 * (may be NULL/0; a Content-Length header is sent for any body and for POST/PUT/PATCH).
 * `out` is always initialised by this call (the caller need not do it) and must be released with
 * client_response_free(), which is also safe after a failure. Any HTTP status is a success here:
 * the caller looks at out->status.
 * Errors: -ECONNREFUSED, -ENOENT, ... (connecting; c->connect_failed = 1), -ECONNRESET (closed
 * before the response was complete), -EPROTO (malformed response), -EFBIG (response larger than
 * the client accepts), -EINTR (cancelled, see `cancel`), -ENOMEM, other socket errors. After any
 * failure the connection is closed; the next request opens a new one. */
int client_request(struct client *c, const char *method, const char *path, const char *content_type,
                   const void *body, size_t len, struct client_response *out);

/* An HTTP/1.1 upgrade (used by the WebSocket client, src/cli/wsclient.h): send `GET path` with
 * `extra_headers` (complete "Name: value\r\n" lines, may be NULL) on a new connection (any
 * kept-alive one is closed first) and read the answer's head. If the status is 101, the
 * connection is handed over: *fd receives the socket (non-blocking, close-on-exec; the caller
 * owns it) and the bytes received after the head are appended to `rest`; the client itself is
 * left disconnected (and usable for further requests). Any other answer is read completely into
 * `out` as by client_request(), and *fd is -1. `out` must be released with
 * client_response_free() in every case. Errors as for client_request(). */
int client_upgrade(struct client *c, const char *path, const char *extra_headers,
                   struct client_response *out, int *fd, buf_t *rest);

/* Streamed transfers (warren cp): a request body produced piece by piece and/or a response body
 * consumed piece by piece, neither held in memory.
 *
 * read_body: fills `buf` with at most `len` bytes of the request body; returns the count, 0 at
 *   the end, or -errno to abandon the request (client_request_stream() returns that value).
 * write_body: receives the body of a 2xx answer in pieces; returns 0, or -errno to abandon.
 * on_head: if set, runs once with the head of a 2xx answer (status, headers) before any
 *   write_body; returns 0 or -errno to abandon. */
typedef ssize_t (*client_read_body_fn)(void *arg, void *buf, size_t len);
typedef int (*client_write_body_fn)(void *arg, const void *data, size_t len);

struct client_stream {
    client_read_body_fn read_body;   /* NULL: no request body */
    long long body_len;              /* with read_body: >= 0 sent as Content-Length (read_body must
                                      * produce exactly that many bytes, else -EIO), -1 chunked */
    client_write_body_fn write_body; /* NULL: a 2xx body goes to out->body as usual */
    int (*on_head)(void *arg, const struct client_response *resp);
    void *arg;
};

/* Like client_request(), with the body and/or the response streamed through `s`. It always uses a
 * new connection and is never retried (a streamed body cannot be sent twice). A request with a
 * body carries `Expect: 100-continue`: the body is sent once the server asks for it (or after 1 s
 * without an answer), and sending stops as soon as the server answers (an early rejection such
 * as 404 or 413 is then returned normally). A non-2xx answer is always read into out->body (for
 * its error message); only a 2xx body goes to write_body (the response size limit of
 * client_request() does not apply to it). Errors as for client_request(), plus those of the
 * callbacks (c->error then names the failure). */
int client_request_stream(struct client *c, const char *method, const char *path,
                          const char *content_type, const struct client_stream *s,
                          struct client_response *out);

/* Does the comma-separated header value contain `token` (case-insensitive)? */
bool client_header_has_token(const char *value, const char *token);

/* The value of the first header called `name` (case-insensitive), or NULL. The string belongs to
 * `r` and lives until client_response_free(r). */
const char *client_response_header(const struct client_response *r, const char *name);

/* Release what the response owns; it is empty (status 0) afterwards. */
void client_response_free(struct client_response *r);

/* Close the connection (if any). The client stays usable: the next request reconnects. */
void client_disconnect(struct client *c);

/* Close the connection and release everything `c` owns. Safe to call twice, and after a failed
 * client_open(). */
void client_close(struct client *c);

/* Append `s` to `b` percent-encoded for use as one path segment (only RFC 3986 unreserved
 * characters are kept) or, with `query` set, as a query value (sub-delimiters such as '=' ':' '/'
 * are kept too, but '&', '+', '#' and '%' are encoded). Returns 0 or -ENOMEM. */
int client_append_escaped(buf_t *b, const char *s, int query);

#endif
