/*
 * compat_atropos — the atropos slot protocol (shared/compat-atropos.md), served on warren's own
 * listener when the daemon runs with `--slots N`, so the seed SandboxExecutor client works
 * unchanged.
 *
 * Slots: slot_i (0 <= i < N) is an ordinary warren sandbox named "slot_i" with the label
 * slot=slot_i, created at start-up (and again if it dies or is deleted). Its /workspace is the
 * slot's workspace. Requests for one slot run one at a time in arrival order (a FIFO per slot,
 * also used by /reset and the /artifacts routes); different slots run in parallel. A request that
 * arrives while its slot's sandbox is still being created waits for it.
 *
 * Tools map onto the session layer: bash = a one-shot exec of /bin/sh -c (a timeout kills its
 * whole process group); bash_stateful = the slot's persistent shell (session/shell.h); tmux = the
 * slot's recorded terminal (session/terminal.h); read_file/write_file, /reset and the /artifacts
 * routes go through session/files.h on the uv thread pool.
 *
 * Network: slot sandboxes use warren's default network mode `none` (loopback only), so every
 * command runs without network whatever `allow_network` says; responses report
 * `network_isolated: true`. Every command is sandboxed (`sandboxed: true`); there is no
 * unsandboxed fallback, so `require_sandbox` is always satisfied.
 *
 * A client that disconnects cancels its request: a queued request is dropped, a running command
 * is killed (bash: its process group; bash_stateful: the foreground job is interrupted), a tmux
 * wait ends. Everything runs on the loop thread except the file work.
 */
#ifndef WARREN_API_COMPAT_ATROPOS_H
#define WARREN_API_COMPAT_ATROPOS_H

#include "net/http.h"
#include "net/router.h"

struct server;
struct atropos;

/* Sets up `nslots` slots (1..256) and starts creating their sandboxes; the registry and the
 * template must be ready. Returns 0 or -errno. */
int atropos_new(struct server *srv, unsigned nslots, struct atropos **out);
/* Frees the slot state once the loop has ended (every request answered). NULL is fine. */
void atropos_free(struct atropos *a);

/* Route handlers (api.c routes to them only when the daemon has slots). */
void atropos_execute(struct server *srv, http_req_t *req, const struct route_params *p);
void atropos_batch(struct server *srv, http_req_t *req, const struct route_params *p);
void atropos_health(struct server *srv, http_req_t *req, const struct route_params *p);
void atropos_reset(struct server *srv, http_req_t *req, const struct route_params *p);
void atropos_slots(struct server *srv, http_req_t *req, const struct route_params *p);
void atropos_artifacts_read(struct server *srv, http_req_t *req, const struct route_params *p);
void atropos_artifacts_list(struct server *srv, http_req_t *req, const struct route_params *p);
void atropos_artifacts_archive(struct server *srv, http_req_t *req, const struct route_params *p);

#endif
