/*
 * layers — see layers.h.
 */
#include "image/layers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "image/digest.h"
#include "image/unpack.h"

struct layer_store {
    char *dir;
    char *layers;
    char *blobs;
    int layers_fd;
    int blobs_fd;
};

static int is_hex64(const char *s)
{
    size_t i = 0;
    for (; s[i]; i++)
        if (i >= 64 || !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return i == 64;
}

/* Removes every .tmp-* entry of the directory open as dfd. */
static int remove_tmp(int dfd)
{
    int fd = dup(dfd);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    int r = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, ".tmp-", 5))
            continue;
        int e = util_remove_tree_at(dfd, de->d_name);
        if (e < 0 && !r)
            r = e;
    }
    closedir(d);
    return r;
}

int layer_store_open(const char *images_dir, struct layer_store **out)
{
    struct layer_store *s = calloc(1, sizeof(*s));
    int r;
    if (!s)
        return -ENOMEM;
    s->layers_fd = s->blobs_fd = -1;
    if (asprintf(&s->layers, "%s/layers", images_dir) < 0 ||
        asprintf(&s->blobs, "%s/blobs/sha256", images_dir) < 0 || !(s->dir = strdup(images_dir))) {
        s->layers = s->blobs = NULL;
        r = -ENOMEM;
        goto error;
    }
    if ((r = util_mkdir_p(s->layers, 0755)) < 0 || (r = util_mkdir_p(s->blobs, 0755)) < 0)
        goto error;
    s->layers_fd = open(s->layers, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    s->blobs_fd = open(s->blobs, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (s->layers_fd < 0 || s->blobs_fd < 0) {
        r = -errno;
        goto error;
    }
    if ((r = remove_tmp(s->layers_fd)) < 0)
        goto error;
    *out = s;
    return 0;
error:
    layer_store_close(s);
    return r;
}

void layer_store_close(struct layer_store *s)
{
    if (!s)
        return;
    if (s->layers_fd >= 0)
        close(s->layers_fd);
    if (s->blobs_fd >= 0)
        close(s->blobs_fd);
    free(s->dir);
    free(s->layers);
    free(s->blobs);
    free(s);
}

const char *layer_store_dir(const struct layer_store *s)
{
    return s->dir;
}

const char *layer_store_blobs_dir(const struct layer_store *s)
{
    return s->blobs;
}

int layer_store_path(const struct layer_store *s, const char *diff_id, char *out, size_t cap)
{
    if (!digest_valid(diff_id))
        return -EINVAL;
    int n = snprintf(out, cap, "%s/%s", s->layers, diff_id + 7);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

int layer_store_blob_path(const struct layer_store *s, const char *digest, char *out, size_t cap)
{
    if (!digest_valid(digest))
        return -EINVAL;
    int n = snprintf(out, cap, "%s/%s", s->blobs, digest + 7);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

int layer_store_has(const struct layer_store *s, const char *diff_id)
{
    struct stat sb;
    if (!digest_valid(diff_id))
        return -EINVAL;
    return fstatat(s->layers_fd, diff_id + 7, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(sb.st_mode);
}

static int write_size(int dfd, const char *name, uint64_t bytes)
{
    int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%" PRIu64 "\n", bytes);
    int r = write(fd, buf, (size_t)n) == n ? 0 : (errno ? -errno : -EIO);
    if (close(fd) < 0 && !r)
        r = -errno;
    return r;
}

/* Unpacks into a fresh .tmp-* directory and renames it into place. expect may be NULL. */
static int unpack_into_store(struct layer_store *s, const char *blob_path, const char *expect,
                             char *diff_id_out, char *msg, size_t msglen)
{
    char tmp[64], tmp_size[80], path[4200], diff_id[DIGEST_STRLEN];
    struct unpack_stats st;
    int fd = -1, r, made = 0;
    msg[0] = '\0';
    if ((r = util_random_id(tmp, sizeof(tmp), ".tmp-")) < 0)
        return r;
    snprintf(tmp_size, sizeof(tmp_size), "%s.size", tmp);
    snprintf(path, sizeof(path), "%s/%s", s->layers, tmp);
    if (mkdirat(s->layers_fd, tmp, 0755) < 0) {
        r = -errno;
        snprintf(msg, msglen, "layer store: mkdir %s: %s", path, strerror(errno));
        goto out;
    }
    made = 1;
    fd = open(blob_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        r = -errno;
        snprintf(msg, msglen, "layer store: opening blob %s: %s", blob_path, strerror(errno));
        goto out;
    }
    if ((r = layer_unpack(fd, path, expect, diff_id, &st, msg, msglen)) < 0)
        goto out;
    if ((r = write_size(s->layers_fd, tmp_size, st.disk_bytes)) < 0) {
        snprintf(msg, msglen, "layer store: writing the layer's size: %s", strerror(-r));
        goto out;
    }
    if (renameat(s->layers_fd, tmp, s->layers_fd, diff_id + 7) < 0) {
        /* Another unpack of the same layer won the race: its result is ours. */
        if (errno != EEXIST && errno != ENOTEMPTY) {
            r = -errno;
            snprintf(msg, msglen, "layer store: renaming into place: %s", strerror(errno));
        }
        goto out;
    }
    made = 0;
    /* Without its .size file the layer is still whole: layer_store_bytes then measures it. */
    if (renameat(s->layers_fd, tmp_size, s->layers_fd, strcat(strcpy(path, diff_id + 7), ".size")))
        unlinkat(s->layers_fd, tmp_size, 0);
    if (diff_id_out)
        memcpy(diff_id_out, diff_id, sizeof(diff_id));
out:
    if (fd >= 0)
        close(fd);
    if (made) {
        util_remove_tree_at(s->layers_fd, tmp);
        unlinkat(s->layers_fd, tmp_size, 0);
        if (r == 0 && diff_id_out)
            memcpy(diff_id_out, diff_id, sizeof(diff_id));
    }
    if (r == -EDQUOT)
        r = -ENOSPC;
    return r;
}

int layer_store_unpack(struct layer_store *s, const char *blob_path, const char *diff_id, char *msg,
                       size_t msglen)
{
    int r = layer_store_has(s, diff_id);
    if (r < 0) {
        snprintf(msg, msglen, "layer store: malformed diff_id '%s'", diff_id);
        return r;
    }
    if (r == 1)
        return 0;
    return unpack_into_store(s, blob_path, diff_id, NULL, msg, msglen);
}

int layer_store_unpack_new(struct layer_store *s, const char *blob_path, char *diff_id_out,
                           char *msg, size_t msglen)
{
    return unpack_into_store(s, blob_path, NULL, diff_id_out, msg, msglen);
}

/* Allocated bytes below the directory dfd (closed), symlinks never followed; a file with n links
 * counts 1/n of its blocks at each. */
static int64_t tree_bytes(int dfd)
{
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return -errno;
    }
    int64_t total = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        struct stat sb;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        int64_t b = (int64_t)sb.st_blocks * 512;
        total += S_ISDIR(sb.st_mode) || sb.st_nlink < 2 ? b : b / (int64_t)sb.st_nlink;
        if (S_ISDIR(sb.st_mode)) {
            int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            int64_t t = sub >= 0 ? tree_bytes(sub) : 0;
            total += t > 0 ? t : 0;
        }
    }
    closedir(d);
    return total;
}

/* The recorded size of layer <hex>, or its measured size when the record is missing. */
static int64_t layer_bytes(int layers_fd, const char *hex)
{
    char name[80], buf[32];
    snprintf(name, sizeof(name), "%s.size", hex);
    int fd = openat(layers_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n > 0) {
            buf[n] = '\0';
            return strtoll(buf, NULL, 10);
        }
    }
    int dfd = openat(layers_fd, hex, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return dfd < 0 ? 0 : tree_bytes(dfd);
}

static int64_t blob_bytes(int blobs_fd, const char *hex)
{
    struct stat sb;
    return fstatat(blobs_fd, hex, &sb, AT_SYMLINK_NOFOLLOW) == 0 ? (int64_t)sb.st_blocks * 512 : 0;
}

static DIR *open_again(int dfd)
{
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (fd >= 0 && !d)
        close(fd);
    return d;
}

int64_t layer_store_bytes(const struct layer_store *s)
{
    DIR *d = open_again(s->layers_fd);
    if (!d)
        return -errno;
    int64_t total = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (is_hex64(de->d_name))
            total += layer_bytes(s->layers_fd, de->d_name);
    closedir(d);
    if (!(d = open_again(s->blobs_fd)))
        return -errno;
    while ((de = readdir(d)))
        if (is_hex64(de->d_name))
            total += blob_bytes(s->blobs_fd, de->d_name);
    closedir(d);
    return total;
}

static int kept(const char *hex, const char *const *keep, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (keep[i] && digest_valid(keep[i]) && !strcmp(keep[i] + 7, hex))
            return 1;
    return 0;
}

int layer_store_gc(struct layer_store *s, const char *const *keep_diff_ids, size_t n,
                   const char *const *keep_blobs, size_t m, int64_t *freed)
{
    int64_t total = 0;
    int r = 0;
    struct dirent *de;
    DIR *d = open_again(s->layers_fd);
    if (!d)
        return -errno;
    while ((de = readdir(d))) {
        char hex[65], name[80], tmp[64];
        size_t len = strlen(de->d_name);
        /* "<hex>" or "<hex>.size": both go with the layer. */
        if (len == 69 && !strcmp(de->d_name + 64, ".size"))
            len = 64;
        if (len != 64)
            continue;
        memcpy(hex, de->d_name, 64);
        hex[64] = '\0';
        if (!is_hex64(hex) || kept(hex, keep_diff_ids, n))
            continue;
        if (!strcmp(de->d_name, hex)) {
            total += layer_bytes(s->layers_fd, hex);
            /* Out of sight in one step, then removed at leisure (or at the next open). */
            int e = util_random_id(tmp, sizeof(tmp), ".tmp-gc-");
            if (!e && renameat(s->layers_fd, hex, s->layers_fd, tmp) < 0)
                e = -errno;
            if (!e)
                e = util_remove_tree_at(s->layers_fd, tmp);
            if (e < 0 && !r)
                r = e;
        }
        snprintf(name, sizeof(name), "%s.size", hex);
        unlinkat(s->layers_fd, name, 0);
    }
    closedir(d);
    if (!(d = open_again(s->blobs_fd)))
        return r ? r : -errno;
    while ((de = readdir(d))) {
        if (!is_hex64(de->d_name) || kept(de->d_name, keep_blobs, m))
            continue;
        int64_t b = blob_bytes(s->blobs_fd, de->d_name);
        if (unlinkat(s->blobs_fd, de->d_name, 0) == 0)
            total += b;
        else if (errno != ENOENT && !r)
            r = -errno;
    }
    closedir(d);
    if (freed)
        *freed = total;
    return r;
}
