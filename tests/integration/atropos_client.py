"""Shared helpers for the atropos slot protocol tests (test_atropos_*.py).

The protocol is described in shared/compat-atropos.md: warren started with ``--slots N`` serves
``/execute``, ``/batch``, ``/health``, ``/slots``, ``/reset`` and ``/artifacts/*`` on its port.

Each test module imports ``slots_daemon`` (a module-scoped daemon started with ``--slots 4``) and
``slots`` (a client for it, checked to be alive before every test).
"""

import http.client
import json
import threading
import time
import uuid

import pytest

from conftest import Daemon

NSLOTS = 4
SLOT_IDS = [f"slot_{i}" for i in range(NSLOTS)]
EXEC_KEYS = {"success", "output", "error", "execution_id", "metadata"}
INVALID_JSON = {"success": False, "error": "Invalid JSON"}
TRUNC = "\n... (output truncated)"
DENIED = "Access denied: path outside workspace"

_UNSET = object()


class SlotsClient:
    """A tiny HTTP/1.1 JSON client for the slot protocol (one connection per request)."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.port = daemon.port

    # -- raw -------------------------------------------------------------------------------------

    def request(self, method, path, body=_UNSET, raw=None, timeout=60):
        """Sends a request; returns (status, parsed JSON body or None, raw body bytes)."""
        headers = {}
        data = None
        if raw is not None:
            data = raw.encode() if isinstance(raw, str) else raw
            headers["Content-Type"] = "application/json"
        elif body is not _UNSET:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            payload = r.read()
            status = r.status
        finally:
            conn.close()
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = None
        return status, parsed, payload

    def get(self, path, timeout=60):
        status, body, _ = self.request("GET", path, timeout=timeout)
        return status, body

    def post(self, path, body=_UNSET, raw=None, timeout=60):
        status, parsed, _ = self.request("POST", path, body=body, raw=raw, timeout=timeout)
        return status, parsed

    # -- /execute --------------------------------------------------------------------------------

    def execute(self, slot_id, tool, args=None, timeout=30, execution_id=_UNSET, http_timeout=None):
        """POST /execute the way SandboxExecutor does (uuid4 execution_id, explicit timeout).

        Asserts HTTP 200 and the documented response shape; returns the response dict."""
        req = {"slot_id": slot_id, "tool": tool, "args": {} if args is None else args}
        if execution_id is _UNSET:
            execution_id = str(uuid.uuid4())
        if execution_id is not None:
            req["execution_id"] = execution_id
        if timeout is not None:
            req["timeout"] = timeout
        if http_timeout is None:
            http_timeout = float(timeout or 30) + 30
        status, body = self.post("/execute", req, timeout=http_timeout)
        assert status == 200, f"POST /execute {req!r} -> {status} {body!r}"
        check_exec_response(body, req)
        if execution_id is not None:
            assert body["execution_id"] == execution_id, (req, body)
        return body

    def bash(self, slot_id, command, timeout=30, **args):
        return self.execute(slot_id, "bash", dict(args, command=command), timeout=timeout)

    def ok(self, slot_id, command, timeout=30, **args):
        """bash that must succeed; returns its output."""
        r = self.bash(slot_id, command, timeout=timeout, **args)
        assert r["success"] is True and r["error"] == "", (command, r)
        return r["output"]

    def stateful(self, slot_id, command, timeout=30, **args):
        return self.execute(slot_id, "bash_stateful", dict(args, command=command), timeout=timeout)

    def tmux(self, slot_id, timeout=30, **args):
        return self.execute(slot_id, "tmux", args, timeout=timeout)

    def read_file(self, slot_id, path):
        return self.execute(slot_id, "read_file", {"path": path})

    def write_file(self, slot_id, path, content):
        return self.execute(slot_id, "write_file", {"path": path, "content": content})

    def reset(self, slot_id):
        status, body = self.post("/reset", {"slot_id": slot_id})
        assert status == 200, (slot_id, status, body)
        return body

    def clean(self, slot_id):
        """Empties a slot's workspace with the bash tool (no dependency on /reset)."""
        out = self.ok(slot_id, "rm -rf /workspace/* /workspace/.[!.]* /workspace/..?* ; "
                               "ls -A /workspace")
        assert out == "", f"workspace of {slot_id} not empty after rm -rf: {out!r}"


def check_exec_response(body, req=None):
    assert isinstance(body, dict), (req, body)
    missing = EXEC_KEYS - set(body)
    assert not missing, f"response lacks {sorted(missing)}: {body!r} (request {req!r})"
    assert isinstance(body["success"], bool), body
    assert isinstance(body["output"], str), body
    assert isinstance(body["error"], str), body
    assert isinstance(body["metadata"], dict), body


def parallel(fns):
    """Runs the callables in threads at once; returns (results in order, elapsed seconds)."""
    results = [None] * len(fns)
    errors = [None] * len(fns)
    barrier = threading.Barrier(len(fns))

    def run(i, fn):
        barrier.wait()
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    for e in errors:
        if e is not None:
            raise e
    return results, elapsed


@pytest.fixture(scope="module")
def slots_daemon():
    d = Daemon(extra_args=["--slots", str(NSLOTS)])
    d.start()
    yield d
    d.stop()


@pytest.fixture
def slots(slots_daemon):
    d = slots_daemon
    if d.proc.poll() is not None:
        rc, log = d.proc.returncode, d.log()
        d.restart()
        pytest.fail(f"the daemon died (status {rc}) during an earlier test; restarted it.\n"
                    f"log of the dead one:\n{log}", pytrace=False)
    c = SlotsClient(d)
    status, body = c.get("/health")
    assert status == 200 and isinstance(body, dict) and body.get("status") == "ok", \
        f"GET /health before the test: {status} {body!r}; log:\n{d.log()}"
    return c
