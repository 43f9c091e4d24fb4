/*
 * shells — persistent shells: create, list, run, delete.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/util.h"
#include "session/exec.h"
#include "core/json.h"
#include "session/shell.h"

#define ERRLEN 256

void api_shell_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"env", "cwd", NULL};
    char err[ERRLEN];
    const char *cwd;
    json_t *env = NULL;
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    cwd = sandbox_default_cwd(sb);
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_string(body, "cwd", "cwd", &cwd, err, ERRLEN) ||
        json_opt_string_map(body, "env", "env", &env, err, ERRLEN) ||
        (env && api_valid_env(env, err, ERRLEN) < 0) ||
        (cwd[0] != '/' && snprintf(err, ERRLEN, "'cwd' must be an absolute path"))) {
        api_audit(ctx, req, "shell.create", sb, 400, NULL);
        http_respond_error(req, 400, "bad_request", "%s", err);
        json_decref(body);
        return;
    }
    char **envv = exec_build_env(sb, env, "dumb");
    struct shell *sh;
    int r = envv ? shell_create(sb, (const char *const *)envv, cwd, &sh) : -ENOMEM;
    util_free_strv(envv);
    api_audit(ctx, req, "shell.create", sb, r < 0 ? api_errno_status(r) : 201,
              json_pack("{s:s, s:s*}", "cwd", cwd, "shell_id", r < 0 ? NULL : shell_id(sh)));
    json_decref(body);
    if (r < 0) {
        http_respond_error(req, api_errno_status(r), api_errno_code(r), "%s", session_strerror(r));
        return;
    }
    http_respond_json(req, 201, api_shell_json(sh));
}

void api_shell_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *arr = json_array();
    for (struct shell *sh = sb->shells; sh; sh = shell_next(sh))
        json_array_append_new(arr, api_shell_json(sh));
    http_respond_json(req, 200, json_pack("{s:o}", "shells", arr));
}

static struct shell *find_shell(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_find_sandbox(ctx, req, p);
    if (!sb)
        return NULL;
    const char *sid = route_param(p, "sid");
    struct shell *sh = sid ? shell_find(sb, sid) : NULL;
    if (!sh)
        http_respond_error(req, 404, "not_found", "shell '%s' not found in sandbox '%s'",
                           sid ? sid : "", sb->id);
    return sh;
}

struct run_call {
    http_req_t *req;
    struct shell_run *run;
};

static void on_run_done(struct shell_result *res, void *arg)
{
    struct run_call *call = arg;
    http_req_t *req = call->req;
    free(call);
    http_req_set_abort_cb(req, NULL, NULL);
    if (res->error) {
        int conflict = res->error == -ESRCH || res->error == -ECANCELED;
        http_respond_error(req, conflict ? 409 : api_errno_status(res->error),
                           conflict ? "conflict" : api_errno_code(res->error), "%s",
                           res->error_msg ? res->error_msg : strerror(-res->error));
        return;
    }
    json_t *o =
        json_pack("{s:i, s:b, s:b, s:b, s:b, s:f}", "exit_code", res->exit_code, "timed_out",
                  res->timed_out, "truncated", res->truncated, "shell_exited", res->shell_exited,
                  "shell_restarted", res->shell_restarted, "duration_ms", res->duration_ms);
    api_put_output(o, "output", &res->output, res->truncated);
    http_respond_json(req, 200, o);
}

static void on_client_gone(http_req_t *req, void *arg)
{
    struct run_call *call = arg;
    (void)req;
    shell_run_cancel(call->run);
}

/* The audit fields of a run: the shell, the command (as an exec's shell), the timeout. */
static json_t *audit_run(const struct shell *sh, json_t *body, double timeout)
{
    json_t *cmd = json_object_get(body, "command");
    json_t *desc = json_is_string(cmd) ? json_pack("{s:O}", "shell", cmd) : json_object();
    json_t *o = api_audit_command(desc, NULL);
    json_decref(desc);
    if (json_object_get(o, "shell")) { /* it is not a shell of its own: call it the command */
        json_object_set(o, "command", json_object_get(o, "shell"));
        json_object_del(o, "shell");
    }
    json_object_set_new(o, "shell_id", json_string(shell_id(sh)));
    if (timeout > 0)
        json_object_set_new(o, "timeout_s", json_real(timeout));
    return o;
}

void api_shell_run(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"command", "timeout_s", "max_output_bytes", NULL};
    char err[ERRLEN];
    const char *command = NULL;
    double timeout = ctx->limits->exec_timeout_default_s;
    long long max_out = (long long)ctx->limits->max_output_default;
    int status = 400;
    if (api_check_query(req, NULL) < 0)
        return;
    struct shell *sh = find_shell(ctx, req, p);
    if (!sh)
        return;
    struct sandbox *sb = sandbox_find(ctx->reg, route_param(p, "id"));
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_string(body, "command", "command", &command, err, ERRLEN) ||
        json_opt_number(body, "timeout_s", "timeout_s", &timeout, err, ERRLEN) ||
        json_opt_int(body, "max_output_bytes", "max_output_bytes", &max_out, err, ERRLEN))
        goto bad;
    if (!command) {
        snprintf(err, ERRLEN, "'command' (string) is required");
        goto bad;
    }
    if (strlen(command) != json_string_length(json_object_get(body, "command"))) {
        snprintf(err, ERRLEN, "'command' must not contain NUL bytes");
        goto bad;
    }
    if (!(timeout > 0) || max_out < 0) {
        snprintf(err, ERRLEN, "'timeout_s' must be > 0 and 'max_output_bytes' >= 0");
        goto bad;
    }
    if (timeout > ctx->limits->exec_timeout_max_s ||
        (size_t)max_out > ctx->limits->max_output_max) {
        status = 422;
        snprintf(err, ERRLEN, "above the daemon maxima (timeout_s %g, max_output_bytes %zu)",
                 ctx->limits->exec_timeout_max_s, ctx->limits->max_output_max);
        goto bad;
    }
    struct run_call *call = calloc(1, sizeof(*call));
    if (!call) {
        status = 500;
        snprintf(err, ERRLEN, "out of memory");
        goto bad;
    }
    call->req = req;
    /* Recorded first: the run may complete (and answer) at once. */
    api_audit(ctx, req, "shell.run", sb, 200, audit_run(sh, body, timeout));
    /* Set first: the run may complete at once (then on_run_done clears it and answers). */
    http_req_set_abort_cb(req, on_client_gone, call);
    int r = shell_run(sh, command, timeout, (size_t)max_out, on_run_done, call, &call->run);
    if (r < 0) {
        http_req_set_abort_cb(req, NULL, NULL);
        free(call);
        status = 500;
        snprintf(err, ERRLEN, "%s", strerror(-r));
        goto answer; /* ENOMEM: already recorded */
    }
    json_decref(body);
    return;
bad:
    api_audit(ctx, req, "shell.run", sb, status, audit_run(sh, body, -1));
answer:
    http_respond_error(req, status, api_status_code(status), "%s", err);
    json_decref(body);
}

void api_shell_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    if (api_check_query(req, NULL) < 0)
        return;
    struct shell *sh = find_shell(ctx, req, p);
    if (!sh)
        return;
    shell_destroy(sh);
    http_respond(req, 204, NULL, NULL, 0, NULL);
}
