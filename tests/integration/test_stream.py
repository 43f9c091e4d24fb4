"""WebSocket streaming: GET /v1/sandboxes/{id}/exec/ws and .../commands/{cid}/stream
(docs/API.md, "Streaming"). Uses python3-websockets (asyncio API) and, for what a library
client cannot do (broken frames, a client that never reads), a minimal raw client."""

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import time

import pytest
import websockets

from conftest import WAIT_S, exec_

MiB = 1 << 20
# How long a kill sent right after "started" may take to end the command (longer counts as lost).
KILL_ANSWER_S = 10


# ---------------------------------------------------------------------------------------------
# helpers


def run(coro, timeout=60):
    """Runs a coroutine in a fresh event loop, failing the test if it takes over `timeout`."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_url(api, path):
    return f"ws://127.0.0.1:{api.port}{path}"


def exec_ws_path(sid):
    return f"/v1/sandboxes/{sid}/exec/ws"


async def recv_json(ws, timeout=20):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def drain(ws, timeout=30):
    """Every message until the server closes; returns (messages, close code)."""
    msgs = []
    try:
        while True:
            msgs.append(await recv_json(ws, timeout))
    except websockets.ConnectionClosed:
        pass
    return msgs, ws.close_code


async def exec_session(api, sid, first, inputs=(), timeout=30):
    """Opens exec/ws, sends `first` then `inputs` (dicts), returns (messages, close code)."""
    async with websockets.connect(ws_url(api, exec_ws_path(sid)), max_size=None) as ws:
        await ws.send(json.dumps(first))
        for m in inputs:
            await ws.send(json.dumps(m))
        return await drain(ws, timeout)


def stream_bytes(msgs, stream="stdout"):
    """Reassembles a stream, checking that offsets are absolute and contiguous (text mode
    offsets count the raw bytes, so this needs binary mode or text whose bytes survive)."""
    out = bytearray()
    for m in msgs:
        if m["type"] != stream:
            continue
        assert m["offset"] == len(out), f"{stream} offset {m['offset']}, expected {len(out)}"
        if "data_b64" in m:
            out += base64.b64decode(m["data_b64"])
        else:
            out += m["data"].encode()
    return bytes(out)


def text_of(msgs, stream="stdout"):
    return "".join(m["data"] for m in msgs if m["type"] == stream)


def only(msgs, type_):
    return [m for m in msgs if m["type"] == type_]


def check_exit(msgs, code, exit_code, signal=None, timed_out=False):
    assert code == 1000, f"close code {code}, messages {msgs[-3:]}"
    assert msgs and msgs[0]["type"] == "started", msgs[:2]
    assert isinstance(msgs[0]["pid"], int) and msgs[0]["pid"] > 0, msgs[0]
    assert msgs[0]["command_id"].startswith("cmd-"), msgs[0]
    last = msgs[-1]
    assert last["type"] == "exit", f"last message is not exit: {last}"
    assert len(only(msgs, "exit")) == 1, msgs
    assert last["exit_code"] == exit_code and last["signal"] == signal, last
    assert last["timed_out"] is timed_out, last
    return msgs[0]["command_id"]


def get_cmd(api, sid, cid):
    r = api.get(f"/v1/sandboxes/{sid}/commands/{cid}")
    assert r.status == 200, r
    return r.json


def start_cmd(api, sid, **body):
    r = api.post(f"/v1/sandboxes/{sid}/commands", body)
    assert r.status == 201, r
    return r.json["command_id"]


def wait_done(api, sid, cid, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        c = get_cmd(api, sid, cid)
        if c["state"] != "running":
            return c
        assert time.monotonic() < deadline, f"still running after {timeout}s: {c}"
        time.sleep(0.05)


def daemon_rss(daemon):
    with open(f"/proc/{daemon.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RawWs:
    """A minimal WebSocket client on a plain socket: handshake, raw frames."""

    def __init__(self, port, path, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed during the handshake: {self.buf!r}"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise EOFError(f"EOF with {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self):
        b0, b1 = self._exact(2)
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exact(8))[0]
        return b0 & 0x0F, bool(b0 & 0x80), self._exact(n)

    def recv_message(self):
        """(opcode, payload) of the next data or close frame (fragments joined)."""
        op, fin, data = self.recv_frame()
        while op in (9, 10):
            op, fin, data = self.recv_frame()
        while not fin and op != 8:
            _, fin, more = self.recv_frame()
            data += more
        return op, data

    def send_raw(self, data):
        self.sock.sendall(data)

    @staticmethod
    def frame(opcode, payload, mask=True, fin=True, rsv=0):
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        if n < 126:
            head = bytes([b0, (0x80 if mask else 0) | n])
        elif n < 65536:
            head = bytes([b0, (0x80 if mask else 0) | 126]) + struct.pack("!H", n)
        else:
            head = bytes([b0, (0x80 if mask else 0) | 127]) + struct.pack("!Q", n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
            (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")
             ).to_bytes(n, "big")
        return head + key + masked

    def send_text(self, text):
        self.send_raw(self.frame(1, text.encode()))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def close_code_of(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


# ---------------------------------------------------------------------------------------------
# exec/ws basics


def test_exec_ws_messages(api, sandbox):
    sid = sandbox["id"]
    msgs, code = run(exec_session(api, sid, {
        "type": "execute", "shell": "echo out1; echo err1 >&2; sleep 0.1; echo out2; exit 4"}))
    cid = check_exit(msgs, code, 4)
    assert text_of(msgs, "stdout") == "out1\nout2\n", msgs
    assert text_of(msgs, "stderr") == "err1\n", msgs
    assert {m["type"] for m in msgs} <= {"started", "stdout", "stderr", "exit"}, msgs
    # the command is a regular command of the sandbox
    c = get_cmd(api, sid, cid)
    assert c["state"] == "exited" and c["exit_code"] == 4, c
    assert c["stdout_bytes"] == 10 and c["stderr_bytes"] == 5, c
    assert c["shell"].startswith("echo out1"), c


def test_exec_ws_argv_env_cwd(api, sandbox):
    msgs, code = run(exec_session(api, sandbox["id"], {
        "type": "execute", "argv": ["sh", "-c", 'echo "$FOO $(pwd)"'], "env": {"FOO": "bar"},
        "cwd": "/tmp"}))
    check_exit(msgs, code, 0)
    assert text_of(msgs) == "bar /tmp\n", msgs


def test_offsets_absolute_and_contiguous(api, sandbox):
    # many small writes on both streams, then a big burst
    script = ("for i in $(seq 1 40); do echo line$i; echo e$i >&2; sleep 0.005; done; "
              "seq 1 200000")
    msgs, code = run(exec_session(api, sandbox["id"], {"type": "execute", "shell": script}))
    check_exit(msgs, code, 0)
    out = stream_bytes(msgs, "stdout")
    err = stream_bytes(msgs, "stderr")
    expect_out = "".join(f"line{i}\n" for i in range(1, 41)) + \
        "".join(f"{i}\n" for i in range(1, 200001))
    assert out.decode() == expect_out
    assert err.decode() == "".join(f"e{i}\n" for i in range(1, 41))
    assert len(only(msgs, "stdout")) > 5, "expected the output in several messages"
    assert not only(msgs, "gap")


def test_stdin_round_trip_cat(api, sandbox):
    parts = ["hello\n", "w\u00f6rld \u4e16\u754c\n", "x" * 100000, "no newline"]
    inputs = [{"type": "input", "data": p} for p in parts]
    inputs.insert(2, {"type": "input", "data_b64": base64.b64encode(b"b64 bytes\n").decode()})
    msgs, code = run(exec_session(api, sandbox["id"], {"type": "execute", "argv": ["cat"]},
                                  inputs + [{"type": "eof"}]))
    check_exit(msgs, code, 0)
    expect = "".join(parts[:2]) + "b64 bytes\n" + "".join(parts[2:])
    assert stream_bytes(msgs).decode() == expect


def test_stdin_python_input(api, sandbox):
    msgs, code = run(exec_session(
        api, sandbox["id"], {"type": "execute", "argv": ["python3", "-c", "print(input()[::-1])"]},
        [{"type": "input", "data": "h\u00e9llo\n"}]))
    check_exit(msgs, code, 0)
    assert text_of(msgs) == "oll\u00e9h\n"


def test_stdin_in_execute_message(api, sandbox):
    msgs, code = run(exec_session(api, sandbox["id"], {
        "type": "execute", "argv": ["cat"], "stdin": "from the first message\n"},
        [{"type": "eof"}]))
    check_exit(msgs, code, 0)
    assert text_of(msgs) == "from the first message\n"


def test_input_after_eof_is_an_error(api, sandbox):
    async def go():
        async with websockets.connect(ws_url(api, exec_ws_path(sandbox["id"])),
                                      max_size=None) as ws:
            await ws.send(json.dumps({"type": "execute", "shell": "cat; sleep 0.5"}))
            started = await recv_json(ws)
            assert started["type"] == "started"
            await ws.send(json.dumps({"type": "input", "data": "a"}))
            await ws.send(json.dumps({"type": "eof"}))
            await asyncio.sleep(0.2)
            await ws.send(json.dumps({"type": "input", "data": "b"}))
            msgs, code = await drain(ws)
            return [started] + msgs, code
    msgs, code = run(go())
    check_exit(msgs, code, 0)
    assert text_of(msgs) == "a"
    errs = only(msgs, "error")
    assert len(errs) == 1 and errs[0]["error_type"] == "conflict", msgs


@pytest.mark.parametrize("sig,expect", [(None, 9), ("TERM", 15), (15, 15), ("SIGINT", 2)])
def test_kill_mid_stream(api, sandbox, sig, expect):
    async def go():
        async with websockets.connect(ws_url(api, exec_ws_path(sandbox["id"])),
                                      max_size=None) as ws:
            await ws.send(json.dumps({"type": "execute", "shell":
                                      "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.02; "
                                      "done"}))
            msgs = []
            while len(only(msgs, "stdout")) < 3:
                msgs.append(await recv_json(ws))
            kill = {"type": "kill"}
            if sig is not None:
                kill["signal"] = sig
            await ws.send(json.dumps(kill))
            more, code = await drain(ws)
            return msgs + more, code
    msgs, code = run(go())
    check_exit(msgs, code, 128 + expect, signal=expect)
    assert text_of(msgs).startswith("tick 0\ntick 1\ntick 2\n"), msgs[:5]


def test_timeout_in_execute(api, sandbox):
    t0 = time.monotonic()
    msgs, code = run(exec_session(api, sandbox["id"], {
        "type": "execute", "shell": "echo start; sleep 30", "timeout_s": 1}))
    check_exit(msgs, code, 137, signal=9, timed_out=True)
    assert text_of(msgs) == "start\n"
    assert time.monotonic() - t0 < 10


def test_binary_exact_bytes(api, sandbox):
    sid = sandbox["id"]
    res = exec_(api, sid, shell="head -c 700001 /dev/urandom > /workspace/f; "
                                "printf '\\377\\0\\303' >> /workspace/f; sha256sum /workspace/f")
    assert res["exit_code"] == 0, res
    want = res["stdout"].split()[0]
    msgs, code = run(exec_session(api, sid, {"type": "execute", "argv": ["cat", "/workspace/f"],
                                             "binary": True}))
    check_exit(msgs, code, 0)
    for m in only(msgs, "stdout"):
        assert "data_b64" in m and "data" not in m, m
    data = stream_bytes(msgs)
    assert len(data) == 700004
    assert data.endswith(b"\xff\x00\xc3")
    assert hashlib.sha256(data).hexdigest() == want


def test_text_mode_utf8_never_split(api, sandbox):
    # é (c3 a9) and € (e2 82 ac) written in pieces with pauses between them
    script = ("printf '\\303'; sleep 0.3; printf '\\251'; sleep 0.2; printf '\\342\\202'; "
              "sleep 0.3; printf '\\254'; sleep 0.2; printf 'ok'")
    msgs, code = run(exec_session(api, sandbox["id"], {"type": "execute", "shell": script}))
    check_exit(msgs, code, 0)
    out = only(msgs, "stdout")
    assert text_of(msgs) == "\u00e9\u20acok", out
    assert all("\ufffd" not in m["data"] for m in out), out
    # offsets count raw bytes: é is 2 bytes, € 3
    offs = {m["data"]: m["offset"] for m in out}
    assert offs.get("\u00e9", 0) == 0 and offs.get("\u20ac", 2) == 2 and offs.get("ok", 5) == 5, out


def test_text_mode_invalid_bytes_replaced(api, sandbox):
    msgs, code = run(exec_session(api, sandbox["id"], {
        "type": "execute", "shell": "printf 'a\\377b\\300\\300c'; printf 'e\\377' >&2; "
                                    "sleep 0.3; printf 'x\\303'"}))
    check_exit(msgs, code, 0)
    assert text_of(msgs, "stdout") == "a\ufffdb\ufffd\ufffdcx\ufffd", msgs
    assert text_of(msgs, "stderr") == "e\ufffd", msgs
    # offsets count the raw bytes (6 before the 'x'), not the replacement characters
    out = only(msgs, "stdout")
    assert out[0]["offset"] == 0
    assert [m["offset"] for m in out if m["data"].startswith("x")] == [6], out


@pytest.mark.parametrize("first", [
    "not json", "[1,2]", '"execute"', json.dumps({"type": "nope"}), json.dumps({"argv": ["x"]}),
    json.dumps({"type": "execute"}), json.dumps({"type": "execute", "argv": []}),
    json.dumps({"type": "execute", "argv": ["true"], "bogus": 1}),
    json.dumps({"type": "execute", "argv": ["true"], "buffer_bytes": 100}),
    json.dumps({"type": "execute", "argv": ["true"], "timeout_s": -1}),
    json.dumps({"type": "input", "data": "x"}),
    json.dumps({"type": "reconnect", "command_id": "cmd-nosuchcommand"}),
    json.dumps({"type": "reconnect"}),
    b"\x00binary frame",
])
def test_malformed_first_message_closes_1008(api, sandbox, first):
    async def go():
        async with websockets.connect(ws_url(api, exec_ws_path(sandbox["id"])),
                                      max_size=None) as ws:
            await ws.send(first)
            return await drain(ws)
    msgs, code = run(go())
    assert code == 1008, (first, code, msgs)
    assert len(msgs) == 1 and msgs[0]["type"] == "error", msgs
    assert msgs[0]["error_type"] in ("bad_request", "not_found"), msgs
    assert isinstance(msgs[0]["message"], str) and msgs[0]["message"], msgs
    # nothing was started
    r = api.get(f"/v1/sandboxes/{sandbox['id']}/commands")
    assert r.json == {"commands": []}, r


def test_malformed_later_messages_keep_connection(api, sandbox):
    async def go():
        async with websockets.connect(ws_url(api, exec_ws_path(sandbox["id"])),
                                      max_size=None) as ws:
            await ws.send(json.dumps({"type": "execute", "argv": ["cat"]}))
            assert (await recv_json(ws))["type"] == "started"
            errors = []
            for bad in ["garbage", "[]", json.dumps({"no": "type"}),
                        json.dumps({"type": "input"}), json.dumps({"type": "input", "data": 5}),
                        json.dumps({"type": "input", "data_b64": "%%%"}),
                        json.dumps({"type": "kill", "signal": "NOPE"}), b"\x01\x02"]:
                await ws.send(bad)
                m = await recv_json(ws)
                errors.append(m)
            await ws.send(json.dumps({"type": "input", "data": "still works\n"}))
            await ws.send(json.dumps({"type": "eof"}))
            msgs, code = await drain(ws)
            return errors, msgs, code
    errors, msgs, code = run(go())
    for e in errors:
        assert e["type"] == "error" and e["error_type"] == "bad_request", errors
    assert code == 1000
    assert text_of(msgs) == "still works\n"
    assert msgs[-1] == {"type": "exit", "exit_code": 0, "signal": None, "timed_out": False}


def test_unknown_type_and_resize_are_errors(api, sandbox):
    async def go():
        async with websockets.connect(ws_url(api, exec_ws_path(sandbox["id"])),
                                      max_size=None) as ws:
            await ws.send(json.dumps({"type": "execute", "argv": ["cat"]}))
            assert (await recv_json(ws))["type"] == "started"
            await ws.send(json.dumps({"type": "frobnicate"}))
            e1 = await recv_json(ws)
            await ws.send(json.dumps({"type": "resize", "rows": 24, "cols": 80}))
            e2 = await recv_json(ws)
            await ws.send(json.dumps({"type": "input", "data": "ok"}))
            await ws.send(json.dumps({"type": "eof"}))
            msgs, code = await drain(ws)
            return e1, e2, msgs, code
    e1, e2, msgs, code = run(go())
    assert e1["type"] == "error" and "frobnicate" in e1["message"], e1
    assert e2["type"] == "error" and e2["error_type"], e2
    assert code == 1000 and text_of(msgs) == "ok", msgs


def test_http_errors_before_upgrade(api, sandbox):
    sid = sandbox["id"]
    r = api.get(f"/v1/sandboxes/{sid}/exec/ws")
    assert r.status == 400, "a plain GET of a WebSocket endpoint is a 400"
    r = api.get("/v1/sandboxes/sb-nosuchsandbox/exec/ws")
    assert r.status == 404, r
    cid = start_cmd(api, sid, argv=["true"])
    r = api.get(f"/v1/sandboxes/{sid}/commands/{cid}/stream")
    assert r.status == 400, r
    hdrs = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    for q in ("stdout_offset=-1", "stdout_offset=abc", "stderr_offset=", "bogus=1"):
        r = api.get(f"/v1/sandboxes/{sid}/commands/{cid}/stream?{q}", headers=hdrs)
        assert r.status == 400, (q, r)
    r = api.get(f"/v1/sandboxes/{sid}/commands/cmd-nosuchcommand/stream", headers=hdrs)
    assert r.status == 404, r


# ---------------------------------------------------------------------------------------------
# disconnects


def test_kill_on_disconnect_default_exec_ws(api, sandbox):
    sid = sandbox["id"]

    async def go(abort):
        ws = await websockets.connect(ws_url(api, exec_ws_path(sid)), max_size=None)
        await ws.send(json.dumps({"type": "execute", "argv": ["sleep", "30"]}))
        started = await recv_json(ws)
        if abort:
            ws.transport.abort()  # vanish without a close frame
        else:
            await ws.close()
        return started["command_id"]

    # (several times: a disconnect right after "started" is the hard case)
    for abort in (False, True) * 5:
        cid = run(go(abort))
        c = wait_done(api, sid, cid)
        assert c["signal"] == 9 and c["exit_code"] == 137, (abort, c)


def test_kill_right_after_started(api, sandbox):
    """A kill message sent as soon as "started" arrives must end the command."""
    sid = sandbox["id"]

    async def one():
        async with websockets.connect(ws_url(api, exec_ws_path(sid)), max_size=None) as ws:
            await ws.send(json.dumps({"type": "execute", "argv": ["sleep", "30"]}))
            started = await recv_json(ws)
            await ws.send(json.dumps({"type": "kill", "signal": "TERM"}))
            try:
                msgs, code = await drain(ws, timeout=KILL_ANSWER_S)
            except asyncio.TimeoutError:
                return started["command_id"], None
            return started["command_id"], msgs[-1] if msgs else None

    async def go():  # one after another: concurrent starts hide the race
        return [await one() for _ in range(20)]

    results = run(go(), timeout=20 * KILL_ANSWER_S + 60)
    lost = [cid for cid, last in results if last is None]
    for cid in lost:  # do not leave them running
        api.post(f"/v1/sandboxes/{sid}/commands/{cid}/kill", {})
    assert not lost, f"{len(lost)} of 20 kills sent right after 'started' were lost"
    for cid, last in results:
        assert last == {"type": "exit", "exit_code": 143, "signal": 15, "timed_out": False}, last


def test_kill_on_disconnect_false_exec_ws(api, sandbox):
    sid = sandbox["id"]

    async def go():
        async with websockets.connect(ws_url(api, exec_ws_path(sid)), max_size=None) as ws:
            await ws.send(json.dumps({"type": "execute", "argv": ["sleep", "30"],
                                      "kill_on_disconnect": False}))
            return (await recv_json(ws))["command_id"]

    cid = run(go())
    time.sleep(1)
    assert get_cmd(api, sid, cid)["state"] == "running", "kill_on_disconnect=false was killed"
    r = api.post(f"/v1/sandboxes/{sid}/commands/{cid}/kill", {})
    assert r.status == 200, r
    assert wait_done(api, sid, cid)["signal"] == 9


def test_detached_stream_disconnect_keeps_running(api, sandbox):
    sid = sandbox["id"]
    cid = start_cmd(api, sid, shell="echo hi; sleep 60; echo bye")

    async def go(query):
        path = f"/v1/sandboxes/{sid}/commands/{cid}/stream{query}"
        async with websockets.connect(ws_url(api, path), max_size=None) as ws:
            m1 = await recv_json(ws)
            m2 = await recv_json(ws)
            return m1, m2

    m1, m2 = run(go(""))
    assert m1 == {"type": "started", "command_id": cid, "pid": get_cmd(api, sid, cid)["pid"]}
    assert m2 == {"type": "stdout", "data": "hi\n", "offset": 0}, m2
    time.sleep(1)
    assert get_cmd(api, sid, cid)["state"] == "running", "a detached stream killed its command"
    # ...unless the client asks for it
    run(go("?kill_on_disconnect=1"))
    c = wait_done(api, sid, cid)
    assert c["signal"] == 9, c


def test_attach_to_exited_command_and_offsets(api, sandbox):
    sid = sandbox["id"]
    cid = start_cmd(api, sid, shell="printf 0123456789; printf ERR >&2; exit 6")
    wait_done(api, sid, cid)

    async def go(query):
        path = f"/v1/sandboxes/{sid}/commands/{cid}/stream{query}"
        async with websockets.connect(ws_url(api, path), max_size=None) as ws:
            return await drain(ws)

    msgs, code = run(go(""))
    check_exit(msgs, code, 6)
    assert text_of(msgs) == "0123456789" and text_of(msgs, "stderr") == "ERR"
    msgs, code = run(go("?stdout_offset=4&stderr_offset=2"))
    check_exit(msgs, code, 6)
    assert only(msgs, "stdout") == [{"type": "stdout", "data": "456789", "offset": 4}], msgs
    assert only(msgs, "stderr") == [{"type": "stderr", "data": "R", "offset": 2}], msgs
    msgs, code = run(go("?stdout_offset=10&stderr_offset=3&binary=1"))
    check_exit(msgs, code, 6)
    assert not only(msgs, "stdout") and not only(msgs, "stderr"), msgs
    # the same through exec/ws's reconnect message
    msgs, code = run(exec_session(api, sid, {"type": "reconnect", "command_id": cid,
                                             "stdout_offset": 8, "binary": True}))
    check_exit(msgs, code, 6)
    assert only(msgs, "stdout") == [{"type": "stdout", "data_b64": base64.b64encode(
        b"89").decode(), "offset": 8}], msgs


# ---------------------------------------------------------------------------------------------
# reconnect, gaps, many streams, slow clients


GEN = r'''
import sys
fill = bytes(range(97, 123)) * 40
parts = [b"".join(b"%09d\n" % i + fill[i % 26:i % 26 + 1014] for i in r)
         for r in (range(0, 32768), range(32768, 65536), range(65536, 102400))]
for part in parts:
    if not sys.stdin.readline():
        sys.exit(5)
    sys.stdout.buffer.write(part)  # as fast as the pipe takes it
    sys.stdout.buffer.flush()
'''


def gen_local():
    fill = bytes(range(97, 123)) * 40
    return b"".join(b"%09d\n" % i + fill[i % 26:i % 26 + 1014] for i in range(102400))


def test_reconnect_exactly_100mib(api, sandbox):
    """100 MiB through three connections (stream endpoint twice, then exec/ws reconnect),
    lossless, each resuming at the offset the previous one reached. The generator writes in
    three parts, each after a line on stdin, so that nothing is written (and overwritten in
    the 4 MiB ring) while no client is attached: a client disconnects at most 2 MiB before the
    end of a part."""
    sid = sandbox["id"]
    cid = start_cmd(api, sid, argv=["python3", "-c", GEN])
    total = 100 * MiB
    got = bytearray()
    seen = []

    async def read(ws, until):
        await ws.send(json.dumps({"type": "input", "data": "go\n"}))
        stalled = False
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 30))
            seen.append(m["type"])
            if m["type"] == "stdout":
                assert m["offset"] == len(got), f"offset {m['offset']} but have {len(got)}"
                got.extend(m["data"].encode())
                if not stalled:
                    # Stop reading for a while: the generator is far ahead, and only
                    # lossless keeps the ring from being overwritten now (without it, the
                    # daemon drains the pipe at full speed and this client gets a gap).
                    stalled = True
                    await asyncio.sleep(1)
                if until is not None and len(got) >= until:
                    return None
            elif m["type"] == "exit":
                return m
            else:
                assert m["type"] == "started", f"unexpected message {m}"

    async def go():
        t0 = time.monotonic()
        base = f"/v1/sandboxes/{sid}/commands/{cid}/stream"
        async with websockets.connect(ws_url(api, base + "?lossless=1"), max_size=None) as ws:
            await read(ws, 30 * MiB)
        r1 = len(got)
        assert 30 * MiB <= r1 < 32 * MiB
        async with websockets.connect(ws_url(api, f"{base}?lossless=true&stdout_offset={r1}"),
                                      max_size=None) as ws:
            await read(ws, 62 * MiB)
        r2 = len(got)
        assert 62 * MiB <= r2 < 64 * MiB
        async with websockets.connect(ws_url(api, exec_ws_path(sid)), max_size=None) as ws:
            await ws.send(json.dumps({"type": "reconnect", "command_id": cid,
                                      "stdout_offset": r2, "stderr_offset": 0,
                                      "lossless": True}))
            ex = await read(ws, None)
            with pytest.raises(websockets.ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 10)
        return ex, time.monotonic() - t0

    ex, secs = run(go(), timeout=90)
    assert ex == {"type": "exit", "exit_code": 0, "signal": None, "timed_out": False}, ex
    assert "gap" not in seen, "a lossless client saw a gap"
    assert seen.count("started") == 3
    assert len(got) == total
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(gen_local()).hexdigest(), \
        "the reassembled 100 MiB differ from what was generated"
    c = get_cmd(api, sid, cid)
    assert c["stdout_bytes"] == total and c["exit_code"] == 0, c
    print(f"100 MiB over 3 connections in {secs:.1f}s")


def test_lossless_pauses_and_lossy_gaps(api, sandbox):
    """With a small ring, a lossless client that stops reading for a while still gets every
    byte; a lossy one doing the same sees gaps that account exactly for the missing bytes."""
    sid = sandbox["id"]
    n = 32 * MiB
    res = exec_(api, sid, shell=f"head -c {n} /dev/urandom > /workspace/r; "
                                "sha256sum /workspace/r")
    want = res["stdout"].split()[0]

    async def go(lossless):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(("127.0.0.1", api.port))
        async with websockets.connect(ws_url(api, exec_ws_path(sid)), max_size=None,
                                      sock=sock, max_queue=1) as ws:
            await ws.send(json.dumps({"type": "execute", "argv": ["cat", "/workspace/r"],
                                      "binary": True, "buffer_bytes": 1 * MiB,
                                      "lossless": lossless}))
            msgs = [await recv_json(ws)]
            await asyncio.sleep(2)  # cat is far ahead now
            more, code = await drain(ws)
            return msgs + more, code

    msgs, code = run(go(True), timeout=60)
    check_exit(msgs, code, 0)
    assert not only(msgs, "gap")
    data = stream_bytes(msgs)
    assert len(data) == n
    assert hashlib.sha256(data).hexdigest() == want

    msgs, code = run(go(False), timeout=60)
    check_exit(msgs, code, 0)
    gaps = only(msgs, "gap")
    assert gaps, "a stalled lossy client with a 1 MiB ring must see gaps"
    pos, received = 0, 0
    for m in msgs:
        if m["type"] == "gap":
            assert m["stream"] == "stdout" and m["offset"] == pos and m["lost"] > 0, m
            pos += m["lost"]
        elif m["type"] == "stdout":
            assert m["offset"] == pos, (m["offset"], pos)
            k = len(base64.b64decode(m["data_b64"]))
            pos += k
            received += k
    assert pos == n, "data + gaps must cover the whole stream"
    assert received < n


def test_gap_reporting(api, sandbox):
    sid = sandbox["id"]
    gen = "import sys; sys.stdout.buffer.write(b''.join(b'%07d\\n' % i for i in range(131072)))"
    expect = b"".join(b"%07d\n" % i for i in range(131072))
    total = len(expect)
    assert total == MiB
    cid = start_cmd(api, sid, argv=["python3", "-c", gen], buffer_bytes=65536)
    c = wait_done(api, sid, cid)
    assert c["exit_code"] == 0 and c["stdout_bytes"] == total, c

    async def go(query):
        path = f"/v1/sandboxes/{sid}/commands/{cid}/stream{query}"
        async with websockets.connect(ws_url(api, path), max_size=None) as ws:
            return await drain(ws)

    msgs, code = run(go("?binary=1"))
    check_exit(msgs, code, 0)
    assert msgs[1] == {"type": "gap", "stream": "stdout", "offset": 0,
                       "lost": total - 65536}, msgs[:3]
    assert len(only(msgs, "gap")) == 1, msgs
    data = b""
    pos = total - 65536
    for m in only(msgs, "stdout"):
        assert m["offset"] == pos + len(data), m["offset"]
        data += base64.b64decode(m["data_b64"])
    assert data == expect[-65536:]
    # from an offset inside the ring: no gap; from one just before it: a gap of the difference
    msgs, code = run(go(f"?stdout_offset={total - 1000}"))
    check_exit(msgs, code, 0)
    assert not only(msgs, "gap") and stream_bytes_from(msgs, total - 1000) == expect[-1000:]
    msgs, code = run(go(f"?stdout_offset={total - 65536 - 10}"))
    gaps = only(msgs, "gap")
    assert gaps == [{"type": "gap", "stream": "stdout", "offset": total - 65536 - 10,
                     "lost": 10}], gaps


def stream_bytes_from(msgs, start, stream="stdout"):
    out = bytearray()
    for m in only(msgs, stream):
        assert m["offset"] == start + len(out), (m["offset"], start + len(out))
        out += base64.b64decode(m["data_b64"]) if "data_b64" in m else m["data"].encode()
    return bytes(out)


def test_200_concurrent_streams(api, new_sandbox):
    sids = [new_sandbox()["id"] for _ in range(20)]
    expect = "".join(f"{i}\n" for i in range(1, 20001))

    async def one(sid, k):
        async with websockets.connect(ws_url(api, exec_ws_path(sid)), max_size=None,
                                      open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "execute", "shell": f"seq 1 20000; exit {k % 7}"}))
            msgs, code = await drain(ws, timeout=50)
            return k, msgs, code

    async def go():
        t0 = time.monotonic()
        res = await asyncio.gather(*(one(sids[k % 20], k) for k in range(200)))
        return res, time.monotonic() - t0

    results, secs = run(go(), timeout=75)
    assert len(results) == 200
    for k, msgs, code in results:
        check_exit(msgs, code, k % 7)
        assert stream_bytes(msgs).decode() == expect, f"stream {k} lost or mixed output"
    per_sb = {}
    for sid in sids:
        r = api.get(f"/v1/sandboxes/{sid}/commands")
        per_sb[sid] = len(r.json["commands"])
    assert set(per_sb.values()) == {10}, per_sb
    print(f"200 streams in {secs:.1f}s")


def test_slow_client_does_not_grow_rss(api, daemon, sandbox):
    sid = sandbox["id"]
    exec_(api, sid, argv=["true"])
    base = daemon_rss(daemon)
    cid = start_cmd(api, sid, shell="head -c 524288000 /dev/zero")
    raw = RawWs(api.port, f"/v1/sandboxes/{sid}/commands/{cid}/stream?binary=1&lossless=0",
                rcvbuf=65536)
    try:
        # The client reads nothing for at least 5 s, and until the command has written
        # 256 MiB (at most 30 s, for a loaded machine); meanwhile, sample the daemon's RSS.
        peak = base
        t0 = time.monotonic()
        while True:
            peak = max(peak, daemon_rss(daemon))
            c = get_cmd(api, sid, cid)
            waited = time.monotonic() - t0
            if waited >= 30 or (waited >= 5 and c["stdout_bytes"] >= 256 * MiB):
                break
            time.sleep(0.1)
        growth = peak - base
        print(f"daemon RSS {base / MiB:.1f} MiB -> peak {peak / MiB:.1f} MiB; "
              f"command wrote {c['stdout_bytes'] / MiB:.0f} MiB in {waited:.1f} s")
        assert growth < 64 * MiB, f"daemon RSS grew by {growth / MiB:.1f} MiB for a slow client"
        # the command was not held back by the client (it asked for lossless=0)...
        assert c["stdout_bytes"] >= 256 * MiB, c
        # ...so the client, once it reads, is told what it missed
        saw_gap = False
        deadline = time.monotonic() + 30
        while not saw_gap and time.monotonic() < deadline:
            op, payload = raw.recv_message()
            assert op == 1, (op, payload[:100])
            m = json.loads(payload)
            assert m["type"] in ("started", "stdout", "gap"), m
            if m["type"] == "gap":
                saw_gap = True
                assert m["lost"] > 0 and m["stream"] == "stdout", m
        assert saw_gap
    finally:
        raw.close()
    assert api.healthy()


# ---------------------------------------------------------------------------------------------
# protocol errors


@pytest.mark.parametrize("name,frame,code", [
    ("unmasked", RawWs.frame(1, b'{"type":"execute","argv":["true"]}', mask=False), 1002),
    ("invalid utf-8", RawWs.frame(1, b'{"type":"\xff\xfe"}'), 1007),
    ("reserved bits", RawWs.frame(1, b"{}", rsv=4), 1002),
    ("unknown opcode", RawWs.frame(3, b"x"), 1002),
    ("fragmented ping", RawWs.frame(9, b"p", fin=False), 1002),
    ("continuation first", RawWs.frame(0, b"x"), 1002),
])
def test_protocol_errors(api, sandbox, name, frame, code):
    sid = sandbox["id"]
    raw = RawWs(api.port, exec_ws_path(sid))
    try:
        raw.send_raw(frame)
        op, payload = raw.recv_message()
        while op != 8:  # an error message may come first
            op, payload = raw.recv_message()
        assert close_code_of(payload) == code, (name, payload)
    finally:
        raw.close()
    # the daemon keeps serving, WebSockets included
    assert api.healthy()
    msgs, c = run(exec_session(api, sid, {"type": "execute", "argv": ["echo", "fine"]}))
    check_exit(msgs, c, 0)
    assert text_of(msgs) == "fine\n"


def test_protocol_error_mid_command(api, sandbox):
    """A broken frame during a command: close 1007, and (kill_on_disconnect) the command dies."""
    sid = sandbox["id"]
    raw = RawWs(api.port, exec_ws_path(sid))
    try:
        raw.send_text(json.dumps({"type": "execute", "argv": ["sleep", "30"]}))
        op, payload = raw.recv_message()
        started = json.loads(payload)
        assert started["type"] == "started", started
        raw.send_raw(RawWs.frame(1, b"\xc3\x28"))
        op, payload = raw.recv_message()
        assert op == 8 and close_code_of(payload) == 1007, (op, payload)
    finally:
        raw.close()
    c = wait_done(api, sid, started["command_id"])
    assert c["signal"] == 9, c
    assert api.healthy()


def test_oversized_message_1009(api, sandbox):
    sid = sandbox["id"]
    raw = RawWs(api.port, exec_ws_path(sid))
    try:
        payload = b'{"type":"execute","argv":["echo","' + b"a" * (17 * MiB) + b'"]}'
        head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", len(payload)) + b"\0\0\0\0"
        try:
            raw.send_raw(head + payload)  # zero mask: the payload goes as is
        except OSError:
            pass  # the server may close before reading it all
        op, data = raw.recv_message()
        while op != 8:
            op, data = raw.recv_message()
        assert close_code_of(data) == 1009, data
    finally:
        raw.close()
    assert api.healthy()
