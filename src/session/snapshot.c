/*
 * snapshot — see snapshot.h.
 */
#include "session/snapshot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "session/sandbox_internal.h"

struct snapshot_call {
    struct sandbox *sb; /* referenced */
    struct template_set *ts;
    char name[TEMPLATE_NAME_MAX];
    int thaw; /* we froze it: thaw it when done */
    template_ready_cb cb;
    void *arg;
    char *edits; /* owned */
    char created_by[1024];
    int hidden;
};

static void finish(struct snapshot_call *c, struct template *tpl, enum session_err err,
                   const char *msg)
{
    if (c->thaw && c->sb->state == SB_PAUSED && sandbox_resume(c->sb) < 0)
        log_warn("snapshot: cannot thaw sandbox %s", c->sb->id);
    c->cb(tpl, err, msg, c->arg);
    sandbox_unref(c->sb);
    free(c->edits);
    free(c);
}

static void on_captured(struct template *tpl, enum session_err err, const char *msg, void *arg)
{
    finish(arg, tpl, err, msg);
}

static enum session_err capture(struct snapshot_call *c, char *msg, size_t msglen)
{
    struct sandbox *sb = c->sb;
    struct template *base = templates_find(c->ts, sb->template_name);
    char upper[1200];
    if (!base) {
        snprintf(msg, msglen, "the sandbox's template '%s' is gone", sb->template_name);
        return SESSION_ERR_NOT_FOUND;
    }
    sandbox_dir(sb, upper, sizeof(upper), "upper");
    struct template_derive d = {.upper = upper,
                                .host_base = sandbox_host_uid(sb),
                                .count = SANDBOX_UID_RANGE,
                                .edits = c->edits,
                                .created_by = c->created_by,
                                .hidden = c->hidden};
    return templates_derive(c->ts, c->name, base, &d, on_captured, c, msg, msglen);
}

static void on_frozen(struct sandbox *sb, int err, void *arg)
{
    struct snapshot_call *c = arg;
    char msg[512];
    (void)sb;
    if (err < 0) {
        snprintf(msg, sizeof(msg), "cannot freeze the sandbox: %s", strerror(-err));
        c->thaw = 0;
        finish(c, NULL, err == -ESRCH ? SESSION_ERR_DELETED : SESSION_ERR_STATE, msg);
        return;
    }
    enum session_err e = capture(c, msg, sizeof(msg));
    if (e)
        finish(c, NULL, e, msg);
}

enum session_err sandbox_snapshot(struct sandbox *sb, struct template_set *ts, const char *name,
                                  template_ready_cb cb, void *arg, char *msg, size_t msglen)
{
    return sandbox_snapshot_derive(sb, ts, name, NULL, "warren snapshot", 0, cb, arg, msg, msglen);
}

enum session_err sandbox_snapshot_derive(struct sandbox *sb, struct template_set *ts,
                                         const char *name, const char *edits,
                                         const char *created_by, int hidden, template_ready_cb cb,
                                         void *arg, char *msg, size_t msglen)
{
    if (!sb->image) {
        snprintf(msg, msglen,
                 "sandbox %s is of the host template, which has no image to build on: only "
                 "sandboxes of an image can be snapshotted",
                 sb->name);
        return SESSION_ERR_STATE;
    }
    if (sb->state != SB_RUNNING && sb->state != SB_PAUSED && sb->state != SB_STOPPED) {
        snprintf(msg, msglen, "the sandbox is %s", sandbox_state_name(sb->state));
        return SESSION_ERR_STATE;
    }
    if (templates_find(ts, name)) {
        snprintf(msg, msglen, "a template named '%s' exists", name);
        return SESSION_ERR_NAME_TAKEN;
    }
    struct snapshot_call *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    *c = (struct snapshot_call){sb, ts, "", 0, cb, arg, NULL, "", hidden};
    if (edits && !(c->edits = strdup(edits))) {
        free(c);
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->created_by, sizeof(c->created_by), "%s", created_by);
    sandbox_ref(sb);
    if (sb->state == SB_RUNNING) {
        int r = sandbox_pause(sb, on_frozen, c);
        if (r < 0) {
            sandbox_unref(sb);
            free(c->edits);
            free(c);
            snprintf(msg, msglen, "cannot freeze the sandbox: %s",
                     r == -ENOTSUP ? "this daemon has no cgroup freezer" : strerror(-r));
            return SESSION_ERR_STATE;
        }
        c->thaw = 1;
        return SESSION_OK;
    }
    enum session_err e = capture(c, msg, msglen);
    if (e) {
        sandbox_unref(sb);
        free(c->edits);
        free(c);
    }
    return e;
}
