/*
 * volume — named volumes: storage that outlives sandboxes, attached to any number of them at
 * once (read-write in some, read-only in others) at paths their specs choose.
 *
 * A volume is a sparse ext4 image of exactly size_mib (sandbox/disk.h), <state_dir>/volumes/
 * <name>.img, mounted once in the daemon's mount namespace on <state_dir>/volumes/<name>. Its
 * files live in `data` there (owned by id 0); the file system's root keeps the thin-provisioning
 * ballast, which no sandbox can reach. The mount lives in the pinned mount namespace, so it
 * survives daemon restarts (SIGTERM or kill -9); after a host reboot, volumes_recover() mounts the
 * images again.
 *
 * Attaching. Volume files are stored with the ids they have inside a sandbox (root = 0), and every
 * sandbox sees a volume through an idmapped bind with its own mapping (sandbox/idmap.h), so a
 * file root writes in one sandbox is root's in every other. Before each clone of a sandbox with
 * volumes (creation and start), volume_stage() makes those binds on staging directories,
 * <state_dir>/vmounts/<sandbox id>/<i>, in the daemon's mount namespace, which the clone copies;
 * volume_plan() adds binds of them on the sandbox's paths to its mount plan; once the child has
 * made its mounts (or failed), volume_unstage() removes the staging mounts: the sandbox's own
 * mount namespace holds its binds from then on, for as long as it runs (a re-adopted sandbox
 * keeps them; a stopped one gets them again on its next start).
 *
 * A volume is deleted only when no sandbox (in any state) names it. Fork and snapshot never copy
 * a volume's contents: they are not in the sandbox's root.
 *
 * Threading: everything runs on the loop thread except volume_stage() (a pool thread, during a
 * creation or start: it reads only the sandbox's volume list, which does not change). Creation
 * and deletion block (mkfs, loop devices, mounts) on the thread pool.
 */
#ifndef WARREN_SESSION_VOLUME_H
#define WARREN_SESSION_VOLUME_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "session/error.h"
#include "session/sandbox.h"

#define VOLUME_MAX_PER_SANDBOX 16
#define VOLUME_PATH_MAX 256
#define VOLUME_DEFAULT_MIB 1024ull

struct volume {
    struct volume *next;
    char name[SANDBOX_NAME_MAX];
    unsigned long long size_mib;
    double created_at;
    int ready;    /* 0 while being created */
    int deleting; /* being deleted: its name is still taken */
};

/* The sandboxes' view of a volume's attachment (one element of a sandbox's `volumes`). */
struct volume_attachment {
    const struct sandbox *sb;
    const char *path;
    int read_only;
};

/* Takes over the volumes of the store: each one's image is mounted again unless it still is (the
 * pinned namespace outlived the previous daemon). Images, mounts and staging directories the
 * store does not know (a creation or a start a crash interrupted) are removed. On the loop
 * thread, before requests are served; blocks (a mount per volume after a reboot). */
void volumes_recover(struct registry *reg);
/* Frees the list (at exit). Mounts stay: volumes outlive the daemon. */
void volumes_free(struct registry *reg);

/* Starts creating volume `name` (a valid name not ending in ".img", not checked here) of `mib`
 * MiB. Returns
 * SESSION_OK (then `cb` runs later with the volume, or NULL with SESSION_ERR_SETUP and a message),
 * or at once SESSION_ERR_NAME_TAKEN, SESSION_ERR_HOST_DISK (thin-provisioning admission, counted
 * with the sandboxes' disks), SESSION_ERR_SHUTTING_DOWN or SESSION_ERR_NOMEM, with msg. */
typedef void (*volume_create_cb)(struct volume *vol, enum session_err err, const char *msg,
                                 void *arg);
enum session_err volume_create(struct registry *reg, const char *name, unsigned long long mib,
                               volume_create_cb cb, void *arg, char *msg, size_t msglen);
/* A ready volume by name, or NULL. */
struct volume *volume_find(struct registry *reg, const char *name);
/* The sandboxes that name the volume (in any state), up to `cap` of them in `out`. Returns how
 * many there are in all. */
size_t volume_attachments(struct registry *reg, const char *name, struct volume_attachment *out,
                          size_t cap);
/* Bytes used in the volume (what its users wrote), or -errno. */
long long volume_used_bytes(const struct registry *reg, const struct volume *vol);
/* Deletes a ready volume: -ENOENT (no such volume), -EBUSY (a sandbox names it), or 0: then it
 * is gone from the store at once and `cb` runs once its image is unmounted and deleted. */
typedef void (*volume_delete_cb)(void *arg);
int volume_delete(struct registry *reg, const char *name, volume_delete_cb cb, void *arg);

/* Validates a sandbox spec's `volumes` (an array of {name, path, read_only?}, may be NULL) and
 * `workspace` (a volume name, may be NULL: that volume read-write at /workspace) into *out, a new
 * array of {name, path, read_only} sorted by path (so that a volume inside another's path is
 * mounted after it), or NULL when there are none. Returns 0, -EINVAL (malformed, a bad path, a
 * duplicate path, more than VOLUME_MAX_PER_SANDBOX) or -ENOENT (no such volume), with the reason
 * in err. A path is absolute, normalized (no ".", "..", "//" or trailing "/"), not "/", not a
 * system directory or an ancestor of one (/usr, /etc, /run, ...), and not under /proc, /sys, /dev
 * or /run/warren. */
int volume_parse_spec(struct registry *reg, json_t *volumes, json_t *workspace, json_t **out,
                      char *err, size_t errlen);
/* Whether every volume `volumes` names (a parsed list, may be NULL) exists: 0, or -ENOENT with
 * the name in err. */
int volume_check_exist(struct registry *reg, json_t *volumes, char *err, size_t errlen);
/* Pool thread: the idmapped staging binds of the sandbox's volumes (see above). Returns 0 or
 * -errno with *what naming the step; nothing is left on failure. */
int volume_stage(const struct sandbox *sb, const char **what);
/* Adds the binds of the staged volumes on their paths to `cfg` (read-only ones as such). Returns
 * 0 or -errno of spawn_config_add(). */
struct spawn_config;
int volume_plan(const struct sandbox *sb, struct spawn_config *cfg);
/* Removes the staging binds and directories of the sandbox, if any. */
void volume_unstage(const struct sandbox *sb);

/* For disk admission and ballasts (session/sandbox_disk.c): adds the sizes promised to volumes
 * to *promised and, unless used is NULL, what their images occupy on the host to *used. */
void volumes_disk_usage(const struct registry *reg, int64_t *promised, int64_t *used);
/* Calls fn(dir, arg) with the mount point of every ready volume. */
void volumes_foreach_mount(const struct registry *reg, void (*fn)(const char *dir, void *arg),
                           void *arg);

#endif
