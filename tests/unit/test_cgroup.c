/*
 * cgroup: the v2 backend against a fake cgroupfs tree (the CI machines mount v1, so v2 cannot run
 * for real there), and v1 path handling against a fake per-controller tree.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "sandbox/cgroup.h"

static char root[256];
static char err[1024];

static void put(const char *rel, const char *content)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

static void get(const char *rel, char *out, size_t cap)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
}

static int exists(const char *rel)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    return access(p, F_OK) == 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(root, sizeof(root), "/tmp/warren-cgtest-XXXXXX");
    assert_non_null(mkdtemp(root));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    util_remove_tree(root);
    return 0;
}

static const char *const v2_files[] = {"cgroup.procs", "cgroup.subtree_control",
                                       "memory.max",   "memory.swap.max",
                                       "pids.max",     "cpu.max",
                                       "cgroup.kill",  "cgroup.controllers"};

/* Pre-creates the files the kernel would create in a new v2 cgroup, whose parent delegates
 * every controller. */
static void fake_v2_dir(const char *rel)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    util_mkdir_p(p, 0755);
    for (size_t i = 0; i < sizeof(v2_files) / sizeof(v2_files[0]); i++) {
        char f[600];
        snprintf(f, sizeof(f), "%s/%s", rel, v2_files[i]);
        put(f, strcmp(v2_files[i], "cgroup.controllers") == 0 ? "cpu io memory pids\n" : "");
    }
}

/* The kernel lets an empty cgroup be removed with its files in it; a fake one must lose them
 * first. */
static void fake_v2_emptied(const char *rel)
{
    for (size_t i = 0; i < sizeof(v2_files) / sizeof(v2_files[0]); i++) {
        char f[600];
        snprintf(f, sizeof(f), "%s/%s/%s", root, rel, v2_files[i]);
        unlink(f);
    }
}

static void test_v2_layout_and_limits(void **state)
{
    (void)state;
    char self[512], buf[256];
    put("cgroup.controllers", "cpu memory pids\n");
    fake_v2_dir("system.slice/warren.service");
    fake_v2_dir("system.slice/warren.service/warren-daemon");
    fake_v2_dir("system.slice/warren.service/warren");
    fake_v2_dir("system.slice/warren.service/warren/sb-1");
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "0::/system.slice/warren.service\n");

    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), 0);
    assert_int_equal(m.mode, CGROUP_V2);
    assert_string_equal(cgroup_mode_name(m.mode), "v2");
    /* The daemon moved itself into a leaf and delegated controllers. */
    get("system.slice/warren.service/warren-daemon/cgroup.procs", buf, sizeof(buf));
    assert_string_equal(buf, "0");
    get("system.slice/warren.service/cgroup.subtree_control", buf, sizeof(buf));
    assert_string_equal(buf, "+memory +pids +cpu");
    get("system.slice/warren.service/warren/cgroup.subtree_control", buf, sizeof(buf));
    assert_string_equal(buf, "+memory +pids +cpu");

    struct cgroup_limits lim = {1.5, 512ull << 20, 256};
    char procs[CGROUP_V1_CONTROLLERS][CGROUP_PATH_MAX];
    size_t n = 0;
    assert_int_equal(cgroup_create(&m, "sb-1", &lim, procs, &n), 0);
    assert_int_equal(n, 1);
    assert_non_null(strstr(procs[0], "/system.slice/warren.service/warren/sb-1/cgroup.procs"));
    get("system.slice/warren.service/warren/sb-1/memory.max", buf, sizeof(buf));
    assert_string_equal(buf, "536870912");
    get("system.slice/warren.service/warren/sb-1/memory.swap.max", buf, sizeof(buf));
    assert_string_equal(buf, "0");
    get("system.slice/warren.service/warren/sb-1/pids.max", buf, sizeof(buf));
    assert_string_equal(buf, "256");
    get("system.slice/warren.service/warren/sb-1/cpu.max", buf, sizeof(buf));
    assert_string_equal(buf, "150000 100000");

    /* Live changes: the fields given are rewritten (a fake file is not truncated by a write,
     * the kernel's are: empty them first), a field of 0 is left alone. */
    put("system.slice/warren.service/warren/sb-1/memory.max", "");
    put("system.slice/warren.service/warren/sb-1/cpu.max", "");
    struct cgroup_limits more = {0.25, 1024ull << 20, 0};
    assert_int_equal(cgroup_set_limits(&m, "sb-1", &more), 0);
    get("system.slice/warren.service/warren/sb-1/memory.max", buf, sizeof(buf));
    assert_string_equal(buf, "1073741824");
    get("system.slice/warren.service/warren/sb-1/cpu.max", buf, sizeof(buf));
    assert_string_equal(buf, "25000 100000");
    get("system.slice/warren.service/warren/sb-1/pids.max", buf, sizeof(buf));
    assert_string_equal(buf, "256");
    assert_int_equal(cgroup_set_limits(&m, "sb-none", &more), -ENOENT);

    /* Destroy kills through cgroup.kill then removes the directory; rmdir of a fake dir with
     * files fails with ENOTEMPTY, which is reported. */
    assert_int_not_equal(cgroup_destroy(&m, "sb-1"), 0);
    get("system.slice/warren.service/warren/sb-1/cgroup.kill", buf, sizeof(buf));
    assert_string_equal(buf, "1");
    /* A sandbox whose cgroup is already gone is not an error. */
    assert_int_equal(cgroup_destroy(&m, "sb-none"), 0);
}

static void test_v2_usage_and_freeze(void **state)
{
    (void)state;
    char self[512];
    put("cgroup.controllers", "cpu memory pids\n");
    put("cgroup.subtree_control", "");
    fake_v2_dir("warren");
    fake_v2_dir("warren/sb-9");
    put("warren/sb-9/memory.current", "1048576\n");
    put("warren/sb-9/pids.current", "7\n");
    put("warren/sb-9/cpu.stat", "usage_usec 2500000\nuser_usec 2000000\n");
    put("warren/sb-9/memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n");
    put("warren/sb-9/cgroup.freeze", "");
    /* The kernel would flip "frozen" asynchronously; the fake tree says it is done already. */
    put("warren/sb-9/cgroup.events", "populated 1\nfrozen 1\n");
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "0::/\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), 0);
    struct cgroup_usage u;
    assert_int_equal(cgroup_usage(&m, "sb-9", &u), 0);
    assert_int_equal(u.memory_bytes, 1048576);
    assert_int_equal(u.pids, 7);
    assert_int_equal(u.cpu_usec, 2500000);
    assert_int_equal(u.oom_kills, 2);
    assert_int_equal(cgroup_freeze(&m, "sb-9", 1), 0);
    char buf[16];
    get("warren/sb-9/cgroup.freeze", buf, sizeof(buf));
    assert_string_equal(buf, "1");
    assert_int_equal(cgroup_is_frozen(&m, "sb-9"), 1);
    /* The kernel reports the freeze asynchronously: until then it is not frozen. */
    put("warren/sb-9/cgroup.events", "populated 1\nfrozen 0\n");
    assert_int_equal(cgroup_is_frozen(&m, "sb-9"), 0);
    assert_int_equal(cgroup_freeze(&m, "sb-9", 0), 0);
    get("warren/sb-9/cgroup.freeze", buf, sizeof(buf));
    assert_string_equal(buf, "0");
    assert_int_equal(cgroup_is_frozen(&m, "sb-nope"), 0);
}

static void test_v2_root_cgroup(void **state)
{
    (void)state;
    char self[512];
    put("cgroup.controllers", "cpu memory pids\n");
    put("cgroup.subtree_control", "");
    fake_v2_dir("warren");
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "0::/\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), 0);
    /* In the root cgroup the daemon stays where it is (the root may hold processes). */
    assert_false(exists("warren-daemon"));
    char want[512];
    snprintf(want, sizeof(want), "%s/warren", root);
    assert_string_equal(m.base[0], want);
}

static void test_v2_cleanup_restores_the_daemon_cgroup(void **state)
{
    (void)state;
    char self[512], buf[256];
    put("cgroup.controllers", "cpu io memory pids\n");
    fake_v2_dir("svc");
    /* A controller enabled before the daemon came stays enabled after it leaves. */
    put("svc/cgroup.subtree_control", "io pids\n");
    fake_v2_dir("svc/warren-daemon");
    fake_v2_dir("svc/warren");
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "0::/svc\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), 0);
    get("svc/warren-daemon/cgroup.procs", buf, sizeof(buf));
    assert_string_equal(buf, "0");
    get("svc/cgroup.subtree_control", buf, sizeof(buf));
    assert_string_equal(buf, "+memory +pids +cpu");

    fake_v2_emptied("svc/warren");
    fake_v2_emptied("svc/warren-daemon");
    put("svc/cgroup.subtree_control", ""); /* holds what is written to it next */
    cgroup_manager_cleanup(&m);
    /* Undone in order: the sandboxes' parent, the controllers the daemon enabled (and only
     * those), the daemon's move, its leaf: the supervisor can start it in svc again. */
    assert_false(exists("svc/warren"));
    get("svc/cgroup.subtree_control", buf, sizeof(buf));
    assert_string_equal(buf, "-memory -cpu");
    get("svc/cgroup.procs", buf, sizeof(buf));
    assert_string_equal(buf, "0");
    assert_false(exists("svc/warren-daemon"));
}

static void test_v2_cleanup_keeps_what_sandboxes_still_use(void **state)
{
    (void)state;
    char self[512], buf[256];
    put("cgroup.controllers", "cpu memory pids\n");
    fake_v2_dir("svc");
    fake_v2_dir("svc/warren-daemon");
    fake_v2_dir("svc/warren");
    fake_v2_dir("svc/warren/sb-1");
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "0::/svc\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), 0);
    fake_v2_emptied("svc/warren");
    fake_v2_emptied("svc/warren-daemon");
    /* svc/warren cannot go while a sandbox's cgroup is in it: nothing after that step is
     * undone either, since it would fail or take the controllers from under the sandbox. */
    cgroup_manager_cleanup(&m);
    assert_true(exists("svc/warren/sb-1"));
    get("svc/cgroup.subtree_control", buf, sizeof(buf));
    assert_string_equal(buf, "+memory +pids +cpu");
    get("svc/cgroup.procs", buf, sizeof(buf));
    assert_string_equal(buf, "");
    assert_true(exists("svc/warren-daemon"));
}

static void test_v2_root_cleanup_leaves_root_controllers(void **state)
{
    (void)state;
    char self[512], buf[256];
    put("cgroup.controllers", "cpu memory pids\n");
    put("cgroup.subtree_control", "");
    put("cgroup.procs", "");
    fake_v2_dir("warren");
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "0::/\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), 0);
    fake_v2_emptied("warren");
    cgroup_manager_cleanup(&m);
    assert_false(exists("warren"));
    /* Other cgroups of the system may use the root's controllers by now. */
    get("cgroup.subtree_control", buf, sizeof(buf));
    assert_string_equal(buf, "+memory +pids +cpu");
    get("cgroup.procs", buf, sizeof(buf));
    assert_string_equal(buf, "");
}

static void test_v2_controllers_not_delegated(void **state)
{
    (void)state;
    char self[512], buf[256];
    put("cgroup.controllers", "cpu memory pids\n");
    put("cgroup.subtree_control", "pids\n");
    fake_v2_dir("svc");
    put("svc/cgroup.controllers", "pids\n");
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "0::/svc\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), -ENOTSUP);
    assert_int_equal(m.mode, CGROUP_NONE);
    /* Says what is missing, where, and what to do about it. */
    assert_non_null(strstr(err, "lacks the controllers +memory +cpu"));
    char want[512];
    snprintf(want, sizeof(want), "> %s/cgroup.subtree_control", root);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "Delegate=yes"));
    /* Refused before anything was touched. */
    assert_false(exists("svc/warren-daemon"));
    assert_false(exists("svc/warren"));
    get("svc/cgroup.subtree_control", buf, sizeof(buf));
    assert_string_equal(buf, "");
}

static void test_v2_failed_start_moves_the_daemon_back(void **state)
{
    (void)state;
    char self[512], buf[256], p[512];
    put("cgroup.controllers", "cpu memory pids\n");
    fake_v2_dir("svc");
    fake_v2_dir("svc/warren-daemon");
    /* Reads as empty, refuses every write (ENOSPC), as a cgroup refusing its controllers. */
    snprintf(p, sizeof(p), "%s/svc/cgroup.subtree_control", root);
    unlink(p);
    assert_int_equal(symlink("/dev/full", p), 0);
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "0::/svc\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), -ENOSPC);
    assert_int_equal(m.mode, CGROUP_NONE);
    assert_non_null(strstr(err, "cannot enable +memory +pids +cpu in"));
    get("svc/cgroup.procs", buf, sizeof(buf));
    assert_string_equal(buf, "0");
    assert_false(exists("svc/warren"));
}

static void test_v1_layout(void **state)
{
    (void)state;
    char self[512], buf[64], p[512];
    const char *ctrls[] = {"memory", "pids", "cpu", "freezer"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof(p), "%s/%s/job", root, ctrls[i]);
        util_mkdir_p(p, 0755);
    }
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "9:name=systemd:/\n8:pids:/job\n4:memory:/job\n2:cpuacct:/\n1:cpu:/job\n"
                       "6:freezer:/job\n0::/\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), 0);
    assert_int_equal(m.mode, CGROUP_V1);
    snprintf(p, sizeof(p), "%s/memory/job/warren", root);
    assert_string_equal(m.base[0], p);
    snprintf(p, sizeof(p), "%s/cpu/job/warren", root);
    assert_string_equal(m.base[2], p);

    /* Limit files appear when the kernel creates the cgroup; emulate by creating them after the
     * directory exists: cgroup_create fails cleanly (ENOENT) when they are missing. */
    struct cgroup_limits lim = {0.5, 64ull << 20, 32};
    char procs[CGROUP_V1_CONTROLLERS][CGROUP_PATH_MAX];
    size_t n = 0;
    assert_int_equal(cgroup_create(&m, "sb-2", &lim, procs, &n), -2 /* -ENOENT */);
    assert_false(exists("memory/job/warren/sb-2"));

    put("memory/job/warren/x", "");
    snprintf(p, sizeof(p), "%s/memory/job/warren/sb-3", root);
    mkdir(p, 0755);
    put("memory/job/warren/sb-3/memory.limit_in_bytes", "");
    put("memory/job/warren/sb-3/memory.memsw.limit_in_bytes", "");
    snprintf(p, sizeof(p), "%s/pids/job/warren/sb-3", root);
    mkdir(p, 0755);
    put("pids/job/warren/sb-3/pids.max", "");
    snprintf(p, sizeof(p), "%s/cpu/job/warren/sb-3", root);
    mkdir(p, 0755);
    put("cpu/job/warren/sb-3/cpu.cfs_period_us", "");
    put("cpu/job/warren/sb-3/cpu.cfs_quota_us", "");
    assert_int_equal(cgroup_create(&m, "sb-3", &lim, procs, &n), 0);
    assert_int_equal(n, 4);
    get("memory/job/warren/sb-3/memory.memsw.limit_in_bytes", buf, sizeof(buf));
    assert_string_equal(buf, "67108864");
    get("pids/job/warren/sb-3/pids.max", buf, sizeof(buf));
    assert_string_equal(buf, "32");
    get("cpu/job/warren/sb-3/cpu.cfs_quota_us", buf, sizeof(buf));
    assert_string_equal(buf, "50000");

    /* Live changes: both memory files follow (raising and lowering), pids too; cpus 0 stays. */
    struct cgroup_limits more = {0, 128ull << 20, 64};
    assert_int_equal(cgroup_set_limits(&m, "sb-3", &more), 0);
    get("memory/job/warren/sb-3/memory.limit_in_bytes", buf, sizeof(buf));
    assert_string_equal(buf, "134217728");
    get("memory/job/warren/sb-3/memory.memsw.limit_in_bytes", buf, sizeof(buf));
    assert_string_equal(buf, "134217728");
    get("pids/job/warren/sb-3/pids.max", buf, sizeof(buf));
    assert_string_equal(buf, "64");
    get("cpu/job/warren/sb-3/cpu.cfs_quota_us", buf, sizeof(buf));
    assert_string_equal(buf, "50000");
    put("memory/job/warren/sb-3/memory.limit_in_bytes", "");
    put("memory/job/warren/sb-3/memory.memsw.limit_in_bytes", "");
    struct cgroup_limits less = {0, 32ull << 20, 0};
    assert_int_equal(cgroup_set_limits(&m, "sb-3", &less), 0);
    get("memory/job/warren/sb-3/memory.limit_in_bytes", buf, sizeof(buf));
    assert_string_equal(buf, "33554432");
    get("memory/job/warren/sb-3/memory.memsw.limit_in_bytes", buf, sizeof(buf));
    assert_string_equal(buf, "33554432");
}

static void test_v1_parent_removed_by_another_daemon(void **state)
{
    (void)state;
    char self[512], p[512];
    const char *ctrls[] = {"memory", "pids", "cpu", "freezer", "cpuacct"};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof(p), "%s/%s", root, ctrls[i]);
        util_mkdir_p(p, 0755);
    }
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "8:pids:/\n4:memory:/\n1:cpu:/\n6:freezer:/\n2:cpuacct:/\n0::/\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), 0);
    /* Another daemon sharing these parents exits and removes them while they are empty. */
    struct cgroup_manager other = m;
    cgroup_manager_cleanup(&other);
    snprintf(p, sizeof(p), "%s/pids/warren", root);
    assert_int_equal(access(p, F_OK), -1);
    struct cgroup_limits none = {0, 0, 0};
    char procs[CGROUP_V1_CONTROLLERS][CGROUP_PATH_MAX];
    size_t n = 0;
    assert_int_equal(cgroup_create(&m, "sb-5", &none, procs, &n), 0);
    assert_int_equal(n, 5);
    assert_true(exists("pids/warren/sb-5") && exists("memory/warren/sb-5"));
}

static void test_none(void **state)
{
    (void)state;
    char self[512];
    snprintf(self, sizeof(self), "%s/self_cgroup", root);
    put("self_cgroup", "0::/\n");
    struct cgroup_manager m;
    assert_int_equal(cgroup_manager_init(&m, root, self, err, sizeof(err)), -ENOENT);
    assert_int_equal(m.mode, CGROUP_NONE);
    assert_non_null(strstr(err, "no usable cgroup hierarchy under"));
    assert_string_equal(cgroup_mode_name(m.mode), "none");
    struct cgroup_limits lim = {1, 64ull << 20, 32};
    assert_int_equal(cgroup_set_limits(&m, "sb-1", &lim), -ENOTSUP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v2_layout_and_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_usage_and_freeze, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_root_cgroup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_cleanup_restores_the_daemon_cgroup, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_v2_cleanup_keeps_what_sandboxes_still_use, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_v2_root_cleanup_leaves_root_controllers, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_v2_controllers_not_delegated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_failed_start_moves_the_daemon_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_v1_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_parent_removed_by_another_daemon, setup, teardown),
        cmocka_unit_test_setup_teardown(test_none, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
