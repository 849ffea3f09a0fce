"""Code interpreter figures: `1+1` round trip on a warm Python context, and how soon a new
Python context is ready (cold, and from the warm pool).

Run as root once the default image is built:

    .venv/bin/python bench/bench_code.py [--n 200]

Baseline in the same run: a raw jupyter_client round trip (execute `1+1`, wait for the
kernel's idle status) measured inside the same sandbox with the image's own python3 — the
floor that Hutch's HTTP -> server -> agent -> bridge path adds to.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import report
from bench.bench_files import sandbox_cgroup, sandbox_cpu_seconds
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

RAW_JUPYTER = r"""
import json, sys, time
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
n = int(sys.argv[1])
samples = []
for i in range(n + 20):
    t0 = time.perf_counter()
    msg_id = kc.execute("1+1")
    while True:
        msg = kc.get_iopub_msg(timeout=10)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            break
    if i >= 20:
        samples.append(time.perf_counter() - t0)
kc.stop_channels()
km.shutdown_kernel(now=True)
print(json.dumps(samples))
"""


def warm_round_trips(sb: Sandbox, n: int) -> tuple[list[float], float]:
    """The round trips, and the sandbox's CPU seconds per run (agent, bridge and kernel:
    the load inflates this far less than the wall clock)."""
    ctx = sb.create_code_context("python")
    for _ in range(20):
        sb.run_code("1+1", context=ctx)
    samples = []
    cpu0 = sandbox_cpu_seconds(sb.id)
    for _ in range(n):
        t0 = time.perf_counter()
        ex = sb.run_code("1+1", context=ctx)
        samples.append(time.perf_counter() - t0)
        assert ex.text == "2", ex
    cpu = (sandbox_cpu_seconds(sb.id) - cpu0) / n
    sb.delete_code_context(ctx)
    return samples, cpu


def raw_jupyter_round_trips(sb: Sandbox, n: int) -> list[float]:
    r = sb.run("python3", ["-c", RAW_JUPYTER, str(n)], timeout=300)
    assert r.exit_code == 0, r.stderr
    samples: list[float] = json.loads(r.stdout.strip().splitlines()[-1])
    return samples


def cold_contexts(opts: dict[str, str], n: int) -> tuple[list[float], list[float]]:
    """The first Python context of a fresh sandbox: nothing is warm. Also the sandbox's CPU
    seconds for it (the bridge and the kernel starting)."""
    samples, cpus = [], []
    for _ in range(n):
        sb = Sandbox.create(memory_mb=2048, **opts)
        try:
            sb.exec("true")
            cpu0 = sandbox_cpu_seconds(sb.id)
            t0 = time.perf_counter()
            ctx = sb.create_code_context("python")
            samples.append(time.perf_counter() - t0)
            cpus.append(sandbox_cpu_seconds(sb.id) - cpu0)
            assert sb.run_code("1+1", context=ctx).text == "2"
        finally:
            sb.destroy()
    return samples, cpus


def sandbox_memory_mb(sandbox_id: str) -> float:
    """Resident + mapped memory of everything in the sandbox (cgroup v1 memory.stat)."""
    stat = sandbox_cgroup(Path("/sys/fs/cgroup/memory"), sandbox_id) / "memory.stat"
    try:
        fields = dict(line.split() for line in stat.read_text().splitlines())
        return (int(fields["total_rss"]) + int(fields["total_mapped_file"])) / 2**20
    except (OSError, KeyError, ValueError):
        return float("nan")


def prestarted_contexts(opts: dict[str, str], n: int) -> tuple[list[float], list[float], str]:
    """The first Python context of a fresh sandbox made with HUTCH_CODE_PRESTART=python:
    from the start of the create (the kernel starts with the agent) to the context ready,
    and from after the first exec (as `cold_contexts`). Also what the waiting kernel costs
    an idle sandbox in memory, next to one without it."""
    from_create, after_exec = [], []
    memory = ""
    for i in range(n):
        t0 = time.perf_counter()
        sb = Sandbox.create(memory_mb=2048, env={"HUTCH_CODE_PRESTART": "python"}, **opts)
        try:
            sb.exec("true")
            t1 = time.perf_counter()
            ctx = sb.create_code_context("python")
            t2 = time.perf_counter()
            from_create.append(t2 - t0)
            after_exec.append(t2 - t1)
            assert sb.run_code("1+1", context=ctx).text == "2"
            if i == 0:
                plain = Sandbox.create(memory_mb=2048, **opts)
                try:
                    spare = Sandbox.create(
                        memory_mb=2048, env={"HUTCH_CODE_PRESTART": "python"}, **opts
                    )
                    try:
                        path = f"/v1/sandboxes/{spare.id}/code/contexts"
                        deadline = time.monotonic() + 60
                        while spare.client.request("GET", path)["pool"].get("python") != "ready":
                            assert time.monotonic() < deadline, (
                                "the prestarted kernel never got ready"
                            )
                            time.sleep(0.2)
                        time.sleep(1)
                        memory = (
                            f"idle sandbox memory: {sandbox_memory_mb(plain.id):.1f} MB plain, "
                            f"{sandbox_memory_mb(spare.id):.1f} MB with the waiting kernel"
                        )
                    finally:
                        spare.destroy()
                finally:
                    plain.destroy()
        finally:
            sb.destroy()
    return from_create, after_exec, memory


def pooled_contexts(sb: Sandbox, n: int) -> list[float]:
    """Later Python contexts: each takes the spare kernel the agent keeps started."""
    first = sb.create_code_context("python")  # starts the pool
    samples = []
    path = f"/v1/sandboxes/{sb.id}/code/contexts"
    for _ in range(n):
        deadline = time.monotonic() + 60
        while sb.client.request("GET", path)["pool"].get("python") != "ready":
            assert time.monotonic() < deadline, "the spare kernel never got ready"
            time.sleep(0.2)
        t0 = time.perf_counter()
        ctx = sb.create_code_context("python")
        samples.append(time.perf_counter() - t0)
        assert sb.run_code("1+1", context=ctx).text == "2"
        sb.delete_code_context(ctx)
    sb.delete_code_context(first)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--contexts", type=int, default=8)
    args = parser.parse_args()
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    srv.start()
    opts = {"base_url": srv.url, "api_key": srv.api_key}
    try:
        sb = Sandbox.create(memory_mb=2048, **opts)
        try:
            warm, warm_cpu = warm_round_trips(sb, args.n)
            print(report("1+1 round trip, warm Python context", warm))
            print(f"  sandbox CPU per run: {warm_cpu * 1000:.2f} ms")
            raw = raw_jupyter_round_trips(sb, args.n)
            print(report("  baseline: raw jupyter_client (in sandbox)", raw))
            pooled = pooled_contexts(sb, args.contexts)
            print(report("new Python context, from the warm pool", pooled))
        finally:
            sb.destroy()
        cold, cold_cpu = cold_contexts(opts, max(3, args.contexts // 2))
        print(report("new Python context, cold (fresh sandbox)", cold))
        print(report("  sandbox CPU for it (as ms)", cold_cpu))
        from_create, after_exec, memory = prestarted_contexts(opts, max(3, args.contexts // 2))
        print(report("new context, HUTCH_CODE_PRESTART sandbox", after_exec))
        print(report("  the same, from the start of the create", from_create))
        print("  " + memory)
    finally:
        srv.stop()
        _cleanup_home(srv)


if __name__ == "__main__":
    main()
