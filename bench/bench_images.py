"""Image figures: create -> first exec from a warm pool (next to a cold create in the same
run), and pull + unpack of a ~100 MB image from a local registry (next to `skopeo copy` of the
same image, which only fetches).

The warm-pool figure is split into the client's two requests and the server's own steps of
the create (logged at HUTCH_LOG_LEVEL=debug): image lookup, record, claim, network policy,
secrets, the one SQLite transaction. Each create waits until the pool is full again (GET
/v1/pools) and 0.3 s more; a second series creates one sandbox every 0.4 s while the pool
refills behind it. Print `uptime` with every figure: the machine's load moves them by ms.

Run as root after the default image is built:

    .venv/bin/python bench/bench_images.py [--n 40] [--pulls 3]   # --pulls 0: pool figures only
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import report
from hutch import Client, Sandbox
from hutch.runtime import ImageStore
from tests._server import SHARED_IMAGES, ServerProcess
from tests.conftest import _cleanup_home
from tests.support.busybox import add_busybox_image
from tests.support.oci_images import (
    local_registry,
    make_oci_layout,
    make_python_rootfs,
    skopeo_copy,
)

POOL = 3


class PoolServer(ServerProcess):
    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "HUTCH_WARM_POOLS": f"busybox={POOL}",
            "HUTCH_LOG_LEVEL": "debug",
        }


def _ready(srv: ServerProcess) -> int:
    with srv.client() as c:
        pools = c.get("/v1/pools").json()["pools"]
    return sum(p["ready"] for p in pools if p["image"] == "busybox")


def pool_create_first_exec(
    srv: ServerProcess,
    n: int,
    parts: dict[str, list[float]] | None = None,
    *,
    every: float | None = None,
    **extra: object,
) -> list[float]:
    """With `every`, one create each `every` seconds while the pool refills behind them;
    else each create after the pool is full again (a quiet server)."""
    opts = {"base_url": srv.url, "api_key": srv.api_key}
    samples = []
    for _ in range(n):
        deadline = time.monotonic() + 120
        while _ready(srv) < (1 if every else POOL):  # measure hits only
            assert time.monotonic() < deadline, "pool did not refill"
            time.sleep(0.05)
        time.sleep(every or 0.3)  # NB: the refill's last step (a warm-up exec) ends first
        t0 = time.perf_counter()
        sb = Sandbox.create(image="busybox", **opts, **extra)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        r = sb.exec("true")
        t2 = time.perf_counter()
        samples.append(t2 - t0)
        if parts is not None:
            parts.setdefault("client: POST /v1/sandboxes", []).append(t1 - t0)
            parts.setdefault("client: first exec", []).append(t2 - t1)
        assert r.exit_code == 0
        sb.destroy()
    return samples


def server_steps(log: Path) -> dict[str, list[float]]:
    """The create steps the server logged at debug level (HUTCH_LOG_LEVEL=debug), pooled only."""
    steps: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if "created sandbox" not in line or " claim=" not in line or " cold=" in line:
            continue
        for word in line.split():
            name, sep, value = word.partition("=")
            if sep and value.endswith("ms"):
                steps.setdefault(f"server: {name}", []).append(float(value[:-2]) / 1e3)
    return steps


def uptime() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def exec_round_trips(srv: ServerProcess, n: int, idle: float = 0.0) -> dict[str, list[float]]:
    """exec `true` (and, after `idle` seconds of quiet, GET the sandbox: HTTP + auth alone)."""
    sb = Sandbox.create(image="busybox", base_url=srv.url, api_key=srv.api_key)
    samples: dict[str, list[float]] = {"exec": [], "info": []}
    try:
        for _ in range(n):
            time.sleep(idle)
            t0 = time.perf_counter()
            sb.exec("true")
            samples["exec"].append(time.perf_counter() - t0)
            if idle:
                time.sleep(idle)
                t0 = time.perf_counter()
                sb.info()
                samples["info"].append(time.perf_counter() - t0)
        return samples
    finally:
        sb.destroy()


def pull_figures(work: Path, srv: ServerProcess, pulls: int, size_mb: int) -> None:
    default_rootfs = ImageStore(SHARED_IMAGES).get("default").rootfs
    layout = work / "layout"
    rootfs = make_python_rootfs(work / "rootfs", default_rootfs, padding_mb=max(0, size_mb - 60))
    make_oci_layout(layout, "big", rootfs)
    size = sum(p.stat().st_size for p in (layout / "blobs").rglob("*") if p.is_file())
    with local_registry(work) as registry, Client(base_url=srv.url, api_key=srv.api_key) as c:
        ref = f"{registry}/bench{secrets.token_hex(3)}/big:1"
        skopeo_copy(f"oci:{layout}:big", f"docker://{ref}")
        skopeo, hutch = [], []
        for i in range(pulls):
            dest = work / f"copy{i}"
            t0 = time.perf_counter()
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    f"docker://{ref}",
                    f"oci:{dest}:x",
                ],
                check=True,
            )
            skopeo.append(time.perf_counter() - t0)
            shutil.rmtree(dest)
            t0 = time.perf_counter()
            c.pull_image(ref, insecure=True)
            hutch.append(time.perf_counter() - t0)
            c.remove_image(ref)
        print(f"image: {size / 1e6:.0f} MB compressed in the registry")
        print(report("skopeo copy (fetch only, baseline)", skopeo))
        print(report("hutch image pull (fetch + unpack + store)", hutch))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--pulls", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    add_busybox_image(ImageStore(SHARED_IMAGES), name="busybox")
    work = Path(tempfile.mkdtemp(prefix="hutch-bench-images-", dir="/var/tmp"))
    work.chmod(0o711)
    srv = PoolServer(work / "home")
    try:
        srv.start()
        print(f"load average before: {uptime()}")
        parts: dict[str, list[float]] = {}
        warm = pool_create_first_exec(srv, args.n, parts)
        steps = server_steps(srv.log_path)
        steady = pool_create_first_exec(srv, args.n, every=0.4)
        cold = pool_create_first_exec(srv, max(5, args.n // 4), disk_mb=2048)
        rtt = exec_round_trips(srv, args.n)
        idle = exec_round_trips(srv, args.n, idle=0.3)
        print(report("exec round trip, running sandbox (baseline)", rtt["exec"]))
        print(report("  ... after 0.3 s of quiet", idle["exec"]))
        print(report("GET /v1/sandboxes/{id} after 0.3 s of quiet", idle["info"]))
        print(report("create -> first exec, warm pool (busybox)", warm))
        for name, values in {**parts, **steps}.items():
            print(report(f"  {name}", values))
        print(report("  ... one create every 0.4 s (refilling)", steady))
        print(report("create -> first exec, cold (busybox)", cold))
        print(f"load average after the sandbox figures: {uptime()}")
        if args.pulls:
            pull_figures(work, srv, args.pulls, args.size_mb)
    finally:
        srv.stop()
        _cleanup_home(srv)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
