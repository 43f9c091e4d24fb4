/*
 * cli_archive — `warren import` and `warren export`: image archives in and out of templates
 * (docs/API.md, "Images and templates"):
 *   - import: the archive (a file or stdin) streamed as PUT /v1/templates/NAME/archive, with a
 *     Content-Length for a regular file and chunked otherwise;
 *   - export: GET /v1/templates/NAME/export streamed into a temporary file next to the target,
 *     fsync'd and renamed over it once complete (a failed or interrupted export leaves
 *     nothing), or to stdout when it is not a terminal.
 * Nothing is held in memory. A progress bar is drawn on stderr when it is a terminal and the
 * archive is over 4 MiB. SIGINT/SIGTERM/SIGHUP cancel the transfer (the temporary file is
 * removed) and the exit status is 128+N.
 */
#include "cli/cli_internal.h"
#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { OPT_JSON = 256 };

struct xfer {
    struct client c;
    struct cli_sigstate sig;
    struct cli_progress prog;
    int fd;              /* import: the archive; export: where it goes (-1 until opened) */
    const char *in_name; /* import: the archive's name, for messages */
    const char *target;  /* export -o: the final path; NULL for stdout */
    char *tmp_path;      /* export -o: the temporary file while it exists */
    char err[1024];      /* a local failure found in a callback, reported after the request */
};

/* Report what made client_request_stream() fail (r < 0): a local failure found in a callback,
 * the daemon out of reach, or a broken exchange. Nothing for a cancellation by a signal. */
static void xfer_report(struct xfer *x, int r, const char *method, const char *path)
{
    if (x->err[0])
        fprintf(stderr, "warren: %s\n", x->err);
    else if (r == -EINTR && cli_signal_caught)
        return;
    else if (x->c.connect_failed)
        fprintf(stderr, "warren: cannot reach the daemon at %s: %s%s\n", x->c.url, x->c.error,
                r == -ECONNREFUSED || r == -ENOENT ? " (is 'warren serve' running?)" : "");
    else
        fprintf(stderr, "warren: %s %s at %s: %s\n", method, path, x->c.url,
                x->c.error[0] ? x->c.error : strerror(-r));
}

/* The exit status of a transfer that returned `ok`: 128+N when a signal cut it. */
static int xfer_status(bool ok)
{
    if (cli_signal_caught)
        return 128 + cli_signal_caught;
    return ok ? 0 : CLI_EXIT_FAIL;
}

/* ---- import ---------------------------------------------------------------------------------- */

static ssize_t import_read(void *arg, void *buf, size_t len)
{
    struct xfer *x = arg;
    ssize_t n;
    do
        n = read(x->fd, buf, len);
    while (n < 0 && errno == EINTR && !cli_signal_caught);
    if (n < 0) {
        int e = errno;
        if (e != EINTR)
            snprintf(x->err, sizeof(x->err), "%s: %s", x->in_name, strerror(e));
        return -e;
    }
    cli_progress_add(&x->prog, (size_t)n);
    return n;
}

/* PUT the archive from x->fd as template `name`; prints the template. Returns the exit status. */
static int import_run(struct xfer *x, const char *name, bool json)
{
    struct client_response resp = {0};
    buf_t path = BUF_INIT;
    struct stat st;
    long long len = -1;
    int ret = CLI_EXIT_FAIL;

    /* A regular file (or stdin redirected from one) has a known size: the rest of it. */
    if (fstat(x->fd, &st) == 0 && S_ISREG(st.st_mode)) {
        off_t pos = lseek(x->fd, 0, SEEK_CUR);
        len = (long long)(st.st_size - (pos > 0 ? pos : 0));
        posix_fadvise(x->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    }
    if (cli_path_template(&path, name) < 0 || buf_append_str(&path, "/archive") < 0) {
        fprintf(stderr, "warren: out of memory\n");
        goto out;
    }
    struct client_stream s = {.read_body = import_read, .body_len = len, .arg = x};
    cli_progress_start(&x->prog, len > 0 ? (uint64_t)len : 0);
    x->c.cancel = &cli_signal_caught;
    int r = client_request_stream(&x->c, "PUT", path.data, "application/octet-stream", &s, &resp);
    x->c.cancel = NULL;
    bool ok = r == 0 && resp.status >= 200 && resp.status <= 299;
    cli_progress_finish(&x->prog, ok);
    if (r < 0) {
        xfer_report(x, r, "PUT", path.data);
        ret = xfer_status(false);
        goto out;
    }
    if (!ok) {
        cli_report_api_error(&resp, name);
        goto out;
    }
    json_t *tpl = resp.body.len ? json_loadb(resp.body.data, resp.body.len, 0, NULL) : NULL;
    if (!json_is_object(tpl))
        fprintf(stderr, "warren: malformed JSON from the daemon (PUT %s)\n", path.data);
    else
        ret = cli_print_template(tpl, json);
    json_decref(tpl);
out:
    client_response_free(&resp);
    buf_free(&path);
    return ret;
}

int cli_cmd_import(int argc, char **argv)
{
    static const struct option opts[] = {
        {"quiet", no_argument, NULL, 'q'},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    bool quiet = false, json = false;
    int ret = -1, opt;
    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+qh", opts, NULL)) != -1) {
        if (opt == 'q')
            quiet = true;
        else if (opt == OPT_JSON)
            json = true;
        else
            ret = cli_common_opt("import", opt);
    }
    int first = optind;
    free(av);
    if (ret >= 0)
        return ret;
    if (argc - first != 2)
        return cli_usage_error("import",
                               argc - first < 2 ? "expected NAME and FILE (or -)"
                                                : "unexpected argument '%s'",
                               argv[argc - 1]);
    const char *name = argv[first], *file = argv[first + 1];
    bool from_stdin = strcmp(file, "-") == 0;
    if (from_stdin && isatty(0))
        return cli_usage_error("import", "stdin is a terminal: give FILE, or pipe the archive in");

    struct xfer x = {.fd = -1, .in_name = from_stdin ? "stdin" : file};
    x.prog = (struct cli_progress){
        .enabled = !quiet && !json && isatty(2), .min_bytes = (uint64_t)4 << 20, .label = name};
    x.fd = from_stdin ? 0 : open(file, O_RDONLY | O_CLOEXEC);
    if (x.fd < 0) {
        fprintf(stderr, "warren: %s: %s\n", file, strerror(errno));
        return CLI_EXIT_FAIL;
    }
    if (cli_client_open(&x.c) < 0) {
        ret = CLI_EXIT_FAIL;
    } else {
        cli_signals_setup(&x.sig, &x.c);
        ret = import_run(&x, name, json);
        cli_signals_restore(&x.sig, &x.c);
    }
    client_close(&x.c);
    if (!from_stdin)
        close(x.fd);
    return ret;
}

/* ---- export ---------------------------------------------------------------------------------- */

/* The answer is a 2xx: make the temporary file next to the target (not before, so that a
 * refused export leaves nothing). */
static int export_on_head(void *arg, const struct client_response *resp)
{
    struct xfer *x = arg;
    const char *cl = client_response_header(resp, "Content-Length");
    if (cl)
        x->prog.total = strtoull(cl, NULL, 10);
    if (!x->target) {
        x->fd = 1;
        return 0;
    }
    char *dir = strdup(x->target), *slash = dir ? strrchr(dir, '/') : NULL;
    const char *base = slash ? slash + 1 : x->target;
    if (!dir)
        return -ENOMEM;
    if (slash)
        *slash = '\0';
    if (asprintf(&x->tmp_path, "%s/.%s.warren-XXXXXX", !slash ? "." : *dir ? dir : "/", base) < 0) {
        x->tmp_path = NULL;
        free(dir);
        return -ENOMEM;
    }
    free(dir);
    x->fd = mkostemp(x->tmp_path, O_CLOEXEC);
    if (x->fd < 0) {
        int e = errno;
        snprintf(x->err, sizeof(x->err), "%s: %s", x->target, strerror(e));
        free(x->tmp_path);
        x->tmp_path = NULL;
        return -e;
    }
    /* mkostemp makes it 0600: give it the mode any new file gets */
    mode_t um = umask(0);
    umask(um);
    if (fchmod(x->fd, 0666 & ~um) < 0) {
        int e = errno;
        snprintf(x->err, sizeof(x->err), "%s: %s", x->tmp_path, strerror(e));
        return -e;
    }
    return 0;
}

static int export_write(void *arg, const void *data, size_t len)
{
    struct xfer *x = arg;
    int r = util_write_all(x->fd, data, len);
    if (r < 0) {
        snprintf(x->err, sizeof(x->err), "%s: %s", x->target ? x->target : "stdout", strerror(-r));
        return r;
    }
    cli_progress_add(&x->prog, len);
    return 0;
}

/* The temporary file is complete: make it the target. Returns 0, or -1 after reporting. */
static int export_commit(struct xfer *x)
{
    if (fsync(x->fd) < 0 || close(x->fd) < 0) {
        fprintf(stderr, "warren: %s: %s\n", x->tmp_path, strerror(errno));
        x->fd = -1;
        return -1;
    }
    x->fd = -1;
    if (rename(x->tmp_path, x->target) < 0) {
        fprintf(stderr, "warren: %s: %s\n", x->target, strerror(errno));
        return -1;
    }
    free(x->tmp_path);
    x->tmp_path = NULL;
    return 0;
}

/* GET template `name` as an oci-archive into x->target (or stdout). Returns the exit status. */
static int export_run(struct xfer *x, const char *name)
{
    struct client_response resp = {0};
    buf_t path = BUF_INIT;
    json_t *tpl = NULL;
    bool ok = false;

    if (cli_path_template(&path, name) < 0) {
        fprintf(stderr, "warren: out of memory\n");
        goto out;
    }
    /* The archive is streamed without a length: the template's layers are nearly all of it,
     * which makes the bar's estimate (and a 404 answered before anything is made). */
    if (cli_api_call(&x->c, "GET", path.data, NULL, &tpl, name) != CLI_OK)
        goto out;
    if (buf_append_str(&path, "/export") < 0) {
        fprintf(stderr, "warren: out of memory\n");
        goto out;
    }
    cli_progress_start(&x->prog, (uint64_t)json_integer_value(json_object_get(tpl, "size_bytes")));
    struct client_stream s = {.write_body = export_write, .on_head = export_on_head, .arg = x};
    x->c.cancel = &cli_signal_caught;
    int r = client_request_stream(&x->c, "GET", path.data, NULL, &s, &resp);
    x->c.cancel = NULL;
    ok = r == 0 && resp.status >= 200 && resp.status <= 299;
    if (r < 0)
        xfer_report(x, r, "GET", path.data);
    else if (!ok)
        cli_report_api_error(&resp, name);
    if (ok && x->target)
        ok = export_commit(x) == 0;
    else if (ok && fsync(1) < 0 && errno != EINVAL && errno != EROFS)
        ok = false; /* a pipe or a tty cannot be synced: only a file's errors count */
    if (ok)
        cli_progress_set(&x->prog, x->prog.done, x->prog.done);
    cli_progress_finish(&x->prog, ok);
out:
    if (x->tmp_path) {
        if (x->fd >= 0)
            close(x->fd);
        x->fd = -1;
        unlink(x->tmp_path);
        free(x->tmp_path);
        x->tmp_path = NULL;
    }
    json_decref(tpl);
    client_response_free(&resp);
    buf_free(&path);
    return xfer_status(ok);
}

int cli_cmd_export(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    struct xfer x = {.fd = -1};
    bool quiet = false;
    int ret = -1, opt;
    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+o:qh", opts, NULL)) != -1) {
        if (opt == 'o')
            x.target = optarg;
        else if (opt == 'q')
            quiet = true;
        else
            ret = cli_common_opt("export", opt);
    }
    int first = optind;
    free(av);
    if (ret >= 0)
        return ret;
    if (argc - first != 1)
        return cli_usage_error(
            "export", argc == first ? "missing the template name" : "unexpected argument '%s'",
            argv[argc - 1]);
    if (x.target && strcmp(x.target, "-") == 0)
        x.target = NULL;
    if (x.target && !*x.target)
        return cli_usage_error("export", "-o: empty file name");
    if (!x.target && isatty(1))
        return cli_usage_error("export", "stdout is a terminal: give -o FILE, or redirect it");
    const char *name = argv[first];
    x.prog = (struct cli_progress){
        .enabled = !quiet && isatty(2), .min_bytes = (uint64_t)4 << 20, .label = name};
    if (cli_client_open(&x.c) < 0) {
        ret = CLI_EXIT_FAIL;
    } else {
        cli_signals_setup(&x.sig, &x.c);
        ret = export_run(&x, name);
        cli_signals_restore(&x.sig, &x.c);
    }
    client_close(&x.c);
    return ret;
}
