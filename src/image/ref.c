/*
 * ref — the grammar of github.com/distribution/reference, written for C:
 *   reference := name [ ":" tag ] [ "@" digest ]
 *   name      := [ domain "/" ] component ( "/" component )*
 *   component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
 *   domain    := label ( "." label )* [ ":" port ],  label := [A-Za-z0-9] ( [A-Za-z0-9-]*
 * [A-Za-z0-9] )? tag       := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
 */
#include "image/ref.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "image/digest.h"

#define NAME_MAX_LEN 255

static int is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_alnum(char c)
{
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

static int fail(char *msg, size_t msglen, const char *fmt, const char *what)
{
    snprintf(msg, msglen, fmt, what);
    return -EINVAL;
}

/* One path component [p, p+n). */
static int component_valid(const char *p, size_t n)
{
    size_t i = 0;
    if (n == 0 || !is_lower_alnum(p[0]))
        return 0;
    while (i < n) {
        while (i < n && is_lower_alnum(p[i]))
            i++;
        if (i == n)
            return 1;
        /* A separator, then at least one alphanumeric. */
        if (p[i] == '.') {
            i++;
        } else if (p[i] == '_') {
            i++;
            if (i < n && p[i] == '_')
                i++;
        } else if (p[i] == '-') {
            while (i < n && p[i] == '-')
                i++;
        } else {
            return 0;
        }
        if (i == n || !is_lower_alnum(p[i]))
            return 0;
    }
    return 1;
}

static int domain_valid(const char *p, size_t n)
{
    const char *colon = memchr(p, ':', n);
    size_t host_len = colon ? (size_t)(colon - p) : n;
    size_t i = 0;
    if (host_len == 0)
        return 0;
    while (i < host_len) {
        size_t start = i;
        while (i < host_len && (is_alnum(p[i]) || p[i] == '-'))
            i++;
        if (i == start || p[start] == '-' || p[i - 1] == '-')
            return 0;
        if (i < host_len) {
            if (p[i] != '.')
                return 0;
            i++;
            if (i == host_len)
                return 0;
        }
    }
    if (colon) {
        size_t plen = n - host_len - 1;
        unsigned port = 0;
        if (plen == 0 || plen > 5)
            return 0;
        for (size_t k = host_len + 1; k < n; k++) {
            if (p[k] < '0' || p[k] > '9')
                return 0;
            port = port * 10 + (unsigned)(p[k] - '0');
        }
        if (port == 0 || port > 65535)
            return 0;
    }
    return 1;
}

static int tag_valid(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 128)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        int word = is_alnum(c) || c == '_';
        if (!(word || (i > 0 && (c == '.' || c == '-'))))
            return 0;
    }
    return 1;
}

int image_ref_parse(const char *s, struct image_ref *out, char *msg, size_t msglen)
{
    char buf[512];
    memset(out, 0, sizeof(*out));
    if (!s || !*s)
        return fail(msg, msglen, "empty image reference%s", "");
    size_t len = strlen(s);
    if (len >= sizeof(buf))
        return fail(msg, msglen, "image reference too long%s", "");
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f)
            return fail(msg, msglen, "image reference contains a space or control character%s", "");
    memcpy(buf, s, len + 1);

    char *at = strchr(buf, '@');
    if (at) {
        char hex[65];
        *at = '\0';
        if (digest_parse(at + 1, hex) < 0)
            return fail(msg, msglen, "bad digest '%s' (want sha256:<64 lowercase hex>)", at + 1);
        snprintf(out->digest, sizeof(out->digest), "%s", at + 1);
    }
    /* A ':' after the last '/' starts the tag (one before it is a registry port). */
    char *slash = strrchr(buf, '/');
    char *colon = strrchr(slash ? slash : buf, ':');
    if (colon) {
        *colon = '\0';
        if (!tag_valid(colon + 1))
            return fail(msg, msglen, "bad tag '%s'", colon + 1);
        snprintf(out->tag, sizeof(out->tag), "%s", colon + 1);
    }
    char *name = buf;
    if (!*name)
        return fail(msg, msglen, "image reference has no name%s", "");
    if (strlen(name) > NAME_MAX_LEN)
        return fail(msg, msglen, "image name longer than 255 characters%s", "");

    char *first_slash = strchr(name, '/');
    const char *path = name;
    if (first_slash) {
        size_t dlen = (size_t)(first_slash - name);
        if (memchr(name, '.', dlen) || memchr(name, ':', dlen) ||
            (dlen == 9 && memcmp(name, "localhost", 9) == 0)) {
            if (!domain_valid(name, dlen)) {
                *first_slash = '\0';
                return fail(msg, msglen, "bad registry host '%s'", name);
            }
            memcpy(out->registry, name, dlen);
            out->registry[dlen] = '\0';
            path = first_slash + 1;
        }
    }
    if (!out->registry[0] || strcmp(out->registry, "index.docker.io") == 0)
        strcpy(out->registry, "docker.io");

    /* Each component of the repository path. */
    for (const char *p = path;;) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (!component_valid(p, n)) {
            for (size_t i = 0; i < n; i++)
                if (p[i] >= 'A' && p[i] <= 'Z')
                    return fail(msg, msglen, "repository name '%s' must be lowercase", path);
            return fail(msg, msglen, "bad repository name '%s'", path);
        }
        if (!end)
            break;
        p = end + 1;
    }
    int library = strcmp(out->registry, "docker.io") == 0 && !strchr(path, '/');
    if (snprintf(out->repository, sizeof(out->repository), "%s%s", library ? "library/" : "",
                 path) >= (int)sizeof(out->repository))
        return fail(msg, msglen, "image name longer than 255 characters%s", "");
    if (!out->tag[0] && !out->digest[0])
        strcpy(out->tag, "latest");
    return 0;
}

void image_ref_string(const struct image_ref *r, char *out, size_t cap)
{
    if (r->digest[0])
        snprintf(out, cap, "%s/%s@%s", r->registry, r->repository, r->digest);
    else
        snprintf(out, cap, "%s/%s:%s", r->registry, r->repository, r->tag);
}
