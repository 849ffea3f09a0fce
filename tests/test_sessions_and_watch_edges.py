"""Sessions and file watches at their edges, through the raw HTTP API: bad and foreign ids,
missing and wrong watch targets, symlinks. Each wrong call is a 4xx with a stable code."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hutch import Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def two(http: httpx.Client) -> Iterator[tuple[str, str]]:
    ids = [http.post("/v1/sandboxes", json={"labels": {"suite": "edges"}}).json()["id"]]
    ids.append(http.post("/v1/sandboxes", json={"labels": {"suite": "edges"}}).json()["id"])
    yield ids[0], ids[1]
    for sid in ids:
        http.delete(f"/v1/sandboxes/{sid}")


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def test_session_ids_bad_foreign_and_gone(http: httpx.Client, two: tuple[str, str]) -> None:
    a, b = two
    base_a, base_b = f"/v1/sandboxes/{a}/sessions", f"/v1/sandboxes/{b}/sessions"
    assert http.post(base_a, json={"id": "mine"}).status_code == 201
    assert _code(http.post(base_a, json={"id": "mine"})) == (409, "session_exists")
    # Ids that cannot be one: refused with what an id may be, not a 500.
    for bad in ["", "a/b", "x" * 129, "a\x00b", " ", "é", "a b"]:
        r = http.post(base_a, json={"id": bad})
        assert _code(r) == (422, "invalid_request"), (bad, r.text)
        assert "1-128 characters" in r.json()["error"]["message"]
    # A session id means nothing in another sandbox: not found there, untouched here.
    assert _code(http.post(f"{base_b}/mine/exec", json={"command": "echo hi"})) == (
        404,
        "session_not_found",
    )
    assert _code(http.delete(f"{base_b}/mine")) == (404, "session_not_found")
    assert [s["id"] for s in http.get(base_b).json()["sessions"]] == []
    r = http.post(f"{base_a}/mine/exec", json={"command": "echo still-mine"})
    assert r.status_code == 200 and r.json()["stdout"] == "still-mine\n"
    # Unknown, wrong body, gone.
    assert _code(http.post(f"{base_a}/nope/exec", json={"command": "true"})) == (
        404,
        "session_not_found",
    )
    assert _code(http.post(f"{base_a}/mine/exec", json={"command": 5})) == (422, "invalid_request")
    assert _code(http.post(base_a, json={"cwd": "/nonexistent"})) == (422, "cwd_not_found")
    assert http.delete(f"{base_a}/mine").status_code == 204
    assert _code(http.post(f"{base_a}/mine/exec", json={"command": "true"})) == (
        404,
        "session_not_found",
    )
    assert _code(http.delete(f"{base_a}/mine")) == (404, "session_not_found")
    # An unknown sandbox is its own 404.
    assert _code(http.post("/v1/sandboxes/sb-000000000000/sessions", json={})) == (
        404,
        "sandbox_not_found",
    )


def _watch_error(http: httpx.Client, sid: str, path: str) -> tuple[int, str]:
    with http.stream(
        "POST", f"/v1/sandboxes/{sid}/files/watch", json={"path": path}, timeout=30
    ) as r:
        r.read()
        return _code(r)


def test_watch_refuses_missing_paths_files_and_dangling_links(
    http: httpx.Client, two: tuple[str, str]
) -> None:
    a, _ = two
    setup = "mkdir -p /tmp/wd && touch /tmp/wf && ln -sfn /nowhere /tmp/wdangling"
    assert http.post(f"/v1/sandboxes/{a}/exec", json={"command": setup}).json()["exit_code"] == 0
    assert _watch_error(http, a, "/tmp/no-such-dir") == (404, "file_not_found")
    assert _watch_error(http, a, "/tmp/wf") == (409, "not_a_directory")
    assert _watch_error(http, a, "/tmp/wdangling") == (404, "file_not_found")
    assert _watch_error(http, "sb-000000000000", "/tmp") == (404, "sandbox_not_found")


def test_watch_through_a_symlink_to_a_directory_reports_changes(
    server: ServerProcess, two: tuple[str, str]
) -> None:
    box = Sandbox.connect(two[0], base_url=server.url, api_key=server.api_key)
    assert box.exec("mkdir -p /tmp/real && ln -sfn /tmp/real /tmp/link").exit_code == 0
    events: list[Any] = []
    seen = threading.Event()

    def consume() -> None:
        for ev in box.watch("/tmp/link"):
            events.append(ev)
            seen.set()
            return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    # The watch is set up once the request is answered; poke until it reports.
    deadline = time.monotonic() + 30
    while not seen.is_set() and time.monotonic() < deadline:
        box.exec("touch /tmp/real/poke")
        seen.wait(0.3)
    assert seen.is_set(), "a watch through a symlink never reported the target's changes"
    assert events[0].path == "/tmp/link/poke", events
