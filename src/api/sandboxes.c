/*
 * sandboxes — create, list, get, delete, and the lifecycle verbs (pause, resume, stop, kill,
 * start).
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/util.h"
#include "session/snapshot.h"
#include "session/templates.h"
#include "core/json.h"
#include "session/network.h"
#include "session/pool.h"
#include "session/secrets.h"
#include "session/sessions.h"
#include "session/volume.h"

#define ERRLEN 256

int api_valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63 || !isalnum((unsigned char)s[0]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return 0;
    return 1;
}

int api_valid_env(json_t *env, char *err, size_t errlen)
{
    const char *k;
    json_t *v;
    json_object_foreach(env, k, v)
    {
        if (!*k || strchr(k, '=')) {
            snprintf(err, errlen, "invalid environment variable name '%s'", k);
            return -EINVAL;
        }
    }
    return 0;
}

int api_parse_resources(struct api_ctx *ctx, json_t *obj, const struct sandbox_resources *base,
                        struct sandbox_resources *res, char *err)
{
    static const char *const keys[] = {"cpus", "memory_mib", "pids", "disk_mib", NULL};
    const struct sandbox_resources *max = &ctx->limits->maxima;
    long long mem = -1, pids = -1, disk = -1;
    double cpus = -1;
    *res = *base;
    if (!obj)
        return 0;
    if (json_check_keys(obj, keys, "resources", err, ERRLEN) ||
        json_opt_number(obj, "cpus", "resources.cpus", &cpus, err, ERRLEN) ||
        json_opt_int(obj, "memory_mib", "resources.memory_mib", &mem, err, ERRLEN) ||
        json_opt_int(obj, "pids", "resources.pids", &pids, err, ERRLEN) ||
        json_opt_int(obj, "disk_mib", "resources.disk_mib", &disk, err, ERRLEN))
        return 400;
    if (json_object_get(obj, "cpus") && !(cpus > 0)) {
        snprintf(err, ERRLEN, "'resources.cpus' must be greater than 0");
        return 400;
    }
    if ((json_object_get(obj, "memory_mib") && mem < 16) ||
        (json_object_get(obj, "pids") && pids < 8) ||
        (json_object_get(obj, "disk_mib") && disk < 1)) {
        snprintf(err, ERRLEN,
                 "resources below the minimum (memory_mib >= 16, pids >= 8, "
                 "disk_mib >= 1)");
        return 400;
    }
    if (cpus > 0)
        res->cpus = cpus;
    if (mem > 0)
        res->memory_mib = (unsigned long long)mem;
    if (pids > 0)
        res->pids = (unsigned long long)pids;
    if (disk > 0)
        res->disk_mib = (unsigned long long)disk;
    if (res->cpus > max->cpus || res->memory_mib > max->memory_mib || res->pids > max->pids ||
        res->disk_mib > max->disk_mib) {
        snprintf(err, ERRLEN,
                 "resources above the daemon maxima (cpus %g, memory_mib %llu, pids %llu, "
                 "disk_mib %llu)",
                 max->cpus, max->memory_mib, max->pids, max->disk_mib);
        return 422;
    }
    return 0;
}

/* Durations a client may ask for, in seconds (ten years): beyond any use, within any clock. */
#define LIFETIME_MAX_S 315360000.0

/* `ttl_s` and `idle_timeout_s` into the spec: absent or 0 is the daemon's default (--max-ttl,
 * --idle-timeout); a ttl_s above --max-ttl is 422. Returns 0, 400 or 422. */
static int parse_lifetimes(struct api_ctx *ctx, json_t *body, struct sandbox_spec *spec, char *err)
{
    double ttl = 0, idle = 0;
    if (json_opt_number(body, "ttl_s", "ttl_s", &ttl, err, ERRLEN) ||
        json_opt_number(body, "idle_timeout_s", "idle_timeout_s", &idle, err, ERRLEN))
        return 400;
    if (!(ttl >= 0 && ttl <= LIFETIME_MAX_S) || !(idle >= 0 && idle <= LIFETIME_MAX_S)) {
        snprintf(err, ERRLEN, "'%s' must be between 0 and %.0f seconds",
                 ttl >= 0 && ttl <= LIFETIME_MAX_S ? "idle_timeout_s" : "ttl_s", LIFETIME_MAX_S);
        return 400;
    }
    double max_ttl = ctx->limits->max_ttl_s;
    if (max_ttl > 0 && ttl > max_ttl) {
        snprintf(err, ERRLEN, "'ttl_s' %g is above the daemon maximum (--max-ttl %g)", ttl,
                 max_ttl);
        return 422;
    }
    spec->ttl_s = ttl > 0 ? ttl : max_ttl;
    spec->idle_timeout_s = idle > 0 ? idle : ctx->limits->idle_timeout_s;
    return 0;
}

/* `secrets`: names of secrets the daemon holds (422 for one it does not know). */
static int parse_secrets(struct api_ctx *ctx, json_t *v, json_t **out, char *err)
{
    size_t i;
    json_t *name;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v)) {
        snprintf(err, ERRLEN, "'secrets' must be an array of secret names");
        return 400;
    }
    json_array_foreach(v, i, name)
    {
        if (!json_is_string(name) || !secrets_valid_name(json_string_value(name))) {
            snprintf(err, ERRLEN, "'secrets[%zu]' must be a secret name", i);
            return 400;
        }
        if (!secrets_get(ctx->reg->secrets, json_string_value(name))) {
            snprintf(err, ERRLEN, "unknown secret '%s'", json_string_value(name));
            return 422;
        }
    }
    *out = v;
    return 0;
}

/* The `network` field: 400 with the parser's message on bad input. */
static int parse_network(json_t *obj, struct egress_policy **out, char *err)
{
    int r = network_parse(obj, out, err, ERRLEN);
    if (r == -ENOMEM)
        snprintf(err, ERRLEN, "out of memory");
    return r == 0 ? 0 : r == -ENOMEM ? 500 : 400;
}

/* What a creation carries to its callback: the audit record is written when the outcome is known
 * (the id exists only then). */
struct create_call {
    struct api_ctx *ctx;
    http_req_t *req;
    double t0;      /* when the request reached its handler (monotonic), for Server-Timing */
    json_t *audit;  /* api_audit_sandbox_spec() */
    json_t *labels; /* of the request, for a creation that failed */
    /* While the template is being pulled: the parsed spec and the body its strings point into. */
    struct sandbox_spec spec;
    json_t *body;
    json_t *volumes; /* spec.volumes (owned) */
};

/* 201 with the sandbox, and how long the daemon took (Server-Timing: bench/bench_pool.py). */
static void respond_created(http_req_t *req, struct sandbox *sb, int from_pool, double t0)
{
    char hdr[64];
    json_t *o = api_sandbox_json(sb);
    json_object_set_new(o, "from_pool", json_boolean(from_pool));
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    snprintf(hdr, sizeof(hdr), "Server-Timing: app;dur=%.3f\r\n", (util_monotonic() - t0) * 1e3);
    http_respond(req, 201, "application/json", text, strlen(text), hdr);
    free(text);
}

static void on_created(struct sandbox *sb, enum session_err e, const char *msg, void *arg)
{
    struct create_call *call = arg;
    http_req_t *req = call->req;
    double t0 = call->t0;
    const char *code = NULL;
    int status = sb ? 201 : api_session_status(e, &code);
    if (!sb) {
        json_object_set_new(call->audit, "ok", json_false());
        json_object_set_new(call->audit, "error", json_string(code));
        json_object_set(call->audit, "labels", call->labels);
    } else if (http_req_gone(req)) {
        json_object_set_new(call->audit, "ok", json_false());
        json_object_set_new(call->audit, "error", json_string("client_gone"));
    }
    api_audit(call->ctx, req, "sandbox.create", sb, 201, call->audit);
    json_decref(call->labels);
    json_decref(call->body);
    json_decref(call->volumes);
    free(call);
    if (!sb) {
        http_respond_error(req, status, code, "%s", msg);
        return;
    }
    if (http_req_gone(req)) {
        /* Nobody will ever learn this sandbox's id: do not leave it running. */
        sandbox_destroy(sb, NULL, NULL);
        http_respond(req, 499, "text/plain", "", 0, NULL);
        return;
    }
    respond_created(req, sb, 0, t0);
}

/* Creates the sandbox of call->spec (made of `tpl`, or of the host template when NULL); the
 * answer comes from on_created. */
static void create_now(struct create_call *call, struct template *tpl)
{
    char msg[1024];
    struct sandbox_image *img = NULL;
    enum session_err e = SESSION_OK;
    if (tpl)
        e = templates_image(call->ctx->templates, tpl, &img, msg, sizeof(msg));
    call->spec.image = img;
    if (e == 0)
        e = sandbox_create(call->ctx->reg, &call->spec, on_created, call, msg, sizeof(msg));
    sandbox_image_free(img); /* the sandbox keeps its own copy */
    call->spec.image = NULL;
    if (e) {
        network_free(call->spec.network);
        on_created(NULL, e, msg, call);
    }
}

static void on_template(struct template *tpl, enum session_err e, const char *msg, void *arg)
{
    struct create_call *call = arg;
    if (!tpl) {
        network_free(call->spec.network);
        on_created(NULL, e, msg, call);
        return;
    }
    if (http_req_gone(call->req)) {
        network_free(call->spec.network);
        on_created(NULL, SESSION_ERR_DELETED, "the client went away while the image was pulled",
                   call);
        return;
    }
    call->spec.template_name = tpl->name;
    create_now(call, tpl);
}

void api_sandbox_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {
        "name",    "template", "image",          "env",     "labels",    "resources",  "network",
        "secrets", "ttl_s",    "idle_timeout_s", "volumes", "workspace", "session_id", NULL};
    double t0 = util_monotonic();
    char err[ERRLEN];
    struct sandbox_spec spec = {0};
    const char *image = NULL;
    json_t *res = NULL, *net = NULL, *volumes = NULL;
    int status = 400;
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    spec.template_name = "host";
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_string(body, "name", "name", &spec.name, err, ERRLEN) ||
        json_opt_string(body, "template", "template", &spec.template_name, err, ERRLEN) ||
        json_opt_string(body, "image", "image", &image, err, ERRLEN) ||
        json_opt_string_map(body, "env", "env", &spec.env, err, ERRLEN) ||
        json_opt_string_map(body, "labels", "labels", &spec.labels, err, ERRLEN) ||
        json_opt_object(body, "resources", "resources", &res, err, ERRLEN) ||
        json_opt_object(body, "network", "network", &net, err, ERRLEN) ||
        json_opt_string(body, "session_id", "session_id", &spec.session_id, err, ERRLEN))
        goto bad;
    if (spec.session_id && !sessions_valid_id(spec.session_id)) {
        snprintf(err, ERRLEN, "invalid 'session_id': 1-%d characters of [A-Za-z0-9_.:-]",
                 SANDBOX_SESSION_MAX);
        goto bad;
    }
    if (json_object_get(spec.labels, POOL_LABEL)) {
        snprintf(err, ERRLEN, "the label '%s' is the daemon's (warm pools)", POOL_LABEL);
        goto bad;
    }
    if (spec.name && !api_valid_name(spec.name)) {
        snprintf(err, ERRLEN, "invalid 'name': " API_NAME_RULE);
        goto bad;
    }
    if (image && json_object_get(body, "template")) {
        snprintf(err, ERRLEN, "give 'image' or 'template', not both");
        goto bad;
    }
    if (spec.env && api_valid_env(spec.env, err, ERRLEN) < 0)
        goto bad;
    if ((status = parse_secrets(ctx, json_object_get(body, "secrets"), &spec.secrets, err)))
        goto bad;
    int vr = volume_parse_spec(ctx->reg, json_object_get(body, "volumes"),
                               json_object_get(body, "workspace"), &volumes, err, ERRLEN);
    if (vr < 0) {
        status = vr == -ENOENT ? 404 : vr == -ENOMEM ? 500 : 400;
        goto bad;
    }
    spec.volumes = volumes;
    status = 400;
    if ((status = api_parse_resources(ctx, res, &ctx->limits->defaults, &spec.res, err)) ||
        (status = parse_lifetimes(ctx, body, &spec, err)) ||
        (status = parse_network(net, &spec.network, err)))
        goto bad;

    struct sandbox *pooled = pools_claim(ctx->pools, &spec, image);
    if (pooled) {
        json_t *audit = api_audit_sandbox_spec(&spec);
        json_object_set_new(audit, "from_pool", json_true());
        if (image)
            json_object_set_new(audit, "image", json_string(image));
        network_free(spec.network);
        json_decref(body);
        api_audit(ctx, req, "sandbox.create", pooled, 201, audit);
        respond_created(req, pooled, 1, t0);
        return;
    }
    struct create_call *call = calloc(1, sizeof(*call));
    if (!call) {
        network_free(spec.network);
        json_decref(body);
        json_decref(volumes);
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    *call = (struct create_call){
        ctx,  req,  t0,     api_audit_sandbox_spec(&spec), json_deep_copy(spec.labels),
        spec, body, volumes};
    if (image)
        json_object_set_new(call->audit, "image", json_string(image));
    if (image || strcmp(spec.template_name, "host") != 0)
        templates_acquire(ctx->templates, image ? NULL : spec.template_name, image, on_template,
                          call);
    else
        create_now(call, NULL);
    return;
bad:
    api_audit(ctx, req, "sandbox.create", NULL, status,
              json_pack("{s:s*, s:O*}", "name", spec.name, "labels", spec.labels));
    json_decref(body);
    json_decref(volumes);
    http_respond_error(req, status,
                       status == 422   ? "unprocessable"
                       : status == 404 ? "not_found"
                       : status == 500 ? "internal"
                                       : "bad_request",
                       "%s", err);
}

/* Fork: a snapshot of the sandbox (template "fork-<random>") and a new sandbox of it with the
 * same spec. The template stays (it is the new sandbox's); delete it with the sandbox. */
static void on_fork_snapshot(struct template *tpl, enum session_err e, const char *msg, void *arg)
{
    struct create_call *call = arg;
    if (!tpl) {
        network_free(call->spec.network);
        on_created(NULL, e, msg, call);
        return;
    }
    call->spec.template_name = tpl->name;
    create_now(call, tpl);
}

void api_sandbox_fork(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"name", NULL};
    char err[ERRLEN], tname[32];
    const char *name = NULL;
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_string(body, "name", "name", &name, err, ERRLEN) ||
        (name && !api_valid_name(name) &&
         snprintf(err, ERRLEN, "invalid 'name': " API_NAME_RULE)) ||
        util_random_id(tname, sizeof(tname), "fork-") < 0) {
        json_decref(body);
        http_respond_error(req, 400, "bad_request", "%s", err);
        return;
    }
    /* The new sandbox's spec is the source's (its network policy copied through its JSON). */
    struct sandbox_spec spec = {.name = name,
                                .labels = sb->labels,
                                .env = sb->env,
                                .secrets = sb->secrets,
                                .res = sb->res,
                                .ttl_s = sb->ttl_s,
                                .idle_timeout_s = sb->idle_timeout_s};
    json_t *net = network_to_json(sb->network);
    int bad = network_parse(net, &spec.network, err, ERRLEN);
    json_decref(net);
    struct create_call *call = bad ? NULL : calloc(1, sizeof(*call));
    if (!call) {
        if (!bad)
            network_free(spec.network);
        json_decref(body);
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    /* The spec borrows the source's objects: keep copies for as long as the call lives. */
    json_t *keep = json_pack("{s:O*, s:O*, s:O*, s:O*}", "labels", sb->labels, "env", sb->env,
                             "secrets", sb->secrets, "body", body);
    json_decref(body);
    spec.labels = json_object_get(keep, "labels");
    spec.env = json_object_get(keep, "env");
    spec.secrets = json_object_get(keep, "secrets");
    /* Its volumes are attached to the fork too (shared, not copied). */
    json_t *volumes = json_array_size(sb->volumes) ? json_deep_copy(sb->volumes) : NULL;
    spec.volumes = volumes;
    *call = (struct create_call){
        ctx,  req,  util_monotonic(), api_audit_sandbox_spec(&spec), json_deep_copy(spec.labels),
        spec, keep, volumes};
    json_object_set_new(call->audit, "fork_of", json_string(sb->id));
    enum session_err e =
        sandbox_snapshot(sb, ctx->templates, tname, on_fork_snapshot, call, err, ERRLEN);
    if (e)
        on_fork_snapshot(NULL, e, err, call);
}

/* `label=k=v` filter: true when the sandbox has label k with value v. */
static int label_matches(const struct sandbox *sb, const char *filter)
{
    const char *eq = strchr(filter, '=');
    char key[256];
    if (!eq || (size_t)(eq - filter) >= sizeof(key))
        return 0;
    memcpy(key, filter, (size_t)(eq - filter));
    key[eq - filter] = '\0';
    json_t *v = json_object_get(sb->labels, key);
    return v && strcmp(json_string_value(v), eq + 1) == 0;
}

void api_sandbox_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"label", "state", "session_id", NULL};
    (void)p;
    if (api_check_query(req, params) < 0)
        return;
    for (size_t i = 0; i < http_req_query_count(req); i++) {
        if (!strcmp(http_req_query_name(req, i), "label") &&
            !strchr(http_req_query_value(req, i), '=')) {
            http_respond_error(req, 400, "bad_request", "'label' filter must be key=value");
            return;
        }
    }
    const char *state = http_req_query(req, "state");
    const char *session = http_req_query(req, "session_id");
    json_t *arr = json_array();
    if (state && !strcmp(state, "deleted")) {
        /* The records kept of deleted sandboxes (--released-ttl), oldest first. */
        for (struct released *r = ctx->reg->released_head; r; r = r->next) {
            const char *sid = json_string_value(json_object_get(r->record, "session_id"));
            json_t *labels = json_object_get(r->record, "labels");
            if (session && strcmp(session, sid ? sid : "") != 0)
                continue;
            int ok = 1;
            for (size_t i = 0; i < http_req_query_count(req); i++) {
                const char *f = http_req_query_value(req, i), *eq = strchr(f, '=');
                if (strcmp(http_req_query_name(req, i), "label") != 0)
                    continue;
                char key[256];
                snprintf(key, sizeof(key), "%.*s", (int)(eq - f), f);
                json_t *v = json_object_get(labels, key);
                ok &= v && !strcmp(json_string_value(v), eq + 1);
            }
            if (ok)
                json_array_append_new(arr, api_released_json(r->record));
        }
        http_respond_json(req, 200, json_pack("{s:o}", "sandboxes", arr));
        return;
    }
    for (struct sandbox *sb = ctx->reg->head; sb; sb = sb->next) {
        if (sb->state == SB_DELETING || sb->state == SB_CREATING)
            continue;
        if (json_object_get(sb->labels, POOL_LABEL))
            continue; /* an unclaimed member of a warm pool: GET /v1/pools counts them */
        if (state && strcmp(state, sandbox_state_str(sb)) != 0)
            continue;
        if (session && strcmp(session, sb->session_id) != 0)
            continue;
        int ok = 1;
        for (size_t i = 0; i < http_req_query_count(req); i++)
            if (!strcmp(http_req_query_name(req, i), "label") &&
                !label_matches(sb, http_req_query_value(req, i)))
                ok = 0;
        if (ok)
            json_array_append_new(arr, api_sandbox_json(sb));
    }
    http_respond_json(req, 200, json_pack("{s:o}", "sandboxes", arr));
}

void api_sandbox_heartbeat(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    /* Finding it is the heartbeat (api_find_sandbox()). */
    if (api_sandbox_of(ctx, req, p))
        http_respond(req, 204, NULL, NULL, 0, NULL);
}

void api_sandbox_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (sb)
        http_respond_json(req, 200, api_sandbox_json_usage(sb));
}

static void pause_error(http_req_t *req, struct sandbox *sb, int r)
{
    if (r == -EINVAL)
        http_respond_error(req, 409, "conflict", "the sandbox is %s%s",
                           sandbox_state_name(sb->state), sb->pausing ? " (pausing)" : "");
    else if (r == -ENOTSUP)
        http_respond_error(req, 409, "conflict",
                           "pausing needs the cgroup freezer, which this "
                           "daemon does not have");
    else if (r == -ESRCH)
        http_respond_error(req, 409, "conflict", "the sandbox was deleted while pausing");
    else
        http_respond_error(req, 500, "internal", "cannot %s the sandbox: %s",
                           r == -ETIMEDOUT ? "freeze (in time)" : "freeze or thaw", strerror(-r));
}

static int pause_status(int r)
{
    return r == -EINVAL || r == -ENOTSUP || r == -ESRCH ? 409 : r < 0 ? 500 : 200;
}

struct pause_call {
    struct api_ctx *ctx;
    http_req_t *req;
};

static void on_paused(struct sandbox *sb, int err, void *arg)
{
    struct pause_call *call = arg;
    http_req_t *req = call->req;
    api_audit(call->ctx, req, "sandbox.pause", sb, pause_status(err), NULL);
    free(call);
    if (err < 0)
        pause_error(req, sb, err);
    else
        http_respond_json(req, 200, api_sandbox_json(sb));
}

void api_sandbox_pause(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    struct pause_call *call = malloc(sizeof(*call));
    if (!call) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    *call = (struct pause_call){ctx, req};
    int r = sandbox_pause(sb, on_paused, call);
    if (r < 0) {
        free(call);
        api_audit(ctx, req, "sandbox.pause", sb, pause_status(r), NULL);
        pause_error(req, sb, r);
    }
}

void api_sandbox_resume(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    int r = sandbox_resume(sb);
    api_audit(ctx, req, "sandbox.resume", sb, pause_status(r), NULL);
    if (r < 0)
        pause_error(req, sb, r);
    else
        http_respond_json(req, 200, api_sandbox_json(sb));
}

/* PATCH `resources`: cpus, memory_mib and pids change live; disk_mib cannot. Answers on failure
 * (after the audit record) and returns -1; 0 when applied. */
static int patch_resources(struct api_ctx *ctx, http_req_t *req, struct sandbox *sb,
                           const struct sandbox_resources *res)
{
    struct sandbox_usage u;
    int r = sandbox_set_resources(sb, res);
    json_t *fields = json_pack("{s:{s:f, s:I, s:I}}", "resources", "cpus", res->cpus, "memory_mib",
                               (json_int_t)res->memory_mib, "pids", (json_int_t)res->pids);
    int status = r == 0 ? 200 : api_errno_status(r);
    api_audit(ctx, req, "sandbox.resources", sb, status, fields);
    if (r == -ERANGE && sandbox_usage(sb, &u) == 0)
        http_respond_error(req, status, api_errno_code(r),
                           "'resources.memory_mib' %llu is below the sandbox's current memory use "
                           "(%llu MiB)",
                           res->memory_mib,
                           (unsigned long long)((u.memory_bytes + (1 << 20) - 1) >> 20));
    else if (r == -EBUSY)
        http_respond_error(req, status, api_errno_code(r), "the sandbox is %s",
                           sandbox_state_name(sb->state));
    else if (r < 0)
        http_respond_error(req, status, api_errno_code(r), "cannot change the resources: %s",
                           session_strerror(r));
    return r < 0 ? -1 : 0;
}

void api_sandbox_patch(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {"network", "resources", NULL};
    char err[ERRLEN];
    struct egress_policy *policy = NULL;
    struct sandbox_resources res;
    json_t *net = NULL, *resources = NULL;
    int status = 400;
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (json_check_keys(body, keys, NULL, err, ERRLEN) ||
        json_opt_object(body, "network", "network", &net, err, ERRLEN) ||
        json_opt_object(body, "resources", "resources", &resources, err, ERRLEN))
        goto bad;
    if (!net && !resources) {
        snprintf(err, ERRLEN,
                 "nothing to change: PATCH takes {\"network\": {...}} and/or {\"resources\": "
                 "{...}}");
        goto bad;
    }
    if (resources && json_object_get(resources, "disk_mib")) {
        snprintf(err, ERRLEN, "'resources.disk_mib' cannot change on a live sandbox");
        goto bad;
    }
    if (resources && (status = api_parse_resources(ctx, resources, &sb->res, &res, err)))
        goto bad;
    if (net && (status = parse_network(net, &policy, err)))
        goto bad;
    json_decref(body);
    /* Both or neither: a network change needs a running or paused sandbox, so a stopped one
     * refuses it before its resources change. */
    if (net && sb->state != SB_RUNNING && sb->state != SB_PAUSED) {
        network_free(policy);
        api_audit(ctx, req, "sandbox.network", sb, 409, NULL);
        http_respond_error(req, 409, "conflict", "the sandbox is %s",
                           sandbox_state_name(sb->state));
        return;
    }
    if (resources && patch_resources(ctx, req, sb, &res) < 0) {
        network_free(policy);
        return;
    }
    if (!net) {
        http_respond_json(req, 200, api_sandbox_json(sb));
        return;
    }
    json_t *fields = json_pack("{s:o}", "network", network_to_json(policy));
    int r = sandbox_set_network(sb, policy);
    api_audit(ctx, req, "sandbox.network", sb, r == 0 ? 200 : r == -EINVAL ? 409 : 500, fields);
    if (r == -EINVAL)
        http_respond_error(req, 409, "conflict", "the sandbox is %s",
                           sandbox_state_name(sb->state));
    else if (r < 0)
        http_respond_error(req, 500, "internal", "cannot apply the network policy: %s",
                           strerror(-r));
    else
        http_respond_json(req, 200, api_sandbox_json(sb));
    return;
bad:
    json_decref(body);
    http_respond_error(req, status, api_status_code(status), "%s", err);
}

/* ---- stop, kill, start ---------------------------------------------------------------------- */

#define STOP_GRACE_DEFAULT_S 10.0
#define STOP_GRACE_MAX_S 3600.0

struct lifecycle_call {
    struct api_ctx *ctx;
    http_req_t *req;
    const char *event; /* "sandbox.stop", "sandbox.kill", "sandbox.start" */
    json_t *audit;     /* fields of the audit record (owned until recorded) */
};

/* Records the outcome and answers: the sandbox on success, else a 409 or the error of `r`. */
static void lifecycle_answer(struct lifecycle_call *call, struct sandbox *sb, int status,
                             const char *code, const char *msg)
{
    http_req_t *req = call->req;
    api_audit(call->ctx, req, call->event, sb, status, call->audit);
    free(call);
    if (status == 200)
        http_respond_json(req, 200, api_sandbox_json(sb));
    else
        http_respond_error(req, status, code, "%s", msg);
}

static void on_stopped(struct sandbox *sb, int err, void *arg)
{
    if (err == -ESRCH)
        lifecycle_answer(arg, sb, 409, "conflict", "the sandbox was deleted while stopping");
    else
        lifecycle_answer(arg, sb, 200, NULL, NULL);
}

static void stop_or_kill(struct api_ctx *ctx, http_req_t *req, const struct route_params *p,
                         int kill)
{
    static const char *const stop_keys[] = {"grace_s", NULL};
    static const char *const kill_keys[] = {NULL};
    char err[ERRLEN];
    double grace = kill ? 0 : STOP_GRACE_DEFAULT_S;
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    if (json_check_keys(body, kill ? kill_keys : stop_keys, NULL, err, ERRLEN) ||
        json_opt_number(body, "grace_s", "grace_s", &grace, err, ERRLEN)) {
        json_decref(body);
        http_respond_error(req, 400, "bad_request", "%s", err);
        return;
    }
    json_decref(body);
    if (!(grace >= 0 && grace <= STOP_GRACE_MAX_S)) {
        http_respond_error(req, 400, "bad_request", "'grace_s' must be between 0 and %g",
                           STOP_GRACE_MAX_S);
        return;
    }
    struct lifecycle_call *call = malloc(sizeof(*call));
    if (!call) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    *call = (struct lifecycle_call){ctx, req, kill ? "sandbox.kill" : "sandbox.stop",
                                    kill ? NULL : json_pack("{s:f}", "grace_s", grace)};
    int r = sandbox_stop(sb, grace, on_stopped, call);
    if (r == -EBUSY) {
        char msg[ERRLEN];
        snprintf(msg, sizeof(msg), "the sandbox is %s", sandbox_state_name(sb->state));
        lifecycle_answer(call, sb, 409, "conflict", msg);
    } else if (r < 0) {
        lifecycle_answer(call, sb, api_errno_status(r), api_errno_code(r), session_strerror(r));
    }
}

void api_sandbox_stop(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    stop_or_kill(ctx, req, p, 0);
}

void api_sandbox_kill(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    stop_or_kill(ctx, req, p, 1);
}

static void on_started(struct sandbox *sb, enum session_err e, const char *msg, void *arg)
{
    const char *code = NULL;
    int status = e == SESSION_OK ? 200 : api_session_status(e, &code);
    lifecycle_answer(arg, sb, status, code, msg);
}

void api_sandbox_start(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const keys[] = {NULL};
    char err[ERRLEN], msg[1024];
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    int bad = json_check_keys(body, keys, NULL, err, ERRLEN);
    json_decref(body);
    if (bad) {
        http_respond_error(req, 400, "bad_request", "%s", err);
        return;
    }
    struct lifecycle_call *call = malloc(sizeof(*call));
    if (!call) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    *call = (struct lifecycle_call){ctx, req, "sandbox.start", NULL};
    enum session_err e = sb->recycled
                             ? sandbox_ensure_running(sb, on_started, call, msg, sizeof(msg))
                             : sandbox_start(sb, on_started, call, msg, sizeof(msg));
    if (e)
        on_started(sb, e, msg, call);
}

static void on_deleted(void *arg)
{
    http_respond(arg, 204, NULL, NULL, 0, NULL);
}

void api_sandbox_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    struct sandbox *sb = api_sandbox_of(ctx, req, p);
    if (!sb)
        return;
    api_audit(ctx, req, "sandbox.delete", sb, 204, NULL);
    sandbox_destroy(sb, on_deleted, req);
}
