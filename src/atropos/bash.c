/*
 * bash — the bash tool (a one-shot /bin/sh -c in the slot's sandbox) and bash_stateful (the
 * slot's persistent shell).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atropos/atropos_internal.h"
#include "core/util.h"
#include "session/error.h"
#include "session/exec.h"
#include "session/limits.h"
#include "session/network.h"

/* Output is cut by characters (as the reference does on decoded text); collecting 4 bytes per
 * character (+1) is always enough to know that a stream had more than the limit. */
#define COLLECT_BYTES (MAX_OUTPUT_CHARS * 4 + 4)
#define DEFAULT_TIMEOUT 30.0

/* The request's timeout: absent or null → 30; a number (or bool, as in Python). */
int atropos_job_timeout(struct atropos_job *job, double *t)
{
    json_t *v = json_object_get(job->body, "timeout");
    if (!v || json_is_null(v)) {
        *t = DEFAULT_TIMEOUT;
        return 0;
    }
    if (json_is_number(v) || json_is_boolean(v))
        return atropos_py_float(v, t);
    return -EINVAL;
}

/* The timeout as the reference prints it: the request's value (30.0 when absent). */
static json_t *timed_out_resp(struct atropos_job *job, json_t *meta)
{
    json_t *v = json_object_get(job->body, "timeout");
    buf_t t = BUF_INIT;
    if (!v || json_is_null(v))
        buf_append_str(&t, "30.0");
    else
        atropos_py_str(v, &t);
    json_t *o = atropos_fail_meta(meta, "Command timed out after %ss", t.data ? t.data : "");
    buf_free(&t);
    return o;
}

static double cap_timeout(struct atropos_job *job, double t)
{
    double max = job->slot->a->limits->exec_timeout_max_s;
    return t > max ? max : t;
}

static void bash_done(struct exec *ex, struct exec_result *res, void *arg)
{
    struct atropos_job *job = arg;
    job->ex = NULL;
    json_t *resp;
    if (res->timed_out) {
        resp = timed_out_resp(
            job, json_pack("{s:i, s:b, s:b}", "exit_code", -1, "timeout", 1, "sandboxed", 1));
    } else if (res->error) {
        resp = atropos_fail_meta(json_pack("{s:b}", "sandboxed", 1),
                                 "Failed to execute sandboxed command: %s",
                                 res->error_msg ? res->error_msg : strerror(-res->error));
    } else {
        buf_t o = BUF_INIT, e = BUF_INIT, all = BUF_INIT;
        char err[48] = "";
        atropos_stream_text(&o, &res->out);
        atropos_stream_text(&e, &res->err);
        buf_append(&all, o.data ? o.data : "", o.len);
        if (e.len) {
            if (o.len)
                buf_append_str(&all, "\n[stderr]\n");
            buf_append(&all, e.data, e.len);
        }
        size_t a, b;
        atropos_py_strip(all.data, all.len, &a, &b);
        if (res->exit_code != 0)
            snprintf(err, sizeof(err), "Exit code: %d", res->exit_code);
        resp = atropos_resp(res->exit_code == 0, all.data + a, b - a, err,
                            json_pack("{s:i, s:b, s:b}", "exit_code", res->exit_code, "sandboxed",
                                      1, "network_isolated", !job->network));
        buf_free(&o);
        buf_free(&e);
        buf_free(&all);
    }
    if (res->timed_out || job->cancelled)
        atropos_reap_then_finish(job, resp);
    else
        atropos_job_finish(job, 200, resp);
}

void atropos_tool_bash(struct atropos_job *job, json_t *args)
{
    struct atropos_slot *s = job->slot;
    json_t *cv = json_object_get(args, "command");
    json_t *meta = json_pack("{s:b}", "sandboxed", 1);
    double timeout;
    if (cv && !json_is_string(cv)) {
        atropos_job_finish(
            job, 200,
            atropos_fail_meta(meta, "Failed to execute sandboxed command: 'command' must be a "
                                    "string"));
        return;
    }
    const char *command = cv ? json_string_value(cv) : "";
    if (cv && strlen(command) != json_string_length(cv)) {
        atropos_job_finish(
            job, 200,
            atropos_fail_meta(meta, "Failed to execute sandboxed command: embedded null byte"));
        return;
    }
    if (atropos_job_timeout(job, &timeout) < 0) {
        atropos_job_finish(
            job, 200, atropos_fail_meta(meta, "Invalid timeout: expected a number of seconds"));
        return;
    }
    json_decref(meta);
    if (!(timeout > 0)) { /* expired before it started, as asyncio.wait_for would have it */
        atropos_job_finish(job, 200,
                           timed_out_resp(job, json_pack("{s:i, s:b, s:b}", "exit_code", -1,
                                                         "timeout", 1, "sandboxed", 1)));
        return;
    }
    /* allow_network (default true, Python truthiness): the slot's sandbox gets egress mode open
     * (public destinations through the daemon's proxy, never the host or private networks) or
     * none, for this command. A slot runs one job at a time, so the mode is the command's. */
    json_t *an = json_object_get(args, "allow_network");
    job->network = !an || atropos_py_truthy(an);
    int r = network_set_open(s->sb, job->network); /* usually the same as the last command's */
    if (r < 0) {
        atropos_job_finish(
            job, 200,
            atropos_fail_meta(json_pack("{s:b}", "sandboxed", 1),
                              "Failed to execute sandboxed command: network policy: %s",
                              session_strerror(r)));
        return;
    }
    const char *argv[] = {"/bin/sh", "-c", command, NULL};
    char **env = exec_build_env(s->sb, NULL, "xterm", NULL);
    struct exec_spec spec = {.argv = argv,
                             .env = (const char *const *)env,
                             .cwd = "/workspace",
                             .timeout_s = cap_timeout(job, timeout),
                             .max_output = COLLECT_BYTES};
    job->since = atropos_boot_ticks();
    r = env ? exec_start(s->sb, &spec, bash_done, job, &job->ex) : -ENOMEM;
    util_free_strv(env);
    if (r < 0)
        atropos_job_finish(job, 200,
                           atropos_fail_meta(json_pack("{s:b}", "sandboxed", 1),
                                             "Failed to execute sandboxed command: %s",
                                             session_strerror(r)));
}

static void stateful_done(struct shell_result *res, void *arg)
{
    struct atropos_job *job = arg;
    json_t *resp;
    job->run = NULL;
    if (res->error) {
        resp = atropos_fail_meta(json_pack("{s:b}", "stateful", 1),
                                 "Failed to start stateful session: %s",
                                 res->error_msg ? res->error_msg : strerror(-res->error));
    } else if (res->timed_out) {
        /* The shell interrupted the command (SIGINT, then SIGKILL to its process group) and
         * stays usable: cwd, variables and background jobs survive the timeout. */
        resp = timed_out_resp(job, json_pack("{s:i, s:b, s:b, s:b}", "exit_code", -1, "timeout", 1,
                                             "sandboxed", 1, "stateful", 1));
    } else {
        buf_t text = BUF_INIT, out = BUF_INIT;
        char err[48] = "";
        atropos_py_decode(&text, res->output.data ? res->output.data : "", res->output.len,
                          SIZE_MAX, NULL);
        size_t a, b;
        atropos_py_strip(text.data, text.len, &a, &b);
        int cut;
        atropos_py_decode(&out, text.data + a, b - a, MAX_OUTPUT_CHARS, &cut);
        if (cut || res->truncated)
            buf_append_str(&out, TRUNC_MARK);
        if (res->exit_code != 0)
            snprintf(err, sizeof(err), "Exit code: %d", res->exit_code);
        resp = atropos_resp(res->exit_code == 0, out.data, out.len, err,
                            json_pack("{s:i, s:b, s:b, s:b}", "exit_code", res->exit_code,
                                      "sandboxed", 1, "network_isolated", 1, "stateful", 1));
        buf_free(&text);
        buf_free(&out);
    }
    atropos_job_finish(job, 200, resp);
}

void atropos_tool_stateful(struct atropos_job *job, json_t *args)
{
    struct atropos_slot *s = job->slot;
    json_t *cv = json_object_get(args, "command");
    double timeout;
    size_t a = 0, b = 0;
    if (json_is_string(cv))
        atropos_py_strip(json_string_value(cv), json_string_length(cv), &a, &b);
    if (a == b) {
        atropos_job_finish(job, 200, atropos_fail("Missing command"));
        return;
    }
    const char *cmd = json_string_value(cv);
    if (memchr(cmd + a, '\0', b - a)) {
        atropos_job_finish(job, 200,
                           atropos_fail("Failed to start stateful session: embedded null byte"));
        return;
    }
    if (atropos_job_timeout(job, &timeout) < 0) {
        atropos_job_finish(job, 200, atropos_fail("Invalid timeout: expected a number of seconds"));
        return;
    }
    if (!(timeout > 0)) {
        atropos_job_finish(
            job, 200,
            timed_out_resp(job, json_pack("{s:i, s:b, s:b, s:b}", "exit_code", -1, "timeout", 1,
                                          "sandboxed", 1, "stateful", 1)));
        return;
    }
    struct shell *sh = atropos_slot_shell(s);
    int r = 0;
    if (!sh) {
        char **env = exec_build_env(s->sb, NULL, "dumb", NULL);
        r = env ? shell_create(s->sb, (const char *const *)env, "/workspace", &sh) : -ENOMEM;
        util_free_strv(env);
        if (r == 0)
            snprintf(s->shell_id, sizeof(s->shell_id), "%s", shell_id(sh));
    }
    char *command = r == 0 ? strndup(cmd + a, b - a) : NULL;
    if (r == 0 && !command)
        r = -ENOMEM;
    /* The callback may run from inside shell_run (a shell that cannot be restarted fails at
     * once): job must not be touched after a successful call. */
    if (r == 0)
        r = shell_run(sh, command, cap_timeout(job, timeout), COLLECT_BYTES, stateful_done, job,
                      &job->run);
    free(command);
    if (r < 0)
        atropos_job_finish(job, 200,
                           atropos_fail_meta(json_pack("{s:b}", "stateful", 1),
                                             "Failed to start stateful session: %s",
                                             session_strerror(r)));
}
