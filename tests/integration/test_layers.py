"""tests/check_layers.py: the real tree follows DESIGN.md §3, and the checker does catch each
kind of forbidden include (so its silence means something)."""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = os.path.join(REPO, "tests", "check_layers.py")


def check(src):
    return subprocess.run(["/usr/bin/python3", CHECK, src], capture_output=True, text=True)


def test_the_tree_follows_the_arrows():
    p = check(os.path.join(REPO, "src"))
    assert p.returncode == 0, p.stdout


def test_each_forbidden_arrow_is_caught(tmp_path):
    cases = {
        "api/x.c": "sandbox/egress.h",       # an adapter into the engine
        "api/y.c": "server.h",               # back up to the wiring
        "atropos/z.c": "store/store.h",      # an adapter into the store
        "sandbox/a.c": "session/sandbox.h",  # the engine up into the session layer
        "core/b.c": "net/http.h",            # core knows nothing of ours
        "store/c.c": "session/audit.h",      # the store up into the session layer
        "cli/d.c": "session/sandbox.h",      # the client into server code
        "sandbox/init.c": "core/util.h",     # the init: libc and proto.h only
    }
    for rel, inc in cases.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#include "{inc}"\n#include "core/buf.h"\n')
    (tmp_path / "session").mkdir()
    (tmp_path / "session" / "ok.c").write_text('#include "sandbox/spawn.h"\n#include "store/store.h"\n')
    p = check(str(tmp_path))
    assert p.returncode == 1
    flagged = {line.split(":")[0] for line in p.stdout.splitlines()}
    assert flagged == {f"src/{rel}" for rel in cases}, p.stdout
