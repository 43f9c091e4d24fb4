/*
 * audit — what the API records in the audit log (session/audit.h), and GET /v1/audit.
 *
 * Handlers call api_audit() where an action succeeded or was refused (after the sandbox was
 * found: requests naming no existing sandbox are not recorded), before answering, since the
 * answer consumes the request and with it the caller's address. What is recorded: ids, names,
 * labels, commands (cut to 1 KiB), cwd, timeouts, paths, byte counts, secret *names*. What never
 * is: environment values, secret values, stdin, file contents, terminal input.
 *
 * GET /v1/audit reads the files on the thread pool: they may hold hundreds of MiB.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/log.h"
#include "core/util.h"
#include "session/network.h"
#include "session/audit.h"

#define LIMIT_DEFAULT 1000
#define LIMIT_MAX 10000

void api_audit(struct api_ctx *ctx, http_req_t *req, const char *event, const struct sandbox *sb,
               int status, json_t *fields)
{
    api_audit_caller(ctx, req ? http_req_peer(req) : NULL, event, sb, status, fields);
}

void api_audit_caller(struct api_ctx *ctx, const char *caller, const char *event,
                      const struct sandbox *sb, int status, json_t *fields)
{
    if (!ctx->audit) {
        json_decref(fields);
        return;
    }
    if (!fields)
        fields = json_object();
    if (fields && !json_object_get(fields, "ok")) {
        json_object_set_new(fields, "ok", json_boolean(status < 400));
        if (status >= 400)
            json_object_set_new(fields, "error", json_string(api_status_code(status)));
    }
    audit_record(ctx->audit, event, sb ? sb->id : NULL, sb ? sb->labels : NULL, fields, caller);
}

json_t *api_audit_command(json_t *body, const struct api_run *run)
{
    json_t *o = audit_command(body);
    if (o && run) {
        json_object_set_new(o, "cwd", json_string(run->cwd));
        json_object_set_new(o, "timeout_s",
                            run->timeout_s > 0 ? json_real(run->timeout_s) : json_null());
    }
    return o;
}

json_t *api_audit_sandbox_spec(const struct sandbox_spec *spec)
{
    json_t *secrets = spec->secrets ? json_deep_copy(spec->secrets) : json_array();
    json_t *net = network_to_json(spec->network); /* normalised; NULL: mode none */
    json_t *o =
        json_pack("{s:s*, s:s*, s:{s:f, s:I, s:I, s:I}, s:o, s:o}", "name", spec->name, "template",
                  spec->template_name, "resources", "cpus", spec->res.cpus, "memory_mib",
                  (json_int_t)spec->res.memory_mib, "pids", (json_int_t)spec->res.pids, "disk_mib",
                  (json_int_t)spec->res.disk_mib, "network", net, "secrets", secrets);
    if (o && json_array_size(spec->volumes) > 0)
        json_object_set(o, "volumes", spec->volumes);
    return o;
}

/* ---- GET /v1/audit ------------------------------------------------------------------------- */

struct audit_query {
    struct api_ctx *ctx;
    http_req_t *req;
    uv_work_t work;
    char *sandbox, *since, *until, *event;
    size_t limit;
    json_t *events;
    int truncated;
    int r;
};

static void query_free(struct audit_query *q)
{
    free(q->sandbox);
    free(q->since);
    free(q->until);
    free(q->event);
    json_decref(q->events);
    free(q);
}

static void query_work(uv_work_t *w)
{
    struct audit_query *q = w->data;
    q->r = audit_read(q->ctx->audit, q->sandbox, q->since, q->until, q->event, q->limit, &q->events,
                      &q->truncated);
}

static void query_done(uv_work_t *w, int status)
{
    struct audit_query *q = w->data;
    (void)status;
    if (q->r < 0) {
        log_warn("audit: reading the log: %s", strerror(-q->r));
        http_respond_error(q->req, 500, "internal", "cannot read the audit log: %s",
                           strerror(-q->r));
    } else {
        http_respond_json(q->req, 200,
                          json_pack("{s:O, s:b}", "events", q->events, "truncated", q->truncated));
    }
    query_free(q);
}

static int valid_event_filter(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", s[i]) &&
            !(s[i] == '*' && i == n - 1))
            return 0;
    return 1;
}

void api_audit_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"sandbox", "since", "until", "event", "limit", NULL};
    int64_t since_ms = INT64_MIN, until_ms = INT64_MAX;
    size_t limit = LIMIT_DEFAULT;
    (void)p;
    if (api_check_query(req, params) < 0)
        return;
    for (size_t i = 0; i < http_req_query_count(req); i++) {
        const char *name = http_req_query_name(req, i), *value = http_req_query_value(req, i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(http_req_query_name(req, j), name) == 0) {
                http_respond_error(req, 400, "bad_request", "'%s' is given more than once", name);
                return;
            }
        if (!*value) {
            http_respond_error(req, 400, "bad_request", "'%s' must not be empty", name);
            return;
        }
    }
    const char *sandbox = http_req_query(req, "sandbox"), *event = http_req_query(req, "event");
    const char *since = http_req_query(req, "since"), *until = http_req_query(req, "until");
    const char *lim = http_req_query(req, "limit");
    if (since && audit_parse_time(since, &since_ms) < 0) {
        http_respond_error(req, 400, "bad_request",
                           "'since' must be an RFC 3339 time such as 2026-11-23T10:00:00Z");
        return;
    }
    if (until && audit_parse_time(until, &until_ms) < 0) {
        http_respond_error(req, 400, "bad_request",
                           "'until' must be an RFC 3339 time such as 2026-11-23T10:00:00Z");
        return;
    }
    if (since_ms > until_ms) {
        http_respond_error(req, 400, "bad_request", "'until' is before 'since'");
        return;
    }
    if (event && !valid_event_filter(event)) {
        http_respond_error(req, 400, "bad_request",
                           "'event' must be an event name such as exec, or a prefix ending in "
                           "'*' such as sandbox.*");
        return;
    }
    if (lim) {
        char *end;
        unsigned long long v = strtoull(lim, &end, 10);
        if (*lim < '0' || *lim > '9' || *end || v < 1 || v > LIMIT_MAX) {
            http_respond_error(req, 400, "bad_request", "'limit' must be an integer 1..%d",
                               LIMIT_MAX);
            return;
        }
        limit = (size_t)v;
    }
    if (!ctx->audit) {
        http_respond_error(req, 503, "unavailable", "the audit log is not open");
        return;
    }
    /* A live sandbox may be named by its name; records carry ids. */
    struct sandbox *sb = sandbox ? sandbox_find(ctx->reg, sandbox) : NULL;
    struct audit_query *q = calloc(1, sizeof(*q));
    if (!q || (sandbox && !(q->sandbox = strdup(sb ? sb->id : sandbox))) ||
        (since && !(q->since = strdup(since))) || (until && !(q->until = strdup(until))) ||
        (event && !(q->event = strdup(event)))) {
        if (q)
            query_free(q);
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    q->ctx = ctx;
    q->req = req;
    q->limit = limit;
    q->work.data = q;
    int r = uv_queue_work(ctx->reg->loop, &q->work, query_work, query_done);
    if (r < 0) {
        query_free(q);
        http_respond_error(req, 500, "internal", "cannot queue the read: %s", uv_strerror(r));
    }
}
