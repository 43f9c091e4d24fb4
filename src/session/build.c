/*
 * build — see build.h.
 */
#include "session/build.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/util.h"
#include "image/digest.h"
#include "image/dockerfile.h"
#include "session/files.h"
#include "session/network.h"
#include "session/proc.h"
#include "session/exec.h"
#include "session/snapshot.h"

#define CACHE_PREFIX "build-cache-"
#define MAX_DEPTH 128

struct build {
    struct registry *reg;
    struct template_set *ts;
    char name[TEMPLATE_NAME_MAX];
    char dockerfile[1024];
    json_t *build_args; /* given (owned) */
    json_t *args;       /* declared ARGs with their values (owned) */
    int no_cache, network_open, cmd_set;
    struct sandbox_resources res;
    build_done_cb cb;
    void *cb_arg;
    char dir[1200]; /* <state_dir>/builds/<id> */
    int fd;         /* the context, until it is read */
    struct dockerfile df;
    size_t i;                    /* the step running */
    char cur[TEMPLATE_NAME_MAX]; /* the template so far */
    json_t *steps;
    buf_t log, out; /* the log; the running RUN's output */
    uint64_t step_start;
    char key[TEMPLATE_NAME_MAX]; /* the running step's cache template */
    char text[4096];             /* the running step's instruction, substituted */
    char *edits;                 /* its config edits (JSON text) */
    struct sandbox *sb;          /* its sandbox (referenced) */
    struct proc *proc;
    /* COPY/ADD: made on the pool */
    char tar[1300];
    char dest[4096];
    char **chown_paths;
    size_t n_chown;
    char chown[256];
    struct sandbox_user user;
    char hash[DIGEST_STRLEN];
    /* outcome of pool work */
    int r;
    enum session_err err;
    char msg[8192];
};

static void next_step(struct build *b);
static void step_done(struct build *b, const char *tpl_name, int cached);

/* ---- ending ----------------------------------------------------------------------------- */

static void cleanup_work(uv_work_t *req)
{
    char *dir = req->data;
    util_remove_tree(dir);
}

static void cleanup_done(uv_work_t *req, int status)
{
    (void)status;
    free(req->data);
    free(req);
}

/* The oldest cache templates beyond BUILD_CACHE_MAX, unless a build may be using them. */
static void prune_cache(struct template_set *ts, struct registry *reg)
{
    size_t n = 0;
    char who[128];
    if (ts->builds)
        return;
    for (struct template *t = ts->head; t; t = t->next)
        n += t->hidden && !strncmp(t->name, CACHE_PREFIX, strlen(CACHE_PREFIX));
    while (n > BUILD_CACHE_MAX) {
        struct template *old = NULL;
        for (struct template *t = ts->head; t; t = t->next)
            if (t->hidden && !strncmp(t->name, CACHE_PREFIX, strlen(CACHE_PREFIX)) && !t->busy &&
                !sandbox_template_user(reg, t->name, who, sizeof(who)) &&
                (!old || t->created_at < old->created_at))
                old = t;
        if (!old || templates_remove(ts, old) < 0)
            return;
        n--;
    }
}

static void build_free(struct build *b)
{
    if (b->dir[0]) {
        uv_work_t *w = calloc(1, sizeof(*w));
        char *d = strdup(b->dir);
        if (w && d) {
            w->data = d;
            if (uv_queue_work(b->reg->loop, w, cleanup_work, cleanup_done) == 0)
                w = NULL, d = NULL;
        }
        free(w);
        free(d);
    }
    if (b->fd >= 0)
        close(b->fd);
    json_decref(b->build_args);
    json_decref(b->args);
    json_decref(b->steps);
    dockerfile_free(&b->df);
    buf_free(&b->log);
    buf_free(&b->out);
    free(b->edits);
    dockerfile_strv_free(b->chown_paths);
    free(b);
}

static void finish(struct build *b, struct template *tpl, enum session_err err, const char *msg)
{
    struct build_result res = {tpl, err, msg ? msg : "", b->steps, "", 0};
    size_t off = b->log.len > BUILD_LOG_MAX ? b->log.len - BUILD_LOG_MAX : 0;
    if (b->log.len) {
        res.log = b->log.data + off;
        res.log_len = b->log.len - off;
    }
    if (b->sb) {
        sandbox_destroy(b->sb, NULL, NULL);
        sandbox_unref(b->sb);
        b->sb = NULL;
    }
    if (tpl)
        log_info("build: %s made (%zu steps)", tpl->name, json_array_size(b->steps));
    else
        log_warn("build: %s failed: %s", b->name, res.msg);
    b->ts->builds--;
    b->cb(&res, b->cb_arg);
    prune_cache(b->ts, b->reg);
    build_free(b);
}

static void failf(struct build *b, enum session_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void failf(struct build *b, enum session_err err, const char *fmt, ...)
{
    char msg[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    finish(b, NULL, err, msg);
}

/* The last template becomes `name` (an unused template of that name is replaced). */
static void finish_ok(struct build *b)
{
    char msg[512];
    struct template *cur = templates_find(b->ts, b->cur), *old = templates_find(b->ts, b->name),
                    *tpl = NULL;
    if (!cur) {
        failf(b, SESSION_ERR_NOT_FOUND, "the template of the last step is gone");
        return;
    }
    if (old == cur) {
        finish(b, cur, SESSION_OK, NULL);
        return;
    }
    if (old) {
        char who[128];
        if (old->busy || sandbox_template_user(b->reg, old->name, who, sizeof(who)) ||
            templates_remove(b->ts, old) < 0) {
            failf(b, SESSION_ERR_IN_USE, "template '%s' is in use and cannot be replaced", b->name);
            return;
        }
    }
    enum session_err e = templates_alias(b->ts, b->name, cur, 0, &tpl, msg, sizeof(msg));
    if (e)
        failf(b, e, "%s", msg);
    else
        finish(b, tpl, SESSION_OK, NULL);
}

/* ---- variables and keys ----------------------------------------------------------------- */

static const char *lookup(const char *name, void *arg)
{
    struct build *b = arg;
    struct template *t = templates_find(b->ts, b->cur);
    size_t n = strlen(name), i;
    json_t *e;
    if (t)
        json_array_foreach(json_object_get(t->config, "env"), i, e)
        {
            const char *kv = json_string_value(e);
            if (kv && !strncmp(kv, name, n) && kv[n] == '=')
                return kv + n + 1;
        }
    return json_string_value(json_object_get(b->args, name));
}

/* "build-cache-<hex>" of the parent's digest, the step's text and `extra`. */
static void cache_key(struct build *b, const char *parent_digest, const char *extra)
{
    buf_t t = BUF_INIT;
    char d[DIGEST_STRLEN];
    if (buf_appendf(&t, "%s\n%s\n%s", parent_digest, b->text, extra ? extra : "") < 0 ||
        digest_buffer(t.data, t.len, d) < 0)
        snprintf(d, sizeof(d), "sha256:-");
    buf_free(&t);
    snprintf(b->key, sizeof(b->key), CACHE_PREFIX "%s", strchr(d, ':') + 1);
}

/* ARG values as RUN sees them: an object of strings, and their text for the cache key. */
static char *args_text(struct build *b)
{
    const char *k;
    json_t *v;
    buf_t t = BUF_INIT;
    json_object_foreach(b->args, k, v) buf_appendf(&t, "%s=%s\n", k, json_string_value(v));
    char *s = strndup(t.data ? t.data : "", t.len);
    buf_free(&t);
    return s;
}

static void add_step(struct build *b, const char *text, int cached, const char *layer)
{
    double ms = (double)(uv_hrtime() - b->step_start) / 1e6;
    json_array_append_new(b->steps, json_pack("{s:s, s:b, s:s?, s:f}", "instruction", text,
                                              "cached", cached, "layer", layer, "duration_ms", ms));
}

/* The step made (or found) template `tpl_name`: it is the current one; its top layer is the
 * step's when it has one more than the parent. */
static void step_done(struct build *b, const char *tpl_name, int cached)
{
    struct template *parent = templates_find(b->ts, b->cur), *t = templates_find(b->ts, tpl_name);
    const char *layer = NULL;
    if (!t) {
        failf(b, SESSION_ERR_NOT_FOUND, "step %zu: template '%s' is gone", b->i + 1, tpl_name);
        return;
    }
    if (t->n_layers && (!parent || parent->n_layers < t->n_layers))
        layer = t->layers[t->n_layers - 1].digest;
    add_step(b, b->text, cached, layer);
    snprintf(b->cur, sizeof(b->cur), "%s", tpl_name);
    b->i++;
    next_step(b);
}

static void on_made(struct template *tpl, enum session_err err, const char *msg, void *arg)
{
    struct build *b = arg;
    if (b->sb) {
        sandbox_destroy(b->sb, NULL, NULL);
        sandbox_unref(b->sb);
        b->sb = NULL;
    }
    if (!tpl) {
        failf(b, err, "step %zu (%s): %s", b->i + 1, b->text, msg);
        return;
    }
    step_done(b, tpl->name, 0);
}

static void on_cached(struct template *tpl, enum session_err err, const char *msg, void *arg);

/* A cache hit (when allowed) answers at once; otherwise `make` is called. With no_cache, an old
 * entry of that key is replaced when it can be. */
static int cache_lookup(struct build *b)
{
    struct template *hit = templates_find(b->ts, b->key);
    char who[128];
    if (!hit)
        return 0;
    if (b->no_cache && !hit->busy && !sandbox_template_user(b->reg, hit->name, who, sizeof(who)) &&
        templates_remove(b->ts, hit) == 0)
        return 0;
    templates_acquire(b->ts, b->key, NULL, on_cached, b);
    return 1;
}

static void on_cached(struct template *tpl, enum session_err err, const char *msg, void *arg)
{
    struct build *b = arg;
    if (!tpl) {
        failf(b, err, "step %zu (%s): %s", b->i + 1, b->text, msg);
        return;
    }
    step_done(b, tpl->name, 1);
}

/* ---- config steps ----------------------------------------------------------------------- */

static void config_step(struct build *b, json_t *edits)
{
    struct template *cur = templates_find(b->ts, b->cur);
    char msg[512];
    free(b->edits);
    b->edits = json_dumps(edits, JSON_COMPACT);
    json_decref(edits);
    if (!cur || !b->edits) {
        failf(b, SESSION_ERR_NOMEM, "step %zu: out of memory", b->i + 1);
        return;
    }
    cache_key(b, cur->digest, NULL);
    if (cache_lookup(b))
        return;
    struct template_derive d = {.edits = b->edits, .created_by = b->text, .hidden = 1};
    enum session_err e = templates_derive(b->ts, b->key, cur, &d, on_made, b, msg, sizeof(msg));
    if (e)
        failf(b, e, "step %zu (%s): %s", b->i + 1, b->text, msg);
}

static json_t *exec_or_shell(const struct df_instr *in)
{
    json_t *a = json_array();
    if (in->exec)
        for (char **p = in->exec; *p; p++)
            json_array_append_new(a, json_string(*p));
    else {
        json_array_append_new(a, json_string("/bin/sh"));
        json_array_append_new(a, json_string("-c"));
        json_array_append_new(a, json_string(in->args));
    }
    return a;
}

/* ---- sandboxes of steps ----------------------------------------------------------------- */

typedef void (*sandbox_ready_fn)(struct build *b);

struct sb_wait {
    struct build *b;
    sandbox_ready_fn then;
};

static void on_step_sandbox(struct sandbox *sb, enum session_err e, const char *msg, void *arg)
{
    struct sb_wait *w = arg;
    struct build *b = w->b;
    sandbox_ready_fn then = w->then;
    free(w);
    if (!sb) {
        failf(b, e, "step %zu (%s): its sandbox: %s", b->i + 1, b->text, msg);
        return;
    }
    sandbox_ref(sb);
    b->sb = sb;
    then(b);
}

static void with_sandbox(struct build *b, sandbox_ready_fn then)
{
    char msg[1024], err[256];
    struct template *cur = templates_find(b->ts, b->cur);
    struct sandbox_image *img = NULL;
    struct egress_policy *net = NULL;
    struct sb_wait *w = calloc(1, sizeof(*w));
    json_t *netj = json_pack("{s:s}", "mode", b->network_open ? "open" : "none");
    json_t *labels = json_pack("{s:s}", "warren.build", b->name);
    enum session_err e = SESSION_ERR_NOMEM;
    snprintf(msg, sizeof(msg), "out of memory");
    if (!cur) {
        e = SESSION_ERR_NOT_FOUND;
        snprintf(msg, sizeof(msg), "the template of the previous step is gone");
    } else if (w && netj && labels && network_parse(netj, &net, err, sizeof(err)) == 0 &&
               (e = templates_image(b->ts, cur, &img, msg, sizeof(msg))) == SESSION_OK) {
        struct sandbox_spec spec = {.template_name = cur->name,
                                    .labels = labels,
                                    .res = b->res,
                                    .network = net,
                                    .image = img};
        *w = (struct sb_wait){b, then};
        e = sandbox_create(b->reg, &spec, on_step_sandbox, w, msg, sizeof(msg));
        if (e == SESSION_OK)
            w = NULL, net = NULL;
    }
    sandbox_image_free(img);
    network_free(net);
    json_decref(netj);
    json_decref(labels);
    free(w);
    if (e)
        failf(b, e, "step %zu (%s): its sandbox: %s", b->i + 1, b->text, msg);
}

static void snapshot_step(struct build *b)
{
    char msg[512];
    enum session_err e = sandbox_snapshot_derive(b->sb, b->ts, b->key, b->edits, b->text, 1,
                                                 on_made, b, msg, sizeof(msg));
    if (e)
        failf(b, e, "step %zu (%s): %s", b->i + 1, b->text, msg);
}

/* ---- RUN -------------------------------------------------------------------------------- */

static void keep_tail(buf_t *buf, size_t max)
{
    if (buf->len > 2 * max)
        buf_consume(buf, buf->len - max);
}

static void on_run_output(struct proc *p, enum proc_stream s, const char *data, size_t len,
                          void *arg)
{
    struct build *b = arg;
    (void)p;
    (void)s;
    buf_append(&b->log, data, len);
    buf_append(&b->out, data, len);
    keep_tail(&b->log, BUILD_LOG_MAX);
    keep_tail(&b->out, BUILD_FAIL_OUTPUT);
}

static void on_run_exit(struct proc *p, int status, void *arg)
{
    struct build *b = arg;
    proc_release(p);
    b->proc = NULL;
    if (status < 0) {
        failf(b, SESSION_ERR_SETUP, "step %zu (%s): the command could not run: %s", b->i + 1,
              b->text, strerror(-status));
        return;
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0) {
        size_t off = b->out.len > BUILD_FAIL_OUTPUT ? b->out.len - BUILD_FAIL_OUTPUT : 0;
        failf(b, SESSION_ERR_BUILD_FAILED, "step %zu (%s) exited with code %d; its output:\n%.*s",
              b->i + 1, b->text, code, (int)(b->out.len - off),
              b->out.data ? b->out.data + off : "");
        return;
    }
    snapshot_step(b);
}

static void run_in_sandbox(struct build *b)
{
    const struct df_instr *in = &b->df.instrs[b->i];
    const char *shell[] = {"/bin/sh", "-c", in->args, NULL};
    char **env = exec_build_env(b->sb, b->args, "dumb", NULL);
    const char *wd = sandbox_default_cwd(b->sb);
    struct template *cur = templates_find(b->ts, b->cur);
    if (cur && !json_string_value(json_object_get(cur->config, "workdir")))
        wd = "/"; /* docker's default; warren's own is /workspace */
    struct proc_spec spec = {.argv = in->exec ? (const char *const *)in->exec : shell,
                             .env = (const char *const *)env,
                             .cwd = wd};
    static const struct proc_ops ops = {.on_output = on_run_output, .on_exit = on_run_exit};
    buf_reset(&b->out);
    int r = env ? proc_start(b->sb, &spec, &ops, b, &b->proc) : -ENOMEM;
    util_free_strv(env);
    if (r < 0)
        failf(b, SESSION_ERR_SETUP, "step %zu (%s): the command could not start: %s", b->i + 1,
              b->text, strerror(-r));
}

static void run_step(struct build *b)
{
    const struct df_instr *in = &b->df.instrs[b->i];
    struct template *cur = templates_find(b->ts, b->cur);
    char *at = args_text(b);
    buf_appendf(&b->log, "#%zu %s\n", b->i + 1, in->text);
    if (!cur || !at) {
        free(at);
        failf(b, SESSION_ERR_NOMEM, "step %zu: out of memory", b->i + 1);
        return;
    }
    cache_key(b, cur->digest, at);
    free(at);
    free(b->edits);
    b->edits = NULL;
    if (!cache_lookup(b))
        with_sandbox(b, run_in_sandbox);
}

/* ---- COPY and ADD ------------------------------------------------------------------------ */

/* What the pool gathers: one tar of the sources named relative to the destination directory. */
struct gather {
    uv_work_t work;
    struct build *b;
    int add;
    char **srcs;
    size_t n_srcs;
    int dest_dir; /* the destination is a directory (ends with '/', or several sources) */
    char dest[4096];
    /* outcome */
    char extract_dir[4096];
    char **names; /* entries written, for --chown */
    size_t n_names, cap_names;
    struct archive *a;
    struct digest_ctx dg;
    int ctx_fd;
    char buf[1 << 16];
};

static int gather_fail(struct gather *g, int r, const char *fmt, const char *what)
{
    snprintf(g->b->msg, sizeof(g->b->msg), fmt, what, strerror(-r));
    return r;
}

static int note_name(struct gather *g, const char *name)
{
    if (g->n_names + 2 > g->cap_names) {
        size_t nc = g->cap_names ? 2 * g->cap_names : 64;
        char **v = realloc(g->names, nc * sizeof(*v));
        if (!v)
            return -ENOMEM;
        g->names = v;
        g->cap_names = nc;
    }
    if (!(g->names[g->n_names] = strdup(name)))
        return -ENOMEM;
    g->names[++g->n_names] = NULL;
    return 0;
}

/* The content hash: names, types, modes and bytes (never times or owners). */
static void hash_meta(struct gather *g, const char *name, char type, mode_t mode)
{
    char m[32];
    int n = snprintf(m, sizeof(m), "\n%c%o\n", type, (unsigned)(mode & 07777));
    digest_update(&g->dg, name, strlen(name) + 1);
    digest_update(&g->dg, m, (size_t)n);
}

static int write_header(struct gather *g, const char *name, const struct stat *st, char type,
                        const char *link)
{
    struct archive_entry *e = archive_entry_new();
    if (!e)
        return -ENOMEM;
    archive_entry_set_pathname(e, name);
    archive_entry_set_perm(e, st->st_mode & 07777);
    archive_entry_set_mtime(e, st->st_mtime, 0);
    archive_entry_set_filetype(e, type == 'd' ? AE_IFDIR : type == 'l' ? AE_IFLNK : AE_IFREG);
    archive_entry_set_size(e, type == 'f' ? st->st_size : 0);
    if (link)
        archive_entry_set_symlink(e, link);
    int r = archive_write_header(g->a, e) == ARCHIVE_OK ? 0 : -EIO;
    archive_entry_free(e);
    hash_meta(g, name, type, st->st_mode);
    if (link)
        digest_update(&g->dg, link, strlen(link));
    return r < 0 ? r : note_name(g, name);
}

static int copy_data(struct gather *g, int fd)
{
    for (;;) {
        ssize_t n = read(fd, g->buf, sizeof(g->buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        digest_update(&g->dg, g->buf, (size_t)n);
        if (archive_write_data(g->a, g->buf, (size_t)n) != n)
            return -EIO;
    }
}

/* A name in the context, below `dir`, never through a symlink. */
static int ctx_open(int dir, const char *name, int flags)
{
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC),
                           .resolve =
                               RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    long fd = syscall(SYS_openat2, dir, name, &how, sizeof(how));
    return fd < 0 ? -errno : (int)fd;
}

static int add_tree(struct gather *g, int dir, const char *name, const char *entry, int depth);

/* `name` in `dir` (not followed) as entry `entry`; directories with their contents. */
static int add_path(struct gather *g, int dir, const char *name, const char *entry, int depth)
{
    struct stat st;
    char link[4096];
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlinkat(dir, name, link, sizeof(link) - 1);
        if (n < 0)
            return -errno;
        link[n] = '\0';
        return write_header(g, entry, &st, 'l', link);
    }
    if (S_ISDIR(st.st_mode)) {
        int r = entry[0] ? write_header(g, entry, &st, 'd', NULL) : 0;
        return r < 0 ? r : add_tree(g, dir, name, entry, depth + 1);
    }
    if (!S_ISREG(st.st_mode))
        return 0; /* the context has nothing else; be safe anyway */
    int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = write_header(g, entry, &st, 'f', NULL);
    if (r == 0)
        r = copy_data(g, fd);
    close(fd);
    return r;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The contents of directory `name` in `dir`, named `prefix`/... (sorted: the hash must not
 * depend on the directory's order). */
static int add_tree(struct gather *g, int dir, const char *name, const char *prefix, int depth)
{
    if (depth > MAX_DEPTH)
        return -ELOOP;
    int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int r = 0;
    for (struct dirent *de; r == 0 && (de = readdir(d));) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            char **v = realloc(names, cap * sizeof(*v));
            if (!v) {
                r = -ENOMEM;
                break;
            }
            names = v;
        }
        if (!(names[n] = strdup(de->d_name)))
            r = -ENOMEM;
        else
            n++;
    }
    if (n)
        qsort(names, n, sizeof(*names), cmp_str);
    for (size_t i = 0; i < n && r == 0; i++) {
        char entry[4096];
        if ((size_t)snprintf(entry, sizeof(entry), "%s%s%s", prefix, prefix[0] ? "/" : "",
                             names[i]) >= sizeof(entry))
            r = -ENAMETOOLONG;
        else
            r = add_path(g, dirfd(d), names[i], entry, depth);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    closedir(d);
    return r;
}

/* ADD of a local archive: its files, directories and symlinks, as they are named in it. */
static int add_archive(struct gather *g, int fd)
{
    struct archive *in = archive_read_new();
    struct archive_entry *e;
    int r = 0;
    if (!in)
        return -ENOMEM;
    archive_read_support_filter_all(in);
    archive_read_support_format_tar(in);
    if (archive_read_open_fd(in, fd, sizeof(g->buf)) != ARCHIVE_OK) {
        archive_read_free(in);
        return -EINVAL;
    }
    while (r == 0) {
        int h = archive_read_next_header(in, &e);
        if (h == ARCHIVE_EOF)
            break;
        if (h != ARCHIVE_OK && h != ARCHIVE_WARN) {
            r = -EINVAL;
            break;
        }
        const char *name = archive_entry_pathname(e);
        mode_t type = archive_entry_filetype(e);
        struct stat st = {.st_mode = archive_entry_perm(e),
                          .st_mtime = archive_entry_mtime(e),
                          .st_size = archive_entry_size(e)};
        char clean[4096];
        snprintf(clean, sizeof(clean), "%s", name ? name : "");
        while (!strncmp(clean, "./", 2))
            memmove(clean, clean + 2, strlen(clean + 2) + 1);
        for (size_t l = strlen(clean); l > 1 && clean[l - 1] == '/';)
            clean[--l] = '\0';
        if (!clean[0] || !strcmp(clean, "."))
            continue;
        if (type == AE_IFDIR) {
            r = write_header(g, clean, &st, 'd', NULL);
        } else if (type == AE_IFLNK) {
            r = write_header(g, clean, &st, 'l', archive_entry_symlink(e));
        } else if (type == AE_IFREG) {
            if ((r = write_header(g, clean, &st, 'f', NULL)) < 0)
                break;
            const void *blk;
            size_t len;
            la_int64_t off;
            int dr;
            while ((dr = archive_read_data_block(in, &blk, &len, &off)) == ARCHIVE_OK) {
                digest_update(&g->dg, blk, len);
                if (archive_write_data(g->a, blk, len) != (la_ssize_t)len) {
                    r = -EIO;
                    break;
                }
            }
            if (r == 0 && dr != ARCHIVE_EOF)
                r = -EINVAL;
        } /* hard links, devices: left out */
    }
    archive_read_free(in);
    return r;
}

/* Whether a regular file reads as a tar (plain or compressed): ADD extracts those. */
static int is_archive(int fd)
{
    struct archive *in = archive_read_new();
    struct archive_entry *e;
    int yes = 0;
    if (!in)
        return 0;
    archive_read_support_filter_all(in);
    archive_read_support_format_tar(in);
    if (archive_read_open_fd(in, fd, 1 << 14) == ARCHIVE_OK) {
        int h = archive_read_next_header(in, &e);
        yes = h == ARCHIVE_OK || h == ARCHIVE_WARN;
    }
    archive_read_free(in);
    lseek(fd, 0, SEEK_SET);
    return yes;
}

/* A source: a path in the context ("." is all of it), or a pattern matched in its directory. */
static int gather_source(struct gather *g, const char *src)
{
    char path[4096], *slash;
    snprintf(path, sizeof(path), "%s", src);
    while (path[0] == '/')
        memmove(path, path + 1, strlen(path));
    for (size_t l = strlen(path); l > 1 && path[l - 1] == '/';)
        path[--l] = '\0';
    if (!path[0])
        snprintf(path, sizeof(path), ".");
    for (char *p = path; p; p = strchr(p, '/')) {
        p += *p == '/';
        if (!strncmp(p, "..", 2) && (p[2] == '/' || !p[2])) {
            snprintf(g->b->msg, sizeof(g->b->msg), "source '%s' is outside the build context", src);
            return -EINVAL;
        }
    }
    char parent[4096] = ".", *last = path;
    if ((slash = strrchr(path, '/'))) {
        *slash = '\0';
        snprintf(parent, sizeof(parent), "%s", path);
        last = slash + 1;
    }
    int dir = ctx_open(g->ctx_fd, parent, O_RDONLY | O_DIRECTORY);
    if (dir < 0) {
        snprintf(g->b->msg, sizeof(g->b->msg), "source '%s' is not in the build context: %s", src,
                 strerror(-dir));
        return -EINVAL;
    }
    int r = 0, matched = 0;
    const char *names[1] = {last};
    DIR *d = NULL;
    if (strpbrk(last, "*?[")) {
        if (!(d = fdopendir(dup(dir)))) {
            close(dir);
            return -errno;
        }
    }
    for (struct dirent *de = NULL;;) {
        const char *name;
        if (d) {
            if (!(de = readdir(d)))
                break;
            if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..")))
                continue;
            if (fnmatch(last, de->d_name, FNM_PERIOD) != 0)
                continue;
            name = de->d_name;
        } else if (matched) {
            break;
        } else {
            name = names[0];
        }
        struct stat st;
        if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            r = -errno;
            snprintf(g->b->msg, sizeof(g->b->msg), "source '%s' is not in the build context: %s",
                     src, strerror(errno));
            break;
        }
        matched++;
        const char *base = strcmp(name, ".") ? name : "";
        if (S_ISDIR(st.st_mode)) {
            r = add_tree(g, dir, name, "", 0); /* a directory's contents, not itself */
        } else if (!g->dest_dir) {
            r = add_path(g, dir, name, strrchr(g->dest, '/') + 1, 0);
        } else if (g->add && S_ISREG(st.st_mode)) {
            int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            r = fd < 0           ? -errno
                : is_archive(fd) ? add_archive(g, fd)
                                 : add_path(g, dir, name, base, 0);
            if (fd >= 0)
                close(fd);
        } else {
            r = add_path(g, dir, name, base, 0);
        }
        if (r < 0) {
            if (!g->b->msg[0])
                snprintf(g->b->msg, sizeof(g->b->msg), "copying '%s' from the context: %s", src,
                         strerror(-r));
            break;
        }
    }
    if (d)
        closedir(d);
    close(dir);
    if (r == 0 && !matched) {
        snprintf(g->b->msg, sizeof(g->b->msg), "no source file matches '%s'", src);
        r = -ENOENT;
    }
    return r;
}

static void gather_work(uv_work_t *req)
{
    struct gather *g = req->data;
    struct build *b = g->b;
    char ctx[1300];
    int out = -1;
    b->msg[0] = '\0';
    snprintf(ctx, sizeof(ctx), "%s/context", b->dir);
    snprintf(b->tar, sizeof(b->tar), "%s/step-%zu.tar", b->dir, b->i + 1);
    g->ctx_fd = open(ctx, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (g->ctx_fd < 0 || digest_init(&g->dg) < 0) {
        b->r = g->ctx_fd < 0 ? -errno : -ENOMEM;
        gather_fail(g, b->r, "%s: %s", "the build context");
        if (g->ctx_fd >= 0)
            close(g->ctx_fd);
        return;
    }
    if ((out = open(b->tar, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0 ||
        !(g->a = archive_write_new()) || archive_write_set_format_pax_restricted(g->a) ||
        archive_write_open_fd(g->a, out) != ARCHIVE_OK) {
        b->r = -EIO;
        gather_fail(g, b->r, "%s: %s", "the step's archive");
    } else {
        b->r = 0;
        for (size_t i = 0; i < g->n_srcs && b->r == 0; i++)
            b->r = gather_source(g, g->srcs[i]);
        if (b->r < 0 && !b->msg[0])
            gather_fail(g, b->r, "%s: %s", "gathering the sources");
    }
    if (g->a) {
        if (archive_write_close(g->a) != ARCHIVE_OK && b->r == 0) {
            b->r = -EIO;
            gather_fail(g, b->r, "%s: %s", "the step's archive");
        }
        archive_write_free(g->a);
    }
    if (out >= 0)
        close(out);
    digest_final(&g->dg, b->hash);
    close(g->ctx_fd);
}

static ssize_t read_fd(void *buf, size_t len, void *arg)
{
    ssize_t n;
    while ((n = read(*(int *)arg, buf, len)) < 0 && errno == EINTR)
        ;
    return n < 0 ? -errno : n;
}

static void copy_extract_work(const struct fs_root *root, void *arg)
{
    struct build *b = arg;
    size_t entries = 0;
    int fd = open(b->tar, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        b->r = -errno;
        snprintf(b->msg, sizeof(b->msg), "the step's archive: %s", strerror(errno));
        return;
    }
    b->msg[0] = '\0';
    b->r = fs_archive_extract(root, b->dest, read_fd, &fd, 0, 0, &entries, b->msg, sizeof(b->msg));
    close(fd);
    if (b->r == 0 && b->chown[0]) {
        for (size_t i = 0; i < b->n_chown && b->r == 0; i++) {
            char p[8192];
            snprintf(p, sizeof(p), "%s/%s", b->dest, b->chown_paths[i]);
            if ((b->r = fs_chown(root, p, b->user.uid, b->user.gid)) < 0)
                snprintf(b->msg, sizeof(b->msg), "--chown of %.4000s: %s", p, strerror(-b->r));
        }
    }
    if (b->r < 0 && !b->msg[0])
        snprintf(b->msg, sizeof(b->msg), "extracting into %s: %s", b->dest, strerror(-b->r));
}

static void copy_extract_done(void *arg)
{
    struct build *b = arg;
    if (b->r < 0) {
        failf(b, SESSION_ERR_BUILD_INVALID, "step %zu (%s): %s", b->i + 1, b->text, b->msg);
        return;
    }
    snapshot_step(b);
}

static void copy_in_sandbox(struct build *b)
{
    if (b->chown[0]) {
        int r = sandbox_resolve_user(b->sb, b->chown, &b->user);
        if (r < 0) {
            failf(b, SESSION_ERR_BUILD_INVALID, "step %zu (%s): --chown=%s: %s", b->i + 1, b->text,
                  b->chown, r == -ENOENT ? "no such user or group" : strerror(-r));
            return;
        }
    }
    int r = files_run(b->sb, copy_extract_work, copy_extract_done, b);
    if (r < 0)
        failf(b, SESSION_ERR_SETUP, "step %zu (%s): the sandbox's files: %s", b->i + 1, b->text,
              strerror(-r));
}

static void gather_done(uv_work_t *req, int status)
{
    struct gather *g = req->data;
    struct build *b = g->b;
    (void)status;
    if (g->n_names > 1 && !g->dest_dir && b->r == 0) {
        b->r = -EINVAL;
        snprintf(b->msg, sizeof(b->msg),
                 "several files to copy: the destination must be a directory (end it with /)");
    }
    snprintf(b->dest, sizeof(b->dest), "%s", g->extract_dir);
    dockerfile_strv_free(b->chown_paths);
    b->chown_paths = g->names;
    b->n_chown = g->n_names;
    dockerfile_strv_free(g->srcs);
    free(g);
    if (b->r < 0) {
        failf(b, SESSION_ERR_BUILD_INVALID, "step %zu (%s): %s", b->i + 1, b->text, b->msg);
        return;
    }
    struct template *cur = templates_find(b->ts, b->cur);
    if (!cur) {
        failf(b, SESSION_ERR_NOT_FOUND, "the template of the previous step is gone");
        return;
    }
    cache_key(b, cur->digest, b->hash);
    free(b->edits);
    b->edits = NULL;
    if (!cache_lookup(b))
        with_sandbox(b, copy_in_sandbox);
}

/* A path of the image: absolute, or relative to the WORKDIR so far. */
static void image_path(struct build *b, const char *p, char *out, size_t cap)
{
    struct template *cur = templates_find(b->ts, b->cur);
    const char *wd = cur ? json_string_value(json_object_get(cur->config, "workdir")) : NULL;
    if (p[0] == '/')
        snprintf(out, cap, "%s", p);
    else
        snprintf(out, cap, "%s/%s", wd && *wd ? wd : "", p);
}

static void copy_step(struct build *b, char **words, size_t n)
{
    const struct df_instr *in = &b->df.instrs[b->i];
    struct gather *g = calloc(1, sizeof(*g));
    if (n < 2) {
        free(g);
        dockerfile_strv_free(words);
        failf(b, SESSION_ERR_BUILD_INVALID, "line %d: %s needs a source and a destination",
              in->line, in->keyword);
        return;
    }
    for (size_t i = 0; i + 1 < n; i++)
        if (strstr(words[i], "://")) {
            free(g);
            dockerfile_strv_free(words);
            failf(b, SESSION_ERR_BUILD_INVALID,
                  "line %d: %s of a URL is not supported by warren build: copy it into the "
                  "context",
                  in->line, in->keyword);
            return;
        }
    if (!g) {
        dockerfile_strv_free(words);
        failf(b, SESSION_ERR_NOMEM, "out of memory");
        return;
    }
    g->b = b;
    g->add = in->kind == DF_ADD;
    image_path(b, words[n - 1], g->dest, sizeof(g->dest));
    size_t dl = strlen(words[n - 1]);
    g->dest_dir = words[n - 1][dl - 1] == '/' || n > 2;
    if (!g->dest_dir) {
        /* One source: a directory's contents or an archive go into dest; a file becomes it. */
        struct stat st;
        int fd = open(b->dir, O_PATH | O_CLOEXEC);
        int cfd = fd >= 0 ? ctx_open(fd, "context", O_PATH | O_DIRECTORY) : -1;
        const char *rel = words[0];
        while (*rel == '/')
            rel++;
        int sfd = cfd >= 0 ? ctx_open(cfd, *rel ? rel : ".", O_RDONLY) : -1;
        if (sfd >= 0 && fstat(sfd, &st) == 0 &&
            (S_ISDIR(st.st_mode) || (g->add && S_ISREG(st.st_mode) && is_archive(sfd))))
            g->dest_dir = 1;
        if (sfd >= 0)
            close(sfd);
        if (cfd >= 0)
            close(cfd);
        if (fd >= 0)
            close(fd);
    }
    /* extract_dir: where the archive goes; a single file is named as dest's last component. */
    snprintf(g->extract_dir, sizeof(g->extract_dir), "%s", g->dest);
    if (!g->dest_dir) {
        char *slash = strrchr(g->extract_dir, '/');
        if (slash == g->extract_dir)
            g->extract_dir[1] = '\0';
        else if (slash)
            *slash = '\0';
        snprintf(g->dest, sizeof(g->dest), "/%s",
                 strrchr(words[n - 1], '/') ? strrchr(words[n - 1], '/') + 1 : words[n - 1]);
    }
    free(words[n - 1]);
    words[n - 1] = NULL;
    g->srcs = words;
    g->n_srcs = n - 1;
    snprintf(b->chown, sizeof(b->chown), "%s", in->chown ? in->chown : "");
    g->work.data = g;
    b->r = 0;
    if (uv_queue_work(b->reg->loop, &g->work, gather_work, gather_done) < 0) {
        dockerfile_strv_free(g->srcs);
        free(g);
        failf(b, SESSION_ERR_NOMEM, "cannot queue work");
    }
}

/* ---- WORKDIR ---------------------------------------------------------------------------- */

static void workdir_work(const struct fs_root *root, void *arg)
{
    struct build *b = arg;
    b->r = fs_mkdir(root, b->dest, 1);
    if (b->r < 0)
        snprintf(b->msg, sizeof(b->msg), "making %s: %s", b->dest, strerror(-b->r));
}

static void workdir_in_sandbox(struct build *b)
{
    int r = files_run(b->sb, workdir_work, copy_extract_done, b);
    if (r < 0)
        failf(b, SESSION_ERR_SETUP, "step %zu (%s): the sandbox's files: %s", b->i + 1, b->text,
              strerror(-r));
}

/* ---- FROM ------------------------------------------------------------------------------- */

static void on_base(struct template *tpl, enum session_err err, const char *msg, void *arg)
{
    struct build *b = arg;
    if (!tpl) {
        failf(b, err, "step %zu (%s): %s", b->i + 1, b->text, msg);
        return;
    }
    add_step(b, b->text, b->r, NULL);
    snprintf(b->cur, sizeof(b->cur), "%s", tpl->name);
    b->i++;
    next_step(b);
}

static void from_step(struct build *b, const char *ref)
{
    char msg[512];
    struct template *t;
    if (!strcmp(ref, "scratch")) {
        snprintf(b->key, sizeof(b->key), CACHE_PREFIX "scratch");
        if (cache_lookup(b))
            return;
        struct template_derive d = {.created_by = "FROM scratch", .hidden = 1};
        enum session_err e =
            templates_derive(b->ts, b->key, NULL, &d, on_made, b, msg, sizeof(msg));
        if (e)
            failf(b, e, "step %zu (%s): %s", b->i + 1, b->text, msg);
        return;
    }
    /* A template of that name first (builds on builds), else an image. */
    t = templates_find(b->ts, ref);
    b->r = t && t->state == TEMPLATE_READY; /* cached: nothing to pull */
    templates_acquire(b->ts, t ? ref : NULL, t ? NULL : ref, on_base, b);
}

/* ---- the steps -------------------------------------------------------------------------- */

static json_t *env_with(struct build *b, char **words, size_t n, int *bad)
{
    struct template *cur = templates_find(b->ts, b->cur);
    json_t *env = json_deep_copy(cur ? json_object_get(cur->config, "env") : NULL);
    if (!env)
        env = json_array();
    *bad = 0;
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(words[i], '=');
        size_t kl = eq ? (size_t)(eq - words[i]) : 0, j;
        json_t *e;
        if (!eq || kl == 0) {
            *bad = 1;
            break;
        }
        json_array_foreach(env, j, e)
        {
            const char *kv = json_string_value(e);
            if (kv && !strncmp(kv, words[i], kl + 1))
                break;
        }
        if (j < json_array_size(env))
            json_array_set_new(env, j, json_string(words[i]));
        else
            json_array_append_new(env, json_string(words[i]));
    }
    return env;
}

static void next_step(struct build *b)
{
    char msg[1024], **w = NULL;
    size_t n = 0;
    int split = 1, bad = 0;
    if (b->i >= b->df.n) {
        finish_ok(b);
        return;
    }
    const struct df_instr *in = &b->df.instrs[b->i];
    b->step_start = uv_hrtime();
    snprintf(b->text, sizeof(b->text), "%s", in->text);
    switch (in->kind) {
    case DF_RUN:
        run_step(b);
        return;
    case DF_CMD:
    case DF_ENTRYPOINT: {
        json_t *edits =
            json_pack("{s:o}", in->kind == DF_CMD ? "Cmd" : "Entrypoint", exec_or_shell(in));
        if (in->kind == DF_CMD)
            b->cmd_set = 1;
        else if (!b->cmd_set) /* docker: an ENTRYPOINT drops the base image's CMD */
            json_object_set_new(edits, "Cmd", json_null());
        config_step(b, edits);
        return;
    }
    case DF_EXPOSE:
        add_step(b, b->text, 1, NULL);
        b->i++;
        next_step(b);
        return;
    case DF_WORKDIR:
    case DF_USER:
    case DF_FROM:
        split = 0;
        break;
    default:
        break;
    }
    if (dockerfile_words(in->args, split, lookup, b, &w, &n, msg, sizeof(msg)) < 0) {
        failf(b, SESSION_ERR_BUILD_INVALID, "line %d: %s", in->line, msg);
        return;
    }
    /* The instruction as it ran: what the cache key and the steps show. */
    buf_t t = BUF_INIT;
    buf_appendf(&t, "%s%s%s", in->keyword, in->chown ? " --chown=" : "",
                in->chown ? in->chown : "");
    for (size_t i = 0; i < n; i++)
        buf_appendf(&t, " %s", w[i]);
    snprintf(b->text, sizeof(b->text), "%.*s", (int)t.len, t.data ? t.data : "");
    buf_free(&t);
    switch (in->kind) {
    case DF_FROM:
        from_step(b, w[0]);
        break;
    case DF_ARG:
        for (size_t i = 0; i < n; i++) {
            char *eq = strchr(w[i], '=');
            if (eq)
                *eq = '\0';
            json_t *given = json_object_get(b->build_args, w[i]);
            if (given)
                json_object_set(b->args, w[i], given);
            else if (eq)
                json_object_set_new(b->args, w[i], json_string(eq + 1));
        }
        add_step(b, in->text, 1, NULL);
        b->i++;
        next_step(b);
        break;
    case DF_ENV: {
        json_t *env;
        if (n >= 1 && !strchr(w[0], '=')) { /* ENV K the rest of the line */
            char **v = NULL, *rest = in->args + strcspn(in->args, " \t");
            size_t nv;
            if (dockerfile_words(rest + strspn(rest, " \t"), 0, lookup, b, &v, &nv, msg,
                                 sizeof(msg)) < 0) {
                failf(b, SESSION_ERR_BUILD_INVALID, "line %d: %s", in->line, msg);
                break;
            }
            char *kv = NULL;
            if (asprintf(&kv, "%s=%s", w[0], nv ? v[0] : "") < 0)
                kv = NULL;
            dockerfile_strv_free(v);
            env = kv ? env_with(b, &kv, 1, &bad) : NULL;
            if (kv)
                snprintf(b->text, sizeof(b->text), "ENV %s", kv);
            free(kv);
        } else {
            env = env_with(b, w, n, &bad);
        }
        if (bad || !env) {
            json_decref(env);
            failf(b, SESSION_ERR_BUILD_INVALID, "line %d: ENV takes K=V pairs, or K V", in->line);
            break;
        }
        config_step(b, json_pack("{s:o}", "Env", env));
        break;
    }
    case DF_LABEL: {
        json_t *labels = json_object();
        for (size_t i = 0; i < n && !bad; i++) {
            char *eq = strchr(w[i], '=');
            if (!eq || eq == w[i])
                bad = 1;
            else {
                *eq = '\0';
                json_object_set_new(labels, w[i], json_string(eq + 1));
            }
        }
        if (bad) {
            json_decref(labels);
            failf(b, SESSION_ERR_BUILD_INVALID, "line %d: LABEL takes K=V pairs", in->line);
            break;
        }
        config_step(b, json_pack("{s:o}", "Labels", labels));
        break;
    }
    case DF_USER:
        config_step(b, json_pack("{s:s}", "User", w[0]));
        break;
    case DF_WORKDIR: {
        char path[4096];
        image_path(b, w[0], path, sizeof(path));
        snprintf(b->dest, sizeof(b->dest), "%s", path);
        snprintf(b->text, sizeof(b->text), "WORKDIR %.4000s", path);
        struct template *cur = templates_find(b->ts, b->cur);
        json_t *edits = json_pack("{s:s}", "WorkingDir", path);
        free(b->edits);
        b->edits = edits ? json_dumps(edits, JSON_COMPACT) : NULL;
        json_decref(edits);
        if (!cur || !b->edits) {
            failf(b, SESSION_ERR_NOMEM, "out of memory");
            break;
        }
        cache_key(b, cur->digest, NULL);
        if (!cache_lookup(b))
            with_sandbox(b, workdir_in_sandbox);
        break;
    }
    case DF_COPY:
    case DF_ADD:
        copy_step(b, w, n);
        w = NULL; /* taken over */
        break;
    default:
        failf(b, SESSION_ERR_BUILD_INVALID, "line %d: %s is not supported", in->line, in->keyword);
        break;
    }
    dockerfile_strv_free(w);
}

/* ---- the context ------------------------------------------------------------------------ */

static int read_all(int fd, char *p, size_t n)
{
    for (size_t off = 0; off < n;) {
        ssize_t r = read(fd, p + off, n - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? -errno : -EIO;
        off += (size_t)r;
    }
    return 0;
}

/* Pool: the context from b->fd into <dir>/context, then the Dockerfile read and parsed. */
static void context_work(uv_work_t *req)
{
    struct build *b = req->data;
    char ctx[1300];
    struct archive *in = archive_read_new(), *out = archive_write_disk_new();
    struct archive_entry *e;
    b->r = 0;
    snprintf(ctx, sizeof(ctx), "%s/context", b->dir);
    if (!in || !out || mkdir(ctx, 0700) < 0) {
        b->r = in && out ? -errno : -ENOMEM;
        snprintf(b->msg, sizeof(b->msg), "the build directory: %s", strerror(-b->r));
        goto out;
    }
    archive_read_support_filter_all(in);
    archive_read_support_format_tar(in);
    /* No owners, no device nodes, nothing through a symlink or outside the directory. */
    archive_write_disk_set_options(
        out, ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                 ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_NO_OVERWRITE_NEWER);
    if (archive_read_open_fd(in, b->fd, 1 << 16) != ARCHIVE_OK) {
        b->r = -EINVAL;
        snprintf(b->msg, sizeof(b->msg), "the build context is not a tar: %s",
                 archive_error_string(in) ?: "unreadable");
        goto out;
    }
    for (;;) {
        int h = archive_read_next_header(in, &e);
        if (h == ARCHIVE_EOF)
            break;
        if (h != ARCHIVE_OK && h != ARCHIVE_WARN) {
            b->r = -EINVAL;
            snprintf(b->msg, sizeof(b->msg), "the build context: %s",
                     archive_error_string(in) ?: "not a tar");
            goto out;
        }
        mode_t type = archive_entry_filetype(e);
        if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK)
            continue;
        if (archive_entry_hardlink(e))
            continue;
        char path[8200], name[4096];
        snprintf(name, sizeof(name), "%s", archive_entry_pathname(e) ?: "");
        snprintf(path, sizeof(path), "%s/%s", ctx, name);
        /* Absolute names would be below ctx anyway; refused to say so. The entry's own '..'
         * (and a hard link's) are refused by the secure flags too. */
        if (name[0] == '/' || !strcmp(name, "..") || !strncmp(name, "../", 3) ||
            strstr(name, "/../") ||
            (strlen(name) >= 3 && !strcmp(name + strlen(name) - 3, "/.."))) {
            b->r = -EINVAL;
            snprintf(b->msg, sizeof(b->msg), "the build context names '%s'", name);
            goto out;
        }
        archive_entry_set_pathname(e, path);
        archive_entry_set_perm(e, archive_entry_perm(e) & 0777);
        archive_entry_set_uid(e, 0);
        archive_entry_set_gid(e, 0);
        if (archive_write_header(out, e) != ARCHIVE_OK) {
            b->r = -EINVAL;
            snprintf(b->msg, sizeof(b->msg), "the build context: %s: %s", name,
                     archive_error_string(out) ?: "cannot be extracted");
            goto out;
        }
        const void *blk;
        size_t len;
        la_int64_t off;
        int dr;
        while (type == AE_IFREG &&
               (dr = archive_read_data_block(in, &blk, &len, &off)) == ARCHIVE_OK)
            if (archive_write_data_block(out, blk, len, off) != ARCHIVE_OK) {
                dr = ARCHIVE_FATAL;
                break;
            }
        if (type == AE_IFREG && dr != ARCHIVE_EOF) {
            b->r = -EIO;
            snprintf(b->msg, sizeof(b->msg), "the build context: %s: %s", name,
                     archive_error_string(in) ?: archive_error_string(out) ?: "truncated");
            goto out;
        }
        archive_write_finish_entry(out);
    }
    /* Whatever follows the archive is not read: the loop's writes fail from here. */
    close(b->fd);
    b->fd = -1;
    int cfd = open(ctx, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int dfd = cfd >= 0 ? ctx_open(cfd, b->dockerfile, O_RDONLY) : -errno;
    if (cfd >= 0)
        close(cfd);
    struct stat st;
    char *text = NULL;
    if (dfd < 0 || fstat(dfd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (1 << 20)) {
        b->r = -EINVAL;
        snprintf(b->msg, sizeof(b->msg), "the build context has no Dockerfile '%s'%s",
                 b->dockerfile, dfd >= 0 ? " (a regular file of at most 1 MiB)" : "");
    } else if (!(text = malloc((size_t)st.st_size + 1)) ||
               read_all(dfd, text, (size_t)st.st_size) < 0) {
        b->r = -EIO;
        snprintf(b->msg, sizeof(b->msg), "reading the Dockerfile: %s", strerror(errno));
    } else {
        b->r = dockerfile_parse(text, (size_t)st.st_size, &b->df, b->msg, sizeof(b->msg));
    }
    free(text);
    if (dfd >= 0)
        close(dfd);
out:
    if (in)
        archive_read_free(in);
    if (out)
        archive_write_free(out);
}

static void context_done(uv_work_t *req, int status)
{
    struct build *b = req->data;
    (void)status;
    free(req);
    if (b->r < 0) {
        failf(b, b->r == -ENOMEM ? SESSION_ERR_NOMEM : SESSION_ERR_BUILD_INVALID, "%s", b->msg);
        return;
    }
    b->i = 0;
    next_step(b);
}

enum session_err build_start(struct registry *reg, struct template_set *ts,
                             const struct build_request *req, int fd, build_done_cb cb, void *arg,
                             char *msg, size_t msglen)
{
    struct template *old = templates_find(ts, req->name);
    char who[128], id[32];
    if (old && (old->busy || sandbox_template_user(reg, old->name, who, sizeof(who)))) {
        close(fd);
        snprintf(msg, msglen, "template '%s' is %s", req->name,
                 old->busy ? "being made" : "in use by a sandbox");
        return SESSION_ERR_IN_USE;
    }
    struct build *b = calloc(1, sizeof(*b));
    uv_work_t *w = calloc(1, sizeof(*w));
    if (!b || !w || !(b->steps = json_array()) || !(b->args = json_object()) ||
        !(b->build_args = req->build_args ? json_deep_copy(req->build_args) : json_object())) {
        close(fd);
        if (b) {
            b->fd = -1;
            build_free(b);
        }
        free(w);
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    b->reg = reg;
    b->ts = ts;
    b->fd = fd;
    b->cb = cb;
    b->cb_arg = arg;
    b->no_cache = req->no_cache;
    b->network_open = req->network_open;
    b->res = req->res;
    buf_init(&b->log);
    buf_init(&b->out);
    snprintf(b->name, sizeof(b->name), "%s", req->name);
    snprintf(b->dockerfile, sizeof(b->dockerfile), "%s",
             req->dockerfile && *req->dockerfile ? req->dockerfile : "Dockerfile");
    while (b->dockerfile[0] == '/')
        memmove(b->dockerfile, b->dockerfile + 1, strlen(b->dockerfile));
    char builds[1100];
    snprintf(builds, sizeof(builds), "%s/builds", reg->state_dir);
    if (util_random_id(id, sizeof(id), "b-") < 0 || util_mkdir_p(builds, 0700) < 0 ||
        snprintf(b->dir, sizeof(b->dir), "%s/%s", builds, id) < 0 || mkdir(b->dir, 0700) < 0) {
        snprintf(msg, msglen, "cannot make the build directory in %s: %s", builds, strerror(errno));
        b->dir[0] = '\0';
        build_free(b);
        free(w);
        return SESSION_ERR_SETUP;
    }
    w->data = b;
    if (uv_queue_work(reg->loop, w, context_work, context_done) < 0) {
        build_free(b);
        free(w);
        snprintf(msg, msglen, "cannot queue work");
        return SESSION_ERR_NOMEM;
    }
    ts->builds++;
    return SESSION_OK;
}

void build_recover(const char *state_dir)
{
    char builds[1100];
    snprintf(builds, sizeof(builds), "%s/builds", state_dir);
    util_remove_tree(builds);
}
