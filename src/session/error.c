/*
 * error — names of session errors. See error.h.
 */
#include "session/error.h"

#include <errno.h>
#include <string.h>

const char *session_err_name(enum session_err e)
{
    switch (e) {
    case SESSION_OK:
        return "ok";
    case SESSION_ERR_NAME_TAKEN:
        return "name_taken";
    case SESSION_ERR_DELETED:
        return "deleted";
    case SESSION_ERR_CAPACITY:
        return "capacity";
    case SESSION_ERR_HOST_DISK:
        return "host_disk";
    case SESSION_ERR_SHUTTING_DOWN:
        return "shutting_down";
    case SESSION_ERR_SETUP:
        return "setup_failed";
    case SESSION_ERR_NOMEM:
        return "out_of_memory";
    case SESSION_ERR_STATE:
        return "wrong_state";
    case SESSION_ERR_NOT_FOUND:
        return "not_found";
    case SESSION_ERR_IN_USE:
        return "in_use";
    case SESSION_ERR_BAD_REFERENCE:
        return "bad_reference";
    case SESSION_ERR_IMAGE_NOT_FOUND:
        return "image_not_found";
    case SESSION_ERR_REGISTRY:
        return "registry_unavailable";
    case SESSION_ERR_REGISTRY_DENIED:
        return "registry_denied";
    case SESSION_ERR_IMAGE_CORRUPT:
        return "image_corrupt";
    case SESSION_ERR_IMAGE_INVALID:
        return "image_invalid";
    case SESSION_ERR_NO_SPACE:
        return "no_space";
    case SESSION_ERR_TIMEOUT:
        return "timeout";
    case SESSION_ERR_BUILD_INVALID:
        return "build_invalid";
    case SESSION_ERR_BUILD_FAILED:
        return "build_failed";
    }
    return "unknown";
}

const char *session_strerror(int r)
{
    return r == -E2BIG       ? "argv and env are too large (64 KiB at most)"
           : r == -EPIPE     ? "the sandbox is not running (it is paused, being deleted or failed)"
           : r == -ESHUTDOWN ? "the sandbox is stopped (start it first)"
                             : strerror(-r);
}
