/*
 * proc — one process started in a sandbox by its init, as the daemon sees it: the pipes (or the
 * terminal master) that come back from the init, an input queue, output delivered to a callback,
 * and the exit status. exec (one-shot), command (detached, streamed), shell and terminal are
 * built on it.
 *
 * Lifecycle: proc_start() sends SPAWN; the init answers with the pid and fds; output is read as
 * it comes (unless paused) and handed to ops->on_output; when the init reports the exit, what the
 * process wrote before exiting is read from the pipes and on_exit fires exactly once. Background
 * processes it started may keep the pipes open; their later output is not read. If the sandbox
 * goes away first, on_exit fires with status -ESRCH; if the init cannot start the process, with
 * -errno (e.g. -EAGAIN at the pids limit).
 *
 * Ownership: the owner calls proc_release() once, when it no longer needs the proc (from
 * on_exit or any time after); the proc is freed after both release and exit, when its handles are
 * closed. A proc released while running keeps running and is freed after its exit (callbacks are
 * no longer called). Runs on the loop thread.
 */
#ifndef WARREN_SESSION_PROC_H
#define WARREN_SESSION_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "session/sandbox.h"

enum proc_stream { PROC_STDOUT = 1, PROC_STDERR = 2 };

struct proc;

struct proc_ops {
    /* Output as read (a terminal's output is PROC_STDOUT). */
    void (*on_output)(struct proc *p, enum proc_stream s, const char *data, size_t len, void *arg);
    /* The init started it: proc_pid() is valid. Optional. */
    void (*on_started)(struct proc *p, void *arg);
    /* Wait status (>= 0), or -errno when it never ran or the sandbox went away. */
    void (*on_exit)(struct proc *p, int status, void *arg);
};

struct proc_spec {
    const char *const *argv; /* NULL-terminated, non-empty */
    const char *const *env;  /* NULL-terminated "K=V": the complete environment */
    const char *cwd;
    int pty;                         /* a terminal instead of pipes */
    const struct sandbox_user *user; /* NULL: the sandbox's (its image's User, else root) */
    int rows, cols;                  /* with pty */
    /* For a later daemon (sandbox/proto.h): fds the init keeps (output ring memfds, borrowed),
     * an opaque note it gives back, and whether it keeps the process's record after its exit
     * (until proc_forget()) instead of forgetting it as soon as its output was read. */
    const int *keep_fds;
    int nkeep;
    const void *note;
    size_t note_len;
    int keep_after_exit;
};

/* Returns 0 or -errno (-EPIPE: the sandbox is not running; -E2BIG: argv/env too large). */
int proc_start(struct sandbox *sb, const struct proc_spec *spec, const struct proc_ops *ops,
               void *arg, struct proc **out);
void proc_release(struct proc *p);
/* Queues input (copied). -EPIPE once stdin is closed or the process is gone. */
int proc_write(struct proc *p, const void *data, size_t len);
/* Closes stdin after the queued input is written (pipes). On a terminal this sends EOF (^D). */
void proc_close_stdin(struct proc *p);
/* Bytes of input queued and not yet written. */
size_t proc_input_pending(const struct proc *p);
/* Sends `sig` to the process, or to its whole process group. Before the init has answered, the
 * signal is sent as soon as it does. */
void proc_kill(struct proc *p, int sig, int group);
/* Terminal size (pty only); -ENOTTY otherwise. */
int proc_resize(struct proc *p, int rows, int cols);
/* Terminal only: the foreground process group and the session id of the terminal, as host pids
 * (so the daemon can signal them directly). -ENOTTY for pipes, -EPIPE once closed. */
int proc_tty_groups(struct proc *p, pid_t *fg_pgrp, pid_t *session);
/* Stops (1) or resumes (0) reading the output: the process blocks once its pipe is full. */
void proc_pause_output(struct proc *p, int paused);
pid_t proc_pid(const struct proc *p);
struct sandbox *proc_sandbox(const struct proc *p);

/* A process a previous daemon started, as its init reports it (its pipe fds are taken over):
 * running, with no stdin. If it has exited, the caller then calls proc_on_exit() with its status.
 * Returns 0 or -ENOMEM (the fds are then closed). */
int proc_adopt(struct sandbox *sb, const struct initctl_state *st, const struct proc_ops *ops,
               void *arg, struct proc **out);
/* Tells the init to forget a keep_after_exit process (by its tag) once the owner no longer
 * needs its record. */
void proc_forget(struct sandbox *sb, uint32_t tag);

/* Hooks for sandbox.c: messages from the init, and the end of the sandbox. */
void proc_on_spawned(struct proc *p, pid_t pid, int err, const int *fds, int nfds);
void proc_on_exit(struct proc *p, int status);
void proc_on_sandbox_gone(struct proc *p);
uint32_t proc_tag(const struct proc *p);
struct proc *proc_next(const struct proc *p);

#endif
