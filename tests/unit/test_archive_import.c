/*
 * archive_import: images streamed in through a pipe (never seekable) — a docker-save-shaped tar
 * (gzip'd, manifest.json last, a layer shared through a symlink), an OCI layout made here and one
 * made from it by `skopeo copy oci:DIR oci-archive:FILE`, a plain rootfs .tar.gz — and the
 * refusals (a blob whose content is not its digest, an image archive without a manifest), after
 * which no spool is left.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "image/archive_import.h"
#include "image/layers.h"
#include "tar_builder.h"

struct fixture {
    char root[64];
    char images[96];
    struct layer_store *s;
};

static int setup(void **state)
{
    static struct fixture f;
    memset(&f, 0, sizeof(f));
    snprintf(f.root, sizeof(f.root), "/tmp/import-test-XXXXXX");
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

struct feeder {
    int fd;
    const char *buf;
    size_t len;
};

static void *feed(void *arg)
{
    struct feeder *fe = arg;
    size_t off = 0;
    while (off < fe->len) {
        ssize_t n = write(fe->fd, fe->buf + off, fe->len - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(fe->fd);
    return NULL;
}

/* Imports [buf, len) through a pipe fed by a thread. */
static int import_bytes(struct fixture *f, const void *buf, size_t len, struct imported_image *img,
                        char *msg)
{
    int p[2];
    pthread_t t;
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    struct feeder fe = {.fd = p[1], .buf = buf, .len = len};
    assert_int_equal(pthread_create(&t, NULL, feed, &fe), 0);
    int r = image_import(p[0], f->s, img, msg, 512);
    /* An import that fails early stops reading: unblock the feeder. */
    close(p[0]);
    pthread_join(t, NULL);
    return r;
}

static void assert_no_spool(struct fixture *f)
{
    char p[160];
    snprintf(p, sizeof(p), "%s/layers", f->images);
    DIR *d = opendir(p);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)))
        assert_true(strncmp(de->d_name, ".tmp-", 5) != 0);
    closedir(d);
}

static void assert_blob(struct fixture *f, const char *digest)
{
    char p[256];
    assert_int_equal(layer_store_blob_path(f->s, digest, p, sizeof(p)), 0);
    assert_int_equal(access(p, F_OK), 0);
}

/* The layer `diff_id` holds `path` with `content`. */
static void assert_layer_file(struct fixture *f, const char *diff_id, const char *path,
                              const char *content)
{
    char dir[256], p[512], buf[64] = "";
    assert_int_equal(layer_store_has(f->s, diff_id), 1);
    assert_int_equal(layer_store_path(f->s, diff_id, dir, sizeof(dir)), 0);
    snprintf(p, sizeof(p), "%s/%s", dir, path);
    FILE *fp = fopen(p, "r");
    assert_non_null(fp);
    assert_non_null(fgets(buf, sizeof(buf), fp));
    fclose(fp);
    assert_string_equal(buf, content);
}

/* A plain layer tar holding `path` = `content`; its bytes in *t and diff_id. */
static void make_layer(struct tb *t, const char *path, const char *content, char *diff_id)
{
    tb_begin(t, ARCHIVE_FILTER_NONE);
    tb_file(t, path, content);
    tb_end(t);
    tb_sha256(t->buf, t->used, diff_id);
}

static char *make_config(const char *const *diff_ids, size_t n)
{
    json_t *ids = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(ids, json_string(diff_ids[i]));
    json_t *c = json_pack("{s:s, s:s, s:{s:[s], s:[s]}, s:{s:s, s:o}}", "architecture", "amd64",
                          "os", "linux", "config", "Env", "PATH=/bin", "Cmd", "/bin/sh", "rootfs",
                          "type", "layers", "diff_ids", ids);
    char *s = json_dumps(c, JSON_COMPACT);
    json_decref(c);
    return s;
}

static void test_docker_save(void **state)
{
    struct fixture *f = *state;
    struct tb l1, l2, outer;
    char d1[80], d2[80], cfg_digest[80], p[256], msg[512];
    struct imported_image img;
    make_layer(&l1, "etc/base", "base layer", d1);
    make_layer(&l2, "etc/top", "top layer", d2);
    const char *ids[] = {d1, d2, d1};
    char *config = make_config(ids, 3);
    tb_sha256(config, strlen(config), cfg_digest);
    const char *id1 = "1111111111111111111111111111111111111111111111111111111111111111";
    const char *id2 = "2222222222222222222222222222222222222222222222222222222222222222";
    const char *id3 = "3333333333333333333333333333333333333333333333333333333333333333";

    tb_begin(&outer, ARCHIVE_FILTER_GZIP);
    snprintf(p, sizeof(p), "%s/", id1);
    tb_dir(&outer, p, 0755);
    snprintf(p, sizeof(p), "%s/VERSION", id1);
    tb_file(&outer, p, "1.0");
    snprintf(p, sizeof(p), "%s/layer.tar", id1);
    tb_put(&outer, tb_entry(p, AE_IFREG, 0644), l1.buf, l1.used);
    snprintf(p, sizeof(p), "%s/layer.tar", id2);
    tb_put(&outer, tb_entry(p, AE_IFREG, 0644), l2.buf, l2.used);
    /* docker save links a layer that appears twice instead of storing it again. */
    snprintf(p, sizeof(p), "%s/layer.tar", id3);
    char target[100];
    snprintf(target, sizeof(target), "../%s/layer.tar", id1);
    tb_symlink(&outer, p, target);
    snprintf(p, sizeof(p), "%s.json", cfg_digest + 7);
    tb_file(&outer, p, config);
    tb_file(&outer, "repositories", "{\"test\":{\"latest\":\"x\"}}");
    char manifest[1024];
    snprintf(manifest, sizeof(manifest),
             "[{\"Config\":\"%s.json\",\"RepoTags\":[\"test:latest\"],\"Layers\":[\"%s/layer.tar\","
             "\"%s/layer.tar\",\"%s/layer.tar\"]}]",
             cfg_digest + 7, id1, id2, id3);
    tb_file(&outer, "manifest.json", manifest);
    tb_end(&outer);

    int r = import_bytes(f, outer.buf, outer.used, &img, msg);
    if (r)
        print_error("import: %s\n", msg);
    assert_int_equal(r, 0);
    assert_int_equal(img.kind, IMAGE_ARCHIVE_DOCKER);
    assert_int_equal(img.n_layers, 3);
    assert_string_equal(img.config_digest, cfg_digest);
    assert_string_equal(img.config_json, config);
    /* An uncompressed layer.tar: its blob digest is its diff_id. */
    assert_string_equal(img.layers[0].digest, d1);
    assert_string_equal(img.layers[1].diff_id, d2);
    assert_string_equal(img.layers[2].digest, d1);
    assert_string_equal(img.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar");
    assert_int_equal(img.layers[0].size, l1.used);
    assert_int_equal(img.total_size, 2 * l1.used + l2.used);
    assert_layer_file(f, d1, "etc/base", "base layer");
    assert_layer_file(f, d2, "etc/top", "top layer");
    assert_blob(f, d1);
    assert_blob(f, d2);
    assert_blob(f, cfg_digest);
    assert_blob(f, img.manifest_digest);
    /* The generated manifest is an OCI image manifest naming the same blobs. */
    assert_int_equal(layer_store_blob_path(f->s, img.manifest_digest, p, sizeof(p)), 0);
    json_error_t jerr;
    json_t *m = json_load_file(p, 0, &jerr);
    assert_non_null(m);
    assert_int_equal(json_integer_value(json_object_get(m, "schemaVersion")), 2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(m, "config"), "digest")),
                        cfg_digest);
    assert_int_equal(json_array_size(json_object_get(m, "layers")), 3);
    json_decref(m);
    assert_no_spool(f);
    imported_image_free(&img);
    free(config);
    tb_free(&l1);
    tb_free(&l2);
    tb_free(&outer);
}

struct oci {
    char layer_digest[80], diff_id[80], config_digest[80], manifest_digest[80];
    struct tb gz;
    char *config, *manifest, *index;
};

/* An OCI image with one gzip layer holding usr/share/hello. */
static void make_oci(struct oci *o)
{
    struct tb plain;
    make_layer(&plain, "usr/share/hello", "from oci", o->diff_id);
    tb_compress(plain.buf, plain.used, ARCHIVE_FILTER_GZIP, &o->gz);
    tb_free(&plain);
    tb_sha256(o->gz.buf, o->gz.used, o->layer_digest);
    const char *ids[] = {o->diff_id};
    o->config = make_config(ids, 1);
    tb_sha256(o->config, strlen(o->config), o->config_digest);
    json_t *m = json_pack("{s:i, s:s, s:{s:s, s:s, s:I}, s:[{s:s, s:s, s:I}]}", "schemaVersion", 2,
                          "mediaType", "application/vnd.oci.image.manifest.v1+json", "config",
                          "mediaType", "application/vnd.oci.image.config.v1+json", "digest",
                          o->config_digest, "size", (json_int_t)strlen(o->config), "layers",
                          "mediaType", "application/vnd.oci.image.layer.v1.tar+gzip", "digest",
                          o->layer_digest, "size", (json_int_t)o->gz.used);
    o->manifest = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    tb_sha256(o->manifest, strlen(o->manifest), o->manifest_digest);
    json_t *i = json_pack("{s:i, s:[{s:s, s:s, s:I, s:{s:s, s:s}}]}", "schemaVersion", 2,
                          "manifests", "mediaType", "application/vnd.oci.image.manifest.v1+json",
                          "digest", o->manifest_digest, "size", (json_int_t)strlen(o->manifest),
                          "platform", "architecture", "amd64", "os", "linux");
    o->index = json_dumps(i, JSON_COMPACT);
    json_decref(i);
}

static void free_oci(struct oci *o)
{
    tb_free(&o->gz);
    free(o->config);
    free(o->manifest);
    free(o->index);
}

static void check_oci_import(struct fixture *f, struct oci *o, struct imported_image *img)
{
    assert_int_equal(img->kind, IMAGE_ARCHIVE_OCI);
    assert_string_equal(img->manifest_digest, o->manifest_digest);
    assert_string_equal(img->config_digest, o->config_digest);
    assert_int_equal(img->n_layers, 1);
    assert_string_equal(img->layers[0].digest, o->layer_digest);
    assert_string_equal(img->layers[0].diff_id, o->diff_id);
    assert_string_equal(img->layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_layer_file(f, o->diff_id, "usr/share/hello", "from oci");
    assert_blob(f, o->layer_digest);
    assert_blob(f, o->config_digest);
    assert_blob(f, o->manifest_digest);
    assert_no_spool(f);
}

static void put_blob(struct tb *t, const char *digest, const void *data, size_t len)
{
    char p[128];
    snprintf(p, sizeof(p), "blobs/sha256/%s", digest + 7);
    tb_put(t, tb_entry(p, AE_IFREG, 0644), data, len);
}

static void test_oci_archive(void **state)
{
    struct fixture *f = *state;
    struct oci o;
    struct tb outer;
    struct imported_image img;
    char msg[512];
    make_oci(&o);
    tb_begin(&outer, ARCHIVE_FILTER_NONE);
    tb_dir(&outer, "./", 0755);
    tb_dir(&outer, "./blobs/", 0755);
    tb_dir(&outer, "./blobs/sha256/", 0755);
    put_blob(&outer, o.layer_digest, o.gz.buf, o.gz.used);
    put_blob(&outer, o.config_digest, o.config, strlen(o.config));
    put_blob(&outer, o.manifest_digest, o.manifest, strlen(o.manifest));
    tb_file(&outer, "./index.json", o.index);
    tb_file(&outer, "./oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}");
    tb_end(&outer);
    int r = import_bytes(f, outer.buf, outer.used, &img, msg);
    if (r)
        print_error("import: %s\n", msg);
    assert_int_equal(r, 0);
    check_oci_import(f, &o, &img);
    imported_image_free(&img);
    tb_free(&outer);
    free_oci(&o);
}

static void write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    tb_save(p, data, len);
}

static void test_skopeo_oci_archive(void **state)
{
    struct fixture *f = *state;
    struct oci o;
    struct imported_image img;
    char dir[256], p[512], cmd[1024], msg[512];
    make_oci(&o);
    snprintf(dir, sizeof(dir), "%s/ocidir", f->root);
    snprintf(p, sizeof(p), "%s/blobs/sha256", dir);
    assert_int_equal(util_mkdir_p(p, 0755), 0);
    write_file(p, o.layer_digest + 7, o.gz.buf, o.gz.used);
    write_file(p, o.config_digest + 7, o.config, strlen(o.config));
    write_file(p, o.manifest_digest + 7, o.manifest, strlen(o.manifest));
    write_file(dir, "index.json", o.index, strlen(o.index));
    write_file(dir, "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}", 30);
    snprintf(p, sizeof(p), "%s/image.tar", f->root);
    snprintf(cmd, sizeof(cmd), "skopeo copy --quiet oci:%s oci-archive:%s:test >/dev/null 2>&1",
             dir, p);
    assert_int_equal(system(cmd), 0);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    int r = image_import(fd, f->s, &img, msg, sizeof(msg));
    close(fd);
    if (r)
        print_error("import: %s\n", msg);
    assert_int_equal(r, 0);
    /* skopeo keeps the blobs as they are (same digests). */
    check_oci_import(f, &o, &img);
    imported_image_free(&img);
    free_oci(&o);
}

static void test_rootfs(void **state)
{
    struct fixture *f = *state;
    struct tb plain, gz;
    char diff_id[80], digest[80], msg[512];
    struct imported_image img;
    tb_begin(&plain, ARCHIVE_FILTER_NONE);
    tb_dir(&plain, "./", 0755);
    tb_dir(&plain, "./bin/", 0755);
    tb_file(&plain, "./bin/sh", "#!shell");
    tb_end(&plain);
    tb_sha256(plain.buf, plain.used, diff_id);
    tb_compress(plain.buf, plain.used, ARCHIVE_FILTER_GZIP, &gz);
    tb_sha256(gz.buf, gz.used, digest);
    int r = import_bytes(f, gz.buf, gz.used, &img, msg);
    if (r)
        print_error("import: %s\n", msg);
    assert_int_equal(r, 0);
    assert_int_equal(img.kind, IMAGE_ARCHIVE_ROOTFS);
    assert_int_equal(img.n_layers, 1);
    /* The archive as given is the layer blob; the diff_id is its plain tar's. */
    assert_string_equal(img.layers[0].digest, digest);
    assert_string_equal(img.layers[0].diff_id, diff_id);
    assert_string_equal(img.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_int_equal(img.layers[0].size, gz.used);
    assert_layer_file(f, diff_id, "bin/sh", "#!shell");
    assert_blob(f, digest);
    assert_blob(f, img.config_digest);
    assert_blob(f, img.manifest_digest);
    assert_non_null(strstr(img.config_json, "PATH=/usr/local/sbin"));
    assert_non_null(strstr(img.config_json, diff_id));
    assert_no_spool(f);
    imported_image_free(&img);

    /* The same rootfs uncompressed gives the same layer under another blob. */
    r = import_bytes(f, plain.buf, plain.used, &img, msg);
    assert_int_equal(r, 0);
    assert_string_equal(img.layers[0].diff_id, diff_id);
    assert_string_equal(img.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar");
    imported_image_free(&img);
    tb_free(&plain);
    tb_free(&gz);
}

static void test_refusals(void **state)
{
    struct fixture *f = *state;
    struct oci o;
    struct tb outer;
    struct imported_image img;
    char msg[512];
    make_oci(&o);
    /* A blob whose content is not its name. */
    tb_begin(&outer, ARCHIVE_FILTER_NONE);
    put_blob(&outer, o.layer_digest, "tampered", 8);
    tb_file(&outer, "index.json", o.index);
    tb_file(&outer, "oci-layout", "{}");
    tb_end(&outer);
    assert_int_equal(import_bytes(f, outer.buf, outer.used, &img, msg), -EBADMSG);
    assert_non_null(strstr(msg, "has digest"));
    assert_no_spool(f);
    tb_free(&outer);
    /* The manifest's layer is missing. */
    tb_begin(&outer, ARCHIVE_FILTER_NONE);
    put_blob(&outer, o.config_digest, o.config, strlen(o.config));
    put_blob(&outer, o.manifest_digest, o.manifest, strlen(o.manifest));
    tb_file(&outer, "index.json", o.index);
    tb_file(&outer, "oci-layout", "{}");
    tb_end(&outer);
    assert_int_equal(import_bytes(f, outer.buf, outer.used, &img, msg), -EINVAL);
    assert_non_null(strstr(msg, "not in the archive"));
    assert_no_spool(f);
    tb_free(&outer);
    /* An image archive without a manifest. */
    tb_begin(&outer, ARCHIVE_FILTER_NONE);
    tb_file(&outer, "repositories", "{}");
    tb_end(&outer);
    assert_int_equal(import_bytes(f, outer.buf, outer.used, &img, msg), -EINVAL);
    assert_no_spool(f);
    tb_free(&outer);
    /* Not an archive. */
    assert_int_equal(import_bytes(f, "hello world, plain text", 23, &img, msg), -EINVAL);
    assert_no_spool(f);
    /* A rootfs whose layer the unpacker refuses. */
    tb_begin(&outer, ARCHIVE_FILTER_NONE);
    tb_file(&outer, "../escape", "x");
    tb_end(&outer);
    assert_int_equal(import_bytes(f, outer.buf, outer.used, &img, msg), -EINVAL);
    assert_non_null(strstr(msg, "'../escape'"));
    assert_no_spool(f);
    tb_free(&outer);
    free_oci(&o);
}

int main(void)
{
    /* A refused import stops reading: the feeder thread must see EPIPE, not die of SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_docker_save, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oci_archive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_skopeo_oci_archive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rootfs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
