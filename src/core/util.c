/*
 * util — see util.h.
 */
#include "core/util.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <linux/openat2.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int util_random_id(char *out, size_t cap, const char *prefix)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
    unsigned char rnd[12];
    size_t p = strlen(prefix);
    if (cap < p + sizeof(rnd) + 1)
        return -ENAMETOOLONG;
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return -EIO;
    memcpy(out, prefix, p);
    for (size_t i = 0; i < sizeof(rnd); i++)
        out[p + i] = alphabet[rnd[i] & 31];
    out[p + sizeof(rnd)] = '\0';
    return 0;
}

double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double util_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void util_format_time(double t, char *out, size_t cap)
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

enum util_utf8_seq util_utf8_seq(const unsigned char *s, size_t n, size_t *len)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c < 0x80) {
        *len = 1;
        return UTIL_UTF8_VALID;
    }
    /* The allowed range of the second byte excludes overlongs (E0, F0), surrogates (ED) and code
     * points above U+10FFFF (F4), so a cut sequence counts as cut only if it could complete. */
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        *len = 1;
        return UTIL_UTF8_INVALID;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n) {
            *len = i;
            return UTIL_UTF8_TRUNCATED;
        }
        if (s[i] < lo || s[i] > hi) {
            *len = i;
            return UTIL_UTF8_INVALID;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    *len = need + 1;
    return UTIL_UTF8_VALID;
}

int util_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path, 8 bytes at a time: most of what is checked (JSON, base64) is ASCII. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ULL)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t n;
        if (util_utf8_seq(p + i, len - i, &n) != UTIL_UTF8_VALID)
            return 0;
        i += n;
    }
    return 1;
}

char *util_utf8_lossy(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    char *out = malloc(len * 3 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len;) {
        size_t n;
        if (util_utf8_seq(p + i, len - i, &n) == UTIL_UTF8_VALID) {
            memcpy(o, p + i, n);
            o += n;
            i += n;
        } else {
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    *o = '\0';
    return out;
}

size_t util_utf8_complete_prefix(const char *s, size_t len)
{
    /* A sequence is at most 4 bytes: only the last 3 bytes can start a cut one. */
    const unsigned char *p = (const unsigned char *)s;
    size_t start = len > 3 ? len - 3 : 0;
    for (size_t i = start; i < len; i++) {
        if ((p[i] & 0xc0) == 0x80)
            continue;
        size_t n;
        if (p[i] >= 0xc0 && util_utf8_seq(p + i, len - i, &n) == UTIL_UTF8_TRUNCATED)
            return i;
    }
    return len;
}

#if defined(__x86_64__)
#include <immintrin.h>

/* 12 input bytes → 16 base64 characters per step with SSSE3 (the method of W. Muła and
 * D. Lemire, "Faster Base64 Encoding and Decoding Using AVX2 Instructions", 2018):
 *  1. a byte shuffle puts each 3-byte group s0 s1 s2 into a 32-bit lane as s1 s0 s2 s1, so that
 *     each 16-bit half holds two of the four 6-bit fields at known bit positions;
 *  2. two masks and two 16-bit multiplies (high half, low half) shift each field to the bottom
 *     of its own byte: the lane becomes the four indices 0..63;
 *  3. indices become ASCII by adding an offset chosen per range (A-Z, a-z, 0-9, '+', '/'), the
 *     range found with a saturating subtract and a compare, the offset with a 16-entry shuffle.
 * Reads 16 bytes per step (uses 12): the caller keeps 4 bytes of slack. Returns the input bytes
 * consumed, a multiple of 12. */
__attribute__((target("ssse3"))) static size_t
base64_encode_ssse3(char *dst, const unsigned char *in, size_t len)
{
    const __m128i shuf = _mm_set_epi8(10, 11, 9, 10, 7, 8, 6, 7, 4, 5, 3, 4, 1, 2, 0, 1);
    const __m128i offsets =
        _mm_setr_epi8('a' - 26, '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52,
                      '0' - 52, '0' - 52, '0' - 52, '0' - 52, '+' - 62, '/' - 63, 'A', 0, 0);
    size_t i = 0;
    for (; i + 16 <= len; i += 12, dst += 16) {
        __m128i v = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(in + i)), shuf);
        __m128i hi = _mm_mulhi_epu16(_mm_and_si128(v, _mm_set1_epi32(0x0fc0fc00)),
                                     _mm_set1_epi32(0x04000040));
        __m128i lo = _mm_mullo_epi16(_mm_and_si128(v, _mm_set1_epi32(0x003f03f0)),
                                     _mm_set1_epi32(0x01000010));
        __m128i idx = _mm_or_si128(hi, lo);
        __m128i range = _mm_subs_epu8(idx, _mm_set1_epi8(51)); /* 0: A-Z or a-z; 1..12 */
        __m128i upper = _mm_cmpgt_epi8(_mm_set1_epi8(26), idx);
        range = _mm_or_si128(range, _mm_and_si128(upper, _mm_set1_epi8(13)));
        _mm_storeu_si128((__m128i *)dst, _mm_add_epi8(_mm_shuffle_epi8(offsets, range), idx));
    }
    return i;
}
#endif

size_t util_base64_encode_to(char *dst, const void *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *in = data;
    char *o = dst;
    size_t i = 0;
#if defined(__x86_64__)
    /* Streaming sends everything through here (it was a third of the daemon's CPU time). */
    if (__builtin_cpu_supports("ssse3")) {
        i = base64_encode_ssse3(o, in, len);
        o += i / 3 * 4;
    }
#endif
    /* The rest (or everything): a plain loop over 3-byte groups, several times faster than the
     * generic encoder of libcrypto. */
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        o[0] = tab[v >> 18];
        o[1] = tab[(v >> 12) & 63];
        o[2] = tab[(v >> 6) & 63];
        o[3] = tab[v & 63];
        o += 4;
    }
    if (i < len) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0);
        o[0] = tab[v >> 18];
        o[1] = tab[(v >> 12) & 63];
        o[2] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        o[3] = '=';
        o += 4;
    }
    return (size_t)(o - dst);
}

char *util_base64_encode(const void *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (!out)
        return NULL;
    out[util_base64_encode_to(out, data, len)] = '\0';
    return out;
}

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int util_base64_decode(const char *s, size_t len, unsigned char **out, size_t *out_len)
{
    /* Strict: standard alphabet, length a multiple of 4, '=' only as final padding. */
    if (len % 4 != 0)
        return -EINVAL;
    unsigned char *buf = malloc(len / 4 * 3 + 1);
    if (!buf)
        return -ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)s[i + k];
            if (c == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad || (v[k] = b64_val(c)) < 0) {
                free(buf);
                return -EINVAL;
            }
        }
        unsigned triple = (unsigned)(v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3]);
        buf[o++] = (unsigned char)(triple >> 16);
        if (pad < 2)
            buf[o++] = (unsigned char)(triple >> 8);
        if (pad < 1)
            buf[o++] = (unsigned char)triple;
    }
    *out = buf;
    *out_len = o;
    return 0;
}

/* Empties the directory open as dfd (which it closes). */
static int remove_contents(int dfd)
{
    DIR *d = fdopendir(dfd);
    int ret = 0;
    if (!d) {
        close(dfd);
        return -errno;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) == 0 || errno == ENOENT)
            continue;
        if (errno != EISDIR) {
            ret = ret ? ret : -errno;
            continue;
        }
        int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) {
            ret = ret ? ret : -errno;
            continue;
        }
        int r = remove_contents(sub);
        if (r < 0 && !ret)
            ret = r;
        if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0 && errno != ENOENT && !ret)
            ret = -errno;
    }
    closedir(d);
    return ret;
}

int util_remove_tree(const char *path)
{
    return util_remove_tree_at(AT_FDCWD, path);
}

int util_remove_tree_at(int dirfd, const char *name)
{
    if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
        return 0;
    if (errno != EISDIR)
        return -errno;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    int r = remove_contents(fd);
    if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && !r)
        r = -errno;
    return r;
}

int util_mkdir_p(const char *path, unsigned mode)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n >= sizeof(tmp))
        return -ENAMETOOLONG;
    memcpy(tmp, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (tmp[i] == '/' || tmp[i] == '\0') {
            char c = tmp[i];
            tmp[i] = '\0';
            if (mkdir(tmp, mode) < 0 && errno != EEXIST)
                return -errno;
            tmp[i] = c;
        }
    }
    return 0;
}

void util_free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

int util_write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

int util_write_string(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t n = strlen(data);
    ssize_t w = write(fd, data, n);
    int e = errno;
    close(fd);
    if (w < 0)
        return -e;
    return (size_t)w == n ? 0 : -EIO;
}

int util_openat2(int dirfd, const char *path, int flags, uint64_t resolve)
{
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC), .resolve = resolve};
    /* Scoped lookups fail with EAGAIN when a rename or mount raced with them: retry a few times. */
    for (int i = 0; i < 16; i++) {
        long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
        if (fd >= 0)
            return (int)fd;
        if (errno != EAGAIN)
            return -errno;
    }
    return -EAGAIN;
}
