/*
 * build — templates built from a Dockerfile and a build context (POST /v1/templates/build).
 *
 * The context (a tar, plain or compressed) is read from a pipe on the pool into
 * <state_dir>/builds/<id>/context (no owners, no devices, nothing through a symlink), its
 * Dockerfile parsed (image/dockerfile.h), then each instruction runs on the loop:
 *  - FROM: the template of that name, else the image (pulled as a create pulls it); `scratch`
 *    is an empty image (one empty layer: a sandbox needs one).
 *  - RUN: a sandbox of the current template (its config: env, workdir, user; the build's network
 *    mode; ARG values in the environment) runs the command; exit 0 → a snapshot of it is the
 *    next template (one layer), else the build fails with the exit code and output.
 *  - COPY/ADD: the sources are gathered from the context into one tar on the pool (ADD of a local
 *    archive: its entries), extracted in a sandbox of the current template through the files
 *    engine (session/files.h: paths resolved inside the sandbox, as `cp` does; --chown resolved
 *    against its /etc/passwd) and snapshotted. The sandbox, not a layer written by hand, so that
 *    symlinks on the destination path (/bin → usr/bin) and the metadata of existing parent
 *    directories are those of the image, as docker has them.
 *  - WORKDIR: the directory is made in a sandbox (a layer) and becomes the config's WorkingDir.
 *  - ENV, LABEL, USER, CMD, ENTRYPOINT: a config change (a new config and manifest, no layer).
 *  - ARG: a variable for the instructions after it (overridden by the request's build args),
 *    also in RUN's environment; EXPOSE is accepted and ignored.
 * Every step that makes something makes a template: hidden (not listed), named
 * "build-cache-<sha256 of the parent's manifest digest, the instruction after substitution,
 * ARG values for RUN and the copied files' names, modes and bytes for COPY/ADD>". A later build
 * whose step has the same key uses it (cached); the final template is a second name for the last
 * one. At most BUILD_CACHE_MAX cache templates are kept: the oldest beyond that are deleted when
 * a build ends and no other runs (their layers go with the next collection unless shared).
 *
 * Loop thread only; blocking work (the context, the copies, the snapshots) on the pool.
 */
#ifndef WARREN_SESSION_BUILD_H
#define WARREN_SESSION_BUILD_H

#include <jansson.h>
#include <stddef.h>

#include "session/error.h"
#include "session/limits.h"
#include "session/sandbox.h"
#include "session/templates.h"

#define BUILD_CACHE_MAX 256
#define BUILD_LOG_MAX (64u << 10)    /* the log a build answers with: its last bytes */
#define BUILD_FAIL_OUTPUT (4u << 10) /* a failed RUN's output in the error message */

struct build_request {
    const char *name;             /* the template to make (replaced if it exists and is unused) */
    const char *dockerfile;       /* its path in the context; NULL: "Dockerfile" */
    json_t *build_args;           /* object of strings, or NULL (borrowed; copied) */
    int no_cache;                 /* run every step (their results still go to the cache) */
    int network_open;             /* RUN steps' network: mode open, else none */
    struct sandbox_resources res; /* of every step's sandbox */
};

struct build_result {
    struct template *tpl; /* the template made, or NULL */
    enum session_err err; /* when tpl is NULL; SESSION_ERR_BUILD_INVALID (the Dockerfile, a
                           * source, the context), BUILD_FAILED (a RUN exited non-zero), the
                           * errors of templates_acquire() for FROM, SETUP, ... */
    const char *msg;      /* for a person */
    json_t *steps;        /* [{instruction, cached, layer, duration_ms}] (borrowed) */
    const char *log;      /* the RUN steps' output, the last BUILD_LOG_MAX bytes */
    size_t log_len;
};

/* Called once, on the loop, when the build is over; everything in `res` is valid during it. */
typedef void (*build_done_cb)(const struct build_result *res, void *arg);

/* Starts a build whose context is read from `fd` (the read end of a pipe, blocking; taken over).
 * At once: SESSION_ERR_IN_USE (template `name` is used by a sandbox, or being made), NOMEM,
 * SETUP (the build directory) — then cb never runs and fd is closed. */
enum session_err build_start(struct registry *reg, struct template_set *ts,
                             const struct build_request *req, int fd, build_done_cb cb, void *arg,
                             char *msg, size_t msglen);

/* Removes what builds of a previous daemon left in <state_dir>/builds (call before serving). */
void build_recover(const char *state_dir);

#endif
