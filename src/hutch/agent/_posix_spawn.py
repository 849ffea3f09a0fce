"""Starting a child through glibc's ``posix_spawn`` itself, without ``subprocess.Popen``.

py-spy on an agent running 8 exec loops (docs/performance.md, branch ``exec12``): of the
agent's ~0.6 ms of CPU per exec, ~0.2 ms was its spawner thread, most of it Popen's Python
(``_get_handles``, an ``ExitStack``, the error pipe it creates, reads and closes, /dev/null
opened and closed per child). glibc's ``posix_spawn`` does the same in C: a
``clone(CLONE_VM | CLONE_VFORK)`` child that performs the file actions and execs, its
errors handed back as the return value.

Python 3.11's ``os.posix_spawn`` cannot set the child's working directory nor close the
agent's other fds; glibc can (``posix_spawn_file_actions_addchdir_np``, 2.29, and
``…_addclosefrom_np``, 2.34), so they are called through ctypes. The child gets what
``spawn``'s Popen gave it: stdin/stdout/stderr, every other fd closed, the cwd, the env, a
new session, SIGPIPE and SIGXFSZ back to default (``restore_signals``), handlers reset (glibc
resets every caught signal in a vfork-ed child, as _posixsubprocess does). The agent's libc
is the host's (the bundle's loader), so the functions are there on any host Hutch supports;
where they are not, ``PosixSpawner.create`` answers None and Popen is used.
"""

from __future__ import annotations

import os
import sys
from array import array
from itertools import accumulate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

# posix_spawnattr_setflags
_SETSIGDEF = 0x04
_SETSID = 0x80
_SIGPIPE = 13
_SIGXFSZ = 25
_GLIBC_INTERNAL_SIGNALS = (1 << (32 - 1)) | (1 << (33 - 1))
# NB: posix_spawn_file_actions_t is 80 bytes and posix_spawnattr_t 336 on x86-64 and arm64
# glibc; opaque buffers twice that, 8-byte aligned, whatever the architecture.
_FILE_ACTIONS_WORDS = 20
_ATTR_WORDS = 84
_KEPT_FILE_ACTIONS = 16
_FS_ENCODING = sys.getfilesystemencoding()  # os.fsencode's, with surrogateescape


class Spawned:
    """What the callers of ``spawn`` use of a child: its pid, and the returncode they set
    once it has been reaped (as they do on a Popen)."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


def _encoded(value: str) -> bytes:
    data = value.encode(_FS_ENCODING, "surrogateescape")
    if b"\0" in data:
        raise ValueError("embedded null byte")  # as subprocess says it
    return data


class PosixSpawner:
    """glibc's posix_spawn with the attributes every child shares, made once."""

    def __init__(self, libc: Any, ctypes: Any) -> None:
        self._libc = libc
        self._ctypes = ctypes
        self._posix_spawn = libc.posix_spawn
        self._actions: dict[tuple[int | None, int, int, str | None], Any] = {}
        self._attr = (ctypes.c_uint64 * _ATTR_WORDS)()
        sigdefault = (ctypes.c_uint64 * 16)()
        self._sigdefault = sigdefault
        checks = [
            libc.posix_spawnattr_init(self._attr),
            libc.sigemptyset(sigdefault),
            libc.sigaddset(sigdefault, _SIGPIPE),
            libc.sigaddset(sigdefault, _SIGXFSZ),
            libc.posix_spawnattr_setsigdefault(self._attr, sigdefault),
            libc.posix_spawnattr_setflags(self._attr, ctypes.c_short(_SETSIGDEF | _SETSID)),
        ]
        if any(checks):
            raise OSError("cannot set up posix_spawn's attributes")
        # NB: glibc's vfork-ed child sets its two internal signals (32, 33: thread cancel and
        # setxid) to SIG_IGN, which would outlive the exec; Popen leaves them default. To
        # default too (sigaddset refuses them; the set is a bit per signal, 1 at bit 0).
        sigdefault[0] |= _GLIBC_INTERNAL_SIGNALS
        libc.posix_spawnattr_setsigdefault(self._attr, sigdefault)

    def _pointers(self, items: list[bytes]) -> tuple[bytes, array[int]]:
        """A NULL-terminated ``char *[]`` of ``items``: pointers into one joined copy (the
        first, to keep alive over the call). NB: a ``c_char_p`` array of an environment's
        ~35 strings took 34 µs to build, this ~13."""
        blob = b"\0".join(items) + b"\0"
        if blob.count(b"\0") != max(len(items), 1):  # one after each item, none inside
            raise ValueError("embedded null byte")  # as subprocess says it
        base = self._ctypes.cast(blob, self._ctypes.c_void_p).value
        starts = accumulate([len(i) + 1 for i in items], initial=0)
        pointers = array("Q", [base + start for start in starts])
        pointers[-1] = 0
        return blob, pointers

    def _file_actions(self, stdin: int | None, stdout: int, stderr: int, cwd: str | None) -> Any:
        """The child's fds and cwd as glibc's file actions, kept for the next child: an
        exec's pipes mostly get the same fd numbers as the last one's, and the cwd is mostly
        the workspace (seven ctypes calls less per spawn)."""
        key = (stdin, stdout, stderr, cwd)
        actions = self._actions.get(key)
        if actions is not None:
            return actions
        libc = self._libc
        actions = (self._ctypes.c_uint64 * _FILE_ACTIONS_WORDS)()
        if libc.posix_spawn_file_actions_init(actions) != 0:
            raise MemoryError
        if stdin is None:
            failed = libc.posix_spawn_file_actions_addopen(actions, 0, b"/dev/null", os.O_RDWR, 0)
        else:
            failed = libc.posix_spawn_file_actions_adddup2(actions, stdin, 0)
        failed |= libc.posix_spawn_file_actions_adddup2(actions, stdout, 1)
        failed |= libc.posix_spawn_file_actions_adddup2(actions, stderr, 2)
        if cwd is not None:
            failed |= libc.posix_spawn_file_actions_addchdir_np(actions, _encoded(cwd))
        failed |= libc.posix_spawn_file_actions_addclosefrom_np(actions, 3)
        if failed:
            libc.posix_spawn_file_actions_destroy(actions)
            raise MemoryError
        if len(self._actions) >= _KEPT_FILE_ACTIONS:
            _, oldest = self._actions.popitem()  # NB: any one goes; they are cheap to remake
            libc.posix_spawn_file_actions_destroy(oldest)
        self._actions[key] = actions
        return actions

    @classmethod
    def create(cls) -> PosixSpawner | None:
        """The spawner, or None when this libc lacks what it needs (then Popen it is)."""
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            for name in (
                "posix_spawn",
                "posix_spawn_file_actions_addchdir_np",
                "posix_spawn_file_actions_addclosefrom_np",
            ):
                getattr(libc, name)
            return cls(libc, ctypes)
        except (ImportError, OSError, AttributeError):
            return None

    def spawn(
        self,
        path: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        stdin: int | None,
        stdout: int,
        stderr: int,
    ) -> Spawned:
        """Start ``path`` with argv ``args`` in a new session; ``stdin`` None is /dev/null.
        The fds must be 3 or above (the caller's pipes always are).

        Raises:
            OSError: as Popen would: the cwd as its filename when the cwd cannot be
                entered, else ``path``.
            ValueError: a NUL byte in an argument or the environment.
        """
        ctypes = self._ctypes
        argv = [a.encode(_FS_ENCODING, "surrogateescape") for a in args]
        envp = [f"{k}={v}".encode(_FS_ENCODING, "surrogateescape") for k, v in env.items()]
        argv_blob, argv_ptrs = self._pointers(argv)
        envp_blob, envp_ptrs = self._pointers(envp)
        pid = ctypes.c_int()
        # NB: ctypes drops the GIL for the call, which lasts until the child has exec'd.
        error = self._posix_spawn(
            ctypes.byref(pid),
            _encoded(path),
            self._file_actions(stdin, stdout, stderr, cwd),
            self._attr,
            ctypes.c_void_p(argv_ptrs.buffer_info()[0]),
            ctypes.c_void_p(envp_ptrs.buffer_info()[0]),
        )
        del argv_blob, envp_blob  # NB: alive up to here: the pointers point into them
        if error:
            # glibc says only the errno: a cwd gone since the caller looked is the cwd's.
            where = cwd if cwd is not None and not os.path.isdir(cwd) else path
            raise OSError(error, os.strerror(error), where)
        return Spawned(pid.value)
