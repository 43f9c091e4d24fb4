/*
 * image ref: Docker's reference grammar as a table of good references (with their normalised
 * parts and canonical string) and bad ones (with the reason's key word), plus the digest helpers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "image/digest.h"
#include "image/ref.h"

#define D64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void test_good_refs(void **state)
{
    (void)state;
    static const struct {
        const char *in, *registry, *repo, *tag, *digest, *canonical;
    } t[] = {
        {"alpine", "docker.io", "library/alpine", "latest", "", "docker.io/library/alpine:latest"},
        {"alpine:3.19", "docker.io", "library/alpine", "3.19", "", NULL},
        {"user/app", "docker.io", "user/app", "latest", "", "docker.io/user/app:latest"},
        {"docker.io/alpine", "docker.io", "library/alpine", "latest", "", NULL},
        {"docker.io/x/y", "docker.io", "x/y", "latest", "", NULL},
        {"index.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", "",
         "docker.io/library/busybox:1"},
        {"ghcr.io/org/team/app:v1.2-rc_3", "ghcr.io", "org/team/app", "v1.2-rc_3", "", NULL},
        {"localhost/app", "localhost", "app", "latest", "", "localhost/app:latest"},
        {"localhost:5000/app:dev", "localhost:5000", "app", "dev", "", NULL},
        {"127.0.0.1:5000/test/img:v1", "127.0.0.1:5000", "test/img", "v1", "", NULL},
        {"my-reg.example.com:443/a.b/c__d/e---f", "my-reg.example.com:443", "a.b/c__d/e---f",
         "latest", "", NULL},
        {"alpine@sha256:" D64, "docker.io", "library/alpine", "", "sha256:" D64,
         "docker.io/library/alpine@sha256:" D64},
        {"reg.io/app:v1@sha256:" D64, "reg.io", "app", "v1", "sha256:" D64,
         "reg.io/app@sha256:" D64},
        {"app:UPPER_tag.ok", "docker.io", "library/app", "UPPER_tag.ok", "", NULL},
        {"foo/bar:_x", "docker.io", "foo/bar", "_x", "", NULL},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct image_ref r;
        char msg[256] = "", s[700];
        int rc = image_ref_parse(t[i].in, &r, msg, sizeof(msg));
        if (rc != 0)
            fail_msg("%s: %s", t[i].in, msg);
        assert_string_equal(r.registry, t[i].registry);
        assert_string_equal(r.repository, t[i].repo);
        assert_string_equal(r.tag, t[i].tag);
        assert_string_equal(r.digest, t[i].digest);
        if (t[i].canonical) {
            image_ref_string(&r, s, sizeof(s));
            assert_string_equal(s, t[i].canonical);
        }
    }
}

static void test_bad_refs(void **state)
{
    (void)state;
    char long_name[300], long_tag[200];
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    snprintf(long_tag, sizeof(long_tag), "app:%0129d", 0);
    static const struct {
        const char *in, *why;
    } t[] = {
        {"", "empty"},
        {"Alpine", "lowercase"},
        {"user/App:v1", "lowercase"},
        {"alpine:", "bad tag"},
        {"alpine:-x", "bad tag"},
        {"alpine:a/b", "bad registry"}, /* "alpine:a" would be a host with a port */
        {"alpine@sha256:abc", "bad digest"},
        {"alpine@md5:" D64, "bad digest"},
        {"alpine@sha256:" D64 "00", "bad digest"},
        {"alpine@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
         "bad digest"},
        {"al pine", "space"},
        {"alpine\t", "space"},
        {"a..b", "bad repository"},
        {"a-", "bad repository"},
        {"_a", "bad repository"},
        {"a___b", "bad repository"},
        {"reg.io/", "bad repository"},
        {"reg.io//x", "bad repository"},
        {"/x", "bad repository"},
        {"reg-.io/x", "bad registry"},
        {"reg.io:0/x", "bad registry"},
        {"reg.io:99999/x", "bad registry"},
        {"reg.io:/x", "bad registry"},
        {":tag", "no name"},
        {"@sha256:" D64, "no name"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct image_ref r;
        char msg[256] = "";
        if (image_ref_parse(t[i].in, &r, msg, sizeof(msg)) != -EINVAL)
            fail_msg("'%s' was accepted", t[i].in);
        if (!strstr(msg, t[i].why))
            fail_msg("'%s': message '%s' lacks '%s'", t[i].in, msg, t[i].why);
    }
    struct image_ref r;
    char msg[256];
    assert_int_equal(image_ref_parse(long_name, &r, msg, sizeof(msg)), -EINVAL);
    assert_non_null(strstr(msg, "255"));
    assert_int_equal(image_ref_parse(long_tag, &r, msg, sizeof(msg)), -EINVAL);
    assert_int_equal(image_ref_parse("a\x01", &r, msg, sizeof(msg)), -EINVAL);
    /* 128 characters is the longest tag. */
    snprintf(long_tag, sizeof(long_tag), "app:%0128d", 0);
    assert_int_equal(image_ref_parse(long_tag, &r, msg, sizeof(msg)), 0);
    assert_int_equal(strlen(r.tag), 128);
}

static void test_digest(void **state)
{
    (void)state;
    char out[DIGEST_STRLEN], hex[65];
    struct digest_ctx c;
    assert_int_equal(digest_buffer("abc", 3, out), 0);
    assert_string_equal(out,
                        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* Streaming in pieces gives the same. */
    assert_int_equal(digest_init(&c), 0);
    digest_update(&c, "a", 1);
    digest_update(&c, "", 0);
    digest_update(&c, "bc", 2);
    char out2[DIGEST_STRLEN];
    digest_final(&c, out2);
    assert_string_equal(out, out2);
    assert_int_equal(digest_parse(out, hex), 0);
    assert_string_equal(hex, out + 7);
    assert_int_equal(digest_parse("sha512:" D64, hex), -EINVAL);
    assert_int_equal(digest_parse("sha256:" D64 "a", hex), -EINVAL);
    assert_int_equal(digest_parse("sha256:", hex), -EINVAL);
    assert_int_equal(digest_parse(NULL, hex), -EINVAL);
    /* An abandoned context is released. */
    assert_int_equal(digest_init(&c), 0);
    digest_free(&c);
    digest_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_refs),
        cmocka_unit_test(test_bad_refs),
        cmocka_unit_test(test_digest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
