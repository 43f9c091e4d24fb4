/*
 * cgroup — per-sandbox cgroups on v1 and v2. See cgroup.h for the layout.
 */
#include "sandbox/cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

const char *const cgroup_v1_controllers[CGROUP_V1_CONTROLLERS] = {"memory", "pids", "cpu",
                                                                  "freezer", "cpuacct"};
const char *const cgroup_v2_controllers[CGROUP_V2_CONTROLLERS] = {"memory", "pids", "cpu"};
enum { V1_MEMORY, V1_PIDS, V1_CPU, V1_FREEZER, V1_CPUACCT };

const char *cgroup_mode_name(enum cgroup_mode mode)
{
    switch (mode) {
    case CGROUP_V1:
        return "v1";
    case CGROUP_V2:
        return "v2";
    default:
        return "none";
    }
}

static int write_str(const char *dir, const char *file, const char *value)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, value, strlen(value));
    int e = errno;
    close(fd);
    return n < 0 ? -e : 0;
}

static int read_file(const char *dir, const char *file, char *out, size_t cap)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, out, cap - 1);
    int e = errno;
    close(fd);
    if (n < 0)
        return -e;
    out[n] = '\0';
    return 0;
}

static int is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Finds the daemon's path in the hierarchy whose controller list contains `ctrl` (or the v2 line
 * when ctrl is ""). */
static int self_path(const char *self_cgroup, const char *ctrl, char *out, size_t cap)
{
    FILE *f = fopen(self_cgroup, "re");
    char line[1024];
    int r = -ENOENT;
    if (!f)
        return -errno;
    while (fgets(line, sizeof(line), f)) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = '\0';
        char *list = c1 + 1, *path = c2 + 1;
        path[strcspn(path, "\n")] = '\0';
        int match = 0;
        if (!*ctrl) {
            match = strncmp(line, "0:", 2) == 0 && *list == '\0';
        } else {
            for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ","))
                if (strcmp(tok, ctrl) == 0)
                    match = 1;
        }
        if (match) {
            snprintf(out, cap, "%s", strcmp(path, "/") == 0 ? "" : path);
            r = 0;
            break;
        }
    }
    fclose(f);
    return r;
}

/* Bit i set when cgroup_v2_controllers[i] is a word of the space-separated `list`. */
static unsigned v2_controller_bits(const char *list)
{
    unsigned bits = 0;
    for (int i = 0; i < CGROUP_V2_CONTROLLERS; i++) {
        size_t n = strlen(cgroup_v2_controllers[i]);
        for (const char *p = strstr(list, cgroup_v2_controllers[i]); p;
             p = strstr(p + 1, cgroup_v2_controllers[i]))
            if ((p == list || p[-1] == ' ') && (p[n] == '\0' || p[n] == ' ' || p[n] == '\n'))
                bits |= 1u << i;
    }
    return bits;
}

/* "+memory +cpu" (sign '+') or "-memory -cpu" (sign '-') for the controllers in `bits`. */
static void v2_controller_list(unsigned bits, char sign, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < CGROUP_V2_CONTROLLERS; i++)
        if (bits & (1u << i))
            len += snprintf(out + len, len < cap ? cap - len : 0, "%s%c%s", len ? " " : "", sign,
                            cgroup_v2_controllers[i]);
}

static int init_v2(struct cgroup_manager *m, const char *fs_root, const char *self_cgroup,
                   char *err, size_t cap)
{
    const unsigned all = (1u << CGROUP_V2_CONTROLLERS) - 1;
    char self[CGROUP_PATH_MAX], buf[512], want[64];
    int r = self_path(self_cgroup, "", self, sizeof(self));
    if (r < 0) {
        snprintf(err, cap, "cgroup v2: cannot find the daemon's cgroup in %s: %s", self_cgroup,
                 strerror(-r));
        return r;
    }
    if (snprintf(m->home, sizeof(m->home), "%s%s", fs_root, self) >= (int)sizeof(m->home) ||
        snprintf(m->base[0], sizeof(m->base[0]), "%s/warren", m->home) >= (int)sizeof(m->base[0]))
        return -ENAMETOOLONG;
    /* Checked before anything is changed: the kernel's answer to enabling a controller the
     * parent does not delegate is a bare ENOENT. */
    if ((r = read_file(m->home, "cgroup.controllers", buf, sizeof(buf))) < 0) {
        snprintf(err, cap, "cgroup v2: cannot read %s/cgroup.controllers: %s", m->home,
                 strerror(-r));
        return r;
    }
    unsigned missing = all & ~v2_controller_bits(buf);
    v2_controller_list(all, '+', want, sizeof(want));
    if (missing) {
        char names[64];
        v2_controller_list(missing, '+', names, sizeof(names));
        buf[strcspn(buf, "\n")] = '\0';
        if (!*self)
            snprintf(err, cap,
                     "cgroup v2: the root cgroup lacks the controllers %s (the kernel's command "
                     "line disables them?)",
                     names);
        else
            snprintf(err, cap,
                     "cgroup v2: warren's cgroup %s lacks the controllers %s (its "
                     "cgroup.controllers has \"%s\") because its parent does not delegate them: "
                     "enable them there (echo \"%s\" > %.*s/cgroup.subtree_control), or start "
                     "warren in a delegated cgroup (systemd: Delegate=yes)",
                     m->home, names, buf, want, (int)(strrchr(m->home, '/') - m->home), m->home);
        return -ENOTSUP;
    }
    unsigned before = 0;
    if (*self) {
        /* No processes in inner nodes: the daemon moves to a leaf of its own first. The root
         * may hold processes, and its controllers are the whole system's: never undone. */
        if ((r = read_file(m->home, "cgroup.subtree_control", buf, sizeof(buf))) < 0) {
            snprintf(err, cap, "cgroup v2: cannot read %s/cgroup.subtree_control: %s", m->home,
                     strerror(-r));
            return r;
        }
        before = v2_controller_bits(buf);
        char leaf[CGROUP_PATH_MAX + 16];
        snprintf(leaf, sizeof(leaf), "%s/warren-daemon", m->home);
        if (mkdir(leaf, 0755) < 0 && errno != EEXIST) {
            r = -errno;
            snprintf(err, cap, "cgroup v2: cannot create %s: %s", leaf, strerror(-r));
            return r;
        }
        m->moved = 1;
        if ((r = write_str(leaf, "cgroup.procs", "0")) < 0) {
            snprintf(err, cap, "cgroup v2: cannot move the daemon into %s: %s", leaf, strerror(-r));
            return r;
        }
    }
    if ((r = write_str(m->home, "cgroup.subtree_control", want)) < 0) {
        if (r == -EBUSY)
            snprintf(err, cap,
                     "cgroup v2: cannot enable %s in %s/cgroup.subtree_control: other processes "
                     "share warren's cgroup, and v2 allows none in a cgroup that delegates "
                     "controllers; start warren in a cgroup of its own (systemd: Delegate=yes)",
                     want, m->home);
        else
            snprintf(err, cap, "cgroup v2: cannot enable %s in %s/cgroup.subtree_control: %s", want,
                     m->home, strerror(-r));
        return r;
    }
    if (*self)
        m->enabled = all & ~before;
    if ((r = util_mkdir_p(m->base[0], 0755)) < 0 ||
        (r = write_str(m->base[0], "cgroup.subtree_control", want)) < 0) {
        snprintf(err, cap, "cgroup v2: cannot set up %s: %s", m->base[0], strerror(-r));
        return r;
    }
    return 0;
}

static int init_v1(struct cgroup_manager *m, const char *fs_root, const char *self_cgroup,
                   char *err, size_t cap)
{
    int found = 0;
    for (int i = 0; i < CGROUP_V1_CONTROLLERS; i++) {
        char mnt[CGROUP_PATH_MAX], self[CGROUP_PATH_MAX];
        m->base[i][0] = '\0';
        snprintf(mnt, sizeof(mnt), "%s/%s", fs_root, cgroup_v1_controllers[i]);
        if (!is_dir(mnt) || self_path(self_cgroup, cgroup_v1_controllers[i], self, sizeof(self)))
            continue;
        if (snprintf(m->base[i], sizeof(m->base[i]), "%s%s/warren", mnt, self) >=
            (int)sizeof(m->base[i]))
            return -ENAMETOOLONG;
        int r = util_mkdir_p(m->base[i], 0755);
        if (r < 0) {
            snprintf(err, cap, "cgroup v1: cannot create %s: %s", m->base[i], strerror(-r));
            return r;
        }
        found++;
    }
    if (!found)
        snprintf(err, cap, "cgroup v1: none of warren's controllers is mounted under %s", fs_root);
    return found ? 0 : -ENOENT;
}

int cgroup_manager_init(struct cgroup_manager *m, const char *fs_root, const char *self_cgroup,
                        char *err, size_t cap)
{
    char probe[CGROUP_PATH_MAX];
    int r = -ENOENT;
    memset(m, 0, sizeof(*m));
    snprintf(err, cap,
             "no usable cgroup hierarchy under %s: sandboxes cannot be limited; warren "
             "needs cgroup v2 with a delegated subtree, or cgroup v1 with the memory, "
             "pids, cpu and freezer controllers",
             fs_root);
    snprintf(probe, sizeof(probe), "%s/cgroup.controllers", fs_root);
    if (access(probe, F_OK) == 0) {
        m->mode = CGROUP_V2;
        if ((r = init_v2(m, fs_root, self_cgroup, err, cap)) == -ENAMETOOLONG)
            snprintf(err, cap, "cgroup v2: the daemon's cgroup path is too long");
    } else {
        snprintf(probe, sizeof(probe), "%s/memory", fs_root);
        if (is_dir(probe)) {
            m->mode = CGROUP_V1;
            if ((r = init_v1(m, fs_root, self_cgroup, err, cap)) == -ENAMETOOLONG)
                snprintf(err, cap, "cgroup v1: the daemon's cgroup path is too long");
        }
    }
    if (r < 0) {
        /* Whatever was set up before the failure (the daemon's move on v2) is undone. */
        cgroup_manager_cleanup(m);
        m->mode = CGROUP_NONE;
    }
    return r;
}

static unsigned long long read_number(const char *dir, const char *file)
{
    char buf[64];
    return read_file(dir, file, buf, sizeof(buf)) == 0 ? strtoull(buf, NULL, 10) : 0;
}

static int set_limits_v2(const char *dir, const struct cgroup_limits *l)
{
    char v[64];
    int r = 0;
    if (l->memory) {
        snprintf(v, sizeof(v), "%llu", l->memory);
        if ((r = write_str(dir, "memory.max", v)) < 0)
            return r;
        /* memory + swap = memory: no swap at all. Absent when the kernel has no swap support. */
        if ((r = write_str(dir, "memory.swap.max", "0")) < 0 && r != -ENOENT)
            return r;
    }
    if (l->pids) {
        snprintf(v, sizeof(v), "%llu", l->pids);
        if ((r = write_str(dir, "pids.max", v)) < 0)
            return r;
    }
    if (l->cpus > 0) {
        snprintf(v, sizeof(v), "%llu 100000", (unsigned long long)(l->cpus * 100000.0 + 0.5));
        if ((r = write_str(dir, "cpu.max", v)) < 0)
            return r;
    }
    return 0;
}

static int set_limits_v1(int ctrl, const char *dir, const struct cgroup_limits *l)
{
    char v[64];
    int r = 0;
    if (ctrl == V1_MEMORY && l->memory) {
        /* memsw must stay >= the memory limit (equal means no swap; absent without swap
         * accounting): raising moves memsw first, lowering moves it last. */
        int raise = l->memory > read_number(dir, "memory.limit_in_bytes");
        snprintf(v, sizeof(v), "%llu", l->memory);
        if (raise && (r = write_str(dir, "memory.memsw.limit_in_bytes", v)) < 0 && r != -ENOENT)
            return r;
        if ((r = write_str(dir, "memory.limit_in_bytes", v)) < 0)
            return r;
        if (!raise && (r = write_str(dir, "memory.memsw.limit_in_bytes", v)) < 0 && r != -ENOENT)
            return r;
    } else if (ctrl == V1_PIDS && l->pids) {
        snprintf(v, sizeof(v), "%llu", l->pids);
        return write_str(dir, "pids.max", v);
    } else if (ctrl == V1_CPU && l->cpus > 0) {
        snprintf(v, sizeof(v), "%llu", (unsigned long long)(l->cpus * 100000.0 + 0.5));
        if ((r = write_str(dir, "cpu.cfs_period_us", "100000")) < 0)
            return r;
        return write_str(dir, "cpu.cfs_quota_us", v);
    }
    return 0;
}

int cgroup_create(const struct cgroup_manager *m, const char *name,
                  const struct cgroup_limits *limits, char procs[][CGROUP_PATH_MAX],
                  size_t *n_procs)
{
    int n = m->mode == CGROUP_V2 ? 1 : CGROUP_V1_CONTROLLERS;
    *n_procs = 0;
    if (m->mode == CGROUP_NONE)
        return 0;
    for (int i = 0; i < n; i++) {
        char dir[CGROUP_PATH_MAX];
        if (!m->base[i][0])
            continue;
        if (snprintf(dir, sizeof(dir), "%s/%s", m->base[i], name) >= (int)sizeof(dir) - 16)
            goto toolong;
        int r = mkdir(dir, 0755) < 0 && errno != EEXIST ? -errno : 0;
        if (r == -ENOENT) {
            /* Another daemon sharing this parent removed it when it exited empty: make it
             * again (with its controllers on v2) and retry. */
            r = util_mkdir_p(m->base[i], 0755);
            if (r == 0 && m->mode == CGROUP_V2) {
                char want[64];
                v2_controller_list((1u << CGROUP_V2_CONTROLLERS) - 1, '+', want, sizeof(want));
                r = write_str(m->base[i], "cgroup.subtree_control", want);
            }
            if (r == 0 && mkdir(dir, 0755) < 0 && errno != EEXIST)
                r = -errno;
        }
        if (r < 0) {
            cgroup_destroy(m, name);
            return r;
        }
        r = m->mode == CGROUP_V2 ? set_limits_v2(dir, limits) : set_limits_v1(i, dir, limits);
        if (r < 0) {
            cgroup_destroy(m, name);
            return r;
        }
        if (snprintf(procs[*n_procs], CGROUP_PATH_MAX, "%s/cgroup.procs", dir) >= CGROUP_PATH_MAX)
            goto toolong;
        (*n_procs)++;
    }
    return 0;
toolong:
    cgroup_destroy(m, name);
    return -ENAMETOOLONG;
}

int cgroup_set_limits(const struct cgroup_manager *m, const char *name,
                      const struct cgroup_limits *limits)
{
    int n = m->mode == CGROUP_V2 ? 1 : CGROUP_V1_CONTROLLERS;
    if (m->mode == CGROUP_NONE)
        return -ENOTSUP;
    for (int i = 0; i < n; i++) {
        char dir[CGROUP_PATH_MAX + 80];
        if (!m->base[i][0])
            continue;
        snprintf(dir, sizeof(dir), "%s/%s", m->base[i], name);
        if (!is_dir(dir))
            return -ENOENT;
        int r = m->mode == CGROUP_V2 ? set_limits_v2(dir, limits) : set_limits_v1(i, dir, limits);
        if (r < 0)
            return r;
    }
    return 0;
}

/* The value of "key N" in a flat keyed file (memory.events, cpu.stat, memory.oom_control). */
static unsigned long long read_key(const char *dir, const char *file, const char *key)
{
    char buf[4096];
    if (read_file(dir, file, buf, sizeof(buf)) < 0)
        return 0;
    size_t klen = strlen(key);
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, key, klen) == 0 && line[klen] == ' ')
            return strtoull(line + klen + 1, NULL, 10);
    return 0;
}

int cgroup_usage(const struct cgroup_manager *m, const char *name, struct cgroup_usage *u)
{
    char dir[CGROUP_V1_CONTROLLERS][CGROUP_PATH_MAX + 80];
    memset(u, 0, sizeof(*u));
    if (m->mode == CGROUP_NONE)
        return -ENOTSUP;
    for (int i = 0; i < CGROUP_V1_CONTROLLERS; i++)
        snprintf(dir[i], sizeof(dir[i]), "%s/%s", m->base[m->mode == CGROUP_V2 ? 0 : i], name);
    if (m->mode == CGROUP_V2) {
        u->memory_bytes = read_number(dir[0], "memory.current");
        u->pids = read_number(dir[0], "pids.current");
        u->cpu_usec = read_key(dir[0], "cpu.stat", "usage_usec");
        u->oom_kills = read_key(dir[0], "memory.events", "oom_kill");
        return 0;
    }
    if (m->base[V1_MEMORY][0]) {
        u->memory_bytes = read_number(dir[V1_MEMORY], "memory.usage_in_bytes");
        u->oom_kills = read_key(dir[V1_MEMORY], "memory.oom_control", "oom_kill");
    }
    if (m->base[V1_PIDS][0])
        u->pids = read_number(dir[V1_PIDS], "pids.current");
    if (m->base[V1_CPUACCT][0])
        u->cpu_usec = read_number(dir[V1_CPUACCT], "cpuacct.usage") / 1000;
    return 0;
}

/* The directory of the sandbox's freezer, or -ENOTSUP. */
static int freezer_dir(const struct cgroup_manager *m, const char *name, char *dir, size_t cap)
{
    if (m->mode == CGROUP_V2)
        snprintf(dir, cap, "%s/%s", m->base[0], name);
    else if (m->mode == CGROUP_V1 && m->base[V1_FREEZER][0])
        snprintf(dir, cap, "%s/%s", m->base[V1_FREEZER], name);
    else
        return -ENOTSUP;
    return 0;
}

int cgroup_freeze(const struct cgroup_manager *m, const char *name, int frozen)
{
    char dir[CGROUP_PATH_MAX + 80];
    int r = freezer_dir(m, name, dir, sizeof(dir));
    if (r < 0)
        return r;
    if (m->mode == CGROUP_V2)
        return write_str(dir, "cgroup.freeze", frozen ? "1" : "0");
    return write_str(dir, "freezer.state", frozen ? "FROZEN" : "THAWED");
}

int cgroup_is_frozen(const struct cgroup_manager *m, const char *name)
{
    char dir[CGROUP_PATH_MAX + 80], state[64];
    int r = freezer_dir(m, name, dir, sizeof(dir));
    if (r < 0)
        return r;
    if (m->mode == CGROUP_V2)
        return read_key(dir, "cgroup.events", "frozen") == 1;
    if ((r = read_file(dir, "freezer.state", state, sizeof(state))) < 0)
        return r;
    return strncmp(state, "FROZEN", 6) == 0;
}

/* SIGKILLs every process listed in dir/cgroup.procs (v1 has no cgroup.kill). */
static void kill_members(const char *dir)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    int pid;
    while (fscanf(f, "%d", &pid) == 1)
        if (pid > 1)
            kill(pid, SIGKILL);
    fclose(f);
}

void cgroup_manager_cleanup(const struct cgroup_manager *m)
{
    char leaf[CGROUP_PATH_MAX + 16], undo[64];
    if (m->mode == CGROUP_V1) {
        for (int i = 0; i < CGROUP_V1_CONTROLLERS; i++)
            if (m->base[i][0])
                (void)rmdir(m->base[i]); /* fails while another daemon's sandboxes live there */
        return;
    }
    if (m->mode != CGROUP_V2)
        return;
    /* Each step needs the one before: controllers cannot be disabled while a child delegates
     * them, and the daemon cannot go back into its cgroup while that delegates any. */
    const char *step = m->base[0], *what = "remove";
    int r = rmdir(m->base[0]) < 0 && errno != ENOENT ? -errno : 0;
    if (r == 0 && m->enabled) {
        v2_controller_list(m->enabled, '-', undo, sizeof(undo));
        step = m->home;
        what = "disable controllers in";
        r = write_str(m->home, "cgroup.subtree_control", undo);
    }
    if (r == 0 && m->moved) {
        step = m->home;
        what = "move the daemon back to";
        r = write_str(m->home, "cgroup.procs", "0");
    }
    if (r == 0 && m->moved) {
        snprintf(leaf, sizeof(leaf), "%s/warren-daemon", m->home);
        step = leaf;
        what = "remove";
        r = rmdir(leaf) < 0 && errno != ENOENT ? -errno : 0;
    }
    if (r < 0)
        log_warn("cgroup v2: cannot %s %s: %s", what, step, strerror(-r));
}

int cgroup_destroy(const struct cgroup_manager *m, const char *name)
{
    int n = m->mode == CGROUP_V2 ? 1 : CGROUP_V1_CONTROLLERS, ret = 0;
    if (m->mode == CGROUP_NONE)
        return 0;
    for (int i = 0; i < n; i++) {
        char dir[CGROUP_PATH_MAX + 80];
        if (!m->base[i][0])
            continue;
        snprintf(dir, sizeof(dir), "%s/%s", m->base[i], name);
        /* Normally empty already (the init's death ended the pid namespace); after a daemon
         * crash it may not be. */
        if (m->mode == CGROUP_V2)
            (void)write_str(dir, "cgroup.kill", "1");
        else
            kill_members(dir);
        /* The init has been reaped, but its last children may still be exiting: retry briefly. */
        for (int tries = 0;; tries++) {
            if (rmdir(dir) == 0 || errno == ENOENT)
                break;
            if (errno != EBUSY || tries >= 200) {
                ret = -errno;
                break;
            }
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return ret;
}
