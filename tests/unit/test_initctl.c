/*
 * initctl + warren-init: the real init binary, run as a plain child (no namespaces: the protocol
 * does not need them), driven through initctl. What a daemon restart relies on: the init keeps
 * the channel and the command's pipes when the daemon's end is closed, a new daemon takes the
 * channel back with pidfd_getfd and learns in the HELLO/STATE handshake what the init holds
 * (output written meanwhile included, the exit status, the note and the kept fds), and RELEASE
 * makes it forget.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox/initctl.h"
#include "sandbox/proto.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

struct init_proc {
    pid_t pid;
    int pidfd;
    int ctl; /* the daemon's end */
};

static void start_init(struct init_proc *ip)
{
    char self[PATH_MAX], path[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    assert_true(n > 0);
    self[n] = '\0';
    snprintf(path, sizeof(path), "%s/../warren-init", dirname(self));
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Lifted first: placing one must not overwrite the other (as spawn.c does). */
        int null = open("/dev/null", O_RDWR), ctl = fcntl(sv[1], F_DUPFD, 10),
            keep = fcntl(sv[0], F_DUPFD, 10);
        if (null < 0 || ctl < 0 || keep < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 ||
            dup2(null, 2) < 0 || dup2(ctl, WPROTO_CTL_FD) < 0 || dup2(keep, WPROTO_KEEP_FD) < 0)
            _exit(126);
        syscall(SYS_close_range, WPROTO_KEEP_FD + 1, ~0U, 0);
        execl(path, "warren-init", (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    ip->pid = pid;
    ip->ctl = sv[0];
    ip->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    assert_true(ip->pidfd >= 0);
}

static void stop_init(struct init_proc *ip)
{
    kill(ip->pid, SIGKILL);
    assert_int_equal(waitpid(ip->pid, NULL, 0), ip->pid);
    close(ip->pidfd);
}

/* The next event, waiting for it (up to 10 s). */
static void next_event(struct initctl *c, struct initctl_event *ev)
{
    for (int i = 0; i < 1000; i++) {
        int r = initctl_read(c, ev);
        assert_true(r >= 0);
        if (r > 0)
            return;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        poll(&p, 1, 10);
    }
    fail_msg("no event from the init");
}

struct seen {
    int n;
    struct initctl_state st;
    char note[64];
};

static void on_state(const struct initctl_state *st, void *arg)
{
    struct seen *s = arg;
    s->n++;
    s->st = *st;
    assert_true(st->note_len < sizeof(s->note));
    memcpy(s->note, st->note, st->note_len);
    s->note[st->note_len] = '\0';
}

static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - len);
        assert_true(n >= 0);
        if (n == 0)
            return len;
        len += (size_t)n;
    }
}

static void test_command_survives_its_daemon(void **state)
{
    struct init_proc ip;
    struct initctl c;
    struct initctl_event ev;
    start_init(&ip);
    initctl_init(&c, ip.ctl);

    int ring = memfd_create("ring", MFD_CLOEXEC);
    assert_true(ring >= 0);
    assert_int_equal(write(ring, "kept", 4), 4);
    const char *argv[] = {"/bin/sh", "-c", "echo out; echo err >&2; exit 3", NULL};
    const char *env[] = {"PATH=/usr/bin:/bin", NULL};
    struct initctl_spawn req = {.cwd = "/",
                                .argv = argv,
                                .env = env,
                                .fds = &ring,
                                .nfds = 1,
                                .note = "note-1",
                                .note_len = 6};
    assert_int_equal(initctl_spawn(&c, 7, &req), 0);
    close(ring);
    next_event(&c, &ev);
    assert_int_equal(ev.type, INITCTL_SPAWNED);
    assert_int_equal(ev.tag, 7);
    assert_int_equal(ev.err, 0);
    assert_int_equal(ev.nfds, 3);
    /* The daemon dies: its fds go, nothing was read. */
    for (int i = 0; i < ev.nfds; i++)
        close(ev.fds[i]);
    initctl_close(&c);

    /* A new daemon takes the channel back and learns what the init holds. */
    int fd = initctl_take_fd(ip.pidfd);
    assert_true(fd >= 0);
    initctl_init(&c, fd);
    struct seen s = {0};
    uint32_t version = 0;
    assert_int_equal(initctl_hello(&c, 5000, &version, on_state, &s), 0);
    assert_int_equal(version, WPROTO_VERSION);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.st.tag, 7);
    assert_int_equal(s.st.pid, ev.pid);
    assert_string_equal(s.note, "note-1");
    assert_true(s.st.pipe_fds[0] >= 0 && s.st.pipe_fds[1] >= 0);
    assert_true(s.st.ring_fds[0] >= 0 && s.st.ring_fds[1] == -1);
    char buf[64];
    assert_int_equal(pread(s.st.ring_fds[0], buf, 4, 0), 4);
    assert_memory_equal(buf, "kept", 4);
    /* What the command wrote while no daemon read is all in its pipes. */
    assert_int_equal(read_all(s.st.pipe_fds[0], buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "out\n", 4);
    assert_int_equal(read_all(s.st.pipe_fds[1], buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "err\n", 4);
    int status = s.st.status;
    if (!s.st.exited) { /* reaped after the handshake: its EXIT comes now */
        next_event(&c, &ev);
        assert_int_equal(ev.type, INITCTL_EXITED);
        assert_int_equal(ev.tag, 7);
        status = ev.status;
    }
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 3);
    for (int i = 0; i < 2; i++)
        close(s.st.pipe_fds[i]);
    close(s.st.ring_fds[0]);

    /* Released: a third daemon finds nothing. */
    assert_int_equal(initctl_release(&c, 7, 1), 0);
    initctl_close(&c);
    assert_true((fd = initctl_take_fd(ip.pidfd)) >= 0);
    initctl_init(&c, fd);
    memset(&s, 0, sizeof(s));
    assert_int_equal(initctl_hello(&c, 5000, &version, on_state, &s), 0);
    assert_int_equal(s.n, 0);
    initctl_close(&c);
    stop_init(&ip);
}

/* A process that is not a warren init has no channel to give. */
static void test_take_fd_of_other_process(void **state)
{
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    assert_true(pidfd >= 0);
    int r = initctl_take_fd(pidfd);
    assert_true(r == -EBADF || r < 0);
    close(pidfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_survives_its_daemon),
        cmocka_unit_test(test_take_fd_of_other_process),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
