/*
 * shell — persistent shells. See shell.h for the protocol.
 */
#include "session/shell.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/util.h"

#define MARKER_PREFIX "__WARREN_"
#define INTERRUPT_GRACE_MS 1500 /* after SIGINT, before SIGKILL and a re-sent marker */
#define GIVE_UP_MS 3000         /* after that, before the shell is declared broken */
#define START_TIMEOUT_MS 10000

enum shell_state { SH_STARTING, SH_IDLE, SH_RUNNING, SH_DEAD };

struct shell_run {
    struct shell *sh;
    struct shell_run *next; /* queue */
    char *command;
    double timeout_s;
    size_t max_output;
    shell_run_cb cb;
    void *arg;
    double t0;
    int cancelled;
    struct shell_result res;
};

struct shell {
    struct sandbox *sb;
    struct shell *next;
    char id[SHELL_ID_MAX];
    char **env;
    char *cwd;
    struct proc *proc;
    enum shell_state state;
    int restarted; /* the current proc replaced one that exited */
    char nonce[24];
    buf_t scan;          /* the tail of the output since the run (or start-up) began */
    size_t scan_dropped; /* bytes of that output already dropped from the front of scan */
    struct shell_run *queue, *current;
    uv_timer_t timer;
    int stage; /* timeout escalation: 0 none, 1 interrupted, 2 killed */
    double created_at;
    int destroyed;
};

static void start_next(struct shell *sh);
static int shell_spawn(struct shell *sh);
static void on_timer(uv_timer_t *t);

const char *shell_id(const struct shell *sh)
{
    return sh->id;
}

struct shell *shell_next(const struct shell *sh)
{
    return sh->next;
}

struct shell *shell_find(struct sandbox *sb, const char *id)
{
    for (struct shell *sh = sb->shells; sh; sh = sh->next)
        if (strcmp(sh->id, id) == 0)
            return sh;
    return NULL;
}

void shell_info(const struct shell *sh, struct shell_info *out)
{
    static const char *const names[] = {"starting", "idle", "running", "exited"};
    *out = (struct shell_info){.id = sh->id,
                               .state = names[sh->state],
                               .created_at = sh->created_at,
                               .queued = (sh->current != NULL) + (sh->queue != NULL)};
}

/* Appends `s` to `out` as the body of a bash $'...' string. */
static int ansi_c_quote(buf_t *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int r;
        if (*p >= 0x20 && *p < 0x7f && *p != '\'' && *p != '\\')
            r = buf_append(out, p, 1);
        else
            r = buf_appendf(out, "\\x%02x", *p);
        if (r < 0)
            return r;
    }
    return 0;
}

static void new_nonce(struct shell *sh)
{
    util_random_id(sh->nonce, sizeof(sh->nonce), "");
}

/* Writes the line that prints the marker with the status `rc_expr` (e.g. "$?", "130"). */
static void send_marker(struct shell *sh, const char *rc_expr)
{
    char line[160];
    int n = snprintf(line, sizeof(line), "printf '\\n" MARKER_PREFIX "%s_RC=%%d__\\n' %s\n",
                     sh->nonce, rc_expr);
    proc_write(sh->proc, line, (size_t)n);
}

static void run_complete(struct shell *sh, struct shell_run *run)
{
    buf_t *o = &run->res.output;
    if (sh->current == run)
        sh->current = NULL;
    if (o->len > run->max_output) { /* it kept a little more, for the marker */
        o->len = run->max_output;
        if (o->data)
            o->data[o->len] = '\0';
        run->res.truncated = 1;
    }
    run->res.duration_ms = (util_monotonic() - run->t0) * 1000.0;
    run->cb(&run->res, run->arg);
    buf_free(&run->res.output);
    free(run->command);
    free(run);
}

static void fail_all(struct shell *sh, int err, const char *msg)
{
    uv_timer_stop(&sh->timer);
    struct shell_run *run;
    if ((run = sh->current)) {
        run->res.error = err;
        run->res.error_msg = msg;
        run_complete(sh, run);
    }
    while ((run = sh->queue)) {
        sh->queue = run->next;
        run->res.error = err;
        run->res.error_msg = msg;
        run_complete(sh, run);
    }
}

/* Looks for this run's marker in what was received; returns 1 and completes the run if found. */
static int check_marker(struct shell *sh)
{
    char pat[64];
    int n = snprintf(pat, sizeof(pat), "\n" MARKER_PREFIX "%s_RC=", sh->nonce);
    char *hit = memmem(sh->scan.data ? sh->scan.data : "", sh->scan.len, pat, (size_t)n);
    if (!hit)
        return 0;
    char *num = hit + n, *end = sh->scan.data + sh->scan.len;
    char *term = memmem(num, (size_t)(end - num), "__", 2);
    if (!term || !memchr(term, '\n', (size_t)(end - term)))
        return 0; /* the rest of the marker line has not arrived yet */
    int rc = atoi(num);
    /* The output is everything before the marker's newline, counted from the run's start. */
    size_t out_len = sh->scan_dropped + (size_t)(hit - sh->scan.data);
    buf_reset(&sh->scan);
    sh->scan_dropped = 0;

    if (sh->state == SH_STARTING) {
        uv_timer_stop(&sh->timer);
        sh->state = SH_IDLE;
        start_next(sh);
        return 1;
    }
    struct shell_run *run = sh->current;
    if (run) {
        buf_t *o = &run->res.output;
        if (out_len < o->len) /* the marker was partly in the kept output */
            o->len = out_len, o->data[out_len] = '\0';
        run->res.truncated = out_len > run->max_output;
        run->res.exit_code = rc;
        run_complete(sh, run);
    }
    if (sh->stage == 2) {
        /* Its job was killed after a second marker line was sent: one of the two lines may still
         * be in the shell's input (a ^C discards what the terminal holds, not what bash read),
         * and its output must not show in the next run's. Resynchronise on a fresh marker, as at
         * start-up: whatever comes before it is dropped. */
        sh->state = SH_STARTING;
        new_nonce(sh);
        send_marker(sh, "0");
        uv_timer_start(&sh->timer, on_timer, GIVE_UP_MS, 0);
        return 1;
    }
    uv_timer_stop(&sh->timer);
    sh->state = SH_IDLE;
    start_next(sh);
    return 1;
}

static void on_output(struct proc *p, enum proc_stream s, const char *data, size_t len, void *arg)
{
    struct shell *sh = arg;
    struct shell_run *run = sh->current;
    if (run && sh->state == SH_RUNNING) {
        buf_t *o = &run->res.output;
        size_t room = run->max_output > o->len ? run->max_output - o->len : 0;
        /* Keep a little beyond the limit: the marker may be in it and is cut off later. */
        size_t take = len < room + 256 ? len : room + 256;
        buf_append(o, data, take);
    }
    /* Marker detection works on a bounded window: the last marker length + the new bytes. */
    buf_append(&sh->scan, data, len);
    if (check_marker(sh))
        return;
    if (sh->scan.len > 4096) {
        sh->scan_dropped += sh->scan.len - 256;
        buf_consume(&sh->scan, sh->scan.len - 256);
    }
}

static void on_exit_status(struct proc *p, int status, void *arg)
{
    struct shell *sh = arg;
    proc_release(p);
    sh->proc = NULL;
    sh->state = SH_DEAD;
    buf_reset(&sh->scan);
    sh->scan_dropped = 0;
    uv_timer_stop(&sh->timer);
    struct shell_run *run = sh->current;
    if (run) {
        sh->current = NULL;
        if (status < 0) {
            run->res.error = status;
            run->res.error_msg = "the sandbox went away";
        } else {
            run->res.shell_exited = 1;
            run->res.exit_code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
        }
        run_complete(sh, run);
    }
    if (status == -ESRCH || sh->destroyed)
        fail_all(sh, -ESRCH, "the shell was closed or its sandbox deleted");
    else
        start_next(sh); /* queued runs get a fresh shell */
}

static const struct proc_ops shell_ops = {.on_output = on_output, .on_exit = on_exit_status};

static void signal_foreground(struct shell *sh, int sig)
{
    pid_t fg, sid;
    if (!sh->proc || proc_tty_groups(sh->proc, &fg, &sid) < 0)
        return;
    if (fg > 0 && fg != sid)
        kill(-fg, sig); /* a job of the shell */
    else if (sig == SIGINT)
        proc_write(sh->proc, "\x03", 1); /* the shell itself is busy: ^C */
}

static void on_timer(uv_timer_t *t)
{
    struct shell *sh = t->data;
    if (sh->state == SH_STARTING) {
        proc_kill(sh->proc, SIGKILL, 1);
        return;
    }
    if (sh->state != SH_RUNNING)
        return;
    if (sh->stage == 0) {
        if (sh->current && !sh->current->cancelled)
            sh->current->res.timed_out = 1;
        signal_foreground(sh, SIGINT);
        sh->stage = 1;
        uv_timer_start(&sh->timer, on_timer, INTERRUPT_GRACE_MS, 0);
    } else if (sh->stage == 1) {
        signal_foreground(sh, SIGKILL);
        send_marker(sh, "130");
        sh->stage = 2;
        uv_timer_start(&sh->timer, on_timer, GIVE_UP_MS, 0);
    } else {
        /* The shell does not answer: replace it. on_exit completes the run. */
        proc_kill(sh->proc, SIGKILL, 1);
    }
}

static void start_next(struct shell *sh)
{
    if (sh->current || sh->destroyed)
        return;
    if (sh->state == SH_DEAD) {
        if (!sh->queue)
            return;
        int r = shell_spawn(sh);
        if (r < 0) {
            fail_all(sh, r, "cannot start a new shell: the sandbox is not running");
            return;
        }
        sh->restarted = 1;
        return; /* runs start once the new shell has answered */
    }
    if (sh->state != SH_IDLE || !sh->queue)
        return;
    struct shell_run *run = sh->queue;
    sh->queue = run->next;
    sh->current = run;
    run->res.shell_restarted = sh->restarted;
    sh->restarted = 0;
    if (run->cancelled) {
        run->res.error = -ECANCELED;
        run->res.error_msg = "cancelled";
        run_complete(sh, run);
        start_next(sh);
        return;
    }
    sh->state = SH_RUNNING;
    sh->stage = 0;
    new_nonce(sh);
    buf_reset(&sh->scan);
    sh->scan_dropped = 0;
    buf_t line = BUF_INIT;
    buf_append_str(&line, "__warren_cmd=$'");
    ansi_c_quote(&line, run->command);
    buf_append_str(&line, "'\n{ eval \"$__warren_cmd\"\n} </dev/null\n");
    proc_write(sh->proc, line.data, line.len);
    buf_free(&line);
    send_marker(sh, "$?");
    run->t0 = util_monotonic();
    uv_timer_start(&sh->timer, on_timer, (uint64_t)(run->timeout_s * 1000.0) + 1, 0);
}

static int shell_spawn(struct shell *sh)
{
    static const char *const bash[] = {"/bin/bash",   "--noprofile", "--norc",
                                       "--noediting", "-i",          NULL};
    static const char *const sh_argv[] = {"/bin/sh", "-i", NULL};
    int has_bash = access("/usr/bin/bash", X_OK) == 0 || access("/bin/bash", X_OK) == 0;
    struct proc_spec spec = {.argv = has_bash ? bash : sh_argv,
                             .env = (const char *const *)sh->env,
                             .cwd = sh->cwd,
                             .pty = 1,
                             .rows = 50,
                             .cols = 200};
    int r = proc_start(sh->sb, &spec, &shell_ops, sh, &sh->proc);
    if (r < 0)
        return r;
    sh->state = SH_STARTING;
    new_nonce(sh);
    buf_reset(&sh->scan);
    sh->scan_dropped = 0;
    /* Terminal without echo and without \n -> \r\n, no history expansion, aliases on. The
     * marker then says the shell is ready. */
    static const char setup[] = "stty -echo -onlcr 2>/dev/null; set +H 2>/dev/null; "
                                "shopt -s expand_aliases 2>/dev/null; unset HISTFILE\n";
    proc_write(sh->proc, setup, sizeof(setup) - 1);
    send_marker(sh, "0");
    uv_timer_start(&sh->timer, on_timer, START_TIMEOUT_MS, 0);
    return 0;
}

static void free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct shell *sh = h->data;
    struct sandbox *sb = sh->sb;
    free_strv(sh->env);
    free(sh->cwd);
    buf_free(&sh->scan);
    free(sh);
    sandbox_unref(sb);
}

int shell_create(struct sandbox *sb, const char *const *env, const char *cwd, struct shell **out)
{
    struct shell *sh = calloc(1, sizeof(*sh));
    size_t n = 0;
    while (env[n])
        n++;
    if (!sh || !(sh->env = calloc(n + 4, sizeof(char *))) || !(sh->cwd = strdup(cwd)))
        goto oom;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(env[i], "PS1=", 4) && strncmp(env[i], "PS2=", 4) &&
            strncmp(env[i], "PROMPT_COMMAND=", 15) && strncmp(env[i], "TERM=", 5) &&
            !(sh->env[k++] = strdup(env[i])))
            goto oom;
    /* Prompts would be mixed into the output; TERM=dumb keeps programs from drawing. */
    static const char *const fixed[] = {"PS1=", "PS2=", "TERM=dumb"};
    for (size_t i = 0; i < 3; i++)
        if (!(sh->env[k++] = strdup(fixed[i])))
            goto oom;
    util_random_id(sh->id, sizeof(sh->id), "sh-");
    sh->sb = sb;
    sh->created_at = util_now();
    buf_init(&sh->scan);
    uv_timer_init(sb->reg->loop, &sh->timer);
    sh->timer.data = sh;
    int r = shell_spawn(sh);
    if (r < 0) {
        sh->destroyed = 1;
        sandbox_ref(sb);
        uv_close((uv_handle_t *)&sh->timer, on_timer_closed);
        return r;
    }
    sandbox_ref(sb);
    sh->next = sb->shells;
    sb->shells = sh;
    *out = sh;
    return 0;
oom:
    if (sh) {
        free_strv(sh->env);
        free(sh->cwd);
    }
    free(sh);
    return -ENOMEM;
}

int shell_run(struct shell *sh, const char *command, double timeout_s, size_t max_output,
              shell_run_cb cb, void *arg, struct shell_run **out)
{
    struct shell_run *run = calloc(1, sizeof(*run));
    if (!run || !(run->command = strdup(command))) {
        free(run);
        return -ENOMEM;
    }
    run->sh = sh;
    run->timeout_s = timeout_s;
    run->max_output = max_output;
    run->cb = cb;
    run->arg = arg;
    run->t0 = util_monotonic();
    buf_init(&run->res.output);
    struct shell_run **pp = &sh->queue;
    while (*pp)
        pp = &(*pp)->next;
    *pp = run;
    if (out)
        *out = run;
    start_next(sh);
    return 0;
}

void shell_run_cancel(struct shell_run *run)
{
    struct shell *sh = run->sh;
    run->cancelled = 1;
    if (sh->current == run && sh->state == SH_RUNNING && sh->stage == 0) {
        uv_timer_stop(&sh->timer);
        sh->stage = 0;
        on_timer(&sh->timer); /* interrupt now, as a timeout would */
    }
}

void shell_destroy(struct shell *sh)
{
    if (sh->destroyed)
        return;
    sh->destroyed = 1;
    for (struct shell **pp = &sh->sb->shells; *pp; pp = &(*pp)->next) {
        if (*pp == sh) {
            *pp = sh->next;
            break;
        }
    }
    fail_all(sh, -ECANCELED, "the shell was closed");
    if (sh->proc) {
        /* A hang-up, as when a terminal closes: bash passes it on to its jobs and exits. */
        proc_kill(sh->proc, SIGHUP, 1);
        proc_kill(sh->proc, SIGCONT, 1);
        proc_release(sh->proc);
        sh->proc = NULL;
    }
    uv_close((uv_handle_t *)&sh->timer, on_timer_closed);
}

void shell_drop_all(struct sandbox *sb)
{
    while (sb->shells)
        shell_destroy(sb->shells);
}
