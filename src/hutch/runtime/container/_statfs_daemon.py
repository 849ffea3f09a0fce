"""The statfs answerer: `df /` in a sandbox shows its disk limit, not the storage pool.

A sandbox's root is an overlay whose upper layer is a btrfs subvolume; overlayfs reports the
statfs of that layer's filesystem, and btrfs reports the whole pool whatever the subvolume's
qgroup limit. So statfs(2) and fstatfs(2) are SCMP_ACT_NOTIFY in the sandbox's seccomp
filter, runc hands each sandbox's listener fd to this daemon (``linux.seccomp.listenerPath``,
with the qgroup's sysfs directory as ``listenerMetadata``), and the daemon answers:

- a path or fd on the sandbox's root mount: the real statfs of that mount with the block
  counts replaced by the qgroup's limit and usage (free never above the pool's own free);
- anything else (/tmp, /dev/shm, a bucket, /proc, a path it cannot resolve): CONTINUE, so
  the kernel runs the call as if unfiltered.

Safety: the path (joined to the caller's cwd if relative) is resolved by openat2 from the
caller's own root with RESOLVE_IN_ROOT | RESOLVE_NO_XDEV, so resolution never enters another
mount (a FUSE bucket cannot stall it) and never leaves the sandbox; what the sandbox wrote
into its memory only chooses between two answers that are both about its own disk. The
result is written with process_vm_writev (page protections hold: a bad pointer is EFAULT,
as without us) after SECCOMP_IOCTL_NOTIF_ID_VALID. Any error answers CONTINUE.

One daemon per Hutch home, in a session of its own like the sandboxes (a server restart leaves
it serving). If it dies, the kernel answers those sandboxes' statfs with ENOSYS at once: no
call hangs, and `df` says "Function not implemented" until the sandbox is restarted.

Run as ``python -m hutch.runtime.container._statfs_daemon SOCKET PIDFILE``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import signal
import socket
import sys

from hutch.runtime.container import _seccomp_notify as notify
from hutch.runtime.container._safepath import (
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    mount_id_of,
    open_beneath,
)

RESOLVE_NO_XDEV = 0x01  # <linux/openat2.h>: fail rather than cross into another mount

QGROUP_DIR_RE = re.compile(r"/sys/fs/btrfs/[0-9a-f-]{36}/qgroups/0_[0-9]+")
MAX_STATE_BYTES = 1 << 20


def _read_int(path: str) -> int:
    with open(path, "rb") as f:
        return int(f.read().strip() or b"0")


def quota(qgroup_dir: str) -> tuple[int, int] | None:
    """(limit, used) bytes of the sandbox's qgroup; None when it has no limit.

    Used is the committed `referenced` plus what writes have reserved and not yet committed
    (`rsv_data`): the committed figure alone lags a write by up to a transaction (30 s).
    """
    limit = _read_int(f"{qgroup_dir}/max_referenced")
    if limit <= 0 or limit >= 1 << 62:
        return None
    used = _read_int(f"{qgroup_dir}/referenced")
    with contextlib.suppress(OSError, ValueError):
        used += _read_int(f"{qgroup_dir}/rsv_data")
    return limit, used


def quota_statfs(real: list[int], limit: int, used: int) -> bytes:
    """`real` (a struct statfs of the root) with its block counts from the quota."""
    fields = list(real)
    unit = fields[10] or fields[1]  # f_frsize, else f_bsize: the unit of the block counts
    free = max(0, limit - used) // unit
    fields[2] = limit // unit  # f_blocks
    fields[3] = min(free, fields[3])  # f_bfree: never more than the pool has
    fields[4] = min(free, fields[4])  # f_bavail
    return notify.STATFS.pack(*fields)


def root_answer(n: notify.Notification, qgroup_dir: str) -> bytes | None:
    """The struct statfs to answer `n` with, or None to let the kernel run it."""
    if n.arch != notify.AUDIT_ARCH_X86_64 or n.nr not in (notify.NR_STATFS, notify.NR_FSTATFS):
        return None
    q = quota(qgroup_dir)
    if q is None:
        return None
    root = os.open(f"/proc/{n.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        root_mount = mount_id_of(root)
        if n.nr == notify.NR_FSTATFS:
            fd = n.args[0] & 0xFFFFFFFF
            if fd > 0x7FFFFFFF:
                return None
            on_root = notify.fdinfo_mount_id(f"/proc/{n.pid}/fdinfo/{fd}") == root_mount
        else:
            on_root = _path_on_root(n, root, root_mount)
        if not on_root:
            return None
        return quota_statfs(notify.fstatfs_raw(root), *q)
    finally:
        os.close(root)


def _path_on_root(n: notify.Notification, root: int, root_mount: int) -> bool:
    path = notify.read_c_string(n.pid, n.args[0])
    if not path:
        return False  # unreadable or empty: the kernel gives EFAULT/ENOENT itself
    if not path.startswith(b"/"):
        # The cwd as the caller names it from its root ("/root"); one outside its root
        # ("(unreachable)/…") or deleted cannot be joined to: let the kernel answer.
        cwd = os.readlink(f"/proc/{n.pid}/cwd".encode())
        if not cwd.startswith(b"/") or cwd.endswith(b" (deleted)"):
            return False
        path = cwd + b"/" + path
    resolve = RESOLVE_IN_ROOT | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS
    target = open_beneath(root, os.fsdecode(path), resolve=resolve)
    try:
        return mount_id_of(target) == root_mount
    finally:
        os.close(target)


def handle(fd: int, qgroup_dir: str | None) -> None:
    """Answer one pending notification on listener `fd`."""
    n = notify.receive(fd)
    if n is None:
        return
    answer = None
    if qgroup_dir is not None:
        try:
            answer = root_answer(n, qgroup_dir)
        except Exception:  # whatever went wrong, the paused caller must get an answer
            answer = None
    if answer is None:
        notify.respond(fd, n.id, proceed=True)
        return
    # NB: only now, right before writing, is the pid known to still be the caller's.
    if not notify.still_valid(fd, n.id):
        return
    if notify.write_memory(n.pid, n.args[1], answer):
        notify.respond(fd, n.id, value=0)
    else:
        notify.respond(fd, n.id, error=14)  # EFAULT, as the kernel would say


def _answers(socket_path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(socket_path)
        except OSError:
            return False
    return True


def _parse_state(data: bytes) -> dict[str, object] | None:
    try:
        state = json.loads(data)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


class Daemon:
    def __init__(self, socket_path: str) -> None:
        self.listeners: dict[int, str | None] = {}  # listener fd -> qgroup dir
        self.poll = select.epoll()
        if _answers(socket_path):
            # Another daemon (started by a racing server, slow to come up) serves the home.
            raise SystemExit(0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # root only: runc connects as root
        try:
            self.server.bind(socket_path)
        finally:
            os.umask(old)
        self.server.listen(64)
        self.poll.register(self.server.fileno(), select.EPOLLIN)

    def accept(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(1.0)
            try:
                data, fds, _, _ = socket.recv_fds(conn, MAX_STATE_BYTES, 4)
            except OSError:
                return
            if not fds:
                return  # a liveness probe
            for extra in fds[1:]:
                os.close(extra)
            # NB: runc keeps the connection open until its init goes on, and its init may be
            # paused in a statfs we are about to answer: never wait for EOF, only for the
            # rest of a state that did not come in one piece.
            state = _parse_state(data)
            while state is None and len(data) < MAX_STATE_BYTES:
                try:
                    more = conn.recv(MAX_STATE_BYTES - len(data))
                except OSError:
                    break
                if not more:
                    break
                data += more
                state = _parse_state(data)
        qgroup_dir = None
        metadata = state.get("metadata") if state is not None else None
        if isinstance(metadata, str) and QGROUP_DIR_RE.fullmatch(metadata):
            qgroup_dir = metadata
        # NB: kept even without a qgroup (every call then CONTINUEs): closing it would
        # turn the sandbox's every statfs into ENOSYS.
        self.listeners[fds[0]] = qgroup_dir
        self.poll.register(fds[0], select.EPOLLIN)

    def run(self) -> None:
        while True:
            try:
                events = self.poll.poll()
            except InterruptedError:
                continue
            for fd, mask in events:
                if fd == self.server.fileno():
                    with contextlib.suppress(OSError):
                        self.accept()
                elif mask & select.EPOLLIN:
                    try:
                        handle(fd, self.listeners.get(fd))
                    except OSError:
                        self._forget(fd)
                elif mask & (select.EPOLLHUP | select.EPOLLERR):
                    self._forget(fd)  # the sandbox's last process is gone

    def _forget(self, fd: int) -> None:
        if self.listeners.pop(fd, "gone") != "gone":
            with contextlib.suppress(OSError):
                self.poll.unregister(fd)
            os.close(fd)


# NB: every sandbox's statfs runs on the daemon's CPU, not its own cgroup's: a sandbox calling
# it in a loop must not take the host's CPUs, only slow down statfs (this cgroup's share).
CPU_CGROUP = "hutch-statfs"
CPU_QUOTA = (50_000, 100_000)  # half a CPU


def confine_cpu(pid: int) -> bool:
    """Put `pid` in a cgroup of its own with half a CPU; False if the host does not let us."""
    root = "/sys/fs/cgroup"
    quota, period = CPU_QUOTA
    try:
        if os.path.exists(f"{root}/cgroup.controllers"):  # cgroup v2
            group = f"{root}/{CPU_CGROUP}"
            os.makedirs(group, exist_ok=True)
            _write(f"{group}/cpu.max", f"{quota} {period}")
        else:
            group = f"{root}/cpu/{CPU_CGROUP}"
            os.makedirs(group, exist_ok=True)
            _write(f"{group}/cpu.cfs_period_us", str(period))
            _write(f"{group}/cpu.cfs_quota_us", str(quota))
        _write(f"{group}/cgroup.procs", str(pid))
    except OSError:
        return False
    return True


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def main(argv: list[str]) -> int:
    socket_path, pidfile = argv
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    confine_cpu(os.getpid())
    # One listener fd per running sandbox (and per `runc exec`): a host holds a thousand.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    daemon = Daemon(socket_path)
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
