/*
 * archive_import — an image brought in as one streamed archive (PUT /v1/templates/NAME/archive,
 * `warren import NAME F`), not pulled from a registry. Three shapes are recognised:
 *   - `docker save` output: manifest.json (Config + Layers paths) with <id>/layer.tar and
 *     <id>.json (classic) or blobs/sha256/<hex> (docker 25+), gzip/zstd around the whole allowed;
 *   - an OCI image layout in a tar (`skopeo copy ... oci-archive:F`): oci-layout, index.json,
 *     blobs/sha256/<hex>; a nested index is followed once; the host's platform is preferred;
 *   - anything else that is a tar (plain, gzip or zstd): a root filesystem, which becomes one
 *     layer (the archive as given is its blob) under a generated OCI config (Env PATH default)
 *     and manifest, so that the image exports the same way as a pulled one.
 * The input is read once, front to back (a socket or pipe): every member blob is spooled,
 * hashed while written, into a private directory under the store (layers/.tmp-import-*), then
 * the manifest is resolved, every digest checked, the layers unpacked through the layer store
 * and the blobs (layers, config, manifest) moved into blobs/sha256/. On any failure the spool
 * is removed; layers already unpacked stay (they are whole, content-addressed, and collected by
 * layer_store_gc when nothing keeps them).
 */
#ifndef WARREN_IMAGE_ARCHIVE_IMPORT_H
#define WARREN_IMAGE_ARCHIVE_IMPORT_H

#include <stddef.h>
#include <stdint.h>

#include "image/layers.h"

#define IMAGE_MAX_LAYERS 64

struct imported_layer {
    char digest[80];     /* the blob in blobs/sha256/ ("sha256:<hex>") */
    char diff_id[80];    /* the uncompressed tar's digest: the unpacked layer's name */
    char media_type[80]; /* as in the manifest: application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]
                          */
    int64_t size;        /* blob size in bytes */
};

enum image_archive_kind { IMAGE_ARCHIVE_DOCKER, IMAGE_ARCHIVE_OCI, IMAGE_ARCHIVE_ROOTFS };

struct imported_image {
    enum image_archive_kind kind;
    char manifest_digest[80]; /* the OCI image manifest (a blob; generated for docker/rootfs) */
    char config_digest[80];   /* the image config (a blob) */
    char *config_json;        /* its text, NUL-terminated, malloc'd: imported_image_free */
    size_t n_layers;
    struct imported_layer layers[IMAGE_MAX_LAYERS]; /* base first */
    int64_t total_size;                             /* the layer blobs' sizes added up */
};

/*
 * Reads the archive from fd to its end (fd is not closed) into the store; fills *out (freed with
 * imported_image_free, also after a failure). Returns 0 or -errno with msg set: -EINVAL for an
 * archive that is not one of the shapes or whose manifest is malformed (more than
 * IMAGE_MAX_LAYERS layers, a missing blob), -EBADMSG for a digest that does not match its
 * content or a corrupt stream, -ENOSPC when the disk fills (nothing of the import left but
 * whole layers), and the layer unpacker's errors for a refused layer. Blocking; run it off the
 * event loop. Thread-safe with other imports and unpacks on the same store.
 */
int image_import(int fd, struct layer_store *s, struct imported_image *out, char *msg,
                 size_t msglen);
void imported_image_free(struct imported_image *img);

#endif
