/*
 * server — start-up checks, wiring, signals and orderly shutdown of the daemon.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <limits.h>
#include <malloc.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/api.h"
#include "atropos/atropos.h"
#include "core/log.h"
#include "core/util.h"
#include "image/registry.h"
#include "sandbox/disk.h"
#include "sandbox/egress.h"
#include "sandbox/netns.h"
#include "sandbox/template.h"
#include "session/audit.h"
#include "session/build.h"
#include "session/volume.h"

void server_config_defaults(struct server_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = "127.0.0.1:7070";
    cfg->state_dir = "./.warren";
    cfg->limits.max_sandboxes = 1024;
    cfg->limits.max_body_bytes = 16u << 20;
    cfg->limits.exec_timeout_default_s = 300;
    cfg->limits.exec_timeout_max_s = 86400;
    cfg->limits.max_output_default = 1u << 20;
    cfg->limits.max_output_max = 64u << 20;
    cfg->limits.defaults = (struct sandbox_resources){1.0, 512, 256, 1024};
    cfg->limits.maxima = (struct sandbox_resources){64.0, 65536, 65536, 1048576};
    cfg->audit_max_bytes = AUDIT_DEFAULT_MAX_BYTES;
    cfg->audit_keep = AUDIT_DEFAULT_KEEP;
    /* Agents' sandboxes write little of their disks (a checkout, a few packages: tens of MiB of
     * the default GiB), so 16 sandboxes may share each GiB the host has (a thousand idle ones of
     * the default size on 64 GiB free); when they do write more, the reserve and the ballasts
     * (registry_check_disk()) make it ENOSPC inside them, never a full host. */
    cfg->disk_overcommit = 16;
    cfg->disk_reserve_mib = -1;
    cfg->pull_timeout_s = 600;
    cfg->released_ttl_s = 3600;
}

/* The default reserve: what the host keeps free below the sandboxes is what absorbs the writes
 * the ballasts cannot stop (inode tables an image fills on first use, at most 1.6% of a disk,
 * and everything outside sandboxes within one check period), so it grows with the disk as ext4's
 * own 5% for root does, from 256 MiB on a small disk to 2 GiB on a large one. */
static int64_t default_disk_reserve(const char *dir)
{
    int64_t free_bytes, size = 0, lo = 256ll << 20, hi = 2048ll << 20;
    disk_host_free(dir, &free_bytes, &size);
    int64_t r = size / 20;
    return r < lo ? lo : r > hi ? hi : r;
}

static void on_disk_check(uv_timer_t *t)
{
    struct server *srv = t->data;
    registry_check_disk(&srv->reg);
}

/* Finds warren-init next to this binary (build tree) or in ../libexec/warren (installed) and
 * copies it into a sealed memfd. Sandboxes exec the memfd: no host path to the binary exists in
 * them, and /proc/1/exe cannot be used to overwrite a host file. */
static int load_init_binary(int *out)
{
    char self[PATH_MAX], path[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n < 0)
        return -errno;
    self[n] = '\0';
    char *dir = dirname(self);
    snprintf(path, sizeof(path), "%s/warren-init", dir);
    int src = open(path, O_RDONLY | O_CLOEXEC);
    if (src < 0) {
        snprintf(path, sizeof(path), "%s/../libexec/warren/warren-init", dir);
        src = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (src < 0) {
        log_error("cannot find warren-init next to %s or in ../libexec/warren: %s", dir,
                  strerror(errno));
        return -ENOENT;
    }
    struct stat sb;
    int r = 0, mfd = memfd_create("warren-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0 || fstat(src, &sb) < 0) {
        r = -errno;
        goto out;
    }
    for (off_t off = 0; off < sb.st_size;) {
        ssize_t w = sendfile(mfd, src, &off, (size_t)(sb.st_size - off));
        if (w <= 0) {
            r = w < 0 ? -errno : -EIO;
            goto out;
        }
    }
    if (fchmod(mfd, 0555) < 0 ||
        fcntl(mfd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0) {
        r = -errno;
        goto out;
    }
    *out = mfd;
    mfd = -1;
out:
    if (mfd >= 0)
        close(mfd);
    close(src);
    return r;
}

#ifndef NSFS_MAGIC
#define NSFS_MAGIC 0x6e736673
#endif

/* Makes a mount namespace pinned on `pin` (an existing file) and enters it. The pin must be
 * made from an older namespace than the one it names, so the namespace is made by a short-lived
 * child and bound here, in the host's. */
static int pin_new_mount_ns(const char *pin)
{
    int c2p[2], p2c[2], r = 0, err = 0;
    char src[64];
    if (pipe2(c2p, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(p2c, O_CLOEXEC) < 0) {
        r = -errno;
        close(c2p[0]);
        close(c2p[1]);
        return r;
    }
    pid_t child = fork();
    if (child == 0) {
        /* A slave of the host's: host mounts still propagate to us, ours never to the host. */
        int e = unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0
                    ? errno
                    : 0;
        char b;
        (void)!write(c2p[1], &e, sizeof(e));
        (void)!read(p2c[0], &b, 1); /* stay until the parent has bound our namespace */
        _exit(0);
    }
    close(c2p[1]);
    close(p2c[0]);
    if (child < 0) {
        r = -errno;
        goto out;
    }
    if (read(c2p[0], &err, sizeof(err)) != (ssize_t)sizeof(err))
        err = EIO;
    if (err) {
        /* EINVAL: "/" is not a mount point (a chroot). Not coped with by binding "/" onto itself:
         * that bind would land on the enclosing mount, which a chroot can neither see nor make a
         * slave, and if it is shared the bind (with every mount below "/") would propagate to the
         * host and outlive us. */
        if (err == EINVAL)
            log_error("cannot make the daemon's mount namespace: / is not a mount point (in a "
                      "chroot?); enter the root with pivot_root instead, or make it a mount point "
                      "before chroot (mount --bind DIR DIR)");
        else
            log_error("cannot make the daemon's mount namespace: %s", strerror(err));
        r = -err;
        goto out;
    }
    snprintf(src, sizeof(src), "/proc/%d/ns/mnt", (int)child);
    if (mount(src, pin, NULL, MS_BIND, NULL) < 0) {
        /* On a shared mount the bind would propagate (into our own namespace too, a loop the
         * kernel refuses): pin on a private bind of the file itself instead. */
        if (errno != EINVAL || mount(pin, pin, NULL, MS_BIND, NULL) < 0 ||
            mount(NULL, pin, NULL, MS_PRIVATE, NULL) < 0 ||
            mount(src, pin, NULL, MS_BIND, NULL) < 0) {
            r = -errno;
            log_error("cannot pin the daemon's mount namespace on %s: %s", pin, strerror(errno));
            umount2(pin, MNT_DETACH);
            goto out;
        }
    }
out:
    if (child > 0) {
        (void)!write(p2c[1], "x", 1);
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    close(c2p[0]);
    close(p2c[1]);
    return r;
}

/* Enters the daemon's mount namespace, where sandbox disks are mounted: the one a previous daemon
 * pinned on <state_dir>/mnt.ns if it is still there (its disks with it), else a new one pinned
 * there. Must run before any thread exists (setns of a mount namespace needs an unshared file
 * system context). */
static int enter_mount_ns(struct server *srv)
{
    char pin[1200];
    struct statfs sf;
    int r, fd;
    snprintf(pin, sizeof(pin), "%s/mnt.ns", srv->state_dir);
    if ((srv->host_mntns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC)) < 0)
        return -errno;
    int found = statfs(pin, &sf) == 0 && sf.f_type == NSFS_MAGIC;
    if (!found) {
        /* A pin that no longer holds a namespace (a reboot), or none yet. */
        while (umount2(pin, MNT_DETACH) == 0)
            ;
        if ((fd = open(pin, O_CREAT | O_RDONLY | O_CLOEXEC, 0600)) < 0) {
            log_error("%s: %s", pin, strerror(errno));
            return -errno;
        }
        close(fd);
        if ((r = pin_new_mount_ns(pin)) < 0)
            return r;
    }
    if ((fd = open(pin, O_RDONLY | O_CLOEXEC)) < 0 || setns(fd, CLONE_NEWNS) < 0) {
        r = -errno;
        log_error("cannot enter the daemon's mount namespace pinned on %s: %s", pin,
                  strerror(errno));
        if (fd >= 0)
            close(fd);
        return r;
    }
    close(fd);
    if (found)
        log_info("entered the mount namespace a previous daemon left on %s", pin);
    return 0;
}

/* No sandbox is left running: the pinned namespace (and with it the disks mounted there) goes
 * when we exit. The pin lives in the host's namespace; we are multi-threaded now, which setns()
 * of a mount namespace refuses, so a child does it. */
static void release_mount_ns(struct server *srv)
{
    char pin[1200];
    if (srv->host_mntns < 0)
        return;
    snprintf(pin, sizeof(pin), "%s/mnt.ns", srv->state_dir);
    pid_t child = fork();
    if (child == 0) {
        if (setns(srv->host_mntns, CLONE_NEWNS) < 0)
            _exit(1);
        while (umount2(pin, MNT_DETACH) == 0) /* the pin, and its private bind if there is one */
            ;
        unlink(pin);
        _exit(0);
    }
    int status = 1;
    while (child > 0 && waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    if (child < 0 || status != 0)
        log_warn("cannot remove the mount namespace pin %s", pin);
}

static int preflight(void)
{
    if (geteuid() != 0) {
        log_error("warren serve must run as root: it maps user namespace ids to an unprivileged "
                  "range and creates cgroups. There is no unsandboxed mode.");
        return -EPERM;
    }
    FILE *f = fopen("/proc/sys/user/max_user_namespaces", "re");
    long max = 0;
    if (f) {
        if (fscanf(f, "%ld", &max) != 1)
            max = 0;
        fclose(f);
    }
    if (max <= 0) {
        log_error("user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0 or "
                  "missing); warren cannot isolate sandboxes without them");
        return -ENOSYS;
    }
    return 0;
}

static void on_loop_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void maybe_finish(struct server *srv)
{
    if (srv->http || srv->reg.count || srv->reg.pending)
        return;
    uv_walk(&srv->loop, on_loop_walk_close, NULL);
}

static void on_http_closed(void *arg)
{
    struct server *srv = arg;
    http_server_free(srv->http);
    srv->http = NULL;
    maybe_finish(srv);
}

static void on_registry_idle(struct registry *reg)
{
    struct server *srv = (struct server *)((char *)reg - offsetof(struct server, reg));
    maybe_finish(srv);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct server *srv = h->data;
    if (srv->api.stopping)
        return;
    srv->api.stopping = 1;
    if (srv->atropos)
        atropos_shutdown(srv->atropos);
    log_info("received %s: stopping (%s %u sandboxes)", strsignal(signum),
             srv->cfg.stop_sandboxes_on_exit ? "stopping" : "leaving running", srv->reg.count);
    uv_signal_stop(&srv->sigterm);
    uv_signal_stop(&srv->sigint);
    uv_timer_stop(&srv->disk_check);
    http_server_close(srv->http, on_http_closed, srv);
    /* A pull in flight is not waited for: the next daemon resumes it. */
    registry_client_cancel(srv->registry_client);
    pools_close(&srv->pools); /* before the registry lets its sandboxes go: it holds some */
    registry_shutdown(&srv->reg, on_registry_idle);
}

/* Every egress proxy decision goes to the audit log (the proxy also logs it). */
static void on_egress_decision(void *ud, const struct egress_decision *d)
{
    struct server *srv = ud;
    struct sandbox *sb = sandbox_find(&srv->reg, d->sandbox_id);
    json_t *fields =
        json_pack("{s:b, s:s, s:s, s:i, s:s, s:s}", "ok", 1, "method", d->method, "host", d->host,
                  "port", (int)d->port, "address", d->address, "reason", d->reason);
    audit_record(srv->audit, d->allowed ? "egress.allow" : "egress.deny", d->sandbox_id,
                 sb ? sb->labels : NULL, fields, NULL);
}

/* The http server's handler: the atropos slot protocol's routes when the daemon has slots, the
 * native API for everything else. */
static void server_handle(http_req_t *req, void *ctx)
{
    struct server *srv = ctx;
    if (srv->atropos && atropos_route(srv->atropos, req))
        return;
    api_handle(req, &srv->api);
}

static int server_start(struct server *srv)
{
    char abs[PATH_MAX];
    int r;
    if ((r = preflight()) < 0)
        return r;
    if ((r = util_mkdir_p(srv->cfg.state_dir, 0711)) < 0 || !realpath(srv->cfg.state_dir, abs)) {
        log_error("state dir %s: %s", srv->cfg.state_dir, strerror(r < 0 ? -r : errno));
        return r < 0 ? r : -errno;
    }
    if (strlen(abs) >= sizeof(srv->state_dir) - 128) {
        log_error("state dir path too long: %s", abs);
        return -ENAMETOOLONG;
    }
    memcpy(srv->state_dir, abs, strlen(abs) + 1);
    /* Sandboxes are cloned from this process: they must not inherit host supplementary groups
     * (setgroups is denied inside, so they could never drop them). */
    if (setgroups(0, NULL) < 0) {
        log_error("setgroups: %s", strerror(errno));
        return -errno;
    }
    /* The store first: a state dir this daemon must not run on is refused before anything in it
     * is touched. */
    if ((r = store_open(&srv->store, srv->state_dir)) < 0)
        return r;
    if ((r = enter_mount_ns(srv)) < 0)
        return r;
    /* Pool disks (and retired ones) of a previous daemon in this namespace: rebuilt, not kept. */
    snprintf(abs, sizeof(abs), "%s/disks", srv->state_dir);
    if ((r = disk_unmount_under(abs)) > 0)
        log_info("unmounted %d disks of the pool a previous daemon left", r);
    /* And its host template (remade by template_host_prepare()). */
    snprintf(abs, sizeof(abs), "%s/templates", srv->state_dir);
    disk_unmount_under(abs);
    if ((r = load_init_binary(&srv->init_fd)) < 0)
        return r;
    if ((r = seccomp_filter_build(&srv->seccomp)) < 0) {
        log_error("cannot build the seccomp filter: %s", strerror(-r));
        return r;
    }
    char cgroup_err[1024];
    if ((r = cgroup_manager_init(&srv->cgroups, "/sys/fs/cgroup", "/proc/self/cgroup", cgroup_err,
                                 sizeof(cgroup_err))) < 0) {
        log_error("%s", cgroup_err);
        return r;
    }
    log_info("cgroup %s: sandboxes under %s", cgroup_mode_name(srv->cgroups.mode),
             srv->cgroups.base[0][0] ? srv->cgroups.base[0] : srv->cgroups.base[1]);
    /* Refuse to run unaudited: a daemon that cannot open its audit log does not start. */
    snprintf(abs, sizeof(abs), "%s/audit", srv->state_dir);
    if ((r = audit_open(abs, srv->cfg.audit_max_bytes, srv->cfg.audit_keep, &srv->audit)) < 0) {
        log_error("cannot open the audit log in %s: %s", abs, strerror(-r));
        return r;
    }

    struct registry *reg = &srv->reg;
    reg->loop = &srv->loop;
    snprintf(reg->state_dir, sizeof(reg->state_dir), "%s", srv->state_dir);
    reg->seccomp = &srv->seccomp.prog;
    reg->cgroups = &srv->cgroups;
    reg->init_fd = srv->init_fd;
    reg->store = srv->store;
    reg->audit = srv->audit;
    reg->max_sandboxes = srv->cfg.limits.max_sandboxes;
    reg->stop_on_exit = srv->cfg.stop_sandboxes_on_exit;
    /* On cgroup v2 the daemon moved itself out of the cgroup it was given and enabled
     * controllers there: v2 would then let no process into that cgroup while sandboxes keep it
     * populated, so a supervisor could not start the daemon in it again. There, sandboxes go
     * with the daemon (systemd 254's DelegateSubgroup= would lift this). */
    if (srv->cgroups.mode == CGROUP_V2 && srv->cgroups.moved) {
        reg->die_with_daemon = reg->stop_on_exit = 1;
        log_info("cgroup v2 in a delegated cgroup: sandboxes stop with the daemon");
    }
    reg->defaults = srv->cfg.limits.defaults;
    reg->released_ttl_s = srv->cfg.released_ttl_s;
    if (gethostname(reg->node, sizeof(reg->node) - 1) < 0)
        snprintf(reg->node, sizeof(reg->node), "localhost");
    if ((r = registry_init(reg)) < 0)
        return r;
    volumes_recover(reg); /* before the sandboxes: a stopped one may need its volumes to start */
    registry_recover(reg);
    char msg[512];
    if ((r = disk_manager_new(srv->state_dir, &srv->disks, msg, sizeof(msg))) < 0) {
        log_error("cannot give sandboxes disks: %s", msg);
        return r;
    }
    reg->disks = srv->disks;
    reg->disk_overcommit = srv->cfg.disk_overcommit;
    reg->disk_reserve = srv->cfg.disk_reserve_mib >= 0 ? (int64_t)srv->cfg.disk_reserve_mib << 20
                                                       : default_disk_reserve(srv->state_dir);
    log_info("sandbox disks: overcommit %g, host reserve %lld MiB", reg->disk_overcommit,
             (long long)(reg->disk_reserve >> 20));
    uv_timer_init(&srv->loop, &srv->disk_check);
    srv->disk_check.data = srv;
    uv_timer_start(&srv->disk_check, on_disk_check, REGISTRY_DISK_CHECK_MS, REGISTRY_DISK_CHECK_MS);
    if ((reg->host_netns = netns_open_current()) < 0) {
        log_error("cannot open the daemon's network namespace: %s", strerror(-reg->host_netns));
        return reg->host_netns;
    }
    if (srv->cfg.egress_hosts) {
        if ((r = egress_hosts_load(srv->cfg.egress_hosts, &srv->egress_hosts)) < 0) {
            log_error("--egress-hosts %s: %s", srv->cfg.egress_hosts, strerror(-r));
            return r;
        }
        reg->egress_hosts = srv->egress_hosts;
    }
    reg->on_egress = on_egress_decision;
    reg->on_egress_ud = srv;
    if ((r = template_host_prepare(&srv->tmpl, srv->state_dir)) < 0) {
        log_error("cannot prepare the host template in %s/templates: %s", srv->state_dir,
                  strerror(-r));
        return r;
    }
    reg->tmpl = &srv->tmpl;
    if (srv->cfg.secrets_dir) {
        char err[512];
        if ((r = secrets_load(&srv->secrets, srv->cfg.secrets_dir, err, sizeof(err))) < 0) {
            log_error("%s", err);
            return r;
        }
        log_info("%zu secrets loaded from %s", srv->secrets.count, srv->cfg.secrets_dir);
    }
    reg->secrets = &srv->secrets;
    if (srv->cfg.slots > srv->cfg.limits.max_sandboxes) {
        log_error("--slots %u is more than --max-sandboxes %u", srv->cfg.slots,
                  srv->cfg.limits.max_sandboxes);
        return -EINVAL;
    }

    struct registry_options ro = {
        .insecure = srv->cfg.registries.insecure,
        .n_insecure = srv->cfg.registries.n_insecure,
        .mirrors = srv->cfg.registries.mirrors,
        .n_mirrors = srv->cfg.registries.n_mirrors,
        .auth_file = srv->cfg.registries.auth_file,
        .ca_file = srv->cfg.registries.ca_file,
        .timeout_s = 30,
    };
    if ((r = registry_client_new(&ro, &srv->registry_client, msg, sizeof(msg))) < 0 ||
        (r = templates_open(&srv->templates, &srv->loop, srv->state_dir, srv->registry_client,
                            srv->store, srv->cfg.pull_timeout_s, msg, sizeof(msg))) < 0) {
        log_error("images: %s", msg);
        return r;
    }
    build_recover(srv->state_dir); /* the contexts of builds a previous daemon ran */
    if ((r = pools_open(&srv->pools, &srv->reg, &srv->templates)) < 0) {
        log_error("cannot read the warm pools: %s", strerror(-r));
        return r;
    }

    struct http_limits limits = {.max_body_bytes = srv->cfg.limits.max_body_bytes};
    srv->api = (struct api_ctx){.reg = &srv->reg,
                                .templates = &srv->templates,
                                .pools = &srv->pools,
                                .audit = srv->audit,
                                .limits = &srv->cfg.limits,
                                .version = WARREN_VERSION};
    if ((r = http_server_new(&srv->http, &srv->loop, &limits, server_handle, srv)) < 0)
        return r;
    http_server_set_stream_hook(srv->http, api_wants_stream);
    if ((r = http_server_listen(srv->http, srv->cfg.listen)) < 0) {
        log_error("cannot listen on %s: %s", srv->cfg.listen, strerror(-r));
        return r;
    }
    /* The slots' sandboxes are created in the background (once listening, so that a failed
     * start-up leaves no creation behind): requests are served meanwhile, and a slot's
     * requests wait for its sandbox. */
    if (srv->cfg.slots > 0 && (r = atropos_new(&srv->reg, srv->audit, &srv->cfg.limits,
                                               srv->cfg.slots, &srv->atropos)) < 0)
        return r;
    uv_signal_init(&srv->loop, &srv->sigterm);
    uv_signal_init(&srv->loop, &srv->sigint);
    srv->sigterm.data = srv->sigint.data = srv;
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    /* Two disks of the default size wait ready: creations rarely come faster than one every
     * couple of milliseconds, which is how long the pool takes to make one. */
    registry_start_disk_pool(&srv->reg, 2);
    log_info("warren %s listening on %s, state in %s", WARREN_VERSION, srv->cfg.listen,
             srv->state_dir);
    return 0;
}

int server_run(const struct server_config *cfg)
{
    struct server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return 1;
    srv->cfg = *cfg;
    srv->init_fd = -1;
    srv->host_mntns = -1;
    srv->reg.host_netns = -1;
    signal(SIGPIPE, SIG_IGN);
    /* Streaming moves many short-lived buffers of a few hundred KiB; from the heap they are
     * reused warm instead of being mmap'd and faulted in anew each time. Larger ones (a big exec
     * result) still get their own mapping, which goes back to the system when freed, and at
     * most a few MiB of free heap are kept. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 8 << 20);
    /* Sandbox creation and teardown block in the thread pool; allow a few in parallel. */
    setenv("UV_THREADPOOL_SIZE", "8", 0);
    uv_loop_init(&srv->loop);

    int r = server_start(srv);
    if (r == 0)
        uv_run(&srv->loop, UV_RUN_DEFAULT);
    else
        pools_close(&srv->pools);
    if (r != 0 && srv->http) {
        http_server_close(srv->http, on_http_closed, srv);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
    }
    uv_walk(&srv->loop, on_loop_walk_close, NULL);
    uv_run(&srv->loop, UV_RUN_DEFAULT);
    uv_loop_close(&srv->loop);

    atropos_free(srv->atropos);
    /* Sandboxes left running keep their disks in our mount namespace for the next daemon. */
    if (r == 0 ? srv->reg.left_running == 0 : srv->reg.count == 0)
        release_mount_ns(srv);
    if (srv->host_mntns >= 0)
        close(srv->host_mntns);
    registry_free(&srv->reg);
    templates_close(&srv->templates);
    registry_client_free(srv->registry_client);
    secrets_free(&srv->secrets);
    cgroup_manager_cleanup(&srv->cgroups);
    disk_manager_free(srv->disks);
    egress_hosts_free(srv->egress_hosts);
    if (srv->reg.host_netns >= 0)
        close(srv->reg.host_netns);
    store_close(srv->store);
    audit_close(srv->audit);
    seccomp_filter_free(&srv->seccomp);
    if (srv->init_fd >= 0)
        close(srv->init_fd);
    free(srv);
    if (r == 0)
        log_info("stopped");
    return r == 0 ? 0 : 1;
}
