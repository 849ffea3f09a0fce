"""A thread that lives in the `work` cgroup, so that the processes it starts are born there.

Moving each child into `work` between fork and exec (a ``preexec_fn``) forces subprocess to
fork the whole agent instead of vfork-ing it: measured in a sandbox, that fork was most of an
exec's cost (py-spy: 38% of the agent's wall time waiting in ``Popen._execute_child``; on
the host, Popen of /bin/true takes 0.6 ms with vfork and 3.7-5 ms with a preexec_fn).

cgroup v1 can move one thread (its `tasks` file) rather than the whole process. This thread
moves itself into `work` once; every child it starts, by vfork or fork, inherits the cgroup
of the thread that made it. The agent itself is not charged to `work` (memory is charged to
the process's main thread's cgroup) and is no OOM candidate there: the kernel's OOM scan of a
memcg visits thread-group leaders only (checked on this host: a 300 MB process with one
thread in a 64 MB memcg survived, its 200 MB child in that memcg was killed).
"""

from __future__ import annotations

import _thread
import os

# NB: `_queue`'s SimpleQueue is what `queue` re-exports, and `_thread` is what `threading`
# wraps: `threading` (functools, collections) and `queue` cost ~4 ms of a sandbox's agent
# CPU, and this thread starts on the first exec, which a create that answers before its
# agent does puts right behind the agent's start.
from _queue import SimpleQueue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")


class WorkSpawner:
    """Runs callables (``subprocess.Popen``) on a thread that sits in `work`."""

    def __init__(self, task_fds: tuple[int, ...]) -> None:
        self._task_fds = task_fds
        self._requests: SimpleQueue[tuple[Callable[[], Any], list[Any], Any]] = SimpleQueue()
        self.problem: str | None = None

    def start(self) -> bool:
        """Start the thread; False (see ``problem``) when it could not move into `work`."""
        ready = _thread.allocate_lock()
        ready.acquire()
        # NB: a bare thread is a daemon one: nothing waits for it at exit.
        _thread.start_new_thread(self._run, (ready,))
        ready.acquire()
        return self.problem is None

    def _run(self, ready: Any) -> None:
        try:
            for fd in self._task_fds:
                os.write(fd, b"0")  # "0": this thread, not the agent
        except OSError as e:
            self.problem = f"cannot move the spawner thread into work: {e}"
        finally:
            ready.release()
        if self.problem is not None:
            return
        while True:
            call, box, done = self._requests.get()
            try:
                box.append(call())
            except BaseException as e:  # handed to the caller, raised there
                box.append(e)
                box.append(None)
            finally:
                done.release()

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, run on the thread in `work`; blocks this thread until it returns."""
        done = _thread.allocate_lock()
        done.acquire()
        box: list[Any] = []
        self._requests.put((fn, box, done))
        done.acquire()
        if len(box) == 2:
            raise box[0]
        result: T = box[0]
        return result
