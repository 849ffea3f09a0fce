"""Foundation figures: create -> first exec (cold), exec round trip, throughput, agent RSS.

Run as root after `scripts/test` (or `hutch image build`) has built the default image:

    .venv/bin/python bench/bench_sandbox.py [--n 50]

Baselines in the same run: raw `runc run` of `/bin/true` in the same image rootfs (no user
namespace, no overlay, no agent), and `subprocess.run(["true"])` on the host.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import report
from hutch import Sandbox
from hutch.runtime import ImageStore
from tests._server import SHARED_IMAGES, ServerProcess


def raw_runc_true(rootfs: Path, n: int) -> list[float]:
    """`runc run` of /bin/true with runc's own default spec: the floor for a cold create."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        bundle = Path(tmp)
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["root"] = {"path": str(rootfs), "readonly": True}
        spec["process"]["args"] = ["/bin/true"]
        spec["process"]["terminal"] = False
        (bundle / "config.json").write_text(json.dumps(spec))
        root = bundle / "state"
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            subprocess.run(
                ["runc", "--root", str(root), "run", "-b", str(bundle), f"raw{i}"],
                check=True,
                stdin=subprocess.DEVNULL,
            )
            samples.append(time.perf_counter() - t0)
        return samples


def host_true(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["true"], check=True)
        samples.append(time.perf_counter() - t0)
    return samples


def create_to_first_exec(
    opts: dict[str, str], n: int, image: str
) -> tuple[list[float], list[float]]:
    firsts, destroys = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        sb = Sandbox.create(image=image, **opts)
        r = sb.exec("true")
        firsts.append(time.perf_counter() - t0)
        assert r.exit_code == 0
        t1 = time.perf_counter()
        sb.destroy()
        destroys.append(time.perf_counter() - t1)
    return firsts, destroys


def exec_round_trips(sb: Sandbox, n: int) -> list[float]:
    for _ in range(20):
        sb.exec("true")
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        sb.run("true")
        samples.append(time.perf_counter() - t0)
    return samples


def throughput(opts: dict[str, str], sb_id: str, clients: int, seconds: float) -> float:
    count = [0] * clients
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        box = Sandbox.connect(sb_id, **opts)
        while time.monotonic() < stop:
            box.run("true")
            count[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / (time.monotonic() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()

    server = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    server.start()
    opts = {"base_url": server.url, "api_key": server.api_key}
    try:
        rootfs = ImageStore(SHARED_IMAGES).get("default").rootfs
        print(report("baseline: raw runc run /bin/true", raw_runc_true(rootfs, args.n)))
        print(report("baseline: host subprocess.run(true)", host_true(200)))
        create_to_first_exec(opts, 3, "default")  # warm the page cache
        firsts, destroys = create_to_first_exec(opts, args.n, "default")
        print(report("hutch: create -> first exec result (cold)", firsts))
        print(report("hutch: destroy", destroys))
        sb = Sandbox.create(**opts)
        try:
            print(report("hutch: exec round trip of `true` (SDK)", exec_round_trips(sb, 300)))
            for clients in (1, 8):
                rate = throughput(opts, sb.id, clients, 5.0)
                print(f"hutch: exec throughput, {clients} clients: {rate:8.0f} execs/s")
            time.sleep(1)
            rss = sb.exec("grep VmRSS /proc/1/status").stdout.split()[1]
            print(f"hutch: idle agent RSS: {int(rss) / 1024:.1f} MB")
        finally:
            sb.destroy()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
