"""Shared helpers of the adversarial escape suite (tests/integration/test_escape_*.py).

Every hostile program runs inside a sandbox and prints what happened as JSON on its last stdout
line; the tests assert on those results (errno names, contents) and, where it means something,
check on the host that nothing changed. x86_64 only: the syscall numbers below are x86_64's.
"""

import json
import os
import random
import re
import subprocess
import time

import pytest

from conftest import WAIT_S, Api, exec_, proc_stat

# The sandbox's root maps to an unprivileged host range starting here (session/sandbox.c).
UID_BASE = 1048576
UID_RANGE = 65536

# x86_64 system call numbers.
NR = {
    "read": 0, "ioctl": 16, "getpid": 39, "clone": 56, "kill": 62, "ptrace": 101,
    "syslog": 103, "personality": 135, "pivot_root": 155, "adjtimex": 159, "chroot": 161,
    "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167,
    "swapoff": 168, "reboot": 169, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "lookup_dcookie": 212, "clock_settime": 227,
    "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "kexec_load": 246,
    "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310, "finit_module": 313,
    "bpf": 321, "userfaultfd": 323, "kexec_file_load": 320, "vhangup": 153,
    "pidfd_open": 434, "pidfd_getfd": 438, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "mount_setattr": 442,
}

# Capability numbers (linux/capability.h).
CAPS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

# Prepended to every hostile Python program: raw syscalls through ctypes, errno names, and
# `emit` for the JSON result line.
PRELUDE = r'''
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = %(nr)s
def arg(x):
    if isinstance(x, bool) or not isinstance(x, (int, str)) and x is not None:
        return x  # bytes, ctypes objects and references pass through
    if isinstance(x, str):
        return x.encode()
    if x is None:
        return ctypes.c_void_p(0)
    return ctypes.c_long(x)
def sc(name, *args):
    """(return value, errno name or None) of a raw system call."""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name] if isinstance(name, str) else name),
                     *[arg(a) for a in args])
    return [r, errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())) if r < 0 else None]
def err(fn, *a, **kw):
    """None if fn(*a) succeeded, else the errno name of the OSError it raised."""
    try:
        fn(*a, **kw)
        return None
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def emit(obj):
    sys.stdout.flush()
    print("\n" + json.dumps(obj), flush=True)
''' % {"nr": repr(NR)}


def rnd():
    return "%012x" % random.getrandbits(48)


def check_arch():
    assert os.uname().machine == "x86_64", \
        f"the escape suite's syscall table is x86_64's; this is {os.uname().machine}"


def last_json(res):
    out = res.get("stdout") or ""
    lines = [l for l in out.splitlines() if l.strip()]
    assert lines, f"no result line from the hostile program: {res!r}"
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise AssertionError(f"last line is not JSON: {res!r}") from None


def py(api, sid, code, expect_exit=0, **body):
    """Runs PRELUDE + code with python3 in the sandbox; returns the JSON of its `emit` line."""
    check_arch()
    res = exec_(api, sid, argv=["/usr/bin/python3", "-c", PRELUDE + code], **body)
    if expect_exit is not None:
        assert res["exit_code"] == expect_exit, f"hostile program: {res!r}"
    return last_json(res)


def py_raw(api, sid, code, **body):
    """Like py but returns the exec result as is (for programs that are expected to die)."""
    check_arch()
    return exec_(api, sid, argv=["/usr/bin/python3", "-c", PRELUDE + code], **body)


# ---------------------------------------------------------------------------------------------
# Host side


def sandbox_dir(daemon, sid):
    """The sandbox's directory as the daemon sees it (its disk is mounted in the daemon's own
    mount namespace; on the host's side the directory is an empty mount point)."""
    return daemon.sandbox_path(sid)


def workspace_host_path(daemon, sid):
    return os.path.join(sandbox_dir(daemon, sid), "workspace")


def init_pid(daemon, sb):
    """Host pid of the sandbox's init: the daemon's child whose root has the sandbox's hostname."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            st = proc_stat(int(d))
            if not st or st[1] != daemon.pid:
                continue
            try:
                with open(f"/proc/{d}/root/run/warren/hostname") as f:
                    if f.read().strip() == sb["name"]:
                        return int(d)
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no init process found for sandbox {sb['id']} ({sb['name']})")


def host_pids_in_sandbox(daemon, sb):
    """Host pids of every process in the sandbox's pid namespace (init included)."""
    ipid = init_pid(daemon, sb)
    ns = os.readlink(f"/proc/{ipid}/ns/pid")
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/ns/pid") == ns:
                    out.append(int(d))
            except OSError:
                pass
    return out


def host_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)


def start_host_sleeper():
    """A host process the sandbox must not be able to touch."""
    p = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    return p


def host_ipv4_addrs():
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return [ip for ip in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
            if not ip.startswith("127.")]


# ---------------------------------------------------------------------------------------------
# Fixtures (import them into a test module to use them)


@pytest.fixture(scope="module")
def box(daemon):
    """One sandbox shared by the tests of a module (they must not depend on each other's
    leftovers in it)."""
    api = Api(daemon)
    r = api.post("/v1/sandboxes", {})
    assert r.status == 201, f"create sandbox: {r!r}"
    yield r.json
    if daemon.proc.poll() is None:
        api.remove(r.json["id"])
