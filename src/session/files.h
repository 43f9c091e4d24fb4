/*
 * files — file access for the adapters (the files API, which the CLI's `cp` uses, and atropos):
 * the engine's blocking file functions (sandbox/fs.h) run on the uv thread pool, with the
 * sandbox's root as the engine sees it. This is the one asynchronous path to a sandbox's files.
 *
 * A `struct files` holds one sandbox's file system open for a series of operations: an fs_root
 * (the root directory of the sandbox's init, pinned as fs_root_open describes, and the host
 * uid/gid of the sandbox's root user) and a reference to the sandbox. Work functions run on a
 * pool thread and get that root; they call the sandbox/fs.h functions this header re-exposes
 * (fs_stat, fs_list, fs_open_read, fs_open_write, struct fs_entry, ...: adapters include this
 * header, never sandbox/fs.h). Completions run on the loop.
 *
 * Threading: loop thread only, except work functions, which must touch nothing but their
 * argument and the root until their completion runs.
 */
#ifndef WARREN_SESSION_FILES_H
#define WARREN_SESSION_FILES_H

#include <stddef.h>
#include <stdint.h>

#include "sandbox/fs.h"

struct sandbox;
struct files;

/* Runs on a pool thread with the sandbox's root. */
typedef void (*files_work_fn)(const struct fs_root *root, void *arg);
/* Runs on the loop once the work has returned. */
typedef void (*files_done_fn)(void *arg);

/* Opens the file system of `sb` (its init's root, with its root user's host uid/gid) and takes a
 * reference to the sandbox until files_close. The sandbox should be running or paused. Returns 0
 * or fs_root_open's errors (-EINVAL without an init, -ESRCH if it is gone, ...). */
int files_open(struct sandbox *sb, struct files **out);
/* Queues `work` on the thread pool, then `done` on the loop. One at a time: -EBUSY while a work
 * (or a stream below) of `f` is queued or running. */
int files_queue(struct files *f, files_work_fn work, files_done_fn done, void *arg);
/* The root, for what continues on the loop between works (struct fs_tmp points to it). Valid
 * until files_close. */
const struct fs_root *files_root(const struct files *f);
/* Releases the root and the sandbox reference. Never while a work is queued or running (wait
 * for its done). NULL is fine. */
void files_close(struct files *f);

/* One work on a sandbox's files: files_open, files_queue, and files_close just before `done` is
 * called. Returns 0, or -errno from files_open (then nothing runs and nothing is called). */
int files_run(struct sandbox *sb, files_work_fn work, files_done_fn done, void *arg);

/* Archive streams between the loop and a pool thread through a pipe, whose blocking end on the
 * worker's side is the backpressure. *fd receives the loop's end, non-blocking and owned by the
 * caller, who may close it at any time (a writing worker then fails with -EPIPE, a reading one
 * sees the end of its input). `done` runs on the loop when the worker has finished and closed its
 * end: `r` is the worker's result, `entries` what it wrote or extracted, `err` a message about the
 * failure ("" when there is none; valid during the call). Both count as the one work of `f`. */
typedef void (*files_archive_done_fn)(int r, size_t entries, const char *err, void *arg);
/* fs_archive_create of `path` (entries named relative to its parent, no limits): the tar.gz is
 * read from *fd. 0 or -errno (-EBUSY, pipe errors, -ENOMEM). */
int files_archive_stream(struct files *f, const char *path, int *fd, files_archive_done_fn done,
                         void *arg);
/* fs_archive_extract into `path` of the tar or tar.gz written to *fd (closing it ends the
 * input), with the limits of fs_archive_extract. 0 or -errno. */
int files_extract_stream(struct files *f, const char *path, uint64_t max_bytes, size_t max_entries,
                         int *fd, files_archive_done_fn done, void *arg);

#endif
