/*
 * sandbox_internal — what sandbox.c shares with lifecycle.c and sandbox_disk.c, the other files
 * of the registry, and with sessions.c and pool.c, which change sandboxes' records. Not for use
 * outside them.
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
/* Admission of a disk of `mib` MiB: 0, or -errno with the reason (for a person) in msg. */
int registry_disk_room(struct registry *reg, unsigned long long mib, char *msg, size_t msglen);

#endif
