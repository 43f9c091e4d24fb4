/*
 * buf — a growable byte buffer.
 *
 * A buf_t owns its storage. It is always NUL-terminated past `len` (so `data` can be used as a C
 * string when the content has no NUL bytes), and `data` is NULL until the first append or reserve
 * (even an append of zero bytes allocates, so `data` is then a valid "").
 * Functions return 0 or -ENOMEM; on failure the buffer is unchanged.
 */
#ifndef WARREN_CORE_BUF_H
#define WARREN_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct buf {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

/* (clang-format would spread this one-line initializer over four lines.) */
/* clang-format off */
#define BUF_INIT {NULL, 0, 0}
/* clang-format on */

void buf_init(buf_t *b);
/* Make room for `extra` more bytes (plus the terminating NUL). */
int buf_reserve(buf_t *b, size_t extra);
int buf_append(buf_t *b, const void *p, size_t n);
int buf_append_str(buf_t *b, const char *s);
int buf_appendf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vappendf(buf_t *b, const char *fmt, va_list ap);
/* Drop the first n bytes, keeping the rest (n >= len empties the buffer). */
void buf_consume(buf_t *b, size_t n);
/* Forget the content, keep the storage. */
void buf_reset(buf_t *b);
/* Release the storage; the buffer is empty and reusable afterwards. */
void buf_free(buf_t *b);
/* Hand the storage to the caller (who free()s it); the buffer becomes empty. Never NULL on
 * success: an empty buffer yields an allocated "". Returns NULL on allocation failure. */
char *buf_steal(buf_t *b);

#endif
