/* Unit tests for session/asciicast: JSON validity, UTF-8 handling, offsets, dropping. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session/asciicast.h"

#define T0 1700000000.25
#define FFFD "\xef\xbf\xbd" /* U+FFFD in UTF-8 */

/* Splits text into lines (each must end in '\n'), parses each as JSON and returns them in an
 * array (the caller decrefs). */
static json_t *parse_lines(const char *text, size_t len)
{
    json_t *arr = json_array();
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        assert_non_null(nl);
        size_t n = (size_t)(nl - (text + pos));
        json_error_t err;
        json_t *v = json_loadb(text + pos, n, JSON_ALLOW_NUL, &err);
        if (!v)
            fail_msg("line %.*s: %s", (int)n, text + pos, err.text);
        json_array_append_new(arr, v);
        pos += n + 1;
    }
    return arr;
}

static json_t *read_all(struct asciicast *c, uint64_t since, uint64_t *next)
{
    size_t len;
    uint64_t nx;
    char *text = asciicast_read(c, since, &len, &nx);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    json_t *arr = parse_lines(text, len);
    free(text);
    if (next)
        *next = nx;
    return arr;
}

/* Checks that event i of arr is [t, type, data]. */
static void check_event(json_t *arr, size_t i, double t, const char *type, const char *data,
                        size_t data_len)
{
    json_t *ev = json_array_get(arr, i);
    assert_true(json_is_array(ev));
    assert_int_equal(json_array_size(ev), 3);
    assert_true(json_is_real(json_array_get(ev, 0)));
    double got = json_real_value(json_array_get(ev, 0));
    if (got < t - 1e-6 || got > t + 1e-6)
        fail_msg("event %zu time %f, want %f", i, got, t);
    assert_string_equal(json_string_value(json_array_get(ev, 1)), type);
    json_t *d = json_array_get(ev, 2);
    assert_int_equal(json_string_length(d), data_len);
    assert_memory_equal(json_string_value(d), data, data_len);
}

static void test_header(void **state)
{
    struct asciicast *c = asciicast_new(80, 24, T0, "xterm-256color", "/bin/bash", 1 << 20);
    assert_non_null(c);
    uint64_t next;
    json_t *arr = read_all(c, 0, &next);
    assert_int_equal(json_array_size(arr), 1);
    json_t *h = json_array_get(arr, 0);
    assert_int_equal(json_integer_value(json_object_get(h, "version")), 2);
    assert_int_equal(json_integer_value(json_object_get(h, "width")), 80);
    assert_int_equal(json_integer_value(json_object_get(h, "height")), 24);
    assert_true(json_is_integer(json_object_get(h, "timestamp")));
    assert_int_equal(json_integer_value(json_object_get(h, "timestamp")), 1700000000);
    json_t *env = json_object_get(h, "env");
    assert_string_equal(json_string_value(json_object_get(env, "TERM")), "xterm-256color");
    assert_string_equal(json_string_value(json_object_get(env, "SHELL")), "/bin/bash");
    assert_int_equal(next, asciicast_end(c));
    json_decref(arr);
    asciicast_free(c);

    /* Optional env entries, and hostile values are escaped. */
    c = asciicast_new(10, 5, T0, NULL, "/bin/\"odd\"\n\xff", 1 << 20);
    arr = read_all(c, 0, NULL);
    env = json_object_get(json_array_get(arr, 0), "env");
    assert_null(json_object_get(env, "TERM"));
    assert_string_equal(json_string_value(json_object_get(env, "SHELL")),
                        "/bin/\"odd\"\n\xef\xbf\xbd");
    json_decref(arr);
    asciicast_free(c);
    c = asciicast_new(10, 5, T0, NULL, NULL, 1 << 20);
    arr = read_all(c, 0, NULL);
    assert_int_equal(json_object_size(json_object_get(json_array_get(arr, 0), "env")), 0);
    json_decref(arr);
    asciicast_free(c);
    asciicast_free(NULL);
}

static void test_events(void **state)
{
    struct asciicast *c = asciicast_new(80, 24, T0, "xterm", "/bin/sh", 1 << 20);
    assert_int_equal(asciicast_output(c, 0.5, "hello\r\n", 7), 0);
    assert_int_equal(asciicast_input(c, 1.25, "ls\r", 3), 0);
    assert_int_equal(asciicast_resize(c, 2, 100, 30), 0);
    /* Every control character, quotes, backslash, DEL and a NUL survive the round trip. */
    char all[41];
    for (int i = 0; i < 32; i++)
        all[i] = (char)i;
    memcpy(all + 32, "\"\\\x7f/\xc3\xa9\xe2\x82\xac", 9);
    assert_int_equal(asciicast_output(c, 3.000001, all, sizeof(all)), 0);
    /* A clock going back is clamped. */
    assert_int_equal(asciicast_output(c, 1, "x", 1), 0);
    assert_int_equal(asciicast_output(c, 4, "", 0), 0); /* nothing to record */

    json_t *arr = read_all(c, 0, NULL);
    assert_int_equal(json_array_size(arr), 6);
    check_event(arr, 1, 0.5, "o", "hello\r\n", 7);
    check_event(arr, 2, 1.25, "i", "ls\r", 3);
    check_event(arr, 3, 2, "r", "100x30", 6);
    check_event(arr, 4, 3.000001, "o", all, sizeof(all));
    check_event(arr, 5, 3.000001, "o", "x", 1);
    json_decref(arr);

    /* Times have exactly six decimals. */
    size_t len;
    uint64_t next;
    char *text = asciicast_read(c, 0, &len, &next);
    assert_non_null(strstr(text, "\n[0.500000, \"o\", \"hello\\r\\n\"]\n"));
    assert_non_null(strstr(text, "\n[2.000000, \"r\", \"100x30\"]\n"));
    free(text);
    asciicast_free(c);
}

static void test_utf8_split_and_invalid(void **state)
{
    struct asciicast *c = asciicast_new(80, 24, T0, NULL, NULL, 1 << 20);
    /* "é€😀" cut in every possible place, one byte per call. */
    const char *s = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    for (int i = 0; i < 9; i++)
        assert_int_equal(asciicast_output(c, 1, s + i, 1), 0);
    /* A cut sequence, then more text in the same call. */
    assert_int_equal(asciicast_output(c, 2, "ab\xe2\x82", 4), 0);
    assert_int_equal(asciicast_output(c, 2,
                                      "\xac"
                                      "cd",
                                      3),
                     0);
    /* A held-back start that is not continued becomes U+FFFD. */
    assert_int_equal(asciicast_output(c, 3, "x\xe2", 2), 0);
    assert_int_equal(asciicast_output(c, 3, "y", 1), 0);
    /* Invalid bytes: stray continuation, overlong, surrogate, above U+10FFFF, 0xff. */
    static const char bad1[] = "a\x80"
                               "b\xc0\xaf"
                               "c\xed\xa0\x80"
                               "d";
    static const char bad2[] = "\xf4\x90\x80\x80"
                               "e\xff";
    assert_int_equal(asciicast_output(c, 4, bad1, sizeof(bad1) - 1), 0);
    assert_int_equal(asciicast_output(c, 4, bad2, sizeof(bad2) - 1), 0);
    /* Input keeps its own tail, independent of output's. */
    assert_int_equal(asciicast_output(c, 5, "\xc3", 1), 0);
    assert_int_equal(asciicast_input(c, 5, "i\xe2\x82", 3), 0);
    assert_int_equal(asciicast_output(c, 5, "\xa9", 1), 0);
    assert_int_equal(asciicast_input(c, 5, "\xac", 1), 0);

    json_t *arr = read_all(c, 0, NULL);
    size_t i = 1;
    check_event(arr, i++, 1, "o", "\xc3\xa9", 2);
    check_event(arr, i++, 1, "o", "\xe2\x82\xac", 3);
    check_event(arr, i++, 1, "o", "\xf0\x9f\x98\x80", 4);
    check_event(arr, i++, 2, "o", "ab", 2);
    check_event(arr, i++, 2, "o",
                "\xe2\x82\xac"
                "cd",
                5);
    check_event(arr, i++, 3, "o", "x", 1);
    check_event(arr, i++, 3, "o", FFFD "y", 4);
    /* Maximal subparts: \x80 one; \xc0 and \xaf one each; \xed, \xa0, \x80 one each. */
    static const char fixed1[] = "a" FFFD "b" FFFD FFFD "c" FFFD FFFD FFFD "d";
    static const char fixed2[] = FFFD FFFD FFFD FFFD "e" FFFD;
    check_event(arr, i++, 4, "o", fixed1, sizeof(fixed1) - 1);
    check_event(arr, i++, 4, "o", fixed2, sizeof(fixed2) - 1);
    check_event(arr, i++, 5, "i", "i", 1);
    check_event(arr, i++, 5, "o", "\xc3\xa9", 2);
    check_event(arr, i++, 5, "i", "\xe2\x82\xac", 3);
    assert_int_equal(json_array_size(arr), i);
    json_decref(arr);
    asciicast_free(c);
}

static void test_since(void **state)
{
    struct asciicast *c = asciicast_new(80, 24, T0, "xterm", NULL, 1 << 20);
    size_t len;
    uint64_t next, end0 = asciicast_end(c);
    char *text = asciicast_read(c, 0, &len, &next);
    assert_int_equal(next, end0);
    assert_int_equal(len, end0); /* the header is all there is */
    free(text);
    /* Nothing new. */
    text = asciicast_read(c, next, &len, &next);
    assert_int_equal(len, 0);
    assert_string_equal(text, "");
    assert_int_equal(next, end0);
    free(text);

    assert_int_equal(asciicast_output(c, 1, "one", 3), 0);
    uint64_t after_one = asciicast_end(c);
    assert_int_equal(asciicast_output(c, 2, "two", 3), 0);
    /* From the previous position: just the new events. */
    json_t *arr = read_all(c, end0, &next);
    assert_int_equal(json_array_size(arr), 2);
    check_event(arr, 0, 1, "o", "one", 3);
    json_decref(arr);
    assert_int_equal(next, asciicast_end(c));
    /* Exactly at a line start. */
    arr = read_all(c, after_one, NULL);
    assert_int_equal(json_array_size(arr), 1);
    check_event(arr, 0, 2, "o", "two", 3);
    json_decref(arr);
    /* Inside a line: from the next one. */
    arr = read_all(c, end0 + 1, NULL);
    assert_int_equal(json_array_size(arr), 1);
    check_event(arr, 0, 2, "o", "two", 3);
    json_decref(arr);
    arr = read_all(c, after_one - 1, NULL); /* on the '\n' of "one" */
    assert_int_equal(json_array_size(arr), 1);
    json_decref(arr);
    arr = read_all(c, after_one + 1, NULL);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    /* Inside the header: the events, without the header. */
    arr = read_all(c, 5, NULL);
    assert_int_equal(json_array_size(arr), 2);
    check_event(arr, 0, 1, "o", "one", 3);
    json_decref(arr);
    /* Beyond the end: nothing, and next points at the end. */
    text = asciicast_read(c, asciicast_end(c) + 1000, &len, &next);
    assert_int_equal(len, 0);
    assert_int_equal(next, asciicast_end(c));
    free(text);
    asciicast_free(c);
}

static void test_dropping(void **state)
{
    struct asciicast *c = asciicast_new(80, 24, T0, "xterm", NULL, 600);
    size_t len;
    uint64_t next;
    char *text = asciicast_read(c, 0, &len, &next);
    size_t hlen = len;
    free(text);
    /* Each event is exactly 30 bytes: [1.000000, "o", "0123456789"]\n */
    char data[16];
    uint64_t offsets[200];
    for (int i = 0; i < 200; i++) {
        offsets[i] = asciicast_end(c);
        snprintf(data, sizeof(data), "%010d", i);
        assert_int_equal(asciicast_output(c, 1, data, 10), 0);
    }
    assert_int_equal(asciicast_end(c), hlen + 200 * 30);
    text = asciicast_read(c, 0, &len, &next);
    assert_true(len <= 600);
    assert_true(len > 600 - 30);
    assert_int_equal(next, hlen + 200 * 30);
    json_t *arr = parse_lines(text, len);
    free(text);
    size_t kept = json_array_size(arr) - 1;
    assert_int_equal(kept, (600 - hlen) / 30);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(json_array_get(arr, 0), "env"), "TERM")),
        "xterm");
    /* The newest events are the ones kept. */
    snprintf(data, sizeof(data), "%010d", 199);
    check_event(arr, kept, 1, "o", data, 10);
    snprintf(data, sizeof(data), "%010zu", 200 - kept);
    check_event(arr, 1, 1, "o", data, 10);
    json_decref(arr);

    /* An offset inside dropped events starts at the oldest kept event. */
    arr = read_all(c, offsets[3] + 7, NULL);
    assert_int_equal(json_array_size(arr), kept);
    check_event(arr, 0, 1, "o", data, 10);
    json_decref(arr);
    /* Offsets of kept events still address them exactly. */
    arr = read_all(c, offsets[197], NULL);
    assert_int_equal(json_array_size(arr), 3);
    json_decref(arr);
    arr = read_all(c, offsets[197] + 1, NULL);
    assert_int_equal(json_array_size(arr), 2);
    json_decref(arr);

    /* An event larger than the limit replaces everything but the header. */
    char big[1000];
    memset(big, 'z', sizeof(big));
    assert_int_equal(asciicast_output(c, 2, big, sizeof(big)), 0);
    arr = read_all(c, 0, NULL);
    assert_int_equal(json_array_size(arr), 2);
    check_event(arr, 1, 2, "o", big, sizeof(big));
    json_decref(arr);
    assert_int_equal(asciicast_output(c, 3, "after", 5), 0);
    arr = read_all(c, 0, NULL);
    assert_int_equal(json_array_size(arr), 2);
    check_event(arr, 1, 3, "o", "after", 5);
    json_decref(arr);
    asciicast_free(c);

    /* A limit below the header: only the header and the newest event. */
    c = asciicast_new(80, 24, T0, "xterm", NULL, 10);
    assert_int_equal(asciicast_output(c, 1, "a", 1), 0);
    assert_int_equal(asciicast_output(c, 1, "b", 1), 0);
    arr = read_all(c, 0, NULL);
    assert_int_equal(json_array_size(arr), 2);
    check_event(arr, 1, 1, "o", "b", 1);
    json_decref(arr);
    asciicast_free(c);
}

/* Many events through a small limit: the content stays consistent with a full recording. */
static void test_long_run(void **state)
{
    struct asciicast *c = asciicast_new(80, 24, T0, NULL, NULL, 4096);
    uint64_t next = 0;
    int expect = 0;
    for (int i = 0; i < 20000; i++) {
        char data[32];
        int n = snprintf(data, sizeof(data), "line %d\r\n", i);
        assert_int_equal(asciicast_output(c, i * 0.001, data, (size_t)n), 0);
        if (i % 7 == 0) {
            /* A reader polling at its own pace sees consecutive events (nothing dropped yet). */
            json_t *arr = read_all(c, next, &next);
            for (size_t k = expect == 0 ? 1 : 0; k < json_array_size(arr); k++) {
                char want[32];
                int wn = snprintf(want, sizeof(want), "line %d\r\n", expect++);
                check_event(arr, k, (expect - 1) * 0.001, "o", want, (size_t)wn);
            }
            json_decref(arr);
        }
    }
    size_t len;
    char *text = asciicast_read(c, 0, &len, &next);
    assert_true(len <= 4096);
    free(text);
    asciicast_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_utf8_split_and_invalid),
        cmocka_unit_test(test_since),
        cmocka_unit_test(test_dropping),
        cmocka_unit_test(test_long_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
