/*
 * compat_atropos — the atropos slot protocol. See compat_atropos.h and shared/compat-atropos.md.
 *
 * Where the protocol leaves details open, the seed server's observable behaviour is followed
 * (messages, defaults, Python's way of printing values), except where it behaves badly: a
 * timeout kills everything the command started, a stateful timeout interrupts the command but
 * keeps the shell, symlinks are resolved inside the sandbox, never on the host.
 */
#include "api/compat_atropos.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/json.h"
#include "core/log.h"
#include "core/util.h"
#include "net/dispatch.h"
#include "session/audit.h"
#include "session/exec.h"
#include "session/files.h"
#include "session/keys.h"
#include "session/network.h"
#include "session/shell.h"
#include "session/terminal.h"

#define MAX_SLOTS 256
#define MAX_OUTPUT_CHARS 50000 /* per stream, and for tmux/stateful output */
/* Output is cut by characters (as the reference does on decoded text); collecting 4 bytes per
 * character (+1) is always enough to know that a stream had more than the limit. */
#define COLLECT_BYTES (MAX_OUTPUT_CHARS * 4 + 4)
#define TRUNC_MARK "\n... (output truncated)"
#define MAX_FILE_SIZE 100000
#define MAX_ARTIFACT_BYTES 5000000
#define MAX_ARTIFACT_ENTRIES 5000
#define MAX_WALK_ENTRIES 200000 /* entries listed to find the files of an archive */
#define DEFAULT_TIMEOUT 30.0
#define PANE_W 120
#define PANE_H 40
#define STREAM_DEFAULT 50000
#define STREAM_MAX 200000
#define ECHO_WAIT_S 0.5 /* keys that produce no output at all count as seen after this */
#define MAX_SYMLINKS 40
#define DENIED "Access denied: path outside workspace"
#define REC_NAME ".asciinema.cast"

struct atr_slot;
struct atr_job;
struct atr_fwork;
struct atr_wait;

enum job_kind { JOB_EXECUTE, JOB_RESET, JOB_ART_READ, JOB_ART_LIST, JOB_ART_ARCHIVE };

/* Answers the job's request (or its place in a batch). Consumes `resp`. */
typedef void (*job_done_fn)(struct atr_job *job, int status, json_t *resp);

struct atr_job {
    struct atr_slot *slot;
    struct atr_job *next; /* in the slot's queue */
    enum job_kind kind;
    json_t *body; /* the request object (owned) */
    job_done_fn done;
    void *owner; /* http_req_t, or the batch */
    size_t index;
    int running;
    int cancelled; /* the client went away */
    int abandoned; /* its batch's client went away: do not start it */
    /* what is in flight (at most one) */
    struct exec *ex;
    struct shell_run *run;
    struct atr_wait *wait;        /* tmux send_keys without block: a plain min_wait_s */
    struct terminal_wait *settle; /* tmux send_keys with block */
    struct atr_fwork *fw;
    unsigned long long since; /* bash: start, in clock ticks after boot (as /proc/<pid>/stat) */
    double max_wait;          /* tmux: how long a blocking send_keys waits */
    int network;              /* bash: ran with allow_network (egress mode open) */
};

struct atr_slot {
    struct atropos *a;
    unsigned idx;
    char name[24];
    struct sandbox *sb; /* referenced; NULL while there is none */
    int creating;
    struct atr_job *head, *tail; /* waiting */
    struct atr_job *cur;         /* running */
    int pumping;
    char shell_id[SHELL_ID_MAX];
    char term_id[TERMINAL_ID_MAX];
    int pane_w, pane_h;
    uint64_t stream_offset; /* tmux stream: recording offset after the last stream call */
};

struct atropos {
    struct registry *reg;
    struct audit *audit;
    const struct session_limits *limits;
    int stopping;
    unsigned n;
    struct atr_slot *slots;
};

struct atr_batch {
    http_req_t *req;
    json_t *results;
    struct atr_job **jobs; /* NULL once answered */
    size_t n;
    size_t pending;
};

static void slot_pump(struct atr_slot *s);

/* ---- Python-compatible text ----------------------------------------------------------------- */

/* Appends bytes decoded as Python's .decode("utf-8", errors="replace") would, up to max_chars
 * characters (*cut = 1 when input remained). Returns the number of characters appended. */
static size_t py_decode(buf_t *out, const char *data, size_t len, size_t max_chars, int *cut)
{
    const unsigned char *s = (const unsigned char *)data;
    size_t i = 0, chars = 0, run = 0;
    if (cut)
        *cut = 0;
    buf_reserve(out, len < max_chars ? len : max_chars);
    while (i < len) {
        if (chars == max_chars) {
            if (cut)
                *cut = 1;
            break;
        }
        /* An invalid sequence's maximal subpart, or a sequence cut by the end of the data, is
         * one U+FFFD, as Python's errors="replace" has it. */
        size_t n;
        if (util_utf8_seq(s + i, len - i, &n) == UTIL_UTF8_VALID) {
            i += n;
            run += n;
        } else {
            buf_append(out, s + i - run, run);
            run = 0;
            buf_append(out, "\xEF\xBF\xBD", 3);
            i += n;
        }
        chars++;
    }
    buf_append(out, s + i - run, run);
    return chars;
}

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

/* The code point at s (valid UTF-8), its length in *n. */
static uint32_t utf8_cp(const unsigned char *s, size_t *n)
{
    if (s[0] < 0x80)
        return *n = 1, s[0];
    if (s[0] < 0xE0)
        return *n = 2, ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    if (s[0] < 0xF0)
        return *n = 3,
               ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    return *n = 4, ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
                       ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

/* str.isspace() */
static int py_isspace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* str.strip() on valid UTF-8: the [*start, *end) that remains. */
static void py_strip(const char *data, size_t len, size_t *start, size_t *end)
{
    const unsigned char *s = (const unsigned char *)data;
    size_t a = 0, b = len, n;
    while (a < b && py_isspace(utf8_cp(s + a, &n)))
        a += n;
    while (b > a) {
        size_t k = b - 1;
        while (k > a && (s[k] & 0xC0) == 0x80)
            k--;
        if (!py_isspace(utf8_cp(s + k, &n)))
            break;
        b = k;
    }
    *start = a;
    *end = b;
}

/* repr(float): the shortest digits that read back as v, in exponent form outside 1e-4..1e16. */
static void py_float_repr(double v, buf_t *out)
{
    char tmp[48], digits[24];
    int nd = 0;
    if (isnan(v) || isinf(v)) {
        buf_append_str(out, isnan(v) ? "nan" : v < 0 ? "-inf" : "inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    const char *p = tmp;
    if (*p == '-') {
        buf_append_str(out, "-");
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < (int)sizeof(digits) - 1)
            digits[nd++] = *p;
    int exp = *p == 'e' ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int decpt = exp + 1;
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            buf_append_str(out, "0.");
            for (int i = 0; i < -decpt; i++)
                buf_append_str(out, "0");
            buf_append(out, digits, (size_t)nd);
        } else if (decpt >= nd) {
            buf_append(out, digits, (size_t)nd);
            for (int i = nd; i < decpt; i++)
                buf_append_str(out, "0");
            buf_append_str(out, ".0");
        } else {
            buf_append(out, digits, (size_t)decpt);
            buf_append_str(out, ".");
            buf_append(out, digits + decpt, (size_t)(nd - decpt));
        }
        return;
    }
    buf_append(out, digits, 1);
    if (nd > 1) {
        buf_append_str(out, ".");
        buf_append(out, digits + 1, (size_t)(nd - 1));
    }
    buf_appendf(out, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
}

/* str(value) of a decoded JSON value, as an f-string in the reference prints it. */
static void py_str(json_t *v, buf_t *out)
{
    if (!v || json_is_null(v))
        buf_append_str(out, "None");
    else if (json_is_string(v))
        buf_append(out, json_string_value(v), json_string_length(v));
    else if (json_is_integer(v))
        buf_appendf(out, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        py_float_repr(json_real_value(v), out);
    else if (json_is_boolean(v))
        buf_append_str(out, json_is_true(v) ? "True" : "False");
    else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        buf_append_str(out, s ? s : "");
        free(s);
    }
}

/* bool(value) */
static int py_truthy(json_t *v)
{
    if (!v || json_is_null(v) || json_is_false(v))
        return 0;
    if (json_is_integer(v))
        return json_integer_value(v) != 0;
    if (json_is_real(v))
        return json_real_value(v) != 0.0;
    if (json_is_string(v))
        return json_string_length(v) > 0;
    if (json_is_array(v))
        return json_array_size(v) > 0;
    if (json_is_object(v))
        return json_object_size(v) > 0;
    return 1;
}

/* int(value); -EINVAL where Python would raise. */
static int py_int(json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d > -9.2e18 && d < 9.2e18))
            return -EINVAL;
        *out = (long long)d;
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        while (*s == ' ' || (*s >= '\t' && *s <= '\r'))
            s++;
        errno = 0;
        long long n = strtoll(s, &end, 10);
        if (end == s || errno)
            return -EINVAL;
        while (*end == ' ' || (*end >= '\t' && *end <= '\r'))
            end++;
        if (*end)
            return -EINVAL;
        *out = n;
        return 0;
    }
    return -EINVAL;
}

/* float(value), finite values only. */
static int py_float(json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        double d = strtod(s, &end);
        while (*end == ' ' || (*end >= '\t' && *end <= '\r'))
            end++;
        if (end == s || *end || !isfinite(d))
            return -EINVAL;
        *out = d;
        return 0;
    }
    return -EINVAL;
}

/* The reference's _clamp_int: absent or not an int → def, else clamped. */
static long long clamp_int(json_t *v, long long def, long long lo, long long hi)
{
    long long n;
    if (!v || json_is_null(v) || py_int(v, &n) < 0)
        return def;
    return n < lo ? lo : n > hi ? hi : n;
}

/* (value or default).strip().lower() for action/encoding/format names. */
static void py_name(json_t *v, const char *def, buf_t *out)
{
    buf_t raw = BUF_INIT;
    if (py_truthy(v))
        py_str(v, &raw);
    else
        buf_append_str(&raw, def);
    size_t a, b;
    py_strip(raw.data, raw.len, &a, &b);
    for (size_t i = a; i < b; i++) {
        char c = raw.data[i];
        buf_append(out, &(char){c >= 'A' && c <= 'Z' ? (char)(c + 32) : c}, 1);
    }
    if (!out->data)
        buf_append(out, "", 0);
    buf_free(&raw);
}

/* ---- responses ------------------------------------------------------------------------------ */

/* An ExecuteResponse: {success, output, error, execution_id, metadata}. `meta` is stolen. */
static json_t *xresp(int success, const char *out, size_t outlen, const char *err, json_t *meta)
{
    json_t *o = json_object();
    json_object_set_new(o, "success", json_boolean(success));
    json_t *os = json_stringn(out ? out : "", out ? outlen : 0);
    json_object_set_new(o, "output", os ? os : json_string(""));
    json_t *es = json_string(err ? err : "");
    json_object_set_new(o, "error", es ? es : json_string("(unprintable error)"));
    json_object_set_new(o, "execution_id", json_null());
    json_object_set_new(o, "metadata", meta ? meta : json_object());
    return o;
}

static json_t *xfailv(json_t *meta, const char *fmt, va_list ap)
{
    buf_t m = BUF_INIT;
    buf_vappendf(&m, fmt, ap);
    json_t *o = xresp(0, "", 0, m.data ? m.data : "", meta);
    buf_free(&m);
    return o;
}

static json_t *xfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *xfail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *o = xfailv(NULL, fmt, ap);
    va_end(ap);
    return o;
}

static json_t *xfail_meta(json_t *meta, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static json_t *xfail_meta(json_t *meta, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *o = xfailv(meta, fmt, ap);
    va_end(ap);
    return o;
}

/* {"success": false, "error": ...} for the non-execute routes. */
static json_t *plain_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *plain_fail(const char *fmt, ...)
{
    buf_t m = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    buf_vappendf(&m, fmt, ap);
    va_end(ap);
    json_t *e = json_string(m.data ? m.data : "");
    json_t *o = json_pack("{s:b, s:o}", "success", 0, "error", e ? e : json_string("error"));
    buf_free(&m);
    return o;
}

static void respond(http_req_t *req, int status, json_t *o)
{
    http_respond_json(req, status,
                      o ? o : json_pack("{s:b, s:s}", "success", 0, "error", "out of memory"));
}

/* Parses a POST body; answers 400 "Invalid JSON" and returns NULL if it is not JSON. */
static json_t *parse_body(http_req_t *req)
{
    size_t len;
    json_error_t je;
    const char *text = http_req_body(req, &len);
    json_t *v = json_loadb(text ? text : "", len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!v)
        respond(req, 400, plain_fail("Invalid JSON"));
    return v;
}

/* The body as an object; answers 400 otherwise. */
static json_t *parse_object(http_req_t *req)
{
    json_t *v = parse_body(req);
    if (v && !json_is_object(v)) {
        json_decref(v);
        respond(req, 400, plain_fail("Expected a JSON object"));
        return NULL;
    }
    return v;
}

/* Appends the text of a stream cut at MAX_OUTPUT_CHARS characters with the mark. */
static void stream_text(buf_t *out, const buf_t *b)
{
    int cut;
    py_decode(out, b->data ? b->data : "", b->len, MAX_OUTPUT_CHARS, &cut);
    if (cut)
        buf_append_str(out, TRUNC_MARK);
}

/* ---- slots and their queues ----------------------------------------------------------------- */

static struct atr_slot *find_slot(struct atropos *a, json_t *id)
{
    const char *s = json_string_value(id);
    if (!a || !s || strncmp(s, "slot_", 5) != 0 || strlen(s) != json_string_length(id))
        return NULL;
    s += 5;
    if (!*s || (s[0] == '0' && s[1]) || strlen(s) > 3)
        return NULL;
    unsigned v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return NULL;
        v = v * 10 + (unsigned)(*s - '0');
    }
    return v < a->n ? &a->slots[v] : NULL;
}

static struct shell *slot_shell(struct atr_slot *s)
{
    return s->sb && s->shell_id[0] ? shell_find(s->sb, s->shell_id) : NULL;
}

static struct terminal *slot_terminal(struct atr_slot *s)
{
    return s->sb && s->term_id[0] ? terminal_find(s->sb, s->term_id) : NULL;
}

static void slot_forget_session(struct atr_slot *s)
{
    s->shell_id[0] = s->term_id[0] = '\0';
    s->pane_w = PANE_W;
    s->pane_h = PANE_H;
    s->stream_offset = 0;
}

static void job_free(struct atr_job *job)
{
    json_decref(job->body);
    free(job);
}

/* Ends a job: answers it, frees it, lets the slot run the next one. */
static void job_finish(struct atr_job *job, int status, json_t *resp)
{
    struct atr_slot *s = job->slot;
    if (s->cur == job)
        s->cur = NULL;
    if (!resp)
        resp = xfail("out of memory");
    if (job->kind == JOB_EXECUTE) {
        json_t *eid = json_object_get(job->body, "execution_id");
        json_object_set(resp, "execution_id", eid ? eid : json_null());
    }
    job->done(job, status, resp);
    job_free(job);
    slot_pump(s);
}

/* The answer for a job that cannot run, in its route's format. */
static void job_fail(struct atr_job *job, const char *msg)
{
    if (job->kind == JOB_EXECUTE || job->kind == JOB_RESET)
        job_finish(job, 200, xfail("%s", msg));
    else
        job_finish(job, 503, plain_fail("%s", msg));
}

static void slot_fail_waiting(struct atr_slot *s, const char *why)
{
    int was = s->pumping;
    s->pumping = 1; /* the jobs' ends must not start a new creation from in here */
    struct atr_job *job;
    while ((job = s->head)) {
        s->head = job->next;
        if (!s->head)
            s->tail = NULL;
        job->next = NULL;
        char msg[600];
        snprintf(msg, sizeof(msg), "Slot unavailable: %s", why);
        job_fail(job, msg);
    }
    s->pumping = was;
}

static void on_slot_created(struct sandbox *sb, enum session_err e, const char *msg, void *arg)
{
    struct atr_slot *s = arg;
    s->creating = 0;
    if (!sb) {
        log_warn("atropos: creating the sandbox of %s failed: %s", s->name,
                 msg ? msg : session_err_name(e));
        slot_fail_waiting(s, msg ? msg : "sandbox creation failed");
        return;
    }
    sandbox_ref(sb);
    s->sb = sb;
    slot_forget_session(s);
    log_debug("atropos: %s is sandbox %s", s->name, sb->id);
    slot_pump(s);
}

static void slot_create(struct atr_slot *s)
{
    struct atropos *a = s->a;
    char msg[512];
    json_t *labels = json_pack("{s:s}", "slot", s->name);
    struct sandbox_spec spec = {
        .name = s->name, .template_name = "host", .labels = labels, .res = a->limits->defaults};
    enum session_err st = labels
                              ? sandbox_create(a->reg, &spec, on_slot_created, s, msg, sizeof(msg))
                              : SESSION_ERR_NOMEM;
    json_decref(labels);
    if (st) {
        if (!labels)
            snprintf(msg, sizeof(msg), "out of memory");
        log_warn("atropos: cannot create the sandbox of %s: %s", s->name, msg);
        slot_fail_waiting(s, msg);
        return;
    }
    s->creating = 1;
}

/* True when the slot's sandbox runs; otherwise makes sure one is on its way (a slot whose
 * sandbox died, or was deleted through the native API, gets a new one). */
static int slot_ready(struct atr_slot *s)
{
    if (s->sb && s->sb->state == SB_RUNNING)
        return 1;
    if (s->creating)
        return 0;
    if (s->sb) {
        log_warn("atropos: the sandbox of %s is %s; replacing it", s->name,
                 sandbox_state_name(s->sb->state));
        if (s->sb->state == SB_FAILED)
            sandbox_destroy(s->sb, NULL, NULL);
        sandbox_unref(s->sb);
        s->sb = NULL;
        slot_forget_session(s);
    }
    if (s->a->stopping) {
        slot_fail_waiting(s, "the daemon is shutting down");
        return 0;
    }
    slot_create(s);
    return 0;
}

static void job_start(struct atr_job *job);

static void slot_pump(struct atr_slot *s)
{
    if (s->pumping)
        return;
    s->pumping = 1;
    while (!s->cur && s->head && slot_ready(s)) {
        struct atr_job *job = s->head;
        s->head = job->next;
        if (!s->head)
            s->tail = NULL;
        job->next = NULL;
        s->cur = job;
        job->running = 1;
        job_start(job); /* may finish at once; the loop then takes the next */
    }
    s->pumping = 0;
}

static struct atr_job *job_new(struct atr_slot *s, enum job_kind kind, json_t *body,
                               job_done_fn done, void *owner, size_t index)
{
    struct atr_job *job = calloc(1, sizeof(*job));
    if (!job)
        return NULL;
    job->slot = s;
    job->kind = kind;
    job->body = json_incref(body);
    job->done = done;
    job->owner = owner;
    job->index = index;
    return job;
}

static void job_enqueue(struct atr_job *job)
{
    struct atr_slot *s = job->slot;
    if (s->tail)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
}

static void wait_end(struct atr_wait *w, json_t *resp);
static void fw_cancel(struct atr_fwork *fw);

/* The client went away. */
static void job_cancel(struct atr_job *job)
{
    if (job->cancelled)
        return;
    job->cancelled = 1;
    if (!job->running) {
        struct atr_slot *s = job->slot;
        struct atr_job *prev = NULL;
        for (struct atr_job *j = s->head; j; prev = j, j = j->next) {
            if (j != job)
                continue;
            if (prev)
                prev->next = j->next;
            else
                s->head = j->next;
            if (s->tail == j)
                s->tail = prev;
            break;
        }
        job->next = NULL;
        job_fail(job, "Cancelled: the client went away");
        return;
    }
    if (job->ex)
        exec_cancel(job->ex); /* SIGKILL to its process group; the callback still comes */
    else if (job->run)
        shell_run_cancel(job->run);
    else if (job->wait)
        wait_end(job->wait, xfail("Cancelled: the client went away"));
    else if (job->settle) {
        terminal_wait_cancel(job->settle);
        job->settle = NULL;
        job_finish(job, 200, xfail("Cancelled: the client went away"));
    } else if (job->fw) /* the worker stops between files; the job ends when it returns */
        fw_cancel(job->fw);
}

/* ---- bash ----------------------------------------------------------------------------------- */

/* The request's timeout: absent or null → 30; a number (or bool, as in Python). */
static int job_timeout(struct atr_job *job, double *t)
{
    json_t *v = json_object_get(job->body, "timeout");
    if (!v || json_is_null(v)) {
        *t = DEFAULT_TIMEOUT;
        return 0;
    }
    if (json_is_number(v) || json_is_boolean(v))
        return py_float(v, t);
    return -EINVAL;
}

/* The timeout as the reference prints it: the request's value (30.0 when absent). */
static json_t *timed_out_resp(struct atr_job *job, json_t *meta)
{
    json_t *v = json_object_get(job->body, "timeout");
    buf_t t = BUF_INIT;
    if (!v || json_is_null(v))
        buf_append_str(&t, "30.0");
    else
        py_str(v, &t);
    json_t *o = xfail_meta(meta, "Command timed out after %ss", t.data ? t.data : "");
    buf_free(&t);
    return o;
}

static double cap_timeout(struct atr_job *job, double t)
{
    double max = job->slot->a->limits->exec_timeout_max_s;
    return t > max ? max : t;
}

/* ---- what a killed command leaves behind ----------------------------------------------------- */

/* A timeout (or a client that went away) SIGKILLs the command's process group, but children
 * that called setsid() or setpgid() have left it. They are found from the host, without trusting
 * anything the sandbox says: every process in the slot sandbox's pid namespace that started
 * after the command did and whose session does not predate the command (the persistent shell's
 * and the terminal's sessions do, as do background jobs of earlier calls) is killed. Repeated
 * until a pass finds nothing, so children forked meanwhile die too. On the thread pool: it reads
 * /proc. */
struct reap_work {
    uv_work_t work;
    struct atr_job *job;
    json_t *resp;
    pid_t init_pid;
    unsigned long long since;
};

static unsigned long long boot_ticks(void)
{
    struct timespec ts;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        hz = 100;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (unsigned long long)ts.tv_sec * (unsigned long long)hz +
           (unsigned long long)ts.tv_nsec / (1000000000ull / (unsigned long long)hz);
}

/* Session id and start time (ticks after boot) of a host pid, from /proc/<pid>/stat. */
static int pid_stat(pid_t pid, pid_t *session, unsigned long long *start)
{
    char path[64], buf[1024], *save = NULL;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -EIO;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may contain anything but ends there */
    if (!p || !p[1])
        return -EIO;
    int i = 0, got = 0;
    for (char *tok = strtok_r(p + 2, " ", &save); tok; tok = strtok_r(NULL, " ", &save), i++) {
        if (i == 3) /* fields after the name: state ppid pgrp session ... starttime (20th) */
            *session = (pid_t)atoi(tok), got++;
        if (i == 19) {
            *start = strtoull(tok, NULL, 10), got++;
            break;
        }
    }
    return got == 2 ? 0 : -EIO;
}

static void reap_run(uv_work_t *w)
{
    struct reap_work *rw = w->data;
    char path[64];
    struct stat ns;
    snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)rw->init_pid);
    if (rw->init_pid <= 0 || stat(path, &ns) < 0)
        return;
    for (int pass = 0; pass < 20; pass++) {
        int killed = 0;
        DIR *d = opendir("/proc");
        if (!d)
            return;
        struct dirent *de;
        while ((de = readdir(d))) {
            char *end;
            long v = strtol(de->d_name, &end, 10);
            pid_t pid = (pid_t)v, sess, lsess;
            unsigned long long start, lstart;
            struct stat pns;
            if (*end || v <= 0 || pid == rw->init_pid || pid_stat(pid, &sess, &start) < 0 ||
                start < rw->since)
                continue;
            snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)pid);
            if (stat(path, &pns) < 0 || pns.st_dev != ns.st_dev || pns.st_ino != ns.st_ino)
                continue;
            if (sess > 0 && sess != pid && pid_stat(sess, &lsess, &lstart) == 0 &&
                lstart < rw->since)
                continue; /* a session that was there before the command */
            /* The pidfd pins the process: check it is still the one looked at, then kill. */
            int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
            if (pfd < 0)
                continue;
            if (pid_stat(pid, &sess, &lstart) == 0 && lstart == start &&
                syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0) == 0)
                killed++;
            close(pfd);
        }
        closedir(d);
        if (!killed)
            break;
        usleep(10000);
    }
}

static void reap_after(uv_work_t *w, int status)
{
    struct reap_work *rw = w->data;
    struct atr_job *job = rw->job;
    json_t *resp = rw->resp;
    (void)status;
    free(rw);
    job_finish(job, 200, resp);
}

/* Kills what the job's command left (see above), then answers with `resp`. */
static void reap_then_finish(struct atr_job *job, json_t *resp)
{
    struct reap_work *rw = calloc(1, sizeof(*rw));
    struct sandbox *sb = job->slot->sb;
    if (!rw || sb->state != SB_RUNNING || sb->pid <= 0) {
        free(rw); /* no sandbox left: nothing of it is left either */
        job_finish(job, 200, resp);
        return;
    }
    rw->job = job;
    rw->resp = resp;
    rw->init_pid = sb->pid;
    rw->since = job->since;
    rw->work.data = rw;
    uv_queue_work(job->slot->a->reg->loop, &rw->work, reap_run, reap_after);
}

static void bash_done(struct exec *ex, struct exec_result *res, void *arg)
{
    struct atr_job *job = arg;
    job->ex = NULL;
    json_t *resp;
    if (res->timed_out) {
        resp = timed_out_resp(
            job, json_pack("{s:i, s:b, s:b}", "exit_code", -1, "timeout", 1, "sandboxed", 1));
    } else if (res->error) {
        resp = xfail_meta(json_pack("{s:b}", "sandboxed", 1),
                          "Failed to execute sandboxed command: %s",
                          res->error_msg ? res->error_msg : strerror(-res->error));
    } else {
        buf_t o = BUF_INIT, e = BUF_INIT, all = BUF_INIT;
        char err[48] = "";
        stream_text(&o, &res->out);
        stream_text(&e, &res->err);
        buf_append(&all, o.data ? o.data : "", o.len);
        if (e.len) {
            if (o.len)
                buf_append_str(&all, "\n[stderr]\n");
            buf_append(&all, e.data, e.len);
        }
        size_t a, b;
        py_strip(all.data, all.len, &a, &b);
        if (res->exit_code != 0)
            snprintf(err, sizeof(err), "Exit code: %d", res->exit_code);
        resp = xresp(res->exit_code == 0, all.data + a, b - a, err,
                     json_pack("{s:i, s:b, s:b}", "exit_code", res->exit_code, "sandboxed", 1,
                               "network_isolated", !job->network));
        buf_free(&o);
        buf_free(&e);
        buf_free(&all);
    }
    if (res->timed_out || job->cancelled)
        reap_then_finish(job, resp);
    else
        job_finish(job, 200, resp);
}

static void tool_bash(struct atr_job *job, json_t *args)
{
    struct atr_slot *s = job->slot;
    json_t *cv = json_object_get(args, "command");
    json_t *meta = json_pack("{s:b}", "sandboxed", 1);
    double timeout;
    if (cv && !json_is_string(cv)) {
        job_finish(job, 200,
                   xfail_meta(meta, "Failed to execute sandboxed command: 'command' must be a "
                                    "string"));
        return;
    }
    const char *command = cv ? json_string_value(cv) : "";
    if (cv && strlen(command) != json_string_length(cv)) {
        job_finish(job, 200,
                   xfail_meta(meta, "Failed to execute sandboxed command: embedded null byte"));
        return;
    }
    if (job_timeout(job, &timeout) < 0) {
        job_finish(job, 200, xfail_meta(meta, "Invalid timeout: expected a number of seconds"));
        return;
    }
    json_decref(meta);
    if (!(timeout > 0)) { /* expired before it started, as asyncio.wait_for would have it */
        job_finish(job, 200,
                   timed_out_resp(job, json_pack("{s:i, s:b, s:b}", "exit_code", -1, "timeout", 1,
                                                 "sandboxed", 1)));
        return;
    }
    /* allow_network (default true, Python truthiness): the slot's sandbox gets egress mode open
     * (public destinations through the daemon's proxy, never the host or private networks) or
     * none, for this command. A slot runs one job at a time, so the mode is the command's. */
    json_t *an = json_object_get(args, "allow_network");
    job->network = !an || py_truthy(an);
    int r = network_set_open(s->sb, job->network); /* usually the same as the last command's */
    if (r < 0) {
        job_finish(job, 200,
                   xfail_meta(json_pack("{s:b}", "sandboxed", 1),
                              "Failed to execute sandboxed command: network policy: %s",
                              session_strerror(r)));
        return;
    }
    const char *argv[] = {"/bin/sh", "-c", command, NULL};
    char **env = exec_build_env(s->sb, NULL, "xterm");
    struct exec_spec spec = {.argv = argv,
                             .env = (const char *const *)env,
                             .cwd = "/workspace",
                             .timeout_s = cap_timeout(job, timeout),
                             .max_output = COLLECT_BYTES};
    job->since = boot_ticks();
    r = env ? exec_start(s->sb, &spec, bash_done, job, &job->ex) : -ENOMEM;
    util_free_strv(env);
    if (r < 0)
        job_finish(job, 200,
                   xfail_meta(json_pack("{s:b}", "sandboxed", 1),
                              "Failed to execute sandboxed command: %s", session_strerror(r)));
}

/* ---- bash_stateful -------------------------------------------------------------------------- */

static void stateful_done(struct shell_result *res, void *arg)
{
    struct atr_job *job = arg;
    json_t *resp;
    job->run = NULL;
    if (res->error) {
        resp = xfail_meta(json_pack("{s:b}", "stateful", 1), "Failed to start stateful session: %s",
                          res->error_msg ? res->error_msg : strerror(-res->error));
    } else if (res->timed_out) {
        /* The shell interrupted the command (SIGINT, then SIGKILL to its process group) and
         * stays usable: cwd, variables and background jobs survive the timeout. */
        resp = timed_out_resp(job, json_pack("{s:i, s:b, s:b, s:b}", "exit_code", -1, "timeout", 1,
                                             "sandboxed", 1, "stateful", 1));
    } else {
        buf_t text = BUF_INIT, out = BUF_INIT;
        char err[48] = "";
        py_decode(&text, res->output.data ? res->output.data : "", res->output.len, SIZE_MAX, NULL);
        size_t a, b;
        py_strip(text.data, text.len, &a, &b);
        int cut;
        py_decode(&out, text.data + a, b - a, MAX_OUTPUT_CHARS, &cut);
        if (cut || res->truncated)
            buf_append_str(&out, TRUNC_MARK);
        if (res->exit_code != 0)
            snprintf(err, sizeof(err), "Exit code: %d", res->exit_code);
        resp = xresp(res->exit_code == 0, out.data, out.len, err,
                     json_pack("{s:i, s:b, s:b, s:b}", "exit_code", res->exit_code, "sandboxed", 1,
                               "network_isolated", 1, "stateful", 1));
        buf_free(&text);
        buf_free(&out);
    }
    job_finish(job, 200, resp);
}

static void tool_stateful(struct atr_job *job, json_t *args)
{
    struct atr_slot *s = job->slot;
    json_t *cv = json_object_get(args, "command");
    double timeout;
    size_t a = 0, b = 0;
    if (json_is_string(cv))
        py_strip(json_string_value(cv), json_string_length(cv), &a, &b);
    if (a == b) {
        job_finish(job, 200, xfail("Missing command"));
        return;
    }
    const char *cmd = json_string_value(cv);
    if (memchr(cmd + a, '\0', b - a)) {
        job_finish(job, 200, xfail("Failed to start stateful session: embedded null byte"));
        return;
    }
    if (job_timeout(job, &timeout) < 0) {
        job_finish(job, 200, xfail("Invalid timeout: expected a number of seconds"));
        return;
    }
    if (!(timeout > 0)) {
        job_finish(job, 200,
                   timed_out_resp(job, json_pack("{s:i, s:b, s:b, s:b}", "exit_code", -1, "timeout",
                                                 1, "sandboxed", 1, "stateful", 1)));
        return;
    }
    struct shell *sh = slot_shell(s);
    int r = 0;
    if (!sh) {
        char **env = exec_build_env(s->sb, NULL, "dumb");
        r = env ? shell_create(s->sb, (const char *const *)env, "/workspace", &sh) : -ENOMEM;
        util_free_strv(env);
        if (r == 0)
            snprintf(s->shell_id, sizeof(s->shell_id), "%s", shell_id(sh));
    }
    char *command = r == 0 ? strndup(cmd + a, b - a) : NULL;
    if (r == 0 && !command)
        r = -ENOMEM;
    /* The callback may run from inside shell_run (a shell that cannot be restarted fails at
     * once): job must not be touched after a successful call. */
    if (r == 0)
        r = shell_run(sh, command, cap_timeout(job, timeout), COLLECT_BYTES, stateful_done, job,
                      &job->run);
    free(command);
    if (r < 0)
        job_finish(job, 200,
                   xfail_meta(json_pack("{s:b}", "stateful", 1),
                              "Failed to start stateful session: %s", session_strerror(r)));
}

/* ---- tmux ----------------------------------------------------------------------------------- */

struct atr_wait {
    uv_timer_t timer;
    struct atr_job *job;
};

static void wait_closed(uv_handle_t *h)
{
    free(h->data);
}

static void wait_end(struct atr_wait *w, json_t *resp)
{
    struct atr_job *job = w->job;
    job->wait = NULL;
    uv_timer_stop(&w->timer);
    if (!uv_is_closing((uv_handle_t *)&w->timer))
        uv_close((uv_handle_t *)&w->timer, wait_closed);
    job_finish(job, 200, resp);
}

static json_t *keys_ok(int blocked)
{
    return xresp(1, "ok", 2, "", json_pack("{s:b, s:b}", "stateful", 1, "blocked", blocked));
}

static void wait_over(uv_timer_t *h)
{
    wait_end(h->data, keys_ok(0));
}

/* The blocking wait: the shell is back at its prompt and the terminal quiet (or the terminal is
 * gone: nothing left to wait for). */
static void keys_settled(enum terminal_settle how, void *arg)
{
    struct atr_job *job = arg;
    job->settle = NULL;
    if (how != TERMINAL_SETTLE_TIMEOUT) {
        job_finish(job, 200, keys_ok(1));
        return;
    }
    buf_t m = BUF_INIT;
    py_float_repr(job->max_wait, &m);
    json_t *r = xfail("tmux blocked keys timed out after %ss", m.data ? m.data : "");
    buf_free(&m);
    job_finish(job, 200, r);
}

static int wait_start(struct atr_job *job, struct terminal *t, int block, double min_wait,
                      double max_wait)
{
    if (block) {
        struct terminal_settle_spec spec = {
            .min_wait_s = min_wait, .max_wait_s = max_wait, .echo_wait_s = ECHO_WAIT_S};
        job->max_wait = max_wait;
        return terminal_wait_settled(t, &spec, keys_settled, job, &job->settle);
    }
    struct atr_wait *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->job = job;
    uv_timer_init(job->slot->a->reg->loop, &w->timer);
    w->timer.data = w;
    job->wait = w;
    uv_timer_start(&w->timer, wait_over, (uint64_t)ceil(min_wait * 1000), 0);
    return 0;
}

/* The slot's terminal, started (or resized) as asked: pane_width/pane_height are clamped as the
 * reference does. A terminal whose shell has exited is replaced. */
static int tmux_ensure(struct atr_slot *s, json_t *args, struct terminal **out)
{
    struct terminal *t = slot_terminal(s);
    if (t && !terminal_running(t)) {
        terminal_destroy(t);
        t = NULL;
    }
    if (!t) {
        s->term_id[0] = '\0';
        s->stream_offset = 0;
    }
    long long cols = s->pane_w, rows = s->pane_h;
    json_t *pw = json_object_get(args, "pane_width"), *ph = json_object_get(args, "pane_height");
    /* Out of range is an error rather than silently clamped (as the reference did): a client
     * asking for 10 columns would otherwise work with a screen it does not expect. */
    if ((pw && !json_is_null(pw) && py_int(pw, &cols) < 0) ||
        (ph && !json_is_null(ph) && py_int(ph, &rows) < 0) || cols < TERMINAL_MIN_COLS ||
        cols > TERMINAL_MAX_COLS || rows < TERMINAL_MIN_ROWS || rows > TERMINAL_MAX_ROWS)
        return -ERANGE;
    s->pane_w = (int)cols;
    s->pane_h = (int)rows;
    if (t) {
        int c, r;
        terminal_size(t, &c, &r);
        if (c != s->pane_w || r != s->pane_h)
            terminal_resize(t, s->pane_w, s->pane_h);
        *out = t;
        return 0;
    }
    char **env = exec_build_env(s->sb, NULL, "xterm-256color");
    struct terminal_spec spec = {.env = (const char *const *)env,
                                 .cwd = "/workspace",
                                 .cols = s->pane_w,
                                 .rows = s->pane_h,
                                 .record = 1};
    int r = env ? terminal_create(s->sb, &spec, &t) : -ENOMEM;
    util_free_strv(env);
    if (r < 0)
        return r;
    snprintf(s->term_id, sizeof(s->term_id), "%s", terminal_id(t));
    *out = t;
    return 0;
}

static void tmux_send_keys(struct atr_job *job, struct terminal *t, json_t *args, double timeout)
{
    json_t *kv = json_object_get(args, "keys"), *k;
    size_t i, n = 0;
    int ok = json_is_string(kv) || json_is_array(kv);
    json_array_foreach(kv, i, k) ok = ok && json_is_string(k);
    if (!ok) {
        job_finish(job, 200, xfail("tmux send_keys requires 'keys' as string or list[string]"));
        return;
    }
    int block = py_truthy(json_object_get(args, "block"));
    double min_wait = 0, max_wait = timeout;
    json_t *mv = json_object_get(args, "min_wait_s"), *xv = json_object_get(args, "max_wait_s");
    if (py_truthy(mv) && py_float(mv, &min_wait) < 0)
        min_wait = 0;
    if (py_truthy(xv) && py_float(xv, &max_wait) < 0)
        max_wait = timeout;
    double cap = job->slot->a->limits->exec_timeout_max_s;
    min_wait = min_wait < 0 ? 0 : min_wait > cap ? cap : min_wait;
    max_wait = max_wait < 0 ? 0 : max_wait > cap ? cap : max_wait;

    buf_t bytes = BUF_INIT;
    const char *last = NULL;
    n = json_is_string(kv) ? 1 : json_array_size(kv);
    for (i = 0; i < n; i++) {
        json_t *key = json_is_string(kv) ? kv : json_array_get(kv, i);
        const char *name = json_string_value(key);
        last = name;
        /* Like tmux send-keys: a key name is translated, anything else is typed as is. */
        if (strcmp(name, "KPEnter") == 0)
            buf_append_str(&bytes, "\r");
        else if (keys_append(&bytes, name) == 0)
            buf_append(&bytes, name, json_string_length(key));
    }
    /* Blocking waits for a shell command to finish: it must have been entered. */
    if (block &&
        (!last || (strcmp(last, "Enter") && strcmp(last, "C-m") && strcmp(last, "KPEnter"))))
        buf_append_str(&bytes, "\r");
    int r = bytes.len ? terminal_write(t, bytes.data, bytes.len) : 0;
    buf_free(&bytes);
    if (r < 0) {
        job_finish(job, 200,
                   xfail("tmux send-keys failed: %s",
                         r == -EPIPE ? "the terminal's shell has exited" : strerror(-r)));
        return;
    }
    if (!block && !(min_wait > 0)) {
        job_finish(job, 200, keys_ok(0));
        return;
    }
    if (wait_start(job, t, block, min_wait, max_wait) < 0)
        job_finish(job, 200, xfail("tmux send-keys failed: out of memory"));
}

static void tmux_stream(struct atr_job *job, struct terminal *t, json_t *args)
{
    struct atr_slot *s = job->slot;
    if (py_truthy(json_object_get(args, "reset")))
        s->stream_offset = 0;
    long long max_bytes =
        clamp_int(json_object_get(args, "max_bytes"), STREAM_DEFAULT, 1, STREAM_MAX);
    char *text = NULL;
    size_t len = 0, take = 0;
    uint64_t next = 0;
    int r = terminal_recording(t, s->stream_offset, &text, &len, &next);
    if (r < 0 && r != -ENOENT) {
        job_finish(job, 200, xfail("Failed to read asciinema recording: %s", strerror(-r)));
        return;
    }
    if (r == 0) {
        /* Whole lines only, at most max_bytes. The text may start after the offset asked for
         * (events dropped from the recording's memory): it starts at next - len. */
        size_t lim = len < (size_t)max_bytes ? len : (size_t)max_bytes;
        for (size_t i = lim; i > 0; i--)
            if (text[i - 1] == '\n') {
                take = i;
                break;
            }
        if (take)
            s->stream_offset = next - len + take;
    }
    buf_t out = BUF_INIT;
    py_decode(&out, text ? text : "", take, SIZE_MAX, NULL);
    free(text);
    job_finish(job, 200,
               xresp(1, out.data, out.len, "",
                     json_pack("{s:b, s:b, s:I, s:s}", "stateful", 1, "stream", 1, "offset",
                               (json_int_t)s->stream_offset, "recording", REC_NAME)));
    buf_free(&out);
}

static void tool_tmux(struct atr_job *job, json_t *args)
{
    struct atr_slot *s = job->slot;
    buf_t action = BUF_INIT;
    py_name(json_object_get(args, "action"), "capture", &action);
    const char *act = action.data;
    double timeout;
    if (strcmp(act, "stop") == 0) {
        struct terminal *t = slot_terminal(s);
        if (t)
            terminal_destroy(t);
        s->term_id[0] = '\0';
        s->stream_offset = 0;
        s->pane_w = PANE_W;
        s->pane_h = PANE_H;
        job_finish(job, 200, xresp(1, "stopped", 7, "", json_pack("{s:b}", "stateful", 1)));
        goto out;
    }
    if (strcmp(act, "start") && strcmp(act, "send_keys") && strcmp(act, "capture") &&
        strcmp(act, "stream")) {
        job_finish(job, 200, xfail("Unknown tmux action: %s", act));
        goto out;
    }
    if (job_timeout(job, &timeout) < 0) {
        job_finish(job, 200, xfail("Invalid timeout: expected a number of seconds"));
        goto out;
    }
    struct terminal *t;
    int r = tmux_ensure(s, args, &t);
    if (r == -ERANGE) {
        job_finish(job, 200,
                   xfail_meta(json_pack("{s:b}", "stateful", 1),
                              "Invalid pane size: pane_width must be %d-%d and pane_height %d-%d",
                              TERMINAL_MIN_COLS, TERMINAL_MAX_COLS, TERMINAL_MIN_ROWS,
                              TERMINAL_MAX_ROWS));
        goto out;
    }
    if (r < 0) {
        job_finish(job, 200,
                   xfail_meta(json_pack("{s:b}", "stateful", 1),
                              "Failed to ensure tmux session: %s", session_strerror(r)));
        goto out;
    }
    if (strcmp(act, "start") == 0) {
        s->stream_offset = 0;
        job_finish(job, 200,
                   xresp(1, "started", 7, "",
                         json_pack("{s:b, s:i, s:i, s:s, s:s, s:s}", "stateful", 1, "pane_width",
                                   s->pane_w, "pane_height", s->pane_h, "socket", "tmux.sock",
                                   "session", s->term_id, "recording", REC_NAME)));
    } else if (strcmp(act, "send_keys") == 0) {
        tmux_send_keys(job, t, args, timeout);
    } else if (strcmp(act, "capture") == 0) {
        int all = py_truthy(json_object_get(args, "capture_entire")), row, col;
        char *screen = terminal_screen(t, all, &row, &col);
        buf_t raw = BUF_INIT, out = BUF_INIT;
        if (screen) {
            /* capture-pane -p ends every line with a newline */
            buf_append_str(&raw, screen);
            buf_append_str(&raw, "\n");
            free(screen);
            stream_text(&out, &raw);
        }
        job_finish(job, 200,
                   screen ? xresp(1, out.data, out.len, "",
                                  json_pack("{s:b, s:b}", "stateful", 1, "capture_entire", all))
                          : xfail("tmux capture-pane failed: out of memory"));
        buf_free(&raw);
        buf_free(&out);
    } else {
        tmux_stream(job, t, args);
    }
out:
    buf_free(&action);
}

/* ---- file work (on the thread pool) --------------------------------------------------------- */

enum fw_op { FW_READ_FILE, FW_WRITE_FILE, FW_RESET, FW_ART_READ, FW_ART_LIST, FW_ART_ARCHIVE };

struct atr_fwork {
    struct atr_job *job;
    const struct fs_root *root; /* while the work runs */
    enum fw_op op;
    atomic_int cancelled;
    /* inputs (copied: the worker touches no shared JSON) */
    char *path; /* as the client gave it */
    size_t path_len;
    char *content;
    size_t content_len, content_chars;
    char *encoding; /* artifacts/read: as given (for the message) */
    int include_sha256, recursive;
    long long max_bytes, max_entries;
    char slot_name[24];
    /* result */
    int status;
    json_t *resp;
};

/* A path inside the sandbox after resolution (see ws_resolve). */
struct ws_path {
    char abs[PATH_MAX]; /* absolute, as the sandbox sees it, without symlinks */
    int missing;        /* a component does not exist (abs continues lexically) */
    char type;          /* 'f' file, 'd' dir, 'o' other; 0 when missing */
    long long size;
    double mtime;
    unsigned mode;
};

/* A name from the file system as the reference can name it: bytes that are not UTF-8 become
 * U+FFFD (such files stay out of reach, as they are for the reference). malloc'd, or NULL. */
static char *text_name(const char *s)
{
    size_t n = strlen(s);
    return util_utf8_valid(s, n) ? strdup(s) : util_utf8_lossy(s, n);
}

/* mtime in whole seconds: the reference reports what a second-precision stat gives. */
static void stat_fill(struct ws_path *wp, const struct fs_entry *e)
{
    wp->type = e->type == FS_FILE ? 'f' : e->type == FS_DIR ? 'd' : 'o';
    wp->size = (long long)e->size;
    wp->mtime = (double)e->mtime.tv_sec;
    wp->mode = (unsigned)e->mode & 07777;
}

/* True when a relative path climbs above its start by `..` alone. */
static int lexically_escapes(const char *rel)
{
    long depth = 0;
    for (const char *p = rel; *p;) {
        const char *c = p;
        while (*p && *p != '/')
            p++;
        size_t n = (size_t)(p - c);
        if (*p)
            p++;
        if (n == 0 || (n == 1 && c[0] == '.'))
            continue;
        if (n == 2 && c[0] == '.' && c[1] == '.') {
            if (--depth < 0)
                return 1;
        } else {
            depth++;
        }
    }
    return 0;
}

/*
 * Resolves `rel` (relative to /workspace) as realpath(3) would inside the sandbox and checks
 * that the result is /workspace or below it. How, and why this way:
 *  - absolute paths, and paths whose `..` climb above the workspace lexically, are refused
 *    before anything is looked at;
 *  - then every component is looked at with fs_stat() (no final-symlink following), from
 *    the sandbox's "/" on, so /workspace itself is checked too; a symlink's target is spliced
 *    into the rest of the path (an absolute target restarts at the sandbox's "/"), and `..`
 *    removes the last resolved component — the kernel's semantics, not a textual clean-up;
 *  - the result must lie under /workspace: a link that leaves it (even to another place of the
 *    same sandbox, e.g. /etc) is refused; links that stay inside work.
 * The files layer resolves every later access with RESOLVE_IN_ROOT, so even if the sandbox swaps
 * a component for a symlink between this check and the access, the access cannot leave the
 * sandbox: at worst it reads or writes the sandbox's own files, which the sandbox can anyway.
 * Returns 0, -EXDEV (outside), -ELOOP, -ENAMETOOLONG or another -errno from the files layer.
 */
static int ws_resolve(const struct fs_root *root, const char *rel, size_t rel_len,
                      struct ws_path *wp)
{
    memset(wp, 0, sizeof(*wp));
    if (strlen(rel) != rel_len || rel[0] == '/' || lexically_escapes(rel))
        return -EXDEV;
    buf_t pend = BUF_INIT;
    if (buf_appendf(&pend, "workspace/%s", rel) < 0)
        return -ENOMEM;
    char *res = wp->abs;
    size_t rlen = 0, missing_at = 0, pos = 0;
    int links = 0, r = 0;
    res[0] = '\0';
    while (pos < pend.len) {
        const char *c = pend.data + pos;
        size_t n = 0;
        while (pos + n < pend.len && c[n] != '/')
            n++;
        pos += n + (pos + n < pend.len);
        if (n == 0 || (n == 1 && c[0] == '.'))
            continue;
        if (n == 2 && c[0] == '.' && c[1] == '.') {
            while (rlen > 0 && res[rlen - 1] != '/')
                rlen--;
            if (rlen > 0)
                rlen--;
            res[rlen] = '\0';
            if (wp->missing && rlen <= missing_at)
                wp->missing = 0;
            continue;
        }
        if (rlen + 1 + n >= sizeof(wp->abs)) {
            r = -ENAMETOOLONG;
            goto out;
        }
        size_t before = rlen;
        res[rlen++] = '/';
        memcpy(res + rlen, c, n);
        rlen += n;
        res[rlen] = '\0';
        if (wp->missing)
            continue;
        struct fs_entry st;
        r = fs_stat(root, res, 0, &st);
        if (r == -ENOENT || r == -ENOTDIR) {
            /* As realpath without strict: the rest is taken as it is written. */
            wp->missing = 1;
            missing_at = before;
            r = 0;
            continue;
        }
        if (r < 0)
            goto out;
        if (st.type == FS_SYMLINK) {
            char *target = st.link_target ? text_name(st.link_target) : NULL;
            fs_entry_free(&st);
            if (++links > MAX_SYMLINKS || !target) {
                free(target);
                r = -ELOOP;
                goto out;
            }
            int absolute = target[0] == '/';
            buf_t np = BUF_INIT;
            buf_append_str(&np, target);
            buf_append_str(&np, "/");
            buf_append(&np, pend.data + pos, pend.len - pos);
            free(target);
            if (!np.data) {
                r = -ENOMEM;
                goto out;
            }
            buf_free(&pend);
            pend = np;
            pos = 0;
            rlen = absolute ? 0 : before;
            res[rlen] = '\0';
            continue;
        }
        fs_entry_free(&st);
    }
    if (rlen == 0) {
        res[0] = '/';
        res[1] = '\0';
    }
    if (strcmp(res, "/workspace") != 0 && strncmp(res, "/workspace/", 11) != 0) {
        r = -EXDEV;
        goto out;
    }
    if (!wp->missing) {
        struct fs_entry st;
        r = fs_stat(root, res, 0, &st);
        if (r == -ENOENT || r == -ENOTDIR) {
            wp->missing = 1;
            r = 0;
        } else if (r == 0) {
            stat_fill(wp, &st);
            fs_entry_free(&st);
        }
    }
out:
    buf_free(&pend);
    return r;
}

/* The path relative to /workspace ("." for the workspace itself). */
static const char *ws_rel(const char *abs)
{
    return strcmp(abs, "/workspace") == 0 ? "." : abs + 11;
}

/* Reads up to `max` bytes of an open file. */
static int read_upto(int fd, buf_t *out, size_t max)
{
    char chunk[65536];
    while (out->len < max) {
        size_t want = max - out->len < sizeof(chunk) ? max - out->len : sizeof(chunk);
        ssize_t n = read(fd, chunk, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        if (buf_append(out, chunk, (size_t)n) < 0)
            return -ENOMEM;
    }
    if (!out->data)
        buf_append(out, "", 0);
    return 0;
}

static const char *mime_by_suffix(const char *path)
{
    static const char *const map[][2] = {
        {".txt", "text/plain"},      {".log", "text/plain"},       {".json", "application/json"},
        {".py", "text/x-python"},    {".md", "text/markdown"},     {".html", "text/html"},
        {".csv", "text/csv"},        {".xml", "application/xml"},  {".png", "image/png"},
        {".jpg", "image/jpeg"},      {".jpeg", "image/jpeg"},      {".gif", "image/gif"},
        {".webp", "image/webp"},     {".pdf", "application/pdf"},  {".tar", "application/x-tar"},
        {".gz", "application/gzip"}, {".tgz", "application/gzip"}, {".zip", "application/zip"},
    };
    /* Path.suffix: from the last dot of the last component, not a leading dot, not a final one. */
    const char *name = strrchr(path, '/');
    name = name ? name + 1 : path;
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name || !dot[1])
        return "application/octet-stream";
    char suf[16];
    size_t n = strlen(dot);
    if (n >= sizeof(suf))
        return "application/octet-stream";
    for (size_t i = 0; i <= n; i++)
        suf[i] = dot[i] >= 'A' && dot[i] <= 'Z' ? (char)(dot[i] + 32) : dot[i];
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(suf, map[i][0]) == 0)
            return map[i][1];
    return "application/octet-stream";
}

static void fw_read_file(struct atr_fwork *fw)
{
    struct ws_path wp;
    int r = ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (r == -EXDEV || r == -ELOOP) {
        fw->resp = xfail(DENIED);
        return;
    }
    if (r < 0) {
        fw->resp = xfail("Failed to read file: %s", strerror(-r));
        return;
    }
    if (wp.missing) {
        fw->resp = xfail("File not found: %s", fw->path);
        return;
    }
    if (wp.type != 'f') {
        fw->resp = xfail("Not a file: %s", fw->path);
        return;
    }
    if (wp.size > MAX_FILE_SIZE) {
        fw->resp = xfail("File too large: %lld bytes (max %d)", wp.size, MAX_FILE_SIZE);
        return;
    }
    struct stat st;
    int fd = fs_open_read(fw->root, wp.abs, &st);
    if (fd < 0) {
        fw->resp = fd == -ENOENT ? xfail("File not found: %s", fw->path)
                   : fd == -EISDIR || fd == -EINVAL
                       ? xfail("Not a file: %s", fw->path)
                       : xfail("Failed to read file: %s", strerror(-fd));
        return;
    }
    if (st.st_size > MAX_FILE_SIZE) {
        close(fd);
        fw->resp =
            xfail("File too large: %lld bytes (max %d)", (long long)st.st_size, MAX_FILE_SIZE);
        return;
    }
    buf_t data = BUF_INIT, text = BUF_INIT;
    r = read_upto(fd, &data, MAX_FILE_SIZE);
    close(fd);
    if (r < 0) {
        buf_free(&data);
        fw->resp = xfail("Failed to read file: %s", strerror(-r));
        return;
    }
    py_decode(&text, data.data, data.len, SIZE_MAX, NULL);
    fw->resp = xresp(1, text.data ? text.data : "", text.len, "",
                     json_pack("{s:s, s:I}", "path", wp.abs, "size", (json_int_t)st.st_size));
    buf_free(&data);
    buf_free(&text);
}

static void fw_write_file(struct atr_fwork *fw)
{
    struct ws_path wp;
    int r = ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (r == -EXDEV || r == -ELOOP) {
        fw->resp = xfail(DENIED);
        return;
    }
    if (r == 0 && !wp.missing && wp.type == 'd')
        r = -EISDIR;
    struct fs_tmp tmp;
    /* An existing file keeps its mode, as when it is rewritten in place. */
    unsigned mode = !wp.missing && wp.type == 'f' ? wp.mode : 0644;
    if (r == 0)
        r = fs_open_write(fw->root, wp.abs, mode, 1, &tmp);
    if (r == 0) {
        size_t off = 0;
        while (off < fw->content_len) {
            ssize_t n = write(tmp.fd, fw->content + off, fw->content_len - off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                r = -errno;
                break;
            }
            off += (size_t)n;
        }
        if (r == 0)
            r = fs_commit(&tmp);
        else
            fs_abort(&tmp);
    }
    if (r < 0) {
        fw->resp = xfail("Failed to write file: [Errno %d] %s: '%s'", -r, strerror(-r),
                         wp.abs[0] ? wp.abs : fw->path);
        return;
    }
    buf_t out = BUF_INIT;
    buf_appendf(&out, "Successfully wrote %zu bytes to %s", fw->content_chars, fw->path);
    fw->resp =
        xresp(1, out.data, out.len, "",
              json_pack("{s:s, s:I}", "path", wp.abs, "size", (json_int_t)fw->content_chars));
    buf_free(&out);
}

/* Empties /workspace: fs_remove() of the tree removes every entry by fd (whatever its name
 * is, even bytes that are not UTF-8, which a listing could not return), then fails to remove
 * /workspace itself with EBUSY because it is a mount point. Were it a plain directory, it is
 * created again. */
static void fw_reset(struct atr_fwork *fw)
{
    int r = fs_remove(fw->root, "/workspace", 1);
    if (r == 0)
        r = fs_mkdir(fw->root, "/workspace", 0);
    else if (r == -EBUSY)
        r = 0;
    if (r < 0) {
        fw->resp = xfail("Failed to reset workspace: %s", strerror(-r));
        return;
    }
    buf_t out = BUF_INIT;
    buf_appendf(&out, "Reset workspace for %s", fw->slot_name);
    fw->resp = xresp(1, out.data, out.len, "", NULL);
    buf_free(&out);
}

/* Path errors of the artifact routes: 403 / 404 / other. Returns 1 when answered. */
static int art_path_error(struct atr_fwork *fw, int r, const struct ws_path *wp)
{
    if (r == -EXDEV || r == -ELOOP) {
        fw->status = 403;
        fw->resp = plain_fail(DENIED);
    } else if (r < 0) {
        fw->status = 500;
        fw->resp = plain_fail("%s", strerror(-r));
    } else if (wp->missing) {
        fw->status = 404;
        fw->resp = plain_fail("Not found: %s", fw->path);
    } else {
        return 0;
    }
    return 1;
}

static void fw_art_read(struct atr_fwork *fw)
{
    struct ws_path wp;
    int r = ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (art_path_error(fw, r, &wp))
        return;
    if (wp.type != 'f') {
        fw->status = 400;
        fw->resp = plain_fail("Not a file: %s", fw->path);
        return;
    }
    buf_t enc = BUF_INIT;
    json_t *ev = json_string(fw->encoding ? fw->encoding : "text");
    py_name(ev, "text", &enc);
    json_decref(ev);
    int b64 = strcmp(enc.data, "base64") == 0;
    if (!b64 && strcmp(enc.data, "text") != 0) {
        fw->status = 400;
        fw->resp = plain_fail("Unsupported encoding: %s", fw->encoding ? fw->encoding : "");
        buf_free(&enc);
        return;
    }
    struct stat st;
    int fd = fs_open_read(fw->root, wp.abs, &st);
    if (fd < 0) {
        fw->status = fd == -ENOENT ? 404 : fd == -EISDIR || fd == -EINVAL ? 400 : 500;
        fw->resp = fd == -ENOENT                    ? plain_fail("Not found: %s", fw->path)
                   : fd == -EISDIR || fd == -EINVAL ? plain_fail("Not a file: %s", fw->path)
                                                    : plain_fail("%s", strerror(-fd));
        buf_free(&enc);
        return;
    }
    size_t limit = (size_t)fw->max_bytes;
    buf_t data = BUF_INIT;
    r = read_upto(fd, &data, limit);
    close(fd);
    if (r < 0) {
        fw->status = 500;
        fw->resp = plain_fail("%s", strerror(-r));
        buf_free(&data);
        buf_free(&enc);
        return;
    }
    json_t *sha = json_null();
    if (fw->include_sha256) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        char hex[2 * EVP_MAX_MD_SIZE + 1];
        if (EVP_Digest(data.data, data.len, md, &mdlen, EVP_sha256(), NULL)) {
            for (unsigned i = 0; i < mdlen; i++)
                snprintf(hex + 2 * i, 3, "%02x", md[i]);
            json_decref(sha);
            sha = json_string(hex);
        }
    }
    json_t *content;
    if (b64) {
        char *s = util_base64_encode(data.data, data.len);
        content = s ? json_string(s) : NULL;
        free(s);
    } else {
        buf_t text = BUF_INIT;
        py_decode(&text, data.data, data.len, SIZE_MAX, NULL);
        content = json_stringn(text.data ? text.data : "", text.len);
        buf_free(&text);
    }
    fw->status = content ? 200 : 500;
    fw->resp = content
                   ? json_pack("{s:b, s:o, s:s, s:b, s:I, s:I, s:s, s:s, s:o}", "success", 1,
                               "content", content, "encoding", enc.data, "truncated",
                               (long long)st.st_size > fw->max_bytes, "bytes", (json_int_t)data.len,
                               "file_size", (json_int_t)st.st_size, "path", ws_rel(wp.abs), "mime",
                               mime_by_suffix(wp.abs), "sha256", sha)
                   : (json_decref(sha), plain_fail("out of memory"));
    buf_free(&data);
    buf_free(&enc);
}

/* One entry of a listing, with what ordering it like os.walk needs. */
struct litem {
    char *key;         /* relative to the listed directory, as listed */
    size_t parent_len; /* key[0..parent_len) is the parent ("" at the top) */
    const char *name;
    int dir;      /* a directory after following a symlink (os.walk's dirnames) */
    int real_dir; /* a directory that is not a symlink (walked into) */
    int visited;
    struct ws_path wp; /* resolved */
};

static int parent_cmp(const struct litem *it, const char *parent, size_t plen)
{
    size_t n = it->parent_len < plen ? it->parent_len : plen;
    int c = memcmp(it->key, parent, n);
    if (c)
        return c;
    return it->parent_len < plen ? -1 : it->parent_len > plen;
}

static int litem_cmp(const void *x, const void *y)
{
    const struct litem *a = x, *b = y;
    int c = parent_cmp(a, b->key, b->parent_len);
    if (c)
        return c;
    if (a->dir != b->dir)
        return b->dir - a->dir;
    return strcmp(a->name, b->name);
}

static int litem_name_cmp(const void *x, const void *y)
{
    const struct litem *a = x, *b = y;
    return strcmp(a->name, b->name);
}

/* Appends, in os.walk order (sorted dirs, sorted files, then into each dir), the items below
 * `parent`. `items` is sorted with litem_cmp. */
static void walk_emit(struct litem *items, size_t n, const char *parent, size_t plen,
                      struct litem **order, size_t *k, int depth)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (parent_cmp(&items[mid], parent, plen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t end = lo;
    while (end < n && parent_cmp(&items[end], parent, plen) == 0)
        end++;
    for (size_t i = lo; i < end; i++) {
        items[i].visited = 1;
        order[(*k)++] = &items[i];
    }
    if (depth > 4096)
        return;
    for (size_t i = lo; i < end; i++)
        if (items[i].real_dir)
            walk_emit(items, n, items[i].key, strlen(items[i].key), order, k, depth + 1);
}

static void litems_free(struct litem *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++)
        free(items[i].key);
    free(items);
}

/* Lists the directory `wp` (resolved) and returns its entries in the reference's order: sorted
 * by name, or os.walk's order when recursive. Symlinks are resolved; those leading out of the
 * workspace (or nowhere) are left out. Returns 0 or -errno. */
static int list_dir(struct atr_fwork *fw, const struct ws_path *dir, int recursive, size_t max,
                    struct litem ***order_out, struct litem **items_out, size_t *n_out,
                    int *truncated)
{
    struct fs_entry *entries = NULL;
    size_t i, n = 0, total = 0;
    int r = fs_list(fw->root, dir->abs, recursive, max, &entries, &total, truncated);
    if (r < 0)
        return r;
    struct litem *items = calloc(total ? total : 1, sizeof(*items));
    struct litem **order = calloc(total ? total : 1, sizeof(*order));
    if (!items || !order) {
        free(items);
        free(order);
        fs_entries_free(entries, total);
        return -ENOMEM;
    }
    const char *base = ws_rel(dir->abs);
    for (i = 0; i < total; i++) {
        const struct fs_entry *e = &entries[i];
        if (atomic_load(&fw->cancelled))
            break;
        char *p = text_name(e->path);
        if (!p)
            continue;
        struct litem *it = &items[n];
        memset(it, 0, sizeof(*it));
        buf_t rel = BUF_INIT;
        if (strcmp(base, ".") != 0)
            buf_appendf(&rel, "%s/", base);
        buf_append_str(&rel, p);
        if (!rel.data) {
            free(p);
            continue;
        }
        if (e->type == FS_SYMLINK) {
            if (ws_resolve(fw->root, rel.data, rel.len, &it->wp) < 0 || it->wp.missing) {
                buf_free(&rel);
                free(p);
                continue;
            }
        } else {
            snprintf(it->wp.abs, sizeof(it->wp.abs), "/workspace/%s", rel.data);
            stat_fill(&it->wp, e);
            it->real_dir = it->wp.type == 'd';
        }
        buf_free(&rel);
        it->key = p;
        const char *slash = strrchr(it->key, '/');
        it->parent_len = slash ? (size_t)(slash - it->key) : 0;
        it->name = slash ? slash + 1 : it->key;
        it->dir = it->wp.type == 'd';
        n++;
    }
    fs_entries_free(entries, total);
    size_t k = 0;
    if (recursive) {
        qsort(items, n, sizeof(*items), litem_cmp);
        walk_emit(items, n, "", 0, order, &k, 0);
        for (i = 0; i < n; i++) /* not reachable from the top: keep them, last */
            if (!items[i].visited)
                order[k++] = &items[i];
    } else {
        qsort(items, n, sizeof(*items), litem_name_cmp);
        for (i = 0; i < n; i++)
            order[k++] = &items[i];
    }
    *order_out = order;
    *items_out = items;
    *n_out = n;
    return 0;
}

static json_t *list_entry(const struct ws_path *wp)
{
    return json_pack("{s:s, s:b, s:I, s:f}", "path", ws_rel(wp->abs), "is_dir", wp->type == 'd',
                     "size", (json_int_t)wp->size, "mtime", wp->mtime);
}

static void fw_art_list(struct atr_fwork *fw)
{
    struct ws_path wp;
    int r = ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (art_path_error(fw, r, &wp))
        return;
    json_t *arr = json_array();
    int truncated = 0;
    if (wp.type == 'f') {
        json_array_append_new(arr, list_entry(&wp));
    } else if (wp.type != 'd') {
        json_decref(arr);
        fw->status = 400;
        fw->resp = plain_fail("Unsupported path type: %s", fw->path);
        return;
    } else {
        struct litem **order = NULL, *items = NULL;
        size_t n = 0, limit = (size_t)fw->max_entries;
        /* One more than the limit tells whether there was more. */
        r = list_dir(fw, &wp, fw->recursive, limit + 1, &order, &items, &n, &truncated);
        if (r < 0) {
            json_decref(arr);
            fw->status = 500;
            fw->resp = plain_fail("%s", strerror(-r));
            return;
        }
        for (size_t i = 0; i < n && i < limit; i++)
            json_array_append_new(arr, list_entry(&order[i]->wp));
        truncated = truncated || n > limit;
        free(order);
        litems_free(items, n);
    }
    fw->status = 200;
    fw->resp = json_pack("{s:b, s:o, s:b}", "success", 1, "entries", arr, "truncated", truncated);
}

struct arch_out {
    struct atr_fwork *fw;
    buf_t data;
    size_t total;
    size_t limit;
};

static ssize_t arch_write(const void *data, size_t len, void *arg)
{
    struct arch_out *o = arg;
    if (atomic_load(&o->fw->cancelled))
        return -ECANCELED;
    o->total += len;
    /* Past the limit the size is all that is still needed (for the 413's "bytes"). */
    if (o->total <= o->limit) {
        if (buf_append(&o->data, data, len) < 0)
            return -ENOMEM;
    } else if (o->data.data) {
        buf_free(&o->data);
    }
    return (ssize_t)len;
}

/* Regular files only (symlinks to files inside the workspace under their target's name), named
 * relative to the workspace, at most max_entries of them; files that vanished or cannot be opened
 * are left out, as the reference does. */
static void fw_art_archive(struct atr_fwork *fw)
{
    struct ws_path wp;
    int r = ws_resolve(fw->root, fw->path, fw->path_len, &wp);
    if (art_path_error(fw, r, &wp))
        return;
    struct arch_out out = {.fw = fw, .data = BUF_INIT, .limit = (size_t)fw->max_bytes};
    struct fs_archive *ar = NULL;
    size_t count = 0, limit = (size_t)fw->max_entries;
    struct litem **order = NULL, *items = NULL;
    size_t n = 0;
    /* No limits in the writer: the reference builds the whole archive and then reports its
     * size, so arch_write counts on past max_bytes. */
    r = fs_archive_new(fw->root, 0, 0, arch_write, &out, &ar);
    if (r == 0 && wp.type == 'f') {
        int a = fs_archive_add_file(ar, wp.abs, ws_rel(wp.abs));
        r = a < 0 ? a : 0;
        count += a > 0;
    } else if (r == 0 && wp.type == 'd') {
        int trunc = 0;
        r = list_dir(fw, &wp, 1, MAX_WALK_ENTRIES, &order, &items, &n, &trunc);
        for (size_t i = 0; r == 0 && i < n && count < limit; i++) {
            if (atomic_load(&fw->cancelled))
                break;
            if (order[i]->wp.type != 'f')
                continue;
            int a = fs_archive_add_file(ar, order[i]->wp.abs, ws_rel(order[i]->wp.abs));
            r = a < 0 ? a : 0;
            count += a > 0;
        }
    }
    if (ar) {
        int c = fs_archive_close(ar, NULL);
        r = r < 0 ? r : c;
    }
    if (r < 0) {
        fw->status = 500;
        fw->resp = plain_fail("Failed to create archive: %s", strerror(-r));
    } else if (out.total > out.limit) {
        fw->status = 413;
        fw->resp = plain_fail("Archive too large: %zu bytes (max %zu)", out.total, out.limit);
        json_object_set_new(fw->resp, "bytes", json_integer((json_int_t)out.total));
    } else {
        char *b64 = util_base64_encode(out.data.data ? out.data.data : "", out.data.len);
        fw->status = b64 ? 200 : 500;
        fw->resp = b64 ? json_pack("{s:b, s:s, s:s, s:s, s:I, s:I}", "success", 1, "content", b64,
                                   "encoding", "base64", "format", "tar.gz", "bytes",
                                   (json_int_t)out.data.len, "entry_count", (json_int_t)count)
                       : plain_fail("out of memory");
        free(b64);
    }
    buf_free(&out.data);
    free(order);
    litems_free(items, n);
}

static void fw_run(const struct fs_root *root, void *arg)
{
    struct atr_fwork *fw = arg;
    fw->root = root;
    fw->status = 200;
    switch (fw->op) {
    case FW_READ_FILE:
        fw_read_file(fw);
        break;
    case FW_WRITE_FILE:
        fw_write_file(fw);
        break;
    case FW_RESET:
        fw_reset(fw);
        break;
    case FW_ART_READ:
        fw_art_read(fw);
        break;
    case FW_ART_LIST:
        fw_art_list(fw);
        break;
    case FW_ART_ARCHIVE:
        fw_art_archive(fw);
        break;
    }
}

static void fw_cancel(struct atr_fwork *fw)
{
    atomic_store(&fw->cancelled, 1);
}

static void fw_free(struct atr_fwork *fw)
{
    free(fw->path);
    free(fw->content);
    free(fw->encoding);
    free(fw);
}

/* The answer when the work could not even start. */
static json_t *fw_fail_resp(const struct atr_fwork *fw, int *status, const char *why)
{
    *status = 200;
    switch (fw->op) {
    case FW_READ_FILE:
        return xfail("Failed to read file: %s", why);
    case FW_WRITE_FILE:
        return xfail("Failed to write file: %s", why);
    case FW_RESET:
        return xfail("Failed to reset workspace: %s", why);
    default:
        *status = 500;
        return plain_fail("%s", why);
    }
}

static void fw_after(void *arg)
{
    struct atr_fwork *fw = arg;
    struct atr_job *job = fw->job;
    int st = fw->status;
    json_t *resp = fw->resp;
    job->fw = NULL;
    if (!resp)
        resp = fw_fail_resp(fw, &st, "out of memory");
    fw_free(fw);
    job_finish(job, st, resp);
}

static void fw_start(struct atr_job *job, struct atr_fwork *fw)
{
    struct atr_slot *s = job->slot;
    int st;
    snprintf(fw->slot_name, sizeof(fw->slot_name), "%s", s->name);
    atomic_init(&fw->cancelled, 0);
    fw->job = job;
    int r = files_run(s->sb, fw_run, fw_after, fw);
    if (r < 0) {
        json_t *resp = fw_fail_resp(fw, &st, strerror(-r));
        fw_free(fw);
        job_finish(job, st, resp);
        return;
    }
    job->fw = fw;
}

static struct atr_fwork *fw_new(enum fw_op op, json_t *path, const char *def)
{
    struct atr_fwork *fw = calloc(1, sizeof(*fw));
    if (!fw)
        return NULL;
    fw->op = op;
    /* A path that is not a string cannot name anything in the workspace: like the reference
     * (whose path handling raises and answers "Access denied"), it resolves to nothing. */
    if (!path || json_is_null(path)) {
        fw->path = strdup(def);
        fw->path_len = strlen(def);
    } else if (json_is_string(path)) {
        fw->path = malloc(json_string_length(path) + 1);
        if (fw->path) {
            memcpy(fw->path, json_string_value(path), json_string_length(path) + 1);
            fw->path_len = json_string_length(path);
        }
    } else {
        buf_t b = BUF_INIT;
        buf_append_str(&b, "/");
        py_str(path, &b);
        fw->path = buf_steal(&b);
        fw->path_len = fw->path ? strlen(fw->path) : 0;
    }
    if (!fw->path) {
        free(fw);
        return NULL;
    }
    return fw;
}

static void tool_file(struct atr_job *job, json_t *args, int write)
{
    struct atr_fwork *fw =
        fw_new(write ? FW_WRITE_FILE : FW_READ_FILE, json_object_get(args, "path"), "");
    if (!fw) {
        job_finish(job, 200, xfail("out of memory"));
        return;
    }
    if (write) {
        json_t *cv = json_object_get(args, "content");
        if (cv && !json_is_null(cv) && !json_is_string(cv)) {
            fw_free(fw);
            job_finish(job, 200, xfail("Failed to write file: 'content' must be a string"));
            return;
        }
        const char *c = json_is_string(cv) ? json_string_value(cv) : "";
        fw->content_len = json_is_string(cv) ? json_string_length(cv) : 0;
        fw->content_chars = utf8_chars(c, fw->content_len);
        if (fw->content_chars > MAX_FILE_SIZE) {
            job_finish(
                job, 200,
                xfail("Content too large: %zu bytes (max %d)", fw->content_chars, MAX_FILE_SIZE));
            fw_free(fw);
            return;
        }
        if (!(fw->content = malloc(fw->content_len + 1))) {
            fw_free(fw);
            job_finish(job, 200, xfail("out of memory"));
            return;
        }
        memcpy(fw->content, c, fw->content_len + 1);
    }
    fw_start(job, fw);
}

/* ---- jobs ----------------------------------------------------------------------------------- */

static void done_single(struct atr_job *job, int status, json_t *resp);

/* Records a tool call in the audit log: the slot, the tool, and the command or path it acts on
 * (never file contents or keys typed). */
static void execute_audit(struct atr_job *job, const char *tool, json_t *args)
{
    struct atr_slot *s = job->slot;
    http_req_t *req = job->done == done_single ? job->owner : ((struct atr_batch *)job->owner)->req;
    json_t *cmd = json_object_get(args, "command"), *path = json_object_get(args, "path");
    json_t *desc = json_is_string(cmd) ? json_pack("{s:O}", "shell", cmd) : json_object();
    json_t *o = audit_command(desc);
    json_decref(desc);
    json_object_set_new(o, "slot", json_string(s->name));
    json_object_set_new(o, "tool", tool ? json_string(tool) : json_null());
    if (json_is_string(path))
        json_object_set(o, "path", path);
    json_object_set_new(o, "ok", json_true());
    audit_record(s->a->audit, "atropos.execute", s->sb ? s->sb->id : NULL,
                 s->sb ? s->sb->labels : NULL, o, http_req_peer(req));
}

static void execute_start(struct atr_job *job)
{
    json_t *tv = json_object_get(job->body, "tool");
    json_t *args = json_object_get(job->body, "args");
    const char *tool = json_is_string(tv) ? json_string_value(tv) : NULL;
    json_t *empty = NULL;
    execute_audit(job, tool, args);
    if (!args || json_is_null(args))
        args = empty = json_object();
    if (!json_is_object(args)) {
        job_finish(job, 200, xfail("Invalid args: expected an object"));
        return;
    }
    if (tool && strcmp(tool, "bash") == 0)
        tool_bash(job, args);
    else if (tool && strcmp(tool, "bash_stateful") == 0)
        tool_stateful(job, args);
    else if (tool && strcmp(tool, "read_file") == 0)
        tool_file(job, args, 0);
    else if (tool && strcmp(tool, "write_file") == 0)
        tool_file(job, args, 1);
    else if (tool && strcmp(tool, "tmux") == 0)
        tool_tmux(job, args);
    else {
        buf_t t = BUF_INIT;
        if (tv)
            py_str(tv, &t);
        job_finish(job, 200, xfail("Unknown tool: %s", t.data ? t.data : ""));
        buf_free(&t);
    }
    json_decref(empty); /* args is borrowed by nothing that outlives the call */
}

static void reset_empty_workspace(struct atr_job *job)
{
    struct atr_fwork *fw = fw_new(FW_RESET, NULL, "");
    if (!fw) {
        job_finish(job, 200, xfail("out of memory"));
        return;
    }
    fw_start(job, fw);
}

static void reset_killed(struct exec *ex, struct exec_result *res, void *arg)
{
    struct atr_job *job = arg;
    job->ex = NULL;
    if (res->error)
        log_warn("atropos: %s: reset: could not stop leftover processes: %s", job->slot->name,
                 res->error_msg ? res->error_msg : strerror(-res->error));
    if (job->cancelled || job->slot->sb->state != SB_RUNNING)
        job_finish(job, 200, xfail("Failed to reset workspace: the slot's sandbox stopped"));
    else
        reset_empty_workspace(job);
}

/* Stops the slot's shell and terminal, then every other process left in the slot (background
 * jobs of earlier bash calls keep running, as with docker exec, and must not reach into the
 * next user's workspace): kill(-1) from inside the sandbox's pid namespace signals all of its
 * processes but its init and the caller. Then the workspace is emptied. */
static void reset_start(struct atr_job *job)
{
    struct atr_slot *s = job->slot;
    struct shell *sh = slot_shell(s);
    struct terminal *t = slot_terminal(s);
    if (sh)
        shell_destroy(sh); /* hang-up to the shell and its jobs */
    if (t)
        terminal_destroy(t);
    slot_forget_session(s);
    static const char *const argv[] = {"/bin/sh", "-c", "kill -9 -1 2>/dev/null; exit 0", NULL};
    char **env = exec_build_env(s->sb, NULL, "dumb");
    struct exec_spec spec = {.argv = argv,
                             .env = (const char *const *)env,
                             .cwd = "/",
                             .timeout_s = 10,
                             .max_output = 4096};
    int r = env ? exec_start(s->sb, &spec, reset_killed, job, &job->ex) : -ENOMEM;
    util_free_strv(env);
    if (r < 0) {
        log_warn("atropos: %s: reset: could not stop leftover processes: %s", s->name,
                 session_strerror(r));
        reset_empty_workspace(job);
    }
}

static void artifacts_start(struct atr_job *job)
{
    json_t *b = job->body;
    enum fw_op op = job->kind == JOB_ART_READ   ? FW_ART_READ
                    : job->kind == JOB_ART_LIST ? FW_ART_LIST
                                                : FW_ART_ARCHIVE;
    struct atr_fwork *fw = fw_new(op, json_object_get(b, "path"), op == FW_ART_READ ? "" : ".");
    if (!fw) {
        job_finish(job, 500, plain_fail("out of memory"));
        return;
    }
    if (op == FW_ART_READ) {
        json_t *ev = json_object_get(b, "encoding");
        buf_t e = BUF_INIT;
        if (ev && !json_is_null(ev))
            py_str(ev, &e);
        else
            buf_append_str(&e, "text");
        fw->encoding = buf_steal(&e);
        fw->include_sha256 = py_truthy(json_object_get(b, "include_sha256"));
        fw->max_bytes =
            clamp_int(json_object_get(b, "max_bytes"), MAX_ARTIFACT_BYTES, 1, MAX_ARTIFACT_BYTES);
    } else if (op == FW_ART_LIST) {
        fw->recursive = py_truthy(json_object_get(b, "recursive"));
        fw->max_entries = clamp_int(json_object_get(b, "max_entries"), MAX_ARTIFACT_ENTRIES, 1,
                                    MAX_ARTIFACT_ENTRIES);
    } else {
        fw->max_bytes =
            clamp_int(json_object_get(b, "max_bytes"), MAX_ARTIFACT_BYTES, 1, MAX_ARTIFACT_BYTES);
        fw->max_entries = clamp_int(json_object_get(b, "max_entries"), MAX_ARTIFACT_ENTRIES, 1,
                                    MAX_ARTIFACT_ENTRIES);
    }
    fw_start(job, fw);
}

static void job_start(struct atr_job *job)
{
    if (job->cancelled || job->abandoned) {
        job_fail(job, "Cancelled: the client went away");
        return;
    }
    switch (job->kind) {
    case JOB_EXECUTE:
        execute_start(job);
        break;
    case JOB_RESET:
        reset_start(job);
        break;
    default:
        artifacts_start(job);
        break;
    }
}

/* ---- HTTP ----------------------------------------------------------------------------------- */

static void done_single(struct atr_job *job, int status, json_t *resp)
{
    http_req_t *req = job->owner;
    http_req_set_abort_cb(req, NULL, NULL);
    respond(req, status, resp);
}

static void on_single_gone(http_req_t *req, void *arg)
{
    (void)req;
    job_cancel(arg);
}

/* Queues one job answered by its own request. */
static void submit_single(struct atr_slot *s, enum job_kind kind, http_req_t *req, json_t *body)
{
    struct atr_job *job = job_new(s, kind, body, done_single, req, 0);
    if (!job) {
        respond(req, 500, plain_fail("out of memory"));
        return;
    }
    http_req_set_abort_cb(req, on_single_gone, job);
    job_enqueue(job);
    slot_pump(s);
}

/* "Unknown slot: X", X printed as the reference does (absent → "", null → None). */
static json_t *unknown_slot(json_t *id)
{
    buf_t b = BUF_INIT;
    if (id)
        py_str(id, &b);
    json_t *o = xfail("Unknown slot: %s", b.data ? b.data : "");
    buf_free(&b);
    return o;
}

static void atropos_execute(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    json_t *body = parse_object(req);
    if (!body)
        return;
    json_t *sid = json_object_get(body, "slot_id");
    struct atr_slot *s = find_slot(a, sid);
    if (!s) {
        json_t *o = unknown_slot(sid);
        json_t *eid = json_object_get(body, "execution_id");
        json_object_set(o, "execution_id", eid ? eid : json_null());
        respond(req, 200, o);
    } else {
        submit_single(s, JOB_EXECUTE, req, body);
    }
    json_decref(body);
}

static void atropos_reset(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    json_t *body = parse_object(req);
    if (!body)
        return;
    json_t *sid = json_object_get(body, "slot_id");
    struct atr_slot *s = find_slot(a, sid);
    if (!s)
        respond(req, 200, unknown_slot(sid));
    else
        submit_single(s, JOB_RESET, req, body);
    json_decref(body);
}

static void artifacts(struct atropos *a, http_req_t *req, enum job_kind kind)
{
    json_t *body = parse_object(req);
    if (!body)
        return;
    json_t *sid = json_object_get(body, "slot_id");
    struct atr_slot *s = find_slot(a, sid);
    if (!s) {
        buf_t b = BUF_INIT;
        if (sid)
            py_str(sid, &b);
        respond(req, 404, plain_fail("Unknown slot: %s", b.data ? b.data : ""));
        buf_free(&b);
        json_decref(body);
        return;
    }
    if (kind == JOB_ART_ARCHIVE) {
        buf_t fmt = BUF_INIT;
        json_t *fv = json_object_get(body, "format");
        py_name(fv, "tar.gz", &fmt);
        if (strcmp(fmt.data, "tar.gz") != 0 && strcmp(fmt.data, "tgz") != 0) {
            buf_t given = BUF_INIT;
            py_str(fv, &given);
            respond(req, 400, plain_fail("Unsupported archive format: %s", given.data));
            buf_free(&given);
            buf_free(&fmt);
            json_decref(body);
            return;
        }
        buf_free(&fmt);
    }
    submit_single(s, kind, req, body);
    json_decref(body);
}

static void atropos_artifacts_read(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    artifacts(a, req, JOB_ART_READ);
}

static void atropos_artifacts_list(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    artifacts(a, req, JOB_ART_LIST);
}

static void atropos_artifacts_archive(struct atropos *a, http_req_t *req,
                                      const struct route_params *p)
{
    (void)p;
    artifacts(a, req, JOB_ART_ARCHIVE);
}

/* ---- batch ---------------------------------------------------------------------------------- */

static void batch_respond(struct atr_batch *b)
{
    http_req_set_abort_cb(b->req, NULL, NULL);
    http_respond_json(b->req, 200, b->results);
    free(b->jobs);
    free(b);
}

static void done_batch(struct atr_job *job, int status, json_t *resp)
{
    struct atr_batch *b = job->owner;
    (void)status;
    json_array_set_new(b->results, job->index, resp);
    b->jobs[job->index] = NULL;
    if (--b->pending == 0)
        batch_respond(b);
}

static void on_batch_gone(http_req_t *req, void *arg)
{
    struct atr_batch *b = arg;
    (void)req;
    b->pending++; /* the batch must outlive the loops below */
    /* First mark them all: ending one lets its slot start the next, which may be ours. */
    for (size_t i = 0; i < b->n; i++)
        if (b->jobs[i])
            b->jobs[i]->abandoned = 1;
    for (size_t i = 0; i < b->n; i++)
        if (b->jobs[i])
            job_cancel(b->jobs[i]);
    if (--b->pending == 0)
        batch_respond(b);
}

static void atropos_batch(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    json_t *body = parse_body(req);
    if (!body)
        return;
    if (!json_is_array(body)) {
        json_decref(body);
        respond(req, 400, plain_fail("Expected array of requests"));
        return;
    }
    size_t n = json_array_size(body);
    struct atr_batch *b = calloc(1, sizeof(*b));
    struct atr_job **jobs = calloc(n ? n : 1, sizeof(*jobs));
    json_t *results = json_array();
    if (!b || !jobs || !results) {
        free(b);
        free(jobs);
        json_decref(results);
        json_decref(body);
        respond(req, 500, plain_fail("out of memory"));
        return;
    }
    b->req = req;
    b->results = results;
    b->jobs = jobs;
    b->n = n;
    /* Every item gets its answer in place; all are queued before any starts, so the items of
     * one slot run in array order. */
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(body, i);
        json_t *res = NULL;
        struct atr_slot *s = NULL;
        if (!json_is_object(item))
            res = xfail("Expected an object");
        else if (!(s = find_slot(a, json_object_get(item, "slot_id")))) {
            res = unknown_slot(json_object_get(item, "slot_id"));
            json_t *eid = json_object_get(item, "execution_id");
            json_object_set(res, "execution_id", eid ? eid : json_null());
        } else if (!(jobs[i] = job_new(s, JOB_EXECUTE, item, done_batch, b, i)))
            res = xfail("out of memory");
        json_array_append_new(results, res ? res : json_null());
        if (jobs[i])
            b->pending++;
    }
    json_decref(body); /* the jobs hold their items */
    http_req_set_abort_cb(req, on_batch_gone, b);
    b->pending++; /* held while starting: jobs may finish at once */
    for (size_t i = 0; i < n; i++)
        if (jobs[i])
            job_enqueue(jobs[i]);
    for (unsigned k = 0; k < a->n; k++)
        slot_pump(&a->slots[k]);
    if (--b->pending == 0)
        batch_respond(b);
}

/* ---- health, slots -------------------------------------------------------------------------- */

static void sandboxes_dir(struct atropos *a, buf_t *out)
{
    buf_appendf(out, "%s/sandboxes", a->reg->state_dir);
}

static void atropos_health(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    unsigned busy = 0;
    for (unsigned i = 0; i < a->n; i++)
        busy += a->slots[i].cur != NULL;
    buf_t dir = BUF_INIT;
    sandboxes_dir(a, &dir);
    /* bwrap_available: warren's own isolation, which every slot always runs under. */
    respond(req, 200,
            json_pack("{s:s, s:i, s:i, s:i, s:s, s:b, s:s}", "status", "ok", "slots", (int)a->n,
                      "available", (int)(a->n - busy), "executing", (int)busy, "data_dir", dir.data,
                      "bwrap_available", 1, "stateful_dir", dir.data));
    buf_free(&dir);
}

static void atropos_slots(struct atropos *a, http_req_t *req, const struct route_params *p)
{
    (void)p;
    json_t *arr = json_array();
    for (unsigned i = 0; i < a->n; i++) {
        struct atr_slot *s = &a->slots[i];
        /* The host directory of the slot's workspace (of the sandbox being created, if any). */
        struct sandbox *sb =
            s->sb && s->sb->state == SB_RUNNING ? s->sb : sandbox_find(a->reg, s->name);
        buf_t dir = BUF_INIT;
        sandboxes_dir(a, &dir);
        buf_appendf(&dir, "/%s%s", sb ? sb->id : s->name, sb ? "/workspace" : "");
        json_t *eid = s->cur && s->cur->kind == JOB_EXECUTE
                          ? json_object_get(s->cur->body, "execution_id")
                          : NULL;
        json_array_append_new(arr,
                              json_pack("{s:s, s:s, s:s, s:O}", "slot_id", s->name, "state",
                                        s->cur ? "executing" : "available", "workspace_dir",
                                        dir.data, "current_execution_id", eid ? eid : json_null()));
        buf_free(&dir);
    }
    respond(req, 200, json_pack("{s:o}", "slots", arr));
}

/* ---- set-up --------------------------------------------------------------------------------- */

int atropos_new(struct registry *reg, struct audit *audit, const struct session_limits *limits,
                unsigned nslots, struct atropos **out)
{
    if (nslots == 0 || nslots > MAX_SLOTS)
        return -EINVAL;
    struct atropos *a = calloc(1, sizeof(*a));
    if (!a || !(a->slots = calloc(nslots, sizeof(*a->slots)))) {
        free(a);
        return -ENOMEM;
    }
    a->reg = reg;
    a->audit = audit;
    a->limits = limits;
    a->n = nslots;
    for (unsigned i = 0; i < nslots; i++) {
        struct atr_slot *s = &a->slots[i];
        s->a = a;
        s->idx = i;
        snprintf(s->name, sizeof(s->name), "slot_%u", i);
        slot_forget_session(s);
        slot_create(s);
    }
    log_info("atropos slot protocol: %u slots (slot_0..slot_%u)", nslots, nslots - 1);
    *out = a;
    return 0;
}

void atropos_free(struct atropos *a)
{
    if (!a)
        return;
    for (unsigned i = 0; i < a->n; i++) {
        struct atr_slot *s = &a->slots[i];
        /* Every request was answered before the loop ended; anything still queued here had
         * nobody to answer (it cannot happen, but must not leak). */
        while (s->head) {
            struct atr_job *job = s->head;
            s->head = job->next;
            job_free(job);
        }
        if (s->sb)
            sandbox_unref(s->sb);
    }
    free(a->slots);
    free(a);
}

void atropos_shutdown(struct atropos *a)
{
    a->stopping = 1;
}

typedef void (*atropos_handler_fn)(struct atropos *a, http_req_t *req,
                                   const struct route_params *p);

static const struct route routes[] = {
    {"POST", "/execute", atropos_execute},
    {"POST", "/batch", atropos_batch},
    {"GET", "/health", atropos_health},
    {"POST", "/reset", atropos_reset},
    {"GET", "/slots", atropos_slots},
    {"POST", "/artifacts/read", atropos_artifacts_read},
    {"POST", "/artifacts/list", atropos_artifacts_list},
    {"POST", "/artifacts/archive", atropos_artifacts_archive},
};

int atropos_route(struct atropos *a, http_req_t *req)
{
    struct route_params params;
    int i = dispatch_match(routes, sizeof(routes) / sizeof(routes[0]), req, &params);
    if (i == -ENOENT)
        return 0;
    if (i >= 0 && a->stopping)
        http_respond_error(req, 503, "unavailable", "the daemon is shutting down");
    else if (i >= 0)
        ((atropos_handler_fn)routes[i].handler)(a, req, &params);
    return 1;
}
