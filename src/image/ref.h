/*
 * ref — image references as Docker writes them, parsed and normalised.
 *
 *   alpine                          docker.io/library/alpine:latest
 *   alpine:3.19                     docker.io/library/alpine:3.19
 *   user/app                        docker.io/user/app:latest
 *   ghcr.io/org/app:v1              ghcr.io/org/app:v1
 *   localhost:5000/app@sha256:...   localhost:5000/app@sha256:... (no tag)
 *   app:v1@sha256:...               tag kept, the digest is what is pulled
 *
 * The first path component names a registry iff it contains '.' or ':' or is "localhost".
 * "index.docker.io" is written "docker.io"; the API host of docker.io is the registry client's
 * business. Pure functions, thread-safe.
 */
#ifndef WARREN_IMAGE_REF_H
#define WARREN_IMAGE_REF_H

#include <stddef.h>

struct image_ref {
    char registry[256];   /* "docker.io", "localhost:5000", "ghcr.io" */
    char repository[256]; /* "library/alpine": lowercase components joined by '/' */
    char tag[129];        /* up to 128 characters; "" when only a digest was given */
    char digest[80];      /* "sha256:<64 hex>" or "" */
};

/* 0, or -EINVAL with the reason in msg (empty, spaces or control characters, upper case in the
 * repository, bad tag or digest, a name over 255 characters, a bad host or port). */
int image_ref_parse(const char *s, struct image_ref *out, char *msg, size_t msglen);
/* The canonical form: "registry/repository@digest" when there is a digest, else
 * "registry/repository:tag". Truncated to cap (always NUL-terminated). */
void image_ref_string(const struct image_ref *r, char *out, size_t cap);

#endif
