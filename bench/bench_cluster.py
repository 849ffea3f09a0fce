"""Create -> first exec and exec round trip through an API replica of a local cluster
(scripts/cluster: the sandbox on a node daemon in its own network namespace, agent bytes through
the node's tunnel) next to single-host mode (`hutch serve`, agent over a local unix socket), in
the same run, interleaved.

    sudo .venv/bin/python bench/bench_cluster.py [--n 20] [--execs 100]

Then aggregate exec throughput through the cluster: `--workers` threads, each execing in its
own sandbox for `--seconds`, with the sandboxes spread on 3 nodes vs all on 1 (the other two
drained). All nodes share this machine's cores, so this shows what the node path costs, not
what 3 real hosts would add.

`--team-key`: both modes exec with a member key of a team of their own (created with the admin
key), as most clients do, instead of the admin key from the config (which no request reads).

Prints p50/p95/p99 of each, the cluster's extra p50, execs/s and the load average. It starts
its own cluster (HUTCH_CLUSTER_DIR=/var/lib/hutch-cluster-bench) and server, and stops both.
HUTCH_CLUSTER_DIR, _PREFIX, _NET and _API_PORT in the environment replace the bench's own (a
second cluster on the machine at the same time needs its own).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import cluster_env, run_cluster
from bench._stats import median_difference_interval, percentile, report
from hutch.runtime import Runtime, RuntimeConfig
from hutch.sdk import Client, Sandbox
from tests import _server
from tests._server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_ENV = cluster_env(
    directory="/var/lib/hutch-cluster-bench",
    prefix="hbench",
    net="10.250.9",
    api_port="7095",
    HUTCH_NODE_CPU="64",
)
SMALL = {"cpu": 0.5, "memory_mb": 256, "disk_mb": 256}
CODE = ROOT  # the checkout whose cluster and server run (--code)


def cluster(command: str) -> dict[str, str]:
    return run_cluster(CODE, command, CLUSTER_ENV)


def release(home: Path) -> None:
    """What the single-host server leaves when it stops (its storage pool, LXCFS and statfs
    daemons, nft table: sandboxes outlive a server), then its home."""

    async def sweep() -> None:
        runtime = Runtime(RuntimeConfig(home=home, storage_size_gb=32))
        await runtime.setup()
        await runtime.sweep(keep=())
        await runtime.teardown()

    asyncio.run(sweep())
    shutil.rmtree(home, ignore_errors=True)


def measure(client: Client, n: int, execs: int, out: dict[str, list[float]], tag: str) -> None:
    for _ in range(n):
        started = time.perf_counter()
        sb = Sandbox.create(client=client, **SMALL)  # type: ignore[arg-type]
        sb.exec("true")
        out[f"{tag} create -> first exec"].append(time.perf_counter() - started)
        try:
            for _ in range(execs // n):
                t = time.perf_counter()
                sb.exec("true")
                out[f"{tag} exec round trip"].append(time.perf_counter() - t)
        finally:
            sb.destroy()


def team_client(admin: Client) -> Client:
    """A client with a member key of a new team ("bench"), made through `admin`."""
    admin.create_team("bench")
    made = admin.create_key("bench", team="bench", role="member")
    assert made.key is not None
    return Client(base_url=admin.config.base_url, api_key=made.key)


def throughput(client: Client, workers: int, seconds: float) -> float:
    """Execs per second of `workers` threads execing at once, each in its own sandbox."""
    sandboxes = [Sandbox.create(client=client, **SMALL) for _ in range(workers)]  # type: ignore[arg-type]
    counts = [0] * workers
    end = time.monotonic() + seconds

    def run(i: int) -> None:
        while time.monotonic() < end:
            sandboxes[i].exec("true")
            counts[i] += 1

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.monotonic() - started)
    finally:
        for sb in sandboxes:
            sb.destroy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20, help="creates per mode")
    parser.add_argument("--execs", type=int, default=200, help="execs per mode")
    parser.add_argument(
        "--rounds", type=int, default=4, help="interleaved rounds (single host, then cluster)"
    )
    parser.add_argument("--workers", type=int, default=6, help="concurrent exec loops")
    parser.add_argument(
        "--throughput-rounds", type=int, default=2, help="3 nodes then 1, this many times"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    parser.add_argument(
        "--team-key",
        action="store_true",
        help="exec with a team's member key in both modes, not the configured admin key",
    )
    parser.add_argument(
        "--code",
        type=Path,
        default=ROOT,
        help="run the cluster and the server from this checkout (its scripts/cluster and "
        ".venv), e.g. /work/main for a baseline; the client is this one's",
    )
    args = parser.parse_args()
    global CODE
    CODE = args.code.resolve()
    _server.HUTCH_BIN = CODE / ".venv/bin/hutch"
    try:
        values = cluster("up")
    except subprocess.CalledProcessError as exc:
        cluster("down")  # what did start goes
        raise SystemExit(f"scripts/cluster up failed: {exc.stderr[-2000:]}") from None
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    server.start(timeout=180)
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "single-host create -> first exec",
            "cluster create -> first exec",
            "single-host exec round trip",
            "cluster exec round trip",
        )
    }
    try:
        with (
            Client(base_url=server.url, api_key=server.api_key) as one_admin,
            Client(base_url=values["HUTCH_URL"], api_key=values["HUTCH_API_KEY"]) as many_admin,
            team_client(one_admin) if args.team_key else one_admin as one,
            team_client(many_admin) if args.team_key else many_admin as many,
        ):
            warmup: dict[str, list[float]] = {k: [] for k in samples}
            measure(one, 2, 4, warmup, "single-host")
            measure(many, 2, 4, warmup, "cluster")
            # Interleaved rounds, so both modes see the same load.
            rounds = args.rounds
            for _ in range(rounds):
                measure(one, args.n // rounds, args.execs // rounds, samples, "single-host")
                measure(many, args.n // rounds, args.execs // rounds, samples, "cluster")
            # Alternated too: the load drifts by more than the difference between runs.
            spreads, ones = [], []
            for _ in range(args.throughput_rounds):
                spreads.append(throughput(many, args.workers, args.seconds))
                for name in ("n2", "n3"):
                    many_admin.request("POST", f"/v1/nodes/{name}/drain")
                ones.append(throughput(many, args.workers, args.seconds))
                for name in ("n2", "n3"):
                    many_admin.request("POST", f"/v1/nodes/{name}/ready")
    finally:
        server.stop()
        release(server.home)
        cluster("down")
    for name, seconds in samples.items():
        print(report(name, seconds))
    for what in ("create -> first exec", "exec round trip"):
        many_s, one_s = samples[f"cluster {what}"], samples[f"single-host {what}"]
        extra = percentile(many_s, 50) - percentile(one_s, 50)
        low, high = median_difference_interval(many_s, one_s)
        print(
            f"cluster extra p50, {what}: {extra * 1e3:+.2f} ms (95% bootstrap interval "
            f"{low * 1e3:+.2f} .. {high * 1e3:+.2f} ms; goal <= +5 ms)"
        )
    spread, one_node = sum(spreads) / len(spreads), sum(ones) / len(ones)
    print(
        f"aggregate exec throughput, {args.workers} workers: 3 nodes {spread:.0f}/s, "
        f"1 node {one_node:.0f}/s ({spread / one_node:.2f}x; rounds: "
        + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(spreads, ones, strict=True))
        + ")"
    )
    print(
        "code:",
        CODE,
        "| team key:",
        args.team_key,
        "| load average:",
        open("/proc/loadavg").read().strip(),
    )


if __name__ == "__main__":
    main()
