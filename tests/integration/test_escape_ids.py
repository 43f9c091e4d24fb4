"""Escape suite: identities. Root inside is an unprivileged host uid (>= 1048576), the maps are a
single range that does not contain host 0 and cannot be rewritten, setgroups is denied, files the
sandbox (or the files API on its behalf) creates belong to its range on the host, and two
sandboxes never share a range."""

import io
import os
import tarfile
import urllib.parse

from conftest import exec_, sh
from escape_util import (UID_BASE, UID_RANGE, box, host_status, init_pid, py, rnd,  # noqa: F401
                         workspace_host_path)


def maps_of(api, sid):
    return py(api, sid, """
emit({"uid": open("/proc/self/uid_map").read().split("\\n")[:-1],
      "gid": open("/proc/self/gid_map").read().split("\\n")[:-1],
      "setgroups": open("/proc/self/setgroups").read().strip()})
""")


def parse_map(lines):
    assert len(lines) == 1, f"expected a single range: {lines}"
    inside, outside, count = (int(x) for x in lines[0].split())
    return inside, outside, count


def test_maps_single_unprivileged_range(api, box):
    got = maps_of(api, box["id"])
    for k in ("uid", "gid"):
        inside, outside, count = parse_map(got[k])
        assert inside == 0, got
        assert outside >= UID_BASE, f"{k} 0 maps to host {outside}: {got}"
        assert not (outside <= 0 < outside + count), f"{k} map contains host 0: {got}"
        assert count <= UID_RANGE, got
    assert got["setgroups"] == "deny", got


def test_maps_and_groups_cannot_be_changed(api, box):
    got = py(api, box["id"], """
def write(p, data):
    def w():
        fd = os.open(p, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return err(w)
res = {
  "uid_map": write("/proc/self/uid_map", b"0 0 1\\n"),
  "gid_map": write("/proc/self/gid_map", b"0 0 1\\n"),
  "setgroups allow": write("/proc/self/setgroups", b"allow"),
  "init uid_map": write("/proc/1/uid_map", b"0 0 4294967295\\n"),
  "setgroups([0])": err(os.setgroups, [0]),
  "setgroups([])": err(os.setgroups, []),
  "setuid unmapped": err(os.setuid, 65536),
  "setresuid 0 inside": err(os.setresuid, 0, 0, 0),
  "chown unmapped": err(os.chown, "/tmp", 70000, 70000),
}
res["maps after"] = open("/proc/self/uid_map").read().split()
res["groups"] = os.getgroups()
res["setgroups after"] = open("/proc/self/setgroups").read().strip()
emit(res)
""")
    assert got["uid_map"] == "EPERM" and got["gid_map"] == "EPERM", got
    assert got["setgroups allow"] in ("EPERM", "EACCES"), got
    assert got["setgroups after"] == "deny", got
    assert got["init uid_map"] in ("EPERM", "EACCES"), got
    assert got["setgroups([0])"] == "EPERM" and got["setgroups([])"] == "EPERM", got
    assert got["setuid unmapped"] == "EINVAL", got
    assert got["setresuid 0 inside"] is None, got  # 0 inside is allowed: it is the sandbox's 0
    assert got["chown unmapped"] == "EINVAL", got
    assert int(got["maps after"][1]) >= UID_BASE, got


def test_workspace_files_owned_by_sandbox_range(api, box, daemon):
    sid, tag = box["id"], rnd()
    res = sh(api, sid, f"cd /workspace && mkdir d-{tag} && echo x > f-{tag} && "
                       f"echo y > u-{tag} && chown 1000:1001 u-{tag} && "
                       f"echo z > n-{tag} && chown 65534:65534 n-{tag} && "
                       f"ln -s / s-{tag} && mkfifo p-{tag} && chmod 4755 f-{tag} && "
                       f"stat -c '%u %g' f-{tag} u-{tag}")
    assert res["exit_code"] == 0 and res["stdout"] == "0 0\n1000 1001\n", res
    # via the files API and archive upload (the daemon writes on the sandbox's behalf)
    r = api.request("PUT", f"/v1/sandboxes/{sid}/files?path=/workspace/api-{tag}", body=b"a")
    assert r.status == 200, r
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as t:
        ti = tarfile.TarInfo(f"t-{tag}")
        ti.size, ti.uid, ti.gid = 1, 0, 0
        t.addfile(ti, io.BytesIO(b"t"))
        ti = tarfile.TarInfo(f"troot-{tag}")
        ti.size, ti.uid, ti.gid, ti.mode = 1, 0, 0, 0o4755
        t.addfile(ti, io.BytesIO(b"t"))
    r = api.request("PUT", f"/v1/sandboxes/{sid}/archive?path={urllib.parse.quote('/workspace/ar-' + tag)}",
                    body=bio.getvalue())
    assert r.status == 200, r
    ws = workspace_host_path(daemon, sid)
    base = os.stat(ws).st_uid
    assert base >= UID_BASE, f"the workspace belongs to host uid {base}"
    want = {f"d-{tag}": (0, 0), f"f-{tag}": (0, 0), f"u-{tag}": (1000, 1001),
            f"n-{tag}": (65534, 65534), f"s-{tag}": (0, 0), f"p-{tag}": (0, 0),
            f"api-{tag}": (0, 0), f"ar-{tag}": (0, 0), f"ar-{tag}/t-{tag}": (0, 0),
            f"ar-{tag}/troot-{tag}": (0, 0)}
    for name, (u, g) in want.items():
        st = os.lstat(os.path.join(ws, name))
        assert (st.st_uid, st.st_gid) == (base + u, base + g), \
            f"{name}: host owner {st.st_uid}:{st.st_gid}, expected {base + u}:{base + g}"
        assert st.st_uid != 0 and st.st_gid != 0
    # a setuid file made inside is setuid for an unprivileged host uid only
    st = os.stat(os.path.join(ws, f"f-{tag}"))
    assert st.st_mode & 0o4000 and st.st_uid >= UID_BASE
    st = os.stat(os.path.join(ws, f"ar-{tag}", f"troot-{tag}"))
    assert st.st_uid >= UID_BASE, st


def test_root_inside_is_not_host_root(api, box, daemon):
    ipid = init_pid(daemon, box)
    st = host_status(ipid)
    uids = [int(x) for x in st["Uid"].split()]
    gids = [int(x) for x in st["Gid"].split()]
    assert all(u >= UID_BASE for u in uids) and all(g >= UID_BASE for g in gids), st["Uid"]
    # a command's processes, seen from the host
    r = api.post(f"/v1/sandboxes/{box['id']}/commands", {"argv": ["sleep", "31.5"]})
    assert r.status == 201, r
    try:
        ns = os.readlink(f"/proc/{ipid}/ns/pid")
        found = []
        for p in os.listdir("/proc"):
            try:
                if p.isdigit() and os.readlink(f"/proc/{p}/ns/pid") == ns:
                    found.append(host_status(int(p)))
            except OSError:
                pass
        assert found, "no sandbox process seen from the host"
        for s in found:
            for field in ("Uid", "Gid"):
                assert all(int(x) >= UID_BASE for x in s[field].split()), (field, s[field])
        # files owned by host root look like nobody inside and stay untouchable
        res = exec_(api, box["id"], argv=["stat", "-c", "%u %g", "/usr/bin/ls", "/etc/passwd"])
        assert res["stdout"].split("\n")[:2] == ["65534 65534", "65534 65534"], res
    finally:
        api.post(f"/v1/sandboxes/{box['id']}/commands/{r.json['command_id']}/kill",
                 {"signal": 9})


def test_two_sandboxes_disjoint_ranges(api, new_sandbox, daemon):
    a, b = new_sandbox(), new_sandbox()
    ranges = []
    for sb in (a, b):
        got = maps_of(api, sb["id"])
        _, uo, uc = parse_map(got["uid"])
        _, go, gc = parse_map(got["gid"])
        ranges.append(((uo, uo + uc), (go, go + gc)))
        assert sh(api, sb["id"], "touch /workspace/owner")["exit_code"] == 0
        st = os.stat(os.path.join(workspace_host_path(daemon, sb["id"]), "owner"))
        assert st.st_uid == uo and st.st_gid == go, (st, got)
    (ua, ga), (ub, gb) = ranges
    assert ua[1] <= ub[0] or ub[1] <= ua[0], f"uid ranges overlap: {ua} {ub}"
    assert ga[1] <= gb[0] or gb[1] <= ga[0], f"gid ranges overlap: {ga} {gb}"
    # so B's files are "nobody" to A even if A could name them (it cannot: see test_escape_fs)
    pa, pb = init_pid(daemon, a), init_pid(daemon, b)
    assert host_status(pa)["Uid"] != host_status(pb)["Uid"]


def test_workspace_closed_to_other_host_users(fresh_daemon):
    """A sandbox plants a setuid binary and a secret in its workspace. On the host, an unprivileged
    user (nobody) who knows the path - a sandbox process's /proc/<pid>/mountinfo, world-readable,
    names it - must neither read the sandbox's files nor run the binary as the sandbox's uid.
    The daemon's base dir is opened up to 0755 here as /var/lib is for the default deployment
    (`--state-dir /var/lib/warren`)."""
    import subprocess
    from conftest import Api
    d = fresh_daemon()
    os.chmod(d.base_dir, 0o755)
    api = Api(d)
    sb = api.create()
    src = (r'#include <stdio.h>' '\n' r'#include <unistd.h>' '\n'
           r'int main(int c, char **v) { setreuid(geteuid(), geteuid());'
           r' printf("euid=%d\n", geteuid()); fflush(stdout);'
           r' if (c > 1) execv(v[1], v + 1); return 0; }' '\n')
    res = exec_(api, sb["id"], argv=["sh", "-c", "cat > /tmp/s.c && gcc -o /workspace/s /tmp/s.c"
                                     " && chmod 4755 /workspace/s && echo ws-secret > /workspace/"
                                     "secret && chmod 600 /workspace/secret"], stdin=src)
    assert res["exit_code"] == 0, res
    ws = workspace_host_path(d, sb["id"])
    # what any host user can learn from a sandbox process
    ipid = init_pid(d, sb)
    leak = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                           "cat", f"/proc/{ipid}/mountinfo"], capture_output=True, text=True)
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    run = subprocess.run(as_nobody + [ws + "/s", "/bin/cat", ws + "/secret"],
                         capture_output=True, text=True)
    # The disk is mounted nosuid in the daemon's own mount namespace: if the host user gets to
    # run the binary at all, it runs as that user.
    assert "ws-secret" not in run.stdout and run.stdout in ("", "euid=65534\n"), (
        f"host user nobody ran the sandbox's setuid binary {ws}/s (path readable in "
        f"/proc/{ipid}/mountinfo: {ws in leak.stdout}) and got: {run.stdout!r}")
    ls = subprocess.run(as_nobody + ["ls", ws], capture_output=True, text=True)
    assert ls.returncode != 0, f"host user nobody can list a sandbox workspace: {ls.stdout!r}"
    api.remove(sb["id"])


def test_planted_file_capabilities_inert_on_host(api, box, daemon):
    """The sandbox's root may set file capabilities (CAP_SETFCAP), but the kernel records them
    for its own root (v3, rootid = its host uid): executed by a host process, they grant nothing."""
    import subprocess
    tag = rnd()
    src = (r'#include <stdio.h>' '\n' r'#include <string.h>' '\n'
           r'int main(void) { char l[256]; FILE *f = fopen("/proc/self/status", "r");'
           r' while (fgets(l, sizeof l, f)) if (!strncmp(l, "Cap", 3)) fputs(l, stdout);'
           r' return 0; }' '\n')
    res = exec_(api, box["id"], argv=["sh", "-c", f"cat > /tmp/c{tag}.c && gcc -o /workspace/fc-{tag}"
                                      f" /tmp/c{tag}.c && setcap cap_sys_admin,cap_sys_module,"
                                      f"cap_dac_override+eip /workspace/fc-{tag} && "
                                      f"getcap /workspace/fc-{tag}"], stdin=src)
    assert res["exit_code"] == 0 and "cap_sys_admin" in res["stdout"], res
    path = os.path.join(workspace_host_path(daemon, box["id"]), f"fc-{tag}")
    raw = os.getxattr(path, "security.capability")
    magic = int.from_bytes(raw[:4], "little")
    assert magic >> 24 == 3, f"stored as v{magic >> 24}, not a namespaced (v3) capability"
    rootid = int.from_bytes(raw[20:24], "little")
    assert rootid >= UID_BASE, f"file capabilities recorded for host uid {rootid}"
    # run it on the host as an unprivileged user (through an fd: the state dir is 0700 here)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.set_inheritable(fd, True)

        def drop():
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
        p = subprocess.run([f"/proc/self/fd/{fd}"], preexec_fn=drop, close_fds=False,
                           capture_output=True, text=True)
    finally:
        os.close(fd)
    assert p.returncode == 0, p
    caps = dict(l.split(":", 1) for l in p.stdout.splitlines())
    for k in ("CapPrm", "CapEff"):
        assert int(caps[k], 16) == 0, f"a host process gained {k}={caps[k]} from a sandbox file"
