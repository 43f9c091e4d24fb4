/*
 * sandbox — the registry of sandboxes and their lifecycle (create, stop, start, destroy, death),
 * and the control channel to each sandbox's init.
 *
 * Threading: everything here runs on the loop thread. Creation clones on the loop and waits for
 * the child's setup through its status pipe; destruction removes the sandbox's directory tree
 * (which may be large) on the uv thread pool.
 *
 * Ownership: the registry owns every struct sandbox. A sandbox is freed only after it was
 * destroyed (sandbox_destroy) and all its handles are closed; callers must not keep pointers
 * across loop turns unless they hold a reference (sandbox_ref/sandbox_unref).
 *
 * On-disk layout: <state_dir>/sandboxes/<id>/ is the sandbox's disk (sandbox/disk.h).
 *   host template: {root,workspace}, both owned by the sandbox's host uid; `root` becomes "/".
 *   image:         {upper,work,rootfs,workspace}: `upper` (owned by the sandbox's root, 0755) and
 *                  `work` (host root, 0700) are the overlay's (sandbox/rootfs.h), mounted on
 *                  `rootfs` in the daemon's mount namespace while the sandbox runs, over the
 *                  image's shared layers; `rootfs` becomes "/".
 */
#ifndef WARREN_SESSION_SANDBOX_H
#define WARREN_SESSION_SANDBOX_H

#include <jansson.h>
#include <linux/filter.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "sandbox/cgroup.h"
#include "sandbox/initctl.h"
#include "session/error.h"
#include "session/limits.h"
#include "store/store.h"

#define SANDBOX_ID_MAX 20
#define SANDBOX_NAME_MAX 64
#define SANDBOX_SESSION_MAX 128 /* a session id's length (session/sessions.h) */
/* Ids each sandbox has on the host: its root is sandbox_host_uid(), the rest follow. */
#define SANDBOX_UID_RANGE 65536u

/* creating → running ⇄ paused; running/paused → stopping → stopped → starting → running; any
 * → deleting (then freed). A stopped sandbox has no process, no init and no cgroup; it keeps its
 * disk (root and /workspace, mounted in the daemon's mount namespace), its uid range (its files
 * are owned by it), its identity and its spec. */
enum sandbox_state {
    SB_CREATING,
    SB_RUNNING,
    SB_PAUSED,
    SB_STOPPING, /* every process was sent SIGTERM; the init is killed after the grace period */
    SB_STOPPED,
    SB_STARTING, /* a new init is being cloned on the same disk */
    SB_DELETING, /* being destroyed: no longer found, freed when the cleanup is done */
    SB_FAILED,
};

struct proc;
struct command;
struct shell;
struct terminal;
struct sandbox;
struct host_template;
struct secrets;
struct disk_manager;
struct egress_policy;
struct egress_proxy;
struct egress_hosts;
struct egress_decision;
struct stop_op;
struct sblog;
struct audit;
struct volume;
struct restore_waiter;
struct released;

struct registry {
    uv_loop_t *loop;
    char state_dir[1024];
    const struct sock_fprog *seccomp;
    const struct host_template *tmpl;
    const struct secrets *secrets; /* names and values; values never leave the daemon */
    const struct cgroup_manager *cgroups;
    struct disk_manager *disks;              /* each sandbox's disk image (sandbox/disk.h) */
    const struct egress_hosts *egress_hosts; /* names the egress proxy resolves itself, or NULL */
    int host_netns;                          /* the loop thread's network namespace */
    /* Told every egress proxy decision, for the audit log (may be NULL). */
    void (*on_egress)(void *ud, const struct egress_decision *d);
    void *on_egress_ud;
    int init_fd;
    store_t *store;
    struct audit *audit; /* where expiries and idle stops are recorded (may be NULL) */
    char node[64];
    unsigned max_sandboxes;
    struct sandbox_resources defaults;
    /* On registry_shutdown(): stop every sandbox (they come back stopped) instead of leaving
     * them running for the next daemon. */
    int stop_on_exit;
    /* Sandboxes die with the daemon (their init has PR_SET_PDEATHSIG) instead of outliving it:
     * on cgroup v2 below a delegated cgroup (sandbox/cgroup.h), where sandboxes left running
     * would keep the daemon's supervisor from starting it again in its cgroup. */
    int die_with_daemon;
    /* Thin provisioning (registry_check_disk()): the disk sizes promised to all sandboxes may add
     * up to disk_overcommit × what the host has for them; below disk_reserve bytes free on the
     * host, creations are refused and sandboxes cannot write. */
    double disk_overcommit;
    int64_t disk_reserve;
    /* private */
    struct volume *volumes; /* session/volume.h */
    struct sandbox *head;
    unsigned count;   /* in the list (any state) */
    unsigned pending; /* creates and destroys in flight */
    unsigned char *uid_slots;
    void (*idle_cb)(struct registry *reg); /* called when count and pending reach 0 */
    uv_work_t pool_work;                   /* refilling the disk pool */
    int pool_filling;
    int disk_ballasted;    /* some sandbox disk may hold a ballast (registry_check_disk()) */
    uv_timer_t sweep;      /* expiries and idle stops (unreferenced: never keeps the loop alive) */
    unsigned left_running; /* sandboxes registry_shutdown() left running for the next daemon */
    double recover_s;      /* how long registry_recover() took */
    /* Records of deleted sandboxes, oldest first, kept released_ttl_s (session/sessions.h). */
    double released_ttl_s;
    struct released *released_head, *released_tail;
};

/* What a sandbox whose root is an OCI image needs of it: its unpacked layers and its config. */
struct sandbox_image {
    char **lowers; /* layer dirs (src/image's store), top first, 1..ROOTFS_MAX_LAYERS */
    size_t n_lowers;
    char **env;               /* the image's Env, "K=V", NULL-terminated (may be NULL) */
    char *workdir, *user;     /* WorkingDir and User; may be NULL */
    char **entrypoint, **cmd; /* NULL-terminated (may be NULL) */
    char template_name[512];  /* session/templates.h */
    char image[512];          /* its canonical reference; "" for an import or a snapshot */
    char digest[80];          /* its manifest's */
};

struct sandbox {
    struct registry *reg;
    struct sandbox *prev, *next;
    char id[SANDBOX_ID_MAX];
    char name[SANDBOX_NAME_MAX];
    char template_name[512];     /* "host", or a template of session/templates.h */
    struct sandbox_image *image; /* owned copy; NULL: the host template */
    /* The image's User, resolved against its /etc/passwd and /etc/group when its root was
     * mounted: every process runs as user_uid:user_gid (ids inside) when user_set. */
    int user_set;
    uid_t user_uid;
    gid_t user_gid;
    char user_home[256];
    enum sandbox_state state;
    json_t *labels;  /* object of strings (owned) */
    json_t *env;     /* object of strings (owned) */
    json_t *secrets; /* array of secret names (owned); the values stay in reg->secrets */
    json_t *volumes; /* [{name, path, read_only}] sorted by path (owned; session/volume.h) */
    struct sandbox_resources res;
    struct egress_policy *network; /* owned; never NULL once created (mode none at least) */
    struct egress_proxy *proxy;    /* serving 127.0.0.1:3128 inside unless the mode is none */
    double created_at;
    double last_active_at; /* the last API call on it or end of a command (sandbox_touch) */
    double ttl_s;          /* deleted at created_at + ttl_s; 0: never */
    double idle_timeout_s; /* stopped after this long idle; 0: never */
    unsigned uid_slot;
    /* running */
    pid_t pid;
    unsigned long long pid_start; /* the init's start time (/proc/PID/stat), to find it again */
    int pidfd;
    struct initctl ctl; /* to the init (sandbox/initctl.h) */
    uv_poll_t ctl_poll;
    uv_poll_t pid_poll;
    int handles; /* open uv handles; freed when 0 after destroy */
    int refs;
    int pausing;                /* a pause is waiting for the freezer */
    struct proc *procs;         /* processes started and not yet exited */
    struct command *commands;   /* detached commands (session/command.h), newest first */
    struct shell *shells;       /* persistent shells (session/shell.h) */
    struct terminal *terminals; /* terminals (session/terminal.h) */
    uint32_t next_tag;
    struct sandbox_waiter *waiters; /* destroy callbacks */
    struct stop_op *stop;           /* while stopping */
    struct sblog *log;              /* its commands' output (session/sblog.h), or NULL */
    /* Sessions (session/sessions.h). */
    char session_id[SANDBOX_SESSION_MAX + 1]; /* "": none */
    int recycled;       /* stopped (or stopping) for being idle in a session: calls restore it */
    int restoring;      /* a restore (sandbox_start) is under way */
    double restored_at; /* the last restore, epoch seconds; 0: never */
    struct restore_waiter *restore_waiters;
};

struct sandbox_spec {
    const char *name; /* NULL → id */
    const char *template_name;
    json_t *labels;                /* borrowed; copied */
    json_t *env;                   /* borrowed; copied */
    json_t *secrets;               /* array of existing secret names; borrowed; copied */
    json_t *volumes;               /* volume_parse_spec()'s, or NULL; borrowed; copied */
    struct sandbox_resources res;  /* already validated and defaulted */
    struct egress_policy *network; /* taken over when sandbox_create() returns 0 */
    double ttl_s;                  /* 0: lives until deleted */
    double idle_timeout_s;         /* 0: never stopped for being idle */
    /* NULL: the host template. Otherwise the root is an overlay of these layers (borrowed;
     * copied), and template_name is image->template_name. */
    const struct sandbox_image *image;
    const char *session_id; /* NULL or "": none (session/sessions.h) */
};

/* `sb` is NULL on failure; then `err` says why and `msg` says it for a person. */
typedef void (*sandbox_create_cb)(struct sandbox *sb, enum session_err err, const char *msg,
                                  void *arg);
typedef void (*sandbox_destroy_cb)(void *arg);

/* Prepares the registry (reg->loop and the configuration fields set) and starts its sweep: once a
 * second, a sandbox whose ttl_s has passed is deleted (audit "sandbox.expire"), and a running or
 * paused one that has been idle for its idle_timeout_s is stopped (audit "sandbox.idle_stop").
 * Idle means no API call on it (sandbox_touch) and nothing the daemon started in it still
 * running: no exec, detached command, shell run or terminal (an idle shell does not count).
 * One timer for all, rather than one per sandbox re-armed on every call: the durations are
 * whole seconds, and the sweep is a walk of the list. */
int registry_init(struct registry *reg);
/* Takes over what a previous daemon left (sandboxes outlive their daemon): every sandbox of the
 * store comes back with its id, name and spec. One whose init still runs (found by pid and start
 * time) is re-adopted running: its control channel is taken back from the init, its detached
 * commands with their output (session/command.h), its egress proxy re-created; processes of
 * one-shot execs, shells and terminals of the previous daemon are killed (nobody can take their
 * output any more), and a paused sandbox is thawed and comes back running. One whose init is gone
 * (host reboot, killed) comes back stopped with its files (its disk mounted again if needed).
 * Directories, disks and cgroups of sandboxes the store does not know are removed. Must run on
 * the loop thread before requests are served; blocks (up to 2 s per unresponsive init). */
void registry_recover(struct registry *reg);
/* The daemon is stopping. Leaves every sandbox running for the next daemon (nothing is killed,
 * nothing in the store changes: the init keeps what the next daemon needs), or with
 * reg->stop_on_exit stops them (as sandbox_stop with a short grace period). Creations in flight
 * are undone. idle_cb fires when the registry has let go of all of them; reg->left_running then
 * says how many were left running. */
void registry_shutdown(struct registry *reg, void (*idle_cb)(struct registry *reg));
void registry_free(struct registry *reg);
/* Keeps n disks of the default size ready (sandbox/disk.h), made in the background. */
void registry_start_disk_pool(struct registry *reg, size_t n);
/* Tops the disk pool up in the background, unless that is running already. */
void registry_fill_disk_pool(struct registry *reg);

/* The host disk as sandboxes use it: bytes free on the file system of the state dir, bytes the
 * sandboxes' and volumes' images occupy there, and the disk sizes promised to sandboxes (every
 * state, stopped ones included) and volumes (session/volume.h). Returns 0 or -errno (the state dir
 * cannot be measured). */
struct registry_disk_usage {
    int64_t free_bytes;
    int64_t used_bytes;
    int64_t promised_bytes;
};
int registry_disk_usage(struct registry *reg, struct registry_disk_usage *out);
/* Keeps the host disk from filling, whatever admission let in: to be called every
 * REGISTRY_DISK_CHECK_MS. While the sandboxes' disks and the volumes could together take more
 * than the host has free above disk_reserve, each gets a ballast (sandbox/disk.h) so that what they
 * can still write adds up to no more than that, shared in proportion to each one's free space;
 * below the reserve none can write (ENOSPC inside). Costs one statvfs() while the host has room for
 * every promise. */
#define REGISTRY_DISK_CHECK_MS 100
void registry_check_disk(struct registry *reg);

/* A deep copy of `img` (NULL when out of memory or when it has no layer or more than
 * ROOTFS_MAX_LAYERS), freed with sandbox_image_free(). */
struct sandbox_image *sandbox_image_dup(const struct sandbox_image *img);
void sandbox_image_free(struct sandbox_image *img);
/* Where a command runs unless it says: the image's WorkingDir, else /workspace. */
const char *sandbox_default_cwd(const struct sandbox *sb);

/* Starts creating a sandbox. The callback runs on the loop thread later (never before this
 * returns), with the sandbox or SESSION_ERR_SETUP (a setup step failed), SESSION_ERR_DELETED or
 * SESSION_ERR_SHUTTING_DOWN. Returns SESSION_OK, or at once (the callback never runs) one of
 * SESSION_ERR_SHUTTING_DOWN, NAME_TAKEN, CAPACITY, HOST_DISK, NOMEM, SETUP, NOT_FOUND (a volume of
 * spec->volumes is gone), with the reason in msg. spec->network is taken over only on SESSION_OK.
 */
enum session_err sandbox_create(struct registry *reg, const struct sandbox_spec *spec,
                                sandbox_create_cb cb, void *arg, char *msg, size_t msglen);
/* A user commands run as: ids inside the sandbox, and the home its environment names. */
struct sandbox_user {
    uid_t uid;
    gid_t gid;
    char home[256];
};
/* Resolves `user` ("name", "uid", "name:group", "uid:gid") as docker does, against the
 * sandbox's /etc/passwd and /etc/group (its image's, or the host template's copies). 0, -ENOENT
 * (no such user or group), -EINVAL (malformed), -ERANGE (outside the sandbox's ids), or another
 * -errno reading them. Reads two small files: fine on the loop. */
int sandbox_resolve_user(const struct sandbox *sb, const char *user, struct sandbox_user *out);
/* Whether a sandbox (in any state: a stopped one keeps its template's layers) was made of
 * template `name`; if so its name goes to `who`. */
int sandbox_template_user(const struct registry *reg, const char *name, char *who, size_t cap);
/* By id or by name; sandboxes being deleted are not found. */
struct sandbox *sandbox_find(struct registry *reg, const char *id_or_name);
/* Activity on the sandbox: postpones its idle stop (sets last_active_at to now). */
void sandbox_touch(struct sandbox *sb);
/* When the sandbox's ttl_s ends (epoch seconds), or 0 when it has none. */
double sandbox_expires_at(const struct sandbox *sb);
/* Kills every process, removes the cgroup and the directory, forgets the sandbox; `cb` is called
 * when all of that is done. Safe to call more than once (each callback fires). */
void sandbox_destroy(struct sandbox *sb, sandbox_destroy_cb cb, void *arg);
void sandbox_ref(struct sandbox *sb);
void sandbox_unref(struct sandbox *sb);
/* Freezes every process of a running sandbox (cgroup freezer). Returns -EINVAL in the wrong
 * state or while a pause is under way, -ENOTSUP without a freezer, or 0: then `cb` reports the
 * outcome later (0 once frozen; -ETIMEDOUT after 10 s, the sandbox thawed again; -ESRCH if it
 * was deleted meanwhile). */
typedef void (*sandbox_pause_cb)(struct sandbox *sb, int err, void *arg);
int sandbox_pause(struct sandbox *sb, sandbox_pause_cb cb, void *arg);
/* Replaces the network policy of a running or paused sandbox (taking `policy` over in every case):
 * starts, re-points or stops its egress proxy. Connections the new policy forbids are closed.
 * Returns 0, -EINVAL if the sandbox is not running or paused, or -errno from setting up the proxy
 * (the old policy then stays). */
int sandbox_set_network(struct sandbox *sb, struct egress_policy *policy);
/* Changes cpus, memory and pids of a sandbox (`res` is complete and validated; its disk_mib must
 * be the sandbox's: a disk does not change size). A running or paused sandbox gets them in its
 * cgroup at once; a stopped (or failed) one keeps them for its next start. Returns 0, -ERANGE
 * when the memory limit is below what the sandbox uses now (page cache included; nothing was
 * changed), -EBUSY while it is being created, stopped or started, -EINVAL for another disk_mib,
 * or -errno of the cgroup (the old limits then stay). */
int sandbox_set_resources(struct sandbox *sb, const struct sandbox_resources *res);
/* Thaws a paused sandbox (immediate). 0, -EINVAL if not paused, or -errno. */
int sandbox_resume(struct sandbox *sb);
/* Stops a running or paused sandbox: SIGTERM to every process of it but the init, then SIGKILL
 * to the init (which ends the pid namespace, and so everything left) once they are all gone or
 * grace_s has passed; grace_s 0 kills at once. What was running ends as on deletion (commands
 * failed, streams closed, the egress proxy closed); the records of commands, shells and
 * terminals stay (a shell starts a new process on its next run after sandbox_start()). Returns
 * -EBUSY in any other state, -ENOMEM, or 0: then `cb` runs once the sandbox is stopped (its
 * cgroup removed), with 0, or -ESRCH when it was deleted meanwhile (its deletion follows). */
typedef void (*sandbox_stop_cb)(struct sandbox *sb, int err, void *arg);
int sandbox_stop(struct sandbox *sb, double grace_s, sandbox_stop_cb cb, void *arg);
/* Starts a stopped sandbox again: a new init on the same disk, with the same id, name, env,
 * secrets, network and limits. Returns SESSION_OK (then `cb` runs later, with `sb` in every case:
 * SESSION_OK once it runs; SESSION_ERR_SETUP, the sandbox stopped again; SESSION_ERR_DELETED
 * when it was deleted meanwhile), or at once SESSION_ERR_STATE (not stopped),
 * SESSION_ERR_SHUTTING_DOWN or SESSION_ERR_SETUP, with the reason in msg. */
typedef void (*sandbox_start_cb)(struct sandbox *sb, enum session_err err, const char *msg,
                                 void *arg);
enum session_err sandbox_start(struct sandbox *sb, sandbox_start_cb cb, void *arg, char *msg,
                               size_t msglen);
/* Why a request that needs the sandbox's processes cannot be served in its current state:
 * -ESHUTDOWN when it is stopped (or stopping, or starting), -EPIPE otherwise. */
int sandbox_unavailable(const struct sandbox *sb);
/* Current resource use, from the sandbox's cgroup and disk (disk_bytes -1 when unknown). Returns 0
 * or -errno (-ESRCH: the sandbox has no init, so no cgroup: stopped, creating or failed). */
struct sandbox_usage {
    uint64_t memory_bytes;
    uint64_t pids;
    double cpu_seconds;
    uint64_t oom_kills;
    int64_t disk_bytes;
};
int sandbox_usage(const struct sandbox *sb, struct sandbox_usage *out);
const char *sandbox_state_name(enum sandbox_state state);
/* The state a client sees: sandbox_state_name(), but "recycled" for a recycled sandbox once it
 * is stopped (session/sessions.h). */
const char *sandbox_state_str(const struct sandbox *sb);
/* How sandboxes are put in cgroups here: "v1", "v2" (or "none"). */
const char *registry_cgroup_mode(const struct registry *reg);
/* The host uid (and gid) the sandbox's root user maps to. */
uid_t sandbox_host_uid(const struct sandbox *sb);

/* Requests for the init (used by proc.c): 0, sandbox_unavailable() unless the sandbox is running
 * or paused, or an error of initctl_spawn()/initctl_kill(). */
int sandbox_ctl_spawn(struct sandbox *sb, uint32_t tag, const struct initctl_spawn *req);
int sandbox_ctl_kill(struct sandbox *sb, pid_t pid, int sig, int group);
int sandbox_ctl_release(struct sandbox *sb, uint32_t tag, int all);

#endif
