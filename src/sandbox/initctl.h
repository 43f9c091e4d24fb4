/*
 * initctl — the daemon's side of the control channel to a sandbox's init (sandbox/proto.h): it
 * encodes requests (spawn a process, signal one), queues what the socket cannot take at once,
 * and decodes what the init reports (a process spawned, with its pipe or PTY fds; a process
 * exited). It knows no event loop: the caller polls the fd, readable always, writable while
 * initctl_pending() says something waits.
 *
 * Ownership: the struct initctl owns `fd` (initctl_close() closes it) and the queue. fds passed
 * in an event belong to the caller once initctl_read() returns them. Errors: 0 or -errno.
 * Single-threaded.
 *
 * Taking over a running sandbox (a previous daemon's): its fd comes from
 * initctl_take_fd(), and initctl_hello() learns, before anything else is sent, what the init
 * still holds.
 */
#ifndef WARREN_SANDBOX_INITCTL_H
#define WARREN_SANDBOX_INITCTL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct initctl_msg;

struct initctl {
    int fd;                          /* the daemon's end of the socketpair; -1 once closed */
    struct initctl_msg *head, *tail; /* queued, not yet sent */
};

struct initctl_spawn {
    const char *cwd;
    const char *const *argv; /* NULL-terminated */
    const char *const *env;  /* NULL-terminated "K=V" */
    int pty;                 /* a pseudo-terminal of rows x cols instead of three pipes */
    unsigned rows, cols;
    int user; /* run as uid:gid (ids inside the sandbox) instead of root */
    uid_t uid;
    gid_t gid;
    const int *fds; /* up to 2 fds the init keeps for a later daemon (output rings), borrowed */
    int nfds;
    const void *note; /* up to WPROTO_NOTE_MAX bytes given back by initctl_hello() */
    size_t note_len;
};

/* A command the init holds, as initctl_hello() reports it. The fds are the callee's. */
struct initctl_state {
    uint32_t tag;
    pid_t pid;
    int exited, status; /* status as waitpid(2), once exited */
    int pty;
    int pipe_fds[2]; /* stdout, stderr read ends (the terminal master alone), or -1 */
    int ring_fds[2]; /* as given in the spawn, or -1 */
    const void *note;
    size_t note_len;
};

enum initctl_event_type { INITCTL_SPAWNED, INITCTL_EXITED };

struct initctl_event {
    enum initctl_event_type type;
    uint32_t tag; /* the spawn's */
    pid_t pid;
    int err;    /* SPAWNED: 0, or the errno of a spawn that failed */
    int status; /* EXITED: as waitpid(2) */
    int fds[3]; /* SPAWNED: stdin, stdout, stderr (or the PTY master alone) */
    int nfds;
};

void initctl_init(struct initctl *c, int fd);
/* Asks the init to start a process, tagged `tag` in the events about it. -E2BIG when the strings
 * do not fit in one message (WPROTO_MAX_MSG) or there are too many, -ENOMEM, -EPIPE when the
 * channel is broken. Queued when the socket is full. */
int initctl_spawn(struct initctl *c, uint32_t tag, const struct initctl_spawn *req);
/* Asks the init to send `sig` to `pid` (its process group with `group`). Errors as above. */
int initctl_kill(struct initctl *c, pid_t pid, int sig, int group);
/* Asks the init to send `sig` to every other process of the sandbox. Errors as above. */
int initctl_kill_all(struct initctl *c, int sig);
/* Tells the init the daemon no longer needs its copy of the process's pipes (`all` 0), or
 * anything of it (`all` 1). Errors as above. */
int initctl_release(struct initctl *c, uint32_t tag, int all);

/* The control fd of a running init started by another daemon: pidfd_getfd() of the init's
 * WPROTO_KEEP_FD. Returns the fd (close-on-exec) or -errno (-EBADF: not a warren init of this
 * protocol, or one that does not keep it). */
int initctl_take_fd(int pidfd);
/* The handshake with an init taken over: HELLO, then `fn` for each command it reports, until it
 * says it has said all; blocks up to timeout_ms. Messages that were waiting for the previous
 * daemon are dropped (their fds closed): STATE says it all again. *version is the init's.
 * Returns 0, -ETIMEDOUT, -EPIPE (the init is gone), -EPROTONOSUPPORT (a protocol version this
 * daemon does not speak: *version says which), -ENOMEM. Call it before anything else is sent. */
int initctl_hello(struct initctl *c, int timeout_ms, uint32_t *version,
                  void (*fn)(const struct initctl_state *st, void *arg), void *arg);
/* Sends what is queued, as far as the socket takes it: 0 or -EPIPE. */
int initctl_flush(struct initctl *c);
/* True while messages wait to be sent (poll for writable). */
int initctl_pending(const struct initctl *c);
/* Reads the next event: 1 with *ev filled, 0 when there is none now, -EPIPE when the init has
 * closed its end (it is gone) or the channel failed. Messages of other types and malformed ones
 * are dropped (with their fds). */
int initctl_read(struct initctl *c, struct initctl_event *ev);
/* Drops the queue and closes the fd. Safe twice. */
void initctl_close(struct initctl *c);

#endif
