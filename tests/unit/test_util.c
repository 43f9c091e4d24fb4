/*
 * util and json: UTF-8 validation and cut detection, base64, tree removal, request validators.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "core/json.h"
#include "core/util.h"

static void test_utf8(void **state)
{
    (void)state;
    assert_true(util_utf8_valid("", 0));
    assert_true(util_utf8_valid("hello", 5));
    assert_true(util_utf8_valid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15));
    assert_false(util_utf8_valid("\xff\xfe", 2));
    assert_false(util_utf8_valid("\xc0\xaf", 2));         /* overlong '/' */
    assert_false(util_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(util_utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    assert_false(util_utf8_valid("\xe2\x82", 2));         /* cut */
    assert_true(util_utf8_valid("a\0b", 3));              /* NUL is valid UTF-8 */
}

static void test_utf8_complete_prefix(void **state)
{
    (void)state;
    assert_int_equal(util_utf8_complete_prefix("abc", 3), 3);
    assert_int_equal(util_utf8_complete_prefix("ab\xe2\x82", 4), 2);
    assert_int_equal(util_utf8_complete_prefix("ab\xe2\x82\xac", 5), 5);
    assert_int_equal(util_utf8_complete_prefix("\xf0\x9f\x98", 3), 0);
    assert_int_equal(util_utf8_complete_prefix("ab\xc3", 3), 2);
    /* Invalid bytes are not a cut sequence: left for the validator to reject. */
    assert_int_equal(util_utf8_complete_prefix("ab\xff", 3), 3);
}

static void test_utf8_lossy(void **state)
{
    (void)state;
    char *s = util_utf8_lossy("ok \xc3\xa9 bad\xff\xfe end\xe2\x82", 17);
    assert_string_equal(s, "ok \xc3\xa9 bad\xef\xbf\xbd\xef\xbf\xbd end\xef\xbf\xbd\xef\xbf\xbd");
    assert_true(util_utf8_valid(s, strlen(s)));
    free(s);
    s = util_utf8_lossy("", 0);
    assert_string_equal(s, "");
    free(s);
}

/* The vectorised encoder against libcrypto's, on every length around its 12/16-byte steps and on
 * random data holding every byte value. */
static void test_base64_matches_libcrypto(void **state)
{
    (void)state;
    static unsigned char in[4096];
    static char ours[4096 / 3 * 4 + 8];
    static unsigned char ref[4096 / 3 * 4 + 8];
    unsigned x = 12345;
    for (size_t i = 0; i < sizeof(in); i++) {
        x = x * 1103515245u + 12345u;
        in[i] = (unsigned char)(i < 256 ? i : x >> 16);
    }
    for (size_t len = 0; len <= sizeof(in); len += len < 100 ? 1 : 37) {
        size_t n = util_base64_encode_to(ours, in + (len & 7) * (len + 8 <= sizeof(in)), len);
        int m = EVP_EncodeBlock(ref, in + (len & 7) * (len + 8 <= sizeof(in)), (int)len);
        assert_int_equal(n, (size_t)m);
        assert_memory_equal(ours, ref, n);
    }
}

static void test_base64(void **state)
{
    (void)state;
    const char *cases[][2] = {{"", ""},        {"f", "Zg=="},        {"fo", "Zm8="},
                              {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"\xff\xfe\x00", "//4A"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = i == 5 ? 3 : strlen(cases[i][0]);
        char *enc = util_base64_encode(cases[i][0], len);
        assert_string_equal(enc, cases[i][1]);
        free(enc);
        unsigned char *dec;
        size_t dlen;
        assert_int_equal(util_base64_decode(cases[i][1], strlen(cases[i][1]), &dec, &dlen), 0);
        assert_int_equal(dlen, len);
        assert_memory_equal(dec, cases[i][0], len);
        free(dec);
    }
    unsigned char *dec;
    size_t dlen;
    assert_int_equal(util_base64_decode("abc", 3, &dec, &dlen), -EINVAL);
    assert_int_equal(util_base64_decode("ab!c", 4, &dec, &dlen), -EINVAL);
    assert_int_equal(util_base64_decode("a=bc", 4, &dec, &dlen), -EINVAL);
    assert_int_equal(util_base64_decode("Zg==Zg==", 8, &dec, &dlen), -EINVAL);
}

static void test_random_id(void **state)
{
    (void)state;
    char a[32], b[32];
    assert_int_equal(util_random_id(a, sizeof(a), "sb-"), 0);
    assert_int_equal(util_random_id(b, sizeof(b), "sb-"), 0);
    assert_int_equal(strlen(a), 15);
    assert_memory_equal(a, "sb-", 3);
    assert_string_not_equal(a, b);
    assert_int_equal(util_random_id(a, 10, "sb-"), -ENAMETOOLONG);
}

static void test_remove_tree_no_follow(void **state)
{
    (void)state;
    char root[] = "/tmp/warren-rmtest-XXXXXX", outside[] = "/tmp/warren-rmkeep-XXXXXX", p[256];
    assert_non_null(mkdtemp(root));
    assert_non_null(mkdtemp(outside));
    snprintf(p, sizeof(p), "%s/keep", outside);
    close(open(p, O_CREAT | O_WRONLY, 0644));
    snprintf(p, sizeof(p), "%s/a/b/c", root);
    assert_int_equal(util_mkdir_p(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/a/b/file", root);
    close(open(p, O_CREAT | O_WRONLY, 0644));
    snprintf(p, sizeof(p), "%s/a/link", root);
    assert_int_equal(symlink(outside, p), 0); /* must be removed, not followed */
    snprintf(p, sizeof(p), "%s/a/b", root);
    chmod(p, 0); /* root can still remove it */
    assert_int_equal(util_remove_tree(root), 0);
    assert_int_equal(access(root, F_OK), -1);
    snprintf(p, sizeof(p), "%s/keep", outside);
    assert_int_equal(access(p, F_OK), 0);
    assert_int_equal(util_remove_tree(outside), 0);
    assert_int_equal(util_remove_tree("/tmp/warren-does-not-exist"), 0);
}

static void test_json_validators(void **state)
{
    (void)state;
    char err[256];
    json_t *o = json_parse_object("", 0, err, sizeof(err));
    assert_non_null(o);
    assert_int_equal(json_object_size(o), 0);
    json_decref(o);
    assert_null(json_parse_object("{bad", 4, err, sizeof(err)));
    assert_non_null(strstr(err, "malformed JSON"));
    assert_null(json_parse_object("[1]", 3, err, sizeof(err)));
    assert_null(json_parse_object("{\"a\":1,\"a\":2}", 13, err, sizeof(err)));

    const char *body =
        "{\"s\":\"x\",\"n\":1.5,\"i\":3,\"f\":2.0,\"m\":{\"k\":\"v\"},\"bad\":{\"k\":1}}";
    o = json_parse_object(body, strlen(body), err, sizeof(err));
    assert_non_null(o);
    static const char *const allowed[] = {"s", "n", "i", "f", "m", NULL};
    assert_int_equal(json_check_keys(o, allowed, "top", err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "unknown field 'top.bad'");
    const char *s = NULL;
    double n = 0;
    long long i = 0;
    json_t *m = NULL;
    assert_int_equal(json_opt_string(o, "s", "s", &s, err, sizeof(err)), 0);
    assert_string_equal(s, "x");
    assert_int_equal(json_opt_number(o, "n", "n", &n, err, sizeof(err)), 0);
    assert_true(n == 1.5);
    assert_int_equal(json_opt_int(o, "i", "i", &i, err, sizeof(err)), 0);
    assert_int_equal(i, 3);
    assert_int_equal(json_opt_int(o, "f", "f", &i, err, sizeof(err)), 0);
    assert_int_equal(i, 2);
    assert_int_equal(json_opt_int(o, "n", "n", &i, err, sizeof(err)), -EINVAL);
    assert_int_equal(json_opt_string(o, "n", "n", &s, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "'n' must be a string");
    assert_int_equal(json_opt_string_map(o, "m", "m", &m, err, sizeof(err)), 0);
    assert_non_null(m);
    assert_int_equal(json_opt_string_map(o, "bad", "bad", &m, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "'bad.k' must be a string");
    m = NULL;
    assert_int_equal(json_opt_object(o, "absent", "absent", &m, err, sizeof(err)), 0);
    assert_null(m);
    json_decref(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_utf8_complete_prefix),
        cmocka_unit_test(test_utf8_lossy),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_base64_matches_libcrypto),
        cmocka_unit_test(test_random_id),
        cmocka_unit_test(test_remove_tree_no_follow),
        cmocka_unit_test(test_json_validators),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
