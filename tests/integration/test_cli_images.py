"""The image commands of the `warren` CLI (issue 10): pull (plain, --json, the progress bar on a
terminal), images, rmi (refused while in use), import of a docker-archive made by skopeo (from a
file and from stdin), export (an oci-archive skopeo reads; written atomically), snapshot then
create --template, fork, exec/run --user, and run --image without a command (the image's Cmd).

Against a real daemon and the loopback registry of registry.py; the CLI runs as a subprocess
with WARREN_URL pointing at the daemon.
"""

import json
import os
import pty
import subprocess
import threading

import pytest

from conftest import Daemon, exec_, sh, wait_for
from registry import SKOPEO, registry_args, tpl_path
from registry import images, registry, registry_workdir  # noqa: F401 fixtures

CLI_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def daemon(registry):
    d = Daemon(extra_args=registry_args(registry))
    d.start()
    yield d
    d.stop()


def cli(daemon, *args, input=None, stdin=None, stdout=None, timeout=CLI_TIMEOUT_S):
    """Run `warren ARGS...`; the CompletedProcess (text)."""
    kw = {"input": input} if input is not None else {"stdin": stdin or subprocess.DEVNULL}
    return subprocess.run([daemon.bin, *args], env={**os.environ, "WARREN_URL": daemon.url},
                          stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, **kw)


def ok(p):
    assert p.returncode == 0, describe(p)
    return p.stdout


def describe(p):
    return f"rc={p.returncode} stdout={str(p.stdout)[:2000]!r} stderr={p.stderr[:2000]!r}"


def cli_on_tty(daemon, *args, stdout_tty=False):
    """Run `warren ARGS...` with stderr (and stdout if asked) on a pseudo-terminal; returns
    (rc, stdout text, what the terminal got)."""
    master, slave = pty.openpty()
    got = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last holder of the slave closed it
                return
            if not data:
                return
            got.append(data)

    t = threading.Thread(target=drain)
    t.start()
    try:
        p = subprocess.run([daemon.bin, *args], env={**os.environ, "WARREN_URL": daemon.url},
                           stdin=subprocess.DEVNULL,
                           stdout=slave if stdout_tty else subprocess.PIPE, stderr=slave,
                           timeout=CLI_TIMEOUT_S)
    finally:
        os.close(slave)
        t.join(timeout=30)
        os.close(master)
    return p.returncode, (p.stdout or b"").decode(), b"".join(got).decode(errors="replace")


def template_names(api):
    r = api.get("/v1/templates")
    assert r.status == 200, r
    return {t["name"] for t in r.json["templates"]}


# ---------------------------------------------------------------------------------------------
# pull, images, rmi


def test_pull_images_rmi(daemon, api, registry, images, new_sandbox):
    img = images.get("busybox")
    ref = images.ref(registry, "busybox")
    # The implicit template, named by the reference (slashes and all).
    assert ok(cli(daemon, "pull", ref)) == f"{ref} {img.digest}\n"
    t = json.loads(ok(cli(daemon, "pull", "--json", "--name", "cli-bb", ref)))
    assert t["name"] == "cli-bb" and t["state"] == "ready" and t["digest"] == img.digest, t
    assert t["config"]["cmd"] == ["sh", "-c", "echo hello-from-cmd"], t

    table = ok(cli(daemon, "images")).splitlines()
    assert table[0].split() == ["NAME", "IMAGE", "STATE", "SIZE", "DIGEST"], table
    row = next(line.split() for line in table if line.startswith("cli-bb "))
    assert row[1] == ref and row[2] == "ready" and row[-1] == img.digest[:19], row
    assert {"host", "cli-bb", ref} <= set(ok(cli(daemon, "images", "-q")).split())
    listed = json.loads(ok(cli(daemon, "images", "--json")))
    assert any(x["name"] == "cli-bb" for x in listed), listed

    # In use by a sandbox (whatever its state): refused, with a message naming the sandbox.
    sb = new_sandbox(template="cli-bb")
    p = cli(daemon, "rmi", "cli-bb")
    assert p.returncode != 0 and p.stdout == "", describe(p)
    assert "cli-bb" in p.stderr and sb["id"] in p.stderr, describe(p)
    assert "cli-bb" in template_names(api)
    api.remove(sb["id"])
    assert ok(cli(daemon, "rmi", "cli-bb", ref)) == f"cli-bb\n{ref}\n"
    assert not {"cli-bb", ref} & template_names(api)
    # Unknown: non-zero, named.
    p = cli(daemon, "rmi", "no-such-template")
    assert p.returncode == 1 and "no-such-template" in p.stderr, describe(p)


def test_pull_errors(daemon, registry):
    p = cli(daemon, "pull", f"{registry.host}/test/no-such-image:1")
    assert p.returncode == 1 and "not" in p.stderr.lower() and p.stdout == "", describe(p)
    p = cli(daemon, "pull")
    assert p.returncode == 2 and "missing the image reference" in p.stderr, describe(p)


def test_pull_progress_on_a_terminal(daemon, api, registry, images):
    """A big image (50 MiB of random bytes): the bar on the terminal ends at 100% of its size,
    stdout gets only the result."""
    ref = images.ref(registry, "big")
    rc, out, tty = cli_on_tty(daemon, "pull", "--name", "cli-big", ref)
    assert rc == 0, (out, tty)
    assert out.startswith("cli-big sha256:"), (out, tty)
    last = tty.replace("\r\n", "\n").split("\r")[-1]
    assert last.startswith("cli-big") and "100%" in last and "MiB" in last, repr(tty[-500:])
    # --quiet: nothing on the terminal.
    rc, out, tty = cli_on_tty(daemon, "pull", "-q", "--name", "cli-big-q", ref)
    assert rc == 0 and tty == "" and out.startswith("cli-big-q sha256:"), (out, tty)
    for n in ("cli-big", "cli-big-q"):
        assert api.delete(tpl_path(n)).status == 204


# ---------------------------------------------------------------------------------------------
# import, export


@pytest.fixture
def docker_archive(images, tmp_path):
    """The busybox test image as `docker save` makes it (skopeo's docker-archive)."""
    p = tmp_path / "busybox-docker.tar"
    r = subprocess.run([SKOPEO, "copy", "--quiet", images.get("busybox").oci_ref,
                        f"docker-archive:{p}:test/busybox:1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return p


def test_import_file_and_stdin(daemon, api, docker_archive, new_sandbox):
    out = ok(cli(daemon, "import", "cli-imp", str(docker_archive)))
    name, digest = out.split()
    assert name == "cli-imp" and digest.startswith("sha256:"), out
    t = api.get(tpl_path("cli-imp")).json
    assert t["state"] == "ready" and t["digest"] == digest, t
    sb = new_sandbox(template="cli-imp")
    assert exec_(api, sb["id"], argv=["cat", "/srv/image-file"])["stdout"] == "from-the-image\n"
    api.remove(sb["id"])

    # From a pipe (no length: chunked), with --json.
    cat = subprocess.Popen(["cat", str(docker_archive)], stdout=subprocess.PIPE)
    p = cli(daemon, "import", "--json", "cli-imp-stdin", "-", stdin=cat.stdout)
    cat.stdout.close()
    cat.wait()
    t2 = json.loads(ok(p))
    assert t2["name"] == "cli-imp-stdin" and t2["state"] == "ready", t2
    assert t2["digest"] == digest  # the same archive makes the same image

    # A name that exists: refused, nothing replaced.
    p = cli(daemon, "import", "cli-imp", str(docker_archive))
    assert p.returncode == 1 and "cli-imp" in p.stderr, describe(p)
    assert api.get(tpl_path("cli-imp")).json["digest"] == digest
    for n in ("cli-imp", "cli-imp-stdin"):
        assert api.delete(tpl_path(n)).status == 204


def test_import_errors(daemon, api, tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not an archive at all" * 100)
    p = cli(daemon, "import", "cli-garbage", str(garbage))
    assert p.returncode == 1 and p.stdout == "" and p.stderr.startswith("warren: "), describe(p)
    assert api.get(tpl_path("cli-garbage")).status == 404
    p = cli(daemon, "import", "cli-missing", str(tmp_path / "missing.tar"))
    assert p.returncode == 1 and "missing.tar" in p.stderr, describe(p)
    assert api.get(tpl_path("cli-missing")).status == 404
    p = cli(daemon, "import", "only-a-name")
    assert p.returncode == 2, describe(p)


def test_export(daemon, api, registry, images, tmp_path):
    img = images.get("busybox")
    ref = images.ref(registry, "busybox")
    ok(cli(daemon, "pull", "--name", "cli-exp", ref))
    out = tmp_path / "out" / "busybox.tar"
    out.parent.mkdir()
    assert ok(cli(daemon, "export", "-o", str(out), "cli-exp")) == ""
    assert os.listdir(out.parent) == ["busybox.tar"]  # the temporary file is gone
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
    r = subprocess.run([SKOPEO, "inspect", f"oci-archive:{out}"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["Digest"] == img.digest and info["Layers"] == img.layer_digests, info

    # To stdout when it is not a terminal: the same bytes.
    with open(tmp_path / "stdout.tar", "wb") as f:
        p = cli(daemon, "export", "cli-exp", stdout=f)
    assert p.returncode == 0, describe(p)
    assert (tmp_path / "stdout.tar").read_bytes() == out.read_bytes()

    # Over an existing file: replaced whole.
    out.write_bytes(b"old")
    ok(cli(daemon, "export", "-q", "--output", str(out), "cli-exp"))
    assert out.read_bytes() == (tmp_path / "stdout.tar").read_bytes()

    # Unknown template: nothing is made; the old file stays.
    p = cli(daemon, "export", "-o", str(tmp_path / "out" / "none.tar"), "no-such-template")
    assert p.returncode == 1 and "no-such-template" in p.stderr, describe(p)
    assert os.listdir(out.parent) == ["busybox.tar"]
    # host is not an image.
    p = cli(daemon, "export", "-o", str(tmp_path / "out" / "host.tar"), "host")
    assert p.returncode == 1 and "host" in p.stderr, describe(p)
    assert os.listdir(out.parent) == ["busybox.tar"]
    assert api.delete(tpl_path("cli-exp")).status == 204


def current_umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_export_refuses_a_terminal(daemon):
    rc, out, tty = cli_on_tty(daemon, "export", "host", stdout_tty=True)
    assert rc == 2 and "-o FILE" in tty, (rc, tty)


# ---------------------------------------------------------------------------------------------
# snapshot, fork


def test_snapshot_then_create_from_it(daemon, api, registry, images, new_sandbox):
    ref = images.ref(registry, "busybox")
    sb = new_sandbox(image=ref, name="cli-snap-src")
    assert sh(api, sb["id"], "echo made-before > /workspace/note; echo x > /etc/added")[
        "exit_code"] == 0
    out = ok(cli(daemon, "snapshot", "cli-snap-src", "cli-snap"))
    name, digest = out.split()
    assert name == "cli-snap" and digest.startswith("sha256:"), out
    t = json.loads(ok(cli(daemon, "snapshot", "--json", sb["id"], "cli-snap-2")))
    assert t["name"] == "cli-snap-2" and t["state"] == "ready", t
    # The source goes on running.
    assert exec_(api, sb["id"], argv=["cat", "/workspace/note"])["stdout"] == "made-before\n"

    sid = ok(cli(daemon, "create", "--template", "cli-snap")).strip()
    try:
        r = sh(api, sid, "cat /workspace/note /etc/added /srv/image-file")
        assert r["stdout"] == "made-before\nx\nfrom-the-image\n", r
        assert api.get(f"/v1/sandboxes/{sid}").json["template"] == "cli-snap"
    finally:
        api.remove(sid)
    p = cli(daemon, "snapshot", sb["id"], "cli-snap")  # the name is taken
    assert p.returncode == 1 and "cli-snap" in p.stderr, describe(p)
    p = cli(daemon, "snapshot", sb["id"])
    assert p.returncode == 2, describe(p)
    for n in ("cli-snap", "cli-snap-2"):
        assert api.delete(tpl_path(n)).status == 204


def test_snapshot_of_a_host_sandbox_is_refused(daemon, sandbox):
    p = cli(daemon, "snapshot", sandbox["id"], "cli-snap-host")
    assert p.returncode == 1 and p.stdout == "" and "host" in p.stderr, describe(p)


def test_fork(daemon, api, registry, images, new_sandbox):
    ref = images.ref(registry, "busybox")
    sb = new_sandbox(image=ref, labels={"team": "cli"}, env={"GREETING": "hi"})
    assert sh(api, sb["id"], "echo forked-state > /workspace/state")["exit_code"] == 0
    fid = ok(cli(daemon, "fork", "--name", "cli-forked", sb["id"])).strip()
    f = api.get(f"/v1/sandboxes/{fid}").json
    try:
        assert fid != sb["id"] and f["name"] == "cli-forked" and f["state"] == "running", f
        assert f["labels"] == {"team": "cli"}, f
        r = sh(api, fid, "cat /workspace/state; echo $GREETING")
        assert r["stdout"] == "forked-state\nhi\n", r
        # The two are apart from now on.
        sh(api, fid, "echo changed > /workspace/state")
        assert exec_(api, sb["id"], argv=["cat", "/workspace/state"])["stdout"] == \
            "forked-state\n"
        # --json: the new sandbox.
        f2 = json.loads(ok(cli(daemon, "fork", "--json", sb["id"])))
        api.remove(f2["id"])
        assert api.delete(tpl_path(f2["template"])).status == 204
    finally:
        api.remove(fid)
    assert api.delete(tpl_path(f["template"])).status == 204
    p = cli(daemon, "fork", "no-such-sandbox")
    assert p.returncode == 1 and "no-such-sandbox" in p.stderr, describe(p)


# ---------------------------------------------------------------------------------------------
# exec --user, run --user, run --image without a command


def test_exec_and_run_user(daemon, api, registry, images, new_sandbox):
    ref = images.ref(registry, "busybox")
    sb = new_sandbox(image=ref)
    sid = sb["id"]
    assert ok(cli(daemon, "exec", sid, "--", "id", "-u")) == "0\n"
    assert ok(cli(daemon, "exec", "--user", "app", sid, "--", "id", "-un")) == "app\n"
    assert ok(cli(daemon, "exec", "-u", "1000:1000", sid, "id", "-u")) == "1000\n"
    res = json.loads(ok(cli(daemon, "exec", "--json", "-u", "nobody", sid, "id", "-u")))
    assert res["stdout"] == "65534\n", res
    # start (a detached command) takes it too.
    cid = ok(cli(daemon, "start", "-u", "app", sid, "--", "sh", "-c", "id -un > /tmp/who")).strip()
    assert cid
    wait_for(lambda: sh(api, sid, "cat /tmp/who 2>/dev/null")["stdout"] == "app\n",
             what="the detached command's output")
    p = cli(daemon, "exec", "--user", "no-such-user", sid, "true")
    assert p.returncode == 125 and "no-such-user" in p.stderr, describe(p)
    p = cli(daemon, "exec", "-t", "--user", "app", sid, "true")
    assert p.returncode == 2 and "--user" in p.stderr, describe(p)

    assert ok(cli(daemon, "run", "--image", ref, "--user", "app", "--", "id", "-un")) == "app\n"


def test_run_image_without_command_runs_its_cmd(daemon, api, registry, images):
    ref = images.ref(registry, "busybox")
    before = {s["id"] for s in api.get("/v1/sandboxes").json["sandboxes"]}
    assert ok(cli(daemon, "run", "--image", ref)) == "hello-from-cmd\n"
    assert {s["id"] for s in api.get("/v1/sandboxes").json["sandboxes"]} == before
    # A command given replaces it.
    assert ok(cli(daemon, "run", "--image", ref, "--", "echo", "mine")) == "mine\n"
