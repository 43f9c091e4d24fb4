/*
 * server — the daemon: owns the loop and every piece of daemon state (no globals elsewhere).
 *
 * Wiring: net/http (connections) → api/ (routes, validation, JSON) → session/ (sandboxes,
 * commands) → sandbox/ (the isolation engine); store/ persists the registry.
 * server_run() blocks until SIGTERM/SIGINT, then stops accepting, leaves every sandbox running for
 * the next daemon (or stops them with stop_sandboxes_on_exit), closes everything and returns the
 * exit status.
 *
 * The daemon's mount namespace (where sandbox disks are mounted) outlives it too: it is pinned by
 * a bind mount of its nsfs file on <state_dir>/mnt.ns, made in the host's namespace, and the next
 * daemon on that state dir enters it. The pin goes when a daemon exits leaving no sandbox running.
 */
#ifndef WARREN_SERVER_H
#define WARREN_SERVER_H

#include <stddef.h>
#include <uv.h>

#include "api/api.h"
#include "net/http.h"
#include "sandbox/cgroup.h"
#include "sandbox/seccomp.h"
#include "sandbox/template.h"
#include "session/sandbox.h"
#include "session/pool.h"
#include "session/secrets.h"
#include "session/templates.h"
#include "store/store.h"

#define WARREN_VERSION "0.1.0"
#define SERVER_MAX_REGISTRIES 16

struct server_config {
    const char *listen;       /* "127.0.0.1:7070" */
    const char *state_dir;    /* created if missing */
    const char *secrets_dir;  /* NULL: no secrets */
    const char *egress_hosts; /* NULL: the egress proxy resolves through DNS only */
    struct session_limits limits;
    unsigned slots;         /* atropos slot protocol: number of slots (0: off) */
    size_t audit_max_bytes; /* <state_dir>/audit/audit.log is rotated above this size */
    int audit_keep;         /* rotated audit files kept */
    double disk_overcommit; /* sandbox disk sizes may add up to this × the host's room for them */
    long long disk_reserve_mib; /* host disk kept free; < 0: 5% of it, within 256 MiB..2 GiB */
    struct {
        const char *insecure[SERVER_MAX_REGISTRIES]; /* --insecure-registry */
        size_t n_insecure;
        const char *mirrors[SERVER_MAX_REGISTRIES]; /* --registry-mirror REG=URL */
        size_t n_mirrors;
        const char *ca_file;   /* --registry-ca */
        const char *auth_file; /* --registry-auth */
    } registries;
    double pull_timeout_s;      /* how long a create waits for its image */
    int stop_sandboxes_on_exit; /* stop them on SIGTERM/SIGINT instead of leaving them running */
    double released_ttl_s;      /* how long deleted sandboxes' records are kept (0: not kept) */
};

struct atropos;
struct audit;

struct server {
    uv_loop_t loop;
    struct server_config cfg;
    char state_dir[1024]; /* absolute */
    http_server_t *http;
    store_t *store;
    struct seccomp_filter seccomp;
    struct cgroup_manager cgroups;
    struct disk_manager *disks;
    struct egress_hosts *egress_hosts; /* --egress-hosts, or NULL */
    struct host_template tmpl;
    struct secrets secrets;
    struct registry reg;
    struct registry_client *registry_client; /* image/registry.h */
    struct template_set templates;           /* session/templates.h */
    struct pools pools;                      /* warm pools (session/pool.h) */
    int init_fd;
    int host_mntns;          /* the host's mount namespace, to remove the pin from (-1: none) */
    struct atropos *atropos; /* the slot protocol (atropos/atropos.h), NULL without slots */
    struct audit *audit;     /* the audit log (session/audit.h) */
    struct api_ctx api;      /* what the native API's handlers see; api.stopping once stopping */
    uv_signal_t sigterm, sigint;
    uv_timer_t disk_check; /* registry_check_disk() */
};

void server_config_defaults(struct server_config *cfg);
/* Runs the daemon; returns the process exit status. */
int server_run(const struct server_config *cfg);

#endif
