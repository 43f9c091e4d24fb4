"""Escape suite: cgroups. The sandbox sees no cgroup file system (its cgroup namespace is rooted at
its own cgroup and /sys/fs/cgroup is empty and read-only), cannot mount one (the release_agent
breakout needs that), cannot move itself out of its cgroup or raise its limits, and cannot thaw
itself when the daemon freezes it."""

import os
import time

from conftest import WAIT_S, exec_, host_cgroup_mode, wait_for
from escape_util import box, init_pid, py, workspace_host_path  # noqa: F401  (box: fixture)


def host_cgroup_dirs(pid):
    """{controller or "" for v2: host directory} of the cgroups `pid` is in."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, post = line.split(" - ")
            fstype, _, opts = post.split()[:3]
            mp = pre.split()[4]
            if fstype == "cgroup2":
                mounts[""] = mp
            elif fstype == "cgroup":
                for o in opts.split(","):
                    mounts.setdefault(o, mp)
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                if c in mounts:
                    out[c] = mounts[c] + path
    return out


def limits(dirs):
    files = {"memory": ["memory.limit_in_bytes"], "pids": ["pids.max"],
             "": ["memory.max", "pids.max", "cgroup.freeze"], "freezer": ["freezer.state"]}
    out = {}
    for c, d in dirs.items():
        for name in files.get(c, []):
            p = os.path.join(d, name)
            if os.path.exists(p):
                with open(p) as f:
                    out[p] = f.read().strip()
    return out


def test_cgroupfs_not_exposed_and_not_mountable(api, box):
    got = py(api, box["id"], """
res = {"ls": os.listdir("/sys/fs/cgroup"),
       "self": [l.split(":", 2)[2] for l in open("/proc/self/cgroup").read().splitlines()],
       "init": [l.split(":", 2)[2] for l in open("/proc/1/cgroup").read().splitlines()]}
res["mkdir"] = err(os.mkdir, "/sys/fs/cgroup/memory")
os.makedirs("/tmp/cg", exist_ok=True)
res["mount v1 memory"] = sc("mount", "cgroup", "/tmp/cg", "cgroup", 0, "memory")
res["mount v1 release_agent"] = sc("mount", "cgroup", "/tmp/cg", "cgroup", 0,
                                   "none,name=escape,release_agent=/workspace/x")
res["mount v1 rdma"] = sc("mount", "cgroup", "/tmp/cg", "cgroup", 0, "rdma")
res["mount v2"] = sc("mount", "cgroup2", "/tmp/cg", "cgroup2", 0, None)
res["cg empty"] = os.listdir("/tmp/cg")
found = []
for top in ("/sys", "/proc/sys", "/run", "/dev"):
    for d, dirs, files in os.walk(top):
        if d.startswith(("/sys/devices", "/sys/bus", "/sys/module", "/sys/class")):
            dirs[:] = []
            continue
        found += [d + "/" + f for f in files
                  if f in ("release_agent", "cgroup.procs", "tasks", "notify_on_release", "freezer.state")]
res["found"] = found
emit(res)
""")
    assert got["ls"] == [], f"cgroup hierarchy exposed: {got['ls']}"
    assert set(got["self"]) == {"/"} and set(got["init"]) == {"/"}, \
        f"the cgroup namespace does not hide the host's hierarchy: {got}"
    assert got["mkdir"] in ("EROFS", "EPERM", "ENOENT"), got  # sysfs: ENOENT
    for k in ("mount v1 memory", "mount v1 release_agent", "mount v1 rdma", "mount v2"):
        assert got[k] == [-1, "EPERM"], (k, got)
    assert got["cg empty"] == [] and got["found"] == [], got


def test_cannot_leave_cgroup_or_raise_limits(api, new_sandbox, daemon):
    sb = new_sandbox(resources={"pids": 48, "memory_mib": 192})
    ipid = init_pid(daemon, sb)
    dirs = host_cgroup_dirs(ipid)
    assert host_cgroup_mode() == "none" or any(sb["id"] in d for d in dirs.values()), dirs
    before = limits(dirs)
    assert before, f"no limit files found for {dirs}"
    # every host path of the sandbox's cgroups and their parents, as a hostile program would guess
    guesses = []
    for d in dirs.values():
        guesses += [d, os.path.dirname(d), "/sys/fs/cgroup"]
    got = py(api, sb["id"], f"""
res = {{}}
pid = str(os.getpid()).encode()
for g in {guesses!r}:
    for f, data in (("cgroup.procs", pid), ("tasks", pid), ("pids.max", b"max"),
                    ("memory.limit_in_bytes", b"-1"), ("memory.max", b"max"),
                    ("release_agent", b"/workspace/x"), ("notify_on_release", b"1"),
                    ("cgroup.subtree_control", b"-pids")):
        def w(p=g + "/" + f, data=data):
            fd = os.open(p, os.O_WRONLY)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        res[g + "/" + f] = err(w)
res["mkdir"] = err(os.mkdir, "/sys/fs/cgroup/escape")
# the pids limit still holds afterwards
kids, failed = [], None
for i in range(80):
    try:
        k = os.fork()
    except OSError as e:
        failed = errno.errorcode[e.errno]
        break
    if k == 0:
        import time; time.sleep(300); os._exit(0)  # held until killed below
    kids.append(k)
for k in kids:
    os.kill(k, 9)
for k in kids:
    os.waitpid(k, 0)
res["forks"] = [len(kids), failed]
emit(res)
""", timeout_s=60)
    forks = got.pop("forks")
    mk = got.pop("mkdir")
    for p, e in got.items():
        assert e in ("ENOENT", "EROFS", "EACCES", "EPERM"), f"write to {p} inside: {e}"
    assert mk in ("EROFS", "EPERM", "ENOENT"), mk
    assert forks[1] == "EAGAIN" and forks[0] < 48, f"pids limit not enforced: {forks}"
    # The host's view: same cgroups, same limits.
    assert host_cgroup_dirs(ipid) == dirs
    assert limits(dirs) == before, "the sandbox changed its cgroup limits"
    r = api.post(f"/v1/sandboxes/{sb['id']}/commands", {"argv": ["sleep", "30"]})
    assert r.status == 201, r
    seen, deadline = [], time.monotonic() + WAIT_S
    while not seen and time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and open(f"/proc/{pid}/cmdline").read() == "sleep\x0030\x00" \
                        and os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{ipid}/ns/pid"):
                    seen.append(int(pid))
            except OSError:
                pass
        time.sleep(0.02)
    assert len(seen) == 1, seen
    assert host_cgroup_dirs(seen[0]) == dirs, "a new command is not in the sandbox's cgroups"


def test_frozen_sandbox_cannot_thaw_itself(api, new_sandbox, daemon):
    sb = new_sandbox()
    sid = sb["id"]
    # A hostile loop: counts, and tries to thaw itself through every freezer file it can name.
    script = """
import os, time
n = 0
while True:
    n += 1
    with open("/workspace/counter.tmp", "w") as f:
        f.write(str(n))
    os.rename("/workspace/counter.tmp", "/workspace/counter")
    for p in ("/sys/fs/cgroup/freezer/freezer.state", "/sys/fs/cgroup/cgroup.freeze",
              "/sys/fs/cgroup/freezer.state"):
        try:
            with open(p, "w") as f:
                f.write("THAWED")
        except OSError:
            pass
    time.sleep(0.01)
"""
    r = api.post(f"/v1/sandboxes/{sid}/commands", {"argv": ["/usr/bin/python3", "-c", script]})
    assert r.status == 201, r
    counter = os.path.join(workspace_host_path(daemon, sid), "counter")

    def count():
        with open(counter) as f:
            return int(f.read())

    wait_for(lambda: os.path.exists(counter), what="the counter to start")
    c0 = count()
    wait_for(lambda: count() > c0, what="the counter to run (precondition)")
    r = api.post(f"/v1/sandboxes/{sid}/pause")
    assert r.status == 200 and r.json["state"] == "paused", r
    dirs = host_cgroup_dirs(init_pid(daemon, sb))
    state_files = [p for p in limits(dirs) if p.endswith(("freezer.state", "cgroup.freeze"))]
    assert state_files, dirs
    # The pause answers once the cgroup is frozen: from here on the counter must not move.
    c1 = count()
    time.sleep(0.5)
    assert count() == c1, "a paused sandbox kept running"
    for p in state_files:
        with open(p) as f:
            assert f.read().strip() in ("FROZEN", "1"), p
    assert api.get(f"/v1/sandboxes/{sid}").json["state"] == "paused"
    r = api.post(f"/v1/sandboxes/{sid}/resume")
    assert r.status == 200, r
    wait_for(lambda: count() > c1, what="the sandbox to resume")
    assert exec_(api, sid, argv=["true"])["exit_code"] == 0
