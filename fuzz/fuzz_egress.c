/*
 * fuzz_egress — the egress proxy (sandbox/egress.c): its request-head parser, the policy checks
 * (sandbox/egress_policy.c) and what it forwards, end to end over loopback TCP.
 *
 * The process runs in a network namespace of its own with only `lo` up, so nothing can leave the
 * machine whatever the proxy decides. Names come from a hosts file (origin.test is 127.0.0.1,
 * where an origin server of the harness listens; metadata.test, private.test, v6.test and
 * public.test resolve to the kinds of address their names say).
 *
 * Input: one option byte, then what a sandbox process sends to the proxy.
 *   option & 3     policy: allowlist {127.0.0.1:ORIGIN, origin.test, metadata.test, public.test,
 *                  [::1]}, open {127.0.0.1:ORIGIN}, none, allowlist {*.test, v6.test:80}
 *   option & 12    pieces the bytes are sent in: all at once, 3, 13 or 128 bytes
 *   option & 16    half-close after sending
 * ORIGIN is the origin's port, spelled "%p" in the input (seeds use it; the fuzzer keeps it).
 *
 * Oracle, besides the sanitizers: a connection is allowed only to a public address or to exactly
 * a listed one (never in mode none); what reaches the origin is, for CONNECT, exactly the bytes
 * that followed the head and, for a forwarded request, a well-formed origin-form head (one Host,
 * no hop-by-hop headers, ending in Connection: close) followed by exactly those bytes; what the
 * client gets back starts like an HTTP response.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "harness.h"
#include "sandbox/egress.h"

#define MAX_ORIGIN_CONNS 4
#define REPLY_CAP (256 * 1024)

static uv_loop_t loop;
static struct egress_proxy *proxy;
static struct egress_hosts *hosts;
static struct sockaddr_in proxy_addr;
static int origin_lfd;
static unsigned origin_port;
static unsigned idle_handles;
static unsigned policy_kind;

struct origin_conn {
    int fd;
    buf_t in;
    int answered;
};
static struct origin_conn origins[MAX_ORIGIN_CONNS];
static size_t norigins;

/* ---- the origin server (the harness's side of the loop) --------------------------------- */

static int origin_tick(void *arg, int client_closed)
{
    int progress = 0;
    /* poll() first: a failing accept4() costs a socket allocation in the kernel. */
    for (struct pollfd p = {origin_lfd, POLLIN, 0}; poll(&p, 1, 0) == 1;) {
        int fd = accept4(origin_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        if (norigins == MAX_ORIGIN_CONNS)
            fz_fail("more origin connections than requests");
        origins[norigins++] = (struct origin_conn){.fd = fd};
        progress = 1;
    }
    for (size_t i = 0; i < norigins; i++) {
        struct origin_conn *o = &origins[i];
        char buf[16384];
        ssize_t n;
        while (o->fd >= 0 && (n = recv(o->fd, buf, sizeof(buf), 0)) > 0) {
            buf_append(&o->in, buf, (size_t)n);
            progress = 1;
        }
        /* Something to relay back once the request has arrived. */
        if (o->fd >= 0 && !o->answered && o->in.len > 0) {
            static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\norigin";
            send(o->fd, resp, sizeof(resp) - 1, MSG_NOSIGNAL);
            o->answered = 1;
            progress = 1;
        }
        if (o->fd >= 0 && client_closed) {
            close(o->fd);
            o->fd = -1;
            progress = 1;
        }
    }
    return progress;
}

/* ---- decisions ---------------------------------------------------------------------------- */

static void on_decision(void *ud, const struct egress_decision *d)
{
    union egress_sockaddr a = {0};
    if (!d->allowed)
        return;
    if (policy_kind == 2)
        fz_fail("mode none allowed %s %s:%u", d->method, d->host, d->port);
    if (inet_pton(AF_INET, d->address, &a.in.sin_addr) == 1)
        a.sa.sa_family = AF_INET;
    else if (inet_pton(AF_INET6, d->address, &a.in6.sin6_addr) == 1)
        a.sa.sa_family = AF_INET6;
    else
        fz_fail("allowed %s:%u via '%s', not an address", d->host, d->port, d->address);
    if (egress_addr_classify(&a.sa) == EGRESS_ADDR_PUBLIC)
        return;
    /* The listed literals are the only non-public addresses any policy here unlocks (an
     * IPv4-mapped IPv6 address is the IPv4 address, as egress.h says). */
    static const uint8_t mapped_lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1};
    int v4_lo = a.sa.sa_family == AF_INET ? a.in.sin_addr.s_addr == htonl(INADDR_LOOPBACK)
                                          : memcmp(&a.in6.sin6_addr, mapped_lo, 16) == 0;
    int v6_lo = a.sa.sa_family == AF_INET6 && IN6_IS_ADDR_LOOPBACK(&a.in6.sin6_addr);
    int listed = (v4_lo && d->port == origin_port) || (policy_kind == 0 && v6_lo);
    if (!listed)
        fz_fail("policy %u allowed %s:%u via %s (%s)", policy_kind, d->host, d->port, d->address,
                d->reason);
}

static struct egress_policy *make_policy(unsigned kind)
{
    char text[256], err[256];
    struct egress_policy *p = NULL;
    switch (kind) {
    case 0:
        snprintf(text, sizeof(text),
                 "{\"mode\":\"allowlist\",\"allow\":[\"127.0.0.1:%u\",\"origin.test\","
                 "\"metadata.test\",\"public.test\",\"[::1]\"]}",
                 origin_port);
        break;
    case 1:
        snprintf(text, sizeof(text), "{\"mode\":\"open\",\"allow\":[\"127.0.0.1:%u\"]}",
                 origin_port);
        break;
    case 2:
        snprintf(text, sizeof(text), "{\"mode\":\"none\"}");
        break;
    default:
        snprintf(text, sizeof(text),
                 "{\"mode\":\"allowlist\",\"allow\":[\"*.test\",\"v6.test:80\"]}");
    }
    json_t *j = json_loads(text, 0, NULL);
    if (!j || egress_policy_parse(j, &p, err, sizeof(err)) < 0)
        fz_fail("policy %s: %s", text, err);
    json_decref(j);
    return p;
}

/* ---- the oracle --------------------------------------------------------------------------- */

/* Where the proxy's head ends (egress.c: a blank line, "\n" or "\r\n"), or 0. */
static size_t head_end(const uint8_t *p, size_t len)
{
    for (size_t i = 1; i < len; i++) {
        if (p[i] == '\n' && (p[i - 1] == '\n' || (i >= 2 && p[i - 1] == '\r' && p[i - 2] == '\n')))
            return i + 1;
    }
    return 0;
}

static int is_tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* The head the proxy wrote: CRLF lines, "METHOD /target HTTP/1.x", header lines with a token
 * name (values are the client's, forwarded as they are), exactly one Host, no hop-by-hop header,
 * and Connection: close as the last one. Then exactly the bytes the client sent after its head. */
static void check_forwarded(const struct origin_conn *o, const uint8_t *rest, size_t rest_len)
{
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection",
                                      "proxy-authorization", NULL};
    const char *head = o->in.data, *end = memmem(head, o->in.len, "\r\n\r\n", 4);
    if (!end)
        fz_fail("forwarded head incomplete (%zu bytes)", o->in.len);
    size_t hlen = (size_t)(end - head) + 4;
    const char *why = NULL, *line = head, *last = NULL;
    int nhost = 0;
    for (int n = 0; !why && line < end + 2; n++) {
        const char *eol = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
        size_t len = (size_t)(eol - line);
        if (memchr(line, '\r', len) || memchr(line, '\n', len)) {
            why = "a bare CR or LF";
        } else if (n == 0) {
            const char *sp = memchr(line, ' ', len);
            if (!sp || sp + 1 >= eol || sp[1] != '/' || len < 10 ||
                (memcmp(eol - 9, " HTTP/1.1", 9) != 0 && memcmp(eol - 9, " HTTP/1.0", 9) != 0))
                why = "the request line";
        } else {
            const char *colon = memchr(line, ':', len);
            if (!colon || colon == line)
                why = "a header line without a name";
            for (const char *p = line; !why && p < colon; p++)
                if (!is_tchar(*p))
                    why = "a header name";
            size_t nlen = colon ? (size_t)(colon - line) : 0;
            if (!why && nlen == 4 && strncasecmp(line, "host", 4) == 0)
                nhost++;
            for (size_t i = 0; !why && hop[i]; i++)
                if (strlen(hop[i]) == nlen && strncasecmp(line, hop[i], nlen) == 0 && eol != end)
                    why = "a hop-by-hop header";
            last = line;
        }
        line = eol + 2;
    }
    if (!why && nhost != 1)
        why = "not exactly one Host";
    if (!why && (!last || strncmp(last, "Connection: close\r\n", 19) != 0))
        why = "no Connection: close at the end";
    if (why)
        fz_fail("forwarded head: %s:\n%.*s", why, (int)hlen, head);
    size_t body = o->in.len - hlen;
    if (body > rest_len || memcmp(o->in.data + hlen, rest, body) != 0)
        fz_fail("the origin got %zu bytes after the head that the client did not send", body);
}

static void check_origins(const uint8_t *data, size_t size)
{
    size_t hend = head_end(data, size);
    int is_connect = size >= 8 && memcmp(data, "CONNECT ", 8) == 0;
    for (size_t i = 0; i < norigins; i++) {
        const struct origin_conn *o = &origins[i];
        if (i > 0 || hend == 0)
            fz_fail("an origin connection without a (first) complete head");
        if (o->in.len == 0)
            continue;
        if (is_connect) {
            if (o->in.len > size - hend || memcmp(o->in.data, data + hend, o->in.len) != 0)
                fz_fail("the tunnel carried bytes the client did not send");
        } else {
            check_forwarded(o, data + hend, size - hend);
        }
    }
}

static void check_reply(const struct fz_reply *r)
{
    if (r->len > 0 && (r->len < 9 || memcmp(r->data, "HTTP/1.", 7) != 0))
        fz_fail("the client got %zu bytes that are not an HTTP response", r->len);
}

/* ---- set-up and one input ----------------------------------------------------------------- */

static int listen_loopback(unsigned *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0)
        fz_fail("listen: %s", strerror(errno));
    *port = ntohs(a.sin_port);
    return fd;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[64], path[128];
    unsigned pport;
    log_set_level(LOG_ERROR);
    fz_private_network();
    fz_scratch_dir("egress", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/hosts", dir);
    FILE *h = fopen(path, "w");
    if (!h)
        fz_fail("%s: %s", path, strerror(errno));
    fputs("127.0.0.1 origin.test\n169.254.169.254 metadata.test\n10.0.0.1 private.test\n"
          "::1 v6.test\n198.18.0.5 public.test\n",
          h);
    fclose(h);
    if (egress_hosts_load(path, &hosts) < 0)
        fz_fail("cannot load %s", path);
    origin_lfd = listen_loopback(&origin_port);
    int lfd = listen_loopback(&pport);
    proxy_addr = (struct sockaddr_in){.sin_family = AF_INET,
                                      .sin_port = htons((uint16_t)pport),
                                      .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct egress_options opt = {
        .sandbox_id = "sb-fuzz",
        .hosts = hosts,
        .on_decision = on_decision,
        .max_connections = 4,
    };
    if (uv_loop_init(&loop) < 0 ||
        egress_proxy_start(&loop, lfd, &opt, egress_policy_new(EGRESS_NONE), &proxy) < 0)
        fz_fail("cannot start the proxy");
    idle_handles = fz_loop_handles(&loop);
    return 0;
}

/* The input with every "%p" replaced by the origin's port. */
static void expand(const uint8_t *data, size_t size, buf_t *out)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", origin_port);
    for (size_t i = 0; i < size; i++) {
        if (data[i] == '%' && i + 1 < size && data[i + 1] == 'p') {
            buf_append_str(out, port);
            i++;
        } else {
            buf_append(out, &data[i], 1);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t pieces[] = {0, 3, 13, 128};
    static uint8_t reply_buf[REPLY_CAP];
    if (size < 1)
        return 0;
    unsigned opt = data[0];
    policy_kind = opt & 3;
    egress_proxy_set_policy(proxy, make_policy(policy_kind));
    buf_t input = BUF_INIT;
    expand(data + 1, size - 1, &input);
    struct fz_reply reply = {reply_buf, 0, sizeof(reply_buf)};
    struct fz_client c = {
        .addr = (const struct sockaddr *)&proxy_addr,
        .addrlen = sizeof(proxy_addr),
        .piece = pieces[(opt >> 2) & 3],
        .half_close = (opt & 16) != 0,
        .idle_handles = idle_handles,
        .reply = &reply,
        .tick = origin_tick,
    };
    norigins = 0;
    fz_session(&loop, &c, (const uint8_t *)(input.data ? input.data : ""), input.len);
    /* A connection the proxy opened and closed before the harness accepted it is no request of
     * the next input. */
    for (int fd; (fd = accept4(origin_lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0;)
        close(fd);
    if (egress_proxy_connections(proxy) != 0)
        fz_fail("%u proxy connections left", egress_proxy_connections(proxy));
    check_origins((const uint8_t *)input.data, input.len);
    check_reply(&reply);
    for (size_t i = 0; i < norigins; i++)
        buf_free(&origins[i].in);
    buf_free(&input);
    return 0;
}
