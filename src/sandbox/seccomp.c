/*
 * seccomp — the policy, in one place.
 *
 * Default: allow. The sandbox already runs as an unprivileged user namespace root without
 * CAP_SYS_ADMIN, so most dangerous calls fail anyway; the filter removes kernel attack surface that
 * namespaces do not cover, and closes the few doors that stay open to an unprivileged process.
 * Denied calls fail with EPERM (the libc and programs handle that gracefully) unless noted.
 * Any architecture other than the native one kills the process: 32-bit or x32 entry points would
 * bypass the syscall-number rules below (libseccomp also rejects x32 numbers on x86_64).
 */
#include "sandbox/seccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

struct rule {
    const char *name;
    const char *why;
};

/* Unconditionally denied with EPERM. */
static const struct rule deny[] = {
    /* Kernel keyrings are not namespaced: keys of other sandboxes or of the host could leak. */
    {"keyctl", "keyrings are not namespaced"},
    {"add_key", "keyrings are not namespaced"},
    {"request_key", "keyrings are not namespaced"},
    /* Large kernel attack surface with a history of privilege escalations. */
    {"bpf", "eBPF verifier/JIT attack surface"},
    {"perf_event_open", "perf subsystem attack surface, can leak kernel addresses"},
    {"userfaultfd", "used to widen race windows in kernel exploits"},
    {"io_uring_setup", "io_uring bypasses seccomp for the operations it performs"},
    {"io_uring_enter", "io_uring bypasses seccomp for the operations it performs"},
    {"io_uring_register", "io_uring bypasses seccomp for the operations it performs"},
    /* Host-global operations: must never be reachable from a sandbox. */
    {"kexec_load", "replaces the running kernel"},
    {"kexec_file_load", "replaces the running kernel"},
    {"init_module", "loads kernel code"},
    {"finit_module", "loads kernel code"},
    {"delete_module", "unloads kernel code"},
    {"reboot", "host power state"},
    {"swapon", "host swap configuration"},
    {"swapoff", "host swap configuration"},
    {"acct", "host process accounting"},
    {"syslog", "kernel log can leak addresses"},
    {"settimeofday", "host clock"},
    {"clock_settime", "host clock"},
    {"clock_adjtime", "host clock"},
    {"adjtimex", "host clock"},
    {"iopl", "raw I/O port access"},
    {"ioperm", "raw I/O port access"},
    {"quotactl", "file system quotas are host configuration"},
    {"lookup_dcookie", "kernel profiling interface"},
    {"vhangup", "terminal hang-up of the host's terminals"},
    /* File handles can name any inode of a mounted file system, escaping the mount tree
     * (the "shocker" breakout). */
    {"open_by_handle_at", "opens inodes outside the sandbox's tree"},
    {"name_to_handle_at", "companion of open_by_handle_at"},
    /* Mounting: the sandbox's tree is fixed at creation. The new mount API is denied wholesale. */
    {"mount", "file system tree is fixed"},
    {"umount2", "file system tree is fixed (could uncover masked paths)"},
    {"pivot_root", "file system tree is fixed"},
    {"fsopen", "new mount API"},
    {"fsconfig", "new mount API"},
    {"fsmount", "new mount API"},
    {"fspick", "new mount API"},
    {"move_mount", "new mount API"},
    {"open_tree", "new mount API"},
    {"mount_setattr", "new mount API"},
    /* Namespaces: joining or creating them is how nested-userns privilege regain starts. */
    {"setns", "joining other namespaces"},
};

static int add_rules(scmp_filter_ctx ctx)
{
    int r;
    for (size_t i = 0; i < sizeof(deny) / sizeof(deny[0]); i++) {
        int nr = seccomp_syscall_resolve_name(deny[i].name);
        if (nr == __NR_SCMP_ERROR)
            continue; /* not on this architecture */
        if ((r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0)) < 0)
            return r;
    }

    return 0;
}

/* New namespaces, user namespaces above all: a nested user namespace gives back a full capability
 * set over new namespaces, the usual first step of kernel exploits. unshare() and clone() carry
 * the flags in a register, so they are filtered by flag; libseccomp compares one masked value per
 * rule, so there is one rule per flag. */
static int add_ns_rules(scmp_filter_ctx ctx)
{
    static const unsigned long flags[] = {CLONE_NEWUSER,   CLONE_NEWNS,  CLONE_NEWPID,
                                          CLONE_NEWNET,    CLONE_NEWUTS, CLONE_NEWIPC,
                                          CLONE_NEWCGROUP, CLONE_NEWTIME};
    int r;
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        if ((r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(unshare), 1,
                                  SCMP_A0(SCMP_CMP_MASKED_EQ, flags[i], flags[i]))) < 0)
            return r;
        /* x86_64 clone(flags, ...): flags is the first argument. */
        if ((r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                                  SCMP_A0(SCMP_CMP_MASKED_EQ, flags[i], flags[i]))) < 0)
            return r;
    }
    /* clone3 passes its flags in memory, which seccomp cannot read. ENOSYS makes the libc fall
     * back to clone(), which the rules above can inspect. */
    return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
}

static int add_ioctl_rules(scmp_filter_ctx ctx)
{
    /* TIOCSTI pushes input into a terminal another process reads (a classic escape from su/sudo
     * sessions); TIOCLINUX can do the same on virtual consoles. The request is an int: compare
     * only the low 32 bits. */
    int r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                             SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, TIOCSTI));
    if (r < 0)
        return r;
    return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                            SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, TIOCLINUX));
}

static int add_ptrace_rules(scmp_filter_ctx ctx)
{
    /* Only descendants may be traced (what Yama's ptrace_scope 1 gives; kernels without Yama
     * allow any process of the same user). A tracer takes a running process with PTRACE_ATTACH
     * or PTRACE_SEIZE, which can name any process of the sandbox, so both are denied; a child can
     * still ask its parent to trace it (PTRACE_TRACEME), which is how gdb runs programs and how
     * strace does when SEIZE is refused. process_vm_readv/writev reach another process's memory
     * under the same access check as ptrace: denied too. */
    static const unsigned long requests[] = {16 /* PTRACE_ATTACH */, 0x4206 /* PTRACE_SEIZE */};
    int r;
    for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++)
        if ((r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ptrace), 1,
                                  SCMP_A0(SCMP_CMP_EQ, requests[i]))) < 0)
            return r;
    if ((r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(process_vm_readv), 0)) < 0)
        return r;
    return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(process_vm_writev), 0);
}

static int add_personality_rules(scmp_filter_ctx ctx)
{
    /* personality() can switch to legacy behaviour that weakens exploit mitigations
     * (READ_IMPLIES_EXEC makes every mapping executable, MMAP_PAGE_ZERO maps page 0, the
     * ADDR_LIMIT flags shrink the address space). The values ordinary programs use (PER_LINUX,
     * the 0xffffffff query, UNAME26, ADDR_NO_RANDOMIZE for setarch/gdb) stay allowed. */
    static const unsigned long bad_bits[] = {
        0x0400000 /* READ_IMPLIES_EXEC */, 0x0800000 /* ADDR_LIMIT_32BIT */,
        0x8000000 /* ADDR_LIMIT_3GB */, 0x0100000 /* MMAP_PAGE_ZERO */};
    /* The argument is 32 bits and 0xffffffff (the query) has every bit set, and libseccomp
     * allows one comparison per argument. So: deny "bad bit b set and some other bit j clear",
     * one rule per (b, j). The only value with b set that matches none is 0xffffffff. */
    for (size_t i = 0; i < sizeof(bad_bits) / sizeof(bad_bits[0]); i++) {
        for (int j = 0; j < 32; j++) {
            unsigned long other = 1UL << j;
            if (other == bad_bits[i])
                continue;
            int r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(personality), 1,
                                     SCMP_A0(SCMP_CMP_MASKED_EQ, bad_bits[i] | other, bad_bits[i]));
            if (r < 0)
                return r;
        }
    }
    return 0;
}

int seccomp_filter_build(struct seccomp_filter *f)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    int memfd = -1, r;
    memset(f, 0, sizeof(*f));
    if (!ctx)
        return -ENOMEM;
    /* Binary-tree layout: the few syscalls with argument rules (ioctl, clone, ptrace,
     * personality) are
     * found in O(log n); the kernel's constant-action cache skips the filter for the rest. */
    if ((r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) < 0 ||
        (r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)) < 0 || (r = add_rules(ctx)) < 0 ||
        (r = add_ns_rules(ctx)) < 0 || (r = add_ioctl_rules(ctx)) < 0 ||
        (r = add_ptrace_rules(ctx)) < 0 || (r = add_personality_rules(ctx)) < 0)
        goto error;

    /* libseccomp 2.5 can only export to an fd: go through a memfd and read the program back. */
    memfd = memfd_create("warren-seccomp", MFD_CLOEXEC);
    if (memfd < 0) {
        r = -errno;
        goto error;
    }
    if ((r = seccomp_export_bpf(ctx, memfd)) < 0)
        goto error;
    off_t size = lseek(memfd, 0, SEEK_END);
    if (size <= 0 || size % sizeof(struct sock_filter) != 0) {
        r = -EINVAL;
        goto error;
    }
    f->prog.filter = malloc((size_t)size);
    if (!f->prog.filter) {
        r = -ENOMEM;
        goto error;
    }
    if (pread(memfd, f->prog.filter, (size_t)size, 0) != size) {
        r = -EIO;
        goto error;
    }
    f->prog.len = (unsigned short)(size / sizeof(struct sock_filter));
    close(memfd);
    seccomp_release(ctx);
    return 0;
error:
    free(f->prog.filter);
    f->prog.filter = NULL;
    if (memfd >= 0)
        close(memfd);
    seccomp_release(ctx);
    return r;
}

void seccomp_filter_free(struct seccomp_filter *f)
{
    free(f->prog.filter);
    f->prog.filter = NULL;
    f->prog.len = 0;
}
