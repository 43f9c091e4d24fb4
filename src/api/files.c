/*
 * files — the files API of a sandbox: GET/PUT/DELETE files (with ?stat=1 and Range), files/list,
 * GET/PUT archive (tar.gz).
 *
 * Every path is resolved inside the sandbox by the engine (through session/files.h), with the
 * sandbox root's credentials, on the thread pool. Data moves without buffering whole files:
 *  - single files: the fd opened by the files layer is read/written with uv_fs_read/uv_fs_write
 *    (thread pool) in 256 KiB pieces, paced by the HTTP output queue (downloads) or by pausing the
 *    request body while a write is in flight (uploads);
 *  - archives: files_archive_stream/files_extract_stream run libarchive on a thread-pool thread
 *    and exchange bytes with the loop through a pipe, whose blocking end on the worker side is
 *    the backpressure.
 * Uploads are limited to the sandbox's disk_mib (413); PUT writes atomically (temp file +
 * rename), so a failed upload leaves the old file.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/files.h"

#include "api/api.h"
#include "api/pipe.h"
#include "core/log.h"
#include "core/util.h"

#define CHUNK (256u << 10)
#define MAX_ARCHIVE_ENTRIES 100000

enum xfer_op { X_GET, X_STAT, X_PUT, X_DELETE, X_LIST, X_ARCHIVE_GET, X_ARCHIVE_PUT };

struct xfer {
    struct api_ctx *ctx;
    http_req_t *req;
    struct sandbox *sb; /* referenced by `files` */
    struct files *files;
    enum xfer_op op;
    char *path;
    /* options */
    int with_sha256, recursive, mkdirs;
    mode_t mode;
    size_t max_entries;
    uint64_t limit;
    /* worker results */
    int r;
    json_t *result;
    char err[256];
    int fd;
    struct stat st;
    struct fs_tmp tmp;
    size_t entries;
    /* transfer state */
    uv_fs_t fs;
    char *chunk;
    uint64_t offset, remaining, written;
    int busy;     /* a uv_fs request or the worker is running */
    int answered; /* the HTTP request was consumed */
    int body_ended;
    int body_err;
    buf_t pending; /* upload bytes not yet handed to a write */
    /* archives: streamed through a pipe to or from the worker (api/pipe.h) */
    struct api_pipe *pipe;
};

static void xfer_free(struct xfer *x)
{
    if (x->fd >= 0)
        close(x->fd);
    files_close(x->files);
    json_decref(x->result);
    buf_free(&x->pending);
    free(x->chunk);
    free(x->path);
    free(x);
}

/* Frees the transfer once nothing refers to it any more. */
static void xfer_maybe_free(struct xfer *x)
{
    if (x->busy || !x->answered)
        return;
    xfer_free(x);
}

/* ---- entries as JSON ------------------------------------------------------------------------ */

static const char *type_name(enum fs_type t)
{
    return t == FS_FILE ? "file" : t == FS_DIR ? "dir" : t == FS_SYMLINK ? "symlink" : "other";
}

/* o[key] = text; a name that is not UTF-8 (file names are bytes) is shown with U+FFFD for the
 * bad bytes, and o[key_b64] carries the exact bytes. */
static int set_text(json_t *o, const char *key, const char *text)
{
    size_t len = strlen(text);
    if (util_utf8_valid(text, len))
        return json_object_set_new(o, key, json_stringn(text, len));
    char *lossy = util_utf8_lossy(text, len), *b64 = util_base64_encode(text, len), k[64];
    snprintf(k, sizeof(k), "%s_b64", key);
    int bad = !lossy || !b64 || json_object_set_new(o, key, json_string(lossy)) ||
              json_object_set_new(o, k, json_string(b64));
    free(lossy);
    free(b64);
    return bad ? -1 : 0;
}

json_t *api_files_entry_json(const struct fs_entry *e)
{
    char mode[16], mtime[32];
    snprintf(mode, sizeof(mode), "%04o", (unsigned)(e->mode & 07777));
    util_format_time((double)e->mtime.tv_sec, mtime, sizeof(mtime));
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = set_text(o, "path", e->path);
    bad |= json_object_set_new(o, "type", json_string(type_name(e->type)));
    bad |= json_object_set_new(o, "size", json_integer((json_int_t)e->size));
    bad |= json_object_set_new(o, "mode", json_string(mode));
    bad |= json_object_set_new(o, "mtime", json_string(mtime));
    if (e->link_target)
        bad |= set_text(o, "link_target", e->link_target);
    if (e->sha256[0])
        bad |= json_object_set_new(o, "sha256", json_string(e->sha256));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Records a change (PUT and DELETE files, PUT archive) in the audit log; reads are not recorded.
 * Never the data: its path and size. */
static void xfer_audit(struct xfer *x, int status)
{
    char mode[16];
    json_t *o;
    switch (x->op) {
    case X_PUT:
        snprintf(mode, sizeof(mode), "%04o", (unsigned)x->mode);
        o = json_pack("{s:s, s:I, s:s, s:b}", "path", x->path, "bytes", (json_int_t)x->written,
                      "mode", mode, "mkdir", x->mkdirs);
        api_audit(x->ctx, x->req, "file.write", x->sb, status, o);
        break;
    case X_DELETE:
        o = json_pack("{s:s, s:b}", "path", x->path, "recursive", x->recursive);
        api_audit(x->ctx, x->req, "file.delete", x->sb, status, o);
        break;
    case X_ARCHIVE_PUT:
        o = json_pack("{s:s, s:I, s:I}", "path", x->path, "bytes", (json_int_t)x->written,
                      "entries", (json_int_t)x->entries);
        api_audit(x->ctx, x->req, "files.extract", x->sb, status, o);
        break;
    default:
        break;
    }
}

static void answer_error(struct xfer *x, int r, const char *detail)
{
    int status = api_errno_status(r);
    xfer_audit(x, status);
    const char *why = -r == EISDIR   ? "is a directory"
                      : -r == EINVAL ? "not a regular file, or an invalid path"
                      : -r == ELOOP  ? "refused (a /proc magic link or too many symlinks)"
                                     : strerror(-r);
    x->answered = 1;
    http_respond_error(x->req, status, api_status_code(status), "%s: %s", x->path,
                       detail && *detail ? detail : why);
}

static void answer_json(struct xfer *x, int status, json_t *o)
{
    x->answered = 1;
    http_respond_json(x->req, status, o);
}

/* ---- downloads: GET files ---------------------------------------------------------------- */

static void download_next(struct xfer *x);

static void on_download_drain(http_req_t *req, void *arg)
{
    download_next(arg);
}

/* The client left. A read in flight ends the transfer when it completes (its write fails);
 * otherwise the transfer was waiting for a drain that will never come: end it now. */
static void on_download_gone(http_req_t *req, void *arg)
{
    struct xfer *x = arg;
    if (x->busy || x->answered)
        return;
    x->answered = 1;
    http_respond_end(x->req);
    xfer_maybe_free(x);
}

static void on_read(uv_fs_t *fs)
{
    struct xfer *x = fs->data;
    ssize_t n = fs->result;
    uv_fs_req_cleanup(fs);
    x->busy = 0;
    if (n <= 0 || http_respond_write(x->req, x->chunk, (size_t)n) < 0) {
        if (n < 0)
            log_warn("files: reading %s: %s", x->path, strerror((int)-n));
        x->answered = 1;
        http_respond_end(x->req); /* short body: the client sees the truncation */
        xfer_maybe_free(x);
        return;
    }
    x->offset += (uint64_t)n;
    x->remaining -= (uint64_t)n;
    download_next(x);
}

static void download_next(struct xfer *x)
{
    if (x->busy || x->answered)
        return;
    if (x->remaining == 0 || http_req_gone(x->req)) {
        x->answered = 1;
        http_respond_end(x->req);
        xfer_maybe_free(x);
        return;
    }
    if (http_respond_buffered(x->req) >= HTTP_RESPOND_HIGH_WATER)
        return; /* the drain callback resumes */
    size_t want = x->remaining < CHUNK ? (size_t)x->remaining : CHUNK;
    uv_buf_t b = uv_buf_init(x->chunk, (unsigned)want);
    x->busy = 1;
    x->fs.data = x;
    if (uv_fs_read(x->ctx->reg->loop, &x->fs, x->fd, &b, 1, (int64_t)x->offset, on_read) < 0) {
        x->busy = 0;
        x->answered = 1;
        http_respond_end(x->req);
        xfer_maybe_free(x);
    }
}

/* Parses "bytes=a-b", "bytes=a-", "bytes=-n" against `size`. 0 ok, -1 unsatisfiable, -2 ignore
 * (malformed or several ranges: the whole file is sent, as RFC 9110 allows). */
static int parse_range(const char *h, uint64_t size, uint64_t *start, uint64_t *len)
{
    unsigned long long a = 0, b = 0;
    char *end;
    if (strncmp(h, "bytes=", 6) != 0 || strchr(h, ','))
        return -2;
    h += 6;
    if (*h == '-') {
        b = strtoull(h + 1, &end, 10);
        if (end == h + 1 || *end)
            return -2;
        if (b == 0)
            return -1;
        *start = b >= size ? 0 : size - b;
        *len = size - *start;
        return size ? 0 : -1;
    }
    a = strtoull(h, &end, 10);
    if (end == h || *end != '-')
        return -2;
    if (end[1]) {
        char *e2;
        b = strtoull(end + 1, &e2, 10);
        if (*e2 || b < a)
            return -2;
    } else {
        b = size ? size - 1 : 0;
    }
    if (a >= size)
        return -1;
    if (b >= size)
        b = size - 1;
    *start = a;
    *len = b - a + 1;
    return 0;
}

static void start_download(struct xfer *x)
{
    uint64_t size = (uint64_t)x->st.st_size, start = 0, len = size;
    const char *range = http_req_header(x->req, "Range");
    char hdr[256];
    int status = 200;
    int pr = range ? parse_range(range, size, &start, &len) : -2;
    if (pr == -1) {
        snprintf(hdr, sizeof(hdr), "Content-Range: bytes */%" PRIu64 "\r\n", size);
        x->answered = 1;
        json_t *e = json_pack("{s:{s:s, s:s}}", "error", "code", "range_not_satisfiable", "message",
                              "the requested range is outside the file");
        char *body = json_dumps(e, JSON_COMPACT);
        json_decref(e);
        http_respond(x->req, 416, "application/json", body, body ? strlen(body) : 0, hdr);
        free(body);
        xfer_maybe_free(x);
        return;
    }
    if (pr == 0) {
        status = 206;
        snprintf(hdr, sizeof(hdr),
                 "Accept-Ranges: bytes\r\nContent-Range: bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64
                 "\r\n",
                 start, start + len - 1, size);
    } else {
        snprintf(hdr, sizeof(hdr), "Accept-Ranges: bytes\r\n");
    }
    x->offset = start;
    x->remaining = len;
    if (!(x->chunk = malloc(CHUNK)) ||
        http_respond_start(x->req, status, "application/octet-stream", (int64_t)len, hdr) < 0 ||
        strcmp(http_req_method(x->req), "HEAD") == 0)
        x->remaining = 0;
    http_respond_on_drain(x->req, on_download_drain, x);
    http_req_set_abort_cb(x->req, on_download_gone, x);
    download_next(x);
}

/* ---- uploads: PUT files ------------------------------------------------------------------- */

static void upload_flush(struct xfer *x);

static void on_commit_done(void *arg)
{
    struct xfer *x = arg;
    x->busy = 0;
    if (!x->answered) {
        if (x->r < 0)
            answer_error(x, x->r, x->err);
        else {
            xfer_audit(x, 200);
            answer_json(x, 200,
                        json_pack("{s:s, s:I}", "path", x->path, "size", (json_int_t)x->written));
        }
    }
    xfer_maybe_free(x);
}

/* Commits the temporary file, or removes it after an error (on the thread pool: the engine
 * switches to the sandbox's credentials). */
static void commit_work(const struct fs_root *root, void *arg)
{
    struct xfer *x = arg;
    (void)root; /* x->tmp has it */
    if (x->r == 0 && x->body_err)
        x->r = x->body_err;
    if (x->r < 0)
        fs_abort(&x->tmp);
    else
        x->r = fs_commit(&x->tmp);
}

static void upload_finish(struct xfer *x)
{
    x->busy = 1;
    if (files_queue(x->files, commit_work, on_commit_done, x) < 0) {
        /* Cannot happen (nothing else is queued); the temporary file stays behind. */
        x->busy = 0;
        if (!x->answered)
            answer_error(x, -EIO, NULL);
        xfer_maybe_free(x);
    }
}

static void on_write(uv_fs_t *fs)
{
    struct xfer *x = fs->data;
    ssize_t n = fs->result;
    uv_fs_req_cleanup(fs);
    x->busy = 0;
    if (n < 0 && x->r == 0) {
        x->r = (int)n; /* e.g. -ENOSPC: the sandbox's disk is full */
        if (!x->body_ended && !x->answered) {
            /* Answer now instead of reading a body that cannot be stored: the server discards
             * the rest and no body callback follows, as for an upload over the limit. */
            answer_error(x, x->r, NULL);
            x->body_ended = 1;
        }
    } else if (n > 0) {
        x->written += (uint64_t)n;
    }
    if (!x->body_ended && !x->answered)
        http_req_body_pause(x->req, 0);
    upload_flush(x);
}

/* Hands the pending bytes to one write at a time; finishes once the body has ended. */
static void upload_flush(struct xfer *x)
{
    if (x->busy)
        return;
    if (x->pending.len && x->r == 0 && (x->pending.len >= CHUNK || x->body_ended)) {
        /* Move the pending bytes into the write buffer: uv_fs_write needs them to stay put. */
        size_t n = x->pending.len < CHUNK ? x->pending.len : CHUNK;
        memcpy(x->chunk, x->pending.data, n);
        buf_consume(&x->pending, n);
        uv_buf_t b = uv_buf_init(x->chunk, (unsigned)n);
        x->busy = 1;
        x->fs.data = x;
        if (uv_fs_write(x->ctx->reg->loop, &x->fs, x->tmp.fd, &b, 1, -1, on_write) < 0) {
            x->busy = 0;
            x->r = -EIO;
        } else {
            return;
        }
    }
    if (x->body_ended && (x->pending.len == 0 || x->r < 0))
        upload_finish(x);
}

static void on_upload_data(http_req_t *req, const char *data, size_t len, void *arg)
{
    struct xfer *x = arg;
    if (x->r < 0)
        return; /* a write failed: drop the rest, report at the end */
    if (x->written + x->pending.len + len > x->limit) {
        /* Answer now (the server discards the rest of the body); no body callback follows, so
         * the temporary file is removed from here. */
        x->r = -EFBIG;
        snprintf(x->err, sizeof(x->err), "larger than the sandbox's disk limit (%" PRIu64 " bytes)",
                 x->limit);
        answer_error(x, x->r, x->err);
        x->body_ended = 1;
        upload_flush(x);
        return;
    }
    buf_append(&x->pending, data, len);
    if (x->pending.len >= 4 * CHUNK)
        http_req_body_pause(req, 1); /* resumed when a write completes */
    upload_flush(x);
}

static void on_upload_end(http_req_t *req, int err, void *arg)
{
    struct xfer *x = arg;
    x->body_ended = 1;
    if (err < 0)
        x->body_err = err;
    upload_flush(x);
}

/* ---- archives ------------------------------------------------------------------------------ */

/* The archive's pipe is done: with nothing sent, the answer is ours to give. */
static void on_archive_sent(void *arg, int r, int started, uint64_t bytes, int body_err)
{
    struct xfer *x = arg;
    (void)body_err;
    x->written = bytes;
    if (!started && r < 0) {
        answer_error(x, r, x->err);
    } else if (!started) { /* nothing was produced (cannot happen with gzip, which has a header) */
        x->answered = 1;
        http_respond(x->req, 200, "application/gzip", "", 0, NULL);
    } else {
        if (r < 0)
            log_warn("files: archive of %s failed after %" PRIu64 " bytes: %s", x->path, bytes,
                     strerror(-r));
        x->answered = 1; /* the pipe ended the response */
    }
    xfer_maybe_free(x);
}

static void on_archive_created(int r, size_t entries, const char *err, void *arg)
{
    struct xfer *x = arg;
    x->entries = entries;
    snprintf(x->err, sizeof(x->err), "%s", err ? err : "");
    x->busy = 0;
    api_pipe_worker_done(x->pipe, r);
}

static void on_extract_end(void *arg, int r, int started, uint64_t bytes, int body_err)
{
    struct xfer *x = arg;
    (void)started;
    x->written = bytes; /* received, for the audit log */
    if (body_err && r == 0)
        r = body_err;
    if (r < 0) {
        answer_error(x, r, x->err);
    } else {
        xfer_audit(x, 200);
        answer_json(x, 200,
                    json_pack("{s:s, s:I}", "path", x->path, "entries", (json_int_t)x->entries));
    }
    xfer_maybe_free(x);
}

static void on_extracted(int r, size_t entries, const char *err, void *arg)
{
    struct xfer *x = arg;
    x->entries = entries;
    snprintf(x->err, sizeof(x->err), "%s", err ? err : "");
    x->busy = 0;
    api_pipe_worker_done(x->pipe, r);
}

/* ---- the first step of every operation, on the thread pool ---------------------------------- */

/* The entries of a listing as a JSON array (a new reference), or NULL on ENOMEM. */
static json_t *entries_json(const struct fs_entry *v, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        json_t *e = api_files_entry_json(&v[i]);
        if (!e || json_array_append_new(arr, e) < 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

/* The JSON is built here too, off the loop: a listing may have a million entries. */
static void first_work(const struct fs_root *root, void *arg)
{
    struct xfer *x = arg;
    switch (x->op) {
    case X_GET:
        x->r = x->fd = fs_open_read(root, x->path, &x->st);
        if (x->fd < 0)
            x->fd = -1;
        else
            x->r = 0;
        break;
    case X_STAT: {
        struct fs_entry e;
        x->r = fs_stat(root, x->path, x->with_sha256, &e);
        if (x->r == 0 && !(x->result = api_files_entry_json(&e)))
            x->r = -ENOMEM;
        fs_entry_free(&e);
        break;
    }
    case X_PUT:
        x->r = fs_open_write(root, x->path, x->mode, x->mkdirs, &x->tmp);
        break;
    case X_DELETE:
        x->r = fs_remove(root, x->path, x->recursive);
        break;
    case X_LIST: {
        int truncated = 0;
        struct fs_entry *v = NULL;
        size_t n = 0;
        x->r = fs_list(root, x->path, x->recursive, x->max_entries, &v, &n, &truncated);
        if (x->r == 0) {
            json_t *entries = entries_json(v, n);
            if (!entries)
                x->r = -ENOMEM;
            else
                x->result = json_pack("{s:s, s:o, s:b}", "path", x->path, "entries", entries,
                                      "truncated", truncated);
        }
        fs_entries_free(v, n);
        break;
    }
    default:
        break;
    }
}

static void after_first(void *arg)
{
    struct xfer *x = arg;
    x->busy = 0;
    if (x->r < 0) {
        answer_error(x, x->r, NULL);
        xfer_maybe_free(x);
        return;
    }
    switch (x->op) {
    case X_GET:
        start_download(x);
        return;
    case X_STAT:
    case X_LIST:
        answer_json(x, 200, json_incref(x->result));
        break;
    case X_DELETE:
        xfer_audit(x, 204);
        x->answered = 1;
        http_respond(x->req, 204, NULL, NULL, 0, NULL);
        break;
    case X_PUT:
        if (!(x->chunk = malloc(CHUNK))) {
            x->r = -ENOMEM;
            x->body_ended = 1;
            upload_finish(x);
            return;
        }
        http_req_body_start(x->req, on_upload_data, on_upload_end, x);
        return;
    default:
        break;
    }
    xfer_maybe_free(x);
}

/* ---- request parsing ------------------------------------------------------------------------ */

static struct xfer *xfer_new(struct api_ctx *ctx, http_req_t *req, const struct route_params *p,
                             const char *const *params, enum xfer_op op)
{
    if (api_check_query(req, params) < 0)
        return NULL;
    struct sandbox *sb = api_find_sandbox(ctx, req, p);
    if (!sb)
        return NULL;
    const char *path = http_req_query(req, "path");
    if (op == X_ARCHIVE_GET || op == X_ARCHIVE_PUT || op == X_LIST)
        path = path ? path : "/workspace";
    if (!path || !*path) {
        http_respond_error(req, 400, "bad_request", "the 'path' query parameter is required");
        return NULL;
    }
    if (sb->state != SB_RUNNING && sb->state != SB_PAUSED) {
        int r = sandbox_unavailable(sb);
        http_respond_error(req, 409, api_errno_code(r), "the sandbox is %s",
                           sandbox_state_name(sb->state));
        return NULL;
    }
    struct xfer *x = calloc(1, sizeof(*x));
    if (!x || !(x->path = strdup(path))) {
        free(x);
        http_respond_error(req, 500, "internal", "out of memory");
        return NULL;
    }
    x->ctx = ctx;
    x->req = req;
    x->sb = sb;
    x->op = op;
    x->fd = -1;
    x->limit = sb->res.disk_mib << 20;
    x->mode = 0644;
    buf_init(&x->pending);
    int r = files_open(sb, &x->files);
    if (r < 0) {
        answer_error(x, r, "cannot reach the sandbox's file system");
        xfer_maybe_free(x);
        return NULL;
    }
    return x;
}

static int flag(http_req_t *req, const char *name)
{
    const char *v = http_req_query(req, name);
    return v && strcmp(v, "0") != 0 && strcmp(v, "false") != 0;
}

static void queue_first(struct xfer *x)
{
    int r = files_queue(x->files, first_work, after_first, x);
    if (r < 0) {
        answer_error(x, r, NULL);
        xfer_maybe_free(x);
        return;
    }
    x->busy = 1;
}

void api_files_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"path", "stat", "sha256", NULL};
    struct xfer *x = xfer_new(ctx, req, p, params, X_GET);
    if (!x)
        return;
    if (flag(req, "stat")) {
        x->op = X_STAT;
        x->with_sha256 = flag(req, "sha256");
    }
    queue_first(x);
}

void api_files_put(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"path", "mode", "mkdir", NULL};
    struct xfer *x = xfer_new(ctx, req, p, params, X_PUT);
    if (!x)
        return;
    const char *mode = http_req_query(req, "mode");
    char *end;
    x->mkdirs = flag(req, "mkdir");
    if (mode) {
        unsigned long m = strtoul(mode, &end, 8);
        if (!*mode || *end || m > 07777) {
            answer_error(x, -EINVAL, "'mode' must be an octal file mode such as 0644");
            xfer_maybe_free(x);
            return;
        }
        x->mode = (mode_t)m;
    }
    int64_t cl = http_req_content_length(req);
    if (cl > 0 && (uint64_t)cl > x->limit) {
        char msg[128];
        snprintf(msg, sizeof(msg), "larger than the sandbox's disk limit (%" PRIu64 " bytes)",
                 x->limit);
        answer_error(x, -EFBIG, msg);
        xfer_maybe_free(x);
        return;
    }
    queue_first(x);
}

void api_files_delete(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"path", "recursive", NULL};
    struct xfer *x = xfer_new(ctx, req, p, params, X_DELETE);
    if (!x)
        return;
    x->recursive = flag(req, "recursive");
    queue_first(x);
}

void api_files_list(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"path", "recursive", "max_entries", NULL};
    struct xfer *x = xfer_new(ctx, req, p, params, X_LIST);
    if (!x)
        return;
    x->recursive = flag(req, "recursive");
    x->max_entries = 10000;
    const char *m = http_req_query(req, "max_entries");
    if (m) {
        char *end;
        unsigned long long v = strtoull(m, &end, 10);
        if (!*m || *end || v == 0 || v > 1000000) {
            answer_error(x, -EINVAL, "'max_entries' must be 1..1000000");
            xfer_maybe_free(x);
            return;
        }
        x->max_entries = (size_t)v;
    }
    queue_first(x);
}

void api_archive_get(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"path", NULL};
    struct xfer *x = xfer_new(ctx, req, p, params, X_ARCHIVE_GET);
    int fd;
    if (!x)
        return;
    if (files_archive_stream(x->files, x->path, &fd, on_archive_created, x) < 0) {
        answer_error(x, -ENOMEM, NULL);
        xfer_maybe_free(x);
        return;
    }
    x->busy = 1;
    if (api_pipe_send(ctx->reg->loop, req, fd, "application/gzip", on_archive_sent, x, &x->pipe) <
        0)
        abort(); /* only ENOMEM, and the worker holds x: nothing sane is left to do */
}

void api_archive_put(struct api_ctx *ctx, http_req_t *req, const struct route_params *p)
{
    static const char *const params[] = {"path", NULL};
    struct xfer *x = xfer_new(ctx, req, p, params, X_ARCHIVE_PUT);
    int fd;
    if (!x)
        return;
    if (files_extract_stream(x->files, x->path, x->limit, MAX_ARCHIVE_ENTRIES, &fd, on_extracted,
                             x) < 0) {
        answer_error(x, -ENOMEM, NULL);
        xfer_maybe_free(x);
        return;
    }
    x->busy = 1;
    if (api_pipe_receive(ctx->reg->loop, req, fd, on_extract_end, x, &x->pipe) < 0)
        abort();
}
