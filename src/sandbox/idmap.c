/*
 * idmap — idmapped binds. See idmap.h.
 */
#include "sandbox/idmap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

int idmap_open(const char *src, int userns_fd, int read_only, const char **what)
{
    struct mount_attr attr;
    /* Not AT_RECURSIVE: only the directory's own file system, never a mount someone made below
     * it. */
    *what = "open_tree";
    int fd = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (fd < 0)
        return -errno;
    memset(&attr, 0, sizeof(attr));
    attr.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV |
                    (read_only ? MOUNT_ATTR_RDONLY : 0);
    attr.userns_fd = (uint64_t)userns_fd;
    *what = "mount_setattr MOUNT_ATTR_IDMAP";
    if (mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

int idmap_bind(const char *src, const char *target, int userns_fd, int read_only, const char **what)
{
    int r = 0, fd = idmap_open(src, userns_fd, read_only, what);
    if (fd < 0)
        return fd;
    *what = "move_mount";
    if (move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        r = -errno;
    /* A detached tree that was never attached goes with its last fd. */
    close(fd);
    return r;
}
