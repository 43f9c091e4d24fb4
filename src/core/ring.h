/*
 * ring — a fixed-size ring buffer addressed by stream offset.
 *
 * The ring keeps the most recent `cap` bytes of an unbounded byte stream (a process's output, say).
 * Every byte has a 64-bit stream offset: the first byte ever written is offset 0 and `end` is the
 * total number of bytes ever written, so offsets never repeat and readers can hold on to an offset
 * across writes and learn exactly how much they missed when the writer laps them. Bytes
 * [start, end) are available; end - start <= cap.
 *
 * The struct is public so it can be embedded; treat the fields as read-only. The ring does no
 * locking: callers serialize access.
 *
 * A shared ring (ring_init_shared) lives in a memfd: a header page holding its size and the
 * write total, then the data. The total is published after the bytes it covers are written, so a
 * process that maps the same memfd later (ring_attach), e.g. after the writer crashed, finds every
 * byte written before the last completed ring_write at its offset.
 */
#ifndef WARREN_CORE_RING_H
#define WARREN_CORE_RING_H

#include <stddef.h>
#include <stdint.h>

struct ring_shared;

struct ring {
    char *data; /* cap bytes; offset o lives at data[o % cap] */
    size_t cap;
    uint64_t start;             /* oldest available offset */
    uint64_t end;               /* one past the newest byte = total bytes ever written */
    struct ring_shared *shared; /* the memfd's header (shared rings), or NULL */
};

/* Allocates `cap` bytes (cap > 0) for an empty stream at offset 0. Returns 0, -EINVAL for cap 0
 * or -ENOMEM (the ring is then zeroed, and ring_free on it is harmless). */
int ring_init(struct ring *r, size_t cap);
/* A ring in a new memfd (close-on-exec), returned in *fd (the caller's to close; the mapping
 * stays valid without it). Returns 0, -EINVAL for cap 0, or -errno. */
int ring_init_shared(struct ring *r, size_t cap, int *fd);
/* Maps the shared ring of memfd `fd` (not taken over), continuing at its published total.
 * Returns 0, -EINVAL when `fd` holds no ring, or -errno. */
int ring_attach(struct ring *r, int fd);
/* Releases the storage and zeroes the ring. Safe on a zeroed ring and when called twice. */
void ring_free(struct ring *r);
/* Appends `len` bytes, overwriting the oldest ones when the ring is full (a write of cap bytes or
 * more leaves only its last cap bytes). Never fails. */
void ring_write(struct ring *r, const void *data, size_t len);
/* Copies up to `max` bytes starting at stream offset `offset` into `out`. If `offset` < start the
 * bytes before start are gone: *gap receives start - offset and reading begins at start; otherwise
 * *gap is 0 (gap may be NULL). If the (adjusted) offset is >= end, returns 0. Returns the number of
 * bytes copied; the next unread offset is then offset + *gap + the returned count. */
size_t ring_read(const struct ring *r, uint64_t offset, void *out, size_t max, uint64_t *gap);
/* Zero-copy variant: points *ptr at the bytes at `offset` (adjusted by *gap as for ring_read) and
 * returns the length of the longest contiguous run there, which stops at end or at the physical
 * end of the storage (call again at offset + *gap + n for the rest). Returns 0 with *ptr NULL when
 * nothing is available. *ptr stays valid until the next ring_write or ring_free. */
size_t ring_peek(const struct ring *r, uint64_t offset, const char **ptr, uint64_t *gap);

#endif
