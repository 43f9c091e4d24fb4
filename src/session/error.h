/*
 * error — why the session layer refused or failed a request, as adapters need to tell clients.
 *
 * Most session functions answer 0 or -errno; those whose failures have more causes than an errno
 * can name (creating a sandbox: name taken, capacity, host disk, shutdown, a setup step) answer a
 * `enum session_err` with a message. Adapters map both to their protocol in one place each
 * (api/errors.c for the native API); the session layer itself never speaks HTTP.
 */
#ifndef WARREN_SESSION_ERROR_H
#define WARREN_SESSION_ERROR_H

enum session_err {
    SESSION_OK = 0,
    SESSION_ERR_NAME_TAKEN,    /* another sandbox has this name */
    SESSION_ERR_DELETED,       /* deleted while it was being created */
    SESSION_ERR_CAPACITY,      /* the daemon runs its maximum number of sandboxes */
    SESSION_ERR_HOST_DISK,     /* not enough host disk for the sandbox's disk */
    SESSION_ERR_SHUTTING_DOWN, /* the daemon is stopping */
    SESSION_ERR_SETUP,         /* isolation or setup failed (the message names the step) */
    SESSION_ERR_NOMEM,
    SESSION_ERR_STATE, /* the sandbox is not in a state that allows it (start of a running one) */
    /* Templates and images (session/templates.h): */
    SESSION_ERR_NOT_FOUND,       /* no template of that name */
    SESSION_ERR_IN_USE,          /* a sandbox uses the template */
    SESSION_ERR_BAD_REFERENCE,   /* a malformed image reference */
    SESSION_ERR_IMAGE_NOT_FOUND, /* the registry has no such image or tag */
    SESSION_ERR_REGISTRY,        /* the registry cannot be reached or answers nonsense */
    SESSION_ERR_REGISTRY_DENIED, /* the registry refused our credentials */
    SESSION_ERR_IMAGE_CORRUPT,   /* a blob does not match its digest or size */
    SESSION_ERR_IMAGE_INVALID,   /* a manifest, config or layer we refuse (a hostile entry...) */
    SESSION_ERR_NO_SPACE,        /* the host disk filled while storing an image */
    SESSION_ERR_TIMEOUT,         /* the image was not ready in time */
    /* Builds (session/build.h): */
    SESSION_ERR_BUILD_INVALID, /* the Dockerfile, an instruction or a source cannot be used */
    SESSION_ERR_BUILD_FAILED,  /* a RUN step exited non-zero */
};

/* A stable lower-case name ("name_taken", ...), for logs. */
const char *session_err_name(enum session_err e);
/* What a -errno from the session layer means, for a person: strerror, except where the session
 * layer gives an errno a meaning of its own (-EPIPE: the sandbox is not running; -ESHUTDOWN: it
 * is stopped; -E2BIG: argv and env too large). */
const char *session_strerror(int r);

#endif
