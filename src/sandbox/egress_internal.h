/*
 * egress_internal — what the src/sandbox/egress*.c proxy files share: the proxy and connection
 * structs and the functions one of those files calls in another. Not used outside them (the
 * policy, egress_policy.c, needs none of it).
 *
 * Files: egress.c (the proxy: start, policy changes, close; accepting clients; connection
 * lifetime, reads, writes and the relay), egress_head.c (parsing a client's request head and
 * rewriting it for the origin), egress_connect.c (from a parsed head to a connected origin: the
 * policy decision, name resolution, connect attempts, and the error answers).
 *
 * Ownership, in one place:
 *   - The proxy owns its listener, the policy, the host-address cache and every connection. It is
 *     freed once it is closing, the listener's close callback ran and the last connection is gone.
 *   - A connection (struct econn) owns its handles (client, timer, and the origin while one is
 *     open) and its getaddrinfo request. It is freed when it is closing, every handle's close
 *     callback ran and the lookup came back (a lookup already running in the threadpool cannot be
 *     cancelled, only ignored) — never earlier, so a conn pointer stays valid for the whole
 *     callback stack in which it was closed.
 *   - A write (struct wreq) owns a copy of its bytes and is freed by its callback, which libuv
 *     runs (with UV_ECANCELED if the handle was closed) before the handle's close callback.
 *
 * Life of a connection: HEAD (the request head is read into `in`; head timer) → RESOLVING (the
 * static hosts table, else uv_getaddrinfo; the connect timer starts) → CONNECTING (the checked
 * candidates in order; a failed attempt closes the origin handle and its close callback starts
 * the next, because a socket whose connect failed cannot be reused) → RELAY. Any step before RELAY
 * may turn into RESPONDING: an error response is written, the client half-closed, and its input
 * drained until EOF or LINGER_MS before closing — closing with unread input makes the kernel send
 * RST, which can destroy the response before the client has read it.
 *
 * Relay: what one side sends is copied to the other; once the destination's unsent queue passes
 * WRITE_HIGH_WATER the source is not read until the queue drains below WRITE_LOW_WATER, so a
 * fast sender cannot make the daemon buffer without bound. EOF from one side shuts down writing to
 * the other (after what is queued); the connection closes once both directions are shut down.
 * There is no idle timeout in RELAY (tunnels may legitimately idle for long); the origin side has
 * TCP keepalive so a vanished peer is eventually noticed.
 */
#ifndef WARREN_SANDBOX_EGRESS_INTERNAL_H
#define WARREN_SANDBOX_EGRESS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "core/buf.h"
#include "sandbox/egress.h"

#define READ_BUF_SIZE (64 * 1024)
#define MAX_CANDIDATES 16
#define METHOD_MAX 32
#define HOSTPORT_MAX (EGRESS_MAX_HOST + 9)

enum state { ST_HEAD, ST_RESOLVING, ST_CONNECTING, ST_RELAY, ST_RESPONDING };

struct econn {
    struct egress_proxy *px;
    struct econn *prev, *next;
    uv_tcp_t client;
    uv_tcp_t origin;
    uv_timer_t timer; /* head idle, then connect, then linger */
    uv_getaddrinfo_t gai;
    uv_connect_t connect;
    uv_shutdown_t client_sd;
    uv_shutdown_t origin_sd;
    enum state state;
    buf_t in;        /* client bytes: the head while reading it, plus whatever followed it */
    size_t head_len; /* bytes of `in` that are the head */
    buf_t fwd;       /* the head rewritten for the origin (absolute-form requests) */
    char method[METHOD_MAX + 1];
    struct egress_target target;
    const char *name_reason; /* why the name passed (static) */
    union egress_sockaddr cand[MAX_CANDIDATES];
    size_t ncand, next_cand;
    int last_err; /* of the last failed connect attempt */
    char addr[INET6_ADDRSTRLEN];
    int nhandles;
    unsigned gai_pending : 1;
    unsigned closing : 1;
    unsigned origin_open : 1; /* initialised and not being closed */
    unsigned is_connect : 1;
    unsigned client_reading : 1;
    unsigned origin_reading : 1;
    unsigned client_paused : 1; /* not read: too much queued towards the origin */
    unsigned origin_paused : 1;
    unsigned client_eof : 1;  /* RESPONDING: the client has sent everything */
    unsigned client_shut : 1; /* our writing direction to the client is shut down */
    unsigned origin_shut : 1;
};

struct egress_proxy {
    uv_loop_t *loop;
    uv_tcp_t listener;
    char *sandbox_id;
    const struct egress_hosts *hosts;
    void (*on_decision)(void *ud, const struct egress_decision *d);
    void *ud;
    unsigned max_conns;
    unsigned head_timeout_ms;
    unsigned connect_timeout_ms;
    struct egress_policy *policy;
    struct egress_local *local;
    struct econn *conns;
    unsigned nconns;    /* structs in `conns`, closing ones included */
    unsigned resolving; /* getaddrinfo calls in flight (each holds a thread of the pool) */
    unsigned listener_open : 1;
    unsigned closing : 1;
    /* One read buffer for all connections: libuv calls alloc_cb and read_cb back to back for one
     * stream, and read_cb copies what it keeps. */
    char rbuf[READ_BUF_SIZE];
};

/* ---- egress.c ------------------------------------------------------------------------------ */

void egress_conn_maybe_free(struct econn *c);
void egress_conn_close(struct econn *c);
void egress_conn_close_origin(struct econn *c);
void egress_client_set_reading(struct econn *c, bool on);
void egress_origin_set_reading(struct econn *c, bool on);
int egress_conn_write(struct econn *c, uv_tcp_t *dst, const void *p, size_t n);
void egress_on_shutdown(uv_shutdown_t *req, int status);
/* The connection's timer: head idle, then connect, then linger. */
void egress_on_timer(uv_timer_t *t);

/* ---- egress_head.c ------------------------------------------------------------------------- */

size_t egress_head_end(const char *p, size_t len, size_t from);
int egress_head_parse(struct econn *c, const char **why);

/* ---- egress_connect.c ---------------------------------------------------------------------- */

/* Answers the client with `status` and a text body, then lingers and closes. */
void egress_conn_respond(struct econn *c, int status, const char *reason, const char *extra,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void egress_conn_decide(struct econn *c);
void egress_conn_connect_next(struct econn *c);

#endif
