"""`warren cp` (src/cli/cli_cp.c) against a real daemon: files and directory trees both ways
with docker-cp semantics, errors, stdin/stdout archives, the progress bar on a terminal and
interruption.

The CLI runs as a subprocess with WARREN_URL pointing at the module's daemon; what it did in the
sandbox is checked through the files API.
"""

import hashlib
import io
import os
import select
import signal
import socket
import stat
import subprocess
import tarfile
import time
import urllib.parse

import pytest

from conftest import WAIT_S, sh, sigint_default

MIB = 1 << 20
CLI_TIMEOUT_S = 120


def cli(daemon, *args, input=None, timeout=CLI_TIMEOUT_S, cwd=None):
    kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([daemon.bin, *args], env={**os.environ, "WARREN_URL": daemon.url},
                          capture_output=True, timeout=timeout, cwd=cwd, **kw)


def describe(p):
    return f"rc={p.returncode} stdout={p.stdout[:500]!r} stderr={p.stderr[:2000]!r}"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(MIB), b""):
            h.update(b)
    return h.hexdigest()


def write_random(path, size, mode=0o644):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    os.chmod(path, mode)
    return file_sha(path)


def fq(sid, what="files", **params):
    return (f"/v1/sandboxes/{sid}/{what}?" + urllib.parse.urlencode(params))


def remote_stat(api, sid, path):
    r = api.get(fq(sid, path=path, stat=1, sha256=1))
    return r.json if r.status == 200 else r.status


def remote_tree(api, sid, path):
    """{relpath: (type, sha256-or-link-target, mode)} of a sandbox directory."""
    r = api.get(fq(sid, "files/list", path=path, recursive=1))
    assert r.status == 200, r
    out = {}
    for e in r.json["entries"]:
        if e["type"] == "file":
            s = remote_stat(api, sid, f"{path}/{e['path']}")
            out[e["path"]] = ("file", s["sha256"], e["mode"])
        elif e["type"] == "symlink":
            out[e["path"]] = ("symlink", e["link_target"], None)
        else:
            out[e["path"]] = (e["type"], None, e["mode"])
    return out


def local_tree(root):
    """The same shape as remote_tree for a local directory."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = "%04o" % stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p), None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None, mode)
            else:
                out[rel] = ("file", file_sha(p), mode)
    return out


def make_local_tree(root):
    os.makedirs(os.path.join(root, "sub", "deeper"))
    os.makedirs(os.path.join(root, "empty"))
    write_random(os.path.join(root, "blob.bin"), 3 * MIB + 17)
    write_random(os.path.join(root, "sub", "small.txt"), 100, 0o600)
    with open(os.path.join(root, "sub", "deeper", "run.sh"), "w") as f:
        f.write("#!/bin/sh\necho ran\n")
    os.chmod(os.path.join(root, "sub", "deeper", "run.sh"), 0o755)
    with open(os.path.join(root, "name with spaces & :colon"), "w") as f:
        f.write("odd name\n")
    os.symlink("sub/small.txt", os.path.join(root, "link"))
    os.symlink("../blob.bin", os.path.join(root, "sub", "up"))
    os.chmod(os.path.join(root, "sub"), 0o750)
    return local_tree(root)


def leftovers(d):
    return [n for n in os.listdir(d) if ".warren-" in n]


# ---------------------------------------------------------------------------------------------


def test_cp_file_both_ways(daemon, api, sandbox, tmp_path):
    sid = sandbox["id"]
    src = tmp_path / "data.bin"
    want = write_random(src, 20 * MIB, 0o640)
    p = cli(daemon, "cp", str(src), f"{sid}:/workspace/data.bin")
    assert p.returncode == 0, describe(p)
    assert p.stdout == b"" and p.stderr == b"", describe(p)  # no progress bar off a terminal
    s = remote_stat(api, sid, "/workspace/data.bin")
    assert s["size"] == 20 * MIB and s["sha256"] == want, s
    assert s["mode"] == "0640", s  # permission bits are kept
    res = sh(api, sid, "stat -c %u:%g /workspace/data.bin")
    assert res["stdout"] == "0:0\n", res

    # By name, and with a path relative to /workspace.
    dst = tmp_path / "back.bin"
    p = cli(daemon, "cp", f"{sandbox['name']}:data.bin", str(dst))
    assert p.returncode == 0, describe(p)
    assert file_sha(dst) == want
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o640
    assert leftovers(tmp_path) == []

    # Overwriting an existing file on both sides.
    want2 = write_random(src, 5 * MIB + 3)
    p = cli(daemon, "cp", str(src), f"{sid}:data.bin")
    assert p.returncode == 0, describe(p)
    assert remote_stat(api, sid, "/workspace/data.bin")["sha256"] == want2
    p = cli(daemon, "cp", f"{sid}:/workspace/data.bin", str(dst))
    assert p.returncode == 0, describe(p)
    assert file_sha(dst) == want2

    # An empty file.
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert cli(daemon, "cp", str(empty), f"{sid}:empty").returncode == 0
    assert remote_stat(api, sid, "/workspace/empty")["size"] == 0
    os.unlink(empty)
    assert cli(daemon, "cp", f"{sid}:empty", str(empty)).returncode == 0
    assert empty.read_bytes() == b""


def test_cp_file_into_existing_directory(daemon, api, sandbox, tmp_path):
    sid = sandbox["id"]
    sh(api, sid, "mkdir -p /workspace/dir /workspace/real && ln -s real /workspace/dirlink")
    src = tmp_path / "f.txt"
    src.write_bytes(b"into a directory\n")
    for dest, landed in ((f"{sid}:/workspace/dir", "/workspace/dir/f.txt"),
                         (f"{sid}:dir/", "/workspace/dir/f.txt"),
                         (f"{sid}:/workspace/dirlink", "/workspace/real/f.txt"),
                         (f"{sid}:", "/workspace/f.txt")):
        api.delete(fq(sid, path=landed))
        p = cli(daemon, "cp", str(src), dest)
        assert p.returncode == 0, (dest, describe(p))
        s = remote_stat(api, sid, landed)
        assert isinstance(s, dict) and s["sha256"] == sha(b"into a directory\n"), (dest, s)
    # The link itself stays a link.
    assert remote_stat(api, sid, "/workspace/dirlink")["type"] == "symlink"

    # Out of the sandbox into an existing local directory, under the file's name.
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    for dest in (str(local_dir), str(local_dir) + "/"):
        p = cli(daemon, "cp", f"{sid}:/workspace/dir/f.txt", dest)
        assert p.returncode == 0, describe(p)
        assert (local_dir / "f.txt").read_bytes() == b"into a directory\n"
        os.unlink(local_dir / "f.txt")
    # A relative local destination (".") works too.
    p = cli(daemon, "cp", f"{sid}:dir/f.txt", ".", cwd=str(local_dir))
    assert p.returncode == 0, describe(p)
    assert os.listdir(local_dir) == ["f.txt"]


def test_cp_directory_tree_both_ways(daemon, api, sandbox, tmp_path):
    sid = sandbox["id"]
    tree = tmp_path / "tree"
    want = make_local_tree(str(tree))

    # DEST missing: created with the contents of SRC.
    p = cli(daemon, "cp", str(tree), f"{sid}:/workspace/t")
    assert p.returncode == 0, describe(p)
    assert remote_tree(api, sid, "/workspace/t") == want
    res = sh(api, sid, "stat -c %u /workspace/t/blob.bin /workspace/t/sub && "
                       "/workspace/t/sub/deeper/run.sh")
    assert res["stdout"] == "0\n0\nran\n", res

    # DEST an existing directory: SRC goes into it, under its name...
    p = cli(daemon, "cp", str(tree), f"{sid}:/workspace/t")
    assert p.returncode == 0, describe(p)
    got = remote_tree(api, sid, "/workspace/t/tree")
    assert got == want
    # ... or, with SRC/., its contents go into DEST itself.
    sh(api, sid, "mkdir /workspace/c")
    p = cli(daemon, "cp", str(tree) + "/.", f"{sid}:/workspace/c")
    assert p.returncode == 0, describe(p)
    assert remote_tree(api, sid, "/workspace/c") == want

    # Out of the sandbox: LOCAL missing -> LOCAL is the copy.
    back = tmp_path / "back"
    p = cli(daemon, "cp", f"{sid}:/workspace/c", str(back))
    assert p.returncode == 0, describe(p)
    assert local_tree(str(back)) == want
    # LOCAL an existing directory -> LOCAL/<name>.
    p = cli(daemon, "cp", f"{sid}:/workspace/c", str(back))
    assert p.returncode == 0, describe(p)
    assert local_tree(str(back / "c")) == want
    # SRC/. into an existing directory: the contents.
    into = tmp_path / "into"
    into.mkdir()
    p = cli(daemon, "cp", f"{sid}:/workspace/c/.", str(into))
    assert p.returncode == 0, describe(p)
    assert local_tree(str(into)) == want
    # Files come out owned by the user running the CLI.
    assert os.stat(into / "blob.bin").st_uid == os.getuid()


def test_cp_errors(daemon, api, sandbox, tmp_path):
    sid = sandbox["id"]
    local = tmp_path / "x"
    p = cli(daemon, "cp", f"{sid}:/workspace/no-such-file", str(local))
    assert p.returncode == 1, describe(p)
    assert b"warren: " in p.stderr and b"no-such-file" in p.stderr, describe(p)
    assert b"No such file or directory" in p.stderr, describe(p)
    assert not local.exists() and leftovers(tmp_path) == []

    p = cli(daemon, "cp", "no-such-sandbox:/workspace/f", str(local))
    assert p.returncode == 1 and b"not found" in p.stderr, describe(p)

    p = cli(daemon, "cp", str(tmp_path / "missing-local"), f"{sid}:/workspace/")
    assert p.returncode == 1 and b"missing-local" in p.stderr, describe(p)

    f = tmp_path / "f"
    f.write_bytes(b"f")
    # Into a directory that does not exist (trailing slash) / a missing parent.
    p = cli(daemon, "cp", str(f), f"{sid}:/workspace/nodir/")
    assert p.returncode == 1 and b"no such directory" in p.stderr, describe(p)
    p = cli(daemon, "cp", str(f), f"{sid}:/workspace/nodir/f")
    assert p.returncode == 1 and b"No such file or directory" in p.stderr, describe(p)
    # A directory onto a file, both ways.
    sh(api, sid, "echo file > /workspace/afile && mkdir /workspace/adir")
    p = cli(daemon, "cp", str(tmp_path), f"{sid}:/workspace/afile")
    assert p.returncode == 1 and b"non-directory" in p.stderr, describe(p)
    p = cli(daemon, "cp", f"{sid}:/workspace/adir", str(f))
    assert p.returncode == 1 and b"non-directory" in p.stderr, describe(p)
    assert f.read_bytes() == b"f"
    # Writing is refused by the daemon (a read-only place): its message is shown.
    p = cli(daemon, "cp", str(f), f"{sid}:/usr/bin/warren-test")
    assert p.returncode == 1 and b"warren: " in p.stderr, describe(p)
    # Usage errors: 2.
    for args in (("cp",), ("cp", "a"), ("cp", "a", "b"), ("cp", f"{sid}:a", f"{sid}:b"),
                 ("cp", "a", "b", "c"), ("cp", "--bogus", "a", f"{sid}:b")):
        p = cli(daemon, *args)
        assert p.returncode == 2, (args, describe(p))
    # No daemon there.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    p = subprocess.run([daemon.bin, "cp", str(f), f"{sid}:f"], capture_output=True,
                       env={**os.environ, "WARREN_URL": f"http://127.0.0.1:{port}"},
                       stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT_S)
    assert p.returncode == 1 and b"cannot reach the daemon" in p.stderr, describe(p)
    p = cli(daemon, "cp", "--help")
    assert p.returncode == 0 and b"Usage: warren cp" in p.stdout, describe(p)
    assert b"cp" in cli(daemon, "help").stdout
    assert api.get(fq(sid, "files/list", path="/workspace")).json["entries"] is not None


def test_cp_over_disk_limit(daemon, api, new_sandbox, tmp_path):
    sid = new_sandbox(resources={"disk_mib": 8})["id"]
    src = tmp_path / "big.bin"
    write_random(src, 9 * MIB)
    t0 = time.monotonic()
    p = cli(daemon, "cp", str(src), f"{sid}:big.bin")
    assert p.returncode == 1, describe(p)
    assert b"disk limit" in p.stderr, describe(p)
    assert time.monotonic() - t0 < 5
    r = api.get(fq(sid, "files/list", path="/workspace"))
    assert r.json["entries"] == [], r


def test_cp_stdin_and_stdout_archives(daemon, api, sandbox, tmp_path):
    sid = sandbox["id"]
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as t:
        for name, data in (("a.txt", b"A"), ("d/b.txt", b"BB")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    p = cli(daemon, "cp", "-", f"{sid}:/workspace/in", input=bio.getvalue())
    assert p.returncode == 0, describe(p)
    assert api.get(fq(sid, path="/workspace/in/d/b.txt")).body == b"BB"
    p = cli(daemon, "cp", f"{sid}:/workspace/in", "-")
    assert p.returncode == 0, describe(p)
    with tarfile.open(fileobj=io.BytesIO(p.stdout), mode="r:gz") as t:
        assert sorted(t.getnames()) == ["in", "in/a.txt", "in/d", "in/d/b.txt"]
        assert t.extractfile("in/d/b.txt").read() == b"BB"


def read_pty(master, proc, timeout):
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not b:
                break
            out += b
        elif proc.poll() is not None:
            break
    return out


def run_on_pty(daemon, *args):
    """Runs the CLI with stderr on a pseudo-terminal; returns (rc, stderr bytes, seconds)."""
    master, slave = os.openpty()
    t0 = time.monotonic()
    proc = subprocess.Popen([daemon.bin, *args], env={**os.environ, "WARREN_URL": daemon.url},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    try:
        err = read_pty(master, proc, CLI_TIMEOUT_S)
        proc.wait(CLI_TIMEOUT_S)
        proc.stdout.read()
    finally:
        os.close(master)
        proc.stdout.close()
    return proc.returncode, err, time.monotonic() - t0


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_cp_progress_bar_on_a_terminal(daemon, api, sandbox, tmp_path, direction):
    sid = sandbox["id"]
    src = tmp_path / "p.bin"
    want = write_random(src, 20 * MIB)
    if direction == "download":
        assert cli(daemon, "cp", str(src), f"{sid}:p.bin").returncode == 0
        args = ("cp", f"{sid}:p.bin", str(tmp_path / "got.bin"))
    else:
        args = ("cp", str(src), f"{sid}:p.bin")
    rc, err, secs = run_on_pty(daemon, *args)
    assert rc == 0, err
    text = err.decode()
    assert "\r" in text and text.endswith("\n"), repr(text)
    frames = [f for f in text.replace("\x1b[K", "").split("\r") if f.strip()]
    assert frames, repr(text)
    last = frames[-1].strip()
    assert last.startswith("20.0 MiB / 20.0 MiB") and "100%" in last and "/s" in last, last
    for f in frames:
        assert " / 20.0 MiB" in f and "%" in f and "/s" in f, f
    # At most 10 redraws a second (plus the final one).
    assert len(frames) <= 10 * secs + 2, (len(frames), secs)
    if direction == "download":
        assert file_sha(tmp_path / "got.bin") == want
    else:
        assert remote_stat(api, sid, "/workspace/p.bin")["sha256"] == want
    # --quiet: nothing, even on a terminal; small transfers: nothing either.
    rc, err, _ = run_on_pty(daemon, "cp", "-q", str(src), f"{sid}:q.bin")
    assert rc == 0 and err == b"", err
    small = tmp_path / "small"
    small.write_bytes(b"s" * 1000)
    rc, err, _ = run_on_pty(daemon, "cp", str(small), f"{sid}:small")
    assert rc == 0 and err == b"", err


def test_cp_interrupted_download_leaves_nothing(daemon, api, sandbox, tmp_path):
    sid = sandbox["id"]
    res = sh(api, sid, "truncate -s 4G /workspace/huge")
    assert res["exit_code"] == 0, res
    target = tmp_path / "huge"
    proc = subprocess.Popen([daemon.bin, "cp", f"{sid}:huge", str(target)],
                            env={**os.environ, "WARREN_URL": daemon.url},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=sigint_default)
    deadline = time.monotonic() + WAIT_S
    while not leftovers(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert leftovers(tmp_path), "the download never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, (proc.returncode, err)
    assert not target.exists()
    assert leftovers(tmp_path) == []
    assert api.healthy()
