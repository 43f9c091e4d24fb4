/*
 * sandbox — registry and lifecycle. See sandbox.h.
 */
#include "session/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>

#include "core/json.h"
#include "core/log.h"
#include "core/util.h"
#include "sandbox/disk.h"
#include "sandbox/egress.h"
#include "sandbox/initctl.h"
#include "sandbox/netns.h"
#include "sandbox/rootfs.h"
#include "sandbox/spawn.h"
#include "sandbox/template.h"
#include "session/audit.h"
#include "session/command.h"
#include "session/proc.h"
#include "session/sandbox_internal.h"
#include "session/sblog.h"
#include "session/secrets.h"
#include "session/sessions.h"
#include "session/shell.h"
#include "session/terminal.h"
#include "session/volume.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* Sandbox root uids: slot i maps ids [UID_BASE + i * 65536, + 65536). Far above any real user
 * (and above the usual /etc/subuid ranges), never 0. */
#define UID_BASE 1048576u
#define UID_RANGE SANDBOX_UID_RANGE

/* RLIMIT_FSIZE of every sandbox process, as defence in depth: the disk bounds what files occupy,
 * this bounds how large a sparse file may claim to be (and so what reading one back through the
 * files API can cost). Generous: sparse files larger than the disk are legitimate. */
#define FSIZE_LIMIT (1ull << 40)

/* How long processes get to exit on SIGTERM when the daemon stops its sandboxes on exit. */
#define SHUTDOWN_GRACE_S 2.0

struct sandbox_waiter {
    struct sandbox_waiter *next;
    sandbox_destroy_cb cb;
    void *arg;
};

struct create_op {
    struct sandbox *sb;
    sandbox_create_cb cb; /* or a sandbox_start_cb, which has the same type */
    void *arg;
    int restart;         /* a stopped sandbox started again (sandbox_start) */
    int have_disk;       /* the disk is there already (taken from the pool, or a restart) */
    uv_work_t disk_work; /* the sandbox's disk is made on the pool, then the clone on the loop */
    int disk_err;
    const char *disk_what;
    struct spawn_pending pending;
    uv_poll_t status_poll;
    double t_start;
    double t_disk; /* the disk was ready */
    double t_started;
};

struct destroy_work {
    uv_work_t work;
    struct sandbox *sb;
};

struct stop_op {
    uv_timer_t timer; /* watching for the end of the grace period */
    uv_work_t work;   /* removing the cgroup once the init is gone */
    struct sandbox *sb;
    sandbox_stop_cb cb;
    void *arg;
    double deadline;
};

void sandbox_dir(const struct sandbox *sb, char *out, size_t cap, const char *sub)
{
    snprintf(out, cap, "%s/sandboxes/%s%s%s", sb->reg->state_dir, sb->id, sub ? "/" : "",
             sub ? sub : "");
}

/* What a sandbox's disk holds: its root file system and its workspace (bound on /workspace). */
static const char *const disk_dirs[] = {"root", "workspace", NULL};

/* The disk image mounted on the sandbox's directory (see sandbox/disk.h). */
void sandbox_image(const struct registry *reg, const char *id, char *out, size_t cap)
{
    snprintf(out, cap, "%s/sandboxes/%s.img", reg->state_dir, id);
}

/* The overlay of an image sandbox, mounted on its disk: it must go before the disk can. Nothing
 * mounted there (a host-template sandbox, a stopped one) costs one failing umount2(). */
static int umount_image_root(const struct registry *reg, const char *id)
{
    char rootfs[1200];
    snprintf(rootfs, sizeof(rootfs), "%s/sandboxes/%s/rootfs", reg->state_dir, id);
    return rootfs_umount(rootfs);
}

/* Unmounts and deletes the sandbox's disk, then removes its directory. Returns the first -errno. */
int sandbox_remove_files(const struct registry *reg, const char *id)
{
    char dir[1200], image[1200];
    snprintf(dir, sizeof(dir), "%s/sandboxes/%s", reg->state_dir, id);
    sandbox_image(reg, id, image, sizeof(image));
    int r0 = umount_image_root(reg, id);
    int r = disk_destroy(image, dir), r2 = util_remove_tree(dir);
    return r0 < 0 ? r0 : r < 0 ? r : r2;
}

/* sandbox_remove_files() for a deleted sandbox, with the slow part (unmounting and deleting the
 * disk) left to the pool's next fill, which the caller starts once it has answered. */
static int retire_sandbox_files(const struct registry *reg, const char *id)
{
    char dir[1200], image[1200];
    snprintf(dir, sizeof(dir), "%s/sandboxes/%s", reg->state_dir, id);
    sandbox_image(reg, id, image, sizeof(image));
    int r = umount_image_root(reg, id);
    if (r < 0)
        log_warn("sandbox %s: unmounting its root file system: %s", id, strerror(-r));
    if (disk_retire(reg->disks, image, dir) < 0)
        return sandbox_remove_files(reg, id);
    return util_remove_tree(dir);
}

/* How long processes of a sandbox stopped for being idle get to exit on SIGTERM. */
int registry_init(struct registry *reg)
{
    char dir[1100];
    reg->uid_slots = calloc(reg->max_sandboxes ? reg->max_sandboxes : 1, 1);
    if (!reg->uid_slots)
        return -ENOMEM;
    snprintf(dir, sizeof(dir), "%s/sandboxes", reg->state_dir);
    int r = util_mkdir_p(dir, 0711);
    if (r < 0)
        return r;
    uv_timer_init(reg->loop, &reg->sweep);
    reg->sweep.data = reg;
    uv_unref((uv_handle_t *)&reg->sweep);
    uv_timer_start(&reg->sweep, registry_sweep, SWEEP_MS, SWEEP_MS);
    return 0;
}

void sandbox_touch(struct sandbox *sb)
{
    sb->last_active_at = util_now();
}

double sandbox_expires_at(const struct sandbox *sb)
{
    return sb->ttl_s > 0 ? sb->created_at + sb->ttl_s : 0;
}

/* ---- recovery -------------------------------------------------------------------------------- */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* The start time of a process (field 22 of /proc/PID/stat), or 0 if it is gone. With the pid it
 * names one process for the lifetime of the host: pids are reused, start times of one pid not. */
unsigned long long sandbox_pid_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    unsigned long long v = 0;
    for (int field = 2; p && field < 22; field++)
        p = strchr(p + 1, ' ');
    if (p)
        v = strtoull(p + 1, NULL, 10);
    return v;
}

void registry_check_idle(struct registry *reg)
{
    if (reg->idle_cb && reg->count == 0 && reg->pending == 0) {
        void (*cb)(struct registry *) = reg->idle_cb;
        reg->idle_cb = NULL;
        cb(reg);
    }
}

static void list_remove(struct sandbox *sb);
static void on_handle_closed(uv_handle_t *h);
static void sandbox_maybe_free(struct sandbox *sb);

/* The daemon is going and leaves the sandbox as it is (running or stopped) for the next one:
 * what the daemon holds of it is let go without a word to the init (whose copy of the channel
 * keeps it open), its store record stays. */
static void sandbox_detach(struct sandbox *sb)
{
    struct registry *reg = sb->reg;
    int running = sb->pidfd >= 0;
    if (sb->proxy)
        egress_proxy_close(sb->proxy);
    sb->proxy = NULL;
    reg->left_running += running;
    /* From here every request for the init is refused (sandbox_ctl_*): ending the daemon's
     * objects kills, releases and forgets nothing in the sandbox. */
    sb->state = SB_DELETING;
    sandbox_fail_procs(sb);
    command_drop_all(sb);
    sblog_close(sb);
    shell_drop_all(sb);
    terminal_drop_all(sb);
    if (running) {
        uv_close((uv_handle_t *)&sb->pid_poll, on_handle_closed);
        if (!uv_is_closing((uv_handle_t *)&sb->ctl_poll))
            uv_close((uv_handle_t *)&sb->ctl_poll, on_handle_closed);
        close(sb->pidfd);
        sb->pidfd = -1;
        sb->pid = 0;
    }
    if (sb->uid_slot < reg->max_sandboxes)
        reg->uid_slots[sb->uid_slot] = 0;
    sb->uid_slot = UINT32_MAX;
    list_remove(sb);
    sandbox_ref(sb);
    sandbox_unref(sb); /* frees it unless handles are still closing */
}

static void shutdown_stopped(struct sandbox *sb, int err, void *arg)
{
    (void)err;
    (void)arg;
    (void)sb; /* detached by stop_cgroup_done, which knows the registry is stopping */
}

/* A sandbox whose creation, start or stop finished while the registry was stopping. */
static void shutdown_one(struct sandbox *sb)
{
    struct registry *reg = sb->reg;
    if (sb->state == SB_RUNNING || sb->state == SB_PAUSED) {
        if (!reg->stop_on_exit || sandbox_stop(sb, SHUTDOWN_GRACE_S, shutdown_stopped, NULL) < 0)
            sandbox_detach(sb);
    } else if (sb->state == SB_STOPPED || sb->state == SB_FAILED) {
        sandbox_detach(sb);
    }
}

void registry_shutdown(struct registry *reg, void (*idle_cb)(struct registry *reg))
{
    reg->idle_cb = idle_cb;
    reg->left_running = 0;
    uv_timer_stop(&reg->sweep);
    for (struct sandbox *sb = reg->head, *next; sb; sb = next) {
        next = sb->next;
        shutdown_one(sb); /* creating, starting, stopping: when that ends */
    }
    registry_check_idle(reg);
}

void registry_free(struct registry *reg)
{
    volumes_free(reg);
    sessions_released_free(reg);
    free(reg->uid_slots);
    reg->uid_slots = NULL;
    rootfs_userns_clear();
}

const char *sandbox_state_name(enum sandbox_state state)
{
    switch (state) {
    case SB_CREATING:
        return "creating";
    case SB_RUNNING:
        return "running";
    case SB_PAUSED:
        return "paused";
    case SB_STOPPING:
        return "stopping";
    case SB_STOPPED:
        return "stopped";
    case SB_STARTING:
        return "starting";
    case SB_DELETING:
        return "deleting";
    case SB_FAILED:
        return "failed";
    }
    return "unknown";
}

const char *sandbox_state_str(const struct sandbox *sb)
{
    /* Recycled once its processes are gone: until then it is stopping, as any stop. */
    if (sb->recycled && sb->state == SB_STOPPED)
        return "recycled";
    return sandbox_state_name(sb->state);
}

uid_t sandbox_host_uid(const struct sandbox *sb)
{
    return UID_BASE + sb->uid_slot * UID_RANGE;
}

int sandbox_resolve_user(const struct sandbox *sb, const char *user, struct sandbox_user *out)
{
    char root[1300];
    if (sb->image)
        sandbox_dir(sb, root, sizeof(root), "rootfs");
    else
        snprintf(root, sizeof(root), "%s", sb->reg->tmpl->dir);
    return rootfs_resolve_user(root, user, UID_RANGE, &out->uid, &out->gid, out->home,
                               sizeof(out->home));
}

int sandbox_template_user(const struct registry *reg, const char *name, char *who, size_t cap)
{
    for (const struct sandbox *sb = reg->head; sb; sb = sb->next)
        if (!strcmp(sb->template_name, name)) {
            snprintf(who, cap, "%s", sb->name);
            return 1;
        }
    return 0;
}

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* A copy of a NULL-terminated list (NULL stays NULL). 0 or -ENOMEM. */
static int strv_dup(char *const *v, char ***out)
{
    size_t n = 0;
    *out = NULL;
    if (!v)
        return 0;
    while (v[n])
        n++;
    char **c = calloc(n + 1, sizeof(char *));
    for (size_t i = 0; c && i < n; i++)
        if (!(c[i] = strdup(v[i]))) {
            strv_free(c);
            return -ENOMEM;
        }
    *out = c;
    return c ? 0 : -ENOMEM;
}

void sandbox_image_free(struct sandbox_image *img)
{
    if (!img)
        return;
    for (size_t i = 0; i < img->n_lowers; i++)
        free(img->lowers[i]);
    free(img->lowers);
    strv_free(img->env);
    strv_free(img->entrypoint);
    strv_free(img->cmd);
    free(img->workdir);
    free(img->user);
    free(img);
}

struct sandbox_image *sandbox_image_dup(const struct sandbox_image *img)
{
    if (img->n_lowers == 0 || img->n_lowers > ROOTFS_MAX_LAYERS)
        return NULL;
    struct sandbox_image *c = calloc(1, sizeof(*c));
    if (!c || !(c->lowers = calloc(img->n_lowers, sizeof(char *))))
        goto error;
    for (; c->n_lowers < img->n_lowers; c->n_lowers++)
        if (!(c->lowers[c->n_lowers] = strdup(img->lowers[c->n_lowers])))
            goto error;
    if (strv_dup(img->env, &c->env) < 0 || strv_dup(img->entrypoint, &c->entrypoint) < 0 ||
        strv_dup(img->cmd, &c->cmd) < 0 || (img->workdir && !(c->workdir = strdup(img->workdir))) ||
        (img->user && !(c->user = strdup(img->user))))
        goto error;
    snprintf(c->template_name, sizeof(c->template_name), "%s", img->template_name);
    snprintf(c->image, sizeof(c->image), "%s", img->image);
    snprintf(c->digest, sizeof(c->digest), "%s", img->digest);
    return c;
error:
    sandbox_image_free(c);
    return NULL;
}

const char *sandbox_default_cwd(const struct sandbox *sb)
{
    if (sb && sb->image && sb->image->workdir && sb->image->workdir[0] == '/')
        return sb->image->workdir;
    return "/workspace";
}

struct sandbox *sandbox_find(struct registry *reg, const char *id_or_name)
{
    for (struct sandbox *sb = reg->head; sb; sb = sb->next)
        if (sb->state != SB_DELETING &&
            (strcmp(sb->id, id_or_name) == 0 || strcmp(sb->name, id_or_name) == 0))
            return sb;
    return NULL;
}

static void list_remove(struct sandbox *sb)
{
    struct registry *reg = sb->reg;
    if (sb->prev)
        sb->prev->next = sb->next;
    else if (reg->head == sb)
        reg->head = sb->next;
    if (sb->next)
        sb->next->prev = sb->prev;
    sb->prev = sb->next = NULL;
    reg->count--;
}

void sandbox_free(struct sandbox *sb)
{
    sandbox_image_free(sb->image);
    egress_policy_free(sb->network);
    json_decref(sb->labels);
    json_decref(sb->env);
    json_decref(sb->secrets);
    json_decref(sb->volumes);
    initctl_close(&sb->ctl);
    sblog_free(sb->log);
    free(sb);
}

static void sandbox_maybe_free(struct sandbox *sb)
{
    /* Freed once it left the registry (destroy finished), its handles are closed and nobody
     * holds a reference. */
    if (sb->state == SB_DELETING && !sb->waiters && sb->handles == 0 && sb->refs == 0 &&
        sb->pidfd < 0 && sb->uid_slot == UINT32_MAX)
        sandbox_free(sb);
}

void sandbox_ref(struct sandbox *sb)
{
    sb->refs++;
}

void sandbox_unref(struct sandbox *sb)
{
    sb->refs--;
    sandbox_maybe_free(sb);
}

int sandbox_usage(const struct sandbox *sb, struct sandbox_usage *out)
{
    struct cgroup_usage u;
    struct statvfs sv;
    char dir[1200];
    if (sb->pid <= 0)
        return -ESRCH; /* no init, no cgroup */
    int r = cgroup_usage(sb->reg->cgroups, sb->id, &u);
    if (r < 0)
        return r;
    *out = (struct sandbox_usage){.memory_bytes = u.memory_bytes,
                                  .pids = u.pids,
                                  .cpu_seconds = u.cpu_usec / 1e6,
                                  .oom_kills = u.oom_kills,
                                  .disk_bytes = -1};
    sandbox_dir(sb, dir, sizeof(dir), NULL);
    if (statvfs(dir, &sv) == 0)
        out->disk_bytes = (int64_t)((sv.f_blocks - sv.f_bfree) * sv.f_frsize);
    return 0;
}

/* The image a sandbox's root is made of, all of it: a restarted daemon needs the layers to mount
 * its root again and the config for its commands. */
static json_t *image_record(const struct sandbox_image *img)
{
    json_t *lowers = json_array();
    for (size_t i = 0; lowers && i < img->n_lowers; i++)
        json_array_append_new(lowers, json_string(img->lowers[i]));
    return json_pack("{s:s, s:s, s:s, s:o, s:o, s:s?, s:s?, s:o, s:o}", "template",
                     img->template_name, "image", img->image, "digest", img->digest, "lowers",
                     lowers, "env", json_strv_array(img->env), "workdir", img->workdir, "user",
                     img->user, "entrypoint", json_strv_array(img->entrypoint), "cmd",
                     json_strv_array(img->cmd));
}

json_t *sandbox_record(const struct sandbox *sb)
{
    char created[32];
    util_format_time(sb->created_at, created, sizeof(created));
    /* With what a next daemon needs to take it over (registry_recover()): its state, its init
     * (pid and start time) and its uid slot (its files are owned by it). */
    json_t *rec =
        json_pack("{s:s, s:s, s:s, s:{s:f, s:I, s:I, s:I}, s:o, s:O, s:O, s:O, s:s, s:s, s:f, "
                  "s:f, s:s, s:I, s:I, s:I, s:f, s:f}",
                  "id", sb->id, "name", sb->name, "template", sb->template_name, "resources",
                  "cpus", sb->res.cpus, "memory_mib", (json_int_t)sb->res.memory_mib, "pids",
                  (json_int_t)sb->res.pids, "disk_mib", (json_int_t)sb->res.disk_mib, "network",
                  egress_policy_to_json(sb->network), "labels", sb->labels, "env", sb->env,
                  "secrets", sb->secrets, "created_at", created, "node", sb->reg->node, "ttl_s",
                  sb->ttl_s, "idle_timeout_s", sb->idle_timeout_s, "state",
                  sandbox_state_name(sb->state), "pid", (json_int_t)sb->pid, "pid_start",
                  (json_int_t)sb->pid_start, "uid_slot", (json_int_t)sb->uid_slot, "created_at_s",
                  sb->created_at, "last_active_at", sb->last_active_at);
    if (rec && json_array_size(sb->volumes) > 0)
        json_object_set(rec, "volumes", sb->volumes);
    if (rec && sb->session_id[0] &&
        json_object_set_new(rec, "session_id", json_string(sb->session_id)) < 0) {
        json_decref(rec);
        return NULL;
    }
    if (rec && sb->recycled)
        json_object_set_new(rec, "recycled", json_true());
    if (rec && sb->restored_at > 0)
        json_object_set_new(rec, "restored_at", json_real(sb->restored_at));
    if (rec && sb->image && json_object_set_new(rec, "image", image_record(sb->image)) < 0) {
        json_decref(rec);
        return NULL;
    }
    return rec;
}

void sandbox_save(const struct sandbox *sb)
{
    json_t *desc = sandbox_record(sb);
    char *text = desc ? json_dumps(desc, JSON_COMPACT) : NULL;
    if (text)
        store_put(sb->reg->store, STORE_SANDBOX, sb->id, text);
    free(text);
    json_decref(desc);
}

/* ---- control channel ------------------------------------------------------------------------ */

static void ctl_on_event(uv_poll_t *h, int status, int events);

void sandbox_ctl_update_events(struct sandbox *sb)
{
    if (uv_is_closing((uv_handle_t *)&sb->ctl_poll))
        return;
    int events = UV_READABLE | UV_DISCONNECT | (initctl_pending(&sb->ctl) ? UV_WRITABLE : 0);
    uv_poll_start(&sb->ctl_poll, events, ctl_on_event);
}

/* A request for the init: refused unless the sandbox runs (or is paused: the init is frozen
 * then, and reads the request when thawed). */
static int ctl_sent(struct sandbox *sb, int r)
{
    if (r == 0 && initctl_pending(&sb->ctl))
        sandbox_ctl_update_events(sb);
    return r;
}

int sandbox_unavailable(const struct sandbox *sb)
{
    return sb->state == SB_STOPPED || sb->state == SB_STOPPING || sb->state == SB_STARTING
               ? -ESHUTDOWN
               : -EPIPE;
}

int sandbox_ctl_spawn(struct sandbox *sb, uint32_t tag, const struct initctl_spawn *req)
{
    if (sb->state != SB_RUNNING && sb->state != SB_PAUSED)
        return sandbox_unavailable(sb);
    return ctl_sent(sb, initctl_spawn(&sb->ctl, tag, req));
}

int sandbox_ctl_kill(struct sandbox *sb, pid_t pid, int sig, int group)
{
    if (sb->state != SB_RUNNING && sb->state != SB_PAUSED)
        return sandbox_unavailable(sb);
    return ctl_sent(sb, initctl_kill(&sb->ctl, pid, sig, group));
}

int sandbox_ctl_release(struct sandbox *sb, uint32_t tag, int all)
{
    if (sb->state != SB_RUNNING && sb->state != SB_PAUSED)
        return sandbox_unavailable(sb);
    return ctl_sent(sb, initctl_release(&sb->ctl, tag, all));
}

static struct proc *find_proc(struct sandbox *sb, uint32_t tag)
{
    for (struct proc *p = sb->procs; p; p = proc_next(p))
        if (proc_tag(p) == tag)
            return p;
    return NULL;
}

static void ctl_read(struct sandbox *sb)
{
    struct initctl_event ev;
    int r;
    while ((r = initctl_read(&sb->ctl, &ev)) > 0) {
        struct proc *p = find_proc(sb, ev.tag);
        if (ev.type == INITCTL_SPAWNED && p)
            proc_on_spawned(p, ev.pid, ev.err, ev.fds, ev.nfds);
        else if (ev.type == INITCTL_SPAWNED)
            for (int i = 0; i < ev.nfds; i++)
                close(ev.fds[i]);
        else if (p)
            proc_on_exit(p, ev.status);
        if (sb->state != SB_RUNNING && sb->state != SB_PAUSED && sb->state != SB_STOPPING)
            return;
    }
    if (r < 0) /* the init is gone; pid_poll reports its exit and does the rest */
        uv_poll_stop(&sb->ctl_poll);
}

static void ctl_on_event(uv_poll_t *h, int status, int events)
{
    struct sandbox *sb = h->data;
    if (status < 0) {
        uv_poll_stop(h);
        return;
    }
    if (events & UV_WRITABLE) {
        if (initctl_flush(&sb->ctl) < 0) {
            uv_poll_stop(h);
            return;
        }
        sandbox_ctl_update_events(sb);
    }
    if (events & (UV_READABLE | UV_DISCONNECT))
        ctl_read(sb);
}

/* ---- death and destruction ------------------------------------------------------------------ */

void sandbox_fail_procs(struct sandbox *sb)
{
    while (sb->procs)
        proc_on_sandbox_gone(sb->procs); /* each removes itself from the list */
}

static void stop_cgroup_work(uv_work_t *w);
static void stop_cgroup_done(uv_work_t *w, int status);

static void on_handle_closed(uv_handle_t *h)
{
    struct sandbox *sb = h->data;
    if (h == (uv_handle_t *)&sb->ctl_poll)
        initctl_close(&sb->ctl);
    /* A stop goes on once the init's handles are closed: a start re-initialises them. */
    if (--sb->handles == 0 && sb->state == SB_STOPPING) {
        sb->reg->pending++;
        uv_queue_work(sb->reg->loop, &sb->stop->work, stop_cgroup_work, stop_cgroup_done);
    }
    sandbox_maybe_free(sb);
}

static void destroy_work_cb(uv_work_t *w)
{
    struct destroy_work *dw = w->data;
    struct sandbox *sb = dw->sb;
    int r = cgroup_destroy(sb->reg->cgroups, sb->id);
    if (r < 0)
        log_warn("sandbox %s: removing cgroup: %s", sb->id, strerror(-r));
    if ((r = retire_sandbox_files(sb->reg, sb->id)) < 0)
        log_warn("sandbox %s: removing its disk and directory: %s", sb->id, strerror(-r));
}

static void destroy_after_cb(uv_work_t *w, int status)
{
    struct destroy_work *dw = w->data;
    struct sandbox *sb = dw->sb;
    struct registry *reg = sb->reg;
    free(dw);
    sessions_released_add(sb); /* before its record goes: a record kept replaces it */
    store_delete(reg->store, STORE_SANDBOX, sb->id);
    if (sb->uid_slot < reg->max_sandboxes)
        reg->uid_slots[sb->uid_slot] = 0;
    sb->uid_slot = UINT32_MAX;
    list_remove(sb);
    reg->pending--;
    command_drop_all(sb);
    sblog_close(sb);
    shell_drop_all(sb);
    terminal_drop_all(sb);

    log_info("sandbox %s deleted", sb->id);
    struct sandbox_waiter *w0 = sb->waiters;
    sb->waiters = NULL;
    sandbox_ref(sb);
    while (w0) {
        struct sandbox_waiter *next = w0->next;
        if (w0->cb)
            w0->cb(w0->arg);
        free(w0);
        w0 = next;
    }
    sandbox_unref(sb);
    registry_fill_disk_pool(reg); /* unmounts and deletes the retired disk */
    registry_check_idle(reg);
}

static void start_cleanup(struct sandbox *sb)
{
    struct destroy_work *dw = calloc(1, sizeof(*dw));
    if (!dw) {
        /* Without memory we cannot queue the work: do it here, blocking the loop briefly. */
        struct destroy_work tmp = {.sb = sb};
        tmp.work.data = &tmp;
        destroy_work_cb(&tmp.work);
        struct destroy_work *copy = malloc(sizeof(*copy));
        if (copy) {
            *copy = tmp;
            copy->work.data = copy;
            destroy_after_cb(&copy->work, 0);
        }
        return;
    }
    dw->sb = sb;
    dw->work.data = dw;
    sb->reg->pending++;
    uv_queue_work(sb->reg->loop, &dw->work, destroy_work_cb, destroy_after_cb);
}

/* The init has exited: reap it and close what belongs to the running sandbox. */
static void on_init_exit(struct sandbox *sb)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    /* An init taken over from a previous daemon is not our child (ECHILD): its reaper reaps. */
    if (syscall(SYS_waitid, P_PIDFD, sb->pidfd, &si, WEXITED | WNOHANG, NULL) < 0 &&
        errno != ECHILD)
        log_warn("sandbox %s: waitid: %s", sb->id, strerror(errno));
    uv_close((uv_handle_t *)&sb->pid_poll, on_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&sb->ctl_poll))
        uv_close((uv_handle_t *)&sb->ctl_poll, on_handle_closed);
    close(sb->pidfd);
    sb->pidfd = -1;
    sb->pid = 0;
    sb->pid_start = 0;
}

void sandbox_pid_on_event(uv_poll_t *h, int status, int events)
{
    struct sandbox *sb = h->data;
    (void)status;
    (void)events;
    if (sb->state == SB_RUNNING || sb->state == SB_PAUSED) {
        log_warn("sandbox %s: init exited unexpectedly", sb->id);
        sb->state = SB_FAILED;
        sandbox_fail_procs(sb);
        on_init_exit(sb);
        sandbox_save(sb);
        return;
    }
    if (sb->state == SB_STOPPING) {
        sandbox_fail_procs(sb);
        if (sb->proxy)
            egress_proxy_close(sb->proxy);
        sb->proxy = NULL;
    }
    on_init_exit(sb);
    if (sb->state == SB_DELETING)
        start_cleanup(sb);
}

void sandbox_destroy(struct sandbox *sb, sandbox_destroy_cb cb, void *arg)
{
    struct sandbox_waiter *w = calloc(1, sizeof(*w));
    if (w) {
        w->cb = cb;
        w->arg = arg;
        w->next = sb->waiters;
        sb->waiters = w;
    } else if (cb) {
        log_error("sandbox %s: out of memory registering a delete callback", sb->id);
    }
    if (sb->state == SB_STOPPING && sb->pidfd >= 0) /* no need to wait for the grace period */
        syscall(SYS_pidfd_send_signal, sb->pidfd, SIGKILL, NULL, 0);
    if (sb->state == SB_DELETING || sb->state == SB_CREATING || sb->state == SB_STOPPING ||
        sb->state == SB_STARTING)
        return; /* already on its way, or destroyed when the creation, stop or start ends */
    enum sandbox_state was = sb->state;
    if (sb->proxy) {
        egress_proxy_close(sb->proxy);
        sb->proxy = NULL;
    }
    if (was == SB_PAUSED || sb->pausing) /* frozen processes cannot die until thawed */
        cgroup_freeze(sb->reg->cgroups, sb->id, 0);
    sb->state = SB_DELETING;
    sandbox_fail_procs(sb);
    if (was == SB_FAILED || was == SB_STOPPED || sb->pidfd < 0) {
        start_cleanup(sb); /* the init is already reaped */
        return;
    }
    /* SIGKILL the init: the kernel then kills every process in the pid namespace. pid_poll fires
     * once it is gone. */
    if (syscall(SYS_pidfd_send_signal, sb->pidfd, SIGKILL, NULL, 0) < 0)
        log_warn("sandbox %s: pidfd_send_signal: %s", sb->id, strerror(errno));
}

/* ---- stop ----------------------------------------------------------------------------------- */

#define STOP_POLL_MS 20

static void stop_op_closed(uv_handle_t *h)
{
    struct stop_op *op = h->data;
    struct sandbox *sb = op->sb;
    free(op);
    sandbox_unref(sb);
}

/* SIGKILL to the init ends the pid namespace: the kernel kills everything left in it. pid_poll
 * fires once the init is gone. */
static void stop_kill_init(struct stop_op *op)
{
    uv_timer_stop(&op->timer);
    if (op->sb->pidfd >= 0 && syscall(SYS_pidfd_send_signal, op->sb->pidfd, SIGKILL, NULL, 0) < 0)
        log_warn("sandbox %s: pidfd_send_signal: %s", op->sb->id, strerror(errno));
}

/* 1 when the init has no child left (not even an unreaped one), 0 when it has, -errno when the
 * kernel cannot say (no CONFIG_PROC_CHILDREN). Every process of a pid namespace descends from
 * its init (orphans are re-parented to it), so no child means no other process. */
static int init_alone(pid_t pid)
{
    char path[64], c;
    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, &c, 1);
    int r = n < 0 ? -errno : n == 0;
    close(fd);
    return r;
}

static void stop_tick(uv_timer_t *t)
{
    struct stop_op *op = t->data;
    /* The grace period ends early once the init is alone (it never exits by itself); when that
     * cannot be known, the whole grace period is waited for. */
    if (util_monotonic() >= op->deadline || init_alone(op->sb->pid) == 1)
        stop_kill_init(op);
}

static void stop_cgroup_work(uv_work_t *w)
{
    struct stop_op *op = w->data;
    int r = cgroup_destroy(op->sb->reg->cgroups, op->sb->id);
    if (r < 0)
        log_warn("sandbox %s: removing cgroup: %s", op->sb->id, strerror(-r));
    /* A stopped image sandbox keeps its upper layer on its disk; the overlay is mounted again by
     * sandbox_start(). */
    if (op->sb->image && (r = umount_image_root(op->sb->reg, op->sb->id)) < 0)
        log_warn("sandbox %s: unmounting its root file system: %s", op->sb->id, strerror(-r));
}

static void stop_cgroup_done(uv_work_t *w, int status)
{
    struct stop_op *op = w->data;
    struct sandbox *sb = op->sb;
    (void)status;
    sb->reg->pending--;
    sb->state = SB_STOPPED;
    sb->stop = NULL;
    log_info("sandbox %s stopped", sb->id);
    int deleted = sb->waiters != NULL;
    if (!deleted)
        sandbox_save(sb);
    if (op->cb)
        op->cb(sb, deleted ? -ESRCH : 0, op->arg);
    if (deleted)
        sandbox_destroy(sb, NULL, NULL);
    else if (sb->reg->idle_cb && sb->state == SB_STOPPED)
        sandbox_detach(sb);
    uv_close((uv_handle_t *)&op->timer, stop_op_closed); /* holds the last reference */
    registry_check_idle(sb->reg);
}

int sandbox_stop(struct sandbox *sb, double grace_s, sandbox_stop_cb cb, void *arg)
{
    if (sb->state != SB_RUNNING && sb->state != SB_PAUSED)
        return -EBUSY;
    struct stop_op *op = calloc(1, sizeof(*op));
    if (!op)
        return -ENOMEM;
    op->sb = sb;
    op->cb = cb;
    op->arg = arg;
    op->work.data = op;
    op->deadline = util_monotonic() + grace_s;
    uv_timer_init(sb->reg->loop, &op->timer);
    op->timer.data = op;
    sandbox_ref(sb);
    /* Frozen processes can neither handle SIGTERM nor die of SIGKILL until thawed. */
    if (sb->state == SB_PAUSED || sb->pausing)
        cgroup_freeze(sb->reg->cgroups, sb->id, 0);
    sb->state = SB_STOPPING;
    sb->stop = op;
    /* SIGTERM through the init, as kill(-1) in the sandbox's pid namespace: the only set that is
     * exactly "every process of the sandbox", whatever they did (setsid, new process groups,
     * double forks, nested pid namespaces), taken atomically against forks. Signalling the
     * process groups the init started would miss whoever left them; walking cgroup.procs from
     * here races with forks and reads pids across namespaces. */
    if (grace_s > 0 && ctl_sent(sb, initctl_kill_all(&sb->ctl, SIGTERM)) == 0)
        uv_timer_start(&op->timer, stop_tick, 0, STOP_POLL_MS); /* idle: no wait at all */
    else
        stop_kill_init(op);
    return 0;
}

/* ---- network -------------------------------------------------------------------------------- */

/* Makes the sandbox's egress proxy match sb->network: none → no proxy (nothing listens on the
 * sandbox's 127.0.0.1:3128); otherwise a proxy with a copy of the policy. */
int sandbox_apply_network(struct sandbox *sb)
{
    struct registry *reg = sb->reg;
    struct egress_policy *copy = NULL;
    int r;
    if (egress_policy_mode(sb->network) == EGRESS_NONE) {
        if (sb->proxy)
            egress_proxy_close(sb->proxy);
        sb->proxy = NULL;
        return 0;
    }
    char err[256];
    json_t *j = egress_policy_to_json(sb->network);
    r = j ? egress_policy_parse(j, &copy, err, sizeof(err)) : -ENOMEM;
    json_decref(j);
    if (r < 0)
        return r;
    if (sb->proxy) {
        egress_proxy_set_policy(sb->proxy, copy);
        return 0;
    }
    int fd = netns_listen(sb->pidfd, reg->host_netns, EGRESS_PROXY_PORT);
    if (fd < 0) {
        egress_policy_free(copy);
        return fd;
    }
    struct egress_options opt = {.sandbox_id = sb->id,
                                 .hosts = reg->egress_hosts,
                                 .on_decision = reg->on_egress,
                                 .ud = reg->on_egress_ud};
    return egress_proxy_start(reg->loop, fd, &opt, copy, &sb->proxy);
}

int sandbox_set_network(struct sandbox *sb, struct egress_policy *policy)
{
    if (sb->state != SB_RUNNING && sb->state != SB_PAUSED) {
        egress_policy_free(policy);
        return -EINVAL;
    }
    struct egress_policy *old = sb->network;
    sb->network = policy;
    int r = sandbox_apply_network(sb);
    if (r < 0) {
        sb->network = old;
        egress_policy_free(policy);
        return r;
    }
    egress_policy_free(old);
    return 0;
}

/* ---- creation ------------------------------------------------------------------------------- */

/* Creation failed after the sandbox was listed: undo what was done, answer, and run the delete
 * callbacks of anyone who asked to delete it meanwhile. */
static void create_fail(struct create_op *op, const char *msg)
{
    struct sandbox *sb = op->sb;
    struct registry *reg = sb->reg;
    log_error("sandbox %s: %s", sb->id, msg);
    cgroup_destroy(reg->cgroups, sb->id);
    sandbox_remove_files(reg, sb->id);
    reg->uid_slots[sb->uid_slot] = 0;
    list_remove(sb);
    op->cb(NULL, SESSION_ERR_SETUP, msg, op->arg);
    for (struct sandbox_waiter *w = sb->waiters, *next; w; w = next) {
        next = w->next;
        if (w->cb)
            w->cb(w->arg);
        free(w);
    }
    sb->waiters = NULL;
    sandbox_free(sb);
    registry_check_idle(reg);
}

/* Pool thread: the overlay of an image sandbox on its disk (see sandbox.h for the layout). A new
 * disk has `root` (owned by the sandbox's root, 0755, as every disk is made, in the pool too):
 * it becomes the upper layer. Blocking: a dozen mount system calls per layer (and the first time
 * for a uid slot, a clone for the layers' user namespace). */
static int mount_image_root(struct sandbox *sb, int fresh, const char **what)
{
    char root[1200], upper[1200], work[1200], rootfs[1200];
    int fd = -1, r;
    sandbox_dir(sb, root, sizeof(root), "root");
    sandbox_dir(sb, upper, sizeof(upper), "upper");
    sandbox_dir(sb, work, sizeof(work), "work");
    sandbox_dir(sb, rootfs, sizeof(rootfs), "rootfs");
    if (fresh) {
        *what = "overlay upper directory";
        if (rename(root, upper) < 0)
            return -errno;
        *what = "overlay work directory";
        if (mkdir(work, 0700) < 0)
            return -errno;
        *what = "overlay mount point";
        if (mkdir(rootfs, 0755) < 0)
            return -errno;
    } else if ((r = rootfs_umount(rootfs)) < 0) { /* left by a start that failed later */
        *what = "overlay mount point";
        return r;
    }
    *what = "user namespace for the image's layers";
    if ((r = rootfs_userns(sandbox_host_uid(sb), UID_RANGE, &fd)) < 0)
        return r;
    r = rootfs_mount(rootfs, (const char *const *)sb->image->lowers, sb->image->n_lowers, upper,
                     work, fd, what);
    close(fd);
    if (r < 0 || !sb->image->user || !sb->image->user[0])
        return r;
    /* Resolved again on every start: the sandbox may have changed its /etc/passwd. Written
     * here while nothing reads it (the sandbox is being created or started). */
    *what = "the image's User (in its /etc/passwd and /etc/group)";
    if ((r = rootfs_resolve_user(rootfs, sb->image->user, UID_RANGE, &sb->user_uid, &sb->user_gid,
                                 sb->user_home, sizeof(sb->user_home))) < 0) {
        rootfs_umount(rootfs);
        return r;
    }
    sb->user_set = 1;
    return 0;
}

/* Pool thread: the sandbox's directory and its disk mounted on it, holding the root file system
 * (`root`) and the workspace (`workspace`), both owned by the sandbox's root; then, for an image
 * sandbox, its overlay. */
static void create_disk_work(uv_work_t *w)
{
    struct create_op *op = w->data;
    struct sandbox *sb = op->sb;
    char dir[1200], image[1200];
    sandbox_dir(sb, dir, sizeof(dir), NULL);
    sandbox_image(sb->reg, sb->id, image, sizeof(image));
    if (!op->have_disk) {
        op->disk_what = "state directory";
        if (mkdir(dir, 0711) < 0)
            op->disk_err = -errno;
        else
            op->disk_err = disk_create(sb->reg->disks, image, dir, sb->res.disk_mib, disk_dirs,
                                       sandbox_host_uid(sb), &op->disk_what);
    }
    if (op->disk_err == 0 && sb->image)
        op->disk_err = mount_image_root(sb, !op->restart, &op->disk_what);
    if (op->disk_err == 0)
        op->disk_err = volume_stage(sb, &op->disk_what);
}

static void pool_fill_work(uv_work_t *w)
{
    struct registry *reg = w->data;
    /* Background work: at the lowest priority, so that it never competes with the commands of
     * the sandbox just created (its first exec follows at once) on a busy machine. */
    pid_t tid = (pid_t)syscall(SYS_gettid);
    int old = getpriority(PRIO_PROCESS, (id_t)tid);
    (void)setpriority(PRIO_PROCESS, (id_t)tid, 19);
    int r = disk_pool_fill(reg->disks);
    (void)setpriority(PRIO_PROCESS, (id_t)tid, old);
    if (r < 0)
        log_warn("cannot make a disk for the pool: %s", strerror(-r));
}

static void pool_fill_done(uv_work_t *w, int status)
{
    struct registry *reg = w->data;
    (void)status;
    reg->pending--;
    reg->pool_filling = 0;
    if (disk_trash_count(reg->disks) > 0) /* retired while the fill was past its trash */
        registry_fill_disk_pool(reg);
    registry_check_idle(reg);
}

void registry_start_disk_pool(struct registry *reg, size_t n)
{
    disk_pool_configure(reg->disks, reg->defaults.disk_mib, disk_dirs, n);
    registry_fill_disk_pool(reg);
}

void registry_fill_disk_pool(struct registry *reg)
{
    if (reg->pool_filling || reg->idle_cb)
        return;
    reg->pool_filling = 1;
    reg->pending++;
    reg->pool_work.data = reg;
    uv_queue_work(reg->loop, &reg->pool_work, pool_fill_work, pool_fill_done);
}

static int create_start(struct create_op *op, char *msg, size_t msglen);
static void create_on_status(uv_poll_t *h, int status, int events);

/* A start failed: the sandbox is stopped again, its files untouched. */
static void start_fail(struct create_op *op, const char *msg)
{
    struct sandbox *sb = op->sb;
    struct registry *reg = sb->reg;
    log_error("sandbox %s: start: %s", sb->id, msg);
    cgroup_destroy(sb->reg->cgroups, sb->id);
    sb->state = SB_STOPPED;
    sandbox_ref(sb);
    op->cb(sb, SESSION_ERR_SETUP, msg, op->arg);
    if (sb->waiters) /* deleted while starting */
        sandbox_destroy(sb, NULL, NULL);
    else if (sb->reg->idle_cb)
        shutdown_one(sb);
    sandbox_unref(sb);
    registry_check_idle(reg);
}

/* The clone is on its way: wait for the child's status. */
static void create_wait_child(struct create_op *op)
{
    struct registry *reg = op->sb->reg;
    op->t_started = util_monotonic();
    reg->pending++;
    uv_poll_init(reg->loop, &op->status_poll, op->pending.status_fd);
    op->status_poll.data = op;
    uv_poll_start(&op->status_poll, UV_READABLE | UV_DISCONNECT, create_on_status);
}

static void create_disk_done(uv_work_t *w, int status)
{
    struct create_op *op = w->data;
    struct registry *reg = op->sb->reg;
    char msg[1024];
    op->t_disk = util_monotonic();
    reg->pending--;
    if (status < 0 && !op->disk_err)
        op->disk_err = status;
    if (op->disk_err < 0) {
        snprintf(msg, sizeof(msg), "sandbox setup failed: %s: %s", op->disk_what,
                 strerror(-op->disk_err));
    } else if (create_start(op, msg, sizeof(msg)) == 0) {
        create_wait_child(op);
        return;
    }
    volume_unstage(op->sb);
    if (op->restart)
        start_fail(op, msg);
    else
        create_fail(op, msg);
    free(op);
    registry_fill_disk_pool(reg);
}

/* Cgroup and spawn config for a new sandbox, then clone. Runs on the loop: each step is a handful
 * of fast system calls, and the slow part (the child's setup) is waited for through the status
 * pipe, not by blocking. On failure *msg says why; the caller undoes everything. */
static int create_start(struct create_op *op, char *msg, size_t msglen)
{
    struct sandbox *sb = op->sb;
    struct registry *reg = sb->reg;
    char ws[1300], root[1300], bad[SPAWN_PATH_MAX], what_root[SPAWN_PATH_MAX + 32];
    struct spawn_config *cfg = NULL;
    struct spawn_error err;
    const char *what;
    size_t n_procs = 0;
    int r;

    sandbox_dir(sb, ws, sizeof(ws), "workspace");
    sandbox_dir(sb, root, sizeof(root), sb->image ? "rootfs" : "root");
    uid_t uid = sandbox_host_uid(sb);
    what = "cgroup";
    struct cgroup_limits lim = {sb->res.cpus, sb->res.memory_mib << 20, sb->res.pids};
    char procs[CGROUP_V1_CONTROLLERS][CGROUP_PATH_MAX];
    if ((r = cgroup_create(reg->cgroups, sb->id, &lim, procs, &n_procs)) < 0)
        goto error;
    what = "template";
    if (!(cfg = malloc(sizeof(*cfg)))) {
        r = -ENOMEM;
        goto error;
    }
    if ((r = sb->image ? template_image_config(reg->tmpl, cfg, sb->name, root)
                       : template_host_config(reg->tmpl, cfg, sb->name, root, ws)) < 0)
        goto error;
    what = "volumes";
    if ((r = volume_plan(sb, cfg)) < 0)
        goto error;
    /* Nothing runs in a stopped sandbox, so what is checked here is what the child finds. An
     * image's root is untrusted from the start (it comes from a registry). */
    if ((op->restart || sb->image) && (r = spawn_check_root(cfg, bad, sizeof(bad))) < 0) {
        snprintf(what_root, sizeof(what_root), "root file system: /%s", bad);
        what = what_root;
        goto error;
    }
    /* Secrets: a small private tmpfs with one 0400 file per secret. */
    if (json_array_size(sb->secrets) > 0) {
        size_t i;
        json_t *name;
        char dst[SPAWN_PATH_MAX];
        r = spawn_config_add(cfg, MOP_TMPFS, "tmpfs", "run/secrets",
                             MS_NOSUID | MS_NODEV | MS_NOEXEC, 0, "mode=0700,size=1m");
        json_array_foreach(sb->secrets, i, name)
        {
            const char *value = secrets_get(reg->secrets, json_string_value(name));
            snprintf(dst, sizeof(dst), "run/secrets/%s", json_string_value(name));
            if (r == 0 && value)
                r = spawn_config_add(cfg, MOP_FILE, NULL, dst, 0, 0400, value);
        }
        if (r < 0)
            goto error;
    }
    for (size_t i = 0; i < n_procs && i < SPAWN_MAX_CGROUPS; i++)
        snprintf(cfg->cgroup_procs[i], sizeof(cfg->cgroup_procs[i]), "%s", procs[i]);
    cfg->n_cgroups = n_procs;
    cfg->host_uid = uid;
    cfg->host_gid = uid;
    cfg->id_count = UID_RANGE;
    cfg->fsize_limit = FSIZE_LIMIT;
    cfg->die_with_daemon = reg->die_with_daemon;
    cfg->seccomp = reg->seccomp;
    cfg->init_fd = reg->init_fd;
    what = NULL;
    r = spawn_start(cfg, &op->pending, &err);
    free(cfg);
    cfg = NULL;
    if (r < 0)
        goto error;
    return 0;
error:
    free(cfg);
    if (what)
        snprintf(msg, msglen, "sandbox setup failed: %s: %s", what, strerror(-r));
    else
        snprintf(msg, msglen, "sandbox setup failed at step '%s'%s%s%s: %s",
                 spawn_step_name(err.step), err.detail[0] ? " (" : "", err.detail,
                 err.detail[0] ? ")" : "", strerror(-r));
    return r;
}

static void create_op_closed(uv_handle_t *h)
{
    free(h->data);
}

/* The child has exec'd the init, or reported why it could not. */
static void create_on_status(uv_poll_t *h, int status, int events)
{
    struct create_op *op = h->data;
    struct sandbox *sb = op->sb;
    struct registry *reg = sb->reg;
    struct spawn_error err;
    char msg[1024];
    (void)status;
    (void)events;

    uv_close((uv_handle_t *)h, create_op_closed); /* before spawn_finish closes the fd */
    int r = spawn_finish(&op->pending, &err);
    reg->pending--;
    volume_unstage(sb); /* the child has its own binds of them (or failed) */
    /* Replace the disk this creation may have taken from the pool, now that its clone is done
     * (making one competes for the same kernel locks and CPUs). */
    registry_fill_disk_pool(reg);
    if (r < 0) {
        snprintf(msg, sizeof(msg), "sandbox setup failed at step '%s'%s%s%s: %s",
                 spawn_step_name(err.step), err.detail[0] ? " (" : "", err.detail,
                 err.detail[0] ? ")" : "", strerror(-r));
        if (op->restart)
            start_fail(op, msg);
        else
            create_fail(op, msg);
        return;
    }
    sb->pid = op->pending.pid;
    sb->pid_start = sandbox_pid_start_time(sb->pid);
    sb->pidfd = op->pending.pidfd;
    initctl_init(&sb->ctl, op->pending.ctl_fd);
    uv_poll_init(reg->loop, &sb->ctl_poll, sb->ctl.fd);
    uv_poll_init(reg->loop, &sb->pid_poll, sb->pidfd);
    sb->ctl_poll.data = sb->pid_poll.data = sb;
    sb->handles = 2;
    uv_poll_start(&sb->pid_poll, UV_READABLE, sandbox_pid_on_event);
    sb->state = SB_RUNNING;
    if (op->restart)
        sb->recycled = 0; /* started again, by a restore or by a client */
    sandbox_ctl_update_events(sb);
    if ((r = sandbox_apply_network(sb)) < 0) {
        snprintf(msg, sizeof(msg), "sandbox setup failed: egress proxy: %s", strerror(-r));
        log_error("sandbox %s: %s", sb->id, msg);
        op->cb(op->restart ? sb : NULL, SESSION_ERR_SETUP, msg, op->arg);
        if (op->restart) /* its files are the user's: stopped again, not deleted */
            sandbox_stop(sb, 0, NULL, NULL);
        else
            sandbox_destroy(sb, NULL, NULL);
        return;
    }

    /* Before anything can run in it: a disk that would let sandboxes write more than the host
     * has gets its ballast now, not at the next check. */
    registry_check_disk(reg);
    sandbox_save(sb);
    log_debug("sandbox %s (%s) running in %.2f ms (disk ready at %.2f ms, clone returned at "
              "%.2f ms), init pid %d",
              sb->id, sb->name, (util_monotonic() - op->t_start) * 1e3,
              (op->t_disk - op->t_start) * 1e3, (op->t_started - op->t_start) * 1e3, (int)sb->pid);

    /* Deleted while being created, or the daemon is stopping: a new one must not stay (nobody
     * got it), one started again is left as the daemon leaves the others. */
    int deleted = sb->waiters != NULL,
        destroy_now = deleted || (reg->idle_cb != NULL && !op->restart);
    sandbox_ref(sb);
    if (destroy_now)
        op->cb(op->restart ? sb : NULL, deleted ? SESSION_ERR_DELETED : SESSION_ERR_SHUTTING_DOWN,
               deleted ? "the sandbox was deleted while it was being created"
                       : "the daemon is shutting down",
               op->arg);
    else
        op->cb(sb, SESSION_OK, NULL, op->arg);
    if (destroy_now)
        sandbox_destroy(sb, NULL, NULL);
    else if (reg->idle_cb)
        shutdown_one(sb);
    sandbox_unref(sb);
    registry_check_idle(reg);
}

static int name_taken(struct registry *reg, const char *name)
{
    for (struct sandbox *sb = reg->head; sb; sb = sb->next)
        if (sb->state != SB_DELETING && (!strcmp(sb->name, name) || !strcmp(sb->id, name)))
            return 1;
    return 0;
}

enum session_err sandbox_create(struct registry *reg, const struct sandbox_spec *spec,
                                sandbox_create_cb cb, void *arg, char *msg, size_t msglen)
{
    if (reg->idle_cb) {
        snprintf(msg, msglen, "the daemon is shutting down");
        return SESSION_ERR_SHUTTING_DOWN;
    }
    if (spec->name && name_taken(reg, spec->name)) {
        snprintf(msg, msglen, "a sandbox with this name already exists");
        return SESSION_ERR_NAME_TAKEN;
    }
    unsigned slot = 0;
    while (slot < reg->max_sandboxes && reg->uid_slots[slot])
        slot++;
    if (slot >= reg->max_sandboxes || reg->count >= reg->max_sandboxes) {
        snprintf(msg, msglen, "the daemon runs its maximum of %u sandboxes (--max-sandboxes)",
                 reg->max_sandboxes);
        return SESSION_ERR_CAPACITY;
    }
    if (registry_disk_room(reg, spec->res.disk_mib, msg, msglen) < 0)
        return SESSION_ERR_HOST_DISK;
    if (volume_check_exist(reg, spec->volumes, msg, msglen) < 0) /* deleted since it was parsed */
        return SESSION_ERR_NOT_FOUND;
    struct sandbox *sb = calloc(1, sizeof(*sb));
    struct create_op *op = calloc(1, sizeof(*op));
    if (sb && spec->image && !(sb->image = sandbox_image_dup(spec->image))) {
        free(sb);
        free(op);
        if (spec->image->n_lowers == 0 || spec->image->n_lowers > ROOTFS_MAX_LAYERS) {
            snprintf(msg, msglen, "an image needs 1 to %d layers, not %zu", ROOTFS_MAX_LAYERS,
                     spec->image->n_lowers);
            return SESSION_ERR_SETUP;
        }
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    if (!sb || !op || util_random_id(sb->id, sizeof(sb->id), "sb-") < 0 ||
        (!spec->network && !(sb->network = egress_policy_new(EGRESS_NONE)))) {
        if (sb)
            sandbox_image_free(sb->image);
        free(sb);
        free(op);
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    sb->reg = reg;
    snprintf(sb->name, sizeof(sb->name), "%s", spec->name ? spec->name : sb->id);
    snprintf(sb->template_name, sizeof(sb->template_name), "%s",
             sb->image ? sb->image->template_name : spec->template_name);
    sb->labels = spec->labels ? json_deep_copy(spec->labels) : json_object();
    sb->env = spec->env ? json_deep_copy(spec->env) : json_object();
    sb->secrets = spec->secrets ? json_deep_copy(spec->secrets) : json_array();
    sb->volumes = spec->volumes ? json_deep_copy(spec->volumes) : json_array();
    sb->res = spec->res;
    sb->ttl_s = spec->ttl_s;
    sb->idle_timeout_s = spec->idle_timeout_s;
    snprintf(sb->session_id, sizeof(sb->session_id), "%s", spec->session_id ?: "");
    if (spec->network)
        sb->network = spec->network;
    sb->created_at = sb->last_active_at = util_now();
    sb->uid_slot = slot;
    sb->pidfd = -1;
    initctl_init(&sb->ctl, -1);
    sb->state = SB_CREATING;
    op->sb = sb;
    op->cb = cb;
    op->arg = arg;
    op->t_start = util_monotonic();
    op->disk_work.data = op;
    reg->uid_slots[slot] = 1;
    sb->next = reg->head;
    if (reg->head)
        reg->head->prev = sb;
    reg->head = sb;
    reg->count++;

    /* A disk from the pool is a rename and a mount move: done here, and the clone follows at
     * once. Otherwise the disk is made on the thread pool first. */
    char dir[1200], image[1200];
    sandbox_dir(sb, dir, sizeof(dir), NULL);
    sandbox_image(reg, sb->id, image, sizeof(image));
    int r = disk_pool_take(reg->disks, image, dir, sb->res.disk_mib, sandbox_host_uid(sb));
    /* An image sandbox's overlay is mounted on the pool too, on whichever disk, and so are the
     * binds of volumes. */
    if (r == -ENOENT || (r == 0 && (sb->image || json_array_size(sb->volumes) > 0))) {
        op->have_disk = r == 0;
        reg->pending++;
        uv_queue_work(reg->loop, &op->disk_work, create_disk_work, create_disk_done);
        return 0;
    }
    op->t_disk = util_monotonic();
    if (r < 0)
        snprintf(msg, msglen, "sandbox setup failed: disk from the pool: %s", strerror(-r));
    if (r < 0 || create_start(op, msg, msglen) < 0) {
        /* Undone here, and said through the return value: the callback must not run yet. */
        log_error("sandbox %s: %s", sb->id, msg);
        cgroup_destroy(reg->cgroups, sb->id);
        sandbox_remove_files(reg, sb->id);
        reg->uid_slots[slot] = 0;
        list_remove(sb);
        sandbox_free(sb);
        free(op);
        return SESSION_ERR_SETUP;
    }
    create_wait_child(op);
    return SESSION_OK;
}

const char *registry_cgroup_mode(const struct registry *reg)
{
    return cgroup_mode_name(reg->cgroups->mode);
}

enum session_err sandbox_start(struct sandbox *sb, sandbox_start_cb cb, void *arg, char *msg,
                               size_t msglen)
{
    struct registry *reg = sb->reg;
    if (reg->idle_cb) {
        snprintf(msg, msglen, "the daemon is shutting down");
        return SESSION_ERR_SHUTTING_DOWN;
    }
    if (sb->state != SB_STOPPED) {
        snprintf(msg, msglen, "the sandbox is %s", sandbox_state_name(sb->state));
        return SESSION_ERR_STATE;
    }
    struct create_op *op = calloc(1, sizeof(*op));
    if (!op) {
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    op->sb = sb;
    op->cb = cb;
    op->arg = arg;
    op->restart = 1;
    op->t_start = op->t_disk = util_monotonic();
    /* The disk stayed mounted in the daemon's mount namespace while the sandbox was stopped (a
     * mount and an auto-clearing loop device, nothing else), so a start is what a creation does
     * once it has its disk: a cgroup and a clone. */
    sb->state = SB_STARTING;
    /* Its overlay first, on the pool (unmounted when it stopped), and its volumes' binds. */
    if (sb->image || json_array_size(sb->volumes) > 0) {
        op->have_disk = 1;
        op->disk_work.data = op;
        reg->pending++;
        uv_queue_work(reg->loop, &op->disk_work, create_disk_work, create_disk_done);
        return SESSION_OK;
    }
    if (create_start(op, msg, msglen) < 0) {
        log_error("sandbox %s: start: %s", sb->id, msg);
        cgroup_destroy(reg->cgroups, sb->id);
        sb->state = SB_STOPPED;
        free(op);
        return SESSION_ERR_SETUP;
    }
    create_wait_child(op);
    return SESSION_OK;
}
