/*
 * template — the built-in `host` template: what a sandbox's file system is made of.
 *
 * template_host_prepare() runs once at daemon start-up, in the daemon's own mount namespace. It
 * inspects the host (which of /bin, /lib*, ... are symlinks), mounts a small tmpfs on
 * <state_dir>/templates/host/ (so the sandboxes' mountinfo never names the state directory) and
 * writes two snapshots there:
 *   etc/  copies of a small set of host /etc files (not the whole /etc): passwd, group,
 *         resolv.conf, nsswitch.conf, ld.so.*, ssl/certs, alternatives, ...; `hosts` and
 *         `hostname` are symlinks to per-sandbox files in /run/warren.
 *   dev/  the minimal device nodes (null zero full random urandom tty), mount points for pts and
 *         shm, and the usual symlinks.
 * Each becomes one read-only bind in every sandbox, instead of one bind per file: sandbox
 * creation is dominated by mount system calls. The snapshot is taken at start-up; restart the
 * daemon to pick up changes to the host's /etc.
 *
 * template_host_config() then fills a spawn_config for one sandbox: a copy of the prepared plan
 * plus the sandbox's own hostname, root, /workspace and /run/warren files.
 * Errors: 0 or -errno.
 */
#ifndef WARREN_SANDBOX_TEMPLATE_H
#define WARREN_SANDBOX_TEMPLATE_H

#include "sandbox/spawn.h"

struct host_template {
    struct spawn_config plan;       /* ops shared by every sandbox of the host template */
    struct spawn_config image_plan; /* ops shared by every sandbox whose root is an image */
    char dir[SPAWN_PATH_MAX];       /* <state_dir>/templates/host */
};

int template_host_prepare(struct host_template *t, const char *state_dir);
/* `cfg` receives a complete config except the policy fields (seccomp, init_fd, cgroups, ids). */
int template_host_config(const struct host_template *t, struct spawn_config *cfg,
                         const char *hostname, const char *root_dir, const char *workspace);

/* The same for a sandbox whose root is an image: `rootfs` is its overlay (sandbox/rootfs.h,
 * mounted in the daemon's mount namespace), bound on itself as the new root (read-write, nosuid,
 * nodev), with nothing of the host's /usr, /bin, /lib* or /etc. On top, as on the host template:
 * /proc (masked and partly read-only), /sys, the /dev snapshot, /dev/pts, /dev/shm; /workspace
 * (made in the overlay if the image has none); /etc/hosts and /etc/hostname bound from
 * /run/warren/{hosts, hostname} (written there in the overlay), /etc/resolv.conf bound read-only
 * from the snapshot. /tmp and everything else are the image's, in the overlay. The image is
 * untrusted: the caller runs spawn_check_root() on every start, the first one included. */
int template_image_config(const struct host_template *t, struct spawn_config *cfg,
                          const char *hostname, const char *rootfs);

#endif
