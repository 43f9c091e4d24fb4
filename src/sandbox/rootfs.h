/*
 * rootfs — the root file system of a sandbox made from an OCI image: an overlayfs whose lower
 * layers are the image's unpacked layer directories, shared by every sandbox of the image, and
 * whose upper layer is on the sandbox's own disk (sandbox/disk.h).
 *
 * Owners. An unpacked layer keeps the image's numeric owners (root's files are owned by host uid
 * 0), but a sandbox's root is an unprivileged host uid (its slot's base). Each lower is therefore
 * presented to overlayfs through an *idmapped mount* (open_tree(OPEN_TREE_CLONE) +
 * mount_setattr(MOUNT_ATTR_IDMAP)) with a user namespace holding the sandbox's mapping: a file
 * owned by k in the layer appears owned by base + k. Layers are never copied or chowned per
 * sandbox, and a copy-up writes the shifted owner into the upper layer, so the sandbox owns what
 * it changed, exactly as if its root had written it.
 *
 * Why the overlay is mounted by the daemon (host root, in its own mount namespace) and not inside
 * the sandbox's user namespace: the sandbox's clone copies the daemon's mount namespace, so a
 * root mounted beforehand is simply there for it, and the sandbox gets no mount-API access
 * (seccomp denies fsopen & co.). The mounter's credentials are host root's, so overlayfs keeps its
 * private xattrs in the trusted.* namespace (no `userxattr`), which the sandbox can neither read
 * nor forge, and the layer store's overlay-style whiteouts (char dev 0:0, trusted.overlay.opaque)
 * are honoured as they are.
 *
 * Why a separate user namespace (rootfs_userns) instead of the sandbox's own: the mount has to
 * exist before the clone that creates the sandbox's user namespace. A user namespace with the
 * same mapping is equivalent for an idmapped mount (only its mapping is used), and the mounts keep
 * it alive by reference, so its creator can be reaped at once. One is made per mapping (per uid
 * slot) and kept for the process's life: every sandbox of a slot has the same mapping, and making
 * one costs a clone of the daemon (about 1 ms of an image sandbox's create).
 *
 * Overlay options, and why:
 *   lowerdir+ (one per layer, as an fd of the idmapped mount): no 4 KiB option-string limit, and
 *             the idmapped mounts never need a path in any mount namespace;
 *   index=off, xino=off, metacopy=off: no inode index or xattr tricks that would tie the upper to
 *             these exact lower inodes (a daemon restart re-mounts the same upper over freshly
 *             opened layers), and no metadata-only copy-up (a chown copies the data);
 *   redirect_dir=nofollow: layers come from registries, so a trusted.overlay.redirect xattr in
 *             one is never followed, and none is created (renaming a lower directory gives EXDEV,
 *             which mv handles by copying, as on docker's default overlay2).
 * The mount is nosuid, nodev and noatime, as a sandbox disk is (sandbox/disk.h).
 *
 * Threading: blocking system calls only; run on a pool thread, in the daemon's mount namespace.
 * Any thread, several at once (the user namespace cache has its own lock).
 * Errors: 0 or -errno; *what names the step that failed. Nothing is left behind on failure.
 */
#ifndef WARREN_SANDBOX_ROOTFS_H
#define WARREN_SANDBOX_ROOTFS_H

#include <stddef.h>
#include <sys/types.h>

#define ROOTFS_MAX_LAYERS 64

/* A user namespace mapping ids [0, count) to [host_base, host_base + count) (uid and gid), for
 * idmapped mounts; *fd_out is a new O_CLOEXEC fd of it (the caller closes it). The first call for
 * a mapping makes it (a child is cloned into it, its maps written, the namespace opened and the
 * child reaped: no process is left in it) and keeps it; later calls return the same namespace.
 * Returns 0 or -errno. */
int rootfs_userns(uid_t host_base, uid_t count, int *fd_out);
/* Closes the namespaces rootfs_userns keeps (at exit; mounts made with them keep theirs alive). */
void rootfs_userns_clear(void);

/* Mounts on the existing directory `target` an overlayfs of `lowers` (n of them, 1 ≤ n ≤
 * ROOTFS_MAX_LAYERS, the top layer first), each seen through an idmapped mount with `userns_fd`
 * (see rootfs_userns), with `upper` and `work` (existing directories on one file system, work
 * empty). Returns 0, -EINVAL for a bad n, or -errno with *what naming the step. */
int rootfs_mount(const char *target, const char *const *lowers, size_t n, const char *upper,
                 const char *work, int userns_fd, const char **what);

/* Resolves an image's User ("name", "uid", "name:group", "uid:gid", ...) as docker does, against
 * the /etc/passwd and /etc/group of the root mounted on `rootfs` (read inside it: symlinks there
 * cannot lead out). A name must be found (-ENOENT otherwise); a numeric uid needs no entry. The
 * gid is the group's, else the user's primary group, else 0; *home the user's home, else "/".
 * Ids must be below `count` (the sandbox's mapped range), else -ERANGE. -EINVAL for a malformed
 * spec. Blocking. */
int rootfs_resolve_user(const char *rootfs, const char *user, unsigned count, uid_t *uid,
                        gid_t *gid, char *home, size_t homelen);

/* Unmounts what is mounted on `target` (lazily if it is busy). Nothing mounted there, or no
 * `target`, is not an error. Returns 0 or -errno. */
int rootfs_umount(const char *target);

#endif
