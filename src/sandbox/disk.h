/*
 * disk — the writable file system of a sandbox: a sparse ext4 image of exactly disk_mib,
 * loop-mounted by the daemon. Everything a sandbox can write to lasting storage (its root with
 * /tmp, /var/tmp, /root and /home, and /workspace) lives in it, so filling it gives ENOSPC inside
 * and nothing else: no host disk, no neighbour, no memory.
 *
 * Why an image and not the alternatives: a size-limited tmpfs is charged to the memory cgroup, so
 * a full disk would end in the OOM killer instead of ENOSPC, and a 1 GiB disk would need 1 GiB of
 * RAM; project quotas need a quota-enabled file system (and this kernel has no CONFIG_QUOTA). A
 * loop-mounted image needs only loop devices and ext4, bounds blocks *and* inodes, and is freed by
 * unlinking one file. Costs: one image copy (sparse, ~600 KiB of metadata), one LOOP_CONFIGURE and
 * one mount per sandbox (about a millisecond each), done on the thread pool, mostly ahead of time
 * (the pool below); deleting costs an umount (~3 ms) and an unlink (~2 ms).
 *
 * Images are sparse, so the host only pays for what sandboxes write; see "Thin provisioning"
 * below for how the host disk is kept from filling anyway.
 *
 * Mounts are made in the daemon's own mount namespace (server start-up makes one, pinned on a file
 * of the state dir so that it outlives the daemon for the next one), so they never propagate to
 * the host; the loop devices are auto-clearing, so they are released when the last mount of the
 * image goes.
 *
 * Thread-safety: every function may run on any thread, several at once; the manager's state (base
 * images, the pool) is under a mutex.
 */
#ifndef WARREN_SANDBOX_DISK_H
#define WARREN_SANDBOX_DISK_H

#include <stdint.h>
#include <sys/types.h>

struct disk_manager;

/* Checks that loop devices and mkfs.ext4 are usable and prepares `<state_dir>/disks` for the base
 * images (one formatted image per size, copied for each sandbox). On failure returns -errno and
 * writes a message naming what is missing into msg. *out is freed with disk_manager_free(). */
int disk_manager_new(const char *state_dir, struct disk_manager **out, char *msg, size_t msglen);
void disk_manager_free(struct disk_manager *dm);

/* Creates the sparse image `image` of `mib` MiB (a copy of the base image of that size), attaches
 * it to a free loop device and mounts it on the existing directory `mountpoint` (nosuid, nodev).
 * The file system's root is left mode 0711 owned by host root; `subdirs` (NULL-terminated,
 * relative) are created in it mode 0755 owned by owner:owner. On failure nothing is left behind
 * and *what names the step that failed. Returns 0 or -errno. */
int disk_create(struct disk_manager *dm, const char *image, const char *mountpoint,
                unsigned long long mib, const char *const *subdirs, uid_t owner, const char **what);

/* Mounts the existing image `image` on `mountpoint` as disk_create() does (after a host reboot,
 * or once the mount namespace that held it is gone). Returns 0 or -errno. */
int disk_mount(const char *image, const char *mountpoint);
/* Detaches every mount below `dir` (not `dir` itself) in the caller's mount namespace: what a
 * previous daemon left there. Returns how many, or -errno. */
int disk_unmount_under(const char *dir);

/* Unmounts `mountpoint` (lazily if something still holds it) and unlinks `image`. Missing pieces
 * are not errors. Returns 0 or the first -errno. */
int disk_destroy(const char *image, const char *mountpoint);

/* A pool of ready disks of one size (the daemon's default disk_mib), so that most creations take
 * a mounted disk instead of making one: taking is a rename and a mount move (microseconds, fine on
 * the loop thread); making is a copy, a loop device and a mount (about 2 ms, on the pool).
 * disk_pool_configure() sets the size, the subdirectories (as for disk_create(); the array must
 * outlive the manager) and how many disks to keep ready (at most 8). disk_pool_fill() makes disks
 * until that many are ready (blocking: run it on a pool thread, one at a time); returns 0 or the
 * first -errno. disk_pool_take() moves a ready disk to `image` and `mountpoint` (created here)
 * and gives its subdirectories to owner, as disk_create() would have made it; -ENOENT if none of
 * that size is ready (then make one). disk_manager_free() unmounts the ready ones.
 * disk_pool_claims() is what the ready disks may still claim on the host, for admission
 * control. disk_pool_fill() also finishes the disks of disk_retire(). */
void disk_pool_configure(struct disk_manager *dm, unsigned long long mib,
                         const char *const *subdirs, size_t n);
int disk_pool_fill(struct disk_manager *dm);
int disk_pool_take(struct disk_manager *dm, const char *image, const char *mountpoint,
                   unsigned long long mib, uid_t owner);
int64_t disk_pool_claims(struct disk_manager *dm);

/* Takes a sandbox's disk out of the way at once: its mount and image move into the manager's
 * directory, and the next disk_pool_fill() unmounts and deletes them (an umount and an unlink cost
 * ~5 ms that a DELETE need not wait for: the disk is unreachable as soon as it moved). Returns
 * 0, or -errno (then nothing moved: use disk_destroy()). */
int disk_retire(struct disk_manager *dm, const char *image, const char *mountpoint);
/* Retired disks not finished yet. */
size_t disk_trash_count(struct disk_manager *dm);

/* Thin provisioning. Images are sparse, so the sizes promised to sandboxes may add up to more
 * than the host disk holds (the caller admits sandboxes against an overcommit ratio). What keeps
 * the host disk from filling is not admission but a ballast in each sandbox's own file system:
 * `.ballast` in the image's root (which the sandbox cannot reach: it sees only the
 * subdirectories), made with fallocate(). An fallocate()d range is unwritten extents: ext4 counts
 * its blocks as used, so the sandbox's writes get ENOSPC from ext4 itself (at write() time, as
 * delayed allocation reserves blocks then, never later at writeback), while the host pays only
 * the few bitmap and extent blocks that record it, because unwritten extents are never written
 * to the image. The ballast shrinks the free space a sandbox sees, so the caller can keep the sum
 * of what all sandboxes may still write below what the host has free; ftruncate() gives it back
 * (and `discard` punches nothing that was never written). Neither a full host file system under
 * the loop device (the image's writes would fail with EIO at writeback, long after write()
 * succeeded, and ext4 would remount read-only) nor a tmpfs quota gives a sandbox a clean ENOSPC.
 *
 * disk_host_free(): the bytes free for an unprivileged user on the file system holding `dir`, and
 * its size. disk_image_bytes(): what an image occupies on the host (0 if it is missing). */
int disk_host_free(const char *dir, int64_t *free_bytes, int64_t *size_bytes);
int64_t disk_image_bytes(const char *image);

/* The file system mounted on `mountpoint`: what its users may still write (*free_bytes, the
 * ballast excluded) and the ballast's size (*ballast_bytes). -EINVAL if nothing is mounted there;
 * otherwise 0 or -errno. */
int disk_space(const char *mountpoint, int64_t *free_bytes, int64_t *ballast_bytes);
/* Grows or shrinks the ballast of the disk mounted on `mountpoint` towards `bytes` (rounded to
 * 1 MiB; 0 removes it). Growing stops early, without error, when the file system is full (then
 * the sandbox has no free space left, which is the point). -EINVAL if nothing is mounted there
 * (the ballast must never land on the host's file system); otherwise 0 or -errno. */
int disk_ballast_set(const char *mountpoint, int64_t bytes);

#endif
