/*
 * sessions: session ids, and the released records (a real store in a temporary state dir):
 * loaded in the order of their deletion whatever the store's order, purged by the sweep from
 * memory and from the store once --released-ttl has passed, unreadable ones dropped.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "session/sessions.h"
#include "store/store.h"

static void test_valid_id(void **state)
{
    char longest[SANDBOX_SESSION_MAX + 2];
    (void)state;
    assert_true(sessions_valid_id("a"));
    assert_true(sessions_valid_id("ep-1:a_b.c"));
    assert_true(sessions_valid_id("-leading.dash:ok"));
    memset(longest, 'x', sizeof(longest));
    longest[SANDBOX_SESSION_MAX] = '\0';
    assert_true(sessions_valid_id(longest));
    longest[SANDBOX_SESSION_MAX] = 'x';
    longest[SANDBOX_SESSION_MAX + 1] = '\0';
    assert_false(sessions_valid_id(longest));
    assert_false(sessions_valid_id(""));
    assert_false(sessions_valid_id("a b"));
    assert_false(sessions_valid_id("a/b"));
    assert_false(sessions_valid_id("é"));
}

struct fixture {
    char dir[64];
    store_t *st;
    struct registry reg;
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/warren-test-sessions-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    assert_int_equal(store_open(&fx->st, fx->dir), 0);
    fx->reg.store = fx->st;
    fx->reg.released_ttl_s = 100;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    sessions_released_free(&fx->reg);
    store_close(fx->st);
    util_remove_tree(fx->dir);
    free(fx);
    return 0;
}

static void put(struct fixture *fx, const char *id, double deleted_at)
{
    char json[256];
    snprintf(json, sizeof(json), "{\"id\":\"%s\",\"state\":\"deleted\",\"deleted_at_s\":%f}", id,
             deleted_at);
    assert_int_equal(store_put(fx->st, STORE_RELEASED, id, json), 0);
}

static void count_cb(const char *id, const char *json, void *arg)
{
    (void)id;
    (void)json;
    ++*(int *)arg;
}

static int stored(struct fixture *fx)
{
    int n = 0;
    assert_int_equal(store_list(fx->st, STORE_RELEASED, count_cb, &n), 0);
    return n;
}

static const char *id_of(const struct released *r)
{
    return json_string_value(json_object_get(r->record, "id"));
}

static void test_released_load_in_order_and_sweep(void **state)
{
    struct fixture *fx = *state;
    put(fx, "sb-c", 1030);
    put(fx, "sb-a", 1010);
    put(fx, "sb-b", 1020);
    assert_int_equal(store_put(fx->st, STORE_RELEASED, "sb-bad", "{not json"), 0);
    sessions_released_load(&fx->reg);
    struct released *r = fx->reg.released_head;
    assert_non_null(r);
    assert_string_equal(id_of(r), "sb-a");
    assert_string_equal(id_of(r->next), "sb-b");
    assert_string_equal(id_of(r->next->next), "sb-c");
    assert_null(r->next->next->next);
    assert_ptr_equal(fx->reg.released_tail, r->next->next);
    assert_int_equal(stored(fx), 3); /* the unreadable one is gone */

    sessions_released_sweep(&fx->reg, 1000 + 100); /* nothing is 100 s old yet */
    assert_int_equal(stored(fx), 3);
    sessions_released_sweep(&fx->reg, 1020 + 100); /* sb-a and sb-b */
    assert_string_equal(id_of(fx->reg.released_head), "sb-c");
    assert_int_equal(stored(fx), 1);
    sessions_released_sweep(&fx->reg, 1e9);
    assert_null(fx->reg.released_head);
    assert_null(fx->reg.released_tail);
    assert_int_equal(stored(fx), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_id),
        cmocka_unit_test_setup_teardown(test_released_load_in_order_and_sweep, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
