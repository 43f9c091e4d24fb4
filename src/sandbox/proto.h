/*
 * proto — the control protocol between the daemon and a sandbox's init (PID 1).
 *
 * Transport: one AF_UNIX SOCK_SEQPACKET socketpair per sandbox. The init's end is fd 3 when it
 * starts (WPROTO_CTL_FD). SEQPACKET keeps message boundaries, so a message is exactly one
 * send/recv: a fixed header followed by a type-specific body. Messages never exceed
 * WPROTO_MAX_MSG bytes. File descriptors travel as SCM_RIGHTS ancillary data on the message they
 * belong to. Every integer is in host byte order (both ends run on the same machine).
 *
 *   daemon → init
 *     SPAWN  {tag, flags, rows, cols, argc, envc, data_len, data = cwd\0 argv[0]\0 ...
 *            env[0]\0 ...}
 *            Fork a command: new session and process group (pgid = pid), stdin/stdout/stderr
 *            connected to fresh pipes — or, with WPROTO_SPAWN_PTY, to the slave of a new
 *            pseudo-terminal of the sandbox's devpts (rows x cols, controlling terminal) —,
 *            cwd, environment exactly as given, argv[0] looked up in the PATH of that
 *            environment. With WPROTO_SPAWN_USER the command runs as {uid, gid} (ids of the
 *            sandbox, no supplementary groups, so no capabilities unless uid is 0); the
 *            switch happens before the chdir, so cwd is checked as that user. Exec failures do not
 * fail the SPAWN: the command writes "warren: <argv0>: <reason>" to its stderr and exits 127 (not
 * found) or 126. KILL   {tag=0, pid, sig, flags} send `sig` to `pid`, or to its process group with
 *            WPROTO_KILL_GROUP, or with WPROTO_KILL_ALL (pid ignored) to every process of the
 *            sandbox but the init: kill(-1) in the pid namespace, which reaches processes that
 *            left their session or group and those of nested pid namespaces alike.
 *   init → daemon
 *     SPAWNED {tag, pid, err} reply to SPAWN, in order. err == 0: pid is the command's pid in the
 *            sandbox and the message carries 3 fds (stdin write end, stdout read end, stderr read
 *            end), or 1 fd (the terminal's master side) for a PTY spawn. err > 0: an errno (e.g.
 *            EAGAIN when the pids limit is reached), no fds.
 *     EXIT   {tag, pid, status} a command started by SPAWN ended (status as from waitpid). Sent
 *            exactly once per successful SPAWN, always after its SPAWNED.
 *
 * The init exits when the daemon's end is closed; that ends the pid namespace and so every process
 * of the sandbox.
 *
 * This header is shared by the daemon and the static init binary: plain C, no dependencies.
 */
#ifndef WARREN_SANDBOX_PROTO_H
#define WARREN_SANDBOX_PROTO_H

#include <stdint.h>

#define WPROTO_CTL_FD 3
#define WPROTO_MAX_MSG 65536
#define WPROTO_MAX_ARGS 4096

enum wproto_type {
    WPROTO_SPAWN = 1,
    WPROTO_SPAWNED = 2,
    WPROTO_EXIT = 3,
    WPROTO_KILL = 4,
};

#define WPROTO_KILL_GROUP 1u
#define WPROTO_KILL_ALL 2u
#define WPROTO_SPAWN_PTY 1u
#define WPROTO_SPAWN_USER 2u

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
    uint32_t data_len;
    char data[]; /* cwd, argv and env strings, each NUL-terminated */
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

#endif
