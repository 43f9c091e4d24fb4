/*
 * cli_pool — `warren pool set|ls|rm`: warm pools (docs/API.md, "Warm pools").
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_internal.h"

enum { OPT_JSON = 256, OPT_TEMPLATE, OPT_IMAGE, OPT_SIZE, OPT_CPUS, OPT_MEMORY, OPT_NETWORK };

static void pools_print_table(json_t *list)
{
    printf("%-20s  %-28s  %5s  %5s  %8s  %7s  %6s\n", "NAME", "TEMPLATE", "SIZE", "READY",
           "STARTING", "CLAIMED", "MISSES");
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *p = json_array_get(list, i);
        const char *image = json_string_value(json_object_get(p, "image"));
        const char *tpl = json_string_value(json_object_get(p, "template"));
        printf("%-20s  %-28s  %5lld  %5lld  %8lld  %7lld  %6lld\n",
               json_string_value(json_object_get(p, "name")),
               image ? image
               : tpl ? tpl
                     : "",
               json_integer_value(json_object_get(p, "size")),
               json_integer_value(json_object_get(p, "ready")),
               json_integer_value(json_object_get(p, "starting")),
               json_integer_value(json_object_get(p, "claimed")),
               json_integer_value(json_object_get(p, "misses")));
    }
}

/* `pool set NAME --template T|--image I --size N [--cpus C] [--memory MIB] [--network MODE]` */
static int pool_set(int argc, char **av)
{
    static const struct option opts[] = {
        {"template", required_argument, NULL, OPT_TEMPLATE},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"size", required_argument, NULL, OPT_SIZE},
        {"cpus", required_argument, NULL, OPT_CPUS},
        {"memory", required_argument, NULL, OPT_MEMORY},
        {"network", required_argument, NULL, OPT_NETWORK},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    json_t *body = json_object(), *res = json_object(), *out = NULL;
    bool json = false, sized = false;
    int ret = -1, opt;
    char *end;
    struct client c;
    /* Options may follow NAME (GNU getopt permutes). */
    while (ret < 0 && (opt = getopt_long(argc, av, "h", opts, NULL)) != -1) {
        switch (opt) {
        case OPT_TEMPLATE:
        case OPT_IMAGE:
            json_object_set_new(body, opt == OPT_IMAGE ? "image" : "template", json_string(optarg));
            break;
        case OPT_SIZE: {
            long long v = strtoll(optarg, &end, 10);
            if (!*optarg || *end || v < 0)
                ret = cli_usage_error("pool", "--size wants a number >= 0, not '%s'", optarg);
            json_object_set_new(body, "size", json_integer(v));
            sized = true;
            break;
        }
        case OPT_CPUS: {
            double v = strtod(optarg, &end);
            if (!*optarg || *end || !(v > 0))
                ret = cli_usage_error("pool", "--cpus wants a number > 0, not '%s'", optarg);
            json_object_set_new(res, "cpus", json_real(v));
            break;
        }
        case OPT_MEMORY: {
            long long v = strtoll(optarg, &end, 10);
            if (!*optarg || *end || v <= 0)
                ret = cli_usage_error("pool", "--memory wants MiB, not '%s'", optarg);
            json_object_set_new(res, "memory_mib", json_integer(v));
            break;
        }
        case OPT_NETWORK:
            json_object_set_new(body, "network", json_pack("{s:s}", "mode", optarg));
            break;
        case OPT_JSON:
            json = true;
            break;
        case 'h':
            cli_print_help("pool", stdout);
            ret = 0;
            break;
        default:
            ret = CLI_EXIT_USAGE;
        }
    }
    if (ret < 0 && optind + 1 != argc)
        ret = cli_usage_error("pool", "pool set wants one NAME");
    if (ret < 0 && !sized)
        ret = cli_usage_error("pool", "--size is required");
    if (json_object_size(res))
        json_object_set(body, "resources", res);
    if (ret < 0 && cli_client_open(&c) == 0) {
        char path[512];
        snprintf(path, sizeof(path), "/v1/pools/%s", av[optind]);
        ret = cli_api_call(&c, "PUT", path, body, &out, av[optind]) == CLI_OK ? 0 : CLI_EXIT_FAIL;
        if (ret == 0 && json) {
            json_dumpf(out, stdout, JSON_INDENT(2));
            putchar('\n');
        } else if (ret == 0) {
            printf("%s\n", av[optind]);
        }
        client_close(&c);
    } else if (ret < 0) {
        ret = CLI_EXIT_FAIL;
    }
    json_decref(out);
    json_decref(res);
    json_decref(body);
    return ret;
}

static int pool_rm(int argc, char **av)
{
    struct client c;
    int ret = 0;
    if (optind >= argc)
        return cli_usage_error("pool", "pool rm wants a NAME");
    if (cli_client_open(&c) < 0)
        return CLI_EXIT_FAIL;
    for (int i = optind; i < argc; i++) {
        char path[512];
        snprintf(path, sizeof(path), "/v1/pools/%s", av[i]);
        enum cli_result r = cli_api_call(&c, "DELETE", path, NULL, NULL, av[i]);
        if (r == CLI_OK)
            printf("%s\n", av[i]);
        else
            ret = CLI_EXIT_FAIL;
        if (r == CLI_EUNREACHABLE)
            break;
    }
    client_close(&c);
    return ret;
}

int cli_cmd_pool(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        cli_print_help("pool", argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : 0;
    }
    const char *sub = argv[1];
    char prog[64];
    char **av = cli_getopt_argv(argc - 1, argv + 1, prog, sizeof(prog));
    bool json = false, quiet = false;
    int ret = -1, opt;
    if (!av)
        return CLI_EXIT_FAIL;
    snprintf(prog, sizeof(prog), "warren pool");
    if (!strcmp(sub, "set")) {
        ret = pool_set(argc - 1, av);
    } else if (!strcmp(sub, "ls") || !strcmp(sub, "rm")) {
        while (ret < 0 && (opt = getopt_long(argc - 1, av, "+qh", opts, NULL)) != -1) {
            if (opt == OPT_JSON)
                json = true;
            else if (opt == 'q')
                quiet = true;
            else if (opt == 'h' && cli_print_help("pool", stdout))
                ret = 0;
            else
                ret = CLI_EXIT_USAGE;
        }
        if (ret < 0 && !strcmp(sub, "rm"))
            ret = pool_rm(argc - 1, av);
        else if (ret < 0 && optind < argc - 1)
            ret = cli_usage_error("pool", "unexpected argument '%s'", av[optind]);
        else if (ret < 0)
            ret = cli_print_list("/v1/pools", "pools", "name", json, quiet, pools_print_table);
    } else {
        ret = cli_usage_error("pool", "unknown subcommand '%s' (set, ls, rm)", sub);
    }
    free(av);
    return ret;
}
