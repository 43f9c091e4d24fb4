/*
 * initctl — the daemon's side of the init's control protocol. See initctl.h and proto.h.
 */
#include "sandbox/initctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox/proto.h"

struct initctl_msg {
    struct initctl_msg *next;
    size_t len;
    char data[];
};

void initctl_init(struct initctl *c, int fd)
{
    c->fd = fd;
    c->head = c->tail = NULL;
}

int initctl_flush(struct initctl *c)
{
    while (c->head) {
        struct initctl_msg *m = c->head;
        ssize_t n = send(c->fd, m->data, m->len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            return -EPIPE;
        }
        c->head = m->next;
        if (!c->head)
            c->tail = NULL;
        free(m);
    }
    return 0;
}

int initctl_pending(const struct initctl *c)
{
    return c->head != NULL;
}

/* The socket is a SOCK_SEQPACKET: a message goes whole or not at all. */
static int send_msg(struct initctl *c, const void *msg, size_t len)
{
    if (c->fd < 0)
        return -EPIPE;
    if (!c->head) {
        ssize_t n = send(c->fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL);
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
    memcpy(m->data, msg, len);
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
    return 0;
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
    sp->data_len = (uint32_t)(off - sizeof(*sp));
    r = send_msg(c, msg, off);
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
        free(m);
    }
    c->tail = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}
