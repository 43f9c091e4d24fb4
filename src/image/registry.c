/*
 * registry — the client, its requests and their authentication, and the manifest → config →
 * layers sequence of a pull (layers: registry_blob.c).
 */
#include "image/registry_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "core/log.h"
#include "core/util.h"

/* Error bodies and token answers are small; more is not read. */
#define SMALL_BODY_MAX (64 << 10)

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int pull_fail(struct pull *p, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg, p->msglen, fmt, ap);
    va_end(ap);
    return err;
}

static int host_insecure(const struct registry_client *rc, const char *host)
{
    for (size_t i = 0; i < rc->o.n_insecure; i++)
        if (strcmp(rc->o.insecure[i], host) == 0)
            return 1;
    return 0;
}

static int load_cas(struct registry_client *rc, const char *path, char *msg, size_t msglen)
{
    BIO *b = BIO_new_file(path, "r");
    X509 *x;
    if (!b) {
        snprintf(msg, msglen, "registry CA file %s: cannot be read", path);
        return access(path, R_OK) < 0 ? -errno : -EINVAL;
    }
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
        void **v = realloc(rc->cas, (rc->n_cas + 1) * sizeof(*v));
        if (!v) {
            X509_free(x);
            BIO_free(b);
            return -ENOMEM;
        }
        rc->cas = v;
        rc->cas[rc->n_cas++] = x;
    }
    BIO_free(b);
    if (!rc->n_cas) {
        snprintf(msg, msglen, "registry CA file %s: no PEM certificate in it", path);
        return -EINVAL;
    }
    return 0;
}

int registry_client_new(const struct registry_options *o, struct registry_client **out, char *msg,
                        size_t msglen)
{
    int r;
    *out = NULL;
    pthread_once(&curl_once, curl_init);
    if (curl_init_result != CURLE_OK) {
        snprintf(msg, msglen, "libcurl: %s", curl_easy_strerror(curl_init_result));
        return -ENOMEM;
    }
    for (size_t i = 0; i < o->n_mirrors; i++) {
        const char *eq = strchr(o->mirrors[i], '=');
        if (!eq || eq == o->mirrors[i] ||
            (strncmp(eq + 1, "http://", 7) != 0 && strncmp(eq + 1, "https://", 8) != 0)) {
            snprintf(msg, msglen, "registry mirror '%s': want REGISTRY=http[s]://HOST[:PORT]",
                     o->mirrors[i]);
            return -EINVAL;
        }
    }
    struct registry_client *rc = calloc(1, sizeof(*rc));
    if (!rc)
        return -ENOMEM;
    rc->o = *o;
    if (rc->o.timeout_s <= 0)
        rc->o.timeout_s = 30;
    if (o->auth_file && (r = registry_auths_load(o->auth_file, &rc->auths, msg, msglen)) < 0)
        goto fail;
    if (o->ca_file && (r = load_cas(rc, o->ca_file, msg, msglen)) < 0)
        goto fail;
    *out = rc;
    return 0;
fail:
    registry_client_free(rc);
    return r;
}

void registry_client_free(struct registry_client *rc)
{
    if (!rc)
        return;
    registry_auths_free(&rc->auths);
    for (size_t i = 0; i < rc->n_cas; i++)
        X509_free(rc->cas[i]);
    free(rc->cas);
    free(rc);
}

/* Adds the extra CA bundle to the store curl filled from the system's. */
static CURLcode ssl_ctx_cb(CURL *h, void *sslctx, void *arg)
{
    const struct registry_client *rc = arg;
    X509_STORE *st = SSL_CTX_get_cert_store(sslctx);
    for (size_t i = 0; i < rc->n_cas; i++)
        X509_STORE_add_cert(st, rc->cas[i]);
    return CURLE_OK;
}

void pull_progress(struct pull *p, int64_t delta, int force)
{
    p->done += delta;
    if (p->fn && (force || p->done - p->reported >= (256 << 10))) {
        p->reported = p->done;
        p->fn(p->arg, p->done, p->total);
    }
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
        ok = host_insecure(p->rc, hp) || (p->ep.insecure && strcmp(hp, p->ep.host) == 0);
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

/* GET /v2/<repo>/<kind>/<ref> into out (at most limit bytes), answering one 401. */
static int fetch_small(struct pull *p, const char *kind, const char *what, const char *ref,
                       size_t limit, buf_t *out, char *content_type, size_t ctcap)
{
    char path[700];
    struct xfer x;
    int r = 0;
    snprintf(path, sizeof(path), "/v2/%s/%s/%s", p->ref->repository, kind, ref);
    xfer_init(&x, p);
    x.mem = out;
    x.mem_limit = limit;
    for (int attempt = 0;; attempt++) {
        buf_reset(out);
        if ((r = xfer_prepare(&x, path, strcmp(kind, "manifests") == 0 ? MANIFEST_ACCEPT : NULL,
                              1)) < 0)
            break;
        CURLcode cc = curl_easy_perform(x.h);
        if (x.sink_err == -EFBIG) {
            r = pull_fail(p, strcmp(kind, "blobs") == 0 ? -EBADMSG : -EPROTO,
                          "%s %s of %s is larger than %zu bytes", what, ref, p->refstr, limit);
            break;
        }
        if (x.sink_err) {
            r = x.sink_err;
            break;
        }
        if (cc == CURLE_OK && x.status == 401 && attempt == 0) {
            char challenge[sizeof(x.www_auth)];
            memcpy(challenge, x.www_auth, sizeof(challenge));
            xfer_release(&x);
            if ((r = pull_authenticate(p, challenge)) < 0)
                break;
            continue;
        }
        if (cc != CURLE_OK || x.status != 200)
            r = xfer_error(&x, cc, what);
        else if (content_type)
            snprintf(content_type, ctcap, "%s", x.content_type);
        break;
    }
    xfer_release(&x);
    buf_free(&x.err);
    return r;
}

/* Fetches a manifest by tag or digest, checks it against `want` (a digest, or NULL for a tag)
 * and stores it as a blob. */
static int fetch_manifest(struct pull *p, const char *ref, const char *want, struct manifest *m,
                          char digest[80])
{
    buf_t body = BUF_INIT;
    char ct[128] = "";
    int r = fetch_small(p, "manifests", "manifest", ref, MANIFEST_MAX_BYTES, &body, ct, sizeof(ct));
    if (r < 0)
        goto out;
    if ((r = digest_buffer(body.data ? body.data : "", body.len, digest)) < 0)
        goto out;
    if (want && strcmp(digest, want) != 0) {
        r = pull_fail(p, -EBADMSG, "manifest of %s: digest %s, expected %s", p->refstr, digest,
                      want);
        goto out;
    }
    if ((r = manifest_parse(body.data ? body.data : "", body.len, ct, m, p->msg, p->msglen)) < 0)
        goto out;
    r = blob_store(p, digest, body.data ? body.data : "", body.len);
    if (r < 0)
        manifest_free(m);
out:
    buf_free(&body);
    return r;
}

/* The config: from disk when it is there (verified when written), else from the registry. */
static int fetch_config(struct pull *p, const struct manifest *m, struct image_config *cfg)
{
    char final[PATH_MAX], part[PATH_MAX], digest[DIGEST_STRLEN];
    buf_t body = BUF_INIT;
    int r;
    if (m->config_size > MANIFEST_MAX_BYTES)
        return pull_fail(p, -EPROTO, "config of %s: %lld bytes is over the %d limit", p->refstr,
                         (long long)m->config_size, MANIFEST_MAX_BYTES);
    blob_paths(p, m->config_digest, final, part);
    if (blob_present(final, m->config_size)) {
        int fd = open(final, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || buf_reserve(&body, (size_t)m->config_size) < 0) {
            r = fd < 0 ? -EIO : -ENOMEM;
            if (fd >= 0)
                close(fd);
            goto out;
        }
        ssize_t n = read(fd, body.data, (size_t)m->config_size);
        close(fd);
        if (n != m->config_size) {
            r = pull_fail(p, -EIO, "config blob %s: short read", final);
            goto out;
        }
        body.len = (size_t)n;
        body.data[n] = '\0';
    } else {
        /* One byte over the announced size is enough to know it lies. */
        if ((r = fetch_small(p, "blobs", "config", m->config_digest, (size_t)m->config_size, &body,
                             NULL, 0)) < 0)
            goto out;
        if ((r = digest_buffer(body.data ? body.data : "", body.len, digest)) < 0)
            goto out;
        if ((int64_t)body.len != m->config_size || strcmp(digest, m->config_digest) != 0) {
            r = pull_fail(p, -EBADMSG, "config blob %s of %s: got %zu bytes with digest %s",
                          m->config_digest, p->refstr, body.len, digest);
            goto out;
        }
        if ((r = blob_store(p, m->config_digest, body.data, body.len)) < 0)
            goto out;
    }
    r = image_config_parse(body.data, body.len, cfg, p->msg, p->msglen);
out:
    buf_free(&body);
    return r;
}

static int pull_from(struct pull *p, struct pulled_image *out)
{
    struct manifest m = {0}, img = {0};
    char digest[80], os[32], arch[32], variant[16];
    const char *ref = p->ref->digest[0] ? p->ref->digest : p->ref->tag;
    int r = fetch_manifest(p, ref, p->ref->digest[0] ? p->ref->digest : NULL, &m, digest);
    if (r < 0)
        return r;
    manifest_host_platform(os, arch, variant);
    if (m.kind == MANIFEST_INDEX) {
        size_t which = 0;
        snprintf(out->index_digest, sizeof(out->index_digest), "%s", digest);
        if ((r = manifest_select(&m, os, arch, variant, &which, p->msg, p->msglen)) < 0) {
            size_t len = strlen(p->msg);
            snprintf(p->msg + len, p->msglen - len, " in %s", p->refstr);
            goto out;
        }
        const struct index_entry *e = &m.entries[which];
        if ((r = fetch_manifest(p, e->digest, e->digest, &img, digest)) < 0)
            goto out;
        if (img.kind != MANIFEST_IMAGE) {
            r = pull_fail(p, -EPROTO, "%s: an index inside an index is not supported", p->refstr);
            goto out;
        }
    } else {
        img = m;
        memset(&m, 0, sizeof(m));
    }
    snprintf(out->manifest_digest, sizeof(out->manifest_digest), "%s", digest);
    snprintf(out->config_digest, sizeof(out->config_digest), "%s", img.config_digest);
    if ((r = fetch_config(p, &img, &out->config)) < 0)
        goto out;
    if (out->config.n_diff_ids != img.n_layers) {
        r = pull_fail(p, -EPROTO, "%s: %zu layers but %zu diff_ids in the config", p->refstr,
                      img.n_layers, out->config.n_diff_ids);
        goto out;
    }
    if ((out->config.os[0] && strcmp(out->config.os, os) != 0) ||
        (out->config.arch[0] && strcmp(out->config.arch, arch) != 0)) {
        r = pull_fail(p, -ENOENT, "image %s is for %s/%s, this host is %s/%s", p->refstr,
                      out->config.os, out->config.arch, os, arch);
        goto out;
    }
    for (size_t i = 0; i < img.n_layers; i++)
        out->total_bytes += img.layers[i].size;
    p->total = out->total_bytes;
    if ((r = pull_layers(p, img.layers, img.n_layers)) < 0)
        goto out;
    out->layers = img.layers;
    out->n_layers = img.n_layers;
    img.layers = NULL;
    img.n_layers = 0;
out:
    manifest_free(&m);
    manifest_free(&img);
    return r;
}

/* The endpoints to try for ref, in order: its mirrors, then the registry itself. */
static size_t endpoints(const struct registry_client *rc, const struct image_ref *ref,
                        struct endpoint *eps, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < rc->o.n_mirrors && n + 1 < cap; i++) {
        const char *m = rc->o.mirrors[i], *eq = strchr(m, '=');
        char raw[256], key[256];
        snprintf(raw, sizeof(raw), "%.*s", (int)(eq - m), m);
        registry_host_normalise(raw, key, sizeof(key));
        if (strcmp(key, ref->registry) != 0)
            continue;
        struct endpoint *e = &eps[n++];
        memset(e, 0, sizeof(*e));
        snprintf(e->base, sizeof(e->base), "%s", eq + 1);
        size_t bl = strlen(e->base);
        while (bl > 0 && e->base[bl - 1] == '/')
            e->base[--bl] = '\0';
        registry_host_normalise(e->base, e->host, sizeof(e->host));
        e->insecure = strncmp(e->base, "http://", 7) == 0;
        e->mirror = 1;
    }
    struct endpoint *e = &eps[n++];
    memset(e, 0, sizeof(*e));
    snprintf(e->host, sizeof(e->host), "%s",
             strcmp(ref->registry, "docker.io") == 0 ? "registry-1.docker.io" : ref->registry);
    e->insecure = host_insecure(rc, ref->registry);
    snprintf(e->base, sizeof(e->base), "%s://%s", e->insecure ? "http" : "https", e->host);
    return n;
}

int registry_pull(struct registry_client *rc, const struct image_ref *ref, const char *blobs_dir,
                  struct pulled_image *out, registry_progress_fn fn, void *arg, char *msg,
                  size_t msglen)
{
    struct endpoint eps[8];
    char dir[PATH_MAX];
    int r = 0;
    memset(out, 0, sizeof(*out));
    msg[0] = '\0';
    snprintf(dir, sizeof(dir), "%s/sha256", blobs_dir);
    if ((r = util_mkdir_p(dir, 0755)) < 0) {
        snprintf(msg, msglen, "blob store %s: %s", dir, strerror(-r));
        return r == -ENOSPC ? r : -EIO;
    }
    snprintf(dir, sizeof(dir), "%s/tmp", blobs_dir);
    if ((r = util_mkdir_p(dir, 0700)) < 0) {
        snprintf(msg, msglen, "blob store %s: %s", dir, strerror(-r));
        return r == -ENOSPC ? r : -EIO;
    }
    size_t n = endpoints(rc, ref, eps, sizeof(eps) / sizeof(eps[0]));
    for (size_t i = 0; i < n; i++) {
        struct pull p = {.rc = rc,
                         .ref = ref,
                         .ep = eps[i],
                         .blobs_dir = blobs_dir,
                         .fn = fn,
                         .arg = arg,
                         .msg = msg,
                         .msglen = msglen};
        image_ref_string(ref, p.refstr, sizeof(p.refstr));
        r = pull_from(&p, out);
        if (p.authz) {
            explicit_bzero(p.authz, strlen(p.authz));
            free(p.authz);
        }
        if (r == 0)
            break;
        pulled_image_free(out);
        if (r == -ENOSPC || r == -EIO || r == -ENOMEM)
            break;
        if (i + 1 < n)
            log_warn("registry: pulling %s from mirror %s failed (%s); trying %s", p.refstr,
                     eps[i].base, msg, eps[i + 1].base);
    }
    if (r == -ENOMEM && !msg[0])
        snprintf(msg, msglen, "out of memory pulling %s/%s", ref->registry, ref->repository);
    return r;
}

void pulled_image_free(struct pulled_image *p)
{
    image_config_free(&p->config);
    free(p->layers);
    memset(p, 0, sizeof(*p));
}
