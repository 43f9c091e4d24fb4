"""Images and a full host disk (issue 10): a pull that runs out of space answers 507
insufficient_storage and leaves nothing half-made behind; the daemon goes on serving."""

import os
import subprocess

import pytest

from conftest import Api, Daemon
from registry import create_from, registry_args
from registry import images, registry, registry_workdir  # noqa: F401 fixtures
from test_bad_input import check_error

MIB = 1 << 20


@pytest.fixture
def small_state(tmp_path):
    """A 48 MiB tmpfs for the daemon's state dir: the images store fills it."""
    path = tmp_path / "state"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(path)],
                   check=True)
    yield str(path)
    subprocess.run(["umount", "-l", str(path)], check=False)


def leftovers(state):
    """What a failed pull must not leave in the store: work in progress and partial files."""
    found = []
    for top, dirs, files in os.walk(os.path.join(state, "images")):
        for n in dirs + files:
            if n.startswith(".tmp") or n.endswith(".part"):
                found.append(os.path.join(top, n))
        dirs[:] = [d for d in dirs if not d.startswith(".tmp")]
    return found


def test_pull_fills_the_disk(registry, images, small_state):
    big = images.ref(registry, "big")             # busybox + a 50 MiB layer of random bytes
    small = images.ref(registry, "busybox")
    # Small sandbox disks (the pool keeps two ready): what is left of 48 MiB is promised to them.
    d = Daemon(extra_args=registry_args(registry, extra=["--disk-reserve", "1",
                                                         "--defaults", "disk_mib=16"]))
    d.state_dir = small_state
    d.start()
    try:
        api = Api(d)
        r = create_from(api, image=big)
        check_error(r, 507, "insufficient_storage")
        assert api.get("/v1/sandboxes").json["sandboxes"] == []
        assert leftovers(small_state) == [], leftovers(small_state)
        t = api.get("/v1/templates").json["templates"]
        failed = [x for x in t if x["image"] == big]
        assert failed and failed[0]["state"] == "failed", t
        # The daemon goes on: a small image still fits and works.
        r = create_from(api, image=small)
        assert r.status == 201, r
        assert api.post(f"/v1/sandboxes/{r.json['id']}/exec",
                        {"argv": ["echo", "ok"]}).json["stdout"] == "ok\n"
        assert api.delete(f"/v1/sandboxes/{r.json['id']}").status == 204
    finally:
        d.stop()
