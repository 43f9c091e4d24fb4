"""Helpers for test_exhaustion.py: is the daemon still responsive while one sandbox exhausts a
resource, and did that sandbox leave anything behind once deleted?

- ``Neighbour``: a bystander sandbox whose exec round-trip (``["true"]``) is measured before an
  attack (baseline) and continuously while it runs; the p50 during the attack must stay within
  ``RTT_FACTOR`` times the baseline p50. The baseline is floored at ``RTT_FLOOR_S``: an exec of
  ``true`` takes 3-10 ms here (more under ASan), and on a shared, noisy 2-core VM a few ms of
  scheduling jitter alone would otherwise decide the test. 3 x 10 ms = 30 ms still catches a
  daemon whose loop is blocked or starved by an attack (those show up as 100s of ms or seconds).
  Each sample also times a GET /healthz (the daemon's event loop alone, no process started),
  reported next to the exec p50: when exec slows down but /healthz does not, the time goes to
  starting processes (the kernel), not to a blocked daemon loop.
- ``Poller``: samples a value (the daemon's RSS, a sandbox's pids, ...) in a thread.
- host-side views of the daemon (RSS, fds) and of one sandbox (its processes, cgroup dirs,
  state dir), and ``assert_deleted_clean`` which DELETEs a sandbox and checks all of them.

Standard library only.
"""

import http.client
import os
import statistics
import threading
import time
import urllib.parse

from conftest import (WAIT_S, alive_same, cgroup_dirs_of, daemon_fd_count, exec_,
                      host_cgroup_mode, proc_cmdline, proc_stat)

RTT_FLOOR_S = 0.010  # baseline p50 floor, see the module docstring
RTT_FACTOR = 3
RTT_SAMPLES = 15  # execs for the baseline, and at least as many during an attack
RTT_PAUSE_S = 0.025  # between two samples during an attack: a neighbour is a user, not a load
#                      generator (back-to-back execs alone halve the daemon's output drain rate)

MiB = 1 << 20


def p50(xs):
    return statistics.median(xs) if xs else float("nan")


def ms(x):
    return f"{x * 1000:.1f} ms"


def exec_rtt(api, sid):
    """Seconds one exec of ["true"] takes, request to answer."""
    t0 = time.monotonic()
    r = exec_(api, sid, argv=["true"], timeout_s=60)
    dt = time.monotonic() - t0
    assert r["exit_code"] == 0, f"neighbour exec of true: {r!r}"
    return dt


def healthz_rtt(api):
    """Seconds one GET /healthz takes on a fresh connection."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection(api.host, api.port, timeout=60)
    try:
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        assert r.status == 200, f"GET /healthz: {r.status}"
    finally:
        c.close()
    return time.monotonic() - t0


class Neighbour:
    """A bystander sandbox. Use::

        nb = Neighbour(api, new_sandbox()["id"])
        nb.baseline()
        with nb.during("fork bomb"):
            ...the attack...
        nb.check()   # p50 during <= RTT_FACTOR * max(baseline p50, RTT_FLOOR_S)
    """

    def __init__(self, api, sid):
        self.api = api
        self.sid = sid
        self.base = []
        self.attack = []  # samples started while the attack ran
        self.after = []  # samples taken after it, only to reach RTT_SAMPLES
        self.base_hz, self.attack_hz = [], []  # GET /healthz times, same moments
        self.what = "attack"
        self._stop = threading.Event()
        self._thread = None
        self._error = None

    def baseline(self, n=RTT_SAMPLES):
        exec_rtt(self.api, self.sid)  # warm-up (connection, page cache), not counted
        self.base, self.base_hz = [], []
        for _ in range(n):
            self.base.append(exec_rtt(self.api, self.sid))
            self.base_hz.append(healthz_rtt(self.api))
        return p50(self.base)

    def _loop(self):
        try:
            while not self._stop.is_set():
                self.attack.append(exec_rtt(self.api, self.sid))
                self.attack_hz.append(healthz_rtt(self.api))
                self._stop.wait(RTT_PAUSE_S)
        except BaseException as e:  # noqa: BLE001 - reported by during()
            self._error = e

    def during(self, what, min_samples=RTT_SAMPLES):
        nb = self

        class _Ctx:
            def __enter__(self):
                nb.what = what
                nb.attack, nb.after, nb.attack_hz = [], [], []
                nb._stop.clear()
                nb._thread = threading.Thread(target=nb._loop, daemon=True)
                nb._thread.start()
                return nb

            def __exit__(self, et, ev, tb):
                nb._stop.set()
                nb._thread.join(120)
                assert not nb._thread.is_alive(), \
                    f"neighbour exec hung for 120 s during {what}"
                if et is None and nb._error is not None:
                    raise AssertionError(f"neighbour exec failed during {what}: "
                                         f"{nb._error!r}") from nb._error
                # A short attack: top up to min_samples right after it (noted in the report).
                while et is None and len(nb.attack) + len(nb.after) < min_samples:
                    nb.after.append(exec_rtt(nb.api, nb.sid))
                return False

        return _Ctx()

    def limit(self):
        return RTT_FACTOR * max(p50(self.base), RTT_FLOOR_S)

    def report(self):
        during = self.attack + self.after
        return (f"neighbour RTT [{self.what}]: baseline p50 {ms(p50(self.base))} "
                f"(n={len(self.base)}, max {ms(max(self.base))}); during p50 {ms(p50(during))} "
                f"(n={len(self.attack)}+{len(self.after)} after, max {ms(max(during))}); "
                f"limit {ms(self.limit())}; GET /healthz p50 {ms(p50(self.base_hz))} before, "
                f"{ms(p50(self.attack_hz))} during (max {ms(max(self.attack_hz or [0]))})")

    def check(self):
        assert self.base, "Neighbour.baseline() was not called"
        during = self.attack + self.after
        line = self.report()
        print("\n" + line)
        assert p50(during) <= self.limit(), f"daemon not responsive: {line}"


class Poller:
    """Calls fn() every `interval` s in a thread while in the `with` block; .values, .max()."""

    def __init__(self, fn, interval=0.1):
        self.fn = fn
        self.interval = interval
        self.values = []
        self._stop = threading.Event()
        self._thread = None
        self.error = None

    def _loop(self):
        while True:
            try:
                v = self.fn()
                if v is not None:
                    self.values.append(v)
            except Exception as e:  # noqa: BLE001 - sampling must not kill the attack
                self.error = e
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        return False

    def max(self):
        return max(self.values) if self.values else None


# ---------------------------------------------------------------------------------------------
# the daemon, from the host


def daemon_rss_kib(daemon):
    with open(f"/proc/{daemon.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{daemon.pid}/status")


def daemon_cpu_s(daemon):
    """CPU seconds (user + system) the daemon has used so far."""
    with open(f"/proc/{daemon.pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_fds_settled(daemon, above, timeout=WAIT_S):
    """The daemon's fd count, once it is <= `above` or `timeout` s have passed (connections of
    earlier requests are closed asynchronously)."""
    deadline = time.monotonic() + timeout
    n = daemon_fd_count(daemon)
    while n > above and time.monotonic() < deadline:
        time.sleep(0.05)
        n = daemon_fd_count(daemon)
    return n


def host_free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def host_free_inodes(path):
    return os.statvfs(path).f_favail


# ---------------------------------------------------------------------------------------------
# one sandbox, from the host


def sandbox_host_pids(sid):
    """{pid: starttime} of live (non-zombie) host processes in a cgroup of sandbox `sid`."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cgroup") as f:
                cg = f.read()
        except OSError:
            continue
        if sid in cg:
            st = proc_stat(int(d))
            if st and st[0] not in ("Z", "X"):
                found[int(d)] = st[2]
    return found


def sandbox_cgroup_dirs(sid):
    """Cgroup directories of sandbox `sid` (v1: one per controller; v2: one)."""
    return cgroup_dirs_of([sid])


def sandbox_cgroup_file(sid, name):
    """Contents (stripped) of cgroup file `name` (e.g. memory.limit_in_bytes) in the sandbox's
    cgroup dirs, or None if no dir of the sandbox has it."""
    for d in sandbox_cgroup_dirs(sid):
        p = os.path.join(d, name)
        if os.path.exists(p):
            with open(p) as f:
                return f.read().strip()
    return None


def sandbox_state_dir(daemon, sid):
    return os.path.join(daemon.state_dir, "sandboxes", sid)


def assert_deleted_clean(api, daemon, sid, delete_timeout=15.0):
    """DELETE the sandbox, then: it answers 404, none of its processes is left on the host,
    its cgroup directories and its state directory are gone. Returns the DELETE's seconds."""
    cgroups = sandbox_cgroup_dirs(sid)
    if host_cgroup_mode() != "none":
        assert cgroups, f"no cgroup dir of sandbox {sid} found before DELETE"
    procs = sandbox_host_pids(sid)
    assert procs, f"sandbox {sid} has no process on the host before DELETE (not running?)"
    t0 = time.monotonic()
    r = api.delete("/v1/sandboxes/" + urllib.parse.quote(sid, safe=""))
    took = time.monotonic() - t0
    assert r.status == 204, f"DELETE {sid}: {r!r}"
    assert took < delete_timeout, f"DELETE {sid} took {took:.1f} s"
    g = api.get(f"/v1/sandboxes/{sid}")
    assert g.status == 404, f"GET of the deleted {sid}: {g!r}"
    # DELETE is synchronous (docs/API.md): every process is dead when it answers.
    left = {p: s for p, s in procs.items() if alive_same(p, s)}
    left.update(sandbox_host_pids(sid))
    assert not left, f"processes of deleted sandbox {sid} still alive: " + \
        ", ".join(f"{p} {proc_cmdline(p)!r}" for p in left)
    if cgroups:
        deadline = time.monotonic() + WAIT_S
        still = [c for c in cgroups if os.path.exists(c)]
        while still and time.monotonic() < deadline:
            time.sleep(0.1)
            still = [c for c in cgroups if os.path.exists(c)]
        assert not still, f"cgroup dirs of deleted sandbox {sid} left: {still}"
    assert not os.path.exists(sandbox_state_dir(daemon, sid)), \
        f"state dir of deleted sandbox {sid} left: {sandbox_state_dir(daemon, sid)}"
    return took
