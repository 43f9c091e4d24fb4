/*
 * rootfs — overlayfs over idmapped, shared image layers. See rootfs.h.
 */
#include "sandbox/rootfs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "sandbox/idmap.h"

static int userns_make(uid_t host_base, uid_t count, int *fd_out)
{
    char path[64], map[64];
    int p[2], r = 0;
    *fd_out = -1;
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0) {
        r = -errno;
        close(p[0]);
        close(p[1]);
        return r;
    }
    if (pid == 0) {
        /* A copy of a multi-threaded process: system calls only. It waits to be killed once the
         * namespace is open; EOF (the daemon died) ends it too. */
        char c;
        close(p[1]);
        (void)!read(p[0], &c, 1);
        _exit(0);
    }
    close(p[0]);
    snprintf(map, sizeof(map), "0 %u %u\n", (unsigned)host_base, (unsigned)count);
    snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
    if ((r = util_write_string(path, map)) < 0)
        goto done;
    snprintf(path, sizeof(path), "/proc/%d/setgroups", (int)pid);
    if ((r = util_write_string(path, "deny")) < 0)
        goto done;
    snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
    if ((r = util_write_string(path, map)) < 0)
        goto done;
    snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
    if ((*fd_out = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        r = -errno;
done:
    /* Killed, not told by EOF: a child that another thread cloned meanwhile (another namespace
     * being made, a sandbox being set up) holds a copy of p[1] until it exits or execs, and two
     * of these children each holding the other's pipe would wait for each other for ever. */
    kill(pid, SIGKILL);
    close(p[1]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return r;
}

/* The user namespaces made so far, one per mapping, kept for the process's life: the mapping of
 * a uid slot never changes, and making one costs a clone. */
struct userns_entry {
    uid_t base, count;
    int fd;
};
static pthread_mutex_t userns_lock = PTHREAD_MUTEX_INITIALIZER;
static struct userns_entry *userns_cache;
static size_t userns_n, userns_cap;

/* A new fd of the cached namespace for the mapping, or -ENOENT. Called with userns_lock held. */
static int userns_lookup(uid_t host_base, uid_t count)
{
    for (size_t i = 0; i < userns_n; i++)
        if (userns_cache[i].base == host_base && userns_cache[i].count == count) {
            int fd = fcntl(userns_cache[i].fd, F_DUPFD_CLOEXEC, 0);
            return fd < 0 ? -errno : fd;
        }
    return -ENOENT;
}

int rootfs_userns(uid_t host_base, uid_t count, int *fd_out)
{
    int fd, r;
    pthread_mutex_lock(&userns_lock);
    r = userns_lookup(host_base, count);
    pthread_mutex_unlock(&userns_lock);
    if (r != -ENOENT) {
        *fd_out = r < 0 ? -1 : r;
        return r < 0 ? r : 0;
    }
    /* Made unlocked (it blocks on a clone); a thread that made the same one meanwhile wins. */
    if ((r = userns_make(host_base, count, &fd)) < 0) {
        *fd_out = -1;
        return r;
    }
    pthread_mutex_lock(&userns_lock);
    if ((r = userns_lookup(host_base, count)) == -ENOENT) {
        if (userns_n == userns_cap) {
            size_t cap = userns_cap ? userns_cap * 2 : 16;
            struct userns_entry *n = realloc(userns_cache, cap * sizeof(*n));
            if (!n) {
                pthread_mutex_unlock(&userns_lock);
                *fd_out = fd; /* not kept: the next caller makes another */
                return 0;
            }
            userns_cache = n;
            userns_cap = cap;
        }
        userns_cache[userns_n++] = (struct userns_entry){host_base, count, fd};
        if ((r = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
            r = -errno;
    } else {
        close(fd);
    }
    pthread_mutex_unlock(&userns_lock);
    *fd_out = r < 0 ? -1 : r;
    return r < 0 ? r : 0;
}

void rootfs_userns_clear(void)
{
    pthread_mutex_lock(&userns_lock);
    for (size_t i = 0; i < userns_n; i++)
        close(userns_cache[i].fd);
    free(userns_cache);
    userns_cache = NULL;
    userns_n = userns_cap = 0;
    pthread_mutex_unlock(&userns_lock);
}

/* The overlay's own complaint (the kernel writes it to the fs context), for the log. */
static void log_fs_context(int fsfd, const char *step)
{
    char buf[512];
    ssize_t n;
    while ((n = read(fsfd, buf, sizeof(buf) - 1)) > 0) {
        buf[n] = '\0';
        log_warn("rootfs: %s: %s", step, buf);
    }
}

int rootfs_mount(const char *target, const char *const *lowers, size_t n, const char *upper,
                 const char *work, int userns_fd, const char **what)
{
    static const char *const flags[][2] = {
        {"index", "off"}, {"xino", "off"}, {"metacopy", "off"}, {"redirect_dir", "nofollow"}};
    int fsfd = -1, mfd = -1, r = 0, lfd[ROOTFS_MAX_LAYERS];
    size_t n_lfd = 0;
    *what = "layers";
    if (n == 0 || n > ROOTFS_MAX_LAYERS)
        return -EINVAL;
    *what = "fsopen overlay";
    if ((fsfd = fsopen("overlay", FSOPEN_CLOEXEC)) < 0)
        return -errno;
    for (size_t i = 0; i < n; i++) {
        if ((r = idmap_open(lowers[i], userns_fd, 1, what)) < 0)
            goto error;
        lfd[n_lfd++] = r;
        *what = "fsconfig lowerdir+";
        if (fsconfig(fsfd, FSCONFIG_SET_FD, "lowerdir+", NULL, r) < 0)
            goto error_errno;
    }
    *what = "fsconfig upperdir";
    if (fsconfig(fsfd, FSCONFIG_SET_STRING, "upperdir", upper, 0) < 0)
        goto error_errno;
    *what = "fsconfig workdir";
    if (fsconfig(fsfd, FSCONFIG_SET_STRING, "workdir", work, 0) < 0)
        goto error_errno;
    *what = "fsconfig options";
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if (fsconfig(fsfd, FSCONFIG_SET_STRING, flags[i][0], flags[i][1], 0) < 0)
            goto error_errno;
    *what = "fsconfig create";
    if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
        goto error_errno;
    /* The overlay has taken private clones of the layers' mounts now; until here the detached
     * idmapped mounts had to stay open (closing the last fd of one dissolves it). */
    for (size_t i = 0; i < n_lfd; i++)
        close(lfd[i]);
    n_lfd = 0;
    *what = "fsmount";
    if ((mfd = fsmount(fsfd, FSMOUNT_CLOEXEC,
                       MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOATIME)) < 0)
        goto error_errno;
    *what = "move_mount";
    if (move_mount(mfd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        goto error_errno;
    close(mfd);
    close(fsfd);
    return 0;

error_errno:
    r = -errno;
error:
    /* Until move_mount nothing is attached: closing the fds frees the superblock and the
     * detached layer mounts. */
    if (fsfd >= 0) {
        log_fs_context(fsfd, *what);
        close(fsfd);
    }
    if (mfd >= 0)
        close(mfd);
    for (size_t i = 0; i < n_lfd; i++)
        close(lfd[i]);
    return r;
}

#define DB_MAX (1 << 20) /* the largest /etc/passwd or /etc/group read */

/* `rel` of the root `root_fd`, resolved inside it, into a malloc'd NUL-terminated buffer. */
static int read_in_root(int root_fd, const char *rel, char **out)
{
    struct open_how how = {.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
                           .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    *out = NULL;
    int fd = (int)syscall(SYS_openat2, root_fd, rel, &how, sizeof(how));
    if (fd < 0)
        return -errno;
    char *buf = malloc(DB_MAX + 1);
    size_t len = 0;
    ssize_t n = 0;
    while (buf && len < DB_MAX && (n = read(fd, buf + len, DB_MAX - len)) > 0)
        len += (size_t)n;
    int r = !buf ? -ENOMEM : n < 0 ? -errno : len >= DB_MAX ? -EFBIG : 0;
    close(fd);
    if (r < 0) {
        free(buf);
        return r;
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}

/* A decimal id, all of `s` (no sign, no spaces). */
static int parse_id(const char *s, unsigned long *out)
{
    char *end;
    if (!*s || *s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    *out = strtoul(s, &end, 10);
    return *end || errno ? -EINVAL : 0;
}

/* Finds the line of a passwd/group-style `db` whose field 0 is `name` (or, name NULL, whose field
 * 2 is `id`) and copies its fields (up to 7) into f[] (pointers into `line`). 0 or -ENOENT. */
static int db_find(const char *db, const char *name, unsigned long id, char *line, size_t cap,
                   char **f)
{
    for (const char *p = db; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len < cap) {
            memcpy(line, p, len);
            line[len] = '\0';
            int nf = 0;
            for (char *s = line, *c; nf < 7; s = c + 1) {
                f[nf++] = s;
                if (!(c = strchr(s, ':')))
                    break;
                *c = '\0';
            }
            unsigned long v;
            if (nf >= 3 && (name ? strcmp(f[0], name) == 0 : parse_id(f[2], &v) == 0 && v == id)) {
                for (int i = nf; i < 7; i++)
                    f[i] = "";
                return 0;
            }
        }
        p = nl ? nl + 1 : NULL;
    }
    return -ENOENT;
}

int rootfs_resolve_user(const char *rootfs, const char *user, unsigned count, uid_t *uid,
                        gid_t *gid, char *home, size_t homelen)
{
    char spec[256], line[1024], *f[7], *passwd = NULL, *group = NULL;
    unsigned long u = 0, g = 0;
    int r, have_pw;
    if (snprintf(spec, sizeof(spec), "%s", user) >= (int)sizeof(spec) || !spec[0])
        return -EINVAL;
    char *grp = strchr(spec, ':');
    if (grp)
        *grp++ = '\0';
    int root_fd = open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0)
        return -errno;
    if ((r = read_in_root(root_fd, "etc/passwd", &passwd)) < 0 && r != -ENOENT)
        goto done;
    int numeric = parse_id(spec, &u) == 0;
    have_pw = passwd && db_find(passwd, numeric ? NULL : spec, u, line, sizeof(line), f) == 0;
    r = -ENOENT;
    if (!numeric && !have_pw)
        goto done; /* a name that is not in the image's passwd */
    if (have_pw && (parse_id(f[2], &u) < 0 || parse_id(f[3], &g) < 0)) {
        r = -EINVAL;
        goto done;
    }
    snprintf(home, homelen, "%s", have_pw && f[5][0] == '/' ? f[5] : "/");
    if (grp && parse_id(grp, &g) < 0) {
        if (!*grp || (r = read_in_root(root_fd, "etc/group", &group)) < 0 ||
            (r = db_find(group, grp, 0, line, sizeof(line), f)) < 0)
            goto done;
        if ((r = parse_id(f[2], &g)) < 0)
            goto done;
    }
    r = u >= count || g >= count ? -ERANGE : 0;
    *uid = (uid_t)u;
    *gid = (gid_t)g;
done:
    free(passwd);
    free(group);
    close(root_fd);
    return r;
}

int rootfs_umount(const char *target)
{
    if (umount2(target, UMOUNT_NOFOLLOW) == 0)
        return 0;
    if (errno == EINVAL || errno == ENOENT)
        return 0; /* not a mount point, or no such directory */
    if (errno != EBUSY)
        return -errno;
    /* Something still holds it (a process of a dying sandbox, an open file): detached now,
     * freed by the kernel when the last user goes. */
    return umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 ? -errno : 0;
}
