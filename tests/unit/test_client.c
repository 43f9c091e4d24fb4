/*
 * client: the CLI's HTTP/1.1 client against a real peer — a scripted server thread on a unix
 * socket (or TCP on 127.0.0.1) that reads each request and answers with the exact bytes a test
 * gives it: URL parsing, Content-Length, chunked and read-to-close bodies, interim answers,
 * keep-alive and its retry on a connection the server closed, upgrades, streamed bodies both
 * ways, and malformed, truncated and oversized answers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli/client.h"
#include "core/util.h"

/* ---------------------------------------------------------------------------------------------
 * The scripted server
 */

#define REQ_MAX (1 << 20)
#define PEER_TIMEOUT_MS 20000 /* a broken client fails the test instead of hanging it */

enum step_kind {
    ANSWER,       /* read the request, write `resp`, keep the connection */
    ANSWER_CLOSE, /* the same, then close the connection */
    EARLY,        /* read the head only, write `resp` and close (an early rejection) */
    DROP,         /* read the request and close without answering */
    HOLD,         /* read the request and never answer (until the client goes away) */
};

struct step {
    enum step_kind kind;
    const char *resp;  /* NUL-terminated unless resp_len is set */
    size_t resp_len;   /* 0: strlen(resp) */
    int send_continue; /* write "100 Continue" after the head, before reading the body */
    int bytewise;      /* write the answer one byte at a time */
    /* filled in by the server */
    char *req; /* what the client sent (head and body), NUL-terminated */
    size_t req_len;
    int conn; /* 1-based index of the connection it came on */
};

struct server {
    int lfd;
    char dir[64];
    char url[160];
    pthread_t thread;
    struct step *steps;
    int nsteps;
    int nconns;
    int failed; /* the server hit an error of its own (reported by server_stop) */
};

static int wait_readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r;
    do
        r = poll(&p, 1, PEER_TIMEOUT_MS);
    while (r < 0 && errno == EINTR);
    return r > 0 ? 0 : -1;
}

static int accept_one(struct server *s)
{
    if (wait_readable(s->lfd) < 0)
        return -1;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd >= 0)
        s->nconns++;
    return fd;
}

static void write_all(int fd, const char *p, size_t n, int bytewise)
{
    while (n > 0) {
        ssize_t w = send(fd, p, bytewise ? 1 : n, MSG_NOSIGNAL);
        if (w <= 0)
            return; /* the client went away: what it does then is what the test checks */
        p += w;
        n -= (size_t)w;
    }
}

/* Reads more of the request into st->req. Returns the count, 0 at EOF, -1 on error. */
static ssize_t read_more(int fd, struct step *st)
{
    if (wait_readable(fd) < 0 || st->req_len >= REQ_MAX - 1)
        return -1;
    ssize_t n = recv(fd, st->req + st->req_len, REQ_MAX - 1 - st->req_len, 0);
    if (n > 0) {
        st->req_len += (size_t)n;
        st->req[st->req_len] = '\0';
    }
    return n;
}

/* Reads the request head. 1: got it, 0: the client closed the connection first, -1: error. */
static int read_head(int fd, struct step *st, size_t *head_len)
{
    for (;;) {
        char *end = strstr(st->req, "\r\n\r\n");
        if (end) {
            *head_len = (size_t)(end - st->req) + 4;
            return 1;
        }
        ssize_t n = read_more(fd, st);
        if (n == 0 && st->req_len == 0)
            return 0;
        if (n <= 0)
            return -1;
    }
}

static void read_body(int fd, struct step *st, size_t head_len)
{
    const char *cl = strcasestr(st->req, "\r\nContent-Length:");
    if (cl && cl < st->req + head_len) {
        size_t want = head_len + strtoull(cl + 17, NULL, 10);
        while (st->req_len < want && read_more(fd, st) > 0)
            ;
    } else if (strcasestr(st->req, "\r\nTransfer-Encoding: chunked")) {
        while (!strstr(st->req + head_len - 2, "\r\n0\r\n\r\n") && read_more(fd, st) > 0)
            ;
    }
}

static void *server_main(void *arg)
{
    struct server *s = arg;
    int fd = -1;
    for (int i = 0; i < s->nsteps; i++) {
        struct step *st = &s->steps[i];
        size_t head_len = 0;
        int got;
        for (;;) {
            if (fd < 0 && (fd = accept_one(s)) < 0)
                goto fail;
            st->req_len = 0;
            st->req[0] = '\0';
            got = read_head(fd, st, &head_len);
            if (got != 0)
                break;
            /* The client closed a kept-alive connection (it found it stale): take its next. */
            close(fd);
            fd = -1;
        }
        if (got < 0)
            goto fail;
        st->conn = s->nconns;
        if (st->send_continue)
            write_all(fd, "HTTP/1.1 100 Continue\r\n\r\n", 25, 0);
        if (st->kind != EARLY)
            read_body(fd, st, head_len);
        size_t rl = st->resp ? (st->resp_len ? st->resp_len : strlen(st->resp)) : 0;
        switch (st->kind) {
        case ANSWER:
            write_all(fd, st->resp, rl, st->bytewise);
            break;
        case ANSWER_CLOSE:
        case EARLY:
            write_all(fd, st->resp, rl, st->bytewise);
            shutdown(fd, SHUT_WR);
            close(fd);
            fd = -1;
            break;
        case DROP:
            close(fd);
            fd = -1;
            break;
        case HOLD: {
            char sink[4096];
            while (wait_readable(fd) == 0 && recv(fd, sink, sizeof(sink), 0) > 0)
                ;
            close(fd);
            fd = -1;
            break;
        }
        }
    }
    if (fd >= 0)
        close(fd);
    return NULL;
fail:
    s->failed = 1;
    if (fd >= 0)
        close(fd);
    return NULL;
}

/* Starts a server that plays `steps` (on a unix socket, or on TCP 127.0.0.1 with `tcp`). */
static void server_start(struct server *s, struct step *steps, int nsteps, int tcp)
{
    memset(s, 0, sizeof(*s));
    s->steps = steps;
    s->nsteps = nsteps;
    for (int i = 0; i < nsteps; i++) {
        steps[i].req = calloc(1, REQ_MAX);
        assert_non_null(steps[i].req);
    }
    if (tcp) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        socklen_t sl = sizeof(sa);
        s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(s->lfd >= 0);
        assert_int_equal(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&sa, &sl), 0);
        snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d/pre/fix/", ntohs(sa.sin_port));
    } else {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(s->dir, sizeof(s->dir), "/tmp/warren-test-client-XXXXXX");
        assert_non_null(mkdtemp(s->dir));
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/s", s->dir);
        s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(s->lfd >= 0);
        assert_int_equal(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        snprintf(s->url, sizeof(s->url), "unix:%s", sa.sun_path);
    }
    assert_int_equal(listen(s->lfd, 16), 0);
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
}

/* Waits for the server to play its script. The steps' recorded requests stay readable until
 * steps_free(). */
static void server_stop(struct server *s)
{
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    close(s->lfd);
    if (s->dir[0])
        util_remove_tree(s->dir);
    assert_int_equal(s->failed, 0);
}

static void steps_free(struct step *steps, int n)
{
    for (int i = 0; i < n; i++)
        free(steps[i].req);
}

#define NSTEPS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---------------------------------------------------------------------------------------------
 * URLs, escaping, header tokens (no peer)
 */

static void test_open_urls(void **state)
{
    (void)state;
    static const struct {
        const char *url;
        const char *host, *port, *host_header, *prefix, *unix_path;
    } good[] = {
        {"http://127.0.0.1:7070", "127.0.0.1", "7070", "127.0.0.1:7070", "", NULL},
        {"http://localhost", "localhost", "80", "localhost", "", NULL},
        {"HTTP://Example.test:8080/", "Example.test", "8080", "Example.test:8080", "", NULL},
        {"http://h:1/api/v2//", "h", "1", "h:1", "/api/v2", NULL},
        {"http://[::1]:65535/x", "::1", "65535", "[::1]:65535", "/x", NULL},
        {"http://[fe80::1]", "fe80::1", "80", "[fe80::1]", "", NULL},
        {"unix:/run/warren.sock", NULL, NULL, "localhost", "", "/run/warren.sock"},
        {"unix:///run/warren.sock", NULL, NULL, "localhost", "", "/run/warren.sock"},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct client c;
        int r = client_open(&c, good[i].url);
        if (r != 0)
            fail_msg("%s: %d (%s)", good[i].url, r, c.error);
        if (good[i].host) {
            assert_string_equal(c.host, good[i].host);
            assert_string_equal(c.port, good[i].port);
            assert_null(c.unix_path);
        } else {
            assert_null(c.host);
            assert_string_equal(c.unix_path, good[i].unix_path);
        }
        assert_string_equal(c.host_header, good[i].host_header);
        assert_string_equal(c.prefix, good[i].prefix);
        assert_int_equal(c.fd, -1);
        client_close(&c);
        client_close(&c); /* twice is fine */
    }

    char long_unix[200] = "unix:/";
    memset(long_unix + 6, 'a', 150);
    long_unix[156] = '\0';
    static const struct {
        const char *url;
        int err;
    } bad[] = {
        {"", -EINVAL},
        {"localhost:7070", -EINVAL},
        {"ftp://h/", -EPROTONOSUPPORT},
        {"https://h/", -EPROTONOSUPPORT},
        {"http://", -EINVAL},
        {"http:///x", -EINVAL},
        {"http://:80", -EINVAL},
        {"http://h:", -EINVAL},
        {"http://h:0", -EINVAL},
        {"http://h:65536", -EINVAL},
        {"http://h:123456", -EINVAL},
        {"http://h:8x", -EINVAL},
        {"http://h:-1", -EINVAL},
        {"http://user@h", -EINVAL},
        {"http://h?x=1", -EINVAL},
        {"http://h#frag", -EINVAL},
        {"http://h/p?q=1", -EINVAL},
        {"http://h/a b", -EINVAL},
        {"http://[::1", -EINVAL},
        {"http://[]:80", -EINVAL},
        {"http://[::1]x", -EINVAL},
        {"http://[::1]:", -EINVAL},
        {"unix:relative.sock", -EINVAL},
        {"unix:", -EINVAL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct client c;
        int r = client_open(&c, bad[i].url);
        if (r != bad[i].err)
            fail_msg("%s: %d, expected %d", bad[i].url, r, bad[i].err);
        assert_true(c.error[0] != '\0');
        client_close(&c);
        client_close(&c);
    }
    struct client c;
    assert_int_equal(client_open(&c, long_unix), -ENAMETOOLONG);
    client_close(&c);
    assert_int_equal(client_open(&c, NULL), -EINVAL);
    client_close(&c);
}

static void test_append_escaped(void **state)
{
    (void)state;
    buf_t b = BUF_INIT;
    assert_int_equal(client_append_escaped(&b, "a-Z_0.9~", 0), 0);
    assert_int_equal(client_append_escaped(&b, " /?#&=+%:\xc3\xa9", 0), 0);
    assert_string_equal(b.data, "a-Z_0.9~%20%2F%3F%23%26%3D%2B%25%3A%C3%A9");
    buf_reset(&b);
    assert_int_equal(client_append_escaped(&b, "/w s/a=b:c@d?e!$'()*,;&+#%", 1), 0);
    assert_string_equal(b.data, "/w%20s/a=b:c@d?e!$'()*,;%26%2B%23%25");
    buf_reset(&b);
    assert_int_equal(client_append_escaped(&b, "", 1), 0);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

static void test_header_tokens(void **state)
{
    (void)state;
    assert_true(client_header_has_token("close", "close"));
    assert_true(client_header_has_token("Keep-Alive, Upgrade", "upgrade"));
    assert_true(client_header_has_token(" ,\tgzip ,  chunked\t", "chunked"));
    assert_false(client_header_has_token("chunkedx", "chunked"));
    assert_false(client_header_has_token("xchunked, gzip", "chunked"));
    assert_false(client_header_has_token("", "close"));
    assert_false(client_header_has_token(",,,", "close"));
}

/* ---------------------------------------------------------------------------------------------
 * Exchanges
 */

static void open_on(struct client *c, const struct server *s)
{
    int r = client_open(c, s->url);
    if (r != 0)
        fail_msg("client_open %s: %d %s", s->url, r, c->error);
}

static void test_content_length_and_keep_alive(void **state)
{
    (void)state;
    struct step steps[] = {
        {.kind = ANSWER,
         .resp = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 "X-Dup: one\r\nx-dup: two\r\nX-Space:   padded value \t\r\n"
                 "Content-Length: 11\r\n\r\n{\"a\":\"b c\"}"},
        {.kind = ANSWER, .resp = "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"},
        {.kind = ANSWER, .resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnah"},
    };
    struct server s;
    struct client c;
    struct client_response resp;
    server_start(&s, steps, NSTEPS(steps), 1);
    open_on(&c, &s);

    assert_int_equal(client_request(&c, "GET", "/v1/x?y=1", NULL, NULL, 0, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body.len, 11);
    assert_string_equal(resp.body.data, "{\"a\":\"b c\"}");
    assert_string_equal(client_response_header(&resp, "content-type"), "application/json");
    assert_string_equal(client_response_header(&resp, "X-DUP"), "one"); /* the first */
    assert_string_equal(client_response_header(&resp, "x-space"), "padded value");
    assert_null(client_response_header(&resp, "Missing"));
    assert_int_equal(resp.nheaders, 5);
    assert_int_equal(c.conn_requests, 1);
    client_response_free(&resp);
    assert_int_equal(resp.status, 0);
    client_response_free(&resp); /* twice is fine */

    static const char body[] = "{\"argv\":[\"true\"]}";
    assert_int_equal(
        client_request(&c, "POST", "/v1/y", "application/json", body, strlen(body), &resp), 0);
    assert_int_equal(resp.status, 201);
    assert_int_equal(resp.body.len, 0);
    assert_int_equal(c.conn_requests, 2);
    client_response_free(&resp);

    /* Any status is a success of the exchange; a POST without a body says Content-Length: 0. */
    assert_int_equal(client_request(&c, "POST", "/v1/z", NULL, NULL, 0, &resp), 0);
    assert_int_equal(resp.status, 404);
    assert_string_equal(resp.body.data, "nah");
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);

    /* All three on one connection, with the URL's prefix and the Host of the URL. */
    char host[64];
    snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%d\r\n", atoi(strrchr(s.url, ':') + 1));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(steps[i].conn, 1);
        assert_non_null(strstr(steps[i].req, host));
        assert_non_null(strstr(steps[i].req, "\r\nUser-Agent: warren-cli\r\n"));
    }
    assert_true(strncmp(steps[0].req, "GET /pre/fix/v1/x?y=1 HTTP/1.1\r\n", 32) == 0);
    assert_null(strcasestr(steps[0].req, "Content-Length"));
    assert_true(strncmp(steps[1].req, "POST /pre/fix/v1/y HTTP/1.1\r\n", 29) == 0);
    assert_non_null(strstr(steps[1].req, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(steps[1].req, "\r\nContent-Length: 17\r\n\r\n{\"argv\":[\"true\"]}"));
    assert_non_null(strstr(steps[2].req, "\r\nContent-Length: 0\r\n\r\n"));
    steps_free(steps, NSTEPS(steps));
}

static void test_chunked(void **state)
{
    (void)state;
    static const char chunked[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "5\r\nhello\r\n"
                                  "1;name=value\r\n \r\n"
                                  "A \r\n0123456789\r\n"
                                  "00000002\r\n\r\n\r\n"
                                  "0\r\nX-Trailer: t\r\n\r\n";
    struct step steps[] = {
        {.kind = ANSWER, .resp = chunked},
        {.kind = ANSWER, .resp = chunked, .bytewise = 1},
        {.kind = ANSWER,
         .resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"},
        {.kind = ANSWER,
         .resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nok"},
    };
    struct server s;
    struct client c;
    struct client_response resp;
    server_start(&s, steps, NSTEPS(steps), 0);
    open_on(&c, &s);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(client_request(&c, "GET", "/c", NULL, NULL, 0, &resp), 0);
        assert_int_equal(resp.status, 200);
        assert_int_equal(resp.body.len, 18);
        assert_memory_equal(resp.body.data, "hello 0123456789\r\n", 18);
        client_response_free(&resp);
    }
    /* Other codings before chunked are the server's business: the client just dechunks. */
    assert_int_equal(client_request(&c, "GET", "/c", NULL, NULL, 0, &resp), 0);
    assert_int_equal(resp.body.len, 0);
    client_response_free(&resp);
    assert_int_equal(client_request(&c, "GET", "/c", NULL, NULL, 0, &resp), 0);
    assert_string_equal(resp.body.data, "ok");
    client_response_free(&resp);
    assert_int_equal(c.conn_requests, 4); /* the connection survived every one of them */
    client_close(&c);
    server_stop(&s);
    steps_free(steps, NSTEPS(steps));
}

static void test_bodies_without_length(void **state)
{
    (void)state;
    struct step steps[] = {
        /* an interim answer first, then the real one */
        {.kind = ANSWER,
         .resp = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
                 "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
        /* HEAD and 204: no body whatever the headers say */
        {.kind = ANSWER, .resp = "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"},
        {.kind = ANSWER, .resp = "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"},
        /* no length at all: the body ends with the connection */
        {.kind = ANSWER_CLOSE,
         .resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end\n"},
        /* HTTP/1.0: closed unless it says keep-alive */
        {.kind = ANSWER, .resp = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\none"},
        {.kind = ANSWER,
         .resp = "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 3\r\n\r\ntwo"},
        {.kind = ANSWER_CLOSE,
         .resp = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nthree"},
        {.kind = ANSWER,
         .resp = "HTTP/1.1 200\r\nContent-Length: 4\r\n\r\nfour"}, /* no reason phrase */
    };
    struct server s;
    struct client c;
    struct client_response resp;
    server_start(&s, steps, NSTEPS(steps), 0);
    open_on(&c, &s);

    assert_int_equal(client_request(&c, "POST", "/a", NULL, "x", 1, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body.data, "ok");
    client_response_free(&resp);
    assert_int_equal(client_request(&c, "HEAD", "/b", NULL, NULL, 0, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body.len, 0);
    client_response_free(&resp);
    assert_int_equal(client_request(&c, "DELETE", "/c", NULL, NULL, 0, &resp), 0);
    assert_int_equal(resp.status, 204);
    assert_int_equal(resp.body.len, 0);
    assert_int_equal(c.conn_requests, 3);
    client_response_free(&resp);

    assert_int_equal(client_request(&c, "GET", "/d", NULL, NULL, 0, &resp), 0);
    assert_string_equal(resp.body.data, "until the end\n");
    assert_int_equal(c.fd, -1); /* read to the end: nothing to keep */
    client_response_free(&resp);

    assert_int_equal(client_request(&c, "GET", "/e", NULL, NULL, 0, &resp), 0);
    assert_string_equal(resp.body.data, "one");
    assert_int_equal(c.fd, -1);
    client_response_free(&resp);
    assert_int_equal(client_request(&c, "GET", "/f", NULL, NULL, 0, &resp), 0);
    assert_string_equal(resp.body.data, "two");
    assert_true(c.fd >= 0);
    client_response_free(&resp);
    assert_int_equal(client_request(&c, "GET", "/g", NULL, NULL, 0, &resp), 0);
    assert_string_equal(resp.body.data, "three");
    assert_int_equal(c.fd, -1);
    client_response_free(&resp);
    assert_int_equal(client_request(&c, "GET", "/h", NULL, NULL, 0, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body.data, "four");
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);
    /* connections: a-d, e, f-g, h */
    assert_int_equal(steps[3].conn, 1);
    assert_int_equal(steps[4].conn, 2);
    assert_int_equal(steps[5].conn, 3);
    assert_int_equal(steps[6].conn, 3);
    assert_int_equal(steps[7].conn, 4);
    steps_free(steps, NSTEPS(steps));
}

/* One request answered with `answer` on a fresh connection: the result and c.error. */
static int exchange_once(const char *answer, size_t len, enum step_kind kind, char *err,
                         size_t errcap)
{
    struct step steps[] = {{.kind = kind, .resp = answer, .resp_len = len}};
    struct server s;
    struct client c;
    struct client_response resp;
    server_start(&s, steps, 1, 0);
    open_on(&c, &s);
    int r = client_request(&c, "GET", "/", NULL, NULL, 0, &resp);
    snprintf(err, errcap, "%s", c.error);
    if (r < 0) {
        assert_int_equal(resp.status, 0); /* nothing half-filled is left */
        assert_int_equal(resp.body.len, 0);
        assert_int_equal(c.fd, -1); /* and the connection is gone */
    }
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);
    steps_free(steps, 1);
    return r;
}

static void test_malformed_answers(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "garbage\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
        "HTTP/1.1 abc OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n",
        "HTTP/1.x 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: no name\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
    };
    char err[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int r = exchange_once(bad[i], 0, ANSWER_CLOSE, err, sizeof(err));
        if (r != -EPROTO)
            fail_msg("answer %zu %.40s...: %d (%s), expected -EPROTO", i, bad[i], r, err);
        assert_true(err[0] != '\0');
    }
    /* A head without an end within the limit, a chunk-size line without an end. */
    size_t n = 80 * 1024;
    char *big = malloc(n + 64);
    assert_non_null(big);
    int hl = snprintf(big, 64, "HTTP/1.1 200 OK\r\nX-Long: ");
    memset(big + hl, 'x', n - (size_t)hl);
    assert_int_equal(exchange_once(big, n, ANSWER_CLOSE, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "too long"));
    hl = snprintf(big, 64, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1");
    memset(big + hl, '0', 4096);
    assert_int_equal(exchange_once(big, (size_t)hl + 4096, ANSWER_CLOSE, err, sizeof(err)),
                     -EPROTO);
    free(big);
}

static void test_truncated_and_oversized_answers(void **state)
{
    (void)state;
    char err[256];
    static const char *const cut[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Le",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: x\r\n",
    };
    for (size_t i = 0; i < sizeof(cut) / sizeof(cut[0]); i++) {
        int r = exchange_once(cut[i], 0, ANSWER_CLOSE, err, sizeof(err));
        if (r != -ECONNRESET)
            fail_msg("answer %zu: %d (%s), expected -ECONNRESET", i, r, err);
        assert_non_null(strstr(err, "closed"));
    }
    /* Closed before any byte, on a fresh connection: nothing to retry. */
    assert_int_equal(exchange_once(NULL, 0, DROP, err, sizeof(err)), -ECONNRESET);
    assert_non_null(strstr(err, "without a response"));
    /* Larger than the client takes (1 GiB): refused from the header, nothing read. */
    assert_int_equal(exchange_once("HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n", 0,
                                   ANSWER_CLOSE, err, sizeof(err)),
                     -EFBIG);
    assert_int_equal(exchange_once("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   "10000000000000000\r\n",
                                   0, ANSWER_CLOSE, err, sizeof(err)),
                     -EFBIG);
}

static void test_retry_on_a_closed_kept_connection(void **state)
{
    (void)state;
    struct step steps[] = {
        /* keep-alive announced, then closed: the next request finds the connection stale */
        {.kind = ANSWER_CLOSE, .resp = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"},
        {.kind = ANSWER, .resp = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"},
        /* closed after reading the request, before answering: sent again, once */
        {.kind = DROP},
        {.kind = ANSWER, .resp = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc"},
        /* ...but not twice */
        {.kind = ANSWER, .resp = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd"},
        {.kind = DROP},
        {.kind = DROP},
    };
    struct server s;
    struct client c;
    struct client_response resp;
    server_start(&s, steps, NSTEPS(steps), 0);
    open_on(&c, &s);
    static const char *const want[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        int r = client_request(&c, "PUT", "/r", "text/plain", "body", 4, &resp);
        if (r != 0)
            fail_msg("request %d: %d %s", i, r, c.error);
        assert_string_equal(resp.body.data, want[i]);
        client_response_free(&resp);
    }
    assert_int_equal(client_request(&c, "PUT", "/r", "text/plain", "body", 4, &resp), -ECONNRESET);
    assert_int_equal(c.connect_failed, 0);
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);
    /* the retried requests are the same request */
    assert_string_equal(steps[2].req, steps[3].req);
    assert_string_equal(steps[5].req, steps[6].req);
    assert_non_null(strstr(steps[3].req, "\r\n\r\nbody"));
    assert_int_equal(steps[0].conn, 1);
    assert_int_equal(steps[1].conn, 2);
    assert_int_equal(steps[2].conn, 2);
    assert_int_equal(steps[3].conn, 3);
    assert_int_equal(steps[4].conn, 3);
    assert_int_equal(steps[5].conn, 3);
    assert_int_equal(steps[6].conn, 4);
    steps_free(steps, NSTEPS(steps));
}

static void test_connect_and_request_errors(void **state)
{
    (void)state;
    struct client c;
    struct client_response resp;

    assert_int_equal(client_open(&c, "unix:/nonexistent/warren.sock"), 0);
    assert_int_equal(client_request(&c, "GET", "/", NULL, NULL, 0, &resp), -ENOENT);
    assert_int_equal(c.connect_failed, 1);
    assert_true(c.error[0] != '\0');
    client_response_free(&resp);
    client_close(&c);

    /* A TCP port nobody listens on (bound here, so no one else takes it). */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t sl = sizeof(sa);
    char url[64];
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(sa.sin_port));
    assert_int_equal(client_open(&c, url), 0);
    assert_int_equal(client_request(&c, "GET", "/", NULL, NULL, 0, &resp), -ECONNREFUSED);
    assert_int_equal(c.connect_failed, 1);
    client_response_free(&resp);
    close(fd);

    /* Bad requests are refused before anything is sent. */
    assert_int_equal(client_request(&c, "GET", "no-slash", NULL, NULL, 0, &resp), -EINVAL);
    assert_int_equal(client_request(&c, "GET", "/a b", NULL, NULL, 0, &resp), -EINVAL);
    assert_int_equal(client_request(&c, "GET", "/a\r\nX: y", NULL, NULL, 0, &resp), -EINVAL);
    assert_int_equal(client_request(&c, "G T", "/", NULL, NULL, 0, &resp), -EINVAL);
    assert_int_equal(client_request(&c, "GET", NULL, NULL, NULL, 0, &resp), -EINVAL);
    assert_int_equal(c.connect_failed, 0);
    client_response_free(&resp);
    client_close(&c);
}

static void test_cancel(void **state)
{
    (void)state;
    struct step steps[] = {{.kind = HOLD}};
    struct server s;
    struct client c;
    struct client_response resp;
    volatile sig_atomic_t cancel = 1;
    server_start(&s, steps, 1, 0);
    open_on(&c, &s);
    /* Set before the wait for the answer: the request is abandoned, not waited for. */
    c.cancel = &cancel;
    assert_int_equal(client_request(&c, "GET", "/slow", NULL, NULL, 0, &resp), -EINTR);
    assert_string_equal(c.error, "interrupted");
    assert_int_equal(c.fd, -1);
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);
    steps_free(steps, 1);
}

static void test_upgrade(void **state)
{
    (void)state;
    static const char switching[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                    "Connection: Upgrade\r\n\r\n\x81\x02hi";
    struct step steps[] = {
        {.kind = ANSWER, .resp = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nk"},
        {.kind = ANSWER, .resp = switching, .resp_len = sizeof(switching) - 1},
        {.kind = ANSWER, .resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno stream"},
    };
    struct server s;
    struct client c;
    struct client_response resp;
    buf_t rest = BUF_INIT;
    int fd = 7;
    server_start(&s, steps, NSTEPS(steps), 0);
    open_on(&c, &s);
    assert_int_equal(client_request(&c, "GET", "/k", NULL, NULL, 0, &resp), 0);
    client_response_free(&resp);
    assert_true(c.fd >= 0);

    /* An upgrade always goes on a new connection, which it then hands over. */
    assert_int_equal(
        client_upgrade(&c, "/ws", "Upgrade: websocket\r\nX-Extra: 1\r\n", &resp, &fd, &rest), 0);
    assert_int_equal(resp.status, 101);
    assert_true(fd >= 0);
    assert_int_equal(c.fd, -1);
    assert_int_equal(rest.len, 4);
    assert_memory_equal(rest.data, "\x81\x02hi", 4);
    assert_string_equal(client_response_header(&resp, "upgrade"), "websocket");
    client_response_free(&resp);
    close(fd);

    assert_int_equal(client_upgrade(&c, "/ws2", NULL, &resp, &fd, &rest), 0);
    assert_int_equal(fd, -1);
    assert_int_equal(resp.status, 404);
    assert_string_equal(resp.body.data, "no stream");
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);
    assert_int_equal(steps[0].conn, 1);
    assert_int_equal(steps[1].conn, 2);
    assert_true(strncmp(steps[1].req, "GET /ws HTTP/1.1\r\n", 18) == 0);
    assert_non_null(strstr(steps[1].req, "\r\nX-Extra: 1\r\n"));
    assert_int_equal(steps[2].conn, 3);
    buf_free(&rest);
    steps_free(steps, NSTEPS(steps));
}

/* ---------------------------------------------------------------------------------------------
 * Streamed bodies
 */

struct stream_state {
    size_t total, produced; /* request body: `total` bytes of a pattern */
    size_t piece;           /* at most this much per read_body call */
    int fail_at_end;        /* read_body ends early (returns 0) halfway */
    buf_t got;              /* response body as received by write_body */
    int calls, heads, head_status;
};

static char pattern(size_t i)
{
    return (char)('a' + i % 26);
}

static ssize_t read_body_cb(void *arg, void *buf, size_t len)
{
    struct stream_state *ss = arg;
    size_t left = ss->total - ss->produced;
    if (ss->fail_at_end && ss->produced >= ss->total / 2)
        return 0;
    if (len > left)
        len = left;
    if (len > ss->piece)
        len = ss->piece;
    for (size_t i = 0; i < len; i++)
        ((char *)buf)[i] = pattern(ss->produced + i);
    ss->produced += len;
    return (ssize_t)len;
}

static int write_body_cb(void *arg, const void *data, size_t len)
{
    struct stream_state *ss = arg;
    ss->calls++;
    return buf_append(&ss->got, data, len);
}

static int on_head_cb(void *arg, const struct client_response *resp)
{
    struct stream_state *ss = arg;
    ss->heads++;
    ss->head_status = resp->status;
    assert_int_equal(ss->calls, 0); /* before any body */
    return 0;
}

static void check_pattern(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pattern(i))
            fail_msg("byte %zu of %zu is %d", i, n, p[i]);
}

static void test_stream_upload(void **state)
{
    (void)state;
    struct step steps[] = {
        {.kind = ANSWER,
         .resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nup",
         .send_continue = 1},
        {.kind = ANSWER,
         .resp = "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
         .send_continue = 1},
        /* rejected from the head alone: the body is never needed */
        {.kind = EARLY,
         .resp = "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\n"
                 "too big!"},
    };
    struct server s;
    struct client c;
    struct client_response resp;
    server_start(&s, steps, NSTEPS(steps), 0);
    open_on(&c, &s);

    struct stream_state ss = {.total = 3 * 100000 + 17, .piece = 100000};
    struct client_stream st = {
        .read_body = read_body_cb, .body_len = (long long)ss.total, .arg = &ss};
    assert_int_equal(client_request_stream(&c, "PUT", "/f", "application/octet-stream", &st, &resp),
                     0);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body.data, "up");
    client_response_free(&resp);

    ss = (struct stream_state){.total = 70000, .piece = 4096};
    st = (struct client_stream){.read_body = read_body_cb, .body_len = -1, .arg = &ss};
    assert_int_equal(client_request_stream(&c, "PUT", "/g", NULL, &st, &resp), 0);
    assert_int_equal(resp.status, 201);
    client_response_free(&resp);

    ss = (struct stream_state){.total = 64 << 20, .piece = 1 << 20};
    st = (struct client_stream){
        .read_body = read_body_cb, .body_len = (long long)ss.total, .arg = &ss};
    assert_int_equal(client_request_stream(&c, "PUT", "/h", NULL, &st, &resp), 0);
    assert_int_equal(resp.status, 413);
    assert_string_equal(resp.body.data, "too big!");
    assert_true(ss.produced < ss.total); /* sending stopped */
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);

    /* Content-Length: the bytes as produced */
    char *body = strstr(steps[0].req, "\r\n\r\n") + 4;
    assert_non_null(strstr(steps[0].req, "\r\nContent-Length: 300017\r\n"));
    assert_non_null(strstr(steps[0].req, "\r\nExpect: 100-continue\r\n"));
    assert_int_equal(steps[0].req_len - (size_t)(body - steps[0].req), 300017);
    check_pattern(body, 300017);
    /* chunked: dechunk what the server got */
    assert_non_null(strstr(steps[1].req, "\r\nTransfer-Encoding: chunked\r\n"));
    char *p = strstr(steps[1].req, "\r\n\r\n") + 4;
    buf_t plain = BUF_INIT;
    for (;;) {
        char *end;
        unsigned long n = strtoul(p, &end, 16);
        assert_true(end[0] == '\r' && end[1] == '\n');
        p = end + 2;
        if (n == 0)
            break;
        assert_int_equal(buf_append(&plain, p, n), 0);
        p += n;
        assert_true(p[0] == '\r' && p[1] == '\n');
        p += 2;
    }
    assert_int_equal(plain.len, 70000);
    check_pattern(plain.data, plain.len);
    buf_free(&plain);
    steps_free(steps, NSTEPS(steps));
}

static void test_stream_upload_errors(void **state)
{
    (void)state;
    struct step steps[] = {{.kind = HOLD}};
    struct server s;
    struct client c;
    struct client_response resp;
    server_start(&s, steps, 1, 0);
    open_on(&c, &s);
    /* The callback ends before Content-Length bytes: the request is abandoned. */
    struct stream_state ss = {.total = 10000, .piece = 1000, .fail_at_end = 1};
    struct client_stream st = {.read_body = read_body_cb, .body_len = 10000, .arg = &ss};
    assert_int_equal(client_request_stream(&c, "PUT", "/f", NULL, &st, &resp), -EIO);
    assert_non_null(strstr(c.error, "early"));
    assert_int_equal(c.fd, -1);
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);
    steps_free(steps, 1);
}

static void test_stream_download(void **state)
{
    (void)state;
    size_t n = 3 << 20;
    char *big = malloc(n + 128);
    assert_non_null(big);
    int hl = snprintf(big, 128, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
    for (size_t i = 0; i < n; i++)
        big[hl + (int)i] = pattern(i);
    struct step steps[] = {
        {.kind = ANSWER, .resp = big, .resp_len = (size_t)hl + n},
        {ANSWER,
         "HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n"
         "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
         .bytewise = 1},
        {.kind = ANSWER_CLOSE, .resp = "HTTP/1.1 200 OK\r\n\r\nabcdefgh"},
        /* not 2xx: into out->body for its message, never to write_body */
        {.kind = ANSWER, .resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nmissing"},
    };
    struct server s;
    struct client c;
    struct client_response resp;
    server_start(&s, steps, NSTEPS(steps), 0);
    open_on(&c, &s);
    struct stream_state ss = {0};
    struct client_stream st = {.write_body = write_body_cb, .on_head = on_head_cb, .arg = &ss};

    assert_int_equal(client_request_stream(&c, "GET", "/big", NULL, &st, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body.len, 0);
    assert_int_equal(ss.heads, 1);
    assert_int_equal(ss.head_status, 200);
    assert_int_equal(ss.got.len, n);
    check_pattern(ss.got.data, n);
    assert_true(ss.calls > 1); /* in pieces */
    client_response_free(&resp);

    for (int i = 0; i < 2; i++) {
        buf_reset(&ss.got);
        ss.calls = 0;
        assert_int_equal(client_request_stream(&c, "GET", "/small", NULL, &st, &resp), 0);
        assert_true(resp.status == 206 || resp.status == 200);
        assert_int_equal(ss.got.len, i == 0 ? 6 : 8);
        check_pattern(ss.got.data, ss.got.len);
        client_response_free(&resp);
    }
    buf_reset(&ss.got);
    ss.heads = ss.calls = 0;
    assert_int_equal(client_request_stream(&c, "GET", "/none", NULL, &st, &resp), 0);
    assert_int_equal(resp.status, 404);
    assert_string_equal(resp.body.data, "missing");
    assert_int_equal(ss.heads, 0);
    assert_int_equal(ss.got.len, 0);
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);
    buf_free(&ss.got);
    free(big);
    steps_free(steps, NSTEPS(steps));
}

static int write_refuses(void *arg, const void *data, size_t len)
{
    (void)arg;
    (void)data;
    (void)len;
    return -ENOSPC;
}

static void test_stream_download_abandoned(void **state)
{
    (void)state;
    struct step steps[] = {
        {.kind = ANSWER_CLOSE, .resp = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"},
    };
    struct server s;
    struct client c;
    struct client_response resp;
    server_start(&s, steps, 1, 0);
    open_on(&c, &s);
    struct client_stream st = {.write_body = write_refuses};
    assert_int_equal(client_request_stream(&c, "GET", "/x", NULL, &st, &resp), -ENOSPC);
    assert_string_equal(c.error, strerror(ENOSPC));
    assert_int_equal(c.fd, -1);
    client_response_free(&resp);
    client_close(&c);
    server_stop(&s);
    steps_free(steps, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_urls),
        cmocka_unit_test(test_append_escaped),
        cmocka_unit_test(test_header_tokens),
        cmocka_unit_test(test_content_length_and_keep_alive),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_bodies_without_length),
        cmocka_unit_test(test_malformed_answers),
        cmocka_unit_test(test_truncated_and_oversized_answers),
        cmocka_unit_test(test_retry_on_a_closed_kept_connection),
        cmocka_unit_test(test_connect_and_request_errors),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_upgrade),
        cmocka_unit_test(test_stream_upload),
        cmocka_unit_test(test_stream_upload_errors),
        cmocka_unit_test(test_stream_download),
        cmocka_unit_test(test_stream_download_abandoned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
