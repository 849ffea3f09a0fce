"""The cluster's sans-I/O parts and in-process pieces: placement, the nodes table, the tunnel
handshake and its token check, the node API's token check (no root, no sandboxes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from hutch.node import LocalHost, TunnelRefused, TunnelServer, node_app, open_tunnel
from hutch.node._tunnel import parse_connect
from hutch.runtime import Runtime, RuntimeConfig
from hutch.server.services._cluster_host import ClusterHost
from hutch.server.services._fork_leftovers import LEFT_AFTER, LOOK_EVERY, ForkLeftovers
from hutch.server.services._placement import Need, candidates
from hutch.server.services._placement_plans import PlacementPlans
from hutch.server.store._nodes import NodeRecord
from hutch.server.store._sqlite import PoolEntryRecord, SandboxRecord, SqliteStore

NOW = 1_000_000.0


def node(name: str, *, cpu: float = 4, mem: int = 4096, state: str = "ready", age: float = 1):
    return NodeRecord(
        name, f"http://{name}:7171", cpu, mem, 8192, state=state, last_heartbeat=NOW - age
    )


def sandbox(sid: str, cpu: float = 1, mem: int = 1024, status: str = "running") -> SandboxRecord:
    return SandboxRecord(sid, status, "default", "img", "", cpu=cpu, memory_mb=mem, disk_mb=1024)


def test_placement_prefers_most_free_and_skips_what_cannot_take_it() -> None:
    nodes = [
        node("a"),
        node("b"),
        node("c", state="draining"),
        node("d", state="lost"),
        node("e", age=60),
    ]
    placed = [("a", sandbox("s1")), ("a", sandbox("s2")), ("b", sandbox("s3"))]
    assert candidates(nodes, placed, Need(1, 1024, 512), now=NOW, fresh_for=6) == ["b", "a"]
    # Only b has 3 GB free; nothing has 5 cpus.
    assert candidates(nodes, placed, Need(1, 3072, 512), now=NOW, fresh_for=6) == ["b"]
    assert candidates(nodes, placed, Need(5, 512, 512), now=NOW, fresh_for=6) == []


def test_placement_counts_stopped_sandboxes_disk_but_not_their_memory() -> None:
    nodes = [node("a", mem=2048)]
    placed = [("a", sandbox("s1", mem=2048, status="stopped"))]
    assert candidates(nodes, placed, Need(1, 2048, 512), now=NOW, fresh_for=6) == ["a"]
    assert candidates(nodes, placed, Need(1, 2048, 7680), now=NOW, fresh_for=6) == []


def test_a_gvisor_sandbox_is_placed_only_on_nodes_that_run_runsc() -> None:
    nodes = [node("a", mem=8192), node("b"), node("c")]
    nodes[1].runtimes = nodes[2].runtimes = ("runc", "gvisor")
    placed = [("b", sandbox("s1"))]
    # a has the most free memory, but no runsc.
    assert candidates(nodes, placed, Need(1, 512, 512), now=NOW, fresh_for=6) == ["a", "c", "b"]
    assert candidates(nodes, placed, Need(1, 512, 512, "gvisor"), now=NOW, fresh_for=6) == [
        "c",
        "b",
    ]
    assert candidates(nodes, placed, Need(1, 4096, 512, "gvisor"), now=NOW, fresh_for=6) == ["c"]


async def test_a_cluster_runs_gvisor_when_a_node_reports_it_and_says_which(
    tmp_path: Path,
) -> None:
    from hutch.runtime import Image, ImageConfig, Limits, SandboxSpec
    from hutch.server._errors import NoCapacity

    store = SqliteStore(tmp_path / "db")
    cluster = ClusterHost(store, "tok", lambda sid: sid)
    now = time.time()
    store.heartbeat_node(NodeRecord("n1", "http://n1:7171", 4, 4096, 8192, last_heartbeat=now))
    assert cluster.supports("runc") and not cluster.supports("gvisor")
    gvisor = NodeRecord("n2", "http://n2:7171", 1, 1024, 8192, last_heartbeat=now)
    gvisor.runtimes = ("runc", "gvisor")
    store.heartbeat_node(gvisor)
    assert cluster.supports("gvisor")
    # The node that runs it is too small: 503 no_capacity naming the nodes that run it (no
    # node is called: neither can take it).
    image = Image("img", "default", tmp_path, ImageConfig((), "/", "root"), 0, "")
    spec = SandboxSpec("sb-1", image, {}, Limits(cpu=2, memory_mb=512), runtime="gvisor")
    with pytest.raises(NoCapacity) as exc:
        await cluster.create("sb-1", spec, defer_network=False)
    assert "the nodes that run gvisor: n2" in str(exc.value)
    assert store.sandbox_node("sb-1") is None
    await cluster.aclose()


def test_a_node_keeps_a_received_fork_copy_only_while_a_young_row_names_it() -> None:
    from hutch.server._node_daemon import unusable_fork_copies

    rows = {"fork-young": "n1", "fork-old": "n1"}
    copies = ["fork-young", "fork-old", "fork-ended"]
    # No row: its fork ended while this node was away; an old row: no fork in flight is
    # that old (its source node may be lost, keeping the row).
    assert unusable_fork_copies(copies, rows.get, {"fork-old"}) == ["fork-old", "fork-ended"]
    assert unusable_fork_copies(copies, rows.get, set()) == ["fork-ended"]


async def test_a_placement_read_beside_the_insert_is_read_again_once_another_was_placed(
    tmp_path: Path,
) -> None:
    """A create's placement is read beside its row's insert; creates at once on a replica (a
    fork's) must still each count those placed before them."""
    store = SqliteStore(tmp_path / "db")
    now = time.time()
    store.heartbeat_node(NodeRecord("n1", "http://n1:7171", 4, 4096, 8192, last_heartbeat=now))
    store.heartbeat_node(NodeRecord("n2", "http://n2:7171", 4, 3072, 8192, last_heartbeat=now))
    plans, need = PlacementPlans(), Need(1, 2048, 1024)
    await plans.read_ahead(store, "sb-a", need, 6.0)
    # Another create of this replica's placed one on n1 meanwhile: n1 cannot take sb-a now.
    store.insert_sandbox(sandbox("sb-b", mem=3000))
    store.set_sandbox_node("sb-b", "n1", "sb-b")
    plans.placed()
    assert (await plans.order(store, "sb-a", need, 6.0))[0] == ["n2"]
    # None placed since: the read made ahead is the one used (taken once).
    await plans.read_ahead(store, "sb-c", need, 6.0)
    store.insert_sandbox(sandbox("sb-d", mem=3000))
    store.set_sandbox_node("sb-d", "n2", "sb-d")  # another replica's: no lock covered it
    assert (await plans.order(store, "sb-c", need, 6.0))[0] == ["n2"]
    assert (await plans.order(store, "sb-c", need, 6.0))[0] == []
    # A plan for another need is not used.
    await plans.read_ahead(store, "sb-e", Need(0.5, 100, 100), 6.0)
    assert (await plans.order(store, "sb-e", need, 6.0))[0] == []


def test_nodes_table_heartbeats_states_and_sandbox_nodes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.heartbeat_node(node("a"))
    assert store.set_node_state("a", "lost", only_from="ready")
    assert not store.set_node_state("a", "lost", only_from="ready")  # a second replica: no-op
    # A lost node that beats again is ready; a draining one stays draining.
    assert store.heartbeat_node(node("a")).state == "ready"
    store.set_node_state("a", "draining")
    assert store.heartbeat_node(node("a")).state == "draining"
    store.set_sandbox_node("sb-1", "a")
    store.set_sandbox_node("sb-2", "a")
    store.set_sandbox_node("sb-2", "b")
    assert store.sandboxes_on("a") == ["sb-1"]
    assert store.sandbox_node("sb-2") == "b"
    store.forget_sandbox_node("sb-1")
    assert store.sandbox_node("sb-1") is None
    assert [n.name for n in store.list_nodes()] == ["a"]


class CountingStore(SqliteStore):
    """Counts the reads a replica makes to learn where a sandbox is and what its node calls it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[str] = []

    def get_node(self, name: str) -> Any:
        self.reads.append("get_node")
        return super().get_node(name)

    def sandbox_node(self, sandbox_id: str) -> Any:
        self.reads.append("sandbox_node")
        return super().sandbox_node(sandbox_id)

    def sandbox_placement(self, sandbox_id: str) -> Any:
        self.reads.append("sandbox_placement")
        return super().sandbox_placement(sandbox_id)

    def sandbox_runtime_id(self, sandbox_id: str) -> Any:
        self.reads.append("sandbox_runtime_id")
        return super().sandbox_runtime_id(sandbox_id)

    def list_sandboxes(self) -> Any:
        self.reads.append("list_sandboxes")
        return super().list_sandboxes()


class RecordingHost:
    """A node's host that records what the node API asks of it (by runtime id)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def dead(self, rids: list[str]) -> dict[str, str]:
        self.calls.append(("dead", " ".join(sorted(rids))))
        return {}

    def __getattr__(self, name: str) -> Any:
        async def call(rid: str, *args: Any, **kwargs: Any) -> None:
            self.calls.append((name, rid))

        return call


@contextlib.asynccontextmanager
async def node_api(host: RecordingHost) -> AsyncIterator[str]:
    """The real node API over `host`, on a loopback port; its address."""
    app = node_app(host, lambda i: None, lambda: {}, "tok")  # type: ignore[arg-type,return-value]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until the server takes them
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving


async def test_a_call_to_a_node_reads_node_and_runtime_id_in_one_store_read(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path / "db")
    host = RecordingHost()
    async with node_api(host) as address:
        for name in ("n1", "n2"):
            store.heartbeat_node(
                NodeRecord(name, address, 4, 4096, 8192, last_heartbeat=time.time())
            )
        cluster = ClusterHost(store, "tok", lambda sid: store.sandbox_runtime_id(sid) or sid)
        try:
            await _one_read_per_call(store, host, cluster)
        finally:
            await cluster.aclose()


async def _one_read_per_call(
    store: CountingStore, host: RecordingHost, cluster: ClusterHost
) -> None:
    # A sandbox a replica made from a warm pool: its node knows it by the pool's id.
    store.insert_sandbox(SandboxRecord("sb-1", "running", "default", "img", "", runtime_id="p-1"))
    store.set_sandbox_node("sb-1", "n1", "p-1")
    store.reads.clear()
    await cluster.pause("sb-1")
    assert host.calls == [("pause", "p-1")]
    assert store.reads == ["sandbox_placement"]  # was 3: node, node row, runtime id
    # Moved to n2 by `drain --move`: the same runtime id, on the other node.
    cluster.relocate("sb-1", "n2", "p-1")
    await cluster.resume("sb-1")
    assert host.calls[-1] == ("resume", "p-1")
    # Destroyed and made again, cold, by another replica: the new id, not a kept one.
    store.set_sandbox_node("sb-1", "n1", "sb-1")
    await cluster.pause("sb-1")
    assert host.calls[-1] == ("pause", "sb-1")
    # A placement from before the column: the sandbox's row says (one read more).
    store.insert_sandbox(SandboxRecord("sb-2", "running", "default", "img", "", runtime_id="p-2"))
    store.set_sandbox_node("sb-2", "n1")
    store.reads.clear()
    await cluster.pause("sb-2")
    assert host.calls[-1] == ("pause", "p-2")
    assert store.reads == ["sandbox_placement", "sandbox_runtime_id"]
    # The death watch (twice a second) has the runtime ids with the placements; only one
    # from before the column needs the sandboxes' rows, read once for all.
    store.reads.clear()
    await cluster.dead(["sb-1"])
    assert host.calls[-1] == ("dead", "sb-1") and "list_sandboxes" not in store.reads
    await cluster.dead(["sb-1", "sb-2"])
    assert host.calls[-1] == ("dead", "p-2 sb-1") and store.reads.count("list_sandboxes") == 1


def test_a_replicas_pool_sizes_are_what_the_nodes_heartbeat(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    now = time.time()
    for name, sizes in (("n1", {"default": 3}), ("n2", {"default": 3, "py": 1}), ("n3", {})):
        record = NodeRecord(name, f"http://{name}:7171", 4, 4096, 8192, last_heartbeat=now)
        record.pool_sizes = sizes
        store.heartbeat_node(record)
    store.heartbeat_node(NodeRecord("n4", "http://n4:7171", 4, 4096, 8192, last_heartbeat=now))
    store.set_node_state("n2", "draining")  # still configured: its size counts, not its entries
    store.add_pool_entry(PoolEntryRecord("pool-1", "n1", "id-default", "t"))
    store.add_pool_entry(PoolEntryRecord("pool-2", "n2", "id-default", "t"))
    store.add_pool_entry(PoolEntryRecord("pool-3", "n1", "id-default", "t", claimed_by="sb-1"))
    ids = {"default": "id-default", "py": "id-py"}
    # A replica with no HUTCH_WARM_POOLS of its own.
    cluster = ClusterHost(store, "tok", lambda sid: sid, image_id=ids.get)
    assert cluster.pool_status() == {"default": (3, 1), "py": (1, 0)}
    # A pool only a lost node reports is not the cluster's any more.
    store.set_node_state("n2", "lost")
    assert cluster.pool_status() == {"default": (3, 1)}
    # One set on the replica counts for a pool no node reports (nodes of an older Hutch).
    cluster = ClusterHost(store, "tok", lambda sid: sid, image_id=ids.get, pool_sizes={"py": 2})
    assert cluster.pool_status() == {"default": (3, 1), "py": (2, 0)}


async def test_fork_copies_left_by_a_dead_replica_go_once_older_than_any_fork(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "db")
    host1, host2 = RecordingHost(), RecordingHost()
    async with node_api(host1) as address1, node_api(host2) as address2:
        now = time.time()
        store.heartbeat_node(NodeRecord("n1", address1, 4, 4096, 8192, last_heartbeat=now))
        store.heartbeat_node(NodeRecord("n2", address2, 4, 4096, 8192, last_heartbeat=now))
        store.set_node_state("n2", "lost")
        cluster = ClusterHost(store, "tok", lambda sid: sid)
        try:
            # A replica recorded its forks' copies (two on n1, one on n2, now lost) and died;
            # a snapshot a user took stays whatever its age.
            for copy, node_name in (("fork-a", "n1"), ("fork-b", "n1"), ("fork-c", "n2")):
                store.set_snapshot_node(copy, node_name)
            store.set_snapshot_node("snap-kept", "n1")
            leftovers = ForkLeftovers(store, cluster)
            assert await leftovers.tick(now, 0.0) == []  # as young as a fork in flight
            later = now + LEFT_AFTER + 1
            assert await leftovers.tick(later, 1.0) == []  # looked a second ago
            assert await leftovers.tick(later, LOOK_EVERY) == ["fork-a", "fork-b"]
            assert host1.calls == [("delete_snapshot", "fork-a"), ("delete_snapshot", "fork-b")]
            assert host2.calls == []
            assert store.snapshot_node("fork-a") is None and store.snapshot_node("fork-b") is None
            # The lost node's copy waits for its node (the row says where it is).
            assert store.snapshot_node("fork-c") == "n2"
            assert store.snapshot_node("snap-kept") == "n1"
            store.heartbeat_node(NodeRecord("n2", address2, 4, 4096, 8192, last_heartbeat=later))
            assert await leftovers.tick(later, 2 * LOOK_EVERY) == ["fork-c"]
            # Dropped where it is, and where the replica may have sent it (n1).
            assert host1.calls[-1] == ("delete_snapshot", "fork-c")
            assert host2.calls == [("delete_snapshot", "fork-c")]
            assert store.snapshot_node("fork-c") is None
        finally:
            await cluster.aclose()


def test_connect_heads_are_parsed_strictly() -> None:
    head = b"CONNECT agent/sb-1 HTTP/1.1\r\nAuthorization: Bearer t0k\r\n\r\n"
    req = parse_connect(head)
    assert req is not None and (req.kind, req.runtime_id, req.token) == ("agent", "sb-1", "t0k")
    req = parse_connect(b"CONNECT port/pool-ab/8080 HTTP/1.1\r\n\r\n")
    assert req is not None and (req.kind, req.port, req.token) == ("port", 8080, "")
    for bad in (
        b"GET agent/sb-1 HTTP/1.1\r\n\r\n",
        b"CONNECT agent/../x HTTP/1.1\r\n\r\n",
        b"CONNECT port/sb-1/70000 HTTP/1.1\r\n\r\n",
        b"CONNECT port/sb-1/0 HTTP/1.1\r\n\r\n",
        b"CONNECT file/etc HTTP/1.1\r\n\r\n",
    ):
        assert parse_connect(bad) is None, bad


@contextlib.asynccontextmanager
async def _tunnels_to_an_echo(tmp_path: Path) -> AsyncIterator[tuple[TunnelServer, int]]:
    """A node's tunnel listener (token "right") in front of an agent socket that echoes."""
    sock = tmp_path / "agent.sock"

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(100):
            w.write(data)
            await w.drain()
        w.close()

    agent = await asyncio.start_unix_server(echo, sock)
    tunnels = TunnelServer("right", lambda rid: sock, lambda rid: None)
    port = await tunnels.start("127.0.0.1", 0)
    try:
        yield tunnels, port
    finally:
        await tunnels.close()
        agent.close()


async def test_tunnel_needs_the_token_then_carries_bytes(tmp_path: Path) -> None:
    async with _tunnels_to_an_echo(tmp_path) as (_, port):
        for token in ("", "wrong", "righ", "right!"):
            with pytest.raises(TunnelRefused) as exc:
                await open_tunnel("127.0.0.1", port, "agent/sb-1", token, timeout=5)
            assert exc.value.status == 401
        # A port tunnel to a sandbox without an address: 404, not a connection elsewhere.
        with pytest.raises(TunnelRefused) as exc:
            await open_tunnel("127.0.0.1", port, "port/sb-1/22", "right", timeout=5)
        assert exc.value.status == 404
        r, w = await open_tunnel("127.0.0.1", port, "agent/sb-1", "right", timeout=5)
        w.write(b"ping through the node")
        assert await asyncio.wait_for(r.read(100), 5) == b"ping through the node"
        w.close()


async def test_a_paused_sandboxs_agent_tunnels_are_closed_and_refused_until_it_resumes(
    tmp_path: Path,
) -> None:
    async with _tunnels_to_an_echo(tmp_path) as (tunnels, port):
        r, w = await open_tunnel("127.0.0.1", port, "agent/sb-1", "right", timeout=5)
        other_r, other_w = await open_tunnel("127.0.0.1", port, "agent/sb-2", "right", timeout=5)
        w.write(b"before")
        assert await asyncio.wait_for(r.read(100), 5) == b"before"
        # Paused: a replica's open connection ends (its next request would reach a frozen
        # agent), a new one is refused with 409; another sandbox's is untouched.
        tunnels.hold("sb-1")
        assert await asyncio.wait_for(r.read(100), 5) == b""
        w.close()
        with pytest.raises(TunnelRefused) as exc:
            await open_tunnel("127.0.0.1", port, "agent/sb-1", "right", timeout=5)
        assert exc.value.status == 409
        other_w.write(b"still")
        assert await asyncio.wait_for(other_r.read(100), 5) == b"still"
        # Resumed: served again.
        tunnels.release("sb-1")
        r, w = await open_tunnel("127.0.0.1", port, "agent/sb-1", "right", timeout=5)
        w.write(b"after")
        assert await asyncio.wait_for(r.read(100), 5) == b"after"
        w.close()
        other_w.close()


async def test_a_tunnel_carries_what_comes_with_its_head_and_much_both_ways_then_ends(
    tmp_path: Path,
) -> None:
    from hutch.node._tunnel import connect_head

    sock = tmp_path / "agent.sock"
    big = os.urandom(8 << 20)

    async def agent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        # Sends a large answer while the client still sends: the splice's flow control holds
        # both (neither side reads until it has written all).
        w.write(big[::-1])
        got = await r.readexactly(len(big) + 5)
        w.write(got[:5])
        await w.drain()
        w.close()

    agent_server = await asyncio.start_unix_server(agent, sock)
    tunnels = TunnelServer("right", lambda rid: sock, lambda rid: None)
    port = await tunnels.start("127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        # Bytes sent with the head, before the node answered, reach the agent first.
        w.write(connect_head("agent/sb-1", "right") + b"first")
        assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        w.write(big)
        assert await asyncio.wait_for(r.readexactly(len(big)), 30) == big[::-1]
        assert await asyncio.wait_for(r.readexactly(5), 5) == b"first"
        # The agent closed its end: so is the client's, through the node.
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
    finally:
        await tunnels.close()
        agent_server.close()


async def test_node_api_refuses_requests_without_the_token(tmp_path: Path) -> None:
    runtime = Runtime(RuntimeConfig(home=tmp_path))
    app = node_app(LocalHost(runtime, lambda r: r), lambda i: None, lambda: {"cpu": 2}, "s3cret")  # type: ignore[arg-type,return-value]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            r = await client.get("/node/v1/info", headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "node_unauthorized"
            r = await client.post("/node/v1/c/sb-1/destroy", headers=headers)
            assert r.status_code == 401
        r = await client.get("/node/v1/info", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json() == {"cpu": 2}
        bad = await client.post(
            "/node/v1/c/..%2Fx/stop", headers={"Authorization": "Bearer s3cret"}
        )
        assert bad.status_code in (400, 404)
        # A fork's copies are named by the caller: a name that is a path is refused before
        # anything is made (with the token; without it, nothing is even read).
        body = {"copies": ["fork-a", "../../etc"]}
        r = await client.post("/node/v1/c/sb-1/fork_disks", json=body)
        assert r.status_code == 401
        r = await client.post(
            "/node/v1/c/sb-1/fork_disks", json=body, headers={"Authorization": "Bearer s3cret"}
        )
        assert r.status_code == 400 and "invalid snapshot id" in r.text


async def test_a_forks_children_on_one_node_share_one_sent_copy() -> None:
    from hutch.server.services._fork_sends import ForkSends

    sends = ForkSends()
    sends.forked(["fork-a", "fork-b", "fork-c", "fork-d"])
    pulls: list[tuple[str, str]] = []
    gate = asyncio.Event()

    def puller(node: str, copy: str, *, fail: bool = False):
        async def pull() -> None:
            pulls.append((node, copy))
            await gate.wait()
            if fail:
                raise OSError("the node went away")

        return pull

    # Three children to n3 at once, one to n1: one pull per node, the others wait for it.
    tasks = [
        asyncio.create_task(sends.received_on(node, copy, puller(node, copy)))
        for node, copy in (("n3", "fork-a"), ("n3", "fork-b"), ("n1", "fork-c"), ("n3", "fork-d"))
    ]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == ["fork-a", "fork-a", "fork-c", "fork-a"]
    assert pulls == [("n3", "fork-a"), ("n1", "fork-c")]
    # The fork's cleanup removes each received copy where it is, once.
    assert sends.holders("fork-a") == ["n3"] and sends.holders("fork-a") == []
    assert [sends.holders(c) for c in ("fork-b", "fork-c", "fork-d")] == [[], ["n1"], []]
    assert not sends.is_copy("fork-b")

    # A pull that fails fails its own child; one waiting for it pulls its own copy.
    sends.forked(["fork-x", "fork-y"])
    gate.clear()
    pulls.clear()
    first = asyncio.create_task(
        sends.received_on("n2", "fork-x", puller("n2", "fork-x", fail=True))
    )
    second = asyncio.create_task(sends.received_on("n2", "fork-y", puller("n2", "fork-y")))
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(OSError):
        await first
    assert await second == "fork-y"
    assert pulls == [("n2", "fork-x"), ("n2", "fork-y")]
    assert sends.holders("fork-x") == [] and sends.holders("fork-y") == ["n2"]


class AttachingHost(RecordingHost):
    """A node's host whose sandboxes' network attach ends when the test says (`attached`)."""

    def __init__(self, fails: str | None = None) -> None:
        super().__init__()
        self.attached = asyncio.Event()
        self.fails = fails
        self.created: list[str] = []

    async def create(self, rid: str, spec: Any, *, defer_network: bool, snapshot: Any) -> None:
        assert defer_network
        self.created.append(rid)

    async def network_ready(self, rid: str) -> None:
        await self.attached.wait()
        if self.fails is not None:
            from hutch.runtime import SandboxRuntimeError

            raise SandboxRuntimeError(self.fails)

    def address(self, rid: str) -> str:
        return "10.9.0.2"

    def gateway_address(self, rid: str) -> str:
        return "10.9.0.1"


async def test_a_create_through_a_node_answers_its_network_in_the_same_request(
    tmp_path: Path,
) -> None:
    from hutch.node import NodeRefused, RemoteHost
    from hutch.runtime import Image, ImageConfig, Limits, SandboxSpec

    image = Image("img", "default", tmp_path, ImageConfig((), "/", "root"), 0, "")
    for fails in (None, "veth gone"):
        host = AttachingHost(fails)
        app = node_app(host, lambda i: image, lambda: {}, "tok")  # type: ignore[arg-type]
        paths: list[str] = []

        async def counted(
            scope: Any, receive: Any, send: Any, app: Any = app, paths: list[str] = paths
        ) -> None:
            paths.append(scope.get("path", ""))
            await app(scope, receive, send)

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = uvicorn.Server(uvicorn.Config(counted, log_level="warning", lifespan="off"))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        remote = RemoteHost("n1", f"http://127.0.0.1:{sock.getsockname()[1]}", "tok", str)
        try:
            spec = SandboxSpec("sb-1", image, {}, Limits())
            # The create is answered while the network is still being attached...
            await remote.create("sb-1", spec, defer_network=True)
            assert host.created == ["sb-1"] and not host.attached.is_set()
            waiting = asyncio.create_task(remote.network_ready("sb-1"))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # ...and network_ready waits for the attach
            host.attached.set()
            if fails is None:
                await waiting
                assert remote.address("sb-1") == "10.9.0.2"
                assert remote.gateway_address("sb-1") == "10.9.0.1"
            else:
                with pytest.raises(NodeRefused) as refused:
                    await waiting
                assert refused.value.code == "node_runtime_error"
                assert "veth gone" in str(refused.value)
            # One request to the node for both: no network_ready call of its own.
            assert paths == ["/node/v1/c/sb-1/create"]
        finally:
            await remote.aclose()
            server.should_exit = True
            await serving
