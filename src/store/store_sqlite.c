/*
 * store_sqlite — store.h on SQLite.
 */
#include "store/store.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/log.h"

struct store {
    sqlite3 *db;
    sqlite3_stmt *put;
    sqlite3_stmt *del;
};

/* The schema, as an ordered list of steps: step i brings a store from version i to i + 1
 * (PRAGMA user_version). Add steps at the end; never change one that shipped. */
static const char *const migrations[] = {
    /* 0 → 1: the sandboxes' records (a store made before versioning is at 0 with this table) */
    "CREATE TABLE IF NOT EXISTS sandboxes (id TEXT PRIMARY KEY, json TEXT NOT NULL);",
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

static int fail(store_t *st, const char *what)
{
    log_error("store: %s: %s", what, sqlite3_errmsg(st->db));
    return -EIO;
}

static int user_version(store_t *st, int *version)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &q, NULL) != SQLITE_OK)
        return fail(st, "schema version");
    int rc = sqlite3_step(q);
    *version = rc == SQLITE_ROW ? sqlite3_column_int(q, 0) : 0;
    sqlite3_finalize(q);
    return rc == SQLITE_ROW ? 0 : fail(st, "schema version");
}

/* Brings the schema to SCHEMA_VERSION, each step in a transaction with its version number.
 * A store of a newer schema is refused: this daemon would misread it, or break it. */
static int migrate(store_t *st, const char *path)
{
    int version, r;
    if (sqlite3_exec(st->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL, NULL,
                     NULL) != SQLITE_OK)
        return fail(st, "journal mode");
    if ((r = user_version(st, &version)) < 0)
        return r;
    if (version > SCHEMA_VERSION) {
        log_error("store: %s has schema version %d, written by a newer warren; this one knows up "
                  "to version %d. Refusing to start: run the newer warren on this state dir, or "
                  "use another state dir.",
                  path, version, SCHEMA_VERSION);
        return -EPROTONOSUPPORT;
    }
    for (; version < SCHEMA_VERSION; version++) {
        char bump[64];
        snprintf(bump, sizeof(bump), "PRAGMA user_version = %d;", version + 1);
        if (sqlite3_exec(st->db, "BEGIN IMMEDIATE;", NULL, NULL, NULL) != SQLITE_OK)
            return fail(st, "migration");
        if (sqlite3_exec(st->db, migrations[version], NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(st->db, bump, NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(st->db, "COMMIT;", NULL, NULL, NULL) != SQLITE_OK) {
            r = fail(st, "migration");
            sqlite3_exec(st->db, "ROLLBACK;", NULL, NULL, NULL);
            return r;
        }
    }
    return 0;
}

int store_open(store_t **out, const char *state_dir)
{
    char path[4096];
    store_t *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    snprintf(path, sizeof(path), "%s/warren.db", state_dir);
    if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        log_error("store: cannot open %s: %s", path, st->db ? sqlite3_errmsg(st->db) : "?");
        store_close(st);
        return -EIO;
    }
    sqlite3_busy_timeout(st->db, 2000);
    int r = migrate(st, path);
    if (r < 0) {
        store_close(st);
        return r;
    }
    if (sqlite3_prepare_v2(st->db, "INSERT OR REPLACE INTO sandboxes(id, json) VALUES(?, ?)", -1,
                           &st->put, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(st->db, "DELETE FROM sandboxes WHERE id = ?", -1, &st->del, NULL) !=
            SQLITE_OK) {
        r = fail(st, "schema");
        store_close(st);
        return r;
    }
    *out = st;
    return 0;
}

void store_close(store_t *st)
{
    if (!st)
        return;
    sqlite3_finalize(st->put);
    sqlite3_finalize(st->del);
    sqlite3_close(st->db);
    free(st);
}

/* Runs a prepared write and resets it at once: a statement left unreset after a failure (e.g.
 * SQLITE_BUSY) keeps its read transaction open, and every later write on the connection then
 * fails on that stale snapshot. */
static int step_once(store_t *st, sqlite3_stmt *stmt, const char *what)
{
    int rc = sqlite3_step(stmt);
    int r = rc == SQLITE_DONE ? 0 : fail(st, what);
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return r;
}

int store_put_sandbox(store_t *st, const char *id, const char *json)
{
    sqlite3_bind_text(st->put, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st->put, 2, json, -1, SQLITE_STATIC);
    return step_once(st, st->put, "put sandbox");
}

int store_delete_sandbox(store_t *st, const char *id)
{
    sqlite3_bind_text(st->del, 1, id, -1, SQLITE_STATIC);
    return step_once(st, st->del, "delete sandbox");
}

int store_list_sandboxes(store_t *st, store_sandbox_fn fn, void *arg)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, "SELECT id, json FROM sandboxes", -1, &q, NULL) != SQLITE_OK)
        return fail(st, "list sandboxes");
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW)
        fn((const char *)sqlite3_column_text(q, 0), (const char *)sqlite3_column_text(q, 1), arg);
    sqlite3_finalize(q);
    return rc == SQLITE_DONE ? 0 : fail(st, "list sandboxes");
}
