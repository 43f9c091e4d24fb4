"""disk_mib: each sandbox writes into its own loop-mounted ext4 image of exactly that size.

Everything writable outside memory (/, /tmp, /var/tmp, /root, /workspace) shares it; filling it
gives ENOSPC inside and nothing else; the image is sparse on the host and goes with the sandbox.
"""
import os
import shutil
import subprocess

from conftest import WARREN_BIN, exec_, sh


def image_path(daemon, sb_id):
    return os.path.join(daemon.state_dir, "sandboxes", sb_id + ".img")


def host_bytes(path):
    return os.stat(path).st_blocks * 512


def test_disk_size_is_disk_mib(daemon, api, new_sandbox):
    sb = new_sandbox(resources={"disk_mib": 48})
    out = sh(api, sb["id"], "df -k --output=size / /tmp /workspace | tail -n +2")
    sizes = [int(x) for x in out["stdout"].split()]
    assert len(sizes) == 3 and len(set(sizes)) == 1, out
    # ext4's own metadata takes a few percent of the image.
    assert 0.85 * 48 * 1024 <= sizes[0] <= 48 * 1024
    # Sparse: a fresh disk costs the host well under a MiB, not 48.
    assert host_bytes(image_path(daemon, sb["id"])) < 4 << 20


def test_filling_any_writable_place_gives_enospc(daemon, api, new_sandbox):
    sb = new_sandbox(resources={"disk_mib": 32})
    r = sh(api, sb["id"], "dd if=/dev/zero of=/workspace/big bs=1M count=200 2>&1; echo rc=$?")
    assert "No space left on device" in r["stdout"] and "rc=1" in r["stdout"], r
    # The disk is shared: /tmp, /root, /var/tmp and / are full too (give or take what ext4
    # releases once the big file's blocks are allocated).
    for path in ("/tmp/x", "/root/x", "/var/tmp/x", "/x"):
        r = sh(api, sb["id"], f"dd if=/dev/zero of={path} bs=64k count=256 2>&1; echo rc=$?; "
                              f"stat -c %s {path}")
        assert "No space left on device" in r["stdout"] and "rc=1" in r["stdout"], (path, r)
        assert int(r["stdout"].split()[-1]) < 2 << 20, (path, r)
    used = host_bytes(image_path(daemon, sb["id"]))
    assert used <= (32 << 20) + (1 << 20)
    # Freeing space inside gives it back to the sandbox and (discard) to the host.
    r = sh(api, sb["id"], "rm /workspace/big && head -c 4194304 /dev/zero > /tmp/y && echo ok")
    assert r["stdout"] == "ok\n", r
    sh(api, sb["id"], "rm /tmp/y && sync")
    assert host_bytes(image_path(daemon, sb["id"])) < used / 2
    # The daemon and the sandbox are fine after it.
    assert exec_(api, sb["id"], argv=["true"])["exit_code"] == 0


def test_inode_flood_gives_enospc(api, new_sandbox):
    sb = new_sandbox(resources={"disk_mib": 8})
    r = sh(api, sb["id"], "cd /tmp; i=0; while [ $i -lt 100000 ]; do true > f$i || break; "
                          "i=$((i+1)); done; echo created=$i", timeout_s=60)
    created = int(r["stdout"].split("created=")[1])
    assert created < 100000 and "No space left on device" in r["stderr"], r


def test_full_disk_upload_is_413_and_leaves_nothing(api, new_sandbox):
    sb = new_sandbox(resources={"disk_mib": 16})
    sh(api, sb["id"], "head -c 10000000 /dev/zero > /workspace/fill")
    r = api.request("PUT", f"/v1/sandboxes/{sb['id']}/files?path=/workspace/up",
                    body=b"x" * (8 << 20))
    assert r.status == 413, r
    ls = sh(api, sb["id"], "ls -A /workspace")
    assert ls["stdout"] == "fill\n", ls


def test_sandboxes_do_not_share_disks(api, new_sandbox):
    a = new_sandbox(resources={"disk_mib": 16})
    b = new_sandbox(resources={"disk_mib": 16})
    sh(api, a["id"], "head -c 20000000 /dev/zero > /workspace/fill; true")
    r = sh(api, b["id"], "head -c 8000000 /dev/zero > /workspace/f && echo ok")
    assert r["stdout"] == "ok\n", r


def test_delete_removes_image(daemon, api):
    sb = api.create(resources={"disk_mib": 16})
    path = image_path(daemon, sb["id"])
    assert os.path.exists(path)
    assert api.delete(f"/v1/sandboxes/{sb['id']}").status == 204
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.join(daemon.state_dir, "sandboxes", sb["id"]))


def test_mounts_stay_in_the_daemons_namespace(daemon, new_sandbox):
    sb = new_sandbox(resources={"disk_mib": 16})
    with open("/proc/self/mountinfo") as f:
        assert sb["id"] not in f.read()
    with open(f"/proc/{daemon.pid}/mountinfo") as f:
        assert sb["id"] in f.read()


def test_disk_larger_than_the_host_is_refused(fresh_daemon):
    d = fresh_daemon(extra_args=["--maxima", "disk_mib=1099511627776"])
    free_mib = shutil.disk_usage(d.state_dir).free >> 20
    from conftest import Api
    api = Api(d)
    # Disks are thin-provisioned (test_density.py): a disk is refused when the sizes promised
    # would pass --disk-overcommit (default 16) times the host's free space.
    r = api.post("/v1/sandboxes", {"resources": {"disk_mib": 17 * free_mib}})
    assert r.status == 503, r
    assert "not enough host disk" in r.error_message
    # A reasonable one still works.
    sb = api.create(resources={"disk_mib": 16})
    assert exec_(api, sb["id"], argv=["true"])["exit_code"] == 0


def test_defaults_and_maxima_flags(fresh_daemon):
    from conftest import Api
    d = fresh_daemon(extra_args=["--defaults", "disk_mib=64,pids=100",
                                 "--maxima", "memory_mib=1024,disk_mib=128"])
    api = Api(d)
    sb = api.create()
    assert sb["resources"]["disk_mib"] == 64 and sb["resources"]["pids"] == 100
    info = api.get("/v1/info").json
    assert info["defaults"]["disk_mib"] == 64 and info["defaults"]["pids"] == 100, info
    assert info["maxima"]["disk_mib"] == 128 and info["maxima"]["memory_mib"] == 1024, info
    assert info["disk"]["backend"] == "ext4-image", info
    assert info["disk"]["promised_bytes"] == 64 << 20, info
    assert info["network"]["modes"] == ["none", "allowlist", "open"], info
    r = api.post("/v1/sandboxes", {"resources": {"disk_mib": 129}})
    assert r.status == 422 and "disk_mib" in r.error_message, r
    r = api.post("/v1/sandboxes", {"resources": {"memory_mib": 2048}})
    assert r.status == 422, r


def test_bad_resource_flags_stop_the_daemon_with_a_message():
    for args in (["--defaults", "disk_mib=0"], ["--maxima", "bogus=1"],
                 ["--defaults", "cpus=abc"], ["--defaults", "disk_mib=2048",
                                              "--maxima", "disk_mib=1024"],
                 ["--disk-overcommit", "0.5"], ["--disk-reserve", "-1"]):
        p = subprocess.run([WARREN_BIN, "serve", "--state-dir", "/nonexistent/x"] + args,
                           capture_output=True, text=True, timeout=10)
        assert p.returncode == 2, (args, p)
        assert args[0] in p.stderr, (args, p.stderr)
