"""seccomp user notifications: receive a sandbox's paused syscall, answer it or let it run.

The kernel side (<linux/seccomp.h>): a filter rule with SCMP_ACT_NOTIFY pauses the calling
thread and queues a notification on the filter's listener fd; the supervisor reads it with
SECCOMP_IOCTL_NOTIF_RECV and answers with SECCOMP_IOCTL_NOTIF_SEND, either a result of its
own or SECCOMP_USER_NOTIF_FLAG_CONTINUE (the kernel then runs the syscall as if unfiltered).

Everything read from the target (its memory, its /proc entries) may change between the read
and the answer: callers only ever *write* a result into its memory, never act on what they
read beyond choosing which answer to give, and check SECCOMP_IOCTL_NOTIF_ID_VALID before
writing (the pid could have been reused by then).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

# struct seccomp_notif {u64 id; u32 pid; u32 flags; struct seccomp_data {int nr; u32 arch;
# u64 instruction_pointer; u64 args[6];}}; struct seccomp_notif_resp {u64 id; s64 val;
# s32 error; u32 flags;}
_NOTIF = struct.Struct("=QIIiIQ6Q")
_RESP = struct.Struct("=QqiI")
# _IOWR('!', 0, seccomp_notif), _IOWR('!', 1, seccomp_notif_resp), _IOW('!', 2, u64)
NOTIF_RECV = 0xC0000000 | (_NOTIF.size << 16) | (0x21 << 8) | 0
NOTIF_SEND = 0xC0000000 | (_RESP.size << 16) | (0x21 << 8) | 1
NOTIF_ID_VALID = 0x40000000 | (8 << 16) | (0x21 << 8) | 2
FLAG_CONTINUE = 1

AUDIT_ARCH_X86_64 = 0xC000003E
NR_STATFS = 137  # x86_64
NR_FSTATFS = 138

PATH_MAX = 4096
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, ...]


def receive(fd: int) -> Notification | None:
    """The next paused syscall, or None if it went away (its thread was killed or
    interrupted by a signal) before we read it."""
    buf = bytearray(_NOTIF.size)  # NB: the kernel refuses a buffer that is not zeroed
    try:
        fcntl.ioctl(fd, NOTIF_RECV, buf, True)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
    return Notification(nid, pid, nr, arch, tuple(args))


def respond(fd: int, nid: int, *, value: int = 0, error: int = 0, proceed: bool = False) -> None:
    """Answer notification `nid`: `value` or `-error`, or let the syscall run (`proceed`).
    A target that is gone by now (ENOENT) needs no answer."""
    resp = bytearray(
        _RESP.pack(nid, value, -error if error else 0, FLAG_CONTINUE if proceed else 0)
    )
    try:
        fcntl.ioctl(fd, NOTIF_SEND, resp, True)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


def still_valid(fd: int, nid: int) -> bool:
    """Whether the thread behind `nid` still waits for our answer (so its pid is still it)."""
    try:
        fcntl.ioctl(fd, NOTIF_ID_VALID, bytearray(struct.pack("=Q", nid)), True)
    except OSError:
        return False
    return True


def read_c_string(pid: int, address: int, limit: int = PATH_MAX) -> bytes | None:
    """A NUL-terminated string from the target's memory, page by page (a string that ends
    just before an unmapped page must still be read); None if unreadable or too long."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = b""
        while len(data) <= limit:
            at = address + len(data)
            chunk = os.pread(fd, PAGE - at % PAGE, at)
            if not chunk:
                return None
            end = chunk.find(b"\0")
            if end >= 0:
                data += chunk[:end]
                return data if len(data) < limit else None
            data += chunk
        return None
    except (OSError, OverflowError):
        return None
    finally:
        os.close(fd)


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_writev.restype = ctypes.c_ssize_t
_libc.process_vm_writev.argtypes = (
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)


def write_memory(pid: int, address: int, data: bytes) -> bool:
    """Write `data` at `address` in the target, honouring its page protections (unlike
    /proc/pid/mem, which would write through a read-only mapping); False on a bad pointer."""
    local = ctypes.create_string_buffer(data, len(data))
    src = _IoVec(ctypes.cast(local, ctypes.c_void_p), len(data))
    dst = _IoVec(address, len(data))
    done = _libc.process_vm_writev(pid, ctypes.byref(src), 1, ctypes.byref(dst), 1, 0)
    return bool(done == len(data))


# struct statfs (x86_64): f_type, f_bsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree,
# f_fsid[2] (int), f_namelen, f_frsize, f_flags, f_spare[4]: 120 bytes.
STATFS = struct.Struct("=7q2i3q4q")


def fstatfs_raw(fd: int) -> list[int]:
    """The kernel's struct statfs of `fd`'s filesystem, as its 17 fields."""
    buf = ctypes.create_string_buffer(STATFS.size)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return list(STATFS.unpack(buf.raw))


def fdinfo_mount_id(path: str) -> int:
    """The id of the mount another process's fd lies on (its /proc/PID/fdinfo `mnt_id`)."""
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.ENOENT, f"no mnt_id in {path}")
