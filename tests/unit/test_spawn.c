/*
 * spawn: real clones into real namespaces (the unit tests run as root). The "init" is /bin/true
 * in a root of /usr bound read-only, so a success is an exec that exits 0.
 *
 * What the CLONE_VM child must not do is checked from the parent's side: it runs in this
 * process's address space while this thread goes on, so it must not change this thread's errno,
 * must leave this process dumpable once it has exec'd, and must not run a handler of ours.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox/spawn.h"

#define BASE (1048576u + 65536u * 9)

static struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
static struct sock_fprog allow_all = {1, allow};
static char root[64];
static volatile sig_atomic_t handled;

static void on_usr1(int sig)
{
    (void)sig;
    handled = 1;
}

static int setup(void **state)
{
    snprintf(root, sizeof(root), "/tmp/warren-spawn-XXXXXX");
    if (!mkdtemp(root)) {
        print_error("mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    rmdir(root);
    return 0;
}

/* *opts: the data of one op, strdup()ed: the caller frees it (and the config) after spawn_start. */
static struct spawn_config *config(int init_fd, char **opts)
{
    struct spawn_config *cfg = malloc(sizeof(*cfg));
    assert_non_null(cfg);
    spawn_config_init(cfg);
    snprintf(cfg->hostname, sizeof(cfg->hostname), "spawn-test");
    snprintf(cfg->root_dir, sizeof(cfg->root_dir), "%s", root);
    cfg->host_uid = cfg->host_gid = BASE;
    cfg->seccomp = &allow_all;
    cfg->init_fd = init_fd;
    assert_int_equal(spawn_config_add(cfg, MOP_BIND_RO, "/usr", "usr", 0, 0, NULL), 0);
    assert_int_equal(spawn_config_add(cfg, MOP_SYMLINK, "usr/lib", "lib", 0, 0, NULL), 0);
    assert_int_equal(spawn_config_add(cfg, MOP_SYMLINK, "usr/lib64", "lib64", 0, 0, NULL), 0);
    assert_int_equal(spawn_config_add(cfg, MOP_SYMLINK, "usr/bin", "bin", 0, 0, NULL), 0);
    assert_int_equal(spawn_config_add(cfg, MOP_BIND_DEV, "/dev/null", "dev/null", 0, 0, NULL), 0);
    /* data of a config that is freed right after spawn_start: the child has its own copy */
    *opts = strdup("mode=0755,size=1m");
    assert_non_null(*opts);
    assert_int_equal(spawn_config_add(cfg, MOP_TMPFS, "tmpfs", "tmp", 0, 0, *opts), 0);
    return cfg;
}

static void *busy_thread(void *arg)
{
    volatile int *stop = arg;
    while (!*stop)
        errno = 0; /* a thread of the daemon going on meanwhile */
    return NULL;
}

static void test_spawn_exec_exits_zero(void **state)
{
    int init_fd = open("/bin/true", O_RDONLY | O_CLOEXEC), stop = 0, status = -1;
    assert_true(init_fd >= 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, busy_thread, &stop), 0);
    signal(SIGUSR1, on_usr1);
    for (int round = 0; round < 20; round++) {
        char *opts;
        struct spawn_config *cfg = config(init_fd, &opts);
        struct spawn_pending p;
        struct spawn_error err;
        assert_int_equal(spawn_start(cfg, &p, &err), 0);
        memset(opts, 'x', strlen(opts)); /* freed memory must not matter to the child */
        free(opts);
        free(cfg);
        kill(p.pid, SIGUSR1); /* blocked in the child, then reset: never our handler */
        errno = 4242;
        int r = spawn_finish(&p, &err);
        if (r < 0)
            print_error("spawn: %s (%s): %s\n", spawn_step_name(err.step), err.detail,
                        strerror(-r));
        assert_int_equal(r, 0);
        assert_int_equal(errno, 4242); /* the child's failing calls (EEXIST...) are not ours */
        assert_int_equal(waitpid(p.pid, &status, 0), p.pid);
        /* pid 1 of its namespace ignores a signal it has no handler for: `true` exits 0 */
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        close(p.pidfd);
        close(p.ctl_fd);
    }
    assert_int_equal(handled, 0);
    assert_int_equal(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
    stop = 1;
    pthread_join(t, NULL);
    signal(SIGUSR1, SIG_DFL);
    close(init_fd);
}

static void test_spawn_failure_names_step(void **state)
{
    int init_fd = open("/bin/true", O_RDONLY | O_CLOEXEC);
    assert_true(init_fd >= 0);
    char *opts;
    struct spawn_config *cfg = config(init_fd, &opts);
    struct spawn_pending p;
    struct spawn_error err;
    /* a file where a later op wants a directory */
    assert_int_equal(spawn_config_add(cfg, MOP_FILE, NULL, "etc", 0, 0644, "x"), 0);
    assert_int_equal(spawn_config_add(cfg, MOP_TMPFS, "tmpfs", "etc", 0, 0, "size=1m"), 0);
    assert_int_equal(spawn_start(cfg, &p, &err), 0);
    free(opts);
    free(cfg);
    assert_int_equal(spawn_finish(&p, &err), -EEXIST);
    assert_int_equal(err.step, SPAWN_STEP_MOUNT);
    assert_string_equal(err.detail, "etc");
    /* reaped and closed by spawn_finish */
    assert_int_equal(p.pidfd, -1);
    assert_int_equal(p.ctl_fd, -1);
    assert_int_equal(p.status_fd, -1);
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
    assert_int_equal(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
    close(init_fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spawn_exec_exits_zero),
        cmocka_unit_test(test_spawn_failure_names_step),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
