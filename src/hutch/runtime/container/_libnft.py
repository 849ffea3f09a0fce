"""nft scripts applied by libnftables inside the server's process, as `nft -f -` applies them.

An `nft` process costs ~3.5 ms of CPU (loading libnftables and its tables, then the same
work as here); the library in-process ~0.25 ms for the same transaction. A cold create ran
two (its host rules, and the loopback table in its netns): ~7 ms of CPU on a 2-core host
while runc and the agent started. `nft` itself is this library's command-line front end, and
Docker's daemon calls it in-process the same way.

NB: one script at a time per server (a lock): libnftables keeps a little global state (its
first context's one-time set-up, an interface cache) that is not safe across threads. The
kernel applies one nftables transaction at a time per netns anyway. Where the library is
missing, `available()` is False and callers run `nft`.
"""

from __future__ import annotations

import ctypes
import functools
import threading

_LOCK = threading.Lock()


@functools.cache
def _lib() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.restype = None
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


def available() -> bool:
    """Whether libnftables can be loaded here (else run the `nft` tool)."""
    return _lib() is not None


def apply(script: str) -> str | None:
    """Apply `script` (one transaction, all or nothing) in the calling thread's netns.

    Returns None if it applied, else nft's error message (what `nft -f -` prints). Blocks
    (the kernel's commit waits for RCU): call it from a thread, not the event loop.
    """
    lib = _lib()
    if lib is None:
        raise RuntimeError("libnftables is not available")
    with _LOCK:
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise MemoryError("nft_ctx_new failed")
        try:
            # Buffered: nothing goes to the server's own stdout or stderr.
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            if lib.nft_run_cmd_from_buffer(ctx, script.encode()) == 0:
                return None
            error: bytes | None = lib.nft_ctx_get_error_buffer(ctx)
            return (error or b"").decode(errors="replace").strip() or "nft failed"
        finally:
            lib.nft_ctx_free(ctx)
