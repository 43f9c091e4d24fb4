"""Escape suite: processes. No host process is visible or reachable, the sandbox's init cannot be
traced, read or have its descriptors stolen, sandboxes cannot see or signal each other, and
`kill -9 -1` inside only kills inside."""

import os
import time

from conftest import WAIT_S, alive_same, exec_, proc_stat, sh
from escape_util import box, host_pids_in_sandbox, init_pid, py, start_host_sleeper  # noqa: F401


def start_detached(api, sid, argv):
    r = api.post(f"/v1/sandboxes/{sid}/commands", {"argv": argv})
    assert r.status == 201, r
    return r.json


def command_state(api, sid, cid):
    r = api.get(f"/v1/sandboxes/{sid}/commands/{cid}")
    assert r.status == 200, r
    return r.json


def wait_state(api, sid, cid, want, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = command_state(api, sid, cid)
        if c["state"] == want:
            return c
        time.sleep(0.05)
    return command_state(api, sid, cid)


# ---------------------------------------------------------------------------------------------


def test_no_host_pids_visible_or_signalable(api, box, daemon):
    sleeper = start_host_sleeper()
    try:
        start = proc_stat(sleeper.pid)[2]
        inside = set(host_pids_in_sandbox(daemon, box))
        targets = [sleeper.pid, daemon.pid, os.getpid(), os.getppid()]
        got = py(api, box["id"], f"""
import signal
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
res = {{"pids": pids}}
for t in {targets!r}:
    if t in pids:
        res[str(t)] = "collides"
        continue
    res[str(t)] = [err(os.kill, t, 0), err(os.kill, t, signal.SIGKILL),
                   sc("ptrace", 16, t, 0, 0), sc("pidfd_open", t, 0),
                   os.path.exists("/proc/%d" % t)]
cmds = []
for p in pids:
    try:
        cmds.append(open("/proc/%d/cmdline" % p, "rb").read().decode(errors="replace"))
    except OSError:
        pass
res["cmds"] = cmds
emit(res)
""")
        # Only the sandbox's own processes, numbered from 1 in its pid namespace.
        assert 1 in got["pids"] and len(got["pids"]) <= len(inside) + 3, (got["pids"], inside)
        assert max(got["pids"]) < 1000, got["pids"]
        for c in got["cmds"]:
            assert "pytest" not in c and daemon.state_dir not in c and "sleep\x00300" not in c, c
        for t in targets:
            r = got[str(t)]
            if r == "collides":
                continue
            # PTRACE_ATTACH is refused by seccomp before the kernel even looks the pid up.
            assert r == ["ESRCH", "ESRCH", [-1, "EPERM"], [-1, "ESRCH"], False], (t, r)
        assert alive_same(sleeper.pid, start), "the sandbox killed a host process"
        assert api.healthy()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_init_is_not_traceable_or_readable(api, box, daemon):
    got = py(api, box["id"], """
import signal
PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_DETACH = 16, 0x4206, 17
res = {}
res["attach"] = sc("ptrace", PTRACE_ATTACH, 1, 0, 0)
res["seize"] = sc("ptrace", PTRACE_SEIZE, 1, 0, 0)
for p in ("mem", "environ", "root/", "cwd/", "maps", "auxv", "syscall", "stack", "pagemap"):
    res[p] = err(lambda: os.listdir("/proc/1/" + p) if p.endswith("/") else open("/proc/1/" + p, "rb").read(16))
for fd in (0, 3, 4):
    res["readlink fd/%d" % fd] = err(os.readlink, "/proc/1/fd/%d" % fd)
    res["open fd/%d" % fd] = err(os.open, "/proc/1/fd/%d" % fd, os.O_RDWR)
buf = ctypes.create_string_buffer(16)
class IOV(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
local = IOV(ctypes.cast(buf, ctypes.c_void_p), 16)
remote = IOV(0x400000, 16)
res["process_vm_readv"] = sc("process_vm_readv", 1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
pfd = sc("pidfd_open", 1, 0)
res["pidfd_open"] = pfd[1]
# steal the init's control socket (fd 3) to drive it directly
res["pidfd_getfd"] = [sc("pidfd_getfd", pfd[0], fd, 0) for fd in (0, 3, 4)] if pfd[0] >= 0 else None
for s in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP, signal.SIGSEGV):
    os.kill(1, s)
res["init alive"] = os.path.exists("/proc/1") and open("/proc/1/stat").read().split()[2]
emit(res)
""")
    assert got["attach"] == [-1, "EPERM"] and got["seize"] == [-1, "EPERM"], got
    for p in ("mem", "environ", "root/", "cwd/", "auxv", "syscall", "stack", "pagemap",
              "readlink fd/0", "readlink fd/3", "readlink fd/4", "open fd/0", "open fd/3",
              "open fd/4"):
        assert got[p] in ("EACCES", "EPERM"), f"/proc/1/{p}: {got[p]}"
    assert got["maps"] in ("EACCES", "EPERM", None), got  # maps: readable only if dumpable
    assert got["process_vm_readv"] == [-1, "EPERM"], got
    assert got["pidfd_open"] is None, got  # allowed, but useless:
    assert got["pidfd_getfd"] == [[-1, "EPERM"]] * 3, got
    assert got["init alive"] in ("S", "R"), got
    # The init survived all of it and still serves.
    assert exec_(api, box["id"], argv=["echo", "ok"])["stdout"] == "ok\n"
    assert open(f"/proc/{init_pid(daemon, box)}/stat").read().split(")")[1].split()[0] in "SR"


def test_ptrace_of_non_descendant_denied(api, box):
    """DESIGN §2.6: ptrace of non-descendants is denied (the tracer here is not an ancestor of
    the target: the target was started by another API call)."""
    c = start_detached(api, box["id"], ["sleep", "60.5"])
    try:
        got = py(api, box["id"], f"""
import time
PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_DETACH = 16, 0x4206, 17
target = {c["pid"]}
res = {{"ppid": int(open("/proc/%d/stat" % target).read().rsplit(")", 1)[1].split()[1])}}
for name, req in (("attach", PTRACE_ATTACH), ("seize", PTRACE_SEIZE)):
    r = sc("ptrace", req, target, 0, 0)
    res[name] = r
    if r[0] == 0:  # it worked: let go of it again
        if name == "attach":
            os.waitpid(target, 0x40000000)  # __WALL
        sc("ptrace", PTRACE_DETACH, target, 0, 0)
emit(res)
""")
        assert got["ppid"] == 1, got  # a child of the init, not of the tracer
        assert got["attach"] == [-1, "EPERM"], f"PTRACE_ATTACH to a non-descendant: {got}"
        assert got["seize"] == [-1, "EPERM"], f"PTRACE_SEIZE of a non-descendant: {got}"
    finally:
        api.post(f"/v1/sandboxes/{box['id']}/commands/{c['command_id']}/kill", {"signal": 9})


def test_sandboxes_cannot_see_or_signal_each_other(api, box, daemon, new_sandbox):
    other = new_sandbox()
    c = start_detached(api, other["id"], ["sleep", "77.25"])
    deadline, host = time.monotonic() + WAIT_S, []
    while not host and time.monotonic() < deadline:
        host = [p for p in host_pids_in_sandbox(daemon, other)
                if "77.25" in (open(f"/proc/{p}/cmdline").read() if os.path.exists(f"/proc/{p}") else "")]
        time.sleep(0.02)
    assert len(host) == 1, host
    host_pid, start = host[0], proc_stat(host[0])[2]
    got = py(api, box["id"], f"""
import signal
res = {{"pgrep": []}}
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != os.getpid():  # our own cmdline holds the string
        try:
            if "77.25" in open("/proc/%s/cmdline" % p).read():
                res["pgrep"].append(p)
        except OSError:
            pass
res["by host pid"] = [err(os.kill, {host_pid}, 0), err(os.kill, {host_pid}, signal.SIGKILL)]
emit(res)
""")
    assert got["pgrep"] == [], f"sandbox A sees B's process: {got}"
    assert got["by host pid"] == ["ESRCH", "ESRCH"], got
    # A's own process with B's inner pid number, if any, is a different process.
    res = sh(api, box["id"], "kill -9 -1; true")
    assert res["exit_code"] in (0, 137), res
    time.sleep(0.2)
    assert alive_same(host_pid, start), "a process of sandbox B died when A did kill -9 -1"
    assert command_state(api, other["id"], c["command_id"])["state"] == "running"
    api.post(f"/v1/sandboxes/{other['id']}/commands/{c['command_id']}/kill", {"signal": 9})


def test_kill_all_only_kills_inside(api, box, daemon, new_sandbox):
    other = new_sandbox()
    sleeper = start_host_sleeper()
    try:
        sstart = proc_stat(sleeper.pid)[2]
        mine = start_detached(api, box["id"], ["sleep", "88.5"])
        theirs = start_detached(api, other["id"], ["sleep", "88.75"])
        inits = {sb["id"]: init_pid(daemon, sb) for sb in (box, other)}
        istarts = {k: proc_stat(v)[2] for k, v in inits.items()}
        res = exec_(api, box["id"], argv=["sh", "-c", "kill -9 -1; kill -KILL -1; echo survived"])
        # kill(-1) spares the caller and the pid namespace's init
        assert res["stdout"] == "survived\n", res
        c = wait_state(api, box["id"], mine["command_id"], "exited")
        assert c["state"] == "exited" and c["signal"] == 9, f"kill -9 -1 did not kill inside: {c}"
        assert command_state(api, other["id"], theirs["command_id"])["state"] == "running"
        assert alive_same(sleeper.pid, sstart), "kill -9 -1 in a sandbox killed a host process"
        for k, p in inits.items():
            assert alive_same(p, istarts[k]), f"init of {k} died"
        assert daemon.proc.poll() is None and api.healthy()
        assert exec_(api, box["id"], argv=["echo", "still"])["stdout"] == "still\n"
        assert exec_(api, other["id"], argv=["echo", "still"])["stdout"] == "still\n"
        api.post(f"/v1/sandboxes/{other['id']}/commands/{theirs['command_id']}/kill",
                 {"signal": 9})
    finally:
        sleeper.kill()
        sleeper.wait()
