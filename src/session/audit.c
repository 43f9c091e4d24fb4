/*
 * audit — the append-only JSON-lines audit log (see audit.h).
 */
#include "session/audit.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/util.h"

#define READ_CHUNK (256u << 10)
/* Characters jansson writes as they are, so that a needle can be searched in the raw line. */
#define ID_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"

struct audit {
    pthread_mutex_t lock; /* writers, rotation, and the snapshot of audit_read() */
    char path[PATH_MAX];  /* <dir>/audit.log; rotated files add ".N" */
    int fd;               /* -1 after a failed reopen: retried on the next record */
    uint64_t size;        /* of audit.log, as written through fd */
    size_t max_bytes;
    int keep;
    int torn;           /* the file may end inside a line: the next record starts with '\n' */
    int failing;        /* writes fail: logged once, until one succeeds */
    int rotate_failing; /* rotation fails: logged once, until one succeeds */
    unsigned long lost; /* records dropped while failing */
};

/* ---- time ------------------------------------------------------------------------------------ */

void audit_format_time(int64_t ms, char *out, size_t cap)
{
    time_t secs = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    struct tm tm;
    char day[24];
    gmtime_r(&secs, &tm);
    strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, cap, "%s.%03dZ", day, (int)(ms - (int64_t)secs * 1000));
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads exactly `n` digits at *p (advancing it); -1 if they are not there. */
static int digits(const char **p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9')
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

static int days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

int audit_parse_time(const char *s, int64_t *out_ms)
{
    const char *p = s;
    int ms = 0, off = 0;
    if (!s)
        return -EINVAL;
    /* Each step reads only while the previous ones matched: never past the terminating NUL. */
    int year = digits(&p, 4), mon = -1, day = -1, hour = -1, min = -1, sec = -1;
    if (year >= 0 && *p == '-' && ++p && (mon = digits(&p, 2)) >= 0 && *p == '-' && ++p &&
        (day = digits(&p, 2)) >= 0 && (*p == 'T' || *p == 't') && ++p &&
        (hour = digits(&p, 2)) >= 0 && *p == ':' && ++p && (min = digits(&p, 2)) >= 0 &&
        *p == ':' && ++p)
        sec = digits(&p, 2);
    if (year < 0 || mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon) || hour < 0 ||
        hour > 23 || min < 0 || min > 59 || sec < 0 || sec > 60)
        return -EINVAL;
    if (*p == '.') {
        int n = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, n++)
            if (n < 3)
                ms = ms * 10 + (*p - '0');
        if (n == 0)
            return -EINVAL;
        for (; n < 3; n++)
            ms *= 10;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-' || *p == ' ') {
        int sign = *p++ == '-' ? -1 : 1;
        int oh = digits(&p, 2), om = -1;
        if (oh >= 0 && *p == ':' && ++p)
            om = digits(&p, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59)
            return -EINVAL;
        off = sign * (oh * 60 + om);
    } else {
        return -EINVAL;
    }
    if (*p)
        return -EINVAL;
    struct tm tm = {.tm_year = year - 1900,
                    .tm_mon = mon - 1,
                    .tm_mday = day,
                    .tm_hour = hour,
                    .tm_min = min,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    *out_ms = ((int64_t)t - (int64_t)off * 60) * 1000 + ms;
    return 0;
}

/* ---- writing --------------------------------------------------------------------------------- */

static void rotated_path(const struct audit *a, int n, char *out, size_t cap)
{
    snprintf(out, cap, "%s.%d", a->path, n);
}

/* Opens audit.log for appending (mode 0600 even if it existed with another mode) and learns its
 * size and whether it ends inside a line. Called with the lock held (or before sharing). */
static int open_current(struct audit *a)
{
    struct stat st;
    char last = '\n';
    int fd = open(a->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || fchmod(fd, 0600) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    if (st.st_size > 0) {
        int rfd = open(a->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (rfd < 0 || pread(rfd, &last, 1, st.st_size - 1) != 1)
            last = 0; /* unknown: a spare newline costs an empty line, which readers skip */
        if (rfd >= 0)
            close(rfd);
    }
    a->fd = fd;
    a->size = (uint64_t)st.st_size;
    a->torn = last != '\n';
    return 0;
}

/* Shifts the rotated files one up, makes audit.log audit.log.1 and opens a new audit.log. If
 * audit.log cannot be moved aside, writing goes on into it (over max_bytes) rather than losing
 * records. Lock held. */
static void rotate(struct audit *a)
{
    char from[PATH_MAX + 16], to[PATH_MAX + 16];
    int r = 0;
    for (int i = a->keep - 1; i >= 1; i--) {
        rotated_path(a, i, from, sizeof(from));
        rotated_path(a, i + 1, to, sizeof(to));
        if (rename(from, to) < 0 && errno != ENOENT && !r)
            r = -errno;
    }
    if (a->keep > 0) {
        rotated_path(a, 1, to, sizeof(to));
        if (rename(a->path, to) < 0)
            r = -errno;
    } else if (unlink(a->path) < 0) {
        r = -errno;
    }
    if (r < 0 && (a->keep == 0 || access(a->path, F_OK) == 0)) {
        if (!a->rotate_failing)
            log_error("audit: cannot rotate %s: %s (writing on into it; logged once)", a->path,
                      strerror(-r));
        a->rotate_failing = 1;
        return;
    }
    if (r < 0)
        log_warn("audit: rotating %s: %s (older rotated files may be out of order)", a->path,
                 strerror(-r));
    a->rotate_failing = 0;
    close(a->fd);
    a->fd = -1;
    a->size = 0;
    a->torn = 0;
    if ((r = open_current(a)) < 0)
        log_error("audit: cannot reopen %s after rotation: %s", a->path, strerror(-r));
}

/* Writes `line` ("\n" + record + "\n"; the leading newline is only used after a torn write).
 * Lock held. */
static int write_line(struct audit *a, const char *line, size_t len)
{
    int r;
    if (a->fd < 0 && (r = open_current(a)) < 0)
        goto fail;
    if (a->size > 0 && a->size + len - 1 > a->max_bytes) {
        rotate(a);
        if (a->fd < 0) {
            r = -EBADF;
            goto fail;
        }
    }
    if (!a->torn) {
        line++;
        len--;
    }
    ssize_t n;
    do
        n = write(a->fd, line, len);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)len) {
        a->size += len;
        a->torn = 0;
        if (a->failing)
            log_warn("audit: writing %s again; %lu records were lost", a->path, a->lost);
        a->failing = 0;
        a->lost = 0;
        return 0;
    }
    if (n >= 0) { /* a short write (disk full): the file now ends inside a line */
        a->size += (uint64_t)n;
        a->torn = 1;
        r = -ENOSPC;
    } else {
        r = -errno;
    }
fail:
    if (!a->failing)
        log_error("audit: cannot write %s: %s (records are dropped; logged once until writing "
                  "works again)",
                  a->path, strerror(-r));
    a->failing = 1;
    a->lost++;
    return r;
}

static int is_fixed_key(const char *k)
{
    return !strcmp(k, "ts") || !strcmp(k, "event") || !strcmp(k, "sandbox") ||
           !strcmp(k, "labels") || !strcmp(k, "caller");
}

/* The record as "\n" + JSON + "\n" (malloc'd), or NULL on ENOMEM. */
static char *format_line(const char *event, const char *sandbox_id, const json_t *labels,
                         json_t *fields, const char *caller, int full, size_t *len)
{
    char ts[32];
    audit_format_time(now_ms(), ts, sizeof(ts));
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "event", json_string(event));
    if (sandbox_id)
        json_object_set_new(o, "sandbox", json_string(sandbox_id));
    if (full && labels && json_is_object(labels))
        json_object_set_new(o, "labels", json_deep_copy(labels));
    if (caller)
        json_object_set_new(o, "caller", json_string(caller));
    const char *k;
    json_t *v;
    json_object_foreach(fields, k, v)
    {
        if (json_object_get(o, k) || (!full && strcmp(k, "ok") && strcmp(k, "error")))
            continue;
        if (is_fixed_key(k) && strcmp(k, "labels") != 0)
            continue;
        json_object_set(o, k, v);
    }
    if (!full)
        json_object_set_new(o, "truncated", json_true());
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text)
        return NULL;
    size_t n = strlen(text);
    char *line = malloc(n + 3);
    if (line) {
        line[0] = '\n';
        memcpy(line + 1, text, n);
        line[n + 1] = '\n';
        line[n + 2] = '\0';
        *len = n + 2;
    }
    free(text);
    return line;
}

int audit_record(struct audit *a, const char *event, const char *sandbox_id, const json_t *labels,
                 json_t *fields, const char *caller)
{
    size_t len = 0;
    int r = 0;
    if (!a || !event || !*event) {
        json_decref(fields);
        return a ? -EINVAL : 0;
    }
    if (fields && !json_is_object(fields)) {
        json_decref(fields);
        fields = NULL;
    }
    char *line = format_line(event, sandbox_id, labels, fields, caller, 1, &len);
    if (line && len - 1 > AUDIT_LINE_MAX) {
        free(line);
        line = format_line(event, sandbox_id, labels, fields, caller, 0, &len);
    }
    json_decref(fields);
    pthread_mutex_lock(&a->lock);
    if (line)
        r = write_line(a, line, len);
    else if (!a->failing)
        log_error("audit: out of memory formatting a record");
    if (!line)
        r = -ENOMEM;
    pthread_mutex_unlock(&a->lock);
    free(line);
    return r;
}

int audit_open(const char *dir, size_t max_bytes, int keep, struct audit **out)
{
    int r;
    if (!dir || keep < 0 || keep > AUDIT_KEEP_MAX)
        return -EINVAL;
    struct audit *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->fd = -1;
    a->max_bytes = max_bytes ? max_bytes : AUDIT_DEFAULT_MAX_BYTES;
    a->keep = keep;
    pthread_mutex_init(&a->lock, NULL);
    if (snprintf(a->path, sizeof(a->path), "%s/audit.log", dir) >= (int)sizeof(a->path) - 8) {
        r = -ENAMETOOLONG;
        goto error;
    }
    /* The log names every caller and command: only root may read it. */
    if ((r = util_mkdir_p(dir, 0700)) < 0)
        goto error;
    if (chmod(dir, 0700) < 0) {
        r = -errno;
        goto error;
    }
    if ((r = open_current(a)) < 0)
        goto error;
    *out = a;
    return 0;
error:
    audit_close(a);
    return r;
}

void audit_close(struct audit *a)
{
    if (!a)
        return;
    if (a->fd >= 0)
        close(a->fd);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

/* ---- reading --------------------------------------------------------------------------------- */

struct filter {
    const char *sandbox;
    const char *event;
    size_t event_len; /* without the trailing '*' of a prefix */
    int event_prefix;
    char sandbox_needle[128]; /* "sandbox":"<id>", to skip lines before parsing; "" if none */
    int64_t since, until;
};

/* The most recent `cap` matches, oldest at `head`. */
struct tail {
    json_t **items;
    size_t cap, count; /* count: matches seen, possibly more than cap */
};

static void tail_push(struct tail *t, json_t *o)
{
    size_t i = t->count % t->cap;
    json_decref(t->items[i]);
    t->items[i] = o;
    t->count++;
}

/* The "ts" of a line written by audit_record() starts it; reading it without a parse lets
 * lines outside [since, until] be skipped cheaply. Returns 0 and the time, or -1. */
static int line_time(const char *line, size_t len, int64_t *ms)
{
    static const char pre[] = "{\"ts\":\"";
    char ts[48];
    if (len < sizeof(pre) || memcmp(line, pre, sizeof(pre) - 1) != 0)
        return -1;
    const char *s = line + sizeof(pre) - 1, *q = memchr(s, '"', len - (sizeof(pre) - 1));
    if (!q || (size_t)(q - s) >= sizeof(ts))
        return -1;
    memcpy(ts, s, (size_t)(q - s));
    ts[q - s] = '\0';
    return audit_parse_time(ts, ms);
}

static void match_line(const struct filter *f, struct tail *t, const char *line, size_t len)
{
    int64_t ms;
    json_error_t je;
    if (line_time(line, len, &ms) < 0 || ms < f->since || ms > f->until)
        return;
    if (f->sandbox_needle[0] && !memmem(line, len, f->sandbox_needle, strlen(f->sandbox_needle)))
        return;
    json_t *o = json_loadb(line, len, 0, &je);
    if (!json_is_object(o))
        goto skip;
    const char *ev = json_string_value(json_object_get(o, "event"));
    const char *sb = json_string_value(json_object_get(o, "sandbox"));
    if (!ev || (f->sandbox && (!sb || strcmp(sb, f->sandbox) != 0)))
        goto skip;
    if (f->event &&
        (f->event_prefix ? strncmp(ev, f->event, f->event_len) != 0 : strcmp(ev, f->event) != 0))
        goto skip;
    tail_push(t, o);
    return;
skip:
    json_decref(o);
}

/* Feeds every complete line of the first `size` bytes of fd to match_line(). What follows the
 * last newline is a torn line (or one being written after the snapshot): ignored. */
static int scan_file(int fd, uint64_t size, const struct filter *f, struct tail *t, char *chunk)
{
    buf_t partial = BUF_INIT;
    uint64_t off = 0;
    int r = 0;
    while (off < size) {
        size_t want = size - off < READ_CHUNK ? (size_t)(size - off) : READ_CHUNK;
        ssize_t n = pread(fd, chunk, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0)
            break; /* shorter than it was: truncated behind our back */
        off += (uint64_t)n;
        const char *p = chunk, *end = chunk + n;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            if (!nl) {
                if (buf_append(&partial, p, (size_t)(end - p)) < 0)
                    r = -ENOMEM;
                break;
            }
            if (partial.len) {
                if (buf_append(&partial, p, (size_t)(nl - p)) < 0) {
                    r = -ENOMEM;
                    break;
                }
                match_line(f, t, partial.data, partial.len);
                buf_reset(&partial);
            } else if (nl > p) {
                match_line(f, t, p, (size_t)(nl - p));
            }
            p = nl + 1;
        }
        if (r < 0)
            break;
    }
    buf_free(&partial);
    return r;
}

int audit_read(struct audit *a, const char *sandbox, const char *since, const char *until,
               const char *event, size_t limit, json_t **out_array, int *truncated)
{
    struct filter f = {.sandbox = sandbox, .event = event, .since = INT64_MIN, .until = INT64_MAX};
    struct tail t = {.cap = limit};
    char path[PATH_MAX + 16];
    int *fds = NULL, nfds = 0, r = 0;
    uint64_t *sizes = NULL;
    char *chunk = NULL;
    json_t *arr = NULL;

    if (!a || limit == 0 || (since && audit_parse_time(since, &f.since) < 0) ||
        (until && audit_parse_time(until, &f.until) < 0))
        return -EINVAL;
    if (event) {
        f.event_len = strlen(event);
        f.event_prefix = f.event_len > 0 && event[f.event_len - 1] == '*';
        f.event_len -= (size_t)f.event_prefix;
    }
    if (sandbox && strlen(sandbox) < 100 && strspn(sandbox, ID_CHARS) == strlen(sandbox))
        snprintf(f.sandbox_needle, sizeof(f.sandbox_needle), "\"sandbox\":\"%s\"", sandbox);
    if (!(t.items = calloc(limit, sizeof(*t.items))) ||
        !(fds = calloc((size_t)a->keep + 1, sizeof(*fds))) ||
        !(sizes = calloc((size_t)a->keep + 1, sizeof(*sizes))) || !(chunk = malloc(READ_CHUNK))) {
        r = -ENOMEM;
        goto out;
    }
    /* The snapshot: every file opened, and its size taken, while no record or rotation can run;
     * later records and rotations do not change what is read. */
    pthread_mutex_lock(&a->lock);
    for (int i = a->keep; i >= 0 && r == 0; i--) {
        struct stat st;
        if (i > 0)
            rotated_path(a, i, path, sizeof(path));
        int fd = open(i > 0 ? path : a->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            if (errno != ENOENT)
                r = -errno;
            continue;
        }
        if (fstat(fd, &st) < 0) {
            r = -errno;
            close(fd);
            continue;
        }
        fds[nfds] = fd;
        sizes[nfds++] = (uint64_t)st.st_size;
    }
    pthread_mutex_unlock(&a->lock);
    for (int i = 0; i < nfds && r == 0; i++)
        r = scan_file(fds[i], sizes[i], &f, &t, chunk);
    if (r < 0 || !(arr = json_array())) {
        r = r < 0 ? r : -ENOMEM;
        goto out;
    }
    size_t kept = t.count < limit ? t.count : limit;
    for (size_t i = 0; i < kept; i++) {
        size_t k = (t.count - kept + i) % limit;
        json_array_append_new(arr, t.items[k]);
        t.items[k] = NULL;
    }
    if (truncated)
        *truncated = t.count > limit;
    *out_array = arr;
out:
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    for (size_t i = 0; t.items && i < limit; i++)
        json_decref(t.items[i]);
    free(t.items);
    free(fds);
    free(sizes);
    free(chunk);
    return r;
}

#define COMMAND_MAX 1024 /* bytes of argv or shell kept */

/* A copy of s cut to at most `max` bytes, never inside a UTF-8 character. */
static json_t *cut_string(const char *s, size_t len, size_t max, int *cut)
{
    if (len > max) {
        len = util_utf8_complete_prefix(s, max);
        *cut = 1;
    }
    return json_stringn(s, len);
}

json_t *audit_command(const json_t *body)
{
    json_t *o = json_object(), *argv = json_object_get(body, "argv");
    json_t *shell = json_object_get(body, "shell"), *v;
    size_t budget = COMMAND_MAX, i;
    int cut = 0;
    if (!o)
        return NULL;
    if (json_is_array(argv)) {
        json_t *out = json_array();
        json_array_foreach(argv, i, v)
        {
            if (!json_is_string(v))
                continue;
            if (budget == 0) {
                cut = 1;
                break;
            }
            size_t len = json_string_length(v);
            json_array_append_new(out, cut_string(json_string_value(v), len, budget, &cut));
            budget -= len < budget ? len : budget;
        }
        json_object_set_new(o, "argv", out);
    } else if (json_is_string(shell)) {
        json_object_set_new(
            o, "shell",
            cut_string(json_string_value(shell), json_string_length(shell), COMMAND_MAX, &cut));
    }
    if (cut)
        json_object_set_new(o, "command_truncated", json_true());
    json_t *cwd = json_object_get(body, "cwd"), *timeout = json_object_get(body, "timeout_s");
    int cwd_cut = 0; /* not the command's */
    if (json_is_string(cwd))
        json_object_set_new(
            o, "cwd",
            cut_string(json_string_value(cwd), json_string_length(cwd), COMMAND_MAX, &cwd_cut));
    if (json_is_number(timeout))
        json_object_set(o, "timeout_s", timeout);
    return o;
}
