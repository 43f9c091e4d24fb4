/*
 * json — see json.h.
 */
#include "core/json.h"

#include <stdlib.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

json_t *json_parse_object(const char *body, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t'))
        i++;
    if (i == len)
        return json_object();
    json_t *v = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        snprintf(err, errlen, "malformed JSON: %s (line %d, column %d)", je.text, je.line,
                 je.column);
        return NULL;
    }
    if (!json_is_object(v)) {
        snprintf(err, errlen, "the request body must be a JSON object");
        json_decref(v);
        return NULL;
    }
    return v;
}

int json_check_keys(json_t *obj, const char *const *allowed, const char *prefix, char *err,
                    size_t errlen)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        int ok = 0;
        for (size_t i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], key) == 0)
                ok = 1;
        if (!ok) {
            snprintf(err, errlen, "unknown field '%s%s%s'", prefix ? prefix : "", prefix ? "." : "",
                     key);
            return -EINVAL;
        }
    }
    return 0;
}

int json_opt_string(json_t *obj, const char *key, const char *field, const char **out, char *err,
                    size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        snprintf(err, errlen, "'%s' must be a string", field);
        return -EINVAL;
    }
    *out = json_string_value(v);
    return 0;
}

int json_opt_number(json_t *obj, const char *key, const char *field, double *out, char *err,
                    size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v) || !isfinite(json_number_value(v))) {
        snprintf(err, errlen, "'%s' must be a number", field);
        return -EINVAL;
    }
    *out = json_number_value(v);
    return 0;
}

int json_opt_int(json_t *obj, const char *key, const char *field, long long *out, char *err,
                 size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
        fabs(json_real_value(v)) < 9e15) {
        *out = (long long)json_real_value(v);
        return 0;
    }
    snprintf(err, errlen, "'%s' must be an integer", field);
    return -EINVAL;
}

int json_opt_string_map(json_t *obj, const char *key, const char *field, json_t **out, char *err,
                        size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    const char *k;
    json_t *val;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v)) {
        snprintf(err, errlen, "'%s' must be an object of strings", field);
        return -EINVAL;
    }
    json_object_foreach(v, k, val)
    {
        if (!json_is_string(val)) {
            snprintf(err, errlen, "'%s.%s' must be a string", field, k);
            return -EINVAL;
        }
    }
    *out = v;
    return 0;
}

int json_opt_object(json_t *obj, const char *key, const char *field, json_t **out, char *err,
                    size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v)) {
        snprintf(err, errlen, "'%s' must be an object", field);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

int json_escape_append(buf_t *out, const char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        char esc[6] = {'\\', (char)c};
        size_t len = 2;
        if (c == '\n')
            esc[1] = 'n';
        else if (c == '\r')
            esc[1] = 'r';
        else if (c == '\t')
            esc[1] = 't';
        else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            len = 6;
        }
        if (buf_append(out, p + run, i - run) < 0 || buf_append(out, esc, len) < 0)
            return -ENOMEM;
        run = i + 1;
    }
    return buf_append(out, p + run, n - run);
}

size_t json_escape_len(const char *p, size_t n)
{
    size_t len = n;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        len += c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' ? 1 : 5;
    }
    return len;
}

json_t *json_strv_array(char *const *v)
{
    json_t *a = json_array();
    for (size_t i = 0; a && v && v[i]; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

int json_array_strv(json_t *a, char ***out)
{
    size_t n = json_array_size(a);
    *out = NULL;
    if (!n)
        return 0;
    char **v = calloc(n + 1, sizeof(*v));
    for (size_t i = 0; v && i < n; i++)
        if (!(v[i] = strdup(json_string_value(json_array_get(a, i)) ?: ""))) {
            for (size_t k = 0; k < i; k++)
                free(v[k]);
            free(v);
            return -ENOMEM;
        }
    *out = v;
    return v ? 0 : -ENOMEM;
}
