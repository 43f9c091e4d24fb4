/*
 * registry: pulls from a real docker-registry on 127.0.0.1 (tests/registry_fixture.py serve:
 * images made and pushed with skopeo, a TLS twin with a test CA, a bearer-token proxy in front).
 * Plain, by digest, multi-platform, not found, down, TLS, tokens, mirrors, corrupt and oversized
 * blobs, a resumed download and two pulls of one image at once.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "core/util.h"
#include "image/digest.h"
#include "image/registry.h"

struct world {
    pid_t pid;
    int in; /* the fixture's stdin: closing it tears the registries down */
    json_t *info;
    char plain[64], tls[64], proxy[64], dead[64];
};

static struct world W = {.pid = -1, .in = -1};

static const char *info_str(const char *path)
{
    /* "a.b.c" inside W.info */
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *v = W.info;
    for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, "."))
        v = json_is_array(v) ? json_array_get(v, (size_t)atoi(tok)) : json_object_get(v, tok);
    assert_non_null(json_string_value(v));
    return json_string_value(v);
}

static int64_t info_int(const char *path)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *v = W.info;
    for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, "."))
        v = json_is_array(v) ? json_array_get(v, (size_t)atoi(tok)) : json_object_get(v, tok);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static int world_up(void **state)
{
    (void)state;
    int in[2], out[2];
    const char *script = getenv("WARREN_REGISTRY_FIXTURE");
    if (!script)
        script = "tests/registry_fixture.py";
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
        return -1;
    W.pid = fork();
    if (W.pid < 0)
        return -1;
    if (W.pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        execl("/usr/bin/python3", "python3", script, "serve", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    W.in = in[1];
    FILE *f = fdopen(out[0], "r");
    char *line = NULL;
    size_t cap = 0;
    /* The fixture prints its line when everything answers, or an error; it has deadlines. */
    ssize_t n = getline(&line, &cap, f);
    fclose(f);
    json_error_t jerr;
    W.info = n > 0 ? json_loads(line, 0, &jerr) : NULL;
    free(line);
    if (!W.info || json_object_get(W.info, "error")) {
        print_error("registry fixture failed: %s\n", n > 0 ? "see its error above" : "no output");
        return -1;
    }
    snprintf(W.plain, sizeof(W.plain), "127.0.0.1:%d", (int)info_int("port"));
    snprintf(W.tls, sizeof(W.tls), "127.0.0.1:%d", (int)info_int("tls_port"));
    snprintf(W.dead, sizeof(W.dead), "127.0.0.1:%d", (int)info_int("dead_port"));
    snprintf(W.proxy, sizeof(W.proxy), "%s", info_str("proxy"));
    return 0;
}

static int world_down(void **state)
{
    (void)state;
    if (W.in >= 0)
        close(W.in);
    if (W.pid > 0) {
        int st;
        waitpid(W.pid, &st, 0);
    }
    json_decref(W.info);
    return 0;
}

/* Each test pulls into a fresh blobs dir. */
struct t {
    char blobs[64];
    char auth[128];
    int64_t done, total;
    int calls;
};

static int t_setup(void **state)
{
    struct t *t = calloc(1, sizeof(*t));
    snprintf(t->blobs, sizeof(t->blobs), "/tmp/registry-test-XXXXXX");
    if (!mkdtemp(t->blobs))
        return -1;
    snprintf(t->auth, sizeof(t->auth), "%s/config.json", t->blobs);
    *state = t;
    return 0;
}

static int t_teardown(void **state)
{
    struct t *t = *state;
    util_remove_tree(t->blobs);
    free(t);
    return 0;
}

static void on_progress(void *arg, int64_t done, int64_t total)
{
    struct t *t = arg;
    t->done = done;
    t->total = total;
    t->calls++;
}

static int pull_with(struct t *t, const struct registry_options *o, const char *refs,
                     struct pulled_image *out, char *msg, size_t msglen)
{
    struct registry_client *rc;
    struct image_ref ref;
    char m[256];
    if (image_ref_parse(refs, &ref, m, sizeof(m)) < 0)
        fail_msg("%s: %s", refs, m);
    int r = registry_client_new(o, &rc, msg, msglen);
    if (r < 0)
        fail_msg("client: %s", msg);
    r = registry_pull(rc, &ref, t->blobs, out, on_progress, t, msg, msglen);
    registry_client_free(rc);
    return r;
}

/* Pulls refs from the plain registry (listed insecure). */
static int pull_plain(struct t *t, const char *refs, struct pulled_image *out, char *msg,
                      size_t msglen)
{
    const char *insecure[] = {W.plain};
    struct registry_options o = {.insecure = insecure, .n_insecure = 1, .timeout_s = 10};
    return pull_with(t, &o, refs, out, msg, msglen);
}

static void assert_blob(const struct t *t, const char *digest)
{
    char path[256], got[DIGEST_STRLEN];
    snprintf(path, sizeof(path), "%s/sha256/%s", t->blobs, digest + 7);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        fail_msg("blob %s missing", path);
    struct digest_ctx c;
    assert_int_equal(digest_init(&c), 0);
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        digest_update(&c, buf, (size_t)n);
    close(fd);
    digest_final(&c, got);
    assert_string_equal(got, digest);
}

static int blob_exists(const struct t *t, const char *digest)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/sha256/%s", t->blobs, digest + 7);
    return access(path, F_OK) == 0;
}

/* Entries in blobs/tmp: partial downloads left behind. */
static int tmp_entries(const struct t *t)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "ls -A %s/tmp | wc -l", t->blobs);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (fscanf(p, "%d", &n) != 1)
        n = -1;
    pclose(p);
    return n;
}

static void check_img(struct t *t, const struct pulled_image *pi)
{
    assert_string_equal(pi->manifest_digest, info_str("img.digest"));
    assert_string_equal(pi->config_digest, info_str("img.config"));
    assert_string_equal(pi->index_digest, "");
    assert_int_equal(pi->n_layers, 3);
    assert_int_equal(pi->layers[0].compression, LAYER_GZIP);
    assert_int_equal(pi->layers[1].compression, LAYER_ZSTD);
    assert_int_equal(pi->layers[2].compression, LAYER_PLAIN);
    int64_t total = 0;
    for (size_t i = 0; i < 3; i++) {
        char key[32];
        snprintf(key, sizeof(key), "img.layers.%zu", i);
        assert_string_equal(pi->layers[i].digest, info_str(key));
        snprintf(key, sizeof(key), "img.sizes.%zu", i);
        assert_int_equal(pi->layers[i].size, info_int(key));
        total += pi->layers[i].size;
        assert_blob(t, pi->layers[i].digest);
    }
    assert_int_equal(pi->total_bytes, total);
    assert_blob(t, pi->manifest_digest);
    assert_blob(t, pi->config_digest);
    assert_string_equal(pi->config.env[1], "X=1");
    assert_string_equal(pi->config.cmd[0], "/bin/sh");
    assert_int_equal(pi->config.n_diff_ids, 3);
    assert_int_equal(t->done, total);
    assert_int_equal(t->total, total);
    assert_int_equal(tmp_entries(t), 0);
}

static void test_pull_plain(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512];
    struct stat st1, st2;
    char path[256];
    snprintf(ref, sizeof(ref), "%s/test/img:v1", W.plain);
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), 0);
    check_img(t, &pi);
    snprintf(path, sizeof(path), "%s/sha256/%s", t->blobs, pi.layers[2].digest + 7);
    assert_int_equal(stat(path, &st1), 0);
    pulled_image_free(&pi);
    /* Again: everything is there, nothing is rewritten. */
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), 0);
    check_img(t, &pi);
    assert_int_equal(stat(path, &st2), 0);
    assert_int_equal(st1.st_ino, st2.st_ino);
    pulled_image_free(&pi);
}

static void test_pull_by_digest(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[256], msg[512];
    snprintf(ref, sizeof(ref), "%s/test/img@%s", W.plain, info_str("img.digest"));
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), 0);
    check_img(t, &pi);
    pulled_image_free(&pi);
    /* tag + digest: the digest is what is pulled. */
    snprintf(ref, sizeof(ref), "%s/test/img:nosuchtag@%s", W.plain, info_str("img.digest"));
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), 0);
    pulled_image_free(&pi);
    /* A digest the repository has no manifest for. */
    snprintf(ref, sizeof(ref), "%s/test/img@sha256:%064d", W.plain, 0);
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), -ENOENT);
}

static void test_not_found(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512], want[256];
    snprintf(ref, sizeof(ref), "%s/test/nope:v1", W.plain);
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), -ENOENT);
    snprintf(want, sizeof(want), "image not found: %s", ref);
    assert_string_equal(msg, want);
    snprintf(ref, sizeof(ref), "%s/test/img:nope", W.plain);
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), -ENOENT);
    assert_non_null(strstr(msg, "image not found"));
}

static void test_down(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512];
    const char *insecure[] = {W.dead};
    struct registry_options o = {.insecure = insecure, .n_insecure = 1, .timeout_s = 5};
    snprintf(ref, sizeof(ref), "%s/test/img:v1", W.dead);
    assert_int_equal(pull_with(t, &o, ref, &pi, msg, sizeof(msg)), -ECONNREFUSED);
    assert_non_null(strstr(msg, W.dead));
}

/* A registry not listed insecure is never spoken to in plain HTTP: HTTPS to a plain port fails. */
static void test_https_only(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512];
    struct registry_options o = {.timeout_s = 5};
    snprintf(ref, sizeof(ref), "%s/test/img:v1", W.plain);
    assert_int_equal(pull_with(t, &o, ref, &pi, msg, sizeof(msg)), -ECONNREFUSED);
    assert_non_null(strstr(msg, W.plain));
}

static void test_tls(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512];
    struct registry_options o = {.ca_file = info_str("ca"), .timeout_s = 10};
    snprintf(ref, sizeof(ref), "%s/test/img:v1", W.tls);
    assert_int_equal(pull_with(t, &o, ref, &pi, msg, sizeof(msg)), 0);
    check_img(t, &pi);
    pulled_image_free(&pi);
    /* Without the test CA the certificate is not trusted. */
    util_remove_tree(t->blobs);
    mkdir(t->blobs, 0700);
    o.ca_file = NULL;
    assert_int_equal(pull_with(t, &o, ref, &pi, msg, sizeof(msg)), -ECONNREFUSED);
    assert_non_null(strstr(msg, W.tls));
    /* A CA file that is not one is refused when the client is made. */
    struct registry_client *rc;
    o.ca_file = "/etc/hostname";
    assert_int_equal(registry_client_new(&o, &rc, msg, sizeof(msg)), -EINVAL);
    assert_non_null(strstr(msg, "no PEM certificate"));
}

static void test_multi_platform(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512];
    snprintf(ref, sizeof(ref), "%s/test/multi:v1", W.plain);
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), 0);
#if defined(__x86_64__)
    assert_string_equal(pi.manifest_digest, info_str("multi.amd64.digest"));
    assert_string_equal(pi.layers[0].digest, info_str("multi.amd64.layers.0"));
    assert_false(blob_exists(t, info_str("multi.arm64.layers.0")));
#endif
    assert_string_equal(pi.index_digest, info_str("multi.index"));
    assert_blob(t, pi.index_digest);
    assert_blob(t, pi.manifest_digest);
    assert_int_equal(pi.n_layers, 1);
    pulled_image_free(&pi);
    /* An image of another architecture, without an index. */
    snprintf(ref, sizeof(ref), "%s/test/armonly:v1", W.plain);
#if defined(__x86_64__)
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), -ENOENT);
    assert_non_null(strstr(msg, "is for linux/arm64"));
#endif
}

static void test_corrupt(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512];
    snprintf(ref, sizeof(ref), "%s/test/corrupt:v1", W.plain);
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), -EBADMSG);
    assert_non_null(strstr(msg, info_str("corrupt.layers.0")));
    assert_false(blob_exists(t, info_str("corrupt.layers.0")));
    assert_int_equal(tmp_entries(t), 0);
    /* Served longer than the manifest says: cut off, refused, nothing kept. */
    snprintf(ref, sizeof(ref), "%s/test/long:v1", W.plain);
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), -EBADMSG);
    assert_non_null(strstr(msg, "larger than"));
    assert_false(blob_exists(t, info_str("long.layers.0")));
    assert_int_equal(tmp_entries(t), 0);
}

static void write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* The first half of the big layer as a partial file: the pull asks for the rest only. */
static void seed_half(struct t *t, int garbage, int64_t *half)
{
    char part[256];
    int64_t size = info_int("img.sizes.2");
    *half = size / 2;
    char *buf = malloc((size_t)*half);
    int fd = open(info_str("big_path"), O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, buf, (size_t)*half), (ssize_t)*half);
    close(fd);
    if (garbage)
        memset(buf + 1000, 0x55, 1000);
    snprintf(part, sizeof(part), "%s/tmp", t->blobs);
    mkdir(part, 0700);
    snprintf(part, sizeof(part), "%s/tmp/%s.part", t->blobs, info_str("img.layers.2") + 7);
    write_file(part, buf, (size_t)*half);
    free(buf);
}

static int proxy_log_has(const char *needle)
{
    FILE *f = fopen(info_str("proxy_log"), "r");
    char line[1024];
    int found = 0;
    while (f && fgets(line, sizeof(line), f))
        found |= strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return found;
}

static void write_auth(struct t *t, const char *host, const char *userpass)
{
    char *b64 = util_base64_encode(userpass, strlen(userpass));
    char json[512];
    snprintf(json, sizeof(json), "{\"auths\":{\"%s\":{\"auth\":\"%s\"}}}", host, b64);
    free(b64);
    write_file(t->auth, json, strlen(json));
}

static void test_token_and_resume(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512], needle[256];
    const char *insecure[] = {W.proxy};
    struct registry_options o = {.insecure = insecure, .n_insecure = 1, .timeout_s = 10};
    snprintf(ref, sizeof(ref), "%s/test/img:v1", W.proxy);
    /* Anonymous: the token service refuses. */
    assert_int_equal(pull_with(t, &o, ref, &pi, msg, sizeof(msg)), -EACCES);
    assert_non_null(strstr(msg, "anonymous"));
    /* Wrong password. */
    write_auth(t, W.proxy, "alice:wrong");
    o.auth_file = t->auth;
    assert_int_equal(pull_with(t, &o, ref, &pi, msg, sizeof(msg)), -EACCES);
    assert_null(strstr(msg, "wrong"));
    /* Right password, and half of the big layer already here. */
    write_auth(t, W.proxy, "alice:s3cret");
    int64_t half;
    seed_half(t, 0, &half);
    assert_int_equal(pull_with(t, &o, ref, &pi, msg, sizeof(msg)), 0);
    unlink(t->auth);
    check_img(t, &pi);
    pulled_image_free(&pi);
    assert_true(proxy_log_has(
        "TOKEN alice /token?service=warren-test&scope=repository%3Atest%2Fimg%3Apull"));
    /* The blobs came through a redirect to another host name, without the Authorization. */
    snprintf(needle, sizeof(needle),
             "GET /redirected/v2/test/img/blobs/%s range=bytes=%lld- status=206 bytes=%lld auth=no",
             info_str("img.layers.2"), (long long)half,
             (long long)(info_int("img.sizes.2") - half));
    if (!proxy_log_has(needle))
        fail_msg("no ranged request in the proxy log: %s", needle);
    assert_false(proxy_log_has("auth=yes"));
    assert_true(proxy_log_has(" 307"));
}

/* A partial file whose bytes are wrong: the resumed result does not match, the pull starts the
 * layer over once and succeeds. */
static void test_resume_bad_prefix(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512];
    int64_t half;
    seed_half(t, 1, &half);
    snprintf(ref, sizeof(ref), "%s/test/img:v1", W.plain);
    assert_int_equal(pull_plain(t, ref, &pi, msg, sizeof(msg)), 0);
    check_img(t, &pi);
    pulled_image_free(&pi);
}

static void test_mirrors(void **state)
{
    struct t *t = *state;
    struct pulled_image pi;
    char ref[128], msg[512], m[192];
    const char *insecure[] = {W.plain};
    const char *mirrors[1] = {m};
    struct registry_options o = {
        .insecure = insecure, .n_insecure = 1, .mirrors = mirrors, .n_mirrors = 1, .timeout_s = 5};
    /* The mirror answers for a registry that is down. */
    snprintf(m, sizeof(m), "%s=http://%s/", W.dead, W.plain);
    snprintf(ref, sizeof(ref), "%s/test/img:v1", W.dead);
    assert_int_equal(pull_with(t, &o, ref, &pi, msg, sizeof(msg)), 0);
    check_img(t, &pi);
    pulled_image_free(&pi);
    /* A mirror that is down: the registry itself. */
    util_remove_tree(t->blobs);
    mkdir(t->blobs, 0700);
    snprintf(m, sizeof(m), "%s=http://%s", W.plain, W.dead);
    snprintf(ref, sizeof(ref), "%s/test/img:v1", W.plain);
    assert_int_equal(pull_with(t, &o, ref, &pi, msg, sizeof(msg)), 0);
    pulled_image_free(&pi);
    /* A docker.io short name through a mirror: library/ included in the path. */
    util_remove_tree(t->blobs);
    mkdir(t->blobs, 0700);
    snprintf(m, sizeof(m), "docker.io=http://%s", W.plain);
    assert_int_equal(pull_with(t, &o, "img:v1", &pi, msg, sizeof(msg)), 0);
    check_img(t, &pi);
    pulled_image_free(&pi);
    /* A malformed mirror is refused up front. */
    struct registry_client *rc;
    snprintf(m, sizeof(m), "docker.io");
    assert_int_equal(registry_client_new(&o, &rc, msg, sizeof(msg)), -EINVAL);
}

struct racer {
    struct t *t;
    struct registry_client *rc;
    struct image_ref ref;
    struct pulled_image pi;
    char msg[512];
    int r;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    r->r = registry_pull(r->rc, &r->ref, r->t->blobs, &r->pi, NULL, NULL, r->msg, sizeof(r->msg));
    return NULL;
}

static void test_concurrent(void **state)
{
    struct t *t = *state;
    const char *insecure[] = {W.plain};
    struct registry_options o = {.insecure = insecure, .n_insecure = 1, .timeout_s = 10};
    struct registry_client *rc;
    struct racer rs[3];
    pthread_t th[3];
    char ref[128], msg[256];
    assert_int_equal(registry_client_new(&o, &rc, msg, sizeof(msg)), 0);
    snprintf(ref, sizeof(ref), "%s/test/img:v1", W.plain);
    for (int i = 0; i < 3; i++) {
        memset(&rs[i], 0, sizeof(rs[i]));
        rs[i].t = t;
        rs[i].rc = rc;
        assert_int_equal(image_ref_parse(ref, &rs[i].ref, msg, sizeof(msg)), 0);
        assert_int_equal(pthread_create(&th[i], NULL, race, &rs[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        if (rs[i].r != 0)
            fail_msg("pull %d: %s", i, rs[i].msg);
        assert_int_equal(rs[i].pi.n_layers, 3);
        pulled_image_free(&rs[i].pi);
    }
    registry_client_free(rc);
    for (int i = 0; i < 3; i++)
        assert_blob(t, info_str(i == 0   ? "img.layers.0"
                                : i == 1 ? "img.layers.1"
                                         : "img.layers.2"));
    assert_int_equal(tmp_entries(t), 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pull_plain, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_pull_by_digest, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_not_found, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_down, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_https_only, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_tls, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_multi_platform, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_corrupt, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_token_and_resume, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_resume_bad_prefix, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_mirrors, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, t_setup, t_teardown),
    };
    return cmocka_run_group_tests(tests, world_up, world_down);
}
