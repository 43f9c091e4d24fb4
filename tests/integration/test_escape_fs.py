"""Escape suite: the file system. Host paths stay invisible, system dirs stay read-only, the mount
tree cannot be changed, sensitive /proc and /sys entries are masked, and neither symlinks, chroot
tricks, file handles nor the files API lead out of the sandbox."""

import hashlib
import io
import os
import shutil
import tarfile
import time
import urllib.parse

import pytest

from conftest import exec_, sh
from escape_util import box, py, rnd, workspace_host_path  # noqa: F401  (box is a fixture)


def q(p):
    return urllib.parse.quote(p, safe="")


@pytest.fixture
def host_marker():
    """A secret file in the host's /root, /home and the daemon's base dir."""
    name = f"warren-escape-{rnd()}"
    paths = []
    for d in ("/root", "/home"):
        if os.path.isdir(d):
            p = os.path.join(d, name)
            with open(p, "w") as f:
                f.write("HOST-SECRET-" + name)
            paths.append(p)
    yield name, paths
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------------------------------------


def test_host_paths_not_visible(api, box, daemon, host_marker):
    name, markers = host_marker
    extra = os.path.join(daemon.base_dir, name)
    with open(extra, "w") as f:
        f.write("HOST-SECRET")
    try:
        probes = markers + [extra, daemon.state_dir, daemon.base_dir, daemon.log_path,
                            os.path.join(daemon.state_dir, "sandboxes"),
                            os.path.join(daemon.state_dir, "templates")]
        got = py(api, box["id"], f"""
probes = {probes!r}
res = {{p: os.path.lexists(p) for p in probes}}
res["ls_root"] = sorted(os.listdir("/root"))
res["ls_home"] = sorted(os.listdir("/home"))
res["p1root"] = err(os.listdir, "/proc/1/root/")
emit(res)
""")
        for p in probes:
            assert got[p] is False, f"host path {p} is visible inside the sandbox: {got}"
        assert name not in got["ls_root"] and name not in got["ls_home"], got
        assert got["p1root"] == "EACCES", got
    finally:
        os.unlink(extra)
    for p in markers:
        with open(p) as f:
            assert f.read() == "HOST-SECRET-" + name


def test_other_sandbox_workspace_not_reachable(api, box, daemon, new_sandbox):
    other = new_sandbox()
    secret = f"b-secret-{rnd()}"
    bws = workspace_host_path(daemon, other["id"])
    assert sh(api, other["id"], f"echo {secret} > /workspace/{secret}")["exit_code"] == 0
    before = sorted(os.listdir(bws))
    got = py(api, box["id"], f"""
bws = {bws!r}; secret = {secret!r}
res = {{"host_path": os.path.lexists(bws), "file": os.path.lexists(bws + "/" + secret)}}
# try to write there, directly and through a symlink in our own workspace
res["write"] = err(lambda: open(bws + "/evil", "w"))
os.symlink(bws, "/workspace/to-other-" + secret)
res["via_link"] = err(lambda: open("/workspace/to-other-" + secret + "/evil", "w"))
found = []
for top in ("/workspace", "/tmp", "/root", "/run", "/var", "/home", "/dev/shm"):
    for d, dirs, files in os.walk(top):
        if secret in files:
            found.append(d)
res["found"] = found
# the other sandbox's id appears nowhere in our process list
def cmdline(p):
    try:
        return open("/proc/%s/cmdline" % p, "rb").read().decode(errors="replace")
    except OSError:
        return ""
res["procs"] = [cmdline(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
emit(res)
""")
    assert got["host_path"] is False and got["file"] is False, got
    assert got["write"] == "ENOENT" and got["via_link"] == "ENOENT", got
    assert got["found"] == [], got
    assert not any(other["id"] in c for c in got["procs"]), got
    assert sorted(os.listdir(bws)) == before, "sandbox A changed sandbox B's workspace"


def test_system_dirs_read_only(api, box):
    name = f"warren-escape-{rnd()}"
    targets = ["/usr", "/usr/bin", "/usr/lib", "/bin", "/sbin", "/lib", "/etc", "/dev", "/sys"]
    hashes = {p: sha(p) for p in ("/etc/passwd", "/etc/group", "/usr/bin/ls")}
    preload = os.path.lexists("/etc/ld.so.preload")
    got = py(api, box["id"], f"""
name = {name!r}
res = {{}}
for d in {targets!r}:
    res["create " + d] = err(os.open, d + "/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
    res["mkdir " + d] = err(os.mkdir, d + "/" + name)
res["append passwd"] = err(os.open, "/etc/passwd", os.O_WRONLY | os.O_APPEND)
res["trunc ls"] = err(os.open, "/usr/bin/ls", os.O_WRONLY | os.O_TRUNC)
res["unlink ls"] = err(os.unlink, "/usr/bin/ls")
res["rename ls"] = err(os.rename, "/usr/bin/ls", "/usr/bin/ls2")
res["chmod su"] = err(os.chmod, "/usr/bin/su", 0o6777)
res["symlink etc"] = err(os.symlink, "/workspace/x", "/etc/ld.so.preload")
res["utime"] = err(os.utime, "/usr/bin/ls", (0, 0))
emit(res)
""")
    for k, v in got.items():
        if k == "append passwd":  # host root's file: the permission check may come first
            assert v in ("EROFS", "EACCES"), (k, got)
        else:
            assert v == "EROFS", f"{k}: expected EROFS, got {v}: {got}"
    for d in targets:
        assert not os.path.lexists(os.path.join(d, name)), f"{d}/{name} appeared on the host"
    for p, h in hashes.items():
        assert sha(p) == h, f"host {p} changed"
    assert os.path.lexists("/etc/ld.so.preload") == preload


def test_cannot_remount_read_only_binds_rw(api, box):
    got = py(api, box["id"], """
import subprocess
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
res = {}
for d in ("/usr", "/etc", "/dev", "/sys", "/proc/sys"):
    res["remount " + d] = sc("mount", None, d, None, MS_REMOUNT | MS_BIND, None)
    res["remount2 " + d] = sc("mount", "none", d, "none", MS_REMOUNT, None)
p = subprocess.run(["mount", "-o", "remount,rw", "/usr"], capture_output=True, text=True)
res["mount(8)"] = [p.returncode, p.stderr]
res["write after"] = err(os.open, "/usr/warren-after-remount", os.O_WRONLY | os.O_CREAT)
opts = {}
for line in open("/proc/self/mountinfo"):
    f = line.split()
    opts[f[4]] = f[5]
res["opts"] = opts
emit(res)
""")
    for d in ("/usr", "/etc", "/dev", "/sys", "/proc/sys"):
        assert got["remount " + d] == [-1, "EPERM"], got
        assert got["remount2 " + d] == [-1, "EPERM"], got
        assert got["opts"][d].split(",")[0] == "ro", f"{d} is not read-only: {got['opts']}"
    assert got["mount(8)"][0] != 0, got
    assert got["write after"] == "EROFS", got
    assert not os.path.exists("/usr/warren-after-remount")


def test_mount_family_syscalls_denied(api, box):
    got = py(api, box["id"], """
AT_FDCWD = -100
os.makedirs("/tmp/mnt", exist_ok=True)
res = {
  "mount tmpfs": sc("mount", "none", "/tmp/mnt", "tmpfs", 0, None),
  "mount proc": sc("mount", "proc", "/tmp/mnt", "proc", 0, None),
  "mount bind /": sc("mount", "/", "/tmp/mnt", None, 4096 | 16384, None),
  "umount2 kallsyms": sc("umount2", "/proc/kallsyms", 0),
  "umount2 proc detach": sc("umount2", "/proc", 2),
  "umount2 sys/firmware": sc("umount2", "/sys/firmware", 2),
  "umount2 /": sc("umount2", "/", 2),
  "pivot_root": sc("pivot_root", "/tmp", "/tmp/mnt"),
  "open_tree": sc("open_tree", AT_FDCWD, "/", 1 | 0x8000),
  "move_mount": sc("move_mount", AT_FDCWD, "/tmp", AT_FDCWD, "/tmp/mnt", 0),
  "fsopen": sc("fsopen", "tmpfs", 0),
  "fspick": sc("fspick", AT_FDCWD, "/", 0),
  "fsconfig": sc("fsconfig", 0, 0, None, None, 0),
  "fsmount": sc("fsmount", 0, 0, 0),
  "mount_setattr": sc("mount_setattr", AT_FDCWD, "/usr", 0, None, 0),
}
res["kallsyms after"] = open("/proc/kallsyms", "rb").read(64).hex()
res["mnt empty"] = os.listdir("/tmp/mnt")
emit(res)
""")
    for k, v in got.items():
        if k in ("kallsyms after", "mnt empty"):
            continue
        assert v == [-1, "EPERM"], f"{k}: {v}; all: {got}"
    assert got["kallsyms after"] == "" and got["mnt empty"] == [], got


MASKED_FILES = ["/proc/kcore", "/proc/kallsyms", "/proc/timer_list", "/proc/sched_debug",
                "/proc/keys", "/proc/kmsg", "/proc/latency_stats"]
MASKED_DIRS = ["/proc/acpi", "/proc/scsi", "/proc/asound", "/sys/firmware", "/sys/kernel/debug",
               "/sys/kernel/security"]


def test_proc_and_sys_masks(api, box):
    got = py(api, box["id"], f"""
import fcntl
res = {{}}
for p in {MASKED_FILES!r}:
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        res[p] = ["open", errno.errorcode[e.errno]]
        continue
    try:
        res[p] = ["read", os.read(fd, 4096).hex()]
    except OSError as e:
        res[p] = ["read", errno.errorcode[e.errno]]
    os.close(fd)
for p in {MASKED_DIRS!r}:
    try:
        res[p] = ["ls", os.listdir(p)]
    except OSError as e:
        res[p] = ["ls", errno.errorcode[e.errno]]
res["debugfs writable"] = err(lambda: open("/sys/kernel/debug/x", "w"))
emit(res)
""")
    for p in MASKED_FILES:
        what, val = got[p]
        assert (what == "open" and val in ("ENOENT", "EACCES", "EPERM")) or \
            (what == "read" and val in ("", "EACCES", "EPERM", "EINVAL")), \
            f"{p} is readable inside the sandbox: {got[p]}"
        if os.path.exists(p) and p != "/proc/kmsg":
            # present on the host: it must be there but masked inside, not just absent
            with open(p, "rb") as f:
                host = f.read(64)
            if host:
                assert got[p] != ["read", host.hex()], p
    for p in MASKED_DIRS:
        what, val = got[p]
        assert val == [] or val == "ENOENT", f"{p} not masked inside the sandbox: {got[p]}"
    assert got["debugfs writable"] == "EROFS", got
    # The host really has content there (the masks are doing something).
    with open("/proc/kallsyms", "rb") as f:
        assert f.read(64), "host /proc/kallsyms unexpectedly empty"


def test_proc_sys_sysrq_and_sysfs_not_writable(api, box):
    watched = ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe",
               "/sys/kernel/uevent_helper", "/proc/sys/vm/overcommit_memory",
               "/proc/sys/kernel/randomize_va_space"]
    before = {p: open(p).read() for p in watched if os.path.exists(p)}
    got = py(api, box["id"], """
res = {}
payload = {"/proc/sysrq-trigger": "h", "/proc/sys/kernel/core_pattern": "|/workspace/evil",
           "/proc/sys/kernel/modprobe": "/workspace/evil", "/sys/kernel/uevent_helper": "/workspace/evil",
           "/proc/sys/vm/overcommit_memory": "1", "/proc/sys/kernel/randomize_va_space": "0",
           "/proc/sys/vm/drop_caches": "3", "/proc/sys/kernel/hostname": "evil",
           "/proc/sys/net/ipv4/ip_forward": "1", "/sys/kernel/mm/transparent_hugepage/enabled": "never",
           "/proc/sys/fs/binfmt_misc/register": ":evil:M::MZ::/workspace/evil:"}
for p, data in payload.items():
    def w():
        fd = os.open(p, os.O_WRONLY)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
    res[p] = err(w)
emit(res)
""")
    # /proc/sys files belong to the host's root, so the permission check (EACCES) may come
    # before the read-only mount's EROFS; a file this kernel does not have is ENOENT.
    for p, v in got.items():
        if p == "/proc/sys/fs/binfmt_misc/register":
            assert v in ("EROFS", "ENOENT", "EACCES"), (p, got)
        elif not os.path.exists(p):
            assert v == "ENOENT", (p, got)
        else:
            assert v in ("EROFS", "EACCES"), f"{p}: write not refused ({v}): {got}"
    assert sum(v in ("EROFS", "EACCES") for v in got.values()) >= 6, got
    for p, v in before.items():
        assert open(p).read() == v, f"host {p} changed"


def test_workspace_symlinks_stay_inside(api, box, daemon, host_marker):
    name, _ = host_marker
    tag = rnd()
    got = py(api, box["id"], f"""
name = {name!r}; tag = {tag!r}; host_base = {daemon.base_dir!r}
links = {{"root": "/", "p1root": "/proc/1/root", "p1cwd": "/proc/1/cwd", "selfroot": "/proc/self/root",
         "up": "../../../../../../../../", "host": host_base}}
res = {{}}
for k, target in links.items():
    lp = "/workspace/l-%s-%s" % (tag, k)
    os.symlink(target, lp)
    res[k] = {{
        "marker": os.path.lexists(lp + "/root/" + name) or os.path.lexists(lp + "/home/" + name),
        "ls": err(os.listdir, lp + "/"),
    }}
res["root_is_ours"] = os.path.exists("/workspace/l-%s-root/workspace/l-%s-root" % (tag, tag))
res["stat_same"] = list(os.stat("/workspace/l-%s-up" % tag)[1:3]) == list(os.stat("/")[1:3])
emit(res)
""")
    for k in ("root", "p1root", "p1cwd", "selfroot", "up", "host"):
        assert got[k]["marker"] is False, f"symlink {k} reached the host: {got}"
    assert got["p1root"]["ls"] == "EACCES" and got["p1cwd"]["ls"] == "EACCES", got
    assert got["host"]["ls"] == "ENOENT", got
    assert got["root_is_ours"] is True and got["stat_same"] is True, got


def test_sandbox_delete_does_not_follow_symlinks(api, new_sandbox, daemon):
    """Removing a sandbox's workspace (DELETE) must not follow links the sandbox planted."""
    canary = f"/tmp/warren-escape-canary-{rnd()}"
    os.makedirs(canary + "/sub")
    for p in (canary + "/f", canary + "/sub/g"):
        with open(p, "w") as f:
            f.write("keep me")
    try:
        sb = new_sandbox()
        res = sh(api, sb["id"], f"ln -s {canary} /workspace/canary; ln -s {canary}/f /workspace/f; "
                                "ln -s / /workspace/root; mkdir -p /workspace/d/e && "
                                f"ln -s {canary}/sub /workspace/d/e/sub; ln -s /usr /workspace/usr")
        assert res["exit_code"] == 0, res
        ws = workspace_host_path(daemon, sb["id"])
        assert os.readlink(os.path.join(ws, "canary")) == canary  # the trap is on the host
        api.remove(sb["id"])
        assert not os.path.exists(ws)
        assert sorted(os.listdir(canary)) == ["f", "sub"], os.listdir(canary)
        assert os.path.exists(canary + "/sub/g")
        assert os.path.exists("/usr/bin/ls")
    finally:
        shutil.rmtree(canary, ignore_errors=True)


def test_chroot_escape_stays_inside(api, box, host_marker):
    name, _ = host_marker
    tag = rnd()
    got = py(api, box["id"], f"""
name = {name!r}; tag = {tag!r}
open("/workspace/inside-" + tag, "w").close()
root_id = list(os.stat("/")[1:3])
os.makedirs("/tmp/jail-" + tag + "/a/b", exist_ok=True)
res = {{}}
def attempt(kind):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out = {{}}
        try:
            keep = os.open("/", os.O_RDONLY)
            if kind == "cwd":
                os.chdir("/tmp")  # the working directory stays outside the new root
                os.chroot("/tmp/jail-" + tag + "/a")
            else:
                os.chdir("/tmp/jail-" + tag + "/a")
                os.chroot("/tmp/jail-" + tag)
                os.fchdir(keep)  # a directory fd opened outside the new root
            for i in range(64):
                os.chdir("..")
            os.chroot(".")
            out = {{"root": list(os.stat("/")[1:3]), "inside": os.path.exists("/workspace/inside-" + tag),
                   "marker": os.path.lexists("/root/" + name) or os.path.lexists("/home/" + name),
                   "ls": sorted(os.listdir("/"))}}
        except OSError as e:
            out = {{"error": errno.errorcode[e.errno]}}
        os.write(w, json.dumps(out).encode()); os._exit(0)
    os.close(w)
    data = b""
    while True:
        b = os.read(r, 65536)
        if not b: break
        data += b
    os.waitpid(pid, 0)
    return json.loads(data)
res["cwd"] = attempt("cwd")
res["fchdir"] = attempt("fchdir")
res["root_id"] = root_id
emit(res)
""")
    for kind in ("cwd", "fchdir"):
        r = got[kind]
        assert "error" not in r, f"the chroot attempt itself failed (test precondition): {got}"
        # The attempt "escapes" the jail, but only to the sandbox's own root, never the host's.
        assert r["root"] == got["root_id"], f"{kind}: reached a root other than the sandbox's: {got}"
        assert r["inside"] is True and r["marker"] is False, got
        assert "workspace" in r["ls"], got


def test_open_by_handle_at_denied(api, box):
    got = py(api, box["id"], """
AT_FDCWD = -100
# struct file_handle for the root inode (2) of an ext4 file system: the "shocker" breakout
class FH(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 8)]
fh = FH(8, 1, (ctypes.c_ubyte * 8)(2, 0, 0, 0, 0, 0, 0, 0))
mfd = os.open("/workspace", os.O_RDONLY)
res = {}
res["open_by_handle_at ws"] = sc("open_by_handle_at", mfd, ctypes.byref(fh), os.O_RDONLY)
res["open_by_handle_at etc"] = sc("open_by_handle_at", os.open("/etc", os.O_RDONLY), ctypes.byref(fh), os.O_RDONLY)
out = FH(8, 0)
mid = ctypes.c_int(0)
res["name_to_handle_at"] = sc("name_to_handle_at", AT_FDCWD, "/workspace", ctypes.byref(out), ctypes.byref(mid), 0)
emit(res)
""")
    for k, v in got.items():
        assert v == [-1, "EPERM"], f"{k}: {v}"


# ---------------------------------------------------------------------------------------------
# The files API: paths are resolved as the sandbox sees them, whatever the caller sends.


def _tar(members):
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as t:
        for name, kind, arg in members:
            ti = tarfile.TarInfo(name)
            if kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, arg
                t.addfile(ti)
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, arg
                t.addfile(ti)
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 1
                t.addfile(ti)
            else:
                ti.size = len(arg)
                t.addfile(ti, io.BytesIO(arg))
    return bio.getvalue()


def test_files_api_read_stays_inside(api, box, daemon, new_sandbox, host_marker):
    name, _ = host_marker
    sid = box["id"]
    other = new_sandbox()
    bws = workspace_host_path(daemon, other["id"])
    with open(os.path.join(bws, "bsecret"), "w") as f:
        f.write("B-SECRET")
    tag = rnd()
    res = sh(api, sid, f"cd /workspace && ln -s / r-{tag} && ln -s /proc/1/root p1-{tag} && "
                       f"ln -s {bws} b-{tag} && ln -s ../../../../../../../ up-{tag} && "
                       f"mkfifo fifo-{tag}")
    assert res["exit_code"] == 0, res
    cases = {
        f"../../../../root/{name}": (404,),
        f"/root/{name}": (404,),
        f"/workspace/../../../root/{name}": (404,),
        f"/workspace/r-{tag}/root/{name}": (404,),
        f"/workspace/up-{tag}/root/{name}": (404,),
        f"/workspace/p1-{tag}/root/{name}": (403,),
        f"/proc/1/root/root/{name}": (403,),
        f"/proc/1/cwd/root/{name}": (403,),
        f"{bws}/bsecret": (404,),
        f"/workspace/b-{tag}/bsecret": (404,),
        "/etc/shadow": (404,),
        f"/workspace/fifo-{tag}": (400,),
        "/dev/zero": (400,),
        "/proc/kallsyms": (400,),
        "/proc/self/environ": (404,),
    }
    for path, codes in cases.items():
        t0 = time.monotonic()
        r = api.get(f"/v1/sandboxes/{sid}/files?path={q(path)}")
        assert time.monotonic() - t0 < 15, f"GET {path} hung the daemon"
        assert r.status in codes, f"GET {path}: {r!r}"
        assert b"HOST-SECRET" not in r.body and b"B-SECRET" not in r.body, f"GET {path}: {r!r}"
        if codes[0] in (403, 404):
            r = api.get(f"/v1/sandboxes/{sid}/files?path={q(path)}&stat=1&sha256=1")
            assert r.status == codes[0], f"stat {path}: {r!r}"
    r = api.get(f"/v1/sandboxes/{sid}/files/list?path={q('/workspace/up-' + tag)}&recursive=1")
    assert r.status == 200 and name not in r.body.decode(), r
    # The archive holds the links as links, never what they point to.
    r = api.get(f"/v1/sandboxes/{sid}/archive?path=/workspace")
    assert r.status == 200, r
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:*") as t:
        members = {m.name: m for m in t.getmembers()}
    for k in (f"r-{tag}", f"up-{tag}", f"b-{tag}", f"p1-{tag}"):
        m = members.get(f"workspace/{k}")
        assert m is not None and m.issym(), f"{k} not archived as a symlink: {members.keys()}"
    assert not any(n.startswith(f"workspace/r-{tag}/") for n in members), list(members)
    assert api.healthy()


def test_files_api_write_stays_inside(api, box, daemon, new_sandbox):
    sid = box["id"]
    other = new_sandbox()
    bws = workspace_host_path(daemon, other["id"])
    before_b = sorted(os.listdir(bws))
    tag = rnd()
    hp = f"/tmp/warren-escape-put-{tag}"
    res = sh(api, sid, f"cd /workspace && ln -s / r-{tag} && ln -s /proc/1/root p1-{tag} && "
                       f"ln -s {bws} b-{tag} && ln -s /usr/bin ub-{tag} && ln -s {hp}-t t-{tag}")
    assert res["exit_code"] == 0, res

    def put(path, data=b"EVIL", extra=""):
        return api.request("PUT", f"/v1/sandboxes/{sid}/files?path={q(path)}{extra}", body=data)

    # These may succeed, but only inside the sandbox.
    for path in (f"../../../../{hp}-a", f"{hp}-b", f"/workspace/r-{tag}{hp}-c",
                 f"/workspace/t-{tag}", f"{bws}/evil", f"/workspace/b-{tag}/evil2"):
        r = put(path, extra="&mkdir=1")
        assert r.status in (200, 400, 403, 404), f"PUT {path}: {r!r}"
    for p in (f"{hp}-a", f"{hp}-b", f"{hp}-c", f"{hp}-t"):
        assert not os.path.lexists(p), f"the files API wrote the host's {p}"
    assert sorted(os.listdir(bws)) == before_b, "the files API wrote into another sandbox"
    # These must be refused.
    for path, data in ((f"/workspace/ub-{tag}/evil", b"x"), ("/usr/evil", b"x"),
                       (f"/workspace/p1-{tag}/tmp/evil", b"x"), ("/etc/passwd", b"evil::0:0::/:/bin/sh\n"),
                       ("/proc/sys/kernel/core_pattern", b"|/workspace/evil"),
                       ("/proc/sysrq-trigger", b"h")):
        r = put(path, data)
        assert r.status == 403, f"PUT {path}: {r!r}"
    assert not os.path.exists("/usr/bin/evil") and not os.path.exists("/usr/evil")
    # Deleting through links removes the link at most.
    r = api.delete(f"/v1/sandboxes/{sid}/files?path={q('/workspace/ub-' + tag)}&recursive=1")
    assert r.status == 204, r
    r = api.delete(f"/v1/sandboxes/{sid}/files?path={q('/workspace/r-' + tag + '/usr/bin/ls')}")
    assert r.status == 403, r
    assert os.path.exists("/usr/bin/ls")
    assert exec_(api, sid, argv=["ls", "/usr/bin/ls"])["exit_code"] == 0


@pytest.mark.parametrize("members", [
    [("a", "sym", "/"), ("a/tmp/x", "f", b"E")],
    [("../../../../tmp/warren-escape-tar", "f", b"E")],
    [("/tmp/warren-escape-tar", "f", b"E")],
    [("l", "sym", "/etc/passwd"), ("l", "f", b"E")],
    [("h", "hard", "/etc/passwd")],
    [("d", "chr", "")],
    [("s", "sym", "../../.."), ("s/tmp/warren-escape-tar", "f", b"E")],
    [("ok/x", "f", b"E"), ("ok", "sym", "/usr"), ("ok/warren-escape-tar", "f", b"E")],
], ids=["link-then-file", "dotdot", "absolute", "replace-with-file", "hardlink", "device",
        "relative-link-out", "dir-swapped-for-link"])
def test_archive_upload_stays_inside(api, box, members):
    sid = box["id"]
    dest = f"/workspace/ar-{rnd()}"
    r = api.request("PUT", f"/v1/sandboxes/{sid}/archive?path={q(dest)}", body=_tar(members))
    assert r.status == 400, f"malicious archive accepted: {r!r}"
    assert not os.path.exists("/tmp/warren-escape-tar")
    assert not os.path.exists("/usr/warren-escape-tar")
    res = sh(api, sid, "ls /tmp/warren-escape-tar /usr/warren-escape-tar /tmp/x /etc/passwd.x "
                       "2>/dev/null; true")
    assert res["stdout"] == "", res


def test_disk_images_not_named_inside(api, daemon, new_sandbox):
    """Block devices are not namespaced: /sys would show every loop device's backing file, which
    names the sandboxes' disk images and the daemon's state directory. Masked."""
    a = new_sandbox()
    new_sandbox()  # a neighbour with its own disk
    r = sh(api, a["id"], "cat /sys/block/*/loop/backing_file /sys/class/block/*/loop/backing_file "
                         "/sys/devices/virtual/block/*/loop/backing_file 2>/dev/null; "
                         "cat /proc/self/mountinfo /proc/mounts")
    assert daemon.state_dir not in r["stdout"] and ".img" not in r["stdout"], r["stdout"]
