/*
 * cli_volumes — `warren volume create|ls|rm` and the `-v NAME:/path[:ro]` option of `create` and
 * `run`.
 */
#include "cli/cli_internal.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

int cli_volume_arg(json_t *body, const char *cmd, const char *arg)
{
    const char *colon = strchr(arg, ':');
    if (!colon || colon == arg) {
        cli_usage_error(cmd, "-v '%s': expected NAME:/PATH or NAME:/PATH:ro", arg);
        return -1;
    }
    char *path = strdup(colon + 1);
    if (!path) {
        fprintf(stderr, "warren: out of memory\n");
        return -1;
    }
    int ro = 0;
    char *mode = strchr(path, ':');
    if (mode) {
        *mode++ = '\0';
        if (!strcmp(mode, "ro"))
            ro = 1;
        else if (strcmp(mode, "rw") != 0) {
            free(path);
            cli_usage_error(cmd, "-v '%s': the mode must be 'ro' or 'rw'", arg);
            return -1;
        }
    }
    if (path[0] != '/') {
        free(path);
        cli_usage_error(cmd, "-v '%s': the path must be absolute", arg);
        return -1;
    }
    json_t *list = json_object_get(body, "volumes");
    if (!list && json_object_set_new(body, "volumes", list = json_array()) < 0)
        list = NULL;
    json_t *v = json_pack("{s:s%, s:s, s:b}", "name", arg, (size_t)(colon - arg), "path", path,
                          "read_only", ro);
    free(path);
    if (!list || !v || json_array_append_new(list, v) < 0) {
        cli_usage_error(cmd, "-v '%s': not valid UTF-8", arg);
        return -1;
    }
    return 0;
}

static void cli_volume_print_table(json_t *list)
{
    size_t i, w = 4;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        size_t n = strlen(json_string_value(json_object_get(v, "name")) ?: "");
        if (n > w)
            w = n;
    }
    printf("%-*s  %8s  %10s  %8s  %s\n", (int)w, "NAME", "SIZE_MIB", "USED", "ATTACHED", "CREATED");
    json_array_foreach(list, i, v)
    {
        char used[32] = "-";
        json_t *u = json_object_get(v, "used_bytes");
        if (json_is_integer(u))
            cli_human_bytes(used, sizeof(used), (double)json_integer_value(u));
        printf("%-*s  %8lld  %10s  %8zu  %s\n", (int)w,
               json_string_value(json_object_get(v, "name")) ?: "-",
               (long long)json_integer_value(json_object_get(v, "size_mib")), used,
               json_array_size(json_object_get(v, "attached")),
               json_string_value(json_object_get(v, "created_at")) ?: "-");
    }
}

static int cli_volume_create(int argc, char **argv)
{
    static const struct option opts[] = {
        {"size", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    json_t *body = json_object(), *res = NULL;
    int ret = -1, opt, json = 0;
    struct client c;
    if (!av || !body) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    while (ret < 0 && (opt = getopt_long(argc, av, "s:h", opts, NULL)) != -1) {
        char *end;
        switch (opt) {
        case 's': {
            long long mib = strtoll(optarg, &end, 10);
            if (end == optarg || *end || mib < 1)
                ret = cli_usage_error("volume", "--size '%s': expected a size in MiB", optarg);
            else
                json_object_set_new(body, "size_mib", json_integer(mib));
            break;
        }
        case 'j':
            json = 1;
            break;
        case 'h':
            cli_print_help("volume", stdout);
            ret = 0;
            break;
        default:
            fprintf(stderr, "Try 'warren volume --help'.\n");
            ret = CLI_EXIT_USAGE;
        }
    }
    if (ret >= 0)
        goto out;
    if (optind + 1 != argc) {
        ret = cli_usage_error("volume", "volume create takes one NAME");
        goto out;
    }
    json_object_set_new(body, "name", json_string(av[optind]));
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    if (cli_api_call(&c, "POST", "/v1/volumes", body, &res, NULL) != CLI_OK)
        ret = CLI_EXIT_FAIL;
    else if (json)
        ret = cli_print_json(res) < 0 ? CLI_EXIT_FAIL : 0;
    else {
        printf("%s\n", json_string_value(json_object_get(res, "name")) ?: av[optind]);
        ret = fflush(stdout) == 0 ? 0 : CLI_EXIT_FAIL;
    }
    client_close(&c);
out:
    free(av);
    json_decref(body);
    json_decref(res);
    return ret;
}

static int cli_volume_rm(int argc, char **argv)
{
    struct client c;
    int ret = 0;
    if (argc < 2)
        return cli_usage_error("volume", "volume rm takes one or more NAMEs");
    if (cli_client_open(&c) < 0)
        return CLI_EXIT_FAIL;
    for (int i = 1; i < argc; i++) {
        buf_t path = BUF_INIT;
        if (buf_append_str(&path, "/v1/volumes/") < 0 ||
            client_append_escaped(&path, argv[i], 0) < 0) {
            fprintf(stderr, "warren: out of memory\n");
            ret = CLI_EXIT_FAIL;
        } else if (cli_api_call(&c, "DELETE", path.data, NULL, NULL, NULL) != CLI_OK) {
            ret = CLI_EXIT_FAIL;
        } else {
            printf("%s\n", argv[i]);
        }
        buf_free(&path);
    }
    client_close(&c);
    return fflush(stdout) == 0 ? ret : CLI_EXIT_FAIL;
}

int cli_cmd_volume(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        cli_print_help("volume", argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "create"))
        return cli_volume_create(argc - 1, argv + 1);
    if (!strcmp(sub, "rm"))
        return cli_volume_rm(argc - 1, argv + 1);
    if (!strcmp(sub, "ls")) {
        int json = argc == 3 && !strcmp(argv[2], "--json"),
            quiet = argc == 3 && !strcmp(argv[2], "-q");
        if (argc > 3 || (argc == 3 && !json && !quiet))
            return cli_usage_error("volume", "volume ls takes only --json or -q");
        return cli_print_list("/v1/volumes", "volumes", "name", json, quiet,
                              cli_volume_print_table);
    }
    return cli_usage_error("volume", "unknown volume command '%s' (create, ls, rm)", sub);
}
