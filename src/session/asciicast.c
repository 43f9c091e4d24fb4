/*
 * asciicast — an in-memory asciicast v2 recording. See asciicast.h.
 *
 * Storage: the header line in its own buffer, and the kept events as lines in `ev`, live from
 * `head` to the end. Dropping old events only advances `head`; the dead prefix is compacted away
 * once it is a sizeable part of the buffer, so each byte is moved O(1) times on average and the
 * memory stays within about 1.25 * max_bytes plus one event.
 */
#include "session/asciicast.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/util.h"

/* Bytes of an incomplete UTF-8 sequence held back between calls (at most 3 are ever needed). */
#define PENDING_MAX 4

struct pending {
    unsigned char b[PENDING_MAX];
    size_t n;
};

struct asciicast {
    buf_t header;
    buf_t ev;
    size_t head;    /* ev.data[head..ev.len) are the kept events */
    uint64_t first; /* logical offset of ev.data[head] */
    size_t max_bytes;
    double last_t;
    struct pending out_tail, in_tail;
    buf_t line;   /* scratch: the event being formatted */
    buf_t joined; /* scratch: held-back tail + new data */
};

/* Appends s as a JSON string literal, replacing invalid UTF-8 with U+FFFD. */
static int append_json_string(buf_t *out, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    /* Most output is plain text: reserve for the common case up front. */
    if (buf_reserve(out, n + 2) < 0 || buf_append(out, "\"", 1) < 0)
        return -ENOMEM;
    size_t run = 0, i = 0;
    while (i < n) {
        unsigned char ch = s[i];
        char esc[8];
        const char *rep = esc;
        size_t rep_len, adv = 1;
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch < 0x80) {
            i++;
            continue;
        }
        if (ch >= 0x80) {
            if (util_utf8_seq(s + i, n - i, &adv) == UTIL_UTF8_VALID) {
                i += adv;
                continue;
            }
            rep = "\xef\xbf\xbd";
            rep_len = 3;
        } else if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            rep_len = 2;
        } else if (ch == '\n' || ch == '\r' || ch == '\t' || ch == '\b' || ch == '\f') {
            esc[0] = '\\';
            esc[1] = ch == '\n'   ? 'n'
                     : ch == '\r' ? 'r'
                     : ch == '\t' ? 't'
                     : ch == '\b' ? 'b'
                                  : 'f';
            rep_len = 2;
        } else {
            rep_len = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", ch);
        }
        if (buf_append(out, s + run, i - run) < 0 || buf_append(out, rep, rep_len) < 0)
            return -ENOMEM;
        i += adv;
        run = i;
    }
    if (buf_append(out, s + run, n - run) < 0 || buf_append(out, "\"", 1) < 0)
        return -ENOMEM;
    return 0;
}

static size_t live_bytes(const struct asciicast *c)
{
    return c->ev.len - c->head;
}

/* Adds one formatted line (ending in '\n') to the kept events, dropping the oldest ones first
 * when the limit requires it. */
static int append_line(struct asciicast *c, const char *line, size_t len)
{
    while (live_bytes(c) > 0 && c->header.len + live_bytes(c) + len > c->max_bytes) {
        const char *p = c->ev.data + c->head;
        const char *nl = memchr(p, '\n', live_bytes(c));
        size_t drop = nl ? (size_t)(nl - p) + 1 : live_bytes(c);
        c->head += drop;
        c->first += drop;
    }
    size_t live = live_bytes(c);
    if (c->head > 0 && (c->head >= live || c->head >= c->max_bytes / 4)) {
        memmove(c->ev.data, c->ev.data + c->head, live);
        c->ev.len = live;
        c->ev.data[live] = '\0';
        c->head = 0;
    }
    return buf_append(&c->ev, line, len);
}

/* The time written for an event at `t`: never below the previous event's. */
static double event_time(struct asciicast *c, double t)
{
    if (!(t >= c->last_t)) /* also catches NaN */
        t = c->last_t;
    if (t > 1e12)
        t = 1e12; /* keeps "%.6f" short; ~31700 years */
    c->last_t = t;
    return t;
}

static int add_event(struct asciicast *c, double t, char type, const char *data, size_t len)
{
    buf_reset(&c->line);
    char prefix[64];
    int n = snprintf(prefix, sizeof(prefix), "[%.6f, \"%c\", ", event_time(c, t), type);
    if (buf_append(&c->line, prefix, (size_t)n) < 0 ||
        append_json_string(&c->line, data, len) < 0 || buf_append(&c->line, "]\n", 2) < 0)
        return -ENOMEM;
    return append_line(c, c->line.data, c->line.len);
}

/* Output and input: whole characters only; an incomplete tail waits in `tail`. */
static int add_text_event(struct asciicast *c, double t, char type, struct pending *tail,
                          const char *data, size_t len)
{
    const char *s = data;
    size_t n = len;
    if (tail->n > 0) {
        buf_reset(&c->joined);
        if (buf_append(&c->joined, tail->b, tail->n) < 0 || buf_append(&c->joined, data, len) < 0)
            return -ENOMEM;
        s = c->joined.data;
        n = c->joined.len;
    }
    size_t hold = n - util_utf8_complete_prefix(s, n); /* a cut character waits */
    if (n - hold > 0) {
        int rc = add_event(c, t, type, s, n - hold);
        if (rc < 0)
            return rc; /* nothing consumed: the tail stays as it was */
    }
    memmove(tail->b, s + n - hold, hold);
    tail->n = hold;
    return 0;
}

struct asciicast *asciicast_new(int cols, int rows, double start_time, const char *term,
                                const char *shell, size_t max_bytes)
{
    struct asciicast *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    buf_init(&c->header);
    buf_init(&c->ev);
    buf_init(&c->line);
    buf_init(&c->joined);
    c->max_bytes = max_bytes;
    /* The header's timestamp is an integer; keep the conversion defined for any double. */
    long long ts = start_time >= 0 && start_time < 9e15 ? (long long)start_time : 0;
    int rc = buf_appendf(&c->header,
                         "{\"version\": 2, \"width\": %d, \"height\": %d, "
                         "\"timestamp\": %lld, \"env\": {",
                         cols, rows, ts);
    if (rc == 0 && term) {
        rc = buf_append_str(&c->header, "\"TERM\": ");
        if (rc == 0)
            rc = append_json_string(&c->header, term, strlen(term));
    }
    if (rc == 0 && shell) {
        rc = buf_append_str(&c->header, term ? ", \"SHELL\": " : "\"SHELL\": ");
        if (rc == 0)
            rc = append_json_string(&c->header, shell, strlen(shell));
    }
    if (rc == 0)
        rc = buf_append_str(&c->header, "}}\n");
    if (rc == 0)
        rc = buf_reserve(&c->ev, 0); /* ev.data is then never NULL */
    if (rc != 0) {
        asciicast_free(c);
        return NULL;
    }
    c->first = c->header.len;
    return c;
}

void asciicast_free(struct asciicast *c)
{
    if (!c)
        return;
    buf_free(&c->header);
    buf_free(&c->ev);
    buf_free(&c->line);
    buf_free(&c->joined);
    free(c);
}

int asciicast_output(struct asciicast *c, double t, const char *data, size_t len)
{
    return add_text_event(c, t, 'o', &c->out_tail, data, len);
}

int asciicast_input(struct asciicast *c, double t, const char *data, size_t len)
{
    return add_text_event(c, t, 'i', &c->in_tail, data, len);
}

int asciicast_resize(struct asciicast *c, double t, int cols, int rows)
{
    char size[32];
    int n = snprintf(size, sizeof(size), "%dx%d", cols, rows);
    return add_event(c, t, 'r', size, (size_t)n);
}

uint64_t asciicast_end(const struct asciicast *c)
{
    return c->first + live_bytes(c);
}

char *asciicast_read(struct asciicast *c, uint64_t since, size_t *len, uint64_t *next)
{
    uint64_t end = asciicast_end(c);
    size_t from; /* index into ev.data where the returned events start */
    int with_header = since == 0;
    if (since == 0 || since <= c->first) {
        from = c->head; /* in the header or in dropped events: the oldest kept event */
    } else if (since >= end) {
        from = c->ev.len;
    } else {
        from = c->head + (size_t)(since - c->first);
        if (c->ev.data[from - 1] != '\n') {
            const char *nl = memchr(c->ev.data + from, '\n', c->ev.len - from);
            from = nl ? (size_t)(nl - c->ev.data) + 1 : c->ev.len;
        }
    }
    size_t hlen = with_header ? c->header.len : 0;
    size_t n = hlen + (c->ev.len - from);
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    memcpy(out, c->header.data, hlen);
    memcpy(out + hlen, c->ev.data + from, c->ev.len - from);
    out[n] = '\0';
    *len = n;
    *next = end;
    return out;
}
