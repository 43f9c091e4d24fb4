/*
 * lifecycle — what happens to a running sandbox besides its creation and its end (sandbox.c):
 * live resource changes, pause and resume (the cgroup freezer), and the registry's sweep, which
 * deletes sandboxes whose ttl_s has passed and stops those idle for idle_timeout_s (recycles them
 * when they belong to a session: session/sessions.h). See sandbox.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "session/audit.h"
#include "session/proc.h"
#include "session/sandbox.h"
#include "session/sandbox_internal.h"
#include "session/sessions.h"
#include "session/shell.h"

int sandbox_set_resources(struct sandbox *sb, const struct sandbox_resources *res)
{
    if (res->disk_mib != sb->res.disk_mib)
        return -EINVAL;
    if (sb->state == SB_RUNNING || sb->state == SB_PAUSED) {
        struct cgroup_usage u;
        struct cgroup_limits lim = {res->cpus, res->memory_mib << 20, res->pids};
        int r = cgroup_usage(sb->reg->cgroups, sb->id, &u);
        if (r < 0)
            return r;
        /* On v2 the kernel would OOM-kill to fit a lower limit: refuse instead. */
        if (u.memory_bytes > lim.memory)
            return -ERANGE;
        r = cgroup_set_limits(sb->reg->cgroups, sb->id, &lim);
        if (r < 0) {
            /* Put back what may have been written before the failure. */
            struct cgroup_limits old = {sb->res.cpus, sb->res.memory_mib << 20, sb->res.pids};
            cgroup_set_limits(sb->reg->cgroups, sb->id, &old);
            return r == -EBUSY ? -ERANGE : r; /* v1: the kernel could not reclaim enough */
        }
    } else if (sb->state != SB_STOPPED && sb->state != SB_FAILED) {
        return -EBUSY; /* its cgroup is being made or removed */
    }
    sb->res = *res;
    sandbox_save(sb);
    return 0;
}

#define PAUSE_POLL_MS 10
#define PAUSE_RETRY_MS 100
#define PAUSE_TIMEOUT_S 10.0

struct pause_op {
    uv_timer_t timer;
    struct sandbox *sb;
    sandbox_pause_cb cb;
    void *arg;
    double t0, last_request;
};

static void pause_op_closed(uv_handle_t *h)
{
    struct pause_op *op = h->data;
    sandbox_unref(op->sb);
    free(op);
}

static void pause_finish(struct pause_op *op, int err)
{
    struct sandbox *sb = op->sb;
    sb->pausing = 0;
    if (err == 0)
        sb->state = SB_PAUSED;
    else if (err == -ETIMEDOUT)
        cgroup_freeze(sb->reg->cgroups, sb->id, 0);
    uv_timer_stop(&op->timer);
    op->cb(sb, err, op->arg);
    uv_close((uv_handle_t *)&op->timer, pause_op_closed);
}

static void pause_tick(uv_timer_t *t)
{
    struct pause_op *op = t->data;
    struct sandbox *sb = op->sb;
    double now = util_monotonic();
    if (sb->state != SB_RUNNING) {
        pause_finish(op, -ESRCH);
        return;
    }
    int frozen = cgroup_is_frozen(sb->reg->cgroups, sb->id);
    if (frozen == 1) {
        pause_finish(op, 0);
    } else if (frozen < 0 || now - op->t0 > PAUSE_TIMEOUT_S) {
        pause_finish(op, frozen < 0 ? frozen : -ETIMEDOUT);
    } else if ((now - op->last_request) * 1000 >= PAUSE_RETRY_MS) {
        /* v1 retries tasks that could not be frozen yet when asked again. */
        cgroup_freeze(sb->reg->cgroups, sb->id, 1);
        op->last_request = now;
    }
}

int sandbox_pause(struct sandbox *sb, sandbox_pause_cb cb, void *arg)
{
    if (sb->state != SB_RUNNING || sb->pausing)
        return -EINVAL;
    struct pause_op *op = calloc(1, sizeof(*op));
    if (!op)
        return -ENOMEM;
    int r = cgroup_freeze(sb->reg->cgroups, sb->id, 1);
    if (r < 0) {
        free(op);
        return r;
    }
    op->sb = sb;
    op->cb = cb;
    op->arg = arg;
    op->t0 = op->last_request = util_monotonic();
    sandbox_ref(sb);
    sb->pausing = 1;
    uv_timer_init(sb->reg->loop, &op->timer);
    op->timer.data = op;
    uv_timer_start(&op->timer, pause_tick, 0, PAUSE_POLL_MS);
    return 0;
}

int sandbox_resume(struct sandbox *sb)
{
    if (sb->state != SB_PAUSED)
        return -EINVAL;
    int r = cgroup_freeze(sb->reg->cgroups, sb->id, 0);
    if (r == 0)
        sb->state = SB_RUNNING;
    return r;
}

#define IDLE_STOP_GRACE_S 10.0

/* Something the daemon started in it still runs: every process it started but the shells that
 * wait for their next run. */
static int sandbox_busy(const struct sandbox *sb)
{
    size_t procs = 0, waiting_shells = 0;
    for (struct proc *p = sb->procs; p; p = proc_next(p))
        procs++;
    for (struct shell *sh = sb->shells; sh; sh = shell_next(sh)) {
        struct shell_info i;
        shell_info(sh, &i);
        if (!strcmp(i.state, "idle") && i.queued == 0)
            waiting_shells++;
    }
    return procs > waiting_shells;
}

/* `sessions`: the latest activity of each session (sessions_last_active()), or NULL. */
static void sweep_one(struct sandbox *sb, double now, json_t *sessions)
{
    struct registry *reg = sb->reg;
    if (sb->state == SB_CREATING || sb->state == SB_DELETING)
        return;
    if (sb->ttl_s > 0 && now >= sb->created_at + sb->ttl_s) {
        log_info("sandbox %s: its ttl_s %g has passed: deleting it", sb->id, sb->ttl_s);
        audit_record(reg->audit, "sandbox.expire", sb->id, sb->labels,
                     json_pack("{s:b, s:f}", "ok", 1, "ttl_s", sb->ttl_s), NULL);
        sandbox_destroy(sb, NULL, NULL);
        return;
    }
    /* A sandbox of a session is idle when the whole session is: a call on any of its sandboxes
     * keeps all of them. */
    double active = sb->last_active_at;
    json_t *session = sb->session_id[0] ? json_object_get(sessions, sb->session_id) : NULL;
    if (session && json_real_value(session) > active)
        active = json_real_value(session);
    if (sb->idle_timeout_s > 0 && (sb->state == SB_RUNNING || sb->state == SB_PAUSED) &&
        !sb->pausing && now - active >= sb->idle_timeout_s) {
        if (sandbox_busy(sb)) {
            /* Running work is activity: the timeout counts from when it ends. */
            sb->last_active_at = now;
            return;
        }
        if (sb->session_id[0]) {
            log_info("sandbox %s: session %s idle for %.0f s: recycling it", sb->id, sb->session_id,
                     now - active);
            audit_record(reg->audit, "sandbox.recycle", sb->id, sb->labels,
                         json_pack("{s:b, s:f, s:s}", "ok", 1, "idle_timeout_s", sb->idle_timeout_s,
                                   "session_id", sb->session_id),
                         NULL);
            sessions_recycle(sb);
            return;
        }
        log_info("sandbox %s: idle for %.0f s: stopping it", sb->id, now - sb->last_active_at);
        audit_record(reg->audit, "sandbox.idle_stop", sb->id, sb->labels,
                     json_pack("{s:b, s:f}", "ok", 1, "idle_timeout_s", sb->idle_timeout_s), NULL);
        sandbox_stop(sb, IDLE_STOP_GRACE_S, NULL, NULL);
    }
}

void registry_sweep(uv_timer_t *t)
{
    struct registry *reg = t->data;
    double now = util_now();
    json_t *sessions = sessions_last_active(reg);
    for (struct sandbox *sb = reg->head, *next; sb; sb = next) {
        next = sb->next;
        sweep_one(sb, now, sessions);
    }
    json_decref(sessions);
    sessions_released_sweep(reg, now);
}
