/*
 * bench_core — warren's core latency benchmark.
 *
 * Measures, in one run and interleaved round-robin (every round takes one sample of every
 * measurement, in a random order drawn per round, so machine noise hits all of them alike):
 *
 *   fork_exec          fork + execve("/bin/true") + waitpid: the floor for running anything.
 *   bwrap              fork + exec of bubblewrap running /bin/true with typical agent flags.
 *   raw_clone          a minimal isolated clone written here: clone3(NEWUSER|NEWPID|NEWNS|NEWUTS|
 *                      NEWIPC|NEWNET), uid/gid maps, tmpfs root + ro /usr bind + symlinks + proc,
 *                      pivot_root, execve("/bin/true"), waitpid. The floor for warren's create.
 *   warren_exec        RTT of POST /v1/sandboxes/{id}/exec {"argv":["true"]} on one keep-alive
 *                      connection to one sandbox created at start.
 *   warren_create      POST /v1/sandboxes {} until its 201 (create only).
 *   warren_create_exec POST /v1/sandboxes {} + first exec of true done (create -> first exec).
 *   warren_cycle       create + first exec + DELETE (the whole cycle).
 *   warren_delete      the DELETE part of the cycle alone.
 *
 * Usage: bench_core --url http://127.0.0.1:PORT [--rounds N] [--warmup N] [--bwrap PATH]
 *                   [--create-every N] [--only LIST] [--samples FILE] [--json]
 *
 * --only fork_exec,bwrap,raw_clone,warren_exec,warren_create keeps just those groups (e.g. to
 * drive one path under perf or strace); ratios whose inputs were not measured are left out of
 * the table and are null in --json. --samples FILE writes every kept sample as CSV
 * (round,slot,name,ms; slot = position in the round) to look at tails and ordering effects.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

static int in_cleanup; /* die() from the atexit handler must not call exit() again */

static __attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bench_core: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (in_cleanup)
        _exit(1);
    exit(1);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---------------------------------------------------------------------------------------------
 * Sample sets and statistics.
 */

struct series {
    const char *name;
    double *v;
    size_t n, cap;
};

static FILE *samples_out;
static long cur_round, cur_slot;

static void series_add(struct series *s, double ms)
{
    if (samples_out)
        fprintf(samples_out, "%ld,%ld,%s,%.3f\n", cur_round, cur_slot, s->name, ms);
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        s->v = realloc(s->v, s->cap * sizeof(double));
        if (!s->v)
            die("out of memory");
    }
    s->v[s->n++] = ms;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile on a sorted series. */
static double pct(const struct series *s, double q)
{
    if (s->n == 0)
        return 0;
    size_t k = (size_t)(q * (double)s->n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > s->n)
        k = s->n;
    return s->v[k - 1];
}

/* ---------------------------------------------------------------------------------------------
 * Process measurements.
 */

static void wait_ok(pid_t pid, const char *what)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid(%s): %s", what, strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (WIFEXITED(st))
            die("%s: exited with status %d", what, WEXITSTATUS(st));
        die("%s: killed by signal %d", what, WTERMSIG(st));
    }
}

static char *const true_argv[] = {"/bin/true", NULL};
extern char **environ;

static double run_fork_exec(void)
{
    double t0 = now_ms();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        execve("/bin/true", true_argv, environ);
        _exit(127);
    }
    wait_ok(pid, "fork_exec");
    return now_ms() - t0;
}

static char **bwrap_argv;

static double run_bwrap(void)
{
    double t0 = now_ms();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        execve(bwrap_argv[0], bwrap_argv, environ);
        _exit(127);
    }
    wait_ok(pid, "bwrap");
    return now_ms() - t0;
}

/* raw_clone: everything the child needs is prepared before the clone. */
static char raw_root[256];
static unsigned long usr_locked; /* mount flags of /usr a user namespace may not clear */

/* Steps, reported as the child's exit status so a failure names what broke. */
enum {
    RC_SYNC = 10,
    RC_PRIVATE,
    RC_TMPFS,
    RC_CHDIR,
    RC_SETID,
    RC_USR,
    RC_USR_RO,
    RC_LINKS,
    RC_PROC,
    RC_PIVOT,
    RC_UMOUNT,
    RC_EXEC
};

static const char *raw_step(int rc)
{
    static const char *const names[] = {"sync",       "make-rprivate /", "mount tmpfs root",
                                        "chdir",      "setresuid/gid",   "bind /usr",
                                        "ro /usr",    "symlinks",        "mount proc",
                                        "pivot_root", "umount old root", "execve"};
    if (rc >= RC_SYNC && rc <= RC_EXEC)
        return names[rc - RC_SYNC];
    return "?";
}

static __attribute__((noreturn)) void raw_child(int sync_fd)
{
    char c;
    if (read(sync_fd, &c, 1) != 1)
        _exit(RC_SYNC);
    close(sync_fd);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        _exit(RC_PRIVATE);
    /* uid=0,gid=0 are read in the new user namespace: the root belongs to the mapped range. */
    if (mount("tmpfs", raw_root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,uid=0,gid=0") < 0)
        _exit(RC_TMPFS);
    if (chdir(raw_root) < 0)
        _exit(RC_CHDIR);
    if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
        _exit(RC_SETID);
    if (mkdir("usr", 0755) < 0 || mount("/usr", "usr", NULL, MS_BIND | MS_REC, NULL) < 0)
        _exit(RC_USR);
    if (mount(NULL, "usr", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | usr_locked, NULL) < 0)
        _exit(RC_USR_RO);
    if (symlink("usr/bin", "bin") < 0 || symlink("usr/lib", "lib") < 0 ||
        symlink("usr/lib64", "lib64") < 0 || symlink("usr/sbin", "sbin") < 0)
        _exit(RC_LINKS);
    if (mkdir("proc", 0555) < 0 ||
        mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        _exit(RC_PROC);
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        _exit(RC_PIVOT);
    if (umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
        _exit(RC_UMOUNT);
    char *const envp[] = {"PATH=/usr/bin:/bin", NULL};
    execve("/bin/true", true_argv, envp);
    _exit(RC_EXEC);
}

static int write_file(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t n = strlen(data);
    ssize_t w = write(fd, data, n);
    close(fd);
    return w == (ssize_t)n ? 0 : -1;
}

static double run_raw_clone(void)
{
    int p[2];
    double t0 = now_ms();
    if (pipe2(p, O_CLOEXEC) < 0)
        die("pipe2: %s", strerror(errno));
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags =
        CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET;
    args.exit_signal = SIGCHLD;
    pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0)
        die("clone3: %s", strerror(errno));
    if (pid == 0) {
        close(p[1]);
        raw_child(p[0]);
    }
    close(p[0]);
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
    if (write_file(path, "0 100000 65536\n") < 0)
        die("write %s: %s", path, strerror(errno));
    snprintf(path, sizeof(path), "/proc/%d/setgroups", (int)pid);
    if (write_file(path, "deny") < 0)
        die("write %s: %s", path, strerror(errno));
    snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
    if (write_file(path, "0 100000 65536\n") < 0)
        die("write %s: %s", path, strerror(errno));
    if (write(p[1], "x", 1) != 1)
        die("sync write: %s", strerror(errno));
    close(p[1]);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid(raw_clone): %s", strerror(errno));
    double dt = now_ms() - t0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (WIFEXITED(st))
            die("raw_clone: child failed at step '%s' (status %d)", raw_step(WEXITSTATUS(st)),
                WEXITSTATUS(st));
        die("raw_clone: child killed by signal %d", WTERMSIG(st));
    }
    return dt;
}

static void raw_prepare(const char *tmpdir)
{
    snprintf(raw_root, sizeof(raw_root), "%s/root", tmpdir);
    if (mkdir(raw_root, 0755) < 0)
        die("mkdir %s: %s", raw_root, strerror(errno));
    /* A bind remount inside a user namespace must keep the flags that are locked on the source
     * mount (nosuid, nodev, noexec, atime), or the kernel refuses it with EPERM. */
    struct statvfs sv;
    if (statvfs("/usr", &sv) < 0)
        die("statvfs /usr: %s", strerror(errno));
    usr_locked = MS_NOSUID | MS_NODEV;
    if (sv.f_flag & ST_NOEXEC)
        usr_locked |= MS_NOEXEC;
    if (sv.f_flag & ST_NOATIME)
        usr_locked |= MS_NOATIME;
    if (sv.f_flag & ST_NODIRATIME)
        usr_locked |= MS_NODIRATIME;
    if (sv.f_flag & ST_RELATIME)
        usr_locked |= MS_RELATIME;
}

/* ---------------------------------------------------------------------------------------------
 * A tiny HTTP/1.1 keep-alive client: one request written in one write(), headers read up to the
 * blank line, then exactly Content-Length bytes of body.
 */

struct conn {
    int fd;
    char host[160];
    char buf[65536];
    size_t len; /* bytes in buf not yet consumed */
};

struct resp {
    int status;
    char *body; /* NUL-terminated, owned by the caller */
    size_t body_len;
};

static char url_host[128], url_port[16];

static void parse_url(const char *url)
{
    const char *p = url;
    if (strncmp(p, "http://", 7) != 0)
        die("--url must start with http://");
    p += 7;
    const char *colon = strchr(p, ':');
    const char *slash = strchr(p, '/');
    if (!colon || (slash && slash < colon))
        die("--url must be http://HOST:PORT");
    size_t hl = (size_t)(colon - p);
    if (hl == 0 || hl >= sizeof(url_host))
        die("bad host in --url");
    memcpy(url_host, p, hl);
    url_host[hl] = '\0';
    size_t pl = slash ? (size_t)(slash - colon - 1) : strlen(colon + 1);
    if (pl == 0 || pl >= sizeof(url_port))
        die("bad port in --url");
    memcpy(url_port, colon + 1, pl);
    url_port[pl] = '\0';
}

static void conn_open(struct conn *c)
{
    struct addrinfo hints, *ai;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int r = getaddrinfo(url_host, url_port, &hints, &ai);
    if (r != 0)
        die("getaddrinfo %s:%s: %s", url_host, url_port, gai_strerror(r));
    c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket: %s", strerror(errno));
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0)
        die("connect %s:%s: %s", url_host, url_port, strerror(errno));
    freeaddrinfo(ai);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    snprintf(c->host, sizeof(c->host), "%s:%s", url_host, url_port);
    c->len = 0;
}

static void conn_fill(struct conn *c)
{
    if (c->len == sizeof(c->buf))
        die("response headers too large");
    ssize_t n;
    do
        n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        die("read: %s", strerror(errno));
    if (n == 0)
        die("server closed the connection");
    c->len += (size_t)n;
}

static struct resp http(struct conn *c, const char *method, const char *path, const char *body)
{
    char req[1024];
    size_t bl = body ? strlen(body) : 0;
    int hn =
        snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %zu\r\n\r\n",
                 method, path, c->host, body ? "Content-Type: application/json\r\n" : "", bl);
    if (hn < 0 || (size_t)hn + bl >= sizeof(req))
        die("request too large");
    memcpy(req + hn, body ? body : "", bl);
    size_t total = (size_t)hn + bl, off = 0;
    while (off < total) {
        ssize_t w = write(c->fd, req + off, total - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            die("write: %s", strerror(errno));
        off += (size_t)w;
    }

    char *end;
    for (;;) {
        end = c->len ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
        if (end)
            break;
        conn_fill(c);
    }
    size_t hdr_len = (size_t)(end - c->buf) + 4;
    struct resp r = {0, NULL, 0};
    if (c->len < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0)
        die("bad status line");
    r.status = atoi(c->buf + 9);

    size_t clen = 0;
    int have_clen = 0;
    for (char *line = memchr(c->buf, '\n', hdr_len); line && line < c->buf + hdr_len;) {
        line++;
        char *eol = memchr(line, '\n', (size_t)(c->buf + hdr_len - line));
        if (!eol)
            break;
        if ((size_t)(eol - line) > 15 && strncasecmp(line, "content-length:", 15) == 0) {
            clen = strtoul(line + 15, NULL, 10);
            have_clen = 1;
        } else if ((size_t)(eol - line) > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0) {
            die("chunked responses are not supported by this client");
        }
        line = eol;
    }
    if (!have_clen && r.status != 204 && r.status != 304)
        die("%s %s: response without Content-Length", method, path);
    if (clen > sizeof(c->buf) - hdr_len)
        die("response body too large (%zu)", clen);
    while (c->len < hdr_len + clen)
        conn_fill(c);
    r.body = malloc(clen + 1);
    if (!r.body)
        die("out of memory");
    memcpy(r.body, c->buf + hdr_len, clen);
    r.body[clen] = '\0';
    r.body_len = clen;
    c->len -= hdr_len + clen;
    memmove(c->buf, c->buf + hdr_len + clen, c->len);
    return r;
}

/* ---------------------------------------------------------------------------------------------
 * warren measurements.
 */

static struct conn exec_conn, create_conn;
static char exec_path[128];
static const char exec_body[] = "{\"argv\":[\"true\"]}";

static void expect(const struct resp *r, int status, const char *what)
{
    if (r->status != status)
        die("%s: HTTP %d (wanted %d): %s", what, r->status, status, r->body ? r->body : "");
}

static void check_exec_ok(const struct resp *r)
{
    expect(r, 200, "exec");
    json_error_t je;
    json_t *o = json_loadb(r->body, r->body_len, 0, &je);
    json_t *ec = o ? json_object_get(o, "exit_code") : NULL;
    if (!json_is_integer(ec) || json_integer_value(ec) != 0)
        die("exec of true did not exit 0: %s", r->body);
    json_decref(o);
}

/* POST /v1/sandboxes {} → the id (caller frees). */
static char *create_sandbox(struct conn *c, double *t_done)
{
    struct resp r = http(c, "POST", "/v1/sandboxes", "{}");
    if (t_done)
        *t_done = now_ms();
    expect(&r, 201, "create");
    json_error_t je;
    json_t *o = json_loadb(r.body, r.body_len, 0, &je);
    const char *id = o ? json_string_value(json_object_get(o, "id")) : NULL;
    if (!id)
        die("create: no id in %s", r.body);
    char *out = strdup(id);
    json_decref(o);
    free(r.body);
    return out;
}

static void delete_sandbox(struct conn *c, const char *id)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    struct resp r = http(c, "DELETE", path, NULL);
    expect(&r, 204, "delete");
    free(r.body);
}

static double run_warren_exec(void)
{
    double t0 = now_ms();
    struct resp r = http(&exec_conn, "POST", exec_path, exec_body);
    double dt = now_ms() - t0;
    check_exec_ok(&r);
    free(r.body);
    return dt;
}

struct cycle_times {
    double create, create_exec, cycle, del;
};

static struct cycle_times run_warren_cycle(void)
{
    struct cycle_times t;
    double t0 = now_ms(), t1, t2, t3;
    char *id = create_sandbox(&create_conn, &t1);
    char path[128];
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/exec", id);
    struct resp r = http(&create_conn, "POST", path, exec_body);
    t2 = now_ms();
    check_exec_ok(&r);
    free(r.body);
    double t2b = now_ms(); /* exclude the JSON check from the DELETE part */
    delete_sandbox(&create_conn, id);
    t3 = now_ms();
    free(id);
    t.create = t1 - t0;
    t.create_exec = t2 - t0;
    t.del = t3 - t2b;
    t.cycle = t.create_exec + t.del;
    return t;
}

/* ---------------------------------------------------------------------------------------------
 * Main.
 */

enum { S_FORK, S_BWRAP, S_RAW, S_WEXEC, S_WCREATE, S_WCREATE_EXEC, S_WCYCLE, S_WDELETE, S_N };

static struct series S[S_N] = {
    [S_FORK] = {"fork_exec", NULL, 0, 0},
    [S_BWRAP] = {"bwrap", NULL, 0, 0},
    [S_RAW] = {"raw_clone", NULL, 0, 0},
    [S_WEXEC] = {"warren_exec", NULL, 0, 0},
    [S_WCREATE] = {"warren_create", NULL, 0, 0},
    [S_WCREATE_EXEC] = {"warren_create_exec", NULL, 0, 0},
    [S_WCYCLE] = {"warren_cycle", NULL, 0, 0},
    [S_WDELETE] = {"warren_delete", NULL, 0, 0},
};

static char tmpdir[] = "/tmp/bench_core.XXXXXX";
static char workspace[300];
static char *live_id; /* the exec sandbox, deleted at exit */

static void cleanup(void)
{
    in_cleanup = 1;
    if (live_id) {
        /* Best effort: a fresh connection, the old one may be mid-request. */
        struct conn *c = &create_conn;
        close(c->fd);
        conn_open(c);
        char *id = live_id;
        live_id = NULL;
        delete_sandbox(c, id);
        free(id);
    }
    if (workspace[0])
        rmdir(workspace);
    if (raw_root[0])
        rmdir(raw_root);
    rmdir(tmpdir);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_core --url http://HOST:PORT [--rounds N] [--warmup N] [--bwrap PATH]\n"
            "                  [--create-every N] [--only LIST] [--samples FILE] [--json]\n"
            "groups for --only: fork_exec,bwrap,raw_clone,warren_exec,warren_create\n");
    exit(2);
}

static void print_cmdline(FILE *f, char **argv, int json)
{
    for (int i = 0; argv[i]; i++) {
        if (i)
            fputc(' ', f);
        if (json) {
            for (const char *p = argv[i]; *p; p++)
                if (*p == '"' || *p == '\\')
                    fprintf(f, "\\%c", *p);
                else
                    fputc(*p, f);
        } else {
            fputs(argv[i], f);
        }
    }
}

static double ratio(int a, int b)
{
    double d = pct(&S[b], 0.5);
    return d > 0 ? pct(&S[a], 0.5) / d : 0;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *bwrap = "/usr/bin/bwrap";
    long rounds = 200, warmup = 5, create_every = 1;
    int json = 0;
    const char *only = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            usage();
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--url"))
            url = v;
        else if (!strcmp(a, "--rounds"))
            rounds = strtol(v, NULL, 10);
        else if (!strcmp(a, "--warmup"))
            warmup = strtol(v, NULL, 10);
        else if (!strcmp(a, "--bwrap"))
            bwrap = v;
        else if (!strcmp(a, "--samples")) {
            if (!(samples_out = fopen(v, "we")))
                die("%s: %s", v, strerror(errno));
            fputs("round,slot,name,ms\n", samples_out);
        } else if (!strcmp(a, "--only"))
            only = v;
        else if (!strcmp(a, "--create-every"))
            create_every = strtol(v, NULL, 10);
        else
            usage();
    }
    static const char *const groups[5] = {"fork_exec", "bwrap", "raw_clone", "warren_exec",
                                          "warren_create"};
    int on[5] = {1, 1, 1, 1, 1};
    if (only) {
        memset(on, 0, sizeof(on));
        char *list = strdup(only);
        for (char *save, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            int k = 0;
            while (k < 5 && strcmp(tok, groups[k]) != 0)
                k++;
            if (k == 5)
                die("--only: unknown group '%s'", tok);
            on[k] = 1;
        }
        free(list);
    }
    int need_warren = on[3] || on[4];
    if ((need_warren && !url) || rounds < 1 || warmup < 0 || create_every < 1)
        usage();
    if (need_warren)
        parse_url(url);
    signal(SIGPIPE, SIG_IGN);

    if (!mkdtemp(tmpdir))
        die("mkdtemp: %s", strerror(errno));
    atexit(cleanup);
    snprintf(workspace, sizeof(workspace), "%s/workspace", tmpdir);
    if (mkdir(workspace, 0755) < 0)
        die("mkdir %s: %s", workspace, strerror(errno));
    raw_prepare(tmpdir);

    static char *bw[] = {NULL,
                         "--unshare-all",
                         "--die-with-parent",
                         "--ro-bind",
                         "/usr",
                         "/usr",
                         "--symlink",
                         "usr/bin",
                         "/bin",
                         "--symlink",
                         "usr/lib",
                         "/lib",
                         "--symlink",
                         "usr/lib64",
                         "/lib64",
                         "--symlink",
                         "usr/sbin",
                         "/sbin",
                         "--proc",
                         "/proc",
                         "--dev",
                         "/dev",
                         "--tmpfs",
                         "/tmp",
                         "--bind",
                         NULL,
                         "/workspace",
                         "--chdir",
                         "/workspace",
                         "--new-session",
                         "/bin/true",
                         NULL};
    bw[0] = (char *)bwrap;
    bw[25] = workspace;
    bwrap_argv = bw;

    if (need_warren) {
        conn_open(&exec_conn);
        conn_open(&create_conn);
    }
    if (on[3]) {
        live_id = create_sandbox(&exec_conn, NULL);
        snprintf(exec_path, sizeof(exec_path), "/v1/sandboxes/%s/exec", live_id);
    }

    if (!json) {
        printf("bwrap command: ");
        print_cmdline(stdout, bwrap_argv, 0);
        printf("\nrounds: %ld (warm-up %ld), create cycle every %ld round(s)\n", rounds, warmup,
               create_every);
        fflush(stdout);
    }

    /* Warm-up: also proves every measurement works before any timing is kept. */
    for (long i = 0; i < warmup; i++) {
        if (on[0])
            run_fork_exec();
        if (on[1])
            run_bwrap();
        if (on[2])
            run_raw_clone();
        if (on[3])
            run_warren_exec();
        if (on[4])
            run_warren_cycle();
    }

    double t_start = now_ms();
    uint64_t rng = 0x9e3779b97f4a7c15ull; /* fixed seed: the same orders on every run */
    for (long r = 0; r < rounds; r++) {
        /* A fresh random order every round, so each measurement follows every other one equally
         * often (e.g. the asynchronous namespace teardown after a clone, or a sandbox's cgroup
         * removal, lands on every neighbour alike) and none has a fixed place in the round. */
        int order[5] = {0, 1, 2, 3, 4};
        for (int k = 4; k > 0; k--) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            int j = (int)(rng % (uint64_t)(k + 1)), tmp = order[k];
            order[k] = order[j];
            order[j] = tmp;
        }
        for (int k = 0; k < 5; k++) {
            if (!on[order[k]])
                continue;
            cur_round = r;
            cur_slot = k;
            switch (order[k]) {
            case 0:
                series_add(&S[S_FORK], run_fork_exec());
                break;
            case 1:
                series_add(&S[S_BWRAP], run_bwrap());
                break;
            case 2:
                series_add(&S[S_RAW], run_raw_clone());
                break;
            case 3:
                series_add(&S[S_WEXEC], run_warren_exec());
                break;
            case 4:
                if (r % create_every == 0) {
                    struct cycle_times t = run_warren_cycle();
                    series_add(&S[S_WCREATE], t.create);
                    series_add(&S[S_WCREATE_EXEC], t.create_exec);
                    series_add(&S[S_WCYCLE], t.cycle);
                    series_add(&S[S_WDELETE], t.del);
                }
                break;
            }
        }
        if (!json && (r + 1) % 50 == 0) {
            fprintf(stderr, "  %ld/%ld rounds (%.1f s)\n", r + 1, rounds,
                    (now_ms() - t_start) / 1e3);
        }
    }
    double elapsed = (now_ms() - t_start) / 1e3;
    if (samples_out && fclose(samples_out) != 0)
        die("--samples: %s", strerror(errno));

    for (int i = 0; i < S_N; i++)
        qsort(S[i].v, S[i].n, sizeof(double), cmp_double);

    struct {
        const char *name;
        int a, b;
    } ratios[] = {
        {"warren_exec/fork_exec", S_WEXEC, S_FORK},
        {"warren_create_exec/raw_clone", S_WCREATE_EXEC, S_RAW},
        {"warren_cycle/raw_clone", S_WCYCLE, S_RAW},
        {"warren_create_exec/bwrap", S_WCREATE_EXEC, S_BWRAP},
        {"warren_cycle/bwrap", S_WCYCLE, S_BWRAP},
        {"warren_exec/bwrap", S_WEXEC, S_BWRAP},
    };
    size_t nratios = sizeof(ratios) / sizeof(ratios[0]);
    struct utsname un;
    uname(&un);

    if (json) {
        printf("{\"kernel\":\"%s\",\"ncpu\":%ld,\"rounds\":%ld,\"warmup\":%ld,"
               "\"create_every\":%ld,\"elapsed_s\":%.3f,\"bwrap_cmd\":\"",
               un.release, sysconf(_SC_NPROCESSORS_ONLN), rounds, warmup, create_every, elapsed);
        print_cmdline(stdout, bwrap_argv, 1);
        printf("\",\"results_ms\":{");
        for (int i = 0; i < S_N; i++)
            printf("%s\"%s\":{\"n\":%zu,\"min\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
                   "\"max\":%.3f}",
                   i ? "," : "", S[i].name, S[i].n, pct(&S[i], 0), pct(&S[i], 0.5), pct(&S[i], 0.9),
                   pct(&S[i], 0.99), S[i].n ? S[i].v[S[i].n - 1] : 0.0);
        printf("},\"ratios_p50\":{");
        for (size_t i = 0; i < nratios; i++) {
            double rv = ratio(ratios[i].a, ratios[i].b);
            printf("%s\"%s\":", i ? "," : "", ratios[i].name);
            if (rv > 0)
                printf("%.3f", rv);
            else
                printf("null"); /* an input was not measured (--only) */
        }
        printf("}}\n");
    } else {
        printf("kernel %s, %ld CPUs, %.1f s measured\n\n", un.release,
               sysconf(_SC_NPROCESSORS_ONLN), elapsed);
        printf("%-20s %6s %9s %9s %9s %9s %9s\n", "name (ms)", "n", "min", "p50", "p90", "p99",
               "max");
        for (int i = 0; i < S_N; i++)
            if (S[i].n)
                printf("%-20s %6zu %9.3f %9.3f %9.3f %9.3f %9.3f\n", S[i].name, S[i].n,
                       pct(&S[i], 0), pct(&S[i], 0.5), pct(&S[i], 0.9), pct(&S[i], 0.99),
                       S[i].n ? S[i].v[S[i].n - 1] : 0.0);
        printf("\nratios of p50:\n");
        for (size_t i = 0; i < nratios; i++)
            if (ratio(ratios[i].a, ratios[i].b) > 0)
                printf("  %-30s %7.3f\n", ratios[i].name, ratio(ratios[i].a, ratios[i].b));
    }
    return 0;
}
