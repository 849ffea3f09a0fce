"""`df /` inside a sandbox shows its own disk limit and usage (its btrfs qgroup), not the
storage pool; other filesystems (/dev/shm, a bucket) still show their own; bad pointers get
the kernel's EFAULT; hammering statfs harms nothing; and the statfs daemon's death makes
statfs fail at once (ENOSYS) without hanging anything."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Sandbox
from tests._server import TEST_RUNTIME, ServerProcess
from tests.support.s3 import S3Server

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(TEST_RUNTIME == "gvisor", reason="gVisor answers statfs in its kernel"),
]

DISK_MB = 300
STATVFS = (
    "import os, sys\n"
    "for p in sys.argv[1:]:\n"
    "    s = os.statvfs(p)\n"
    "    print(s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize)\n"
)


@pytest.fixture()
def sb(sdk_env: ServerProcess) -> Iterator[Sandbox]:
    with Sandbox.create(image="default", disk_mb=DISK_MB, memory_mb=1024) as sandbox:
        yield sandbox


def _statvfs(sb: Sandbox, *paths: str) -> list[tuple[int, int]]:
    r = sb.run("python3", ["-c", STATVFS, *paths])
    assert r.exit_code == 0, r.stderr
    return [(int(a), int(b)) for a, b in (line.split() for line in r.stdout.splitlines())]


def test_df_shows_the_disk_limit_and_what_was_written(sb: Sandbox) -> None:
    ((total, free_before),) = _statvfs(sb, "/")
    assert total == DISK_MB << 20  # the pool is 32 GB: without the daemon this is ~32e9
    r = sb.exec("df -B1 / | tail -1")
    assert r.exit_code == 0 and int(r.stdout.split()[1]) == DISK_MB << 20, r.stdout
    # Writing 100 MB shows up in the usage (at once: reserved bytes count before the commit).
    r = sb.exec("dd if=/dev/urandom of=/root/blob bs=1M count=100 status=none && sync")
    assert r.exit_code == 0, r.stderr
    ((total_after, free_after),) = _statvfs(sb, "/")
    assert total_after == total
    assert 95 << 20 <= free_before - free_after <= 110 << 20, (free_before, free_after)
    # The same through a relative path, an fd (fstatfs), a symlink and /tmp (on the root disk).
    r = sb.exec(
        'cd /root && ln -sf ../../../../etc /root/up && python3 -c "'
        "import os; print(os.statvfs('.').f_blocks*os.statvfs('.').f_frsize);"
        "fd=os.open('/etc', os.O_RDONLY); s=os.fstatvfs(fd); print(s.f_blocks*s.f_frsize);"
        "s=os.statvfs('up'); print(s.f_blocks*s.f_frsize);"
        "s=os.statvfs('/tmp'); print(s.f_blocks*s.f_frsize)\""
    )
    assert r.exit_code == 0, r.stderr
    assert [int(x) for x in r.stdout.split()] == [DISK_MB << 20] * 4


def test_other_filesystems_show_their_own(sb: Sandbox, tmp_path: Path) -> None:
    ((shm_total, _), (proc_total, _)) = _statvfs(sb, "/dev/shm", "/proc")
    assert shm_total == 512 << 20  # its tmpfs: half the memory
    assert proc_total == 0
    # A symlink on the root disk into /dev/shm is /dev/shm's.
    sb.exec("ln -s /dev/shm /root/shm")
    assert _statvfs(sb, "/root/shm")[0][0] == shm_total
    s3 = S3Server()
    s3.start()
    try:
        s3.make_bucket("statfs")
        sb.mount_bucket("statfs", "/mnt/b", endpoint=s3.endpoint, credentials=s3.credentials)
        ((bucket_total, _),) = _statvfs(sb, "/mnt/b")
        assert bucket_total != DISK_MB << 20
    finally:
        s3.stop()


ABUSE = r"""
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(120)
def call(fn, *args):
    ctypes.set_errno(0)
    return fn(*args), ctypes.get_errno()
out = []
out.append(call(libc.statfs, b"/", ctypes.c_void_p(16)))        # result into page zero
out.append(call(libc.statfs, ctypes.c_void_p(16), buf))          # path from page zero
out.append(call(libc.statfs, b"/" * 5000, buf))                  # longer than PATH_MAX
out.append(call(libc.fstatfs, 987654, buf))                      # no such fd
out.append(call(libc.fstatfs, -1, buf))
ro = ctypes.c_void_p(ctypes.cast(libc.statfs, ctypes.c_void_p).value & ~4095)
out.append(call(libc.statfs, b"/", ro))                          # read-only (code) page
out.append(call(libc.statfs, b"/no/such/path", buf))
print(out)
n = int(sys.argv[1])
for _ in range(n):
    os.statvfs("/")
    os.statvfs("/dev/shm")
print("hammered")
"""


def test_bad_pointers_get_the_kernels_answers_and_hammering_harms_nothing(sb: Sandbox) -> None:
    started = time.monotonic()
    r = sb.run("python3", ["-c", ABUSE, "2000"], timeout=120)
    assert r.exit_code == 0, r.stderr
    first = r.stdout.splitlines()[0]
    efault, enoent, enametoolong, ebadf = (
        "(-1, 14)",
        "(-1, 2)",
        "(-1, 36)",
        "(-1, 9)",
    )
    assert first == (
        f"[{efault}, {efault}, {enametoolong}, {ebadf}, {ebadf}, {efault}, {enoent}]"
    ), first
    assert r.stdout.splitlines()[1] == "hammered"
    # While four processes hammer statfs, the sandbox answers as usual.
    sb.exec(f"for i in 1 2 3 4; do python3 -c '{ABUSE}' 20000 >/dev/null & done")
    for _ in range(5):
        assert sb.exec("echo alive").stdout == "alive\n"
    assert _statvfs(sb, "/")[0][0] == DISK_MB << 20
    assert time.monotonic() - started < 300


def test_the_daemon_dying_fails_statfs_at_once_and_new_sandboxes_get_a_new_one(
    sdk_env: ServerProcess,
) -> None:
    pidfile = sdk_env.home / "statfs.pid"
    with Sandbox.create(image="default", disk_mb=DISK_MB) as old:
        assert _statvfs(old, "/")[0][0] == DISK_MB << 20
        # A sandbox hammering statfs burns the daemon's CPU: it is capped to half a CPU.
        cgroups = Path(f"/proc/{int(pidfile.read_text())}/cgroup").read_text()
        assert "/hutch-statfs" in cgroups, cgroups
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        time.sleep(0.2)
        r = old.run("python3", ["-c", "import os; os.statvfs('/')"], timeout=30)
        assert r.exit_code != 0 and "Function not implemented" in r.stderr, r.stderr
        assert old.exec("echo still-here").stdout == "still-here\n"
        with Sandbox.create(image="default", disk_mb=DISK_MB) as new:
            assert _statvfs(new, "/")[0][0] == DISK_MB << 20
