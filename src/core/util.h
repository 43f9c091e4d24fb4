/*
 * util — small helpers without a better home: random ids, time, UTF-8, base64, directory removal.
 * Functions returning int give 0 or -errno.
 */
#ifndef WARREN_CORE_UTIL_H
#define WARREN_CORE_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Writes prefix + 12 random lowercase base32 characters (+ NUL) into out (cap >= prefix + 13). */
int util_random_id(char *out, size_t cap, const char *prefix);
/* Wall clock as seconds since the epoch, and monotonic seconds. */
double util_now(void);
double util_monotonic(void);
/* RFC 3339 UTC with second precision: "2026-11-23T10:00:00Z" (out must hold 21 bytes). */
void util_format_time(double t, char *out, size_t cap);
/* The UTF-8 sequence at s (n > 0 bytes available): *len is the whole sequence if valid, the
 * maximal invalid subpart (>= 1 byte) if invalid, or the bytes present if it is a valid beginning
 * cut off by the end of the data. Valid means no overlongs, surrogates or code points above
 * U+10FFFF; ASCII is a valid sequence of 1. */
enum util_utf8_seq { UTIL_UTF8_VALID, UTIL_UTF8_INVALID, UTIL_UTF8_TRUNCATED };
enum util_utf8_seq util_utf8_seq(const unsigned char *s, size_t n, size_t *len);
/* True if [s, s+len) is valid UTF-8 (no overlongs, surrogates or code points above U+10FFFF). */
int util_utf8_valid(const char *s, size_t len);
/* A malloc'd copy of [s, s+len) as valid UTF-8, each invalid byte replaced by U+FFFD. NULL on
 * ENOMEM. */
char *util_utf8_lossy(const char *s, size_t len);
/* Length of the longest prefix of [s, s+len) that does not end inside a multi-byte sequence. */
size_t util_utf8_complete_prefix(const char *s, size_t len);
/* Base64 (standard alphabet, padded). encode returns a malloc'd NUL-terminated string or NULL;
 * decode returns 0 and a malloc'd buffer in out and out_len, or -EINVAL for invalid input. */
char *util_base64_encode(const void *data, size_t len);
/* Encodes into dst (room for 4 * ((len + 2) / 3) bytes; no NUL); returns the bytes written. */
size_t util_base64_encode_to(char *dst, const void *data, size_t len);
int util_base64_decode(const char *s, size_t len, unsigned char **out, size_t *out_len);
/* Removes `path` and everything below it without following symlinks; a missing path is not an
 * error. Safe against a tree that is being changed by a sandbox (it never leaves the tree). */
int util_remove_tree(const char *path);
/* The same for `name` below the directory open as dirfd (or AT_FDCWD); `name` itself is not
 * followed if it is a symlink (the link is removed). */
int util_remove_tree_at(int dirfd, const char *name);
/* mkdir -p with `mode` for the created components. */
int util_mkdir_p(const char *path, unsigned mode);

/* Frees a NULL-terminated array of malloc'd strings and the array (NULL is fine). */
void util_free_strv(char **v);

/* Writes all of p[0..n) to fd, retrying short writes and EINTR. 0 or -errno. */
int util_write_all(int fd, const void *p, size_t n);

/* Writes the string `data` to the existing file `path` in one write() (proc files such as
 * uid_map want that). 0, -errno, or -EIO for a short write. */
int util_write_string(const char *path, const char *data);
/* openat2(2) of `path` under `dirfd` with `resolve` (RESOLVE_* flags), O_CLOEXEC added, retried
 * while a rename or mount races with the scoped lookup (EAGAIN). The fd, or -errno. */
int util_openat2(int dirfd, const char *path, int flags, uint64_t resolve);

#endif
