"""`df /` inside a sandbox shows its disk limit: the host side of _statfs_daemon.

Starts the home's statfs daemon (once; it outlives the server as the sandboxes do) and turns
the sandbox seccomp profile into one whose statfs/fstatfs go to it, with the sandbox's qgroup
as the listener's metadata. Without btrfs qgroups in sysfs (Linux < 5.9) or if the daemon
cannot start, sandboxes keep the plain profile and see the pool, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from hutch.runtime.container._daemons import start_detached
from hutch.runtime.container._oci import Seccomp, SyscallRule

log = logging.getLogger("hutch.runtime")

NOTIFIED = ("statfs", "fstatfs")
START_PATIENCE = 20.0  # its Python starting on a loaded host


def with_statfs_listener(profile: Seccomp, listener: Path, qgroup_dir: Path) -> Seccomp:
    """`profile` with statfs/fstatfs sent to `listener` instead of allowed."""
    rules = [
        dataclasses.replace(rule, names=tuple(n for n in rule.names if n not in NOTIFIED))
        if rule.action == "SCMP_ACT_ALLOW" and not rule.args
        else rule
        for rule in profile.syscalls
    ]
    rules.append(SyscallRule(names=NOTIFIED, action="SCMP_ACT_NOTIFY"))
    return dataclasses.replace(
        profile,
        syscalls=tuple(rules),
        listener_path=str(listener),
        listener_metadata=str(qgroup_dir),
    )


def _qgroups_in_sysfs() -> bool:
    return os.path.isdir("/sys/fs/btrfs")


class StatfsView:
    """The statfs daemon of one Hutch home."""

    def __init__(self, home: Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.socket = home / "statfs.sock"
        self._pidfile = home / "statfs.pid"
        self.available = False
        # Starts running at once must not each start a daemon (the last would take the socket).
        self._starting = asyncio.Lock()

    def _answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    async def ensure(self) -> bool:
        """Start the daemon unless it already serves this home; whether sandboxes can use it."""
        if not self.enabled or not _qgroups_in_sysfs():
            return False
        async with self._starting:
            return await self._ensure_started()

    async def _ensure_started(self) -> bool:
        if not self._answers():
            argv = [sys.executable, "-m", "hutch.runtime.container._statfs_daemon"]
            argv += [str(self.socket), str(self._pidfile)]
            if not await start_detached(argv, self._answers, START_PATIENCE):
                log.warning("the statfs daemon did not start: `df /` shows the pool")
                self.available = False  # a spec naming a dead listener would not start
                return False
        self.available = True
        return True

    def profile(self, base: Seccomp, qgroup_dir: Path | None) -> Seccomp:
        """The seccomp profile of a sandbox whose disk is the qgroup at `qgroup_dir`."""
        if not self.available or qgroup_dir is None:
            return base
        return with_statfs_listener(base, self.socket, qgroup_dir)

    def stop(self) -> None:
        """End the daemon (only when no sandbox of the home is left)."""
        self.available = False
        with contextlib.suppress(OSError, ValueError):
            pid = int(self._pidfile.read_text().strip())
            # A stale pidfile's number may belong to another process by now.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"_statfs_daemon" in cmdline and str(self.socket).encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
        self._pidfile.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)
