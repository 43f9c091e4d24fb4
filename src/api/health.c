/*
 * health — liveness and what this daemon can do.
 */
#include <string.h>

#include "api/api.h"
#include "session/templates.h"
#include "session/network.h"

void api_healthz(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    (void)ctx;
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    http_respond_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

void api_info(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    /* Every namespace is required (there is no unsandboxed mode), so if the daemon runs, they
     * all work: sandbox creation fails loudly otherwise. */
    json_t *info =
        json_pack("{s:s, s:s, s:{s:b, s:b, s:b, s:b, s:b, s:b, s:b}, s:{s:s}, s:b, s:b, s:i, "
                  "s:{s:i, s:I, s:I, s:f}, s:{s:f, s:I, s:I, s:I}}",
                  "version", ctx->version, "node", ctx->reg->node, "namespaces", "user", 1, "pid",
                  1, "mount", 1, "uts", 1, "ipc", 1, "net", 1, "cgroup", 1, "cgroup", "mode",
                  registry_cgroup_mode(ctx->reg), "seccomp", 1, "no_new_privs", 1, "sandboxes",
                  (int)ctx->reg->count, "limits", "max_sandboxes", (int)ctx->limits->max_sandboxes,
                  "max_body_bytes", (json_int_t)ctx->limits->max_body_bytes, "max_output_bytes",
                  (json_int_t)ctx->limits->max_output_max, "max_timeout_s",
                  ctx->limits->exec_timeout_max_s, "defaults", "cpus", ctx->limits->defaults.cpus,
                  "memory_mib", (json_int_t)ctx->limits->defaults.memory_mib, "pids",
                  (json_int_t)ctx->limits->defaults.pids, "disk_mib",
                  (json_int_t)ctx->limits->defaults.disk_mib);
    json_t *limits = json_object_get(info, "limits");
    json_object_set_new(limits, "idle_timeout_s", json_real(ctx->limits->idle_timeout_s));
    json_object_set_new(limits, "max_ttl_s", json_real(ctx->limits->max_ttl_s));
    const struct sandbox_resources *m = &ctx->limits->maxima;
    json_object_set_new(info, "maxima",
                        json_pack("{s:f, s:I, s:I, s:I}", "cpus", m->cpus, "memory_mib",
                                  (json_int_t)m->memory_mib, "pids", (json_int_t)m->pids,
                                  "disk_mib", (json_int_t)m->disk_mib));
    /* How the limits are enforced, for operators: one ext4 image per sandbox (thin-provisioned:
     * see session/sandbox.h, registry_check_disk()), an egress proxy for the network modes that
     * go out, the audit log. */
    struct registry_disk_usage du = {-1, -1, -1};
    registry_disk_usage(ctx->reg, &du);
    json_object_set_new(
        info, "disk",
        json_pack("{s:s, s:f, s:I, s:I, s:I, s:I}", "backend", "ext4-image", "overcommit",
                  ctx->reg->disk_overcommit, "reserve_bytes", (json_int_t)ctx->reg->disk_reserve,
                  "promised_bytes", (json_int_t)du.promised_bytes, "used_bytes",
                  (json_int_t)du.used_bytes, "free_bytes", (json_int_t)du.free_bytes));
    json_object_set_new(info, "network",
                        json_pack("{s:[sss], s:s, s:i}", "modes", "none", "allowlist", "open",
                                  "proxy", "127.0.0.1", "proxy_port", network_proxy_port()));
    /* The image store: templates and what their layers and blobs occupy on the host (shared by
     * every sandbox of them). */
    size_t n_templates = 0;
    for (const struct template *t = ctx->templates->head; t; t = t->next)
        n_templates++;
    json_object_set_new(info, "images",
                        json_pack("{s:I, s:I}", "templates", (json_int_t)n_templates, "store_bytes",
                                  (json_int_t)templates_store_bytes(ctx->templates)));
    json_object_set_new(info, "audit", json_true());
    http_respond_json(req, 200, info);
}
