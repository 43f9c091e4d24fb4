/*
 * initctl — the daemon's side of the init's control protocol. See initctl.h and proto.h.
 */
#include "sandbox/initctl.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "sandbox/proto.h"

/* The oldest init protocol version this daemon speaks (proto.h). Inits of version 1 died with
 * their daemon, so there is none to take over. */
#define INITCTL_MIN_VERSION 2

struct initctl_msg {
    struct initctl_msg *next;
    size_t len;
    int fds[2]; /* our own copies, closed once sent */
    int nfds;
    char data[];
};

static void msg_free(struct initctl_msg *m)
{
    for (int i = 0; i < m->nfds; i++)
        close(m->fds[i]);
    free(m);
}

static ssize_t send_fds(int fd, const void *msg, size_t len, const int *fds, int nfds)
{
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    return sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
}

void initctl_init(struct initctl *c, int fd)
{
    c->fd = fd;
    c->head = c->tail = NULL;
}

int initctl_flush(struct initctl *c)
{
    while (c->head) {
        struct initctl_msg *m = c->head;
        ssize_t n = send_fds(c->fd, m->data, m->len, m->fds, m->nfds);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            return -EPIPE;
        }
        c->head = m->next;
        if (!c->head)
            c->tail = NULL;
        msg_free(m);
    }
    return 0;
}

int initctl_pending(const struct initctl *c)
{
    return c->head != NULL;
}

/* The socket is a SOCK_SEQPACKET: a message goes whole or not at all. `fds` are borrowed. */
static int send_msg_fds(struct initctl *c, const void *msg, size_t len, const int *fds, int nfds)
{
    if (c->fd < 0)
        return -EPIPE;
    if (!c->head) {
        ssize_t n = send_fds(c->fd, msg, len, fds, nfds);
        if (n >= 0)
            return 0;
        if (errno != EAGAIN && errno != EINTR)
            return -EPIPE;
    }
    /* The init is not reading fast enough: keep it for initctl_flush(). */
    struct initctl_msg *m = malloc(sizeof(*m) + len);
    if (!m)
        return -ENOMEM;
    m->next = NULL;
    m->len = len;
    m->nfds = 0;
    for (int i = 0; i < nfds && i < 2; i++) {
        if ((m->fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 0)) < 0) {
            int e = -errno;
            msg_free(m);
            return e;
        }
        m->nfds++;
    }
    memcpy(m->data, msg, len);
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
    return 0;
}

static int send_msg(struct initctl *c, const void *msg, size_t len)
{
    return send_msg_fds(c, msg, len, NULL, 0);
}

/* Appends a NUL-terminated string to a SPAWN message. */
static int put_str(char *msg, size_t *off, const char *s)
{
    size_t n = strlen(s) + 1;
    if (*off + n > WPROTO_MAX_MSG)
        return -E2BIG;
    memcpy(msg + *off, s, n);
    *off += n;
    return 0;
}

int initctl_spawn(struct initctl *c, uint32_t tag, const struct initctl_spawn *req)
{
    char *msg = malloc(WPROTO_MAX_MSG);
    if (!msg)
        return -ENOMEM;
    struct wproto_spawn *sp = (struct wproto_spawn *)msg;
    size_t off = sizeof(*sp);
    int r = -E2BIG;
    memset(sp, 0, sizeof(*sp));
    sp->hdr.type = WPROTO_SPAWN;
    sp->hdr.tag = tag;
    if (req->pty) {
        sp->flags = WPROTO_SPAWN_PTY;
        sp->rows = (uint16_t)req->rows;
        sp->cols = (uint16_t)req->cols;
    }
    if (req->user) {
        sp->flags |= WPROTO_SPAWN_USER;
        sp->uid = (uint32_t)req->uid;
        sp->gid = (uint32_t)req->gid;
    }
    if (put_str(msg, &off, req->cwd) < 0)
        goto out;
    for (const char *const *a = req->argv; *a; a++, sp->argc++)
        if (sp->argc >= WPROTO_MAX_ARGS || put_str(msg, &off, *a) < 0)
            goto out;
    for (const char *const *e = req->env; *e; e++, sp->envc++)
        if (sp->envc >= WPROTO_MAX_ARGS || put_str(msg, &off, *e) < 0)
            goto out;
    if (req->note_len > WPROTO_NOTE_MAX || off + req->note_len > WPROTO_MAX_MSG || req->nfds > 2)
        goto out;
    if (req->note_len)
        memcpy(msg + off, req->note, req->note_len);
    off += req->note_len;
    sp->note_len = (uint32_t)req->note_len;
    sp->data_len = (uint32_t)(off - sizeof(*sp));
    r = send_msg_fds(c, msg, off, req->fds, req->nfds);
out:
    free(msg);
    return r;
}

int initctl_kill(struct initctl *c, pid_t pid, int sig, int group)
{
    struct wproto_kill k = {
        .hdr = {WPROTO_KILL, 0}, .pid = pid, .sig = sig, .flags = group ? WPROTO_KILL_GROUP : 0};
    return send_msg(c, &k, sizeof(k));
}

int initctl_kill_all(struct initctl *c, int sig)
{
    struct wproto_kill k = {.hdr = {WPROTO_KILL, 0}, .sig = sig, .flags = WPROTO_KILL_ALL};
    return send_msg(c, &k, sizeof(k));
}

int initctl_release(struct initctl *c, uint32_t tag, int all)
{
    struct wproto_release rl = {.hdr = {WPROTO_RELEASE, tag},
                                .what = all ? WPROTO_RELEASE_ALL : WPROTO_RELEASE_PIPES};
    return send_msg(c, &rl, sizeof(rl));
}

static void close_fds(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

int initctl_read(struct initctl *c, struct initctl_event *ev)
{
    char msg[256];
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } u;
    for (;;) {
        struct iovec iov = {.iov_base = msg, .iov_len = sizeof(msg)};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = u.buf,
                            .msg_controllen = sizeof(u.buf)};
        if (c->fd < 0)
            return -EPIPE;
        ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (n <= 0)
            return -EPIPE;
        int nfds = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            int cnt = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *p = (int *)CMSG_DATA(cm);
            for (int i = 0; i < cnt; i++) {
                if (nfds < 3)
                    ev->fds[nfds++] = p[i];
                else
                    close(p[i]);
            }
        }
        ev->nfds = nfds;
        const struct wproto_hdr *h = (const void *)msg;
        if ((size_t)n >= sizeof(struct wproto_spawned) && h->type == WPROTO_SPAWNED) {
            const struct wproto_spawned *sp = (const void *)msg;
            ev->type = INITCTL_SPAWNED;
            ev->tag = h->tag;
            ev->pid = sp->pid;
            ev->err = sp->err;
            return 1;
        }
        close_fds(ev->fds, nfds);
        ev->nfds = 0;
        if ((size_t)n >= sizeof(struct wproto_exit) && h->type == WPROTO_EXIT) {
            const struct wproto_exit *ex = (const void *)msg;
            ev->type = INITCTL_EXITED;
            ev->tag = h->tag;
            ev->pid = ex->pid;
            ev->status = ex->status;
            return 1;
        }
    }
}

void initctl_close(struct initctl *c)
{
    while (c->head) {
        struct initctl_msg *m = c->head;
        c->head = m->next;
        msg_free(m);
    }
    c->tail = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

int initctl_take_fd(int pidfd)
{
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, WPROTO_KEEP_FD, 0);
    if (fd < 0)
        return -errno;
    int type;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_SEQPACKET) {
        close(fd);
        return -EBADF;
    }
    return fd;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int initctl_hello(struct initctl *c, int timeout_ms, uint32_t *version,
                  void (*fn)(const struct initctl_state *st, void *arg), void *arg)
{
    struct wproto_hello h = {.hdr = {WPROTO_HELLO, 0}, .version = WPROTO_VERSION};
    double deadline = now_ms() + timeout_ms;
    int r = send_msg(c, &h, sizeof(h)), greeted = 0;
    char *msg = malloc(sizeof(struct wproto_state) + WPROTO_NOTE_MAX);
    if (!msg)
        r = -ENOMEM;
    *version = 0;
    while (r == 0) {
        if (initctl_pending(c) && (r = initctl_flush(c)) < 0)
            break;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN | (initctl_pending(c) ? POLLOUT : 0)};
        int left = (int)(deadline - now_ms());
        if (left <= 0) {
            r = -ETIMEDOUT;
            break;
        }
        int n = poll(&pfd, 1, left);
        if (n < 0 && errno != EINTR)
            r = -errno;
        if (n <= 0 || !(pfd.revents & POLLIN))
            continue;
        union {
            char buf[CMSG_SPACE(WPROTO_MAX_FDS * sizeof(int))];
            struct cmsghdr align;
        } u;
        struct iovec iov = {.iov_base = msg,
                            .iov_len = sizeof(struct wproto_state) + WPROTO_NOTE_MAX};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = u.buf,
                            .msg_controllen = sizeof(u.buf)};
        ssize_t got = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (got < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (got <= 0) {
            r = -EPIPE;
            break;
        }
        int fds[WPROTO_MAX_FDS], nfds = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            int cnt = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < cnt; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                if (nfds < WPROTO_MAX_FDS)
                    fds[nfds++] = fd;
                else
                    close(fd);
            }
        }
        const struct wproto_hdr *hd = (const void *)msg;
        if ((size_t)got < sizeof(*hd)) {
            close_fds(fds, nfds);
            continue;
        }
        if (hd->type == WPROTO_HELLO && (size_t)got >= sizeof(struct wproto_hello)) {
            greeted = 1;
            *version = ((const struct wproto_hello *)msg)->version;
            if (*version < INITCTL_MIN_VERSION || *version > WPROTO_VERSION)
                r = -EPROTONOSUPPORT;
        } else if (greeted && hd->type == WPROTO_STATE_END) {
            break;
        } else if (greeted && hd->type == WPROTO_STATE &&
                   (size_t)got >= sizeof(struct wproto_state)) {
            const struct wproto_state *sm = (const void *)msg;
            struct initctl_state st = {.tag = hd->tag,
                                       .pid = sm->pid,
                                       .exited = !!(sm->flags & WPROTO_STATE_EXITED),
                                       .status = sm->status,
                                       .pty = !!(sm->flags & WPROTO_STATE_PTY),
                                       .pipe_fds = {-1, -1},
                                       .ring_fds = {-1, -1},
                                       .note = sm->note,
                                       .note_len = sm->note_len};
            if (st.note_len > (size_t)got - sizeof(*sm))
                st.note_len = (size_t)got - sizeof(*sm);
            int k = 0;
            if (sm->flags & WPROTO_STATE_PIPES)
                for (int i = 0; i < (st.pty ? 1 : 2) && k < nfds; i++)
                    st.pipe_fds[i] = fds[k++];
            for (int i = 0; i < 2 && k < nfds; i++)
                st.ring_fds[i] = fds[k++];
            close_fds(fds + k, nfds - k);
            fn(&st, arg);
            continue;
        }
        /* Before our HELLO's answer: meant for the previous daemon, and said again in STATE. */
        close_fds(fds, nfds);
    }
    free(msg);
    return r;
}
