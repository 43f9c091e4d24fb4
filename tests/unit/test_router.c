/* Unit tests for net/router. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "net/router.h"

static int h_dummy;
#define H ((void *)&h_dummy)

static const struct route routes[] = {
    {"GET", "/healthz", H},                        /* 0 */
    {"GET", "/v1/sandboxes", H},                   /* 1 */
    {"POST", "/v1/sandboxes", H},                  /* 2 */
    {"GET", "/v1/sandboxes/{id}", H},              /* 3 */
    {"DELETE", "/v1/sandboxes/{id}", H},           /* 4 */
    {"POST", "/v1/sandboxes/{id}/exec", H},        /* 5 */
    {"GET", "/v1/sandboxes/{id}/files/{name}", H}, /* 6 */
    {"GET", "/", H},                               /* 7 */
    {"PUT", "/v1/sandboxes/{id}", H},              /* 8 */
};
#define NROUTES (sizeof(routes) / sizeof(routes[0]))

static int match(const char *method, const char *path, struct route_params *p, char *allow,
                 size_t allow_len)
{
    return router_match(routes, NROUTES, method, path, p, allow, allow_len);
}

static void test_literal(void **state)
{
    struct route_params p;
    assert_int_equal(match("GET", "/healthz", &p, NULL, 0), 0);
    assert_int_equal(p.count, 0);
    assert_int_equal(match("GET", "/v1/sandboxes", &p, NULL, 0), 1);
    assert_int_equal(match("POST", "/v1/sandboxes", &p, NULL, 0), 2);
    assert_int_equal(match("GET", "/", &p, NULL, 0), 7);
    /* Prefixes and extensions of a literal do not match. */
    assert_int_equal(match("GET", "/health", &p, NULL, 0), -ENOENT);
    assert_int_equal(match("GET", "/healthzz", &p, NULL, 0), -ENOENT);
    assert_int_equal(match("GET", "/healthz/x", &p, NULL, 0), -ENOENT);
    assert_int_equal(match("GET", "", &p, NULL, 0), -ENOENT);
    assert_int_equal(match("GET", "healthz", &p, NULL, 0), -ENOENT);
    /* NULL params are allowed. */
    assert_int_equal(match("GET", "/healthz", NULL, NULL, 0), 0);
}

static void test_captures(void **state)
{
    struct route_params p;
    assert_int_equal(match("GET", "/v1/sandboxes/sb-abc", &p, NULL, 0), 3);
    assert_int_equal(p.count, 1);
    assert_string_equal(route_param(&p, "id"), "sb-abc");
    assert_null(route_param(&p, "i"));
    assert_null(route_param(&p, "idx"));
    assert_int_equal(p.name_lens[0], 2);
    assert_memory_equal(p.names[0], "id", 2);

    assert_int_equal(match("POST", "/v1/sandboxes/my.box/exec", &p, NULL, 0), 5);
    assert_string_equal(route_param(&p, "id"), "my.box");

    assert_int_equal(match("GET", "/v1/sandboxes/a/files/b.txt", &p, NULL, 0), 6);
    assert_int_equal(p.count, 2);
    assert_string_equal(route_param(&p, "id"), "a");
    assert_string_equal(route_param(&p, "name"), "b.txt");

    /* Captures take exactly one segment. */
    assert_int_equal(match("GET", "/v1/sandboxes/a/b", &p, NULL, 0), -ENOENT);
}

static void test_not_found_vs_method(void **state)
{
    struct route_params p;
    char allow[64];
    assert_int_equal(match("GET", "/nope", &p, allow, sizeof(allow)), -ENOENT);
    assert_string_equal(allow, "");

    assert_int_equal(match("PATCH", "/v1/sandboxes/x", &p, allow, sizeof(allow)), -EPERM);
    assert_string_equal(allow, "GET, DELETE, PUT");
    assert_int_equal(p.count, 0);

    assert_int_equal(match("DELETE", "/v1/sandboxes", &p, allow, sizeof(allow)), -EPERM);
    assert_string_equal(allow, "GET, POST");

    assert_int_equal(match("GET", "/v1/sandboxes/x/exec", &p, allow, sizeof(allow)), -EPERM);
    assert_string_equal(allow, "POST");

    /* Method comparison is exact (HTTP methods are case-sensitive). */
    assert_int_equal(match("get", "/healthz", &p, allow, sizeof(allow)), -EPERM);
    assert_string_equal(allow, "GET");

    /* NULL allow is fine; a short allow buffer gets whole methods only. */
    assert_int_equal(match("PATCH", "/v1/sandboxes/x", &p, NULL, 0), -EPERM);
    char small[10];
    assert_int_equal(match("PATCH", "/v1/sandboxes/x", &p, small, sizeof(small)), -EPERM);
    assert_string_equal(small, "GET, PUT"); /* DELETE skipped: it does not fit */
    char tiny[3];
    assert_int_equal(match("PATCH", "/v1/sandboxes/x", &p, tiny, sizeof(tiny)), -EPERM);
    assert_string_equal(tiny, "");
}

static void test_head_falls_back_to_get(void **state)
{
    struct route_params p;
    char allow[64];
    assert_int_equal(match("HEAD", "/v1/sandboxes/zz", &p, allow, sizeof(allow)), 3);
    assert_string_equal(route_param(&p, "id"), "zz");
    assert_int_equal(match("HEAD", "/v1/sandboxes/zz/exec", &p, allow, sizeof(allow)), -EPERM);
    assert_string_equal(allow, "POST");

    /* An explicit HEAD route wins over the GET fallback, even later in the table. */
    static const struct route r2[] = {
        {"GET", "/x/{a}", H},
        {"POST", "/x/{b}", H},
        {"HEAD", "/x/{c}", H},
    };
    assert_int_equal(router_match(r2, 3, "HEAD", "/x/1", &p, NULL, 0), 2);
    assert_non_null(route_param(&p, "c"));
    /* And the GET fallback keeps its own captures even when later patterns matched too. */
    assert_int_equal(router_match(r2, 2, "HEAD", "/x/1", &p, allow, sizeof(allow)), 0);
    assert_string_equal(route_param(&p, "a"), "1");
    assert_null(route_param(&p, "b"));
}

static void test_long_capture(void **state)
{
    struct route_params p;
    char path[600];
    char seg[ROUTER_MAX_PARAM_LEN + 1];

    /* The longest value that fits. */
    memset(seg, 'a', ROUTER_MAX_PARAM_LEN - 1);
    seg[ROUTER_MAX_PARAM_LEN - 1] = '\0';
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", seg);
    assert_int_equal(match("GET", path, &p, NULL, 0), 3);
    assert_int_equal(strlen(route_param(&p, "id")), ROUTER_MAX_PARAM_LEN - 1);

    /* One more byte does not. */
    memset(seg, 'a', ROUTER_MAX_PARAM_LEN);
    seg[ROUTER_MAX_PARAM_LEN] = '\0';
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", seg);
    assert_int_equal(match("GET", path, &p, NULL, 0), -EMSGSIZE);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/exec", seg);
    assert_int_equal(match("POST", path, &p, NULL, 0), -EMSGSIZE);
    /* Too long and the rest does not match either: plain not found. */
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/nope", seg);
    assert_int_equal(match("POST", path, &p, NULL, 0), -ENOENT);
}

static void test_empty_segment(void **state)
{
    struct route_params p;
    assert_int_equal(match("GET", "/v1/sandboxes/", &p, NULL, 0), -ENOENT);
    assert_int_equal(match("POST", "/v1/sandboxes//exec", &p, NULL, 0), -ENOENT);
    assert_int_equal(match("GET", "//healthz", &p, NULL, 0), -ENOENT);
    assert_int_equal(match("GET", "/v1//sandboxes", &p, NULL, 0), -ENOENT);
}

static void test_trailing_slash(void **state)
{
    struct route_params p;
    assert_int_equal(match("GET", "/healthz/", &p, NULL, 0), -ENOENT);
    assert_int_equal(match("GET", "/v1/sandboxes/", &p, NULL, 0), -ENOENT);
    assert_int_equal(match("POST", "/v1/sandboxes/x/exec/", &p, NULL, 0), -ENOENT);
    static const struct route r2[] = {{"GET", "/a/", H}};
    assert_int_equal(router_match(r2, 1, "GET", "/a/", &p, NULL, 0), 0);
    assert_int_equal(router_match(r2, 1, "GET", "/a", &p, NULL, 0), -ENOENT);
}

static void test_too_many_captures(void **state)
{
    static const struct route r2[] = {{"GET", "/{a}/{b}/{c}/{d}/{e}", H}, {"GET", "/{a}/{b}", H}};
    struct route_params p;
    assert_int_equal(router_match(r2, 2, "GET", "/1/2/3/4/5", &p, NULL, 0), -ENOENT);
    assert_int_equal(router_match(r2, 2, "GET", "/1/2", &p, NULL, 0), 1);
    assert_string_equal(route_param(&p, "b"), "2");
}

/* `{name+}` takes the rest of the path; routes before it with a fixed tail still win. */
static void test_rest_capture(void **state)
{
    static const struct route r3[] = {{"GET", "/t/{name}/export", H}, {"GET", "/t/{name+}", H}};
    struct route_params p;
    assert_int_equal(router_match(r3, 2, "GET", "/t/box", &p, NULL, 0), 1);
    assert_string_equal(route_param(&p, "name"), "box");
    assert_int_equal(router_match(r3, 2, "GET", "/t/127.0.0.1:5000/a/b:1", &p, NULL, 0), 1);
    assert_string_equal(route_param(&p, "name"), "127.0.0.1:5000/a/b:1");
    assert_int_equal(router_match(r3, 2, "GET", "/t/box/export", &p, NULL, 0), 0);
    assert_string_equal(route_param(&p, "name"), "box");
    assert_int_equal(router_match(r3, 2, "GET", "/t/", &p, NULL, 0), -ENOENT);
    assert_int_equal(router_match(r3, 2, "GET", "/t", &p, NULL, 0), -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal),
        cmocka_unit_test(test_captures),
        cmocka_unit_test(test_not_found_vs_method),
        cmocka_unit_test(test_head_falls_back_to_get),
        cmocka_unit_test(test_long_capture),
        cmocka_unit_test(test_empty_segment),
        cmocka_unit_test(test_trailing_slash),
        cmocka_unit_test(test_too_many_captures),
        cmocka_unit_test(test_rest_capture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
