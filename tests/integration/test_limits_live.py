"""Limits of a live sandbox and of the daemon (docs/API.md): --max-sandboxes answers 429
`capacity`."""
from conftest import Api


def test_max_sandboxes_is_429_capacity(fresh_daemon):
    d = fresh_daemon(extra_args=["--max-sandboxes", "2"])
    api = Api(d)
    a, b = api.create(), api.create()
    r = api.post("/v1/sandboxes", {})
    assert r.status == 429, r
    assert r.error_code == "capacity", r
    assert "maximum of 2 sandboxes" in r.error_message and "--max-sandboxes" in r.error_message
    # A deleted one frees its place.
    api.remove(a["id"])
    c = api.create()
    for sid in (b["id"], c["id"]):
        api.remove(sid)
