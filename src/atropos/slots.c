/*
 * slots — the slots: their sandboxes (created at start-up, replaced when they die or are
 * deleted), their FIFO of jobs (one running at a time per slot), and /reset.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atropos/atropos_internal.h"
#include "core/log.h"
#include "core/util.h"
#include "session/error.h"
#include "session/exec.h"
#include "session/limits.h"

#define MAX_SLOTS 256

struct atropos_slot *atropos_slot_find(struct atropos *a, json_t *id)
{
    const char *s = json_string_value(id);
    if (!a || !s || strncmp(s, "slot_", 5) != 0 || strlen(s) != json_string_length(id))
        return NULL;
    s += 5;
    if (!*s || (s[0] == '0' && s[1]) || strlen(s) > 3)
        return NULL;
    unsigned v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return NULL;
        v = v * 10 + (unsigned)(*s - '0');
    }
    return v < a->n ? &a->slots[v] : NULL;
}

struct shell *atropos_slot_shell(struct atropos_slot *s)
{
    return s->sb && s->shell_id[0] ? shell_find(s->sb, s->shell_id) : NULL;
}

struct terminal *atropos_slot_terminal(struct atropos_slot *s)
{
    return s->sb && s->term_id[0] ? terminal_find(s->sb, s->term_id) : NULL;
}

void atropos_slot_forget(struct atropos_slot *s)
{
    s->shell_id[0] = s->term_id[0] = '\0';
    s->pane_w = PANE_W;
    s->pane_h = PANE_H;
    s->stream_offset = 0;
}

static void job_free(struct atropos_job *job)
{
    json_decref(job->body);
    free(job);
}

/* Ends a job: answers it, frees it, lets the slot run the next one. */
void atropos_job_finish(struct atropos_job *job, int status, json_t *resp)
{
    struct atropos_slot *s = job->slot;
    if (s->cur == job)
        s->cur = NULL;
    if (!resp)
        resp = atropos_fail("out of memory");
    if (job->kind == JOB_EXECUTE) {
        json_t *eid = json_object_get(job->body, "execution_id");
        json_object_set(resp, "execution_id", eid ? eid : json_null());
    }
    job->done(job, status, resp);
    job_free(job);
    atropos_slot_pump(s);
}

/* The answer for a job that cannot run, in its route's format. */
static void job_fail(struct atropos_job *job, const char *msg)
{
    if (job->kind == JOB_EXECUTE || job->kind == JOB_RESET)
        atropos_job_finish(job, 200, atropos_fail("%s", msg));
    else
        atropos_job_finish(job, 503, atropos_plain_fail("%s", msg));
}

static void slot_fail_waiting(struct atropos_slot *s, const char *why)
{
    int was = s->pumping;
    s->pumping = 1; /* the jobs' ends must not start a new creation from in here */
    struct atropos_job *job;
    while ((job = s->head)) {
        s->head = job->next;
        if (!s->head)
            s->tail = NULL;
        job->next = NULL;
        char msg[600];
        snprintf(msg, sizeof(msg), "Slot unavailable: %s", why);
        job_fail(job, msg);
    }
    s->pumping = was;
}

static void on_slot_created(struct sandbox *sb, enum session_err e, const char *msg, void *arg)
{
    struct atropos_slot *s = arg;
    s->creating = 0;
    if (!sb) {
        log_warn("atropos: creating the sandbox of %s failed: %s", s->name,
                 msg ? msg : session_err_name(e));
        slot_fail_waiting(s, msg ? msg : "sandbox creation failed");
        return;
    }
    sandbox_ref(sb);
    s->sb = sb;
    atropos_slot_forget(s);
    log_debug("atropos: %s is sandbox %s", s->name, sb->id);
    atropos_slot_pump(s);
}

static void slot_create(struct atropos_slot *s)
{
    struct atropos *a = s->a;
    char msg[512];
    json_t *labels = json_pack("{s:s}", "slot", s->name);
    struct sandbox_spec spec = {
        .name = s->name, .template_name = "host", .labels = labels, .res = a->limits->defaults};
    enum session_err st = labels
                              ? sandbox_create(a->reg, &spec, on_slot_created, s, msg, sizeof(msg))
                              : SESSION_ERR_NOMEM;
    json_decref(labels);
    if (st) {
        if (!labels)
            snprintf(msg, sizeof(msg), "out of memory");
        log_warn("atropos: cannot create the sandbox of %s: %s", s->name, msg);
        slot_fail_waiting(s, msg);
        return;
    }
    s->creating = 1;
}

/* True when the slot's sandbox runs; otherwise makes sure one is on its way (a slot whose
 * sandbox died, or was deleted through the native API, gets a new one). */
static int slot_ready(struct atropos_slot *s)
{
    if (s->sb && s->sb->state == SB_RUNNING)
        return 1;
    if (s->creating)
        return 0;
    if (s->sb) {
        log_warn("atropos: the sandbox of %s is %s; replacing it", s->name,
                 sandbox_state_name(s->sb->state));
        /* It holds the slot's name until it is gone: a paused, stopped or failed one (through
         * the native API) is deleted, so that the slot's new sandbox can take the name. */
        if (s->sb->state != SB_DELETING)
            sandbox_destroy(s->sb, NULL, NULL);
        sandbox_unref(s->sb);
        s->sb = NULL;
        atropos_slot_forget(s);
    }
    if (s->a->stopping) {
        slot_fail_waiting(s, "the daemon is shutting down");
        return 0;
    }
    slot_create(s);
    return 0;
}

static void job_start(struct atropos_job *job);

void atropos_slot_pump(struct atropos_slot *s)
{
    if (s->pumping)
        return;
    s->pumping = 1;
    while (!s->cur && s->head && slot_ready(s)) {
        struct atropos_job *job = s->head;
        s->head = job->next;
        if (!s->head)
            s->tail = NULL;
        job->next = NULL;
        s->cur = job;
        job->running = 1;
        job_start(job); /* may finish at once; the loop then takes the next */
    }
    s->pumping = 0;
}

struct atropos_job *atropos_job_new(struct atropos_slot *s, enum atropos_job_kind kind,
                                    json_t *body, http_req_t *req, atropos_job_done_fn done,
                                    void *owner, size_t index)
{
    struct atropos_job *job = calloc(1, sizeof(*job));
    if (!job)
        return NULL;
    job->slot = s;
    job->kind = kind;
    job->body = json_incref(body);
    job->req = req;
    job->done = done;
    job->owner = owner;
    job->index = index;
    return job;
}

void atropos_job_enqueue(struct atropos_job *job)
{
    struct atropos_slot *s = job->slot;
    if (s->tail)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
}

/* The client went away. */
void atropos_job_cancel(struct atropos_job *job)
{
    if (job->cancelled)
        return;
    job->cancelled = 1;
    if (!job->running) {
        struct atropos_slot *s = job->slot;
        struct atropos_job *prev = NULL;
        for (struct atropos_job *j = s->head; j; prev = j, j = j->next) {
            if (j != job)
                continue;
            if (prev)
                prev->next = j->next;
            else
                s->head = j->next;
            if (s->tail == j)
                s->tail = prev;
            break;
        }
        job->next = NULL;
        job_fail(job, "Cancelled: the client went away");
        return;
    }
    if (job->ex)
        exec_cancel(job->ex); /* SIGKILL to its process group; the callback still comes */
    else if (job->run)
        shell_run_cancel(job->run);
    else if (job->wait || job->settle)
        atropos_tmux_cancel(job);
    else if (job->fw) /* the worker stops between files; the job ends when it returns */
        atropos_fw_cancel(job->fw);
}

static void reset_killed(struct exec *ex, struct exec_result *res, void *arg)
{
    struct atropos_job *job = arg;
    job->ex = NULL;
    if (res->error)
        log_warn("atropos: %s: reset: could not stop leftover processes: %s", job->slot->name,
                 res->error_msg ? res->error_msg : strerror(-res->error));
    if (job->cancelled || job->slot->sb->state != SB_RUNNING)
        atropos_job_finish(job, 200,
                           atropos_fail("Failed to reset workspace: the slot's sandbox stopped"));
    else
        atropos_reset_workspace(job);
}

/* Stops the slot's shell and terminal, then every other process left in the slot (background
 * jobs of earlier bash calls keep running, as with docker exec, and must not reach into the
 * next user's workspace): kill(-1) from inside the sandbox's pid namespace signals all of its
 * processes but its init and the caller. Then the workspace is emptied. */
static void reset_start(struct atropos_job *job)
{
    struct atropos_slot *s = job->slot;
    struct shell *sh = atropos_slot_shell(s);
    struct terminal *t = atropos_slot_terminal(s);
    if (sh)
        shell_destroy(sh); /* hang-up to the shell and its jobs */
    if (t)
        terminal_destroy(t);
    atropos_slot_forget(s);
    static const char *const argv[] = {"/bin/sh", "-c", "kill -9 -1 2>/dev/null; exit 0", NULL};
    char **env = exec_build_env(s->sb, NULL, "dumb", NULL);
    struct exec_spec spec = {.argv = argv,
                             .env = (const char *const *)env,
                             .cwd = "/",
                             .timeout_s = 10,
                             .max_output = 4096};
    int r = env ? exec_start(s->sb, &spec, reset_killed, job, &job->ex) : -ENOMEM;
    util_free_strv(env);
    if (r < 0) {
        log_warn("atropos: %s: reset: could not stop leftover processes: %s", s->name,
                 session_strerror(r));
        atropos_reset_workspace(job);
    }
}

static void job_start(struct atropos_job *job)
{
    if (job->cancelled || job->abandoned) {
        job_fail(job, "Cancelled: the client went away");
        return;
    }
    switch (job->kind) {
    case JOB_EXECUTE:
        atropos_execute_start(job);
        break;
    case JOB_RESET:
        reset_start(job);
        break;
    default:
        atropos_artifacts_start(job);
        break;
    }
}

int atropos_new(struct registry *reg, struct audit *audit, const struct session_limits *limits,
                unsigned nslots, struct atropos **out)
{
    if (nslots == 0 || nslots > MAX_SLOTS)
        return -EINVAL;
    struct atropos *a = calloc(1, sizeof(*a));
    if (!a || !(a->slots = calloc(nslots, sizeof(*a->slots)))) {
        free(a);
        return -ENOMEM;
    }
    a->reg = reg;
    a->audit = audit;
    a->limits = limits;
    a->n = nslots;
    for (unsigned i = 0; i < nslots; i++) {
        struct atropos_slot *s = &a->slots[i];
        s->a = a;
        s->idx = i;
        snprintf(s->name, sizeof(s->name), "slot_%u", i);
        atropos_slot_forget(s);
        slot_create(s);
    }
    log_info("atropos slot protocol: %u slots (slot_0..slot_%u)", nslots, nslots - 1);
    *out = a;
    return 0;
}

void atropos_free(struct atropos *a)
{
    if (!a)
        return;
    for (unsigned i = 0; i < a->n; i++) {
        struct atropos_slot *s = &a->slots[i];
        /* Every request was answered before the loop ended; anything still queued here had
         * nobody to answer (it cannot happen, but must not leak). */
        while (s->head) {
            struct atropos_job *job = s->head;
            s->head = job->next;
            job_free(job);
        }
        if (s->sb)
            sandbox_unref(s->sb);
    }
    free(a->slots);
    free(a);
}

void atropos_shutdown(struct atropos *a)
{
    a->stopping = 1;
}
