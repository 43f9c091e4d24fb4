/*
 * fuzz_files — path resolution of the files API (sandbox/fs.c) inside a sandbox root.
 *
 * The root is a scratch directory owned by an unprivileged "sandbox root" uid, holding a small
 * tree full of symlinks that try to leave it (relative climbs, absolute links, the host path of
 * a directory next to the root, loops, dangling links, a read-only directory). Next to it lies
 * `outside`, world-writable, so that permissions never hide an escape.
 *
 * Input: up to 8 lines, each an operation letter and a path:
 *   r read   s stat   S stat+sha256   l list   L list -r   A archive (GET archive)
 *   w write  W write, creating parents   a write, then abort
 *   m mkdir  M mkdir -p   d remove   D remove -r
 * Oracle, besides the sanitizers: every file opened for reading and every directory a write goes
 * to is inside the root (the kernel's own path of the fd says so); nothing outside the root
 * changes; listings and archives never show what is outside. A mutated tree is rebuilt before the
 * next input.
 */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/util.h"
#include "harness.h"
#include "sandbox/fs.h"

#define TUID 1048576u
#define TGID 1048576u
#define MAX_OPS 8
#define CANARY "OUTSIDE-CANARY"
#define CANARY_CONTENT CANARY "-CONTENT\n"

static char base[64], root_dir[128], outside_dir[128];
static struct fs_root root;
static buf_t outside_snapshot;
static int dirty = 1;

/* The sandbox's tree, from scratch. */
static void build_root(void)
{
    char target[256];
    util_remove_tree(root_dir);
    fz_put_dir(base, "root", 0755, TUID);
    fz_put_dir(base, "root/etc", 0755, TUID);
    fz_put_file(base, "root/etc/shadow", "inside shadow\n", 0640, TUID);
    fz_put_dir(base, "root/workspace", 0755, TUID);
    fz_put_file(base, "root/workspace/a.txt", "a\n", 0644, TUID);
    fz_put_dir(base, "root/workspace/sub", 0755, TUID);
    fz_put_file(base, "root/workspace/sub/b.txt", "b\n", 0644, TUID);
    fz_put_dir(base, "root/ro", 0555, TUID);
    fz_put_file(base, "root/ro/c.txt", "c\n", 0444, TUID);
    fz_put_link(base, "root/workspace/up", "../..", TUID);
    fz_put_link(base, "root/workspace/climb", "../../../../outside", TUID);
    fz_put_link(base, "root/workspace/dotdot", "..", TUID);
    fz_put_link(base, "root/workspace/slash", "/", TUID);
    fz_put_link(base, "root/workspace/etc", "/etc", TUID);
    fz_put_link(base, "root/workspace/shadow", "/etc/shadow", TUID);
    fz_put_link(base, "root/workspace/dangling", "nowhere/x", TUID);
    fz_put_link(base, "root/workspace/loop", "loop", TUID);
    fz_put_link(base, "root/workspace/proc", "/proc/self/root", TUID);
    fz_put_link(base, "root/workspace/sub/back", "../../workspace/sub/../up/outside", TUID);
    snprintf(target, sizeof(target), "%s", outside_dir);
    fz_put_link(base, "root/host", target, TUID);
    snprintf(target, sizeof(target), "%s/" CANARY, outside_dir);
    fz_put_link(base, "root/workspace/canary", target, TUID);
    fz_put_link(base, "root/outside", "../outside", TUID);
    dirty = 0;
}

/* Everything under `dir` (names, types, sizes, modes, mtimes, link targets), sorted by the walk
 * order of a fixed tree. */
static void snapshot(const char *dir, buf_t *out)
{
    DIR *d = opendir(dir);
    if (!d)
        fz_fail("opendir %s: %s", dir, strerror(errno));
    struct dirent *e;
    char p[512], link[256];
    while ((e = readdir(d))) {
        struct stat sb;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (strcmp(p, root_dir) == 0)
            continue;
        if (lstat(p, &sb) < 0)
            fz_fail("lstat %s: %s", p, strerror(errno));
        ssize_t n = S_ISLNK(sb.st_mode) ? readlink(p, link, sizeof(link) - 1) : 0;
        link[n > 0 ? n : 0] = '\0';
        buf_appendf(out, "%s %o %lld %lld.%09ld %s\n", p, (unsigned)sb.st_mode,
                    (long long)sb.st_size, (long long)sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec, link);
        if (S_ISDIR(sb.st_mode))
            snapshot(p, out);
    }
    closedir(d);
}

static void check_outside(const char *after)
{
    buf_t now = BUF_INIT;
    snapshot(base, &now);
    if (now.len != outside_snapshot.len || memcmp(now.data, outside_snapshot.data, now.len) != 0)
        fz_fail("'%s' changed something outside the root:\n--- before\n%s--- after\n%s", after,
                outside_snapshot.data, now.data);
    buf_free(&now);
}

/* The fd's host path (the kernel's) must be the root or below it. */
static void check_fd_inside(int fd, const char *what, const char *path)
{
    char link[64], host[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, host, sizeof(host) - 1);
    if (n < 0)
        fz_fail("readlink %s: %s", link, strerror(errno));
    host[n] = '\0';
    size_t rl = strlen(root_dir);
    if (strncmp(host, root_dir, rl) != 0 || (host[rl] != '\0' && host[rl] != '/'))
        fz_fail("%s '%s' reached %s, outside the root", what, path, host);
}

/* An entry of fs_stat/fs_list that can only be the outside: the canary (its size and mode
 * 0666; what the fuzzer writes is 2 bytes, 0644) or a world-writable directory (it makes 0755). */
static void check_entry(const struct fs_entry *e, const char *what, const char *path)
{
    if ((e->type == FS_FILE && e->size == (off_t)strlen(CANARY_CONTENT) && e->mode == 0666) ||
        (e->type == FS_DIR && (e->mode == 0777 || e->mode == 01777)))
        fz_fail("%s '%s' shows the outside (type %d, mode %04o)", what, path, (int)e->type,
                (unsigned)e->mode);
}

static ssize_t collect(const void *data, size_t len, void *arg)
{
    return buf_append(arg, data, len) < 0 ? -ENOMEM : (ssize_t)len;
}

/* No entry of the archive is the outside canary file. */
static void check_archive(const buf_t *tgz, const char *path)
{
    struct archive *a = archive_read_new();
    struct archive_entry *e;
    char data[64];
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    if (archive_read_open_memory(a, tgz->data, tgz->len) != ARCHIVE_OK)
        fz_fail("archive of '%s' does not read back: %s", path, archive_error_string(a));
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        la_ssize_t n = archive_read_data(a, data, sizeof(data) - 1);
        data[n > 0 ? n : 0] = '\0';
        if (strstr(data, CANARY_CONTENT))
            fz_fail("archive of '%s' holds the outside file as %s", path,
                    archive_entry_pathname(e));
    }
    archive_read_free(a);
}

static void run_op(char op, const char *path)
{
    struct fs_tmp tmp;
    struct fs_entry e, *list = NULL;
    int truncated, fd;
    size_t n = 0;
    buf_t tgz = BUF_INIT;
    switch (op) {
    case 'r':
        fd = fs_open_read(&root, path, NULL);
        if (fd >= 0) {
            check_fd_inside(fd, "read", path);
            close(fd);
        }
        break;
    case 's':
    case 'S':
        if (fs_stat(&root, path, op == 'S', &e) == 0) {
            check_entry(&e, "stat", path);
            fs_entry_free(&e);
        }
        break;
    case 'l':
    case 'L':
        if (fs_list(&root, path, op == 'L', 64, &list, &n, &truncated) == 0) {
            for (size_t i = 0; i < n; i++)
                check_entry(&list[i], "list", path);
            fs_entries_free(list, n);
        }
        break;
    case 'A':
        if (fs_archive_create(&root, path, 0, 1 << 20, 256, collect, &tgz, &n) == 0)
            check_archive(&tgz, path);
        buf_free(&tgz);
        break;
    case 'w':
    case 'W':
    case 'a':
        dirty = 1;
        if (fs_open_write(&root, path, 0644, op == 'W', &tmp) < 0)
            break;
        check_fd_inside(tmp.dir_fd, "write", path);
        if (write(tmp.fd, "w\n", 2) != 2)
            fz_fail("write: %s", strerror(errno));
        if (op == 'a')
            fs_abort(&tmp);
        else
            fs_commit(&tmp);
        break;
    case 'm':
    case 'M':
        dirty = 1;
        fs_mkdir(&root, path, op == 'M');
        break;
    case 'd':
    case 'D':
        dirty = 1;
        fs_remove(&root, path, op == 'D');
        break;
    default:
        return;
    }
    /* Reading does not change the outside; anything else might. */
    if (dirty)
        check_outside(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_set_level(LOG_ERROR);
    fz_private_mounts();
    fz_scratch_tmpfs("files", base, sizeof(base));
    if (chmod(base, 0777) < 0)
        fz_fail("chmod %s: %s", base, strerror(errno));
    snprintf(root_dir, sizeof(root_dir), "%s/root", base);
    snprintf(outside_dir, sizeof(outside_dir), "%s/outside", base);
    fz_put_dir(base, "outside", 01777, 0);
    fz_put_file(base, "outside/" CANARY, CANARY_CONTENT, 0666, 0);
    fz_put_dir(base, "outside/dir", 0777, 0);
    build_root();
    snapshot(base, &outside_snapshot);
    if (fs_root_open_dir(root_dir, TUID, TGID, &root) < 0)
        fz_fail("cannot open the root");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char line[PATH_MAX + 2];
    if (dirty) {
        /* The root fd must name the new directory. */
        fs_root_close(&root);
        build_root();
        if (fs_root_open_dir(root_dir, TUID, TGID, &root) < 0)
            fz_fail("cannot open the root");
    }
    size_t off = 0;
    for (int ops = 0; ops < MAX_OPS && off < size; ops++) {
        const uint8_t *nl = memchr(data + off, '\n', size - off);
        size_t len = nl ? (size_t)(nl - data - off) : size - off;
        if (len > 0 && len < sizeof(line)) {
            /* A path is a C string: an embedded NUL ends it, as for the API's callers. */
            memcpy(line, data + off, len);
            line[len] = '\0';
            run_op(line[0], line + 1);
        }
        off += len + 1;
    }
    return 0;
}
