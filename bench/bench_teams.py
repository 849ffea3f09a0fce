"""What teams and scoped keys cost a request: the auth dependency resolves the key to its
team and role, takes a token from the key's rate bucket and checks the sandbox's team.

Run as root (it starts a server and one busybox sandbox):

    .venv/bin/python bench/bench_teams.py [--n 2000]

Rows, all in the same run against one server: `GET /healthz` (no auth: the floor),
`GET /v1/sandboxes/{id}` with the server's static admin key (no stored key to look up, sees
every team), and with a member key of a team that has a rate limit (key lookup, team quota,
token bucket, the sandbox's team checked). Then a quota race: 20 concurrent creates against
`max_running: 5`, its wall time and how many passed. Last, the auth step alone, in process
(`KeyChecker.caller` + rate bucket + the sandbox path check on a store of 1000 sandboxes),
for the static key (no store read) and a member key (the key's and the sandbox's rows read).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench._stats import report
from hutch.runtime import ImageStore
from tests._server import SHARED_IMAGES, ServerProcess
from tests.support.busybox import add_busybox_image


def timed(client: httpx.Client, path: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path)
        samples.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return samples


def authorize_in_process(n: int) -> None:
    from hutch.server.services._keys import KeyChecker, create_key
    from hutch.server.services._ratelimit import RateLimits
    from hutch.server.services._teams import Teams
    from hutch.server.store._sqlite import SandboxRecord, SqliteStore
    from hutch.server.store._teams import Quota, TeamRecord

    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "s.db")
        store.insert_team(TeamRecord("web", "t", Quota(rate_per_second=1e6, rate_burst=10**6)))
        for i in range(1000):
            record = SandboxRecord(
                id=f"sb-{i}", status="running", image="d", image_id="i", created_at="t"
            )
            record.team = "web" if i % 2 else "default"
            store.insert_sandbox(record)
        member = create_key(store, "m", team="web", role="member").key
        keys, teams, limits = KeyChecker(store, "hk_static"), Teams(store), RateLimits(None, None)
        for name, key in (("static admin key", "hk_static"), ("member key", member)):
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                caller = keys.caller(key)
                limits.take(caller, teams.quota(caller.team))
                teams.check_sandbox_path(caller, {"sandbox_id": "sb-1"})
                samples.append(time.perf_counter() - t0)
            print(report(f"authorize() in process, {name}", samples))
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    add_busybox_image(ImageStore(SHARED_IMAGES), name="busybox")
    home = Path(tempfile.mkdtemp(prefix="hutch-bench-teams-", dir="/var/tmp"))
    server = ServerProcess(home)
    try:
        server.start(timeout=300)  # NB: a loaded host takes a while to mount the pool
        with server.client() as admin:
            team = "bench-" + secrets.token_hex(3)
            quota = {"rate_per_second": 1e6, "rate_burst": 1000000, "max_running": 5}
            assert admin.post("/v1/teams", json={"name": team, "quota": quota}).status_code == 201
            key = admin.post("/v1/keys", json={"name": "bench", "team": team}).json()["key"]
            member = httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            )
            sandbox = member.post("/v1/sandboxes", json={"image": "busybox"}).json()["id"]
            path = f"/v1/sandboxes/{sandbox}"
            for client, p in ((admin, "/healthz"), (admin, path), (member, path)):
                timed(client, p, 100)  # warm up
            print(f"load average before: {os.getloadavg()}")
            print(report("GET /healthz (no auth, baseline)", timed(admin, "/healthz", args.n)))
            print(report("GET /v1/sandboxes/{id}, static admin key", timed(admin, path, args.n)))
            print(report("GET /v1/sandboxes/{id}, member key", timed(member, path, args.n)))
            member.delete(path)

            def create(_: int) -> int:
                with httpx.Client(
                    base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
                ) as c:
                    return c.post(
                        "/v1/sandboxes", json={"image": "busybox", "cpu": 0.1}
                    ).status_code

            t0 = time.perf_counter()
            with ThreadPoolExecutor(20) as pool:
                codes = list(pool.map(create, range(20)))
            wall = time.perf_counter() - t0
            print(
                f"quota race: 20 concurrent creates, max_running 5: {codes.count(201)} made, "
                f"{codes.count(429)} refused (429), {codes.count(503)} admitted but failed to "
                f"start (503), wall {wall * 1000:.0f} ms"
            )
            for s in member.get("/v1/sandboxes").json()["sandboxes"]:
                member.delete(f"/v1/sandboxes/{s['id']}")
            authorize_in_process(args.n * 10)
            print(f"load average after: {os.getloadavg()}")
    finally:
        server.stop()
        from tests.conftest import _cleanup_home

        _cleanup_home(server)


if __name__ == "__main__":
    main()
