"""Persistent shells: /v1/sandboxes/{id}/shells (docs/API.md, "Persistent shells")."""

import http.client
import json
import re
import threading
import time

import pytest

from conftest import WAIT_S, descendants, exec_, proc_cmdline, wait_for

SID_RE = re.compile(r"^sh-[a-z0-9]+$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
RUN_KEYS = {"output", "exit_code", "timed_out", "truncated", "shell_exited", "shell_restarted",
            "duration_ms"}


def new_shell(api, sb_id, **body):
    r = api.post(f"/v1/sandboxes/{sb_id}/shells", body)
    assert r.status == 201, f"create shell {body!r}: {r!r}"
    assert SID_RE.match(r.json["shell_id"]), r
    return r.json["shell_id"]


def run_raw(api, sb_id, shell_id, command, **body):
    body = dict(command=command, **body)
    timeout = max(60, float(body.get("timeout_s", 0) or 0) + 30)
    return api.post(f"/v1/sandboxes/{sb_id}/shells/{shell_id}/run", body, timeout=timeout)


def run(api, sb_id, shell_id, command, **body):
    r = run_raw(api, sb_id, shell_id, command, **body)
    assert r.status == 200, f"run {command!r}: {r!r}"
    res = r.json
    missing = RUN_KEYS - set(res)
    assert not missing, f"run result lacks {sorted(missing)}: {res}"
    return res


def out(api, sb_id, shell_id, command, **body):
    """Runs `command`, asserts exit 0 and a normal run, returns the output."""
    res = run(api, sb_id, shell_id, command, **body)
    assert res["exit_code"] == 0 and not res["timed_out"] and not res["shell_exited"], res
    return res["output"]


@pytest.fixture
def shell(api, sandbox):
    return sandbox["id"], new_shell(api, sandbox["id"])


def pgrep(api, sb_id, pattern):
    res = exec_(api, sb_id, argv=["pgrep", "-f", pattern])
    assert res["exit_code"] in (0, 1), res
    return res["stdout"].split()


# ---------------------------------------------------------------------------------------------


def test_create_list_fields(api, sandbox):
    sid = sandbox["id"]
    r = api.post(f"/v1/sandboxes/{sid}/shells", {})
    assert r.status == 201, r
    sh = r.json
    assert set(sh) >= {"shell_id", "state", "created_at", "queued"}, sh
    assert TIME_RE.match(sh["created_at"]), sh
    assert sh["queued"] == 0 and isinstance(sh["state"], str), sh
    r = api.get(f"/v1/sandboxes/{sid}/shells")
    assert r.status == 200 and [s["shell_id"] for s in r.json["shells"]] == [sh["shell_id"]], r
    sh2 = new_shell(api, sid)
    r = api.get(f"/v1/sandboxes/{sid}/shells")
    assert {s["shell_id"] for s in r.json["shells"]} == {sh["shell_id"], sh2}, r


def test_create_validation(api, sandbox):
    base = f"/v1/sandboxes/{sandbox['id']}/shells"
    for body, field in [({"bogus": 1}, "bogus"), ({"cwd": "rel"}, "cwd"), ({"env": []}, "env"),
                        ({"env": {"A": 1}}, "env")]:
        r = api.post(base, body)
        assert r.status == 400 and field in (r.error_message or ""), (body, r)
    r = api.post("/v1/sandboxes/sb-nosuchsandbox/shells", {})
    assert r.status == 404, r
    r = api.get("/v1/sandboxes/sb-nosuchsandbox/shells")
    assert r.status == 404, r


def test_run_validation(api, shell):
    sid, shid = shell
    base = f"/v1/sandboxes/{sid}/shells/{shid}/run"
    for body, status in [({}, 400), ({"command": 5}, 400), ({"command": "true", "x": 1}, 400),
                         ({"command": "true", "timeout_s": 0}, 400),
                         ({"command": "true", "timeout_s": 86401}, 422),
                         ({"command": "true", "max_output_bytes": -1}, 400),
                         ({"command": "true", "max_output_bytes": 67108865}, 422)]:
        r = api.post(base, body)
        assert r.status == status, (body, r)
    r = api.post(f"/v1/sandboxes/{sid}/shells/sh-nosuchshell/run", {"command": "true"})
    assert r.status == 404 and r.error_code == "not_found", r
    assert out(api, sid, shid, "echo fine") == "fine\n"


def test_env_and_cwd_on_create(api, sandbox):
    sid = sandbox["id"]
    shid = new_shell(api, sid, env={"GREETING": "hi there"}, cwd="/tmp")
    assert out(api, sid, shid, 'echo "$GREETING"; pwd') == "hi there\n/tmp\n"
    shid2 = new_shell(api, sid)
    assert out(api, sid, shid2, 'echo "[$GREETING]"; pwd') == "[]\n/workspace\n"


def test_state_persists(api, shell):
    sid, shid = shell
    setup = ("cd /tmp && mkdir -p d1 && cd d1; export PV='persisted value'; NOTEXP=local; "
             "greet() { echo \"hello $1\"; }; alias hi='echo alias-works'")
    assert out(api, sid, shid, setup) == ""
    assert out(api, sid, shid, "pwd") == "/tmp/d1\n"
    assert out(api, sid, shid, 'echo "$PV|$NOTEXP"') == "persisted value|local\n"
    assert out(api, sid, shid, 'sh -c \'echo "$PV"\'') == "persisted value\n"  # exported
    assert out(api, sid, shid, "greet world") == "hello world\n"
    assert out(api, sid, shid, "hi") == "alias-works\n"
    # another shell does not share any of it
    other = new_shell(api, sid)
    assert out(api, sid, other, 'pwd; echo "[$PV]"; type greet >/dev/null 2>&1 || echo nofn') \
        == "/workspace\n[]\nnofn\n"


def test_background_jobs_persist(api, shell):
    sid, shid = shell
    o = out(api, sid, shid, "sleep 9101 & echo pid=$!")
    pid = re.search(r"pid=(\d+)", o).group(1)
    # The job has exec'd sleep once pgrep finds it by its command line.
    wait_for(lambda: pgrep(api, sid, "sleep 9101") == [pid], what="the job to run sleep")
    o = out(api, sid, shid, f"kill -0 {pid} && echo alive; jobs")
    assert "alive" in o and "sleep 9101" in o, o
    out(api, sid, shid, "kill %1")
    deadline = time.monotonic() + WAIT_S
    while pgrep(api, sid, "sleep 9101"):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_exit_code_and_output_forms(api, shell):
    sid, shid = shell
    res = run(api, sid, shid, "false")
    assert res["exit_code"] == 1 and res["output"] == "" and res["shell_exited"] is False, res
    res = run(api, sid, shid, "(exit 42)")
    assert res["exit_code"] == 42, res
    assert out(api, sid, shid, "printf 'no newline'") == "no newline"
    assert out(api, sid, shid, "printf 'a\\n\\nb\\n\\n'") == "a\n\nb\n\n"
    # stdout and stderr interleaved, in order
    assert out(api, sid, shid, "echo 1; echo 2 >&2; echo 3") == "1\n2\n3\n"
    assert out(api, sid, shid, "printf 'x\\ty \\u00e9\\n'") == "x\ty \u00e9\n"
    res = run(api, sid, shid, "printf '\\377\\376'")
    assert res["output"] is None and res["output_b64"] == "//4=", res
    assert out(api, sid, shid, "echo $((6 * 7))") == "42\n"
    res = run(api, sid, shid, "")
    assert res["exit_code"] == 0 and res["output"] == "", res


def test_multiline_and_quoting(api, shell):
    sid, shid = shell
    cmd = "for i in 1 2 3; do\n  echo \"n=$i\"\ndone\ncat <<'EOF'\n$HOME 'q' \"dq\" \\\nEOF"
    assert out(api, sid, shid, cmd) == "n=1\nn=2\nn=3\n$HOME 'q' \"dq\" \\\n"
    weird = "a'b\"c$d`e\\f\x01g\u00e9"
    assert out(api, sid, shid, "printf '%s' " + "'" + weird.replace("'", "'\\''") + "'") == weird


def test_stdin_is_dev_null(api, shell):
    sid, shid = shell
    t0 = time.monotonic()
    res = run(api, sid, shid, "cat; read x; echo read=$?; wc -c", timeout_s=10)
    assert res["timed_out"] is False and time.monotonic() - t0 < 5, res
    assert res["output"] == "read=1\n0\n", res
    assert out(api, sid, shid, "python3 -c 'import sys; print(repr(sys.stdin.read()))'") \
        == "''\n"


def test_marker_text_does_not_confuse(api, shell):
    sid, shid = shell
    tricky = ("echo __WARREN_; echo __WARREN_abc_RC=5__; printf '\\n__WARREN_x_RC=3__\\n'; "
              "echo done")
    res = run(api, sid, shid, tricky)
    assert res["exit_code"] == 0, res
    assert res["output"] == "__WARREN_\n__WARREN_abc_RC=5__\n\n__WARREN_x_RC=3__\ndone\n", res
    assert out(api, sid, shid, "echo next") == "next\n"


def test_unbalanced_quote(api, shell):
    sid, shid = shell
    res = run(api, sid, shid, "echo 'unbalanced", timeout_s=10)
    assert res["timed_out"] is False, "an unbalanced quote must not leave the shell waiting"
    assert res["exit_code"] != 0 and res["output"], res
    assert "unexpected EOF" in res["output"] or "matching" in res["output"], res
    res = run(api, sid, shid, 'echo "also (', timeout_s=10)
    assert res["exit_code"] != 0 and res["timed_out"] is False, res
    res = run(api, sid, shid, "if true; then echo x", timeout_s=10)
    assert res["exit_code"] != 0 and res["timed_out"] is False, res
    assert out(api, sid, shid, "echo usable") == "usable\n"


def test_timeout_interrupts_foreground_only(api, shell):
    sid, shid = shell
    o = out(api, sid, shid, "cd /tmp; export KEEP=1; sleep 9201 & echo pid=$!")
    pid = re.search(r"pid=(\d+)", o).group(1)
    t0 = time.monotonic()
    res = run(api, sid, shid, "echo before; sleep 30; echo after", timeout_s=1)
    elapsed = time.monotonic() - t0
    assert res["timed_out"] is True and res["exit_code"] == 130, res
    assert res["shell_exited"] is False, res
    assert "before" in res["output"] and "after" not in res["output"], res
    assert elapsed < 6, elapsed
    o = out(api, sid, shid, f"pwd; echo $KEEP; kill -0 {pid} && echo job-alive")
    assert o == "/tmp\n1\njob-alive\n", o
    assert not pgrep(api, sid, "sleep 30"), "the timed-out foreground sleep is still running"


def test_timeout_of_builtin_busy_loop(api, shell):
    sid, shid = shell
    out(api, sid, shid, "export SURVIVES=yes")
    t0 = time.monotonic()
    res = run(api, sid, shid, "while :; do :; done", timeout_s=1)
    assert res["timed_out"] is True and res["exit_code"] == 130, res
    assert time.monotonic() - t0 < 10
    o = run(api, sid, shid, "echo $SURVIVES")
    assert o["output"] == "yes\n" and o["shell_restarted"] is False, o


def test_timeout_of_trapped_int(api, shell):
    """A foreground job that ignores SIGINT is killed after the grace period."""
    sid, shid = shell
    t0 = time.monotonic()
    res = run(api, sid, shid, "sh -c 'trap \"\" INT; sleep 9301'", timeout_s=1)
    # It ignored SIGINT, so it was SIGKILLed: 137 (docs/API.md, persistent shells).
    assert res["timed_out"] is True and res["exit_code"] == 137, res
    assert time.monotonic() - t0 < 10
    assert out(api, sid, shid, "echo ok") == "ok\n"
    assert not pgrep(api, sid, "sleep 9301")


def test_killed_job_leaves_nothing_for_the_next_run(api, shell):
    """After a job that ignored SIGINT was killed, the shell has two marker lines in its input;
    neither may show in the next run's output (it did, now and then, before the shell
    resynchronised after such a run)."""
    sid, shid = shell
    for i in range(3):
        res = run(api, sid, shid, "sh -c 'trap \"\" INT; sleep 9302'", timeout_s=0.5)
        assert res["timed_out"] is True and res["exit_code"] == 137, res
        o = run(api, sid, shid, f"echo next-{i}")
        assert o["output"] == f"next-{i}\n" and o["shell_restarted"] is False, o


def test_exit_restarts_shell(api, shell):
    sid, shid = shell
    out(api, sid, shid, "cd /tmp; export GONE=1")
    res = run(api, sid, shid, "exit 3")
    assert res["shell_exited"] is True and res["exit_code"] == 3, res
    assert res["timed_out"] is False
    res = run(api, sid, shid, 'pwd; echo "[$GONE]"')
    assert res["shell_restarted"] is True and res["shell_exited"] is False, res
    assert res["output"] == "/workspace\n[]\n" and res["exit_code"] == 0, res
    res = run(api, sid, shid, "echo again")
    assert res["shell_restarted"] is False and res["output"] == "again\n", res
    # the shell is still listed under the same id
    r = api.get(f"/v1/sandboxes/{sid}/shells")
    assert [s["shell_id"] for s in r.json["shells"]] == [shid], r


def test_exit_keeps_create_env(api, sandbox):
    sid = sandbox["id"]
    shid = new_shell(api, sid, env={"FROM_CREATE": "kept"})
    assert run(api, sid, shid, "exit")["shell_exited"] is True
    res = run(api, sid, shid, "echo $FROM_CREATE")
    assert res["shell_restarted"] is True and res["output"] == "kept\n", res


def test_concurrent_runs_are_serialized(api, shell):
    sid, shid = shell
    results = {}

    def worker(name):
        results[name] = run(api, sid, shid,
                            f"echo {name}1; sleep 0.5; echo {name}2; echo {name} >> /tmp/order")

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b", "c")]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    for n in ("a", "b", "c"):
        assert results[n]["output"] == f"{n}1\n{n}2\n", results
        assert results[n]["exit_code"] == 0
    assert elapsed >= 1.5, f"3 runs of 0.5 s on one shell took {elapsed:.2f}s: not serialized"
    order = out(api, sid, shid, "cat /tmp/order").split()
    assert sorted(order) == ["a", "b", "c"], order


def test_queued_count(api, shell):
    sid, shid = shell
    done = []
    # The first run holds the shell until the test says go.
    t = threading.Thread(target=lambda: done.append(run(
        api, sid, shid, "touch /tmp/started; while [ ! -e /tmp/go ]; do sleep 0.05; done")))
    t2 = threading.Thread(target=lambda: done.append(run(api, sid, shid, "true")))
    t.start()
    wait_for(lambda: exec_(api, sid, argv=["test", "-e", "/tmp/started"])["exit_code"] == 0,
             what="the first run to start")
    t2.start()

    def queued():
        sh = api.get(f"/v1/sandboxes/{sid}/shells").json["shells"][0]
        return sh if sh["queued"] >= 1 else None

    sh = wait_for(queued, what="the second run to be queued")
    assert exec_(api, sid, argv=["touch", "/tmp/go"])["exit_code"] == 0
    t.join(30)
    t2.join(30)
    assert sh["state"] == "running" and sh["queued"] >= 1, sh
    assert len(done) == 2


def test_delete_shell_kills_jobs(api, shell):
    sid, shid = shell
    out(api, sid, shid, "sleep 1000 & sleep 1001 & disown; echo started")
    deadline = time.monotonic() + WAIT_S  # the jobs may not have exec'd sleep yet
    while len(pgrep(api, sid, "sleep 100[01]")) != 2:
        assert time.monotonic() < deadline, pgrep(api, sid, "sleep 100[01]")
        time.sleep(0.1)
    r = api.delete(f"/v1/sandboxes/{sid}/shells/{shid}")
    assert r.status == 204, r
    r = run_raw(api, sid, shid, "echo hi")
    assert r.status == 404 and r.error_code == "not_found", r
    r = api.delete(f"/v1/sandboxes/{sid}/shells/{shid}")
    assert r.status == 404, r
    r = api.get(f"/v1/sandboxes/{sid}/shells")
    assert r.json == {"shells": []}, r
    deadline = time.monotonic() + WAIT_S
    while True:
        left = pgrep(api, sid, "sleep 1000")
        if not left:
            break
        assert time.monotonic() < deadline, f"the deleted shell's job is still alive: {left}"
        time.sleep(0.1)


def test_delete_shell_while_running(api, shell):
    sid, shid = shell
    got = {}

    def worker():
        got["r"] = run_raw(api, sid, shid, "sleep 9401; echo never", timeout_s=60)

    t = threading.Thread(target=worker)
    t.start()
    wait_for(lambda: pgrep(api, sid, "sleep 9401"), what="the run to start")
    r = api.delete(f"/v1/sandboxes/{sid}/shells/{shid}")
    assert r.status == 204, r
    t.join(WAIT_S)
    assert not t.is_alive(), "a run on a deleted shell never answered"
    assert got["r"].status == 409, got["r"]
    deadline = time.monotonic() + WAIT_S
    while pgrep(api, sid, "sleep 9401"):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_client_disconnect_interrupts_run(api, daemon, shell):
    sid, shid = shell
    body = json.dumps({"command": "echo x; sleep 9501; echo never > /tmp/never",
                       "timeout_s": 120}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("POST", f"/v1/sandboxes/{sid}/shells/{shid}/run", body=body,
                 headers={"Content-Type": "application/json"})
    wait_for(lambda: pgrep(api, sid, "sleep 9501"), what="the run to start")
    conn.close()
    t0 = time.monotonic()
    # the shell is free again soon (the interrupted run does not hold the queue for 120 s)
    res = run(api, sid, shid, "echo after; test -e /tmp/never && echo leaked", timeout_s=60)
    assert res["output"] == "after\n" and res["timed_out"] is False, res
    assert time.monotonic() - t0 < WAIT_S
    assert not pgrep(api, sid, "sleep 9501")


def test_max_output_bytes(api, shell):
    sid, shid = shell
    res = run(api, sid, shid, "head -c 100000 /dev/zero | tr '\\0' a; echo; echo tail",
              max_output_bytes=100)
    assert res["truncated"] is True and res["output"] == "a" * 100, res
    assert res["exit_code"] == 0 and res["timed_out"] is False
    assert out(api, sid, shid, "echo ok") == "ok\n"


@pytest.mark.parametrize("limit", [5, 20, 40])
def test_output_within_limit_not_truncated(api, shell, limit):
    sid, shid = shell
    res = run(api, sid, shid, "printf 12345", max_output_bytes=limit)
    assert res["output"] == "12345", res
    assert res["truncated"] is False, f"5 bytes of output with max_output_bytes={limit}: {res}"


@pytest.mark.parametrize("n", [4000, 5000, 100000, 1048576])
def test_large_output_complete(api, shell, n):
    sid, shid = shell
    res = run(api, sid, shid, f"head -c {n} /dev/zero | tr '\\0' a", timeout_s=30)
    assert res["exit_code"] == 0 and res["truncated"] is False, {**res, "output": "..."}
    assert len(res["output"]) == n, f"{n} bytes written, {len(res['output'])} returned"
    assert res["output"] == "a" * n


def test_seq_output_complete(api, shell):
    sid, shid = shell
    o = out(api, sid, shid, "seq 1 100000", timeout_s=30)
    assert o == "".join(f"{i}\n" for i in range(1, 100001)), f"{len(o)} bytes: ...{o[-20:]!r}"


def test_default_output_limit(api, shell):
    sid, shid = shell
    res = run(api, sid, shid, "head -c 2000000 /dev/zero | tr '\\0' b", timeout_s=30)
    assert res["truncated"] is True, {**res, "output": "..."}
    assert res["output"] == "b" * 1048576, len(res["output"])
    assert out(api, sid, shid, "echo ok") == "ok\n"


def _shell_host_procs(daemon, needle):
    return [pid for pid in descendants(daemon.pid) if needle in proc_cmdline(pid)]


def test_shells_of_deleted_sandbox_are_gone(api, daemon):
    sb = api.create()
    sid = sb["id"]
    try:
        shid = new_shell(api, sid)
        out(api, sid, shid, "sleep 9601 & echo ok")
        deadline = time.monotonic() + WAIT_S  # the job may not have exec'd sleep yet
        while not _shell_host_procs(daemon, "sleep 9601"):
            assert time.monotonic() < deadline, "the shell's job never started"
            time.sleep(0.1)
    except BaseException:
        api.remove(sid)
        raise
    assert api.delete(f"/v1/sandboxes/{sid}").status == 204
    assert not _shell_host_procs(daemon, "sleep 9601"), "a shell job outlived its sandbox"
    assert not _shell_host_procs(daemon, "bash --noprofile"), "a shell outlived its sandbox"
    r = api.get(f"/v1/sandboxes/{sid}/shells")
    assert r.status == 404, r
    r = run_raw(api, sid, shid, "true")
    assert r.status == 404, r
    r = api.delete(f"/v1/sandboxes/{sid}/shells/{shid}")
    assert r.status == 404, r


def test_sandbox_delete_during_run(api, daemon):
    sb = api.create()
    sid = sb["id"]
    got = {}
    try:
        shid = new_shell(api, sid)
        out(api, sid, shid, "true")
    except BaseException:
        api.remove(sid)
        raise

    def worker():
        got["r"] = run_raw(api, sid, shid, "sleep 9701", timeout_s=60)

    t = threading.Thread(target=worker)
    t.start()
    wait_for(lambda: _shell_host_procs(daemon, "sleep 9701"), what="the run to start")
    assert api.delete(f"/v1/sandboxes/{sid}").status == 204
    t.join(WAIT_S)
    assert not t.is_alive(), "the run did not answer when its sandbox was deleted"
    assert got["r"].status in (404, 409), got["r"]
    assert api.healthy()
