/* Unit tests for session/vt, driven by real terminal sequences. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session/vt.h"

static void feed(struct vt *vt, const char *s)
{
    vt_feed(vt, s, strlen(s));
}

static void assert_screen(struct vt *vt, int with_history, const char *want)
{
    char *text = vt_screen_text(vt, with_history);
    assert_non_null(text);
    assert_string_equal(text, want);
    free(text);
}

static void assert_cursor(struct vt *vt, int row, int col)
{
    int r, c;
    vt_cursor(vt, &r, &c);
    assert_int_equal(r, row);
    assert_int_equal(c, col);
}

static void test_new_invalid(void **state)
{
    errno = 0;
    assert_null(vt_new(0, 80, 0));
    assert_int_equal(errno, EINVAL);
    assert_null(vt_new(24, 0, 0));
    assert_null(vt_new(-1, 80, 0));
    assert_null(vt_new(24, VT_MAX_DIM + 1, 0));
    assert_null(vt_new(24, VT_MIN_COLS - 1, 0));
    vt_free(NULL);
    struct vt *vt = vt_new(1, VT_MIN_COLS, 0);
    assert_non_null(vt);
    assert_screen(vt, 0, "");
    feed(vt, "\xe6\x97\xa5");
    assert_screen(vt, 0, "\xe6\x97\xa5");
    assert_int_equal(vt_resize(vt, 0, 5), -EINVAL);
    assert_int_equal(vt_resize(vt, 5, VT_MAX_DIM + 1), -EINVAL);
    assert_int_equal(vt_resize(vt, 5, 1), -EINVAL);
    int rows, cols;
    vt_size(vt, &rows, &cols);
    assert_int_equal(rows, 1);
    assert_int_equal(cols, VT_MIN_COLS);
    vt_free(vt);
}

static void test_plain_text(void **state)
{
    struct vt *vt = vt_new(4, 20, 100);
    assert_non_null(vt);
    assert_screen(vt, 0, "\n\n\n");
    assert_cursor(vt, 0, 0);
    feed(vt, "hello\r\nworld");
    assert_screen(vt, 0, "hello\nworld\n\n");
    assert_cursor(vt, 1, 5);
    /* Trailing spaces are trimmed, inner ones kept; a bare LF moves down without returning. */
    feed(vt, "\r\n  a  b   \nx");
    assert_screen(vt, 0, "hello\nworld\n  a  b\n         x");
    assert_screen(vt, 1, "hello\nworld\n  a  b\n         x"); /* nothing scrolled off yet */
    assert_int_equal(vt_history_lines(vt), 0);
    int rows, cols;
    vt_size(vt, &rows, &cols);
    assert_int_equal(rows, 4);
    assert_int_equal(cols, 20);
    vt_free(vt);
}

static void test_cursor_movement(void **state)
{
    struct vt *vt = vt_new(3, 10, 0);
    feed(vt, "abc\r\ndef");
    feed(vt, "\x1b[2J"); /* erase display; the cursor stays */
    assert_screen(vt, 0, "\n\n");
    assert_cursor(vt, 1, 3);
    feed(vt, "\x1b[HX");
    assert_cursor(vt, 0, 1);
    feed(vt, "\x1b[3;5HY"); /* 1-based row;col */
    assert_cursor(vt, 2, 5);
    feed(vt, "\x1b[2;2HZZZ\x1b[2D\x1b[K"); /* back two, erase to end of line */
    assert_screen(vt, 0, "X\n Z\n    Y");
    feed(vt, "\b\x1b[1A!"); /* backspace, up one */
    assert_screen(vt, 0, "X!\n Z\n    Y");
    vt_free(vt);
}

static void test_colors_ignored(void **state)
{
    struct vt *vt = vt_new(2, 30, 0);
    feed(vt, "\x1b[1;31mred\x1b[0m plain \x1b[38;5;196m256\x1b[48;2;1;2;3mrgb\x1b[m");
    assert_screen(vt, 0, "red plain 256rgb\n");
    /* Erasing with a coloured background still reads as blank. */
    feed(vt, "\r\n\x1b[44mxy\x1b[K\x1b[0m");
    assert_screen(vt, 0, "red plain 256rgb\nxy");
    vt_free(vt);
}

static void test_line_wrap(void **state)
{
    struct vt *vt = vt_new(3, 10, 0);
    feed(vt, "0123456789abcde");
    assert_screen(vt, 0, "0123456789\nabcde\n");
    assert_cursor(vt, 1, 5);
    /* Exactly a full line: the cursor waits in the last column until the next character. */
    struct vt *w = vt_new(3, 5, 0);
    feed(w, "abcde");
    assert_screen(w, 0, "abcde\n\n");
    feed(w, "f");
    assert_screen(w, 0, "abcde\nf\n");
    vt_free(w);
    vt_free(vt);
}

static void test_scrollback(void **state)
{
    struct vt *vt = vt_new(3, 10, 100);
    for (int i = 1; i <= 6; i++) {
        char line[32];
        snprintf(line, sizeof(line), "%sline%d", i > 1 ? "\r\n" : "", i);
        feed(vt, line);
    }
    assert_screen(vt, 0, "line4\nline5\nline6");
    assert_int_equal(vt_history_lines(vt), 3);
    assert_screen(vt, 1, "line1\nline2\nline3\nline4\nline5\nline6");
    /* Clearing the screen does not touch the history. */
    feed(vt, "\x1b[H\x1b[2J");
    assert_screen(vt, 1, "line1\nline2\nline3\n\n\n");
    vt_free(vt);

    /* A bounded history keeps the newest lines. */
    vt = vt_new(2, 10, 2);
    feed(vt, "a\r\nb\r\nc\r\nd\r\ne\r\nf");
    assert_int_equal(vt_history_lines(vt), 2);
    assert_screen(vt, 1, "c\nd\ne\nf");
    vt_free(vt);

    /* No history at all. */
    vt = vt_new(2, 10, 0);
    feed(vt, "a\r\nb\r\nc");
    assert_int_equal(vt_history_lines(vt), 0);
    assert_screen(vt, 1, "b\nc");
    vt_free(vt);

    /* Long lines wrap into several history lines; wide and combining characters survive. */
    vt = vt_new(2, 4, 10);
    feed(vt, "abcdefg\r\n\xe6\x97\xa5\xe6\x9c\xac\r\ne\xcc\x81!\r\n\r\n");
    assert_screen(vt, 1, "abcd\nefg\n\xe6\x97\xa5\xe6\x9c\xac\ne\xcc\x81!\n\n");
    vt_free(vt);
}

static void test_alt_screen(void **state)
{
    struct vt *vt = vt_new(3, 10, 100);
    feed(vt, "$ less f\r\n");
    feed(vt, "\x1b[?1049h\x1b[H\x1b[2Jpage 1");
    assert_screen(vt, 0, "page 1\n\n");
    /* Scrolling on the alternate screen does not feed the history. */
    feed(vt, "\r\n2\r\n3\r\n4\r\n5");
    assert_screen(vt, 0, "3\n4\n5");
    assert_int_equal(vt_history_lines(vt), 0);
    assert_screen(vt, 1, "3\n4\n5");
    feed(vt, "\x1b[?1049l");
    assert_screen(vt, 0, "$ less f\n\n");
    assert_cursor(vt, 1, 0);
    /* Mode 1047 switches screens without saving the cursor. */
    feed(vt, "\x1b[?1047hALT");
    assert_screen(vt, 0, "\nALT\n");
    feed(vt, "\x1b[?1047l");
    assert_screen(vt, 0, "$ less f\n\n");
    assert_cursor(vt, 1, 3);
    vt_free(vt);
}

static void test_wide_and_combining(void **state)
{
    struct vt *vt = vt_new(2, 10, 0);
    feed(vt, "\xe6\x97\xa5\xe6\x9c\xac"
             "x"); /* 日本x */
    assert_screen(vt, 0, "\xe6\x97\xa5\xe6\x9c\xacx\n");
    assert_cursor(vt, 0, 5);
    /* e + U+0301 combining acute, then a mark arriving in a later write. */
    feed(vt, "\r\ne\xcc\x81"
             "a");
    feed(vt, "\xcc\x88"
             "b");
    assert_screen(vt, 0,
                  "\xe6\x97\xa5\xe6\x9c\xacx\ne\xcc\x81"
                  "a\xcc\x88"
                  "b");
    assert_cursor(vt, 1, 3);
    /* UTF-8 split across writes. */
    feed(vt, "\x1b[H\x1b[2J\xe6");
    feed(vt, "\x97");
    feed(vt, "\xa5!");
    assert_screen(vt, 0, "\xe6\x97\xa5!\n");
    /* A wide character that does not fit in the last column wraps to the next line. */
    struct vt *n = vt_new(2, 3, 0);
    feed(n, "ab\xe6\x97\xa5");
    assert_screen(n, 0, "ab\n\xe6\x97\xa5");
    vt_free(n);
    /* Invalid UTF-8 shows as U+FFFD; many combining marks do not break anything. */
    feed(vt, "\x1b[H\x1b[2J\xff"
             "a\xcc\x81\xcc\x82\xcc\x83\xcc\x84\xcc\x85\xcc\x86\xcc\x87\xcc\x88");
    char *text = vt_screen_text(vt, 0);
    assert_non_null(text);
    assert_memory_equal(text,
                        "\xef\xbf\xbd"
                        "a\xcc\x81",
                        6);
    free(text);
    vt_free(vt);
}

static void test_resize(void **state)
{
    struct vt *vt = vt_new(4, 10, 100);
    feed(vt, "one\r\ntwo\r\nthree\r\nfour");
    /* Shrinking keeps the cursor line: the top lines move to the history. */
    assert_int_equal(vt_resize(vt, 2, 10), 0);
    assert_screen(vt, 0, "three\nfour");
    assert_cursor(vt, 1, 4);
    assert_int_equal(vt_history_lines(vt), 2);
    assert_screen(vt, 1, "one\ntwo\nthree\nfour");
    /* Growing pulls them back. */
    assert_int_equal(vt_resize(vt, 5, 10), 0);
    assert_screen(vt, 0, "one\ntwo\nthree\nfour\n");
    assert_cursor(vt, 3, 4);
    assert_int_equal(vt_history_lines(vt), 0);
    /* Narrower cuts (no re-wrap); wider pads. */
    assert_int_equal(vt_resize(vt, 5, 3), 0);
    assert_screen(vt, 0, "one\ntwo\nthr\nfou\n");
    assert_int_equal(vt_resize(vt, 5, 20), 0);
    int rows, cols;
    vt_size(vt, &rows, &cols);
    assert_int_equal(rows, 5);
    assert_int_equal(cols, 20);
    feed(vt, "\x1b[5;1H0123456789012345678");
    assert_screen(vt, 0, "one\ntwo\nthr\nfou\n0123456789012345678");
    vt_free(vt);

    /* Lines with wide characters go to the history and come back intact, even narrower. */
    vt = vt_new(3, 6, 10);
    feed(vt, "a\xe6\x97\xa5\xe6\x9c\xac\r\n\xc3\xa9t\xc3\xa9\r\nx");
    assert_int_equal(vt_resize(vt, 1, 6), 0);
    assert_int_equal(vt_history_lines(vt), 2);
    assert_screen(vt, 1, "a\xe6\x97\xa5\xe6\x9c\xac\n\xc3\xa9t\xc3\xa9\nx");
    assert_int_equal(vt_resize(vt, 1, 4), 0);
    assert_int_equal(vt_resize(vt, 3, 4), 0); /* 本 no longer fits its two cells: dropped */
    assert_screen(vt, 0, "a\xe6\x97\xa5\n\xc3\xa9t\xc3\xa9\nx");
    vt_free(vt);
}

static void test_replies(void **state)
{
    struct vt *vt = vt_new(5, 20, 0);
    size_t len = 123;
    assert_null(vt_take_replies(vt, &len));
    assert_int_equal(len, 0);
    feed(vt, "\x1b[3;7H\x1b[6n");
    char *r = vt_take_replies(vt, &len);
    assert_non_null(r);
    assert_int_equal(len, strlen("\x1b[3;7R"));
    assert_memory_equal(r, "\x1b[3;7R", len);
    free(r);
    assert_null(vt_take_replies(vt, &len)); /* taken */
    /* Device attributes, split across writes, and two queries at once. */
    feed(vt, "\x1b[");
    feed(vt, "c\x1b[1;1H\x1b[6n");
    r = vt_take_replies(vt, &len);
    assert_non_null(r);
    assert_true(len > 8);
    assert_memory_equal(r, "\x1b[?", 3);
    assert_memory_equal(r + len - 6, "\x1b[1;1R", 6);
    free(r);
    /* A flood of queries is capped. */
    for (int i = 0; i < 20000; i++)
        feed(vt, "\x1b[6n");
    r = vt_take_replies(vt, &len);
    assert_non_null(r);
    assert_true(len <= VT_MAX_REPLIES);
    assert_true(len > VT_MAX_REPLIES - 16);
    free(r);
    vt_free(vt);
}

/* Sequences that crash, hang or corrupt libvterm 0.1.4 when passed through unfiltered. */
static void test_libvterm_hazards(void **state)
{
    struct vt *vt = vt_new(5, 20, 10);
    /* REP before any character: libvterm loops forever. */
    feed(vt, "\x1b[b\x1b[5b");
    assert_screen(vt, 0, "\n\n\n\n");
    /* REP is emulated: the last character repeated. */
    feed(vt, "ab\x1b[3bc\x1b[b\r\n\xe6\x97\xa5\x1b[2b");
    assert_screen(vt, 0, "abbbbcc\n\xe6\x97\xa5\xe6\x97\xa5\xe6\x97\xa5\n\n\n");
    /* C1 controls encoded as UTF-8 print with width -1 in libvterm: dropped. */
    feed(vt, "\x1b[H\x1b[2Jx\xc2\x85\xc2\x9b\xc2\x85y\x1b[b");
    assert_screen(vt, 0, "xyy\n\n\n\n");
    assert_cursor(vt, 0, 3);
    /* More parameters than libvterm has room for: the sequence is dropped. */
    char many[600] = "\x1b[";
    for (int i = 0; i < 200; i++)
        strcat(many, "1;");
    strcat(many, "31mz");
    feed(vt, many);
    assert_screen(vt, 0, "xyyz\n\n\n\n");
    /* Parameters beyond long: clamped, the cursor stops at the edge. */
    feed(vt, "\x1b[99999999999999999999999999C!\x1b[99999999999999999999999B?");
    assert_screen(vt, 0, "xyyz               !\n\n\n\n                   ?");
    /* Invalid UTF-8 becomes U+FFFD, overlong forms included. */
    feed(vt, "\x1b[H\x1b[2J\xc0\x85|\xe0\x80\xaf|\xed\xa0\x80|\xff");
    assert_screen(vt, 0,
                  "\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|"
                  "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd\n\n\n\n");
    /* DEL and NUL are ignored, CAN aborts a sequence. */
    static const char del_nul[] = "\x1b[H\x1b[2Ja\x7f\x00"
                                  "b\x1b[3\x18"
                                  "C";
    vt_feed(vt, del_nul, sizeof(del_nul) - 1);
    assert_screen(vt, 0, "abC\n\n\n\n");
    vt_free(vt);

    /* A cursor saved low on the screen, then the terminal shrinks: restoring it must not put it
     * off-screen (DECDHL there wrote out of bounds), nor after mode 1049. */
    vt = vt_new(10, 20, 10);
    feed(vt, "\x1b[9;5H\x1b"
             "7");
    assert_int_equal(vt_resize(vt, 2, 10), 0);
    feed(vt, "\x1b"
             "8\x1b#3\x1b#6X");
    int row, col;
    vt_cursor(vt, &row, &col);
    assert_true(row < 2 && col < 10);
    feed(vt, "\x1b[?1049h");
    assert_int_equal(vt_resize(vt, 8, 10), 0);
    feed(vt, "\x1b[8;8H");
    assert_int_equal(vt_resize(vt, 3, 4), 0);
    feed(vt, "\x1b[?1049l\x1b#3\x1b#8");
    vt_cursor(vt, &row, &col);
    assert_true(row < 3 && col < 4);
    vt_free(vt);

    /* A scroll region below the new bottom: the next line feed scrolled a negative height. */
    vt = vt_new(10, 20, 10);
    feed(vt, "\x1b[5;9r\x1b[9;1Hbottom");
    assert_int_equal(vt_resize(vt, 3, 20), 0);
    feed(vt, "\r\n1\r\n2\r\n3\x1bM\x1b[S\x1b[T\x1b[L\x1b[M");
    char *text = vt_screen_text(vt, 1);
    assert_non_null(text);
    free(text);
    vt_free(vt);

    /* A resize in the middle of a sequence does not break the sequence. */
    vt = vt_new(3, 10, 0);
    feed(vt, "abc\x1b[");
    assert_int_equal(vt_resize(vt, 4, 10), 0);
    feed(vt, "2J\x1b[Hx\x1b]0;ti");
    assert_int_equal(vt_resize(vt, 4, 12), 0);
    feed(vt, "tle\x07y\x1b(");
    assert_int_equal(vt_resize(vt, 4, 11), 0);
    feed(vt, "Bz\xe6\x97");
    assert_int_equal(vt_resize(vt, 4, 12), 0);
    feed(vt, "\xa5");
    assert_screen(vt, 0, "xyz\xe6\x97\xa5\n\n\n");
    vt_free(vt);
}

/* Arbitrary bytes must never crash or corrupt anything (run under ASan). */
static void test_garbage(void **state)
{
    struct vt *vt = vt_new(5, 7, 3);
    unsigned int seed = 1;
    char chunk[97];
    for (int i = 0; i < 3000; i++) {
        for (size_t k = 0; k < sizeof(chunk); k++) {
            seed = seed * 1103515245u + 12345u;
            unsigned v = seed >> 16;
            /* Bias towards escape sequences, digits, UTF-8 lead bytes and combining marks. */
            const char pool[] = "\x1b[;?0123456789HJKmABCDhl\r\n\xe6\x97\xa5\xcc\x81 abc";
            chunk[k] = (v & 1) ? pool[(v >> 1) % (sizeof(pool) - 1)] : (char)(v >> 3);
        }
        vt_feed(vt, chunk, sizeof(chunk));
        if (i % 100 == 0)
            assert_int_equal(vt_resize(vt, 1 + (i / 100) % 9, 2 + (i / 70) % 13), 0);
        if (i % 50 == 0) {
            char *text = vt_screen_text(vt, 1);
            assert_non_null(text);
            free(text);
            size_t len;
            free(vt_take_replies(vt, &len));
        }
    }
    vt_free(vt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_invalid),      cmocka_unit_test(test_plain_text),
        cmocka_unit_test(test_cursor_movement),  cmocka_unit_test(test_colors_ignored),
        cmocka_unit_test(test_line_wrap),        cmocka_unit_test(test_scrollback),
        cmocka_unit_test(test_alt_screen),       cmocka_unit_test(test_wide_and_combining),
        cmocka_unit_test(test_resize),           cmocka_unit_test(test_replies),
        cmocka_unit_test(test_libvterm_hazards), cmocka_unit_test(test_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
