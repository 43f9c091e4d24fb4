/*
 * router — maps (method, path) to a handler. See router.h.
 */
#include "net/router.h"

#include <errno.h>
#include <string.h>

enum { MATCH_NO = 0, MATCH_YES = 1 };

/*
 * Matches `path` against `pattern` segment by segment. Returns MATCH_YES (captures stored in
 * `params`), MATCH_NO, or -EMSGSIZE when the pattern would match but a captured segment does not
 * fit in a route_params value.
 */
static int match_pattern(const char *pattern, const char *path, struct route_params *params)
{
    params->count = 0;
    if (pattern[0] != '/' || path[0] != '/')
        return MATCH_NO;
    const char *pp = pattern + 1;
    const char *sp = path + 1;
    int too_long = 0;
    for (;;) {
        size_t plen = strcspn(pp, "/");
        size_t slen = strcspn(sp, "/");
        /* `{name+}` as the last segment takes the rest of the path, slashes included. */
        int rest = plen >= 3 && pp[plen] == '\0' && pp[plen - 2] == '+';
        if (rest)
            slen = strlen(sp);
        if (plen >= 2 && pp[0] == '{' && pp[plen - 1] == '}') {
            /* A capture needs a non-empty segment: "/sandboxes//exec" must not match. */
            if (slen == 0)
                return MATCH_NO;
            if (params->count >= ROUTER_MAX_PARAMS)
                return MATCH_NO; /* a pattern with too many captures never matches */
            if (slen >= ROUTER_MAX_PARAM_LEN) {
                /* Keep going: only report the size problem if the rest matches too. */
                too_long = 1;
            } else {
                size_t i = params->count;
                params->names[i] = pp + 1;
                params->name_lens[i] = plen - 2 - (size_t)rest;
                memcpy(params->values[i], sp, slen);
                params->values[i][slen] = '\0';
                params->count++;
            }
        } else if (plen != slen || memcmp(pp, sp, plen) != 0) {
            return MATCH_NO;
        }
        pp += plen;
        sp += slen;
        if (*pp == '\0' || *sp == '\0') {
            /* Exact: both must end together (so a trailing slash is a different path). */
            if (*pp != *sp)
                return MATCH_NO;
            break;
        }
        pp++; /* skip the '/' in both */
        sp++;
    }
    return too_long ? -EMSGSIZE : MATCH_YES;
}

/* Appends `method` to the comma-separated `allow` list unless already there; a method that does
 * not fit is left out whole rather than truncated. */
static void allow_add(char *allow, size_t allow_len, const char *method)
{
    size_t mlen = strlen(method);
    size_t used = strlen(allow);
    const char *p = allow;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n == mlen && memcmp(p, method, mlen) == 0)
            return;
        p += n;
        while (*p == ',' || *p == ' ')
            p++;
    }
    size_t sep = used ? 2 : 0;
    if (used + sep + mlen + 1 > allow_len)
        return;
    if (sep)
        memcpy(allow + used, ", ", 2);
    memcpy(allow + used + sep, method, mlen + 1);
}

int router_match(const struct route *routes, size_t n, const char *method, const char *path,
                 struct route_params *params, char *allow, size_t allow_len)
{
    struct route_params scratch;
    struct route_params *pr = params ? params : &scratch;
    int path_matched = 0, too_long = 0, get_idx = -1;
    int have_allow = allow && allow_len > 0;
    if (have_allow)
        allow[0] = '\0';

    for (size_t i = 0; i < n; i++) {
        int m = match_pattern(routes[i].pattern, path, pr);
        if (m == -EMSGSIZE) {
            too_long = 1;
            continue;
        }
        if (m != MATCH_YES)
            continue;
        if (strcmp(routes[i].method, method) == 0)
            return (int)i;
        /* HEAD is GET without the body (the HTTP layer drops it), so a GET route serves it
         * unless an explicit HEAD route comes later in the table. */
        if (get_idx < 0 && strcmp(method, "HEAD") == 0 && strcmp(routes[i].method, "GET") == 0)
            get_idx = (int)i;
        path_matched = 1;
        if (have_allow)
            allow_add(allow, allow_len, routes[i].method);
    }
    if (get_idx >= 0) {
        /* Re-run the match: later patterns overwrote the captures in `pr`. */
        match_pattern(routes[get_idx].pattern, path, pr);
        if (have_allow)
            allow[0] = '\0';
        return get_idx;
    }
    pr->count = 0;
    if (path_matched)
        return -EPERM;
    if (have_allow)
        allow[0] = '\0';
    return too_long ? -EMSGSIZE : -ENOENT;
}

const char *route_param(const struct route_params *params, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < params->count; i++) {
        if (params->name_lens[i] == len && memcmp(params->names[i], name, len) == 0)
            return params->values[i];
    }
    return NULL;
}
