/*
 * registry_http — one GET with curl: options (protocols, timeouts, CA bundle), the header and body
 * callbacks (memory or a layer's partial file), errors as -errno with a message, and the answer
 * to a 401 (a bearer token from the realm, or basic credentials).
 */
#include "image/registry_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "core/util.h"

/* Adds the extra CA bundle to the store curl filled from the system's. */
static CURLcode ssl_ctx_cb(CURL *h, void *sslctx, void *arg)
{
    const struct registry_client *rc = arg;
    X509_STORE *st = SSL_CTX_get_cert_store(sslctx);
    for (size_t i = 0; i < rc->n_cas; i++)
        X509_STORE_add_cert(st, rc->cas[i]);
    return CURLE_OK;
}

void xfer_init(struct xfer *x, struct pull *p)
{
    memset(x, 0, sizeof(*x));
    x->p = p;
    x->fd = -1;
}

void xfer_reset_answer(struct xfer *x)
{
    x->status = 0;
    x->started = 0;
    x->sink_err = 0;
    x->www_auth[0] = x->content_type[0] = x->content_range[0] = '\0';
    buf_reset(&x->err);
}

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n, k;
    static const struct {
        const char *name;
        size_t off, cap;
    } keep[] = {
        {"www-authenticate:", offsetof(struct xfer, www_auth),
         sizeof(((struct xfer *)0)->www_auth)},
        {"content-type:", offsetof(struct xfer, content_type),
         sizeof(((struct xfer *)0)->content_type)},
        {"content-range:", offsetof(struct xfer, content_range),
         sizeof(((struct xfer *)0)->content_range)},
    };
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* A new answer (after a redirect or a 100): forget the previous one's headers. */
        xfer_reset_answer(x);
        const char *sp = memchr(line, ' ', len);
        x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        return len;
    }
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
        size_t nl = strlen(keep[i].name);
        char *dst = (char *)x + keep[i].off;
        if (len <= nl || strncasecmp(line, keep[i].name, nl) != 0)
            continue;
        /* Of several challenges, Bearer is the one to answer. */
        if (dst == x->www_auth && x->www_auth[0] && strncasecmp(x->www_auth, "bearer", 6) == 0)
            continue;
        const char *v = line + nl;
        size_t vl = len - nl;
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        k = vl < keep[i].cap - 1 ? vl : keep[i].cap - 1;
        memcpy(dst, v, k);
        dst[k] = '\0';
    }
    return len;
}

/* Starts the body of a layer's answer: a 200 to a Range request means starting over. */
static int layer_body_start(struct xfer *x)
{
    if (x->status == 206) {
        long long start = -1;
        if (x->offset == 0 || sscanf(x->content_range, "bytes %lld-", &start) != 1 ||
            start != x->offset)
            return -EAGAIN;
        return 0;
    }
    if (x->offset > 0) {
        if (ftruncate(x->fd, 0) < 0)
            return -EIO;
        digest_free(&x->dg);
        if (digest_init(&x->dg) < 0)
            return -ENOMEM;
        pull_progress(x->p, -x->got, 0);
        x->got = x->offset = 0;
        x->resumed = 0;
    }
    return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;
    if (x->status < 200 || x->status > 299) {
        if (x->err.len < SMALL_BODY_MAX && buf_append(&x->err, data, len) < 0)
            return 0;
        return len;
    }
    if (x->fd < 0) {
        if (x->mem->len + len > x->mem_limit) {
            x->sink_err = -EFBIG;
            return 0;
        }
        if (buf_append(x->mem, data, len) < 0) {
            x->sink_err = -ENOMEM;
            return 0;
        }
        return len;
    }
    if (!x->started) {
        x->started = 1;
        if ((x->sink_err = layer_body_start(x)) < 0)
            return 0;
    }
    /* The size in the manifest is enforced as the bytes arrive: one byte more is a lie. */
    if (x->got + (int64_t)len > x->layer->size) {
        x->sink_err = -EBADMSG;
        return 0;
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = pwrite(x->fd, data + off, len - off, x->got + (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            x->sink_err = errno == ENOSPC || errno == EDQUOT ? -ENOSPC : -EIO;
            return 0;
        }
        off += (size_t)w;
    }
    digest_update(&x->dg, data, len);
    x->got += (int64_t)len;
    pull_progress(x->p, (int64_t)len, 0);
    return len;
}

int xfer_prepare(struct xfer *x, const char *url, const char *accept, int with_auth)
{
    struct pull *p = x->p;
    char full[1024], line[128];
    const char *protos = p->ep.insecure ? "http,https" : "https";
    if (url[0] == '/')
        snprintf(full, sizeof(full), "%s%s", p->ep.base, url);
    else
        snprintf(full, sizeof(full), "%s", url);
    x->h = curl_easy_init();
    if (!x->h)
        return -ENOMEM;
    x->errbuf[0] = '\0';
    xfer_reset_answer(x);
    if (accept) {
        snprintf(line, sizeof(line), "Accept: %s", accept);
        x->hdrs = curl_slist_append(x->hdrs, line);
    }
    if (x->offset > 0) {
        snprintf(line, sizeof(line), "Range: bytes=%lld-", (long long)x->offset);
        x->hdrs = curl_slist_append(x->hdrs, line);
    }
    /* curl sends a custom Authorization only to the first host, not across redirects. */
    if (with_auth && p->authz)
        x->hdrs = curl_slist_append(x->hdrs, p->authz);
    if ((accept || x->offset > 0 || (with_auth && p->authz)) && !x->hdrs)
        return -ENOMEM;
    curl_easy_setopt(x->h, CURLOPT_URL, full);
    curl_easy_setopt(x->h, CURLOPT_PROTOCOLS_STR, protos);
    curl_easy_setopt(x->h, CURLOPT_REDIR_PROTOCOLS_STR, protos);
    curl_easy_setopt(x->h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(x->h, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(x->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x->h, CURLOPT_CONNECTTIMEOUT, p->rc->o.timeout_s);
    curl_easy_setopt(x->h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(x->h, CURLOPT_LOW_SPEED_TIME, p->rc->o.timeout_s);
    curl_easy_setopt(x->h, CURLOPT_USERAGENT, "warren");
    curl_easy_setopt(x->h, CURLOPT_HTTPHEADER, x->hdrs);
    curl_easy_setopt(x->h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(x->h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(x->h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(x->h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(x->h, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(x->h, CURLOPT_PRIVATE, x);
    if (p->rc->n_cas) {
        curl_easy_setopt(x->h, CURLOPT_SSL_CTX_FUNCTION, ssl_ctx_cb);
        curl_easy_setopt(x->h, CURLOPT_SSL_CTX_DATA, p->rc);
    }
    return 0;
}

void xfer_release(struct xfer *x)
{
    if (x->h)
        curl_easy_cleanup(x->h);
    curl_slist_free_all(x->hdrs);
    x->h = NULL;
    x->hdrs = NULL;
}

static int curl_code_errno(CURLcode cc, long os_errno)
{
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -EHOSTUNREACH;
    case CURLE_COULDNT_CONNECT:
        if (os_errno == EHOSTUNREACH || os_errno == ENETUNREACH)
            return -EHOSTUNREACH;
        return os_errno == ETIMEDOUT ? -ETIMEDOUT : -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return -ECONNREFUSED;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return -EPROTO;
    default:
        return -ECONNRESET;
    }
}

/* "CODE: message" of a registry's JSON error body, or "". */
static void error_body_text(const buf_t *b, char *code, size_t codecap, char *out, size_t cap)
{
    json_t *root = b->len ? json_loadb(b->data, b->len, 0, NULL) : NULL;
    json_t *e = json_array_get(json_object_get(root, "errors"), 0);
    const char *c = json_string_value(json_object_get(e, "code"));
    const char *m = json_string_value(json_object_get(e, "message"));
    snprintf(code, codecap, "%s", c ? c : "");
    if (c)
        snprintf(out, cap, ": %s%s%s", c, m ? ": " : "", m ? m : "");
    else
        out[0] = '\0';
    json_decref(root);
}

int xfer_error(struct xfer *x, CURLcode cc, const char *what)
{
    struct pull *p = x->p;
    char code[64], text[512];
    if (cc != CURLE_OK) {
        long os_errno = 0;
        curl_easy_getinfo(x->h, CURLINFO_OS_ERRNO, &os_errno);
        return pull_fail(p, curl_code_errno(cc, os_errno), "registry %s unreachable: %s",
                         p->ep.host, x->errbuf[0] ? x->errbuf : curl_easy_strerror(cc));
    }
    error_body_text(&x->err, code, sizeof(code), text, sizeof(text));
    switch (x->status) {
    case 404:
        if (strcmp(what, "manifest") == 0)
            return pull_fail(p, -ENOENT, "image not found: %s", p->refstr);
        return pull_fail(p, -ENOENT, "image not found: %s (%s missing on %s%s)", p->refstr, what,
                         p->ep.host, text);
    case 401:
    case 403:
        return pull_fail(p, -EACCES, "registry %s denied access to %s (HTTP %ld%s)", p->ep.host,
                         p->refstr, x->status, text);
    case 429:
        return pull_fail(p, -EAGAIN, "registry %s: too many requests (HTTP 429%s)", p->ep.host,
                         text);
    default:
        return pull_fail(p, -EPROTO, "registry %s answered HTTP %ld for the %s of %s%s", p->ep.host,
                         x->status, what, p->refstr, text);
    }
}

/* 1 if the URL's scheme may be used from this client: https, or http to an insecure host. */
static int url_allowed(struct pull *p, const char *url)
{
    char *host = NULL, *port = NULL, hp[300];
    int ok = 0;
    if (strncmp(url, "https://", 8) == 0)
        return 1;
    if (strncmp(url, "http://", 7) != 0)
        return 0;
    CURLU *u = curl_url();
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        if (curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK)
            snprintf(hp, sizeof(hp), "%s:%s", host, port);
        else
            snprintf(hp, sizeof(hp), "%s", host);
        ok = registry_host_insecure(p->rc, hp) || (p->ep.insecure && strcmp(hp, p->ep.host) == 0);
    }
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return ok;
}

static int set_authz(struct pull *p, const char *scheme, const char *value)
{
    char *line;
    if (asprintf(&line, "Authorization: %s %s", scheme, value) < 0)
        return -ENOMEM;
    if (p->authz) {
        explicit_bzero(p->authz, strlen(p->authz));
        free(p->authz);
    }
    p->authz = line;
    return 0;
}

static const struct registry_cred *pull_creds(struct pull *p)
{
    return registry_auths_find(&p->rc->auths, p->ep.mirror ? p->ep.host : p->ref->registry);
}

static int fetch_token(struct pull *p, const struct registry_challenge *ch)
{
    const struct registry_cred *cred = pull_creds(p);
    char scope[600];
    char *url = NULL, *svc = NULL, *sc = NULL;
    buf_t body = BUF_INIT;
    struct xfer x;
    int r;
    if (!url_allowed(p, ch->realm))
        return pull_fail(p, -EACCES,
                         "registry %s: token realm %s is not HTTPS (list its host as insecure to "
                         "allow it)",
                         p->ep.host, ch->realm);
    if (ch->scope[0])
        snprintf(scope, sizeof(scope), "%s", ch->scope);
    else
        snprintf(scope, sizeof(scope), "repository:%s:pull", p->ref->repository);
    xfer_init(&x, p);
    x.mem = &body;
    x.mem_limit = SMALL_BODY_MAX;
    svc = curl_easy_escape(NULL, ch->service, 0);
    sc = curl_easy_escape(NULL, scope, 0);
    if (!svc || !sc ||
        asprintf(&url, "%s%sservice=%s&scope=%s", ch->realm, strchr(ch->realm, '?') ? "&" : "?",
                 svc, sc) < 0) {
        url = NULL;
        r = -ENOMEM;
        goto out;
    }
    if ((r = xfer_prepare(&x, url, "application/json", 0)) < 0)
        goto out;
    if (cred) {
        curl_easy_setopt(x.h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(x.h, CURLOPT_USERNAME, cred->user);
        curl_easy_setopt(x.h, CURLOPT_PASSWORD, cred->pass);
    }
    CURLcode cc = curl_easy_perform(x.h);
    if (cc != CURLE_OK || x.status != 200) {
        if (cc == CURLE_OK && (x.status == 401 || x.status == 403))
            r = pull_fail(p, -EACCES, "registry %s: the token service refused %s (HTTP %ld)",
                          p->ep.host, cred ? "the credentials" : "anonymous access", x.status);
        else
            r = xfer_error(&x, cc, "token");
        goto out;
    }
    json_t *root = json_loadb(body.data, body.len, 0, NULL);
    const char *tok = json_string_value(json_object_get(root, "token"));
    if (!tok || !*tok)
        tok = json_string_value(json_object_get(root, "access_token"));
    if (tok && *tok && strlen(tok) < 16384 && !strpbrk(tok, "\r\n"))
        r = set_authz(p, "Bearer", tok);
    else
        r = pull_fail(p, -EPROTO, "registry %s: the token service answered no token", p->ep.host);
    json_decref(root);
out:
    if (body.data)
        explicit_bzero(body.data, body.len);
    buf_free(&body);
    buf_free(&x.err);
    xfer_release(&x);
    free(url);
    curl_free(svc);
    curl_free(sc);
    return r;
}

int pull_authenticate(struct pull *p, const char *www_auth)
{
    struct registry_challenge ch;
    if (!www_auth[0] || registry_challenge_parse(www_auth, &ch) < 0)
        return pull_fail(p, -EACCES, "registry %s: HTTP 401 without a usable challenge",
                         p->ep.host);
    if (ch.scheme == CHALLENGE_BEARER)
        return fetch_token(p, &ch);
    const struct registry_cred *cred = pull_creds(p);
    if (!cred)
        return pull_fail(p, -EACCES, "registry %s requires credentials (none in the auth file)",
                         p->ep.host);
    char *userpass, *b64;
    if (asprintf(&userpass, "%s:%s", cred->user, cred->pass) < 0)
        return -ENOMEM;
    b64 = util_base64_encode(userpass, strlen(userpass));
    explicit_bzero(userpass, strlen(userpass));
    free(userpass);
    if (!b64)
        return -ENOMEM;
    int r = set_authz(p, "Basic", b64);
    explicit_bzero(b64, strlen(b64));
    free(b64);
    return r;
}
