/*
 * ring — a fixed-size ring buffer addressed by stream offset. See ring.h.
 */
#include "core/ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define RING_MAGIC 0x676e6972776e7277ull /* "wrnwring" */
#define RING_HDR 4096                    /* the data starts on its own page */

struct ring_shared {
    uint64_t magic;
    uint64_t cap;
    uint64_t start; /* raised before the bytes below it are overwritten */
    uint64_t end;   /* published after the bytes it covers */
};

int ring_init(struct ring *r, size_t cap)
{
    memset(r, 0, sizeof(*r));
    if (cap == 0)
        return -EINVAL;
    r->data = malloc(cap);
    if (!r->data)
        return -ENOMEM;
    r->cap = cap;
    return 0;
}

static int ring_map(struct ring *r, int fd, size_t cap)
{
    void *p = mmap(NULL, RING_HDR + cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    r->shared = p;
    r->data = (char *)p + RING_HDR;
    r->cap = cap;
    return 0;
}

int ring_init_shared(struct ring *r, size_t cap, int *fd)
{
    memset(r, 0, sizeof(*r));
    if (cap == 0)
        return -EINVAL;
    int m = memfd_create("warren-ring", MFD_CLOEXEC), e;
    if (m < 0)
        return -errno;
    if (ftruncate(m, (off_t)(RING_HDR + cap)) < 0 || (e = ring_map(r, m, cap)) < 0) {
        e = -errno;
        close(m);
        memset(r, 0, sizeof(*r));
        return e;
    }
    r->shared->cap = cap;
    r->shared->start = r->shared->end = 0;
    __atomic_store_n(&r->shared->magic, RING_MAGIC, __ATOMIC_RELEASE);
    *fd = m;
    return 0;
}

int ring_attach(struct ring *r, int fd)
{
    struct stat sb;
    struct ring_shared h;
    memset(r, 0, sizeof(*r));
    if (fstat(fd, &sb) < 0)
        return -errno;
    if (sb.st_size < RING_HDR || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
        h.magic != RING_MAGIC || h.cap == 0 || (uint64_t)sb.st_size != RING_HDR + h.cap)
        return -EINVAL;
    int e = ring_map(r, fd, (size_t)h.cap);
    if (e < 0)
        return e;
    r->end = __atomic_load_n(&r->shared->end, __ATOMIC_ACQUIRE);
    r->start = r->end > r->cap ? r->end - r->cap : 0;
    uint64_t s = __atomic_load_n(&r->shared->start, __ATOMIC_ACQUIRE);
    if (s > r->start)
        r->start = s < r->end ? s : r->end;
    return 0;
}

void ring_free(struct ring *r)
{
    if (r->shared)
        munmap(r->shared, RING_HDR + r->cap);
    else
        free(r->data);
    memset(r, 0, sizeof(*r));
}

void ring_write(struct ring *r, const void *data, size_t len)
{
    const char *p = data;
    if (len == 0)
        return;
    /* Only the last cap bytes of a large write can survive; skip the rest instead of copying bytes
     * that would be overwritten by the same call. */
    if (len > r->cap) {
        p += len - r->cap;
        r->end += len - r->cap;
        len = r->cap;
    }
    /* The bytes about to be overwritten leave the window first: a reader of the memfd after a
     * crash in the middle of this copy must not take them for the old ones. */
    if (r->shared && r->end + len > r->cap)
        __atomic_store_n(&r->shared->start, r->end + len - r->cap, __ATOMIC_RELEASE);
    size_t pos = (size_t)(r->end % r->cap);
    size_t first = r->cap - pos < len ? r->cap - pos : len;
    memcpy(r->data + pos, p, first);
    memcpy(r->data, p + first, len - first);
    r->end += len;
    if (r->end - r->start > r->cap)
        r->start = r->end - r->cap;
    if (r->shared) /* after the bytes: a reader of the memfd never sees a total ahead of them */
        __atomic_store_n(&r->shared->end, r->end, __ATOMIC_RELEASE);
}

/* Clamps `offset` to start (reporting the skipped bytes in *gap) and returns the clamped offset. */
static uint64_t clamp_offset(const struct ring *r, uint64_t offset, uint64_t *gap)
{
    uint64_t skipped = 0;
    if (offset < r->start) {
        skipped = r->start - offset;
        offset = r->start;
    }
    if (gap)
        *gap = skipped;
    return offset;
}

size_t ring_peek(const struct ring *r, uint64_t offset, const char **ptr, uint64_t *gap)
{
    offset = clamp_offset(r, offset, gap);
    *ptr = NULL;
    if (offset >= r->end)
        return 0;
    size_t pos = (size_t)(offset % r->cap);
    uint64_t avail = r->end - offset; /* <= cap, so it fits a size_t */
    size_t n = r->cap - pos < avail ? r->cap - pos : (size_t)avail;
    *ptr = r->data + pos;
    return n;
}

size_t ring_read(const struct ring *r, uint64_t offset, void *out, size_t max, uint64_t *gap)
{
    offset = clamp_offset(r, offset, gap);
    char *o = out;
    size_t done = 0;
    /* At most two runs: up to the physical end of the storage, then from its beginning. */
    while (done < max) {
        const char *p;
        size_t n = ring_peek(r, offset + done, &p, NULL);
        if (n == 0)
            break;
        if (n > max - done)
            n = max - done;
        memcpy(o + done, p, n);
        done += n;
    }
    return done;
}
