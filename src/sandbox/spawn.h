/*
 * spawn — creates a sandbox: one clone3() into new namespaces, the root filesystem, then exec of
 * the init (see init.c). Everything that runs between clone and exec lives in spawn.c.
 *
 * Usage: fill a struct spawn_config (sandbox/template.c builds the `host` template's plan), call
 * spawn_start(), watch the status fd, then spawn_finish(). All strings, paths and buffers the
 * child needs are prepared before clone3() (spawn_start copies the config), so the child only
 * makes system calls.
 *
 * How the child is made: clone3(CLONE_VM) on a stack of its own, not a copy of the daemon. The
 * daemon is a large multi-threaded process; a clone without CLONE_VM copies its page tables, the
 * child then faults on copy-on-write pages, its exec tears the copy down again, and the daemon
 * itself faults on every page it writes afterwards: about 0.6 ms of a 2 ms create
 * (bench/RESULTS.md). With CLONE_VM the child runs in the daemon's address space until its exec,
 * while the daemon goes on, so the child (spawn.c, "Child side") touches only its own copy of the
 * config and its stack, calls no glibc function that uses thread state (errno, cancellation), and
 * starts with every signal blocked (a daemon handler must never run in it). Not CLONE_VFORK: that
 * would stop the cloning thread until the exec, and that thread has to write the child's uid/gid
 * maps and cgroups meanwhile. Not a separate small "spawner" process that clones on the daemon's
 * behalf: the same saving without a process to supervise and restart, a protocol to pass configs
 * and fds over, or a second parent (the daemon must stay the init's parent to reap it with
 * waitid(P_PIDFD)). One side effect: the child's setresuid makes the shared address space
 * non-dumpable, as it should be while a process with the sandbox's ids runs in it; spawn.c gives
 * the daemon its dumpable flag back when no child is left between clone and exec.
 *
 * Threading: the loop thread only (one thread: the dumpable bookkeeping is not locked).
 *
 * Errors: 0, or -errno with `err->step` naming the step that failed (the child reports its
 * failing step and errno through a status pipe before it _exit()s).
 * Nothing is left behind on failure: the child is killed and reaped, fds are closed.
 */
#ifndef WARREN_SANDBOX_SPAWN_H
#define WARREN_SANDBOX_SPAWN_H

#include <linux/filter.h>
#include <stddef.h>
#include <sys/types.h>

#define SPAWN_MAX_MOUNTS 128
#define SPAWN_MAX_CGROUPS 8
#define SPAWN_PATH_MAX 512

/* The steps of sandbox setup, in order. The names appear in API errors. */
enum spawn_step {
    SPAWN_STEP_NONE = 0,
    SPAWN_STEP_PREPARE,     /* parent: fds, socketpair, pipes */
    SPAWN_STEP_CLONE,       /* parent: clone3 */
    SPAWN_STEP_IDMAP,       /* parent: uid_map / setgroups / gid_map */
    SPAWN_STEP_CGROUP,      /* parent: move the child into its cgroup(s) */
    SPAWN_STEP_SYNC,        /* child: waiting for the parent */
    SPAWN_STEP_SETUID,      /* child: become root of the user namespace */
    SPAWN_STEP_CGROUPNS,    /* child: unshare the cgroup namespace */
    SPAWN_STEP_PROPAGATION, /* child: make every mount private */
    SPAWN_STEP_ROOT,        /* child: tmpfs for the new root */
    SPAWN_STEP_MOUNT,       /* child: one of the mount ops (err->detail says which) */
    SPAWN_STEP_HOSTNAME,
    SPAWN_STEP_LOOPBACK, /* child: bring `lo` up */
    SPAWN_STEP_PIVOT,    /* child: pivot_root and detach the old root */
    SPAWN_STEP_FDS,
    SPAWN_STEP_CAPS, /* child: bounding set and capabilities */
    SPAWN_STEP_NNP,  /* child: no_new_privs */
    SPAWN_STEP_RLIMIT,
    SPAWN_STEP_SECCOMP,
    SPAWN_STEP_EXEC, /* child: exec of the init */
    SPAWN_STEP_WAIT, /* parent: reading the child's status */
};

const char *spawn_step_name(enum spawn_step step);

enum mount_op_kind {
    MOP_BIND_RO,  /* bind `src` read-only (nosuid, nodev) onto `dst`; dst created as dir or file */
    MOP_BIND_RW,  /* bind `src` read-write (nosuid, nodev) */
    MOP_BIND_DEV, /* bind device nodes (a node or a dir of them), nosuid, noexec, + `flags` */
    MOP_TMPFS,    /* tmpfs on `dst` with `data` options and `flags` */
    MOP_PROC,     /* procfs on `dst` */
    MOP_DEVPTS,   /* a new devpts instance on `dst` */
    MOP_SYSFS,    /* sysfs read-only on `dst`; optional: skipped if the kernel refuses */
    MOP_MASK,     /* hide `dst` if it exists: /dev/null over a file, empty ro tmpfs over a dir */
    MOP_READONLY, /* re-bind `dst` (inside our own proc/sys mounts) onto itself read-only */
    MOP_DIR,      /* mkdir `dst` with `mode` */
    MOP_SYMLINK,  /* symlink `dst` -> `src` */
    MOP_FILE,     /* create `dst` with `mode` and content `data` */
};

struct mount_op {
    enum mount_op_kind kind;
    unsigned long flags;
    unsigned mode;
    /* dst is relative to the new root ("usr", "etc/passwd"); src is a host path, or for a bind
     * of a file made by an earlier op (MOP_FILE), relative to the new root too. */
    char src[SPAWN_PATH_MAX];
    char dst[SPAWN_PATH_MAX];
    const char *data; /* not owned */
    /* Filled by spawn_config_add for binds, so the child makes no extra system calls: */
    int src_is_dir;
    unsigned long locked; /* the source mount's flags a bind remount must keep */
    /* Bind sources below a directory only host root may traverse (the state dir can be 0700)
     * are opened by the child before it becomes the sandbox's root. */
    int open_early;
};

struct spawn_config {
    /* identity */
    char hostname[64];
    uid_t host_uid; /* sandbox uid 0 maps here; `id_count` ids are mapped */
    gid_t host_gid;
    unsigned id_count;
    unsigned long long fsize_limit; /* RLIMIT_FSIZE in bytes; 0: unchanged */
    int die_with_daemon;            /* PR_SET_PDEATHSIG: the init is killed when the daemon exits */
    /* file system */
    char root_dir[SPAWN_PATH_MAX]; /* host directory that becomes the root (see root_opts) */
    char root_opts[96]; /* tmpfs options for a tmpfs root, e.g. "mode=0755,size=1g"; empty: bind
                           root_dir itself (a directory the sandbox's root owns) */
    struct mount_op mounts[SPAWN_MAX_MOUNTS];
    size_t n_mounts;
    /* cgroup seam: files the child's pid is written to before it continues (may be none) */
    char cgroup_procs[SPAWN_MAX_CGROUPS][SPAWN_PATH_MAX];
    size_t n_cgroups;
    /* policy */
    const struct sock_fprog *seccomp; /* required */
    unsigned long long keep_caps;     /* bit mask of capabilities kept inside */
    int cap_last;                     /* highest capability this kernel knows */
    int init_fd;                      /* executable fd of warren-init (sealed memfd) */
    /* storage for generated files (MOP_FILE data may point here) */
    char file_data[2][256];
};

struct spawn_child;

/* A sandbox whose child is still setting up (between spawn_start and spawn_finish). */
struct spawn_pending {
    pid_t pid;     /* host pid of the (future) init */
    int pidfd;     /* pidfd of the init (O_CLOEXEC) */
    int ctl_fd;    /* daemon end of the control socket (SOCK_SEQPACKET, O_CLOEXEC) */
    int status_fd; /* readable when the child has exec'd the init (EOF) or failed (report) */
    struct spawn_child *child; /* the child's stack and config, until it has exec'd or is reaped */
};

struct spawn_error {
    enum spawn_step step;
    int err;                     /* errno */
    char detail[SPAWN_PATH_MAX]; /* e.g. the mount destination */
};

/* Sets the defaults: no mounts, no cgroups, docker-like capability set, root owned by the
 * sandbox's root. */
void spawn_config_init(struct spawn_config *cfg);
/* Appends an op. Parent directories of `dst` that no earlier op creates get their own MOP_DIR
 * first; bind sources are inspected here (dir or file, locked mount flags). A relative bind
 * source is a file in the new root (root_dir must be set first). Returns 0 or -ENOSPC /
 * -ENAMETOOLONG / -EINVAL, or -errno when a bind source cannot be inspected. */
int spawn_config_add(struct spawn_config *cfg, enum mount_op_kind kind, const char *src,
                     const char *dst, unsigned long flags, unsigned mode, const char *data);

/* For a root_dir that already holds files (a sandbox started again on its disk): the child
 * creates and mounts on the plan's paths relative to root_dir *before* pivot_root, so a symlink
 * the sandbox left on one of them would send a mount or a file write outside its root. Checks
 * that no existing component of an op's path (and of a relative bind source) is a symlink
 * (except the last one of a MOP_SYMLINK) and that all but the last are directories. Also for a
 * root made from an untrusted image, whose content is the image's from the first start on. Nothing
 * may run in the root meanwhile, or the check proves nothing. Returns 0, or -ELOOP / -ENOTDIR /
 * -errno with the path (relative) in `bad`. */
int spawn_check_root(const struct spawn_config *cfg, char *bad, size_t badlen);

/* Clones the child and does the parent's part of the setup (id maps, cgroups), then lets the
 * child continue on its own. Returns without waiting: the caller watches `out->status_fd` and
 * calls spawn_finish() when it is readable. The config may be freed as soon as this returns
 * (the child has its own copy). */
int spawn_start(const struct spawn_config *cfg, struct spawn_pending *out, struct spawn_error *err);
/* Reads the child's outcome. 0: the init runs; status_fd is closed, the other fds are the
 * caller's. <0: setup failed (err says where); the child is reaped and every fd closed. */
int spawn_finish(struct spawn_pending *p, struct spawn_error *err);
/* Gives up on a pending sandbox: kills and reaps the child and closes every fd. */
void spawn_abort(struct spawn_pending *p);

/* Capability mask kept by default (like docker's default set minus MKNOD and NET_RAW). */
unsigned long long spawn_default_caps(void);

#endif
