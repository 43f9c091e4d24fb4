/*
 * sessions — recycle and restore of session sandboxes; released records. See sessions.h.
 */
#include "session/sessions.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "session/audit.h"
#include "session/sandbox_internal.h"

struct restore_waiter {
    struct restore_waiter *next;
    sandbox_start_cb cb;
    void *arg;
};

int sessions_valid_id(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > SANDBOX_SESSION_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("_.:-", s[i]))
            return 0;
    return 1;
}

/* Tells every waiter of a restore how it ended (in the order they came). */
static void restore_answer(struct sandbox *sb, enum session_err e, const char *msg)
{
    struct restore_waiter *w = sb->restore_waiters, *rev = NULL;
    sb->restore_waiters = NULL;
    while (w) {
        struct restore_waiter *next = w->next;
        w->next = rev;
        rev = w;
        w = next;
    }
    sandbox_ref(sb);
    while (rev) {
        struct restore_waiter *next = rev->next;
        rev->cb(sb, e, msg, rev->arg);
        free(rev);
        rev = next;
    }
    sandbox_unref(sb);
}

static void restore_done(struct sandbox *sb, enum session_err e, const char *msg, void *arg)
{
    (void)arg;
    sb->restoring = 0;
    if (e == SESSION_OK) {
        sb->restored_at = util_now();
        sandbox_touch(sb);
        sandbox_save(sb);
        log_info("sandbox %s (session %s) restored", sb->id, sb->session_id);
    }
    audit_record(sb->reg->audit, "sandbox.restore", sb->id, sb->labels,
                 e == SESSION_OK
                     ? json_pack("{s:b, s:s}", "ok", 1, "session_id", sb->session_id)
                     : json_pack("{s:b, s:s, s:s, s:s}", "ok", 0, "session_id", sb->session_id,
                                 "error", session_err_name(e), "message", msg ? msg : ""),
                 NULL);
    restore_answer(sb, e, msg);
}

/* Starts the restore of a stopped recycled sandbox; on failure its waiters are answered. */
static enum session_err restore_start(struct sandbox *sb, char *msg, size_t msglen)
{
    sb->restoring = 1;
    enum session_err e = sandbox_start(sb, restore_done, NULL, msg, msglen);
    if (e != SESSION_OK)
        sb->restoring = 0;
    return e;
}

static void recycle_stopped(struct sandbox *sb, int err, void *arg)
{
    char msg[512];
    enum session_err e;
    (void)arg;
    if (err < 0) {
        restore_answer(sb, SESSION_ERR_DELETED, "the sandbox was deleted while being recycled");
        return;
    }
    log_info("sandbox %s (session %s) recycled", sb->id, sb->session_id);
    /* Calls came while its processes were being stopped: they restore it now. */
    if (sb->restore_waiters && (e = restore_start(sb, msg, sizeof(msg))) != SESSION_OK)
        restore_answer(sb, e, msg);
}

int sessions_recycle(struct sandbox *sb)
{
    int r = sandbox_stop(sb, SESSIONS_RECYCLE_GRACE_S, recycle_stopped, NULL);
    if (r == 0) {
        /* In its record at once: a daemon that dies before the stop is done finds a session
         * sandbox to recycle (stopped) or to take over (its init still alive). */
        sb->recycled = 1;
        sandbox_save(sb);
    }
    return r;
}

enum session_err sandbox_ensure_running(struct sandbox *sb, sandbox_start_cb cb, void *arg,
                                        char *msg, size_t msglen)
{
    if (!sb->recycled) {
        snprintf(msg, msglen, "the sandbox is %s, not recycled", sandbox_state_str(sb));
        return SESSION_ERR_STATE;
    }
    struct restore_waiter *w = calloc(1, sizeof(*w));
    if (!w) {
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    w->cb = cb;
    w->arg = arg;
    /* Stopping: recycle_stopped() starts the restore; starting: one is under way. */
    if (sb->state == SB_STOPPED && !sb->restoring) {
        enum session_err e = restore_start(sb, msg, msglen);
        if (e != SESSION_OK) {
            free(w);
            return e;
        }
    } else if (sb->state != SB_STOPPING && !sb->restoring) {
        free(w);
        snprintf(msg, msglen, "the sandbox is %s", sandbox_state_str(sb));
        return SESSION_ERR_STATE;
    }
    w->next = sb->restore_waiters;
    sb->restore_waiters = w;
    return SESSION_OK;
}

/* ---- released records ----------------------------------------------------------------------- */

static void released_append(struct registry *reg, struct released *r)
{
    if (reg->released_tail)
        reg->released_tail->next = r;
    else
        reg->released_head = r;
    reg->released_tail = r;
}

void sessions_released_add(const struct sandbox *sb)
{
    struct registry *reg = sb->reg;
    if (reg->released_ttl_s <= 0 || json_object_get(sb->labels, "warren.pool"))
        return;
    struct released *r = calloc(1, sizeof(*r));
    json_t *rec = sandbox_record(sb);
    char *text = NULL;
    if (!r || !rec) {
        free(r);
        json_decref(rec);
        return;
    }
    r->deleted_at = util_now();
    r->record = rec;
    json_object_set_new(rec, "state", json_string("deleted"));
    json_object_set_new(rec, "deleted_at_s", json_real(r->deleted_at));
    if ((text = json_dumps(rec, JSON_COMPACT)))
        store_put(reg->store, STORE_RELEASED, sb->id, text);
    free(text);
    released_append(reg, r);
}

static void load_one(const char *id, const char *text, void *arg)
{
    struct registry *reg = arg;
    json_t *rec = json_loads(text, 0, NULL);
    struct released *r = rec ? calloc(1, sizeof(*r)) : NULL;
    if (!r) {
        json_decref(rec);
        store_delete(reg->store, STORE_RELEASED, id);
        return;
    }
    r->record = rec;
    r->deleted_at = json_number_value(json_object_get(rec, "deleted_at_s"));
    /* Kept in order of deletion, which the sweep relies on: insert in place. */
    struct released **p = &reg->released_head;
    while (*p && (*p)->deleted_at <= r->deleted_at)
        p = &(*p)->next;
    r->next = *p;
    *p = r;
    if (!r->next)
        reg->released_tail = r;
}

void sessions_released_load(struct registry *reg)
{
    store_list(reg->store, STORE_RELEASED, load_one, reg);
}

void sessions_released_sweep(struct registry *reg, double now)
{
    while (reg->released_head && now - reg->released_head->deleted_at >= reg->released_ttl_s) {
        struct released *r = reg->released_head;
        reg->released_head = r->next;
        if (!reg->released_head)
            reg->released_tail = NULL;
        store_delete(reg->store, STORE_RELEASED,
                     json_string_value(json_object_get(r->record, "id")) ?: "");
        json_decref(r->record);
        free(r);
    }
}

void sessions_released_free(struct registry *reg)
{
    while (reg->released_head) {
        struct released *r = reg->released_head;
        reg->released_head = r->next;
        json_decref(r->record);
        free(r);
    }
    reg->released_tail = NULL;
}

json_t *sessions_last_active(const struct registry *reg)
{
    json_t *m = NULL;
    for (const struct sandbox *sb = reg->head; sb; sb = sb->next) {
        if (!sb->session_id[0])
            continue;
        if (!m && !(m = json_object()))
            return NULL;
        json_t *v = json_object_get(m, sb->session_id);
        if (!v || json_real_value(v) < sb->last_active_at)
            json_object_set_new(m, sb->session_id, json_real(sb->last_active_at));
    }
    return m;
}
