/*
 * harness — see harness.h.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"

/* Loop turns per piece at most (a server that stops reading is not waited for). */
#define MAX_TURNS 64
/* How long the server may take to close a connection its client closed. */
#define CLOSE_DEADLINE_MS 5000
#define MAX_SCRATCH 8

void fz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

static char scratch[MAX_SCRATCH][64];
static int scratch_tmpfs[MAX_SCRATCH];
static int nscratch;

static void remove_scratch(void)
{
    for (int i = 0; i < nscratch; i++) {
        if (scratch_tmpfs[i])
            umount2(scratch[i], MNT_DETACH);
        util_remove_tree(scratch[i]);
    }
}

static void scratch_dir(const char *name, int tmpfs, char *out, size_t cap)
{
    if (nscratch == MAX_SCRATCH)
        fz_fail("too many scratch directories");
    snprintf(scratch[nscratch], sizeof(scratch[0]), "/tmp/warren-fuzz-%s-XXXXXX", name);
    if (!mkdtemp(scratch[nscratch]))
        fz_fail("mkdtemp: %s", strerror(errno));
    if (tmpfs && mount("tmpfs", scratch[nscratch], "tmpfs", 0, "mode=0700,size=256m") < 0)
        fz_fail("tmpfs on %s: %s", scratch[nscratch], strerror(errno));
    scratch_tmpfs[nscratch] = tmpfs;
    if (nscratch++ == 0)
        atexit(remove_scratch);
    snprintf(out, cap, "%s", scratch[nscratch - 1]);
}

void fz_scratch_dir(const char *name, char *out, size_t cap)
{
    scratch_dir(name, 0, out, cap);
}

void fz_scratch_tmpfs(const char *name, char *out, size_t cap)
{
    scratch_dir(name, 1, out, cap);
}

void fz_private_network(void)
{
    if (unshare(CLONE_NEWNET) < 0)
        fz_fail("unshare(CLONE_NEWNET): %s (run as root)", strerror(errno));
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
    if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
        fz_fail("lo: %s", strerror(errno));
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
        fz_fail("lo up: %s", strerror(errno));
    close(fd);
}

static void set_rdonly(const char *path, int rdonly)
{
    struct mount_attr attr = {0};
    if (rdonly)
        attr.attr_set = MOUNT_ATTR_RDONLY;
    else
        attr.attr_clr = MOUNT_ATTR_RDONLY;
    if (syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof(attr)) < 0)
        fz_fail("mount_setattr(%s): %s", path, strerror(errno));
}

void fz_private_mounts(void)
{
    if (unshare(CLONE_NEWNS) < 0)
        fz_fail("unshare(CLONE_NEWNS): %s (run as root)", strerror(errno));
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("/tmp", "/tmp", NULL, MS_BIND | MS_REC, NULL) < 0)
        fz_fail("mount: %s", strerror(errno));
    set_rdonly("/", 1);
    set_rdonly("/tmp", 0);
}

static void count_handle(uv_handle_t *h, void *arg)
{
    (void)h;
    (*(unsigned *)arg)++;
}

unsigned fz_loop_handles(uv_loop_t *loop)
{
    unsigned n = 0;
    uv_walk(loop, count_handle, &n);
    return n;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads what the server sent; returns the bytes read. */
static size_t drain(int fd, struct fz_reply *r)
{
    size_t total = 0;
    uint8_t buf[16384];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0)
            return total;
        total += (size_t)n;
        if (r && r->len < r->cap) {
            size_t keep = (size_t)n < r->cap - r->len ? (size_t)n : r->cap - r->len;
            memcpy(r->data + r->len, buf, keep);
            r->len += keep;
        }
    }
}

/* Runs the loop until the server has taken what was sent and nothing more is due: no reply
 * arrived in the last turn, the client's socket has no unread bytes, and the loop has nothing
 * to do without new input (uv_backend_timeout() is 0 while callbacks or 0 ms timers wait). */
static void settle(uv_loop_t *loop, const struct fz_client *c, int fd)
{
    for (int turn = 0; turn < MAX_TURNS; turn++) {
        uv_run(loop, UV_RUN_NOWAIT);
        int progress = drain(fd, c->reply) > 0;
        if (c->tick && c->tick(c->tick_arg, 0))
            progress = 1;
        int unread = 0;
        if (ioctl(fd, SIOCOUTQ, &unread) < 0)
            unread = 0;
        if (!progress && unread == 0 && uv_backend_timeout(loop) != 0)
            return;
    }
}

/* A blocking connect that a signal interrupts goes on in the background (connect(2), EINTR):
 * wait for it to finish instead of failing the run (seen once in 30 minutes of fuzzing). */
static int connect_retry(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (connect(fd, addr, len) == 0)
        return 0;
    if (errno != EINTR)
        return -1;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t elen = sizeof(err);
    while (poll(&p, 1, -1) < 0)
        if (errno != EINTR)
            return -1;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
        return -1;
    errno = err;
    return err ? -1 : 0;
}

void fz_session(uv_loop_t *loop, const struct fz_client *c, const uint8_t *data, size_t size)
{
    int fd = socket(c->addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect_retry(fd, c->addr, (socklen_t)c->addrlen) < 0)
        fz_fail("connect: %s", strerror(errno));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    settle(loop, c, fd); /* the server accepts */

    size_t off = 0;
    int stalled = 0;
    while (off < size && stalled < MAX_TURNS) {
        size_t piece = off == 0 && c->first_piece ? c->first_piece : c->piece;
        size_t n = piece && size - off > piece ? piece : size - off;
        ssize_t w = send(fd, data + off, n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN)
            break; /* the server closed the connection */
        if (w > 0)
            off += (size_t)w;
        stalled = w > 0 ? 0 : stalled + 1;
        settle(loop, c, fd);
    }
    if (c->half_close) {
        shutdown(fd, SHUT_WR);
        settle(loop, c, fd);
    }
    drain(fd, c->reply);
    close(fd);
    if (c->reply && getenv("FUZZ_SHOW_REPLY"))
        fprintf(stderr, "---- reply (%zu bytes) ----\n%.*s\n----\n", c->reply->len,
                (int)c->reply->len, (const char *)c->reply->data);

    int64_t deadline = now_ms() + CLOSE_DEADLINE_MS;
    for (;;) {
        uv_run(loop, UV_RUN_NOWAIT);
        int progress = c->tick && c->tick(c->tick_arg, 1);
        if (fz_loop_handles(loop) <= c->idle_handles)
            break;
        if (now_ms() > deadline)
            fz_fail("the server still holds the connection %d ms after the client closed it",
                    CLOSE_DEADLINE_MS);
        if (!progress) {
            /* Sleep in the loop's own poll set until something is due. */
            int timeout = uv_backend_timeout(loop);
            struct pollfd p = {.fd = uv_backend_fd(loop), .events = POLLIN};
            poll(&p, 1, timeout < 0 || timeout > 50 ? 50 : timeout);
        }
    }
}

void fz_put_file(const char *base, const char *rel, const char *content, mode_t mode, uid_t uid)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", base, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0 || write(fd, content, strlen(content)) < 0 || fchmod(fd, mode) < 0 ||
        fchown(fd, uid, uid) < 0)
        fz_fail("%s: %s", p, strerror(errno));
    close(fd);
}

void fz_put_dir(const char *base, const char *rel, mode_t mode, uid_t uid)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", base, rel);
    if (mkdir(p, mode) < 0 || chmod(p, mode) < 0 || chown(p, uid, uid) < 0)
        fz_fail("%s: %s", p, strerror(errno));
}

void fz_put_link(const char *base, const char *rel, const char *target, uid_t uid)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", base, rel);
    if (symlink(target, p) < 0 || lchown(p, uid, uid) < 0)
        fz_fail("%s: %s", p, strerror(errno));
}
