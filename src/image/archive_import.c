/*
 * archive_import — see archive_import.h.
 *
 * Which shape an archive has is decided at its first member (other than "./"): image archives
 * only hold manifest.json, index.json, oci-layout, repositories, blobs/... and docker's
 * <64 hex>/ or <64 hex>.json. Until then every byte read is also copied ("teed") into the spool:
 * a root filesystem tar keeps being copied as it is (it becomes the layer blob, compressed as
 * given) without being parsed here; an image archive stops the copy and spools its members.
 */
#include "image/archive_import.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <jansson.h>

#include "core/util.h"
#include "image/digest.h"

#define JSON_MAX (4 << 20)
#define MAX_MEMBERS 100000
#define MAX_LINK_HOPS 8

#if defined(__x86_64__)
#define HOST_ARCH "amd64"
#elif defined(__aarch64__)
#define HOST_ARCH "arm64"
#else
#define HOST_ARCH "unknown"
#endif

#define MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_CONFIG "application/vnd.oci.image.config.v1+json"
#define MT_LAYER "application/vnd.oci.image.layer.v1.tar"
#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* A member of an image archive: a spooled file (hex set) or a link to another member. */
struct member {
    char *name;
    char *link; /* normalised target name, or NULL */
    char hex[65];
    int64_t size;
};

struct importer {
    struct layer_store *s;
    int fd;
    int spool; /* the spool directory */
    char spool_name[64];
    int tee; /* the raw copy while undecided / for a rootfs */
    struct digest_ctx raw_sha;
    int64_t raw_bytes;
    unsigned char magic[4];
    int err; /* an error of the read callback (a failed tee write) */
    /* Two buffers: libarchive keeps pointing into what the read callback returned while a
     * member's data is copied out, so the copy must not land there. */
    char in[64 * 1024];  /* the read callback's */
    char buf[64 * 1024]; /* members' data */
    struct member *m;
    size_t nm, capm;
    unsigned counter;
    char *manifest_json, *index_json;
    int oci_layout;
    char *msg;
    size_t msglen;
};

static int fail(struct importer *im, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct importer *im, int err, const char *fmt, ...)
{
    int n = snprintf(im->msg, im->msglen, "image import: ");
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < im->msglen)
        vsnprintf(im->msg + n, im->msglen - (size_t)n, fmt, ap);
    va_end(ap);
    err = err > 0 ? -err : err;
    return err == -EDQUOT ? -ENOSPC : err;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static la_ssize_t in_read(struct archive *a, void *ud, const void **out)
{
    struct importer *im = ud;
    ssize_t n;
    do
        n = read(im->fd, im->in, sizeof(im->in));
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        archive_set_error(a, errno, "reading the archive: %s", strerror(errno));
        return -1;
    }
    if (im->tee >= 0 && n > 0) {
        int r = write_all(im->tee, im->in, (size_t)n);
        if (r < 0) {
            im->err = r;
            archive_set_error(a, -r, "spooling: %s", strerror(-r));
            return -1;
        }
        for (ssize_t i = 0; i < n && im->raw_bytes + i < 4; i++)
            im->magic[im->raw_bytes + i] = (unsigned char)im->in[i];
        digest_update(&im->raw_sha, im->in, (size_t)n);
        im->raw_bytes += n;
    }
    *out = im->in;
    return n;
}

/* Normalises a member name: "." and empty components dropped, ".." pops one. */
static char *norm_name(const char *dir, const char *name)
{
    size_t cap = (dir ? strlen(dir) : 0) + strlen(name) + 2, o = 0;
    char *out = malloc(cap), *joined = malloc(cap);
    if (!out || !joined) {
        free(out);
        free(joined);
        return NULL;
    }
    snprintf(joined, cap, "%s%s%s", dir && *dir ? dir : "", dir && *dir ? "/" : "", name);
    for (char *p = joined; *p;) {
        char *end = strchrnul(p, '/');
        size_t len = (size_t)(end - p);
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            while (o && out[o - 1] != '/')
                o--;
            if (o)
                o--;
        } else if (len && !(len == 1 && *p == '.')) {
            if (o)
                out[o++] = '/';
            memcpy(out + o, p, len);
            o += len;
        }
        p = *end ? end + 1 : end;
    }
    out[o] = '\0';
    free(joined);
    return out;
}

static int is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int looks_like_image(const char *name)
{
    static const char *const top[] = {"manifest.json", "index.json", "oci-layout", "repositories",
                                      "blobs"};
    for (size_t i = 0; i < sizeof(top) / sizeof(top[0]); i++)
        if (!strcmp(name, top[i]))
            return 1;
    if (!strncmp(name, "blobs/", 6))
        return 1;
    return strlen(name) >= 64 && is_hex(name, 64) &&
           (name[64] == '\0' || name[64] == '/' || !strcmp(name + 64, ".json"));
}

static struct member *add_member(struct importer *im, char *name)
{
    if (im->nm == im->capm) {
        size_t cap = im->capm ? 2 * im->capm : 32;
        struct member *n = realloc(im->m, cap * sizeof(*n));
        if (!n)
            return NULL;
        im->m = n;
        im->capm = cap;
    }
    struct member *m = &im->m[im->nm++];
    memset(m, 0, sizeof(*m));
    m->name = name;
    return m;
}

/* The spooled file behind a member name, links followed. */
static struct member *find_member(struct importer *im, const char *name)
{
    for (int hop = 0; hop < MAX_LINK_HOPS; hop++) {
        struct member *m = NULL;
        for (size_t i = im->nm; i-- > 0;)
            if (!strcmp(im->m[i].name, name)) {
                m = &im->m[i];
                break;
            }
        if (!m || !m->link)
            return m;
        name = m->link;
    }
    return NULL;
}

static int read_small(struct importer *im, struct archive *a, const char *name, char **out)
{
    char *buf = malloc(JSON_MAX + 1);
    size_t len = 0;
    if (!buf)
        return fail(im, ENOMEM, "out of memory");
    for (;;) {
        la_ssize_t n = archive_read_data(a, buf + len, JSON_MAX + 1 - len);
        if (n < 0) {
            free(buf);
            return fail(im, EBADMSG, "reading %s: %s", name, archive_error_string(a));
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > JSON_MAX) {
            free(buf);
            return fail(im, EINVAL, "%s is larger than 4 MiB", name);
        }
    }
    buf[len] = '\0';
    free(*out);
    *out = buf;
    return 0;
}

/* Writes the member's data into the spool as <hex> (hashed on the way). */
static int spool_member(struct importer *im, struct archive *a, struct member *m)
{
    char tmp[32], digest[DIGEST_STRLEN];
    struct digest_ctx sha;
    int r = digest_init(&sha);
    if (r < 0)
        return fail(im, r, "out of memory");
    snprintf(tmp, sizeof(tmp), "part-%u", im->counter++);
    int fd = openat(im->spool, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        digest_free(&sha);
        return fail(im, errno, "spooling %s: %s", m->name, strerror(errno));
    }
    for (;;) {
        la_ssize_t n = archive_read_data(a, im->buf, sizeof(im->buf));
        if (n == 0)
            break;
        if (n < 0) {
            r = im->err ? fail(im, im->err, "spooling %s: %s", m->name, strerror(-im->err))
                        : fail(im, EBADMSG, "reading %s: %s", m->name, archive_error_string(a));
            goto out;
        }
        if ((r = write_all(fd, im->buf, (size_t)n)) < 0) {
            r = fail(im, r, "spooling %s: %s", m->name, strerror(-r));
            goto out;
        }
        digest_update(&sha, im->buf, (size_t)n);
        m->size += n;
    }
    digest_final(&sha, digest);
    memcpy(m->hex, digest + 7, 65);
    /* A blob named by its digest must have that content. */
    if (!strncmp(m->name, "blobs/sha256/", 13) && strcmp(m->name + 13, m->hex)) {
        r = fail(im, EBADMSG, "%s has digest sha256:%s", m->name, m->hex);
        goto out;
    }
    if (renameat(im->spool, tmp, im->spool, m->hex) < 0)
        r = fail(im, errno, "spooling %s: %s", m->name, strerror(errno));
out:
    digest_free(&sha);
    close(fd);
    unlinkat(im->spool, tmp, 0);
    return r;
}

static int image_member(struct importer *im, struct archive *a, struct archive_entry *e, char *name)
{
    mode_t type = archive_entry_filetype(e);
    const char *hl = archive_entry_hardlink(e), *sl = archive_entry_symlink(e);
    if (im->nm >= MAX_MEMBERS) {
        free(name);
        return fail(im, E2BIG, "more than %d members", MAX_MEMBERS);
    }
    if (!strcmp(name, "manifest.json") || !strcmp(name, "index.json")) {
        int r = read_small(im, a, name, name[0] == 'm' ? &im->manifest_json : &im->index_json);
        free(name);
        return r;
    }
    if (!strcmp(name, "oci-layout")) {
        im->oci_layout = 1;
        free(name);
        return 0;
    }
    if (!hl && type != AE_IFREG && type != AE_IFLNK) {
        free(name);
        return 0;
    }
    struct member *m = add_member(im, name);
    if (!m) {
        free(name);
        return fail(im, ENOMEM, "out of memory");
    }
    if (hl || type == AE_IFLNK) {
        char *dir = NULL;
        if (!hl) {
            dir = strdup(name);
            char *slash = dir ? strrchr(dir, '/') : NULL;
            if (slash)
                *slash = '\0';
            else if (dir)
                dir[0] = '\0';
        }
        m->link = (hl || dir) ? norm_name(hl ? NULL : dir, hl ? hl : sl) : NULL;
        free(dir);
        return m->link ? 0 : fail(im, ENOMEM, "out of memory");
    }
    return spool_member(im, a, m);
}

/* Reads the whole input: spools an image archive's members, or leaves a rootfs in the tee.
 * *is_rootfs tells which. */
static int read_input(struct importer *im, int *is_rootfs)
{
    struct archive *a = archive_read_new();
    struct archive_entry *e;
    int r = 0, decided = 0;
    *is_rootfs = 0;
    if (!a)
        return fail(im, ENOMEM, "out of memory");
    archive_read_support_filter_gzip(a);
    archive_read_support_filter_zstd(a);
    archive_read_support_format_tar(a);
    if (archive_read_open(a, im, NULL, in_read, NULL) != ARCHIVE_OK) {
        r = im->err
                ? fail(im, im->err, "spooling: %s", strerror(-im->err))
                : fail(im, EINVAL, "not a tar (plain, gzip or zstd): %s", archive_error_string(a));
        goto out;
    }
    for (;;) {
        int ar = archive_read_next_header(a, &e);
        if (ar == ARCHIVE_EOF)
            break;
        if (ar < ARCHIVE_WARN) {
            r = im->err ? fail(im, im->err, "spooling: %s", strerror(-im->err))
                        : fail(im, EBADMSG, "corrupt archive: %s", archive_error_string(a));
            goto out;
        }
        const char *raw = archive_entry_pathname(e);
        char *name = norm_name(NULL, raw ? raw : "");
        if (!name) {
            r = fail(im, ENOMEM, "out of memory");
            goto out;
        }
        if (!*name) {
            free(name);
            continue;
        }
        if (!decided) {
            decided = 1;
            if (!looks_like_image(name)) {
                free(name);
                *is_rootfs = 1;
                break;
            }
            close(im->tee);
            im->tee = -1;
            unlinkat(im->spool, "rootfs", 0);
        }
        if ((r = image_member(im, a, e, name)) < 0)
            goto out;
    }
    if (!decided)
        *is_rootfs = 1; /* a tar with nothing but "./": an empty root filesystem */
    if (*is_rootfs) {
        /* The rest goes straight from the input to the tee (libarchive's read-ahead is in it
         * already: every byte read went through in_read). */
        const void *buf;
        for (;;) {
            la_ssize_t n = in_read(a, im, &buf);
            if (n < 0) {
                r = im->err ? fail(im, im->err, "spooling: %s", strerror(-im->err))
                            : fail(im, EIO, "%s", archive_error_string(a));
                goto out;
            }
            if (n == 0)
                break;
        }
    }
out:
    archive_read_free(a);
    return r;
}

/* The spooled blob <hex> as text (NUL-terminated, at most 4 MiB), malloc'd into *out. */
static int blob_text(struct importer *im, const char *hex, const char *what, char **out)
{
    int fd = openat(im->spool, hex, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return fail(im, errno == ENOENT ? EINVAL : errno, "%s sha256:%s is not in the archive",
                    what, hex);
    char *buf = malloc(JSON_MAX + 1);
    size_t len = 0;
    ssize_t n = 0;
    while (buf && len <= JSON_MAX && (n = read(fd, buf + len, JSON_MAX + 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    if (!buf || n < 0 || len > JSON_MAX) {
        free(buf);
        return fail(im,
                    !buf    ? ENOMEM
                    : n < 0 ? errno
                            : EINVAL,
                    "%s sha256:%s: %s", what, hex,
                    !buf    ? "out of memory"
                    : n < 0 ? strerror(errno)
                            : "larger than 4 MiB");
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}

static json_t *blob_json(struct importer *im, const char *hex, const char *what, int *r)
{
    char *text = NULL;
    json_error_t jerr;
    if ((*r = blob_text(im, hex, what, &text)) < 0)
        return NULL;
    json_t *j = json_loads(text, 0, &jerr);
    free(text);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        *r = fail(im, EINVAL, "%s sha256:%s is not a JSON object", what, hex);
    }
    return j;
}

/* Writes text into the spool as a blob; its digest into digest (80 bytes). */
static int spool_text(struct importer *im, const char *text, char *digest)
{
    struct digest_ctx sha;
    size_t len = strlen(text);
    int r = digest_init(&sha);
    if (r < 0)
        return fail(im, r, "out of memory");
    digest_update(&sha, text, len);
    digest_final(&sha, digest);
    int fd =
        openat(im->spool, digest + 7, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail(im, errno, "writing a blob: %s", strerror(errno));
    r = write_all(fd, text, len);
    if (close(fd) < 0 && !r)
        r = -errno;
    return r < 0 ? fail(im, r, "writing a blob: %s", strerror(-r)) : 0;
}

static int64_t spooled_size(struct importer *im, const char *hex)
{
    struct stat sb;
    return fstatat(im->spool, hex, &sb, AT_SYMLINK_NOFOLLOW) == 0 ? sb.st_size : -1;
}

/* The layer media type of a spooled blob, from its first bytes. */
static const char *sniff_layer_type(struct importer *im, const char *hex)
{
    unsigned char b[4] = {0};
    int fd = openat(im->spool, hex, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, b, sizeof(b)) < 0)
            b[0] = 0;
        close(fd);
    }
    if (b[0] == 0x1f && b[1] == 0x8b)
        return MT_LAYER "+gzip";
    if (b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd)
        return MT_LAYER "+zstd";
    return MT_LAYER;
}

static int layer_type_ok(const char *mt)
{
    static const char *const ok[] = {
        MT_LAYER,
        MT_LAYER "+gzip",
        MT_LAYER "+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (!strcmp(mt, ok[i]))
            return 1;
    return 0;
}

/* Sets out->config_* from the spooled config <hex> and returns its rootfs.diff_ids (borrowed
 * from *config, which the caller releases). */
static json_t *load_config(struct importer *im, const char *hex, struct imported_image *out,
                           json_t **config, int *r)
{
    snprintf(out->config_digest, sizeof(out->config_digest), "sha256:%s", hex);
    if ((*r = blob_text(im, hex, "config", &out->config_json)) < 0)
        return NULL;
    json_error_t jerr;
    *config = json_loads(out->config_json, 0, &jerr);
    json_t *ids = json_object_get(json_object_get(*config, "rootfs"), "diff_ids");
    if (!json_is_array(ids)) {
        *r = fail(im, EINVAL, "the image config has no rootfs.diff_ids");
        return NULL;
    }
    if (json_array_size(ids) > IMAGE_MAX_LAYERS) {
        *r = fail(im, EINVAL, "more than %d layers", IMAGE_MAX_LAYERS);
        return NULL;
    }
    for (size_t i = 0; i < json_array_size(ids); i++) {
        const char *d = json_string_value(json_array_get(ids, i));
        if (!d || !digest_valid(d)) {
            *r = fail(im, EINVAL, "the image config's diff_id %zu is not a sha256 digest", i);
            return NULL;
        }
    }
    *r = 0;
    return ids;
}

static const json_t *pick_platform(json_t *index)
{
    json_t *list = json_object_get(index, "manifests"), *d;
    size_t i;
    json_array_foreach(list, i, d)
    {
        json_t *p = json_object_get(d, "platform");
        const char *os = json_string_value(json_object_get(p, "os"));
        const char *arch = json_string_value(json_object_get(p, "architecture"));
        if (os && arch && !strcmp(os, "linux") && !strcmp(arch, HOST_ARCH))
            return d;
    }
    return json_array_get(list, 0);
}

static int resolve_oci(struct importer *im, struct imported_image *out)
{
    json_error_t jerr;
    json_t *index = json_loads(im->index_json, 0, &jerr), *nested = NULL, *manifest = NULL,
           *config = NULL;
    const json_t *desc = pick_platform(index);
    int r = 0;
    for (int depth = 0;; depth++) {
        const char *mt = json_string_value(json_object_get(desc, "mediaType"));
        const char *digest = json_string_value(json_object_get(desc, "digest"));
        if (!desc || !digest || !digest_valid(digest)) {
            r = fail(im, EINVAL, "index.json names no image manifest");
            goto out;
        }
        if (mt && (strstr(mt, "image.index") || strstr(mt, "manifest.list"))) {
            if (depth) {
                r = fail(im, EINVAL, "index.json: indexes nested more than once");
                goto out;
            }
            json_decref(nested);
            if (!(nested = blob_json(im, digest + 7, "index", &r)))
                goto out;
            desc = pick_platform(nested);
            continue;
        }
        snprintf(out->manifest_digest, sizeof(out->manifest_digest), "%s", digest);
        break;
    }
    if (!(manifest = blob_json(im, out->manifest_digest + 7, "manifest", &r)))
        goto out;
    const char *cd =
        json_string_value(json_object_get(json_object_get(manifest, "config"), "digest"));
    json_t *layers = json_object_get(manifest, "layers");
    if (!cd || !digest_valid(cd) || !json_is_array(layers)) {
        r = fail(im, EINVAL, "the manifest has no config digest or layers");
        goto out;
    }
    json_t *ids = load_config(im, cd + 7, out, &config, &r);
    if (!ids)
        goto out;
    if (json_array_size(layers) != json_array_size(ids)) {
        r = fail(im, EINVAL, "the manifest has %zu layers, the config %zu diff_ids",
                 json_array_size(layers), json_array_size(ids));
        goto out;
    }
    for (size_t i = 0; i < json_array_size(layers); i++) {
        json_t *l = json_array_get(layers, i);
        const char *d = json_string_value(json_object_get(l, "digest"));
        const char *mt = json_string_value(json_object_get(l, "mediaType"));
        struct imported_layer *il = &out->layers[i];
        if (!d || !digest_valid(d) || !mt || !layer_type_ok(mt)) {
            r = fail(im, EINVAL, "layer %zu: no digest or an unsupported media type '%s'", i,
                     mt ? mt : "");
            goto out;
        }
        if ((il->size = spooled_size(im, d + 7)) < 0) {
            r = fail(im, EINVAL, "layer %s is not in the archive", d);
            goto out;
        }
        snprintf(il->digest, sizeof(il->digest), "%s", d);
        snprintf(il->media_type, sizeof(il->media_type), "%s", mt);
        snprintf(il->diff_id, sizeof(il->diff_id), "%s", json_string_value(json_array_get(ids, i)));
        out->n_layers++;
    }
    out->kind = IMAGE_ARCHIVE_OCI;
out:
    json_decref(index);
    json_decref(nested);
    json_decref(manifest);
    json_decref(config);
    return r;
}

/* The OCI manifest of out (config and layers set), spooled as a blob. */
static int make_manifest(struct importer *im, struct imported_image *out)
{
    json_t *layers = json_array();
    for (size_t i = 0; i < out->n_layers; i++)
        json_array_append_new(
            layers, json_pack("{s:s, s:s, s:I}", "mediaType", out->layers[i].media_type, "digest",
                              out->layers[i].digest, "size", (json_int_t)out->layers[i].size));
    json_t *m =
        json_pack("{s:i, s:s, s:{s:s, s:s, s:I}, s:o}", "schemaVersion", 2, "mediaType",
                  MT_MANIFEST, "config", "mediaType", MT_CONFIG, "digest", out->config_digest,
                  "size", (json_int_t)strlen(out->config_json), "layers", layers);
    char *text = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    if (!text)
        return fail(im, ENOMEM, "out of memory");
    int r = spool_text(im, text, out->manifest_digest);
    free(text);
    return r;
}

static int resolve_docker(struct importer *im, struct imported_image *out)
{
    json_error_t jerr;
    json_t *list = json_loads(im->manifest_json, 0, &jerr), *config = NULL;
    json_t *entry = json_array_get(list, 0);
    const char *cpath = json_string_value(json_object_get(entry, "Config"));
    json_t *lpaths = json_object_get(entry, "Layers");
    struct member *cm = NULL;
    char *n = NULL;
    int r = 0;
    if (!cpath || !json_is_array(lpaths)) {
        r = fail(im, EINVAL, "manifest.json has no Config and Layers");
        goto out;
    }
    if (!(n = norm_name(NULL, cpath)) || !(cm = find_member(im, n)) || !cm->hex[0]) {
        r = fail(im, EINVAL, "the config %s is not in the archive", cpath);
        goto out;
    }
    json_t *ids = load_config(im, cm->hex, out, &config, &r);
    if (!ids)
        goto out;
    if (json_array_size(lpaths) != json_array_size(ids)) {
        r = fail(im, EINVAL, "manifest.json has %zu layers, the config %zu diff_ids",
                 json_array_size(lpaths), json_array_size(ids));
        goto out;
    }
    for (size_t i = 0; i < json_array_size(lpaths); i++) {
        const char *lp = json_string_value(json_array_get(lpaths, i));
        struct member *lm;
        free(n);
        if (!lp || !(n = norm_name(NULL, lp)) || !(lm = find_member(im, n)) || !lm->hex[0]) {
            n = NULL;
            r = fail(im, EINVAL, "layer %s is not in the archive", lp ? lp : "(none)");
            goto out;
        }
        struct imported_layer *il = &out->layers[i];
        snprintf(il->digest, sizeof(il->digest), "sha256:%s", lm->hex);
        snprintf(il->diff_id, sizeof(il->diff_id), "%s", json_string_value(json_array_get(ids, i)));
        snprintf(il->media_type, sizeof(il->media_type), "%s", sniff_layer_type(im, lm->hex));
        il->size = lm->size;
        out->n_layers++;
    }
    out->kind = IMAGE_ARCHIVE_DOCKER;
    r = make_manifest(im, out);
out:
    free(n);
    json_decref(list);
    json_decref(config);
    return r;
}

static int import_rootfs(struct importer *im, const char *spool_path, struct imported_image *out)
{
    char digest[DIGEST_STRLEN], blob[4300], diff_id[DIGEST_STRLEN];
    struct imported_layer *il = &out->layers[0];
    const unsigned char *b = im->magic;
    int r;
    close(im->tee);
    im->tee = -1;
    digest_final(&im->raw_sha, digest);
    if (renameat(im->spool, "rootfs", im->spool, digest + 7) < 0)
        return fail(im, errno, "spooling: %s", strerror(errno));
    snprintf(blob, sizeof(blob), "%s/%s", spool_path, digest + 7);
    if ((r = layer_store_unpack_new(im->s, blob, diff_id, im->msg, im->msglen)) < 0)
        return r;
    snprintf(il->digest, sizeof(il->digest), "%s", digest);
    snprintf(il->diff_id, sizeof(il->diff_id), "%s", diff_id);
    snprintf(il->media_type, sizeof(il->media_type), "%s",
             b[0] == 0x1f && b[1] == 0x8b                                   ? MT_LAYER "+gzip"
             : b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd ? MT_LAYER "+zstd"
                                                                            : MT_LAYER);
    il->size = im->raw_bytes;
    out->n_layers = 1;
    json_t *c =
        json_pack("{s:s, s:s, s:{s:[s]}, s:{s:s, s:[s]}}", "architecture", HOST_ARCH, "os", "linux",
                  "config", "Env", DEFAULT_PATH, "rootfs", "type", "layers", "diff_ids", diff_id);
    out->config_json = c ? json_dumps(c, JSON_COMPACT) : NULL;
    json_decref(c);
    if (!out->config_json)
        return fail(im, ENOMEM, "out of memory");
    if ((r = spool_text(im, out->config_json, out->config_digest)) < 0)
        return r;
    out->kind = IMAGE_ARCHIVE_ROOTFS;
    return make_manifest(im, out);
}

/* Moves the blob <hex> from the spool into blobs/sha256/ (already there: the same content). */
static int publish(struct importer *im, const char *spool_path, const char *digest)
{
    char from[4300], to[4300];
    int r = layer_store_blob_path(im->s, digest, to, sizeof(to));
    if (r < 0)
        return fail(im, r, "blob path for %s", digest);
    snprintf(from, sizeof(from), "%s/%s", spool_path, digest + 7);
    if (rename(from, to) < 0 && !(errno == ENOENT && access(to, F_OK) == 0))
        return fail(im, errno, "storing blob %s: %s", digest, strerror(errno));
    return 0;
}

void imported_image_free(struct imported_image *img)
{
    if (!img)
        return;
    free(img->config_json);
    img->config_json = NULL;
}

int image_import(int fd, struct layer_store *s, struct imported_image *out, char *msg,
                 size_t msglen)
{
    struct importer *im = calloc(1, sizeof(*im));
    char spool_path[4200];
    int r, is_rootfs = 0;
    memset(out, 0, sizeof(*out));
    msg[0] = '\0';
    if (!im)
        return -ENOMEM;
    im->s = s;
    im->fd = fd;
    im->spool = im->tee = -1;
    im->msg = msg;
    im->msglen = msglen;
    if ((r = digest_init(&im->raw_sha)) < 0 ||
        (r = util_random_id(im->spool_name, sizeof(im->spool_name), ".tmp-import-")) < 0) {
        free(im);
        return r;
    }
    snprintf(spool_path, sizeof(spool_path), "%s/layers/%s", layer_store_dir(s), im->spool_name);
    if (mkdir(spool_path, 0700) < 0) {
        spool_path[0] = '\0';
        r = fail(im, errno, "creating the spool: %s", strerror(errno));
        goto out;
    }
    im->spool = open(spool_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (im->spool < 0 || (im->tee = openat(im->spool, "rootfs",
                                           O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) {
        r = fail(im, errno, "creating the spool: %s", strerror(errno));
        goto out;
    }
    if ((r = read_input(im, &is_rootfs)) < 0)
        goto out;
    if (is_rootfs)
        r = import_rootfs(im, spool_path, out);
    else if (im->index_json && im->oci_layout)
        r = resolve_oci(im, out);
    else if (im->manifest_json)
        r = resolve_docker(im, out);
    else
        r = fail(im, EINVAL, "an image archive without manifest.json or index.json + oci-layout");
    if (r < 0)
        goto out;
    for (size_t i = 0; i < out->n_layers; i++) {
        char blob[4300];
        out->total_size += out->layers[i].size;
        if (is_rootfs)
            continue;
        snprintf(blob, sizeof(blob), "%s/%s", spool_path, out->layers[i].digest + 7);
        if ((r = layer_store_unpack(s, blob, out->layers[i].diff_id, msg, msglen)) < 0)
            goto out;
    }
    for (size_t i = 0; i < out->n_layers; i++)
        if ((r = publish(im, spool_path, out->layers[i].digest)) < 0)
            goto out;
    if ((r = publish(im, spool_path, out->config_digest)) < 0 ||
        (r = publish(im, spool_path, out->manifest_digest)) < 0)
        goto out;
out:
    if (im->tee >= 0)
        close(im->tee);
    if (im->spool >= 0)
        close(im->spool);
    if (spool_path[0])
        util_remove_tree(spool_path);
    digest_free(&im->raw_sha);
    for (size_t i = 0; i < im->nm; i++) {
        free(im->m[i].name);
        free(im->m[i].link);
    }
    free(im->m);
    free(im->manifest_json);
    free(im->index_json);
    free(im);
    if (r < 0)
        imported_image_free(out);
    if (r == -EDQUOT)
        r = -ENOSPC;
    return r;
}
