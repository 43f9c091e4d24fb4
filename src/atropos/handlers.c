/*
 * handlers — the protocol's HTTP routes (but /batch): /execute, /reset, the /artifacts routes,
 * /health and /slots.
 *
 * Where the protocol leaves details open, the seed server's observable behaviour is followed
 * (messages, defaults, Python's way of printing values), except where it behaves badly: a
 * timeout kills everything the command started, a stateful timeout interrupts the command but
 * keeps the shell, symlinks are resolved inside the sandbox, never on the host.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atropos/atropos_internal.h"
#include "net/dispatch.h"
#include "session/audit.h"

void atropos_respond(http_req_t *req, int status, json_t *o)
{
    http_respond_json(req, status,
                      o ? o : json_pack("{s:b, s:s}", "success", 0, "error", "out of memory"));
}

/* Parses a POST body; answers 400 "Invalid JSON" and returns NULL if it is not JSON. */
json_t *atropos_parse_body(http_req_t *req)
{
    size_t len;
    json_error_t je;
    const char *text = http_req_body(req, &len);
    json_t *v = json_loadb(text ? text : "", len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!v)
        atropos_respond(req, 400, atropos_plain_fail("Invalid JSON"));
    return v;
}

/* The body as an object; answers 400 otherwise. */
static json_t *parse_object(http_req_t *req)
{
    json_t *v = atropos_parse_body(req);
    if (v && !json_is_object(v)) {
        json_decref(v);
        atropos_respond(req, 400, atropos_plain_fail("Expected a JSON object"));
        return NULL;
    }
    return v;
}

/* Records a tool call in the audit log: the slot, the tool, and the command or path it acts on
 * (never file contents or keys typed). */
static void execute_audit(struct atropos_job *job, const char *tool, json_t *args)
{
    struct atropos_slot *s = job->slot;
    json_t *cmd = json_object_get(args, "command"), *path = json_object_get(args, "path");
    json_t *desc = json_is_string(cmd) ? json_pack("{s:O}", "shell", cmd) : json_object();
    json_t *o = audit_command(desc);
    json_decref(desc);
    json_object_set_new(o, "slot", json_string(s->name));
    json_object_set_new(o, "tool", tool ? json_string(tool) : json_null());
    if (json_is_string(path))
        json_object_set(o, "path", path);
    json_object_set_new(o, "ok", json_true());
    audit_record(s->a->audit, "atropos.execute", s->sb ? s->sb->id : NULL,
                 s->sb ? s->sb->labels : NULL, o, http_req_peer(job->req));
}

void atropos_execute_start(struct atropos_job *job)
{
    json_t *tv = json_object_get(job->body, "tool");
    json_t *args = json_object_get(job->body, "args");
    const char *tool = json_is_string(tv) ? json_string_value(tv) : NULL;
    json_t *empty = NULL;
    execute_audit(job, tool, args);
    if (!args || json_is_null(args))
        args = empty = json_object();
    if (!json_is_object(args)) {
        atropos_job_finish(job, 200, atropos_fail("Invalid args: expected an object"));
        return;
    }
    if (tool && strcmp(tool, "bash") == 0)
        atropos_tool_bash(job, args);
    else if (tool && strcmp(tool, "bash_stateful") == 0)
        atropos_tool_stateful(job, args);
    else if (tool && strcmp(tool, "read_file") == 0)
        atropos_tool_file(job, args, 0);
    else if (tool && strcmp(tool, "write_file") == 0)
        atropos_tool_file(job, args, 1);
    else if (tool && strcmp(tool, "tmux") == 0)
        atropos_tool_tmux(job, args);
    else {
        buf_t t = BUF_INIT;
        if (tv)
            atropos_py_str(tv, &t);
        atropos_job_finish(job, 200, atropos_fail("Unknown tool: %s", t.data ? t.data : ""));
        buf_free(&t);
    }
    json_decref(empty); /* args is borrowed by nothing that outlives the call */
}

static void done_single(struct atropos_job *job, int status, json_t *resp)
{
    http_req_t *req = job->owner;
    http_req_set_abort_cb(req, NULL, NULL);
    atropos_respond(req, status, resp);
}

static void on_single_gone(http_req_t *req, void *arg)
{
    (void)req;
    atropos_job_cancel(arg);
}

/* Queues one job answered by its own request. */
static void submit_single(struct atropos_slot *s, enum atropos_job_kind kind, http_req_t *req,
                          json_t *body)
{
    struct atropos_job *job = atropos_job_new(s, kind, body, req, done_single, req, 0);
    if (!job) {
        atropos_respond(req, 500, atropos_plain_fail("out of memory"));
        return;
    }
    http_req_set_abort_cb(req, on_single_gone, job);
    atropos_job_enqueue(job);
    atropos_slot_pump(s);
}

/* "Unknown slot: X", X printed as the reference does (absent → "", null → None). */
json_t *atropos_unknown_slot(json_t *id)
{
    buf_t b = BUF_INIT;
    if (id)
        atropos_py_str(id, &b);
    json_t *o = atropos_fail("Unknown slot: %s", b.data ? b.data : "");
    buf_free(&b);
    return o;
}

static void atropos_execute(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    json_t *body = parse_object(req);
    if (!body)
        return;
    json_t *sid = json_object_get(body, "slot_id");
    struct atropos_slot *s = atropos_slot_find(a, sid);
    if (!s) {
        json_t *o = atropos_unknown_slot(sid);
        json_t *eid = json_object_get(body, "execution_id");
        json_object_set(o, "execution_id", eid ? eid : json_null());
        atropos_respond(req, 200, o);
    } else {
        submit_single(s, JOB_EXECUTE, req, body);
    }
    json_decref(body);
}

static void atropos_reset(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    json_t *body = parse_object(req);
    if (!body)
        return;
    json_t *sid = json_object_get(body, "slot_id");
    struct atropos_slot *s = atropos_slot_find(a, sid);
    if (!s)
        atropos_respond(req, 200, atropos_unknown_slot(sid));
    else
        submit_single(s, JOB_RESET, req, body);
    json_decref(body);
}

static void artifacts(struct atropos *a, http_req_t *req, enum atropos_job_kind kind)
{
    json_t *body = parse_object(req);
    if (!body)
        return;
    json_t *sid = json_object_get(body, "slot_id");
    struct atropos_slot *s = atropos_slot_find(a, sid);
    if (!s) {
        buf_t b = BUF_INIT;
        if (sid)
            atropos_py_str(sid, &b);
        atropos_respond(req, 404, atropos_plain_fail("Unknown slot: %s", b.data ? b.data : ""));
        buf_free(&b);
        json_decref(body);
        return;
    }
    if (kind == JOB_ART_ARCHIVE) {
        buf_t fmt = BUF_INIT;
        json_t *fv = json_object_get(body, "format");
        atropos_py_name(fv, "tar.gz", &fmt);
        if (strcmp(fmt.data, "tar.gz") != 0 && strcmp(fmt.data, "tgz") != 0) {
            buf_t given = BUF_INIT;
            atropos_py_str(fv, &given);
            atropos_respond(req, 400,
                            atropos_plain_fail("Unsupported archive format: %s", given.data));
            buf_free(&given);
            buf_free(&fmt);
            json_decref(body);
            return;
        }
        buf_free(&fmt);
    }
    submit_single(s, kind, req, body);
    json_decref(body);
}

static void atropos_artifacts_read(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    artifacts(a, req, JOB_ART_READ);
}

static void atropos_artifacts_list(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    artifacts(a, req, JOB_ART_LIST);
}

static void atropos_artifacts_archive(struct atropos *a, http_req_t *req,
                                      const struct route_params *p)
{
    (void)p;
    artifacts(a, req, JOB_ART_ARCHIVE);
}

static void sandboxes_dir(struct atropos *a, buf_t *out)
{
    buf_appendf(out, "%s/sandboxes", a->reg->state_dir);
}

static void atropos_health(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    unsigned busy = 0;
    for (unsigned i = 0; i < a->n; i++)
        busy += a->slots[i].cur != NULL;
    buf_t dir = BUF_INIT;
    sandboxes_dir(a, &dir);
    /* bwrap_available: warren's own isolation, which every slot always runs under. */
    atropos_respond(req, 200,
                    json_pack("{s:s, s:i, s:i, s:i, s:s, s:b, s:s}", "status", "ok", "slots",
                              (int)a->n, "available", (int)(a->n - busy), "executing", (int)busy,
                              "data_dir", dir.data, "bwrap_available", 1, "stateful_dir",
                              dir.data));
    buf_free(&dir);
}

static void atropos_slots(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    json_t *arr = json_array();
    for (unsigned i = 0; i < a->n; i++) {
        struct atropos_slot *s = &a->slots[i];
        /* The host directory of the slot's workspace (of the sandbox being created, if any). */
        struct sandbox *sb =
            s->sb && s->sb->state == SB_RUNNING ? s->sb : sandbox_find(a->reg, s->name);
        buf_t dir = BUF_INIT;
        sandboxes_dir(a, &dir);
        buf_appendf(&dir, "/%s%s", sb ? sb->id : s->name, sb ? "/workspace" : "");
        json_t *eid = s->cur && s->cur->kind == JOB_EXECUTE
                          ? json_object_get(s->cur->body, "execution_id")
                          : NULL;
        json_array_append_new(arr,
                              json_pack("{s:s, s:s, s:s, s:O}", "slot_id", s->name, "state",
                                        s->cur ? "executing" : "available", "workspace_dir",
                                        dir.data, "current_execution_id", eid ? eid : json_null()));
        buf_free(&dir);
    }
    atropos_respond(req, 200, json_pack("{s:o}", "slots", arr));
}

typedef void (*atropos_handler_fn)(struct atropos *a, http_req_t *req,
                                   const struct route_params *p);

static const struct route routes[] = {
    {"POST", "/execute", atropos_execute},
    {"POST", "/batch", atropos_handle_batch},
    {"GET", "/health", atropos_health},
    {"POST", "/reset", atropos_reset},
    {"GET", "/slots", atropos_slots},
    {"POST", "/artifacts/read", atropos_artifacts_read},
    {"POST", "/artifacts/list", atropos_artifacts_list},
    {"POST", "/artifacts/archive", atropos_artifacts_archive},
};

int atropos_route(struct atropos *a, http_req_t *req)
{
    struct route_params params;
    int i = dispatch_match(routes, sizeof(routes) / sizeof(routes[0]), req, &params);
    if (i == -ENOENT)
        return 0;
    if (i >= 0 && a->stopping)
        http_respond_error(req, 503, "unavailable", "the daemon is shutting down");
    else if (i >= 0)
        ((atropos_handler_fn)routes[i].handler)(a, req, &params);
    return 1;
}
