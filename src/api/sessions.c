/*
 * sessions — GET /v1/sessions, GET and DELETE /v1/sessions/{id}: the sandboxes bound to each
 * session id (session/sessions.h).
 */
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/util.h"

/* {session_id: {"sandboxes": [...], "last_active_s": latest}} of the registry's sandboxes, or of
 * those of session `only`. */
static json_t *sessions_map(struct registry *reg, const char *only)
{
    json_t *m = json_object();
    for (struct sandbox *sb = reg->head; m && sb; sb = sb->next) {
        if (!sb->session_id[0] || sb->state == SB_DELETING ||
            (only && strcmp(only, sb->session_id)))
            continue;
        json_t *s = json_object_get(m, sb->session_id);
        if (!s) {
            s = json_pack("{s:[], s:f}", "sandboxes", "last_active_s", 0.0);
            json_object_set_new(m, sb->session_id, s);
        }
        json_array_append_new(json_object_get(s, "sandboxes"),
                              json_pack("{s:s, s:s, s:s}", "id", sb->id, "name", sb->name, "state",
                                        sandbox_state_str(sb)));
        if (sb->last_active_at > json_real_value(json_object_get(s, "last_active_s")))
            json_object_set_new(s, "last_active_s", json_real(sb->last_active_at));
    }
    return m;
}

static json_t *session_json(const char *id, json_t *s)
{
    char active[32];
    util_format_time(json_real_value(json_object_get(s, "last_active_s")), active, sizeof(active));
    return json_pack("{s:s, s:O, s:s}", "session_id", id, "sandboxes",
                     json_object_get(s, "sandboxes"), "last_active_at", active);
}

void api_session_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    const char *id;
    json_t *s;
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    json_t *m = sessions_map(ctx->reg, NULL), *arr = json_array();
    json_object_foreach(m, id, s)
    {
        json_array_append_new(arr, session_json(id, s));
    }
    json_decref(m);
    http_respond_json(req, 200, json_pack("{s:o}", "sessions", arr));
}

/* The session of the {id} parameter as a map of one, or NULL after answering 404. */
static json_t *find_session(struct api_ctx *ctx, http_req_t *req, const struct route_params *p,
                            const char **id)
{
    if (api_check_query(req, NULL) < 0)
        return NULL;
    *id = route_param(p, "id");
    json_t *m = sessions_map(ctx->reg, *id);
    if (!json_object_size(m)) {
        json_decref(m);
        http_respond_error(req, 404, "not_found", "no sandbox belongs to session '%s'", *id);
        return NULL;
    }
    return m;
}

void api_session_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    const char *id;
    json_t *m = find_session(ctx, req, p, &id);
    if (!m)
        return;
    json_t *o = session_json(id, json_object_get(m, id));
    json_decref(m);
    http_respond_json(req, 200, o);
}

struct session_delete {
    http_req_t *req;
    unsigned left;
};

static void on_deleted(void *arg)
{
    struct session_delete *d = arg;
    if (--d->left == 0) {
        http_respond(d->req, 204, NULL, NULL, 0, NULL);
        free(d);
    }
}

void api_session_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    const char *id;
    json_t *m = find_session(ctx, req, p, &id);
    if (!m)
        return;
    json_decref(m);
    struct session_delete *d = calloc(1, sizeof(*d));
    if (!d) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    d->req = req;
    d->left = 1; /* until every deletion was asked for: a callback may run at once */
    for (struct sandbox *sb = ctx->reg->head, *next; sb; sb = next) {
        next = sb->next;
        if (sb->state == SB_DELETING || strcmp(sb->session_id, id) != 0)
            continue;
        api_audit(ctx, req, "sandbox.delete", sb, 204,
                  json_pack("{s:b, s:s}", "ok", 1, "session_id", id));
        d->left++;
        sandbox_destroy(sb, on_deleted, d);
    }
    on_deleted(d);
}
