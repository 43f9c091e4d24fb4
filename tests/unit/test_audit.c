/*
 * audit: record/read round trip, filters, time bounds, rotation, torn lines, limits, modes,
 * concurrent writers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "session/audit.h"

struct fixture {
    char base[64]; /* a temporary directory */
    char dir[128]; /* base/audit (created by audit_open) */
    char log[192]; /* dir/audit.log */
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    snprintf(fx->base, sizeof(fx->base), "/tmp/warren-test-audit-XXXXXX");
    if (!mkdtemp(fx->base)) {
        print_error("audit setup: mkdtemp %s: %s\n", fx->base, strerror(errno));
        free(fx);
        return -1;
    }
    snprintf(fx->dir, sizeof(fx->dir), "%s/audit", fx->base);
    snprintf(fx->log, sizeof(fx->log), "%s/audit.log", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    util_remove_tree(fx->base);
    free(fx);
    return 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static json_t *read_all(struct audit *a, const char *sandbox, const char *since, const char *until,
                        const char *event, size_t limit, int *truncated)
{
    json_t *arr = NULL;
    int t = -1;
    assert_int_equal(audit_read(a, sandbox, since, until, event, limit, &arr, &t), 0);
    assert_non_null(arr);
    assert_true(t == 0 || t == 1);
    if (truncated)
        *truncated = t;
    return arr;
}

static const char *str(json_t *arr, size_t i, const char *key)
{
    return json_string_value(json_object_get(json_array_get(arr, i), key));
}

static void test_round_trip(void **state)
{
    struct fixture *fx = *state;
    struct audit *a;
    struct stat st;
    assert_int_equal(audit_open(fx->dir, 0, 4, &a), 0);
    json_t *labels = json_pack("{s:s}", "team", "red");
    assert_int_equal(
        audit_record(a, "sandbox.create", "sb-aaa", labels,
                     json_pack("{s:b, s:s, s:s}", "ok", 1, "name", "box", "event", "forged"),
                     "127.0.0.1:5555"),
        0);
    assert_int_equal(audit_record(a, "exec", "sb-aaa", labels,
                                  json_pack("{s:b, s:[ss]}", "ok", 1, "argv", "ls", "-l"), NULL),
                     0);
    assert_int_equal(audit_record(a, "egress.deny", NULL, NULL, NULL, "unix"), 0);
    assert_int_equal(audit_record(a, "", NULL, NULL, json_object(), NULL), -EINVAL);
    assert_int_equal(audit_record(NULL, "exec", NULL, NULL, json_object(), NULL), 0);
    json_decref(labels);

    json_t *arr = read_all(a, NULL, NULL, NULL, NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 3);
    assert_string_equal(str(arr, 0, "event"), "sandbox.create"); /* not the forged one */
    assert_string_equal(str(arr, 0, "sandbox"), "sb-aaa");
    assert_string_equal(str(arr, 0, "caller"), "127.0.0.1:5555");
    assert_string_equal(str(arr, 0, "name"), "box");
    assert_true(json_is_true(json_object_get(json_array_get(arr, 0), "ok")));
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(arr, 0), "labels"), "team")),
                        "red");
    int64_t ms;
    assert_int_equal(strlen(str(arr, 0, "ts")), 24); /* 2026-11-23T10:00:00.123Z */
    assert_int_equal(audit_parse_time(str(arr, 0, "ts"), &ms), 0);
    assert_null(json_object_get(json_array_get(arr, 1), "caller"));
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(json_array_get(arr, 1), "argv"), 1)),
        "-l");
    assert_null(json_object_get(json_array_get(arr, 2), "sandbox"));
    assert_null(json_object_get(json_array_get(arr, 2), "labels"));
    json_decref(arr);

    /* The first line starts with the fixed members, in order. */
    char line[512];
    FILE *f = fopen(fx->log, "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    assert_memory_equal(line, "{\"ts\":\"", 7);
    assert_non_null(strstr(line, "\",\"event\":\"sandbox.create\",\"sandbox\":\"sb-aaa\","
                                 "\"labels\":{\"team\":\"red\"},\"caller\":\"127.0.0.1:5555\","));

    /* 0600 file, 0700 directory. */
    assert_int_equal(stat(fx->log, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(stat(fx->dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    audit_close(a);
}

static void test_mode_enforced_on_existing_file(void **state)
{
    struct fixture *fx = *state;
    struct audit *a;
    struct stat st;
    assert_int_equal(mkdir(fx->dir, 0755), 0);
    write_file(fx->log, "");
    assert_int_equal(chmod(fx->log, 0644), 0);
    assert_int_equal(audit_open(fx->dir, 0, 4, &a), 0);
    assert_int_equal(stat(fx->log, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(stat(fx->dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    audit_close(a);
    assert_int_equal(audit_open(fx->dir, 0, -1, &a), -EINVAL);
    assert_int_equal(audit_open(fx->dir, 0, AUDIT_KEEP_MAX + 1, &a), -EINVAL);
}

static void test_filters(void **state)
{
    struct fixture *fx = *state;
    struct audit *a;
    assert_int_equal(audit_open(fx->dir, 0, 4, &a), 0);
    audit_record(a, "sandbox.create", "sb-1", NULL, NULL, NULL);
    audit_record(a, "exec", "sb-1", NULL, NULL, NULL);
    audit_record(a, "sandbox.create", "sb-2", NULL, NULL, NULL);
    audit_record(a, "exec", "sb-2", NULL, NULL, NULL);
    audit_record(a, "sandbox.delete", "sb-1", NULL, NULL, NULL);
    audit_record(a, "execute", "sb-1", NULL, NULL, NULL);

    json_t *arr = read_all(a, "sb-1", NULL, NULL, NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 4);
    assert_string_equal(str(arr, 3, "event"), "execute");
    json_decref(arr);
    arr = read_all(a, NULL, NULL, NULL, "exec", 100, NULL);
    assert_int_equal(json_array_size(arr), 2); /* exact: not "execute" */
    assert_string_equal(str(arr, 1, "sandbox"), "sb-2");
    json_decref(arr);
    arr = read_all(a, "sb-1", NULL, NULL, "sandbox.*", 100, NULL);
    assert_int_equal(json_array_size(arr), 2);
    assert_string_equal(str(arr, 0, "event"), "sandbox.create");
    assert_string_equal(str(arr, 1, "event"), "sandbox.delete");
    json_decref(arr);
    arr = read_all(a, "sb-3", NULL, NULL, NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    /* A sandbox value that cannot be searched as raw text still filters exactly. */
    arr = read_all(a, "sb \"x\"", NULL, NULL, NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    audit_close(a);
}

static void test_since_until(void **state)
{
    struct fixture *fx = *state;
    struct audit *a;
    assert_int_equal(mkdir(fx->dir, 0700), 0);
    write_file(fx->log, "{\"ts\":\"2026-01-01T10:00:00.000Z\",\"event\":\"a\"}\n"
                        "{\"ts\":\"2026-01-01T10:00:01.500Z\",\"event\":\"b\"}\n"
                        "not json at all\n"
                        "\n"
                        "[1,2]\n"
                        "{\"event\":\"no ts\"}\n"
                        "{\"ts\":\"2026-01-01T10:00:02.000Z\",\"event\":\"c\"}\n"
                        "{\"ts\":\"2026-01-01T10:00:03.000Z\",\"event\":\"d\"}\n");
    assert_int_equal(audit_open(fx->dir, 0, 4, &a), 0);
    json_t *arr = read_all(a, NULL, NULL, NULL, NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 4);
    json_decref(arr);
    /* Both bounds are inclusive; sub-second and offsets count. */
    arr = read_all(a, NULL, "2026-01-01T10:00:01.5Z", "2026-01-01T10:00:02Z", NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 2);
    assert_string_equal(str(arr, 0, "event"), "b");
    assert_string_equal(str(arr, 1, "event"), "c");
    json_decref(arr);
    arr = read_all(a, NULL, "2026-01-01T11:00:01.501+01:00", NULL, NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 2);
    assert_string_equal(str(arr, 0, "event"), "c");
    json_decref(arr);
    arr = read_all(a, NULL, NULL, "2026-01-01T09:59:59.999Z", NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    json_t *out = NULL;
    assert_int_equal(audit_read(a, NULL, "yesterday", NULL, NULL, 10, &out, NULL), -EINVAL);
    assert_int_equal(audit_read(a, NULL, NULL, "2026-13-01T00:00:00Z", NULL, 10, &out, NULL),
                     -EINVAL);
    assert_int_equal(audit_read(a, NULL, NULL, NULL, NULL, 0, &out, NULL), -EINVAL);
    assert_null(out);
    audit_close(a);
}

static void test_parse_time(void **state)
{
    int64_t ms;
    char out[32];
    (void)state;
    assert_int_equal(audit_parse_time("1970-01-01T00:00:00Z", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(audit_parse_time("1970-01-01t00:00:01.25z", &ms), 0);
    assert_int_equal(ms, 1250);
    assert_int_equal(audit_parse_time("1970-01-01T00:00:01.123456789Z", &ms), 0);
    assert_int_equal(ms, 1123);
    assert_int_equal(audit_parse_time("1970-01-01T02:00:00+02:00", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(audit_parse_time("1970-01-01T02:00:00 02:00", &ms), 0); /* '+' from a URL */
    assert_int_equal(ms, 0);
    assert_int_equal(audit_parse_time("1969-12-31T23:00:00-01:00", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(audit_parse_time("2024-02-29T00:00:00Z", &ms), 0);
    audit_format_time(1764000000123, out, sizeof(out));
    assert_string_equal(out, "2025-11-24T16:00:00.123Z");
    assert_int_equal(audit_parse_time(out, &ms), 0);
    assert_int_equal(ms, 1764000000123);
    static const char *const bad[] = {"",
                                      "2026-01-01",
                                      "2026-01-01T00:00:00",
                                      "2026-01-01 00:00:00Z",
                                      "2026-1-01T00:00:00Z",
                                      "2025-02-29T00:00:00Z",
                                      "2026-01-01T24:00:00Z",
                                      "2026-01-01T00:60:00Z",
                                      "2026-01-01T00:00:00.Z",
                                      "2026-01-01T00:00:00+0200",
                                      "2026-01-01T00:00:00Zjunk",
                                      "abcd-01-01T00:00:00Z",
                                      NULL};
    for (size_t i = 0; bad[i]; i++)
        assert_int_equal(audit_parse_time(bad[i], &ms), -EINVAL);
}

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    int n = 0, c;
    if (!f)
        return -1;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

static void test_rotation(void **state)
{
    struct fixture *fx = *state;
    struct audit *a;
    char path[256];
    struct stat st;
    const size_t max = 400;
    assert_int_equal(audit_open(fx->dir, max, 2, &a), 0);
    for (int i = 0; i < 40; i++)
        assert_int_equal(
            audit_record(a, "exec", "sb-rot", NULL, json_pack("{s:i}", "seq", i), "127.0.0.1:1"),
            0);
    int total = 0;
    for (int i = 0; i <= 3; i++) {
        if (i == 0)
            snprintf(path, sizeof(path), "%s", fx->log);
        else
            snprintf(path, sizeof(path), "%s.%d", fx->log, i);
        if (i == 3) {
            assert_int_equal(stat(path, &st), -1); /* keep 2: the oldest was dropped */
            break;
        }
        assert_int_equal(stat(path, &st), 0);
        assert_true((size_t)st.st_size <= max);
        assert_int_equal(st.st_mode & 07777, 0600);
        total += count_lines(path);
    }
    assert_true(total > 3 && total < 40);
    /* Read across the files, oldest first: the last `total` records, in order. */
    json_t *arr = read_all(a, NULL, NULL, NULL, NULL, 1000, NULL);
    assert_int_equal((int)json_array_size(arr), total);
    for (int i = 0; i < total; i++)
        assert_int_equal(json_integer_value(json_object_get(json_array_get(arr, (size_t)i), "seq")),
                         40 - total + i);
    json_decref(arr);
    audit_close(a);

    /* keep 0: the full file is just started afresh. */
    util_remove_tree(fx->dir);
    assert_int_equal(audit_open(fx->dir, max, 0, &a), 0);
    for (int i = 0; i < 40; i++)
        audit_record(a, "exec", "sb-rot", NULL, json_pack("{s:i}", "seq", i), NULL);
    snprintf(path, sizeof(path), "%s.1", fx->log);
    assert_int_equal(stat(path, &st), -1);
    arr = read_all(a, NULL, NULL, NULL, NULL, 1000, NULL);
    assert_true(json_array_size(arr) >= 1 && json_array_size(arr) < 40);
    assert_int_equal(
        json_integer_value(json_object_get(json_array_get(arr, json_array_size(arr) - 1), "seq")),
        39);
    json_decref(arr);
    audit_close(a);
}

static void test_torn_last_line(void **state)
{
    struct fixture *fx = *state;
    struct audit *a;
    assert_int_equal(mkdir(fx->dir, 0700), 0);
    write_file(fx->log, "{\"ts\":\"2026-01-01T10:00:00.000Z\",\"event\":\"a\"}\n"
                        "{\"ts\":\"2026-01-01T10:00:01.000Z\",\"event\":\"b\"}\n"
                        "{\"ts\":\"2026-01-01T10:00:02.000Z\",\"event\":\"torn\",\"sa");
    assert_int_equal(audit_open(fx->dir, 0, 4, &a), 0);
    json_t *arr = read_all(a, NULL, NULL, NULL, NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 2);
    assert_string_equal(str(arr, 1, "event"), "b");
    json_decref(arr);
    /* The next record starts on a line of its own. */
    assert_int_equal(audit_record(a, "c", NULL, NULL, NULL, NULL), 0);
    arr = read_all(a, NULL, NULL, NULL, NULL, 100, NULL);
    assert_int_equal(json_array_size(arr), 3);
    assert_string_equal(str(arr, 2, "event"), "c");
    json_decref(arr);
    assert_int_equal(count_lines(fx->log), 4);
    audit_close(a);
}

static void test_limit_truncated(void **state)
{
    struct fixture *fx = *state;
    struct audit *a;
    int truncated;
    assert_int_equal(audit_open(fx->dir, 0, 4, &a), 0);
    for (int i = 0; i < 10; i++)
        audit_record(a, i % 2 ? "exec" : "file.write", "sb-lim", NULL, json_pack("{s:i}", "seq", i),
                     NULL);
    json_t *arr = read_all(a, NULL, NULL, NULL, NULL, 3, &truncated);
    assert_int_equal(json_array_size(arr), 3);
    assert_int_equal(truncated, 1);
    for (int i = 0; i < 3; i++) /* the most recent, in order */
        assert_int_equal(json_integer_value(json_object_get(json_array_get(arr, (size_t)i), "seq")),
                         7 + i);
    json_decref(arr);
    arr = read_all(a, NULL, NULL, NULL, NULL, 10, &truncated);
    assert_int_equal(json_array_size(arr), 10);
    assert_int_equal(truncated, 0);
    json_decref(arr);
    arr = read_all(a, NULL, NULL, NULL, "exec", 5, &truncated);
    assert_int_equal(json_array_size(arr), 5);
    assert_int_equal(truncated, 0);
    json_decref(arr);
    audit_close(a);
}

static void test_huge_record_is_cut(void **state)
{
    struct fixture *fx = *state;
    struct audit *a;
    assert_int_equal(audit_open(fx->dir, 0, 4, &a), 0);
    char *big = malloc(AUDIT_LINE_MAX + 10);
    memset(big, 'x', AUDIT_LINE_MAX + 9);
    big[AUDIT_LINE_MAX + 9] = '\0';
    json_t *labels = json_pack("{s:s}", "big", big);
    assert_int_equal(
        audit_record(a, "exec", "sb-big", labels,
                     json_pack("{s:b, s:s, s:s}", "ok", 0, "error", "bad_request", "shell", big),
                     "unix"),
        0);
    json_decref(labels);
    free(big);
    json_t *arr = read_all(a, NULL, NULL, NULL, NULL, 10, NULL);
    assert_int_equal(json_array_size(arr), 1);
    json_t *o = json_array_get(arr, 0);
    assert_true(json_is_true(json_object_get(o, "truncated")));
    assert_string_equal(json_string_value(json_object_get(o, "error")), "bad_request");
    assert_string_equal(json_string_value(json_object_get(o, "caller")), "unix");
    assert_null(json_object_get(o, "shell"));
    assert_null(json_object_get(o, "labels"));
    json_decref(arr);
    audit_close(a);
}

struct writer {
    struct audit *a;
    int id;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    for (int i = 0; i < 300; i++)
        audit_record(w->a, "exec", "sb-mt", NULL, json_pack("{s:i, s:i}", "w", w->id, "i", i),
                     NULL);
    return NULL;
}

static void test_concurrent_writers(void **state)
{
    struct fixture *fx = *state;
    struct audit *a;
    pthread_t th[4];
    struct writer w[4];
    /* Small files and many of them: rotations happen while others write and a reader reads. */
    assert_int_equal(audit_open(fx->dir, 8192, AUDIT_KEEP_MAX, &a), 0);
    for (int i = 0; i < 4; i++) {
        w[i] = (struct writer){a, i};
        assert_int_equal(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
    }
    for (int k = 0; k < 5; k++) {
        json_t *arr = read_all(a, NULL, NULL, NULL, NULL, 10000, NULL);
        json_decref(arr);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    json_t *arr = read_all(a, "sb-mt", NULL, NULL, "exec", 10000, NULL);
    assert_int_equal(json_array_size(arr), 1200);
    int next[4] = {0};
    for (size_t k = 0; k < 1200; k++) { /* each writer's records in its order */
        json_t *o = json_array_get(arr, k);
        int id = (int)json_integer_value(json_object_get(o, "w"));
        assert_int_equal(json_integer_value(json_object_get(o, "i")), next[id]++);
    }
    json_decref(arr);
    audit_close(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode_enforced_on_existing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_since_until, setup, teardown),
        cmocka_unit_test(test_parse_time),
        cmocka_unit_test_setup_teardown(test_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_last_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limit_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_huge_record_is_cut, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
