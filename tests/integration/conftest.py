"""Fixtures for the warren integration tests.

Every test module gets its own daemon (``daemon``), started on a free port with a fresh state
dir, and checked on the way out: its sandboxes are deleted (they would outlive it otherwise), it
must exit 0 on SIGTERM and leave nothing behind (no process of its tree, no mount under its state
dir — the pinned mount namespace included —, no loop device, no per-sandbox directory, no cgroup of
one of its sandboxes). ``fresh_daemon`` is a factory for tests that need a daemon of their own;
``Daemon.kill9()`` and ``Daemon.restart_same()`` crash and restart one on the same state dir.

Standard library only; run with ``/usr/bin/python3 -m pytest tests/integration``.
"""

import glob
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WARREN_BIN = os.environ.get("WARREN_BIN") or os.path.join(REPO, "build", "warren")

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30
HTTP_TIMEOUT_S = 60
# How long a test waits for something that should happen soon. Generous on purpose: the machine
# may be loaded, and a wait that succeeds returns as soon as the condition holds.
WAIT_S = 30


def wait_for(fn, timeout=WAIT_S, interval=0.05, what="condition"):
    """Calls fn until it returns a truthy value and returns that value; fails after `timeout` s
    (fn is called once more at the deadline, so a slow fn still gets its last chance)."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                 f"(last: {last!r})")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# /proc helpers


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except (OSError, ValueError):
        return None


def proc_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def proc_stat(pid):
    """(state, ppid, starttime) of a process, or None if it is gone."""
    s = _read(f"/proc/{pid}/stat")
    if not s:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[19])


def proc_cmdline(pid):
    b = _read(f"/proc/{pid}/cmdline", "rb")
    return b.replace(b"\0", b" ").decode("utf-8", "replace").strip() if b else ""


def proc_exe(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def descendants(root_pid):
    """{pid: starttime} of every live descendant of root_pid (not root_pid itself)."""
    children = {}
    for pid in proc_pids():
        st = proc_stat(pid)
        if st:
            children.setdefault(st[1], []).append((pid, st[2]))
    out, todo = {}, [root_pid]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid not in out:
                out[pid] = start
                todo.append(pid)
    return out


def alive_same(pid, starttime):
    """True if pid is still the same (non-zombie) process."""
    st = proc_stat(pid)
    return bool(st) and st[2] == starttime and st[0] not in ("Z", "X")


def sigint_default():
    """preexec_fn of a child that a test interrupts with SIGINT: a test run started in the
    background or under nohup has SIGINT ignored, which the child would inherit and honour."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def daemon_fd_count(daemon):
    return len(os.listdir(f"/proc/{daemon.pid}/fd"))


def daemon_fds_quiet(daemon, timeout=2.0):
    """The daemon's fd count once it stops changing (connections of earlier requests are closed
    asynchronously): two equal readings 100 ms apart, or the last one after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = daemon_fd_count(daemon)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = daemon_fd_count(daemon)
        if now == last:
            return now
        last = now
    return last


def cgroup_dirs_of(ids, depth=6):
    """Cgroup directories under /sys/fs/cgroup whose name contains one of `ids` (v1: one per
    controller; v2: one)."""
    found = []

    def walk(path, level):
        if level > depth:
            return
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for e in entries:
            try:
                if not e.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            if any(i in e.name for i in ids):
                found.append(e.path)
            else:
                walk(e.path, level + 1)

    walk("/sys/fs/cgroup", 0)
    return found


def host_cgroup_mode():
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2"
    if os.path.isdir("/sys/fs/cgroup/memory") or os.path.isdir("/sys/fs/cgroup/pids"):
        return "v1"
    return "none"


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------------------------
# HTTP client


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    @property
    def error_code(self):
        try:
            return self.json["error"]["code"]
        except (TypeError, KeyError):
            return None

    @property
    def error_message(self):
        try:
            return self.json["error"]["message"]
        except (TypeError, KeyError):
            return None

    def __repr__(self):
        return f"<Response {self.status} {self.body[:600]!r}>"


class Api:
    def __init__(self, daemon):
        self.daemon = daemon
        self.host = "127.0.0.1"
        self.port = daemon.port

    def request(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT_S):
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            r = conn.getresponse()
            data = r.read()
            resp = Response(r.status, r.headers, data)
        finally:
            conn.close()
        # Remember every sandbox this daemon created, for the leftover checks at teardown.
        if (method == "POST" and path.split("?")[0].rstrip("/") == "/v1/sandboxes"
                and resp.status == 201 and isinstance(resp.json, dict) and "id" in resp.json):
            self.daemon.created_ids.add(resp.json["id"])
        return resp

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def delete(self, path, headers=None):
        return self.request("DELETE", path, headers=headers)

    def post(self, path, json_body=None, raw=None, headers=None, timeout=HTTP_TIMEOUT_S):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        if raw is not None:
            body = raw
        elif json_body is not None:
            body = json.dumps(json_body).encode()
        else:
            body = None
        return self.request("POST", path, body=body, headers=h, timeout=timeout)

    # conveniences
    def create(self, **spec):
        r = self.post("/v1/sandboxes", spec)
        assert r.status == 201, f"create {spec!r}: {r!r}"
        return r.json

    def remove(self, sb):
        r = self.delete("/v1/sandboxes/" + urllib.parse.quote(sb, safe=""))
        assert r.status in (204, 404), f"delete {sb}: {r!r}"
        return r

    def healthy(self):
        try:
            r = self.get("/healthz")
        except OSError:
            return False
        return r.status == 200 and r.json == {"status": "ok"}


def exec_(api, sb_id, **body):
    """POST /v1/sandboxes/{sb_id}/exec with body; asserts 200 and returns the JSON."""
    timeout = max(HTTP_TIMEOUT_S, float(body.get("timeout_s", 0) or 0) + 30)
    r = api.post(f"/v1/sandboxes/{sb_id}/exec", body, timeout=timeout)
    assert r.status == 200, f"exec {body!r} in {sb_id}: {r!r}"
    assert isinstance(r.json, dict), r
    return r.json


def sh(api, sb_id, script, **body):
    """exec_ with ["sh", "-c", script]."""
    return exec_(api, sb_id, argv=["sh", "-c", script], **body)


# ---------------------------------------------------------------------------------------------
# Daemon


class Daemon:
    def __init__(self, bin_path=WARREN_BIN, extra_args=()):
        self.bin = bin_path
        self.base_dir = tempfile.mkdtemp(prefix="warren-test-")
        # mkdtemp makes the dir 0700, which is the hard case: the sandbox's uid cannot traverse
        # it, so the daemon must open everything it binds from there before the child drops
        # to that uid.
        self.state_dir = os.path.join(self.base_dir, "state")
        os.mkdir(self.state_dir, 0o755)
        self.log_path = os.path.join(self.base_dir, "daemon.log")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.created_ids = set()
        self.proc = None
        self.stopped = False
        self.extra_args = list(extra_args)

    @property
    def pid(self):
        return self.proc.pid

    def sandbox_path(self, sid, *rel):
        """A path in a sandbox's directory as the daemon sees it: its disk is mounted in the
        daemon's own mount namespace, so the host reaches it through /proc/PID/root."""
        return os.path.join(f"/proc/{self.pid}/root" + self.state_dir, "sandboxes", sid, *rel)

    def log(self, limit=20000):
        data = _read(self.log_path, "rb") or b""
        return data[-limit:].decode("utf-8", "replace")

    def start(self):
        if not os.access(self.bin, os.X_OK):
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.stopped = True
            pytest.fail(f"warren binary not found or not executable: {self.bin} "
                        "(build it, or set WARREN_BIN)")
        argv = [self.bin, "serve", "--listen", f"127.0.0.1:{self.port}",
                "--state-dir", self.state_dir] + self.extra_args
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, cwd=self.base_dir)
        deadline = time.monotonic() + START_TIMEOUT_S
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stopped = True
                pytest.fail(f"warren exited with {self.proc.returncode} during start-up; "
                            f"log ({self.log_path}):\n{self.log()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                r.read()
                conn.close()
                if r.status == 200:
                    return self
                last = f"status {r.status}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        self.stopped = True
        pytest.fail(f"warren did not answer GET /healthz within {START_TIMEOUT_S}s ({last}); "
                    f"log ({self.log_path}):\n{self.log()}")

    # -- leftovers ---------------------------------------------------------------------------

    def _leftovers(self, tree):
        problems = []
        me = os.getpid()
        for pid, start in tree.items():
            if alive_same(pid, start):
                problems.append(f"process {pid} of the daemon's tree still alive: "
                                f"{proc_cmdline(pid)!r} exe={proc_exe(pid)!r}")
        for pid in proc_pids():
            if pid == me or pid in tree:
                continue
            st = proc_stat(pid)
            if not st or st[0] in ("Z", "X"):
                continue
            cmd = proc_cmdline(pid)
            if self.state_dir in cmd:
                problems.append(f"process {pid} mentions the state dir: {cmd!r}")
                continue
            cg = _read(f"/proc/{pid}/cgroup") or ""
            for sid in self.created_ids:
                if sid in cg:
                    problems.append(f"process {pid} ({cmd!r}) is still in a cgroup of "
                                    f"sandbox {sid}: {cg.strip()!r}")
                    break
        mounts = _read("/proc/self/mountinfo") or ""
        for line in mounts.splitlines():
            if self.base_dir in line:
                problems.append(f"mount left behind: {line}")
        # Sandbox disks are loop-mounted images: every loop device must be released.
        for dev in glob.glob("/sys/block/loop*/loop/backing_file"):
            backing = _read(dev) or ""
            if self.base_dir in backing:
                problems.append(f"loop device left behind: {dev} -> {backing.strip()}")
        sbdir = os.path.join(self.state_dir, "sandboxes")
        if os.path.isdir(sbdir):
            left = sorted(os.listdir(sbdir))
            if left:
                problems.append(f"per-sandbox dirs left in {sbdir}: {left}")
        if self.created_ids:
            problems += self._cgroup_leftovers()
        return problems

    def _cgroup_leftovers(self):
        return [f"cgroup left behind: {d}" for d in cgroup_dirs_of(self.created_ids)]

    def kill9(self):
        """Crash the daemon (SIGKILL); its sandboxes keep running."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.logf.close()

    def restart_same(self, extra_args=None):
        """Start a new daemon on the same state dir and port (the previous one has exited)."""
        assert self.proc.poll() is not None, "the previous daemon still runs"
        if extra_args is not None:
            self.extra_args = list(extra_args)
        self.stopped = False
        self.start()
        return self

    def delete_all(self):
        """Delete every sandbox of a live daemon (they outlive it otherwise)."""
        api = Api(self)
        try:
            r = api.get("/v1/sandboxes")
            for sb in (r.json or {}).get("sandboxes", []) if r.status == 200 else []:
                api.remove(sb["id"])
            wait_for(lambda: not api.get("/v1/sandboxes").json["sandboxes"],
                     what="every sandbox deleted")
        except (OSError, AssertionError):
            pass

    def restart(self):
        """Replace a dead daemon by a new one (new port and state dir), in place. What the dead
        one left running is deleted first, by a daemon on its state dir."""
        try:
            self.restart_same()
            self.stop(check=False)
        except BaseException:  # noqa: BLE001 - the new daemon is what matters
            pass
        fresh = Daemon(self.bin, self.extra_args)
        self.__dict__.update(fresh.__dict__)
        self.start()

    def stop(self, check=True):
        """SIGTERM, wait, and (if check) assert exit 0 and no leftovers."""
        if self.stopped:
            return
        self.stopped = True
        problems = []
        if self.proc.poll() is None:
            self.delete_all()
        tree = descendants(self.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT_S)
            if rc != 0:
                problems.append(f"daemon exited with status {rc} on SIGTERM (expected 0)")
        except subprocess.TimeoutExpired:
            problems.append(f"daemon did not exit within {STOP_TIMEOUT_S}s of SIGTERM")
            self.proc.kill()
            self.proc.wait()
        self.logf.close()
        # Give orphans a moment to be reaped before calling them leftovers.
        deadline = time.monotonic() + WAIT_S
        left = self._leftovers(tree)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self._leftovers(tree)
        problems += left
        if left:
            # Do not leave processes of ours running on the machine.
            for pid, start in tree.items():
                if alive_same(pid, start):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        mounted = any(self.base_dir in l for l in (_read("/proc/self/mountinfo") or "").splitlines())
        if not problems and not mounted:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if problems and check:
            msg = "\n  ".join(problems)
            pytest.fail(f"warren daemon (state {self.state_dir}) teardown problems:\n  {msg}\n"
                        f"log ({self.log_path}):\n{self.log()}", pytrace=False)


def _start_daemon(**kw):
    d = Daemon(**kw)
    d.start()
    return d


@pytest.fixture(scope="module")
def daemon():
    d = _start_daemon()
    yield d
    d.stop()


@pytest.fixture
def fresh_daemon():
    """Factory: fresh_daemon() -> a new started Daemon, stopped and checked after the test."""
    started = []

    def make(**kw):
        d = _start_daemon(**kw)
        started.append(d)
        return d

    yield make
    errors = []
    for d in started:
        try:
            d.stop()
        except BaseException as e:  # noqa: BLE001 - collect all, report all
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def api(daemon):
    if daemon.proc.poll() is not None:
        # It died during an earlier test. Report that here, once, and give the rest of the
        # module a new daemon so that one crash does not fail every later test.
        rc, log, state = daemon.proc.returncode, daemon.log(), daemon.state_dir
        left = daemon._leftovers({})
        daemon.restart()
        pytest.fail(f"the daemon died (status {rc}) during an earlier test; restarted it. "
                    f"Leftovers of the dead one: {left}\nlog of the dead one ({state}):\n{log}",
                    pytrace=False)
    a = Api(daemon)
    assert a.healthy(), f"daemon not healthy before the test; log:\n{daemon.log()}"
    return a


@pytest.fixture
def sandbox(api):
    r = api.post("/v1/sandboxes", {})
    assert r.status == 201, f"create sandbox: {r!r}"
    sb = r.json
    yield sb
    api.remove(sb["id"])


@pytest.fixture
def new_sandbox(api):
    """Factory: new_sandbox(**spec) -> Sandbox JSON (asserts 201); all deleted after the test."""
    made = []

    def make(**spec):
        sb = api.create(**spec)
        made.append(sb["id"])
        return sb

    yield make
    for sid in made:
        api.remove(sid)


def pytest_report_header(config):
    return [f"warren binary: {WARREN_BIN}"]

