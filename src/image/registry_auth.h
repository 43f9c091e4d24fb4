/*
 * registry_auth — the credential side of the registry client: WWW-Authenticate challenges and
 * docker's config.json. Internal to image/ (registry.c and its tests).
 *
 * Credentials live in memory only, are never logged, and are wiped when freed.
 */
#ifndef WARREN_IMAGE_REGISTRY_AUTH_H
#define WARREN_IMAGE_REGISTRY_AUTH_H

#include <stddef.h>

enum challenge_scheme { CHALLENGE_BEARER, CHALLENGE_BASIC };

struct registry_challenge {
    enum challenge_scheme scheme;
    char realm[1024];
    char service[256];
    char scope[512];
};

/* Parses one WWW-Authenticate value: `Bearer realm="...",service="...",scope="..."` or
 * `Basic realm="..."` (scheme and parameter names case-insensitive, values quoted with
 * backslash escapes or bare tokens, unknown parameters ignored). 0, or -EINVAL for another
 * scheme, a Bearer challenge without a realm, or a value too long for the struct. */
int registry_challenge_parse(const char *header, struct registry_challenge *out);

struct registry_cred {
    char *host; /* normalised: "host[:port]"; docker.io's aliases are "docker.io" */
    char *user;
    char *pass;
};

struct registry_auths {
    struct registry_cred *v;
    size_t n;
};

/* Reads docker's config.json: {"auths": {"<host>": {"auth": "<base64 user:pass>"} or
 * {"username": .., "password": ..}}}. Keys may be URLs ("https://index.docker.io/v1/"). Entries
 * without credentials (credential helpers) are skipped. 0, -ENOENT/-EACCES (unreadable) or
 * -EINVAL (malformed), the reason in msg (never a credential). */
int registry_auths_load(const char *path, struct registry_auths *out, char *msg, size_t msglen);
void registry_auths_free(struct registry_auths *a);
/* The credentials for a registry host ("docker.io", "127.0.0.1:5000"), or NULL. */
const struct registry_cred *registry_auths_find(const struct registry_auths *a, const char *host);
/* Writes the normalised form of a registry host or URL key into out. */
void registry_host_normalise(const char *key, char *out, size_t cap);

#endif
