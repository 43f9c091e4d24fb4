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
    struct spawn_config plan; /* ops shared by every sandbox */
    char dir[SPAWN_PATH_MAX]; /* <state_dir>/templates/host */
};

int template_host_prepare(struct host_template *t, const char *state_dir);
/* `cfg` receives a complete config except the policy fields (seccomp, init_fd, cgroups, ids). */
int template_host_config(const struct host_template *t, struct spawn_config *cfg,
                         const char *hostname, const char *root_dir, const char *workspace);

#endif
