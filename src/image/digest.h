/*
 * digest — content digests of OCI blobs: streaming sha256 written as "sha256:<64 lowercase hex>".
 *
 * Only sha256 is supported (the only algorithm registries use for images in practice); anything
 * else is refused rather than trusted unchecked. A digest_ctx is used by one thread at a time.
 */
#ifndef WARREN_IMAGE_DIGEST_H
#define WARREN_IMAGE_DIGEST_H

#include <stddef.h>

/* "sha256:" + 64 hex + NUL. */
#define DIGEST_STRLEN 72

struct digest_ctx {
    void *md; /* EVP_MD_CTX, owned */
};

/* 0 or -ENOMEM. A successful init must be matched by digest_final() or digest_free(). */
int digest_init(struct digest_ctx *c);
void digest_update(struct digest_ctx *c, const void *p, size_t n);
/* Writes "sha256:<hex>" into out and releases the context. */
void digest_final(struct digest_ctx *c, char out[DIGEST_STRLEN]);
/* Releases a context whose digest is not wanted (safe on a zeroed or already released one). */
void digest_free(struct digest_ctx *c);
/* The digest of [p, p+n) in one call: 0 or -ENOMEM. */
int digest_buffer(const void *p, size_t n, char out[DIGEST_STRLEN]);
/* Checks that s is "sha256:" followed by exactly 64 lowercase hex digits and copies the hex part
 * (with its NUL) into hex_out: 0, or -EINVAL for any other algorithm or form. */
int digest_parse(const char *s, char hex_out[65]);
/* True if s is a digest digest_parse() accepts. */
int digest_valid(const char *s);

#endif
