"""Limits of a live sandbox and of the daemon (docs/API.md): PATCH resources changes the cgroup
of a running sandbox; ttl_s deletes a sandbox, idle_timeout_s stops it; --max-sandboxes answers
429 `capacity`."""
import datetime
import json
import os
import time

from conftest import Api, cgroup_dirs_of, exec_, sh, wait_for


def test_max_sandboxes_is_429_capacity(fresh_daemon):
    d = fresh_daemon(extra_args=["--max-sandboxes", "2"])
    api = Api(d)
    a, b = api.create(), api.create()
    r = api.post("/v1/sandboxes", {})
    assert r.status == 429, r
    assert r.error_code == "capacity", r
    assert "maximum of 2 sandboxes" in r.error_message and "--max-sandboxes" in r.error_message
    # A deleted one frees its place.
    api.remove(a["id"])
    c = api.create()
    for sid in (b["id"], c["id"]):
        api.remove(sid)


# ---- PATCH resources ---------------------------------------------------------------------------

def cgroup_value(sid, *names):
    """The first of the cgroup files `names` (v1 or v2 spelling) found in the sandbox's cgroups."""
    for d in cgroup_dirs_of([sid]):
        for n in names:
            p = os.path.join(d, n)
            if os.path.exists(p):
                with open(p) as f:
                    return f.read().strip()
    raise AssertionError(f"none of {names} in the cgroups of {sid}: {cgroup_dirs_of([sid])}")


def memory_limit(sid):
    return int(cgroup_value(sid, "memory.max", "memory.limit_in_bytes"))


def pids_limit(sid):
    return int(cgroup_value(sid, "pids.max"))


def cpu_quota(sid):
    return int(cgroup_value(sid, "cpu.max", "cpu.cfs_quota_us").split()[0])


def patch(api, sid, body):
    return api.request("PATCH", f"/v1/sandboxes/{sid}", json.dumps(body),
                       {"Content-Type": "application/json"})


def test_patch_changes_memory_pids_cpus_live(api, new_sandbox):
    sb = new_sandbox(resources={"memory_mib": 128, "pids": 64, "cpus": 1})
    sid = sb["id"]
    assert memory_limit(sid) == 128 << 20 and pids_limit(sid) == 64
    r = patch(api, sid, {"resources": {"memory_mib": 384, "pids": 100, "cpus": 0.5}})
    assert r.status == 200, r
    assert r.json["resources"] == {"cpus": 0.5, "memory_mib": 384, "pids": 100,
                                   "disk_mib": sb["resources"]["disk_mib"]}
    assert memory_limit(sid) == 384 << 20 and pids_limit(sid) == 100
    assert cpu_quota(sid) == 50000
    assert api.get(f"/v1/sandboxes/{sid}").json["resources"]["memory_mib"] == 384
    # Lowering works as well, and fields not given stay.
    r = patch(api, sid, {"resources": {"memory_mib": 96}})
    assert r.status == 200, r
    assert r.json["resources"]["pids"] == 100 and r.json["resources"]["cpus"] == 0.5
    assert memory_limit(sid) == 96 << 20 and pids_limit(sid) == 100
    # The sandbox works with its new limits.
    assert exec_(api, sid, argv=["true"])["exit_code"] == 0


def test_patch_pids_below_need_makes_fork_fail(api, new_sandbox):
    sb = new_sandbox(resources={"pids": 64})
    sid = sb["id"]
    script = "for i in $(seq 20); do sleep 30 & done; wait"
    ok = sh(api, sid, "for i in $(seq 20); do sleep 0 & done; wait; echo ok")
    assert ok["exit_code"] == 0 and ok["stdout"] == "ok\n", ok
    r = patch(api, sid, {"resources": {"pids": 8}})
    assert r.status == 200, r
    assert pids_limit(sid) == 8
    bad = sh(api, sid, script.replace("sleep 30", "sleep 0") + "; echo done", timeout_s=20)
    assert "fork" in bad["stderr"].lower() or "resource temporarily unavailable" in \
        bad["stderr"].lower(), bad
    r = patch(api, sid, {"resources": {"pids": 64}})
    assert r.status == 200 and pids_limit(sid) == 64
    ok = sh(api, sid, "for i in $(seq 20); do sleep 0 & done; wait; echo ok")
    assert ok["exit_code"] == 0 and ok["stdout"] == "ok\n", ok


def test_patch_memory_below_use_is_409(api, new_sandbox):
    sb = new_sandbox(resources={"memory_mib": 256})
    sid = sb["id"]
    # 80 MiB in /dev/shm (tmpfs, charged to the sandbox, and not reclaimable without swap).
    sh(api, sid, "head -c 83886080 /dev/zero > /dev/shm/fill")
    r = patch(api, sid, {"resources": {"memory_mib": 32}})
    assert r.status == 409, r
    assert r.error_code == "memory_in_use", r
    assert "memory_mib" in r.error_message and "current memory use" in r.error_message
    assert memory_limit(sid) == 256 << 20
    assert api.get(f"/v1/sandboxes/{sid}").json["resources"]["memory_mib"] == 256
    assert exec_(api, sid, argv=["true"])["exit_code"] == 0


def test_patch_resources_bad_input(api, daemon, new_sandbox):
    sb = new_sandbox()
    sid = sb["id"]
    maxima = api.get("/v1/info").json["maxima"]
    r = patch(api, sid, {"resources": {"memory_mib": maxima["memory_mib"] + 1}})
    assert r.status == 422 and r.error_code == "unprocessable", r
    r = patch(api, sid, {"resources": {"pids": maxima["pids"] + 1}})
    assert r.status == 422, r
    r = patch(api, sid, {"resources": {"disk_mib": 2048}})
    assert r.status == 400 and "disk_mib" in r.error_message, r
    r = patch(api, sid, {"resources": {"memory": 100}})
    assert r.status == 400 and "memory" in r.error_message, r
    r = patch(api, sid, {"resources": {"pids": 2}})
    assert r.status == 400, r
    r = patch(api, sid, {"resources": {}, "colour": "red"})
    assert r.status == 400 and "colour" in r.error_message, r
    r = patch(api, sid, {})
    assert r.status == 400, r
    assert api.get(f"/v1/sandboxes/{sid}").json["resources"] == sb["resources"]
    # Both at once.
    r = patch(api, sid, {"resources": {"pids": 77}, "network": {"mode": "none"}})
    assert r.status == 200 and r.json["resources"]["pids"] == 77, r
    assert pids_limit(sid) == 77


def test_patch_stopped_sandbox_applies_at_start(api, new_sandbox):
    sb = new_sandbox(resources={"memory_mib": 128})
    sid = sb["id"]
    assert api.post(f"/v1/sandboxes/{sid}/stop", {"grace_s": 0}).status == 200
    r = patch(api, sid, {"resources": {"memory_mib": 200, "pids": 50}})
    assert r.status == 200 and r.json["state"] == "stopped", r
    assert r.json["resources"]["memory_mib"] == 200
    r = patch(api, sid, {"network": {"mode": "open"}, "resources": {"pids": 60}})
    assert r.status == 409, r
    assert api.get(f"/v1/sandboxes/{sid}").json["resources"]["pids"] == 50
    assert api.post(f"/v1/sandboxes/{sid}/start").status == 200
    assert memory_limit(sid) == 200 << 20 and pids_limit(sid) == 50


def test_patch_resources_is_audited(api, new_sandbox):
    sb = new_sandbox()
    sid = sb["id"]
    assert patch(api, sid, {"resources": {"pids": 99}}).status == 200
    r = api.get(f"/v1/audit?sandbox={sid}&event=sandbox.resources")
    assert r.status == 200, r
    recs = r.json["events"]
    assert len(recs) == 1 and recs[0]["resources"]["pids"] == 99 and recs[0]["ok"] is True, recs


# ---- ttl_s and idle_timeout_s ------------------------------------------------------------------

def audit_events(api, sid, event):
    r = api.get(f"/v1/audit?sandbox={sid}&event={event}")
    assert r.status == 200, r
    return r.json["events"]


def test_ttl_deletes_the_sandbox(api):
    t0 = time.monotonic()
    sb = api.create(ttl_s=2)
    sid = sb["id"]
    assert sb["ttl_s"] == 2 and sb["expires_at"] is not None, sb
    created = datetime.datetime.strptime(sb["created_at"][:19], "%Y-%m-%dT%H:%M:%S")
    expires = datetime.datetime.strptime(sb["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")
    assert 1 <= (expires - created).total_seconds() <= 3, sb
    # Activity does not extend a ttl.
    assert exec_(api, sid, argv=["true"])["exit_code"] == 0
    wait_for(lambda: api.get(f"/v1/sandboxes/{sid}").status == 404, what="the sandbox to expire")
    assert time.monotonic() - t0 >= 1.9
    ev = audit_events(api, sid, "sandbox.expire")
    assert len(ev) == 1 and ev[0]["ttl_s"] == 2, ev


def test_no_ttl_by_default(api, new_sandbox):
    sb = new_sandbox()
    assert sb["ttl_s"] == 0 and sb["idle_timeout_s"] == 0 and sb["expires_at"] is None, sb


def test_idle_sandbox_is_stopped_and_starts_again(api, new_sandbox):
    sb = new_sandbox(idle_timeout_s=2)
    sid = sb["id"]
    assert sb["idle_timeout_s"] == 2
    sh(api, sid, "echo kept > /workspace/f")
    # A command running longer than the timeout keeps it running: work is activity.
    t0 = time.monotonic()
    r = sh(api, sid, "sleep 3; echo slept", timeout_s=30)
    assert r["stdout"] == "slept\n" and time.monotonic() - t0 >= 3
    assert api.get(f"/v1/sandboxes/{sid}").json["state"] == "running"
    # Calls in between postpone it: 3 s of calls every 0.5 s, then it may go idle.
    t1 = time.monotonic()
    while time.monotonic() - t1 < 3:
        assert exec_(api, sid, argv=["true"])["exit_code"] == 0
        time.sleep(0.5)
    idle_from = time.monotonic()
    # Listing does not name the sandbox, so it is no activity on it.
    wait_for(lambda: any(s["id"] == sid and s["state"] == "stopped"
                         for s in api.get("/v1/sandboxes").json["sandboxes"]),
             what="the idle stop")
    assert time.monotonic() - idle_from >= 1.5
    ev = audit_events(api, sid, "sandbox.idle_stop")
    assert len(ev) == 1 and ev[0]["idle_timeout_s"] == 2, ev
    r = api.post(f"/v1/sandboxes/{sid}/start")
    assert r.status == 200 and r.json["state"] == "running", r
    assert sh(api, sid, "cat /workspace/f")["stdout"] == "kept\n"


def test_idle_default_and_max_ttl_flags(fresh_daemon):
    d = fresh_daemon(extra_args=["--idle-timeout", "600", "--max-ttl", "3600"])
    api = Api(d)
    lim = api.get("/v1/info").json["limits"]
    assert lim["idle_timeout_s"] == 600 and lim["max_ttl_s"] == 3600, lim
    sb = api.create()
    assert sb["idle_timeout_s"] == 600 and sb["ttl_s"] == 3600 and sb["expires_at"], sb
    r = api.post("/v1/sandboxes", {"ttl_s": 3601})
    assert r.status == 422 and "--max-ttl" in r.error_message, r
    sb2 = api.create(ttl_s=60, idle_timeout_s=30)
    assert sb2["ttl_s"] == 60 and sb2["idle_timeout_s"] == 30, sb2
    for bad in ({"ttl_s": -1}, {"idle_timeout_s": "soon"}, {"ttl_s": 1e12}):
        r = api.post("/v1/sandboxes", bad)
        assert r.status == 400, (bad, r)
    for s in (sb, sb2):
        api.remove(s["id"])


def test_info_limits_default_off(api):
    lim = api.get("/v1/info").json["limits"]
    assert lim["idle_timeout_s"] == 0 and lim["max_ttl_s"] == 0, lim
