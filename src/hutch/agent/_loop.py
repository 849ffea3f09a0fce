"""A small single-threaded event loop: fd readiness, timers and signals.

Why not asyncio: ``import asyncio`` alone costs ~9 MB and ~30 ms, and a host holds a
thousand idle agents. This loop is an epoll plus a timer heap; signals arrive
through ``_signal.set_wakeup_fd`` on a self-pipe, so a SIGCHLD wakes the poll at once and is
handled between callbacks, never in the middle of one.
"""

from __future__ import annotations

import os
import select
import time

# NB: heapq.py only wraps its C module, and importing it was ~0.13 ms of the agent's start.
from _heapq import heapify, heappop, heappush

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

# NB: the C module under `signal`: `signal` itself imports enum (~5 ms of the agent's start,
# before it can answer the server's first ping) to wrap numbers the agent does not need.
if TYPE_CHECKING:
    import signal as _signal
    from collections import deque
else:
    import _signal
    from _collections import deque  # NB: `collections` itself costs ~1 ms of the start

# NB: epoll itself, not `selectors` (which imports collections and math, and wraps each poll,
# register and unregister in Python: ~10 us of every exec).
_READ = select.EPOLLIN
_WRITE = select.EPOLLOUT


def report(message: str) -> None:
    """Write a line to the agent's stderr (the runtime's log); never raise."""
    try:
        os.write(2, f"hutch-agent: {message}\n".encode(errors="replace"))
    except OSError:
        pass


def report_exception(context: str) -> None:
    import traceback  # lazily: it pulls in linecache and tokenize, and bugs should be rare

    report(f"{context}:\n{traceback.format_exc()}")


class Timer:
    __slots__ = ("when", "callback", "cancelled", "_loop")

    def __init__(self, loop: Loop, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._loop._timer_cancelled()

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class _Handlers:
    __slots__ = ("reader", "writer")

    def __init__(self) -> None:
        self.reader: Callable[[], None] | None = None
        self.writer: Callable[[], None] | None = None

    def mask(self) -> int:
        return (_READ if self.reader else 0) | (_WRITE if self.writer else 0)


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    # The C-level handler has already written signum to the wakeup fd; the work happens in
    # the loop, so a signal can never interrupt a callback half-way through.
    pass


class Loop:
    """Callbacks on fd readiness, timers and signals. Exceptions in callbacks are reported
    and swallowed: nothing a client or a child does may stop the agent."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, _Handlers] = {}
        self._timers: list[Timer] = []
        self._cancelled_timers = 0
        self._signal_callbacks: dict[int, Callable[[], None]] = {}
        self._idle: deque[Callable[[], None]] = deque()
        self._after_turn: list[Callable[[], None]] = []
        self._running = False
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add_reader(self._wakeup_r, self._read_signals)

    # -- fds ---------------------------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._update(fd, reader=callback)

    def remove_reader(self, fd: int) -> None:
        self._update(fd, reader=None)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._update(fd, writer=callback)

    def remove_writer(self, fd: int) -> None:
        self._update(fd, writer=None)

    def remove_fd(self, fd: int) -> None:
        """Forget ``fd`` entirely; call before closing it."""
        handlers = self._handlers.pop(fd, None)
        if handlers is not None:
            # NB: a batch of events from select() may still hold this object; with its
            # callbacks gone, a stale event cannot reach whatever reuses the fd number.
            handlers.reader = handlers.writer = None
            self._epoll.unregister(fd)

    def _update(self, fd: int, **callbacks: Callable[[], None] | None) -> None:
        handlers = self._handlers.get(fd)
        if handlers is None:
            if not any(callbacks.values()):
                return
            handlers = self._handlers[fd] = _Handlers()
            old_mask = 0
        else:
            old_mask = handlers.mask()
        if "reader" in callbacks:
            handlers.reader = callbacks["reader"]
        if "writer" in callbacks:
            handlers.writer = callbacks["writer"]
        mask = handlers.mask()
        if mask == old_mask:
            return
        if not mask:
            del self._handlers[fd]
            self._epoll.unregister(fd)
        elif not old_mask:
            self._epoll.register(fd, mask)
        else:
            self._epoll.modify(fd, mask)

    # -- timers ------------------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self, time.monotonic() + delay, callback)
        heappush(self._timers, timer)
        return timer

    def _timer_cancelled(self) -> None:
        # Cancelled timers stay in the heap until due; an exec timeout of an hour cancelled by
        # a quick exit would pile up. Sweep once they are the majority.
        self._cancelled_timers += 1
        if self._cancelled_timers > 64 and self._cancelled_timers * 2 > len(self._timers):
            self._timers[:] = [t for t in self._timers if not t.cancelled]
            heapify(self._timers)
            self._cancelled_timers = 0

    def call_when_idle(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once nothing else is ready: no fd, no due timer."""
        self._idle.append(callback)

    def after_turn(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the callbacks of this turn (every ready fd, due timer and
        signal) have run, before the loop polls again."""
        self._after_turn.append(callback)

    # -- signals -----------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[[], None]) -> None:
        self._signal_callbacks[signum] = callback
        _signal.signal(signum, _ignore_signal)
        _signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)

    def _read_signals(self) -> None:
        try:
            data = os.read(self._wakeup_r, 4096)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(data):  # each signal once per batch, in arrival order
            callback = self._signal_callbacks.get(signum)
            if callback is not None:
                self._run(callback)

    # -- running -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        poll = self._epoll.poll
        handlers_of = self._handlers
        timers = self._timers
        while self._running:
            timeout = -1.0
            while timers and timers[0].cancelled:
                heappop(timers)
                self._cancelled_timers -= 1
            if timers:
                timeout = max(0.0, timers[0].when - time.monotonic())
            if self._idle or self._after_turn:
                timeout = 0.0
            # NB: epoll rounds the timeout up to whole milliseconds, as selectors did.
            events = poll(timeout)
            # The handlers of this batch, taken before any runs: a callback may remove (and
            # close) an fd whose number is then reused; its stale event must not reach that.
            batch = [(handlers_of.get(fd), mask) for fd, mask in events]
            for handlers, mask in batch:
                if handlers is None:
                    continue
                # Look the callbacks up at each step: an earlier callback in this batch may
                # have removed (and closed) this fd. An error or hang-up wakes both, as in
                # selectors.
                if mask & ~_WRITE and handlers.reader is not None:
                    self._run(handlers.reader)
                if mask & ~_READ and handlers.writer is not None:
                    self._run(handlers.writer)
            if timers:
                now = time.monotonic()
                while timers and timers[0].when <= now:
                    timer = heappop(timers)
                    if timer.cancelled:
                        self._cancelled_timers -= 1
                    else:
                        timer.cancelled = True  # fired: a late cancel() must not count it
                        self._run(timer.callback)
            while self._after_turn:
                callbacks, self._after_turn = self._after_turn, []
                for callback in callbacks:
                    self._run(callback)
            if not events and self._idle:
                self._run(self._idle.popleft())

    @staticmethod
    def _run(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            report_exception("unexpected error in a callback")

    def close(self) -> None:
        _signal.set_wakeup_fd(-1)
        self._epoll.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
