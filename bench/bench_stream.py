#!/usr/bin/python3
"""bench_stream — warren's streaming and persistent-shell benchmark.

In one run, against a throw-away daemon started like bench/run.sh does:

  (a) raw_pipe     host pipe throughput: `head -c N /dev/zero | cat > /dev/null` under bash,
                   wall time of the whole pipeline.
  (b) ws_c         the same `head -c N /dev/zero` run in a sandbox with its stdout streamed
                   through exec/ws in binary mode (data_b64; lossless, the default), read by
                   build/bench/bench_ws (a small C client that checks offsets and counts bytes
                   without JSON-decoding; a gap fails it, as it does the Python client).
      ws_python    the same through python3-websockets with json.loads + base64 decoding of
                   every message (what a typical Python client gets), on --python-bytes.
                   Every streaming run also records the daemon's CPU time (from /proc/PID/stat)
                   to show which side is the bottleneck.
  (c) shell_run    round trip of POST .../shells/{sid}/run {"command":"true"}, vs
      exec         round trip of POST .../exec {"argv":["true"]}, one keep-alive connection
                   each, interleaved in a per-round shuffled order (fixed seed).

Usage (as root, from anywhere):
    /usr/bin/python3 bench/bench_stream.py [--bytes N] [--python-bytes N] [--repeat N]
                                           [--rounds N] [--warmup N] [--no-build] [--json]
Environment: BUILD (default build), KEEP_LOG=1 keeps the daemon log.
"""

import argparse
import asyncio
import base64
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time

from stats import summary
from warren_daemon import ROOT, Daemon


def log(msg):
    print(f"bench_stream: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# daemon


class Http:
    """One keep-alive connection."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data,
                          headers={"Content-Type": "application/json"} if data else {})
        r = self.conn.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)


# ---------------------------------------------------------------------------------------------
# measurements


def raw_pipe(nbytes):
    t0 = time.monotonic()
    subprocess.run(["bash", "-c", f"head -c {nbytes} /dev/zero | cat > /dev/null"], check=True)
    secs = time.monotonic() - t0
    return {"bytes": nbytes, "seconds": secs, "mb_per_s": nbytes / secs / 1e6}


def execute_msg(nbytes):
    # No flow-control option: an attached client gets every byte by default (a client that
    # falls behind pauses the command); both clients fail on a gap message.
    return {"type": "execute", "argv": ["head", "-c", str(nbytes), "/dev/zero"], "binary": True}


def ws_c(daemon, build, sid, nbytes):
    cpu0 = daemon.cpu_s()
    out = subprocess.run([os.path.join(ROOT, build, "bench", "bench_ws"), "--port",
                          str(daemon.port), "--sandbox", sid, "--execute",
                          json.dumps(execute_msg(nbytes)), "--expect", str(nbytes)],
                         check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    res["daemon_cpu_s"] = daemon.cpu_s() - cpu0
    return res


def ws_python(daemon, sid, nbytes):
    import websockets  # python3-websockets (Debian)

    async def go():
        url = f"ws://127.0.0.1:{daemon.port}/v1/sandboxes/{sid}/exec/ws"
        got = 0
        msgs = 0
        async with websockets.connect(url, max_size=None) as ws:
            t0 = time.monotonic()
            await ws.send(json.dumps(execute_msg(nbytes)))
            async for raw in ws:
                m = json.loads(raw)
                msgs += 1
                if m["type"] == "stdout":
                    if m["offset"] != got:
                        raise SystemExit(f"python client: offset {m['offset']}, expected {got}")
                    got += len(base64.b64decode(m["data_b64"]))
                elif m["type"] == "exit":
                    secs = time.monotonic() - t0
                    if m["exit_code"] != 0:
                        raise SystemExit(f"python client: {m}")
                    break
                elif m["type"] != "started":
                    raise SystemExit(f"python client: unexpected {m}")
        if got != nbytes:
            raise SystemExit(f"python client: got {got} of {nbytes} bytes")
        return {"bytes": got, "seconds": secs, "messages": msgs, "mb_per_s": got / secs / 1e6}

    cpu0, c0 = daemon.cpu_s(), time.process_time()
    res = asyncio.run(go())
    res["daemon_cpu_s"] = daemon.cpu_s() - cpu0
    res["client_cpu_s"] = time.process_time() - c0
    return res


def rtt(daemon, sid, rounds, warmup):
    c_exec, c_shell = Http(daemon.port), Http(daemon.port)
    st, sh = c_shell.call("POST", f"/v1/sandboxes/{sid}/shells", {})
    if st != 201:
        raise SystemExit(f"create shell: {st} {sh}")
    shid = sh["shell_id"]

    def do_exec():
        st, r = c_exec.call("POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["true"]})
        if st != 200 or r.get("exit_code") != 0:
            raise SystemExit(f"exec true: {st} {r}")

    def do_shell():
        st, r = c_shell.call("POST", f"/v1/sandboxes/{sid}/shells/{shid}/run",
                             {"command": "true"})
        if st != 200 or r.get("exit_code") != 0 or r.get("output") != "":
            raise SystemExit(f"shell run true: {st} {r}")

    groups = {"exec": do_exec, "shell_run": do_shell}
    samples = {k: [] for k in groups}
    rng = random.Random(1)
    for i in range(warmup + rounds):
        order = list(groups)
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            groups[name]()
            ms = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                samples[name].append(ms)
    c_shell.call("DELETE", f"/v1/sandboxes/{sid}/shells/{shid}")
    return {k: summary(v) for k, v in samples.items()}


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bytes", type=int, default=1 << 30, help="bytes per stream (1 GiB)")
    ap.add_argument("--python-bytes", type=int, default=256 << 20,
                    help="bytes per Python-client stream (256 MiB); 0 skips it")
    ap.add_argument("--repeat", type=int, default=3, help="streaming runs of each kind")
    ap.add_argument("--rounds", type=int, default=200, help="RTT rounds")
    ap.add_argument("--warmup", type=int, default=5, help="RTT warm-up rounds")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_stream: the daemon needs root")
    build = os.environ.get("BUILD", "build")
    if not args.no_build:
        subprocess.run(["make", "--no-print-directory", "-C", ROOT, f"BUILD={build}", "all",
                        f"{build}/bench/bench_ws"], check=True, stdout=sys.stderr)

    d = Daemon(build, log)
    results = {"bytes": args.bytes, "python_bytes": args.python_bytes, "runs": []}
    try:
        d.start()
        api = Http(d.port)
        st, sb = api.call("POST", "/v1/sandboxes", {})
        if st != 201:
            raise SystemExit(f"create sandbox: {st} {sb}")
        sid = sb["id"]
        ws_c(d, build, sid, 16 << 20)  # warm-up (and a check that everything works)
        for i in range(args.repeat):
            kinds = ["raw_pipe", "ws_c"] + (["ws_python"] if args.python_bytes else [])
            random.Random(i).shuffle(kinds)
            for kind in kinds:
                if kind == "raw_pipe":
                    r = raw_pipe(args.bytes)
                elif kind == "ws_c":
                    r = ws_c(d, build, sid, args.bytes)
                else:
                    r = ws_python(d, sid, args.python_bytes)
                r["kind"] = kind
                r["rep"] = i
                results["runs"].append(r)
                log(f"{kind:10s} {r['bytes'] / 2**20:7.0f} MiB {r['seconds']:7.2f} s "
                    f"{r['mb_per_s']:8.1f} MB/s" +
                    (f"  daemon CPU {r['daemon_cpu_s']:.2f} s" if "daemon_cpu_s" in r else ""))
        results["rtt_ms"] = rtt(d, sid, args.rounds, args.warmup)
        Http(d.port).call("DELETE", f"/v1/sandboxes/{sid}")  # (the first one may be idle-closed)
    finally:
        d.stop()

    def med(kind, key="mb_per_s"):
        v = [r[key] for r in results["runs"] if r["kind"] == kind]
        return statistics.median(v) if v else None

    raw, c, py = med("raw_pipe"), med("ws_c"), med("ws_python")
    results["median_mb_per_s"] = {"raw_pipe": raw, "ws_c": c, "ws_python": py}
    results["ratio_ws_c_raw"] = c / raw
    results["ratio_ws_python_raw"] = py / raw if py else None
    rt = results["rtt_ms"]
    results["ratio_shell_run_exec_p50"] = rt["shell_run"]["p50"] / rt["exec"]["p50"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"streaming ({args.repeat} runs each, median MB/s; 1 MB = 10^6 bytes)")
    print(f"  raw_pipe   {raw:9.1f}   head -c {args.bytes} /dev/zero | cat > /dev/null")
    for kind, v in (("ws_c", c), ("ws_python", py)):
        if v is None:
            continue
        runs = [r for r in results["runs"] if r["kind"] == kind]
        busy = statistics.median(r["daemon_cpu_s"] / r["seconds"] for r in runs)
        extra = ""
        if kind == "ws_c":
            cl = statistics.median((r["cpu_user_s"] + r["cpu_sys_s"]) / r["seconds"]
                                   for r in runs)
            extra = f", client CPU {cl * 100:.0f}%"
        else:
            cl = statistics.median(r["client_cpu_s"] / r["seconds"] for r in runs)
            extra = f", client CPU {cl * 100:.0f}%"
        per_gib = statistics.median(r["daemon_cpu_s"] / (r["bytes"] / 2**30) for r in runs)
        print(f"  {kind:10s} {v:9.1f}   {v / raw * 100:5.1f}% of raw   "
              f"(daemon CPU {busy * 100:.0f}% of one core, {per_gib:.1f} s per GiB{extra})")
    print(f"RTT of `true` (ms, {args.rounds} rounds interleaved)")
    print(f"  {'name':10s} {'n':>5s} {'min':>8s} {'p50':>8s} {'p90':>8s} {'p99':>8s} "
          f"{'max':>8s}")
    for name in ("exec", "shell_run"):
        s = rt[name]
        print(f"  {name:10s} {s['n']:5d} {s['min']:8.3f} {s['p50']:8.3f} {s['p90']:8.3f} "
              f"{s['p99']:8.3f} {s['max']:8.3f}")
    print(f"  shell_run/exec p50 ratio {results['ratio_shell_run_exec_p50']:.3f}")


if __name__ == "__main__":
    main()
