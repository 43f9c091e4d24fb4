"""POST /v1/batch (docs/API.md, "Batch")."""

import json
import time

from conftest import exec_

RESULT_KEYS = {"exit_code", "signal", "stdout", "stderr", "stdout_truncated", "stderr_truncated",
               "truncated", "timed_out", "duration_ms"}


def batch(api, items, expect=200, timeout=60):
    r = api.post("/v1/batch", items, timeout=timeout)
    assert r.status == expect, f"batch of {len(items) if isinstance(items, list) else items!r}: {r!r}"
    if expect == 200:
        assert isinstance(r.json, list), r
        if isinstance(items, list):
            assert len(r.json) == len(items), r
    return r


def ok(res):
    assert isinstance(res, dict) and "error" not in res, res
    missing = RESULT_KEYS - set(res)
    assert not missing, f"batch result lacks {sorted(missing)}: {res}"
    return res


def test_order_preserved(api, new_sandbox):
    a, b, c = new_sandbox(), new_sandbox(name="batch-named-c"), new_sandbox()
    sbs = [a["id"], "batch-named-c", c["id"], a["id"], a["id"], c["id"]]
    items = []
    for i in range(30):
        sb = sbs[i % len(sbs)]
        # later items finish sooner: the answer must still be in request order
        items.append({"sandbox": sb, "shell": f"sleep 0.0{(30 - i) % 10}; echo item{i}"})
    res = batch(api, items).json
    for i, r in enumerate(res):
        assert ok(r)["stdout"] == f"item{i}\n", (i, r)
        assert r["exit_code"] == 0
    assert b["name"] == "batch-named-c"


def test_results_are_exec_results(api, sandbox):
    sid = sandbox["id"]
    items = [
        {"sandbox": sid, "argv": ["sh", "-c", "echo out; echo err >&2; exit 5"]},
        {"sandbox": sid, "argv": ["cat"], "stdin": "fed"},
        {"sandbox": sid, "shell": "echo $X", "env": {"X": "envval"}, "cwd": "/tmp"},
        {"sandbox": sid, "shell": "sleep 10", "timeout_s": 0.5},
        {"sandbox": sid, "shell": "head -c 5000 /dev/zero | tr '\\0' q", "max_output_bytes": 10},
        {"sandbox": sid, "argv": ["printf", "\\377"]},
        {"sandbox": sid, "argv": ["nosuchcmd-b"]},
    ]
    res = batch(api, items).json
    r = ok(res[0])
    assert (r["stdout"], r["stderr"], r["exit_code"], r["signal"]) == ("out\n", "err\n", 5, None)
    assert ok(res[1])["stdout"] == "fed"
    assert ok(res[2])["stdout"] == "envval\n"
    r = ok(res[3])
    assert r["timed_out"] is True and r["signal"] == 9 and r["exit_code"] == 137, r
    r = ok(res[4])
    assert r["stdout"] == "q" * 10 and r["truncated"] is True and r["stdout_truncated"] is True
    r = ok(res[5])
    assert r["stdout"] is None and r["stdout_b64"] == "/w==", r
    assert ok(res[6])["exit_code"] == 127


def test_parallel_across_sandboxes(api, new_sandbox):
    sids = [new_sandbox()["id"] for _ in range(4)]
    for sid in sids:  # warm up each sandbox once
        assert exec_(api, sid, argv=["true"])["exit_code"] == 0
    t0 = time.monotonic()
    res = batch(api, [{"sandbox": sid, "argv": ["sleep", "1"]} for sid in sids]).json
    elapsed = time.monotonic() - t0
    for r in res:
        assert ok(r)["exit_code"] == 0 and r["timed_out"] is False, r
        assert r["duration_ms"] >= 950, r
    assert elapsed < 3.5, f"4 x sleep 1 in 4 sandboxes took {elapsed:.2f}s: not parallel"


def test_serial_within_a_sandbox(api, sandbox):
    sid = sandbox["id"]
    step = ("echo start$N $(date +%s.%N) >> /workspace/t; sleep 0.5; "
            "echo end$N $(date +%s.%N) >> /workspace/t")
    t0 = time.monotonic()
    res = batch(api, [{"sandbox": sid, "shell": step, "env": {"N": "1"}},
                      {"sandbox": sid, "shell": step, "env": {"N": "2"}}]).json
    elapsed = time.monotonic() - t0
    assert all(ok(r)["exit_code"] == 0 for r in res), res
    assert elapsed >= 1.0, f"2 x sleep 0.5 in one sandbox took {elapsed:.2f}s: not serial"
    lines = exec_(api, sid, argv=["cat", "/workspace/t"])["stdout"].split("\n")
    marks = dict(l.split() for l in lines if l)
    assert list(marks) == ["start1", "end1", "start2", "end2"], lines
    t = {k: float(v) for k, v in marks.items()}
    assert t["start2"] >= t["end1"], f"the second item started before the first ended: {t}"


def test_mixed_lanes(api, new_sandbox):
    """Two sandboxes with two 1 s items each: ~2 s in all (lanes in parallel, items in a lane
    in series; all in series would be 4 s)."""
    a, b = new_sandbox()["id"], new_sandbox()["id"]
    for sid in (a, b):
        exec_(api, sid, argv=["true"])
    items = [{"sandbox": s, "argv": ["sleep", "1"]} for s in (a, b, a, b)]
    t0 = time.monotonic()
    res = batch(api, items).json
    elapsed = time.monotonic() - t0
    assert all(ok(r)["exit_code"] == 0 for r in res)
    assert 2.0 <= elapsed < 3.5, elapsed


def test_per_item_errors(api, sandbox):
    sid = sandbox["id"]
    items = [
        {"sandbox": sid, "argv": ["echo", "first"]},
        {"sandbox": "sb-nosuchsandbox", "argv": ["true"]},
        {"argv": ["true"]},
        {"sandbox": sid, "argv": []},
        {"sandbox": sid, "argv": ["true"], "bogus": 1},
        42,
        "a string",
        None,
        [],
        {"sandbox": 7, "argv": ["true"]},
        {"sandbox": "", "argv": ["true"]},
        {"sandbox": sid, "argv": ["true"], "timeout_s": 1e9},
        {"sandbox": sid, "shell": "echo last"},
    ]
    res = batch(api, items).json
    assert ok(res[0])["stdout"] == "first\n"
    assert ok(res[-1])["stdout"] == "last\n"
    expect = {1: "not_found", 2: "bad_request", 3: "bad_request", 4: "bad_request",
              5: "bad_request", 6: "bad_request", 7: "bad_request", 8: "bad_request",
              9: "bad_request", 10: "bad_request", 11: "unprocessable"}
    for i, code in expect.items():
        r = res[i]
        assert isinstance(r, dict) and set(r) == {"error"}, (i, r)
        assert r["error"]["code"] == code, (i, r)
        assert isinstance(r["error"]["message"], str) and r["error"]["message"], (i, r)
    assert "bogus" in res[4]["error"]["message"]
    assert "sandbox" in res[2]["error"]["message"]


def test_sandbox_deleted_before_batch(api, new_sandbox):
    sb = new_sandbox()
    api.remove(sb["id"])
    res = batch(api, [{"sandbox": sb["id"], "argv": ["true"]}]).json
    assert res[0]["error"]["code"] == "not_found", res


def test_body_must_be_an_array(api):
    for body in ['{"sandbox":"x","argv":["true"]}', '"str"', "42", "null", "", "[1,",
                 "not json"]:
        r = api.post("/v1/batch", raw=body.encode())
        assert r.status == 400 and r.error_code == "bad_request", (body, r)


def test_empty_array(api):
    r = batch(api, [])
    assert r.json == [], r


def test_too_many_items(api, sandbox):
    item = {"sandbox": "sb-nosuchsandbox", "argv": ["true"]}
    r = api.post("/v1/batch", [item] * 1025)
    assert r.status == 413 and r.error_code == "payload_too_large", r
    # 1024 is allowed (these items all fail fast, on their own)
    r = batch(api, [item] * 1024)
    assert len(r.json) == 1024
    assert all(x["error"]["code"] == "not_found" for x in r.json)


def test_many_items_in_one_sandbox(api, sandbox):
    items = [{"sandbox": sandbox["id"], "argv": ["echo", str(i)]} for i in range(100)]
    res = batch(api, items).json
    assert [ok(r)["stdout"] for r in res] == [f"{i}\n" for i in range(100)]


def test_wrong_method_and_query(api):
    r = api.get("/v1/batch")
    assert r.status == 405, r
    r = api.post("/v1/batch?x=1", [])
    assert r.status == 400, r
    assert json.loads(api.post("/v1/batch", []).body) == []
