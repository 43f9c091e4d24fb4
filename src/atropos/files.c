/*
 * files — the file work of the atropos tools, on the thread pool (session/files.h): paths
 * resolved inside the workspace, read_file, write_file and the workspace reset of /reset.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atropos/atropos_internal.h"
#include "core/util.h"

#define MAX_FILE_SIZE 100000
#define MAX_SYMLINKS 40

/* A name from the file system as the reference can name it: bytes that are not UTF-8 become
 * U+FFFD (such files stay out of reach, as they are for the reference). malloc'd, or NULL. */
char *atropos_text_name(const char *s)
{
    size_t n = strlen(s);
    return util_utf8_valid(s, n) ? strdup(s) : util_utf8_lossy(s, n);
}

/* mtime in whole seconds: the reference reports what a second-precision stat gives. */
void atropos_ws_fill(struct atropos_path *wp, const struct fs_entry *e)
{
    wp->type = e->type == FS_FILE ? 'f' : e->type == FS_DIR ? 'd' : 'o';
    wp->size = (long long)e->size;
    wp->mtime = (double)e->mtime.tv_sec;
    wp->mode = (unsigned)e->mode & 07777;
}

/* True when a relative path climbs above its start by `..` alone. */
static int lexically_escapes(const char *rel)
{
    long depth = 0;
    for (const char *p = rel; *p;) {
        const char *c = p;
        while (*p && *p != '/')
            p++;
        size_t n = (size_t)(p - c);
        if (*p)
            p++;
        if (n == 0 || (n == 1 && c[0] == '.'))
            continue;
        if (n == 2 && c[0] == '.' && c[1] == '.') {
            if (--depth < 0)
                return 1;
        } else {
            depth++;
        }
    }
    return 0;
}

/*
 * Resolves `rel` (relative to /workspace) as realpath(3) would inside the sandbox and checks
 * that the result is /workspace or below it. How, and why this way:
 *  - absolute paths, and paths whose `..` climb above the workspace lexically, are refused
 *    before anything is looked at;
 *  - then every component is looked at with fs_stat() (no final-symlink following), from
 *    the sandbox's "/" on, so /workspace itself is checked too; a symlink's target is spliced
 *    into the rest of the path (an absolute target restarts at the sandbox's "/"), and `..`
 *    removes the last resolved component — the kernel's semantics, not a textual clean-up;
 *  - the result must lie under /workspace: a link that leaves it (even to another place of the
 *    same sandbox, e.g. /etc) is refused; links that stay inside work.
 * The files layer resolves every later access with RESOLVE_IN_ROOT, so even if the sandbox swaps
 * a component for a symlink between this check and the access, the access cannot leave the
 * sandbox: at worst it reads or writes the sandbox's own files, which the sandbox can anyway.
 * Returns 0, -EXDEV (outside), -ELOOP, -ENAMETOOLONG or another -errno from the files layer.
 */
int atropos_ws_resolve(const struct fs_root *root, const char *rel, size_t rel_len,
                       struct atropos_path *wp)
{
    memset(wp, 0, sizeof(*wp));
    if (strlen(rel) != rel_len || rel[0] == '/' || lexically_escapes(rel))
        return -EXDEV;
    buf_t pend = BUF_INIT;
    if (buf_appendf(&pend, "workspace/%s", rel) < 0)
        return -ENOMEM;
    char *res = wp->abs;
    size_t rlen = 0, missing_at = 0, pos = 0;
    int links = 0, r = 0;
    res[0] = '\0';
    while (pos < pend.len) {
        const char *c = pend.data + pos;
        size_t n = 0;
        while (pos + n < pend.len && c[n] != '/')
            n++;
        pos += n + (pos + n < pend.len);
        if (n == 0 || (n == 1 && c[0] == '.'))
            continue;
        if (n == 2 && c[0] == '.' && c[1] == '.') {
            while (rlen > 0 && res[rlen - 1] != '/')
                rlen--;
            if (rlen > 0)
                rlen--;
            res[rlen] = '\0';
            if (wp->missing && rlen <= missing_at)
                wp->missing = 0;
            continue;
        }
        if (rlen + 1 + n >= sizeof(wp->abs)) {
            r = -ENAMETOOLONG;
            goto out;
        }
        size_t before = rlen;
        res[rlen++] = '/';
        memcpy(res + rlen, c, n);
        rlen += n;
        res[rlen] = '\0';
        if (wp->missing)
            continue;
        struct fs_entry st;
        r = fs_stat(root, res, 0, &st);
        if (r == -ENOENT || r == -ENOTDIR) {
            /* As realpath without strict: the rest is taken as it is written. */
            wp->missing = 1;
            missing_at = before;
            r = 0;
            continue;
        }
        if (r < 0)
            goto out;
        if (st.type == FS_SYMLINK) {
            char *target = st.link_target ? atropos_text_name(st.link_target) : NULL;
            fs_entry_free(&st);
            if (++links > MAX_SYMLINKS || !target) {
                free(target);
                r = -ELOOP;
                goto out;
            }
            int absolute = target[0] == '/';
            buf_t np = BUF_INIT;
            buf_append_str(&np, target);
            buf_append_str(&np, "/");
            buf_append(&np, pend.data + pos, pend.len - pos);
            free(target);
            if (!np.data) {
                r = -ENOMEM;
                goto out;
            }
            buf_free(&pend);
            pend = np;
            pos = 0;
            rlen = absolute ? 0 : before;
            res[rlen] = '\0';
            continue;
        }
        fs_entry_free(&st);
    }
    if (rlen == 0) {
        res[0] = '/';
        res[1] = '\0';
    }
    if (strcmp(res, "/workspace") != 0 && strncmp(res, "/workspace/", 11) != 0) {
        r = -EXDEV;
        goto out;
    }
    if (!wp->missing) {
        struct fs_entry st;
        r = fs_stat(root, res, 0, &st);
        if (r == -ENOENT || r == -ENOTDIR) {
            wp->missing = 1;
            r = 0;
        } else if (r == 0) {
            atropos_ws_fill(wp, &st);
            fs_entry_free(&st);
        }
    }
out:
    buf_free(&pend);
    return r;
}

/* The path relative to /workspace ("." for the workspace itself). */
const char *atropos_ws_rel(const char *abs)
{
    return strcmp(abs, "/workspace") == 0 ? "." : abs + 11;
}

/* Reads up to `max` bytes of an open file. */
int atropos_read_upto(int fd, buf_t *out, size_t max)
{
    char chunk[65536];
    while (out->len < max) {
        size_t want = max - out->len < sizeof(chunk) ? max - out->len : sizeof(chunk);
        ssize_t n = read(fd, chunk, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        if (buf_append(out, chunk, (size_t)n) < 0)
            return -ENOMEM;
    }
    if (!out->data)
        buf_append(out, "", 0);
    return 0;
}

static void fw_read_file(struct atropos_fwork *fw)
{
    struct atropos_path wp;
    int r = atropos_ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (r == -EXDEV || r == -ELOOP) {
        fw->resp = atropos_fail(DENIED);
        return;
    }
    if (r < 0) {
        fw->resp = atropos_fail("Failed to read file: %s", strerror(-r));
        return;
    }
    if (wp.missing) {
        fw->resp = atropos_fail("File not found: %s", fw->path);
        return;
    }
    if (wp.type != 'f') {
        fw->resp = atropos_fail("Not a file: %s", fw->path);
        return;
    }
    if (wp.size > MAX_FILE_SIZE) {
        fw->resp = atropos_fail("File too large: %lld bytes (max %d)", wp.size, MAX_FILE_SIZE);
        return;
    }
    struct stat st;
    int fd = fs_open_read(fw->root, wp.abs, &st);
    if (fd < 0) {
        fw->resp = fd == -ENOENT ? atropos_fail("File not found: %s", fw->path)
                   : fd == -EISDIR || fd == -EINVAL
                       ? atropos_fail("Not a file: %s", fw->path)
                       : atropos_fail("Failed to read file: %s", strerror(-fd));
        return;
    }
    if (st.st_size > MAX_FILE_SIZE) {
        close(fd);
        fw->resp = atropos_fail("File too large: %lld bytes (max %d)", (long long)st.st_size,
                                MAX_FILE_SIZE);
        return;
    }
    buf_t data = BUF_INIT, text = BUF_INIT;
    r = atropos_read_upto(fd, &data, MAX_FILE_SIZE);
    close(fd);
    if (r < 0) {
        buf_free(&data);
        fw->resp = atropos_fail("Failed to read file: %s", strerror(-r));
        return;
    }
    atropos_py_decode(&text, data.data, data.len, SIZE_MAX, NULL);
    fw->resp =
        atropos_resp(1, text.data ? text.data : "", text.len, "",
                     json_pack("{s:s, s:I}", "path", wp.abs, "size", (json_int_t)st.st_size));
    buf_free(&data);
    buf_free(&text);
}

static void fw_write_file(struct atropos_fwork *fw)
{
    struct atropos_path wp;
    int r = atropos_ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (r == -EXDEV || r == -ELOOP) {
        fw->resp = atropos_fail(DENIED);
        return;
    }
    if (r == 0 && !wp.missing && wp.type == 'd')
        r = -EISDIR;
    struct fs_tmp tmp;
    /* An existing file keeps its mode, as when it is rewritten in place. */
    unsigned mode = !wp.missing && wp.type == 'f' ? wp.mode : 0644;
    if (r == 0)
        r = fs_open_write(fw->root, wp.abs, mode, 1, &tmp);
    if (r == 0) {
        size_t off = 0;
        while (off < fw->content_len) {
            ssize_t n = write(tmp.fd, fw->content + off, fw->content_len - off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                r = -errno;
                break;
            }
            off += (size_t)n;
        }
        if (r == 0)
            r = fs_commit(&tmp);
        else
            fs_abort(&tmp);
    }
    if (r < 0) {
        fw->resp = atropos_fail("Failed to write file: [Errno %d] %s: '%s'", -r, strerror(-r),
                                wp.abs[0] ? wp.abs : fw->path);
        return;
    }
    buf_t out = BUF_INIT;
    buf_appendf(&out, "Successfully wrote %zu bytes to %s", fw->content_chars, fw->path);
    fw->resp = atropos_resp(
        1, out.data, out.len, "",
        json_pack("{s:s, s:I}", "path", wp.abs, "size", (json_int_t)fw->content_chars));
    buf_free(&out);
}

/* Empties /workspace: fs_remove() of the tree removes every entry by fd (whatever its name
 * is, even bytes that are not UTF-8, which a listing could not return), then fails to remove
 * /workspace itself with EBUSY because it is a mount point. Were it a plain directory, it is
 * created again. */
static void fw_reset(struct atropos_fwork *fw)
{
    int r = fs_remove(fw->root, "/workspace", 1);
    if (r == 0)
        r = fs_mkdir(fw->root, "/workspace", 0);
    else if (r == -EBUSY)
        r = 0;
    if (r < 0) {
        fw->resp = atropos_fail("Failed to reset workspace: %s", strerror(-r));
        return;
    }
    buf_t out = BUF_INIT;
    buf_appendf(&out, "Reset workspace for %s", fw->slot_name);
    fw->resp = atropos_resp(1, out.data, out.len, "", NULL);
    buf_free(&out);
}

static void fw_run(const struct fs_root *root, void *arg)
{
    struct atropos_fwork *fw = arg;
    fw->root = root;
    fw->status = 200;
    switch (fw->op) {
    case FW_READ_FILE:
        fw_read_file(fw);
        break;
    case FW_WRITE_FILE:
        fw_write_file(fw);
        break;
    case FW_RESET:
        fw_reset(fw);
        break;
    case FW_ART_READ:
        atropos_art_read(fw);
        break;
    case FW_ART_LIST:
        atropos_art_list(fw);
        break;
    case FW_ART_ARCHIVE:
        atropos_art_archive(fw);
        break;
    }
}

void atropos_fw_cancel(struct atropos_fwork *fw)
{
    atomic_store(&fw->cancelled, 1);
}

static void fw_free(struct atropos_fwork *fw)
{
    free(fw->path);
    free(fw->content);
    free(fw->encoding);
    free(fw);
}

/* The answer when the work could not even start. */
static json_t *fw_fail_resp(const struct atropos_fwork *fw, int *status, const char *why)
{
    *status = 200;
    switch (fw->op) {
    case FW_READ_FILE:
        return atropos_fail("Failed to read file: %s", why);
    case FW_WRITE_FILE:
        return atropos_fail("Failed to write file: %s", why);
    case FW_RESET:
        return atropos_fail("Failed to reset workspace: %s", why);
    default:
        *status = 500;
        return atropos_plain_fail("%s", why);
    }
}

static void fw_after(void *arg)
{
    struct atropos_fwork *fw = arg;
    struct atropos_job *job = fw->job;
    int st = fw->status;
    json_t *resp = fw->resp;
    job->fw = NULL;
    if (!resp)
        resp = fw_fail_resp(fw, &st, "out of memory");
    fw_free(fw);
    atropos_job_finish(job, st, resp);
}

void atropos_fw_start(struct atropos_job *job, struct atropos_fwork *fw)
{
    struct atropos_slot *s = job->slot;
    int st;
    snprintf(fw->slot_name, sizeof(fw->slot_name), "%s", s->name);
    atomic_init(&fw->cancelled, 0);
    fw->job = job;
    int r = files_run(s->sb, fw_run, fw_after, fw);
    if (r < 0) {
        json_t *resp = fw_fail_resp(fw, &st, strerror(-r));
        fw_free(fw);
        atropos_job_finish(job, st, resp);
        return;
    }
    job->fw = fw;
}

struct atropos_fwork *atropos_fw_new(enum atropos_fw_op op, json_t *path, const char *def)
{
    struct atropos_fwork *fw = calloc(1, sizeof(*fw));
    if (!fw)
        return NULL;
    fw->op = op;
    /* A path that is not a string cannot name anything in the workspace: like the reference
     * (whose path handling raises and answers "Access denied"), it resolves to nothing. */
    if (!path || json_is_null(path)) {
        fw->path = strdup(def);
        fw->path_len = strlen(def);
    } else if (json_is_string(path)) {
        fw->path = malloc(json_string_length(path) + 1);
        if (fw->path) {
            memcpy(fw->path, json_string_value(path), json_string_length(path) + 1);
            fw->path_len = json_string_length(path);
        }
    } else {
        buf_t b = BUF_INIT;
        buf_append_str(&b, "/");
        atropos_py_str(path, &b);
        fw->path = buf_steal(&b);
        fw->path_len = fw->path ? strlen(fw->path) : 0;
    }
    if (!fw->path) {
        free(fw);
        return NULL;
    }
    return fw;
}

void atropos_tool_file(struct atropos_job *job, json_t *args, int write)
{
    struct atropos_fwork *fw =
        atropos_fw_new(write ? FW_WRITE_FILE : FW_READ_FILE, json_object_get(args, "path"), "");
    if (!fw) {
        atropos_job_finish(job, 200, atropos_fail("out of memory"));
        return;
    }
    if (write) {
        json_t *cv = json_object_get(args, "content");
        if (cv && !json_is_null(cv) && !json_is_string(cv)) {
            fw_free(fw);
            atropos_job_finish(job, 200,
                               atropos_fail("Failed to write file: 'content' must be a string"));
            return;
        }
        const char *c = json_is_string(cv) ? json_string_value(cv) : "";
        fw->content_len = json_is_string(cv) ? json_string_length(cv) : 0;
        fw->content_chars = atropos_utf8_chars(c, fw->content_len);
        if (fw->content_chars > MAX_FILE_SIZE) {
            atropos_job_finish(job, 200,
                               atropos_fail("Content too large: %zu bytes (max %d)",
                                            fw->content_chars, MAX_FILE_SIZE));
            fw_free(fw);
            return;
        }
        if (!(fw->content = malloc(fw->content_len + 1))) {
            fw_free(fw);
            atropos_job_finish(job, 200, atropos_fail("out of memory"));
            return;
        }
        memcpy(fw->content, c, fw->content_len + 1);
    }
    atropos_fw_start(job, fw);
}

void atropos_reset_workspace(struct atropos_job *job)
{
    struct atropos_fwork *fw = atropos_fw_new(FW_RESET, NULL, "");
    if (!fw) {
        atropos_job_finish(job, 200, atropos_fail("out of memory"));
        return;
    }
    atropos_fw_start(job, fw);
}
