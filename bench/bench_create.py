"""Sandbox create/destroy latency: `Runtime.create` + `destroy` next to a bare `runc run`.

    sudo .venv/bin/python bench/bench_create.py [iterations]

Both run a busybox rootfs, interleaved in the same process. The bare baseline is `runc run
--detach` of the rootfs as it is (no user namespace, overlay, seccomp, cgroup limits, agent),
then `runc delete --force`. Runtime.create is timed until it returns (the agent is exec'd and
its socket listening); its steps come from the runtime's debug log. "first answer" runs a
stand-in agent (the host's Python echoing on its socket) and times create until it has echoed:
the floor under any real agent's first reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hutch.runtime import ImageStore, Limits, Runtime, RuntimeConfig, SandboxSpec
from tests.support.busybox import add_busybox_image, make_busybox_rootfs
from tests.support.echo_agent import echo_agent_package


class StepTimings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.steps: dict[str, list[float]] = defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        for name, seconds in getattr(record, "timings", {}).items():
            self.steps[name].append(seconds)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1e3, q[94] * 1e3, q[98] * 1e3


def first_answer(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"ping")
        if s.recv(4) != b"ping":
            raise RuntimeError("the stand-in agent did not echo")


def bare_bundle(root: Path) -> Path:
    bundle = root / "bare"
    bundle.mkdir()
    make_busybox_rootfs(bundle / "rootfs")
    spec = {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["sleep", "3600"],
            "env": ["PATH=/bin:/sbin:/usr/bin"],
            "cwd": "/",
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def bare_run(runc_root: Path, bundle: Path, name: str) -> tuple[float, float]:
    argv = ["runc", "--root", str(runc_root)]
    t0 = time.perf_counter()
    subprocess.run(
        [*argv, "run", "--detach", "--bundle", str(bundle), name],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    t1 = time.perf_counter()
    subprocess.run([*argv, "delete", "--force", name], check=True)
    return t1 - t0, time.perf_counter() - t1


async def main(iterations: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp"))
    os.chmod(work, 0o711)  # sandbox root (an unprivileged host uid) must traverse to its rootfs
    timings = StepTimings()
    logger = logging.getLogger("hutch.runtime")
    logger.addHandler(timings)
    logger.setLevel(logging.DEBUG)
    runtime = Runtime(RuntimeConfig(home=work / "home", storage_size_gb=4))
    echo_runtime = Runtime(
        RuntimeConfig(
            home=work / "echo-home", storage_size_gb=4, agent_package=echo_agent_package(work)
        )
    )
    try:
        image = add_busybox_image(ImageStore(work / "images"))
        await runtime.setup()
        await echo_runtime.setup()
        bundle = bare_bundle(work)
        results: dict[str, list[float]] = defaultdict(list)
        for i in range(iterations + 3):
            warmup = i < 3
            create, delete = bare_run(work / "bare-runc", bundle, f"bare{i}")
            spec = SandboxSpec(id=f"bench{i}", image=image, env={}, limits=Limits())
            t0 = time.perf_counter()
            await runtime.create(spec)
            t1 = time.perf_counter()
            await runtime.destroy(spec.id)
            t2 = time.perf_counter()
            sock = await echo_runtime.create(spec)
            first_answer(sock)
            t3 = time.perf_counter()
            await echo_runtime.destroy(spec.id)
            if warmup:
                timings.steps.clear()
                continue
            results["bare runc run"].append(create)
            results["bare runc delete"].append(delete)
            results["Runtime.create"].append(t1 - t0)
            results["Runtime.destroy"].append(t2 - t1)
            results["create+destroy"].append(t2 - t0)
            results["create -> first answer (echo)"].append(t3 - t2)

        print(f"{iterations} iterations, busybox rootfs, kernel {os.uname().release}")
        print(f"{'':34} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
        for name, samples in results.items():
            print(
                f"{name:34} {percentiles(samples)[0]:8.2f} {percentiles(samples)[1]:8.2f} "
                f"{percentiles(samples)[2]:8.2f}"
            )
        for name, samples in timings.steps.items():
            p50, p95, p99 = percentiles(samples)
            print(f"  create step {name:22} {p50:8.2f} {p95:8.2f} {p99:8.2f}")
        ratio = statistics.median(results["Runtime.create"]) / statistics.median(
            results["bare runc run"]
        )
        print(f"Runtime.create / bare runc run (p50): {ratio:.2f}x")
    finally:
        for rt in (runtime, echo_runtime):
            await rt.sweep(keep=())
            await rt.teardown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50))
