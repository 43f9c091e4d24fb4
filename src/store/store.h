/*
 * store — the durable registry of sandboxes, templates and volumes (SQLite in
 * <state_dir>/warren.db, WAL mode).
 *
 * The daemon's in-memory registry (session/) is the source of truth while it runs; the store lets
 * a restarted daemon know what a previous one left behind (to clean it up) and, later, which
 * persistent sandboxes to bring back. Writes are small and happen on the loop thread.
 * Errors: 0 or -errno (-EIO for SQLite errors, which are also logged).
 *
 * The schema is versioned (PRAGMA user_version) and migrated forward on open; a store written by
 * a newer schema makes store_open() fail with -EPROTONOSUPPORT (logged, naming both versions).
 */
#ifndef WARREN_STORE_STORE_H
#define WARREN_STORE_STORE_H

typedef struct store store_t;

/* The kinds of records, each a (key, JSON text) table. */
enum store_kind {
    STORE_SANDBOX,
    STORE_TEMPLATE,
    STORE_RELEASED, /* deleted sandboxes' records, kept for a while (session/session.h) */
    STORE_POOL,     /* warm pools (session/pool.h) */
    STORE_VOLUME,   /* volumes (session/volume.h) */
    STORE_KINDS
};

typedef void (*store_record_fn)(const char *id, const char *json, void *arg);

int store_open(store_t **out, const char *state_dir);
void store_close(store_t *st);
/* Inserts or replaces the record `id` of `kind` (`json` is its description). */
int store_put(store_t *st, enum store_kind kind, const char *id, const char *json);
int store_delete(store_t *st, enum store_kind kind, const char *id);
/* Calls fn for every record of `kind`. */
int store_list(store_t *st, enum store_kind kind, store_record_fn fn, void *arg);

#endif
