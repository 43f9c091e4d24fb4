/*
 * snapshot — a layer made of what a sandbox changed: the upper directory of its overlay root
 * (/workspace included), written as an uncompressed OCI layer tar (so its blob digest is its
 * diff_id).
 *
 * The upper directory records changes the overlayfs way; the layer records them the OCI way:
 * a whiteout (a character device 0:0) becomes an empty `.wh.NAME` file, an opaque directory
 * (xattr trusted.overlay.opaque=y) gets a `.wh..wh..opq` entry. Owners are shifted back from the
 * sandbox's host id range [base, base + count) to the image's ids; an id outside the range
 * (which the sandbox cannot have made) becomes 65534. Hardlinks stay hardlinks, symlinks are
 * stored, never followed; sockets and device nodes other than whiteouts are left out; the
 * user.* and security.capability xattrs are kept, overlayfs' own are not.
 *
 * Walking never follows a symlink (every step is openat(O_NOFOLLOW) relative to its parent), so
 * a sandbox that plants links in its own files cannot make the snapshot read host files. Call it
 * with the sandbox frozen for a consistent layer. Blocks: run it on a pool thread.
 * Errors: 0 or -errno, with msg naming the path that failed.
 */
#ifndef WARREN_IMAGE_SNAPSHOT_H
#define WARREN_IMAGE_SNAPSHOT_H

#include <stdint.h>
#include <sys/types.h>

#include "image/digest.h"

/* Writes the layer of the tree of `upper` to `out_fd`. *digest receives its sha256
 * ("sha256:..."), *size its length. */
int snapshot_layer(const char *upper, uid_t base, uid_t count, int out_fd,
                   char digest[DIGEST_STRLEN], int64_t *size, char *msg, size_t msglen);

#endif
