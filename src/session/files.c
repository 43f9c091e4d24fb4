/*
 * files — the engine's file access on the uv thread pool. See files.h.
 */
#include "session/files.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "session/sandbox.h"

struct files {
    struct sandbox *sb; /* referenced */
    struct fs_root root;
    uv_work_t work;
    files_work_fn fn;
    files_done_fn done;
    void *arg;
    int busy;
    int once; /* files_run: closed before its done is called */
};

int files_open(struct sandbox *sb, struct files **out)
{
    *out = NULL;
    struct files *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    uid_t uid = sandbox_host_uid(sb);
    int r = fs_root_open(sb->pid, uid, (gid_t)uid, &f->root);
    if (r < 0) {
        free(f);
        return r;
    }
    sandbox_ref(sb);
    f->sb = sb;
    *out = f;
    return 0;
}

const struct fs_root *files_root(const struct files *f)
{
    return &f->root;
}

void files_close(struct files *f)
{
    if (!f)
        return;
    fs_root_close(&f->root);
    sandbox_unref(f->sb);
    free(f);
}

static void on_work(uv_work_t *w)
{
    struct files *f = w->data;
    f->fn(&f->root, f->arg);
}

static void on_work_done(uv_work_t *w, int status)
{
    struct files *f = w->data;
    files_done_fn done = f->done;
    void *arg = f->arg;
    (void)status; /* work is never cancelled */
    f->busy = 0;
    if (f->once)
        files_close(f);
    done(arg);
}

int files_queue(struct files *f, files_work_fn work, files_done_fn done, void *arg)
{
    if (f->busy)
        return -EBUSY;
    f->fn = work;
    f->done = done;
    f->arg = arg;
    f->work.data = f;
    int r = uv_queue_work(f->sb->reg->loop, &f->work, on_work, on_work_done);
    if (r < 0)
        return r;
    f->busy = 1;
    return 0;
}

int files_run(struct sandbox *sb, files_work_fn work, files_done_fn done, void *arg)
{
    struct files *f;
    int r = files_open(sb, &f);
    if (r < 0)
        return r;
    f->once = 1;
    if ((r = files_queue(f, work, done, arg)) < 0)
        files_close(f);
    return r;
}

/* ---- archive streams ---------------------------------------------------------------------- */

struct stream {
    int fd; /* the worker's end of the pipe */
    char *path;
    uint64_t max_bytes;
    size_t max_entries;
    files_archive_done_fn done;
    void *arg;
    int r;
    size_t entries;
    char err[256];
};

static ssize_t pipe_write_cb(const void *data, size_t len, void *arg)
{
    struct stream *s = arg;
    const char *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(s->fd, p + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno; /* EPIPE: the loop closed its end */
        }
        done += (size_t)n;
    }
    return (ssize_t)len;
}

static ssize_t pipe_read_cb(void *buf, size_t len, void *arg)
{
    struct stream *s = arg;
    for (;;) {
        ssize_t n = read(s->fd, buf, len);
        if (n >= 0 || errno != EINTR)
            return n < 0 ? -errno : n;
    }
}

static void archive_work(const struct fs_root *root, void *arg)
{
    struct stream *s = arg;
    s->r = fs_archive_create(root, s->path, 0, 0, 0, pipe_write_cb, s, &s->entries);
    close(s->fd); /* EOF for the loop */
    s->fd = -1;
}

static void extract_work(const struct fs_root *root, void *arg)
{
    struct stream *s = arg;
    s->r = fs_archive_extract(root, s->path, pipe_read_cb, s, s->max_bytes, s->max_entries,
                              &s->entries, s->err, sizeof(s->err));
    close(s->fd); /* the loop's writes now fail with EPIPE */
    s->fd = -1;
}

static void stream_done(void *arg)
{
    struct stream *s = arg;
    s->done(s->r, s->entries, s->err, s->arg);
    free(s->path);
    free(s);
}

/* Opens the pipe (the loop's end non-blocking) and queues `work` on it. */
static int stream_start(struct files *f, const char *path, int loop_reads, files_work_fn work,
                        struct stream *s, int *fd)
{
    int p[2];
    if (!(s->path = strdup(path)))
        return -ENOMEM;
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    int loop_end = loop_reads ? p[0] : p[1];
    s->fd = loop_reads ? p[1] : p[0];
    fcntl(loop_end, F_SETFL, fcntl(loop_end, F_GETFL) | O_NONBLOCK);
    int r = files_queue(f, work, stream_done, s);
    if (r < 0) {
        close(p[0]);
        close(p[1]);
        return r;
    }
    *fd = loop_end;
    return 0;
}

static struct stream *stream_new(files_archive_done_fn done, void *arg)
{
    struct stream *s = calloc(1, sizeof(*s));
    if (s) {
        s->fd = -1;
        s->done = done;
        s->arg = arg;
    }
    return s;
}

static void stream_free(struct stream *s)
{
    if (s)
        free(s->path);
    free(s);
}

int files_archive_stream(struct files *f, const char *path, int *fd, files_archive_done_fn done,
                         void *arg)
{
    struct stream *s = stream_new(done, arg);
    int r = s ? stream_start(f, path, 1, archive_work, s, fd) : -ENOMEM;
    if (r < 0)
        stream_free(s);
    return r;
}

int files_extract_stream(struct files *f, const char *path, uint64_t max_bytes, size_t max_entries,
                         int *fd, files_archive_done_fn done, void *arg)
{
    struct stream *s = stream_new(done, arg);
    if (s) {
        s->max_bytes = max_bytes;
        s->max_entries = max_entries;
    }
    int r = s ? stream_start(f, path, 0, extract_work, s, fd) : -ENOMEM;
    if (r < 0)
        stream_free(s);
    return r;
}
