/*
 * egress — the forward proxy. See egress.h for the contract; the policy lives in egress_policy.c.
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
#include "sandbox/egress.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"

#define DEFAULT_MAX_CONNECTIONS 256u
#define DEFAULT_HEAD_TIMEOUT_MS 30000u
#define DEFAULT_CONNECT_TIMEOUT_MS 10000u
#define HEAD_LIMIT (16 * 1024)
#define READ_BUF_SIZE (64 * 1024)
#define WRITE_HIGH_WATER (256 * 1024)
#define WRITE_LOW_WATER (64 * 1024)
#define LINGER_MS 2000
#define LISTEN_BACKLOG 128
#define MAX_CANDIDATES 16
#define METHOD_MAX 32
#define KEEPALIVE_S 60
/* Name lookups of one proxy in flight at once; more get 503. */
#define MAX_RESOLVING 2

/* Clients over the cap are answered 503 while they are at most this many more; the rest are
 * dropped without an answer (each answer costs a connection struct for a moment). */
#define REJECT_SLACK 64u
#define HOSTPORT_MAX (EGRESS_MAX_HOST + 9)

static const char established[] = "HTTP/1.1 200 Connection established\r\n\r\n";

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

struct wreq {
    uv_write_t req;
    struct econn *c;
    char data[];
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

static void conn_connect_next(struct econn *c);
static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);
static void on_origin_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

/* ---------------------------------------------------------------------------------------------
 * Lifetime
 */

static void proxy_maybe_free(struct egress_proxy *px)
{
    if (!px->closing || px->listener_open || px->conns)
        return;
    egress_policy_free(px->policy);
    egress_local_free(px->local);
    free(px->sandbox_id);
    free(px);
}

static void conn_maybe_free(struct econn *c)
{
    if (!c->closing || c->nhandles > 0 || c->gai_pending)
        return;
    struct egress_proxy *px = c->px;
    if (c->prev)
        c->prev->next = c->next;
    else
        px->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    px->nconns--;
    buf_free(&c->in);
    buf_free(&c->fwd);
    free(c);
    proxy_maybe_free(px);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct econn *c = h->data;
    c->nhandles--;
    conn_maybe_free(c);
}

/* The origin handle is closed between connect attempts too: the next attempt starts here, once
 * the handle can be initialised again. */
static void on_origin_closed(uv_handle_t *h)
{
    struct econn *c = h->data;
    c->nhandles--;
    if (!c->closing && c->state == ST_CONNECTING) {
        conn_connect_next(c);
        return;
    }
    conn_maybe_free(c);
}

static void conn_close_origin(struct econn *c)
{
    if (!c->origin_open)
        return;
    c->origin_open = 0;
    c->origin_reading = 0;
    uv_close((uv_handle_t *)&c->origin, on_origin_closed);
}

static void conn_close(struct econn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->client, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    conn_close_origin(c);
    if (c->gai_pending)
        uv_cancel((uv_req_t *)&c->gai); /* fails once running; the callback then just frees */
}

static void on_listener_closed(uv_handle_t *h)
{
    struct egress_proxy *px = h->data;
    px->listener_open = 0;
    proxy_maybe_free(px);
}

/* ---------------------------------------------------------------------------------------------
 * I/O helpers
 */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct econn *c = h->data;
    b->base = c->px->rbuf;
    b->len = sizeof(c->px->rbuf);
}

static void client_set_reading(struct econn *c, bool on)
{
    if (c->closing || on == c->client_reading)
        return;
    if (on && uv_read_start((uv_stream_t *)&c->client, on_alloc, on_client_read) < 0) {
        conn_close(c);
        return;
    }
    if (!on)
        uv_read_stop((uv_stream_t *)&c->client);
    c->client_reading = on;
}

static void origin_set_reading(struct econn *c, bool on)
{
    if (c->closing || !c->origin_open || on == c->origin_reading)
        return;
    if (on && uv_read_start((uv_stream_t *)&c->origin, on_alloc, on_origin_read) < 0) {
        conn_close(c);
        return;
    }
    if (!on)
        uv_read_stop((uv_stream_t *)&c->origin);
    c->origin_reading = on;
}

static size_t queued(uv_tcp_t *t)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)t);
}

/* Resumes a source paused for backpressure once its destination has drained. */
static void relay_resume(struct econn *c)
{
    if (c->state != ST_RELAY)
        return;
    if (c->client_paused && queued(&c->origin) <= WRITE_LOW_WATER) {
        c->client_paused = 0;
        client_set_reading(c, true);
    }
    if (c->origin_paused && queued(&c->client) <= WRITE_LOW_WATER) {
        c->origin_paused = 0;
        origin_set_reading(c, true);
    }
}

static void on_written(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct econn *c = w->c;
    free(w);
    if (c->closing || status == UV_ECANCELED)
        return; /* cancelled: we closed that handle on purpose */
    if (status < 0) {
        log_debug("egress: sandbox %s: write: %s", c->px->sandbox_id, uv_strerror(status));
        conn_close(c);
        return;
    }
    relay_resume(c);
}

/* Queues a copy of [p, p+n) on `dst`. */
static int conn_write(struct econn *c, uv_tcp_t *dst, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    struct wreq *w = malloc(sizeof(*w) + n);
    if (!w)
        return -ENOMEM;
    memcpy(w->data, p, n);
    w->c = c;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)dst, &b, 1, on_written);
    if (rc < 0)
        free(w);
    return rc;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct econn *c = req->data;
    if (c->closing || status == UV_ECANCELED)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (req == &c->origin_sd)
        c->origin_shut = 1;
    else
        c->client_shut = 1;
    if (c->state == ST_RESPONDING) {
        /* The answer is out; done if the client is too (else the linger timer ends it). */
        if (c->client_eof)
            conn_close(c);
        return;
    }
    if (c->origin_shut && c->client_shut)
        conn_close(c);
}

/* ---------------------------------------------------------------------------------------------
 * Responses and decisions
 */

static void on_timer(uv_timer_t *t);

/* Answers the client with `status` and a text body, then lingers and closes. */
static void conn_respond(struct econn *c, int status, const char *reason, const char *extra,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void conn_respond(struct econn *c, int status, const char *reason, const char *extra,
                         const char *fmt, ...)
{
    buf_t body = BUF_INIT, out = BUF_INIT;
    va_list ap;
    int rc;

    if (c->closing || c->state == ST_RESPONDING)
        return;
    c->state = ST_RESPONDING;
    uv_timer_stop(&c->timer);
    conn_close_origin(c);
    va_start(ap, fmt);
    rc = buf_vappendf(&body, fmt, ap);
    va_end(ap);
    if (!rc)
        rc = buf_appendf(&out,
                         "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\n%s\r\n",
                         status, reason, body.len, extra ? extra : "");
    if (!rc)
        rc = buf_append(&out, body.data, body.len);
    if (!rc)
        rc = conn_write(c, &c->client, out.data, out.len);
    buf_free(&body);
    buf_free(&out);
    c->client_sd.data = c;
    if (rc < 0 || uv_shutdown(&c->client_sd, (uv_stream_t *)&c->client, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    client_set_reading(c, true); /* drained and dropped */
    uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
}

static void addr_format(const union egress_sockaddr *a, char *out, size_t cap)
{
    const void *p = a->sa.sa_family == AF_INET ? (const void *)&a->in.sin_addr
                                               : (const void *)&a->in6.sin6_addr;
    if (!inet_ntop(a->sa.sa_family, p, out, (socklen_t)cap))
        snprintf(out, cap, "?");
}

/* Logs the request's fate and tells the owner. Returns false if the connection was closed from
 * the callback (the caller then stops). */
static bool conn_decision(struct econn *c, bool allowed, const char *addr, const char *reason)
{
    struct egress_proxy *px = c->px;
    char hp[HOSTPORT_MAX];
    egress_target_format(&c->target, hp, sizeof(hp));
    log_info("egress: sandbox %s: %s %s %s%s%s (%s)", px->sandbox_id, c->method, hp,
             allowed ? "allowed" : "denied", addr[0] ? " via " : "", addr, reason);
    if (px->on_decision) {
        struct egress_decision d = {
            .sandbox_id = px->sandbox_id,
            .allowed = allowed,
            .method = c->method,
            .host = c->target.host,
            .port = c->target.port,
            .address = addr,
            .reason = reason,
        };
        px->on_decision(px->ud, &d);
    }
    return !c->closing;
}

static void conn_deny(struct econn *c, const char *reason, const char *addr)
{
    char hp[HOSTPORT_MAX];
    if (!conn_decision(c, false, addr, reason))
        return;
    egress_target_format(&c->target, hp, sizeof(hp));
    conn_respond(c, 403, "Forbidden", "X-Warren-Egress: denied\r\n",
                 "warren egress: %s is not allowed by this sandbox's network policy (%s%s%s)\n", hp,
                 reason, addr[0] ? " " : "", addr);
}

static void conn_allow(struct econn *c, const char *reason)
{
    char first[INET6_ADDRSTRLEN];
    addr_format(&c->cand[0], first, sizeof(first));
    c->state = ST_CONNECTING;
    if (!conn_decision(c, true, first, reason))
        return;
    conn_connect_next(c);
}

/* ---------------------------------------------------------------------------------------------
 * Resolving and connecting
 */

/* Keeps the candidates the policy allows (the port is set here); denies if none is left. */
static void conn_filter(struct econn *c, union egress_sockaddr *found, size_t n)
{
    struct egress_proxy *px = c->px;
    const char *first_reason = NULL;
    char first_addr[INET6_ADDRSTRLEN] = "";

    egress_local_refresh(px->local, false);
    c->ncand = 0;
    for (size_t i = 0; i < n && c->ncand < MAX_CANDIDATES; i++) {
        const char *reason;
        /* sin_port and sin6_port sit at the same offset. */
        found[i].in.sin_port = htons((uint16_t)c->target.port);
        if (egress_policy_allows_addr(px->policy, &found[i].sa, false, px->local, &reason)) {
            c->cand[c->ncand++] = found[i];
        } else if (!first_reason) {
            first_reason = reason;
            addr_format(&found[i], first_addr, sizeof(first_addr));
        }
    }
    if (c->ncand == 0) {
        conn_deny(c, first_reason ? first_reason : "no address", first_addr);
        return;
    }
    conn_allow(c, c->name_reason);
}

static void conn_resolve_failed(struct econn *c, const char *why)
{
    if (!conn_decision(c, false, "", "name does not resolve"))
        return;
    conn_respond(c, 502, "Bad Gateway", NULL, "warren egress: cannot resolve %s: %s\n",
                 c->target.host, why);
}

static bool same_addr(const union egress_sockaddr *a, const union egress_sockaddr *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return false;
    if (a->sa.sa_family == AF_INET)
        return a->in.sin_addr.s_addr == b->in.sin_addr.s_addr;
    return memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, sizeof(a->in6.sin6_addr)) == 0;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct econn *c = req->data;
    union egress_sockaddr found[MAX_CANDIDATES];
    size_t n = 0;

    c->gai_pending = 0;
    c->px->resolving--;
    if (c->closing || c->state != ST_RESOLVING) {
        uv_freeaddrinfo(res);
        conn_maybe_free(c);
        return;
    }
    if (status < 0) {
        uv_freeaddrinfo(res);
        conn_resolve_failed(c, uv_strerror(status));
        return;
    }
    for (struct addrinfo *ai = res; ai && n < MAX_CANDIDATES; ai = ai->ai_next) {
        memset(&found[n], 0, sizeof(found[n]));
        if (ai->ai_family == AF_INET && ai->ai_addrlen >= sizeof(struct sockaddr_in))
            memcpy(&found[n].in, ai->ai_addr, sizeof(struct sockaddr_in));
        else if (ai->ai_family == AF_INET6 && ai->ai_addrlen >= sizeof(struct sockaddr_in6))
            memcpy(&found[n].in6, ai->ai_addr, sizeof(struct sockaddr_in6));
        else
            continue;
        bool dup = false;
        for (size_t i = 0; i < n && !dup; i++)
            dup = same_addr(&found[i], &found[n]);
        if (!dup)
            n++;
    }
    uv_freeaddrinfo(res);
    if (n == 0) {
        conn_resolve_failed(c, "no IPv4 or IPv6 address");
        return;
    }
    conn_filter(c, found, n);
}

static void conn_established(struct econn *c)
{
    int rc = 0;
    uv_timer_stop(&c->timer);
    c->state = ST_RELAY;
    uv_tcp_nodelay(&c->origin, 1);
    uv_tcp_keepalive(&c->origin, 1, KEEPALIVE_S);
    log_debug("egress: sandbox %s: connected to %s for %s", c->px->sandbox_id, c->addr,
              c->target.host);
    if (c->is_connect)
        rc = conn_write(c, &c->client, established, sizeof(established) - 1);
    else
        rc = conn_write(c, &c->origin, c->fwd.data, c->fwd.len);
    /* Bytes the client sent after the head (a body, or an eager TLS hello) go first. */
    if (!rc && c->in.len > c->head_len)
        rc = conn_write(c, &c->origin, c->in.data + c->head_len, c->in.len - c->head_len);
    buf_free(&c->in);
    buf_free(&c->fwd);
    if (rc < 0) {
        conn_close(c);
        return;
    }
    client_set_reading(c, true);
    origin_set_reading(c, true);
}

static void on_connected(uv_connect_t *req, int status)
{
    struct econn *c = req->data;
    if (status == UV_ECANCELED || c->closing || c->state != ST_CONNECTING)
        return;
    if (status < 0) {
        log_debug("egress: sandbox %s: connect %s: %s", c->px->sandbox_id, c->addr,
                  uv_strerror(status));
        c->last_err = status;
        conn_close_origin(c); /* on_origin_closed tries the next candidate */
        return;
    }
    conn_established(c);
}

static void conn_connect_next(struct econn *c)
{
    struct egress_proxy *px = c->px;
    char hp[HOSTPORT_MAX];

    if (c->closing || c->state != ST_CONNECTING)
        return;
    while (c->next_cand < c->ncand) {
        union egress_sockaddr *a = &c->cand[c->next_cand++];
        /* The policy may have changed since the address was checked. */
        if (!egress_policy_allows_addr(px->policy, &a->sa, c->target.literal, px->local, NULL))
            continue;
        addr_format(a, c->addr, sizeof(c->addr));
        int rc = uv_tcp_init(px->loop, &c->origin);
        if (rc < 0) {
            c->last_err = rc;
            break;
        }
        c->origin.data = c;
        c->nhandles++;
        c->origin_open = 1;
        c->connect.data = c;
        rc = uv_tcp_connect(&c->connect, &c->origin, &a->sa, on_connected);
        if (rc < 0) {
            c->last_err = rc;
            conn_close_origin(c);
        }
        return;
    }
    egress_target_format(&c->target, hp, sizeof(hp));
    log_info("egress: sandbox %s: %s %s: cannot connect: %s", px->sandbox_id, c->method, hp,
             c->last_err ? uv_strerror(c->last_err) : "no allowed address");
    conn_respond(c, 502, "Bad Gateway", NULL, "warren egress: cannot connect to %s: %s\n", hp,
                 c->last_err ? uv_strerror(c->last_err) : "no allowed address");
}

/* The head is parsed: apply the policy and start resolving or connecting. */
static void conn_decide(struct econn *c)
{
    struct egress_proxy *px = c->px;
    const char *reason = NULL;
    union egress_sockaddr found[MAX_CANDIDATES];

    if (egress_policy_mode(px->policy) == EGRESS_NONE) {
        conn_deny(c, "network mode is none", "");
        return;
    }
    uv_timer_start(&c->timer, on_timer, px->connect_timeout_ms, 0);
    if (c->target.literal) {
        char a[INET6_ADDRSTRLEN];
        egress_local_refresh(px->local, false);
        if (!egress_policy_allows_addr(px->policy, &c->target.addr.sa, true, px->local, &reason)) {
            addr_format(&c->target.addr, a, sizeof(a));
            conn_deny(c, reason, a);
            return;
        }
        c->cand[0] = c->target.addr;
        c->ncand = 1;
        conn_allow(c, reason);
        return;
    }
    if (!egress_policy_allows_name(px->policy, c->target.host, c->target.port, &reason)) {
        conn_deny(c, reason, "");
        return;
    }
    c->name_reason = reason;
    c->state = ST_RESOLVING;
    size_t n = egress_hosts_lookup(px->hosts, c->target.host, found, MAX_CANDIDATES);
    if (n > 0) {
        conn_filter(c, found, n < MAX_CANDIDATES ? n : MAX_CANDIDATES);
        return;
    }
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_protocol = IPPROTO_TCP,
        .ai_flags = AI_ADDRCONFIG,
    };
    /* Lookups block threads of the daemon's pool, which sandbox creation and deletion need too:
     * one sandbox gets a few at a time. */
    if (px->resolving >= MAX_RESOLVING) {
        conn_respond(c, 503, "Service Unavailable", NULL,
                     "warren egress: too many name lookups in flight, retry\n");
        return;
    }
    c->gai.data = c;
    int rc = uv_getaddrinfo(px->loop, &c->gai, on_resolved, c->target.host, NULL, &hints);
    if (rc < 0) {
        conn_resolve_failed(c, uv_strerror(rc));
        return;
    }
    c->gai_pending = 1;
    px->resolving++;
}

/* ---------------------------------------------------------------------------------------------
 * The request head
 */

struct line {
    const char *p;
    size_t n;
};

/* The next line of [*pos, end) without its "\n" or "\r\n"; false at the end. */
static bool next_line(const char **pos, const char *end, struct line *l)
{
    const char *nl = memchr(*pos, '\n', (size_t)(end - *pos));
    if (!nl)
        return false;
    l->p = *pos;
    l->n = (size_t)(nl - *pos);
    if (l->n > 0 && l->p[l->n - 1] == '\r')
        l->n--;
    *pos = nl + 1;
    return true;
}

static bool is_tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool token_eq(const char *p, size_t n, const char *s)
{
    return strlen(s) == n && strncasecmp(p, s, n) == 0;
}

#define MAX_CONN_TOKENS 32

/* Collects the options of the Connection and Proxy-Connection headers (trimmed, possibly empty
 * slices), once per request, so filtering the headers stays linear in the head's size. */
static int connection_tokens(const char *head, const char *end, struct line *toks, size_t *n)
{
    const char *pos = head;
    struct line l;
    *n = 0;
    next_line(&pos, end, &l); /* request line */
    while (next_line(&pos, end, &l) && l.n > 0) {
        const char *colon = memchr(l.p, ':', l.n);
        size_t nlen = (size_t)(colon - l.p);
        if (!token_eq(l.p, nlen, "connection") && !token_eq(l.p, nlen, "proxy-connection"))
            continue;
        const char *v = colon + 1, *vend = l.p + l.n;
        while (v < vend) {
            while (v < vend && (*v == ' ' || *v == '\t' || *v == ','))
                v++;
            const char *start = v;
            while (v < vend && *v != ',')
                v++;
            const char *tend = v;
            while (tend > start && (tend[-1] == ' ' || tend[-1] == '\t'))
                tend--;
            if (tend == start)
                continue;
            if (*n == MAX_CONN_TOKENS)
                return -EINVAL;
            toks[*n].p = start;
            toks[(*n)++].n = (size_t)(tend - start);
        }
    }
    return 0;
}

/* Hop-by-hop headers are not forwarded: the fixed ones, and those named in Connection (RFC 9110
 * 7.6.1). Host is replaced by the URL's authority. */
static bool header_dropped(const char *name, size_t nlen, const struct line *toks, size_t ntoks)
{
    static const char *const fixed[] = {"connection",          "keep-alive", "proxy-connection",
                                        "proxy-authorization", "host",       NULL};
    for (size_t i = 0; fixed[i]; i++) {
        if (token_eq(name, nlen, fixed[i]))
            return true;
    }
    for (size_t i = 0; i < ntoks; i++) {
        if (toks[i].n == nlen && strncasecmp(toks[i].p, name, nlen) == 0)
            return true;
    }
    return false;
}

/* Builds c->fwd from the head: origin-form request line, Host from the URL, end-to-end headers,
 * Connection: close. 0, -EINVAL (too many Connection options) or -ENOMEM. */
static int build_forward(struct econn *c, const char *path, size_t plen, const char *version)
{
    const char *head = c->in.data, *end = c->in.data + c->head_len, *pos = head;
    struct line l, toks[MAX_CONN_TOKENS];
    size_t ntoks;
    char host[HOSTPORT_MAX];
    bool v6 = c->target.addr.sa.sa_family == AF_INET6;
    int rc;

    if (connection_tokens(head, end, toks, &ntoks) < 0)
        return -EINVAL;
    if (c->target.port == 80)
        snprintf(host, sizeof(host), "%s%s%s", v6 ? "[" : "", c->target.host, v6 ? "]" : "");
    else
        egress_target_format(&c->target, host, sizeof(host));
    rc = buf_appendf(&c->fwd, "%s %s%.*s %s\r\nHost: %s\r\n", c->method,
                     plen == 0 || path[0] == '?' ? "/" : "", (int)plen, path, version, host);
    next_line(&pos, end, &l);
    while (!rc && next_line(&pos, end, &l) && l.n > 0) {
        const char *colon = memchr(l.p, ':', l.n);
        if (header_dropped(l.p, (size_t)(colon - l.p), toks, ntoks))
            continue;
        rc = buf_append(&c->fwd, l.p, l.n);
        if (!rc)
            rc = buf_append(&c->fwd, "\r\n", 2);
    }
    if (!rc)
        rc = buf_append_str(&c->fwd, "Connection: close\r\n\r\n");
    return rc;
}

/* Parses the head in c->in[0, head_len). Returns 0, -ENOMEM, or -EINVAL with *why. */
static int parse_head(struct econn *c, const char **why)
{
    const char *head = c->in.data, *end = head + c->head_len, *pos = head;
    struct line l, rl;
    const char *twhy = NULL;

    if (memchr(head, '\0', c->head_len)) {
        *why = "NUL byte in the request head";
        return -EINVAL;
    }
    if (!next_line(&pos, end, &rl) || memchr(rl.p, '\r', rl.n)) {
        *why = "malformed request line";
        return -EINVAL;
    }
    /* Headers: well-formed lines only, since they are forwarded as they are. */
    while (next_line(&pos, end, &l) && l.n > 0) {
        const char *colon = memchr(l.p, ':', l.n);
        if (l.p[0] == ' ' || l.p[0] == '\t') {
            *why = "obsolete header line folding";
            return -EINVAL;
        }
        if (!colon || colon == l.p || memchr(l.p, '\r', l.n)) {
            *why = "malformed header line";
            return -EINVAL;
        }
        for (const char *p = l.p; p < colon; p++) {
            if (!is_tchar(*p)) {
                *why = "malformed header name";
                return -EINVAL;
            }
        }
    }

    /* METHOD SP target SP HTTP/1.x */
    const char *sp1 = memchr(rl.p, ' ', rl.n);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', rl.n - (size_t)(sp1 + 1 - rl.p)) : NULL;
    if (!sp1 || !sp2 || sp1 == rl.p || sp2 == sp1 + 1) {
        *why = "malformed request line";
        return -EINVAL;
    }
    size_t mlen = (size_t)(sp1 - rl.p);
    const char *target = sp1 + 1;
    size_t tlen = (size_t)(sp2 - target);
    const char *version = sp2 + 1;
    size_t vlen = rl.n - (size_t)(version - rl.p);
    if (mlen > METHOD_MAX) {
        *why = "malformed request line";
        return -EINVAL;
    }
    for (size_t i = 0; i < mlen; i++) {
        if (!is_tchar(rl.p[i])) {
            *why = "malformed request line";
            return -EINVAL;
        }
    }
    for (size_t i = 0; i < tlen; i++) {
        if ((unsigned char)target[i] <= 0x20 || (unsigned char)target[i] >= 0x7f) {
            *why = "malformed request line";
            return -EINVAL;
        }
    }
    /* The version is case-sensitive, and forwarded as it is. */
    if (vlen != 8 || (memcmp(version, "HTTP/1.1", 8) != 0 && memcmp(version, "HTTP/1.0", 8) != 0)) {
        *why = "unsupported HTTP version (HTTP/1.0 and HTTP/1.1 only)";
        return -EINVAL;
    }
    memcpy(c->method, rl.p, mlen);
    c->method[mlen] = '\0';

    if (strcmp(c->method, "CONNECT") == 0) {
        c->is_connect = 1;
        if (egress_target_parse(target, tlen, 0, &c->target, &twhy) < 0) {
            *why = twhy;
            return -EINVAL;
        }
        if (c->target.port == 0) {
            *why = "CONNECT needs host:port";
            return -EINVAL;
        }
        return 0;
    }
    if (tlen >= 8 && strncasecmp(target, "https://", 8) == 0) {
        *why = "https:// URLs must be fetched through CONNECT";
        return -EINVAL;
    }
    if (tlen < 7 || strncasecmp(target, "http://", 7) != 0) {
        *why = "this is a proxy: the request target must be an absolute http:// URL";
        return -EINVAL;
    }
    const char *auth = target + 7, *tend = target + tlen;
    const char *aend = auth;
    while (aend < tend && *aend != '/' && *aend != '?' && *aend != '#')
        aend++;
    if (memchr(auth, '@', (size_t)(aend - auth))) {
        *why = "credentials in the URL are not supported";
        return -EINVAL;
    }
    if (egress_target_parse(auth, (size_t)(aend - auth), 80, &c->target, &twhy) < 0) {
        *why = twhy;
        return -EINVAL;
    }
    const char *frag = memchr(aend, '#', (size_t)(tend - aend));
    size_t plen = (size_t)((frag ? frag : tend) - aend);
    char ver[9];
    memcpy(ver, version, 8);
    ver[8] = '\0';
    int rc = build_forward(c, aend, plen, ver);
    if (rc == -EINVAL)
        *why = "too many Connection options";
    return rc;
}

/* The position just past the blank line ending the head in [0, len), or 0. Scanning starts at
 * `from` (earlier bytes were scanned before). */
static size_t head_end(const char *p, size_t len, size_t from)
{
    for (size_t i = from; i < len; i++) {
        if (p[i] != '\n')
            continue;
        if ((i >= 1 && p[i - 1] == '\n') || (i >= 2 && p[i - 1] == '\r' && p[i - 2] == '\n'))
            return i + 1;
    }
    return 0;
}

static void conn_head_input(struct econn *c, const char *p, size_t n)
{
    struct egress_proxy *px = c->px;
    size_t from = c->in.len > 2 ? c->in.len - 2 : 0;
    const char *why = NULL;

    if (buf_append(&c->in, p, n) < 0) {
        conn_close(c);
        return;
    }
    size_t end = head_end(c->in.data, c->in.len, from);
    if (end == 0 && c->in.len <= HEAD_LIMIT) {
        uv_timer_start(&c->timer, on_timer, px->head_timeout_ms, 0);
        return;
    }
    if (end == 0 || end > HEAD_LIMIT) {
        conn_respond(c, 431, "Request Header Fields Too Large", NULL,
                     "warren egress: the request head is larger than %d bytes\n", HEAD_LIMIT);
        return;
    }
    c->head_len = end;
    client_set_reading(c, false);
    uv_timer_stop(&c->timer);
    int rc = parse_head(c, &why);
    if (rc == -ENOMEM) {
        conn_close(c);
        return;
    }
    if (rc < 0) {
        log_info("egress: sandbox %s: bad request: %s", px->sandbox_id, why);
        conn_respond(c, 400, "Bad Request", NULL, "warren egress: bad request: %s\n", why);
        return;
    }
    conn_decide(c);
}

/* ---------------------------------------------------------------------------------------------
 * Callbacks
 */

static void on_timer(uv_timer_t *t)
{
    struct econn *c = t->data;
    char hp[HOSTPORT_MAX];
    if (c->closing)
        return;
    switch (c->state) {
    case ST_HEAD:
        log_debug("egress: sandbox %s: no request head in time; closing", c->px->sandbox_id);
        conn_close(c);
        break;
    case ST_RESOLVING:
    case ST_CONNECTING:
        egress_target_format(&c->target, hp, sizeof(hp));
        log_info("egress: sandbox %s: %s %s: timed out %s", c->px->sandbox_id, c->method, hp,
                 c->state == ST_RESOLVING ? "resolving" : "connecting");
        conn_respond(c, 504, "Gateway Timeout", NULL, "warren egress: %s did not answer in time\n",
                     hp);
        break;
    case ST_RESPONDING:
        conn_close(c);
        break;
    case ST_RELAY:
        break;
    }
}

/* EOF from one side: shut down writing to the other once what is queued for it is written. */
static void relay_eof(struct econn *c, bool from_client)
{
    uv_shutdown_t *sd = from_client ? &c->origin_sd : &c->client_sd;
    uv_tcp_t *dst = from_client ? &c->origin : &c->client;
    if (from_client)
        client_set_reading(c, false);
    else
        origin_set_reading(c, false);
    sd->data = c;
    if (uv_shutdown(sd, (uv_stream_t *)dst, on_shutdown) < 0)
        conn_close(c);
}

static void relay(struct econn *c, bool from_client, const char *p, size_t n)
{
    uv_tcp_t *dst = from_client ? &c->origin : &c->client;
    if (conn_write(c, dst, p, n) < 0) {
        conn_close(c);
        return;
    }
    if (queued(dst) <= WRITE_HIGH_WATER)
        return;
    if (from_client) {
        c->client_paused = 1;
        client_set_reading(c, false);
    } else {
        c->origin_paused = 1;
        origin_set_reading(c, false);
    }
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct econn *c = s->data;
    if (c->closing || nread == 0)
        return;
    switch (c->state) {
    case ST_HEAD:
        if (nread < 0)
            conn_close(c); /* gone before asking anything */
        else
            conn_head_input(c, b->base, (size_t)nread);
        break;
    case ST_RELAY:
        if (nread == UV_EOF)
            relay_eof(c, true);
        else if (nread < 0)
            conn_close(c);
        else
            relay(c, true, b->base, (size_t)nread);
        break;
    case ST_RESPONDING:
        if (nread == UV_EOF) {
            /* Closing now could cut the answer still queued: wait for the shutdown. */
            c->client_eof = 1;
            client_set_reading(c, false);
            if (c->client_shut)
                conn_close(c);
        } else if (nread < 0) {
            conn_close(c);
        }
        break;
    case ST_RESOLVING:
    case ST_CONNECTING:
        break; /* not read in these states */
    }
}

static void on_origin_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct econn *c = s->data;
    if (c->closing || nread == 0 || c->state != ST_RELAY)
        return;
    if (nread == UV_EOF)
        relay_eof(c, false);
    else if (nread < 0)
        conn_close(c);
    else
        relay(c, false, b->base, (size_t)nread);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct egress_proxy *px = server->data;
    if (status < 0) {
        log_warn("egress: sandbox %s: accept: %s", px->sandbox_id, uv_strerror(status));
        return;
    }
    struct econn *c = calloc(1, sizeof(*c));
    if (!c) {
        /* Without uv_accept() libuv stops watching the listener until the next one. */
        log_error("egress: sandbox %s: out of memory accepting a connection", px->sandbox_id);
        return;
    }
    c->px = px;
    uv_tcp_init(px->loop, &c->client);
    uv_timer_init(px->loop, &c->timer);
    c->client.data = c;
    c->timer.data = c;
    c->nhandles = 2;
    c->next = px->conns;
    if (px->conns)
        px->conns->prev = c;
    px->conns = c;
    px->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->client) < 0 ||
        px->nconns > px->max_conns + REJECT_SLACK) {
        conn_close(c);
        return;
    }
    if (px->nconns > px->max_conns) {
        log_warn("egress: sandbox %s: more than %u connections; refusing one", px->sandbox_id,
                 px->max_conns);
        conn_respond(c, 503, "Service Unavailable", NULL,
                     "warren egress: too many connections through this proxy\n");
        return;
    }
    uv_tcp_nodelay(&c->client, 1);
    client_set_reading(c, true);
    uv_timer_start(&c->timer, on_timer, px->head_timeout_ms, 0);
}

/* ---------------------------------------------------------------------------------------------
 * Public API
 */

int egress_proxy_start(uv_loop_t *loop, int listen_fd, const struct egress_options *opt,
                       struct egress_policy *policy, struct egress_proxy **out)
{
    struct egress_proxy *px = NULL;
    struct sigaction sa;
    bool fd_owned = false;
    int rc;

    *out = NULL;
    /* libuv writes with write(2), not send(MSG_NOSIGNAL): a peer that resets its connection
     * would kill the process with SIGPIPE. Only the default disposition is replaced. */
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    px = calloc(1, sizeof(*px));
    if (!px) {
        rc = -ENOMEM;
        goto error;
    }
    px->loop = loop;
    px->policy = policy;
    policy = NULL;
    px->sandbox_id = strdup(opt && opt->sandbox_id ? opt->sandbox_id : "-");
    if (opt) {
        px->hosts = opt->hosts;
        px->on_decision = opt->on_decision;
        px->ud = opt->ud;
        px->max_conns = opt->max_connections;
        px->head_timeout_ms = opt->head_timeout_ms;
        px->connect_timeout_ms = opt->connect_timeout_ms;
    }
    if (!px->max_conns)
        px->max_conns = DEFAULT_MAX_CONNECTIONS;
    if (!px->head_timeout_ms)
        px->head_timeout_ms = DEFAULT_HEAD_TIMEOUT_MS;
    if (!px->connect_timeout_ms)
        px->connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    if (!px->sandbox_id || egress_local_new(&px->local) < 0) {
        rc = -ENOMEM;
        goto error;
    }
    /* A failure is retried on use; until one succeeds every address is refused. */
    egress_local_refresh(px->local, true);
    rc = uv_tcp_init(loop, &px->listener);
    if (rc < 0)
        goto error;
    px->listener.data = px;
    px->listener_open = 1;
    rc = uv_tcp_open(&px->listener, listen_fd);
    if (rc < 0)
        goto error;
    fd_owned = true;
    rc = uv_listen((uv_stream_t *)&px->listener, LISTEN_BACKLOG, on_connection);
    if (rc < 0)
        goto error;
    *out = px;
    return 0;
error:
    log_error("egress: sandbox %s: cannot start the proxy: %s",
              opt && opt->sandbox_id ? opt->sandbox_id : "-", strerror(-rc));
    if (!fd_owned)
        close(listen_fd);
    egress_policy_free(policy);
    if (px && px->listener_open) {
        /* The handle is registered with the loop: free from its close callback. */
        px->closing = 1;
        uv_close((uv_handle_t *)&px->listener, on_listener_closed);
    } else if (px) {
        egress_policy_free(px->policy);
        egress_local_free(px->local);
        free(px->sandbox_id);
        free(px);
    }
    return rc;
}

/* Why the connection's destination is no longer allowed, or NULL. */
static const char *conn_recheck(struct econn *c)
{
    struct egress_proxy *px = c->px;
    const char *reason = NULL;
    if (c->state != ST_RESOLVING && c->state != ST_CONNECTING && c->state != ST_RELAY)
        return NULL;
    if (!c->target.literal &&
        !egress_policy_allows_name(px->policy, c->target.host, c->target.port, &reason))
        return reason;
    if (c->state == ST_RESOLVING || c->next_cand == 0)
        return NULL;
    if (!egress_policy_allows_addr(px->policy, &c->cand[c->next_cand - 1].sa, c->target.literal,
                                   px->local, &reason))
        return reason;
    return NULL;
}

void egress_proxy_set_policy(struct egress_proxy *px, struct egress_policy *policy)
{
    egress_policy_free(px->policy);
    px->policy = policy;
    if (px->closing)
        return;
    egress_local_refresh(px->local, false);
    bool none = egress_policy_mode(policy) == EGRESS_NONE;
    for (struct econn *c = px->conns; c; c = c->next) {
        if (c->closing)
            continue;
        const char *reason = none ? "network mode is none" : conn_recheck(c);
        if (!reason)
            continue;
        if (c->state >= ST_RESOLVING && c->state <= ST_RELAY) {
            char hp[HOSTPORT_MAX];
            egress_target_format(&c->target, hp, sizeof(hp));
            log_info("egress: sandbox %s: %s %s closed: no longer allowed (%s)", px->sandbox_id,
                     c->method, hp, reason);
        }
        conn_close(c);
    }
}

const struct egress_policy *egress_proxy_policy(const struct egress_proxy *px)
{
    return px->policy;
}

unsigned egress_proxy_connections(const struct egress_proxy *px)
{
    return px->nconns;
}

size_t egress_proxy_queued_bytes(const struct egress_proxy *px)
{
    size_t n = 0;
    for (struct econn *c = px->conns; c; c = c->next) {
        if (c->closing)
            continue;
        n += queued(&c->client);
        if (c->origin_open)
            n += queued(&c->origin);
    }
    return n;
}

void egress_proxy_close(struct egress_proxy *px)
{
    if (!px || px->closing)
        return;
    px->closing = 1;
    px->on_decision = NULL;
    if (px->listener_open)
        uv_close((uv_handle_t *)&px->listener, on_listener_closed);
    for (struct econn *c = px->conns; c; c = c->next)
        conn_close(c);
    proxy_maybe_free(px);
}
