"""atropos slot protocol: `read_file` / `write_file` tools and /artifacts/{read,list,archive}
(shared/compat-atropos.md) — round trips, limits, errors, and paths that try to leave the
workspace."""

import base64
import hashlib
import io
import os
import tarfile
import time
import uuid

import pytest

from atropos_client import DENIED, slots, slots_daemon  # noqa: F401 - fixtures

MAX_FILE = 100000
MAX_ARTIFACT = 5_000_000


def _sha(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        return repr(e)


# -- write_file / read_file ---------------------------------------------------------------------


def test_write_read_round_trip(slots):
    content = "line one\nline two\n\ttabbed  \n"
    w = slots.write_file("slot_0", "rt.txt", content)
    assert w["success"] is True, w
    assert w["error"] == "", w
    assert w["output"] == f"Successfully wrote {len(content)} bytes to rt.txt", w
    r = slots.read_file("slot_0", "rt.txt")
    assert r["success"] is True and r["error"] == "", r
    assert r["output"] == content, r
    assert r["metadata"].get("size") == len(content), r
    assert isinstance(r["metadata"].get("path"), str) and r["metadata"]["path"], r
    assert slots.ok("slot_0", "cat rt.txt") == content.strip()


def test_write_read_unicode(slots):
    content = "héllo wörld — ✓ 日本\n"
    w = slots.write_file("slot_0", "uni.txt", content)
    assert w["success"] is True, w
    assert w["output"].startswith("Successfully wrote ") and w["output"].endswith(" to uni.txt")
    r = slots.read_file("slot_0", "uni.txt")
    assert r["success"] is True and r["output"] == content, r
    assert slots.ok("slot_0", "wc -c < uni.txt") == str(len(content.encode()))


def test_read_non_utf8_file(slots):
    slots.ok("slot_0", r"printf 'ok \377\376 end' > latin.bin")
    r = slots.read_file("slot_0", "latin.bin")
    assert r["success"] is True, r
    assert r["output"].startswith("ok ") and r["output"].endswith(" end"), r
    assert "\ufffd" in r["output"], r
    assert r["metadata"]["size"] == 9, r


def test_write_overwrites_and_empty(slots):
    assert slots.write_file("slot_0", "ow.txt", "a much longer first version\n")["success"]
    assert slots.write_file("slot_0", "ow.txt", "short")["success"]
    assert slots.read_file("slot_0", "ow.txt")["output"] == "short"
    w = slots.write_file("slot_0", "empty.txt", "")
    assert w["success"] is True and w["output"] == "Successfully wrote 0 bytes to empty.txt", w
    r = slots.read_file("slot_0", "empty.txt")
    assert r["success"] is True and r["output"] == "" and r["metadata"]["size"] == 0, r


def test_write_creates_parent_dirs(slots):
    w = slots.write_file("slot_0", "deep/er/still/file.txt", "nested\n")
    assert w["success"] is True, w
    assert w["output"] == "Successfully wrote 7 bytes to deep/er/still/file.txt", w
    assert slots.ok("slot_0", "cat /workspace/deep/er/still/file.txt") == "nested"
    assert slots.ok("slot_0", "test -d deep/er/still && echo dir") == "dir"


def test_written_file_usable_by_sandbox(slots):
    slots.write_file("slot_0", "script.sh", "echo from-script-$((2*21))\n")
    assert slots.ok("slot_0", "sh script.sh") == "from-script-42"
    # and files the sandbox makes can be rewritten by write_file
    slots.ok("slot_0", "echo sandbox-made > sbm.txt")
    assert slots.write_file("slot_0", "sbm.txt", "replaced")["success"]
    assert slots.ok("slot_0", "cat sbm.txt") == "replaced"


def test_write_content_limit(slots):
    ok = "x" * MAX_FILE
    w = slots.write_file("slot_0", "max.txt", ok)
    assert w["success"] is True, w["error"]
    assert w["output"] == f"Successfully wrote {MAX_FILE} bytes to max.txt"
    w = slots.write_file("slot_0", "toolarge.txt", "x" * (MAX_FILE + 1))
    assert w["success"] is False, w["output"][:200]
    assert w["error"].startswith("Content too large"), w["error"]
    assert slots.ok("slot_0", "test -e toolarge.txt && echo exists || echo absent") == "absent"


def test_read_size_limit(slots):
    slots.ok("slot_0", f"head -c {MAX_FILE} /dev/zero | tr '\\0' y > exact.txt; "
                       f"head -c {MAX_FILE + 1} /dev/zero | tr '\\0' z > over.txt")
    r = slots.read_file("slot_0", "exact.txt")
    assert r["success"] is True and r["output"] == "y" * MAX_FILE, r["error"]
    assert r["metadata"]["size"] == MAX_FILE
    r = slots.read_file("slot_0", "over.txt")
    assert r["success"] is False, r["output"][:100]
    assert r["error"] == f"File too large: {MAX_FILE + 1} bytes (max {MAX_FILE})", r


@pytest.mark.parametrize("path", ["missing.txt", "no/such/dir/f.txt"])
def test_read_missing(slots, path):
    r = slots.read_file("slot_0", path)
    assert r["success"] is False, r
    assert r["error"] == f"File not found: {path}", r


@pytest.mark.parametrize("path", ["adir", "adir/inner", "."])
def test_read_directory(slots, path):
    slots.ok("slot_0", "mkdir -p adir/inner")
    r = slots.read_file("slot_0", path)
    assert r["success"] is False, r
    assert r["error"] == f"Not a file: {path}", r


def _make_links(slots, sid):
    slots.ok(sid, "rm -rf l pr up outtmp dangle sroot sub; mkdir -p sub; "
                  "ln -s /etc/shadow l; ln -s /proc/1/root pr; ln -s / up; ln -s /tmp outtmp; "
                  "ln -s /proc/self/root/etc sroot")


ESCAPES_READ = ["../../etc/passwd", "../etc/passwd", "/etc/passwd", "/etc/shadow",
                "sub/../../etc/passwd", "l", "pr/etc/passwd", "pr", "up/etc/passwd",
                "up/proc/1/environ", "sroot/passwd", "..", "/"]


@pytest.mark.parametrize("path", ESCAPES_READ)
def test_read_escapes_denied(slots, path):
    _make_links(slots, "slot_1")
    r = slots.read_file("slot_1", path)
    assert r["success"] is False, f"read {path!r} succeeded: {r['output'][:300]!r}"
    assert r["error"] == DENIED, r
    assert "root:" not in r["output"], r


@pytest.mark.parametrize("kind", ["dotdot", "dotdot2", "abs", "sub_dotdot", "symlink_file",
                                  "proc_root", "parent_symlink", "dir_symlink", "dangling"])
def test_write_escapes_denied(slots, kind):
    sid = "slot_1"
    _make_links(slots, sid)
    name = "atropos-escape-" + uuid.uuid4().hex
    slots.ok(sid, f"rm -f dangle; ln -s /tmp/{name} dangle")
    path = {"dotdot": f"../../tmp/{name}", "dotdot2": f"../{name}", "abs": f"/tmp/{name}",
            "sub_dotdot": f"sub/../../tmp/{name}", "symlink_file": "l",
            "proc_root": f"pr/tmp/{name}", "parent_symlink": f"up/tmp/{name}",
            "dir_symlink": f"outtmp/{name}", "dangling": "dangle"}[kind]
    shadow_before = _sha("/etc/shadow")
    sb_shadow_before = slots.bash(sid, "sha256sum /etc/shadow 2>&1")["output"]
    w = slots.write_file(sid, path, "pwned\n")
    assert w["success"] is False, f"write {path!r} succeeded: {w}"
    assert w["error"] == DENIED, w
    # nothing was written anywhere
    assert not os.path.exists(f"/tmp/{name}"), f"host /tmp/{name} created by write {path!r}"
    assert not os.path.exists(f"/{name}"), f"host /{name} created by write {path!r}"
    assert _sha("/etc/shadow") == shadow_before, "host /etc/shadow changed"
    assert slots.bash(sid, "sha256sum /etc/shadow 2>&1")["output"] == sb_shadow_before
    out = slots.ok(sid, f"ls /tmp/{name} /{name} 2>/dev/null; readlink l")
    assert name not in out, f"sandbox file created by write {path!r}: {out!r}"
    assert out == "/etc/shadow", "the symlink itself was replaced"


def test_symlinks_inside_workspace_work(slots):
    sid = "slot_2"
    slots.ok(sid, "rm -rf real lf rd; mkdir -p real && echo inside > real/f.txt && "
                  "ln -s real/f.txt lf && ln -s real rd")
    for p in ("lf", "rd/f.txt", "real/f.txt"):
        r = slots.read_file(sid, p)
        assert r["success"] is True and r["output"] == "inside\n", (p, r)
    w = slots.write_file(sid, "rd/new.txt", "via dir link")
    assert w["success"] is True, w
    assert slots.ok(sid, "cat real/new.txt") == "via dir link"
    w = slots.write_file(sid, "lf", "through file link")
    assert w["success"] is True, w
    assert slots.ok(sid, "cat real/f.txt; echo; test -L lf && echo still-link") == \
        "through file link\nstill-link"
    r = slots.read_file(sid, "real/./../rd/f.txt")
    assert r["success"] is True and r["output"] == "through file link", r


def test_absolute_symlink_into_workspace_works(slots):
    # The sandbox sees its workspace as /workspace: a link to /workspace/... stays inside.
    sid = "slot_2"
    slots.ok(sid, "mkdir -p real2 && echo abs-inside > real2/g.txt && rm -f absl && "
                  "ln -s /workspace/real2/g.txt absl")
    r = slots.read_file(sid, "absl")
    assert r["success"] is True and r["output"] == "abs-inside\n", r


# -- /artifacts/read ----------------------------------------------------------------------------

READ_KEYS = {"success", "content", "encoding", "truncated", "bytes", "file_size", "path", "mime",
             "sha256"}


def aread(slots, expect=200, **body):
    status, r = slots.post("/artifacts/read", body, timeout=120)
    assert status == expect, (body, status, r if status != 200 else str(r)[:300])
    assert isinstance(r, dict), r
    if expect == 200:
        assert set(r) >= READ_KEYS, f"artifacts/read lacks {sorted(READ_KEYS - set(r))}"
        assert r["success"] is True
    else:
        assert r.get("success") is False and isinstance(r.get("error"), str), r
    return r


def test_artifact_read_text(slots):
    slots.write_file("slot_2", "a.txt", "hello artifacts\n")
    r = aread(slots, slot_id="slot_2", path="a.txt", encoding="text")
    assert r["content"] == "hello artifacts\n"
    assert r["encoding"] == "text" and r["truncated"] is False
    assert r["bytes"] == 16 and r["file_size"] == 16
    assert r["path"] == "a.txt" and r["mime"] == "text/plain"
    assert r["sha256"] is None
    # encoding defaults to text
    r2 = aread(slots, slot_id="slot_2", path="a.txt")
    assert r2["content"] == "hello artifacts\n" and r2["encoding"] == "text"


def test_artifact_read_base64(slots):
    data = bytes(range(256)) + b"\x00\xff tail"
    octal = "".join(f"\\{b:03o}" for b in data)
    slots.ok("slot_2", f"printf '{octal}' > blob.bin")
    r = aread(slots, slot_id="slot_2", path="blob.bin", encoding="base64", include_sha256=True)
    assert base64.b64decode(r["content"]) == data
    assert r["encoding"] == "base64" and r["truncated"] is False
    assert r["bytes"] == len(data) and r["file_size"] == len(data)
    assert r["sha256"] == hashlib.sha256(data).hexdigest()
    assert r["mime"] == "application/octet-stream"


def test_artifact_read_max_bytes(slots):
    slots.write_file("slot_2", "a.txt", "hello artifacts\n")
    r = aread(slots, slot_id="slot_2", path="a.txt", max_bytes=5, include_sha256=True)
    assert r["content"] == "hello" and r["truncated"] is True
    assert r["bytes"] == 5 and r["file_size"] == 16
    assert r["sha256"] == hashlib.sha256(b"hello").hexdigest()
    r = aread(slots, slot_id="slot_2", path="a.txt", max_bytes=16)
    assert r["content"] == "hello artifacts\n" and r["truncated"] is False and r["bytes"] == 16
    r = aread(slots, slot_id="slot_2", path="a.txt", max_bytes=1000)
    assert r["truncated"] is False and r["bytes"] == 16


@pytest.mark.parametrize("mb", [0, -7, 1])
def test_artifact_read_max_bytes_clamped_low(slots, mb):
    slots.write_file("slot_2", "a.txt", "hello artifacts\n")
    r = aread(slots, slot_id="slot_2", path="a.txt", max_bytes=mb, encoding="base64",
              include_sha256=True)
    assert base64.b64decode(r["content"]) == b"h", r
    assert r["bytes"] == 1 and r["truncated"] is True and r["file_size"] == 16, r
    assert r["sha256"] == hashlib.sha256(b"h").hexdigest()


def test_artifact_read_max_bytes_clamped_high(slots):
    size = MAX_ARTIFACT + 10
    slots.ok("slot_2", f"head -c {size} /dev/urandom > big.bin")
    for mb in (10**9, None):
        body = {"slot_id": "slot_2", "path": "big.bin", "encoding": "base64",
                "include_sha256": True}
        if mb is not None:
            body["max_bytes"] = mb
        r = aread(slots, **body)
        data = base64.b64decode(r["content"])
        assert len(data) == MAX_ARTIFACT and r["bytes"] == MAX_ARTIFACT, (mb, r["bytes"])
        assert r["truncated"] is True and r["file_size"] == size, mb
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
    # the returned bytes are the file's first bytes
    head = slots.ok("slot_2", "head -c 64 big.bin | od -An -tx1 | tr -d ' \\n'")
    assert data[:64].hex() == head


@pytest.mark.parametrize("name,mime", [("x.txt", "text/plain"), ("x.json", "application/json"),
                                       ("x.png", "image/png"), ("x.jpg", "image/jpeg"),
                                       ("x.html", "text/html"), ("x.gif", "image/gif"),
                                       ("x.unknownext", "application/octet-stream")])
def test_artifact_read_mime(slots, name, mime):
    slots.write_file("slot_2", "mime/" + name, "{}")
    r = aread(slots, slot_id="slot_2", path="mime/" + name)
    assert r["mime"] == mime, r
    assert r["path"] == "mime/" + name


@pytest.mark.parametrize("given", ["sub/f.txt", "./sub/f.txt", "sub//f.txt", "sub/x/../f.txt"])
def test_artifact_read_relative_path(slots, given):
    slots.ok("slot_2", "mkdir -p sub/x && echo f > sub/f.txt")
    r = aread(slots, slot_id="slot_2", path=given)
    assert r["content"] == "f\n"
    assert not r["path"].startswith("/"), r["path"]
    assert os.path.normpath(r["path"]) == "sub/f.txt", r["path"]


# -- /artifacts/list ----------------------------------------------------------------------------


def alist(slots, expect=200, **body):
    status, r = slots.post("/artifacts/list", body)
    assert status == expect, (body, status, r)
    assert isinstance(r, dict), r
    if expect == 200:
        assert r.get("success") is True, r
        assert isinstance(r.get("entries"), list) and isinstance(r.get("truncated"), bool), r
        for e in r["entries"]:
            assert set(e) >= {"path", "is_dir", "size", "mtime"}, e
            assert isinstance(e["is_dir"], bool) and isinstance(e["size"], int), e
            assert isinstance(e["mtime"], (int, float)), e
            assert not e["path"].startswith("/"), e
    else:
        assert r.get("success") is False and isinstance(r.get("error"), str), r
    return r


def _tree(slots, sid="slot_3"):
    slots.clean(sid)
    slots.ok(sid, "printf 12345 > top.txt && mkdir -p d/sub && printf abc > d/x.txt && "
                  "printf hello > d/sub/y.txt")


def test_artifact_list_flat(slots):
    _tree(slots)
    t_now = time.time()
    r = alist(slots, slot_id="slot_3", path=".")
    by = {e["path"]: e for e in r["entries"]}
    assert set(by) == {"top.txt", "d"}, r
    assert by["top.txt"]["is_dir"] is False and by["top.txt"]["size"] == 5
    assert by["d"]["is_dir"] is True
    for e in r["entries"]:
        assert abs(e["mtime"] - t_now) < 120, e
    assert r["truncated"] is False
    # path defaults to "."
    r2 = alist(slots, slot_id="slot_3")
    assert {e["path"] for e in r2["entries"]} == {"top.txt", "d"}, r2


def test_artifact_list_recursive(slots):
    _tree(slots)
    r = alist(slots, slot_id="slot_3", path=".", recursive=True)
    by = {e["path"]: e for e in r["entries"]}
    assert set(by) == {"top.txt", "d", "d/x.txt", "d/sub", "d/sub/y.txt"}, r
    assert by["d/sub"]["is_dir"] is True and by["d/sub/y.txt"]["size"] == 5
    assert by["d/x.txt"]["size"] == 3 and by["d/x.txt"]["is_dir"] is False
    assert r["truncated"] is False


def test_artifact_list_subdir(slots):
    _tree(slots)
    r = alist(slots, slot_id="slot_3", path="d")
    # paths are relative to the workspace, as everywhere in the protocol
    assert {e["path"] for e in r["entries"]} == {"d/x.txt", "d/sub"}, r


def test_artifact_list_max_entries(slots):
    _tree(slots)
    r = alist(slots, slot_id="slot_3", path=".", recursive=True, max_entries=2)
    assert len(r["entries"]) == 2 and r["truncated"] is True, r
    r = alist(slots, slot_id="slot_3", path=".", recursive=True, max_entries=100)
    assert len(r["entries"]) == 5 and r["truncated"] is False, r


def test_artifact_list_does_not_follow_links_out(slots):
    _tree(slots)
    slots.ok("slot_3", "ln -s / up && ln -s /etc etclink")
    r = alist(slots, slot_id="slot_3", path=".", recursive=True, max_entries=5000)
    paths = {e["path"] for e in r["entries"]}
    assert not any(p.startswith(("up/", "etclink/")) for p in paths), sorted(paths)[:20]
    assert {"top.txt", "d", "d/x.txt", "d/sub", "d/sub/y.txt"} <= paths
    slots.ok("slot_3", "rm up etclink")


# -- /artifacts/archive -------------------------------------------------------------------------

BIN = bytes(range(256)) * 3


def aarchive(slots, expect=200, **body):
    status, r = slots.post("/artifacts/archive", body, timeout=120)
    assert status == expect, (body, status, r)
    assert isinstance(r, dict), r
    if expect == 200:
        for k in ("success", "content", "encoding", "format", "bytes", "entry_count"):
            assert k in r, f"archive response lacks {k}: {str(r)[:300]}"
        assert r["success"] is True and r["encoding"] == "base64" and r["format"] == "tar.gz", r
    else:
        assert r.get("success") is False and isinstance(r.get("error"), str), r
    return r


def _archive_tree(slots):
    slots.clean("slot_3")
    octal = "".join(f"\\{b:03o}" for b in BIN)
    slots.ok("slot_3", "printf 'alpha\\n' > a.txt && mkdir -p d/e empty && "
                       f"printf 'bravo\\n' > d/b.txt && printf '{octal}' > d/e/c.bin && "
                       "ln -s /etc/passwd lnk && ln -s / up && mkfifo fifo")


def _untar(r):
    raw = base64.b64decode(r["content"])
    assert raw[:2] == b"\x1f\x8b", "content is not gzip"
    assert r["bytes"] == len(raw), (r["bytes"], len(raw))
    files = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tf:
        members = tf.getmembers()
        for m in members:
            assert not m.name.startswith("/") and ".." not in m.name.split("/"), m.name
            assert m.isreg(), f"archive member {m.name!r} is not a regular file (type {m.type!r})"
            files[m.name] = tf.extractfile(m).read()
        assert len(files) == len(members), "duplicate member names"
    return files


@pytest.mark.parametrize("fmt", ["tar.gz", "tgz"])
def test_artifact_archive_workspace(slots, fmt):
    _archive_tree(slots)
    r = aarchive(slots, slot_id="slot_3", path=".", format=fmt)
    files = _untar(r)
    assert files == {"a.txt": b"alpha\n", "d/b.txt": b"bravo\n", "d/e/c.bin": BIN}, \
        {k: v[:40] for k, v in files.items()}
    assert r["entry_count"] == 3, r["entry_count"]


def test_artifact_archive_defaults(slots):
    _archive_tree(slots)
    r = aarchive(slots, slot_id="slot_3")
    assert set(_untar(r)) == {"a.txt", "d/b.txt", "d/e/c.bin"}


def test_artifact_archive_subdir(slots):
    _archive_tree(slots)
    r = aarchive(slots, slot_id="slot_3", path="d", format="tar.gz")
    files = _untar(r)
    assert files == {"d/b.txt": b"bravo\n", "d/e/c.bin": BIN}, sorted(files)
    assert r["entry_count"] == 2


def test_artifact_archive_max_entries(slots):
    _archive_tree(slots)
    r = aarchive(slots, slot_id="slot_3", path=".", max_entries=1)
    files = _untar(r)
    assert len(files) == 1 and r["entry_count"] == 1, sorted(files)
    assert set(files) <= {"a.txt", "d/b.txt", "d/e/c.bin"}


def test_artifact_archive_too_large(slots):
    _archive_tree(slots)
    full = aarchive(slots, slot_id="slot_3", path=".")
    status, r = slots.post("/artifacts/archive", {"slot_id": "slot_3", "path": ".",
                                                  "max_bytes": 10})
    assert status == 413, (status, r)
    assert r.get("success") is False, r
    assert isinstance(r.get("bytes"), int) and r["bytes"] > 10, r
    assert r["error"] == f"Archive too large: {r['bytes']} bytes (max 10)", r
    assert "content" not in r or not r["content"], r
    # a limit at the archive's own size passes
    r = aarchive(slots, slot_id="slot_3", path=".", max_bytes=full["bytes"] + 200)
    assert set(_untar(r)) == {"a.txt", "d/b.txt", "d/e/c.bin"}


@pytest.mark.parametrize("fmt", ["zip", "tar", "gz", "tar.bz2"])
def test_artifact_archive_bad_format(slots, fmt):
    r = aarchive(slots, expect=400, slot_id="slot_3", path=".", format=fmt)
    assert r["error"], r


# -- artifact errors ----------------------------------------------------------------------------

ROUTES = ["/artifacts/read", "/artifacts/list", "/artifacts/archive"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("slot_id", ["slot_4", "nope", ""])
def test_artifacts_unknown_slot_404(slots, route, slot_id):
    status, r = slots.post(route, {"slot_id": slot_id, "path": "."})
    assert status == 404, (route, slot_id, status, r)
    assert isinstance(r, dict) and r.get("success") is False and r.get("error"), r


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("path", ["../", "../../etc/passwd", "/etc/passwd", "/", "l",
                                  "up/etc/passwd", "up", "pr/etc/passwd"])
def test_artifacts_escape_403(slots, route, path):
    _make_links(slots, "slot_1")
    status, r = slots.post(route, {"slot_id": "slot_1", "path": path})
    assert status == 403, (route, path, status, str(r)[:400])
    assert r.get("success") is False and r.get("error") == DENIED, r
    assert "content" not in r and "entries" not in r, str(r)[:400]


@pytest.mark.parametrize("route", ROUTES)
def test_artifacts_missing_404(slots, route):
    status, r = slots.post(route, {"slot_id": "slot_1", "path": "no/such/thing.txt"})
    assert status == 404, (route, status, r)
    assert r.get("success") is False and r.get("error"), r


def test_artifact_read_not_a_file_400(slots):
    slots.ok("slot_1", "mkdir -p somedir")
    for p in ("somedir", "."):
        status, r = slots.post("/artifacts/read", {"slot_id": "slot_1", "path": p})
        assert status == 400, (p, status, r)
        assert r.get("success") is False and r.get("error"), r


@pytest.mark.parametrize("enc", ["hex", "utf-16", "binary", "base32"])
def test_artifact_read_bad_encoding_400(slots, enc):
    slots.write_file("slot_1", "enc.txt", "x")
    status, r = slots.post("/artifacts/read", {"slot_id": "slot_1", "path": "enc.txt",
                                               "encoding": enc})
    assert status == 400, (enc, status, r)
    assert r.get("success") is False and r.get("error"), r
