#!/usr/bin/python3
"""bench_density — many idle sandboxes on one host (issue 11, "Density").

Starts a throw-away `warren serve` with default settings (but --max-sandboxes above N), then:

  create   N sandboxes (default 1000) of the host template, idle, from --clients concurrent
           clients: sandboxes per second;
  memory   host memory per sandbox: the growth of MemTotal - MemAvailable (/proc/meminfo) over
           the N creates, divided by N (kernel memory of namespaces, mounts, page tables and
           the inits included; goal <= 512 KiB);
  rss      the daemon's VmRSS with N sandboxes;
  delete   N deletes: sandboxes per second;
  refill   PUT /v1/pools/p {"size": 100}: time until 100 members are ready.

The host's other activity moves MemAvailable too: run it on a quiet machine and read the memory
figure as an upper bound. Usage (as root):
    /usr/bin/python3 bench/bench_density.py [-n 1000] [--clients 4] [--pool 100] [--json]
Environment: BUILD (default build), KEEP_LOG=1 keeps the daemon log.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from warren_daemon import Daemon  # noqa: E402


def log(msg):
    print(f"bench_density: {msg}", file=sys.stderr)


def request(port, method, path, body=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, json.loads(data) if data else None


def mem_used():
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            info[k] = int(v.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def in_parallel(port, items, clients, fn):
    """Runs fn(conn, item) over items from `clients` threads, each with its own connection."""
    lock = threading.Lock()
    todo = list(items)
    errors = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                if not todo or errors:
                    break
                item = todo.pop()
            try:
                fn(conn, item)
            except Exception as e:  # reported after the run
                with lock:
                    errors.append(f"{item}: {e!r}")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench_density: {len(errors)} failures, first: {errors[0]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--pool", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    d = Daemon(os.environ.get("BUILD", "build"), log,
               extra_args=["--max-sandboxes", str(a.n + a.pool + 16)])
    d.start()
    out = {"n": a.n, "clients": a.clients}
    try:
        port = d.port
        ids = []

        def create(conn, i):
            st, r = request(port, "POST", "/v1/sandboxes", {"name": f"d{i}"}, conn)
            if st != 201:
                raise RuntimeError(f"create: {st} {r}")
            ids.append(r["id"])

        before = mem_used()
        t0 = time.monotonic()
        in_parallel(port, range(a.n), a.clients, create)
        took = time.monotonic() - t0
        time.sleep(2)  # let the disk pool's background refill settle before reading memory
        after = mem_used()
        out["create_per_s"] = a.n / took
        out["memory_per_sandbox_kib"] = (after - before) / a.n / 1024
        out["daemon_rss_mib"] = rss(d.proc.pid) / (1 << 20)
        log(f"{a.n} sandboxes in {took:.1f} s ({out['create_per_s']:.0f}/s), "
            f"{out['memory_per_sandbox_kib']:.0f} KiB of host memory each, daemon RSS "
            f"{out['daemon_rss_mib']:.1f} MiB")

        def delete(conn, sid):
            st, r = request(port, "DELETE", f"/v1/sandboxes/{sid}", None, conn)
            if st != 204:
                raise RuntimeError(f"delete: {st} {r}")

        t0 = time.monotonic()
        in_parallel(port, list(ids), a.clients, delete)
        took = time.monotonic() - t0
        out["delete_per_s"] = a.n / took
        log(f"{a.n} deletes in {took:.1f} s ({out['delete_per_s']:.0f}/s)")

        t0 = time.monotonic()
        st, r = request(port, "PUT", "/v1/pools/p", {"template": "host", "size": a.pool})
        if st != 200:
            raise SystemExit(f"bench_density: PUT pool: {st} {r}")
        while True:
            st, r = request(port, "GET", "/v1/pools/p")
            if st == 200 and r["ready"] >= a.pool:
                break
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"bench_density: the pool did not fill in 600 s: {r}")
            time.sleep(0.05)
        out["pool_refill_s"] = time.monotonic() - t0
        log(f"a pool of {a.pool} filled in {out['pool_refill_s']:.1f} s")
        request(port, "DELETE", "/v1/pools/p")
    finally:
        d.stop()
    if a.json:
        print(json.dumps(out))
    else:
        print(f"density: {a.n} idle sandboxes: create {out['create_per_s']:.0f}/s, host memory "
              f"{out['memory_per_sandbox_kib']:.0f} KiB each (goal <= 512), daemon RSS "
              f"{out['daemon_rss_mib']:.1f} MiB, delete {out['delete_per_s']:.0f}/s, pool of "
              f"{a.pool} filled in {out['pool_refill_s']:.1f} s")


if __name__ == "__main__":
    main()
