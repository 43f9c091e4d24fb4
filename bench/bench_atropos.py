#!/usr/bin/python3
"""bench_atropos — warren's atropos slot protocol against the reference design's bwrap spawn.

In one run, against a throw-away `warren serve --slots 4` (started as bench/run.sh starts its
daemon), interleaved in a per-round shuffled order (fixed seed), every round takes one sample of:

  execute        round trip of POST /execute {"slot_id":"slot_0","tool":"bash",
                 "args":{"command":"true"},"timeout":30,"execution_id":<uuid4>} on one
                 keep-alive connection (what the seed SandboxExecutor sends per command).
  native_exec    round trip of warren's own POST /v1/sandboxes/slot_1/exec
                 {"argv":["/bin/sh","-c","true"]} (slot sandboxes are ordinary named sandboxes):
                 the same command without the atropos layer, to show what that layer costs.
  bwrap          one spawn of the reference server's bubblewrap command running
                 `/bin/sh -c true` (no network: like warren's slots), until it exits.
  bwrap_net      the same with --share-net, which the reference adds when allow_network is
                 true (its default): no network namespace to create and tear down.
  fork_exec      a bare spawn of `/bin/sh -c true` (the floor for running anything).
  batch4         round trip of POST /batch with 4 `bash true` items, one per slot.
  batch16        round trip of POST /batch with 16 `bash true` items, 4 per slot.
  bwrap4         4 of the `bwrap` spawns started at once, until all 4 have exited: what the
                 reference server does for a batch of 4 across 4 slots.
  fork_exec4     4 bare spawns of `/bin/sh -c true` at once: the machine's parallel floor.
  health         round trip of GET /health on its own keep-alive connection: the HTTP floor,
                 i.e. an upper bound on what this Python client adds to every request.

Spawns use os.posix_spawn (vfork + exec in glibc: no copy of this process's memory) and
os.wait4, the cheapest way for a Python server to run a command. The HTTP client is a few
lines on a raw socket (one sendall per request, TCP_NODELAY, reads exactly Content-Length).
The client CPU time per request (time.process_time) is reported to show the client's own cost.

CPU per sample is also recorded: for the warren groups, the daemon's threads (schedstat, ns)
plus the slot sandboxes' cgroups (cpuacct.usage / cpu.stat, which hold the init and every
command); for the spawns, the rusage of the reaped child (its whole tree). Kernel work done
later in worker threads (e.g. a network namespace's teardown) is in neither.

Usage (as root, from anywhere):
    /usr/bin/python3 bench/bench_atropos.py [--rounds N] [--warmup N] [--no-build]
                                            [--bwrap PATH] [--json]
Environment: BUILD (default build), KEEP_LOG=1 keeps the daemon log.
"""

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from stats import summary
from warren_daemon import ROOT, Daemon
NSLOTS = 4


def log(msg):
    print(f"bench_atropos: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# daemon


class Conn:
    """One keep-alive HTTP/1.1 connection on a raw socket: the request goes out in one
    sendall(), the answer is read up to the blank line and then exactly Content-Length bytes."""

    def __init__(self, port):
        self.host = f"127.0.0.1:{port}"
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def call(self, method, path, body=None):
        """-> (status, body bytes)."""
        data = body if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                + ("Content-Type: application/json\r\n" if body is not None else "")
                + f"Content-Length: {len(data)}\r\n\r\n").encode()
        self.sock.sendall(head + data)
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit(f"{method} {path}: server closed the connection")
            buf += chunk
        lines = buf[:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        clen = 0
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                clen = int(v)
            elif k == b"transfer-encoding":
                raise SystemExit("chunked responses are not supported by this client")
        need = end + 4 + clen
        while len(buf) < need:
            chunk = self.sock.recv(max(65536, need - len(buf)))
            if not chunk:
                raise SystemExit(f"{method} {path}: server closed the connection mid-body")
            buf += chunk
        self.buf = buf[need:]
        return status, buf[end + 4:need]


class TreeCpu:
    """CPU nanoseconds used so far by the daemon's threads and its slot sandboxes' cgroups."""

    def __init__(self, daemon_pid):
        self.pid = daemon_pid
        self.files = []
        inits = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == daemon_pid:
                            inits.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        mounts = {}
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fields, post = pre.split(), post.split()
                if post[0] == "cgroup2":
                    mounts["v2"] = fields[4]
                elif post[0] == "cgroup":
                    for opt in post[2].split(","):
                        mounts[opt] = fields[4]
        for pid in inits:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
            for line in lines:
                _, ctrls, path = line.split(":", 2)
                if "cpuacct" in ctrls.split(",") and "cpuacct" in mounts:
                    self.files.append(("ns", f"{mounts['cpuacct']}{path}/cpuacct.usage"))
                    break
                if ctrls == "" and "v2" in mounts and len(lines) == 1:
                    self.files.append(("v2", f"{mounts['v2']}{path}/cpu.stat"))
                    break
        self.sandboxes = len(self.files)
        self.read()  # fail early if anything is unreadable

    def read(self):
        ns = 0
        for t in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{t}/schedstat") as f:
                    ns += int(f.read().split()[0])
            except OSError:
                pass  # a thread that just ended
        for kind, path in self.files:
            with open(path) as f:
                data = f.read()
            if kind == "ns":
                ns += int(data)
            else:
                ns += 1000 * int(next(l.split()[1] for l in data.splitlines()
                                      if l.startswith("usage_usec ")))
        return ns


# ---------------------------------------------------------------------------------------------
# measurements


def execute_body(slot, eid):
    return {"slot_id": slot, "tool": "bash", "args": {"command": "true"}, "timeout": 30,
            "execution_id": eid}


def check_execute(status, r, eid, what):
    if status != 200 or not isinstance(r, dict) or r.get("success") is not True \
            or r.get("execution_id") != eid or r.get("output") != "" \
            or (r.get("metadata") or {}).get("exit_code") != 0:
        raise SystemExit(f"{what}: HTTP {status} {r!r}")


class Bench:
    def __init__(self, port, bwrap_argv, bwrap_net_argv, tree=None):
        self.tree = tree
        self.c_exec = Conn(port)
        self.c_batch = Conn(port)
        self.c_native = Conn(port)
        self.c_health = Conn(port)
        self.bwrap_argv = bwrap_argv
        self.bwrap_net_argv = bwrap_net_argv
        self.cpu = {}  # name -> list of client CPU seconds per sample (HTTP groups)
        self.work = {}  # name -> list of warren / child-tree CPU ms per sample

    def _work(self, name, ms):
        self.work.setdefault(name, []).append(ms)

    def _tree(self):
        return self.tree.read() if self.tree else 0

    def run(self, name):
        """One sample of group `name`; for the HTTP groups also the warren CPU it used."""
        if name in ("bwrap", "bwrap_net", "fork_exec", "bwrap4", "fork_exec4"):
            return getattr(self, name)()
        w0 = self._tree()
        ms = getattr(self, name)()
        if self.tree:
            self._work(name, (self._tree() - w0) / 1e6)
        return ms

    def execute(self):
        eid = str(uuid.uuid4())
        body = json.dumps(execute_body("slot_0", eid)).encode()
        c0, t0 = time.process_time(), time.perf_counter()
        status, raw = self.c_exec.call("POST", "/execute", body)
        ms = (time.perf_counter() - t0) * 1e3
        self.cpu.setdefault("execute", []).append(time.process_time() - c0)
        check_execute(status, json.loads(raw), eid, "POST /execute")
        return ms

    def native_exec(self):
        body = b'{"argv":["/bin/sh","-c","true"]}'
        c0, t0 = time.process_time(), time.perf_counter()
        status, raw = self.c_native.call("POST", "/v1/sandboxes/slot_1/exec", body)
        ms = (time.perf_counter() - t0) * 1e3
        self.cpu.setdefault("native_exec", []).append(time.process_time() - c0)
        r = json.loads(raw)
        if status != 200 or r.get("exit_code") != 0 or r.get("stdout") != "":
            raise SystemExit(f"POST /v1/sandboxes/slot_1/exec: HTTP {status} {raw!r}")
        return ms

    def _batch(self, n):
        eids = [str(uuid.uuid4()) for _ in range(n)]
        body = json.dumps([execute_body(f"slot_{i % NSLOTS}", e)
                           for i, e in enumerate(eids)]).encode()
        c0, t0 = time.process_time(), time.perf_counter()
        status, raw = self.c_batch.call("POST", "/batch", body)
        ms = (time.perf_counter() - t0) * 1e3
        self.cpu.setdefault(f"batch{n}", []).append(time.process_time() - c0)
        r = json.loads(raw)
        if status != 200 or not isinstance(r, list) or len(r) != n:
            raise SystemExit(f"POST /batch ({n} items): HTTP {status} {raw[:500]!r}")
        for item, eid in zip(r, eids):
            check_execute(200, item, eid, f"POST /batch ({n} items) item")
        return ms

    def batch4(self):
        return self._batch(4)

    def batch16(self):
        return self._batch(16)

    def health(self):
        c0, t0 = time.process_time(), time.perf_counter()
        status, raw = self.c_health.call("GET", "/health")
        ms = (time.perf_counter() - t0) * 1e3
        self.cpu.setdefault("health", []).append(time.process_time() - c0)
        if status != 200 or json.loads(raw).get("status") != "ok":
            raise SystemExit(f"GET /health: HTTP {status} {raw!r}")
        return ms

    def _spawn(self, argv, what, name):
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, os.environ)
        _, st, ru = os.wait4(pid, 0)
        ms = (time.perf_counter() - t0) * 1e3
        self._work(name, (ru.ru_utime + ru.ru_stime) * 1e3)
        if os.waitstatus_to_exitcode(st) != 0:
            raise SystemExit(f"{what}: exit status {os.waitstatus_to_exitcode(st)}: "
                             f"{' '.join(argv)}")
        return ms

    def _spawn_n(self, argv, what, name, n):
        t0 = time.perf_counter()
        pids = [os.posix_spawn(argv[0], argv, os.environ) for _ in range(n)]
        cpu, bad = 0.0, []
        for pid in pids:
            _, st, ru = os.wait4(pid, 0)
            cpu += ru.ru_utime + ru.ru_stime
            if os.waitstatus_to_exitcode(st) != 0:
                bad.append(os.waitstatus_to_exitcode(st))
        ms = (time.perf_counter() - t0) * 1e3
        if bad:
            raise SystemExit(f"{what}: exit statuses {bad}: {' '.join(argv)}")
        self._work(name, cpu * 1e3)
        return ms

    def bwrap4(self):
        return self._spawn_n(self.bwrap_argv, "bwrap x4", "bwrap4", 4)

    def fork_exec4(self):
        return self._spawn_n(["/bin/sh", "-c", "true"], "/bin/sh -c true x4", "fork_exec4", 4)

    def bwrap(self):
        return self._spawn(self.bwrap_argv, "bwrap", "bwrap")

    def bwrap_net(self):
        return self._spawn(self.bwrap_net_argv, "bwrap --share-net", "bwrap_net")

    def fork_exec(self):
        return self._spawn(["/bin/sh", "-c", "true"], "/bin/sh -c true", "fork_exec")


def bwrap_command(bwrap, workspace, share_net):
    """The atropos reference server's bwrap command line, adjusted for a merged /usr (where
    /bin, /lib and /lib64 are symlinks into /usr, bind them as the same symlinks)."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/lib", "/lib64"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d).lstrip("/"), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    argv += ["--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
             "--bind", workspace, "/workspace", "--chdir", "/workspace"]
    if share_net:
        argv += ["--share-net"]
    return argv + ["/bin/sh", "-c", "true"]


GROUPS = ("execute", "native_exec", "bwrap", "bwrap_net", "fork_exec", "batch4", "batch16",
          "bwrap4", "fork_exec4", "health")
ITEMS = {"execute": 1, "native_exec": 1, "batch4": 4, "batch16": 16, "bwrap": 1, "bwrap4": 4,
         "fork_exec": 1, "fork_exec4": 4}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--bwrap", default="/usr/bin/bwrap")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_atropos: the daemon needs root")
    build = os.environ.get("BUILD", "build")
    if not args.no_build:
        subprocess.run(["make", "--no-print-directory", "-C", ROOT, f"BUILD={build}", "all"],
                       check=True, stdout=sys.stderr)

    tmp = tempfile.mkdtemp(prefix="bench_atropos.")
    workspace = os.path.join(tmp, "workspace")
    os.mkdir(workspace)
    bw = bwrap_command(args.bwrap, workspace, False)
    bw_net = bwrap_command(args.bwrap, workspace, True)
    d = Daemon(build, log, extra_args=["--slots", str(NSLOTS)], ready_path="/health",
               ready=lambda status, body: status == 200 and json.loads(body).get("slots") == NSLOTS)
    samples = {g: [] for g in GROUPS}
    try:
        d.start()
        b = Bench(d.port, bw, bw_net, TreeCpu(d.proc.pid))
        if b.tree.sandboxes != NSLOTS:
            raise SystemExit(f"found {b.tree.sandboxes} slot sandbox cgroups, expected {NSLOTS}")
        if not args.json:
            print("daemon: " + " ".join(d.argv[1:]))
            print("bwrap command:     " + " ".join(bw))
            print("bwrap_net command: " + " ".join(bw_net))
            print(f"rounds: {args.rounds} (warm-up {args.warmup}), order shuffled per round")
            sys.stdout.flush()
        rng = random.Random(1)
        t_start = time.monotonic()
        for i in range(args.warmup + args.rounds):
            if i == args.warmup:
                b.cpu.clear()
                b.work.clear()
                t_start = time.monotonic()
            order = list(GROUPS)
            rng.shuffle(order)
            for g in order:
                ms = b.run(g)
                if i >= args.warmup:
                    samples[g].append(ms)
            if not args.json and i >= args.warmup and (i - args.warmup + 1) % 50 == 0:
                log(f"{i - args.warmup + 1}/{args.rounds} rounds "
                    f"({time.monotonic() - t_start:.1f} s)")
        elapsed = time.monotonic() - t_start
        cpu_us = {k: statistics.median(v) * 1e6 for k, v in b.cpu.items()}
        work_ms = {k: statistics.fmean(v) for k, v in b.work.items()}
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    res = {g: summary(v) for g, v in samples.items()}
    p50 = {g: s["p50"] for g, s in res.items()}
    throughput = {}
    for g, n in ITEMS.items():
        throughput[g] = {"items": n, "per_s_at_p50": n / p50[g] * 1e3,
                         "per_s_overall": n * len(samples[g]) / sum(samples[g]) * 1e3}
    ratios = {
        "bwrap/execute": p50["bwrap"] / p50["execute"],
        "bwrap_net/execute": p50["bwrap_net"] / p50["execute"],
        "execute/fork_exec": p50["execute"] / p50["fork_exec"],
        "execute/native_exec": p50["execute"] / p50["native_exec"],
        "bwrap/fork_exec": p50["bwrap"] / p50["fork_exec"],
        "health/execute": p50["health"] / p50["execute"],
        "batch4/execute": p50["batch4"] / p50["execute"],
        "batch16/batch4": p50["batch16"] / p50["batch4"],
        "bwrap4/batch4": p50["bwrap4"] / p50["batch4"],
        "batch4/fork_exec4": p50["batch4"] / p50["fork_exec4"],
        "fork_exec4/fork_exec": p50["fork_exec4"] / p50["fork_exec"],
    }
    out = {"kernel": os.uname().release, "ncpu": os.cpu_count(), "rounds": args.rounds,
           "warmup": args.warmup, "elapsed_s": elapsed, "daemon_argv": d.argv[1:],
           "bwrap_cmd": " ".join(bw), "bwrap_net_cmd": " ".join(bw_net),
           "results_ms": res, "throughput": throughput, "ratios_p50": ratios,
           "client_cpu_us_median": cpu_us, "server_cpu_ms_mean": work_ms}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"kernel {out['kernel']}, {out['ncpu']} CPUs, {elapsed:.1f} s measured\n")
    print(f"{'name (ms)':12s} {'n':>5s} {'min':>8s} {'p50':>8s} {'p90':>8s} {'p99':>8s} "
          f"{'max':>8s} {'cpu/req':>8s}")
    for g in GROUPS:
        s = res[g]
        print(f"{g:12s} {s['n']:5d} {s['min']:8.3f} {s['p50']:8.3f} {s['p90']:8.3f} "
              f"{s['p99']:8.3f} {s['max']:8.3f} {work_ms.get(g, 0):8.3f}")
    print("cpu/req: mean CPU ms per sample of warren (daemon threads + slot cgroups) for the "
          "HTTP groups,\n         of the reaped child tree (rusage) for the spawns")
    print("\nthroughput of `true` (items/s; at p50 = items / p50 time, overall = all items "
          "/ all time in that group)")
    for g, t in throughput.items():
        print(f"  {g:12s} {t['items']:3d} item(s)/request  {t['per_s_at_p50']:8.1f} at p50  "
              f"{t['per_s_overall']:8.1f} overall")
    print("\nratios of p50:")
    for k, v in ratios.items():
        extra = "   (target >= 3)" if k == "bwrap/execute" else ""
        print(f"  {k:20s} {v:7.3f}{extra}")
    print("\nclient CPU per request (median, us): " +
          ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu_us.items())))


if __name__ == "__main__":
    main()
