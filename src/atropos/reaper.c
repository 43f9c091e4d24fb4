/*
 * reaper — what a killed bash command leaves behind, found and killed from the host.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "atropos/atropos_internal.h"
#include "session/sandbox.h"

/* A timeout (or a client that went away) SIGKILLs the command's process group, but children
 * that called setsid() or setpgid() have left it. They are found from the host, without trusting
 * anything the sandbox says: every process in the slot sandbox's pid namespace that started
 * after the command did and whose session does not predate the command (the persistent shell's
 * and the terminal's sessions do, as do background jobs of earlier calls) is killed. Repeated
 * until a pass finds nothing, so children forked meanwhile die too. On the thread pool: it reads
 * /proc. */
struct reap_work {
    uv_work_t work;
    struct atropos_job *job;
    json_t *resp;
    pid_t init_pid;
    unsigned long long since;
};

unsigned long long atropos_boot_ticks(void)
{
    struct timespec ts;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        hz = 100;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (unsigned long long)ts.tv_sec * (unsigned long long)hz +
           (unsigned long long)ts.tv_nsec / (1000000000ull / (unsigned long long)hz);
}

/* Session id and start time (ticks after boot) of a host pid, from /proc/<pid>/stat. */
static int pid_stat(pid_t pid, pid_t *session, unsigned long long *start)
{
    char path[64], buf[1024], *save = NULL;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -EIO;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may contain anything but ends there */
    if (!p || !p[1])
        return -EIO;
    int i = 0, got = 0;
    for (char *tok = strtok_r(p + 2, " ", &save); tok; tok = strtok_r(NULL, " ", &save), i++) {
        if (i == 3) /* fields after the name: state ppid pgrp session ... starttime (20th) */
            *session = (pid_t)atoi(tok), got++;
        if (i == 19) {
            *start = strtoull(tok, NULL, 10), got++;
            break;
        }
    }
    return got == 2 ? 0 : -EIO;
}

static void reap_run(uv_work_t *w)
{
    struct reap_work *rw = w->data;
    char path[64];
    struct stat ns;
    snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)rw->init_pid);
    if (rw->init_pid <= 0 || stat(path, &ns) < 0)
        return;
    for (int pass = 0; pass < 20; pass++) {
        int killed = 0;
        DIR *d = opendir("/proc");
        if (!d)
            return;
        struct dirent *de;
        while ((de = readdir(d))) {
            char *end;
            long v = strtol(de->d_name, &end, 10);
            pid_t pid = (pid_t)v, sess, lsess;
            unsigned long long start, lstart;
            struct stat pns;
            if (*end || v <= 0 || pid == rw->init_pid || pid_stat(pid, &sess, &start) < 0 ||
                start < rw->since)
                continue;
            snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)pid);
            if (stat(path, &pns) < 0 || pns.st_dev != ns.st_dev || pns.st_ino != ns.st_ino)
                continue;
            if (sess > 0 && sess != pid && pid_stat(sess, &lsess, &lstart) == 0 &&
                lstart < rw->since)
                continue; /* a session that was there before the command */
            /* The pidfd pins the process: check it is still the one looked at, then kill. */
            int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
            if (pfd < 0)
                continue;
            if (pid_stat(pid, &sess, &lstart) == 0 && lstart == start &&
                syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0) == 0)
                killed++;
            close(pfd);
        }
        closedir(d);
        if (!killed)
            break;
        usleep(10000);
    }
}

static void reap_after(uv_work_t *w, int status)
{
    struct reap_work *rw = w->data;
    struct atropos_job *job = rw->job;
    json_t *resp = rw->resp;
    (void)status;
    free(rw);
    atropos_job_finish(job, 200, resp);
}

/* Kills what the job's command left (see above), then answers with `resp`. */
void atropos_reap_then_finish(struct atropos_job *job, json_t *resp)
{
    struct reap_work *rw = calloc(1, sizeof(*rw));
    struct sandbox *sb = job->slot->sb;
    if (!rw || sb->state != SB_RUNNING || sb->pid <= 0) {
        free(rw); /* no sandbox left: nothing of it is left either */
        atropos_job_finish(job, 200, resp);
        return;
    }
    rw->job = job;
    rw->resp = resp;
    rw->init_pid = sb->pid;
    rw->since = job->since;
    rw->work.data = rw;
    uv_queue_work(sb->reg->loop, &rw->work, reap_run, reap_after);
}
