/*
 * registry — a blocking client of the OCI distribution API (docker-registry, Docker Hub, ghcr,
 * ...) that pulls an image's manifest, config and layers into a content-addressed blob directory.
 * The daemon runs pulls on its thread pool; the event loop never calls into here.
 *
 * Transport: HTTPS verified against the system CA store plus an optional extra CA bundle; plain
 * HTTP only for hosts listed as insecure (and mirrors whose URL says http://). Redirects (blob
 * storage) are followed over the same set of protocols; curl never forwards the Authorization
 * header to another host. Credentials and tokens are never logged.
 *
 * Threading: a client is immutable after registry_client_new; any number of registry_pull calls
 * may run on it at once from different threads. Two pulls fetching the same blob into the same
 * blobs_dir serialise on a lock of its partial file (the second waits, then finds the blob).
 */
#ifndef WARREN_IMAGE_REGISTRY_H
#define WARREN_IMAGE_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "image/manifest.h"
#include "image/ref.h"

struct registry_options {        /* all borrowed, must outlive the client */
    const char *const *insecure; /* "host:port" served over plain HTTP (--insecure-registry) */
    size_t n_insecure;
    const char *const *mirrors; /* "docker.io=http://127.0.0.1:5000" (--registry-mirror) */
    size_t n_mirrors;
    const char *auth_file; /* docker config.json (--registry-auth), or NULL */
    const char *ca_file;   /* extra CA bundle trusted besides the system store, or NULL */
    long timeout_s;        /* connect timeout and longest stall of a transfer; 0 means 30 */
};

struct registry_client;

/* Checks the options (mirror syntax), reads the auth file and the CA bundle. 0, or -EINVAL /
 * -ENOENT / -EACCES / -ENOMEM with the reason in msg. */
int registry_client_new(const struct registry_options *o, struct registry_client **out, char *msg,
                        size_t msglen);
void registry_client_free(struct registry_client *rc);

/* Progress of one pull in bytes of layers (blobs found on disk count as done at once). Called on
 * the pulling thread; must be quick. */
typedef void (*registry_progress_fn)(void *arg, int64_t done, int64_t total);

struct pulled_image {
    char manifest_digest[80]; /* the image manifest (for an index: the chosen platform's) */
    char index_digest[80];    /* the index the tag pointed at, or "" */
    char config_digest[80];
    struct image_config config;
    struct image_layer *layers; /* base first; their blobs are in blobs_dir/sha256/<hex> */
    size_t n_layers;
    int64_t total_bytes; /* sum of the layer sizes */
};

/*
 * Resolves ref (mirrors first, then the registry itself) and stores the index (if any), manifest,
 * config and every layer as blobs_dir/sha256/<hex>. Blobs already there with the right size are
 * not fetched again (they were verified when written). Everything is checked against its digest
 * and size before it is renamed into place; partial layers stay as blobs_dir/tmp/<hex>.part and
 * are resumed with a Range request by the next pull. Up to 4 layers download at once.
 *
 * On success *out is filled (release with pulled_image_free). Errors, the reason in msg:
 *   -ENOENT        image, tag or platform not found ("image not found: <ref>")
 *   -ECONNREFUSED, -EHOSTUNREACH, -ETIMEDOUT   registry unreachable, or TLS verification failed
 *                  (ECONNREFUSED); msg names the host and curl's error
 *   -ECONNRESET    the connection broke mid-transfer (retried twice first)
 *   -EACCES        authentication or authorisation refused
 *   -EAGAIN        rate-limited (HTTP 429)
 *   -EBADMSG       a blob or manifest does not match its digest or size (the bad file is deleted)
 *   -EPROTO        malformed or unsupported manifest/config, or an unexpected HTTP status
 *   -ENOSPC, -EIO, -ENOMEM   local failures
 */
int registry_pull(struct registry_client *rc, const struct image_ref *ref, const char *blobs_dir,
                  struct pulled_image *out, registry_progress_fn fn, void *arg, char *msg,
                  size_t msglen);
void pulled_image_free(struct pulled_image *p);

#endif
