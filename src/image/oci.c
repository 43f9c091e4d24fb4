/*
 * oci — see oci.h.
 */
#include "image/oci.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"

#define MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_CONFIG "application/vnd.oci.image.config.v1+json"
#define MT_LAYER "application/vnd.oci.image.layer.v1.tar"
#define MAX_DOC (4u << 20) /* manifests and configs */

int oci_put_blob(struct layer_store *s, const void *data, size_t len, char digest[DIGEST_STRLEN])
{
    char tmp[4200], path[4200];
    if (digest_buffer(data, len, digest) < 0)
        return -ENOMEM;
    if (layer_store_blob_path(s, digest, path, sizeof(path)) < 0)
        return -ENAMETOOLONG;
    if (access(path, F_OK) == 0)
        return 0; /* content-addressed: the same bytes are there */
    /* In layers/.tmp-*: whatever a crash leaves there is removed when the store opens. */
    snprintf(tmp, sizeof(tmp), "%s/layers/.tmp-blob-XXXXXX", layer_store_dir(s));
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = util_write_all(fd, data, len);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    close(fd);
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        unlink(tmp);
    return r;
}

/* The JSON document in blob `digest` (a manifest or a config). */
static json_t *read_doc(struct layer_store *s, const char *digest, const char *what, int *r,
                        char *msg, size_t msglen)
{
    char path[4200];
    json_error_t jerr;
    json_t *doc = NULL;
    if (layer_store_blob_path(s, digest, path, sizeof(path)) < 0) {
        *r = -EINVAL;
        snprintf(msg, msglen, "%s %s: not a sha256 digest", what, digest);
        return NULL;
    }
    struct stat st;
    if (stat(path, &st) < 0 || st.st_size > MAX_DOC) {
        *r = errno == ENOENT ? -ENOENT : -EPROTO;
        snprintf(msg, msglen, "%s %s: %s", what, digest,
                 *r == -ENOENT ? "missing from the store" : "too large");
        return NULL;
    }
    if (!(doc = json_load_file(path, 0, &jerr)) || !json_is_object(doc)) {
        json_decref(doc);
        *r = -EPROTO;
        snprintf(msg, msglen, "%s %s: not a JSON object", what, digest);
        return NULL;
    }
    return doc;
}

static int put_doc(struct layer_store *s, json_t *doc, char digest[DIGEST_STRLEN], char **text)
{
    char *t = json_dumps(doc, JSON_COMPACT);
    if (!t)
        return -ENOMEM;
    int r = oci_put_blob(s, t, strlen(t), digest);
    if (r == 0 && text)
        *text = t;
    else
        free(t);
    return r;
}

int oci_derive(struct layer_store *s, const char *base_manifest, const char *layer_digest,
               int64_t layer_size, char manifest_out[DIGEST_STRLEN], char config_out[DIGEST_STRLEN],
               char **config_json, char *msg, size_t msglen)
{
    return oci_derive_ex(s, base_manifest, layer_digest, layer_size, NULL, "warren snapshot",
                         manifest_out, config_out, config_json, msg, msglen);
}

/* The config's "config" object with `edits` applied (see oci.h). */
static int apply_edits(json_t *config, const char *edits_json, char *msg, size_t msglen)
{
    json_error_t jerr;
    json_t *edits = json_loads(edits_json, 0, &jerr), *v;
    const char *key;
    if (!json_is_object(edits)) {
        json_decref(edits);
        snprintf(msg, msglen, "config edits: not a JSON object");
        return -EINVAL;
    }
    json_t *c = json_object_get(config, "config");
    if (!json_is_object(c)) {
        c = json_object();
        json_object_set_new(config, "config", c);
    }
    json_object_foreach(edits, key, v)
    {
        if (!strcmp(key, "Labels") && json_is_object(v)) {
            json_t *labels = json_object_get(c, "Labels"), *lv;
            const char *lk;
            if (!json_is_object(labels)) {
                labels = json_object();
                json_object_set_new(c, "Labels", labels);
            }
            json_object_foreach(v, lk, lv)
            {
                if (json_is_null(lv))
                    json_object_del(labels, lk);
                else
                    json_object_set(labels, lk, lv);
            }
        } else if (json_is_null(v)) {
            json_object_del(c, key);
        } else {
            json_object_set(c, key, v);
        }
    }
    json_decref(edits);
    return 0;
}

int oci_derive_ex(struct layer_store *s, const char *base_manifest, const char *layer_digest,
                  int64_t layer_size, const char *edits, const char *created_by,
                  char manifest_out[DIGEST_STRLEN], char config_out[DIGEST_STRLEN],
                  char **config_json, char *msg, size_t msglen)
{
    int r = 0;
    json_t *config = NULL, *manifest = NULL;
    if (base_manifest) {
        manifest = read_doc(s, base_manifest, "manifest", &r, msg, msglen);
        const char *config_digest =
            json_string_value(json_object_get(json_object_get(manifest, "config"), "digest"));
        if (manifest && !config_digest) {
            r = -EPROTO;
            snprintf(msg, msglen, "manifest %s names no config", base_manifest);
        }
        if (r == 0)
            config = read_doc(s, config_digest, "config", &r, msg, msglen);
    } else {
        /* FROM scratch: an image of nothing. */
        manifest = json_pack("{s:i, s:s, s:{s:s}, s:[]}", "schemaVersion", 2, "mediaType",
                             MT_MANIFEST, "config", "mediaType", MT_CONFIG, "layers");
        config = json_pack("{s:s, s:s, s:{}, s:{s:s, s:[]}, s:[]}", "architecture", "amd64", "os",
                           "linux", "config", "rootfs", "type", "layers", "diff_ids", "history");
        if (!manifest || !config) {
            r = -ENOMEM;
            snprintf(msg, msglen, "out of memory");
        }
    }
    json_t *diff_ids = json_object_get(json_object_get(config, "rootfs"), "diff_ids");
    json_t *layers = json_object_get(manifest, "layers");
    if (r == 0 && (!json_is_array(diff_ids) || !json_is_array(layers))) {
        r = -EPROTO;
        snprintf(msg, msglen, "image %s has no layer list", base_manifest);
    }
    if (r == 0 && edits)
        r = apply_edits(config, edits, msg, msglen);
    if (r < 0)
        goto out;
    if (layer_digest)
        json_array_append_new(diff_ids, json_string(layer_digest));
    json_t *history = json_object_get(config, "history");
    if (json_is_array(history) || !base_manifest) {
        json_t *h = json_pack("{s:s}", "created_by", created_by ? created_by : "warren");
        if (!layer_digest)
            json_object_set_new(h, "empty_layer", json_true());
        json_array_append_new(history, h);
    }
    if ((r = put_doc(s, config, config_out, config_json)) < 0) {
        snprintf(msg, msglen, "storing the config: %s", strerror(-r));
        goto out;
    }
    if (layer_digest)
        json_array_append_new(layers, json_pack("{s:s, s:s, s:I}", "mediaType", MT_LAYER, "digest",
                                                layer_digest, "size", (json_int_t)layer_size));
    /* Our manifest is OCI whatever the base's was: a Docker config is a valid OCI config. */
    json_object_set_new(manifest, "mediaType", json_string(MT_MANIFEST));
    json_object_set_new(json_object_get(manifest, "config"), "mediaType", json_string(MT_CONFIG));
    json_object_set_new(json_object_get(manifest, "config"), "digest", json_string(config_out));
    json_object_set_new(json_object_get(manifest, "config"), "size",
                        json_integer((json_int_t)strlen(*config_json)));
    if ((r = put_doc(s, manifest, manifest_out, NULL)) < 0) {
        snprintf(msg, msglen, "storing the manifest: %s", strerror(-r));
        free(*config_json);
        *config_json = NULL;
    }
out:
    json_decref(config);
    json_decref(manifest);
    return r;
}

int oci_empty_layer(struct layer_store *s, char digest[DIGEST_STRLEN], int64_t *size)
{
    static const char zeros[1024]; /* a tar of no entries: its end-of-archive blocks */
    *size = sizeof(zeros);
    return oci_put_blob(s, zeros, sizeof(zeros), digest);
}

/* ---- export --------------------------------------------------------------------------------- */

struct exporter {
    struct archive *a;
    int fd;
    char buf[1 << 16];
};

static la_ssize_t on_write(struct archive *a, void *ud, const void *p, size_t n)
{
    struct exporter *e = ud;
    if (util_write_all(e->fd, p, n) < 0) {
        archive_set_error(a, errno ? errno : EPIPE, "the reader went away");
        return -1;
    }
    return (la_ssize_t)n;
}

static int add_header(struct exporter *e, const char *name, int64_t size, mode_t type)
{
    struct archive_entry *ent = archive_entry_new();
    if (!ent)
        return -ENOMEM;
    archive_entry_set_pathname(ent, name);
    archive_entry_set_filetype(ent, type);
    archive_entry_set_perm(ent, type == AE_IFDIR ? 0755 : 0644);
    archive_entry_set_size(ent, size);
    int ok = archive_write_header(e->a, ent) == ARCHIVE_OK;
    archive_entry_free(ent);
    return ok ? 0 : -EPIPE;
}

static int add_text(struct exporter *e, const char *name, const char *text)
{
    size_t len = strlen(text);
    int r = add_header(e, name, (int64_t)len, AE_IFREG);
    if (r == 0 && archive_write_data(e->a, text, len) != (la_ssize_t)len)
        r = -EPIPE;
    return r;
}

static int add_blob(struct exporter *e, struct layer_store *s, const char *digest, char *msg,
                    size_t msglen)
{
    char path[4200], name[100];
    struct stat st;
    int fd = -1, r = 0;
    if (layer_store_blob_path(s, digest, path, sizeof(path)) < 0 ||
        (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st) < 0) {
        r = fd < 0 && errno == ENOENT ? -ENOENT : -EIO;
        snprintf(msg, msglen, "blob %s: %s", digest,
                 r == -ENOENT ? "missing from the store" : strerror(errno));
        goto out;
    }
    snprintf(name, sizeof(name), "blobs/sha256/%s", digest + 7);
    if ((r = add_header(e, name, st.st_size, AE_IFREG)) < 0)
        goto out;
    for (;;) {
        ssize_t n = read(fd, e->buf, sizeof(e->buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = n < 0 ? -errno : 0;
            break;
        }
        if (archive_write_data(e->a, e->buf, (size_t)n) != n) {
            r = -EPIPE;
            break;
        }
    }
out:
    if (fd >= 0)
        close(fd);
    return r;
}

int oci_export(struct layer_store *s, const char *manifest_digest, const char *ref_name, int fd,
               char *msg, size_t msglen)
{
    int r = 0;
    json_t *manifest = read_doc(s, manifest_digest, "manifest", &r, msg, msglen), *index = NULL;
    struct exporter *e = calloc(1, sizeof(*e));
    char path[4200], *index_text = NULL;
    struct stat st;
    if (!manifest || !e) {
        r = r ? r : -ENOMEM;
        goto out;
    }
    const char *mt = json_string_value(json_object_get(manifest, "mediaType"));
    const char *config =
        json_string_value(json_object_get(json_object_get(manifest, "config"), "digest"));
    json_t *layers = json_object_get(manifest, "layers");
    if (!config || !json_is_array(layers) ||
        layer_store_blob_path(s, manifest_digest, path, sizeof(path)) < 0 || stat(path, &st) < 0) {
        r = -EPROTO;
        snprintf(msg, msglen, "manifest %s: no config or layers", manifest_digest);
        goto out;
    }
    index = json_pack("{s:i, s:[{s:s, s:s, s:I, s:{s:s}}]}", "schemaVersion", 2, "manifests",
                      "mediaType", mt ? mt : MT_MANIFEST, "digest", manifest_digest, "size",
                      (json_int_t)st.st_size, "annotations", "org.opencontainers.image.ref.name",
                      ref_name);
    if (!index || !(index_text = json_dumps(index, JSON_COMPACT))) {
        r = -ENOMEM;
        goto out;
    }
    e->fd = fd;
    if (!(e->a = archive_write_new()) ||
        archive_write_set_format_pax_restricted(e->a) != ARCHIVE_OK ||
        archive_write_open(e->a, e, NULL, on_write, NULL) != ARCHIVE_OK) {
        r = -ENOMEM;
        goto out;
    }
    if ((r = add_text(e, "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}")) < 0 ||
        (r = add_text(e, "index.json", index_text)) < 0 ||
        (r = add_header(e, "blobs", 0, AE_IFDIR)) < 0 ||
        (r = add_header(e, "blobs/sha256", 0, AE_IFDIR)) < 0 ||
        (r = add_blob(e, s, manifest_digest, msg, msglen)) < 0 ||
        (r = add_blob(e, s, config, msg, msglen)) < 0)
        goto out;
    for (size_t i = 0; i < json_array_size(layers); i++) {
        const char *d = json_string_value(json_object_get(json_array_get(layers, i), "digest"));
        if (!d) {
            r = -EPROTO;
            snprintf(msg, msglen, "manifest %s: layer %zu has no digest", manifest_digest, i);
            goto out;
        }
        if ((r = add_blob(e, s, d, msg, msglen)) < 0)
            goto out;
    }
    if (archive_write_close(e->a) != ARCHIVE_OK)
        r = -EPIPE;
out:
    if (r == -EPIPE && !*msg)
        snprintf(msg, msglen, "the reader went away");
    if (e && e->a)
        archive_write_free(e->a);
    free(e);
    free(index_text);
    json_decref(index);
    json_decref(manifest);
    return r;
}
