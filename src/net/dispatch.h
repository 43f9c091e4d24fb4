/*
 * dispatch — a request matched against a route table (net/router.h), with the answers every
 * table gives the same way: HEAD is served by GET routes, and a path served with other methods
 * gets 405 with an Allow header. Shared by the adapters that own route tables (api/, atropos/).
 */
#ifndef WARREN_NET_DISPATCH_H
#define WARREN_NET_DISPATCH_H

#include "net/http.h"
#include "net/router.h"

/* Returns the index of the route for `req` (>= 0; params filled), -ENOENT when no pattern of the
 * table matches its path (nothing was answered: the caller answers 404 or tries another table),
 * or -EPERM after answering 405 itself. */
int dispatch_match(const struct route *routes, size_t n, http_req_t *req,
                   struct route_params *params);

#endif
