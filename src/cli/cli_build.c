/*
 * cli_build — `warren build -t NAME [-f Dockerfile] [--build-arg K=V]... [--no-cache]
 * [--network open] DIR`: DIR as a tar.gz (made by a `tar` child, leaving out what DIR's
 * .dockerignore names: one tar --exclude pattern a line) streamed to POST /v1/templates/build;
 * when the build is over, its steps and log are printed, and the template's name and digest (or
 * the error, with the exit status 1).
 */
#include "cli/cli_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum { OPT_BUILD_ARG = 256, OPT_NO_CACHE, OPT_NETWORK };

static ssize_t read_tar(void *arg, void *buf, size_t len)
{
    ssize_t n;
    while ((n = read(*(int *)arg, buf, len)) < 0 && errno == EINTR)
        ;
    return n < 0 ? -errno : n;
}

/* `tar` of DIR on a pipe: its pid, and the pipe's read end in *fd. */
static pid_t spawn_tar(const char *dir, int *fd)
{
    char ignore[4200];
    int p[2];
    struct stat st;
    snprintf(ignore, sizeof(ignore), "%s/.dockerignore", dir);
    int has_ignore = stat(ignore, &st) == 0 && S_ISREG(st.st_mode);
    char *argv[] = {"tar", "-czf", "-", "-C", (char *)dir, "--exclude-from", ignore, ".", NULL};
    if (!has_ignore) {
        argv[5] = ".";
        argv[6] = NULL;
    }
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        if (dup2(p[1], 1) < 0)
            _exit(127);
        execvp(argv[0], argv);
        fprintf(stderr, "warren: cannot run tar: %s\n", strerror(errno));
        _exit(127);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return -1;
    }
    *fd = p[0];
    return pid;
}

static void print_steps(json_t *answer, FILE *f)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(answer, "steps"), i, s)
    {
        fprintf(f, "step %zu/%zu: %s%s (%.0f ms)\n", i + 1,
                json_array_size(json_object_get(answer, "steps")),
                json_string_value(json_object_get(s, "instruction")) ?: "",
                json_is_true(json_object_get(s, "cached")) ? " [cached]" : "",
                json_number_value(json_object_get(s, "duration_ms")));
    }
    const char *log = json_string_value(json_object_get(answer, "log"));
    if (log && *log)
        fprintf(f, "--- log ---\n%s%s", log, log[strlen(log) - 1] == '\n' ? "" : "\n");
}

int cli_cmd_build(int argc, char **argv)
{
    static const struct option opts[] = {
        {"tag", required_argument, NULL, 't'},
        {"file", required_argument, NULL, 'f'},
        {"build-arg", required_argument, NULL, OPT_BUILD_ARG},
        {"no-cache", no_argument, NULL, OPT_NO_CACHE},
        {"network", required_argument, NULL, OPT_NETWORK},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char prog[64];
    char **av = cli_getopt_argv(argc, argv, prog, sizeof(prog));
    buf_t path = BUF_INIT;
    const char *name = NULL;
    int ret = -1, opt, fd = -1;
    pid_t tar = -1;
    struct client c;
    struct client_response resp = {0};
    json_t *answer = NULL;
    bool opened = false;

    if (!av || buf_append_str(&path, "/v1/templates/build?") < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    while (ret < 0 && (opt = getopt_long(argc, av, "+t:f:h", opts, NULL)) != -1) {
        int r = 0;
        switch (opt) {
        case 't':
            name = optarg;
            break;
        case 'f':
            r = buf_append_str(&path, "&dockerfile=") < 0 ||
                client_append_escaped(&path, optarg, 1) < 0;
            break;
        case OPT_BUILD_ARG:
            if (!strchr(optarg, '=')) {
                ret = cli_usage_error("build", "--build-arg takes K=V");
                break;
            }
            r = buf_append_str(&path, "&build_arg=") < 0 ||
                client_append_escaped(&path, optarg, 1) < 0;
            break;
        case OPT_NO_CACHE:
            r = buf_append_str(&path, "&no_cache=1") < 0;
            break;
        case OPT_NETWORK:
            if (strcmp(optarg, "none") && strcmp(optarg, "open")) {
                ret = cli_usage_error("build", "--network is none or open");
                break;
            }
            r = buf_append_str(&path, "&network=") < 0 || buf_append_str(&path, optarg) < 0;
            break;
        case 'h':
            cli_print_help("build", stdout);
            ret = 0;
            break;
        default:
            fprintf(stderr, "Try 'warren build --help'.\n");
            ret = CLI_EXIT_USAGE;
            break;
        }
        if (r)
            ret = CLI_EXIT_FAIL;
    }
    if (ret >= 0)
        goto out;
    if (!name) {
        ret = cli_usage_error("build", "-t NAME is required");
        goto out;
    }
    if (optind + 1 != argc) {
        ret = cli_usage_error("build", "give one context directory");
        goto out;
    }
    if (buf_append_str(&path, "&name=") < 0 || client_append_escaped(&path, name, 1) < 0 ||
        buf_append(&path, "", 1) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    if (cli_client_open(&c) < 0) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    opened = true;
    if ((tar = spawn_tar(av[optind], &fd)) < 0) {
        fprintf(stderr, "warren: build: cannot run tar: %s\n", strerror(errno));
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    fprintf(stderr, "warren: building %s from %s ...\n", name, av[optind]);
    struct client_stream s = {.read_body = read_tar, .body_len = -1, .arg = &fd};
    int r = client_request_stream(&c, "POST", path.data, "application/x-tar", &s, &resp);
    close(fd);
    fd = -1;
    int status;
    while (waitpid(tar, &status, 0) < 0 && errno == EINTR)
        ;
    tar = -1;
    if (r < 0) {
        fprintf(stderr, "warren: build: %s\n", c.error[0] ? c.error : strerror(-r));
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "warren: build: tar of %s failed\n", av[optind]);
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    json_error_t jerr;
    answer = resp.body.len ? json_loadb(resp.body.data, resp.body.len, 0, &jerr) : NULL;
    if (resp.status / 100 == 2) {
        print_steps(answer, stdout);
        printf("%s %s\n", name, json_string_value(json_object_get(answer, "digest")) ?: "");
        ret = fflush(stdout) == 0 ? 0 : CLI_EXIT_FAIL;
    } else {
        print_steps(answer, stderr);
        cli_report_api_error(&resp, "build");
        ret = CLI_EXIT_FAIL;
    }
out:
    if (fd >= 0)
        close(fd);
    if (tar > 0) {
        kill(tar, SIGTERM);
        waitpid(tar, NULL, 0);
    }
    json_decref(answer);
    client_response_free(&resp);
    if (opened)
        client_close(&c);
    buf_free(&path);
    free(av);
    return ret;
}
