/*
 * templates — /v1/templates: the images sandboxes are made from (docs/API.md, "Templates").
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "api/api.h"
#include "core/json.h"
#include "session/templates.h"

#define ERRLEN 512

/* Implicit templates are named by image references ("127.0.0.1:5000/team/app:1"): their routes
 * take the rest of the path as the name, slashes included. */
static struct template *find_template(struct api_ctx *ctx, http_req_t *req,
                                      const struct route_params *p)
{
    const char *name = route_param(p, "name");
    struct template *tpl = templates_find(ctx->templates, name);
    if (!tpl)
        http_respond_error(req, 404, "not_found", "no template named '%s'", name);
    return tpl;
}

void api_template_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"name", "image", NULL};
    char err[ERRLEN];
    const char *name = NULL, *image = NULL;
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_string(body, "name", "name", &name, err, ERRLEN) ||
        json_opt_string(body, "image", "image", &image, err, ERRLEN))
        goto bad;
    if (!image) {
        snprintf(err, ERRLEN, "'image' is required");
        goto bad;
    }
    if (name && (!api_valid_name(name) || !strcmp(name, "host"))) {
        snprintf(err, ERRLEN,
                 "invalid 'name': 1-63 characters of [A-Za-z0-9_.-], starting with a letter or "
                 "digit, and not 'host'");
        goto bad;
    }
    struct template *tpl;
    enum session_err e = templates_pull(ctx->templates, name, image, &tpl, err, ERRLEN);
    const char *code;
    int status = e ? api_session_status(e, &code) : tpl->state == TEMPLATE_READY ? 200 : 202;
    api_audit(ctx, req, "template.create", NULL, status,
              json_pack("{s:s, s:s}", "name", e ? (name ? name : "") : tpl->name, "image", image));
    if (e)
        http_respond_error(req, status, code, "%s", err);
    else
        http_respond_json(req, status, api_template_json(tpl));
    json_decref(body);
    return;
bad:
    json_decref(body);
    http_respond_error(req, 400, "bad_request", "%s", err);
}

void api_template_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    json_t *arr = json_array();
    json_array_append_new(arr, api_template_json(NULL));
    for (struct template *tpl = ctx->templates->head; tpl; tpl = tpl->next)
        json_array_append_new(arr, api_template_json(tpl));
    http_respond_json(req, 200, json_pack("{s:o}", "templates", arr));
}

void api_template_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    if (api_check_query(req, NULL) < 0)
        return;
    if (!strcmp(route_param(p, "name"), "host")) {
        http_respond_json(req, 200, api_template_json(NULL));
        return;
    }
    struct template *tpl = find_template(ctx, req, p);
    if (tpl)
        http_respond_json(req, 200, api_template_json(tpl));
}

void api_template_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    if (api_check_query(req, NULL) < 0)
        return;
    if (!strcmp(route_param(p, "name"), "host")) {
        http_respond_error(req, 409, "conflict", "the built-in 'host' template cannot be deleted");
        return;
    }
    struct template *tpl = find_template(ctx, req, p);
    if (!tpl)
        return;
    char user[SANDBOX_NAME_MAX + 32];
    if (sandbox_template_user(ctx->reg, tpl->name, user, sizeof(user))) {
        http_respond_error(req, 409, "template_in_use", "template '%s' is used by sandbox %s",
                           tpl->name, user);
        return;
    }
    json_t *audit = json_pack("{s:s}", "name", tpl->name);
    if (templates_remove(ctx->templates, tpl) < 0) {
        api_audit(ctx, req, "template.delete", NULL, 409, audit);
        http_respond_error(req, 409, "conflict",
                           "the template is being pulled; try again when it is %s",
                           "ready or failed");
        return;
    }
    api_audit(ctx, req, "template.delete", NULL, 204, audit);
    http_respond(req, 204, NULL, NULL, 0, NULL);
}
