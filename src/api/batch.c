/*
 * batch — POST /v1/batch: many execs in one request. Items run in parallel across sandboxes and
 * one after another within a sandbox; results come back in request order. A bad item (unknown
 * sandbox, invalid body) gets an {"error": ...} result and does not fail the batch.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/json.h"
#include "session/exec.h"

#define MAX_ITEMS 1024
#define ERRLEN 256

struct batch;

struct item {
    struct batch *b;
    size_t idx;
    size_t next; /* next item of the same sandbox (lane), or SIZE_MAX */
    struct sandbox *sb;
    struct exec *ex;
    json_t *body; /* borrowed from the request array */
};

struct batch {
    http_req_t *req;
    json_t *body;
    json_t *results;
    struct item *items;
    size_t n;
    size_t running; /* lanes in flight */
    int gone;
    struct api_ctx *ctx;
};

static void batch_finish(struct batch *b)
{
    http_req_set_abort_cb(b->req, NULL, NULL);
    if (b->gone)
        http_respond(b->req, 499, "text/plain", "", 0, NULL);
    else
        http_respond_json(b->req, 200, json_incref(b->results));
    for (size_t i = 0; i < b->n; i++)
        if (b->items[i].sb)
            sandbox_unref(b->items[i].sb);
    json_decref(b->results);
    json_decref(b->body);
    free(b->items);
    free(b);
}

static void set_error(struct batch *b, size_t idx, int status, const char *msg)
{
    json_array_set_new(
        b->results, idx,
        json_pack("{s:{s:s, s:s}}", "error", "code", api_status_code(status), "message", msg));
}

/* An item the session layer refused with -errno `r`. */
static void set_errno(struct batch *b, size_t idx, int r)
{
    json_array_set_new(b->results, idx,
                       json_pack("{s:{s:s, s:s}}", "error", "code", api_errno_code(r), "message",
                                 session_strerror(r)));
}

static void on_item_done(struct exec *ex, struct exec_result *res, void *arg);

/* The audit fields of an item: its command and its place in the batch. */
static json_t *audit_item(const struct item *it, const struct api_run *run)
{
    json_t *o = api_audit_command(it->body, run);
    json_object_set_new(o, "index", json_integer((json_int_t)it->idx));
    return o;
}

/* Starts item `idx` or, if it cannot start, records why and moves on along its lane. Returns 1
 * if an exec is now running for the lane, 0 if the lane is finished. */
static int lane_run(struct batch *b, size_t idx)
{
    char err[ERRLEN];
    for (; idx != SIZE_MAX; idx = b->items[idx].next) {
        struct item *it = &b->items[idx];
        struct api_run run;
        if (b->gone) {
            set_error(b, idx, 503, "the client went away");
            continue;
        }
        if (it->sb->state != SB_RUNNING) {
            api_audit(b->ctx, b->req, "batch", it->sb, 409, audit_item(it, NULL));
            set_errno(b, idx, sandbox_unavailable(it->sb));
            continue;
        }
        static const char *const extra[] = {"sandbox", NULL};
        int status = api_parse_run(b->ctx, it->sb, it->body, extra, &run, err, ERRLEN);
        if (status == 0) {
            struct exec_spec spec = {
                .argv = run.argv,
                .env = (const char *const *)run.env,
                .cwd = run.cwd,
                .user = run.has_user ? &run.user : NULL,
                .stdin_data = run.stdin_data_ref,
                .stdin_len = run.stdin_len,
                .timeout_s = run.timeout_s,
                .max_output = run.max_output,
            };
            int r = exec_start(it->sb, &spec, on_item_done, it, &it->ex);
            if (r < 0) {
                status = api_errno_status(r);
                snprintf(err, ERRLEN, "%s", session_strerror(r));
            }
        }
        api_audit(b->ctx, b->req, "batch", it->sb, status ? status : 200,
                  audit_item(it, status ? NULL : &run));
        api_run_free(&run);
        if (status == 0)
            return 1;
        set_error(b, idx, status, err);
    }
    return 0;
}

static void on_item_done(struct exec *ex, struct exec_result *res, void *arg)
{
    struct item *it = arg;
    struct batch *b = it->b;
    (void)ex;
    it->ex = NULL;
    json_array_set_new(b->results, it->idx, api_exec_result_json(res));
    if (!lane_run(b, it->next) && --b->running == 0)
        batch_finish(b);
}

static void on_client_gone(http_req_t *req, void *arg)
{
    struct batch *b = arg;
    (void)req;
    b->gone = 1;
    for (size_t i = 0; i < b->n; i++)
        if (b->items[i].ex)
            exec_cancel(b->items[i].ex);
}

void api_batch(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    size_t len;
    json_error_t je;
    (void)p;
    if (api_check_query(req, NULL) < 0)
        return;
    const char *text = http_req_body(req, &len);
    json_t *body = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!body) {
        http_respond_error(req, 400, "bad_request", "malformed JSON: %s (line %d, column %d)",
                           je.text, je.line, je.column);
        return;
    }
    if (!json_is_array(body)) {
        json_decref(body);
        http_respond_error(req, 400, "bad_request", "the body must be a JSON array of commands");
        return;
    }
    size_t n = json_array_size(body);
    if (n > MAX_ITEMS) {
        json_decref(body);
        http_respond_error(req, 413, "payload_too_large", "at most %d commands per batch",
                           MAX_ITEMS);
        return;
    }
    struct batch *b = calloc(1, sizeof(*b));
    struct item *items = calloc(n ? n : 1, sizeof(*items));
    if (!b || !items) {
        free(b);
        free(items);
        json_decref(body);
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    b->req = req;
    b->body = body;
    b->ctx = ctx;
    b->items = items;
    b->n = n;
    b->results = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(b->results, json_null());

    /* Resolve sandboxes and chain the items of each sandbox into a lane. */
    size_t *heads = calloc(n ? n : 1, sizeof(size_t)), nheads = 0;
    for (size_t i = 0; i < n && heads; i++) {
        struct item *it = &items[i];
        it->b = b;
        it->idx = i;
        it->next = SIZE_MAX;
        it->body = json_array_get(body, i);
        const char *name = NULL;
        json_t *sbv = json_is_object(it->body) ? json_object_get(it->body, "sandbox") : NULL;
        if (!json_is_object(it->body)) {
            set_error(b, i, 400, "each item must be a JSON object");
            continue;
        }
        if (!sbv || !json_is_string(sbv) || !*(name = json_string_value(sbv))) {
            set_error(b, i, 400, "'sandbox' (id or name) is required");
            continue;
        }
        it->sb = sandbox_find(ctx->reg, name);
        if (it->sb)
            sandbox_touch(it->sb);
        if (it->sb && it->sb->state != SB_RUNNING && sandbox_unavailable(it->sb) == -ESHUTDOWN) {
            it->sb = NULL;
            set_errno(b, i, -ESHUTDOWN);
            continue;
        }
        if (!it->sb || it->sb->state != SB_RUNNING) {
            char msg[300];
            snprintf(msg, sizeof(msg), "sandbox '%s' not found", name);
            it->sb = NULL;
            set_error(b, i, 404, msg);
            continue;
        }
        sandbox_ref(it->sb);
        size_t prev = SIZE_MAX;
        for (size_t j = i; j-- > 0;)
            if (items[j].sb == it->sb) {
                prev = j;
                break;
            }
        if (prev != SIZE_MAX)
            items[prev].next = i;
        else
            heads[nheads++] = i;
    }
    if (!heads) {
        b->gone = 0;
        for (size_t i = 0; i < n; i++)
            set_error(b, i, 500, "out of memory");
    }
    http_req_set_abort_cb(req, on_client_gone, b);
    b->running = 1; /* held while starting, so a lane finishing at once cannot end the batch */
    for (size_t h = 0; h < nheads; h++)
        if (lane_run(b, heads[h]))
            b->running++;
    free(heads);
    if (--b->running == 0)
        batch_finish(b);
}
