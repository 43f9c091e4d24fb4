/*
 * registry_auth — challenge parsing (RFC 7235 auth-params) and docker config.json credentials.
 */
#include "image/registry_auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "core/util.h"

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == ',')
        p++;
    return p;
}

/* Copies a quoted string (p at the opening quote) or a bare token into out; returns the position
 * after it, or NULL if it does not fit or the quote is not closed. */
static const char *read_value(const char *p, char *out, size_t cap)
{
    size_t n = 0;
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++) {
            if (*p == '\\' && p[1])
                p++;
            if (n + 1 >= cap)
                return NULL;
            out[n++] = *p;
        }
        if (*p != '"')
            return NULL;
        p++;
    } else {
        for (; *p && *p != ',' && *p != ' ' && *p != '\t'; p++) {
            if (n + 1 >= cap)
                return NULL;
            out[n++] = *p;
        }
    }
    out[n] = '\0';
    return p;
}

int registry_challenge_parse(const char *header, struct registry_challenge *out)
{
    memset(out, 0, sizeof(*out));
    const char *p = skip_ws(header);
    if (strncasecmp(p, "Bearer", 6) == 0 && (p[6] == ' ' || p[6] == '\0'))
        out->scheme = CHALLENGE_BEARER;
    else if (strncasecmp(p, "Basic", 5) == 0 && (p[5] == ' ' || p[5] == '\0'))
        out->scheme = CHALLENGE_BASIC;
    else
        return -EINVAL;
    p += out->scheme == CHALLENGE_BEARER ? 6 : 5;
    for (p = skip_ws(p); *p; p = skip_ws(p)) {
        char name[32], ignored[1024];
        size_t n = strcspn(p, "= \t,");
        if (p[n] != '=' || n == 0 || n >= sizeof(name))
            return -EINVAL;
        memcpy(name, p, n);
        name[n] = '\0';
        p += n + 1;
        char *dst = ignored;
        size_t cap = sizeof(ignored);
        if (strcasecmp(name, "realm") == 0)
            dst = out->realm, cap = sizeof(out->realm);
        else if (strcasecmp(name, "service") == 0)
            dst = out->service, cap = sizeof(out->service);
        else if (strcasecmp(name, "scope") == 0)
            dst = out->scope, cap = sizeof(out->scope);
        if (!(p = read_value(p, dst, cap)))
            return -EINVAL;
    }
    if (out->scheme == CHALLENGE_BEARER && !out->realm[0])
        return -EINVAL;
    return 0;
}

void registry_host_normalise(const char *key, char *out, size_t cap)
{
    const char *p = strstr(key, "://");
    p = p ? p + 3 : key;
    size_t n = strcspn(p, "/");
    snprintf(out, cap, "%.*s", (int)n, p);
    if (strcmp(out, "index.docker.io") == 0 || strcmp(out, "registry-1.docker.io") == 0)
        snprintf(out, cap, "docker.io");
}

static void cred_wipe(struct registry_cred *c)
{
    if (c->pass)
        explicit_bzero(c->pass, strlen(c->pass));
    free(c->host);
    free(c->user);
    free(c->pass);
    memset(c, 0, sizeof(*c));
}

/* user and pass from an entry, malloc'd; 0 with both NULL if the entry has none. */
static int entry_creds(json_t *e, char **user, char **pass)
{
    const char *auth = json_string_value(json_object_get(e, "auth"));
    const char *u = json_string_value(json_object_get(e, "username"));
    const char *pw = json_string_value(json_object_get(e, "password"));
    *user = *pass = NULL;
    if (auth && *auth) {
        unsigned char *dec;
        size_t len;
        if (util_base64_decode(auth, strlen(auth), &dec, &len) < 0)
            return -EINVAL;
        unsigned char *colon = memchr(dec, ':', len);
        if (!colon) {
            explicit_bzero(dec, len);
            free(dec);
            return -EINVAL;
        }
        *user = strndup((char *)dec, (size_t)(colon - dec));
        *pass = strndup((char *)colon + 1, len - (size_t)(colon - dec) - 1);
        explicit_bzero(dec, len);
        free(dec);
    } else if (u && pw) {
        *user = strdup(u);
        *pass = strdup(pw);
    } else {
        return 0;
    }
    if (!*user || !*pass) {
        if (*pass)
            explicit_bzero(*pass, strlen(*pass));
        free(*user);
        free(*pass);
        *user = *pass = NULL;
        return -ENOMEM;
    }
    return 0;
}

int registry_auths_load(const char *path, struct registry_auths *out, char *msg, size_t msglen)
{
    json_error_t jerr;
    int r = 0;
    memset(out, 0, sizeof(*out));
    FILE *f = fopen(path, "re");
    if (!f) {
        r = -errno;
        snprintf(msg, msglen, "registry auth file %s: %s", path, strerror(errno));
        return r;
    }
    json_t *root = json_loadf(f, 0, &jerr);
    fclose(f);
    json_t *auths = json_object_get(root, "auths");
    if (!json_is_object(root) || (auths && !json_is_object(auths))) {
        snprintf(msg, msglen, "registry auth file %s: not a docker config.json (line %d)", path,
                 jerr.line);
        r = -EINVAL;
        goto out;
    }
    out->v = calloc(json_object_size(auths) + 1, sizeof(*out->v));
    if (!out->v) {
        r = -ENOMEM;
        goto out;
    }
    const char *key;
    json_t *e;
    json_object_foreach(auths, key, e)
    {
        struct registry_cred *c = &out->v[out->n];
        char host[256];
        if ((r = entry_creds(e, &c->user, &c->pass)) < 0) {
            snprintf(msg, msglen, "registry auth file %s: bad credentials for %s", path, key);
            goto out;
        }
        if (!c->user)
            continue;
        registry_host_normalise(key, host, sizeof(host));
        if (!(c->host = strdup(host))) {
            cred_wipe(c);
            r = -ENOMEM;
            goto out;
        }
        out->n++;
    }
out:
    json_decref(root);
    if (r < 0)
        registry_auths_free(out);
    return r;
}

void registry_auths_free(struct registry_auths *a)
{
    for (size_t i = 0; i < a->n; i++)
        cred_wipe(&a->v[i]);
    free(a->v);
    memset(a, 0, sizeof(*a));
}

const struct registry_cred *registry_auths_find(const struct registry_auths *a, const char *host)
{
    char norm[256];
    registry_host_normalise(host, norm, sizeof(norm));
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i].host, norm) == 0)
            return &a->v[i];
    return NULL;
}
