/*
 * egress_policy — the pure half of egress (policy, address classes, host addresses, static
 * hosts). See egress.h for the contract.
 *
 * Addresses are compared in a canonical form (struct ip): an IPv4-mapped IPv6 address is the IPv4
 * address it maps, because connecting to either reaches the same socket. Other IPv6 forms that
 * embed an IPv4 address (compatible, NAT64, 6to4) are distinct destinations, so they only borrow
 * the embedded address's *class*: a translator would deliver them there.
 */
#include "sandbox/egress.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ifaddrs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/log.h"
#include "core/util.h"

struct ip {
    int family; /* AF_INET or AF_INET6 */
    uint8_t b[16];
};

enum entry_kind { ENTRY_NAME, ENTRY_GLOB, ENTRY_ADDR };

struct entry {
    enum entry_kind kind;
    unsigned port; /* 0: any */
    char *name;    /* NAME: the name; GLOB: the suffix after "*."; ADDR: NULL */
    struct ip ip;  /* ADDR */
};

struct egress_policy {
    enum egress_mode mode;
    size_t n;
    struct entry *e;
};

struct egress_local {
    bool loaded;
    double loaded_at;
    size_t n;
    struct ip *ips;
};

struct host_entry {
    char *name;
    union egress_sockaddr addr;
};

struct egress_hosts {
    size_t n, cap;
    struct host_entry *e;
};

/* ---------------------------------------------------------------------------------------------
 * Addresses
 */

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int ip_from_sockaddr(const struct sockaddr *sa, struct ip *ip, unsigned *port)
{
    memset(ip, 0, sizeof(*ip));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        ip->family = AF_INET;
        memcpy(ip->b, &in->sin_addr, 4);
        if (port)
            *port = ntohs(in->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (port)
            *port = ntohs(in6->sin6_port);
        if (memcmp(in6->sin6_addr.s6_addr, v4mapped_prefix, 12) == 0) {
            ip->family = AF_INET;
            memcpy(ip->b, in6->sin6_addr.s6_addr + 12, 4);
        } else {
            ip->family = AF_INET6;
            memcpy(ip->b, in6->sin6_addr.s6_addr, 16);
        }
        return 0;
    }
    return -EAFNOSUPPORT;
}

static bool ip_equal(const struct ip *a, const struct ip *b)
{
    return a->family == b->family && memcmp(a->b, b->b, a->family == AF_INET ? 4 : 16) == 0;
}

static enum egress_addr_class classify_v4(const uint8_t *b)
{
    uint32_t a = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    if ((a >> 24) == 0)
        return EGRESS_ADDR_UNSPECIFIED;
    if ((a >> 24) == 127)
        return EGRESS_ADDR_LOOPBACK;
    if ((a >> 24) == 10 || (a >> 20) == (172u << 4 | 1) || (a >> 16) == (192u << 8 | 168))
        return EGRESS_ADDR_PRIVATE;
    if ((a >> 22) == (100u << 2 | 1)) /* 100.64.0.0/10 */
        return EGRESS_ADDR_CGNAT;
    if ((a >> 16) == (169u << 8 | 254))
        return EGRESS_ADDR_LINK_LOCAL;
    if ((a >> 28) == 0xe)
        return EGRESS_ADDR_MULTICAST;
    if (a == 0xffffffffu)
        return EGRESS_ADDR_BROADCAST;
    if ((a >> 28) == 0xf)
        return EGRESS_ADDR_RESERVED;
    return EGRESS_ADDR_PUBLIC;
}

static enum egress_addr_class classify_v6(const uint8_t *b)
{
    static const uint8_t zero[16];
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b};
    static const uint8_t discard[8] = {0x01, 0x00};
    if (memcmp(b, zero, 15) == 0 && (b[15] == 0 || b[15] == 1))
        return b[15] ? EGRESS_ADDR_LOOPBACK : EGRESS_ADDR_UNSPECIFIED;
    if (memcmp(b, v4mapped_prefix, 12) == 0 || memcmp(b, zero, 12) == 0 ||
        memcmp(b, nat64, 12) == 0)
        return classify_v4(b + 12);
    if (b[0] == 0x20 && b[1] == 0x02) /* 6to4: 2002:AABB:CCDD::/48 */
        return classify_v4(b + 2);
    if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0x00 &&
        b[5] == 0x01) /* 64:ff9b:1::/48, local-use NAT64 */
        return EGRESS_ADDR_PRIVATE;
    if ((b[0] & 0xfe) == 0xfc)
        return EGRESS_ADDR_PRIVATE;
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
        return EGRESS_ADDR_LINK_LOCAL;
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) /* site-local, deprecated but still routed */
        return EGRESS_ADDR_PRIVATE;
    if (b[0] == 0xff)
        return EGRESS_ADDR_MULTICAST;
    if (memcmp(b, discard, 8) == 0)
        return EGRESS_ADDR_RESERVED;
    return EGRESS_ADDR_PUBLIC;
}

enum egress_addr_class egress_addr_classify(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return classify_v4((const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr);
    if (sa->sa_family == AF_INET6)
        return classify_v6(((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
    return EGRESS_ADDR_RESERVED;
}

const char *egress_addr_class_name(enum egress_addr_class c)
{
    switch (c) {
    case EGRESS_ADDR_PUBLIC:
        return "public address";
    case EGRESS_ADDR_LOOPBACK:
        return "loopback address";
    case EGRESS_ADDR_UNSPECIFIED:
        return "unspecified address";
    case EGRESS_ADDR_PRIVATE:
        return "private address";
    case EGRESS_ADDR_CGNAT:
        return "shared (CGNAT) address";
    case EGRESS_ADDR_LINK_LOCAL:
        return "link-local address";
    case EGRESS_ADDR_MULTICAST:
        return "multicast address";
    case EGRESS_ADDR_RESERVED:
        return "reserved address";
    case EGRESS_ADDR_BROADCAST:
        return "broadcast address";
    }
    return "unknown address";
}

/* ---------------------------------------------------------------------------------------------
 * Host names and targets
 */

/* A DNS name: dot-separated labels of 1-63 letters, digits, '-' or '_' (lowercase already),
 * at most EGRESS_MAX_HOST bytes. A name whose last label is all digits is not a name but a
 * malformed IPv4 address (no top-level domain is numeric), which keeps getaddrinfo's inet_aton
 * forms such as "127.1" from passing as names. */
static int name_check(const char *s, size_t len, const char **why)
{
    if (len == 0) {
        *why = "empty host";
        return -EINVAL;
    }
    if (len > EGRESS_MAX_HOST) {
        *why = "host name too long";
        return -EINVAL;
    }
    size_t label = 0;
    bool digits = true;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '.') {
            if (label == 0)
                goto bad;
            label = 0;
            digits = true;
            continue;
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
            goto bad;
        if (!(ch >= '0' && ch <= '9'))
            digits = false;
        if (++label > 63)
            goto bad;
    }
    if (label == 0)
        goto bad;
    if (digits) {
        *why = "bad IPv4 address";
        return -EINVAL;
    }
    return 0;
bad:
    *why = "bad host name";
    return -EINVAL;
}

/* Lowercases [s, s+len) into out (cap > len) and drops one trailing dot. */
static size_t host_lower(const char *s, size_t len, char *out)
{
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    if (len > 0 && out[len - 1] == '.')
        len--;
    out[len] = '\0';
    return len;
}

static int port_parse(const char *s, size_t len, unsigned *port)
{
    unsigned v = 0;
    if (len == 0 || len > 5)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return -EINVAL;
    *port = v;
    return 0;
}

int egress_target_parse(const char *s, size_t len, unsigned default_port, struct egress_target *t,
                        const char **why)
{
    const char *host = s, *portp = NULL;
    size_t hlen = len, plen = 0;
    char tmp[EGRESS_MAX_HOST + 2];

    memset(t, 0, sizeof(*t));
    t->port = default_port;
    if (len == 0) {
        *why = "empty host";
        return -EINVAL;
    }
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close || close == s + 1 || (size_t)(close - s - 1) >= INET6_ADDRSTRLEN)
            goto bad6;
        host = s + 1;
        hlen = (size_t)(close - host);
        const char *rest = close + 1;
        size_t rlen = len - (size_t)(rest - s);
        if (rlen > 0) {
            if (rest[0] != ':')
                goto bad6;
            portp = rest + 1;
            plen = rlen - 1;
        }
        memcpy(tmp, host, hlen);
        tmp[hlen] = '\0';
        if (inet_pton(AF_INET6, tmp, &t->addr.in6.sin6_addr) != 1)
            goto bad6;
        t->addr.in6.sin6_family = AF_INET6;
        t->literal = true;
        inet_ntop(AF_INET6, &t->addr.in6.sin6_addr, t->host, sizeof(t->host));
    } else {
        const char *colon = memchr(s, ':', len);
        if (colon) {
            if (memchr(colon + 1, ':', len - (size_t)(colon + 1 - s))) {
                *why = "IPv6 addresses need brackets";
                return -EINVAL;
            }
            hlen = (size_t)(colon - s);
            portp = colon + 1;
            plen = len - hlen - 1;
        }
        if (hlen > EGRESS_MAX_HOST + 1) {
            *why = "host name too long";
            return -EINVAL;
        }
        hlen = host_lower(host, hlen, tmp);
        if (hlen > 0 && inet_pton(AF_INET, tmp, &t->addr.in.sin_addr) == 1) {
            t->addr.in.sin_family = AF_INET;
            t->literal = true;
            inet_ntop(AF_INET, &t->addr.in.sin_addr, t->host, sizeof(t->host));
        } else {
            if (name_check(tmp, hlen, why) < 0)
                return -EINVAL;
            memcpy(t->host, tmp, hlen + 1);
        }
    }
    if (portp && port_parse(portp, plen, &t->port) < 0) {
        *why = "bad port";
        return -EINVAL;
    }
    if (t->literal) {
        /* sin_port and sin6_port sit at the same offset. */
        t->addr.in.sin_port = htons((uint16_t)t->port);
    }
    return 0;
bad6:
    *why = "bad IPv6 address";
    return -EINVAL;
}

void egress_target_format(const struct egress_target *t, char *out, size_t cap)
{
    bool v6 = t->literal && t->addr.sa.sa_family == AF_INET6;
    snprintf(out, cap, "%s%s%s:%u", v6 ? "[" : "", t->host, v6 ? "]" : "", t->port);
}

/* ---------------------------------------------------------------------------------------------
 * Policy
 */

const char *egress_mode_name(enum egress_mode mode)
{
    switch (mode) {
    case EGRESS_NONE:
        return "none";
    case EGRESS_ALLOWLIST:
        return "allowlist";
    case EGRESS_OPEN:
        return "open";
    }
    return "none";
}

struct egress_policy *egress_policy_new(enum egress_mode mode)
{
    struct egress_policy *p = calloc(1, sizeof(*p));
    if (p)
        p->mode = mode;
    return p;
}

void egress_policy_free(struct egress_policy *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        free(p->e[i].name);
    free(p->e);
    free(p);
}

enum egress_mode egress_policy_mode(const struct egress_policy *p)
{
    return p ? p->mode : EGRESS_NONE;
}

/* Parses entry `s` into `e`; on bad input writes the reason to *why. */
static int entry_parse(const char *s, struct entry *e, const char **why)
{
    size_t len = strlen(s);
    bool glob = false;
    struct egress_target t;

    memset(e, 0, sizeof(*e));
    if (len == 0) {
        *why = "empty entry";
        return -EINVAL;
    }
    if (strstr(s, "://")) {
        *why = "expected host[:port], not a URL,";
        return -EINVAL;
    }
    if (s[0] == '*') {
        if (len < 3 || s[1] != '.') {
            *why = "a wildcard must look like *.example.com";
            return -EINVAL;
        }
        glob = true;
        s += 2;
        len -= 2;
    }
    if (egress_target_parse(s, len, 0, &t, why) < 0)
        return -EINVAL;
    if (glob && t.literal) {
        *why = "a wildcard needs a host name";
        return -EINVAL;
    }
    e->port = t.port;
    if (t.literal) {
        /* Stored as written (so to_json gives it back); canonicalised when matching. */
        e->kind = ENTRY_ADDR;
        e->ip.family = t.addr.sa.sa_family;
        if (e->ip.family == AF_INET)
            memcpy(e->ip.b, &t.addr.in.sin_addr, 4);
        else
            memcpy(e->ip.b, t.addr.in6.sin6_addr.s6_addr, 16);
        return 0;
    }
    e->kind = glob ? ENTRY_GLOB : ENTRY_NAME;
    e->name = strdup(t.host);
    return e->name ? 0 : -ENOMEM;
}

int egress_policy_parse(const json_t *network, struct egress_policy **out, char *err, size_t errlen)
{
    static const char *const keys[] = {"mode", "allow", NULL};
    struct egress_policy *p = NULL;
    const char *mode = "none";
    json_t *obj = (json_t *)network; /* jansson's getters are not const-correct */
    json_t *allow;
    int rc = -EINVAL;

    *out = NULL;
    p = egress_policy_new(EGRESS_NONE);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (!obj || json_is_null(obj)) {
        *out = p;
        return 0;
    }
    if (!json_is_object(obj)) {
        snprintf(err, errlen, "'network' must be an object");
        goto error;
    }
    if (json_check_keys(obj, keys, "network", err, errlen) < 0 ||
        json_opt_string(obj, "mode", "network.mode", &mode, err, errlen) < 0)
        goto error;
    if (strcmp(mode, "none") == 0) {
        p->mode = EGRESS_NONE;
    } else if (strcmp(mode, "allowlist") == 0) {
        p->mode = EGRESS_ALLOWLIST;
    } else if (strcmp(mode, "open") == 0) {
        p->mode = EGRESS_OPEN;
    } else {
        snprintf(err, errlen, "unsupported 'network.mode' '%s' (supported: none, allowlist, open)",
                 mode);
        goto error;
    }
    allow = json_object_get(obj, "allow");
    if (!allow || json_is_null(allow)) {
        *out = p;
        return 0;
    }
    if (!json_is_array(allow)) {
        snprintf(err, errlen, "'network.allow' must be an array of strings");
        goto error;
    }
    size_t n = json_array_size(allow);
    if (n > 0 && p->mode == EGRESS_NONE) {
        snprintf(err, errlen, "'network.allow' needs network.mode 'allowlist' or 'open'");
        goto error;
    }
    if (n > EGRESS_MAX_ENTRIES) {
        snprintf(err, errlen, "'network.allow' has %zu entries (at most %d)", n,
                 EGRESS_MAX_ENTRIES);
        goto error;
    }
    if (n > 0) {
        p->e = calloc(n, sizeof(*p->e));
        if (!p->e) {
            rc = -ENOMEM;
            snprintf(err, errlen, "out of memory");
            goto error;
        }
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(allow, i);
        const char *why = NULL;
        if (!json_is_string(v)) {
            snprintf(err, errlen, "'network.allow[%zu]' must be a string", i);
            goto error;
        }
        const char *s = json_string_value(v);
        int erc = entry_parse(s, &p->e[i], &why);
        if (erc == -ENOMEM) {
            rc = -ENOMEM;
            snprintf(err, errlen, "out of memory");
            goto error;
        }
        p->n = i + 1; /* entry i may own memory now */
        if (erc < 0) {
            snprintf(err, errlen, "network.allow[%zu]: %s in \"%.300s\"", i, why, s);
            goto error;
        }
    }
    *out = p;
    return 0;
error:
    egress_policy_free(p);
    return rc;
}

static int entry_format(const struct entry *e, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN + 2];
    if (e->kind == ENTRY_ADDR) {
        char a[INET6_ADDRSTRLEN];
        inet_ntop(e->ip.family, e->ip.b, a, sizeof(a));
        if (e->ip.family == AF_INET6)
            snprintf(host, sizeof(host), "[%s]", a);
        else
            snprintf(host, sizeof(host), "%s", a);
    }
    const char *h = e->kind == ENTRY_ADDR ? host : e->name;
    const char *star = e->kind == ENTRY_GLOB ? "*." : "";
    if (e->port)
        return snprintf(out, cap, "%s%s:%u", star, h, e->port);
    return snprintf(out, cap, "%s%s", star, h);
}

json_t *egress_policy_to_json(const struct egress_policy *p)
{
    json_t *allow = json_array();
    if (!allow)
        return NULL;
    for (size_t i = 0; p && i < p->n; i++) {
        char s[EGRESS_MAX_HOST + 16];
        entry_format(&p->e[i], s, sizeof(s));
        if (json_array_append_new(allow, json_string(s)) < 0) {
            json_decref(allow);
            return NULL;
        }
    }
    return json_pack("{s:s,s:o}", "mode", egress_mode_name(egress_policy_mode(p)), "allow", allow);
}

static bool name_matches(const struct entry *e, const char *name, size_t len)
{
    if (e->kind == ENTRY_NAME)
        return strcmp(e->name, name) == 0;
    if (e->kind != ENTRY_GLOB)
        return false;
    size_t slen = strlen(e->name);
    return len > slen + 1 && name[len - slen - 1] == '.' &&
           memcmp(name + len - slen, e->name, slen) == 0;
}

bool egress_policy_allows_name(const struct egress_policy *p, const char *name, unsigned port,
                               const char **reason)
{
    const char *dummy;
    char norm[EGRESS_MAX_HOST + 2];
    if (!reason)
        reason = &dummy;
    if (egress_policy_mode(p) == EGRESS_NONE) {
        *reason = "network mode is none";
        return false;
    }
    if (p->mode == EGRESS_OPEN) {
        *reason = "open mode";
        return true;
    }
    size_t len = strlen(name);
    if (len > EGRESS_MAX_HOST + 1) {
        *reason = "not in allowlist";
        return false;
    }
    len = host_lower(name, len, norm);
    for (size_t i = 0; i < p->n; i++) {
        const struct entry *e = &p->e[i];
        if ((e->port == 0 || e->port == port) && name_matches(e, norm, len)) {
            *reason = "in allowlist";
            return true;
        }
    }
    *reason = "not in allowlist";
    return false;
}

bool egress_policy_allows_addr(const struct egress_policy *p, const struct sockaddr *sa,
                               bool literal, const struct egress_local *local, const char **reason)
{
    const char *dummy;
    struct ip ip;
    unsigned port = 0;
    if (!reason)
        reason = &dummy;
    if (egress_policy_mode(p) == EGRESS_NONE) {
        *reason = "network mode is none";
        return false;
    }
    if (ip_from_sockaddr(sa, &ip, &port) < 0) {
        *reason = "unsupported address family";
        return false;
    }
    for (size_t i = 0; i < p->n; i++) {
        const struct entry *e = &p->e[i];
        struct ip eip = e->ip;
        if (e->kind != ENTRY_ADDR || (e->port != 0 && e->port != port))
            continue;
        if (eip.family == AF_INET6 && memcmp(eip.b, v4mapped_prefix, 12) == 0) {
            eip.family = AF_INET;
            memmove(eip.b, eip.b + 12, 4);
        }
        if (ip_equal(&eip, &ip)) {
            *reason = "listed address";
            return true;
        }
    }
    if (literal && p->mode == EGRESS_ALLOWLIST) {
        *reason = "not in allowlist";
        return false;
    }
    enum egress_addr_class c = egress_addr_classify(sa);
    if (c != EGRESS_ADDR_PUBLIC) {
        *reason = egress_addr_class_name(c);
        return false;
    }
    if (local) {
        if (!local->loaded) {
            *reason = "the host's addresses are unknown";
            return false;
        }
        if (egress_local_contains(local, sa)) {
            *reason = "address of this host";
            return false;
        }
    }
    *reason = "public address";
    return true;
}

/* ---------------------------------------------------------------------------------------------
 * The host's own addresses
 */

int egress_local_new(struct egress_local **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : -ENOMEM;
}

void egress_local_free(struct egress_local *l)
{
    if (!l)
        return;
    free(l->ips);
    free(l);
}

int egress_local_refresh(struct egress_local *l, bool force)
{
    double now = util_monotonic();
    struct ifaddrs *ifa = NULL;
    struct ip *ips = NULL;
    size_t n = 0, cap = 0;

    if (!force && l->loaded && now - l->loaded_at < EGRESS_LOCAL_TTL_S)
        return 0;
    if (getifaddrs(&ifa) < 0) {
        int rc = -errno;
        log_warn("egress: getifaddrs: %s", strerror(errno));
        return rc;
    }
    for (struct ifaddrs *i = ifa; i; i = i->ifa_next) {
        struct ip ip;
        if (!i->ifa_addr || ip_from_sockaddr(i->ifa_addr, &ip, NULL) < 0)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct ip *grown = realloc(ips, ncap * sizeof(*grown));
            if (!grown) {
                free(ips);
                freeifaddrs(ifa);
                return -ENOMEM;
            }
            ips = grown;
            cap = ncap;
        }
        ips[n++] = ip;
    }
    freeifaddrs(ifa);
    free(l->ips);
    l->ips = ips;
    l->n = n;
    l->loaded = true;
    l->loaded_at = now;
    return 0;
}

bool egress_local_contains(const struct egress_local *l, const struct sockaddr *sa)
{
    struct ip ip;
    if (!l || ip_from_sockaddr(sa, &ip, NULL) < 0)
        return false;
    for (size_t i = 0; i < l->n; i++) {
        if (ip_equal(&l->ips[i], &ip))
            return true;
    }
    return false;
}

/* ---------------------------------------------------------------------------------------------
 * Static hosts
 */

void egress_hosts_free(struct egress_hosts *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n; i++)
        free(h->e[i].name);
    free(h->e);
    free(h);
}

static int hosts_add(struct egress_hosts *h, const char *name, const union egress_sockaddr *a)
{
    if (h->n == h->cap) {
        size_t ncap = h->cap ? h->cap * 2 : 16;
        struct host_entry *grown = realloc(h->e, ncap * sizeof(*grown));
        if (!grown)
            return -ENOMEM;
        h->e = grown;
        h->cap = ncap;
    }
    h->e[h->n].name = strdup(name);
    if (!h->e[h->n].name)
        return -ENOMEM;
    h->e[h->n].addr = *a;
    h->n++;
    return 0;
}

/* One line of a hosts file (comment already cut). 0, -EINVAL with *why, or -ENOMEM. */
static int hosts_parse_line(struct egress_hosts *h, char *line, const char **why)
{
    static const char *const ws = " \t\r\n\v\f";
    char *save = NULL;
    char *tok = strtok_r(line, ws, &save);
    union egress_sockaddr a;

    if (!tok)
        return 0;
    memset(&a, 0, sizeof(a));
    if (inet_pton(AF_INET, tok, &a.in.sin_addr) == 1) {
        a.in.sin_family = AF_INET;
    } else if (inet_pton(AF_INET6, tok, &a.in6.sin6_addr) == 1) {
        a.in6.sin6_family = AF_INET6;
    } else {
        *why = "bad IP address";
        return -EINVAL;
    }
    int names = 0;
    while ((tok = strtok_r(NULL, ws, &save))) {
        char norm[EGRESS_MAX_HOST + 2];
        size_t len = strlen(tok);
        if (len > EGRESS_MAX_HOST + 1) {
            *why = "host name too long";
            return -EINVAL;
        }
        len = host_lower(tok, len, norm);
        if (name_check(norm, len, why) < 0)
            return -EINVAL;
        int rc = hosts_add(h, norm, &a);
        if (rc < 0)
            return rc;
        names++;
    }
    if (names == 0) {
        *why = "no host name after the address";
        return -EINVAL;
    }
    return 0;
}

int egress_hosts_load(const char *path, struct egress_hosts **out)
{
    struct egress_hosts *h = NULL;
    char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    int rc;

    *out = NULL;
    FILE *f = fopen(path, "re");
    if (!f) {
        rc = -errno;
        log_error("egress: cannot read hosts file %s: %s", path, strerror(errno));
        return rc;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        rc = -ENOMEM;
        goto error;
    }
    while (getline(&line, &cap, f) >= 0) {
        const char *why = NULL;
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        rc = hosts_parse_line(h, line, &why);
        if (rc == -EINVAL)
            log_error("egress: hosts file %s:%u: %s", path, lineno, why);
        if (rc < 0)
            goto error;
    }
    if (ferror(f)) {
        rc = -EIO;
        log_error("egress: error reading hosts file %s", path);
        goto error;
    }
    free(line);
    fclose(f);
    *out = h;
    return 0;
error:
    free(line);
    fclose(f);
    egress_hosts_free(h);
    return rc;
}

size_t egress_hosts_lookup(const struct egress_hosts *h, const char *name,
                           union egress_sockaddr *out, size_t max)
{
    char norm[EGRESS_MAX_HOST + 2];
    size_t len = strlen(name), found = 0;
    if (!h || len > EGRESS_MAX_HOST + 1)
        return 0;
    host_lower(name, len, norm);
    for (size_t i = 0; i < h->n; i++) {
        if (strcmp(h->e[i].name, norm) != 0)
            continue;
        if (found < max)
            out[found] = h->e[i].addr;
        found++;
    }
    return found;
}
