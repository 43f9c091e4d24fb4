/* Unit tests for core/ring: wraparound, oversized writes, boundaries, gaps, 64-bit offsets, and
 * shared rings (a memfd another mapping takes over at the same offsets). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/ring.h"

static void test_init_free(void **state)
{
    struct ring r;
    assert_int_equal(ring_init(&r, 0), -EINVAL);
    ring_free(&r); /* harmless after a failed init */
    assert_int_equal(ring_init(&r, 8), 0);
    assert_int_equal(r.cap, 8);
    assert_int_equal(r.start, 0);
    assert_int_equal(r.end, 0);
    char out[8];
    uint64_t gap = 99;
    assert_int_equal(ring_read(&r, 0, out, sizeof(out), &gap), 0);
    assert_int_equal(gap, 0);
    const char *p = out;
    assert_int_equal(ring_peek(&r, 0, &p, &gap), 0);
    assert_null(p);
    ring_free(&r);
    ring_free(&r); /* twice is fine */
    assert_null(r.data);
}

static void test_simple_and_offsets(void **state)
{
    struct ring r;
    assert_int_equal(ring_init(&r, 8), 0);
    ring_write(&r, "abc", 3);
    ring_write(&r, "", 0);
    ring_write(&r, NULL, 0);
    assert_int_equal(r.end, 3);
    char out[16];
    uint64_t gap;
    assert_int_equal(ring_read(&r, 0, out, sizeof(out), &gap), 3);
    assert_int_equal(gap, 0);
    assert_memory_equal(out, "abc", 3);
    assert_int_equal(ring_read(&r, 1, out, sizeof(out), &gap), 2);
    assert_memory_equal(out, "bc", 2);
    assert_int_equal(ring_read(&r, 1, out, 1, NULL), 1);
    assert_memory_equal(out, "b", 1);
    assert_int_equal(ring_read(&r, 0, out, 0, &gap), 0);
    /* At and past the end: nothing, no gap. */
    assert_int_equal(ring_read(&r, 3, out, sizeof(out), &gap), 0);
    assert_int_equal(gap, 0);
    assert_int_equal(ring_read(&r, 1000, out, sizeof(out), &gap), 0);
    assert_int_equal(gap, 0);
    ring_free(&r);
}

static void test_exact_fill_and_wrap(void **state)
{
    struct ring r;
    assert_int_equal(ring_init(&r, 8), 0);
    char out[16];
    uint64_t gap;
    ring_write(&r, "01234567", 8); /* exactly full: nothing lost */
    assert_int_equal(r.start, 0);
    assert_int_equal(r.end, 8);
    assert_int_equal(ring_read(&r, 0, out, sizeof(out), &gap), 8);
    assert_int_equal(gap, 0);
    assert_memory_equal(out, "01234567", 8);

    ring_write(&r, "89", 2); /* overwrites "01" */
    assert_int_equal(r.start, 2);
    assert_int_equal(r.end, 10);
    assert_int_equal(ring_read(&r, 0, out, sizeof(out), &gap), 8);
    assert_int_equal(gap, 2);
    assert_memory_equal(out, "23456789", 8);
    /* A read across the physical end is stitched together. */
    assert_int_equal(ring_read(&r, 6, out, sizeof(out), &gap), 4);
    assert_memory_equal(out, "6789", 4);
    assert_int_equal(ring_read(&r, 7, out, 2, &gap), 2);
    assert_memory_equal(out, "78", 2);

    /* Write that wraps in the middle of itself. */
    ring_write(&r, "abcdef", 6); /* positions 2..7, up to the physical end */
    ring_write(&r, "ghij", 4);   /* positions 0..3 */
    assert_int_equal(r.end, 20);
    assert_int_equal(r.start, 12);
    assert_int_equal(ring_read(&r, 12, out, sizeof(out), &gap), 8);
    assert_int_equal(gap, 0);
    assert_memory_equal(out, "cdefghij", 8);
    ring_free(&r);
}

static void test_large_writes(void **state)
{
    struct ring r;
    assert_int_equal(ring_init(&r, 5), 0);
    char out[16];
    uint64_t gap;
    ring_write(&r, "xy", 2);
    ring_write(&r, "0123456789abc", 13); /* larger than cap: only its last 5 bytes survive */
    assert_int_equal(r.end, 15);
    assert_int_equal(r.start, 10);
    assert_int_equal(ring_read(&r, 0, out, sizeof(out), &gap), 5);
    assert_int_equal(gap, 10);
    assert_memory_equal(out, "89abc", 5);
    /* Exactly cap bytes from a non-zero position. */
    ring_write(&r, "VWXYZ", 5);
    assert_int_equal(r.start, 15);
    assert_int_equal(ring_read(&r, 14, out, sizeof(out), &gap), 5);
    assert_int_equal(gap, 1);
    assert_memory_equal(out, "VWXYZ", 5);
    ring_free(&r);
}

static void test_peek(void **state)
{
    struct ring r;
    assert_int_equal(ring_init(&r, 8), 0);
    const char *p;
    uint64_t gap;
    ring_write(&r, "0123456789", 10); /* storage: "89234567", start 2 */
    size_t n = ring_peek(&r, 0, &p, &gap);
    assert_int_equal(gap, 2);
    assert_int_equal(n, 6); /* "234567" up to the physical end */
    assert_memory_equal(p, "234567", 6);
    n = ring_peek(&r, 8, &p, &gap);
    assert_int_equal(gap, 0);
    assert_int_equal(n, 2);
    assert_memory_equal(p, "89", 2);
    n = ring_peek(&r, 9, &p, &gap);
    assert_int_equal(n, 1);
    assert_memory_equal(p, "9", 1);
    n = ring_peek(&r, 10, &p, &gap);
    assert_int_equal(n, 0);
    assert_null(p);
    /* Bounded by end, not by the storage, when the data does not reach the physical end. */
    struct ring s;
    assert_int_equal(ring_init(&s, 8), 0);
    ring_write(&s, "abc", 3);
    n = ring_peek(&s, 1, &p, NULL);
    assert_int_equal(n, 2);
    assert_memory_equal(p, "bc", 2);
    ring_free(&s);
    ring_free(&r);
}

/* Reads the whole stream back in small pieces, following the offset protocol, and checks that
 * every byte either arrives in order or is accounted for by a gap. */
static void test_reader_protocol(void **state)
{
    struct ring r;
    assert_int_equal(ring_init(&r, 7), 0);
    uint64_t off = 0, seen = 0, missed = 0;
    unsigned char next = 0;
    for (int round = 0; round <= 500; round++) {
        unsigned char chunk[13];
        size_t len = (size_t)(round % 13);
        for (size_t i = 0; i < len; i++)
            chunk[i] = (unsigned char)(r.end + i);
        ring_write(&r, chunk, len);
        if (round % 5 != 0)
            continue; /* the reader lags behind (and catches up at round 500) */
        unsigned char out[3];
        size_t n;
        uint64_t gap;
        while ((n = ring_read(&r, off, out, sizeof(out), &gap)) > 0) {
            missed += gap;
            off += gap;
            next = (unsigned char)off;
            for (size_t i = 0; i < n; i++)
                assert_int_equal(out[i], (unsigned char)(next + i));
            off += n;
            seen += n;
        }
        assert_int_equal(off, r.end);
    }
    assert_int_equal(seen + missed, r.end);
    assert_true(missed > 0);
    ring_free(&r);
}

/* Offsets beyond 4 GiB. Pushing that much data through the ring would be slow, so the stream is
 * positioned there directly: any start == end with `end` arbitrary is a valid empty state. */
static void test_huge_offsets(void **state)
{
    struct ring r;
    assert_int_equal(ring_init(&r, 10), 0);
    const uint64_t base = (UINT64_C(1) << 32) - 4; /* straddles 2^32 */
    r.start = r.end = base;
    char out[16];
    uint64_t gap;
    ring_write(&r, "abcdefgh", 8);
    assert_int_equal(r.end, base + 8);
    assert_int_equal(ring_read(&r, base, out, sizeof(out), &gap), 8);
    assert_int_equal(gap, 0);
    assert_memory_equal(out, "abcdefgh", 8);
    assert_int_equal(ring_read(&r, base + 4, out, sizeof(out), &gap), 4);
    assert_memory_equal(out, "efgh", 4);
    ring_write(&r, "ijklm", 5);
    assert_int_equal(r.start, base + 3);
    assert_int_equal(ring_read(&r, 0, out, sizeof(out), &gap), 10);
    assert_true(gap == base + 3); /* a gap larger than 32 bits */
    assert_memory_equal(out, "defghijklm", 10);

    const uint64_t far = UINT64_C(5) << 32 | 12345;
    r.start = r.end = far;
    ring_write(&r, "0123456789xyz", 13);
    assert_true(r.end == far + 13);
    assert_true(r.start == far + 3);
    assert_int_equal(ring_read(&r, far, out, sizeof(out), &gap), 10);
    assert_int_equal(gap, 3);
    assert_memory_equal(out, "3456789xyz", 10);
    /* An offset that would alias a valid position modulo 2^32 must not. */
    assert_int_equal(ring_read(&r, far + 3 - (UINT64_C(1) << 32), out, 1, &gap), 1);
    assert_true(gap == UINT64_C(1) << 32);
    assert_int_equal(ring_read(&r, far + 13 + (UINT64_C(1) << 32), out, 1, &gap), 0);
    const char *p;
    size_t n = ring_peek(&r, far + 10, &p, &gap);
    assert_true(n >= 1 && n <= 3);
    assert_memory_equal(p, "xyz", n);
    ring_free(&r);
}

/* A shared ring mapped again (as a restarted daemon does) has the same bytes at the same offsets,
 * and writing through the new mapping continues the stream. */
static void test_shared_attach(void **state)
{
    struct ring a, b;
    int fd = -1;
    char out[32];
    uint64_t gap;
    assert_int_equal(ring_init_shared(&a, 0, &fd), -EINVAL);
    assert_int_equal(ring_init_shared(&a, 10, &fd), 0);
    assert_true(fd >= 0);
    ring_write(&a, "0123456", 7);
    assert_int_equal(ring_attach(&b, fd), 0);
    assert_int_equal(b.cap, 10);
    assert_int_equal(b.start, 0);
    assert_int_equal(b.end, 7);
    assert_int_equal(ring_read(&b, 2, out, sizeof(out), &gap), 5);
    assert_memory_equal(out, "23456", 5);
    ring_free(&a); /* the first mapping goes (a crash): the memfd keeps everything */
    ring_write(&b, "789abcd", 7);
    assert_int_equal(b.start, 4);
    assert_int_equal(ring_attach(&a, fd), 0);
    assert_int_equal(a.start, 4);
    assert_int_equal(a.end, 14);
    assert_int_equal(ring_read(&a, 0, out, sizeof(out), &gap), 10);
    assert_int_equal(gap, 4);
    assert_memory_equal(out, "456789abcd", 10);
    ring_free(&a);
    ring_free(&b);
    ring_free(&b); /* harmless twice */
    close(fd);
}

/* ring_attach refuses what is not a ring. */
static void test_shared_attach_rejects(void **state)
{
    struct ring r;
    int fd = memfd_create("not-a-ring", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ring_attach(&r, fd), -EINVAL); /* empty */
    assert_int_equal(ftruncate(fd, 4096 + 16), 0);
    assert_int_equal(ring_attach(&r, fd), -EINVAL); /* no magic */
    close(fd);
    assert_int_equal(ring_attach(&r, -1), -EBADF);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_free),
        cmocka_unit_test(test_simple_and_offsets),
        cmocka_unit_test(test_exact_fill_and_wrap),
        cmocka_unit_test(test_large_writes),
        cmocka_unit_test(test_peek),
        cmocka_unit_test(test_reader_protocol),
        cmocka_unit_test(test_huge_offsets),
        cmocka_unit_test(test_shared_attach),
        cmocka_unit_test(test_shared_attach_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
