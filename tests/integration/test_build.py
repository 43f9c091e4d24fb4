"""Builds (issue 10): `POST /v1/templates/build?name=N` with a tar of the build context ->
201 template + steps + log; cached steps on a rebuild; a changed COPY source invalidates its step
and the ones after; a failing RUN -> 422 build_failed; an unsupported instruction -> 400; and the
`warren build` CLI.
"""

import io
import os
import subprocess
import tarfile
import time

import pytest

from conftest import WARREN_BIN, Daemon, sh
from registry import registry_args
from registry import images, registry, registry_workdir  # noqa: F401 fixtures

DOCKERFILE = """\
# the test image
ARG GREETING=hello
FROM {ref}
ARG GREETING
ENV APP_HOME=/opt/app MODE=test
WORKDIR $APP_HOME
COPY conf.txt ./conf.txt
COPY --chown=app data/ ${{APP_HOME}}/data/
RUN echo "$GREETING from run" > /opt/app/run.txt && \\
    mkdir -p /var/made && echo ok > /var/made/x && \\
    echo to-log && echo to-err >&2
LABEL org.example.k="v w"
EXPOSE 8080
USER app
CMD ["sh", "-c", "echo default-cmd"]
"""


@pytest.fixture(scope="module")
def daemon(registry):
    d = Daemon(extra_args=registry_args(registry))
    d.start()
    yield d
    d.stop()


def context_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            if data is None:
                ti = tarfile.TarInfo(name)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
                continue
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def build(api, name, files, query=""):
    return api.post(f"/v1/templates/build?name={name}{query}", raw=context_tar(files),
                    headers={"Content-Type": "application/x-tar"}, timeout=600)


def files_for(ref, conf=b"conf-1\n"):
    return {"Dockerfile": DOCKERFILE.format(ref=ref).encode(), "conf.txt": conf,
            "data": None, "data/a": b"file-a\n", "data/sub/b": b"file-b\n"}


def out(api, sid, script):
    res = sh(api, sid, script)
    assert res["exit_code"] == 0, f"{script!r}: {res!r}"
    return res["stdout"]


def test_build_cache_and_sandbox(api, registry, images, new_sandbox):
    ref = images.ref(registry, "busybox")
    t0 = time.monotonic()
    r = build(api, "built1", files_for(ref), "&build_arg=GREETING=hi")
    first_s = time.monotonic() - t0
    assert r.status == 201, r
    t = r.json
    assert t["name"] == "built1" and t["state"] == "ready", t
    steps = t["steps"]
    assert [s["instruction"].split()[0] for s in steps] == [
        "ARG", "FROM", "ARG", "ENV", "WORKDIR", "COPY", "COPY", "RUN", "LABEL", "EXPOSE", "USER",
        "CMD"], steps
    assert steps[4]["instruction"] == "WORKDIR /opt/app"
    run = steps[7]
    assert not run["cached"] and run["layer"].startswith("sha256:"), run
    assert steps[3]["layer"] is None  # ENV: a config change
    assert "to-log" in t["log"] and "to-err" in t["log"], t["log"]
    cfg = t["config"]
    assert cfg["workdir"] == "/opt/app" and cfg["user"] == "app", cfg
    assert cfg["cmd"] == ["sh", "-c", "echo default-cmd"], cfg
    assert "APP_HOME=/opt/app" in cfg["env"] and "MODE=test" in cfg["env"], cfg
    # Intermediate results are hidden.
    names = [x["name"] for x in api.get("/v1/templates").json["templates"]]
    assert "built1" in names and not [n for n in names if n.startswith("build-cache-")], names

    sb = new_sandbox(template="built1")
    sid = sb["id"]
    got = out(api, sid, "cat conf.txt data/a data/sub/b run.txt /var/made/x; "
                        "stat -c '%U %a' data/a data/sub/b conf.txt; "
                        "echo $APP_HOME $MODE; pwd; id -un")
    assert got == ("conf-1\nfile-a\nfile-b\nhi from run\nok\n"
                   "app 644\napp 644\nroot 644\n/opt/app test\n/opt/app\napp\n"), got
    api.delete(f"/v1/sandboxes/{sid}")

    # The same build again: every step from the cache, and much faster.
    t0 = time.monotonic()
    r = build(api, "built2", files_for(ref), "&build_arg=GREETING=hi")
    again_s = time.monotonic() - t0
    assert r.status == 201, r
    assert all(s["cached"] for s in r.json["steps"]), r.json["steps"]
    assert r.json["digest"] == t["digest"]
    assert again_s < first_s / 2, (again_s, first_s)

    # Another build arg: the RUN (which sees it) and what follows are rebuilt.
    r = build(api, "built3", files_for(ref), "&build_arg=GREETING=bye")
    assert r.status == 201, r
    assert [s["cached"] for s in r.json["steps"]][5:9] == [True, True, False, False]

    # A changed COPY source: that step and the ones after it run again.
    r = build(api, "built2", files_for(ref, conf=b"conf-2\n"), "&build_arg=GREETING=hi")
    assert r.status == 201, r
    cached = [s["cached"] for s in r.json["steps"]]
    assert cached[:5] == [True] * 5 and cached[5:9] == [False] * 4, r.json["steps"]
    sb = new_sandbox(template="built2")
    assert out(api, sb["id"], "cat conf.txt") == "conf-2\n"

    # no_cache: everything runs.
    r = build(api, "built4", files_for(ref), "&build_arg=GREETING=hi&no_cache=1")
    assert r.status == 201, r
    assert [s["cached"] for s in r.json["steps"]][7] is False


def test_build_failures(api, registry, images):
    ref = images.ref(registry, "busybox")
    r = build(api, "bad1", {"Dockerfile": f"FROM {ref}\nRUN echo before && echo oops >&2 && "
                                          f"exit 3\n".encode()})
    assert r.status == 422, r
    err = r.json["error"]
    assert err["code"] == "build_failed", err
    assert "code 3" in err["message"] and "oops" in err["message"], err
    assert "bad1" not in [x["name"] for x in api.get("/v1/templates").json["templates"]]

    r = build(api, "bad2", {"Dockerfile": f"FROM {ref}\n\nVOLUME /data\n".encode()})
    assert r.status == 400, r
    assert "VOLUME" in r.json["error"]["message"] and "line 3" in r.json["error"]["message"]

    r = build(api, "bad3", {"Dockerfile": b"FROM 127.0.0.1:1/nothing/here:1\n"})
    assert r.status in (404, 502), r

    r = build(api, "bad4", {"Dockerfile": f"FROM {ref}\nCOPY missing.txt /x\n".encode()})
    assert r.status == 400 and "missing.txt" in r.json["error"]["message"], r

    r = build(api, "bad5", {"Dockerfile": f"FROM {ref}\nADD https://example.com/x /x\n".encode()})
    assert r.status == 400 and "URL" in r.json["error"]["message"], r

    r = build(api, "bad6", {"Nope": b""})
    assert r.status == 400 and "Dockerfile" in r.json["error"]["message"], r


def test_build_scratch_and_add(api, registry, images, new_sandbox, tmp_path):
    ref = images.ref(registry, "busybox")
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        ti = tarfile.TarInfo("pkg/readme")
        ti.size = 6
        tf.addfile(ti, io.BytesIO(b"inner\n"))
    r = build(api, "added", {"Dockerfile": f"FROM {ref}\nADD pkg.tgz /opt/\n".encode(),
                             "pkg.tgz": inner.getvalue()})
    assert r.status == 201, r
    sb = new_sandbox(template="added")
    assert out(api, sb["id"], "cat /opt/pkg/readme") == "inner\n"
    r = build(api, "scratchy", {"Dockerfile": b"FROM scratch\nCOPY f /f\nCMD [\"/f\"]\n",
                                "f": b"x"})
    assert r.status == 201, r
    assert r.json["config"]["cmd"] == ["/f"]


def test_build_cli(api, registry, images, daemon, tmp_path):
    ref = images.ref(registry, "busybox")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile.alt").write_text(f"FROM {ref}\nARG X=1\nCOPY hello /hello\n"
                                        f"RUN cat /hello && echo x=$X\n")
    (ctx / "hello").write_text("hello-cli\n")
    (ctx / "ignored").write_text("no\n")
    (ctx / ".dockerignore").write_text("ignored\n")
    env = dict(os.environ, WARREN_URL=f"http://127.0.0.1:{daemon.port}")
    p = subprocess.run([WARREN_BIN, "build", "-t", "clibuilt", "-f", "Dockerfile.alt",
                        "--build-arg", "X=7", str(ctx)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p
    assert "hello-cli" in p.stdout and "x=7" in p.stdout, p.stdout
    assert "clibuilt" in p.stdout
    (ctx / "Dockerfile.alt").write_text(f"FROM {ref}\nCOPY ignored /x\n")
    p = subprocess.run([WARREN_BIN, "build", "-t", "clibad", "-f", "Dockerfile.alt", str(ctx)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "ignored" in p.stderr, p
