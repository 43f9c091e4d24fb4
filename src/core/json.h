/*
 * json — request validation helpers on top of jansson.
 *
 * Each validator writes a human-readable reason into `err` (cap `errlen`) and returns -EINVAL on
 * bad input; 0 on success. `field` is the dotted name used in messages ("resources.cpus").
 */
#ifndef WARREN_CORE_JSON_H
#define WARREN_CORE_JSON_H

#include <jansson.h>
#include <stddef.h>

#include "core/buf.h"

/* Parses `body` as a JSON object. An empty body yields an empty object. New reference or NULL. */
json_t *json_parse_object(const char *body, size_t len, char *err, size_t errlen);
/* Fails naming the first key of `obj` not in the NULL-terminated `allowed` list. */
int json_check_keys(json_t *obj, const char *const *allowed, const char *prefix, char *err,
                    size_t errlen);
/* Optional typed members: absent (or null) leaves *out untouched. */
int json_opt_string(json_t *obj, const char *key, const char *field, const char **out, char *err,
                    size_t errlen);
int json_opt_number(json_t *obj, const char *key, const char *field, double *out, char *err,
                    size_t errlen);
int json_opt_int(json_t *obj, const char *key, const char *field, long long *out, char *err,
                 size_t errlen);
/* An object whose values are all strings. *out is a borrowed reference or NULL when absent. */
int json_opt_string_map(json_t *obj, const char *key, const char *field, json_t **out, char *err,
                        size_t errlen);
/* An object member; *out borrowed or NULL when absent. */
int json_opt_object(json_t *obj, const char *key, const char *field, json_t **out, char *err,
                    size_t errlen);

/* Appends [p, p+n) — valid UTF-8 — to `out` as the body of a JSON string (quotes, backslashes
 * and control characters escaped; everything else copied as is). 0 or -ENOMEM. */
int json_escape_append(buf_t *out, const char *p, size_t n);
/* The number of bytes json_escape_append() would append. */
size_t json_escape_len(const char *p, size_t n);

/* A JSON array of the NULL-terminated strings v (an empty array for NULL). New reference, or
 * NULL when out of memory. */
json_t *json_strv_array(char *const *v);
/* A malloc'd NULL-terminated copy of the strings of array a (non-strings become ""), NULL for an
 * empty or missing array. 0 or -ENOMEM. */
int json_array_strv(json_t *a, char ***out);

#endif
