"""Sandbox lifecycle: create, get, list, delete, health and info (docs/API.md)."""

import datetime
import os
import random
import re
import string
import threading
import time

from conftest import WAIT_S, exec_, host_cgroup_mode, proc_cmdline, proc_pids, sh, wait_for

ID_RE = re.compile(r"^sb-[a-z0-9]{12}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
SANDBOX_KEYS = {"id", "name", "state", "template", "resources", "network", "labels", "env",
                "session_id", "created_at", "last_active_at", "node"}


def rand(n=8):
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def parse_time(s):
    assert TIME_RE.match(s), f"not RFC 3339 UTC: {s!r}"
    return datetime.datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc)


def check_sandbox_object(sb):
    assert isinstance(sb, dict), sb
    missing = SANDBOX_KEYS - set(sb)
    assert not missing, f"Sandbox object lacks {sorted(missing)}: {sb}"
    assert ID_RE.match(sb["id"]), f"bad id {sb['id']!r}"
    assert sb["state"] == "running"
    assert sb["template"] == "host"
    assert set(sb["resources"]) >= {"cpus", "memory_mib", "pids", "disk_mib"}, sb["resources"]
    assert sb["network"]["mode"] == "none" and sb["network"]["allow"] == [], sb["network"]
    assert isinstance(sb["labels"], dict) and isinstance(sb["env"], dict)
    assert sb["session_id"] is None
    now = datetime.datetime.now(datetime.timezone.utc)
    for k in ("created_at", "last_active_at"):
        t = parse_time(sb[k])
        assert abs((now - t).total_seconds()) < 300, f"{k}={sb[k]} is not about now ({now})"
    assert isinstance(sb["node"], str) and sb["node"]


def test_create_defaults(api, new_sandbox):
    r = api.post("/v1/sandboxes", {})
    assert r.status == 201, r
    sb = r.json
    try:
        check_sandbox_object(sb)
        assert sb["name"] == sb["id"], "default name must be the id"
        assert sb["labels"] == {} and sb["env"] == {}
        res = sb["resources"]
        for k in ("cpus", "memory_mib", "pids"):
            assert isinstance(res[k], (int, float)) and res[k] > 0, res
    finally:
        api.remove(sb["id"])


def test_create_ids_are_unique(api, new_sandbox):
    ids = {new_sandbox()["id"] for _ in range(5)}
    assert len(ids) == 5


def test_create_echoes_spec(api, new_sandbox):
    name = "echo-" + rand()
    sb = new_sandbox(name=name, template="host", env={"A": "1"}, labels={"team": "x", "k": "v"},
                     resources={"cpus": 0.5, "memory_mib": 256, "pids": 100},
                     network={"mode": "none", "allow": []})
    check_sandbox_object(sb)
    assert sb["name"] == name
    assert sb["env"] == {"A": "1"}
    assert sb["labels"] == {"team": "x", "k": "v"}
    assert sb["resources"]["cpus"] == 0.5
    assert sb["resources"]["memory_mib"] == 256
    assert sb["resources"]["pids"] == 100


def test_custom_name_and_get_by_id_and_name(api, new_sandbox):
    name = "Box_1.test-" + rand()
    sb = new_sandbox(name=name)
    assert sb["name"] == name
    for key in (sb["id"], name):
        r = api.get(f"/v1/sandboxes/{key}")
        assert r.status == 200, r
        check_sandbox_object(r.json)
        assert r.json["id"] == sb["id"] and r.json["name"] == name


def test_name_limits(api, new_sandbox):
    n63 = "a" + rand(62)
    assert len(n63) == 63
    assert new_sandbox(name=n63)["name"] == n63
    one = random.choice(string.ascii_letters)
    assert new_sandbox(name=one)["name"] == one


def test_duplicate_name_conflict(api, new_sandbox):
    name = "dup-" + rand()
    sb = new_sandbox(name=name)
    r = api.post("/v1/sandboxes", {"name": name})
    assert r.status == 409, r
    assert r.error_code == "conflict", r
    # the first sandbox is unaffected
    assert api.get(f"/v1/sandboxes/{name}").json["id"] == sb["id"]
    # names are unique among *live* sandboxes: free again after delete
    assert api.delete(f"/v1/sandboxes/{sb['id']}").status == 204
    sb2 = new_sandbox(name=name)
    assert sb2["id"] != sb["id"]


def test_bad_names(api):
    before = api.get("/v1/sandboxes").json["sandboxes"]
    for bad in ["", "-lead", ".lead", "_lead", "has space", "a/b", "a" * 64, "caf\u00e9",
                "semi;colon", "new\nline", "../x"]:
        r = api.post("/v1/sandboxes", {"name": bad})
        if r.status == 201:
            api.remove(r.json["id"])
        assert r.status == 400, f"name {bad!r}: {r!r}"
        assert r.error_code == "bad_request", r
        assert "name" in (r.error_message or ""), r
    after = api.get("/v1/sandboxes").json["sandboxes"]
    assert len(after) == len(before), "a rejected create left a sandbox behind"


def test_list_and_label_filter(api, new_sandbox):
    tag = rand()
    a = new_sandbox(labels={"suite": tag, "role": "a"})
    b = new_sandbox(labels={"suite": tag, "role": "b"})
    c = new_sandbox(labels={"other": tag})

    r = api.get("/v1/sandboxes")
    assert r.status == 200, r
    assert set(r.json) == {"sandboxes"}
    ids = {s["id"] for s in r.json["sandboxes"]}
    assert {a["id"], b["id"], c["id"]} <= ids
    for s in r.json["sandboxes"]:
        check_sandbox_object(s)

    r = api.get(f"/v1/sandboxes?label=suite={tag}")
    assert r.status == 200, r
    assert {s["id"] for s in r.json["sandboxes"]} == {a["id"], b["id"]}

    r = api.get("/v1/sandboxes?label=role=b")
    assert r.status == 200, r
    assert b["id"] in {s["id"] for s in r.json["sandboxes"]}
    assert a["id"] not in {s["id"] for s in r.json["sandboxes"]}

    r = api.get(f"/v1/sandboxes?label=suite%3D{tag}")  # '=' percent-encoded
    assert r.status == 200, r
    assert {s["id"] for s in r.json["sandboxes"]} == {a["id"], b["id"]}

    r = api.get(f"/v1/sandboxes?label=suite=nomatch-{tag}")
    assert r.status == 200 and r.json["sandboxes"] == [], r

    r = api.get(f"/v1/sandboxes?label=other={tag}&state=running")
    assert r.status == 200, r
    assert {s["id"] for s in r.json["sandboxes"]} == {c["id"]}

    r = api.get(f"/v1/sandboxes?label=other={tag}&state=stopped")
    assert r.status == 200 and r.json["sandboxes"] == [], r


def test_delete(api, daemon):
    sb = api.create(name="del-" + rand())
    sid = sb["id"]
    # a background process with a unique command line, to check deletion kills everything
    marker = f"{random.randint(1000, 9999)}.{random.randint(100, 999)}"
    res = sh(api, sid, f"sleep {marker} >/dev/null 2>&1 &")
    assert res["exit_code"] == 0, res
    host_pids = []
    deadline = time.monotonic() + WAIT_S
    while not host_pids and time.monotonic() < deadline:
        host_pids = [p for p in proc_pids() if proc_cmdline(p) == f"sleep {marker}"]
        time.sleep(0.05)
    assert host_pids, "background sleep not visible on the host"
    ws = os.path.join(daemon.state_dir, "sandboxes", sid)

    r = api.delete(f"/v1/sandboxes/{sid}")
    assert r.status == 204, r
    assert r.body == b""
    # synchronous: every process is dead and the workspace gone when it answers
    alive = [p for p in host_pids if proc_cmdline(p) == f"sleep {marker}"]
    assert not alive, f"processes of the deleted sandbox still alive: {alive}"
    assert not os.path.exists(ws), f"{ws} still exists after DELETE"

    r = api.get(f"/v1/sandboxes/{sid}")
    assert r.status == 404 and r.error_code == "not_found", r
    r = api.get(f"/v1/sandboxes/{sb['name']}")
    assert r.status == 404, r
    assert sid not in {s["id"] for s in api.get("/v1/sandboxes").json["sandboxes"]}

    r = api.delete(f"/v1/sandboxes/{sid}")
    assert r.status == 404 and r.error_code == "not_found", r


def test_delete_by_name(api):
    name = "byname-" + rand()
    sb = api.create(name=name)
    r = api.delete(f"/v1/sandboxes/{name}")
    assert r.status == 204, r
    assert api.get(f"/v1/sandboxes/{sb['id']}").status == 404


def test_delete_during_exec_conflict(api):
    sb = api.create()
    out = {}

    def run():
        out["r"] = api.post(f"/v1/sandboxes/{sb['id']}/exec", {"argv": ["sleep", "30"]})

    def sleeping():
        for p in proc_pids():
            try:
                with open(f"/proc/{p}/cgroup") as f:
                    if sb["id"] in f.read() and proc_cmdline(p) == "sleep 30":
                        return True
            except OSError:
                pass
        return False

    t = threading.Thread(target=run)
    t.start()
    wait_for(sleeping, what="the exec's sleep 30 to run")
    t0 = time.monotonic()
    r = api.delete(f"/v1/sandboxes/{sb['id']}")
    assert r.status == 204, r
    t.join(20)
    assert not t.is_alive(), "exec did not return after its sandbox was deleted"
    assert time.monotonic() - t0 < 15
    assert out["r"].status == 409 and out["r"].error_code == "conflict", out["r"]


def test_healthz(api):
    r = api.get("/healthz")
    assert r.status == 200, r
    assert r.json == {"status": "ok"}
    assert "application/json" in (r.headers.get("Content-Type") or "")


def test_info(api, new_sandbox):
    r = api.get("/v1/info")
    assert r.status == 200, r
    info = r.json
    for k in ("version", "node", "namespaces", "cgroup", "seccomp", "sandboxes", "limits"):
        assert k in info, f"/v1/info lacks {k}: {info}"
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["node"], str) and info["node"]
    ns = info["namespaces"]
    assert set(ns) >= {"user", "pid", "mount", "uts", "ipc", "net", "cgroup"}, ns
    for k, v in ns.items():
        assert v is True, f"namespace {k} reported {v!r} on a host that has it"
    assert info["cgroup"]["mode"] in ("v1", "v2", "none")
    assert info["cgroup"]["mode"] == host_cgroup_mode(), info["cgroup"]
    assert info["seccomp"] is True
    lim = info["limits"]
    assert set(lim) >= {"max_sandboxes", "max_body_bytes", "max_output_bytes", "max_timeout_s"}
    assert lim["max_output_bytes"] == 67108864, lim
    assert lim["max_timeout_s"] == 86400, lim
    assert isinstance(lim["max_sandboxes"], int) and lim["max_sandboxes"] >= 20, lim
    assert isinstance(lim["max_body_bytes"], int) and 0 < lim["max_body_bytes"] < 20 * 2**20
    n = info["sandboxes"]
    assert isinstance(n, int) and n >= 0
    new_sandbox()
    assert api.get("/v1/info").json["sandboxes"] == n + 1


def test_exec_by_name(api, new_sandbox):
    name = "exn-" + rand()
    new_sandbox(name=name)
    res = exec_(api, name, argv=["echo", "by-name"])
    assert res["stdout"] == "by-name\n"


def test_shutdown_cleans_up_running_sandboxes(fresh_daemon):
    """SIGTERM with live sandboxes (and background processes in them) leaves nothing behind."""
    from conftest import Api
    d = fresh_daemon()
    a = Api(d)
    for _ in range(3):
        sb = a.create()
        sh(a, sb["id"], "sleep 1000 >/dev/null 2>&1 &")
        assert sh(a, sb["id"], "echo x > /workspace/file")["exit_code"] == 0
    d.stop()  # asserts exit 0 and no leftovers
    assert d.proc.returncode == 0
