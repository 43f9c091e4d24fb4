/*
 * tmux — the tmux tool: the slot's recorded terminal (session/terminal.h) driven the way the
 * reference drives a tmux pane: start, send_keys (with a wait for the shell to settle), capture,
 * stream (the asciicast recording), stop.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "atropos/atropos_internal.h"
#include "core/util.h"
#include "session/error.h"
#include "session/exec.h"
#include "session/keys.h"
#include "session/limits.h"

#define ECHO_WAIT_S 0.5 /* keys that produce no output at all count as seen after this */
#define STREAM_DEFAULT 50000
#define STREAM_MAX 200000
#define REC_NAME ".asciinema.cast"

struct atropos_wait {
    uv_timer_t timer;
    struct atropos_job *job;
};

static void wait_closed(uv_handle_t *h)
{
    free(h->data);
}

static void wait_end(struct atropos_wait *w, json_t *resp)
{
    struct atropos_job *job = w->job;
    job->wait = NULL;
    uv_timer_stop(&w->timer);
    if (!uv_is_closing((uv_handle_t *)&w->timer))
        uv_close((uv_handle_t *)&w->timer, wait_closed);
    atropos_job_finish(job, 200, resp);
}

static json_t *keys_ok(int blocked)
{
    return atropos_resp(1, "ok", 2, "", json_pack("{s:b, s:b}", "stateful", 1, "blocked", blocked));
}

static void wait_over(uv_timer_t *h)
{
    wait_end(h->data, keys_ok(0));
}

/* The blocking wait: the shell is back at its prompt and the terminal quiet (or the terminal is
 * gone: nothing left to wait for). */
static void keys_settled(enum terminal_settle how, void *arg)
{
    struct atropos_job *job = arg;
    job->settle = NULL;
    if (how != TERMINAL_SETTLE_TIMEOUT) {
        atropos_job_finish(job, 200, keys_ok(1));
        return;
    }
    buf_t m = BUF_INIT;
    atropos_py_float_repr(job->max_wait, &m);
    json_t *r = atropos_fail("tmux blocked keys timed out after %ss", m.data ? m.data : "");
    buf_free(&m);
    atropos_job_finish(job, 200, r);
}

static int wait_start(struct atropos_job *job, struct terminal *t, int block, double min_wait,
                      double max_wait)
{
    if (block) {
        struct terminal_settle_spec spec = {
            .min_wait_s = min_wait, .max_wait_s = max_wait, .echo_wait_s = ECHO_WAIT_S};
        job->max_wait = max_wait;
        return terminal_wait_settled(t, &spec, keys_settled, job, &job->settle);
    }
    struct atropos_wait *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->job = job;
    uv_timer_init(job->slot->a->reg->loop, &w->timer);
    w->timer.data = w;
    job->wait = w;
    uv_timer_start(&w->timer, wait_over, (uint64_t)ceil(min_wait * 1000), 0);
    return 0;
}

/* The slot's terminal, started (or resized) as asked: pane_width/pane_height are clamped as the
 * reference does. A terminal whose shell has exited is replaced. */
static int tmux_ensure(struct atropos_slot *s, json_t *args, struct terminal **out)
{
    struct terminal *t = atropos_slot_terminal(s);
    if (t && !terminal_running(t)) {
        terminal_destroy(t);
        t = NULL;
    }
    if (!t) {
        s->term_id[0] = '\0';
        s->stream_offset = 0;
    }
    long long cols = s->pane_w, rows = s->pane_h;
    json_t *pw = json_object_get(args, "pane_width"), *ph = json_object_get(args, "pane_height");
    /* Out of range is an error rather than silently clamped (as the reference did): a client
     * asking for 10 columns would otherwise work with a screen it does not expect. */
    if ((pw && !json_is_null(pw) && atropos_py_int(pw, &cols) < 0) ||
        (ph && !json_is_null(ph) && atropos_py_int(ph, &rows) < 0) || cols < TERMINAL_MIN_COLS ||
        cols > TERMINAL_MAX_COLS || rows < TERMINAL_MIN_ROWS || rows > TERMINAL_MAX_ROWS)
        return -ERANGE;
    s->pane_w = (int)cols;
    s->pane_h = (int)rows;
    if (t) {
        int c, r;
        terminal_size(t, &c, &r);
        if (c != s->pane_w || r != s->pane_h)
            terminal_resize(t, s->pane_w, s->pane_h);
        *out = t;
        return 0;
    }
    char **env = exec_build_env(s->sb, NULL, "xterm-256color", NULL);
    struct terminal_spec spec = {.env = (const char *const *)env,
                                 .cwd = "/workspace",
                                 .cols = s->pane_w,
                                 .rows = s->pane_h,
                                 .record = 1};
    int r = env ? terminal_create(s->sb, &spec, &t) : -ENOMEM;
    util_free_strv(env);
    if (r < 0)
        return r;
    snprintf(s->term_id, sizeof(s->term_id), "%s", terminal_id(t));
    *out = t;
    return 0;
}

static void tmux_send_keys(struct atropos_job *job, struct terminal *t, json_t *args,
                           double timeout)
{
    json_t *kv = json_object_get(args, "keys"), *k;
    size_t i, n = 0;
    int ok = json_is_string(kv) || json_is_array(kv);
    json_array_foreach(kv, i, k) ok = ok && json_is_string(k);
    if (!ok) {
        atropos_job_finish(
            job, 200, atropos_fail("tmux send_keys requires 'keys' as string or list[string]"));
        return;
    }
    int block = atropos_py_truthy(json_object_get(args, "block"));
    double min_wait = 0, max_wait = timeout;
    json_t *mv = json_object_get(args, "min_wait_s"), *xv = json_object_get(args, "max_wait_s");
    if (atropos_py_truthy(mv) && atropos_py_float(mv, &min_wait) < 0)
        min_wait = 0;
    if (atropos_py_truthy(xv) && atropos_py_float(xv, &max_wait) < 0)
        max_wait = timeout;
    double cap = job->slot->a->limits->exec_timeout_max_s;
    min_wait = min_wait < 0 ? 0 : min_wait > cap ? cap : min_wait;
    max_wait = max_wait < 0 ? 0 : max_wait > cap ? cap : max_wait;

    buf_t bytes = BUF_INIT;
    const char *last = NULL;
    n = json_is_string(kv) ? 1 : json_array_size(kv);
    for (i = 0; i < n; i++) {
        json_t *key = json_is_string(kv) ? kv : json_array_get(kv, i);
        const char *name = json_string_value(key);
        last = name;
        /* Like tmux send-keys: a key name is translated, anything else is typed as is. */
        if (strcmp(name, "KPEnter") == 0)
            buf_append_str(&bytes, "\r");
        else if (keys_append(&bytes, name) == 0)
            buf_append(&bytes, name, json_string_length(key));
    }
    /* Blocking waits for a shell command to finish: it must have been entered. */
    if (block &&
        (!last || (strcmp(last, "Enter") && strcmp(last, "C-m") && strcmp(last, "KPEnter"))))
        buf_append_str(&bytes, "\r");
    int r = bytes.len ? terminal_write(t, bytes.data, bytes.len) : 0;
    buf_free(&bytes);
    if (r < 0) {
        atropos_job_finish(
            job, 200,
            atropos_fail("tmux send-keys failed: %s",
                         r == -EPIPE ? "the terminal's shell has exited" : strerror(-r)));
        return;
    }
    if (!block && !(min_wait > 0)) {
        atropos_job_finish(job, 200, keys_ok(0));
        return;
    }
    if (wait_start(job, t, block, min_wait, max_wait) < 0)
        atropos_job_finish(job, 200, atropos_fail("tmux send-keys failed: out of memory"));
}

static void tmux_stream(struct atropos_job *job, struct terminal *t, json_t *args)
{
    struct atropos_slot *s = job->slot;
    if (atropos_py_truthy(json_object_get(args, "reset")))
        s->stream_offset = 0;
    long long max_bytes =
        atropos_clamp_int(json_object_get(args, "max_bytes"), STREAM_DEFAULT, 1, STREAM_MAX);
    char *text = NULL;
    size_t len = 0, take = 0;
    uint64_t next = 0;
    int r = terminal_recording(t, s->stream_offset, &text, &len, &next);
    if (r < 0 && r != -ENOENT) {
        atropos_job_finish(job, 200,
                           atropos_fail("Failed to read asciinema recording: %s", strerror(-r)));
        return;
    }
    if (r == 0) {
        /* Whole lines only, at most max_bytes. The text may start after the offset asked for
         * (events dropped from the recording's memory): it starts at next - len. */
        size_t lim = len < (size_t)max_bytes ? len : (size_t)max_bytes;
        for (size_t i = lim; i > 0; i--)
            if (text[i - 1] == '\n') {
                take = i;
                break;
            }
        if (take)
            s->stream_offset = next - len + take;
    }
    buf_t out = BUF_INIT;
    atropos_py_decode(&out, text ? text : "", take, SIZE_MAX, NULL);
    free(text);
    atropos_job_finish(
        job, 200,
        atropos_resp(1, out.data, out.len, "",
                     json_pack("{s:b, s:b, s:I, s:s}", "stateful", 1, "stream", 1, "offset",
                               (json_int_t)s->stream_offset, "recording", REC_NAME)));
    buf_free(&out);
}

void atropos_tool_tmux(struct atropos_job *job, json_t *args)
{
    struct atropos_slot *s = job->slot;
    buf_t action = BUF_INIT;
    atropos_py_name(json_object_get(args, "action"), "capture", &action);
    const char *act = action.data;
    double timeout;
    if (strcmp(act, "stop") == 0) {
        struct terminal *t = atropos_slot_terminal(s);
        if (t)
            terminal_destroy(t);
        s->term_id[0] = '\0';
        s->stream_offset = 0;
        s->pane_w = PANE_W;
        s->pane_h = PANE_H;
        atropos_job_finish(job, 200,
                           atropos_resp(1, "stopped", 7, "", json_pack("{s:b}", "stateful", 1)));
        goto out;
    }
    if (strcmp(act, "start") && strcmp(act, "send_keys") && strcmp(act, "capture") &&
        strcmp(act, "stream")) {
        atropos_job_finish(job, 200, atropos_fail("Unknown tmux action: %s", act));
        goto out;
    }
    if (atropos_job_timeout(job, &timeout) < 0) {
        atropos_job_finish(job, 200, atropos_fail("Invalid timeout: expected a number of seconds"));
        goto out;
    }
    struct terminal *t;
    int r = tmux_ensure(s, args, &t);
    if (r == -ERANGE) {
        atropos_job_finish(
            job, 200,
            atropos_fail_meta(json_pack("{s:b}", "stateful", 1),
                              "Invalid pane size: pane_width must be %d-%d and pane_height %d-%d",
                              TERMINAL_MIN_COLS, TERMINAL_MAX_COLS, TERMINAL_MIN_ROWS,
                              TERMINAL_MAX_ROWS));
        goto out;
    }
    if (r < 0) {
        atropos_job_finish(job, 200,
                           atropos_fail_meta(json_pack("{s:b}", "stateful", 1),
                                             "Failed to ensure tmux session: %s",
                                             session_strerror(r)));
        goto out;
    }
    if (strcmp(act, "start") == 0) {
        s->stream_offset = 0;
        atropos_job_finish(
            job, 200,
            atropos_resp(1, "started", 7, "",
                         json_pack("{s:b, s:i, s:i, s:s, s:s, s:s}", "stateful", 1, "pane_width",
                                   s->pane_w, "pane_height", s->pane_h, "socket", "tmux.sock",
                                   "session", s->term_id, "recording", REC_NAME)));
    } else if (strcmp(act, "send_keys") == 0) {
        tmux_send_keys(job, t, args, timeout);
    } else if (strcmp(act, "capture") == 0) {
        int all = atropos_py_truthy(json_object_get(args, "capture_entire")), row, col;
        char *screen = terminal_screen(t, all, &row, &col);
        buf_t raw = BUF_INIT, out = BUF_INIT;
        if (screen) {
            /* capture-pane -p ends every line with a newline */
            buf_append_str(&raw, screen);
            buf_append_str(&raw, "\n");
            free(screen);
            atropos_stream_text(&out, &raw);
        }
        atropos_job_finish(
            job, 200,
            screen ? atropos_resp(1, out.data, out.len, "",
                                  json_pack("{s:b, s:b}", "stateful", 1, "capture_entire", all))
                   : atropos_fail("tmux capture-pane failed: out of memory"));
        buf_free(&raw);
        buf_free(&out);
    } else {
        tmux_stream(job, t, args);
    }
out:
    buf_free(&action);
}

void atropos_tmux_cancel(struct atropos_job *job)
{
    json_t *resp = atropos_fail("Cancelled: the client went away");
    if (job->wait) {
        wait_end(job->wait, resp);
        return;
    }
    terminal_wait_cancel(job->settle);
    job->settle = NULL;
    atropos_job_finish(job, 200, resp);
}
