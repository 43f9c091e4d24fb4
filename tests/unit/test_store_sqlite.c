/*
 * store_sqlite: a real SQLite database in a temporary state dir — schema and WAL mode on open,
 * put/replace/delete/list, what survives a reopen, and the error paths (no such dir, a database
 * path that is a directory or not a database, a database locked by another writer), and the
 * schema version (set on open, a newer one refused).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "store/store.h"

struct fixture {
    char dir[64];
    char db[128];
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/warren-test-store-XXXXXX");
    if (!mkdtemp(fx->dir)) {
        print_error("store setup: mkdtemp %s: %s\n", fx->dir, strerror(errno));
        free(fx);
        return -1;
    }
    snprintf(fx->db, sizeof(fx->db), "%s/warren.db", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    util_remove_tree(fx->dir);
    free(fx);
    return 0;
}

/* What store_list() reported, in order. */
struct listing {
    int n;
    char ids[16][64];
    char json[16][256];
};

static void collect(const char *id, const char *json, void *arg)
{
    struct listing *l = arg;
    assert_true(l->n < 16);
    snprintf(l->ids[l->n], sizeof(l->ids[0]), "%s", id);
    snprintf(l->json[l->n], sizeof(l->json[0]), "%s", json);
    l->n++;
}

/* The json stored for `id`, or NULL. */
static const char *find(const struct listing *l, const char *id)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->ids[i], id) == 0)
            return l->json[i];
    return NULL;
}

static struct listing list_all(store_t *st)
{
    struct listing l = {0};
    assert_int_equal(store_list(st, STORE_SANDBOX, collect, &l), 0);
    return l;
}

/* A second, independent connection to the same file (as another process would have). */
static sqlite3 *raw_open(const char *path)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    return db;
}

static void raw_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fail_msg("%s: %s", sql, err ? err : "?");
}

static void test_open_creates_schema_in_wal_mode(void **state)
{
    struct fixture *fx = *state;
    store_t *st = NULL;
    assert_int_equal(access(fx->db, F_OK), -1);
    assert_int_equal(store_open(&st, fx->dir), 0);
    assert_non_null(st);
    assert_int_equal(access(fx->db, F_OK), 0);
    assert_int_equal(list_all(st).n, 0);

    sqlite3 *db = raw_open(fx->db);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT sql FROM sqlite_master WHERE name='sandboxes'",
                                        -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_non_null(strstr((const char *)sqlite3_column_text(q, 0), "id TEXT PRIMARY KEY"));
    sqlite3_finalize(q);
    sqlite3_close(db);
    store_close(st);
    /* Opening an existing database again keeps it (CREATE TABLE IF NOT EXISTS). */
    assert_int_equal(store_open(&st, fx->dir), 0);
    store_close(st);
}

static int user_version(const char *path)
{
    sqlite3 *db = raw_open(path);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int v = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return v;
}

static void test_schema_version(void **state)
{
    struct fixture *fx = *state;
    store_t *st = NULL;
    assert_int_equal(store_open(&st, fx->dir), 0);
    assert_int_equal(store_put(st, STORE_SANDBOX, "a", "{}"), 0);
    store_close(st);
    int v = user_version(fx->db);
    assert_true(v >= 1);
    /* A store of a newer warren is refused, and left as it was. */
    sqlite3 *db = raw_open(fx->db);
    raw_exec(db, "PRAGMA user_version = 999");
    sqlite3_close(db);
    st = NULL;
    assert_int_equal(store_open(&st, fx->dir), -EPROTONOSUPPORT);
    assert_null(st);
    assert_int_equal(user_version(fx->db), 999);
    /* A store from before versioning (version 0, the table there) is taken as is. */
    db = raw_open(fx->db);
    raw_exec(db, "PRAGMA user_version = 0");
    sqlite3_close(db);
    assert_int_equal(store_open(&st, fx->dir), 0);
    assert_int_equal(list_all(st).n, 1);
    store_close(st);
    assert_int_equal(user_version(fx->db), v);
}

static void test_put_replace_delete_list(void **state)
{
    struct fixture *fx = *state;
    store_t *st = NULL;
    assert_int_equal(store_open(&st, fx->dir), 0);
    assert_int_equal(store_put(st, STORE_SANDBOX, "sb-a", "{\"name\":\"a\"}"), 0);
    assert_int_equal(store_put(st, STORE_SANDBOX, "sb-b", "{\"name\":\"b\"}"), 0);
    /* Text that needs quoting in SQL goes in and out unchanged (bound, not spliced). */
    assert_int_equal(
        store_put(st, STORE_SANDBOX, "sb-'q\"", "{\"x\":\"it's; DROP TABLE sandboxes;--\"}"), 0);
    struct listing l = list_all(st);
    assert_int_equal(l.n, 3);
    assert_string_equal(find(&l, "sb-a"), "{\"name\":\"a\"}");
    assert_string_equal(find(&l, "sb-b"), "{\"name\":\"b\"}");
    assert_string_equal(find(&l, "sb-'q\""), "{\"x\":\"it's; DROP TABLE sandboxes;--\"}");

    /* put replaces: still one record per id */
    assert_int_equal(store_put(st, STORE_SANDBOX, "sb-a", "{\"name\":\"a2\"}"), 0);
    l = list_all(st);
    assert_int_equal(l.n, 3);
    assert_string_equal(find(&l, "sb-a"), "{\"name\":\"a2\"}");

    assert_int_equal(store_delete(st, STORE_SANDBOX, "sb-b"), 0);
    /* deleting what is not there is not an error */
    assert_int_equal(store_delete(st, STORE_SANDBOX, "sb-b"), 0);
    assert_int_equal(store_delete(st, STORE_SANDBOX, "sb-never"), 0);
    l = list_all(st);
    assert_int_equal(l.n, 2);
    assert_null(find(&l, "sb-b"));
    assert_non_null(find(&l, "sb-a"));
    store_close(st);
}

static void test_large_record(void **state)
{
    struct fixture *fx = *state;
    store_t *st = NULL;
    size_t n = 1 << 20;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, 'j', n);
    big[n] = '\0';
    assert_int_equal(store_open(&st, fx->dir), 0);
    assert_int_equal(store_put(st, STORE_SANDBOX, "sb-big", big), 0);
    store_close(st);

    sqlite3 *db = raw_open(fx->db);
    sqlite3_stmt *q;
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT json FROM sandboxes WHERE id='sb-big'", -1, &q, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_int_equal(sqlite3_column_bytes(q, 0), (int)n);
    assert_memory_equal(sqlite3_column_text(q, 0), big, n);
    sqlite3_finalize(q);
    sqlite3_close(db);
    free(big);
}

static void test_reopen_persists(void **state)
{
    struct fixture *fx = *state;
    store_t *st = NULL;
    assert_int_equal(store_open(&st, fx->dir), 0);
    for (int i = 0; i < 10; i++) {
        char id[16], json[32];
        snprintf(id, sizeof(id), "sb-%d", i);
        snprintf(json, sizeof(json), "{\"i\":%d}", i);
        assert_int_equal(store_put(st, STORE_SANDBOX, id, json), 0);
    }
    assert_int_equal(store_delete(st, STORE_SANDBOX, "sb-3"), 0);
    store_close(st);

    assert_int_equal(store_open(&st, fx->dir), 0);
    struct listing l = list_all(st);
    assert_int_equal(l.n, 9);
    assert_null(find(&l, "sb-3"));
    assert_string_equal(find(&l, "sb-9"), "{\"i\":9}");
    store_close(st);
}

static void test_second_store_sees_writes(void **state)
{
    /* Two daemons never share a state dir, but a restarted one may open it while the old
     * connection is still being closed: a second connection reads what the first committed. */
    struct fixture *fx = *state;
    store_t *a = NULL, *b = NULL;
    assert_int_equal(store_open(&a, fx->dir), 0);
    assert_int_equal(store_open(&b, fx->dir), 0);
    assert_int_equal(store_put(a, STORE_SANDBOX, "sb-x", "{}"), 0);
    struct listing l = list_all(b);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.ids[0], "sb-x");
    store_close(a);
    store_close(b);
}

static void test_open_errors(void **state)
{
    struct fixture *fx = *state;
    store_t *st = (store_t *)0x1; /* must not be touched on failure */
    char path[192];

    snprintf(path, sizeof(path), "%s/no/such/dir", fx->dir);
    assert_int_equal(store_open(&st, path), -EIO);
    assert_ptr_equal(st, (store_t *)0x1);

    /* The database path is a directory. */
    assert_int_equal(mkdir(fx->db, 0700), 0);
    assert_int_equal(store_open(&st, fx->dir), -EIO);
    assert_int_equal(rmdir(fx->db), 0);

    /* The database path holds something that is not a database. */
    FILE *f = fopen(fx->db, "w");
    assert_non_null(f);
    for (int i = 0; i < 512; i++)
        fputs("not a database ", f);
    fclose(f);
    assert_int_equal(store_open(&st, fx->dir), -EIO);
    assert_ptr_equal(st, (store_t *)0x1);
}

static void test_locked_database_is_an_error(void **state)
{
    struct fixture *fx = *state;
    store_t *st = NULL;
    assert_int_equal(store_open(&st, fx->dir), 0);
    assert_int_equal(store_put(st, STORE_SANDBOX, "sb-1", "{}"), 0);

    /* Another writer holds the write lock past the store's busy timeout: writes fail with -EIO
     * (and leave the store usable), reads still work (WAL). */
    sqlite3 *db = raw_open(fx->db);
    raw_exec(db, "BEGIN IMMEDIATE; INSERT INTO sandboxes VALUES('sb-other', '{}');");
    assert_int_equal(store_put(st, STORE_SANDBOX, "sb-2", "{}"), -EIO);
    assert_int_equal(store_delete(st, STORE_SANDBOX, "sb-1"), -EIO);
    struct listing l = list_all(st);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.ids[0], "sb-1");
    raw_exec(db, "COMMIT;");
    sqlite3_close(db);

    assert_int_equal(store_put(st, STORE_SANDBOX, "sb-2", "{}"), 0);
    assert_int_equal(store_delete(st, STORE_SANDBOX, "sb-1"), 0);
    l = list_all(st);
    assert_int_equal(l.n, 2);
    assert_non_null(find(&l, "sb-2"));
    assert_non_null(find(&l, "sb-other"));
    store_close(st);
}

/* A listing callback that writes its record back (a template whose pull restarts at start-up)
 * sees each record once: the listing must not chase its own writes. */
struct rewrite {
    store_t *st;
    int calls;
};

static void put_back(const char *id, const char *json, void *arg)
{
    struct rewrite *w = arg;
    w->calls++;
    assert_true(w->calls <= 3);
    assert_int_equal(store_put(w->st, STORE_TEMPLATE, id, json), 0);
}

static void test_list_callback_may_write(void **state)
{
    struct fixture *fx = *state;
    store_t *st = NULL;
    assert_int_equal(store_open(&st, fx->dir), 0);
    struct rewrite w = {st, 0};
    assert_int_equal(store_put(st, STORE_TEMPLATE, "a", "{}"), 0);
    assert_int_equal(store_put(st, STORE_TEMPLATE, "b", "{}"), 0);
    assert_int_equal(store_put(st, STORE_TEMPLATE, "c", "{}"), 0);
    assert_int_equal(store_list(st, STORE_TEMPLATE, put_back, &w), 0);
    assert_int_equal(w.calls, 3);
    /* The kinds are separate tables. */
    assert_int_equal(list_all(st).n, 0);
    store_close(st);
}

static void test_close_null(void **state)
{
    (void)state;
    store_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_creates_schema_in_wal_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schema_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_replace_delete_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_persists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_store_sees_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locked_database_is_an_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_callback_may_write, setup, teardown),
        cmocka_unit_test(test_close_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
