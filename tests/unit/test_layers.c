/*
 * layers: the layer store on a real filesystem — idempotent unpack, two threads racing on one
 * layer, leftovers of an interrupted unpack removed at open, garbage collection by keep sets,
 * ENOSPC on a small tmpfs (mounted in a private mount namespace of this test) leaving nothing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "image/layers.h"
#include "tar_builder.h"

struct fixture {
    char root[64];
    char images[96];
    char blob[128];
    char diff_id[80];
    struct layer_store *s;
};

static int setup(void **state)
{
    static struct fixture f;
    memset(&f, 0, sizeof(f));
    snprintf(f.root, sizeof(f.root), "/tmp/layers-test-XXXXXX");
    if (!mkdtemp(f.root))
        return -1;
    snprintf(f.images, sizeof(f.images), "%s/images", f.root);
    *state = &f;
    return layer_store_open(f.images, &f.s) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    layer_store_close(f->s);
    util_remove_tree(f->root);
    return 0;
}

/* A gzip layer blob with a file whose content is `tag`, saved under blobs/; its diff_id. */
static void make_blob(struct fixture *f, const char *tag, char *blob_path, char *diff_id)
{
    struct tb t, z;
    char digest[80];
    tb_begin(&t, ARCHIVE_FILTER_NONE);
    tb_dir(&t, "etc", 0755);
    tb_file(&t, "etc/tag", tag);
    tb_end(&t);
    tb_sha256(t.buf, t.used, diff_id);
    tb_compress(t.buf, t.used, ARCHIVE_FILTER_GZIP, &z);
    tb_sha256(z.buf, z.used, digest);
    assert_int_equal(layer_store_blob_path(f->s, digest, blob_path, 256), 0);
    tb_save(blob_path, z.buf, z.used);
    tb_free(&t);
    tb_free(&z);
}

static size_t count_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (!strncmp(de->d_name, ".tmp-", 5))
            n++;
    closedir(d);
    return n;
}

static void test_unpack_once(void **state)
{
    struct fixture *f = *state;
    char blob[256], diff_id[80], path[256], msg[256], p[300];
    make_blob(f, "one", blob, diff_id);
    assert_int_equal(layer_store_has(f->s, diff_id), 0);
    assert_int_equal(layer_store_unpack(f->s, blob, diff_id, msg, sizeof(msg)), 0);
    assert_int_equal(layer_store_has(f->s, diff_id), 1);
    assert_int_equal(layer_store_path(f->s, diff_id, path, sizeof(path)), 0);
    snprintf(p, sizeof(p), "%s/etc/tag", path);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    /* Present: returns at once, even with the blob gone. */
    assert_int_equal(unlink(blob), 0);
    assert_int_equal(layer_store_unpack(f->s, blob, diff_id, msg, sizeof(msg)), 0);

    /* A wrong diff_id: refused, and nothing is left behind. */
    char blob2[256], diff2[80];
    make_blob(f, "two", blob2, diff2);
    diff2[10] = diff2[10] == 'a' ? 'b' : 'a';
    assert_int_equal(layer_store_unpack(f->s, blob2, diff2, msg, sizeof(msg)), -EBADMSG);
    assert_int_equal(layer_store_has(f->s, diff2), 0);
    snprintf(p, sizeof(p), "%s/layers", f->images);
    assert_int_equal(count_tmp(p), 0);
    assert_int_equal(layer_store_unpack(f->s, blob2, "sha256:nothex", msg, sizeof(msg)), -EINVAL);

    /* An unknown diff_id computed (an imported rootfs). */
    char got[80];
    make_blob(f, "three", blob2, diff2);
    assert_int_equal(layer_store_unpack_new(f->s, blob2, got, msg, sizeof(msg)), 0);
    assert_string_equal(got, diff2);
    assert_int_equal(layer_store_has(f->s, diff2), 1);
    assert_true(layer_store_bytes(f->s) > 0);
}

struct racer {
    struct fixture *f;
    const char *blob;
    const char *diff_id;
    int r;
    char msg[256];
};

static void *race(void *arg)
{
    struct racer *r = arg;
    r->r = layer_store_unpack(r->f->s, r->blob, r->diff_id, r->msg, sizeof(r->msg));
    return NULL;
}

static void test_concurrent(void **state)
{
    struct fixture *f = *state;
    char blob[256], diff_id[80], p[300];
    make_blob(f, "raced", blob, diff_id);
    for (int round = 0; round < 5; round++) {
        struct racer a = {.f = f, .blob = blob, .diff_id = diff_id};
        struct racer b = a;
        pthread_t ta, tb2;
        assert_int_equal(pthread_create(&ta, NULL, race, &a), 0);
        assert_int_equal(pthread_create(&tb2, NULL, race, &b), 0);
        pthread_join(ta, NULL);
        pthread_join(tb2, NULL);
        assert_int_equal(a.r, 0);
        assert_int_equal(b.r, 0);
        assert_int_equal(layer_store_has(f->s, diff_id), 1);
        snprintf(p, sizeof(p), "%s/layers", f->images);
        assert_int_equal(count_tmp(p), 0);
        int64_t freed;
        assert_int_equal(layer_store_gc(f->s, NULL, 0, (const char *const[]){NULL}, 0, &freed), 0);
        make_blob(f, "raced", blob, diff_id);
    }
}

static void test_interrupted(void **state)
{
    struct fixture *f = *state;
    char p[300];
    /* What a crash midway leaves: a half-made tree (with a read-only dir) and a size record. */
    snprintf(p, sizeof(p), "%s/layers/.tmp-crashed", f->images);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/layers/.tmp-crashed/ro", f->images);
    assert_int_equal(mkdir(p, 0555), 0);
    snprintf(p, sizeof(p), "%s/layers/.tmp-crashed/ro/half", f->images);
    tb_save(p, "x", 1);
    snprintf(p, sizeof(p), "%s/layers/.tmp-crashed.size", f->images);
    tb_save(p, "1", 1);
    layer_store_close(f->s);
    f->s = NULL;
    assert_int_equal(layer_store_open(f->images, &f->s), 0);
    snprintf(p, sizeof(p), "%s/layers", f->images);
    assert_int_equal(count_tmp(p), 0);
}

static void test_gc(void **state)
{
    struct fixture *f = *state;
    char blob1[256], blob2[256], d1[80], d2[80], msg[256], p[300];
    make_blob(f, "keep me", blob1, d1);
    make_blob(f, "drop me", blob2, d2);
    assert_int_equal(layer_store_unpack(f->s, blob1, d1, msg, sizeof(msg)), 0);
    assert_int_equal(layer_store_unpack(f->s, blob2, d2, msg, sizeof(msg)), 0);
    /* Not a digest: left alone. */
    snprintf(p, sizeof(p), "%s/blobs/sha256/README", f->images);
    tb_save(p, "x", 1);
    char blob1_digest[80] = "sha256:";
    strcat(blob1_digest, strrchr(blob1, '/') + 1);
    int64_t before = layer_store_bytes(f->s), freed = 0;
    const char *keep_layers[] = {d1};
    const char *keep_blobs[] = {blob1_digest};
    assert_int_equal(layer_store_gc(f->s, keep_layers, 1, keep_blobs, 1, &freed), 0);
    assert_true(freed > 0);
    assert_int_equal(layer_store_has(f->s, d1), 1);
    assert_int_equal(layer_store_has(f->s, d2), 0);
    assert_int_equal(access(blob1, F_OK), 0);
    assert_int_equal(access(blob2, F_OK), -1);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof(p), "%s/layers/%s.size", f->images, d2 + 7);
    assert_int_equal(access(p, F_OK), -1);
    assert_int_equal(layer_store_bytes(f->s), before - freed);
    /* An empty keep set removes everything. */
    assert_int_equal(layer_store_gc(f->s, NULL, 0, NULL, 0, &freed), 0);
    assert_int_equal(layer_store_has(f->s, d1), 0);
    assert_int_equal(layer_store_bytes(f->s), 0);
}

static void test_enospc(void **state)
{
    struct fixture *f = *state;
    char mnt[128], images[160], blob[256], msg[256], p[300];
    struct layer_store *s;
    /* A private mount namespace so that the small tmpfs never shows on the host. */
    assert_int_equal(unshare(CLONE_NEWNS), 0);
    assert_int_equal(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0);
    snprintf(mnt, sizeof(mnt), "%s/small", f->root);
    assert_int_equal(mkdir(mnt, 0755), 0);
    assert_int_equal(mount("tmpfs", mnt, "tmpfs", 0, "size=512k"), 0);
    snprintf(images, sizeof(images), "%s/images", mnt);
    assert_int_equal(layer_store_open(images, &s), 0);

    /* 2 MiB of incompressible-enough data, compressed well enough to fit as a blob. */
    struct tb t, z;
    char *big = malloc(2 << 20);
    assert_non_null(big);
    memset(big, 'z', 2 << 20);
    tb_begin(&t, ARCHIVE_FILTER_NONE);
    tb_put(&t, tb_entry("big", AE_IFREG, 0644), big, 2 << 20);
    tb_end(&t);
    tb_compress(t.buf, t.used, ARCHIVE_FILTER_ZSTD, &z);
    snprintf(blob, sizeof(blob), "%s/blob", f->root);
    tb_save(blob, z.buf, z.used);
    char diff_id[80];
    tb_sha256(t.buf, t.used, diff_id);
    assert_int_equal(layer_store_unpack(s, blob, diff_id, msg, sizeof(msg)), -ENOSPC);
    assert_int_equal(layer_store_has(s, diff_id), 0);
    snprintf(p, sizeof(p), "%s/layers", images);
    assert_int_equal(count_tmp(p), 0);
    layer_store_close(s);
    assert_int_equal(umount(mnt), 0);
    free(big);
    tb_free(&t);
    tb_free(&z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unpack_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interrupted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enospc, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
