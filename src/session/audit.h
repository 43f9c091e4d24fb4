/*
 * audit — the append-only audit log: one JSON object per line in <dir>/audit.log, rotated by
 * size into audit.log.1 (newest) .. audit.log.<keep> (oldest).
 *
 * A line is
 *   {"ts":"2026-11-23T10:00:00.123Z","event":"exec","sandbox":"sb-…","labels":{…},
 *    "caller":"127.0.0.1:5555", …fields}
 * (`sandbox`, `labels` and `caller` only when given). Each line is written with a single
 * write(2) on an O_APPEND descriptor, so concurrent writers never interleave inside a line; a
 * crash or a full disk can at worst leave the last line of a file torn, which readers skip (and
 * the next record starts on a new line). Lines are not fsync'd: they survive a crash of the
 * daemon, not of the machine.
 *
 * What goes in is the caller's business; the API layer (api/audit.c) records identities, names,
 * paths and sizes — never environment values, secret values, stdin or file contents.
 *
 * Rotation: when a record would make audit.log larger than max_bytes (and it is not empty),
 * audit.log.<keep-1> .. audit.log.1 are renamed one up (the oldest, audit.log.<keep>, is
 * replaced and so dropped), audit.log becomes audit.log.1, and a new audit.log is opened. With
 * keep 0 the full file is simply removed. Files are created with mode 0600, the directory 0700.
 *
 * Errors: int functions return 0 or -errno. Write errors (disk full, ...) never fail the action
 * being recorded: audit_record() returns the error, logs it once per burst of failures (then
 * once more, with the number of records lost, when writing works again) and drops the record.
 *
 * Threading: every function may be called from any thread (a mutex in struct audit serialises
 * writers and rotation, and lets audit_read() take a consistent snapshot of the files). The
 * daemon records from the loop thread and reads on the thread pool, since a read may go
 * through hundreds of MiB. audit_close() must not race with any other call.
 */
#ifndef WARREN_SESSION_AUDIT_H
#define WARREN_SESSION_AUDIT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define AUDIT_DEFAULT_MAX_BYTES ((size_t)64 << 20)
#define AUDIT_DEFAULT_KEEP 4
#define AUDIT_KEEP_MAX 100
/* A record whose line would be longer is written without its labels and fields (only "ok" and
 * "error" are kept) and with "truncated": true. */
#define AUDIT_LINE_MAX (64u << 10)

struct audit;

/* Creates `dir` (0700) if needed and opens (or creates, 0600) `dir`/audit.log for appending.
 * max_bytes 0 means AUDIT_DEFAULT_MAX_BYTES; keep is 0..AUDIT_KEEP_MAX (else -EINVAL). The
 * caller owns *out and releases it with audit_close(). */
int audit_open(const char *dir, size_t max_bytes, int keep, struct audit **out);
/* Closes the log; NULL is a no-op. */
void audit_close(struct audit *a);

/* Appends one record. `event` is required ("exec", "sandbox.create", ...). `sandbox_id`,
 * `labels` (an object, copied) and `caller` may be NULL and are then left out. `fields` is an
 * object whose members follow the fixed ones (a member named like a fixed one that is present is
 * ignored); the reference is stolen, even on error, and it may be NULL. A NULL `a` records
 * nothing and returns 0, so callers need not check whether the log is open. Returns 0, -EINVAL
 * (no event), -ENOMEM, or the write error (already logged). */
int audit_record(struct audit *a, const char *event, const char *sandbox_id, const json_t *labels,
                 json_t *fields, const char *caller);
/* The command of an exec-like request body for a record: {"argv": [...]} or {"shell": "..."}, at
 * most 1 KiB of it (then "command_truncated": true), and "cwd" and "timeout_s" as the body gives
 * them. A new object (NULL when out of memory). */
json_t *audit_command(const json_t *body);

/* Reads the records of the rotated files (oldest first) and then of audit.log, as they are when
 * the call starts, that match every filter given (NULL: no filter): `sandbox` equals the record's
 * sandbox; `since` <= ts <= `until` (RFC 3339 times, see audit_parse_time); `event` equals the
 * record's event or, when it ends with '*', is a prefix of it ("sandbox.*"). Lines that are not
 * JSON objects starting with a valid "ts" member, as audit_record() writes them, are skipped (a
 * torn line, say); so is whatever follows a file's last newline. When more than `limit` (>= 1)
 * records match, the most recent `limit` are returned and *truncated (may be NULL) is set to 1.
 * *out_array is a new array in chronological order (file order). Returns 0, -EINVAL (a bad time
 * or limit 0), -ENOMEM or the error of opening or reading a file. */
int audit_read(struct audit *a, const char *sandbox, const char *since, const char *until,
               const char *event, size_t limit, json_t **out_array, int *truncated);

/* Parses an RFC 3339 time "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)" ('t' and 'z' may be
 * lowercase; a space in place of the offset's '+', as a '+' in a URL query decodes, is accepted)
 * into milliseconds since the epoch (the fraction is cut to milliseconds). 0 or -EINVAL. */
int audit_parse_time(const char *s, int64_t *out_ms);
/* Formats `ms` since the epoch as "2026-11-23T10:00:00.123Z" (cap >= 25). */
void audit_format_time(int64_t ms, char *out, size_t cap);

#endif
