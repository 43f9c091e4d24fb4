"""Escape suite: privileges. setuid/file capabilities gain nothing, dangerous capabilities are out
of every set, no namespace can be created or joined, the seccomp filter refuses what DESIGN §2
lists (with EPERM, or ENOSYS where documented), and the rlimits/session rules hold."""

import os
import stat

import pytest

from conftest import exec_, sh
from escape_util import CAPS, box, init_pid, py, py_raw, rnd  # noqa: F401  (box: fixture)

# Never in any capability set of a sandbox process.
DANGEROUS = ["DAC_READ_SEARCH", "LINUX_IMMUTABLE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
             "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_PTRACE", "SYS_PACCT",
             "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG",
             "MKNOD", "LEASE", "AUDIT_CONTROL", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
             "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
             "CHECKPOINT_RESTORE"]

HELPER_C = r'''
#include <stdio.h>
#include <unistd.h>
#include <string.h>
int main(void) {
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    printf("ids %d %d %d %d\n", getuid(), geteuid(), getgid(), getegid());
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10)) fputs(line, stdout);
    return 0;
}
'''


@pytest.fixture(scope="module")
def helper(box, daemon):
    """/workspace/esc-helper: prints its ids and capability sets. Compiled once per module."""
    from conftest import Api
    api = Api(daemon)
    res = exec_(api, box["id"], argv=["sh", "-c", "cat > /tmp/esc-helper.c && "
                                      "gcc -O0 -o /workspace/esc-helper /tmp/esc-helper.c"],
                stdin=HELPER_C, timeout_s=60)
    assert res["exit_code"] == 0, f"gcc in the sandbox: {res!r}"
    return "/workspace/esc-helper"


def parse_status(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("ids "):
            out["ids"] = [int(x) for x in line.split()[1:]]
        elif ":" in line:
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


def caps_of(bits_hex):
    bits = int(bits_hex, 16)
    return {name for name, n in CAPS.items() if bits & (1 << n)}


# ---------------------------------------------------------------------------------------------


def test_setuid_and_file_caps_gain_nothing(api, box, helper):
    """A setuid-root helper and a helper with file capabilities, made by the sandbox's root on
    every writable mount, run by an unprivileged user inside: no uid or capability is gained."""
    tag = rnd()
    copies = [f"/workspace/suid-{tag}", f"/tmp/suid-{tag}", f"/suid-{tag}", f"/dev/shm/suid-{tag}"]
    script = "set -e\n"
    for c in copies:
        script += f"cp {helper} {c} && chown 0:0 {c} && chmod 6755 {c}\n"
    script += (f"cp {helper} /workspace/fcap-{tag} && "
               f"setcap cap_sys_admin,cap_net_raw,cap_dac_read_search,cap_setuid+eip "
               f"/workspace/fcap-{tag}\n"
               f"getcap /workspace/fcap-{tag}\n")
    res = sh(api, box["id"], script)
    assert res["exit_code"] == 0, res
    assert "cap_sys_admin" in res["stdout"], f"file capabilities not set (precondition): {res}"
    for c in copies:
        st = exec_(api, box["id"], argv=["stat", "-c", "%a %u", c])["stdout"].split()
        assert st == ["6755", "0"], f"setuid bit not set on {c} (precondition): {st}"
    ran = 0
    for prog in copies + [f"/workspace/fcap-{tag}"]:
        got = py(api, box["id"], f"""
import subprocess
def drop():
    os.setresgid(1000, 1000, 1000)
    os.setresuid(1000, 1000, 1000)
p = subprocess.run([{prog!r}], preexec_fn=drop, capture_output=True, text=True)
emit({{"rc": p.returncode, "out": p.stdout, "err": p.stderr}})
""")
        st = parse_status(got["out"])
        if got["rc"] == 126 or "Permission denied" in got["err"]:
            continue  # not even executable (noexec): no gain either
        assert got["rc"] == 0, (prog, got)
        ran += 1
        assert st["ids"] == [1000, 1000, 1000, 1000], f"{prog} gained ids: {got}"
        for k in ("CapPrm", "CapEff", "CapAmb", "CapInh"):
            assert int(st[k], 16) == 0, f"{prog} gained capabilities ({k}={st[k]}): {got}"
        assert st["NoNewPrivs"] == "1", got
    assert ran >= 3, "the helpers did not run"


def test_host_setuid_binaries_do_not_elevate(api, box):
    suid = [p for p in ("/usr/bin/su", "/usr/bin/newgrp", "/usr/bin/passwd", "/usr/bin/mount",
                        "/usr/bin/chsh", "/usr/bin/gpasswd")
            if os.path.exists(p) and os.stat(p).st_mode & stat.S_ISUID]
    assert suid, "no setuid-root binary on this host to try"
    got = py(api, box["id"], f"""
import subprocess, time
res = {{"mounts": {{}}, "runs": {{}}}}
for line in open("/proc/self/mountinfo"):
    f = line.split()
    res["mounts"][f[4]] = f[5]
for b in {suid!r}:
    st = os.stat(b)
    def drop():
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
    argv = [b, "-c", "id", "root"] if b.endswith("/su") else [b]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, preexec_fn=drop)
    seen, deadline = None, time.monotonic() + 30
    while time.monotonic() < deadline:  # the status once it is running the setuid program
        try:
            s = open("/proc/%d/status" % p.pid).read()
        except OSError:
            break
        d = dict(l.split(":", 1) for l in s.splitlines() if ":" in l)
        if d["Name"].strip() == os.path.basename(b)[:15]:
            seen = {{k: d[k].split() for k in ("Uid", "Gid", "CapEff", "CapPrm")}}
            break
        if p.poll() is not None:
            break
        time.sleep(0.025)
    p.kill()
    out = p.communicate()[0].decode(errors="replace")
    res["runs"][b] = {{"mode": oct(st.st_mode), "uid": st.st_uid, "status": seen, "out": out}}
emit(res)
""")
    assert got["mounts"]["/usr"].split(",")[:2] == ["ro", "nosuid"], got["mounts"]["/usr"]
    observed = 0
    for b, r in got["runs"].items():
        assert int(r["mode"], 8) & stat.S_ISUID, f"{b} lost its setuid bit? {r}"
        assert r["uid"] == 65534, f"{b} is owned by a mapped uid inside ({r['uid']}): {r}"
        assert "uid=0(" not in r["out"], f"{b} ran something as root: {r}"
        if r["status"]:
            observed += 1
            assert r["status"]["Uid"] == ["65534"] * 4, f"{b} elevated: {r}"
            assert int(r["status"]["CapEff"][0], 16) == 0 and int(r["status"]["CapPrm"][0], 16) == 0, r
    assert observed >= 1, f"could not observe any setuid program while it ran: {got['runs']}"


def test_no_new_privs_and_seccomp_everywhere(api, box, daemon):
    got = py(api, box["id"], """
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 38, 39
def status(p):
    d = dict(l.split(":", 1) for l in open(p).read().splitlines() if ":" in l)
    return {k: d[k].strip() for k in ("NoNewPrivs", "Seccomp", "Seccomp_filters")}
res = {"self": status("/proc/self/status"), "init": status("/proc/1/status")}
libc.prctl.restype = ctypes.c_int
ctypes.set_errno(0)
res["clear nnp"] = [libc.prctl(PR_SET_NO_NEW_PRIVS, 0, 0, 0, 0), errno.errorcode.get(ctypes.get_errno())]
res["nnp now"] = libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
# SECCOMP_MODE_DISABLED cannot be set once a filter is installed
res["seccomp off"] = [libc.prctl(22, 0, 0, 0, 0), errno.errorcode.get(ctypes.get_errno())]
res["seccomp after"] = status("/proc/self/status")["Seccomp"]
emit(res)
""")
    for who in ("self", "init"):
        assert got[who]["NoNewPrivs"] == "1" and got[who]["Seccomp"] == "2", got
        assert int(got[who]["Seccomp_filters"]) >= 1, got
    assert got["clear nnp"] == [-1, "EINVAL"] and got["nnp now"] == 1, got
    assert got["seccomp off"][0] == -1 and got["seccomp after"] == "2", got
    # the persistent shell's processes too
    r = api.post(f"/v1/sandboxes/{box['id']}/shells", {})
    assert r.status == 201, r
    shid = r.json["shell_id"]
    r = api.post(f"/v1/sandboxes/{box['id']}/shells/{shid}/run",
                 {"command": "grep -E '^(NoNewPrivs|Seccomp):' /proc/$$/status"})
    assert r.status == 200, r
    assert "NoNewPrivs:\t1" in r.json["output"] and "Seccomp:\t2" in r.json["output"], r.json
    api.delete(f"/v1/sandboxes/{box['id']}/shells/{shid}")
    # and seen from the host: the init is filtered as well
    st = open(f"/proc/{init_pid(daemon, box)}/status").read()
    assert "NoNewPrivs:\t1" in st and "Seccomp:\t2" in st, st


def test_dangerous_capabilities_absent(api, box):
    got = py(api, box["id"], """
d = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
res = {k: d[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
# try to get CAP_SYS_ADMIN back: capset, ambient raise, bounding set is one-way
class H(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class D(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
hdr = H(0x20080522, 0)
data = (D * 2)()
data[0].effective = data[0].permitted = 0xffffffff
data[1].effective = data[1].permitted = 0xffffffff
ctypes.set_errno(0)
r = libc.capset(ctypes.byref(hdr), data)
res["capset all"] = [r, errno.errorcode.get(ctypes.get_errno())]
ctypes.set_errno(0)
r = libc.prctl(47, 2, 21, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN
res["ambient raise"] = [r, errno.errorcode.get(ctypes.get_errno())]
res["bnd read sys_admin"] = libc.prctl(23, 21, 0, 0, 0)  # PR_CAPBSET_READ
emit(res)
""")
    for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        bad = caps_of(got[k]) & set(DANGEROUS)
        assert not bad, f"{k}={got[k]} holds dangerous capabilities {sorted(bad)}"
    assert int(got["CapAmb"], 16) == 0 and int(got["CapInh"], 16) == 0, got
    assert got["capset all"] == [-1, "EPERM"], got
    assert got["ambient raise"] == [-1, "EPERM"], got
    assert got["bnd read sys_admin"] == 0, got


def test_nested_namespaces_denied(api, box):
    flags = {"NEWUSER": 0x10000000, "NEWNS": 0x00020000, "NEWPID": 0x20000000,
             "NEWNET": 0x40000000, "NEWUTS": 0x04000000, "NEWIPC": 0x08000000,
             "NEWCGROUP": 0x02000000, "NEWTIME": 0x00000080}
    got = py(api, box["id"], f"""
import subprocess
flags = {flags!r}
SIGCHLD = 17
res = {{}}
for name, f in flags.items():
    res["unshare " + name] = sc("unshare", f)
    r = sc("clone", f | SIGCHLD, 0, 0, 0, 0)
    if r[0] == 0:
        os._exit(0)  # we are a child in a new namespace: the parent reports it
    if r[0] > 0:
        os.waitpid(r[0], 0)
    res["clone " + name] = r
    # the flag hidden among harmless ones
    res["unshare mix " + name] = sc("unshare", f | 0x400 | 0x200)
class CA(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("flags", "pidfd", "child_tid", "parent_tid",
                "exit_signal", "stack", "stack_size", "tls")]
ca = CA(flags["NEWUSER"], 0, 0, 0, SIGCHLD, 0, 0, 0)
r = sc("clone3", ctypes.byref(ca), ctypes.sizeof(ca))
if r[0] == 0:
    os._exit(0)
res["clone3 NEWUSER"] = r
for ns in ("user", "mnt", "pid", "net", "uts", "ipc", "cgroup", "time"):
    fd = os.open("/proc/self/ns/" + ns, os.O_RDONLY)
    res["setns " + ns] = sc("setns", fd, 0)
    os.close(fd)
res["open init ns"] = err(os.open, "/proc/1/ns/mnt", os.O_RDONLY)
p = subprocess.run(["unshare", "-Ur", "id", "-u"], capture_output=True, text=True)
res["unshare(1)"] = [p.returncode, p.stdout, p.stderr]
p = subprocess.run(["nsenter", "-t", "1", "-a", "true"], capture_output=True, text=True)
res["nsenter(1)"] = [p.returncode, p.stderr]
emit(res)
""")
    for name in flags:
        assert got["unshare " + name] == [-1, "EPERM"], got
        assert got["clone " + name] == [-1, "EPERM"], got
        assert got["unshare mix " + name] == [-1, "EPERM"], got
    # clone3 carries its flags in memory: refused with ENOSYS so that libc falls back to clone
    assert got["clone3 NEWUSER"] == [-1, "ENOSYS"], got
    for ns in ("user", "mnt", "pid", "net", "uts", "ipc", "cgroup", "time"):
        assert got["setns " + ns] == [-1, "EPERM"], got
    assert got["open init ns"] == "EACCES", got
    assert got["unshare(1)"][0] != 0 and "not permitted" in got["unshare(1)"][2], got
    assert got["nsenter(1)"][0] != 0, got


def test_namespaces_differ_from_host(api, box, daemon):
    pid = init_pid(daemon, box)
    for ns in ("user", "mnt", "pid", "net", "uts", "ipc", "cgroup"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), \
            f"the sandbox shares the host's {ns} namespace"


# name: (args...). Each would succeed, or fail with something other than EPERM, for a
# process that the filter let through (arguments chosen harmless); or it is a host-global
# operation that must fail regardless.
SECCOMP_DENIED = {
    "keyctl": (0, -3, 0),                     # KEYCTL_GET_KEYRING_ID(session): works normally
    "add_key": ("user", "warren-escape", "x", 1, -3),
    "request_key": ("user", "warren-escape", None, -3),
    "bpf": (0, None, 0),                      # BPF_MAP_CREATE with NULL attr: EFAULT if allowed
    "perf_event_open": (None, 0, -1, -1, 0),  # EFAULT if allowed
    "userfaultfd": (1,),                      # UFFD_USER_MODE_ONLY: works normally
    "io_uring_setup": (1, None),              # EFAULT if allowed
    "io_uring_enter": (-1, 0, 0, 0, None, 0),  # EBADF if allowed
    "io_uring_register": (-1, 0, None, 0),    # EBADF if allowed
    "kexec_load": (0, 0, None, 0),
    "kexec_file_load": (-1, -1, 0, None, 0),
    "init_module": (None, 0, ""),
    "finit_module": (-1, "", 0),
    "delete_module": ("warren_escape_none", 0x800),
    "reboot": (0, 0, 0, None),                # bad magic: EINVAL if it got that far
    "swapon": (None, 0),
    "swapoff": (None,),
    "acct": (None,),
    "syslog": (10, None, 0),                  # SYSLOG_ACTION_SIZE_BUFFER
    "settimeofday": (None, None),
    "clock_settime": (0, None),
    "clock_adjtime": (0, None),
    "adjtimex": (None,),
    "iopl": (0,),                             # lowering to 0 needs no privilege
    "ioperm": (0, 0, 0),                      # turning nothing off needs no privilege
    "quotactl": (0, None, 0, None),
    "lookup_dcookie": (0, None, 0),
    "vhangup": (),
    "open_by_handle_at": (-100, None, 0),
    "name_to_handle_at": (-100, "/", None, None, 0),
}


def test_seccomp_denies_listed_syscalls(api, box):
    got = py(api, box["id"], f"""
calls = {SECCOMP_DENIED!r}
emit({{name: sc(name, *args) for name, args in calls.items()}})
""")
    wrong = {k: v for k, v in got.items() if v != [-1, "EPERM"]}
    assert not wrong, f"not refused with EPERM: {wrong}"


def test_seccomp_personality(api, box):
    got = py(api, box["id"], """
PER = {"READ_IMPLIES_EXEC": 0x0400000, "ADDR_LIMIT_32BIT": 0x0800000, "ADDR_LIMIT_3GB": 0x8000000,
       "MMAP_PAGE_ZERO": 0x0100000, "PER_SVR4": 0x04100001,
       "RIE|ADDR_NO_RANDOMIZE": 0x0400000 | 0x0040000, "RIE|PER_LINUX32": 0x0400000 | 0x0008,
       "RIE high bits": 0xffffffff00000000 | 0x0400000, "all but one": 0xfffffffe}
res = {k: sc("personality", v) for k, v in PER.items()}
res["after"] = sc("personality", 0xffffffff)[0]
# READ_IMPLIES_EXEC would make readable mappings executable: check that it did not stick
res["maps_exec"] = any(l.split()[1] == "r-xp" and "[heap]" in l for l in open("/proc/self/maps"))
emit(res)
""")
    for k in ("READ_IMPLIES_EXEC", "ADDR_LIMIT_32BIT", "ADDR_LIMIT_3GB", "MMAP_PAGE_ZERO",
              "PER_SVR4", "RIE|ADDR_NO_RANDOMIZE", "RIE|PER_LINUX32", "RIE high bits",
              "all but one"):
        assert got[k] == [-1, "EPERM"], f"personality {k}: {got[k]}"
    assert got["after"] & (0x0400000 | 0x0800000 | 0x8000000 | 0x0100000) == 0, got
    assert got["maps_exec"] is False, got


def test_seccomp_non_native_abi_killed(api, box):
    """32-bit (int $0x80) and x32 entry points would bypass the x86_64 syscall numbers."""
    tag = rnd()
    src = (r'#include <stdio.h>' '\n'
           r'int main(void){ long r; asm volatile("int $0x80" : "=a"(r) : "a"(20L));'
           r' printf("getpid32=%ld\n", r); return 0; }' '\n')
    res = exec_(api, box["id"], argv=["sh", "-c", f"cat > /tmp/i{tag}.c && gcc -o /tmp/i{tag} "
                                      f"/tmp/i{tag}.c && exec /tmp/i{tag}"], stdin=src)
    assert "getpid32=" not in res["stdout"], f"a 32-bit system call ran: {res}"
    # SIGSYS from the filter, or SIGSEGV where the kernel has no 32-bit entry at all
    assert res["signal"] in (31, 11), res
    # x32 keyctl (0x40000000 | 250): the filter kills the process (or the kernel says ENOSYS)
    res = py_raw(api, box["id"], """
r = sc(0x40000000 | 250, 0, -3, 0)
emit({"x32 keyctl": r})
""")
    if res["signal"] is None:
        got = res["stdout"].strip().splitlines()[-1]
        assert '"x32 keyctl": [-1, "ENOSYS"]' in got or '"EPERM"' in got, res
    else:
        assert res["signal"] == 31, res


def test_rlimits_and_sessions(api, box):
    """DESIGN §2.7: rlimits as defence in depth (core 0, nofile, fsize) and setsid for every
    command."""
    got = py(api, box["id"], """
import resource
INF = resource.RLIM_INFINITY
res = {n: list(resource.getrlimit(getattr(resource, "RLIMIT_" + n))) for n in ("CORE", "NOFILE", "FSIZE")}
def raise_(which, n):  # raw setrlimit: Python turns EPERM into a ValueError
    lim = (ctypes.c_ulong * 2)(n, n)
    ctypes.set_errno(0)
    r = libc.setrlimit(which, lim)
    return errno.errorcode.get(ctypes.get_errno()) if r < 0 else None
res["raise core"] = raise_(resource.RLIMIT_CORE, (1 << 64) - 1)
res["raise nofile"] = raise_(resource.RLIMIT_NOFILE, 1 << 20)
res["sid"] = [os.getsid(0), os.getpid(), os.getpgrp()]
res["INF"] = INF
emit(res)
""")
    inf = got["INF"]
    assert got["CORE"] == [0, 0], got
    assert got["raise core"] == "EPERM", got
    assert got["NOFILE"][1] != inf and got["NOFILE"][1] <= 65536, got
    assert got["raise nofile"] == "EPERM", got
    sid, pid, pgrp = got["sid"]
    assert sid == pid == pgrp, f"the command is not a session leader: {got['sid']}"
    assert got["FSIZE"][1] != inf, f"RLIMIT_FSIZE is unlimited (DESIGN §2.7 asks for one): {got}"


def test_host_ipc_objects_invisible(api, box):
    """IPC namespace: the host's System V objects are not reachable, and the sandbox's do not
    appear on the host."""
    import ctypes
    import random
    libc = ctypes.CDLL(None, use_errno=True)
    key, key2 = random.randrange(1 << 20, 1 << 30), random.randrange(1 << 20, 1 << 30)
    shmid = libc.shmget(key, 4096, 0o1000 | 0o666)
    msqid = libc.msgget(key, 0o1000 | 0o666)
    assert shmid >= 0 and msqid >= 0, ctypes.get_errno()
    try:
        got = py(api, box["id"], f"""
res = {{}}
for name, fn in (("shmget", libc.shmget), ("msgget", libc.msgget)):
    ctypes.set_errno(0)
    r = fn({key}, 0, 0) if name == "shmget" else fn({key}, 0)
    res[name] = [r, errno.errorcode.get(ctypes.get_errno())]
res["listed"] = "%d" % {key} in open("/proc/sysvipc/shm").read()
res["by id"] = [libc.shmctl({shmid}, 0, None), errno.errorcode.get(ctypes.get_errno())]  # IPC_RMID
res["own"] = libc.shmget({key2}, 4096, 0o1000 | 0o666)
emit(res)
""")
        assert got["shmget"] == [-1, "ENOENT"] and got["msgget"] == [-1, "ENOENT"], got
        assert got["listed"] is False, got
        assert got["by id"][0] == -1 and got["by id"][1] in ("EINVAL", "EIDRM"), got
        assert got["own"] >= 0, got
        assert libc.shmget(key2, 0, 0) == -1, "the sandbox's shm segment appeared on the host"
        assert libc.shmget(key, 0, 0) == shmid, "the host's segment was removed from inside"
    finally:
        libc.shmctl(shmid, 0, None)
        libc.msgctl(msqid, 0, None)
