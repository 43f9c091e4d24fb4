"""What a command inside a sandbox can and cannot see or do (DESIGN.md §2)."""

import hashlib
import os
import random
import re
import select
import socket
import subprocess

from conftest import exec_, sh

CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_ADMIN, CAP_SYS_BOOT, CAP_SYS_TIME = 16, 17, 21, 22, 25


def rnd():
    return "%012x" % random.getrandbits(48)


def proc_status(api, sid):
    res = exec_(api, sid, argv=["cat", "/proc/self/status"])
    assert res["exit_code"] == 0, res
    return dict(l.split(":", 1) for l in res["stdout"].splitlines() if ":" in l)


def test_no_host_shadow(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["cat", "/etc/shadow"])
    assert res["exit_code"] != 0, res
    assert "root:" not in (res["stdout"] or "")


def test_host_root_home_not_visible(api, sandbox):
    marker = f"/root/warren-host-marker-{rnd()}"
    open(marker, "w").close()
    try:
        res = exec_(api, sandbox["id"], argv=["ls", "-a", "/root"])
        assert os.path.basename(marker) not in (res["stdout"] or ""), res
        assert exec_(api, sandbox["id"], argv=["test", "-e", marker])["exit_code"] == 1
    finally:
        os.unlink(marker)


def test_system_dirs_read_only(api, sandbox):
    sid = sandbox["id"]
    try:
        res = sh(api, sid, "echo x > /usr/warren-test")
        assert res["exit_code"] != 0, res
        assert re.search(r"read-only|permission denied", res["stderr"], re.I), res
        assert not os.path.exists("/usr/warren-test")
        res = sh(api, sid, "touch /bin/warren-test || touch /usr/bin/warren-test")
        assert res["exit_code"] != 0, res
    finally:
        for p in ("/usr/warren-test", "/bin/warren-test", "/usr/bin/warren-test"):
            if os.path.exists(p):
                os.unlink(p)


def test_host_etc_not_modified(api, sandbox):
    files = ["/etc/passwd", "/etc/hosts", "/etc/resolv.conf"]
    files = [f for f in files if os.path.exists(f)]
    before = {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}
    for f in files:
        sh(api, sandbox["id"], f"echo 'evil:x:0:0::/:/bin/sh' >> {f}")
    after = {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}
    assert before == after, "a sandbox modified a host file in /etc"


def test_proc_shows_only_sandbox_pids(api, sandbox, daemon):
    res = exec_(api, sandbox["id"], argv=["ls", "/proc"])
    assert res["exit_code"] == 0, res
    pids = [int(x) for x in res["stdout"].split() if x.isdigit()]
    assert 1 in pids, "the sandbox init must be pid 1 in its pid namespace"
    assert all(p < 100 for p in pids), f"host pids visible: {pids}"
    assert len(pids) < 20, pids
    res = sh(api, sandbox["id"],
             "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done")
    out = res["stdout"] or ""
    assert daemon.state_dir not in out, out
    assert "--state-dir" not in out and "pytest" not in out, out


def test_hostname_is_name(api, new_sandbox):
    name = "host-" + rnd()
    sb = new_sandbox(name=name)
    assert exec_(api, sb["id"], argv=["uname", "-n"])["stdout"] == name + "\n"
    assert exec_(api, sb["id"], argv=["cat", "/proc/sys/kernel/hostname"])["stdout"] == name + "\n"
    sb2 = new_sandbox()
    assert exec_(api, sb2["id"], argv=["uname", "-n"])["stdout"] == sb2["id"] + "\n"


def test_cannot_change_host_hostname(api, sandbox):
    host = socket.gethostname()
    sh(api, sandbox["id"], "hostname evil-warren 2>/dev/null; "
                           "echo evil-warren > /proc/sys/kernel/hostname 2>/dev/null")
    assert socket.gethostname() == host


def test_root_inside(api, sandbox):
    assert exec_(api, sandbox["id"], argv=["id", "-u"])["stdout"] == "0\n"
    assert exec_(api, sandbox["id"], argv=["id", "-g"])["stdout"] == "0\n"


def test_workspace_owned_by_unprivileged_host_uid(api, sandbox, daemon):
    name = f"owned-{rnd()}"
    res = sh(api, sandbox["id"], f"echo hi > /workspace/{name} && stat -c %u /workspace/{name}")
    assert res["exit_code"] == 0 and res["stdout"] == "0\n", res
    path = daemon.sandbox_path(sandbox["id"], "workspace", name)
    st = os.stat(path)
    assert st.st_uid != 0 and st.st_uid >= 100000, f"{path} owned by host uid {st.st_uid}"
    assert st.st_gid != 0, f"{path} owned by host gid {st.st_gid}"
    with open(path) as f:
        assert f.read() == "hi\n"


def _host_ips():
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    ips = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return [ip for ip in ips if not ip.startswith("127.")]


NET_ERR = re.compile(r"refused|unreachable|timed out|cannot assign", re.I)


def test_no_network_to_host(api, sandbox):
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", 0))
    lst.listen(16)
    port = lst.getsockname()[1]
    try:
        targets = ["127.0.0.1"] + _host_ips()[:1] + ["1.1.1.1"]
        for ip in targets:
            p = 80 if ip == "1.1.1.1" else port
            res = exec_(api, sandbox["id"], timeout_s=10, argv=[
                "timeout", "5", "bash", "-c", f"echo hi > /dev/tcp/{ip}/{p}"])
            assert res["exit_code"] != 0, f"connection to {ip}:{p} succeeded: {res}"
            assert res["exit_code"] == 124 or NET_ERR.search(res["stderr"]), res
            res = exec_(api, sandbox["id"], timeout_s=10, argv=[
                "timeout", "5", "/usr/bin/python3", "-c",
                f"import socket; socket.create_connection(('{ip}', {p}), 2)"])
            assert res["exit_code"] != 0, f"connection to {ip}:{p} succeeded: {res}"
            assert res["exit_code"] == 124 or NET_ERR.search(res["stderr"]), res
        r, _, _ = select.select([lst], [], [], 0.5)
        assert not r, "the host listener saw a connection from the sandbox"
    finally:
        lst.close()


def test_only_loopback_interface(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["cat", "/proc/net/dev"])
    assert res["exit_code"] == 0, res
    ifaces = [l.split(":")[0].strip() for l in res["stdout"].splitlines()[2:] if ":" in l]
    assert ifaces == ["lo"], ifaces
    res = exec_(api, sandbox["id"], argv=["ls", "/sys/class/net"])
    if res["exit_code"] == 0:  # /sys may not be mounted at all; if it is, only lo
        assert res["stdout"].split() == ["lo"], res
    # loopback itself works inside
    res = exec_(api, sandbox["id"], timeout_s=20, argv=["/usr/bin/python3", "-c", (
        "import socket\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
        "c = socket.create_connection(s.getsockname(), 2); a, _ = s.accept()\n"
        "c.sendall(b'ping'); print(a.recv(4).decode())\n")])
    assert res["stdout"] == "ping\n", res


def test_sandboxes_do_not_see_each_other(api, new_sandbox):
    a, b = new_sandbox(), new_sandbox()
    wname, tname = f"ws-{rnd()}", f"tmp-{rnd()}"
    assert sh(api, a["id"], f"echo secret > /workspace/{wname}; echo s > /tmp/{tname}; "
                            f"echo s > /root/{tname}")["exit_code"] == 0
    # sanity: A sees its own files
    res = exec_(api, a["id"], argv=["find", "/workspace", "/tmp", "/root", "-name", wname])
    assert res["stdout"].strip() == f"/workspace/{wname}", res
    for name in (wname, tname):
        res = sh(api, b["id"], f"find /workspace /tmp /root -name '{name}' 2>/dev/null")
        assert res["stdout"] == "", f"sandbox B sees {name}: {res}"
    res = exec_(api, b["id"], argv=["ls", "-a", "/workspace"])
    assert wname not in res["stdout"]
    # and B does not see A's processes
    sh(api, a["id"], "sleep 40.75 >/dev/null 2>&1 &")
    assert exec_(api, b["id"], argv=["pgrep", "-f", "sleep 40.75"])["exit_code"] == 1
    assert exec_(api, a["id"], argv=["pgrep", "-f", "sleep 40.75"])["exit_code"] == 0


def test_proc_sensitive_files(api, sandbox):
    res = sh(api, sandbox["id"], "echo h > /proc/sysrq-trigger")
    assert res["exit_code"] != 0, f"/proc/sysrq-trigger is writable: {res}"
    res = exec_(api, sandbox["id"], argv=["head", "-c", "16", "/proc/kcore"])
    assert res["exit_code"] != 0, f"/proc/kcore is readable: exit {res['exit_code']}"
    res = sh(api, sandbox["id"], "echo 1 > /proc/sys/kernel/sysrq")
    assert res["exit_code"] != 0, f"/proc/sys is writable: {res}"


ALLOWED_DEV = {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd",
               "stdin", "stdout", "stderr", "console", "mqueue"}


def test_minimal_dev(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["ls", "-A", "/dev"])
    assert res["exit_code"] == 0, res
    entries = set(res["stdout"].split())
    for must in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm"):
        assert must in entries, f"/dev/{must} missing: {sorted(entries)}"
    for bad in ("sda", "vda", "xvda", "nvme0", "mem", "kmem", "port", "kmsg", "tty0", "console0"):
        assert bad not in entries, f"/dev/{bad} present: {sorted(entries)}"
    extra = entries - ALLOWED_DEV
    assert not extra, f"unexpected /dev entries: {sorted(extra)}"
    # and they work
    res = sh(api, sandbox["id"], "head -c 10 /dev/urandom | wc -c; echo x > /dev/null && "
                                 "head -c 3 /dev/zero | od -An -tx1")
    assert res["stdout"].split() == ["10", "00", "00", "00"], res
    res = sh(api, sandbox["id"], "echo x > /dev/full")
    assert res["exit_code"] != 0


def test_cannot_mount(api, sandbox):
    res = sh(api, sandbox["id"], "mkdir -p /tmp/mnt && mount -t tmpfs none /tmp/mnt")
    assert res["exit_code"] not in (0, 126, 127), res
    assert "not found" not in res["stderr"], res
    res = sh(api, sandbox["id"], "mount -t tmpfs none /mnt")
    assert res["exit_code"] != 0, res
    res = sh(api, sandbox["id"], "mount -o remount,rw /usr")
    assert res["exit_code"] != 0, res


def test_capabilities_dropped(api, sandbox):
    st = proc_status(api, sandbox["id"])
    eff = int(st["CapEff"].strip(), 16)
    bnd = int(st["CapBnd"].strip(), 16)
    for cap in (CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_ADMIN, CAP_SYS_BOOT, CAP_SYS_TIME):
        assert not eff & (1 << cap), f"CapEff {eff:#x} has capability {cap}"
    assert not bnd & (1 << CAP_SYS_ADMIN), f"CapBnd {bnd:#x} has CAP_SYS_ADMIN"


def test_no_new_privs_and_seccomp(api, sandbox):
    res = exec_(api, sandbox["id"], argv=["cat", "/proc/self/status"])
    assert "NoNewPrivs:\t1" in res["stdout"], res["stdout"]
    assert "Seccomp:\t2" in res["stdout"], res["stdout"]


SYSCALLS = {  # name: (x86_64 nr, aarch64 nr, args). Each succeeds or fails with EFAULT when
    # allowed, even for root in an unprivileged user namespace, so EPERM/ENOSYS means seccomp.
    "keyctl": (250, 219, (0, -3, 0)),  # KEYCTL_GET_KEYRING_ID of the session keyring
    "add_key": (248, 217, (0, 0, 0, 0, 0)),
    "perf_event_open": (298, 241, (0, 0, -1, -1, 0)),
    "userfaultfd": (323, 282, (1,)),  # UFFD_USER_MODE_ONLY
    "io_uring_setup": (425, 425, (0, 0)),
    "name_to_handle_at": (303, 264, (-100, 0, 0, 0, 0)),
}


def test_seccomp_denies_dangerous_syscalls(api, sandbox):
    arch = os.uname().machine
    assert arch in ("x86_64", "aarch64"), f"no syscall table for {arch}"
    idx = 0 if arch == "x86_64" else 1
    lines = ["import ctypes, errno",
             "libc = ctypes.CDLL(None, use_errno=True)",
             "libc.syscall.restype = ctypes.c_long"]
    for name, v in SYSCALLS.items():
        args = ", ".join(f"ctypes.c_long({a})" for a in (v[idx],) + v[2])
        lines.append(f"r = libc.syscall({args}); "
                     f"print('{name}', r, errno.errorcode.get(ctypes.get_errno()) if r < 0 else 'ok')")
    res = exec_(api, sandbox["id"], argv=["/usr/bin/python3", "-c", "\n".join(lines)])
    assert res["exit_code"] == 0, res
    got = {l.split()[0]: l.split()[1:] for l in res["stdout"].splitlines()}
    assert set(got) == set(SYSCALLS), res
    allowed = {n: v for n, v in got.items() if v[0] != "-1" or v[1] not in ("EPERM", "ENOSYS")}
    assert not allowed, f"syscalls not blocked by seccomp: {allowed}"


def test_cannot_unshare(api, sandbox):
    for flag in ("-U", "-m", "-n", "-p"):
        res = exec_(api, sandbox["id"], argv=["unshare", flag, "true"])
        assert res["exit_code"] not in (0, 126, 127), (flag, res)
        assert "unshare failed" in res["stderr"] or "not permitted" in res["stderr"], res


def test_init_survives_signals(api, sandbox):
    sid = sandbox["id"]
    sh(api, sid, "kill -KILL 1; kill -TERM 1; kill -INT 1; kill -HUP 1; true")
    res = exec_(api, sid, argv=["echo", "still here"])
    assert res["stdout"] == "still here\n"


def test_memory_limit(api, new_sandbox):
    sb = new_sandbox(resources={"memory_mib": 64})
    res = exec_(api, sb["id"], timeout_s=30, argv=[
        "/usr/bin/python3", "-c", "b = b'x' * (300 * 1024 * 1024); print(len(b))"])
    assert res["exit_code"] != 0, f"allocated 300 MiB under a 64 MiB limit: {res}"
    assert res["signal"] == 9 or "MemoryError" in (res["stderr"] or ""), res
    assert res["timed_out"] is False
    # the sandbox is still usable
    assert exec_(api, sb["id"], argv=["echo", "ok"])["stdout"] == "ok\n"


def test_pids_limit(api, new_sandbox):
    sb = new_sandbox(resources={"pids": 20})
    assert sb["resources"]["pids"] == 20
    res = exec_(api, sb["id"], timeout_s=30, argv=["/usr/bin/python3", "-c", (
        "import os, time\n"
        "kids = []\n"
        "try:\n"
        "    for i in range(60):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(300); os._exit(0)\n"  # held until killed below
        "        kids.append(pid)\n"
        "except OSError as e:\n"
        "    print('fork failed', e.errno)\n"
        "print(len(kids))\n"
        "for k in kids: os.kill(k, 9)\n"
        "for k in kids: os.waitpid(k, 0)\n")])
    lines = (res["stdout"] or "").split("\n")
    assert "fork failed" in res["stdout"], f"60 forks succeeded under a 20-pid limit: {res}"
    assert int(lines[1]) < 20, res
    assert exec_(api, sb["id"], argv=["echo", "ok"])["stdout"] == "ok\n"
