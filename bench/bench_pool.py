#!/usr/bin/python3
"""bench_pool — a create served by a warm pool against a normal create.

In a throw-away `warren serve`, sets a pool of --size sandboxes (host template, default
resources) and then, round after round, waits for the pool to be full and claims all of it with
back-to-back `POST /v1/sandboxes {"name": ..., "env": ...}` on one keep-alive connection (every
claim a hit), until -n claims were made; the sandboxes are deleted between rounds, outside the
measurements. Then the same number of normal creates (resources that match no pool) are made
the same way. For each it records

  server   the daemon's own time for the request, from its Server-Timing header (from the
           handler's start to the answer being queued: parsing, claim or create, audit record,
           store write, JSON);
  rtt      the round trip seen by this client on loopback (request written to response read).

Prints p50/p99 of both, per kind. Issue 11's targets: a pooled create p50 <= 1 ms server time and
<= 1.5 ms round trip.

Usage (as root): /usr/bin/python3 bench/bench_pool.py [-n 200] [--size 20] [--json]
Environment: BUILD (default build), KEEP_LOG=1 keeps the daemon log.
"""
import argparse
import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stats import summary  # noqa: E402
from warren_daemon import Daemon  # noqa: E402


def log(msg):
    print(f"bench_pool: {msg}", file=sys.stderr)


class Conn:
    def __init__(self, port):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        t0 = time.perf_counter()
        self.c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = self.c.getresponse()
        raw = r.read()
        rtt = time.perf_counter() - t0
        return r.status, r.getheader("Server-Timing"), json.loads(raw) if raw else None, rtt


def wait_full(conn, name, size):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, _, p, _ = conn.call("GET", f"/v1/pools/{name}")
        if p["ready"] == size:
            return
        time.sleep(0.02)
    raise SystemExit(f"pool {name} did not fill to {size}: {p}")


def creates(conn, n, spec, pooled, size, label):
    server, rtt, ids = [], [], []
    i = 0
    while i < n:
        if pooled:
            wait_full(conn, "bench", size)
        batch = min(size, n - i)
        for _ in range(batch):
            status, timing, sb, t = conn.call("POST", "/v1/sandboxes",
                                              {**spec, "name": f"{label}-{i}",
                                               "env": {"I": str(i)}})
            if status != 201 or sb["from_pool"] is not pooled:
                raise SystemExit(f"create {i}: {status} {sb}")
            server.append(float(timing.split("=")[1]))
            rtt.append(t * 1e3)
            ids.append(sb["id"])
            i += 1
        for sid in ids:
            conn.call("DELETE", f"/v1/sandboxes/{sid}")
        ids.clear()
    return {"server_ms": summary(server), "rtt_ms": summary(rtt)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--size", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    d = Daemon(os.environ.get("BUILD", "build"), log)
    d.start()
    try:
        conn = Conn(d.port)
        status, _, p, _ = conn.call("PUT", "/v1/pools/bench", {"size": a.size})
        assert status == 200, p
        pooled = creates(conn, a.n, {}, True, a.size, "pooled")
        normal = creates(conn, a.n, {"resources": {"cpus": 0.5}}, False, a.size, "normal")
        conn.call("DELETE", "/v1/pools/bench")
    finally:
        d.stop()
    out = {"n": a.n, "size": a.size, "pooled": pooled, "normal": normal}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'':8} {'server p50':>11} {'p99':>8} {'rtt p50':>9} {'p99':>8}  (ms, n={a.n})")
    for k in ("pooled", "normal"):
        s, r = out[k]["server_ms"], out[k]["rtt_ms"]
        print(f"{k:8} {s['p50']:11.3f} {s['p99']:8.3f} {r['p50']:9.3f} {r['p99']:8.3f}")
    print(f"pooled/normal p50 rtt: {pooled['rtt_ms']['p50'] / normal['rtt_ms']['p50']:.3f}")


if __name__ == "__main__":
    main()
