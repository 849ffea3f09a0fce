"""LXCFS: /proc files that show a sandbox its own limits instead of the host's.

Without it, `free` inside a 1 GB sandbox shows the host's 24 GB and `/proc/cpuinfo` every host
core; build tools and runtimes size themselves from those and are then OOM-killed. LXCFS
(Debian's `lxcfs`, the tool LXC and Kubernetes distributions use for this) is a FUSE
filesystem that answers a read of its `proc/meminfo` with the limits of the *reader's*
cgroups. One instance per Hutch home, mounted at `<home>/lxcfs`, serves every sandbox; each
sandbox gets its files bind-mounted read-only over `/proc/…` and
`/sys/devices/system/cpu/online` (what glibc's `get_nprocs`, and so `os.cpu_count()`, read).

The daemon runs in a session of its own, like the sandboxes: a server restart leaves it (and
so the sandboxes' views) working, and the next server adopts the mount it finds. It is
stopped only when the home holds no sandbox any more. If `lxcfs` is not installed, sandboxes
see the host's numbers, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

from hutch.runtime.container._daemons import start_detached
from hutch.runtime.container._mounts import mount_table, umount
from hutch.runtime.container._oci import Mount

log = logging.getLogger("hutch.runtime")

# What LXCFS virtualises that a sandbox reads for its limits and its load.
PROC_FILES = ("cpuinfo", "diskstats", "loadavg", "meminfo", "stat", "swaps", "uptime")
CPU_ONLINE = "sys/devices/system/cpu/online"
START_PATIENCE = 5.0


class LxcfsView:
    """The LXCFS instance of one Hutch home."""

    def __init__(self, home: Path, binary: str = "lxcfs") -> None:
        self.root = home / "lxcfs"
        self._pidfile = home / "lxcfs.pid"
        self._binary = shutil.which(binary)
        self.available = False

    def _mounted(self) -> bool:
        target = str(self.root)
        return any(entry.mountpoint == target for entry in mount_table())

    def _serves(self) -> bool:
        return self._mounted() and (self.root / "proc" / "meminfo").exists()

    async def ensure(self) -> bool:
        """Start LXCFS on `<home>/lxcfs` unless it already runs there; whether it is usable."""
        if self._binary is None:
            log.info("lxcfs is not installed: sandboxes see the host's /proc/meminfo and CPUs")
            return False
        if not self._mounted():
            self.root.mkdir(mode=0o755, exist_ok=True)
            # NB: --enable-cfs turns the CPU quota into the CPUs /proc/cpuinfo and cpu/online
            # list; -l virtualises loadavg.
            argv = [self._binary, "--enable-cfs", "-l", "--pidfile", str(self._pidfile)]
            argv.append(str(self.root))
            if not await start_detached(argv, self._serves, START_PATIENCE):
                log.warning("lxcfs did not mount %s; sandboxes see the host's /proc", self.root)
                return False
        self.available = True
        return True

    def mounts(self) -> tuple[Mount, ...]:
        if not self.available:
            return ()
        return (
            *(
                Mount.bind(self.root / "proc" / name, f"/proc/{name}", readonly=True)
                for name in PROC_FILES
            ),
            Mount.bind(self.root / CPU_ONLINE, f"/{CPU_ONLINE}", readonly=True),
        )

    def stop(self) -> None:
        """Unmount and end the daemon (only when no sandbox of the home is left)."""
        self.available = False
        if self._mounted():
            with contextlib.suppress(OSError):
                umount(self.root)
        with contextlib.suppress(OSError, ValueError):
            pid = int(self._pidfile.read_text().strip())
            # A stale pidfile's number may belong to another process by now.
            if Path(f"/proc/{pid}/comm").read_text().strip() == "lxcfs":
                os.kill(pid, signal.SIGTERM)
        self._pidfile.unlink(missing_ok=True)
