"""What one uid range per sandbox adds to a create, with and without (`HUTCH_UID_RANGES=0`),
interleaved in one run, with the load average.

Run as root after the default image is built:

    .venv/bin/python bench/bench_uid_ranges.py [--n 30] [--mounts 50]

1. The rootfs mount alone: "plain" (overlayfs straight over the image and a disk dir, the
   opt-out) and "views" (idmapped views of the image and of the disk in the range's user
   namespace, overlayfs over them), one `RootfsViews` each as a server has, so the
   namespaces are made ahead and kept as in a server (`_userns_cache`). Also "views, cold":
   a new `RootfsViews` per sample (the namespace made in the create: the cost before).
2. create -> first exec through two servers, one with ranges (the default) and one without,
   alternating sample by sample.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import report
from bench.bench_sandbox import create_to_first_exec
from hutch.runtime import ImageStore
from hutch.runtime.container._mounts import umount
from hutch.runtime.container._rootfs_views import RootfsViews
from tests._server import SHARED_IMAGES, ServerProcess
from tests.conftest import _cleanup_home


def _load() -> str:
    return Path("/proc/loadavg").read_text().strip()


async def rootfs_mounts(n: int) -> None:
    image = ImageStore(SHARED_IMAGES).get("default").rootfs
    top = Path(tempfile.mkdtemp(prefix="hutch-bench-uids-", dir="/var/tmp"))
    os.chmod(top, 0o755)
    kinds = ("plain", "views", "views, cold")
    views = {k: RootfsViews(top / k.replace(", ", "-"), uid_ranges=k != "plain") for k in kinds}
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for i in range(n):
            for kind in kinds:
                home = top / f"{kind.replace(', ', '-')}-{i}"
                bundle, storage = home / "bundle", home / "disk"
                for d in (bundle / "rootfs", storage / "upper", storage / "work"):
                    d.mkdir(parents=True)
                if kind == "views, cold":
                    views[kind] = RootfsViews(home, uid_ranges=True)
                started = time.perf_counter()
                await views[kind].mount(f"sb-{i}", image, storage, bundle, bundle / "rootfs")
                samples[kind].append(time.perf_counter() - started)
                for mountpoint in (bundle / "rootfs", bundle / "store", bundle / "lower"):
                    umount(mountpoint)
                views[kind].release(f"sb-{i}")
                await asyncio.sleep(0.005)  # as between two creates: what is made ahead runs
    finally:
        # NB: only umount and rmdir here: a recursive delete would cross into a mounted image.
        for dirpath, dirnames, _ in os.walk(top, topdown=False):
            for name in dirnames:
                path = Path(dirpath) / name
                umount(path)
    for kind, values in samples.items():
        print(report(f"rootfs mount, {kind}", values))
    print(f"left in {top} (empty overlay dirs; remove with rm -r --one-file-system)")


class _Server(ServerProcess):
    def __init__(self, home: Path, ranges: str) -> None:
        super().__init__(home)
        self.ranges = ranges

    def env(self) -> dict[str, str]:
        return {**super().env(), "HUTCH_UID_RANGES": self.ranges}


def creates(n: int) -> None:
    servers = {
        ranges: _Server(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")), ranges)
        for ranges in ("1", "0")
    }
    try:
        for server in servers.values():
            server.start(timeout=240)
        samples: dict[str, list[float]] = {"1": [], "0": []}
        for server in servers.values():  # warm the page cache and the namespaces
            create_to_first_exec({"base_url": server.url, "api_key": server.api_key}, 3, "default")
        for _ in range(n):
            for ranges, server in servers.items():
                opts = {"base_url": server.url, "api_key": server.api_key}
                samples[ranges] += create_to_first_exec(opts, 1, "default")[0]
        print(report("create -> first exec, uid ranges (default)", samples["1"]))
        print(report("create -> first exec, HUTCH_UID_RANGES=0", samples["0"]))
    finally:
        for server in servers.values():
            server.stop()
            _cleanup_home(server)  # its sandboxes, lxcfs and storage go with it


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=30, help="creates per server")
    parser.add_argument("--mounts", type=int, default=50, help="rootfs mounts per kind")
    args = parser.parse_args()
    print("load before:", _load())
    asyncio.run(rootfs_mounts(args.mounts))
    creates(args.n)
    print("load after:", _load())
