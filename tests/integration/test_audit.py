"""The audit log: <state>/audit/audit.log (JSON lines, rotated) and GET /v1/audit
(docs/API.md, "Audit log")."""
import asyncio
import glob
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import urllib.parse

import websockets

from conftest import Api, Daemon, exec_

SECRET_VALUE = "s3cr3t-" + os.urandom(8).hex()
ENV_VALUE = "envval-" + os.urandom(8).hex()
EXEC_ENV_VALUE = "execenv-" + os.urandom(8).hex()
STDIN_VALUE = "stdin-" + os.urandom(8).hex()
FILE_VALUE = "filedata-" + os.urandom(8).hex()
TYPED_VALUE = "typed-" + os.urandom(8).hex()
NEVER = (SECRET_VALUE, ENV_VALUE, EXEC_ENV_VALUE, STDIN_VALUE, FILE_VALUE, TYPED_VALUE)


def audit(api, **params):
    r = api.get("/v1/audit?" + urllib.parse.urlencode(params))
    assert r.status == 200, r
    assert set(r.json) == {"events", "truncated"}, r.json
    return r.json


def audit_dir(d):
    return os.path.join(d.state_dir, "audit")


def audit_files(d):
    """Every audit file of a daemon, oldest first."""
    base = os.path.join(audit_dir(d), "audit.log")
    rotated = sorted(glob.glob(base + ".*"), key=lambda p: -int(p.rsplit(".", 1)[1]))
    return rotated + [base]


def raw_audit_bytes(d):
    out = b""
    for p in audit_files(d):
        with open(p, "rb") as f:
            out += f.read()
    return out


def _secrets_dir():
    d = tempfile.mkdtemp(prefix="warren-secrets-")
    os.chmod(d, 0o700)
    with open(os.path.join(d, "API_KEY"), "w") as f:
        f.write(SECRET_VALUE + "\n")
    os.chmod(os.path.join(d, "API_KEY"), 0o600)
    return d


def _tar(name, data):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def _exec_ws(api, sid, first):
    url = f"ws://127.0.0.1:{api.port}/v1/sandboxes/{sid}/exec/ws"
    msgs = []
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps(first))
        try:
            while True:
                msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
        except websockets.ConnectionClosed:
            pass
    return msgs


def test_audit_trail_of_a_sandbox():
    sdir = _secrets_dir()
    d = Daemon(extra_args=["--secrets-dir", sdir])
    d.start()
    try:
        api = Api(d)
        sb = api.create(name="audited", labels={"team": "red", "run": "7"},
                        env={"APP_ENV": ENV_VALUE}, secrets=["API_KEY"])
        sid = sb["id"]
        exec_(api, sid, argv=["cat"], env={"EXTRA": EXEC_ENV_VALUE}, stdin=STDIN_VALUE,
              cwd="/tmp", timeout_s=30)
        r = api.post(f"/v1/sandboxes/{sid}/commands", {"shell": "sleep 0.1", "timeout_s": 20})
        assert r.status == 201, r
        cid = r.json["command_id"]
        r = api.request("PUT", f"/v1/sandboxes/{sid}/files?path=/workspace/a.txt&mode=0600",
                        body=FILE_VALUE)
        assert r.status == 200, r
        assert api.delete(f"/v1/sandboxes/{sid}/files?path=/workspace/a.txt").status == 204
        r = api.request("PUT", f"/v1/sandboxes/{sid}/archive?path=/workspace/x",
                        body=_tar("in.txt", FILE_VALUE.encode()))
        assert r.status == 200, r
        paused = api.post(f"/v1/sandboxes/{sid}/pause").status
        assert paused in (200, 409)
        if paused == 200:
            assert api.post(f"/v1/sandboxes/{sid}/resume").status == 200
        r = api.post(f"/v1/sandboxes/{sid}/shells", {})
        assert r.status == 201, r
        shid = r.json["shell_id"]
        assert api.post(f"/v1/sandboxes/{sid}/shells/{shid}/run", {"command": "echo hi"}).status \
            == 200
        r = api.post(f"/v1/sandboxes/{sid}/terminals", {"cols": 80, "rows": 24})
        assert r.status == 201, r
        tid = r.json["terminal_id"]
        assert api.post(f"/v1/sandboxes/{sid}/terminals/{tid}/keys",
                        {"text": TYPED_VALUE}).status == 200
        msgs = asyncio.run(_exec_ws(api, sid, {"type": "execute", "argv": ["true"],
                                                "env": {"E": EXEC_ENV_VALUE}}))
        assert msgs[-1]["type"] == "exit", msgs
        r = api.post("/v1/batch", [{"sandbox": sid, "argv": ["true"]},
                                   {"sandbox": sid, "shell": "exit 3", "stdin": STDIN_VALUE}])
        assert r.status == 200, r
        # A refusal is recorded with ok false and the error code.
        assert api.post(f"/v1/sandboxes/{sid}/exec", {"argv": ["true"], "cwd": "rel"}).status \
            == 400
        # By name while the sandbox lives.
        assert [e["event"] for e in audit(api, sandbox="audited")["events"]][:2] == \
            ["sandbox.create", "exec"]
        api.remove(sid)

        got = audit(api, sandbox=sid)
        assert got["truncated"] is False
        ev = got["events"]
        names = [e["event"] for e in ev]
        expected = ["sandbox.create", "exec", "command.start", "file.write", "file.delete",
                    "files.extract", "sandbox.pause"] + (["sandbox.resume"] if paused == 200
                                                         else []) + \
            ["shell.create", "shell.run", "terminal.create", "terminal.input", "exec.ws",
             "batch", "batch", "exec", "sandbox.delete"]
        assert names == expected, names
        by = {}
        for e in ev:
            by.setdefault(e["event"], []).append(e)
            assert e["sandbox"] == sid
            assert e["labels"] == {"team": "red", "run": "7"}
            assert e["caller"].startswith("127.0.0.1:"), e
            assert e["ts"].endswith("Z") and len(e["ts"]) == 24, e
        assert [e["ts"] for e in ev] == sorted(e["ts"] for e in ev)
        c = by["sandbox.create"][0]
        assert c["ok"] is True and c["name"] == "audited" and c["template"] == "host"
        assert c["secrets"] == ["API_KEY"] and c["network"]["mode"] == "none"
        assert c["resources"]["memory_mib"] == 512
        assert "env" not in c
        x = by["exec"][0]
        assert x["ok"] is True and x["argv"] == ["cat"] and x["cwd"] == "/tmp"
        assert x["timeout_s"] == 30
        assert "env" not in x and "stdin" not in x
        bad = by["exec"][1]
        assert bad["ok"] is False and bad["error"] == "bad_request" and bad["cwd"] == "rel"
        cs = by["command.start"][0]
        assert cs["command_id"] == cid and cs["shell"] == "sleep 0.1" and cs["ok"] is True
        fw = by["file.write"][0]
        assert fw["path"] == "/workspace/a.txt" and fw["bytes"] == len(FILE_VALUE)
        assert fw["mode"] == "0600" and fw["ok"] is True
        assert by["file.delete"][0]["path"] == "/workspace/a.txt"
        fx = by["files.extract"][0]
        assert fx["path"] == "/workspace/x" and fx["entries"] == 1 and fx["bytes"] > 0
        assert by["sandbox.pause"][0]["ok"] is (paused == 200)
        assert by["shell.create"][0]["shell_id"] == shid
        assert by["shell.run"][0]["command"] == "echo hi"
        assert by["shell.run"][0]["shell_id"] == shid
        assert by["terminal.create"][0]["terminal_id"] == tid
        assert by["terminal.input"][0]["bytes"] == len(TYPED_VALUE)
        assert by["exec.ws"][0]["argv"] == ["true"] and by["exec.ws"][0]["command_id"]
        assert [b["index"] for b in by["batch"]] == [0, 1]
        assert by["batch"][1]["shell"] == "exit 3"
        assert by["sandbox.delete"][0]["ok"] is True

        # Values never reach the file; the file and its directory are root's alone.
        raw = raw_audit_bytes(d)
        assert sid.encode() in raw
        for v in NEVER:
            assert v.encode() not in raw, f"{v} found in the audit log"
        assert stat.S_IMODE(os.stat(audit_files(d)[-1]).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(audit_dir(d)).st_mode) == 0o700
        # Every line is one JSON object.
        for line in raw.splitlines():
            assert isinstance(json.loads(line), dict)
    finally:
        d.stop()
        shutil.rmtree(sdir, ignore_errors=True)


def test_filters(api, new_sandbox):
    a = new_sandbox(labels={"k": "a"})["id"]
    b = new_sandbox()["id"]
    exec_(api, a, argv=["true"])
    exec_(api, b, argv=["true"])
    exec_(api, a, shell="echo " + "x" * 3000)
    ev_a = audit(api, sandbox=a)["events"]
    assert [e["event"] for e in ev_a] == ["sandbox.create", "exec", "exec"]
    # Commands are cut to 1 KiB.
    assert len(ev_a[2]["shell"]) == 1024 and ev_a[2]["command_truncated"] is True
    assert [e["sandbox"] for e in audit(api, event="exec")["events"]][-3:] == [a, b, a]
    creates = audit(api, event="sandbox.*")["events"]
    assert [e["sandbox"] for e in creates][-2:] == [a, b]
    assert all(e["event"].startswith("sandbox.") for e in creates)
    # since/until are inclusive bounds.
    t1, t2 = ev_a[1]["ts"], ev_a[2]["ts"]
    assert [e["ts"] for e in audit(api, sandbox=a, since=t1)["events"]] == [t1, t2]
    assert [e["ts"] for e in audit(api, sandbox=a, until=t1)["events"]] == [ev_a[0]["ts"], t1]
    assert [e["ts"] for e in audit(api, sandbox=a, since=t1, until=t1)["events"]] == [t1]
    assert audit(api, sandbox=a, since="2999-01-01T00:00:00Z")["events"] == []
    # An offset works (a literal '+' must be sent as %2B; a raw '+' decodes to a space and is
    # accepted too).
    r = api.get(f"/v1/audit?sandbox={a}&until=1970-01-01T01:00:00%2B01:00")
    assert r.status == 200 and r.json["events"] == []
    # limit: the most recent events, with truncated.
    got = audit(api, sandbox=a, limit=2)
    assert got["truncated"] is True and [e["ts"] for e in got["events"]] == [t1, t2]
    assert audit(api, sandbox=a, limit=3)["truncated"] is False
    assert audit(api, sandbox="sb-doesnotexist")["events"] == []


def test_bad_params(api):
    cases = {
        "limit=0": "limit", "limit=10001": "limit", "limit=-1": "limit", "limit=x": "limit",
        "since=yesterday": "since", "since=2026-01-01": "since",
        "until=2026-02-30T00:00:00Z": "until",
        "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z": "until",
        "event=a%20b": "event", "event=": "event", "sandbox=": "sandbox",
        "sandbox=a&sandbox=b": "sandbox", "what=1": "what",
    }
    for q, name in cases.items():
        r = api.get("/v1/audit?" + q)
        assert r.status == 400 and r.error_code == "bad_request", (q, r)
        assert f"'{name}'" in r.error_message, (q, r)
    assert api.request("POST", "/v1/audit").status == 405


def test_rotation(fresh_daemon):
    d = fresh_daemon(extra_args=["--audit-max-bytes", "2048", "--audit-keep", "2"])
    api = Api(d)
    sid = api.create(labels={"rot": "yes"})["id"]
    for i in range(40):
        exec_(api, sid, argv=["echo", str(i)])
    files = audit_files(d)
    names = [os.path.basename(p) for p in files]
    assert names == ["audit.log.2", "audit.log.1", "audit.log"], names
    lines = 0
    for p in files:
        st = os.stat(p)
        assert st.st_size <= 2048 and stat.S_IMODE(st.st_mode) == 0o600, p
        with open(p, "rb") as f:
            lines += f.read().count(b"\n")
    got = audit(api, sandbox=sid)
    ev = got["events"]
    # The oldest records were dropped with audit.log.3; what is left is read across the three
    # files, in order, ending with the last exec.
    assert len(ev) == lines and 10 < len(ev) < 41
    assert ev[-1]["argv"] == ["echo", "39"]
    nums = [int(e["argv"][1]) for e in ev if e["event"] == "exec"]
    assert nums == list(range(40 - len(nums), 40))
    assert got["truncated"] is False
    api.remove(sid)


def test_flags_are_checked(daemon):
    state = tempfile.mkdtemp(prefix="warren-state-")
    try:
        for args in (["--audit-max-bytes", "100"], ["--audit-max-bytes", "x"],
                     ["--audit-keep", "101"], ["--audit-keep", "-1"]):
            p = subprocess.run([daemon.bin, "serve", "--listen", "127.0.0.1:0", "--state-dir",
                                state] + args, capture_output=True, timeout=20)
            assert p.returncode == 2 and b"--audit-" in p.stderr, (args, p)
        p = subprocess.run([daemon.bin, "serve", "--help"], capture_output=True, timeout=20)
        assert b"--audit-max-bytes" in p.stdout and b"--audit-keep" in p.stdout
    finally:
        shutil.rmtree(state, ignore_errors=True)
