/*
 * recovery — what a daemon finds of its predecessors' sandboxes when it starts: each record of
 * the store becomes a sandbox again, running (its init taken over: pidfd, the control channel
 * back with pidfd_getfd, HELLO/STATE, its commands re-attached) or stopped with its files, and
 * whatever a crash left half-made is removed. See registry_recover() in session/sandbox.h.
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/json.h"
#include "core/log.h"
#include "core/util.h"
#include "sandbox/cgroup.h"
#include "sandbox/disk.h"
#include "sandbox/egress.h"
#include "sandbox/initctl.h"
#include "sandbox/rootfs.h"
#include "session/command.h"
#include "session/sandbox_internal.h"
#include "session/sessions.h"
#include "session/volume.h"

#define UID_RANGE SANDBOX_UID_RANGE

/* 1 when something is mounted on `dir` (its device differs from its parent's). */
static int is_mountpoint(const char *dir)
{
    char parent[1300];
    struct stat a, b;
    snprintf(parent, sizeof(parent), "%s/..", dir);
    return stat(dir, &a) == 0 && stat(parent, &b) == 0 && a.st_dev != b.st_dev;
}

/* Kills an init that cannot be taken over and waits (briefly) until it is gone, so that its
 * mounts of the sandbox's disk are gone before the disk is used again. */
static void kill_init(int pidfd)
{
    syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
    while (poll(&pfd, 1, 2000) < 0 && errno == EINTR)
        ;
}

/* A command the init of an adopted sandbox reports. Commands are taken over; what else the
 * previous daemon ran (one-shot execs, shells, terminals: their clients went with it) ends. */
static void adopt_state(const struct initctl_state *st, void *arg)
{
    struct sandbox *sb = arg;
    if (st->tag > sb->next_tag)
        sb->next_tag = st->tag;
    if (command_note_is_ours(st->note, st->note_len) && command_adopt(sb, st) == 0)
        return;
    if (command_note_is_ours(st->note, st->note_len))
        log_warn("sandbox %s: cannot take command (tag %u) over: killing it", sb->id, st->tag);
    for (int i = 0; i < 2; i++) {
        if (st->pipe_fds[i] >= 0)
            close(st->pipe_fds[i]);
        if (st->ring_fds[i] >= 0)
            close(st->ring_fds[i]);
    }
    if (!st->exited)
        initctl_kill(&sb->ctl, st->pid, SIGKILL, 1);
    initctl_release(&sb->ctl, st->tag, 1);
}

/* Takes a running sandbox of a previous daemon over. Returns 0, or -errno: then nothing of it
 * runs any more (its init was killed if it was alive) and it is to come back stopped. */
static int adopt(struct sandbox *sb, pid_t pid, unsigned long long start)
{
    struct registry *reg = sb->reg;
    char dir[1200];
    uint32_t version = 0;
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0), fd = -1, r;
    if (pidfd < 0)
        return -errno;
    /* Checked after the pidfd is open: if it still matches, the pidfd is that process. */
    if (sandbox_pid_start_time(pid) != start) {
        close(pidfd);
        return -ESRCH;
    }
    sandbox_dir(sb, dir, sizeof(dir), NULL);
    if (!is_mountpoint(dir)) {
        /* Its disk is not in our mount namespace (the pinned one was lost): it cannot be taken
         * over without mounting the image a second time. */
        r = -ENOENT;
        goto kill;
    }
    if ((fd = r = initctl_take_fd(pidfd)) < 0)
        goto kill;
    cgroup_freeze(reg->cgroups, sb->id, 0); /* a paused sandbox is thawed to answer */
    initctl_init(&sb->ctl, fd);
    sb->pid = pid;
    sb->pid_start = start;
    sb->pidfd = pidfd;
    sb->state = SB_RUNNING;
    if ((r = initctl_hello(&sb->ctl, 2000, &version, adopt_state, sb)) < 0) {
        log_error("sandbox %s: init (protocol version %u) does not answer: %s", sb->id, version,
                  strerror(-r));
        sb->state = SB_STOPPED;
        sandbox_fail_procs(sb);
        command_drop_all(sb);
        initctl_close(&sb->ctl);
        sb->pid = 0;
        sb->pidfd = -1;
        goto kill;
    }
    uv_poll_init(reg->loop, &sb->ctl_poll, sb->ctl.fd);
    uv_poll_init(reg->loop, &sb->pid_poll, sb->pidfd);
    sb->ctl_poll.data = sb->pid_poll.data = sb;
    sb->handles = 2;
    uv_poll_start(&sb->pid_poll, UV_READABLE, sandbox_pid_on_event);
    sandbox_ctl_update_events(sb);
    if ((r = sandbox_apply_network(sb)) < 0)
        log_error("sandbox %s: egress proxy: %s (the sandbox has no egress until its network is "
                  "set again)",
                  sb->id, strerror(-r));
    return 0;
kill:
    kill_init(pidfd);
    close(pidfd);
    return r;
}

/* A sandbox of the store that cannot run now: stopped, with its files (its disk mounted again
 * after a host reboot), nothing of it running. */
static void recover_stopped(struct sandbox *sb)
{
    char dir[1200], image[1200];
    sb->state = SB_STOPPED;
    int r = cgroup_destroy(sb->reg->cgroups, sb->id); /* kills what is left in it */
    if (r < 0)
        log_warn("sandbox %s: removing its cgroup: %s", sb->id, strerror(-r));
    sandbox_dir(sb, dir, sizeof(dir), NULL);
    sandbox_image(sb->reg, sb->id, image, sizeof(image));
    if (!is_mountpoint(dir) && (r = disk_mount(image, dir)) < 0)
        log_error("sandbox %s: cannot mount its disk %s: %s (starting it will fail)", sb->id, image,
                  strerror(-r));
}

/* The image of a sandbox record (image_record()); NULL if it has none or it cannot be read. */
static struct sandbox_image *image_from_record(json_t *o)
{
    json_t *lowers = json_object_get(o, "lowers");
    size_t n = json_array_size(lowers);
    if (!json_is_object(o) || n == 0 || n > ROOTFS_MAX_LAYERS)
        return NULL;
    struct sandbox_image *img = calloc(1, sizeof(*img));
    if (!img || !(img->lowers = calloc(n, sizeof(char *))))
        goto error;
    for (; img->n_lowers < n; img->n_lowers++)
        if (!(img->lowers[img->n_lowers] =
                  strdup(json_string_value(json_array_get(lowers, img->n_lowers)) ?: "")))
            goto error;
    const char *workdir = json_string_value(json_object_get(o, "workdir"));
    const char *user = json_string_value(json_object_get(o, "user"));
    if (json_array_strv(json_object_get(o, "env"), &img->env) < 0 ||
        json_array_strv(json_object_get(o, "entrypoint"), &img->entrypoint) < 0 ||
        json_array_strv(json_object_get(o, "cmd"), &img->cmd) < 0 ||
        (workdir && !(img->workdir = strdup(workdir))) || (user && !(img->user = strdup(user))))
        goto error;
    snprintf(img->template_name, sizeof(img->template_name), "%s",
             json_string_value(json_object_get(o, "template")) ?: "");
    snprintf(img->image, sizeof(img->image), "%s",
             json_string_value(json_object_get(o, "image")) ?: "");
    snprintf(img->digest, sizeof(img->digest), "%s",
             json_string_value(json_object_get(o, "digest")) ?: "");
    return img;
error:
    sandbox_image_free(img);
    return NULL;
}

/* Builds a sandbox from its store record (sandbox_record()); NULL if the record is not one. */
static struct sandbox *sandbox_from_record(struct registry *reg, const char *id, json_t *j)
{
    json_t *res = json_object_get(j, "resources");
    json_t *uid = json_object_get(j, "uid_slot");
    const char *name = json_string_value(json_object_get(j, "name"));
    struct egress_policy *net = NULL;
    char err[256];
    if (!json_is_integer(uid) || !name || !json_is_object(res) || strlen(id) >= SANDBOX_ID_MAX ||
        egress_policy_parse(json_object_get(j, "network"), &net, err, sizeof(err)) < 0)
        return NULL;
    struct sandbox *sb = calloc(1, sizeof(*sb));
    if (!sb) {
        egress_policy_free(net);
        return NULL;
    }
    sb->reg = reg;
    snprintf(sb->id, sizeof(sb->id), "%s", id);
    snprintf(sb->name, sizeof(sb->name), "%s", name);
    snprintf(sb->template_name, sizeof(sb->template_name), "%s",
             json_string_value(json_object_get(j, "template")) ?: "");
    sb->network = net;
    sb->res.cpus = json_number_value(json_object_get(res, "cpus"));
    sb->res.memory_mib = (unsigned long long)json_integer_value(json_object_get(res, "memory_mib"));
    sb->res.pids = (unsigned long long)json_integer_value(json_object_get(res, "pids"));
    sb->res.disk_mib = (unsigned long long)json_integer_value(json_object_get(res, "disk_mib"));
    json_t *o;
    sb->labels = json_is_object(o = json_object_get(j, "labels")) ? json_incref(o) : json_object();
    sb->env = json_is_object(o = json_object_get(j, "env")) ? json_incref(o) : json_object();
    sb->secrets = json_is_array(o = json_object_get(j, "secrets")) ? json_incref(o) : json_array();
    sb->volumes = json_is_array(o = json_object_get(j, "volumes")) ? json_incref(o) : json_array();
    sb->created_at = json_number_value(json_object_get(j, "created_at_s"));
    sb->last_active_at = json_number_value(json_object_get(j, "last_active_at"));
    if (sb->last_active_at < sb->created_at)
        sb->last_active_at = sb->created_at;
    sb->ttl_s = json_number_value(json_object_get(j, "ttl_s"));
    sb->idle_timeout_s = json_number_value(json_object_get(j, "idle_timeout_s"));
    sb->uid_slot = (unsigned)json_integer_value(uid);
    snprintf(sb->session_id, sizeof(sb->session_id), "%s",
             json_string_value(json_object_get(j, "session_id")) ?: "");
    sb->recycled = json_is_true(json_object_get(j, "recycled"));
    sb->restored_at = json_number_value(json_object_get(j, "restored_at"));
    sb->pidfd = -1;
    initctl_init(&sb->ctl, -1);
    sb->state = SB_STOPPED;
    json_t *img = json_object_get(j, "image");
    if (img && !(sb->image = image_from_record(img))) {
        sandbox_free(sb);
        return NULL;
    }
    return sb;
}

static void recover_remove(struct registry *reg, const char *id)
{
    cgroup_destroy(reg->cgroups, id);
    sandbox_remove_files(reg, id);
    store_delete(reg->store, STORE_SANDBOX, id);
}

struct record {
    struct record *next;
    char *id, *text;
};

/* The store's records, read before any is processed: processing one writes it back. */
static void collect_record(const char *id, const char *text, void *arg)
{
    struct record **head = arg, *r = calloc(1, sizeof(*r));
    if (!r || !(r->id = strdup(id)) || !(r->text = strdup(text))) {
        if (r)
            free(r->id);
        free(r);
        log_error("recovery: out of memory reading sandbox %s", id);
        return;
    }
    r->next = *head;
    *head = r;
}

static void recover_one(struct registry *reg, const char *id, const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    struct sandbox *sb = j ? sandbox_from_record(reg, id, j) : NULL;
    if (!sb) {
        log_warn("recovery: removing sandbox %s: its record cannot be read", id);
        recover_remove(reg, id);
        json_decref(j);
        return;
    }
    if (sb->uid_slot >= reg->max_sandboxes || reg->uid_slots[sb->uid_slot] ||
        sandbox_find(reg, sb->name)) {
        /* Kept on disk and in the store for a daemon configured as the one that made it. */
        log_error("recovery: sandbox %s (%s) left alone: its uid slot %u or its name is taken or "
                  "above --max-sandboxes %u",
                  sb->id, sb->name, sb->uid_slot, reg->max_sandboxes);
        sandbox_free(sb);
        json_decref(j);
        return;
    }
    reg->uid_slots[sb->uid_slot] = 1;
    sb->next = reg->head;
    if (reg->head)
        reg->head->prev = sb;
    reg->head = sb;
    reg->count++;
    const char *state = json_string_value(json_object_get(j, "state")) ?: "";
    pid_t pid = (pid_t)json_integer_value(json_object_get(j, "pid"));
    unsigned long long start =
        (unsigned long long)json_integer_value(json_object_get(j, "pid_start"));
    int live = pid > 0 && (!strcmp(state, "running") || !strcmp(state, "paused") ||
                           !strcmp(state, "stopping"));
    int r = live ? adopt(sb, pid, start) : -ESRCH;
    if (r == 0 && sb->image && sb->image->user && sb->image->user[0]) {
        /* Its processes run as the image's User: resolved in its root, which is still mounted
         * (the daemon's mount namespace outlived the previous daemon). */
        char rootfs[1200];
        sandbox_dir(sb, rootfs, sizeof(rootfs), "rootfs");
        if (rootfs_resolve_user(rootfs, sb->image->user, UID_RANGE, &sb->user_uid, &sb->user_gid,
                                sb->user_home, sizeof(sb->user_home)) == 0)
            sb->user_set = 1;
        else
            log_warn("recovery: sandbox %s: its image's User %s cannot be resolved: commands run "
                     "as root until it is restarted",
                     sb->id, sb->image->user);
    }
    if (r == 0) {
        sb->recycled = 0; /* a recycling the previous daemon did not finish: idle again later */
        log_info("recovery: sandbox %s (%s) re-adopted, init pid %d", sb->id, sb->name, (int)pid);
    } else {
        if (live)
            log_warn("recovery: sandbox %s (%s): its init cannot be taken over (%s): stopped",
                     sb->id, sb->name, strerror(-r));
        recover_stopped(sb);
    }
    sandbox_save(sb);
    json_decref(j);
}

void registry_recover(struct registry *reg)
{
    double t0 = util_monotonic();
    struct record *records = NULL;
    store_list(reg->store, STORE_SANDBOX, collect_record, &records);
    while (records) {
        struct record *r = records;
        records = r->next;
        recover_one(reg, r->id, r->text);
        free(r->id);
        free(r->text);
        free(r);
    }
    /* What the store does not know: a creation a crash interrupted. */
    char dir[1100];
    snprintf(dir, sizeof(dir), "%s/sandboxes", reg->state_dir);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char id[SANDBOX_ID_MAX + 8];
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len >= sizeof(id))
            continue;
        memcpy(id, de->d_name, len + 1);
        char *dot = strstr(id, ".img");
        if (dot)
            *dot = '\0';
        if (sandbox_find(reg, id))
            continue;
        log_info("recovery: removing sandbox %s left half-made by a previous daemon", id);
        cgroup_destroy(reg->cgroups, id);
        sandbox_remove_files(reg, id);
    }
    if (d)
        closedir(d);
    sessions_released_load(reg);
    reg->recover_s = util_monotonic() - t0;
    unsigned running = 0;
    for (struct sandbox *sb = reg->head; sb; sb = sb->next)
        running += sb->state == SB_RUNNING;
    log_info("recovery: %u sandboxes (%u running) in %.1f ms", reg->count, running,
             reg->recover_s * 1e3);
}
