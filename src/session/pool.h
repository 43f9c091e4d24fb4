/*
 * pool — warm pools: sandboxes created ahead of time, handed out by a create whose spec matches.
 *
 * A pool is a name, what its sandboxes are made of (the host or a template, or an image), their
 * resources and network policy, and a size. Its members are ordinary sandboxes (created with ttl
 * and idle timeout 0, named by their id) labelled `warren.pool=NAME` while unclaimed. A create
 * that matches a pool (same template or image, resources and network; no secrets, whose files are
 * put in place when a sandbox's init starts) takes a ready member: the member is renamed, gets the
 * create's labels, env, session, ttl_s and idle_timeout_s, and is the caller's from then on. Its
 * hostname stays the member's (its id): the host name is set when the init starts. The pool then
 * makes a new member in the background, one creation at a time for all pools.
 *
 * Pools are store records (STORE_POOL) and come back with the daemon; their members come back as
 * any sandbox does (registry_recover()) and pools_open() finds them by their label.
 *
 * Errors: 0 or -errno; creations report session errors. Threading: the loop thread only.
 */
#ifndef WARREN_SESSION_POOL_H
#define WARREN_SESSION_POOL_H

#include <jansson.h>
#include <uv.h>

#include "session/sandbox.h"

#define POOL_LABEL "warren.pool"
#define POOL_NAME_MAX 64

struct template_set;
struct pool;

struct pools {
    struct registry *reg;
    struct template_set *templates;
    uv_timer_t fill_timer; /* the next background creation (unreferenced) */
    int filling;           /* a creation is under way */
    int closing;
    struct pool *head;
};

/* What a pool is set to (PUT /v1/pools/{name}). */
struct pool_spec {
    const char *template_name; /* "host" or a template; NULL when image is set */
    const char *image;         /* an image reference, or NULL */
    unsigned size;
    struct sandbox_resources res; /* complete */
    json_t *network;              /* a policy as network_to_json() writes it (borrowed) */
};

/* What a pool is now (GET /v1/pools). */
struct pool_info {
    const char *name;
    const char *template_name; /* NULL when image is set */
    const char *image;
    unsigned size, ready, starting;
    unsigned long long claimed, misses;
    struct sandbox_resources res;
    const json_t *network;
    const char *last_error; /* why the last creation failed, or NULL */
};

/* Loads the pools of the store and takes their members back from the registry (after
 * registry_recover()); members that are not running or no longer match are deleted. Starts
 * filling. 0 or -ENOMEM. */
int pools_open(struct pools *ps, struct registry *reg, struct template_set *templates);
/* Stops filling and lets go of the members (they stay, as every sandbox does). */
void pools_close(struct pools *ps);

/* Creates or changes pool `name`. A change of what its members are made of (template, image,
 * resources, network) deletes its unclaimed members and makes new ones; a smaller size deletes
 * the extra ones. Returns 0, -ENOMEM, or -EIO (the store). */
int pools_set(struct pools *ps, const char *name, const struct pool_spec *spec);
/* Deletes pool `name` and its unclaimed members. 0 or -ENOENT. */
int pools_delete(struct pools *ps, const char *name);
/* Fills *out about pool `name` (valid until the next call into pools). 0 or -ENOENT. */
int pools_get(struct pools *ps, const char *name, struct pool_info *out);
/* Calls fn for every pool. */
void pools_foreach(struct pools *ps, void (*fn)(const struct pool_info *i, void *arg), void *arg);

/* Serves a create from a pool: for a spec (before its template is acquired: spec->image is NULL,
 * `image` the reference asked for, or NULL) that matches a pool with a ready member, the member,
 * renamed and given the spec's labels, env, session, ttl_s and idle_timeout_s (its store record
 * written); spec->network is not taken (the caller frees it). NULL when no pool matches (nothing
 * counted) or the matching pool has no ready member (a miss, counted). O(1) in the number of
 * members; one store write. */
struct sandbox *pools_claim(struct pools *ps, const struct sandbox_spec *spec, const char *image);

#endif
