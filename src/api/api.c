/*
 * api — routing and the helpers every resource shares.
 */
#include "api/api.h"

#include <errno.h>
#include <string.h>

#include "core/json.h"
#include "net/dispatch.h"

static const struct route routes[] = {
    {"GET", "/healthz", api_healthz},
    {"GET", "/v1/info", api_info},
    {"POST", "/v1/sandboxes", api_sandbox_create},
    {"GET", "/v1/sandboxes", api_sandbox_list},
    {"GET", "/v1/sandboxes/{id}", api_sandbox_get},
    {"DELETE", "/v1/sandboxes/{id}", api_sandbox_delete},
    {"PATCH", "/v1/sandboxes/{id}", api_sandbox_patch},
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
    ((api_handler_fn)routes[i].handler)(ctx, req, &params);
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
