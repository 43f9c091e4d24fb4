#!/usr/bin/python3
"""bench_readopt — how long a restarted daemon takes to take over running sandboxes.

Creates N sandboxes (default 100), each with one detached command running, in a throw-away
`warren serve`; then, for each run, kills the daemon with SIGKILL (its sandboxes keep running)
and starts a new one on the same state dir, timing:

  recover   what the daemon logs for registry_recover(): reading the store, finding every init
            by pid and start time, taking its control channel back (pidfd_getfd), the HELLO/STATE
            handshake, re-attaching each command's output ring and pipes, re-creating proxies;
  ready     from the exec of the new daemon to its first 200 on GET /v1/sandboxes listing all N
            running (process start, mount namespace, cgroups, templates and the listener
            included).

Prints the median (and min/max) of --runs runs. The goal of issue 11 is recover <= 1 s for 100.

Usage (as root): /usr/bin/python3 bench/bench_readopt.py [-n 100] [--runs 5] [--json]
Environment: BUILD (default build), KEEP_LOG=1 keeps the daemon log.
"""
import argparse
import http.client
import json
import os
import re
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from warren_daemon import Daemon  # noqa: E402


def log(msg):
    print(f"bench_readopt: {msg}", file=sys.stderr)


def request(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    d = Daemon(os.environ.get("BUILD", "build"), log, extra_args=["--max-sandboxes", str(a.n + 8)])
    # Leave them running when killed: the bench's own daemon stops them only at the very end.
    d.argv.remove("--stop-sandboxes-on-exit")
    d.start()
    recover, ready = [], []
    try:
        for i in range(a.n):
            st, sb = request(d.port, "POST", "/v1/sandboxes", {"name": f"r{i}"})
            assert st == 201, (st, sb)
            st, _ = request(d.port, "POST", f"/v1/sandboxes/{sb['id']}/commands",
                            {"shell": "while :; do echo tick; sleep 1; done"})
            assert st == 201
        log(f"{a.n} sandboxes with a command each")
        for run in range(a.runs):
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            d.logf.close()
            t0 = time.monotonic()
            d.start()
            while True:
                st, body = request(d.port, "GET", "/v1/sandboxes")
                sbs = body["sandboxes"] if st == 200 else []
                if len(sbs) == a.n and all(s["state"] == "running" for s in sbs):
                    break
                time.sleep(0.005)
            ready.append(time.monotonic() - t0)
            text = open(d.log_path).read()
            m = re.findall(r"recovery: (\d+) sandboxes \((\d+) running\) in ([\d.]+) ms", text)
            assert m and m[-1][1] == str(a.n), m[-1:]
            recover.append(float(m[-1][2]) / 1e3)
    finally:
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.logf.close()
        d.argv.append("--stop-sandboxes-on-exit")
        d.start()  # takes them over once more, then stops them all with the state dir
        d.stop()
    res = {"sandboxes": a.n, "runs": a.runs,
           "recover_median_s": statistics.median(recover), "recover_min_s": min(recover),
           "recover_max_s": max(recover), "ready_median_s": statistics.median(ready),
           "ready_min_s": min(ready), "ready_max_s": max(ready)}
    if a.json:
        print(json.dumps(res))
    else:
        print(f"re-adoption of {a.n} sandboxes (1 command each), {a.runs} runs:")
        print(f"  recover  median {res['recover_median_s'] * 1e3:8.1f} ms   "
              f"(min {res['recover_min_s'] * 1e3:.1f}, max {res['recover_max_s'] * 1e3:.1f})"
              f"   goal <= 1000 ms")
        print(f"  ready    median {res['ready_median_s'] * 1e3:8.1f} ms   "
              f"(min {res['ready_min_s'] * 1e3:.1f}, max {res['ready_max_s'] * 1e3:.1f})")


if __name__ == "__main__":
    main()
