/*
 * unpack — see unpack.h.
 *
 * Two libarchive readers are chained: the first sees only compression filters and the "raw"
 * format, so what it hands out is the uncompressed tar stream; we hash that (the diff_id) and feed
 * it to the second, a plain tar reader, through its read callback. Hashing what the tar reader
 * consumes would miss the padding after the end-of-archive blocks, which is part of the diff_id.
 */
#include "image/unpack.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <linux/openat2.h>

#include <archive.h>
#include <archive_entry.h>

#include "core/util.h"
#include "image/digest.h"

#define RESOLVE_STRICT                                                                             \
    (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)

/* The first reader: compressed bytes in, uncompressed tar out, hashed on the way. */
struct stream {
    struct archive *raw;
    struct digest_ctx sha;
    uint64_t bytes;
    char buf[64 * 1024];
};

/* A directory whose mode and mtime are set after everything else, so that a read-only directory
 * in the tar does not stand in the way of its children (and their creation does not bump its
 * mtime). */
struct dirfix {
    char *path;
    mode_t mode;
    struct timespec mtime;
};

struct unpacker {
    int destfd;
    struct archive *tar;
    struct archive_entry *e;
    const char *entry; /* the name as the tar gives it, for messages */
    struct unpack_stats st;
    struct dirfix *fix;
    size_t nfix, capfix;
    char *msg;
    size_t msglen;
};

static int fail(struct unpacker *u, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct unpacker *u, int err, const char *fmt, ...)
{
    /* Long names are cut so that the reason still fits the caller's buffer. */
    const char *name = u->entry ? u->entry : "";
    int cut = strlen(name) > 160;
    int n = snprintf(u->msg, u->msglen, "layer entry '%.160s%s': ", name, cut ? "..." : "");
    if (n >= 0 && (size_t)n < u->msglen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(u->msg + n, u->msglen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return err > 0 ? -err : err;
}

static la_ssize_t stream_read(struct archive *tar, void *ud, const void **out)
{
    struct stream *s = ud;
    la_ssize_t n = archive_read_data(s->raw, s->buf, sizeof(s->buf));
    if (n < 0) {
        archive_set_error(tar, EIO, "%s", archive_error_string(s->raw));
        return -1;
    }
    digest_update(&s->sha, s->buf, (size_t)n);
    s->bytes += (uint64_t)n;
    *out = s->buf;
    return n;
}

/* Normalises a tar name into out (UNPACK_MAX_NAME + 1 bytes): "./" and "." components and
 * duplicate or trailing slashes dropped. "" is the layer's root. Refuses absolute names, "..",
 * and names or depths over the limits; *why says which. */
static int clean_name(const char *in, char *out, const char **why)
{
    size_t n = strlen(in), o = 0, depth = 0;
    if (n == 0) {
        *why = "empty name";
        return -EINVAL;
    }
    if (n > UNPACK_MAX_NAME) {
        *why = "name longer than 4096 bytes";
        return -EINVAL;
    }
    if (in[0] == '/') {
        *why = "absolute name";
        return -EINVAL;
    }
    for (const char *p = in; *p;) {
        const char *end = strchrnul(p, '/');
        size_t len = (size_t)(end - p);
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            *why = "'..' component";
            return -EINVAL;
        }
        if (len && !(len == 1 && p[0] == '.')) {
            if (++depth > UNPACK_MAX_DEPTH) {
                *why = "deeper than 256 components";
                return -EINVAL;
            }
            if (o)
                out[o++] = '/';
            memcpy(out + o, p, len);
            o += len;
        }
        p = *end ? end + 1 : end;
    }
    out[o] = '\0';
    return 0;
}

/* Splits a cleaned, non-empty name into its parent (modified in place; "." for the root) and
 * last component. */
static void split_name(char *name, const char **parent, const char **base)
{
    char *slash = strrchr(name, '/');
    if (!slash) {
        *parent = ".";
        *base = name;
        return;
    }
    *slash = '\0';
    *parent = name;
    *base = slash + 1;
}

/* The directory `parent` below dest, created (0755, owned by us) where missing. A component that
 * is a symlink fails with -ELOOP, one that is not a directory with -ENOTDIR. */
static int open_parent(struct unpacker *u, const char *parent)
{
    int fd = util_openat2(u->destfd, parent, O_RDONLY | O_DIRECTORY, RESOLVE_STRICT);
    if (fd != -ENOENT)
        return fd;
    char path[UNPACK_MAX_NAME + 1];
    snprintf(path, sizeof(path), "%s", parent);
    int cur = util_openat2(u->destfd, ".", O_RDONLY | O_DIRECTORY, RESOLVE_STRICT);
    for (char *p = path; cur >= 0 && *p;) {
        char *end = strchrnul(p, '/');
        int last = !*end;
        *end = '\0';
        int next = util_openat2(cur, p, O_RDONLY | O_DIRECTORY, RESOLVE_STRICT);
        if (next == -ENOENT) {
            if (mkdirat(cur, p, 0755) < 0 && errno != EEXIST)
                next = -errno;
            else
                next = util_openat2(cur, p, O_RDONLY | O_DIRECTORY, RESOLVE_STRICT);
            if (next >= 0 && fchmod(next, 0755) < 0) {
                close(next);
                next = -errno;
            }
        }
        close(cur);
        cur = next;
        p = last ? end : end + 1;
    }
    return cur;
}

static int parent_error(struct unpacker *u, int err)
{
    if (err == -ELOOP)
        return fail(u, err, "a parent directory is a symlink");
    if (err == -ENOTDIR)
        return fail(u, err, "a parent is not a directory");
    if (err == -EXDEV)
        return fail(u, err, "the path leaves the layer");
    return fail(u, err, "opening the parent directory: %s", strerror(-err));
}

/* Clears the way for a new entry `base` in pfd: a non-directory is unlinked, a directory tree
 * removed (never following a symlink). With keep_dir, an existing directory stays and 1 is
 * returned. */
static int remove_existing(int pfd, const char *base, int keep_dir)
{
    struct stat sb;
    if (fstatat(pfd, base, &sb, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (S_ISDIR(sb.st_mode))
        return keep_dir ? 1 : util_remove_tree_at(pfd, base);
    return unlinkat(pfd, base, 0) < 0 ? -errno : 0;
}

static int xattr_kept(const char *name)
{
    if (!strncmp(name, "user.", 5) || !strcmp(name, "security.capability"))
        return 1;
    return !strncmp(name, "trusted.", 8) && strncmp(name, "trusted.overlay.", 16);
}

/* The entry's kept xattrs onto fd. User attributes are not allowed on FIFOs: skipped there. */
static int apply_xattrs(struct unpacker *u, int fd, int is_fifo)
{
    const char *name;
    const void *value;
    size_t size;
    archive_entry_xattr_reset(u->e);
    while (archive_entry_xattr_next(u->e, &name, &value, &size) == ARCHIVE_OK) {
        if (!xattr_kept(name)) {
            u->st.xattrs_skipped++;
            continue;
        }
        if (fsetxattr(fd, name, value, size, 0) < 0) {
            if (is_fifo && errno == EPERM) {
                u->st.xattrs_skipped++;
                continue;
            }
            return fail(u, errno, "setting xattr %s: %s", name, strerror(errno));
        }
    }
    return 0;
}

static int entry_owner(struct unpacker *u, uid_t *uid, gid_t *gid)
{
    int64_t a = archive_entry_uid(u->e), b = archive_entry_gid(u->e);
    if (a < 0 || a >= UINT32_MAX || b < 0 || b >= UINT32_MAX)
        return fail(u, EINVAL, "uid/gid out of range");
    *uid = (uid_t)a;
    *gid = (gid_t)b;
    return 0;
}

static void entry_times(struct unpacker *u, struct timespec ts[2])
{
    if (archive_entry_mtime_is_set(u->e)) {
        ts[0].tv_sec = archive_entry_mtime(u->e);
        ts[0].tv_nsec = archive_entry_mtime_nsec(u->e);
    } else {
        ts[0].tv_sec = 0;
        ts[0].tv_nsec = UTIME_OMIT;
    }
    ts[1] = ts[0];
}

static void count_disk(struct unpacker *u, int fd)
{
    struct stat sb;
    if (fstat(fd, &sb) == 0)
        u->st.disk_bytes += (uint64_t)sb.st_blocks * 512;
}

/* Owner, mode, xattrs and times of a file or FIFO just created as fd. chown clears setuid and
 * writing clears security.capability, so the order matters: data, owner, mode, xattrs, times. */
static int apply_metadata(struct unpacker *u, int fd, int is_fifo)
{
    uid_t uid;
    gid_t gid;
    struct timespec ts[2];
    int r = entry_owner(u, &uid, &gid);
    if (r < 0)
        return r;
    if (fchown(fd, uid, gid) < 0)
        return fail(u, errno, "chown: %s", strerror(errno));
    if (fchmod(fd, archive_entry_perm(u->e) & 07777) < 0)
        return fail(u, errno, "chmod: %s", strerror(errno));
    if ((r = apply_xattrs(u, fd, is_fifo)) < 0)
        return r;
    entry_times(u, ts);
    if (futimens(fd, ts) < 0)
        return fail(u, errno, "setting times: %s", strerror(errno));
    count_disk(u, fd);
    return 0;
}

static int write_all(int fd, const char *p, size_t n, int64_t off)
{
    while (n) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

static int do_file(struct unpacker *u, int pfd, const char *base)
{
    int r = remove_existing(pfd, base, 0);
    if (r < 0)
        return fail(u, r, "replacing the existing entry: %s", strerror(-r));
    int fd = openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(u, errno, "creating: %s", strerror(errno));
    for (;;) {
        const void *buf;
        size_t size;
        la_int64_t off;
        int ar = archive_read_data_block(u->tar, &buf, &size, &off);
        if (ar == ARCHIVE_EOF)
            break;
        if (ar < ARCHIVE_WARN) {
            r = fail(u, EBADMSG, "reading its data: %s", archive_error_string(u->tar));
            goto out;
        }
        if ((r = write_all(fd, buf, size, off)) < 0) {
            r = fail(u, r, "writing: %s", strerror(-r));
            goto out;
        }
        u->st.content_bytes += size;
    }
    /* Sparse entries end in a hole that no data block covers. */
    if (archive_entry_size_is_set(u->e) && ftruncate(fd, archive_entry_size(u->e)) < 0) {
        r = fail(u, errno, "setting the size: %s", strerror(errno));
        goto out;
    }
    if ((r = apply_metadata(u, fd, 0)) == 0)
        u->st.files++;
out:
    close(fd);
    return r;
}

static int do_fifo(struct unpacker *u, int pfd, const char *base)
{
    int r = remove_existing(pfd, base, 0);
    if (r < 0)
        return fail(u, r, "replacing the existing entry: %s", strerror(-r));
    if (mknodat(pfd, base, S_IFIFO | 0600, 0) < 0)
        return fail(u, errno, "mkfifo: %s", strerror(errno));
    /* Non-blocking read-only open of a FIFO succeeds without a writer. */
    int fd = openat(pfd, base, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return fail(u, errno, "opening the FIFO: %s", strerror(errno));
    r = apply_metadata(u, fd, 1);
    close(fd);
    if (r == 0)
        u->st.fifos++;
    return r;
}

static int defer_dir(struct unpacker *u, const char *path)
{
    if (u->nfix == u->capfix) {
        size_t cap = u->capfix ? 2 * u->capfix : 64;
        struct dirfix *n = realloc(u->fix, cap * sizeof(*n));
        if (!n)
            return fail(u, ENOMEM, "out of memory");
        u->fix = n;
        u->capfix = cap;
    }
    struct dirfix *f = &u->fix[u->nfix];
    if (!(f->path = strdup(path)))
        return fail(u, ENOMEM, "out of memory");
    struct timespec ts[2];
    entry_times(u, ts);
    f->mode = archive_entry_perm(u->e) & 07777;
    f->mtime = ts[1];
    u->nfix++;
    return 0;
}

/* `pfd`/`base` name the directory, or pfd < 0 for the layer's root ("./" in the tar). */
static int do_dir(struct unpacker *u, int pfd, const char *base, const char *path)
{
    int r, fd;
    if (pfd < 0) {
        fd = util_openat2(u->destfd, ".", O_RDONLY | O_DIRECTORY, RESOLVE_STRICT);
    } else {
        r = remove_existing(pfd, base, 1);
        if (r < 0)
            return fail(u, r, "replacing the existing entry: %s", strerror(-r));
        if (r == 0 && mkdirat(pfd, base, 0700) < 0)
            return fail(u, errno, "mkdir: %s", strerror(errno));
        fd = util_openat2(pfd, base, O_RDONLY | O_DIRECTORY, RESOLVE_STRICT);
    }
    if (fd < 0)
        return fail(u, fd, "opening the directory: %s", strerror(-fd));
    uid_t uid;
    gid_t gid;
    if ((r = entry_owner(u, &uid, &gid)) < 0)
        goto out;
    if (fchown(fd, uid, gid) < 0) {
        r = fail(u, errno, "chown: %s", strerror(errno));
        goto out;
    }
    if ((r = apply_xattrs(u, fd, 0)) < 0)
        goto out;
    count_disk(u, fd);
    if ((r = defer_dir(u, path)) == 0)
        u->st.dirs++;
out:
    close(fd);
    return r;
}

static int do_symlink(struct unpacker *u, int pfd, const char *base)
{
    const char *target = archive_entry_symlink(u->e);
    if (!target || !*target)
        return fail(u, EINVAL, "symlink without a target");
    if (strlen(target) > UNPACK_MAX_NAME)
        return fail(u, EINVAL, "symlink target longer than 4096 bytes");
    int r = remove_existing(pfd, base, 0);
    if (r < 0)
        return fail(u, r, "replacing the existing entry: %s", strerror(-r));
    if (symlinkat(target, pfd, base) < 0)
        return fail(u, errno, "symlink: %s", strerror(errno));
    uid_t uid;
    gid_t gid;
    struct timespec ts[2];
    if ((r = entry_owner(u, &uid, &gid)) < 0)
        return r;
    if (fchownat(pfd, base, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
        return fail(u, errno, "chown: %s", strerror(errno));
    entry_times(u, ts);
    if (utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0)
        return fail(u, errno, "setting times: %s", strerror(errno));
    /* No fd-based way to set xattrs on a symlink without following it: none are kept. */
    archive_entry_xattr_reset(u->e);
    u->st.xattrs_skipped += (uint64_t)archive_entry_xattr_count(u->e);
    u->st.symlinks++;
    return 0;
}

static int do_hardlink(struct unpacker *u, int pfd, const char *base, const char *name)
{
    char target[UNPACK_MAX_NAME + 1];
    const char *why, *tparent, *tbase;
    int r = clean_name(archive_entry_hardlink(u->e), target, &why);
    if (r < 0)
        return fail(u, r, "hardlink target: %s", why);
    if (!*target)
        return fail(u, EINVAL, "hardlink to the layer's root");
    if (!strcmp(target, name))
        return 0;
    split_name(target, &tparent, &tbase);
    int tfd = util_openat2(u->destfd, tparent, O_RDONLY | O_DIRECTORY, RESOLVE_STRICT);
    if (tfd < 0)
        return fail(u, tfd, "hardlink target '%s': %s", archive_entry_hardlink(u->e),
                    tfd == -ELOOP ? "a parent directory is a symlink" : strerror(-tfd));
    struct stat sb;
    if (fstatat(tfd, tbase, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
        r = fail(u, errno, "hardlink target '%s': %s", archive_entry_hardlink(u->e),
                 strerror(errno));
        goto out;
    }
    if (S_ISDIR(sb.st_mode)) {
        r = fail(u, EPERM, "hardlink target '%s' is a directory", archive_entry_hardlink(u->e));
        goto out;
    }
    if ((r = remove_existing(pfd, base, 0)) < 0) {
        r = fail(u, r, "replacing the existing entry: %s", strerror(-r));
        goto out;
    }
    /* Flags 0: a target that is itself a symlink is linked, not followed. */
    if (linkat(tfd, tbase, pfd, base, 0) < 0) {
        r = fail(u, errno, "link to '%s': %s", archive_entry_hardlink(u->e), strerror(errno));
        goto out;
    }
    u->st.hardlinks++;
out:
    close(tfd);
    return r;
}

/* `.wh.NAME` in pfd: NAME becomes the character device 0:0 overlayfs reads as "deleted". */
static int do_whiteout(struct unpacker *u, int pfd, const char *base)
{
    if (!strcmp(base, ".wh..wh..opq")) {
        if (fsetxattr(pfd, "trusted.overlay.opaque", "y", 1, 0) < 0)
            return fail(u, errno, "setting trusted.overlay.opaque: %s", strerror(errno));
        u->st.opaques++;
        return 0;
    }
    if (!strncmp(base, ".wh..wh.", 8))
        return 0; /* AUFS bookkeeping (.wh..wh.plnk, ...): nothing for overlayfs */
    const char *name = base + 4;
    if (!*name || !strcmp(name, ".") || !strcmp(name, ".."))
        return fail(u, EINVAL, "whiteout of an invalid name");
    int r = remove_existing(pfd, name, 0);
    if (r < 0)
        return fail(u, r, "replacing the existing entry: %s", strerror(-r));
    if (mknodat(pfd, name, S_IFCHR | 0600, makedev(0, 0)) < 0)
        return fail(u, errno, "mknod whiteout: %s", strerror(errno));
    if (fchownat(pfd, name, 0, 0, AT_SYMLINK_NOFOLLOW) < 0)
        return fail(u, errno, "chown whiteout: %s", strerror(errno));
    u->st.whiteouts++;
    return 0;
}

static int do_entry(struct unpacker *u)
{
    char name[UNPACK_MAX_NAME + 1], parent_buf[UNPACK_MAX_NAME + 1];
    const char *why, *parent, *base;
    mode_t type = archive_entry_filetype(u->e);
    const char *hardlink = archive_entry_hardlink(u->e);
    u->entry = archive_entry_pathname(u->e);
    if (!u->entry)
        return fail(u, EINVAL, "empty name (or one not readable in this locale)");
    int r = clean_name(u->entry, name, &why);
    if (r < 0)
        return fail(u, r, "%s", why);
    if (!*name) {
        if (type == AE_IFDIR && !hardlink)
            return do_dir(u, -1, NULL, ".");
        return fail(u, EINVAL, "empty name");
    }
    memcpy(parent_buf, name, strlen(name) + 1);
    split_name(parent_buf, &parent, &base);
    int pfd = open_parent(u, parent);
    if (pfd < 0)
        return parent_error(u, pfd);
    if (!strncmp(base, ".wh.", 4))
        r = do_whiteout(u, pfd, base);
    else if (hardlink)
        r = do_hardlink(u, pfd, base, name);
    else if (type == AE_IFREG)
        r = do_file(u, pfd, base);
    else if (type == AE_IFDIR)
        r = do_dir(u, pfd, base, name);
    else if (type == AE_IFLNK)
        r = do_symlink(u, pfd, base);
    else if (type == AE_IFIFO)
        r = do_fifo(u, pfd, base);
    else if (type == AE_IFCHR || type == AE_IFBLK)
        u->st.devices_skipped++;
    else
        r = fail(u, EINVAL, "unsupported entry type 0%o", (unsigned)type);
    close(pfd);
    return r;
}

/* Modes and mtimes of the directories, in tar order (a later entry for the same directory wins).
 * One that a later entry replaced by something else is skipped. */
static int fix_dirs(struct unpacker *u)
{
    for (size_t i = 0; i < u->nfix; i++) {
        struct dirfix *f = &u->fix[i];
        int fd = util_openat2(u->destfd, f->path, O_RDONLY | O_DIRECTORY, RESOLVE_STRICT);
        if (fd == -ENOENT || fd == -ENOTDIR || fd == -ELOOP)
            continue;
        u->entry = f->path;
        if (fd < 0)
            return fail(u, fd, "opening the directory: %s", strerror(-fd));
        struct timespec ts[2] = {f->mtime, f->mtime};
        int r = 0;
        if (fchmod(fd, f->mode) < 0)
            r = fail(u, errno, "chmod: %s", strerror(errno));
        else if (futimens(fd, ts) < 0)
            r = fail(u, errno, "setting times: %s", strerror(errno));
        close(fd);
        if (r < 0)
            return r;
    }
    return 0;
}

int layer_unpack(int fd, const char *dest, const char *expect_diff_id, char *diff_id_out,
                 struct unpack_stats *st, char *msg, size_t msglen)
{
    struct unpacker u = {.destfd = -1, .msg = msg, .msglen = msglen};
    struct stream *s = calloc(1, sizeof(*s));
    struct archive_entry *rawe;
    char diff_id[DIGEST_STRLEN];
    int r;
    msg[0] = '\0';
    if (!s)
        return -ENOMEM;
    if ((r = digest_init(&s->sha)) < 0)
        goto out;
    u.destfd = open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (u.destfd < 0) {
        r = -errno;
        snprintf(msg, msglen, "layer: opening %s: %s", dest, strerror(errno));
        goto out;
    }
    /* Only the compressions OCI names (and none): filter_all would also run external programs
     * (lrzip, lzop, ...) on untrusted input. */
    s->raw = archive_read_new();
    u.tar = archive_read_new();
    if (!s->raw || !u.tar) {
        r = -ENOMEM;
        goto out;
    }
    archive_read_support_filter_gzip(s->raw);
    archive_read_support_filter_zstd(s->raw);
    archive_read_support_format_raw(s->raw);
    if (archive_read_open_fd(s->raw, fd, 64 * 1024) != ARCHIVE_OK ||
        archive_read_next_header(s->raw, &rawe) != ARCHIVE_OK) {
        r = -EBADMSG;
        snprintf(msg, msglen, "layer: not a tar, gzip or zstd stream: %s",
                 archive_error_string(s->raw));
        goto out;
    }
    archive_read_support_format_tar(u.tar);
    if (archive_read_open(u.tar, s, NULL, stream_read, NULL) != ARCHIVE_OK) {
        r = -EBADMSG;
        snprintf(msg, msglen, "layer: not a tar: %s", archive_error_string(u.tar));
        goto out;
    }
    for (;;) {
        int ar = archive_read_next_header(u.tar, &u.e);
        if (ar == ARCHIVE_EOF)
            break;
        if (ar < ARCHIVE_WARN) {
            r = -EBADMSG;
            snprintf(msg, msglen, "layer: corrupt tar after %llu entries: %s",
                     (unsigned long long)u.st.entries, archive_error_string(u.tar));
            goto out;
        }
        if (++u.st.entries > UNPACK_MAX_ENTRIES) {
            r = -E2BIG;
            snprintf(msg, msglen, "layer: more than %u entries", UNPACK_MAX_ENTRIES);
            goto out;
        }
        if ((r = do_entry(&u)) < 0)
            goto out;
    }
    if ((r = fix_dirs(&u)) < 0)
        goto out;
    /* The rest of the stream (zero blocks past the end-of-archive marker) is in the diff_id too. */
    for (;;) {
        la_ssize_t n = archive_read_data(s->raw, s->buf, sizeof(s->buf));
        if (n == 0)
            break;
        if (n < 0) {
            r = -EBADMSG;
            snprintf(msg, msglen, "layer: %s", archive_error_string(s->raw));
            goto out;
        }
        digest_update(&s->sha, s->buf, (size_t)n);
        s->bytes += (uint64_t)n;
    }
    digest_final(&s->sha, diff_id);
    u.st.tar_bytes = s->bytes;
    if (expect_diff_id && strcmp(expect_diff_id, diff_id) != 0) {
        r = -EBADMSG;
        snprintf(msg, msglen, "layer: diff_id is %s, expected %s", diff_id, expect_diff_id);
        goto out;
    }
    if (diff_id_out)
        memcpy(diff_id_out, diff_id, sizeof(diff_id));
out:
    if (st)
        *st = u.st;
    if (u.tar)
        archive_read_free(u.tar);
    if (s->raw)
        archive_read_free(s->raw);
    digest_free(&s->sha);
    free(s);
    for (size_t i = 0; i < u.nfix; i++)
        free(u.fix[i].path);
    free(u.fix);
    if (u.destfd >= 0)
        close(u.destfd);
    if (r == -EDQUOT)
        r = -ENOSPC;
    return r;
}
