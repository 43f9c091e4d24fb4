"""Daemon lifecycle: SIGTERM with live sandboxes and busy commands, and recovery after a crash."""
import os
import signal

from conftest import WAIT_S, Api, descendants, alive_same, sh


def _busy_sandbox(api):
    sb = api.create()
    r = sh(api, sb["id"], "sleep 1000 >/dev/null 2>&1 & echo data > /workspace/f; echo ok")
    assert r["exit_code"] == 0 and r["stdout"] == "ok\n"
    return sb


def test_sigterm_leaves_live_sandboxes_to_the_next_daemon(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    ids = sorted(_busy_sandbox(api)["id"] for _ in range(3))
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=WAIT_S) == 0
    d.logf.close()
    d.restart_same()
    sbs = api.get("/v1/sandboxes").json["sandboxes"]
    assert sorted(s["id"] for s in sbs) == ids and {s["state"] for s in sbs} == {"running"}
    for sid in ids:
        assert sh(api, sid, "cat /workspace/f")["stdout"] == "data\n"
    # fresh_daemon's teardown deletes them, stops the daemon and asserts that no process,
    # mount (the pinned namespace included), loop device, directory or cgroup is left.


def test_crash_then_restart_readopts_and_cleans_half_made(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    sb = _busy_sandbox(api)
    tree = descendants(d.pid)
    assert tree, "the sandbox's processes should be descendants of the daemon"
    d.kill9()
    assert all(alive_same(p, s) for p, s in tree.items() if p != d.pid), \
        "sandbox processes must outlive the daemon"
    # What a crash in the middle of a creation leaves: a directory the store does not know.
    half = os.path.join(d.state_dir, "sandboxes", "sb-halfmade0000")
    os.mkdir(half)
    d.restart_same()
    assert not os.path.exists(half)
    sbs = api.get("/v1/sandboxes").json["sandboxes"]
    assert [(s["id"], s["state"]) for s in sbs] == [(sb["id"], "running")]
    assert sh(api, sb["id"], "cat /workspace/f")["stdout"] == "data\n"
    # And it works normally afterwards.
    sb2 = api.create()
    assert sh(api, sb2["id"], "cat /workspace/f 2>/dev/null; echo $?")["stdout"] == "1\n"


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
