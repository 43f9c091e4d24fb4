/*
 * manifest — the JSON documents of the OCI image spec and Docker's schema 2, read with jansson.
 */
#include "image/manifest.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include <jansson.h>

#include "core/util.h"
#include "image/digest.h"

#define MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MT_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define MT_OCI_CONFIG "application/vnd.oci.image.config.v1+json"
#define MT_DOCKER_CONFIG "application/vnd.docker.container.image.v1+json"

static int proto(char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int proto(char *msg, size_t msglen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
    return -EPROTO;
}

/* The media type without parameters ("; charset=utf-8"), into out. */
static void media_type_base(const char *s, char *out, size_t cap)
{
    size_t n = strcspn(s, "; \t");
    if (n >= cap)
        n = cap - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}

static int is_schema1(const char *mt)
{
    static const char v1[] = "application/vnd.docker.distribution.manifest.v1";
    return strncmp(mt, v1, sizeof(v1) - 1) == 0;
}

/* A descriptor's digest and size, checked. */
static int read_descriptor(json_t *d, const char *what, char digest[80], int64_t *size, char *msg,
                           size_t msglen)
{
    char hex[65];
    json_t *dg = json_object_get(d, "digest");
    json_t *sz = json_object_get(d, "size");
    if (!json_is_object(d))
        return proto(msg, msglen, "manifest: %s is not an object", what);
    if (!json_is_string(dg) || digest_parse(json_string_value(dg), hex) < 0)
        return proto(msg, msglen, "manifest: %s has no sha256 digest", what);
    if (!json_is_integer(sz) || json_integer_value(sz) < 0)
        return proto(msg, msglen, "manifest: %s has no valid size", what);
    snprintf(digest, 80, "%s", json_string_value(dg));
    *size = json_integer_value(sz);
    return 0;
}

static int parse_layer(json_t *l, size_t i, struct image_layer *out, char *msg, size_t msglen)
{
    char what[32];
    snprintf(what, sizeof(what), "layer %zu", i);
    int r = read_descriptor(l, what, out->digest, &out->size, msg, msglen);
    if (r < 0)
        return r;
    const char *mt = json_string_value(json_object_get(l, "mediaType"));
    if (!mt)
        return proto(msg, msglen, "manifest: layer %s has no media type", out->digest);
    if (json_object_get(l, "urls") || strstr(mt, "nondistributable") || strstr(mt, "foreign"))
        return proto(msg, msglen,
                     "manifest: layer %s is foreign/non-distributable (its content is not in the "
                     "registry): not supported",
                     out->digest);
    if (strcmp(mt, "application/vnd.oci.image.layer.v1.tar") == 0)
        out->compression = LAYER_PLAIN;
    else if (strcmp(mt, "application/vnd.oci.image.layer.v1.tar+gzip") == 0 ||
             strcmp(mt, "application/vnd.docker.image.rootfs.diff.tar.gzip") == 0)
        out->compression = LAYER_GZIP;
    else if (strcmp(mt, "application/vnd.oci.image.layer.v1.tar+zstd") == 0)
        out->compression = LAYER_ZSTD;
    else
        return proto(msg, msglen, "manifest: layer %s has unsupported media type %s", out->digest,
                     mt);
    return 0;
}

static int parse_image(json_t *root, struct manifest *out, char *msg, size_t msglen)
{
    json_t *config = json_object_get(root, "config");
    json_t *layers = json_object_get(root, "layers");
    int r = read_descriptor(config, "config", out->config_digest, &out->config_size, msg, msglen);
    if (r < 0)
        return r;
    const char *cmt = json_string_value(json_object_get(config, "mediaType"));
    if (cmt && strcmp(cmt, MT_OCI_CONFIG) != 0 && strcmp(cmt, MT_DOCKER_CONFIG) != 0)
        return proto(msg, msglen, "manifest: not a container image (config media type %s)", cmt);
    if (!json_is_array(layers))
        return proto(msg, msglen, "manifest: no layers array");
    size_t n = json_array_size(layers);
    if (n > MANIFEST_MAX_LAYERS)
        return proto(msg, msglen, "manifest: %zu layers (at most %d are supported)", n,
                     MANIFEST_MAX_LAYERS);
    out->layers = calloc(n ? n : 1, sizeof(*out->layers));
    if (!out->layers)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        r = parse_layer(json_array_get(layers, i), i, &out->layers[i], msg, msglen);
        if (r < 0)
            return r;
        out->n_layers++;
    }
    return 0;
}

static void copy_str(json_t *o, const char *key, char *out, size_t cap)
{
    const char *s = json_string_value(json_object_get(o, key));
    snprintf(out, cap, "%s", s ? s : "");
}

static int parse_index(json_t *root, struct manifest *out, char *msg, size_t msglen)
{
    json_t *ms = json_object_get(root, "manifests");
    if (!json_is_array(ms))
        return proto(msg, msglen, "index: no manifests array");
    size_t n = json_array_size(ms);
    if (n > 1024)
        return proto(msg, msglen, "index: %zu manifests is too many", n);
    out->entries = calloc(n ? n : 1, sizeof(*out->entries));
    if (!out->entries)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(ms, i);
        char what[32];
        snprintf(what, sizeof(what), "index entry %zu", i);
        struct index_entry *ie = &out->entries[out->n_entries];
        int r = read_descriptor(e, what, ie->digest, &ie->size, msg, msglen);
        if (r < 0)
            return r;
        /* Nested indexes and artifacts are not images of a platform: left out. */
        const char *mt = json_string_value(json_object_get(e, "mediaType"));
        if (mt && strcmp(mt, MT_OCI_MANIFEST) != 0 && strcmp(mt, MT_DOCKER_MANIFEST) != 0)
            continue;
        json_t *p = json_object_get(e, "platform");
        copy_str(p, "os", ie->os, sizeof(ie->os));
        copy_str(p, "architecture", ie->arch, sizeof(ie->arch));
        copy_str(p, "variant", ie->variant, sizeof(ie->variant));
        out->n_entries++;
    }
    return 0;
}

int manifest_parse(const char *json, size_t len, const char *content_type, struct manifest *out,
                   char *msg, size_t msglen)
{
    char ct[128] = "";
    json_error_t jerr;
    int r;
    memset(out, 0, sizeof(*out));
    if (len > MANIFEST_MAX_BYTES)
        return proto(msg, msglen, "manifest: %zu bytes is over the %d limit", len,
                     MANIFEST_MAX_BYTES);
    if (content_type)
        media_type_base(content_type, ct, sizeof(ct));
    if (is_schema1(ct))
        return proto(msg, msglen, "schema 1 manifests are not supported");
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        r = proto(msg, msglen, "manifest: not a JSON object (%s)", jerr.text);
        goto out;
    }
    json_t *sv = json_object_get(root, "schemaVersion");
    if (json_is_integer(sv) && json_integer_value(sv) == 1) {
        r = proto(msg, msglen, "schema 1 manifests are not supported");
        goto out;
    }
    if (!json_is_integer(sv) || json_integer_value(sv) != 2) {
        r = proto(msg, msglen, "manifest: schemaVersion is not 2");
        goto out;
    }
    /* The document's mediaType is authoritative; the header only when the document has none. */
    const char *mt = json_string_value(json_object_get(root, "mediaType"));
    if (!mt && ct[0] && strcmp(ct, "application/json") != 0)
        mt = ct;
    if (!mt)
        mt = json_object_get(root, "manifests") ? MT_OCI_INDEX : MT_OCI_MANIFEST;
    if (strcmp(mt, MT_OCI_MANIFEST) == 0 || strcmp(mt, MT_DOCKER_MANIFEST) == 0) {
        out->kind = MANIFEST_IMAGE;
        r = parse_image(root, out, msg, msglen);
    } else if (strcmp(mt, MT_OCI_INDEX) == 0 || strcmp(mt, MT_DOCKER_LIST) == 0) {
        out->kind = MANIFEST_INDEX;
        r = parse_index(root, out, msg, msglen);
    } else if (is_schema1(mt)) {
        r = proto(msg, msglen, "schema 1 manifests are not supported");
    } else {
        r = proto(msg, msglen, "unsupported manifest media type %s", mt);
    }
out:
    json_decref(root);
    if (r < 0)
        manifest_free(out);
    return r;
}

void manifest_free(struct manifest *m)
{
    free(m->layers);
    free(m->entries);
    memset(m, 0, sizeof(*m));
}

void manifest_host_platform(char os[32], char arch[32], char variant[16])
{
    static const struct {
        const char *machine, *arch, *variant;
    } map[] = {
        {"x86_64", "amd64", ""},    {"aarch64", "arm64", "v8"}, {"armv7l", "arm", "v7"},
        {"armv6l", "arm", "v6"},    {"i686", "386", ""},        {"i386", "386", ""},
        {"ppc64le", "ppc64le", ""}, {"s390x", "s390x", ""},     {"riscv64", "riscv64", ""},
    };
    struct utsname u;
    snprintf(os, 32, "linux");
    if (uname(&u) < 0)
        u.machine[0] = '\0';
    snprintf(arch, 32, "%.31s", u.machine);
    variant[0] = '\0';
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(u.machine, map[i].machine) == 0) {
            snprintf(arch, 32, "%s", map[i].arch);
            snprintf(variant, 16, "%s", map[i].variant);
        }
}

int manifest_select(const struct manifest *index, const char *os, const char *arch,
                    const char *variant, size_t *which, char *msg, size_t msglen)
{
    /* Rank: 2 = exact variant, 1 = the entry names no variant (or the wanted one is implied). */
    int best = 0;
    for (size_t i = 0; i < index->n_entries; i++) {
        const struct index_entry *e = &index->entries[i];
        int rank = 0;
        if (strcmp(e->os, os) != 0 || strcmp(e->arch, arch) != 0)
            continue;
        if (strcmp(e->variant, variant) == 0)
            rank = 2;
        else if (!e->variant[0] || (!variant[0] && strcmp(e->variant, "v1") == 0))
            rank = 1;
        if (rank > best) {
            best = rank;
            *which = i;
        }
    }
    if (best)
        return 0;
    size_t off = (size_t)snprintf(msg, msglen, "no image for %s/%s%s%s (available:", os, arch,
                                  variant[0] ? "/" : "", variant);
    for (size_t i = 0; i < index->n_entries && off < msglen; i++) {
        const struct index_entry *e = &index->entries[i];
        off += (size_t)snprintf(msg + off, msglen - off, "%s %s/%s%s%s", i ? "," : "",
                                e->os[0] ? e->os : "?", e->arch[0] ? e->arch : "?",
                                e->variant[0] ? "/" : "", e->variant);
    }
    if (off < msglen)
        snprintf(msg + off, msglen - off, "%s)", index->n_entries ? "" : " none");
    return -ENOENT;
}

/* A NULL-terminated copy of a JSON array of strings; absent or null gives NULL. */
static int strv_from_json(json_t *a, const char *field, char ***out, size_t *count, char *msg,
                          size_t msglen)
{
    *out = NULL;
    if (!a || json_is_null(a))
        return 0;
    if (!json_is_array(a))
        return proto(msg, msglen, "image config: %s is not an array", field);
    size_t n = json_array_size(a);
    char **v = calloc(n + 1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(a, i);
        if (!json_is_string(s)) {
            util_free_strv(v);
            return proto(msg, msglen, "image config: %s[%zu] is not a string", field, i);
        }
        if (!(v[i] = strdup(json_string_value(s)))) {
            util_free_strv(v);
            return -ENOMEM;
        }
    }
    *out = v;
    if (count)
        *count = n;
    return 0;
}

static int str_from_json(json_t *o, const char *key, char **out, char *msg, size_t msglen)
{
    json_t *s = json_object_get(o, key);
    *out = NULL;
    if (!s || json_is_null(s))
        return 0;
    if (!json_is_string(s))
        return proto(msg, msglen, "image config: config.%s is not a string", key);
    *out = strdup(json_string_value(s));
    return *out ? 0 : -ENOMEM;
}

int image_config_parse(const char *json, size_t len, struct image_config *out, char *msg,
                       size_t msglen)
{
    json_error_t jerr;
    int r;
    memset(out, 0, sizeof(*out));
    if (len > MANIFEST_MAX_BYTES)
        return proto(msg, msglen, "image config: %zu bytes is over the %d limit", len,
                     MANIFEST_MAX_BYTES);
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!json_is_object(root)) {
        r = proto(msg, msglen, "image config: not a JSON object (%s)", jerr.text);
        goto out;
    }
    copy_str(root, "os", out->os, sizeof(out->os));
    copy_str(root, "architecture", out->arch, sizeof(out->arch));
    copy_str(root, "variant", out->variant, sizeof(out->variant));
    json_t *cfg = json_object_get(root, "config");
    if (cfg && !json_is_null(cfg) && !json_is_object(cfg)) {
        r = proto(msg, msglen, "image config: config is not an object");
        goto out;
    }
    if ((r = strv_from_json(json_object_get(cfg, "Env"), "config.Env", &out->env, NULL, msg,
                            msglen)) < 0 ||
        (r = strv_from_json(json_object_get(cfg, "Entrypoint"), "config.Entrypoint",
                            &out->entrypoint, NULL, msg, msglen)) < 0 ||
        (r = strv_from_json(json_object_get(cfg, "Cmd"), "config.Cmd", &out->cmd, NULL, msg,
                            msglen)) < 0 ||
        (r = str_from_json(cfg, "WorkingDir", &out->workdir, msg, msglen)) < 0 ||
        (r = str_from_json(cfg, "User", &out->user, msg, msglen)) < 0)
        goto out;
    json_t *rootfs = json_object_get(root, "rootfs");
    json_t *ids = json_object_get(rootfs, "diff_ids");
    if (!json_is_array(ids)) {
        r = proto(msg, msglen, "image config: no rootfs.diff_ids");
        goto out;
    }
    if ((r = strv_from_json(ids, "rootfs.diff_ids", &out->diff_ids, &out->n_diff_ids, msg,
                            msglen)) < 0)
        goto out;
    for (size_t i = 0; i < out->n_diff_ids; i++) {
        char hex[65];
        if (digest_parse(out->diff_ids[i], hex) < 0) {
            r = proto(msg, msglen, "image config: rootfs.diff_ids[%zu] is not a sha256 digest", i);
            goto out;
        }
    }
out:
    json_decref(root);
    if (r < 0)
        image_config_free(out);
    return r;
}

void image_config_free(struct image_config *c)
{
    util_free_strv(c->env);
    util_free_strv(c->entrypoint);
    util_free_strv(c->cmd);
    util_free_strv(c->diff_ids);
    free(c->workdir);
    free(c->user);
    memset(c, 0, sizeof(*c));
}
