/*
 * files — file access inside a sandbox, as the sandbox's root user sees it.
 *
 * Security model (the daemon runs as host root; the sandbox must not be able to turn the files
 * API into host access):
 *  - paths are resolved with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) relative to the
 *    sandbox's root directory (an O_PATH fd of /proc/<init>/root): `..` and absolute symlinks
 *    stay inside the sandbox, /proc magic links are refused (-ELOOP), there is no time-of-check/
 *    time-of-use window (every step is fd-relative, and no *at() call ever follows a final
 *    symlink, which the kernel would resolve against the host's root);
 *  - every operation runs with the calling thread's credentials switched to the sandbox's root
 *    (fsuid/fsgid = its host uid/gid, no supplementary groups) and no effective capabilities,
 *    so permission checks, read-only mounts and file ownership are exactly those of the
 *    sandbox's root without its in-namespace capabilities; new files belong to the sandbox's
 *    root. If the switch fails, nothing is done (-EPERM). The thread's credentials are restored
 *    before returning;
 *  - writes, mkdirs and deletes are refused (-EPERM) in directories on proc, sysfs, cgroup (v1
 *    and v2), devpts and the other kernel pseudo file systems (debugfs, tracefs, securityfs,
 *    selinuxfs, smackfs, bpf, efivarfs, pstore, binfmt_misc, nsfs).
 * All functions block: call them from a thread-pool thread (the credential switch is
 * per-thread), never from the loop. Functions return 0 (or an fd) or -errno.
 *
 * Paths: C strings, so a caller taking them from JSON must refuse strings with an embedded NUL
 * itself (json_string_length() != strlen()); they cannot be detected here. NULL or "" is
 * -EINVAL, PATH_MAX or longer -ENAMETOOLONG. A leading "/" is optional (relative paths start at
 * the sandbox's root too). Walks (list, remove, archives) go at most 256 directories deep.
 */
#ifndef WARREN_SESSION_FILES_H
#define WARREN_SESSION_FILES_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

struct files_root {
    int root_fd; /* O_PATH directory fd of the sandbox's "/" (owned) */
    uid_t uid;   /* host uid/gid of the sandbox's root user */
    gid_t gid;
};

/* Opens the root of the process `init_pid` (host pid). Loop thread or any thread (needs the
 * daemon's own credentials). -EINVAL for uid or gid 0, and for a process in the daemon's mount
 * namespace or with the host's root (a wrong or reused pid must not expose the host); -ESRCH if
 * it is gone. The caller should still know the pid is alive (it holds its pidfd). */
int files_root_open(pid_t init_pid, uid_t uid, gid_t gid, struct files_root *out);
/* For tests: a plain host directory as the root (-EINVAL for uid or gid 0). */
int files_root_open_dir(const char *dir, uid_t uid, gid_t gid, struct files_root *out);
void files_root_close(struct files_root *root);

/* Opens a regular file for reading (O_RDONLY|O_CLOEXEC), a final symlink followed (inside the
 * sandbox). -EISDIR for a directory, -EINVAL for anything else that is not a regular file (a
 * FIFO or device is never opened for real). *st (if not NULL) receives its stat. */
int files_open_read(const struct files_root *root, const char *path, struct stat *st);

/* Atomic write: creates a temporary file ".warren-tmp-<random>" (0600) in the target's
 * directory (missing parents created 0755 when `mkdirs`), the caller writes to tmp->fd, then
 * files_commit() fsyncs, sets `mode` (& 07777) and renames it over the target, so readers see
 * the old file or the complete new one. A symlink at the target is followed inside the sandbox
 * (up to 40 links; absolute targets from the sandbox's root, relative ones from the link's
 * directory) and the file it points to is replaced, or created for a dangling link; the link
 * stays. -EISDIR if the target is a directory or the path is "/", ends in "/", "." or "..".
 * files_commit() always releases tmp (the temporary file is removed if the commit fails);
 * files_abort() removes the temporary file; both are no-ops (commit: -EBADF) on a released tmp
 * or after a failed files_open_write. `root` must outlive tmp. */
struct files_tmp {
    int fd;
    int dir_fd;
    char name[64];
    char target[256]; /* final component */
    mode_t mode;
    const struct files_root *root;
};
int files_open_write(const struct files_root *root, const char *path, mode_t mode, int mkdirs,
                     struct files_tmp *tmp);
int files_commit(struct files_tmp *tmp);
void files_abort(struct files_tmp *tmp);

/* {path, type: file|dir|symlink|other, size, mode (octal string "0644"), mtime (RFC 3339),
 * link_target?, sha256? (regular files, when asked)} of `path` (not following a final
 * symlink). `path` is echoed as given; "/", "x/.", "x/.." and "x/" (which follows a final
 * symlink, as stat(2) does) describe the directory they name. mode has the permission, setuid,
 * setgid and sticky bits; mtime has second precision in UTC ("2026-01-02T03:04:05Z"). sha256
 * (lowercase hex) needs read permission (-EACCES otherwise). */
int files_stat(const struct files_root *root, const char *path, int with_sha256, json_t **out);
/* Removes a file, a symlink, an empty directory — or a tree with `recursive`. Refuses "/"
 * (-EBUSY) and "x/." or "x/.." (-EINVAL). Symlinks are removed, never followed; a recursive
 * removal is fd-relative and depth first, may cross into other file systems mounted below but
 * fails (-EPERM) on a pseudo file system, and a mount point itself fails with -EBUSY. */
int files_remove(const struct files_root *root, const char *path, int recursive);
/* Entries below `path` (a directory; a final symlink is followed), each like files_stat without
 * sha256, with `path` relative to the listed directory ("a", "a/b"); in directory order (not
 * sorted), depth-first when recursive (symlinks to directories are not descended); stops after
 * max_entries (0: no limit) and sets *truncated, which is also set when a directory deeper than
 * the walk limit was not descended. A subdirectory that cannot be opened fails the listing. */
int files_list(const struct files_root *root, const char *path, int recursive, size_t max_entries,
               json_t **entries, int *truncated);
/* Creates directory `path` (0755); -EEXIST if it exists. With `parents`, missing parents are
 * created too and an existing directory is not an error (mkdir -p). */
int files_mkdir(const struct files_root *root, const char *path, int parents);

/* tar.gz (pax) of the tree at `path` (or the single file; a final symlink in `path` is followed),
 * entries named relative to `path`'s parent unless `relative_to_path` (then relative to path
 * itself, "." excluded). "/", "x/." and "x/.." always behave as with relative_to_path; a single
 * file is always named by its last component. Regular files, directories and symlinks (stored
 * as links, never followed); nothing else. Directories on pseudo file systems (/proc, /sys...)
 * are stored without their contents. Modes, mtimes and uid/gid as the sandbox sees them (host
 * ids outside the sandbox's range become 65534). A file or directory the sandbox's root cannot
 * read fails the archive (-EACCES). Data goes to `write_cb` (return <0 to abort: that value is
 * returned); nothing more is written after a failure. Stops with -EFBIG before more than
 * max_bytes would be produced (0: no limit) and -E2BIG when there are more than max_entries
 * entries (0: no limit). *entries_out: the entries written. The callback runs on the calling
 * thread with the sandbox's credentials in force: it should only move data. */
typedef ssize_t (*files_write_fn)(const void *data, size_t len, void *arg);
int files_archive_create(const struct files_root *root, const char *path, int relative_to_path,
                         size_t max_bytes, size_t max_entries, files_write_fn write_cb, void *arg,
                         size_t *entries_out);
/* Extracts a tar or tar.gz read from `read_cb` (returns bytes read, 0 at end, <0 error) into the
 * directory `path` (created with its parents when missing). Every entry is created fd-relative
 * below the destination, never through a symlink. Refused, with a message in `err`:
 *  - -EINVAL: absolute names, `..` components, devices, FIFOs, sockets, all hard links (even
 *    inside the destination: simpler and safe), symlinks whose target is absolute or climbs
 *    above the destination (relative targets are checked lexically against the entry's depth;
 *    `..` is allowed only as a leading run), input that is not a tar or tar.gz;
 *  - -ELOOP: an entry whose parent directory is a symlink (even one the archive made);
 *  - -EISDIR: a non-directory entry where a directory exists;
 *  - -EFBIG: more than max_bytes of file contents (declared sizes and data; 0: no limit);
 *  - -E2BIG: more than max_entries entries (0: no limit).
 * Existing files and symlinks are replaced (never written through). Files get the entry's mode
 * & 0777 (no setuid, setgid or sticky) and mtime; directories created by the extraction get
 * theirs at the end (they are 0700 meanwhile), existing directories are left as they are. All
 * belong to the sandbox's root (archive owners are ignored). Not atomic: entries extracted
 * before a failure stay. *entries_out: the entries extracted. The callback runs on the calling
 * thread with the sandbox's credentials in force: it should only move data. */
typedef ssize_t (*files_read_fn)(void *buf, size_t len, void *arg);
int files_archive_extract(const struct files_root *root, const char *path, files_read_fn read_cb,
                          void *arg, uint64_t max_bytes, size_t max_entries, size_t *entries_out,
                          char *err, size_t errlen);

#endif
