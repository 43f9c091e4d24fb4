"""Escape suite: network (mode `none`). Only a loopback interface and no route anywhere: not to
the internet, not to the host's addresses, not to the daemon's own port on the host's loopback,
not to the host's abstract unix sockets; no raw or packet sockets, no interface changes."""

import os
import select
import socket

from conftest import exec_
from escape_util import box, host_ipv4_addrs, py, rnd  # noqa: F401  (box is a fixture)

CONNECT = r'''
import socket
def connect(fam, addr, kind=socket.SOCK_STREAM):
    s = socket.socket(fam, kind)
    s.settimeout(3)
    try:
        s.connect(addr)
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
'''


def test_only_loopback(api, box):
    got = py(api, box["id"], """
import socket
res = {"sys": sorted(os.listdir("/sys/class/net")),
       "proc": [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]],
       "routes": open("/proc/net/route").read().splitlines()[1:],
       "routes6": [l for l in open("/proc/net/ipv6_route").read().splitlines() if not l.split()[-1] == "lo"],
       "ifs": [n for i, n in socket.if_nameindex()]}
import subprocess
res["ip"] = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
emit(res)
""")
    assert got["sys"] == ["lo"] and got["proc"] == ["lo"] and got["ifs"] == ["lo"], got
    assert got["routes"] == [], f"IPv4 routes inside: {got['routes']}"
    assert got["routes6"] == [], f"IPv6 routes off loopback: {got['routes6']}"
    assert [l.split(":")[1].strip() for l in got["ip"].splitlines()] == ["lo"], got["ip"]


def test_no_route_out(api, box):
    host_ips = host_ipv4_addrs()
    targets = [("1.1.1.1", 80), ("8.8.8.8", 53), ("10.0.2.2", 80), ("169.254.169.254", 80),
               ("192.168.0.1", 80), ("172.17.0.1", 80)] + [(ip, 22) for ip in host_ips]
    got = py(api, box["id"], CONNECT + f"""
res = {{}}
for host, port in {targets!r}:
    res["%s:%d" % (host, port)] = connect(socket.AF_INET, (host, port))
for host in ("2606:4700:4700::1111", "fd00::2", "fe80::1%lo"):
    res[host] = connect(socket.AF_INET6, (host, 80))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
res["udp dns"] = err(u.sendto, b"x", ("1.1.1.1", 53))
res["udp broadcast"] = err(u.sendto, b"x", ("255.255.255.255", 67))
emit(res)
""", timeout_s=60)
    for host, port in targets:
        assert got[f"{host}:{port}"] == "ENETUNREACH", f"{host}:{port}: {got}"
    assert got["2606:4700:4700::1111"] == "ENETUNREACH" and got["fd00::2"] == "ENETUNREACH", got
    assert got["fe80::1%lo"] in ("ECONNREFUSED", "EADDRNOTAVAIL", "ENETUNREACH", "EINVAL"), got
    assert got["udp dns"] == "ENETUNREACH", got
    assert got["udp broadcast"] in ("ENETUNREACH", "EACCES"), got


def test_host_loopback_services_unreachable(api, box, daemon):
    """The host's 127.0.0.1 (the daemon's own API above all) is another network namespace's."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", 0))
    lst.listen(8)
    port = lst.getsockname()[1]
    lst6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    lst6.bind(("::1", 0))
    lst6.listen(8)
    port6 = lst6.getsockname()[1]
    try:
        got = py(api, box["id"], CONNECT + f"""
res = {{
  "daemon": connect(socket.AF_INET, ("127.0.0.1", {daemon.port})),
  "daemon localhost": connect(socket.AF_INET, ("localhost", {daemon.port})),
  "daemon v6": connect(socket.AF_INET6, ("::1", {daemon.port})),
  "host any": connect(socket.AF_INET, ("127.0.0.1", {port})),
  "host v6": connect(socket.AF_INET6, ("::1", {port6})),
  "127.0.0.2": connect(socket.AF_INET, ("127.0.0.2", {daemon.port})),
}}
emit(res)
""")
        for k, v in got.items():
            assert v == "ECONNREFUSED", f"{k}: {v} ({got})"
        r, _, _ = select.select([lst, lst6], [], [], 0.3)
        assert not r, "a host listener saw a connection from the sandbox"
        assert api.healthy()
    finally:
        lst.close()
        lst6.close()


def test_host_unix_sockets_unreachable(api, box, daemon):
    name = f"warren-escape-{rnd()}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + name)
    abstract.listen(4)
    path = os.path.join(daemon.base_dir, name + ".sock")
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind(path)
    os.chmod(path, 0o777)
    named.listen(4)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind("\0" + name + "-dgram")
    try:
        got = py(api, box["id"], CONNECT + f"""
res = {{"abstract": connect(socket.AF_UNIX, "\\0{name}"),
       "named": connect(socket.AF_UNIX, {path!r}),
       "systemd": connect(socket.AF_UNIX, "/run/systemd/private"),
       "dbus": connect(socket.AF_UNIX, "/run/dbus/system_bus_socket"),
       "docker": connect(socket.AF_UNIX, "/var/run/docker.sock"),
       "abstract seen": "@{name}" in open("/proc/net/unix").read()}}
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
res["dgram"] = err(d.sendto, b"x", "\\0{name}-dgram")
emit(res)
""")
        assert got["abstract"] == "ECONNREFUSED", got
        assert got["named"] == "ENOENT" and got["systemd"] == "ENOENT", got
        assert got["dbus"] == "ENOENT" and got["docker"] == "ENOENT", got
        assert got["abstract seen"] is False, got
        assert got["dgram"] == "ECONNREFUSED", got
        r, _, _ = select.select([abstract, named, dgram], [], [], 0.3)
        assert not r, "a host unix socket got traffic from the sandbox"
    finally:
        abstract.close()
        named.close()
        dgram.close()
        os.unlink(path)


def test_raw_packet_sockets_and_interface_changes_denied(api, box):
    got = py(api, box["id"], """
import socket, fcntl, struct, subprocess
res = {}
for name, args in {"raw icmp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                   "raw tcp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
                   "raw6": (socket.AF_INET6, socket.SOCK_RAW, 58),
                   "packet": (socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)),
                   "packet dgram": (socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))}.items():
    res[name] = err(socket.socket, *args)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ifr = struct.pack("16sH14x", b"lo", 0)
res["SIOCSIFFLAGS down"] = err(fcntl.ioctl, s, 0x8914, ifr)
res["SIOCSIFADDR"] = err(fcntl.ioctl, s, 0x8916, struct.pack("16sH2s4s8x", b"lo", socket.AF_INET, b"", socket.inet_aton("10.9.9.9")))
for cmd in (["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            ["ip", "link", "set", "lo", "down"], ["ip", "addr", "add", "10.9.9.9/24", "dev", "lo"],
            ["ip", "route", "add", "default", "dev", "lo"], ["ip", "link", "add", "d0", "type", "dummy"]):
    p = subprocess.run(cmd, capture_output=True, text=True)
    res[" ".join(cmd)] = [p.returncode, "Operation not permitted" in p.stderr]
res["lo flags"] = int(open("/sys/class/net/lo/flags").read(), 16) & 1
res["ifs"] = sorted(os.listdir("/sys/class/net"))
res["routes"] = open("/proc/net/route").read().splitlines()[1:]
emit(res)
""")
    for k in ("raw icmp", "raw tcp", "raw6", "packet", "packet dgram"):
        assert got[k] == "EPERM", (k, got)
    assert got["SIOCSIFFLAGS down"] == "EPERM" and got["SIOCSIFADDR"] == "EPERM", got
    for k, v in got.items():
        if k.startswith("ip "):
            assert v == [2, True], (k, got)
    assert got["lo flags"] == 1 and got["ifs"] == ["lo"] and got["routes"] == [], got
    # still exactly the same from the host's side: no new interface appeared there
    assert not os.path.exists("/sys/class/net/v0") and not os.path.exists("/sys/class/net/d0")
    assert exec_(api, box["id"], argv=["cat", "/sys/class/net/lo/operstate"])["exit_code"] == 0
