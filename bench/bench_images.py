#!/usr/bin/python3
"""bench_images — OCI images in warren (issue 10), each figure next to its floor, same run.

Against a loopback docker-registry (tests/integration/registry.py: the same registry and images
the integration tests use) and throw-away `warren serve` daemons this script starts itself:

  pull        pull + unpack of a ~200 MB image (debootstrap'd Debian bookworm minbase plus one
              layer of random bytes, so that it cannot compress) through the daemon:
              POST /v1/templates {"name","image"} then GET until `ready`, a fresh daemon with
              a fresh state dir every round (not timed: its start and stop)
  skopeo_umoci  the same image by the reference tools: `skopeo copy docker://REF oci:DIR:1`
              then `umoci unpack --image DIR:1 BUNDLE` (into a fresh dir every round)
  create_image  POST /v1/sandboxes {"template": T} (T pulled beforehand) + the first exec of
              `true`, until its answer (the delete that follows is not timed)
  create_host   the same with no template: the built-in `host` (goal: image <= 1.2x host, p50)
  disk        N sandboxes (100; --quick 10) of one image each writing 1 MiB: growth of the host
              disk per sandbox beyond what it wrote, as the state dir's `du` and as the host
              file system's used blocks (statvfs); goal <= 1 MiB per sandbox. statvfs sees
              everything else writing to that file system too (on a shared machine, megabytes
              a second): its growth over two idle windows (BG_WINDOW_S, with the daemon and
              its sandboxes idle, before and after the sandboxes are made) is reported as the
              background rate and subtracted in `statvfs_net_per_sandbox`.

pull vs skopeo_umoci and create_image vs create_host are interleaved in a per-round shuffled
order (fixed seed): compare the ratios of medians, not absolute numbers across runs.

Usage (as root):
    /usr/bin/python3 bench/bench_images.py [--bin build/warren] [--rounds N] [--quick]
                                           [--json] [--only pull,create,disk]
--quick: 2 pull rounds of a 60 MB image (busybox + 50 MiB random), 10 create rounds, 10
sandboxes. KEEP_LOG=1 keeps the daemon logs.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from stats import summary  # noqa: E402
from warren_daemon import Daemon  # noqa: E402

import registry as reg  # noqa: E402  (tests/integration/registry.py)

MIB = 1 << 20


def log(msg):
    print(f"bench_images: {msg}", file=sys.stderr, flush=True)


def call(port, method, path, body=None, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, body=data,
                  headers={"Content-Type": "application/json"} if data else {})
        r = c.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)
    finally:
        c.close()


def must(status, body, want, what):
    if status != want:
        raise SystemExit(f"{what}: HTTP {status} {body!r}")
    return body


class Warren(Daemon):
    def __init__(self, args, registry):
        super().__init__(args.build, log, extra_args=["--insecure-registry", registry.host])
        if args.bin:
            self.bin = os.path.abspath(args.bin)
            self.argv[0] = self.bin


def pull_template(port, name, ref, timeout=1800):
    must(*call(port, "POST", "/v1/templates", {"name": name, "image": ref}), 202,
         f"POST /v1/templates {ref}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st, t = call(port, "GET", reg.tpl_path(name))
        must(st, t, 200, f"GET template {name}")
        if t["state"] == "ready":
            return t
        if t["state"] != "pulling":
            raise SystemExit(f"template {name}: {t!r}")
        time.sleep(0.02)
    raise SystemExit(f"template {name} not ready within {timeout} s")


def create_exec(port, spec):
    """-> (ms to the answer of the first exec, sandbox id)."""
    t0 = time.monotonic()
    sb = must(*call(port, "POST", "/v1/sandboxes", spec), 201, f"create {spec!r}")
    r = must(*call(port, "POST", f"/v1/sandboxes/{sb['id']}/exec", {"argv": ["true"]}), 200,
             "first exec")
    ms = (time.monotonic() - t0) * 1000
    if r.get("exit_code") != 0:
        raise SystemExit(f"first exec: {r!r}")
    return ms, sb["id"]


def delete(port, sid):
    must(*call(port, "DELETE", f"/v1/sandboxes/{sid}"), 204, f"delete {sid}")


# ---------------------------------------------------------------------------------------------


def bench_pull(args, registry, images, workdir, rng):
    name = "big" if args.quick else "bench-debian"
    img = images.get(name)
    ref = images.ref(registry, name)
    size = sum(l.size for l in img.layers)
    log(f"pull: {ref} ({size / MIB:.0f} MiB in {len(img.layers)} layers), {args.pull_rounds} "
        "rounds")
    samples = {"pull": [], "skopeo_umoci": []}

    def warren_pull():
        d = Warren(args, registry)
        try:
            d.start()
            t0 = time.monotonic()
            pull_template(d.port, "bench", ref)
            return (time.monotonic() - t0) * 1000
        finally:
            d.stop()

    def skopeo_umoci():
        tmp = tempfile.mkdtemp(prefix="bench-images-", dir=workdir)
        try:
            t0 = time.monotonic()
            subprocess.run([reg.SKOPEO, "copy", "--quiet", "--src-tls-verify=false",
                            f"docker://{ref}", f"oci:{tmp}/oci:1"], check=True)
            subprocess.run(["umoci", "unpack", "--image", f"{tmp}/oci:1", f"{tmp}/bundle"],
                           check=True, stdout=subprocess.DEVNULL)
            return (time.monotonic() - t0) * 1000
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    groups = {"pull": warren_pull, "skopeo_umoci": skopeo_umoci}
    for i in range(args.pull_rounds):
        order = list(groups)
        rng.shuffle(order)
        for g in order:
            subprocess.run(["sync"])
            samples[g].append(groups[g]())
        log(f"pull round {i + 1}: " + ", ".join(f"{g} {samples[g][-1]:.0f} ms" for g in order))
    return samples, {"image_bytes": size}


def bench_create(args, registry, images, rng):
    ref = images.ref(registry, "busybox")
    d = Warren(args, registry)
    samples = {"create_image": [], "create_host": []}
    try:
        d.start()
        pull_template(d.port, "bench-busybox", ref)
        specs = {"create_image": {"template": "bench-busybox"}, "create_host": {}}
        for i in range(args.warmup + args.create_rounds):
            order = list(specs)
            rng.shuffle(order)
            for g in order:
                ms, sid = create_exec(d.port, specs[g])
                delete(d.port, sid)
                if i >= args.warmup:
                    samples[g].append(ms)
    finally:
        d.stop()
    return samples


def du_bytes(path):
    out = subprocess.run(["du", "-sx", "--block-size=1", path], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True).stdout
    return int(out.split()[0]) if out else 0


def used_bytes(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def background_rate(path, seconds):
    """Bytes a second the file system of `path` grows by while warren does nothing."""
    subprocess.run(["sync"])
    u0, t0 = used_bytes(path), time.monotonic()
    time.sleep(seconds)  # an idle window is what is measured here
    subprocess.run(["sync"])
    return (used_bytes(path) - u0) / (time.monotonic() - t0)


def bench_disk(args, registry, images):
    name = "busybox" if args.quick else "debian"
    ref = images.ref(registry, name)
    d = Warren(args, registry)
    ids = []
    try:
        d.start()
        pull_template(d.port, "bench-disk", ref)
        bg = [background_rate(d.state, args.bg_window_s)]
        subprocess.run(["sync"])
        du0, used0, t0 = du_bytes(d.state), used_bytes(d.state), time.monotonic()
        for _ in range(args.sandboxes):
            sb = must(*call(d.port, "POST", "/v1/sandboxes", {
                "template": "bench-disk", "resources": {"disk_mib": 256, "memory_mib": 64}}),
                201, "create")
            ids.append(sb["id"])
            r = must(*call(d.port, "POST", f"/v1/sandboxes/{sb['id']}/exec", {
                "argv": ["sh", "-c", "head -c 1048576 /dev/urandom > /workspace/w && sync"]}),
                200, "write 1 MiB")
            if r["exit_code"] != 0:
                raise SystemExit(f"write: {r!r}")
        subprocess.run(["sync"])
        du1, used1, t1 = du_bytes(d.state), used_bytes(d.state), time.monotonic()
        bg.append(background_rate(d.state, args.bg_window_s))
    finally:
        for sid in ids:
            delete(d.port, sid)
        d.stop()
    n = len(ids)
    rate = sum(bg) / len(bg)
    # Others deleting files, or writing in bursts, make a background that two windows do not
    # agree on: then no net figure is given rather than a wrong one.
    steady = min(bg) >= 0 and max(bg) <= 2 * max(min(bg), MIB / 10)
    return {"sandboxes": n, "image": name, "written_per_sandbox": MIB,
            "du_per_sandbox": (du1 - du0) / n - MIB,
            "statvfs_per_sandbox": (used1 - used0) / n - MIB,
            "background_bytes_per_s": bg, "seconds": t1 - t0,
            "statvfs_net_per_sandbox":
                (used1 - used0 - rate * (t1 - t0)) / n - MIB if steady else None,
            "goal_per_sandbox": MIB}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", help="the warren binary (default BUILD/warren)")
    ap.add_argument("--rounds", type=int, help="pull rounds (create rounds are 10x)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", default="pull,create,disk")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_images: the daemon needs root")
    args.build = os.environ.get("BUILD", "build")
    args.pull_rounds = args.rounds or (2 if args.quick else 5)
    args.create_rounds = 10 * args.pull_rounds if args.rounds else (10 if args.quick else 50)
    args.warmup = 2
    args.sandboxes = 10 if args.quick else 100
    args.bg_window_s = float(os.environ.get("BG_WINDOW_S", 5 if args.quick else 20))
    only = set(args.only.split(","))
    rng = random.Random(20261208)

    workdir = tempfile.mkdtemp(prefix="bench-images-")
    registry = reg.Registry(workdir, name="plain").start()
    images = reg.Images(workdir)
    result = {"groups": {}}
    try:
        samples = {}
        if "pull" in only:
            s, info = bench_pull(args, registry, images, workdir, rng)
            samples.update(s)
            result.update(info)
        if "create" in only:
            samples.update(bench_create(args, registry, images, rng))
        if "disk" in only:
            result["disk"] = bench_disk(args, registry, images)
    finally:
        registry.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for g, v in samples.items():
        result["groups"][g] = summary(v)
    ratios = {}
    gr = result["groups"]
    if "pull" in gr:
        ratios["pull / skopeo_umoci (p50)"] = gr["pull"]["p50"] / gr["skopeo_umoci"]["p50"]
    if "create_image" in gr:
        ratios["create_image / create_host (p50, goal <= 1.2)"] = \
            gr["create_image"]["p50"] / gr["create_host"]["p50"]
    result["ratios"] = ratios
    if args.json:
        print(json.dumps(result, indent=1))
        return
    if gr:
        print(f"{'group':<14} {'n':>4} {'min':>9} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}"
              "  (ms)")
    for g, s in gr.items():
        print(f"{g:<14} {s['n']:>4} {s['min']:>9.1f} {s['p50']:>9.1f} {s['p90']:>9.1f} "
              f"{s['p99']:>9.1f} {s['max']:>9.1f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    if "disk" in result:
        dk = result["disk"]
        print(f"disk: {dk['sandboxes']} sandboxes of {dk['image']}, 1 MiB written each; growth "
              f"beyond that per sandbox: du {dk['du_per_sandbox'] / MIB:.2f} MiB, statvfs "
              f"{dk['statvfs_per_sandbox'] / MIB:.2f} MiB, statvfs less the background "
              + (f"{dk['statvfs_net_per_sandbox'] / MIB:.2f} MiB"
                 if dk["statvfs_net_per_sandbox"] is not None else "- (not steady)")
              + " (goal <= 1 MiB); background "
              + ", ".join(f"{b / MIB:.2f}" for b in dk["background_bytes_per_s"])
              + f" MiB/s, {dk['seconds']:.1f} s of creates")


if __name__ == "__main__":
    main()
