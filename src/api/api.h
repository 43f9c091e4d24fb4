/*
 * api — the HTTP API v1 (docs/API.md): routing, request validation, JSON responses.
 *
 * api_handle() is the http server's handler for the native API. Each api/<resource>.c file
 * implements the handlers of one resource; they validate input completely before touching the
 * session layer and answer every request exactly once. Handlers see the daemon only through
 * struct api_ctx: the registry (session/sandbox.h), the audit log and the limits.
 */
#ifndef WARREN_API_API_H
#define WARREN_API_API_H

#include "net/http.h"
#include "core/buf.h"
#include "net/router.h"
#include "session/audit.h"
#include "session/limits.h"
#include "session/sandbox.h"

struct template_set;
struct pools;

struct api_ctx {
    struct registry *reg;
    struct template_set *templates; /* session/templates.h */
    struct pools *pools;            /* session/pool.h */
    struct audit *audit;            /* may be NULL: nothing is recorded */
    const struct session_limits *limits;
    const char *version;
    int stopping; /* set by the daemon when it shuts down: new requests get 503 */
};

typedef void (*api_handler_fn)(struct api_ctx *ctx, http_req_t *req,
                               const struct route_params *params);

/* The http server's handler; `ctx` is a struct api_ctx that outlives every request. */
void api_handle(http_req_t *req, void *ctx);

/* Parses the body as a JSON object or answers 400 and returns NULL. */
json_t *api_body_object(http_req_t *req);
/* Answers 400 if the request has a query parameter not in `allowed` (NULL-terminated). */
int api_check_query(http_req_t *req, const char *const *allowed);
/* Finds the sandbox named by the {id} route parameter or answers 404 and returns NULL. Finding
 * it is activity on it (sandbox_touch): every per-sandbox handler finds its sandbox here.
 * A recycled sandbox (session/sessions.h) was restored before the handler ran (api_handle()),
 * except for the routes that see it as it is: GET and DELETE of it, heartbeat, stop, kill (and
 * start, which restores it itself). */
struct sandbox *api_find_sandbox(struct api_ctx *ctx, http_req_t *req,
                                 const struct route_params *params);
/* The usual start of a handler on one sandbox: answers 400 for any query parameter, else finds
 * the sandbox as api_find_sandbox() does. NULL when it answered. */
struct sandbox *api_sandbox_of(struct api_ctx *ctx, http_req_t *req,
                               const struct route_params *params);

/* A name a client may give a sandbox, template, volume or pool: API_NAME_RULE, which error
 * messages quote. */
#define API_NAME_RULE "1-63 characters of [A-Za-z0-9_.-], starting with a letter or digit"
int api_valid_name(const char *s);
/* Environment variable names must be non-empty and contain no '='. Writes the reason to err. */
int api_valid_env(json_t *env, char *err, size_t errlen);

/* A parsed command request (exec, detached command, batch item, exec/ws). Strings point into
 * the request body, which must outlive it; argv/env/stdin_data are owned. */
struct api_run {
    const char **argv;
    char **env;
    const char *cwd;
    const char *stdin_text;
    unsigned char *stdin_data;  /* decoded stdin_b64 */
    const void *stdin_data_ref; /* stdin_text or stdin_data (NULL: none) */
    size_t stdin_len;
    double timeout_s;
    size_t max_output;
    json_t *describe;         /* {"argv": [...]} or {"shell": "..."} */
    struct sandbox_user user; /* with has_user: the "user" asked for */
    int has_user;
};
/* Validates a command body (argv|shell, env, cwd, stdin|stdin_b64, timeout_s, max_output_bytes,
 * plus `extra_keys`). Returns 0 or an HTTP status with the reason in err; free with
 * api_run_free() in both cases. */
int api_parse_run(struct api_ctx *ctx, const struct sandbox *sb, json_t *body,
                  const char *const *extra_keys, struct api_run *run, char *err, size_t errlen);
void api_run_free(struct api_run *run);
/* Sets o[name] to the text of b, or o[name] = null and o[name_b64] when it is not UTF-8 (after
 * dropping a character cut by truncation). */
void api_put_output(json_t *o, const char *name, const buf_t *b, int truncated);
/* errors.c: the one table from session errors to HTTP. The error code string for an HTTP status
 * ("bad_request", ...). */
const char *api_status_code(int status);
/* HTTP status and API error code of a session error (creating a sandbox). */
int api_session_status(enum session_err e, const char **code);
/* HTTP status for a -errno from the session layer (session_strerror() says it for a person). */
int api_errno_status(int r);
/* The API error code for a -errno from the session layer ("sandbox_stopped" for -ESHUTDOWN;
 * otherwise the code of its status). */
const char *api_errno_code(int r);
/* A signal given as a number or a name ("TERM", "SIGTERM"); absent/null keeps *sig. */
int api_parse_signal(json_t *v, int *sig, char *err, size_t errlen);
/* The exec result object of the API (or {"error": ...} when it could not run). */
struct exec_result;
json_t *api_exec_result_json(const struct exec_result *res);
/* Finds the {id} sandbox's {cid} command or answers 404 and returns NULL. */
struct command *api_find_command(struct api_ctx *ctx, http_req_t *req,
                                 const struct route_params *params);

/* render.c: the API's JSON of session objects (new references). */
struct command;
struct shell;
struct terminal;
json_t *api_sandbox_json(const struct sandbox *sb);
/* A released record (session/sessions.h): a deleted sandbox as GET /v1/sandboxes?state=deleted
 * lists it. */
json_t *api_released_json(const json_t *record);
/* With "usage" {memory_bytes, pids, cpu_seconds, oom_kills, disk_bytes} while it has a cgroup. */
json_t *api_sandbox_json_usage(const struct sandbox *sb);
json_t *api_command_json(const struct command *c);
json_t *api_shell_json(const struct shell *sh);
json_t *api_terminal_json(const struct terminal *t);
/* A template (session/templates.h), or with tpl NULL the built-in `host` template. */
struct template;
json_t *api_template_json(const struct template *tpl);

/* audit.c: the audit log (session/audit.h). api_audit() records `event` about `sb` (may be NULL:
 * then no sandbox and labels) with the request's peer as the caller (req may be NULL). Unless
 * `fields` (stolen, may be NULL) has "ok" already, it gets "ok": status < 400 and, for a
 * refusal, "error": api_status_code(status). Call it before answering (the answer consumes req).
 * Never put environment values, secret values, stdin or file contents in `fields`. */
void api_audit(struct api_ctx *ctx, http_req_t *req, const char *event, const struct sandbox *sb,
               int status, json_t *fields);
/* The same with the caller's address given (for a WebSocket, whose request is gone). */
void api_audit_caller(struct api_ctx *ctx, const char *caller, const char *event,
                      const struct sandbox *sb, int status, json_t *fields);
/* The command of an exec-like body for the audit log: {"argv": [...]} or {"shell": "..."}, at
 * most 1 KiB of it (then "command_truncated": true), "cwd" and "timeout_s" (from `run` once
 * parsed, else as the body gives them). New object. */
json_t *api_audit_command(json_t *body, const struct api_run *run);
/* The audit summary of a sandbox spec: name, template, resources, network {mode, allow?} and
 * secret names. New object. */
json_t *api_audit_sandbox_spec(const struct sandbox_spec *spec);
void api_audit_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);

/* templates.c */
void api_template_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_template_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_template_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_template_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_template_import(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_template_export(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_template_build(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_snapshot(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_fork(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* health.c */
void api_healthz(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_info(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* sandboxes.c */
/* Validates `resources` into *res, which starts as `base` (the defaults on create, the sandbox's
 * own on PATCH) and gets the fields given. Returns 0, 400 or 422 with the reason in err
 * (256 bytes). */
int api_parse_resources(struct api_ctx *ctx, json_t *obj, const struct sandbox_resources *base,
                        struct sandbox_resources *res, char *err);
void api_sandbox_heartbeat(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_patch(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_pause(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_resume(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_stop(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_kill(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_sandbox_start(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* logs.c */
void api_sandbox_logs(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* commands.c */
void api_exec(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_command_start(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_command_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_command_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_command_kill(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* streams.c (WebSocket) */
void api_command_stream(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_exec_ws(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* files.c */
void api_files_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_files_put(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_files_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_files_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_archive_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_archive_put(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* api.c: the HTTP stream hook: PUT files, PUT archive (of a sandbox or a template) and POST
 * /v1/templates/build read their bodies as streams. */
int api_wants_stream(http_req_t *req, void *ctx);
/* terminals.c */
void api_terminal_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_terminal_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_terminal_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_terminal_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_terminal_keys(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_terminal_screen(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_terminal_resize(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_terminal_recording(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_terminal_attach(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* shells.c */
void api_shell_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_shell_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_shell_run(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_shell_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* volumes.c */
struct volume;
/* A volume's JSON: name, size_mib, used_bytes, attached [{sandbox, sandbox_name, path,
 * read_only}], created_at. New reference. */
json_t *api_volume_json(struct registry *reg, const struct volume *vol);
void api_volume_create(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_volume_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_volume_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_volume_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* sessions.c */
void api_session_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_session_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_session_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* pools.c */
void api_pool_put(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_pool_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_pool_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
void api_pool_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);
/* batch.c */
void api_batch(struct api_ctx *ctx, http_req_t *req, const struct route_params *p);

#endif
