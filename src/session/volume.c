/*
 * volume — named volumes. See volume.h.
 */
#include "session/volume.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/json.h"
#include "core/log.h"
#include "core/util.h"
#include "sandbox/disk.h"
#include "sandbox/idmap.h"
#include "sandbox/rootfs.h"
#include "sandbox/spawn.h"
#include "session/sandbox_internal.h"

#define PATHLEN 1400

/* What a volume's file system holds: its users' files, owned by the sandboxes' root (id 0). */
static const char *const volume_dirs[] = {"data", NULL};

static void vol_path(const struct registry *reg, const char *name, const char *suffix, char *out)
{
    snprintf(out, PATHLEN, "%s/volumes/%s%s", reg->state_dir, name, suffix);
}

static void stage_path(const struct sandbox *sb, int i, char *out)
{
    if (i < 0)
        snprintf(out, PATHLEN, "%s/vmounts/%s", sb->reg->state_dir, sb->id);
    else
        snprintf(out, PATHLEN, "%s/vmounts/%s/%d", sb->reg->state_dir, sb->id, i);
}

static int is_mountpoint(const char *dir)
{
    char parent[PATHLEN + 4];
    struct stat a, b;
    snprintf(parent, sizeof(parent), "%s/..", dir);
    return stat(dir, &a) == 0 && stat(parent, &b) == 0 && a.st_dev != b.st_dev;
}

static void list_add(struct registry *reg, struct volume *vol)
{
    vol->next = reg->volumes;
    reg->volumes = vol;
}

static void list_remove(struct registry *reg, struct volume *vol)
{
    for (struct volume **p = &reg->volumes; *p; p = &(*p)->next)
        if (*p == vol) {
            *p = vol->next;
            return;
        }
}

static struct volume *find_any(struct registry *reg, const char *name)
{
    for (struct volume *v = reg->volumes; v; v = v->next)
        if (!strcmp(v->name, name))
            return v;
    return NULL;
}

struct volume *volume_find(struct registry *reg, const char *name)
{
    struct volume *v = find_any(reg, name);
    return v && v->ready && !v->deleting ? v : NULL;
}

static void volume_save(const struct registry *reg, const struct volume *vol)
{
    json_t *rec = json_pack("{s:s, s:I, s:f}", "name", vol->name, "size_mib",
                            (json_int_t)vol->size_mib, "created_at_s", vol->created_at);
    char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    if (!text || store_put(reg->store, STORE_VOLUME, vol->name, text) < 0)
        log_error("volume %s: cannot write its record", vol->name);
    free(text);
    json_decref(rec);
}

/* Unmounts and deletes a volume's image and directory. Missing pieces are not errors. */
static int remove_volume_files(const struct registry *reg, const char *name)
{
    char dir[PATHLEN], image[PATHLEN];
    vol_path(reg, name, "", dir);
    vol_path(reg, name, ".img", image);
    int r = disk_destroy(image, dir);
    if (rmdir(dir) < 0 && errno != ENOENT && !r)
        r = -errno;
    return r;
}

/* ---- recovery -------------------------------------------------------------------------------- */

static void recover_record(const char *id, const char *text, void *arg)
{
    struct registry *reg = arg;
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    json_t *size = j ? json_object_get(j, "size_mib") : NULL;
    struct volume *vol = NULL;
    char dir[PATHLEN], image[PATHLEN];
    int r = 0;
    if (!json_is_integer(size) || strlen(id) >= SANDBOX_NAME_MAX || strchr(id, '/') ||
        !(vol = calloc(1, sizeof(*vol)))) {
        log_error("recovery: volume %s: its record cannot be read: left alone", id);
        json_decref(j);
        return;
    }
    snprintf(vol->name, sizeof(vol->name), "%s", id);
    vol->size_mib = (unsigned long long)json_integer_value(size);
    vol->created_at = json_number_value(json_object_get(j, "created_at_s"));
    vol->ready = 1;
    json_decref(j);
    list_add(reg, vol);
    vol_path(reg, id, "", dir);
    vol_path(reg, id, ".img", image);
    if (is_mountpoint(dir))
        return; /* the namespace that held it outlived the previous daemon */
    if ((mkdir(dir, 0700) < 0 && errno != EEXIST) || (r = disk_mount(image, dir)) < 0) {
        r = r < 0 ? r : -errno;
        log_error("recovery: volume %s cannot be mounted (%s): %s; sandboxes using it cannot "
                  "start",
                  id, image, strerror(-r));
    }
}

void volumes_recover(struct registry *reg)
{
    char dir[PATHLEN];
    /* Staging binds of a creation or a start the previous daemon did not finish. */
    snprintf(dir, sizeof(dir), "%s/vmounts", reg->state_dir);
    disk_unmount_under(dir);
    util_remove_tree(dir);
    snprintf(dir, sizeof(dir), "%s/volumes", reg->state_dir);
    if (util_mkdir_p(dir, 0700) < 0) {
        log_error("volumes: cannot make %s: %s", dir, strerror(errno));
        return;
    }
    store_list(reg->store, STORE_VOLUME, recover_record, reg);
    /* What the store does not know: a creation a crash interrupted (the record is written when
     * the volume is ready), or a deletion (the record goes first). */
    DIR *d = opendir(dir);
    struct dirent *de;
    unsigned n = 0;
    while (d && (de = readdir(d))) {
        char name[SANDBOX_NAME_MAX + 8];
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len >= sizeof(name))
            continue;
        memcpy(name, de->d_name, len + 1);
        if (len > 4 && !strcmp(name + len - 4, ".img"))
            name[len - 4] = '\0';
        if (find_any(reg, name))
            continue;
        log_info("recovery: removing volume %s left half-made by a previous daemon", name);
        remove_volume_files(reg, name);
    }
    if (d)
        closedir(d);
    for (struct volume *v = reg->volumes; v; v = v->next)
        n++;
    log_info("recovery: %u volumes", n);
}

void volumes_free(struct registry *reg)
{
    while (reg->volumes) {
        struct volume *v = reg->volumes;
        reg->volumes = v->next;
        free(v);
    }
}

/* ---- create and delete ----------------------------------------------------------------------- */

struct volume_op {
    uv_work_t work;
    struct registry *reg;
    struct volume *vol;
    volume_create_cb create_cb;
    volume_delete_cb delete_cb;
    void *arg;
    int err;
    const char *what;
};

static void create_work(uv_work_t *w)
{
    struct volume_op *op = w->data;
    char dir[PATHLEN], image[PATHLEN];
    vol_path(op->reg, op->vol->name, "", dir);
    vol_path(op->reg, op->vol->name, ".img", image);
    op->what = "volume directory";
    if (mkdir(dir, 0700) < 0) {
        op->err = -errno;
        return;
    }
    op->err = disk_create(op->reg->disks, image, dir, op->vol->size_mib, volume_dirs, 0, &op->what);
    if (op->err < 0) {
        rmdir(dir);
        return;
    }
    /* As /tmp: whichever user a sandbox (or its image) runs commands as can work in it, as in a
     * sandbox's own /workspace. */
    char data[PATHLEN];
    vol_path(op->reg, op->vol->name, "/data", data);
    op->what = "volume directory mode";
    if (chmod(data, 01777) < 0) {
        op->err = -errno;
        remove_volume_files(op->reg, op->vol->name);
    }
}

static void create_done(uv_work_t *w, int status)
{
    struct volume_op *op = w->data;
    struct registry *reg = op->reg;
    struct volume *vol = op->vol;
    char msg[512];
    reg->pending--;
    if (status < 0 && !op->err)
        op->err = status;
    if (op->err < 0) {
        snprintf(msg, sizeof(msg), "volume setup failed: %s: %s", op->what, strerror(-op->err));
        log_error("volume %s: %s", vol->name, msg);
        list_remove(reg, vol);
        free(vol);
        op->create_cb(NULL, SESSION_ERR_SETUP, msg, op->arg);
    } else {
        vol->ready = 1;
        volume_save(reg, vol);
        log_info("volume %s created (%llu MiB)", vol->name, vol->size_mib);
        op->create_cb(vol, SESSION_OK, NULL, op->arg);
    }
    free(op);
    registry_check_idle(reg);
}

enum session_err volume_create(struct registry *reg, const char *name, unsigned long long mib,
                               volume_create_cb cb, void *arg, char *msg, size_t msglen)
{
    if (reg->idle_cb) {
        snprintf(msg, msglen, "the daemon is shutting down");
        return SESSION_ERR_SHUTTING_DOWN;
    }
    if (find_any(reg, name)) {
        snprintf(msg, msglen, "a volume named '%s' already exists", name);
        return SESSION_ERR_NAME_TAKEN;
    }
    if (registry_disk_room(reg, mib, msg, msglen) < 0)
        return SESSION_ERR_HOST_DISK;
    struct volume *vol = calloc(1, sizeof(*vol));
    struct volume_op *op = calloc(1, sizeof(*op));
    if (!vol || !op) {
        free(vol);
        free(op);
        snprintf(msg, msglen, "out of memory");
        return SESSION_ERR_NOMEM;
    }
    snprintf(vol->name, sizeof(vol->name), "%s", name);
    vol->size_mib = mib;
    vol->created_at = util_now();
    list_add(reg, vol); /* not ready: its name is taken, it cannot be attached yet */
    *op = (struct volume_op){.reg = reg, .vol = vol, .create_cb = cb, .arg = arg};
    op->work.data = op;
    reg->pending++;
    uv_queue_work(reg->loop, &op->work, create_work, create_done);
    return SESSION_OK;
}

size_t volume_attachments(struct registry *reg, const char *name, struct volume_attachment *out,
                          size_t cap)
{
    size_t n = 0, i;
    json_t *v;
    for (struct sandbox *sb = reg->head; sb; sb = sb->next)
        json_array_foreach(sb->volumes, i, v)
        {
            if (strcmp(json_string_value(json_object_get(v, "name")) ?: "", name) != 0)
                continue;
            if (n < cap)
                out[n] =
                    (struct volume_attachment){sb, json_string_value(json_object_get(v, "path")),
                                               json_is_true(json_object_get(v, "read_only"))};
            n++;
        }
    return n;
}

long long volume_used_bytes(const struct registry *reg, const struct volume *vol)
{
    char dir[PATHLEN];
    struct statvfs sv;
    int64_t f, ballast;
    vol_path(reg, vol->name, "", dir);
    if (statvfs(dir, &sv) < 0)
        return -errno;
    int r = disk_space(dir, &f, &ballast);
    if (r < 0)
        return r;
    long long used = (long long)((sv.f_blocks - sv.f_bfree) * sv.f_frsize) - (long long)ballast;
    return used < 0 ? 0 : used;
}

static void delete_work(uv_work_t *w)
{
    struct volume_op *op = w->data;
    op->err = remove_volume_files(op->reg, op->vol->name);
}

static void delete_done(uv_work_t *w, int status)
{
    struct volume_op *op = w->data;
    struct registry *reg = op->reg;
    (void)status;
    reg->pending--;
    if (op->err < 0)
        log_warn("volume %s: removing its files: %s", op->vol->name, strerror(-op->err));
    else
        log_info("volume %s deleted", op->vol->name);
    list_remove(reg, op->vol);
    free(op->vol);
    if (op->delete_cb)
        op->delete_cb(op->arg);
    free(op);
    registry_check_idle(reg);
}

int volume_delete(struct registry *reg, const char *name, volume_delete_cb cb, void *arg)
{
    struct volume *vol = volume_find(reg, name);
    if (!vol)
        return -ENOENT;
    if (volume_attachments(reg, name, NULL, 0) > 0)
        return -EBUSY;
    struct volume_op *op = calloc(1, sizeof(*op));
    if (!op)
        return -ENOMEM;
    *op = (struct volume_op){.reg = reg, .vol = vol, .delete_cb = cb, .arg = arg};
    op->work.data = op;
    /* Forgotten by the store first: a crash from here on leaves files the next daemon removes. */
    vol->deleting = 1;
    store_delete(reg->store, STORE_VOLUME, name);
    reg->pending++;
    uv_queue_work(reg->loop, &op->work, delete_work, delete_done);
    return 0;
}

/* ---- sandbox specs --------------------------------------------------------------------------- */

/* System directories a volume may neither replace nor hide by covering an ancestor. */
static const char *const system_dirs[] = {"/bin",   "/sbin",   "/lib", "/lib32",
                                          "/lib64", "/libx32", "/usr", "/etc",
                                          "/proc",  "/sys",    "/dev", "/run/warren"};
/* Trees a volume may not be mounted anywhere in: the kernel's and warren's. */
static const char *const forbidden_trees[] = {"/proc", "/sys", "/dev", "/run/warren"};

static int under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return !strncmp(path, dir, n) && (path[n] == '/' || path[n] == '\0');
}

static int valid_path(const char *p, char *err, size_t errlen)
{
    size_t n = strlen(p);
    if (p[0] != '/' || n >= VOLUME_PATH_MAX) {
        snprintf(err, errlen, "volume path '%s' must be absolute and shorter than %d bytes", p,
                 VOLUME_PATH_MAX);
        return -EINVAL;
    }
    if (n == 1) {
        snprintf(err, errlen, "volume path '/' would replace the sandbox's root");
        return -EINVAL;
    }
    for (const char *c = p; *c; c++) {
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            snprintf(err, errlen, "volume path '%s' has a control character", p);
            return -EINVAL;
        }
        if (*c != '/')
            continue;
        /* Each component: not empty, not ".", not ".." (and so no trailing "/"). */
        const char *s = c + 1;
        size_t len = strcspn(s, "/");
        if (len == 0 || (len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.')) {
            snprintf(err, errlen,
                     "volume path '%s' is not normalized (no empty, '.' or '..' components, no "
                     "trailing '/')",
                     p);
            return -EINVAL;
        }
    }
    for (size_t i = 0; i < sizeof(forbidden_trees) / sizeof(forbidden_trees[0]); i++)
        if (under(p, forbidden_trees[i])) {
            snprintf(err, errlen, "volume path '%s' is under %s", p, forbidden_trees[i]);
            return -EINVAL;
        }
    for (size_t i = 0; i < sizeof(system_dirs) / sizeof(system_dirs[0]); i++)
        if (under(system_dirs[i], p)) {
            snprintf(err, errlen, "volume path '%s' would cover the system directory %s", p,
                     system_dirs[i]);
            return -EINVAL;
        }
    return 0;
}

static int by_path(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    return strcmp(json_string_value(json_object_get(x, "path")),
                  json_string_value(json_object_get(y, "path")));
}

static int add_entry(struct registry *reg, json_t *list, const char *name, const char *path,
                     int read_only, char *err, size_t errlen)
{
    size_t i;
    json_t *v;
    int r;
    if ((r = valid_path(path, err, errlen)) < 0)
        return r;
    json_array_foreach(list, i, v)
    {
        if (!strcmp(json_string_value(json_object_get(v, "path")), path)) {
            snprintf(err, errlen, "two volumes at '%s'", path);
            return -EINVAL;
        }
    }
    if (json_array_size(list) >= VOLUME_MAX_PER_SANDBOX) {
        snprintf(err, errlen, "at most %d volumes per sandbox", VOLUME_MAX_PER_SANDBOX);
        return -EINVAL;
    }
    if (!volume_find(reg, name)) {
        snprintf(err, errlen, "volume '%s' not found", name);
        return -ENOENT;
    }
    json_t *e = json_pack("{s:s, s:s, s:b}", "name", name, "path", path, "read_only", read_only);
    return e && json_array_append_new(list, e) == 0 ? 0 : -ENOMEM;
}

int volume_parse_spec(struct registry *reg, json_t *volumes, json_t *workspace, json_t **out,
                      char *err, size_t errlen)
{
    static const char *const keys[] = {"name", "path", "read_only", NULL};
    json_t *list = json_array(), *v;
    size_t i;
    int r = 0;
    *out = NULL;
    if (!list)
        return -ENOMEM;
    if (volumes && !json_is_null(volumes) && !json_is_array(volumes)) {
        snprintf(err, errlen, "'volumes' must be an array of {name, path, read_only}");
        r = -EINVAL;
        goto out;
    }
    if (workspace && !json_is_null(workspace) &&
        (!json_is_string(workspace) || (r = add_entry(reg, list, json_string_value(workspace),
                                                      "/workspace", 0, err, errlen)) < 0)) {
        if (!r)
            snprintf(err, errlen, "'workspace' must be a volume name");
        r = r ? r : -EINVAL;
        goto out;
    }
    json_array_foreach(volumes, i, v)
    {
        char field[32];
        const char *name = NULL, *path = NULL;
        json_t *ro;
        snprintf(field, sizeof(field), "volumes[%zu]", i);
        if (!json_is_object(v)) {
            snprintf(err, errlen, "'%s' must be an object {name, path, read_only}", field);
            r = -EINVAL;
            goto out;
        }
        if ((r = json_check_keys(v, keys, field, err, errlen)) < 0 ||
            (r = json_opt_string(v, "name", "name", &name, err, errlen)) < 0 ||
            (r = json_opt_string(v, "path", "path", &path, err, errlen)) < 0)
            goto out;
        ro = json_object_get(v, "read_only");
        if (!name || !path || (ro && !json_is_boolean(ro) && !json_is_null(ro))) {
            snprintf(err, errlen,
                     "'%s' needs a 'name' and a 'path' (strings) and an optional "
                     "'read_only' (boolean)",
                     field);
            r = -EINVAL;
            goto out;
        }
        if ((r = add_entry(reg, list, name, path, json_is_true(ro), err, errlen)) < 0)
            goto out;
    }
    if (json_array_size(list) == 0)
        goto out;
    /* Parents first: a volume inside another one's path is mounted on top of it. */
    json_t *sorted[VOLUME_MAX_PER_SANDBOX];
    size_t n = json_array_size(list);
    for (i = 0; i < n; i++)
        sorted[i] = json_incref(json_array_get(list, i));
    qsort(sorted, n, sizeof(sorted[0]), by_path);
    json_array_clear(list);
    for (i = 0; i < n; i++)
        json_array_append_new(list, sorted[i]);
    *out = list;
    return 0;
out:
    json_decref(list);
    return r;
}

int volume_check_exist(struct registry *reg, json_t *volumes, char *err, size_t errlen)
{
    size_t i;
    json_t *v;
    json_array_foreach(volumes, i, v)
    {
        const char *name = json_string_value(json_object_get(v, "name")) ?: "";
        if (!volume_find(reg, name)) {
            snprintf(err, errlen, "volume '%s' not found", name);
            return -ENOENT;
        }
    }
    return 0;
}

/* ---- attaching ------------------------------------------------------------------------------- */

void volume_unstage(const struct sandbox *sb)
{
    char p[PATHLEN];
    size_t n = json_array_size(sb->volumes);
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        stage_path(sb, (int)i, p);
        /* Lazily: the clone's copy is its own, and nothing else uses the staging bind. */
        (void)umount2(p, MNT_DETACH);
        (void)rmdir(p);
    }
    stage_path(sb, -1, p);
    (void)rmdir(p);
}

int volume_stage(const struct sandbox *sb, const char **what)
{
    char dir[PATHLEN], src[PATHLEN], p[PATHLEN];
    size_t i, n = json_array_size(sb->volumes);
    int fd = -1, r;
    if (n == 0)
        return 0;
    volume_unstage(sb); /* left by an attempt that failed before unstaging */
    *what = "volume staging directory";
    stage_path(sb, -1, dir);
    if ((r = util_mkdir_p(dir, 0700)) < 0)
        return r;
    *what = "user namespace for the sandbox's volumes";
    if ((r = rootfs_userns(sandbox_host_uid(sb), SANDBOX_UID_RANGE, &fd)) < 0)
        goto fail;
    for (i = 0; i < n; i++) {
        json_t *v = json_array_get(sb->volumes, i);
        const char *name = json_string_value(json_object_get(v, "name"));
        vol_path(sb->reg, name, "/data", src);
        stage_path(sb, (int)i, p);
        *what = "volume staging directory";
        if (mkdir(p, 0700) < 0) {
            r = -errno;
            goto fail;
        }
        /* The volume's `data` exists only on its mounted file system: an unmounted volume fails
         * here, and its empty mount point is never bound instead. */
        if ((r = idmap_bind(src, p, fd, json_is_true(json_object_get(v, "read_only")), what)) < 0) {
            log_error("sandbox %s: volume %s (%s): %s: %s", sb->id, name, src, *what, strerror(-r));
            *what = "volume (is it mounted? see the log)";
            goto fail;
        }
    }
    close(fd);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    volume_unstage(sb);
    return r;
}

int volume_plan(const struct sandbox *sb, struct spawn_config *cfg)
{
    char p[PATHLEN];
    size_t i;
    json_t *v;
    int r;
    json_array_foreach(sb->volumes, i, v)
    {
        stage_path(sb, (int)i, p);
        const char *path = json_string_value(json_object_get(v, "path"));
        int ro = json_is_true(json_object_get(v, "read_only"));
        if ((r = spawn_config_add(cfg, ro ? MOP_BIND_RO : MOP_BIND_RW, p, path + 1, 0, 0, NULL)) <
            0)
            return r;
        /* The staging directory is host root's, 0700. */
        cfg->mounts[cfg->n_mounts - 1].open_early = 1;
    }
    return 0;
}

/* ---- host disk ------------------------------------------------------------------------------- */

void volumes_disk_usage(const struct registry *reg, int64_t *promised, int64_t *used)
{
    char image[PATHLEN];
    for (const struct volume *v = reg->volumes; v; v = v->next) {
        if (v->deleting)
            continue;
        if (used) {
            vol_path(reg, v->name, ".img", image);
            *used += disk_image_bytes(image);
        }
        *promised += (int64_t)(v->size_mib << 20);
    }
}

void volumes_foreach_mount(const struct registry *reg, void (*fn)(const char *dir, void *arg),
                           void *arg)
{
    char dir[PATHLEN];
    for (const struct volume *v = reg->volumes; v; v = v->next) {
        if (!v->ready || v->deleting)
            continue;
        vol_path(reg, v->name, "", dir);
        fn(dir, arg);
    }
}
