"""Bad requests get the documented error, and the daemon keeps serving (docs/API.md)."""

import json
import select
import socket
import time

import pytest

from conftest import exec_, wait_for

MISSING_ID = "sb-aaaaaaaaaaaa"


@pytest.fixture(autouse=True)
def still_serving(api, daemon):
    yield
    assert daemon.proc.poll() is None, f"daemon died; log:\n{daemon.log()}"
    assert api.healthy(), "daemon no longer answers GET /healthz after the test"


def check_error(r, status, code, names=None):
    assert r.status == status, f"expected {status} {code}, got {r!r}"
    assert isinstance(r.json, dict) and set(r.json) == {"error"}, f"bad error body: {r!r}"
    err = r.json["error"]
    assert err.get("code") == code, r
    assert isinstance(err.get("message"), str) and err["message"], r
    if names:
        assert names in err["message"], f"message should name {names!r}: {err['message']!r}"
    assert "application/json" in (r.headers.get("Content-Type") or ""), r.headers


def count_sandboxes(api):
    return len(api.get("/v1/sandboxes").json["sandboxes"])


# ---------------------------------------------------------------------------------------------
# raw HTTP, for requests http.client will not send or cannot read the answer of


def _parse(data):
    if b"\r\n\r\n" not in data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    return status, headers, body


def raw_request(port, head, body=b"", timeout=30):
    """Send head then body, reading concurrently; return (status, headers, body) of the answer.

    The server may answer (and close) before the whole body is sent: stop sending then."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setblocking(False)
    out = memoryview(head + body)
    off, data = 0, b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, w, _ = select.select([s], [s] if off < len(out) else [], [], 0.5)
            if r:
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    chunk = None
                except ConnectionResetError:
                    break
                if chunk == b"":
                    break
                if chunk:
                    data += chunk
                    status, headers, rbody = _parse(data)
                    if status is not None and len(rbody) >= int(headers.get("content-length", 0)):
                        break
            if w:
                try:
                    off += s.send(out[off:off + 262144])
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    off = len(out)
    finally:
        s.close()
    return _parse(data)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b'{"name":', b"not json", b"[]", b'"x"', b"null", b"42",
                                 b'{"name":"a"} trailing', b'{"name":"\xff"}', b"{'name':'a'}"])
def test_malformed_json_create(api, raw):
    n = count_sandboxes(api)
    r = api.post("/v1/sandboxes", raw=raw)
    check_error(r, 400, "bad_request")
    assert count_sandboxes(api) == n


@pytest.mark.parametrize("raw", [b'{"argv":["ls"]', b"{", b"[\"ls\"]", b"\xff\xfe"])
def test_malformed_json_exec(api, sandbox, raw):
    r = api.post(f"/v1/sandboxes/{sandbox['id']}/exec", raw=raw)
    check_error(r, 400, "bad_request")


@pytest.mark.parametrize("body,field", [
    ({"name": 5}, "name"),
    ({"template": 1}, "template"),
    ({"env": {"A": 1}}, "env"),
    ({"env": ["A=1"]}, "env"),
    ({"labels": {"a": 1}}, "labels"),
    ({"labels": "a=b"}, "labels"),
    ({"resources": {"cpus": "x"}}, "cpus"),
    ({"resources": {"memory_mib": 1.5}}, "memory_mib"),
    ({"resources": {"pids": "10"}}, "pids"),
    ({"resources": 5}, "resources"),
    ({"network": {"mode": 5}}, "mode"),
    ({"network": {"mode": "none", "allow": "x"}}, "allow"),
    ({"idle_timeout_s": "x"}, "idle_timeout_s"),
    ({"ttl_s": [1]}, "ttl_s"),
])
def test_create_wrong_types(api, body, field):
    n = count_sandboxes(api)
    r = api.post("/v1/sandboxes", body)
    if r.status == 201:
        api.remove(r.json["id"])
    check_error(r, 400, "bad_request", names=field)
    assert count_sandboxes(api) == n


@pytest.mark.parametrize("body,field", [
    ({"argv": "ls"}, "argv"),
    ({"argv": [1]}, "argv"),
    ({"argv": ["ls", None]}, "argv"),
    ({"shell": 5}, "shell"),
    ({"shell": ["ls"]}, "shell"),
    ({"argv": ["ls"], "env": {"A": 1}}, "env"),
    ({"argv": ["ls"], "timeout_s": "x"}, "timeout_s"),
    ({"argv": ["ls"], "cwd": 5}, "cwd"),
    ({"argv": ["ls"], "stdin": 5}, "stdin"),
    ({"argv": ["ls"], "stdin_b64": 5}, "stdin_b64"),
    ({"argv": ["ls"], "max_output_bytes": "x"}, "max_output_bytes"),
    ({"argv": ["ls"], "max_output_bytes": 1.5}, "max_output_bytes"),
])
def test_exec_wrong_types(api, sandbox, body, field):
    r = api.post(f"/v1/sandboxes/{sandbox['id']}/exec", body)
    check_error(r, 400, "bad_request", names=field)


def test_unknown_fields(api, sandbox):
    n = count_sandboxes(api)
    r = api.post("/v1/sandboxes", {"bogus_top": 1})
    check_error(r, 400, "bad_request", names="bogus_top")
    r = api.post("/v1/sandboxes", {"resources": {"bogus_nested": 1}})
    check_error(r, 400, "bad_request", names="bogus_nested")
    r = api.post("/v1/sandboxes", {"network": {"mode": "none", "bogus_net": 1}})
    check_error(r, 400, "bad_request", names="bogus_net")
    assert count_sandboxes(api) == n
    r = api.post(f"/v1/sandboxes/{sandbox['id']}/exec", {"argv": ["true"], "bogus_exec": 1})
    check_error(r, 400, "bad_request", names="bogus_exec")


@pytest.mark.parametrize("body", [
    {}, {"env": {"A": "1"}}, {"argv": ["ls"], "shell": "ls"}, {"argv": []}, {"argv": None},
    {"argv": ["cat"], "stdin": "a", "stdin_b64": "YQ=="},
    {"argv": ["cat"], "stdin_b64": "not base64!!"},
    {"argv": ["true"], "timeout_s": 0}, {"argv": ["true"], "timeout_s": -1},
    {"argv": ["true"], "max_output_bytes": -1},
])
def test_exec_invalid_bodies(api, sandbox, body):
    r = api.post(f"/v1/sandboxes/{sandbox['id']}/exec", body)
    check_error(r, 400, "bad_request")


def test_exec_no_body(api, sandbox):
    r = api.post(f"/v1/sandboxes/{sandbox['id']}/exec")
    check_error(r, 400, "bad_request")


def test_limits_exceeded_422(api, sandbox):
    sid = sandbox["id"]
    r = api.post(f"/v1/sandboxes/{sid}/exec", {"argv": ["true"], "timeout_s": 86401})
    check_error(r, 422, "unprocessable", names="timeout_s")
    r = api.post(f"/v1/sandboxes/{sid}/exec", {"argv": ["true"], "max_output_bytes": 67108865})
    check_error(r, 422, "unprocessable", names="max_output_bytes")
    # the maxima themselves are fine
    res = exec_(api, sid, argv=["echo", "x"], timeout_s=86400, max_output_bytes=67108864)
    assert res["stdout"] == "x\n"


def test_unsupported_template_and_network(api):
    n = count_sandboxes(api)
    r = api.post("/v1/sandboxes", {"template": "nope"})
    check_error(r, 404, "not_found", names="nope")
    r = api.post("/v1/sandboxes", {"network": {"mode": "sideways"}})
    check_error(r, 400, "bad_request", names="network.mode")
    r = api.post("/v1/sandboxes", {"network": {"mode": "none", "allow": ["example.com"]}})
    check_error(r, 400, "bad_request", names="network.allow")
    r = api.post("/v1/sandboxes", {"network": {"mode": "allowlist", "allow": ["http://x/"]}})
    check_error(r, 400, "bad_request", names="network.allow[0]")
    assert count_sandboxes(api) == n


def test_body_too_large(api, daemon):
    limit = api.get("/v1/info").json["limits"]["max_body_bytes"]
    size = 20 * 2**20
    assert limit < size
    body = b'{"name":"' + b"a" * (size - 12) + b'"}'
    head = (f"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    status, headers, rbody = raw_request(daemon.port, head, body)
    assert status == 413, (status, rbody[:300])
    assert json.loads(rbody)["error"]["code"] == "payload_too_large"
    assert api.healthy()


def test_chunked_body_too_large(api, daemon):
    size = 20 * 2**20
    chunk = b"a" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(size // len(chunk)))
    body += b"0\r\n\r\n"
    head = (b"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    status, headers, rbody = raw_request(daemon.port, head, body)
    assert status == 413, (status, rbody[:300])
    assert json.loads(rbody)["error"]["code"] == "payload_too_large"


def test_huge_header(api, daemon):
    head = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * (40 * 1024) + b"\r\n\r\n")
    status, headers, rbody = raw_request(daemon.port, head)
    assert status == 431, (status, rbody[:300])
    assert json.loads(rbody)["error"]["code"] == "headers_too_large"


def test_unknown_sandbox(api):
    check_error(api.get(f"/v1/sandboxes/{MISSING_ID}"), 404, "not_found")
    check_error(api.get("/v1/sandboxes/no-such-name"), 404, "not_found")
    check_error(api.delete(f"/v1/sandboxes/{MISSING_ID}"), 404, "not_found")
    check_error(api.post(f"/v1/sandboxes/{MISSING_ID}/exec", {"argv": ["true"]}), 404,
                "not_found")


def test_exec_on_deleted_sandbox(api):
    sb = api.create()
    assert exec_(api, sb["id"], argv=["true"])["exit_code"] == 0
    assert api.delete(f"/v1/sandboxes/{sb['id']}").status == 204
    r = api.post(f"/v1/sandboxes/{sb['id']}/exec", {"argv": ["true"]})
    check_error(r, 404, "not_found")
    r = api.post(f"/v1/sandboxes/{sb['name']}/exec", {"argv": ["true"]})
    check_error(r, 404, "not_found")


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/nope"), ("GET", "/nope"), ("GET", "/"), ("POST", "/v1/sandboxes/x/nope"),
    ("GET", "/v1/sandboxes/x/y/z/w"), ("GET", "/v1"),
])
def test_unknown_route(api, method, path):
    r = api.request(method, path)
    check_error(r, 404, "not_found")


def test_wrong_method(api, sandbox):
    r = api.request("PUT", "/v1/sandboxes", body=b"{}", headers={"Content-Type": "application/json"})
    check_error(r, 405, "method_not_allowed")
    allow = {m.strip() for m in (r.headers.get("Allow") or "").split(",")}
    assert {"GET", "POST"} <= allow, r.headers
    r = api.request("GET", f"/v1/sandboxes/{sandbox['id']}/exec")
    check_error(r, 405, "method_not_allowed")
    assert "POST" in (r.headers.get("Allow") or ""), r.headers
    r = api.request("DELETE", "/healthz")
    check_error(r, 405, "method_not_allowed")
    assert "GET" in (r.headers.get("Allow") or ""), r.headers


def test_client_disconnect_kills_command(api, sandbox, daemon):
    sid = sandbox["id"]
    body = json.dumps({"argv": ["sleep", "30"]}).encode()
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    s.sendall((f"POST /v1/sandboxes/{sid}/exec HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
              + body)
    wait_for(lambda: exec_(api, sid, argv=["pgrep", "-f", "sleep 30"])["exit_code"] == 0,
             what="sleep 30 to run during the exec")
    s.close()
    wait_for(lambda: exec_(api, sid, argv=["pgrep", "-f", "sleep 30"])["exit_code"] == 1,
             interval=0.2, what="sleep 30 to be killed after the client disconnected")
    assert api.healthy()
    # the sandbox is still usable
    assert exec_(api, sid, argv=["echo", "ok"])["stdout"] == "ok\n"


def test_garbage_request_line(api, daemon):
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    try:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n")
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
        # either a 400 or a closed connection; never a hang or a 200
        assert data == b"" or data.startswith(b"HTTP/1.1 400"), data[:200]
    finally:
        s.close()
