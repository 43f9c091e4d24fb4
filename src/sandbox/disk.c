#include "sandbox/disk.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

/* Distinct sizes whose formatted image is kept for copying; rarer sizes are formatted directly. */
#define DISK_MAX_BASES 32
#define DISK_POOL_MAX 8
#define DISK_TRASH_MAX 64

struct disk_manager {
    char dir[1100]; /* <state>/disks */
    char mkfs[64];
    pthread_mutex_t lock; /* guards everything below, and the building of a base image */
    unsigned long long bases[DISK_MAX_BASES];
    size_t n_bases;
    /* Ready disks of pool_mib, mounted on <dir>/pool-<seq> with their image <dir>/pool-<seq>.img;
     * pool[0..n_ready) are ready to take. */
    unsigned long long pool_mib;
    const char *const *pool_subdirs;
    size_t pool_want;
    unsigned pool[DISK_POOL_MAX];
    size_t n_ready;
    unsigned pool_seq;
    /* Mount points of taken disks, removed by the next fill: an rmdir on the host's file system
     * can take milliseconds, which the creation that took the disk should not wait for. */
    unsigned stale[DISK_POOL_MAX];
    size_t n_stale;
    /* Retired disks, still mounted on <dir>/pool-<seq>, unmounted and deleted by the next fill. */
    unsigned trash[DISK_TRASH_MAX];
    size_t n_trash;
};

static const char *const mkfs_paths[] = {"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"};

int disk_manager_new(const char *state_dir, struct disk_manager **out, char *msg, size_t msglen)
{
    struct disk_manager *dm = calloc(1, sizeof(*dm));
    int r, fd;
    if (!dm)
        return -ENOMEM;
    for (size_t i = 0; i < sizeof(mkfs_paths) / sizeof(mkfs_paths[0]) && !dm->mkfs[0]; i++)
        if (access(mkfs_paths[i], X_OK) == 0)
            snprintf(dm->mkfs, sizeof(dm->mkfs), "%s", mkfs_paths[i]);
    if (!dm->mkfs[0]) {
        snprintf(msg, msglen,
                 "mkfs.ext4 not found (install e2fsprogs): sandbox disks are ext4 "
                 "images");
        r = -ENOENT;
        goto error;
    }
    if ((fd = open("/dev/loop-control", O_RDWR | O_CLOEXEC)) < 0) {
        r = -errno;
        snprintf(msg, msglen,
                 "/dev/loop-control: %s (sandbox disks are loop-mounted images: load the loop "
                 "module or give the daemon access to loop devices)",
                 strerror(-r));
        goto error;
    }
    close(fd);
    /* Old bases are rebuilt rather than trusted: a new e2fsprogs may format differently. */
    snprintf(dm->dir, sizeof(dm->dir), "%s/disks", state_dir);
    if ((r = util_remove_tree(dm->dir)) < 0 || (r = util_mkdir_p(dm->dir, 0700)) < 0) {
        snprintf(msg, msglen, "%s: %s", dm->dir, strerror(-r));
        goto error;
    }
    pthread_mutex_init(&dm->lock, NULL);
    *out = dm;
    return 0;
error:
    free(dm);
    return r;
}

static void pool_paths(const struct disk_manager *dm, unsigned seq, char *image, char *mnt,
                       size_t cap)
{
    snprintf(image, cap, "%s/pool-%u.img", dm->dir, seq);
    snprintf(mnt, cap, "%s/pool-%u", dm->dir, seq);
}

void disk_manager_free(struct disk_manager *dm)
{
    char image[1200], mnt[1200];
    if (!dm)
        return;
    for (size_t i = 0; i < dm->n_ready; i++) {
        pool_paths(dm, dm->pool[i], image, mnt, sizeof(image));
        disk_destroy(image, mnt);
        rmdir(mnt);
    }
    for (size_t i = 0; i < dm->n_stale; i++) {
        pool_paths(dm, dm->stale[i], image, mnt, sizeof(image));
        rmdir(mnt);
    }
    for (size_t i = 0; i < dm->n_trash; i++) {
        pool_paths(dm, dm->trash[i], image, mnt, sizeof(image));
        disk_destroy(image, mnt);
        rmdir(mnt);
    }
    pthread_mutex_destroy(&dm->lock);
    free(dm);
}

/* Formats `path` (created here, sparse, mib MiB) as ext4. No journal: a sandbox's disk does not
 * outlive a crash of the daemon (recovery deletes it), so crash consistency buys nothing and the
 * journal would cost 4-64 MiB of each disk. No reserved blocks: there is no root to reserve them
 * for. lazy_itable_init plus the noinit_itable mount option keep the image sparse. */
static int format_image(const struct disk_manager *dm, const char *path, unsigned long long mib)
{
    char *argv[] = {(char *)dm->mkfs,
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-O",
                    "^has_journal",
                    "-E",
                    "lazy_itable_init=1,nodiscard,root_owner=0:0",
                    (char *)path,
                    NULL};
    char *envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600), status, r;
    if (fd < 0)
        return -errno;
    r = ftruncate(fd, (off_t)(mib << 20)) < 0 ? -errno : 0;
    close(fd);
    if (r < 0)
        goto error;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    r = -posix_spawn(&pid, dm->mkfs, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    if (r < 0)
        goto error;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            r = -errno;
            goto error;
        }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        log_error("%s %s (%llu MiB) failed with status %d", dm->mkfs, path, mib, status);
        r = -EIO;
        goto error;
    }
    return 0;
error:
    unlink(path);
    return r;
}

/* Copies the data extents of `src` into the new file `dst` and gives it src's size: holes stay
 * holes, so a fresh 1 GiB disk occupies what mkfs wrote (well under a MiB). */
static int copy_sparse(const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, r = 0;
    struct stat st;
    if (in < 0)
        return -errno;
    if (fstat(in, &st) < 0 ||
        (out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0 ||
        ftruncate(out, st.st_size) < 0) {
        r = -errno;
        goto done;
    }
    for (off_t pos = 0; pos < st.st_size;) {
        off_t data = lseek(in, pos, SEEK_DATA), hole;
        if (data < 0) {
            if (errno != ENXIO) /* ENXIO: only a hole is left */
                r = -errno;
            break;
        }
        if ((hole = lseek(in, data, SEEK_HOLE)) < 0) {
            r = -errno;
            break;
        }
        for (loff_t a = data, b = data; a < hole;) {
            ssize_t n = copy_file_range(in, &a, out, &b, (size_t)(hole - a), 0);
            if (n <= 0) {
                r = n < 0 ? -errno : -EIO;
                goto done;
            }
        }
        pos = hole;
    }
done:
    close(in);
    if (out >= 0)
        close(out);
    if (r < 0 && out >= 0)
        unlink(dst);
    return r;
}

/* Makes `image` a fresh file system of mib MiB: a copy of the cached base of that size (built on
 * first use), or formatted directly when too many sizes are cached already. */
static int make_image(struct disk_manager *dm, const char *image, unsigned long long mib)
{
    char base[1200];
    int r = 0, cached = 0;
    snprintf(base, sizeof(base), "%s/ext4-%llu.img", dm->dir, mib);
    pthread_mutex_lock(&dm->lock);
    for (size_t i = 0; i < dm->n_bases && !cached; i++)
        cached = dm->bases[i] == mib;
    if (!cached && dm->n_bases < DISK_MAX_BASES) {
        if ((r = format_image(dm, base, mib)) == 0) {
            dm->bases[dm->n_bases++] = mib;
            cached = 1;
        }
    }
    pthread_mutex_unlock(&dm->lock);
    if (r < 0)
        return r;
    return cached ? copy_sparse(base, image) : format_image(dm, image, mib);
}

/* Attaches `image` to a free loop device and returns an open fd of the device. Auto-clear: the
 * device is released when its last user (our fd, then the mount) goes. */
static int loop_attach(const char *image, char *dev, size_t devlen)
{
    int ctl = -1, img = -1, lfd = -1, r = 0;
    if ((ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC)) < 0 ||
        (img = open(image, O_RDWR | O_CLOEXEC)) < 0) {
        r = -errno;
        goto done;
    }
    struct loop_config lc;
    memset(&lc, 0, sizeof(lc));
    lc.fd = (unsigned)img;
    /* Direct I/O: the image's pages are cached once, by the ext4 above the loop device, and not a
     * second time by the host file below it. */
    lc.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
    /* Pool threads race for free devices: LOOP_CTL_GET_FREE may hand the same one to two of us,
     * and the loser's LOOP_CONFIGURE fails with EBUSY. */
    for (int attempt = 0; attempt < 64; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) {
            r = -errno;
            goto done;
        }
        snprintf(dev, devlen, "/dev/loop%d", n);
        if ((lfd = open(dev, O_RDWR | O_CLOEXEC)) < 0) {
            r = -errno;
            if (errno == ENOENT) /* devtmpfs has not created the node yet */
                continue;
            goto done;
        }
        if (ioctl(lfd, LOOP_CONFIGURE, &lc) == 0) {
            r = 0;
            goto done;
        }
        r = -errno;
        if (r == -EINVAL && (lc.info.lo_flags & LO_FLAGS_DIRECT_IO)) {
            lc.info.lo_flags &= ~LO_FLAGS_DIRECT_IO; /* the host file system cannot do it */
            attempt--;
        } else if (r != -EBUSY) {
            close(lfd);
            lfd = -1;
            goto done;
        }
        close(lfd);
        lfd = -1;
    }
done:
    if (img >= 0)
        close(img);
    if (ctl >= 0)
        close(ctl);
    return lfd >= 0 ? lfd : (r < 0 ? r : -EBUSY);
}

#define DISK_MOUNT_FLAGS (MS_NOSUID | MS_NODEV | MS_NOATIME)
#define DISK_MOUNT_OPTS "noinit_itable,discard,errors=remount-ro"

int disk_create(struct disk_manager *dm, const char *image, const char *mountpoint,
                unsigned long long mib, const char *const *subdirs, uid_t owner, const char **what)
{
    char dev[64], path[1400];
    int lfd = -1, mounted = 0, r;
    *what = "disk image";
    if ((r = make_image(dm, image, mib)) < 0)
        goto error;
    *what = "loop device";
    if ((lfd = r = loop_attach(image, dev, sizeof(dev))) < 0)
        goto error;
    *what = "disk mount";
    /* noinit_itable: the kernel would otherwise zero every inode table in the background, making
     * each sparse image occupy its inode tables on the host. discard: space a sandbox frees is
     * punched out of the image, so it returns to the host. */
    if (mount(dev, mountpoint, "ext4", DISK_MOUNT_FLAGS, DISK_MOUNT_OPTS) < 0) {
        r = -errno;
        goto error;
    }
    mounted = 1;
    close(lfd);
    lfd = -1;
    *what = "disk layout";
    if (chmod(mountpoint, 0711) < 0) {
        r = -errno;
        goto error;
    }
    for (size_t i = 0; subdirs && subdirs[i]; i++) {
        snprintf(path, sizeof(path), "%s/%s", mountpoint, subdirs[i]);
        if (mkdir(path, 0755) < 0 || chown(path, owner, owner) < 0) {
            r = -errno;
            goto error;
        }
    }
    return 0;
error:
    if (lfd >= 0)
        close(lfd);
    if (mounted)
        umount2(mountpoint, MNT_DETACH);
    unlink(image);
    return r;
}

int disk_mount(const char *image, const char *mountpoint)
{
    char dev[64];
    int lfd = loop_attach(image, dev, sizeof(dev)), r = 0;
    if (lfd < 0)
        return lfd;
    if (mount(dev, mountpoint, "ext4", DISK_MOUNT_FLAGS, DISK_MOUNT_OPTS) < 0)
        r = -errno;
    close(lfd); /* auto-clearing: the device goes with the mount, or now if it failed */
    return r;
}

int disk_unmount_under(const char *dir)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[4096], prefix[1100], (*found)[1100] = NULL;
    size_t n = 0, cap = 0;
    int r = 0;
    if (!f)
        return -errno;
    snprintf(prefix, sizeof(prefix), "%s/", dir);
    while (fgets(line, sizeof(line), f)) {
        char mnt[1100];
        /* id parent major:minor root mountpoint ... (paths with spaces are escaped: \040) */
        if (sscanf(line, "%*s %*s %*s %*s %1099s", mnt) != 1 ||
            strncmp(mnt, prefix, strlen(prefix)) != 0)
            continue;
        if (n == cap) {
            void *p = realloc(found, (cap = cap ? cap * 2 : 16) * sizeof(*found));
            if (!p) {
                r = -ENOMEM;
                break;
            }
            found = p;
        }
        snprintf(found[n++], sizeof(found[0]), "%s", mnt);
    }
    fclose(f);
    /* Deepest (last mounted) first. */
    for (size_t i = n; i-- > 0 && r == 0;)
        if (umount2(found[i], MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
            r = -errno;
    free(found);
    return r < 0 ? r : (int)n;
}

int disk_destroy(const char *image, const char *mountpoint)
{
    int r = 0;
    if (umount2(mountpoint, 0) < 0 && errno != EINVAL && errno != ENOENT) {
        /* Still busy (a file operation of the API holds it): detach now, the kernel finishes when
         * the last user lets go, and the loop device clears itself then. */
        if (errno != EBUSY || umount2(mountpoint, MNT_DETACH) < 0)
            r = -errno;
    }
    if (unlink(image) < 0 && errno != ENOENT && !r)
        r = -errno;
    return r;
}

int disk_host_free(const char *dir, int64_t *free_bytes, int64_t *size_bytes)
{
    struct statvfs sv;
    if (statvfs(dir, &sv) < 0)
        return -errno;
    *free_bytes = (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
    if (size_bytes)
        *size_bytes = (int64_t)sv.f_blocks * (int64_t)sv.f_frsize;
    return 0;
}

int64_t disk_image_bytes(const char *image)
{
    struct stat st;
    return stat(image, &st) == 0 ? (int64_t)st.st_blocks * 512 : 0;
}

#define BALLAST_NAME ".ballast"
#define BALLAST_UNIT (1ll << 20)

/* Opens the directory of the disk mounted on `mountpoint`: -EINVAL when the directory is not a
 * mount of its own (same device as its parent), so that a ballast can never be made on the
 * host's file system below an unmounted or half-made sandbox directory. */
static int open_mounted(const char *mountpoint)
{
    struct stat st, parent;
    int fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), r;
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || fstatat(fd, "..", &parent, 0) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    if (st.st_dev == parent.st_dev) {
        close(fd);
        return -EINVAL;
    }
    return fd;
}

int disk_space(const char *mountpoint, int64_t *free_bytes, int64_t *ballast_bytes)
{
    struct statvfs sv;
    struct stat st;
    int dfd = open_mounted(mountpoint), r = 0;
    if (dfd < 0)
        return dfd;
    if (fstatvfs(dfd, &sv) < 0) {
        r = -errno;
        goto done;
    }
    *free_bytes = (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
    *ballast_bytes = 0;
    if (fstatat(dfd, BALLAST_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0)
        *ballast_bytes = (int64_t)st.st_size;
    else if (errno != ENOENT)
        r = -errno;
done:
    close(dfd);
    return r;
}

int disk_ballast_set(const char *mountpoint, int64_t bytes)
{
    struct stat st;
    int dfd = open_mounted(mountpoint), fd = -1, r = 0;
    if (dfd < 0)
        return dfd;
    bytes = (bytes + BALLAST_UNIT - 1) / BALLAST_UNIT * BALLAST_UNIT;
    if (bytes <= 0) {
        if (unlinkat(dfd, BALLAST_NAME, 0) < 0 && errno != ENOENT)
            r = -errno;
        goto done;
    }
    if ((fd = openat(dfd, BALLAST_NAME, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600)) < 0 ||
        fstat(fd, &st) < 0) {
        r = -errno;
        goto done;
    }
    if (st.st_size >= bytes) {
        r = ftruncate(fd, bytes) < 0 ? -errno : 0;
        goto done;
    }
    /* In steps that halve when the file system cannot hold the next one: the last blocks go to
     * the extent tree, so asking for exactly the free space would fail as a whole. */
    for (int64_t pos = st.st_size, step = 64 * BALLAST_UNIT; pos < bytes;) {
        int64_t len = bytes - pos < step ? bytes - pos : step;
        if (fallocate(fd, 0, pos, len) == 0) {
            pos += len;
        } else if (errno == ENOSPC && step > 64 << 10) {
            step /= 2;
        } else {
            if (errno != ENOSPC)
                r = -errno;
            break;
        }
    }
done:
    if (fd >= 0)
        close(fd);
    close(dfd);
    return r;
}

void disk_pool_configure(struct disk_manager *dm, unsigned long long mib,
                         const char *const *subdirs, size_t n)
{
    pthread_mutex_lock(&dm->lock);
    dm->pool_mib = mib;
    dm->pool_subdirs = subdirs;
    dm->pool_want = n < DISK_POOL_MAX ? n : DISK_POOL_MAX;
    pthread_mutex_unlock(&dm->lock);
}

int disk_pool_fill(struct disk_manager *dm)
{
    char image[1200], mnt[1200];
    const char *what;
    for (;;) {
        pthread_mutex_lock(&dm->lock);
        while (dm->n_stale > 0) {
            pool_paths(dm, dm->stale[--dm->n_stale], image, mnt, sizeof(image));
            rmdir(mnt);
        }
        while (dm->n_trash > 0) {
            pool_paths(dm, dm->trash[--dm->n_trash], image, mnt, sizeof(image));
            pthread_mutex_unlock(&dm->lock);
            disk_destroy(image, mnt);
            rmdir(mnt);
            pthread_mutex_lock(&dm->lock);
        }
        int full = dm->n_ready >= dm->pool_want;
        unsigned seq = dm->pool_seq++;
        unsigned long long mib = dm->pool_mib;
        const char *const *subdirs = dm->pool_subdirs;
        pthread_mutex_unlock(&dm->lock);
        if (full)
            return 0;
        pool_paths(dm, seq, image, mnt, sizeof(image));
        /* The subdirectories are made now, owned by root, and handed over by the take: the first
         * directories of a fresh ext4 land in block groups whose metadata is not cached yet, and
         * reading it through the loop device costs about a millisecond each. */
        int r = mkdir(mnt, 0711) < 0 ? -errno : disk_create(dm, image, mnt, mib, subdirs, 0, &what);
        if (r < 0) {
            rmdir(mnt);
            return r;
        }
        pthread_mutex_lock(&dm->lock);
        int kept = dm->n_ready < DISK_POOL_MAX && mib == dm->pool_mib;
        if (kept)
            dm->pool[dm->n_ready++] = seq;
        pthread_mutex_unlock(&dm->lock);
        if (!kept) { /* reconfigured meanwhile */
            disk_destroy(image, mnt);
            rmdir(mnt);
        }
    }
}

int disk_pool_take(struct disk_manager *dm, const char *image, const char *mountpoint,
                   unsigned long long mib, uid_t owner)
{
    char pimage[1200], pmnt[1200], path[1400];
    int r;
    pthread_mutex_lock(&dm->lock);
    if (mib != dm->pool_mib || dm->n_ready == 0) {
        pthread_mutex_unlock(&dm->lock);
        return -ENOENT;
    }
    unsigned seq = dm->pool[--dm->n_ready];
    const char *const *subdirs = dm->pool_subdirs;
    pthread_mutex_unlock(&dm->lock);
    pool_paths(dm, seq, pimage, pmnt, sizeof(pimage));
    /* The loop device holds the image open: renaming the file changes nothing for it. */
    if (rename(pimage, image) < 0) {
        r = -errno;
        goto error;
    }
    if (mkdir(mountpoint, 0711) < 0 || mount(pmnt, mountpoint, NULL, MS_MOVE, NULL) < 0) {
        r = -errno;
        rename(image, pimage);
        rmdir(mountpoint);
        goto error;
    }
    pthread_mutex_lock(&dm->lock);
    if (dm->n_stale < DISK_POOL_MAX)
        dm->stale[dm->n_stale++] = seq;
    pthread_mutex_unlock(&dm->lock);
    for (size_t i = 0; subdirs && subdirs[i]; i++) {
        snprintf(path, sizeof(path), "%s/%s", mountpoint, subdirs[i]);
        if (chown(path, owner, owner) < 0) {
            r = -errno;
            disk_destroy(image, mountpoint);
            rmdir(mountpoint);
            return r;
        }
    }
    return 0;
error:
    disk_destroy(pimage, pmnt);
    rmdir(pmnt);
    return r;
}

int64_t disk_pool_claims(struct disk_manager *dm)
{
    pthread_mutex_lock(&dm->lock);
    int64_t n = (int64_t)(dm->n_ready * (dm->pool_mib << 20));
    pthread_mutex_unlock(&dm->lock);
    return n;
}

int disk_retire(struct disk_manager *dm, const char *image, const char *mountpoint)
{
    char timage[1200], tmnt[1200];
    pthread_mutex_lock(&dm->lock);
    if (dm->n_trash >= DISK_TRASH_MAX) {
        pthread_mutex_unlock(&dm->lock);
        return -ENOSPC;
    }
    unsigned seq = dm->pool_seq++;
    pthread_mutex_unlock(&dm->lock);
    pool_paths(dm, seq, timage, tmnt, sizeof(timage));
    if (mkdir(tmnt, 0700) < 0)
        return -errno;
    if (mount(mountpoint, tmnt, NULL, MS_MOVE, NULL) < 0) {
        int r = -errno;
        rmdir(tmnt);
        return r;
    }
    if (rename(image, timage) < 0)
        unlink(image); /* the loop device keeps the file; only the name goes */
    pthread_mutex_lock(&dm->lock);
    dm->trash[dm->n_trash++] = seq;
    pthread_mutex_unlock(&dm->lock);
    return 0;
}

size_t disk_trash_count(struct disk_manager *dm)
{
    pthread_mutex_lock(&dm->lock);
    size_t n = dm->n_trash;
    pthread_mutex_unlock(&dm->lock);
    return n;
}
