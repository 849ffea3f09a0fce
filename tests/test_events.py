"""Sandbox events (GET /v1/sandboxes/{id}/events, sb.events()): a real sandbox's life, in
order, resumable from any point, visible only to whom can see the sandbox."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from hutch import InvalidRequest, Sandbox, SandboxEvent, SandboxNotFound
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


def _follow(sb: Sandbox, into: list[SandboxEvent]) -> threading.Thread:
    def run() -> None:
        for event in sb.events(timeout=120):
            into.append(event)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for(events: list[SandboxEvent], kind: str, timeout: float = 10.0) -> SandboxEvent:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events:
            if event.type == kind:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no {kind!r} event in {[e.type for e in events]}")


def test_a_sandbox_life_arrives_in_order_live_and_again_from_any_point(
    server: ServerProcess,
) -> None:
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key, memory_mb=256)
    live: list[SandboxEvent] = []
    follower = _follow(sb, live)
    sb.pause()
    _wait_for(live, "paused")
    sb.resume()
    r = sb.exec("python3 -c 'b = bytearray(600 * 1024**2)'")
    assert r.oom_killed, r
    oom = _wait_for(live, "oom_killed", timeout=5)
    assert oom.data["command"] == "python3" and oom.data["count"] == 1
    assert isinstance(oom.data["host_pid"], int)
    assert sb.exec("echo alive").stdout == "alive\n"  # an OOM kill is an event, not a death
    kept = list(sb.events(follow=False))
    assert list(sb.events(after=3, follow=False)) == kept[3:]
    sb.destroy()
    follower.join(15)
    assert not follower.is_alive(), "the stream did not end after 'destroyed'"

    kinds = [e.type for e in live]
    assert kinds == ["created", "started", "paused", "resumed", "oom_killed", "destroyed"]
    assert [e.seq for e in live] == list(range(1, len(live) + 1))
    assert live[2].reason == "paused by request"
    # What was kept before the destroy is what was seen live.
    assert kept == live[:-1]
    with pytest.raises(SandboxNotFound):
        list(sb.events(follow=False))  # gone: its events with it


def test_resuming_from_an_offset_loses_nothing(server: ServerProcess) -> None:
    with Sandbox.create(base_url=server.url, api_key=server.api_key) as sb:
        sb.pause()
        sb.resume()
        sb.stop()
        sb.start()
        everything = list(sb.events(follow=False))
        assert [e.type for e in everything] == [
            "created",
            "started",
            "paused",
            "resumed",
            "stopped",
            "started",
        ]
        for k in range(len(everything) + 1):
            assert list(sb.events(after=k, follow=False)) == everything[k:]
        # The raw stream: Last-Event-ID (what browsers' EventSource send back) works as after=.
        headers = {"Authorization": f"Bearer {server.api_key}", "Last-Event-ID": "4"}
        r = httpx.get(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert "id: 5\nevent: stopped\n" in r.text and "id: 4\n" not in r.text
        # A live follower that joins late gets the backlog, then the new ones.
        live: list[SandboxEvent] = []
        _follow(sb, live)
        sb.pause()
        deadline = time.monotonic() + 10
        while len(live) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live[:6] == everything and live[6].type == "paused" and live[6].seq == 7


def test_events_of_a_sandbox_one_cannot_see_are_404_and_bad_ids_are_refused(
    server: ServerProcess,
) -> None:
    auth = {"Authorization": f"Bearer {server.api_key}"}
    r = httpx.get(f"{server.url}/v1/sandboxes/sb-000000000000/events", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "sandbox_not_found"
    r = httpx.get(f"{server.url}/v1/sandboxes/sb-000000000000/events")
    assert r.status_code == 401
    with Sandbox.create(base_url=server.url, api_key=server.api_key) as sb:
        bad = {**auth, "Last-Event-ID": "x; DROP TABLE"}
        r = httpx.get(f"{server.url}/v1/sandboxes/{sb.id}/events", headers=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        with pytest.raises(InvalidRequest):
            list(sb.events(after=-1, follow=False))


def test_a_new_sandbox_with_a_destroyed_ones_id_has_none_of_its_history(
    server: ServerProcess,
) -> None:
    sb = Sandbox.get_or_create("events-reused-id", base_url=server.url, api_key=server.api_key)
    sb.pause()
    sb.destroy()
    again = Sandbox.get_or_create("events-reused-id", base_url=server.url, api_key=server.api_key)
    try:
        assert [e.type for e in again.events(follow=False)] == ["created", "started"]
    finally:
        again.destroy()
