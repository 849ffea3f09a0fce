"""Every benchmark in one run, one table: where the project stands against issue 21's goals.

    .venv/bin/python bench/all.py            # the full run (several minutes)
    .venv/bin/python bench/all.py --quick    # a minute or two: fewer samples, smaller files
    .venv/bin/python bench/all.py --only sandbox,files

One server serves every section. Each figure is measured next to its baseline in the same
run (raw runc, host subprocess, host cp, raw jupyter_client in the sandbox, direct requests to
the sandbox's address); the load average is printed before and after: figures from a busy
machine are not comparable with figures from a quiet one. A section that fails prints its
error as a row and the others still run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_code, bench_lifecycle, bench_preview, bench_sandbox
from bench._dashboard import Row, at_least, at_most, table
from bench._stats import loadavg
from hutch import Sandbox
from hutch.runtime import ImageStore
from tests._server import SHARED_IMAGES, ServerProcess
from tests.conftest import _cleanup_home

MiB = 1024 * 1024
# A server starts in a second or two; on a machine shared by many, far slower.
START_TIMEOUT = 180.0


class Ctx:
    def __init__(self, srv: ServerProcess, quick: bool) -> None:
        self.srv = srv
        self.quick = quick
        self.opts: dict[str, Any] = {"base_url": srv.url, "api_key": srv.api_key}

    def n(self, quick: int, full: int) -> int:
        return quick if self.quick else full


# -- sandbox: create, exec -------------------------------------------------------------------


def sandbox_rows(ctx: Ctx) -> list[Row]:
    n = ctx.n(10, 30)
    rootfs = ImageStore(SHARED_IMAGES).get("default").rootfs
    runc = bench_sandbox.raw_runc_true(rootfs, n)
    host = bench_sandbox.host_true(ctx.n(100, 300))
    bench_sandbox.create_to_first_exec(ctx.opts, 2, "default")  # the page cache
    firsts, _ = bench_sandbox.create_to_first_exec(ctx.opts, n, "default")
    runc_p50 = Row("", runc).main
    host_p50 = Row("", host).main
    rows = [
        Row(
            "create -> first exec, cold",
            firsts,
            baseline_label="raw runc run /bin/true",
            baseline=runc_p50,
            goal_text="<= 2x",
            goal=at_most(2.0),
        )
    ]
    with Sandbox.create(**ctx.opts) as sb:
        rows.append(
            Row(
                "exec round trip of `true`",
                bench_sandbox.exec_round_trips(sb, ctx.n(100, 300)),
                baseline_label="host subprocess.run(true)",
                baseline=host_p50,
                goal_text="<= 3x",
                goal=at_most(3.0),
            )
        )
        rate = bench_sandbox.throughput(ctx.opts, sb.id, 8, ctx.n(3, 5))
        rows.append(
            Row(
                "exec throughput, 8 clients",
                value=rate,
                unit="execs/s",
                goal_text=">= 1,000/s",
                goal=at_least(1000),
            )
        )
    return rows


def create_stage_rows(ctx: Ctx) -> list[Row]:
    """Where a cold create's time goes, from the runtime's own timings (logged at debug by a
    server of its own, so that debug logging costs the other figures nothing)."""
    home = Path(tempfile.mkdtemp(prefix="hutch-bench-stages-", dir="/var/tmp"))
    srv = ServerProcess(home)
    saved = os.environ.get("HUTCH_LOG_LEVEL")
    os.environ["HUTCH_LOG_LEVEL"] = "debug"
    try:
        srv.start(timeout=START_TIMEOUT)
    except BaseException:
        srv.stop()
        _cleanup_home(srv)
        raise
    finally:
        if saved is None:
            del os.environ["HUTCH_LOG_LEVEL"]
        else:
            os.environ["HUTCH_LOG_LEVEL"] = saved
    try:
        opts = {"base_url": srv.url, "api_key": srv.api_key}
        bench_sandbox.create_to_first_exec(opts, ctx.n(5, 15), "default")
        stages: dict[str, list[float]] = {}
        # The server's steps (image, record, claim, cold) and, inside `cold`, the runtime's.
        for line in srv.log_path.read_text(errors="replace").splitlines():
            found = re.search(r"(created|started) sandbox \S+: (.*)$", line)
            if not found:
                continue
            who = "server" if found.group(1) == "created" else "runtime"
            for name, ms in re.findall(r"(\w+)=([\d.]+)ms", found.group(2)):
                stages.setdefault(f"{who} {name}", []).append(float(ms) / 1000)
        return [Row(f"  create stage: {name}", samples) for name, samples in stages.items()]
    finally:
        srv.stop()
        _cleanup_home(srv)


# -- files -----------------------------------------------------------------------------------


def _peak_rss_reset() -> None:
    # NB: writing 5 to clear_refs resets VmHWM, so each transfer's peak is its own.
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def files_rows(ctx: Ctx) -> list[Row]:
    size = ctx.n(64, 256) * MiB
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-all-", dir="/var/tmp"))
    try:
        src = tmp / "big.bin"
        src.write_bytes(os.urandom(MiB) * (size // MiB))
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)
        t0 = time.perf_counter()
        subprocess.run(["cp", str(src), str(tmp / "copy.bin")], check=True)
        cp_mbps = size / (time.perf_counter() - t0) / 1e6
        data = src.read_bytes()
        rows: list[Row] = []

        def rate(figure: str, seconds: float, goal: bool = True, note: str = "") -> Row:
            return Row(
                figure,
                value=size / seconds / 1e6,
                unit="MB/s",
                baseline_label="host cp",
                baseline=cp_mbps,
                goal_text=">= 400 MB/s" if goal else "",
                goal=(lambda _r, v=size / seconds / 1e6: v >= 400) if goal else None,
                note=note,
            )

        with Sandbox.create(disk_mb=size * 3 // MiB + 1024, **ctx.opts) as sb:
            t0 = time.perf_counter()
            assert sb.write_file("a.bin", data) == size
            rows.append(rate(f"write_file(bytes) {size // MiB} MiB", time.perf_counter() - t0))
            with open(src, "rb") as f:
                t0 = time.perf_counter()
                assert sb.write_file("b.bin", f) == size
                rows.append(
                    rate(f"write_file(file object) {size // MiB} MiB", time.perf_counter() - t0)
                )
            del data
            _peak_rss_reset()
            before = _peak_rss()
            t0 = time.perf_counter()
            back = sb.read_file("a.bin")
            seconds = time.perf_counter() - t0
            grown = (_peak_rss() - before) / size
            assert len(back) == size
            del back
            rows.append(
                rate(
                    f"read_file {size // MiB} MiB",
                    seconds,
                    note=f"client peak memory {grown:.2f}x the file (goal <= 1.1x)",
                )
            )
            t0 = time.perf_counter()
            got = sum(len(c) for c in sb.read_file_stream("b.bin"))
            assert got == size
            rows.append(rate("read_file_stream", time.perf_counter() - t0, goal=False))
        return rows
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


# -- code interpreter ------------------------------------------------------------------------


def code_rows(ctx: Ctx) -> list[Row]:
    n = ctx.n(50, 200)
    with Sandbox.create(memory_mb=2048, **ctx.opts) as sb:
        warm, warm_cpu = bench_code.warm_round_trips(sb, n)
        raw = bench_code.raw_jupyter_round_trips(sb, n)
    cold, cold_cpu = bench_code.cold_contexts(ctx.opts, ctx.n(2, 4))
    _, prestarted, memory = bench_code.prestarted_contexts(ctx.opts, ctx.n(2, 4))
    return [
        Row(
            "code `1+1`, warm context",
            warm,
            baseline_label="raw jupyter_client in the sandbox",
            baseline=Row("", raw).main,
            goal_text="<= 1.2x",
            goal=at_most(1.2),
            note=f"sandbox CPU {warm_cpu * 1000:.2f} ms per run",
        ),
        Row(
            "new code context, cold sandbox",
            cold,
            goal_text="<= 400 ms",
            goal=lambda p50: p50 <= 400,
            note=f"sandbox CPU p50 {sorted(cold_cpu)[len(cold_cpu) // 2] * 1000:.0f} ms",
        ),
        Row(
            "new code context, HUTCH_CODE_PRESTART=python",
            prestarted,
            goal_text="<= 400 ms",
            goal=lambda p50: p50 <= 400,
            note=memory,
        ),
    ]


# -- preview (bench_preview's servers and tools) ---------------------------------------------

HTTP10_PORT = 8005


def preview_rows(ctx: Ctx) -> list[Row]:
    duration = ctx.n(2, 3)
    sb = Sandbox.create(cpu=2.0, **ctx.opts)
    try:
        sb.exec("cat > /tmp/small.py", stdin=bench_preview.SMALL_SERVER)
        sb.exec("cat > /tmp/node.js", stdin=bench_preview.NODE_SERVER)
        sb.exec("cat > /tmp/wsecho.py", stdin=bench_preview.WSECHO)
        sb.exec("nohup python3 /tmp/small.py >/dev/null 2>&1 &")
        sb.exec("nohup node /tmp/node.js >/dev/null 2>&1 &")
        sb.exec(f"cd /tmp && nohup python3 -m http.server {HTTP10_PORT} >/dev/null 2>&1 &")
        sb.exec(
            "mkdir -p /tmp/site && nohup python3 /tmp/wsecho.py 8002 /tmp/site >/dev/null 2>&1 &"
        )
        address = sb.set_network("none")["address"]
        rows = []
        for label, port, conns, goal in (
            ("preview req/s, raw asyncio upstream, -c16", 8001, 16, 0.8),
            ("preview req/s, node http, -c16", 8003, 16, 0.9),
            ("preview req/s, HTTP/1.0 upstream, -c1", HTTP10_PORT, 1, 0.8),
        ):
            url = sb.expose_port(port).url
            host = urlsplit(url).netloc
            # The port the preview URL names: the native proxy's when it runs.
            proxied = bench_preview.preview_base(url)
            direct = f"http://{address}:{port}/"
            bench_preview.wait_port(direct, None)
            bench_preview.wait_port(proxied, host)
            d_rps = bench_preview.wrk(direct, None, conns, duration)[0]
            p_rps = bench_preview.wrk(proxied, host, conns, duration)[0]
            rows.append(
                Row(
                    label,
                    value=p_rps,
                    unit="req/s",
                    baseline_label="direct",
                    baseline=d_rps,
                    goal_text=f">= {goal:.0%}",
                    goal=at_least(goal),
                )
            )
        big_url = sb.expose_port(8002).url
        big_host = urlsplit(big_url).netloc
        n = ctx.n(256, 1024) * MiB
        bench_preview.wait_port(f"http://{address}:8002/big?n=1", None)
        d = bench_preview.curl_speed(f"http://{address}:8002/big?n={n}", None)
        p = bench_preview.curl_speed(f"{bench_preview.preview_base(big_url)}big?n={n}", big_host)
        rows.append(
            Row(
                f"{n // MiB} MiB download through preview",
                value=p,
                unit="MB/s",
                baseline_label="direct",
                baseline=d,
                goal_text=">= 80%",
                goal=at_least(0.8),
            )
        )
        return rows
    finally:
        sb.destroy()


# -- lifecycle (bench_lifecycle's steps; no goals yet) ---------------------------------------


def lifecycle_rows(ctx: Ctx) -> list[Row]:
    timed = bench_lifecycle.timed
    opts = {**ctx.opts, "timeout": 0}
    cold: list[float] = []
    pause_resume: list[float] = []
    stop_start: list[float] = []
    fork: list[float] = []
    base = Sandbox.create(**opts)
    try:
        for _ in range(ctx.n(3, 10)):
            made: list[Sandbox] = []
            sb = timed(cold, lambda made=made: bench_lifecycle.create_and_exec(made, opts))
            t0 = time.perf_counter()
            sb.pause()
            sb.resume()
            sb.exec("true")
            pause_resume.append(time.perf_counter() - t0)
            timed(stop_start, lambda sb=sb: bench_lifecycle.stop_start_exec(sb))
            timed(fork, lambda made=made: bench_lifecycle.fork_and_exec(made, base))
            for s in made:
                s.destroy()
    finally:
        base.destroy()
    cold_p50 = Row("", cold).main
    label = "cold create -> first exec"
    return [
        Row("pause -> resume -> first exec", pause_resume, baseline_label=label, baseline=cold_p50),
        Row("stop -> start -> first exec", stop_start, baseline_label=label, baseline=cold_p50),
        Row("fork(1) -> first exec", fork, baseline_label=label, baseline=cold_p50),
    ]


SECTIONS: dict[str, Callable[[Ctx], list[Row]]] = {
    "sandbox": sandbox_rows,
    "stages": create_stage_rows,
    "files": files_rows,
    "code": code_rows,
    "preview": preview_rows,
    "lifecycle": lifecycle_rows,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: a minute or two")
    parser.add_argument("--only", default="", help=f"comma-separated of {','.join(SECTIONS)}")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")

    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-all-", dir="/var/tmp")))
    try:
        srv.start(timeout=START_TIMEOUT)
    except BaseException:
        srv.stop()
        _cleanup_home(srv)
        raise
    ctx = Ctx(srv, args.quick)
    started = time.monotonic()
    before = loadavg()
    rows: list[Row] = []
    try:
        for name in chosen:
            t0 = time.monotonic()
            try:
                rows.extend(SECTIONS[name](ctx))
            except Exception as exc:  # one broken section must not hide the others
                traceback.print_exc()
                rows.append(Row(f"{name}: FAILED", value=0, note=f"{type(exc).__name__}: {exc}"))
            print(f"[{name}: {time.monotonic() - t0:.0f} s, load {loadavg()}]", flush=True)
    finally:
        srv.stop()
        _cleanup_home(srv)
    print()
    print(table(rows))
    print(
        f"\nload average before: {before}  after: {loadavg()}  "
        f"({time.monotonic() - started:.0f} s{', --quick' if args.quick else ''}; "
        f"{os.cpu_count()} CPUs; ratios are p50 against the baseline's p50, rates against "
        "the baseline's rate)"
    )


if __name__ == "__main__":
    threading.current_thread().name = "bench-all"
    main()
