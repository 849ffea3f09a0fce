"""The local cluster the cluster benches run on (scripts/cluster), one place for how they
start it and for which cluster is theirs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def cluster_env(
    *, directory: str, prefix: str, net: str, api_port: str, **fixed: str
) -> dict[str, str]:
    """scripts/cluster's environment: the dir, prefix, net and API port from this process's
    environment where set (so two clusters can run on one machine), else the bench's own;
    `fixed` (HUTCH_CLUSTER_NODES, HUTCH_NODE_CPU, ...) as given."""
    return {
        **os.environ,
        "HUTCH_CLUSTER_DIR": os.environ.get("HUTCH_CLUSTER_DIR", directory),
        "HUTCH_CLUSTER_PREFIX": os.environ.get("HUTCH_CLUSTER_PREFIX", prefix),
        "HUTCH_CLUSTER_NET": os.environ.get("HUTCH_CLUSTER_NET", net),
        "HUTCH_CLUSTER_API_PORT": os.environ.get("HUTCH_CLUSTER_API_PORT", api_port),
        **fixed,
    }


def run_cluster(code: Path, command: str, env: dict[str, str]) -> dict[str, str]:
    """`code`'s scripts/cluster `command` (up, down, ...); the KEY=value lines it printed."""
    out = subprocess.run(
        [str(code / "scripts/cluster"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
