/*
 * sessions — sandboxes bound to a session: recycled when the session is idle, restored by the
 * next call; and the records of deleted sandboxes, kept for a while for audit.
 *
 * A session is a client's conversation with its sandboxes (an agent's episode, say): a sandbox
 * created with a session id belongs to it. When none of the session's sandboxes has had an API
 * call (sandbox_touch) for a sandbox's idle_timeout_s, the registry's sweep recycles that sandbox:
 * its processes are stopped as by sandbox_stop() with a short grace period, its files stay, and
 * it is flagged `recycled` (sandbox_state_str() says "recycled"). A call that needs it running
 * restores it first (sandbox_ensure_running()): a new init on the same files, same id and name,
 * then the call goes on. Sandboxes without a session are stopped when idle, as before, and stay
 * stopped until started.
 *
 * Released records: when a sandbox is deleted its store record is replaced by a released one
 * (its record plus deleted_at), kept reg->released_ttl_s seconds, then purged by the sweep. They
 * survive daemon restarts (store kind STORE_RELEASED).
 *
 * Threading: the loop thread only.
 */
#ifndef WARREN_SESSION_SESSIONS_H
#define WARREN_SESSION_SESSIONS_H

#include <jansson.h>

#include "session/sandbox.h"

/* How long the processes of a sandbox being recycled get to exit on SIGTERM. */
#define SESSIONS_RECYCLE_GRACE_S 2.0

/* A session id: 1 to SANDBOX_SESSION_MAX characters of [A-Za-z0-9_.:-]. */
int sessions_valid_id(const char *s);

/* Recycles a running or paused sandbox of a session (audit "sandbox.recycle"): as sandbox_stop()
 * with SESSIONS_RECYCLE_GRACE_S, the sandbox flagged recycled. 0 or the error of sandbox_stop(). */
int sessions_recycle(struct sandbox *sb);

/* Makes a recycled sandbox (sb->recycled) run again for a call that needs it: restores it with
 * sandbox_start() once it is stopped (audit "sandbox.restore"; sb->restored_at set). Calls made
 * during a restore wait for the same one. Returns SESSION_OK, then `cb` runs later (never before
 * this returns) with SESSION_OK once it runs, or the error of the restore (SESSION_ERR_SETUP: it
 * stays recycled; SESSION_ERR_DELETED; SESSION_ERR_SHUTTING_DOWN); or at once
 * SESSION_ERR_STATE (not recycled), SESSION_ERR_NOMEM or the error of sandbox_start(), with the
 * reason in msg. */
enum session_err sandbox_ensure_running(struct sandbox *sb, sandbox_start_cb cb, void *arg,
                                        char *msg, size_t msglen);

/* A released record: a deleted sandbox's store record (sandbox_record()) with "deleted_at_s". */
struct released {
    struct released *next;
    double deleted_at;
    json_t *record; /* owned */
};
/* Keeps the record of a sandbox being deleted (called by the registry; pool members that were
 * never claimed are not kept). Writes it to the store. */
void sessions_released_add(const struct sandbox *sb);
/* Reads the released records of the store (registry_recover()). */
void sessions_released_load(struct registry *reg);
/* Purges records older than reg->released_ttl_s (the registry's sweep). */
void sessions_released_sweep(struct registry *reg, double now);
void sessions_released_free(struct registry *reg);

/* The sweep's idle check: the latest activity of each session (an object session id → epoch
 * seconds; NULL when no sandbox has a session). New reference. */
json_t *sessions_last_active(const struct registry *reg);

#endif
