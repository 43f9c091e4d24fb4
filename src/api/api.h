/*
 * api — the HTTP API v1 (docs/API.md): routing, request validation, JSON responses.
 *
 * api_handle() is the http server's handler (ctx = struct server *). Each api/<resource>.c file
 * implements the handlers of one resource; they validate input completely before touching the
 * session layer and answer every request exactly once.
 */
#ifndef WARREN_API_API_H
#define WARREN_API_API_H

#include "net/http.h"
#include "net/router.h"
#include "server.h"

typedef void (*api_handler_fn)(struct server *srv, http_req_t *req,
                               const struct route_params *params);

void api_handle(http_req_t *req, void *ctx);

/* Parses the body as a JSON object or answers 400 and returns NULL. */
json_t *api_body_object(http_req_t *req);
/* Answers 400 if the request has a query parameter not in `allowed` (NULL-terminated). */
int api_check_query(http_req_t *req, const char *const *allowed);
/* Finds the sandbox named by the {id} route parameter or answers 404 and returns NULL. */
struct sandbox *api_find_sandbox(struct server *srv, http_req_t *req,
                                 const struct route_params *params);

/* Environment variable names must be non-empty and contain no '='. Writes the reason to err. */
int api_valid_env(json_t *env, char *err, size_t errlen);

/* health.c */
void api_healthz(struct server *srv, http_req_t *req, const struct route_params *p);
void api_info(struct server *srv, http_req_t *req, const struct route_params *p);
/* sandboxes.c */
void api_sandbox_create(struct server *srv, http_req_t *req, const struct route_params *p);
void api_sandbox_list(struct server *srv, http_req_t *req, const struct route_params *p);
void api_sandbox_get(struct server *srv, http_req_t *req, const struct route_params *p);
void api_sandbox_delete(struct server *srv, http_req_t *req, const struct route_params *p);
/* commands.c */
void api_exec(struct server *srv, http_req_t *req, const struct route_params *p);

#endif
