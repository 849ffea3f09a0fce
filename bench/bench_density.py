"""Density: how many idle sandboxes one host holds, what each costs, and whether the server
still answers quickly with all of them there (issue 17, "Density").

    sudo .venv/bin/python bench/bench_density.py [--n 1000] [--image default] [--parallel 4]

One server; a probe sandbox is made first and its exec round trip measured alone (the
baseline). Then N more sandboxes are created (no lifetime, no idle policy), and with all of
them idle:

- host memory per sandbox: the drop of MemAvailable over the N creates, divided by N (this
  counts the kernel's part too: netns, veth, mounts, page tables; other jobs on a shared
  machine move it, so the sum of the sandboxes' own cgroup memory is printed next to it),
- CPU of the idle sandboxes (their cgroups' cpuacct, over a window) and of the server process,
- the probe's exec round trip again (goal: p50 <= 2x the unloaded one),
- then all N are paused and the same is measured (goal: paused CPU ~0).

Creating stops early (and the largest N is reported, with the reason) when a create fails
with anything but a 503 or still fails after --retries (a 503 asks for a retry), or
MemAvailable falls under --min-free-gib: the machine is shared. Every sandbox is destroyed and
the server stopped at the end, also after an error or Ctrl-C. Create failures are counted by
HTTP status: a start failure must be a 503 (`sandbox_start_failed`), never a 500.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import loadavg, percentile, report
from bench.bench_files import sandbox_cgroup
from bench.bench_sandbox import exec_round_trips
from hutch import Sandbox
from hutch.runtime.container._cgroups import CGROUP_ROOT, is_unified
from hutch.runtime.container._usage import cgroup_usage
from tests._server import ServerProcess

GIB = 1024**3


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def cgroup_rss(sandbox_id: str) -> int:
    """Anonymous + mapped memory of the sandbox's cgroup (page cache left out: reclaimable)."""
    keys: tuple[str, ...]
    if is_unified():
        stat = sandbox_cgroup(CGROUP_ROOT, sandbox_id) / "memory.stat"
        keys = ("anon", "file_mapped", "kernel_stack", "pagetables", "sock")
    else:
        stat = sandbox_cgroup(CGROUP_ROOT / "memory", sandbox_id) / "memory.stat"
        keys = ("total_rss", "total_mapped_file")
    total = 0
    try:
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in keys:
                total += int(value)
    except OSError:
        pass
    return total


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole host: the share is noisy on a shared machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def _usage_of(sandbox_id: str) -> tuple[float, float, int, int, int, int]:
    hierarchy = CGROUP_ROOT if is_unified() else CGROUP_ROOT / "cpuacct"
    return cgroup_usage(str(sandbox_cgroup(hierarchy, sandbox_id).relative_to(hierarchy)))


def idle_window(ids: list[str], server_pid: int, seconds: float) -> dict[str, float]:
    """CPU used by the sandboxes' cgroups and by the server over `seconds` of no requests."""
    sb0 = sum(_usage_of(i)[0] for i in ids)
    srv0 = process_cpu(server_pid)
    busy0, total0 = host_cpu()
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    sb1 = sum(_usage_of(i)[0] for i in ids)
    srv1 = process_cpu(server_pid)
    busy1, total1 = host_cpu()
    return {
        "sandboxes_cpu_pct": 100 * (sb1 - sb0) / elapsed,  # % of one CPU, all sandboxes
        "server_cpu_pct": 100 * (srv1 - srv0) / elapsed,
        "host_busy_pct": 100 * (busy1 - busy0) / max(1.0, total1 - total0),  # of all CPUs
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--image", default="default")
    parser.add_argument("--parallel", type=int, default=4, help="concurrent creates/destroys")
    parser.add_argument("--execs", type=int, default=200, help="probe execs per measurement")
    parser.add_argument("--window", type=float, default=20.0, help="idle CPU window, seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries of a create's 503")
    parser.add_argument("--min-free-gib", type=float, default=4.0)
    parser.add_argument("--budget-min", type=float, default=30.0, help="stop creating after")
    args = parser.parse_args()
    # Ctrl-C or `kill PID` still destroys every sandbox (a shell starts a background job with
    # SIGINT ignored, so SIGTERM is the way to stop one).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    srv = ServerProcess(
        Path(tempfile.mkdtemp(prefix="hutch-bench-density-", dir="/var/tmp")),
        extra_env={"HUTCH_DEFAULT_TIMEOUT": "0"},
    )
    srv.start()
    assert srv.proc is not None
    server_pid = srv.proc.pid
    opts: dict[str, Any] = {"base_url": srv.url, "api_key": srv.api_key, "timeout": 0}
    made: list[Sandbox] = []
    lock = threading.Lock()
    failures: Counter[str] = Counter()
    stop_reason = f"reached --n {args.n}"
    stop_creating = threading.Event()
    deadline = time.monotonic() + args.budget_min * 60
    print(f"load average before: {loadavg()}", flush=True)
    try:
        probe = Sandbox.create(image=args.image, **opts)
        made.append(probe)
        alone = exec_round_trips(probe, args.execs)
        print(report("baseline: probe exec, alone", alone), flush=True)
        avail0 = mem_available()
        srv_rss0 = process_rss(server_pid)
        create_s: list[float] = []

        def create_one(i: int) -> None:
            nonlocal stop_reason
            if stop_creating.is_set():
                return
            if mem_available() < args.min_free_gib * GIB:
                stop_reason = f"MemAvailable under {args.min_free_gib} GiB"
                stop_creating.set()
                return
            if time.monotonic() > deadline:
                stop_reason = f"time budget of {args.budget_min} min"
                stop_creating.set()
                return
            t0 = time.perf_counter()
            for attempt in range(args.retries + 1):
                try:
                    sb = Sandbox.create(image=args.image, **opts)
                    break
                except Exception as exc:  # counted by status: a 500 here is a bug
                    status = getattr(exc, "status", None)
                    code = getattr(exc, "code", type(exc).__name__)
                    print(f"create #{i} failed: {exc!r}"[:300], flush=True)
                    with lock:
                        failures[f"{status} {code}"] += 1
                    # A 503 says "retry" (an overloaded host); anything else ends the run.
                    if status != 503 or attempt == args.retries:
                        with lock:
                            stop_reason = f"create failures: {dict(failures)}"
                        stop_creating.set()
                        return
                    time.sleep(2.0)
            with lock:
                made.append(sb)
                create_s.append(time.perf_counter() - t0)
                count = len(made) - 1
            if count % 100 == 0:
                print(
                    f"  {count} sandboxes, MemAvailable {mem_available() / GIB:.1f} GiB, "
                    f"load {loadavg()}",
                    flush=True,
                )

        t_create = time.monotonic()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(create_one, range(1, args.n + 1)))
        created = len(made) - 1
        create_wall = time.monotonic() - t_create
        print(f"created {created} in {create_wall:.0f} s; stopped: {stop_reason}", flush=True)
        print(report("create (SDK, under growing density)", create_s), flush=True)
        ids = [sb.id for sb in made[1:]]
        time.sleep(5)  # let the fresh agents settle
        avail1 = mem_available()
        srv_rss1 = process_rss(server_pid)
        rss = [float(cgroup_rss(i)) for i in ids]
        # Cumulative since each create: also proves the cgroups read are the sandboxes'.
        boot_cpu = sum(_usage_of(i)[0] for i in ids)
        running = idle_window(ids, server_pid, args.window)
        loaded = exec_round_trips(probe, args.execs)

        t0 = time.monotonic()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(lambda sb: sb.pause(), made[1:]))
        pause_wall = time.monotonic() - t0
        time.sleep(2)
        paused = idle_window(ids, server_pid, args.window)
        loaded_paused = exec_round_trips(probe, args.execs)
        load_mid = loadavg()

        per_sb = (avail0 - avail1) / max(1, created)
        print(f"\nload average at measurement: {load_mid}")
        print(f"image={args.image} sandboxes={created} (+1 probe) parallel={args.parallel}")
        print(
            f"host memory per sandbox (MemAvailable drop / N): {per_sb / 1e6:.1f} MB "
            f"({(avail0 - avail1) / GIB:.2f} GiB for {created})"
        )
        print(
            f"sandbox cgroup rss+mapped per sandbox: p50 {percentile(rss, 50) / 1e6:.1f} MB, "
            f"mean {sum(rss) / max(1, len(rss)) / 1e6:.1f} MB"
        )
        print(
            "CPU of the sandboxes since their creates: "
            f"{boot_cpu / max(1, created) * 1e3:.0f} ms each"
        )
        print(f"server RSS: {srv_rss0 / 1e6:.0f} MB -> {srv_rss1 / 1e6:.0f} MB")
        for label, w in (("running, idle", running), ("paused", paused)):
            print(
                f"CPU over {args.window:.0f} s, {label}: all sandboxes "
                f"{w['sandboxes_cpu_pct']:.2f}% of one CPU; "
                f"server {w['server_cpu_pct']:.2f}%; whole host busy "
                f"{w['host_busy_pct']:.1f}% (all jobs on the machine)"
            )
        print(f"pause of all {created}: {pause_wall:.1f} s")
        base = percentile(alone, 50)
        print(report("baseline: probe exec, alone", alone))
        print(report(f"probe exec, {created} idle running", loaded))
        print(report(f"probe exec, {created} paused", loaded_paused))
        print(
            f"ratio p50: {percentile(loaded, 50) / base:.2f}x running, "
            f"{percentile(loaded_paused, 50) / base:.2f}x paused (goal <= 2x)"
        )
        print(f"create failures by status: {dict(failures) or 'none'}")
    finally:
        t0 = time.monotonic()

        def destroy(sb: Sandbox) -> None:
            try:
                sb.destroy()
            except Exception as exc:
                print(f"destroy {sb.id} failed: {exc!r}"[:200], flush=True)

        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(destroy, made))
        print(f"destroyed {len(made)} in {time.monotonic() - t0:.0f} s", flush=True)
        srv.stop()
        from tests.conftest import _cleanup_home

        _cleanup_home(srv)
    print(f"load average after:  {loadavg()}")


if __name__ == "__main__":
    main()
