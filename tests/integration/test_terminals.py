"""Terminals: PTY programs, keys, screen model, resize, recording, WebSocket attach."""
import asyncio
import json
import time

import websockets

from conftest import WAIT_S, sh, wait_for


def _term(api, sb, **spec):
    r = api.post(f"/v1/sandboxes/{sb}/terminals", spec)
    assert r.status == 201, r
    return r.json["terminal_id"]


def _keys(api, sb, tid, **body):
    r = api.post(f"/v1/sandboxes/{sb}/terminals/{tid}/keys", body, timeout=60)
    assert r.status == 200, r
    return r.json


def _screen(api, sb, tid, history=False):
    r = api.get(f"/v1/sandboxes/{sb}/terminals/{tid}/screen" + ("?history=1" if history else ""))
    assert r.status == 200, r
    return r.json


def _wait_screen(api, sb, tid, needle, timeout=WAIT_S, history=False):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _screen(api, sb, tid, history)
        if needle in s["text"]:
            return s
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not on screen:\n{_screen(api, sb, tid, history)['text']}")


def test_shell_prompt_keys_and_block(api, sandbox):
    sb = sandbox["id"]
    tid = _term(api, sb, cols=80, rows=24)
    t = api.get(f"/v1/sandboxes/{sb}/terminals/{tid}").json
    assert t["state"] == "running" and t["cols"] == 80 and t["rows"] == 24
    r = _keys(api, sb, tid, keys=["sleep 1; echo finished-$((6*7))", "Enter"], block=True)
    assert r["blocked"] is True and r["timed_out"] is False
    s = _screen(api, sb, tid)
    assert "finished-42" in s["text"]
    assert s["cols"] == 80 and s["rows"] == 24
    assert len(s["text"].split("\n")) == 24
    assert 0 <= s["cursor"]["row"] < 24 and 0 <= s["cursor"]["col"] < 80


def test_ctrl_c_interrupts_foreground(api, sandbox):
    sb = sandbox["id"]
    tid = _term(api, sb, cols=80, rows=24)
    _keys(api, sb, tid, keys=["sleep 100", "Enter"])
    wait_for(lambda: "sleep 100" in sh(api, sb, "ps -eo args")["stdout"],
             what="sleep 100 to run in the terminal")
    # Back at the prompt long before max_wait_s: the sleep was interrupted.
    r = _keys(api, sb, tid, keys=["C-c"], block=True, max_wait_s=WAIT_S)
    assert r["timed_out"] is False
    _keys(api, sb, tid, text="echo after-interrupt\r", block=True)
    _wait_screen(api, sb, tid, "after-interrupt")


def test_full_screen_program(api, sandbox):
    """less uses the alternate screen and cursor addressing: the model shows what a user sees."""
    sb = sandbox["id"]
    sh(api, sb, "seq 1 200 | sed 's/^/line /' > /workspace/f")
    tid = _term(api, sb, cols=60, rows=12)
    _keys(api, sb, tid, text="less /workspace/f\r")
    s = _wait_screen(api, sb, tid, "line 1")
    assert "line 11" in s["text"] and "line 30" not in s["text"]
    _keys(api, sb, tid, keys=["G"])  # end of file
    s = _wait_screen(api, sb, tid, "line 200")
    assert "line 1\n" not in s["text"]
    _keys(api, sb, tid, keys=["q"])
    # Typed before less is gone, the next line would go to less.
    wait_for(lambda: "line 200" not in _screen(api, sb, tid)["text"],
             what="less to leave the alternate screen")
    _keys(api, sb, tid, text="echo back-at-prompt\r", block=True)
    s = _wait_screen(api, sb, tid, "back-at-prompt")
    assert "line 200" not in s["text"]  # the alternate screen is gone


def test_history_and_resize(api, sandbox):
    sb = sandbox["id"]
    tid = _term(api, sb, cols=40, rows=10)
    _keys(api, sb, tid, text="seq 1 100\r", block=True)
    s = _screen(api, sb, tid)
    assert "100" in s["text"] and "\n5\n" not in "\n" + s["text"]
    h = _screen(api, sb, tid, history=True)
    assert "\n5\n" in h["text"] and "\n100\n" in h["text"]
    r = api.post(f"/v1/sandboxes/{sb}/terminals/{tid}/resize", {"cols": 120, "rows": 40})
    assert r.status == 200 and r.json["cols"] == 120 and r.json["rows"] == 40
    _keys(api, sb, tid, text="stty size\r", block=True)
    _wait_screen(api, sb, tid, "40 120")
    assert api.post(f"/v1/sandboxes/{sb}/terminals/{tid}/resize",
                    {"cols": 10, "rows": 40}).status == 400


def test_recording_is_asciicast_v2(api, sandbox):
    sb = sandbox["id"]
    tid = _term(api, sb, cols=80, rows=24, record=True)
    _keys(api, sb, tid, text="echo recorded-\xe9t\xe9\r", block=True)
    r = api.get(f"/v1/sandboxes/{sb}/terminals/{tid}/recording")
    assert r.status == 200
    assert r.headers.get("Content-Type") == "application/x-asciicast"
    lines = r.body.decode().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    events = [json.loads(line) for line in lines[1:]]
    assert events and all(len(e) == 3 and e[1] in ("o", "i", "r") for e in events)
    assert all(events[i][0] <= events[i + 1][0] for i in range(len(events) - 1))
    out = "".join(e[2] for e in events if e[1] == "o")
    assert "recorded-\xe9t\xe9" in out
    # Incremental: from the returned offset only new whole lines come.
    nxt = int(r.headers["X-Next-Offset"])
    assert nxt == len(r.body)
    _keys(api, sb, tid, text="echo second-part\r", block=True)
    r2 = api.get(f"/v1/sandboxes/{sb}/terminals/{tid}/recording?since={nxt}")
    assert r2.status == 200 and r2.body.endswith(b"\n")
    assert "second-part" in "".join(json.loads(x)[2] for x in r2.body.decode().splitlines())
    assert b'"version"' not in r2.body
    # Not recorded -> 404.
    t2 = _term(api, sb, cols=80, rows=24)
    assert api.get(f"/v1/sandboxes/{sb}/terminals/{t2}/recording").status == 404


def test_exit_and_delete(api, sandbox):
    sb = sandbox["id"]
    tid = _term(api, sb, cols=80, rows=24, argv=["sh", "-c", "echo bye; exit 5"])
    deadline = time.monotonic() + WAIT_S
    while api.get(f"/v1/sandboxes/{sb}/terminals/{tid}").json["state"] != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    t = api.get(f"/v1/sandboxes/{sb}/terminals/{tid}").json
    assert t["exit_code"] == 5
    assert "bye" in _screen(api, sb, tid)["text"]
    r = api.post(f"/v1/sandboxes/{sb}/terminals/{tid}/keys", {"keys": ["x"]})
    assert r.status == 409
    assert api.delete(f"/v1/sandboxes/{sb}/terminals/{tid}").status == 204
    assert api.get(f"/v1/sandboxes/{sb}/terminals/{tid}").status == 404


def test_delete_kills_the_session(api, sandbox):
    sb = sandbox["id"]
    tid = _term(api, sb, cols=80, rows=24)
    _keys(api, sb, tid, text="sleep 1234 &\r", block=True)
    wait_for(lambda: "sleep 1234" in sh(api, sb, "ps -eo args")["stdout"],
             what="the background job to run sleep")
    assert api.delete(f"/v1/sandboxes/{sb}/terminals/{tid}").status == 204
    deadline = time.monotonic() + WAIT_S
    while "sleep 1234" in sh(api, sb, "ps -eo args")["stdout"]:
        assert time.monotonic() < deadline, "the terminal's job survived its deletion"
        time.sleep(0.2)


def test_bad_requests(api, sandbox):
    sb = sandbox["id"]
    base = f"/v1/sandboxes/{sb}/terminals"
    assert api.post(base, {"cols": 19, "rows": 24}).status == 400
    assert api.post(base, {"cols": 80, "rows": 201}).status == 400
    assert api.post(base, {"cols": 80, "rows": 24, "bogus": 1}).status == 400
    assert api.post(base, {"argv": []}).status == 400
    tid = _term(api, sb)
    assert api.post(f"{base}/{tid}/keys", {}).status == 400
    assert api.post(f"{base}/{tid}/keys", {"keys": [1]}).status == 400
    assert api.post(f"{base}/{tid}/keys", {"keys": "a", "text": "b"}).status == 400
    assert api.get(f"{base}/term-nope/screen").status == 404
    assert api.get(f"{base}/{tid}/screen?bogus=1").status == 400
    assert api.get(f"{base}/{tid}/attach").status == 400  # not a WebSocket upgrade


def test_attach_several_viewers(daemon, api, sandbox):
    sb = sandbox["id"]
    tid = _term(api, sb, cols=80, rows=24)
    url = daemon.url.replace("http", "ws") + f"/v1/sandboxes/{sb}/terminals/{tid}/attach"

    async def viewer(ws, needle):
        buf = b""
        while needle not in buf:
            m = await asyncio.wait_for(ws.recv(), WAIT_S)
            if isinstance(m, bytes):
                buf += m
        return buf

    async def run():
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            await a.send(b"echo from-viewer-$((40+2))\r")
            got_a, got_b = await asyncio.gather(viewer(a, b"from-viewer-42"),
                                                viewer(b, b"from-viewer-42"))
            assert b"from-viewer-42" in got_a and b"from-viewer-42" in got_b
            await b.send(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
            await b.send(json.dumps({"type": "bogus"}))
            err = None
            while err is None:
                m = await asyncio.wait_for(b.recv(), WAIT_S)
                if isinstance(m, str) and json.loads(m).get("type") == "error":
                    err = json.loads(m)
            await a.send(b"exit 7\r")
            code = None
            while code is None:
                m = await asyncio.wait_for(a.recv(), WAIT_S)
                if isinstance(m, str) and json.loads(m).get("type") == "exit":
                    code = json.loads(m)["exit_code"]
            assert code == 7
        t = api.get(f"/v1/sandboxes/{sb}/terminals/{tid}").json
        assert t["cols"] == 100 and t["rows"] == 30 and t["exit_code"] == 7

    asyncio.run(run())
