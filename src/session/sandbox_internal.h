/*
 * sandbox_internal — what sandbox.c shares with lifecycle.c, sandbox_disk.c and recovery.c, the
 * other files of the registry, and with sessions.c and pool.c, which change sandboxes' records. Not
 * for use outside them.
 */
#ifndef WARREN_SESSION_SANDBOX_INTERNAL_H
#define WARREN_SESSION_SANDBOX_INTERNAL_H

#include <jansson.h>
#include <stddef.h>
#include <uv.h>

#include "session/sandbox.h"

#define SWEEP_MS 1000 /* how often registry_sweep() runs */

/* <state_dir>/sandboxes/<id>[/sub] of a sandbox. */
void sandbox_dir(const struct sandbox *sb, char *out, size_t cap, const char *sub);
/* The path of sandbox `id`'s disk image. */
void sandbox_image(const struct registry *reg, const char *id, char *out, size_t cap);
/* What the store keeps of a sandbox: its spec and identity (a new object, NULL without memory). */
json_t *sandbox_record(const struct sandbox *sb);
/* Writes the sandbox's record to the store (its spec, limits and identity). */
void sandbox_save(const struct sandbox *sb);
/* The registry's sweep timer: deletes sandboxes past their ttl_s, stops idle ones. */
void registry_sweep(uv_timer_t *t);
/* Calls the registry's idle_cb once it is shutting down and nothing is left in flight (creations,
 * deletions, volume operations: whatever counts in reg->pending). */
void registry_check_idle(struct registry *reg);
/* Shared with recovery.c, which takes over a previous daemon's sandboxes. */
/* The start time of process `pid` (field 22 of /proc/PID/stat), 0 if it is gone. */
unsigned long long sandbox_pid_start_time(pid_t pid);
/* The init's pidfd became readable: it exited. */
void sandbox_pid_on_event(uv_poll_t *h, int status, int events);
/* Polls the control channel for what there is to read and to send. */
void sandbox_ctl_update_events(struct sandbox *sb);
/* Makes the egress proxy of the sandbox's network policy run (or stop). 0 or -errno. */
int sandbox_apply_network(struct sandbox *sb);
/* Ends the processes the daemon was waiting for (the init went). */
void sandbox_fail_procs(struct sandbox *sb);
/* Frees a sandbox that is in no list and has no handle. */
void sandbox_free(struct sandbox *sb);
/* Removes sandbox `id`'s directory and disk image (its mounts first). 0 or the first -errno. */
int sandbox_remove_files(const struct registry *reg, const char *id);
/* Admission of a disk of `mib` MiB: 0, or -errno with the reason (for a person) in msg. */
int registry_disk_room(struct registry *reg, unsigned long long mib, char *msg, size_t msglen);

#endif
