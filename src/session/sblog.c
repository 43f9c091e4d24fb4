/*
 * sblog — a sandbox's log. See sblog.h.
 */
#include "session/sblog.h"

#include <stdlib.h>
#include <string.h>

#include "core/ring.h"
#include "session/sandbox.h"

struct sblog_follow {
    struct sblog_follow *next;
    struct sandbox *sb;
    void (*on_update)(void *arg, int closed);
    void *arg;
};

struct sblog {
    struct ring ring;
    struct sblog_follow *followers;
};

static struct sblog *log_of(struct sandbox *sb)
{
    if (!sb->log) {
        struct sblog *log = calloc(1, sizeof(*log));
        if (!log || ring_init(&log->ring, SBLOG_BYTES) < 0) {
            free(log);
            return NULL;
        }
        sb->log = log;
    }
    return sb->log;
}

static void notify(struct sandbox *sb, int closed)
{
    /* A follower may go (and drop the sandbox's last reference) from its callback. */
    sandbox_ref(sb);
    for (struct sblog_follow *f = sb->log->followers, *next; f; f = next) {
        next = f->next;
        f->on_update(f->arg, closed);
    }
    sandbox_unref(sb);
}

static void append(struct sandbox *sb, const char *data, size_t len)
{
    struct sblog *log = log_of(sb);
    if (!log || len == 0)
        return;
    ring_write(&log->ring, data, len);
    if (log->followers)
        notify(sb, 0);
}

void sblog_write(struct sandbox *sb, struct sblog_writer *w, const char *data, size_t len)
{
    const char *nl = memrchr(data, '\n', len);
    if (nl) {
        size_t head = (size_t)(nl + 1 - data);
        if (w->len) {
            /* The held start of the line and its end go in as one piece, so nothing else can
             * come between them. */
            struct sblog *log = log_of(sb);
            if (log)
                ring_write(&log->ring, w->buf, w->len);
            w->len = 0;
        }
        append(sb, data, head);
        data += head;
        len -= head;
    }
    while (len > 0) {
        size_t n = sizeof(w->buf) - w->len < len ? sizeof(w->buf) - w->len : len;
        memcpy(w->buf + w->len, data, n);
        w->len += n;
        data += n;
        len -= n;
        if (w->len == sizeof(w->buf)) /* an overlong line goes in pieces */
            sblog_flush(sb, w);
    }
}

void sblog_flush(struct sandbox *sb, struct sblog_writer *w)
{
    size_t n = w->len;
    w->len = 0;
    append(sb, w->buf, n);
}

void sblog_range(const struct sandbox *sb, uint64_t *start, uint64_t *end)
{
    *start = sb->log ? sb->log->ring.start : 0;
    *end = sb->log ? sb->log->ring.end : 0;
}

uint64_t sblog_tail(const struct sandbox *sb, uint64_t lines)
{
    uint64_t start, end;
    char last, chunk[4096];
    sblog_range(sb, &start, &end);
    if (lines == 0 || end == start)
        return end;
    sblog_read(sb, end - 1, &last, 1);
    /* Counting newlines back from the end, the one that closes the last line excluded. */
    uint64_t pos = end - (last == '\n');
    while (pos > start) {
        size_t n = pos - start < sizeof(chunk) ? (size_t)(pos - start) : sizeof(chunk);
        sblog_read(sb, pos - n, chunk, n);
        for (size_t i = n; i > 0; i--)
            if (chunk[i - 1] == '\n' && --lines == 0)
                return pos - n + i;
        pos -= n;
    }
    return start;
}

size_t sblog_read(const struct sandbox *sb, uint64_t offset, void *out, size_t max)
{
    return sb->log ? ring_read(&sb->log->ring, offset, out, max, NULL) : 0;
}

struct sblog_follow *sblog_follow(struct sandbox *sb, void (*on_update)(void *arg, int closed),
                                  void *arg)
{
    struct sblog *log = log_of(sb);
    struct sblog_follow *f = log ? calloc(1, sizeof(*f)) : NULL;
    if (!f)
        return NULL;
    *f = (struct sblog_follow){log->followers, sb, on_update, arg};
    log->followers = f;
    sandbox_ref(sb);
    return f;
}

void sblog_unfollow(struct sblog_follow *f)
{
    struct sandbox *sb = f->sb;
    for (struct sblog_follow **pp = &sb->log->followers; *pp; pp = &(*pp)->next) {
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    }
    free(f);
    sandbox_unref(sb);
}

void sblog_close(struct sandbox *sb)
{
    if (sb->log && sb->log->followers)
        notify(sb, 1);
}

void sblog_free(struct sblog *log)
{
    if (!log)
        return;
    ring_free(&log->ring);
    free(log);
}
