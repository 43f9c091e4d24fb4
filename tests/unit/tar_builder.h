/*
 * tar_builder — hostile and ordinary tars made in memory with libarchive's writer, for the image
 * tests (test_unpack.c, test_layers.c, test_archive_import.c): no binary fixtures. Header-only; a
 * failure inside aborts the test through cmocka's assertions.
 */
#ifndef WARREN_TESTS_TAR_BUILDER_H
#define WARREN_TESTS_TAR_BUILDER_H

#include <archive.h>
#include <archive_entry.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct tb {
    struct archive *a;
    char *buf;
    size_t cap, used;
};

/* filter: ARCHIVE_FILTER_NONE, _GZIP or _ZSTD. */
static inline void tb_begin(struct tb *t, int filter)
{
    t->cap = 64 << 20;
    t->buf = malloc(t->cap);
    t->used = 0;
    t->a = archive_write_new();
    assert_non_null(t->buf);
    assert_int_equal(archive_write_set_format_pax_restricted(t->a), ARCHIVE_OK);
    if (filter == ARCHIVE_FILTER_GZIP)
        assert_int_equal(archive_write_add_filter_gzip(t->a), ARCHIVE_OK);
    else if (filter == ARCHIVE_FILTER_ZSTD)
        assert_int_equal(archive_write_add_filter_zstd(t->a), ARCHIVE_OK);
    assert_int_equal(archive_write_open_memory(t->a, t->buf, t->cap, &t->used), ARCHIVE_OK);
}

static inline struct archive_entry *tb_entry(const char *name, mode_t type, mode_t perm)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_filetype(e, type);
    archive_entry_set_perm(e, perm);
    archive_entry_set_mtime(e, 1600000000, 0);
    return e;
}

/* Writes e (freed) with `len` bytes of data. */
static inline void tb_put(struct tb *t, struct archive_entry *e, const void *data, size_t len)
{
    archive_entry_set_size(e, (la_int64_t)len);
    assert_int_equal(archive_write_header(t->a, e), ARCHIVE_OK);
    if (len)
        assert_int_equal(archive_write_data(t->a, data, len), (la_ssize_t)len);
    archive_entry_free(e);
}

static inline void tb_file(struct tb *t, const char *name, const char *content)
{
    tb_put(t, tb_entry(name, AE_IFREG, 0644), content, strlen(content));
}

static inline void tb_dir(struct tb *t, const char *name, mode_t perm)
{
    tb_put(t, tb_entry(name, AE_IFDIR, perm), NULL, 0);
}

static inline void tb_symlink(struct tb *t, const char *name, const char *target)
{
    struct archive_entry *e = tb_entry(name, AE_IFLNK, 0777);
    archive_entry_set_symlink(e, target);
    tb_put(t, e, NULL, 0);
}

static inline void tb_hardlink(struct tb *t, const char *name, const char *target)
{
    struct archive_entry *e = tb_entry(name, AE_IFREG, 0644);
    archive_entry_set_hardlink(e, target);
    tb_put(t, e, NULL, 0);
}

static inline void tb_dev(struct tb *t, const char *name, mode_t type, unsigned maj, unsigned min)
{
    struct archive_entry *e = tb_entry(name, type, 0666);
    archive_entry_set_rdevmajor(e, maj);
    archive_entry_set_rdevminor(e, min);
    tb_put(t, e, NULL, 0);
}

/* Finishes the archive; the bytes are t->buf[0..t->used). */
static inline void tb_end(struct tb *t)
{
    assert_int_equal(archive_write_close(t->a), ARCHIVE_OK);
    archive_write_free(t->a);
    t->a = NULL;
}

static inline void tb_free(struct tb *t)
{
    free(t->buf);
    t->buf = NULL;
}

/* Compresses [data, len) as a single stream (no tar around it). */
static inline void tb_compress(const void *data, size_t len, int filter, struct tb *out)
{
    out->cap = len + (1 << 20);
    out->buf = malloc(out->cap);
    out->used = 0;
    out->a = archive_write_new();
    assert_non_null(out->buf);
    assert_int_equal(archive_write_set_format_raw(out->a), ARCHIVE_OK);
    if (filter == ARCHIVE_FILTER_GZIP)
        assert_int_equal(archive_write_add_filter_gzip(out->a), ARCHIVE_OK);
    else
        assert_int_equal(archive_write_add_filter_zstd(out->a), ARCHIVE_OK);
    assert_int_equal(archive_write_open_memory(out->a, out->buf, out->cap, &out->used), ARCHIVE_OK);
    struct archive_entry *e = tb_entry("data", AE_IFREG, 0644);
    tb_put(out, e, data, len);
    tb_end(out);
}

/* A memfd holding [data, len), positioned at 0. */
static inline int tb_memfd(const void *data, size_t len)
{
    int fd = memfd_create("tar", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    return fd;
}

/* Writes [data, len) to path. */
static inline void tb_save(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* "sha256:<hex>" of [data, len) into out (80 bytes). */
static inline void tb_sha256(const void *data, size_t len, char *out)
{
    unsigned char h[32];
    unsigned int n;
    EVP_Digest(data, len, h, &n, EVP_sha256(), NULL);
    strcpy(out, "sha256:");
    for (int i = 0; i < 32; i++)
        sprintf(out + 7 + 2 * i, "%02x", h[i]);
}

#endif
