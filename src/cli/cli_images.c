/*
 * cli_images — `warren pull`, `warren images`, `warren rmi`, and the templates made of sandboxes:
 * `warren snapshot` and `warren fork` (docs/API.md, "Images and templates"). import and export
 * are in cli_archive.c.
 */
#include "cli/cli_internal.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { OPT_JSON = 256, OPT_NAME };

int cli_path_template(buf_t *b, const char *name)
{
    return buf_append_str(b, "/v1/templates/") < 0 || client_append_escaped(b, name, 0) < 0
               ? -ENOMEM
               : 0;
}

int cli_print_template(json_t *tpl, bool json)
{
    if (json)
        return cli_print_json(tpl) < 0 ? CLI_EXIT_FAIL : 0;
    printf("%s %s\n", json_string_value(json_object_get(tpl, "name")) ?: "",
           json_string_value(json_object_get(tpl, "digest")) ?: "");
    return fflush(stdout) == 0 ? 0 : CLI_EXIT_FAIL;
}

/* Waits until template `name` is no longer pulling, drawing the pull's progress. Returns the
 * template (new reference) or NULL after reporting the error. */
static json_t *wait_pulled(struct client *c, const char *name, bool quiet)
{
    struct cli_progress prog = {.enabled = !quiet && isatty(2), .label = name};
    buf_t path = BUF_INIT;
    json_t *tpl = NULL;
    char unpacking[300];
    snprintf(unpacking, sizeof(unpacking), "%s (unpacking)", name);
    if (cli_path_template(&path, name) < 0) {
        fprintf(stderr, "warren: out of memory\n");
        return NULL;
    }
    cli_progress_start(&prog, 0);
    for (;;) {
        json_decref(tpl);
        tpl = NULL;
        if (cli_api_call(c, "GET", path.data, NULL, &tpl, name) != CLI_OK)
            break;
        const char *state = json_string_value(json_object_get(tpl, "state"));
        json_t *progress = json_object_get(tpl, "progress");
        if (state && !strcmp(state, "pulling")) {
            uint64_t done = (uint64_t)json_integer_value(json_object_get(progress, "bytes_done"));
            uint64_t total = (uint64_t)json_integer_value(json_object_get(progress, "bytes_total"));
            /* The layers are unpacked once all are downloaded: a bar standing at 100% for the
             * seconds a big image takes to unpack says so. */
            if (total && done >= total)
                prog.label = unpacking;
            cli_progress_set(&prog, done, total);
            nanosleep(&(struct timespec){0, 200 * 1000 * 1000}, NULL);
            continue;
        }
        if (state && !strcmp(state, "ready")) {
            int64_t size = json_integer_value(json_object_get(tpl, "size_bytes"));
            cli_progress_set(&prog, (uint64_t)size, (uint64_t)size);
            cli_progress_finish(&prog, true);
            buf_free(&path);
            return tpl;
        }
        cli_progress_finish(&prog, false);
        fprintf(stderr, "warren: pull %s: %s\n", name,
                json_string_value(json_object_get(tpl, "error")) ?: "failed");
        break;
    }
    cli_progress_finish(&prog, false);
    json_decref(tpl);
    buf_free(&path);
    return NULL;
}

int cli_cmd_pull(int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, OPT_NAME},
        {"quiet", no_argument, NULL, 'q'},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    json_t *body = json_object(), *tpl = NULL;
    bool quiet = false, json = false;
    int ret = -1, opt;
    struct client c;

    if (!av || !body) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    while (ret < 0 && (opt = getopt_long(argc, av, "+qh", opts, NULL)) != -1) {
        switch (opt) {
        case OPT_NAME:
            json_object_set_new(body, "name", json_string(optarg));
            break;
        case 'q':
            quiet = true;
            break;
        case OPT_JSON:
            json = true;
            break;
        default:
            ret = cli_common_opt("pull", opt);
            break;
        }
    }
    if (ret >= 0)
        goto out;
    if (optind + 1 != argc) {
        ret = cli_usage_error("pull", optind >= argc ? "missing the image reference"
                                                     : "one image at a time");
        goto out;
    }
    json_object_set_new(body, "image", json_string(av[optind]));
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    ret = CLI_EXIT_FAIL;
    if (cli_api_call(&c, "POST", "/v1/templates", body, &tpl, av[optind]) == CLI_OK) {
        const char *name = json_string_value(json_object_get(tpl, "name"));
        json_t *done = name ? wait_pulled(&c, name, quiet || json) : NULL;
        if (done)
            ret = cli_print_template(done, json);
        json_decref(done);
    }
    client_close(&c);
out:
    free(av);
    json_decref(body);
    json_decref(tpl);
    return ret;
}

static const char *field(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s && *s ? s : "-";
}

static void images_print_table(json_t *list)
{
    enum { NCOLS = 5 };
    static const char *const heads[NCOLS] = {"NAME", "IMAGE", "STATE", "SIZE", "DIGEST"};
    size_t n = json_array_size(list);
    char(*cells)[NCOLS][160] = calloc(n ? n : 1, sizeof(*cells));
    int width[NCOLS];
    if (!cells)
        return;
    for (int k = 0; k < NCOLS; k++)
        width[k] = (int)strlen(heads[k]);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(list, i);
        const char *digest = field(t, "digest");
        snprintf(cells[i][0], 160, "%s", field(t, "name"));
        snprintf(cells[i][1], 160, "%s", field(t, "image"));
        snprintf(cells[i][2], 160, "%s", field(t, "state"));
        cli_human_bytes(cells[i][3], 160,
                        (double)json_integer_value(json_object_get(t, "size_bytes")));
        /* sha256: and the first 12 hex digits, as docker shows image ids */
        snprintf(cells[i][4], 160, "%.19s", digest);
        for (int k = 0; k < NCOLS; k++)
            if ((int)strlen(cells[i][k]) > width[k])
                width[k] = (int)strlen(cells[i][k]);
    }
    for (int k = 0; k < NCOLS; k++)
        printf(k + 1 < NCOLS ? "%-*s  " : "%-*s\n", k + 1 < NCOLS ? width[k] : 0, heads[k]);
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < NCOLS; k++)
            printf(k + 1 < NCOLS ? "%-*s  " : "%-*s\n", k + 1 < NCOLS ? width[k] : 0, cells[i][k]);
    free(cells);
}

int cli_cmd_images(int argc, char **argv)
{
    static const struct option opts[] = {
        {"quiet", no_argument, NULL, 'q'},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    bool json = false, quiet = false;
    int ret = -1, opt;
    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+qh", opts, NULL)) != -1) {
        if (opt == 'q')
            quiet = true;
        else if (opt == OPT_JSON)
            json = true;
        else
            ret = cli_common_opt("images", opt);
    }
    if (ret < 0 && optind < argc)
        ret = cli_usage_error("images", "unexpected argument '%s'", av[optind]);
    if (ret < 0)
        ret = cli_print_list("/v1/templates", "templates", "name", json, quiet, images_print_table);
    free(av);
    return ret;
}

int cli_cmd_rmi(int argc, char **argv)
{
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    int ret = -1, opt;
    struct client c;
    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+h", opts, NULL)) != -1)
        ret = cli_common_opt("rmi", opt);
    if (ret < 0 && optind >= argc)
        ret = cli_usage_error("rmi", "missing the template name");
    if (ret >= 0 || cli_client_open(&c) < 0) {
        free(av);
        return ret >= 0 ? ret : CLI_EXIT_FAIL;
    }
    ret = 0;
    for (int i = optind; i < argc; i++) {
        buf_t path = BUF_INIT;
        enum cli_result r = cli_path_template(&path, av[i]) < 0
                                ? CLI_ETRANSPORT
                                : cli_api_call(&c, "DELETE", path.data, NULL, NULL, av[i]);
        buf_free(&path);
        if (r == CLI_OK) {
            printf("%s\n", av[i]);
            fflush(stdout);
        } else {
            ret = CLI_EXIT_FAIL;
            if (r == CLI_EUNREACHABLE)
                break;
        }
    }
    client_close(&c);
    free(av);
    return ret;
}

/* `snapshot` and `fork`: POST /v1/sandboxes/SANDBOX/<what> with `body`; *out receives the
 * answer. Returns 0 or CLI_EXIT_FAIL (the error reported). */
static int sandbox_post(const char *sandbox, const char *what, json_t *body, json_t **out)
{
    buf_t path = BUF_INIT;
    struct client c;
    int ret = CLI_EXIT_FAIL;
    if (cli_path_sandbox(&path, sandbox) < 0 || buf_appendf(&path, "/%s", what) < 0) {
        fprintf(stderr, "warren: out of memory\n");
        buf_free(&path);
        return ret;
    }
    if (cli_client_open(&c) == 0 &&
        cli_api_call(&c, "POST", path.data, body, out, sandbox) == CLI_OK)
        ret = 0;
    client_close(&c);
    buf_free(&path);
    return ret;
}

int cli_cmd_snapshot(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    json_t *body = NULL, *tpl = NULL;
    bool json = false;
    int ret = -1, opt;
    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+h", opts, NULL)) != -1) {
        if (opt == OPT_JSON)
            json = true;
        else
            ret = cli_common_opt("snapshot", opt);
    }
    if (ret < 0 && argc - optind != 2)
        ret = cli_usage_error("snapshot",
                              argc - optind < 2 ? "expected SANDBOX and NAME"
                                                : "unexpected argument '%s'",
                              av[argc - 1]);
    if (ret < 0 && !(body = json_pack("{s:s}", "name", av[optind + 1])))
        ret = cli_usage_error("snapshot", "NAME: not valid UTF-8");
    if (ret < 0 && (ret = sandbox_post(av[optind], "snapshot", body, &tpl)) == 0)
        ret = cli_print_template(tpl, json);
    json_decref(body);
    json_decref(tpl);
    free(av);
    return ret;
}

int cli_cmd_fork(int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, OPT_NAME},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    json_t *body = json_object(), *sb = NULL;
    bool json = false;
    int ret = -1, opt;
    if (!av || !body) {
        free(av);
        json_decref(body);
        return CLI_EXIT_FAIL;
    }
    while (ret < 0 && (opt = getopt_long(argc, av, "+h", opts, NULL)) != -1) {
        if (opt == OPT_JSON) {
            json = true;
        } else if (opt == OPT_NAME) {
            json_t *s = json_string(optarg);
            if (!s)
                ret = cli_usage_error("fork", "--name: not valid UTF-8");
            json_object_set_new(body, "name", s);
        } else {
            ret = cli_common_opt("fork", opt);
        }
    }
    if (ret < 0 && argc - optind != 1)
        ret = cli_usage_error(
            "fork", argc == optind ? "missing the sandbox id or name" : "unexpected argument '%s'",
            av[argc - 1]);
    if (ret < 0 && (ret = sandbox_post(av[optind], "fork", body, &sb)) == 0) {
        if (json) {
            ret = cli_print_json(sb) < 0 ? CLI_EXIT_FAIL : 0;
        } else {
            printf("%s\n", json_string_value(json_object_get(sb, "id")) ?: "");
            ret = fflush(stdout) == 0 ? 0 : CLI_EXIT_FAIL;
        }
    }
    json_decref(body);
    json_decref(sb);
    free(av);
    return ret;
}
