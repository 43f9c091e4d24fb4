"""Resource accounting and control: usage, OOM detection, pids limit, pause/resume."""
import time

from conftest import exec_, sh, wait_for


def test_usage_reported(api, new_sandbox):
    sb = new_sandbox(resources={"memory_mib": 256, "pids": 64, "cpus": 0.5})
    sh(api, sb["id"], "head -c 20000000 /dev/zero > /tmp/fill")  # 20 MB of tmpfs, charged to it
    r = api.get(f"/v1/sandboxes/{sb['id']}")
    assert r.status == 200
    u = r.json["usage"]
    assert u["memory_bytes"] >= 20_000_000
    assert u["pids"] >= 1 and u["cpu_seconds"] >= 0 and u["oom_kills"] == 0
    assert r.json["resources"] == {"cpus": 0.5, "memory_mib": 256, "pids": 64, "disk_mib": 1024}


def test_oom_killed(api, new_sandbox):
    sb = new_sandbox(resources={"memory_mib": 64})
    r = exec_(api, sb["id"], argv=["python3", "-c", "x = bytearray(300 * 1024 * 1024)"])
    assert r["signal"] == 9 and r["exit_code"] == 137
    assert r["oom_killed"] is True
    ok = exec_(api, sb["id"], argv=["true"])
    assert ok["exit_code"] == 0 and ok["oom_killed"] is False
    assert api.get(f"/v1/sandboxes/{sb['id']}").json["usage"]["oom_kills"] >= 1


def test_fork_bomb_stops_at_pids_limit(api, new_sandbox):
    sb = new_sandbox(resources={"pids": 32})
    t0 = time.monotonic()
    r = sh(api, sb["id"], "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived",
           timeout_s=20)
    assert time.monotonic() - t0 < 25
    # The limit held: the sandbox still works once the bomb is gone (it is killed with the
    # command's process group on timeout, or ran out of pids and failed).
    other = new_sandbox()
    assert exec_(api, other["id"], argv=["true"])["exit_code"] == 0
    usage = api.get(f"/v1/sandboxes/{sb['id']}").json["usage"]
    assert usage["pids"] <= 32
    assert r["exit_code"] is not None


def test_pause_and_resume(daemon, api, new_sandbox):
    sb = new_sandbox()
    sid = sb["id"]
    r = api.post(f"/v1/sandboxes/{sid}/commands",
                 {"shell": "i=0; while :; do i=$((i+1)); echo $i > /workspace/n; sleep 0.05; done"})
    assert r.status == 201
    counter = daemon.sandbox_path(sid, "workspace", "n")

    def count():
        try:
            with open(counter) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    wait_for(count, what="the counter to start")
    p = api.post(f"/v1/sandboxes/{sid}/pause")
    assert p.status == 200 and p.json["state"] == "paused"
    assert api.get(f"/v1/sandboxes/{sid}").json["state"] == "paused"
    # The pause answers once everything is frozen: from here on the counter must not move.
    a = count()
    time.sleep(0.5)
    assert count() == a, "processes kept running while paused"
    e = api.post(f"/v1/sandboxes/{sid}/exec", {"argv": ["true"]})
    assert e.status == 409
    assert api.post(f"/v1/sandboxes/{sid}/pause").status == 409
    rr = api.post(f"/v1/sandboxes/{sid}/resume")
    assert rr.status == 200 and rr.json["state"] == "running"
    wait_for(lambda: count() != a, what="the counter to move again after resume")
    assert api.post(f"/v1/sandboxes/{sid}/resume").status == 409
    # A paused sandbox can be deleted (its processes are thawed to die).
    assert api.post(f"/v1/sandboxes/{sid}/pause").status == 200
    assert api.delete(f"/v1/sandboxes/{sid}").status == 204
