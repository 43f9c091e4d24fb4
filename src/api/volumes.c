/*
 * volumes — create, list, get and delete named volumes (session/volume.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/json.h"
#include "core/util.h"
#include "session/volume.h"

#define ERRLEN 256

json_t *api_volume_json(struct registry *reg, const struct volume *vol)
{
    char created[32];
    size_t n = volume_attachments(reg, vol->name, NULL, 0);
    struct volume_attachment *at = n ? calloc(n, sizeof(*at)) : NULL;
    json_t *attached = json_array();
    if (at)
        volume_attachments(reg, vol->name, at, n);
    for (size_t i = 0; attached && at && i < n; i++)
        json_array_append_new(attached, json_pack("{s:s, s:s, s:s, s:b}", "sandbox", at[i].sb->id,
                                                  "sandbox_name", at[i].sb->name, "path",
                                                  at[i].path, "read_only", at[i].read_only));
    free(at);
    long long used = volume_used_bytes(reg, vol);
    util_format_time(vol->created_at, created, sizeof(created));
    return json_pack("{s:s, s:I, s:o, s:o, s:s}", "name", vol->name, "size_mib",
                     (json_int_t)vol->size_mib, "used_bytes",
                     used >= 0 ? json_integer(used) : json_null(), "attached", attached,
                     "created_at", created);
}

struct volume_call {
    struct api_ctx *ctx;
    http_req_t *req;
};

static void on_volume_created(struct volume *vol, enum session_err e, const char *msg, void *arg)
{
    struct volume_call *call = arg;
    struct api_ctx *ctx = call->ctx;
    http_req_t *req = call->req;
    free(call);
    const char *code = "volume_setup_failed";
    int status = vol ? 201 : api_session_status(e, &code);
    if (e == SESSION_ERR_SETUP)
        code = "volume_setup_failed";
    api_audit(ctx, req, "volume.create", NULL, status,
              json_pack("{s:s?}", "name", vol ? vol->name : NULL));
    if (!vol)
        http_respond_error(req, status, code, "%s", msg);
    else
        http_respond_json(req, 201, api_volume_json(ctx->reg, vol));
}

void api_volume_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"name", "size_mib", NULL};
    char err[ERRLEN], msg[512];
    const char *name = NULL;
    long long mib = (long long)VOLUME_DEFAULT_MIB;
    int status = 400;
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_string(body, "name", "name", &name, err, ERRLEN) ||
        json_opt_int(body, "size_mib", "size_mib", &mib, err, ERRLEN))
        goto bad;
    if (!name || !api_valid_name(name)) {
        snprintf(err, ERRLEN, "'name' is required: " API_NAME_RULE);
        goto bad;
    }
    /* <name>.img is the image of volume <name>, beside its mount point <name>. */
    if (strlen(name) >= 4 && !strcmp(name + strlen(name) - 4, ".img")) {
        snprintf(err, ERRLEN, "a volume name cannot end in '.img'");
        goto bad;
    }
    if (mib < 1) {
        snprintf(err, ERRLEN, "'size_mib' must be at least 1");
        goto bad;
    }
    if ((unsigned long long)mib > ctx->limits->maxima.disk_mib) {
        status = 422;
        snprintf(err, ERRLEN, "'size_mib' %lld is above the daemon maximum disk_mib %llu", mib,
                 ctx->limits->maxima.disk_mib);
        goto bad;
    }
    struct volume_call *call = malloc(sizeof(*call));
    if (!call) {
        json_decref(body);
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    *call = (struct volume_call){ctx, req};
    enum session_err e = volume_create(ctx->reg, name, (unsigned long long)mib, on_volume_created,
                                       call, msg, sizeof(msg));
    json_decref(body);
    if (e)
        on_volume_created(NULL, e, msg, call);
    return;
bad:
    api_audit(ctx, req, "volume.create", NULL, status, json_pack("{s:s?}", "name", name));
    json_decref(body);
    http_respond_error(req, status, status == 422 ? "unprocessable" : "bad_request", "%s", err);
}

void api_volume_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    json_t *arr = json_array();
    for (struct volume *v = ctx->reg->volumes; v; v = v->next)
        if (v->ready && !v->deleting)
            json_array_append_new(arr, api_volume_json(ctx->reg, v));
    http_respond_json(req, 200, json_pack("{s:o}", "volumes", arr));
}

static struct volume *find_volume(struct api_ctx *ctx, http_req_t *req,
                                  const struct route_params *p)
{
    if (api_check_query(req, NULL) < 0)
        return NULL;
    const char *name = route_param(p, "name");
    struct volume *vol = name ? volume_find(ctx->reg, name) : NULL;
    if (!vol)
        http_respond_error(req, 404, "not_found", "volume '%s' not found", name ? name : "");
    return vol;
}

void api_volume_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct volume *vol = find_volume(ctx, req, p);
    if (vol)
        http_respond_json(req, 200, api_volume_json(ctx->reg, vol));
}

static void on_volume_deleted(void *arg)
{
    http_req_t *req = arg;
    http_respond(req, 204, NULL, NULL, 0, NULL);
}

void api_volume_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct volume *vol = find_volume(ctx, req, p);
    if (!vol)
        return;
    struct volume_attachment at;
    char name[SANDBOX_NAME_MAX];
    snprintf(name, sizeof(name), "%s", vol->name);
    size_t n = volume_attachments(ctx->reg, name, &at, 1);
    if (n > 0) {
        api_audit(ctx, req, "volume.delete", NULL, 409, json_pack("{s:s}", "name", name));
        http_respond_error(req, 409, "volume_in_use",
                           "volume '%s' is attached to %zu sandbox%s (%s at %s): delete %s first",
                           name, n, n == 1 ? "" : "es", at.sb->name, at.path,
                           n == 1 ? "it" : "them");
        return;
    }
    int r = volume_delete(ctx->reg, name, on_volume_deleted, req);
    api_audit(ctx, req, "volume.delete", NULL, r == 0 ? 204 : 500,
              json_pack("{s:s}", "name", name));
    if (r < 0)
        http_respond_error(req, api_errno_status(r), api_errno_code(r), "%s", session_strerror(r));
}
