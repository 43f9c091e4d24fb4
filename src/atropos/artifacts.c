/*
 * artifacts — /artifacts/read, /artifacts/list and /artifacts/archive: workspace files read,
 * listed in the reference's order (os.walk's when recursive) and archived (tar.gz, with the
 * engine's archive writer), on the thread pool.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atropos/atropos_internal.h"
#include "core/util.h"

#define MAX_ARTIFACT_BYTES 5000000
#define MAX_ARTIFACT_ENTRIES 5000
#define MAX_WALK_ENTRIES 200000 /* entries listed to find the files of an archive */

static const char *mime_by_suffix(const char *path)
{
    static const char *const map[][2] = {
        {".txt", "text/plain"},      {".log", "text/plain"},       {".json", "application/json"},
        {".py", "text/x-python"},    {".md", "text/markdown"},     {".html", "text/html"},
        {".csv", "text/csv"},        {".xml", "application/xml"},  {".png", "image/png"},
        {".jpg", "image/jpeg"},      {".jpeg", "image/jpeg"},      {".gif", "image/gif"},
        {".webp", "image/webp"},     {".pdf", "application/pdf"},  {".tar", "application/x-tar"},
        {".gz", "application/gzip"}, {".tgz", "application/gzip"}, {".zip", "application/zip"},
    };
    /* Path.suffix: from the last dot of the last component, not a leading dot, not a final one. */
    const char *name = strrchr(path, '/');
    name = name ? name + 1 : path;
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name || !dot[1])
        return "application/octet-stream";
    char suf[16];
    size_t n = strlen(dot);
    if (n >= sizeof(suf))
        return "application/octet-stream";
    for (size_t i = 0; i <= n; i++)
        suf[i] = dot[i] >= 'A' && dot[i] <= 'Z' ? (char)(dot[i] + 32) : dot[i];
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(suf, map[i][0]) == 0)
            return map[i][1];
    return "application/octet-stream";
}

/* Path errors of the artifact routes: 403 / 404 / other. Returns 1 when answered. */
static int art_path_error(struct atropos_fwork *fw, int r, const struct atropos_path *wp)
{
    if (r == -EXDEV || r == -ELOOP) {
        fw->status = 403;
        fw->resp = atropos_plain_fail(DENIED);
    } else if (r < 0) {
        fw->status = 500;
        fw->resp = atropos_plain_fail("%s", strerror(-r));
    } else if (wp->missing) {
        fw->status = 404;
        fw->resp = atropos_plain_fail("Not found: %s", fw->path);
    } else {
        return 0;
    }
    return 1;
}

void atropos_art_read(struct atropos_fwork *fw)
{
    struct atropos_path wp;
    int r = atropos_ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (art_path_error(fw, r, &wp))
        return;
    if (wp.type != 'f') {
        fw->status = 400;
        fw->resp = atropos_plain_fail("Not a file: %s", fw->path);
        return;
    }
    buf_t enc = BUF_INIT;
    json_t *ev = json_string(fw->encoding ? fw->encoding : "text");
    atropos_py_name(ev, "text", &enc);
    json_decref(ev);
    int b64 = strcmp(enc.data, "base64") == 0;
    if (!b64 && strcmp(enc.data, "text") != 0) {
        fw->status = 400;
        fw->resp = atropos_plain_fail("Unsupported encoding: %s", fw->encoding ? fw->encoding : "");
        buf_free(&enc);
        return;
    }
    struct stat st;
    int fd = fs_open_read(fw->root, wp.abs, &st);
    if (fd < 0) {
        fw->status = fd == -ENOENT ? 404 : fd == -EISDIR || fd == -EINVAL ? 400 : 500;
        fw->resp = fd == -ENOENT                    ? atropos_plain_fail("Not found: %s", fw->path)
                   : fd == -EISDIR || fd == -EINVAL ? atropos_plain_fail("Not a file: %s", fw->path)
                                                    : atropos_plain_fail("%s", strerror(-fd));
        buf_free(&enc);
        return;
    }
    size_t limit = (size_t)fw->max_bytes;
    buf_t data = BUF_INIT;
    r = atropos_read_upto(fd, &data, limit);
    close(fd);
    if (r < 0) {
        fw->status = 500;
        fw->resp = atropos_plain_fail("%s", strerror(-r));
        buf_free(&data);
        buf_free(&enc);
        return;
    }
    json_t *sha = json_null();
    if (fw->include_sha256) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        char hex[2 * EVP_MAX_MD_SIZE + 1];
        if (EVP_Digest(data.data, data.len, md, &mdlen, EVP_sha256(), NULL)) {
            for (unsigned i = 0; i < mdlen; i++)
                snprintf(hex + 2 * i, 3, "%02x", md[i]);
            json_decref(sha);
            sha = json_string(hex);
        }
    }
    json_t *content;
    if (b64) {
        char *s = util_base64_encode(data.data, data.len);
        content = s ? json_string(s) : NULL;
        free(s);
    } else {
        buf_t text = BUF_INIT;
        atropos_py_decode(&text, data.data, data.len, SIZE_MAX, NULL);
        content = json_stringn(text.data ? text.data : "", text.len);
        buf_free(&text);
    }
    fw->status = content ? 200 : 500;
    fw->resp = content
                   ? json_pack("{s:b, s:o, s:s, s:b, s:I, s:I, s:s, s:s, s:o}", "success", 1,
                               "content", content, "encoding", enc.data, "truncated",
                               (long long)st.st_size > fw->max_bytes, "bytes", (json_int_t)data.len,
                               "file_size", (json_int_t)st.st_size, "path", atropos_ws_rel(wp.abs),
                               "mime", mime_by_suffix(wp.abs), "sha256", sha)
                   : (json_decref(sha), atropos_plain_fail("out of memory"));
    buf_free(&data);
    buf_free(&enc);
}

/* One entry of a listing, with what ordering it like os.walk needs. */
struct litem {
    char *key;         /* relative to the listed directory, as listed */
    size_t parent_len; /* key[0..parent_len) is the parent ("" at the top) */
    const char *name;
    int dir;      /* a directory after following a symlink (os.walk's dirnames) */
    int real_dir; /* a directory that is not a symlink (walked into) */
    int visited;
    struct atropos_path wp; /* resolved */
};

static int parent_cmp(const struct litem *it, const char *parent, size_t plen)
{
    size_t n = it->parent_len < plen ? it->parent_len : plen;
    int c = memcmp(it->key, parent, n);
    if (c)
        return c;
    return it->parent_len < plen ? -1 : it->parent_len > plen;
}

static int litem_cmp(const void *x, const void *y)
{
    const struct litem *a = x, *b = y;
    int c = parent_cmp(a, b->key, b->parent_len);
    if (c)
        return c;
    if (a->dir != b->dir)
        return b->dir - a->dir;
    return strcmp(a->name, b->name);
}

static int litem_name_cmp(const void *x, const void *y)
{
    const struct litem *a = x, *b = y;
    return strcmp(a->name, b->name);
}

/* Appends, in os.walk order (sorted dirs, sorted files, then into each dir), the items below
 * `parent`. `items` is sorted with litem_cmp. */
static void walk_emit(struct litem *items, size_t n, const char *parent, size_t plen,
                      struct litem **order, size_t *k, int depth)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (parent_cmp(&items[mid], parent, plen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t end = lo;
    while (end < n && parent_cmp(&items[end], parent, plen) == 0)
        end++;
    for (size_t i = lo; i < end; i++) {
        items[i].visited = 1;
        order[(*k)++] = &items[i];
    }
    if (depth > 4096)
        return;
    for (size_t i = lo; i < end; i++)
        if (items[i].real_dir)
            walk_emit(items, n, items[i].key, strlen(items[i].key), order, k, depth + 1);
}

static void litems_free(struct litem *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++)
        free(items[i].key);
    free(items);
}

/* Lists the directory `wp` (resolved) and returns its entries in the reference's order: sorted
 * by name, or os.walk's order when recursive. Symlinks are resolved; those leading out of the
 * workspace (or nowhere) are left out. Returns 0 or -errno. */
static int list_dir(struct atropos_fwork *fw, const struct atropos_path *dir, int recursive,
                    size_t max, struct litem ***order_out, struct litem **items_out, size_t *n_out,
                    int *truncated)
{
    struct fs_entry *entries = NULL;
    size_t i, n = 0, total = 0;
    int r = fs_list(fw->root, dir->abs, recursive, max, &entries, &total, truncated);
    if (r < 0)
        return r;
    struct litem *items = calloc(total ? total : 1, sizeof(*items));
    struct litem **order = calloc(total ? total : 1, sizeof(*order));
    if (!items || !order) {
        free(items);
        free(order);
        fs_entries_free(entries, total);
        return -ENOMEM;
    }
    const char *base = atropos_ws_rel(dir->abs);
    for (i = 0; i < total; i++) {
        const struct fs_entry *e = &entries[i];
        if (atomic_load(&fw->cancelled))
            break;
        char *p = atropos_text_name(e->path);
        if (!p)
            continue;
        struct litem *it = &items[n];
        memset(it, 0, sizeof(*it));
        buf_t rel = BUF_INIT;
        if (strcmp(base, ".") != 0)
            buf_appendf(&rel, "%s/", base);
        buf_append_str(&rel, p);
        if (!rel.data) {
            free(p);
            continue;
        }
        if (e->type == FS_SYMLINK) {
            if (atropos_ws_resolve(fw->root, rel.data, rel.len, &it->wp) < 0 || it->wp.missing) {
                buf_free(&rel);
                free(p);
                continue;
            }
        } else {
            snprintf(it->wp.abs, sizeof(it->wp.abs), "/workspace/%s", rel.data);
            atropos_ws_fill(&it->wp, e);
            it->real_dir = it->wp.type == 'd';
        }
        buf_free(&rel);
        it->key = p;
        const char *slash = strrchr(it->key, '/');
        it->parent_len = slash ? (size_t)(slash - it->key) : 0;
        it->name = slash ? slash + 1 : it->key;
        it->dir = it->wp.type == 'd';
        n++;
    }
    fs_entries_free(entries, total);
    size_t k = 0;
    if (recursive) {
        qsort(items, n, sizeof(*items), litem_cmp);
        walk_emit(items, n, "", 0, order, &k, 0);
        for (i = 0; i < n; i++) /* not reachable from the top: keep them, last */
            if (!items[i].visited)
                order[k++] = &items[i];
    } else {
        qsort(items, n, sizeof(*items), litem_name_cmp);
        for (i = 0; i < n; i++)
            order[k++] = &items[i];
    }
    *order_out = order;
    *items_out = items;
    *n_out = n;
    return 0;
}

static json_t *list_entry(const struct atropos_path *wp)
{
    return json_pack("{s:s, s:b, s:I, s:f}", "path", atropos_ws_rel(wp->abs), "is_dir",
                     wp->type == 'd', "size", (json_int_t)wp->size, "mtime", wp->mtime);
}

void atropos_art_list(struct atropos_fwork *fw)
{
    struct atropos_path wp;
    int r = atropos_ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (art_path_error(fw, r, &wp))
        return;
    json_t *arr = json_array();
    int truncated = 0;
    if (wp.type == 'f') {
        json_array_append_new(arr, list_entry(&wp));
    } else if (wp.type != 'd') {
        json_decref(arr);
        fw->status = 400;
        fw->resp = atropos_plain_fail("Unsupported path type: %s", fw->path);
        return;
    } else {
        struct litem **order = NULL, *items = NULL;
        size_t n = 0, limit = (size_t)fw->max_entries;
        /* One more than the limit tells whether there was more. */
        r = list_dir(fw, &wp, fw->recursive, limit + 1, &order, &items, &n, &truncated);
        if (r < 0) {
            json_decref(arr);
            fw->status = 500;
            fw->resp = atropos_plain_fail("%s", strerror(-r));
            return;
        }
        for (size_t i = 0; i < n && i < limit; i++)
            json_array_append_new(arr, list_entry(&order[i]->wp));
        truncated = truncated || n > limit;
        free(order);
        litems_free(items, n);
    }
    fw->status = 200;
    fw->resp = json_pack("{s:b, s:o, s:b}", "success", 1, "entries", arr, "truncated", truncated);
}

struct arch_out {
    struct atropos_fwork *fw;
    buf_t data;
    size_t total;
    size_t limit;
};

static ssize_t arch_write(const void *data, size_t len, void *arg)
{
    struct arch_out *o = arg;
    if (atomic_load(&o->fw->cancelled))
        return -ECANCELED;
    o->total += len;
    /* Past the limit the size is all that is still needed (for the 413's "bytes"). */
    if (o->total <= o->limit) {
        if (buf_append(&o->data, data, len) < 0)
            return -ENOMEM;
    } else if (o->data.data) {
        buf_free(&o->data);
    }
    return (ssize_t)len;
}

/* Regular files only (symlinks to files inside the workspace under their target's name), named
 * relative to the workspace, at most max_entries of them; files that vanished or cannot be opened
 * are left out, as the reference does. */
void atropos_art_archive(struct atropos_fwork *fw)
{
    struct atropos_path wp;
    int r = atropos_ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (art_path_error(fw, r, &wp))
        return;
    struct arch_out out = {.fw = fw, .data = BUF_INIT, .limit = (size_t)fw->max_bytes};
    struct fs_archive *ar = NULL;
    size_t count = 0, limit = (size_t)fw->max_entries;
    struct litem **order = NULL, *items = NULL;
    size_t n = 0;
    /* No limits in the writer: the reference builds the whole archive and then reports its
     * size, so arch_write counts on past max_bytes. */
    r = fs_archive_new(fw->root, 0, 0, arch_write, &out, &ar);
    if (r == 0 && wp.type == 'f') {
        int a = fs_archive_add_file(ar, wp.abs, atropos_ws_rel(wp.abs));
        r = a < 0 ? a : 0;
        count += a > 0;
    } else if (r == 0 && wp.type == 'd') {
        int trunc = 0;
        r = list_dir(fw, &wp, 1, MAX_WALK_ENTRIES, &order, &items, &n, &trunc);
        for (size_t i = 0; r == 0 && i < n && count < limit; i++) {
            if (atomic_load(&fw->cancelled))
                break;
            if (order[i]->wp.type != 'f')
                continue;
            int a = fs_archive_add_file(ar, order[i]->wp.abs, atropos_ws_rel(order[i]->wp.abs));
            r = a < 0 ? a : 0;
            count += a > 0;
        }
    }
    if (ar) {
        int c = fs_archive_close(ar, NULL);
        r = r < 0 ? r : c;
    }
    if (r < 0) {
        fw->status = 500;
        fw->resp = atropos_plain_fail("Failed to create archive: %s", strerror(-r));
    } else if (out.total > out.limit) {
        fw->status = 413;
        fw->resp =
            atropos_plain_fail("Archive too large: %zu bytes (max %zu)", out.total, out.limit);
        json_object_set_new(fw->resp, "bytes", json_integer((json_int_t)out.total));
    } else {
        char *b64 = util_base64_encode(out.data.data ? out.data.data : "", out.data.len);
        fw->status = b64 ? 200 : 500;
        fw->resp = b64 ? json_pack("{s:b, s:s, s:s, s:s, s:I, s:I}", "success", 1, "content", b64,
                                   "encoding", "base64", "format", "tar.gz", "bytes",
                                   (json_int_t)out.data.len, "entry_count", (json_int_t)count)
                       : atropos_plain_fail("out of memory");
        free(b64);
    }
    buf_free(&out.data);
    free(order);
    litems_free(items, n);
}

void atropos_artifacts_start(struct atropos_job *job)
{
    json_t *b = job->body;
    enum atropos_fw_op op = job->kind == JOB_ART_READ   ? FW_ART_READ
                            : job->kind == JOB_ART_LIST ? FW_ART_LIST
                                                        : FW_ART_ARCHIVE;
    struct atropos_fwork *fw =
        atropos_fw_new(op, json_object_get(b, "path"), op == FW_ART_READ ? "" : ".");
    if (!fw) {
        atropos_job_finish(job, 500, atropos_plain_fail("out of memory"));
        return;
    }
    if (op == FW_ART_READ) {
        json_t *ev = json_object_get(b, "encoding");
        buf_t e = BUF_INIT;
        if (ev && !json_is_null(ev))
            atropos_py_str(ev, &e);
        else
            buf_append_str(&e, "text");
        fw->encoding = buf_steal(&e);
        fw->include_sha256 = atropos_py_truthy(json_object_get(b, "include_sha256"));
        fw->max_bytes = atropos_clamp_int(json_object_get(b, "max_bytes"), MAX_ARTIFACT_BYTES, 1,
                                          MAX_ARTIFACT_BYTES);
    } else if (op == FW_ART_LIST) {
        fw->recursive = atropos_py_truthy(json_object_get(b, "recursive"));
        fw->max_entries = atropos_clamp_int(json_object_get(b, "max_entries"), MAX_ARTIFACT_ENTRIES,
                                            1, MAX_ARTIFACT_ENTRIES);
    } else {
        fw->max_bytes = atropos_clamp_int(json_object_get(b, "max_bytes"), MAX_ARTIFACT_BYTES, 1,
                                          MAX_ARTIFACT_BYTES);
        fw->max_entries = atropos_clamp_int(json_object_get(b, "max_entries"), MAX_ARTIFACT_ENTRIES,
                                            1, MAX_ARTIFACT_ENTRIES);
    }
    atropos_fw_start(job, fw);
}
