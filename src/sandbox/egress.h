/*
 * egress — the network policy of a sandbox and the HTTP/HTTPS forward proxy that enforces it.
 *
 * A sandbox always has its own network namespace with only `lo`. In network modes `allowlist` and
 * `open` the daemon holds a TCP socket listening *inside* that namespace (127.0.0.1:3128, created
 * by the caller with setns) and serves it from its own loop: the proxy's outbound connections are
 * made from the daemon's (host) namespace, so the proxy is the sandbox's only way out.
 *
 * Policy (the sandbox spec's `network` field, `{"mode": ..., "allow": [...]}`):
 *   - mode `none`: nothing goes out (the proxy, if any, denies everything).
 *   - mode `allowlist`: a host name must match an entry; an IP-literal destination must itself be
 *     listed.
 *   - mode `open`: any name, any public IP literal.
 *   In both proxy modes every address a name resolves to (and every literal) must be *public*:
 *   loopback, unspecified, private, CGNAT, link-local (cloud metadata), multicast, reserved and
 *   broadcast addresses, their IPv4-mapped/compatible/NAT64/6to4 IPv6 forms, and the host's own
 *   interface addresses are refused unless an IP-literal entry names exactly that address (and
 *   port, if the entry has one). A name entry never unlocks such an address, so a name that
 *   resolves (or is re-pointed) to 169.254.169.254 or 127.0.0.1 stays refused.
 *   Entries, case-insensitive, one trailing dot ignored, stored lowercase; `:port` (1-65535) is
 *   optional everywhere and absent means any port:
 *     `example.com`       exactly that name
 *     `*.example.com`     any name with at least one more label (not `example.com` itself)
 *     `198.18.0.5`        an IPv4 address
 *     `[2001:db8::1]`     an IPv6 address (brackets required, also without a port)
 *
 * Proxy protocol: one request per client connection.
 *   - `CONNECT host:port HTTP/1.1` → checked, connected, `200 Connection established`, then a raw
 *     tunnel both ways (backpressure, half-close propagated).
 *   - absolute-form `METHOD http://host[:port]/path HTTP/1.x` → checked, connected, the request
 *     forwarded in origin-form with `Host` taken from the URL, hop-by-hop headers removed
 *     (Connection, Keep-Alive, Proxy-Connection, Proxy-Authorization and those named in
 *     Connection) and `Connection: close` added; then everything is relayed raw until both sides
 *     are done.
 *   - anything else → 400. Denied → 403 with `X-Warren-Egress: denied`; DNS failure or no address
 *     connectable → 502; resolve+connect slower than the connect timeout → 504; request head over
 *     16 KiB → 431; over the connection cap → 503. Every proxy-made error carries
 *     `Connection: close` and Content-Length. A client silent for the head timeout is dropped.
 *   Names are looked up in the static hosts table first (egress_hosts), else with
 *   uv_getaddrinfo; every candidate address is checked and only checked addresses are connected
 *   to (the next one on failure), so there is no second resolution to race with.
 *
 * Threads: the proxy functions run on the loop thread that owns the proxy. The policy functions
 * are pure (an egress_local is a cache: refresh it on one thread at a time).
 *
 * Errors: functions returning int give 0 or -errno.
 */
#ifndef WARREN_SANDBOX_EGRESS_H
#define WARREN_SANDBOX_EGRESS_H

#include <jansson.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#define EGRESS_PROXY_PORT 3128
#define EGRESS_MAX_ENTRIES 256
#define EGRESS_MAX_HOST 253 /* bytes of a host name, without a port */

enum egress_mode { EGRESS_NONE = 0, EGRESS_ALLOWLIST, EGRESS_OPEN };

/* An IPv4 or IPv6 socket address (port included). */
union egress_sockaddr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* ---------------------------------------------------------------------------------------------
 * Policy
 */

struct egress_policy;

/* Parses and validates the `network` object. NULL or JSON null means mode none. On bad input
 * returns -EINVAL with a message for the API user in `err` naming the field, e.g.
 * `network.allow[2]: bad port in "x.com:99999"`; -ENOMEM on allocation failure. On success *out
 * is a new policy owned by the caller (egress_policy_free). An empty `allow` is accepted in mode
 * none (so egress_policy_to_json() output parses back). */
int egress_policy_parse(const json_t *network, struct egress_policy **out, char *err,
                        size_t errlen);
/* A new policy of mode `mode` with no entries (NULL on ENOMEM). */
struct egress_policy *egress_policy_new(enum egress_mode mode);
/* `{"mode": "...", "allow": [...]}` with the entries normalised. New reference, NULL on ENOMEM. */
json_t *egress_policy_to_json(const struct egress_policy *p);
/* NULL counts as mode none. */
enum egress_mode egress_policy_mode(const struct egress_policy *p);
/* "none", "allowlist", "open". */
const char *egress_mode_name(enum egress_mode mode);
/* NULL is a no-op. */
void egress_policy_free(struct egress_policy *p);

/* The host's own addresses (getifaddrs), cached. */
struct egress_local;

#define EGRESS_LOCAL_TTL_S 5.0

int egress_local_new(struct egress_local **out);
/* Re-reads the interface addresses if the cache is older than EGRESS_LOCAL_TTL_S (or `force`).
 * On failure the previous list is kept and -errno returned. */
int egress_local_refresh(struct egress_local *l, bool force);
/* True if `sa` is one of the host's addresses (IPv4-mapped IPv6 compared as IPv4; port ignored).
 */
bool egress_local_contains(const struct egress_local *l, const struct sockaddr *sa);
void egress_local_free(struct egress_local *l);

enum egress_addr_class {
    EGRESS_ADDR_PUBLIC = 0,
    EGRESS_ADDR_LOOPBACK,    /* 127/8, ::1 */
    EGRESS_ADDR_UNSPECIFIED, /* 0/8, :: */
    EGRESS_ADDR_PRIVATE,     /* 10/8, 172.16/12, 192.168/16, fc00::/7, fec0::/10, 64:ff9b:1::/48 */
    EGRESS_ADDR_CGNAT,       /* 100.64/10 */
    EGRESS_ADDR_LINK_LOCAL,  /* 169.254/16, fe80::/10 */
    EGRESS_ADDR_MULTICAST,   /* 224/4, ff00::/8 */
    EGRESS_ADDR_RESERVED,    /* 240/4, 100::/64 */
    EGRESS_ADDR_BROADCAST,   /* 255.255.255.255 */
};

/* The class of an AF_INET/AF_INET6 address. IPv6 forms that carry an IPv4 address (mapped
 * ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16) take the class of
 * that IPv4 address. Other families are EGRESS_ADDR_RESERVED. */
enum egress_addr_class egress_addr_classify(const struct sockaddr *sa);
/* "public address", "loopback address", ... */
const char *egress_addr_class_name(enum egress_addr_class c);

/* Whether the policy lets a connection to host name `name` (any case, an optional trailing dot),
 * port `port`, be attempted. Mode open: any name; allowlist: a name or wildcard entry must match
 * (IP-literal entries never match names); none: nothing. This is only the first half of the
 * check: every address the name resolves to must then pass egress_policy_allows_addr() with
 * `literal` false. `*reason` (optional) gets a static string ("not in allowlist", ...). */
bool egress_policy_allows_name(const struct egress_policy *p, const char *name, unsigned port,
                               const char **reason);
/* Whether the policy lets a connection to `sa` (AF_INET/AF_INET6, port included) be made.
 * `literal`: the client named this address itself (else a name resolved to it). `local` (may be
 * NULL to skip that rule) is the host's address cache, refreshed by the caller; a cache that never
 * loaded refuses everything. `*reason` (optional) gets a static string ("loopback address",
 * "address of this host", "not in allowlist", "listed address", "public address", ...). */
bool egress_policy_allows_addr(const struct egress_policy *p, const struct sockaddr *sa,
                               bool literal, const struct egress_local *local, const char **reason);

/* A destination as the proxy reads it from a request (also the syntax of allow entries, minus
 * the wildcard). */
struct egress_target {
    char host[EGRESS_MAX_HOST + 1]; /* lowercase, no trailing dot; IPv6 without brackets */
    unsigned port;                  /* `default_port` when none was given */
    bool literal;                   /* host is an IP address ... */
    union egress_sockaddr addr;     /* ... this one, with `port` */
};

/* Parses "host", "host:port", "a.b.c.d[:port]" or "[v6][:port]" from [s, s+len). Returns -EINVAL
 * with a static `*why` ("bad port", "bad host name", ...) for anything else. */
int egress_target_parse(const char *s, size_t len, unsigned default_port, struct egress_target *t,
                        const char **why);
/* "host:port", with brackets around an IPv6 host; `cap` >= EGRESS_MAX_HOST + 9 is always enough.
 */
void egress_target_format(const struct egress_target *t, char *out, size_t cap);

/* ---------------------------------------------------------------------------------------------
 * Static name → address overrides (hosts-file format: `IP name [name...]`, `#` comments)
 */

struct egress_hosts;

/* Loads `path`. -errno if it cannot be read, -EINVAL (with the line logged) on a malformed line.
 * *out is owned by the caller (egress_hosts_free) and must outlive every proxy using it. */
int egress_hosts_load(const char *path, struct egress_hosts **out);
/* Copies up to `max` addresses of `name` (any case, trailing dot ignored), in file order, into
 * `out` (port 0); returns how many the table has (may exceed max). NULL table → 0. */
size_t egress_hosts_lookup(const struct egress_hosts *h, const char *name,
                           union egress_sockaddr *out, size_t max);
void egress_hosts_free(struct egress_hosts *h);

/* ---------------------------------------------------------------------------------------------
 * Proxy
 */

/* One per request that named a destination, once its fate is known: allowed (the proxy is about
 * to connect) or not (policy, or the name did not resolve). Strings are valid during the callback
 * only. */
struct egress_decision {
    const char *sandbox_id;
    bool allowed;
    const char *method; /* "CONNECT", "GET", ... */
    const char *host;   /* normalised; an IPv6 literal without brackets */
    unsigned port;
    const char *address; /* the (first) address to connect to, or the refused one; "" if none */
    const char *reason;  /* short: "in allowlist", "not in allowlist", "loopback address", ... */
};

struct egress_options {
    const char *sandbox_id; /* copied; used in logs and decisions */
    /* Borrowed, may be NULL; must outlive the proxy (until its last close callback). */
    const struct egress_hosts *hosts;
    /* Optional; runs on the loop thread, never after egress_proxy_close(). It may call
     * egress_proxy_set_policy() or egress_proxy_close(). */
    void (*on_decision)(void *ud, const struct egress_decision *d);
    void *ud;
    /* 0 means the default. */
    unsigned max_connections;    /* 256; further clients get 503 */
    unsigned head_timeout_ms;    /* 30000: idle limit while reading the request head */
    unsigned connect_timeout_ms; /* 10000: resolve + connect, then 504 */
};

struct egress_proxy;

/* Starts serving `listen_fd`, a TCP socket already bound and listening (in the sandbox's
 * namespace). Takes ownership of `listen_fd` and `policy` in every case: on failure both are
 * released (the proxy memory then on the next loop turn) and -errno is returned. Ignores SIGPIPE
 * if it still has its default disposition (libuv writes with write(2)). */
int egress_proxy_start(uv_loop_t *loop, int listen_fd, const struct egress_options *opt,
                       struct egress_policy *policy, struct egress_proxy **out);
/* Replaces the policy (takes ownership; the old one is freed; NULL means mode none). New requests
 * use it at once; connections whose destination it no longer allows are closed; mode none closes
 * every connection. */
void egress_proxy_set_policy(struct egress_proxy *p, struct egress_policy *policy);
/* The current policy, owned by the proxy. */
const struct egress_policy *egress_proxy_policy(const struct egress_proxy *p);
/* Client connections currently open (including ones being answered with an error). */
unsigned egress_proxy_connections(const struct egress_proxy *p);
/* Bytes the proxy holds in user space, queued for writing (both directions, all connections).
 * Backpressure keeps it near 256 KiB per direction at most. */
size_t egress_proxy_queued_bytes(const struct egress_proxy *p);
/* Closes the listener and every connection. Memory, the policy and the listening socket are
 * released from close callbacks, so the loop must run afterwards; the caller forgets `p`. NULL
 * is a no-op. The listening socket keeps the sandbox's network namespace alive: close the proxy
 * when the sandbox goes away. */
void egress_proxy_close(struct egress_proxy *p);

#endif
