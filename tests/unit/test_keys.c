/* Unit tests for session/keys: every key name, modifiers, and what is not a key name. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session/keys.h"

/* Expects `name` to be a key producing exactly `len` bytes `want`. */
static void check_len(const char *name, const char *want, size_t len)
{
    buf_t b = BUF_INIT;
    assert_int_equal(buf_append_str(&b, "pre"), 0);
    int rc = keys_append(&b, name);
    if (rc != 1)
        fail_msg("'%s' is not a key (rc %d)", name, rc);
    if (b.len != 3 + len || memcmp(b.data + 3, want, len) != 0)
        fail_msg("'%s' gave %zu bytes, want %zu", name, b.len - 3, len);
    assert_memory_equal(b.data, "pre", 3);
    buf_free(&b);
}

static void check(const char *name, const char *want)
{
    check_len(name, want, strlen(want));
}

/* Expects `name` not to be a key name: 0 and nothing appended. */
static void check_not_key(const char *name)
{
    buf_t b = BUF_INIT;
    assert_int_equal(buf_append_str(&b, "pre"), 0);
    int rc = keys_append(&b, name);
    if (rc != 0)
        fail_msg("'%s' should not be a key (rc %d)", name, rc);
    assert_int_equal(b.len, 3);
    buf_free(&b);
}

static void test_named(void **state)
{
    check("Enter", "\r");
    check("Tab", "\t");
    check("BTab", "\x1b[Z");
    check("Escape", "\x1b");
    check("BSpace", "\x7f");
    check("Space", " ");
    check("Up", "\x1b[A");
    check("Down", "\x1b[B");
    check("Right", "\x1b[C");
    check("Left", "\x1b[D");
    check("Home", "\x1b[H");
    check("End", "\x1b[F");
    check("IC", "\x1b[2~");
    check("Insert", "\x1b[2~");
    check("DC", "\x1b[3~");
    check("Delete", "\x1b[3~");
    check("PageUp", "\x1b[5~");
    check("PgUp", "\x1b[5~");
    check("PPage", "\x1b[5~");
    check("PageDown", "\x1b[6~");
    check("PgDn", "\x1b[6~");
    check("NPage", "\x1b[6~");
    check("F1", "\x1bOP");
    check("F2", "\x1bOQ");
    check("F3", "\x1bOR");
    check("F4", "\x1bOS");
    check("F5", "\x1b[15~");
    check("F6", "\x1b[17~");
    check("F7", "\x1b[18~");
    check("F8", "\x1b[19~");
    check("F9", "\x1b[20~");
    check("F10", "\x1b[21~");
    check("F11", "\x1b[23~");
    check("F12", "\x1b[24~");
}

static void test_ctrl(void **state)
{
    char name[8], want[2];
    for (char c = 'a'; c <= 'z'; c++) {
        want[0] = (char)(c - 'a' + 1);
        want[1] = '\0';
        snprintf(name, sizeof(name), "C-%c", c);
        check_len(name, want, 1);
        snprintf(name, sizeof(name), "C-%c", c - 'a' + 'A'); /* C-A is C-a */
        check_len(name, want, 1);
        snprintf(name, sizeof(name), "^%c", c);
        check_len(name, want, 1);
        snprintf(name, sizeof(name), "c-%c", c);
        check_len(name, want, 1);
    }
    check_len("C-@", "\0", 1);
    check_len("C-Space", "\0", 1);
    check_len("^@", "\0", 1);
    check("C-[", "\x1b");
    check("C-\\", "\x1c");
    check("C-]", "\x1d");
    check("C-^", "\x1e");
    check("^^", "\x1e");
    check("C-_", "\x1f");
    check("C-?", "\x7f");
    check("^?", "\x7f");
    check("^[", "\x1b");
}

static void test_meta(void **state)
{
    check("M-x", "\x1bx");
    check("m-x", "\x1bx");
    check("M-X", "\x1bX");
    check("M-Enter", "\x1b\r");
    check("M-BSpace", "\x1b\x7f");
    check("M-Escape", "\x1b\x1b");
    check("M-Space", "\x1b ");
    check("M-.", "\x1b.");
    check("M--", "\x1b-");
    check("M-\xc3\xa9", "\x1b\xc3\xa9"); /* M-é */
    check("M-C-a", "\x1b\x01");
    check("C-M-a", "\x1b\x01");
    check("M-^c", "\x1b\x03");
    check("M-BTab", "\x1b\x1b[Z");
}

static void test_shift(void **state)
{
    check("S-a", "A");
    check("S-A", "A");
    check("S-Tab", "\x1b[Z");
    check("S-Enter", "\r");
    check("S-Space", " ");
    check("M-S-a", "\x1b"
                   "A");
    check("C-S-a", "\x01");
}

static void test_modified_param_keys(void **state)
{
    check("S-Up", "\x1b[1;2A");
    check("M-Up", "\x1b[1;3A");
    check("C-Up", "\x1b[1;5A");
    check("C-S-Down", "\x1b[1;6B");
    check("C-M-Left", "\x1b[1;7D");
    check("C-M-S-Right", "\x1b[1;8C");
    check("S-Home", "\x1b[1;2H");
    check("C-End", "\x1b[1;5F");
    check("C-DC", "\x1b[3;5~");
    check("S-Insert", "\x1b[2;2~");
    check("M-PageUp", "\x1b[5;3~");
    check("C-NPage", "\x1b[6;5~");
    check("S-F1", "\x1b[1;2P");
    check("M-F4", "\x1b[1;3S");
    check("C-F5", "\x1b[15;5~");
    check("S-F12", "\x1b[24;2~");
}

static void test_not_keys(void **state)
{
    /* Ordinary text goes out literally. */
    check_not_key("");
    check_not_key("a");
    check_not_key("ls -la");
    check_not_key("hello");
    check_not_key("\xc3\xa9");
    /* Names are case-sensitive so that words stay words. */
    check_not_key("enter");
    check_not_key("ENTER");
    check_not_key("up");
    check_not_key("end");
    check_not_key("space");
    check_not_key("f1");
    check_not_key("F13");
    check_not_key("F0");
    /* Dangling or unknown modifiers. */
    check_not_key("^");
    check_not_key("C-");
    check_not_key("M-");
    check_not_key("C-xy");
    check_not_key("X-a");
    check_not_key("C--");
    check_not_key("C-1");
    check_not_key("C-\xc3\xa9");
    check_not_key("S-1");
    check_not_key("C-Enter");
    check_not_key("C-Tab");
    check_not_key("C-BSpace");
    check_not_key("C-Escape");
    check_not_key("M-Foo");
    check_not_key("M-\xff");      /* not UTF-8 */
    check_not_key("M-\xc3");      /* truncated UTF-8 */
    check_not_key("M-\xc3\xa9x"); /* more than one character */
}

static void test_appends(void **state)
{
    buf_t b = BUF_INIT;
    assert_int_equal(keys_append(&b, "C-c"), 1);
    assert_int_equal(keys_append(&b, "Up"), 1);
    assert_int_equal(keys_append(&b, "Enter"), 1);
    assert_int_equal(keys_append(&b, "text"), 0);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "\x03\x1b[A\r", 5);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_named),
        cmocka_unit_test(test_ctrl),
        cmocka_unit_test(test_meta),
        cmocka_unit_test(test_shift),
        cmocka_unit_test(test_modified_param_keys),
        cmocka_unit_test(test_not_keys),
        cmocka_unit_test(test_appends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
