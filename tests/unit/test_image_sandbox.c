/*
 * image sandboxes, end to end below the API: the session registry creates a real sandbox whose
 * root is an overlay of two hand-made layers (a busybox-static one and one with /etc files and a
 * whiteout), runs commands in it through session/exec, stops and starts it, and deletes it. Real
 * namespaces, cgroups, loop-mounted disk and overlayfs (the unit tests run as root), in a private
 * mount namespace of this test process.
 *
 * This is how the API calls it once templates exist: fill a struct sandbox_image (layer dirs top
 * first, the image config), point sandbox_spec.image at it, and call sandbox_create().
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <uv.h>

#include "core/util.h"
#include "sandbox/cgroup.h"
#include "sandbox/disk.h"
#include "sandbox/fs.h"
#include "sandbox/netns.h"
#include "sandbox/seccomp.h"
#include "sandbox/template.h"
#include "session/exec.h"
#include "session/sandbox.h"
#include "session/secrets.h"
#include "store/store.h"

#define BUSYBOX "/bin/busybox" /* Debian's busybox-static */
#define WAIT_S 60.0

struct fixture {
    char dir[64]; /* state dir */
    char base[128], top[128];
    uv_loop_t loop;
    struct registry reg;
    struct seccomp_filter seccomp;
    struct cgroup_manager cgroups;
    struct disk_manager *disks;
    struct host_template tmpl;
    struct secrets secrets;
    store_t *store;
    struct sandbox *sb;
};

static struct fixture fx;

static int setup_failed(const char *step, int err)
{
    print_error("image sandbox setup: %s: %s\n", step, strerror(err));
    return -1;
}

static int put(const char *dir, const char *rel, const char *content, mode_t mode)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, content, strlen(content));
    close(fd);
    return n == (ssize_t)strlen(content) ? 0 : -EIO;
}

static int mkd(const char *dir, const char *rel, mode_t mode)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, rel);
    return mkdir(p, mode) == 0 && chmod(p, mode) == 0 ? 0 : -errno;
}

/* base: /bin/busybox with its applets as symlinks, /etc/passwd, /tmp, /srv, /old.
 * top:  /etc/hosts and /etc/motd, and a whiteout of /old. */
static int make_layers(void)
{
    static const char *const applets[] = {"sh",  "id",    "touch", "cat",   "ls",   "echo",
                                          "pwd", "stat",  "test",  "mkdir", "env",  "grep",
                                          "rm",  "mount", "wc",    "head",  "sleep"};
    char p[256], src[256];
    int r = 0;
    r = r ?: mkd(fx.base, "bin", 0755);
    r = r ?: mkd(fx.base, "etc", 0755);
    r = r ?: mkd(fx.base, "tmp", 01777);
    r = r ?: mkd(fx.base, "srv", 0755);
    r = r
            ?: put(fx.base, "etc/passwd",
                   "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n", 0644);
    r = r ?: put(fx.base, "etc/group", "root:x:0:\napp:x:1001:\nstaff:x:50:\n", 0644);
    r = r ?: put(fx.base, "old", "gone in the top layer\n", 0644);
    r = r ?: mkd(fx.top, "etc", 0755);
    r = r ?: put(fx.top, "etc/hosts", "10.9.9.9 image-hosts\n", 0644);
    r = r ?: put(fx.top, "etc/motd", "from the top layer\n", 0644);
    if (r)
        return r;
    snprintf(p, sizeof(p), "%s/old", fx.top);
    if (mknod(p, S_IFCHR, makedev(0, 0)) < 0)
        return -errno;
    /* a copy, so the layer is a directory of its own as the layer store makes them */
    snprintf(src, sizeof(src), "cp " BUSYBOX " %s/bin/busybox", fx.base);
    if (system(src) != 0)
        return -EIO;
    for (size_t i = 0; i < sizeof(applets) / sizeof(applets[0]); i++) {
        snprintf(p, sizeof(p), "%s/bin/%s", fx.base, applets[i]);
        if (symlink("busybox", p) < 0)
            return -errno;
    }
    return 0;
}

static int load_init(void)
{
    char exe[512], path[600];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n < 0)
        return -errno;
    exe[n] = '\0';
    /* <build>/tests/test_image_sandbox → <build>/warren-init */
    snprintf(path, sizeof(path), "%s/../warren-init", dirname(exe));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int setup(void **state)
{
    char msg[1024];
    int r;
    memset(&fx, 0, sizeof(fx));
    if (access(BUSYBOX, X_OK) < 0)
        return setup_failed(BUSYBOX " (apt-get install busybox-static)", errno);
    if (setgroups(0, NULL) < 0 || unshare(CLONE_NEWNS) < 0 ||
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return setup_failed("a private mount namespace (run the unit tests as root)", errno);
    snprintf(fx.dir, sizeof(fx.dir), "/tmp/warren-imgsb-XXXXXX");
    if (!mkdtemp(fx.dir))
        return setup_failed("mkdtemp", errno);
    chmod(fx.dir, 0711);
    snprintf(fx.base, sizeof(fx.base), "%s/layers/base", fx.dir);
    snprintf(fx.top, sizeof(fx.top), "%s/layers/top", fx.dir);
    if ((r = util_mkdir_p(fx.base, 0755)) < 0 || (r = util_mkdir_p(fx.top, 0755)) < 0 ||
        (r = make_layers()) < 0)
        return setup_failed("layers", -r);
    struct registry *reg = &fx.reg;
    uv_loop_init(&fx.loop);
    reg->loop = &fx.loop;
    snprintf(reg->state_dir, sizeof(reg->state_dir), "%s", fx.dir);
    if ((reg->init_fd = load_init()) < 0)
        return setup_failed("warren-init next to the tests directory", -reg->init_fd);
    if ((r = seccomp_filter_build(&fx.seccomp)) < 0)
        return setup_failed("seccomp", -r);
    reg->seccomp = &fx.seccomp.prog;
    if ((r = cgroup_manager_init(&fx.cgroups, "/sys/fs/cgroup", "/proc/self/cgroup", msg,
                                 sizeof(msg))) < 0)
        return setup_failed(msg, -r);
    reg->cgroups = &fx.cgroups;
    if ((r = store_open(&fx.store, fx.dir)) < 0)
        return setup_failed("store", -r);
    reg->store = fx.store;
    reg->max_sandboxes = 4;
    reg->defaults = (struct sandbox_resources){1, 256, 256, 64};
    snprintf(reg->node, sizeof(reg->node), "test");
    if ((r = registry_init(reg)) < 0)
        return setup_failed("registry_init", -r);
    if ((r = disk_manager_new(fx.dir, &fx.disks, msg, sizeof(msg))) < 0)
        return setup_failed(msg, -r);
    reg->disks = fx.disks;
    reg->disk_overcommit = 100;
    if ((reg->host_netns = netns_open_current()) < 0)
        return setup_failed("netns", -reg->host_netns);
    if ((r = template_host_prepare(&fx.tmpl, fx.dir)) < 0)
        return setup_failed("template_host_prepare", -r);
    reg->tmpl = &fx.tmpl;
    reg->secrets = &fx.secrets;
    *state = &fx;
    return 0;
}

static int done_flag;

static void on_guard(uv_timer_t *t)
{
    (void)t;
    done_flag = -1;
    uv_stop(t->loop);
}

/* Runs the loop until *flag is set (or WAIT_S passed: then the test fails). */
static void run_until(int *flag)
{
    uv_timer_t guard;
    uv_timer_init(&fx.loop, &guard);
    uv_timer_start(&guard, on_guard, (uint64_t)(WAIT_S * 1000), 0);
    while (!*flag && done_flag >= 0)
        uv_run(&fx.loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&fx.loop, UV_RUN_NOWAIT);
    assert_true(*flag);
}

static int idle_done;
static void on_idle(struct registry *reg)
{
    (void)reg;
    idle_done = 1;
}

static int teardown(void **state)
{
    if (*state) {
        registry_shutdown(&fx.reg, on_idle);
        done_flag = 0;
        run_until(&idle_done);
        registry_free(&fx.reg);
        disk_manager_free(fx.disks);
        store_close(fx.store);
        seccomp_filter_free(&fx.seccomp);
        close(fx.reg.init_fd);
        uv_loop_close(&fx.loop);
    }
    umount2(fx.tmpl.dir, MNT_DETACH);
    if (fx.dir[0])
        util_remove_tree(fx.dir);
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

struct run_result {
    int done;
    int exit_code;
    char out[4096];
};

static void on_exec_done(struct exec *ex, struct exec_result *res, void *arg)
{
    struct run_result *rr = arg;
    (void)ex;
    rr->exit_code = res->error ? -1 : res->exit_code;
    size_t n = res->out.len < sizeof(rr->out) - 1 ? res->out.len : sizeof(rr->out) - 1;
    if (n)
        memcpy(rr->out, res->out.data, n);
    rr->out[n] = '\0';
    rr->done = 1;
}

/* Runs `sh -c script` in the sandbox (cwd: the sandbox's default) and returns its exit code. */
static int run(const char *script, struct run_result *rr)
{
    const char *argv[] = {"sh", "-c", script, NULL};
    char **env = exec_build_env(fx.sb, NULL, "dumb");
    assert_non_null(env);
    struct exec_spec spec = {.argv = argv,
                             .env = (const char *const *)env,
                             .cwd = sandbox_default_cwd(fx.sb),
                             .timeout_s = 30,
                             .max_output = sizeof(rr->out)};
    memset(rr, 0, sizeof(*rr));
    assert_int_equal(exec_start(fx.sb, &spec, on_exec_done, rr, NULL), 0);
    util_free_strv(env);
    run_until(&rr->done);
    return rr->exit_code;
}

static int created;
static enum session_err create_err;
static char create_msg[1024];

static void on_created(struct sandbox *sb, enum session_err err, const char *msg, void *arg)
{
    (void)arg;
    fx.sb = sb;
    create_err = err;
    snprintf(create_msg, sizeof(create_msg), "%s", msg ? msg : "");
    created = 1;
}

static int stopped;
static void on_stopped(struct sandbox *sb, int err, void *arg)
{
    (void)sb;
    (void)arg;
    assert_int_equal(err, 0);
    stopped = 1;
}

static int deleted;
static void on_deleted(void *arg)
{
    (void)arg;
    deleted = 1;
}

static int is_mountpoint(const char *dir)
{
    struct stat a, b;
    char parent[1300];
    snprintf(parent, sizeof(parent), "%s/..", dir);
    if (stat(dir, &a) < 0 || stat(parent, &b) < 0)
        return -1;
    return a.st_dev != b.st_dev;
}

static int mounts_under(const char *dir)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[2048];
    int n = 0;
    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        n += strstr(line, dir) != NULL;
    fclose(f);
    return n;
}

static int record_has_image;
static void on_record(const char *id, const char *json, void *arg)
{
    (void)arg;
    if (fx.sb && strcmp(id, fx.sb->id) == 0)
        record_has_image = strstr(json, "\"image\"") && strstr(json, fx.base) &&
                           strstr(json, "\"workdir\":\"/srv\"");
}

/* ---- the test ------------------------------------------------------------------------------- */

static void test_image_sandbox_lifecycle(void **state)
{
    (void)state;
    char *lowers[] = {fx.top, fx.base};
    char *env[] = {"PATH=/bin", "FOO=image", "BAR=image", NULL};
    struct sandbox_image img = {.lowers = lowers,
                                .n_lowers = 2,
                                .env = env,
                                .workdir = "/srv",
                                .template_name = "busybox-test"};
    json_t *sb_env = json_pack("{s:s}", "BAR", "sandbox");
    struct sandbox_spec spec = {.name = "imgbox",
                                .template_name = "ignored-for-images",
                                .env = sb_env,
                                .res = fx.reg.defaults,
                                .image = &img};
    char msg[512], path[1300];
    struct run_result rr;
    struct stat sb;

    assert_int_equal(sandbox_create(&fx.reg, &spec, on_created, NULL, msg, sizeof(msg)),
                     SESSION_OK);
    json_decref(sb_env);
    run_until(&created);
    if (create_err != SESSION_OK)
        print_error("create: %s\n", create_msg);
    assert_int_equal(create_err, SESSION_OK);
    assert_non_null(fx.sb);
    assert_string_equal(fx.sb->template_name, "busybox-test");
    uid_t host_uid = sandbox_host_uid(fx.sb);

    /* root inside, owning the image's files */
    assert_int_equal(run("id -u; id -g; stat -c %u /bin/busybox /etc/passwd /", &rr), 0);
    assert_string_equal(rr.out, "0\n0\n0\n0\n0\n");
    /* the image's files, not the host's: no /usr, the top layer's whiteout and files */
    assert_int_not_equal(run("ls /usr", &rr), 0);
    assert_int_not_equal(run("test -e /old", &rr), 0);
    assert_int_equal(run("cat /etc/motd", &rr), 0);
    assert_string_equal(rr.out, "from the top layer\n");
    /* warren's files over the image's */
    assert_int_equal(run("cat /etc/hostname; grep -c imgbox /etc/hosts; grep -c image-hosts "
                         "/etc/hosts",
                         &rr),
                     1); /* grep -c of the image's entry prints 0 and fails */
    assert_string_equal(rr.out, "imgbox\n1\n0\n");
    assert_int_equal(run("test -f /etc/resolv.conf", &rr), 0);
    /* image env < sandbox env; cwd: the image's WorkingDir; /workspace is there */
    assert_int_equal(run("echo $FOO $BAR $PATH; pwd; test -d /workspace", &rr), 0);
    assert_string_equal(rr.out, "image sandbox /bin\n/srv\n");
    /* writes land in the upper layer on the sandbox's disk, owned by its root */
    assert_int_equal(run("touch /etc/x && echo hi > /tmp/t && mkdir /srv/d", &rr), 0);
    snprintf(path, sizeof(path), "%s/sandboxes/%s/upper/etc/x", fx.dir, fx.sb->id);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_uid, host_uid);
    assert_int_equal(sb.st_gid, host_uid);
    snprintf(path, sizeof(path), "%s/sandboxes/%s/upper/srv/d", fx.dir, fx.sb->id);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_uid, host_uid);
    /* ... and never in the shared layers */
    snprintf(path, sizeof(path), "%s/etc/x", fx.base);
    assert_int_equal(stat(path, &sb), -1);
    snprintf(path, sizeof(path), "%s/etc/x", fx.top);
    assert_int_equal(stat(path, &sb), -1);
    snprintf(path, sizeof(path), "%s/etc/passwd", fx.base);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_uid, 0);
    /* no mount system calls inside */
    assert_int_not_equal(run("mount -t tmpfs none /tmp", &rr), 0);

    /* the files engine (under the files API) sees the image root and writes as its root */
    struct fs_root froot;
    assert_int_equal(fs_root_open(fx.sb->pid, host_uid, host_uid, &froot), 0);
    int rfd = fs_open_read(&froot, "/etc/motd", NULL);
    assert_true(rfd >= 0);
    char motd[64] = "";
    assert_int_equal(read(rfd, motd, sizeof(motd) - 1), 19);
    close(rfd);
    assert_string_equal(motd, "from the top layer\n");
    struct fs_tmp tmp;
    assert_int_equal(fs_open_write(&froot, "/etc/fromapi", 0644, 0, &tmp), 0);
    assert_int_equal(write(tmp.fd, "api\n", 4), 4);
    assert_int_equal(fs_commit(&tmp), 0);
    fs_root_close(&froot);
    assert_int_equal(run("cat /etc/fromapi; stat -c %u /etc/fromapi", &rr), 0);
    assert_string_equal(rr.out, "api\n0\n");

    /* the store's record names the image */
    store_list(fx.store, STORE_SANDBOX, on_record, NULL);
    assert_true(record_has_image);

    /* stop: the overlay goes, the upper stays; start mounts it again */
    char rootfs[1300];
    snprintf(rootfs, sizeof(rootfs), "%s/sandboxes/%s/rootfs", fx.dir, fx.sb->id);
    assert_int_equal(is_mountpoint(rootfs), 1);
    assert_int_equal(sandbox_stop(fx.sb, 0, on_stopped, NULL), 0);
    run_until(&stopped);
    assert_int_equal(is_mountpoint(rootfs), 0);
    snprintf(path, sizeof(path), "%s/sandboxes/%s/upper/etc/x", fx.dir, fx.sb->id);
    assert_int_equal(stat(path, &sb), 0);
    created = 0;
    assert_int_equal(sandbox_start(fx.sb, on_created, NULL, msg, sizeof(msg)), SESSION_OK);
    run_until(&created);
    if (create_err != SESSION_OK)
        print_error("start: %s\n", create_msg);
    assert_int_equal(create_err, SESSION_OK);
    assert_int_equal(is_mountpoint(rootfs), 1);
    assert_int_equal(run("test -e /etc/x && cat /tmp/t && test -d /srv/d && id -u", &rr), 0);
    assert_string_equal(rr.out, "hi\n0\n");

    /* delete: nothing of it stays mounted, the layers are untouched */
    char sbdir[1300];
    snprintf(sbdir, sizeof(sbdir), "%s/sandboxes/%s", fx.dir, fx.sb->id);
    sandbox_destroy(fx.sb, on_deleted, NULL);
    fx.sb = NULL;
    run_until(&deleted);
    registry_fill_disk_pool(&fx.reg); /* finishes the retired disk */
    assert_int_equal(mounts_under(sbdir), 0);
    assert_int_equal(stat(sbdir, &sb), -1);
    snprintf(path, sizeof(path), "%s/etc/motd", fx.top);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_uid, 0);
}

/* An image whose root would send the spawn's mounts through a symlink is refused, and leaves
 * nothing behind. */
static void test_hostile_image_refused(void **state)
{
    (void)state;
    char evil[256], link[300];
    snprintf(evil, sizeof(evil), "%s/layers/evil", fx.dir);
    assert_int_equal(util_mkdir_p(evil, 0755), 0);
    snprintf(link, sizeof(link), "%s/proc", evil);
    assert_int_equal(symlink("/tmp", link), 0);
    char *lowers[] = {evil, fx.base};
    struct sandbox_image img = {.lowers = lowers, .n_lowers = 2, .template_name = "evil"};
    struct sandbox_spec spec = {
        .name = "evil", .template_name = "x", .res = fx.reg.defaults, .image = &img};
    char msg[512];
    created = 0;
    fx.sb = NULL;
    assert_int_equal(sandbox_create(&fx.reg, &spec, on_created, NULL, msg, sizeof(msg)),
                     SESSION_OK);
    run_until(&created);
    assert_int_equal(create_err, SESSION_ERR_SETUP);
    assert_null(fx.sb);
    assert_non_null(strstr(create_msg, "/proc"));
    char sbdirs[200];
    snprintf(sbdirs, sizeof(sbdirs), "%s/sandboxes/", fx.dir);
    assert_int_equal(mounts_under(sbdirs), 0);
}

/* An image with a User: every command runs as that user (its ids inside, its home), and what it
 * writes belongs to that user's host uid. */
static void test_image_user(void **state)
{
    (void)state;
    char *lowers[] = {fx.top, fx.base};
    struct sandbox_image img = {
        .lowers = lowers, .n_lowers = 2, .user = "app:staff", .template_name = "user-test"};
    struct sandbox_spec spec = {
        .name = "userbox", .template_name = "x", .res = fx.reg.defaults, .image = &img};
    struct run_result rr;
    struct stat sb;
    char msg[512], path[1300];
    created = 0;
    assert_int_equal(sandbox_create(&fx.reg, &spec, on_created, NULL, msg, sizeof(msg)),
                     SESSION_OK);
    run_until(&created);
    if (create_err != SESSION_OK)
        print_error("create: %s\n", create_msg);
    assert_int_equal(create_err, SESSION_OK);
    assert_int_equal(run("id -u; id -g; echo $HOME; pwd", &rr), 0);
    assert_string_equal(rr.out, "1000\n50\n/home/app\n/workspace\n");
    /* not root: the image's root-owned files are not its to change */
    assert_int_not_equal(run("touch /etc/nope", &rr), 0);
    assert_int_equal(run("touch /tmp/mine", &rr), 0);
    snprintf(path, sizeof(path), "%s/sandboxes/%s/upper/tmp/mine", fx.dir, fx.sb->id);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_uid, sandbox_host_uid(fx.sb) + 1000);
    assert_int_equal(sb.st_gid, sandbox_host_uid(fx.sb) + 50);
    deleted = 0;
    sandbox_destroy(fx.sb, on_deleted, NULL);
    fx.sb = NULL;
    run_until(&deleted);

    /* a User the image does not know fails the creation, naming it */
    img.user = "nobody-here";
    created = 0;
    assert_int_equal(sandbox_create(&fx.reg, &spec, on_created, NULL, msg, sizeof(msg)),
                     SESSION_OK);
    run_until(&created);
    assert_int_equal(create_err, SESSION_ERR_SETUP);
    assert_non_null(strstr(create_msg, "User"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_image_sandbox_lifecycle),
        cmocka_unit_test(test_image_user),
        cmocka_unit_test(test_hostile_image_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
