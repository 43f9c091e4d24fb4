"""Escape suite: terminals. TIOCSTI (push input into a terminal someone else reads) and TIOCLINUX
are refused by the seccomp filter on every terminal a sandbox can reach: the persistent shell's,
an API terminal's, a pty pair it opens itself, and on non-terminals too (EPERM, not ENOTTY,
shows that the filter answered)."""

import time

from conftest import WAIT_S, exec_, sh
from escape_util import PRELUDE, box, check_arch, last_json, py, rnd  # noqa: F401

# Runs on a terminal: fd is the terminal to attack. TIOCGWINSZ on the same fd is the control that
# shows it is a real terminal (so EPERM below is the filter, not a wrong fd).
PROBE = r'''
import fcntl, struct, termios
def probe(fd, marker):
    res = {"isatty": os.isatty(fd)}
    res["winsz"] = err(fcntl.ioctl, fd, termios.TIOCGWINSZ, b"\0" * 8)
    inject = ("touch /workspace/" + marker + "\n").encode()
    res["TIOCSTI"] = [err(fcntl.ioctl, fd, termios.TIOCSTI, bytes([c])) for c in inject[:3]]
    res["TIOCSTI high bits"] = sc("ioctl", fd, (1 << 32) | termios.TIOCSTI, ctypes.c_char_p(b"x"))
    # TIOCLINUX subcodes: 2 set selection, 3 paste selection (injects input), 6 shift state
    res["TIOCLINUX"] = [sc("ioctl", fd, 0x541C, ctypes.c_char_p(bytes([sub]) + b"\0" * 16))
                        for sub in (2, 3, 6, 11)]
    return res
'''


def check_probe(res):
    assert res["isatty"] is True and res["winsz"] is None, f"not a terminal (precondition): {res}"
    assert res["TIOCSTI"] == ["EPERM"] * 3, res
    assert res["TIOCSTI high bits"] == [-1, "EPERM"], res
    assert res["TIOCLINUX"] == [[-1, "EPERM"]] * 4, res


def write_probe(api, sid, tag):
    code = PRELUDE + PROBE + f"""
fd = os.open("/dev/tty", os.O_RDWR) if sys.argv[1] == "tty" else 0
emit(probe(fd, {("pwned-" + tag)!r}))
"""
    r = api.request("PUT", f"/v1/sandboxes/{sid}/files?path=/tmp/probe-{tag}.py", body=code)
    assert r.status == 200, r
    return f"/tmp/probe-{tag}.py"


def test_tiocsti_on_persistent_shell_terminal(api, box):
    check_arch()
    sid, tag = box["id"], rnd()
    path = write_probe(api, sid, tag)
    r = api.post(f"/v1/sandboxes/{sid}/shells", {})
    assert r.status == 201, r
    shid = r.json["shell_id"]
    try:
        r = api.post(f"/v1/sandboxes/{sid}/shells/{shid}/run",
                     {"command": f"/usr/bin/python3 {path} tty", "timeout_s": 30})
        assert r.status == 200, r
        out = r.json["output"]
        check_probe(last_json({"stdout": out}))
        # whatever was (not) injected did not run in the shell
        r = api.post(f"/v1/sandboxes/{sid}/shells/{shid}/run", {"command": "echo next"})
        assert r.json["output"].replace("\r", "") == "next\n", r.json
    finally:
        api.delete(f"/v1/sandboxes/{sid}/shells/{shid}")
    time.sleep(0.2)
    assert exec_(api, sid, argv=["ls", f"/workspace/pwned-{tag}"])["exit_code"] != 0


def test_tiocsti_on_api_terminal(api, box):
    check_arch()
    sid, tag = box["id"], rnd()
    path = write_probe(api, sid, tag)
    out_file = f"/tmp/probe-out-{tag}"
    r = api.post(f"/v1/sandboxes/{sid}/terminals", {"cols": 100, "rows": 30})
    assert r.status == 201, r
    tid = r.json["terminal_id"]
    try:
        # fd 0 is the terminal itself (not /dev/tty); the result goes to a file
        r = api.post(f"/v1/sandboxes/{sid}/terminals/{tid}/keys",
                     {"text": f"/usr/bin/python3 {path} fd0 > {out_file}\r", "block": True,
                      "max_wait_s": 20}, timeout=60)
        assert r.status == 200, r
        deadline = time.monotonic() + WAIT_S
        res = None
        while time.monotonic() < deadline:
            res = exec_(api, sid, argv=["cat", out_file])
            if res["exit_code"] == 0 and res["stdout"].strip().endswith("}"):
                break
            time.sleep(0.1)
        check_probe(last_json(res))
    finally:
        api.delete(f"/v1/sandboxes/{sid}/terminals/{tid}")
    assert exec_(api, sid, argv=["ls", f"/workspace/pwned-{tag}"])["exit_code"] != 0


def test_tiocsti_on_own_pty_and_non_tty(api, box):
    tag = rnd()
    got = py(api, box["id"], PROBE + f"""
import pty
res = {{}}
m, s = pty.openpty()          # a pty pair of the sandbox's own devpts
res["slave"] = probe(s, {("pwned-" + tag)!r})
res["master"] = probe(m, {("pwned-" + tag)!r})
# on a pipe the kernel would answer ENOTTY: EPERM means the filter saw the request first
res["pipe"] = err(fcntl.ioctl, 1, termios.TIOCSTI, b"x")
res["pipe linux"] = sc("ioctl", 1, 0x541C, ctypes.c_char_p(b"\\x06"))
res["pipe control"] = err(fcntl.ioctl, 1, termios.TIOCGWINSZ, b"\\0" * 8)
res["dev tty"] = err(os.open, "/dev/tty", os.O_RDWR)
res["stdio ttys"] = [os.isatty(i) for i in (0, 1, 2)]
emit(res)
""")
    check_probe(got["slave"])
    check_probe(got["master"])
    assert got["pipe"] == "EPERM" and got["pipe linux"] == [-1, "EPERM"], got
    assert got["pipe control"] == "ENOTTY", got
    # exec'd commands have no controlling terminal (certainly not the daemon's)
    assert got["dev tty"] == "ENXIO" and got["stdio ttys"] == [False] * 3, got


def test_shell_and_terminal_have_no_daemon_tty(api, box):
    """The terminals a sandbox gets are its own devpts instance's, never a host tty."""
    sid = box["id"]
    r = api.post(f"/v1/sandboxes/{sid}/shells", {})
    assert r.status == 201, r
    shid = r.json["shell_id"]
    try:
        r = api.post(f"/v1/sandboxes/{sid}/shells/{shid}/run",
                     {"command": "readlink /proc/$$/fd/1; stat -c %d /dev/pts/ptmx; "
                                 "stat -L -c %d /proc/$$/fd/1"})
        assert r.status == 200, r
        lines = r.json["output"].replace("\r", "").split("\n")
        assert lines[0].startswith("/dev/pts/"), r.json
        assert lines[1] == lines[2], f"the shell's terminal is not on the sandbox's devpts: {r.json}"
    finally:
        api.delete(f"/v1/sandboxes/{sid}/shells/{shid}")
    res = sh(api, sid, "ls /dev/pts")
    assert all(x == "ptmx" or x.isdigit() for x in res["stdout"].split()), res
