"""atropos slot protocol: `bash_stateful` (a persistent shell per slot) and `tmux` (a terminal per
slot) — shared/compat-atropos.md, "Tools"."""

import json
import time
import uuid

import pytest

from atropos_client import slots, slots_daemon  # noqa: F401 - fixtures
from conftest import WAIT_S, wait_for

START_MD_KEYS = {"stateful", "pane_width", "pane_height", "socket", "session", "recording"}
STREAM_MD_KEYS = {"stateful", "stream", "offset", "recording"}


# -- bash_stateful ------------------------------------------------------------------------------


def sf_ok(slots, sid, command, timeout=30):
    r = slots.stateful(sid, command, timeout=timeout)
    assert r["success"] is True, (command, r)
    assert r["metadata"].get("stateful") is True, r
    assert r["metadata"].get("exit_code") == 0, r
    return r["output"]


def test_stateful_output_and_metadata(slots):
    r = slots.stateful("slot_0", "printf 'a%sb\\n' X; seq 1 3")
    assert r["success"] is True, r
    assert r["metadata"]["stateful"] is True and r["metadata"]["exit_code"] == 0, r
    assert "aXb\n1\n2\n3" in r["output"], r


def test_stateful_starts_in_workspace(slots):
    slots.reset("slot_1")
    out = sf_ok(slots, "slot_1", "pwd")
    assert "/workspace" in out.splitlines(), out
    sf_ok(slots, "slot_1", "echo from-stateful > made-by-stateful.txt")
    assert slots.ok("slot_1", "cat /workspace/made-by-stateful.txt") == "from-stateful"


def test_stateful_cwd_persists(slots):
    sf_ok(slots, "slot_0", "mkdir -p /tmp/sfdir/sub && cd /tmp/sfdir")
    out = sf_ok(slots, "slot_0", "cd sub; pwd")
    assert "/tmp/sfdir/sub" in out.splitlines(), out
    out = sf_ok(slots, "slot_0", "pwd")
    assert "/tmp/sfdir/sub" in out.splitlines(), out
    sf_ok(slots, "slot_0", "cd /workspace")


def test_stateful_exported_vars_persist(slots):
    sf_ok(slots, "slot_0", "export ATROPOS_FOO=bar-$((1+1))")
    out = sf_ok(slots, "slot_0", 'echo "v=[$ATROPOS_FOO]"')
    assert "v=[bar-2]" in out.splitlines(), out
    out = sf_ok(slots, "slot_0", 'sh -c \'echo "child=[$ATROPOS_FOO]"\'')
    assert "child=[bar-2]" in out.splitlines(), out


def test_stateful_background_process_persists(slots):
    sf_ok(slots, "slot_0", "sleep 300 & echo $! > /tmp/bgpid")
    time.sleep(0.3)
    out = sf_ok(slots, "slot_0", 'kill -0 "$(cat /tmp/bgpid)" && echo alive-$((6*7))')
    assert "alive-42" in out.splitlines(), out
    # seen from a later one-shot bash in the same slot too
    pid = slots.ok("slot_0", "cat /tmp/bgpid")
    out = slots.ok("slot_0", f"kill -0 {pid} && echo still-$((7*7))")
    assert out == "still-49"
    out = sf_ok(slots, "slot_0", 'kill -0 "$(cat /tmp/bgpid)" && echo again-$((8*8))')
    assert "again-64" in out.splitlines(), out
    sf_ok(slots, "slot_0", 'kill "$(cat /tmp/bgpid)"')


def test_stateful_exit_code(slots):
    r = slots.stateful("slot_0", "(exit 3)")
    assert r["metadata"]["stateful"] is True, r
    assert r["metadata"]["exit_code"] == 3, r
    assert r["success"] is False, r
    r = slots.stateful("slot_0", "echo fine")
    assert r["success"] is True and r["metadata"]["exit_code"] == 0, r
    # a failing command does not end the shell
    sf_ok(slots, "slot_0", "export KEEP=1")
    slots.stateful("slot_0", "false")
    assert "k=[1]" in sf_ok(slots, "slot_0", 'echo "k=[$KEEP]"').splitlines()


def test_stateful_returns_only_new_output(slots):
    a, b = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    out1 = sf_ok(slots, "slot_0", f"printf 'first-%s\\n' {a}")
    assert f"first-{a}" in out1.splitlines(), out1
    out2 = sf_ok(slots, "slot_0", f"printf 'second-%s\\n' {b}")
    assert f"second-{b}" in out2.splitlines(), out2
    assert f"first-{a}" not in out2, f"old output repeated: {out2!r}"


def test_stateful_timeout(slots):
    t0 = time.monotonic()
    r = slots.stateful("slot_1", "sleep 60", timeout=1)
    elapsed = time.monotonic() - t0
    assert r["success"] is False, r
    assert r["error"] == "Command timed out after 1s", r
    assert r["metadata"].get("exit_code") == -1 and r["metadata"].get("timeout") is True, r
    # Far below the sleep's 60 s, with room for a loaded machine.
    assert elapsed < 15, f"stateful timeout of 1s took {elapsed:.2f}s"
    # the slot's shell is usable right after
    out = sf_ok(slots, "slot_1", "echo after-$((10+1))")
    assert "after-11" in out.splitlines(), out


@pytest.mark.parametrize("args", [{"command": ""}, {}], ids=["empty", "absent"])
def test_stateful_missing_command(slots, args):
    r = slots.execute("slot_0", "bash_stateful", args)
    assert r["success"] is False, r
    assert r["error"] == "Missing command", r


def test_stateful_per_slot(slots):
    sf_ok(slots, "slot_0", "export ONLY_HERE=zero")
    sf_ok(slots, "slot_1", "true")
    out = sf_ok(slots, "slot_1", 'echo "o=[$ONLY_HERE]"')
    assert "o=[]" in out.splitlines(), out


def test_reset_stops_stateful_shell(slots):
    sf_ok(slots, "slot_1", "export GONE=soon; cd /tmp")
    assert "g=[soon]" in sf_ok(slots, "slot_1", 'echo "g=[$GONE]"').splitlines()
    r = slots.reset("slot_1")
    assert r["success"] is True and r["output"] == "Reset workspace for slot_1", r
    out = sf_ok(slots, "slot_1", 'echo "g=[$GONE]"; pwd')
    lines = out.splitlines()
    assert "g=[]" in lines, f"variable survived /reset: {out!r}"
    assert "/workspace" in lines, f"cwd survived /reset: {out!r}"


# -- tmux ---------------------------------------------------------------------------------------


def tmux(slots, sid, timeout=30, **args):
    return slots.tmux(sid, timeout=timeout, **args)


def fresh_term(slots, sid, width=80, height=24):
    r = tmux(slots, sid, action="stop")
    assert r["success"] is True and r["output"] == "stopped", r
    r = tmux(slots, sid, action="start", pane_width=width, pane_height=height)
    assert r["success"] is True and r["output"] == "started", r
    return r


def keys(slots, sid, k, block=False, timeout=30, **kw):
    r = tmux(slots, sid, timeout=timeout, action="send_keys", keys=k, block=block, **kw)
    assert r["success"] is True and r["output"] == "ok", (k, r)
    assert r["metadata"].get("stateful") is True, r
    assert r["metadata"].get("blocked") is block, r
    return r


def capture(slots, sid, entire=False):
    r = tmux(slots, sid, action="capture", capture_entire=entire)
    assert r["success"] is True, r
    return r["output"]


def wait_screen(slots, sid, text, timeout=WAIT_S, entire=False):
    """Waits until text is on the screen; returns the screen."""
    return wait_for(lambda: (lambda s: s if text in s else None)(capture(slots, sid, entire)),
                    timeout=timeout, what=f"{text!r} on the screen of {sid}")


def wait_line(slots, sid, line, timeout=WAIT_S):
    """Waits until a screen line reads `line` (ignoring surrounding blanks)."""
    def check():
        s = capture(slots, sid)
        return s if line in [l.strip() for l in s.splitlines()] else None
    return wait_for(check, timeout=timeout, what=f"line {line!r} on the screen of {sid}")


def test_tmux_start_metadata(slots):
    r = fresh_term(slots, "slot_2", width=100, height=30)
    md = r["metadata"]
    assert set(md) >= START_MD_KEYS, f"start metadata lacks {sorted(START_MD_KEYS - set(md))}: {r}"
    assert md["stateful"] is True, r
    assert md["pane_width"] == 100 and md["pane_height"] == 30, r
    for k in ("socket", "session", "recording"):
        assert isinstance(md[k], str) and md[k], (k, r)
    keys(slots, "slot_2", ["stty size | sed 's/^/size=/'", "Enter"], block=True)
    wait_screen(slots, "slot_2", "size=30 100")


@pytest.mark.parametrize("w,h", [(19, 24), (501, 24), (80, 9), (80, 201), (0, 24), (80, -1)])
def test_tmux_start_bounds_rejected(slots, w, h):
    tmux(slots, "slot_3", action="stop")
    r = tmux(slots, "slot_3", action="start", pane_width=w, pane_height=h)
    assert r["success"] is False, (w, h, r)
    assert r["error"], r


@pytest.mark.parametrize("w,h", [(20, 10), (500, 200)])
def test_tmux_start_bounds_accepted(slots, w, h):
    r = fresh_term(slots, "slot_3", width=w, height=h)
    assert r["metadata"]["pane_width"] == w and r["metadata"]["pane_height"] == h, r
    keys(slots, "slot_3", ["stty size | sed 's/^/sz=/'", "Enter"], block=True)
    wait_screen(slots, "slot_3", f"sz={h} {w}")


def test_tmux_send_keys_string_and_list(slots):
    fresh_term(slots, "slot_2")
    keys(slots, "slot_2", "echo one-$((1+1))")
    keys(slots, "slot_2", ["Enter"])
    wait_screen(slots, "slot_2", "one-2")
    keys(slots, "slot_2", ["echo two-$((2+2))", "Enter", "echo three-$((3+3))", "Enter"])
    s = wait_screen(slots, "slot_2", "three-6")
    assert "two-4" in s, s


def test_tmux_send_keys_missing_keys(slots):
    fresh_term(slots, "slot_2")
    for args in ({}, {"keys": None}, {"keys": 5}, {"keys": ["a", 1]}):
        r = tmux(slots, "slot_2", action="send_keys", **args)
        assert r["success"] is False and r["error"], (args, r)


def test_tmux_block_waits_for_command(slots):
    fresh_term(slots, "slot_2")
    t0 = time.monotonic()
    keys(slots, "slot_2", ["sleep 1; echo slept-$((5*5))", "Enter"], block=True)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.95, f"blocking send_keys returned after {elapsed:.2f}s"
    assert elapsed < 20, elapsed  # not the request's timeout (30 s)
    wait_screen(slots, "slot_2", "slept-25")
    # the reference appends Enter itself when the keys of a blocking call do not end with one
    t0 = time.monotonic()
    keys(slots, "slot_2", "sleep 1; echo slept2-$((6*6))", block=True)
    elapsed = time.monotonic() - t0
    assert 0.95 <= elapsed < 20, f"blocking send_keys (string) returned after {elapsed:.2f}s"
    wait_screen(slots, "slot_2", "slept2-36")
    # without block it returns at once (long before the sleep ends)
    t0 = time.monotonic()
    keys(slots, "slot_2", ["sleep 60", "Enter"], block=False)
    assert time.monotonic() - t0 < 15


def test_tmux_min_wait(slots):
    fresh_term(slots, "slot_2")
    t0 = time.monotonic()
    keys(slots, "slot_2", ["true", "Enter"], min_wait_s=0.7)
    assert time.monotonic() - t0 >= 0.65


def test_tmux_ctrl_c_interrupts(slots):
    fresh_term(slots, "slot_2")
    keys(slots, "slot_2", ["sleep 100", "Enter"])
    wait_for(lambda: slots.ok("slot_2", "pgrep -f '^sleep 100$' || true"),
             what="sleep 100 running in slot_2")
    keys(slots, "slot_2", ["C-c"])
    wait_for(lambda: slots.ok("slot_2", "pgrep -f '^sleep 100$' || echo none") == "none",
             what="sleep 100 interrupted by C-c")
    # Back at the prompt before max_wait_s (keys() fails on a wait that timed out).
    keys(slots, "slot_2", ["echo alive-$((2+3))", "Enter"], block=True, max_wait_s=WAIT_S,
         timeout=WAIT_S + 30)
    wait_screen(slots, "slot_2", "alive-5")


def test_tmux_capture_entire_history(slots):
    fresh_term(slots, "slot_2", width=80, height=20)
    keys(slots, "slot_2", ["seq 1 300", "Enter"], block=True)
    wait_line(slots, "slot_2", "300")
    screen = capture(slots, "slot_2").splitlines()
    assert len(screen) <= 20, f"capture returned {len(screen)} lines for a 20-row pane"
    assert "300" in [l.strip() for l in screen]
    assert "150" not in [l.strip() for l in screen], "screen capture includes scrolled-off lines"
    entire = [l.strip() for l in capture(slots, "slot_2", entire=True).splitlines()]
    missing = [i for i in range(1, 301) if str(i) not in entire]
    assert not missing, f"capture_entire lacks lines {missing[:10]}..."
    assert entire.index("1") < entire.index("150") < entire.index("300")


def test_tmux_default_action_is_capture(slots):
    fresh_term(slots, "slot_2")
    keys(slots, "slot_2", ["echo dflt-$((9*9))", "Enter"], block=True)
    wait_screen(slots, "slot_2", "dflt-81")
    r = tmux(slots, "slot_2")
    assert r["success"] is True and "dflt-81" in r["output"], r
    assert r["output"] == capture(slots, "slot_2")


def test_tmux_unknown_action(slots):
    r = tmux(slots, "slot_2", action="dance")
    assert r["success"] is False, r
    assert r["error"] == "Unknown tmux action: dance", r


def test_tmux_stop(slots):
    fresh_term(slots, "slot_3")
    keys(slots, "slot_3", ["sleep 200", "Enter"])
    wait_for(lambda: slots.ok("slot_3", "pgrep -f '^sleep 200$' || true"),
             what="sleep 200 running in the terminal")
    r = tmux(slots, "slot_3", action="stop")
    assert r["success"] is True and r["output"] == "stopped", r
    wait_for(lambda: slots.ok("slot_3", "pgrep -f '^sleep 200$' || echo none") == "none",
             what="terminal's processes gone after stop")
    # stopping twice is fine
    r = tmux(slots, "slot_3", action="stop")
    assert r["success"] is True and r["output"] == "stopped", r


def _parse_cast(out):
    assert out == "" or out.endswith("\n"), f"stream returned a partial line: {out[-100:]!r}"
    parsed = []
    for line in out.splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"stream line is not JSON: {line!r}")
    return parsed


def _check_events(events):
    for e in events:
        assert isinstance(e, list) and len(e) == 3, e
        assert isinstance(e[0], (int, float)) and e[0] >= 0, e
        assert isinstance(e[1], str) and isinstance(e[2], str), e


def stream(slots, sid, **args):
    r = tmux(slots, sid, action="stream", **args)
    assert r["success"] is True, r
    md = r["metadata"]
    assert set(md) >= STREAM_MD_KEYS, f"stream metadata lacks {sorted(STREAM_MD_KEYS - set(md))}"
    assert md["stateful"] is True and md["stream"] is True, r
    assert isinstance(md["offset"], int) and md["offset"] >= 0, r
    return r["output"], md, _parse_cast(r["output"])


def test_tmux_stream_asciicast(slots):
    fresh_term(slots, "slot_3", width=90, height=25)
    out1, md1, p1 = stream(slots, "slot_3")
    assert p1, "first stream call returned nothing (expected the asciicast header)"
    header = p1[0]
    assert isinstance(header, dict) and header.get("version") == 2, header
    assert header.get("width") == 90 and header.get("height") == 25, header
    _check_events(p1[1:])
    assert md1["offset"] > 0, md1

    keys(slots, "slot_3", ["echo strm-$((3*3))", "Enter"], block=True)
    seen, offsets, outs = "", [md1["offset"]], []

    def more():
        nonlocal seen
        out, md, p = stream(slots, "slot_3")
        assert md["offset"] >= offsets[-1], (md, offsets)
        if out:
            assert md["offset"] > offsets[-1], (md, offsets)
        offsets.append(md["offset"])
        outs.append(out)
        assert all(isinstance(e, list) for e in p), f"header repeated in a later call: {p[:1]}"
        _check_events(p)
        seen += "".join(e[2] for e in p if e[1] == "o")
        return "strm-9" in seen

    wait_for(more, what="strm-9 in the recording")
    # nothing already returned comes back
    time.sleep(0.3)
    out, md, p = stream(slots, "slot_3")
    assert "strm-9" not in "".join(e[2] for e in p), f"old events returned again: {out!r}"
    assert all(isinstance(e, list) for e in p)

    # reset: from the start again, header first
    out, md, p = stream(slots, "slot_3", reset=True)
    assert p and isinstance(p[0], dict) and p[0].get("version") == 2, out[:200]
    assert "strm-9" in "".join(e[2] for e in p[1:] if e[1] == "o"), out
    assert md["offset"] >= offsets[-1], (md, offsets)


def test_tmux_stream_max_bytes_whole_lines(slots):
    fresh_term(slots, "slot_3")
    keys(slots, "slot_3", ["seq 1 20000", "Enter"], block=True, timeout=60)
    wait_line(slots, "slot_3", "20000")
    got, chunks = "", 0
    out, md, p = stream(slots, "slot_3", reset=True, max_bytes=20000)
    while out and chunks < 200:
        assert len(out.encode()) <= 20000, f"max_bytes 20000 exceeded: {len(out.encode())}"
        got += out
        chunks += 1
        out, md, p = stream(slots, "slot_3", max_bytes=20000)
    assert chunks >= 3, f"max_bytes did not split the recording ({chunks} chunks)"
    events = _parse_cast(got)
    assert isinstance(events[0], dict) and events[0].get("version") == 2, events[0]
    assert all(isinstance(e, list) for e in events[1:]), "header repeated"
    _check_events(events[1:])
    data = "".join(e[2] for e in events[1:] if e[1] == "o")
    assert "\n20000\r" in data, "the end of the output is missing from the stream"
    assert data.count("\n12345\r") == 1, "events lost or repeated across max_bytes chunks"


def test_reset_stops_terminal(slots):
    fresh_term(slots, "slot_3")
    keys(slots, "slot_3", ["echo before-reset-$((4*4))", "Enter"], block=True)
    wait_screen(slots, "slot_3", "before-reset-16")
    r = slots.reset("slot_3")
    assert r["success"] is True, r
    # capture starts a new terminal (as the reference does) or reports there is none
    r = tmux(slots, "slot_3", action="capture")
    assert "before-reset-16" not in r["output"], f"terminal survived /reset: {r['output']!r}"
    r = fresh_term(slots, "slot_3")
    assert "before-reset-16" not in capture(slots, "slot_3")
