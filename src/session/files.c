/*
 * files — file access inside a sandbox. See files.h for the security model; this file keeps it
 * by following three rules everywhere:
 *
 *  1. A path that comes from a caller is only ever resolved by openat2() from the root fd with
 *     RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS (resolve()). Never by string concatenation onto a
 *     host path, never by open()/stat() on a path.
 *  2. Every other *at() call gets a directory fd obtained by rule 1 (or by a walk below one) and
 *     a single name that is neither "." nor ".." and contains no "/", and never follows a final
 *     symlink: O_NOFOLLOW, AT_SYMLINK_NOFOLLOW, or calls that never follow (mkdirat, unlinkat,
 *     renameat, symlinkat, readlinkat). A symlink followed by a plain *at() call is resolved
 *     against the *daemon's* root — the host — which is exactly the escape this module exists to
 *     prevent.
 *  3. All file system work runs between creds_enter() and creds_leave(), which switch the calling
 *     thread (only it: raw syscalls, the kernel keeps credentials per thread) to the sandbox
 *     root's fsuid/fsgid, no supplementary groups and no effective capabilities. If the switch
 *     fails, nothing is done (fail closed).
 */
#include "session/files.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

/* Walks (list, remove, archive) keep one open directory per level; a sandbox can build trees of
 * any depth, and the daemon's fd table and memory are shared by all sandboxes. */
#define MAX_DEPTH 256
/* Symlinks followed by files_open_write when resolving its target (the kernel's limit). */
#define MAX_LINK_HOPS 40
/* Sandbox uids: host_uid + [0, 65536) (session/sandbox.c); used for archive metadata only. */
#define SANDBOX_ID_RANGE 65536u
#define SANDBOX_OVERFLOW_ID 65534u
#define IO_CHUNK 65536

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

/* The daemon has at most a handful of supplementary groups (root from a shell: none or {0}). */
#define CREDS_MAX_GROUPS 64

struct creds {
    int entered; /* something was changed: creds_leave must restore */
    uid_t fsuid;
    gid_t fsgid;
    int ngroups;
    gid_t groups[CREDS_MAX_GROUPS];
    struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
};

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

static void creds_leave(struct creds *saved)
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
        log_error("files: could not restore the credentials of thread %d", (int)gettid());
}

static int creds_enter(const struct files_root *root, struct creds *saved)
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
    long n = syscall(SYS_GETGROUPS, CREDS_MAX_GROUPS, saved->groups);
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
    creds_leave(saved);
    return -EPERM;
}

/* ---- paths -------------------------------------------------------------------------------- */

static int openat2_retry(int dirfd, const char *path, int flags, uint64_t resolve_flags)
{
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC), .resolve = resolve_flags};
    /* Scoped lookups with ".." fail with EAGAIN when a rename or mount raced with them. */
    for (int i = 0; i < 16; i++) {
        long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
        if (fd >= 0)
            return (int)fd;
        if (errno != EAGAIN)
            return -errno;
    }
    return -EAGAIN;
}

/* Rule 1: the only way a caller's path is turned into an fd. */
static int resolve(const struct files_root *root, const char *path, int flags)
{
    return openat2_retry(root->root_fd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
}

/* One name (or a normalised relative path) below `dirfd` without following any symlink and
 * without leaving `dirfd`: archive extraction never goes through a symlink. */
static int open_beneath(int dirfd, const char *name, int flags)
{
    return openat2_retry(dirfd, name, flags,
                         RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
}

static int is_dots(const char *name)
{
    return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

/* A caller's path cut into its parent and final component. */
struct fpath {
    char parent[PATH_MAX]; /* "/" when the final component is at the top */
    char last[NAME_MAX + 1];
    int is_root;  /* "/", "//", ...: no final component */
    int dots;     /* the final component is "." or ".." */
    int trailing; /* ended with "/" */
};

static int split_path(const char *path, struct fpath *p)
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
    p->dots = !p->is_root && is_dots(p->last);
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
static int is_pseudo_fs(int fd)
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
static int check_writable_fs(int fd)
{
    int r = is_pseudo_fs(fd);
    return r < 0 ? r : r ? -EPERM : 0;
}

/* mkdirat with an exact mode (the daemon's umask must not matter): created 0700 so that we can
 * open it, then chmod'ed through the fd, keeping a setgid bit inherited from the parent. */
static int make_dir(int parent, const char *name, mode_t mode)
{
    int r = check_writable_fs(parent);
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
static int mkdir_walk(const struct files_root *root, const char *path)
{
    char prefix[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof(prefix))
        return -ENAMETOOLONG;
    int cur = resolve(root, "/", O_PATH | O_DIRECTORY);
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
        int next = resolve(root, prefix, O_PATH | O_DIRECTORY);
        if (next == -ENOENT) {
            char name[NAME_MAX + 1];
            if (i - s > NAME_MAX) {
                next = -ENAMETOOLONG;
            } else {
                memcpy(name, path + s, i - s);
                name[i - s] = '\0';
                /* "." and ".." always exist, so ENOENT never names them; be explicit anyway. */
                int r = is_dots(name) ? -ENOENT : make_dir(cur, name, 0755);
                next = r < 0 && r != -EEXIST ? r : resolve(root, prefix, O_PATH | O_DIRECTORY);
            }
        }
        close(cur);
        cur = next;
    }
    return cur;
}

static int open_parent(const struct files_root *root, const struct fpath *p, int mkdirs)
{
    int fd = resolve(root, p->parent, O_PATH | O_DIRECTORY);
    if (fd == -ENOENT && mkdirs)
        fd = mkdir_walk(root, p->parent);
    return fd;
}

static int check_path(const char *path)
{
    if (!path || !*path)
        return -EINVAL;
    return strlen(path) >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* ---- roots -------------------------------------------------------------------------------- */

int files_root_open(pid_t init_pid, uid_t uid, gid_t gid, struct files_root *out)
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

int files_root_open_dir(const char *dir, uid_t uid, gid_t gid, struct files_root *out)
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

void files_root_close(struct files_root *root)
{
    if (root->root_fd >= 0)
        close(root->root_fd);
    root->root_fd = -1;
}

/* ---- read --------------------------------------------------------------------------------- */

static int open_read_locked(const struct files_root *root, const char *path, struct stat *out)
{
    /* Look before opening for real: opening a FIFO blocks and opening a device can have side
     * effects. O_PATH opens nothing. */
    int fd = resolve(root, path, O_PATH);
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
    fd = resolve(root, path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
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

int files_open_read(const struct files_root *root, const char *path, struct stat *st)
{
    int r = check_path(path);
    if (r < 0)
        return r;
    struct creds cr;
    if ((r = creds_enter(root, &cr)) < 0)
        return r;
    r = open_read_locked(root, path, st);
    creds_leave(&cr);
    return r;
}

/* ---- write -------------------------------------------------------------------------------- */

static int open_write_locked(const struct files_root *root, const char *path, int mkdirs,
                             struct files_tmp *tmp)
{
    char cur[PATH_MAX];
    struct fpath p;
    int dir = -1, r;
    snprintf(cur, sizeof(cur), "%s", path);
    for (int hop = 0;; hop++) {
        if (hop > MAX_LINK_HOPS)
            return -ELOOP;
        if ((r = split_path(cur, &p)) < 0)
            return r;
        /* "/", "x/.", "x/.." and "x/" can only name directories (open(2) gives EISDIR too). */
        if (p.is_root || p.dots || p.trailing)
            return -EISDIR;
        dir = open_parent(root, &p, mkdirs && hop == 0);
        if (dir < 0)
            return dir;
        if ((r = check_writable_fs(dir)) < 0)
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

int files_open_write(const struct files_root *root, const char *path, mode_t mode, int mkdirs,
                     struct files_tmp *tmp)
{
    tmp->fd = -1;
    tmp->dir_fd = -1;
    tmp->name[0] = '\0';
    tmp->target[0] = '\0';
    tmp->mode = mode & 07777;
    tmp->root = root;
    int r = check_path(path);
    if (r < 0)
        return r;
    struct creds cr;
    if ((r = creds_enter(root, &cr)) < 0)
        return r;
    r = open_write_locked(root, path, mkdirs, tmp);
    creds_leave(&cr);
    return r;
}

/* Closes the temporary file and either renames it over the target (`commit`) or removes it (also
 * when the commit fails). Without the sandbox's credentials nothing is renamed or removed: a
 * stray temporary file is better than acting as host root. */
static int tmp_finish(struct files_tmp *tmp, int commit)
{
    if (tmp->fd < 0 || tmp->dir_fd < 0)
        return -EBADF;
    struct creds cr;
    int r = creds_enter(tmp->root, &cr);
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
        creds_leave(&cr);
    }
    close(tmp->dir_fd);
    tmp->dir_fd = -1;
    return r;
}

int files_commit(struct files_tmp *tmp)
{
    return tmp_finish(tmp, 1);
}

void files_abort(struct files_tmp *tmp)
{
    tmp_finish(tmp, 0);
}

/* ---- stat and list ------------------------------------------------------------------------ */

static const char *type_name(mode_t m)
{
    return S_ISREG(m) ? "file" : S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "symlink" : "other";
}

/* o[key] = text; a name that is not UTF-8 (file names are bytes) is shown with U+FFFD for the
 * bad bytes, and o[key_b64] carries the exact bytes. */
static int set_text(json_t *o, const char *key, const char *text)
{
    size_t len = strlen(text);
    if (util_utf8_valid(text, len))
        return json_object_set_new(o, key, json_stringn(text, len));
    char *lossy = util_utf8_lossy(text, len), *b64 = util_base64_encode(text, len), k[64];
    snprintf(k, sizeof(k), "%s_b64", key);
    int bad = !lossy || !b64 || json_object_set_new(o, key, json_string(lossy)) ||
              json_object_set_new(o, k, json_string(b64));
    free(lossy);
    free(b64);
    return bad ? -1 : 0;
}

static json_t *entry_json(const char *path, const struct stat *sb, const char *link,
                          const char *sha256)
{
    char mode[16], mtime[32];
    snprintf(mode, sizeof(mode), "%04o", (unsigned)(sb->st_mode & 07777));
    util_format_time((double)sb->st_mtim.tv_sec, mtime, sizeof(mtime));
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = set_text(o, "path", path);
    bad |= json_object_set_new(o, "type", json_string(type_name(sb->st_mode)));
    bad |= json_object_set_new(o, "size", json_integer((json_int_t)sb->st_size));
    bad |= json_object_set_new(o, "mode", json_string(mode));
    bad |= json_object_set_new(o, "mtime", json_string(mtime));
    if (link)
        bad |= set_text(o, "link_target", link);
    if (sha256)
        bad |= json_object_set_new(o, "sha256", json_string(sha256));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int read_link(int dir, const char *name, char *out, size_t cap)
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
    buf = malloc(IO_CHUNK);
    md = EVP_MD_CTX_new();
    if (!buf || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        r = -ENOMEM;
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf, IO_CHUNK);
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

static int stat_locked(const struct files_root *root, const char *path, int with_sha256,
                       json_t **out)
{
    struct fpath p;
    int r = split_path(path, &p);
    if (r < 0)
        return r;
    struct stat sb;
    char link[PATH_MAX], hex[65];
    int has_link = 0, has_sha = 0;
    if (p.is_root || p.dots || p.trailing) {
        /* No final entry to look at without following: these name a directory (a trailing "/"
         * follows a final symlink, as in stat(2)). */
        int fd = resolve(root, path, O_PATH);
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
            has_link = (r = read_link(dir, p.last, link, sizeof(link))) == 0;
        else if (S_ISREG(sb.st_mode) && with_sha256)
            has_sha = (r = sha256_at(dir, p.last, &sb, hex)) == 0;
        close(dir);
        if (r < 0)
            return r;
    }
    *out = entry_json(path, &sb, has_link ? link : NULL, has_sha ? hex : NULL);
    return *out ? 0 : -ENOMEM;
}

int files_stat(const struct files_root *root, const char *path, int with_sha256, json_t **out)
{
    *out = NULL;
    int r = check_path(path);
    if (r < 0)
        return r;
    struct creds cr;
    if ((r = creds_enter(root, &cr)) < 0)
        return r;
    r = stat_locked(root, path, with_sha256, out);
    creds_leave(&cr);
    return r;
}

struct list_ctx {
    json_t *arr;
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
        if (is_dots(de->d_name))
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
            if ((r = read_link(dirfd(d), de->d_name, link, sizeof(link))) == -ENOENT)
                continue;
            if (r < 0)
                break;
            has_link = 1;
        }
        if (c->max && c->count >= c->max) {
            c->full = c->truncated = 1;
            break;
        }
        json_t *e = entry_json(c->rel, &sb, has_link ? link : NULL, NULL);
        if (!e || json_array_append_new(c->arr, e) < 0) {
            r = -ENOMEM;
            break;
        }
        c->count++;
        if (!recursive || !S_ISDIR(sb.st_mode))
            continue;
        if (depth + 1 >= MAX_DEPTH) {
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

int files_list(const struct files_root *root, const char *path, int recursive, size_t max_entries,
               json_t **entries, int *truncated)
{
    *entries = NULL;
    *truncated = 0;
    int r = check_path(path);
    if (r < 0)
        return r;
    struct list_ctx *c = calloc(1, sizeof(*c));
    if (!c || !(c->arr = json_array())) {
        free(c);
        return -ENOMEM;
    }
    c->max = max_entries;
    struct creds cr;
    if ((r = creds_enter(root, &cr)) == 0) {
        int fd = resolve(root, path, O_RDONLY | O_DIRECTORY);
        r = fd < 0 ? fd : list_dir(c, fd, 0, recursive, 0);
        creds_leave(&cr);
    }
    if (r == 0) {
        *entries = c->arr;
        *truncated = c->truncated;
    } else {
        json_decref(c->arr);
    }
    free(c);
    return r;
}

/* ---- remove and mkdir --------------------------------------------------------------------- */

/* Removes directory `name` in `parent` and everything below it, depth first, by fds only: a
 * symlink is an entry to unlink, never something to follow. */
static int remove_tree_at(int parent, const char *name, int depth)
{
    if (depth >= MAX_DEPTH)
        return -ELOOP;
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = check_writable_fs(fd);
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
            if (is_dots(de->d_name))
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

static int remove_locked(const struct files_root *root, const char *path, int recursive)
{
    struct fpath p;
    int r = split_path(path, &p);
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
    if ((r = check_writable_fs(dir)) < 0)
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

int files_remove(const struct files_root *root, const char *path, int recursive)
{
    int r = check_path(path);
    if (r < 0)
        return r;
    struct creds cr;
    if ((r = creds_enter(root, &cr)) < 0)
        return r;
    r = remove_locked(root, path, recursive);
    creds_leave(&cr);
    return r;
}

static int mkdir_locked(const struct files_root *root, const char *path, int parents)
{
    struct fpath p;
    int r = split_path(path, &p);
    if (r < 0)
        return r;
    if (parents || p.is_root || p.dots) {
        /* mkdir -p: everything missing is created, an existing directory is fine. "/", "x/."
         * and "x/.." exist whenever their parent does. */
        int fd = parents ? mkdir_walk(root, path) : resolve(root, path, O_PATH | O_DIRECTORY);
        if (fd < 0)
            return fd;
        close(fd);
        return parents ? 0 : -EEXIST;
    }
    int dir = open_parent(root, &p, 0);
    if (dir < 0)
        return dir;
    r = make_dir(dir, p.last, 0755);
    close(dir);
    return r;
}

int files_mkdir(const struct files_root *root, const char *path, int parents)
{
    int r = check_path(path);
    if (r < 0)
        return r;
    struct creds cr;
    if ((r = creds_enter(root, &cr)) < 0)
        return r;
    r = mkdir_locked(root, path, parents);
    creds_leave(&cr);
    return r;
}

/* ---- archive: create ---------------------------------------------------------------------- */

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

struct actx {
    struct archive *a;
    uid_t uid;
    gid_t gid;
    files_write_fn cb;
    void *arg;
    size_t max_bytes, produced;
    size_t max_entries, entries;
    int err;  /* why the output callback failed */
    int stop; /* no more output: we failed and libarchive only wants to flush its trailer */
    char path[PATH_MAX];
    unsigned char buf[IO_CHUNK];
};

static la_ssize_t archive_out(struct archive *a, void *arg, const void *data, size_t len)
{
    struct actx *c = arg;
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

static int archive_fail(const struct actx *c)
{
    return c->err ? c->err : -EIO;
}

/* Host ids as the sandbox sees them (the tar is read by sandbox users and tools). */
static la_int64_t sandbox_id(unsigned host, unsigned base)
{
    return host >= base && host - base < SANDBOX_ID_RANGE ? host - base : SANDBOX_OVERFLOW_ID;
}

/* One entry named c->path; `fd` is the open regular file for data (else -1). */
static int put_entry(struct actx *c, const struct stat *sb, const char *link, int fd)
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
    archive_entry_set_uid(e, sandbox_id(sb->st_uid, c->uid));
    archive_entry_set_gid(e, sandbox_id(sb->st_gid, c->gid));
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
static int archive_walk(struct actx *c, int fd, size_t len, int depth)
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
        if (is_dots(de->d_name))
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
            r = read_link(dfd, de->d_name, link, sizeof(link));
            r = r == -ENOENT ? 0 : r < 0 ? r : put_entry(c, &sb, link, -1);
        } else if (S_ISDIR(sb.st_mode)) {
            if ((r = put_entry(c, &sb, NULL, -1)) < 0)
                break;
            int sub = openat(dfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                r = errno == ENOENT ? 0 : -errno;
            } else if (is_pseudo_fs(sub) != 0) {
                close(sub); /* /proc, /sys, ...: the directory, not the kernel's contents */
            } else if (depth + 1 >= MAX_DEPTH) {
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

static int archive_create_locked(const struct files_root *root, struct actx *c, const char *path,
                                 int relative_to_path)
{
    struct fpath p;
    int r = split_path(path, &p);
    if (r < 0)
        return r;
    /* The top is looked at with O_PATH first (opening a FIFO would block), then opened for
     * real; a final symlink in `path` is followed (inside the sandbox). */
    int fd = resolve(root, path, O_PATH);
    if (fd < 0)
        return fd;
    struct stat sb;
    r = fstat(fd, &sb) < 0 ? -errno : 0;
    close(fd);
    if (r < 0)
        return r;
    if (!S_ISDIR(sb.st_mode) && !S_ISREG(sb.st_mode))
        return -EINVAL;
    fd = resolve(root, path,
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
    if (is_pseudo_fs(fd) != 0) {
        close(fd);
        return 0;
    }
    return archive_walk(c, fd, len, 0);
}

int files_archive_create(const struct files_root *root, const char *path, int relative_to_path,
                         size_t max_bytes, size_t max_entries, files_write_fn write_cb, void *arg,
                         size_t *entries_out)
{
    if (entries_out)
        *entries_out = 0;
    int r = check_path(path);
    if (r < 0)
        return r;
    struct actx *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->uid = root->uid;
    c->gid = root->gid;
    c->cb = write_cb;
    c->arg = arg;
    c->max_bytes = max_bytes;
    c->max_entries = max_entries;
    struct creds cr;
    if ((r = creds_enter(root, &cr)) < 0) {
        free(c);
        return r;
    }
    struct utf8_scope u8;
    utf8_enter(&u8);
    c->a = archive_write_new();
    if (!c->a || archive_write_add_filter_gzip(c->a) != ARCHIVE_OK ||
        archive_write_set_format_pax_restricted(c->a) != ARCHIVE_OK ||
        archive_write_open(c->a, c, NULL, archive_out, NULL) != ARCHIVE_OK) {
        r = c->err ? c->err : -ENOMEM;
    } else {
        r = archive_create_locked(root, c, path, relative_to_path);
        if (r == 0 && archive_write_close(c->a) != ARCHIVE_OK)
            r = archive_fail(c);
    }
    c->stop = 1; /* after a failure, archive_write_free must not emit a trailer */
    if (c->a)
        archive_write_free(c->a);
    utf8_leave(&u8);
    creds_leave(&cr);
    if (entries_out)
        *entries_out = c->entries;
    free(c);
    return r;
}

/* ---- archive: extract --------------------------------------------------------------------- */

struct xdir {
    char *path; /* normalised, relative to the destination */
    int depth;
    mode_t mode;
    struct timespec mtime;
};

struct xctx {
    files_read_fn cb;
    void *arg;
    int err; /* why the input callback failed */
    uint64_t max_bytes, declared, written;
    struct xdir *dirs;
    size_t ndirs, capdirs;
    char *msg;
    size_t msglen;
    unsigned char in[IO_CHUNK];   /* libarchive reads compressed input from here */
    unsigned char data[IO_CHUNK]; /* and hands us entry data here */
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
        int next = open_beneath(cur, comp, O_PATH | O_DIRECTORY);
        if (next == -ENOENT) {
            int r = make_dir(cur, comp, 0755);
            next = r < 0 && r != -EEXIST ? r : open_beneath(cur, comp, O_PATH | O_DIRECTORY);
        }
        close(cur);
        if (next < 0)
            return next;
        cur = next;
        s = slash + 1;
    }
    strcpy(last, s);
    int r = check_writable_fs(cur);
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
        r = make_dir(dir, last, 0700);
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
        int fd = open_beneath(dest, x->dirs[i].path, O_RDONLY | O_DIRECTORY);
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

static int extract_locked(const struct files_root *root, const char *path, struct xctx *x,
                          size_t max_entries, size_t *entries_out)
{
    int dest = mkdir_walk(root, path);
    if (dest < 0)
        return xfail(x, dest, "%s: %s", path, strerror(-dest));
    int r = check_writable_fs(dest);
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

int files_archive_extract(const struct files_root *root, const char *path, files_read_fn read_cb,
                          void *arg, uint64_t max_bytes, size_t max_entries, size_t *entries_out,
                          char *err, size_t errlen)
{
    size_t n = 0;
    if (entries_out)
        *entries_out = 0;
    if (err && errlen)
        err[0] = '\0';
    int r = check_path(path);
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
    struct creds cr;
    if ((r = creds_enter(root, &cr)) == 0) {
        struct utf8_scope u8;
        utf8_enter(&u8);
        r = extract_locked(root, path, x, max_entries, &n);
        utf8_leave(&u8);
        creds_leave(&cr);
    }
    for (size_t i = 0; i < x->ndirs; i++)
        free(x->dirs[i].path);
    free(x->dirs);
    free(x);
    if (entries_out)
        *entries_out = n;
    return r;
}
