/*
 * fs_internal — what fs.c (roots, credentials, paths, read/write/stat/list/remove/mkdir) shares
 * with fs_archive.c (tar.gz writing and extraction). Only for sandbox/fs*.c: the three rules at
 * the top of fs.c bind every caller of these helpers.
 */
#ifndef WARREN_SANDBOX_FS_INTERNAL_H
#define WARREN_SANDBOX_FS_INTERNAL_H

#include <limits.h>
#include <linux/capability.h>
#include <sys/types.h>

#include "sandbox/fs.h"

/* Walks (list, remove, archive) keep one open directory per level; a sandbox can build trees of
 * any depth, and the daemon's fd table and memory are shared by all sandboxes. */
#define FS_MAX_DEPTH 256
#define FS_IO_CHUNK 65536
/* The daemon has at most a handful of supplementary groups (root from a shell: none or {0}). */
#define FS_CREDS_MAX_GROUPS 64

/* The calling thread's credentials, saved by fs_creds_enter for fs_creds_leave. */
struct fs_creds {
    int entered; /* something was changed: fs_creds_leave must restore */
    uid_t fsuid;
    gid_t fsgid;
    int ngroups;
    gid_t groups[FS_CREDS_MAX_GROUPS];
    struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
};

/* Switches the calling thread to the sandbox root's fsuid/fsgid, no supplementary groups and no
 * effective capabilities. -EINVAL for a closed root or ids 0 / -1, -EPERM if the switch failed
 * (then nothing changed, or it was undone). Pair every 0 with fs_creds_leave. */
int fs_creds_enter(const struct fs_root *root, struct fs_creds *saved);
/* Restores what fs_creds_enter saved (a no-op if it changed nothing). */
void fs_creds_leave(struct fs_creds *saved);

/* Rule 1: the only way a caller's path becomes an fd (openat2 RESOLVE_IN_ROOT |
 * RESOLVE_NO_MAGICLINKS from the root). Returns the fd or -errno. */
int fs_resolve(const struct fs_root *root, const char *path, int flags);
/* One name (or a normalised relative path) below `dirfd`, following no symlink and never leaving
 * `dirfd`. Returns the fd or -errno (-ELOOP for a symlink on the way). */
int fs_open_beneath(int dirfd, const char *name, int flags);
/* O_PATH fd of directory `path`, creating missing components (0755) one at a time; or -errno. */
int fs_mkdir_walk(const struct fs_root *root, const char *path);
/* mkdirat with exactly `mode` (whatever the umask; a setgid bit inherited from the parent is
 * kept). -EPERM on a pseudo file system. */
int fs_make_dir(int parent, const char *name, mode_t mode);

/* A caller's path cut into its parent and final component. */
struct fs_path {
    char parent[PATH_MAX]; /* "/" when the final component is at the top */
    char last[NAME_MAX + 1];
    int is_root;  /* "/", "//", ...: no final component */
    int dots;     /* the final component is "." or ".." */
    int trailing; /* ended with "/" */
};
/* 0, -EINVAL for NULL or "", -ENAMETOOLONG. */
int fs_split_path(const char *path, struct fs_path *p);
/* 0 for a usable caller's path, -EINVAL for NULL or "", -ENAMETOOLONG for PATH_MAX or longer. */
int fs_check_path(const char *path);
/* True for "." and "..". */
int fs_is_dots(const char *name);

/* 1 if `fd` is on a kernel pseudo file system (proc, sysfs, cgroup, ...), 0 if not, or -errno. */
int fs_is_pseudo(int fd);
/* 0 if entries may be created or removed in directory `fd`, else -EPERM (or -errno). */
int fs_check_writable(int fd);
/* readlinkat into out (NUL-terminated, cut at cap - 1). 0 or -errno. */
int fs_read_link(int dir, const char *name, char *out, size_t cap);

#endif
