"""The `warren` CLI's streaming commands against a real daemon: exec/run streamed live over
WebSocket (exit codes, -i stdin, exact bytes, reconnection after a dropped connection, signals),
start / commands / logs [-f] for detached commands, and -t / -it / attach on terminals (under a
pseudo-terminal, so that the CLI has a real tty).

The CLI runs as a subprocess with WARREN_URL pointing at the test daemon (or at a proxy in front
of it that drops WebSocket connections on purpose).
"""

import fcntl
import hashlib
import json
import os
import pty
import random
import select
import shlex
import signal
import socket
import struct
import subprocess
import termios
import threading
import time

import pytest

from conftest import WAIT_S, exec_, sigint_default, wait_for

CLI_TIMEOUT_S = 60


def env_for(url):
    return {**os.environ, "WARREN_URL": url}


def cli(daemon, *args, input=None, url=None, timeout=CLI_TIMEOUT_S):
    """Run `warren ARGS...` and return the CompletedProcess (bytes stdout/stderr)."""
    kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([daemon.bin, *args], env=env_for(url or daemon.url),
                          capture_output=True, timeout=timeout, **kw)


def describe(p):
    return f"rc={p.returncode} stdout={p.stdout[:2000]!r} stderr={p.stderr[:2000]!r}"


def commands(api, sid):
    r = api.get(f"/v1/sandboxes/{sid}/commands")
    assert r.status == 200, r
    return r.json["commands"]


def command(api, sid, cid):
    r = api.get(f"/v1/sandboxes/{sid}/commands/{cid}")
    assert r.status == 200, r
    return r.json


def read_until(stream, needle, timeout=WAIT_S):
    """Read a pipe incrementally until `needle` shows up; returns (data, seconds it took)."""
    fd = stream.fileno()
    data = b""
    t0 = time.monotonic()
    while needle not in data:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            raise AssertionError(f"{needle!r} did not arrive within {timeout}s; got {data!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got {data!r}")
            data += chunk
    return data, time.monotonic() - t0


# ---------------------------------------------------------------------------------------------
# A TCP proxy that drops WebSocket connections


class DroppingProxy:
    """Forwards 127.0.0.1:<port> to the daemon. The first `drops` WebSocket upgrades it sees are
    cut (both ways, abruptly) once `after` bytes went from the daemon to the client. With
    `refuse_after_drops`, it stops accepting connections after the last drop."""

    def __init__(self, daemon, drops, after, refuse_after_drops=False):
        self.target = ("127.0.0.1", daemon.port)
        self.drops_left = drops
        self.after = after
        self.refuse = refuse_after_drops
        self.lock = threading.Lock()
        self.upgrades = 0
        self.dropped = 0
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.url = f"http://127.0.0.1:{self.lsock.getsockname()[1]}"
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self):
        self.closed = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes accept() (close() alone does not)
        except OSError:
            pass
        self.lsock.close()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            s = socket.create_connection(self.target)
        except OSError:
            c.close()
            return
        first = c.recv(65536)
        limit = None
        if first.startswith(b"GET ") and b"upgrade: websocket" in first.lower():
            with self.lock:
                self.upgrades += 1
                if self.drops_left > 0:
                    self.drops_left -= 1
                    limit = self.after
                    if self.drops_left == 0 and self.refuse:
                        self.close()
        s.sendall(first)
        done = threading.Event()

        def kill():
            # shutdown() first: close() alone would not wake the other thread's recv().
            done.set()
            for x in (c, s):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                x.close()

        def up():
            try:
                while not done.is_set():
                    d = c.recv(65536)
                    if not d:
                        break
                    s.sendall(d)
            except OSError:
                pass
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=up, daemon=True).start()
        sent = 0
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                if limit is not None and sent + len(d) >= limit:
                    c.sendall(d[:max(0, limit - sent)])
                    with self.lock:
                        self.dropped += 1
                    kill()
                    return
                c.sendall(d)
                sent += len(d)
        except OSError:
            pass
        try:
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# exec / run streamed


# The command prints its second line only once the test has seen the first one and says go.
FIRST_THEN_GO = ("echo first; while [ ! -e /workspace/go ]; do sleep 0.05; done; echo second")


def say_go(api, sid):
    r = api.request("PUT", f"/v1/sandboxes/{sid}/files?path=/workspace/go", body=b"")
    assert r.status in (200, 201, 204), r


def test_exec_streams_output_live(daemon, api, sandbox):
    proc = subprocess.Popen([daemon.bin, "exec", sandbox["id"], "--", "sh", "-c", FIRST_THEN_GO],
                            env=env_for(daemon.url), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        data, _ = read_until(proc.stdout, b"first\n")
        # The first line is there while the command still waits.
        assert proc.poll() is None, (data, proc.stderr.read())
        assert b"second" not in data
        say_go(api, sandbox["id"])
        rest, _ = read_until(proc.stdout, b"second\n")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert data + rest + out == b"first\nsecond\n"


def test_run_streams_output_live(daemon, api):
    before = {sb["id"] for sb in api.get("/v1/sandboxes").json["sandboxes"]}
    proc = subprocess.Popen([daemon.bin, "run", "--", "sh", "-c",
                             "echo err >&2; " + FIRST_THEN_GO],
                            env=env_for(daemon.url), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        data, _ = read_until(proc.stdout, b"first\n")
        assert proc.poll() is None
        new = {sb["id"] for sb in api.get("/v1/sandboxes").json["sandboxes"]} - before
        assert len(new) == 1, new
        say_go(api, new.pop())
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert data + out == b"first\nsecond\n"
    assert err == b"err\n"


def test_exec_exit_codes(daemon, sandbox):
    sid = sandbox["id"]
    p = cli(daemon, "exec", sid, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert p.returncode == 3, describe(p)
    assert p.stdout == b"out\n" and p.stderr == b"err\n", describe(p)
    p = cli(daemon, "exec", sid, "--", "true")
    assert p.returncode == 0, describe(p)
    p = cli(daemon, "exec", sid, "--", "nosuchcmd")
    assert p.returncode == 127, describe(p)
    assert b"nosuchcmd" in p.stderr, describe(p)
    p = cli(daemon, "exec", sid, "--", "sh", "-c", "kill -TERM $$")
    assert p.returncode == 128 + signal.SIGTERM, describe(p)
    t0 = time.monotonic()
    p = cli(daemon, "exec", "--timeout", "1", sid, "--", "sleep", "30")
    assert p.returncode == 124, describe(p)
    assert b"timed out" in p.stderr, describe(p)
    assert time.monotonic() - t0 < 15
    p = cli(daemon, "exec", "nosuch-sandbox", "--", "true")
    assert p.returncode == 125, describe(p)
    assert p.stderr.startswith(b"warren: "), describe(p)


def test_exec_env_and_cwd(daemon, sandbox):
    p = cli(daemon, "exec", "-e", "A=1", "-w", "/tmp", sandbox["id"], "--", "sh", "-c",
            'echo "$A $(pwd)"')
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"1 /tmp\n", describe(p)


def test_exec_stdin_only_with_i(daemon, sandbox):
    sid = sandbox["id"]
    data = random.Random(11).randbytes(1 << 20)
    p = cli(daemon, "exec", "-i", sid, "--", "sha256sum", input=data)
    assert p.returncode == 0, describe(p)
    assert p.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest(), describe(p)
    # The same bytes back through cat: exact.
    p = cli(daemon, "exec", "-i", sid, "--", "cat", input=data)
    assert p.returncode == 0, describe(p)
    assert p.stdout == data
    # Without -i the command's stdin is empty.
    p = cli(daemon, "exec", sid, "--", "wc", "-c", input=data)
    assert p.returncode == 0, describe(p)
    assert p.stdout.strip() == b"0", describe(p)


def test_exec_stdin_is_forwarded_live(daemon, sandbox):
    proc = subprocess.Popen([daemon.bin, "exec", "-i", sandbox["id"], "--", "cat"],
                            env=env_for(daemon.url), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        data, _ = read_until(proc.stdout, b"hello\n")
        assert proc.poll() is None
        proc.stdin.write(b"again\n")
        proc.stdin.close()  # eof: cat ends
        proc.stdin = None
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert data + out == b"hello\nagain\n"


def test_exec_binary_output_exact(daemon, sandbox):
    p = cli(daemon, "exec", sandbox["id"], "--", "printf", "\\377\\376\\000x\\300")
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"\xff\xfe\x00x\xc0", describe(p)
    # Every byte value, on both streams.
    script = ("i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done;"
              " printf '\\351' >&2")
    p = cli(daemon, "exec", sandbox["id"], "--", "sh", "-c", script)
    assert p.returncode == 0, describe(p)
    assert p.stdout == bytes(range(256)), describe(p)
    assert p.stderr == b"\xe9", describe(p)


def test_exec_large_output(daemon, sandbox):
    # More than the daemon's default ring (4 MiB): lossless streaming loses nothing.
    p = cli(daemon, "exec", sandbox["id"], "--", "sh", "-c",
            "head -c 6000000 /dev/zero | tr '\\0' 'a'; echo end")
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"a" * 6000000 + b"end\n"
    assert p.stderr == b"", describe(p)


def test_exec_json_is_one_shot(daemon, sandbox):
    p = cli(daemon, "exec", "--json", sandbox["id"], "--", "sh", "-c", "echo hi; exit 2")
    assert p.returncode == 2, describe(p)
    res = json.loads(p.stdout)
    assert res["stdout"] == "hi\n" and res["exit_code"] == 2


def test_exec_reconnects_without_loss_or_duplicates(daemon, sandbox):
    proxy = DroppingProxy(daemon, drops=3, after=1500)
    try:
        script = "i=1; while [ $i -le 80 ]; do echo line$i; echo e$i >&2; sleep 0.02; i=$((i+1)); done; exit 5"
        p = cli(daemon, "exec", sandbox["id"], "--", "sh", "-c", script, url=proxy.url)
    finally:
        proxy.close()
    assert proxy.dropped == 3, (proxy.dropped, describe(p))
    assert proxy.upgrades == 4, proxy.upgrades
    assert p.returncode == 5, describe(p)
    assert p.stdout == b"".join(b"line%d\n" % i for i in range(1, 81)), describe(p)
    assert p.stderr == b"".join(b"e%d\n" % i for i in range(1, 81)), describe(p)


def test_exec_gives_up_after_5_reconnections(daemon, api, sandbox):
    # The proxy cuts the first connection and then refuses every new one.
    proxy = DroppingProxy(daemon, drops=1, after=200, refuse_after_drops=True)
    try:
        t0 = time.monotonic()
        p = cli(daemon, "exec", sandbox["id"], "--", "sh", "-c",
                "echo start; sleep 30", url=proxy.url)
        took = time.monotonic() - t0
    finally:
        proxy.close()
    assert p.returncode == 125, describe(p)
    assert b"reconnect" in p.stderr, describe(p)
    assert took < 20, took


def test_exec_interrupted_kills_the_command(daemon, api, sandbox):
    sid = sandbox["id"]
    before = {c["command_id"] for c in commands(api, sid)}
    proc = subprocess.Popen([daemon.bin, "exec", sid, "--", "sleep", "60"],
                            env=env_for(daemon.url), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=sigint_default)
    try:
        new = wait_for(lambda: [c for c in commands(api, sid)
                                if c["command_id"] not in before and c["state"] == "running"],
                       what="the command to run")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGINT, (proc.returncode, out, err)
    cid = new[0]["command_id"]
    st = wait_for(lambda: (lambda c: c if c["state"] != "running" else None)(
        command(api, sid, cid)), what="the command to end")
    assert st["signal"] == 9, st


def test_exec_closed_stdout_kills_the_command(daemon, api, sandbox):
    sid = sandbox["id"]
    before = {c["command_id"] for c in commands(api, sid)}
    proc = subprocess.Popen([daemon.bin, "exec", sid, "--", "yes"], env=env_for(daemon.url),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        read_until(proc.stdout, b"y\n")
        proc.stdout.close()
        proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGPIPE, (proc.returncode, err)
    new = [c for c in commands(api, sid) if c["command_id"] not in before]
    assert len(new) == 1, new
    wait_for(lambda: command(api, sid, new[0]["command_id"])["state"] != "running",
             what="`yes` to be killed")


# ---------------------------------------------------------------------------------------------
# start / commands / logs


def test_start_commands_logs(daemon, api, sandbox):
    sid = sandbox["id"]
    script = ("for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 1; done; "
              "printf '\\377\\000'; exit 7")
    p = cli(daemon, "start", sid, "--", "sh", "-c", script)
    assert p.returncode == 0, describe(p)
    cid = p.stdout.decode().strip()
    assert cid.startswith("cmd-"), describe(p)
    wait_for(lambda: command(api, sid, cid)["stdout_bytes"] >= 5, what="first output")

    p = cli(daemon, "commands", sid)
    assert p.returncode == 0, describe(p)
    lines = p.stdout.decode().splitlines()
    assert lines[0].split()[:4] == ["COMMAND", "ID", "STATE", "EXIT"], describe(p)
    row = [l for l in lines[1:] if l.startswith(cid)]
    assert row and row[0].split()[1] == "running", describe(p)
    assert "sh -c" in row[0], describe(p)

    p = cli(daemon, "commands", "-q", sid)
    assert cid in p.stdout.decode().split(), describe(p)

    # Without -f: what is there now, then it returns (the command still runs).
    t0 = time.monotonic()
    p = cli(daemon, "logs", sid, cid)
    assert p.returncode == 0, describe(p)
    assert time.monotonic() - t0 < 2.5
    assert p.stdout.startswith(b"out1\n") and b"out3" not in p.stdout, describe(p)
    assert p.stderr.startswith(b"err1\n"), describe(p)
    assert command(api, sid, cid)["state"] == "running"

    # With -f: everything, until the command ends.
    p = cli(daemon, "logs", "-f", sid, cid)
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"out1\nout2\nout3\n\xff\x00", describe(p)
    assert p.stderr == b"err1\nerr2\nerr3\n", describe(p)
    st = command(api, sid, cid)
    assert st["state"] == "exited" and st["exit_code"] == 7, st

    # After the end, without -f: the whole output.
    p = cli(daemon, "logs", sid, cid)
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"out1\nout2\nout3\n\xff\x00", describe(p)
    assert p.stderr == b"err1\nerr2\nerr3\n", describe(p)

    p = cli(daemon, "commands", "--json", sid)
    assert p.returncode == 0, describe(p)
    listed = {c["command_id"]: c for c in json.loads(p.stdout)}
    assert listed[cid]["exit_code"] == 7 and listed[cid]["state"] == "exited", listed
    p = cli(daemon, "commands", sid)
    row = [l for l in p.stdout.decode().splitlines() if l.startswith(cid)]
    assert row and row[0].split()[1:3] == ["exited", "7"], describe(p)


def test_exec_detach_and_stdin(daemon, api, sandbox):
    sid = sandbox["id"]
    p = cli(daemon, "exec", "-d", sid, "--", "sh", "-c", "echo detached; cat")
    assert p.returncode == 0, describe(p)
    cid = p.stdout.decode().strip()
    # Its stdin is empty by default: cat ends at once.
    st = wait_for(lambda: (lambda c: c if c["state"] != "running" else None)(
        command(api, sid, cid)), what="the command to end")
    assert st["exit_code"] == 0
    p = cli(daemon, "logs", sid, cid)
    assert p.stdout == b"detached\n", describe(p)

    p = cli(daemon, "start", "-i", sid, "--", "tr", "a-z", "A-Z", input=b"shout\n")
    assert p.returncode == 0, describe(p)
    cid = p.stdout.decode().strip()
    p = cli(daemon, "logs", "-f", sid, cid)
    assert p.stdout == b"SHOUT\n", describe(p)

    p = cli(daemon, "start", "--json", sid, "--", "true")
    assert p.returncode == 0, describe(p)
    assert json.loads(p.stdout)["command_id"].startswith("cmd-")


def test_logs_follow_reconnects(daemon, api, sandbox):
    sid = sandbox["id"]
    script = "i=1; while [ $i -le 60 ]; do echo line$i; sleep 0.03; i=$((i+1)); done"
    p = cli(daemon, "start", sid, "--", "sh", "-c", script)
    assert p.returncode == 0, describe(p)
    cid = p.stdout.decode().strip()
    proxy = DroppingProxy(daemon, drops=2, after=600)
    try:
        p = cli(daemon, "logs", "-f", sid, cid, url=proxy.url)
    finally:
        proxy.close()
    assert proxy.dropped == 2, (proxy.dropped, describe(p))
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"".join(b"line%d\n" % i for i in range(1, 61)), describe(p)


def test_logs_and_commands_errors(daemon, sandbox):
    p = cli(daemon, "logs", sandbox["id"], "cmd-nosuch")
    assert p.returncode == 1, describe(p)
    assert p.stderr.startswith(b"warren: "), describe(p)
    p = cli(daemon, "commands", "nosuch-sandbox")
    assert p.returncode == 1, describe(p)
    p = cli(daemon, "logs", "nosuch-sandbox")  # a sandbox's log (test_sandbox_logs.py)
    assert p.returncode == 1 and b"not found" in p.stderr, describe(p)
    p = cli(daemon, "start", "nosuch-sandbox")  # restarts a stopped sandbox (test_stop_start.py)
    assert p.returncode == 1 and b"not found" in p.stderr, describe(p)
    for args in (["logs"], ["logs", "--tail", "1", "x", "cmd-x"], ["commands"], ["attach", "x"],
                 ["exec", "-t", "--json", "x", "--", "true"], ["exec", "-d", "-t", "x", "true"]):
        p = cli(daemon, *args)
        assert p.returncode == 2, f"{args}: {describe(p)}"


def test_help_new_commands(daemon):
    for cmd in ("start", "commands", "logs", "attach"):
        p = cli(daemon, cmd, "--help")
        assert p.returncode == 0, describe(p)
        assert p.stdout.startswith(b"Usage: warren " + cmd.encode()), describe(p)
    p = cli(daemon, "help", "attach")
    assert b"Ctrl-]" in p.stdout, describe(p)
    p = cli(daemon, "help")
    for cmd in (b"start", b"commands", b"logs", b"attach"):
        assert cmd in p.stdout


# ---------------------------------------------------------------------------------------------
# terminals: -t, -it, attach


def terminals_supported(api, sid):
    """Terminals are a recent daemon feature: skip (pending) where POST .../terminals is not
    there yet."""
    r = api.post(f"/v1/sandboxes/{sid}/terminals", {"argv": ["true"]})
    if r.status == 201:
        api.delete(f"/v1/sandboxes/{sid}/terminals/{r.json['terminal_id']}")
        return True
    return False


@pytest.fixture
def tty_sandbox(api, sandbox):
    if not terminals_supported(api, sandbox["id"]):
        pytest.skip("the daemon has no terminals endpoint yet")
    return sandbox


class PtyCli:
    """The CLI under a pseudo-terminal: `sh -c 'warren ARGS; report'` on a pty of size
    rows x cols. The report (after the CLI exits) gives its exit status and whether the terminal
    is back in canonical mode."""

    def __init__(self, daemon, args, rows=30, cols=100):
        cmd = (" ".join(shlex.quote(a) for a in [daemon.bin, *args]) +
               "; rc=$?; echo; stty -a | tr ' ;' '\\n\\n' | grep -x -- '-\\{0,1\\}icanon';"
               " echo RC=$rc")
        pid, fd = pty.fork()
        if pid == 0:
            os.environ["WARREN_URL"] = daemon.url
            try:
                os.execv("/bin/sh", ["sh", "-c", cmd])
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.resize(rows, cols)
        self.out = b""

    def resize(self, rows, cols):
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def read_until(self, needle, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen within {timeout}s: {self.out[-3000:]!r}")
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                try:
                    d = os.read(self.fd, 65536)
                except OSError:
                    d = b""
                if not d:
                    raise AssertionError(f"EOF before {needle!r}: {self.out[-3000:]!r}")
                self.out += d
        return self.out

    def write(self, data):
        os.write(self.fd, data)

    def finish(self, timeout=WAIT_S):
        """Wait for the report; returns (exit status of the CLI, canonical mode restored)."""
        self.read_until(b"RC=", timeout)
        self.read_until(b"\n")
        tail = self.out[self.out.rindex(b"RC="):]
        rc = int(tail[3:].split()[0])
        canon = b"\nicanon" in self.out.replace(b"\r", b"")
        self.close()
        return rc, canon

    def close(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except OSError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def test_run_it(daemon, api):
    r = api.post("/v1/sandboxes", {})
    assert r.status == 201
    ok = terminals_supported(api, r.json["id"])
    api.remove(r.json["id"])
    if not ok:
        pytest.skip("the daemon has no terminals endpoint yet")
    before = {sb["id"] for sb in api.get("/v1/sandboxes").json["sandboxes"]}
    t = PtyCli(daemon, ["run", "-it", "-e", "PS1=rdy$ ", "--", "bash", "--norc"])
    try:
        t.read_until(b"rdy$")
        t.write(b"stty size; echo h''i; exit 3\r")
        t.read_until(b"hi")
        rc, canon = t.finish()
    finally:
        t.close()
    assert rc == 3, t.out
    assert canon, f"the local terminal was left in raw mode: {t.out[-500:]!r}"
    assert b"30 100" in t.out, t.out  # the terminal got the local window size
    after = {sb["id"] for sb in api.get("/v1/sandboxes").json["sandboxes"]}
    assert after == before


def test_exec_it_resize_and_cleanup(daemon, api, tty_sandbox):
    sid = tty_sandbox["id"]
    t = PtyCli(daemon, ["exec", "-it", "-e", "PS1=rdy$ ", sid, "--", "bash", "--norc"], rows=30, cols=100)
    try:
        t.read_until(b"rdy$")
        t.resize(40, 120)  # SIGWINCH to the CLI: a resize message
        tries = []

        def resized():
            # The resize travels apart from the keys: ask until the new size has arrived.
            start = len(t.out)
            tries.append(1)
            t.write(b"stty size; echo sz-$((%d+0))\r" % len(tries))
            t.read_until(b"sz-%d\r" % len(tries))
            return b"40 120" in t.out[start:]

        wait_for(resized, interval=0.1, what="stty size to say 40 120")
        # Ctrl-C goes to the program (raw mode), not to the CLI.
        t.write(b"sleep 30\r")
        wait_for(lambda: exec_(api, sid, argv=["pgrep", "-x", "sleep"])["exit_code"] == 0,
                 what="sleep 30 to run in the terminal")
        t.write(b"\x03")
        t.read_until(b"^C")
        t.write(b"echo h''i; exit 3\r")
        rc, canon = t.finish()
    finally:
        t.close()
    assert rc == 3, t.out
    assert canon, t.out[-500:]
    assert b"hi" in t.out
    # The terminal the CLI created is gone.
    r = api.get(f"/v1/sandboxes/{sid}/terminals")
    assert r.status == 200 and r.json["terminals"] == [], r


def test_exec_it_detach_and_attach(daemon, api, tty_sandbox):
    sid = tty_sandbox["id"]
    t = PtyCli(daemon, ["exec", "-it", "-e", "PS1=rdy$ ", sid, "--", "bash", "--norc"])
    try:
        t.read_until(b"rdy$")
        t.write(b"export MARK=kept; echo m''k\r")
        t.read_until(b"mk")
        t.write(b"\x1dd")  # Ctrl-] d
        rc, canon = t.finish()
    finally:
        t.close()
    assert rc == 0, t.out
    assert canon, t.out[-500:]
    assert b"detached" in t.out and b"warren attach" in t.out, t.out
    terms = api.get(f"/v1/sandboxes/{sid}/terminals").json["terminals"]
    assert len(terms) == 1 and terms[0]["state"] == "running", terms
    tid = terms[0]["terminal_id"]

    t = PtyCli(daemon, ["attach", sid, tid])
    try:
        t.read_until(b"rdy$")
        t.write(b"echo got-$MARK; exit 4\r")
        t.read_until(b"got-kept")
        rc, canon = t.finish()
    finally:
        t.close()
    assert rc == 4, t.out
    assert canon, t.out[-500:]


def test_exec_t_without_a_tty(daemon, tty_sandbox):
    # -t with stdin not a terminal: no raw mode, output still comes from the terminal.
    p = cli(daemon, "exec", "-t", tty_sandbox["id"], "--", "sh", "-c",
            "echo on-tty; [ -t 1 ] && echo is-a-tty; exit 6")
    assert p.returncode == 6, describe(p)
    assert b"on-tty" in p.stdout and b"is-a-tty" in p.stdout, describe(p)


def test_exec_it_sigterm_restores_the_terminal(daemon, api, tty_sandbox):
    sid = tty_sandbox["id"]
    t = PtyCli(daemon, ["exec", "-it", "-e", "PS1=rdy$ ", sid, "--", "bash", "--norc"])
    try:
        t.read_until(b"rdy$")
        # The CLI is the only child of the pty's shell.
        out = subprocess.run(["pgrep", "-P", str(t.pid)], capture_output=True, text=True)
        pids = [int(x) for x in out.stdout.split()]
        assert len(pids) == 1, out
        os.kill(pids[0], signal.SIGTERM)
        rc, canon = t.finish()
    finally:
        t.close()
    assert rc == 128 + signal.SIGTERM, t.out
    assert canon, t.out[-500:]
    # The terminal it created was hung up and removed.
    wait_for(lambda: api.get(f"/v1/sandboxes/{sid}/terminals").json["terminals"] == [],
             what="the terminal to be removed")


def test_attach_unknown_terminal(daemon, tty_sandbox):
    p = cli(daemon, "attach", tty_sandbox["id"], "term-nosuch")
    assert p.returncode == 125, describe(p)
    assert b"term-nosuch" in p.stderr, describe(p)
