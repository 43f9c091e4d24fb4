/*
 * pool — warm pools. See pool.h.
 */
#include "session/pool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "session/network.h"
#include "session/sandbox_internal.h"
#include "session/templates.h"

/* The member generation label: members made before a pool changed are not its any more. */
#define POOL_GEN_LABEL "warren.pool.gen"
/* A refill waits this long after a claim, so that the claimed sandbox's first commands do not
 * compete with a creation. */
#define FILL_DELAY_MS 50
/* After a failed creation, the pool waits this long before trying again. */
#define FILL_RETRY_S 5.0

struct member {
    struct member *next;
    struct sandbox *sb; /* referenced */
};

struct pool {
    struct pool *next;
    char name[POOL_NAME_MAX];
    char *template_name; /* NULL when image is set */
    char *image;
    unsigned size;
    struct sandbox_resources res;
    json_t *network;
    unsigned generation;
    struct member *ready_head, *ready_tail; /* oldest first */
    unsigned n_ready;
    unsigned starting;
    unsigned long long claimed, misses;
    char last_error[256];
    double retry_at; /* monotonic */
};

/* A creation for a pool; the pool is found again by name when it ends (it may be gone). */
struct fill_op {
    struct pools *ps;
    char name[POOL_NAME_MAX];
    unsigned generation;
};

static struct pool *find(struct pools *ps, const char *name)
{
    for (struct pool *p = ps->head; p; p = p->next)
        if (!strcmp(p->name, name))
            return p;
    return NULL;
}

static void member_push(struct pool *p, struct sandbox *sb)
{
    struct member *m = calloc(1, sizeof(*m));
    if (!m) {
        log_error("pool %s: out of memory keeping member %s: deleting it", p->name, sb->id);
        sandbox_destroy(sb, NULL, NULL);
        return;
    }
    sandbox_ref(sb);
    m->sb = sb;
    if (p->ready_tail)
        p->ready_tail->next = m;
    else
        p->ready_head = m;
    p->ready_tail = m;
    p->n_ready++;
}

static struct sandbox *member_pop(struct pool *p)
{
    struct member *m = p->ready_head;
    if (!m)
        return NULL;
    p->ready_head = m->next;
    if (!p->ready_head)
        p->ready_tail = NULL;
    p->n_ready--;
    struct sandbox *sb = m->sb;
    free(m);
    return sb;
}

/* Lets go of a member; `destroy` deletes it too (unless it is on its way already). */
static void member_drop(struct sandbox *sb, int destroy)
{
    if (destroy && sb->state != SB_DELETING)
        sandbox_destroy(sb, NULL, NULL);
    sandbox_unref(sb);
}

/* Drops members that are no longer ready (deleted by a client, their init gone). */
static void prune(struct pool *p)
{
    unsigned n = p->n_ready;
    for (unsigned i = 0; i < n; i++) {
        struct sandbox *sb = member_pop(p);
        if (sb->state == SB_RUNNING) {
            member_push(p, sb);
            sandbox_unref(sb); /* member_push took its own reference */
        } else {
            member_drop(sb, 1);
        }
    }
}

static void drop_all(struct pool *p, unsigned keep)
{
    while (p->n_ready > keep)
        member_drop(member_pop(p), 1);
}

static json_t *pool_record(const struct pool *p)
{
    return json_pack("{s:s, s:s?, s:s?, s:i, s:{s:f, s:I, s:I, s:I}, s:O, s:i}", "name", p->name,
                     "template", p->template_name, "image", p->image, "size", (int)p->size,
                     "resources", "cpus", p->res.cpus, "memory_mib", (json_int_t)p->res.memory_mib,
                     "pids", (json_int_t)p->res.pids, "disk_mib", (json_int_t)p->res.disk_mib,
                     "network", p->network, "generation", (int)p->generation);
}

static int pool_save(struct pools *ps, const struct pool *p)
{
    json_t *rec = pool_record(p);
    char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    int r = text ? store_put(ps->reg->store, STORE_POOL, p->name, text) : -ENOMEM;
    free(text);
    json_decref(rec);
    return r;
}

static void pool_free(struct pool *p)
{
    while (p->n_ready)
        sandbox_unref(member_pop(p));
    free(p->template_name);
    free(p->image);
    json_decref(p->network);
    free(p);
}

/* ---- filling -------------------------------------------------------------------------------- */

static void fill_tick(uv_timer_t *t);

static void fill_kick(struct pools *ps, uint64_t delay_ms)
{
    if (ps->closing || ps->filling)
        return;
    uv_timer_start(&ps->fill_timer, fill_tick, delay_ms, 0);
}

static void fill_end(struct fill_op *op, struct sandbox *sb, enum session_err e, const char *msg)
{
    struct pools *ps = op->ps;
    struct pool *p = ps->closing ? NULL : find(ps, op->name);
    if (p && p->starting)
        p->starting--;
    if (sb && p && p->generation == op->generation && sb->state == SB_RUNNING) {
        member_push(p, sb);
        log_debug("pool %s: member %s ready (%u/%u)", p->name, sb->id, p->n_ready, p->size);
    } else if (sb && !ps->closing) {
        sandbox_destroy(sb, NULL, NULL); /* the pool changed or went meanwhile */
    }
    if (!sb && p && p->generation == op->generation && e != SESSION_ERR_SHUTTING_DOWN) {
        snprintf(p->last_error, sizeof(p->last_error), "%s", msg ? msg : session_err_name(e));
        p->retry_at = util_monotonic() + FILL_RETRY_S;
        log_warn("pool %s: cannot make a member: %s (retrying in %.0f s)", p->name, p->last_error,
                 FILL_RETRY_S);
    } else if (sb && p) {
        p->last_error[0] = '\0';
    }
    free(op);
    ps->filling = 0;
    fill_kick(ps, 0);
}

static void on_member_created(struct sandbox *sb, enum session_err e, const char *msg, void *arg)
{
    fill_end(arg, sb, e, msg);
}

/* Creates a member of `p` made of `tpl` (NULL: the host template). */
static void member_create(struct fill_op *op, struct pool *p, struct template *tpl)
{
    char msg[1024], gen[16];
    struct sandbox_image *img = NULL;
    struct egress_policy *net = NULL;
    enum session_err e = SESSION_OK;
    snprintf(gen, sizeof(gen), "%u", p->generation);
    json_t *labels = json_pack("{s:s, s:s}", POOL_LABEL, p->name, POOL_GEN_LABEL, gen);
    if (!labels || network_parse(p->network, &net, msg, sizeof(msg)) < 0) {
        snprintf(msg, sizeof(msg), "out of memory");
        e = SESSION_ERR_NOMEM;
    }
    if (e == SESSION_OK && tpl)
        e = templates_image(op->ps->templates, tpl, &img, msg, sizeof(msg));
    struct sandbox_spec spec = {.template_name = tpl ? tpl->name : "host",
                                .labels = labels,
                                .res = p->res,
                                .network = net,
                                .image = img};
    if (e == SESSION_OK)
        e = sandbox_create(op->ps->reg, &spec, on_member_created, op, msg, sizeof(msg));
    sandbox_image_free(img);
    json_decref(labels);
    if (e != SESSION_OK) {
        network_free(net);
        fill_end(op, NULL, e, msg);
    }
}

static void on_member_template(struct template *tpl, enum session_err e, const char *msg, void *arg)
{
    struct fill_op *op = arg;
    struct pool *p = op->ps->closing ? NULL : find(op->ps, op->name);
    if (!tpl || !p || p->generation != op->generation) {
        fill_end(op, NULL, tpl ? SESSION_ERR_DELETED : e, tpl ? "the pool changed" : msg);
        return;
    }
    member_create(op, p, tpl);
}

static void fill_start(struct pools *ps, struct pool *p)
{
    struct fill_op *op = calloc(1, sizeof(*op));
    if (!op)
        return;
    op->ps = ps;
    snprintf(op->name, sizeof(op->name), "%s", p->name);
    op->generation = p->generation;
    ps->filling = 1;
    p->starting++;
    if (p->image || strcmp(p->template_name, "host") != 0)
        templates_acquire(ps->templates, p->image ? NULL : p->template_name, p->image,
                          on_member_template, op);
    else
        member_create(op, p, NULL);
}

/* One creation for the first pool short of its size; pools that failed lately wait. */
static void fill_tick(uv_timer_t *t)
{
    struct pools *ps = t->data;
    double now = util_monotonic(), next = 0;
    if (ps->filling || ps->closing)
        return;
    for (struct pool *p = ps->head; p; p = p->next) {
        prune(p);
        if (p->n_ready + p->starting >= p->size)
            continue;
        if (now < p->retry_at) {
            if (!next || p->retry_at < next)
                next = p->retry_at;
            continue;
        }
        fill_start(ps, p);
        return;
    }
    if (next)
        uv_timer_start(&ps->fill_timer, fill_tick, (uint64_t)((next - now) * 1e3) + 1, 0);
}

/* ---- pools ---------------------------------------------------------------------------------- */

static int pool_set_spec(struct pool *p, const struct pool_spec *spec)
{
    char *tn = spec->image ? NULL : strdup(spec->template_name ? spec->template_name : "host");
    char *im = spec->image ? strdup(spec->image) : NULL;
    if ((!spec->image && !tn) || (spec->image && !im)) {
        free(tn);
        free(im);
        return -ENOMEM;
    }
    free(p->template_name);
    free(p->image);
    json_decref(p->network);
    p->template_name = tn;
    p->image = im;
    p->res = spec->res;
    p->network = json_incref(spec->network);
    p->size = spec->size;
    return 0;
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static int same_res(const struct sandbox_resources *a, const struct sandbox_resources *b)
{
    return a->cpus == b->cpus && a->memory_mib == b->memory_mib && a->pids == b->pids &&
           a->disk_mib == b->disk_mib;
}

/* Whether members of `p` are made as `spec` says. */
static int pool_matches(const struct pool *p, const char *template_name, const char *image,
                        const struct sandbox_resources *res, const json_t *network)
{
    return same_str(p->image, image) && (image || same_str(p->template_name, template_name)) &&
           same_res(&p->res, res) && json_equal((json_t *)p->network, (json_t *)network);
}

int pools_set(struct pools *ps, const char *name, const struct pool_spec *spec)
{
    struct pool *p = find(ps, name);
    int created = !p;
    if (!p) {
        if (!(p = calloc(1, sizeof(*p))))
            return -ENOMEM;
        snprintf(p->name, sizeof(p->name), "%s", name);
    } else if (!pool_matches(p, spec->template_name ? spec->template_name : "host", spec->image,
                             &spec->res, spec->network)) {
        /* Its members are made of something else now: the unclaimed ones go. */
        p->generation++;
        p->retry_at = 0;
        p->last_error[0] = '\0';
        drop_all(p, 0);
    }
    int r = pool_set_spec(p, spec);
    if (r < 0) {
        if (created)
            pool_free(p);
        return r;
    }
    drop_all(p, p->size);
    if (created) {
        p->next = ps->head;
        ps->head = p;
    }
    r = pool_save(ps, p);
    fill_kick(ps, 0);
    return r;
}

int pools_delete(struct pools *ps, const char *name)
{
    for (struct pool **pp = &ps->head; *pp; pp = &(*pp)->next) {
        struct pool *p = *pp;
        if (strcmp(p->name, name) != 0)
            continue;
        *pp = p->next;
        drop_all(p, 0);
        store_delete(ps->reg->store, STORE_POOL, name);
        pool_free(p);
        return 0;
    }
    return -ENOENT;
}

static void info_of(struct pool *p, struct pool_info *i)
{
    prune(p);
    *i = (struct pool_info){.name = p->name,
                            .template_name = p->template_name,
                            .image = p->image,
                            .size = p->size,
                            .ready = p->n_ready,
                            .starting = p->starting,
                            .claimed = p->claimed,
                            .misses = p->misses,
                            .res = p->res,
                            .network = p->network,
                            .last_error = p->last_error[0] ? p->last_error : NULL};
}

int pools_get(struct pools *ps, const char *name, struct pool_info *out)
{
    struct pool *p = find(ps, name);
    if (!p)
        return -ENOENT;
    info_of(p, out);
    return 0;
}

void pools_foreach(struct pools *ps, void (*fn)(const struct pool_info *i, void *arg), void *arg)
{
    for (struct pool *p = ps->head; p; p = p->next) {
        struct pool_info i;
        info_of(p, &i);
        fn(&i, arg);
    }
}

struct sandbox *pools_claim(struct pools *ps, const struct sandbox_spec *spec, const char *image)
{
    /* Secrets are files the init mounts and volumes are mounted before the clone: a member, made
     * ahead of time, has neither. */
    if (json_array_size(spec->secrets) > 0 || json_array_size(spec->volumes) > 0 || !ps->head)
        return NULL;
    json_t *net = network_to_json(spec->network);
    struct pool *p = ps->head;
    for (; p; p = p->next)
        if (pool_matches(p, spec->template_name, image, &spec->res, net))
            break;
    json_decref(net);
    if (!p)
        return NULL;
    if (spec->name && sandbox_find(ps->reg, spec->name))
        return NULL; /* the creation it falls back to answers that the name is taken */
    struct sandbox *sb;
    while ((sb = member_pop(p)) && sb->state != SB_RUNNING)
        member_drop(sb, 1);
    if (!sb) {
        p->misses++;
        fill_kick(ps, 0);
        return NULL;
    }
    json_t *labels = spec->labels ? json_deep_copy(spec->labels) : json_object();
    json_t *env = spec->env ? json_deep_copy(spec->env) : json_object();
    if (!labels || !env) {
        json_decref(labels);
        json_decref(env);
        member_push(p, sb); /* still ready: back where it was, nearly */
        sandbox_unref(sb);
        return NULL;
    }
    snprintf(sb->name, sizeof(sb->name), "%s", spec->name ? spec->name : sb->id);
    json_decref(sb->labels);
    json_decref(sb->env);
    sb->labels = labels;
    sb->env = env;
    snprintf(sb->session_id, sizeof(sb->session_id), "%s", spec->session_id ?: "");
    sb->ttl_s = spec->ttl_s;
    sb->idle_timeout_s = spec->idle_timeout_s;
    /* Its life (ttl_s, idle timeout) starts now, for its new owner. */
    sb->created_at = sb->last_active_at = util_now();
    sandbox_save(sb);
    sandbox_unref(sb); /* the caller's now: the registry keeps it */
    p->claimed++;
    fill_kick(ps, FILL_DELAY_MS);
    return sb;
}

/* ---- open and close ------------------------------------------------------------------------- */

static void load_one(const char *id, const char *text, void *arg)
{
    struct pools *ps = arg;
    json_t *j = json_loads(text, 0, NULL), *res = json_object_get(j, "resources");
    struct pool *p = j ? calloc(1, sizeof(*p)) : NULL;
    struct pool_spec spec = {
        .template_name = json_string_value(json_object_get(j, "template")),
        .image = json_string_value(json_object_get(j, "image")),
        .size = (unsigned)json_integer_value(json_object_get(j, "size")),
        .res = {json_number_value(json_object_get(res, "cpus")),
                (unsigned long long)json_integer_value(json_object_get(res, "memory_mib")),
                (unsigned long long)json_integer_value(json_object_get(res, "pids")),
                (unsigned long long)json_integer_value(json_object_get(res, "disk_mib"))},
        .network = json_object_get(j, "network")};
    if (!p || !json_is_object(res) || !json_is_object(spec.network) ||
        strlen(id) >= sizeof(p->name) || pool_set_spec(p, &spec) < 0) {
        log_error("pool %s: its record cannot be read: ignored", id);
        free(p);
        json_decref(j);
        return;
    }
    snprintf(p->name, sizeof(p->name), "%s", id);
    p->generation = (unsigned)json_integer_value(json_object_get(j, "generation"));
    p->next = ps->head;
    ps->head = p;
    json_decref(j);
}

int pools_open(struct pools *ps, struct registry *reg, struct template_set *templates)
{
    ps->reg = reg;
    ps->templates = templates;
    uv_timer_init(reg->loop, &ps->fill_timer);
    ps->fill_timer.data = ps;
    uv_unref((uv_handle_t *)&ps->fill_timer);
    int r = store_list(reg->store, STORE_POOL, load_one, ps);
    /* The members a previous daemon made, as the registry took them back. */
    for (struct sandbox *sb = reg->head, *next; sb; sb = next) {
        next = sb->next;
        const char *name = json_string_value(json_object_get(sb->labels, POOL_LABEL));
        const char *gen = json_string_value(json_object_get(sb->labels, POOL_GEN_LABEL));
        if (!name || sb->state == SB_DELETING)
            continue;
        struct pool *p = find(ps, name);
        char want[16];
        if (p)
            snprintf(want, sizeof(want), "%u", p->generation);
        if (p && gen && !strcmp(gen, want) && sb->state == SB_RUNNING && p->n_ready < p->size) {
            member_push(p, sb);
        } else {
            log_info("pool %s: member %s is not usable any more: deleting it", name, sb->id);
            sandbox_destroy(sb, NULL, NULL);
        }
    }
    for (struct pool *p = ps->head; p; p = p->next)
        log_info("pool %s: %u of %u members taken back", p->name, p->n_ready, p->size);
    fill_kick(ps, 0);
    return r;
}

void pools_close(struct pools *ps)
{
    if (!ps->reg || ps->closing)
        return;
    ps->closing = 1;
    uv_timer_stop(&ps->fill_timer);
    uv_close((uv_handle_t *)&ps->fill_timer, NULL);
    while (ps->head) {
        struct pool *p = ps->head;
        ps->head = p->next;
        pool_free(p);
    }
}
