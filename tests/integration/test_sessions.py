"""Sessions (issue 11): a sandbox created with a session_id is recycled when its session is idle
(processes stopped, files kept, state "recycled") and restored by its next call; GET/DELETE
/v1/sessions; records of deleted sandboxes kept --released-ttl seconds; all of it survives a
daemon restart.

Every test runs its own daemon with a 2 s idle timeout (fresh_daemon). Waiting for a recycle
polls GET /v1/sandboxes?session_id=... or /v1/sessions: naming the sandbox itself (GET
/v1/sandboxes/{id}) is activity on it, which would keep it alive.
"""
import asyncio
import json
import threading
import time
import urllib.parse

import websockets

from conftest import WAIT_S, Api, sh, wait_for

IDLE_S = 2
ARGS = ["--idle-timeout", str(IDLE_S), "--released-ttl", "3"]


def states(api, session):
    r = api.get("/v1/sandboxes?session_id=" + urllib.parse.quote(session))
    assert r.status == 200, r
    return {s["name"]: s["state"] for s in r.json["sandboxes"]}


def audit_events(api, sid, event):
    r = api.get(f"/v1/audit?sandbox={sid}&event={event}")
    assert r.status == 200, r
    return r.json["events"]


def test_idle_session_sandbox_is_recycled_and_restored_by_exec(fresh_daemon):
    d = fresh_daemon(extra_args=ARGS)
    api = Api(d)
    sb = api.create(name="agent", session_id="ep-1:a_b.c")
    plain = api.create(name="plain")
    assert sb["session_id"] == "ep-1:a_b.c" and sb["restored_at"] is None
    assert plain["session_id"] is None
    assert sh(api, sb["id"], "echo kept > /workspace/f; echo $$ > /tmp/pid")["exit_code"] == 0
    wait_for(lambda: states(api, "ep-1:a_b.c") == {"agent": "recycled"},
             timeout=IDLE_S + WAIT_S, what="the idle session sandbox recycled")
    # A sandbox without a session is stopped as before, and calls on it are refused.
    wait_for(lambda: api.get("/v1/sandboxes?state=stopped").json["sandboxes"],
             timeout=IDLE_S + WAIT_S, what="the idle plain sandbox stopped")
    r = api.post(f"/v1/sandboxes/{plain['id']}/exec", {"argv": ["true"]})
    assert r.status == 409 and r.error_code == "sandbox_stopped", r
    assert audit_events(api, sb["id"], "sandbox.recycle")
    # GET shows it as it is: no restore.
    r = api.get(f"/v1/sandboxes/{sb['id']}")
    assert r.status == 200 and r.json["state"] == "recycled", r
    # The next call restores it: same id and name, files intact, a new init.
    r = sh(api, sb["id"], "cat /workspace/f; cat /tmp/pid 2>/dev/null; hostname")
    assert r["exit_code"] == 0 and r["stdout"].startswith("kept\n"), r
    got = api.get(f"/v1/sandboxes/{sb['id']}").json
    assert got["state"] == "running" and got["name"] == "agent", got
    assert got["restored_at"] is not None
    ev = audit_events(api, sb["id"], "sandbox.restore")
    assert len(ev) == 1 and ev[0]["ok"] is True and ev[0]["session_id"] == "ep-1:a_b.c", ev


def test_calls_during_a_restore_wait_for_the_same_restore(fresh_daemon):
    d = fresh_daemon(extra_args=ARGS)
    api = Api(d)
    sb = api.create(session_id="s-conc")
    sh(api, sb["id"], "echo x > /workspace/x")
    wait_for(lambda: list(states(api, "s-conc").values()) == ["recycled"],
             timeout=IDLE_S + WAIT_S, what="recycled")
    results = []

    def call(i):
        results.append(api.post(f"/v1/sandboxes/{sb['id']}/exec",
                                {"argv": ["cat", "/workspace/x"]}))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    # Files and commands restore it too (one of them may be first).
    r = api.get(f"/v1/sandboxes/{sb['id']}/files?path=/workspace/x")
    assert r.status == 200 and r.body == b"x\n", r
    for t in threads:
        t.join()
    assert [r.status for r in results] == [200] * 5, results
    assert all(r.json["stdout"] == "x\n" for r in results), results
    assert len(audit_events(api, sb["id"], "sandbox.restore")) == 1


def test_heartbeat_keeps_the_whole_session_alive(fresh_daemon):
    d = fresh_daemon(extra_args=ARGS)
    api = Api(d)
    a = api.create(name="a", session_id="s-hb")
    api.create(name="b", session_id="s-hb")
    r = api.post("/v1/sandboxes/nope/heartbeat")
    assert r.status == 404, r
    # Heartbeats on `a` alone, for well over the idle timeout: neither a nor b is recycled.
    end = time.monotonic() + 2.5 * IDLE_S

    def beat():
        r = api.post(f"/v1/sandboxes/{a['id']}/heartbeat")
        assert r.status == 204 and r.body == b"", r
        assert states(api, "s-hb") == {"a": "running", "b": "running"}
        return time.monotonic() > end

    wait_for(beat, timeout=2.5 * IDLE_S + WAIT_S, interval=0.3, what="heartbeats")
    s = api.get("/v1/sessions/s-hb").json
    assert s["session_id"] == "s-hb" and s["last_active_at"]
    # Without them, the session goes idle: both recycled together.
    wait_for(lambda: states(api, "s-hb") == {"a": "recycled", "b": "recycled"},
             timeout=IDLE_S + WAIT_S, what="the session recycled")
    # A heartbeat does not restore (nothing needs the sandbox running).
    assert api.post(f"/v1/sandboxes/{a['id']}/heartbeat").status == 204
    assert states(api, "s-hb")["a"] == "recycled"


def test_get_and_delete_sessions(fresh_daemon):
    d = fresh_daemon(extra_args=["--released-ttl", "3600"])
    api = Api(d)
    x1 = api.create(name="x1", session_id="sess-x")
    x2 = api.create(name="x2", session_id="sess-x")
    y = api.create(name="y1", session_id="sess-y")
    api.create(name="none")
    r = api.get("/v1/sessions")
    assert r.status == 200, r
    got = {s["session_id"]: sorted(b["name"] for b in s["sandboxes"]) for s in r.json["sessions"]}
    assert got == {"sess-x": ["x1", "x2"], "sess-y": ["y1"]}, r.json
    one = api.get("/v1/sessions/sess-x").json
    assert sorted((b["id"], b["state"]) for b in one["sandboxes"]) == sorted(
        [(x1["id"], "running"), (x2["id"], "running")]), one
    assert set(one) == {"session_id", "sandboxes", "last_active_at"}
    assert states(api, "sess-y") == {"y1": "running"}
    for bad in ("", "a" * 129, "sp ace", "sl/ash"):
        r = api.post("/v1/sandboxes", {"session_id": bad})
        assert r.status == 400 and "session_id" in r.error_message, r
    assert api.get("/v1/sessions/nope").status == 404
    r = api.delete("/v1/sessions/sess-x")
    assert r.status == 204, r
    names = {s["name"] for s in api.get("/v1/sandboxes").json["sandboxes"]}
    assert names == {"y1", "none"}, names
    assert api.get("/v1/sessions/sess-x").status == 404
    assert api.delete("/v1/sessions/sess-x").status == 404
    deleted = api.get("/v1/sandboxes?state=deleted&session_id=sess-x").json["sandboxes"]
    assert sorted(s["name"] for s in deleted) == ["x1", "x2"], deleted
    assert api.get(f"/v1/sandboxes/{y['id']}").json["session_id"] == "sess-y"


def test_released_records_are_listed_then_purged(fresh_daemon):
    d = fresh_daemon(extra_args=ARGS)
    api = Api(d)
    sb = api.create(name="gone", labels={"team": "t"}, session_id="s-rel")
    api.remove(sb["id"])
    r = api.get("/v1/sandboxes?state=deleted")
    assert r.status == 200, r
    [rec] = r.json["sandboxes"]
    assert rec["id"] == sb["id"] and rec["name"] == "gone" and rec["state"] == "deleted", rec
    assert rec["deleted_at"] and rec["session_id"] == "s-rel" and rec["labels"] == {"team": "t"}
    assert api.get("/v1/sandboxes?state=deleted&label=team=t").json["sandboxes"]
    assert not api.get("/v1/sandboxes?state=deleted&label=team=u").json["sandboxes"]
    # Not a sandbox any more: only the listing of deleted ones shows it.
    assert api.get(f"/v1/sandboxes/{sb['id']}").status == 404
    assert not api.get("/v1/sandboxes").json["sandboxes"]
    wait_for(lambda: not api.get("/v1/sandboxes?state=deleted").json["sandboxes"],
             timeout=3 + WAIT_S, what="the released record purged after --released-ttl")


def test_sessions_survive_a_daemon_restart(fresh_daemon):
    d = fresh_daemon(extra_args=["--idle-timeout", str(IDLE_S), "--released-ttl", "3600"])
    api = Api(d)
    sb = api.create(name="durable", session_id="s-dur")
    other = api.create(name="other", session_id="s-dur", idle_timeout_s=3600)
    sh(api, sb["id"], "echo still > /workspace/f")
    api.remove(other["id"])
    wait_for(lambda: states(api, "s-dur") == {"durable": "recycled"},
             timeout=IDLE_S + WAIT_S, what="recycled")
    d.kill9()
    d.restart_same()
    assert states(api, "s-dur") == {"durable": "recycled"}
    assert [s["session_id"] for s in api.get("/v1/sessions").json["sessions"]] == ["s-dur"]
    rel = api.get("/v1/sandboxes?state=deleted").json["sandboxes"]
    assert [r["id"] for r in rel] == [other["id"]], rel
    r = sh(api, "durable", "cat /workspace/f")
    assert r["stdout"] == "still\n", r
    got = api.get(f"/v1/sandboxes/{sb['id']}").json
    assert got["state"] == "running" and got["session_id"] == "s-dur" and got["restored_at"]
    # Running again, re-adopted after another crash with its session.
    d.kill9()
    d.restart_same()
    got = api.get(f"/v1/sandboxes/{sb['id']}").json
    assert got["state"] == "running" and got["session_id"] == "s-dur", got
    assert got["restored_at"] is not None


def test_batch_and_commands_restore_recycled_sandboxes(fresh_daemon):
    d = fresh_daemon(extra_args=ARGS)
    api = Api(d)
    a = api.create(name="ba", session_id="s-batch")
    b = api.create(name="bb", session_id="s-batch")
    wait_for(lambda: states(api, "s-batch") == {"ba": "recycled", "bb": "recycled"},
             timeout=IDLE_S + WAIT_S, what="recycled")
    r = api.post("/v1/batch", [{"sandbox": "ba", "argv": ["echo", "1"]},
                               {"sandbox": "bb", "shell": "echo 2"},
                               {"sandbox": "ba", "argv": ["echo", "3"]}])
    assert r.status == 200, r
    assert [x["stdout"] for x in r.json] == ["1\n", "2\n", "3\n"], r.json
    assert states(api, "s-batch") == {"ba": "running", "bb": "running"}
    wait_for(lambda: states(api, "s-batch") == {"ba": "recycled", "bb": "recycled"},
             timeout=IDLE_S + WAIT_S, what="recycled again")
    r = api.post(f"/v1/sandboxes/{a['id']}/commands", {"argv": ["sleep", "30"]})
    assert r.status == 201, r
    assert api.get(f"/v1/sandboxes/{a['id']}").json["state"] == "running"
    # Explicitly stopped, a session sandbox is stopped, not recycled: calls are refused.
    assert api.post(f"/v1/sandboxes/{b['id']}/exec", {"argv": ["true"]}).status == 200
    assert api.post(f"/v1/sandboxes/{b['id']}/stop", {"grace_s": 0}).status == 200
    r = api.post(f"/v1/sandboxes/{b['id']}/exec", {"argv": ["true"]})
    assert r.status == 409 and r.error_code == "sandbox_stopped", r
    assert api.get(f"/v1/sandboxes/{b['id']}").json["state"] == "stopped"


def test_start_restores_a_recycled_sandbox(fresh_daemon):
    d = fresh_daemon(extra_args=ARGS)
    api = Api(d)
    sb = api.create(name="st", session_id="s-start")
    wait_for(lambda: states(api, "s-start") == {"st": "recycled"},
             timeout=IDLE_S + WAIT_S, what="recycled")
    r = api.post(f"/v1/sandboxes/{sb['id']}/start", {})
    assert r.status == 200 and r.json["state"] == "running" and r.json["restored_at"], r
    assert len(audit_events(api, sb["id"], "sandbox.restore")) == 1
    r = api.post(f"/v1/sandboxes/{sb['id']}/start", {})
    assert r.status == 409, r


def test_websocket_exec_restores(fresh_daemon):
    d = fresh_daemon(extra_args=ARGS)
    api = Api(d)
    sb = api.create(session_id="s-ws")
    sh(api, sb["id"], "echo ws > /workspace/w")
    wait_for(lambda: list(states(api, "s-ws").values()) == ["recycled"],
             timeout=IDLE_S + WAIT_S, what="recycled")

    async def run():
        url = f"ws://127.0.0.1:{d.port}/v1/sandboxes/{sb['id']}/exec/ws"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "execute", "argv": ["cat", "/workspace/w"]}))
            msgs = []
            try:
                while True:
                    msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            except websockets.ConnectionClosed:
                pass
            return msgs

    msgs = asyncio.run(run())
    out = "".join(m["data"] for m in msgs if m["type"] == "stdout")
    assert out == "ws\n", msgs
    assert api.get(f"/v1/sandboxes/{sb['id']}").json["restored_at"]
