/*
 * fs — file access inside a sandbox, as the sandbox's root user sees it: the engine under the
 * files API (session/files.h runs it on the thread pool). It knows no HTTP and no JSON.
 *
 * Security model (the daemon runs as host root; the sandbox must not be able to turn file access
 * into host access):
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
#ifndef WARREN_SANDBOX_FS_H
#define WARREN_SANDBOX_FS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

struct fs_root {
    int root_fd; /* O_PATH directory fd of the sandbox's "/" (owned) */
    uid_t uid;   /* host uid/gid of the sandbox's root user */
    gid_t gid;
};

/* Opens the root of the process `init_pid` (host pid). Loop thread or any thread (needs the
 * daemon's own credentials). -EINVAL for uid or gid 0, and for a process in the daemon's mount
 * namespace or with the host's root (a wrong or reused pid must not expose the host); -ESRCH if
 * it is gone. The caller should still know the pid is alive (it holds its pidfd). */
int fs_root_open(pid_t init_pid, uid_t uid, gid_t gid, struct fs_root *out);
/* For tests: a plain host directory as the root (-EINVAL for uid or gid 0). */
int fs_root_open_dir(const char *dir, uid_t uid, gid_t gid, struct fs_root *out);
void fs_root_close(struct fs_root *root);

/* Opens a regular file for reading (O_RDONLY|O_CLOEXEC), a final symlink followed (inside the
 * sandbox). -EISDIR for a directory, -EINVAL for anything else that is not a regular file (a
 * FIFO or device is never opened for real). *st (if not NULL) receives its stat. */
int fs_open_read(const struct fs_root *root, const char *path, struct stat *st);

/* Atomic write: creates a temporary file ".warren-tmp-<random>" (0600) in the target's
 * directory (missing parents created 0755 when `mkdirs`), the caller writes to tmp->fd, then
 * fs_commit() fsyncs, sets `mode` (& 07777) and renames it over the target, so readers see
 * the old file or the complete new one. A symlink at the target is followed inside the sandbox
 * (up to 40 links; absolute targets from the sandbox's root, relative ones from the link's
 * directory) and the file it points to is replaced, or created for a dangling link; the link
 * stays. -EISDIR if the target is a directory or the path is "/", ends in "/", "." or "..".
 * fs_commit() always releases tmp (the temporary file is removed if the commit fails);
 * fs_abort() removes the temporary file; both are no-ops (commit: -EBADF) on a released tmp
 * or after a failed fs_open_write. `root` must outlive tmp. */
struct fs_tmp {
    int fd;
    int dir_fd;
    char name[64];
    char target[256]; /* final component */
    mode_t mode;
    const struct fs_root *root;
};
int fs_open_write(const struct fs_root *root, const char *path, mode_t mode, int mkdirs,
                  struct fs_tmp *tmp);
int fs_commit(struct fs_tmp *tmp);
void fs_abort(struct fs_tmp *tmp);

/* What fs_stat and fs_list say about a file. */
enum fs_type { FS_FILE, FS_DIR, FS_SYMLINK, FS_OTHER };
struct fs_entry {
    char *path; /* malloc'd; bytes as the file system has them (not necessarily UTF-8) */
    enum fs_type type;
    off_t size;
    mode_t mode; /* permission, setuid, setgid and sticky bits (& 07777) */
    struct timespec mtime;
    char *link_target; /* malloc'd, symlinks only; else NULL */
    char sha256[65];   /* lowercase hex of a regular file's contents when asked; else "" */
};
/* Frees the strings of an entry (not the entry itself); a zeroed entry is fine. */
void fs_entry_free(struct fs_entry *e);
/* Frees the n entries of an array from fs_list and the array; NULL is fine. */
void fs_entries_free(struct fs_entry *entries, size_t n);

/* Describes `path` (not following a final symlink) in *out, to be released with
 * fs_entry_free() (zeroed on error). out->path is `path` as given; "/", "x/.", "x/.." and "x/"
 * (which follows a final symlink, as stat(2) does) describe the directory they name. sha256 is
 * filled for a regular file `with_sha256`, which needs read permission (-EACCES otherwise). */
int fs_stat(const struct fs_root *root, const char *path, int with_sha256, struct fs_entry *out);
/* Removes a file, a symlink, an empty directory — or a tree with `recursive`. Refuses "/"
 * (-EBUSY) and "x/." or "x/.." (-EINVAL). Symlinks are removed, never followed; a recursive
 * removal is fd-relative and depth first, may cross into other file systems mounted below but
 * fails (-EPERM) on a pseudo file system, and a mount point itself fails with -EBUSY. */
int fs_remove(const struct fs_root *root, const char *path, int recursive);
/* The entries below `path` (a directory; a final symlink is followed) as a malloc'd array of *n
 * (NULL when empty; release with fs_entries_free), each like fs_stat without sha256, with `path`
 * relative to the listed directory ("a", "a/b"); in directory order (not sorted), depth-first
 * when recursive (symlinks to directories are not descended); stops after max_entries (0: no
 * limit) and sets *truncated, which is also set when a directory deeper than the walk limit was
 * not descended. A subdirectory the sandbox's root cannot open is listed but not descended;
 * other errors fail the listing (nothing is returned). */
int fs_list(const struct fs_root *root, const char *path, int recursive, size_t max_entries,
            struct fs_entry **entries, size_t *n, int *truncated);
/* Creates directory `path` (0755); -EEXIST if it exists. With `parents`, missing parents are
 * created too and an existing directory is not an error (mkdir -p). */
int fs_mkdir(const struct fs_root *root, const char *path, int parents);

/* Gives `path` (not following a final symlink: a link itself is changed) to uid:gid as the
 * sandbox numbers them (its root is 0), which must be below FS_ID_RANGE (-ERANGE). The path is
 * resolved with the sandbox root's credentials; the change is made with the daemon's (the
 * sandbox's root cannot give files away on the host). -EPERM on a pseudo file system. */
#define FS_ID_RANGE 65536u
int fs_chown(const struct fs_root *root, const char *path, uid_t uid, gid_t gid);

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
 * thread, at times with the sandbox's credentials in force: it should only move data. */
typedef ssize_t (*fs_write_fn)(const void *data, size_t len, void *arg);
int fs_archive_create(const struct fs_root *root, const char *path, int relative_to_path,
                      size_t max_bytes, size_t max_entries, fs_write_fn write_cb, void *arg,
                      size_t *entries_out);

/* The same archive writer, for callers that choose the files and their names themselves:
 * fs_archive_new starts a tar.gz (pax) going to `write_cb`, with the limits and callback rules of
 * fs_archive_create; `root` must outlive it. 0 or -ENOMEM (or the callback's error). */
struct fs_archive;
int fs_archive_new(const struct fs_root *root, size_t max_bytes, size_t max_entries,
                   fs_write_fn write_cb, void *arg, struct fs_archive **out);
/* Adds the regular file at `path` (opened as fs_open_read does: a final symlink is followed
 * inside the sandbox) as entry `name` with its mode, mtime and owner. Returns 1 when it was
 * added; 0 when it could not be opened or is not a regular file (it is left out: nothing was
 * written); -errno when the archive failed (a limit, the callback, a read error, -ENAMETOOLONG
 * for a name of PATH_MAX or more): then every later call returns that error and only
 * fs_archive_close remains. Blocks (thread-pool thread). */
int fs_archive_add_file(struct fs_archive *ar, const char *path, const char *name);
/* Ends the archive (its trailer goes to the callback unless it failed) and frees it; returns
 * the first error or 0. *entries_out (if not NULL): the entries written. */
int fs_archive_close(struct fs_archive *ar, size_t *entries_out);
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
typedef ssize_t (*fs_read_fn)(void *buf, size_t len, void *arg);
int fs_archive_extract(const struct fs_root *root, const char *path, fs_read_fn read_cb, void *arg,
                       uint64_t max_bytes, size_t max_entries, size_t *entries_out, char *err,
                       size_t errlen);

#endif
