"""Soak: many create/exec/stream/destroy cycles at mixed concurrency, with the server killed
(-9) and restarted along the way, then a check that nothing is left on the host.

    sudo .venv/bin/python bench/soak.py [cycles] [restart_every]     (default 1000, 200)

One real server with its own home. Cycles run in batches whose concurrency goes through 1, 4,
16, 8, 2 and 12 threads; each cycle creates a sandbox (busybox; every fifth the default
image), runs `echo`, streams `seq 1 200`, and destroys it. Every `restart_every` cycles the
server gets SIGKILL and is started again; a canary sandbox lives through all of it (it must
be re-adopted every time). Then 50 creates at once, which must all succeed.

At the end, with the server still up and no sandbox left, nothing of the cycles may remain:
mounts and loop devices under the home (against the baseline taken at the first start),
veths, nftables chains of the home's table, cgroups, btrfs subvolumes, processes whose root is
under the home, files under `HOME/sandboxes` and `HOME/runc`; and the server's RSS may not
have grown more than 20 MB over its last lifetime (measured after its first batch).

Prints the cycle time p50/p95/p99 per concurrency, next to the baseline (concurrency 1 of the
same run), the load average before and after, and every leak found. `tests/test_soak.py` runs
a short version in CI through `run_soak`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import report
from hutch import Sandbox
from hutch.runtime import ImageStore
from hutch.runtime.container._cgroups import cgroup_name
from tests._server import SHARED_IMAGES, ServerProcess
from tests.conftest import _cleanup_home
from tests.support.busybox import add_busybox_image

LEVELS = (1, 4, 16, 8, 2, 12)
RSS_GROWTH_LIMIT = 20 << 20
CGROUP_CONTROLLERS = ("memory", "pids", "cpu", "freezer", "cpuset", "blkio", "devices")


@dataclass
class SoakResult:
    cycles_ok: int = 0
    failures: list[str] = field(default_factory=list)
    by_level: dict[int, list[float]] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)
    rss_growth: list[int] = field(default_factory=list)  # bytes, per server lifetime
    concurrent_creates: list[float] = field(default_factory=list)
    concurrent_failures: list[str] = field(default_factory=list)
    leaks: dict[str, list[str]] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)  # made, but their client had given up
    load_before: str = ""
    load_after: str = ""


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cycle(opts: dict[str, str], index: int) -> tuple[str, float]:
    started = time.monotonic()
    image = "default" if index % 5 == 0 else "busybox"
    sb = Sandbox.create(image=image, memory_mb=256, **opts)
    try:
        assert sb.exec("echo hi").stdout == "hi\n"
        out = b"".join(e.data for e in sb.exec_stream("seq 1 200") if e.type == "stdout")
        assert out.count(b"\n") == 200, out[-100:]
    finally:
        sb.destroy()
    return sb.id, time.monotonic() - started


# -- what a sandbox leaves on the host --------------------------------------------------------


def _lines(*argv: str) -> list[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout.splitlines()


def host_state(home: Path) -> dict[str, set[str]]:
    """What of this home is on the host now, by kind (compared before and after)."""
    home_s = str(home.resolve())
    tag = hashlib.sha256(home_s.encode()).hexdigest()[:6]
    roots: list[str] = []  # by what they are, not their pid: a restart may re-adopt
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmdline = ""
        if root.startswith(home_s + "/") or home_s in cmdline:
            roots.append(f"{root} {cmdline[:120]}")
    return {
        "mounts": {line.split()[1] for line in _lines("cat", "/proc/mounts") if home_s in line},
        "loop devices": {line for line in _lines("losetup", "-a") if home_s in line},
        "nftables chains": {
            line.split()[1]
            for line in _lines("nft", "list", "table", "inet", f"hutch_{tag}")
            if line.strip().startswith("chain sb_")
        },
        "btrfs subvolumes": {
            line.split()[-1] for line in _lines("btrfs", "subvolume", "list", f"{home_s}/storage")
        },
        "processes": {f"{what} (x{n})" for what, n in Counter(roots).items()},
        "files under sandboxes/": {p.name for p in (home / "sandboxes").glob("*")},
        "files under runc/": {p.name for p in (home / "runc").glob("*")},
    }


def sandbox_traces(home: Path, sandbox_ids: set[str]) -> dict[str, set[str]]:
    """Per-sandbox things named after the ids: veths and cgroups."""
    tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:6]
    veths = {
        sid
        for sid in sandbox_ids
        if Path(
            "/sys/class/net", "hz" + hashlib.sha256(f"{tag}/{sid}".encode()).hexdigest()[:12]
        ).exists()
    }
    cgroups = {
        f"{c}/{sid}"
        for sid in sandbox_ids
        for c in CGROUP_CONTROLLERS
        if Path("/sys/fs/cgroup", c, cgroup_name(home, sid)).exists()
    }
    return {"veths": veths, "cgroups": cgroups}


# -- the run ---------------------------------------------------------------------------------


def run_soak(
    srv: ServerProcess,
    cycles: int,
    restart_every: int,
    *,
    concurrent_creates: int = 50,
    levels: tuple[int, ...] = LEVELS,
    say: Callable[[str], None] = lambda _: None,
) -> SoakResult:
    result = SoakResult(load_before=Path("/proc/loadavg").read_text().strip())
    opts = {"base_url": srv.url, "api_key": srv.api_key}
    baseline = host_state(srv.home)
    canary = Sandbox.create(image="busybox", **opts)
    made: set[str] = set()
    done = 0
    level_index = 0
    next_restart = restart_every
    rss_start: int | None = None
    assert srv.proc is not None
    while done < cycles:
        level = levels[level_index % len(levels)]
        level_index += 1
        batch = min(level * 2, cycles - done, next_restart - done)
        with ThreadPoolExecutor(max_workers=level) as pool:
            futures = [pool.submit(_cycle, opts, done + i) for i in range(batch)]
            for future in futures:
                try:
                    sid, seconds = future.result()
                except Exception as exc:  # a failed cycle is a finding, not a crash
                    result.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                made.add(sid)
                result.cycles_ok += 1
                result.by_level.setdefault(level, []).append(seconds)
        done += batch
        if rss_start is None:
            rss_start = _rss(srv.proc.pid)  # after a first batch: imports and caches are in
        say(f"{done}/{cycles} cycles, {len(result.failures)} failed, load {os.getloadavg()[0]:.1f}")
        if done >= next_restart and done < cycles:
            result.rss_growth.append(_rss(srv.proc.pid) - rss_start)
            srv.kill9()
            result.restarts.append(srv.start(timeout=300))  # a loaded host restarts slowly
            rss_start = None
            next_restart += restart_every
            assert canary.exec("echo alive").stdout == "alive\n", "the canary was not re-adopted"
    last_start = rss_start or _rss(srv.proc.pid)

    def create_one(_: int) -> tuple[Sandbox, float]:
        started = time.monotonic()
        return Sandbox.create(image="busybox", memory_mb=128, **opts), time.monotonic() - started

    boxes: list[Sandbox] = []
    with ThreadPoolExecutor(max_workers=concurrent_creates) as pool:
        for future in [pool.submit(create_one, i) for i in range(concurrent_creates)]:
            try:
                box, seconds = future.result()
            except Exception as exc:
                result.concurrent_failures.append(f"{type(exc).__name__}: {exc}")
                continue
            boxes.append(box)
            made.add(box.id)
            result.concurrent_creates.append(seconds)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda b: b.destroy(), boxes))
    canary.destroy()
    made.add(canary.id)
    result.rss_growth.append(_rss(srv.proc.pid) - last_start)  # the 50 creates included

    # A create whose client gave up (a timeout under load) may still have succeeded on the
    # server: the sandbox is the client's to destroy, not a leak. Count them, destroy them,
    # then look for what the host still holds.
    orphans = Sandbox.list(**opts)
    result.orphans = [s.id for s in orphans]
    for info in orphans:
        made.add(info.id)
        try:
            Sandbox.connect(info.id, **opts).destroy()
        except Exception as exc:
            result.failures.append(f"destroying {info.id}: {type(exc).__name__}: {exc}")
    after = host_state(srv.home)
    for kind, now in after.items():
        extra = now - baseline[kind]
        if extra:
            result.leaks[kind] = sorted(extra)
    for kind, found in sandbox_traces(srv.home, made).items():
        if found:
            result.leaks[kind] = sorted(found)
    result.load_after = Path("/proc/loadavg").read_text().strip()
    return result


def print_report(result: SoakResult) -> None:
    print(f"load average before: {result.load_before}")
    base = result.by_level.get(1, [])
    if base:
        print(report("baseline: cycle at concurrency 1", base))
    for level in sorted(result.by_level):
        if level != 1:
            print(report(f"cycle at concurrency {level}", result.by_level[level]))
    if result.restarts:
        print(report("server restart after kill -9", result.restarts))
    if result.concurrent_creates:
        print(
            report(f"{len(result.concurrent_creates)} creates at once", result.concurrent_creates)
        )
    print(f"cycles ok: {result.cycles_ok}, failed: {len(result.failures)}")
    for failure in result.failures[:10]:
        print(f"  failed: {failure}")
    print(f"concurrent creates failed: {len(result.concurrent_failures)}")
    for failure in result.concurrent_failures[:10]:
        print(f"  failed: {failure}")
    print(f"sandboxes whose create the client gave up on (destroyed after): {len(result.orphans)}")
    growth = ", ".join(f"{g / 2**20:+.2f} MB" for g in result.rss_growth)
    print(f"server RSS growth per lifetime: {growth} (limit {RSS_GROWTH_LIMIT >> 20} MB)")
    print("leaks: " + ("none" if not result.leaks else ""))
    for kind, items in result.leaks.items():
        print(f"  {kind}: {len(items)}: {items[:5]}")
    print(f"load average after: {result.load_after}")


def main(cycles: int, restart_every: int) -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root: sudo .venv/bin/python bench/soak.py")
    add_busybox_image(ImageStore(SHARED_IMAGES), name="busybox")
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-soak-", dir="/var/tmp")))
    srv.start(timeout=300)
    try:
        result = run_soak(srv, cycles, restart_every, say=print)
    finally:
        srv.stop()
        _cleanup_home(srv)
    print_report(result)
    bad = (
        result.failures
        or result.concurrent_failures
        or result.leaks
        or any(g > RSS_GROWTH_LIMIT for g in result.rss_growth)
    )
    return 1 if bad else 0


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    sys.exit(main(*(args or [1000]), *([] if len(args) > 1 else [200])))
