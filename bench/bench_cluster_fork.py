"""Fork on a local cluster (scripts/cluster): a child placed on its source's node (its disk a
btrfs copy there) next to a child sent to another node because the source's node takes no
more (drained here, as a full node would be: the copy is made read-only, sent as a `btrfs
send` stream node to node, and received), in the same run, interleaved.

    sudo .venv/bin/python bench/bench_cluster_fork.py [--n 10] [--mb 64] [--count 1]

The source holds `--mb` MB of its own data (the image is on every node already: only what
the sandbox wrote travels). Times fork(count) -> a first exec in each child (the children
sent elsewhere all go to one node, which gets one copy for all); prints p50/p95/p99 of each,
the ratio of p50s and the load average. It starts its own two-node cluster
(HUTCH_CLUSTER_DIR=/var/lib/hutch-cluster-bench-fork) and stops it. HUTCH_CLUSTER_DIR, _PREFIX,
_NET and _API_PORT in the environment replace the bench's own (a second cluster on the machine
at the same time needs its own).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import cluster_env, run_cluster
from bench._stats import percentile, report
from hutch.sdk import Client, Sandbox

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_ENV = cluster_env(
    directory="/var/lib/hutch-cluster-bench-fork",
    prefix="hbfork",
    net="10.250.19",
    api_port="7195",
    HUTCH_CLUSTER_NODES="2",
    HUTCH_NODE_CPU="64",
)
SMALL = {"cpu": 0.5, "memory_mb": 256, "disk_mb": 1024}
CODE = ROOT  # the checkout whose cluster runs (--code)


def cluster(command: str) -> dict[str, str]:
    return run_cluster(CODE, command, CLUSTER_ENV)


def fork_once(client: Client, source: Sandbox, home: str, count: int, *, sent: bool) -> float:
    """Seconds from fork(count) to a first exec in each child; the children go."""
    if sent:
        client.request("POST", f"/v1/nodes/{home}/drain")
    try:
        started = time.perf_counter()
        children = source.fork(count=count)
        for child in children:
            child.exec("true")
        took = time.perf_counter() - started
    finally:
        if sent:
            client.request("POST", f"/v1/nodes/{home}/ready")
    for child in children:
        child.destroy()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10, help="forks per mode")
    parser.add_argument("--mb", type=int, default=64, help="MB the source wrote")
    parser.add_argument("--count", type=int, default=1, help="children per fork")
    parser.add_argument(
        "--code",
        type=Path,
        default=ROOT,
        help="run the cluster from this checkout (its scripts/cluster and .venv), e.g. "
        "/work/main for a baseline; the client is this one's",
    )
    args = parser.parse_args()
    global CODE
    CODE = args.code.resolve()
    try:
        values = cluster("up")
    except subprocess.CalledProcessError as exc:
        cluster("down")
        raise SystemExit(f"scripts/cluster up failed: {exc.stderr[-2000:]}") from None
    samples: dict[str, list[float]] = {"fork on its node": [], "fork sent to another node": []}
    try:
        with Client(base_url=values["HUTCH_URL"], api_key=values["HUTCH_API_KEY"]) as client:
            source = Sandbox.create(client=client, **SMALL)  # type: ignore[arg-type]
            source.exec(f"head -c {args.mb}M /dev/urandom > /home/user/data && sync")
            home = next(
                n["name"]
                for n in client.request("GET", "/v1/nodes")["nodes"]
                if n["sandboxes"] >= 1
            )
            fork_once(client, source, home, args.count, sent=False)  # warm-up
            fork_once(client, source, home, args.count, sent=True)
            for _ in range(args.n):
                for name, sent in (
                    ("fork on its node", False),
                    ("fork sent to another node", True),
                ):
                    samples[name].append(fork_once(client, source, home, args.count, sent=sent))
            source.destroy()
    finally:
        cluster("down")
    for name, seconds in samples.items():
        print(report(f"{name} ({args.count}, {args.mb} MB written)", seconds))
    ratio = percentile(samples["fork sent to another node"], 50) / percentile(
        samples["fork on its node"], 50
    )
    print(f"sent / on its node, p50: {ratio:.2f}x")
    print("code:", CODE, "| load average:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
