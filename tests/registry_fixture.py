#!/usr/bin/python3
"""A real OCI registry for tests, on 127.0.0.1 only, never the internet.

Importable (pytest fixtures can use the pieces) and runnable: `registry_fixture.py serve` starts
everything below, prints one JSON line describing it (ports, paths, digests), and tears it all
down when its standard input closes (so a test process that dies takes its registries with it).

  Registry      Debian's docker-registry on a free port, storage in a temporary directory,
                optionally with TLS (a throw-away CA and server certificate made with openssl)
  TokenProxy    a bearer-token front of a registry: 401 + WWW-Authenticate: Bearer on /v2/
                without a valid token, tokens at /token for the basic credentials it was given,
                authorised requests proxied (Range included) and logged one line each
  oci_image()   writes an OCI image layout (tar layers: gzip, zstd or plain; config; manifest;
                index.json; oci-layout) that `skopeo copy` pushes
"""

import base64
import ctypes
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import ssl

WAIT_S = float(os.environ.get("WAIT_S", "30"))


def wait_for(pred, what, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    # The registry goes when its parent (this fixture) goes, however that happens.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def make_tls(d):
    """A CA and a server certificate for 127.0.0.1 in d; returns (ca, cert, key) paths."""
    ca_key, ca, key, csr, cert, ext = (os.path.join(d, n) for n in (
        "ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "ext.cnf"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=warren test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


class Registry:
    """docker-registry serving `storage` on a free 127.0.0.1 port (TLS if tls=(cert, key))."""

    def __init__(self, workdir, storage, name="registry", tls=None):
        self.dir = workdir
        self.storage = storage
        self.name = name
        self.tls = tls
        self.port = free_port()
        self.proc = None
        self.log = os.path.join(workdir, name + ".log")

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        cfg = os.path.join(self.dir, self.name + ".yml")
        tls = ""
        if self.tls:
            tls = f"\n  tls:\n    certificate: {self.tls[0]}\n    key: {self.tls[1]}"
        # No blob descriptor cache: a blob changed on disk is served as it is now.
        with open(cfg, "w") as f:
            f.write(f"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {self.storage}
  delete:
    enabled: true
http:
  addr: {self.host}
  secret: warren-test{tls}
""")
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", cfg], stdout=logf,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        logf.close()
        ctx = ssl._create_unverified_context() if self.tls else None
        url = f"{'https' if self.tls else 'http'}://{self.host}/v2/"

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {open(self.log).read()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                    return r.status == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False
        wait_for(up, f"docker-registry on {self.host}")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def blob_path(self, digest):
        hexd = digest.split(":", 1)[1]
        return os.path.join(self.storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        px = self.server.proxy
        if self.path.startswith("/token"):
            auth = self.headers.get("Authorization", "")
            user = None
            if auth.startswith("Basic "):
                u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                if px.users.get(u) == p:
                    user = u
            if user is None:
                px.record(f"TOKEN denied")
                return self._send(401, b'{"details":"bad credentials"}')
            tok = base64.b32encode(os.urandom(20)).decode()
            px.tokens.add(tok)
            px.record(f"TOKEN {user} {self.path}")
            return self._send(200, json.dumps({"access_token": tok}).encode(),
                              [("Content-Type", "application/json")])
        auth = self.headers.get("Authorization", "")
        if self.path.startswith("/redirected/"):
            # Blob storage on "another host": never sees the registry's Authorization.
            return self._forward(self.path[len("/redirected"):],
                                 f"auth={'yes' if auth else 'no'}")
        if not (auth.startswith("Bearer ") and auth[7:] in px.tokens):
            parts = self.path.split("/")
            repo = "/".join(parts[2:-2]) if len(parts) > 4 else ""
            scope = f',scope="repository:{repo}:pull"' if repo else ""
            px.record(f"{self.command} {self.path} 401")
            return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', [
                ("WWW-Authenticate",
                 f'Bearer realm="http://{px.host}/token",service="warren-test"{scope}'),
                ("Content-Type", "application/json")])
        if "/blobs/" in self.path and px.redirect_blobs:
            # Like a registry on object storage: blobs are a redirect to another host name.
            port = px.host.split(":")[1]
            px.record(f"{self.command} {self.path} 307")
            return self._send(307, b"", [("Location",
                                          f"http://localhost:{port}/redirected{self.path}")])
        self._forward(self.path, "")

    def _forward(self, path, note):
        px = self.server.proxy
        conn = http.client.HTTPConnection(px.backend, timeout=WAIT_S)
        fwd = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
        conn.request(self.command, path, headers=fwd)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        px.record(f"{self.command} {self.path} range={self.headers.get('Range', '-')} "
                  f"status={r.status} bytes={len(body)} {note}")
        keep = [(k, v) for k, v in r.getheaders()
                if k.lower() in ("content-type", "content-range", "docker-content-digest",
                                 "accept-ranges", "www-authenticate")]
        self._send(r.status, body, keep)


class TokenProxy:
    """Bearer-token authentication in front of the registry at `backend` ("host:port"). With
    redirect_blobs, blob GETs are redirected to http://localhost:<its port>/redirected/..., a
    different host name for the client, and the log says whether Authorization came along."""

    def __init__(self, backend, users, log_path, redirect_blobs=True):
        self.backend = backend
        self.redirect_blobs = redirect_blobs
        self.users = dict(users)
        self.tokens = set()
        self.log_path = log_path
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self.server.daemon_threads = True
        self.server.proxy = self
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def record(self, line):
        with self.lock, open(self.log_path, "a") as f:
            f.write(line + "\n")

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def tar_layer(files):
    """An uncompressed tar of {name: bytes} (directories implied by the names)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for name, data in files.items():
            parts = name.split("/")[:-1]
            for i in range(len(parts)):
                d = "/".join(parts[:i + 1])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1700000000
                    t.addfile(ti)
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1700000000
            t.addfile(ti, io.BytesIO(data))
    return out.getvalue()


LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "plain": "application/vnd.oci.image.layer.v1.tar",
}


def _compress(data, how):
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, check=True,
                              capture_output=True).stdout
    return data


def _blob(layout, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "blobs", "sha256", d[7:]), "wb") as f:
        f.write(data)
    return d


def oci_image(layout, layers, arch="amd64", variant=None, env=("PATH=/usr/bin:/bin",),
              cmd=("/bin/sh",)):
    """Adds an image of `layers` [(files dict, "gzip"|"zstd"|"plain")] to the layout dir;
    returns its manifest descriptor with "layers" and "config" digests added."""
    descs, diff_ids = [], []
    for files, how in layers:
        tar = tar_layer(files)
        blob = _compress(tar, how)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        descs.append({"mediaType": LAYER_TYPES[how], "digest": _blob(layout, blob),
                      "size": len(blob)})
    config = {"architecture": arch, "os": "linux",
              "config": {"Env": list(env), "Cmd": list(cmd), "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if variant:
        config["variant"] = variant
    cfg = json.dumps(config).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": _blob(layout, cfg), "size": len(cfg)},
                "layers": descs}
    m = json.dumps(manifest).encode()
    platform = {"architecture": arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": _blob(layout, m), "size": len(m), "platform": platform,
            "config": manifest["config"]["digest"], "layers": [l["digest"] for l in descs],
            "sizes": [l["size"] for l in descs]}


def oci_index(layout, descs):
    """A nested index of several platform manifests; returns its descriptor."""
    idx = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
           "manifests": [{k: d[k] for k in ("mediaType", "digest", "size", "platform")}
                         for d in descs]}
    data = json.dumps(idx).encode()
    return {"mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": _blob(layout, data), "size": len(data)}


def write_layout(layout, tagged):
    """index.json and oci-layout for {tag: descriptor}."""
    os.makedirs(layout, exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    ms = []
    for tag, d in tagged.items():
        ms.append({"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"],
                   "annotations": {"org.opencontainers.image.ref.name": tag}})
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": ms}, f)


def push(layout, tag, dest, all_platforms=False):
    """skopeo copy oci:layout:tag docker://dest (plain HTTP)."""
    cmd = ["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
           "--preserve-digests"]
    if all_platforms:
        cmd.append("--all")
    subprocess.run(cmd + [f"oci:{layout}:{tag}", f"docker://{dest}"], check=True,
                   capture_output=True, timeout=WAIT_S * 4)


def serve():
    """The registry_pull test's world: see the module doc. One JSON line on stdout."""
    d = tempfile.mkdtemp(prefix="registry-fixture-", dir="/tmp")
    regs, proxy = [], None
    try:
        storage = os.path.join(d, "storage")
        os.makedirs(storage)
        ca, cert, key = make_tls(d)
        plain = Registry(d, storage).start()
        regs.append(plain)
        layout = os.path.join(d, "layout")
        big = os.urandom(1 << 20)
        img = oci_image(layout, [({"a.txt": b"alpha\n", "dir/b.txt": b"beta\n"}, "gzip"),
                                 ({"c.txt": b"gamma\n" * 100}, "zstd"),
                                 ({"big.bin": big}, "plain")], env=("PATH=/bin", "X=1"))
        amd = oci_image(layout, [({"arch.txt": b"amd64\n"}, "gzip")])
        arm = oci_image(layout, [({"arch.txt": b"arm64\n"}, "gzip")], arch="arm64",
                        variant="v8")
        multi = oci_index(layout, [arm, amd])
        corrupt = oci_image(layout, [({"corrupt.txt": os.urandom(4096)}, "gzip")])
        long_ = oci_image(layout, [({"long.txt": os.urandom(4096)}, "gzip")])
        arm_only = oci_image(layout, [({"armonly.txt": b"x"}, "gzip")], arch="arm64")
        write_layout(layout, {"img": img, "multi": multi, "corrupt": corrupt, "long": long_,
                              "armonly": arm_only})
        push(layout, "img", f"{plain.host}/test/img:v1")
        push(layout, "img", f"{plain.host}/library/img:v1")
        push(layout, "multi", f"{plain.host}/test/multi:v1", all_platforms=True)
        push(layout, "corrupt", f"{plain.host}/test/corrupt:v1")
        push(layout, "long", f"{plain.host}/test/long:v1")
        push(layout, "armonly", f"{plain.host}/test/armonly:v1")
        # Same size, other bytes; and the same bytes with more after them.
        with open(plain.blob_path(corrupt["layers"][0]), "r+b") as f:
            f.seek(100)
            f.write(b"\0" * 16)
        with open(plain.blob_path(long_["layers"][0]), "ab") as f:
            f.write(b"trailing garbage")
        tls = Registry(d, storage, name="tls", tls=(cert, key)).start()
        regs.append(tls)
        proxy = TokenProxy(plain.host, {"alice": "s3cret"}, os.path.join(d, "proxy.log")).start()
        print(json.dumps({
            "dir": d, "storage": storage, "ca": ca, "proxy_log": proxy.log_path,
            "port": plain.port, "tls_port": tls.port, "proxy": proxy.host,
            "dead_port": free_port(),
            "img": img, "multi": {"index": multi["digest"], "amd64": amd, "arm64": arm},
            "corrupt": corrupt, "long": long_, "big_path": plain.blob_path(img["layers"][2]),
        }), flush=True)
        sys.stdin.read()
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        raise
    finally:
        if proxy:
            proxy.stop()
        for r in regs:
            r.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["serve"]:
        sys.exit(f"usage: {sys.argv[0]} serve")
    serve()
