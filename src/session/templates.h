/*
 * templates — the images sandboxes are made from, as the daemon knows them: named templates
 * (POST /v1/templates), the implicit template of each image reference a create names, imports
 * and snapshots. Built on image/ (registry pulls, the content-addressed layer store) and recorded
 * in the store, so a restarted daemon knows them again.
 *
 * A template is `pulling` (a pull or an import is in flight), `ready` (every layer unpacked in
 * the layer store: a sandbox can be made of it at once) or `failed` (its error is kept; the next
 * use starts a new pull). The built-in `host` template is not one of these: it has no image.
 *
 * Pulls run on the uv thread pool; everything else, callbacks included, on the loop thread. Two
 * users of one missing image share one pull (they wait on the same template). An implicit
 * template is named by its image's canonical reference ("docker.io/library/python:3.11-slim"),
 * which no user-given name can be (names are [A-Za-z0-9_.-]).
 *
 * Errors: 0 or -errno for plain failures; pulls and lookups answer an enum session_err with a
 * message naming the image, registry or layer entry.
 */
#ifndef WARREN_SESSION_TEMPLATES_H
#define WARREN_SESSION_TEMPLATES_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "session/error.h"
#include "session/sandbox.h"
#include "store/store.h"

#define TEMPLATE_NAME_MAX 512

enum template_state { TEMPLATE_PULLING, TEMPLATE_READY, TEMPLATE_FAILED };

struct template_layer {
    char digest[80];  /* the blob (compressed as stored) */
    char diff_id[80]; /* the uncompressed tar: names the unpacked layer */
    int64_t size;     /* of the blob */
};

struct template_waiter;

struct template
{
    struct template *next;
    char name[TEMPLATE_NAME_MAX];
    char image[TEMPLATE_NAME_MAX]; /* canonical reference; "" for an import or a snapshot */
    char digest[80];               /* the manifest's */
    char config_digest[80];
    enum template_state state;
    enum session_err err; /* when failed */
    char error[512];
    struct template_layer *layers; /* bottom first, as in the manifest */
    size_t n_layers;
    int64_t size_bytes; /* the blobs' sizes */
    json_t *config;     /* {env, workdir, user, entrypoint, cmd} (owned) */
    double created_at;
    _Atomic int64_t bytes_done; /* while pulling: written by the pool thread */
    _Atomic int64_t bytes_total;
    /* private */
    struct template_set *set;
    struct template_waiter *waiters;
    int busy;   /* a pull, import or snapshot is making it: it cannot be removed */
    int hidden; /* an intermediate result (a build's cache): not listed by the API */
};

struct registry_client;
struct layer_store;
struct store_op;

struct template_set {
    uv_loop_t *loop;
    char images_dir[1024]; /* <state_dir>/images */
    struct registry_client *rc;
    struct layer_store *layers;
    store_t *store;
    double pull_timeout_s; /* how long a create waits for its image */
    unsigned builds;       /* session/build.c: builds in flight (the cache is pruned without) */
    /* private */
    struct template *head;
    unsigned pending; /* pulls, imports, snapshots and collections in flight or deferred */
    int collecting;   /* unused layers are being removed: the others wait (deferred) */
    struct store_op *deferred;
    int gc_wanted; /* a template was removed since the last collection */
};

/* Opens the layer store under <state_dir>/images and loads the recorded templates; those whose
 * pull a previous daemon did not finish are pulled again (what was downloaded is kept). `rc` is
 * borrowed and must outlive the set. On failure, a message naming the problem is in msg. */
int templates_open(struct template_set *ts, uv_loop_t *loop, const char *state_dir,
                   struct registry_client *rc, store_t *store, double pull_timeout_s, char *msg,
                   size_t msglen);
/* Frees every template; pulls in flight must be done (the loop has run them to their end). */
void templates_close(struct template_set *ts);

struct template *templates_find(struct template_set *ts, const char *name);

/* Creates template `name` of `image` and starts its pull; with `name` NULL, the implicit
 * template of `image`, pulled unless it is ready or being pulled already. SESSION_ERR_NAME_TAKEN
 * if template `name` exists, SESSION_ERR_BAD_REFERENCE for a malformed reference (msg says
 * why). *out is the template. */
enum session_err templates_pull(struct template_set *ts, const char *name, const char *image,
                                struct template **out, char *msg, size_t msglen);

/* Calls cb once, on the loop thread and never before this returns, with a ready template: the
 * template `name`, or with `image` (name NULL) the implicit template of that reference, pulled
 * first if missing or failed before. On failure tpl is NULL and err/msg say why:
 * SESSION_ERR_NOT_FOUND (no template `name`), BAD_REFERENCE, IMAGE_NOT_FOUND, REGISTRY,
 * REGISTRY_DENIED, IMAGE_INVALID, IMAGE_CORRUPT, NO_SPACE, TIMEOUT (not ready within
 * pull_timeout_s; the pull goes on). */
typedef void (*template_ready_cb)(struct template *tpl, enum session_err err, const char *msg,
                                  void *arg);
void templates_acquire(struct template_set *ts, const char *name, const char *image,
                       template_ready_cb cb, void *arg);

/* Makes template `name` of the image archive read from `fd` (a docker save tarball, an
 * oci-archive or a root file system tar; plain, gzip or zstd) on the pool; `fd` is taken over
 * (closed when the import has read what it needs or failed). cb runs when it is done: with the
 * ready template, or NULL and SESSION_ERR_IMAGE_INVALID (msg names what is wrong), NO_SPACE,
 * NOMEM — then no template is left. At once: SESSION_ERR_NAME_TAKEN, NOMEM (cb never runs). */
enum session_err templates_import(struct template_set *ts, const char *name, int fd,
                                  template_ready_cb cb, void *arg, char *msg, size_t msglen);

/* Writes the ready template `tpl` as an oci-archive to `fd` (taken over, closed when done) on
 * the pool; cb runs when it is done, with tpl, or NULL and why. The template cannot be removed
 * meanwhile. At once: SESSION_ERR_STATE (not ready, or busy), NOMEM. */
enum session_err templates_export(struct template_set *ts, struct template *tpl, int fd,
                                  template_ready_cb cb, void *arg, char *msg, size_t msglen);

/* Makes template `name` of template `base` plus one layer of what a sandbox made of it changed:
 * `upper`, the upper directory of its overlay root, with owners in [host_base, host_base + count)
 * shifted back to the image's. The caller keeps the sandbox frozen until cb runs (with the
 * template, or NULL: SESSION_ERR_SETUP naming the path that failed, NO_SPACE, NOMEM). At once:
 * NAME_TAKEN, STATE (base not ready), NOMEM. */
enum session_err templates_snapshot(struct template_set *ts, const char *name,
                                    const struct template *base, const char *upper, uid_t host_base,
                                    uid_t count, template_ready_cb cb, void *arg, char *msg,
                                    size_t msglen);

/* The general form of a snapshot, for builds (session/build.h): template `name` of `base` (NULL:
 * of nothing, FROM scratch: the empty layer is its first) plus, when `upper` is given, one layer
 * of it as templates_snapshot() makes it, with the config edits of oci_derive_ex() (image/oci.h)
 * and a history entry saying `created_by`. Callbacks and errors as templates_snapshot(). */
struct template_derive {
    const char *upper; /* NULL: no layer (a config change) */
    uid_t host_base, count;
    const char *edits; /* JSON text, or NULL */
    const char *created_by;
    int hidden;
};
enum session_err templates_derive(struct template_set *ts, const char *name,
                                  const struct template *base, const struct template_derive *d,
                                  template_ready_cb cb, void *arg, char *msg, size_t msglen);

/* A second name for the ready template `src`: template `name`, ready at once, of the same image
 * (layers, config, digests), recorded. *out is it. SESSION_ERR_NAME_TAKEN, STATE (src not
 * ready), NOMEM. */
enum session_err templates_alias(struct template_set *ts, const char *name,
                                 const struct template *src, int hidden, struct template **out,
                                 char *msg, size_t msglen);

/* What a sandbox made of the ready template `tpl` needs (session/sandbox.h): its layers (top
 * first, as overlayfs wants its lowers) and its image config. Free with sandbox_image_free(). */
enum session_err templates_image(const struct template_set *ts, const struct template *tpl,
                                 struct sandbox_image **img, char *msg, size_t msglen);

/* Deletes a template that no sandbox uses (the caller checks: a stopped sandbox uses its
 * template's layers too) and, in the background, the layers and blobs no other template names.
 * -EBUSY while it is being pulled. */
int templates_remove(struct template_set *ts, struct template *tpl);

/* Bytes the layer store occupies on the host (layers and blobs). */
int64_t templates_store_bytes(const struct template_set *ts);

const char *template_state_name(enum template_state s);

#endif
