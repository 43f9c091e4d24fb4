/*
 * batch — POST /batch: execute requests answered together, in order; queued all before any
 * starts, so the items of one slot run in array order and different slots in parallel.
 */
#include <stdlib.h>

#include "atropos/atropos_internal.h"

struct atropos_batch {
    http_req_t *req;
    json_t *results;
    struct atropos_job **jobs; /* NULL once answered */
    size_t n;
    size_t pending;
};

static void batch_respond(struct atropos_batch *b)
{
    http_req_set_abort_cb(b->req, NULL, NULL);
    http_respond_json(b->req, 200, b->results);
    free(b->jobs);
    free(b);
}

static void done_batch(struct atropos_job *job, int status, json_t *resp)
{
    struct atropos_batch *b = job->owner;
    (void)status;
    json_array_set_new(b->results, job->index, resp);
    b->jobs[job->index] = NULL;
    if (--b->pending == 0)
        batch_respond(b);
}

static void on_batch_gone(http_req_t *req, void *arg)
{
    struct atropos_batch *b = arg;
    (void)req;
    b->pending++; /* the batch must outlive the loops below */
    /* First mark them all: ending one lets its slot start the next, which may be ours. */
    for (size_t i = 0; i < b->n; i++)
        if (b->jobs[i])
            b->jobs[i]->abandoned = 1;
    for (size_t i = 0; i < b->n; i++)
        if (b->jobs[i])
            atropos_job_cancel(b->jobs[i]);
    if (--b->pending == 0)
        batch_respond(b);
}

void atropos_handle_batch(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    json_t *body = atropos_parse_body(req);
    if (!body)
        return;
    if (!json_is_array(body)) {
        json_decref(body);
        atropos_respond(req, 400, atropos_plain_fail("Expected array of requests"));
        return;
    }
    size_t n = json_array_size(body);
    struct atropos_batch *b = calloc(1, sizeof(*b));
    struct atropos_job **jobs = calloc(n ? n : 1, sizeof(*jobs));
    json_t *results = json_array();
    if (!b || !jobs || !results) {
        free(b);
        free(jobs);
        json_decref(results);
        json_decref(body);
        atropos_respond(req, 500, atropos_plain_fail("out of memory"));
        return;
    }
    b->req = req;
    b->results = results;
    b->jobs = jobs;
    b->n = n;
    /* Every item gets its answer in place; all are queued before any starts, so the items of
     * one slot run in array order. */
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(body, i);
        json_t *res = NULL;
        struct atropos_slot *s = NULL;
        if (!json_is_object(item))
            res = atropos_fail("Expected an object");
        else if (!(s = atropos_slot_find(a, json_object_get(item, "slot_id")))) {
            res = atropos_unknown_slot(json_object_get(item, "slot_id"));
            json_t *eid = json_object_get(item, "execution_id");
            json_object_set(res, "execution_id", eid ? eid : json_null());
        } else if (!(jobs[i] = atropos_job_new(s, JOB_EXECUTE, item, req, done_batch, b, i)))
            res = atropos_fail("out of memory");
        json_array_append_new(results, res ? res : json_null());
        if (jobs[i])
            b->pending++;
    }
    json_decref(body); /* the jobs hold their items */
    http_req_set_abort_cb(req, on_batch_gone, b);
    b->pending++; /* held while starting: jobs may finish at once */
    for (size_t i = 0; i < n; i++)
        if (jobs[i])
            atropos_job_enqueue(jobs[i]);
    for (unsigned k = 0; k < a->n; k++)
        atropos_slot_pump(&a->slots[k]);
    if (--b->pending == 0)
        batch_respond(b);
}
