/*
 * proto — the control protocol between the daemon and a sandbox's init (PID 1).
 *
 * Transport: one AF_UNIX SOCK_SEQPACKET socketpair per sandbox. The init's end is fd 3 when it
 * starts (WPROTO_CTL_FD). SEQPACKET keeps message boundaries, so a message is exactly one
 * send/recv: a fixed header followed by a type-specific body. Messages never exceed
 * WPROTO_MAX_MSG bytes. File descriptors travel as SCM_RIGHTS ancillary data on the message they
 * belong to. Every integer is in host byte order (both ends run on the same machine).
 *
 * Sandboxes outlive the daemon. The init also holds a copy of the *daemon's* end of the pair at
 * WPROTO_KEEP_FD, so the channel never sees EOF when a daemon exits or crashes: what the init
 * sends meanwhile waits in the socket (and, past its buffer, in the init's command table), and the
 * next daemon takes that end back with pidfd_getfd(pidfd_open(init), WPROTO_KEEP_FD) and says
 * HELLO. The init therefore never exits by itself: a daemon that destroys a sandbox kills it.
 *
 *   daemon → init
 *     HELLO  {tag=0, version} a daemon (re)connects. The init answers HELLO with its own version,
 *            then one STATE per command it still holds, then STATE_END. Everything the init sent
 *            before its HELLO answer was meant for a previous daemon: STATE says it again.
 *     SPAWN  {tag, flags, rows, cols, uid, gid, argc, envc, note_len, data_len, data = cwd\0
 *            argv[0]\0 ...
 *            env[0]\0 ... note} with 0-2 fds (the memfds holding the command's output rings,
 *            kept by the init for a later daemon, see STATE).
 *            Fork a command: new session and process group (pgid = pid), stdin/stdout/stderr
 *            connected to fresh pipes — or, with WPROTO_SPAWN_PTY, to the slave of a new
 *            pseudo-terminal of the sandbox's devpts (rows x cols, controlling terminal) —,
 *            cwd, environment exactly as given, argv[0] looked up in the PATH of that
 *            environment. With WPROTO_SPAWN_USER the command runs as {uid, gid} (ids of the
 *            sandbox, no supplementary groups, so no capabilities unless uid is 0); the
 *            switch happens before the chdir, so cwd is checked as that user. Exec failures do
 *            not fail the SPAWN: the command writes
 *            "warren: <argv0>: <reason>" to its stderr and exits 127 (not found) or 126.
 *            `note` (at most WPROTO_NOTE_MAX bytes) is opaque to the init and given back in STATE.
 *            The init keeps its own copy of the stdout/stderr read ends (or the terminal master)
 *            until RELEASE, so output written while no daemon runs waits in the pipes (a writer
 *            blocks once a pipe is full, as with a slow reader). It does not keep stdin's write
 *            end: a command's stdin sees EOF when the daemon goes.
 *     KILL   {tag=0, pid, sig, flags} send `sig` to `pid`, or to its process group with
 *            WPROTO_KILL_GROUP, or with WPROTO_KILL_ALL (pid ignored) to every process of the
 *            sandbox but the init: kill(-1) in the pid namespace, which reaches processes that
 *            left their session or group and those of nested pid namespaces alike.
 *     RELEASE {tag, what} WPROTO_RELEASE_PIPES: close the init's copies of the command's pipes
 *            (the daemon read them to EOF); WPROTO_RELEASE_ALL: forget the command (its ring
 *            memfds too; a command still running is no longer reported: no EXIT).
 *   init → daemon
 *     SPAWNED {tag, pid, err} reply to SPAWN. err == 0: pid is the command's pid in the
 *            sandbox and the message carries 3 fds (stdin write end, stdout read end, stderr read
 *            end), or 1 fd (the terminal's master side) for a PTY spawn. err > 0: an errno (e.g.
 *            EAGAIN when the pids limit is reached), no fds.
 *     EXIT   {tag, pid, status} a command started by SPAWN ended (status as from waitpid). Sent
 *            exactly once per successful SPAWN (unless released first), after its SPAWNED.
 *     HELLO  {tag=0, version} the answer to HELLO.
 *     STATE  {tag, pid, flags, status, note_len, note} a command the init holds:
 *            WPROTO_STATE_EXITED (status valid), WPROTO_STATE_PTY, WPROTO_STATE_PIPES (the fds
 *            start with the stdout and stderr read ends, or the terminal master), then its ring
 *            memfds as given in SPAWN.
 *     STATE_END {tag=0}
 *
 * Versions: HELLO carries WPROTO_VERSION. A daemon speaks the protocol of every init version it
 * may find running (the current one and the previous one); an init answers in its own.
 *
 * The init sends without blocking: an EXIT or SPAWNED the socket cannot take now is remembered
 * in the command's slot and sent when it can. It must never block while nobody reads.
 *
 * This header is shared by the daemon and the static init binary: plain C, no dependencies.
 */
#ifndef WARREN_SANDBOX_PROTO_H
#define WARREN_SANDBOX_PROTO_H

#include <stdint.h>

#define WPROTO_CTL_FD 3
#define WPROTO_KEEP_FD 6 /* the init's copy of the daemon's end (see above) */
#define WPROTO_VERSION 2
#define WPROTO_NOTE_MAX 1024
#define WPROTO_MAX_FDS 4
#define WPROTO_MAX_MSG 65536
#define WPROTO_MAX_ARGS 4096

enum wproto_type {
    WPROTO_SPAWN = 1,
    WPROTO_SPAWNED = 2,
    WPROTO_EXIT = 3,
    WPROTO_KILL = 4,
    WPROTO_HELLO = 5,
    WPROTO_RELEASE = 6,
    WPROTO_STATE = 7,
    WPROTO_STATE_END = 8,
};

#define WPROTO_KILL_GROUP 1u
#define WPROTO_KILL_ALL 2u
#define WPROTO_SPAWN_PTY 1u
#define WPROTO_SPAWN_USER 2u
#define WPROTO_RELEASE_PIPES 1u
#define WPROTO_RELEASE_ALL 2u
#define WPROTO_STATE_EXITED 1u
#define WPROTO_STATE_PTY 2u
#define WPROTO_STATE_PIPES 4u

struct wproto_hdr {
    uint32_t type;
    uint32_t tag; /* chosen by the daemon in SPAWN, echoed in SPAWNED and EXIT */
};

struct wproto_spawn {
    struct wproto_hdr hdr;
    uint32_t flags; /* WPROTO_SPAWN_* */
    uint16_t rows;  /* terminal size, with WPROTO_SPAWN_PTY */
    uint16_t cols;
    uint32_t uid; /* with WPROTO_SPAWN_USER */
    uint32_t gid;
    uint32_t argc;
    uint32_t envc;
    uint32_t note_len; /* the last note_len bytes of data */
    uint32_t data_len;
    char data[]; /* cwd, argv and env strings, each NUL-terminated, then the note */
};

struct wproto_spawned {
    struct wproto_hdr hdr;
    int32_t pid;
    int32_t err;
};

struct wproto_exit {
    struct wproto_hdr hdr;
    int32_t pid;
    int32_t status;
};

struct wproto_kill {
    struct wproto_hdr hdr;
    int32_t pid;
    int32_t sig;
    uint32_t flags;
};

struct wproto_hello {
    struct wproto_hdr hdr;
    uint32_t version;
};

struct wproto_release {
    struct wproto_hdr hdr;
    uint32_t what; /* WPROTO_RELEASE_* */
};

struct wproto_state {
    struct wproto_hdr hdr;
    int32_t pid;
    uint32_t flags; /* WPROTO_STATE_* */
    int32_t status;
    uint32_t note_len;
    char note[];
};

#endif
