"""What an operator reads: the request id (header, error bodies, the SDK's exceptions), the
access log (JSON on request, no secrets in it) and the audit log (who did what to which
sandbox), from a real server."""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch import InvalidRequest, Sandbox, SandboxNotFound
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def json_server() -> Iterator[ServerProcess]:
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-logs-", dir="/var/tmp")))
    base_env = srv.env

    def env() -> dict[str, str]:
        return {**base_env(), "HUTCH_LOG_FORMAT": "json", "HUTCH_MAX_BODY_BYTES": "100000"}

    srv.env = env  # type: ignore[method-assign]
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)


def _lines(srv: ServerProcess, logger: str) -> list[dict[str, object]]:
    found = []
    for line in srv.log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == logger:
                found.append(entry)
    return found


def _wait_for_line(srv: ServerProcess, logger: str, **match: object) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in _lines(srv, logger):
            if all(entry.get(k) == v for k, v in match.items()):
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no {logger} line with {match}: {_lines(srv, logger)[-5:]}")


def test_every_answer_has_a_request_id_and_every_error_body_quotes_it(
    json_server: ServerProcess,
) -> None:
    with json_server.client() as http:
        ok = http.get("/v1/sandboxes")
        assert re.fullmatch(r"[0-9a-f]{16}", ok.headers["x-request-id"])
        mine = http.get("/v1/sandboxes", headers={"X-Request-Id": "trace-42.a:b"})
        assert mine.headers["x-request-id"] == "trace-42.a:b"  # a sane client id is kept
        for insane in ("a b", "x" * 65, "id\u00e9", "hk_../../etc"):
            r = http.get("/v1/sandboxes", headers={"X-Request-Id": insane.encode()})
            assert r.headers["x-request-id"] != insane
        errors = [
            http.get("/v1/sandboxes/sb-000000000000"),  # 404 from a service
            http.post("/v1/sandboxes", json={"cpu": "lots"}),  # 422 from validation
            http.get("/v1/no-such-route"),  # 404 from the router
            http.post("/v1/sandboxes", content=b"x" * 200_000),  # 413 from a middleware
            httpx.get(json_server.url + "/v1/sandboxes"),  # 401, no key
        ]
        for r in errors:
            assert r.status_code >= 400
            body = r.json()
            assert body["error"]["request_id"] == r.headers["x-request-id"], (r.status_code, body)
            assert int(r.headers["content-length"]) == len(r.content)
    with pytest.raises(SandboxNotFound) as caught:
        Sandbox.connect("sb-000000000000", base_url=json_server.url, api_key=json_server.api_key)
    assert caught.value.request_id and re.fullmatch(r"[0-9a-f]{16}", caught.value.request_id)
    with pytest.raises(InvalidRequest) as bad:
        Sandbox.create(base_url=json_server.url, api_key=json_server.api_key, cpu=-1)
    assert bad.value.request_id


def test_access_and_audit_logs_say_who_did_what_without_secrets(
    json_server: ServerProcess,
) -> None:
    with json_server.client() as http:
        created = http.post("/v1/keys", json={"name": "auditor"}).json()
    key_id, key = created["id"], created["key"]
    sb = Sandbox.create(base_url=json_server.url, api_key=key)
    try:
        sb.exec("echo hi")
        sb.write_file("/tmp/note.txt", "secret-free")
        sb.read_file("/tmp/note.txt")
        # A key in a path (a mistake a client can make) and a token in a query string.
        httpx.get(
            f"{json_server.url}/v1/sandboxes/{key}?token=s3cr3t-token",
            headers={"Authorization": f"Bearer {key}"},
        )
    finally:
        sb.destroy()

    access = _wait_for_line(
        json_server, "hutch.access", method="POST", path=f"/v1/sandboxes/{sb.id}/exec/stream"
    )
    assert access["status"] == 200 and access["key_id"] == key_id
    assert access["sandbox_id"] == sb.id and isinstance(access["duration_ms"], float)
    assert re.fullmatch(r"[0-9a-f]{16}", str(access["request_id"]))
    assert access["level"] == "info" and access["time"]
    text = json_server.log_path.read_text()
    assert key not in text and "s3cr3t-token" not in text
    assert "/v1/sandboxes/hk_***" in text

    # The audit line of a request is written once its answer has gone out: wait for the last one.
    _wait_for_line(json_server, "hutch.audit", action="destroy_sandbox", sandbox_id=sb.id)
    audit = [e for e in _lines(json_server, "hutch.audit") if e.get("key_id") == key_id]
    actions = [(e["action"], e["sandbox_id"], e["status"]) for e in audit]
    assert ("create_sandbox", sb.id, 201) in actions
    assert ("exec_stream", sb.id, 200) in actions or ("exec_command", sb.id, 200) in actions
    assert ("write_file", sb.id, 200) in actions
    assert ("destroy_sandbox", sb.id, 204) in actions
    assert not any(a[0] in ("read_file", "get_sandbox") for a in actions)  # reads are not audit
    # The audit log is also a file of its own under the home, one JSON object a line.
    kept = [json.loads(line) for line in (json_server.home / "audit.log").read_text().splitlines()]
    last = {"key_id": key_id, "action": "destroy_sandbox", "sandbox_id": sb.id}
    assert last.items() <= kept[-1].items()


def test_log_settings_are_checked_at_start() -> None:
    with pytest.raises(ValueError, match="text or json"):
        _from_env({"HUTCH_LOG_FORMAT": "xml"})
    with pytest.raises(ValueError, match="logger=level"):
        _from_env({"HUTCH_LOG_LEVELS": "hutch.access=loud"})
    assert _from_env({"HUTCH_LOG_LEVELS": "hutch.access=warning"}).log_levels == {
        "hutch.access": "WARNING"
    }


def _from_env(env: dict[str, str]):  # type: ignore[no-untyped-def]
    import os

    from hutch.server import ServerConfig

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return ServerConfig.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
