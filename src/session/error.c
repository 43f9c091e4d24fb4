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
