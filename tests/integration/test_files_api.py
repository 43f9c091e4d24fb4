"""Files API: GET/PUT/DELETE files (stat, Range, HEAD), files/list, GET/PUT archive
(docs/API.md, "Files") — round trips, ownership, atomic replacement, errors, paths and archives
that try to reach the host, large streamed transfers with a bounded daemon RSS, and clients
that go away in the middle of a transfer.

Paths are resolved as the sandbox's root sees them. The "host" template's /etc is a copy of the
host's (so /etc/passwd reads the same on both sides); what tells them apart is /etc/hostname (a
link to the sandbox's own name inside), /etc/shadow (absent inside) and a random secret file
created in the host's /root for the test (the sandbox's /root is its own, empty directory).
"""

import hashlib
import http.client
import io
import json
import os
import random
import re
import select
import socket
import tarfile
import threading
import time
import urllib.parse

import pytest

from conftest import WAIT_S, Api, exec_, sh

MIB = 1 << 20
# How much the daemon's RSS may grow while it moves 1 GiB: a streamed transfer holds a few chunks,
# a buffered one would hold the file. Growth, not the absolute RSS: an ASan build starts larger.
RSS_GROWTH_LIMIT = 48 * MIB


def rnd(n=12):
    return "%0*x" % (n, random.getrandbits(4 * n))


def q(sid, what="files", **params):
    """/v1/sandboxes/{sid}/{what}?k=v... (values percent-encoded)."""
    base = f"/v1/sandboxes/{urllib.parse.quote(sid, safe='')}/{what}"
    return base + ("?" + urllib.parse.urlencode(params) if params else "")


def put(api, sid, path, data, **params):
    return api.request("PUT", q(sid, path=path, **params), body=data)


def get(api, sid, path, headers=None, **params):
    return api.get(q(sid, path=path, **params), headers=headers)


def stat(api, sid, path, **params):
    r = get(api, sid, path, stat=1, **params)
    return r


def listing(api, sid, path, **params):
    return api.get(q(sid, "files/list", path=path, **params))


def names(r):
    return sorted(e["path"] for e in r.json["entries"])


def in_sb(api, sid, script):
    """Runs script in the sandbox; returns stdout (asserts exit 0)."""
    res = sh(api, sid, script)
    assert res["exit_code"] == 0, res
    return res["stdout"]


def host_uid_of_root(api, sid):
    """Host uid of the sandbox's root user, from its uid_map."""
    res = exec_(api, sid, argv=["cat", "/proc/self/uid_map"])
    assert res["exit_code"] == 0, res
    for line in res["stdout"].splitlines():
        inside, outside, _count = line.split()
        if inside == "0":
            return int(outside)
    raise AssertionError(f"no mapping for uid 0: {res['stdout']!r}")


def workspace_on_host(daemon, sid):
    return daemon.sandbox_path(sid, "workspace")


@pytest.fixture
def host_secret():
    """A file in the host's /root that no files API path may reach: (name, path, content)."""
    name = f"warren-host-secret-{rnd()}"
    path = os.path.join("/root", name)
    content = f"HOST-SECRET-{rnd(24)}\n".encode()
    with open(path, "wb") as f:
        f.write(content)
    yield name, path, content
    os.unlink(path)


def read_host(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


# ---------------------------------------------------------------------------------------------
# streaming helpers (http.client with bodies sent and read in pieces)


def connect(daemon, timeout=120):
    return http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout)


def det_chunks(total, seed, chunk=MIB):
    """Deterministic pseudo-random data, `total` bytes in `chunk`-sized pieces: a base block of
    sha256 outputs of the seed, each piece stamped with its index (so no two are equal)."""
    base = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
                    for i in range(chunk // 32))
    sent, k = 0, 0
    while sent < total:
        piece = (k.to_bytes(8, "big") + base[8:])[:min(chunk, total - sent)]
        yield piece
        sent += len(piece)
        k += 1


def stream_put(daemon, path, chunks, length=None, chunked=False, headers=None, timeout=300):
    """PUT `path` with the body taken from the iterable `chunks` (Content-Length `length`, or
    chunked coding). Stops sending as soon as the server answers (early rejection). Returns
    (status, parsed JSON or raw body, sha256 of what was sent, bytes sent)."""
    conn = connect(daemon, timeout)
    h = hashlib.sha256()
    sent = 0
    try:
        conn.putrequest("PUT", path)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(length))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        sock = conn.sock
        try:
            for c in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # an answer (or a close) before the body was complete
                h.update(c)
                if chunked:
                    conn.send(b"%x\r\n" % len(c) + c + b"\r\n")
                else:
                    conn.send(c)
                sent += len(c)
            else:
                if chunked:
                    conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer should be there
        r = conn.getresponse()
        body = r.read()
        try:
            body = json.loads(body)
        except ValueError:
            pass
        return r.status, body, h.hexdigest(), sent
    finally:
        conn.close()


def tcp_buffer_max(name):
    """The largest buffer TCP autotuning may give a socket (the last of net.ipv4.tcp_[rw]mem)."""
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


def stream_get(daemon, path, headers=None, timeout=300, piece=MIB):
    """GET `path`, reading the body in pieces. Returns (status, headers, sha256, length)."""
    conn = connect(daemon, timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        h = hashlib.sha256()
        n = 0
        while True:
            b = r.read(piece)
            if not b:
                break
            h.update(b)
            n += len(b)
        return r.status, r.headers, h.hexdigest(), n
    finally:
        conn.close()


class RssSampler:
    """Samples VmRSS of a process every `period` s in a thread; `.max` and `.growth` (over the
    first sample) in bytes."""

    def __init__(self, pid, period=0.2):
        self.pid, self.period = pid, period
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _rss(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self._rss())
            self._stop.wait(self.period)

    def __enter__(self):
        self.samples.append(self._rss())
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.samples.append(self._rss())

    @property
    def growth(self):
        return self.max - self.samples[0]

    @property
    def max(self):
        return max(self.samples)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------------------------
# happy paths


def test_put_get_round_trip(api, sandbox):
    sid = sandbox["id"]
    data = bytes(range(256)) * 300 + b"\0tail\r\n"
    r = put(api, sid, "/workspace/rt.bin", data)
    assert r.status == 200, r
    assert r.json == {"path": "/workspace/rt.bin", "size": len(data)}, r
    r = get(api, sid, "/workspace/rt.bin")
    assert r.status == 200, r
    assert r.body == data
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert int(r.headers["Content-Length"]) == len(data)
    # What the sandbox sees is the same file.
    res = exec_(api, sid, argv=["sha256sum", "/workspace/rt.bin"])
    assert res["stdout"].split()[0] == hashlib.sha256(data).hexdigest(), res
    # Relative paths start at the sandbox's root; an empty file is fine.
    r = put(api, sid, "workspace/empty", b"")
    assert r.status == 200 and r.json["size"] == 0, r
    r = get(api, sid, "/workspace/empty")
    assert r.status == 200 and r.body == b"" and r.headers["Content-Length"] == "0", r


def test_put_replaces_and_get_follows_symlink(api, sandbox):
    sid = sandbox["id"]
    assert put(api, sid, "/workspace/f", b"one").status == 200
    ino1 = in_sb(api, sid, "stat -c %i /workspace/f").strip()
    assert put(api, sid, "/workspace/f", b"two, longer").status == 200
    assert get(api, sid, "/workspace/f").body == b"two, longer"
    # Replaced by rename: a new inode, and nothing left over in the directory.
    assert in_sb(api, sid, "stat -c %i /workspace/f").strip() != ino1
    assert in_sb(api, sid, "ls -A /workspace").split() == ["f"]
    # A symlink at the path: GET reads its target, PUT writes its target and keeps the link.
    in_sb(api, sid, "mkdir /workspace/t && ln -s t/target /workspace/link")
    r = put(api, sid, "/workspace/link", b"through the link")
    assert r.status == 200, r
    assert in_sb(api, sid, "readlink /workspace/link").strip() == "t/target"
    assert in_sb(api, sid, "cat /workspace/t/target") == "through the link"
    assert get(api, sid, "/workspace/link").body == b"through the link"


def test_put_mode_and_mkdir(api, sandbox):
    sid = sandbox["id"]
    r = put(api, sid, "/workspace/a/b/c.txt", b"x")
    assert r.status == 404, r
    assert r.error_code == "not_found", r
    r = put(api, sid, "/workspace/a/b/c.txt", b"deep", mkdir=1, mode="0600")
    assert r.status == 200, r
    out = in_sb(api, sid, "stat -c '%a %F' /workspace/a /workspace/a/b /workspace/a/b/c.txt")
    assert out.splitlines() == ["755 directory", "755 directory", "600 regular file"], out
    r = stat(api, sid, "/workspace/a/b/c.txt")
    assert r.status == 200 and r.json["mode"] == "0600", r
    r = put(api, sid, "/workspace/x.sh", b"#!/bin/sh\necho ran\n", mode="755")
    assert r.status == 200, r
    res = exec_(api, sid, argv=["/workspace/x.sh"])
    assert res["exit_code"] == 0 and res["stdout"] == "ran\n", res
    # Default mode is 0644.
    assert put(api, sid, "/workspace/d.txt", b"d").status == 200
    assert stat(api, sid, "/workspace/d.txt").json["mode"] == "0644"
    for bad in ("999", "abc", "", "0100000"):
        r = put(api, sid, "/workspace/m.txt", b"m", mode=bad)
        assert r.status == 400 and r.error_code == "bad_request", (bad, r)
        assert "mode" in r.error_message, r
    assert get(api, sid, "/workspace/m.txt").status == 404


def test_put_refuses_directory_targets(api, sandbox):
    sid = sandbox["id"]
    in_sb(api, sid, "mkdir -p /workspace/dir/sub")
    for p in ("/workspace/dir", "/workspace/dir/", "/", "/workspace/."):
        r = put(api, sid, p, b"x")
        assert r.status == 400, (p, r)
    assert in_sb(api, sid, "ls -A /workspace/dir") == "sub\n"


def test_ownership_inside_and_on_host(api, daemon, sandbox):
    sid = sandbox["id"]
    uid = host_uid_of_root(api, sid)
    assert uid != 0
    assert put(api, sid, "/workspace/own/deep/f.txt", b"owned", mkdir=1).status == 200
    tgz = make_tar([("arch", "dir"), ("arch/g.txt", b"from an archive")], gz=True)
    assert api.request("PUT", q(sid, "archive", path="/workspace/own"), body=tgz).status == 200
    paths = ["own", "own/deep", "own/deep/f.txt", "own/arch", "own/arch/g.txt"]
    out = in_sb(api, sid, "cd /workspace && stat -c '%u:%g %n' " + " ".join(paths))
    assert out.splitlines() == [f"0:0 {p}" for p in paths], out
    ws = workspace_on_host(daemon, sid)
    for p in paths:
        st = os.lstat(os.path.join(ws, p))
        assert (st.st_uid, st.st_gid) == (uid, uid), (p, st)
    # The temporary file of an upload never shows up as the daemon's (root) file either.
    assert not [n for n in os.listdir(os.path.join(ws, "own")) if n.startswith(".warren-tmp")]


def test_stat(api, sandbox):
    sid = sandbox["id"]
    data = b"stat me\n"
    assert put(api, sid, "/workspace/s.txt", data, mode="0640").status == 200
    in_sb(api, sid, "mkdir /workspace/sd && ln -s s.txt /workspace/sl && mkfifo /workspace/ff")
    r = stat(api, sid, "/workspace/s.txt", sha256=1)
    assert r.status == 200, r
    j = r.json
    assert j["path"] == "/workspace/s.txt" and j["type"] == "file" and j["size"] == len(data), j
    assert j["mode"] == "0640", j
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", j["mtime"]), j
    assert j["sha256"] == hashlib.sha256(data).hexdigest(), j
    assert "sha256" not in stat(api, sid, "/workspace/s.txt").json
    j = stat(api, sid, "/workspace/sd").json
    assert j["type"] == "dir" and j["mode"] == "0755", j
    j = stat(api, sid, "/workspace/sl").json
    assert j["type"] == "symlink" and j["link_target"] == "s.txt", j
    assert stat(api, sid, "/workspace/ff").json["type"] == "other"
    r = stat(api, sid, "/workspace/nope")
    assert r.status == 404 and r.error_code == "not_found", r
    assert stat(api, sid, "/").json["type"] == "dir"


def test_list(api, sandbox):
    sid = sandbox["id"]
    in_sb(api, sid, "cd /workspace && mkdir -p l/a/b && echo 1 > l/one && echo 22 > l/a/two "
                    "&& echo 333 > l/a/b/three && ln -s a l/la")
    r = listing(api, sid, "/workspace/l")
    assert r.status == 200, r
    assert r.json["path"] == "/workspace/l" and r.json["truncated"] is False, r
    assert names(r) == ["a", "la", "one"], r
    by = {e["path"]: e for e in r.json["entries"]}
    assert by["one"]["type"] == "file" and by["one"]["size"] == 2, by
    assert by["a"]["type"] == "dir" and by["la"]["type"] == "symlink", by
    assert by["la"]["link_target"] == "a", by
    for e in r.json["entries"]:
        assert set(e) >= {"path", "type", "size", "mode", "mtime"}, e
    r = listing(api, sid, "/workspace/l", recursive=1)
    assert names(r) == ["a", "a/b", "a/b/three", "a/two", "la", "one"], r
    r = listing(api, sid, "/workspace/l", recursive=1, max_entries=2)
    assert r.status == 200 and len(r.json["entries"]) == 2 and r.json["truncated"] is True, r
    # Without a path: /workspace.
    r = api.get(q(sid, "files/list"))
    assert r.status == 200 and r.json["path"] == "/workspace" and names(r) == ["l"], r
    assert listing(api, sid, "/workspace/nope").status == 404
    for bad in ("0", "x", "-1"):
        r = listing(api, sid, "/workspace/l", max_entries=bad)
        assert r.status == 400, (bad, r)


def test_recursive_list_skips_what_root_cannot_open(api, new_sandbox):
    # A directory of another user of the sandbox (0700) cannot be opened by the files API, which
    # acts as the sandbox's root without capabilities; nor can /proc entries of such a process.
    sid = new_sandbox()["id"]
    in_sb(api, sid, "mkdir -p /workspace/s/mine /workspace/s/theirs && echo x > /workspace/s/f && "
                    "echo y > /workspace/s/theirs/hidden && chown -R 1000:1000 /workspace/s/theirs"
                    " && chmod 700 /workspace/s/theirs")
    r = listing(api, sid, "/workspace/s", recursive=1)
    assert r.status == 200 and names(r) == ["f", "mine", "theirs"], r
    # All of / (with /proc and another user's process in it): it ends, truncated or not.
    in_sb(api, sid, "setpriv --reuid 1000 --regid 1000 --clear-groups sleep 30 & sleep 0.2")
    r = listing(api, sid, "/", recursive=1)
    assert r.status == 200 and r.json["entries"], r


def test_delete(api, sandbox):
    sid = sandbox["id"]
    in_sb(api, sid, "cd /workspace && mkdir -p t/sub e && echo x > t/sub/f && echo y > f "
                    "&& ln -s /etc keep-etc")
    r = api.delete(q(sid, path="/workspace/f"))
    assert r.status == 204 and r.body == b"", r
    assert api.delete(q(sid, path="/workspace/f")).status == 404
    assert api.delete(q(sid, path="/workspace/e")).status == 204
    r = api.delete(q(sid, path="/workspace/t"))
    assert r.status == 409 and r.error_code == "conflict", r
    assert in_sb(api, sid, "ls /workspace/t/sub") == "f\n"
    assert api.delete(q(sid, path="/workspace/t", recursive=1)).status == 204
    # A symlink is removed, never followed.
    assert api.delete(q(sid, path="/workspace/keep-etc", recursive=1)).status == 204
    assert in_sb(api, sid, "ls -A /workspace; test -f /etc/passwd && echo etc-ok") == "etc-ok\n"
    r = api.delete(q(sid, path="/"))
    assert r.status == 409, r


def test_head(api, sandbox):
    sid = sandbox["id"]
    assert put(api, sid, "/workspace/h.txt", b"0123456789").status == 200
    r = api.request("HEAD", q(sid, path="/workspace/h.txt"))
    assert r.status == 200 and r.body == b"", r
    assert r.headers["Content-Length"] == "10", r.headers
    assert r.headers["Accept-Ranges"] == "bytes", r.headers
    r = api.request("HEAD", q(sid, path="/workspace/nope"))
    assert r.status == 404, r


def test_range(api, sandbox):
    sid = sandbox["id"]
    data = bytes(random.getrandbits(8) for _ in range(1000))
    assert put(api, sid, "/workspace/r.bin", data).status == 200

    def rng(h):
        return get(api, sid, "/workspace/r.bin", headers={"Range": h})

    r = rng("bytes=10-19")
    assert r.status == 206 and r.body == data[10:20], r
    assert r.headers["Content-Range"] == "bytes 10-19/1000", r.headers
    assert r.headers["Content-Length"] == "10"
    r = rng("bytes=-100")  # suffix: the last 100 bytes
    assert r.status == 206 and r.body == data[-100:], r
    assert r.headers["Content-Range"] == "bytes 900-999/1000", r.headers
    r = rng("bytes=-5000")  # a suffix longer than the file: all of it
    assert r.status == 206 and r.body == data, r
    r = rng("bytes=990-")  # open-ended
    assert r.status == 206 and r.body == data[990:], r
    assert r.headers["Content-Range"] == "bytes 990-999/1000", r.headers
    r = rng("bytes=995-5000")  # end past the file: clamped
    assert r.status == 206 and r.body == data[995:], r
    r = rng("bytes=999-999")
    assert r.status == 206 and r.body == data[999:], r
    for h in ("bytes=1000-", "bytes=5000-6000", "bytes=-0"):
        r = rng(h)
        assert r.status == 416, (h, r)
        assert r.headers["Content-Range"] == "bytes */1000", (h, r.headers)
        assert data[:16] not in r.body
    r = rng("bytes=0-1,5-6")  # several ranges: the whole file
    assert r.status == 200 and r.body == data, r
    r = rng("items=0-3")  # not bytes: ignored
    assert r.status == 200 and r.body == data, r
    # Range with HEAD.
    r = api.request("HEAD", q(sid, path="/workspace/r.bin"), headers={"Range": "bytes=0-9"})
    assert r.status == 206 and r.body == b"" and r.headers["Content-Length"] == "10", r


def test_archive_get_single_file(api, sandbox):
    sid = sandbox["id"]
    assert put(api, sid, "/workspace/one/solo.txt", b"solo", mkdir=1).status == 200
    r = api.get(q(sid, "archive", path="/workspace/one/solo.txt"))
    assert r.status == 200, r
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:gz") as t:
        assert t.getnames() == ["solo.txt"]
        assert t.extractfile("solo.txt").read() == b"solo"


# ---------------------------------------------------------------------------------------------
# errors


def test_errors(api, sandbox):
    sid = sandbox["id"]
    assert put(api, sid, "/workspace/e.txt", b"e").status == 200
    in_sb(api, sid, "mkdir -p /workspace/full && touch /workspace/full/x")
    cases = [
        # (method, url, status, code)
        ("GET", q(sid), 400, "bad_request"),
        ("GET", q(sid, path=""), 400, "bad_request"),
        ("PUT", q(sid), 400, "bad_request"),
        ("DELETE", q(sid), 400, "bad_request"),
        ("GET", q(sid, path="/workspace/e.txt", bogus=1), 400, "bad_request"),
        ("PUT", q(sid, path="/workspace/e.txt", recursive=1), 400, "bad_request"),
        ("DELETE", q(sid, path="/workspace/e.txt", mode="0644"), 400, "bad_request"),
        ("GET", q(sid, "files/list", path="/workspace", sha256=1), 400, "bad_request"),
        ("GET", q(sid, "archive", path="/workspace", recursive=1), 400, "bad_request"),
        ("GET", q("sb-aaaaaaaaaaaa", path="/workspace/e.txt"), 404, "not_found"),
        ("PUT", q("no-such-sandbox", path="/workspace/e.txt"), 404, "not_found"),
        ("DELETE", q("no-such-sandbox", path="/workspace/e.txt"), 404, "not_found"),
        ("GET", q("no-such-sandbox", "files/list"), 404, "not_found"),
        ("GET", q("no-such-sandbox", "archive"), 404, "not_found"),
        ("PUT", q("no-such-sandbox", "archive"), 404, "not_found"),
        ("GET", q(sid, path="/workspace/missing"), 404, "not_found"),
        ("GET", q(sid, path="/workspace/missing/deeper"), 404, "not_found"),
        ("GET", q(sid, path="/workspace/e.txt/below"), 404, "not_found"),
        ("GET", q(sid, path="/workspace"), 400, "bad_request"),
        ("GET", q(sid, path="/"), 400, "bad_request"),
        ("GET", q(sid, path="/dev/null"), 400, "bad_request"),  # not a regular file
        ("DELETE", q(sid, path="/workspace/full"), 409, "conflict"),
        ("DELETE", q(sid, path="/workspace/missing"), 404, "not_found"),
    ]
    for method, url, status, code in cases:
        r = api.request(method, url, body=b"x" if method == "PUT" else None)
        assert (r.status, r.error_code) == (status, code), (method, url, r)
        assert r.error_message, (method, url, r)
    # Unknown parameters are named in the message.
    r = get(api, sid, "/workspace/e.txt", bogus=1)
    assert "bogus" in r.error_message, r
    # Nothing of the failed PUTs was written.
    assert in_sb(api, sid, "cat /workspace/e.txt; ls -A /workspace") == "ee.txt\nfull\n"
    # A sandbox being deleted is gone for the files API too.
    r = api.post("/v1/sandboxes", {})
    gone = r.json["id"]
    api.remove(gone)
    assert get(api, gone, "/workspace/x").status == 404


# ---------------------------------------------------------------------------------------------
# atomic replacement


def test_concurrent_readers_never_see_a_partial_file(api, daemon, sandbox):
    sid = sandbox["id"]
    size = MIB
    versions = [bytes([65 + i]) * size for i in range(4)]  # AAAA..., BBBB..., ...
    assert put(api, sid, "/workspace/atomic.bin", versions[0]).status == 200
    stop = threading.Event()
    bad, seen, errors = [], {}, []
    lock = threading.Lock()

    def reader():
        try:
            while not stop.is_set():
                conn = connect(daemon, 30)
                conn.request("GET", q(sid, path="/workspace/atomic.bin"))
                r = conn.getresponse()
                body = r.read()
                conn.close()
                with lock:
                    if r.status != 200 or len(body) != size or body not in versions:
                        bad.append((r.status, len(body), body[:8], body[-8:]))
                    else:
                        seen[body[:1]] = seen.get(body[:1], 0) + 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    def sandbox_reader():
        # A reader inside the sandbox too: sha256 of every version it sees must be a known one.
        script = ("end=$(($(date +%s)+4)); while [ $(date +%s) -lt $end ]; do "
                  "sha256sum /workspace/atomic.bin; done | sort | uniq -c")
        res = sh(api, sid, script, timeout_s=30)
        with lock:
            seen["inside"] = res["stdout"]

    threads = [threading.Thread(target=reader) for _ in range(3)]
    threads.append(threading.Thread(target=sandbox_reader))
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 3.5
        n = 0
        while time.monotonic() < deadline:
            n += 1
            r = put(api, sid, "/workspace/atomic.bin", versions[n % len(versions)])
            assert r.status == 200 and r.json["size"] == size, r
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert not bad, f"partial or wrong files seen: {bad[:5]}"
    assert n >= 4, n
    readers_saw = [k for k in seen if k != "inside"]
    assert sum(seen[k] for k in readers_saw) >= 10, seen
    assert len(readers_saw) >= 2, f"readers never saw a replacement: {seen}"
    known = {hashlib.sha256(v).hexdigest() for v in versions}
    inside = [l.split() for l in seen["inside"].splitlines()]
    assert inside, seen
    for count, digest, _name in inside:
        assert digest in known, f"the sandbox saw a partial file: {seen['inside']}"
    assert in_sb(api, sid, "ls -A /workspace") == "atomic.bin\n"


# ---------------------------------------------------------------------------------------------
# paths that try to leave the sandbox


def test_dotdot_and_absolute_paths_stay_in_the_sandbox(api, new_sandbox):
    name = f"files-{rnd(8)}"
    sb = new_sandbox(name=name)
    sid = sb["id"]
    host_hostname = read_host("/etc/hostname")
    assert name.encode() not in host_hostname
    inside_passwd = exec_(api, sid, argv=["cat", "/etc/passwd"])["stdout"].encode()
    for p in ("../../etc/passwd", "/etc/passwd", "/workspace/../../../../etc/passwd",
              "../../../../../../../../etc/passwd", "//etc//passwd", "/./etc/./passwd"):
        r = get(api, sid, p)
        assert r.status == 200 and r.body == inside_passwd, (p, r)
    for p in ("../../etc/hostname", "/etc/hostname", "/workspace/../../etc/hostname"):
        r = get(api, sid, p)
        assert r.status == 200, (p, r)
        assert r.body.strip() == name.encode(), (p, r.body)
        assert r.body != host_hostname
    # stat and list see the sandbox's tree as well: its /etc is not the host's.
    r = listing(api, sid, "../../etc")
    assert r.status == 200, r
    assert "shadow" not in names(r) and "passwd" in names(r), names(r)
    assert os.path.exists("/etc/shadow")
    r = stat(api, sid, "../../etc/hostname")
    assert r.json["type"] == "symlink", r


def test_host_file_unreachable(api, sandbox, host_secret):
    sid = sandbox["id"]
    name, path, secret = host_secret
    in_sb(api, sid, f"""cd /workspace
        ln -s /root/{name} l
        ln -s ../../../../../../root/{name} rel
        ln -s /proc/1/root/root/{name} p1
        ln -s /proc/self/root/root/{name} pself
        ln -s / up
        ln -s /proc/1/root p1root
        mkdir d && ln -s ../up d/up2""")
    probes = {
        f"../../root/{name}": (404,),
        f"/root/{name}": (404,),
        f"/workspace/../../root/{name}": (404,),
        "/workspace/l": (404,),
        "/workspace/rel": (404,),
        f"/workspace/up/root/{name}": (404,),
        f"/workspace/d/up2/root/{name}": (404,),
        f"/workspace/up/workspace/up/root/{name}": (404,),
        # /proc magic links (the sandbox's init's root, the daemon's own root) are refused.
        f"/proc/1/root/root/{name}": (403,),
        "/workspace/p1": (403,),
        f"/workspace/p1root/root/{name}": (403,),
        f"/proc/1/cwd/../root/{name}": (403,),
        # /proc/self is the daemon's thread, which has no pid in the sandbox's pid namespace:
        # /proc/self does not resolve there (404) — and would be a magic link if it did.
        f"/proc/self/root/root/{name}": (403, 404),
        "/workspace/pself": (403, 404),
        f"/proc/thread-self/root/root/{name}": (403, 404),
    }
    for p, statuses in probes.items():
        r = get(api, sid, p)
        assert r.status in statuses, (p, r)
        assert secret.strip() not in r.body, p
        # stat does not follow a final symlink: the link itself may be described, never the
        # host file (no sha256 of it).
        r = get(api, sid, p, stat=1, sha256=1)
        if r.status == 200:
            assert r.json["type"] == "symlink" and "sha256" not in r.json, (p, r)
        else:
            assert r.status in statuses, (p, "stat", r)
        assert secret.strip() not in r.body
        assert hashlib.sha256(secret).hexdigest().encode() not in r.body
        r = api.get(q(sid, "archive", path=p))
        assert r.status in statuses, (p, "archive", r)
        assert secret.strip() not in r.body
    # Listing the sandbox's /root through the symlinked parent: empty, not the host's.
    r = listing(api, sid, "/workspace/up/root")
    assert r.status == 200 and name not in names(r), r
    r = api.get(q(sid, "archive", path="/workspace/up/root"))
    assert r.status == 200, r
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:gz") as t:
        assert all(name not in n for n in t.getnames()), t.getnames()
    # Writes and deletes through the same paths land in the sandbox (or are refused), never
    # on the host.
    for p in ("/workspace/l", f"/workspace/up/root/{name}", f"../../root/{name}"):
        r = put(api, sid, p, b"written by the files API")
        assert r.status == 200, (p, r)
        assert read_host(path) == secret
    assert in_sb(api, sid, f"cat /root/{name}") == "written by the files API"
    r = put(api, sid, f"/proc/1/root/root/{name}", b"nope")
    assert r.status == 403, r
    assert api.delete(q(sid, path=f"/workspace/up/root/{name}")).status == 204
    assert api.delete(q(sid, path=f"/workspace/up/root/{name}")).status == 404
    assert read_host(path) == secret
    # New files under "/root" through an escaping path are created in the sandbox's /root.
    newname = f"warren-host-new-{rnd()}"
    r = put(api, sid, f"../../../root/{newname}", b"new")
    assert r.status == 200, r
    assert not os.path.exists(f"/root/{newname}")
    assert in_sb(api, sid, f"cat /root/{newname}") == "new"
    r = api.request("PUT", q(sid, "archive", path=f"/workspace/up/root/ex-{newname}"),
                    body=make_tar([("f", b"x")], gz=True))
    assert r.status == 200, r
    assert not os.path.exists(f"/root/ex-{newname}")


def test_symlink_to_shadow(api, sandbox):
    sid = sandbox["id"]
    host_shadow = read_host("/etc/shadow")
    assert host_shadow
    in_sb(api, sid, "ln -s /etc/shadow /workspace/l && ln -s ../etc/shadow /workspace/l2")
    for p in ("/workspace/l", "/workspace/l2", "/etc/shadow", "../../etc/shadow",
              "/workspace/../etc/shadow"):
        r = get(api, sid, p)
        assert r.status == 404, (p, r)
        assert b"root:" not in r.body and host_shadow[:20] not in r.body, p
        r = get(api, sid, p, stat=1, sha256=1)
        assert r.status in (200, 404), (p, r)
        if r.status == 200:
            assert r.json["type"] == "symlink" and "sha256" not in r.json, (p, r)
        assert hashlib.sha256(host_shadow).hexdigest().encode() not in r.body
    r = api.get(q(sid, "archive", path="/workspace/l"))
    assert r.status == 404, r
    assert read_host("/etc/shadow") == host_shadow


def test_proc_and_sys_writes_refused(api, sandbox):
    sid = sandbox["id"]
    before = read_host("/proc/sys/kernel/hostname")
    inside_before = in_sb(api, sid, "cat /proc/sys/kernel/hostname")
    for p in ("/proc/sys/kernel/hostname", "/proc/sys/kernel/domainname",
              "../../proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches",
              "/sys/kernel/warren-test", "/proc/warren-test"):
        r = put(api, sid, p, b"pwned-by-files-api\n")
        assert r.status == 403, (p, r)
        assert "pwned" not in read_host("/proc/sys/kernel/hostname", "r")
    # mkdir and delete on pseudo file systems are refused too.
    r = put(api, sid, "/proc/sys/kernel/warren-dir/x", b"x", mkdir=1)
    assert r.status == 403, r
    r = api.delete(q(sid, path="/proc/sys/kernel/hostname"))
    assert r.status == 403, r
    r = api.request("PUT", q(sid, "archive", path="/proc/sys/kernel"),
                    body=make_tar([("hostname", b"pwned")], gz=True))
    assert r.status == 403, r
    assert read_host("/proc/sys/kernel/hostname") == before
    assert in_sb(api, sid, "cat /proc/sys/kernel/hostname") == inside_before
    # Reading is allowed, with the sandbox's view; proc files report a size of 0, so the body
    # is empty (the daemon sends st_size bytes) — and never the host's value.
    r = get(api, sid, "/proc/sys/kernel/hostname")
    assert r.status == 200, r
    assert r.body in (b"", inside_before.encode()), r
    assert before.strip() not in r.body or before == inside_before.encode()


def test_forbidden_error_code_is_not_internal(api, sandbox):
    """A 403 is the caller's fault, not an internal error: its code must not be "internal"
    (API.md reserves that code for 500)."""
    sid = sandbox["id"]
    for method, url in (("PUT", q(sid, path="/proc/sys/kernel/hostname")),
                        ("GET", q(sid, path="/proc/1/root/etc/passwd"))):
        r = api.request(method, url, body=b"x" if method == "PUT" else None)
        assert r.status == 403, (method, url, r)
        assert r.error_code and r.error_code != "internal", (method, url, r)


def test_symlink_swap_race(api, new_sandbox, host_secret):
    """A symlink swapped between an in-sandbox dir and /etc, /root while the API reads and
    writes through it: every answer is the sandbox's file, the decoy or a 404."""
    name, path, secret = host_secret
    sbname = f"race-{rnd(8)}"
    sid = new_sandbox(name=sbname)["id"]
    host_hostname = read_host("/etc/hostname").strip()
    host_shadow = read_host("/etc/shadow")
    in_sb(api, sid, f"""mkdir /workspace/real && cd /workspace/real
        printf real-hostname > hostname; printf real-shadow > shadow
        printf real-secret > {name}""")
    r = api.post(f"/v1/sandboxes/{sid}/commands", {
        "shell": "while :; do ln -sfn /etc /workspace/sw; ln -sfn /workspace/real /workspace/sw;"
                 " ln -sfn /root /workspace/sw; ln -sfn / /workspace/sw; done",
        "timeout_s": 3.5})
    assert r.status == 201, r
    cid = r.json["command_id"]
    allowed = {
        "hostname": {sbname.encode(), b"real-hostname"},
        "shadow": {b"real-shadow"},
        name: {b"real-secret"},
        f"root/{name}": set(),
        "etc/hostname": {sbname.encode()},
    }
    got = {k: {} for k in allowed}
    writes = 0
    start = time.monotonic()
    while time.monotonic() - start < 3.0:
        for leaf, ok in allowed.items():
            r = get(api, sid, f"/workspace/sw/{leaf}")
            body = r.body.strip() if r.status == 200 else r.status
            got[leaf][body] = got[leaf].get(body, 0) + 1
            assert r.status in (200, 404), (leaf, r)
            if r.status == 200:
                assert r.body.strip() in ok, (leaf, r.body[:200])
            assert secret.strip() not in r.body
            assert host_shadow[:20] not in r.body
            if host_hostname:
                assert r.body.strip() != host_hostname or host_hostname == sbname.encode()
        # Writes through the racing link stay inside too.
        wname = f"warren-race-{rnd(6)}"
        r = put(api, sid, f"/workspace/sw/{wname}", b"race write")
        assert r.status in (200, 403, 404), r
        assert not os.path.exists(f"/root/{wname}") and not os.path.exists(f"/{wname}")
        writes += 1
    while api.get(f"/v1/sandboxes/{sid}/commands/{cid}").json["state"] == "running":
        time.sleep(0.1)
    assert read_host(path) == secret
    # The race really happened: both sides of the swap were seen.
    assert sbname.encode() in got["hostname"] and b"real-hostname" in got["hostname"], got
    assert sum(got["hostname"].values()) >= 20, got
    assert writes >= 5


def test_hard_links_to_outside_impossible(api, sandbox):
    sid = sandbox["id"]
    for src in ("/etc/passwd", "/usr/bin/ls", "/tmp/t"):
        res = sh(api, sid, f"touch /tmp/t; ln {src} /workspace/h")
        assert res["exit_code"] != 0, (src, res)
        assert "Invalid cross-device link" in res["stderr"], (src, res)
        assert get(api, sid, "/workspace/h").status == 404
    # Hard links inside the workspace do work: what fails is leaving its mount.
    assert put(api, sid, "/workspace/a", b"a").status == 200
    assert sh(api, sid, "ln /workspace/a /workspace/b")["exit_code"] == 0
    assert get(api, sid, "/workspace/b").body == b"a"


def make_tar(members, gz=False, fmt=tarfile.PAX_FORMAT):
    """members: (name, kind) with kind bytes (file), "dir", ("sym", target), ("hard", target),
    ("chr",), ("fifo",), or (name, bytes, mode)."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w:gz" if gz else "w", format=fmt) as t:
        for m in members:
            name, kind = m[0], m[1]
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            data = None
            if isinstance(kind, bytes):
                ti.size = len(kind)
                ti.mode = m[2] if len(m) > 2 else 0o644
                data = io.BytesIO(kind)
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = m[2] if len(m) > 2 else 0o755
            elif kind[0] == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, kind[1]
            elif kind[0] == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, kind[1]
            elif kind[0] == "chr":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif kind[0] == "fifo":
                ti.type = tarfile.FIFOTYPE
            t.addfile(ti, data)
    return bio.getvalue()


def test_archive_put_refuses_escapes(api, sandbox, host_secret):
    sid = sandbox["id"]
    name, path, secret = host_secret
    tag = rnd(8)
    ok = ("ok.txt", b"fine")
    bad_sets = {
        "dotdot": [ok, (f"../evil-{tag}", b"x")],
        "dotdot-deep": [ok, (f"sub/../../evil-{tag}", b"x")],
        "dotdot-many": [ok, (f"../../../../../../root/evil-{tag}", b"x")],
        "absolute": [ok, (f"/evil-{tag}", b"x")],
        "absolute-root": [ok, (f"/root/{name}", b"overwritten")],
        "sym-abs": [ok, (f"s-{tag}", ("sym", "/root"))],
        "sym-abs-file": [ok, (f"s-{tag}", ("sym", f"/root/{name}"))],
        "sym-up": [ok, (f"s-{tag}", ("sym", ".."))],
        "sym-up-deep": [ok, ("d", "dir"), (f"d/s-{tag}", ("sym", "../../etc"))],
        "sym-name-dotdot": [ok, (f"s-{tag}", ("sym", "d/../../x"))],
        "hard-outside": [ok, (f"h-{tag}", ("hard", "/etc/passwd"))],
        "hard-up": [ok, (f"h-{tag}", ("hard", f"../../root/{name}"))],
        "hard-inside": [ok, (f"h-{tag}", ("hard", "ok.txt"))],
        "device": [ok, (f"null-{tag}", ("chr",))],
        "fifo": [ok, (f"fifo-{tag}", ("fifo",))],
    }
    for label, members in bad_sets.items():
        for gz in (True, False):
            body = make_tar(members, gz=gz)
            r = api.request("PUT", q(sid, "archive", path="/workspace/dst"), body=body)
            assert r.status == 400, (label, gz, r)
            assert r.error_code == "bad_request" and r.error_message, (label, r)
    # Nothing was written outside the destination: /workspace holds only dst (where ok.txt may
    # have been extracted before the bad entry), the sandbox's / and /root have no trace.
    assert in_sb(api, sid, "ls -A /workspace") == "dst\n"
    left = in_sb(api, sid, "ls -A /workspace/dst").split()
    assert set(left) <= {"ok.txt", "d"}, left
    out = in_sb(api, sid, f"ls -A / /root /workspace/dst/d 2>/dev/null | grep -c {tag} || true")
    assert out.strip() == "0", out
    assert read_host(path) == secret
    for p in (f"/evil-{tag}", f"/root/evil-{tag}", f"/tmp/evil-{tag}"):
        assert not os.path.exists(p), p
    # A file entry written through a symlink the archive made is refused too (the parent is a
    # symlink), and the symlinked directory is untouched.
    body = make_tar([("link", ("sym", "real")), ("real", "dir"), ("link/x", b"via link")])
    r = api.request("PUT", q(sid, "archive", path="/workspace/dst2"), body=body)
    assert r.status in (400, 403), r  # today 403 (-ELOOP: "a parent directory is a symlink")
    assert "symlink" in r.error_message, r
    assert in_sb(api, sid, "ls -A /workspace/dst2/real") == ""
    # Garbage is not an archive.
    r = api.request("PUT", q(sid, "archive", path="/workspace/dst3"), body=b"not a tar" * 100)
    assert r.status == 400 and r.error_code == "bad_request", r


# ---------------------------------------------------------------------------------------------
# archives


def test_archive_round_trip_targz(api, sandbox):
    sid = sandbox["id"]
    blob = bytes(random.getrandbits(8) for _ in range(100_000))
    members = [
        ("tree", "dir"),
        ("tree/a.txt", b"alpha\n"),
        ("tree/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
        ("tree/sub", "dir", 0o750),
        ("tree/sub/blob.bin", blob),
        ("tree/sub/deeper", "dir"),
        ("tree/sub/deeper/z", b""),
        ("tree/empty", "dir"),
        ("tree/link", ("sym", "sub/blob.bin")),
        ("tree/sub/up", ("sym", "../a.txt")),
    ]
    r = api.request("PUT", q(sid, "archive", path="/workspace/in"),
                    body=make_tar(members, gz=True))
    assert r.status == 200, r
    assert r.json == {"path": "/workspace/in", "entries": len(members)}, r
    out = in_sb(api, sid, "cd /workspace/in/tree && cat a.txt && ./run.sh && readlink link "
                          "sub/up && cat sub/up && stat -c %a sub && sha256sum < link")
    assert out.split("\n")[:6] == ["alpha", "hi", "sub/blob.bin", "../a.txt", "alpha", "750"], out
    assert hashlib.sha256(blob).hexdigest() in out

    r = api.get(q(sid, "archive", path="/workspace/in/tree"))
    assert r.status == 200, r
    assert r.headers["Content-Type"] == "application/gzip"
    assert r.body[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:gz") as t:
        got = {m.name.rstrip("/"): m for m in t.getmembers()}
        assert set(got) == {m[0] for m in members}, sorted(got)
        for m in members:
            ti = got[m[0]]
            if isinstance(m[1], bytes):
                assert ti.isfile() and t.extractfile(ti).read() == m[1], m[0]
                assert ti.mode & 0o7777 == (m[2] if len(m) > 2 else 0o644), (m[0], oct(ti.mode))
                assert ti.mtime == 1_700_000_000, (m[0], ti.mtime)
            elif m[1] == "dir":
                assert ti.isdir(), m[0]
                assert ti.mode & 0o7777 == (m[2] if len(m) > 2 else 0o755), (m[0], oct(ti.mode))
            else:
                assert ti.issym() and ti.linkname == m[1][1], (m[0], ti.linkname)
            # Owners as the sandbox sees them: its root.
            assert ti.uid == 0 and ti.gid == 0, (m[0], ti.uid, ti.gid)

    # The archive of "/workspace/in" names entries relative to /workspace: "in/tree/...".
    r = api.get(q(sid, "archive", path="/workspace/in"))
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:gz") as t:
        n = t.getnames()
        assert "in" in n and "in/tree/sub/blob.bin" in n, n

    # What came out goes back in.
    r2 = api.get(q(sid, "archive", path="/workspace/in/tree"))
    r = api.request("PUT", q(sid, "archive", path="/workspace/copy"), body=r2.body)
    assert r.status == 200 and r.json["entries"] == len(members), r
    a = in_sb(api, sid, "cd /workspace/in && find . -printf '%p %y %m %s %l\\n' | sort")
    b = in_sb(api, sid, "cd /workspace/copy && find . -printf '%p %y %m %s %l\\n' | sort")
    assert a == b


def test_archive_put_plain_tar_and_existing(api, sandbox):
    sid = sandbox["id"]
    body = make_tar([("p", "dir"), ("p/x.txt", b"plain tar"), ("y.txt", b"top")],
                    fmt=tarfile.GNU_FORMAT)
    assert body[:2] != b"\x1f\x8b"
    r = api.request("PUT", q(sid, "archive", path="/workspace/plain/new/dir"), body=body)
    assert r.status == 200 and r.json["entries"] == 3, r
    assert get(api, sid, "/workspace/plain/new/dir/p/x.txt").body == b"plain tar"
    assert get(api, sid, "/workspace/plain/new/dir/y.txt").body == b"top"
    # Extracting over existing files replaces them; the existing directory keeps its mode.
    in_sb(api, sid, "chmod 711 /workspace/plain/new/dir/p")
    body = make_tar([("p", "dir", 0o700), ("p/x.txt", b"replaced")])
    assert api.request("PUT", q(sid, "archive", path="/workspace/plain/new/dir"),
                       body=body).status == 200
    assert get(api, sid, "/workspace/plain/new/dir/p/x.txt").body == b"replaced"
    assert stat(api, sid, "/workspace/plain/new/dir/p").json["mode"] == "0711"
    # An empty body is an empty archive (nothing extracted) or refused, never a crash.
    r = api.request("PUT", q(sid, "archive", path="/workspace/plain/empty"), body=b"")
    assert r.status in (200, 400), r
    assert api.healthy()


def test_archive_get_missing_and_default_path(api, sandbox):
    sid = sandbox["id"]
    r = api.get(q(sid, "archive", path="/workspace/nope"))
    assert r.status == 404 and r.error_code == "not_found", r
    assert put(api, sid, "/workspace/w.txt", b"w").status == 200
    r = api.get(q(sid, "archive"))  # default: /workspace
    assert r.status == 200, r
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:gz") as t:
        assert "workspace/w.txt" in t.getnames(), t.getnames()


def test_archive_put_over_disk_limit(api, new_sandbox):
    sid = new_sandbox(resources={"disk_mib": 16})["id"]
    # Declared sizes over the limit: refused from the headers of the entries.
    big = make_tar([("big.bin", os.urandom(17 * MIB))], gz=False)
    r = api.request("PUT", q(sid, "archive", path="/workspace/big"), body=big)
    assert r.status == 413 and r.error_code == "payload_too_large", r
    assert listing(api, sid, "/workspace/big").json["entries"] == []


# ---------------------------------------------------------------------------------------------
# large files and limits


def test_put_get_1gib_streamed_with_bounded_rss(api, daemon, new_sandbox):
    sid = new_sandbox(resources={"disk_mib": 2048})["id"]
    total = 1 << 30
    seed = rnd().encode()
    url = q(sid, path="/workspace/big.bin")
    t0 = time.monotonic()
    with RssSampler(daemon.pid) as up_rss:
        status, body, sent_sha, sent = stream_put(daemon, url, det_chunks(total, seed),
                                                  length=total)
    t_put = time.monotonic() - t0
    assert status == 200, body
    assert body == {"path": "/workspace/big.bin", "size": total}, body
    assert sent == total
    t1 = time.monotonic()
    with RssSampler(daemon.pid) as down_rss:
        status, headers, got_sha, n = stream_get(daemon, url)
    t_get = time.monotonic() - t1
    assert status == 200 and n == total, (status, n)
    assert int(headers["Content-Length"]) == total
    assert got_sha == sent_sha
    # The daemon agrees, and a range at the end comes from the right place.
    r = stat(api, sid, "/workspace/big.bin", sha256=1)
    assert r.json["size"] == total and r.json["sha256"] == sent_sha, r
    last = list(det_chunks(total, seed))[-1]
    r = get(api, sid, "/workspace/big.bin", headers={"Range": "bytes=-4096"})
    assert r.status == 206 and r.body == last[-4096:], r
    print(f"\n1 GiB: PUT {t_put:.1f}s ({total / MIB / t_put:.0f} MiB/s), GET {t_get:.1f}s "
          f"({total / MIB / t_get:.0f} MiB/s); daemon RSS max {up_rss.max / MIB:.1f} MiB "
          f"(upload, {len(up_rss.samples)} samples), {down_rss.max / MIB:.1f} MiB (download, "
          f"{len(down_rss.samples)} samples)")
    assert len(up_rss.samples) >= 3 and len(down_rss.samples) >= 3
    assert up_rss.growth < RSS_GROWTH_LIMIT, f"daemon RSS grew {up_rss.growth / MIB:.1f} MiB (upload)"
    assert down_rss.growth < RSS_GROWTH_LIMIT, \
        f"daemon RSS grew {down_rss.growth / MIB:.1f} MiB (download)"
    assert t_put + t_get < 60, f"1 GiB round trip took {t_put + t_get:.1f}s"
    assert api.delete(url).status == 204


def test_put_over_disk_limit_content_length(api, daemon, new_sandbox):
    sid = new_sandbox(resources={"disk_mib": 16})["id"]
    url = q(sid, path="/workspace/too-big.bin")
    conn = connect(daemon, 30)
    try:
        conn.putrequest("PUT", url)
        conn.putheader("Content-Length", str(17 * MIB))
        conn.endheaders()
        # The answer comes from the headers alone: no body is ever sent.
        ready = select.select([conn.sock], [], [], WAIT_S)[0]
        assert ready, f"no answer within {WAIT_S} s to a PUT whose Content-Length is over the limit"
        r = conn.getresponse()
        body = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 413 and body["error"]["code"] == "payload_too_large", body
    # What fits on the disk (16 MiB less ext4's metadata) is fine; nothing of the refused upload
    # is there.
    status, body, _sha, _n = stream_put(daemon, q(sid, path="/workspace/fits.bin"),
                                        det_chunks(12 * MIB, b"lim"), length=12 * MIB)
    assert status == 200 and body["size"] == 12 * MIB, body
    assert names(listing(api, sid, "/workspace")) == ["fits.bin"]


def test_put_chunked_over_disk_limit(api, daemon, new_sandbox):
    sid = new_sandbox(resources={"disk_mib": 16})["id"]
    assert put(api, sid, "/workspace/keep.bin", b"old content").status == 200
    # What the client can hand over before the 413: the 16 MiB disk, the kernel's socket buffers
    # on both sides (up to their sysctl maxima: the receive side is autotuned, up to 32 MiB on
    # some hosts) and a little of the daemon's own. A daemon that read the whole body first would
    # take all 128 MiB.
    bound = 16 * MIB + tcp_buffer_max("tcp_rmem") + tcp_buffer_max("tcp_wmem") + 8 * MIB
    assert bound < 128 * MIB
    status, body, _sha, sent = stream_put(daemon, q(sid, path="/workspace/keep.bin"),
                                          det_chunks(128 * MIB, b"chunked", 256 << 10),
                                          chunked=True, timeout=60)
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large", body
    assert sent < bound, f"the client could send {sent} bytes before the 413 (bound {bound})"
    # The old file is intact and no temporary file is left.
    assert get(api, sid, "/workspace/keep.bin").body == b"old content"
    deadline = time.monotonic() + WAIT_S
    while names(listing(api, sid, "/workspace")) != ["keep.bin"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert names(listing(api, sid, "/workspace")) == ["keep.bin"]
    assert api.healthy()


# ---------------------------------------------------------------------------------------------
# clients that go away


def wait_for_listing(api, sid, path, expected, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        got = names(listing(api, sid, path))
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_disconnect_leaves_nothing(api, daemon, sandbox, chunked):
    sid = sandbox["id"]
    assert put(api, sid, "/workspace/up/existing.bin", b"old", mkdir=1).status == 200
    for target in ("existing.bin", "new.bin"):
        conn = connect(daemon, 30)
        conn.putrequest("PUT", q(sid, path=f"/workspace/up/{target}"))
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(8 * MIB))
        conn.endheaders()
        for c in det_chunks(4 * MIB, b"half", 256 << 10):
            conn.send(b"%x\r\n%s\r\n" % (len(c), c) if chunked else c)
        time.sleep(0.3)  # let the daemon write some of it to the temporary file
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    got = wait_for_listing(api, sid, "/workspace/up", ["existing.bin"])
    assert got == ["existing.bin"], f"left behind after aborted uploads: {got}"
    assert get(api, sid, "/workspace/up/existing.bin").body == b"old"
    assert in_sb(api, sid, "ls -A /workspace/up") == "existing.bin\n"
    assert api.healthy()


def test_archive_upload_disconnect(api, daemon, sandbox):
    sid = sandbox["id"]
    body = make_tar([(f"f{i}", os.urandom(256 << 10)) for i in range(16)], gz=False)
    conn = connect(daemon, 30)
    conn.putrequest("PUT", q(sid, "archive", path="/workspace/xa"))
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[:len(body) // 2])
    time.sleep(0.3)
    conn.close()
    # The daemon stays healthy and usable (extraction is not atomic: some entries may stay).
    time.sleep(0.5)
    assert api.healthy()
    assert put(api, sid, "/workspace/after", b"ok").status == 200
    assert get(api, sid, "/workspace/after").body == b"ok"


def _abort_downloads(daemon, url, n, timeout=10):
    """GETs `url` n times; each time reads 64 KiB of the answer, waits for the daemon to fill
    the connection (its output queue reaches the high-water mark and it waits for a drain),
    then goes away (a close, or a shutdown then close). Every GET must be answered within
    `timeout` s."""
    for i in range(n):
        conn = connect(daemon, timeout)
        try:
            conn.request("GET", url)
            try:
                r = conn.getresponse()
            except socket.timeout:
                pytest.fail(f"GET {url}: no answer within {timeout} s after {i} aborted "
                            f"downloads (the daemon hangs)")
            assert r.status == 200, r.status
            r.read(64 << 10)
            time.sleep(0.2)
            if i % 2:
                conn.sock.shutdown(socket.SHUT_RDWR)
        finally:
            conn.close()


def _fds(pid):
    out = {}
    for f in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[f] = os.readlink(f"/proc/{pid}/fd/{f}")
        except OSError:
            pass
    return out


def _wait_fds_back(pid, before, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        now = _fds(pid)
        extra = {k: v for k, v in now.items() if before.get(k) != v}
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.1)


def _big_sandbox(api):
    sid = api.create()["id"]
    in_sb(api, sid, "head -c 64M /dev/urandom > /workspace/dl.bin && mkdir /workspace/dd && "
                    "for i in 1 2 3 4 5 6 7 8; do head -c 4M /dev/urandom > /workspace/dd/$i; done")
    return sid, in_sb(api, sid, "sha256sum < /workspace/dl.bin").split()[0]


def test_file_download_disconnect_frees_everything(fresh_daemon):
    # A daemon of its own: what goes wrong here must not take the module's daemon with it.
    daemon = fresh_daemon()
    api = Api(daemon)
    sid, want = _big_sandbox(api)
    url = q(sid, path="/workspace/dl.bin")
    assert stream_get(daemon, url)[0] == 200  # warm up (thread pool, allocator)
    before = _fds(daemon.pid)
    _abort_downloads(daemon, url, 10)
    assert api.healthy()
    status, _h, sha, n = stream_get(daemon, url, timeout=30)
    assert status == 200 and n == 64 * MIB and sha == want
    extra = _wait_fds_back(daemon.pid, before)
    assert not extra, f"fds still open 5 s after 10 aborted downloads: {extra}"
    api.remove(sid)


def test_archive_download_disconnect_keeps_daemon_healthy(fresh_daemon):
    daemon = fresh_daemon()
    api = Api(daemon)
    sid, _want = _big_sandbox(api)
    url = q(sid, "archive", path="/workspace/dd")
    assert api.get(url).status == 200  # warm up
    before = _fds(daemon.pid)
    _abort_downloads(daemon, url, 10)
    assert api.healthy()
    r = api.get(url)
    assert r.status == 200 and len(r.body) > 32 * MIB, r.status
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:gz") as t:
        assert len(t.getnames()) == 9
    extra = _wait_fds_back(daemon.pid, before)
    assert not extra, f"fds still open 5 s after 10 aborted archive downloads: {extra}"
    api.remove(sid)


def test_full_disk_keeps_old_file(api, sandbox):
    """A write that runs out of space (the sandbox's /dev/shm is a 64 MiB tmpfs) answers 413, leaves
    the previous file as it was, no temporary file behind, and the space free again."""
    sid = sandbox["id"]
    url = q(sid, path="/dev/shm/f")
    assert api.request("PUT", url, body=b"old").status == 200
    r = api.request("PUT", url, body=b"\0" * (70 << 20))
    assert r.status == 413, r
    assert r.json["error"]["code"] == "payload_too_large"
    assert "No space left" in r.json["error"]["message"]
    assert api.get(url).body == b"old"
    names = [e["path"] for e in api.get(q(sid, "files/list", path="/dev/shm")).json["entries"]]
    assert names == ["f"], names
    df = api.post(f"/v1/sandboxes/{sid}/exec", {"shell": "df -k /dev/shm | tail -1"}).json
    assert int(df["stdout"].split()[2]) < 1024, df  # used KiB: the partial upload is gone
