"""Daemon lifecycle: SIGTERM with live sandboxes and busy commands, and recovery after a crash."""
import os
import shutil
import signal
import time

from conftest import WAIT_S, Api, Daemon, descendants, alive_same, sh


def _busy_sandbox(api):
    sb = api.create()
    r = sh(api, sb["id"], "sleep 1000 >/dev/null 2>&1 & echo data > /workspace/f; echo ok")
    assert r["exit_code"] == 0 and r["stdout"] == "ok\n"
    return sb


def test_sigterm_with_live_sandboxes_leaves_nothing(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    for _ in range(3):
        _busy_sandbox(api)
    assert len(api.get("/v1/sandboxes").json["sandboxes"]) == 3
    # fresh_daemon's teardown sends SIGTERM, asserts exit status 0 and that no process, mount,
    # sandbox directory or cgroup is left; do it here explicitly to make the test's point.
    d.stop(check=True)
    assert d.proc.returncode == 0


def test_crash_then_restart_cleans_up():
    d = Daemon()
    d.start()
    api = Api(d)
    sb = _busy_sandbox(api)
    ws = os.path.join(d.state_dir, "sandboxes", sb["id"])
    assert os.path.isdir(ws)
    tree = descendants(d.pid)
    assert tree, "the sandbox's processes should be descendants of the daemon"

    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.stopped = True
    d.logf.close()
    # Every sandbox process dies with the daemon (the init has PDEATHSIG=SIGKILL, and the kernel
    # kills a pid namespace whose init dies).
    deadline = time.monotonic() + WAIT_S
    while any(alive_same(p, s) for p, s in tree.items()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p, s in tree.items() if alive_same(p, s)]
    assert not left, f"sandbox processes survived the daemon: {left}"
    assert os.path.isdir(ws), "the crash itself removes nothing"

    # A new daemon on the same state dir removes what the old one left.
    d2 = Daemon()
    shutil.rmtree(d2.base_dir)
    d2.base_dir, d2.state_dir = d.base_dir, d.state_dir
    d2.log_path = d.log_path
    d2.created_ids = {sb["id"]}  # teardown also checks its cgroups are gone
    d2.start()
    try:
        api2 = Api(d2)
        assert not os.path.exists(ws)
        assert api2.get("/v1/sandboxes").json == {"sandboxes": []}
        assert api2.get(f"/v1/sandboxes/{sb['id']}").status == 404
        # And it works normally afterwards.
        sb2 = api2.create()
        assert sh(api2, sb2["id"], "cat /workspace/f 2>/dev/null; echo $?")["stdout"] == "1\n"
        api2.remove(sb2["id"])
    finally:
        d2.stop(check=True)


def test_daemons_sharing_cgroup_parents(fresh_daemon):
    """Two daemons on one host share the parent `warren` cgroups where they sit in the same
    cgroup; one stopping (and removing the then-empty parents) must not break the other."""
    a, b = fresh_daemon(), fresh_daemon()
    api_b = Api(b)
    sb = api_b.create()
    api_b.remove(sb["id"])
    a.stop(check=True)
    sb = api_b.create()
    assert sh(api_b, sb["id"], "echo ok")["stdout"] == "ok\n"
    api_b.remove(sb["id"])
