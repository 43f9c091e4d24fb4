"""cgroup v2 for real: the scenario run-cgroup-v2.sh boots a VM for (a Debian kernel with cgroup
v1 disabled, nothing else running). It starts the daemon as a supervisor would:

- undelegated: in a cgroup whose parent enables no controller, where the daemon must refuse to
  start with a message that says why and how to fix it, and leave nothing behind;
- crowded: in a delegated cgroup that another process shares (the same: refused, explained,
  nothing left);
- root: in the root cgroup;
- delegated: in system.slice/warren.service with the controllers enabled in system.slice, as
  systemd's Delegate=yes gives. After the kill -9 the supervisor removes the unit's cgroup and
  makes it anew, as systemd does: the daemon cannot undo its set-up then, and v2 lets no process
  into a cgroup that delegates controllers.

In the last two: create, exec, memory OOM, pids limit, pause/resume, delete, SIGTERM, restart,
kill -9 and restart. In the root cgroup sandboxes outlive the daemon (SIGTERM and kill -9): the
next daemon takes them over, cgroups included. In a delegated cgroup they go with it (v2 would
let no process into the daemon's cgroup while theirs are populated, so a supervisor could not
start it there again): after SIGTERM the delegated cgroup is as the supervisor gave it. One "cgroup-v2 PASS|FAIL step" line
per step, then "cgroup-v2: N passed, M failed". Standard library only.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import time

CG = "/sys/fs/cgroup"
HERE = os.path.dirname(os.path.abspath(__file__))
WARREN = os.path.join(HERE, "warren")
PORT = 7070
READY_TIMEOUT_S = 90  # TCG is slow
STOP_TIMEOUT_S = 60
HTTP_TIMEOUT_S = 120

passed = 0
failed = 0


class StepFailed(Exception):
    pass


def say(line):
    print(f"cgroup-v2 {line}", flush=True)


def check(cond, what):
    if not cond:
        raise StepFailed(what)


def wait_for(cond, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def read(path):
    with open(path) as f:
        return f.read()


def key(path, name):
    """The value of `name` in a flat keyed cgroup file (memory.events, cpu.stat, ...)."""
    for line in read(path).splitlines():
        k, _, v = line.partition(" ")
        if k == name:
            return v
    raise StepFailed(f"no {name} in {path}")


def subdirs(path):
    return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))


def rel(path):
    return path[len(CG):] or "/"


# ---------------------------------------------------------------------------------------------


def api(method, path, body=None, timeout=HTTP_TIMEOUT_S):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


def exec_(sid, **body):
    st, r = api("POST", f"/v1/sandboxes/{sid}/exec", body)
    check(st == 200, f"exec {body}: {st} {r}")
    return r


def entering(cgroup):
    """A preexec_fn that moves the child into `cgroup`, as a supervisor does before exec."""
    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")
    return enter


class Daemon:
    """warren serve, started in `cgroup` (a directory under /sys/fs/cgroup)."""

    def __init__(self, cgroup, state, tag):
        self.logpath = f"/tmp/warren-{tag}.log"
        self.log = open(self.logpath, "w")
        try:
            self.proc = subprocess.Popen(
                [WARREN, "serve", "--listen", f"127.0.0.1:{PORT}", "--state-dir", state],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                preexec_fn=entering(cgroup))
        except (OSError, subprocess.SubprocessError) as e:
            raise StepFailed(f"cannot start the daemon in {rel(cgroup)}: {e}")

    def output(self):
        self.log.flush()
        return read(self.logpath)

    def wait_ready(self):
        def up():
            if self.proc.poll() is not None:
                raise StepFailed(f"daemon exited {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                return api("GET", "/healthz", timeout=5)[0] == 200
            except OSError:
                return False
        wait_for(up, "the daemon to answer", READY_TIMEOUT_S)

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise StepFailed(f"daemon still running {STOP_TIMEOUT_S}s after signal {sig}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Scenario:
    def __init__(self, name):
        self.name = name
        self.daemon = None
        self.ok = True

    def step(self, label, fn):
        """Runs fn unless an earlier step of the scenario failed (what follows depends on it)."""
        global passed, failed
        if not self.ok:
            say(f"FAIL {self.name}: {label}: not run (an earlier step failed)")
            failed += 1
            return None
        t0 = time.monotonic()
        try:
            v = fn()
        except Exception as e:  # any failure is the step's: the next scenarios still run
            self.ok = False
            failed += 1
            say(f"FAIL {self.name}: {label}: {type(e).__name__}: {e}")
            if self.daemon is not None:
                for line in self.daemon.output().splitlines()[-25:]:
                    say(f"  daemon| {line}")
            return None
        passed += 1
        say(f"PASS {self.name}: {label} ({time.monotonic() - t0:.1f}s)")
        return v

    def finish(self):
        if self.daemon is not None:
            self.daemon.kill()


# ---------------------------------------------------------------------------------------------


def undelegated():
    """A cgroup whose parent delegates nothing: the daemon refuses to start, says why and what
    to do, and leaves no directory behind."""
    s = Scenario("undelegated")
    parent = os.path.join(CG, "plain.slice")
    home = os.path.join(parent, "warren.service")
    os.makedirs(home)
    check(read(os.path.join(parent, "cgroup.subtree_control")).strip() == "", "setup")

    def refused():
        s.daemon = Daemon(home, "/var/lib/warren-undelegated", "undelegated")
        try:
            rc = s.daemon.proc.wait(READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise StepFailed("the daemon started")
        out = s.daemon.output()
        check(rc != 0, f"exit status {rc}")
        for want in ("lacks the controllers", f"{rel(parent)}/cgroup.subtree_control",
                     "Delegate=yes"):
            check(want in out, f"{want!r} not in the daemon's message: {out[-1500:]}")
        check("No such file or directory" not in out, f"misleading message: {out[-1500:]}")
        say(f"info: the daemon said: {out.strip().splitlines()[-1]}")

    def nothing_left():
        check(subdirs(home) == [], f"left behind in {rel(home)}: {subdirs(home)}")
        check(read(os.path.join(home, "cgroup.procs")).strip() == "", "processes left")

    s.step("refuses with a clear message", refused)
    s.step("leaves no directory behind", nothing_left)
    s.finish()
    for d in (home, parent):
        try:
            os.rmdir(d)
        except OSError:
            pass


def crowded(home):
    """A delegated cgroup that holds another process: v2 cannot delegate controllers from it,
    and the daemon says so, and leaves it as it found it (back in it, no directory left)."""
    s = Scenario("crowded")
    os.makedirs(home)
    other = subprocess.Popen(["sleep", "600"], preexec_fn=entering(home))

    def refused():
        s.daemon = Daemon(home, "/var/lib/warren-crowded", "crowded")
        try:
            rc = s.daemon.proc.wait(READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise StepFailed("the daemon started")
        out = s.daemon.output()
        check(rc != 0, f"exit status {rc}")
        for want in ("other processes", "a cgroup of its own"):
            check(want in out, f"{want!r} not in the daemon's message: {out[-1500:]}")
        say(f"info: the daemon said: {out.strip().splitlines()[-1]}")

    def nothing_left():
        check(subdirs(home) == [], f"left behind in {rel(home)}: {subdirs(home)}")
        ctl = read(os.path.join(home, "cgroup.subtree_control")).strip()
        check(ctl == "", f"cgroup.subtree_control has {ctl!r}")
        procs = read(os.path.join(home, "cgroup.procs")).split()
        check(procs == [str(other.pid)], f"cgroup.procs: {procs}")

    s.step("refuses with a clear message", refused)
    s.step("leaves the cgroup as it found it", nothing_left)
    s.finish()
    other.kill()
    other.wait()
    os.rmdir(home)


def served(name, home):
    """The whole life of a daemon started in `home`."""
    s = Scenario(name)
    state = f"/var/lib/warren-{name}"
    delegated = home != CG
    sb = {}

    def sandbox_cg(sid):
        return os.path.join(home, "warren", sid)

    def start():
        s.daemon = Daemon(home, state, name)
        s.daemon.wait_ready()
        st, info = api("GET", "/v1/info")
        check(st == 200 and info["cgroup"]["mode"] == "v2", f"/v1/info: {info}")
        want = rel(home) + "/warren-daemon" if delegated else "/"
        got = read(f"/proc/{s.daemon.proc.pid}/cgroup").strip()
        check(got == f"0::{want}", f"the daemon is in {got}, not 0::{want}")

    def create(label, **resources):
        st, r = api("POST", "/v1/sandboxes", {"resources": resources})
        check(st == 201, f"create: {st} {r}")
        sb[label] = r["id"]
        d = sandbox_cg(r["id"])
        check(os.path.isdir(d), f"no cgroup {rel(d)}")
        check(read(os.path.join(d, "cgroup.procs")).split(), f"{rel(d)} holds no process")
        return d

    def create_a():
        d = create("a", memory_mib=64, pids=64, disk_mib=256)
        check(read(os.path.join(d, "memory.max")).strip() == str(64 << 20), "memory.max")
        check(read(os.path.join(d, "memory.swap.max")).strip() == "0", "memory.swap.max")
        check(read(os.path.join(d, "pids.max")).strip() == "64", "pids.max")

    def run_exec():
        r = exec_(sb["a"], argv=["sh", "-c", "echo hello; cat /proc/self/cgroup"])
        check(r["exit_code"] == 0 and r["stdout"] == "hello\n0::/\n", f"exec: {r}")

    def oom():
        r = exec_(sb["a"], argv=["python3", "-c", "x = bytearray(300 << 20)"])
        check(r["signal"] == 9 and r["oom_killed"] is True, f"exec: {r}")
        n = int(key(os.path.join(sandbox_cg(sb["a"]), "memory.events"), "oom_kill"))
        check(n >= 1, f"memory.events oom_kill {n}")
        r = exec_(sb["a"], argv=["true"])
        check(r["exit_code"] == 0 and r["oom_killed"] is False, f"after the OOM: {r}")

    def pids():
        d = create("b", pids=16, disk_mib=256)
        r = exec_(sb["b"], timeout_s=30,
                  shell="i=0; while [ $i -lt 40 ]; do sleep 600 >/dev/null 2>&1 & i=$((i+1)); done")
        n = int(key(os.path.join(d, "pids.events"), "max"))
        cur = int(read(os.path.join(d, "pids.current")))
        check(n >= 1, f"pids.events max {n} (exec: {r})")
        check(cur <= 16, f"pids.current {cur} > 16")

    def pause_resume():
        sid = sb["a"]
        d = sandbox_cg(sid)
        st, r = api("POST", f"/v1/sandboxes/{sid}/commands", {"shell": "while :; do :; done"})
        check(st == 201, f"command: {st} {r}")

        def usage():
            return int(key(os.path.join(d, "cpu.stat"), "usage_usec"))
        u0 = usage()
        wait_for(lambda: usage() > u0 + 100000, "the busy loop to run")
        st, r = api("POST", f"/v1/sandboxes/{sid}/pause")
        check(st == 200 and r["state"] == "paused", f"pause: {st} {r}")
        check(key(os.path.join(d, "cgroup.events"), "frozen") == "1", "cgroup.events: not frozen")
        u1 = usage()
        time.sleep(0.5)  # the time in which a running loop would have used CPU
        check(usage() == u1, "the sandbox used CPU while paused")
        st, r = api("POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["true"]})
        check(st == 409, f"exec while paused: {st}")
        st, r = api("POST", f"/v1/sandboxes/{sid}/resume")
        check(st == 200 and r["state"] == "running", f"resume: {st} {r}")
        check(key(os.path.join(d, "cgroup.events"), "frozen") == "0", "still frozen")
        wait_for(lambda: usage() > u1 + 100000, "the busy loop to run again")

    def delete():
        d = sandbox_cg(sb["b"])  # full of sleeping processes
        st, r = api("DELETE", f"/v1/sandboxes/{sb['b']}")
        check(st == 204, f"delete: {st} {r}")
        wait_for(lambda: not os.path.exists(d), f"{rel(d)} to go")

    def sigterm():
        rc = s.daemon.stop(signal.SIGTERM)
        check(rc == 0, f"exit status {rc}")
        if not delegated:
            # Sandbox a is still busy and outlives the daemon, in its cgroup.
            d = sandbox_cg(sb["a"])
            check(key(os.path.join(d, "cgroup.events"), "populated") == "1",
                  f"{rel(d)} is empty: sandbox a did not outlive the daemon")
            return
        # Sandbox a was still busy: stopping must end it and remove everything.
        left = [x for x in subdirs(home) if x.startswith("warren")]
        check(not left, f"left behind in {rel(home)}: {left}")
        if delegated:
            # As the supervisor gave it: no controller enabled, no child, nobody in it.
            ctl = read(os.path.join(home, "cgroup.subtree_control")).strip()
            check(ctl == "", f"{rel(home)}/cgroup.subtree_control still has {ctl!r}")
            check(subdirs(home) == [], f"left in {rel(home)}: {subdirs(home)}")
            procs = read(os.path.join(home, "cgroup.procs")).split()
            check(procs == [], f"processes left in {rel(home)}: {procs}")

    def restart():
        start()
        st, r = api("GET", f"/v1/sandboxes/{sb['a']}")
        if delegated:
            check(st == 200 and r["state"] == "stopped", f"sandbox a after SIGTERM: {st} {r}")
        else:
            check(st == 200 and r["state"] == "running", f"sandbox a not taken over: {st} {r}")
            r = exec_(sb["a"], argv=["cat", "/proc/self/cgroup"])
            check(r["exit_code"] == 0 and r["stdout"] == "0::/\n", f"exec in a: {r}")
        create("c", disk_mib=256)
        r = exec_(sb["c"], argv=["true"])
        check(r["exit_code"] == 0, f"exec: {r}")

    def kill9():
        d = sandbox_cg(sb["c"])
        s.daemon.stop(signal.SIGKILL)
        if not delegated:
            # They outlive even a crash.
            check(key(os.path.join(d, "cgroup.events"), "populated") == "1",
                  f"{rel(d)} is empty: sandbox c did not outlive the daemon")
            return
        # Delegated: every sandbox dies with the daemon (PDEATHSIG).
        wait_for(lambda: key(os.path.join(home, "cgroup.events"), "populated") == "0",
                 "the sandboxes to die with the daemon")
        if delegated:
            # Nothing could undo the daemon's set-up: like systemd for a unit whose processes
            # are all gone, the supervisor removes its cgroup and makes it anew.
            for root, dirs, _ in os.walk(home, topdown=False):
                for x in dirs:
                    os.rmdir(os.path.join(root, x))
            os.rmdir(home)
            os.mkdir(home)

    def restart_after_kill():
        d = sandbox_cg(sb["c"])
        start()
        st, r = api("GET", f"/v1/sandboxes/{sb['c']}")
        if delegated:
            check(st == 404 or r.get("state") != "running", f"crashed sandbox: {st} {r}")
            wait_for(lambda: not os.path.exists(d), f"the crashed sandbox's {rel(d)} to go")
        else:
            check(st == 200 and r["state"] == "running", f"sandbox c not taken over: {st} {r}")
            check(exec_(sb["c"], argv=["true"])["exit_code"] == 0, "exec in c")
        create("d", disk_mib=256)
        r = exec_(sb["d"], argv=["sh", "-c", "echo again"])
        check(r["exit_code"] == 0 and r["stdout"] == "again\n", f"exec: {r}")

    s.step("start", start)
    s.step("create (memory.max, memory.swap.max, pids.max)", create_a)
    s.step("exec", run_exec)
    s.step("memory OOM", oom)
    s.step("pids limit", pids)
    s.step("pause/resume", pause_resume)
    s.step("delete", delete)
    s.step("SIGTERM leaves the cgroup as given", sigterm)
    s.step("restart in the same cgroup", restart)
    s.step("kill -9", kill9)
    s.step("restart after kill -9", restart_after_kill)
    def delete_all_then_sigterm():
        # The daemon's own cgroups go once no sandbox keeps them.
        st, r = api("GET", "/v1/sandboxes")
        for x in r["sandboxes"] if st == 200 else []:
            api("DELETE", f"/v1/sandboxes/{x['id']}")
        rc = s.daemon.stop(signal.SIGTERM)
        check(rc == 0, f"exit status {rc}")
        left = [x for x in subdirs(home) if x.startswith("warren")]
        check(not left, f"left behind in {rel(home)}: {left}")

    s.step("SIGTERM after the restart", delete_all_then_sigterm)
    s.finish()


def main():
    say(f"info: kernel {os.uname().release}; {read('/proc/cmdline').strip()}")
    ok = os.path.exists(os.path.join(CG, "cgroup.controllers")) and not os.path.exists(
        os.path.join(CG, "memory"))
    say(f"info: {CG}: {read(os.path.join(CG, 'cgroup.controllers')).strip()}")
    if not ok:
        say("FAIL setup: /sys/fs/cgroup is not cgroup v2 alone")
        print("cgroup-v2: 0 passed, 1 failed", flush=True)
        return 1
    undelegated()
    served("root", CG)
    # What systemd sets up for a Delegate=yes unit: the controllers enabled down to the
    # unit's parent, the unit's cgroup left to the daemon.
    slice_ = os.path.join(CG, "system.slice")
    os.makedirs(os.path.join(slice_, "warren.service"))
    for d in (CG, slice_):
        with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
            f.write("+memory +pids +cpu")
    crowded(os.path.join(slice_, "crowded.service"))
    served("delegated", os.path.join(slice_, "warren.service"))
    print(f"cgroup-v2: {passed} passed, {failed} failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
