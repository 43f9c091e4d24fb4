/*
 * pools — PUT, GET and DELETE /v1/pools/{name}, GET /v1/pools: warm pools (session/pool.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/json.h"
#include "session/network.h"
#include "session/pool.h"

#define ERRLEN 256

static json_t *pool_json(const struct pool_info *i)
{
    return json_pack("{s:s, s:s?, s:s?, s:i, s:i, s:i, s:I, s:I, s:{s:f, s:I, s:I, s:I}, s:O, "
                     "s:s?}",
                     "name", i->name, "template", i->template_name, "image", i->image, "size",
                     (int)i->size, "ready", (int)i->ready, "starting", (int)i->starting, "claimed",
                     (json_int_t)i->claimed, "misses", (json_int_t)i->misses, "resources", "cpus",
                     i->res.cpus, "memory_mib", (json_int_t)i->res.memory_mib, "pids",
                     (json_int_t)i->res.pids, "disk_mib", (json_int_t)i->res.disk_mib, "network",
                     i->network, "last_error", i->last_error);
}

static void add_pool(const struct pool_info *i, void *arg)
{
    json_array_append_new(arg, pool_json(i));
}

void api_pool_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    json_t *arr = json_array();
    pools_foreach(ctx->pools, add_pool, arr);
    http_respond_json(req, 200, json_pack("{s:o}", "pools", arr));
}

void api_pool_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct pool_info i;
    const char *name = route_param(p, "name");
    if (api_check_query(req, NULL) < 0)
        return;
    if (pools_get(ctx->pools, name, &i) < 0)
        http_respond_error(req, 404, "not_found", "pool '%s' not found", name);
    else
        http_respond_json(req, 200, pool_json(&i));
}

void api_pool_put(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"template", "image", "size", "resources", "network", NULL};
    char err[ERRLEN];
    const char *name = route_param(p, "name");
    struct pool_spec spec = {.template_name = "host"};
    struct egress_policy *policy = NULL;
    json_t *res = NULL, *net = NULL;
    long long size = -1;
    int status = 400;
    if (api_check_query(req, NULL) < 0)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (!api_valid_name(name)) {
        snprintf(err, ERRLEN, "invalid pool name: " API_NAME_RULE);
        goto bad;
    }
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_string(body, "template", "template", &spec.template_name, err, ERRLEN) ||
        json_opt_string(body, "image", "image", &spec.image, err, ERRLEN) ||
        json_opt_int(body, "size", "size", &size, err, ERRLEN) ||
        json_opt_object(body, "resources", "resources", &res, err, ERRLEN) ||
        json_opt_object(body, "network", "network", &net, err, ERRLEN))
        goto bad;
    if (spec.image && json_object_get(body, "template")) {
        snprintf(err, ERRLEN, "give 'image' or 'template', not both");
        goto bad;
    }
    if (spec.image)
        spec.template_name = NULL;
    if (size < 0) {
        snprintf(err, ERRLEN, "'size' is required: the number of sandboxes kept ready (>= 0)");
        goto bad;
    }
    if (size > ctx->limits->max_sandboxes) {
        snprintf(err, ERRLEN, "'size' %lld is above the daemon maximum (--max-sandboxes %u)", size,
                 ctx->limits->max_sandboxes);
        status = 422;
        goto bad;
    }
    spec.size = (unsigned)size;
    if ((status = api_parse_resources(ctx, res, &ctx->limits->defaults, &spec.res, err)))
        goto bad;
    status = 400;
    if (network_parse(net, &policy, err, ERRLEN) < 0)
        goto bad;
    spec.network = network_to_json(policy); /* normalised: compared with creations' */
    network_free(policy);
    int r = pools_set(ctx->pools, name, &spec);
    json_decref(spec.network);
    json_decref(body);
    struct pool_info i;
    api_audit(ctx, req, "pool.set", NULL, r < 0 ? 500 : 200,
              json_pack("{s:s, s:i}", "pool", name, "size", (int)size));
    if (r < 0 || pools_get(ctx->pools, name, &i) < 0)
        http_respond_error(req, 500, "internal", "cannot set pool '%s': %s", name,
                           strerror(r < 0 ? -r : ENOENT));
    else
        http_respond_json(req, 200, pool_json(&i));
    return;
bad:
    json_decref(body);
    http_respond_error(req, status, api_status_code(status), "%s", err);
}

void api_pool_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    const char *name = route_param(p, "name");
    if (api_check_query(req, NULL) < 0)
        return;
    int r = pools_delete(ctx->pools, name);
    api_audit(ctx, req, "pool.delete", NULL, r < 0 ? 404 : 204, json_pack("{s:s}", "pool", name));
    if (r < 0)
        http_respond_error(req, 404, "not_found", "pool '%s' not found", name);
    else
        http_respond(req, 204, NULL, NULL, 0, NULL);
}
