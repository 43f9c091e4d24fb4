"""Real OCI registries and test images for the image tests (issue 10).

Session-scoped pytest fixtures that test modules import (``from registry import ...``):

- ``registry``      Debian's docker-registry over plain HTTP on a free 127.0.0.1 port.
- ``tls_registry``  the same behind TLS, its server certificate signed by a test CA made with
                    the openssl CLI (``.ca_file`` is what the daemon gets as ``--registry-ca``).
- ``auth_registry`` token auth the way Docker Hub does it: a stdlib HTTP token server and proxy
                    in front of a docker-registry (``.auth_file`` is a docker config.json with
                    the credentials, for ``--registry-auth``; ``.token_requests()`` counts).
- ``slow_registry`` a proxy in front of ``registry`` that sends bodies at a bounded rate, so a
                    test can kill the daemon in the middle of a download.
- ``images``        builds OCI layouts (once per session, in a temp dir) and pushes them to a
                    registry (once per registry): ``images.ref(registry, "busybox")``.

Every registry records what it served: ``requests_log()`` gives one ``Req`` per request (method,
path, status, bytes sent, and for the proxies the Range header), ``blob_gets(digest=None)``
counts the GETs of blobs.

Images are written as OCI layouts by hand (oci-layout, index.json, blobs/sha256/*) from tar
layers made with tarfile; skopeo pushes them with --preserve-digests, so the digests a test
computes here are the ones the registry serves. Standard library only, plus the Debian
packages docker-registry, skopeo, busybox-static, debootstrap, zstd, openssl, dpkg-deb.
"""

import base64
import fcntl
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import platform
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import pytest

from conftest import WAIT_S, free_port, wait_for

REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"
BUSYBOX = "/bin/busybox"
DEBIAN_CACHE = "/var/cache/warren-test/debian-bookworm.tar"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}

# One random word per test session: the hostile layers aim at paths with it, so a file that
# appears there can only come from this run.
RUN_TAG = secrets.token_hex(4)
# What the hostile layers try to create on the host (absent before and after every test) and
# what they try to delete (created by the fixture, must survive).
PWNED = f"/tmp/fixture-pwned-{RUN_TAG}"
VICTIM = f"/tmp/fixture-victim-{RUN_TAG}"

# Fixed mtime for every tar entry: builds are reproducible, digests stable within a run.
MTIME = 1700000000


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def host_arch():
    """The host's platform in OCI terms (GOARCH names)."""
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


def other_arch():
    return "arm64" if host_arch() != "arm64" else "amd64"


# ---------------------------------------------------------------------------------------------
# Layers


class LayerBuilder:
    """A tar layer built entry by entry. Names are written exactly as given (no normalisation),
    which is what the hostile layers need: tarfile does not sanitise on writing."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name, type_, mode, uid=0, gid=0):
        ti = tarfile.TarInfo(name)
        ti.type = type_
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = MTIME
        return ti

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))
        return self

    def file(self, name, data=b"", mode=0o644, uid=0, gid=0):
        if isinstance(data, str):
            data = data.encode()
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))
        return self

    def file_from(self, name, path, mode=None, uid=0, gid=0):
        st = os.stat(path)
        ti = self._info(name, tarfile.REGTYPE, mode if mode is not None else st.st_mode & 0o7777,
                        uid, gid)
        ti.size = st.st_size
        with open(path, "rb") as f:
            self.tar.addfile(ti, f)
        return self

    def symlink(self, name, target):
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def hardlink(self, name, target):
        ti = self._info(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def whiteout(self, path):
        """Deletes `path` of the layers below (an empty file named .wh.<basename>)."""
        d, _, base = path.rstrip("/").rpartition("/")
        return self.file(f"{d}/.wh.{base}" if d else f".wh.{base}", b"")

    def opaque(self, dirpath):
        """Hides everything the layers below have in `dirpath`."""
        return self.file(dirpath.rstrip("/") + "/.wh..wh..opq", b"")

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def compress(tar_bytes, how):
    if how == "gzip":
        return gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-1", "-c"], input=tar_bytes, check=True,
                              stdout=subprocess.PIPE).stdout
    if how == "none":
        return tar_bytes
    raise ValueError(how)


@dataclass
class Layer:
    """A layer as pushed: `blob` is the compressed bytes (or `path` of a big uncompressed one)."""
    media_type: str
    digest: str          # sha256:... of the blob
    diff_id: str         # sha256:... of the uncompressed tar
    size: int
    blob: bytes = None
    path: str = None


def make_layer(tar_bytes, how="gzip"):
    blob = compress(tar_bytes, how)
    return Layer(MT_LAYER[how], "sha256:" + sha256_hex(blob), "sha256:" + sha256_hex(tar_bytes),
                 len(blob), blob=blob)


def file_layer(path):
    """An uncompressed layer whose tar is already a file (big layers are not held in memory)."""
    d = "sha256:" + sha256_file(path)
    return Layer(MT_LAYER["none"], d, d, os.path.getsize(path), path=path)


# ---------------------------------------------------------------------------------------------
# OCI layouts


@dataclass
class Image:
    """An image written as an OCI layout at `dir`, tag `tag`. `digest` is what a registry serves
    for the tag (the manifest's, or the index's for a multi-platform image); `manifests` maps
    arch -> manifest digest; `layers` are those of the host platform's manifest."""
    name: str
    dir: str
    tag: str
    digest: str
    layers: list
    config: dict
    config_digest: str
    manifests: dict = field(default_factory=dict)
    is_index: bool = False

    @property
    def layer_digests(self):
        return [l.digest for l in self.layers]

    @property
    def oci_ref(self):
        return f"oci:{self.dir}:{self.tag}"


class Layout:
    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def put(self, data):
        d = sha256_hex(data)
        p = os.path.join(self.path, "blobs", "sha256", d)
        if not os.path.exists(p):
            with open(p + ".tmp", "wb") as f:
                f.write(data)
            os.rename(p + ".tmp", p)
        return "sha256:" + d, len(data)

    def put_layer(self, layer):
        p = os.path.join(self.path, "blobs", "sha256", layer.digest.split(":", 1)[1])
        if os.path.exists(p):
            return
        if layer.blob is not None:
            self.put(layer.blob)
        else:
            try:
                os.link(layer.path, p)
            except OSError:
                shutil.copyfile(layer.path, p)

    def put_json(self, obj):
        return self.put(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())

    def manifest(self, layers, config, arch):
        cfg = {
            "architecture": arch, "os": "linux", "created": "2023-11-14T22:13:20Z",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "warren test fixture"}
                        for _ in layers],
        }
        cdigest, csize = self.put_json(cfg)
        for l in layers:
            self.put_layer(l)
        man = {
            "schemaVersion": 2, "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cdigest, "size": csize},
            "layers": [{"mediaType": l.media_type, "digest": l.digest, "size": l.size}
                       for l in layers],
        }
        mdigest, msize = self.put_json(man)
        return cfg, cdigest, mdigest, msize

    def tag(self, tag, media_type, digest, size):
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [{
                "mediaType": media_type, "digest": digest, "size": size,
                "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)


def write_image(path, name, layers, config, tag="1"):
    lay = Layout(path)
    cfg, cdigest, mdigest, msize = lay.manifest(layers, config, host_arch())
    lay.tag(tag, MT_MANIFEST, mdigest, msize)
    return Image(name, path, tag, mdigest, layers, cfg, cdigest, {host_arch(): mdigest})


def write_index_image(path, name, per_arch, config, tag="1"):
    """per_arch: {arch: [Layer]} -> one layout whose tag is an image index of those platforms."""
    lay = Layout(path)
    entries, manifests, host = [], {}, None
    for arch, layers in per_arch.items():
        cfg, cdigest, mdigest, msize = lay.manifest(layers, config, arch)
        manifests[arch] = mdigest
        entries.append({"mediaType": MT_MANIFEST, "digest": mdigest, "size": msize,
                        "platform": {"architecture": arch, "os": "linux"}})
        if arch == host_arch():
            host = (layers, cfg, cdigest)
    idigest, isize = lay.put_json({"schemaVersion": 2, "mediaType": MT_INDEX,
                                   "manifests": entries})
    lay.tag(tag, MT_INDEX, idigest, isize)
    return Image(name, path, tag, idigest, host[0], host[1], host[2], manifests, is_index=True)


# ---------------------------------------------------------------------------------------------
# The test images

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "app:x:1000:1000:app:/home/app:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"
# The image's own versions of the files warren provides: a sandbox must see warren's instead.
IMAGE_HOSTS = "127.0.0.1 image-hosts-marker\n"
IMAGE_HOSTNAME = "image-hostname-marker\n"
IMAGE_RESOLV = "# image-resolv-marker\nnameserver 192.0.2.1\n"

BUSYBOX_CONFIG = {
    "Env": ["PATH=/bin:/usr/bin", "FOO=from-image"],
    "WorkingDir": "/srv",
    "Cmd": ["sh", "-c", "echo hello-from-cmd"],
}


def busybox_applets():
    out = subprocess.run([BUSYBOX, "--list"], check=True, stdout=subprocess.PIPE, text=True)
    return sorted(a for a in out.stdout.split() if a and a != "busybox" and "/" not in a)


def busybox_tar():
    """The base layer: /bin/busybox (Debian's busybox-static) with a symlink per applet, /etc
    with root and app (uid 1000), /tmp 1777, /srv (the WorkingDir), an empty /usr/bin."""
    lb = LayerBuilder()
    for d in ("bin", "etc", "root", "srv", "usr", "usr/bin", "var", "home"):
        lb.dir(d, 0o700 if d == "root" else 0o755)
    lb.dir("tmp", 0o1777)
    lb.dir("home/app", 0o755, 1000, 1000)
    lb.file_from("bin/busybox", BUSYBOX, mode=0o755)
    for a in busybox_applets():
        lb.symlink(f"bin/{a}", "busybox")
    lb.file("etc/passwd", PASSWD).file("etc/group", GROUP)
    lb.file("etc/hosts", IMAGE_HOSTS).file("etc/hostname", IMAGE_HOSTNAME)
    lb.file("etc/resolv.conf", IMAGE_RESOLV)
    lb.file("srv/image-file", "from-the-image\n")
    return lb.bytes()


def multilayer_layers(base, third="zstd"):
    """base + three layers exercising whiteouts, opaque dirs, hardlinks, setuid, owners and
    every layer compression (the third layer's is `third`: umoci, the reference unpacker of
    the fixture's own test, has no zstd). What the sandbox must see is in MULTILAYER_EXPECT."""
    l2 = (LayerBuilder()
          .dir("data")
          .file("data/keep", "keep\n")
          .file("data/gone", "gone\n")
          .dir("data/gonedir").file("data/gonedir/inner", "inner\n")
          .dir("opaque").file("opaque/a", "a\n").file("opaque/b", "b\n")
          .file("data/hl1", "hardlinked\n").hardlink("data/hl2", "data/hl1")
          .file("data/suid", "#!/bin/sh\necho suid\n", mode=0o4755)
          .file("data/owned", "owned by app\n", mode=0o640, uid=1000, gid=1000)
          .dir("data/appdir", 0o750, 1000, 1000)
          .bytes())
    l3 = (LayerBuilder()
          .whiteout("data/gone")
          .whiteout("data/gonedir")
          .opaque("opaque").file("opaque/c", "c\n")
          .file("data/zstd-marker", "zstd\n")
          .bytes())
    l4 = (LayerBuilder()
          .file("data/plain-marker", "uncompressed\n")
          .file("data/keep", "keep-overwritten\n")
          .bytes())
    return [base, make_layer(l2, "gzip"), make_layer(l3, third), make_layer(l4, "none")]


# path -> (type, content or None, mode, uid, gid); None for "must be absent".
MULTILAYER_EXPECT = {
    "/data/keep": ("file", "keep-overwritten\n", 0o644, 0, 0),
    "/data/gone": None,
    "/data/gonedir": None,
    "/opaque/a": None,
    "/opaque/b": None,
    "/opaque/c": ("file", "c\n", 0o644, 0, 0),
    "/data/hl1": ("file", "hardlinked\n", 0o644, 0, 0),
    "/data/hl2": ("file", "hardlinked\n", 0o644, 0, 0),
    "/data/suid": ("file", None, 0o4755, 0, 0),
    "/data/owned": ("file", "owned by app\n", 0o640, 1000, 1000),
    "/data/appdir": ("dir", None, 0o750, 1000, 1000),
    "/data/zstd-marker": ("file", "zstd\n", 0o644, 0, 0),
    "/data/plain-marker": ("file", "uncompressed\n", 0o644, 0, 0),
}


def platform_layer(arch):
    return make_layer(LayerBuilder().file("platform", arch + "\n").bytes(), "gzip")


# Hostile layers: each is (description, entry the error message must name, [tar bytes...]).
# They aim at PWNED (must never appear) and VICTIM (must survive). Paths with many "../" reach
# the host's / from any depth of state dir.
UP = "../" * 24


def hostile_cases():
    pw = PWNED[1:]  # "tmp/fixture-pwned-..." relative to /
    pwbase = os.path.basename(PWNED)
    vdir, vbase = os.path.split(VICTIM)
    cases = {
        "dotdot": ("a relative name with ../", UP + pw,
                   [LayerBuilder().file(UP + pw, "pwned\n").bytes()]),
        "abs": ("an absolute name", PWNED,
                [LayerBuilder().file(PWNED, "pwned\n").bytes()]),
        "symlink-root": ("a symlink to / then a write through it", "a/" + pw,
                         [LayerBuilder().symlink("a", "/").file("a/" + pw, "pwned\n").bytes()]),
        "symlink-hostdir": ("a symlink to a host dir then a write through it",
                            "hostdir/" + pwbase,
                            [LayerBuilder().symlink("hostdir", "/tmp")
                             .file("hostdir/" + pwbase, "pwned\n").bytes()]),
        "symlink-dotdot": ("a relative symlink climbing out then a write through it",
                           "up/" + pw,
                           [LayerBuilder().symlink("up", UP.rstrip("/"))
                            .file("up/" + pw, "pwned\n").bytes()]),
        "hardlink-abs": ("a hard link to /etc/passwd", "etc/passwd-link",
                         [LayerBuilder().hardlink("etc/passwd-link", "/etc/passwd").bytes()]),
        "hardlink-dotdot": ("a hard link through ..", "etc/passwd-link2",
                            [LayerBuilder().hardlink("etc/passwd-link2", UP + "etc/passwd")
                             .bytes()]),
        "whiteout-dotdot": ("a whiteout of ../x", UP + vdir[1:] + "/.wh." + vbase,
                            [LayerBuilder().file(UP + vdir[1:] + "/.wh." + vbase, "").bytes()]),
        # The symlink comes in one layer; the next one has a directory of that name and a file
        # in it: an unpacker that keeps the link (the dir "exists") writes on the host.
        "symlink-then-dir": ("a symlink replaced by a dir then written through",
                             "swap/" + pwbase,
                             [LayerBuilder().symlink("swap", "/tmp").bytes(),
                              LayerBuilder().dir("swap").file("swap/" + pwbase, "pwned\n")
                              .bytes()]),
    }
    return cases


def deb_package(dest_dir):
    """A tiny .deb (dpkg-deb --build): installs /usr/share/warren-test/marker."""
    root = os.path.join(dest_dir, "pkgroot")
    os.makedirs(os.path.join(root, "DEBIAN"))
    os.makedirs(os.path.join(root, "usr", "share", "warren-test"))
    with open(os.path.join(root, "DEBIAN", "control"), "w") as f:
        f.write("Package: warren-test-pkg\nVersion: 1.0\nArchitecture: all\n"
                "Maintainer: warren tests <tests@example.invalid>\n"
                "Description: marker package of the warren image tests\n")
    with open(os.path.join(root, "usr", "share", "warren-test", "marker"), "w") as f:
        f.write("installed-by-dpkg\n")
    out = os.path.join(dest_dir, "warren-test-pkg_1.0_all.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, out], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def debian_mirror():
    """The Debian mirror apt is configured with (deb822 or one-line sources)."""
    for p in ["/etc/apt/sources.list"] + sorted(
            os.path.join("/etc/apt/sources.list.d", n)
            for n in (os.listdir("/etc/apt/sources.list.d")
                      if os.path.isdir("/etc/apt/sources.list.d") else [])):
        try:
            text = open(p).read()
        except OSError:
            continue
        for m in re.finditer(r"(?m)^\s*(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)/?\s",
                             text):
            return m.group(1)
    return "http://deb.debian.org/debian"


def debian_rootfs_tar():
    """A minbase bookworm root as a tar, built once with debootstrap and kept in DEBIAN_CACHE
    (a lock file serialises parallel runs; a failed build leaves nothing behind)."""
    cache_dir = os.path.dirname(DEBIAN_CACHE)
    os.makedirs(cache_dir, exist_ok=True)
    with open(DEBIAN_CACHE + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(DEBIAN_CACHE):
            return DEBIAN_CACHE
        work = tempfile.mkdtemp(prefix="debootstrap-", dir=cache_dir)
        try:
            root = os.path.join(work, "root")
            r = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", root,
                                debian_mirror()], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"debootstrap failed ({r.returncode}):\n{r.stdout[-4000:]}")
            # Nothing an image should carry: downloaded .debs, apt lists, device nodes.
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "dev"):
                p = os.path.join(root, sub)
                for n in os.listdir(p) if os.path.isdir(p) else []:
                    q = os.path.join(p, n)
                    if os.path.isdir(q) and not os.path.islink(q):
                        if n != "partial":
                            shutil.rmtree(q)
                    else:
                        os.unlink(q)
            tmp = DEBIAN_CACHE + ".tmp"
            subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", tmp, "."],
                           check=True)
            os.rename(tmp, DEBIAN_CACHE)
        finally:
            # debootstrap mounts proc/sys in the target; never rmtree through a mount.
            for m in ("proc", "sys"):
                subprocess.run(["umount", "-l", os.path.join(work, "root", m)],
                               stderr=subprocess.DEVNULL)
            shutil.rmtree(work, ignore_errors=True)
    return DEBIAN_CACHE


DEBIAN_CONFIG = {
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "Cmd": ["bash"],
}


def random_tar(path, size_bytes, name="random.bin", chunk=1 << 20):
    """An uncompressed tar holding one file of random bytes (incompressible on purpose)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = size_bytes, 0o644, MTIME

        class Rnd(io.RawIOBase):
            left = size_bytes

            def readable(self):
                return True

            def readinto(self, b):
                n = min(len(b), self.left, chunk)
                b[:n] = os.urandom(n)
                self.left -= n
                return n

        tar.addfile(ti, io.BufferedReader(Rnd(), chunk))
    return path


# ---------------------------------------------------------------------------------------------
# Image catalogue (built lazily, once per session)


class Images:
    """Builds the test images on first use into `workdir` and pushes each to a registry once.
    Repositories are test/<name>, tag 1; `ref(reg, name)` -> "HOST/test/<name>:1"."""

    NAMES = ("busybox", "multilayer", "index", "corrupt", "big", "debian", "bench-debian") \
        + tuple("hostile-" + k for k in hostile_cases())

    def __init__(self, workdir):
        self.workdir = workdir
        self.built = {}
        self.pushed = set()
        self.lock = threading.Lock()
        self._base = None

    def base_layer(self):
        if self._base is None:
            self._base = make_layer(busybox_tar(), "gzip")
        return self._base

    def _dir(self, name):
        return os.path.join(self.workdir, "oci", name)

    def _build(self, name):
        d = self._dir(name)
        base = self.base_layer()
        if name == "busybox":
            return write_image(d, name, [base], BUSYBOX_CONFIG)
        if name == "multilayer":
            return write_image(d, name, multilayer_layers(base), BUSYBOX_CONFIG)
        if name == "index":
            return write_index_image(d, name, {
                host_arch(): [base, platform_layer(host_arch())],
                other_arch(): [base, platform_layer(other_arch())],
            }, BUSYBOX_CONFIG)
        if name == "corrupt":
            # A layer of its own (random, so no other image shares the blob the fixture
            # tampers with in the registry's storage).
            extra = make_layer(LayerBuilder().file("corrupt", os.urandom(4096)).bytes(), "gzip")
            return write_image(d, name, [base, extra], BUSYBOX_CONFIG)
        if name == "big":
            p = random_tar(os.path.join(self.workdir, "big-layer.tar"), 50 << 20)
            return write_image(d, name, [base, file_layer(p)], BUSYBOX_CONFIG)
        if name == "debian":
            return write_image(d, name, [file_layer(debian_rootfs_tar())], DEBIAN_CONFIG)
        if name == "bench-debian":
            # ~200 MB: Debian plus incompressible data.
            deb = file_layer(debian_rootfs_tar())
            pad = max(1 << 20, (200 << 20) - deb.size)
            p = random_tar(os.path.join(self.workdir, "bench-pad.tar"), pad, "pad.bin")
            return write_image(d, name, [deb, file_layer(p)], DEBIAN_CONFIG)
        if name.startswith("hostile-"):
            _, _, tars = hostile_cases()[name[len("hostile-"):]]
            return write_image(d, name, [base] + [make_layer(t, "gzip") for t in tars],
                               BUSYBOX_CONFIG)
        raise KeyError(name)

    def get(self, name):
        with self.lock:
            if name not in self.built:
                self.built[name] = self._build(name)
            return self.built[name]

    def ref(self, reg, name, repo=None):
        """Pushes image `name` to `reg` (once) as `repo` (default test/<name>) and returns the
        reference "HOST/REPO:TAG"."""
        img = self.get(name)
        repo = repo or f"test/{name}"
        key = (reg.host, repo, name)
        with self.lock:
            if key not in self.pushed:
                reg.push(img, f"{repo}:{img.tag}")
                if name == "corrupt":
                    reg.tamper_blob(img.layers[-1].digest)
                self.pushed.add(key)
        return f"{reg.host}/{repo}:{img.tag}"

    def deb(self):
        with self.lock:
            if "deb" not in self.built:
                d = os.path.join(self.workdir, "deb")
                os.makedirs(d, exist_ok=True)
                self.built["deb"] = deb_package(d)
            return self.built["deb"]


# ---------------------------------------------------------------------------------------------
# Registries

ACCESS_RE = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-)')
BLOB_RE = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
MANIFEST_RE = re.compile(r"^/v2/(.+)/manifests/([^/]+)$")


@dataclass
class Req:
    method: str
    path: str
    status: int
    bytes: int
    range: str = None      # the Range header (proxies only: the registry's log has no headers)
    auth: str = None       # "bearer", "basic" or None (proxies only)
    done: bool = True      # False while a proxy is still sending the body


class _RequestLog:
    def _reqs(self):
        raise NotImplementedError

    def requests_log(self):
        """Every request served so far, oldest first."""
        return list(self._reqs())

    def mark(self):
        """A position in the log: requests_log()[mark:] are those made after this call."""
        return len(self._reqs())

    def settle(self):
        """Returns once every request answered before this call is in the log: a marker
        request goes through, and the registry logs requests as it answers them, in order."""
        tag = secrets.token_hex(6)
        self.get(f"/v2/?settle={tag}")
        wait_for(lambda: any(tag in r.path for r in self._reqs()[-50:]),
                 what="the registry's access log to catch up")

    def blob_gets(self, digest=None, since=0, status=None):
        """GET requests of blobs (every blob, or one digest) after `since` (a mark())."""
        out = []
        for r in self._reqs()[since:]:
            m = BLOB_RE.match(urllib.parse.urlsplit(r.path).path)
            if r.method == "GET" and m and (digest is None or m.group(2) == digest) \
                    and (status is None or r.status == status):
                out.append(r)
        return out

    def blob_get_counts(self, since=0):
        """{digest: number of GETs} after `since`."""
        counts = {}
        for r in self.blob_gets(since=since):
            d = BLOB_RE.match(urllib.parse.urlsplit(r.path).path).group(2)
            counts[d] = counts.get(d, 0) + 1
        return counts


class Registry(_RequestLog):
    """A docker-registry process: storage in a temp dir, a free 127.0.0.1 port, its access log
    parsed from its output. `scheme` is "http" or "https" (with `cert`, `key`, `ca_file`)."""

    def __init__(self, workdir, tls=None, name="registry"):
        self.workdir = os.path.join(workdir, name)
        self.storage = os.path.join(self.workdir, "storage")
        os.makedirs(self.storage)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://{self.host}"
        self.ca_file = tls["ca"] if tls else None
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.config_path = os.path.join(self.workdir, "config.yml")
        self.proc = None
        self._log = []
        self._log_lock = threading.Lock()

    def _config(self):
        # JSON is YAML: no YAML writer needed.
        cfg = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False},
                    "formatter": "text"},
            "storage": {"filesystem": {"rootdirectory": self.storage},
                        "delete": {"enabled": True},
                        # No upload purging: no background work at random moments. (No
                        # blob descriptor cache either: a tampered blob is served as on disk.)
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        if self.tls:
            cfg["http"]["tls"] = {"certificate": self.tls["cert"], "key": self.tls["key"]}
        return json.dumps(cfg, indent=1)

    def start(self):
        with open(self.config_path, "w") as f:
            f.write(self._config())
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"docker-registry exited with {self.proc.returncode}:\n"
                                     f"{self.log_text()}")
            try:
                return self.get("/v2/")[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=WAIT_S, what=f"docker-registry on {self.host} to answer /v2/")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.logf.close()

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-20000:]

    def _reqs(self):
        # The access log of docker-registry is in combined log format on its output.
        with self._log_lock:
            reqs = []
            with open(self.log_path, "rb") as f:
                for line in f.read().decode("utf-8", "replace").splitlines():
                    m = ACCESS_RE.search(line)
                    if m:
                        reqs.append(Req(m.group(1), m.group(2), int(m.group(3)),
                                        0 if m.group(4) == "-" else int(m.group(4))))
            return reqs

    # -- plain HTTP against the registry (the tests' own client) ----------------------------

    def _conn(self, timeout=30):
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                               context=ctx)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path, headers=None, method="GET"):
        c = self._conn()
        try:
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def catalog(self):
        return json.loads(self.get("/v2/_catalog")[2])["repositories"]

    # -- pushing ----------------------------------------------------------------------------

    def push(self, img, dest):
        """skopeo copy of an image to docker://HOST/DEST ("repo:tag"), digests kept as built
        (--preserve-digests: skopeo >= 1.6; Debian 12 has 1.9). `img` is an Image, or the path
        of an OCI layout whose tag is DEST's."""
        if isinstance(img, str):
            img = Image(os.path.basename(img), img, dest.rsplit(":", 1)[1], None, [], {}, None,
                        is_index=True)
        argv = [SKOPEO, "copy", "--quiet", "--preserve-digests"]
        if img.is_index:
            argv.append("--all")   # every platform (harmless for a single manifest)
        if self.tls:
            certdir = os.path.dirname(self.ca_file)
            argv += ["--dest-cert-dir", certdir]
        else:
            argv.append("--dest-tls-verify=false")
        argv += [img.oci_ref, f"docker://{self.host}/{dest}"]
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}")

    def inspect(self, ref_path, raw=False):
        """skopeo inspect docker://HOST/REF_PATH -> the JSON it prints."""
        argv = [SKOPEO, "inspect"]
        argv += (["--cert-dir", os.path.dirname(self.ca_file)] if self.tls
                 else ["--tls-verify=false"])
        if raw:
            argv.append("--raw")
        argv.append(f"docker://{self.host}/{ref_path}")
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr}")
        return json.loads(r.stdout)

    def blob_path(self, digest):
        h = digest.split(":", 1)[1]
        return os.path.join(self.storage, "docker", "registry", "v2", "blobs", "sha256", h[:2],
                            h, "data")

    def tamper_blob(self, digest):
        """Flips bytes of a stored blob (same size): the registry serves content that does not
        match its digest."""
        p = self.blob_path(digest)
        with open(p, "r+b") as f:
            data = bytearray(f.read())
            for i in range(0, min(len(data), 64)):
                data[len(data) // 2 + i - 32] ^= 0xFF
            f.seek(0)
            f.write(data)
        assert "sha256:" + sha256_file(p) != digest


# ---------------------------------------------------------------------------------------------
# Proxy (token auth, throttling)


class Proxy(_RequestLog):
    """A stdlib HTTP server in front of a Registry, on its own free port.

    auth=(user, password): Docker Hub's token flow. /v2/* without a valid Bearer token for the
    repository -> 401 with WWW-Authenticate: Bearer realm=".../token",service="test",
    scope="repository:REPO:pull"; GET /token?service=test&scope=... with the right Basic
    credentials -> {"token", "access_token"}; wrong or missing ones -> 401.
    rate: bytes per second of response bodies (None: as fast as it goes).
    Authorized requests are forwarded with their Host header, so the registry's Location
    headers point at the proxy; bodies are streamed."""

    SERVICE = "test"

    def __init__(self, upstream, auth=None, rate=None):
        self.upstream = upstream
        self.auth = auth
        self.rate = rate
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.tokens = {}            # token -> repository it grants pull on ("" for /v2/ only)
        self._log = []
        self._tokens_asked = []     # (scope, granted)
        self._lock = threading.Lock()
        self.server = None

    def _reqs(self):
        with self._lock:
            return list(self._log)

    def token_requests(self, since=0, granted=None):
        """Token requests made so far (granted=True/False to count only those)."""
        with self._lock:
            return [t for t in self._tokens_asked[since:] if granted is None or t[1] == granted]

    def start(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                return len(body)

            def _record(self, status, n, auth, done=True):
                req = Req(self.command, self.path, status, n, self.headers.get("Range"), auth,
                          done)
                with proxy._lock:
                    proxy._log.append(req)
                return req

            def _token(self):
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                scope = (q.get("scope") or [""])[0]
                ok = False
                h = self.headers.get("Authorization") or ""
                if h.lower().startswith("basic "):
                    try:
                        user, _, pw = base64.b64decode(h[6:]).decode().partition(":")
                        ok = (user, pw) == proxy.auth
                    except ValueError:
                        ok = False
                service_ok = (q.get("service") or [""])[0] == proxy.SERVICE
                with proxy._lock:
                    proxy._tokens_asked.append((scope, ok and service_ok))
                if not ok or not service_ok:
                    n = self._send(401, b'{"details":"incorrect username or password"}',
                                   [("Content-Type", "application/json")])
                    return self._record(401, n, "basic" if h else None)
                m = re.match(r"^repository:([^:]+):(?:[a-z,]*pull[a-z,]*)$", scope)
                tok = secrets.token_urlsafe(24)
                with proxy._lock:
                    proxy.tokens[tok] = m.group(1) if m else ""
                body = json.dumps({"token": tok, "access_token": tok, "expires_in": 300,
                                   "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                              time.gmtime())}).encode()
                n = self._send(200, body, [("Content-Type", "application/json")])
                self._record(200, n, "basic")

            def _authorized(self, repo):
                h = self.headers.get("Authorization") or ""
                if not h.startswith("Bearer "):
                    return False
                with proxy._lock:
                    granted = proxy.tokens.get(h[7:].strip())
                return granted is not None and (repo is None or granted == repo)

            def _challenge(self, repo):
                v = f'Bearer realm="{proxy.url}/token",service="{proxy.SERVICE}"'
                if repo:
                    v += f',scope="repository:{repo}:pull"'
                body = json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                               "message": "authentication required"}]}).encode()
                n = self._send(401, body, [("WWW-Authenticate", v),
                                           ("Content-Type", "application/json"),
                                           ("Docker-Distribution-API-Version",
                                            "registry/2.0")])
                self._record(401, n, None)

            def _forward(self, auth_kind):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                # Clients send Accept more than once (one per manifest type): join repeated
                # headers into one, or the registry sees only the last.
                hdrs = {}
                for k, v in self.headers.items():
                    if k.lower() in ("authorization", "connection", "keep-alive",
                                     "proxy-connection", "te", "trailer", "upgrade",
                                     "transfer-encoding"):
                        continue
                    hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
                up = http.client.HTTPConnection("127.0.0.1", proxy.upstream.port, timeout=60)
                try:
                    up.request(self.command, self.path, body=body, headers=hdrs)
                    r = up.getresponse()
                    out_headers = []
                    clen = None
                    for k, v in r.getheaders():
                        lk = k.lower()
                        if lk in ("connection", "keep-alive", "transfer-encoding"):
                            continue
                        if lk == "content-length":
                            clen = int(v)
                        if lk == "location" and v.startswith(proxy.upstream.url):
                            v = proxy.url + v[len(proxy.upstream.url):]
                        out_headers.append((k, v))
                    if clen is None and self.command != "HEAD":
                        data = r.read()
                        n = self._send(r.status, data, out_headers)
                        return self._record(r.status, n, auth_kind)
                    self.send_response(r.status)
                    for k, v in out_headers:
                        self.send_header(k, v)
                    self.end_headers()
                    # In the log from the first byte on, its count growing: a test can watch a
                    # download in progress.
                    req = self._record(r.status, 0, auth_kind, done=False)
                    if self.command != "HEAD":
                        t0 = time.monotonic()
                        try:
                            while True:
                                chunk = r.read(64 << 10)
                                if not chunk:
                                    break
                                self.wfile.write(chunk)
                                req.bytes += len(chunk)
                                if proxy.rate:
                                    ahead = req.bytes / proxy.rate - (time.monotonic() - t0)
                                    if ahead > 0:
                                        time.sleep(ahead)
                        except (BrokenPipeError, ConnectionResetError):
                            self.close_connection = True
                    req.done = True
                finally:
                    up.close()

            def _handle(self):
                path = urllib.parse.urlsplit(self.path).path
                if proxy.auth and path == "/token":
                    return self._token()
                if proxy.auth:
                    m = (BLOB_RE.match(path) or MANIFEST_RE.match(path)
                         or re.match(r"^/v2/(.+)/(?:tags/list|blobs/uploads/.*)$", path))
                    repo = m.group(1) if m else None
                    if not self._authorized(repo):
                        return self._challenge(repo)
                    return self._forward("bearer")
                return self._forward(None)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                # A client that goes away mid-request (a daemon killed on purpose) is not an
                # error of the fixture; anything else is shown.
                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # The tests' own client: the same calls as a Registry (push goes straight to the backend).
    def push(self, img, dest):
        self.upstream.push(img, dest)

    def tamper_blob(self, digest):
        self.upstream.tamper_blob(digest)

    def get(self, path, headers=None, method="GET"):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()


def docker_auth_config(path, host, user, password):
    """A docker config.json granting user:password on host (what --registry-auth reads)."""
    with open(path, "w") as f:
        json.dump({"auths": {host: {"auth": base64.b64encode(
            f"{user}:{password}".encode()).decode()}}}, f)
    os.chmod(path, 0o600)
    return path


# ---------------------------------------------------------------------------------------------
# TLS material


def make_tls(d):
    """A test CA and a server certificate for 127.0.0.1/localhost signed by it (openssl CLI).
    The CA is alone in d/ca/ (a --dest-cert-dir for skopeo holds only *.crt roots)."""
    os.makedirs(os.path.join(d, "ca"))
    ca_key, ca = os.path.join(d, "ca.key"), os.path.join(d, "ca", "ca.crt")
    key, csr, crt = (os.path.join(d, n) for n in ("server.key", "server.csr", "server.crt"))
    ext = os.path.join(d, "server.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*argv):
        subprocess.run(["openssl"] + list(argv), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", ca_key, "-out", ca, "-days", "7", "-subj", "/CN=warren test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "7", "-extfile", ext)
    return {"ca": ca, "cert": crt, "key": key, "ca_key": ca_key}


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def registry_workdir():
    d = tempfile.mkdtemp(prefix="fixture-registry-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _serving(reg):
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def registry(registry_workdir):
    yield from _serving(Registry(registry_workdir, name="plain").start())


@pytest.fixture(scope="session")
def tls_registry(registry_workdir):
    tls = make_tls(os.path.join(registry_workdir, "tls"))
    yield from _serving(Registry(registry_workdir, tls=tls, name="tls").start())


AUTH_USER, AUTH_PASSWORD = "warren", "s3cret-" + RUN_TAG


@pytest.fixture(scope="session")
def auth_registry(registry_workdir):
    backend = Registry(registry_workdir, name="auth-backend").start()
    proxy = Proxy(backend, auth=(AUTH_USER, AUTH_PASSWORD))
    proxy.auth_file = docker_auth_config(os.path.join(registry_workdir, "auth-config.json"),
                                         proxy.host, AUTH_USER, AUTH_PASSWORD)
    proxy.bad_auth_file = docker_auth_config(
        os.path.join(registry_workdir, "auth-config-bad.json"), proxy.host, AUTH_USER, "wrong")
    proxy.storage = backend.storage
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
        backend.stop()


@pytest.fixture(scope="session")
def slow_registry(registry):
    """`registry` seen through a proxy sending 8 MiB/s: a 50 MiB blob takes ~6 s."""
    proxy = Proxy(registry, rate=8 << 20).start()
    proxy.storage = registry.storage
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def images(registry_workdir):
    return Images(registry_workdir)


@pytest.fixture(scope="session")
def sentinels():
    """PWNED must never exist; VICTIM (created here) must survive. Checked by the tests."""
    assert not os.path.lexists(PWNED), PWNED
    with open(VICTIM, "w") as f:
        f.write("victim\n")
    yield PWNED, VICTIM
    for p in (PWNED, VICTIM):
        try:
            os.unlink(p)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Helpers of the image tests (the warren API side)


def tpl_path(name, *rest):
    """/v1/templates/{name}[/rest...]. An implicit template's name is its image reference,
    slashes and all, and goes in the path as it is (docs/API.md: GET
    /v1/templates/127.0.0.1:5000/team/app:1)."""
    return "/".join(["/v1/templates", urllib.parse.quote(name, safe="/:@")] + list(rest))


def create_from(api, timeout=300, **spec):
    """POST /v1/sandboxes with spec (e.g. image=REF); the Response (a pull may take a while)."""
    return api.post("/v1/sandboxes", spec, timeout=timeout)


def wait_template(api, name, states=("ready",), timeout=300):
    """Polls GET /v1/templates/{name} until its state is one of `states`; the template JSON."""
    def done():
        r = api.get(tpl_path(name))
        assert r.status == 200, f"GET template {name}: {r!r}"
        if r.json["state"] in states:
            return r.json
        assert r.json["state"] == "pulling", f"template {name} went {r.json['state']}: {r!r}"
        return None
    return wait_for(done, timeout=timeout, interval=0.1, what=f"template {name} {states}")


def env_dict(env):
    """A template's config.env (a list of K=V, as in the image config) as a dict."""
    assert isinstance(env, list), env
    return dict(e.split("=", 1) for e in env)


def registry_args(*plain, ca=None, auth=None, mirror=None, extra=()):
    """warren serve flags for the registries a test uses."""
    args = []
    for reg in plain:
        args += ["--insecure-registry", reg.host]
    if ca:
        args += ["--registry-ca", ca]
    if auth:
        args += ["--registry-auth", auth]
    if mirror:
        args += ["--registry-mirror", f"docker.io=http://{mirror.host}"]
    return args + list(extra)
