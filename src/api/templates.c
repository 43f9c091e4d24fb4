/*
 * templates — /v1/templates: the images sandboxes are made from (docs/API.md, "Images and
 * templates"): pulls, imports and exports of archives, snapshots of sandboxes.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "api/api.h"
#include "api/pipe.h"
#include "core/json.h"
#include "core/log.h"
#include "session/build.h"
#include "session/snapshot.h"
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
    if (name && !api_valid_name(name)) {
        snprintf(err, ERRLEN, "invalid 'name': " API_NAME_RULE);
        goto bad;
    }
    if (name && !strcmp(name, "host")) {
        json_decref(body);
        http_respond_error(req, 409, "conflict", "'host' is the built-in template");
        return;
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
        if (!tpl->hidden) /* a build's cache (session/build.h) */
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

/* ---- import, export ------------------------------------------------------------------------- */

/* One streamed import or export: the pipe between the request and the pool worker, and the
 * template (or the reason) the session layer answered. */
struct archive_call {
    struct api_ctx *ctx;
    http_req_t *req;
    struct api_pipe *pipe;
    struct template *tpl;
    enum session_err err;
    char name[TEMPLATE_NAME_MAX];
    char msg[512];
};

/* A pipe whose write end (the worker's, for an export) or read end (for an import) blocks and
 * whose other end, the loop's, does not. */
static int make_pipe(int loop_end_writes, int *loop_fd, int *worker_fd)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    *loop_fd = loop_end_writes ? fds[1] : fds[0];
    *worker_fd = loop_end_writes ? fds[0] : fds[1];
    if (fcntl(*loop_fd, F_SETFL, O_NONBLOCK) < 0) {
        int r = -errno;
        close(fds[0]);
        close(fds[1]);
        return r;
    }
    return 0;
}

/* The status and API code of a failed import or export: `status` if not 0, else those of the
 * session's error. */
static int archive_status(const struct archive_call *c, int status, const char **code)
{
    if (!status)
        return api_session_status(c->err, code);
    *code = api_status_code(status);
    return status;
}

static void archive_answer_error(struct archive_call *c, int status)
{
    const char *code;
    status = archive_status(c, status, &code);
    http_respond_error(c->req, status, code, "%s", c->msg);
}

static void on_import_end(void *arg, int r, int started, uint64_t bytes, int body_err)
{
    struct archive_call *c = arg;
    const char *code = NULL;
    (void)started;
    (void)r;
    if (!c->tpl && body_err)
        snprintf(c->msg, sizeof(c->msg), "the upload broke off after %llu bytes",
                 (unsigned long long)bytes);
    int status = c->tpl ? 201 : archive_status(c, body_err ? 400 : 0, &code);
    api_audit(c->ctx, c->req, "template.import", NULL, status,
              json_pack("{s:s, s:I}", "name", c->name, "bytes", (json_int_t)bytes));
    if (c->tpl)
        http_respond_json(c->req, 201, api_template_json(c->tpl));
    else
        http_respond_error(c->req, status, code, "%s", c->msg);
    free(c);
}

static void on_imported(struct template *tpl, enum session_err err, const char *msg, void *arg)
{
    struct archive_call *c = arg;
    c->tpl = tpl;
    c->err = err;
    snprintf(c->msg, sizeof(c->msg), "%s", msg ? msg : "");
    api_pipe_worker_done(c->pipe, tpl ? 0 : -EIO);
}

void api_template_import(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    const char *name = route_param(p, "name");
    int loop_fd, worker_fd;
    if (api_check_query(req, NULL) < 0)
        return;
    if (!api_valid_name(name) || !strcmp(name, "host")) {
        http_respond_error(req, 400, "bad_request",
                           "invalid template name: " API_NAME_RULE ", and not 'host'");
        return;
    }
    struct archive_call *c = calloc(1, sizeof(*c));
    if (!c || make_pipe(1, &loop_fd, &worker_fd) < 0) {
        free(c);
        http_respond_error(req, 500, "internal", "cannot make a pipe for the upload");
        return;
    }
    *c = (struct archive_call){.ctx = ctx, .req = req};
    snprintf(c->name, sizeof(c->name), "%s", name);
    enum session_err e =
        templates_import(ctx->templates, name, worker_fd, on_imported, c, c->msg, sizeof(c->msg));
    if (e) {
        close(loop_fd);
        c->err = e;
        archive_answer_error(c, 0);
        free(c);
        return;
    }
    if (api_pipe_receive(ctx->reg->loop, req, loop_fd, on_import_end, c, &c->pipe) < 0)
        abort(); /* only ENOMEM, and the worker holds c: nothing sane is left to do */
}

static void on_export_end(void *arg, int r, int started, uint64_t bytes, int body_err)
{
    struct archive_call *c = arg;
    (void)body_err;
    (void)bytes;
    if (!started)
        archive_answer_error(c, 0);
    else if (r < 0)
        log_warn("templates: export of %s failed midway: %s", c->name, c->msg);
    free(c);
}

static void on_exported(struct template *tpl, enum session_err err, const char *msg, void *arg)
{
    struct archive_call *c = arg;
    c->err = err;
    snprintf(c->msg, sizeof(c->msg), "%s", msg ? msg : "");
    api_pipe_worker_done(c->pipe, tpl ? 0 : -EIO);
}

void api_template_export(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    int loop_fd, worker_fd;
    if (api_check_query(req, NULL) < 0)
        return;
    if (!strcmp(route_param(p, "name"), "host")) {
        http_respond_error(req, 409, "conflict",
                           "the built-in 'host' template is the host's own file system, not an "
                           "image: it cannot be exported");
        return;
    }
    struct template *tpl = find_template(ctx, req, p);
    if (!tpl)
        return;
    struct archive_call *c = calloc(1, sizeof(*c));
    if (!c || make_pipe(0, &loop_fd, &worker_fd) < 0) {
        free(c);
        http_respond_error(req, 500, "internal", "cannot make a pipe for the download");
        return;
    }
    *c = (struct archive_call){.ctx = ctx, .req = req};
    snprintf(c->name, sizeof(c->name), "%s", tpl->name);
    enum session_err e =
        templates_export(ctx->templates, tpl, worker_fd, on_exported, c, c->msg, sizeof(c->msg));
    if (e) {
        close(loop_fd);
        c->err = e;
        archive_answer_error(c, 0);
        free(c);
        return;
    }
    if (api_pipe_send(ctx->reg->loop, req, loop_fd, "application/x-tar", on_export_end, c,
                      &c->pipe) < 0)
        abort(); /* only ENOMEM, and the worker holds c */
}

/* ---- snapshot ------------------------------------------------------------------------------- */

struct snapshot_call {
    struct api_ctx *ctx;
    http_req_t *req;
    char sandbox[SANDBOX_ID_MAX];
    char name[TEMPLATE_NAME_MAX];
};

static void on_snapshotted(struct template *tpl, enum session_err err, const char *msg, void *arg)
{
    struct snapshot_call *c = arg;
    const char *code = "internal";
    int status = tpl ? 201 : api_session_status(err, &code);
    struct sandbox *sb = sandbox_find(c->ctx->reg, c->sandbox);
    api_audit(c->ctx, c->req, "sandbox.snapshot", sb, status, json_pack("{s:s}", "name", c->name));
    if (tpl)
        http_respond_json(c->req, 201, api_template_json(tpl));
    else
        http_respond_error(c->req, status, code, "%s", msg);
    free(c);
}

void api_sandbox_snapshot(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"name", NULL};
    char err[ERRLEN];
    const char *name = NULL;
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_string(body, "name", "name", &name, err, ERRLEN)) {
        json_decref(body);
        http_respond_error(req, 400, "bad_request", "%s", err);
        return;
    }
    if (!name || !api_valid_name(name)) {
        json_decref(body);
        http_respond_error(req, 400, "bad_request", "'name' is required: " API_NAME_RULE);
        return;
    }
    if (!strcmp(name, "host")) {
        json_decref(body);
        http_respond_error(req, 409, "conflict", "'host' is the built-in template");
        return;
    }
    struct snapshot_call *c = calloc(1, sizeof(*c));
    if (!c) {
        json_decref(body);
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    *c = (struct snapshot_call){ctx, req, "", ""};
    snprintf(c->sandbox, sizeof(c->sandbox), "%s", sb->id);
    snprintf(c->name, sizeof(c->name), "%s", name);
    json_decref(body);
    enum session_err e =
        sandbox_snapshot(sb, ctx->templates, c->name, on_snapshotted, c, err, ERRLEN);
    if (e)
        on_snapshotted(NULL, e, err, c);
}

/* ---- build ---------------------------------------------------------------------------------- */

/* One build: the context streams through the pipe; the answer is made when the build ends and
 * sent when the pipe lets go of the request. */
struct build_call {
    struct api_ctx *ctx;
    http_req_t *req;
    struct api_pipe *pipe;
    char name[TEMPLATE_NAME_MAX];
    int status;
    json_t *answer;
};

static void on_build_end(void *arg, int r, int started, uint64_t bytes, int body_err)
{
    struct build_call *c = arg;
    (void)r;
    (void)started;
    if (c->status != 201 && body_err) {
        json_decref(c->answer);
        c->status = 400;
        c->answer = json_pack("{s:{s:s, s:s}}", "error", "code", "bad_request", "message",
                              "the upload of the build context broke off");
    }
    api_audit(c->ctx, c->req, "template.build", NULL, c->status,
              json_pack("{s:s, s:I}", "name", c->name, "bytes", (json_int_t)bytes));
    http_respond_json(c->req, c->status, c->answer);
    free(c);
}

static void on_built(const struct build_result *res, void *arg)
{
    struct build_call *c = arg;
    const char *code = "internal";
    buf_t log = {(char *)res->log, res->log_len, res->log_len};
    if (res->tpl) {
        c->status = 201;
        c->answer = api_template_json(res->tpl);
    } else {
        c->status = api_session_status(res->err, &code);
        c->answer = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", res->msg);
        if (!c->answer) /* a message that is not UTF-8 (a command's output) */
            c->answer = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message",
                                  "the build failed (its message is not UTF-8: see the log)");
    }
    json_object_set(c->answer, "steps", res->steps);
    api_put_output(c->answer, "log", &log, 1);
    api_pipe_worker_done(c->pipe, res->tpl ? 0 : -EIO);
}

void api_template_build(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const allowed[] = {"name",     "dockerfile", "build_arg",
                                          "no_cache", "network",    NULL};
    const char *name = http_req_query(req, "name"), *net = http_req_query(req, "network"),
               *nc = http_req_query(req, "no_cache");
    char msg[512];
    int loop_fd, worker_fd;
    (void)p;
    if (api_check_query(req, allowed) < 0)
        return;
    if (!name || !api_valid_name(name) || !strcmp(name, "host")) {
        http_respond_error(req, 400, "bad_request",
                           "'name' is required: " API_NAME_RULE ", and not 'host'");
        return;
    }
    if (net && strcmp(net, "none") && strcmp(net, "open")) {
        http_respond_error(req, 400, "bad_request", "'network' is none or open");
        return;
    }
    json_t *args = json_object();
    for (size_t i = 0; args && i < http_req_query_count(req); i++) {
        if (strcmp(http_req_query_name(req, i), "build_arg") != 0)
            continue;
        const char *kv = http_req_query_value(req, i), *eq = strchr(kv, '=');
        if (!eq || eq == kv) {
            json_decref(args);
            http_respond_error(req, 400, "bad_request", "'build_arg' is K=V, not '%s'", kv);
            return;
        }
        char key[256];
        snprintf(key, sizeof(key), "%.*s", (int)(eq - kv), kv);
        json_object_set_new(args, key, json_string(eq + 1));
    }
    struct build_call *c = calloc(1, sizeof(*c));
    if (!args || !c || make_pipe(1, &loop_fd, &worker_fd) < 0) {
        json_decref(args);
        free(c);
        http_respond_error(req, 500, "internal", "cannot make a pipe for the upload");
        return;
    }
    *c = (struct build_call){.ctx = ctx, .req = req};
    snprintf(c->name, sizeof(c->name), "%s", name);
    struct build_request br = {.name = name,
                               .dockerfile = http_req_query(req, "dockerfile"),
                               .build_args = args,
                               .no_cache = nc && strcmp(nc, "0") && strcmp(nc, "false"),
                               .network_open = net && !strcmp(net, "open"),
                               .res = ctx->limits->defaults};
    enum session_err e =
        build_start(ctx->reg, ctx->templates, &br, worker_fd, on_built, c, msg, sizeof(msg));
    json_decref(args);
    if (e) {
        const char *code;
        int status = api_session_status(e, &code);
        close(loop_fd);
        api_audit(ctx, req, "template.build", NULL, status, json_pack("{s:s}", "name", name));
        http_respond_error(req, status, code, "%s", msg);
        free(c);
        return;
    }
    if (api_pipe_receive(ctx->reg->loop, req, loop_fd, on_build_end, c, &c->pipe) < 0)
        abort(); /* only ENOMEM, and the build holds c */
}
