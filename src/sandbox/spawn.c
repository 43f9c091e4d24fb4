/*
 * spawn — clone3() into new namespaces, build the root filesystem, drop privileges, exec the init.
 *
 * The child side (child_*) runs in the daemon's address space (CLONE_VM, see spawn.h): it may only
 * make raw system calls (CSYS) and touch its struct spawn_child and its stack (no malloc, no stdio,
 * no locks, no errno). It reports the first failure as (step, errno, detail) on a close-on-exec
 * status pipe and exits; a successful exec closes the pipe, which the parent reads as success.
 *
 * Order matters, and why:
 *  1. parent: clone3(VM|NEWUSER|NEWPID|NEWNS|NEWUTS|NEWIPC|NEWNET), writes uid/gid maps (with
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
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
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
 * Child side: from clone3() to the exec of the init. The child runs in the daemon's address space
 * (CLONE_VM), on its own stack, while the daemon's threads go on. So it touches no memory but its
 * struct spawn_child (its own copy of the config, made before the clone) and its stack, and it
 * makes system calls only through child_sys(), which returns -errno: glibc's wrappers would write
 * errno and the cancellation state into the TLS of the daemon thread that cloned it, a thread that
 * is running meanwhile.
 */

struct child_report {
    int32_t step;
    int32_t err;
    char detail[SPAWN_PATH_MAX];
};

/* Size of the child's stack: its deepest frame holds a child_report and a struct stat. */
#define CHILD_STACK (64 * 1024)

/* One mapping per child: a guard page, the stack, then this. */
struct spawn_child {
    struct spawn_config cfg; /* the caller's, with `data` and `seccomp` pointing into `arena` */
    struct sock_fprog prog;
    int sync_fd;
    int status_fd;
    int ctl_fd;
    int keep_fd;                        /* the daemon's end, held by the init for the next daemon */
    int parent_fds[2];                  /* the daemon's ends of the pipes: closed first */
    int early_fd[SPAWN_MAX_MOUNTS];     /* for open_early ops, else -1 */
    char early_src[SPAWN_PATH_MAX / 8]; /* "/proc/self/fd/N" of the op being mounted */
    size_t map_len;                     /* the whole mapping, from its guard page */
    char arena[];                       /* copies of the mount ops' data and the seccomp filter */
};

#if defined(__x86_64__)
static inline long child_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* clone3() whose child calls fn(c) on the stack clone_args gives it and never returns: the
 * child cannot return into this function's frame, which belongs to the parent's stack. */
static long clone3_call(struct clone_args *args, void (*fn)(struct spawn_child *),
                        struct spawn_child *c)
{
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = c;
    long ret;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "ud2\n"
                     "1:"
                     : "=a"(ret)
                     : "a"((long)SYS_clone3), "D"(args), "S"(sizeof(*args)), "r"(r12), "r"(r13)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
static inline long child_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc 0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory");
    return x0;
}

static long clone3_call(struct clone_args *args, void (*fn)(struct spawn_child *),
                        struct spawn_child *c)
{
    register long x8 __asm__("x8") = SYS_clone3;
    register long x0 __asm__("x0") = (long)args;
    register long x1 __asm__("x1") = (long)sizeof(*args);
    register void *x19 __asm__("x19") = (void *)fn;
    register void *x20 __asm__("x20") = c;
    __asm__ volatile("svc 0\n\t"
                     "cbnz x0, 1f\n\t"
                     "mov x29, xzr\n\t"
                     "mov x0, x20\n\t"
                     "blr x19\n\t"
                     "brk #0\n"
                     "1:"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x19), "r"(x20)
                     : "x30", "memory");
    return x0;
}
#else
#error "sandbox/spawn.c: child_sys6() and clone3_call() are written for x86_64 and aarch64"
#endif

/* The child's functions are not instrumented by AddressSanitizer (SAN=1): its runtime keeps
 * per-thread state that the child would share with the thread that cloned it. */
#define CHILD_CODE __attribute__((no_sanitize_address))

#define CSYS_(n, a, b, c, d, e, f, ...)                                                            \
    child_sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))
/* CSYS(SYS_x, args...): the system call, 0 or more, or -errno. */
#define CSYS(...) CSYS_(__VA_ARGS__, 0, 0, 0, 0, 0, 0)

CHILD_CODE static size_t child_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

CHILD_CODE static __attribute__((noreturn)) void
child_fail(struct spawn_child *c, enum spawn_step step, long r, const char *detail)
{
    struct child_report rep;
    rep.step = step;
    rep.err = r < 0 ? (int32_t)-r : EIO;
    size_t n = detail ? child_strlen(detail) : 0;
    if (n >= sizeof(rep.detail))
        n = sizeof(rep.detail) - 1;
    for (size_t i = 0; i < n; i++)
        rep.detail[i] = detail[i];
    rep.detail[n] = '\0';
    (void)CSYS(SYS_write, c->status_fd, &rep, sizeof(rep));
    for (;;)
        (void)CSYS(SYS_exit_group, 1);
}

CHILD_CODE static long child_lstat(const char *path, struct stat *sb)
{
    return CSYS(SYS_newfstatat, AT_FDCWD, path, sb, AT_SYMLINK_NOFOLLOW);
}

/* Creates the directory an op mounts on. Its parents exist (spawn_config_add planned them); an
 * existing directory is fine (e.g. dev/pts inside a read-only /dev snapshot). */
CHILD_CODE static long child_mkdir(const char *path, unsigned mode)
{
    struct stat sb;
    long r = CSYS(SYS_mkdirat, AT_FDCWD, path, mode);
    if (r == 0 || r != -EEXIST)
        return r;
    if ((r = child_lstat(path, &sb)) < 0)
        return r;
    return S_ISDIR(sb.st_mode) ? 0 : -EEXIST;
}

CHILD_CODE static long child_mount(const char *src, const char *dst, const char *type,
                                   unsigned long flags, const void *data)
{
    return CSYS(SYS_mount, src, dst, type, flags, data);
}

CHILD_CODE static long child_bind(const struct mount_op *op, const char *src, unsigned long extra)
{
    long r;
    if (op->src_is_dir) {
        if ((r = child_mkdir(op->dst, 0755)) < 0)
            return r;
    } else {
        long fd =
            CSYS(SYS_openat, AT_FDCWD, op->dst, O_CREAT | O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
            return fd;
        CSYS(SYS_close, fd);
    }
    if ((r = child_mount(src, op->dst, NULL, MS_BIND, NULL)) < 0)
        return r;
    return child_mount(NULL, op->dst, NULL, MS_BIND | MS_REMOUNT | extra | op->locked, NULL);
}

/* Formats "/proc/self/fd/<fd>" without stdio. */
CHILD_CODE static const char *child_fd_path(char *out, size_t cap, int fd)
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

CHILD_CODE static long child_mount_op(struct spawn_child *c, size_t idx)
{
    const struct mount_op *op = &c->cfg.mounts[idx];
    const char *dst = op->dst, *src = op->src;
    const unsigned long own = MS_NOSUID | MS_NODEV | MS_NOEXEC; /* our proc/sys mounts' flags */
    struct stat sb;
    long r;
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
        if ((r = child_mkdir(dst, 0755)) < 0)
            return r;
        return child_mount("tmpfs", dst, "tmpfs", op->flags, op->data);
    case MOP_PROC:
        if ((r = child_mkdir(dst, 0555)) < 0)
            return r;
        return child_mount("proc", dst, "proc", own, NULL);
    case MOP_DEVPTS:
        if ((r = child_mkdir(dst, 0755)) < 0)
            return r;
        return child_mount("devpts", dst, "devpts", MS_NOSUID | MS_NOEXEC,
                           "newinstance,ptmxmode=0666,mode=0620");
    case MOP_SYSFS:
        if ((r = child_mkdir(dst, 0555)) < 0)
            return r;
        /* Optional: a kernel may refuse sysfs in a user namespace (e.g. when the host's /sys is
         * partly over-mounted). The sandbox then has an empty /sys, which only loses features. */
        (void)child_mount("sysfs", dst, "sysfs", MS_RDONLY | own, NULL);
        return 0;
    case MOP_MASK:
        if (child_lstat(dst, &sb) < 0)
            return 0; /* not in this kernel */
        if (S_ISDIR(sb.st_mode))
            return child_mount("tmpfs", dst, "tmpfs", MS_RDONLY | own, "size=0,mode=0555");
        return child_mount("/dev/null", dst, NULL, MS_BIND, NULL);
    case MOP_READONLY:
        if (child_lstat(dst, &sb) < 0)
            return 0;
        if ((r = child_mount(dst, dst, NULL, MS_BIND | MS_REC, NULL)) < 0)
            return r;
        return child_mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | own, NULL);
    case MOP_DIR:
        return child_mkdir(dst, op->mode); /* umask is 0 in the child */
    case MOP_SYMLINK:
        /* A restarted sandbox's root has it already (or whatever the sandbox made of it: its
         * root is its own, as a container's is across restarts). */
        r = CSYS(SYS_symlinkat, op->src, AT_FDCWD, dst);
        return r == -EEXIST ? 0 : r;
    case MOP_FILE: {
        long fd = CSYS(SYS_openat, AT_FDCWD, dst,
                       O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, op->mode);
        if (fd < 0)
            return fd;
        size_t n = op->data ? child_strlen(op->data) : 0;
        long w = n ? CSYS(SYS_write, fd, op->data, n) : 0;
        CSYS(SYS_close, fd);
        return w < 0 ? w : (size_t)w == n ? 0 : -EIO;
    }
    }
    return -EINVAL;
}

CHILD_CODE static long child_loopback_up(void)
{
    long s = CSYS(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return s;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_name[0] = 'l';
    ifr.ifr_name[1] = 'o';
    ifr.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
    long r = CSYS(SYS_ioctl, s, SIOCSIFFLAGS, &ifr);
    CSYS(SYS_close, s);
    return r;
}

/* Moves fd to `target` (no close-on-exec unless cloexec), being careful about collisions. */
CHILD_CODE static long child_place_fd(long fd, int target, int cloexec)
{
    if (fd == target)
        return CSYS(SYS_fcntl, fd, F_SETFD, cloexec ? FD_CLOEXEC : 0);
    return CSYS(SYS_dup3, fd, target, cloexec ? O_CLOEXEC : 0);
}

CHILD_CODE static long child_setup_fds(struct spawn_child *c)
{
    long r;
    /* Lift every fd we keep above the range we are about to fill, then place them. */
    long ctl = CSYS(SYS_fcntl, c->ctl_fd, F_DUPFD_CLOEXEC, 10);
    long ini = CSYS(SYS_fcntl, c->cfg.init_fd, F_DUPFD_CLOEXEC, 10);
    long st = CSYS(SYS_fcntl, c->status_fd, F_DUPFD_CLOEXEC, 10);
    long keep = CSYS(SYS_fcntl, c->keep_fd, F_DUPFD_CLOEXEC, 10);
    if (ctl < 0 || ini < 0 || st < 0 || keep < 0)
        return ctl < 0 ? ctl : ini < 0 ? ini : st < 0 ? st : keep;
    if ((r = child_place_fd(ctl, WPROTO_CTL_FD, 0)) < 0 || (r = child_place_fd(ini, 4, 1)) < 0 ||
        (r = child_place_fd(st, 5, 1)) < 0 || (r = child_place_fd(keep, WPROTO_KEEP_FD, 0)) < 0)
        return r;
    c->status_fd = 5;
    if ((r = CSYS(SYS_close_range, WPROTO_KEEP_FD + 1, ~0U, 0)) < 0)
        return r;
    /* The daemon's stdio must not reach the sandbox. */
    long null = CSYS(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        return null;
    for (int i = 0; i < 3; i++)
        if ((r = CSYS(SYS_dup3, null, i, 0)) < 0)
            return r;
    return CSYS(SYS_close, null);
}

CHILD_CODE static long child_drop_caps(unsigned long long keep, int cap_last)
{
    long r;
    for (int cap = 0; cap <= cap_last; cap++) {
        if (keep & (1ULL << cap))
            continue;
        if ((r = CSYS(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0)) < 0 && r != -EINVAL)
            return r;
    }
    if ((r = CSYS(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)) < 0 &&
        r != -EINVAL)
        return r;
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    data[0].effective = data[0].permitted = (uint32_t)keep;
    data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
    return CSYS(SYS_capset, &hdr, data);
}

/* The kernel's struct sigaction (rt_sigaction), for SIG_DFL: no restorer needed. */
struct child_sigaction {
    unsigned long handler;
    unsigned long flags;
    unsigned long restorer;
    uint64_t mask;
};

CHILD_CODE static long child_rlimit(int resource, unsigned long long cur, unsigned long long max)
{
    struct rlimit rl = {cur, max};
    return CSYS(SYS_prlimit64, 0, resource, &rl, NULL);
}

CHILD_CODE static __attribute__((noreturn)) void child_main(struct spawn_child *c)
{
    const struct spawn_config *cfg = &c->cfg;
    char byte;
    long r;

    CSYS(SYS_close, c->parent_fds[0]);
    CSYS(SYS_close, c->parent_fds[1]);
    if ((r = CSYS(SYS_read, c->sync_fd, &byte, 1)) != 1) /* uid/gid maps written */
        child_fail(c, SPAWN_STEP_SYNC, r, NULL);

    if ((r = child_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) < 0)
        child_fail(c, SPAWN_STEP_PROPAGATION, r, NULL);
    /* A tmpfs (uid=0,gid=0 are read in the new user namespace: it belongs to the sandbox's
     * root), or the directory itself bound on itself, because pivot_root needs a mount point. */
    if (cfg->root_opts[0])
        r = child_mount("tmpfs", cfg->root_dir, "tmpfs", MS_NOSUID | MS_NODEV, cfg->root_opts);
    else if ((r = child_mount(cfg->root_dir, cfg->root_dir, NULL, MS_BIND, NULL)) == 0)
        r = child_mount(NULL, cfg->root_dir, NULL,
                        MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOATIME, NULL);
    if (r < 0 || (r = CSYS(SYS_chdir, cfg->root_dir)) < 0)
        child_fail(c, SPAWN_STEP_ROOT, r, cfg->root_dir);
    /* Opened here, in our own mount namespace (a bind source from another namespace is refused)
     * and while we may still traverse root-only directories. */
    for (size_t i = 0; i < cfg->n_mounts; i++) {
        c->early_fd[i] = -1;
        if (!cfg->mounts[i].open_early)
            continue;
        if ((r = CSYS(SYS_openat, AT_FDCWD, cfg->mounts[i].src, O_PATH | O_CLOEXEC)) < 0)
            child_fail(c, SPAWN_STEP_MOUNT, r, cfg->mounts[i].src);
        c->early_fd[i] = (int)r;
    }

    /* Raw system calls change the ids of this process only (glibc's would also signal the
     * threads of the daemon). */
    if ((r = CSYS(SYS_setresgid, 0, 0, 0)) < 0 || (r = CSYS(SYS_setresuid, 0, 0, 0)) < 0)
        child_fail(c, SPAWN_STEP_SETUID, r, NULL);
    CSYS(SYS_umask, 0); /* modes in the plan are exact */
    /* Normally no PR_SET_PDEATHSIG: the sandbox outlives the daemon (sandbox/proto.h). (A
     * daemon that died before this line cannot have finished our set-up: the sync read failed.) */
    if (cfg->die_with_daemon && (r = CSYS(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL)) < 0)
        child_fail(c, SPAWN_STEP_SETUID, r, NULL);

    for (size_t i = 0; i < cfg->n_mounts; i++)
        if ((r = child_mount_op(c, i)) < 0)
            child_fail(c, SPAWN_STEP_MOUNT, r, cfg->mounts[i].dst);

    /* In our cgroup(s) now: a cgroup namespace rooted there hides the host's hierarchy. */
    if ((r = CSYS(SYS_read, c->sync_fd, &byte, 1)) != 1)
        child_fail(c, SPAWN_STEP_SYNC, r, "cgroup");
    CSYS(SYS_close, c->sync_fd);
    if ((r = CSYS(SYS_unshare, CLONE_NEWCGROUP)) < 0)
        child_fail(c, SPAWN_STEP_CGROUPNS, r, NULL);

    if ((r = CSYS(SYS_sethostname, cfg->hostname, child_strlen(cfg->hostname))) < 0)
        child_fail(c, SPAWN_STEP_HOSTNAME, r, cfg->hostname);
    if ((r = child_loopback_up()) < 0)
        child_fail(c, SPAWN_STEP_LOOPBACK, r, NULL);

    /* pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then drops
     * it, so no path leads back to the host's tree. */
    if ((r = CSYS(SYS_pivot_root, ".", ".")) < 0)
        child_fail(c, SPAWN_STEP_PIVOT, r, NULL);
    if ((r = CSYS(SYS_umount2, ".", MNT_DETACH)) < 0 || (r = CSYS(SYS_chdir, "/")) < 0)
        child_fail(c, SPAWN_STEP_PIVOT, r, "detach old root");

    if ((r = child_setup_fds(c)) < 0)
        child_fail(c, SPAWN_STEP_FDS, r, NULL);
    if ((r = child_drop_caps(cfg->keep_caps, cfg->cap_last)) < 0)
        child_fail(c, SPAWN_STEP_CAPS, r, NULL);
    if ((r = CSYS(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) < 0)
        child_fail(c, SPAWN_STEP_NNP, r, NULL);

    struct rlimit nofile;
    if ((r = child_rlimit(RLIMIT_CORE, 0, 0)) < 0 ||
        (r = CSYS(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, &nofile)) < 0)
        child_fail(c, SPAWN_STEP_RLIMIT, r, NULL);
    if (nofile.rlim_max > 65536)
        nofile.rlim_max = 65536;
    if ((r = child_rlimit(RLIMIT_NOFILE, nofile.rlim_max, nofile.rlim_max)) < 0)
        child_fail(c, SPAWN_STEP_RLIMIT, r, "nofile");
    /* Defence in depth (see sandbox.c for the value). */
    if (cfg->fsize_limit &&
        (r = child_rlimit(RLIMIT_FSIZE, cfg->fsize_limit, cfg->fsize_limit)) < 0)
        child_fail(c, SPAWN_STEP_RLIMIT, r, "fsize");

    if ((r = CSYS(SYS_prctl, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, cfg->seccomp, 0, 0)) < 0)
        child_fail(c, SPAWN_STEP_SECCOMP, r, NULL);

    /* The daemon ignores SIGPIPE and handles others; ignored dispositions and the mask survive
     * exec, so without this every command would start with them. Signals have been blocked since
     * before the clone: a handler of the daemon must never run here. */
    struct child_sigaction dfl = {(unsigned long)SIG_DFL, 0, 0, 0};
    for (int sig = 1; sig < _NSIG; sig++)
        (void)CSYS(SYS_rt_sigaction, sig, &dfl, NULL, sizeof(dfl.mask));
    CSYS(SYS_umask, 022); /* the plan ran with 0 for exact modes; commands get the usual mask */
    uint64_t none = 0;
    CSYS(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof(none));

    char *const argv[] = {"warren-init", NULL};
    char *const envp[] = {NULL};
    r = CSYS(SYS_execveat, 4, "", argv, envp, AT_EMPTY_PATH);
    child_fail(c, SPAWN_STEP_EXEC, r, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * Parent side. Runs on the daemon's loop thread only (see spawn.h).
 */

/* Children between clone and exec, and whether the daemon was dumpable before the first of them:
 * a child's setresuid makes the address space it shares with the daemon non-dumpable (as it
 * should be while a process with the sandbox's ids runs in it); the daemon gets its flag back
 * once no child is left in it. */
static unsigned children_in_setup;
static int daemon_dumpable;

static struct spawn_child *child_alloc(const struct spawn_config *cfg)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), data = 0;
    for (size_t i = 0; i < cfg->n_mounts; i++)
        if (cfg->mounts[i].data)
            data += strlen(cfg->mounts[i].data) + 1;
    size_t filter = (size_t)cfg->seccomp->len * sizeof(struct sock_filter);
    size_t len = page + CHILD_STACK + sizeof(struct spawn_child) + filter + data;
    len = (len + page - 1) / page * page;
    char *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    if (mprotect(map, page, PROT_NONE) < 0) { /* the stack's guard page */
        munmap(map, len);
        return NULL;
    }
    struct spawn_child *c = (struct spawn_child *)(map + page + CHILD_STACK);
    /* The plan's used part only: the rest of the mapping is zero already. */
    memcpy(&c->cfg, cfg, offsetof(struct spawn_config, mounts));
    memcpy(c->cfg.mounts, cfg->mounts, cfg->n_mounts * sizeof(cfg->mounts[0]));
    memcpy((char *)&c->cfg + offsetof(struct spawn_config, n_mounts), &cfg->n_mounts,
           sizeof(*cfg) - offsetof(struct spawn_config, n_mounts));
    char *arena = c->arena;
    memcpy(arena, cfg->seccomp->filter, filter);
    c->prog.len = cfg->seccomp->len;
    c->prog.filter = (struct sock_filter *)arena;
    c->cfg.seccomp = &c->prog;
    arena += filter;
    for (size_t i = 0; i < cfg->n_mounts; i++) {
        const char *d = cfg->mounts[i].data;
        if (!d)
            continue;
        /* A generated file's content is in file_data, copied with the config. */
        if (d >= (const char *)cfg->file_data &&
            d < (const char *)cfg->file_data + sizeof(cfg->file_data)) {
            c->cfg.mounts[i].data =
                (const char *)c->cfg.file_data + (d - (const char *)cfg->file_data);
            continue;
        }
        size_t n = strlen(d) + 1;
        memcpy(arena, d, n);
        c->cfg.mounts[i].data = arena;
        arena += n;
    }
    c->map_len = len;
    c->sync_fd = c->status_fd = c->ctl_fd = c->keep_fd = -1;
    c->parent_fds[0] = c->parent_fds[1] = -1;
    return c;
}

/* The child has exec'd (its pipe end closed after it left this address space) or is reaped. */
static void child_free(struct spawn_pending *p)
{
    struct spawn_child *c = p->child;
    if (!c)
        return;
    p->child = NULL;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    munmap((char *)c - CHILD_STACK - page, c->map_len);
    if (--children_in_setup == 0 && daemon_dumpable > 0)
        prctl(PR_SET_DUMPABLE, daemon_dumpable, 0, 0, 0);
}

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
    child_free(p); /* reaped, or never cloned */
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
    out->child = NULL;
    err->step = SPAWN_STEP_PREPARE;
    if (!cfg->seccomp || cfg->init_fd < 0)
        return -EINVAL;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0 ||
        pipe2(syncp, O_CLOEXEC) < 0 || pipe2(statusp, O_CLOEXEC) < 0) {
        r = -errno;
        goto error;
    }
    struct spawn_child *c = child_alloc(cfg);
    if (!c) {
        r = -ENOMEM;
        goto error;
    }
    if (children_in_setup++ == 0)
        daemon_dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    out->child = c;
    c->sync_fd = syncp[0];
    c->status_fd = statusp[1];
    c->ctl_fd = sv[1];
    c->keep_fd = sv[0];
    c->parent_fds[0] = syncp[1];
    c->parent_fds[1] = statusp[0];

    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = CLONE_VM | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS |
                 CLONE_NEWIPC | CLONE_NEWNET | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    args.exit_signal = SIGCHLD;
    args.stack = (uint64_t)(uintptr_t)((char *)c - CHILD_STACK);
    args.stack_size = CHILD_STACK;
    /* Every signal blocked across the clone, so the child starts with them blocked: a handler of
     * the daemon running in the child would act on the daemon's memory. The child unblocks
     * them after resetting every disposition. */
    uint64_t all = ~0ULL, old;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof(all));
    err->step = SPAWN_STEP_CLONE;
    long pid = clone3_call(&args, child_main, c);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof(old));
    if (pid < 0) {
        r = (int)pid;
        goto error;
    }
    out->pid = (pid_t)pid;
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
    if ((r = parent_write_maps(cfg, out->pid, err)) < 0)
        goto error;
    err->step = SPAWN_STEP_SYNC;
    if (write(syncp[1], "m", 1) != 1) {
        r = -errno;
        goto error;
    }
    if ((r = parent_attach_cgroups(cfg, out->pid, err)) < 0)
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
        /* Closed by the exec, after the child left the daemon's address space: the init runs. */
        child_free(p);
        close_fd(&p->status_fd);
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
