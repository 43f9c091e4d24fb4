"""A client that is attached and reading gets every byte, however slowly it reads: the daemon
stops draining the command's pipe (or the terminal) while the client is behind, and the command
blocks in write as it would with a slow reader on a pipe. Each path is tried with a deliberately
slow client (a pause between reads) and output several times the 4 MiB ring: exec/ws,
commands/{cid}/stream, terminal attach, and the CLI's `exec` and `logs -f`.

The pauses are the point of these tests (they make the client slow), not waits for a condition.
"""

import asyncio
import json
import os
import subprocess
import time

import websockets

from conftest import exec_

MiB = 1 << 20
TOTAL = 24 * MiB  # six rings' worth
PAUSE_EVERY = 2 * MiB  # the client stops reading for PAUSE_S after every PAUSE_EVERY bytes
PAUSE_S = 0.3


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_url(api, path):
    return f"ws://127.0.0.1:{api.port}{path}"


async def slow_read(ws):
    """Reads JSON messages until the server closes, pausing now and then. Returns (stdout bytes
    in order, offsets contiguous), the message types seen, the exit message."""
    got = bytearray()
    types = []
    exit_msg = None
    next_pause = PAUSE_EVERY
    try:
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 60))
            types.append(m["type"])
            if m["type"] == "stdout":
                assert m["offset"] == len(got), (m["offset"], len(got))
                got += m["data"].encode()
                if len(got) >= next_pause:
                    next_pause += PAUSE_EVERY
                    await asyncio.sleep(PAUSE_S)
            elif m["type"] == "exit":
                exit_msg = m
    except websockets.ConnectionClosedOK:
        pass
    return bytes(got), types, exit_msg


def expect_yes(data, n):
    assert len(data) == n, f"got {len(data)} of {n} bytes"
    assert data == b"y\n" * (n // 2), "the bytes differ from what the command wrote"


def test_exec_ws_slow_client_gets_every_byte(api, sandbox):
    """The reported case: `yes | head -c N` through exec/ws with a json-decoding client that
    reads slower than the command writes, and no flow-control option asked for."""
    sid = sandbox["id"]

    async def go():
        async with websockets.connect(ws_url(api, f"/v1/sandboxes/{sid}/exec/ws"),
                                      max_size=None, max_queue=4) as ws:
            await ws.send(json.dumps({"type": "execute", "shell": f"yes | head -c {TOTAL}"}))
            return await slow_read(ws)

    data, types, ex = run(go())
    assert "gap" not in types, "an attached client saw a gap"
    expect_yes(data, TOTAL)
    assert ex and ex["exit_code"] == 0, ex


def test_command_stream_slow_client_gets_every_byte(api, sandbox):
    """Attach to a detached command (which waits for a line on stdin, so nothing is written
    before the client is there), then read slowly."""
    sid = sandbox["id"]
    r = api.post(f"/v1/sandboxes/{sid}/commands",
                 {"shell": f"read go; yes | head -c {TOTAL}"})
    assert r.status == 201, r
    cid = r.json["command_id"]

    async def go():
        path = f"/v1/sandboxes/{sid}/commands/{cid}/stream"
        async with websockets.connect(ws_url(api, path), max_size=None, max_queue=4) as ws:
            await ws.send(json.dumps({"type": "input", "data": "go\n"}))
            return await slow_read(ws)

    data, types, ex = run(go())
    assert "gap" not in types, "an attached client saw a gap"
    expect_yes(data, TOTAL)
    assert ex and ex["exit_code"] == 0, ex


def test_lossless_false_keeps_the_old_choice(api, sandbox):
    """A client may prefer gaps to slowing the command down; what it gets and what it was told
    it lost still add up to everything."""
    sid = sandbox["id"]

    async def go():
        async with websockets.connect(ws_url(api, f"/v1/sandboxes/{sid}/exec/ws"),
                                      max_size=None, max_queue=1) as ws:
            await ws.send(json.dumps({"type": "execute", "shell": f"yes | head -c {TOTAL}",
                                      "lossless": False, "buffer_bytes": MiB}))
            msgs = []
            try:
                while True:
                    msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
                    if len(msgs) == 2:
                        await asyncio.sleep(2)  # stalled: the command runs ahead
            except websockets.ConnectionClosedOK:
                pass
            return msgs

    msgs = run(go())
    pos = 0
    for m in msgs:
        if m["type"] == "gap":
            assert m["offset"] == pos
            pos += m["lost"]
        elif m["type"] == "stdout":
            assert m["offset"] == pos
            pos += len(m["data"].encode())
    assert pos == TOTAL
    assert any(m["type"] == "gap" for m in msgs), "a stalled lossy client must see gaps"


def test_terminal_slow_viewer_is_held_not_dropped(api, sandbox):
    """A terminal viewer that reads slowly is never disconnected and gets the program's whole
    output; the program waits for it."""
    sid = sandbox["id"]
    n = 16 * MiB
    r = api.post(f"/v1/sandboxes/{sid}/terminals",
                 {"cols": 80, "rows": 24,
                  "argv": ["sh", "-c", f"read go; head -c {n} /dev/zero | tr '\\0' a; "
                                       "echo; echo THE-END; sleep 30"]})
    assert r.status == 201, r
    tid = r.json["terminal_id"]

    async def go():
        path = f"/v1/sandboxes/{sid}/terminals/{tid}/attach"
        async with websockets.connect(ws_url(api, path), max_size=None, max_queue=4) as ws:
            await ws.send(b"go\n")
            count, tail, stalled = 0, b"", False
            while b"THE-END" not in tail:
                m = await asyncio.wait_for(ws.recv(), 60)
                if isinstance(m, str):
                    continue
                count += m.count(b"a")
                tail = (tail + m)[-64:]
                if count >= MiB and not stalled:
                    # A terminal is slower than a pipe (every byte goes through the screen
                    # model): one long stall lets the program get far ahead of this viewer.
                    stalled = True
                    await asyncio.sleep(4)
            return count

    count = run(go())
    # The late-viewer redraw may hold a screenful of a's too; the program's own output is there
    # in full.
    assert count >= n, f"the viewer got {count} of {n} bytes"
    assert api.delete(f"/v1/sandboxes/{sid}/terminals/{tid}").status == 204


def slow_read_pipe(f):
    """Reads a pipe to its end, pausing now and then; returns the byte count."""
    n, next_pause = 0, PAUSE_EVERY
    while True:
        b = os.read(f.fileno(), 65536)
        if not b:
            return n
        n += len(b)
        if n >= next_pause:
            next_pause += PAUSE_EVERY
            time.sleep(PAUSE_S)


def cli_popen(daemon, args):
    env = {**os.environ, "WARREN_URL": daemon.url}
    return subprocess.Popen([daemon.bin, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)


def finish(cli):
    err = cli.stderr.read()
    return cli.wait(timeout=30), err


def test_cli_exec_slow_reader(daemon, sandbox):
    sid = sandbox["id"]
    cli = cli_popen(daemon, ["exec", sid, "--", "sh", "-c", f"yes | head -c {TOTAL}"])
    try:
        got = slow_read_pipe(cli.stdout)
        rc, err = finish(cli)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert rc == 0 and got == TOTAL, (rc, got, err[-500:])
    assert b"gap" not in err and b"lost" not in err, err[-500:]


def test_cli_logs_follow_slow_reader(daemon, api, sandbox):
    """`warren logs -f` on a detached command that says `ready`, then waits for a file the test
    makes once that line came through `logs -f` (so the follower is attached before the flood)."""
    sid = sandbox["id"]
    r = api.post(f"/v1/sandboxes/{sid}/commands",
                 {"shell": "echo ready; while [ ! -e /tmp/go ]; do sleep 0.05; done; "
                           f"yes | head -c {TOTAL}"})
    assert r.status == 201, r
    cid = r.json["command_id"]
    cli = cli_popen(daemon, ["logs", "-f", sid, cid])
    try:
        first = b""
        while b"ready\n" not in first:
            b = os.read(cli.stdout.fileno(), 64)
            assert b, f"logs -f ended early: {first!r} {cli.stderr.read()[-500:]!r}"
            first += b
        assert first == b"ready\n", first
        assert exec_(api, sid, argv=["touch", "/tmp/go"])["exit_code"] == 0
        got = slow_read_pipe(cli.stdout)
        rc, err = finish(cli)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert rc == 0 and got == TOTAL, (rc, got, err[-500:])
    assert b"gap" not in err and b"lost" not in err, err[-500:]
