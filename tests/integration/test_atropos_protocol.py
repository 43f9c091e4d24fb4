"""atropos slot protocol (shared/compat-atropos.md): /health, /slots, routing, invalid JSON,
/execute errors and execution_id, /batch, /reset, slot isolation and per-slot queueing."""

import threading
import time
import uuid

import pytest

from atropos_client import (INVALID_JSON, NSLOTS, SLOT_IDS, check_exec_response, parallel,
                            slots, slots_daemon)  # noqa: F401 - fixtures
from conftest import WAIT_S, wait_for

POST_ROUTES = ["/execute", "/batch", "/reset", "/artifacts/read", "/artifacts/list",
               "/artifacts/archive"]
HEALTH_KEYS = {"status", "slots", "available", "executing", "data_dir", "bwrap_available",
               "stateful_dir"}
SLOT_KEYS = {"slot_id", "state", "workspace_dir", "current_execution_id"}


# -- GET /health, GET /slots ----------------------------------------------------------------------


def test_health_fields(slots):
    status, h = slots.get("/health")
    assert status == 200, (status, h)
    missing = HEALTH_KEYS - set(h)
    assert not missing, f"/health lacks {sorted(missing)}: {h}"
    assert h["status"] == "ok"
    assert h["slots"] == NSLOTS, h
    assert h["available"] == NSLOTS and h["executing"] == 0, h
    assert isinstance(h["data_dir"], str) and h["data_dir"], h
    assert isinstance(h["stateful_dir"], str) and h["stateful_dir"], h
    # warren reports its own isolation as available
    assert h["bwrap_available"] is True, h


def test_slots_fields(slots):
    status, body = slots.get("/slots")
    assert status == 200, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("slots"), list), body
    assert [s.get("slot_id") for s in body["slots"]] == SLOT_IDS, body
    dirs = set()
    for s in body["slots"]:
        assert set(s) >= SLOT_KEYS, f"slot entry lacks {sorted(SLOT_KEYS - set(s))}: {s}"
        assert s["state"] == "available", s
        assert s["current_execution_id"] is None, s
        assert isinstance(s["workspace_dir"], str) and s["workspace_dir"], s
        dirs.add(s["workspace_dir"])
    assert len(dirs) == NSLOTS, f"slots share a workspace_dir: {body}"


def test_health_and_slots_while_executing(slots):
    eid = str(uuid.uuid4())
    box = {}
    # The command runs until the test says go (through the native API: the slot is busy).
    cmd = "while [ ! -e /workspace/go ]; do sleep 0.05; done; rm /workspace/go; echo done"
    t = threading.Thread(target=lambda: box.update(
        r=slots.execute("slot_2", "bash", {"command": cmd}, timeout=WAIT_S + 30,
                        execution_id=eid)))
    t.start()
    try:
        def busy():
            _, h = slots.get("/health")
            return h if h["executing"] == 1 else None

        h = wait_for(busy, what="/health executing == 1")
        assert h["available"] == NSLOTS - 1, h
        status, body = slots.get("/slots")
        assert status == 200
        by_id = {s["slot_id"]: s for s in body["slots"]}
        assert by_id["slot_2"]["state"] == "executing", body
        assert by_id["slot_2"]["current_execution_id"] == eid, body
        for sid in ("slot_0", "slot_1", "slot_3"):
            assert by_id[sid]["state"] == "available", body
            assert by_id[sid]["current_execution_id"] is None, body
    finally:
        go = slots.post("/v1/sandboxes/slot_2/exec", {"argv": ["touch", "/workspace/go"]})
        t.join()
    assert go[0] == 200 and go[1]["exit_code"] == 0, go
    assert box["r"]["success"] is True and box["r"]["output"] == "done", box
    _, h = slots.get("/health")
    assert h["available"] == NSLOTS and h["executing"] == 0, h
    _, body = slots.get("/slots")
    s2 = [s for s in body["slots"] if s["slot_id"] == "slot_2"][0]
    assert s2["state"] == "available" and s2["current_execution_id"] is None, s2


# -- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/nope"),
                                         ("GET", "/artifacts/zap"), ("POST", "/execute/x")])
def test_unknown_route_404(slots, method, path):
    kw = {"body": {}} if method == "POST" else {}
    status, body, raw = slots.request(method, path, **kw)
    assert status == 404, (method, path, status, raw)


@pytest.mark.parametrize("method,path", [
    ("GET", "/execute"), ("GET", "/batch"), ("GET", "/reset"), ("GET", "/artifacts/read"),
    ("GET", "/artifacts/list"), ("GET", "/artifacts/archive"), ("POST", "/health"),
    ("POST", "/slots"), ("DELETE", "/execute"), ("PUT", "/slots")])
def test_wrong_method_405(slots, method, path):
    kw = {"body": {}} if method in ("POST", "PUT") else {}
    status, _, raw = slots.request(method, path, **kw)
    assert status == 405, (method, path, status, raw)


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize("raw", ["{not json", "", "[1, 2", "\xff\xfe garbage"],
                         ids=["brace", "empty", "unterminated", "binary"])
def test_invalid_json_400(slots, path, raw):
    data = raw.encode("latin-1")
    status, body, payload = slots.request("POST", path, raw=data)
    assert status == 400, (path, raw, status, payload)
    assert body == INVALID_JSON, (path, raw, payload)


def test_daemon_survives_bad_requests(slots):
    for path in POST_ROUTES:
        slots.request("POST", path, raw=b"\x00" * 100)
        slots.request("POST", path, raw=b'{"slot_id": ' * 1000)
    r = slots.execute("slot_0", "bash", {"command": "echo still-here"})
    assert r["success"] is True and r["output"] == "still-here", r


# -- /execute errors and execution_id -----------------------------------------------------------


@pytest.mark.parametrize("slot_id", ["slot_4", "slot_99", "nope", "", "slot_-1"])
def test_execute_unknown_slot(slots, slot_id):
    eid = str(uuid.uuid4())
    r = slots.execute(slot_id, "bash", {"command": "echo hi"}, execution_id=eid)
    assert r["success"] is False, r
    assert r["error"] == f"Unknown slot: {slot_id}", r
    assert r["execution_id"] == eid, r


@pytest.mark.parametrize("tool", ["frobnicate", "BASH", "", "bash "])
def test_execute_unknown_tool(slots, tool):
    eid = str(uuid.uuid4())
    r = slots.execute("slot_0", tool, {"command": "echo hi"}, execution_id=eid)
    assert r["success"] is False, r
    assert r["error"] == f"Unknown tool: {tool}", r
    assert r["execution_id"] == eid, r


def test_execution_id_echoed(slots):
    for eid in [str(uuid.uuid4()), "my-own-id", "x" * 200]:
        r = slots.execute("slot_0", "bash", {"command": "echo ok"}, execution_id=eid)
        assert r["execution_id"] == eid and r["success"] is True, r


def test_execution_id_null_when_absent(slots):
    for tool, args in [("bash", {"command": "echo ok"}), ("frobnicate", {}),
                       ("read_file", {"path": "does-not-exist"})]:
        status, body = slots.post("/execute", {"slot_id": "slot_0", "tool": tool, "args": args,
                                               "timeout": 10})
        assert status == 200, body
        check_exec_response(body)
        assert "execution_id" in body and body["execution_id"] is None, body
    status, body = slots.post("/execute", {"slot_id": "slot_77", "tool": "bash",
                                           "args": {"command": "true"}})
    assert status == 200 and body["execution_id"] is None and body["success"] is False, body


def test_execute_without_timeout_uses_default(slots):
    status, body = slots.post("/execute", {"slot_id": "slot_1", "tool": "bash",
                                           "args": {"command": "echo default"}})
    assert status == 200, body
    check_exec_response(body)
    assert body["success"] is True and body["output"] == "default", body


# -- slots are separate workspaces, and requests for one slot queue -----------------------------


def test_slots_have_separate_workspaces(slots):
    tag = uuid.uuid4().hex
    for sid in SLOT_IDS:
        w = slots.write_file(sid, "whoami.txt", f"{sid} {tag}")
        assert w["success"] is True, w
    for sid in SLOT_IDS:
        r = slots.read_file(sid, "whoami.txt")
        assert r["success"] is True and r["output"] == f"{sid} {tag}", (sid, r)
        assert slots.ok(sid, "cat /workspace/whoami.txt") == f"{sid} {tag}"
    slots.ok("slot_0", "rm /workspace/whoami.txt")
    assert slots.read_file("slot_0", "whoami.txt")["success"] is False
    assert slots.read_file("slot_1", "whoami.txt")["output"] == f"slot_1 {tag}"


def test_same_slot_requests_queue(slots):
    cmd = "sleep 1; echo done"
    rs, elapsed = parallel([lambda: slots.bash("slot_1", cmd, timeout=10),
                            lambda: slots.bash("slot_1", cmd, timeout=10)])
    assert all(r["success"] for r in rs), rs
    assert elapsed >= 1.95, f"two sleep 1 on slot_1 overlapped: {elapsed:.2f}s"


def test_different_slots_run_in_parallel(slots):
    fns = [lambda sid=sid: slots.bash(sid, "sleep 1; echo " + sid, timeout=10)
           for sid in SLOT_IDS]
    rs, elapsed = parallel(fns)
    assert [r["output"] for r in rs] == SLOT_IDS, rs
    assert elapsed < 3.5, f"4 x sleep 1 on 4 slots took {elapsed:.2f}s (one after another: 4)"


# -- POST /batch --------------------------------------------------------------------------------


def _req(slot_id, command, timeout=10, eid=None):
    return {"slot_id": slot_id, "tool": "bash", "args": {"command": command},
            "execution_id": eid or str(uuid.uuid4()), "timeout": timeout}


def test_batch_order(slots):
    reqs = [_req("slot_3", "sleep 0.6; echo a"), _req("slot_0", "echo b"),
            _req("slot_1", "sleep 0.3; echo c >&2; exit 4"), _req("slot_2", "echo d"),
            _req("slot_0", "echo e"),
            {"slot_id": "slot_9", "tool": "bash", "args": {"command": "true"},
             "execution_id": "bad-slot", "timeout": 5},
            {"slot_id": "slot_2", "tool": "nope", "args": {}, "execution_id": "bad-tool",
             "timeout": 5}]
    status, body = slots.post("/batch", reqs)
    assert status == 200, (status, body)
    assert isinstance(body, list) and len(body) == len(reqs), body
    for req, res in zip(reqs, body):
        check_exec_response(res, req)
        assert res["execution_id"] == req["execution_id"], (req, res)
    assert [r["output"] for r in body[:5]] == ["a", "b", "c", "d", "e"], body
    assert [r["success"] for r in body[:5]] == [True, True, False, True, True], body
    assert body[2]["error"] == "Exit code: 4" and body[2]["metadata"]["exit_code"] == 4, body[2]
    assert body[5]["success"] is False and body[5]["error"] == "Unknown slot: slot_9", body[5]
    assert body[6]["success"] is False and body[6]["error"] == "Unknown tool: nope", body[6]


def test_batch_empty(slots):
    status, body, raw = slots.request("POST", "/batch", body=[])
    assert status == 200, (status, raw)
    assert body == [], raw


@pytest.mark.parametrize("payload", [{}, {"slot_id": "slot_0"}, "text", 3, None, True])
def test_batch_not_an_array(slots, payload):
    status, body = slots.post("/batch", payload)
    assert status == 400, (payload, status, body)
    assert isinstance(body, dict), body
    assert body.get("success") is False and body.get("error") == "Expected array of requests", body


def test_batch_parallel_across_slots(slots):
    reqs = [_req(sid, f"sleep 1; echo {sid}") for sid in SLOT_IDS]
    t0 = time.monotonic()
    status, body = slots.post("/batch", reqs)
    elapsed = time.monotonic() - t0
    assert status == 200, body
    assert [r["output"] for r in body] == SLOT_IDS, body
    assert all(r["success"] for r in body), body
    assert elapsed < 3.5, f"batch of 4 x sleep 1 on 4 slots took {elapsed:.2f}s (serial: 4)"


def test_batch_serial_within_slot(slots):
    reqs = [_req("slot_0", "sleep 1; echo one"), _req("slot_0", "sleep 1; echo two")]
    t0 = time.monotonic()
    status, body = slots.post("/batch", reqs)
    elapsed = time.monotonic() - t0
    assert status == 200, body
    assert [r["output"] for r in body] == ["one", "two"], body
    assert elapsed >= 1.95, f"2 x sleep 1 on slot_0 in a batch took only {elapsed:.2f}s"


# -- POST /reset --------------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(NSLOTS))
def test_reset_empties_workspace(slots, i):
    sid = f"slot_{i}"
    slots.ok(sid, "mkdir -p d/e && echo x > d/e/f && echo y > .hidden && echo z > top")
    assert slots.ok(sid, "ls -A") != ""
    r = slots.reset(sid)
    check_exec_response(r)
    assert r["success"] is True, r
    assert r["output"] == f"Reset workspace for {sid}", r
    assert slots.ok(sid, "ls -A /workspace") == "", f"workspace of {sid} not empty after reset"
    assert slots.ok(sid, "pwd") == "/workspace"
    # the slot keeps working after a reset
    assert slots.write_file(sid, "again.txt", "again")["success"] is True
    assert slots.read_file(sid, "again.txt")["output"] == "again"


@pytest.mark.parametrize("slot_id", ["slot_4", "bogus", ""])
def test_reset_unknown_slot(slots, slot_id):
    status, body = slots.post("/reset", {"slot_id": slot_id})
    assert status == 200, (status, body)
    assert isinstance(body, dict) and body.get("success") is False, body
    assert isinstance(body.get("error"), str) and body["error"], body


# -- a slot's sandbox changed through the native API ----------------------------------------


@pytest.mark.parametrize("verb", ["stop", "kill", "pause", "delete"])
def test_slot_replaces_its_sandbox_when_taken_away(slots, slots_daemon, verb):
    """The slot's sandbox stopped, killed, paused or deleted through the native API: the next
    request gets a new sandbox under the slot's name instead of failing for ever."""
    import http.client

    assert slots.ok("slot_3", "true") == ""  # its sandbox is up
    conn = http.client.HTTPConnection("127.0.0.1", slots_daemon.port, timeout=30)
    method, path = ("DELETE", "/v1/sandboxes/slot_3") if verb == "delete" else \
        ("POST", f"/v1/sandboxes/slot_3/{verb}")
    conn.request(method, path, body=b"{}" if method == "POST" else None)
    r = conn.getresponse()
    r.read()
    assert r.status in (200, 204), (verb, r.status)
    conn.close()
    out = slots.ok("slot_3", "echo back", timeout=30)
    assert out == "back", out
