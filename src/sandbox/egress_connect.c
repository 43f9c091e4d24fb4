/*
 * egress_connect — from a parsed request head to a connected origin: the policy decision (logged
 * and reported to the owner), name resolution (hosts table, else getaddrinfo) with every
 * candidate address checked, connect attempts in order, and the error answers to the client.
 */
#include "sandbox/egress_internal.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"

#define LINGER_MS 2000
#define KEEPALIVE_S 60
/* Name lookups of one proxy in flight at once; more get 503. */
#define MAX_RESOLVING 2

static const char established[] = "HTTP/1.1 200 Connection established\r\n\r\n";

/* ---------------------------------------------------------------------------------------------
 * Responses and decisions
 */

void egress_conn_respond(struct econn *c, int status, const char *reason, const char *extra,
                         const char *fmt, ...)
{
    buf_t body = BUF_INIT, out = BUF_INIT;
    va_list ap;
    int rc;

    if (c->closing || c->state == ST_RESPONDING)
        return;
    c->state = ST_RESPONDING;
    uv_timer_stop(&c->timer);
    egress_conn_close_origin(c);
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
        rc = egress_conn_write(c, &c->client, out.data, out.len);
    buf_free(&body);
    buf_free(&out);
    c->client_sd.data = c;
    if (rc < 0 || uv_shutdown(&c->client_sd, (uv_stream_t *)&c->client, egress_on_shutdown) < 0) {
        egress_conn_close(c);
        return;
    }
    egress_client_set_reading(c, true); /* drained and dropped */
    uv_timer_start(&c->timer, egress_on_timer, LINGER_MS, 0);
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
    egress_conn_respond(
        c, 403, "Forbidden", "X-Warren-Egress: denied\r\n",
        "warren egress: %s is not allowed by this sandbox's network policy (%s%s%s)\n", hp, reason,
        addr[0] ? " " : "", addr);
}

static void conn_allow(struct econn *c, const char *reason)
{
    char first[INET6_ADDRSTRLEN];
    addr_format(&c->cand[0], first, sizeof(first));
    c->state = ST_CONNECTING;
    if (!conn_decision(c, true, first, reason))
        return;
    egress_conn_connect_next(c);
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
    egress_conn_respond(c, 502, "Bad Gateway", NULL, "warren egress: cannot resolve %s: %s\n",
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
        egress_conn_maybe_free(c);
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
        rc = egress_conn_write(c, &c->client, established, sizeof(established) - 1);
    else
        rc = egress_conn_write(c, &c->origin, c->fwd.data, c->fwd.len);
    /* Bytes the client sent after the head (a body, or an eager TLS hello) go first. */
    if (!rc && c->in.len > c->head_len)
        rc = egress_conn_write(c, &c->origin, c->in.data + c->head_len, c->in.len - c->head_len);
    buf_free(&c->in);
    buf_free(&c->fwd);
    if (rc < 0) {
        egress_conn_close(c);
        return;
    }
    egress_client_set_reading(c, true);
    egress_origin_set_reading(c, true);
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
        egress_conn_close_origin(c); /* on_origin_closed tries the next candidate */
        return;
    }
    conn_established(c);
}

void egress_conn_connect_next(struct econn *c)
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
            egress_conn_close_origin(c);
        }
        return;
    }
    egress_target_format(&c->target, hp, sizeof(hp));
    log_info("egress: sandbox %s: %s %s: cannot connect: %s", px->sandbox_id, c->method, hp,
             c->last_err ? uv_strerror(c->last_err) : "no allowed address");
    egress_conn_respond(c, 502, "Bad Gateway", NULL, "warren egress: cannot connect to %s: %s\n",
                        hp, c->last_err ? uv_strerror(c->last_err) : "no allowed address");
}

/* The head is parsed: apply the policy and start resolving or connecting. */
void egress_conn_decide(struct econn *c)
{
    struct egress_proxy *px = c->px;
    const char *reason = NULL;
    union egress_sockaddr found[MAX_CANDIDATES];

    if (egress_policy_mode(px->policy) == EGRESS_NONE) {
        conn_deny(c, "network mode is none", "");
        return;
    }
    uv_timer_start(&c->timer, egress_on_timer, px->connect_timeout_ms, 0);
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
        egress_conn_respond(c, 503, "Service Unavailable", NULL,
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
