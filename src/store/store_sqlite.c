/*
 * store_sqlite — store.h on SQLite.
 */
#include "store/store.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

/* One table per kind of record, each (key, json). */
static const char *const tables[STORE_KINDS] = {"sandboxes", "templates", "released", "pools",
                                                "volumes"};

struct store {
    sqlite3 *db;
    sqlite3_stmt *put[STORE_KINDS];
    sqlite3_stmt *del[STORE_KINDS];
};

/* The schema, as an ordered list of steps: step i brings a store from version i to i + 1
 * (PRAGMA user_version). Add steps at the end; never change one that shipped. */
static const char *const migrations[] = {
    /* 0 → 1: the sandboxes' records (a store made before versioning is at 0 with this table) */
    "CREATE TABLE IF NOT EXISTS sandboxes (id TEXT PRIMARY KEY, json TEXT NOT NULL);",
    /* 1 → 2: templates (session/templates.h) */
    "CREATE TABLE IF NOT EXISTS templates (id TEXT PRIMARY KEY, json TEXT NOT NULL);",
    /* 2 → 3: records of deleted sandboxes (session/session.h) and warm pools (session/pool.h) */
    ("CREATE TABLE IF NOT EXISTS released (id TEXT PRIMARY KEY, json TEXT NOT NULL);"
     "CREATE TABLE IF NOT EXISTS pools (id TEXT PRIMARY KEY, json TEXT NOT NULL);"),
    /* 3 → 4: volumes (session/volume.h) */
    "CREATE TABLE IF NOT EXISTS volumes (id TEXT PRIMARY KEY, json TEXT NOT NULL);",
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
    for (int k = 0; r == 0 && k < STORE_KINDS; k++) {
        char sql[128];
        snprintf(sql, sizeof(sql), "INSERT OR REPLACE INTO %s(id, json) VALUES(?, ?)", tables[k]);
        if (sqlite3_prepare_v2(st->db, sql, -1, &st->put[k], NULL) != SQLITE_OK)
            r = fail(st, "schema");
        snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE id = ?", tables[k]);
        if (r == 0 && sqlite3_prepare_v2(st->db, sql, -1, &st->del[k], NULL) != SQLITE_OK)
            r = fail(st, "schema");
    }
    if (r < 0) {
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
    for (int k = 0; k < STORE_KINDS; k++) {
        sqlite3_finalize(st->put[k]);
        sqlite3_finalize(st->del[k]);
    }
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

int store_put(store_t *st, enum store_kind kind, const char *id, const char *json)
{
    sqlite3_bind_text(st->put[kind], 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st->put[kind], 2, json, -1, SQLITE_STATIC);
    return step_once(st, st->put[kind], "put");
}

int store_delete(store_t *st, enum store_kind kind, const char *id)
{
    sqlite3_bind_text(st->del[kind], 1, id, -1, SQLITE_STATIC);
    return step_once(st, st->del[kind], "delete");
}

int store_list(store_t *st, enum store_kind kind, store_record_fn fn, void *arg)
{
    /* Rows are read to the end before fn sees any: fn may write to the store (a record put
     * back while the SELECT still runs would be visited again, for ever). */
    sqlite3_stmt *q;
    char sql[64];
    char **rows = NULL;
    size_t n = 0, cap = 0;
    int rc, r = 0;
    snprintf(sql, sizeof(sql), "SELECT id, json FROM %s", tables[kind]);
    if (sqlite3_prepare_v2(st->db, sql, -1, &q, NULL) != SQLITE_OK)
        return fail(st, "list");
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (n + 2 > cap) {
            char **v = realloc(rows, (cap = cap ? 2 * cap : 32) * sizeof(*v));
            if (!v) {
                r = -ENOMEM;
                break;
            }
            rows = v;
        }
        rows[n] = strdup((const char *)sqlite3_column_text(q, 0));
        rows[n + 1] = strdup((const char *)sqlite3_column_text(q, 1));
        n += 2;
        if (!rows[n - 2] || !rows[n - 1]) {
            r = -ENOMEM;
            break;
        }
    }
    sqlite3_finalize(q);
    if (r == 0 && rc != SQLITE_DONE)
        r = fail(st, "list");
    for (size_t i = 0; r == 0 && i < n; i += 2)
        fn(rows[i], rows[i + 1], arg);
    for (size_t i = 0; i < n; i++)
        free(rows[i]);
    free(rows);
    return r;
}
