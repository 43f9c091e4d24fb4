"""Snapshots and forks (issue 10): `POST /v1/sandboxes/{id}/snapshot {"name"}` -> 201 template
(ready) holding what the sandbox wrote in / and /workspace (and what it deleted), and
`POST /v1/sandboxes/{id}/fork {}` -> 201 a new sandbox with the same spec and files, after
which the two are independent.
"""

import pytest

from conftest import Daemon, sh
from registry import registry_args, tpl_path
from registry import images, registry, registry_workdir  # noqa: F401 fixtures
from test_bad_input import check_error

WRITE = ("echo in-etc > /etc/snap-etc && echo in-ws > /workspace/snap-ws && "
         "mkdir -p /opt/deep/dir && echo deep > /opt/deep/dir/f && "
         "echo mine > /snap-owned && chown 1000:1000 /snap-owned && chmod 600 /snap-owned && "
         "ln -s /etc/snap-etc /snap-link && rm /srv/image-file && "
         "echo changed > /etc/group.extra")

CHECK = ("cat /etc/snap-etc /workspace/snap-ws /opt/deep/dir/f; "
         "stat -c '%u:%g %a' /snap-owned; readlink /snap-link; "
         "test -e /srv/image-file || echo image-file-gone")
CHECK_OUT = "in-etc\nin-ws\ndeep\n1000:1000 600\n/etc/snap-etc\nimage-file-gone\n"


@pytest.fixture(scope="module")
def daemon(registry):
    d = Daemon(extra_args=registry_args(registry))
    d.start()
    yield d
    d.stop()


def out(api, sid, script, **kw):
    res = sh(api, sid, script, **kw)
    assert res["exit_code"] == 0, f"{script!r}: {res!r}"
    return res["stdout"]


def snapshot(api, sid, name):
    return api.post(f"/v1/sandboxes/{sid}/snapshot", {"name": name}, timeout=300)


def test_snapshot_of_image_sandbox(api, registry, images, new_sandbox):
    img = images.get("busybox")
    ref = images.ref(registry, "busybox")
    sb = new_sandbox(image=ref, env={"MINE": "1"})
    sid = sb["id"]
    out(api, sid, WRITE)
    r = snapshot(api, sid, "snap1")
    assert r.status == 201, r
    t = r.json
    assert t["name"] == "snap1" and t["state"] == "ready" and t.get("error") is None, t
    assert t["image"] is None, t                                  # null for a snapshot
    assert t["progress"] == {"bytes_done": t["size_bytes"], "bytes_total": t["size_bytes"]}
    # LEAD: a snapshot is the image with one more layer (what the sandbox wrote).
    assert t["layers"] == len(img.layers) + 1
    assert t["size_bytes"] > 0 and t["digest"].startswith("sha256:")
    assert t["digest"] != img.digest
    # LEAD: a snapshot keeps the image's config (env, workdir, cmd).
    assert t["config"]["workdir"] == "/srv"
    assert "snap1" in [x["name"] for x in api.get("/v1/templates").json["templates"]]
    # The original goes on running, unchanged by the snapshot.
    assert api.get(f"/v1/sandboxes/{sid}").json["state"] == "running"
    assert out(api, sid, CHECK) == CHECK_OUT
    # A sandbox from the snapshot has all of it.
    sb2 = new_sandbox(template="snap1")
    assert sb2["template"] == "snap1"
    assert out(api, sb2["id"], CHECK) == CHECK_OUT
    assert out(api, sb2["id"], "echo $FOO; pwd") == "from-image\n/srv\n"
    # And is its own: writes there do not reach the original, nor the other way round.
    out(api, sb2["id"], "echo only-in-2 > /etc/snap-etc; echo x > /workspace/new2")
    out(api, sid, "echo only-in-1 > /workspace/new1")
    assert out(api, sid, "cat /etc/snap-etc; test -e /workspace/new2 || echo no") == \
        "in-etc\nno\n"
    assert out(api, sb2["id"], "test -e /workspace/new1 || echo no") == "no\n"
    # In use -> 409; free -> 204.
    check_error(api.delete(tpl_path("snap1")), 409, "template_in_use")
    api.remove(sb2["id"])
    assert api.delete(tpl_path("snap1")).status == 204
    check_error(api.get(tpl_path("snap1")), 404, "not_found")


def test_snapshot_of_host_sandbox(api, new_sandbox):
    """A sandbox of the host template has no image to build on: 409 naming why, no template
    made, and the sandbox untouched."""
    sb = new_sandbox()
    out(api, sb["id"], "echo ws > /workspace/h")
    check_error(snapshot(api, sb["id"], "snap-host"), 409, "conflict", names="host template")
    check_error(api.get(tpl_path("snap-host")), 404, "not_found")
    check_error(api.post(f"/v1/sandboxes/{sb['id']}/fork", {}), 409, "conflict")
    assert out(api, sb["id"], "cat /workspace/h") == "ws\n"


def test_snapshot_errors(api, registry, images, new_sandbox):
    sb = new_sandbox(image=images.ref(registry, "busybox"))
    sid = sb["id"]
    check_error(api.post("/v1/sandboxes/sb-aaaaaaaaaaaa/snapshot", {"name": "x"}), 404,
                "not_found")
    check_error(api.post(f"/v1/sandboxes/{sid}/snapshot", {}), 400, "bad_request",
                names="name")
    check_error(api.post(f"/v1/sandboxes/{sid}/snapshot", {"name": 5}), 400, "bad_request",
                names="name")
    check_error(api.post(f"/v1/sandboxes/{sid}/snapshot", {"name": "a/b"}), 400,
                "bad_request", names="name")
    check_error(api.post(f"/v1/sandboxes/{sid}/snapshot", {"name": "x", "bogus": 1}), 400,
                "bad_request", names="bogus")
    assert snapshot(api, sid, "snap-dup").status == 201
    # LEAD: an existing template name -> 409 conflict (the template stays as it was).
    check_error(snapshot(api, sid, "snap-dup"), 409, "conflict")
    check_error(snapshot(api, sid, "host"), 409, "conflict", names="host")
    assert api.delete(tpl_path("snap-dup")).status == 204


def test_fork(api, registry, images, new_sandbox):
    img = images.get("busybox")
    ref = images.ref(registry, "busybox")
    sb = new_sandbox(image=ref, env={"MINE": "1"}, labels={"team": "a"},
                     resources={"cpus": 1, "memory_mib": 256, "pids": 128, "disk_mib": 512})
    sid = sb["id"]
    out(api, sid, WRITE)
    r = api.post(f"/v1/sandboxes/{sid}/fork", {}, timeout=300)
    assert r.status == 201, r
    f = r.json
    api.daemon.created_ids.add(f["id"])   # conftest records POST /v1/sandboxes only
    try:
        assert f["id"] != sid and f["name"] != sb["name"] and f["state"] == "running"
        for k in ("resources", "network", "env", "labels"):
            assert f[k] == sb[k], k
        # The fork is made of a snapshot of the original: a template of its own (no image
        # reference; its digest is the snapshot's), listed like any other.
        assert f["template"] != sb["template"] and f["image"] is None
        t = api.get(tpl_path(f["template"])).json
        assert t["state"] == "ready" and t["digest"] == f["image_digest"] != img.digest, t
        assert t["layers"] == len(img.layers) + 1
        assert out(api, f["id"], CHECK) == CHECK_OUT
        assert out(api, f["id"], "echo $MINE $FOO") == "1 from-image\n"
        # Independent from here on.
        out(api, f["id"], "echo fork > /workspace/only-fork; rm /etc/snap-etc")
        assert out(api, sid, "cat /etc/snap-etc; test -e /workspace/only-fork || echo no") == \
            "in-etc\nno\n"
        api.remove(sid)
        assert out(api, f["id"], "cat /workspace/only-fork /workspace/snap-ws") == "fork\nin-ws\n"
    finally:
        api.remove(f["id"])
    # LEAD: the fork's template outlives the fork (deletable once no sandbox uses it).
    assert api.delete(tpl_path(f["template"])).status == 204


def test_fork_errors(api, new_sandbox):
    check_error(api.post("/v1/sandboxes/sb-aaaaaaaaaaaa/fork", {}), 404, "not_found")
    sb = new_sandbox()
    check_error(api.post(f"/v1/sandboxes/{sb['id']}/fork", {"bogus": 1}), 400, "bad_request",
                names="bogus")
