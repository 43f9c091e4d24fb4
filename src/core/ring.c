/*
 * ring — a fixed-size ring buffer addressed by stream offset. See ring.h.
 */
#include "core/ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

void ring_free(struct ring *r)
{
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
    size_t pos = (size_t)(r->end % r->cap);
    size_t first = r->cap - pos < len ? r->cap - pos : len;
    memcpy(r->data + pos, p, first);
    memcpy(r->data, p + first, len - first);
    r->end += len;
    if (r->end - r->start > r->cap)
        r->start = r->end - r->cap;
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
