/*
 * network — the adapters' way to a sandbox's network policy. See network.h.
 */
#include "session/network.h"

#include <errno.h>

#include "sandbox/egress.h"
#include "session/sandbox.h"

int network_parse(const json_t *network, struct egress_policy **out, char *err, size_t errlen)
{
    return egress_policy_parse(network, out, err, errlen);
}

json_t *network_to_json(const struct egress_policy *p)
{
    return egress_policy_to_json(p);
}

void network_free(struct egress_policy *p)
{
    egress_policy_free(p);
}

int network_is_open(const struct sandbox *sb)
{
    return egress_policy_mode(sb->network) != EGRESS_NONE;
}

int network_set_open(struct sandbox *sb, int open)
{
    enum egress_mode mode = open ? EGRESS_OPEN : EGRESS_NONE;
    if (egress_policy_mode(sb->network) == mode)
        return 0;
    struct egress_policy *policy = egress_policy_new(mode);
    return policy ? sandbox_set_network(sb, policy) : -ENOMEM;
}

int network_proxy_port(void)
{
    return EGRESS_PROXY_PORT;
}
