"""Named volumes (issue 11): POST/GET/DELETE /v1/volumes, `volumes` and `workspace` in a sandbox
spec, sharing between sandboxes (read-write and read-only, idmapped ownership), the size limit,
durability (sandbox deletion, kill -9 of the daemon, --stop-sandboxes-on-exit), and the CLI
(`warren volume ...`, `-v NAME:/path[:ro]`).

The module's daemon is shared: every test removes the volumes and sandboxes it makes. Tests that
restart a daemon use one of their own (fresh_daemon); the fixtures check on the way out that no
mount or loop device is left.
"""

import glob
import os
import random
import shutil
import signal
import string
import subprocess

from conftest import WAIT_S, Api, _read, sh, wait_for
from registry import busybox_tar, tpl_path

CLI_TIMEOUT_S = 60


def rand(n=6):
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def make_volume(api, size_mib=None, name=None):
    body = {"name": name or "vol-" + rand()}
    if size_mib is not None:
        body["size_mib"] = size_mib
    r = api.post("/v1/volumes", body)
    assert r.status == 201, r
    return r.json


def remove_volume(api, name):
    r = api.delete(f"/v1/volumes/{name}")
    assert r.status in (204, 404), r


def loop_devices(d):
    out = []
    for dev in glob.glob("/sys/block/loop*/loop/backing_file"):
        backing = _read(dev) or ""
        if d.base_dir in backing:
            out.append((dev, backing.strip()))
    return out


def daemon_mounts(d):
    return [l for l in (_read("/proc/self/mountinfo") or "").splitlines() if d.base_dir in l]


# ---------------------------------------------------------------------------------------------
# the resource


def test_create_list_get_delete(api):
    name = "vol-" + rand()
    v = make_volume(api, 64, name)
    try:
        assert v["name"] == name and v["size_mib"] == 64 and v["attached"] == []
        assert isinstance(v["used_bytes"], int) and 0 <= v["used_bytes"] < 1 << 20, v
        assert v["created_at"].endswith("Z"), v
        names = [x["name"] for x in api.get("/v1/volumes").json["volumes"]]
        assert name in names
        g = api.get(f"/v1/volumes/{name}")
        assert g.status == 200 and g.json["size_mib"] == 64, g
        # Same name again: a conflict.
        r = api.post("/v1/volumes", {"name": name})
        assert r.status == 409, r
    finally:
        remove_volume(api, name)
    assert api.get(f"/v1/volumes/{name}").status == 404
    assert name not in [x["name"] for x in api.get("/v1/volumes").json["volumes"]]
    r = api.delete(f"/v1/volumes/{name}")
    assert r.status == 404 and r.error_code == "not_found", r


def test_default_size_and_bad_requests(api):
    v = make_volume(api)
    try:
        assert v["size_mib"] == 1024, v
    finally:
        remove_volume(api, v["name"])
    for body, status in [({}, 400), ({"name": "-bad"}, 400), ({"name": "a/b"}, 400), ({"name": "x.img"}, 400),
                         ({"name": "ok-" + rand(), "size_mib": 0}, 400),
                         ({"name": "ok-" + rand(), "size_mib": "1"}, 400),
                         ({"name": "ok-" + rand(), "extra": 1}, 400),
                         ({"name": "ok-" + rand(), "size_mib": 1 << 40}, 422)]:
        r = api.post("/v1/volumes", body)
        assert r.status == status, (body, r)


# ---------------------------------------------------------------------------------------------
# attaching


def test_shared_read_write_and_read_only(api, new_sandbox):
    v = make_volume(api, 64)
    name = v["name"]
    try:
        a = new_sandbox(volumes=[{"name": name, "path": "/data"}])
        b = new_sandbox(volumes=[{"name": name, "path": "/mnt/shared", "read_only": True}])
        assert a["volumes"] == [{"name": name, "path": "/data", "read_only": False}], a
        assert b["volumes"] == [{"name": name, "path": "/mnt/shared", "read_only": True}], b
        r = sh(api, a["id"], "echo hello > /data/f && mkdir /data/d && "
               "echo x > /data/d/u && chown 1000:1000 /data/d/u")
        assert r["exit_code"] == 0, r
        # Any user may work in a volume's top directory (mode 1777, as /tmp).
        r = sh(api, a["id"], "echo u > /data/by-user && stat -c %a /data", user="1000")
        assert r["exit_code"] == 0 and r["stdout"] == "1777\n", r
        r = sh(api, b["id"], "cat /mnt/shared/f; stat -c '%u:%g' /mnt/shared/f /mnt/shared/d/u")
        assert r["exit_code"] == 0, r
        # Root's file is root's in the other sandbox too (idmapped: both roots store id 0), and
        # uid 1000's is 1000's.
        assert r["stdout"] == "hello\n0:0\n1000:1000\n", r
        assert sh(api, b["id"], "stat -c %u /mnt/shared/by-user")["stdout"] == "1000\n"
        r = sh(api, b["id"], "echo no > /mnt/shared/g")
        assert r["exit_code"] != 0 and "Read-only file system" in r["stderr"], r
        r = sh(api, b["id"], "rm /mnt/shared/f")
        assert r["exit_code"] != 0 and "Read-only file system" in r["stderr"], r
        # The writer sees nothing from the reader, and the reader sees new writes at once.
        assert sh(api, a["id"], "echo more >> /data/f")["exit_code"] == 0
        assert sh(api, b["id"], "cat /mnt/shared/f")["stdout"] == "hello\nmore\n"
        g = api.get(f"/v1/volumes/{name}").json
        att = sorted((x["sandbox"], x["path"], x["read_only"]) for x in g["attached"])
        assert att == sorted([(a["id"], "/data", False), (b["id"], "/mnt/shared", True)]), g
        assert g["used_bytes"] > 0, g
        # Deleting it while attached (in any state) is refused.
        r = api.delete(f"/v1/volumes/{name}")
        assert r.status == 409 and r.error_code == "volume_in_use", r
        assert api.post(f"/v1/sandboxes/{b['id']}/stop", {"grace_s": 0}).status == 200
        r = api.delete(f"/v1/volumes/{name}")
        assert r.status == 409 and r.error_code == "volume_in_use", r
        # A stopped sandbox gets its volume again when it starts.
        assert api.post(f"/v1/sandboxes/{b['id']}/start", {}).status == 200
        r = sh(api, b["id"], "cat /mnt/shared/f; touch /mnt/shared/h")
        assert r["stdout"] == "hello\nmore\n" and "Read-only" in r["stderr"], r
        api.remove(a["id"])
        api.remove(b["id"])
        r = api.delete(f"/v1/volumes/{name}")
        assert r.status == 204, r
    finally:
        remove_volume(api, name)


def test_volume_is_not_the_sandbox_disk(api, new_sandbox):
    """A volume is its own file system: ENOSPC at its size, while the sandbox's disk still has
    room, and the host's uid of the sandbox cannot be seen in it."""
    v = make_volume(api, 8)
    try:
        sb = new_sandbox(volumes=[{"name": v["name"], "path": "/data"}])
        r = sh(api, sb["id"], "dd if=/dev/zero of=/data/big bs=1M count=16 2>&1; echo rc=$?")
        assert "No space left on device" in r["stdout"] and "rc=0" not in r["stdout"], r
        r = sh(api, sb["id"], "dd if=/dev/zero of=/tmp/ok bs=1M count=16 2>&1; echo rc=$?")
        assert "rc=0" in r["stdout"], r
        used = api.get(f"/v1/volumes/{v['name']}").json["used_bytes"]
        assert 4 << 20 < used <= 8 << 20, used
        r = sh(api, sb["id"], "df -P /data | tail -1; grep ' /data ' /proc/self/mountinfo")
        assert r["exit_code"] == 0 and "idmapped" in r["stdout"], r
        api.remove(sb["id"])
    finally:
        remove_volume(api, v["name"])


def test_workspace_volume(api, new_sandbox):
    v = make_volume(api, 32)
    try:
        a = new_sandbox(workspace=v["name"])
        assert a["volumes"] == [{"name": v["name"], "path": "/workspace", "read_only": False}], a
        r = sh(api, a["id"], "pwd; echo w > w.txt")
        assert r["exit_code"] == 0 and r["stdout"] == "/workspace\n", r
        # The files API sees the volume too (it works in the sandbox's own mount namespace).
        r = api.get(f"/v1/sandboxes/{a['id']}/files?path=/workspace/w.txt")
        assert r.status == 200 and r.body == b"w\n", r
        b = new_sandbox(volumes=[{"name": v["name"], "path": "/srv/ws", "read_only": True}])
        assert sh(api, b["id"], "cat /srv/ws/w.txt")["stdout"] == "w\n"
        # Nested: a second volume inside the first one's path is mounted on top of it.
        v2 = make_volume(api, 16)
        try:
            c = new_sandbox(volumes=[{"name": v2["name"], "path": "/workspace/inner"}],
                            workspace=v["name"])
            assert [x["path"] for x in c["volumes"]] == ["/workspace", "/workspace/inner"], c
            r = sh(api, c["id"], "echo i > /workspace/inner/i && cat /workspace/w.txt")
            assert r["exit_code"] == 0 and r["stdout"] == "w\n", r
            api.remove(c["id"])
        finally:
            remove_volume(api, v2["name"])
        api.remove(a["id"])
        api.remove(b["id"])
    finally:
        remove_volume(api, v["name"])


def test_bad_volume_specs(api):
    v = make_volume(api, 16)
    name = v["name"]
    try:
        r = api.post("/v1/sandboxes", {"volumes": [{"name": "nope-" + rand(), "path": "/d"}]})
        assert r.status == 404 and r.error_code == "not_found" and "nope-" in r.error_message, r
        r = api.post("/v1/sandboxes", {"workspace": "nope-" + rand()})
        assert r.status == 404 and r.error_code == "not_found", r
        for path in ["/", "data", "", "/a/../b", "/a/./b", "/a//b", "/a/", "/..", "/proc",
                     "/proc/x", "/sys/fs", "/dev/shm", "/run/warren", "/run/warren/x", "/run",
                     "/usr", "/etc", "/lib", "/bin", "/a\nb"]:
            r = api.post("/v1/sandboxes", {"volumes": [{"name": name, "path": path}]})
            assert r.status == 400 and r.error_code == "bad_request", (path, r)
            if path:
                assert path in r.error_message or repr(path) in r.error_message or \
                    "control" in r.error_message, (path, r)
        for vols in [{"name": name}, [{"name": name}], [{"path": "/d"}], [name],
                     [{"name": name, "path": "/d", "read_only": "yes"}],
                     [{"name": name, "path": "/d", "extra": 1}],
                     [{"name": name, "path": "/d"}, {"name": name, "path": "/d"}],
                     [{"name": name, "path": f"/d{i}"} for i in range(17)]]:
            r = api.post("/v1/sandboxes", {"volumes": vols})
            assert r.status == 400, (vols, r)
        r = api.post("/v1/sandboxes", {"workspace": name,
                                       "volumes": [{"name": name, "path": "/workspace"}]})
        assert r.status == 400, r
        assert api.get(f"/v1/volumes/{name}").json["attached"] == []
    finally:
        remove_volume(api, name)


def test_thin_provisioning_counts_volumes(fresh_daemon):
    """Volumes are admitted like sandbox disks, and their sizes are promised host disk."""
    d = fresh_daemon(extra_args=["--maxima", "disk_mib=1099511627776"])
    api = Api(d)
    free_mib = shutil.disk_usage(d.state_dir).free >> 20
    before = api.get("/v1/info").json["disk"]["promised_bytes"]
    # Above --disk-overcommit (default 16) times the host's free space.
    r = api.post("/v1/volumes", {"name": "huge", "size_mib": 17 * free_mib})
    assert r.status == 503 and "not enough host disk" in r.error_message, r
    assert api.get("/v1/volumes").json["volumes"] == []
    v = make_volume(api, 64, "small")
    # Admission of sandboxes and volumes adds up these promises (docs/API.md, "Host disk").
    assert api.get("/v1/info").json["disk"]["promised_bytes"] == before + (64 << 20)
    remove_volume(api, v["name"])
    assert api.get("/v1/info").json["disk"]["promised_bytes"] == before


# ---------------------------------------------------------------------------------------------
# durability


def test_data_survives_sandbox_delete_and_kill9(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    name = make_volume(api, 32)["name"]
    a = api.create(volumes=[{"name": name, "path": "/data"}])
    assert sh(api, a["id"], "echo one > /data/one")["exit_code"] == 0
    api.remove(a["id"])
    # A running sandbox with the volume, across a crash of the daemon.
    b = api.create(volumes=[{"name": name, "path": "/data"}])
    assert sh(api, b["id"], "cat /data/one && echo two > /data/two")["stdout"] == "one\n"
    d.kill9()
    d.restart_same()
    vols = api.get("/v1/volumes").json["volumes"]
    assert [(x["name"], x["size_mib"]) for x in vols] == [(name, 32)], vols
    s = api.get(f"/v1/sandboxes/{b['id']}").json
    assert s["state"] == "running" and s["volumes"][0]["name"] == name, s
    r = sh(api, b["id"], "cat /data/one /data/two; echo three > /data/three")
    assert r["exit_code"] == 0 and r["stdout"] == "one\ntwo\n", r
    # Re-adopted: stop and start mount it again.
    assert api.post(f"/v1/sandboxes/{b['id']}/stop", {"grace_s": 0}).status == 200
    assert api.post(f"/v1/sandboxes/{b['id']}/start", {}).status == 200
    assert sh(api, b["id"], "cat /data/three")["stdout"] == "three\n"
    c = api.create(volumes=[{"name": name, "path": "/v", "read_only": True}])
    assert sh(api, c["id"], "cat /v/one /v/three")["stdout"] == "one\nthree\n"
    api.remove(b["id"])
    api.remove(c["id"])
    assert api.delete(f"/v1/volumes/{name}").status == 204


def test_stop_sandboxes_on_exit_unmounts_volumes(fresh_daemon):
    d = fresh_daemon(extra_args=["--stop-sandboxes-on-exit"])
    api = Api(d)
    name = make_volume(api, 32)["name"]
    sb = api.create(volumes=[{"name": name, "path": "/data"}])
    assert sh(api, sb["id"], "echo kept > /data/f")["exit_code"] == 0
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=WAIT_S) == 0
    d.logf.close()
    # Nothing of the daemon's remains on the host: no pinned namespace, no volume mount, no loop
    # device.
    assert not daemon_mounts(d), daemon_mounts(d)
    wait_for(lambda: not loop_devices(d), what="loop devices released")
    # The next daemon mounts the volume again; the stopped sandbox gets it on start.
    d.restart_same(extra_args=[])
    assert api.get(f"/v1/sandboxes/{sb['id']}").json["state"] == "stopped"
    assert api.post(f"/v1/sandboxes/{sb['id']}/start", {}).status == 200
    assert sh(api, sb["id"], "cat /data/f")["stdout"] == "kept\n"
    other = api.create(volumes=[{"name": name, "path": "/data"}])
    assert sh(api, other["id"], "cat /data/f")["stdout"] == "kept\n"
    api.remove(sb["id"])
    api.remove(other["id"])
    assert api.delete(f"/v1/volumes/{name}").status == 204


def test_image_sandbox_fork_and_snapshot(api, new_sandbox):
    """An image sandbox gets its volumes on top of its overlay root; a fork shares them (the same
    volume, attached), and neither a fork nor a snapshot copies their contents."""
    tpl = "volbb-" + rand()
    r = api.request("PUT", tpl_path(tpl, "archive"), body=busybox_tar(),
                    headers={"Content-Type": "application/octet-stream"}, timeout=300)
    assert r.status in (200, 201), r
    v = make_volume(api, 16)
    try:
        a = new_sandbox(template=tpl, volumes=[{"name": v["name"], "path": "/data"}])
        r = sh(api, a["id"], "echo 1 > /data/f && echo r > /root/r && stat -c %u:%g /data/f")
        assert r["exit_code"] == 0 and r["stdout"] == "0:0\n", r
        h = new_sandbox(volumes=[{"name": v["name"], "path": "/data", "read_only": True}])
        assert sh(api, h["id"], "stat -c %u:%g /data/f; cat /data/f")["stdout"] == "0:0\n1\n"
        r = api.post(f"/v1/sandboxes/{a['id']}/fork", {}, timeout=300)
        assert r.status == 201, r
        f = r.json
        try:
            assert f["volumes"] == a["volumes"], f
            # The same volume (not a copy): a write in one shows in the other.
            r = sh(api, f["id"], "cat /root/r /data/f && echo 2 > /data/f")
            assert r["stdout"] == "r\n1\n", r
            assert sh(api, a["id"], "cat /data/f")["stdout"] == "2\n"
        finally:
            api.remove(f["id"])
            api.delete(tpl_path(f["template"]))
        # A snapshot has the sandbox's root without the volume's files.
        snap = "volsnap-" + rand()
        r = api.post(f"/v1/sandboxes/{a['id']}/snapshot", {"name": snap}, timeout=300)
        assert r.status == 201, r
        try:
            s = new_sandbox(template=snap)
            r = sh(api, s["id"], "cat /root/r; ls -A /data 2>&1 | wc -l")
            assert r["stdout"] == "r\n0\n", r
            api.remove(s["id"])
        finally:
            api.delete(tpl_path(snap))
        api.remove(a["id"])
        api.remove(h["id"])
    finally:
        remove_volume(api, v["name"])
        api.delete(tpl_path(tpl))


# ---------------------------------------------------------------------------------------------
# CLI


def cli(daemon, *args):
    return subprocess.run([daemon.bin, *args], env={**os.environ, "WARREN_URL": daemon.url},
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT_S)


def describe(p):
    return f"rc={p.returncode} stdout={p.stdout[:2000]!r} stderr={p.stderr[:2000]!r}"


def test_cli_volumes(daemon, api):
    name = "cli-" + rand()
    p = cli(daemon, "volume", "create", name, "--size", "24")
    assert p.returncode == 0 and p.stdout.decode().strip() == name, describe(p)
    try:
        p = cli(daemon, "volume", "ls")
        assert p.returncode == 0 and name in p.stdout.decode(), describe(p)
        line = [l for l in p.stdout.decode().splitlines() if l.startswith(name)][0]
        assert "24" in line, line
        p = cli(daemon, "volume", "ls", "--json")
        assert p.returncode == 0 and '"size_mib": 24' in p.stdout.decode(), describe(p)
        p = cli(daemon, "run", "-v", f"{name}:/data", "--", "sh", "-c", "echo cli > /data/f")
        assert p.returncode == 0, describe(p)
        p = cli(daemon, "create", "--name", "clivol-" + rand(), "-v", f"{name}:/ro:ro")
        assert p.returncode == 0, describe(p)
        sid = p.stdout.decode().strip()
        try:
            p = cli(daemon, "exec", sid, "--", "sh", "-c", "cat /ro/f; touch /ro/x")
            assert p.returncode != 0 and p.stdout == b"cli\n", describe(p)
            assert b"Read-only" in p.stderr, describe(p)
            p = cli(daemon, "volume", "rm", name)
            assert p.returncode != 0 and b"volume_in_use" in p.stderr + p.stdout or \
                b"attached" in p.stderr, describe(p)
        finally:
            api.remove(sid)
        for bad in ["nocolon", f"{name}:relative", f"{name}:/x:rw2", ":/x"]:
            p = cli(daemon, "create", "-v", bad)
            assert p.returncode != 0, (bad, describe(p))
        p = cli(daemon, "volume", "rm", name)
        assert p.returncode == 0, describe(p)
        p = cli(daemon, "volume", "ls")
        assert name not in p.stdout.decode(), describe(p)
        p = cli(daemon, "volume", "rm", name)
        assert p.returncode != 0, describe(p)
    finally:
        remove_volume(api, name)
