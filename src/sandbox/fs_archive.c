/*
 * fs_archive — tar.gz archives of a sandbox's files (writing) and extraction into them, with the
 * rules of fs.c: every path resolved by fs_resolve() or below an fd obtained from it, no final
 * symlink followed by an *at() call, all file system work with the sandbox root's credentials.
 */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sandbox/fs.h"
#include "sandbox/fs_internal.h"

/* Sandbox uids: host_uid + [0, 65536) (session/sandbox.c); used for archive metadata only. */
#define SANDBOX_ID_RANGE 65536u
#define SANDBOX_OVERFLOW_ID 65534u

/* libarchive converts names between the archive's charset and the locale's. The daemon runs in
 * the C locale, where a non-ASCII name cannot be converted: names would be written with pax's
 * "hdrcharset=BINARY" (GNU tar warns about it). File names are bytes and nearly always UTF-8, so
 * the calling thread (only it: uselocale) uses C.UTF-8 while libarchive runs; names that are not
 * valid UTF-8 still fall back to BINARY. */
struct utf8_scope {
    locale_t loc, old;
};

static void utf8_enter(struct utf8_scope *s)
{
    s->loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
    s->old = s->loc ? uselocale(s->loc) : (locale_t)0;
}

static void utf8_leave(struct utf8_scope *s)
{
    if (s->loc) {
        uselocale(s->old);
        freelocale(s->loc);
    }
}

/* ---- archive: write ----------------------------------------------------------------------- */

struct fs_archive {
    struct archive *a;
    const struct fs_root *root;
    fs_write_fn cb;
    void *arg;
    size_t max_bytes, produced;
    size_t max_entries, entries;
    int err;    /* why the output callback failed */
    int failed; /* the first error; nothing more is written after it */
    int stop;   /* no more output: we failed and libarchive only wants to flush its trailer */
    char path[PATH_MAX];
    unsigned char buf[FS_IO_CHUNK];
};

static la_ssize_t archive_out(struct archive *a, void *arg, const void *data, size_t len)
{
    struct fs_archive *c = arg;
    if (c->stop)
        return -1;
    if (c->max_bytes && len > c->max_bytes - c->produced) {
        c->err = -EFBIG;
        c->stop = 1;
        archive_set_error(a, EFBIG, "archive larger than the limit");
        return -1;
    }
    ssize_t n = c->cb(data, len, c->arg);
    if (n < 0) {
        c->err = n >= -4095 ? (int)n : -EIO;
        c->stop = 1;
        archive_set_error(a, EIO, "output failed");
        return -1;
    }
    c->produced += len;
    return (la_ssize_t)len;
}

static int archive_fail(const struct fs_archive *c)
{
    return c->err ? c->err : -EIO;
}

/* Records the first failure: from now on only fs_archive_close remains, without a trailer. */
static int archive_failed(struct fs_archive *c, int r)
{
    if (!c->failed)
        c->failed = r;
    c->stop = 1;
    return c->failed;
}

/* Host ids as the sandbox sees them (the tar is read by sandbox users and tools). */
static la_int64_t sandbox_id(unsigned host, unsigned base)
{
    return host >= base && host - base < SANDBOX_ID_RANGE ? host - base : SANDBOX_OVERFLOW_ID;
}

/* One entry named c->path; `fd` is the open regular file for data (else -1). */
static int put_entry(struct fs_archive *c, const struct stat *sb, const char *link, int fd)
{
    if (c->max_entries && c->entries >= c->max_entries)
        return -E2BIG;
    struct archive_entry *e = archive_entry_new();
    if (!e)
        return -ENOMEM;
    archive_entry_set_pathname(e, c->path);
    archive_entry_set_filetype(e, S_ISDIR(sb->st_mode)   ? AE_IFDIR
                                  : S_ISLNK(sb->st_mode) ? AE_IFLNK
                                                         : AE_IFREG);
    archive_entry_set_perm(e, sb->st_mode & 07777);
    archive_entry_set_mtime(e, sb->st_mtim.tv_sec, sb->st_mtim.tv_nsec);
    archive_entry_set_uid(e, sandbox_id(sb->st_uid, c->root->uid));
    archive_entry_set_gid(e, sandbox_id(sb->st_gid, c->root->gid));
    archive_entry_set_size(e, S_ISREG(sb->st_mode) ? sb->st_size : 0);
    if (link)
        archive_entry_set_symlink(e, link);
    int ar = archive_write_header(c->a, e);
    archive_entry_free(e);
    if (ar < ARCHIVE_WARN)
        return archive_fail(c);
    c->entries++;
    if (fd >= 0) {
        /* Exactly st_size bytes: a file that grows is cut, one that shrinks is padded with
         * zeros by libarchive when the entry is finished. */
        off_t left = sb->st_size;
        while (left > 0) {
            size_t want = left < (off_t)sizeof(c->buf) ? (size_t)left : sizeof(c->buf);
            ssize_t n = read(fd, c->buf, want);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return -errno;
            if (n == 0)
                break;
            if (archive_write_data(c->a, c->buf, (size_t)n) < 0)
                return archive_fail(c);
            left -= n;
        }
    }
    return archive_write_finish_entry(c->a) < ARCHIVE_WARN ? archive_fail(c) : 0;
}

/* Appends "/name" (or "name" at the top) to c->path; returns the new length or -ENAMETOOLONG. */
static ssize_t path_push(char *path, size_t len, const char *name)
{
    size_t nl = strlen(name);
    if (len + nl + 2 > PATH_MAX)
        return -ENAMETOOLONG;
    if (len)
        path[len++] = '/';
    memcpy(path + len, name, nl + 1);
    return (ssize_t)(len + nl);
}

/* The contents of directory `fd` (consumed), whose entry name is c->path[0..len). */
static int archive_walk(struct fs_archive *c, int fd, size_t len, int depth)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        int r = -errno;
        close(fd);
        return r;
    }
    int r = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            r = errno ? -errno : 0;
            break;
        }
        if (fs_is_dots(de->d_name))
            continue;
        ssize_t sub_len = path_push(c->path, len, de->d_name);
        if (sub_len < 0) {
            r = (int)sub_len;
            break;
        }
        struct stat sb;
        int dfd = dirfd(d);
        if (fstatat(dfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
            r = errno == ENOENT ? 0 : -errno; /* ENOENT: removed while we were reading */
        } else if (S_ISREG(sb.st_mode)) {
            int f =
                openat(dfd, de->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
            if (f < 0) {
                r = errno == ENOENT ? 0 : -errno;
            } else {
                /* What was opened is what goes in (it may have been swapped since fstatat). */
                if (fstat(f, &sb) < 0)
                    r = -errno;
                else if (S_ISREG(sb.st_mode))
                    r = put_entry(c, &sb, NULL, f);
                close(f);
            }
        } else if (S_ISLNK(sb.st_mode)) {
            char link[PATH_MAX];
            r = fs_read_link(dfd, de->d_name, link, sizeof(link));
            r = r == -ENOENT ? 0 : r < 0 ? r : put_entry(c, &sb, link, -1);
        } else if (S_ISDIR(sb.st_mode)) {
            if ((r = put_entry(c, &sb, NULL, -1)) < 0)
                break;
            int sub = openat(dfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                r = errno == ENOENT ? 0 : -errno;
            } else if (fs_is_pseudo(sub) != 0) {
                close(sub); /* /proc, /sys, ...: the directory, not the kernel's contents */
            } else if (depth + 1 >= FS_MAX_DEPTH) {
                close(sub);
                r = -ELOOP;
            } else {
                r = archive_walk(c, sub, (size_t)sub_len, depth + 1);
            }
        }
        /* Anything else (devices, FIFOs, sockets) is left out. */
        if (r < 0)
            break;
    }
    closedir(d);
    c->path[len] = '\0';
    return r;
}

static int archive_create_locked(const struct fs_root *root, struct fs_archive *c, const char *path,
                                 int relative_to_path)
{
    struct fs_path p;
    int r = fs_split_path(path, &p);
    if (r < 0)
        return r;
    /* The top is looked at with O_PATH first (opening a FIFO would block), then opened for
     * real; a final symlink in `path` is followed (inside the sandbox). */
    int fd = fs_resolve(root, path, O_PATH);
    if (fd < 0)
        return fd;
    struct stat sb;
    r = fstat(fd, &sb) < 0 ? -errno : 0;
    close(fd);
    if (r < 0)
        return r;
    if (!S_ISDIR(sb.st_mode) && !S_ISREG(sb.st_mode))
        return -EINVAL;
    fd =
        fs_resolve(root, path,
                   S_ISDIR(sb.st_mode) ? O_RDONLY | O_DIRECTORY : O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return fd;
    mode_t was = sb.st_mode & S_IFMT;
    if (fstat(fd, &sb) < 0 || (sb.st_mode & S_IFMT) != was) {
        close(fd);
        return -EAGAIN;
    }
    /* "/", "x/." and "x/.." have no usable name of their own: their contents go in as they
     * would with relative_to_path. A single file is always named by its last component. */
    int named = !(p.is_root || p.dots) && (!relative_to_path || S_ISREG(sb.st_mode));
    size_t len = 0;
    if (named) {
        len = strlen(p.last);
        memcpy(c->path, p.last, len + 1);
    }
    if (S_ISREG(sb.st_mode)) {
        r = put_entry(c, &sb, NULL, fd);
        close(fd);
        return r;
    }
    if (named && (r = put_entry(c, &sb, NULL, -1)) < 0) {
        close(fd);
        return r;
    }
    if (fs_is_pseudo(fd) != 0) {
        close(fd);
        return 0;
    }
    return archive_walk(c, fd, len, 0);
}

int fs_archive_new(const struct fs_root *root, size_t max_bytes, size_t max_entries,
                   fs_write_fn write_cb, void *arg, struct fs_archive **out)
{
    *out = NULL;
    struct fs_archive *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->root = root;
    c->cb = write_cb;
    c->arg = arg;
    c->max_bytes = max_bytes;
    c->max_entries = max_entries;
    struct utf8_scope u8;
    utf8_enter(&u8);
    c->a = archive_write_new();
    int r = 0;
    /* The tar stream is padded to whole records inside the gzip data; padding the compressed
     * output as well (libarchive's default, meant for tapes) would only append zeros after the
     * gzip trailer. */
    if (!c->a || archive_write_add_filter_gzip(c->a) != ARCHIVE_OK ||
        archive_write_set_format_pax_restricted(c->a) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(c->a, 1) != ARCHIVE_OK ||
        archive_write_open(c->a, c, NULL, archive_out, NULL) != ARCHIVE_OK)
        r = c->err ? c->err : -ENOMEM;
    utf8_leave(&u8);
    if (r < 0) {
        c->stop = 1;
        if (c->a)
            archive_write_free(c->a);
        free(c);
        return r;
    }
    *out = c;
    return 0;
}

int fs_archive_add_file(struct fs_archive *c, const char *path, const char *name)
{
    if (c->failed)
        return c->failed;
    size_t len = strlen(name);
    if (len >= sizeof(c->path))
        return archive_failed(c, -ENAMETOOLONG);
    struct stat sb;
    int fd = fs_open_read(c->root, path, &sb);
    if (fd < 0)
        return 0;
    memcpy(c->path, name, len + 1);
    struct utf8_scope u8;
    utf8_enter(&u8);
    int r = put_entry(c, &sb, NULL, fd);
    utf8_leave(&u8);
    close(fd);
    return r < 0 ? archive_failed(c, r) : 1;
}

int fs_archive_close(struct fs_archive *c, size_t *entries_out)
{
    int r = c->failed;
    if (r == 0 && archive_write_close(c->a) != ARCHIVE_OK)
        r = archive_fail(c);
    c->stop = 1; /* after a failure, archive_write_free must not emit a trailer */
    archive_write_free(c->a);
    if (entries_out)
        *entries_out = c->entries;
    free(c);
    return r;
}

int fs_archive_create(const struct fs_root *root, const char *path, int relative_to_path,
                      size_t max_bytes, size_t max_entries, fs_write_fn write_cb, void *arg,
                      size_t *entries_out)
{
    if (entries_out)
        *entries_out = 0;
    int r = fs_check_path(path);
    if (r < 0)
        return r;
    struct fs_archive *c;
    if ((r = fs_archive_new(root, max_bytes, max_entries, write_cb, arg, &c)) < 0)
        return r;
    struct fs_creds cr;
    if ((r = fs_creds_enter(root, &cr)) == 0) {
        struct utf8_scope u8;
        utf8_enter(&u8);
        r = archive_create_locked(root, c, path, relative_to_path);
        utf8_leave(&u8);
        fs_creds_leave(&cr);
    }
    if (r < 0)
        archive_failed(c, r);
    return fs_archive_close(c, entries_out);
}

/* ---- archive: extract --------------------------------------------------------------------- */

struct xdir {
    char *path; /* normalised, relative to the destination */
    int depth;
    mode_t mode;
    struct timespec mtime;
};

struct xctx {
    fs_read_fn cb;
    void *arg;
    int err; /* why the input callback failed */
    uint64_t max_bytes, declared, written;
    struct xdir *dirs;
    size_t ndirs, capdirs;
    char *msg;
    size_t msglen;
    unsigned char in[FS_IO_CHUNK];   /* libarchive reads compressed input from here */
    unsigned char data[FS_IO_CHUNK]; /* and hands us entry data here */
};

static la_ssize_t archive_in(struct archive *a, void *arg, const void **buf)
{
    struct xctx *x = arg;
    *buf = x->in;
    ssize_t n = x->cb(x->in, sizeof(x->in), x->arg);
    if (n < 0 || (size_t)n > sizeof(x->in)) {
        x->err = n < 0 && n >= -4095 ? (int)n : -EIO;
        archive_set_error(a, EIO, "input failed");
        return -1;
    }
    return (la_ssize_t)n;
}

__attribute__((format(printf, 3, 4))) static int xfail(struct xctx *x, int code, const char *fmt,
                                                       ...)
{
    if (x->msg && x->msglen && !x->msg[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(x->msg, x->msglen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* "./a//b/" -> "a/b". Absolute names and ".." components are refused (-EINVAL). Returns the
 * number of components (0: the destination itself). */
static int normalise_name(const char *in, char *out, size_t cap)
{
    if (in[0] == '/')
        return -EINVAL;
    size_t o = 0;
    int n = 0;
    const char *s = in;
    while (*s) {
        while (*s == '/')
            s++;
        if (!*s)
            break;
        const char *e = s;
        while (*e && *e != '/')
            e++;
        size_t len = (size_t)(e - s);
        if (len == 2 && s[0] == '.' && s[1] == '.')
            return -EINVAL;
        if (!(len == 1 && s[0] == '.')) {
            if (len > NAME_MAX || o + len + 2 > cap)
                return -ENAMETOOLONG;
            if (o)
                out[o++] = '/';
            memcpy(out + o, s, len);
            o += len;
            n++;
        }
        s = e;
    }
    out[o] = '\0';
    return n;
}

/* A symlink target is accepted if, read from the link's directory (`depth` levels below the
 * destination), it stays inside the destination: relative, ".." only as a leading run and never
 * more of them than `depth`. ".." after a name is refused because the name may itself be a
 * symlink, and then ".." would not undo it. Together with parents that are never symlinks
 * (open_beneath), this makes the lexical check the physical one. */
static int link_target_ok(const char *t, int depth)
{
    if (!*t || t[0] == '/')
        return 0;
    int named = 0;
    const char *s = t;
    while (*s) {
        while (*s == '/')
            s++;
        if (!*s)
            break;
        const char *e = s;
        while (*e && *e != '/')
            e++;
        size_t len = (size_t)(e - s);
        if (len == 2 && s[0] == '.' && s[1] == '.') {
            if (named || --depth < 0)
                return 0;
        } else if (!(len == 1 && s[0] == '.')) {
            named = 1;
        }
        s = e;
    }
    return 1;
}

/* O_PATH fd of the directory that will hold entry `norm` (n components), below `dest`; missing
 * directories are created 0755; the final component goes to `last`. */
static int x_open_parent(int dest, const char *norm, char *last)
{
    int cur = fcntl(dest, F_DUPFD_CLOEXEC, 0);
    if (cur < 0)
        return -errno;
    const char *s = norm;
    for (;;) {
        const char *slash = strchr(s, '/');
        if (!slash)
            break;
        char comp[NAME_MAX + 1];
        memcpy(comp, s, (size_t)(slash - s));
        comp[slash - s] = '\0';
        int next = fs_open_beneath(cur, comp, O_PATH | O_DIRECTORY);
        if (next == -ENOENT) {
            int r = fs_make_dir(cur, comp, 0755);
            next = r < 0 && r != -EEXIST ? r : fs_open_beneath(cur, comp, O_PATH | O_DIRECTORY);
        }
        close(cur);
        if (next < 0)
            return next;
        cur = next;
        s = slash + 1;
    }
    strcpy(last, s);
    int r = fs_check_writable(cur);
    if (r < 0) {
        close(cur);
        return r;
    }
    return cur;
}

/* Makes room for a new entry `name`: an existing non-directory is removed, an existing directory
 * is an error (tar would need to remove a whole tree). */
static int x_replace(int dir, const char *name)
{
    struct stat sb;
    if (fstatat(dir, name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (S_ISDIR(sb.st_mode))
        return -EISDIR;
    return unlinkat(dir, name, 0) < 0 && errno != ENOENT ? -errno : 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int x_file(struct archive *a, struct xctx *x, int dir, const char *last,
                  struct archive_entry *e, const char *name)
{
    int fd = -1;
    for (int i = 0; i < 2 && fd < 0; i++) {
        fd = openat(dir, last, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            return xfail(x, -errno, "%s: %s", name, strerror(errno));
        if (fd < 0) {
            int r = x_replace(dir, last);
            if (r < 0)
                return xfail(x, r, "%s: cannot replace: %s", name, strerror(-r));
        }
    }
    if (fd < 0)
        return xfail(x, -EEXIST, "%s: exists", name);
    int r = 0;
    for (;;) {
        la_ssize_t n = archive_read_data(a, x->data, sizeof(x->data));
        if (n == 0)
            break;
        if (n < 0) {
            r = xfail(x, x->err ? x->err : -EINVAL, "%s: %s", name,
                      x->err ? strerror(-x->err) : archive_error_string(a) ?: "bad data");
            break;
        }
        x->written += (uint64_t)n;
        if (x->max_bytes && x->written > x->max_bytes) {
            r = xfail(x, -EFBIG, "%s: archive contents larger than %llu bytes", name,
                      (unsigned long long)x->max_bytes);
            break;
        }
        if ((r = write_all(fd, x->data, (size_t)n)) < 0) {
            xfail(x, r, "%s: %s", name, strerror(-r));
            break;
        }
    }
    if (r == 0) {
        struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
                                 {archive_entry_mtime(e), archive_entry_mtime_nsec(e)}};
        /* Permission bits only: no setuid, setgid or sticky from an archive. */
        if (fchmod(fd, archive_entry_perm(e) & 0777) < 0)
            r = xfail(x, -errno, "%s: chmod: %s", name, strerror(errno));
        else
            futimens(fd, ts);
    }
    close(fd);
    return r;
}

static int x_dir(struct xctx *x, int dir, const char *last, struct archive_entry *e,
                 const char *norm, int depth)
{
    struct stat sb;
    int r = 0;
    if (fstatat(dir, last, &sb, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(sb.st_mode) &&
        unlinkat(dir, last, 0) < 0)
        r = -errno;
    /* 0700 until the end: a read-only directory from the archive must not stop its own
     * entries from being extracted. Its mode and mtime are set last (x_finish_dirs). */
    if (r == 0)
        r = fs_make_dir(dir, last, 0700);
    /* A directory that was already there keeps its mode and mtime: an archive with "tmp/" in
     * it must not take the sticky bit off /tmp. */
    if (r == -EEXIST)
        return 0;
    if (r < 0)
        return xfail(x, r, "%s: %s", norm, strerror(-r));
    if (x->ndirs == x->capdirs) {
        size_t cap = x->capdirs ? 2 * x->capdirs : 64;
        struct xdir *d = realloc(x->dirs, cap * sizeof(*d));
        if (!d)
            return -ENOMEM;
        x->dirs = d;
        x->capdirs = cap;
    }
    char *copy = strdup(norm);
    if (!copy)
        return -ENOMEM;
    x->dirs[x->ndirs++] = (struct xdir){copy,
                                        depth,
                                        archive_entry_perm(e) & 0777,
                                        {archive_entry_mtime(e), archive_entry_mtime_nsec(e)}};
    return 0;
}

static int x_symlink(struct xctx *x, int dir, const char *last, struct archive_entry *e,
                     const char *norm, int depth)
{
    const char *target = archive_entry_symlink(e);
    if (!target || !link_target_ok(target, depth - 1))
        return xfail(x, -EINVAL, "%s: symlink target '%s' leaves the destination", norm,
                     target ? target : "");
    int r = x_replace(dir, last);
    if (r == 0 && symlinkat(target, dir, last) < 0)
        r = -errno;
    if (r < 0)
        return xfail(x, r, "%s: %s", norm, strerror(-r));
    struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
                             {archive_entry_mtime(e), archive_entry_mtime_nsec(e)}};
    utimensat(dir, last, ts, AT_SYMLINK_NOFOLLOW);
    return 0;
}

static int xdir_deeper_first(const void *a, const void *b)
{
    const struct xdir *x = a, *y = b;
    return (y->depth > x->depth) - (y->depth < x->depth);
}

/* Directory modes and mtimes, deepest first (a parent's mode may forbid reaching its children,
 * and creating children changes a directory's mtime). */
static int x_finish_dirs(struct xctx *x, int dest)
{
    int first = 0;
    if (x->ndirs > 1)
        qsort(x->dirs, x->ndirs, sizeof(*x->dirs), xdir_deeper_first);
    for (size_t i = 0; i < x->ndirs; i++) {
        int fd = fs_open_beneath(dest, x->dirs[i].path, O_RDONLY | O_DIRECTORY);
        int r = fd;
        if (fd >= 0) {
            struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, x->dirs[i].mtime};
            r = fchmod(fd, x->dirs[i].mode) < 0 ? -errno : 0;
            futimens(fd, ts);
            close(fd);
        }
        if (r < 0 && r != -ENOENT && !first)
            first = xfail(x, r, "%s: %s", x->dirs[i].path, strerror(-r));
    }
    return first;
}

static int x_entry(struct archive *a, struct xctx *x, int dest, struct archive_entry *e)
{
    const char *raw = archive_entry_pathname(e);
    if (!raw)
        raw = archive_entry_pathname_utf8(e);
    if (!raw)
        return xfail(x, -EINVAL, "entry without a usable name");
    char norm[PATH_MAX];
    int depth = normalise_name(raw, norm, sizeof(norm));
    if (depth < 0)
        return xfail(x, depth, "%s: %s", raw,
                     depth == -EINVAL ? "absolute names and '..' are not allowed"
                                      : "name too long");
    if (archive_entry_hardlink(e))
        return xfail(x, -EINVAL, "%s: hard links are not supported", raw);
    mode_t type = archive_entry_filetype(e);
    if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK)
        return xfail(x, -EINVAL, "%s: only files, directories and symlinks are allowed", raw);
    if (depth == 0)
        return type == AE_IFDIR ? 0 : xfail(x, -EINVAL, "%s: not a directory", raw);
    if (type == AE_IFREG) {
        la_int64_t size = archive_entry_size_is_set(e) ? archive_entry_size(e) : 0;
        if (size < 0)
            return xfail(x, -EINVAL, "%s: bad size", raw);
        x->declared += (uint64_t)size;
        if (x->max_bytes && x->declared > x->max_bytes)
            return xfail(x, -EFBIG, "%s: archive contents larger than %llu bytes", raw,
                         (unsigned long long)x->max_bytes);
    }
    char last[NAME_MAX + 1];
    int dir = x_open_parent(dest, norm, last);
    if (dir < 0)
        return xfail(x, dir, "%s: %s", norm,
                     dir == -ELOOP ? "a parent directory is a symlink" : strerror(-dir));
    int r = type == AE_IFREG   ? x_file(a, x, dir, last, e, norm)
            : type == AE_IFDIR ? x_dir(x, dir, last, e, norm, depth)
                               : x_symlink(x, dir, last, e, norm, depth);
    close(dir);
    return r;
}

static int extract_locked(const struct fs_root *root, const char *path, struct xctx *x,
                          size_t max_entries, size_t *entries_out)
{
    int dest = fs_mkdir_walk(root, path);
    if (dest < 0)
        return xfail(x, dest, "%s: %s", path, strerror(-dest));
    int r = fs_check_writable(dest);
    if (r < 0) {
        close(dest);
        return xfail(x, r, "%s: not a writable file system", path);
    }
    struct archive *a = archive_read_new();
    if (!a) {
        close(dest);
        return -ENOMEM;
    }
    archive_read_support_filter_gzip(a);
    archive_read_support_filter_none(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_empty(a);
    size_t n = 0;
    if (archive_read_open(a, x, NULL, archive_in, NULL) != ARCHIVE_OK) {
        r = x->err ? x->err
                   : xfail(x, -EINVAL, "not a tar archive: %s",
                           archive_error_string(a) ?: "unknown format");
    } else {
        for (;;) {
            struct archive_entry *e;
            int ar = archive_read_next_header(a, &e);
            if (ar == ARCHIVE_EOF)
                break;
            if (ar < ARCHIVE_WARN) {
                r = x->err ? x->err
                           : xfail(x, -EINVAL, "bad archive: %s",
                                   archive_error_string(a) ?: "unknown error");
                break;
            }
            if (max_entries && n >= max_entries) {
                r = xfail(x, -E2BIG, "more than %zu entries", max_entries);
                break;
            }
            if ((r = x_entry(a, x, dest, e)) < 0)
                break;
            n++;
        }
    }
    archive_read_free(a);
    int rd = x_finish_dirs(x, dest);
    if (r == 0)
        r = rd;
    close(dest);
    *entries_out = n;
    return r;
}

int fs_archive_extract(const struct fs_root *root, const char *path, fs_read_fn read_cb, void *arg,
                       uint64_t max_bytes, size_t max_entries, size_t *entries_out, char *err,
                       size_t errlen)
{
    size_t n = 0;
    if (entries_out)
        *entries_out = 0;
    if (err && errlen)
        err[0] = '\0';
    int r = fs_check_path(path);
    if (r < 0)
        return r;
    struct xctx *x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->cb = read_cb;
    x->arg = arg;
    x->max_bytes = max_bytes;
    x->msg = err;
    x->msglen = err ? errlen : 0;
    struct fs_creds cr;
    if ((r = fs_creds_enter(root, &cr)) == 0) {
        struct utf8_scope u8;
        utf8_enter(&u8);
        r = extract_locked(root, path, x, max_entries, &n);
        utf8_leave(&u8);
        fs_creds_leave(&cr);
    }
    for (size_t i = 0; i < x->ndirs; i++)
        free(x->dirs[i].path);
    free(x->dirs);
    free(x);
    if (entries_out)
        *entries_out = n;
    return r;
}
