"""The image tests' own scaffolding works (tests/integration/registry.py), without a daemon:
every test image builds, pushes with its digests kept, and reads back through skopeo and the
registry's HTTP API; the TLS registry verifies with the test CA; the token server challenges,
issues tokens and proxies; the access log counts blob GETs."""

import base64
import hashlib
import json
import os
import subprocess
import tarfile
import time

import pytest

from conftest import wait_for
from registry import (AUTH_PASSWORD, AUTH_USER, BUSYBOX_CONFIG, MT_INDEX, MULTILAYER_EXPECT,
                      PWNED, SKOPEO, Images, host_arch, hostile_cases, multilayer_layers, other_arch,
                      write_image)
from registry import (auth_registry, images, registry,  # noqa: F401 fixtures
                      registry_workdir, slow_registry, tls_registry)

PUSHED = ["busybox", "multilayer", "index", "corrupt", "big", "debian"] + \
    ["hostile-" + k for k in hostile_cases()]


@pytest.mark.parametrize("name", PUSHED)
def test_push_and_inspect(registry, images, name):
    img = images.get(name)
    ref = images.ref(registry, name)
    repo_tag = ref.split("/", 1)[1]
    raw = registry.inspect(repo_tag, raw=True)
    if img.is_index:
        assert raw["mediaType"] == MT_INDEX
        assert {m["platform"]["architecture"] for m in raw["manifests"]} == \
            {host_arch(), other_arch()}
    else:
        assert [l["digest"] for l in raw["layers"]] == img.layer_digests
    if name == "corrupt":
        # skopeo inspect reads manifests and config only: the tampered layer is served, but
        # its bytes do not hash to its digest.
        st, _, body = registry.get(f"/v2/test/corrupt/blobs/{img.layers[-1].digest}")
        assert st == 200 and "sha256:" + hashlib.sha256(body).hexdigest() != img.layers[-1].digest
        return
    info = registry.inspect(repo_tag)
    assert info["Digest"] == img.digest
    assert info["Layers"] == img.layer_digests
    assert info["Architecture"] == host_arch() and info["Os"] == "linux"
    assert info["Env"] == img.config["config"]["Env"]
    # The manifest the registry serves for the tag is byte for byte the one built here.
    st, hdrs, body = registry.get(f"/v2/test/{name}/manifests/1", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, " + MT_INDEX})
    assert st == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == img.digest
    assert hdrs.get("Docker-Content-Digest") == img.digest


def test_busybox_images_build_fast(tmp_path):
    """Each busybox-based image builds in under a second, from nothing (base layer included)."""
    for name in ("busybox", "multilayer", "index", "corrupt", "hostile-dotdot",
                 "hostile-symlink-then-dir"):
        fresh = Images(str(tmp_path / name))
        t0 = time.monotonic()
        fresh.get(name)
        took = time.monotonic() - t0
        assert took < 1.0, f"{name} took {took:.2f} s to build"


def test_blob_get_counting(registry, images):
    img = images.get("busybox")
    images.ref(registry, "busybox")
    mark = registry.mark()
    d = img.layers[0].digest
    st, _, body = registry.get(f"/v2/test/busybox/blobs/{d}")
    assert st == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == d
    registry.get(f"/v2/test/busybox/blobs/{d}", method="HEAD")

    def counted():
        return registry.blob_get_counts(since=mark) == {d: 1}
    wait_for(counted, what="the registry's access log to show the GET")
    assert registry.blob_gets(d, since=mark)[0].bytes == len(body)


def test_busybox_layer_contents(images):
    img = images.get("busybox")
    with tarfile.open(fileobj=__import__("io").BytesIO(img.layers[0].blob)) as t:
        names = {m.name: m for m in t.getmembers()}
    assert names["bin/busybox"].mode == 0o755 and names["bin/sh"].linkname == "busybox"
    assert names["tmp"].mode == 0o1777
    for a in ("sh", "ls", "cat", "id", "touch", "echo", "mkdir", "rm", "stat", "wc", "head",
              "sleep", "env", "pwd", "whoami"):
        assert f"bin/{a}" in names, a
    assert img.config["config"]["WorkingDir"] == "/srv"


def test_multilayer_unpacks_as_expected_with_umoci(registry_workdir, images, tmp_path):
    """The expectations of the multi-layer image hold for a reference unpacker (umoci)."""
    img = write_image(str(tmp_path / "oci"), "multilayer-gz",
                      multilayer_layers(images.base_layer(), third="gzip"), BUSYBOX_CONFIG)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{img.dir}:{img.tag}", str(bundle)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = bundle / "rootfs"
    for path, want in MULTILAYER_EXPECT.items():
        p = root / path.lstrip("/")
        if want is None:
            assert not os.path.lexists(p), path
            continue
        kind, content, mode, uid, gid = want
        st = os.lstat(p)
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid), path
        if content is not None:
            assert p.read_text() == content, path
    assert os.stat(root / "data/hl1").st_ino == os.stat(root / "data/hl2").st_ino


def test_tls_registry(tls_registry, images):
    ref = images.ref(tls_registry, "busybox")
    assert tls_registry.inspect(ref.split("/", 1)[1])["Digest"] == images.get("busybox").digest
    # Without the CA the certificate is refused.
    r = subprocess.run([SKOPEO, "inspect", f"docker://{ref}"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode != 0 and "certificate" in r.stderr, r.stderr


def test_auth_registry(auth_registry, images, tmp_path):
    ref = images.ref(auth_registry, "busybox")
    repo = "test/busybox"
    st, hdrs, _ = auth_registry.get(f"/v2/{repo}/manifests/1")
    assert st == 401
    assert hdrs["WWW-Authenticate"] == (f'Bearer realm="{auth_registry.url}/token",'
                                        f'service="test",scope="repository:{repo}:pull"')
    n = len(auth_registry.token_requests())
    bad = base64.b64encode(f"{AUTH_USER}:nope".encode()).decode()
    st, _, _ = auth_registry.get(f"/token?service=test&scope=repository:{repo}:pull",
                                 headers={"Authorization": "Basic " + bad})
    assert st == 401
    good = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
    st, _, body = auth_registry.get(f"/token?service=test&scope=repository:{repo}:pull",
                                    headers={"Authorization": "Basic " + good})
    assert st == 200
    tok = json.loads(body)
    assert tok["token"] == tok["access_token"]
    assert len(auth_registry.token_requests()) == n + 2
    assert len(auth_registry.token_requests(since=n, granted=True)) == 1
    st, _, body = auth_registry.get(f"/v2/{repo}/manifests/1", headers={
        "Authorization": "Bearer " + tok["token"],
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert st == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == \
        images.get("busybox").digest
    # A token for one repository does not open another.
    st, _, _ = auth_registry.get("/v2/test/other/manifests/1",
                                 headers={"Authorization": "Bearer " + tok["token"]})
    assert st == 401
    # skopeo, as a real client, goes through the whole flow with the config.json.
    r = subprocess.run([SKOPEO, "inspect", "--tls-verify=false", "--authfile",
                        auth_registry.auth_file, f"docker://{ref}"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Digest"] == images.get("busybox").digest
    r = subprocess.run([SKOPEO, "inspect", "--tls-verify=false", "--authfile",
                        auth_registry.bad_auth_file, f"docker://{ref}"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode != 0
    # And a full pull of the blobs through the proxy: bodies stream, digests hold.
    out = tmp_path / "pulled"
    r = subprocess.run([SKOPEO, "copy", "--quiet", "--src-tls-verify=false", "--authfile",
                        auth_registry.auth_file, f"docker://{ref}", f"oci:{out}:1"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    assert auth_registry.blob_gets(images.get("busybox").layers[0].digest)


def test_slow_registry_rate(slow_registry, images):
    img = images.get("big")
    images.ref(slow_registry, "big")
    d = img.layers[-1].digest
    mark = slow_registry.mark()
    t0 = time.monotonic()
    st, _, body = slow_registry.get(f"/v2/test/big/blobs/{d}",
                                    headers={"Range": "bytes=0-8388607"})
    assert st == 206 and len(body) == 8 << 20
    assert time.monotonic() - t0 >= 0.8
    done = wait_for(lambda: [r for r in slow_registry.blob_gets(d, since=mark) if r.done],
                    what="the proxy to log the GET")
    assert done[0].range == "bytes=0-8388607" and done[0].bytes == 8 << 20


NAIVE_UNPACKER = r'''
import base64, io, json, os, subprocess, sys, tarfile
layers = [base64.b64decode(x) for x in json.load(sys.stdin)]
# A private /tmp: what escapes lands there, never on the host.
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "fixture-naive", "/tmp"], check=True)
root = "/tmp/state/templates/x/rootfs"
os.makedirs(root)
for blob in layers:
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        for m in t.getmembers():
            try:
                t.extract(m, root)        # no filter: names and links are trusted
            except OSError:
                pass
print(json.dumps(os.path.lexists(sys.argv[1])))
'''


@pytest.mark.parametrize("case", ["dotdot", "abs", "symlink-root", "symlink-hostdir",
                                  "symlink-dotdot", "symlink-then-dir"])
def test_hostile_layers_escape_a_naive_unpacker(images, case):
    """The hostile images are hostile: an unpacker that trusts names and links (Python's
    tarfile without a filter), in a mount namespace with its own /tmp, writes PWNED. So
    PWNED absent after a create is evidence, not luck."""
    img = images.get("hostile-" + case)
    blobs = [base64.b64encode(l.blob).decode() for l in img.layers[1:]]
    r = subprocess.run(["unshare", "--mount", "/usr/bin/python3", "-c", NAIVE_UNPACKER, PWNED],
                       input=json.dumps(blobs), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) is True, f"{case} did not escape a naive unpacker"
    assert not os.path.lexists(PWNED)


def test_settle(registry, images):
    img = images.get("busybox")
    images.ref(registry, "busybox")
    mark = registry.mark()
    registry.get(f"/v2/test/busybox/blobs/{img.config_digest}")
    registry.settle()
    assert registry.blob_get_counts(since=mark) == {img.config_digest: 1}


def test_push_layout_path(registry, images):
    img = images.get("multilayer")
    registry.push(img.dir, "test/by-path:1")
    assert registry.inspect("test/by-path:1")["Digest"] == img.digest
