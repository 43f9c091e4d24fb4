/*
 * atropos — the atropos slot protocol (shared/compat-atropos.md), served on warren's own
 * listener when the daemon runs with `--slots N`, so the seed SandboxExecutor client works
 * unchanged. A protocol adapter beside api/, on top of the session layer.
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
 * Network: `allow_network` (default true) gives the command's slot the egress mode open (public
 * destinations through the daemon's proxy) or none (loopback only); responses report
 * `network_isolated` accordingly. Every command is sandboxed (`sandboxed: true`); there is no
 * unsandboxed fallback, so `require_sandbox` is always satisfied.
 *
 * A client that disconnects cancels its request: a queued request is dropped, a running command
 * is killed (bash: its process group; bash_stateful: the foreground job is interrupted), a tmux
 * wait ends. Everything runs on the loop thread except the file work and the process reaper.
 */
#ifndef WARREN_ATROPOS_ATROPOS_H
#define WARREN_ATROPOS_ATROPOS_H

#include "net/http.h"

struct atropos;
struct audit;
struct registry;
struct session_limits;

/* Sets up `nslots` slots (1..256) and starts creating their sandboxes; the registry must be
 * ready. `audit` (may be NULL) and `limits` must outlive the atropos. Returns 0 or -errno. */
int atropos_new(struct registry *reg, struct audit *audit, const struct session_limits *limits,
                unsigned nslots, struct atropos **out);
/* The daemon is stopping: slots whose sandbox goes away are not re-created, and requests are
 * answered 503. */
void atropos_shutdown(struct atropos *a);
/* Frees the slot state once the loop has ended (every request answered). NULL is fine. */
void atropos_free(struct atropos *a);
/* Serves `req` if it is one of the protocol's routes (a 405 for a known path with another
 * method included) and returns 1; returns 0, answering nothing, for any other path. */
int atropos_route(struct atropos *a, http_req_t *req);

#endif
