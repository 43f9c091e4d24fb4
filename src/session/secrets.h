/*
 * secrets — named secret values the daemon holds for sandboxes (--secrets-dir).
 *
 * The directory holds one file per secret, named after it ([A-Za-z_][A-Za-z0-9_]*); the value is
 * the file's content without one trailing newline. The directory and its files must belong to
 * root and must not be readable by group or others: a secret store anyone can read is refused at
 * start-up. Values are held in memory for the daemon's lifetime and never appear in API
 * responses, the registry, logs or error messages — only names do.
 */
#ifndef WARREN_SESSION_SECRETS_H
#define WARREN_SESSION_SECRETS_H

#include <stddef.h>

struct secret {
    char *name;
    char *value;
};

struct secrets {
    struct secret *items;
    size_t count;
};

/* Loads every secret of `dir`. On failure *err says why (never a value) and -errno is
 * returned. */
int secrets_load(struct secrets *s, const char *dir, char *err, size_t errlen);
/* The value of `name`, or NULL. */
const char *secrets_get(const struct secrets *s, const char *name);
/* True if `name` may name a secret (an environment variable name). */
int secrets_valid_name(const char *name);
/* Frees the values (wiped first). */
void secrets_free(struct secrets *s);

#endif
