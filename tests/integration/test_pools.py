"""Warm pools (issue 11): PUT/GET/DELETE /v1/pools/{name}; a create whose spec matches a pool is
served by a ready member (renamed, its env and labels applied, "from_pool": true, fast); the
pool refills in the background; misses are counted; a template change replaces the members;
members survive a daemon restart.

Unclaimed members are hidden from GET /v1/sandboxes: the tests see them as the sandbox
directories in the daemon's state dir that the listing does not show.
"""
import json
import os
import subprocess
import time

from conftest import WAIT_S, Api, sh, wait_for
from registry import busybox_tar


def pool(api, name):
    r = api.get(f"/v1/pools/{name}")
    assert r.status == 200, r
    return r.json


def put_pool(api, name, **spec):
    r = api.request("PUT", f"/v1/pools/{name}", body=json.dumps(spec),
                    headers={"Content-Type": "application/json"})
    assert r.status == 200, r
    return r.json


def wait_ready(api, name, n):
    wait_for(lambda: pool(api, name)["ready"] == n, timeout=30 + WAIT_S,
             what=f"pool {name} with {n} ready members")


def members(d, api):
    """Ids of the sandboxes the daemon has that GET /v1/sandboxes does not list."""
    sbdir = f"/proc/{d.pid}/root{d.state_dir}/sandboxes"
    on_disk = {n for n in os.listdir(sbdir) if not n.endswith(".img") and not n.startswith(".")}
    listed = {s["id"] for s in api.get("/v1/sandboxes").json["sandboxes"]}
    return on_disk - listed


def delete_pool(api, d, name):
    assert api.delete(f"/v1/pools/{name}").status == 204
    wait_for(lambda: not members(d, api), what="the pool's members deleted")


def test_pool_serves_matching_creates_and_refills(fresh_daemon, tmp_path):
    (tmp_path / "TOKEN").write_text("s3cret")
    os.chmod(tmp_path / "TOKEN", 0o600)
    d = fresh_daemon(extra_args=["--secrets-dir", str(tmp_path)])
    api = Api(d)
    p = put_pool(api, "p1", size=2)
    assert p["name"] == "p1" and p["size"] == 2 and p["template"] == "host", p
    assert set(p) == {"name", "template", "image", "size", "ready", "starting", "claimed",
                      "misses", "resources", "network", "last_error"}, p
    wait_ready(api, "p1", 2)
    before = members(d, api)
    assert len(before) == 2
    assert not api.get("/v1/sandboxes").json["sandboxes"], "members are hidden"
    assert [x["name"] for x in api.get("/v1/pools").json["pools"]] == ["p1"]
    t0 = time.monotonic()
    r = api.post("/v1/sandboxes", {"name": "mine", "env": {"X": "42"}, "labels": {"k": "v"},
                                   "session_id": "s1", "ttl_s": 600})
    rtt = time.monotonic() - t0
    assert r.status == 201, r
    sb = r.json
    assert sb["from_pool"] is True and sb["id"] in before, sb
    assert sb["name"] == "mine" and sb["labels"] == {"k": "v"} and sb["env"] == {"X": "42"}
    assert sb["session_id"] == "s1" and sb["ttl_s"] == 600 and sb["expires_at"], sb
    timing = r.headers["Server-Timing"]
    assert timing.startswith("app;dur="), timing
    server_ms = float(timing.split("=")[1])
    assert server_ms < 5, f"a pooled create took {server_ms} ms in the daemon"
    assert rtt < 1.0, rtt
    out = sh(api, "mine", "echo $X; hostname; ls /run/secrets 2>&1")
    assert out["stdout"].startswith(f"42\n{sb['id']}\n"), out  # the hostname stays the member's
    assert [s["name"] for s in api.get("/v1/sandboxes").json["sandboxes"]] == ["mine"]
    assert api.get("/v1/sandboxes?label=k=v").json["sandboxes"][0]["id"] == sb["id"]
    # Refilled in the background, back to its size.
    wait_ready(api, "p1", 2)
    p = pool(api, "p1")
    assert p["claimed"] == 1 and p["misses"] == 0, p
    assert sb["id"] not in members(d, api)
    # A normal create is still a normal create: not served by the pool (other resources).
    r = api.post("/v1/sandboxes", {"resources": {"cpus": 0.5}})
    assert r.status == 201 and r.json["from_pool"] is False, r
    # Secrets are files the init mounts when it starts: a spec with secrets is never pooled.
    r = api.post("/v1/sandboxes", {"secrets": ["TOKEN"]})
    assert r.status == 201 and r.json["from_pool"] is False, r
    assert sh(api, r.json["id"], "cat /run/secrets/TOKEN")["stdout"] == "s3cret"
    assert pool(api, "p1")["claimed"] == 1
    # A name that is taken is refused as usual, and the member stays in the pool.
    r = api.post("/v1/sandboxes", {"name": "mine"})
    assert r.status == 409, r
    assert pool(api, "p1")["ready"] == 2
    r = api.post("/v1/sandboxes", {"labels": {"warren.pool": "p1"}})
    assert r.status == 400, r
    delete_pool(api, d, "p1")
    assert api.get("/v1/pools/p1").status == 404
    assert api.delete("/v1/pools/p1").status == 404
    assert api.get("/v1/sandboxes/mine").status == 200, "claimed sandboxes are not the pool's"


def test_miss_is_counted_and_falls_back(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    put_pool(api, "empty", size=0, resources={"cpus": 0.25})
    r = api.post("/v1/sandboxes", {"resources": {"cpus": 0.25}})
    assert r.status == 201 and r.json["from_pool"] is False, r
    p = pool(api, "empty")
    assert p["misses"] == 1 and p["claimed"] == 0 and p["ready"] == 0, p
    r = api.post("/v1/sandboxes", {"resources": {"cpus": 0.5}})  # matches no pool: no miss
    assert r.status == 201 and pool(api, "empty")["misses"] == 1
    # Resizing fills it.
    put_pool(api, "empty", size=1, resources={"cpus": 0.25})
    wait_ready(api, "empty", 1)
    r = api.post("/v1/sandboxes", {"resources": {"cpus": 0.25}})
    assert r.status == 201 and r.json["from_pool"] is True, r
    delete_pool(api, d, "empty")


def test_pool_validation(fresh_daemon):
    d = fresh_daemon(extra_args=["--max-sandboxes", "8"])
    api = Api(d)
    r = api.request("PUT", "/v1/pools/big", body='{"size": 9}')
    assert r.status == 422 and "max-sandboxes" in r.error_message, r
    for body in ('{}', '{"size": -1}', '{"size": 1, "bogus": 1}',
                 '{"size": 1, "template": "host", "image": "x"}', '{"size": "2"}'):
        r = api.request("PUT", "/v1/pools/p", body=body)
        assert r.status == 400, (body, r)
    r = api.request("PUT", "/v1/pools/-bad", body='{"size": 1}')
    assert r.status == 400, r
    assert api.get("/v1/pools").json == {"pools": []}
    assert api.get("/v1/pools/none").status == 404


def test_template_change_replaces_members(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    r = api.request("PUT", "/v1/templates/bb/archive", body=busybox_tar(),
                    headers={"Content-Type": "application/octet-stream"}, timeout=300)
    assert r.status in (200, 201), r
    put_pool(api, "tp", size=2)
    wait_ready(api, "tp", 2)
    host_members = members(d, api)
    p = put_pool(api, "tp", template="bb", size=2)
    assert p["template"] == "bb" and p["ready"] == 0, p
    wait_ready(api, "tp", 2)
    wait_for(lambda: not (members(d, api) & host_members), what="the host members deleted")
    r = api.post("/v1/sandboxes", {"template": "host"})
    assert r.status == 201 and r.json["from_pool"] is False, r
    assert pool(api, "tp")["misses"] == 0
    r = api.post("/v1/sandboxes", {"template": "bb", "name": "bbox"})
    assert r.status == 201 and r.json["from_pool"] is True and r.json["template"] == "bb", r
    assert sh(api, "bbox", "cat /srv/image-file")["stdout"] == "from-the-image\n"
    # The template is in use by the pool's members.
    assert api.delete("/v1/templates/bb").status == 409
    delete_pool(api, d, "tp")
    api.remove("bbox")
    wait_for(lambda: api.delete("/v1/templates/bb").status == 204, what="template deleted")


def test_pool_members_survive_a_restart(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)
    put_pool(api, "durable", size=2, resources={"memory_mib": 256})
    wait_ready(api, "durable", 2)
    before = members(d, api)
    d.kill9()
    d.restart_same()
    p = pool(api, "durable")
    assert p["ready"] == 2 and p["size"] == 2 and p["resources"]["memory_mib"] == 256, p
    assert members(d, api) == before, "the same members, re-adopted"
    r = api.post("/v1/sandboxes", {"resources": {"memory_mib": 256}, "name": "after"})
    assert r.status == 201 and r.json["from_pool"] is True and r.json["id"] in before, r
    assert sh(api, "after", "echo ok")["stdout"] == "ok\n"
    wait_ready(api, "durable", 2)
    # A clean restart too; the claimed sandbox is an ordinary one now.
    d.proc.terminate()
    assert d.proc.wait(timeout=WAIT_S) == 0
    d.logf.close()
    d.restart_same()
    assert pool(api, "durable")["ready"] == 2
    assert api.get("/v1/sandboxes/after").json["labels"] == {}
    delete_pool(api, d, "durable")


def test_cli_pool_set_ls_rm(fresh_daemon):
    d = fresh_daemon()
    api = Api(d)

    def cli(*args):
        return subprocess.run([d.bin, *args], env={**os.environ, "WARREN_URL": d.url},
                              capture_output=True, text=True, timeout=60)

    r = cli("pool", "set", "web", "--size", "1", "--cpus", "0.5")
    assert r.returncode == 0 and r.stdout == "web\n", r
    p = pool(api, "web")
    assert p["size"] == 1 and p["resources"]["cpus"] == 0.5 and p["template"] == "host", p
    wait_ready(api, "web", 1)
    r = cli("pool", "ls")
    assert r.returncode == 0, r
    head, row = r.stdout.splitlines()
    assert head.split() == ["NAME", "TEMPLATE", "SIZE", "READY", "STARTING", "CLAIMED", "MISSES"]
    assert row.split() == ["web", "host", "1", "1", "0", "0", "0"], r.stdout
    assert cli("pool", "ls", "-q").stdout == "web\n"
    assert json.loads(cli("pool", "ls", "--json").stdout)[0]["name"] == "web"
    r = cli("pool", "set", "web")
    assert r.returncode == 2 and "--size" in r.stderr, r
    r = cli("pool", "rm", "web", "nope")
    assert r.returncode == 1 and r.stdout == "web\n" and "nope" in r.stderr, r
    assert api.get("/v1/pools").json == {"pools": []}
    wait_for(lambda: not members(d, api), what="the pool's members deleted")
