/*
 * network — a sandbox's network policy as the adapters handle it: parsed from a request,
 * described back, and switched for a running sandbox. The policy itself (modes, allow entries)
 * and its enforcement are the engine's (sandbox/egress.h); this is the adapters' way to it, so
 * that they never reach into the engine.
 *
 * A policy is an opaque `struct egress_policy *` owned by whoever holds it until it is handed to
 * sandbox_create() (spec.network) or sandbox_set_network(), which take it over.
 */
#ifndef WARREN_SESSION_NETWORK_H
#define WARREN_SESSION_NETWORK_H

#include <jansson.h>
#include <stddef.h>

struct egress_policy;
struct sandbox;

/* Parses a request's `network` object ({mode, allow}). Returns 0 with a new policy in *out,
 * -EINVAL with the reason in err, or -ENOMEM. */
int network_parse(const json_t *network, struct egress_policy **out, char *err, size_t errlen);
/* The normalised description of a policy ({mode, allow?}); a new reference, NULL for NULL. */
json_t *network_to_json(const struct egress_policy *p);
void network_free(struct egress_policy *p);
/* True when the sandbox's policy lets it out (through the egress proxy). */
int network_is_open(const struct sandbox *sb);
/* Switches a running sandbox between mode none and mode open (all public destinations), as a
 * caller that decides per command does (atropos' allow_network). No change when it is in that
 * mode already. Returns 0 or -errno as sandbox_set_network(). */
int network_set_open(struct sandbox *sb, int open);
/* The TCP port of the egress proxy inside every sandbox that has one (on 127.0.0.1). */
int network_proxy_port(void);

#endif
