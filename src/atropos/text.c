/*
 * text — Python-compatible text for the atropos protocol: the reference server is Python, and its
 * clients see its decoding (errors="replace"), str() of values, float repr and truthiness; and
 * the protocol's response objects.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atropos/atropos_internal.h"
#include "core/util.h"

/* Appends bytes decoded as Python's .decode("utf-8", errors="replace") would, up to max_chars
 * characters (*cut = 1 when input remained). Returns the number of characters appended. */
size_t atropos_py_decode(buf_t *out, const char *data, size_t len, size_t max_chars, int *cut)
{
    const unsigned char *s = (const unsigned char *)data;
    size_t i = 0, chars = 0, run = 0;
    if (cut)
        *cut = 0;
    buf_reserve(out, len < max_chars ? len : max_chars);
    while (i < len) {
        if (chars == max_chars) {
            if (cut)
                *cut = 1;
            break;
        }
        /* An invalid sequence's maximal subpart, or a sequence cut by the end of the data, is
         * one U+FFFD, as Python's errors="replace" has it. */
        size_t n;
        if (util_utf8_seq(s + i, len - i, &n) == UTIL_UTF8_VALID) {
            i += n;
            run += n;
        } else {
            buf_append(out, s + i - run, run);
            run = 0;
            buf_append(out, "\xEF\xBF\xBD", 3);
            i += n;
        }
        chars++;
    }
    buf_append(out, s + i - run, run);
    return chars;
}

size_t atropos_utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

/* The code point at s (valid UTF-8), its length in *n. */
static uint32_t utf8_cp(const unsigned char *s, size_t *n)
{
    if (s[0] < 0x80)
        return *n = 1, s[0];
    if (s[0] < 0xE0)
        return *n = 2, ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    if (s[0] < 0xF0)
        return *n = 3,
               ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    return *n = 4, ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
                       ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

/* str.isspace() */
static int py_isspace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* str.strip() on valid UTF-8: the [*start, *end) that remains. */
void atropos_py_strip(const char *data, size_t len, size_t *start, size_t *end)
{
    const unsigned char *s = (const unsigned char *)data;
    size_t a = 0, b = len, n;
    while (a < b && py_isspace(utf8_cp(s + a, &n)))
        a += n;
    while (b > a) {
        size_t k = b - 1;
        while (k > a && (s[k] & 0xC0) == 0x80)
            k--;
        if (!py_isspace(utf8_cp(s + k, &n)))
            break;
        b = k;
    }
    *start = a;
    *end = b;
}

/* repr(float): the shortest digits that read back as v, in exponent form outside 1e-4..1e16. */
void atropos_py_float_repr(double v, buf_t *out)
{
    char tmp[48], digits[24];
    int nd = 0;
    if (isnan(v) || isinf(v)) {
        buf_append_str(out, isnan(v) ? "nan" : v < 0 ? "-inf" : "inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    const char *p = tmp;
    if (*p == '-') {
        buf_append_str(out, "-");
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < (int)sizeof(digits) - 1)
            digits[nd++] = *p;
    int exp = *p == 'e' ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int decpt = exp + 1;
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            buf_append_str(out, "0.");
            for (int i = 0; i < -decpt; i++)
                buf_append_str(out, "0");
            buf_append(out, digits, (size_t)nd);
        } else if (decpt >= nd) {
            buf_append(out, digits, (size_t)nd);
            for (int i = nd; i < decpt; i++)
                buf_append_str(out, "0");
            buf_append_str(out, ".0");
        } else {
            buf_append(out, digits, (size_t)decpt);
            buf_append_str(out, ".");
            buf_append(out, digits + decpt, (size_t)(nd - decpt));
        }
        return;
    }
    buf_append(out, digits, 1);
    if (nd > 1) {
        buf_append_str(out, ".");
        buf_append(out, digits + 1, (size_t)(nd - 1));
    }
    buf_appendf(out, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
}

/* str(value) of a decoded JSON value, as an f-string in the reference prints it. */
void atropos_py_str(json_t *v, buf_t *out)
{
    if (!v || json_is_null(v))
        buf_append_str(out, "None");
    else if (json_is_string(v))
        buf_append(out, json_string_value(v), json_string_length(v));
    else if (json_is_integer(v))
        buf_appendf(out, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        atropos_py_float_repr(json_real_value(v), out);
    else if (json_is_boolean(v))
        buf_append_str(out, json_is_true(v) ? "True" : "False");
    else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        buf_append_str(out, s ? s : "");
        free(s);
    }
}

/* bool(value) */
int atropos_py_truthy(json_t *v)
{
    if (!v || json_is_null(v) || json_is_false(v))
        return 0;
    if (json_is_integer(v))
        return json_integer_value(v) != 0;
    if (json_is_real(v))
        return json_real_value(v) != 0.0;
    if (json_is_string(v))
        return json_string_length(v) > 0;
    if (json_is_array(v))
        return json_array_size(v) > 0;
    if (json_is_object(v))
        return json_object_size(v) > 0;
    return 1;
}

/* int(value); -EINVAL where Python would raise. */
int atropos_py_int(json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d > -9.2e18 && d < 9.2e18))
            return -EINVAL;
        *out = (long long)d;
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        while (*s == ' ' || (*s >= '\t' && *s <= '\r'))
            s++;
        errno = 0;
        long long n = strtoll(s, &end, 10);
        if (end == s || errno)
            return -EINVAL;
        while (*end == ' ' || (*end >= '\t' && *end <= '\r'))
            end++;
        if (*end)
            return -EINVAL;
        *out = n;
        return 0;
    }
    return -EINVAL;
}

/* float(value), finite values only. */
int atropos_py_float(json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        double d = strtod(s, &end);
        while (*end == ' ' || (*end >= '\t' && *end <= '\r'))
            end++;
        if (end == s || *end || !isfinite(d))
            return -EINVAL;
        *out = d;
        return 0;
    }
    return -EINVAL;
}

/* The reference's _clamp_int: absent or not an int → def, else clamped. */
long long atropos_clamp_int(json_t *v, long long def, long long lo, long long hi)
{
    long long n;
    if (!v || json_is_null(v) || atropos_py_int(v, &n) < 0)
        return def;
    return n < lo ? lo : n > hi ? hi : n;
}

/* (value or default).strip().lower() for action/encoding/format names. */
void atropos_py_name(json_t *v, const char *def, buf_t *out)
{
    buf_t raw = BUF_INIT;
    if (atropos_py_truthy(v))
        atropos_py_str(v, &raw);
    else
        buf_append_str(&raw, def);
    size_t a, b;
    atropos_py_strip(raw.data, raw.len, &a, &b);
    for (size_t i = a; i < b; i++) {
        char c = raw.data[i];
        buf_append(out, &(char){c >= 'A' && c <= 'Z' ? (char)(c + 32) : c}, 1);
    }
    if (!out->data)
        buf_append(out, "", 0);
    buf_free(&raw);
}

/* An ExecuteResponse: {success, output, error, execution_id, metadata}. `meta` is stolen. */
json_t *atropos_resp(int success, const char *out, size_t outlen, const char *err, json_t *meta)
{
    json_t *o = json_object();
    json_object_set_new(o, "success", json_boolean(success));
    json_t *os = json_stringn(out ? out : "", out ? outlen : 0);
    json_object_set_new(o, "output", os ? os : json_string(""));
    json_t *es = json_string(err ? err : "");
    json_object_set_new(o, "error", es ? es : json_string("(unprintable error)"));
    json_object_set_new(o, "execution_id", json_null());
    json_object_set_new(o, "metadata", meta ? meta : json_object());
    return o;
}

static json_t *xfailv(json_t *meta, const char *fmt, va_list ap)
{
    buf_t m = BUF_INIT;
    buf_vappendf(&m, fmt, ap);
    json_t *o = atropos_resp(0, "", 0, m.data ? m.data : "", meta);
    buf_free(&m);
    return o;
}

json_t *atropos_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *o = xfailv(NULL, fmt, ap);
    va_end(ap);
    return o;
}

json_t *atropos_fail_meta(json_t *meta, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *o = xfailv(meta, fmt, ap);
    va_end(ap);
    return o;
}

json_t *atropos_plain_fail(const char *fmt, ...)
{
    buf_t m = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    buf_vappendf(&m, fmt, ap);
    va_end(ap);
    json_t *e = json_string(m.data ? m.data : "");
    json_t *o = json_pack("{s:b, s:o}", "success", 0, "error", e ? e : json_string("error"));
    buf_free(&m);
    return o;
}

/* Appends the text of a stream cut at MAX_OUTPUT_CHARS characters with the mark. */
void atropos_stream_text(buf_t *out, const buf_t *b)
{
    int cut;
    atropos_py_decode(out, b->data ? b->data : "", b->len, MAX_OUTPUT_CHARS, &cut);
    if (cut)
        buf_append_str(out, TRUNC_MARK);
}
