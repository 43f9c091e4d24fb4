/*
 * exec — one command to completion. See exec.h.
 */
#include "session/exec.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"
#include "sandbox/proto.h"

enum { STREAM_IN, STREAM_OUT, STREAM_ERR, STREAMS };

/* Read at most this much per readiness event and stream, so one chatty command cannot monopolise
 * the loop; and drain at most this many chunks after the exit (a background writer could keep the
 * pipe full forever). */
#define READ_CHUNK 65536
#define READS_PER_EVENT 4
#define DRAIN_CHUNKS 16

struct exec {
    struct sandbox *sb;
    struct exec *prev, *next;
    uint32_t tag;
    pid_t pid;
    int fds[STREAMS];
    uv_poll_t polls[STREAMS];
    uv_timer_t timer;
    int handles;
    unsigned char *stdin_data;
    size_t stdin_len, stdin_off;
    size_t max_output;
    double t0;
    int cancel_pending;
    int finished;
    exec_done_cb cb;
    void *arg;
    struct exec_result res;
};

uint32_t exec_tag(const struct exec *ex)
{
    return ex->tag;
}

struct exec *exec_next(const struct exec *ex)
{
    return ex->next;
}

static void exec_on_closed(uv_handle_t *h)
{
    struct exec *ex = h->data;
    if (--ex->handles > 0)
        return;
    struct sandbox *sb = ex->sb;
    buf_free(&ex->res.out);
    buf_free(&ex->res.err);
    free(ex->stdin_data);
    free(ex);
    sandbox_unref(sb);
}

static void stream_close(struct exec *ex, int i)
{
    if (ex->fds[i] < 0)
        return;
    /* The poll handle must be closed before its fd; the fd is closed right away because the uv
     * handle no longer watches it once uv_close returns. */
    uv_close((uv_handle_t *)&ex->polls[i], exec_on_closed);
    close(ex->fds[i]);
    ex->fds[i] = -1;
}

static void send_kill(struct exec *ex, int sig)
{
    struct wproto_kill k = {
        .hdr = {WPROTO_KILL, 0}, .pid = ex->pid, .sig = sig, .flags = WPROTO_KILL_GROUP};
    if (ex->pid > 0)
        sandbox_send(ex->sb, &k, sizeof(k));
}

static void finish(struct exec *ex)
{
    if (ex->finished)
        return;
    ex->finished = 1;
    struct sandbox *sb = ex->sb;
    if (ex->prev)
        ex->prev->next = ex->next;
    else
        sb->execs = ex->next;
    if (ex->next)
        ex->next->prev = ex->prev;
    ex->prev = ex->next = NULL;

    ex->res.duration_ms = (util_monotonic() - ex->t0) * 1000.0;
    sb->last_active_at = util_now();
    ex->cb(ex, &ex->res, ex->arg);
    for (int i = 0; i < STREAMS; i++)
        stream_close(ex, i);
    uv_close((uv_handle_t *)&ex->timer, exec_on_closed);
}

/* Reads up to `chunks` chunks from an output stream. Returns 1 at EOF or error. */
static int stream_read(struct exec *ex, int i, int chunks)
{
    buf_t *b = i == STREAM_OUT ? &ex->res.out : &ex->res.err;
    int *trunc = i == STREAM_OUT ? &ex->res.out_truncated : &ex->res.err_truncated;
    char chunk[READ_CHUNK];
    for (int k = 0; k < chunks; k++) {
        ssize_t n = read(ex->fds[i], chunk, sizeof(chunk));
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : 1;
        if (n == 0)
            return 1;
        size_t room = ex->max_output > b->len ? ex->max_output - b->len : 0;
        size_t take = (size_t)n < room ? (size_t)n : room;
        if (take && buf_append(b, chunk, take) < 0)
            take = 0;
        if (take < (size_t)n)
            *trunc = 1; /* keep reading and discarding, so the writer never blocks */
    }
    return 0;
}

static void stream_on_event(uv_poll_t *h, int status, int events)
{
    struct exec *ex = h->data;
    int i = (int)(h - ex->polls);
    if (i == STREAM_IN) {
        if (status == 0 && (events & UV_WRITABLE)) {
            ssize_t n =
                write(ex->fds[i], ex->stdin_data + ex->stdin_off, ex->stdin_len - ex->stdin_off);
            if (n > 0)
                ex->stdin_off += (size_t)n;
            if ((n < 0 && errno != EAGAIN && errno != EINTR) || ex->stdin_off >= ex->stdin_len)
                stream_close(ex, i); /* done, or the command closed its stdin (EPIPE) */
        } else {
            stream_close(ex, i);
        }
        return;
    }
    if (status < 0 || stream_read(ex, i, READS_PER_EVENT))
        stream_close(ex, i);
}

void exec_on_spawned(struct exec *ex, pid_t pid, int err, const int *fds, int nfds)
{
    if (err || nfds != 3) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        ex->res.error = -(err ? err : EPROTO);
        ex->res.error_msg = err == EAGAIN ? "the sandbox cannot start more processes"
                                          : "the sandbox's init could not start the command";
        finish(ex);
        return;
    }
    ex->pid = pid;
    uv_loop_t *loop = ex->sb->reg->loop;
    for (int i = 0; i < STREAMS; i++) {
        ex->fds[i] = fds[i];
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        uv_poll_init(loop, &ex->polls[i], fds[i]);
        ex->polls[i].data = ex;
        ex->handles++;
        uv_poll_start(&ex->polls[i], i == STREAM_IN ? UV_WRITABLE : UV_READABLE | UV_DISCONNECT,
                      stream_on_event);
    }
    if (ex->stdin_len == 0)
        stream_close(ex, STREAM_IN); /* EOF right away */
    if (ex->cancel_pending)
        send_kill(ex, SIGKILL);
}

void exec_on_exit(struct exec *ex, int status)
{
    if (WIFSIGNALED(status)) {
        ex->res.signal = WTERMSIG(status);
        ex->res.exit_code = 128 + ex->res.signal;
    } else {
        ex->res.exit_code = WEXITSTATUS(status);
    }
    /* Whatever the command wrote before it exited is in the pipes now. */
    for (int i = STREAM_OUT; i <= STREAM_ERR; i++)
        if (ex->fds[i] >= 0 && stream_read(ex, i, DRAIN_CHUNKS))
            stream_close(ex, i);
    finish(ex);
}

void exec_on_sandbox_gone(struct exec *ex)
{
    ex->res.error = -ESRCH;
    ex->res.error_msg = "the sandbox was deleted or stopped while the command ran";
    finish(ex);
}

static void on_timeout(uv_timer_t *t)
{
    struct exec *ex = t->data;
    ex->res.timed_out = 1;
    exec_cancel(ex);
}

void exec_cancel(struct exec *ex)
{
    if (ex->finished)
        return;
    if (ex->pid > 0)
        send_kill(ex, SIGKILL);
    else
        ex->cancel_pending = 1;
}

/* Appends a NUL-terminated string to the SPAWN message. */
static int put_str(char *msg, size_t *off, const char *s)
{
    size_t n = strlen(s) + 1;
    if (*off + n > WPROTO_MAX_MSG)
        return -E2BIG;
    memcpy(msg + *off, s, n);
    *off += n;
    return 0;
}

int exec_start(struct sandbox *sb, const struct exec_spec *spec, exec_done_cb cb, void *arg,
               struct exec **out)
{
    if (sb->state != SB_RUNNING)
        return -EPIPE;
    char *msg = malloc(WPROTO_MAX_MSG);
    struct exec *ex = calloc(1, sizeof(*ex));
    int r = -ENOMEM;
    if (!msg || !ex)
        goto error;

    struct wproto_spawn *sp = (struct wproto_spawn *)msg;
    size_t off = sizeof(*sp);
    memset(sp, 0, sizeof(*sp));
    sp->hdr.type = WPROTO_SPAWN;
    sp->hdr.tag = ex->tag = ++sb->next_tag;
    if ((r = put_str(msg, &off, spec->cwd)) < 0)
        goto error;
    for (const char *const *a = spec->argv; *a; a++, sp->argc++)
        if (sp->argc >= WPROTO_MAX_ARGS || (r = put_str(msg, &off, *a)) < 0)
            goto too_big;
    for (const char *const *e = spec->env; *e; e++, sp->envc++)
        if (sp->envc >= WPROTO_MAX_ARGS || (r = put_str(msg, &off, *e)) < 0)
            goto too_big;
    sp->data_len = (uint32_t)(off - sizeof(*sp));

    if (spec->stdin_len) {
        ex->stdin_data = malloc(spec->stdin_len);
        if (!ex->stdin_data)
            goto error;
        memcpy(ex->stdin_data, spec->stdin_data, spec->stdin_len);
        ex->stdin_len = spec->stdin_len;
    }
    if ((r = sandbox_send(sb, msg, off)) < 0)
        goto error;
    free(msg);

    ex->sb = sb;
    ex->max_output = spec->max_output;
    ex->cb = cb;
    ex->arg = arg;
    ex->t0 = util_monotonic();
    for (int i = 0; i < STREAMS; i++)
        ex->fds[i] = -1;
    buf_init(&ex->res.out);
    buf_init(&ex->res.err);
    ex->next = sb->execs;
    if (sb->execs)
        sb->execs->prev = ex;
    sb->execs = ex;
    sandbox_ref(sb);
    uv_timer_init(sb->reg->loop, &ex->timer);
    ex->timer.data = ex;
    ex->handles = 1;
    uint64_t ms = (uint64_t)(spec->timeout_s * 1000.0);
    uv_timer_start(&ex->timer, on_timeout, ms ? ms : 1, 0);
    if (out)
        *out = ex;
    return 0;
too_big:
    r = -E2BIG;
error:
    if (ex)
        free(ex->stdin_data);
    free(ex);
    free(msg);
    return r;
}
