"""The C library calls of the agent's start-up (`prctl`, `memmove`), through `_ctypes`.

NB: the `ctypes` package is ~1 ms of a sandbox agent's CPU more than its C module (its ~30
classes, `struct`, `ctypes._endian`), and these calls run when the first request other than
a ping arrives: right behind the agent's start once a create answers before its agent does
(server/services/_starts.py). The four classes below are how `ctypes` itself defines
`c_int`, `c_void_p`, `c_size_t` and a `CDLL`'s functions; nothing else of it is needed.
"""

from __future__ import annotations

import _ctypes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# NB: typeshed's stubs of `_ctypes` describe what `ctypes` passes it; this module uses it as
# `ctypes/__init__.py` does, so it is typed as Any here.
_C: Any = _ctypes


class _Int(_C._SimpleCData):  # type: ignore[misc]
    _type_ = "i"


class _Pointer(_C._SimpleCData):  # type: ignore[misc]
    _type_ = "P"


class _Size(_C._SimpleCData):  # type: ignore[misc]
    _type_ = "L"  # size_t: unsigned long on Linux


class _Function(_C.CFuncPtr):  # type: ignore[misc]
    _flags_ = _C.FUNCFLAG_CDECL | _C.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


class _Process:
    """The process's own symbols (`dlopen(NULL)`), as `CFuncPtr((name, library))` reads
    them: its `_handle`."""

    _handle = _C.dlopen(None, 0)


_prctl: Any = _Function(("prctl", _Process))
_memmove: Any = _Function(_C._memmove_addr)
_memmove.restype = _Pointer
_memmove.argtypes = (_Pointer, _Pointer, _Size)


def prctl(option: int, arg: int | bytes) -> None:
    """`prctl(option, arg, 0, 0, 0)`; OSError if it fails. A bytes `arg` goes as a pointer
    to a NUL-terminated copy of it."""
    if _prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(_C.get_errno(), f"prctl({option}) failed")


def memmove(address: int, data: bytes) -> None:
    """Copy `data` to this process's memory at `address`."""
    _memmove(address, data, len(data))
