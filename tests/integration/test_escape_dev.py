"""Escape suite: devices. /dev is minimal and read-only, no device node can be made anywhere, and
no raw disk, memory or kernel-log device is reachable."""

import os

from conftest import exec_
from escape_util import box, py, rnd, workspace_host_path  # noqa: F401  (box is a fixture)

REQUIRED = {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm"}
ALLOWED = REQUIRED | {"fd", "stdin", "stdout", "stderr", "console", "mqueue"}
FORBIDDEN = ["mem", "kmem", "port", "kmsg", "sda", "sdb", "vda", "vdb", "xvda", "nvme0",
             "nvme0n1", "loop0", "loop-control", "mapper", "fuse", "kvm", "net", "tun",
             "tty0", "tty1", "ttyS0", "console", "zram0", "dm-0", "sg0", "hpet", "rtc0",
             "cpu", "vsock", "vhost-net", "autofs", "btrfs-control", "uinput", "snapshot"]


def test_dev_is_minimal(api, box):
    got = py(api, box["id"], """
res = {"dev": sorted(os.listdir("/dev")), "pts": sorted(os.listdir("/dev/pts"))}
st = os.stat("/dev/pts/ptmx")
res["pts dev"] = os.stat("/dev/pts").st_dev
res["types"] = {n: oct(os.lstat("/dev/" + n).st_mode) for n in res["dev"]}
res["rdev"] = {n: [os.major(os.stat("/dev/" + n).st_rdev), os.minor(os.stat("/dev/" + n).st_rdev)]
               for n in ("null", "zero", "full", "random", "urandom", "tty")}
emit(res)
""")
    entries = set(got["dev"])
    assert REQUIRED <= entries, f"missing: {sorted(REQUIRED - entries)}"
    assert not entries - ALLOWED, f"unexpected /dev entries: {sorted(entries - ALLOWED)}"
    # devpts is a new instance: none of the host's terminals, only the multiplexer (and the
    # sandbox's own terminals, as numbers)
    assert "ptmx" in got["pts"] and all(p == "ptmx" or p.isdigit() for p in got["pts"]), got
    assert got["rdev"] == {"null": [1, 3], "zero": [1, 5], "full": [1, 7], "random": [1, 8],
                           "urandom": [1, 9], "tty": [5, 0]}, got["rdev"]


def test_mknod_denied_everywhere(api, box, daemon):
    tag = rnd()
    # device numbers of the host's real block devices, as the sandbox can read them in /sys
    got = py(api, box["id"], f"""
import stat
tag = {tag!r}
res = {{"sys": {{}}}}
for b in sorted(os.listdir("/sys/class/block")):
    try:
        res["sys"][b] = open("/sys/class/block/%s/dev" % b).read().strip()
    except OSError:
        pass
devs = {{"mem": (stat.S_IFCHR, 1, 1), "kmem": (stat.S_IFCHR, 1, 2), "port": (stat.S_IFCHR, 1, 4),
        "kmsg": (stat.S_IFCHR, 1, 11), "tty0": (stat.S_IFCHR, 4, 0), "loopctl": (stat.S_IFCHR, 10, 237),
        "kvm": (stat.S_IFCHR, 10, 232), "fuse": (stat.S_IFCHR, 10, 229)}}
for b, mm in res["sys"].items():
    ma, mi = mm.split(":")
    devs["blk-" + b] = (stat.S_IFBLK, int(ma), int(mi))
out = {{}}
for d in ("/tmp", "/workspace", "/dev/shm", "/", "/dev", "/run", "/var/tmp"):
    for n, (kind, ma, mi) in devs.items():
        p = "%s/%s-%s" % (d, n, tag)
        out[p] = err(os.mknod, p, kind | 0o666, os.makedev(ma, mi))
res["mknod"] = out
res["created"] = [p for p in out if os.path.lexists(p)]
emit(res)
""")
    assert got["sys"], f"no block device listed in /sys/class/block to try: {got}"
    assert len(got["mknod"]) >= 7 * 8, got
    for p, e in got["mknod"].items():
        if p.startswith("/dev/") and not p.startswith("/dev/shm/"):
            assert e in ("EROFS", "EPERM"), (p, e)
        else:
            assert e == "EPERM", f"mknod {p}: {e}"
    assert got["created"] == [], got
    ws = workspace_host_path(daemon, box["id"])
    assert not [n for n in os.listdir(ws) if tag in n], "a device node appeared on the host"


def test_no_raw_devices_reachable(api, box):
    paths = ["/dev/" + n for n in FORBIDDEN] + ["/dev/block", "/dev/disk/by-id", "/dev/char"]
    got = py(api, box["id"], f"""
res = {{}}
for p in {paths!r}:
    res[p] = err(os.open, p, os.O_RDONLY | os.O_NONBLOCK)
# the block devices named in sysfs cannot be opened by any path either
for b in os.listdir("/sys/class/block"):
    res["/dev/" + b] = err(os.open, "/dev/" + b, os.O_RDONLY | os.O_NONBLOCK)
res["sys dev"] = err(os.open, "/sys/class/block/" + sorted(os.listdir("/sys/class/block"))[0] + "/dev", os.O_WRONLY)
emit(res)
""")
    for p, e in got.items():
        if p == "sys dev":
            # ENOENT: the devices' sysfs directories are masked (the names stay as dangling
            # links in /sys/class/block).
            assert e in ("EROFS", "EACCES", "ENOENT"), got
        else:
            assert e == "ENOENT", f"{p} is reachable inside the sandbox ({e})"


def test_dev_nodes_behave_and_dev_is_read_only(api, box):
    got = py(api, box["id"], """
res = {}
res["zero"] = open("/dev/zero", "rb").read(4).hex()
res["urandom"] = len(open("/dev/urandom", "rb").read(32))
res["null"] = open("/dev/null", "rb").read(4).hex()
res["full"] = err(lambda: open("/dev/full", "wb", buffering=0).write(b"x"))
res["tty"] = err(os.open, "/dev/tty", os.O_RDWR)   # no controlling terminal in exec
res["chmod null"] = err(os.chmod, "/dev/null", 0o777)
res["replace null"] = err(os.rename, "/dev/zero", "/dev/null")
res["unlink"] = err(os.unlink, "/dev/null")
res["symlink"] = err(os.symlink, "/workspace", "/dev/evil")
emit(res)
""")
    assert got["zero"] == "00000000" and got["urandom"] == 32 and got["null"] == "", got
    assert got["full"] == "ENOSPC", got
    assert got["tty"] == "ENXIO", got
    for k in ("chmod null", "replace null", "unlink", "symlink"):
        assert got[k] == "EROFS", (k, got)
    assert exec_(api, box["id"], argv=["sh", "-c", "echo x > /dev/null"])["exit_code"] == 0
