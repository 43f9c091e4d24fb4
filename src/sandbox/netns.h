/*
 * netns — sockets that live in a sandbox's network namespace but are served by the daemon.
 *
 * A socket belongs to the network namespace its creator was in when it called socket(2), for its
 * whole life. The daemon's loop thread briefly enters a sandbox's namespace (setns on the init's
 * pidfd), creates and binds a listening socket there, and returns to the host namespace: the
 * sandbox sees a service on its own loopback, the daemon accepts on an ordinary fd, and the
 * sandbox keeps having no route anywhere (its namespace has only `lo`).
 *
 * Only the calling thread changes namespace (network namespaces are per thread for setns), and it
 * is back before netns_listen() returns. If it cannot get back, the thread would serve the host
 * from inside a sandbox: that aborts the daemon rather than going on.
 */
#ifndef WARREN_SANDBOX_NETNS_H
#define WARREN_SANDBOX_NETNS_H

#include <stdint.h>

/* Opens the calling thread's current network namespace, to return to. Call once, on the thread
 * that will call netns_listen(). Returns an fd (owned by the caller) or -errno. */
int netns_open_current(void);

/* Creates a TCP socket listening on 127.0.0.1:port inside the network namespace of the process
 * `pidfd` refers to, non-blocking and close-on-exec, and returns it (owned by the caller) or
 * -errno (-EADDRINUSE if something in the sandbox listens there already). `home` is the fd from
 * netns_open_current(). */
int netns_listen(int pidfd, int home, uint16_t port);

#endif
