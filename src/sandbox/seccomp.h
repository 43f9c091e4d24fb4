/*
 * seccomp — the sandbox's system call filter, compiled once at daemon start-up.
 *
 * The policy (what is denied and why) is documented rule by rule in seccomp.c. The compiled BPF
 * program is owned by the caller's struct seccomp_filter and applied in every sandbox by spawn.c
 * (PR_SET_SECCOMP after no_new_privs), so the init and every command inherit it.
 */
#ifndef WARREN_SANDBOX_SECCOMP_H
#define WARREN_SANDBOX_SECCOMP_H

#include <linux/filter.h>

struct seccomp_filter {
    struct sock_fprog prog; /* prog.filter is heap memory owned by this struct */
};

/* Compiles the policy. Returns 0 or -errno (-ENOSYS if libseccomp cannot build for this arch). */
int seccomp_filter_build(struct seccomp_filter *f);
void seccomp_filter_free(struct seccomp_filter *f);

#endif
