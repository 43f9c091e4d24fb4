"""Stop, kill and start of a sandbox (docs/API.md, "Stop, kill, start"): a stopped sandbox has no
process, keeps its files (root and /workspace) and its identity, and starts again on them."""
import asyncio
import json
import os
import subprocess
import threading
import time
import urllib.parse

import websockets

from conftest import WAIT_S, Api, cgroup_dirs_of, exec_, sh, wait_for

# Far above what a stop or start takes here, and far below the default grace period (10 s), so
# that a stop which waited for the grace period instead of ending early fails.
QUICK_S = 5


def post(api, sid, verb, body=None, raw=None):
    return api.post(f"/v1/sandboxes/{sid}/{verb}", body, raw=raw)


def stop(api, sid, **body):
    t0 = time.monotonic()
    r = post(api, sid, "stop", body)
    assert r.status == 200, r
    assert r.json["state"] == "stopped", r.json
    return time.monotonic() - t0


def start(api, sid):
    r = post(api, sid, "start")
    assert r.status == 200, r
    assert r.json["state"] == "running", r.json
    return r.json


def get(api, sid):
    r = api.get(f"/v1/sandboxes/{sid}")
    assert r.status == 200, r
    return r.json


def start_cmd(api, sid, script):
    r = api.post(f"/v1/sandboxes/{sid}/commands", {"argv": ["sh", "-c", script]})
    assert r.status == 201, r
    return r.json["command_id"]


def wait_file(api, sid, path):
    wait_for(lambda: sh(api, sid, f"test -e {path}")["exit_code"] == 0, what=f"{path} in {sid}")


def proxy_open(api, sid):
    r = exec_(api, sid, argv=["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/3128 && echo open"])
    return r["stdout"] == "open\n"


IDENTITY = ("id", "name", "template", "labels", "resources", "network", "created_at", "node")


def test_stop_keeps_files_and_identity(api, new_sandbox):
    sb = new_sandbox(name="keeper", env={"GREETING": "hello"}, labels={"team": "a"},
                     resources={"cpus": 0.5, "memory_mib": 256, "pids": 64},
                     network={"mode": "allowlist", "allow": ["example.com"]})
    sid = sb["id"]
    r = sh(api, sid, "echo root > /root/r.txt && echo ws > /workspace/w.txt "
                     "&& echo tmp > /tmp/t.txt && hostname")
    assert r["exit_code"] == 0, r
    assert proxy_open(api, sid)
    assert stop(api, sid) < QUICK_S

    st = get(api, "keeper")
    assert st["state"] == "stopped" and st["id"] == sid, st
    assert "usage" not in st, st
    listed = api.get("/v1/sandboxes?state=stopped").json["sandboxes"]
    assert [s["id"] for s in listed] == [sid], listed
    # No process and no cgroup of it are left.
    assert cgroup_dirs_of([sid]) == []

    again = start(api, sid)
    for k in IDENTITY:
        assert again[k] == sb[k], (k, again[k], sb[k])
    r = sh(api, sid, "cat /root/r.txt /workspace/w.txt /tmp/t.txt; echo $GREETING; hostname")
    assert r["stdout"] == "root\nws\ntmp\nhello\nkeeper\n", r
    # The egress proxy listens again inside (allowlist mode).
    assert proxy_open(api, sid)
    # The new init has a cgroup again.
    assert get(api, sid)["usage"]["pids"] >= 1
    assert cgroup_dirs_of([sid]) != []


def test_stop_sends_term_and_waits_for_the_processes(api, sandbox):
    sid = sandbox["id"]
    # A process that has left its session and process group still gets the SIGTERM. (Its
    # output goes elsewhere: the command's pipes close when the command ends, and a shell
    # reporting its killed `sleep` there would die of SIGPIPE before its trap runs.)
    start_cmd(api, sid, "setsid sh -c 'trap \"echo bye > /workspace/termed; exit 0\" TERM; "
                        "echo up > /workspace/up; while :; do sleep 0.1; done' "
                        ">/dev/null 2>&1 & wait")
    wait_file(api, sid, "/workspace/up")
    took = stop(api, sid, grace_s=30)
    assert took < QUICK_S, f"stop waited {took:.1f}s: the grace period should end early"
    start(api, sid)
    assert sh(api, sid, "cat /workspace/termed")["stdout"] == "bye\n"


def test_stop_kills_after_the_grace_period(api, sandbox):
    sid = sandbox["id"]
    cid = start_cmd(api, sid, "trap '' TERM; echo up > /workspace/up; "
                              "while :; do sleep 0.1; done")
    wait_file(api, sid, "/workspace/up")
    took = stop(api, sid, grace_s=1)
    assert 1 <= took < 1 + QUICK_S, took
    c = api.get(f"/v1/sandboxes/{sid}/commands/{cid}").json
    assert c["state"] == "failed" and "stopped" in c["error"], c


def test_kill_is_immediate(api, sandbox):
    sid = sandbox["id"]
    start_cmd(api, sid, "trap '' TERM; echo up > /workspace/up; while :; do sleep 0.1; done")
    wait_file(api, sid, "/workspace/up")
    t0 = time.monotonic()
    r = post(api, sid, "kill")
    assert r.status == 200 and r.json["state"] == "stopped", r
    assert time.monotonic() - t0 < QUICK_S
    start(api, sid)
    assert sh(api, sid, "cat /workspace/up")["stdout"] == "up\n"


def test_conflicts_and_stopped_errors(api, sandbox):
    sid = sandbox["id"]
    r = post(api, sid, "start")
    assert r.status == 409 and r.error_code == "conflict", r
    stop(api, sid)
    for verb in ("stop", "kill"):
        r = post(api, sid, verb)
        assert r.status == 409 and r.error_code == "conflict", (verb, r)
    for verb in ("pause", "resume"):
        assert post(api, sid, verb).status == 409, verb
    stopped = [
        api.post(f"/v1/sandboxes/{sid}/exec", {"argv": ["true"]}),
        api.post(f"/v1/sandboxes/{sid}/commands", {"argv": ["true"]}),
        api.post(f"/v1/sandboxes/{sid}/shells", {}),
        api.post(f"/v1/sandboxes/{sid}/terminals", {}),
        api.get(f"/v1/sandboxes/{sid}/files?path=/workspace/x"),
        api.request("PUT", f"/v1/sandboxes/{sid}/files?path=/workspace/x", b"data"),
        api.get(f"/v1/sandboxes/{sid}/files/list"),
    ]
    for r in stopped:
        assert r.status == 409 and r.error_code == "sandbox_stopped", r
    r = api.post("/v1/batch", [{"sandbox": sid, "argv": ["true"]}])
    assert r.status == 200 and r.json[0]["error"]["code"] == "sandbox_stopped", r
    start(api, sid)
    assert exec_(api, sid, argv=["true"])["exit_code"] == 0


def test_bad_input(api, sandbox):
    sid = sandbox["id"]
    for body in ({"grace_s": -1}, {"grace_s": 3601}, {"grace_s": "5"}, {"grace": 5},
                 {"grace_s": None, "x": 1}):
        r = post(api, sid, "stop", body)
        assert r.status == 400 and r.error_code == "bad_request", (body, r)
    r = post(api, sid, "stop", raw=b"[1]")
    assert r.status == 400, r
    assert post(api, sid, "kill", {"grace_s": 1}).status == 400
    assert post(api, sid, "stop?x=1").status == 400
    assert post(api, "sb-nosuchthing", "stop").status == 404
    assert post(api, "sb-nosuchthing", "start").status == 404
    assert get(api, sid)["state"] == "running"
    # {} is the same as no body.
    assert post(api, sid, "kill", {}).status == 200
    r = post(api, sid, "start", {"x": 1})
    assert r.status == 400, r
    start(api, sid)


def test_delete_stopped(api, daemon):
    sid = api.create()["id"]
    sh(api, sid, "echo x > /workspace/x")
    stop(api, sid, grace_s=0)
    r = api.delete(f"/v1/sandboxes/{sid}")
    assert r.status == 204, r
    assert api.get(f"/v1/sandboxes/{sid}").status == 404
    # What the fixture checks at the end of the module, checked now for this one.
    wait_for(lambda: not os.path.lexists(daemon.sandbox_path(sid)), what="its directory to go")
    assert cgroup_dirs_of([sid]) == []


def test_running_command_fails_and_its_stream_ends(api, sandbox):
    sid = sandbox["id"]
    cid = start_cmd(api, sid, "trap '' TERM; echo started; while :; do sleep 0.1; done")
    url = f"ws://127.0.0.1:{api.port}/v1/sandboxes/{sid}/commands/{cid}/stream"

    async def watch():
        async with websockets.connect(url) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            assert first["type"] in ("started", "stdout"), first
            loop = asyncio.get_running_loop()
            killed = loop.run_in_executor(None, lambda: post(api, sid, "kill"))
            msgs = []
            try:
                while True:
                    msgs.append(json.loads(await asyncio.wait_for(ws.recv(), WAIT_S)))
            except websockets.ConnectionClosed:
                pass
            assert (await killed).status == 200
            return msgs

    msgs = asyncio.run(asyncio.wait_for(watch(), 3 * WAIT_S))
    ends = [m for m in msgs if m["type"] in ("exit", "error")]
    assert len(ends) == 1, msgs
    assert ends[0]["type"] == "error" and ends[0]["error_type"] == "command_failed", ends
    c = api.get(f"/v1/sandboxes/{sid}/commands/{cid}").json
    assert c["state"] == "failed" and c["exit_code"] == -1, c


def test_shell_after_restart(api, sandbox):
    sid = sandbox["id"]
    r = api.post(f"/v1/sandboxes/{sid}/shells", {})
    assert r.status == 201, r
    shid = r.json["shell_id"]
    run = f"/v1/sandboxes/{sid}/shells/{shid}/run"
    assert api.post(run, {"command": "cd /tmp && X=1"}).status == 200
    stop(api, sid, grace_s=0)
    r = api.post(run, {"command": "true"})
    assert r.status == 409 and r.error_code == "sandbox_stopped", r
    start(api, sid)
    # A new shell process: the cwd it was created with, and nothing of the old one's state.
    r = api.post(run, {"command": "pwd; echo x=$X"})
    assert r.status == 200 and r.json["output"] == "/workspace\nx=\n", r
    assert r.json["shell_restarted"] is True, r.json


def test_pause_then_stop(api, sandbox):
    sid = sandbox["id"]
    start_cmd(api, sid, "trap 'echo bye > /workspace/termed; exit 0' TERM; "
                        "echo up > /workspace/up; while :; do sleep 0.1; done")
    wait_file(api, sid, "/workspace/up")
    r = post(api, sid, "pause")
    assert r.status == 200 and r.json["state"] == "paused", r
    assert stop(api, sid) < QUICK_S
    start(api, sid)
    assert sh(api, sid, "cat /workspace/termed")["stdout"] == "bye\n"


def test_a_sandbox_cannot_plant_symlinks_for_the_next_start(api, sandbox, daemon):
    """The new init mounts on paths of the sandbox's own root before pivot_root: a symlink left
    there must not take a mount or a file write out of the sandbox."""
    sid = sandbox["id"]
    r = sh(api, sid, "rm -rf /run/warren && ln -s /tmp /run/warren && ls -ld /run/warren")
    assert r["exit_code"] == 0, r
    stop(api, sid, grace_s=0)
    r = post(api, sid, "start")
    assert r.status == 500 and r.error_code == "sandbox_setup_failed", r
    assert "/run/warren" in r.error_message, r
    assert get(api, sid)["state"] == "stopped"


def test_audit_records(api, sandbox):
    sid = sandbox["id"]
    stop(api, sid, grace_s=2)
    post(api, sid, "start")
    post(api, sid, "kill")
    r = api.get("/v1/audit?" + urllib.parse.urlencode({"sandbox": sid}))
    assert r.status == 200, r
    events = [(e["event"], e["ok"]) for e in r.json["events"]]
    assert [e for e in events if e[0] in ("sandbox.stop", "sandbox.start", "sandbox.kill")] == [
        ("sandbox.stop", True), ("sandbox.start", True), ("sandbox.kill", True)], events
    stop_ev = [e for e in r.json["events"] if e["event"] == "sandbox.stop"][0]
    assert stop_ev["grace_s"] == 2, stop_ev


def test_daemon_exit_with_stopped_and_stopping_sandboxes(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    sid = api.create()["id"]
    sh(api, sid, "echo x > /workspace/x")
    stop(api, sid, grace_s=0)
    other = api.create()["id"]
    start_cmd(api, other, "trap '' TERM; echo up > /workspace/up; while :; do sleep 0.1; done")
    wait_file(api, other, "/workspace/up")
    answers = []

    def stop_other():
        try:
            answers.append(post(api, other, "stop", {"grace_s": 3600}))
        except OSError as e:  # the daemon may close the connection first
            answers.append(e)

    t = threading.Thread(target=stop_other)
    t.start()
    wait_for(lambda: get(api, other)["state"] == "stopping", what="stopping")
    # SIGTERM: exit 0 and nothing left (process, mount, loop device, directory, cgroup).
    d.stop()
    t.join(WAIT_S)
    assert not t.is_alive()
    assert answers, "the stop was never answered"
    if not isinstance(answers[0], OSError):
        assert answers[0].status == 409, answers


def cli(daemon, *args):
    return subprocess.run([daemon.bin, *args], env={**os.environ, "WARREN_URL": daemon.url},
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)


def test_cli_stop_kill_start(api, daemon, new_sandbox):
    sb = new_sandbox(name="clibox")
    r = cli(daemon, "stop", "--grace", "2", "clibox")
    assert r.returncode == 0 and r.stdout == b"clibox\n", r
    assert get(api, "clibox")["state"] == "stopped"
    r = cli(daemon, "stop", "clibox")
    assert r.returncode == 1 and b"stopped" in r.stderr, r
    r = cli(daemon, "start", "clibox")  # no command: the sandbox itself
    assert r.returncode == 0 and r.stdout == b"clibox\n", r
    assert get(api, sb["id"])["state"] == "running"
    r = cli(daemon, "start", "clibox", "--", "true")  # a detached command, as before
    assert r.returncode == 0 and r.stdout.startswith(b"cmd-"), r
    r = cli(daemon, "kill", "clibox")
    assert r.returncode == 0 and get(api, "clibox")["state"] == "stopped", r
    for bad in (["stop", "--grace", "-1", "clibox"], ["stop", "--grace", "x", "clibox"],
                ["stop"], ["kill"]):
        assert cli(daemon, *bad).returncode == 2, bad
