"""Detached commands: POST/GET /v1/sandboxes/{id}/commands[/{cid}[/kill]] (docs/API.md,
"Detached commands")."""

import base64
import re
import time

import pytest

from conftest import WAIT_S, descendants, exec_, proc_cmdline

CID_RE = re.compile(r"^cmd-[a-z0-9]+$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
COMMAND_KEYS = {"command_id", "pid", "state", "exit_code", "signal", "timed_out", "started_at",
                "ended_at", "stdout_bytes", "stderr_bytes"}


def start(api, sid, expect=201, **body):
    r = api.post(f"/v1/sandboxes/{sid}/commands", body)
    assert r.status == expect, f"start {body!r}: {r!r}"
    if expect == 201:
        assert isinstance(r.json, dict) and CID_RE.match(r.json.get("command_id", "")), r
        assert isinstance(r.json.get("pid"), int) and r.json["pid"] > 0, r
    return r.json


def get_cmd(api, sid, cid):
    r = api.get(f"/v1/sandboxes/{sid}/commands/{cid}")
    assert r.status == 200, r
    return r.json


def wait_done(api, sid, cid, timeout=WAIT_S):
    """Polls GET .../commands/{cid} until it is no longer running; returns the Command."""
    deadline = time.monotonic() + timeout
    while True:
        c = get_cmd(api, sid, cid)
        if c["state"] != "running":
            return c
        assert time.monotonic() < deadline, f"command still running after {timeout}s: {c}"
        time.sleep(0.05)


def kill(api, sid, cid, body, expect=200):
    r = api.post(f"/v1/sandboxes/{sid}/commands/{cid}/kill", body)
    assert r.status == expect, f"kill {body!r}: {r!r}"
    return r.json


def pgrep(api, sid, pattern):
    """Pids (in the sandbox) of processes whose command line matches pattern (pgrep -f)."""
    res = exec_(api, sid, argv=["pgrep", "-f", pattern])
    assert res["exit_code"] in (0, 1), res
    return [int(x) for x in res["stdout"].split()]


def wait_no_process(api, sid, pattern, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        left = pgrep(api, sid, pattern)
        if not left:
            return
        assert time.monotonic() < deadline, f"{pattern!r} still running after {timeout}s: {left}"
        time.sleep(0.1)


def check_command_object(c):
    missing = COMMAND_KEYS - set(c)
    assert not missing, f"Command lacks {sorted(missing)}: {c}"
    assert CID_RE.match(c["command_id"]), c
    assert c["state"] in ("running", "exited", "failed"), c
    assert TIME_RE.match(c["started_at"]), c
    assert isinstance(c["stdout_bytes"], int) and isinstance(c["stderr_bytes"], int), c
    assert isinstance(c["timed_out"], bool), c
    if c["state"] == "running":
        assert c["exit_code"] is None and c["ended_at"] is None, c
    else:
        assert isinstance(c["exit_code"], int), c
        assert TIME_RE.match(c["ended_at"] or ""), c
        assert c["ended_at"] >= c["started_at"], c


# ---------------------------------------------------------------------------------------------


def test_start_returns_id_and_pid(api, sandbox):
    r = api.post(f"/v1/sandboxes/{sandbox['id']}/commands", {"argv": ["sleep", "0.3"]})
    assert r.status == 201, r
    assert set(r.json) == {"command_id", "pid"}, r
    assert CID_RE.match(r.json["command_id"]), r
    assert isinstance(r.json["pid"], int) and r.json["pid"] > 0, r
    other = start(api, sandbox["id"], argv=["true"])
    assert other["command_id"] != r.json["command_id"]


def test_running_then_exited_fields(api, sandbox):
    sid = sandbox["id"]
    # It ends only once the test has seen it running and says go.
    script = "echo out; echo errs >&2; while [ ! -e /workspace/go ]; do sleep 0.05; done; exit 3"
    cid = start(api, sid, shell=script)["command_id"]
    c = get_cmd(api, sid, cid)
    check_command_object(c)
    assert c["state"] == "running", c
    assert c["exit_code"] is None and c["signal"] is None and c["ended_at"] is None, c
    assert c["shell"] == script and "argv" not in c, c
    assert exec_(api, sid, argv=["touch", "/workspace/go"])["exit_code"] == 0

    c = wait_done(api, sid, cid)
    check_command_object(c)
    assert c["state"] == "exited", c
    assert c["exit_code"] == 3 and c["signal"] is None and c["timed_out"] is False, c
    assert c["stdout_bytes"] == 4 and c["stderr_bytes"] == 5, c
    assert c["command_id"] == cid and c["pid"] > 0

    # argv form is echoed as argv
    cid2 = start(api, sid, argv=["echo", "a b", "c"])["command_id"]
    c2 = wait_done(api, sid, cid2)
    assert c2["argv"] == ["echo", "a b", "c"] and "shell" not in c2, c2
    assert c2["exit_code"] == 0 and c2["stdout_bytes"] == len("a b c\n"), c2

    # both are listed, with the same objects as GET one
    r = api.get(f"/v1/sandboxes/{sid}/commands")
    assert r.status == 200, r
    listed = {x["command_id"]: x for x in r.json["commands"]}
    assert cid in listed and cid2 in listed, r.json
    for x in r.json["commands"]:
        check_command_object(x)
    assert listed[cid]["exit_code"] == 3 and listed[cid]["shell"] == script
    assert listed[cid2]["argv"] == ["echo", "a b", "c"]


def test_list_empty_and_by_name(api, new_sandbox):
    sb = new_sandbox(name="cmdlist-x1")
    r = api.get(f"/v1/sandboxes/{sb['id']}/commands")
    assert r.status == 200 and r.json == {"commands": []}, r
    cid = start(api, "cmdlist-x1", argv=["true"])["command_id"]  # sandbox addressed by name
    r = api.get("/v1/sandboxes/cmdlist-x1/commands")
    assert r.status == 200 and [c["command_id"] for c in r.json["commands"]] == [cid], r
    assert get_cmd(api, sb["id"], cid)["command_id"] == cid


def test_exit_by_signal_in_state(api, sandbox):
    sid = sandbox["id"]
    c = wait_done(api, sid, start(api, sid, shell="kill -TERM $$")["command_id"])
    assert c["state"] == "exited" and c["signal"] == 15 and c["exit_code"] == 143, c
    assert c["timed_out"] is False
    c = wait_done(api, sid, start(api, sid, shell="kill -KILL $$")["command_id"])
    assert c["signal"] == 9 and c["exit_code"] == 137, c


@pytest.mark.parametrize("sig", ["TERM", 15, "SIGTERM"])
def test_kill_term_whole_group(api, sandbox, sig):
    sid = sandbox["id"]
    # the shell waits for a foreground sleep and has a background one: all three are in the
    # command's process group and must all die
    marker = f"sleep 77{['TERM', 15, 'SIGTERM'].index(sig)}1"
    cid = start(api, sid, shell=f"{marker} & {marker}; echo not-reached")["command_id"]
    deadline = time.monotonic() + WAIT_S
    while len(pgrep(api, sid, marker)) < 2:
        assert time.monotonic() < deadline, "the two sleeps did not start"
        time.sleep(0.05)
    c = kill(api, sid, cid, {"signal": sig})
    check_command_object(c)
    assert c["command_id"] == cid
    c = wait_done(api, sid, cid)
    assert c["state"] == "exited" and c["signal"] == 15 and c["exit_code"] == 143, c
    assert c["stdout_bytes"] == 0, "the shell must have died before echo"
    wait_no_process(api, sid, marker)


def test_kill_right_after_start(api, sandbox):
    """A kill sent as soon as the 201 is in must not be lost (the command's process group
    has to exist by then, or the kill must still reach the process)."""
    sid = sandbox["id"]
    cids = []
    for _ in range(20):
        cid = start(api, sid, argv=["sleep", "7701"])["command_id"]
        kill(api, sid, cid, {"signal": "TERM"})
        cids.append(cid)
    deadline = time.monotonic() + WAIT_S
    survivors = cids
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        survivors = [c for c in survivors if get_cmd(api, sid, c)["state"] == "running"]
    assert not survivors, (f"{len(survivors)} of 20 commands killed right after their start "
                           f"are still running: {survivors}")
    for cid in cids:
        c = get_cmd(api, sid, cid)
        assert c["signal"] == 15 and c["exit_code"] == 143, c


def test_kill_default_is_kill_and_validation(api, sandbox):
    sid = sandbox["id"]
    # a shell that ignores TERM: only the default KILL ends it
    cid = start(api, sid, shell="trap '' TERM; sleep 60")["command_id"]
    r = api.post(f"/v1/sandboxes/{sid}/commands/{cid}/kill", {"signal": "NOPE"})
    assert r.status == 400 and r.error_code == "bad_request", r
    r = api.post(f"/v1/sandboxes/{sid}/commands/{cid}/kill", {"signal": 0})
    assert r.status == 400, r
    r = api.post(f"/v1/sandboxes/{sid}/commands/{cid}/kill", {"bogus": 1})
    assert r.status == 400 and "bogus" in (r.error_message or ""), r
    assert get_cmd(api, sid, cid)["state"] == "running"
    kill(api, sid, cid, {})
    c = wait_done(api, sid, cid)
    assert c["signal"] == 9 and c["exit_code"] == 137 and c["timed_out"] is False, c
    # killing an exited command is harmless and says what it is
    c2 = kill(api, sid, cid, {"signal": "TERM"})
    assert c2["state"] == "exited" and c2["signal"] == 9, c2


def test_timeout_kills_group(api, sandbox):
    sid = sandbox["id"]
    t0 = time.monotonic()
    cid = start(api, sid, shell="sleep 7781 & sleep 7782; echo late", timeout_s=1)["command_id"]
    c = wait_done(api, sid, cid)
    elapsed = time.monotonic() - t0
    assert c["timed_out"] is True and c["signal"] == 9 and c["exit_code"] == 137, c
    # Well below the sleeps' hours, with room for a loaded machine.
    assert 0.9 <= elapsed < 15, f"timeout_s=1 took {elapsed:.2f}s"
    assert c["stdout_bytes"] == 0, c
    wait_no_process(api, sid, "sleep 778")  # the background sleep died with the group


def test_no_timeout_by_default(api, sandbox):
    sid = sandbox["id"]
    cid = start(api, sid, argv=["sleep", "2"])["command_id"]
    c = wait_done(api, sid, cid)
    assert c["timed_out"] is False and c["exit_code"] == 0, c


def test_timeout_validation(api, sandbox):
    base = f"/v1/sandboxes/{sandbox['id']}/commands"
    r = api.post(base, {"argv": ["true"], "timeout_s": 0})
    assert r.status == 400 and "timeout_s" in (r.error_message or ""), r
    r = api.post(base, {"argv": ["true"], "timeout_s": 86401})
    assert r.status == 422 and r.error_code == "unprocessable", r


def test_stdin_in_body(api, sandbox):
    sid = sandbox["id"]
    text = "line one\nz\u00fcrich \u4e16\n" * 1000
    cid = start(api, sid, shell="cat > /workspace/in.txt", stdin=text)["command_id"]
    c = wait_done(api, sid, cid)
    assert c["exit_code"] == 0, "cat must see EOF after the body's stdin"
    res = exec_(api, sid, argv=["cat", "/workspace/in.txt"])
    assert res["stdout"] == text

    raw = bytes(range(256)) * 50
    cid = start(api, sid, argv=["sha256sum"],
                stdin_b64=base64.b64encode(raw).decode())["command_id"]
    c = wait_done(api, sid, cid)
    assert c["exit_code"] == 0 and c["stdout_bytes"] == 64 + len("  -\n"), c

    r = api.post(f"/v1/sandboxes/{sid}/commands",
                 {"argv": ["cat"], "stdin": "a", "stdin_b64": "YQ=="})
    assert r.status == 400, r


def test_without_stdin_it_stays_open(api, sandbox):
    sid = sandbox["id"]
    cid = start(api, sid, argv=["cat"])["command_id"]
    time.sleep(1)
    c = get_cmd(api, sid, cid)
    assert c["state"] == "running", f"cat without body stdin must wait for input: {c}"
    kill(api, sid, cid, {"signal": "TERM"})
    assert wait_done(api, sid, cid)["signal"] == 15


@pytest.mark.parametrize("value,status", [
    (4095, 400), (0, 400), (-1, 400), ("4096", 400), (1.5, 400), (4096, 201),
    (268435457, 422), (1 << 40, 422),
])
def test_buffer_bytes_validation(api, sandbox, value, status):
    r = api.post(f"/v1/sandboxes/{sandbox['id']}/commands",
                 {"argv": ["true"], "buffer_bytes": value})
    assert r.status == status, f"buffer_bytes={value!r}: {r!r}"
    if status != 201:
        assert r.error_code == {400: "bad_request", 422: "unprocessable"}[status], r
        assert "buffer_bytes" in (r.error_message or ""), r


def test_buffer_bytes_max_accepted(api, sandbox):
    sid = sandbox["id"]
    cid = start(api, sid, argv=["echo", "big"], buffer_bytes=268435456)["command_id"]
    c = wait_done(api, sid, cid)
    assert c["exit_code"] == 0 and c["stdout_bytes"] == 4, c


def test_max_output_bytes_rejected(api, sandbox):
    r = api.post(f"/v1/sandboxes/{sandbox['id']}/commands",
                 {"argv": ["true"], "max_output_bytes": 1000})
    assert r.status == 400 and r.error_code == "bad_request", r
    assert "max_output_bytes" in r.error_message, r
    r = api.get(f"/v1/sandboxes/{sandbox['id']}/commands")
    assert r.json == {"commands": []}, "a rejected command must not be started"


@pytest.mark.parametrize("body,field", [
    ({}, "argv"), ({"argv": []}, "argv"), ({"argv": ["true"], "shell": "true"}, "argv"),
    ({"argv": ["true"], "nope": 1}, "nope"), ({"shell": 5}, "shell"),
    ({"argv": ["true"], "cwd": "rel"}, "cwd"),
])
def test_bad_bodies(api, sandbox, body, field):
    r = api.post(f"/v1/sandboxes/{sandbox['id']}/commands", body)
    assert r.status == 400 and r.error_code == "bad_request", (body, r)
    assert field in r.error_message, (body, r)


def test_unknown_command_and_sandbox(api, sandbox):
    sid = sandbox["id"]
    for method, path, body in [
        ("GET", f"/v1/sandboxes/{sid}/commands/cmd-doesnotexist", None),
        ("POST", f"/v1/sandboxes/{sid}/commands/cmd-doesnotexist/kill", {}),
        ("GET", f"/v1/sandboxes/{sid}/commands/cmd-doesnotexist/stream", None),
        ("GET", "/v1/sandboxes/sb-nosuchsandbox/commands", None),
        ("POST", "/v1/sandboxes/sb-nosuchsandbox/commands", {"argv": ["true"]}),
        ("GET", "/v1/sandboxes/sb-nosuchsandbox/commands/cmd-x", None),
        ("POST", "/v1/sandboxes/sb-nosuchsandbox/commands/cmd-x/kill", {}),
    ]:
        r = api.post(path, body) if method == "POST" else api.get(path)
        assert r.status == 404 and r.error_code == "not_found", (method, path, r)


def test_command_of_other_sandbox_is_404(api, new_sandbox):
    a, b = new_sandbox(), new_sandbox()
    cid = start(api, a["id"], argv=["sleep", "5"])["command_id"]
    r = api.get(f"/v1/sandboxes/{b['id']}/commands/{cid}")
    assert r.status == 404, r
    r = api.post(f"/v1/sandboxes/{b['id']}/commands/{cid}/kill", {})
    assert r.status == 404, r
    assert get_cmd(api, a["id"], cid)["state"] == "running"


def test_command_not_found_and_bad_cwd(api, sandbox):
    sid = sandbox["id"]
    # like exec: 127 with "warren: <argv0>: command not found" on stderr; bad cwd: 126
    c = wait_done(api, sid, start(api, sid, argv=["nosuchcmd-zz"])["command_id"])
    assert c["state"] == "exited" and c["exit_code"] == 127, c
    assert c["stderr_bytes"] == len("warren: nosuchcmd-zz: command not found\n"), c
    c = wait_done(api, sid, start(api, sid, argv=["true"], cwd="/no-such-dir-9")["command_id"])
    assert c["state"] == "exited" and c["exit_code"] == 126 and c["stderr_bytes"] > 0, c


def _host_procs(daemon, cmdline):
    return [pid for pid in descendants(daemon.pid) if proc_cmdline(pid) == cmdline]


def test_commands_die_with_their_sandbox(api, daemon):
    sb = api.create()
    sid = sb["id"]
    try:
        cids = [start(api, sid, argv=["sleep", "7791"])["command_id"],
                start(api, sid, shell="sleep 7792 & wait")["command_id"]]
        deadline = time.monotonic() + WAIT_S
        while not (_host_procs(daemon, "sleep 7791") and _host_procs(daemon, "sleep 7792")):
            assert time.monotonic() < deadline, "the commands' processes are not visible"
            time.sleep(0.05)
    except BaseException:
        api.remove(sid)
        raise
    r = api.delete(f"/v1/sandboxes/{sid}")
    assert r.status == 204, r
    # DELETE is synchronous: the processes are dead when it answers
    left = _host_procs(daemon, "sleep 7791") + _host_procs(daemon, "sleep 7792")
    assert not left, f"processes of the deleted sandbox's commands still alive: {left}"
    r = api.get(f"/v1/sandboxes/{sid}/commands")
    assert r.status == 404 and r.error_code == "not_found", r
    for cid in cids:
        r = api.get(f"/v1/sandboxes/{sid}/commands/{cid}")
        assert r.status == 404, r
    assert api.healthy()


def test_many_commands_listed(api, sandbox):
    sid = sandbox["id"]
    cids = {start(api, sid, argv=["sh", "-c", f"exit {i}"])["command_id"]: i for i in range(20)}
    for cid, i in cids.items():
        assert wait_done(api, sid, cid)["exit_code"] == i
    r = api.get(f"/v1/sandboxes/{sid}/commands")
    got = {c["command_id"]: c["exit_code"] for c in r.json["commands"]}
    assert got == cids, got
