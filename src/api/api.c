/*
 * api — routing and the helpers every resource shares.
 */
#include "api/api.h"

#include <errno.h>
#include <string.h>

#include "api/compat_atropos.h"
#include "core/json.h"

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
};

/* The atropos slot protocol (api/compat_atropos.h), routed only when the daemon has slots. */
static const struct route atropos_routes[] = {
    {"POST", "/execute", atropos_execute},
    {"POST", "/batch", atropos_batch},
    {"GET", "/health", atropos_health},
    {"POST", "/reset", atropos_reset},
    {"GET", "/slots", atropos_slots},
    {"POST", "/artifacts/read", atropos_artifacts_read},
    {"POST", "/artifacts/list", atropos_artifacts_list},
    {"POST", "/artifacts/archive", atropos_artifacts_archive},
};

void api_handle(http_req_t *req, void *ctx)
{
    struct server *srv = ctx;
    struct route_params params;
    char allow[128], hdr[160];
    const char *method = http_req_method(req);
    const struct route *table = routes;
    if (strcmp(method, "HEAD") == 0)
        method = "GET";
    int i = router_match(routes, sizeof(routes) / sizeof(routes[0]), method, http_req_path(req),
                         &params, allow, sizeof(allow));
    if ((i == -ENOENT || i == -EMSGSIZE) && srv->atropos) {
        table = atropos_routes;
        i = router_match(atropos_routes, sizeof(atropos_routes) / sizeof(atropos_routes[0]), method,
                         http_req_path(req), &params, allow, sizeof(allow));
    }
    if (i == -EPERM) {
        snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", allow);
        json_t *e = json_pack("{s:{s:s, s:s}}", "error", "code", "method_not_allowed", "message",
                              "method not allowed for this resource");
        char *body = json_dumps(e, JSON_COMPACT);
        json_decref(e);
        http_respond(req, 405, "application/json", body, body ? strlen(body) : 0, hdr);
        free(body);
        return;
    }
    if (i < 0) {
        http_respond_error(req, 404, "not_found", "no such resource: %s", http_req_path(req));
        return;
    }
    if (srv->stopping) {
        http_respond_error(req, 503, "unavailable", "the daemon is shutting down");
        return;
    }
    ((api_handler_fn)table[i].handler)(srv, req, &params);
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

struct sandbox *api_find_sandbox(struct server *srv, http_req_t *req,
                                 const struct route_params *params)
{
    const char *id = route_param(params, "id");
    struct sandbox *sb = id ? sandbox_find(&srv->reg, id) : NULL;
    if (!sb)
        http_respond_error(req, 404, "not_found", "sandbox '%s' not found", id ? id : "");
    return sb;
}

struct sandbox *api_sandbox_of(struct server *srv, http_req_t *req,
                               const struct route_params *params)
{
    return api_check_query(req, NULL) < 0 ? NULL : api_find_sandbox(srv, req, params);
}
