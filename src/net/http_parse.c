/*
 * http_parse — the llhttp callbacks that build a request from the input: request target (path
 * and query, percent-decoded), headers, body, the header and body limits, `Expect:
 * 100-continue` for buffered bodies, and the hand-off of a streamed body to its handler.
 */
#include "net/http_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string; `plus` turns '+' into ' ' (query syntax). Malformed
 * escapes are kept literally (lenient, like most servers). A decoded NUL would silently truncate
 * the C string, so it is reported through *nul and the caller rejects the request. */
static char *pct_decode(const char *s, size_t n, int plus, int *nul)
{
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = hexval(s[i + 1])) >= 0 &&
            (lo = hexval(s[i + 2])) >= 0) {
            char ch = (char)(hi * 16 + lo);
            if (ch == '\0')
                *nul = 1;
            out[o++] = ch;
            i += 2;
        } else if (plus && s[i] == '+') {
            out[o++] = ' ';
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* Stores the header just parsed; a repeated name is folded into the first one with ", ". */
static int req_commit_header(http_req_t *req)
{
    /* Make sure both strings exist (an empty value never reaches on_header_value). */
    if (buf_append(&req->hfield, "", 0) < 0 || buf_append(&req->hvalue, "", 0) < 0)
        return -ENOMEM;
    struct hdr *h = http_req_find_header(req, req->hfield.data);
    if (h) {
        if (buf_append(&h->value, ", ", 2) < 0 ||
            buf_append(&h->value, req->hvalue.data, req->hvalue.len) < 0)
            return -ENOMEM;
        buf_reset(&req->hfield);
        buf_reset(&req->hvalue);
        return 0;
    }
    if (req->nhdrs == req->caphdrs) {
        size_t cap = req->caphdrs ? req->caphdrs * 2 : 16;
        struct hdr *n = realloc(req->hdrs, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        req->hdrs = n;
        req->caphdrs = cap;
    }
    /* Move the buffers into the table rather than copying them. */
    req->hdrs[req->nhdrs].name = req->hfield;
    req->hdrs[req->nhdrs].value = req->hvalue;
    req->nhdrs++;
    buf_init(&req->hfield);
    buf_init(&req->hvalue);
    return 0;
}

static int req_add_query(http_req_t *req, const char *s, size_t n)
{
    const char *eq = memchr(s, '=', n);
    size_t nlen = eq ? (size_t)(eq - s) : n;
    int nul = 0;
    char *name = pct_decode(s, nlen, 1, &nul);
    char *value = eq ? pct_decode(eq + 1, n - nlen - 1, 1, &nul) : strdup("");
    char **qn = realloc(req->qnames, (req->nq + 1) * sizeof(*qn));
    if (qn)
        req->qnames = qn;
    char **qv = realloc(req->qvalues, (req->nq + 1) * sizeof(*qv));
    if (qv)
        req->qvalues = qv;
    if (!name || !value || !qn || !qv || nul) {
        free(name);
        free(value);
        return nul ? -EINVAL : -ENOMEM;
    }
    req->qnames[req->nq] = name;
    req->qvalues[req->nq] = value;
    req->nq++;
    return 0;
}

/* Splits the request target into the decoded path and the query. Only origin-form targets
 * ("/path?query") are served; absolute-form and "*" are rejected. */
static int req_parse_target(http_req_t *req, const char **why)
{
    const char *url = req->url.data ? req->url.data : "";
    if (url[0] != '/') {
        *why = "request target must start with '/'";
        return -EINVAL;
    }
    size_t plen = strcspn(url, "?");
    int nul = 0;
    req->path = pct_decode(url, plen, 0, &nul);
    if (!req->path)
        return -ENOMEM;
    if (nul) {
        *why = "NUL byte in path";
        return -EINVAL;
    }
    const char *q = url[plen] == '?' ? url + plen + 1 : "";
    req->raw_query = strdup(q);
    if (!req->raw_query)
        return -ENOMEM;
    while (*q) {
        size_t n = strcspn(q, "&");
        if (n > 0) {
            int rc = req_add_query(req, q, n);
            if (rc == -EINVAL) {
                *why = "NUL byte in query";
                return rc;
            }
            if (rc < 0)
                return rc;
        }
        q += n;
        if (*q == '&')
            q++;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Parser callbacks (parser->data is the connection)
 */

static int parse_fail(llhttp_t *p, int status, const char *code, const char *msg)
{
    struct conn *c = p->data;
    c->err_status = status;
    c->err_code = code;
    c->err_msg = msg;
    llhttp_set_error_reason(p, msg);
    return HPE_USER;
}

static int fail_nomem(llhttp_t *p)
{
    return parse_fail(p, 503, "unavailable", "out of memory");
}

/* Accounts request line and header bytes; the limit covers everything before the body. */
static int count_header_bytes(llhttp_t *p, size_t n)
{
    struct conn *c = p->data;
    http_req_t *req = c->cur;
    req->header_bytes += n;
    if (req->header_bytes > c->srv->limits.max_header_bytes)
        return parse_fail(p, 431, "headers_too_large", "request headers too large");
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    http_req_t *req = calloc(1, sizeof(*req));
    if (!req)
        return fail_nomem(p);
    memcpy(req->peer, c->peer, sizeof(req->peer));
    req->loop = c->srv->loop;
    http_req_free(c->cur);
    c->cur = req;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    int rc = count_header_bytes(p, len);
    if (rc)
        return rc;
    return buf_append(&c->cur->url, at, len) < 0 ? fail_nomem(p) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (!c->cur)
        return 0; /* trailers of a streamed or skipped body: dropped */
    int rc = count_header_bytes(p, len);
    if (rc)
        return rc;
    return buf_append(&c->cur->hfield, at, len) < 0 ? fail_nomem(p) : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (!c->cur)
        return 0;
    int rc = count_header_bytes(p, len);
    if (rc)
        return rc;
    return buf_append(&c->cur->hvalue, at, len) < 0 ? fail_nomem(p) : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (!c->cur)
        return 0;
    int rc = count_header_bytes(p, 4); /* ": " and CRLF */
    if (rc)
        return rc;
    return req_commit_header(c->cur) < 0 ? fail_nomem(p) : 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    http_req_t *req = c->cur;
    req->headers_done = 1;
    req->method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    req->is_head = llhttp_get_method(p) == HTTP_HEAD;
    req->http10 = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0;
    req->version = llhttp_get_http_major(p) * 10 + llhttp_get_http_minor(p);
    /* An upgrade request goes to the handler, which either takes the connection over
     * (http_req_takeover) or answers normally; then the connection is closed, as llhttp parses
     * nothing after an upgrade request and no other protocol is supported. An `Upgrade:` header
     * without `Connection: upgrade` is treated the same, to keep the rule simple. */
    req->keep_alive =
        llhttp_should_keep_alive(p) && !p->upgrade && !http_req_header(req, "Upgrade");

    const char *why = "malformed request target";
    int rc = req_parse_target(req, &why);
    if (rc < 0) {
        if (rc == -ENOMEM)
            fail_nomem(p);
        else
            parse_fail(p, 400, "bad_request", why);
        return -1; /* on_headers_complete reports errors with -1, not an errno */
    }

    int chunked = (p->flags & F_CHUNKED) != 0;
    int has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    int has_body = chunked || (has_length && p->content_length > 0);
    req->content_length = chunked ? -1 : has_length ? (int64_t)p->content_length : 0;
    const char *expect = http_req_header(req, "Expect");
    int wants_continue =
        expect && has_body && !req->http10 && strcasecmp(expect, "100-continue") == 0;

    /* The hook sees every request (so its answer does not depend on the framing), but only one
     * with a body goes out early: without one, the complete request is just as quick. */
    http_server_t *srv = c->srv;
    int upgrade = p->upgrade || http_req_header(req, "Upgrade");
    if (srv->wants_stream && !upgrade && srv->wants_stream(req, srv->ctx) == 1 && has_body) {
        req->streaming = 1;
        req->expect_continue = (unsigned)wants_continue;
        c->body_req = req;
        c->ready = req;
        c->cur = NULL;
        return HPE_PAUSED; /* dispatched by http_conn_process() */
    }

    /* A declared body over the limit is refused before reading any of it. */
    if (has_length && p->content_length > srv->limits.max_body_bytes) {
        parse_fail(p, 413, "payload_too_large", "request body too large");
        return -1;
    }

    if (wants_continue) {
        buf_t out = BUF_INIT;
        if (buf_append_str(&out, "HTTP/1.1 100 Continue\r\n\r\n") < 0) {
            fail_nomem(p);
            return -1;
        }
        if (http_conn_write(c, &out) < 0)
            return -1; /* the connection is closed */
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (len == 0 || c->discarding)
        return 0;
    if (c->body_req) {
        http_req_t *req = c->body_req;
        if (req->on_data) {
            http_req_cb_enter(req);
            req->on_data(req, at, len, req->body_arg);
            if (http_req_cb_leave(req)) {
                c->parse_pending = 1;
                return HPE_PAUSED; /* answered: http_conn_process() decides about the rest */
            }
        }
        if (c->closing || req->body_paused || c->body_req != req) {
            /* Stop right after this chunk. on_message_complete may be next without any input
             * left: allow http_conn_process() an execute with zero bytes. */
            c->parse_pending = 1;
            return HPE_PAUSED;
        }
        return 0;
    }
    http_req_t *req = c->cur;
    if (!req)
        return 0;
    /* Content-Length was checked up front; this catches chunked bodies growing too big. */
    if (len > c->srv->limits.max_body_bytes - req->body.len)
        return parse_fail(p, 413, "payload_too_large", "request body too large");
    return buf_append(&req->body, at, len) < 0 ? fail_nomem(p) : 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    /* Stop right after this request: the next one is parsed once this one is answered. */
    if (c->discarding) {
        c->discarding = 0;
        return HPE_PAUSED;
    }
    if (c->body_req) {
        http_req_t *req = c->body_req;
        c->body_req = NULL;
        http_req_end_body(req, 0); /* may answer (and free) the request */
        return HPE_PAUSED;
    }
    c->ready = c->cur;
    c->cur = NULL;
    if (c->ready)
        c->ready->body_ended = 1;
    return HPE_PAUSED;
}

void http_parser_settings_init(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_header_field = on_header_field;
    s->on_header_value = on_header_value;
    s->on_header_value_complete = on_header_value_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}
