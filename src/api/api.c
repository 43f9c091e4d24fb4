/*
 * api — routing and the helpers every resource shares.
 */
#include "api/api.h"

#include <errno.h>
#include <string.h>

#include "core/json.h"
#include "net/dispatch.h"
#include "session/sessions.h"

static const struct route routes[] = {
    {"GET", "/healthz", api_healthz},
    {"GET", "/v1/info", api_info},
    {"POST", "/v1/sandboxes", api_sandbox_create},
    {"GET", "/v1/sandboxes", api_sandbox_list},
    {"GET", "/v1/sandboxes/{id}", api_sandbox_get},
    {"DELETE", "/v1/sandboxes/{id}", api_sandbox_delete},
    {"PATCH", "/v1/sandboxes/{id}", api_sandbox_patch},
    {"POST", "/v1/sandboxes/{id}/heartbeat", api_sandbox_heartbeat},
    {"POST", "/v1/sandboxes/{id}/pause", api_sandbox_pause},
    {"GET", "/v1/sandboxes/{id}/files", api_files_get},
    {"PUT", "/v1/sandboxes/{id}/files", api_files_put},
    {"DELETE", "/v1/sandboxes/{id}/files", api_files_delete},
    {"GET", "/v1/sandboxes/{id}/files/list", api_files_list},
    {"GET", "/v1/sandboxes/{id}/archive", api_archive_get},
    {"PUT", "/v1/sandboxes/{id}/archive", api_archive_put},
    {"POST", "/v1/sandboxes/{id}/resume", api_sandbox_resume},
    {"POST", "/v1/sandboxes/{id}/stop", api_sandbox_stop},
    {"POST", "/v1/sandboxes/{id}/kill", api_sandbox_kill},
    {"POST", "/v1/sandboxes/{id}/start", api_sandbox_start},
    {"POST", "/v1/sandboxes/{id}/snapshot", api_sandbox_snapshot},
    {"POST", "/v1/sandboxes/{id}/fork", api_sandbox_fork},
    {"GET", "/v1/sandboxes/{id}/logs", api_sandbox_logs},
    {"POST", "/v1/sandboxes/{id}/exec", api_exec},
    {"POST", "/v1/sandboxes/{id}/commands", api_command_start},
    {"GET", "/v1/sandboxes/{id}/commands", api_command_list},
    {"GET", "/v1/sandboxes/{id}/commands/{cid}", api_command_get},
    {"POST", "/v1/sandboxes/{id}/commands/{cid}/kill", api_command_kill},
    {"GET", "/v1/sandboxes/{id}/commands/{cid}/stream", api_command_stream},
    {"GET", "/v1/sandboxes/{id}/exec/ws", api_exec_ws},
    {"POST", "/v1/batch", api_batch},
    {"POST", "/v1/sandboxes/{id}/shells", api_shell_create},
    {"GET", "/v1/sandboxes/{id}/shells", api_shell_list},
    {"POST", "/v1/sandboxes/{id}/shells/{sid}/run", api_shell_run},
    {"DELETE", "/v1/sandboxes/{id}/shells/{sid}", api_shell_delete},
    {"POST", "/v1/sandboxes/{id}/terminals", api_terminal_create},
    {"GET", "/v1/sandboxes/{id}/terminals", api_terminal_list},
    {"GET", "/v1/sandboxes/{id}/terminals/{tid}", api_terminal_get},
    {"DELETE", "/v1/sandboxes/{id}/terminals/{tid}", api_terminal_delete},
    {"POST", "/v1/sandboxes/{id}/terminals/{tid}/keys", api_terminal_keys},
    {"GET", "/v1/sandboxes/{id}/terminals/{tid}/screen", api_terminal_screen},
    {"POST", "/v1/sandboxes/{id}/terminals/{tid}/resize", api_terminal_resize},
    {"GET", "/v1/sandboxes/{id}/terminals/{tid}/recording", api_terminal_recording},
    {"GET", "/v1/sandboxes/{id}/terminals/{tid}/attach", api_terminal_attach},
    {"GET", "/v1/audit", api_audit_get},
    {"GET", "/v1/sessions", api_session_list},
    {"GET", "/v1/sessions/{id}", api_session_get},
    {"DELETE", "/v1/sessions/{id}", api_session_delete},
    {"GET", "/v1/pools", api_pool_list},
    {"GET", "/v1/pools/{name}", api_pool_get},
    {"PUT", "/v1/pools/{name}", api_pool_put},
    {"DELETE", "/v1/pools/{name}", api_pool_delete},
    {"POST", "/v1/templates", api_template_create},
    {"GET", "/v1/templates", api_template_list},
    {"POST", "/v1/templates/build", api_template_build},
    {"PUT", "/v1/templates/{name}/archive", api_template_import},
    {"GET", "/v1/templates/{name+}/export", api_template_export},
    {"GET", "/v1/templates/{name+}", api_template_get},
    {"DELETE", "/v1/templates/{name+}", api_template_delete},
    {"POST", "/v1/volumes", api_volume_create},
    {"GET", "/v1/volumes", api_volume_list},
    {"GET", "/v1/volumes/{name}", api_volume_get},
    {"DELETE", "/v1/volumes/{name}", api_volume_delete},
};

/* A request on recycled sandboxes, waiting for their restore. */
struct restore_call {
    struct api_ctx *ctx;
    http_req_t *req;
    api_handler_fn handler;
    struct route_params params;
    unsigned pending;     /* restores not finished yet */
    int batch;            /* a batch: its items answer for the sandboxes that failed */
    enum session_err err; /* the first failure */
    char msg[256];
};

static void on_restored(struct sandbox *sb, enum session_err e, const char *msg, void *arg)
{
    struct restore_call *call = arg;
    const char *code = NULL;
    (void)sb;
    if (e != SESSION_OK && call->err == SESSION_OK) {
        call->err = e;
        snprintf(call->msg, sizeof(call->msg), "%s", msg ? msg : "");
    }
    if (--call->pending > 0)
        return;
    if (http_req_gone(call->req))
        http_respond(call->req, 499, "text/plain", "", 0, NULL);
    else if (call->err == SESSION_OK || call->batch)
        call->handler(call->ctx, call->req, &call->params); /* finds them again, running */
    else if (call->err == SESSION_ERR_DELETED)
        http_respond_error(call->req, 404, "not_found", "%s", call->msg);
    else
        http_respond_error(call->req, api_session_status(call->err, &code), code, "restoring: %s",
                           call->msg);
    free(call);
}

/* Whether the handler of a route on one sandbox needs it running: all do but those that see it
 * as it is, and start, which restores a recycled sandbox itself. */
static int needs_running(api_handler_fn h)
{
    return h != api_sandbox_get && h != api_sandbox_delete && h != api_sandbox_heartbeat &&
           h != api_sandbox_stop && h != api_sandbox_kill && h != api_sandbox_start;
}

/* Restores `sb` for the call if it is recycled; 1 when it does. */
static int restore_one(struct restore_call *call, struct sandbox *sb)
{
    char msg[512];
    if (!sb || !sb->recycled)
        return 0;
    sandbox_touch(sb);
    call->pending++;
    enum session_err e = sandbox_ensure_running(sb, on_restored, call, msg, sizeof(msg));
    if (e != SESSION_OK)
        on_restored(sb, e, msg, call); /* the call's own hold keeps it from answering yet */
    return 1;
}

/* The one place where recycled sandboxes are restored for a call (session/sessions.h): the
 * sandbox of a route on one sandbox, the sandboxes a batch names. The handler runs once they
 * are. Returns 1 when the call waits (or was answered), 0 to go on. */
static int restore_first(struct api_ctx *ctx, http_req_t *req, api_handler_fn handler,
                         const struct route_params *params)
{
    const char *id = route_param(params, "id");
    int batch = handler == api_batch;
    if (!batch &&
        (!id || strncmp(http_req_path(req), "/v1/sandboxes/", 14) != 0 || !needs_running(handler)))
        return 0;
    struct restore_call *call = calloc(1, sizeof(*call));
    if (!call) {
        http_respond_error(req, 500, "internal", "out of memory");
        return 1;
    }
    *call = (struct restore_call){ctx, req, handler, *params, 1, batch, SESSION_OK, ""};
    int waits = 0, any = 0;
    for (struct sandbox *sb = ctx->reg->head; sb && batch && !any; sb = sb->next)
        any = sb->recycled;
    if (batch && any) { /* the body is parsed again only when some sandbox may need it */
        size_t len, i;
        const char *text = http_req_body(req, &len);
        json_t *body = json_loadb(text, len, 0, NULL), *item;
        json_array_foreach(body, i, item)
        {
            const char *name = json_string_value(json_object_get(item, "sandbox"));
            waits |= name && restore_one(call, sandbox_find(ctx->reg, name));
        }
        json_decref(body);
    } else if (!batch) {
        waits = restore_one(call, sandbox_find(ctx->reg, id));
    }
    if (!waits) {
        free(call);
        return 0;
    }
    on_restored(NULL, SESSION_OK, NULL, call); /* the hold taken above */
    return 1;
}

void api_handle(http_req_t *req, void *arg)
{
    struct api_ctx *ctx = arg;
    struct route_params params;
    int i = dispatch_match(routes, sizeof(routes) / sizeof(routes[0]), req, &params);
    if (i == -EPERM)
        return;
    if (i < 0) {
        http_respond_error(req, 404, "not_found", "no such resource: %s", http_req_path(req));
        return;
    }
    if (ctx->stopping) {
        http_respond_error(req, 503, "unavailable", "the daemon is shutting down");
        return;
    }
    api_handler_fn handler = (api_handler_fn)routes[i].handler;
    if (!restore_first(ctx, req, handler, &params))
        handler(ctx, req, &params);
}

json_t *api_body_object(http_req_t *req)
{
    char err[256];
    size_t len;
    const char *body = http_req_body(req, &len);
    json_t *obj = json_parse_object(body, len, err, sizeof(err));
    if (!obj)
        http_respond_error(req, 400, "bad_request", "%s", err);
    return obj;
}

int api_check_query(http_req_t *req, const char *const *allowed)
{
    for (size_t i = 0; i < http_req_query_count(req); i++) {
        const char *name = http_req_query_name(req, i);
        int ok = 0;
        for (size_t k = 0; allowed && allowed[k]; k++)
            if (strcmp(allowed[k], name) == 0)
                ok = 1;
        if (!ok) {
            http_respond_error(req, 400, "bad_request", "unknown query parameter '%s'", name);
            return -EINVAL;
        }
    }
    return 0;
}

struct sandbox *api_find_sandbox(struct api_ctx *ctx, http_req_t *req,
                                 const struct route_params *params)
{
    const char *id = route_param(params, "id");
    struct sandbox *sb = id ? sandbox_find(ctx->reg, id) : NULL;
    if (!sb)
        http_respond_error(req, 404, "not_found", "sandbox '%s' not found", id ? id : "");
    else
        sandbox_touch(sb); /* every API call on a sandbox postpones its idle stop */
    return sb;
}

struct sandbox *api_sandbox_of(struct api_ctx *ctx, http_req_t *req,
                               const struct route_params *params)
{
    return api_check_query(req, NULL) < 0 ? NULL : api_find_sandbox(ctx, req, params);
}

int api_wants_stream(http_req_t *req, void *ctx)
{
    const char *path = http_req_path(req);
    size_t n = strlen(path);
    (void)ctx;
    if (!strcmp(http_req_method(req), "POST"))
        return !strcmp(path, "/v1/templates/build");
    if (strcmp(http_req_method(req), "PUT") != 0)
        return 0;
    if (!strncmp(path, "/v1/templates/", 14))
        return n > 8 && strcmp(path + n - 8, "/archive") == 0;
    if (strncmp(path, "/v1/sandboxes/", 14) != 0)
        return 0;
    return (n > 6 && strcmp(path + n - 6, "/files") == 0) ||
           (n > 8 && strcmp(path + n - 8, "/archive") == 0);
}
