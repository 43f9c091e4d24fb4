/*
 * snapshot — a template made of a sandbox as it is now: its image plus everything it changed
 * (its root and /workspace), taken while its processes are frozen so the layer is consistent;
 * the sandbox then runs on as before.
 */
#ifndef WARREN_SESSION_SNAPSHOT_H
#define WARREN_SESSION_SNAPSHOT_H

#include "session/sandbox.h"
#include "session/templates.h"

/* Snapshots `sb` into a new template `name`: a running sandbox is frozen (cgroup freezer) while
 * its changes are captured and thawed after; a paused or stopped one is taken as it is. cb runs
 * on the loop with the ready template, or NULL and why. At once (cb never runs):
 * SESSION_ERR_STATE (a sandbox of the host template, which has no image to build on, or one
 * being created, stopped, started or deleted), NAME_TAKEN, NOT_FOUND (its template is gone),
 * NOMEM; msg says it for a person. */
enum session_err sandbox_snapshot(struct sandbox *sb, struct template_set *ts, const char *name,
                                  template_ready_cb cb, void *arg, char *msg, size_t msglen);

/* The same for builds (session/build.h): the new template also gets the config `edits` of
 * oci_derive_ex() (image/oci.h; NULL: none), a history entry saying `created_by`, and is hidden
 * from listings when `hidden`. */
enum session_err sandbox_snapshot_derive(struct sandbox *sb, struct template_set *ts,
                                         const char *name, const char *edits,
                                         const char *created_by, int hidden, template_ready_cb cb,
                                         void *arg, char *msg, size_t msglen);

#endif
