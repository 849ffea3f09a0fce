"""A disk snapshot pulled node to node (node/_disk_moves.py), alone: the wall time of the
receiving node's `POST /node/v1/snapshots/{id}/pull` and the CPU it and its children (`btrfs
receive`) spend per pull, on a local two-node cluster (scripts/cluster).

    sudo .venv/bin/python bench/bench_node_pull.py [--n 10] [--mb 64] [--code /work/main]

CPU seconds are read from the node daemons' /proc/PID/stat (utime + stime, and cutime +
cstime of the btrfs processes they waited for; the sender's btrfs send may be counted at the
next pull's end, as it is waited for after the stream): unlike the wall time they hardly move
with the machine's load, so they compare two checkouts run minutes apart. HUTCH_CLUSTER_DIR,
_PREFIX, _NET and _API_PORT in the environment replace the bench's own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import cluster_env, run_cluster
from bench._stats import report
from hutch.sdk import Client, Sandbox

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_ENV = cluster_env(
    directory="/var/lib/hutch-cluster-bench-pull",
    prefix="hbpull",
    net="10.250.29",
    api_port="7295",
    HUTCH_CLUSTER_NODES="2",
    HUTCH_NODE_CPU="64",
)
TICK = os.sysconf("SC_CLK_TCK")


def cluster(code: Path, command: str) -> dict[str, str]:
    return run_cluster(code, command, CLUSTER_ENV)


def cpu(pid: int) -> tuple[float, float]:
    """(own, waited-for children's) CPU seconds of process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10, help="pulls")
    parser.add_argument("--mb", type=int, default=64, help="MB the sandbox wrote")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to run")
    args = parser.parse_args()
    code = args.code.resolve()
    directory = Path(CLUSTER_ENV["HUTCH_CLUSTER_DIR"])
    try:
        values = cluster(code, "up")
    except subprocess.CalledProcessError as exc:
        cluster(code, "down")
        raise SystemExit(f"scripts/cluster up failed: {exc.stderr[-2000:]}") from None
    walls: list[float] = []
    own: list[float] = []
    children: list[float] = []
    sending: list[float] = []
    try:
        token = (directory / "node_token").read_text().strip()
        with Client(base_url=values["HUTCH_URL"], api_key=values["HUTCH_API_KEY"]) as client:
            sb = Sandbox.create(client=client, cpu=0.5, memory_mb=256, disk_mb=1024)  # type: ignore[arg-type]
            sb.exec(f"head -c {args.mb}M /dev/urandom > /home/user/data && sync")
            sb.snapshot()
            url = f"postgresql:///hutch?host={directory / 'pg'}&user=postgres"
            with psycopg.connect(url) as db:
                snapshot, home_name, home = db.execute(
                    "SELECT s.snapshot_id, n.name, n.address FROM snapshot_nodes s "
                    "JOIN nodes n ON n.name = s.node"
                ).fetchone()  # type: ignore[misc]
                other_name, other = db.execute(
                    "SELECT name, address FROM nodes WHERE address <> %s", (home,)
                ).fetchone()  # type: ignore[misc]
            pid = int((directory / f"{other_name}.pid").read_text())
            sender = int((directory / f"{home_name}.pid").read_text())
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=other, headers=auth, timeout=600) as node:
                for _ in range(args.n):
                    sent_before = cpu(sender)
                    before, t = cpu(pid), time.perf_counter()
                    got = node.post(f"/node/v1/snapshots/{snapshot}/pull", json={"source": home})
                    got.raise_for_status()
                    walls.append(time.perf_counter() - t)
                    after = cpu(pid)
                    own.append(after[0] - before[0])
                    children.append(after[1] - before[1])
                    sent_after = cpu(sender)
                    sending.append(sum(sent_after) - sum(sent_before))
                    node.delete(f"/node/v1/snapshots/{snapshot}").raise_for_status()
            sb.destroy()
    finally:
        cluster(code, "down")
    print(report(f"pull of {args.mb} MB written, wall", walls))
    print(
        f"receiving node CPU per pull: daemon {sum(own) / len(own) * 1e3:.0f} ms, "
        f"its btrfs children {sum(children) / len(children) * 1e3:.0f} ms; sending node "
        f"with its children {sum(sending) / len(sending) * 1e3:.0f} ms"
    )
    print("code:", code, "| load average:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
