/*
 * registry_blob — the blob store side of a pull: verified blobs renamed into blobs/sha256/<hex>,
 * partial layers in blobs/tmp/<hex>.part (locked with flock while written, resumed with Range),
 * and the curl multi loop that downloads up to REGISTRY_PARALLEL layers at once.
 */
#include "image/registry_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

void blob_paths(const struct pull *p, const char *digest, char *final, char *part)
{
    const char *hex = digest + 7; /* digests were checked by the manifest parser */
    snprintf(final, PATH_MAX, "%s/sha256/%s", p->blobs_dir, hex);
    snprintf(part, PATH_MAX, "%s/tmp/%s.part", p->blobs_dir, hex);
}

int blob_present(const char *final, int64_t size)
{
    struct stat st;
    return stat(final, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == size;
}

static int io_errno(int e)
{
    return e == ENOSPC || e == EDQUOT ? -ENOSPC : e == ENOMEM ? -ENOMEM : -EIO;
}

int blob_store(struct pull *p, const char *digest, const void *data, size_t len)
{
    char final[PATH_MAX], part[PATH_MAX], tmp[PATH_MAX + 16];
    int r = 0;
    blob_paths(p, digest, final, part);
    if (blob_present(final, (int64_t)len))
        return 0;
    /* A name of its own: two pulls storing the same manifest both rename identical content. */
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", part);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return pull_fail(p, io_errno(errno), "blob store: %s: %s", tmp, strerror(errno));
    for (size_t off = 0; off < len && r == 0;) {
        ssize_t w = write(fd, (const char *)data + off, len - off);
        if (w < 0 && errno != EINTR)
            r = io_errno(errno);
        else if (w > 0)
            off += (size_t)w;
    }
    if (r == 0 && fsync(fd) < 0)
        r = io_errno(errno);
    if (r == 0 && fchmod(fd, 0644) < 0)
        r = io_errno(errno);
    close(fd);
    if (r == 0 && rename(tmp, final) < 0)
        r = io_errno(errno);
    if (r < 0) {
        unlink(tmp);
        return pull_fail(p, r, "blob store: writing %s: %s", final, strerror(-r));
    }
    return 0;
}

/* Opens and locks the layer's partial file and hashes what it already holds. 1: the blob is in
 * place already (another pull finished it); 0: ready to download from x->got; -EWOULDBLOCK:
 * another pull holds it (only when !wait). */
static int part_open(struct pull *p, struct xfer *x, int wait)
{
    struct stat st, st_path;
    int r;
    for (;;) {
        x->fd = open(x->part, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (x->fd < 0)
            return pull_fail(p, io_errno(errno), "blob store: %s: %s", x->part, strerror(errno));
        while ((r = flock(x->fd, LOCK_EX | (wait ? 0 : LOCK_NB))) < 0 && errno == EINTR)
            ;
        if (r < 0) {
            r = errno == EWOULDBLOCK ? -EWOULDBLOCK : io_errno(errno);
            close(x->fd);
            x->fd = -1;
            return r;
        }
        /* The holder before us may have renamed or removed the file: lock the one at the path. */
        if (fstat(x->fd, &st) == 0 && stat(x->part, &st_path) == 0 && st.st_ino == st_path.st_ino &&
            st.st_dev == st_path.st_dev)
            break;
        close(x->fd);
        x->fd = -1;
    }
    if (blob_present(x->final, x->layer->size)) {
        unlink(x->part);
        close(x->fd);
        x->fd = -1;
        return 1;
    }
    if (digest_init(&x->dg) < 0)
        return -ENOMEM;
    if (st.st_size > x->layer->size && ftruncate(x->fd, 0) < 0)
        return pull_fail(p, io_errno(errno), "blob store: %s: %s", x->part, strerror(errno));
    int64_t have = st.st_size > x->layer->size ? 0 : st.st_size;
    char buf[65536];
    while (x->got < have) {
        ssize_t n = pread(x->fd, buf, sizeof(buf), x->got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* Unreadable leftovers are not worth an error: start over. */
            if (ftruncate(x->fd, 0) < 0)
                return pull_fail(p, -EIO, "blob store: %s: %s", x->part, strerror(errno));
            digest_free(&x->dg);
            if (digest_init(&x->dg) < 0)
                return -ENOMEM;
            x->got = 0;
            break;
        }
        digest_update(&x->dg, buf, (size_t)n);
        x->got += n;
    }
    x->offset = x->got;
    x->resumed = x->got > 0;
    pull_progress(p, x->got, 0);
    return 0;
}

/* Closes the partial file, removing it if `drop` (its content is known bad). */
static void part_close(struct xfer *x, int drop)
{
    if (x->fd < 0)
        return;
    if (drop)
        unlink(x->part);
    digest_free(&x->dg);
    close(x->fd);
    x->fd = -1;
}

/* Starts the partial file over (its old content did not add up to the digest). */
static int part_restart(struct pull *p, struct xfer *x)
{
    if (ftruncate(x->fd, 0) < 0)
        return pull_fail(p, io_errno(errno), "blob store: %s: %s", x->part, strerror(errno));
    digest_free(&x->dg);
    if (digest_init(&x->dg) < 0)
        return -ENOMEM;
    pull_progress(p, -x->got, 0);
    x->got = x->offset = 0;
    x->resumed = 0;
    x->restarted = 1;
    return 0;
}

/* The whole layer is in the partial file: check it and rename it into place. 1: started over
 * (the bad bytes may have come from an earlier transfer), to be downloaded again. */
static int part_finish(struct pull *p, struct xfer *x)
{
    char digest[DIGEST_STRLEN] = "";
    int r;
    if (x->got == x->layer->size) {
        digest_final(&x->dg, digest);
        if (strcmp(digest, x->layer->digest) == 0) {
            if (fsync(x->fd) < 0 || fchmod(x->fd, 0644) < 0 || rename(x->part, x->final) < 0) {
                r = io_errno(errno);
                part_close(x, 1);
                return pull_fail(p, r, "blob store: %s: %s", x->final, strerror(-r));
            }
            part_close(x, 0);
            x->done = 1;
            return 0;
        }
        if (digest_init(&x->dg) < 0)
            return -ENOMEM;
    }
    if (x->resumed && !x->restarted)
        return (r = part_restart(p, x)) < 0 ? r : 1;
    part_close(x, 1);
    if (digest[0])
        return pull_fail(p, -EBADMSG, "layer %s of %s does not match its digest (got %s)",
                         x->layer->digest, p->refstr, digest);
    return pull_fail(p, -EBADMSG, "layer %s of %s: got %lld of %lld bytes", x->layer->digest,
                     p->refstr, (long long)x->got, (long long)x->layer->size);
}

static int transient(CURLcode cc)
{
    return cc == CURLE_PARTIAL_FILE || cc == CURLE_RECV_ERROR || cc == CURLE_SEND_ERROR ||
           cc == CURLE_GOT_NOTHING || cc == CURLE_OPERATION_TIMEDOUT || cc == CURLE_HTTP2 ||
           cc == CURLE_HTTP2_STREAM;
}

/* What to do with a layer transfer that ended: 0 done, 1 run it again, < 0 fail the pull. */
static int layer_ended(struct pull *p, struct xfer *x, CURLcode cc)
{
    int r;
    if (x->sink_err == -EBADMSG) {
        part_close(x, 1);
        return pull_fail(p, -EBADMSG, "layer %s of %s is larger than the %lld bytes announced",
                         x->layer->digest, p->refstr, (long long)x->layer->size);
    }
    if (x->sink_err == -EAGAIN && !x->restarted)
        return (r = part_restart(p, x)) < 0 ? r : 1;
    if (x->sink_err) {
        part_close(x, x->sink_err == -ENOSPC);
        return pull_fail(p, x->sink_err == -EAGAIN ? -EPROTO : x->sink_err, "layer %s of %s: %s",
                         x->layer->digest, p->refstr,
                         x->sink_err == -EAGAIN ? "the registry answered the wrong range"
                                                : strerror(-x->sink_err));
    }
    if (cc != CURLE_OK && transient(cc) && ++x->attempts < REGISTRY_ATTEMPTS) {
        x->offset = x->got;
        x->resumed |= x->got > 0;
        return 1;
    }
    if (cc == CURLE_OK && x->status == 401 && !x->reauthed) {
        char challenge[sizeof(x->www_auth)];
        memcpy(challenge, x->www_auth, sizeof(challenge));
        x->reauthed = 1;
        x->offset = x->got;
        x->resumed |= x->got > 0;
        return (r = pull_authenticate(p, challenge)) < 0 ? r : 1;
    }
    if (cc == CURLE_OK && x->status == 416 && x->offset > 0 && !x->restarted)
        return (r = part_restart(p, x)) < 0 ? r : 1;
    if (cc != CURLE_OK || (x->status != 200 && x->status != 206)) {
        char what[96];
        snprintf(what, sizeof(what), "layer %s", x->layer->digest);
        return xfer_error(x, cc, what);
    }
    return part_finish(p, x);
}

static int layer_start(struct pull *p, CURLM *multi, struct xfer *x)
{
    char path[700];
    int r;
    xfer_release(x);
    snprintf(path, sizeof(path), "/v2/%s/blobs/%s", p->ref->repository, x->layer->digest);
    if ((r = xfer_prepare(x, path, NULL, 1)) < 0)
        return r;
    return curl_multi_add_handle(multi, x->h) == CURLM_OK ? 0 : -ENOMEM;
}

/* Runs the transfers xs[0..n) to completion, REGISTRY_PARALLEL at a time. A transfer is either
 * queued or running, so a ring of n holds the queue. */
static int run_layers(struct pull *p, struct xfer **xs, size_t n)
{
    CURLM *multi = curl_multi_init();
    struct xfer *queue[MANIFEST_MAX_LAYERS];
    size_t qhead = 0, queued = 0, active = 0;
    int r = 0;
    if (!multi)
        return -ENOMEM;
    for (; queued < n; queued++)
        queue[queued] = xs[queued];
    while (r == 0 && (queued > 0 || active > 0)) {
        while (r == 0 && active < REGISTRY_PARALLEL && queued > 0) {
            struct xfer *x = queue[qhead];
            qhead = (qhead + 1) % n;
            queued--;
            if (x->got == x->layer->size && x->got > 0) {
                /* A complete partial file from an earlier pull: only the check is left. */
                int f = part_finish(p, x);
                if (f == 1)
                    queue[(qhead + queued++) % n] = x;
                r = f < 0 ? f : 0;
                continue;
            }
            if ((r = layer_start(p, multi, x)) == 0)
                active++;
        }
        if (r < 0 || active == 0)
            continue;
        int running;
        CURLMcode mc = curl_multi_perform(multi, &running);
        if (mc == CURLM_OK)
            mc = curl_multi_poll(multi, NULL, 0, 1000, NULL);
        if (mc != CURLM_OK) {
            r = pull_fail(p, -ENOMEM, "curl: %s", curl_multi_strerror(mc));
            break;
        }
        CURLMsg *m;
        int left;
        while (r == 0 && (m = curl_multi_info_read(multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            struct xfer *x;
            CURLcode cc = m->data.result;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            curl_multi_remove_handle(multi, x->h);
            active--;
            int e = layer_ended(p, x, cc);
            xfer_release(x);
            if (e == 1)
                queue[(qhead + queued++) % n] = x;
            else if (e < 0)
                r = e;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (xs[i]->h) {
            curl_multi_remove_handle(multi, xs[i]->h);
            xfer_release(xs[i]);
        }
    curl_multi_cleanup(multi);
    return r;
}

int pull_layers(struct pull *p, const struct image_layer *layers, size_t n)
{
    struct xfer *xs = calloc(n ? n : 1, sizeof(*xs));
    struct xfer *ready[MANIFEST_MAX_LAYERS], *busy[MANIFEST_MAX_LAYERS];
    size_t n_ready = 0, n_busy = 0;
    int r = 0;
    if (!xs)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        xfer_init(&xs[i], p);
    for (size_t i = 0; i < n && r == 0; i++) {
        struct xfer *x = &xs[i];
        x->layer = &layers[i];
        blob_paths(p, x->layer->digest, x->final, x->part);
        if (blob_present(x->final, x->layer->size)) {
            pull_progress(p, x->layer->size, 0);
            continue;
        }
        /* The same layer twice in one image: the first one fetches it. */
        int dup = 0;
        for (size_t j = 0; j < i; j++)
            dup |= strcmp(layers[j].digest, x->layer->digest) == 0;
        if (dup) {
            pull_progress(p, x->layer->size, 0);
            continue;
        }
        r = part_open(p, x, 0);
        if (r == -EWOULDBLOCK)
            busy[n_busy++] = x;
        else if (r == 1)
            pull_progress(p, x->layer->size, 0);
        else if (r == 0)
            ready[n_ready++] = x;
        r = r < 0 && r != -EWOULDBLOCK ? r : 0;
    }
    if (r == 0)
        r = run_layers(p, ready, n_ready);
    /* Layers another pull was fetching: wait for it, then take what it left. */
    for (size_t i = 0; i < n_busy && r == 0; i++) {
        struct xfer *x = busy[i];
        r = part_open(p, x, 1);
        if (r == 1) {
            pull_progress(p, x->layer->size, 0);
            r = 0;
        } else if (r == 0) {
            r = run_layers(p, &x, 1);
        }
    }
    for (size_t i = 0; i < n && r == 0; i++)
        if (!blob_present(xs[i].final, layers[i].size))
            r = pull_fail(p, -EIO, "layer %s of %s is missing after its download", layers[i].digest,
                          p->refstr);
    for (size_t i = 0; i < n; i++) {
        part_close(&xs[i], 0);
        buf_free(&xs[i].err);
    }
    free(xs);
    pull_progress(p, 0, 1);
    return r;
}
