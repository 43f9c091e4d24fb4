/*
 * idmap — a directory seen through an idmapped mount: what an image layer (sandbox/rootfs.h) and
 * a volume (session/volume.h) need to be shared by sandboxes whose root users are different host
 * uids.
 *
 * A volume's files are stored with the ids they have inside a sandbox (root's files owned by host
 * uid 0, as an image layer's are: sandbox/rootfs.h). Each sandbox sees it through a bind whose
 * idmapping is the sandbox's own (a user namespace of rootfs_userns()), so a file that sandbox
 * A's root writes is stored owned by 0 and appears owned by root in sandbox B too; nothing is
 * ever chowned. Host root's files stay host root's: the mapping covers only the sandbox's range.
 *
 * The bind is made by the daemon (host root, in its own mount namespace) before the sandbox's
 * clone, which copies it: the sandbox itself gets no mount-API access (seccomp), and an idmapped
 * mount must be set up by someone privileged over the original mount's namespace.
 *
 * Threading: blocking system calls only, no global state: any thread, several at once.
 */
#ifndef WARREN_SANDBOX_IDMAP_H
#define WARREN_SANDBOX_IDMAP_H

/* A detached copy of the directory `src` (not what is mounted below it), idmapped with the user
 * namespace `userns_fd`, nosuid and nodev, read-only when `read_only`: an fd to attach with
 * move_mount() or to give overlayfs as a layer; closing it drops the copy. The fd, or -errno
 * with *what naming the step. */
int idmap_open(const char *src, int userns_fd, int read_only, const char **what);
/* Mounts the directory `src` (not what is mounted below it) on the existing directory `target`,
 * idmapped with the user namespace `userns_fd`, nosuid and nodev, and read-only when `read_only`.
 * Returns 0 or -errno with *what naming the step; nothing is mounted on failure. */
int idmap_bind(const char *src, const char *target, int userns_fd, int read_only,
               const char **what);

#endif
