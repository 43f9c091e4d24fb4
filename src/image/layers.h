/*
 * layers — the content-addressed store of image blobs and unpacked layers.
 *
 * Layout under images_dir:
 *   blobs/sha256/<hex>         verified blobs (written by the registry client or by import)
 *   layers/<diffid-hex>/       one unpacked layer; the directory itself is an overlayfs lower
 *   layers/<diffid-hex>.size   its disk use in bytes (decimal), for layer_store_bytes
 *   layers/.tmp-*              work in progress (an unpack, an import's spool); removed at open
 * A layer directory appears by one rename(2) of a finished tree, so a crash never leaves a
 * half-made layer visible.
 *
 * Threading: a store is immutable after open; every function may be called from any thread at
 * once (each unpack works in its own temporary directory). Two unpacks of the same diff_id both
 * succeed with one result. layer_store_gc must not run while an unpack or import whose result is
 * not in the keep sets is under way (the caller serialises them).
 *
 * Digests are "sha256:<64 lowercase hex>"; anything else is -EINVAL.
 */
#ifndef WARREN_IMAGE_LAYERS_H
#define WARREN_IMAGE_LAYERS_H

#include <stddef.h>
#include <stdint.h>

struct layer_store;

/* Creates images_dir/{blobs/sha256,layers} as needed and removes leftovers of interrupted work
 * (layers/.tmp-*). *out is freed with layer_store_close. 0 or -errno. */
int layer_store_open(const char *images_dir, struct layer_store **out);
void layer_store_close(struct layer_store *s);

/* The images_dir it was opened with, and "<images_dir>/blobs/sha256" (owned by the store). */
const char *layer_store_dir(const struct layer_store *s);
const char *layer_store_blobs_dir(const struct layer_store *s);

/*
 * Makes layers/<diff_id hex> from the layer blob at blob_path (gzip, zstd or plain tar) unless it
 * exists already (then returns 0 at once). The blob's uncompressed stream must hash to diff_id
 * (-EBADMSG otherwise). Errors are those of layer_unpack with msg set; ENOSPC and EDQUOT are
 * -ENOSPC. On any failure nothing is left behind.
 */
int layer_store_unpack(struct layer_store *s, const char *blob_path, const char *diff_id, char *msg,
                       size_t msglen);
/* The same when the diff_id is not known beforehand (an imported rootfs tar): it is computed
 * and written to diff_id_out (80 bytes). Always unpacks. */
int layer_store_unpack_new(struct layer_store *s, const char *blob_path, char *diff_id_out,
                           char *msg, size_t msglen);

/* "<images_dir>/layers/<hex>" into out; -ENAMETOOLONG if it does not fit. Does not check that it
 * exists (layer_store_has does). */
int layer_store_path(const struct layer_store *s, const char *diff_id, char *out, size_t cap);
/* 1 if the layer is unpacked, 0 if not, -EINVAL for a malformed diff_id. */
int layer_store_has(const struct layer_store *s, const char *diff_id);
/* "<images_dir>/blobs/sha256/<hex>" into out. */
int layer_store_blob_path(const struct layer_store *s, const char *digest, char *out, size_t cap);

/* Disk use of every layer and blob in bytes (allocated blocks), or -errno. */
int64_t layer_store_bytes(const struct layer_store *s);

/* Removes every layer whose diff_id is not in keep_diff_ids and every blob whose digest is not in
 * keep_blobs; *freed (optional) gets the bytes given back. Work in progress (.tmp-*) and names
 * that are not digests are left alone. 0 or the first -errno (it goes on past errors). */
int layer_store_gc(struct layer_store *s, const char *const *keep_diff_ids, size_t n,
                   const char *const *keep_blobs, size_t m, int64_t *freed);

#endif
