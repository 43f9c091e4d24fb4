/*
 * fuzz_json — JSON request decoding, as far as it runs without a daemon.
 *
 * Input: a request body. It goes through json_parse_object() (core/json.c, as every handler
 * does; an array, as a batch is, item by item), then through:
 *   - api_parse_run() (api/commands.c): the command spec of exec, detached commands, batch items
 *     and the first exec/ws message, each with its own extra keys, under the daemon's default
 *     limits (server_config_defaults()) for a sandbox with no env, secrets or network;
 *   - the validators the sandbox spec uses: json_check_keys() and json_opt_*(), the network
 *     policy (egress_policy_parse()), environment names (api_valid_env()), and signals
 *     (api_parse_signal(), as kill does);
 *   - json_escape_append(), the escaper of the streaming path, on every string met.
 * The sandbox spec itself is decoded inside api_sandbox_create() and the atropos requests inside
 * their handlers, which need a daemon; once those are functions of their own they belong here.
 *
 * Oracle, besides the sanitizers: a command spec that api_parse_run() accepts has a non-empty
 * argv[0], an absolute cwd, a timeout and an output limit within the limits, an environment of
 * NAME=value strings and stdin of the announced length; a parsed policy prints and parses back
 * to the same policy; base64 stdin decodes back to what it encoded; an escaped string parses back
 * to the string, with the length json_escape_len() announced; a valid signal is 1-64.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/buf.h"
#include "core/json.h"
#include "core/log.h"
#include "core/util.h"
#include "harness.h"
#include "sandbox/egress.h"
#include "sandbox/template.h"
#include "server.h"
#include "session/sandbox.h"

#define ERRLEN 256

static struct server_config cfg;
static struct api_ctx ctx;
static struct sandbox sandbox;
/* A "user" is resolved in the host template's /etc copies: a scratch one with two users. */
static struct registry reg;
static struct host_template tmpl;

static void check_escape(const char *s, size_t n)
{
    buf_t b = BUF_INIT;
    json_error_t je;
    if (buf_append(&b, "\"", 1) < 0 || json_escape_append(&b, s, n) < 0 ||
        buf_append(&b, "\"", 1) < 0)
        fz_fail("out of memory");
    if (b.len != json_escape_len(s, n) + 2)
        fz_fail("json_escape_len() says %zu, json_escape_append() wrote %zu", json_escape_len(s, n),
                b.len - 2);
    json_t *back = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!back || !json_is_string(back) || json_string_length(back) != n ||
        memcmp(json_string_value(back), s, n) != 0)
        fz_fail("escaped string does not parse back: %s (%s)", b.data, je.text);
    json_decref(back);
    buf_free(&b);
}

/* Every string in `v`, keys included. */
static void escape_all(json_t *v)
{
    const char *k;
    json_t *x;
    size_t i;
    if (json_is_string(v))
        check_escape(json_string_value(v), json_string_length(v));
    json_object_foreach(v, k, x)
    {
        check_escape(k, strlen(k));
        escape_all(x);
    }
    json_array_foreach(v, i, x)
    {
        escape_all(x);
    }
}

static void check_network(json_t *net)
{
    char err[ERRLEN];
    struct egress_policy *p = NULL, *p2 = NULL;
    if (egress_policy_parse(net, &p, err, sizeof(err)) < 0)
        return;
    json_t *j = egress_policy_to_json(p);
    if (!j || egress_policy_parse(j, &p2, err, sizeof(err)) < 0)
        fz_fail("a policy does not parse back: %s", err);
    json_t *j2 = egress_policy_to_json(p2);
    if (!json_equal(j, j2) || egress_policy_mode(p) != egress_policy_mode(p2))
        fz_fail("a policy changes when printed and parsed back");
    json_decref(j);
    json_decref(j2);
    egress_policy_free(p);
    egress_policy_free(p2);
}

static void check_stdin_b64(const char *s)
{
    unsigned char *raw = NULL, *again = NULL;
    size_t len = 0, len2 = 0;
    if (util_base64_decode(s, strlen(s), &raw, &len) < 0)
        return;
    char *enc = util_base64_encode(raw, len);
    if (!enc || util_base64_decode(enc, strlen(enc), &again, &len2) < 0 || len2 != len ||
        memcmp(raw, again, len) != 0)
        fz_fail("base64 of %zu bytes does not decode back", len);
    free(enc);
    free(raw);
    free(again);
}

/* api_parse_run() with the extra keys of one of its callers. */
static void check_run(json_t *o, const char *const *extra)
{
    char err[ERRLEN];
    struct api_run run;
    int status = api_parse_run(&ctx, &sandbox, o, extra, &run, err, sizeof(err));
    if (status == 0) {
        const struct session_limits *l = &cfg.limits;
        if (!run.argv || !run.argv[0] || !run.argv[0][0] || !run.cwd || run.cwd[0] != '/')
            fz_fail("accepted a command without argv[0] or an absolute cwd");
        if (!(run.timeout_s > 0) || run.timeout_s > l->exec_timeout_max_s ||
            run.max_output > l->max_output_max)
            fz_fail("accepted timeout %g, output limit %zu", run.timeout_s, run.max_output);
        for (size_t i = 0; run.env && run.env[i]; i++)
            if (!strchr(run.env[i] + 1, '=') || run.env[i][0] == '=')
                fz_fail("environment entry '%s'", run.env[i]);
        if (run.stdin_text && run.stdin_len != strlen(run.stdin_text))
            fz_fail("stdin of %zu bytes announced as %zu", strlen(run.stdin_text), run.stdin_len);
    } else if (status != 400 && status != 422) {
        fz_fail("api_parse_run() answered %d: %s", status, err);
    }
    api_run_free(&run);
}

/* The field validators of a spec, on one object. */
static void check_spec(json_t *o, int batch_item)
{
    static const char *const batch_extra[] = {"sandbox", NULL};
    static const char *const command_extra[] = {"buffer_bytes", NULL};
    static const char *const stream_extra[] = {"type",     "binary",       "kill_on_disconnect",
                                               "lossless", "buffer_bytes", NULL};
    static const char *const keys[] = {
        "name",   "template", "env", "labels", "resources", "network",   "secrets",
        "argv",   "shell",    "cwd", "stdin",  "stdin_b64", "timeout_s", "max_output_bytes",
        "signal", "sandbox",  NULL};
    static const char *const res_keys[] = {"cpus", "memory_mib", "pids", "disk_mib", NULL};
    char err[ERRLEN];
    const char *s = NULL;
    json_t *map = NULL, *res = NULL;
    double d;
    long long ll;
    int sig = 15;
    json_check_keys(o, keys, NULL, err, sizeof(err));
    json_opt_string(o, "name", "name", &s, err, sizeof(err));
    json_opt_string(o, "shell", "shell", &s, err, sizeof(err));
    json_opt_string(o, "cwd", "cwd", &s, err, sizeof(err));
    if (json_opt_string_map(o, "env", "env", &map, err, sizeof(err)) == 0 && map)
        api_valid_env(map, err, sizeof(err));
    json_opt_string_map(o, "labels", "labels", &map, err, sizeof(err));
    if (json_opt_object(o, "resources", "resources", &res, err, sizeof(err)) == 0 && res) {
        json_check_keys(res, res_keys, "resources", err, sizeof(err));
        json_opt_number(res, "cpus", "resources.cpus", &d, err, sizeof(err));
        json_opt_int(res, "memory_mib", "resources.memory_mib", &ll, err, sizeof(err));
    }
    json_opt_number(o, "timeout_s", "timeout_s", &d, err, sizeof(err));
    json_opt_int(o, "max_output_bytes", "max_output_bytes", &ll, err, sizeof(err));
    if (json_object_get(o, "network"))
        check_network(json_object_get(o, "network"));
    if (api_parse_signal(json_object_get(o, "signal"), &sig, err, sizeof(err)) == 0 &&
        (sig < 1 || sig > 64))
        fz_fail("api_parse_signal() gave signal %d", sig);
    s = NULL;
    if (json_opt_string(o, "stdin_b64", "stdin_b64", &s, err, sizeof(err)) == 0 && s)
        check_stdin_b64(s);
    if (batch_item) {
        check_run(o, batch_extra);
    } else {
        check_run(o, NULL);
        check_run(o, command_extra);
        check_run(o, stream_extra);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_set_level(LOG_ERROR);
    server_config_defaults(&cfg);
    ctx.limits = &cfg.limits;
    snprintf(sandbox.name, sizeof(sandbox.name), "sb-fuzz");
    fz_scratch_dir("fuzz-json", tmpl.dir, sizeof(tmpl.dir));
    fz_put_dir(tmpl.dir, "etc", 0755, 0);
    fz_put_file(tmpl.dir, "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0644, 0);
    fz_put_file(tmpl.dir, "etc/group", "root:x:0:\napp:x:1000:\n", 0644, 0);
    reg.tmpl = &tmpl;
    sandbox.reg = &reg;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ERRLEN];
    json_error_t je;
    json_t *o = json_parse_object((const char *)data, size, err, sizeof(err));
    if (o) {
        check_spec(o, 0);
        escape_all(o);
        json_decref(o);
        return 0;
    }
    /* A batch: an array of specs. */
    json_t *a = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    size_t i;
    json_t *item;
    json_array_foreach(a, i, item)
    {
        if (json_is_object(item))
            check_spec(item, 1);
    }
    escape_all(a);
    json_decref(a);
    return 0;
}
