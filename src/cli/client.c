/*
 * client — blocking HTTP/1.1 client for the CLI. See client.h.
 */
#include "cli/client.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_CONNECT_TIMEOUT_MS 10000
#define CLIENT_MAX_HEAD (64 * 1024)
#define CLIENT_MAX_BODY ((size_t)1 << 30)
#define CLIENT_READ_CHUNK (64 * 1024)

/* Internal marker: the connection was closed before any byte of the response arrived. */
#define CLIENT_ECLOSED_EARLY (-10000)

static void client_set_error(struct client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void client_set_error(struct client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
}

static int64_t client_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- URL parsing ------------------------------------------------------------------------- */

static int client_parse_http(struct client *c, const char *rest)
{
    const char *slash = strchr(rest, '/');
    size_t authlen = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *path = slash ? slash : "";
    const char *host_start, *host_end, *port_start = NULL;

    if (authlen == 0 || memchr(rest, '@', authlen) || memchr(rest, '?', authlen) ||
        memchr(rest, '#', authlen)) {
        client_set_error(c, "malformed URL '%s'", c->url);
        return -EINVAL;
    }
    if (rest[0] == '[') {
        const char *rb = memchr(rest, ']', authlen);
        if (!rb || rb == rest + 1) {
            client_set_error(c, "malformed URL '%s'", c->url);
            return -EINVAL;
        }
        host_start = rest + 1;
        host_end = rb;
        if (rb + 1 < rest + authlen) {
            if (rb[1] != ':') {
                client_set_error(c, "malformed URL '%s'", c->url);
                return -EINVAL;
            }
            port_start = rb + 2;
        }
    } else {
        const char *colon = memchr(rest, ':', authlen);
        host_start = rest;
        host_end = colon ? colon : rest + authlen;
        if (colon)
            port_start = colon + 1;
        if (host_end == host_start) {
            client_set_error(c, "malformed URL '%s': no host", c->url);
            return -EINVAL;
        }
    }
    if (port_start) {
        size_t plen = (size_t)(rest + authlen - port_start);
        long port = 0;
        if (plen == 0 || plen > 5) {
            client_set_error(c, "malformed URL '%s': bad port", c->url);
            return -EINVAL;
        }
        for (size_t i = 0; i < plen; i++) {
            if (!isdigit((unsigned char)port_start[i])) {
                client_set_error(c, "malformed URL '%s': bad port", c->url);
                return -EINVAL;
            }
            port = port * 10 + (port_start[i] - '0');
        }
        if (port < 1 || port > 65535) {
            client_set_error(c, "malformed URL '%s': bad port", c->url);
            return -EINVAL;
        }
        c->port = strndup(port_start, plen);
    } else {
        c->port = strdup("80");
    }
    c->host = strndup(host_start, (size_t)(host_end - host_start));
    c->host_header = strndup(rest, authlen);
    c->prefix = strdup(path);
    if (!c->port || !c->host || !c->host_header || !c->prefix) {
        client_set_error(c, "out of memory");
        return -ENOMEM;
    }
    /* Drop trailing slashes of the prefix: request paths start with '/'. */
    size_t n = strlen(c->prefix);
    while (n > 0 && c->prefix[n - 1] == '/')
        c->prefix[--n] = '\0';
    if (strpbrk(c->prefix, "?# \t\r\n")) {
        client_set_error(c, "malformed URL '%s': bad path", c->url);
        return -EINVAL;
    }
    return 0;
}

int client_open(struct client *c, const char *base_url)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    buf_init(&c->in);
    c->url = strdup(base_url ? base_url : "");
    if (!c->url) {
        client_set_error(c, "out of memory");
        return -ENOMEM;
    }
    if (strncmp(c->url, "unix:", 5) == 0) {
        const char *p = c->url + 5;
        if (strncmp(p, "//", 2) == 0)
            p += 2;
        if (p[0] != '/') {
            client_set_error(c, "malformed URL '%s': expected unix:/absolute/path", c->url);
            return -EINVAL;
        }
        if (strlen(p) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            client_set_error(c, "unix socket path too long: %s", p);
            return -ENAMETOOLONG;
        }
        c->unix_path = strdup(p);
        c->host_header = strdup("localhost");
        c->prefix = strdup("");
        if (!c->unix_path || !c->host_header || !c->prefix) {
            client_set_error(c, "out of memory");
            return -ENOMEM;
        }
        return 0;
    }
    if (strncasecmp(c->url, "http://", 7) == 0)
        return client_parse_http(c, c->url + 7);
    if (strstr(c->url, "://")) {
        client_set_error(c, "unsupported URL scheme in '%s' (use http:// or unix:)", c->url);
        return -EPROTONOSUPPORT;
    }
    client_set_error(c, "malformed URL '%s' (use http://HOST:PORT or unix:/PATH)", c->url);
    return -EINVAL;
}

void client_disconnect(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->conn_requests = 0;
    buf_reset(&c->in);
}

void client_close(struct client *c)
{
    client_disconnect(c);
    buf_free(&c->in);
    free(c->url);
    free(c->unix_path);
    free(c->host);
    free(c->port);
    free(c->host_header);
    free(c->prefix);
    c->url = c->unix_path = c->host = c->port = c->host_header = c->prefix = NULL;
}

/* ---- waiting and raw I/O ----------------------------------------------------------------- */

/* Wait for `events` on c->fd. deadline_ms: absolute CLOCK_MONOTONIC ms, or -1 for none.
 * Returns the revents (> 0) when ready, 0 at the deadline, -EINTR (cancelled) or -errno. */
static int client_poll(struct client *c, short events, int64_t deadline_ms)
{
    struct pollfd p = {.fd = c->fd, .events = events};

    for (;;) {
        int r;
        if (c->cancel && *c->cancel)
            return -EINTR;
        if (deadline_ms >= 0) {
            int64_t left = deadline_ms - client_now_ms();
            if (left <= 0)
                return 0;
            struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
            r = c->wait_mask ? ppoll(&p, 1, &ts, c->wait_mask)
                             : poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        } else {
            r = c->wait_mask ? ppoll(&p, 1, NULL, c->wait_mask) : poll(&p, 1, -1);
        }
        if (r > 0)
            return p.revents ? p.revents : events;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

/* Wait for `events` on c->fd. deadline_ms: absolute CLOCK_MONOTONIC ms, or -1 for none.
 * Returns 0 when ready, -ETIMEDOUT, -EINTR (cancelled) or -errno. */
static int client_wait(struct client *c, short events, int64_t deadline_ms)
{
    int r = client_poll(c, events, deadline_ms);
    return r > 0 ? 0 : r == 0 ? -ETIMEDOUT : r;
}

/* Receive into `dst` at most `max` bytes. Returns the count (> 0), 0 at EOF, or -errno. */
static ssize_t client_recv_some(struct client *c, buf_t *dst, size_t max)
{
    int r = buf_reserve(dst, max);
    if (r < 0)
        return r;
    for (;;) {
        ssize_t n = recv(c->fd, dst->data + dst->len, max, 0);
        if (n > 0) {
            dst->len += (size_t)n;
            dst->data[dst->len] = '\0';
            return n;
        }
        if (n == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        r = client_wait(c, POLLIN, -1);
        if (r < 0)
            return r;
    }
}

static int client_send_all(struct client *c, const void *head, size_t hlen, const void *body,
                           size_t blen)
{
    struct iovec iov[2] = {{(void *)head, hlen}, {(void *)body, body ? blen : 0}};
    int niov = 2;
    struct iovec *v = iov;

    while (niov > 0) {
        if (v->iov_len == 0) {
            v++;
            niov--;
            continue;
        }
        struct msghdr mh = {.msg_iov = v, .msg_iovlen = (size_t)niov};
        ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -errno;
            int r = client_wait(c, POLLOUT, -1);
            if (r < 0)
                return r;
            continue;
        }
        size_t left = (size_t)n;
        while (niov > 0 && left >= v->iov_len) {
            left -= v->iov_len;
            v++;
            niov--;
        }
        if (niov > 0) {
            v->iov_base = (char *)v->iov_base + left;
            v->iov_len -= left;
        }
    }
    return 0;
}

/* ---- connecting -------------------------------------------------------------------------- */

static int client_connect_unix(struct client *c)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        client_set_error(c, "socket: %s", strerror(e));
        return -e;
    }
    memcpy(sa.sun_path, c->unix_path, strlen(c->unix_path) + 1);
    while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        if (e == EINTR)
            continue;
        close(fd);
        client_set_error(c, "%s", strerror(e));
        return -e;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        client_set_error(c, "fcntl: %s", strerror(e));
        return -e;
    }
    c->fd = fd;
    return 0;
}

static int client_connect_tcp(struct client *c)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int64_t deadline = client_now_ms() + CLIENT_CONNECT_TIMEOUT_MS;
    int err = -EHOSTUNREACH;

    int g = getaddrinfo(c->host, c->port, &hints, &res);
    if (g != 0) {
        client_set_error(c, "cannot resolve '%s': %s", c->host,
                         g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
        return g == EAI_SYSTEM ? -errno : g == EAI_MEMORY ? -ENOMEM : -EHOSTUNREACH;
    }
    client_set_error(c, "%s", strerror(EHOSTUNREACH));
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = -errno;
            client_set_error(c, "socket: %s", strerror(-err));
            continue;
        }
        int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r < 0 && errno == EINPROGRESS) {
            c->fd = fd;
            r = client_wait(c, POLLOUT, deadline);
            c->fd = -1;
            if (r == 0) {
                int soerr = 0;
                socklen_t sl = sizeof(soerr);
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                    soerr = errno;
                r = soerr ? -soerr : 0;
            }
            if (r == -EINTR) {
                close(fd);
                freeaddrinfo(res);
                client_set_error(c, "interrupted");
                return r;
            }
        } else if (r < 0) {
            r = -errno;
        }
        if (r == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            c->fd = fd;
            freeaddrinfo(res);
            return 0;
        }
        close(fd);
        err = r;
        client_set_error(c, "%s", strerror(-r));
    }
    freeaddrinfo(res);
    return err;
}

static int client_connect(struct client *c)
{
    buf_reset(&c->in);
    c->conn_requests = 0;
    return c->unix_path ? client_connect_unix(c) : client_connect_tcp(c);
}

/* A kept-alive connection that became readable while idle was closed by the server (or sent
 * something unexpected): either way it cannot carry the next request. */
static bool client_conn_is_stale(struct client *c)
{
    if (c->in.len > 0)
        return true;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int r;
    do
        r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    return r != 0;
}

/* ---- response parsing -------------------------------------------------------------------- */

static void client_response_init(struct client_response *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->body);
}

void client_response_free(struct client_response *r)
{
    free(r->head);
    free(r->headers);
    buf_free(&r->body);
    client_response_init(r);
}

const char *client_response_header(const struct client_response *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

bool client_header_has_token(const char *value, const char *token)
{
    size_t tl = strlen(token);
    const char *p = value;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        const char *e = end;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - p) == tl && strncasecmp(p, token, tl) == 0)
            return true;
        p = end;
    }
    return false;
}

/* Read until c->in holds a line ending in "\n" within the first `max` bytes; returns the length
 * including the line end, or -errno. got_any is set once any byte was received. */
static ssize_t client_read_until(struct client *c, const char *delim, size_t max, bool *got_any)
{
    size_t dl = strlen(delim);
    size_t searched = 0;
    for (;;) {
        if (c->in.len > 0) {
            size_t from = searched >= dl ? searched - dl + 1 : 0;
            char *hit = memmem(c->in.data + from, c->in.len - from, delim, dl);
            if (hit)
                return (ssize_t)(hit - c->in.data + (ptrdiff_t)dl);
            searched = c->in.len;
        }
        if (c->in.len > max) {
            client_set_error(c, "malformed response: header or chunk line too long");
            return -EPROTO;
        }
        ssize_t n = client_recv_some(c, &c->in, CLIENT_READ_CHUNK);
        if (n == 0) {
            if (got_any && !*got_any && c->in.len == 0)
                return CLIENT_ECLOSED_EARLY;
            client_set_error(c, "connection closed by the server before the response was "
                                "complete");
            return -ECONNRESET;
        }
        if (n < 0) {
            if (n == -ECONNRESET && got_any && !*got_any && c->in.len == 0)
                return CLIENT_ECLOSED_EARLY;
            client_set_error(c, "%s", strerror((int)-n));
            return (int)n;
        }
        if (got_any)
            *got_any = true;
    }
}

/* Where a response body goes: collected in `buf` (at most CLIENT_MAX_BODY bytes), or handed to
 * `fn` piece by piece (streamed responses, no limit). */
struct client_sink {
    buf_t *buf;
    client_write_body_fn fn;
    void *arg;
};

/* Hand the first `n` bytes of c->in to a streaming sink and drop them. */
static int client_sink_deliver(struct client *c, struct client_sink *s, size_t n)
{
    int r = s->fn(s->arg, c->in.data, n);
    if (r < 0) {
        client_set_error(c, "%s", strerror(-r));
        return r;
    }
    buf_consume(&c->in, n);
    return 0;
}

/* Receive more into c->in for a streaming sink. 0 or -errno (-ECONNRESET at EOF). */
static int client_sink_fill(struct client *c)
{
    ssize_t got = client_recv_some(c, &c->in, CLIENT_READ_CHUNK * 4);
    if (got == 0) {
        client_set_error(c, "connection closed by the server before the response was complete");
        return -ECONNRESET;
    }
    if (got < 0) {
        client_set_error(c, "%s", strerror((int)-got));
        return (int)got;
    }
    return 0;
}

/* Move exactly `n` body bytes to the sink (first from c->in, then from the socket). */
static int client_read_exact(struct client *c, struct client_sink *s, size_t n)
{
    if (s->fn) {
        while (n > 0) {
            int r = c->in.len > 0 ? 0 : client_sink_fill(c);
            if (r < 0)
                return r;
            size_t take = c->in.len < n ? c->in.len : n;
            if ((r = client_sink_deliver(c, s, take)) < 0)
                return r;
            n -= take;
        }
        return 0;
    }
    buf_t *dst = s->buf;
    if (dst->len + n > CLIENT_MAX_BODY || dst->len + n < dst->len) {
        client_set_error(c, "response too large");
        return -EFBIG;
    }
    size_t take = c->in.len < n ? c->in.len : n;
    if (take > 0) {
        int r = buf_append(dst, c->in.data, take);
        if (r < 0) {
            client_set_error(c, "out of memory");
            return r;
        }
        buf_consume(&c->in, take);
        n -= take;
    }
    while (n > 0) {
        size_t want = n < CLIENT_READ_CHUNK * 16 ? n : CLIENT_READ_CHUNK * 16;
        ssize_t got = client_recv_some(c, dst, want);
        if (got == 0) {
            client_set_error(c, "connection closed by the server before the response was "
                                "complete");
            return -ECONNRESET;
        }
        if (got < 0) {
            client_set_error(c, "%s", strerror((int)-got));
            return (int)got;
        }
        n -= (size_t)got;
    }
    return 0;
}

static int client_read_chunked(struct client *c, struct client_sink *dst)
{
    for (;;) {
        ssize_t ll = client_read_until(c, "\r\n", 1024, NULL);
        if (ll < 0)
            return (int)ll;
        char *line = c->in.data;
        size_t size = 0;
        size_t i = 0;
        for (; i < (size_t)ll && isxdigit((unsigned char)line[i]); i++) {
            if (size > (SIZE_MAX >> 4)) {
                client_set_error(c, "response too large");
                return -EFBIG;
            }
            int d = isdigit((unsigned char)line[i]) ? line[i] - '0'
                                                    : (tolower((unsigned char)line[i]) - 'a' + 10);
            size = size * 16 + (size_t)d;
        }
        if (i == 0 || (line[i] != '\r' && line[i] != ';' && line[i] != ' ' && line[i] != '\t')) {
            client_set_error(c, "malformed response: bad chunk size");
            return -EPROTO;
        }
        buf_consume(&c->in, (size_t)ll);
        if (size == 0)
            break;
        int r = client_read_exact(c, dst, size);
        if (r < 0)
            return r;
        ll = client_read_until(c, "\r\n", 16, NULL);
        if (ll < 0)
            return (int)ll;
        if (ll != 2) {
            client_set_error(c, "malformed response: bad chunk end");
            return -EPROTO;
        }
        buf_consume(&c->in, 2);
    }
    /* Trailer section: header lines up to an empty line. */
    for (;;) {
        ssize_t ll = client_read_until(c, "\r\n", CLIENT_MAX_HEAD, NULL);
        if (ll < 0)
            return (int)ll;
        buf_consume(&c->in, (size_t)ll);
        if (ll == 2)
            return 0;
    }
}

static int client_read_to_eof(struct client *c, struct client_sink *s)
{
    if (s->fn) {
        for (;;) {
            if (c->in.len > 0) {
                int r = client_sink_deliver(c, s, c->in.len);
                if (r < 0)
                    return r;
            }
            ssize_t n = client_recv_some(c, &c->in, CLIENT_READ_CHUNK * 4);
            if (n == 0)
                return 0;
            if (n < 0) {
                client_set_error(c, "%s", strerror((int)-n));
                return (int)n;
            }
        }
    }
    buf_t *dst = s->buf;
    if (c->in.len > 0) {
        int r = buf_append(dst, c->in.data, c->in.len);
        if (r < 0)
            return r;
        buf_reset(&c->in);
    }
    for (;;) {
        if (dst->len > CLIENT_MAX_BODY) {
            client_set_error(c, "response too large");
            return -EFBIG;
        }
        ssize_t n = client_recv_some(c, dst, CLIENT_READ_CHUNK);
        if (n == 0)
            return 0;
        if (n < 0) {
            client_set_error(c, "%s", strerror((int)-n));
            return (int)n;
        }
    }
}

/* Split the header block (status line + header lines, "\r\n"-separated, NUL-terminated copy). */
static int client_parse_head(struct client *c, struct client_response *out, int *minor)
{
    char *p = out->head;
    char *eol = strstr(p, "\r\n");
    if (!eol)
        goto bad;
    *eol = '\0';
    /* "HTTP/1.x SSS[ reason]" */
    if (strncmp(p, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)p[7]) || p[8] != ' ' ||
        !isdigit((unsigned char)p[9]) || !isdigit((unsigned char)p[10]) ||
        !isdigit((unsigned char)p[11]) || (p[12] != ' ' && p[12] != '\0'))
        goto bad;
    *minor = p[7] - '0';
    out->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (out->status < 100)
        goto bad;

    size_t cap = 0;
    p = eol + 2;
    while (*p) {
        eol = strstr(p, "\r\n");
        if (!eol)
            goto bad;
        *eol = '\0';
        if (*p == '\0')
            break;
        char *colon = strchr(p, ':');
        if (!colon || colon == p || *p == ' ' || *p == '\t')
            goto bad;
        for (char *q = p; q < colon; q++)
            if (*q == ' ' || *q == '\t')
                goto bad;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        char *ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            *--ve = '\0';
        if (out->nheaders == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct client_header *nh = realloc(out->headers, ncap * sizeof(*nh));
            if (!nh) {
                client_set_error(c, "out of memory");
                return -ENOMEM;
            }
            out->headers = nh;
            cap = ncap;
        }
        out->headers[out->nheaders].name = p;
        out->headers[out->nheaders].value = v;
        out->nheaders++;
        p = eol + 2;
    }
    return 0;
bad:
    client_set_error(c, "malformed response from the server (is this a warren daemon?)");
    return -EPROTO;
}

/* Read one complete response. *keep is set to whether the connection may be reused. With `st`
 * (streamed requests), the body of a 2xx answer goes to st->write_body when it is set. */
static int client_read_response(struct client *c, const char *method, struct client_response *out,
                                bool *got_any, bool *keep, const struct client_stream *st)
{
    for (;;) {
        ssize_t hl = client_read_until(c, "\r\n\r\n", CLIENT_MAX_HEAD, got_any);
        if (hl < 0)
            return (int)hl;
        client_response_free(out);
        out->head = strndup(c->in.data, (size_t)hl);
        if (!out->head) {
            client_set_error(c, "out of memory");
            return -ENOMEM;
        }
        buf_consume(&c->in, (size_t)hl);
        int minor = 1;
        int r = client_parse_head(c, out, &minor);
        if (r < 0)
            return r;
        if (out->status >= 100 && out->status < 200 && out->status != 101)
            continue; /* interim response (100 Continue): the real one follows */

        const char *conn = client_response_header(out, "Connection");
        if (minor == 0)
            *keep = conn && client_header_has_token(conn, "keep-alive");
        else
            *keep = !(conn && client_header_has_token(conn, "close"));

        struct client_sink sink = {.buf = &out->body};
        if (st && st->write_body && out->status >= 200 && out->status <= 299) {
            if (st->on_head && (r = st->on_head(st->arg, out)) < 0) {
                client_set_error(c, "%s", strerror(-r));
                return r;
            }
            sink.fn = st->write_body;
            sink.arg = st->arg;
        }

        if (strcmp(method, "HEAD") == 0 || out->status == 204 || out->status == 304 ||
            out->status == 101)
            return 0;
        const char *te = client_response_header(out, "Transfer-Encoding");
        const char *cl = client_response_header(out, "Content-Length");
        if (te && !client_header_has_token(te, "identity")) {
            if (!client_header_has_token(te, "chunked")) {
                client_set_error(c, "unsupported Transfer-Encoding '%s'", te);
                return -EPROTO;
            }
            return client_read_chunked(c, &sink);
        }
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || end == cl || *end || !isdigit((unsigned char)cl[0])) {
                client_set_error(c, "malformed response: bad Content-Length");
                return -EPROTO;
            }
            if (n > (sink.fn ? SIZE_MAX : CLIENT_MAX_BODY)) {
                client_set_error(c, "response too large (%llu bytes)", n);
                return -EFBIG;
            }
            return client_read_exact(c, &sink, (size_t)n);
        }
        *keep = false;
        return client_read_to_eof(c, &sink);
    }
}

/* ---- requests ---------------------------------------------------------------------------- */

static int client_build_head(struct client *c, buf_t *h, const char *method, const char *path,
                             const char *content_type, const char *extra_headers, const void *body,
                             size_t len)
{
    int r = buf_appendf(h,
                        "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: warren-cli\r\n"
                        "Accept: application/json\r\n",
                        method, c->prefix, path, c->host_header);
    if (r == 0 && extra_headers)
        r = buf_append_str(h, extra_headers);
    if (r == 0 && content_type)
        r = buf_appendf(h, "Content-Type: %s\r\n", content_type);
    if (r == 0 && (body || len || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
                   strcmp(method, "PATCH") == 0))
        r = buf_appendf(h, "Content-Length: %zu\r\n", body ? len : 0);
    if (r == 0)
        r = buf_append_str(h, "\r\n");
    return r;
}

/* One exchange. With `upgrade` set, a fresh connection is always used, and a 101 answer hands the
 * connection over (*fd, `rest`) instead of keeping it. */
static int client_exchange(struct client *c, const char *method, const char *path,
                           const char *content_type, const char *extra_headers, const void *body,
                           size_t len, struct client_response *out, bool upgrade, int *fd,
                           buf_t *rest)
{
    buf_t head = BUF_INIT;
    int r;

    client_response_init(out);
    c->connect_failed = 0;
    c->error[0] = '\0';
    if (!path || path[0] != '/' || strpbrk(path, " \t\r\n") || strpbrk(method, " \t\r\n")) {
        client_set_error(c, "invalid request path");
        return -EINVAL;
    }
    r = client_build_head(c, &head, method, path, content_type, extra_headers, body, len);
    if (r < 0) {
        client_set_error(c, "out of memory");
        return r;
    }

    for (int attempt = 0;; attempt++) {
        bool reused = false, got_any = false, keep = false;

        if (c->fd >= 0 && (upgrade || client_conn_is_stale(c)))
            client_disconnect(c);
        if (c->fd >= 0) {
            reused = true;
        } else {
            r = client_connect(c);
            if (r < 0) {
                c->connect_failed = r != -EINTR;
                break;
            }
        }
        r = client_send_all(c, head.data, head.len, body, len);
        if (r == -EPIPE || r == -ECONNRESET) {
            if (reused && attempt == 0) {
                client_disconnect(c);
                continue;
            }
            /* The server may have answered before closing (e.g. it rejected an oversized body
             * early): use that answer if there is one. */
            int sent_err = r;
            r = client_read_response(c, method, out, &got_any, &keep, NULL);
            keep = false;
            if (r < 0) {
                r = sent_err;
                client_set_error(c, "%s", strerror(-r));
            }
        } else if (r < 0) {
            client_set_error(c, "%s", r == -EINTR ? "interrupted" : strerror(-r));
        } else {
            r = client_read_response(c, method, out, &got_any, &keep, NULL);
        }
        if (r == CLIENT_ECLOSED_EARLY) {
            if (reused && attempt == 0) {
                client_disconnect(c);
                continue;
            }
            client_set_error(c, "connection closed by the server without a response");
            r = -ECONNRESET;
        }
        if (r < 0) {
            if (r == -EINTR)
                client_set_error(c, "interrupted");
            goto fail;
        }
        if (upgrade && out->status == 101) {
            if (c->in.len > 0 && buf_append(rest, c->in.data, c->in.len) < 0) {
                client_set_error(c, "out of memory");
                r = -ENOMEM;
                goto fail;
            }
            *fd = c->fd;
            c->fd = -1;
            client_disconnect(c);
            break;
        }
        if (keep && c->in.len == 0)
            c->conn_requests++;
        else
            client_disconnect(c);
        break;
    fail:
        client_response_free(out);
        client_disconnect(c);
        break;
    }
    buf_free(&head);
    return r;
}

int client_request(struct client *c, const char *method, const char *path, const char *content_type,
                   const void *body, size_t len, struct client_response *out)
{
    return client_exchange(c, method, path, content_type, NULL, body, len, out, false, NULL, NULL);
}

int client_upgrade(struct client *c, const char *path, const char *extra_headers,
                   struct client_response *out, int *fd, buf_t *rest)
{
    *fd = -1;
    return client_exchange(c, "GET", path, NULL, extra_headers, NULL, 0, out, true, fd, rest);
}

/* ---- streamed requests ------------------------------------------------------------------- */

/* The server sent something while the body is (about to be) sent: read its head. An interim
 * answer (100 Continue) is dropped: returns 0 (go on sending). A final answer stays in c->in for
 * client_read_response(): returns 1 (stop sending). Or -errno. */
static int client_take_interim(struct client *c)
{
    for (;;) {
        bool got_any = false;
        ssize_t hl = client_read_until(c, "\r\n\r\n", CLIENT_MAX_HEAD, &got_any);
        if (hl == CLIENT_ECLOSED_EARLY) {
            client_set_error(c, "connection closed by the server without a response");
            return -ECONNRESET;
        }
        if (hl < 0)
            return (int)hl;
        const char *h = c->in.data;
        if (hl < 12 || strncmp(h, "HTTP/1.", 7) != 0 || h[9] != '1' ||
            (h[10] == '0' && h[11] == '1'))
            return 1;
        buf_consume(&c->in, (size_t)hl);
        if (c->in.len == 0)
            return 0;
    }
}

/* Send `n` bytes of body unless the server answers first. Returns 0 (sent), 1 (a final answer is
 * waiting: stop sending) or -errno. */
static int client_send_piece(struct client *c, const char *p, size_t n)
{
    while (n > 0) {
        int ev = client_poll(c, POLLOUT | POLLIN, -1);
        if (ev < 0)
            return ev;
        if (ev & (POLLIN | POLLHUP | POLLERR)) {
            int r = client_take_interim(c);
            if (r != 0)
                return r;
            continue;
        }
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            int e = errno;
            client_set_error(c, "%s", strerror(e));
            return -e;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Send the whole body from s->read_body (Content-Length or chunked). 0, 1 (answered early) or
 * -errno. */
static int client_send_stream_body(struct client *c, const struct client_stream *s)
{
    enum { PIECE = 256 * 1024, ROOM = 16 };
    char *buf = malloc(ROOM + PIECE + 2);
    long long left = s->body_len;
    int r = 0;

    if (!buf) {
        client_set_error(c, "out of memory");
        return -ENOMEM;
    }
    for (;;) {
        size_t want = PIECE;
        if (s->body_len >= 0) {
            if (left == 0)
                break;
            if ((long long)want > left)
                want = (size_t)left;
        }
        char *data = buf + ROOM;
        ssize_t n = s->read_body(s->arg, data, want);
        if (n < 0) {
            r = (int)n;
            client_set_error(c, "%s", strerror(-r));
            break;
        }
        if (n == 0) {
            if (s->body_len >= 0) {
                client_set_error(c, "the request body ended %lld bytes early", left);
                r = -EIO;
            } else {
                r = client_send_piece(c, "0\r\n\r\n", 5);
            }
            break;
        }
        if ((size_t)n > want) {
            client_set_error(c, "the request body callback overran its buffer");
            r = -EIO;
            break;
        }
        if (s->body_len >= 0) {
            left -= n;
            r = client_send_piece(c, data, (size_t)n);
        } else {
            char line[ROOM];
            int hl = snprintf(line, sizeof(line), "%zx\r\n", (size_t)n);
            memcpy(data - hl, line, (size_t)hl);
            memcpy(data + n, "\r\n", 2);
            r = client_send_piece(c, data - hl, (size_t)hl + (size_t)n + 2);
        }
        if (r != 0)
            break;
    }
    free(buf);
    return r;
}

int client_request_stream(struct client *c, const char *method, const char *path,
                          const char *content_type, const struct client_stream *s,
                          struct client_response *out)
{
    buf_t head = BUF_INIT;
    bool got_any = false, keep = false, body_done = !s->read_body;
    int r;

    client_response_init(out);
    c->connect_failed = 0;
    c->error[0] = '\0';
    if (!path || path[0] != '/' || strpbrk(path, " \t\r\n") || strpbrk(method, " \t\r\n")) {
        client_set_error(c, "invalid request path");
        return -EINVAL;
    }
    r = buf_appendf(&head,
                    "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: warren-cli\r\nAccept: */*\r\n",
                    method, c->prefix, path, c->host_header);
    if (r == 0 && content_type)
        r = buf_appendf(&head, "Content-Type: %s\r\n", content_type);
    if (r == 0 && s->read_body)
        r = s->body_len >= 0
                ? buf_appendf(&head, "Content-Length: %lld\r\nExpect: 100-continue\r\n",
                              s->body_len)
                : buf_append_str(&head, "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n");
    if (r == 0)
        r = buf_append_str(&head, "\r\n");
    if (r < 0) {
        buf_free(&head);
        client_set_error(c, "out of memory");
        return r;
    }

    client_disconnect(c);
    r = client_connect(c);
    if (r < 0) {
        c->connect_failed = r != -EINTR;
        buf_free(&head);
        return r;
    }
    r = client_send_all(c, head.data, head.len, NULL, 0);
    buf_free(&head);
    if (r == 0 && s->read_body) {
        /* Wait (at most 1 s) for the 100 Continue, or for an early final answer. */
        int ev = client_poll(c, POLLIN, client_now_ms() + 1000);
        r = ev < 0 ? ev : ev > 0 ? client_take_interim(c) : 0;
        if (r == 0)
            r = client_send_stream_body(c, s);
        if (r == 0)
            body_done = true;
        if (r == 1)
            r = 0; /* answered before the body was complete */
    }
    if (r == -EPIPE || r == -ECONNRESET) {
        /* The server may have answered before closing (e.g. it rejected the body early). */
        int sent_err = r;
        r = client_read_response(c, method, out, &got_any, &keep, s);
        if (r < 0) {
            r = sent_err;
            client_set_error(c, "%s", strerror(-r));
        }
    } else if (r == 0) {
        r = client_read_response(c, method, out, &got_any, &keep, s);
    } else if (!c->error[0]) {
        client_set_error(c, "%s", r == -EINTR ? "interrupted" : strerror(-r));
    }
    if (r == CLIENT_ECLOSED_EARLY) {
        client_set_error(c, "connection closed by the server without a response");
        r = -ECONNRESET;
    }
    if (r < 0) {
        if (r == -EINTR)
            client_set_error(c, "interrupted");
        client_response_free(out);
        client_disconnect(c);
        return r;
    }
    if (keep && body_done && c->in.len == 0)
        c->conn_requests++;
    else
        client_disconnect(c);
    return 0;
}

int client_append_escaped(buf_t *b, const char *s, int query)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        bool keep = isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~';
        if (query && strchr("!$'()*,;=:@/?", *p))
            keep = true;
        char enc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
        int r = keep ? buf_append(b, p, 1) : buf_append(b, enc, 3);
        if (r < 0)
            return r;
    }
    return 0;
}
