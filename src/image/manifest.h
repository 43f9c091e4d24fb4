/*
 * manifest — OCI and Docker schema 2 manifests, indexes (manifest lists) and image configs,
 * parsed with jansson into plain structs.
 *
 * Accepted manifest media types (MANIFEST_ACCEPT is the Accept header that asks for them):
 *   application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json,
 *   application/vnd.docker.distribution.manifest.v2+json,
 *   application/vnd.docker.distribution.manifest.list.v2+json.
 * Layers: OCI tar, tar+gzip, tar+zstd and Docker's rootfs.diff.tar.gzip. Foreign and
 * non-distributable layers (or any layer with "urls") are refused: their content lives outside the
 * registry and could not be verified the same way. Schema 1 is refused.
 *
 * Errors are -EPROTO (malformed or unsupported, the reason in msg) or -ENOMEM; platform selection
 * gives -ENOENT. Pure functions, thread-safe; outputs are owned by the caller and released with
 * the matching _free (which accepts a zeroed struct).
 */
#ifndef WARREN_IMAGE_MANIFEST_H
#define WARREN_IMAGE_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#define MANIFEST_ACCEPT                                                                            \
    "application/vnd.oci.image.index.v1+json, "                                                    \
    "application/vnd.oci.image.manifest.v1+json, "                                                 \
    "application/vnd.docker.distribution.manifest.list.v2+json, "                                  \
    "application/vnd.docker.distribution.manifest.v2+json"

/* Manifests and configs above this size are refused before parsing. */
#define MANIFEST_MAX_BYTES (4 << 20)
/* The most layers an image may have. */
#define MANIFEST_MAX_LAYERS 63

enum layer_compression { LAYER_PLAIN, LAYER_GZIP, LAYER_ZSTD };

struct image_layer {
    char digest[80]; /* "sha256:<hex>" */
    int64_t size;
    enum layer_compression compression;
};

struct index_entry {
    char digest[80];
    int64_t size;
    char os[32];
    char arch[32];
    char variant[16];
};

enum manifest_kind { MANIFEST_IMAGE, MANIFEST_INDEX };

struct manifest {
    enum manifest_kind kind;
    /* MANIFEST_IMAGE */
    char config_digest[80];
    int64_t config_size;
    struct image_layer *layers;
    size_t n_layers;
    /* MANIFEST_INDEX */
    struct index_entry *entries;
    size_t n_entries;
};

/* Parses a manifest or an index. content_type is the response's Content-Type (parameters after
 * ';' ignored) or NULL; when it is absent or generic ("application/json") the document's own
 * mediaType, or its shape, decides. */
int manifest_parse(const char *json, size_t len, const char *content_type, struct manifest *out,
                   char *msg, size_t msglen);
void manifest_free(struct manifest *m);

/* The platform this process runs on: os "linux", arch and variant in OCI terms from uname
 * (x86_64 → amd64, aarch64 → arm64 + "v8", armv7l → arm + "v7", ...). */
void manifest_host_platform(char os[32], char arch[32], char variant[16]);
/* Picks the entry of an index for os/arch/variant. An entry without a variant matches any
 * wanted variant, but one with the exact variant is preferred; for arm64 an entry without a
 * variant also counts as v8. -ENOENT with the platforms available listed in msg when none fits. */
int manifest_select(const struct manifest *index, const char *os, const char *arch,
                    const char *variant, size_t *which, char *msg, size_t msglen);

/* The parts of an image config the daemon uses. String arrays are NULL-terminated and malloc'd;
 * an array that the config leaves out (or null) is NULL, an empty one is {NULL}. */
struct image_config {
    char **env;
    char *workdir;
    char *user;
    char **entrypoint;
    char **cmd;
    char **diff_ids;
    size_t n_diff_ids;
    char os[32];
    char arch[32];
    char variant[16];
};

int image_config_parse(const char *json, size_t len, struct image_config *out, char *msg,
                       size_t msglen);
void image_config_free(struct image_config *c);

#endif
