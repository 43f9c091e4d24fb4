"""The `warren` CLI (run, create, exec, ps, rm, info, help) against a real daemon.

The CLI is run as a subprocess with WARREN_URL pointing at the test daemon. Every test removes
what it creates (the daemon is shared by the module), and checks that use the sandbox list
compare against the list from before the test rather than expecting it to be empty.
"""

import hashlib
import json
import os
import random
import signal
import socket
import string
import subprocess
import time

from conftest import sigint_default, wait_for

CLI_TIMEOUT_S = 60


def rand(n=8):
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def cli(daemon, *args, input=None, url=None, timeout=CLI_TIMEOUT_S):
    """Run `warren ARGS...` and return the CompletedProcess (bytes stdout/stderr)."""
    kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([daemon.bin, *args],
                          env={**os.environ, "WARREN_URL": url or daemon.url},
                          capture_output=True, timeout=timeout, **kw)


def sandbox_ids(api):
    r = api.get("/v1/sandboxes")
    assert r.status == 200, r
    return {sb["id"] for sb in r.json["sandboxes"]}


def sandbox_names(api):
    r = api.get("/v1/sandboxes")
    assert r.status == 200, r
    return {sb["name"] for sb in r.json["sandboxes"]}


def closed_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def describe(p):
    return f"rc={p.returncode} stdout={p.stdout[:2000]!r} stderr={p.stderr[:2000]!r}"


# ---------------------------------------------------------------------------------------------
# run


def test_run_uname_leaves_no_sandbox(daemon, api):
    before = sandbox_ids(api)
    p = cli(daemon, "run", "--", "uname", "-n")
    assert p.returncode == 0, describe(p)
    assert p.stdout.strip(), describe(p)
    assert p.stdout.endswith(b"\n"), describe(p)
    assert sandbox_ids(api) == before
    ps = cli(daemon, "ps", "-q")
    assert ps.returncode == 0, describe(ps)
    assert set(ps.stdout.decode().split()) == before


def test_run_hostname_is_the_name(daemon, api):
    name = "cli-" + rand()
    p = cli(daemon, "run", "--name", name, "--", "uname", "-n")
    assert p.returncode == 0, describe(p)
    assert p.stdout == (name + "\n").encode(), describe(p)
    assert name not in sandbox_names(api)


def test_run_exit_code(daemon):
    p = cli(daemon, "run", "--", "sh", "-c", "exit 3")
    assert p.returncode == 3, describe(p)


def test_run_splits_streams(daemon):
    p = cli(daemon, "run", "--", "sh", "-c", "echo out; echo err >&2")
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"out\n", describe(p)
    assert p.stderr == b"err\n", describe(p)


def test_run_env(daemon):
    p = cli(daemon, "run", "--env", "A=b", "-e", "C=d e", "--", "sh", "-c", 'echo "$A|$C"')
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"b|d e\n", describe(p)


def test_run_without_double_dash(daemon):
    p = cli(daemon, "run", "echo", "-n", "x")
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"x", describe(p)


def test_run_command_not_found(daemon, api):
    before = sandbox_ids(api)
    p = cli(daemon, "run", "--", "nosuchcmd")
    assert p.returncode == 127, describe(p)
    assert b"nosuchcmd" in p.stderr, describe(p)
    assert sandbox_ids(api) == before


def test_run_killed_by_signal(daemon):
    p = cli(daemon, "run", "--", "sh", "-c", "kill -KILL $$")
    assert p.returncode == 128 + 9, describe(p)


def test_run_timeout(daemon, api):
    before = sandbox_ids(api)
    t0 = time.monotonic()
    p = cli(daemon, "run", "--timeout", "1", "--", "sleep", "30")
    assert p.returncode == 124, describe(p)
    assert b"timed out" in p.stderr, describe(p)
    assert time.monotonic() - t0 < 20
    assert sandbox_ids(api) == before


def test_run_binary_output(daemon):
    p = cli(daemon, "run", "--", "printf", "\\377\\376\\000x")
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"\xff\xfe\x00x", describe(p)


def test_run_json(daemon):
    p = cli(daemon, "run", "--json", "--", "sh", "-c", "echo hi; exit 2")
    assert p.returncode == 2, describe(p)
    res = json.loads(p.stdout)
    assert res["exit_code"] == 2
    assert res["stdout"] == "hi\n"
    assert res["timed_out"] is False


def test_run_stdin_option(daemon):
    p = cli(daemon, "run", "-i", "--", "tr", "a-z", "A-Z", input=b"hello\n")
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"HELLO\n", describe(p)


def test_run_api_error_is_125(daemon, api):
    name = "cli-" + rand()
    sb = api.post("/v1/sandboxes", {"name": name})
    assert sb.status == 201, sb
    try:
        p = cli(daemon, "run", "--name", name, "--", "true")  # name taken: 409
        assert p.returncode == 125, describe(p)
        assert p.stderr.startswith(b"warren: "), describe(p)
    finally:
        api.delete("/v1/sandboxes/" + sb.json["id"])


def test_run_interrupted_removes_the_sandbox(daemon, api):
    before = sandbox_ids(api)
    proc = subprocess.Popen([daemon.bin, "run", "--", "sleep", "60"],
                            env={**os.environ, "WARREN_URL": daemon.url},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=sigint_default)
    try:
        def running():
            assert proc.poll() is None, proc.communicate()
            for sid in sandbox_ids(api) - before:
                r = api.get(f"/v1/sandboxes/{sid}/commands")
                if r.status == 200 and any(c["state"] == "running" for c in r.json["commands"]):
                    return True
            return False

        wait_for(running, what="the sandbox and its command to run")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGINT, (proc.returncode, out, err)
    assert sandbox_ids(api) == before


# ---------------------------------------------------------------------------------------------
# create / exec / ps / rm


def test_create_exec_ps_rm(daemon, api):
    name = "cli-" + rand()
    p = cli(daemon, "create", "--name", name, "--label", "suite=cli", "--env", "GREETING=hi")
    assert p.returncode == 0, describe(p)
    sid = p.stdout.decode().strip()
    assert sid.startswith("sb-"), describe(p)
    try:
        r = api.get("/v1/sandboxes/" + sid)
        assert r.status == 200 and r.json["name"] == name, r

        p = cli(daemon, "exec", name, "--", "true")
        assert p.returncode == 0, describe(p)
        p = cli(daemon, "exec", sid, "--", "sh", "-c", "echo $GREETING $X; exit 4",
                "--env", "X=y")  # after the command: an argument of sh, not an option
        assert p.returncode == 4, describe(p)
        assert p.stdout == b"hi\n", describe(p)
        p = cli(daemon, "exec", "--env", "X=y", "--cwd", "/", name, "--", "sh", "-c",
                'echo "$X $(pwd)"')
        assert p.returncode == 0, describe(p)
        assert p.stdout == b"y /\n", describe(p)

        p = cli(daemon, "ps")
        assert p.returncode == 0, describe(p)
        lines = p.stdout.decode().splitlines()
        assert lines[0].split() == ["ID", "NAME", "STATE", "CREATED"], describe(p)
        rows = [l.split() for l in lines[1:]]
        assert [sid, name, "running"] in [row[:3] for row in rows], describe(p)

        p = cli(daemon, "ps", "--json")
        assert p.returncode == 0, describe(p)
        listed = json.loads(p.stdout)
        assert isinstance(listed, list)
        assert any(sb["id"] == sid and sb["name"] == name for sb in listed), listed

        p = cli(daemon, "ps", "--json", "--label", "suite=cli")
        assert p.returncode == 0, describe(p)
        assert [sb["id"] for sb in json.loads(p.stdout)] == [sid]
        p = cli(daemon, "ps", "-q", "--label", "suite=other")
        assert p.returncode == 0, describe(p)
        assert p.stdout == b"", describe(p)

        p = cli(daemon, "rm", name)
        assert p.returncode == 0, describe(p)
    finally:
        api.delete("/v1/sandboxes/" + sid)
    assert api.get("/v1/sandboxes/" + sid).status == 404
    p = cli(daemon, "ps", "-q")
    assert sid not in p.stdout.decode().split()


def test_create_json(daemon, api):
    p = cli(daemon, "create", "--json")
    assert p.returncode == 0, describe(p)
    sb = json.loads(p.stdout)
    try:
        assert sb["id"].startswith("sb-")
        assert sb["state"] == "running"
    finally:
        api.delete("/v1/sandboxes/" + sb["id"])


def test_rm_nosuch(daemon):
    p = cli(daemon, "rm", "nosuch")
    assert p.returncode == 1, describe(p)
    assert p.stderr.startswith(b"warren: "), describe(p)
    assert b"nosuch" in p.stderr, describe(p)


def test_rm_several_reports_each(daemon, api):
    ids = []
    for _ in range(2):
        r = api.post("/v1/sandboxes", {})
        assert r.status == 201, r
        ids.append(r.json["id"])
    try:
        p = cli(daemon, "rm", ids[0], "nosuch-" + rand(), ids[1])
        assert p.returncode == 1, describe(p)
        assert p.stdout.decode().split() == ids, describe(p)
        assert p.stderr.count(b"warren: ") == 1, describe(p)
        for sid in ids:
            assert api.get("/v1/sandboxes/" + sid).status == 404
    finally:
        for sid in ids:
            api.delete("/v1/sandboxes/" + sid)


def test_exec_piped_stdin(daemon, api):
    r = api.post("/v1/sandboxes", {})
    assert r.status == 201, r
    sid = r.json["id"]
    try:
        # stdin is forwarded only with -i (like docker exec).
        p = cli(daemon, "exec", "-i", sid, "--", "cat", input=b"hello")
        assert p.returncode == 0, describe(p)
        assert p.stdout == b"hello", describe(p)

        data = random.Random(7).randbytes(300_000)
        p = cli(daemon, "exec", "-i", sid, "--", "sha256sum", input=data)
        assert p.returncode == 0, describe(p)
        assert p.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()

        # Without -i the command's stdin is empty, even when ours is not.
        p = cli(daemon, "exec", sid, "--", "cat", input=b"ignored")
        assert p.returncode == 0 and p.stdout == b"", describe(p)

        # No stdin at all (DEVNULL) is an empty stdin: cat ends at once.
        p = cli(daemon, "exec", "-i", sid, "--", "cat")
        assert p.returncode == 0 and p.stdout == b"", describe(p)
    finally:
        api.delete("/v1/sandboxes/" + sid)


def test_exec_unknown_sandbox(daemon):
    p = cli(daemon, "exec", "nosuch-" + rand(), "--", "true")
    assert p.returncode == 125, describe(p)
    assert p.stderr.startswith(b"warren: "), describe(p)


def test_exec_command_not_found(daemon, api):
    r = api.post("/v1/sandboxes", {})
    assert r.status == 201, r
    try:
        p = cli(daemon, "exec", r.json["id"], "--", "nosuchcmd")
        assert p.returncode == 127, describe(p)
    finally:
        api.delete("/v1/sandboxes/" + r.json["id"])


# ---------------------------------------------------------------------------------------------
# info, help, usage, unreachable daemon


def test_info(daemon):
    p = cli(daemon, "info", "--json")
    assert p.returncode == 0, describe(p)
    info = json.loads(p.stdout)
    assert "version" in info and "limits" in info, info
    p = cli(daemon, "info")
    assert p.returncode == 0, describe(p)
    assert b"version: " in p.stdout, describe(p)


def test_help(daemon):
    for args in (["help"], ["--help"]):
        p = cli(daemon, *args)
        assert p.returncode == 0, describe(p)
        assert b"run" in p.stdout and b"exec" in p.stdout, describe(p)
    for cmd in ("run", "create", "exec", "ps", "rm", "info"):
        p = cli(daemon, cmd, "--help")
        assert p.returncode == 0, describe(p)
        assert p.stdout.startswith(b"Usage: warren " + cmd.encode()), describe(p)
        p = cli(daemon, "help", cmd)
        assert p.returncode == 0, describe(p)
        assert p.stdout.startswith(b"Usage: warren " + cmd.encode()), describe(p)


def test_usage_errors(daemon, api):
    before = sandbox_ids(api)
    for args in (["run"], ["run", "--bogus", "--", "true"], ["exec"], ["exec", "x"], ["rm"],
                 ["run", "--timeout", "abc", "--", "true"], ["ps", "extra"], ["nosuchcommand"]):
        p = cli(daemon, *args)
        assert p.returncode == 2, f"{args}: {describe(p)}"
        assert p.stderr, f"{args}: {describe(p)}"
    assert sandbox_ids(api) == before


def test_unreachable_daemon(daemon):
    url = f"http://127.0.0.1:{closed_port()}"
    for args in (["ps"], ["rm", "x"], ["run", "--", "true"], ["info"]):
        p = cli(daemon, *args, url=url)
        assert p.returncode == 1, f"{args}: {describe(p)}"
        msg = p.stderr.decode()
        assert msg.startswith(f"warren: cannot reach the daemon at {url}: Connection refused"), msg
        assert "warren serve" in msg, msg
