"""The exec fast path (server/_exec_front.py) answers as FastAPI's exec routes do: the same
statuses, bodies and error codes for the same requests, one authorization per request, and
what it cannot answer (a body that does not validate, another content type) reaches FastAPI.

In-process, over the real agent run as a host process (tests/test_routes_inprocess.py's
fakes), each request sent twice: to an app with the fast path and to one without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hutch.sdk._exec import ExecStreamDecoder, OutputCollector
from hutch.server._app import install_error_handlers
from hutch.server._exec_front import ExecFront
from hutch.server.routes._exec import build_exec_router
from hutch.server.services._caller import Caller
from hutch.server.services._ratelimit import RateLimits
from hutch.server.store._sqlite import SqliteStore
from tests.test_routes_inprocess import KEY, LIVE, FakeSandboxes, FakeServices, agent

__all__ = ["agent"]  # the module-scoped host agent fixture

Apps = tuple[httpx.AsyncClient, httpx.AsyncClient, ExecFront, FakeServices]


@pytest.fixture()
async def apps(agent: Any, tmp_path: Path) -> AsyncIterator[Apps]:
    sandboxes = FakeSandboxes(agent.socket_path, tmp_path / "no-agent.sock")
    store = SqliteStore(tmp_path / "hutch.db")
    services = FakeServices(sandboxes, store)
    clients = []
    front: ExecFront | None = None
    for fast in (True, False):
        app = FastAPI()
        install_error_handlers(app)
        router = build_exec_router()
        app.include_router(router)
        if fast:
            app.add_middleware(ExecFront, routes=router.routes)
        app.state.services = services
        clients.append(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://hutch.test",
                headers={"Authorization": f"Bearer {KEY}"},
            )
        )
    fast_client, plain_client = clients
    await fast_client.get("/")  # builds the middleware stack, so that the front exists
    stack: Any = fast_client._transport.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(stack, ExecFront):
        stack = stack.app
    front = stack
    yield fast_client, plain_client, front, services
    for c in clients:
        await c.aclose()
    await sandboxes.gateway.close()
    store.close()


def _frames(content: bytes) -> tuple[str, str, int | None]:
    decoder, collector = ExecStreamDecoder(), OutputCollector()
    for event in decoder.feed(content):
        collector.add(event)
    decoder.close()
    result = collector.result()
    return result.stdout, result.stderr, result.exit_code


CASES: list[tuple[str, dict[str, Any]]] = [
    ("exec", {"json": {"command": "echo out; echo err >&2; exit 3"}}),
    ("exec", {"json": {"argv": ["printf", "%s", "ünï"]}}),
    ("exec", {"json": {"command": "true"}, "headers": {"Authorization": ""}}),
    ("exec", {"json": {"command": "true"}, "headers": {"Authorization": "Bearer nope"}}),
    ("exec", {"json": {"command": "true"}, "headers": {"Authorization": "", "X-Api-Key": KEY}}),
    ("exec", {"json": {"command": "true"}, "path": "/v1/sandboxes/sb-nope/exec"}),
    ("exec", {"json": {"command": "true"}, "path": "/v1/sandboxes/sb-gone/exec"}),
    ("exec", {"json": {"command": "true", "argv": ["true"]}}),
    ("exec", {"json": {"command": "true", "bogus": 1}}),
    ("exec", {"json": {"command": "true", "timeout": -1}}),
    ("exec", {"json": {"command": "cat", "stdin": "not base64!"}}),
    ("exec", {"json": [1, 2]}),
    ("exec", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
    ("exec", {"content": b'{"command": "true"}', "headers": {"Content-Type": "text/plain"}}),
    ("exec", {"content": b'{"command": "true"}'}),
    ("exec", {"json": {"command": "true"}, "headers": {"Authorization": ""}, "bad": True}),
    ("stream", {"json": {"command": "echo streamed; exit 2"}}),
    ("stream", {"json": {"command": "true"}, "headers": {"Authorization": ""}}),
    ("stream", {"json": {"command": "true"}, "path": "/v1/sandboxes/sb-nope/exec/stream"}),
    ("stream", {"json": {"argv": []}}),
]


@pytest.mark.parametrize(("kind", "case"), CASES)
async def test_the_fast_path_answers_as_fastapi_does(
    apps: Apps, kind: str, case: dict[str, Any]
) -> None:
    fast, plain, _, _ = apps
    case = dict(case)
    path = case.pop("path", f"/v1/sandboxes/{LIVE}/exec" + ("/stream" if kind == "stream" else ""))
    if case.pop("bad", False):
        case["json"] = {"command": 1}  # no key and a bad body: the key is checked first
    a = await fast.post(path, **case)
    b = await plain.post(path, **case)
    assert a.status_code == b.status_code, (a.text, b.text)
    if a.status_code == 200 and kind == "stream":
        assert _frames(a.content) == _frames(b.content)
        assert a.headers["content-type"] == b.headers["content-type"]
    elif a.status_code == 200:
        ja, jb = a.json(), b.json()
        ja.pop("duration")
        jb.pop("duration")
        assert ja == jb
    else:
        assert a.json() == b.json()
        assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate")


async def test_it_answers_the_common_case_and_hands_on_the_rest(apps: Apps) -> None:
    fast, _, front, _ = apps
    r = await fast.post(f"/v1/sandboxes/{LIVE}/exec", json={"command": "echo hi"})
    assert r.json()["stdout"] == "hi\n"
    r = await fast.post(f"/v1/sandboxes/{LIVE}/exec/stream", json={"command": "echo hi"})
    assert _frames(r.content)[0] == "hi\n"
    assert front.answered == 2
    r = await fast.post(f"/v1/sandboxes/{LIVE}/exec", json={"command": 5})
    assert r.status_code == 422
    assert front.answered == 2, "a body that does not validate is FastAPI's to answer"


def _as_member(services: FakeServices, team: str) -> None:
    """Every key is a member of `team` (an admin is never rate limited nor kept out)."""

    def member(key: str | None) -> Caller:
        return Caller(key_id="k-1", team=team, role="member")

    services.keys.static_caller = member  # type: ignore[method-assign,assignment]


async def test_its_rate_limit_takes_one_token_per_request(apps: Apps) -> None:
    """A request is authorized once, on one path: with a burst of 3, exactly 3 pass."""
    fast, _, _, services = apps
    _as_member(services, "default")
    services.rate_limits = RateLimits(0.001, 3)
    codes = [
        (await fast.post(f"/v1/sandboxes/{LIVE}/exec", json={"command": "true"})).status_code
        for _ in range(3)
    ]
    codes.append((await fast.post(f"/v1/sandboxes/{LIVE}/exec", json={"command": 5})).status_code)
    assert codes == [200, 200, 200, 429], "a request was charged twice, or not at all"


async def test_another_teams_sandbox_is_not_found(apps: Apps) -> None:
    fast, plain, front, services = apps
    _as_member(services, "other")
    services.store.get_sandbox = lambda sid: type("R", (), {"team": "default"})()  # type: ignore[method-assign,assignment]
    for client in (fast, plain):
        r = await client.post(f"/v1/sandboxes/{LIVE}/exec", json={"command": "true"})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "sandbox_not_found"
    assert front.answered == 1
