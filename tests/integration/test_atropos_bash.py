"""atropos slot protocol: the `bash` tool (shared/compat-atropos.md, "Tools" / bash) — output
formatting, truncation, exit codes, metadata, timeouts (and that they kill background children),
cwd, network isolation, require_sandbox."""

import socket
import subprocess
import threading
import time
import uuid

import pytest

from atropos_client import (SLOT_IDS, TRUNC, parallel, slots,  # noqa: F401 - fixtures
                            slots_daemon)
from conftest import descendants, proc_cmdline, wait_for

BASH_MD_KEYS = {"exit_code", "sandboxed", "network_isolated"}


def ok_result(r, output):
    assert r["success"] is True, r
    assert r["error"] == "", r
    assert r["output"] == output, r
    md = r["metadata"]
    assert set(md) >= BASH_MD_KEYS, f"metadata lacks {sorted(BASH_MD_KEYS - set(md))}: {r}"
    assert md["exit_code"] == 0, r
    assert md["sandboxed"] is True, r
    assert isinstance(md["network_isolated"], bool), r
    return r


# -- output formatting --------------------------------------------------------------------------


def test_stdout_only(slots):
    ok_result(slots.bash("slot_0", "echo hello; echo world"), "hello\nworld")


def test_stderr_only(slots):
    ok_result(slots.bash("slot_0", "echo oops >&2; echo again >&2"), "oops\nagain")


def test_stdout_and_stderr(slots):
    ok_result(slots.bash("slot_0", "echo out; echo err >&2"), "out\n\n[stderr]\nerr")
    # stderr is appended after all of stdout, whatever the interleaving
    ok_result(slots.bash("slot_0", "echo e1 >&2; echo o1; echo e2 >&2; echo o2"),
              "o1\no2\n\n[stderr]\ne1\ne2")


def test_whitespace_stripped_at_both_ends_only(slots):
    ok_result(slots.bash("slot_0", r"printf '\n\n  hi  there \t\n\n'"), "hi  there")
    ok_result(slots.bash("slot_0", r"printf '  out  '; printf '  err  \n' >&2"),
              "out  \n[stderr]\n  err")
    ok_result(slots.bash("slot_0", r"printf ' \n \n'; printf '\n\t\n' >&2"), "[stderr]")


def test_invalid_utf8_replaced(slots):
    ok_result(slots.bash("slot_0", r"printf '\377abc'"), "\ufffdabc")
    ok_result(slots.bash("slot_0", r"printf 'x\303'; printf '\200y' >&2"),
              "x\ufffd\n[stderr]\n\ufffdy")


def test_no_output(slots):
    ok_result(slots.bash("slot_0", "true"), "")
    ok_result(slots.bash("slot_0", "printf '   \\n\\n'"), "")


def test_runs_posix_sh(slots):
    r = slots.bash("slot_0", 'echo "$0"')
    assert r["success"] is True and r["output"] in ("sh", "/bin/sh"), r


def test_cwd_is_workspace(slots):
    ok_result(slots.bash("slot_1", "pwd"), "/workspace")
    tag = uuid.uuid4().hex
    ok_result(slots.bash("slot_1", f"echo {tag} > cwd-probe.txt"), "")
    r = slots.read_file("slot_1", "cwd-probe.txt")
    assert r["success"] is True and r["output"] == tag + "\n", r
    ok_result(slots.bash("slot_1", "cat /workspace/cwd-probe.txt"), tag)


# -- truncation ---------------------------------------------------------------------------------


def test_stdout_truncated_at_50000(slots):
    r = slots.bash("slot_0", "head -c 60000 /dev/zero | tr '\\0' a")
    ok_result(r, "a" * 50000 + TRUNC)


def test_stdout_exactly_50000_not_truncated(slots):
    r = slots.bash("slot_0", "head -c 50000 /dev/zero | tr '\\0' a")
    ok_result(r, "a" * 50000)
    r = slots.bash("slot_0", "head -c 50001 /dev/zero | tr '\\0' a")
    ok_result(r, "a" * 50000 + TRUNC)


def test_stderr_truncated_at_50000(slots):
    r = slots.bash("slot_0", "head -c 70000 /dev/zero | tr '\\0' b >&2")
    ok_result(r, "b" * 50000 + TRUNC)


def test_both_streams_truncated(slots):
    r = slots.bash("slot_0", "head -c 60000 /dev/zero | tr '\\0' a; "
                             "head -c 60000 /dev/zero | tr '\\0' b >&2")
    ok_result(r, "a" * 50000 + TRUNC + "\n[stderr]\n" + "b" * 50000 + TRUNC)


def test_truncation_counts_characters(slots):
    # 60000 two-byte characters: cut at 50000 characters, not bytes, and never mid-character
    r = slots.bash("slot_0", "awk 'BEGIN { for (i = 0; i < 60000; i++) printf \"é\" }'")
    assert r["success"] is True, r
    out = r["output"]
    assert out.endswith(TRUNC), out[-80:]
    body = out[:-len(TRUNC)]
    assert set(body) == {"é"}, f"unexpected characters in {body[-20:]!r}"
    assert len(body) == 50000, f"kept {len(body)} characters, expected 50000"


def test_sigpipe_default(slots):
    # Commands start with default signal dispositions, as under Python's subprocess: a writer
    # into a closed pipe dies of SIGPIPE quietly instead of printing "Broken pipe".
    ok_result(slots.bash("slot_0", "yes | head -n 2"), "y\ny")
    r = slots.bash("slot_0", "grep -E '^Sig(Ign|Blk)' /proc/self/status")
    ign = int(r["output"].split("SigIgn:")[1].split()[0], 16)
    assert not ign & (1 << 12), f"SIGPIPE is ignored in commands: {r['output']!r}"


def test_large_output_with_failure(slots):
    r = slots.bash("slot_0", "head -c 55000 /dev/zero | tr '\\0' c; exit 9")
    assert r["success"] is False and r["error"] == "Exit code: 9", r["error"]
    assert r["output"] == "c" * 50000 + TRUNC
    assert r["metadata"]["exit_code"] == 9


# -- exit codes and metadata --------------------------------------------------------------------


@pytest.mark.parametrize("cmd,code,out", [("echo x; exit 3", 3, "x"), ("false", 1, ""),
                                          ("exit 255", 255, ""),
                                          ("echo bad >&2; exit 2", 2, "bad"),
                                          ("nosuchcommand-xyz", 127, None)])
def test_exit_code(slots, cmd, code, out):
    r = slots.bash("slot_2", cmd)
    assert r["success"] is False, r
    assert r["error"] == f"Exit code: {code}", r
    md = r["metadata"]
    assert md["exit_code"] == code, r
    assert md["sandboxed"] is True, r
    assert isinstance(md["network_isolated"], bool), r
    if out is not None:
        assert r["output"] == out, r
    else:
        assert "nosuchcommand-xyz" in r["output"], r


def test_require_sandbox(slots):
    r = slots.bash("slot_2", "echo sandboxed-run", require_sandbox=True)
    ok_result(r, "sandboxed-run")
    r = slots.bash("slot_2", "echo both", require_sandbox=True, allow_network=False)
    ok_result(r, "both")
    assert r["metadata"]["network_isolated"] is True, r
    r = slots.bash("slot_2", "exit 5", require_sandbox=True)
    assert r["success"] is False and r["metadata"]["sandboxed"] is True, r
    assert r["metadata"]["exit_code"] == 5, r


def _ns(kind):
    import os
    return os.readlink(f"/proc/self/ns/{kind}")


@pytest.mark.parametrize("args", [{}, {"require_sandbox": True}, {"allow_network": True},
                                  {"allow_network": False}])
def test_sandboxed_is_true(slots, args):
    # "sandboxed: true" is real: the command runs in namespaces of its own and cannot see the
    # test runner's processes.
    r = slots.bash("slot_2", "readlink /proc/self/ns/pid /proc/self/ns/mnt /proc/self/ns/user; "
                             "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '", **args)
    assert r["success"] is True and r["metadata"]["sandboxed"] is True, r
    lines = r["output"].splitlines()
    assert lines[0] != _ns("pid") and lines[1] != _ns("mnt") and lines[2] != _ns("user"), r
    assert "pytest" not in r["output"], "the sandbox sees the test runner's processes"


# -- timeouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout,text", [(1, "1s"), (0.5, "0.5s"), (1.5, "1.5s")])
def test_timeout(slots, timeout, text):
    t0 = time.monotonic()
    r = slots.execute("slot_3", "bash", {"command": "echo started; sleep 60"}, timeout=timeout)
    elapsed = time.monotonic() - t0
    assert r["success"] is False, r
    assert r["error"] == f"Command timed out after {text}", r
    md = r["metadata"]
    assert md.get("exit_code") == -1, r
    assert md.get("timeout") is True, r
    assert md.get("sandboxed") is True, r
    # Far below the sleep's 60 s, with room for a loaded machine.
    assert timeout * 0.9 <= elapsed < timeout + 10, f"timed out after {elapsed:.2f}s"
    # the slot is usable right away
    ok_result(slots.bash("slot_3", "echo next"), "next")


def test_timeout_number_printed_as_given(slots):
    # JSON 1.0 is printed as Python's client would have it: "1.0s"
    status, body, raw = slots.request(
        "POST", "/execute",
        raw=b'{"slot_id": "slot_3", "tool": "bash", "args": {"command": "sleep 5"}, '
            b'"execution_id": "t10", "timeout": 1.0}', timeout=30)
    assert status == 200, raw
    assert body["success"] is False and body["error"] == "Command timed out after 1.0s", body
    assert body["metadata"]["exit_code"] == -1 and body["metadata"]["timeout"] is True, body


def test_no_timeout_when_fast_enough(slots):
    ok_result(slots.execute("slot_3", "bash", {"command": "sleep 0.3; echo done"}, timeout=10),
              "done")


def late_cmd(name):
    # each test its own marker file, so that a survivor of one test cannot fail the next
    return f"(sleep 2; touch /workspace/{name}) & sleep 10"


def _new_late():
    return "late-" + uuid.uuid4().hex[:12]


def _host_sleepers(daemon_pid, patterns=("sleep 2", "sleep 10")):
    return [(pid, proc_cmdline(pid)) for pid in descendants(daemon_pid)
            if proc_cmdline(pid) in patterns]


def _sandbox_sleepers(slots, sid, pattern="^sleep (2|10)$"):
    r = slots.bash(sid, f"pgrep -f '{pattern}' || true")
    assert r["success"] is True, r
    return r["output"]


def _check_late_killed(slots, sids, daemon_pid, t_timeout, name):
    # Nothing the command started acts later: the marker file never appears...
    time.sleep(max(0.0, t_timeout + 2.8 - time.monotonic()))
    for sid in sids:
        out = slots.ok(sid, "ls -A /workspace")
        assert name not in out.split(), f"{sid}: a background child survived the timeout " \
                                        f"and created {name}"
    # ... and no process of it is left, seen from the host and from inside each slot
    left = _host_sleepers(daemon_pid)
    assert not left, f"processes of timed-out commands still alive on the host: {left}"
    for sid in sids:
        out = _sandbox_sleepers(slots, sid)
        assert out == "", f"{sid}: processes survived the timeout (pids {out!r})"


def test_timeout_kills_background_children(slots, slots_daemon):
    name = _new_late()
    r = slots.execute("slot_0", "bash", {"command": late_cmd(name)}, timeout=1)
    t_timeout = time.monotonic()
    assert r["success"] is False and r["error"] == "Command timed out after 1s", r
    assert r["metadata"]["exit_code"] == -1 and r["metadata"]["timeout"] is True, r
    _check_late_killed(slots, ["slot_0"], slots_daemon.pid, t_timeout, name)


def test_timeout_kills_setsid_children(slots, slots_daemon):
    # "a compatible server must kill them all": also children that left the process group
    name = _new_late()
    cmd = f"setsid sh -c 'sleep 2; touch /workspace/{name}' & sleep 10"
    r = slots.execute("slot_1", "bash", {"command": cmd}, timeout=1)
    t_timeout = time.monotonic()
    assert r["success"] is False and r["error"] == "Command timed out after 1s", r
    _check_late_killed(slots, ["slot_1"], slots_daemon.pid, t_timeout, name)


def test_timeout_kills_background_children_under_load(slots, slots_daemon):
    name = _new_late()
    fns = [lambda sid=sid: slots.execute(sid, "bash", {"command": late_cmd(name)}, timeout=1)
           for sid in SLOT_IDS]
    rs, elapsed = parallel(fns)
    t_timeout = time.monotonic()
    for r in rs:
        assert r["success"] is False and r["error"] == "Command timed out after 1s", r
        assert r["metadata"]["timeout"] is True and r["metadata"]["exit_code"] == -1, r
    assert elapsed < 4.0, f"4 parallel timeouts of 1s took {elapsed:.2f}s"
    _check_late_killed(slots, SLOT_IDS, slots_daemon.pid, t_timeout, name)


def test_timeout_kills_background_children_in_batch(slots, slots_daemon):
    name = _new_late()
    reqs = [{"slot_id": sid, "tool": "bash", "args": {"command": late_cmd(name)},
             "execution_id": str(uuid.uuid4()), "timeout": 1} for sid in SLOT_IDS]
    reqs += [{"slot_id": sid, "tool": "bash", "args": {"command": late_cmd(name)},
              "execution_id": str(uuid.uuid4()), "timeout": 0.5} for sid in SLOT_IDS]
    status, body = slots.post("/batch", reqs, timeout=60)
    t_timeout = time.monotonic()
    assert status == 200 and len(body) == len(reqs), body
    for req, r in zip(reqs, body):
        assert r["success"] is False, r
        assert r["error"] == f"Command timed out after {req['timeout']}s", r
        assert r["execution_id"] == req["execution_id"], r
    _check_late_killed(slots, SLOT_IDS, slots_daemon.pid, t_timeout, name)


def test_background_child_without_timeout_does_not_hang(slots):
    # The command returns when its shell exits even though a background child holds the
    # output pipes (or it is cut off by the timeout -- either way the request must come back).
    t0 = time.monotonic()
    r = slots.execute("slot_2", "bash", {"command": "sleep 3 & echo quick"}, timeout=10)
    elapsed = time.monotonic() - t0
    assert r["success"] is True and r["output"] == "quick", r
    assert elapsed < 9.5, f"took {elapsed:.2f}s"


# -- network ------------------------------------------------------------------------------------


class Listener:
    """A TCP listener on the host (all addresses) that records accepted connections."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop:
            try:
                c, addr = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(addr)
            try:
                c.sendall(b"HELLO\n")
                c.close()
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.t.join()
        self.sock.close()


def _host_ipv4s():
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except OSError:
        return []
    return [a for a in out.split() if "." in a and not a.startswith("127.")]


def _probe_cmd(addrs, port):
    parts = []
    for a in addrs:
        parts.append(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{a}/{port} && echo CONNECTED-{a}' "
                     f"2>/dev/null || echo refused-{a}")
    # an HTTP proxy inside the sandbox (if any) must not reach the host's loopback either
    parts.append("timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/3128 && "
                 f"printf \"CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n\" >&3 && "
                 "timeout 2 head -c 200 <&3' 2>/dev/null; echo")
    return "; ".join(parts)


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


def test_probe_works_on_host(listener):
    # Control: the probe connects when there is a network path.
    out = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{listener.port} && "
                                        "echo CONNECTED"],
                         capture_output=True, text=True, timeout=10).stdout
    assert "CONNECTED" in out
    wait_for(lambda: listener.accepted, what="control connection accepted")


@pytest.mark.parametrize("allow_network", [False, True])
def test_no_network_to_host(slots, listener, allow_network):
    addrs = ["127.0.0.1"] + _host_ipv4s()
    cmd = _probe_cmd(addrs, listener.port)
    r = slots.bash("slot_1", cmd, timeout=30, allow_network=allow_network)
    assert r["metadata"]["sandboxed"] is True, r
    assert "CONNECTED" not in r["output"], r
    assert "HELLO" not in r["output"] and "200" not in r["output"].split(), r
    time.sleep(0.3)
    assert listener.accepted == [], \
        f"host listener got connections from the sandbox {listener.accepted}: {r}"


def test_allow_network_false_isolated(slots):
    for sid in SLOT_IDS:
        r = slots.bash(sid, "cat /proc/net/dev", allow_network=False)
        assert r["success"] is True, r
        assert r["metadata"]["network_isolated"] is True, r
        ifaces = [l.split(":")[0].strip() for l in r["output"].splitlines()[2:]]
        assert ifaces == ["lo"], f"{sid}: interfaces with allow_network false: {ifaces}"


def test_network_isolated_reported_consistently(slots):
    seen = {False: set(), True: set()}
    for sid in SLOT_IDS:
        for allow in (False, True, False, True):
            r = slots.bash(sid, "echo n", allow_network=allow)
            assert r["success"] is True and r["output"] == "n", r
            ni = r["metadata"]["network_isolated"]
            assert isinstance(ni, bool), r
            seen[allow].add(ni)
    assert seen[False] == {True}, f"allow_network false reported {seen[False]}"
    assert len(seen[True]) == 1, f"allow_network true reported both values: {seen[True]}"
    # default is allow_network true
    r = slots.bash("slot_0", "echo d")
    assert {r["metadata"]["network_isolated"]} == seen[True], r
