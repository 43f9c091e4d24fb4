/*
 * harness — what the libFuzzer targets in fuzz/ share: failing loudly, scratch directories, and a
 * client that talks to a server on a libuv loop over a real socket, one connection per input.
 *
 * Every target is one process and one thread: the loop runs on the fuzzer's thread between the
 * client's writes, so a run depends only on its input. A finding is an abort() (which libFuzzer
 * reports with the input), a sanitizer report, or a leak.
 */
#ifndef WARREN_FUZZ_HARNESS_H
#define WARREN_FUZZ_HARNESS_H

#include <stddef.h>
#include <sys/types.h>
#include <stdint.h>
#include <uv.h>

/* The libFuzzer entry points (the fuzzer's main calls them). */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reports a broken invariant and aborts, so that libFuzzer keeps the input. */
void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* A scratch tree for the file-system targets, under `base`: a file (content, mode, owner), a
 * directory, a symlink owned by `uid`. Any failure fails the run. */
void fz_put_file(const char *base, const char *rel, const char *content, mode_t mode, uid_t uid);
void fz_put_dir(const char *base, const char *rel, mode_t mode, uid_t uid);
void fz_put_link(const char *base, const char *rel, const char *target, uid_t uid);

/* Creates a directory /tmp/warren-fuzz-<name>-XXXXXX (path in `out`, cap >= 64), removed with
 * everything in it when the process exits normally. Aborts on failure. */
void fz_scratch_dir(const char *name, char *out, size_t cap);

/* Moves the process into a new network namespace with only `lo` up, so that nothing a target does
 * can reach another host (needs root; aborts otherwise). */
void fz_private_network(void);

/* fz_scratch_dir() with a tmpfs of its own mounted on it (after fz_private_mounts() only): file
 * system work there costs no disk I/O (fsync is free), and the mount ends with the process. */
void fz_scratch_tmpfs(const char *name, char *out, size_t cap);

/* Moves the process into a new mount namespace in which every mount is read-only except /tmp
 * (where the scratch directories, libFuzzer's corpora and its findings live), so that a target
 * exercising file-system code as root cannot damage the host even if that code is wrong (needs
 * root; aborts otherwise). Call before fz_scratch_dir(). */
void fz_private_mounts(void);

/* Handles of `loop` that are open or still closing (libuv's internal ones not counted). */
unsigned fz_loop_handles(uv_loop_t *loop);

/* Bytes received by the client, kept up to `cap` (the rest is read and dropped). */
struct fz_reply {
    uint8_t *data;
    size_t len, cap;
};

/* One client connection, see fz_session(). */
struct fz_client {
    const struct sockaddr *addr; /* the server's address (unix or loopback TCP) */
    size_t addrlen;
    size_t piece;           /* send the input in pieces of this many bytes; 0: all at once */
    size_t first_piece;     /* the first piece's size if not 0 */
    int half_close;         /* shutdown(SHUT_WR) after the input, before closing */
    unsigned idle_handles;  /* fz_loop_handles() of the loop without any connection */
    struct fz_reply *reply; /* what the server sent (may be NULL: dropped) */
    /* Optional: called after every loop turn, `client_closed` once the client has closed. Does
     * the target's own side work (e.g. an origin server) and returns nonzero if it made
     * progress. */
    int (*tick)(void *arg, int client_closed);
    void *tick_arg;
};

/* Connects to the server, sends `data` (piece by piece, running the loop after each piece until
 * the server has read it and gone quiet), half-closes if asked, closes, then runs the loop until
 * the loop is back to `idle_handles`. Aborts if that takes more than a few seconds: a server that
 * keeps a connection its client closed is a hang. With FUZZ_SHOW_REPLY set in the environment,
 * the reply is printed (to read what a reproduced input did). */
void fz_session(uv_loop_t *loop, const struct fz_client *c, const uint8_t *data, size_t size);

#endif
