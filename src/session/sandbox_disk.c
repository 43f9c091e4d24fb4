/*
 * sandbox_disk — the host disk under the sandboxes' thin-provisioned disks: what is promised and
 * used (registry_disk_usage), admission of a new disk (registry_disk_room), and the ballasts
 * that keep the sandboxes' writes within the host's free space (registry_check_disk). See
 * sandbox.h and sandbox/disk.h.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "sandbox/disk.h"
#include "session/sandbox.h"
#include "session/sandbox_internal.h"
#include "session/volume.h"

int registry_disk_usage(struct registry *reg, struct registry_disk_usage *out)
{
    char dir[1100], image[1200];
    snprintf(dir, sizeof(dir), "%s/sandboxes", reg->state_dir);
    int r = disk_host_free(dir, &out->free_bytes, NULL);
    if (r < 0)
        return r;
    out->used_bytes = out->promised_bytes = 0;
    for (struct sandbox *sb = reg->head; sb; sb = sb->next) {
        if (sb->state == SB_DELETING) /* its disk is retired already */
            continue;
        sandbox_image(reg, sb->id, image, sizeof(image));
        out->used_bytes += disk_image_bytes(image);
        out->promised_bytes += (int64_t)(sb->res.disk_mib << 20);
    }
    /* Volumes are thin-provisioned disks too, on the same host file system. */
    volumes_disk_usage(reg, &out->promised_bytes, &out->used_bytes);
    return 0;
}

/* Admission: what sandboxes are promised (with this one and the pool's ready disks) may be
 * disk_overcommit times what the host has for them, free or already theirs; sandboxes rarely
 * fill their disks, and registry_check_disk() keeps the host from filling when they do. Below
 * the reserve nothing is admitted: the sandboxes that exist cannot write either. */
int registry_disk_room(struct registry *reg, unsigned long long mib, char *msg, size_t msglen)
{
    struct registry_disk_usage u;
    int r = registry_disk_usage(reg, &u);
    if (r < 0) {
        snprintf(msg, msglen, "cannot measure the host disk: %s/sandboxes: %s", reg->state_dir,
                 strerror(-r));
        return r;
    }
    int64_t promised = u.promised_bytes + disk_pool_claims(reg->disks) + (int64_t)(mib << 20);
    double room = reg->disk_overcommit * (double)(u.free_bytes + u.used_bytes);
    if (u.free_bytes < reg->disk_reserve) {
        snprintf(msg, msglen,
                 "not enough host disk: %lld MiB free, below the reserve of %lld MiB "
                 "(--disk-reserve)",
                 (long long)(u.free_bytes >> 20), (long long)(reg->disk_reserve >> 20));
        return -ENOSPC;
    }
    if ((double)promised > room) {
        snprintf(msg, msglen,
                 "not enough host disk for disk_mib %llu: %lld MiB would be promised to "
                 "sandboxes, more than %g (--disk-overcommit) x (%lld MiB free + %lld MiB used)",
                 mib, (long long)(promised >> 20), reg->disk_overcommit,
                 (long long)(u.free_bytes >> 20), (long long)(u.used_bytes >> 20));
        return -ENOSPC;
    }
    return 0;
}

/* A ballast shrinks at once when it must grow, but grows back only by more than this: the
 * sandboxes' free space moves a little on every write. */
#define BALLAST_SLACK (4ll << 20)

/* One pass of registry_check_disk() over a disk (a sandbox's or a volume's) mounted on `dir`:
 * first summing what the disks may take from the host (`total`), then setting each ballast. */
struct ballast_pass {
    int set; /* 0: summing; 1: setting */
    int64_t room, total;
    int ballasted;
};

static void ballast_disk(const char *dir, void *arg)
{
    struct ballast_pass *p = arg;
    int64_t f, b;
    if (disk_space(dir, &f, &b) < 0)
        return;
    /* A disk may take from the host at most what its file system has free (and its ballast
     * would give back). */
    int64_t cap = f + b, want = 0;
    if (!p->set) {
        p->total += cap;
        return;
    }
    if (p->total > p->room)
        want =
            p->room <= 0 ? cap : cap - (int64_t)((double)p->room * (double)cap / (double)p->total);
    if (want > b || b - want > BALLAST_SLACK) {
        int r = disk_ballast_set(dir, want);
        if (r < 0)
            log_warn("%s: cannot set the disk's ballast: %s", dir, strerror(-r));
        else
            b = want;
    }
    p->ballasted |= b > 0;
}

static void ballast_all(struct registry *reg, struct ballast_pass *p)
{
    char dir[1200];
    for (struct sandbox *sb = reg->head; sb; sb = sb->next) {
        sandbox_dir(sb, dir, sizeof(dir), NULL);
        if (sb->state != SB_DELETING)
            ballast_disk(dir, p);
    }
    volumes_foreach_mount(reg, ballast_disk, p);
}

void registry_check_disk(struct registry *reg)
{
    char dir[1200];
    int64_t free_bytes, promised = 0;
    snprintf(dir, sizeof(dir), "%s/sandboxes", reg->state_dir);
    if (disk_host_free(dir, &free_bytes, NULL) < 0)
        return;
    int64_t room = free_bytes - reg->disk_reserve;
    for (struct sandbox *sb = reg->head; sb; sb = sb->next)
        promised += (int64_t)(sb->res.disk_mib << 20);
    volumes_disk_usage(reg, &promised, NULL);
    if (!reg->disk_ballasted && room >= promised)
        return; /* every disk may fill up: the host still keeps its reserve */
    struct ballast_pass pass = {0, room, 0, 0};
    ballast_all(reg, &pass);
    pass.set = 1;
    ballast_all(reg, &pass);
    int64_t total = pass.total;
    int ballasted = pass.ballasted;
    if (ballasted != reg->disk_ballasted) {
        if (ballasted)
            log_warn("host disk: %lld MiB free (reserve %lld MiB), sandboxes could write %lld "
                     "MiB: their free space is cut to fit",
                     (long long)(free_bytes >> 20), (long long)(reg->disk_reserve >> 20),
                     (long long)(total >> 20));
        else
            log_info("host disk: %lld MiB free again, sandboxes have all their free space back",
                     (long long)(free_bytes >> 20));
    }
    reg->disk_ballasted = ballasted;
}
