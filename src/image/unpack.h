/*
 * unpack — one OCI layer tar, built safely into a directory that overlayfs can use as a lower.
 *
 * The layer is untrusted input. Whatever the tar says, nothing outside `dest` is created, changed
 * or read: every operation is fd-relative on a parent opened with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV) from a dirfd of `dest`, and no
 * symlink is ever followed, in the path or at the final component.
 *
 * What is kept: regular files (content, mode with setuid/setgid/sticky, numeric uid/gid exactly as
 * in the tar), directories, symlinks (target verbatim), hardlinks (to an earlier entry of the same
 * layer), FIFOs, mtimes, and the PAX SCHILY.xattr.* attributes user.*, trusted.* (except
 * trusted.overlay.*, which an image must not set) and security.capability. Device nodes and other
 * attributes are skipped and counted. Whiteouts become what overlayfs reads: `dir/.wh.NAME` a
 * character device 0:0 named NAME, `dir/.wh..wh..opq` the xattr trusted.overlay.opaque="y" on dir;
 * other `.wh..wh.*` entries are ignored. A later entry for the same name replaces the earlier one
 * (a directory over a directory keeps it and updates its metadata).
 *
 * Refused (the error names the entry): absolute names, `..` components, empty names, a parent that
 * is a symlink or not a directory, hardlinks whose target is missing, outside or behind a
 * symlink, names over 4096 bytes, paths deeper than 256, more than 1M entries.
 *
 * Runs as host root: ownership is written as-is (an idmapped mount presents it to each sandbox).
 */
#ifndef WARREN_IMAGE_UNPACK_H
#define WARREN_IMAGE_UNPACK_H

#include <stddef.h>
#include <stdint.h>

#define UNPACK_MAX_ENTRIES (1u << 20)
#define UNPACK_MAX_NAME 4096
#define UNPACK_MAX_DEPTH 256

struct unpack_stats {
    uint64_t entries; /* tar entries read */
    uint64_t files;   /* regular files written */
    uint64_t dirs;    /* directory entries (created or updated) */
    uint64_t symlinks;
    uint64_t hardlinks;
    uint64_t fifos;
    uint64_t whiteouts;       /* .wh.NAME turned into 0:0 character devices */
    uint64_t opaques;         /* .wh..wh..opq turned into trusted.overlay.opaque */
    uint64_t devices_skipped; /* block/character devices in the tar */
    uint64_t xattrs_skipped;  /* PAX attribute records outside the kept namespaces */
    uint64_t content_bytes;   /* file data written */
    uint64_t tar_bytes;       /* the uncompressed tar stream, trailing padding included */
    uint64_t disk_bytes;      /* allocated blocks of what was created (st_blocks * 512) */
};

/*
 * Reads a layer tar (gzip, zstd or uncompressed, detected from the data) from `fd` to its end and
 * builds it under `dest`, an existing empty directory. The SHA-256 of the uncompressed tar stream
 * (the OCI diff_id, "sha256:<hex>") is written to diff_id_out (80 bytes) when it is not NULL; if
 * expect_diff_id is not NULL and differs, returns -EBADMSG. `st` (optional) is filled in.
 *
 * Returns 0 or -errno with a message in msg: -EINVAL for a refused entry (malformed or escaping
 * name, "layer entry 'NAME': ..."), -ELOOP / -ENOTDIR for a parent that is a symlink or a file,
 * -E2BIG over the limits, -EBADMSG for a diff_id mismatch or a corrupt stream, -ENOSPC etc.
 * On failure `dest` holds a partial tree: the caller removes it (layer_store does). Does not
 * close fd. Thread-safe (no shared state).
 */
int layer_unpack(int fd, const char *dest, const char *expect_diff_id, char *diff_id_out,
                 struct unpack_stats *st, char *msg, size_t msglen);

#endif
