"""Teams, scoped keys, quotas and rate limits against a real server with real sandboxes, and
the abuse tests: a member key of team B on every route of team A's sandbox, a quota race."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from hutch.server import ServerConfig, create_app
from tests._server import HUTCH_BIN, ServerProcess

pytestmark = pytest.mark.sandbox

UNKNOWN_ID = "sb-0123456789ab"
PARAM = re.compile(r"\{([a-z_]+)(?::[a-z]+)?\}")


@dataclass
class Member:
    team: str
    key: str
    key_id: str

    def client(self, server: ServerProcess) -> httpx.Client:
        return httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        )


def make_team(admin: httpx.Client, quota: dict[str, object] | None = None) -> str:
    name = "t-" + secrets.token_hex(4)
    body: dict[str, object] = {"name": name}
    if quota is not None:
        body["quota"] = quota
    r = admin.post("/v1/teams", json=body)
    assert r.status_code == 201, r.text
    return name


def make_key(admin: httpx.Client, team: str, role: str = "member", **extra: object) -> Member:
    r = admin.post("/v1/keys", json={"name": f"{team}-{role}", "team": team, "role": role, **extra})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["team"] == team and body["role"] == role
    assert body["key"].startswith("e2b_" if extra.get("e2b") else "hk_")
    return Member(team, body["key"], body["id"])


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def team_a(admin: httpx.Client) -> Member:
    return make_key(admin, make_team(admin))


@pytest.fixture(scope="module")
def team_b(admin: httpx.Client) -> Member:
    return make_key(admin, make_team(admin))


@pytest.fixture(scope="module")
def a_sandbox(server: ServerProcess, team_a: Member, busybox_image: str) -> Iterator[str]:
    with team_a.client(server) as a:
        r = a.post("/v1/sandboxes", json={"image": busybox_image, "labels": {"suite": "teams"}})
        assert r.status_code == 201, r.text
        sandbox_id = r.json()["id"]
        # Something to find: a snapshot and an exposed port of team A's.
        assert a.post(f"/v1/sandboxes/{sandbox_id}/ports", json={"port": 8080}).status_code in (
            200,
            201,
        )
        yield sandbox_id
        a.delete(f"/v1/sandboxes/{sandbox_id}")


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for route in routes:
        if hasattr(route, "original_router"):  # an included router (FastAPI >= 0.165)
            yield from _walk(route.original_router.routes, prefix + route.include_context.prefix)
        elif isinstance(route, APIRoute | APIWebSocketRoute):
            yield prefix + route.path, route


def _routes() -> list[tuple[str, Any]]:
    """Every route of the app as the server builds it: a new one cannot slip by."""
    with tempfile.TemporaryDirectory() as home:
        app = create_app(ServerConfig(home=Path(home)))
    return list(_walk(app.routes))


# Bodies that get past validation, so the request reaches the service (unknown id: 404 there).
BODIES: dict[str, object] = {
    "/exec": {"command": "true"},
    "/exec/stream": {"command": "true"},
    "/processes": {"command": "true"},
    "/sessions": {},
    "/code": {"code": "1"},
    "/contexts": {},
    "/ports": {"port": 8080},
    "/timeout": {"timeout": 60},
    "/snapshots": {},
    "/fork": {"count": 1},
    "/buckets": {"bucket": "b", "mount_path": "/mnt/b", "endpoint": "http://127.0.0.1:1"},
    "/env": {"env": {"A": "1"}},
    "/git/checkout": {"url": "http://127.0.0.1:1/r.git"},
    "/rename": {"from": "/a", "to": "/b"},
    "/mkdir": {"path": "/a"},
    "/wait": {"port": 8080, "timeout": 1},
    "/backups": {
        "bucket": "b",
        "endpoint": "http://127.0.0.1:1",
        "credentials": {"accessKeyId": "a", "secretAccessKey": "b"},
    },
}


def _url(path: str, sandbox_id: str) -> str:
    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        return {"sandbox_id": sandbox_id, "port": "8080", "path": "tmp/x"}.get(name, "x1")

    return PARAM.sub(fill, path)


def _body_for(path: str) -> object | None:
    for suffix, body in BODIES.items():
        if path.rstrip("/").endswith(suffix) or ("{" not in suffix and suffix + "/" in path):
            return body
    return None


def test_member_of_b_gets_404_on_every_route_of_a_sandbox_of_a(
    server: ServerProcess, team_a: Member, team_b: Member, a_sandbox: str
) -> None:
    routes = [(path, r) for path, r in _routes() if "{sandbox_id}" in path]
    assert len(routes) > 40
    same_as_unknown = 0
    query = {"path": "/tmp/x"}
    with team_b.client(server) as b:
        for path, route in routes:
            if isinstance(route, APIWebSocketRoute):
                continue  # below, over a real WebSocket
            for method in sorted(route.methods or ()):
                body = _body_for(path) if method in ("POST", "PUT", "PATCH") else None
                foreign = b.request(method, _url(path, a_sandbox), json=body, params=query)
                where = f"{method} {path}"
                assert foreign.status_code == 404, (where, foreign.text)
                assert foreign.json()["error"]["code"] == "sandbox_not_found", where
                if method == "PUT" and path == "/v1/sandboxes/{sandbox_id}":
                    continue  # for an unknown id this creates one (get-or-create)
                unknown = b.request(method, _url(path, UNKNOWN_ID), json=body, params=query)
                if unknown.status_code == 404:
                    # The very same answer as for an id that does not exist.
                    assert _same(foreign) == _same(unknown).replace(UNKNOWN_ID, a_sandbox), where
                    same_as_unknown += 1
    assert same_as_unknown > 30
    # The terminal WebSocket: closed as for an unknown sandbox, nothing attached.
    ws_url = server.url.replace("http://", "ws://")
    with connect(
        f"{ws_url}/v1/sandboxes/{a_sandbox}/terminals/x1/ws",
        subprotocols=["hutch.terminal.v1", f"hutch.key.{team_b.key}"],
    ) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4404
    # ...and A's sandbox is untouched and still A's.
    with team_a.client(server) as a:
        r = a.get(f"/v1/sandboxes/{a_sandbox}")
        assert r.status_code == 200 and r.json()["status"] == "running"
        out = a.post(f"/v1/sandboxes/{a_sandbox}/exec", json={"command": "echo still-mine"})
        assert out.json()["stdout"] == "still-mine\n"


def test_lists_show_only_the_keys_team(
    server: ServerProcess, admin: httpx.Client, team_a: Member, team_b: Member, a_sandbox: str
) -> None:
    with team_a.client(server) as a, team_b.client(server) as b:
        assert a_sandbox in {s["id"] for s in a.get("/v1/sandboxes").json()["sandboxes"]}
        assert a_sandbox not in {s["id"] for s in b.get("/v1/sandboxes").json()["sandboxes"]}
        everyone = {s["id"]: s for s in admin.get("/v1/sandboxes").json()["sandboxes"]}
        assert everyone[a_sandbox]["team"] == team_a.team  # an admin key sees every team's
        snap = a.post(f"/v1/sandboxes/{a_sandbox}/snapshots", json={}).json()
        try:
            assert snap["id"] in {s["id"] for s in a.get("/v1/snapshots").json()["snapshots"]}
            assert b.get("/v1/snapshots").json()["snapshots"] == [] or snap["id"] not in {
                s["id"] for s in b.get("/v1/snapshots").json()["snapshots"]
            }
            # Another team's snapshot: unknown, also as the base of a create.
            unknown = _without_request_id(b.get("/v1/snapshots/snap-0123456789ab").json())
            foreign = b.get(f"/v1/snapshots/{snap['id']}")
            assert foreign.status_code == 404
            assert _same(foreign) == json.dumps(unknown).replace("snap-0123456789ab", snap["id"])
            r = b.post("/v1/sandboxes", json={"snapshot": snap["id"]})
            assert r.status_code == 404 and r.json()["error"]["code"] == "snapshot_not_found"
            assert b.delete(f"/v1/snapshots/{snap['id']}").status_code == 404
        finally:
            assert a.delete(f"/v1/snapshots/{snap['id']}").status_code == 204


def test_member_keys_cannot_manage_keys_or_teams(server: ServerProcess, team_b: Member) -> None:
    with team_b.client(server) as b:
        for method, path, body in (
            ("GET", "/v1/keys", None),
            ("POST", "/v1/keys", {"name": "mine", "team": team_b.team, "role": "admin"}),
            ("DELETE", f"/v1/keys/{team_b.key_id}", None),
            ("GET", "/v1/teams", None),
            ("POST", "/v1/teams", {"name": "t-mine"}),
            ("PATCH", f"/v1/teams/{team_b.team}/quota", {"max_running": 1000}),
            ("DELETE", f"/v1/teams/{team_b.team}", None),
        ):
            r = b.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"]["code"] == "forbidden"
        assert b.get("/v1/sandboxes").status_code == 200  # the key still works


def test_expired_and_revoked_keys_get_401(server: ServerProcess, admin: httpx.Client) -> None:
    team = make_team(admin)
    short = make_key(admin, team, expires_in="1s")
    with short.client(server) as c:
        assert c.get("/v1/sandboxes").status_code == 200
        time.sleep(1.2)
        r = c.get("/v1/sandboxes")
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    revoked = make_key(admin, team)
    with revoked.client(server) as c:
        assert c.get("/v1/sandboxes").status_code == 200
        assert admin.delete(f"/v1/keys/{revoked.key_id}").status_code == 204
        assert c.get("/v1/sandboxes").status_code == 401
    listed = {k["id"]: k for k in admin.get("/v1/keys").json()["keys"]}
    assert revoked.key_id not in listed and listed[short.key_id]["expires_at"] is not None
    r = admin.post("/v1/keys", json={"name": "x", "team": "t-nosuchteam"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "team_not_found"


def test_quota_race_twenty_creates_against_five(
    server: ServerProcess, admin: httpx.Client, busybox_image: str
) -> None:
    team = make_team(admin, {"max_running": 5})
    member = make_key(admin, team)

    def create(_: int) -> httpx.Response:
        with member.client(server) as c:
            return c.post("/v1/sandboxes", json={"image": busybox_image, "cpu": 0.1})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(create, range(20)))
    made = [r.json()["id"] for r in answers if r.status_code == 201]
    try:
        refused = [r for r in answers if r.status_code == 429]
        # NB: on a loaded host an admitted create may still fail to start (503, retry): it
        # was admitted all the same. Exactly 5 get past the quota.
        failed = [r for r in answers if r.status_code == 503]
        assert all(r.json()["error"]["code"] == "sandbox_start_failed" for r in failed)
        assert len(made) + len(failed) == 5 and len(made) >= 1, [r.text for r in answers]
        assert len(refused) == 15
        error = refused[0].json()["error"]
        assert error["code"] == "quota_exceeded"
        assert "running sandboxes" in error["message"] and "in use" in error["message"]
        with member.client(server) as c:
            assert len(c.get("/v1/sandboxes").json()["sandboxes"]) == len(made)
            for _ in range(10):  # fill it up again (what failed to start is gone)
                if len(made) == 5:
                    break
                r = c.post("/v1/sandboxes", json={"image": busybox_image, "cpu": 0.1})
                if r.status_code == 201:
                    made.append(r.json()["id"])
                else:
                    assert r.status_code == 503, r.text
            r = c.post("/v1/sandboxes", json={"image": busybox_image, "cpu": 0.1})
            assert r.status_code == 429 and "5 in use" in r.json()["error"]["message"]
            # Stopped ones hold no cpu: stop one, and one more fits.
            assert c.post(f"/v1/sandboxes/{made[0]}/stop").status_code == 200
            r = c.post("/v1/sandboxes", json={"image": busybox_image, "cpu": 0.1})
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
            # ...and starting the stopped one again would make 6: refused, it stays stopped.
            r = c.post(f"/v1/sandboxes/{made[0]}/start")
            assert r.status_code == 429 and "this start" in r.json()["error"]["message"]
            assert c.get(f"/v1/sandboxes/{made[0]}").json()["status"] == "stopped"
    finally:
        with member.client(server) as c:
            for sandbox_id in made:
                c.delete(f"/v1/sandboxes/{sandbox_id}")


def test_cpu_memory_lifetime_and_snapshot_quotas(
    server: ServerProcess, admin: httpx.Client, busybox_image: str
) -> None:
    team = make_team(admin, {"max_cpu": 1, "max_memory_mb": 512, "max_lifetime": "10m"})
    member = make_key(admin, team)
    with member.client(server) as c:
        r = c.post("/v1/sandboxes", json={"image": busybox_image, "cpu": 1.5})
        assert r.status_code == 429 and "max_cpu 1" in r.json()["error"]["message"]
        r = c.post("/v1/sandboxes", json={"image": busybox_image, "memory_mb": 1024})
        assert r.status_code == 429 and "memory_mb" in r.json()["error"]["message"]
        r = c.post("/v1/sandboxes", json={"image": busybox_image, "timeout": "1h"})
        assert r.status_code == 429 and "at most 600s" in r.json()["error"]["message"]
        # No timeout given: the team's longest, not the server's default hour.
        r = c.post("/v1/sandboxes", json={"image": busybox_image, "memory_mb": 256})
        assert r.status_code == 201, r.text
        sandbox_id = r.json()["id"]
        try:
            assert r.json()["timeout"] == 600
            r = c.put(f"/v1/sandboxes/{sandbox_id}/timeout", json={"timeout": 3600})
            assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
            r = c.put(f"/v1/sandboxes/{sandbox_id}/timeout", json={"timeout": 300})
            assert r.status_code == 200
            admin.patch(f"/v1/teams/{team}/quota", json={"max_snapshots": 1})
            first = c.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={})
            assert first.status_code == 201
            r = c.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={})
            assert r.status_code == 429 and "snapshots quota" in r.json()["error"]["message"]
            c.delete(f"/v1/snapshots/{first.json()['id']}")
        finally:
            c.delete(f"/v1/sandboxes/{sandbox_id}")


def test_rate_limit_answers_429_with_retry_after(
    server: ServerProcess, admin: httpx.Client
) -> None:
    team = make_team(admin)
    r = admin.patch(f"/v1/teams/{team}/quota", json={"rate_per_second": 0.5, "rate_burst": 3})
    assert r.status_code == 200 and r.json()["quota"]["rate_burst"] == 3
    member = make_key(admin, team)
    other = make_key(admin, team)
    with member.client(server) as c:
        codes = [c.get("/v1/sandboxes").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/v1/sandboxes")
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 2
    with other.client(server) as c:  # per key: another key of the team has its own bucket
        assert c.get("/v1/sandboxes").status_code == 200


def test_cpu_above_the_hosts_cores_is_422(server: ServerProcess, team_b: Member) -> None:
    with team_b.client(server) as b:
        r = b.post("/v1/sandboxes", json={"cpu": 64})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "cpu_above_host" and "cores" in r.json()["error"]["message"]


def test_team_images_are_private_and_shared_ones_read_only(
    server: ServerProcess, admin: httpx.Client, team_a: Member, team_b: Member, busybox_image: str
) -> None:
    name = "img-" + secrets.token_hex(3)
    with team_a.client(server) as a, team_b.client(server) as b:
        r = a.post(f"/v1/images/{busybox_image}/tags", json={"name": name})
        assert r.status_code == 201, r.text
        try:
            assert name in {i["name"] for i in a.get("/v1/images").json()["images"]}
            assert name not in {i["name"] for i in b.get("/v1/images").json()["images"]}
            assert b.get(f"/v1/images/{name}").status_code == 404
            r = b.post("/v1/sandboxes", json={"image": name})
            assert r.status_code == 404 and r.json()["error"]["code"] == "image_not_found"
            r = b.post(f"/v1/images/{busybox_image}/tags", json={"name": name})
            assert r.status_code == 409 and r.json()["error"]["code"] == "image_name_taken"
            # The shared images: usable by all, replaced or removed by an admin only.
            assert busybox_image in {i["name"] for i in b.get("/v1/images").json()["images"]}
            r = b.delete(f"/v1/images/{busybox_image}")
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        finally:
            assert a.delete(f"/v1/images/{name}").status_code == 204


def test_teams_crud(admin: httpx.Client) -> None:
    team = make_team(admin, {"max_running": 2})
    assert admin.get(f"/v1/teams/{team}").json()["quota"]["max_running"] == 2
    assert team in {t["name"] for t in admin.get("/v1/teams").json()["teams"]}
    r = admin.post("/v1/teams", json={"name": team})
    assert r.status_code == 409 and r.json()["error"]["code"] == "team_exists"
    r = admin.patch(f"/v1/teams/{team}/quota", json={"max_running": None, "max_cpu": 4})
    assert r.json()["quota"] == {**r.json()["quota"], "max_running": None, "max_cpu": 4.0}
    key = make_key(admin, team)
    assert admin.delete(f"/v1/teams/{team}").status_code == 204
    assert admin.get(f"/v1/teams/{team}").json()["error"]["code"] == "team_not_found"
    assert key.key_id not in {k["id"] for k in admin.get("/v1/keys").json()["keys"]}
    r = admin.delete("/v1/teams/default")
    assert r.status_code == 409 and r.json()["error"]["code"] == "team_not_empty"
    r = admin.post("/v1/teams", json={"name": "Bad Name"})
    assert r.status_code == 422


def test_e2b_api_is_scoped_too(server: ServerProcess, admin: httpx.Client) -> None:
    """E2B keys belong to teams: another team's sandbox is unknown on every E2B route."""
    from hutch.e2b._control import build_control_app

    a = make_key(admin, make_team(admin), e2b=True)
    b = make_key(admin, make_team(admin), e2b=True)
    assert a.key.startswith("e2b_")
    r = httpx.post(f"{server.url}/sandboxes", json={"templateID": "base"}, headers=_e2b(a))
    assert r.status_code == 201, r.text
    sandbox_id = r.json()["sandboxID"]
    try:
        routes = [
            (path, route)
            for path, route in _walk(build_control_app().routes)
            if "{sandbox_id}" in path
        ]
        assert len(routes) >= 8
        for path, route in routes:
            for method in sorted(route.methods or ()):
                body = {"timeout": 60, "duration": 60} if method == "POST" else None
                foreign = httpx.request(
                    method, server.url + _url(path, sandbox_id), json=body, headers=_e2b(b)
                )
                unknown = httpx.request(
                    method, server.url + _url(path, UNKNOWN_ID), json=body, headers=_e2b(b)
                )
                assert foreign.status_code == 404, (method, path, foreign.text)
                assert _same(foreign) == _same(unknown).replace(UNKNOWN_ID, sandbox_id)
        listed = httpx.get(f"{server.url}/v2/sandboxes", headers=_e2b(b)).json()
        assert sandbox_id not in {s["sandboxID"] for s in listed}
        listed = httpx.get(f"{server.url}/v2/sandboxes", headers=_e2b(a)).json()
        assert sandbox_id in {s["sandboxID"] for s in listed}
        # Across the two front doors: the E2B sandbox is team A's on /v1 as well.
        with b.client(server) as hutch_b:
            assert hutch_b.get(f"/v1/sandboxes/{sandbox_id}").status_code == 404
        with a.client(server) as hutch_a:
            assert hutch_a.get(f"/v1/sandboxes/{sandbox_id}").status_code == 200
    finally:
        httpx.delete(f"{server.url}/sandboxes/{sandbox_id}", headers=_e2b(a))


def _e2b(member: Member) -> dict[str, str]:
    return {"X-API-Key": member.key}


def test_cli_and_sdk_manage_teams_and_keys(server: ServerProcess, busybox_image: str) -> None:
    from hutch import Client, QuotaExceeded, Sandbox

    env = {"HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key, "PATH": "/usr/bin:/bin"}

    def hutch(*argv: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        run_env = {**env, "HUTCH_API_KEY": key} if key else env
        return subprocess.run(
            [str(HUTCH_BIN), *argv], env=run_env, capture_output=True, text=True, timeout=60
        )

    team = "t-" + secrets.token_hex(4)
    assert hutch("teams", "create", team, "--running", "1").returncode == 0
    made = hutch("keys", "create", "--team", team, "--role", "member", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("hk_") and f"team {team}, member" in made.stderr
    listed = hutch("keys", "ls").stdout
    assert team in listed and "member" in listed and key not in listed
    assert "1" in hutch("teams", "quota", team).stdout.split("running", 1)[1].splitlines()[0]
    assert hutch("teams", "quota", team, "--cpu", "2", "--running", "none").returncode == 0
    quota = hutch("teams", "quota", team).stdout
    assert "cpu        2" in quota and "running    -" in quota
    # A member key's CLI: refused for admin commands, with the server's message.
    refused = hutch("teams", "ls", key=key)
    assert refused.returncode != 0 and "admin key" in refused.stderr

    with Client(base_url=server.url, api_key=server.api_key) as admin_client:
        admin_client.set_team_quota(team, max_running=1)
        assert {t.name: t for t in admin_client.list_teams()}[team].quota["max_running"] == 1
        first = Sandbox.create(image=busybox_image, base_url=server.url, api_key=key)
        try:
            with pytest.raises(QuotaExceeded, match="running sandboxes"):
                Sandbox.create(image=busybox_image, base_url=server.url, api_key=key)
        finally:
            first.destroy()
        key_id = next(k.id for k in admin_client.list_keys() if k.team == team)
    assert hutch("keys", "revoke", key_id).returncode == 0
    assert hutch("ls", key=key).returncode != 0
    assert hutch("teams", "rm", team).returncode == 0
    assert team not in hutch("teams", "ls").stdout


def _without_request_id(body: dict) -> dict:  # type: ignore[type-arg]
    """An error body without its request id (every answer has its own)."""
    if isinstance(body.get("error"), dict):
        body = {**body, "error": {k: v for k, v in body["error"].items() if k != "request_id"}}
    return body


def _same(answer: httpx.Response) -> str:
    """What must be identical between two answers: the body, less its request id."""
    try:
        body = answer.json()
    except ValueError:
        return answer.text
    return json.dumps(_without_request_id(body)) if isinstance(body, dict) else answer.text
