#!/usr/bin/python3
"""The layering of src/ (DESIGN.md §3), checked: every `#include "dir/file.h"` of a file under
src/ (or of the tree given as the argument) must be one of the arrows its folder is allowed. Prints each forbidden include with the
rule it breaks and exits 1; exits 0 when the house is in order. Run by `make test`.

Arrows (A → B: A may include B); every folder may include its own headers and core/:
  api/, atropos/, mcp/  → session/, net/           (adapters: never the engine or the store)
  session/              → sandbox/, image/, store/
  image/                → sandbox/                 (mounting helpers)
  net/, sandbox/, store/, core/ → nothing else of ours
  cli/                  → nothing else of ours     (its own client; never server code)
  main.c, server.c      → anything                 (wiring)
  sandbox/init.c        → sandbox/proto.h only     (PID 1 of every sandbox: libc and the protocol)
"""

import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

ALLOWED = {
    "api": {"session", "net"},
    "atropos": {"session", "net"},
    "mcp": {"session", "net"},
    "session": {"sandbox", "image", "store"},
    "image": {"sandbox"},
    "net": set(),
    "sandbox": set(),
    "store": set(),
    "core": set(),
    "cli": set(),
}
WIRING = {"main.c", "server.c", "server.h"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def violations(src=SRC):
    for dirpath, _, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith((".c", ".h")):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, src)
            parts = rel.split(os.sep)
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            for inc in INCLUDE.findall(text):
                target = inc.split("/")[0] if "/" in inc else inc
                if len(parts) == 1:
                    if rel in WIRING:
                        continue
                    yield rel, inc, "only main.c and server.c live at the top of src/"
                    continue
                folder = parts[0]
                if rel == os.path.join("sandbox", "init.c"):
                    if inc != "sandbox/proto.h":
                        yield rel, inc, "the init includes libc and sandbox/proto.h only"
                    continue
                if folder not in ALLOWED:
                    yield rel, inc, f"src/{folder}/ is not a layer of DESIGN.md §3"
                    continue
                if "/" not in inc:
                    yield rel, inc, "includes name their folder (\"core/buf.h\")"
                    continue
                if target in (folder, "core"):
                    continue
                if target not in ALLOWED[folder]:
                    yield rel, inc, f"{folder}/ may include only " + (
                        ", ".join(sorted(ALLOWED[folder] | {folder, "core"})))


def main():
    bad = list(violations(sys.argv[1] if len(sys.argv) > 1 else SRC))
    for rel, inc, why in bad:
        print(f"src/{rel}: #include \"{inc}\": {why}")
    if bad:
        print(f"{len(bad)} forbidden include(s)", file=sys.stderr)
        return 1
    print("layers: every include follows the arrows of DESIGN.md §3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
