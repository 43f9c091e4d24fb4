/*
 * router — maps (method, path) to a handler using a static table of patterns.
 *
 * Patterns are '/'-separated literal segments and `{name}` captures, e.g.
 * "/v1/sandboxes/{id}/exec". A capture matches one non-empty segment, except `{name+}`, which
 * matches one or more, slashes included: all of the path but the segments the pattern has after
 * it (names that are paths, such as image references: "/v1/templates/{name+}/export"). Matching is
 * exact (no trailing-slash folding). The table is owned by the caller and must outlive the router
 * use.
 */
#ifndef WARREN_NET_ROUTER_H
#define WARREN_NET_ROUTER_H

#include <stddef.h>

#define ROUTER_MAX_PARAMS 4
#define ROUTER_MAX_PARAM_LEN 256

struct route_params {
    size_t count;
    const char *names[ROUTER_MAX_PARAMS]; /* points into the pattern's storage: not terminated,
                                             see name_lens */
    size_t name_lens[ROUTER_MAX_PARAMS];
    char values[ROUTER_MAX_PARAMS][ROUTER_MAX_PARAM_LEN]; /* NUL-terminated copies */
};

struct route {
    const char *method; /* "GET", "POST", ... */
    const char *pattern;
    void *handler; /* opaque to the router; the caller casts it */
};

/* Returns the index of the matching route (>= 0), -ENOENT when no pattern matches the path,
 * -EMSGSIZE if a captured segment is longer than ROUTER_MAX_PARAM_LEN - 1 (treated as not found
 * by callers), or -EPERM when a pattern matches the path but not with this method (→ 405). On
 * -EPERM, `allow` (if not NULL, size `allow_len`) receives the allowed methods, ", "-separated, in
 * table order, without duplicates (a method that does not fit is left out); otherwise it is set to
 * "". Methods compare case-sensitively; HEAD also matches a GET route when no HEAD route matches
 * (the HTTP layer sends no body for HEAD). `params` may be NULL. */
int router_match(const struct route *routes, size_t n, const char *method, const char *path,
                 struct route_params *params, char *allow, size_t allow_len);
/* The value of capture `name`, or NULL. */
const char *route_param(const struct route_params *params, const char *name);

#endif
