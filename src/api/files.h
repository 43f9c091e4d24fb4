/*
 * files — how the files API shows a file (GET ?stat=1, files/list).
 */
#ifndef WARREN_API_FILES_H
#define WARREN_API_FILES_H

#include <jansson.h>

#include "session/files.h"

/* {path, type: file|dir|symlink|other, size, mode (octal string "0644"), mtime (RFC 3339 UTC,
 * second precision: "2026-01-02T03:04:05Z"), link_target? (symlinks), sha256? (when filled)}.
 * A path or link target that is not UTF-8 (names are bytes) is shown with U+FFFD for the bad
 * bytes, and path_b64 / link_target_b64 carry the exact bytes. A new reference, or NULL on
 * ENOMEM. Any thread. */
json_t *api_files_entry_json(const struct fs_entry *e);

#endif
