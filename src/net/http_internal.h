/*
 * http_internal — what the src/net/http*.c files share: the server, connection and request
 * structs and the functions one of those files calls in another. Not used outside them.
 *
 * Files: http.c (the server and its listeners), http_conn.c (connections: accepting, reading,
 * the parse-and-dispatch loop, writing, closing, takeover), http_parse.c (the llhttp callbacks
 * that build a request, and the header and body limits), http_request.c (the request object,
 * its accessors and the delivery of request bodies to the handler), http_response.c (formatting
 * and writing responses, whole or streamed).
 *
 * Ownership, in one place:
 *   - A connection (struct conn) owns two uv handles (the stream and a timer). It is freed when
 *     both close callbacks have run, never earlier, so a conn pointer stays valid for the whole
 *     callback stack in which it was closed.
 *   - A request is owned by its connection while being parsed (conn->cur, conn->ready). Once passed
 *     to the handler (conn->active) it is owned by the handler until it responds; if the connection
 *     closes first, the request is detached (req->conn = NULL) and freed by the response.
 *   - The server counts every uv handle it opened; `done` runs when the count drops to zero after
 *     http_server_close().
 *   - A connection taken over by an upgrade (conn->upgraded) keeps its struct, handles, list entry
 *     and count here, but its I/O and timer belong to the new owner (whose pointer is then in the
 *     handles' `data`). It is closed by http_takeover_release() or, on http_server_close(), by the
 *     owner after ops->server_closing; ops->closed runs from the last close callback.
 *
 * Flow control: the parser is fed from conn->in and pauses after every complete request, so the
 * next request is parsed only once the previous response was queued (pipelining in order). While a
 * request is with the handler, reading continues (so a client hang-up is noticed and reported with
 * the abort callback) until READ_HIGH_WATER bytes are buffered. Input from a client that does not
 * read its responses is no longer parsed once WRITE_HIGH_WATER bytes are queued for it.
 *
 * Streaming bodies: a request claimed by the stream hook is dispatched from a pause in
 * on_headers_complete and stays conn->body_req (besides conn->active) until its body ended or it
 * was answered. The parser keeps running for it while the handler has started and not paused the
 * body; on_body hands the bytes straight to the handler. A pause inside on_body can leave the
 * parser just before on_message_complete with no input left, so conn->parse_pending then allows
 * one execute with zero bytes. An answer before the end of the body either skips a small rest
 * (conn->discarding) or closes the connection.
 *
 * User callbacks that may answer (and so free) a request while the http code still looks at it run
 * with req->cb_depth raised: the answer then only marks the request consumed and the caller frees
 * it afterwards. Work the API must not do synchronously (delivering callbacks from inside
 * http_req_body_start() and friends) goes through a per-request zero-delay timer (struct kick).
 */
#ifndef WARREN_NET_HTTP_INTERNAL_H
#define WARREN_NET_HTTP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include <llhttp.h>

#include "core/buf.h"
#include "net/http.h"

#define READ_BUF_SIZE (64 * 1024)
#define PEER_LEN 64

struct hdr {
    buf_t name;
    buf_t value;
};

struct http_req {
    struct conn *conn; /* set while with the handler and the connection is open */
    const char *method;
    buf_t url;
    char *path;
    char *raw_query;
    char **qnames;
    char **qvalues;
    size_t nq;
    struct hdr *hdrs;
    size_t nhdrs, caphdrs;
    buf_t hfield, hvalue; /* the header being parsed */
    buf_t body;
    size_t header_bytes;     /* request line + headers, as seen by the parser callbacks */
    size_t raw_header_bytes; /* whole input chunks consumed before the headers ended */
    int headers_done;
    int keep_alive;
    int http10;
    int version; /* major * 10 + minor */
    int is_head;
    int gone;
    http_abort_fn abort_cb;
    void *abort_arg;
    char peer[PEER_LEN];

    /* Streaming (both directions); see the top of the file. */
    uv_loop_t *loop;
    struct kick *kick;      /* created on first use */
    unsigned cb_depth;      /* user callbacks running that may consume the request */
    int64_t content_length; /* declared; -1 chunked; 0 no body */
    http_body_data_fn on_data;
    http_body_end_fn on_end;
    void *body_arg;
    int body_err;                 /* valid once body_ended */
    unsigned consumed : 1;        /* answered; freed once cb_depth drops to 0 */
    unsigned streaming : 1;       /* dispatched before its body */
    unsigned expect_continue : 1; /* streaming and the client waits for a 100 */
    unsigned continue_sent : 1;   /* that 100 was queued */
    unsigned body_started : 1;    /* http_req_body_start() called */
    unsigned body_paused : 1;     /* http_req_body_pause() */
    unsigned body_ended : 1;      /* no more body (body_err says how it ended) */
    unsigned body_delivered : 1;  /* a buffered body went to on_data */
    unsigned end_delivered : 1;   /* on_end ran */
    unsigned resp_started : 1;    /* http_respond_start() called */
    unsigned resp_chunked : 1;    /* body written in chunked coding */
    unsigned resp_nobody : 1;     /* HEAD or a bodyless status: writes are discarded */
    unsigned resp_close : 1;      /* the headers said Connection: close */
    unsigned drain_armed : 1;     /* a write left HTTP_RESPOND_HIGH_WATER queued */
    int64_t resp_remaining;       /* Content-Length bytes still owed; -1 if not announced */
    void (*drain_cb)(http_req_t *req, void *arg);
    void *drain_arg;
};

/* A zero-delay timer that runs req_pump() from the loop. Separate from the request because its
 * handle outlives it (uv_close is asynchronous); `req` is cleared when the request is freed. */
struct kick {
    uv_timer_t timer;
    http_req_t *req;
};

struct conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer; /* idle timeout, then linger timeout */
    uv_shutdown_t shutdown;
    http_server_t *srv;
    struct conn *prev, *next;
    llhttp_t parser;
    buf_t in;             /* received, not yet parsed */
    http_req_t *cur;      /* being parsed */
    http_req_t *ready;    /* parsed, about to be dispatched */
    http_req_t *active;   /* with the handler */
    http_req_t *body_req; /* == active while its streamed body is being parsed */
    size_t out_bytes;     /* bytes in writes not yet completed */
    int close_err;        /* why the connection is closing (for on_end); 0: -ECONNRESET */
    /* Set by a parser callback that wants the connection answered with an error and closed. */
    int err_status;
    const char *err_code;
    const char *err_msg;
    unsigned pending_writes;
    int nhandles;
    unsigned closing : 1;           /* uv_close() called */
    unsigned reading : 1;           /* uv_read_start() active */
    unsigned processing : 1;        /* inside http_conn_process() (re-entrancy guard) */
    unsigned close_after_write : 1; /* no more requests; close once the output is flushed */
    unsigned lingering : 1;         /* output flushed, half-closed, draining input */
    unsigned eof : 1;               /* the client sent EOF */
    unsigned counted : 1;           /* counts towards max_connections */
    unsigned upgraded : 1;          /* taken over (http_req_takeover); see the top of the file */
    unsigned discarding : 1;        /* skipping the rest of an answered request's body */
    unsigned broken : 1;            /* the parser failed inside a streamed body: parse no more */
    unsigned parse_pending : 1;     /* the parser may progress without input (see top) */
    unsigned close_soon : 1;        /* closing from the timer (not from inside an API call) */
    const struct http_takeover_ops *tk_ops;
    void *tk_owner;
    char peer[PEER_LEN];
};

struct listener {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    http_server_t *srv;
    struct listener *next;
    int is_tcp;
    char *unix_path; /* unlinked on close */
};

struct http_server {
    uv_loop_t *loop;
    struct http_limits limits;
    http_handler_fn handler;
    http_stream_hook_fn wants_stream;
    void *ctx;
    llhttp_settings_t settings;
    struct listener *listeners;
    struct conn *conns;
    unsigned nconns;   /* counted connections (not rejected ones) */
    unsigned nhandles; /* uv handles not yet through their close callback */
    int port;
    int closing;
    int done_called;
    void (*done)(void *arg);
    void *done_arg;
    uv_timer_t kick; /* closed in http_server_close so `done` always runs from the loop */
    /* One read buffer for all connections: libuv calls alloc_cb and read_cb back to back for one
     * stream, and read_cb copies what it needs. */
    char rbuf[READ_BUF_SIZE];
};

/* ---- http.c -------------------------------------------------------------------------------- */

/* Runs the server's `done` callback once it is closing and its last handle is closed. */
void http_server_maybe_done(http_server_t *srv);

/* ---- http_conn.c --------------------------------------------------------------------------- */

/* The listeners' connection callback: accepts a client and starts serving it. */
void http_on_connection(uv_stream_t *server, int status);
void http_conn_close(struct conn *c);
void http_conn_close_soon(struct conn *c, int err);
void http_conn_linger(struct conn *c);
void http_conn_process(struct conn *c);
void http_conn_update(struct conn *c);
int http_conn_write_raw(struct conn *c, buf_t *out);
int http_conn_write(struct conn *c, buf_t *out);

/* ---- http_parse.c -------------------------------------------------------------------------- */

/* Initialises `s` with the parser callbacks (parser->data is the connection). */
void http_parser_settings_init(llhttp_settings_t *s);

/* ---- http_request.c ------------------------------------------------------------------------ */

void http_req_free(http_req_t *req);
void http_req_release(http_req_t *req);
void http_req_cb_enter(http_req_t *req);
int http_req_cb_leave(http_req_t *req);
void http_req_kick(http_req_t *req);
void http_req_end_body(http_req_t *req, int err);
struct hdr *http_req_find_header(const http_req_t *req, const char *name);

/* ---- http_response.c ----------------------------------------------------------------------- */

void http_conn_fail(struct conn *c, int status, const char *code, const char *msg);

#endif
