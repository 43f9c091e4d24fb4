/*
 * unpack: the safe layer unpacker against hostile tars made here with libarchive's writer. Every
 * escape attempt must fail with nothing created or changed outside dest (a sentinel dir and an
 * "outside" dir beside dest are checked after each), and what a layer may carry must arrive
 * exactly (owners, modes, xattrs, hardlinks, whiteouts). Runs as root (mknod, trusted.*).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "core/util.h"
#include "image/unpack.h"
#include "tar_builder.h"

struct fixture {
    char root[64];
    char dest[96];
    char outside[96];
    char sentinel[96];
};

static int setup(void **state)
{
    static struct fixture f;
    memset(&f, 0, sizeof(f));
    snprintf(f.root, sizeof(f.root), "/tmp/unpack-test-XXXXXX");
    if (!mkdtemp(f.root))
        return -1;
    snprintf(f.dest, sizeof(f.dest), "%s/dest", f.root);
    snprintf(f.outside, sizeof(f.outside), "%s/outside", f.root);
    snprintf(f.sentinel, sizeof(f.sentinel), "%s/sentinel", f.root);
    if (mkdir(f.dest, 0755) < 0 || mkdir(f.outside, 0755) < 0 || mkdir(f.sentinel, 0755) < 0)
        return -1;
    char p[128];
    snprintf(p, sizeof(p), "%s/keep", f.sentinel);
    FILE *fp = fopen(p, "w");
    if (!fp)
        return -1;
    fputs("keep", fp);
    fclose(fp);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    util_remove_tree(f->root);
    return 0;
}

static size_t count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* Nothing appeared beside dest, in outside or in sentinel, and sentinel/keep is untouched. */
static void assert_contained(struct fixture *f)
{
    assert_int_equal(count_entries(f->root), 3);
    assert_int_equal(count_entries(f->outside), 0);
    assert_int_equal(count_entries(f->sentinel), 1);
    char p[128], buf[16] = "";
    snprintf(p, sizeof(p), "%s/keep", f->sentinel);
    FILE *fp = fopen(p, "r");
    assert_non_null(fp);
    assert_non_null(fgets(buf, sizeof(buf), fp));
    fclose(fp);
    assert_string_equal(buf, "keep");
    struct stat sb;
    assert_int_equal(stat("/tmp/outside", &sb), -1);
}

/* Empties dest for the next case. */
static void reset_dest(struct fixture *f)
{
    assert_int_equal(util_remove_tree(f->dest), 0);
    assert_int_equal(mkdir(f->dest, 0755), 0);
}

static int run(struct fixture *f, struct tb *t, const char *expect, char *diff_id,
               struct unpack_stats *st, char *msg)
{
    int fd = tb_memfd(t->buf, t->used);
    int r = layer_unpack(fd, f->dest, expect, diff_id, st, msg, 512);
    /* The caller's fd stays open. */
    assert_true(fcntl(fd, F_GETFD) >= 0);
    close(fd);
    return r;
}

/* Builds a tar with `build`, unpacks it, expects failure `err` with a message naming `needle`,
 * and checks containment. */
static void expect_refused(struct fixture *f, void (*build)(struct tb *, struct fixture *), int err,
                           const char *needle)
{
    struct tb t;
    char msg[512];
    tb_begin(&t, ARCHIVE_FILTER_NONE);
    build(&t, f);
    tb_end(&t);
    int r = run(f, &t, NULL, NULL, NULL, msg);
    tb_free(&t);
    if (r != err || !strstr(msg, needle))
        print_error("got %d (%s), expected %d naming '%s'\n", r, msg, err, needle);
    assert_int_equal(r, err);
    assert_non_null(strstr(msg, needle));
    assert_contained(f);
    reset_dest(f);
}

static void b_dotdot(struct tb *t, struct fixture *f)
{
    tb_file(t, "../x", "escape");
}
static void b_abs(struct tb *t, struct fixture *f)
{
    tb_file(t, "/tmp/outside", "escape");
}
static void b_inner_dotdot(struct tb *t, struct fixture *f)
{
    tb_dir(t, "a", 0755);
    tb_file(t, "a/../../x", "escape");
}
static void b_symlink_abs_parent(struct tb *t, struct fixture *f)
{
    tb_symlink(t, "a", f->outside);
    tb_file(t, "a/file", "escape");
}
static void b_symlink_up_parent(struct tb *t, struct fixture *f)
{
    tb_symlink(t, "a", "..");
    tb_file(t, "a/x", "escape");
}
static void b_symlink_up_deep(struct tb *t, struct fixture *f)
{
    tb_dir(t, "d", 0755);
    tb_symlink(t, "d/up", "../..");
    tb_dir(t, "d/up/outside/sub", 0755);
}
static void b_hardlink_etc_passwd(struct tb *t, struct fixture *f)
{
    tb_hardlink(t, "passwd", "/etc/passwd");
}
static void b_hardlink_dotdot(struct tb *t, struct fixture *f)
{
    tb_hardlink(t, "x", "../sentinel/keep");
}
static void b_hardlink_via_symlink(struct tb *t, struct fixture *f)
{
    tb_symlink(t, "s", f->sentinel);
    tb_hardlink(t, "x", "s/keep");
}
static void b_hardlink_missing(struct tb *t, struct fixture *f)
{
    tb_hardlink(t, "x", "nothere");
}
static void b_dir_then_symlink_then_write(struct tb *t, struct fixture *f)
{
    tb_dir(t, "d", 0755);
    tb_file(t, "d/a", "inside");
    tb_symlink(t, "d", f->outside);
    tb_file(t, "d/x", "escape");
}
static void b_whiteout_dotdot(struct tb *t, struct fixture *f)
{
    tb_file(t, "../.wh.x", "");
}
static void b_whiteout_escape(struct tb *t, struct fixture *f)
{
    tb_dir(t, "a", 0755);
    tb_file(t, "a/../../sentinel/.wh.keep", "");
}
static void b_whiteout_of_dotdot(struct tb *t, struct fixture *f)
{
    tb_file(t, "a/.wh...", "");
}
static void b_whiteout_via_symlink(struct tb *t, struct fixture *f)
{
    tb_symlink(t, "s", f->sentinel);
    tb_file(t, "s/.wh.keep", "");
}
static void b_opaque_via_symlink(struct tb *t, struct fixture *f)
{
    tb_symlink(t, "s", f->sentinel);
    tb_file(t, "s/.wh..wh..opq", "");
}
static void b_empty(struct tb *t, struct fixture *f)
{
    tb_file(t, "./", "x");
}
static void b_file_as_parent(struct tb *t, struct fixture *f)
{
    tb_file(t, "f", "file");
    tb_file(t, "f/x", "under a file");
}
static void b_too_deep(struct tb *t, struct fixture *f)
{
    char name[1200] = "";
    for (int i = 0; i < 260; i++)
        strcat(name, "d/");
    strcat(name, "f");
    tb_file(t, name, "deep");
}

static void test_refusals(void **state)
{
    struct fixture *f = *state;
    expect_refused(f, b_dotdot, -EINVAL, "'../x': '..' component");
    expect_refused(f, b_abs, -EINVAL, "'/tmp/outside': absolute name");
    expect_refused(f, b_inner_dotdot, -EINVAL, "'a/../../x'");
    expect_refused(f, b_symlink_abs_parent, -ELOOP, "'a/file': a parent directory is a symlink");
    expect_refused(f, b_symlink_up_parent, -ELOOP, "'a/x'");
    expect_refused(f, b_symlink_up_deep, -ELOOP, "'d/up/outside/sub/'");
    expect_refused(f, b_hardlink_etc_passwd, -EINVAL, "'passwd': hardlink target: absolute");
    expect_refused(f, b_hardlink_dotdot, -EINVAL, "'x': hardlink target: '..'");
    expect_refused(f, b_hardlink_via_symlink, -ELOOP, "'x': hardlink target 's/keep'");
    expect_refused(f, b_hardlink_missing, -ENOENT, "'x': hardlink target 'nothere'");
    expect_refused(f, b_dir_then_symlink_then_write, -ELOOP, "'d/x'");
    expect_refused(f, b_whiteout_dotdot, -EINVAL, "'../.wh.x'");
    expect_refused(f, b_whiteout_escape, -EINVAL, "'a/../../sentinel/.wh.keep'");
    expect_refused(f, b_whiteout_of_dotdot, -EINVAL, "'a/.wh...': whiteout of an invalid name");
    expect_refused(f, b_whiteout_via_symlink, -ELOOP, "'s/.wh.keep'");
    expect_refused(f, b_opaque_via_symlink, -ELOOP, "'s/.wh..wh..opq'");
    expect_refused(f, b_empty, -EINVAL, "empty name");
    expect_refused(f, b_file_as_parent, -ENOTDIR, "'f/x': a parent is not a directory");
    expect_refused(f, b_too_deep, -EINVAL, "deeper than 256");
    /* The sentinel's file still has one link: no hardlink to it was made. */
    char p[128];
    struct stat sb;
    snprintf(p, sizeof(p), "%s/keep", f->sentinel);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_nlink, 1);
}

/* Replacing one kind of entry with another never goes through the old one. */
static void test_replacements(void **state)
{
    struct fixture *f = *state;
    struct tb t;
    char msg[512], p[256];
    struct stat sb;

    /* A symlink to outside replaced by a directory: the directory is made in dest. */
    tb_begin(&t, ARCHIVE_FILTER_NONE);
    tb_symlink(&t, "s", f->outside);
    tb_dir(&t, "s", 0755);
    tb_file(&t, "s/f", "in dest");
    /* A directory tree replaced by a symlink (kept as a symlink, its tree gone). */
    tb_dir(&t, "d", 0755);
    tb_dir(&t, "d/sub", 0755);
    tb_file(&t, "d/sub/f", "gone");
    tb_symlink(&t, "d", f->outside);
    /* A file replaced by a file, a file by a directory, a directory by a file. */
    tb_file(&t, "ff", "one");
    tb_file(&t, "ff", "two");
    tb_file(&t, "fd", "file");
    tb_dir(&t, "fd", 0700);
    tb_dir(&t, "df", 0755);
    tb_file(&t, "df/x", "x");
    tb_file(&t, "df", "file now");
    /* A directory over a directory keeps its children and takes the new metadata. */
    tb_dir(&t, "keep", 0755);
    tb_file(&t, "keep/child", "c");
    tb_dir(&t, "keep", 0711);
    tb_end(&t);
    assert_int_equal(run(f, &t, NULL, NULL, NULL, msg), 0);
    tb_free(&t);
    assert_contained(f);

    snprintf(p, sizeof(p), "%s/s", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    snprintf(p, sizeof(p), "%s/s/f", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    snprintf(p, sizeof(p), "%s/d", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(S_ISLNK(sb.st_mode));
    snprintf(p, sizeof(p), "%s/ff", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_int_equal(sb.st_size, 3);
    snprintf(p, sizeof(p), "%s/fd", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    assert_int_equal(sb.st_mode & 07777, 0700);
    snprintf(p, sizeof(p), "%s/df", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    snprintf(p, sizeof(p), "%s/keep/child", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    snprintf(p, sizeof(p), "%s/keep", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 07777, 0711);
}

static const unsigned char cap_v2[20] = {0x01, 0x00, 0x00, 0x02, 0x00, 0x04};

static void test_metadata(void **state)
{
    struct fixture *f = *state;
    struct tb t;
    struct unpack_stats st;
    char msg[512], p[256], val[64];
    struct stat sb, sb2;

    tb_begin(&t, ARCHIVE_FILTER_NONE);
    tb_dir(&t, "./", 0755);
    struct archive_entry *e = tb_entry("bin/su", AE_IFREG, 04755);
    tb_put(&t, e, "#!", 2);
    e = tb_entry("home/user/owned", AE_IFREG, 0640);
    archive_entry_set_uid(e, 1000);
    archive_entry_set_gid(e, 1001);
    archive_entry_set_uname(e, "root"); /* names are never looked up */
    archive_entry_set_gname(e, "root");
    tb_put(&t, e, "mine", 4);
    e = tb_entry("xa", AE_IFREG, 0755);
    archive_entry_xattr_add_entry(e, "user.note", "hello", 5);
    archive_entry_xattr_add_entry(e, "trusted.t", "tv", 2);
    archive_entry_xattr_add_entry(e, "security.capability", cap_v2, sizeof(cap_v2));
    archive_entry_xattr_add_entry(e, "trusted.overlay.redirect", "/etc", 4);
    archive_entry_xattr_add_entry(e, "security.selinux", "x", 1);
    tb_put(&t, e, "bin", 3);
    tb_file(&t, "h/one", "shared");
    tb_hardlink(&t, "h/two", "h/one");
    tb_hardlink(&t, "h2/three", "./h/one");
    tb_dev(&t, "dev/null", AE_IFCHR, 1, 3);
    tb_dev(&t, "dev/sda", AE_IFBLK, 8, 0);
    tb_put(&t, tb_entry("p/fifo", AE_IFIFO, 0620), NULL, 0);
    tb_dir(&t, "o", 0755);
    tb_file(&t, "o/.wh..wh..opq", "");
    tb_file(&t, "o/.wh..wh.plnk", "");
    tb_file(&t, "w/.wh.gone", "");
    tb_file(&t, "w/.wh.back", "");
    tb_file(&t, "w/back", "later wins");
    tb_file(&t, "w/x", "earlier");
    tb_file(&t, "w/.wh.x", "");
    tb_symlink(&t, "lnk", "../../etc/passwd");
    tb_dir(&t, "ro", 0555);
    tb_file(&t, "ro/inside", "child of a read-only dir");
    e = tb_entry("ro", AE_IFDIR, 0555);
    archive_entry_set_mtime(e, 1234567890, 0);
    tb_put(&t, e, NULL, 0);
    tb_end(&t);
    assert_int_equal(run(f, &t, NULL, NULL, &st, msg), 0);
    tb_free(&t);
    assert_contained(f);

    snprintf(p, sizeof(p), "%s/bin/su", f->dest);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 07777, 04755);
    assert_int_equal(sb.st_mtime, 1600000000);
    snprintf(p, sizeof(p), "%s/home/user/owned", f->dest);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_uid, 1000);
    assert_int_equal(sb.st_gid, 1001);
    assert_int_equal(sb.st_mode & 07777, 0640);

    snprintf(p, sizeof(p), "%s/xa", f->dest);
    assert_int_equal(getxattr(p, "user.note", val, sizeof(val)), 5);
    assert_memory_equal(val, "hello", 5);
    assert_int_equal(getxattr(p, "trusted.t", val, sizeof(val)), 2);
    assert_int_equal(getxattr(p, "security.capability", val, sizeof(val)), sizeof(cap_v2));
    assert_memory_equal(val, cap_v2, sizeof(cap_v2));
    assert_int_equal(getxattr(p, "trusted.overlay.redirect", val, sizeof(val)), -1);
    /* libarchive's writer stores each attribute as both SCHILY.xattr and LIBARCHIVE.xattr. */
    assert_true(st.xattrs_skipped >= 2);

    snprintf(p, sizeof(p), "%s/h/one", f->dest);
    assert_int_equal(stat(p, &sb), 0);
    snprintf(p, sizeof(p), "%s/h/two", f->dest);
    assert_int_equal(stat(p, &sb2), 0);
    assert_int_equal(sb.st_ino, sb2.st_ino);
    snprintf(p, sizeof(p), "%s/h2/three", f->dest);
    assert_int_equal(stat(p, &sb2), 0);
    assert_int_equal(sb.st_ino, sb2.st_ino);
    assert_int_equal(sb.st_nlink, 3);

    snprintf(p, sizeof(p), "%s/dev", f->dest);
    assert_int_equal(count_entries(p), 0);
    assert_int_equal(st.devices_skipped, 2);
    snprintf(p, sizeof(p), "%s/p/fifo", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(S_ISFIFO(sb.st_mode));
    assert_int_equal(sb.st_mode & 07777, 0620);

    snprintf(p, sizeof(p), "%s/o", f->dest);
    assert_int_equal(getxattr(p, "trusted.overlay.opaque", val, sizeof(val)), 1);
    assert_int_equal(val[0], 'y');
    assert_int_equal(count_entries(p), 0); /* markers are not files */
    snprintf(p, sizeof(p), "%s/w/gone", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(S_ISCHR(sb.st_mode));
    assert_int_equal(sb.st_rdev, makedev(0, 0));
    assert_int_equal(sb.st_uid, 0);
    snprintf(p, sizeof(p), "%s/w/back", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    snprintf(p, sizeof(p), "%s/w/x", f->dest);
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(S_ISCHR(sb.st_mode));
    snprintf(p, sizeof(p), "%s/w", f->dest);
    assert_int_equal(count_entries(p), 3); /* no .wh.* files */
    assert_int_equal(st.whiteouts, 3);
    assert_int_equal(st.opaques, 1);

    snprintf(p, sizeof(p), "%s/lnk", f->dest);
    assert_int_equal(readlink(p, val, sizeof(val)), 16);
    assert_memory_equal(val, "../../etc/passwd", 16);
    snprintf(p, sizeof(p), "%s/ro", f->dest);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 07777, 0555);
    assert_int_equal(sb.st_mtime, 1234567890);
    snprintf(p, sizeof(p), "%s/ro/inside", f->dest);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(st.hardlinks, 2);
    assert_true(st.disk_bytes > 0);
}

static void build_sample(struct tb *t, int filter)
{
    tb_begin(t, filter);
    tb_dir(t, "etc", 0755);
    tb_file(t, "etc/hostname", "warren\n");
    tb_symlink(t, "etc/mtab", "/proc/mounts");
    char big[100000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)(i * 7 % 251);
    tb_put(t, tb_entry("usr/lib/blob", AE_IFREG, 0644), big, sizeof(big));
    tb_end(t);
}

static void test_diff_id(void **state)
{
    struct fixture *f = *state;
    struct tb plain, comp;
    char want[80], got[80], msg[512];
    struct unpack_stats st;
    build_sample(&plain, ARCHIVE_FILTER_NONE);
    tb_sha256(plain.buf, plain.used, want);

    assert_int_equal(run(f, &plain, want, got, &st, msg), 0);
    assert_string_equal(got, want);
    assert_int_equal(st.tar_bytes, plain.used);
    assert_int_equal(st.files, 2);
    reset_dest(f);

    int filters[] = {ARCHIVE_FILTER_GZIP, ARCHIVE_FILTER_ZSTD};
    for (int i = 0; i < 2; i++) {
        tb_compress(plain.buf, plain.used, filters[i], &comp);
        assert_true(comp.used < plain.used);
        memset(got, 0, sizeof(got));
        assert_int_equal(run(f, &comp, NULL, got, NULL, msg), 0);
        assert_string_equal(got, want);
        reset_dest(f);
        /* The compressed blob's digest is not the diff_id: a mismatch is refused. */
        char wrong[80];
        tb_sha256(comp.buf, comp.used, wrong);
        assert_int_equal(run(f, &comp, wrong, got, NULL, msg), -EBADMSG);
        assert_non_null(strstr(msg, "diff_id"));
        reset_dest(f);
        tb_free(&comp);
    }
    /* A layer built with the writer's own gzip filter gives the same diff_id as its plain tar. */
    build_sample(&comp, ARCHIVE_FILTER_GZIP);
    assert_int_equal(run(f, &comp, want, got, NULL, msg), 0);
    reset_dest(f);
    tb_free(&comp);

    /* A corrupt stream: a tar cut in the middle of a file. */
    struct tb cut = plain;
    cut.used = 5000;
    assert_int_equal(run(f, &cut, NULL, got, NULL, msg), -EBADMSG);
    reset_dest(f);
    /* Not a tar at all. */
    struct tb junk = {.buf = (char *)"just some text, not an archive", .used = 30};
    assert_true(run(f, &junk, NULL, got, NULL, msg) < 0);
    reset_dest(f);
    tb_free(&plain);
}

/* From a pipe (not seekable), the way the registry client or an import hands data over. */
static void test_pipe(void **state)
{
    struct fixture *f = *state;
    struct tb t;
    char got[80], want[80], msg[512];
    tb_begin(&t, ARCHIVE_FILTER_NONE);
    tb_file(&t, "a", "b");
    tb_end(&t);
    tb_sha256(t.buf, t.used, want);
    assert_true(t.used < 65536);
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(write(p[1], t.buf, t.used), (ssize_t)t.used);
    close(p[1]);
    assert_int_equal(layer_unpack(p[0], f->dest, want, got, NULL, msg, sizeof(msg)), 0);
    close(p[0]);
    tb_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replacements, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(test_diff_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipe, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
