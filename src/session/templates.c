/*
 * templates — see templates.h.
 */
#include "session/templates.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/json.h"
#include "core/log.h"
#include "core/util.h"
#include "image/archive_import.h"
#include "image/layers.h"
#include "image/oci.h"
#include "image/ref.h"
#include "image/registry.h"
#include "image/snapshot.h"

static void collect(struct template_set *ts);

struct template_waiter {
    struct template_waiter *next;
    struct template *tpl;
    template_ready_cb cb;
    void *arg;
    uv_timer_t timer;
    uv_idle_t
        defer; /* answers a ready template on the next loop turn (never before acquire returns) */
    int open_handles;
};

/* Work on the layer store for one template, on the pool: a pull, an import or a snapshot. Its
 * outcome is an image (layers, config, digests) that becomes the template's, or an error. */
struct store_op {
    uv_work_t work;
    struct store_op *next; /* deferred while a collection runs */
    struct template *tpl;
    void (*run)(struct store_op *op);
    template_ready_cb cb; /* import and snapshot: told when done (pulls answer their waiters) */
    void *cb_arg;
    /* outcome */
    int r;
    enum session_err err;
    char msg[512];
    char manifest[80], config_digest[80];
    struct template_layer *layers;
    size_t n_layers;
    json_t *config;
    /* pull */
    struct image_ref ref;
    /* import */
    int fd;
    /* export: reads the template, changes nothing */
    int reads_only;
    /* snapshot */
    char upper[1200];
    uid_t base, count;
    char base_manifest[80];
    struct template_layer *base_layers;
    size_t n_base_layers;
    /* derive: config edits (owned JSON text, or NULL), the history's words, no base image */
    char *edits;
    char created_by[1024];
    int scratch;
};

const char *template_state_name(enum template_state s)
{
    static const char *const names[] = {"pulling", "ready", "failed"};
    return names[s];
}

static void template_free(struct template *tpl)
{
    free(tpl->layers);
    json_decref(tpl->config);
    free(tpl);
}

static void unlink_template(struct template_set *ts, struct template *tpl)
{
    for (struct template **p = &ts->head; *p; p = &(*p)->next)
        if (*p == tpl) {
            *p = tpl->next;
            return;
        }
}

/* -- the record --------------------------------------------------------------------------- */

static json_t *template_record(const struct template *tpl)
{
    json_t *layers = json_array();
    for (size_t i = 0; i < tpl->n_layers; i++)
        json_array_append_new(layers, json_pack("{s:s, s:s, s:I}", "digest", tpl->layers[i].digest,
                                                "diff_id", tpl->layers[i].diff_id, "size",
                                                (json_int_t)tpl->layers[i].size));
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:I, s:O*, s:f, s:b}", "name", tpl->name,
                     "image", tpl->image, "digest", tpl->digest, "config_digest",
                     tpl->config_digest, "state", template_state_name(tpl->state), "layers", layers,
                     "size_bytes", (json_int_t)tpl->size_bytes, "config", tpl->config, "created_at",
                     tpl->created_at, "hidden", tpl->hidden);
}

static void template_save(struct template *tpl)
{
    json_t *rec = template_record(tpl);
    char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    if (!text || store_put(tpl->set->store, STORE_TEMPLATE, tpl->name, text) < 0)
        log_warn("templates: cannot record template %s", tpl->name);
    free(text);
    json_decref(rec);
}

/* The image config as the API shows it and sandboxes use it. */
static json_t *config_json(const struct image_config *c)
{
    return json_pack("{s:o, s:s?, s:s?, s:o, s:o}", "env", json_strv_array(c->env), "workdir",
                     c->workdir, "user", c->user, "entrypoint", json_strv_array(c->entrypoint),
                     "cmd", json_strv_array(c->cmd));
}

/* -- waiting ------------------------------------------------------------------------------ */

static void waiter_closed(uv_handle_t *h)
{
    struct template_waiter *w = h->data;
    if (--w->open_handles == 0)
        free(w);
}

static void waiter_finish(struct template_waiter *w, struct template *tpl, enum session_err err,
                          const char *msg)
{
    w->cb(tpl, err, msg, w->arg);
    w->open_handles = 2;
    uv_close((uv_handle_t *)&w->timer, waiter_closed);
    uv_close((uv_handle_t *)&w->defer, waiter_closed);
}

static void detach_waiter(struct template_waiter *w)
{
    for (struct template_waiter **p = &w->tpl->waiters; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            return;
        }
}

static void answer_waiters(struct template *tpl)
{
    struct template_waiter *w = tpl->waiters;
    tpl->waiters = NULL;
    while (w) {
        struct template_waiter *next = w->next;
        uv_timer_stop(&w->timer);
        if (tpl->state == TEMPLATE_READY)
            waiter_finish(w, tpl, SESSION_OK, NULL);
        else
            waiter_finish(w, NULL, tpl->err, tpl->error);
        w = next;
    }
}

static void on_wait_timeout(uv_timer_t *t)
{
    struct template_waiter *w = t->data;
    char msg[700];
    detach_waiter(w);
    snprintf(msg, sizeof(msg), "image %s was not ready within %.0f s (the pull goes on)",
             w->tpl->image[0] ? w->tpl->image : w->tpl->name, w->tpl->set->pull_timeout_s);
    waiter_finish(w, NULL, SESSION_ERR_TIMEOUT, msg);
}

static void on_defer(uv_idle_t *h)
{
    struct template_waiter *w = h->data;
    uv_idle_stop(h);
    waiter_finish(w, w->tpl, SESSION_OK, NULL);
}

/* -- pulling ------------------------------------------------------------------------------ */

static enum session_err pull_err(int r)
{
    switch (-r) {
    case ENOENT:
        return SESSION_ERR_IMAGE_NOT_FOUND;
    case EACCES:
    case EPERM:
        return SESSION_ERR_REGISTRY_DENIED;
    case EBADMSG:
        return SESSION_ERR_IMAGE_CORRUPT;
    case ENOSPC:
    case EDQUOT:
        return SESSION_ERR_NO_SPACE;
    case EPROTO:
    case ENOTSUP:
        return SESSION_ERR_IMAGE_INVALID;
    case ENOMEM:
        return SESSION_ERR_NOMEM;
    default:
        return SESSION_ERR_REGISTRY;
    }
}

static void on_progress(void *arg, int64_t done, int64_t total)
{
    struct template *tpl = arg;
    atomic_store(&tpl->bytes_done, done);
    atomic_store(&tpl->bytes_total, total);
}

/* Pool thread: download what is missing, then unpack every layer not yet in the store. */
static void pull_run(struct store_op *op)
{
    struct template_set *ts = op->tpl->set;
    struct pulled_image pulled = {0};
    char blobs[1100], blob[4200];
    snprintf(blobs, sizeof(blobs), "%s/blobs", ts->images_dir);
    op->r = registry_pull(ts->rc, &op->ref, blobs, &pulled, on_progress, op->tpl, op->msg,
                          sizeof(op->msg));
    if (op->r < 0) {
        op->err = pull_err(op->r);
        goto out;
    }
    if (pulled.config.n_diff_ids != pulled.n_layers) {
        op->r = -EPROTO;
        op->err = SESSION_ERR_IMAGE_INVALID;
        snprintf(op->msg, sizeof(op->msg),
                 "image %.300s: its config names %zu layers, its manifest %zu", op->tpl->image,
                 pulled.config.n_diff_ids, pulled.n_layers);
        goto out;
    }
    for (size_t i = 0; i < pulled.n_layers && op->r == 0; i++) {
        if ((op->r = layer_store_blob_path(ts->layers, pulled.layers[i].digest, blob,
                                           sizeof(blob))) == 0)
            op->r = layer_store_unpack(ts->layers, blob, pulled.config.diff_ids[i], op->msg,
                                       sizeof(op->msg));
    }
    if (op->r < 0) {
        op->err = op->r == -ENOSPC || op->r == -EDQUOT ? SESSION_ERR_NO_SPACE
                  : op->r == -EBADMSG                  ? SESSION_ERR_IMAGE_CORRUPT
                                                       : SESSION_ERR_IMAGE_INVALID;
        goto out;
    }
    op->layers = calloc(pulled.n_layers ? pulled.n_layers : 1, sizeof(*op->layers));
    op->config = config_json(&pulled.config);
    if (!op->layers || !op->config) {
        op->r = -ENOMEM;
        op->err = SESSION_ERR_NOMEM;
        snprintf(op->msg, sizeof(op->msg), "out of memory");
        goto out;
    }
    for (size_t i = 0; i < pulled.n_layers; i++) {
        snprintf(op->layers[i].digest, sizeof(op->layers[i].digest), "%s", pulled.layers[i].digest);
        snprintf(op->layers[i].diff_id, sizeof(op->layers[i].diff_id), "%s",
                 pulled.config.diff_ids[i]);
        op->layers[i].size = pulled.layers[i].size;
    }
    op->n_layers = pulled.n_layers;
    snprintf(op->manifest, sizeof(op->manifest), "%s", pulled.manifest_digest);
    snprintf(op->config_digest, sizeof(op->config_digest), "%s", pulled.config_digest);
out:
    pulled_image_free(&pulled);
}

/* The config an image document (JSON text) gives, as template->config; NULL with msg set. */
static json_t *config_of(const char *text, char *msg, size_t msglen)
{
    struct image_config c = {0};
    json_t *out = NULL;
    if (image_config_parse(text, strlen(text), &c, msg, msglen) == 0)
        out = config_json(&c);
    image_config_free(&c);
    return out;
}

/* Pool thread: an archive streamed through op->fd. */
static void import_run(struct store_op *op)
{
    struct template_set *ts = op->tpl->set;
    struct imported_image imp = {0};
    op->r = image_import(op->fd, ts->layers, &imp, op->msg, sizeof(op->msg));
    close(op->fd); /* the loop's writes fail from now on: nothing more is read */
    op->fd = -1;
    if (op->r == 0 && !(op->config = config_of(imp.config_json, op->msg, sizeof(op->msg))))
        op->r = -EPROTO;
    if (op->r == 0 && !(op->layers = calloc(imp.n_layers ? imp.n_layers : 1, sizeof(*op->layers))))
        op->r = -ENOMEM;
    if (op->r < 0) {
        op->err = op->r == -ENOSPC   ? SESSION_ERR_NO_SPACE
                  : op->r == -ENOMEM ? SESSION_ERR_NOMEM
                                     : SESSION_ERR_IMAGE_INVALID;
        imported_image_free(&imp);
        return;
    }
    for (size_t i = 0; i < imp.n_layers; i++) {
        snprintf(op->layers[i].digest, sizeof(op->layers[i].digest), "%s", imp.layers[i].digest);
        snprintf(op->layers[i].diff_id, sizeof(op->layers[i].diff_id), "%s", imp.layers[i].diff_id);
        op->layers[i].size = imp.layers[i].size;
    }
    op->n_layers = imp.n_layers;
    snprintf(op->manifest, sizeof(op->manifest), "%s", imp.manifest_digest);
    snprintf(op->config_digest, sizeof(op->config_digest), "%s", imp.config_digest);
    imported_image_free(&imp);
}

/* Pool thread: one more layer of what a (frozen) sandbox changed (or the empty layer of a
 * scratch image, or none), and the config edits, on top of the base image (or of nothing). */
static void derive_run(struct store_op *op)
{
    struct template_set *ts = op->tpl->set;
    char tmp[1200], blob[4200], digest[DIGEST_STRLEN], manifest[DIGEST_STRLEN],
        config[DIGEST_STRLEN], *config_text = NULL;
    int64_t size = 0;
    int fd = -1, with_layer = op->upper[0] || op->scratch;
    if (op->upper[0]) {
        /* In layers/.tmp-*: whatever a crash leaves there is removed when the store opens. */
        snprintf(tmp, sizeof(tmp), "%s/layers/.tmp-snapshot-XXXXXX", ts->images_dir);
        if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
            op->r = -errno;
            snprintf(op->msg, sizeof(op->msg), "snapshot: a temporary file: %s", strerror(errno));
            goto out;
        }
        op->r = snapshot_layer(op->upper, op->base, op->count, fd, digest, &size, op->msg,
                               sizeof(op->msg));
        if (op->r == 0 && fsync(fd) < 0)
            op->r = -errno;
        close(fd);
        if (op->r == 0 &&
            (op->r = layer_store_blob_path(ts->layers, digest, blob, sizeof(blob))) == 0 &&
            rename(tmp, blob) < 0)
            op->r = -errno;
        unlink(tmp);
    } else if (op->scratch) {
        if ((op->r = oci_empty_layer(ts->layers, digest, &size)) == 0)
            op->r = layer_store_blob_path(ts->layers, digest, blob, sizeof(blob));
    }
    /* Uncompressed: the layer's diff_id is its digest. */
    if (op->r == 0 && with_layer)
        op->r = layer_store_unpack(ts->layers, blob, digest, op->msg, sizeof(op->msg));
    if (op->r == 0)
        op->r = oci_derive_ex(ts->layers, op->scratch ? NULL : op->base_manifest,
                              with_layer ? digest : NULL, size, op->edits, op->created_by, manifest,
                              config, &config_text, op->msg, sizeof(op->msg));
    if (op->r == 0 && !(op->config = config_of(config_text, op->msg, sizeof(op->msg))))
        op->r = -EPROTO;
    if (op->r == 0 && !(op->layers = calloc(op->n_base_layers + 1, sizeof(*op->layers))))
        op->r = -ENOMEM;
    if (op->r < 0)
        goto out;
    memcpy(op->layers, op->base_layers, op->n_base_layers * sizeof(*op->layers));
    op->n_layers = op->n_base_layers;
    if (with_layer) {
        struct template_layer *top = &op->layers[op->n_layers++];
        snprintf(top->digest, sizeof(top->digest), "%s", digest);
        snprintf(top->diff_id, sizeof(top->diff_id), "%s", digest);
        top->size = size;
    }
    snprintf(op->manifest, sizeof(op->manifest), "%s", manifest);
    snprintf(op->config_digest, sizeof(op->config_digest), "%s", config);
out:
    if (op->r < 0 && !op->msg[0])
        snprintf(op->msg, sizeof(op->msg), "snapshot: %s", strerror(-op->r));
    if (op->r < 0)
        op->err = op->r == -ENOSPC || op->r == -EDQUOT ? SESSION_ERR_NO_SPACE
                  : op->r == -ENOMEM                   ? SESSION_ERR_NOMEM
                                                       : SESSION_ERR_SETUP;
    free(config_text);
}

/* Pool thread: the template as an oci-archive, written to op->fd. */
static void export_run(struct store_op *op)
{
    struct template *tpl = op->tpl;
    /* The index names the image by its tag, as `docker save`/skopeo do; a template without an
     * image (an import, a snapshot) by its own name. */
    const char *ref = tpl->name, *colon = strrchr(tpl->image, ':'),
               *slash = strrchr(tpl->image, '/');
    if (tpl->image[0] && colon && (!slash || colon > slash) && !strchr(tpl->image, '@'))
        ref = colon + 1;
    op->r = oci_export(tpl->set->layers, tpl->digest, ref, op->fd, op->msg, sizeof(op->msg));
    close(op->fd); /* EOF for the reader */
    op->fd = -1;
    if (op->r < 0)
        op->err = op->r == -ENOENT ? SESSION_ERR_NOT_FOUND : SESSION_ERR_IMAGE_INVALID;
}

static void store_op_free(struct store_op *op)
{
    free(op->edits);
    free(op->layers);
    free(op->base_layers);
    json_decref(op->config);
    if (op->fd >= 0)
        close(op->fd);
    free(op);
}

static void store_op_work(uv_work_t *req)
{
    struct store_op *op = req->data;
    op->run(op);
}

static void store_op_done(uv_work_t *req, int status)
{
    struct store_op *op = req->data;
    struct template *tpl = op->tpl;
    struct template_set *ts = tpl->set;
    (void)status;
    ts->pending--;
    tpl->busy = 0;
    if (op->reads_only) {
        op->cb(op->r == 0 ? tpl : NULL, op->r == 0 ? SESSION_OK : op->err, op->msg, op->cb_arg);
    } else if (op->r == 0) {
        free(tpl->layers);
        json_decref(tpl->config);
        tpl->layers = op->layers;
        tpl->n_layers = op->n_layers;
        tpl->config = op->config;
        op->layers = NULL;
        op->config = NULL;
        tpl->size_bytes = 0;
        for (size_t i = 0; i < tpl->n_layers; i++)
            tpl->size_bytes += tpl->layers[i].size;
        snprintf(tpl->digest, sizeof(tpl->digest), "%s", op->manifest);
        snprintf(tpl->config_digest, sizeof(tpl->config_digest), "%s", op->config_digest);
        tpl->state = TEMPLATE_READY;
        tpl->error[0] = '\0';
        log_info("templates: %s ready (%s, %zu layers, %lld bytes)", tpl->name, tpl->digest,
                 tpl->n_layers, (long long)tpl->size_bytes);
        template_save(tpl);
    } else if (tpl->image[0]) {
        /* A failed pull stays, failed, until the next use pulls again. */
        tpl->state = TEMPLATE_FAILED;
        tpl->err = op->err;
        snprintf(tpl->error, sizeof(tpl->error), "%s", op->msg);
        log_warn("templates: pulling %s failed: %s", tpl->image, tpl->error);
        template_save(tpl);
    } else {
        /* A failed import or snapshot leaves no template behind. */
        log_warn("templates: making %s failed: %s", tpl->name, op->msg);
        tpl->state = TEMPLATE_FAILED;
        tpl->err = op->err;
        snprintf(tpl->error, sizeof(tpl->error), "%s", op->msg);
    }
    if (!op->reads_only)
        answer_waiters(tpl);
    if (op->cb && !op->reads_only)
        op->cb(op->r == 0 ? tpl : NULL, op->r == 0 ? SESSION_OK : op->err, op->msg, op->cb_arg);
    if (op->r < 0 && !tpl->image[0] && !op->reads_only) {
        unlink_template(ts, tpl);
        template_free(tpl);
    }
    store_op_free(op);
    if (ts->gc_wanted && ts->pending == 0)
        collect(ts);
}

/* Runs op on the pool, or once the collection of unused layers is over (it must not remove
 * what op is about to use). */
static void store_op_queue(struct template_set *ts, struct store_op *op)
{
    op->tpl->busy = 1;
    op->work.data = op;
    ts->pending++;
    if (ts->collecting) {
        op->next = ts->deferred;
        ts->deferred = op;
        return;
    }
    int r = uv_queue_work(ts->loop, &op->work, store_op_work, store_op_done);
    if (r < 0) { /* only with a bad loop: report it as the op's failure */
        op->r = r;
        op->err = SESSION_ERR_NOMEM;
        snprintf(op->msg, sizeof(op->msg), "cannot queue the work: %s", uv_strerror(r));
        store_op_done(&op->work, 0);
    }
}

static struct store_op *store_op_new(struct template *tpl, void (*run)(struct store_op *op))
{
    struct store_op *op = calloc(1, sizeof(*op));
    if (op) {
        op->tpl = tpl;
        op->run = run;
        op->fd = -1;
    }
    return op;
}

/* Starts the pull of tpl->image. */
static void start_pull(struct template *tpl)
{
    struct store_op *op = store_op_new(tpl, pull_run);
    tpl->state = TEMPLATE_PULLING;
    atomic_store(&tpl->bytes_done, 0);
    atomic_store(&tpl->bytes_total, 0);
    if (!op || image_ref_parse(tpl->image, &op->ref, op->msg, sizeof(op->msg)) < 0) {
        tpl->state = TEMPLATE_FAILED;
        tpl->err = op ? SESSION_ERR_BAD_REFERENCE : SESSION_ERR_NOMEM;
        snprintf(tpl->error, sizeof(tpl->error), "%s", op ? op->msg : "out of memory");
        free(op);
        answer_waiters(tpl);
        return;
    }
    template_save(tpl);
    store_op_queue(tpl->set, op);
}

/* A reference a client gave; the message names the field ('image') and the reference. */
static int parse_ref(const char *image, struct image_ref *ref, char *msg, size_t msglen)
{
    char why[256];
    if (image_ref_parse(image, ref, why, sizeof(why)) == 0)
        return 1;
    snprintf(msg, msglen, "invalid 'image' reference '%.200s': %s", image, why);
    return 0;
}

static struct template *template_new(struct template_set *ts, const char *name, const char *image)
{
    struct template *tpl = calloc(1, sizeof(*tpl));
    if (!tpl)
        return NULL;
    snprintf(tpl->name, sizeof(tpl->name), "%s", name);
    snprintf(tpl->image, sizeof(tpl->image), "%s", image);
    tpl->set = ts;
    tpl->created_at = util_now();
    tpl->next = ts->head;
    ts->head = tpl;
    return tpl;
}

/* -- the set ------------------------------------------------------------------------------- */

struct load_ctx {
    struct template_set *ts;
};

static void load_one(const char *name, const char *text, void *arg)
{
    struct template_set *ts = ((struct load_ctx *)arg)->ts;
    json_error_t jerr;
    json_t *rec = json_loads(text, 0, &jerr);
    json_t *layers = json_object_get(rec, "layers");
    const char *state = json_string_value(json_object_get(rec, "state"));
    struct template *tpl =
        rec ? template_new(ts, name, json_string_value(json_object_get(rec, "image")) ?: "") : NULL;
    if (!tpl) {
        log_warn("templates: unreadable record of %s dropped", name);
        store_delete(ts->store, STORE_TEMPLATE, name);
        json_decref(rec);
        return;
    }
    snprintf(tpl->digest, sizeof(tpl->digest), "%s",
             json_string_value(json_object_get(rec, "digest")) ?: "");
    snprintf(tpl->config_digest, sizeof(tpl->config_digest), "%s",
             json_string_value(json_object_get(rec, "config_digest")) ?: "");
    tpl->created_at = json_number_value(json_object_get(rec, "created_at"));
    tpl->hidden = json_is_true(json_object_get(rec, "hidden"));
    tpl->size_bytes = json_integer_value(json_object_get(rec, "size_bytes"));
    tpl->config = json_incref(json_object_get(rec, "config"));
    tpl->n_layers = json_array_size(layers);
    tpl->layers = calloc(tpl->n_layers ? tpl->n_layers : 1, sizeof(*tpl->layers));
    int complete = tpl->layers != NULL && state && !strcmp(state, "ready");
    for (size_t i = 0; tpl->layers && i < tpl->n_layers; i++) {
        json_t *l = json_array_get(layers, i);
        char path[4096];
        snprintf(tpl->layers[i].digest, sizeof(tpl->layers[i].digest), "%s",
                 json_string_value(json_object_get(l, "digest")) ?: "");
        snprintf(tpl->layers[i].diff_id, sizeof(tpl->layers[i].diff_id), "%s",
                 json_string_value(json_object_get(l, "diff_id")) ?: "");
        tpl->layers[i].size = json_integer_value(json_object_get(l, "size"));
        if (layer_store_path(ts->layers, tpl->layers[i].diff_id, path, sizeof(path)) < 0 ||
            access(path, F_OK) < 0)
            complete = 0;
    }
    json_decref(rec);
    if (complete) {
        tpl->state = TEMPLATE_READY;
        return;
    }
    /* A pull the previous daemon did not finish, or a layer gone from the store: pull again
     * (the blobs already downloaded are kept). An import or snapshot cannot be redone. */
    if (tpl->image[0]) {
        start_pull(tpl);
        return;
    }
    tpl->state = TEMPLATE_FAILED;
    tpl->err = SESSION_ERR_IMAGE_INVALID;
    snprintf(tpl->error, sizeof(tpl->error), "its layers are missing from the store");
}

int templates_open(struct template_set *ts, uv_loop_t *loop, const char *state_dir,
                   struct registry_client *rc, store_t *store, double pull_timeout_s, char *msg,
                   size_t msglen)
{
    memset(ts, 0, sizeof(*ts));
    ts->loop = loop;
    ts->rc = rc;
    ts->store = store;
    ts->pull_timeout_s = pull_timeout_s;
    snprintf(ts->images_dir, sizeof(ts->images_dir), "%s/images", state_dir);
    int r = layer_store_open(ts->images_dir, &ts->layers);
    if (r < 0) {
        snprintf(msg, msglen, "cannot open the layer store in %s: %s", ts->images_dir,
                 strerror(-r));
        return r;
    }
    struct load_ctx lc = {ts};
    return store_list(store, STORE_TEMPLATE, load_one, &lc);
}

void templates_close(struct template_set *ts)
{
    while (ts->head) {
        struct template *tpl = ts->head;
        ts->head = tpl->next;
        template_free(tpl);
    }
    layer_store_close(ts->layers);
    ts->layers = NULL;
}

struct template *templates_find(struct template_set *ts, const char *name)
{
    for (struct template *tpl = ts->head; tpl; tpl = tpl->next)
        if (!strcmp(tpl->name, name))
            return tpl;
    return NULL;
}

enum session_err templates_pull(struct template_set *ts, const char *name, const char *image,
                                struct template **out, char *msg, size_t msglen)
{
    struct image_ref ref;
    char canon[TEMPLATE_NAME_MAX];
    if (!parse_ref(image, &ref, msg, msglen))
        return SESSION_ERR_BAD_REFERENCE;
    image_ref_string(&ref, canon, sizeof(canon));
    struct template *tpl = templates_find(ts, name ? name : canon);
    if (tpl && name) {
        snprintf(msg, msglen, "a template named '%s' exists", name);
        return SESSION_ERR_NAME_TAKEN;
    }
    if (!tpl && !(tpl = template_new(ts, name ? name : canon, canon))) {
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    if (!tpl->busy && tpl->state != TEMPLATE_READY)
        start_pull(tpl);
    *out = tpl;
    return SESSION_OK;
}

/* A new template `name` made by `run`; SESSION_ERR_NAME_TAKEN if the name exists. */
static struct store_op *made_template(struct template_set *ts, const char *name,
                                      void (*run)(struct store_op *op), template_ready_cb cb,
                                      void *arg, enum session_err *err, char *msg, size_t msglen)
{
    if (templates_find(ts, name)) {
        snprintf(msg, msglen, "a template named '%s' exists", name);
        *err = SESSION_ERR_NAME_TAKEN;
        return NULL;
    }
    struct template *tpl = template_new(ts, name, "");
    struct store_op *op = tpl ? store_op_new(tpl, run) : NULL;
    if (!op) {
        if (tpl) {
            unlink_template(ts, tpl);
            template_free(tpl);
        }
        snprintf(msg, msglen, "out of memory");
        *err = SESSION_ERR_NOMEM;
        return NULL;
    }
    tpl->state = TEMPLATE_PULLING;
    op->cb = cb;
    op->cb_arg = arg;
    return op;
}

enum session_err templates_import(struct template_set *ts, const char *name, int fd,
                                  template_ready_cb cb, void *arg, char *msg, size_t msglen)
{
    enum session_err err;
    struct store_op *op = made_template(ts, name, import_run, cb, arg, &err, msg, msglen);
    if (!op) {
        close(fd);
        return err;
    }
    op->fd = fd;
    store_op_queue(ts, op);
    return SESSION_OK;
}

enum session_err templates_snapshot(struct template_set *ts, const char *name,
                                    const struct template *base, const char *upper, uid_t host_base,
                                    uid_t count, template_ready_cb cb, void *arg, char *msg,
                                    size_t msglen)
{
    struct template_derive d = {
        .upper = upper, .host_base = host_base, .count = count, .created_by = "warren snapshot"};
    return templates_derive(ts, name, base, &d, cb, arg, msg, msglen);
}

enum session_err templates_derive(struct template_set *ts, const char *name,
                                  const struct template *base, const struct template_derive *d,
                                  template_ready_cb cb, void *arg, char *msg, size_t msglen)
{
    enum session_err err;
    if (base && base->state != TEMPLATE_READY) {
        snprintf(msg, msglen, "template '%s' is %s", base->name, template_state_name(base->state));
        return SESSION_ERR_STATE;
    }
    struct store_op *op = made_template(ts, name, derive_run, cb, arg, &err, msg, msglen);
    if (!op)
        return err;
    size_t n = base ? base->n_layers : 0;
    op->base_layers = calloc(n + 1, sizeof(*op->base_layers));
    if (!op->base_layers || (d->edits && !(op->edits = strdup(d->edits)))) {
        struct template *tpl = op->tpl;
        store_op_free(op);
        unlink_template(ts, tpl);
        template_free(tpl);
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    op->tpl->hidden = d->hidden;
    if (base) {
        memcpy(op->base_layers, base->layers, n * sizeof(*op->base_layers));
        snprintf(op->base_manifest, sizeof(op->base_manifest), "%s", base->digest);
    }
    op->n_base_layers = n;
    op->scratch = !base;
    snprintf(op->upper, sizeof(op->upper), "%s", d->upper ? d->upper : "");
    snprintf(op->created_by, sizeof(op->created_by), "%s", d->created_by ? d->created_by : "");
    op->base = d->host_base;
    op->count = d->count;
    store_op_queue(ts, op);
    return SESSION_OK;
}

enum session_err templates_alias(struct template_set *ts, const char *name,
                                 const struct template *src, int hidden, struct template **out,
                                 char *msg, size_t msglen)
{
    if (src->state != TEMPLATE_READY) {
        snprintf(msg, msglen, "template '%s' is %s", src->name, template_state_name(src->state));
        return SESSION_ERR_STATE;
    }
    if (templates_find(ts, name)) {
        snprintf(msg, msglen, "a template named '%s' exists", name);
        return SESSION_ERR_NAME_TAKEN;
    }
    struct template *tpl = template_new(ts, name, "");
    if (tpl && (tpl->layers = calloc(src->n_layers + 1, sizeof(*tpl->layers))) &&
        (tpl->config = json_deep_copy(src->config))) {
        memcpy(tpl->layers, src->layers, src->n_layers * sizeof(*tpl->layers));
        tpl->n_layers = src->n_layers;
        tpl->size_bytes = src->size_bytes;
        snprintf(tpl->digest, sizeof(tpl->digest), "%s", src->digest);
        snprintf(tpl->config_digest, sizeof(tpl->config_digest), "%s", src->config_digest);
        tpl->hidden = hidden;
        tpl->state = TEMPLATE_READY;
        template_save(tpl);
        *out = tpl;
        return SESSION_OK;
    }
    if (tpl) {
        unlink_template(ts, tpl);
        template_free(tpl);
    }
    snprintf(msg, msglen, "out of memory");
    return SESSION_ERR_NOMEM;
}

enum session_err templates_export(struct template_set *ts, struct template *tpl, int fd,
                                  template_ready_cb cb, void *arg, char *msg, size_t msglen)
{
    struct store_op *op = NULL;
    if (tpl->state != TEMPLATE_READY || tpl->busy) {
        snprintf(msg, msglen, "template '%s' is %s", tpl->name,
                 tpl->busy ? "busy" : template_state_name(tpl->state));
        close(fd);
        return SESSION_ERR_STATE;
    }
    if (!(op = store_op_new(tpl, export_run))) {
        snprintf(msg, msglen, "out of memory");
        close(fd);
        return SESSION_ERR_NOMEM;
    }
    op->reads_only = 1;
    op->fd = fd;
    op->cb = cb;
    op->cb_arg = arg;
    store_op_queue(ts, op);
    return SESSION_OK;
}

static void fail_later(struct template_set *ts, template_ready_cb cb, void *arg,
                       enum session_err err, const char *msg);

void templates_acquire(struct template_set *ts, const char *name, const char *image,
                       template_ready_cb cb, void *arg)
{
    char msg[512], canon[TEMPLATE_NAME_MAX];
    struct template *tpl;
    if (name) {
        if (!(tpl = templates_find(ts, name))) {
            snprintf(msg, sizeof(msg), "no template named '%s'", name);
            fail_later(ts, cb, arg, SESSION_ERR_NOT_FOUND, msg);
            return;
        }
    } else {
        struct image_ref ref;
        if (!parse_ref(image, &ref, msg, sizeof(msg))) {
            fail_later(ts, cb, arg, SESSION_ERR_BAD_REFERENCE, msg);
            return;
        }
        image_ref_string(&ref, canon, sizeof(canon));
        if (!(tpl = templates_find(ts, canon)) && !(tpl = template_new(ts, canon, canon))) {
            fail_later(ts, cb, arg, SESSION_ERR_NOMEM, "out of memory");
            return;
        }
    }
    if (tpl->state == TEMPLATE_FAILED || (tpl->state == TEMPLATE_PULLING && !tpl->busy)) {
        if (!tpl->image[0]) {
            fail_later(ts, cb, arg, tpl->err, tpl->error);
            return;
        }
        start_pull(tpl);
    }
    struct template_waiter *w = calloc(1, sizeof(*w));
    if (!w) {
        fail_later(ts, cb, arg, SESSION_ERR_NOMEM, "out of memory");
        return;
    }
    w->tpl = tpl;
    w->cb = cb;
    w->arg = arg;
    uv_timer_init(ts->loop, &w->timer);
    uv_idle_init(ts->loop, &w->defer);
    w->timer.data = w->defer.data = w;
    if (tpl->state == TEMPLATE_READY) {
        uv_idle_start(&w->defer, on_defer);
        return;
    }
    w->next = tpl->waiters;
    tpl->waiters = w;
    uv_timer_start(&w->timer, on_wait_timeout, (uint64_t)(ts->pull_timeout_s * 1000.0), 0);
}

/* An answer that must not come before acquire returns, without a template to wait on. */
struct late_fail {
    uv_idle_t idle;
    template_ready_cb cb;
    void *arg;
    enum session_err err;
    char msg[512];
};

static void late_fail_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_late_fail(uv_idle_t *h)
{
    struct late_fail *f = h->data;
    uv_idle_stop(h);
    f->cb(NULL, f->err, f->msg, f->arg);
    uv_close((uv_handle_t *)h, late_fail_closed);
}

static void fail_later(struct template_set *ts, template_ready_cb cb, void *arg,
                       enum session_err err, const char *msg)
{
    struct late_fail *f = calloc(1, sizeof(*f));
    if (!f) {
        cb(NULL, SESSION_ERR_NOMEM, "out of memory", arg);
        return;
    }
    f->cb = cb;
    f->arg = arg;
    f->err = err;
    snprintf(f->msg, sizeof(f->msg), "%s", msg);
    uv_idle_init(ts->loop, &f->idle);
    f->idle.data = f;
    uv_idle_start(&f->idle, on_late_fail);
}

static char *str_of(json_t *s)
{
    return json_string_value(s) && *json_string_value(s) ? strdup(json_string_value(s)) : NULL;
}

enum session_err templates_image(const struct template_set *ts, const struct template *tpl,
                                 struct sandbox_image **out, char *msg, size_t msglen)
{
    struct sandbox_image *img = calloc(1, sizeof(*img));
    *out = NULL;
    if (!img) {
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    snprintf(img->template_name, sizeof(img->template_name), "%s", tpl->name);
    snprintf(img->image, sizeof(img->image), "%s", tpl->image);
    snprintf(img->digest, sizeof(img->digest), "%s", tpl->digest);
    img->lowers = calloc(tpl->n_layers + 1, sizeof(*img->lowers));
    int ok = img->lowers != NULL;
    for (size_t i = 0; ok && i < tpl->n_layers; i++) {
        char path[4096];
        ok = layer_store_path(ts->layers, tpl->layers[tpl->n_layers - 1 - i].diff_id, path,
                              sizeof(path)) == 0 &&
             (img->lowers[i] = strdup(path)) != NULL;
        img->n_lowers += ok;
    }
    json_t *c = tpl->config;
    if (json_array_strv(json_object_get(c, "env"), &img->env) < 0 ||
        json_array_strv(json_object_get(c, "entrypoint"), &img->entrypoint) < 0 ||
        json_array_strv(json_object_get(c, "cmd"), &img->cmd) < 0)
        ok = 0;
    img->workdir = str_of(json_object_get(c, "workdir"));
    img->user = str_of(json_object_get(c, "user"));
    if (!ok) {
        sandbox_image_free(img);
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    *out = img;
    return SESSION_OK;
}

/* -- collecting unused layers ------------------------------------------------------------

 * Deleting a template leaves its layers and blobs; a collection removes whatever no template
 * names. It runs on the pool (removing trees is slow) and only while no pull runs: a pull in
 * flight may be about to use a layer no template names yet. Pulls asked for meanwhile wait for it
 * (store_op_queue) and start when it is done. */

struct collect_op {
    uv_work_t work;
    struct template_set *ts;
    const char **keep, **blobs;
    size_t n_keep, n_blobs;
    char *strings; /* the copies keep and blobs point into */
};

static void collect_work(uv_work_t *req)
{
    struct collect_op *op = req->data;
    int64_t freed = 0;
    int r = layer_store_gc(op->ts->layers, op->keep, op->n_keep, op->blobs, op->n_blobs, &freed);
    if (r < 0)
        log_warn("templates: collecting unused layers: %s", strerror(-r));
    else if (freed > 0)
        log_info("templates: %lld bytes of unused layers and blobs removed", (long long)freed);
}

static void collect_done(uv_work_t *req, int status)
{
    struct collect_op *op = req->data;
    struct template_set *ts = op->ts;
    (void)status;
    ts->pending--;
    ts->collecting = 0;
    free(op->keep);
    free(op->blobs);
    free(op->strings);
    free(op);
    struct store_op *d = ts->deferred;
    ts->deferred = NULL;
    while (d) {
        struct store_op *next = d->next;
        ts->pending--; /* store_op_queue counts it again */
        store_op_queue(ts, d);
        d = next;
    }
    if (ts->gc_wanted && ts->pending == 0)
        collect(ts);
}

static void collect(struct template_set *ts)
{
    size_t n = 0, chars = 0;
    ts->gc_wanted = 0;
    for (struct template *t = ts->head; t; t = t->next) {
        n += 2 * t->n_layers + 2;
        chars += 2 * t->n_layers * 80 + 160;
    }
    struct collect_op *op = calloc(1, sizeof(*op));
    char *p = op ? (op->strings = malloc(chars + 1)) : NULL;
    if (op && p) {
        op->keep = calloc(n + 1, sizeof(*op->keep));
        op->blobs = calloc(n + 1, sizeof(*op->blobs));
    }
    if (!op || !p || !op->keep || !op->blobs) {
        if (op) {
            free(op->keep);
            free(op->blobs);
            free(op->strings);
        }
        free(op);
        log_warn("templates: out of memory: unused layers are kept");
        return;
    }
#define KEEP(arr, cnt, str)                                                                        \
    do {                                                                                           \
        size_t len_ = strlen(str) + 1;                                                             \
        memcpy(p, (str), len_);                                                                    \
        op->arr[op->cnt++] = p;                                                                    \
        p += len_;                                                                                 \
    } while (0)
    for (struct template *t = ts->head; t; t = t->next) {
        KEEP(blobs, n_blobs, t->digest);
        KEEP(blobs, n_blobs, t->config_digest);
        for (size_t i = 0; i < t->n_layers; i++) {
            KEEP(keep, n_keep, t->layers[i].diff_id);
            KEEP(blobs, n_blobs, t->layers[i].digest);
        }
    }
#undef KEEP
    op->ts = ts;
    op->work.data = op;
    if (uv_queue_work(ts->loop, &op->work, collect_work, collect_done) < 0) {
        free(op->keep);
        free(op->blobs);
        free(op->strings);
        free(op);
        return;
    }
    ts->pending++;
    ts->collecting = 1;
}

int templates_remove(struct template_set *ts, struct template *tpl)
{
    if (tpl->busy)
        return -EBUSY;
    store_delete(ts->store, STORE_TEMPLATE, tpl->name);
    unlink_template(ts, tpl);
    template_free(tpl);
    ts->gc_wanted = 1;
    if (ts->pending == 0)
        collect(ts);
    return 0;
}

int64_t templates_store_bytes(const struct template_set *ts)
{
    return layer_store_bytes(ts->layers);
}
