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
 *  - it outlives the daemon: it holds a copy of the daemon's end of the socket (WPROTO_KEEP_FD),
 *    so a daemon's exit is no EOF here, and it never blocks sending (what the socket cannot take
 *    waits in the command table). A daemon ends a sandbox by killing the init, which makes the
 *    kernel kill every other process of the pid namespace.
 *  - it keeps what a later daemon needs to take a command over (its pipes' read ends, its output
 *    ring memfds, an opaque note, its exit status) until that daemon releases it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
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
    int used;
    pid_t pid; /* until reaped */
    uint32_t tag;
    int exited, status;
    int pty;
    int forgotten;    /* RELEASE_ALL while running: freed when reaped, no EXIT */
    int need_spawned; /* SPAWNED not sent yet (the socket was full) */
    int need_exit;    /* EXIT not sent yet */
    int in_w;         /* stdin's write end, only until SPAWNED is sent */
    int out_r, err_r; /* our copies of the read ends (out_r: the terminal master) */
    int ring[2];      /* the daemon's output ring memfds, or -1 */
    uint32_t note_len;
    char note[WPROTO_NOTE_MAX];
};

struct init_state {
    int ctl;
    int sigfd;
    int npending; /* slots with need_spawned or need_exit */
    struct cmd_slot cmds[MAX_CMDS];
    char msg[WPROTO_MAX_MSG];
    char out[sizeof(struct wproto_state) + WPROTO_NOTE_MAX];
    int rfds[WPROTO_MAX_FDS]; /* received with the current message */
    int nrfds;
    char *argv[WPROTO_MAX_ARGS + 1];
    char *envp[WPROTO_MAX_ARGS + 1];
};

static struct init_state st; /* static: no stack or heap growth at run time */

/* Sends one message. With `block` 0 it fails with -EAGAIN rather than wait for room (nobody may
 * be reading); answers to a daemon that is talking to us may block. */
static int send_msg(const void *msg, size_t len, const int *fds, int nfds, int block)
{
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    union {
        char buf[CMSG_SPACE(WPROTO_MAX_FDS * sizeof(int))];
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
        ssize_t n = sendmsg(st.ctl, &mh, MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT));
        if (n >= 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void slot_free(struct cmd_slot *s)
{
    close_fd(&s->in_w);
    close_fd(&s->out_r);
    close_fd(&s->err_r);
    close_fd(&s->ring[0]);
    close_fd(&s->ring[1]);
    if (s->need_spawned || s->need_exit)
        st.npending--;
    s->used = 0;
    s->pid = 0;
    s->need_spawned = s->need_exit = 0;
}

static void slot_set_pending(struct cmd_slot *s, int *flag)
{
    if (!s->need_spawned && !s->need_exit)
        st.npending++;
    *flag = 1;
}

static void slot_clear_pending(struct cmd_slot *s, int *flag)
{
    *flag = 0;
    if (!s->need_spawned && !s->need_exit)
        st.npending--;
}

/* Sends what the slot still owes the daemon, in order: SPAWNED, then EXIT. 0, or -EAGAIN when
 * the socket is full (try again when writable). */
static int slot_flush(struct cmd_slot *s)
{
    if (s->need_spawned) {
        struct wproto_spawned rep = {.hdr = {WPROTO_SPAWNED, s->tag}, .pid = s->pid, .err = 0};
        int fds[3] = {s->in_w, s->out_r, s->err_r};
        int r = s->pty ? send_msg(&rep, sizeof(rep), &s->out_r, 1, 0)
                       : send_msg(&rep, sizeof(rep), fds, 3, 0);
        if (r == -EAGAIN)
            return r;
        close_fd(&s->in_w); /* the daemon's now (or nobody's, if the daemon is broken) */
        slot_clear_pending(s, &s->need_spawned);
    }
    if (s->need_exit) {
        struct wproto_exit ex = {.hdr = {WPROTO_EXIT, s->tag}, .pid = s->pid, .status = s->status};
        if (send_msg(&ex, sizeof(ex), NULL, 0, 0) == -EAGAIN)
            return -EAGAIN;
        slot_clear_pending(s, &s->need_exit);
    }
    return 0;
}

static void flush_pending(void)
{
    for (int i = 0; i < MAX_CMDS && st.npending > 0; i++)
        if (st.cmds[i].used && slot_flush(&st.cmds[i]) == -EAGAIN)
            return;
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

/* The slot of a command not reaped yet. */
static struct cmd_slot *slot_find(pid_t pid)
{
    for (int i = 0; i < MAX_CMDS; i++)
        if (st.cmds[i].used && !st.cmds[i].exited && st.cmds[i].pid == pid)
            return &st.cmds[i];
    return NULL;
}

static struct cmd_slot *slot_by_tag(uint32_t tag)
{
    for (int i = 0; i < MAX_CMDS; i++)
        if (st.cmds[i].used && !st.cmds[i].forgotten && st.cmds[i].tag == tag)
            return &st.cmds[i];
    return NULL;
}

static struct cmd_slot *slot_new(void)
{
    for (int i = 0; i < MAX_CMDS; i++)
        if (!st.cmds[i].used)
            return &st.cmds[i];
    return NULL;
}

/* Splits the SPAWN payload into cwd/argv/envp (pointing into st.msg). Returns 0 or an errno. */
static int parse_spawn(const struct wproto_spawn *sp, size_t len, const char **cwd)
{
    if (len < sizeof(*sp) || sp->data_len != len - sizeof(*sp) || sp->argc == 0 ||
        sp->argc > WPROTO_MAX_ARGS || sp->envc > WPROTO_MAX_ARGS ||
        sp->note_len > WPROTO_NOTE_MAX || sp->note_len > sp->data_len)
        return EINVAL;
    const char *p = sp->data, *end = sp->data + sp->data_len - sp->note_len;
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
    struct cmd_slot *slot = slot_new();

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
        else
            rep.pid = pid;
    }
    if (rep.err) {
        int all[7] = {in[0], in[1], out[0], out[1], err[0], err[1], master};
        for (int i = 0; i < 7; i++)
            if (all[i] >= 0)
                close(all[i]);
        /* The daemon that asked is reading: this is the one answer that may wait for room. */
        if (send_msg(&rep, sizeof(rep), NULL, 0, 0) == -EAGAIN)
            send_msg(&rep, sizeof(rep), NULL, 0, 1);
        return;
    }
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&err[1]);
    memset(slot, 0, offsetof(struct cmd_slot, note));
    slot->used = 1;
    slot->pid = rep.pid;
    slot->tag = sp->hdr.tag;
    slot->pty = pty;
    slot->in_w = in[1];
    slot->out_r = pty ? master : out[0];
    slot->err_r = pty ? -1 : err[0];
    slot->ring[0] = slot->ring[1] = -1;
    for (int i = 0; i < st.nrfds && i < 2; i++) {
        slot->ring[i] = st.rfds[i];
        st.rfds[i] = -1;
    }
    slot->note_len = sp->note_len;
    memcpy(slot->note, sp->data + sp->data_len - sp->note_len, sp->note_len);
    slot_set_pending(slot, &slot->need_spawned); /* sent by the main loop's flush */
}

static void handle_release(const struct wproto_release *rl, size_t len)
{
    struct cmd_slot *s = len >= sizeof(*rl) ? slot_by_tag(rl->hdr.tag) : NULL;
    if (!s)
        return;
    if (rl->what & WPROTO_RELEASE_ALL) {
        if (s->exited) {
            slot_free(s);
            return;
        }
        /* Still running: the slot stays until it is reaped (its pid identifies it), unreported. */
        s->forgotten = 1;
        if (s->need_spawned || s->need_exit)
            st.npending--;
        s->need_spawned = s->need_exit = 0;
        close_fd(&s->in_w);
        close_fd(&s->ring[0]);
        close_fd(&s->ring[1]);
    }
    close_fd(&s->out_r);
    close_fd(&s->err_r);
}

/* A daemon (re)connects: our version, then every command we hold, then STATE_END. What we owed
 * the previous daemon is said again by STATE. */
static void handle_hello(void)
{
    struct wproto_hello h = {.hdr = {WPROTO_HELLO, 0}, .version = WPROTO_VERSION};
    send_msg(&h, sizeof(h), NULL, 0, 1);
    for (int i = 0; i < MAX_CMDS; i++) {
        struct cmd_slot *s = &st.cmds[i];
        if (!s->used || s->forgotten)
            continue;
        struct wproto_state *m = (struct wproto_state *)st.out;
        int fds[WPROTO_MAX_FDS], n = 0;
        m->hdr.type = WPROTO_STATE;
        m->hdr.tag = s->tag;
        m->pid = s->pid;
        m->status = s->status;
        m->flags = (s->exited ? WPROTO_STATE_EXITED : 0) | (s->pty ? WPROTO_STATE_PTY : 0);
        if (s->out_r >= 0) {
            m->flags |= WPROTO_STATE_PIPES;
            fds[n++] = s->out_r;
            if (!s->pty)
                fds[n++] = s->err_r;
        }
        for (int k = 0; k < 2; k++)
            if (s->ring[k] >= 0)
                fds[n++] = s->ring[k];
        m->note_len = s->note_len;
        memcpy(m->note, s->note, s->note_len);
        send_msg(m, sizeof(*m) + s->note_len, fds, n, 1);
        close_fd(&s->in_w);
        if (s->need_spawned)
            slot_clear_pending(s, &s->need_spawned);
        if (s->need_exit)
            slot_clear_pending(s, &s->need_exit);
    }
    struct wproto_hdr end = {WPROTO_STATE_END, 0};
    send_msg(&end, sizeof(end), NULL, 0, 1);
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

/* Reads and handles one message from the daemon. Returns 0 at EOF: the daemon's end is closed
 * everywhere, our own copy included (it cannot happen unless something closed that), so no
 * daemon can ever reach us again and the sandbox ends with us. */
static int handle_ctl(void)
{
    struct iovec iov = {.iov_base = st.msg, .iov_len = sizeof(st.msg)};
    union {
        char buf[CMSG_SPACE(WPROTO_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t n = recvmsg(st.ctl, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n <= 0)
        return n < 0;
    st.nrfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int cnt = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < cnt; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (st.nrfds < WPROTO_MAX_FDS)
                st.rfds[st.nrfds++] = fd;
            else
                close(fd);
        }
    }
    if ((size_t)n >= sizeof(struct wproto_hdr)) {
        const struct wproto_hdr *h = (const struct wproto_hdr *)st.msg;
        if (h->type == WPROTO_SPAWN)
            handle_spawn((const struct wproto_spawn *)st.msg, (size_t)n);
        else if (h->type == WPROTO_KILL)
            handle_kill((const struct wproto_kill *)st.msg, (size_t)n);
        else if (h->type == WPROTO_RELEASE)
            handle_release((const struct wproto_release *)st.msg, (size_t)n);
        else if (h->type == WPROTO_HELLO)
            handle_hello();
    }
    for (int i = 0; i < st.nrfds; i++)
        close_fd(&st.rfds[i]);
    st.nrfds = 0;
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
        if (slot->forgotten) {
            slot_free(slot);
            continue;
        }
        slot->exited = 1;
        slot->status = status;
        slot_set_pending(slot, &slot->need_exit);
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
    /* Out of the daemon's session and process group, which we outlive (a terminal's Ctrl-C or
     * hang-up for the daemon is none of ours). */
    setsid();

    st.ctl = WPROTO_CTL_FD;
    sigdelset(&mask, SIGPIPE);
    st.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    /* The kept end is only held, never used here; close-on-exec keeps it from commands. */
    if (st.sigfd < 0 || fcntl(st.ctl, F_SETFD, FD_CLOEXEC) < 0 ||
        fcntl(WPROTO_KEEP_FD, F_SETFD, FD_CLOEXEC) < 0)
        return 1;

    struct pollfd pfd[2] = {{.fd = st.ctl}, {.fd = st.sigfd, .events = POLLIN}};
    for (;;) {
        pfd[0].events = POLLIN | (st.npending ? POLLOUT : 0);
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (pfd[1].revents)
            reap_children();
        if ((pfd[0].revents & (POLLIN | POLLHUP)) && !handle_ctl())
            return 0;
        if (st.npending)
            flush_pending();
    }
}
