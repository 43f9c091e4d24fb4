/*
 * spawn — clone3() into new namespaces, build the root filesystem, drop privileges, exec the init.
 *
 * The child side (child_*) runs in a copy of the multi-threaded daemon: it may only make system
 * calls and touch memory prepared before the clone (no malloc, no stdio, no locks). It reports the
 * first failure as (step, errno, detail) on a close-on-exec status pipe and _exit()s; a successful
 * exec closes the pipe, which the parent reads as success.
 *
 * Order matters, and why:
 *  1. parent: clone3(NEWUSER|NEWPID|NEWNS|NEWUTS|NEWIPC|NEWNET), writes uid/gid maps (with
 *     setgroups denied) and moves the child into its cgroups, then releases it.
 *  2. child, still host uid 0 by credentials: make mounts private, make the sandbox's root
 *     directory a mount (a tmpfs, or the directory bound on itself) and chdir into it. This has to
 * happen before setresuid because the state directory may be 0700 (only host root may traverse it).
 *  3. child: setresuid(0) inside the namespace (= the unprivileged host range), so every inode it
 *     creates from now on belongs to the sandbox. Every later path is relative to the new root.
 *  4. child: unshare the cgroup namespace (after the move into the cgroup, so it is rooted there),
 *     mount ops, hostname, `lo` up, pivot_root + detach the old root.
 *  5. child: fds, capabilities, no_new_privs, rlimits, seccomp (last, so the filter need not allow
 *     the setup calls), exec of the init from a sealed memfd.
 */
#include "sandbox/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"
#include "sandbox/proto.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

static const char *const step_names[] = {
    [SPAWN_STEP_NONE] = "none",
    [SPAWN_STEP_PREPARE] = "prepare",
    [SPAWN_STEP_CLONE] = "clone3 (namespaces)",
    [SPAWN_STEP_IDMAP] = "uid/gid map",
    [SPAWN_STEP_CGROUP] = "cgroup attach",
    [SPAWN_STEP_SYNC] = "sync with daemon",
    [SPAWN_STEP_SETUID] = "setresuid/setresgid",
    [SPAWN_STEP_CGROUPNS] = "cgroup namespace",
    [SPAWN_STEP_PROPAGATION] = "mount propagation",
    [SPAWN_STEP_ROOT] = "root tmpfs",
    [SPAWN_STEP_MOUNT] = "mount",
    [SPAWN_STEP_HOSTNAME] = "sethostname",
    [SPAWN_STEP_LOOPBACK] = "loopback up",
    [SPAWN_STEP_PIVOT] = "pivot_root",
    [SPAWN_STEP_FDS] = "file descriptors",
    [SPAWN_STEP_CAPS] = "capabilities",
    [SPAWN_STEP_NNP] = "no_new_privs",
    [SPAWN_STEP_RLIMIT] = "rlimits",
    [SPAWN_STEP_SECCOMP] = "seccomp",
    [SPAWN_STEP_EXEC] = "exec init",
    [SPAWN_STEP_WAIT] = "wait for setup",
};

const char *spawn_step_name(enum spawn_step step)
{
    if ((size_t)step < sizeof(step_names) / sizeof(step_names[0]) && step_names[step])
        return step_names[step];
    return "unknown";
}

unsigned long long spawn_default_caps(void)
{
    static const int keep[] = {CAP_CHOWN,      CAP_DAC_OVERRIDE, CAP_FOWNER,
                               CAP_FSETID,     CAP_KILL,         CAP_SETGID,
                               CAP_SETUID,     CAP_SETPCAP,      CAP_NET_BIND_SERVICE,
                               CAP_SYS_CHROOT, CAP_AUDIT_WRITE,  CAP_SETFCAP};
    unsigned long long mask = 0;
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
        mask |= 1ULL << keep[i];
    return mask;
}

void spawn_config_init(struct spawn_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->id_count = 65536;
    cfg->keep_caps = spawn_default_caps();
    cfg->cap_last = 63;
    FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
    if (f) {
        if (fscanf(f, "%d", &cfg->cap_last) != 1 || cfg->cap_last < 0 || cfg->cap_last > 63)
            cfg->cap_last = 63;
        fclose(f);
    }
    cfg->init_fd = -1;
    snprintf(cfg->root_opts, sizeof(cfg->root_opts), "mode=0755,uid=0,gid=0");
}

static int copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        return -ENAMETOOLONG;
    memcpy(dst, src, n + 1);
    return 0;
}

/* True if an earlier op leaves a directory at `path` (which must be relative). */
static int plan_has_dir(const struct spawn_config *cfg, const char *path, size_t len)
{
    for (size_t i = 0; i < cfg->n_mounts; i++) {
        const struct mount_op *op = &cfg->mounts[i];
        if (strlen(op->dst) != len || memcmp(op->dst, path, len) != 0)
            continue;
        switch (op->kind) {
        case MOP_DIR:
        case MOP_TMPFS:
        case MOP_PROC:
        case MOP_DEVPTS:
        case MOP_SYSFS:
            return 1;
        case MOP_BIND_RO:
        case MOP_BIND_RW:
        case MOP_BIND_DEV:
            return op->src_is_dir;
        default:
            break;
        }
    }
    return 0;
}

/* The flags of the mount `path` is on, as mount(2) flags: a bind remount must repeat the ones the
 * kernel locked when the mount came from a more privileged namespace. */
static unsigned long locked_flags(const char *path)
{
    struct statvfs sv;
    unsigned long f = 0;
    if (statvfs(path, &sv) < 0)
        return 0;
    if (sv.f_flag & ST_NOSUID)
        f |= MS_NOSUID;
    if (sv.f_flag & ST_NODEV)
        f |= MS_NODEV;
    if (sv.f_flag & ST_NOEXEC)
        f |= MS_NOEXEC;
    if (sv.f_flag & ST_RDONLY)
        f |= MS_RDONLY;
    if (sv.f_flag & ST_NOATIME)
        f |= MS_NOATIME;
    if (sv.f_flag & ST_NODIRATIME)
        f |= MS_NODIRATIME;
    if (sv.f_flag & ST_RELATIME)
        f |= MS_RELATIME;
    return f;
}

static int plan_push(struct spawn_config *cfg, struct mount_op *op)
{
    if (cfg->n_mounts >= SPAWN_MAX_MOUNTS)
        return -ENOSPC;
    cfg->mounts[cfg->n_mounts++] = *op;
    return 0;
}

int spawn_config_add(struct spawn_config *cfg, enum mount_op_kind kind, const char *src,
                     const char *dst, unsigned long flags, unsigned mode, const char *data)
{
    struct mount_op op;
    int r;
    memset(&op, 0, sizeof(op));
    op.kind = kind;
    op.flags = flags;
    op.mode = mode;
    op.data = data;
    if (dst[0] == '/' || copy_str(op.src, sizeof(op.src), src ? src : "") < 0 ||
        copy_str(op.dst, sizeof(op.dst), dst) < 0)
        return dst[0] == '/' ? -EINVAL : -ENAMETOOLONG;
    if ((kind == MOP_BIND_RO || kind == MOP_BIND_RW || kind == MOP_BIND_DEV) && op.src[0] != '/') {
        /* A file of the new root, made by an earlier op: on the root's mount. */
        if (!cfg->root_dir[0])
            return -EINVAL;
        op.locked = locked_flags(cfg->root_dir);
    } else if (kind == MOP_BIND_RO || kind == MOP_BIND_RW || kind == MOP_BIND_DEV) {
        struct stat sb;
        if (stat(op.src, &sb) < 0)
            return -errno;
        op.src_is_dir = S_ISDIR(sb.st_mode);
        op.locked = locked_flags(op.src);
    }
    /* Ops inside our own proc/sys mounts need no directories; everything else gets its parents
     * created by explicit ops, so the child never walks a path twice. */
    if (kind != MOP_MASK && kind != MOP_READONLY) {
        for (const char *slash = strchr(dst, '/'); slash; slash = strchr(slash + 1, '/')) {
            size_t len = (size_t)(slash - dst);
            if (plan_has_dir(cfg, dst, len))
                continue;
            struct mount_op dir;
            memset(&dir, 0, sizeof(dir));
            dir.kind = MOP_DIR;
            dir.mode = 0755;
            memcpy(dir.dst, dst, len);
            if ((r = plan_push(cfg, &dir)) < 0)
                return r;
        }
    }
    return plan_push(cfg, &op);
}

/* spawn_check_root() for one relative path: no existing component is a symlink (the last one may
 * be, if last_link), all but the last are directories. */
static int check_path(const char *root, const char *rel, int last_link, char *bad, size_t badlen)
{
    char path[2 * SPAWN_PATH_MAX + 2];
    struct stat sb;
    size_t len = strlen(rel);
    /* Component by component, each checked before the next one is looked up through it, so no
     * lookup here follows a symlink either. */
    for (size_t end = 0; end <= len; end++) {
        if (rel[end] != '/' && rel[end] != '\0')
            continue;
        snprintf(path, sizeof(path), "%s/%.*s", root, (int)end, rel);
        if (lstat(path, &sb) < 0) {
            if (errno == ENOENT)
                return 0; /* the child creates it */
            snprintf(bad, badlen, "%.*s", (int)end, rel);
            return -errno;
        }
        int last = end == len;
        if (S_ISLNK(sb.st_mode) ? !(last && last_link) : !last && !S_ISDIR(sb.st_mode)) {
            snprintf(bad, badlen, "%.*s", (int)end, rel);
            return S_ISLNK(sb.st_mode) ? -ELOOP : -ENOTDIR;
        }
    }
    return 0;
}

int spawn_check_root(const struct spawn_config *cfg, char *bad, size_t badlen)
{
    int r;
    for (size_t i = 0; i < cfg->n_mounts; i++) {
        const struct mount_op *op = &cfg->mounts[i];
        if (op->kind == MOP_MASK || op->kind == MOP_READONLY)
            continue; /* inside the fresh proc and sys mounts, nothing of the disk */
        if ((r = check_path(cfg->root_dir, op->dst, op->kind == MOP_SYMLINK, bad, badlen)) < 0)
            return r;
        if ((op->kind == MOP_BIND_RO || op->kind == MOP_BIND_RW || op->kind == MOP_BIND_DEV) &&
            op->src[0] != '/' && (r = check_path(cfg->root_dir, op->src, 0, bad, badlen)) < 0)
            return r;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Child side. Only system calls from here to child_main's exec.
 */

struct child_report {
    int32_t step;
    int32_t err;
    char detail[SPAWN_PATH_MAX];
};

struct child_ctx {
    const struct spawn_config *cfg;
    int sync_fd;
    int status_fd;
    int ctl_fd;
    int keep_fd; /* the daemon's end, held by the init for the next daemon (proto.h) */
    int early_fd[SPAWN_MAX_MOUNTS];     /* for open_early ops, else -1 */
    char early_src[SPAWN_PATH_MAX / 8]; /* "/proc/self/fd/N" of the op being mounted */
};

static size_t child_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static __attribute__((noreturn)) void child_fail(struct child_ctx *c, enum spawn_step step,
                                                 const char *detail)
{
    struct child_report rep;
    rep.step = step;
    rep.err = errno ? errno : EIO;
    size_t n = detail ? child_strlen(detail) : 0;
    if (n >= sizeof(rep.detail))
        n = sizeof(rep.detail) - 1;
    for (size_t i = 0; i < n; i++)
        rep.detail[i] = detail[i];
    rep.detail[n] = '\0';
    (void)!write(c->status_fd, &rep, sizeof(rep));
    _exit(1);
}

/* Creates the directory an op mounts on. Its parents exist (spawn_config_add planned them); an
 * existing directory is fine (e.g. dev/pts inside a read-only /dev snapshot). */
static int child_mkdir(const char *path, unsigned mode)
{
    if (mkdir(path, mode) == 0 || errno == EEXIST)
        return 0;
    struct stat sb;
    return lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode) ? 0 : -1;
}

static int child_bind(const struct mount_op *op, const char *src, unsigned long extra)
{
    if (op->src_is_dir) {
        if (child_mkdir(op->dst, 0755) < 0)
            return -1;
    } else {
        int fd = open(op->dst, O_CREAT | O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
            return -1;
        close(fd);
    }
    if (mount(src, op->dst, NULL, MS_BIND, NULL) < 0)
        return -1;
    return mount(NULL, op->dst, NULL, MS_BIND | MS_REMOUNT | extra | op->locked, NULL);
}

/* Formats "/proc/self/fd/<fd>" without stdio. */
static const char *child_fd_path(char *out, size_t cap, int fd)
{
    static const char prefix[] = "/proc/self/fd/";
    char digits[12];
    size_t n = 0, o = 0;
    do
        digits[n++] = (char)('0' + fd % 10);
    while ((fd /= 10) && n < sizeof(digits));
    if (sizeof(prefix) + n > cap)
        return "";
    for (size_t i = 0; prefix[i]; i++)
        out[o++] = prefix[i];
    while (n)
        out[o++] = digits[--n];
    out[o] = '\0';
    return out;
}

static int child_mount_op(struct child_ctx *c, size_t idx)
{
    const struct mount_op *op = &c->cfg->mounts[idx];
    const char *dst = op->dst, *src = op->src;
    const unsigned long own = MS_NOSUID | MS_NODEV | MS_NOEXEC; /* our proc/sys mounts' flags */
    struct stat sb;
    if (c->early_fd[idx] >= 0)
        src = child_fd_path(c->early_src, sizeof(c->early_src), c->early_fd[idx]);
    switch (op->kind) {
    case MOP_BIND_RO:
        return child_bind(op, src, MS_RDONLY | MS_NOSUID | MS_NODEV);
    case MOP_BIND_RW:
        return child_bind(op, src, MS_NOSUID | MS_NODEV);
    case MOP_BIND_DEV:
        return child_bind(op, src, MS_NOSUID | MS_NOEXEC | op->flags);
    case MOP_TMPFS:
        if (child_mkdir(dst, 0755) < 0)
            return -1;
        return mount("tmpfs", dst, "tmpfs", op->flags, op->data);
    case MOP_PROC:
        if (child_mkdir(dst, 0555) < 0)
            return -1;
        return mount("proc", dst, "proc", own, NULL);
    case MOP_DEVPTS:
        if (child_mkdir(dst, 0755) < 0)
            return -1;
        return mount("devpts", dst, "devpts", MS_NOSUID | MS_NOEXEC,
                     "newinstance,ptmxmode=0666,mode=0620");
    case MOP_SYSFS:
        if (child_mkdir(dst, 0555) < 0)
            return -1;
        /* Optional: a kernel may refuse sysfs in a user namespace (e.g. when the host's /sys is
         * partly over-mounted). The sandbox then has an empty /sys, which only loses features. */
        (void)mount("sysfs", dst, "sysfs", MS_RDONLY | own, NULL);
        return 0;
    case MOP_MASK:
        if (lstat(dst, &sb) < 0)
            return 0; /* not in this kernel */
        if (S_ISDIR(sb.st_mode))
            return mount("tmpfs", dst, "tmpfs", MS_RDONLY | own, "size=0,mode=0555");
        return mount("/dev/null", dst, NULL, MS_BIND, NULL);
    case MOP_READONLY:
        if (lstat(dst, &sb) < 0)
            return 0;
        if (mount(dst, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
            return -1;
        return mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | own, NULL);
    case MOP_DIR:
        return child_mkdir(dst, op->mode); /* umask is 0 in the child */
    case MOP_SYMLINK:
        /* A restarted sandbox's root has it already (or whatever the sandbox made of it: its
         * root is its own, as a container's is across restarts). */
        return symlink(op->src, dst) == 0 || errno == EEXIST ? 0 : -1;
    case MOP_FILE: {
        int fd = open(dst, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, op->mode);
        if (fd < 0)
            return -1;
        size_t n = op->data ? child_strlen(op->data) : 0;
        ssize_t w = n ? write(fd, op->data, n) : 0;
        close(fd);
        return w == (ssize_t)n ? 0 : -1;
    }
    }
    errno = EINVAL;
    return -1;
}

static int child_loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_name[0] = 'l';
    ifr.ifr_name[1] = 'o';
    ifr.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
    int r = ioctl(s, SIOCSIFFLAGS, &ifr);
    close(s);
    return r;
}

/* Moves fd to `target` (no close-on-exec unless cloexec), being careful about collisions. */
static int child_place_fd(int fd, int target, int cloexec)
{
    if (fd == target)
        return cloexec ? fcntl(fd, F_SETFD, FD_CLOEXEC) : fcntl(fd, F_SETFD, 0);
    return dup3(fd, target, cloexec ? O_CLOEXEC : 0);
}

static int child_setup_fds(struct child_ctx *c)
{
    /* Lift every fd we keep above the range we are about to fill, then place them. */
    int ctl = fcntl(c->ctl_fd, F_DUPFD_CLOEXEC, 10);
    int ini = fcntl(c->cfg->init_fd, F_DUPFD_CLOEXEC, 10);
    int st = fcntl(c->status_fd, F_DUPFD_CLOEXEC, 10);
    int keep = fcntl(c->keep_fd, F_DUPFD_CLOEXEC, 10);
    if (ctl < 0 || ini < 0 || st < 0 || keep < 0)
        return -1;
    if (child_place_fd(ctl, WPROTO_CTL_FD, 0) < 0 || child_place_fd(ini, 4, 1) < 0 ||
        child_place_fd(st, 5, 1) < 0 || child_place_fd(keep, WPROTO_KEEP_FD, 0) < 0)
        return -1;
    c->status_fd = 5;
    if (syscall(SYS_close_range, WPROTO_KEEP_FD + 1, ~0U, 0) < 0)
        return -1;
    /* The daemon's stdio must not reach the sandbox. */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        return -1;
    for (int i = 0; i < 3; i++)
        if (dup2(null, i) < 0)
            return -1;
    return close(null);
}

static int child_drop_caps(unsigned long long keep, int cap_last)
{
    for (int cap = 0; cap <= cap_last; cap++) {
        if (keep & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            return -1;
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return -1;
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    data[0].effective = data[0].permitted = (uint32_t)keep;
    data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
    return (int)syscall(SYS_capset, &hdr, data);
}

static __attribute__((noreturn)) void child_main(struct child_ctx *c)
{
    const struct spawn_config *cfg = c->cfg;
    char byte;

    errno = 0;
    if (read(c->sync_fd, &byte, 1) != 1) /* uid/gid maps written */
        child_fail(c, SPAWN_STEP_SYNC, NULL);

    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        child_fail(c, SPAWN_STEP_PROPAGATION, NULL);
    /* A tmpfs (uid=0,gid=0 are read in the new user namespace: it belongs to the sandbox's
     * root), or the directory itself bound on itself, because pivot_root needs a mount point. */
    if (cfg->root_opts[0]
            ? mount("tmpfs", cfg->root_dir, "tmpfs", MS_NOSUID | MS_NODEV, cfg->root_opts) < 0
            : mount(cfg->root_dir, cfg->root_dir, NULL, MS_BIND, NULL) < 0 ||
                  mount(NULL, cfg->root_dir, NULL,
                        MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOATIME, NULL) < 0)
        child_fail(c, SPAWN_STEP_ROOT, cfg->root_dir);
    if (chdir(cfg->root_dir) < 0)
        child_fail(c, SPAWN_STEP_ROOT, cfg->root_dir);
    /* Opened here, in our own mount namespace (a bind source from another namespace is refused)
     * and while we may still traverse root-only directories. */
    for (size_t i = 0; i < cfg->n_mounts; i++) {
        c->early_fd[i] = -1;
        if (cfg->mounts[i].open_early &&
            (c->early_fd[i] = open(cfg->mounts[i].src, O_PATH | O_CLOEXEC)) < 0)
            child_fail(c, SPAWN_STEP_MOUNT, cfg->mounts[i].src);
    }

    /* Raw system calls: glibc's wrappers would try to change the ids of every thread of the
     * process we were cloned from (threads that do not exist in this copy). */
    if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0)
        child_fail(c, SPAWN_STEP_SETUID, NULL);
    umask(0); /* modes in the plan are exact */
    /* Normally no PR_SET_PDEATHSIG: the sandbox outlives the daemon (sandbox/proto.h). (A
     * daemon that died before this line cannot have finished our set-up: the sync read failed.) */
    if (cfg->die_with_daemon && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        child_fail(c, SPAWN_STEP_SETUID, NULL);

    for (size_t i = 0; i < cfg->n_mounts; i++)
        if (child_mount_op(c, i) < 0)
            child_fail(c, SPAWN_STEP_MOUNT, cfg->mounts[i].dst);

    /* In our cgroup(s) now: a cgroup namespace rooted there hides the host's hierarchy. */
    if (read(c->sync_fd, &byte, 1) != 1)
        child_fail(c, SPAWN_STEP_SYNC, "cgroup");
    close(c->sync_fd);
    if (unshare(CLONE_NEWCGROUP) < 0)
        child_fail(c, SPAWN_STEP_CGROUPNS, NULL);

    if (sethostname(cfg->hostname, child_strlen(cfg->hostname)) < 0)
        child_fail(c, SPAWN_STEP_HOSTNAME, cfg->hostname);
    if (child_loopback_up() < 0)
        child_fail(c, SPAWN_STEP_LOOPBACK, NULL);

    /* pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then drops
     * it, so no path leads back to the host's tree. */
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        child_fail(c, SPAWN_STEP_PIVOT, NULL);
    if (umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
        child_fail(c, SPAWN_STEP_PIVOT, "detach old root");

    if (child_setup_fds(c) < 0)
        child_fail(c, SPAWN_STEP_FDS, NULL);
    if (child_drop_caps(cfg->keep_caps, cfg->cap_last) < 0)
        child_fail(c, SPAWN_STEP_CAPS, NULL);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(c, SPAWN_STEP_NNP, NULL);

    struct rlimit core = {0, 0}, nofile;
    if (setrlimit(RLIMIT_CORE, &core) < 0 || getrlimit(RLIMIT_NOFILE, &nofile) < 0)
        child_fail(c, SPAWN_STEP_RLIMIT, NULL);
    if (nofile.rlim_max > 65536)
        nofile.rlim_max = 65536;
    nofile.rlim_cur = nofile.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &nofile) < 0)
        child_fail(c, SPAWN_STEP_RLIMIT, "nofile");
    /* Defence in depth (see sandbox.c for the value). */
    struct rlimit fsize = {cfg->fsize_limit, cfg->fsize_limit};
    if (cfg->fsize_limit && setrlimit(RLIMIT_FSIZE, &fsize) < 0)
        child_fail(c, SPAWN_STEP_RLIMIT, "fsize");

    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, cfg->seccomp, 0, 0) < 0)
        child_fail(c, SPAWN_STEP_SECCOMP, NULL);

    /* The daemon ignores SIGPIPE and its threads block signals; ignored dispositions and the
     * mask survive exec, so without this every command would start with them. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++)
        (void)sigaction(sig, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    umask(022); /* the plan ran with 0 for exact modes; commands get the conventional mask */

    char *const argv[] = {"warren-init", NULL};
    char *const envp[] = {NULL};
    syscall(SYS_execveat, 4, "", argv, envp, AT_EMPTY_PATH);
    child_fail(c, SPAWN_STEP_EXEC, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * Parent side.
 */

static int parent_write_maps(const struct spawn_config *cfg, pid_t pid, struct spawn_error *err)
{
    char path[64], map[96];
    int r;

    snprintf(map, sizeof(map), "0 %u %u\n", (unsigned)cfg->host_uid, cfg->id_count);
    snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
    if ((r = util_write_string(path, map)) < 0)
        goto idmap;
    snprintf(path, sizeof(path), "/proc/%d/setgroups", (int)pid);
    if ((r = util_write_string(path, "deny")) < 0)
        goto idmap;
    snprintf(map, sizeof(map), "0 %u %u\n", (unsigned)cfg->host_gid, cfg->id_count);
    snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
    if ((r = util_write_string(path, map)) < 0)
        goto idmap;
    return 0;
idmap:
    err->step = SPAWN_STEP_IDMAP;
    snprintf(err->detail, sizeof(err->detail), "%s", path);
    return r;
}

static int parent_attach_cgroups(const struct spawn_config *cfg, pid_t pid, struct spawn_error *err)
{
    char line[32];
    int r;
    snprintf(line, sizeof(line), "%d\n", (int)pid);
    for (size_t i = 0; i < cfg->n_cgroups; i++) {
        if ((r = util_write_string(cfg->cgroup_procs[i], line)) < 0) {
            err->step = SPAWN_STEP_CGROUP;
            snprintf(err->detail, sizeof(err->detail), "%s", cfg->cgroup_procs[i]);
            return r;
        }
    }
    return 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

void spawn_abort(struct spawn_pending *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        while (waitpid(p->pid, NULL, __WALL) < 0 && errno == EINTR)
            ;
        p->pid = -1;
    }
    close_fd(&p->pidfd);
    close_fd(&p->ctl_fd);
    close_fd(&p->status_fd);
}

int spawn_start(const struct spawn_config *cfg, struct spawn_pending *out, struct spawn_error *err)
{
    int sv[2] = {-1, -1}, syncp[2] = {-1, -1}, statusp[2] = {-1, -1}, pidfd = -1;
    int r;

    memset(err, 0, sizeof(*err));
    out->pid = -1;
    out->pidfd = out->ctl_fd = out->status_fd = -1;
    err->step = SPAWN_STEP_PREPARE;
    if (!cfg->seccomp || cfg->init_fd < 0)
        return -EINVAL;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0 ||
        pipe2(syncp, O_CLOEXEC) < 0 || pipe2(statusp, O_CLOEXEC) < 0) {
        r = -errno;
        goto error;
    }

    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC |
                 CLONE_NEWNET | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    args.exit_signal = SIGCHLD;
    err->step = SPAWN_STEP_CLONE;
    pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0) {
        r = -errno;
        goto error;
    }
    if (pid == 0) {
        /* Static: the child must not need a large stack frame, and this is its own copy. */
        static struct child_ctx c;
        c.cfg = cfg;
        c.sync_fd = syncp[0];
        c.status_fd = statusp[1];
        c.ctl_fd = sv[1];
        c.keep_fd = sv[0];
        close(syncp[1]);
        close(statusp[0]);
        child_main(&c);
    }
    out->pid = pid;
    out->pidfd = pidfd;
    out->ctl_fd = sv[0];
    out->status_fd = statusp[0];
    sv[0] = statusp[0] = -1;
    close_fd(&sv[1]);
    close_fd(&syncp[0]);
    close_fd(&statusp[1]);

    /* Two releases: the maps let the child build its file system; attaching to a cgroup can
     * wait for an RCU grace period (cgroup v1), so it overlaps with that work and the child
     * waits for it only before it unshares its cgroup namespace. */
    if ((r = parent_write_maps(cfg, pid, err)) < 0)
        goto error;
    err->step = SPAWN_STEP_SYNC;
    if (write(syncp[1], "m", 1) != 1) {
        r = -errno;
        goto error;
    }
    if ((r = parent_attach_cgroups(cfg, pid, err)) < 0)
        goto error;
    err->step = SPAWN_STEP_SYNC;
    if (write(syncp[1], "c", 1) != 1) {
        r = -errno;
        goto error;
    }
    close_fd(&syncp[1]);
    return 0;

error:
    spawn_abort(out);
    int fds[] = {sv[0], sv[1], syncp[0], syncp[1], statusp[0], statusp[1]};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return r;
}

int spawn_finish(struct spawn_pending *p, struct spawn_error *err)
{
    struct child_report rep;
    ssize_t n;
    int r;
    do
        n = read(p->status_fd, &rep, sizeof(rep));
    while (n < 0 && errno == EINTR);
    if (n == 0) {
        close_fd(&p->status_fd); /* closed by the exec: the init runs */
        err->step = SPAWN_STEP_NONE;
        return 0;
    }
    err->step = SPAWN_STEP_WAIT;
    r = n < 0 ? -errno : -EIO;
    if (n == (ssize_t)sizeof(rep)) {
        err->step = (enum spawn_step)rep.step;
        rep.detail[sizeof(rep.detail) - 1] = '\0';
        snprintf(err->detail, sizeof(err->detail), "%s", rep.detail);
        r = -rep.err;
    }
    spawn_abort(p);
    return r;
}
