/*
 * files: the sandbox file-access layer against a temporary directory standing in for the
 * sandbox's root, owned by an unprivileged "sandbox root" uid. Needs host root (chown, mount);
 * skipped otherwise.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/files.h"
#include "core/util.h"
#include "sandbox/fs.h"

#define TUID 1048576u
#define TGID 1048576u

struct fx {
    char dir[64];     /* the sandbox's root on the host */
    char outside[64]; /* a host directory that must never be touched */
    struct fs_root root;
};

static void hpath(const struct fx *f, const char *rel, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", f->dir, rel);
}

/* Host-side helpers: they act directly, as root, to prepare and inspect the tree. */
static void put(const struct fx *f, const char *rel, const char *content, mode_t mode, int own)
{
    char p[512];
    hpath(f, rel, p, sizeof(p));
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    assert_int_equal(fchmod(fd, mode), 0);
    if (own)
        assert_int_equal(fchown(fd, TUID, TGID), 0);
    close(fd);
}

static void mkd(const struct fx *f, const char *rel, mode_t mode, int own)
{
    char p[512];
    hpath(f, rel, p, sizeof(p));
    assert_int_equal(mkdir(p, mode), 0);
    assert_int_equal(chmod(p, mode), 0);
    if (own)
        assert_int_equal(chown(p, TUID, TGID), 0);
}

static void lnk(const struct fx *f, const char *rel, const char *target)
{
    char p[512];
    hpath(f, rel, p, sizeof(p));
    assert_int_equal(symlink(target, p), 0);
    assert_int_equal(lchown(p, TUID, TGID), 0);
}

static int hexists(const struct fx *f, const char *rel)
{
    char p[512];
    struct stat sb;
    hpath(f, rel, p, sizeof(p));
    return lstat(p, &sb) == 0;
}

static void hstat(const struct fx *f, const char *rel, struct stat *sb)
{
    char p[512];
    hpath(f, rel, p, sizeof(p));
    assert_int_equal(lstat(p, sb), 0);
}

static void hread(const struct fx *f, const char *rel, char *out, size_t cap)
{
    char p[512];
    hpath(f, rel, p, sizeof(p));
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    ssize_t n = read(fd, out, cap - 1);
    assert_true(n >= 0);
    out[n] = '\0';
    close(fd);
}

static void fd_read(int fd, char *out, size_t cap)
{
    ssize_t n = read(fd, out, cap - 1);
    assert_true(n >= 0);
    out[n] = '\0';
    close(fd);
}

/* Reads `path` through the API into out; returns the result of fs_open_read. */
static int api_read(const struct fx *f, const char *path, char *out, size_t cap)
{
    out[0] = '\0';
    int fd = fs_open_read(&f->root, path, NULL);
    if (fd >= 0)
        fd_read(fd, out, cap);
    return fd < 0 ? fd : 0;
}

static int api_write(const struct fx *f, const char *path, const char *data, mode_t mode,
                     int mkdirs)
{
    struct fs_tmp t;
    int r = fs_open_write(&f->root, path, mode, mkdirs, &t);
    if (r < 0)
        return r;
    assert_int_equal(write(t.fd, data, strlen(data)), (ssize_t)strlen(data));
    return fs_commit(&t);
}

static int setup(void **state)
{
    if (geteuid() != 0) {
        print_message("files: not root, skipped\n");
        skip();
    }
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/warren-files-XXXXXX");
    snprintf(f->outside, sizeof(f->outside), "/tmp/warren-files-out-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_non_null(mkdtemp(f->outside));
    assert_int_equal(chown(f->dir, TUID, TGID), 0);
    assert_int_equal(chmod(f->dir, 0755), 0);
    /* The outside is world-writable: only the resolution rules may keep the API out of it. */
    assert_int_equal(chmod(f->outside, 01777), 0);
    char p[512];
    snprintf(p, sizeof(p), "%s/keep", f->outside);
    FILE *k = fopen(p, "w");
    assert_non_null(k);
    fputs("outside", k);
    fclose(k);
    chmod(p, 0666);
    assert_int_equal(fs_root_open_dir(f->dir, TUID, TGID, &f->root), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    if (!f)
        return 0;
    char p[512];
    hpath(f, "proc", p, sizeof(p));
    umount2(p, MNT_DETACH);
    hpath(f, "p", p, sizeof(p));
    umount2(p, MNT_DETACH);
    fs_root_close(&f->root);
    util_remove_tree(f->dir);
    util_remove_tree(f->outside);
    free(f);
    return 0;
}

static void assert_outside_untouched(const struct fx *f)
{
    char p[512], buf[64];
    snprintf(p, sizeof(p), "%s/keep", f->outside);
    FILE *k = fopen(p, "r");
    assert_non_null(k);
    size_t n = fread(buf, 1, sizeof(buf) - 1, k);
    buf[n] = '\0';
    fclose(k);
    assert_string_equal(buf, "outside");
}

static int mount_proc(const struct fx *f, const char *rel)
{
    char p[512];
    hpath(f, rel, p, sizeof(p));
    if (mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
        print_message("files: cannot mount proc (%s), skipped\n", strerror(errno));
        return -1;
    }
    return 0;
}

static void umount_rel(const struct fx *f, const char *rel)
{
    char p[512];
    hpath(f, rel, p, sizeof(p));
    assert_int_equal(umount2(p, MNT_DETACH), 0);
}

/* ---- resolution ---------------------------------------------------------------------------- */

static const struct fs_entry *find_entry(const struct fs_entry *v, size_t n, const char *path)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v[i].path, path))
            return &v[i];
    return NULL;
}

static void test_paths_stay_inside(void **state)
{
    struct fx *f = *state;
    char buf[256], p[512];
    mkd(f, "etc", 0755, 1);
    put(f, "etc/passwd", "inside\n", 0644, 1);
    assert_int_equal(api_read(f, "/etc/passwd", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "inside\n");
    assert_int_equal(api_read(f, "etc/passwd", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "inside\n");
    assert_int_equal(api_read(f, "../../../../../etc/passwd", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "inside\n");
    assert_int_equal(api_read(f, "/etc/../../../etc/./passwd", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "inside\n");
    /* Absolute and relative symlinks resolve from the sandbox's root, not the host's. */
    lnk(f, "abs", "/etc/passwd");
    assert_int_equal(api_read(f, "abs", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "inside\n");
    lnk(f, "etc/up", "../../../../../../etc/passwd");
    assert_int_equal(api_read(f, "etc/up", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "inside\n");
    lnk(f, "hostetc", "/etc");
    assert_int_equal(api_read(f, "hostetc/passwd", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "inside\n");
    /* A link to a host path that does not exist inside stays unresolved. */
    snprintf(p, sizeof(p), "%s/keep", f->outside);
    lnk(f, "out", p);
    assert_int_equal(api_read(f, "out", buf, sizeof(buf)), -ENOENT);
    snprintf(p, sizeof(p), "%s/keep", f->outside);
    assert_int_equal(api_read(f, p, buf, sizeof(buf)), -ENOENT);

    struct stat st;
    int fd = fs_open_read(&f->root, "/etc/passwd", &st);
    assert_true(fd >= 0);
    assert_int_equal(st.st_size, 7);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    close(fd);

    assert_int_equal(fs_open_read(&f->root, "", NULL), -EINVAL);
    assert_int_equal(fs_open_read(&f->root, NULL, NULL), -EINVAL);
    assert_int_equal(fs_open_read(&f->root, "/etc", NULL), -EISDIR);
    assert_int_equal(fs_open_read(&f->root, "/", NULL), -EISDIR);
    assert_int_equal(fs_open_read(&f->root, "/nope", NULL), -ENOENT);
    assert_int_equal(fs_open_read(&f->root, "/etc/passwd/", NULL), -ENOTDIR);
    hpath(f, "fifo", p, sizeof(p));
    assert_int_equal(mkfifo(p, 0666), 0);
    assert_int_equal(fs_open_read(&f->root, "fifo", NULL), -EINVAL); /* and did not block */

    /* "/.." is the root itself. */
    struct fs_entry e;
    assert_int_equal(fs_stat(&f->root, "/..", 0, &e), 0);
    assert_int_equal(e.type, FS_DIR);
    fs_entry_free(&e);
    struct fs_entry *v;
    size_t n;
    assert_int_equal(fs_list(&f->root, "/../..", 0, 0, &v, &n, &(int){0}), 0);
    assert_non_null(find_entry(v, n, "abs"));
    fs_entries_free(v, n);
}

static void test_magic_links_refused(void **state)
{
    struct fx *f = *state;
    char buf[256];
    mkd(f, "proc", 0555, 0);
    mkd(f, "etc", 0755, 1);
    put(f, "etc/passwd", "inside\n", 0644, 1);
    if (mount_proc(f, "proc") < 0)
        skip();
    /* /proc/self/root would be the daemon's (the host's) root. */
    assert_int_equal(api_read(f, "/proc/self/root/etc/passwd", buf, sizeof(buf)), -ELOOP);
    assert_int_equal(api_read(f, "/proc/thread-self/root/etc/passwd", buf, sizeof(buf)), -ELOOP);
    /* Another uid's process: the ptrace check refuses before the magic link would. */
    int r = api_read(f, "/proc/1/root/etc/passwd", buf, sizeof(buf));
    assert_true(r == -ELOOP || r == -EACCES);
    assert_int_equal(api_read(f, "/proc/self/cwd/x", buf, sizeof(buf)), -ELOOP);
    lnk(f, "m", "/proc/self/root");
    assert_int_equal(api_read(f, "m/etc/passwd", buf, sizeof(buf)), -ELOOP);
    lnk(f, "fdl", "/proc/self/fd/0");
    assert_int_equal(api_read(f, "fdl", buf, sizeof(buf)), -ELOOP);
    struct fs_entry *v = (void *)1, e;
    size_t n = 1;
    int tr;
    assert_int_equal(fs_list(&f->root, "m", 0, 0, &v, &n, &tr), -ELOOP);
    assert_null(v);
    assert_int_equal(n, 0);
    char p[512];
    snprintf(p, sizeof(p), "/proc/self/root%s/x", f->outside);
    assert_int_equal(api_write(f, p, "no", 0644, 1), -ELOOP);
    assert_int_equal(fs_mkdir(&f->root, p, 1), -ELOOP);
    /* Stat of the link itself (not followed) is fine. */
    assert_int_equal(fs_stat(&f->root, "m", 0, &e), 0);
    assert_int_equal(e.type, FS_SYMLINK);
    assert_string_equal(e.link_target, "/proc/self/root");
    fs_entry_free(&e);
    umount_rel(f, "proc");
    assert_outside_untouched(f);
}

/* ---- stat and list ------------------------------------------------------------------------- */

static void test_stat_and_list(void **state)
{
    struct fx *f = *state;
    mkd(f, "d", 0755, 1);
    put(f, "d/f", "hello", 0640, 1);
    mkd(f, "d/sub", 0750, 1);
    put(f, "d/sub/g", "", 0600, 1);
    lnk(f, "d/link", "f");
    char p[512];
    hpath(f, "d/f", p, sizeof(p));
    struct timespec ts[2] = {{1609556645, 0}, {1609556645, 0}}; /* 2021-01-02T03:04:05Z */
    assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);

    struct fs_entry o;
    assert_int_equal(fs_stat(&f->root, "/d/f", 1, &o), 0);
    assert_string_equal(o.path, "/d/f");
    assert_int_equal(o.type, FS_FILE);
    assert_int_equal(o.size, 5);
    assert_int_equal(o.mode, 0640);
    assert_int_equal(o.mtime.tv_sec, 1609556645);
    assert_string_equal(o.sha256,
                        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    assert_null(o.link_target);
    /* As the files API shows it. */
    json_t *j = api_files_entry_json(&o);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "path")), "/d/f");
    assert_string_equal(json_string_value(json_object_get(j, "type")), "file");
    assert_int_equal(json_integer_value(json_object_get(j, "size")), 5);
    assert_string_equal(json_string_value(json_object_get(j, "mode")), "0640");
    assert_string_equal(json_string_value(json_object_get(j, "mtime")), "2021-01-02T03:04:05Z");
    assert_string_equal(json_string_value(json_object_get(j, "sha256")), o.sha256);
    assert_null(json_object_get(j, "link_target"));
    assert_int_equal(json_object_size(j), 6);
    json_decref(j);
    fs_entry_free(&o);
    assert_int_equal(fs_stat(&f->root, "d/f", 0, &o), 0);
    assert_string_equal(o.sha256, "");
    j = api_files_entry_json(&o);
    assert_null(json_object_get(j, "sha256"));
    json_decref(j);
    fs_entry_free(&o);

    assert_int_equal(fs_stat(&f->root, "d/link", 1, &o), 0);
    assert_int_equal(o.type, FS_SYMLINK);
    assert_string_equal(o.link_target, "f");
    assert_string_equal(o.sha256, "");
    j = api_files_entry_json(&o);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "symlink");
    assert_string_equal(json_string_value(json_object_get(j, "link_target")), "f");
    json_decref(j);
    fs_entry_free(&o);
    assert_int_equal(fs_stat(&f->root, "d/sub/", 0, &o), 0);
    assert_int_equal(o.type, FS_DIR);
    assert_int_equal(o.mode, 0750);
    j = api_files_entry_json(&o);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "dir");
    assert_string_equal(json_string_value(json_object_get(j, "mode")), "0750");
    json_decref(j);
    fs_entry_free(&o);
    assert_int_equal(fs_stat(&f->root, "/", 0, &o), 0);
    assert_int_equal(o.type, FS_DIR);
    fs_entry_free(&o);
    hpath(f, "fifo", p, sizeof(p));
    assert_int_equal(mkfifo(p, 0644), 0);
    assert_int_equal(fs_stat(&f->root, "fifo", 1, &o), 0);
    assert_int_equal(o.type, FS_OTHER);
    j = api_files_entry_json(&o);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "other");
    json_decref(j);
    fs_entry_free(&o);
    assert_int_equal(fs_stat(&f->root, "d/nope", 0, &o), -ENOENT);
    assert_null(o.path);

    int tr = -1;
    struct fs_entry *v;
    size_t n;
    assert_int_equal(fs_list(&f->root, "d", 0, 0, &v, &n, &tr), 0);
    assert_int_equal(tr, 0);
    assert_int_equal(n, 3);
    const struct fs_entry *e = find_entry(v, n, "f");
    assert_non_null(e);
    assert_int_equal(e->mode, 0640);
    assert_int_equal(e->type, FS_FILE);
    assert_string_equal(e->sha256, "");
    e = find_entry(v, n, "link");
    assert_non_null(e);
    assert_string_equal(e->link_target, "f");
    assert_non_null(find_entry(v, n, "sub"));
    fs_entries_free(v, n);

    assert_int_equal(fs_list(&f->root, "/d/", 1, 0, &v, &n, &tr), 0);
    assert_int_equal(tr, 0);
    assert_int_equal(n, 4);
    assert_non_null(find_entry(v, n, "sub/g"));
    fs_entries_free(v, n);

    assert_int_equal(fs_list(&f->root, "d", 1, 2, &v, &n, &tr), 0);
    assert_int_equal(tr, 1);
    assert_int_equal(n, 2);
    fs_entries_free(v, n);
    /* Listing through a symlink to a directory lists the directory. */
    lnk(f, "dl", "/d");
    assert_int_equal(fs_list(&f->root, "dl", 0, 0, &v, &n, &tr), 0);
    assert_int_equal(n, 3);
    fs_entries_free(v, n);
    assert_int_equal(fs_list(&f->root, "d/f", 0, 0, &v, &n, &tr), -ENOTDIR);

    /* A name that is not UTF-8: U+FFFD in the JSON, the exact bytes in path_b64. */
    put(f,
        "d/b\xff"
        "d",
        "", 0644, 1);
    assert_int_equal(fs_stat(&f->root,
                             "d/b\xff"
                             "d",
                             0, &o),
                     0);
    assert_string_equal(o.path, "d/b\xff"
                                "d");
    j = api_files_entry_json(&o);
    assert_string_equal(json_string_value(json_object_get(j, "path")), "d/b\xef\xbf\xbd"
                                                                       "d");
    assert_string_equal(json_string_value(json_object_get(j, "path_b64")), "ZC9i/2Q=");
    json_decref(j);
    fs_entry_free(&o);
}

/* ---- write --------------------------------------------------------------------------------- */

static int count_tmp(const struct fx *f, const char *rel)
{
    struct fs_entry *v;
    size_t nv;
    int tr, n = 0;
    assert_int_equal(fs_list(&f->root, rel, 0, 0, &v, &nv, &tr), 0);
    for (size_t i = 0; i < nv; i++)
        n += !strncmp(v[i].path, ".warren-tmp-", 12);
    fs_entries_free(v, nv);
    return n;
}

static void test_write_commit(void **state)
{
    struct fx *f = *state;
    char buf[256];
    struct stat sb;
    struct fs_tmp t;
    assert_int_equal(fs_open_write(&f->root, "/new/dir/file", 0640, 1, &t), 0);
    assert_int_equal(write(t.fd, "data", 4), 4);
    /* Not there before the commit; the temporary file is. */
    assert_int_equal(api_read(f, "/new/dir/file", buf, sizeof(buf)), -ENOENT);
    assert_int_equal(count_tmp(f, "new/dir"), 1);
    assert_int_equal(fs_commit(&t), 0);
    assert_int_equal(t.fd, -1);
    assert_int_equal(count_tmp(f, "new/dir"), 0);
    hread(f, "new/dir/file", buf, sizeof(buf));
    assert_string_equal(buf, "data");
    hstat(f, "new/dir/file", &sb);
    assert_int_equal(sb.st_mode & 07777, 0640);
    assert_int_equal(sb.st_uid, TUID);
    assert_int_equal(sb.st_gid, TGID);
    hstat(f, "new/dir", &sb);
    assert_int_equal(sb.st_mode & 07777, 0755);
    assert_int_equal(sb.st_uid, TUID);
    assert_int_equal(sb.st_gid, TGID);

    /* Replacing: the old content stays visible until the commit. */
    put(f, "x", "old", 0644, 1);
    assert_int_equal(fs_open_write(&f->root, "x", 0600, 0, &t), 0);
    assert_int_equal(write(t.fd, "new content", 11), 11);
    hread(f, "x", buf, sizeof(buf));
    assert_string_equal(buf, "old");
    assert_int_equal(fs_commit(&t), 0);
    hread(f, "x", buf, sizeof(buf));
    assert_string_equal(buf, "new content");
    hstat(f, "x", &sb);
    assert_int_equal(sb.st_mode & 07777, 0600);

    /* Abort leaves nothing behind and the old file alone. */
    assert_int_equal(fs_open_write(&f->root, "x", 0644, 0, &t), 0);
    assert_int_equal(write(t.fd, "zzz", 3), 3);
    fs_abort(&t);
    fs_abort(&t); /* harmless twice */
    assert_int_equal(fs_commit(&t), -EBADF);
    hread(f, "x", buf, sizeof(buf));
    assert_string_equal(buf, "new content");
    assert_int_equal(count_tmp(f, "/"), 0);

    assert_int_equal(fs_open_write(&f->root, "new", 0644, 0, &t), -EISDIR);
    assert_int_equal(t.fd, -1);
    fs_abort(&t); /* after a failed open: nothing to do */
    assert_int_equal(fs_open_write(&f->root, "/", 0644, 0, &t), -EISDIR);
    assert_int_equal(fs_open_write(&f->root, "new/..", 0644, 0, &t), -EISDIR);
    assert_int_equal(fs_open_write(&f->root, "y/", 0644, 0, &t), -EISDIR);
    assert_int_equal(fs_open_write(&f->root, "missing/y", 0644, 0, &t), -ENOENT);
    assert_int_equal(fs_open_write(&f->root, "x/y", 0644, 1, &t), -ENOTDIR);
    assert_int_equal(fs_open_write(&f->root, "", 0644, 0, &t), -EINVAL);

    /* fs_mkdir */
    assert_int_equal(fs_mkdir(&f->root, "m1", 0), 0);
    assert_int_equal(fs_mkdir(&f->root, "m1", 0), -EEXIST);
    assert_int_equal(fs_mkdir(&f->root, "m1", 1), 0);
    assert_int_equal(fs_mkdir(&f->root, "m2/a/b/", 0), -ENOENT);
    assert_int_equal(fs_mkdir(&f->root, "m2/a/b/", 1), 0);
    hstat(f, "m2/a/b", &sb);
    assert_true(S_ISDIR(sb.st_mode));
    assert_int_equal(sb.st_mode & 07777, 0755);
    assert_int_equal(sb.st_uid, TUID);
    assert_int_equal(fs_mkdir(&f->root, "/", 0), -EEXIST);
    assert_int_equal(fs_mkdir(&f->root, "/", 1), 0);
}

static void test_write_through_symlink(void **state)
{
    struct fx *f = *state;
    char buf[256], p[512];
    struct stat sb;
    mkd(f, "data", 0755, 1);
    put(f, "data/real", "before", 0644, 1);
    lnk(f, "link", "/data/real");
    assert_int_equal(api_write(f, "link", "via link", 0644, 0), 0);
    hread(f, "data/real", buf, sizeof(buf));
    assert_string_equal(buf, "via link");
    hstat(f, "link", &sb);
    assert_true(S_ISLNK(sb.st_mode));
    /* Relative, chained, and through ".." above the root. */
    lnk(f, "data/rel", "../../../../data/real");
    lnk(f, "chain", "data/rel");
    assert_int_equal(api_write(f, "chain", "chained", 0600, 0), 0);
    hread(f, "data/real", buf, sizeof(buf));
    assert_string_equal(buf, "chained");
    hstat(f, "data/real", &sb);
    assert_int_equal(sb.st_mode & 07777, 0600);
    hstat(f, "chain", &sb);
    assert_true(S_ISLNK(sb.st_mode));
    /* A dangling link creates its target. */
    lnk(f, "dang", "data/created");
    assert_int_equal(api_write(f, "dang", "c", 0644, 0), 0);
    hread(f, "data/created", buf, sizeof(buf));
    assert_string_equal(buf, "c");
    /* A link to a host path lands inside (or nowhere), never on the host. */
    snprintf(p, sizeof(p), "%s/keep", f->outside);
    lnk(f, "out", p);
    assert_int_equal(api_write(f, "out", "pwned", 0644, 0), -ENOENT);
    lnk(f, "out2", "../../../../../../../../../tmp/x");
    mkd(f, "tmp", 01777, 0);
    assert_int_equal(api_write(f, "out2", "inside", 0644, 0), 0);
    hread(f, "tmp/x", buf, sizeof(buf));
    assert_string_equal(buf, "inside");
    /* Links to directories and loops. */
    lnk(f, "dlink", "/data");
    struct fs_tmp t;
    assert_int_equal(fs_open_write(&f->root, "dlink", 0644, 0, &t), -EISDIR);
    lnk(f, "loop1", "loop2");
    lnk(f, "loop2", "loop1");
    assert_int_equal(fs_open_write(&f->root, "loop1", 0644, 0, &t), -ELOOP);
    assert_outside_untouched(f);
}

/* ---- remove -------------------------------------------------------------------------------- */

static void test_remove(void **state)
{
    struct fx *f = *state;
    char p[512];
    mkd(f, "t", 0755, 1);
    put(f, "t/a", "a", 0644, 1);
    mkd(f, "t/sub", 0755, 1);
    put(f, "t/sub/b", "b", 0644, 1);
    mkd(f, "t/sub/deeper", 0700, 1);
    lnk(f, "t/sub/outdir", f->outside);
    snprintf(p, sizeof(p), "%s/keep", f->outside);
    lnk(f, "t/outfile", p);
    lnk(f, "t/rootlink", "/");

    assert_int_equal(fs_remove(&f->root, "t", 0), -ENOTEMPTY);
    assert_int_equal(fs_remove(&f->root, "t/a/", 0), -ENOTDIR);
    assert_int_equal(fs_remove(&f->root, "t/a", 0), 0);
    assert_false(hexists(f, "t/a"));
    assert_int_equal(fs_remove(&f->root, "t", 1), 0);
    assert_false(hexists(f, "t"));
    assert_outside_untouched(f);
    assert_true(hexists(f, ".")); /* the root itself */

    assert_int_equal(fs_remove(&f->root, "/", 1), -EBUSY);
    assert_int_equal(fs_remove(&f->root, "//", 0), -EBUSY);
    assert_int_equal(fs_remove(&f->root, "x/..", 1), -EINVAL);
    assert_int_equal(fs_remove(&f->root, ".", 1), -EINVAL);
    assert_int_equal(fs_remove(&f->root, "missing", 0), -ENOENT);
    /* A symlink is removed, never followed. */
    lnk(f, "l", f->outside);
    assert_int_equal(fs_remove(&f->root, "l", 1), 0);
    assert_false(hexists(f, "l"));
    assert_outside_untouched(f);
    mkd(f, "e", 0755, 1);
    assert_int_equal(fs_remove(&f->root, "e/", 0), 0);
    assert_false(hexists(f, "e"));
}

/* ---- credentials --------------------------------------------------------------------------- */

static void test_creds(void **state)
{
    struct fx *f = *state;
    char buf[64];
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct before[2], after[2];
    assert_int_equal(syscall(SYS_capget, &h, before), 0);

    put(f, "secret", "host root only", 0600, 0);
    assert_int_equal(api_read(f, "secret", buf, sizeof(buf)), -EACCES);
    struct fs_entry o;
    assert_int_equal(fs_stat(&f->root, "secret", 1, &o), -EACCES);
    assert_int_equal(fs_stat(&f->root, "secret", 0, &o), 0); /* stat needs no read access */
    fs_entry_free(&o);
    /* Supplementary groups are dropped: group 0 on the calling thread does not open a root:root
     * 0640 file (raw setgroups: only this thread). */
    put(f, "grp", "group root", 0640, 0);
    gid_t zero = 0, saved[64];
    long ns = syscall(SYS_getgroups, 64, saved);
    assert_true(ns >= 0);
    assert_int_equal(syscall(SYS_setgroups, 1, &zero), 0);
    assert_int_equal(api_read(f, "grp", buf, sizeof(buf)), -EACCES);
    gid_t now[64];
    assert_int_equal(syscall(SYS_getgroups, 64, now), 1); /* restored */
    assert_int_equal(syscall(SYS_setgroups, (size_t)ns, saved), 0);

    mkd(f, "rootdir", 0755, 0);
    struct fs_tmp t;
    assert_int_equal(fs_open_write(&f->root, "rootdir/x", 0644, 0, &t), -EACCES);
    assert_int_equal(fs_mkdir(&f->root, "rootdir/y", 0), -EACCES);
    put(f, "rootdir/z", "z", 0666, 0);
    assert_int_equal(fs_remove(&f->root, "rootdir/z", 0), -EACCES);
    mkd(f, "private", 0700, 0);
    int tr;
    struct fs_entry *v;
    size_t n;
    assert_int_equal(fs_list(&f->root, "private", 0, 0, &v, &n, &tr), -EACCES);
    /* Read-only to the sandbox root but writable to the sandbox root's group: the fsgid is. */
    mkd(f, "grpdir", 0770, 0);
    char p[512];
    hpath(f, "grpdir", p, sizeof(p));
    assert_int_equal(chown(p, 0, TGID), 0);
    assert_int_equal(api_write(f, "grpdir/w", "w", 0644, 0), 0);
    struct stat sb;
    hstat(f, "grpdir/w", &sb);
    assert_int_equal(sb.st_uid, TUID);
    assert_int_equal(sb.st_gid, TGID);

    /* The thread is back to what it was. */
    assert_int_equal((uid_t)syscall(SYS_setfsuid, (uid_t)-1), 0);
    assert_int_equal((gid_t)syscall(SYS_setfsgid, (gid_t)-1), 0);
    assert_int_equal(syscall(SYS_capget, &h, after), 0);
    assert_memory_equal(before, after, sizeof(before));
    hread(f, "secret", buf, sizeof(buf));
    assert_string_equal(buf, "host root only");

    /* A root with id 0 is refused outright. */
    struct fs_root bad;
    assert_int_equal(fs_root_open_dir(f->dir, 0, TGID, &bad), -EINVAL);
    assert_int_equal(bad.root_fd, -1);
    assert_int_equal(fs_root_open_dir(f->dir, TUID, 0, &bad), -EINVAL);
}

struct worker {
    struct fx *f;
    int failures;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 2000; i++) {
        char buf[8];
        if (api_read(w->f, "secret", buf, sizeof(buf)) != -EACCES)
            w->failures++;
    }
    return NULL;
}

/* The switch is per thread: while a thread works as the sandbox's root, the others stay host
 * root (a libuv pool runs these functions next to the loop thread). */
static void test_creds_per_thread(void **state)
{
    struct fx *f = *state;
    put(f, "secret", "host root only", 0600, 0);
    char p[512];
    hpath(f, "secret", p, sizeof(p));
    struct worker w = {f, 0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, worker_main, &w), 0);
    int denied = 0;
    for (int i = 0; i < 2000; i++) {
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            denied++;
        else
            close(fd);
    }
    pthread_join(th, NULL);
    assert_int_equal(denied, 0);
    assert_int_equal(w.failures, 0);
}

static void test_pseudo_fs_refused(void **state)
{
    struct fx *f = *state;
    mkd(f, "p", 0777, 1);
    if (mount_proc(f, "p") < 0)
        skip();
    struct fs_tmp t;
    assert_int_equal(fs_open_write(&f->root, "p/x", 0644, 0, &t), -EPERM);
    assert_int_equal(fs_open_write(&f->root, "p/sys/kernel/x", 0644, 0, &t), -EPERM);
    assert_int_equal(fs_open_write(&f->root, "p/newdir/x", 0644, 1, &t), -EPERM);
    assert_int_equal(fs_mkdir(&f->root, "p/x", 0), -EPERM);
    assert_int_equal(fs_mkdir(&f->root, "p/x/y", 1), -EPERM);
    assert_int_equal(fs_remove(&f->root, "p/self", 0), -EPERM);
    assert_int_equal(fs_remove(&f->root, "p", 1), -EPERM);
    /* Reading is fine. */
    char buf[64];
    assert_int_equal(api_read(f, "p/sys/kernel/ostype", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "Linux\n");
    umount_rel(f, "p");
}

/* ---- archives ------------------------------------------------------------------------------ */

struct membuf {
    unsigned char *d;
    size_t len, cap;
    size_t off;   /* reading */
    size_t chunk; /* reading: at most this much per call */
    int fail;     /* writing: fail with -EPIPE */
};

static ssize_t mem_write(const void *data, size_t len, void *arg)
{
    struct membuf *m = arg;
    if (m->fail)
        return -EPIPE;
    if (m->len + len > m->cap) {
        m->cap = (m->len + len) * 2;
        m->d = realloc(m->d, m->cap);
        assert_non_null(m->d);
    }
    memcpy(m->d + m->len, data, len);
    m->len += len;
    return (ssize_t)len;
}

static ssize_t mem_read(void *buf, size_t len, void *arg)
{
    struct membuf *m = arg;
    size_t n = m->len - m->off;
    if (n > len)
        n = len;
    if (m->chunk && n > m->chunk)
        n = m->chunk;
    memcpy(buf, m->d + m->off, n);
    m->off += n;
    return (ssize_t)n;
}

static void compare_file(const struct fx *f, const char *a, const char *b, mode_t mode)
{
    char pa[512], pb[512];
    hpath(f, a, pa, sizeof(pa));
    hpath(f, b, pb, sizeof(pb));
    struct stat sa, sb;
    assert_int_equal(lstat(pa, &sa), 0);
    assert_int_equal(lstat(pb, &sb), 0);
    assert_int_equal(sa.st_mode, sb.st_mode);
    assert_int_equal(sb.st_mode & 07777, mode);
    assert_int_equal(sb.st_uid, TUID);
    assert_int_equal(sb.st_gid, TGID);
    if (S_ISREG(sa.st_mode)) {
        assert_int_equal(sa.st_size, sb.st_size);
        assert_int_equal(sa.st_mtime, sb.st_mtime);
        char *x = malloc((size_t)sa.st_size + 1), *y = malloc((size_t)sb.st_size + 1);
        int fa = open(pa, O_RDONLY), fb = open(pb, O_RDONLY);
        assert_int_equal(read(fa, x, (size_t)sa.st_size + 1), sa.st_size);
        assert_int_equal(read(fb, y, (size_t)sb.st_size + 1), sb.st_size);
        assert_memory_equal(x, y, (size_t)sa.st_size);
        close(fa);
        close(fb);
        free(x);
        free(y);
    } else if (S_ISLNK(sa.st_mode)) {
        char la[256] = {0}, lb[256] = {0};
        assert_true(readlink(pa, la, sizeof(la) - 1) > 0);
        assert_true(readlink(pb, lb, sizeof(lb) - 1) > 0);
        assert_string_equal(la, lb);
    }
}

static void make_src_tree(const struct fx *f)
{
    mkd(f, "src", 0755, 1);
    put(f, "src/a.txt", "alpha\n", 0640, 1);
    mkd(f, "src/sub", 0750, 1);
    char *big = malloc(200001);
    assert_non_null(big);
    for (size_t i = 0; i < 200000; i++)
        big[i] = (char)('a' + (i * 7919 % 26));
    big[200000] = '\0';
    put(f, "src/sub/big.txt", big, 0600, 1);
    free(big);
    mkd(f, "src/sub/empty", 0500, 1);
    lnk(f, "src/link", "a.txt");
    lnk(f, "src/sub/up", "../a.txt");
    put(f, "src/\xc3\xbcn\xc3\xaf.txt", "utf8 name", 0644, 1);
    put(f, "src/sub/suid", "s", 04755, 1);
    put(f, "src/raw\xff\xfe", "not UTF-8", 0644, 1);
    char p[512];
    hpath(f, "src/fifo", p, sizeof(p));
    assert_int_equal(mkfifo(p, 0644), 0); /* left out */
}

static void test_archive_roundtrip(void **state)
{
    struct fx *f = *state;
    make_src_tree(f);
    struct membuf m = {0};
    size_t n = 0;
    assert_int_equal(fs_archive_create(&f->root, "/src", 0, 0, 0, mem_write, &m, &n), 0);
    assert_int_equal(n, 10); /* src, a.txt, sub, big.txt, empty, link, up, ünï.txt, suid, raw */
    assert_true(m.len > 18 && m.d[0] == 0x1f && m.d[1] == 0x8b); /* gzip */
    assert_true(m.len < 100000);                                 /* and compressed */

    char err[256] = "x";
    m.chunk = 1000; /* the reader must cope with short reads */
    assert_int_equal(fs_archive_extract(&f->root, "dst", mem_read, &m, 0, 0, &n, err, sizeof(err)),
                     0);
    assert_string_equal(err, "");
    assert_int_equal(n, 10);
    compare_file(f, "src/a.txt", "dst/src/a.txt", 0640);
    compare_file(f, "src/sub", "dst/src/sub", 0750);
    compare_file(f, "src/sub/big.txt", "dst/src/sub/big.txt", 0600);
    compare_file(f, "src/sub/empty", "dst/src/sub/empty", 0500);
    compare_file(f, "src/link", "dst/src/link", 0777);
    compare_file(f, "src/sub/up", "dst/src/sub/up", 0777);
    compare_file(f, "src/\xc3\xbcn\xc3\xaf.txt", "dst/src/\xc3\xbcn\xc3\xaf.txt", 0644);
    compare_file(f, "src/raw\xff\xfe", "dst/src/raw\xff\xfe", 0644);
    struct stat sb;
    hstat(f, "dst/src/sub/suid", &sb);
    assert_int_equal(sb.st_mode & 07777, 0755); /* no setuid from an archive */
    assert_false(hexists(f, "dst/src/fifo"));
    hstat(f, "dst", &sb);
    assert_int_equal(sb.st_uid, TUID);

    /* Relative to the path itself, into an existing directory. */
    free(m.d);
    memset(&m, 0, sizeof(m));
    assert_int_equal(fs_archive_create(&f->root, "src", 1, 0, 0, mem_write, &m, &n), 0);
    assert_int_equal(n, 9);
    assert_int_equal(fs_archive_extract(&f->root, "/dst", mem_read, &m, 0, 0, &n, err, sizeof(err)),
                     0);
    compare_file(f, "src/sub/big.txt", "dst/sub/big.txt", 0600);
    compare_file(f, "src/link", "dst/link", 0777);

    /* A single file; the root. */
    free(m.d);
    memset(&m, 0, sizeof(m));
    assert_int_equal(fs_archive_create(&f->root, "src/a.txt", 1, 0, 0, mem_write, &m, &n), 0);
    assert_int_equal(n, 1);
    assert_true(m.len < 1024); /* the gzip output is not padded to a 10 KiB block */
    assert_int_equal(fs_archive_extract(&f->root, "one", mem_read, &m, 0, 0, &n, err, sizeof(err)),
                     0);
    compare_file(f, "src/a.txt", "one/a.txt", 0640);
    free(m.d);
    memset(&m, 0, sizeof(m));
    assert_int_equal(fs_archive_create(&f->root, "/", 0, 0, 0, mem_write, &m, &n), 0);
    assert_true(n > 10);
    free(m.d);
    memset(&m, 0, sizeof(m));

    /* Limits and output failures. */
    assert_int_equal(fs_archive_create(&f->root, "src", 0, 0, 3, mem_write, &m, &n), -E2BIG);
    assert_int_equal(n, 3);
    free(m.d);
    memset(&m, 0, sizeof(m));
    assert_int_equal(fs_archive_create(&f->root, "src", 0, 100, 0, mem_write, &m, &n), -EFBIG);
    assert_true(m.len <= 100);
    free(m.d);
    memset(&m, 0, sizeof(m));
    m.fail = 1;
    assert_int_equal(fs_archive_create(&f->root, "src", 0, 0, 0, mem_write, &m, &n), -EPIPE);
    assert_int_equal(fs_archive_create(&f->root, "nope", 0, 0, 0, mem_write, &m, &n), -ENOENT);
    assert_int_equal(fs_archive_create(&f->root, "src/fifo", 0, 0, 0, mem_write, &m, &n), -EINVAL);
    free(m.d);
}

/* The writer with files and names chosen by the caller: what cannot be opened is left out, a
 * symlink is followed (inside the sandbox) and stored as its target's contents. */
static void test_archive_writer(void **state)
{
    struct fx *f = *state;
    make_src_tree(f);
    lnk(f, "src/escape", f->outside);
    struct membuf m = {0};
    struct fs_archive *ar;
    size_t n = 0;
    assert_int_equal(fs_archive_new(&f->root, 0, 0, mem_write, &m, &ar), 0);
    assert_int_equal(fs_archive_add_file(ar, "/src/a.txt", "x/first"), 1);
    assert_int_equal(fs_archive_add_file(ar, "src/link", "linked"), 1);
    assert_int_equal(fs_archive_add_file(ar, "src/nope", "nope"), 0);
    assert_int_equal(fs_archive_add_file(ar, "src/sub", "dir"), 0);
    assert_int_equal(fs_archive_add_file(ar, "src/fifo", "fifo"), 0);
    assert_int_equal(fs_archive_add_file(ar, "src/escape/keep", "outside"), 0);
    assert_int_equal(fs_archive_close(ar, &n), 0);
    assert_int_equal(n, 2);
    char err[256];
    assert_int_equal(fs_archive_extract(&f->root, "w", mem_read, &m, 0, 0, &n, err, sizeof(err)),
                     0);
    assert_int_equal(n, 2);
    compare_file(f, "src/a.txt", "w/x/first", 0640);
    compare_file(f, "src/a.txt", "w/linked", 0640);
    assert_false(hexists(f, "w/outside"));
    free(m.d);

    /* A failure is final: later calls return it and nothing more is written. */
    memset(&m, 0, sizeof(m));
    assert_int_equal(fs_archive_new(&f->root, 0, 1, mem_write, &m, &ar), 0);
    assert_int_equal(fs_archive_add_file(ar, "src/a.txt", "a"), 1);
    assert_int_equal(fs_archive_add_file(ar, "src/a.txt", "b"), -E2BIG);
    size_t len = m.len;
    assert_int_equal(fs_archive_add_file(ar, "src/a.txt", "c"), -E2BIG);
    assert_int_equal(fs_archive_close(ar, &n), -E2BIG);
    assert_int_equal(n, 1);
    assert_int_equal(m.len, len);
    free(m.d);
    assert_outside_untouched(f);
}

/* An entry of a hand-made archive. */
struct spec {
    const char *name;
    mode_t type; /* AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFCHR, AE_IFIFO */
    const char *data;
    const char *link;     /* symlink target */
    const char *hardlink; /* hard link target */
    la_int64_t size;      /* declared size if > 0 (else strlen(data)) */
    mode_t perm;          /* 0: 0755 for directories, 0644 otherwise */
};

#define F(n, d)                                                                                    \
    {                                                                                              \
        .name = n, .type = AE_IFREG, .data = d                                                     \
    }
#define D(n)                                                                                       \
    {                                                                                              \
        .name = n, .type = AE_IFDIR                                                                \
    }
#define L(n, t)                                                                                    \
    {                                                                                              \
        .name = n, .type = AE_IFLNK, .link = t                                                     \
    }
#define H(n, t)                                                                                    \
    {                                                                                              \
        .name = n, .type = AE_IFREG, .hardlink = t                                                 \
    }
#define X(n, ty)                                                                                   \
    {                                                                                              \
        .name = n, .type = ty                                                                      \
    }

static void build_tar(const struct spec *s, size_t n, int gzip, struct membuf *m)
{
    memset(m, 0, sizeof(*m));
    struct archive *a = archive_write_new();
    assert_non_null(a);
    if (gzip)
        assert_int_equal(archive_write_add_filter_gzip(a), ARCHIVE_OK);
    assert_int_equal(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    size_t cap = 1 << 20, used = 0;
    m->d = malloc(cap);
    assert_non_null(m->d);
    assert_int_equal(archive_write_open_memory(a, m->d, cap, &used), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, s[i].name);
        archive_entry_set_filetype(e, s[i].type);
        archive_entry_set_perm(e, s[i].perm ? s[i].perm : s[i].type == AE_IFDIR ? 0755 : 0644);
        size_t dl = s[i].data ? strlen(s[i].data) : 0;
        archive_entry_set_size(e, s[i].size > 0 ? s[i].size : (la_int64_t)dl);
        if (s[i].link)
            archive_entry_set_symlink(e, s[i].link);
        if (s[i].hardlink)
            archive_entry_set_hardlink(e, s[i].hardlink);
        if (s[i].type == AE_IFCHR)
            archive_entry_set_rdev(e, makedev(1, 3));
        assert_true(archive_write_header(a, e) >= ARCHIVE_WARN);
        if (dl)
            assert_int_equal(archive_write_data(a, s[i].data, dl), (la_ssize_t)dl);
        archive_entry_free(e);
    }
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    m->len = used;
}

static int extract(const struct fx *f, const struct spec *s, size_t n, uint64_t max_bytes,
                   size_t max_entries, size_t *entries, char *err, size_t errlen)
{
    struct membuf m;
    build_tar(s, n, (n & 1) != 0, &m); /* both plain tar and tar.gz */
    size_t dummy;
    int r = fs_archive_extract(&f->root, "dst", mem_read, &m, max_bytes, max_entries,
                               entries ? entries : &dummy, err, errlen);
    free(m.d);
    return r;
}

#define REFUSED(expect, ...)                                                                       \
    do {                                                                                           \
        const struct spec s_[] = {__VA_ARGS__};                                                    \
        err[0] = '\0';                                                                             \
        assert_int_equal(                                                                          \
            extract(f, s_, sizeof(s_) / sizeof(s_[0]), 1 << 20, 100, NULL, err, sizeof(err)),      \
            expect);                                                                               \
        assert_true(err[0] != '\0');                                                               \
    } while (0)

static void test_extract_refusals(void **state)
{
    struct fx *f = *state;
    char err[256];
    mkd(f, "etc", 0755, 1);
    put(f, "etc/passwd", "inside\n", 0644, 1);
    mkd(f, "dst", 0755, 1);
    mkd(f, "dst/sub", 0755, 1);

    REFUSED(-EINVAL, F("../x", "x"));
    assert_false(hexists(f, "x"));
    REFUSED(-EINVAL, F("ok", "ok"), F("a/../../x", "x"));
    assert_true(hexists(f, "dst/ok")); /* not atomic: what came before stays */
    assert_false(hexists(f, "x"));
    REFUSED(-EINVAL, F("/abs", "x"));
    assert_false(hexists(f, "abs"));
    assert_false(hexists(f, "dst/abs"));
    REFUSED(-EINVAL, L("l", "../../etc"));
    REFUSED(-EINVAL, L("l", "/etc"));
    REFUSED(-EINVAL, L("l", ".."));
    REFUSED(-EINVAL, L("sub/l", "../.."));
    REFUSED(-EINVAL, L("l", ""));
    assert_false(hexists(f, "dst/l"));
    /* ".." after a name: "s" could be a symlink, and then ".." would not undo it. */
    REFUSED(-EINVAL, L("d/s", ".."), L("d/l2", "s/../x"));
    /* Writing through a symlink the archive made (or any symlink) is refused. */
    REFUSED(-ELOOP, L("s", "sub"), F("s/f", "f"));
    assert_false(hexists(f, "dst/sub/f"));
    REFUSED(-ELOOP, L("lnk", "."), L("lnk/l", "../x"));
    REFUSED(-EINVAL, F("a", "a"), H("h", "a"));
    assert_false(hexists(f, "dst/h"));
    REFUSED(-EINVAL, X("null", AE_IFCHR));
    assert_false(hexists(f, "dst/null"));
    REFUSED(-EINVAL, X("fifo", AE_IFIFO));
    REFUSED(-EISDIR, F("sub", "file over a directory"));

    /* Limits. */
    char big[3001];
    memset(big, 'b', 3000);
    big[3000] = '\0';
    const struct spec huge[] = {F("big", big)};
    assert_int_equal(extract(f, huge, 1, 1000, 100, NULL, err, sizeof(err)), -EFBIG);
    assert_false(hexists(f, "dst/big"));
    const struct spec two[] = {F("b1", "12345678"), F("b2", "12345678")};
    assert_int_equal(extract(f, two, 2, 10, 100, NULL, err, sizeof(err)), -EFBIG);
    assert_false(hexists(f, "dst/b2"));
    const struct spec many[] = {F("m1", "1"), F("m2", "2"), F("m3", "3"), F("m4", "4"),
                                F("m5", "5")};
    size_t n = 0;
    assert_int_equal(extract(f, many, 5, 1000, 3, &n, err, sizeof(err)), -E2BIG);
    assert_int_equal(n, 3);
    assert_true(hexists(f, "dst/m3"));
    assert_false(hexists(f, "dst/m4"));

    /* Accepted: links inside, "./" prefixes, a pre-existing symlink replaced (not followed). */
    char p[512];
    snprintf(p, sizeof(p), "%s/keep", f->outside);
    lnk(f, "dst/pre", p);
    mkd(f, "dst/tmp", 01777, 1);
    const struct spec good[] = {D("./"),
                                D("tmp/"),
                                {.name = "ro", .type = AE_IFDIR, .perm = 0555},
                                F("ro/inside", "x"),
                                D("./d/"),
                                F("d//e/f.txt", "deep"),
                                L("d/e/up", "../../sub"),
                                L("d/e/same", "./f.txt"),
                                F("pre", "replaced")};
    err[0] = '\0';
    assert_int_equal(extract(f, good, 9, 1000, 100, &n, err, sizeof(err)), 0);
    assert_string_equal(err, "");
    assert_int_equal(n, 9);
    struct stat sb;
    hstat(f, "dst/tmp", &sb);
    assert_int_equal(sb.st_mode & 07777, 01777); /* an existing directory is left alone */
    hstat(f, "dst/ro", &sb);
    assert_int_equal(sb.st_mode & 07777, 0555); /* set last, after its contents */
    assert_int_equal(sb.st_uid, TUID);
    assert_true(hexists(f, "dst/ro/inside"));
    char buf[64];
    hread(f, "dst/d/e/f.txt", buf, sizeof(buf));
    assert_string_equal(buf, "deep");
    hread(f, "dst/pre", buf, sizeof(buf));
    assert_string_equal(buf, "replaced");
    assert_outside_untouched(f);
    hread(f, "etc/passwd", buf, sizeof(buf));
    assert_string_equal(buf, "inside\n");

    /* Not an archive at all. */
    struct membuf m = {.d = (unsigned char *)strdup("this is not a tar archive, not at all....")};
    m.len = strlen((char *)m.d);
    assert_int_equal(fs_archive_extract(&f->root, "dst", mem_read, &m, 0, 0, &n, err, sizeof(err)),
                     -EINVAL);
    free(m.d);
}

/* ---- a real process's root ----------------------------------------------------------------- */

static void test_root_of_process(void **state)
{
    struct fx *f = *state;
    mkd(f, "etc", 0755, 1);
    put(f, "etc/passwd", "inside\n", 0644, 1);
    struct fs_root r;
    /* Our own pid shares the daemon's mount namespace: refused. */
    assert_int_equal(fs_root_open(getpid(), TUID, TGID, &r), -EINVAL);
    assert_int_equal(fs_root_open(getpid(), 0, 0, &r), -EINVAL);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(pfd[0]);
        /* Nothing is mounted here, so / need not be made private (nor be a mount point). */
        if (unshare(CLONE_NEWNS) < 0 || chroot(f->dir) < 0 || chdir("/") < 0)
            _exit(1);
        if (write(pfd[1], "k", 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    close(pfd[1]);
    char c;
    assert_int_equal(read(pfd[0], &c, 1), 1);
    close(pfd[0]);
    int rc = fs_root_open(child, TUID, TGID, &r);
    if (rc == 0) {
        char buf[64];
        int fd = fs_open_read(&r, "/etc/passwd", NULL);
        assert_true(fd >= 0);
        fd_read(fd, buf, sizeof(buf));
        assert_string_equal(buf, "inside\n");
        assert_int_equal(fs_open_read(&r, "/../../../etc/passwd", NULL) >= 0, 1);
        fs_root_close(&r);
        assert_int_equal(r.root_fd, -1);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    assert_int_equal(rc, 0);
    assert_int_equal(fs_root_open(child, TUID, TGID, &r), -ESRCH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_paths_stay_inside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_magic_links_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stat_and_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_through_symlink, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_creds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_creds_per_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pseudo_fs_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_archive_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_archive_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_extract_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_root_of_process, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
