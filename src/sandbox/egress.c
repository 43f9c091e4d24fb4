/*
 * egress — the forward proxy: starting it on a listening socket in the sandbox's namespace,
 * policy changes, closing; accepting clients; the lifetime of a connection, its reads and writes,
 * and the relay between client and origin. See egress.h for the contract and egress_internal.h
 * for how the egress*.c files fit together; the policy lives in egress_policy.c.
 */
#include "sandbox/egress_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"

#define DEFAULT_MAX_CONNECTIONS 256u
#define DEFAULT_HEAD_TIMEOUT_MS 30000u
#define DEFAULT_CONNECT_TIMEOUT_MS 10000u
#define HEAD_LIMIT (16 * 1024)
#define WRITE_HIGH_WATER (256 * 1024)
#define WRITE_LOW_WATER (64 * 1024)
#define LISTEN_BACKLOG 128

/* Clients over the cap are answered 503 while they are at most this many more; the rest are
 * dropped without an answer (each answer costs a connection struct for a moment). */
#define REJECT_SLACK 64u

struct wreq {
    uv_write_t req;
    struct econn *c;
    char data[];
};

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

void egress_conn_maybe_free(struct econn *c)
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
    egress_conn_maybe_free(c);
}

/* The origin handle is closed between connect attempts too: the next attempt starts here, once
 * the handle can be initialised again. */
static void on_origin_closed(uv_handle_t *h)
{
    struct econn *c = h->data;
    c->nhandles--;
    if (!c->closing && c->state == ST_CONNECTING) {
        egress_conn_connect_next(c);
        return;
    }
    egress_conn_maybe_free(c);
}

void egress_conn_close_origin(struct econn *c)
{
    if (!c->origin_open)
        return;
    c->origin_open = 0;
    c->origin_reading = 0;
    uv_close((uv_handle_t *)&c->origin, on_origin_closed);
}

void egress_conn_close(struct econn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->client, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    egress_conn_close_origin(c);
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

void egress_client_set_reading(struct econn *c, bool on)
{
    if (c->closing || on == c->client_reading)
        return;
    if (on && uv_read_start((uv_stream_t *)&c->client, on_alloc, on_client_read) < 0) {
        egress_conn_close(c);
        return;
    }
    if (!on)
        uv_read_stop((uv_stream_t *)&c->client);
    c->client_reading = on;
}

void egress_origin_set_reading(struct econn *c, bool on)
{
    if (c->closing || !c->origin_open || on == c->origin_reading)
        return;
    if (on && uv_read_start((uv_stream_t *)&c->origin, on_alloc, on_origin_read) < 0) {
        egress_conn_close(c);
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
        egress_client_set_reading(c, true);
    }
    if (c->origin_paused && queued(&c->client) <= WRITE_LOW_WATER) {
        c->origin_paused = 0;
        egress_origin_set_reading(c, true);
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
        egress_conn_close(c);
        return;
    }
    relay_resume(c);
}

/* Queues a copy of [p, p+n) on `dst`. */
int egress_conn_write(struct econn *c, uv_tcp_t *dst, const void *p, size_t n)
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

void egress_on_shutdown(uv_shutdown_t *req, int status)
{
    struct econn *c = req->data;
    if (c->closing || status == UV_ECANCELED)
        return;
    if (status < 0) {
        egress_conn_close(c);
        return;
    }
    if (req == &c->origin_sd)
        c->origin_shut = 1;
    else
        c->client_shut = 1;
    if (c->state == ST_RESPONDING) {
        /* The answer is out; done if the client is too (else the linger timer ends it). */
        if (c->client_eof)
            egress_conn_close(c);
        return;
    }
    if (c->origin_shut && c->client_shut)
        egress_conn_close(c);
}

/* ---------------------------------------------------------------------------------------------
 * Reading the request head (parsed in egress_head.c)
 */

static void conn_head_input(struct econn *c, const char *p, size_t n)
{
    struct egress_proxy *px = c->px;
    size_t from = c->in.len > 2 ? c->in.len - 2 : 0;
    const char *why = NULL;

    if (buf_append(&c->in, p, n) < 0) {
        egress_conn_close(c);
        return;
    }
    size_t end = egress_head_end(c->in.data, c->in.len, from);
    if (end == 0 && c->in.len <= HEAD_LIMIT) {
        uv_timer_start(&c->timer, egress_on_timer, px->head_timeout_ms, 0);
        return;
    }
    if (end == 0 || end > HEAD_LIMIT) {
        egress_conn_respond(c, 431, "Request Header Fields Too Large", NULL,
                            "warren egress: the request head is larger than %d bytes\n",
                            HEAD_LIMIT);
        return;
    }
    c->head_len = end;
    egress_client_set_reading(c, false);
    uv_timer_stop(&c->timer);
    int rc = egress_head_parse(c, &why);
    if (rc == -ENOMEM) {
        egress_conn_close(c);
        return;
    }
    if (rc < 0) {
        log_info("egress: sandbox %s: bad request: %s", px->sandbox_id, why);
        egress_conn_respond(c, 400, "Bad Request", NULL, "warren egress: bad request: %s\n", why);
        return;
    }
    egress_conn_decide(c);
}

/* ---------------------------------------------------------------------------------------------
 * Callbacks
 */

void egress_on_timer(uv_timer_t *t)
{
    struct econn *c = t->data;
    char hp[HOSTPORT_MAX];
    if (c->closing)
        return;
    switch (c->state) {
    case ST_HEAD:
        log_debug("egress: sandbox %s: no request head in time; closing", c->px->sandbox_id);
        egress_conn_close(c);
        break;
    case ST_RESOLVING:
    case ST_CONNECTING:
        egress_target_format(&c->target, hp, sizeof(hp));
        log_info("egress: sandbox %s: %s %s: timed out %s", c->px->sandbox_id, c->method, hp,
                 c->state == ST_RESOLVING ? "resolving" : "connecting");
        egress_conn_respond(c, 504, "Gateway Timeout", NULL,
                            "warren egress: %s did not answer in time\n", hp);
        break;
    case ST_RESPONDING:
        egress_conn_close(c);
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
        egress_client_set_reading(c, false);
    else
        egress_origin_set_reading(c, false);
    sd->data = c;
    if (uv_shutdown(sd, (uv_stream_t *)dst, egress_on_shutdown) < 0)
        egress_conn_close(c);
}

static void relay(struct econn *c, bool from_client, const char *p, size_t n)
{
    uv_tcp_t *dst = from_client ? &c->origin : &c->client;
    if (egress_conn_write(c, dst, p, n) < 0) {
        egress_conn_close(c);
        return;
    }
    if (queued(dst) <= WRITE_HIGH_WATER)
        return;
    if (from_client) {
        c->client_paused = 1;
        egress_client_set_reading(c, false);
    } else {
        c->origin_paused = 1;
        egress_origin_set_reading(c, false);
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
            egress_conn_close(c); /* gone before asking anything */
        else
            conn_head_input(c, b->base, (size_t)nread);
        break;
    case ST_RELAY:
        if (nread == UV_EOF)
            relay_eof(c, true);
        else if (nread < 0)
            egress_conn_close(c);
        else
            relay(c, true, b->base, (size_t)nread);
        break;
    case ST_RESPONDING:
        if (nread == UV_EOF) {
            /* Closing now could cut the answer still queued: wait for the shutdown. */
            c->client_eof = 1;
            egress_client_set_reading(c, false);
            if (c->client_shut)
                egress_conn_close(c);
        } else if (nread < 0) {
            egress_conn_close(c);
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
        egress_conn_close(c);
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
        egress_conn_close(c);
        return;
    }
    if (px->nconns > px->max_conns) {
        log_warn("egress: sandbox %s: more than %u connections; refusing one", px->sandbox_id,
                 px->max_conns);
        egress_conn_respond(c, 503, "Service Unavailable", NULL,
                            "warren egress: too many connections through this proxy\n");
        return;
    }
    uv_tcp_nodelay(&c->client, 1);
    egress_client_set_reading(c, true);
    uv_timer_start(&c->timer, egress_on_timer, px->head_timeout_ms, 0);
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
        egress_conn_close(c);
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
        egress_conn_close(c);
    proxy_maybe_free(px);
}
