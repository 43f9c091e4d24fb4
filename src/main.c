/*
 * main — the `warren` binary: `warren serve` runs the daemon; every other subcommand is the
 * client (src/cli/).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"
#include "server.h"
#include "session/audit.h"

static void serve_usage(FILE *f)
{
    fprintf(f, "usage: warren serve [--listen HOST:PORT|unix:PATH] [--state-dir DIR]\n"
               "                    [--max-sandboxes N] [--slots N]\n"
               "                    [--secrets-dir DIR] [--egress-hosts FILE]\n"
               "                    [--defaults RES] [--maxima RES]\n"
               "                    [--idle-timeout S] [--max-ttl S] [--released-ttl S]\n"
               "                    [--audit-max-bytes N] [--audit-keep N]\n"
               "                    [--disk-overcommit RATIO] [--disk-reserve MIB]\n"
               "                    [--insecure-registry HOST:PORT]... [--registry-ca FILE]\n"
               "                    [--registry-auth FILE] [--registry-mirror REG=URL]...\n"
               "                    [--pull-timeout S]\n"
               "                    [--stop-sandboxes-on-exit]\n"
               "                    [--log-level debug|info|warn|error]\n"
               "defaults: --listen 127.0.0.1:7070 --state-dir ./.warren --slots 0\n"
               "          --audit-max-bytes 67108864 --audit-keep 4\n"
               "--slots N also serves the atropos slot protocol (slot_0..slot_N-1, N <= 256)\n"
               "the audit log is STATE-DIR/audit/audit.log (JSON lines, GET /v1/audit); above\n"
               "--audit-max-bytes (>= 1024) it is rotated to audit.log.1 .. audit.log.N,\n"
               "N = --audit-keep (0..100)\n"
               "RES is cpus=C,memory_mib=M,pids=P,disk_mib=D (any subset): the resources of a\n"
               "  sandbox that asks for none (defaults 1, 512, 256, 1024) and the most one may\n"
               "  ask for (maxima 64, 65536, 65536, 1048576)\n"
               "--egress-hosts FILE: hosts-file lines (IP NAME...) the egress proxy resolves\n"
               "  before DNS\n"
               "--disk-overcommit RATIO (1..1000, default 16): sandbox disks are sparse; their\n"
               "  sizes may add up to RATIO x (host disk free + what sandboxes use of it)\n"
               "--disk-reserve MIB (default 5%% of the disk, 256..2048): below this much free\n"
               "  host disk, creations get 503 and writes inside sandboxes ENOSPC\n"
               "sandboxes outlive the daemon: on SIGTERM/SIGINT (or a crash) they keep running\n"
               "  and the next `warren serve` on the same state dir takes them over;\n"
               "  --stop-sandboxes-on-exit stops them instead (they come back stopped)\n"
               "--idle-timeout S: a sandbox idle for S seconds is stopped, unless it asks for its\n"
               "  own idle_timeout_s (default 0: never)\n"
               "  (a sandbox of a session is recycled instead: restored by its next call)\n"
               "--released-ttl S: deleted sandboxes' records are listed (state=deleted) for S\n"
               "  seconds, then purged (default 3600; 0: not kept)\n"
               "--max-ttl S: the longest ttl_s a sandbox may ask for, and the ttl_s of one that\n"
               "  asks for none (default 0: no maximum, sandboxes live until deleted)\n"
               "--insecure-registry HOST:PORT: pull from this registry over plain HTTP\n"
               "  (repeatable; every other registry is HTTPS, verified with the system CAs)\n"
               "--registry-ca FILE: also trust the CA certificates in FILE (PEM)\n"
               "--registry-auth FILE: credentials, in docker's config.json format\n"
               "--registry-mirror REG=URL: try URL first for images of registry REG\n"
               "  (e.g. docker.io=https://mirror.example; repeatable)\n"
               "--pull-timeout S: how long a create waits for its image (default 600)\n");
}

/* A duration flag in seconds: 0 (off) up to 10 years. */
static int parse_seconds_flag(const char *flag, const char *arg, double *out)
{
    char *end;
    double v = strtod(arg, &end);
    if (!*arg || *end || !(v >= 0 && v <= 315360000)) {
        fprintf(stderr, "warren serve: --%s wants seconds (0..315360000), got '%s'\n", flag, arg);
        return -1;
    }
    *out = v;
    return 0;
}

/* Parses "cpus=1.5,memory_mib=512,..." into *res (fields not named keep their value). */
static int parse_resources_flag(const char *flag, const char *arg, struct sandbox_resources *res)
{
    char buf[256];
    if (snprintf(buf, sizeof(buf), "%s", arg) >= (int)sizeof(buf))
        goto bad;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '='), *end;
        if (!eq || !eq[1])
            goto bad;
        *eq = '\0';
        if (!strcmp(tok, "cpus")) {
            double v = strtod(eq + 1, &end);
            if (*end || !(v >= 0.01 && v <= 1024))
                goto bad;
            res->cpus = v;
            continue;
        }
        unsigned long long v = strtoull(eq + 1, &end, 10);
        if (*end || v < 1 || eq[1] == '-' || v > (1ull << 40))
            goto bad;
        if (!strcmp(tok, "memory_mib"))
            res->memory_mib = v;
        else if (!strcmp(tok, "pids"))
            res->pids = v;
        else if (!strcmp(tok, "disk_mib"))
            res->disk_mib = v;
        else
            goto bad;
    }
    return 0;
bad:
    fprintf(stderr, "warren serve: --%s wants cpus=C,memory_mib=M,pids=P,disk_mib=D, got '%s'\n",
            flag, arg);
    return -1;
}

static int cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"state-dir", required_argument, NULL, 's'},
        {"secrets-dir", required_argument, NULL, 'K'},
        {"egress-hosts", required_argument, NULL, 'E'},
        {"defaults", required_argument, NULL, 'D'},
        {"maxima", required_argument, NULL, 'X'},
        {"max-sandboxes", required_argument, NULL, 'm'},
        {"idle-timeout", required_argument, NULL, 'I'},
        {"max-ttl", required_argument, NULL, 'T'},
        {"released-ttl", required_argument, NULL, 'r'},
        {"slots", required_argument, NULL, 'S'},
        {"audit-max-bytes", required_argument, NULL, 'A'},
        {"audit-keep", required_argument, NULL, 'k'},
        {"disk-overcommit", required_argument, NULL, 'O'},
        {"disk-reserve", required_argument, NULL, 'R'},
        {"insecure-registry", required_argument, NULL, 'N'},
        {"registry-ca", required_argument, NULL, 'C'},
        {"registry-auth", required_argument, NULL, 'U'},
        {"registry-mirror", required_argument, NULL, 'M'},
        {"pull-timeout", required_argument, NULL, 'P'},
        {"log-level", required_argument, NULL, 'L'},
        {"stop-sandboxes-on-exit", no_argument, NULL, 'Z'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct server_config cfg;
    enum log_level level = LOG_INFO;
    server_config_defaults(&cfg);
    int c;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            cfg.listen = optarg;
            break;
        case 's':
            cfg.state_dir = optarg;
            break;
        case 'K':
            cfg.secrets_dir = optarg;
            break;
        case 'E':
            cfg.egress_hosts = optarg;
            break;
        case 'D':
            if (parse_resources_flag("defaults", optarg, &cfg.limits.defaults) < 0)
                return 2;
            break;
        case 'X':
            if (parse_resources_flag("maxima", optarg, &cfg.limits.maxima) < 0)
                return 2;
            break;
        case 'N':
        case 'M': {
            int insecure = c == 'N';
            const char **list = insecure ? cfg.registries.insecure : cfg.registries.mirrors;
            size_t *n = insecure ? &cfg.registries.n_insecure : &cfg.registries.n_mirrors;
            if (*n == SERVER_MAX_REGISTRIES || (!insecure && !strchr(optarg, '='))) {
                fprintf(stderr, "warren serve: --%s: %s\n",
                        insecure ? "insecure-registry" : "registry-mirror",
                        *n == SERVER_MAX_REGISTRIES ? "too many" : "wants REGISTRY=URL");
                return 2;
            }
            list[(*n)++] = optarg;
            break;
        }
        case 'C':
            cfg.registries.ca_file = optarg;
            break;
        case 'U':
            cfg.registries.auth_file = optarg;
            break;
        case 'P':
            if (parse_seconds_flag("pull-timeout", optarg, &cfg.pull_timeout_s) < 0)
                return 2;
            break;
        case 'I':
            if (parse_seconds_flag("idle-timeout", optarg, &cfg.limits.idle_timeout_s) < 0)
                return 2;
            break;
        case 'T':
            if (parse_seconds_flag("max-ttl", optarg, &cfg.limits.max_ttl_s) < 0)
                return 2;
            break;
        case 'r':
            if (parse_seconds_flag("released-ttl", optarg, &cfg.released_ttl_s) < 0)
                return 2;
            break;
        case 'm': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 65000) {
                fprintf(stderr, "warren serve: --max-sandboxes must be 1..65000\n");
                return 2;
            }
            cfg.limits.max_sandboxes = (unsigned)v;
            break;
        }
        case 'S': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (!*optarg || *end || v < 0 || v > 256) {
                fprintf(stderr, "warren serve: --slots must be 0..256\n");
                return 2;
            }
            cfg.slots = (unsigned)v;
            break;
        }
        case 'A': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (!*optarg || *end || *optarg == '-' || errno || v < 1024 || v > (1ull << 50)) {
                fprintf(stderr, "warren serve: --audit-max-bytes must be 1024..2^50\n");
                return 2;
            }
            cfg.audit_max_bytes = (size_t)v;
            break;
        }
        case 'k': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (!*optarg || *end || v < 0 || v > AUDIT_KEEP_MAX) {
                fprintf(stderr, "warren serve: --audit-keep must be 0..%d\n", AUDIT_KEEP_MAX);
                return 2;
            }
            cfg.audit_keep = (int)v;
            break;
        }
        case 'O': {
            char *end;
            double v = strtod(optarg, &end);
            if (!*optarg || *end || !(v >= 1 && v <= 1000)) {
                fprintf(stderr, "warren serve: --disk-overcommit must be 1..1000\n");
                return 2;
            }
            cfg.disk_overcommit = v;
            break;
        }
        case 'R': {
            char *end;
            errno = 0;
            long long v = strtoll(optarg, &end, 10);
            if (!*optarg || *end || errno || v < 0 || v > (1ll << 30)) {
                fprintf(stderr, "warren serve: --disk-reserve must be 0..2^30 (MiB)\n");
                return 2;
            }
            cfg.disk_reserve_mib = v;
            break;
        }
        case 'Z':
            cfg.stop_sandboxes_on_exit = 1;
            break;
        case 'L':
            if (log_parse_level(optarg, &level) < 0) {
                fprintf(stderr, "warren serve: unknown log level '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            serve_usage(stdout);
            return 0;
        default:
            serve_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "warren serve: unexpected argument '%s'\n", argv[optind]);
        serve_usage(stderr);
        return 2;
    }
    const struct sandbox_resources *d = &cfg.limits.defaults, *m = &cfg.limits.maxima;
    if (d->cpus > m->cpus || d->memory_mib > m->memory_mib || d->pids > m->pids ||
        d->disk_mib > m->disk_mib) {
        fprintf(stderr, "warren serve: --defaults exceed --maxima\n");
        return 2;
    }
    log_set_level(level);
    return server_run(&cfg);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return cmd_serve(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0)) {
        printf("warren %s\n", WARREN_VERSION);
        return 0;
    }
    return cli_main(argc - 1, argv + 1);
}
