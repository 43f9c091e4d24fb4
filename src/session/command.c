/*
 * command — detached commands with ring-buffered output. See command.h.
 */
#include "session/command.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/ring.h"
#include "sandbox/proto.h"
#include "core/util.h"
#include "session/sblog.h"

/* Lossless watchers pause the command when fewer than this many bytes of the ring are free, so
 * that the reads already under way cannot overwrite what they have not seen. */
#define LOSSLESS_SLACK (512u << 10)

struct command_watch {
    struct command *cmd;
    struct command_watch *next;
    int lossless;
    uint64_t off[3]; /* by enum proc_stream */
    void (*on_update)(void *arg);
    void *arg;
};

struct command {
    struct sandbox *sb;
    struct command *next; /* in the sandbox's list */
    int in_list;
    int refs;
    char id[COMMAND_ID_MAX];
    struct proc *proc;
    uint32_t tag; /* its record in the init, forgotten when the command is freed */
    pid_t pid;
    enum command_state state;
    int exit_code, signal, timed_out;
    const char *error;
    double started_at, ended_at;
    json_t *describe;
    struct ring rings[3];        /* [PROC_STDOUT], [PROC_STDERR] */
    struct sblog_writer logw[3]; /* the same output on its way to the sandbox's log */
    struct command_watch *watchers;
    uv_timer_t timer; /* timeout while running, then the grace period before reaping */
    int timer_open;
    int paused;
};

const char *command_id(const struct command *c)
{
    return c->id;
}

struct sandbox *command_sandbox(const struct command *c)
{
    return c->sb;
}

enum command_state command_state(const struct command *c)
{
    return c->state;
}

pid_t command_pid(const struct command *c)
{
    return c->pid;
}

void command_result(const struct command *c, int *exit_code, int *signal, int *timed_out,
                    const char **error)
{
    *exit_code = c->exit_code;
    *signal = c->signal;
    *timed_out = c->timed_out;
    *error = c->error;
}

uint64_t command_end(const struct command *c, enum proc_stream s)
{
    return c->rings[s].end;
}

size_t command_read(const struct command *c, enum proc_stream s, uint64_t offset, void *out,
                    size_t max, uint64_t *gap)
{
    return ring_read(&c->rings[s], offset, out, max, gap);
}

static void command_free(struct command *c)
{
    struct sandbox *sb = c->sb;
    if (c->tag)
        proc_forget(sb, c->tag);
    ring_free(&c->rings[PROC_STDOUT]);
    ring_free(&c->rings[PROC_STDERR]);
    json_decref(c->describe);
    free(c);
    sandbox_unref(sb);
}

static void on_timer_closed(uv_handle_t *h)
{
    command_free(h->data);
}

void command_ref(struct command *c)
{
    c->refs++;
}

void command_unref(struct command *c)
{
    if (--c->refs > 0)
        return;
    if (c->proc) {
        /* Nobody can reach it any more: it must not run on unobserved. */
        proc_kill(c->proc, SIGKILL, 1);
        proc_release(c->proc);
        c->proc = NULL;
    }
    if (c->timer_open) {
        c->timer_open = 0;
        uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    } else {
        command_free(c);
    }
}

static void list_remove(struct command *c)
{
    if (!c->in_list)
        return;
    for (struct command **pp = &c->sb->commands; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    c->next = NULL;
    c->in_list = 0;
    command_unref(c);
}

void command_drop_all(struct sandbox *sb)
{
    while (sb->commands)
        list_remove(sb->commands);
}

struct command *command_next(const struct command *c)
{
    return c->next;
}

struct command *command_find(struct sandbox *sb, const char *id)
{
    for (struct command *c = sb->commands; c; c = c->next)
        if (strcmp(c->id, id) == 0)
            return c;
    return NULL;
}

static void notify(struct command *c)
{
    command_ref(c); /* a watcher may unwatch (and drop the last reference) from its callback */
    for (struct command_watch *w = c->watchers, *next; w; w = next) {
        next = w->next;
        w->on_update(w->arg);
    }
    command_unref(c);
}

/* Pauses reading while a lossless watcher would lose data, resumes when none would. */
static void update_flow(struct command *c)
{
    int pause = 0;
    for (struct command_watch *w = c->watchers; w; w = w->next) {
        if (!w->lossless)
            continue;
        for (int s = PROC_STDOUT; s <= PROC_STDERR; s++) {
            uint64_t unread = c->rings[s].end - w->off[s];
            if (unread + LOSSLESS_SLACK >= c->rings[s].cap)
                pause = 1;
        }
    }
    if (pause != c->paused && c->proc) {
        c->paused = pause;
        proc_pause_output(c->proc, pause);
    }
}

static void on_output(struct proc *p, enum proc_stream s, const char *data, size_t len, void *arg)
{
    struct command *c = arg;
    ring_write(&c->rings[s], data, len);
    sblog_write(c->sb, &c->logw[s], data, len);
    update_flow(c);
    notify(c);
}

static void on_started(struct proc *p, void *arg)
{
    struct command *c = arg;
    c->pid = proc_pid(p);
    notify(c);
}

static void on_reap(uv_timer_t *t)
{
    list_remove(t->data);
}

/* Records the end of the command (a wait status, or -errno when it never ran or was lost). */
static void set_result(struct command *c, int status)
{
    c->ended_at = util_now();
    if (status < 0) {
        c->state = CMD_FAILED;
        c->exit_code = -1;
        c->error = status == -ESRCH    ? "the sandbox was deleted or stopped"
                   : status == -EAGAIN ? "the sandbox cannot start more processes"
                                       : "the sandbox's init could not start the command";
    } else {
        c->state = CMD_EXITED;
        if (WIFSIGNALED(status)) {
            c->signal = WTERMSIG(status);
            c->exit_code = 128 + c->signal;
        } else {
            c->exit_code = WEXITSTATUS(status);
        }
    }
    c->sb->last_active_at = c->ended_at;
}

static void on_exit_status(struct proc *p, int status, void *arg)
{
    struct command *c = arg;
    set_result(c, status);
    sblog_flush(c->sb, &c->logw[PROC_STDOUT]);
    sblog_flush(c->sb, &c->logw[PROC_STDERR]);
    proc_release(p);
    c->proc = NULL;
    if (c->timer_open) /* from timeout to grace period */
        uv_timer_start(&c->timer, on_reap, (uint64_t)COMMAND_GRACE_S * 1000, 0);
    notify(c);
}

static const struct proc_ops command_ops = {
    .on_output = on_output, .on_started = on_started, .on_exit = on_exit_status};

static void on_timeout(uv_timer_t *t)
{
    struct command *c = t->data;
    if (c->state != CMD_RUNNING || !c->proc)
        return;
    c->timed_out = 1;
    proc_kill(c->proc, SIGKILL, 1);
}

/* What the init keeps for a later daemon (proto.h's note): the command's identity, start time
 * and description; the description is left out when it does not fit. */
static char *command_note(const struct command *c, size_t *len)
{
    for (int with_describe = 1; with_describe >= 0; with_describe--) {
        json_t *j = json_pack("{s:s, s:s, s:f, s:O}", "k", "cmd", "id", c->id, "t", c->started_at,
                              "d", with_describe ? c->describe : json_null());
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (text && strlen(text) <= WPROTO_NOTE_MAX) {
            *len = strlen(text);
            return text;
        }
        free(text);
    }
    return NULL;
}

static void list_add(struct sandbox *sb, struct command *c)
{
    c->refs = 1; /* the sandbox's list */
    c->in_list = 1;
    c->next = sb->commands;
    sb->commands = c;
}

int command_start(struct sandbox *sb, const struct command_spec *spec, struct command **out)
{
    struct command *c = calloc(1, sizeof(*c));
    size_t cap = spec->ring_bytes ? spec->ring_bytes : COMMAND_RING_DEFAULT, note_len = 0;
    int r = -ENOMEM, rfd[2] = {-1, -1};
    char *note = NULL;
    /* The rings live in memfds the init holds too: a daemon that restarts finds the output
     * already read, at its offsets (core/ring.h). */
    if (!c || util_random_id(c->id, sizeof(c->id), "cmd-") < 0)
        goto error;
    if ((r = ring_init_shared(&c->rings[PROC_STDOUT], cap, &rfd[0])) < 0 ||
        (r = ring_init_shared(&c->rings[PROC_STDERR], cap, &rfd[1])) < 0)
        goto error;
    c->started_at = util_now();
    c->describe = spec->describe ? json_deep_copy(spec->describe) : json_object();
    r = -ENOMEM;
    if (!c->describe || !(note = command_note(c, &note_len)))
        goto error;
    struct proc_spec ps = spec->proc;
    ps.keep_fds = rfd;
    ps.nkeep = 2;
    ps.note = note;
    ps.note_len = note_len;
    ps.keep_after_exit = 1;
    if ((r = proc_start(sb, &ps, &command_ops, c, &c->proc)) < 0)
        goto error;
    free(note);
    close(rfd[0]);
    close(rfd[1]);
    c->sb = sb;
    sandbox_ref(sb);
    c->tag = proc_tag(c->proc);
    c->state = CMD_RUNNING;
    if (spec->stdin_len)
        proc_write(c->proc, spec->stdin_data, spec->stdin_len);
    if (spec->close_stdin)
        proc_close_stdin(c->proc);
    uv_timer_init(sb->reg->loop, &c->timer);
    c->timer.data = c;
    c->timer_open = 1;
    if (spec->timeout_s > 0)
        uv_timer_start(&c->timer, on_timeout, (uint64_t)(spec->timeout_s * 1000.0) + 1, 0);
    list_add(sb, c);
    *out = c;
    return 0;
error:
    if (c) {
        ring_free(&c->rings[PROC_STDOUT]);
        ring_free(&c->rings[PROC_STDERR]);
        json_decref(c->describe);
    }
    for (int i = 0; i < 2; i++)
        if (rfd[i] >= 0)
            close(rfd[i]);
    free(note);
    free(c);
    return r;
}

int command_adopt(struct sandbox *sb, const struct initctl_state *st)
{
    struct command *c = calloc(1, sizeof(*c));
    json_error_t jerr;
    json_t *note = json_loadb(st->note, st->note_len, 0, &jerr);
    const char *id = json_string_value(json_object_get(note, "id"));
    int r = -EINVAL;
    if (!c || !id || strlen(id) >= sizeof(c->id))
        goto error;
    for (int s = PROC_STDOUT; s <= PROC_STDERR; s++)
        if (st->ring_fds[s - PROC_STDOUT] < 0 ||
            (r = ring_attach(&c->rings[s], st->ring_fds[s - PROC_STDOUT])) < 0)
            goto error;
    snprintf(c->id, sizeof(c->id), "%s", id);
    c->started_at = json_number_value(json_object_get(note, "t"));
    json_t *d = json_object_get(note, "d");
    c->describe = json_is_object(d) ? json_incref(d) : json_object();
    c->sb = sb;
    sandbox_ref(sb);
    c->tag = st->tag;
    c->pid = st->pid;
    c->state = CMD_RUNNING;
    uv_timer_init(sb->reg->loop, &c->timer);
    c->timer.data = c;
    c->timer_open = 1;
    list_add(sb, c);
    if (st->pipe_fds[0] >= 0 && proc_adopt(sb, st, &command_ops, c, &c->proc) == 0) {
        if (st->exited) /* what it wrote before it exited is read first */
            proc_on_exit(c->proc, st->status);
    } else {
        /* Its output was read to the end before (or cannot be read any more). */
        set_result(c, st->exited ? st->status : -ESRCH);
        uv_timer_start(&c->timer, on_reap, (uint64_t)COMMAND_GRACE_S * 1000, 0);
    }
    for (int i = 0; i < 2; i++)
        close(st->ring_fds[i]);
    json_decref(note);
    return 0;
error:
    for (int i = 0; i < 2; i++) {
        if (st->pipe_fds[i] >= 0)
            close(st->pipe_fds[i]);
        if (st->ring_fds[i] >= 0)
            close(st->ring_fds[i]);
    }
    if (c) {
        ring_free(&c->rings[PROC_STDOUT]);
        ring_free(&c->rings[PROC_STDERR]);
    }
    free(c);
    json_decref(note);
    return r;
}

int command_note_is_ours(const void *note, size_t len)
{
    static const char prefix[] = "{\"k\":\"cmd\"";
    return len >= sizeof(prefix) - 1 && memcmp(note, prefix, sizeof(prefix) - 1) == 0;
}

void command_info(const struct command *c, struct command_info *out)
{
    *out = (struct command_info){.id = c->id,
                                 .pid = c->pid,
                                 .state = c->state,
                                 .exit_code = c->exit_code,
                                 .signal = c->signal,
                                 .timed_out = c->timed_out,
                                 .error = c->error,
                                 .started_at = c->started_at,
                                 .ended_at = c->ended_at,
                                 .stdout_bytes = c->rings[PROC_STDOUT].end,
                                 .stderr_bytes = c->rings[PROC_STDERR].end,
                                 .describe = c->describe};
}

int command_write(struct command *c, const void *data, size_t len)
{
    return c->proc ? proc_write(c->proc, data, len) : -EPIPE;
}

void command_close_stdin(struct command *c)
{
    if (c->proc)
        proc_close_stdin(c->proc);
}

void command_kill(struct command *c, int sig)
{
    if (c->proc)
        proc_kill(c->proc, sig, 1);
}

struct command_watch *command_watch(struct command *c, int lossless, void (*on_update)(void *arg),
                                    void *arg)
{
    struct command_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->cmd = c;
    w->lossless = lossless;
    w->on_update = on_update;
    w->arg = arg;
    w->off[PROC_STDOUT] = c->rings[PROC_STDOUT].start;
    w->off[PROC_STDERR] = c->rings[PROC_STDERR].start;
    w->next = c->watchers;
    c->watchers = w;
    command_ref(c);
    return w;
}

void command_watch_progress(struct command_watch *w, uint64_t out_off, uint64_t err_off)
{
    w->off[PROC_STDOUT] = out_off;
    w->off[PROC_STDERR] = err_off;
    if (w->lossless)
        update_flow(w->cmd);
}

void command_unwatch(struct command_watch *w)
{
    struct command *c = w->cmd;
    for (struct command_watch **pp = &c->watchers; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    free(w);
    update_flow(c);
    command_unref(c);
}
