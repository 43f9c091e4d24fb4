/*
 * oci — images as OCI documents in the layer store's blobs: deriving an image with one more
 * layer (a snapshot), and writing an image as an oci-archive (an OCI image layout in a tar, as
 * `skopeo copy ... oci-archive:F` reads it).
 *
 * Every function blocks (file I/O): run them off the event loop. Errors: 0 or -errno with msg
 * naming the blob or step: -ENOENT for a blob missing from the store, -EPROTO for a manifest or
 * config that is not JSON of the expected shape, -ENOSPC, -EPIPE when the reader went away.
 */
#ifndef WARREN_IMAGE_OCI_H
#define WARREN_IMAGE_OCI_H

#include <stddef.h>
#include <stdint.h>

#include "image/digest.h"
#include "image/layers.h"

/* Stores `data` as a blob (atomically: a reader never sees part of one); its digest goes to
 * `digest`. */
int oci_put_blob(struct layer_store *s, const void *data, size_t len, char digest[DIGEST_STRLEN]);

/* A new image: the image of manifest `base_manifest` plus the layer blob `layer_digest`
 * (uncompressed, `layer_size` bytes, so its diff_id is its digest). Writes the new config and
 * manifest as blobs; their digests go to config_out and manifest_out, and the config's text to
 * *config_json (malloc'd). */
int oci_derive(struct layer_store *s, const char *base_manifest, const char *layer_digest,
               int64_t layer_size, char manifest_out[DIGEST_STRLEN], char config_out[DIGEST_STRLEN],
               char **config_json, char *msg, size_t msglen);

/* The same, in general: with `base_manifest` NULL the base is an empty image (no layers, an empty
 * linux/amd64 config: FROM scratch); with `layer_digest` NULL no layer is added (a config change);
 * `edits` (JSON text of an object, or NULL) sets fields of the config's "config" object: each key
 * replaces that field ("Env", "Cmd", "WorkingDir", ...) and null removes it, except "Labels",
 * whose entries are merged into the image's labels (null removes one). The history gets an
 * entry saying `created_by` (empty_layer without a layer). -EINVAL for edits that are not an
 * object. */
int oci_derive_ex(struct layer_store *s, const char *base_manifest, const char *layer_digest,
                  int64_t layer_size, const char *edits, const char *created_by,
                  char manifest_out[DIGEST_STRLEN], char config_out[DIGEST_STRLEN],
                  char **config_json, char *msg, size_t msglen);

/* Stores the empty layer (a tar with no entries: its 1024 zero bytes) as a blob; sandboxes need
 * at least one layer, so an image built FROM scratch starts with it. */
int oci_empty_layer(struct layer_store *s, char digest[DIGEST_STRLEN], int64_t *size);

/* Writes the oci-archive of manifest `manifest` to fd: oci-layout, index.json naming it
 * `ref_name` (org.opencontainers.image.ref.name), and the manifest, config and layer blobs. */
int oci_export(struct layer_store *s, const char *manifest, const char *ref_name, int fd, char *msg,
               size_t msglen);

#endif
