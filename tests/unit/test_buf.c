/* Unit tests for core/buf. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"

static void test_init_empty(void **state)
{
    buf_t b = BUF_INIT;
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    buf_t c;
    memset(&c, 0xff, sizeof(c));
    buf_init(&c);
    assert_null(c.data);
    assert_int_equal(c.len, 0);
    assert_int_equal(c.cap, 0);
    buf_free(&b); /* freeing an unused buffer is fine */
    buf_free(&c);
}

static void test_append(void **state)
{
    buf_t b = BUF_INIT;
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    assert_int_equal(b.len, 3);
    assert_string_equal(b.data, "abc");
    assert_int_equal(buf_append_str(&b, "def"), 0);
    assert_string_equal(b.data, "abcdef");
    assert_true(b.cap > b.len);

    /* Zero-length appends allocate (data becomes a valid "") and do not change the content. */
    buf_t e = BUF_INIT;
    assert_int_equal(buf_append(&e, NULL, 0), 0);
    assert_non_null(e.data);
    assert_string_equal(e.data, "");
    assert_int_equal(e.len, 0);
    buf_free(&e);

    /* Embedded NUL bytes are kept; the terminator sits past len. */
    assert_int_equal(buf_append(&b, "x\0y", 3), 0);
    assert_int_equal(b.len, 9);
    assert_memory_equal(b.data + 6, "x\0y", 3);
    assert_int_equal(b.data[9], '\0');
    buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);

    /* Reusable after free. */
    assert_int_equal(buf_append_str(&b, "again"), 0);
    assert_string_equal(b.data, "again");
    buf_free(&b);
}

static void test_append_large(void **state)
{
    buf_t b = BUF_INIT;
    char chunk[1000];
    memset(chunk, 'z', sizeof(chunk));
    for (int i = 0; i < 1000; i++)
        assert_int_equal(buf_append(&b, chunk, sizeof(chunk)), 0);
    assert_int_equal(b.len, 1000000);
    assert_true(b.cap >= b.len + 1);
    assert_int_equal(b.data[999999], 'z');
    assert_int_equal(b.data[1000000], '\0');
    buf_free(&b);
}

static void test_appendf(void **state)
{
    buf_t b = BUF_INIT;
    assert_int_equal(buf_appendf(&b, "%d-%s", 42, "x"), 0);
    assert_string_equal(b.data, "42-x");
    assert_int_equal(b.len, 4);
    /* Empty format output on an empty buffer still yields a string. */
    buf_t e = BUF_INIT;
    assert_int_equal(buf_appendf(&e, "%s", ""), 0);
    assert_non_null(e.data);
    assert_string_equal(e.data, "");
    buf_free(&e);

    /* Output larger than the spare room forces a grow and a second vsnprintf. */
    char big[5000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(buf_appendf(&b, "[%s]", big), 0);
    assert_int_equal(b.len, 4 + 2 + 4999);
    assert_int_equal(b.data[4], '[');
    assert_int_equal(b.data[b.len - 1], ']');
    assert_int_equal(b.data[b.len], '\0');
    assert_int_equal(strlen(b.data), b.len);

    /* Exactly filling the spare room. */
    buf_t f = BUF_INIT;
    assert_int_equal(buf_reserve(&f, 10), 0);
    size_t room = f.cap - 1;
    char *s = malloc(room + 1);
    memset(s, 'a', room);
    s[room] = '\0';
    assert_int_equal(buf_appendf(&f, "%s", s), 0);
    assert_int_equal(f.len, room);
    assert_int_equal(strlen(f.data), room);
    assert_int_equal(buf_appendf(&f, "%s", "b"), 0);
    assert_int_equal(f.len, room + 1);
    assert_int_equal(f.data[room], 'b');
    free(s);
    buf_free(&f);
    buf_free(&b);
}

static void test_consume(void **state)
{
    buf_t b = BUF_INIT;
    buf_append_str(&b, "hello world");
    buf_consume(&b, 0);
    assert_string_equal(b.data, "hello world");
    buf_consume(&b, 6);
    assert_string_equal(b.data, "world");
    assert_int_equal(b.len, 5);
    buf_consume(&b, 5);
    assert_int_equal(b.len, 0);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    /* Consuming from an unallocated buffer is a no-op. */
    buf_t e = BUF_INIT;
    buf_consume(&e, 0);
    assert_null(e.data);
    buf_free(&b);
}

static void test_reset(void **state)
{
    buf_t b = BUF_INIT;
    buf_reset(&b); /* unallocated: no-op */
    assert_null(b.data);
    buf_append_str(&b, "abc");
    size_t cap = b.cap;
    char *p = b.data;
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap);
    assert_ptr_equal(b.data, p);
    assert_string_equal(b.data, "");
    buf_free(&b);
}

static void test_steal(void **state)
{
    buf_t b = BUF_INIT;
    char *s = buf_steal(&b);
    assert_non_null(s);
    assert_string_equal(s, "");
    free(s);
    assert_null(b.data);

    buf_append_str(&b, "owned");
    s = buf_steal(&b);
    assert_string_equal(s, "owned");
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    free(s);

    /* The buffer is usable after a steal. */
    buf_append_str(&b, "next");
    assert_string_equal(b.data, "next");
    buf_free(&b);
}

static void test_reserve(void **state)
{
    buf_t b = BUF_INIT;
    assert_int_equal(buf_reserve(&b, 0), 0);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    assert_true(b.cap >= 1);
    assert_int_equal(buf_reserve(&b, 1000), 0);
    assert_true(b.cap >= 1001);
    char *p = b.data;
    size_t cap = b.cap;
    /* Appending within the reservation does not reallocate. */
    char chunk[1000];
    memset(chunk, 'r', sizeof(chunk));
    assert_int_equal(buf_append(&b, chunk, sizeof(chunk)), 0);
    assert_ptr_equal(b.data, p);
    assert_int_equal(b.cap, cap);

    /* Impossible sizes fail with -ENOMEM and leave the buffer untouched. */
    assert_int_equal(buf_reserve(&b, SIZE_MAX), -ENOMEM);
    assert_int_equal(buf_reserve(&b, SIZE_MAX - b.len), -ENOMEM);
    assert_int_equal(buf_append(&b, "x", SIZE_MAX), -ENOMEM);
    assert_ptr_equal(b.data, p);
    assert_int_equal(b.len, 1000);
    assert_int_equal(b.data[1000], '\0');
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_empty),   cmocka_unit_test(test_append),
        cmocka_unit_test(test_append_large), cmocka_unit_test(test_appendf),
        cmocka_unit_test(test_consume),      cmocka_unit_test(test_reset),
        cmocka_unit_test(test_steal),        cmocka_unit_test(test_reserve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
