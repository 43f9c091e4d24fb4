/*
 * errors — the one place where what the session layer says (a -errno, or an enum session_err)
 * becomes an HTTP status and an API error code (docs/API.md, "Errors").
 */
#include <errno.h>
#include <string.h>

#include "api/api.h"

static const struct {
    int status;
    const char *code;
} statuses[] = {
    {400, "bad_request"},   {403, "forbidden"},         {404, "not_found"},
    {409, "conflict"},      {413, "payload_too_large"}, {422, "unprocessable"},
    {429, "limit_reached"}, {503, "unavailable"},
};

const char *api_status_code(int status)
{
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        if (statuses[i].status == status)
            return statuses[i].code;
    return "internal";
}

/* What an errno from the session layer means to a client. Files, commands and the lifecycle
 * share it: an errno means the same thing wherever it comes from. */
static const struct {
    int err;
    int status;
} errnos[] = {
    {ENOENT, 404}, {ENOTDIR, 404}, {EACCES, 403},       {EPERM, 403},     {EROFS, 403},
    {ELOOP, 403},  {EEXIST, 409},  {EBUSY, 409},        {ENOTEMPTY, 409}, {EPIPE, 409},
    {EFBIG, 413},  {E2BIG, 413},   {ENOSPC, 413},       {EDQUOT, 413},    {EAGAIN, 429},
    {EINVAL, 400}, {EISDIR, 400},  {ENAMETOOLONG, 400}, {ESHUTDOWN, 409}, {ERANGE, 409},
};

/* The errnos whose API error code is not their status's. */
static const struct {
    int err;
    const char *code;
} errno_codes[] = {
    {ESHUTDOWN, "sandbox_stopped"}, /* session/sandbox.h: sandbox_unavailable() */
    {ERANGE, "memory_in_use"},      /* session/sandbox.h: sandbox_set_resources() */
};

int api_errno_status(int r)
{
    for (size_t i = 0; i < sizeof(errnos) / sizeof(errnos[0]); i++)
        if (errnos[i].err == -r)
            return errnos[i].status;
    return 500;
}

const char *api_errno_code(int r)
{
    for (size_t i = 0; i < sizeof(errno_codes) / sizeof(errno_codes[0]); i++)
        if (errno_codes[i].err == -r)
            return errno_codes[i].code;
    return api_status_code(api_errno_status(r));
}

static const struct {
    enum session_err err;
    int status;
    const char *code;
} session_errs[] = {
    {SESSION_ERR_NAME_TAKEN, 409, "conflict"},
    {SESSION_ERR_DELETED, 409, "conflict"},
    {SESSION_ERR_CAPACITY, 429, "capacity"},
    {SESSION_ERR_HOST_DISK, 503, "unavailable"},
    {SESSION_ERR_SHUTTING_DOWN, 503, "unavailable"},
    {SESSION_ERR_SETUP, 500, "sandbox_setup_failed"},
    {SESSION_ERR_NOMEM, 500, "internal"},
    {SESSION_ERR_STATE, 409, "conflict"},
    {SESSION_ERR_NOT_FOUND, 404, "not_found"},
    {SESSION_ERR_IN_USE, 409, "template_in_use"},
    {SESSION_ERR_BAD_REFERENCE, 400, "bad_request"},
    {SESSION_ERR_IMAGE_NOT_FOUND, 404, "image_not_found"},
    {SESSION_ERR_REGISTRY, 502, "registry_unavailable"},
    {SESSION_ERR_REGISTRY_DENIED, 403, "registry_denied"},
    {SESSION_ERR_IMAGE_CORRUPT, 502, "image_invalid"},
    {SESSION_ERR_IMAGE_INVALID, 422, "image_invalid"},
    {SESSION_ERR_NO_SPACE, 507, "insufficient_storage"},
    {SESSION_ERR_TIMEOUT, 504, "timeout"},
    {SESSION_ERR_BUILD_INVALID, 400, "bad_request"},
    {SESSION_ERR_BUILD_FAILED, 422, "build_failed"},
};

int api_session_status(enum session_err e, const char **code)
{
    for (size_t i = 0; i < sizeof(session_errs) / sizeof(session_errs[0]); i++) {
        if (session_errs[i].err == e) {
            *code = session_errs[i].code;
            return session_errs[i].status;
        }
    }
    *code = "internal";
    return 500;
}
