"""Re-adoption after a crash: how soon sandboxes answer once a kill -9'd server is back.

    sudo .venv/bin/python bench/bench_recovery.py [rounds]

One real server with two sandboxes (the default image and busybox). Each round kills the
server with SIGKILL, starts it again and times, from the moment /healthz answers, the first
`info()` + `exec("echo back")` of each sandbox (the re-adoption path: runtime ids from the
store, agent connections opened anew). The baseline, from the same run and server, is the same
calls on a warm server that was not restarted. Prints p50/p95/p99 of both, the restart time
itself and the load average.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import report
from hutch import Sandbox
from hutch.runtime import ImageStore
from tests._server import SHARED_IMAGES, ServerProcess
from tests.conftest import _cleanup_home
from tests.support.busybox import add_busybox_image


def answer(boxes: list[Sandbox]) -> float:
    started = time.monotonic()
    for box in boxes:
        assert box.info().status == "running"
        assert box.exec("echo back", timeout=30).stdout == "back\n"
    return time.monotonic() - started


def main(rounds: int) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: sudo .venv/bin/python bench/bench_recovery.py")
    add_busybox_image(ImageStore(SHARED_IMAGES), name="busybox")
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-recovery-", dir="/var/tmp")))
    srv.start()
    warm: list[float] = []
    after_restart: list[float] = []
    restarts: list[float] = []
    try:
        opts = {"base_url": srv.url, "api_key": srv.api_key}
        boxes = [Sandbox.create(**opts), Sandbox.create(image="busybox", **opts)]
        answer(boxes)  # connections open, caches warm
        for _ in range(rounds):
            warm.append(answer(boxes))
            srv.kill9()
            restarts.append(srv.start())
            after_restart.append(answer(boxes))
        for box in boxes:
            box.destroy()
    finally:
        srv.stop()
        _cleanup_home(srv)
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
    print(report("baseline: info+exec x2, warm server", warm))
    print(report("info+exec x2, first after kill -9 + restart", after_restart))
    print(report("restart until /healthz answers", restarts))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
