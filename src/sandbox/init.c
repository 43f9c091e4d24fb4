/*
 * warren-init — PID 1 of every sandbox.
 *
 * Started by spawn.c as the last step of sandbox setup: namespaces, root filesystem, capabilities,
 * no_new_privs and the seccomp filter are already in place and are inherited by everything this
 * process starts. Its only jobs are to start commands on request, report their exits, deliver
 * signals, and reap every orphan of the sandbox. The protocol is described in proto.h.
 *
 * Design constraints, and why:
 *  - static, libc only, no allocation after start: it runs in every sandbox and is charged to the
 *    sandbox's memory cgroup; it must keep working when the workload exhausts memory or pids.
 *  - single-threaded poll loop over the control socket and a signalfd: it never blocks on a child.
 *  - it is not dumpable, so workloads (same uid) cannot ptrace it or open /proc/1/fd, /proc/1/mem.
 *  - the kernel already ignores signals sent to a pid namespace's init from inside unless a handler
 *    is installed; we install none (SIGCHLD is blocked and read through the signalfd).
 *  - when the daemon's end of the socket closes, the init exits, which makes the kernel kill every
 *    other process of the pid namespace.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox/proto.h"

#define MAX_CMDS 4096
#define OUT_PIPE_SIZE (256 << 10)

extern char **environ;

struct cmd_slot {
    pid_t pid; /* 0 = free */
    uint32_t tag;
};

struct init_state {
    int ctl;
    int sigfd;
    struct cmd_slot cmds[MAX_CMDS];
    char msg[WPROTO_MAX_MSG];
    char *argv[WPROTO_MAX_ARGS + 1];
    char *envp[WPROTO_MAX_ARGS + 1];
};

static struct init_state st; /* static: no stack or heap growth at run time */

static int send_msg(const void *msg, size_t len, const int *fds, int nfds)
{
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    for (;;) {
        ssize_t n = sendmsg(st.ctl, &mh, MSG_NOSIGNAL);
        if (n >= 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

/* Writes "warren: <what>: <why>\n" to fd 2 of a command that could not be started. */
static void child_fail(const char *what, const char *why)
{
    char line[512];
    int n = snprintf(line, sizeof(line), "warren: %s: %s\n", what, why);
    if (n > 0)
        (void)!write(2, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* In the forked child: become the command, with stdio on the given fds or, when pty_slave is
 * not NULL, on that terminal (which becomes the controlling terminal). Never returns. */
static void child_exec(const struct wproto_spawn *sp, const char *cwd, int in_r, int out_w,
                       int err_w, const char *pty_slave)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL); /* dispositions survive exec: commands start with the defaults */
    setsid();
    if (pty_slave) {
        int t = open(pty_slave, O_RDWR);
        if (t < 0 || ioctl(t, TIOCSCTTY, 0) < 0)
            _exit(126);
        in_r = out_w = err_w = t;
    }
    if (dup2(in_r, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0)
        _exit(126);
    closefrom(3);
    /* setgroups is denied in the sandbox and the init has no supplementary groups to drop. */
    if ((sp->flags & WPROTO_SPAWN_USER) &&
        (setresgid(sp->gid, sp->gid, sp->gid) < 0 || setresuid(sp->uid, sp->uid, sp->uid) < 0)) {
        child_fail("user", strerror(errno));
        _exit(126);
    }
    if (chdir(cwd) < 0) {
        char what[300];
        snprintf(what, sizeof(what), "cwd %s", cwd);
        child_fail(what, strerror(errno));
        _exit(126);
    }
    environ = st.envp; /* execvp searches the PATH of this environment */
    execvp(st.argv[0], st.argv);
    int e = errno;
    child_fail(st.argv[0], e == ENOENT ? "command not found" : strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

static struct cmd_slot *slot_find(pid_t pid)
{
    for (int i = 0; i < MAX_CMDS; i++)
        if (st.cmds[i].pid == pid)
            return &st.cmds[i];
    return NULL;
}

/* Splits the SPAWN payload into cwd/argv/envp (pointing into st.msg). Returns 0 or an errno. */
static int parse_spawn(const struct wproto_spawn *sp, size_t len, const char **cwd)
{
    if (len < sizeof(*sp) || sp->data_len != len - sizeof(*sp) || sp->argc == 0 ||
        sp->argc > WPROTO_MAX_ARGS || sp->envc > WPROTO_MAX_ARGS)
        return EINVAL;
    const char *p = sp->data, *end = sp->data + sp->data_len;
    uint32_t want = 1 + sp->argc + sp->envc;
    for (uint32_t i = 0; i < want; i++) {
        const char *z = memchr(p, '\0', (size_t)(end - p));
        if (!z)
            return EINVAL;
        if (i == 0)
            *cwd = p;
        else if (i <= sp->argc)
            st.argv[i - 1] = (char *)p;
        else
            st.envp[i - 1 - sp->argc] = (char *)p;
        p = z + 1;
    }
    st.argv[sp->argc] = NULL;
    st.envp[sp->envc] = NULL;
    return 0;
}

/* A new pseudo-terminal of the sandbox's devpts: master fd (close-on-exec) and slave path. */
static int open_pty(int rows, int cols, char *slave, size_t cap)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0)
        return -errno;
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    if (unlockpt(m) < 0 || ptsname_r(m, slave, cap) != 0 || ioctl(m, TIOCSWINSZ, &ws) < 0) {
        int e = errno;
        close(m);
        return -e;
    }
    return m;
}

static void handle_spawn(const struct wproto_spawn *sp, size_t len)
{
    struct wproto_spawned rep = {.hdr = {WPROTO_SPAWNED, sp->hdr.tag}, .pid = 0, .err = 0};
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, master = -1;
    const char *cwd = "/";
    char slave[64];
    int pty = len >= sizeof(*sp) && (sp->flags & WPROTO_SPAWN_PTY);
    struct cmd_slot *slot = slot_find(0);

    rep.err = parse_spawn(sp, len, &cwd);
    if (!rep.err && !slot)
        rep.err = EAGAIN;
    if (!rep.err && pty) {
        master = open_pty(sp->rows ? sp->rows : 24, sp->cols ? sp->cols : 80, slave, sizeof(slave));
        if (master < 0)
            rep.err = -master;
    } else if (!rep.err && (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 ||
                            pipe2(err, O_CLOEXEC) < 0)) {
        rep.err = errno;
    } else if (!rep.err) {
        /* Bigger output pipes: a command writing fast wakes the daemon every 256 KiB instead of
         * every 64 KiB. Best effort: past the user's pipe-user-pages-soft the kernel says no. */
        (void)fcntl(out[1], F_SETPIPE_SZ, OUT_PIPE_SIZE);
        (void)fcntl(err[1], F_SETPIPE_SZ, OUT_PIPE_SIZE);
    }
    if (!rep.err) {
        pid_t pid = fork();
        if (pid == 0)
            child_exec(sp, cwd, in[0], out[1], err[1], pty ? slave : NULL);
        if (pid < 0)
            rep.err = errno;
        else {
            rep.pid = pid;
            slot->pid = pid;
            slot->tag = sp->hdr.tag;
        }
    }
    int fds[3] = {in[1], out[0], err[0]};
    if (pty)
        fds[0] = master;
    send_msg(&rep, sizeof(rep), fds, rep.err ? 0 : pty ? 1 : 3);
    int all[7] = {in[0], in[1], out[0], out[1], err[0], err[1], master};
    for (int i = 0; i < 7; i++)
        if (all[i] >= 0)
            close(all[i]);
}

static void handle_kill(const struct wproto_kill *k, size_t len)
{
    if (len < sizeof(*k) || k->sig < 0 || k->sig >= NSIG)
        return;
    if (k->flags & WPROTO_KILL_ALL) {
        kill(-1, k->sig); /* every process of our pid namespace but ourselves */
        return;
    }
    if (k->pid <= 1)
        return;
    if (!(k->flags & WPROTO_KILL_GROUP)) {
        kill(k->pid, k->sig);
        return;
    }
    /* The command becomes its group's leader with setsid() right after the fork; a kill that
     * arrives before that finds no group. It is still our child (not reaped: it is in the
     * table) and has started nothing yet, so signalling it alone is the same thing. */
    if (kill(-k->pid, k->sig) < 0 && errno == ESRCH && slot_find(k->pid))
        kill(k->pid, k->sig);
}

/* Returns 1 to keep going, 0 when the daemon has gone. */
static int handle_ctl(void)
{
    ssize_t n = recv(st.ctl, st.msg, sizeof(st.msg), 0);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN;
    if (n == 0 || (size_t)n < sizeof(struct wproto_hdr))
        return 0;
    const struct wproto_hdr *h = (const struct wproto_hdr *)st.msg;
    if (h->type == WPROTO_SPAWN)
        handle_spawn((const struct wproto_spawn *)st.msg, (size_t)n);
    else if (h->type == WPROTO_KILL)
        handle_kill((const struct wproto_kill *)st.msg, (size_t)n);
    return 1;
}

static void reap_children(void)
{
    struct signalfd_siginfo si;
    while (read(st.sigfd, &si, sizeof(si)) > 0)
        ;
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        struct cmd_slot *slot = slot_find(pid);
        if (!slot)
            continue; /* an orphan re-parented to us: reaping it is all we owe it */
        struct wproto_exit ex = {.hdr = {WPROTO_EXIT, slot->tag}, .pid = pid, .status = status};
        slot->pid = 0;
        send_msg(&ex, sizeof(ex), NULL, 0);
    }
}

int main(void)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGPIPE);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    prctl(PR_SET_DUMPABLE, 0);

    st.ctl = WPROTO_CTL_FD;
    sigdelset(&mask, SIGPIPE);
    st.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (st.sigfd < 0 || fcntl(st.ctl, F_SETFD, FD_CLOEXEC) < 0)
        return 1;

    struct pollfd pfd[2] = {{.fd = st.ctl, .events = POLLIN}, {.fd = st.sigfd, .events = POLLIN}};
    for (;;) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (pfd[1].revents)
            reap_children();
        if (pfd[0].revents & POLLIN) {
            if (!handle_ctl())
                return 0;
        } else if (pfd[0].revents & (POLLHUP | POLLERR)) {
            return 0;
        }
    }
}
