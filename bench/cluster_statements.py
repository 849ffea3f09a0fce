"""What PostgreSQL is asked while execs go through an API replica of a local cluster
(scripts/cluster): `log_statement=all` for the duration of `--execs` execs of `true`, each
statement counted by its text and the session's application (`hutch`: the replicas' and nodes'
pools; `hutch-rows`: a replica's listening session).

    sudo .venv/bin/python bench/cluster_statements.py [--execs 100] [--admin] [--code DIR]

By default the execs use a team's member key (its key row and its team's quota are read by
every request unless the replica answers them from memory); `--admin` uses the configured
admin key. The background's statements (heartbeats, the death and node watches, the
listeners' probes) run at a rate per second: the elapsed time is printed with them. Also
prints replica 0's CPU time (user + system) per exec over those execs.
HUTCH_CLUSTER_DIR, _PREFIX, _NET and _API_PORT as for bench_cluster.py.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import cluster_env, run_cluster
from bench.bench_cluster import SMALL, team_client
from hutch.sdk import Client, Sandbox

ROOT = Path(__file__).resolve().parents[1]
ENV = cluster_env(
    directory="/var/lib/hutch-cluster-bench", prefix="hbench", net="10.250.9", api_port="7095"
)
# "2026-12-05 00:35:01.123 UTC [1234] hutch LOG:  execute <unnamed>: SELECT ..."
LINE = re.compile(r"\[\d+\] (\S*) LOG:  (?:statement|execute [^:]*): (.*)")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def set_logging(url: str, on: bool) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        if on:
            db.execute("ALTER SYSTEM SET log_statement = 'all'")
            db.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] %a '")
        else:
            db.execute("ALTER SYSTEM RESET log_statement")
            db.execute("ALTER SYSTEM RESET log_line_prefix")
        db.execute("SELECT pg_reload_conf()")
    time.sleep(1.0)  # every backend takes the new setting at its next statement


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--admin", action="store_true", help="the configured admin key")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose cluster runs")
    args = parser.parse_args()
    code = args.code.resolve()
    pg = Path(ENV["HUTCH_CLUSTER_DIR"]) / "pg"
    url = f"postgresql:///hutch?host={pg}&user=postgres"
    values = run_cluster(code, "up", ENV)
    found: Counter[tuple[str, str]] = Counter()
    try:
        with Client(base_url=values["HUTCH_URL"], api_key=values["HUTCH_API_KEY"]) as admin:
            client = admin if args.admin else team_client(admin)
            sb = Sandbox.create(client=client, **SMALL)  # type: ignore[arg-type]
            for _ in range(20):
                sb.exec("true")
            set_logging(url, True)
            log = pg / "log"
            start = log.stat().st_size
            replica = int((Path(ENV["HUTCH_CLUSTER_DIR"]) / "api0.pid").read_text())
            cpu = cpu_seconds(replica)
            began = time.monotonic()
            for _ in range(args.execs):
                sb.exec("true")
            elapsed = time.monotonic() - began
            cpu = cpu_seconds(replica) - cpu
            with log.open("rb") as f:
                f.seek(start)
                lines = f.read().decode(errors="replace").splitlines()
            set_logging(url, False)
            sb.destroy()
    finally:
        run_cluster(code, "down", ENV)
    for line in lines:
        m = LINE.search(line)
        if m:
            found[(m.group(1), " ".join(m.group(2).split())[:90])] += 1
    print(f"{args.execs} execs of `true` through replica 0 in {elapsed:.2f} s, code {code}")
    print(f"key: {'admin (configured)' if args.admin else 'a team member key'}")
    for (app, sql), n in found.most_common():
        print(f"{n:6d}  {app:10s}  {sql}")
    print(f"{sum(found.values()):6d}  statements in all")
    print(f"replica 0 CPU per exec: {cpu / args.execs * 1e3:.3f} ms (user + system)")
    print("load average:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
