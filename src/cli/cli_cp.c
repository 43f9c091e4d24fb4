/*
 * cli_cp — `warren cp`: copy files and directories between the local machine and a sandbox, with
 * the semantics of `docker cp` (see the help text in cli.c), over the files API (docs/API.md,
 * "Files"):
 *   - local file -> sandbox:  PUT files?path=..&mode=.. with the file streamed from disk
 *                             (Content-Length, Expect: 100-continue);
 *   - local dir  -> sandbox:  `tar -czf - -C ...` as a child process, its stdout streamed as a
 *                             chunked PUT archive?path=..;
 *   - sandbox file -> local:  GET files?path=.. streamed into a temporary file next to the
 *                             target, renamed over it once complete (a failed or interrupted copy
 *                             leaves nothing);
 *   - sandbox dir  -> local:  GET archive?path=.. streamed into `tar -xzf - -C ...`;
 *   - "-" as the local side:  a tar (or tar.gz) read from stdin is extracted into the sandbox
 *                             directory; a tar.gz of the sandbox path is written to stdout.
 * The sandbox side is looked at first with ?stat=1 to pick the target (into an existing
 * directory, or as the new name). Nothing is held in memory: the client streams in 256 KiB
 * pieces. A progress bar is drawn on stderr when it is a terminal and the transfer is over 4 MiB.
 *
 * Signals: SIGINT/SIGTERM/SIGHUP cancel the transfer (the client's waits watch them), remove the
 * temporary file, stop the tar child, and the exit status is 128+N.
 */
#include "cli/cli_internal.h"
#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum cp_out { CP_OUT_FILE, CP_OUT_TAR, CP_OUT_STDOUT };

struct cp {
    struct client c;
    struct cli_sigstate sig;
    const char *sandbox;
    struct cli_progress prog;
    /* upload source */
    int in_fd;
    const char *in_name; /* for messages */
    /* download target */
    enum cp_out out;
    int out_fd;
    char *out_dir;    /* CP_OUT_FILE: directory of the target; CP_OUT_TAR: where to extract */
    char *out_target; /* CP_OUT_FILE: the final path */
    char *tmp_path;   /* CP_OUT_FILE: the temporary file while it exists */
    mode_t out_mode;  /* CP_OUT_FILE: mode of the new file */
    int strip;        /* CP_OUT_TAR: --strip-components */
    /* the tar child, if any */
    pid_t child;
    char err[1024]; /* a local failure found in a callback, reported after the request */
};

/* ---- paths -------------------------------------------------------------------------------- */

/* "SANDBOX:PATH"? A local path with a ':' can be written ./a:b or /abs/a:b (as with docker). */
static bool cp_is_remote(const char *arg)
{
    const char *colon = strchr(arg, ':');
    if (!colon || colon == arg || arg[0] == '/' || arg[0] == '.')
        return false;
    for (const char *p = arg; p < colon; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '-'))
            return false;
    return true;
}

/* The sandbox path of "SANDBOX:PATH": relative paths (and an empty one) start at /workspace. */
static char *cp_remote_path(const char *rest)
{
    char *out = NULL;
    if (!*rest)
        return strdup("/workspace");
    if (rest[0] == '/')
        return strdup(rest);
    return asprintf(&out, "/workspace/%s", rest) < 0 ? NULL : out;
}

static bool cp_ends_with_slash(const char *p)
{
    size_t n = strlen(p);
    return n > 1 && p[n - 1] == '/';
}

/* Ends in "/." (or is "."): docker's "copy the contents of the directory". */
static bool cp_ends_with_dot(const char *p)
{
    size_t n = strlen(p);
    return strcmp(p, ".") == 0 || (n >= 2 && p[n - 1] == '.' && p[n - 2] == '/');
}

/* A copy of `p` without trailing "/" and "/." ("/" stays "/"). */
static char *cp_strip(const char *p)
{
    char *s = strdup(p);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    for (;;) {
        if (n > 1 && s[n - 1] == '/')
            s[--n] = '\0';
        else if (n > 2 && s[n - 1] == '.' && s[n - 2] == '/')
            s[n -= 2] = '\0';
        else
            break;
    }
    if (n == 0)
        strcpy(s, ".");
    return s;
}

/* Last component of a stripped path ("" for "/"). Points into `p`. */
static const char *cp_base(const char *p)
{
    const char *slash = strrchr(p, '/');
    return slash ? slash + 1 : p;
}

/* The directory part of a stripped path ("." when there is none, "/" for "/x"). */
static char *cp_dir(const char *p)
{
    const char *slash = strrchr(p, '/');
    if (!slash)
        return strdup(".");
    if (slash == p)
        return strdup("/");
    return strndup(p, (size_t)(slash - p));
}

static char *cp_join(const char *dir, const char *name)
{
    char *out = NULL;
    size_t n = strlen(dir);
    return asprintf(&out, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", name) < 0 ? NULL : out;
}

/* "/v1/sandboxes/<sb>/<what>?path=<path>[&<extra>]" */
static char *cp_url(const struct cp *cp, const char *what, const char *path, const char *extra)
{
    buf_t b = BUF_INIT;
    if (cli_path_sandbox(&b, cp->sandbox) < 0 || buf_appendf(&b, "/%s?path=", what) < 0 ||
        client_append_escaped(&b, path, 1) < 0 || (extra && buf_appendf(&b, "&%s", extra) < 0)) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

/* ---- requests ------------------------------------------------------------------------------ */

/* Report a failed exchange (r < 0) like cli_api_call() does, or a local failure from a
 * callback. Nothing for a cancellation by a signal. */
static void cp_report_transport(struct cp *cp, int r, const char *method, const char *url)
{
    if (cp->err[0]) {
        fprintf(stderr, "warren: %s\n", cp->err);
    } else if (r == -EINTR && cli_signal_caught) {
        /* interrupted: the exit status says so */
    } else if (cp->c.connect_failed) {
        bool hint = r == -ECONNREFUSED || r == -ENOENT;
        fprintf(stderr, "warren: cannot reach the daemon at %s: %s%s\n", cp->c.url, cp->c.error,
                hint ? " (is 'warren serve' running?)" : "");
    } else {
        fprintf(stderr, "warren: %s %s at %s: %s\n", method, url, cp->c.url,
                cp->c.error[0] ? cp->c.error : strerror(-r));
    }
}

/* ?stat=1 of `path` in the sandbox. Returns 0 (*out set), 1 when it does not exist (404 for the
 * path, not for the sandbox), or -1 after reporting the error. */
static int cp_stat(struct cp *cp, const char *path, json_t **out)
{
    struct client_response resp;
    char *url = cp_url(cp, "files", path, "stat=1");
    *out = NULL;
    if (!url) {
        fprintf(stderr, "warren: out of memory\n");
        return -1;
    }
    int r = client_request(&cp->c, "GET", url, NULL, NULL, 0, &resp);
    if (r < 0) {
        cp_report_transport(cp, r, "GET", url);
        free(url);
        return -1;
    }
    free(url);
    int ret = -1;
    json_t *j = resp.body.len ? json_loadb(resp.body.data, resp.body.len, 0, NULL) : NULL;
    const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    if (resp.status == 200 && json_is_object(j)) {
        *out = json_incref(j);
        ret = 0;
    } else if (resp.status == 404 && code && strcmp(code, "not_found") == 0 && msg &&
               strncmp(msg, path, strlen(path)) == 0) {
        /* "<path>: No such file or directory" (an unknown sandbox is another 404) */
        ret = 1;
    } else {
        cli_report_api_error(&resp, NULL);
    }
    json_decref(j);
    client_response_free(&resp);
    return ret;
}

/* The type of `path` in the sandbox: "file", "dir", "other", "none" (missing: *exists is
 * false), or NULL on error (reported). A symlink is "dir" when it leads to a directory, else
 * "file" (GET and PUT follow links). *st: the stat answer (NULL for a symlink or a missing path;
 * the caller releases it). */
static const char *cp_remote_type(struct cp *cp, const char *path, bool *exists, json_t **st)
{
    json_t *j = NULL;
    int r = cp_stat(cp, path, &j);
    *exists = r == 0;
    *st = NULL;
    if (r < 0)
        return NULL;
    if (r == 1)
        return "none";
    const char *type = json_string_value(json_object_get(j, "type"));
    if (type && strcmp(type, "symlink") == 0) {
        /* "x/" follows a final symlink: a link to a directory is a directory. */
        char *slash = NULL;
        json_t *d = NULL;
        if (asprintf(&slash, "%s/", path) < 0) {
            json_decref(j);
            fprintf(stderr, "warren: out of memory\n");
            return NULL;
        }
        r = cp_stat(cp, slash, &d);
        free(slash);
        if (r < 0) {
            json_decref(j);
            return NULL;
        }
        bool dir =
            r == 0 && strcmp(json_string_value(json_object_get(d, "type")) ?: "", "dir") == 0;
        json_decref(d);
        json_decref(j);
        return dir ? "dir" : "file";
    }
    *st = j;
    return !type                       ? "other"
           : strcmp(type, "file") == 0 ? "file"
           : strcmp(type, "dir") == 0  ? "dir"
                                       : "other";
}

/* ---- the tar child ------------------------------------------------------------------------- */

/* Run tar with `argv`; its stdout (child_writes) or stdin is a pipe whose other end goes to *fd. */
static int cp_spawn(struct cp *cp, char *const argv[], bool child_writes, int *fd)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        fprintf(stderr, "warren: pipe: %s\n", strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "warren: fork: %s\n", strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        /* The child gets the signal state we were started with. */
        signal(SIGPIPE, SIG_DFL);
        sigprocmask(SIG_SETMASK, &cp->sig.old_mask, NULL);
        if (dup2(child_writes ? p[1] : p[0], child_writes ? 1 : 0) < 0)
            _exit(127);
        execvp(argv[0], argv);
        fprintf(stderr, "warren: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(child_writes ? p[1] : p[0]);
    *fd = child_writes ? p[0] : p[1];
    cp->child = pid;
    return 0;
}

/* Wait for the tar child. Returns 0 if it succeeded; otherwise writes why into cp->err (unless
 * it is already set) and returns -1. With `stop`, it is terminated first. */
static int cp_reap(struct cp *cp, bool stop)
{
    if (cp->child <= 0)
        return 0;
    if (stop)
        kill(cp->child, SIGTERM);
    int status = 0;
    while (waitpid(cp->child, &status, 0) < 0) {
        if (errno != EINTR) {
            status = -1;
            break;
        }
    }
    cp->child = 0;
    if (status == 0)
        return 0;
    if (!cp->err[0] && !stop) {
        if (status > 0 && WIFEXITED(status))
            snprintf(cp->err, sizeof(cp->err), "tar failed (exit status %d)", WEXITSTATUS(status));
        else if (status > 0 && WIFSIGNALED(status))
            snprintf(cp->err, sizeof(cp->err), "tar was killed by signal %d", WTERMSIG(status));
        else
            snprintf(cp->err, sizeof(cp->err), "waiting for tar: %s", strerror(errno));
    }
    return -1;
}

/* ---- uploads --------------------------------------------------------------------------------- */

static ssize_t cp_read_body(void *arg, void *buf, size_t len)
{
    struct cp *cp = arg;
    ssize_t n;
    do
        n = read(cp->in_fd, buf, len);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        int e = errno;
        snprintf(cp->err, sizeof(cp->err), "%s: %s", cp->in_name, strerror(e));
        return -e;
    }
    if (n == 0 && cp->child > 0 && cp_reap(cp, false) < 0)
        return -EIO; /* tar failed: do not let a truncated archive end as if it were whole */
    cli_progress_add(&cp->prog, (size_t)n);
    return n;
}

/* PUT the body read from cp->in_fd (Content-Length `len`, or chunked with -1) to `url`. */
static int cp_put(struct cp *cp, const char *url, long long len, const char *content_type)
{
    struct client_response resp;
    struct client_stream s = {.read_body = cp_read_body, .body_len = len, .arg = cp};
    cli_progress_start(&cp->prog, len > 0 ? (uint64_t)len : 0);
    cp->c.cancel = &cli_signal_caught;
    int r = client_request_stream(&cp->c, "PUT", url, content_type, &s, &resp);
    cp->c.cancel = NULL;
    bool ok = r == 0 && resp.status >= 200 && resp.status <= 299;
    cli_progress_finish(&cp->prog, ok);
    if (r < 0)
        cp_report_transport(cp, r, "PUT", url);
    else if (!ok)
        cli_report_api_error(&resp, NULL);
    client_response_free(&resp);
    return ok ? 0 : -1;
}

static int cp_upload_file(struct cp *cp, const char *local, const struct stat *st, const char *dest)
{
    bool exists;
    json_t *dst = NULL;
    char *stripped = cp_strip(dest), *target = NULL, *url = NULL, *local_s = cp_strip(local);
    int ret = -1;
    if (!stripped || !local_s)
        goto oom;
    const char *type = cp_remote_type(cp, stripped, &exists, &dst);
    if (!type)
        goto out;
    if (strcmp(type, "dir") == 0) {
        if (!(target = cp_join(stripped, cp_base(local_s))))
            goto oom;
    } else if (cp_ends_with_slash(dest) || cp_ends_with_dot(dest)) {
        fprintf(stderr, "warren: %s:%s: %s\n", cp->sandbox, dest,
                exists ? "not a directory" : "no such directory");
        goto out;
    } else if (!(target = strdup(stripped))) {
        goto oom;
    }
    char mode[32];
    snprintf(mode, sizeof(mode), "mode=%04o", (unsigned)(st->st_mode & 0777));
    if (!(url = cp_url(cp, "files", target, mode)))
        goto oom;
    cp->in_fd = open(local, O_RDONLY | O_CLOEXEC);
    if (cp->in_fd < 0) {
        fprintf(stderr, "warren: %s: %s\n", local, strerror(errno));
        goto out;
    }
    posix_fadvise(cp->in_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    cp->in_name = local;
    ret = cp_put(cp, url, (long long)st->st_size, "application/octet-stream");
    close(cp->in_fd);
    cp->in_fd = -1;
    goto out;
oom:
    fprintf(stderr, "warren: out of memory\n");
out:
    json_decref(dst);
    free(stripped);
    free(local_s);
    free(target);
    free(url);
    return ret;
}

/* A tar stream (from the tar child, or stdin with local "-") into directory `dest`. */
static int cp_upload_archive(struct cp *cp, const char *dest, char *const tar_argv[])
{
    char *url = cp_url(cp, "archive", dest, NULL);
    int ret = -1;
    if (!url) {
        fprintf(stderr, "warren: out of memory\n");
        return -1;
    }
    if (tar_argv) {
        if (cp_spawn(cp, tar_argv, true, &cp->in_fd) < 0)
            goto out;
        cp->in_name = "tar";
    } else {
        cp->in_fd = 0;
        cp->in_name = "stdin";
    }
    ret = cp_put(cp, url, -1, tar_argv ? "application/gzip" : "application/octet-stream");
    if (tar_argv) {
        close(cp->in_fd);
        if (cp_reap(cp, ret < 0) < 0 && ret == 0) {
            fprintf(stderr, "warren: %s\n", cp->err);
            ret = -1;
        }
    }
    cp->in_fd = -1;
out:
    free(url);
    return ret;
}

static int cp_upload_dir(struct cp *cp, const char *local, const char *dest)
{
    bool exists;
    json_t *dst = NULL;
    char *stripped = cp_strip(dest), *local_s = cp_strip(local), *parent = NULL;
    int ret = -1;
    if (!stripped || !local_s) {
        fprintf(stderr, "warren: out of memory\n");
        goto out;
    }
    const char *type = cp_remote_type(cp, stripped, &exists, &dst);
    if (!type)
        goto out;
    const char *base = cp_base(local_s);
    /* The contents of LOCAL (into DEST itself) or LOCAL as a whole (into DEST/base). */
    bool contents = !exists || cp_ends_with_dot(local) || !*base || strcmp(base, ".") == 0 ||
                    strcmp(base, "..") == 0;
    if (exists && strcmp(type, "dir") != 0) {
        fprintf(stderr, "warren: cannot copy a directory to a non-directory: %s:%s\n", cp->sandbox,
                dest);
        goto out;
    }
    if (!exists) {
        /* As with docker cp, DEST is created, but not its parents. */
        json_t *pst = NULL;
        bool pexists;
        if (!(parent = cp_dir(stripped)))
            goto out;
        const char *ptype = cp_remote_type(cp, parent, &pexists, &pst);
        json_decref(pst);
        if (!ptype)
            goto out;
        if (!pexists || strcmp(ptype, "dir") != 0) {
            fprintf(stderr, "warren: %s:%s: %s\n", cp->sandbox, parent,
                    pexists ? "not a directory" : "no such directory");
            goto out;
        }
    }
    char *dir = contents ? local_s : NULL;
    char *pdir = contents ? NULL : cp_dir(local_s);
    if (!contents && !pdir) {
        fprintf(stderr, "warren: out of memory\n");
        goto out;
    }
    char *argv_contents[] = {"tar", "-czf", "-", "-C", dir, ".", NULL};
    char *argv_whole[] = {"tar", "-czf", "-", "-C", pdir, "--", (char *)base, NULL};
    ret = cp_upload_archive(cp, stripped, contents ? argv_contents : argv_whole);
    free(pdir);
out:
    json_decref(dst);
    free(stripped);
    free(local_s);
    free(parent);
    return ret;
}

static int cp_upload(struct cp *cp, const char *local, const char *dest)
{
    if (strcmp(local, "-") == 0) {
        bool exists;
        json_t *st = NULL;
        char *stripped = cp_strip(dest);
        int ret = -1;
        const char *type = stripped ? cp_remote_type(cp, stripped, &exists, &st) : NULL;
        json_decref(st);
        if (type && exists && strcmp(type, "dir") != 0)
            fprintf(stderr, "warren: %s:%s: not a directory\n", cp->sandbox, dest);
        else if (type)
            ret = cp_upload_archive(cp, stripped, NULL);
        free(stripped);
        return ret;
    }
    struct stat st;
    if (stat(local, &st) < 0) {
        fprintf(stderr, "warren: %s: %s\n", local, strerror(errno));
        return -1;
    }
    if (S_ISREG(st.st_mode))
        return cp_upload_file(cp, local, &st, dest);
    if (S_ISDIR(st.st_mode))
        return cp_upload_dir(cp, local, dest);
    fprintf(stderr, "warren: %s: not a regular file or directory\n", local);
    return -1;
}

/* ---- downloads ------------------------------------------------------------------------------- */

static int cp_on_head(void *arg, const struct client_response *resp)
{
    struct cp *cp = arg;
    const char *cl = client_response_header(resp, "Content-Length");
    if (cl && !cp->prog.total)
        cp->prog.total = strtoull(cl, NULL, 10);
    if (cp->out == CP_OUT_STDOUT) {
        cp->out_fd = 1;
        return 0;
    }
    if (cp->out == CP_OUT_TAR) {
        char strip[32];
        snprintf(strip, sizeof(strip), "--strip-components=%d", cp->strip);
        char *argv[] = {
            "tar", "-xzf", "-", "-C", cp->out_dir, "--no-same-owner", cp->strip ? strip : NULL,
            NULL};
        return cp_spawn(cp, argv, false, &cp->out_fd) < 0 ? -EIO : 0;
    }
    /* A temporary file next to the target, renamed over it at the end. */
    const char *base = cp_base(cp->out_target);
    if (asprintf(&cp->tmp_path, "%s/.%s.warren-XXXXXX", cp->out_dir, base) < 0) {
        cp->tmp_path = NULL;
        return -ENOMEM;
    }
    cp->out_fd = mkostemp(cp->tmp_path, O_CLOEXEC);
    if (cp->out_fd < 0) {
        int e = errno;
        snprintf(cp->err, sizeof(cp->err), "%s: %s", cp->out_target, strerror(e));
        free(cp->tmp_path);
        cp->tmp_path = NULL;
        return -e;
    }
    return 0;
}

static int cp_write_body(void *arg, const void *data, size_t len)
{
    struct cp *cp = arg;
    int r = util_write_all(cp->out_fd, data, len);
    if (r < 0) {
        const char *what = cp->out == CP_OUT_FILE  ? cp->out_target
                           : cp->out == CP_OUT_TAR ? "tar"
                                                   : "stdout";
        if (!cp->err[0])
            snprintf(cp->err, sizeof(cp->err), "writing to %s: %s", what, strerror(-r));
        return r;
    }
    cli_progress_add(&cp->prog, len);
    return 0;
}

/* GET `url` into cp->out; then finish the target (rename the file, wait for tar). */
static int cp_get(struct cp *cp, const char *url)
{
    struct client_response resp;
    struct client_stream s = {.write_body = cp_write_body, .on_head = cp_on_head, .arg = cp};
    cp->out_fd = -1;
    cli_progress_start(&cp->prog, 0);
    cp->c.cancel = &cli_signal_caught;
    int r = client_request_stream(&cp->c, "GET", url, NULL, &s, &resp);
    cp->c.cancel = NULL;
    bool ok = r == 0 && resp.status >= 200 && resp.status <= 299;
    if (ok && cp->out == CP_OUT_FILE) {
        int fd = cp->out_fd;
        cp->out_fd = -1;
        if (fchmod(fd, cp->out_mode) < 0 || fsync(fd) < 0) {
            snprintf(cp->err, sizeof(cp->err), "%s: %s", cp->out_target, strerror(errno));
            ok = false;
        }
        if (close(fd) < 0 && ok) {
            snprintf(cp->err, sizeof(cp->err), "%s: %s", cp->out_target, strerror(errno));
            ok = false;
        }
        if (ok && rename(cp->tmp_path, cp->out_target) < 0) {
            snprintf(cp->err, sizeof(cp->err), "%s: %s", cp->out_target, strerror(errno));
            ok = false;
        }
        if (ok) {
            free(cp->tmp_path);
            cp->tmp_path = NULL;
        }
    }
    if (cp->out == CP_OUT_TAR && cp->out_fd >= 0) {
        close(cp->out_fd); /* EOF for tar */
        cp->out_fd = -1;
        if (cp_reap(cp, !ok) < 0 && ok)
            ok = false;
    }
    if (cp->out_fd >= 0 && cp->out != CP_OUT_STDOUT)
        close(cp->out_fd);
    cp->out_fd = -1;
    if (cp->tmp_path) {
        unlink(cp->tmp_path);
        free(cp->tmp_path);
        cp->tmp_path = NULL;
    }
    cli_progress_finish(&cp->prog, ok);
    if (r < 0)
        cp_report_transport(cp, r, "GET", url);
    else if (resp.status < 200 || resp.status > 299)
        cli_report_api_error(&resp, NULL);
    else if (!ok && cp->err[0])
        fprintf(stderr, "warren: %s\n", cp->err);
    client_response_free(&resp);
    return ok ? 0 : -1;
}

static int cp_download(struct cp *cp, const char *src, const char *local)
{
    bool exists;
    json_t *st = NULL;
    char *stripped = cp_strip(src), *url = NULL, *target = NULL;
    int ret = -1;
    if (!stripped) {
        fprintf(stderr, "warren: out of memory\n");
        return -1;
    }
    const char *type = cp_remote_type(cp, stripped, &exists, &st);
    if (!type)
        goto out;
    if (!exists) {
        fprintf(stderr, "warren: %s:%s: No such file or directory\n", cp->sandbox, src);
        goto out;
    }
    if (strcmp(type, "other") == 0) {
        fprintf(stderr, "warren: %s:%s: not a regular file or directory\n", cp->sandbox, src);
        goto out;
    }
    bool is_dir = strcmp(type, "dir") == 0;
    if (strcmp(local, "-") == 0) {
        /* As docker cp: a tar(.gz) stream of the path, file or directory. */
        cp->out = CP_OUT_STDOUT;
        url = cp_url(cp, "archive", stripped, NULL);
        ret = url ? cp_get(cp, url) : -1;
        goto out;
    }
    if (!is_dir && (cp_ends_with_slash(src) || cp_ends_with_dot(src))) {
        fprintf(stderr, "warren: %s:%s: not a directory\n", cp->sandbox, src);
        goto out;
    }
    struct stat lst;
    bool lexists = stat(local, &lst) == 0;
    if (!lexists && errno != ENOENT) {
        fprintf(stderr, "warren: %s: %s\n", local, strerror(errno));
        goto out;
    }
    bool ldir = lexists && S_ISDIR(lst.st_mode);
    char *lstripped = cp_strip(local);
    if (!lstripped) {
        fprintf(stderr, "warren: out of memory\n");
        goto out;
    }
    if (!is_dir) {
        if (ldir) {
            target = cp_join(lstripped, cp_base(stripped));
        } else if (cp_ends_with_slash(local) || cp_ends_with_dot(local)) {
            fprintf(stderr, "warren: %s: %s\n", local,
                    lexists ? "not a directory" : "no such directory");
            free(lstripped);
            goto out;
        } else {
            target = strdup(lstripped);
        }
        free(lstripped);
        if (!target || !(cp->out_dir = cp_dir(target))) {
            fprintf(stderr, "warren: out of memory\n");
            goto out;
        }
        struct stat dst;
        if (stat(cp->out_dir, &dst) < 0) {
            fprintf(stderr, "warren: %s: %s\n", cp->out_dir, strerror(errno));
            goto out;
        }
        if (!S_ISDIR(dst.st_mode)) {
            fprintf(stderr, "warren: %s: not a directory\n", cp->out_dir);
            goto out;
        }
        const char *m = json_string_value(json_object_get(st, "mode"));
        mode_t um = umask(0);
        umask(um);
        cp->out_mode = m ? (mode_t)(strtoul(m, NULL, 8) & 0777) : (0666 & ~um);
        cp->out = CP_OUT_FILE;
        cp->out_target = target;
        target = NULL;
        url = cp_url(cp, "files", stripped, NULL);
        ret = url ? cp_get(cp, url) : -1;
        goto out;
    }
    /* A directory: its archive (entries named "<base>/...", or relative to it for "/"),
     * extracted into LOCAL (as LOCAL/<base>) when LOCAL is an existing directory and SRC does
     * not end in "/.", else LOCAL becomes the copy (created if missing). */
    if (lexists && !ldir) {
        fprintf(stderr, "warren: cannot copy a directory to a non-directory: %s\n", local);
        free(lstripped);
        goto out;
    }
    bool relative = strcmp(stripped, "/") == 0 || strcmp(cp_base(stripped), "..") == 0;
    bool contents = !lexists || cp_ends_with_dot(src);
    if (!lexists) {
        if (mkdir(lstripped, 0777) < 0) {
            fprintf(stderr, "warren: %s: %s\n", local, strerror(errno));
            free(lstripped);
            goto out;
        }
    }
    cp->out = CP_OUT_TAR;
    cp->out_dir = lstripped;
    cp->strip = contents && !relative ? 1 : 0;
    url = cp_url(cp, "archive", stripped, NULL);
    ret = url ? cp_get(cp, url) : -1;
out:
    json_decref(st);
    free(stripped);
    free(url);
    free(target);
    return ret;
}

/* ---- the command -------------------------------------------------------------------------------
 */

int cli_cmd_cp(int argc, char **argv)
{
    static const struct option opts[] = {
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    bool quiet = false;
    int opt, ret = -1;

    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+qh", opts, NULL)) != -1) {
        if (opt == 'q') {
            quiet = true;
        } else if (opt == 'h') {
            cli_print_help("cp", stdout);
            ret = 0;
        } else {
            fprintf(stderr, "Try 'warren cp --help'.\n");
            ret = CLI_EXIT_USAGE;
        }
    }
    int first = optind;
    free(av);
    if (ret >= 0)
        return ret;
    if (argc - first != 2)
        return cli_usage_error(
            "cp", argc - first < 2 ? "expected SRC and DEST" : "unexpected argument '%s'",
            argv[first + 2 < argc ? first + 2 : first]);
    const char *src = argv[first], *dest = argv[first + 1];
    bool rsrc = cp_is_remote(src), rdest = cp_is_remote(dest);
    if (rsrc == rdest)
        return cli_usage_error("cp", rsrc ? "copying between sandboxes is not supported"
                                          : "one of SRC and DEST must be SANDBOX:PATH");

    struct cp *cp = calloc(1, sizeof(*cp));
    char *sandbox = NULL, *rpath = NULL;
    if (!cp) {
        fprintf(stderr, "warren: out of memory\n");
        return CLI_EXIT_FAIL;
    }
    const char *remote = rsrc ? src : dest;
    const char *colon = strchr(remote, ':');
    sandbox = strndup(remote, (size_t)(colon - remote));
    rpath = cp_remote_path(colon + 1);
    if (!sandbox || !rpath) {
        fprintf(stderr, "warren: out of memory\n");
        free(sandbox);
        free(rpath);
        free(cp);
        return CLI_EXIT_FAIL;
    }
    cp->sandbox = sandbox;
    cp->in_fd = cp->out_fd = -1;
    cp->prog.enabled = !quiet && isatty(2);
    cp->prog.min_bytes = (uint64_t)4 << 20; /* smaller transfers are over before a bar helps */
    if (cli_client_open(&cp->c) < 0) {
        free(sandbox);
        free(rpath);
        free(cp);
        return CLI_EXIT_FAIL;
    }
    cli_signals_setup(&cp->sig, &cp->c);
    int r = rsrc ? cp_download(cp, rpath, dest) : cp_upload(cp, src, rpath);
    cp_reap(cp, true);
    ret = r == 0 ? 0 : CLI_EXIT_FAIL;
    if (cli_signal_caught)
        ret = 128 + cli_signal_caught;
    cli_signals_restore(&cp->sig, &cp->c);
    client_close(&cp->c);
    free(cp->out_dir);
    free(cp->out_target);
    free(sandbox);
    free(rpath);
    free(cp);
    return ret;
}
