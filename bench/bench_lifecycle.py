#!/usr/bin/python3
"""bench_lifecycle — stop, start and restore against create (issue 11), same run, medians.

On a throw-away daemon, for --rounds rounds (default 30), each timed as its HTTP round trip:

  create    POST /v1/sandboxes (host template; the disk pool warm, as in use)
  stop      POST .../stop {"grace_s": 0}: every process killed, the init gone, files kept
  start     POST .../start: a new init on the same disk
  restore   the first exec on a session sandbox that idled out (state `recycled`), which
            restores it transparently, minus a plain exec: what a recycled sandbox costs its
            next caller

Usage (as root): /usr/bin/python3 bench/bench_lifecycle.py [--rounds 30] [--json]
Environment: BUILD (default build), KEEP_LOG=1 keeps the daemon log.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from warren_daemon import Daemon  # noqa: E402


def log(msg):
    print(f"bench_lifecycle: {msg}", file=sys.stderr)


class Api:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method, path, body=None):
        t0 = time.monotonic()
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None,
                          headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None, (time.monotonic() - t0) * 1e3


def must(res, status, what):
    if res[0] != status:
        raise SystemExit(f"bench_lifecycle: {what}: {res[0]} {res[1]}")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    d = Daemon(os.environ.get("BUILD", "build"), log)
    d.start()
    t = {"create": [], "stop": [], "start": [], "exec": [], "restore": []}
    try:
        api = Api(d.port)
        for i in range(a.rounds):
            st, sb, ms = must(api.call("POST", "/v1/sandboxes", {}), 201, "create")
            t["create"].append(ms)
            sid = sb["id"]
            t["stop"].append(must(api.call("POST", f"/v1/sandboxes/{sid}/stop", {"grace_s": 0}),
                                  200, "stop")[2])
            t["start"].append(must(api.call("POST", f"/v1/sandboxes/{sid}/start", {}), 200,
                                   "start")[2])
            must(api.call("DELETE", f"/v1/sandboxes/{sid}"), 204, "delete")
        # Restore: session sandboxes with a 1 s idle timeout, recycled, then exec'd.
        for i in range(a.rounds):
            st, sb, _ = must(api.call("POST", "/v1/sandboxes",
                                      {"session_id": f"s{i}", "idle_timeout_s": 1}), 201,
                             "create (session)")
            sid = sb["id"]
            t["exec"].append(must(api.call("POST", f"/v1/sandboxes/{sid}/exec",
                                           {"argv": ["true"]}), 200, "exec")[2])
            deadline = time.monotonic() + 30
            while True:  # the list is no heartbeat (a GET of the sandbox itself would be one)
                st, r, _ = api.call("GET", f"/v1/sandboxes?session_id=s{i}")
                if r["sandboxes"] and r["sandboxes"][0]["state"] == "recycled":
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("bench_lifecycle: the sandbox was not recycled in 30 s")
                time.sleep(0.05)
            t["restore"].append(must(api.call("POST", f"/v1/sandboxes/{sid}/exec",
                                              {"argv": ["true"]}), 200, "exec (restore)")[2])
            must(api.call("DELETE", f"/v1/sandboxes/{sid}"), 204, "delete")
    finally:
        d.stop()
    med = {k: statistics.median(v) for k, v in t.items()}
    med["restore_net"] = med["restore"] - med["exec"]
    if a.json:
        print(json.dumps(med))
        return
    c = med["create"]
    print(f"lifecycle ({a.rounds} rounds, p50 round trips): create {c:.2f} ms, stop "
          f"{med['stop']:.2f} ms ({med['stop'] / c:.2f}x create), start {med['start']:.2f} ms "
          f"({med['start'] / c:.2f}x), restore {med['restore_net']:.2f} ms "
          f"({med['restore_net'] / c:.2f}x; exec that restores {med['restore']:.2f} ms, plain "
          f"exec {med['exec']:.2f} ms)")


if __name__ == "__main__":
    main()
