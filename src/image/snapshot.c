/*
 * snapshot — see snapshot.h.
 */
#include "image/snapshot.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define MAX_DEPTH 256
#define NOBODY 65534

struct link {
    dev_t dev;
    ino_t ino;
    char *path;
};

struct snap {
    struct archive *a;
    int out_fd;
    struct digest_ctx dg;
    int64_t size;
    uid_t base, count;
    struct link *links;
    size_t n_links, cap_links;
    char *msg;
    size_t msglen;
    char buf[1 << 16];
};

static la_ssize_t on_write(struct archive *a, void *ud, const void *p, size_t n)
{
    struct snap *s = ud;
    for (size_t off = 0; off < n;) {
        ssize_t w = write(s->out_fd, (const char *)p + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            archive_set_error(a, errno, "writing the layer: %s", strerror(errno));
            return -1;
        }
        off += (size_t)w;
    }
    digest_update(&s->dg, p, n);
    s->size += (int64_t)n;
    return (la_ssize_t)n;
}

static int fail(struct snap *s, int r, const char *path, const char *what)
{
    snprintf(s->msg, s->msglen, "snapshot: %s: %s: %s", path[0] ? path : "/", what, strerror(-r));
    return r;
}

static int64_t shift(const struct snap *s, id_t id)
{
    return id >= s->base && id - s->base < s->count ? (int64_t)(id - s->base) : NOBODY;
}

/* user.* and security.capability: what an image may carry. */
static void add_xattrs(struct archive_entry *e, int fd)
{
    char names[4096], value[4096];
    ssize_t n = flistxattr(fd, names, sizeof(names));
    for (ssize_t off = 0; n > 0 && off < n; off += (ssize_t)strlen(names + off) + 1) {
        const char *name = names + off;
        if (strncmp(name, "user.", 5) != 0 && strcmp(name, "security.capability") != 0)
            continue;
        ssize_t v = fgetxattr(fd, name, value, sizeof(value));
        if (v >= 0)
            archive_entry_xattr_add_entry(e, name, value, (size_t)v);
    }
}

static int write_header(struct snap *s, struct archive_entry *e, const char *path)
{
    if (archive_write_header(s->a, e) != ARCHIVE_OK) {
        int r = archive_errno(s->a) > 0 ? -archive_errno(s->a) : -EIO;
        return fail(s, r, path, archive_error_string(s->a) ?: "write");
    }
    return 0;
}

/* An empty regular file: the `.wh.` markers. */
static int write_marker(struct snap *s, const char *path)
{
    struct archive_entry *e = archive_entry_new();
    if (!e)
        return fail(s, -ENOMEM, path, "entry");
    archive_entry_set_pathname(e, path);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, 0);
    int r = write_header(s, e, path);
    archive_entry_free(e);
    return r;
}

static const char *seen_link(struct snap *s, const struct stat *st, const char *path)
{
    for (size_t i = 0; i < s->n_links; i++)
        if (s->links[i].dev == st->st_dev && s->links[i].ino == st->st_ino)
            return s->links[i].path;
    if (s->n_links == s->cap_links) {
        size_t cap = s->cap_links ? 2 * s->cap_links : 64;
        struct link *l = realloc(s->links, cap * sizeof(*l));
        if (!l)
            return NULL;
        s->links = l;
        s->cap_links = cap;
    }
    char *copy = strdup(path);
    if (copy)
        s->links[s->n_links++] = (struct link){st->st_dev, st->st_ino, copy};
    return NULL;
}

static int copy_data(struct snap *s, int fd, int64_t size, const char *path)
{
    int64_t left = size;
    while (left > 0) {
        size_t want = left < (int64_t)sizeof(s->buf) ? (size_t)left : sizeof(s->buf);
        ssize_t n = read(fd, s->buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return fail(s, -errno, path, "read");
        if (n == 0) { /* shrank while we read (it should be frozen): pad as the header says */
            memset(s->buf, 0, want);
            n = (ssize_t)want;
        }
        if (archive_write_data(s->a, s->buf, (size_t)n) < 0)
            return fail(s, archive_errno(s->a) > 0 ? -archive_errno(s->a) : -EIO, path, "write");
        left -= n;
    }
    return 0;
}

static int walk(struct snap *s, int dirfd, const char *prefix, int depth);

/* One entry `name` of directory `dirfd`; `path` is its name in the layer. */
static int one(struct snap *s, int dirfd, const char *name, const char *path, const char *prefix,
               int depth)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : fail(s, -errno, path, "stat");
    if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) {
        char wh[PATH_MAX + 16];
        snprintf(wh, sizeof(wh), "%s.wh.%s", prefix, name); /* path fits PATH_MAX: so does this */
        return write_marker(s, wh);
    }
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode) &&
        !S_ISFIFO(st.st_mode))
        return 0; /* sockets and device nodes have no place in a layer */

    struct archive_entry *e = archive_entry_new();
    int fd = -1, r = 0;
    if (!e)
        return fail(s, -ENOMEM, path, "entry");
    archive_entry_set_pathname(e, path);
    archive_entry_set_mode(e, st.st_mode);
    archive_entry_set_uid(e, shift(s, st.st_uid));
    archive_entry_set_gid(e, shift(s, st.st_gid));
    archive_entry_set_mtime(e, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    if (S_ISLNK(st.st_mode)) {
        char target[4096];
        ssize_t n = readlinkat(dirfd, name, target, sizeof(target) - 1);
        if (n < 0) {
            r = fail(s, -errno, path, "readlink");
            goto out;
        }
        target[n] = '\0';
        archive_entry_set_symlink(e, target);
        r = write_header(s, e, path);
        goto out;
    }
    if (S_ISFIFO(st.st_mode)) {
        r = write_header(s, e, path);
        goto out;
    }
    int flags =
        O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (S_ISDIR(st.st_mode) ? O_DIRECTORY : O_NONBLOCK);
    if ((fd = openat(dirfd, name, flags)) < 0) {
        r = fail(s, -errno, path, "open");
        goto out;
    }
    add_xattrs(e, fd);
    if (S_ISDIR(st.st_mode)) {
        char opq[2];
        if ((r = write_header(s, e, path)) < 0)
            goto out;
        char sub[PATH_MAX + 2], marker[PATH_MAX + 16];
        snprintf(sub, sizeof(sub), "%s/", path);
        if (fgetxattr(fd, "trusted.overlay.opaque", opq, sizeof(opq)) == 1 && opq[0] == 'y') {
            snprintf(marker, sizeof(marker), "%s.wh..wh..opq", sub);
            if ((r = write_marker(s, marker)) < 0)
                goto out;
        }
        r = walk(s, fd, sub, depth + 1);
        goto out;
    }
    const char *first = st.st_nlink > 1 ? seen_link(s, &st, path) : NULL;
    if (first) {
        archive_entry_set_hardlink(e, first);
        archive_entry_set_size(e, 0);
        r = write_header(s, e, path);
        goto out;
    }
    archive_entry_set_size(e, st.st_size);
    if ((r = write_header(s, e, path)) == 0)
        r = copy_data(s, fd, st.st_size, path);
out:
    if (fd >= 0)
        close(fd);
    archive_entry_free(e);
    return r;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The entries of `dirfd` in name order (a layer made twice of the same tree is the same). */
static int walk(struct snap *s, int dirfd, const char *prefix, int depth)
{
    if (depth > MAX_DEPTH)
        return fail(s, -ELOOP, prefix, "too deep");
    int dup_fd = dup(dirfd);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        if (dup_fd >= 0)
            close(dup_fd);
        return fail(s, -errno, prefix, "opendir");
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int r = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (n == cap) {
            char **v = realloc(names, (cap = cap ? 2 * cap : 32) * sizeof(*v));
            if (!v) {
                r = -ENOMEM;
                break;
            }
            names = v;
        }
        if (!(names[n] = strdup(de->d_name))) {
            r = -ENOMEM;
            break;
        }
        n++;
    }
    closedir(d);
    if (r == 0 && n > 1) /* an empty directory has no array: qsort(NULL) is undefined */
        qsort(names, n, sizeof(*names), by_name);
    for (size_t i = 0; r == 0 && i < n; i++) {
        char path[PATH_MAX];
        if (snprintf(path, sizeof(path), "%s%s", prefix, names[i]) >= (int)sizeof(path))
            r = fail(s, -ENAMETOOLONG, prefix, names[i]);
        else
            r = one(s, dirfd, names[i], path, prefix, depth);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return r == -ENOMEM ? fail(s, r, prefix, "listing") : r;
}

int snapshot_layer(const char *upper, uid_t base, uid_t count, int out_fd,
                   char digest[DIGEST_STRLEN], int64_t *size, char *msg, size_t msglen)
{
    struct snap *s = calloc(1, sizeof(*s));
    int r, up = -1;
    if (!s || digest_init(&s->dg) < 0) {
        free(s);
        snprintf(msg, msglen, "snapshot: out of memory");
        return -ENOMEM;
    }
    s->out_fd = out_fd;
    s->base = base;
    s->count = count;
    s->msg = msg;
    s->msglen = msglen;
    s->a = archive_write_new();
    if (!s->a || archive_write_set_format_pax_restricted(s->a) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(s->a, 1) != ARCHIVE_OK ||
        archive_write_open(s->a, s, NULL, on_write, NULL) != ARCHIVE_OK) {
        r = fail(s, -ENOMEM, "", "archive");
        goto out;
    }
    if ((up = open(upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        r = fail(s, -errno, upper, "open");
        goto out;
    }
    if ((r = walk(s, up, "", 0)) < 0)
        goto out;
    if (archive_write_close(s->a) != ARCHIVE_OK) {
        r = fail(s, archive_errno(s->a) > 0 ? -archive_errno(s->a) : -EIO, "", "finishing");
        goto out;
    }
    digest_final(&s->dg, digest);
    *size = s->size;
    r = 0;
out:
    if (up >= 0)
        close(up);
    archive_write_free(s->a);
    digest_free(&s->dg);
    for (size_t i = 0; i < s->n_links; i++)
        free(s->links[i].path);
    free(s->links);
    free(s);
    return r;
}
