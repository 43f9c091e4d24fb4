/*
 * logs — a sandbox's log (session/sblog.h): GET /v1/sandboxes/{id}/logs?tail=N&follow=1 as plain
 * text. With follow=1 the answer is chunked and goes on with new output until the client goes
 * away, the daemon stops or the sandbox is deleted.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "session/sblog.h"

struct logs_follow {
    http_req_t *req;
    struct sandbox *sb;
    struct sblog_follow *follow;
    uint64_t off;
};

/* Writes what the client has not had yet, as far as the connection takes it: a follower that
 * reads slower than the sandbox writes skips what the log dropped meanwhile. */
static void follow_pump(struct logs_follow *lf)
{
    char chunk[16384];
    uint64_t start, end;
    sblog_range(lf->sb, &start, &end);
    if (lf->off < start)
        lf->off = start;
    while (lf->off < end && http_respond_buffered(lf->req) < HTTP_RESPOND_HIGH_WATER) {
        size_t n = sblog_read(lf->sb, lf->off, chunk, sizeof(chunk));
        if (n == 0 || http_respond_write(lf->req, chunk, n) < 0)
            break; /* a client that went away is ended by the abort callback */
        lf->off += n;
    }
}

static void follow_end(struct logs_follow *lf)
{
    sblog_unfollow(lf->follow);
    http_respond_end(lf->req);
    free(lf);
}

static void on_log_update(void *arg, int closed)
{
    if (closed)
        follow_end(arg);
    else
        follow_pump(arg);
}

static void on_drain(http_req_t *req, void *arg)
{
    follow_pump(arg);
}

static void on_abort(http_req_t *req, void *arg)
{
    follow_end(arg);
}

void api_sandbox_logs(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const allowed[] = {"tail", "follow", NULL};
    static const char *const text = "text/plain; charset=utf-8";
    if (api_check_query(req, allowed) < 0)
        return;
    const char *tail = http_req_query(req, "tail"), *follow = http_req_query(req, "follow");
    char *endp = NULL;
    unsigned long long lines = 0;
    if (tail) {
        errno = 0;
        lines = strtoull(tail, &endp, 10);
        if (!*tail || *endp || *tail == '-' || errno) {
            http_respond_error(req, 400, "bad_request", "tail must be a number of lines");
            return;
        }
    }
    if (follow && strcmp(follow, "0") && strcmp(follow, "1") && strcmp(follow, "false") &&
        strcmp(follow, "true")) {
        http_respond_error(req, 400, "bad_request", "follow must be 0, 1, false or true");
        return;
    }
    struct sandbox *sb = api_find_sandbox(ctx, req, p);
    if (!sb)
        return;
    uint64_t start, end;
    sblog_range(sb, &start, &end);
    if (tail)
        start = sblog_tail(sb, lines);
    if (!follow || !strcmp(follow, "0") || !strcmp(follow, "false")) {
        char *body = malloc(end - start + 1);
        if (!body) {
            http_respond_error(req, 500, "internal", "out of memory");
            return;
        }
        size_t n = sblog_read(sb, start, body, end - start);
        http_respond(req, 200, text, body, n, NULL);
        free(body);
        return;
    }
    struct logs_follow *lf = calloc(1, sizeof(*lf));
    if (!lf || !(lf->follow = sblog_follow(sb, on_log_update, lf))) {
        free(lf);
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    lf->req = req;
    lf->sb = sb;
    lf->off = start;
    /* Headers first, so that a client sees the answer start even while the log is quiet. */
    http_respond_start(req, 200, text, -1, NULL);
    http_req_set_abort_cb(req, on_abort, lf);
    http_respond_on_drain(req, on_drain, lf);
    follow_pump(lf);
}
