/*
 * http — the HTTP/1.1 server: creating it, its TCP and unix-socket listeners, closing it. See
 * http.h for the contract and http_internal.h for how the http*.c files fit together.
 */
#include "net/http_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/log.h"

#define DEFAULT_MAX_HEADER_BYTES (16u * 1024)
#define DEFAULT_MAX_BODY_BYTES (16u * 1024 * 1024)
#define DEFAULT_MAX_CONNECTIONS 1024u
#define DEFAULT_IDLE_TIMEOUT_MS 60000u

#define LISTEN_BACKLOG 511

/* ---------------------------------------------------------------------------------------------
 * Server
 */

int http_server_new(http_server_t **out, uv_loop_t *loop, const struct http_limits *limits,
                    http_handler_fn handler, void *ctx)
{
    /* libuv writes with write(2)/writev(2), not send(MSG_NOSIGNAL): a client that resets its
     * connection would kill the process with SIGPIPE. Only the default disposition is replaced,
     * so a handler installed by the program is left alone. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    http_server_t *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    srv->loop = loop;
    srv->handler = handler;
    srv->ctx = ctx;
    srv->port = -1;
    if (limits)
        srv->limits = *limits;
    if (!srv->limits.max_header_bytes)
        srv->limits.max_header_bytes = DEFAULT_MAX_HEADER_BYTES;
    if (!srv->limits.max_body_bytes)
        srv->limits.max_body_bytes = DEFAULT_MAX_BODY_BYTES;
    if (!srv->limits.max_connections)
        srv->limits.max_connections = DEFAULT_MAX_CONNECTIONS;
    if (!srv->limits.idle_timeout_ms)
        srv->limits.idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS;

    http_parser_settings_init(&srv->settings);
    *out = srv;
    return 0;
}

void http_server_maybe_done(http_server_t *srv)
{
    if (srv->closing && srv->nhandles == 0 && !srv->done_called) {
        srv->done_called = 1;
        if (srv->done)
            srv->done(srv->done_arg);
    }
}

static void on_listener_closed(uv_handle_t *h)
{
    struct listener *l = h->data;
    http_server_t *srv = l->srv;
    free(l->unix_path);
    free(l);
    srv->nhandles--;
    http_server_maybe_done(srv);
}

static void on_kick_closed(uv_handle_t *h)
{
    http_server_t *srv = h->data;
    srv->nhandles--;
    http_server_maybe_done(srv);
}

static int parse_port(const char *s, int *port)
{
    if (!*s)
        return -EINVAL;
    unsigned long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 65535)
            return -EINVAL;
    }
    *port = (int)v;
    return 0;
}

static int listen_tcp(http_server_t *srv, const char *addr)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *portstr;
    size_t hlen;
    int v6 = 0;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':')
            return -EINVAL;
        hlen = (size_t)(end - addr - 1);
        if (hlen >= sizeof(host))
            return -EINVAL;
        memcpy(host, addr + 1, hlen);
        portstr = end + 2;
        v6 = 1;
    } else {
        const char *colon = strrchr(addr, ':');
        if (!colon)
            return -EINVAL;
        hlen = (size_t)(colon - addr);
        if (hlen >= sizeof(host))
            return -EINVAL;
        memcpy(host, addr, hlen);
        portstr = colon + 1;
    }
    host[hlen] = '\0';
    int port;
    if (parse_port(portstr, &port) < 0)
        return -EINVAL;
    if (!v6 && (hlen == 0 || strcmp(host, "*") == 0))
        snprintf(host, sizeof(host), "0.0.0.0");
    else if (!v6 && strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");

    struct sockaddr_storage ss;
    int rc = v6 ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss)
                : uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc < 0)
        return -EINVAL;

    struct listener *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->srv = srv;
    l->is_tcp = 1;
    uv_tcp_init(srv->loop, &l->h.tcp);
    l->h.handle.data = l;
    srv->nhandles++;
    rc = uv_tcp_bind(&l->h.tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen(&l->h.stream, LISTEN_BACKLOG, http_on_connection);
    if (rc < 0) {
        uv_close(&l->h.handle, on_listener_closed);
        return rc;
    }
    if (srv->port < 0) {
        struct sockaddr_storage bound;
        int blen = sizeof(bound);
        if (uv_tcp_getsockname(&l->h.tcp, (struct sockaddr *)&bound, &blen) == 0) {
            srv->port = bound.ss_family == AF_INET6
                            ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                            : ntohs(((struct sockaddr_in *)&bound)->sin_port);
        }
    }
    l->next = srv->listeners;
    srv->listeners = l;
    return 0;
}

/* A socket file left by a previous run blocks bind(); remove it, but only if it is a socket and
 * nobody is accepting on it (so a second daemon does not steal a live one's address). */
static int unlink_stale_socket(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode))
        return -EADDRINUSE;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int live = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0;
    close(fd);
    if (live)
        return -EADDRINUSE;
    if (unlink(path) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}

static int listen_unix(http_server_t *srv, const char *path)
{
    struct sockaddr_un sun;
    if (!*path)
        return -EINVAL;
    /* libuv silently truncates long paths; refuse them instead. */
    if (strlen(path) >= sizeof(sun.sun_path))
        return -ENAMETOOLONG;
    int rc = unlink_stale_socket(path);
    if (rc < 0)
        return rc;
    struct listener *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->srv = srv;
    uv_pipe_init(srv->loop, &l->h.pipe, 0);
    l->h.handle.data = l;
    srv->nhandles++;
    rc = uv_pipe_bind(&l->h.pipe, path);
    if (rc == 0) {
        l->unix_path = strdup(path);
        if (!l->unix_path) {
            unlink(path);
            rc = -ENOMEM;
        }
    }
    if (rc == 0)
        rc = uv_listen(&l->h.stream, LISTEN_BACKLOG, http_on_connection);
    if (rc < 0) {
        if (l->unix_path)
            unlink(l->unix_path);
        uv_close(&l->h.handle, on_listener_closed);
        return rc;
    }
    l->next = srv->listeners;
    srv->listeners = l;
    return 0;
}

int http_server_listen(http_server_t *srv, const char *addr)
{
    if (!addr || srv->closing)
        return -EINVAL;
    if (strncmp(addr, "unix:", 5) == 0)
        return listen_unix(srv, addr + 5);
    return listen_tcp(srv, addr);
}

int http_server_port(const http_server_t *srv)
{
    return srv->port;
}

unsigned http_server_connections(const http_server_t *srv)
{
    return srv->nconns;
}

void http_server_close(http_server_t *srv, void (*done)(void *arg), void *arg)
{
    if (srv->closing)
        return;
    srv->closing = 1;
    srv->done = done;
    srv->done_arg = arg;
    for (struct listener *l = srv->listeners, *next; l; l = next) {
        next = l->next;
        if (l->unix_path)
            unlink(l->unix_path);
        uv_close(&l->h.handle, on_listener_closed);
    }
    srv->listeners = NULL;
    /* Connections are freed only from close callbacks, so `next` stays valid even though abort
     * callbacks run in between. */
    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->upgraded && !c->closing) {
            c->tk_ops->server_closing(c->tk_owner);
        } else {
            if (!c->close_err)
                c->close_err = -ECONNABORTED;
            http_conn_close(c);
        }
    }
    uv_timer_init(srv->loop, &srv->kick);
    srv->kick.data = srv;
    srv->nhandles++;
    uv_close((uv_handle_t *)&srv->kick, on_kick_closed);
}

void http_server_free(http_server_t *srv)
{
    if (!srv)
        return;
    if (srv->nhandles > 0) {
        /* Freeing now would leave libuv with dangling handles; a leak is the lesser evil. */
        log_error("http: server freed with %u open handles (close it first); leaking it",
                  srv->nhandles);
        return;
    }
    free(srv);
}

void http_server_set_stream_hook(http_server_t *srv, http_stream_hook_fn wants_stream)
{
    srv->wants_stream = wants_stream;
}
