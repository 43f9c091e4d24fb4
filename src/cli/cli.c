/*
 * cli — subcommand dispatch, help texts and the helpers shared by the commands.
 */
#include "cli/cli.h"
#include "cli/cli_internal.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

/* ---- help -------------------------------------------------------------------------------- */

static const char cli_usage_text[] =
    "Usage: warren COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  serve     start the daemon (see 'warren serve --help')\n"
    "  run       run a command in a new, temporary sandbox\n"
    "  create    create a sandbox and print its id\n"
    "  exec      run a command in an existing sandbox\n"
    "  start     start a detached command in a sandbox and print its id, or (with no\n"
    "            command) start a stopped sandbox again\n"
    "  commands  list the detached commands of a sandbox\n"
    "  logs      print (or follow) a sandbox's log or a detached command's output\n"
    "  attach    attach to a terminal of a sandbox\n"
    "  cp        copy files and directories between the local machine and a sandbox\n"
    "  ps        list sandboxes\n"
    "  stop      stop sandboxes (SIGTERM, then SIGKILL after a grace period); files stay\n"
    "  kill      stop sandboxes at once (SIGKILL)\n"
    "  rm        remove sandboxes\n"
    "  info      show the daemon's version, features and limits\n"
    "  pull      pull an OCI image\n"
    "  images    list templates (pulled images included)\n"
    "  rmi       remove templates\n"
    "  import    make a template of an image archive (docker save, oci-archive, rootfs tar)\n"
    "  export    write a template as an oci-archive\n"
    "  snapshot  make a template of a sandbox as it is now\n"
    "  fork      make a new sandbox of a copy of a sandbox\n"
    "  build     build a template from a Dockerfile\n"
    "  volume    create, list and remove named volumes (warren volume create|ls|rm)\n"
    "  pool      manage warm pools: pool set|ls|rm\n"
    "  help      show help for a command: warren help COMMAND\n"
    "\n"
    "The client commands talk to $WARREN_URL (default " CLI_DEFAULT_URL "; unix:/path.sock\n"
    "for a unix socket).\n";

struct cli_help {
    const char *cmd;
    const char *text;
};

static const struct cli_help cli_helps[] = {
    {"run", "Usage: warren run [OPTIONS] [--] CMD [ARG...]\n"
            "\n"
            "Create a sandbox, run CMD in it with its output streamed live to stdout and\n"
            "stderr, remove the sandbox (also when interrupted) and exit with CMD's exit status\n"
            "(128+N if it was killed by signal N, 124 if it timed out, 125 if the daemon\n"
            "reported an error). CMD's stdin is empty unless -i is given.\n"
            "\n"
            "With -t, CMD (default: the sandbox's shell) runs on a terminal; with -it the\n"
            "local terminal is put in raw mode and everything typed goes to CMD.\n"
            "\n"
            "Options:\n"
            "  -e, --env K=V      set an environment variable in the sandbox (repeatable;\n"
            "                     a bare K copies it from the current environment)\n"
            "      --name N       name (and hostname) of the sandbox\n"
            "      --image REF    make the sandbox of an OCI image (pulled if missing);\n"
            "                     without CMD, the image's Entrypoint and Cmd run\n"
            "      --template T   make the sandbox of template T (see 'warren images')\n"
            "  -w, --cwd DIR      working directory (default /workspace)\n"
            "  -u, --user U       run it as user U (NAME, UID, NAME:GROUP or UID:GID, in the\n"
            "                     sandbox's /etc/passwd; default: the image's User, else root)\n"
            "      --timeout S    kill the command after S seconds (default: no limit;\n"
            "                     with --json the daemon's default, 300)\n"
            "  -i, --interactive  send this process's stdin to the command (alias --stdin)\n"
            "  -t, --tty          run the command on a terminal\n"
            "  -v, --volume NAME:/PATH[:ro]\n"
            "                     attach volume NAME at PATH (read-only with :ro; repeatable;\n"
            "                     see 'warren volume')\n"
            "      --json         run it to completion and print the result as JSON\n"
            "  -h, --help         show this help\n"},
    {"create", "Usage: warren create [OPTIONS]\n"
               "\n"
               "Create a sandbox and print its id.\n"
               "\n"
               "Options:\n"
               "      --name N       name (and hostname) of the sandbox\n"
               "      --image REF    make it of an OCI image (pulled first if missing)\n"
               "      --template T   make it of template T (see 'warren images')\n"
               "  -e, --env K=V      environment variable for every command (repeatable)\n"
               "  -l, --label K=V    label (repeatable)\n"
               "  -v, --volume NAME:/PATH[:ro]\n"
               "                     attach volume NAME at PATH (read-only with :ro; repeatable)\n"
               "      --json         print the sandbox as JSON\n"
               "  -h, --help         show this help\n"},
    {"exec", "Usage: warren exec [OPTIONS] SANDBOX [--] CMD [ARG...]\n"
             "\n"
             "Run CMD in an existing sandbox (id or name) with its output streamed live to\n"
             "stdout and stderr, and exit with its exit status (128+N if killed by signal N,\n"
             "124 on timeout, 125 if the daemon reported an error). CMD's stdin is empty unless\n"
             "-i is given. If the connection to the daemon drops, the CLI reconnects (up to 5\n"
             "attempts in a row) and resumes the output where it stopped. Interrupting the CLI\n"
             "(SIGINT, SIGTERM, SIGHUP) kills CMD.\n"
             "\n"
             "With -t, CMD (default: the sandbox's shell) runs on a new terminal of the size of\n"
             "the local one; with -it the local terminal is put in raw mode (restored on exit)\n"
             "and everything typed, Ctrl-C included, goes to CMD. Press Ctrl-] then d to\n"
             "detach (the terminal keeps running: 'warren attach SANDBOX TERMINAL_ID');\n"
             "Ctrl-] Ctrl-] sends one Ctrl-]. The terminal is removed when CMD exits.\n"
             "\n"
             "Options:\n"
             "  -e, --env K=V      set an environment variable for this command (repeatable)\n"
             "  -w, --cwd DIR      working directory (default /workspace)\n"
             "  -u, --user U       run it as user U (NAME, UID, NAME:GROUP or UID:GID, in the\n"
             "                     sandbox's /etc/passwd; default: the image's User, else root)\n"
             "      --timeout S    kill the command after S seconds (default: no limit;\n"
             "                     with --json the daemon's default, 300)\n"
             "  -i, --interactive  send this process's stdin to the command (alias --stdin)\n"
             "  -t, --tty          run the command on a terminal\n"
             "  -d, --detach       start CMD as a detached command and print its id (as\n"
             "                     'warren start')\n"
             "      --json         run it to completion and print the result as JSON\n"
             "  -h, --help         show this help\n"},
    {"start", "Usage: warren start [OPTIONS] SANDBOX [--] CMD [ARG...]\n"
              "       warren start SANDBOX\n"
              "\n"
              "Start CMD as a detached command of the sandbox and print its command id. It\n"
              "runs until it ends (or its timeout); see it with 'warren commands SANDBOX' and\n"
              "its output with 'warren logs [-f] SANDBOX COMMAND_ID'.\n"
              "\n"
              "With no CMD (and no option), start a stopped sandbox again (see 'warren stop'),\n"
              "as 'docker start' does, and print its name.\n"
              "\n"
              "Options:\n"
              "  -e, --env K=V      set an environment variable for this command (repeatable)\n"
              "  -w, --cwd DIR      working directory (default /workspace)\n"
              "  -u, --user U       run it as user U (NAME, UID, NAME:GROUP or UID:GID, in the\n"
              "                     sandbox's /etc/passwd; default: the image's User, else root)\n"
              "      --timeout S    kill the command after S seconds (default: no limit)\n"
              "  -i, --interactive  read all of stdin now and give it to the command\n"
              "      --open-stdin   keep the command's stdin open (to be written through the\n"
              "                     streaming API); by default it is empty\n"
              "      --json         print the daemon's answer as JSON\n"
              "  -h, --help         show this help\n"},
    {"commands", "Usage: warren commands [OPTIONS] SANDBOX\n"
                 "\n"
                 "List the detached commands of a sandbox (ended ones stay listed for 10\n"
                 "minutes).\n"
                 "\n"
                 "Options:\n"
                 "  -q, --quiet        print only the command ids\n"
                 "      --json         print a JSON array of commands\n"
                 "  -h, --help         show this help\n"},
    {"logs", "Usage: warren logs [OPTIONS] SANDBOX [COMMAND_ID]\n"
             "\n"
             "Without COMMAND_ID: print the sandbox's log, the output of all its commands\n"
             "(stdout and stderr, whole lines in the order they came; the last MiB is kept).\n"
             "With -f, keep printing new output until interrupted or the sandbox is deleted.\n"
             "\n"
             "With COMMAND_ID: print the output of a detached command so far: its stdout on\n"
             "stdout, its stderr on stderr, exactly as written (output older than the daemon's\n"
             "buffer is reported as lost). With -f, keep printing until the command ends,\n"
             "resuming after a dropped connection.\n"
             "\n"
             "Options:\n"
             "  -f, --follow       follow the output\n"
             "      --tail N       only the last N lines of the sandbox's log\n"
             "  -h, --help         show this help\n"},
    {"attach", "Usage: warren attach [OPTIONS] SANDBOX TERMINAL_ID\n"
               "\n"
               "Attach to a terminal of a sandbox: its screen is redrawn, then everything typed\n"
               "goes to it (the local terminal is in raw mode, restored on exit) and its output\n"
               "comes back. The local window size is passed on, also when it changes.\n"
               "Press Ctrl-] then d to detach (Ctrl-] Ctrl-] sends one Ctrl-]). Exits with the\n"
               "program's exit status when it ends, 0 when detached, 125 on errors.\n"
               "\n"
               "Options:\n"
               "      --no-stdin     only watch: do not send input\n"
               "  -h, --help         show this help\n"},
    {"cp", "Usage: warren cp [OPTIONS] LOCAL SANDBOX:PATH\n"
           "       warren cp [OPTIONS] SANDBOX:PATH LOCAL\n"
           "\n"
           "Copy a file or a directory tree into or out of a sandbox (id or name), like\n"
           "'docker cp'. A relative (or empty) PATH is relative to /workspace. An argument\n"
           "is local when it starts with '/' or '.' or has no ':' (write ./a:b for a local\n"
           "name with a colon).\n"
           "\n"
           "SRC a file:\n"
           "  DEST is an existing directory  the file is copied into it, under its name\n"
           "  DEST ends with '/' and is not  error\n"
           "  otherwise                      the file is written as DEST (replaced if it\n"
           "                                 exists; its parent must exist)\n"
           "SRC a directory:\n"
           "  DEST does not exist            DEST is created (its parent must exist) with\n"
           "                                 the contents of SRC\n"
           "  DEST is an existing directory  SRC is copied into it as DEST/<name of SRC>;\n"
           "                                 with SRC ending in '/.', its contents go into\n"
           "                                 DEST itself\n"
           "  DEST is a file                 error\n"
           "\n"
           "Files keep their permission bits. Symlinks given as SRC are followed; symlinks\n"
           "inside a directory are copied as links (the daemon refuses links that point\n"
           "out of the copied tree, and hard links). Into the sandbox, files belong to its\n"
           "root user; out of it, to the user running warren. A file is downloaded to a\n"
           "temporary file next to DEST and renamed at the end, so a failed copy leaves\n"
           "nothing behind; directories are sent and received as tar.gz streams through\n"
           "'tar' (which must be installed) and are not atomic.\n"
           "\n"
           "LOCAL '-': 'warren cp - SANDBOX:DIR' extracts a tar or tar.gz read from stdin\n"
           "into DIR (created if missing); 'warren cp SANDBOX:PATH -' writes a tar.gz of\n"
           "PATH to stdout.\n"
           "\n"
           "A progress bar is shown on stderr when it is a terminal and more than 4 MiB\n"
           "are transferred. Exits with 0 on success, 1 on errors.\n"
           "\n"
           "Options:\n"
           "  -q, --quiet        no progress bar\n"
           "  -h, --help         show this help\n"},
    {"ps", "Usage: warren ps [OPTIONS]\n"
           "\n"
           "List sandboxes.\n"
           "\n"
           "Options:\n"
           "  -l, --label K=V    only sandboxes with this label (repeatable)\n"
           "      --state S      only sandboxes in state S\n"
           "  -q, --quiet        print only the ids\n"
           "      --json         print a JSON array of sandboxes\n"
           "  -h, --help         show this help\n"},
    {"stop", "Usage: warren stop [--grace S] SANDBOX...\n"
             "\n"
             "Stop sandboxes: SIGTERM to every process, SIGKILL after S seconds (default 10)\n"
             "to what is left. Their files (/ and /workspace), name, id and settings stay;\n"
             "'warren start SANDBOX' starts one again. Prints each stopped one; exits with 1\n"
             "if any could not be stopped.\n"
             "\n"
             "Options:\n"
             "      --grace S      seconds between SIGTERM and SIGKILL (0 to 3600)\n"
             "  -h, --help         show this help\n"},
    {"kill", "Usage: warren kill SANDBOX...\n"
             "\n"
             "Stop sandboxes at once (SIGKILL to every process), keeping their files as\n"
             "'warren stop' does.\n"
             "\n"
             "Options:\n"
             "  -h, --help         show this help\n"},
    {"rm", "Usage: warren rm SANDBOX...\n"
           "\n"
           "Remove sandboxes (by id or name), printing each removed one. Exits with 1 if any\n"
           "could not be removed.\n"
           "\n"
           "Options:\n"
           "  -h, --help         show this help\n"},
    {"info", "Usage: warren info [--json]\n"
             "\n"
             "Show the daemon's version, isolation features and limits.\n"
             "\n"
             "Options:\n"
             "      --json         print the raw JSON\n"
             "  -h, --help         show this help\n"},
    {"pull", "Usage: warren pull [OPTIONS] IMAGE\n"
             "\n"
             "Pull an OCI image (python:3.11-slim, registry:5000/team/app:1, ...@sha256:...)\n"
             "into the daemon's layer store, showing its progress on a terminal, and print the\n"
             "template's name and digest. Without --name the template is named by the image.\n"
             "\n"
             "Options:\n"
             "      --name N       also call it template N\n"
             "  -q, --quiet        no progress bar\n"
             "      --json         print the template as JSON\n"
             "  -h, --help         show this help\n"},
    {"build", "Usage: warren build -t NAME [OPTIONS] DIR\n"
              "\n"
              "Build template NAME from the Dockerfile in DIR (the build context; what\n"
              "DIR/.dockerignore names is left out, one tar --exclude pattern a line), then print\n"
              "the steps, the RUN steps' output and the template's name and digest.\n"
              "\n"
              "Options:\n"
              "  -t, --tag NAME       the template to make (replaced if unused)\n"
              "  -f, --file PATH      the Dockerfile's path in DIR (default Dockerfile)\n"
              "      --build-arg K=V  a value for ARG K (repeatable)\n"
              "      --no-cache       run every step again\n"
              "      --network MODE   none (default) or open: the RUN steps' network\n"
              "  -h, --help           show this help\n"},
    {"images", "Usage: warren images [OPTIONS]\n"
               "\n"
               "List templates: the built-in host, pulled images and named templates.\n"
               "\n"
               "Options:\n"
               "  -q, --quiet        print only the names\n"
               "      --json         print the raw JSON\n"
               "  -h, --help         show this help\n"},
    {"rmi", "Usage: warren rmi TEMPLATE...\n"
            "\n"
            "Remove templates (refused while a sandbox uses one); layers no other template\n"
            "uses are removed from the store.\n"
            "\n"
            "Options:\n"
            "  -h, --help         show this help\n"},
    {"import", "Usage: warren import [OPTIONS] NAME FILE|-\n"
               "\n"
               "Make template NAME of an image archive read from FILE (or stdin with -): a\n"
               "'docker save' tarball, an oci-archive, or a root file system tar (plain, gzip\n"
               "or zstd; the format is recognised from the bytes). The archive is streamed to\n"
               "the daemon, with a progress bar on stderr when it is a terminal. Prints the\n"
               "template's name and digest.\n"
               "\n"
               "Options:\n"
               "  -q, --quiet        no progress bar\n"
               "      --json         print the template as JSON\n"
               "  -h, --help         show this help\n"},
    {"export", "Usage: warren export [OPTIONS] TEMPLATE\n"
               "\n"
               "Write template TEMPLATE (pulled, imported or snapshotted) as an oci-archive,\n"
               "which 'skopeo copy oci-archive:FILE ...' and 'warren import' read. With -o\n"
               "the archive goes to a temporary file next to FILE, renamed over it once it is\n"
               "complete (an interrupted export leaves nothing); without -o it goes to stdout,\n"
               "unless stdout is a terminal. A progress bar is shown on stderr when it is a\n"
               "terminal.\n"
               "\n"
               "Options:\n"
               "  -o, --output FILE  write it to FILE ('-': stdout)\n"
               "  -q, --quiet        no progress bar\n"
               "  -h, --help         show this help\n"},
    {"snapshot", "Usage: warren snapshot [OPTIONS] SANDBOX NAME\n"
                 "\n"
                 "Make template NAME of a sandbox (id or name) made of an image, as it is now:\n"
                 "its image plus one layer of everything it changed, /workspace included. A\n"
                 "running sandbox is frozen meanwhile and goes on after. Prints the template's\n"
                 "name and digest; 'warren create --template NAME' makes sandboxes of it.\n"
                 "\n"
                 "Options:\n"
                 "      --json         print the template as JSON\n"
                 "  -h, --help         show this help\n"},
    {"fork", "Usage: warren fork [OPTIONS] SANDBOX\n"
             "\n"
             "Make a new sandbox of a snapshot of SANDBOX (made of an image) as it is now,\n"
             "with its env, labels, secrets, resources and network policy, and print the new\n"
             "sandbox's id. Its template (fork-...) is kept: remove it with 'warren rmi' once\n"
             "the new sandbox is gone.\n"
             "\n"
             "Options:\n"
             "      --name N       name (and hostname) of the new sandbox\n"
             "      --json         print the new sandbox as JSON\n"
             "  -h, --help         show this help\n"},
    {"volume", "Usage: warren volume create NAME [--size MIB] [--json]\n"
               "       warren volume ls [--json | -q]\n"
               "       warren volume rm NAME...\n"
               "\n"
               "Named volumes: storage that outlives sandboxes, attached to any number of them\n"
               "with 'warren create -v NAME:/PATH[:ro]' or 'warren run -v ...'. A volume is its\n"
               "own file system of exactly --size MiB (default 1024); 'rm' refuses a volume that\n"
               "a sandbox (in any state) still names.\n"
               "\n"
               "Options:\n"
               "  -s, --size MIB     the volume's size in MiB\n"
               "      --json         print the volume(s) as JSON\n"
               "  -q                 ls: print only the names\n"
               "  -h, --help         show this help\n"},
    {"pool", "Usage: warren pool set NAME (--template T | --image I) --size N [OPTIONS]\n"
             "       warren pool ls [--json] [-q]\n"
             "       warren pool rm NAME...\n"
             "\n"
             "Warm pools: sandboxes made ahead of time. A create with the same template or\n"
             "image, resources and network (and no secrets) gets one of them at once.\n"
             "Changing what a pool is made of replaces its members.\n"
             "\n"
             "Options of set:\n"
             "      --template T   the members' template (default host)\n"
             "      --image I      the members' image (pulled if missing)\n"
             "      --size N       how many to keep ready\n"
             "      --cpus C       their cpus (default: the daemon's)\n"
             "      --memory MIB   their memory_mib (default: the daemon's)\n"
             "      --network MODE none or open (default none)\n"
             "      --json         print the pool as JSON\n"
             "  -h, --help         show this help\n"},
    {"help", "Usage: warren help [COMMAND]\n"},
};

void cli_print_usage(FILE *f)
{
    fputs(cli_usage_text, f);
}

bool cli_print_help(const char *cmd, FILE *f)
{
    for (size_t i = 0; i < sizeof(cli_helps) / sizeof(cli_helps[0]); i++) {
        if (strcmp(cli_helps[i].cmd, cmd) == 0) {
            fputs(cli_helps[i].text, f);
            return true;
        }
    }
    return false;
}

int cli_common_opt(const char *cmd, int opt)
{
    if (opt == 'h') {
        cli_print_help(cmd, stdout);
        return 0;
    }
    fprintf(stderr, "Try 'warren %s --help'.\n", cmd);
    return CLI_EXIT_USAGE;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "warren %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'warren %s --help'.\n", cmd);
    return CLI_EXIT_USAGE;
}

static int cli_cmd_help(int argc, char **argv)
{
    if (argc < 2) {
        cli_print_usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "serve") == 0) {
        printf("See 'warren serve --help'.\n");
        return 0;
    }
    if (!cli_print_help(argv[1], stdout)) {
        fprintf(stderr, "warren: unknown command '%s'\nTry 'warren help'.\n", argv[1]);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int cli_main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"run", cli_cmd_run},       {"exec", cli_cmd_exec},
        {"create", cli_cmd_create}, {"ps", cli_cmd_ps},
        {"rm", cli_cmd_rm},         {"info", cli_cmd_info},
        {"stop", cli_cmd_stop},     {"kill", cli_cmd_kill},
        {"start", cli_cmd_start},   {"commands", cli_cmd_commands},
        {"logs", cli_cmd_logs},     {"attach", cli_cmd_attach},
        {"cp", cli_cmd_cp},         {"help", cli_cmd_help},
        {"pull", cli_cmd_pull},     {"images", cli_cmd_images},
        {"rmi", cli_cmd_rmi},       {"import", cli_cmd_import},
        {"export", cli_cmd_export}, {"snapshot", cli_cmd_snapshot},
        {"fork", cli_cmd_fork},     {"build", cli_cmd_build},
        {"volume", cli_cmd_volume}, {"volumes", cli_cmd_volume},
        {"pool", cli_cmd_pool},     {"--help", cli_cmd_help},
        {"-h", cli_cmd_help},
    };

    if (argc < 1 || !argv[0]) {
        cli_print_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        if (strcmp(argv[0], cmds[i].name) == 0)
            return cmds[i].fn(argc, argv);
    fprintf(stderr, "warren: unknown command '%s'\nTry 'warren help'.\n", argv[0]);
    return CLI_EXIT_USAGE;
}

/* ---- shared helpers ---------------------------------------------------------------------- */

char **cli_getopt_argv(int argc, char **argv, char *prog, size_t progsz)
{
    char **av = calloc((size_t)argc + 1, sizeof(*av));
    if (!av) {
        fprintf(stderr, "warren: out of memory\n");
        return NULL;
    }
    snprintf(prog, progsz, "warren %s", argv[0]);
    av[0] = prog;
    for (int i = 1; i < argc; i++)
        av[i] = argv[i];
    optind = 0; /* full re-initialisation of GNU getopt */
    opterr = 1;
    return av;
}

int cli_client_open(struct client *c)
{
    const char *url = getenv("WARREN_URL");
    if (!url || !*url)
        url = CLI_DEFAULT_URL;
    int r = client_open(c, url);
    if (r < 0) {
        fprintf(stderr, "warren: WARREN_URL: %s\n", c->error);
        client_close(c);
        return -1;
    }
    return 0;
}

/* The message of an error answer: {"error":{"message":...}} or a description of the status. */
void cli_report_api_error(const struct client_response *resp, const char *what)
{
    const char *msg = NULL;
    json_t *j = NULL;
    char fallback[200];

    if (resp->body.len > 0)
        j = json_loadb(resp->body.data, resp->body.len, 0, NULL);
    json_t *err = j ? json_object_get(j, "error") : NULL;
    if (json_is_object(err))
        msg = json_string_value(json_object_get(err, "message"));
    else if (json_is_string(err))
        msg = json_string_value(err);
    if (!msg || !*msg) {
        int n = snprintf(fallback, sizeof(fallback), "the daemon answered HTTP %d", resp->status);
        /* Include a short, printable excerpt of a non-JSON body. */
        if (!j && resp->body.len > 0 && n > 0 && (size_t)n < sizeof(fallback) - 8) {
            size_t k = (size_t)n;
            k += (size_t)snprintf(fallback + k, sizeof(fallback) - k, ": ");
            for (size_t i = 0; i < resp->body.len && k < sizeof(fallback) - 4; i++) {
                unsigned char ch = (unsigned char)resp->body.data[i];
                fallback[k++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : ' ';
            }
            while (k > 0 && fallback[k - 1] == ' ')
                k--;
            fallback[k] = '\0';
        }
        msg = fallback;
    }
    if (what && !strstr(msg, what))
        fprintf(stderr, "warren: %s: %s\n", what, msg);
    else
        fprintf(stderr, "warren: %s\n", msg);
    json_decref(j);
}

enum cli_result cli_api_call(struct client *c, const char *method, const char *path, json_t *body,
                             json_t **out, const char *what)
{
    struct client_response resp;
    char *data = NULL;
    size_t len = 0;

    if (out)
        *out = NULL;
    if (body) {
        data = json_dumps(body, JSON_COMPACT);
        if (!data) {
            fprintf(stderr, "warren: cannot encode the request (out of memory?)\n");
            return CLI_ETRANSPORT;
        }
        len = strlen(data);
    }
    int r = client_request(c, method, path, body ? "application/json" : NULL, data, len, &resp);
    free(data);
    if (r < 0) {
        if (r == -EINTR)
            return CLI_EINTR;
        if (c->connect_failed) {
            bool hint = r == -ECONNREFUSED || r == -ENOENT;
            fprintf(stderr, "warren: cannot reach the daemon at %s: %s%s\n", c->url, c->error,
                    hint ? " (is 'warren serve' running?)" : "");
            return CLI_EUNREACHABLE;
        }
        fprintf(stderr, "warren: %s %s at %s: %s\n", method, path, c->url,
                c->error[0] ? c->error : strerror(-r));
        return CLI_ETRANSPORT;
    }
    if (resp.status < 200 || resp.status > 299) {
        cli_report_api_error(&resp, what);
        client_response_free(&resp);
        return CLI_EAPI;
    }
    if (out && resp.body.len > 0) {
        json_error_t jerr;
        *out = json_loadb(resp.body.data, resp.body.len, JSON_ALLOW_NUL, &jerr);
        if (!*out) {
            fprintf(stderr, "warren: malformed JSON from the daemon (%s %s): %s\n", method, path,
                    jerr.text);
            client_response_free(&resp);
            return CLI_ETRANSPORT;
        }
    }
    client_response_free(&resp);
    return CLI_OK;
}

int cli_path_sandbox(buf_t *b, const char *id)
{
    int r = buf_append_str(b, "/v1/sandboxes/");
    return r < 0 ? r : client_append_escaped(b, id, 0);
}

int cli_kv_add(json_t *obj, const char *cmd, const char *opt, const char *arg, bool from_env)
{
    const char *eq = strchr(arg, '=');
    const char *value;
    char *key;

    if (eq == arg || !*arg) {
        cli_usage_error(cmd, "%s '%s': expected KEY=VALUE", opt, arg);
        return -1;
    }
    if (eq) {
        key = strndup(arg, (size_t)(eq - arg));
        value = eq + 1;
    } else if (from_env) {
        value = getenv(arg);
        if (!value)
            return 0;
        key = strdup(arg);
    } else {
        cli_usage_error(cmd, "%s '%s': expected KEY=VALUE", opt, arg);
        return -1;
    }
    if (!key) {
        fprintf(stderr, "warren: out of memory\n");
        return -1;
    }
    json_t *v = json_string(value);
    if (!v || json_object_set_new(obj, key, v) < 0) {
        cli_usage_error(cmd, "%s '%s': not valid UTF-8", opt, arg);
        free(key);
        return -1;
    }
    free(key);
    return 0;
}

int cli_parse_seconds(const char *cmd, const char *opt, const char *arg, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno || end == arg || *end || !isfinite(v) || v <= 0) {
        cli_usage_error(cmd, "%s '%s': expected a positive number of seconds", opt, arg);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_print_json(json_t *j)
{
    if (json_dumpf(j, stdout, JSON_INDENT(2)) < 0 || fputc('\n', stdout) == EOF ||
        fflush(stdout) == EOF) {
        fprintf(stderr, "warren: cannot write to stdout: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

int cli_print_list(const char *path, const char *key, const char *id_key, bool json, bool quiet,
                   void (*print_table)(json_t *list))
{
    struct client c;
    json_t *resp = NULL;
    int ret = CLI_EXIT_FAIL;
    if (cli_client_open(&c) < 0)
        return CLI_EXIT_FAIL;
    if (cli_api_call(&c, "GET", path, NULL, &resp, NULL) == CLI_OK) {
        json_t *list = json_object_get(resp, key), *e;
        size_t i;
        if (!json_is_array(list)) {
            fprintf(stderr, "warren: the daemon's answer has no '%s' list\n", key);
        } else if (json) {
            ret = cli_print_json(list) < 0 ? CLI_EXIT_FAIL : 0;
        } else {
            if (quiet) {
                json_array_foreach(list, i, e)
                {
                    const char *id = json_string_value(json_object_get(e, id_key));
                    printf("%s\n", id ? id : "-");
                }
            } else {
                print_table(list);
            }
            ret = fflush(stdout) == 0 ? 0 : CLI_EXIT_FAIL;
        }
    }
    client_close(&c);
    json_decref(resp);
    return ret;
}

int cli_b64_encode(buf_t *out, const void *p, size_t n)
{
    /* Encode in blocks (a multiple of 3 bytes) to keep EVP_EncodeBlock's int sizes small. */
    enum { BLOCK = 3 * 16384 };
    const unsigned char *s = p;
    while (n > 0) {
        size_t take = n < BLOCK ? n : BLOCK;
        int r = buf_reserve(out, 4 * ((take + 2) / 3) + 1);
        if (r < 0)
            return r;
        int w = EVP_EncodeBlock((unsigned char *)out->data + out->len, s, (int)take);
        out->len += (size_t)w;
        out->data[out->len] = '\0';
        s += take;
        n -= take;
    }
    if (!out->data) /* make an empty result a valid "" */
        return buf_append(out, "", 0);
    return 0;
}

int cli_b64_decode(buf_t *out, const char *s, size_t n)
{
    enum { BLOCK = 4 * 16384 };
    if (n % 4 != 0)
        return -EINVAL;
    while (n > 0) {
        size_t take = n < BLOCK ? n : BLOCK;
        size_t pad = 0;
        if (take == n) { /* padding only in the last block */
            if (s[take - 1] == '=')
                pad++;
            if (s[take - 2] == '=')
                pad++;
        }
        int r = buf_reserve(out, take / 4 * 3 + 1);
        if (r < 0)
            return r;
        int w = EVP_DecodeBlock((unsigned char *)out->data + out->len, (const unsigned char *)s,
                                (int)take);
        if (w < 0 || (size_t)w < pad)
            return -EINVAL;
        out->len += (size_t)w - pad; /* EVP_DecodeBlock counts the padding as zero bytes */
        out->data[out->len] = '\0';
        s += take;
        n -= take;
    }
    return 0;
}
