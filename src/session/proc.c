/*
 * proc — a process in a sandbox, seen from the daemon. See proc.h.
 */
#include "session/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "core/buf.h"

enum { S_IN, S_OUT, S_ERR, S_COUNT };

/* Read at most this much per readiness event and stream, so one chatty process cannot
 * monopolise the loop; and drain at most this many chunks after the exit (a background writer
 * could keep the pipe full forever). */
#define READ_CHUNK (256 << 10)
#define READS_PER_EVENT 2
#define DRAIN_CHUNKS 4

struct proc {
    struct sandbox *sb;
    struct proc *prev, *next; /* in sb->procs until the exit */
    uint32_t tag;
    pid_t pid;
    int pty;
    int fds[S_COUNT]; /* pty: the master is fds[S_OUT] and takes the input too */
    uv_poll_t polls[S_COUNT];
    int handles;
    buf_t in;
    size_t in_off;
    int in_eof;    /* close stdin once the queue is written */
    int in_closed; /* no more input accepted */
    int paused;
    int pending_sig, pending_group;
    int started, exited, released;
    int keep_after_exit;
    int in_callback; /* an owner callback is running: freeing waits until it returns */
    const struct proc_ops *ops;
    void *arg;
};

uint32_t proc_tag(const struct proc *p)
{
    return p->tag;
}

struct proc *proc_next(const struct proc *p)
{
    return p->next;
}

pid_t proc_pid(const struct proc *p)
{
    return p->pid;
}

struct sandbox *proc_sandbox(const struct proc *p)
{
    return p->sb;
}

size_t proc_input_pending(const struct proc *p)
{
    return p->in.len - p->in_off;
}

static void proc_free(struct proc *p)
{
    struct sandbox *sb = p->sb;
    buf_free(&p->in);
    free(p);
    sandbox_unref(sb);
}

static void maybe_free(struct proc *p)
{
    if (p->released && p->exited && p->handles == 0 && !p->in_callback)
        proc_free(p);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct proc *p = h->data;
    p->handles--;
    maybe_free(p);
}

static void stream_close(struct proc *p, int i)
{
    if (p->fds[i] < 0)
        return;
    /* uv_close stops watching the fd synchronously, so it can be closed right away. */
    uv_close((uv_handle_t *)&p->polls[i], on_handle_closed);
    close(p->fds[i]);
    p->fds[i] = -1;
}

/* The fd input is written to: the stdin pipe, or the terminal's master. */
static int input_index(const struct proc *p)
{
    return p->pty ? S_OUT : S_IN;
}

static void stream_on_event(uv_poll_t *h, int status, int events);

static void update_polls(struct proc *p)
{
    for (int i = 0; i < S_COUNT; i++) {
        if (p->fds[i] < 0)
            continue;
        int ev = 0;
        if (i != S_IN && !p->paused)
            ev |= UV_READABLE | UV_DISCONNECT;
        if (i == input_index(p) && proc_input_pending(p))
            ev |= UV_WRITABLE;
        if (ev)
            uv_poll_start(&p->polls[i], ev, stream_on_event);
        else
            uv_poll_stop(&p->polls[i]);
    }
}

static void input_done(struct proc *p)
{
    buf_reset(&p->in);
    p->in_off = 0;
    if (!p->in_eof)
        return;
    if (p->pty) {
        p->in_eof = 0; /* ^D was queued as data; the master stays open for output */
        return;
    }
    stream_close(p, S_IN);
}

static void write_input(struct proc *p)
{
    int fd = p->fds[input_index(p)];
    while (fd >= 0 && proc_input_pending(p)) {
        ssize_t n = write(fd, p->in.data + p->in_off, proc_input_pending(p));
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            /* The process closed its stdin (EPIPE): drop the input, accept no more. */
            p->in_closed = 1;
            buf_reset(&p->in);
            p->in_off = 0;
            if (!p->pty)
                stream_close(p, S_IN);
            return;
        }
        p->in_off += (size_t)n;
    }
    input_done(p);
}

/* Reads up to `chunks` chunks from an output stream. Returns 1 at EOF or error. */
static int stream_read(struct proc *p, int i, int chunks)
{
    char chunk[READ_CHUNK];
    for (int k = 0; k < chunks; k++) {
        ssize_t n = read(p->fds[i], chunk, sizeof(chunk));
        if (n < 0)
            /* EIO on a terminal master: every slave fd is closed. */
            return errno == EAGAIN || errno == EINTR ? 0 : 1;
        if (n == 0)
            return 1;
        if (!p->released && p->ops->on_output)
            p->ops->on_output(p, i == S_ERR ? PROC_STDERR : PROC_STDOUT, chunk, (size_t)n, p->arg);
        if (p->fds[i] < 0 || p->paused)
            return 0; /* the callback closed or paused us */
    }
    return 0;
}

static void stream_on_event(uv_poll_t *h, int status, int events)
{
    struct proc *p = h->data;
    int i = (int)(h - p->polls);
    if (status < 0) {
        stream_close(p, i);
        return;
    }
    if (events & UV_WRITABLE)
        write_input(p);
    if (i != S_IN && p->fds[i] >= 0 && (events & (UV_READABLE | UV_DISCONNECT)) &&
        stream_read(p, i, READS_PER_EVENT))
        stream_close(p, i);
    if (p->fds[i] >= 0)
        update_polls(p);
}

static void unlink_from_sandbox(struct proc *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else if (p->sb->procs == p)
        p->sb->procs = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

static void finish(struct proc *p, int status)
{
    if (p->exited)
        return;
    p->exited = 1;
    unlink_from_sandbox(p);
    for (int i = 0; i < S_COUNT; i++)
        stream_close(p, i);
    /* The init keeps its copies of the pipes (and the record) for a later daemon until told. */
    if (p->started)
        sandbox_ctl_release(p->sb, p->tag, !p->keep_after_exit);
    if (!p->released && p->ops->on_exit) {
        p->in_callback = 1;
        p->ops->on_exit(p, status, p->arg);
        p->in_callback = 0;
    }
    maybe_free(p);
}

static void send_kill(struct proc *p, int sig, int group)
{
    sandbox_ctl_kill(p->sb, p->pid, sig, group);
}

void proc_on_spawned(struct proc *p, pid_t pid, int err, const int *fds, int nfds)
{
    int want = p->pty ? 1 : 3;
    if (err || nfds != want) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        finish(p, -(err ? err : EPROTO));
        return;
    }
    p->pid = pid;
    p->started = 1;
    uv_loop_t *loop = p->sb->reg->loop;
    for (int i = 0; i < S_COUNT; i++) {
        int fd = p->pty ? (i == S_OUT ? fds[0] : -1) : fds[i];
        if (fd < 0)
            continue;
        p->fds[i] = fd;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        uv_poll_init(loop, &p->polls[i], fd);
        p->polls[i].data = p;
        p->handles++;
    }
    if (p->pending_sig)
        send_kill(p, p->pending_sig, p->pending_group);
    if (!p->pty && !proc_input_pending(p) && p->in_eof)
        stream_close(p, S_IN);
    update_polls(p);
    if (!p->released && p->ops->on_started)
        p->ops->on_started(p, p->arg);
}

int proc_adopt(struct sandbox *sb, const struct initctl_state *st, const struct proc_ops *ops,
               void *arg, struct proc **out)
{
    struct proc *p = calloc(1, sizeof(*p));
    if (!p) {
        for (int i = 0; i < 2; i++)
            if (st->pipe_fds[i] >= 0)
                close(st->pipe_fds[i]);
        return -ENOMEM;
    }
    p->sb = sb;
    p->tag = st->tag;
    p->pid = st->pid;
    p->pty = st->pty;
    p->ops = ops;
    p->arg = arg;
    p->keep_after_exit = 1;
    p->started = 1;
    p->in_closed = 1; /* stdin's write end died with the previous daemon */
    buf_init(&p->in);
    for (int i = 0; i < S_COUNT; i++)
        p->fds[i] = -1;
    uv_loop_t *loop = sb->reg->loop;
    for (int i = S_OUT; i <= S_ERR; i++) {
        int fd = st->pipe_fds[i - S_OUT];
        if (fd < 0)
            continue;
        p->fds[i] = fd;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        uv_poll_init(loop, &p->polls[i], fd);
        p->polls[i].data = p;
        p->handles++;
    }
    p->next = sb->procs;
    if (sb->procs)
        sb->procs->prev = p;
    sb->procs = p;
    sandbox_ref(sb);
    update_polls(p);
    *out = p;
    return 0;
}

void proc_forget(struct sandbox *sb, uint32_t tag)
{
    sandbox_ctl_release(sb, tag, 1);
}

void proc_on_exit(struct proc *p, int status)
{
    /* Whatever the process wrote before it exited is in the pipes now. */
    for (int i = S_OUT; i <= S_ERR; i++)
        if (p->fds[i] >= 0 && stream_read(p, i, DRAIN_CHUNKS))
            stream_close(p, i);
    finish(p, status);
}

void proc_on_sandbox_gone(struct proc *p)
{
    finish(p, -ESRCH);
}

void proc_release(struct proc *p)
{
    p->released = 1;
    maybe_free(p);
}

int proc_write(struct proc *p, const void *data, size_t len)
{
    if (p->exited || p->in_closed || p->in_eof)
        return -EPIPE;
    if (buf_append(&p->in, data, len) < 0)
        return -ENOMEM;
    if (p->started)
        update_polls(p);
    return 0;
}

void proc_close_stdin(struct proc *p)
{
    if (p->exited || p->in_closed)
        return;
    if (p->pty) {
        proc_write(p, "\x04", 1);
        return;
    }
    p->in_eof = 1;
    p->in_closed = 1;
    if (p->started && !proc_input_pending(p))
        stream_close(p, S_IN);
}

void proc_kill(struct proc *p, int sig, int group)
{
    if (p->exited)
        return;
    if (p->started) {
        send_kill(p, sig, group);
    } else {
        p->pending_sig = sig;
        p->pending_group = group;
    }
}

int proc_resize(struct proc *p, int rows, int cols)
{
    if (!p->pty)
        return -ENOTTY;
    if (p->fds[S_OUT] < 0)
        return -EPIPE;
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    return ioctl(p->fds[S_OUT], TIOCSWINSZ, &ws) < 0 ? -errno : 0;
}

int proc_tty_groups(struct proc *p, pid_t *fg_pgrp, pid_t *session)
{
    if (!p->pty)
        return -ENOTTY;
    if (p->fds[S_OUT] < 0)
        return -EPIPE;
    /* The kernel reports both in the caller's pid namespace: host pids. */
    if (ioctl(p->fds[S_OUT], TIOCGPGRP, fg_pgrp) < 0 || ioctl(p->fds[S_OUT], TIOCGSID, session) < 0)
        return -errno;
    return 0;
}

void proc_pause_output(struct proc *p, int paused)
{
    if (p->paused == !!paused)
        return;
    p->paused = !!paused;
    if (p->started && !p->exited)
        update_polls(p);
}

int proc_start(struct sandbox *sb, const struct proc_spec *spec, const struct proc_ops *ops,
               void *arg, struct proc **out)
{
    if (sb->state != SB_RUNNING)
        return sandbox_unavailable(sb);
    struct proc *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    struct initctl_spawn req = {.cwd = spec->cwd,
                                .argv = spec->argv,
                                .env = spec->env,
                                .pty = spec->pty,
                                .rows = (unsigned)spec->rows,
                                .cols = (unsigned)spec->cols,
                                /* as asked, else an image sandbox's User */
                                .user = spec->user || sb->user_set,
                                .uid = spec->user ? spec->user->uid : sb->user_uid,
                                .gid = spec->user ? spec->user->gid : sb->user_gid,
                                .fds = spec->keep_fds,
                                .nfds = spec->nkeep,
                                .note = spec->note,
                                .note_len = spec->note_len};
    p->tag = ++sb->next_tag;
    int r = sandbox_ctl_spawn(sb, p->tag, &req);
    if (r < 0) {
        free(p);
        return r;
    }

    p->sb = sb;
    p->pty = spec->pty;
    p->keep_after_exit = spec->keep_after_exit;
    p->ops = ops;
    p->arg = arg;
    for (int i = 0; i < S_COUNT; i++)
        p->fds[i] = -1;
    buf_init(&p->in);
    p->next = sb->procs;
    if (sb->procs)
        sb->procs->prev = p;
    sb->procs = p;
    sandbox_ref(sb);
    *out = p;
    return 0;
}
