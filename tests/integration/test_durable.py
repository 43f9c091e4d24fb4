"""Sandboxes outlive the daemon: SIGTERM, SIGINT and kill -9 leave them running, and the next
`warren serve` on the same state dir takes them over (issue 11).

Every test runs its own daemon (fresh_daemon), crashes or stops it, and restarts it on the same
state dir (Daemon.restart_same). The fixture's teardown deletes what is left, stops the daemon
and checks that nothing remains: processes, mounts (the pinned mount namespace included), loop
devices, sandbox directories, cgroups.
"""
import asyncio
import base64
import json
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
import threading

import websockets

from conftest import (WAIT_S, Api, Daemon, alive_same, descendants, proc_stat, sh, wait_for,
                      _read)


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def lines(a, b):
    """What `seq -f L%06g a b` prints: the deterministic generator of the commands below."""
    return b"".join(b"L%06d\n" % i for i in range(a, b + 1))


def gen_script(a_end, b_end, go, code):
    """Writes lines 1..a_end, waits for the file `go`, writes a_end+1..b_end, exits `code`."""
    return (f"seq -f L%06g 1 {a_end}; while [ ! -e {go} ]; do sleep 0.02; done; "
            f"seq -f L%06g {a_end + 1} {b_end}; exit {code}")


def pin(d):
    return os.path.join(d.state_dir, "mnt.ns")


def in_daemon_ns(d, *argv):
    """Runs argv in the daemon's (pinned) mount namespace: it works while no daemon runs."""
    return subprocess.run(["nsenter", f"--mount={pin(d)}", *argv], capture_output=True,
                          text=True, timeout=30)


def ws_path(d, sid):
    return os.path.join(d.state_dir, "sandboxes", sid, "workspace")


def get_cmd(api, sid, cid):
    r = api.get(f"/v1/sandboxes/{sid}/commands/{cid}")
    assert r.status == 200, r
    return r.json


def start_cmd(api, sid, script):
    r = api.post(f"/v1/sandboxes/{sid}/commands", {"shell": script})
    assert r.status == 201, r
    return r.json["command_id"]


async def read_stream(port, sid, cid, offset, stop_after=None, timeout=60):
    """Binary stream of a command's stdout from `offset`: (bytes, exit message or None). With
    stop_after, returns once at least that many bytes came (the client goes away)."""
    url = (f"ws://127.0.0.1:{port}/v1/sandboxes/{sid}/commands/{cid}/stream?"
           f"stdout_offset={offset}&binary=1")
    out = bytearray()
    async with websockets.connect(url, max_size=None) as ws:
        while True:
            try:
                m = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            except websockets.ConnectionClosed:
                return bytes(out), None
            if m["type"] == "stdout":
                assert m["offset"] == offset + len(out), (m["offset"], offset, len(out))
                out += base64.b64decode(m["data_b64"])
                if stop_after is not None and len(out) >= stop_after:
                    return bytes(out), None
            elif m["type"] == "gap":
                raise AssertionError(f"gap in the stream: {m}")
            elif m["type"] == "exit":
                return bytes(out), m


def init_pid(sid):
    """The host pid of a sandbox's init: the process of its cgroup that is pid 1 inside."""
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        if sid not in (_read(f"/proc/{pid}/cgroup") or ""):
            continue
        for line in (_read(f"/proc/{pid}/status") or "").splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == "1":
                return pid
    raise AssertionError(f"no init found for {sid}")


def sandbox_list(api):
    r = api.get("/v1/sandboxes")
    assert r.status == 200, r
    return r.json["sandboxes"]


def loop_devices(d):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if d.base_dir in l]


def daemon_mounts(d, sid):
    return [l for l in (_read(f"/proc/{d.pid}/mountinfo") or "").splitlines() if sid in l]


# ---------------------------------------------------------------------------------------------


def _survives(fresh_daemon, how):
    d = fresh_daemon()
    api = Api(d)
    sb = api.create(name="keeper")
    assert sh(api, sb["id"], "echo data > /workspace/f; echo ok")["stdout"] == "ok\n"
    init = init_pid(sb["id"])
    init_start = proc_stat(init)[2]
    if how == "kill":
        d.kill9()
    else:
        d.proc.send_signal(how)
        assert d.proc.wait(timeout=WAIT_S) == 0
        d.logf.close()
    assert alive_same(init, init_start), "the sandbox's init died with the daemon"
    d.restart_same()
    sbs = sandbox_list(api)
    assert [(s["id"], s["name"], s["state"]) for s in sbs] == [(sb["id"], "keeper", "running")]
    r = sh(api, sb["id"], "cat /workspace/f; echo $$ > /dev/null")
    assert r["exit_code"] == 0 and r["stdout"] == "data\n", r
    assert alive_same(init, init_start), "re-adoption must not replace the init"
    # Still a normal sandbox: it stops, starts and deletes.
    assert api.post(f"/v1/sandboxes/{sb['id']}/stop", {"grace_s": 0}).status == 200
    assert api.post(f"/v1/sandboxes/{sb['id']}/start", {}).status == 200
    assert sh(api, sb["id"], "cat /workspace/f")["stdout"] == "data\n"


def test_kill9_keeps_sandboxes(fresh_daemon):
    _survives(fresh_daemon, "kill")


def test_sigterm_keeps_sandboxes(fresh_daemon):
    _survives(fresh_daemon, signal.SIGTERM)


def test_sigint_keeps_sandboxes(fresh_daemon):
    _survives(fresh_daemon, signal.SIGINT)


def test_detached_commands_across_a_crash(fresh_daemon):
    """Output written before, during and after the daemon's absence is streamed exactly from the
    client's last offset; exit statuses of commands that ended meanwhile are known."""
    d = fresh_daemon()
    api = Api(d)
    sid = api.create()["id"]
    # cmd1's second part fits in its pipe: it ends while no daemon runs. cmd2's (480 KB) does
    # not: it blocks on the full pipe and ends after the restart.
    c1 = start_cmd(api, sid, gen_script(2000, 4000, "/workspace/go", 5))
    c2 = start_cmd(api, sid, gen_script(2000, 60000, "/workspace/go", 6))
    a = lines(1, 2000)
    for c in (c1, c2):
        wait_for(lambda: get_cmd(api, sid, c)["stdout_bytes"] == len(a), what="first part")
    # Clients read part of it, then the daemon crashes.
    got1, _ = run(read_stream(d.port, sid, c1, 0, stop_after=5000))
    got2, _ = run(read_stream(d.port, sid, c2, 0, stop_after=7000))
    assert got1 == a[:len(got1)] and got2 == a[:len(got2)]
    d.kill9()
    # While no daemon runs: the commands go on.
    r = in_daemon_ns(d, "touch", os.path.join(ws_path(d, sid), "go"))
    assert r.returncode == 0, r.stderr
    init = init_pid(sid)  # it outlived the daemon
    # cmd1 ends while the daemon is down: only the init (and cmd2's shell and seq) remain.
    wait_for(lambda: len([l for l in (_read(f"/proc/{init}/task/{init}/children") or "").split()])
             == 1, what="cmd1 ended while the daemon was down")
    d.restart_same()
    out1, ex1 = run(read_stream(d.port, sid, c1, len(got1)))
    out2, ex2 = run(read_stream(d.port, sid, c2, len(got2)))
    assert got1 + out1 == lines(1, 4000), "cmd1's stream is not exact across the crash"
    assert got2 + out2 == lines(1, 60000), "cmd2's stream is not exact across the crash"
    assert ex1 and ex1["exit_code"] == 5, ex1
    assert ex2 and ex2["exit_code"] == 6, ex2
    c = get_cmd(api, sid, c1)
    assert c["state"] == "exited" and c["exit_code"] == 5 and c["stdout_bytes"] == len(lines(1, 4000))
    ids = [x["command_id"] for x in api.get(f"/v1/sandboxes/{sid}/commands").json["commands"]]
    assert sorted(ids) == sorted([c1, c2])


def test_inflight_exec_killed_and_no_leftover_processes(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    sid = api.create()["id"]
    t = threading.Thread(target=lambda: _ignore(lambda: sh(api, sid, "sleep 1234")), daemon=True)
    t.start()
    wait_for(lambda: "sleep 1234" in sh(api, sid, "ps -eo args")["stdout"], what="exec running")
    d.kill9()
    d.restart_same()
    t.join(WAIT_S)
    # The one-shot exec's process had nobody to answer to any more: the new daemon killed it.
    wait_for(lambda: "sleep 1234" not in sh(api, sid, "ps -eo args")["stdout"],
             what="the orphaned exec killed")
    procs = sh(api, sid, "ps -eo comm --no-headers")["stdout"].split()
    assert len(procs) == 3 and set(procs[1:]) <= {"sh", "ps"}, procs  # the init, sh, ps


def _ignore(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 - its connection dies with the daemon: expected
        pass


def test_init_gone_comes_back_stopped(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    sb = api.create(name="orphan")
    sh(api, sb["id"], "echo kept > /workspace/f")
    init = init_pid(sb["id"])
    d.kill9()
    os.kill(init, signal.SIGKILL)
    wait_for(lambda: proc_stat(init) is None or proc_stat(init)[0] in "ZX", what="init gone")
    d.restart_same()
    s = api.get(f"/v1/sandboxes/{sb['id']}").json
    assert s["state"] == "stopped" and s["name"] == "orphan", s
    assert api.post(f"/v1/sandboxes/{sb['id']}/start", {}).status == 200
    assert sh(api, sb["id"], "cat /workspace/f")["stdout"] == "kept\n"


def test_stop_sandboxes_on_exit(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    sb = api.create(name="stopper")
    sh(api, sb["id"], "echo kept > /workspace/f; sleep 1000 >/dev/null 2>&1 &")
    init = init_pid(sb["id"])
    start = proc_stat(init)[2]
    d.kill9()
    d.restart_same(extra_args=["--stop-sandboxes-on-exit"])
    assert sandbox_list(api)[0]["state"] == "running"
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=WAIT_S) == 0
    d.logf.close()
    wait_for(lambda: not alive_same(init, start), what="the init stopped")
    # Nothing of the daemon's remains on the host: no pinned namespace, no disk, no loop device.
    mounts = [l for l in (_read("/proc/self/mountinfo") or "").splitlines() if d.base_dir in l]
    assert not mounts, mounts
    wait_for(lambda: not loop_devices(d), what="loop devices released")
    d.restart_same(extra_args=[])
    s = api.get(f"/v1/sandboxes/{sb['id']}").json
    assert s["state"] == "stopped", s
    assert api.post(f"/v1/sandboxes/{sb['id']}/start", {}).status == 200
    assert sh(api, sb["id"], "cat /workspace/f")["stdout"] == "kept\n"


def test_newer_store_schema_refused():
    d = Daemon()
    db = sqlite3.connect(os.path.join(d.state_dir, "warren.db"))
    db.execute("PRAGMA user_version = 999")
    db.commit()
    db.close()
    argv = [d.bin, "serve", "--listen", f"127.0.0.1:{d.port}", "--state-dir", d.state_dir]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "schema version 999" in p.stderr + p.stdout and "newer warren" in p.stderr + p.stdout
    assert not os.path.exists(pin(d)), "a refused state dir must not be touched"
    d.stopped = True
    import shutil
    shutil.rmtree(d.base_dir)


def test_many_sandboxes_and_streams_across_a_crash(fresh_daemon):
    """20 sandboxes with commands, 5 clients streaming across a kill -9; no duplicate, nothing
    leaked once they are deleted."""
    d = fresh_daemon()
    api = Api(d)
    sids = [api.create(name=f"many-{i}")["id"] for i in range(20)]
    for sid in sids:
        sh(api, sid, f"echo {sid} > /workspace/id")
    cmds = []
    for sid in sids[:5]:
        cmds.append((sid, start_cmd(api, sid, gen_script(3000, 20000, "/workspace/go", 3))))
    for sid in sids[5:]:
        start_cmd(api, sid, "sleep 1000")
    a = lines(1, 3000)
    for sid, cid in cmds:
        wait_for(lambda: get_cmd(api, sid, cid)["stdout_bytes"] == len(a), what="first part")

    async def clients_before():
        return await asyncio.gather(*(read_stream(d.port, s, c, 0, stop_after=4096 * (i + 1))
                                      for i, (s, c) in enumerate(cmds)))

    before = [b for b, _ in run(clients_before())]
    d.kill9()
    for sid, _ in cmds:
        assert in_daemon_ns(d, "touch", os.path.join(ws_path(d, sid), "go")).returncode == 0
    d.restart_same()
    m = re.findall(r"recovery: (\d+) sandboxes \((\d+) running\) in ([\d.]+) ms", d.log())
    assert m and m[-1][:2] == ("20", "20"), m
    sbs = sandbox_list(api)
    assert sorted(s["id"] for s in sbs) == sorted(sids), "duplicates or missing sandboxes"
    assert all(s["state"] == "running" for s in sbs)

    async def clients_after():
        return await asyncio.gather(*(read_stream(d.port, s, c, len(before[i]))
                                      for i, (s, c) in enumerate(cmds)))

    for i, (out, ex) in enumerate(run(clients_after())):
        assert before[i] + out == lines(1, 20000), f"stream {i} not exact"
        assert ex["exit_code"] == 3, ex
    for sid in sids:
        assert sh(api, sid, "cat /workspace/id")["stdout"] == f"{sid}\n"
    for sid in sids:
        api.remove(sid)
    assert sandbox_list(api) == []
    for sid in sids:
        assert not daemon_mounts(d, sid), f"mounts of {sid} left"
    wait_for(lambda: len(loop_devices(d)) <= 2, what="only the disk pool's loop devices left")
