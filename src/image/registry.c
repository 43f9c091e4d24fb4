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
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/log.h"
#include "core/util.h"

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

int registry_host_insecure(const struct registry_client *rc, const char *host)
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

void pull_progress(struct pull *p, int64_t delta, int force)
{
    p->done += delta;
    if (p->fn && (force || p->done - p->reported >= (256 << 10))) {
        p->reported = p->done;
        p->fn(p->arg, p->done, p->total);
    }
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
    e->insecure = registry_host_insecure(rc, ref->registry);
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
        if (r == 0) {
            msg[0] = '\0'; /* a mirror's failure before is not this pull's */
            break;
        }
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
