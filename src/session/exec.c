/*
 * exec — one command to completion, output collected in memory. See exec.h.
 */
#include "session/exec.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "core/util.h"
#include "sandbox/cgroup.h"
#include "sandbox/egress.h"
#include "session/proc.h"
#include "session/secrets.h"

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

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

/* Builds the command's environment: defaults < sandbox env < request env. */
char **exec_build_env(const struct sandbox *sb, json_t *exec_env, const char *term)
{
    json_t *all = json_pack("{s:s, s:s, s:s, s:s, s:s}", "PATH", DEFAULT_PATH, "HOME",
                            sb->user_set ? sb->user_home : "/root", "HOSTNAME", sb->name, "LANG",
                            "C.UTF-8", "TERM", term);
    if (!all)
        return NULL;
    /* With an egress proxy, the usual variables point at it; the sandbox's env may override. */
    if (egress_policy_mode(sb->network) != EGRESS_NONE) {
        static const char *const names[] = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                            "https_proxy"};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            json_object_set_new(all, names[i], json_string("http://127.0.0.1:3128"));
        json_object_set_new(all, "NO_PROXY", json_string("localhost,127.0.0.1,::1"));
        json_object_set_new(all, "no_proxy", json_string("localhost,127.0.0.1,::1"));
    }
    /* An image's Env (its PATH above all) comes under what the sandbox's spec says. */
    for (size_t i = 0; sb->image && sb->image->env && sb->image->env[i]; i++) {
        const char *kv = sb->image->env[i], *eq = strchr(kv, '=');
        if (!eq || eq == kv)
            continue;
        char *k = strndup(kv, (size_t)(eq - kv));
        if (k)
            json_object_set_new(all, k, json_string(eq + 1));
        free(k);
    }
    json_object_update(all, sb->env);
    size_t si;
    json_t *name;
    json_array_foreach(sb->secrets, si, name)
    {
        const char *value = secrets_get(sb->reg->secrets, json_string_value(name));
        if (value)
            json_object_set_new(all, json_string_value(name), json_string(value));
    }
    if (exec_env)
        json_object_update(all, exec_env);
    size_t n = json_object_size(all), i = 0;
    char **env = calloc(n + 1, sizeof(char *));
    const char *k;
    json_t *v;
    json_object_foreach(all, k, v)
    {
        if (!env)
            break;
        size_t len = strlen(k) + strlen(json_string_value(v)) + 2;
        if (!(env[i] = malloc(len))) {
            util_free_strv(env);
            env = NULL;
            break;
        }
        snprintf(env[i++], len, "%s=%s", k, json_string_value(v));
    }
    json_decref(all);
    return env;
}
