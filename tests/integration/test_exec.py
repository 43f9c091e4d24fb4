"""POST /v1/sandboxes/{id}/exec (docs/API.md, "Exec")."""

import base64
import hashlib
import random
import socket
import threading
import time

from conftest import exec_, sh

RESULT_KEYS = {"exit_code", "signal", "stdout", "stderr", "stdout_truncated", "stderr_truncated",
               "truncated", "timed_out", "duration_ms"}


def check_result(res):
    missing = RESULT_KEYS - set(res)
    assert not missing, f"exec result lacks {sorted(missing)}: {res}"
    assert isinstance(res["duration_ms"], (int, float)) and res["duration_ms"] >= 0, res
    return res


def test_argv_echo(api, sandbox):
    res = check_result(exec_(api, sandbox["id"], argv=["echo", "hello world"]))
    assert res["stdout"] == "hello world\n"
    assert res["stderr"] == ""
    assert res["exit_code"] == 0
    assert res["signal"] is None
    assert res["timed_out"] is False
    assert res["truncated"] is False
    assert res["stdout_truncated"] is False and res["stderr_truncated"] is False


def test_argv_verbatim(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["printf", "%s|", "a b", 'c"d', "e'f", "$HOME", "*", ""])
    assert res["exit_code"] == 0, res
    assert res["stdout"] == "a b|c\"d|e'f|$HOME|*||"


def test_argv_path_lookup_and_absolute(api, sandbox):
    assert exec_(api, sandbox["id"], argv=["/bin/echo", "abs"])["stdout"] == "abs\n"
    res = exec_(api, sandbox["id"], argv=["ls", "-d", "/"])
    assert res["exit_code"] == 0 and res["stdout"] == "/\n", res


def test_shell_form(api, sandbox):
    res = check_result(exec_(api, sandbox["id"],
                             shell="echo $((6*7)) | tr 4 X; echo oops >&2; echo $HOME"))
    assert res["stdout"] == "X2\n/root\n"
    assert res["stderr"] == "oops\n"
    assert res["exit_code"] == 0


def test_exit_code(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["sh", "-c", "exit 7"])
    assert res["exit_code"] == 7 and res["signal"] is None and res["timed_out"] is False, res
    res = exec_(api, sandbox["id"], shell="exit 255")
    assert res["exit_code"] == 255, res
    res = exec_(api, sandbox["id"], argv=["false"])
    assert res["exit_code"] == 1, res


def test_killed_by_signal(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["sh", "-c", "kill -TERM $$"])
    assert res["signal"] == 15, res
    assert res["exit_code"] == 143, res
    assert res["timed_out"] is False
    res = exec_(api, sandbox["id"], argv=["sh", "-c", "echo before; kill -KILL $$"])
    assert res["signal"] == 9 and res["exit_code"] == 137, res
    assert res["stdout"] == "before\n"
    assert res["timed_out"] is False


def test_default_env(api, new_sandbox):
    sb = new_sandbox(name="envbox-" + str(random.randint(0, 10**6)))
    res = exec_(api, sb["id"], argv=["env"])
    env = dict(l.split("=", 1) for l in res["stdout"].splitlines() if "=" in l)
    assert env.get("HOME") == "/root", env
    assert env.get("HOSTNAME") == sb["name"], env
    assert env.get("LANG") == "C.UTF-8", env
    assert env.get("TERM") == "xterm", env
    assert "/bin" in env.get("PATH", "").split(":"), env


def test_exec_env(api, sandbox):
    weird = "a b=c\n'\"$x\\"
    res = exec_(api, sandbox["id"], argv=["sh", "-c", 'printf "%s|%s" "$FOO" "$WEIRD"'],
                env={"FOO": "bar", "WEIRD": weird})
    assert res["stdout"] == f"bar|{weird}", res


def test_sandbox_env_and_override(api, new_sandbox):
    sb = new_sandbox(env={"A": "1", "B": "2"})
    res = exec_(api, sb["id"], argv=["sh", "-c", 'echo "$A $B"'])
    assert res["stdout"] == "1 2\n", res
    res = exec_(api, sb["id"], argv=["sh", "-c", 'echo "$A $B $C"'], env={"B": "3", "C": "4"})
    assert res["stdout"] == "1 3 4\n", res
    # the override is per exec
    res = exec_(api, sb["id"], argv=["sh", "-c", 'echo "$A $B $C"'])
    assert res["stdout"] == "1 2 \n", res


def test_cwd(api, sandbox):
    assert exec_(api, sandbox["id"], argv=["pwd"])["stdout"] == "/workspace\n"
    assert exec_(api, sandbox["id"], argv=["pwd"], cwd="/tmp")["stdout"] == "/tmp\n"
    assert exec_(api, sandbox["id"], shell="pwd", cwd="/")["stdout"] == "/\n"
    res = exec_(api, sandbox["id"], argv=["pwd"], cwd="/no-such-dir-1234")
    assert res["exit_code"] == 126, res
    assert "/no-such-dir-1234" in res["stderr"], res
    assert res["stdout"] == ""


def test_stdin_text(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["cat"], stdin="hello\nw\u00f6rld")
    assert res["stdout"] == "hello\nw\u00f6rld", res
    assert res["exit_code"] == 0


def test_no_stdin_is_eof(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["cat"], timeout_s=10)
    assert res["timed_out"] is False, "cat without stdin must see EOF, not hang"
    assert res["stdout"] == "" and res["exit_code"] == 0


def test_stdin_large(api, sandbox):
    data = "x" * 200_000  # several pipe buffers: the daemon must feed and drain at once
    res = exec_(api, sandbox["id"], argv=["sh", "-c", "wc -c; echo done >&2"], stdin=data)
    assert res["stdout"].strip() == "200000", res
    res = exec_(api, sandbox["id"], argv=["cat"], stdin=data)
    assert res["stdout"] == data


def test_stdin_b64_binary(api, sandbox):
    raw = bytes(range(256)) * 4
    b64 = base64.b64encode(raw).decode()
    res = exec_(api, sandbox["id"], argv=["sha256sum"], stdin_b64=b64)
    assert res["stdout"].split()[0] == hashlib.sha256(raw).hexdigest(), res
    res = exec_(api, sandbox["id"], argv=["cat"], stdin_b64=b64)
    assert res["stdout"] is None, "binary output must not be put in 'stdout'"
    assert base64.b64decode(res["stdout_b64"]) == raw


def test_non_utf8_stdout(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["printf", "\\377\\376"])
    assert res["exit_code"] == 0, res
    assert res["stdout"] is None, res
    assert base64.b64decode(res["stdout_b64"]) == b"\xff\xfe"
    assert res["stderr"] == ""


def test_non_utf8_stderr(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["sh", "-c", "printf 'ok'; printf '\\377x' >&2"])
    assert res["stdout"] == "ok", res
    assert res["stderr"] is None, res
    assert base64.b64decode(res["stderr_b64"]) == b"\xffx"


def test_utf8_multibyte_output(api, sandbox):
    text = "h\u00e9llo \u4e16\u754c \U0001f600\n"
    res = exec_(api, sandbox["id"], argv=["cat"], stdin=text)
    assert res["stdout"] == text, res


def test_truncation_stdout(api, sandbox):
    res = exec_(api, sandbox["id"], shell="head -c 100000 /dev/zero | tr '\\0' a",
                max_output_bytes=1000)
    assert res["stdout"] == "a" * 1000, (len(res["stdout"] or ""), res.get("stdout_truncated"))
    assert res["truncated"] is True
    assert res["stdout_truncated"] is True
    assert res["stderr_truncated"] is False
    assert res["stderr"] == ""
    assert res["timed_out"] is False


def test_truncation_stderr(api, sandbox):
    res = exec_(api, sandbox["id"], shell="echo out; head -c 5000 /dev/zero | tr '\\0' e >&2",
                max_output_bytes=100)
    assert res["stderr"] == "e" * 100, res
    assert res["stdout"] == "out\n"
    assert res["stderr_truncated"] is True and res["stdout_truncated"] is False
    assert res["truncated"] is True


def test_truncated_output_keeps_draining(api, sandbox):
    # cutting the returned output must not change what the command does (no SIGPIPE, no stall)
    res = exec_(api, sandbox["id"], timeout_s=30, max_output_bytes=1000,
                shell="head -c 5000000 /dev/zero | tr '\\0' a; echo done >&2")
    assert res["exit_code"] == 0 and res["signal"] is None, res
    assert res["stderr"] == "done\n" and res["timed_out"] is False, res
    assert res["stdout"] == "a" * 1000 and res["stdout_truncated"] is True
    # big stdin in, big output out, small limit: no deadlock between feeding and draining
    res = exec_(api, sandbox["id"], argv=["cat"], stdin="x" * 3_000_000, max_output_bytes=10,
                timeout_s=30)
    assert res["exit_code"] == 0 and res["timed_out"] is False, res
    assert res["stdout"] == "x" * 10 and res["truncated"] is True


def test_output_exactly_at_limit_not_truncated(api, sandbox):
    res = exec_(api, sandbox["id"], shell="head -c 1000 /dev/zero | tr '\\0' a",
                max_output_bytes=1000)
    assert res["stdout"] == "a" * 1000
    assert res["truncated"] is False and res["stdout_truncated"] is False, res


def test_default_output_limit_is_1mib(api, sandbox):
    res = exec_(api, sandbox["id"], shell="head -c 2000000 /dev/zero | tr '\\0' b")
    assert len(res["stdout"]) == 1048576, len(res["stdout"])
    assert res["stdout_truncated"] is True and res["truncated"] is True


def test_output_complete_at_exit(api, sandbox):
    # all output written before the main process exits is returned, every time
    for i in range(5):
        n = 300_000 + i
        res = exec_(api, sandbox["id"], shell=f"head -c {n} /dev/zero | tr '\\0' z; echo -n e >&2")
        assert res["exit_code"] == 0
        assert len(res["stdout"]) == n, f"run {i}: got {len(res['stdout'])} of {n} bytes"
        assert res["stderr"] == "e"


def test_command_not_found(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["nosuchcmd"])
    assert res["exit_code"] == 127, res
    assert "not found" in res["stderr"]
    assert "warren: nosuchcmd: command not found" in res["stderr"], res
    res = exec_(api, sandbox["id"], argv=["/no/such/binary"])
    assert res["exit_code"] == 127, res


def test_not_executable(api, sandbox):
    sid = sandbox["id"]
    assert sh(api, sid, "printf '#!/bin/sh\\necho hi\\n' > /workspace/noexec.sh; "
                        "chmod 644 /workspace/noexec.sh")["exit_code"] == 0
    res = exec_(api, sid, argv=["/workspace/noexec.sh"])
    assert res["exit_code"] == 126, res
    assert res["stdout"] == ""
    sh(api, sid, "chmod 755 /workspace/noexec.sh")
    assert exec_(api, sid, argv=["/workspace/noexec.sh"])["stdout"] == "hi\n"


def test_timeout(api, sandbox):
    t0 = time.monotonic()
    res = exec_(api, sandbox["id"], argv=["sleep", "60"], timeout_s=1)
    elapsed = time.monotonic() - t0
    assert res["timed_out"] is True, res
    assert res["signal"] == 9 and res["exit_code"] == 137, res
    # Far below the sleep's 60 s, with room for a loaded machine.
    assert elapsed < 15, elapsed
    assert 900 <= res["duration_ms"] < 15000, res


def test_fractional_timeout(api, sandbox):
    t0 = time.monotonic()
    res = exec_(api, sandbox["id"], shell="echo started; sleep 60", timeout_s=0.5)
    elapsed = time.monotonic() - t0
    assert res["timed_out"] is True, res
    assert res["stdout"] == "started\n", "output before the timeout must be returned"
    assert elapsed < 15, elapsed


def test_timeout_kills_background_children(api, sandbox):
    sid = sandbox["id"]
    f = f"/workspace/bg-{random.randint(0, 10**9)}"
    res = exec_(api, sid, shell=f"(sleep 2; touch {f}) & sleep 10", timeout_s=1)
    assert res["timed_out"] is True, res
    time.sleep(3)
    res = exec_(api, sid, argv=["test", "-e", f])
    assert res["exit_code"] == 1, f"{f} was created: the background child survived the timeout"
    res = exec_(api, sid, argv=["pgrep", "-x", "sleep"])
    assert res["exit_code"] == 1, f"sleep processes survived the timeout: {res}"


def test_background_process_keeps_running(api, sandbox):
    sid = sandbox["id"]
    t0 = time.monotonic()
    res = exec_(api, sid, argv=["sh", "-c", "sleep 30.25 >/dev/null 2>&1 &"])
    assert time.monotonic() - t0 < 15
    assert res["exit_code"] == 0 and res["timed_out"] is False, res
    time.sleep(0.5)
    res = exec_(api, sid, argv=["pgrep", "-f", "sleep 30.25"])
    assert res["exit_code"] == 0 and res["stdout"].strip(), f"background sleep is gone: {res}"
    ps = exec_(api, sid, argv=["ps", "-eo", "args"])
    assert "sleep 30.25" in ps["stdout"], ps


def test_background_holding_stdout_does_not_block(api, sandbox):
    # the call returns when the main process exits, even if a child still holds stdout open
    t0 = time.monotonic()
    res = exec_(api, sandbox["id"], argv=["sh", "-c", "sleep 30 & echo done"], timeout_s=25)
    elapsed = time.monotonic() - t0
    assert res["timed_out"] is False, res
    assert res["exit_code"] == 0
    assert res["stdout"] == "done\n", res
    assert elapsed < 15, f"exec waited {elapsed:.1f}s for a background child"


def test_concurrent_execs(api, daemon):
    n_sb, n_exec = 20, 5
    sbs, errors = [None] * n_sb, []

    def create(i):
        try:
            sbs[i] = api.create(labels={"conc": "1"})
        except BaseException as e:  # noqa: BLE001
            errors.append(f"create {i}: {e}")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n_sb)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    try:
        assert not errors, errors
        assert len({s["id"] for s in sbs}) == n_sb
        results = {}

        def run(i, j):
            try:
                r = api.post(f"/v1/sandboxes/{sbs[i]['id']}/exec",
                             {"argv": ["sh", "-c", 'sleep 0.2; echo "$1-$2"; echo "e$2" >&2; '
                                                   'exit $2', "sh", sbs[i]["id"], str(j)]})
                results[(i, j)] = r
            except BaseException as e:  # noqa: BLE001
                errors.append(f"exec {i}/{j}: {e!r}")

        t0 = time.monotonic()
        threads = [threading.Thread(target=run, args=(i, j))
                   for i in range(n_sb) for j in range(n_exec)]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
        elapsed = time.monotonic() - t0
        assert not errors, errors
        assert len(results) == n_sb * n_exec
        for (i, j), r in results.items():
            assert r.status == 200, f"exec {i}/{j}: {r!r}"
            assert r.json["stdout"] == f"{sbs[i]['id']}-{j}\n", (i, j, r.json)
            assert r.json["stderr"] == f"e{j}\n", (i, j, r.json)
            assert r.json["exit_code"] == j, (i, j, r.json)
        # 100 execs of 0.2 s each: they must overlap, not run one after the other
        assert elapsed < 15, f"100 concurrent execs took {elapsed:.1f}s"
    finally:
        for s in sbs:
            if s:
                api.remove(s["id"])


def _read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for l in lines[1:]:
        k, _, v = l.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body[:length]


def test_many_simultaneous_connections(api, daemon):
    n = 200
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
            socks.append(s)
        # all 200 are open at once; now each sends its request
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ok = 0
        for s in socks:
            status, body = _read_response(s)
            assert status == 200, (status, body)
            assert body.strip() == b'{"status":"ok"}' or b'"ok"' in body, body
            ok += 1
        assert ok == n
    finally:
        for s in socks:
            s.close()
    assert api.healthy()



def test_commands_get_conventional_process_state(api, sandbox):
    """umask 022 and default signal dispositions, whatever the daemon itself runs with."""
    r = sh(api, sandbox["id"], "umask; grep -E 'SigIgn|SigBlk' /proc/self/status; "
                              "yes | head -n 1")
    assert r["exit_code"] == 0, r
    lines = r["stdout"].splitlines()
    assert lines[0] == "0022"
    assert lines[1].split()[1] == "0000000000000000"  # nothing ignored (SIGPIPE above all)
    # No standard signal blocked (signals 32 and 33 belong to the C library's threads).
    assert int(lines[2].split()[1], 16) & 0x7FFFFFFF == 0, lines[2]
    assert lines[3] == "y" and r["stderr"] == ""
