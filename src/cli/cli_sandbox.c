/*
 * cli_sandbox — `warren create`, `warren ps`, `warren rm` and `warren info`.
 */
#include "cli/cli_internal.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

enum { OPT_JSON = 256, OPT_NAME, OPT_STATE, OPT_IMAGE, OPT_TEMPLATE };

int cli_cmd_create(int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, OPT_NAME},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"template", required_argument, NULL, OPT_TEMPLATE},
        {"env", required_argument, NULL, 'e'},
        {"label", required_argument, NULL, 'l'},
        {"volume", required_argument, NULL, 'v'},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    json_t *body = json_object(), *env = json_object(), *labels = json_object(), *sb = NULL;
    bool json = false;
    char prog[64];
    char **av = NULL;
    int ret = -1, opt;
    struct client c;

    if (!body || !env || !labels || !(av = cli_getopt_argv(argc, argv, prog, sizeof(prog)))) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    while (ret < 0 && (opt = getopt_long(argc, av, "+e:l:v:h", opts, NULL)) != -1) {
        switch (opt) {
        case OPT_NAME: {
            json_t *s = json_string(optarg);
            if (!s)
                ret = cli_usage_error("create", "--name: not valid UTF-8");
            else
                json_object_set_new(body, "name", s);
            break;
        }
        case OPT_IMAGE:
        case OPT_TEMPLATE: {
            json_t *s = json_string(optarg);
            if (!s)
                ret = cli_usage_error("create", "--%s: not valid UTF-8",
                                      opt == OPT_IMAGE ? "image" : "template");
            else
                json_object_set_new(body, opt == OPT_IMAGE ? "image" : "template", s);
            break;
        }
        case 'e':
            if (cli_kv_add(env, "create", "--env", optarg, true) < 0)
                ret = CLI_EXIT_USAGE;
            break;
        case 'l':
            if (cli_kv_add(labels, "create", "--label", optarg, false) < 0)
                ret = CLI_EXIT_USAGE;
            break;
        case 'v':
            if (cli_volume_arg(body, "create", optarg) < 0)
                ret = CLI_EXIT_USAGE;
            break;
        case OPT_JSON:
            json = true;
            break;
        default:
            ret = cli_common_opt("create", opt);
            break;
        }
    }
    if (ret >= 0)
        goto out;
    if (optind < argc) {
        ret = cli_usage_error("create", "unexpected argument '%s'", av[optind]);
        goto out;
    }
    if (json_object_size(env) > 0)
        json_object_set(body, "env", env);
    if (json_object_size(labels) > 0)
        json_object_set(body, "labels", labels);

    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    if (cli_api_call(&c, "POST", "/v1/sandboxes", body, &sb, NULL) != CLI_OK) {
        ret = CLI_EXIT_FAIL;
    } else if (json) {
        ret = cli_print_json(sb) < 0 ? CLI_EXIT_FAIL : 0;
    } else {
        const char *id = json_string_value(json_object_get(sb, "id"));
        if (!id) {
            fprintf(stderr, "warren: the daemon's answer has no sandbox id\n");
            ret = CLI_EXIT_FAIL;
        } else {
            printf("%s\n", id);
            ret = fflush(stdout) == 0 ? 0 : CLI_EXIT_FAIL;
        }
    }
    client_close(&c);
out:
    free(av);
    json_decref(body);
    json_decref(env);
    json_decref(labels);
    json_decref(sb);
    return ret;
}

/* A string field of a sandbox for the table ("-" when absent). */
static const char *cli_sandbox_field(json_t *sb, const char *key)
{
    const char *s = json_string_value(json_object_get(sb, key));
    return s && *s ? s : "-";
}

static void cli_sandbox_print_table(json_t *list)
{
    static const char *const cols[] = {"id", "name", "state", "created_at"};
    static const char *const heads[] = {"ID", "NAME", "STATE", "CREATED"};
    enum { NCOLS = 4 };
    int width[NCOLS];
    size_t i;
    json_t *sb;

    for (int k = 0; k < NCOLS; k++)
        width[k] = (int)strlen(heads[k]);
    json_array_foreach(list, i, sb)
    {
        for (int k = 0; k < NCOLS; k++) {
            int w = (int)strlen(cli_sandbox_field(sb, cols[k]));
            if (w > width[k])
                width[k] = w;
        }
    }
    for (int k = 0; k < NCOLS - 1; k++)
        printf("%-*s  ", width[k], heads[k]);
    printf("%s\n", heads[NCOLS - 1]);
    json_array_foreach(list, i, sb)
    {
        for (int k = 0; k < NCOLS - 1; k++)
            printf("%-*s  ", width[k], cli_sandbox_field(sb, cols[k]));
        printf("%s\n", cli_sandbox_field(sb, cols[NCOLS - 1]));
    }
}

int cli_cmd_ps(int argc, char **argv)
{
    static const struct option opts[] = {
        {"label", required_argument, NULL, 'l'}, {"state", required_argument, NULL, OPT_STATE},
        {"quiet", no_argument, NULL, 'q'},       {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    buf_t path = BUF_INIT;
    bool json = false, quiet = false;
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    int ret = -1, opt;

    if (!av || buf_append_str(&path, "/v1/sandboxes") < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    char sep = '?';
    while (ret < 0 && (opt = getopt_long(argc, av, "+l:qh", opts, NULL)) != -1) {
        switch (opt) {
        case 'l':
        case OPT_STATE:
            if (opt == 'l' && (!strchr(optarg, '=') || optarg[0] == '=')) {
                ret = cli_usage_error("ps", "--label '%s': expected KEY=VALUE", optarg);
                break;
            }
            if (buf_appendf(&path, "%c%s=", sep, opt == 'l' ? "label" : "state") < 0 ||
                client_append_escaped(&path, optarg, 1) < 0)
                ret = CLI_EXIT_FAIL;
            sep = '&';
            break;
        case 'q':
            quiet = true;
            break;
        case OPT_JSON:
            json = true;
            break;
        default:
            ret = cli_common_opt("ps", opt);
            break;
        }
    }
    if (ret >= 0)
        goto out;
    if (optind < argc) {
        ret = cli_usage_error("ps", "unexpected argument '%s'", av[optind]);
        goto out;
    }
    ret = cli_print_list(path.data, "sandboxes", "id", json, quiet, cli_sandbox_print_table);
out:
    free(av);
    buf_free(&path);
    return ret;
}

/* `method` /v1/sandboxes/<each of argv[first..]>`suffix` with `body` (may be NULL), printing
 * each sandbox done. Exit status 1 if any failed. */
static int cli_sandbox_each(int argc, char **argv, int first, const char *method,
                            const char *suffix, json_t *body)
{
    struct client c;
    int ret = 0;
    if (cli_client_open(&c) < 0)
        return CLI_EXIT_FAIL;
    for (int i = first; i < argc; i++) {
        buf_t path = BUF_INIT;
        enum cli_result r;
        if (cli_path_sandbox(&path, argv[i]) < 0 || buf_append_str(&path, suffix) < 0) {
            buf_free(&path);
            fprintf(stderr, "warren: out of memory\n");
            ret = CLI_EXIT_FAIL;
            break;
        }
        r = cli_api_call(&c, method, path.data, body, NULL, argv[i]);
        buf_free(&path);
        if (r == CLI_OK) {
            printf("%s\n", argv[i]);
            fflush(stdout);
        } else {
            ret = CLI_EXIT_FAIL;
            if (r == CLI_EUNREACHABLE)
                break; /* the next ones would fail the same way */
        }
    }
    client_close(&c);
    return ret;
}

/* rm, kill and start: SANDBOX... and no option but --help. */
static int cli_sandbox_simple(const char *cmd, int argc, char **argv, const char *method,
                              const char *suffix)
{
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    int ret = -1, opt;

    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+h", opts, NULL)) != -1)
        ret = cli_common_opt(cmd, opt);
    if (ret < 0 && optind >= argc)
        ret = cli_usage_error(cmd, "missing the sandbox id or name");
    if (ret < 0)
        ret = cli_sandbox_each(argc, argv, optind, method, suffix, NULL);
    free(av);
    return ret;
}

int cli_cmd_rm(int argc, char **argv)
{
    return cli_sandbox_simple("rm", argc, argv, "DELETE", "");
}

int cli_cmd_kill(int argc, char **argv)
{
    return cli_sandbox_simple("kill", argc, argv, "POST", "/kill");
}

int cli_sandbox_start(int argc, char **argv)
{
    return cli_sandbox_simple("start", argc, argv, "POST", "/start");
}

int cli_cmd_stop(int argc, char **argv)
{
    static const struct option opts[] = {
        {"grace", required_argument, NULL, 'g'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    json_t *body = json_object();
    int ret = -1, opt;
    char *end;

    if (!av || !body) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    while (ret < 0 && (opt = getopt_long(argc, av, "+hg:", opts, NULL)) != -1) {
        if (opt != 'g') {
            ret = cli_common_opt("stop", opt);
            continue;
        }
        double grace = strtod(optarg, &end);
        if (end == optarg || *end || !(grace >= 0 && grace <= 3600))
            ret = cli_usage_error("stop", "--grace takes seconds from 0 to 3600, not '%s'", optarg);
        else
            json_object_set_new(body, "grace_s", json_real(grace));
    }
    if (ret < 0 && optind >= argc)
        ret = cli_usage_error("stop", "missing the sandbox id or name");
    if (ret < 0)
        ret = cli_sandbox_each(argc, argv, optind, "POST", "/stop", body);
out:
    json_decref(body);
    free(av);
    return ret;
}

/* Print `j` as "prefix.key: value" lines. */
static void cli_sandbox_print_flat(const char *prefix, json_t *j)
{
    if (json_is_object(j)) {
        const char *key;
        json_t *v;
        json_object_foreach(j, key, v)
        {
            char *sub = NULL;
            int n = *prefix ? asprintf(&sub, "%s.%s", prefix, key) : asprintf(&sub, "%s", key);
            if (n >= 0)
                cli_sandbox_print_flat(sub, v);
            if (n >= 0)
                free(sub);
        }
        return;
    }
    if (json_is_string(j)) {
        printf("%s: %s\n", prefix, json_string_value(j));
        return;
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    printf("%s: %s\n", prefix, s ? s : "?");
    free(s);
}

int cli_cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    bool json = false;
    int ret = -1, opt;
    json_t *info = NULL;
    struct client c;

    if (!av)
        return CLI_EXIT_FAIL;
    while (ret < 0 && (opt = getopt_long(argc, av, "+h", opts, NULL)) != -1) {
        if (opt == OPT_JSON)
            json = true;
        else
            ret = cli_common_opt("info", opt);
    }
    if (ret >= 0)
        goto out;
    if (optind < argc) {
        ret = cli_usage_error("info", "unexpected argument '%s'", av[optind]);
        goto out;
    }
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    if (cli_api_call(&c, "GET", "/v1/info", NULL, &info, NULL) != CLI_OK) {
        ret = CLI_EXIT_FAIL;
    } else if (json) {
        ret = cli_print_json(info) < 0 ? CLI_EXIT_FAIL : 0;
    } else {
        printf("url: %s\n", c.url);
        cli_sandbox_print_flat("", info);
        ret = fflush(stdout) == 0 ? 0 : CLI_EXIT_FAIL;
    }
    client_close(&c);
out:
    free(av);
    json_decref(info);
    return ret;
}
