/*
 * volume: the validation of a sandbox spec's volumes (session/volume.h) and the idmapped bind a
 * sandbox sees a volume through (sandbox/idmap.h), the latter for real (the unit tests run as
 * root) in a private mount namespace of this test process.
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
#include <sys/fsuid.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "sandbox/idmap.h"
#include "sandbox/rootfs.h"
#include "session/volume.h"

#define BASE (1048576u + 65536u * 9)

/* ---- volume_parse_spec ---------------------------------------------------------------------- */

static struct registry reg;
static struct volume vol_a = {.name = "a", .size_mib = 16, .ready = 1};
static struct volume vol_b = {.name = "b", .size_mib = 16, .ready = 1};
static struct volume vol_new = {.name = "new", .size_mib = 16}; /* being created */

static void setup_registry(void)
{
    memset(&reg, 0, sizeof(reg));
    vol_a.next = &vol_b;
    vol_b.next = &vol_new;
    vol_new.next = NULL;
    reg.volumes = &vol_a;
}

/* Parses `volumes` (JSON text, may be NULL) and `workspace`; returns the result code. */
static int parse(const char *volumes, const char *workspace, json_t **out, char *err)
{
    json_t *v = volumes ? json_loads(volumes, 0, NULL) : NULL;
    json_t *w = workspace ? json_string(workspace) : NULL;
    if (volumes)
        assert_non_null(v);
    int r = volume_parse_spec(&reg, v, w, out, err, 256);
    json_decref(v);
    json_decref(w);
    return r;
}

static int path_result(const char *path)
{
    char err[256];
    json_t *out = NULL, *v = json_pack("[{s:s, s:s}]", "name", "a", "path", path);
    assert_non_null(v);
    int r = volume_parse_spec(&reg, v, NULL, &out, err, sizeof(err));
    json_decref(v);
    json_decref(out);
    return r;
}

static void test_paths(void **state)
{
    (void)state;
    setup_registry();
    static const char *const good[] = {"/data",         "/workspace", "/home/u/data",
                                       "/mnt/x",        "/tmp",       "/usr/local/share/x",
                                       "/etc/app/conf", "/opt",       "/run/other",
                                       "/a.b/c..d/...", "/var/lib/x"};
    static const char *const bad[] = {
        "/",           "data",          "",         "/a/../b", "/a/./b",  "/a//b",
        "/a/",         "/..",           "/.",       "/proc",   "/proc/x", "/sys",
        "/sys/fs",     "/dev",          "/dev/shm", "/run",    "/usr",    "/etc",
        "/run/warren", "/run/warren/x", "/lib",     "/lib64",  "/bin",    "/sbin",
        "/a\nb",       "/a\tb",         "//",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (path_result(good[i]) != 0)
            fail_msg("path %s refused", good[i]);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (path_result(bad[i]) != -EINVAL)
            fail_msg("path '%s' accepted", bad[i]);
    }
    char longp[VOLUME_PATH_MAX + 8];
    memset(longp, 'x', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = '\0';
    assert_int_equal(path_result(longp), -EINVAL);
}

static void test_spec(void **state)
{
    char err[256];
    json_t *out = NULL;
    (void)state;
    setup_registry();
    /* Nothing: NULL. */
    assert_int_equal(parse(NULL, NULL, &out, err), 0);
    assert_null(out);
    assert_int_equal(parse("[]", NULL, &out, err), 0);
    assert_null(out);
    /* Sorted by path, read_only defaulted, workspace at /workspace. */
    assert_int_equal(parse("[{\"name\": \"b\", \"path\": \"/workspace/in\", \"read_only\": true},"
                           " {\"name\": \"a\", \"path\": \"/data\"}]",
                           "a", &out, err),
                     0);
    char *text = json_dumps(out, JSON_COMPACT);
    assert_string_equal(text, "[{\"name\":\"a\",\"path\":\"/data\",\"read_only\":false},"
                              "{\"name\":\"a\",\"path\":\"/workspace\",\"read_only\":false},"
                              "{\"name\":\"b\",\"path\":\"/workspace/in\",\"read_only\":true}]");
    free(text);
    json_decref(out);
    /* Unknown volumes: -ENOENT naming them; one being created is not there yet. */
    assert_int_equal(parse("[{\"name\": \"zz\", \"path\": \"/d\"}]", NULL, &out, err), -ENOENT);
    assert_non_null(strstr(err, "'zz'"));
    assert_int_equal(parse(NULL, "new", &out, err), -ENOENT);
    assert_null(out);
    /* Malformed. */
    static const char *const bad[] = {
        "{}",
        "[\"a\"]",
        "[{\"name\": \"a\"}]",
        "[{\"path\": \"/d\"}]",
        "[{\"name\": 1, \"path\": \"/d\"}]",
        "[{\"name\": \"a\", \"path\": \"/d\", \"read_only\": 1}]",
        "[{\"name\": \"a\", \"path\": \"/d\", \"other\": 1}]",
        "[{\"name\": \"a\", \"path\": \"/d\"}, {\"name\": \"b\", \"path\": \"/d\"}]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (parse(bad[i], NULL, &out, err) != -EINVAL)
            fail_msg("accepted %s", bad[i]);
        assert_null(out);
    }
    /* workspace and a volume at /workspace: a duplicate. */
    assert_int_equal(parse("[{\"name\": \"b\", \"path\": \"/workspace\"}]", "a", &out, err),
                     -EINVAL);
    /* At most VOLUME_MAX_PER_SANDBOX. */
    char many[4096];
    size_t n = 0;
    n += (size_t)snprintf(many + n, sizeof(many) - n, "[");
    for (int i = 0; i <= VOLUME_MAX_PER_SANDBOX; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n, "%s{\"name\": \"a\", \"path\": \"/d%d\"}",
                              i ? "," : "", i);
    snprintf(many + n, sizeof(many) - n, "]");
    assert_int_equal(parse(many, NULL, &out, err), -EINVAL);
    assert_non_null(strstr(err, "at most"));
    /* volume_check_exist on a parsed list. */
    assert_int_equal(parse("[{\"name\": \"b\", \"path\": \"/d\"}]", NULL, &out, err), 0);
    assert_int_equal(volume_check_exist(&reg, out, err, sizeof(err)), 0);
    vol_b.deleting = 1;
    assert_int_equal(volume_check_exist(&reg, out, err, sizeof(err)), -ENOENT);
    vol_b.deleting = 0;
    json_decref(out);
}

/* ---- idmap_bind ------------------------------------------------------------------------------ */

static char dir[64], src[96], ro[96], rw[96];
static int userns = -1;

/* Whether something is mounted on `p` (a bind of the same file system included). */
static int is_mount(const char *p)
{
    struct statx stx;
    return statx(AT_FDCWD, p, 0, STATX_BASIC_STATS, &stx) == 0 &&
           (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
           (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

static int setup_mounts(void **state)
{
    (void)state;
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return -1;
    snprintf(dir, sizeof(dir), "/tmp/warren-volume-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    /* A tmpfs of its own: the test must not depend on what /tmp is. */
    if (mount("tmpfs", dir, "tmpfs", 0, "mode=0755,size=4m") < 0)
        return -1;
    snprintf(src, sizeof(src), "%s/src", dir);
    snprintf(ro, sizeof(ro), "%s/ro", dir);
    snprintf(rw, sizeof(rw), "%s/rw", dir);
    if (mkdir(src, 0755) < 0 || mkdir(ro, 0700) < 0 || mkdir(rw, 0700) < 0)
        return -1;
    char p[160];
    snprintf(p, sizeof(p), "%s/root-file", src);
    int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    close(fd);
    snprintf(p, sizeof(p), "%s/user-file", src);
    if ((fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644)) < 0 || fchown(fd, 1000, 1000) < 0)
        return -1;
    close(fd);
    return rootfs_userns(BASE, 65536, &userns);
}

static int teardown_mounts(void **state)
{
    (void)state;
    if (userns >= 0)
        close(userns);
    umount2(rw, MNT_DETACH); /* left by a failed test */
    umount2(ro, MNT_DETACH);
    umount2(dir, MNT_DETACH);
    rmdir(dir);
    return 0;
}

static void test_idmap_bind(void **state)
{
    const char *what = NULL;
    char p[160];
    struct stat st;
    (void)state;
    assert_int_equal(idmap_bind(src, rw, userns, 0, &what), 0);
    assert_int_equal(idmap_bind(src, ro, userns, 1, &what), 0);
    /* Stored ids 0 and 1000 are the sandbox's root and uid 1000: BASE and BASE + 1000. */
    snprintf(p, sizeof(p), "%s/root-file", rw);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_uid, BASE);
    snprintf(p, sizeof(p), "%s/user-file", ro);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_uid, BASE + 1000);
    /* The sandbox's root creating a file: stored owned by 0. */
    setfsuid(BASE);
    setfsgid(BASE);
    snprintf(p, sizeof(p), "%s/new", rw);
    int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    int err = errno;
    snprintf(p, sizeof(p), "%s/new2", ro);
    int fd2 = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    int err2 = errno;
    setfsuid(0);
    setfsgid(0);
    if (fd < 0)
        fail_msg("create through the idmapped bind: %s", strerror(err));
    close(fd);
    assert_int_equal(fd2, -1);
    assert_int_equal(err2, EROFS);
    snprintf(p, sizeof(p), "%s/new", src);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_uid, 0);
    assert_int_equal(st.st_gid, 0);
    assert_true(is_mount(rw));
    assert_int_equal(umount2(rw, 0), 0);
    assert_int_equal(umount2(ro, 0), 0);
}

static void test_idmap_bind_failure_leaves_nothing(void **state)
{
    const char *what = NULL;
    char missing[128];
    (void)state;
    snprintf(missing, sizeof(missing), "%s/missing", dir);
    assert_int_equal(idmap_bind(missing, rw, userns, 0, &what), -ENOENT);
    assert_string_equal(what, "open_tree");
    assert_false(is_mount(rw));
    assert_int_equal(idmap_bind(src, missing, userns, 0, &what), -ENOENT);
    assert_string_equal(what, "move_mount");
    assert_true(idmap_bind(src, rw, -1, 0, &what) < 0);
    assert_false(is_mount(rw));
}

int main(void)
{
    const struct CMUnitTest spec_tests[] = {
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_spec),
    };
    const struct CMUnitTest mount_tests[] = {
        cmocka_unit_test(test_idmap_bind),
        cmocka_unit_test(test_idmap_bind_failure_leaves_nothing),
    };
    int r = cmocka_run_group_tests(spec_tests, NULL, NULL);
    return r | cmocka_run_group_tests(mount_tests, setup_mounts, teardown_mounts);
}
