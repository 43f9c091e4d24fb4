/*
 * exec — one command to completion, output collected in memory. See exec.h.
 */
#include "session/exec.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "core/util.h"
#include "sandbox/cgroup.h"
#include "session/proc.h"

struct exec {
    struct proc *proc;
    uv_timer_t timer;
    size_t max_output;
    double t0;
    unsigned long long oom_before;
    exec_done_cb cb;
    void *arg;
    struct exec_result res;
};

static void on_timer_closed(uv_handle_t *h)
{
    struct exec *ex = h->data;
    buf_free(&ex->res.out);
    buf_free(&ex->res.err);
    free(ex);
}

static void exec_on_output(struct proc *p, enum proc_stream s, const char *data, size_t len,
                           void *arg)
{
    struct exec *ex = arg;
    buf_t *b = s == PROC_STDOUT ? &ex->res.out : &ex->res.err;
    int *trunc = s == PROC_STDOUT ? &ex->res.out_truncated : &ex->res.err_truncated;
    size_t room = ex->max_output > b->len ? ex->max_output - b->len : 0;
    size_t take = len < room ? len : room;
    if (take && buf_append(b, data, take) < 0)
        take = 0;
    if (take < len)
        *trunc = 1; /* the rest is read and dropped, so the writer never blocks */
}

static void exec_on_exit(struct proc *p, int status, void *arg)
{
    struct exec *ex = arg;
    if (status < 0) {
        ex->res.error = status;
        ex->res.error_msg = status == -ESRCH    ? "the sandbox was deleted or stopped while the "
                                                  "command ran"
                            : status == -EAGAIN ? "the sandbox cannot start more processes"
                                                : "the sandbox's init could not start the command";
    } else if (WIFSIGNALED(status)) {
        ex->res.signal = WTERMSIG(status);
        ex->res.exit_code = 128 + ex->res.signal;
        struct cgroup_usage u;
        struct sandbox *sb = proc_sandbox(p);
        if (ex->res.signal == SIGKILL && !ex->res.timed_out &&
            cgroup_usage(sb->reg->cgroups, sb->id, &u) == 0 && u.oom_kills > ex->oom_before)
            ex->res.oom_killed = 1;
    } else {
        ex->res.exit_code = WEXITSTATUS(status);
    }
    ex->res.duration_ms = (util_monotonic() - ex->t0) * 1000.0;
    proc_sandbox(p)->last_active_at = util_now();
    uv_timer_stop(&ex->timer);
    ex->cb(ex, &ex->res, ex->arg);
    proc_release(p);
    ex->proc = NULL;
    uv_close((uv_handle_t *)&ex->timer, on_timer_closed);
}

static const struct proc_ops exec_ops = {.on_output = exec_on_output, .on_exit = exec_on_exit};

static void on_timeout(uv_timer_t *t)
{
    struct exec *ex = t->data;
    ex->res.timed_out = 1;
    exec_cancel(ex);
}

void exec_cancel(struct exec *ex)
{
    if (ex->proc)
        proc_kill(ex->proc, SIGKILL, 1);
}

int exec_start(struct sandbox *sb, const struct exec_spec *spec, exec_done_cb cb, void *arg,
               struct exec **out)
{
    struct exec *ex = calloc(1, sizeof(*ex));
    if (!ex)
        return -ENOMEM;
    struct proc_spec ps = {.argv = spec->argv, .env = spec->env, .cwd = spec->cwd};
    int r = proc_start(sb, &ps, &exec_ops, ex, &ex->proc);
    if (r < 0) {
        free(ex);
        return r;
    }
    ex->max_output = spec->max_output;
    ex->cb = cb;
    ex->arg = arg;
    ex->t0 = util_monotonic();
    struct cgroup_usage u;
    if (cgroup_usage(sb->reg->cgroups, sb->id, &u) == 0)
        ex->oom_before = u.oom_kills;
    buf_init(&ex->res.out);
    buf_init(&ex->res.err);
    if (spec->stdin_len)
        proc_write(ex->proc, spec->stdin_data, spec->stdin_len);
    proc_close_stdin(ex->proc);
    uv_timer_init(sb->reg->loop, &ex->timer);
    ex->timer.data = ex;
    uint64_t ms = (uint64_t)(spec->timeout_s * 1000.0);
    uv_timer_start(&ex->timer, on_timeout, ms ? ms : 1, 0);
    if (out)
        *out = ex;
    return 0;
}
