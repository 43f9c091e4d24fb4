"""Sandboxes from OCI images (issue 10): pulls from real registries (plain HTTP, TLS with a test
CA, Docker Hub-style token auth, a docker.io mirror), templates, what a sandbox sees of its
image, the errors, concurrent creates sharing one pull, and a pull cut by kill -9 then redone
by a new daemon on the same state dir.

The registries and images come from registry.py (built by hand as OCI layouts, pushed with
skopeo); the registries' access logs count the blob GETs.
"""

import os
import shutil
import signal
import threading
import time

import pytest

from conftest import WAIT_S, Api, Daemon, exec_, sh, wait_for
from registry import (IMAGE_HOSTNAME, MULTILAYER_EXPECT, create_from, env_dict, host_arch,
                      registry_args, tpl_path, wait_template)
from registry import (auth_registry, images, registry, registry_workdir,  # noqa: F401 fixtures
                      slow_registry, tls_registry)
from test_bad_input import check_error


@pytest.fixture(scope="module")
def daemon(registry, tls_registry, auth_registry, slow_registry):
    """This module's daemon knows every registry of the session (overrides conftest's)."""
    d = Daemon(extra_args=registry_args(registry, auth_registry, slow_registry,
                                        ca=tls_registry.ca_file,
                                        auth=auth_registry.auth_file, mirror=registry))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def image_sandbox(api, new_sandbox):
    """Factory: image_sandbox(ref, **spec) -> Sandbox JSON (201 asserted), deleted after."""
    def make(ref, **spec):
        return new_sandbox(image=ref, **spec)
    return make


def out(api, sid, script, **kw):
    res = sh(api, sid, script, **kw)
    assert res["exit_code"] == 0, f"{script!r}: {res!r}"
    return res["stdout"]


# ---------------------------------------------------------------------------------------------
# create from an image


def test_create_from_image(api, registry, images, new_sandbox):
    img = images.get("busybox")
    ref = images.ref(registry, "busybox")
    sb = new_sandbox(image=ref)
    assert sb["state"] == "running"
    assert sb["image"] == ref                  # already canonical: host:port/repo:tag
    assert sb["image_digest"] == img.digest
    # The implicit template is named by the canonical reference.
    assert sb["template"] == ref
    # GET and the list show the same.
    got = api.get(f"/v1/sandboxes/{sb['id']}").json
    assert (got["image"], got["image_digest"], got["template"]) == \
        (ref, img.digest, sb["template"])
    # The implicit template describes the image.
    t = api.get(tpl_path(sb["template"]))
    assert t.status == 200, t
    t = t.json
    assert t["name"] == ref
    assert t["image"] == ref and t["digest"] == img.digest and t["state"] == "ready"
    assert t.get("error") is None
    assert t["size_bytes"] == sum(l.size for l in img.layers)    # compressed layers
    assert t["layers"] == len(img.layers)
    # Not pulling: progress is the whole image, done.
    assert t["progress"] == {"bytes_done": t["size_bytes"], "bytes_total": t["size_bytes"]}
    c = t["config"]
    assert c["env"] == ["PATH=/bin:/usr/bin", "FOO=from-image"]
    assert c["workdir"] == "/srv"
    assert c["user"] in ("", None)
    assert c["entrypoint"] in ([], None)
    assert c["cmd"] == ["sh", "-c", "echo hello-from-cmd"]
    assert isinstance(t["created_at"], str) and t["created_at"].endswith("Z")
    listed = api.get("/v1/templates")
    assert listed.status == 200
    names = [x["name"] for x in listed.json["templates"]]
    assert names[0] == "host" and ref in names
    # POST /v1/templates without a name: the implicit template, 200 as it is ready already.
    r = api.post("/v1/templates", {"image": ref})
    assert r.status == 200 and r.json["name"] == ref and r.json["state"] == "ready", r
    # A second sandbox of the same ref reuses the template: no new manifest or blob GET of
    # the image's blobs.
    mark = registry.mark()
    sb2 = new_sandbox(image=ref)
    assert sb2["template"] == sb["template"] and sb2["image_digest"] == img.digest
    registry.settle()
    assert registry.blob_gets(since=mark) == []


def test_no_image_is_host(api, new_sandbox):
    sb = new_sandbox()
    assert sb["template"] == "host"
    # LEAD: a host sandbox's image fields are absent or null.
    assert sb.get("image") is None and sb.get("image_digest") is None


def test_inside_busybox(api, registry, images, new_sandbox):
    ref = images.ref(registry, "busybox")
    sb = new_sandbox(image=ref)
    sid = sb["id"]
    assert exec_(api, sid, argv=["id", "-u"])["stdout"] == "0\n"
    assert out(api, sid, "stat -c %u:%g /bin/busybox /etc/passwd") == "0:0\n0:0\n"
    assert out(api, sid, "touch /etc/newfile && echo ok > /etc/newfile && cat /etc/newfile") \
        == "ok\n"
    assert out(api, sid, "echo $FOO") == "from-image\n"
    assert exec_(api, sid, argv=["sh", "-c", "echo $FOO"], env={"FOO": "from-exec"})["stdout"] \
        == "from-exec\n"
    # Without argv or shell, the image's own command (Entrypoint + Cmd) runs.
    r = exec_(api, sid)
    assert r["exit_code"] == 0 and r["stdout"] == "hello-from-cmd\n", r
    # cwd: the image's WorkingDir unless the exec says otherwise.
    assert exec_(api, sid, argv=["pwd"])["stdout"] == "/srv\n"
    assert exec_(api, sid, argv=["pwd"], cwd="/workspace")["stdout"] == "/workspace\n"
    assert out(api, sid, "cat image-file") == "from-the-image\n"
    # user: by name (the image's /etc/passwd) or by number.
    r = exec_(api, sid, argv=["sh", "-c", "id -u; id -g; whoami"], user="app")
    assert r["exit_code"] == 0 and r["stdout"] == "1000\n1000\napp\n", r
    r = exec_(api, sid, argv=["id", "-u"], user="1000")
    assert r["stdout"] == "1000\n", r
    r = exec_(api, sid, argv=["sh", "-c", "touch /etc/app-cannot"], user="app")
    assert r["exit_code"] != 0, r
    # The host's /usr is not there; the image's empty /usr/bin is.
    assert os.path.exists("/usr/bin/python3")
    assert out(api, sid, "ls -A /usr/bin | wc -l; test -e /usr/bin/python3 || echo absent") \
        == "0\nabsent\n"
    assert out(api, sid, "test -e /usr/lib/x86_64-linux-gnu || echo absent") == "absent\n"
    # /etc/hosts, /etc/hostname, /etc/resolv.conf are warren's, not the image's.
    assert out(api, sid, "cat /etc/hostname").strip() == sb["name"]
    assert out(api, sid, "cat /etc/hostname") != IMAGE_HOSTNAME
    hosts = out(api, sid, "cat /etc/hosts")
    # LEAD: what warren writes in /etc/hosts is not specified beyond "warren's": localhost, and
    # not the image's line.
    assert "image-hosts-marker" not in hosts and "localhost" in hosts
    assert "image-resolv-marker" not in out(api, sid, "cat /etc/resolv.conf")
    # /workspace exists and is writable, by root and by the image's user.
    assert out(api, sid, "echo w > /workspace/w && cat /workspace/w") == "w\n"
    r = exec_(api, sid, argv=["sh", "-c", "echo a > /workspace/by-app && stat -c %u "
                              "/workspace/by-app"], user="app")
    # LEAD: /workspace is writable by the image's non-root users too (mode 1777 or owned by
    # them); if the lead decides root-only, drop this.
    assert r["exit_code"] == 0 and r["stdout"] == "1000\n", r
    # /tmp as built (1777), and writable.
    assert out(api, sid, "stat -c %a /tmp; touch /tmp/x && echo ok") == "1777\nok\n"


def test_sandbox_env_overrides_image_env(api, registry, images, new_sandbox):
    ref = images.ref(registry, "busybox")
    sb = new_sandbox(image=ref, env={"FOO": "from-sandbox", "BAR": "b"})
    sid = sb["id"]
    assert out(api, sid, "echo $FOO $BAR") == "from-sandbox b\n"
    r = exec_(api, sid, argv=["sh", "-c", "echo $FOO $BAR"], env={"FOO": "from-exec"})
    assert r["stdout"] == "from-exec b\n"
    # The image's PATH is the one in force (its /bin/busybox applets are found).
    assert out(api, sid, "echo $PATH") == "/bin:/usr/bin\n"


def test_multilayer_image_as_built(api, registry, images, new_sandbox):
    """Whiteouts, an opaque dir, hard links, setuid, owner 1000, gzip + zstd + plain layers."""
    img = images.get("multilayer")
    ref = images.ref(registry, "multilayer")
    sb = new_sandbox(image=ref)
    sid = sb["id"]
    assert sb["image_digest"] == img.digest
    for path, want in MULTILAYER_EXPECT.items():
        if want is None:
            assert out(api, sid, f"test -e {path} || test -L {path} || echo absent") == \
                "absent\n", path
            continue
        kind, content, mode, uid, gid = want
        flag = "-f" if kind == "file" else "-d"
        assert out(api, sid, f"test {flag} {path} && stat -c '%a %u %g' {path}") == \
            f"{mode:o} {uid} {gid}\n", path
        if content is not None:
            assert out(api, sid, f"cat {path}") == content, path
    # The two names of the hard link are one inode (2 links).
    r = out(api, sid, "stat -c '%i %h' /data/hl1 /data/hl2").splitlines()
    assert r[0] == r[1] and r[0].endswith(" 2"), r
    # The file owned by app is readable by app and not by others.
    assert exec_(api, sid, argv=["cat", "/data/owned"], user="app")["stdout"] == "owned by app\n"
    assert exec_(api, sid, argv=["cat", "/data/owned"], user="65534")["exit_code"] != 0
    assert out(api, sid, "ls /opaque") == "c\n"


def test_index_picks_host_platform(api, registry, images, new_sandbox):
    img = images.get("index")
    ref = images.ref(registry, "index")
    sb = new_sandbox(image=ref)
    assert out(api, sb["id"], "cat /platform") == host_arch() + "\n"
    # LEAD: image_digest of a multi-platform ref: the index's digest (what the tag resolves to,
    # as `docker pull` prints) or the chosen platform's manifest; both accepted.
    assert sb["image_digest"] in (img.digest, img.manifests[host_arch()])


def test_tls_registry_with_ca(api, tls_registry, images, new_sandbox):
    img = images.get("busybox")
    ref = images.ref(tls_registry, "busybox")
    sb = new_sandbox(image=ref)
    assert sb["image_digest"] == img.digest
    # It spoke TLS to that registry (the blobs may be in the daemon's store already: they
    # are the same as the plain registry's busybox).
    tls_registry.settle()
    assert any(r.path.startswith("/v2/test/busybox/manifests/") and r.status == 200
               for r in tls_registry.requests_log()), tls_registry.requests_log()


def test_token_auth_registry(api, auth_registry, images, new_sandbox):
    img = images.get("busybox")
    ref = images.ref(auth_registry, "busybox", repo="test/authed")
    mark, tmark = auth_registry.mark(), len(auth_registry.token_requests())
    sb = new_sandbox(image=ref)
    assert sb["image_digest"] == img.digest
    granted = auth_registry.token_requests(since=tmark, granted=True)
    assert granted and all(s == "repository:test/authed:pull" for s, _ in granted), granted
    assert not auth_registry.token_requests(since=tmark, granted=False)
    # Every manifest and blob request that got through carried the Bearer token.
    served = [r for r in auth_registry.requests_log()[mark:]
              if r.status in (200, 206) and r.path.startswith("/v2/")]
    assert served and all(r.auth == "bearer" for r in served), served


def test_token_auth_denied(fresh_daemon, auth_registry, images):
    """Wrong credentials, and none at all: the token server says 401, the daemon 403."""
    ref = images.ref(auth_registry, "busybox", repo="test/authed")
    for auth in (auth_registry.bad_auth_file, None):
        d = fresh_daemon(extra_args=registry_args(auth_registry, auth=auth))
        api = Api(d)
        tmark = len(auth_registry.token_requests())
        r = create_from(api, image=ref)
        check_error(r, 403, "registry_denied")
        # LEAD: the message names the registry, like registry_unavailable's.
        assert auth_registry.host in r.error_message, r
        assert auth_registry.token_requests(since=tmark) and \
            not auth_registry.token_requests(since=tmark, granted=True)
        assert api.get("/v1/sandboxes").json["sandboxes"] == []


def test_tls_registry_without_ca(fresh_daemon, tls_registry, images):
    ref = images.ref(tls_registry, "busybox")
    d = fresh_daemon()
    r = create_from(Api(d), image=ref)
    # LEAD: a certificate the daemon cannot verify makes the registry unusable: 502
    # registry_unavailable naming the host (the message should say why: the certificate).
    check_error(r, 502, "registry_unavailable", names=tls_registry.host)


def test_plain_http_only_with_insecure_registry(fresh_daemon, registry, images):
    ref = images.ref(registry, "busybox")
    d = fresh_daemon()
    mark = registry.mark()
    r = create_from(Api(d), image=ref)
    # LEAD: without --insecure-registry the daemon speaks TLS only, which a plain registry
    # cannot answer: 502 registry_unavailable naming the host.
    check_error(r, 502, "registry_unavailable", names=registry.host)
    registry.settle()
    assert not [x for x in registry.requests_log()[mark:] if x.status == 200
                and "settle=" not in x.path], "the daemon fell back to plain HTTP"


def test_pull_timeout(fresh_daemon, slow_registry, images):
    """--pull-timeout 2 against a 50 MiB layer sent at 8 MiB/s: the pull gives up."""
    ref = images.ref(slow_registry, "big", repo="test/big-timeout")
    d = fresh_daemon(extra_args=registry_args(slow_registry, extra=["--pull-timeout", "2"]))
    api = Api(d)
    t0 = time.monotonic()
    r = create_from(api, image=ref)
    took = time.monotonic() - t0
    # A create that waited --pull-timeout for its image: 504 timeout naming the image (whose
    # reference names the registry); the pull goes on in the background.
    check_error(r, 504, "timeout", names=slow_registry.host)
    assert 2 <= took < 2 + WAIT_S, took
    assert api.get("/v1/sandboxes").json["sandboxes"] == []
    # The pull goes on: the template gets ready, and the next create uses it.
    wait_template(api, ref, timeout=120)
    r = create_from(api, image=ref)
    assert r.status == 201, r
    api.remove(r.json["id"])


def test_mirror_for_docker_io(api, registry, images, new_sandbox):
    img = images.get("busybox")
    images.ref(registry, "busybox", repo="library/busybox")
    mark = registry.mark()
    sb = new_sandbox(image="busybox:1")
    assert sb["image"] == "docker.io/library/busybox:1"
    assert sb["image_digest"] == img.digest
    assert out(api, sb["id"], "echo $FOO") == "from-image\n"
    # It came from the mirror, as library/busybox.
    registry.settle()
    manifests = [r for r in registry.requests_log()[mark:]
                 if r.path.startswith("/v2/library/busybox/manifests/")]
    assert manifests, registry.requests_log()[mark:]


# ---------------------------------------------------------------------------------------------
# templates


def test_template_lifecycle(api, registry, images, new_sandbox):
    img = images.get("multilayer")
    # Its own repository, so that the daemon has not pulled this ref yet.
    ref = images.ref(registry, "multilayer", repo="test/tmpl-lifecycle")
    r = api.post("/v1/templates", {"name": "ml", "image": ref})
    assert r.status == 202, r
    assert r.json["name"] == "ml" and r.json["image"] == ref
    assert r.json["state"] == "pulling"
    check_error(api.post("/v1/templates", {"name": "ml", "image": ref}), 409, "conflict")
    t = wait_template(api, "ml")
    assert t["digest"] == img.digest and t.get("error") is None
    assert t["layers"] == 4
    assert t["progress"] == {"bytes_done": t["size_bytes"], "bytes_total": t["size_bytes"]}
    assert t["config"]["workdir"] == "/srv"
    sb = new_sandbox(template="ml")
    assert sb["template"] == "ml" and sb["image"] == ref and sb["image_digest"] == img.digest
    assert out(api, sb["id"], "cat /data/zstd-marker") == "zstd\n"
    r = api.delete(tpl_path("ml"))
    check_error(r, 409, "template_in_use")
    assert api.get(tpl_path("ml")).json["state"] == "ready"
    api.remove(sb["id"])
    r = api.delete(tpl_path("ml"))
    assert r.status == 204, r
    check_error(api.get(tpl_path("ml")), 404, "not_found")
    check_error(api.delete(tpl_path("ml")), 404, "not_found")
    assert "ml" not in [x["name"] for x in api.get("/v1/templates").json["templates"]]


def test_template_delete_while_pulling(api, slow_registry, images):
    """A template being pulled (50 MiB at 8 MiB/s) cannot be deleted until it is done."""
    ref = images.ref(slow_registry, "big", repo="test/big-delete")
    r = api.post("/v1/templates", {"name": "pulling-big", "image": ref})
    assert r.status == 202 and r.json["state"] == "pulling", r
    check_error(api.delete(tpl_path("pulling-big")), 409, "conflict")
    # Progress: the total is known once the manifest is in, and what is done grows.
    t = wait_for(lambda: (lambda t: t if (t["progress"] or {}).get("bytes_total", 0)
                          >= 50 << 20 else None)(api.get(tpl_path("pulling-big")).json),
                 what="the pull's bytes_total")
    assert t["state"] == "pulling" and 0 <= t["progress"]["bytes_done"] < \
        t["progress"]["bytes_total"], t
    done0 = t["progress"]["bytes_done"]
    wait_for(lambda: (api.get(tpl_path("pulling-big")).json.get("progress") or
                      {"bytes_done": 1 << 62})["bytes_done"] > done0,
             what="the pull's progress to grow")
    wait_template(api, "pulling-big", timeout=120)
    assert api.delete(tpl_path("pulling-big")).status == 204


def test_template_errors(api, registry, images):
    ref = images.ref(registry, "busybox")
    n = len(api.get("/v1/sandboxes").json["sandboxes"])
    check_error(api.post("/v1/sandboxes", {"template": "no-such-template"}), 404, "not_found")
    check_error(api.get(tpl_path("no-such-template")), 404, "not_found")
    check_error(api.delete(tpl_path("no-such-template")), 404, "not_found")
    # Without a name: the image's implicit template (as `docker pull`): 202 while it is pulled,
    # 200 once it is ready.
    r = api.post("/v1/templates", {"image": ref})
    assert r.status in (200, 202) and r.json["name"] == ref, r
    wait_template(api, ref)
    r = api.post("/v1/templates", {"image": ref})
    assert r.status == 200 and r.json["state"] == "ready", r
    check_error(api.post("/v1/templates", {"name": "x"}), 400, "bad_request", names="image")
    check_error(api.post("/v1/templates", {"name": 5, "image": ref}), 400, "bad_request",
                names="name")
    check_error(api.post("/v1/templates", {"name": "x", "image": ref, "bogus": 1}), 400,
                "bad_request", names="bogus")
    # Names as for sandboxes ([A-Za-z0-9][A-Za-z0-9_.-]*, 1-63); `host` is reserved.
    # `host` is the built-in template: taken (409), like any existing name.
    check_error(api.post("/v1/templates", {"name": "host", "image": ref}), 409, "conflict")
    for bad in ("../x", "a/b", "", "-x", "x" * 64):
        check_error(api.post("/v1/templates", {"name": bad, "image": ref}), 400, "bad_request",
                    names="name")
    check_error(api.delete(tpl_path("host")), 409, "conflict")
    assert api.get(tpl_path("host")).json["name"] == "host"
    # `image` and `template` together -> 400.
    check_error(api.post("/v1/sandboxes", {"image": ref, "template": "host"}), 400,
                "bad_request")
    assert len(api.get("/v1/sandboxes").json["sandboxes"]) == n


# ---------------------------------------------------------------------------------------------
# errors


def test_unknown_image_or_tag(api, registry, images):
    images.ref(registry, "busybox")
    n = len(api.get("/v1/sandboxes").json["sandboxes"])
    for ref in (f"{registry.host}/test/busybox:no-such-tag",
                f"{registry.host}/test/no-such-repo:1"):
        r = create_from(api, image=ref)
        check_error(r, 404, "image_not_found")
    assert len(api.get("/v1/sandboxes").json["sandboxes"]) == n


def test_registry_down(api):
    from conftest import free_port
    host = f"127.0.0.1:{free_port()}"
    r = create_from(api, image=f"{host}/test/busybox:1")
    check_error(r, 502, "registry_unavailable", names=host)


@pytest.mark.parametrize("ref", ["", "UPPER/case:1", "a b:1", "busybox:", "busybox:bad tag",
                                 "busybox@sha256:1234", "busybox:1@sha256:xyz", "/busybox:1",
                                 "busybox::1", "a" * 300, "x//y:1"])
def test_malformed_reference(api, ref):
    n = len(api.get("/v1/sandboxes").json["sandboxes"])
    check_error(create_from(api, image=ref), 400, "bad_request", names="image")
    check_error(api.post("/v1/templates", {"name": "bad-ref", "image": ref}), 400,
                "bad_request", names="image")
    assert len(api.get("/v1/sandboxes").json["sandboxes"]) == n


def test_image_wrong_type(api):
    check_error(api.post("/v1/sandboxes", {"image": 5}), 400, "bad_request", names="image")


def test_digest_mismatch(api, registry, images):
    img = images.get("corrupt")
    ref = images.ref(registry, "corrupt")
    n = len(api.get("/v1/sandboxes").json["sandboxes"])
    r = create_from(api, image=ref)
    check_error(r, 502, "image_invalid")
    assert len(api.get("/v1/sandboxes").json["sandboxes"]) == n
    # LEAD: the message names the blob that did not match.
    assert img.layers[-1].digest.split(":")[1][:12] in r.error_message, r
    # Nothing of it was kept as good: a retry fetches the blob again (and fails again).
    mark = registry.mark()
    check_error(create_from(api, image=ref), 502, "image_invalid")
    registry.settle()
    assert registry.blob_gets(img.layers[-1].digest, since=mark)


def test_pull_by_digest(api, registry, images, new_sandbox):
    img = images.get("busybox")
    images.ref(registry, "busybox")
    sb = new_sandbox(image=f"{registry.host}/test/busybox@{img.digest}")
    assert sb["image_digest"] == img.digest
    # A digest the registry does not have.
    r = create_from(api, image=f"{registry.host}/test/busybox@sha256:" + "0" * 64)
    check_error(r, 404, "image_not_found")


# ---------------------------------------------------------------------------------------------
# Debian: a real distribution, dpkg and apt


def test_debian_dpkg_and_apt(api, registry, images):
    ref = images.ref(registry, "debian")
    deb = images.deb()
    r = create_from(api, image=ref, timeout=600)
    assert r.status == 201, r
    sid = r.json["id"]
    try:
        with open(deb, "rb") as f:
            data = f.read()
        r = api.request("PUT", f"/v1/sandboxes/{sid}/files?path=/workspace/x.deb", body=data)
        assert r.status == 200 and r.json["size"] == len(data), r
        res = exec_(api, sid, argv=["dpkg", "-i", "/workspace/x.deb"], timeout_s=120)
        assert res["exit_code"] == 0, res
        assert out(api, sid, "cat /usr/share/warren-test/marker") == "installed-by-dpkg\n"
        assert "install ok installed" in out(api, sid, "dpkg -s warren-test-pkg")
        res = exec_(api, sid, argv=["apt-get", "--version"])
        assert res["exit_code"] == 0 and res["stdout"].startswith("apt "), res
        # dpkg's lock is writable: a second dpkg run takes it and lets it go again.
        assert out(api, sid, "test -w /var/lib/dpkg/lock && dpkg -r warren-test-pkg >/dev/null "
                   "&& test ! -e /usr/share/warren-test/marker && echo removed") == "removed\n"
        assert out(api, sid, "cat /etc/debian_version").startswith("12.")
        assert exec_(api, sid, argv=["id", "-un"])["stdout"] == "root\n"
    finally:
        api.remove(sid)


# ---------------------------------------------------------------------------------------------
# concurrency and restarts


def test_concurrent_creates_pull_once(fresh_daemon, registry, images):
    """Two creates of one missing image at once: both 201, each blob fetched once."""
    img = images.get("busybox")
    ref = images.ref(registry, "busybox", repo="test/concurrent")
    d = fresh_daemon(extra_args=registry_args(registry))
    api = Api(d)
    mark = registry.mark()
    results = [None, None]

    def create(i):
        results[i] = create_from(api, image=ref)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(r is not None and r.status == 201 for r in results), results
    a, b = results[0].json, results[1].json
    assert a["id"] != b["id"] and a["template"] == b["template"]
    assert a["image_digest"] == b["image_digest"] == img.digest
    want = {l.digest: 1 for l in img.layers}
    want[img.config_digest] = 1
    registry.settle()
    assert registry.blob_get_counts(since=mark) == want
    for sb in (a, b):
        assert out(api, sb["id"], "echo $FOO") == "from-image\n"
        api.remove(sb["id"])


def test_pull_killed_then_redone_by_new_daemon(fresh_daemon, slow_registry, images):
    """kill -9 while a 50 MiB layer downloads (through a proxy sending 8 MiB/s); a new daemon
    on the same state dir pulls again and succeeds, resuming the layer where it stopped."""
    img = images.get("big")
    ref = images.ref(slow_registry, "big")
    big = img.layers[-1]
    args = registry_args(slow_registry)
    d1 = fresh_daemon(extra_args=args)
    api1 = Api(d1)
    mark = slow_registry.mark()
    holder = {}

    def create():
        try:
            holder["r"] = create_from(api1, image=ref)
        except OSError as e:
            holder["e"] = e

    t = threading.Thread(target=create)
    t.start()
    wait_for(lambda: any(r.bytes >= 30 << 20 for r in slow_registry.blob_gets(big.digest,
                                                                              since=mark)),
             timeout=120, what="the daemon to download 30 MiB of the big layer")
    d1.proc.send_signal(signal.SIGKILL)
    d1.proc.wait()
    d1.stopped = True          # dead on purpose: its teardown check would call that a crash
    d1.logf.close()
    t.join(timeout=60)
    assert "r" not in holder, f"the create answered although the daemon was killed: {holder}"
    first = sum(r.bytes for r in slow_registry.blob_gets(big.digest, since=mark))
    assert 0 < first < big.size
    # LEAD: conftest has no "same state dir" restart yet (another helper is adding one): the
    # new daemon is pointed at the dead one's dirs by hand; switch to conftest's once merged.
    d2 = Daemon(extra_args=args)
    shutil.rmtree(d2.base_dir)
    d2.base_dir, d2.state_dir = d1.base_dir, d1.state_dir
    d2.log_path = d1.log_path + ".2"
    # From here on every request is the new daemon's: it may take the pull up again as soon
    # as it starts, before any create asks for it.
    mark2 = slow_registry.mark()
    d2.start()
    try:
        api2 = Api(d2)
        r = create_from(api2, image=ref, timeout=300)
        assert r.status == 201, f"{r!r}\nlog:\n{d2.log()}"
        assert r.json["image_digest"] == img.digest
        assert out(api2, r.json["id"], "wc -c < /random.bin") == f"{50 << 20}\n"
        # LEAD: resuming (a Range GET from what the first daemon had) is the spec's "if you
        # can measure it": measured here, as bytes of the layer sent to the second daemon.
        # What the proxy counts as sent includes what sat in socket buffers when the first
        # daemon died (up to a few MiB on loopback): hence the 16 MiB of slack.
        gets = slow_registry.blob_gets(big.digest, since=mark2)
        again = sum(g.bytes for g in gets)
        assert again <= big.size - first + (16 << 20), \
            f"the layer was fetched again from the start: {gets}"
        starts = [int(g.range.split("=")[1].split("-")[0]) for g in gets
                  if g.range and g.range.startswith("bytes=")]
        assert starts and max(starts) > 0, gets
        api2.remove(r.json["id"])
    finally:
        d2.stop()


# ---------------------------------------------------------------------------------------------
# restarts


def test_image_sandbox_survives_the_daemon(fresh_daemon, registry, images):
    """An image sandbox outlives a crash of the daemon: re-adopted with its root (an overlay in
    the daemon's pinned mount namespace), its image config and its files; stop/start after it
    mounts the root again; its template is still known and still in use."""
    ref = images.ref(registry, "multilayer")
    d = fresh_daemon(extra_args=registry_args(registry))
    api = Api(d)
    r = create_from(api, image=ref, name="survivor")
    assert r.status == 201, r
    sid = r.json["id"]
    d.created_ids.add(sid)
    assert exec_(api, sid, argv=["sh", "-c", "echo kept > /etc/kept; echo w > /workspace/w"])[
        "exit_code"] == 0
    d.kill9()
    d.restart_same()
    api = Api(d)
    got = api.get(f"/v1/sandboxes/{sid}").json
    assert got["state"] == "running" and got["image"] == ref and got["template"] == ref, got
    assert exec_(api, sid, argv=["cat", "/etc/kept", "/workspace/w"])["stdout"] == "kept\nw\n"
    assert exec_(api, sid, argv=["sh", "-c", "echo $FOO; pwd"])["stdout"] == "from-image\n/srv\n"
    assert api.get(tpl_path(ref)).json["state"] == "ready"
    check_error(api.delete(tpl_path(ref)), 409, "template_in_use")
    # Stop, then start: a new init on the same root, mounted again.
    assert api.post(f"/v1/sandboxes/{sid}/stop", {"grace_s": 1}).status == 200
    assert api.post(f"/v1/sandboxes/{sid}/start", {}).status == 200
    assert exec_(api, sid, argv=["cat", "/etc/kept"])["stdout"] == "kept\n"
    assert api.delete(f"/v1/sandboxes/{sid}").status == 204
