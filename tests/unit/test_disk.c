/*
 * disk: real images, real loop devices, real ext4 mounts (the unit tests run as root), in a
 * private mount namespace of this test process so nothing shows on the host.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "sandbox/disk.h"

struct fixture {
    char dir[64];
    char image[128];
    char mnt[128];
    struct disk_manager *dm;
};

/* Setup failures are reported here, with the step and errno, and fail the whole group; cmocka
 * still runs the group teardown then, with *state never set. */
static int setup_failed(struct fixture *f, const char *step, int err, const char *detail)
{
    print_error("disk setup: %s: %s%s%s\n", step, strerror(err), detail[0] ? ": " : "", detail);
    if (f->dir[0])
        util_remove_tree(f->dir);
    return -1;
}

static int setup(void **state)
{
    static struct fixture f;
    char msg[256] = "";
    memset(&f, 0, sizeof(f));
    if (unshare(CLONE_NEWNS) < 0)
        return setup_failed(&f, "unshare(CLONE_NEWNS) (run the unit tests as root)", errno, "");
    /* Private, so that the loop mounts never show on the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return setup_failed(&f, "making / private in the test's mount namespace", errno,
                            errno == EINVAL ? "/ is not a mount point (a chroot?): enter the root "
                                              "with pivot_root, or bind-mount it onto itself "
                                              "before chroot"
                                            : "");
    snprintf(f.dir, sizeof(f.dir), "/tmp/warren-disk-XXXXXX");
    if (!mkdtemp(f.dir)) {
        int err = errno;
        f.dir[0] = '\0';
        return setup_failed(&f, "mkdtemp /tmp/warren-disk-XXXXXX", err, "");
    }
    snprintf(f.image, sizeof(f.image), "%s/d.img", f.dir);
    snprintf(f.mnt, sizeof(f.mnt), "%s/mnt", f.dir);
    if (mkdir(f.mnt, 0711) < 0)
        return setup_failed(&f, "mkdir", errno, f.mnt);
    int r = disk_manager_new(f.dir, &f.dm, msg, sizeof(msg));
    if (r < 0)
        return setup_failed(&f, "disk_manager_new", -r, msg);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (!f)
        return 0;
    disk_manager_free(f->dm);
    util_remove_tree(f->dir);
    return 0;
}

/* Loop devices whose backing file is under `dir`. */
static int loops_backed_by(const char *dir)
{
    glob_t g;
    int n = 0;
    if (glob("/sys/block/loop*/loop/backing_file", 0, NULL, &g) != 0)
        return 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        char buf[512] = "";
        FILE *fp = fopen(g.gl_pathv[i], "r");
        if (fp) {
            if (!fgets(buf, sizeof(buf), fp))
                buf[0] = '\0';
            fclose(fp);
        }
        n += strstr(buf, dir) != NULL;
    }
    globfree(&g);
    return n;
}

static void test_create_fill_destroy(void **state)
{
    struct fixture *f = *state;
    static const char *const subdirs[] = {"root", "workspace", NULL};
    const char *what = NULL;
    char path[256];
    struct stat st;
    assert_int_equal(disk_create(f->dm, f->image, f->mnt, 8, subdirs, 4242, &what), 0);
    assert_int_equal(loops_backed_by(f->dir), 1);
    /* sparse: the image is 8 MiB long but occupies far less */
    assert_int_equal(stat(f->image, &st), 0);
    assert_int_equal(st.st_size, 8 << 20);
    assert_true(st.st_blocks * 512 < (1 << 20));
    assert_true(disk_image_bytes(f->image) < (1 << 20));
    /* the layout: root 0711 host root, subdirs owned by the sandbox */
    assert_int_equal(stat(f->mnt, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0711);
    snprintf(path, sizeof(path), "%s/workspace", f->mnt);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_uid, 4242);
    /* full → ENOSPC, with at most the disk's size written */
    snprintf(path, sizeof(path), "%s/workspace/fill", f->mnt);
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    static char block[65536];
    size_t total = 0;
    ssize_t n;
    while ((n = write(fd, block, sizeof(block))) > 0)
        total += (size_t)n;
    assert_int_equal(n, -1);
    assert_int_equal(errno, ENOSPC);
    close(fd);
    assert_true(total > (6 << 20) && total <= (8 << 20));
    assert_int_equal(disk_destroy(f->image, f->mnt), 0);
    assert_int_equal(access(f->image, F_OK), -1);
    assert_int_equal(loops_backed_by(f->dir), 0);
    /* destroying again is not an error */
    assert_int_equal(disk_destroy(f->image, f->mnt), 0);
}

static void test_sizes_and_reuse(void **state)
{
    struct fixture *f = *state;
    const char *what = NULL;
    /* several sizes, each twice (the second copy comes from the cached base image) */
    for (int round = 0; round < 2; round++) {
        for (unsigned long long mib = 1; mib <= 64; mib *= 4) {
            assert_int_equal(disk_create(f->dm, f->image, f->mnt, mib, NULL, 0, &what), 0);
            struct stat st;
            assert_int_equal(stat(f->image, &st), 0);
            assert_int_equal((unsigned long long)st.st_size, mib << 20);
            assert_int_equal(disk_destroy(f->image, f->mnt), 0);
        }
    }
    assert_int_equal(loops_backed_by(f->dir), 0);
}

static void test_failure_leaves_nothing(void **state)
{
    struct fixture *f = *state;
    const char *what = NULL;
    char missing[160];
    snprintf(missing, sizeof(missing), "%s/no-such-dir", f->dir);
    assert_true(disk_create(f->dm, f->image, missing, 4, NULL, 0, &what) < 0);
    assert_string_equal(what, "disk mount");
    assert_int_equal(access(f->image, F_OK), -1);
    assert_int_equal(loops_backed_by(f->dir), 0);
}

static void test_pool(void **state)
{
    struct fixture *f = *state;
    static const char *const subdirs[] = {"root", "workspace", NULL};
    char msg[256], path[256];
    struct disk_manager *dm;
    struct stat st;
    /* a manager of its own, so that freeing it with disks still pooled is tested too */
    assert_int_equal(disk_manager_new(f->dir, &dm, msg, sizeof(msg)), 0);
    disk_pool_configure(dm, 4, subdirs, 2);
    assert_int_equal(disk_pool_fill(dm), 0);
    assert_int_equal(loops_backed_by(f->dir), 2);
    assert_true(disk_pool_claims(dm) > (6 << 20));
    assert_int_equal(disk_pool_take(dm, f->image, f->mnt, 8, 7), -ENOENT); /* size */
    rmdir(f->mnt);
    assert_int_equal(disk_pool_take(dm, f->image, f->mnt, 4, 7), 0);
    assert_int_equal(stat(f->image, &st), 0);
    assert_int_equal(st.st_size, 4 << 20);
    snprintf(path, sizeof(path), "%s/workspace", f->mnt);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_uid, 7);
    assert_int_equal(disk_destroy(f->image, f->mnt), 0);
    rmdir(f->mnt);
    assert_int_equal(loops_backed_by(f->dir), 1);
    /* one left: take it, then the pool is empty until filled again */
    assert_int_equal(disk_pool_take(dm, f->image, f->mnt, 4, 0), 0);
    assert_int_equal(disk_destroy(f->image, f->mnt), 0);
    rmdir(f->mnt);
    assert_int_equal(disk_pool_take(dm, f->image, f->mnt, 4, 0), -ENOENT);
    assert_int_equal(disk_pool_fill(dm), 0);
    assert_int_equal(loops_backed_by(f->dir), 2);
    disk_manager_free(dm); /* unmounts the pooled disks */
    assert_int_equal(loops_backed_by(f->dir), 0);
    mkdir(f->mnt, 0711);
}

static void test_retire(void **state)
{
    struct fixture *f = *state;
    const char *what = NULL;
    assert_int_equal(disk_create(f->dm, f->image, f->mnt, 4, NULL, 0, &what), 0);
    assert_int_equal(disk_retire(f->dm, f->image, f->mnt), 0);
    /* gone from where it was at once; still mounted (elsewhere) until the next fill */
    assert_int_equal(access(f->image, F_OK), -1);
    assert_int_equal(rmdir(f->mnt), 0);
    assert_int_equal(disk_trash_count(f->dm), 1);
    assert_int_equal(loops_backed_by(f->dir), 1);
    assert_int_equal(disk_pool_fill(f->dm), 0); /* no pool configured: only the trash */
    assert_int_equal(disk_trash_count(f->dm), 0);
    assert_int_equal(loops_backed_by(f->dir), 0);
    assert_int_equal(mkdir(f->mnt, 0711), 0);
}

static void test_host_free(void **state)
{
    (void)state;
    int64_t avail = -1, size = -1;
    assert_int_equal(disk_host_free("/tmp", &avail, &size), 0);
    assert_true(avail > 0 && size >= avail);
    assert_int_equal(disk_host_free("/no/such/dir", &avail, NULL), -ENOENT);
    assert_int_equal(disk_image_bytes("/no/such/image"), 0);
}

/* The ballast takes a disk's free space from its users without costing the host, and gives it
 * back; it is never made on a directory that is not a mount. */
static void test_ballast(void **state)
{
    struct fixture *f = *state;
    static const char *const subdirs[] = {"workspace", NULL};
    const char *what = NULL;
    char path[256];
    int64_t free0, free1, ballast;
    assert_int_equal(disk_ballast_set(f->mnt, 1 << 20), -EINVAL);
    assert_int_equal(disk_space(f->mnt, &free0, &ballast), -EINVAL);
    assert_int_equal(disk_create(f->dm, f->image, f->mnt, 32, subdirs, 0, &what), 0);
    int64_t host0 = disk_image_bytes(f->image);
    assert_int_equal(disk_space(f->mnt, &free0, &ballast), 0);
    assert_int_equal(ballast, 0);
    assert_true(free0 > (28 << 20));
    /* more than there is: it takes all, without error */
    assert_int_equal(disk_ballast_set(f->mnt, 64 << 20), 0);
    assert_int_equal(disk_space(f->mnt, &free1, &ballast), 0);
    assert_true(free1 < (1 << 20));
    assert_true(ballast > (27 << 20));
    assert_true(disk_image_bytes(f->image) - host0 < (1 << 20));
    snprintf(path, sizeof(path), "%s/workspace/fill", f->mnt);
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    static char block[65536];
    size_t total = 0;
    ssize_t n;
    while ((n = write(fd, block, sizeof(block))) > 0)
        total += (size_t)n;
    assert_int_equal(n, -1);
    assert_int_equal(errno, ENOSPC);
    assert_true(total < (1 << 20));
    /* shrinking gives the space back at once */
    assert_int_equal(disk_ballast_set(f->mnt, 8 << 20), 0);
    assert_int_equal(disk_space(f->mnt, &free1, &ballast), 0);
    assert_int_equal(ballast, 8 << 20);
    assert_true(free1 > (18 << 20));
    assert_true(write(fd, block, sizeof(block)) == sizeof(block));
    close(fd);
    assert_int_equal(disk_ballast_set(f->mnt, 0), 0);
    assert_int_equal(disk_space(f->mnt, &free1, &ballast), 0);
    assert_int_equal(ballast, 0);
    assert_int_equal(disk_destroy(f->image, f->mnt), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_fill_destroy),
        cmocka_unit_test(test_sizes_and_reuse),
        cmocka_unit_test(test_failure_leaves_nothing),
        cmocka_unit_test(test_pool),
        cmocka_unit_test(test_retire),
        cmocka_unit_test(test_host_free),
        cmocka_unit_test(test_ballast),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
