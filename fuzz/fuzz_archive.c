/*
 * fuzz_archive — archive extraction (PUT .../archive: fs_archive_extract() in sandbox/fs_archive.c,
 * libarchive reading tar or tar.gz) into a destination inside a sandbox root.
 *
 * The root is a scratch tree owned by an unprivileged "sandbox root" uid; the destination holds
 * symlinks that lead out of it (to the root, to "/", to the host path of a world-writable
 * directory next to the root), so that an entry written through a symlink shows.
 *
 * Input: one option byte, then the archive.
 *   option & 3     destination: /workspace, workspace/dir/, /workspace/up/etc (through a symlink
 *                  to the root: the root's /etc), /workspace/dir/../dir
 *   option & 12    the archive is read in pieces of: 64 KiB, 1, 7 or 512 bytes
 *   option & 16    small limits (4 KiB of contents, 8 entries)
 * Oracle, besides the sanitizers: nothing changes outside the destination (neither in the root
 * nor outside it), and everything in the destination belongs to the sandbox's root user and has
 * no setuid, setgid or sticky bit. The tree is rebuilt for every input.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/util.h"
#include "harness.h"
#include "sandbox/fs.h"

#define TUID 1048576u
#define TGID 1048576u

static char base[64], root_dir[128], outside_dir[128];
static buf_t before;

static void build_root(void)
{
    util_remove_tree(root_dir);
    fz_put_dir(base, "root", 0755, TUID);
    fz_put_dir(base, "root/etc", 0755, TUID);
    fz_put_file(base, "root/etc/shadow", "inside shadow\n", 0640, TUID);
    fz_put_dir(base, "root/tmp", 01777, TUID);
    fz_put_dir(base, "root/workspace", 0755, TUID);
    fz_put_file(base, "root/workspace/existing.txt", "old\n", 0644, TUID);
    fz_put_dir(base, "root/workspace/dir", 0755, TUID);
    fz_put_link(base, "root/workspace/up", "..", TUID);
    fz_put_link(base, "root/workspace/slash", "/", TUID);
    fz_put_link(base, "root/workspace/host", outside_dir, TUID);
    fz_put_link(base, "root/workspace/dir/out", "../..", TUID);
}

/* Everything under `dir` except the subtree `skip` (names, types, sizes, modes, owners, mtimes,
 * link targets). */
static void snapshot(const char *dir, const char *skip, buf_t *out)
{
    DIR *d = opendir(dir);
    if (!d)
        fz_fail("opendir %s: %s", dir, strerror(errno));
    struct dirent *e;
    char p[4096], link[256];
    while ((e = readdir(d))) {
        struct stat sb;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (strcmp(p, skip) == 0)
            continue;
        if (lstat(p, &sb) < 0)
            fz_fail("lstat %s: %s", p, strerror(errno));
        ssize_t n = S_ISLNK(sb.st_mode) ? readlink(p, link, sizeof(link) - 1) : 0;
        link[n > 0 ? n : 0] = '\0';
        buf_appendf(out, "%s %o %u %lld %lld.%09ld %s\n", p, (unsigned)sb.st_mode,
                    (unsigned)sb.st_uid, (long long)sb.st_size, (long long)sb.st_mtim.tv_sec,
                    sb.st_mtim.tv_nsec, link);
        if (S_ISDIR(sb.st_mode))
            snapshot(p, skip, out);
    }
    closedir(d);
}

/* Everything the extraction made is the sandbox root's, without special mode bits. */
static void check_dest(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return; /* a directory the archive made unreadable (mode 0) */
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        struct stat sb;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (lstat(p, &sb) < 0)
            fz_fail("lstat %s: %s", p, strerror(errno));
        if (sb.st_uid != TUID || sb.st_gid != TGID)
            fz_fail("%s belongs to %u:%u", p, (unsigned)sb.st_uid, (unsigned)sb.st_gid);
        if (!S_ISLNK(sb.st_mode) && (sb.st_mode & 07000))
            fz_fail("%s has mode %04o", p, (unsigned)sb.st_mode & 07777);
        if (S_ISDIR(sb.st_mode))
            check_dest(p);
    }
    closedir(d);
}

struct reader {
    const uint8_t *data;
    size_t len, off, piece;
};

static ssize_t read_piece(void *buf, size_t len, void *arg)
{
    struct reader *r = arg;
    size_t n = r->len - r->off;
    if (n > len)
        n = len;
    if (n > r->piece)
        n = r->piece;
    memcpy(buf, r->data + r->off, n);
    r->off += n;
    return (ssize_t)n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_set_level(LOG_ERROR);
    fz_private_mounts();
    fz_scratch_tmpfs("archive", base, sizeof(base));
    if (chmod(base, 0777) < 0)
        fz_fail("chmod %s: %s", base, strerror(errno));
    snprintf(root_dir, sizeof(root_dir), "%s/root", base);
    snprintf(outside_dir, sizeof(outside_dir), "%s/outside", base);
    fz_put_dir(base, "outside", 01777, 0);
    fz_put_file(base, "outside/canary", "outside\n", 0666, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const dests[] = {"/workspace", "workspace/dir/", "/workspace/up/etc",
                                        "/workspace/dir/../dir"};
    static const char *const dest_dirs[] = {"workspace", "workspace/dir", "etc", "workspace/dir"};
    static const size_t pieces[] = {65536, 1, 7, 512};
    struct fs_root root;
    char err[256], dest_dir[256];
    size_t entries;
    if (size < 1)
        return 0;
    unsigned opt = data[0];
    build_root();
    snprintf(dest_dir, sizeof(dest_dir), "%s/%s", root_dir, dest_dirs[opt & 3]);
    buf_reset(&before);
    snapshot(base, dest_dir, &before);
    if (fs_root_open_dir(root_dir, TUID, TGID, &root) < 0)
        fz_fail("cannot open the root");
    struct reader r = {data + 1, size - 1, 0, pieces[(opt >> 2) & 3]};
    int small = (opt & 16) != 0;
    fs_archive_extract(&root, dests[opt & 3], read_piece, &r, small ? 4096 : 1 << 20,
                       small ? 8 : 1024, &entries, err, sizeof(err));
    fs_root_close(&root);

    buf_t after = BUF_INIT;
    snapshot(base, dest_dir, &after);
    if (after.len != before.len || memcmp(after.data, before.data, after.len) != 0)
        fz_fail("extracting into %s changed something outside it:\n--- before\n%s--- after\n%s",
                dests[opt & 3], before.data, after.data);
    buf_free(&after);
    check_dest(dest_dir);
    return 0;
}
