"""A sandbox's log: GET /v1/sandboxes/{id}/logs?tail=N&follow=1 and `warren logs SANDBOX`, the
output of all its commands (detached and exec/ws), stdout and stderr, whole lines in arrival
order."""
import http.client
import os
import select
import socket
import subprocess
import time

from conftest import WAIT_S, WARREN_BIN, wait_for



def start(api, sid, script):
    r = api.post(f"/v1/sandboxes/{sid}/commands", {"argv": ["sh", "-c", script]})
    assert r.status == 201, r
    return r.json["command_id"]


def wait_exit(api, sid, cid):
    def ended():
        c = api.get(f"/v1/sandboxes/{sid}/commands/{cid}").json
        return c if c["state"] != "running" else None
    return wait_for(ended, interval=0.02, what=f"command {cid} to end")


def logs(api, sid, query=""):
    r = api.get(f"/v1/sandboxes/{sid}/logs{query}")
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("text/plain")
    return r.body.decode()


def test_log_has_every_command_in_order_and_tail(api):
    sb = api.create()
    sid = sb["id"]
    assert logs(api, sid) == ""
    wait_exit(api, sid, start(api, sid, "echo one; echo two >&2"))
    wait_exit(api, sid, start(api, sid, "printf 'three\\nfour'"))  # no final newline
    assert logs(api, sid) == "one\ntwo\nthree\nfour"
    assert logs(api, sid, "?tail=2") == "three\nfour"
    assert logs(api, sid, "?tail=3") == "two\nthree\nfour"
    assert logs(api, sid, "?tail=100") == "one\ntwo\nthree\nfour"
    assert logs(api, sid, "?tail=0") == ""
    for bad in ("?tail=-1", "?tail=x", "?follow=2", "?bogus=1"):
        assert api.get(f"/v1/sandboxes/{sid}/logs{bad}").status == 400, bad
    assert api.get("/v1/sandboxes/sb-nope/logs").status == 404


def test_lines_of_commands_running_at_once_stay_whole(api):
    sb = api.create()
    sid = sb["id"]
    # Each writes its line in two pieces with a pause between: the log must not cut them.
    script = "for i in 1 2 3 4 5; do printf '%s-' $0; sleep 0.01; echo $i; done"
    cids = [api.post(f"/v1/sandboxes/{sid}/commands",
                     {"argv": ["sh", "-c", script, name]}).json["command_id"]
            for name in ("a", "b")]
    for cid in cids:
        wait_exit(api, sid, cid)
    lines = logs(api, sid).splitlines()
    assert sorted(lines) == sorted([f"{n}-{i}" for n in "ab" for i in range(1, 6)]), lines
    assert [l for l in lines if l.startswith("a")] == [f"a-{i}" for i in range(1, 6)]


def read_until(sock_file, want, deadline):
    data = b""
    while want not in data:
        left = deadline - time.monotonic()
        assert left > 0, data
        r, _, _ = select.select([sock_file], [], [], left)
        if not r:
            continue
        chunk = os.read(sock_file.fileno(), 65536)
        assert chunk, data
        data += chunk
    return data


def test_follow_streams_new_output_and_ends_on_delete(api, daemon):
    sb = api.create()
    sid = sb["id"]
    wait_exit(api, sid, start(api, sid, "echo before"))
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT_S)
    s.sendall(f"GET /v1/sandboxes/{sid}/logs?follow=1&tail=1 HTTP/1.1\r\n"
              f"Host: x\r\n\r\n".encode())
    deadline = time.monotonic() + WAIT_S
    data = read_until(s, b"before\n", deadline)
    assert data.startswith(b"HTTP/1.1 200"), data
    assert b"chunked" in data.lower()
    start(api, sid, "echo during; echo more >&2")
    data += read_until(s, b"more\n", deadline)
    assert data.index(b"during\n") < data.index(b"more\n")
    # Deleting the sandbox ends the answer (the terminating chunk).
    api.remove(sid)
    data += read_until(s, b"0\r\n\r\n", deadline)
    assert data.endswith(b"\r\n0\r\n\r\n"), data
    s.close()


def test_follow_client_going_away_is_forgotten(api, daemon):
    sb = api.create()
    sid = sb["id"]
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=WAIT_S)
        conn.request("GET", f"/v1/sandboxes/{sid}/logs?follow=1")
        assert conn.getresponse().status == 200
        conn.close()
    # The daemon still writes the log (to no one) and serves it.
    wait_exit(api, sid, start(api, sid, "echo still"))
    assert logs(api, sid) == "still\n"


def cli(daemon, *args, timeout=WAIT_S):
    return subprocess.run([WARREN_BIN, *args], capture_output=True, timeout=timeout,
                          env={**os.environ, "WARREN_URL": daemon.url})


def test_cli_logs_tail_and_follow(api, daemon):
    sb = api.create()
    sid = sb["id"]
    wait_exit(api, sid, start(api, sid, "seq 1 5"))
    r = cli(daemon, "logs", sid)
    assert r.returncode == 0 and r.stdout == b"1\n2\n3\n4\n5\n", r
    r = cli(daemon, "logs", "--tail", "2", sb["name"])
    assert r.returncode == 0 and r.stdout == b"4\n5\n", r
    r = cli(daemon, "logs", "--tail", "x", sid)
    assert r.returncode != 0 and b"--tail" in r.stderr, r
    r = cli(daemon, "logs", "sb-nope")
    assert r.returncode != 0 and b"not" in r.stderr.lower(), r
    # -f prints new output as it comes, and ends when the sandbox goes.
    p = subprocess.Popen([WARREN_BIN, "logs", "-f", "--tail", "1", sid], stdout=subprocess.PIPE,
                         env={**os.environ, "WARREN_URL": daemon.url})
    try:
        deadline = time.monotonic() + WAIT_S
        out = read_until(p.stdout, b"5\n", deadline)
        assert out == b"5\n", out
        start(api, sid, "echo later")
        out += read_until(p.stdout, b"later\n", deadline)
        api.remove(sid)
        assert p.wait(timeout=WAIT_S) == 0
        assert out + p.stdout.read() == b"5\nlater\n"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
