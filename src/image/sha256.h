/*
 * sha256 — the streaming SHA-256 that unpack, the layer store and import hash with, rendered as an
 * OCI digest "sha256:<64 lowercase hex>". A stand-in until image/digest.h (the registry client's
 * struct digest_ctx) is merged: the same init/update/final shape, so callers move over 1:1.
 * Not thread-safe per context; contexts are independent.
 */
#ifndef WARREN_IMAGE_SHA256_H
#define WARREN_IMAGE_SHA256_H

#include <stddef.h>

/* "sha256:" + 64 hex + NUL fits; callers' buffers are 80 bytes. */
#define SHA256_DIGEST_LEN 80

struct sha256_ctx {
    void *md; /* EVP_MD_CTX */
};

/* 0 or -ENOMEM. A context that was init'ed must be finished with sha256_final or sha256_free. */
int sha256_init(struct sha256_ctx *c);
void sha256_update(struct sha256_ctx *c, const void *data, size_t len);
/* Writes "sha256:<hex>" into out (SHA256_DIGEST_LEN bytes) and frees the context. */
void sha256_final(struct sha256_ctx *c, char *out);
/* Frees a context without a result (error paths). NULL-safe on a zeroed context. */
void sha256_free(struct sha256_ctx *c);
/* True if s is "sha256:" followed by exactly 64 lowercase hex digits. */
int sha256_digest_valid(const char *s);

#endif
