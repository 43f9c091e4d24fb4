/*
 * pipe — streaming between an HTTP exchange and a thread-pool worker through a pipe, with
 * backpressure both ways. A producing worker (an archive of a sandbox's files, a template's
 * export) writes into the pipe and the response carries what it wrote as fast as the client
 * takes it; a consuming worker (an archive to extract, an image to import) reads the request
 * body from the pipe, and the body is paused while the pipe is full.
 *
 * The loop's end of the pipe (nonblocking) is given to api_pipe_send() or api_pipe_receive(),
 * which own it from then on; the worker has the other end (blocking). Closing the loop's end is
 * how a worker learns that the client left: its writes fail with EPIPE, its reads see EOF.
 *
 * The caller tells the pipe when its worker is done (api_pipe_worker_done(), on the loop); the
 * pipe then calls `end` exactly once and frees itself afterwards:
 *  - send: once the worker is done and the pipe is drained (or the client is gone). If
 *    `started` is 0 nothing was sent and the caller must answer the request (an error, if r < 0);
 *    otherwise the pipe ended the response — broken off (http_respond_abort) if r < 0, so the
 *    client never takes a truncated archive for a whole one.
 *  - receive: at once; `body_err` is the upload's error (-errno) if it broke. The caller must
 *    answer the request in `end` (no body callback may reach a freed pipe).
 * Loop thread only.
 */
#ifndef WARREN_API_PIPE_H
#define WARREN_API_PIPE_H

#include <stdint.h>
#include <uv.h>

#include "net/http.h"

struct api_pipe;

typedef void (*api_pipe_end_fn)(void *arg, int r, int started, uint64_t bytes, int body_err);

/* 0, or -errno (then fd is closed and end never runs). */
int api_pipe_send(uv_loop_t *loop, http_req_t *req, int fd, const char *content_type,
                  api_pipe_end_fn end, void *arg, struct api_pipe **out);
int api_pipe_receive(uv_loop_t *loop, http_req_t *req, int fd, api_pipe_end_fn end, void *arg,
                     struct api_pipe **out);
/* The worker finished with r (0 or -errno). */
void api_pipe_worker_done(struct api_pipe *p, int r);

#endif
