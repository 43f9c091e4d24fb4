/*
 * sblog — a sandbox's log, as `docker logs` shows a container's: the output of its commands
 * (detached ones and exec/ws ones: session/command.h), stdout and stderr together, in the order
 * it arrived, in one ring of SBLOG_BYTES (core/ring.h; older output is dropped). Lines are kept
 * whole: each command stream's output is appended a complete line at a time, so commands that
 * run at once interleave by lines, not mid-line. A partial line waits in its stream's writer
 * until its newline comes, it reaches SBLOG_LINE_MAX, or the command ends.
 *
 * Followers (the API's `follow=1`) are told when output is appended and when the sandbox goes.
 *
 * Ownership: the log belongs to the sandbox (sb->log, made on the first output, freed with the
 * sandbox by sblog_free()). A follower holds a sandbox reference of its own. Loop thread only.
 */
#ifndef WARREN_SESSION_SBLOG_H
#define WARREN_SESSION_SBLOG_H

#include <stddef.h>
#include <stdint.h>

#define SBLOG_BYTES (1u << 20)
#define SBLOG_LINE_MAX 1024

struct sandbox;
struct sblog;
struct sblog_follow;

/* The partial line of one output stream, embedded in its producer (zeroed to start). */
struct sblog_writer {
    size_t len;
    char buf[SBLOG_LINE_MAX];
};

/* Appends output of one stream (through its writer) to the sandbox's log. Without memory for
 * the log, the output is left out of it (the command itself keeps it). */
void sblog_write(struct sandbox *sb, struct sblog_writer *w, const char *data, size_t len);
/* Appends what the writer holds of an unfinished line (its stream ended). */
void sblog_flush(struct sandbox *sb, struct sblog_writer *w);

/* The stream offsets of what is kept: [*start, *end). */
void sblog_range(const struct sandbox *sb, uint64_t *start, uint64_t *end);
/* The offset where the last `lines` lines kept begin (a last line without newline counts). */
uint64_t sblog_tail(const struct sandbox *sb, uint64_t lines);
/* Copies up to `max` bytes from `offset` (as ring_read(): what was dropped is skipped). */
size_t sblog_read(const struct sandbox *sb, uint64_t offset, void *out, size_t max);

/* Calls on_update(arg, 0) after each append and on_update(arg, 1) once when the sandbox is
 * being deleted (then the follower must be dropped with sblog_unfollow(), from the callback or
 * later). Takes a sandbox reference until sblog_unfollow(). NULL without memory. */
struct sblog_follow *sblog_follow(struct sandbox *sb, void (*on_update)(void *arg, int closed),
                                  void *arg);
void sblog_unfollow(struct sblog_follow *f);

/* The sandbox is being deleted: followers are told. */
void sblog_close(struct sandbox *sb);
/* Frees the log (NULL is fine). Followers are gone by then (they hold references). */
void sblog_free(struct sblog *log);

#endif
