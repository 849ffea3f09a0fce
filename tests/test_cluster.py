"""A real local cluster (scripts/cluster): three node daemons in their own network namespaces,
two API replicas on one database. Placement, exec and previews on every node, the node API's
token, sandboxes kept off the node network, drain, node loss and return."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from hutch.sdk import APIError, Client, Sandbox, SandboxNotFound
from tests._server import wait_for
from tests.support.failure_notes import FAILURE_NOTES
from tests.support.s3 import S3Server

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parent.parent
# Another run's cluster on this machine (an engineer's next to CI's) needs its own directory,
# names, node network and API ports: HUTCH_TEST_CLUSTER_DIR, _PREFIX, _NET, _API_PORT.
DIR = Path(os.environ.get("HUTCH_TEST_CLUSTER_DIR", "/var/lib/hutch-cluster-test"))
PREFIX = os.environ.get("HUTCH_TEST_CLUSTER_PREFIX", "htest")
NET = os.environ.get("HUTCH_TEST_CLUSTER_NET", "10.250.7")
API_PORT = int(os.environ.get("HUTCH_TEST_CLUSTER_API_PORT", "7090"))
# On the bridge, outside the node network: sandboxes may reach it.
CONTROL_IP = f"10.249.{NET.rsplit('.', 1)[-1]}.1"
SMALL = {"cpu": 1.0, "memory_mb": 512, "disk_mb": 512}
# The fake model API the nodes' egress proxies send api.anthropic.com to (on the bridge).
UPSTREAM_PORT = API_PORT + 9


@dataclass
class Cluster:
    urls: list[str]
    key: str
    env: dict[str, str]

    def client(self, replica: int = 0) -> Client:
        return Client(base_url=self.urls[replica], api_key=self.key)

    def node_of(self, sandbox_id: str) -> str:
        url = f"postgresql:///hutch?host={DIR / 'pg'}&user=postgres"
        with psycopg.connect(url) as db:
            row = db.execute(
                "SELECT node FROM sandbox_nodes WHERE sandbox_id = %s", (sandbox_id,)
            ).fetchone()
        assert row is not None, f"{sandbox_id} has no node"
        return str(row[0])

    def nodes(self) -> dict[str, dict[str, object]]:
        with self.client() as c:
            return {n["name"]: n for n in c.request("GET", "/v1/nodes")["nodes"]}

    def script(self, *args: str) -> str:
        done = subprocess.run(
            [str(ROOT / "scripts/cluster"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    env = {
        **os.environ,
        "HUTCH_CLUSTER_DIR": str(DIR),
        "HUTCH_CLUSTER_PREFIX": PREFIX,
        "HUTCH_CLUSTER_NET": NET,
        "HUTCH_CLUSTER_API_PORT": str(API_PORT),
        # Small nodes, so that capacity runs out after a few sandboxes.
        "HUTCH_NODE_CPU": "2",
        "HUTCH_NODE_MEMORY_MB": "2048",
        "HUTCH_NODE_DISK_MB": "2048",
        # Read by `hutch node` (its egress proxy), as by `hutch serve` in test_egress.py.
        "HUTCH_EGRESS_UPSTREAMS": f"api.anthropic.com=http://{NET}.1:{UPSTREAM_PORT}",
    }
    c = Cluster(urls=[], key="", env=env)
    try:
        out = c.script("up")
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        c.urls = [values["HUTCH_URL"], values["HUTCH_URL_2"]]
        c.key = values["HUTCH_API_KEY"]
        yield c
    finally:
        subprocess.run(
            [str(ROOT / "scripts/cluster"), "down"], env=env, capture_output=True, timeout=180
        )


LOG_LINES = 80  # of each daemon's log, in the report of a failed test


@pytest.fixture(autouse=True)
def _daemon_logs_on_failure(request: pytest.FixtureRequest) -> None:
    """A failed test's report ends with what each node and replica logged meanwhile: in CI,
    the cluster is gone by the time anyone looks."""
    start = {p.name: p.stat().st_size for p in DIR.glob("*.log")}

    def logs() -> tuple[str, str]:
        parts = []
        for path in sorted(DIR.glob("*.log")):
            with path.open("rb") as f:
                f.seek(start.get(path.name, 0))
                lines = f.read().decode(errors="replace").splitlines()[-LOG_LINES:]
            parts.append(f"--- {path.name} (last {len(lines)} lines of this test's) ---")
            parts += lines
        return "cluster daemons' logs", "\n".join(parts)

    request.node.stash.setdefault(FAILURE_NOTES, []).append(logs)


def _destroy_all(cluster: Cluster) -> None:
    with cluster.client() as c:
        for info in Sandbox.list(client=c):
            with contextlib.suppress(APIError):
                Sandbox.connect(info.id, client=c).destroy()


def test_node_api_refuses_calls_without_the_node_token(cluster: Cluster) -> None:
    url = f"http://{NET}.11:7171/node/v1/info"
    token = (DIR / "node_token").read_text().strip()
    log_before = (DIR / "n1.log").stat().st_size  # the log outlives earlier runs
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        r = httpx.get(url, headers=headers, timeout=5)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "node_unauthorized"
    assert (
        httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
    )
    # Logged with its level, as the API's lines are: an operator greps both for WARNING.
    refused = [
        ln
        for ln in (DIR / "n1.log").read_bytes()[log_before:].decode().splitlines()
        if "missing or wrong node token" in ln
    ]
    assert refused and all(" WARNING hutch." in ln for ln in refused), refused[-3:]
    # The tunnel listener too: a CONNECT to an agent without the token gets 401, no bytes.
    done = subprocess.run(
        ["curl", "-s", "-m", "5", "-p", "-x", f"http://{NET}.11:7172", "http://agent/x"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0


def test_placement_spreads_and_respects_capacity(cluster: Cluster) -> None:
    with cluster.client() as c:
        sandboxes = [Sandbox.create(client=c, **SMALL) for _ in range(3)]  # type: ignore[arg-type]
        try:
            assert sorted(cluster.node_of(sb.id) for sb in sandboxes) == ["n1", "n2", "n3"]
            # More than any node has: refused with what to do, not a 500.
            with pytest.raises(APIError) as exc:
                Sandbox.create(client=c, cpu=3.0, memory_mb=512, disk_mb=512)
            assert exc.value.code == "no_capacity"
            assert exc.value.status == 503
            # Each node has room for one more 1-cpu sandbox (2 cpu), then none.
            more = [Sandbox.create(client=c, **SMALL) for _ in range(3)]  # type: ignore[arg-type]
            assert sorted(cluster.node_of(sb.id) for sb in more) == ["n1", "n2", "n3"]
            with pytest.raises(APIError) as exc:
                Sandbox.create(client=c, **SMALL)  # type: ignore[arg-type]
            assert exc.value.code == "no_capacity"
        finally:
            _destroy_all(cluster)


def test_exec_and_previews_reach_sandboxes_on_every_node(cluster: Cluster) -> None:
    with cluster.client(0) as c0, cluster.client(1) as c1:
        sandboxes = [Sandbox.create(client=c0, **SMALL) for _ in range(3)]  # type: ignore[arg-type]
        try:
            assert {cluster.node_of(sb.id) for sb in sandboxes} == {"n1", "n2", "n3"}
            for sb in sandboxes:
                # Through the other replica too: it knows the node from the database.
                other = Sandbox.connect(sb.id, client=c1)
                assert other.exec(f"echo {sb.id} | tr a-z A-Z").stdout == sb.id.upper() + "\n"
                sb.exec(f"mkdir -p /tmp/w && echo page-of-{sb.id} > /tmp/w/index.html")
                p = sb.start_process("python3 -m http.server 8080 -d /tmp/w")
                p.wait_for_port(8080, timeout=20)
                # The replica's own address plus the preview Host (no *.localhost DNS here).
                host = urlsplit(sb.get_preview_url(8080)).netloc
                # Either replica serves it: the other reads the port from the database.
                for url in cluster.urls:
                    r = httpx.get(url + "/", headers={"Host": host}, timeout=10)
                    assert r.status_code == 200
                    assert r.text == f"page-of-{sb.id}\n"
            # Closed through one replica: closed on the other at once.
            sb = sandboxes[0]
            host = urlsplit(sb.get_preview_url(8080)).netloc
            Sandbox.connect(sb.id, client=c1).unexpose_port(8080)
            r = httpx.get(cluster.urls[0] + "/", headers={"Host": host}, timeout=10)
            assert r.status_code == 404
        finally:
            _destroy_all(cluster)


def test_a_pause_stop_move_or_destroy_through_one_replica_reaches_the_others_next_exec(
    cluster: Cluster,
) -> None:
    # Replica 1 answers a sandbox's row from memory between changes (store/_row_watch.py):
    # each change through replica 0 must reach it before its next exec, or that exec would run
    # against a frozen agent (and wait for ever), a stopped container or a gone one.
    with cluster.client(0) as c0, cluster.client(1) as c1:
        try:
            a = Sandbox.create(client=c0, cpu=0.5, memory_mb=256, disk_mb=512)
            b = Sandbox.connect(a.id, client=c1)
            for _ in range(3):
                assert b.exec("echo warm").stdout == "warm\n"
            for i in range(3):
                assert a.pause().status == "paused"
                # At once through the other replica: it wakes the sandbox and runs the command.
                assert b.exec(f"echo woke-{i}").stdout == f"woke-{i}\n"
                assert a.info().status == "running"
                a.stop()
                assert b.exec(f"echo started-{i}").stdout == f"started-{i}\n"
                assert a.info().status == "running"
            # Moved to another node through replica 0: replica 1's next exec reaches it there.
            node = cluster.node_of(a.id)
            moved = c0.request("POST", f"/v1/nodes/{node}/move")
            assert cluster.node_of(a.id) != node, moved
            assert b.exec("echo moved").stdout == "moved\n"
            c0.request("POST", f"/v1/nodes/{node}/ready")
            a.destroy()
            with pytest.raises(SandboxNotFound):
                b.exec("echo gone")
        finally:
            _destroy_all(cluster)
            for name in ("n1", "n2", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/ready")


@contextlib.contextmanager
def _notifications_held() -> Iterator[None]:
    """The replicas' listening sessions stopped (SIGSTOP of their PostgreSQL backends) for a
    moment shorter than the replicas' LAG_LIMIT: a change is not heard while they still
    answer from memory, as when a replica lags behind a busy database. Widens the window
    that is otherwise a fraction of a millisecond, so that a test meets it every time."""
    url = f"postgresql:///hutch?host={DIR / 'pg'}&user=postgres"
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'hutch-rows'"
        ).fetchall()
    pids = [int(r[0]) for r in rows]
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_exec_through_one_replica_right_after_a_pause_through_the_other_wakes_it(
    cluster: Cluster,
) -> None:
    # Replica 1 has not heard of the pause yet when the exec comes (the notification is on its
    # way): its idle connections go to a frozen agent. The node closed them as it paused the
    # sandbox and refuses new ones, so replica 1 reads the row again and wakes the sandbox,
    # as one host does; no exec waits for a resume that nobody sends.
    with cluster.client(0) as c0, cluster.client(1) as c1, ThreadPoolExecutor(1) as pool:
        try:
            a = Sandbox.create(client=c0, cpu=0.5, memory_mb=256, disk_mb=512)
            b = Sandbox.connect(a.id, client=c1)
            gathered = f"{cluster.urls[1]}/v1/sandboxes/{a.id}/exec"
            auth = {"Authorization": f"Bearer {cluster.key}"}
            for i in range(24):
                assert b.exec("true").exit_code == 0  # an idle connection kept on replica 1
                with _notifications_held():
                    assert a.pause().status == "paused"
                    if i % 2:  # POST .../exec: the replica's shared agent connection
                        r = httpx.post(
                            gathered, json={"command": f"echo {i}"}, headers=auth, timeout=30
                        )
                        assert (r.status_code, r.json()["stdout"]) == (200, f"{i}\n")
                    else:  # sb.exec(): a stream on an idle connection of the replica's own
                        # NB: a stream has no read timeout: a hang fails here, not the run.
                        done = pool.submit(b.exec, f"echo {i}").result(timeout=30)
                        assert done.stdout == f"{i}\n"
                assert a.info().status == "running"
        finally:
            _destroy_all(cluster)


_PG_URL = f"postgresql:///hutch?host={DIR / 'pg'}&user=postgres"


def _freeze_on_its_node(db: psycopg.Connection[Any], sandbox_id: str) -> None:
    """What a pausing replica does before it commits `paused`: the sandbox frozen by its node
    (the node API's pause, with the node token), the row left as it is."""
    row = db.execute(
        "SELECT n.address, COALESCE(p.runtime_id, s.runtime_id, s.id)"
        " FROM sandbox_nodes p JOIN nodes n ON n.name = p.node"
        " JOIN sandboxes s ON s.id = p.sandbox_id WHERE p.sandbox_id = %s",
        (sandbox_id,),
    ).fetchone()
    assert row is not None
    node, rid = row
    token = (DIR / "node_token").read_text().strip()
    r = httpx.post(
        f"{node}/node/v1/c/{rid}/pause", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert r.status_code == 200, r.text


def test_an_exec_racing_a_pause_waits_for_its_commit_then_wakes_the_sandbox(
    cluster: Cluster,
) -> None:
    # A pause through a replica freezes the sandbox on its node, then commits `paused`. An exec
    # through the other replica in between is refused by the node while the row still says
    # running: it reads the row again until the pause commits, then wakes the sandbox.
    with cluster.client(0) as c0, cluster.client(1) as c1, ThreadPoolExecutor(1) as pool:
        try:
            a = Sandbox.create(client=c0, cpu=0.5, memory_mb=256, disk_mb=512)
            b = Sandbox.connect(a.id, client=c1)
            assert b.exec("echo warm").stdout == "warm\n"
            with psycopg.connect(_PG_URL, autocommit=True) as db:
                # The first half of a pause through replica 0: frozen on its node.
                _freeze_on_its_node(db, a.id)
                racing = pool.submit(b.exec, "echo after")
                # NB: a moment for the exec to meet the node's refusal (if it has not yet, it
                # meets the paused row instead: the test then shows less, never fails).
                time.sleep(0.5)
                # The second half: the commit, as the pausing replica makes it.
                db.execute("UPDATE sandboxes SET status = 'paused' WHERE id = %s", (a.id,))
            assert racing.result(timeout=30).stdout == "after\n"
            assert a.info().status == "running"
        finally:
            _destroy_all(cluster)


def test_a_sandbox_left_frozen_by_a_pause_that_never_committed_runs_again_on_the_next_exec(
    cluster: Cluster,
) -> None:
    # The pausing replica froze the sandbox on its node and died before it committed `paused`:
    # the row says running, the node refuses its agent. An exec waits the agent timeout for a
    # commit that never comes, then resumes the sandbox and runs (it waited for good before).
    with cluster.client(1) as c1:
        try:
            sb = Sandbox.create(client=c1, cpu=0.5, memory_mb=256, disk_mb=512)
            counter = sb.start_process(
                "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"
            )
            with psycopg.connect(_PG_URL, autocommit=True) as db:
                _freeze_on_its_node(db, sb.id)
            assert sb.exec("echo after").stdout == "after\n"
            assert sb.info().status == "running"
            # Its processes run again too (the counter moves).
            first = sb.read_file("/tmp/n")
            time.sleep(0.5)
            assert sb.read_file("/tmp/n") != first
            assert sb.get_process(counter.id).status == "running"
        finally:
            _destroy_all(cluster)


def test_a_team_key_revoked_or_its_quota_changed_through_one_replica_holds_on_the_other(
    cluster: Cluster,
) -> None:
    # Replica 1 answers the key's row and its team's quota from memory between changes
    # (store/_row_watch.py): each change through replica 0 must reach it.
    with cluster.client(0) as c0:
        c0.create_team("keyed")
        made = c0.create_key("ci", team="keyed", role="member")
        assert made.key is not None
        with Client(cluster.urls[0], made.key) as member:
            sb = Sandbox.create(client=member, **SMALL)  # type: ignore[arg-type]
        try:
            url = f"{cluster.urls[1]}/v1/sandboxes/{sb.id}"
            auth = {"Authorization": f"Bearer {made.key}"}

            def status() -> int:
                return httpx.get(url, headers=auth, timeout=30).status_code

            assert [status() for _ in range(3)] == [200, 200, 200]
            # A rate of one request per 100 s: the next one but one is refused (429).
            c0.set_team_quota("keyed", rate_per_second=0.01, rate_burst=1)
            wait_for(lambda: status() == 429, timeout=10)
            c0.set_team_quota("keyed", rate_per_second=None, rate_burst=None)
            wait_for(lambda: status() == 200, timeout=10)
            assert [status() for _ in range(3)] == [200, 200, 200]
            # Revoked through replica 0: refused by replica 1, and from then on.
            c0.delete_key(made.id)
            wait_for(lambda: status() == 401, timeout=10)
            assert [status() for _ in range(5)] == [401] * 5
        finally:
            _destroy_all(cluster)
            c0.delete_team("keyed")


def _runsc_ids(node: str) -> set[str]:
    """The containers the node's runsc has (its state files, as `runsc list` reads them)."""
    root = DIR / node / "runsc"
    return {p.name.split("_sandbox:")[0] for p in root.glob("*_sandbox:*.state")}


def test_a_gvisor_sandbox_runs_under_runsc_on_its_node_through_either_replica(
    cluster: Cluster,
) -> None:
    # runsc is installed here: every node reports it, and placement may pick any of them.
    assert {name: n["runtimes"] for name, n in cluster.nodes().items()} == {
        f"n{i}": ["runc", "gvisor"] for i in (1, 2, 3)
    }
    with cluster.client(0) as c0, cluster.client(1) as c1:
        try:
            sb = Sandbox.create(client=c0, runtime="gvisor", **SMALL)  # type: ignore[arg-type]
            node = cluster.node_of(sb.id)
            assert sb.id in _runsc_ids(node)
            plain = Sandbox.create(client=c0, **SMALL)  # type: ignore[arg-type]
            assert plain.id not in _runsc_ids(cluster.node_of(plain.id))
            # Through the other replica: the sentry's own kernel log, not the host's.
            other = Sandbox.connect(sb.id, client=c1)
            assert other.info().runtime == "gvisor"
            assert "gVisor" in other.exec("dmesg | head -1").stdout
            assert "gVisor" not in plain.exec("dmesg 2>&1 | head -1").stdout
            other.write_file("/home/user/kept", "written-through-replica-1")
            assert sb.read_file("/home/user/kept", text=True) == "written-through-replica-1"
            sb.exec("mkdir -p /tmp/w && echo page-of-gvisor > /tmp/w/index.html")
            p = sb.start_process("python3 -m http.server 8080 -d /tmp/w")
            p.wait_for_port(8080, timeout=30)
            host = urlsplit(sb.get_preview_url(8080)).netloc
            for url in cluster.urls:
                r = httpx.get(url + "/", headers={"Host": host}, timeout=10)
                assert (r.status_code, r.text) == (200, "page-of-gvisor\n")
            # Paused (runsc pause: the sentry stops its tasks) and resumed, its process kept.
            assert other.pause().status == "paused"
            assert sb.resume().status == "running"
            assert sb.get_process(p.id).status == "running"
            r = httpx.get(cluster.urls[1] + "/", headers={"Host": host}, timeout=10)
            assert (r.status_code, r.text) == (200, "page-of-gvisor\n")
            # Stopped and started again on its node, under runsc, with its disk.
            other.stop()
            sb.start()
            assert cluster.node_of(sb.id) == node and sb.id in _runsc_ids(node)
            assert "gVisor" in sb.exec("dmesg | head -1").stdout
            assert sb.read_file("/home/user/kept", text=True) == "written-through-replica-1"
            # A fork is a gVisor sandbox too, on a node that runs runsc.
            (child,) = other.fork(count=1)
            assert child.info().runtime == "gvisor"
            assert cluster.node_of(child.id) == node and child.id in _runsc_ids(node)
            assert child.read_file("/home/user/kept", text=True) == "written-through-replica-1"
            # Destroyed through the other replica: gone from its node's runsc.
            other.destroy()
            assert sb.id not in _runsc_ids(node)
        finally:
            _destroy_all(cluster)


def test_a_sandbox_cannot_reach_any_node_api(cluster: Cluster) -> None:
    bridge = f"{PREFIX}br"
    subprocess.run(["ip", "addr", "add", f"{CONTROL_IP}/32", "dev", bridge], check=True)
    control = subprocess.Popen(
        ["python3", "-m", "http.server", "7199", "--bind", CONTROL_IP],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with cluster.client() as c:
            # The node network allowed explicitly, even: it stays refused.
            allow = [f"{CONTROL_IP}/32", f"{NET}.0/24"]
            sb = Sandbox.create(client=c, network="internet", network_allow=allow, **SMALL)  # type: ignore[arg-type]
            try:
                probe = "curl -s -m 3 -o /dev/null -w '%{{http_code}}' http://{}/ || echo refused"
                # The control: a server on this machine outside the node network answers,
                # so a refusal below is the rules' doing.
                deadline = time.monotonic() + 10
                while sb.exec(probe.format(f"{CONTROL_IP}:7199")).stdout != "200":
                    assert time.monotonic() < deadline, "the control server never answered"
                    time.sleep(0.3)
                targets = [f"{NET}.{10 + i}:{port}" for i in (1, 2, 3) for port in (7171, 7172)]
                targets += [f"{NET}.1:{API_PORT}", f"{NET}.1:{API_PORT + 1}"]
                for target in targets:
                    out = sb.exec(probe.format(target)).stdout
                    assert out.strip().endswith("refused"), (
                        f"sandbox on {cluster.node_of(sb.id)} reached {target}: {out}"
                    )
            finally:
                sb.destroy()
    finally:
        control.terminate()
        control.wait()
        subprocess.run(["ip", "addr", "del", f"{CONTROL_IP}/32", "dev", bridge])


def test_drain_stops_placements_on_the_node(cluster: Cluster) -> None:
    with cluster.client() as c:
        c.request("POST", "/v1/nodes/n3/drain")
        try:
            assert cluster.nodes()["n3"]["state"] == "draining"
            made = [Sandbox.create(client=c, **SMALL) for _ in range(4)]  # type: ignore[arg-type]
            assert "n3" not in {cluster.node_of(sb.id) for sb in made}
            with pytest.raises(APIError) as exc:
                c.request("POST", "/v1/nodes/nope/drain")
            assert exc.value.code == "node_not_found"
        finally:
            c.request("POST", "/v1/nodes/n3/ready")
            _destroy_all(cluster)
        assert cluster.nodes()["n3"]["state"] == "ready"


def test_node_loss_errors_its_sandboxes_and_its_return_readopts_them(cluster: Cluster) -> None:
    with cluster.client() as c:
        sandboxes = [Sandbox.create(client=c, **SMALL) for _ in range(3)]  # type: ignore[arg-type]
        try:
            victim = next(sb for sb in sandboxes if cluster.node_of(sb.id) == "n1")
            victim.exec("echo before > /tmp/kept")
            os.kill(int((DIR / "n1.pid").read_text()), signal.SIGKILL)
            killed = time.monotonic()
            # At once: requests fail fast with a 503 (not a hang, not a 500). One in flight as
            # the node dies may see the agent's connection cut (sandbox_unavailable: retry);
            # the next one is told which node is gone.
            fresh = Sandbox.connect(victim.id, client=c)
            codes = []
            for _ in range(2):
                with pytest.raises(APIError) as exc:
                    fresh.exec("true")
                assert exc.value.status == 503
                codes.append(exc.value.code)
            assert codes[-1] == "node_unavailable"
            assert "node n1" in str(exc.value)
            assert time.monotonic() - killed < 10
            # Within 15 s: lost, and its sandbox in error: node_lost.
            while True:
                info = Sandbox.connect(victim.id, client=c).info()
                if info.status == "error":
                    break
                assert time.monotonic() - killed < 15, "the node was not marked lost in 15 s"
                time.sleep(0.5)
            assert (info.status_reason or "").startswith("node_lost")
            assert cluster.nodes()["n1"]["state"] == "lost"
            # New sandboxes go elsewhere.
            other = Sandbox.create(client=c, **SMALL)  # type: ignore[arg-type]
            assert cluster.node_of(other.id) != "n1"
            # The node comes back: what still runs is running again, with its disk.
            cluster.script("start-node", "1")
            deadline = time.monotonic() + 90
            while Sandbox.connect(victim.id, client=c).info().status != "running":
                assert time.monotonic() < deadline, "the sandbox was not re-adopted"
                time.sleep(0.5)
            assert Sandbox.connect(victim.id, client=c).exec("cat /tmp/kept").stdout == "before\n"
            assert cluster.nodes()["n1"]["state"] == "ready"
        finally:
            _destroy_all(cluster)


def test_snapshot_restore_and_fork_of_a_sandbox_on_a_node(cluster: Cluster) -> None:
    token = (DIR / "node_token").read_text().strip()
    with cluster.client(0) as c0, cluster.client(1) as c1:
        try:
            # Half a cpu: the restored one and its two forks fit on one 2-cpu node.
            source = Sandbox.create(client=c0, cpu=0.5, memory_mb=512, disk_mb=512)
            home = cluster.node_of(source.id)
            source.exec("echo from-the-source > /home/user/kept")
            snap = source.snapshot("cluster-snap")
            # The source goes: the snapshot lives on in its node's storage.
            source.destroy()
            # Through the other replica: a new sandbox from it, on the snapshot's node.
            restored = Sandbox.create(client=c1, snapshot=snap.id, disk_mb=512)
            assert cluster.node_of(restored.id) == home
            assert restored.exec("cat /home/user/kept").stdout == "from-the-source\n"
            restored.exec("echo changed > /home/user/kept")
            forks = restored.fork(count=2)
            assert {cluster.node_of(f.id) for f in forks} == {home}
            for fork in forks:
                assert fork.exec("cat /home/user/kept").stdout == "changed\n"
            # Fork's own snapshot is gone from the node; the kept one is there until deleted.
            node_url = f"http://{NET}.{10 + int(home[1:])}:7171/node/v1/snapshots"
            auth = {"Authorization": f"Bearer {token}"}
            assert httpx.get(f"{node_url}/{snap.id}", headers=auth, timeout=5).json() == {
                "exists": True
            }
            Sandbox.delete_snapshot(snap.id, client=c0)
            assert httpx.get(f"{node_url}/{snap.id}", headers=auth, timeout=5).json() == {
                "exists": False
            }
            with pytest.raises(APIError) as exc:
                Sandbox.create(client=c0, snapshot=snap.id)
            assert exc.value.code == "snapshot_not_found"
            # A snapshot id that is a path is refused by the node, not followed.
            bad = httpx.get(f"{node_url}/..%2F..%2Fetc", headers=auth, timeout=5)
            assert bad.status_code in (400, 404)
        finally:
            _destroy_all(cluster)


def test_a_create_from_a_snapshot_whose_node_is_full_gets_a_copy_on_another(
    cluster: Cluster,
) -> None:
    token = (DIR / "node_token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    with cluster.client(0) as c0, cluster.client(1) as c1:
        try:
            for name in ("n1", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/drain")
            source = Sandbox.create(client=c0, **SMALL)  # type: ignore[arg-type]
            filler = Sandbox.create(client=c0, **SMALL)  # type: ignore[arg-type]
            for name in ("n1", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/ready")
            assert {cluster.node_of(source.id), cluster.node_of(filler.id)} == {"n2"}
            source.exec("echo from-n2 > /home/user/kept")
            snap = source.snapshot("full-node")
            # n2's 2 cpu are taken: the new sandbox goes elsewhere, with a copy of the disk.
            made = Sandbox.create(client=c1, snapshot=snap.id, disk_mb=512)
            target = cluster.node_of(made.id)
            assert target != "n2"
            assert made.exec("cat /home/user/kept").stdout == "from-n2\n"

            # The snapshot stays on n2 only (the copy went once the disk was made from it).
            def exists(node: str) -> bool:
                url = f"http://{NET}.{10 + int(node[1:])}:7171/node/v1/snapshots/{snap.id}"
                return bool(httpx.get(url, headers=auth, timeout=5).json()["exists"])

            assert exists("n2") and not exists(target)
            Sandbox.delete_snapshot(snap.id, client=c0)
            assert not exists("n2")
        finally:
            for name in ("n1", "n3"):
                with contextlib.suppress(APIError):
                    c0.request("POST", f"/v1/nodes/{name}/ready")
            _destroy_all(cluster)


def _fork_leftovers() -> list[str]:
    """Fork copies (`fork-*`) left in any node's storage, sent or not."""
    return sorted(
        str(p.relative_to(DIR))
        for sub in (".spares", ".snapshots")
        for p in DIR.glob(f"n*/storage/{sub}/fork-*")
    )


def _snapshot_rows() -> dict[str, str]:
    url = f"postgresql:///hutch?host={DIR / 'pg'}&user=postgres"
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT snapshot_id, node FROM snapshot_nodes").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def test_fork_copies_a_replica_left_mid_fork_are_removed_with_their_rows(cluster: Cluster) -> None:
    token = (DIR / "node_token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    old, young = "fork-deadbeef0001", "fork-deadbeef0002"
    with cluster.client(0) as c0:
        source = Sandbox.create(client=c0, **SMALL)
        home = cluster.node_of(source.id)
        node_url = f"http://{NET}.{10 + int(home[1:])}:7171/node/v1"
        other = next(n for n in ("n1", "n2", "n3") if n != home)
        other_url = f"http://{NET}.{10 + int(other[1:])}:7171/node/v1"

        def exists(copy: str, url: str = node_url) -> bool:
            got = httpx.get(f"{url}/snapshots/{copy}", headers=auth, timeout=10).json()
            return bool(got["exists"])

        url = f"postgresql:///hutch?host={DIR / 'pg'}&user=postgres"
        try:
            # A fork's copies of the source's disk on its node, as a replica makes them.
            r = httpx.post(
                f"{node_url}/c/{source.id}/fork_disks",
                json={"copies": [old, young]},
                headers=auth,
                timeout=30,
            )
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 30
            while not (exists(old) and exists(young)):
                assert time.monotonic() < deadline, "the node did not make the copies"
                time.sleep(0.2)
            # ...and the old one sent to another node for a child placed there.
            r = httpx.post(
                f"{other_url}/snapshots/{old}/pull",
                json={"source": node_url.removesuffix("/node/v1")},
                headers=auth,
                timeout=60,
            )
            assert r.status_code == 200, r.text
            assert exists(old, other_url)
            # What a replica that dies mid-fork leaves: the copies above, and the rows it
            # recorded for them (one an hour ago, one now). NB: after the copies, here: the
            # reconciler would remove an old row's copy while the test still makes it.
            with psycopg.connect(url) as db:
                for copy, at in ((old, time.time() - 3600), (young, time.time())):
                    db.execute(
                        "INSERT INTO snapshot_nodes (snapshot_id, node, recorded_at)"
                        " VALUES (%s, %s, %s)",
                        (copy, home, at),
                    )
            # The reconciler (the replica holding its lock; it looks every 10 s) removes the
            # old copy from its node and the one it was sent to, then its row; a fork's copy
            # that young stays.
            deadline = time.monotonic() + 60
            while old in _snapshot_rows():
                assert time.monotonic() < deadline, f"left: {_snapshot_rows()}"
                time.sleep(0.5)
            assert not exists(old) and not exists(old, other_url)
            assert exists(young) and _snapshot_rows().get(young) == home
        finally:
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(f"{node_url}/snapshots/{young}", headers=auth, timeout=30)
            with psycopg.connect(url) as db:
                db.execute("DELETE FROM snapshot_nodes WHERE snapshot_id = %s", (young,))
            _destroy_all(cluster)
    assert not [p for p in _fork_leftovers() if "deadbeef" in p]


def test_fork_copies_a_node_received_are_swept_at_its_start_once_no_fork_can_use_them(
    cluster: Cluster,
) -> None:
    token = (DIR / "node_token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    ended, in_flight = "fork-c0ffee000001", "fork-c0ffee000002"
    url = f"postgresql:///hutch?host={DIR / 'pg'}&user=postgres"
    with cluster.client(0) as c0:
        source = Sandbox.create(client=c0, **SMALL)  # type: ignore[arg-type]
        home = cluster.node_of(source.id)
        home_url = f"http://{NET}.{10 + int(home[1:])}:7171"
        other = next(n for n in ("n1", "n2", "n3") if n != home)
        other_url = f"http://{NET}.{10 + int(other[1:])}:7171"

        def exists(copy: str, node_url: str) -> bool:
            got = httpx.get(f"{node_url}/node/v1/snapshots/{copy}", headers=auth, timeout=10)
            return bool(got.json()["exists"])

        try:
            # A fork in flight: its rows first, then its copies on the source's node, each
            # sent to the other node for a child placed there.
            with psycopg.connect(url) as db:
                for copy in (ended, in_flight):
                    db.execute(
                        "INSERT INTO snapshot_nodes (snapshot_id, node, recorded_at)"
                        " VALUES (%s, %s, %s)",
                        (copy, home, time.time()),
                    )
            r = httpx.post(
                f"{home_url}/node/v1/c/{source.id}/fork_disks",
                json={"copies": [ended, in_flight]},
                headers=auth,
                timeout=30,
            )
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 30
            while not (exists(ended, home_url) and exists(in_flight, home_url)):
                assert time.monotonic() < deadline, "the node did not make the copies"
                time.sleep(0.2)
            for copy in (ended, in_flight):
                r = httpx.post(
                    f"{other_url}/node/v1/snapshots/{copy}/pull",
                    json={"source": home_url},
                    headers=auth,
                    timeout=60,
                )
                assert r.status_code == 200, r.text
                assert exists(copy, other_url)
            # The other node dies; meanwhile one fork ends: it drops its copy where it can
            # (the source's node) and its row goes. The copy sent to the dead node stays.
            os.kill(int((DIR / f"{other}.pid").read_text()), signal.SIGKILL)
            httpx.delete(f"{home_url}/node/v1/snapshots/{ended}", headers=auth, timeout=30)
            with psycopg.connect(url) as db:
                db.execute("DELETE FROM snapshot_nodes WHERE snapshot_id = %s", (ended,))
            # Back: its start removes the copy no fork can use, and keeps the one in flight.
            cluster.script("start-node", other[1:])
            deadline = time.monotonic() + 90
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if not exists(ended, other_url):
                        break
                assert time.monotonic() < deadline, "the node did not come back without it"
                time.sleep(0.5)
            assert exists(in_flight, other_url)
            assert f"removed fork copy {ended}" in (DIR / f"{other}.log").read_text()
        finally:
            for node_url in (home_url, other_url):
                with contextlib.suppress(httpx.HTTPError):
                    httpx.delete(f"{node_url}/node/v1/snapshots/{in_flight}", headers=auth,
                                 timeout=30)  # fmt: skip
            with psycopg.connect(url) as db:
                db.execute("DELETE FROM snapshot_nodes WHERE snapshot_id LIKE 'fork-c0ffee%'")
            _destroy_all(cluster)
    assert not [p for p in _fork_leftovers() if "c0ffee" in p]


def _disks() -> dict[str, list[str]]:
    """Each node's sandbox disks (the subvolumes at the top of its storage pool)."""
    return {
        p.parent.name: sorted(d.name for d in p.iterdir() if not d.name.startswith("."))
        for p in DIR.glob("n*/storage")
    }


def test_a_fork_whose_node_is_full_places_children_on_other_nodes_all_or_nothing(
    cluster: Cluster,
) -> None:
    with cluster.client(0) as c0, cluster.client(1) as c1:
        try:
            for name in ("n1", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/drain")
            source = Sandbox.create(client=c0, **SMALL)  # type: ignore[arg-type]
            assert cluster.node_of(source.id) == "n2"
            source.exec("echo from-n2 > /home/user/kept")
            c0.request("POST", "/v1/nodes/n3/ready")  # n1 stays drained
            before = _disks()
            # Room for three children of 1 cpu (one on n2, two on n3), not four: the fork
            # fails as a whole, and nothing of it stays on any node.
            with pytest.raises(APIError) as exc:
                Sandbox.connect(source.id, client=c1).fork(count=4)
            assert exc.value.code == "no_capacity", exc.value
            assert [s.id for s in Sandbox.list(client=c0)] == [source.id]
            assert _fork_leftovers() == []
            assert _disks() == before
            # Three fit: one on the source's node, two on n3 with one copy sent there for
            # both (the replica that forks logs each send).
            log = DIR / "api1.log"
            logged = log.stat().st_size
            forks = Sandbox.connect(source.id, client=c1).fork(count=3)
            placed = sorted(cluster.node_of(f.id) for f in forks)
            assert placed == ["n2", "n3", "n3"]
            with log.open("rb") as f:
                f.seek(logged)
                assert f.read().count(b"copied from node n2 to n3") == 1
            for fork in forks:
                assert fork.exec("cat /home/user/kept").stdout == "from-n2\n"
                fork.exec("echo mine > /home/user/kept")
            # Each child's disk is its own: the source's is as it was.
            assert source.exec("cat /home/user/kept").stdout == "from-n2\n"
            assert _fork_leftovers() == []
        finally:
            for name in ("n1", "n3"):
                with contextlib.suppress(APIError):
                    c0.request("POST", f"/v1/nodes/{name}/ready")
            _destroy_all(cluster)


def test_an_agent_killed_on_a_node_puts_its_sandbox_in_error_and_oom_kills_are_events(
    cluster: Cluster,
) -> None:
    with cluster.client(1) as c:
        try:
            sb = Sandbox.create(client=c, cpu=0.5, memory_mb=256, disk_mb=512)
            node = cluster.node_of(sb.id)
            # User code over its memory: an event (from the node's watch), not a death.
            assert sb.exec("python3 -c 'b = bytearray(600 * 1024**2)'").oom_killed
            deadline = time.monotonic() + 10
            while "oom_killed" not in [e.type for e in sb.events(follow=False)]:
                assert time.monotonic() < deadline, "no oom_killed event from the node"
                time.sleep(0.2)
            assert sb.info().status == "running"
            # Its init killed on its node, as a host OOM or an operator would: error, with
            # the reason, without any request to the sandbox.
            state = DIR / node / "runc" / sb.id / "state.json"
            pid = int(json.loads(state.read_text())["init_process_pid"])
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while (info := Sandbox.connect(sb.id, client=c).info()).status != "error":
                assert time.monotonic() < deadline, "the death on the node was not noticed"
                time.sleep(0.1)
            assert (info.status_reason or "").startswith("agent_exited"), info.status_reason
            # Its disk was kept there: an explicit start brings it back on its node.
            sb.start()
            assert sb.exec("echo back").stdout == "back\n"
            assert cluster.node_of(sb.id) == node
        finally:
            _destroy_all(cluster)


def test_concurrent_death_watches_share_one_pidfd_per_sandbox_on_a_node(cluster: Cluster) -> None:
    from concurrent.futures import ThreadPoolExecutor

    token = (DIR / "node_token").read_text().strip()
    with cluster.client(0) as c:
        try:
            for name in ("n2", "n3"):
                c.request("POST", f"/v1/nodes/{name}/drain")
            sandboxes = [Sandbox.create(client=c, cpu=0.5, memory_mb=256, disk_mb=256)]
            sandboxes.append(Sandbox.create(client=c, cpu=0.5, memory_mb=256, disk_mb=256))
            assert {cluster.node_of(sb.id) for sb in sandboxes} == {"n1"}
            # In the sandboxes' order (rids[0] is the one killed below): the rows come in
            # the table's order, which reused space can make any (it failed half the runs).
            known = _runtime_ids([sb.id for sb in sandboxes])
            rids = [known[sb.id] or sb.id for sb in sandboxes]
            pid = int((DIR / "n1.pid").read_text())
            assert b"node" in Path(f"/proc/{pid}/cmdline").read_bytes()

            inits = {
                int(
                    json.loads((DIR / "n1" / "runc" / rid / "state.json").read_text())[
                        "init_process_pid"
                    ]
                )
                for rid in rids
            }

            def pidfds() -> dict[int, int]:
                """The node's pidfds on the sandboxes' inits, by pid (it may hold others: a
                child process of its own)."""
                counts = dict.fromkeys(inits, 0)
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[pidfd]":
                            continue
                        info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                        target = int(info.split("Pid:", 1)[1].split()[0])
                        if target in counts:
                            counts[target] += 1
                return counts

            # What two replicas' death watches send at once, each with its own view of the
            # node's running sandboxes (both replicas' own watches run meanwhile too).
            asks = [rids[:1], rids[1:], rids, rids, rids[:1], rids[1:]]
            url = f"http://{NET}.11:7171/node/v1/deaths"
            with (
                httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10) as node,
                ThreadPoolExecutor(len(asks)) as pool,
            ):

                def ask(ids: list[str]) -> dict[str, str]:
                    got = node.post(url, json={"ids": ids})
                    assert got.status_code == 200, got.text
                    return dict(got.json())

                def round_() -> None:
                    for found in pool.map(ask, asks):
                        assert found == {}, found  # both run: no death reported

                round_()  # opens the pool's connections, and the pidfds
                before = pidfds()
                for _ in range(40):
                    round_()
                after = pidfds()
            # One pidfd per sandbox whatever the calls asked: none leaked, none reopened.
            # (runc's init pid is read from its state file without a wait, so two calls
            # rarely race to open one here: tests/test_init_watch_unit.py makes them.)
            assert before == after == dict.fromkeys(inits, 1), (before, after)
            # The watch still sees a death (each call reports what it asked about).
            state = DIR / "n1" / "runc" / rids[0] / "state.json"
            os.kill(int(json.loads(state.read_text())["init_process_pid"]), signal.SIGKILL)
            deadline = time.monotonic() + 15
            while Sandbox.connect(sandboxes[0].id, client=c).info().status != "error":
                assert time.monotonic() < deadline, "the death on the node was not noticed"
                time.sleep(0.1)
            assert Sandbox.connect(sandboxes[1].id, client=c).info().status == "running"
        finally:
            for name in ("n2", "n3"):
                with contextlib.suppress(APIError):
                    c.request("POST", f"/v1/nodes/{name}/ready")
            _destroy_all(cluster)


# Where the load balancer in front of both replicas listens (replica loss test).
BALANCER_PORT = API_PORT + 5


def _balancer(path: Path) -> subprocess.Popen[bytes]:
    """HAProxy in front of the two replicas, as a deployment has a load balancer (Debian's,
    installed by scripts/install): replica 0 serves while its health check passes, then
    replica 1; a request refused by a dead replica is sent to the other."""
    path.write_text(
        f"""
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 2
    option redispatch 1
frontend api
    bind 127.0.0.1:{BALANCER_PORT}
    default_backend replicas
backend replicas
    option httpchk GET /healthz
    server r0 127.0.0.1:{API_PORT} check inter 200ms fall 1 rise 2
    server r1 127.0.0.1:{API_PORT + 1} check inter 200ms fall 1 rise 2 backup
"""
    )
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(path)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{BALANCER_PORT}/healthz", timeout=2).is_success:
                return proc
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the load balancer did not start"
        time.sleep(0.1)


def test_a_replica_killed_mid_stream_the_other_carries_on_without_losing_a_byte(
    cluster: Cluster, tmp_path: Path
) -> None:
    balancer = _balancer(tmp_path / "haproxy.cfg")
    api0 = int((DIR / "api0.pid").read_text())
    try:
        with Client(base_url=f"http://127.0.0.1:{BALANCER_PORT}", api_key=cluster.key) as c:
            sb = Sandbox.create(client=c, cpu=0.5, memory_mb=256, disk_mb=256)
            lines = 80
            proc = sb.start_process(f"for i in $(seq 1 {lines}); do echo line-$i; sleep 0.05; done")
            got = bytearray()
            killed = False
            for event in proc.stream_logs():
                assert event.type == "stdout" and event.offset == len(got), event
                got += event.data
                if not killed and got.count(b"\n") >= 10:
                    # Replica 0 holds this stream (replica 1 is the balancer's backup).
                    os.kill(api0, signal.SIGKILL)
                    killed = True
            assert killed
            # Every byte once, in order: the SDK resumed from its offset on replica 1.
            assert got.decode() == "".join(f"line-{i}\n" for i in range(1, lines + 1))
            with pytest.raises(ProcessLookupError):
                os.kill(api0, 0)
            # Plain requests go on through the other replica too.
            assert sb.exec("echo after").stdout == "after\n"
            assert [s.id for s in Sandbox.list(client=c)] == [sb.id]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(api0, signal.SIGKILL)
        balancer.terminate()
        balancer.communicate(timeout=10)
        cluster.script("start-api", "0")
        _destroy_all(cluster)


def test_drain_move_empties_a_node_and_the_sandboxes_keep_their_disks(cluster: Cluster) -> None:
    with cluster.client(0) as c, cluster.client(1) as c1:
        try:
            for name in ("n1", "n3"):
                c.request("POST", f"/v1/nodes/{name}/drain")
            running = Sandbox.create(client=c, cpu=0.5, memory_mb=256, disk_mb=512)
            stopped = Sandbox.create(client=c, cpu=0.5, memory_mb=256, disk_mb=512)
            for name in ("n1", "n3"):
                c.request("POST", f"/v1/nodes/{name}/ready")
            assert {cluster.node_of(running.id), cluster.node_of(stopped.id)} == {"n2"}
            running.exec("echo written-before > /home/user/kept")
            stopped.exec("echo stopped-before > /home/user/kept")
            stopped.stop()
            # Through the CLI, as an operator would.
            done = subprocess.run(
                [str(ROOT / ".venv/bin/hutch"), "node", "drain", "n2", "--move"],
                env={**os.environ, "HUTCH_URL": cluster.urls[0], "HUTCH_API_KEY": cluster.key},
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"{running.id}  moved to n" in done.stdout
            assert cluster.node_of(running.id) != "n2"
            assert cluster.node_of(stopped.id) != "n2"
            assert cluster.nodes()["n2"]["sandboxes"] == 0
            assert cluster.nodes()["n2"]["state"] == "draining"
            # Running again on its new node, with its disk; reached through either replica.
            moved = Sandbox.connect(running.id, client=c1)
            assert moved.info().status == "running"
            assert moved.exec("cat /home/user/kept").stdout == "written-before\n"
            assert Sandbox.connect(stopped.id, client=c).info().status == "stopped"
            again = Sandbox.connect(stopped.id, client=c1)
            again.start()
            assert again.exec("cat /home/user/kept").stdout == "stopped-before\n"
            # The old node holds nothing of them any more.
            assert not (DIR / "n2" / "runc" / running.id).exists()
        finally:
            c.request("POST", "/v1/nodes/n2/ready")
            _destroy_all(cluster)


def test_backup_on_a_node_and_restore_through_the_other_replica(cluster: Cluster) -> None:
    # The nodes reach the bucket from their namespaces: S3 on the cluster bridge's address.
    s3 = S3Server(host=f"{NET}.1")
    s3.start()
    bucket = f"bk{time.time_ns() % 10**9}"
    s3.make_bucket(bucket)
    where = {"endpoint": s3.endpoint, "credentials": s3.credentials, "prefix": "c/1"}
    with cluster.client(0) as c0, cluster.client(1) as c1:
        try:
            for name in ("n1", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/drain")
            sb = Sandbox.create(client=c0, cpu=0.5, memory_mb=256, disk_mb=512)
            for name in ("n1", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/ready")
            assert cluster.node_of(sb.id) == "n2"
            sb.exec("mkdir -p /proj && echo one > /proj/f && head -c 300000 /dev/urandom > /proj/r")
            digest = sb.exec("md5sum < /proj/r").stdout
            first = sb.backup(bucket, **where)  # type: ignore[arg-type]
            sb.exec("echo two > /proj/f")
            sb.stop()  # a stopped sandbox's disk, through the other replica
            second = Sandbox.connect(sb.id, client=c1).backup(bucket, **where)  # type: ignore[arg-type]
            assert second.parent_id == first.id  # incremental, against n2's snapshot
            objects = {p.name: p.stat().st_size for p in (s3.root / bucket / "c" / "1").iterdir()}
            assert set(objects) == {f"{b.id}{ext}" for b in (first, second)
                                    for ext in (".json", ".btrfs.zst")}  # fmt: skip
            assert objects[f"{second.id}.btrfs.zst"] < objects[f"{first.id}.btrfs.zst"] / 3
            # The disk went from the node straight to S3: n2 keeps the parent snapshot only.
            token = (DIR / "node_token").read_text().strip()
            auth = {"Authorization": f"Bearer {token}"}
            on_n2 = f"http://{NET}.12:7171/node/v1/snapshots"
            for backup, kept in ((second, True), (first, False)):
                got = httpx.get(f"{on_n2}/{backup.id}", headers=auth, timeout=5).json()
                assert got == {"exists": kept}, backup.id
            sb.destroy()

            # Restored through the other replica, on whichever node placement picks (these
            # nodes offer 2 GB of disk: the new sandbox asks for less than the default 4 GB).
            def restore(backup_id: str, client: Client) -> Sandbox:
                body = {"bucket": bucket, **where, "backup_id": backup_id,
                        "sandbox": {"disk_mb": 512}}  # fmt: skip
                return Sandbox.connect(
                    client.request("POST", "/v1/backups/restore", json=body)["id"], client=client
                )

            restored = restore(second.id, c1)
            assert cluster.node_of(restored.id) in ("n1", "n2", "n3")
            assert restored.exec("cat /proj/f").stdout == "two\n"
            assert restored.exec("md5sum < /proj/r").stdout == digest
            old = restore(first.id, c0)
            assert old.exec("cat /proj/f").stdout == "one\n"

            # Bad input: an unreachable bucket is a 400 and writes nothing; an unknown backup 404.
            with pytest.raises(APIError) as exc:
                restored.backup("no-such-bucket", **where)  # type: ignore[arg-type]
            assert (exc.value.status, exc.value.code) == (400, "backup_target_unreachable")
            with pytest.raises(APIError) as exc:
                Sandbox.restore("bk-000000000000", bucket, **where, client=c1)  # type: ignore[arg-type]
            assert (exc.value.status, exc.value.code) == (404, "backup_not_found")
        finally:
            for name in ("n1", "n3"):
                with contextlib.suppress(APIError):
                    c0.request("POST", f"/v1/nodes/{name}/ready")
            _destroy_all(cluster)
            s3.stop()


def test_a_bucket_mounts_on_the_sandboxs_node_and_only_there(cluster: Cluster) -> None:
    # The nodes reach the bucket from their namespaces: S3 on the cluster bridge's address.
    s3 = S3Server(host=f"{NET}.1")
    s3.start()
    bucket = f"mnt{time.time_ns() % 10**9}"
    s3.make_bucket(bucket)
    s3.put(f"{bucket}/hello.txt", "from the bucket")
    with cluster.client(0) as c0, cluster.client(1) as c1:
        try:
            for name in ("n1", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/drain")
            sb = Sandbox.create(client=c0, **SMALL)  # type: ignore[arg-type]
            c0.request("POST", "/v1/nodes/n2/drain")
            c0.request("POST", "/v1/nodes/n1/ready")
            other = Sandbox.create(client=c0, **SMALL)  # type: ignore[arg-type]
            assert (cluster.node_of(sb.id), cluster.node_of(other.id)) == ("n2", "n1")
            for name in ("n2", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/ready")

            # Through the other replica: rclone runs on n2, the replica only forwards.
            m = Sandbox.connect(sb.id, client=c1).mount_bucket(
                bucket, "/mnt/data", endpoint=s3.endpoint, credentials=s3.credentials
            )
            assert m.mount_path == "/mnt/data"
            assert [x.mount_path for x in sb.info().mounts] == ["/mnt/data"]
            assert sb.exec("cat /mnt/data/hello.txt").stdout == "from the bucket"
            assert sb.exec("echo written-on-n2 > /mnt/data/out.txt").exit_code == 0
            out = s3.root / bucket / "out.txt"
            deadline = time.monotonic() + 15
            while not (out.exists() and out.read_text() == "written-on-n2\n"):
                assert time.monotonic() < deadline, "the write never reached the bucket"
                time.sleep(0.2)
            # rclone runs on the sandbox's node, never on the replica; the credentials are
            # in no process the sandbox can see.
            env = sb.exec("cat /proc/1/environ | tr '\\0' '\\n'; env").stdout
            assert s3.secret_access_key not in env
            assert s3.secret_access_key not in sb.exec("ps -eo args || true").stdout

            # The mount moves with the sandbox: its new node pulled the mount's request from
            # n2 and mounts it; n2's rclone is gone with the old container.
            assert _rclones_of("n2")
            moves = c1.request("POST", "/v1/nodes/n2/move")["moves"]
            assert [(m["sandbox_id"], m["error"]) for m in moves] == [(sb.id, None)], moves
            c0.request("POST", "/v1/nodes/n2/ready")
            new_node = cluster.node_of(sb.id)
            assert new_node == moves[0]["to"] != "n2" and sb.info().status == "running"
            assert [x.mount_path for x in sb.info().mounts] == ["/mnt/data"]
            got = sb.exec("cat /mnt/data/hello.txt /mnt/data/out.txt").stdout
            assert got == "from the bucket" + "written-on-n2\n"
            assert _rclones_of("n2") == [] and len(_rclones_of(new_node)) == 1
            assert not (DIR / "n2" / "buckets" / sb.id).exists()
            assert sb.exec("echo written-after-the-move > /mnt/data/moved.txt").exit_code == 0
            out = s3.root / bucket / "moved.txt"
            deadline = time.monotonic() + 15
            while not (out.exists() and out.read_text() == "written-after-the-move\n"):
                assert time.monotonic() < deadline, "the moved mount's write never arrived"
                time.sleep(0.2)
            assert s3.secret_access_key not in sb.exec("ps -eo args || true").stdout
            # A stopped one moves with its mounts too: mounted on its next start, there.
            sb.stop()
            moves = c0.request("POST", f"/v1/nodes/{new_node}/move")["moves"]
            c0.request("POST", f"/v1/nodes/{new_node}/ready")
            moved = [(m["sandbox_id"], m["error"]) for m in moves if m["sandbox_id"] == sb.id]
            assert moved == [(sb.id, None)], moves  # (`other` too, if it was there)
            third = cluster.node_of(sb.id)
            assert third != new_node and sb.info().status == "stopped"
            assert _rclones_of(new_node) == [] and _rclones_of(third) == []
            sb.start()
            assert sb.exec("cat /mnt/data/moved.txt").stdout == "written-after-the-move\n"
            assert len(_rclones_of(third)) == 1

            # A sandbox on another node sees nothing of it.
            assert other.info().mounts == []
            seen = other.exec("ls /mnt/data 2>&1; grep -c hutch-bucket /proc/mounts").stdout
            assert "hello.txt" not in seen and "out.txt" not in seen

            # Bad input: an unreachable bucket is a 400 (nothing mounted), a busy path a 409.
            with pytest.raises(APIError) as exc:
                sb.mount_bucket("no-such-bucket", "/mnt/x", endpoint=s3.endpoint,
                                credentials=s3.credentials)  # fmt: skip
            assert exc.value.code == "bucket_mount_failed", exc.value
            assert s3.secret_access_key not in str(exc.value)
            with pytest.raises(APIError) as exc:
                sb.mount_bucket(bucket, "/mnt/data", endpoint=s3.endpoint,
                                credentials=s3.credentials)  # fmt: skip
            assert exc.value.code == "mount_path_busy", exc.value
            # Refused by the node's runtime (the API's model lets it through): the same answer.
            with pytest.raises(APIError) as exc:
                sb.mount_bucket(bucket, "/proc/x", endpoint=s3.endpoint,
                                credentials=s3.credentials)  # fmt: skip
            assert exc.value.code == "invalid_request", exc.value

            # Unmounted through the first replica; the sandbox goes on.
            sb.unmount_bucket("/mnt/data")
            assert sb.info().mounts == []
            assert sb.exec("ls /mnt/data 2>/dev/null | wc -l").stdout.strip() == "0"
            with pytest.raises(APIError) as exc:
                Sandbox.connect(sb.id, client=c1).unmount_bucket("/mnt/data")
            assert exc.value.code == "bucket_not_mounted", exc.value
        finally:
            for name in ("n1", "n2", "n3"):
                with contextlib.suppress(APIError):
                    c0.request("POST", f"/v1/nodes/{name}/ready")
            _destroy_all(cluster)
            s3.stop()


def _rclones_of(node: str) -> list[str]:
    """The command lines of the rclone processes serving the node's bucket mounts."""
    home = f"{DIR / node}/buckets/"
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
            if "rclone" in args[0] and "mount" in args and any(home in a for a in args):
                found.append(" ".join(args))
    return found


def test_egress_secrets_are_injected_by_the_sandboxs_node_and_never_enter_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    from tests.test_egress import FAKE_API, KEY, MESSAGE, RULE

    log = tmp_path / "upstream.jsonl"
    log.touch()
    upstream = subprocess.Popen(
        [sys.executable, str(FAKE_API), str(UPSTREAM_PORT), str(log)],
        env={"FAKE_HOST": f"{NET}.1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.head(f"http://{NET}.1:{UPSTREAM_PORT}/", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the fake upstream did not start"
            time.sleep(0.05)
    needle = KEY.encode()

    def post(sb: Sandbox, url: str) -> tuple[int, str]:
        r = sb.exec(
            f"curl -sS -m 20 -o /tmp/out -w '%{{http_code}}' -H 'x-api-key: forged' "
            f"-H 'content-type: application/json' -d @- {url}; echo; cat /tmp/out",
            stdin=MESSAGE.encode(),
            timeout=60,
        )
        status, _, body = r.stdout.partition("\n")
        return int(status or 0), body

    def keys_seen() -> list[object]:
        return [json.loads(line)["x-api-keys"] for line in log.read_text().splitlines()]

    with cluster.client(0) as c0, cluster.client(1) as c1:
        try:
            for name in ("n1", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/drain")
            secrets = {"ANTHROPIC_API_KEY": KEY}
            sb = Sandbox.create(client=c1, secrets=secrets, egress_secrets=[RULE], **SMALL)  # type: ignore[arg-type]
            plain = Sandbox.create(client=c0, **SMALL)  # type: ignore[arg-type]
            for name in ("n1", "n3"):
                c0.request("POST", f"/v1/nodes/{name}/ready")
            assert {cluster.node_of(sb.id), cluster.node_of(plain.id)} == {"n2"}
            seen = sb.exec("echo $ANTHROPIC_API_KEY; echo $ANTHROPIC_BASE_URL").stdout.split()
            assert seen[0] == "hutch-egress-injected"
            base = seen[1]
            # The proxy of n2, on the sandbox's own gateway (node API port + 2).
            assert base.startswith("http://10.") and base.endswith(":7173/api.anthropic.com")
            # The sandbox's own x-api-key is replaced by the key, which the upstream gets.
            assert post(sb, f"{base}/v1/messages")[0] == 200
            assert keys_seen() == [[KEY]]
            # Through the other replica as well (it learns the gateway from the node).
            assert post(Sandbox.connect(sb.id, client=c0), f"{base}/v1/messages")[0] == 200

            # Never inside: the environment of every process of the sandbox.
            half = len(KEY) // 2
            r = sb.exec(
                'printf %s%s "$HEAD" "$TAIL" > /dev/shm/pat; env | grep -c -F -f /dev/shm/pat; '
                "cat /proc/[0-9]*/environ 2>/dev/null | grep -a -c -F -f /dev/shm/pat; exit 0",
                env={"HEAD": KEY[:half], "TAIL": KEY[half:]},
            )
            assert r.stdout == "0\n0\n", r.stdout
            # Never in clear on the node (its grant is sealed) nor in any daemon's log.
            on_n2 = [p for p in (DIR / "n2").iterdir() if p.name not in ("sandboxes", "lxcfs")]
            assert (DIR / "n2" / "egress-grants" / sb.id).exists()
            for top in [*on_n2, *DIR.glob("*.log")]:
                files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
                for path in files:
                    if path.stat().st_size < 64 << 20:
                        assert needle not in path.read_bytes(), path

            # A sandbox of the same node without rules cannot use the proxy, not even with
            # the other's URL: refused by the rules, or by the proxy.
            status, _ = post(plain, f"{base}/v1/messages")
            assert status in (0, 403), status
            assert len(keys_seen()) == 2
            # The node's grant route: nothing without the node token, no path for an id, and
            # no grant without the secrets its rules name.
            grant_url = f"http://{NET}.12:7171/node/v1/c/{{}}/egress"
            token = (DIR / "node_token").read_text().strip()
            auth = {"Authorization": f"Bearer {token}"}
            body = {"secrets": {"hutch:egress": json.dumps([RULE]), "ANTHROPIC_API_KEY": "x"}}
            r = httpx.put(grant_url.format(plain.id), json=body, timeout=10)
            assert r.status_code == 401
            r = httpx.put(grant_url.format("..%2Fx"), json=body, headers=auth, timeout=10)
            assert r.status_code in (400, 404)
            del body["secrets"]["ANTHROPIC_API_KEY"]
            r = httpx.put(grant_url.format(plain.id), json=body, headers=auth, timeout=10)
            assert r.status_code == 400, r.text
            assert post(plain, f"{base}/v1/messages")[0] in (0, 403)

            # The node daemon restarts: its proxy serves the sandbox again from the sealed
            # grant, with no replica's help.
            os.kill(int((DIR / "n2.pid").read_text()), signal.SIGTERM)
            cluster.script("start-node", "2")
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(APIError):  # node_unavailable while it starts
                    if post(sb, f"{base}/v1/messages")[0] == 200:
                        break
                assert time.monotonic() < deadline, "the restarted node's proxy never served"
                time.sleep(0.5)
            # Stopped and started: the node dropped the grant, the start grants it again.
            sb.stop()
            assert not (DIR / "n2" / "egress-grants" / sb.id).exists()
            sb.start()
            assert post(sb, f"{base}/v1/messages")[0] == 200
            assert keys_seen()[-1] == [KEY]
        finally:
            for name in ("n1", "n3"):
                with contextlib.suppress(APIError):
                    c0.request("POST", f"/v1/nodes/{name}/ready")
            _destroy_all(cluster)
            upstream.terminate()
            upstream.wait(10)


def _restart_nodes(cluster: Cluster, env: dict[str, str]) -> None:
    """Stop every node daemon (SIGTERM: a node lets its pooled sandboxes go) and start them
    again with `env` on top of the cluster's, before the API counts them lost."""
    pids = [int((DIR / f"n{i}.pid").read_text()) for i in (1, 2, 3)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, "a node did not stop"
        time.sleep(0.1)
    for i in (1, 2, 3):
        done = subprocess.run(
            [str(ROOT / "scripts/cluster"), "start-node", str(i)],
            env={**cluster.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 60
    while any(n["state"] != "ready" for n in cluster.nodes().values()):
        assert time.monotonic() < deadline, cluster.nodes()
        time.sleep(0.5)


def _pool_rows() -> list[tuple[str, str, str | None]]:
    url = f"postgresql:///hutch?host={DIR / 'pg'}&user=postgres"
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT runtime_id, node, claimed_by FROM pool_entries").fetchall()
    return [(str(r[0]), str(r[1]), r[2]) for r in rows]


def _pools(cluster: Cluster) -> list[list[dict[str, object]]]:
    """GET /v1/pools through each replica."""
    found = []
    for replica in (0, 1):
        with cluster.client(replica) as c:
            found.append(c.request("GET", "/v1/pools")["pools"])
    return found


def _runtime_ids(sandbox_ids: list[str]) -> dict[str, str | None]:
    url = f"postgresql:///hutch?host={DIR / 'pg'}&user=postgres"
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT id, runtime_id FROM sandboxes WHERE id = ANY(%s)", (sandbox_ids,)
        ).fetchall()
    return {str(r[0]): r[1] for r in rows}


def test_two_replicas_claiming_a_warm_pool_at_once_never_share_a_sandbox(cluster: Cluster) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pool = 3
    # Roomier nodes for this test (a pooled sandbox has the default 4 GB disk) and a pool of
    # 3 for the whole cluster: 1 on each node.
    roomy = {"HUTCH_NODE_CPU": "12", "HUTCH_NODE_MEMORY_MB": "16384", "HUTCH_NODE_DISK_MB": "65536"}
    _restart_nodes(cluster, {**roomy, "HUTCH_WARM_POOLS": f"default={pool}"})
    try:
        # Each node its share (one that came up while the others restarted took more at first,
        # and gives back what is over its share as they come).
        deadline = time.monotonic() + 60
        while sorted(node for _, node, by in _pool_rows() if by is None) != ["n1", "n2", "n3"]:
            assert time.monotonic() < deadline, f"the pools did not fill: {_pool_rows()}"
            time.sleep(0.5)
        # Either replica (neither has HUTCH_WARM_POOLS) shows the size the nodes heartbeat.
        # NB: not how many are ready: a node that took more at first gives them back now.
        sizes = [[(p["image"], p["size"]) for p in pools] for pools in _pools(cluster)]
        assert sizes == [[("default", pool)]] * 2
        # Abuse: a claim of what no pool holds hands out nothing; a path is refused.
        token = (DIR / "node_token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        body = {"limits": {"cpu": 1.0}, "env": {}}
        r = httpx.post(f"http://{NET}.11:7171/node/v1/pool/sb-nope/claim", json=body, headers=auth)
        assert r.json() == {"handed_out": False}
        r = httpx.post(f"http://{NET}.11:7171/node/v1/pool/..%2Fx/claim", json=body, headers=auth)
        assert r.status_code in (400, 404)
        assert (
            httpx.post(f"http://{NET}.11:7171/node/v1/pool/x/claim", json=body).status_code == 401
        )

        # 20 creates at once, split across both replicas, against the pool.
        def create(n: int) -> str:
            with cluster.client(n % 2) as c:
                sb = Sandbox.create(client=c, cpu=0.5, memory_mb=256, env={"WHO": f"c{n}"})
                return sb.id

        with ThreadPoolExecutor(20) as workers:
            ids = list(workers.map(create, range(20)))
        assert len(set(ids)) == 20  # every create succeeded
        rids = _runtime_ids(ids)
        pooled = [rid for rid in rids.values() if rid and rid.startswith("pool-")]
        assert len(pooled) >= pool, rids  # the ready ones were handed out (refills maybe more)
        assert len(set(pooled)) == len(pooled), "a pooled sandbox was handed out twice"

        # What a user would notice if two got one container: the later claim's env (set on
        # the agent at hand-out) in the earlier one's commands.
        def who(sid: str) -> str:
            with cluster.client(0) as c:
                return Sandbox.connect(sid, client=c).exec("echo $WHO").stdout

        with ThreadPoolExecutor(10) as workers:
            assert list(workers.map(who, ids)) == [f"c{n}\n" for n in range(20)]
        # The claimed rows are gone; the pools fill up again.
        deadline = time.monotonic() + 60
        while not (rows := _pool_rows()) or any(r[0] in pooled for r in rows):
            assert time.monotonic() < deadline, rows
            time.sleep(0.5)
    finally:

        def destroy(sandbox_id: str) -> None:
            with cluster.client() as c, contextlib.suppress(APIError):
                Sandbox.connect(sandbox_id, client=c).destroy()

        with cluster.client() as c, ThreadPoolExecutor(10) as workers:
            list(workers.map(destroy, [i.id for i in Sandbox.list(client=c)]))
        _restart_nodes(cluster, {})
    assert _pool_rows() == []  # the nodes let their pooled sandboxes go
    # ...and are configured with none now, from their first heartbeats on.
    deadline = time.monotonic() + 15
    while (pools := _pools(cluster)) != [[], []]:
        assert time.monotonic() < deadline, pools
        time.sleep(0.5)
