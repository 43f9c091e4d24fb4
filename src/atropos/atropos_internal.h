/*
 * atropos_internal — what the files of the atropos adapter share. Not for use outside
 * src/atropos/.
 *
 *   text.c       Python-compatible text (decoding, str(), float repr, truthiness) and the
 *                protocol's response objects
 *   slots.c      the slots, their sandboxes and their job queues; /reset
 *   bash.c       the bash and bash_stateful tools
 *   reaper.c     what a killed bash command left behind (a host-side scan of /proc)
 *   tmux.c       the tmux tool (the slot's recorded terminal)
 *   files.c      the file work on the thread pool: workspace paths, read_file/write_file, the
 *                workspace reset
 *   artifacts.c  /artifacts/read, /artifacts/list, /artifacts/archive
 *   handlers.c   the HTTP routes but /batch
 *   batch.c      /batch
 *
 * Everything runs on the loop thread, except what files.c and artifacts.c do on the thread pool
 * (atropos_fwork) and the reaper's scan.
 */
#ifndef WARREN_ATROPOS_INTERNAL_H
#define WARREN_ATROPOS_INTERNAL_H

#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "atropos/atropos.h"
#include "core/buf.h"
#include "net/http.h"
#include "net/router.h"
#include "session/files.h"
#include "session/shell.h"
#include "session/terminal.h"

#define MAX_OUTPUT_CHARS 50000 /* per stream, and for tmux/stateful output */
#define TRUNC_MARK "\n... (output truncated)"
#define PANE_W 120
#define PANE_H 40
#define DENIED "Access denied: path outside workspace"

struct atropos_job;
struct atropos_slot;
struct atropos_fwork;
struct atropos_wait;

enum atropos_job_kind { JOB_EXECUTE, JOB_RESET, JOB_ART_READ, JOB_ART_LIST, JOB_ART_ARCHIVE };

/* Answers the job's request (or its place in a batch). Consumes `resp`. */
typedef void (*atropos_job_done_fn)(struct atropos_job *job, int status, json_t *resp);

struct atropos_job {
    struct atropos_slot *slot;
    struct atropos_job *next; /* in the slot's queue */
    enum atropos_job_kind kind;
    json_t *body; /* the request object (owned) */
    atropos_job_done_fn done;
    void *owner;     /* http_req_t, or the batch */
    http_req_t *req; /* the request it came with (its caller goes to the audit log) */
    size_t index;
    int running;
    int cancelled; /* the client went away */
    int abandoned; /* its batch's client went away: do not start it */
    /* what is in flight (at most one) */
    struct exec *ex;
    struct shell_run *run;
    struct atropos_wait *wait;    /* tmux send_keys without block: a plain min_wait_s */
    struct terminal_wait *settle; /* tmux send_keys with block */
    struct atropos_fwork *fw;
    unsigned long long since; /* bash: start, in clock ticks after boot (as /proc/<pid>/stat) */
    double max_wait;          /* tmux: how long a blocking send_keys waits */
    int network;              /* bash: ran with allow_network (egress mode open) */
};

struct atropos_slot {
    struct atropos *a;
    unsigned idx;
    char name[24];
    struct sandbox *sb; /* referenced; NULL while there is none */
    int creating;
    struct atropos_job *head, *tail; /* waiting */
    struct atropos_job *cur;         /* running */
    int pumping;
    char shell_id[SHELL_ID_MAX];
    char term_id[TERMINAL_ID_MAX];
    int pane_w, pane_h;
    uint64_t stream_offset; /* tmux stream: recording offset after the last stream call */
};

struct atropos {
    struct registry *reg;
    struct audit *audit; /* may be NULL */
    const struct session_limits *limits;
    int stopping;
    unsigned n;
    struct atropos_slot *slots;
};

enum atropos_fw_op {
    FW_READ_FILE,
    FW_WRITE_FILE,
    FW_RESET,
    FW_ART_READ,
    FW_ART_LIST,
    FW_ART_ARCHIVE
};

struct atropos_fwork {
    struct atropos_job *job;
    const struct fs_root *root; /* while the work runs */
    enum atropos_fw_op op;
    atomic_int cancelled;
    /* inputs (copied: the worker touches no shared JSON) */
    char *path; /* as the client gave it */
    size_t path_len;
    char *content;
    size_t content_len, content_chars;
    char *encoding; /* artifacts/read: as given (for the message) */
    int include_sha256, recursive;
    long long max_bytes, max_entries;
    char slot_name[24];
    /* result */
    int status;
    json_t *resp;
};

/* A path inside the sandbox after resolution (see atropos_ws_resolve). */
struct atropos_path {
    char abs[PATH_MAX]; /* absolute, as the sandbox sees it, without symlinks */
    int missing;        /* a component does not exist (abs continues lexically) */
    char type;          /* 'f' file, 'd' dir, 'o' other; 0 when missing */
    long long size;
    double mtime;
    unsigned mode;
};

/* ---- text.c ------------------------------------------------------------------------------- */

/* Appends bytes decoded as Python's .decode("utf-8", errors="replace") would, up to max_chars
 * characters (*cut = 1 when input remained; cut may be NULL). Returns the characters appended. */
size_t atropos_py_decode(buf_t *out, const char *data, size_t len, size_t max_chars, int *cut);
/* The characters of valid UTF-8. */
size_t atropos_utf8_chars(const char *s, size_t len);
/* str.strip() on valid UTF-8: the [*start, *end) that remains. */
void atropos_py_strip(const char *data, size_t len, size_t *start, size_t *end);
/* repr(float): the shortest digits that read back as v, in exponent form outside 1e-4..1e16. */
void atropos_py_float_repr(double v, buf_t *out);
/* str(value) of a decoded JSON value, as an f-string in the reference prints it. */
void atropos_py_str(json_t *v, buf_t *out);
/* bool(value) */
int atropos_py_truthy(json_t *v);
/* int(value) and float(value) (finite values only); -EINVAL where Python would raise. */
int atropos_py_int(json_t *v, long long *out);
int atropos_py_float(json_t *v, double *out);
/* The reference's _clamp_int: absent or not an int → def, else clamped to [lo, hi]. */
long long atropos_clamp_int(json_t *v, long long def, long long lo, long long hi);
/* (value or def).strip().lower() for action/encoding/format names; out is never left NULL. */
void atropos_py_name(json_t *v, const char *def, buf_t *out);
/* Appends the text of a stream cut at MAX_OUTPUT_CHARS characters, with TRUNC_MARK if cut. */
void atropos_stream_text(buf_t *out, const buf_t *b);

/* An ExecuteResponse {success, output, error, execution_id: null, metadata}; `meta` is stolen
 * (NULL: {}). New object. */
json_t *atropos_resp(int success, const char *out, size_t outlen, const char *err, json_t *meta);
/* A failed ExecuteResponse with the formatted error (and `meta`, stolen). */
json_t *atropos_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
json_t *atropos_fail_meta(json_t *meta, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* {"success": false, "error": ...} of the routes other than /execute and /reset. */
json_t *atropos_plain_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- slots.c ------------------------------------------------------------------------------ */

/* The slot named by a JSON string "slot_<i>", or NULL. */
struct atropos_slot *atropos_slot_find(struct atropos *a, json_t *id);
/* The slot's persistent shell and terminal, NULL when there is none (any more). */
struct shell *atropos_slot_shell(struct atropos_slot *s);
struct terminal *atropos_slot_terminal(struct atropos_slot *s);
/* Forgets the slot's shell, terminal and pane size (they went with its sandbox, or /reset). */
void atropos_slot_forget(struct atropos_slot *s);
/* A job for slot `s` that came with request `req`, answered through `done` (owner and index are
 * the caller's; body is referenced). NULL on ENOMEM. */
struct atropos_job *atropos_job_new(struct atropos_slot *s, enum atropos_job_kind kind,
                                    json_t *body, http_req_t *req, atropos_job_done_fn done,
                                    void *owner, size_t index);
/* Appends a job to its slot's queue; atropos_slot_pump starts it in turn. */
void atropos_job_enqueue(struct atropos_job *job);
/* Starts the slot's next jobs while it is free and its sandbox runs. */
void atropos_slot_pump(struct atropos_slot *s);
/* Ends a job: answers it with `resp` (consumed; NULL: out of memory), frees it, lets the slot run
 * the next one. */
void atropos_job_finish(struct atropos_job *job, int status, json_t *resp);
/* The client went away: a queued job is answered and dropped at once, a running one is stopped
 * (it ends through its own callback). */
void atropos_job_cancel(struct atropos_job *job);

/* ---- bash.c ------------------------------------------------------------------------------- */

/* The request's timeout: absent or null → 30; a number (or bool, as in Python); else -EINVAL. */
int atropos_job_timeout(struct atropos_job *job, double *t);
void atropos_tool_bash(struct atropos_job *job, json_t *args);
void atropos_tool_stateful(struct atropos_job *job, json_t *args);

/* ---- reaper.c ----------------------------------------------------------------------------- */

/* Now, in clock ticks after boot (as the start times of /proc/<pid>/stat). */
unsigned long long atropos_boot_ticks(void);
/* Kills what the job's command left in the slot's sandbox (processes started since job->since
 * in sessions that did not exist before it), on the thread pool, then finishes the job with
 * `resp` (consumed). */
void atropos_reap_then_finish(struct atropos_job *job, json_t *resp);

/* ---- tmux.c ------------------------------------------------------------------------------- */

void atropos_tool_tmux(struct atropos_job *job, json_t *args);
/* Ends the job's send_keys wait (job->wait or job->settle) with "Cancelled". */
void atropos_tmux_cancel(struct atropos_job *job);

/* ---- files.c, artifacts.c: file work on the thread pool ------------------------------------ */

/* Reads up to `max` bytes of an open file into out (never left NULL). 0 or -errno. */
int atropos_read_upto(int fd, buf_t *out, size_t max);
/* A name from the file system as the reference can name it: bytes that are not UTF-8 become
 * U+FFFD. malloc'd, or NULL. */
char *atropos_text_name(const char *s);
/* Sets type, size, mtime (whole seconds) and mode of *wp from an entry. */
void atropos_ws_fill(struct atropos_path *wp, const struct fs_entry *e);
/* Resolves `rel` (relative to /workspace) as realpath(3) would inside the sandbox and checks that
 * the result is /workspace or below it. 0, -EXDEV (outside), -ELOOP, -ENAMETOOLONG or another
 * -errno of the engine. Pool thread. */
int atropos_ws_resolve(const struct fs_root *root, const char *rel, size_t rel_len,
                       struct atropos_path *wp);
/* The path relative to /workspace ("." for the workspace itself). */
const char *atropos_ws_rel(const char *abs);

/* File work: a new one for `op` on `path` (a JSON value as the client gave it; absent or null:
 * `def`), to be filled in and given to atropos_fw_start, which runs it on the thread pool and
 * finishes the job with its answer. NULL on ENOMEM. */
struct atropos_fwork *atropos_fw_new(enum atropos_fw_op op, json_t *path, const char *def);
void atropos_fw_start(struct atropos_job *job, struct atropos_fwork *fw);
/* Asks the work to stop between files; the job ends when it returns. */
void atropos_fw_cancel(struct atropos_fwork *fw);

/* read_file and write_file. */
void atropos_tool_file(struct atropos_job *job, json_t *args, int write);
/* Empties the slot's /workspace and finishes the job (the end of /reset). */
void atropos_reset_workspace(struct atropos_job *job);

/* artifacts.c: the /artifacts jobs; the atropos_art_* run on the thread pool (fw->status and
 * fw->resp get the answer). */
void atropos_artifacts_start(struct atropos_job *job);
void atropos_art_read(struct atropos_fwork *fw);
void atropos_art_list(struct atropos_fwork *fw);
void atropos_art_archive(struct atropos_fwork *fw);

/* ---- handlers.c --------------------------------------------------------------------------- */

/* Answers `req` with `o` (consumed; NULL: a 500-like "out of memory" failure). */
void atropos_respond(http_req_t *req, int status, json_t *o);
/* Parses a POST body as any JSON value; answers 400 "Invalid JSON" and returns NULL if it is not
 * JSON. */
json_t *atropos_parse_body(http_req_t *req);
/* "Unknown slot: X" as an ExecuteResponse, X printed as the reference does. */
json_t *atropos_unknown_slot(json_t *id);
/* Runs an /execute job (audits it, then starts its tool). */
void atropos_execute_start(struct atropos_job *job);

/* ---- batch.c ------------------------------------------------------------------------------ */

/* POST /batch (a route of handlers.c's table). */
void atropos_handle_batch(struct atropos *a, http_req_t *req, const struct route_params *p);

#endif
