/*
 * image manifest: OCI and Docker manifests, indexes and configs, the errors on what is refused
 * (schema 1, foreign layers, unknown media types, too many layers), platform selection, and the
 * WWW-Authenticate / config.json parsing of registry_auth.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "image/manifest.h"
#include "image/registry_auth.h"

#define D(c) "sha256:" c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c
#define DA D("aa")
#define DB D("bb")
#define DC D("cc")

static int parse(const char *json, const char *ct, struct manifest *m, char *msg)
{
    return manifest_parse(json, strlen(json), ct, m, msg, 256);
}

static void test_oci_manifest(void **state)
{
    (void)state;
    struct manifest m;
    char msg[256] = "";
    const char *j =
        "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
        "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\","
        "\"digest\":\"" DA "\",\"size\":123},\"layers\":["
        "{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"" DB
        "\",\"size\":10},"
        "{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+zstd\",\"digest\":\"" DC
        "\",\"size\":20},"
        "{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"" DA
        "\",\"size\":0}]}";
    assert_int_equal(parse(j, NULL, &m, msg), 0);
    assert_int_equal(m.kind, MANIFEST_IMAGE);
    assert_string_equal(m.config_digest, DA);
    assert_int_equal(m.config_size, 123);
    assert_int_equal(m.n_layers, 3);
    assert_string_equal(m.layers[0].digest, DB);
    assert_int_equal(m.layers[0].compression, LAYER_GZIP);
    assert_int_equal(m.layers[1].compression, LAYER_ZSTD);
    assert_int_equal(m.layers[1].size, 20);
    assert_int_equal(m.layers[2].compression, LAYER_PLAIN);
    manifest_free(&m);
    manifest_free(&m); /* zeroed: a second free is harmless */
}

static void test_docker_manifest(void **state)
{
    (void)state;
    struct manifest m;
    char msg[256] = "";
    /* No mediaType in the document: the Content-Type header (with a parameter) decides. */
    const char *j = "{\"schemaVersion\":2,"
                    "\"config\":{\"mediaType\":\"application/vnd.docker.container.image.v1+json\","
                    "\"digest\":\"" DA "\",\"size\":5},\"layers\":["
                    "{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\","
                    "\"digest\":\"" DB "\",\"size\":7}]}";
    assert_int_equal(
        parse(j, "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8", &m, msg),
        0);
    assert_int_equal(m.kind, MANIFEST_IMAGE);
    assert_int_equal(m.n_layers, 1);
    assert_int_equal(m.layers[0].compression, LAYER_GZIP);
    manifest_free(&m);
}

static void test_manifest_errors(void **state)
{
    (void)state;
    static const struct {
        const char *json, *ct, *why;
    } t[] = {
        {"{\"schemaVersion\":1,\"name\":\"x\",\"fsLayers\":[]}", NULL, "schema 1"},
        {"{}", "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema 1"},
        {"not json", NULL, "not a JSON object"},
        {"{\"schemaVersion\":3}", NULL, "schemaVersion"},
        {"{\"schemaVersion\":2,\"mediaType\":\"application/x-weird\"}", NULL,
         "unsupported manifest media type application/x-weird"},
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"sha256:12\",\"size\":1},\"layers\":[]}",
         NULL, "config has no sha256 digest"},
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"" DA "\",\"size\":-1},\"layers\":[]}", NULL,
         "no valid size"},
        {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/"
         "vnd.cncf.helm.config.v1+json\","
         "\"digest\":\"" DA "\",\"size\":1},\"layers\":[]}",
         NULL, "not a container image"},
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"" DA "\",\"size\":1},\"layers\":[{"
         "\"mediaType\":\"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip\","
         "\"digest\":\"" DB "\",\"size\":1,\"urls\":[\"https://example.com/x\"]}]}",
         NULL, "layer " DB " is foreign"},
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"" DA "\",\"size\":1},\"layers\":[{"
         "\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"" DB
         "\",\"size\":1,\"urls\":[\"https://example.com/x\"]}]}",
         NULL, "non-distributable"},
        {"{\"schemaVersion\":2,\"config\":{\"digest\":\"" DA "\",\"size\":1},\"layers\":[{"
         "\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+bzip2\",\"digest\":\"" DB
         "\",\"size\":1}]}",
         NULL, "unsupported media type application/vnd.oci.image.layer.v1.tar+bzip2"},
        {"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\"}", NULL,
         "no manifests array"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct manifest m;
        char msg[256] = "";
        if (parse(t[i].json, t[i].ct, &m, msg) != -EPROTO)
            fail_msg("case %zu accepted", i);
        if (!strstr(msg, t[i].why))
            fail_msg("case %zu: '%s' lacks '%s'", i, msg, t[i].why);
        assert_null(m.layers);
    }
    /* More than MANIFEST_MAX_LAYERS layers. */
    char *j = malloc(64 << 10);
    size_t off = (size_t)sprintf(j, "{\"schemaVersion\":2,\"config\":{\"digest\":\"" DA
                                    "\",\"size\":1},\"layers\":[");
    for (int i = 0; i <= MANIFEST_MAX_LAYERS; i++)
        off += (size_t)sprintf(j + off,
                               "%s{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\","
                               "\"digest\":\"" DB "\",\"size\":1}",
                               i ? "," : "");
    sprintf(j + off, "]}");
    struct manifest m;
    char msg[256];
    assert_int_equal(parse(j, NULL, &m, msg), -EPROTO);
    assert_non_null(strstr(msg, "layers"));
    free(j);
}

static const char *index_json =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\","
    "\"manifests\":["
    "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" DA "\","
    "\"size\":100,\"platform\":{\"os\":\"linux\",\"architecture\":\"arm\",\"variant\":\"v6\"}},"
    "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" DB "\","
    "\"size\":101,\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\"}},"
    "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" DC "\","
    "\"size\":102,\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}},"
    "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" DA "\","
    "\"size\":103,\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\",\"variant\":\"v8\"}},"
    "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" DB "\","
    "\"size\":104,\"platform\":{\"os\":\"unknown\",\"architecture\":\"unknown\"},"
    "\"annotations\":{\"vnd.docker.reference.type\":\"attestation-manifest\"}},"
    "{\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"digest\":\"" DC "\","
    "\"size\":105}]}";

static void test_index_select(void **state)
{
    (void)state;
    struct manifest m;
    char msg[512] = "";
    size_t w = 99;
    assert_int_equal(parse(index_json, "application/vnd.oci.image.index.v1+json", &m, msg), 0);
    assert_int_equal(m.kind, MANIFEST_INDEX);
    assert_int_equal(m.n_entries, 5); /* the nested index is left out */
    assert_int_equal(manifest_select(&m, "linux", "amd64", "", &w, msg, sizeof(msg)), 0);
    assert_int_equal(m.entries[w].size, 102);
    /* arm64/v8 preferred over arm64 without a variant, which also fits. */
    assert_int_equal(manifest_select(&m, "linux", "arm64", "v8", &w, msg, sizeof(msg)), 0);
    assert_int_equal(m.entries[w].size, 103);
    assert_int_equal(manifest_select(&m, "linux", "arm", "v6", &w, msg, sizeof(msg)), 0);
    assert_int_equal(m.entries[w].size, 100);
    /* arm/v7 does not run arm/v6's entry by this rule: refused, the platforms listed. */
    assert_int_equal(manifest_select(&m, "linux", "arm", "v7", &w, msg, sizeof(msg)), -ENOENT);
    assert_non_null(strstr(msg, "no image for linux/arm/v7"));
    assert_non_null(strstr(msg, "linux/arm/v6, linux/arm64, linux/amd64, linux/arm64/v8"));
    assert_int_equal(manifest_select(&m, "linux", "s390x", "", &w, msg, sizeof(msg)), -ENOENT);
    manifest_free(&m);

    /* A Docker manifest list with only arm64 entries. */
    const char *list =
        "{\"schemaVersion\":2,\"mediaType\":"
        "\"application/vnd.docker.distribution.manifest.list.v2+json\",\"manifests\":["
        "{\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\","
        "\"digest\":\"" DA "\",\"size\":1,"
        "\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\"}}]}";
    assert_int_equal(parse(list, NULL, &m, msg), 0);
    assert_int_equal(manifest_select(&m, "linux", "amd64", "", &w, msg, sizeof(msg)), -ENOENT);
    assert_string_equal(msg, "no image for linux/amd64 (available: linux/arm64)");
    manifest_free(&m);
}

static void test_host_platform(void **state)
{
    (void)state;
    char os[32], arch[32], variant[16];
    manifest_host_platform(os, arch, variant);
    assert_string_equal(os, "linux");
#if defined(__x86_64__)
    assert_string_equal(arch, "amd64");
    assert_string_equal(variant, "");
#elif defined(__aarch64__)
    assert_string_equal(arch, "arm64");
    assert_string_equal(variant, "v8");
#endif
}

static void test_config(void **state)
{
    (void)state;
    struct image_config c;
    char msg[256] = "";
    const char *j =
        "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{"
        "\"Env\":[\"PATH=/usr/bin\",\"A=b\"],\"WorkingDir\":\"/app\",\"User\":\"1000:1000\","
        "\"Entrypoint\":[\"/bin/sh\",\"-c\"],\"Cmd\":null},"
        "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" DA "\",\"" DB "\"]}}";
    assert_int_equal(image_config_parse(j, strlen(j), &c, msg, sizeof(msg)), 0);
    assert_string_equal(c.os, "linux");
    assert_string_equal(c.arch, "amd64");
    assert_string_equal(c.variant, "");
    assert_string_equal(c.env[0], "PATH=/usr/bin");
    assert_string_equal(c.env[1], "A=b");
    assert_null(c.env[2]);
    assert_string_equal(c.workdir, "/app");
    assert_string_equal(c.user, "1000:1000");
    assert_string_equal(c.entrypoint[1], "-c");
    assert_null(c.cmd);
    assert_int_equal(c.n_diff_ids, 2);
    assert_string_equal(c.diff_ids[1], DB);
    image_config_free(&c);

    /* No config section at all, an empty Cmd. */
    j = "{\"os\":\"linux\",\"rootfs\":{\"diff_ids\":[]},\"config\":{\"Cmd\":[]}}";
    assert_int_equal(image_config_parse(j, strlen(j), &c, msg, sizeof(msg)), 0);
    assert_null(c.env);
    assert_null(c.workdir);
    assert_non_null(c.cmd);
    assert_null(c.cmd[0]);
    assert_int_equal(c.n_diff_ids, 0);
    image_config_free(&c);

    static const struct {
        const char *json, *why;
    } bad[] = {
        {"[]", "not a JSON object"},
        {"{\"config\":{}}", "no rootfs.diff_ids"},
        {"{\"rootfs\":{\"diff_ids\":[\"md5:x\"]}}", "diff_ids[0] is not a sha256"},
        {"{\"rootfs\":{\"diff_ids\":[]},\"config\":{\"Env\":\"A=b\"}}", "config.Env is not"},
        {"{\"rootfs\":{\"diff_ids\":[]},\"config\":{\"Cmd\":[1]}}", "config.Cmd[0]"},
        {"{\"rootfs\":{\"diff_ids\":[]},\"config\":{\"User\":7}}", "config.User"},
        {"{\"rootfs\":{\"diff_ids\":[]},\"config\":7}", "config is not an object"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (image_config_parse(bad[i].json, strlen(bad[i].json), &c, msg, sizeof(msg)) != -EPROTO)
            fail_msg("config case %zu accepted", i);
        if (!strstr(msg, bad[i].why))
            fail_msg("config case %zu: '%s' lacks '%s'", i, msg, bad[i].why);
        assert_null(c.env);
    }
}

static void test_challenge(void **state)
{
    (void)state;
    struct registry_challenge ch;
    assert_int_equal(
        registry_challenge_parse(
            "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","
            "scope=\"repository:library/alpine:pull\"",
            &ch),
        0);
    assert_int_equal(ch.scheme, CHALLENGE_BEARER);
    assert_string_equal(ch.realm, "https://auth.docker.io/token");
    assert_string_equal(ch.service, "registry.docker.io");
    assert_string_equal(ch.scope, "repository:library/alpine:pull");
    /* Case, spaces, bare tokens, escapes, unknown parameters, a comma inside quotes. */
    assert_int_equal(registry_challenge_parse("bearer  Realm=\"http://h:1/t?a=1\", error=\"invalid_"
                                              "token\" , SERVICE=svc,scope=\"a:b:pull,push\\\"x\"",
                                              &ch),
                     0);
    assert_string_equal(ch.realm, "http://h:1/t?a=1");
    assert_string_equal(ch.service, "svc");
    assert_string_equal(ch.scope, "a:b:pull,push\"x");
    assert_int_equal(registry_challenge_parse("Basic realm=\"Registry Realm\"", &ch), 0);
    assert_int_equal(ch.scheme, CHALLENGE_BASIC);
    assert_string_equal(ch.realm, "Registry Realm");
    assert_int_equal(registry_challenge_parse("Basic", &ch), 0);
    assert_int_equal(registry_challenge_parse("Digest realm=\"x\"", &ch), -EINVAL);
    assert_int_equal(registry_challenge_parse("Bearer service=\"x\"", &ch), -EINVAL);
    assert_int_equal(registry_challenge_parse("Bearer realm=\"unterminated", &ch), -EINVAL);
    assert_int_equal(registry_challenge_parse("Bearerx realm=\"a\"", &ch), -EINVAL);
    assert_int_equal(registry_challenge_parse("", &ch), -EINVAL);
    char big[2048];
    snprintf(big, sizeof(big), "Bearer realm=\"%01500d\"", 0);
    assert_int_equal(registry_challenge_parse(big, &ch), -EINVAL);
}

static void test_auth_file(void **state)
{
    (void)state;
    char path[] = "/tmp/registry-test-auth-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    /* alice:s3cr:et (a colon in the password), bob by name, a helper-only entry, docker.io by
     * its historical URL key. */
    const char *j = "{\"auths\":{\"127.0.0.1:5000\":{\"auth\":\"YWxpY2U6czNjcjpldA==\"},"
                    "\"https://reg.example.com/v1/\":{\"username\":\"bob\",\"password\":\"pw\"},"
                    "\"helper.example.com\":{},"
                    "\"https://index.docker.io/v1/\":{\"auth\":\"ZDpo\"}},\"credsStore\":\"x\"}";
    assert_int_equal(write(fd, j, strlen(j)), (ssize_t)strlen(j));
    close(fd);
    struct registry_auths a;
    char msg[256] = "";
    assert_int_equal(registry_auths_load(path, &a, msg, sizeof(msg)), 0);
    assert_int_equal(a.n, 3);
    const struct registry_cred *c = registry_auths_find(&a, "127.0.0.1:5000");
    assert_non_null(c);
    assert_string_equal(c->user, "alice");
    assert_string_equal(c->pass, "s3cr:et");
    c = registry_auths_find(&a, "reg.example.com");
    assert_non_null(c);
    assert_string_equal(c->user, "bob");
    c = registry_auths_find(&a, "docker.io");
    assert_non_null(c);
    assert_string_equal(c->user, "d");
    assert_null(registry_auths_find(&a, "helper.example.com"));
    assert_null(registry_auths_find(&a, "127.0.0.1:5001"));
    registry_auths_free(&a);

    /* A bad base64 value names the entry and never the value. */
    fd = open(path, O_WRONLY | O_TRUNC);
    j = "{\"auths\":{\"h\":{\"auth\":\"!!notbase64\"}}}";
    assert_int_equal(write(fd, j, strlen(j)), (ssize_t)strlen(j));
    close(fd);
    assert_int_equal(registry_auths_load(path, &a, msg, sizeof(msg)), -EINVAL);
    assert_non_null(strstr(msg, "bad credentials for h"));
    assert_null(strstr(msg, "notbase64"));
    unlink(path);
    assert_int_equal(registry_auths_load(path, &a, msg, sizeof(msg)), -ENOENT);
    char norm[64];
    registry_host_normalise("https://registry-1.docker.io/v2/", norm, sizeof(norm));
    assert_string_equal(norm, "docker.io");
    registry_host_normalise("http://127.0.0.1:5000", norm, sizeof(norm));
    assert_string_equal(norm, "127.0.0.1:5000");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oci_manifest),    cmocka_unit_test(test_docker_manifest),
        cmocka_unit_test(test_manifest_errors), cmocka_unit_test(test_index_select),
        cmocka_unit_test(test_host_platform),   cmocka_unit_test(test_config),
        cmocka_unit_test(test_challenge),       cmocka_unit_test(test_auth_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
