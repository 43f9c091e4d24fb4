/*
 * fs — file access inside a sandbox. See fs.h for the security model; this file and fs_archive.c
 * keep it by following three rules everywhere:
 *
 *  1. A path that comes from a caller is only ever resolved by openat2() from the root fd with
 *     RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS (fs_resolve()). Never by string concatenation onto a
 *     host path, never by open()/stat() on a path.
 *  2. Every other *at() call gets a directory fd obtained by rule 1 (or by a walk below one) and
 *     a single name that is neither "." nor ".." and contains no "/", and never follows a final
 *     symlink: O_NOFOLLOW, AT_SYMLINK_NOFOLLOW, or calls that never follow (mkdirat, unlinkat,
 *     renameat, symlinkat, readlinkat). A symlink followed by a plain *at() call is resolved
 *     against the *daemon's* root — the host — which is exactly the escape this module exists to
 *     prevent.
 *  3. All file system work runs between fs_creds_enter() and fs_creds_leave(), which switch the
 * calling thread (only it: raw syscalls, the kernel keeps credentials per thread) to the sandbox
 *     root's fsuid/fsgid, no supplementary groups and no effective capabilities. If the switch
 *     fails, nothing is done (fail closed).
 */
#include "sandbox/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "sandbox/fs_internal.h"

/* Symlinks followed by fs_open_write when resolving its target (the kernel's limit). */
#define MAX_LINK_HOPS 40

/* 32-bit architectures have 16-bit legacy versions of these calls. */
#ifdef SYS_setfsuid32
#define SYS_SETFSUID SYS_setfsuid32
#define SYS_SETFSGID SYS_setfsgid32
#define SYS_GETGROUPS SYS_getgroups32
#define SYS_SETGROUPS SYS_setgroups32
#else
#define SYS_SETFSUID SYS_setfsuid
#define SYS_SETFSGID SYS_setfsgid
#define SYS_GETGROUPS SYS_getgroups
#define SYS_SETGROUPS SYS_setgroups
#endif

/* ---- credentials ------------------------------------------------------------------------- */

static int caps_get(struct __user_cap_data_struct *data)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    return syscall(SYS_capget, &h, data) < 0 ? -errno : 0;
}

static int caps_set(const struct __user_cap_data_struct *data)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    return syscall(SYS_capset, &h, data) < 0 ? -errno : 0;
}

/* setfsuid/setfsgid never report errors; an invalid id (-1) changes nothing and returns the
 * current value, which is how a switch is verified. */
static uid_t cur_fsuid(void)
{
    return (uid_t)syscall(SYS_SETFSUID, (uid_t)-1);
}

static gid_t cur_fsgid(void)
{
    return (gid_t)syscall(SYS_SETFSGID, (gid_t)-1);
}

void fs_creds_leave(struct fs_creds *saved)
{
    if (!saved->entered)
        return;
    saved->entered = 0;
    /* Effective capabilities first: setgroups and setfsuid(0) need CAP_SETGID/CAP_SETUID. The
     * permitted set was never touched, so raising them again is always allowed. */
    int bad = caps_set(saved->caps) < 0;
    if (syscall(SYS_SETGROUPS, (size_t)saved->ngroups, saved->groups) < 0)
        bad = 1;
    syscall(SYS_SETFSGID, saved->fsgid);
    syscall(SYS_SETFSUID, saved->fsuid);
    if (cur_fsgid() != saved->fsgid || cur_fsuid() != saved->fsuid)
        bad = 1;
    /* Going back to fsuid 0 re-raises the file capabilities from the permitted set: restore the
     * effective set exactly as it was. */
    if (caps_set(saved->caps) < 0)
        bad = 1;
    if (bad)
        log_error("fs: could not restore the credentials of thread %d", (int)gettid());
}

int fs_creds_enter(const struct fs_root *root, struct fs_creds *saved)
{
    memset(saved, 0, sizeof(*saved));
    /* Switching to id 0 would be no switch at all: the API would act as host root. */
    if (root->root_fd < 0 || root->uid == 0 || root->gid == 0 || root->uid == (uid_t)-1 ||
        root->gid == (gid_t)-1)
        return -EINVAL;
    int r = caps_get(saved->caps);
    if (r < 0)
        return r;
    saved->fsuid = cur_fsuid();
    saved->fsgid = cur_fsgid();
    long n = syscall(SYS_GETGROUPS, FS_CREDS_MAX_GROUPS, saved->groups);
    if (n < 0)
        return errno == EINVAL ? -E2BIG : -errno; /* more groups than we could restore */
    saved->ngroups = (int)n;

    saved->entered = 1;
    /* Supplementary groups too: a daemon started from a root shell carries group 0, which would
     * open every group-readable root:root file to the API. */
    if (syscall(SYS_SETGROUPS, (size_t)0, NULL) < 0)
        goto fail;
    syscall(SYS_SETFSGID, root->gid);
    if (cur_fsgid() != root->gid)
        goto fail;
    syscall(SYS_SETFSUID, root->uid);
    if (cur_fsuid() != root->uid)
        goto fail;
    struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3];
    memcpy(none, saved->caps, sizeof(none));
    for (size_t i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
        none[i].effective = 0;
    if (caps_set(none) < 0)
        goto fail;
    return 0;
fail:
    fs_creds_leave(saved);
    return -EPERM;
}

/* ---- paths -------------------------------------------------------------------------------- */

/* Rule 1: the only way a caller's path is turned into an fd. */
int fs_resolve(const struct fs_root *root, const char *path, int flags)
{
    return util_openat2(root->root_fd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
}

/* One name (or a normalised relative path) below `dirfd` without following any symlink and
 * without leaving `dirfd`: archive extraction never goes through a symlink. */
int fs_open_beneath(int dirfd, const char *name, int flags)
{
    return util_openat2(dirfd, name, flags,
                        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
}

int fs_is_dots(const char *name)
{
    return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

int fs_split_path(const char *path, struct fs_path *p)
{
    if (!path || !*path)
        return -EINVAL;
    size_t n = strlen(path);
    if (n >= PATH_MAX)
        return -ENAMETOOLONG;
    p->trailing = 0;
    while (n > 0 && path[n - 1] == '/') {
        n--;
        p->trailing = 1;
    }
    p->is_root = n == 0;
    size_t s = n;
    while (s > 0 && path[s - 1] != '/')
        s--;
    if (n - s > NAME_MAX)
        return -ENAMETOOLONG;
    memcpy(p->last, path + s, n - s);
    p->last[n - s] = '\0';
    p->dots = !p->is_root && fs_is_dots(p->last);
    size_t pn = s;
    while (pn > 0 && path[pn - 1] == '/')
        pn--;
    if (pn == 0) {
        strcpy(p->parent, "/");
    } else {
        memcpy(p->parent, path, pn);
        p->parent[pn] = '\0';
    }
    return 0;
}

/* Kernel interfaces that look like files: writing there reconfigures the kernel (or the
 * sandbox's cgroup), not the sandbox's data. */
int fs_is_pseudo(int fd)
{
    struct statfs sf;
    if (fstatfs(fd, &sf) < 0)
        return -errno;
    switch ((uint32_t)sf.f_type) {
    case PROC_SUPER_MAGIC:
    case SYSFS_MAGIC:
    case CGROUP_SUPER_MAGIC:
    case CGROUP2_SUPER_MAGIC:
    case DEVPTS_SUPER_MAGIC:
    case DEBUGFS_MAGIC:
    case TRACEFS_MAGIC:
    case SECURITYFS_MAGIC:
    case SELINUX_MAGIC:
    case SMACK_MAGIC:
    case BPF_FS_MAGIC:
    case EFIVARFS_MAGIC:
    case PSTOREFS_MAGIC:
    case BINFMTFS_MAGIC:
    case NSFS_MAGIC:
        return 1;
    default:
        return 0;
    }
}

/* 0 if entries may be created or removed in directory `fd`, else -EPERM (or -errno). */
int fs_check_writable(int fd)
{
    int r = fs_is_pseudo(fd);
    return r < 0 ? r : r ? -EPERM : 0;
}

/* mkdirat with an exact mode (the daemon's umask must not matter): created 0700 so that we can
 * open it, then chmod'ed through the fd, keeping a setgid bit inherited from the parent. */
int fs_make_dir(int parent, const char *name, mode_t mode)
{
    int r = fs_check_writable(parent);
    if (r < 0)
        return r;
    if (mkdirat(parent, name, 0700) < 0)
        return -errno;
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return 0; /* replaced under us; the sandbox's own doing */
    struct stat sb;
    if (fstat(fd, &sb) < 0 || fchmod(fd, mode | (sb.st_mode & S_ISGID)) < 0)
        r = -errno;
    close(fd);
    return r;
}

/* O_PATH fd of directory `path`, creating missing components (0755) one at a time. Each prefix
 * is resolved from the root again, so symlinks on the way mean what they mean to the kernel. */
int fs_mkdir_walk(const struct fs_root *root, const char *path)
{
    char prefix[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof(prefix))
        return -ENAMETOOLONG;
    int cur = fs_resolve(root, "/", O_PATH | O_DIRECTORY);
    size_t i = 0;
    while (cur >= 0) {
        while (path[i] == '/')
            i++;
        if (!path[i])
            break;
        size_t s = i;
        while (path[i] && path[i] != '/')
            i++;
        memcpy(prefix, path, i);
        prefix[i] = '\0';
        int next = fs_resolve(root, prefix, O_PATH | O_DIRECTORY);
        if (next == -ENOENT) {
            char name[NAME_MAX + 1];
            if (i - s > NAME_MAX) {
                next = -ENAMETOOLONG;
            } else {
                memcpy(name, path + s, i - s);
                name[i - s] = '\0';
                /* "." and ".." always exist, so ENOENT never names them; be explicit anyway. */
                int r = fs_is_dots(name) ? -ENOENT : fs_make_dir(cur, name, 0755);
                next = r < 0 && r != -EEXIST ? r : fs_resolve(root, prefix, O_PATH | O_DIRECTORY);
            }
        }
        close(cur);
        cur = next;
    }
    return cur;
}

static int open_parent(const struct fs_root *root, const struct fs_path *p, int mkdirs)
{
    int fd = fs_resolve(root, p->parent, O_PATH | O_DIRECTORY);
    if (fd == -ENOENT && mkdirs)
        fd = fs_mkdir_walk(root, p->parent);
    return fd;
}

int fs_check_path(const char *path)
{
    if (!path || !*path)
        return -EINVAL;
    return strlen(path) >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* ---- roots -------------------------------------------------------------------------------- */

int fs_root_open(pid_t init_pid, uid_t uid, gid_t gid, struct fs_root *out)
{
    out->root_fd = -1;
    out->uid = uid;
    out->gid = gid;
    if (init_pid <= 0 || uid == 0 || gid == 0)
        return -EINVAL;
    char p[64];
    snprintf(p, sizeof(p), "/proc/%d", (int)init_pid);
    /* The /proc/<pid> directory pins that process: if it exits and its pid is reused, lookups
     * below this fd fail instead of reaching the new process. */
    int pfd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (pfd < 0)
        return errno == ENOENT ? -ESRCH : -errno;
    int r = 0;
    struct stat ns, self_ns, st, host_root;
    if (fstatat(pfd, "ns/mnt", &ns, 0) < 0 || stat("/proc/thread-self/ns/mnt", &self_ns) < 0) {
        r = -errno;
        goto out;
    }
    /* A sandbox always has its own mount namespace; the daemon's own one means a wrong or stale
     * pid, and its root would be the host's. */
    if (ns.st_dev == self_ns.st_dev && ns.st_ino == self_ns.st_ino) {
        r = -EINVAL;
        goto out;
    }
    int fd = openat(pfd, "root", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        r = errno == ENOENT ? -ESRCH : -errno;
        goto out;
    }
    if (fstat(fd, &st) < 0 || stat("/", &host_root) < 0) {
        r = -errno;
        close(fd);
        goto out;
    }
    if (st.st_dev == host_root.st_dev && st.st_ino == host_root.st_ino) {
        r = -EINVAL;
        close(fd);
        goto out;
    }
    out->root_fd = fd;
out:
    close(pfd);
    return r;
}

int fs_root_open_dir(const char *dir, uid_t uid, gid_t gid, struct fs_root *out)
{
    out->root_fd = -1;
    out->uid = uid;
    out->gid = gid;
    if (uid == 0 || gid == 0)
        return -EINVAL;
    int fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    out->root_fd = fd;
    return 0;
}

void fs_root_close(struct fs_root *root)
{
    if (root->root_fd >= 0)
        close(root->root_fd);
    root->root_fd = -1;
}

/* ---- read --------------------------------------------------------------------------------- */

static int open_read_locked(const struct fs_root *root, const char *path, struct stat *out)
{
    /* Look before opening for real: opening a FIFO blocks and opening a device can have side
     * effects. O_PATH opens nothing. */
    int fd = fs_resolve(root, path, O_PATH);
    if (fd < 0)
        return fd;
    struct stat sb;
    int r = fstat(fd, &sb) < 0 ? -errno : 0;
    close(fd);
    if (r < 0)
        return r;
    if (!S_ISREG(sb.st_mode))
        return S_ISDIR(sb.st_mode) ? -EISDIR : -EINVAL;
    /* The file may have been swapped between the two opens: O_NONBLOCK keeps a FIFO from
     * blocking, and the type is checked again on what was actually opened. */
    fd = fs_resolve(root, path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return fd;
    if (fstat(fd, &sb) < 0)
        r = -errno;
    else if (!S_ISREG(sb.st_mode))
        r = S_ISDIR(sb.st_mode) ? -EISDIR : -EINVAL;
    if (r < 0) {
        close(fd);
        return r;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (out)
        *out = sb;
    return fd;
}

int fs_open_read(const struct fs_root *root, const char *path, struct stat *st)
{
    int r = fs_check_path(path);
    if (r < 0)
        return r;
    struct fs_creds cr;
    if ((r = fs_creds_enter(root, &cr)) < 0)
        return r;
    r = open_read_locked(root, path, st);
    fs_creds_leave(&cr);
    return r;
}

/* ---- write -------------------------------------------------------------------------------- */

static int open_write_locked(const struct fs_root *root, const char *path, int mkdirs,
                             struct fs_tmp *tmp)
{
    char cur[PATH_MAX];
    struct fs_path p;
    int dir = -1, r;
    snprintf(cur, sizeof(cur), "%s", path);
    for (int hop = 0;; hop++) {
        if (hop > MAX_LINK_HOPS)
            return -ELOOP;
        if ((r = fs_split_path(cur, &p)) < 0)
            return r;
        /* "/", "x/.", "x/.." and "x/" can only name directories (open(2) gives EISDIR too). */
        if (p.is_root || p.dots || p.trailing)
            return -EISDIR;
        dir = open_parent(root, &p, mkdirs && hop == 0);
        if (dir < 0)
            return dir;
        if ((r = fs_check_writable(dir)) < 0)
            goto fail;
        struct stat sb;
        if (fstatat(dir, p.last, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno != ENOENT) {
                r = -errno;
                goto fail;
            }
            break;
        }
        if (S_ISDIR(sb.st_mode)) {
            r = -EISDIR;
            goto fail;
        }
        if (!S_ISLNK(sb.st_mode))
            break;
        /* A symlink: renaming over it would replace the link, but the contract is to replace
         * what it points to. Its target is resolved like the kernel would, only inside the
         * sandbox: absolute from the sandbox's root, relative from the link's directory (by
         * path, so a relative target is resolved from wherever p.parent leads). */
        char link[PATH_MAX];
        ssize_t n = readlinkat(dir, p.last, link, sizeof(link) - 1);
        if (n < 0) {
            r = -errno;
            goto fail;
        }
        close(dir);
        dir = -1;
        if (n == 0)
            return -ENOENT;
        link[n] = '\0';
        int w = link[0] == '/' ? snprintf(cur, sizeof(cur), "%s", link)
                               : snprintf(cur, sizeof(cur), "%s/%s", p.parent, link);
        if (w < 0 || (size_t)w >= sizeof(cur))
            return -ENAMETOOLONG;
    }
    int fd = -1;
    for (int i = 0; i < 8 && fd < 0; i++) {
        if ((r = util_random_id(tmp->name, sizeof(tmp->name), ".warren-tmp-")) < 0)
            goto fail;
        fd = openat(dir, tmp->name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0) {
        r = -errno;
        goto fail;
    }
    snprintf(tmp->target, sizeof(tmp->target), "%s", p.last);
    tmp->fd = fd;
    tmp->dir_fd = dir;
    return 0;
fail:
    if (dir >= 0)
        close(dir);
    return r;
}

int fs_open_write(const struct fs_root *root, const char *path, mode_t mode, int mkdirs,
                  struct fs_tmp *tmp)
{
    tmp->fd = -1;
    tmp->dir_fd = -1;
    tmp->name[0] = '\0';
    tmp->target[0] = '\0';
    tmp->mode = mode & 07777;
    tmp->root = root;
    int r = fs_check_path(path);
    if (r < 0)
        return r;
    struct fs_creds cr;
    if ((r = fs_creds_enter(root, &cr)) < 0)
        return r;
    r = open_write_locked(root, path, mkdirs, tmp);
    fs_creds_leave(&cr);
    return r;
}

/* Closes the temporary file and either renames it over the target (`commit`) or removes it (also
 * when the commit fails). Without the sandbox's credentials nothing is renamed or removed: a
 * stray temporary file is better than acting as host root. */
static int tmp_finish(struct fs_tmp *tmp, int commit)
{
    if (tmp->fd < 0 || tmp->dir_fd < 0)
        return -EBADF;
    struct fs_creds cr;
    int r = fs_creds_enter(tmp->root, &cr);
    if (r == 0 && commit) {
        if (fsync(tmp->fd) < 0 || fchmod(tmp->fd, tmp->mode) < 0)
            r = -errno;
    }
    if (close(tmp->fd) < 0 && r == 0 && commit)
        r = -errno;
    tmp->fd = -1;
    if (cr.entered) {
        if (r == 0 && commit && renameat(tmp->dir_fd, tmp->name, tmp->dir_fd, tmp->target) < 0)
            r = -errno;
        if (r < 0 || !commit)
            unlinkat(tmp->dir_fd, tmp->name, 0);
        fs_creds_leave(&cr);
    }
    close(tmp->dir_fd);
    tmp->dir_fd = -1;
    return r;
}

int fs_commit(struct fs_tmp *tmp)
{
    return tmp_finish(tmp, 1);
}

void fs_abort(struct fs_tmp *tmp)
{
    tmp_finish(tmp, 0);
}

/* ---- stat and list ------------------------------------------------------------------------ */

static enum fs_type type_of(mode_t m)
{
    return S_ISREG(m) ? FS_FILE : S_ISDIR(m) ? FS_DIR : S_ISLNK(m) ? FS_SYMLINK : FS_OTHER;
}

/* Fills *e from `sb`; path and link are copied. -ENOMEM leaves nothing allocated. */
static int entry_fill(struct fs_entry *e, const char *path, const struct stat *sb, const char *link,
                      const char *sha256)
{
    memset(e, 0, sizeof(*e));
    e->type = type_of(sb->st_mode);
    e->size = sb->st_size;
    e->mode = sb->st_mode & 07777;
    e->mtime = sb->st_mtim;
    if (sha256)
        memcpy(e->sha256, sha256, sizeof(e->sha256));
    e->path = strdup(path);
    e->link_target = link ? strdup(link) : NULL;
    if (!e->path || (link && !e->link_target)) {
        fs_entry_free(e);
        return -ENOMEM;
    }
    return 0;
}

void fs_entry_free(struct fs_entry *e)
{
    free(e->path);
    free(e->link_target);
    e->path = e->link_target = NULL;
}

void fs_entries_free(struct fs_entry *entries, size_t n)
{
    for (size_t i = 0; entries && i < n; i++)
        fs_entry_free(&entries[i]);
    free(entries);
}

int fs_read_link(int dir, const char *name, char *out, size_t cap)
{
    ssize_t n = readlinkat(dir, name, out, cap - 1);
    if (n < 0)
        return -errno;
    out[n] = '\0';
    return 0;
}

/* Hex SHA-256 of regular file `name` in `dir`, which must still be the file `sb` describes. */
static int sha256_at(int dir, const char *name, const struct stat *sb, char hex[65])
{
    int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat now;
    int r = 0;
    unsigned char *buf = NULL;
    EVP_MD_CTX *md = NULL;
    if (fstat(fd, &now) < 0) {
        r = -errno;
        goto out;
    }
    if (!S_ISREG(now.st_mode) || now.st_dev != sb->st_dev || now.st_ino != sb->st_ino) {
        r = -EAGAIN; /* replaced between stat and open */
        goto out;
    }
    buf = malloc(FS_IO_CHUNK);
    md = EVP_MD_CTX_new();
    if (!buf || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        r = -ENOMEM;
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf, FS_IO_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            goto out;
        }
        if (n == 0)
            break;
        EVP_DigestUpdate(md, buf, (size_t)n);
    }
    unsigned char dig[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (EVP_DigestFinal_ex(md, dig, &len) != 1 || len != 32) {
        r = -EIO;
        goto out;
    }
    for (unsigned i = 0; i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", dig[i]);
out:
    EVP_MD_CTX_free(md);
    free(buf);
    close(fd);
    return r;
}

static int stat_locked(const struct fs_root *root, const char *path, int with_sha256,
                       struct fs_entry *out)
{
    struct fs_path p;
    int r = fs_split_path(path, &p);
    if (r < 0)
        return r;
    struct stat sb;
    char link[PATH_MAX], hex[65];
    int has_link = 0, has_sha = 0;
    if (p.is_root || p.dots || p.trailing) {
        /* No final entry to look at without following: these name a directory (a trailing "/"
         * follows a final symlink, as in stat(2)). */
        int fd = fs_resolve(root, path, O_PATH);
        if (fd < 0)
            return fd;
        r = fstat(fd, &sb) < 0 ? -errno : 0;
        close(fd);
        if (r < 0)
            return r;
    } else {
        int dir = open_parent(root, &p, 0);
        if (dir < 0)
            return dir;
        if (fstatat(dir, p.last, &sb, AT_SYMLINK_NOFOLLOW) < 0)
            r = -errno;
        else if (S_ISLNK(sb.st_mode))
            has_link = (r = fs_read_link(dir, p.last, link, sizeof(link))) == 0;
        else if (S_ISREG(sb.st_mode) && with_sha256)
            has_sha = (r = sha256_at(dir, p.last, &sb, hex)) == 0;
        close(dir);
        if (r < 0)
            return r;
    }
    return entry_fill(out, path, &sb, has_link ? link : NULL, has_sha ? hex : NULL);
}

int fs_stat(const struct fs_root *root, const char *path, int with_sha256, struct fs_entry *out)
{
    memset(out, 0, sizeof(*out));
    int r = fs_check_path(path);
    if (r < 0)
        return r;
    struct fs_creds cr;
    if ((r = fs_creds_enter(root, &cr)) < 0)
        return r;
    r = stat_locked(root, path, with_sha256, out);
    fs_creds_leave(&cr);
    return r;
}

struct list_ctx {
    struct fs_entry *v;
    size_t cap;
    size_t max;
    size_t count;
    int full; /* max reached: stop everything */
    int truncated;
    char rel[PATH_MAX];
};

/* Lists directory `fd` (consumed) whose path relative to the listed directory is rel[0..len). */
static int list_dir(struct list_ctx *c, int fd, size_t len, int recursive, int depth)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        int r = -errno;
        close(fd);
        return r;
    }
    int r = 0;
    while (!c->full) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            r = errno ? -errno : 0;
            break;
        }
        if (fs_is_dots(de->d_name))
            continue;
        size_t nl = strlen(de->d_name);
        if (len + nl + 2 > sizeof(c->rel)) {
            c->truncated = 1;
            continue;
        }
        size_t sub_len = len;
        if (len)
            c->rel[sub_len++] = '/';
        memcpy(c->rel + sub_len, de->d_name, nl + 1);
        sub_len += nl;
        struct stat sb;
        char link[PATH_MAX];
        if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno == ENOENT) /* removed while we were reading */
                continue;
            r = -errno;
            break;
        }
        int has_link = 0;
        if (S_ISLNK(sb.st_mode)) {
            if ((r = fs_read_link(dirfd(d), de->d_name, link, sizeof(link))) == -ENOENT)
                continue;
            if (r < 0)
                break;
            has_link = 1;
        }
        if (c->max && c->count >= c->max) {
            c->full = c->truncated = 1;
            break;
        }
        if (c->count == c->cap) {
            size_t cap = c->cap ? 2 * c->cap : 64;
            struct fs_entry *v = realloc(c->v, cap * sizeof(*v));
            if (!v) {
                r = -ENOMEM;
                break;
            }
            c->v = v;
            c->cap = cap;
        }
        if ((r = entry_fill(&c->v[c->count], c->rel, &sb, has_link ? link : NULL, NULL)) < 0)
            break;
        c->count++;
        if (!recursive || !S_ISDIR(sb.st_mode))
            continue;
        if (depth + 1 >= FS_MAX_DEPTH) {
            c->truncated = 1;
            continue;
        }
        int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) {
            /* Gone, or closed to the sandbox's root (another user's 0700 directory, a process's
             * /proc entries): listed, not descended into, as find(1) would go on. */
            if (errno == ENOENT || errno == EACCES || errno == EPERM)
                continue;
            r = -errno;
            break;
        }
        if ((r = list_dir(c, sub, sub_len, recursive, depth + 1)) < 0)
            break;
    }
    closedir(d);
    c->rel[len] = '\0';
    return r;
}

int fs_list(const struct fs_root *root, const char *path, int recursive, size_t max_entries,
            struct fs_entry **entries, size_t *n, int *truncated)
{
    *entries = NULL;
    *n = 0;
    *truncated = 0;
    int r = fs_check_path(path);
    if (r < 0)
        return r;
    struct list_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->max = max_entries;
    struct fs_creds cr;
    if ((r = fs_creds_enter(root, &cr)) == 0) {
        int fd = fs_resolve(root, path, O_RDONLY | O_DIRECTORY);
        r = fd < 0 ? fd : list_dir(c, fd, 0, recursive, 0);
        fs_creds_leave(&cr);
    }
    if (r == 0) {
        *entries = c->v;
        *n = c->count;
        *truncated = c->truncated;
    } else {
        fs_entries_free(c->v, c->count);
    }
    free(c);
    return r;
}

/* ---- remove and mkdir --------------------------------------------------------------------- */

/* Removes directory `name` in `parent` and everything below it, depth first, by fds only: a
 * symlink is an entry to unlink, never something to follow. */
static int remove_tree_at(int parent, const char *name, int depth)
{
    if (depth >= FS_MAX_DEPTH)
        return -ELOOP;
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = fs_check_writable(fd);
    if (r < 0) {
        close(fd);
        return r;
    }
    DIR *d = fdopendir(fd);
    if (!d) {
        r = -errno;
        close(fd);
        return r;
    }
    /* A few passes: entries removed while reading may make readdir skip others, and the
     * sandbox may be adding files concurrently (then ENOTEMPTY is the honest answer). */
    for (int pass = 0; pass < 3; pass++) {
        int first = 0;
        struct dirent *de;
        rewinddir(d);
        while ((de = readdir(d))) {
            if (fs_is_dots(de->d_name))
                continue;
            struct stat sb;
            int e = 0;
            if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
                e = -errno;
            else if (S_ISDIR(sb.st_mode))
                e = remove_tree_at(dirfd(d), de->d_name, depth + 1);
            else if (unlinkat(dirfd(d), de->d_name, 0) < 0)
                e = -errno;
            if (e < 0 && e != -ENOENT && !first)
                first = e;
        }
        r = first;
        if (r < 0)
            break;
        if (unlinkat(parent, name, AT_REMOVEDIR) == 0 || errno == ENOENT) {
            r = 0;
            break;
        }
        r = -errno;
        if (r != -ENOTEMPTY)
            break;
    }
    closedir(d);
    return r;
}

static int remove_locked(const struct fs_root *root, const char *path, int recursive)
{
    struct fs_path p;
    int r = fs_split_path(path, &p);
    if (r < 0)
        return r;
    if (p.is_root)
        return -EBUSY;
    if (p.dots)
        return -EINVAL;
    int dir = open_parent(root, &p, 0);
    if (dir < 0)
        return dir;
    struct stat sb;
    if ((r = fs_check_writable(dir)) < 0)
        goto out;
    if (fstatat(dir, p.last, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
        r = -errno;
        goto out;
    }
    if (!S_ISDIR(sb.st_mode)) {
        /* "file/" names a directory, as in unlink(2)/rmdir(2). */
        r = p.trailing ? -ENOTDIR : unlinkat(dir, p.last, 0) < 0 ? -errno : 0;
    } else if (recursive) {
        r = remove_tree_at(dir, p.last, 0);
    } else {
        r = unlinkat(dir, p.last, AT_REMOVEDIR) < 0 ? -errno : 0;
    }
out:
    close(dir);
    return r;
}

int fs_remove(const struct fs_root *root, const char *path, int recursive)
{
    int r = fs_check_path(path);
    if (r < 0)
        return r;
    struct fs_creds cr;
    if ((r = fs_creds_enter(root, &cr)) < 0)
        return r;
    r = remove_locked(root, path, recursive);
    fs_creds_leave(&cr);
    return r;
}

static int mkdir_locked(const struct fs_root *root, const char *path, int parents)
{
    struct fs_path p;
    int r = fs_split_path(path, &p);
    if (r < 0)
        return r;
    if (parents || p.is_root || p.dots) {
        /* mkdir -p: everything missing is created, an existing directory is fine. "/", "x/."
         * and "x/.." exist whenever their parent does. */
        int fd = parents ? fs_mkdir_walk(root, path) : fs_resolve(root, path, O_PATH | O_DIRECTORY);
        if (fd < 0)
            return fd;
        close(fd);
        return parents ? 0 : -EEXIST;
    }
    int dir = open_parent(root, &p, 0);
    if (dir < 0)
        return dir;
    r = fs_make_dir(dir, p.last, 0755);
    close(dir);
    return r;
}

int fs_mkdir(const struct fs_root *root, const char *path, int parents)
{
    int r = fs_check_path(path);
    if (r < 0)
        return r;
    struct fs_creds cr;
    if ((r = fs_creds_enter(root, &cr)) < 0)
        return r;
    r = mkdir_locked(root, path, parents);
    fs_creds_leave(&cr);
    return r;
}

int fs_chown(const struct fs_root *root, const char *path, uid_t uid, gid_t gid)
{
    struct fs_path p;
    struct fs_creds cr;
    int r = fs_check_path(path), fd = -1;
    if (r < 0)
        return r;
    if (uid >= FS_ID_RANGE || gid >= FS_ID_RANGE)
        return -ERANGE;
    if ((r = fs_split_path(path, &p)) < 0)
        return r;
    if ((r = fs_creds_enter(root, &cr)) < 0)
        return r;
    /* Resolved as the sandbox's root sees it; the final component is not followed. */
    if (p.is_root || p.dots) {
        fd = fs_resolve(root, path, O_PATH);
    } else {
        int dir = open_parent(root, &p, 0);
        fd = dir < 0 ? dir : openat(dir, p.last, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (dir >= 0 && fd < 0)
            fd = -errno;
        if (dir >= 0)
            close(dir);
    }
    fs_creds_leave(&cr);
    if (fd < 0)
        return fd;
    /* Giving a file away needs CAP_CHOWN, which the sandbox's root has only in its namespace:
     * the change itself is the daemon's, on the file the sandbox's root resolved, to ids of
     * the sandbox's own range. */
    int pseudo = fs_is_pseudo(fd);
    if (pseudo)
        r = pseudo < 0 ? pseudo : -EPERM;
    else if (fchownat(fd, "", root->uid + uid, root->gid + gid, AT_EMPTY_PATH) < 0)
        r = -errno;
    close(fd);
    return r;
}
