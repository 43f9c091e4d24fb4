/*
 * terminal — PTY programs with a screen model, recording and viewers. See terminal.h.
 */
#include "session/terminal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"
#include "session/asciicast.h"
#include "session/vt.h"

#define HISTORY_LINES 5000
#define RECORDING_MAX (64u << 20)

struct terminal_watch {
    struct terminal *t;
    struct terminal_watch *next;
    void (*on_output)(const char *data, size_t len, void *arg);
    void (*on_exit)(void *arg);
    void *arg;
    int held;
};

struct terminal {
    struct sandbox *sb;
    struct terminal *next;
    char id[TERMINAL_ID_MAX];
    struct proc *proc;
    struct vt *vt;
    struct asciicast *cast;
    double t0;
    int cols, rows;
    int running;
    int exit_code;
    double created_at;
    double last_output;
    struct terminal_watch *watchers;
};

const char *terminal_id(const struct terminal *t)
{
    return t->id;
}

struct terminal *terminal_next(const struct terminal *t)
{
    return t->next;
}

int terminal_running(const struct terminal *t)
{
    return t->running;
}

double terminal_last_output(const struct terminal *t)
{
    return t->last_output;
}

void terminal_size(const struct terminal *t, int *cols, int *rows)
{
    *cols = t->cols;
    *rows = t->rows;
}

struct terminal *terminal_find(struct sandbox *sb, const char *id)
{
    for (struct terminal *t = sb->terminals; t; t = t->next)
        if (strcmp(t->id, id) == 0)
            return t;
    return NULL;
}

void terminal_info(const struct terminal *t, struct terminal_info *out)
{
    *out = (struct terminal_info){.id = t->id,
                                  .running = t->running,
                                  .exit_code = t->exit_code,
                                  .cols = t->cols,
                                  .rows = t->rows,
                                  .recording = t->cast != NULL,
                                  .created_at = t->created_at};
}

static void on_output(struct proc *p, enum proc_stream s, const char *data, size_t len, void *arg)
{
    struct terminal *t = arg;
    double now = util_monotonic();
    t->last_output = now;
    vt_feed(t->vt, data, len);
    size_t rlen;
    char *replies = vt_take_replies(t->vt, &rlen);
    if (replies) {
        proc_write(p, replies, rlen);
        free(replies);
    }
    if (t->cast)
        asciicast_output(t->cast, now - t->t0, data, len);
    for (struct terminal_watch *w = t->watchers, *next; w; w = next) {
        next = w->next;
        w->on_output(data, len, w->arg);
    }
}

static void notify_exit(struct terminal *t)
{
    for (struct terminal_watch *w = t->watchers, *next; w; w = next) {
        next = w->next;
        if (w->on_exit)
            w->on_exit(w->arg);
    }
}

static void on_exit_status(struct proc *p, int status, void *arg)
{
    struct terminal *t = arg;
    t->running = 0;
    t->exit_code = status < 0            ? -1
                   : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                         : WEXITSTATUS(status);
    proc_release(p);
    t->proc = NULL;
    notify_exit(t);
}

static const struct proc_ops terminal_ops = {.on_output = on_output, .on_exit = on_exit_status};

int terminal_create(struct sandbox *sb, const struct terminal_spec *spec, struct terminal **out)
{
    static const char *const bash[] = {"/bin/bash", "-i", NULL};
    static const char *const sh_argv[] = {"/bin/sh", "-i", NULL};
    struct terminal *t = calloc(1, sizeof(*t));
    int r = -ENOMEM;
    if (!t || !(t->vt = vt_new(spec->rows, spec->cols, HISTORY_LINES)))
        goto error;
    util_random_id(t->id, sizeof(t->id), "term-");
    t->cols = spec->cols;
    t->rows = spec->rows;
    t->created_at = util_now();
    t->t0 = t->last_output = util_monotonic();
    const char *const *argv = spec->argv;
    if (!argv)
        argv =
            access("/usr/bin/bash", X_OK) == 0 || access("/bin/bash", X_OK) == 0 ? bash : sh_argv;
    if (spec->record && !(t->cast = asciicast_new(spec->cols, spec->rows, t->created_at,
                                                  "xterm-256color", argv[0], RECORDING_MAX)))
        goto error;
    struct proc_spec ps = {.argv = argv,
                           .env = spec->env,
                           .cwd = spec->cwd,
                           .pty = 1,
                           .rows = spec->rows,
                           .cols = spec->cols};
    if ((r = proc_start(sb, &ps, &terminal_ops, t, &t->proc)) < 0)
        goto error;
    t->running = 1;
    t->sb = sb;
    sandbox_ref(sb);
    t->next = sb->terminals;
    sb->terminals = t;
    *out = t;
    return 0;
error:
    if (t) {
        if (t->vt)
            vt_free(t->vt);
        if (t->cast)
            asciicast_free(t->cast);
    }
    free(t);
    return r;
}

int terminal_write(struct terminal *t, const void *data, size_t len)
{
    if (!t->proc)
        return -EPIPE;
    if (t->cast)
        asciicast_input(t->cast, util_monotonic() - t->t0, data, len);
    return proc_write(t->proc, data, len);
}

int terminal_resize(struct terminal *t, int cols, int rows)
{
    int r = vt_resize(t->vt, rows, cols);
    if (r < 0)
        return r;
    t->cols = cols;
    t->rows = rows;
    if (t->cast)
        asciicast_resize(t->cast, util_monotonic() - t->t0, cols, rows);
    return t->proc ? proc_resize(t->proc, rows, cols) : 0;
}

char *terminal_screen(struct terminal *t, int with_history, int *row, int *col)
{
    vt_cursor(t->vt, row, col);
    return vt_screen_text(t->vt, with_history);
}

int terminal_recording(struct terminal *t, uint64_t since, char **text, size_t *len, uint64_t *next)
{
    if (!t->cast)
        return -ENOENT;
    *text = asciicast_read(t->cast, since, len, next);
    return *text ? 0 : -ENOMEM;
}

int terminal_idle(struct terminal *t)
{
    pid_t fg, sid;
    if (!t->proc || proc_tty_groups(t->proc, &fg, &sid) < 0)
        return 1;
    return fg == sid;
}

struct terminal_watch *terminal_watch(struct terminal *t,
                                      void (*on_output_cb)(const char *data, size_t len, void *arg),
                                      void (*on_exit_cb)(void *arg), void *arg)
{
    struct terminal_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->t = t;
    w->on_output = on_output_cb;
    w->on_exit = on_exit_cb;
    w->arg = arg;
    w->next = t->watchers;
    t->watchers = w;
    return w;
}

/* The program's output is read only while no viewer holds it back. */
static void update_flow(struct terminal *t)
{
    int held = 0;
    for (struct terminal_watch *w = t->watchers; w && !held; w = w->next)
        held = w->held;
    if (t->proc)
        proc_pause_output(t->proc, held);
}

void terminal_watch_hold(struct terminal_watch *w, int held)
{
    if (w->held == !!held)
        return;
    w->held = !!held;
    update_flow(w->t);
}

void terminal_unwatch(struct terminal_watch *w)
{
    struct terminal *t = w->t;
    for (struct terminal_watch **pp = &t->watchers; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    int held = w->held;
    free(w);
    if (held)
        update_flow(t);
}

void terminal_destroy(struct terminal *t)
{
    for (struct terminal **pp = &t->sb->terminals; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
    if (t->proc) {
        /* Like closing a terminal window: hang-up to the session, which the shell passes on. */
        proc_kill(t->proc, SIGHUP, 1);
        proc_kill(t->proc, SIGCONT, 1);
        proc_release(t->proc);
        t->proc = NULL;
    }
    t->running = 0;
    notify_exit(t); /* viewers unwatch here */
    while (t->watchers)
        terminal_unwatch(t->watchers);
    vt_free(t->vt);
    if (t->cast)
        asciicast_free(t->cast);
    struct sandbox *sb = t->sb;
    free(t);
    sandbox_unref(sb);
}

void terminal_drop_all(struct sandbox *sb)
{
    while (sb->terminals)
        terminal_destroy(sb->terminals);
}

/* ---- settle waits ------------------------------------------------------------------------- */

struct terminal_wait {
    struct terminal *t;
    struct terminal_watch *watch; /* for the program's exit and the terminal's end */
    uv_timer_t timer;
    struct terminal_settle_spec spec;
    double t0;
    terminal_settle_fn done;
    void *arg;
};

static void wait_closed(uv_handle_t *h)
{
    free(h->data);
}

static void wait_release(struct terminal_wait *w)
{
    if (w->watch)
        terminal_unwatch(w->watch);
    w->watch = NULL;
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, wait_closed);
}

static void wait_end(struct terminal_wait *w, enum terminal_settle how)
{
    terminal_settle_fn done = w->done;
    void *arg = w->arg;
    wait_release(w);
    done(how, arg);
}

static void wait_poll(uv_timer_t *h)
{
    struct terminal_wait *w = h->data;
    double now = util_monotonic(), waited = now - w->t0, last = w->t->last_output;
    if (waited >= w->spec.max_wait_s) {
        wait_end(w, TERMINAL_SETTLE_TIMEOUT);
        return;
    }
    int echoed = w->spec.echo_wait_s <= 0 || last > w->t0 || waited >= w->spec.echo_wait_s;
    if (waited >= w->spec.min_wait_s && echoed && terminal_idle(w->t) &&
        now - last >= TERMINAL_QUIET_S)
        wait_end(w, TERMINAL_SETTLED);
}

static void wait_output(const char *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    (void)arg;
}

static void wait_exit(void *arg)
{
    wait_end(arg, TERMINAL_SETTLE_EXITED); /* unwatching from the notification is allowed */
}

int terminal_wait_settled(struct terminal *t, const struct terminal_settle_spec *spec,
                          terminal_settle_fn done, void *arg, struct terminal_wait **out)
{
    struct terminal_wait *w = calloc(1, sizeof(*w));
    if (!w || !(w->watch = terminal_watch(t, wait_output, wait_exit, w))) {
        free(w);
        return -ENOMEM;
    }
    w->t = t;
    w->spec = *spec;
    w->t0 = util_monotonic();
    w->done = done;
    w->arg = arg;
    uv_timer_init(t->sb->reg->loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, wait_poll, TERMINAL_SETTLE_POLL_MS, TERMINAL_SETTLE_POLL_MS);
    *out = w;
    return 0;
}

void terminal_wait_cancel(struct terminal_wait *w)
{
    wait_release(w);
}
