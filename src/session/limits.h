/*
 * limits — what a client may ask of this daemon: resource defaults and maxima of a sandbox, and
 * the bounds of a command (timeouts, captured output) and of a request body. Set once from the
 * daemon's flags (server.c) and read by every adapter (api/, atropos/) to validate requests
 * before they reach the session layer. Plain data.
 */
#ifndef WARREN_SESSION_LIMITS_H
#define WARREN_SESSION_LIMITS_H

#include <stddef.h>

struct sandbox_resources {
    double cpus;
    unsigned long long memory_mib;
    unsigned long long pids;
    unsigned long long disk_mib;
};

struct session_limits {
    unsigned max_sandboxes;
    size_t max_body_bytes;
    double exec_timeout_default_s;
    double exec_timeout_max_s;
    size_t max_output_default; /* per stream */
    size_t max_output_max;
    struct sandbox_resources defaults;
    struct sandbox_resources maxima;
    double idle_timeout_s; /* a sandbox's idle_timeout_s when it asks for none; 0: never */
    double max_ttl_s;      /* the longest ttl_s, and the ttl_s of one that asks for none; 0: none */
};

#endif
