/*
 * template — the `host` template: snapshots and the shared mount plan. See template.h.
 */
#include "sandbox/template.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "core/util.h"

/* Host /etc entries the template exposes. Not the whole /etc: no shadow, no machine-id, no ssh
 * keys, nothing of the host's services. */
static const char *const host_etc[] = {
    "passwd",         "group",        "resolv.conf", "nsswitch.conf", "ld.so.cache",
    "ld.so.conf",     "ld.so.conf.d", "ssl/certs",   "alternatives",  "os-release",
    "localtime",      "protocols",    "services",    "shells",        "host.conf",
    "debian_version", "inputrc",      "bash.bashrc", "profile",       "environment",
};

#define COPY_MAX_DEPTH 4

static int copy_file(const char *src, const char *dst, mode_t mode)
{
    char buf[65536];
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, r = 0;
    if (in < 0)
        return -errno;
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode & 0777);
    if (out < 0) {
        r = -errno;
        goto done;
    }
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0)
            break;
        if (write(out, buf, (size_t)n) != n) {
            r = -EIO;
            break;
        }
    }
done:
    close(in);
    if (out >= 0)
        close(out);
    return r;
}

/* Copies `src` (file, symlink or directory tree) to `dst`; symlinks are copied as symlinks. */
static int copy_tree(const char *src, const char *dst, int depth)
{
    struct stat sb;
    char target[4096];
    if (lstat(src, &sb) < 0)
        return -errno;
    if (S_ISLNK(sb.st_mode)) {
        ssize_t n = readlink(src, target, sizeof(target) - 1);
        if (n < 0)
            return -errno;
        target[n] = '\0';
        return symlink(target, dst) < 0 ? -errno : 0;
    }
    if (S_ISREG(sb.st_mode))
        return copy_file(src, dst, sb.st_mode);
    if (!S_ISDIR(sb.st_mode) || depth > COPY_MAX_DEPTH)
        return 0; /* devices, sockets, too deep: not copied */
    if (mkdir(dst, sb.st_mode & 0777) < 0 && errno != EEXIST)
        return -errno;
    DIR *d = opendir(src);
    if (!d)
        return -errno;
    struct dirent *de;
    int r = 0;
    while (!r && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char s[4096], t[4096];
        snprintf(s, sizeof(s), "%s/%s", src, de->d_name);
        snprintf(t, sizeof(t), "%s/%s", dst, de->d_name);
        r = copy_tree(s, t, depth + 1);
    }
    closedir(d);
    return r;
}

/* etc/<name>: a symlink that stays in /usr (os-release, localtime) stays a symlink; anything
 * else is copied from its resolved path. */
static int snapshot_etc_entry(const char *etc, const char *name)
{
    char host[512], dst[1024], target[4096];
    struct stat sb;
    snprintf(host, sizeof(host), "/etc/%s", name);
    snprintf(dst, sizeof(dst), "%s/%s", etc, name);
    if (lstat(host, &sb) < 0)
        return 0; /* not on this host: nothing to expose */
    char *slash = strrchr(dst, '/');
    *slash = '\0';
    int r = util_mkdir_p(dst, 0755);
    *slash = '/';
    if (r < 0)
        return r;
    if (S_ISLNK(sb.st_mode)) {
        ssize_t n = readlink(host, target, sizeof(target) - 1);
        if (n > 0) {
            target[n] = '\0';
            if (strncmp(target, "/usr/", 5) == 0 || strncmp(target, "../usr/", 7) == 0)
                return symlink(target, dst) < 0 ? -errno : 0;
        }
        if (!realpath(host, target))
            return 0; /* dangling: skip */
        return copy_tree(target, dst, 0);
    }
    return copy_tree(host, dst, 0);
}

static int snapshot_etc(const char *etc)
{
    int r = util_mkdir_p(etc, 0755);
    for (size_t i = 0; !r && i < sizeof(host_etc) / sizeof(host_etc[0]); i++)
        r = snapshot_etc_entry(etc, host_etc[i]);
    if (r)
        return r;
    char p[1024];
    static const char *const links[][2] = {{"hosts", "/run/warren/hosts"},
                                           {"hostname", "/run/warren/hostname"},
                                           {"mtab", "../proc/self/mounts"}};
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", etc, links[i][0]);
        if (symlink(links[i][1], p) < 0)
            return -errno;
    }
    return 0;
}

static const struct {
    const char *name;
    unsigned maj, min;
} dev_nodes[] = {{"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
                 {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};

static int snapshot_dev(const char *dev)
{
    static const char *const links[][2] = {{"ptmx", "pts/ptmx"},
                                           {"fd", "/proc/self/fd"},
                                           {"stdin", "/proc/self/fd/0"},
                                           {"stdout", "/proc/self/fd/1"},
                                           {"stderr", "/proc/self/fd/2"}};
    char p[1024];
    int r = util_mkdir_p(dev, 0755);
    if (r)
        return r;
    for (size_t i = 0; i < sizeof(dev_nodes) / sizeof(dev_nodes[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dev, dev_nodes[i].name);
        if (mknod(p, S_IFCHR | 0666, makedev(dev_nodes[i].maj, dev_nodes[i].min)) < 0 ||
            chmod(p, 0666) < 0)
            return -errno;
    }
    static const char *const dirs[] = {"pts", "shm"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof(p), "%s/%s", dev, dirs[i]);
        if (mkdir(p, 0755) < 0)
            return -errno;
    }
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dev, links[i][0]);
        if (symlink(links[i][1], p) < 0)
            return -errno;
    }
    return 0;
}

/* What every sandbox gets whatever its root: /proc (with the kernel's knobs read-only and its
 * leaks masked), /sys, the /dev snapshot, /dev/pts and /dev/shm. */
static int add_kernel_fs(struct spawn_config *cfg, const char *tdir)
{
    static const char *const ro_proc[] = {"proc/sys", "proc/sysrq-trigger", "proc/bus", "proc/fs",
                                          "proc/irq"};
    static const char *const masked[] = {
        "proc/kcore", "proc/keys", "proc/timer_list", "proc/sched_debug", "proc/latency_stats",
        "proc/kallsyms", "proc/kmsg", "proc/acpi", "proc/scsi", "proc/asound", "sys/firmware",
        "sys/kernel/debug", "sys/kernel/security",
        /* Block devices are not namespaced: the loop devices' backing_file would name every
         * sandbox's disk image (and the daemon's state directory). */
        "sys/devices/virtual/block", "sys/block"};
    const unsigned long nsd = MS_NOSUID | MS_NODEV;
    char a[SPAWN_PATH_MAX + 16];
    int r = 0;
/* Appends an op unless an earlier one failed; the first error is returned. */
#define ADD(...) (r = r ? r : spawn_config_add(cfg, __VA_ARGS__))
    ADD(MOP_PROC, NULL, "proc", 0, 0, NULL);
    ADD(MOP_SYSFS, NULL, "sys", 0, 0, NULL);
    for (size_t i = 0; i < sizeof(ro_proc) / sizeof(ro_proc[0]); i++)
        ADD(MOP_READONLY, NULL, ro_proc[i], 0, 0, NULL);
    for (size_t i = 0; i < sizeof(masked) / sizeof(masked[0]); i++)
        ADD(MOP_MASK, NULL, masked[i], 0, 0, NULL);

    snprintf(a, sizeof(a), "%s/dev", tdir);
    ADD(MOP_BIND_RO, a, "dev", 0, 0, NULL);
    if (!r) {
        /* Read-only, but device nodes must stay usable: no nodev on this bind. */
        cfg->mounts[cfg->n_mounts - 1].open_early = 1;
        cfg->mounts[cfg->n_mounts - 1].kind = MOP_BIND_DEV;
        cfg->mounts[cfg->n_mounts - 1].flags = MS_RDONLY;
    }
    ADD(MOP_DEVPTS, NULL, "dev/pts", 0, 0, NULL);
    ADD(MOP_TMPFS, "tmpfs", "dev/shm", nsd, 0, "mode=1777,size=64m");
    return r;
}

/* The shared plan of the host template, in mount order. */
static int build_plan(struct host_template *t)
{
    static const char *const top[] = {"bin", "sbin", "lib", "lib32", "lib64", "libx32"};
    struct spawn_config *cfg = &t->plan;
    char a[SPAWN_PATH_MAX + 16], b[SPAWN_PATH_MAX];
    int r = 0;

    ADD(MOP_BIND_RO, "/usr", "usr", 0, 0, NULL);
    for (size_t i = 0; i < sizeof(top) / sizeof(top[0]); i++) {
        struct stat sb;
        snprintf(a, sizeof(a), "/%s", top[i]);
        if (lstat(a, &sb) < 0)
            continue;
        if (S_ISLNK(sb.st_mode)) {
            ssize_t n = readlink(a, b, sizeof(b) - 1);
            if (n <= 0)
                continue;
            b[n] = '\0';
            ADD(MOP_SYMLINK, b, top[i], 0, 0, NULL);
        } else if (S_ISDIR(sb.st_mode)) {
            ADD(MOP_BIND_RO, a, top[i], 0, 0, NULL);
        }
    }
    snprintf(a, sizeof(a), "%s/etc", t->dir);
    ADD(MOP_BIND_RO, a, "etc", 0, 0, NULL);
    if (!r)
        cfg->mounts[cfg->n_mounts - 1].open_early = 1;

    r = r ? r : add_kernel_fs(cfg, t->dir);

    ADD(MOP_DIR, NULL, "tmp", 0, 01777, NULL);
    ADD(MOP_DIR, NULL, "root", 0, 0700, NULL);
    ADD(MOP_DIR, NULL, "home", 0, 0755, NULL);
    ADD(MOP_DIR, NULL, "run", 0, 0755, NULL);
    ADD(MOP_DIR, NULL, "run/warren", 0, 0755, NULL);
    ADD(MOP_DIR, NULL, "var", 0, 0755, NULL);
    ADD(MOP_DIR, NULL, "var/tmp", 0, 01777, NULL);
    ADD(MOP_SYMLINK, "../run", "var/run", 0, 0, NULL);
    /* The root is the sandbox's disk (sandbox/disk.h): /tmp, /var/tmp, /root, /home and what else
     * the sandbox writes outside /workspace count against disk_mib, and filling it gives ENOSPC. */
    cfg->root_opts[0] = '\0';
    return r;
}

/* The shared plan of an image root: the image brings its own /usr, /etc, /tmp, ...; the sandbox
 * gets the same kernel file systems and devices as a host-template one, and /run/warren for
 * warren's files (template_image_config). */
static int build_image_plan(struct host_template *t)
{
    struct spawn_config *cfg = &t->image_plan;
    int r = add_kernel_fs(cfg, t->dir);
    ADD(MOP_DIR, NULL, "run", 0, 0755, NULL);
    ADD(MOP_DIR, NULL, "run/warren", 0, 0755, NULL);
#undef ADD
    cfg->root_opts[0] = '\0'; /* the overlay (sandbox/rootfs.h), bound on itself */
    return r;
}

int template_host_prepare(struct host_template *t, const char *state_dir)
{
    char p[SPAWN_PATH_MAX + 16];
    int r;
    memset(t, 0, sizeof(*t));
    if (snprintf(t->dir, sizeof(t->dir), "%s/templates/host", state_dir) >= (int)sizeof(t->dir))
        return -ENAMETOOLONG;
    if ((r = util_remove_tree(t->dir)) < 0 || (r = util_mkdir_p(t->dir, 0755)) < 0)
        return r;
    /* The snapshots live on a tmpfs of their own (in the daemon's mount namespace): a bind
     * mount's source path shows in the sandbox's /proc/self/mountinfo relative to its file
     * system, so from here it reads "/etc", not the host path of the state directory. It also
     * allows the device nodes of the /dev snapshot whatever the state directory's mount says. */
    if (mount("tmpfs", t->dir, "tmpfs", MS_NOSUID, "mode=0755,size=16m") < 0)
        return -errno;
    snprintf(p, sizeof(p), "%s/etc", t->dir);
    if ((r = snapshot_etc(p)) < 0)
        return r;
    snprintf(p, sizeof(p), "%s/dev", t->dir);
    if ((r = snapshot_dev(p)) < 0)
        return r;
    spawn_config_init(&t->plan);
    spawn_config_init(&t->image_plan);
    if ((r = build_plan(t)) < 0)
        return r;
    return build_image_plan(t);
}

int template_host_config(const struct host_template *t, struct spawn_config *cfg,
                         const char *hostname, const char *root_dir, const char *workspace)
{
    int r;
    memcpy(cfg, &t->plan, sizeof(*cfg));
    if (snprintf(cfg->hostname, sizeof(cfg->hostname), "%s", hostname) >=
            (int)sizeof(cfg->hostname) ||
        snprintf(cfg->root_dir, sizeof(cfg->root_dir), "%s", root_dir) >=
            (int)sizeof(cfg->root_dir))
        return -ENAMETOOLONG;
    snprintf(cfg->file_data[0], sizeof(cfg->file_data[0]),
             "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n",
             hostname);
    snprintf(cfg->file_data[1], sizeof(cfg->file_data[1]), "%s\n", hostname);
    if ((r = spawn_config_add(cfg, MOP_BIND_RW, workspace, "workspace", 0, 0, NULL)) < 0)
        return r;
    cfg->mounts[cfg->n_mounts - 1].open_early = 1;
    if ((r = spawn_config_add(cfg, MOP_FILE, NULL, "run/warren/hosts", 0, 0644,
                              cfg->file_data[0])) < 0 ||
        (r = spawn_config_add(cfg, MOP_FILE, NULL, "run/warren/hostname", 0, 0644,
                              cfg->file_data[1])) < 0)
        return r;
    return 0;
}

int template_image_config(const struct host_template *t, struct spawn_config *cfg,
                          const char *hostname, const char *rootfs)
{
    static const char *const managed[][2] = {{"run/warren/hosts", "etc/hosts"},
                                             {"run/warren/hostname", "etc/hostname"}};
    char resolv[SPAWN_PATH_MAX + 32];
    int r;
    memcpy(cfg, &t->image_plan, sizeof(*cfg));
    if (snprintf(cfg->hostname, sizeof(cfg->hostname), "%s", hostname) >=
            (int)sizeof(cfg->hostname) ||
        snprintf(cfg->root_dir, sizeof(cfg->root_dir), "%s", rootfs) >= (int)sizeof(cfg->root_dir))
        return -ENAMETOOLONG;
    snprintf(cfg->file_data[0], sizeof(cfg->file_data[0]),
             "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n",
             hostname);
    snprintf(cfg->file_data[1], sizeof(cfg->file_data[1]), "%s\n", hostname);
    /* /workspace is part of the overlay (an image or a snapshot may bring files there). */
    if ((r = spawn_config_add(cfg, MOP_DIR, NULL, "workspace", 0, 0755, NULL)) < 0)
        return r;
    /* warren's files over the image's: written in /run/warren (in the overlay, so the sandbox's
     * root may change them, as on the host template), then bound on the image's paths, which are
     * created if the image has none. */
    for (size_t i = 0; i < 2; i++)
        if ((r = spawn_config_add(cfg, MOP_FILE, NULL, managed[i][0], 0, 0644, cfg->file_data[i])) <
                0 ||
            (r = spawn_config_add(cfg, MOP_BIND_RW, managed[i][0], managed[i][1], 0, 0, NULL)) < 0)
            return r;
    snprintf(resolv, sizeof(resolv), "%s/etc/resolv.conf", t->dir);
    if (access(resolv, F_OK) == 0) {
        if ((r = spawn_config_add(cfg, MOP_BIND_RO, resolv, "etc/resolv.conf", 0, 0, NULL)) < 0)
            return r;
        cfg->mounts[cfg->n_mounts - 1].open_early = 1;
    }
    return 0;
}
