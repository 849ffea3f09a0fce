"""A tiny preloaded library that lets coreutils' `ls -l` and `stat`, and `top`, work under this
runsc.

Debian's runsc (2022) answers EINVAL to `statx` and `newfstatat` whenever the flags hold
`AT_NO_AUTOMOUNT` (its flag checks predate that flag), and coreutils 9 passes it on every
`statx` (`ls -l`, `stat`, `cp -a`, `du`): "ls: cannot access '/': Invalid argument". gVisor
has no automounts, so the flag means nothing there: this library wraps libc's `statx`,
`fstatat` and `fstatat64` (and glibc < 2.33's `__fxstatat*`) and makes the same system call
without it. It is built once per source from C with the host's `cc`, needs nothing of a libc
but `syscall()` and `__errno_location()` (glibc and musl both have them), and a gVisor
sandbox's processes get it through `LD_PRELOAD` (the agent passes its environment on to every
command, shell and terminal).

It also stands in for `tcsetattr(fd, TCSAFLUSH, …)`, whose ioctl (TCSETSF) this runsc does
not know (ENOTTY: "top: failed tty set"): flush the input, then set as TCSAFLUSH would.

What it cannot reach: static binaries (Go's, busybox-static) make their system calls
themselves; none of those seen pass the flag. A process that clears its environment
(`env -i ls -l`) loses it, as it would any other variable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hutch.runtime.container._gvisor_launch import SOURCE as LAUNCHER_SOURCE
from hutch.runtime.container._gvisor_launch import compile_launcher, launcher_env
from hutch.runtime.container._oci import Mount

PRELOAD_MOUNT = "/.hutch/preload"
LIBRARY_NAME = "hutch-gvisor-stat.so"

_SOURCE = r"""
#include <sys/syscall.h>
long syscall(long number, ...);
int *__errno_location(void);
struct statx;
struct stat;
struct termios;
#define HUTCH_AT_NO_AUTOMOUNT 0x800

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    return (int)syscall(SYS_statx, dirfd, path, flags & ~HUTCH_AT_NO_AUTOMOUNT, mask, buf);
}
int fstatat(int dirfd, const char *path, struct stat *buf, int flags) {
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~HUTCH_AT_NO_AUTOMOUNT);
}
int fstatat64(int dirfd, const char *path, struct stat *buf, int flags) {
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~HUTCH_AT_NO_AUTOMOUNT);
}
/* glibc < 2.33 exported these instead; on 64-bit hosts the struct is the kernel's. */
int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags) {
    (void)ver;
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~HUTCH_AT_NO_AUTOMOUNT);
}
int __fxstatat64(int ver, int dirfd, const char *path, struct stat *buf, int flags) {
    (void)ver;
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~HUTCH_AT_NO_AUTOMOUNT);
}
/* TCSETSF (tcsetattr's TCSAFLUSH: top, less, vim) is ENOTTY here: flush, then TCSETSW.
 * glibc's and musl's struct termios begin with the kernel's (4 flags, c_line, 19 c_cc),
 * which is all the kernel reads. */
#define HUTCH_TCSETS 0x5402
#define HUTCH_TCFLSH 0x540B
int tcsetattr(int fd, int action, const struct termios *t) {
    if (action < 0 || action > 2) {
        *__errno_location() = 22; /* EINVAL */
        return -1;
    }
    long r = syscall(SYS_ioctl, fd, HUTCH_TCSETS + action, t);
    if (r != 0 && action == 2) {
        syscall(SYS_ioctl, fd, HUTCH_TCFLSH, 0);
        r = syscall(SYS_ioctl, fd, HUTCH_TCSETS + 1, t);
    }
    return (int)r;
}
"""


def build_preload(agent_home: Path, compiler: str = "cc") -> Path | None:
    """The directory holding the library (built into `agent_home/preload-<hash>/` once), or
    None when the host has no C compiler (then `ls -l` fails under gVisor as before).

    Blocking (one compile, ~0.1 s, the first time): call it from a worker thread.
    """
    digest = hashlib.sha256((_SOURCE + LAUNCHER_SOURCE).encode()).hexdigest()[:16]
    final = agent_home / f"preload-{digest}"
    if (final / LIBRARY_NAME).is_file():
        return final
    cc = shutil.which(compiler)
    if cc is None:
        return None
    agent_home.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-preload-", dir=agent_home))
    try:
        (tmp / "stat.c").write_text(_SOURCE)
        # -nostdlib: no link-time libc at all, so one build loads under glibc and musl alike;
        # `syscall` is found in whichever libc the process has when it is loaded.
        subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-nostdlib", "-o", str(tmp / LIBRARY_NAME)]
            + [str(tmp / "stat.c")],
            check=True,
            capture_output=True,
        )
        (tmp / "stat.c").unlink()
        # Best effort: without it the agent forks for each child, as before.
        compile_launcher(cc, tmp)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:  # another server built it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return final


def preload_mount(directory: Path) -> Mount:
    return Mount.bind(directory, PRELOAD_MOUNT, readonly=True)


def preload_env(directory: Path) -> tuple[str, ...]:
    """The sandbox's LD_PRELOAD, and the agent's launcher when `directory` holds one."""
    return (f"LD_PRELOAD={PRELOAD_MOUNT}/{LIBRARY_NAME}", *launcher_env(directory, PRELOAD_MOUNT))
