/*
 * dispatch — route tables applied to requests. See dispatch.h.
 */
#include "net/dispatch.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dispatch_match(const struct route *routes, size_t n, http_req_t *req,
                   struct route_params *params)
{
    char allow[128], hdr[160];
    const char *method = http_req_method(req);
    if (strcmp(method, "HEAD") == 0)
        method = "GET";
    int i = router_match(routes, n, method, http_req_path(req), params, allow, sizeof(allow));
    if (i == -EPERM) {
        snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", allow);
        json_t *e = json_pack("{s:{s:s, s:s}}", "error", "code", "method_not_allowed", "message",
                              "method not allowed for this resource");
        char *body = json_dumps(e, JSON_COMPACT);
        json_decref(e);
        http_respond(req, 405, "application/json", body, body ? strlen(body) : 0, hdr);
        free(body);
        return -EPERM;
    }
    return i < 0 ? -ENOENT : i;
}
