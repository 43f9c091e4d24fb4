"""Thin-provisioned sandbox disks: admission overcommits the host disk, and a ballast in each
sandbox's file system keeps what they can write within what the host has free above its reserve.

The daemon's state dir is a small ext4 file system made by the test (a loop-mounted 320 MiB
image), so that the host disk can be filled for real without touching the machine's own."""
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import Api, Daemon, exec_, sh, wait_for

MiB = 1 << 20
HOST_MIB = 320
RESERVE_MIB = 48


def fs_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_host():
    """A 320 MiB ext4 mounted for the test; yields its mount point."""
    top = tempfile.mkdtemp(prefix="warren-density-")
    image, mnt = os.path.join(top, "host.img"), os.path.join(top, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(HOST_MIB * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", image], check=True)
    subprocess.run(["mount", "-o", "loop,discard", image, mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)
        shutil.rmtree(top)


@pytest.fixture
def dense(small_host):
    """A daemon whose state dir is on the small host file system."""
    d = Daemon(extra_args=["--disk-reserve", str(RESERVE_MIB), "--disk-overcommit", "10",
                           "--defaults", "disk_mib=32"])
    d.state_dir = os.path.join(small_host, "state")
    os.mkdir(d.state_dir, 0o755)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        for dev in os.listdir("/sys/block"):
            backing = f"/sys/block/{dev}/loop/backing_file"
            if os.path.exists(backing):
                with open(backing) as f:
                    assert d.state_dir not in f.read(), f"{dev} left behind"


def info_disk(api):
    r = api.get("/v1/info")
    assert r.status == 200, r
    return r.json["disk"]


def fill(api, sid, name):
    """Writes zeros into the sandbox until its disk says ENOSPC; returns the bytes written."""
    r = sh(api, sid, f"dd if=/dev/zero of=/workspace/{name} bs=1M 2>&1; "
                     f"sync -f /workspace/{name} && stat -c %s /workspace/{name}",
           timeout_s=60)
    assert "No space left on device" in r["stdout"], r
    assert r["exit_code"] == 0, r  # the data that was accepted reached the disk: no EIO
    return int(r["stdout"].split()[-1])


def test_overcommit_admits_more_than_the_host_holds(dense):
    api = Api(dense)
    free0 = fs_free(dense.state_dir)
    n = free0 // (96 * MiB) + 2  # more 96 MiB disks than the free space could hold
    sbs = [api.create(resources={"disk_mib": 96}) for _ in range(n)]
    disk = info_disk(api)
    assert disk["backend"] == "ext4-image"
    assert disk["overcommit"] == 10
    assert disk["reserve_bytes"] == RESERVE_MIB * MiB
    assert disk["promised_bytes"] == n * 96 * MiB > free0
    assert 0 < disk["used_bytes"] < n * 4 * MiB  # sparse: metadata only
    assert abs(disk["free_bytes"] - fs_free(dense.state_dir)) < 16 * MiB
    for sb in sbs:
        assert exec_(api, sb["id"], argv=["true"])["exit_code"] == 0
    # Beyond the ratio: 503 naming it.
    r = api.post("/v1/sandboxes", {"resources": {"disk_mib": 11 * HOST_MIB}})
    assert r.status == 503, r
    assert "--disk-overcommit" in r.error_message


def test_sandboxes_get_enospc_before_the_host_fills(dense):
    api = Api(dense)
    sbs = [api.create(resources={"disk_mib": 128}) for _ in range(4)]  # 512 MiB on 320
    written = sum(fill(api, sb["id"], "f") for sb in sbs)
    free = fs_free(dense.state_dir)
    # Every sandbox was cut short, and together they left the host its reserve (less the
    # metadata the ballast does not cover: inode tables, bitmaps).
    assert written < 4 * 120 * MiB
    assert free > RESERVE_MIB * MiB * 3 // 4, f"host free {free / MiB:.0f} MiB"
    # Deleting one gives its space to the others.
    api.remove(sbs[0]["id"])
    wait_for(lambda: sh(api, sbs[1]["id"],
                        "dd if=/dev/zero of=/workspace/g bs=1M count=8 2>&1")["exit_code"] == 0,
             what="room for the other sandboxes")


def test_below_the_reserve_creations_get_503_and_writes_enospc(dense):
    api = Api(dense)
    sb = api.create(resources={"disk_mib": 64})
    # Something else on the host eats its disk down to below the reserve.
    filler = os.path.join(os.path.dirname(dense.state_dir), "filler")
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, fs_free(dense.state_dir) - RESERVE_MIB * MiB // 2)
    try:
        r = api.post("/v1/sandboxes", {})
        assert r.status == 503, r
        assert "reserve" in r.error_message and "--disk-reserve" in r.error_message
        # Within a check period, the sandbox cannot write any more.
        wait_for(lambda: "No space left on device" in sh(
            api, sb["id"], "dd if=/dev/zero of=/workspace/f bs=1M count=4 2>&1; "
                           "rm -f /workspace/f")["stdout"], what="ENOSPC inside")
        assert fs_free(dense.state_dir) > RESERVE_MIB * MiB // 4
    finally:
        os.unlink(filler)
    # The host has room again: both come back.
    wait_for(lambda: sh(api, sb["id"], "dd if=/dev/zero of=/workspace/f bs=1M count=4")
             ["exit_code"] == 0, what="writes inside again")
    api.create()
