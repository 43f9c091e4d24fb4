"""Secrets: --secrets-dir, available inside as env vars and /run/secrets/NAME, never leaked."""
import glob
import os
import shutil
import subprocess
import tempfile

from conftest import Api, Daemon, exec_

VALUE = "s3cr3t-" + os.urandom(8).hex()


def _secrets_dir(mode=0o700, file_mode=0o600):
    d = tempfile.mkdtemp(prefix="warren-secrets-")
    os.chmod(d, mode)
    with open(os.path.join(d, "API_KEY"), "w") as f:
        f.write(VALUE + "\n")
    os.chmod(os.path.join(d, "API_KEY"), file_mode)
    with open(os.path.join(d, "OTHER"), "w") as f:
        f.write("other-value")
    os.chmod(os.path.join(d, "OTHER"), 0o400)
    return d


def test_secrets_inside_and_never_leaked():
    sdir = _secrets_dir()
    d = Daemon(extra_args=["--secrets-dir", sdir])
    d.start()
    try:
        api = Api(d)
        r = api.post("/v1/sandboxes", {"name": "sec", "secrets": ["API_KEY"]})
        assert r.status == 201 and r.json["secrets"] == ["API_KEY"]
        out = exec_(api, "sec", argv=["sh", "-c",
                                      'printf "%s|" "$API_KEY" "$OTHER"; cat /run/secrets/API_KEY;'
                                      ' stat -c "%a %U" /run/secrets/API_KEY'])
        assert out["stdout"] == f"{VALUE}||{VALUE}400 root\n", out
        # Not requested, not there.
        assert exec_(api, "sec", argv=["ls", "/run/secrets"])["stdout"] == "API_KEY\n"
        # Unknown secret: 422 naming it; bad type: 400.
        r = api.post("/v1/sandboxes", {"secrets": ["NOPE"]})
        assert r.status == 422 and "NOPE" in r.json["error"]["message"]
        assert api.post("/v1/sandboxes", {"secrets": "API_KEY"}).status == 400
        # The value never appears in API answers about the sandbox, the registry or the log.
        for path in ("/v1/sandboxes", "/v1/sandboxes/sec", "/v1/info"):
            assert VALUE not in api.get(path).body.decode()
        api.remove("sec")
        # Nor in the registry (SQLite + WAL) or the daemon's log.
        # (Not the sandboxes' own disks, which the background may be deleting: what a sandbox
        # writes there is its own business.) The audit log is among these files.
        # (Nor mnt.ns: the daemon's mount namespace pinned there is not a file to read.)
        files = [f for f in glob.glob(os.path.join(d.base_dir, "**", "*"), recursive=True)
                 if os.path.isfile(f) and "/sandboxes/" not in f and "/disks/" not in f
                 and not f.endswith("/mnt.ns")]
        assert any("/audit/audit.log" in f for f in files), files
        assert any(f.endswith("warren.db") for f in files) and d.log_path in files
        for f in files:
            with open(f, "rb") as fh:
                assert VALUE.encode() not in fh.read(), f"secret value found in {f}"
    finally:
        d.stop()
        shutil.rmtree(sdir, ignore_errors=True)


def test_world_readable_secrets_are_refused(daemon):
    for mode, file_mode in ((0o755, 0o600), (0o700, 0o644)):
        sdir = _secrets_dir(mode, file_mode)
        state = tempfile.mkdtemp(prefix="warren-state-")
        try:
            p = subprocess.run([daemon.bin, "serve", "--listen", "127.0.0.1:0", "--state-dir",
                                state, "--secrets-dir", sdir], capture_output=True, timeout=20)
            assert p.returncode != 0
            assert b"secret" in p.stderr.lower() and VALUE.encode() not in p.stderr
        finally:
            shutil.rmtree(sdir, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
