/*
 * cgroup — one cgroup per sandbox, on cgroup v2 (unified) or v1 (one hierarchy per controller).
 *
 * The mode is detected once at start-up (cgroup_manager_init). Sandboxes are placed below the
 * daemon's own cgroup, so whatever limits the host puts on the daemon also bound its sandboxes:
 *   v2: <daemon cgroup>/warren/<name>  (the daemon moves itself to <daemon cgroup>/warren-daemon
 *       first, because v2 forbids processes in inner nodes that delegate controllers, then
 *       enables memory, pids and cpu in <daemon cgroup>/cgroup.subtree_control). At exit it
 *       undoes all of that, so that a supervisor can start it again in the same cgroup. In the
 *       root cgroup it stays where it is and leaves the root's controllers enabled (they are the
 *       whole system's).
 *   v1: <controller mount><daemon cgroup in that controller>/warren/<name> for memory, pids, cpu,
 *       freezer and cpuacct.
 * `fs_root` is normally "/sys/fs/cgroup"; unit tests point it at a fake tree.
 *
 * Errors: 0 or -errno. Paths are fixed-size buffers inside the structs (no ownership to track).
 */
#ifndef WARREN_SANDBOX_CGROUP_H
#define WARREN_SANDBOX_CGROUP_H

#include <stddef.h>

#define CGROUP_PATH_MAX 512
#define CGROUP_V1_CONTROLLERS 5

enum cgroup_mode { CGROUP_NONE = 0, CGROUP_V1, CGROUP_V2 };

struct cgroup_manager {
    enum cgroup_mode mode;
    /* v2: [0] is the parent of all sandbox cgroups. v1: one base per controller, in the order of
     * cgroup_v1_controllers[]; an empty string means that controller is not mounted. */
    char base[CGROUP_V1_CONTROLLERS][CGROUP_PATH_MAX];
    /* v2 only: the cgroup the daemon was started in, whether it made <home>/warren-daemon to
     * move itself into, and which controllers (bit i = cgroup_v2_controllers[i]) it enabled in
     * <home>/cgroup.subtree_control: what cgroup_manager_cleanup() puts back. */
    char home[CGROUP_PATH_MAX];
    int moved;
    unsigned enabled;
};

struct cgroup_limits {
    double cpus;               /* 0 = unlimited */
    unsigned long long memory; /* bytes, 0 = unlimited; swap is limited to the same total */
    unsigned long long pids;   /* 0 = unlimited */
};

#define CGROUP_V2_CONTROLLERS 3

extern const char *const cgroup_v1_controllers[CGROUP_V1_CONTROLLERS];
/* What every sandbox's cgroup needs on v2: memory, pids, cpu. */
extern const char *const cgroup_v2_controllers[CGROUP_V2_CONTROLLERS];

const char *cgroup_mode_name(enum cgroup_mode mode);
/* Detects the mode below fs_root and prepares the warren parent cgroup(s). `self_cgroup` is the
 * path of a /proc/<pid>/cgroup file describing the daemon. On failure nothing is left behind
 * (the daemon is back in its own cgroup), m->mode is CGROUP_NONE and `err` (`cap` bytes) says
 * what is wrong and how to fix it, for the operator. -ENOENT: no usable cgroup file system;
 * -ENOTSUP: on v2, the daemon's cgroup lacks one of cgroup_v2_controllers (its parent does not
 * delegate it); -EBUSY: on v2, other processes share the daemon's cgroup; other -errno: a
 * cgroup file could not be written. */
int cgroup_manager_init(struct cgroup_manager *m, const char *fs_root, const char *self_cgroup,
                        char *err, size_t cap);
/* Creates the sandbox's cgroup(s) with `limits` and returns the cgroup.procs / tasks files the
 * sandbox's init must be written to (`procs` has room for CGROUP_V1_CONTROLLERS entries). */
int cgroup_create(const struct cgroup_manager *m, const char *name,
                  const struct cgroup_limits *limits, char procs[][CGROUP_PATH_MAX],
                  size_t *n_procs);
/* Changes the limits of an existing sandbox cgroup; a field of 0 is left as it is. Lowering
 * memory below what the cgroup uses makes the kernel reclaim: on v1 the write fails with -EBUSY
 * when it cannot, on v2 it succeeds and the OOM killer makes room (so callers compare with
 * cgroup_usage() first). -ENOENT when the cgroup does not exist, -ENOTSUP for CGROUP_NONE. A
 * failure may leave the limits written before it applied. */
int cgroup_set_limits(const struct cgroup_manager *m, const char *name,
                      const struct cgroup_limits *limits);
/* Kills what is left in the sandbox's cgroup(s) and removes them. Missing ones are ignored. */
int cgroup_destroy(const struct cgroup_manager *m, const char *name);

struct cgroup_usage {
    unsigned long long memory_bytes; /* current, page cache and tmpfs included */
    unsigned long long pids;
    unsigned long long cpu_usec;  /* CPU time used since creation */
    unsigned long long oom_kills; /* processes the OOM killer ended in this cgroup */
};
/* Reads the sandbox's counters; what a hierarchy does not provide reads as 0. */
int cgroup_usage(const struct cgroup_manager *m, const char *name, struct cgroup_usage *u);
/* Asks the kernel to freeze (1) or thaw (0) every process of the sandbox. Thawing is immediate;
 * freezing completes asynchronously: poll cgroup_is_frozen() (and, on v1, asking again while the
 * state is FREEZING is how stragglers are retried). -ENOTSUP without a freezer. */
int cgroup_freeze(const struct cgroup_manager *m, const char *name, int frozen);
/* 1 once every process of the sandbox is frozen, 0 while freezing, -errno. */
int cgroup_is_frozen(const struct cgroup_manager *m, const char *name);

/* At daemon exit, once every sandbox is gone: removes the warren parent cgroup(s) and, on v2,
 * disables the controllers the daemon enabled, moves it back to its own cgroup and removes
 * <home>/warren-daemon. Stops at the first step that fails (the parent still holds another
 * daemon's sandboxes) and logs it as a warning. A no-op for CGROUP_NONE. */
void cgroup_manager_cleanup(const struct cgroup_manager *m);

#endif
