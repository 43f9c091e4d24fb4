"""Network policy: none / allowlist / open, through the daemon's egress proxy at 127.0.0.1:3128.

"The internet" is a network namespace of our own: a veth pair with the host side at 198.18.N.1
and the far side at 198.18.N.2 (198.18.0.0/15 is the benchmarking range: public to the proxy,
routed nowhere), where an HTTP server (port 80, it echoes the request head it received) and a
TLS-less echo server (ports 443 and 7000) run. Names resolve through the daemon's
--egress-hosts file only; nothing outside this machine is ever contacted.
"""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from conftest import Api, Daemon, exec_, sh, wait_for

SERVERS = r"""
import socket, sys, threading
addr = sys.argv[1]

def http():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 80)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_http, args=(c,), daemon=True).start()

def serve_http(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n")[0]
    body = b"origin saw:\n" + head + b"\n"
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Origin: internet\r\n\r\n" % len(body)
              + body)
    c.close()

def echo(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_echo, args=(c,), daemon=True).start()

def serve_echo(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()

for t in (http, lambda: echo(443), lambda: echo(7000)):
    threading.Thread(target=t, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CONNECT = r"""
import socket, sys
target, payload = sys.argv[1], sys.argv[2].encode()
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
head = b""
while b"\r\n\r\n" not in head:
    d = s.recv(1)
    if not d:
        break
    head += d
print(head.split(b"\r\n")[0].decode())
if b" 200 " in head.split(b"\r\n")[0]:
    s.sendall(payload)
    print(s.recv(65536).decode())
"""


def run(*argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


class Internet:
    def __init__(self):
        self.n = random.randint(2, 250)
        tag = f"{os.getpid() % 10000}{self.n}"
        self.ns = f"wnet{tag}"
        self.host_if, self.far_if = f"wh{tag}", f"wf{tag}"
        self.host_ip, self.far_ip = f"198.18.{self.n}.1", f"198.18.{self.n}.2"
        run("ip", "netns", "add", self.ns)
        try:
            run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.far_if)
            run("ip", "link", "set", self.far_if, "netns", self.ns)
            run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
            run("ip", "link", "set", self.host_if, "up")
            run("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.far_ip}/24", "dev",
                self.far_if)
            run("ip", "netns", "exec", self.ns, "ip", "link", "set", self.far_if, "up")
            run("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
            self.servers = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-c", SERVERS, self.far_ip],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert self.servers.stdout.readline() == b"ready\n"
        except BaseException:
            self.close()
            raise
        # A service on the host's own side of the link: "an address of this host".
        self.host_srv = socket.socket()
        self.host_srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.host_srv.bind((self.host_ip, 0))
        self.host_srv.listen(16)
        self.host_port = self.host_srv.getsockname()[1]
        threading.Thread(target=self._host_serve, daemon=True).start()

    def _host_serve(self):
        while True:
            try:
                c, _ = self.host_srv.accept()
            except OSError:
                return
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhost side\n")
            c.close()

    def hosts_file(self, path):
        with open(path, "w") as f:
            f.write(f"# the test internet\n{self.far_ip} www.internet.test api.internet.test "
                    f"echo.internet.test internet.test\n"
                    "169.254.169.254 metadata.internet.test\n"
                    "127.0.0.1 loopback.internet.test\n"
                    "10.1.2.3 private.internet.test\n"
                    f"{self.host_ip} host.internet.test\n")

    def close(self):
        if getattr(self, "servers", None):
            self.servers.kill()
            self.servers.wait()
        if getattr(self, "host_srv", None):
            self.host_srv.close()
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@pytest.fixture(scope="module")
def internet():
    net = Internet()
    yield net
    net.close()


@pytest.fixture(scope="module")
def net_daemon(internet):
    hosts = tempfile.NamedTemporaryFile("w", suffix=".hosts", delete=False)
    hosts.close()
    internet.hosts_file(hosts.name)
    d = Daemon(extra_args=["--egress-hosts", hosts.name])
    d.start()
    yield d
    d.stop()
    os.unlink(hosts.name)


@pytest.fixture
def napi(net_daemon):
    api = Api(net_daemon)
    made = []

    def create(network=None, **spec):
        if network is not None:
            spec["network"] = network
        sb = api.create(**spec)
        made.append(sb)
        return sb
    api.make = create
    yield api
    for sb in made:
        api.delete(f"/v1/sandboxes/{sb['id']}")


def curl(api, sid, url, *extra):
    """curl through whatever proxy the sandbox's environment names; returns (code, output)."""
    r = exec_(api, sid, argv=["curl", "-sS", "-m", "10", "-D", "-", *extra, url])
    return r["exit_code"], r["stdout"] + r["stderr"]


def connect(api, sid, target, payload="ping"):
    r = exec_(api, sid, argv=["python3", "-c", CONNECT, target, payload])
    return r["stdout"]


def test_none_has_no_proxy_and_no_route(napi, internet):
    sb = napi.make()
    assert sb["network"] == {"mode": "none", "allow": []}
    env = exec_(napi, sb["id"], argv=["env"])["stdout"]
    assert "HTTP_PROXY" not in env and "http_proxy" not in env
    code, out = curl(napi, sb["id"], "http://127.0.0.1:3128/")
    assert code == 7, out  # connection refused: nothing listens
    probe = ("import socket, errno\ntry:\n    socket.create_connection((%r, 80), timeout=5)\n"
             "except OSError as e:\n    print(errno.errorcode[e.errno])" % internet.far_ip)
    assert exec_(napi, sb["id"], argv=["python3", "-c", probe])["stdout"] == "ENETUNREACH\n"


def test_allowlist_plain_http(napi, internet):
    sb = napi.make({"mode": "allowlist", "allow": ["www.internet.test"]})
    assert sb["network"] == {"mode": "allowlist", "allow": ["www.internet.test"]}
    env = exec_(napi, sb["id"], argv=["env"])["stdout"]
    assert "HTTP_PROXY=http://127.0.0.1:3128" in env and "https_proxy=http://127.0.0.1:3128" in env
    assert "NO_PROXY=localhost,127.0.0.1,::1" in env
    code, out = curl(napi, sb["id"], "http://www.internet.test/hello?x=1")
    assert code == 0 and "200 OK" in out and "X-Origin: internet" in out, out
    # The origin got an origin-form request, the Host of the URL, and Connection: close.
    assert "GET /hello?x=1 HTTP/1.1" in out and "Host: www.internet.test" in out, out
    assert "Connection: close" in out and "Proxy-Connection" not in out.split("origin saw")[1]


def test_allowlist_denies_what_is_not_listed(napi, internet):
    sb = napi.make({"mode": "allowlist", "allow": ["www.internet.test"]})
    for url in ("http://api.internet.test/", f"http://{internet.far_ip}/",
                "http://www.internet.test.evil/"):
        code, out = curl(napi, sb["id"], url)
        assert "403 Forbidden" in out and "X-Warren-Egress: denied" in out, (url, out)
        assert "X-Origin" not in out
    assert "403" in connect(napi, sb["id"], "echo.internet.test:443")


def test_glob_and_port_entries(napi):
    sb = napi.make({"mode": "allowlist", "allow": ["*.internet.test:80", "echo.internet.test:443"]})
    for host in ("www", "api"):
        code, out = curl(napi, sb["id"], f"http://{host}.internet.test/")
        assert code == 0 and "200 OK" in out, out
    code, out = curl(napi, sb["id"], "http://internet.test/")  # the glob needs one more label
    assert "403" in out, out
    out = connect(napi, sb["id"], "echo.internet.test:443", "hello tunnel")
    assert out.splitlines()[0].startswith("HTTP/1.1 200") and "hello tunnel" in out, out
    assert "403" in connect(napi, sb["id"], "echo.internet.test:7000")  # port not listed


def test_open_allows_public_and_refuses_special_addresses(napi, internet):
    sb = napi.make({"mode": "open"})
    code, out = curl(napi, sb["id"], "http://api.internet.test/")
    assert code == 0 and "200 OK" in out, out
    code, out = curl(napi, sb["id"], f"http://{internet.far_ip}/")
    assert code == 0 and "200 OK" in out, out
    refused = ["http://metadata.internet.test/", "http://169.254.169.254/latest/meta-data/",
               "http://loopback.internet.test/", "http://127.0.0.1:80/", "http://[::1]/",
               "http://private.internet.test/", "http://10.1.2.3/",
               f"http://host.internet.test:{internet.host_port}/",
               f"http://{internet.host_ip}:{internet.host_port}/",
               "http://[::ffff:169.254.169.254]/"]
    for url in refused:
        # Through the proxy even where NO_PROXY would send curl straight (to nowhere).
        code, out = curl(napi, sb["id"], url, "--noproxy", "", "-x", "http://127.0.0.1:3128")
        assert "403 Forbidden" in out and "host side" not in out, (url, out)
    assert "403" in connect(napi, sb["id"], f"{internet.host_ip}:{internet.host_port}")


def test_explicit_address_entry_unlocks_it(napi, internet):
    sb = napi.make({"mode": "allowlist", "allow": [f"{internet.host_ip}:{internet.host_port}"]})
    code, out = curl(napi, sb["id"], f"http://{internet.host_ip}:{internet.host_port}/")
    assert code == 0 and "host side" in out, out
    # A name that resolves there is still refused: only the literal entry unlocks it.
    code, out = curl(napi, sb["id"], f"http://host.internet.test:{internet.host_port}/")
    assert "403" in out, out


def test_patch_changes_policy_of_running_sandbox(napi, internet):
    sb = napi.make()
    sid = sb["id"]
    r = napi.request("PATCH", f"/v1/sandboxes/{sid}",
                     json.dumps({"network": {"mode": "allowlist", "allow": ["www.internet.test"]}}))
    assert r.status == 200 and r.json["network"]["mode"] == "allowlist", r
    assert napi.get(f"/v1/sandboxes/{sid}").json["network"]["allow"] == ["www.internet.test"]
    code, out = curl(napi, sid, "http://www.internet.test/", "-x", "http://127.0.0.1:3128")
    assert code == 0 and "200 OK" in out, out
    r = napi.request("PATCH", f"/v1/sandboxes/{sid}",
                     json.dumps({"network": {"mode": "allowlist", "allow": ["api.internet.test"]}}))
    assert r.status == 200
    code, out = curl(napi, sid, "http://www.internet.test/", "-x", "http://127.0.0.1:3128")
    assert "403" in out, out
    code, out = curl(napi, sid, "http://api.internet.test/", "-x", "http://127.0.0.1:3128")
    assert code == 0 and "200 OK" in out, out
    r = napi.request("PATCH", f"/v1/sandboxes/{sid}", json.dumps({"network": {"mode": "none"}}))
    assert r.status == 200 and r.json["network"] == {"mode": "none", "allow": []}
    code, out = curl(napi, sid, "http://api.internet.test/", "-x", "http://127.0.0.1:3128")
    assert code == 7, out
    changes = napi.get(f"/v1/audit?sandbox={sid}&event=sandbox.network").json["events"]
    assert [e["network"]["mode"] for e in changes] == ["allowlist", "allowlist", "none"], changes
    assert all(e["ok"] is True for e in changes), changes


def test_patch_to_none_cuts_open_tunnels(napi):
    sb = napi.make({"mode": "allowlist", "allow": ["echo.internet.test"]})
    sid = sb["id"]
    script = CONNECT.replace("print(s.recv(65536).decode())",
                             "print(s.recv(65536).decode(), flush=True)\n"
                             "print('after:', repr(s.recv(100)), flush=True)")
    napi.request("PUT", f"/v1/sandboxes/{sid}/files?path=/workspace/t.py", script.encode())
    r = sh(napi, sid, "python3 /workspace/t.py echo.internet.test:443 x > /workspace/t.out 2>&1 &"
                      " sleep 1; cat /workspace/t.out")
    assert "200" in r["stdout"] and "after" not in r["stdout"], r  # the tunnel is open
    assert napi.request("PATCH", f"/v1/sandboxes/{sid}",
                        json.dumps({"network": {"mode": "none"}})).status == 200
    r = sh(napi, sid, "sleep 0.5; cat /workspace/t.out")
    assert "after: b''" in r["stdout"], r  # closed by the proxy


def test_patch_bad_input(napi):
    sb = napi.make()
    sid = sb["id"]
    for body, word in ((b"{", "JSON"), (b'{"bogus": 1}', "bogus"),
                       (b'{"network": {"mode": "sideways"}}', "mode"),
                       (b'{"network": {"mode": "none", "allow": ["a.com"]}}', "allow"),
                       (b'{"network": {"mode": "allowlist", "allow": ["a b"]}}', "allow"),
                       (b'{"network": {"mode": "allowlist", "allow": ["x.com:99999"]}}', "port"),
                       (b'{"network": {"mode": "open", "extra": 1}}', "extra"),
                       (b'{}', "network")):
        r = napi.request("PATCH", f"/v1/sandboxes/{sid}", body)
        assert r.status == 400 and word.lower() in r.error_message.lower(), (body, r)
    r = napi.request("PATCH", "/v1/sandboxes/sb-doesnotexist", b'{"network":{"mode":"open"}}')
    assert r.status == 404
    # Nothing changed.
    assert napi.get(f"/v1/sandboxes/{sid}").json["network"] == {"mode": "none", "allow": []}


def test_create_bad_network(napi):
    for net, word in (({"mode": "sideways"}, "mode"), ({"mode": "allowlist", "allow": "x"}, "allow"),
                      ({"mode": "allowlist", "allow": ["*"]}, "allow"),
                      ({"mode": "open", "bogus": 1}, "bogus")):
        r = napi.post("/v1/sandboxes", {"network": net})
        assert r.status == 400 and word in r.error_message, (net, r)


def test_decisions_are_logged(napi, net_daemon):
    sb = napi.make({"mode": "allowlist", "allow": ["www.internet.test"]}, labels={"team": "net"})
    curl(napi, sb["id"], "http://www.internet.test/")
    curl(napi, sb["id"], "http://api.internet.test/")
    log = net_daemon.log(200000)
    lines = [ln for ln in log.splitlines() if sb["id"] in ln and "egress" in ln]
    assert any("www.internet.test" in ln and "allow" in ln for ln in lines), lines
    assert any("api.internet.test" in ln and "den" in ln for ln in lines), lines
    # ... and audited, with the sandbox's labels.
    ev = napi.get(f"/v1/audit?sandbox={sb['id']}&event=egress.*").json["events"]
    allow = [e for e in ev if e["event"] == "egress.allow"]
    deny = [e for e in ev if e["event"] == "egress.deny"]
    assert allow and allow[0]["host"] == "www.internet.test" and allow[0]["port"] == 80, ev
    assert deny and deny[0]["host"] == "api.internet.test", ev
    assert deny[0]["reason"] and deny[0]["labels"] == {"team": "net"}, ev


def test_delete_with_open_tunnel_leaks_nothing(napi, net_daemon):
    sb = napi.make({"mode": "open"})
    r = napi.post(f"/v1/sandboxes/{sb['id']}/commands",
                  {"argv": ["python3", "-c", CONNECT.replace(
                      'print(s.recv(65536).decode())',
                      'print(s.recv(65536).decode(), flush=True); import time; time.sleep(60)'),
                      "echo.internet.test:443", "x"]})
    assert r.status == 201
    cmd = f"/v1/sandboxes/{sb['id']}/commands/{r.json['command_id']}"
    # The echo came back through the tunnel: it is open when the sandbox goes.
    wait_for(lambda: napi.get(cmd).json["stdout_bytes"] > 0, what="the tunnel to be open")
    assert napi.delete(f"/v1/sandboxes/{sb['id']}").status == 204
    fds = os.listdir(f"/proc/{net_daemon.pid}/fd")
    assert len(fds) < 200


def test_atropos_allow_network_goes_through_the_proxy(internet, tmp_path):
    """allow_network (default true) runs the slot's command with egress mode open: public
    destinations through the proxy; false: no proxy at all. Neither reaches the host."""
    from atropos_client import SlotsClient
    hosts = tmp_path / "hosts"
    internet.hosts_file(str(hosts))
    d = Daemon(extra_args=["--slots", "1", "--egress-hosts", str(hosts)])
    d.start()
    try:
        slots = SlotsClient(d)
        cmd = "curl -sS -m 10 http://www.internet.test/ 2>&1"
        r = slots.bash("slot_0", cmd)
        assert "origin saw" in r["output"] and r["metadata"]["network_isolated"] is False, r
        r = slots.bash("slot_0", cmd, allow_network=False)
        assert "origin saw" not in r["output"] and r["metadata"]["network_isolated"] is True, r
        r = slots.bash("slot_0", f"curl -sS -m 10 http://{internet.host_ip}:{internet.host_port}/"
                                 " 2>&1")
        assert "host side" not in r["output"] and "not allowed" in r["output"], r
    finally:
        d.stop()


def test_bad_egress_hosts_file_stops_the_daemon(tmp_path):
    bad = tmp_path / "bad.hosts"
    bad.write_text("not-an-ip www.example\n")
    for path in (str(bad), str(tmp_path / "missing.hosts")):
        d = Daemon(extra_args=["--egress-hosts", path])
        argv = [d.bin, "serve", "--listen", f"127.0.0.1:{d.port}", "--state-dir", d.state_dir,
                "--egress-hosts", path]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and "--egress-hosts" in p.stderr, (path, p.returncode, p.stderr)
        shutil.rmtree(d.base_dir, ignore_errors=True)


def test_patch_on_a_paused_sandbox_and_after_delete(napi):
    sb = napi.make()
    sid = sb["id"]
    assert napi.post(f"/v1/sandboxes/{sid}/pause").status == 200
    r = napi.request("PATCH", f"/v1/sandboxes/{sid}",
                     json.dumps({"network": {"mode": "allowlist", "allow": ["www.internet.test"]}}))
    assert r.status == 200 and r.json["state"] == "paused", r
    assert napi.post(f"/v1/sandboxes/{sid}/resume").status == 200
    code, out = curl(napi, sid, "http://www.internet.test/")
    assert code == 0 and "origin saw" in out, out
    assert napi.delete(f"/v1/sandboxes/{sid}").status == 204
    r = napi.request("PATCH", f"/v1/sandboxes/{sid}", json.dumps({"network": {"mode": "open"}}))
    assert r.status == 404, r
