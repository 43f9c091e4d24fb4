/*
 * rootfs: a real overlayfs over real idmapped layer directories (the unit tests run as root), in a
 * private mount namespace of this test process so nothing shows on the host.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "core/util.h"
#include "sandbox/rootfs.h"

#define BASE (1048576u + 65536u * 7)

struct fixture {
    char dir[64];
    char top[96], bottom[96], upper[96], work[96], mnt[96];
    int userns;
};

static int setup_failed(struct fixture *f, const char *step, int err)
{
    print_error("rootfs setup: %s: %s\n", step, strerror(err));
    if (f->dir[0])
        util_remove_tree(f->dir);
    return -1;
}

static int put(const char *dir, const char *rel, const char *content, uid_t uid)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, content, strlen(content));
    int r = n == (ssize_t)strlen(content) && fchown(fd, uid, uid) == 0 ? 0 : -EIO;
    close(fd);
    return r;
}

static int mkd(const char *dir, const char *rel, uid_t uid)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, rel);
    return mkdir(p, 0755) == 0 && chown(p, uid, uid) == 0 ? 0 : -errno;
}

/* Two layers as the layer store leaves them: owners as in the image, overlay-style whiteouts.
 *   bottom: etc/passwd (0), home/u/file (1000), gone (0), opq/old (0), keep/a (0)
 *   top:    gone = whiteout (char 0:0), opq/ opaque with opq/new, bin/tool (0) */
static int make_layers(struct fixture *f)
{
    char p[256];
    int r = 0;
    r = r ?: mkd(f->bottom, "etc", 0);
    r = r ?: put(f->bottom, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0);
    r = r ?: mkd(f->bottom, "home", 0);
    r = r ?: mkd(f->bottom, "home/u", 1000);
    r = r ?: put(f->bottom, "home/u/file", "mine\n", 1000);
    r = r ?: put(f->bottom, "gone", "old\n", 0);
    r = r ?: mkd(f->bottom, "opq", 0);
    r = r ?: put(f->bottom, "opq/old", "hidden\n", 0);
    r = r ?: mkd(f->bottom, "keep", 0);
    r = r ?: put(f->bottom, "keep/a", "a\n", 0);
    r = r ?: mkd(f->top, "bin", 0);
    r = r ?: put(f->top, "bin/tool", "#!/bin/sh\n", 0);
    r = r ?: mkd(f->top, "opq", 0);
    r = r ?: put(f->top, "opq/new", "new\n", 0);
    if (r)
        return r;
    snprintf(p, sizeof(p), "%s/gone", f->top);
    if (mknod(p, S_IFCHR | 0000, makedev(0, 0)) < 0)
        return -errno;
    snprintf(p, sizeof(p), "%s/opq", f->top);
    if (setxattr(p, "trusted.overlay.opaque", "y", 1, 0) < 0)
        return -errno;
    return 0;
}

static int setup(void **state)
{
    static struct fixture f;
    memset(&f, 0, sizeof(f));
    f.userns = -1;
    if (unshare(CLONE_NEWNS) < 0)
        return setup_failed(&f, "unshare(CLONE_NEWNS) (run the unit tests as root)", errno);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return setup_failed(&f, "making / private", errno);
    snprintf(f.dir, sizeof(f.dir), "/tmp/warren-rootfs-XXXXXX");
    if (!mkdtemp(f.dir)) {
        int err = errno;
        f.dir[0] = '\0';
        return setup_failed(&f, "mkdtemp", err);
    }
    snprintf(f.top, sizeof(f.top), "%s/top", f.dir);
    snprintf(f.bottom, sizeof(f.bottom), "%s/bottom", f.dir);
    snprintf(f.upper, sizeof(f.upper), "%s/upper", f.dir);
    snprintf(f.work, sizeof(f.work), "%s/work", f.dir);
    snprintf(f.mnt, sizeof(f.mnt), "%s/mnt", f.dir);
    if (mkdir(f.top, 0755) < 0 || mkdir(f.bottom, 0755) < 0 || mkdir(f.upper, 0755) < 0 ||
        chown(f.upper, BASE, BASE) < 0 || mkdir(f.work, 0700) < 0 || mkdir(f.mnt, 0755) < 0)
        return setup_failed(&f, "mkdir", errno);
    int r = make_layers(&f);
    if (r < 0)
        return setup_failed(&f, "layers", -r);
    if ((r = rootfs_userns(BASE, 65536, &f.userns)) < 0)
        return setup_failed(&f, "rootfs_userns", -r);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (!f)
        return 0;
    rootfs_umount(f->mnt);
    if (f->userns >= 0)
        close(f->userns);
    util_remove_tree(f->dir);
    return 0;
}

static void path(char *out, size_t cap, const char *dir, const char *rel)
{
    snprintf(out, cap, "%s/%s", dir, rel);
}

static int is_mountpoint(const char *dir)
{
    struct stat a, b;
    char parent[256];
    snprintf(parent, sizeof(parent), "%s/..", dir);
    if (stat(dir, &a) < 0 || stat(parent, &b) < 0)
        return -1;
    return a.st_dev != b.st_dev;
}

static void read_all(const char *p, char *buf, size_t cap)
{
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, cap - 1);
    assert_true(n >= 0);
    buf[n] = '\0';
    close(fd);
}

static void test_userns(void **state)
{
    struct fixture *f = *state;
    char link[64], target[64];
    /* a user namespace, not ours */
    snprintf(link, sizeof(link), "/proc/self/fd/%d", f->userns);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    assert_true(n > 0);
    target[n] = '\0';
    assert_memory_equal(target, "user:[", 6);
    struct stat a, b;
    assert_int_equal(fstat(f->userns, &a), 0);
    assert_int_equal(stat("/proc/self/ns/user", &b), 0);
    assert_true(a.st_ino != b.st_ino);
}

/* One namespace per mapping, kept: the same one again for the same mapping, another for another
 * mapping, a fresh one after rootfs_userns_clear(). */
static void test_userns_cached(void **state)
{
    struct fixture *f = *state;
    int same = -1, other = -1, fresh = -1;
    struct stat a, b, c, d;
    assert_int_equal(rootfs_userns(BASE, 65536, &same), 0);
    assert_int_equal(rootfs_userns(BASE + 65536, 65536, &other), 0);
    assert_true(same != f->userns);
    assert_int_equal(fstat(f->userns, &a), 0);
    assert_int_equal(fstat(same, &b), 0);
    assert_int_equal(fstat(other, &c), 0);
    assert_true(a.st_ino == b.st_ino);
    assert_true(a.st_ino != c.st_ino);
    rootfs_userns_clear();
    assert_int_equal(rootfs_userns(BASE, 65536, &fresh), 0);
    assert_int_equal(fstat(fresh, &d), 0);
    assert_true(d.st_ino != a.st_ino);
    close(same);
    close(other);
    close(fresh);
    rootfs_userns_clear();
}

static void test_mount_shifts_hides_copies_up(void **state)
{
    struct fixture *f = *state;
    const char *lowers[] = {f->top, f->bottom};
    const char *what = NULL;
    char p[256], buf[256];
    struct stat sb;

    int r = rootfs_mount(f->mnt, lowers, 2, f->upper, f->work, f->userns, &what);
    if (r < 0)
        print_error("rootfs_mount: %s: %s\n", what, strerror(-r));
    assert_int_equal(r, 0);
    assert_int_equal(is_mountpoint(f->mnt), 1);

    /* owners shifted by the sandbox's base */
    path(p, sizeof(p), f->mnt, "etc/passwd");
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, BASE);
    assert_int_equal(sb.st_gid, BASE);
    path(p, sizeof(p), f->mnt, "home/u/file");
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, BASE + 1000);
    assert_int_equal(sb.st_gid, BASE + 1000);
    path(p, sizeof(p), f->mnt, "bin/tool"); /* top layer */
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, BASE);
    assert_int_equal(stat(f->mnt, &sb), 0); /* the root is the upper dir: the sandbox's root */
    assert_int_equal(sb.st_uid, BASE);

    /* whiteout: the lower file is gone; opaque dir: only the top layer's content */
    path(p, sizeof(p), f->mnt, "gone");
    assert_int_equal(lstat(p, &sb), -1);
    assert_int_equal(errno, ENOENT);
    path(p, sizeof(p), f->mnt, "opq/old");
    assert_int_equal(lstat(p, &sb), -1);
    assert_int_equal(errno, ENOENT);
    path(p, sizeof(p), f->mnt, "opq/new");
    assert_int_equal(lstat(p, &sb), 0);
    path(p, sizeof(p), f->mnt, "keep/a");
    assert_int_equal(lstat(p, &sb), 0);

    /* a write copies up, with the shifted owner, into the upper layer */
    path(p, sizeof(p), f->mnt, "etc/passwd");
    int fd = open(p, O_WRONLY | O_APPEND | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "x:x:1:1::/:/bin/sh\n", 19), 19);
    close(fd);
    path(p, sizeof(p), f->upper, "etc/passwd");
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, BASE);
    assert_int_equal(sb.st_gid, BASE);
    read_all(p, buf, sizeof(buf));
    assert_string_equal(buf, "root:x:0:0:root:/root:/bin/sh\nx:x:1:1::/:/bin/sh\n");
    path(p, sizeof(p), f->upper, "etc");
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, BASE);
    path(p, sizeof(p), f->mnt, "home/u/file");
    assert_int_equal(chmod(p, 0600), 0); /* a metadata change copies up too (metacopy=off) */
    path(p, sizeof(p), f->upper, "home/u/file");
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, BASE + 1000);
    assert_int_equal(sb.st_size, 5);
    /* deleting a lower file leaves a whiteout in the upper, not in the layer */
    path(p, sizeof(p), f->mnt, "keep/a");
    assert_int_equal(unlink(p), 0);
    assert_int_equal(lstat(p, &sb), -1);

    /* the layers are untouched */
    path(p, sizeof(p), f->bottom, "etc/passwd");
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, 0);
    read_all(p, buf, sizeof(buf));
    assert_string_equal(buf, "root:x:0:0:root:/root:/bin/sh\n");
    path(p, sizeof(p), f->bottom, "home/u/file");
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, 1000);
    assert_int_equal(sb.st_mode & 0777, 0644);
    path(p, sizeof(p), f->bottom, "keep/a");
    assert_int_equal(stat(p, &sb), 0);
    path(p, sizeof(p), f->top, "gone");
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(S_ISCHR(sb.st_mode));

    /* the upper survives an unmount: mounted again, the changes are there */
    assert_int_equal(rootfs_umount(f->mnt), 0);
    assert_int_equal(is_mountpoint(f->mnt), 0);
    assert_int_equal(rootfs_mount(f->mnt, lowers, 2, f->upper, f->work, f->userns, &what), 0);
    path(p, sizeof(p), f->mnt, "etc/passwd");
    read_all(p, buf, sizeof(buf));
    assert_string_equal(buf, "root:x:0:0:root:/root:/bin/sh\nx:x:1:1::/:/bin/sh\n");
    path(p, sizeof(p), f->mnt, "keep/a");
    assert_int_equal(lstat(p, &sb), -1);

    /* umount leaves nothing: no mount of the test's directory is left */
    assert_int_equal(rootfs_umount(f->mnt), 0);
    assert_int_equal(is_mountpoint(f->mnt), 0);
    FILE *mi = fopen("/proc/self/mountinfo", "re");
    assert_non_null(mi);
    char line[1024];
    int found = 0;
    while (fgets(line, sizeof(line), mi))
        found |= strstr(line, f->dir) != NULL;
    fclose(mi);
    assert_false(found);
}

static void test_umount_missing(void **state)
{
    struct fixture *f = *state;
    char p[256];
    assert_int_equal(rootfs_umount(f->mnt), 0); /* a directory, nothing mounted */
    path(p, sizeof(p), f->dir, "nonexistent");
    assert_int_equal(rootfs_umount(p), 0);
}

static void test_failure_leaves_nothing(void **state)
{
    struct fixture *f = *state;
    char missing[256];
    const char *what = NULL;
    path(missing, sizeof(missing), f->dir, "no-such-layer");
    const char *lowers[] = {f->top, missing};
    assert_int_equal(rootfs_mount(f->mnt, lowers, 2, f->upper, f->work, f->userns, &what), -ENOENT);
    assert_string_equal(what, "open_tree");
    assert_int_equal(is_mountpoint(f->mnt), 0);
    assert_int_equal(rootfs_mount(f->mnt, lowers, 0, f->upper, f->work, f->userns, &what), -EINVAL);
    /* a bad work dir is refused by the overlay itself, after the layers were opened */
    const char *good[] = {f->top, f->bottom};
    int r = rootfs_mount(f->mnt, good, 2, f->upper, missing, f->userns, &what);
    assert_true(r < 0);
    assert_int_equal(is_mountpoint(f->mnt), 0);
}

/* More layers than a mount(2) option string could name by path. */
static void test_many_layers(void **state)
{
    struct fixture *f = *state;
    const char *lowers[ROOTFS_MAX_LAYERS];
    char dirs[ROOTFS_MAX_LAYERS][256], p[256];
    const char *what = NULL;
    for (int i = 0; i < ROOTFS_MAX_LAYERS; i++) {
        /* long names: 64 × ~150 bytes is well past the 4 KiB page of mount(2) options */
        snprintf(dirs[i], sizeof(dirs[i]),
                 "%s/layer-%02d-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                 f->dir, i);
        assert_int_equal(mkdir(dirs[i], 0755), 0);
        snprintf(p, sizeof(p), "f%02d", i);
        assert_int_equal(put(dirs[i], p, "x", 0), 0);
        lowers[i] = dirs[i];
    }
    char upper[256], work[256];
    path(upper, sizeof(upper), f->dir, "upper2");
    path(work, sizeof(work), f->dir, "work2");
    assert_int_equal(mkdir(upper, 0755), 0);
    assert_int_equal(mkdir(work, 0700), 0);
    int r = rootfs_mount(f->mnt, lowers, ROOTFS_MAX_LAYERS, upper, work, f->userns, &what);
    if (r < 0)
        print_error("rootfs_mount: %s: %s\n", what, strerror(-r));
    assert_int_equal(r, 0);
    for (int i = 0; i < ROOTFS_MAX_LAYERS; i++) {
        struct stat sb;
        snprintf(p, sizeof(p), "%s/f%02d", f->mnt, i);
        assert_int_equal(stat(p, &sb), 0);
        assert_int_equal(sb.st_uid, BASE);
    }
    assert_int_equal(rootfs_umount(f->mnt), 0);
    assert_int_equal(is_mountpoint(f->mnt), 0);
}

static void test_resolve_user(void **state)
{
    struct fixture *f = *state;
    char root[128], p[256], home[64];
    uid_t uid;
    gid_t gid;
    snprintf(root, sizeof(root), "%s/users", f->dir);
    assert_int_equal(mkdir(root, 0755), 0);
    assert_int_equal(mkd(root, "etc", 0), 0);
    assert_int_equal(put(root, "etc/passwd",
                         "root:x:0:0:root:/root:/bin/sh\n# junk line\nbad\n"
                         "app:x:1000:1001:App:/home/app:/bin/sh\nbig:x:70000:1::/:/bin/sh",
                         0),
                     0);
    assert_int_equal(put(root, "etc/group", "root:x:0:\napp:x:1001:\nstaff:x:50:app\n", 0), 0);
#define RESOLVE(u) rootfs_resolve_user(root, u, 65536, &uid, &gid, home, sizeof(home))
    assert_int_equal(RESOLVE("app"), 0);
    assert_int_equal(uid, 1000);
    assert_int_equal(gid, 1001);
    assert_string_equal(home, "/home/app");
    assert_int_equal(RESOLVE("app:staff"), 0);
    assert_int_equal(gid, 50);
    assert_int_equal(RESOLVE("app:7"), 0);
    assert_int_equal(gid, 7);
    assert_int_equal(RESOLVE("1000"), 0); /* numeric: the entry's group and home */
    assert_int_equal(gid, 1001);
    assert_string_equal(home, "/home/app");
    assert_int_equal(RESOLVE("4242"), 0); /* numeric, no entry: gid 0, home / */
    assert_int_equal(uid, 4242);
    assert_int_equal(gid, 0);
    assert_string_equal(home, "/");
    assert_int_equal(RESOLVE("4242:4243"), 0);
    assert_int_equal(gid, 4243);
    assert_int_equal(RESOLVE("root"), 0);
    assert_int_equal(uid, 0);
    assert_int_equal(RESOLVE("ghost"), -ENOENT);
    assert_int_equal(RESOLVE("app:ghosts"), -ENOENT);
    assert_int_equal(RESOLVE("big"), -ERANGE); /* outside the sandbox's 65536 ids */
    assert_int_equal(RESOLVE("70000"), -ERANGE);
    assert_int_equal(RESOLVE(""), -EINVAL);
    assert_int_equal(RESOLVE("app:"), -ENOENT);
    /* /etc/passwd a symlink out of the root: read inside it (here: missing), never the host's */
    snprintf(p, sizeof(p), "%s/etc/passwd", root);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(symlink("/etc/os-release", p), 0); /* exists on the host only */
    assert_int_equal(RESOLVE("root"), -ENOENT);
    assert_int_equal(RESOLVE("0"), 0);
#undef RESOLVE
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_userns),
        cmocka_unit_test(test_userns_cached),
        cmocka_unit_test(test_mount_shifts_hides_copies_up),
        cmocka_unit_test(test_umount_missing),
        cmocka_unit_test(test_failure_leaves_nothing),
        cmocka_unit_test(test_many_layers),
        cmocka_unit_test(test_resolve_user),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
