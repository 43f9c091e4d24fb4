/*
 * registry_internal — what registry.c (client, requests, auth, manifests) and registry_blob.c
 * (blob files, concurrent layer downloads) share. Not part of image/'s interface.
 */
#ifndef WARREN_IMAGE_REGISTRY_INTERNAL_H
#define WARREN_IMAGE_REGISTRY_INTERNAL_H

#include <limits.h>
#include <stdint.h>

#include <curl/curl.h>

#include "core/buf.h"
#include "image/digest.h"
#include "image/registry.h"
#include "image/registry_auth.h"

/* Transient transfer failures are retried (resuming) this many times in all. */
#define REGISTRY_ATTEMPTS 3
/* Error bodies and token answers are small; more is not read. */
#define SMALL_BODY_MAX (64 << 10)
/* Layers downloading at once in one pull. */
#define REGISTRY_PARALLEL 4

struct registry_client {
    struct registry_options o;
    struct registry_auths auths;
    void **cas; /* X509 *, the extra CA bundle */
    size_t n_cas;
};

struct endpoint {
    char base[320]; /* "https://host:port" (a mirror: its URL without a trailing '/') */
    char host[256]; /* host[:port]: messages and credentials */
    int insecure;   /* plain HTTP allowed, for the endpoint and its redirects */
    int mirror;
};

/* One registry_pull against one endpoint. */
struct pull {
    struct registry_client *rc;
    const struct image_ref *ref;
    char refstr[640];
    struct endpoint ep;
    char *authz; /* "Authorization: ..." header line or NULL; wiped when replaced or freed */
    const char *blobs_dir;
    registry_progress_fn fn;
    void *arg;
    int64_t done, total, reported;
    char *msg;
    size_t msglen;
};

/* One HTTP GET, with its answer going to memory (mem) or to a layer's partial file (fd >= 0). */
struct xfer {
    struct pull *p;
    CURL *h;
    struct curl_slist *hdrs;
    char errbuf[CURL_ERROR_SIZE];
    long status;
    char www_auth[2048];
    char content_type[128];
    char content_range[128];
    buf_t err; /* the body of a non-2xx answer, capped */
    buf_t *mem;
    size_t mem_limit; /* more than this in mem is an error (sink_err -EFBIG) */
    const struct image_layer *layer;
    char part[PATH_MAX];
    char final[PATH_MAX];
    int fd;
    struct digest_ctx dg;
    int64_t offset; /* where this request starts (a Range when > 0) */
    int64_t got;    /* bytes in the partial file */
    int started;    /* the body of the current 2xx answer has begun */
    int sink_err;   /* from the write callback: -EBADMSG, -ENOSPC, -EIO, -EFBIG, -EAGAIN */
    int attempts;   /* transient failures so far */
    int reauthed;   /* a 401 mid-pull has been answered with a fresh token */
    int resumed;    /* the file holds bytes from an earlier transfer */
    int restarted;  /* the partial file was thrown away once already */
    int done;       /* the blob is in place */
};

/* 1 if host ("host[:port]") is listed as insecure. */
int registry_host_insecure(const struct registry_client *rc, const char *host);

void xfer_init(struct xfer *x, struct pull *p);
void xfer_reset_answer(struct xfer *x);
/* A new easy handle for GET url (path relative to the endpoint when it starts with '/'). */
int xfer_prepare(struct xfer *x, const char *url, const char *accept, int with_auth);
void xfer_release(struct xfer *x);
/* The error of a finished transfer: a curl failure or a non-2xx status, with msg written. */
int xfer_error(struct xfer *x, CURLcode cc, const char *what);
/* Answers a 401's challenge: fetches a token (or picks basic credentials) into p->authz. */
int pull_authenticate(struct pull *p, const char *www_auth);
void pull_progress(struct pull *p, int64_t delta, int force);
int pull_fail(struct pull *p, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* blobs_dir/sha256/<hex> and blobs_dir/tmp/<hex>.part for a digest. */
void blob_paths(const struct pull *p, const char *digest, char *final, char *part);
/* 1 if the blob is in place with this size. */
int blob_present(const char *final, int64_t size);
/* Stores a verified in-memory blob (manifest, config) if it is not there yet. */
int blob_store(struct pull *p, const char *digest, const void *data, size_t len);
/* Downloads the layers not in place yet, up to REGISTRY_PARALLEL at once. */
int pull_layers(struct pull *p, const struct image_layer *layers, size_t n);

#endif
