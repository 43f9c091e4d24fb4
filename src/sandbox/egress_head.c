/*
 * egress_head — the client's request head: parsing the request line and headers (CONNECT
 * host:port, or an absolute-form http:// request) into the connection's target, and rewriting an
 * absolute-form head for the origin without its hop-by-hop headers.
 */
#include "sandbox/egress_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

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
int egress_head_parse(struct econn *c, const char **why)
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
size_t egress_head_end(const char *p, size_t len, size_t from)
{
    for (size_t i = from; i < len; i++) {
        if (p[i] != '\n')
            continue;
        if ((i >= 1 && p[i - 1] == '\n') || (i >= 2 && p[i - 1] == '\r' && p[i - 2] == '\n'))
            return i + 1;
    }
    return 0;
}
