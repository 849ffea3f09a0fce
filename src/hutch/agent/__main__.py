"""Entry point: ``from hutch.agent.__main__ import main; main()`` (see ``hutch.agent``).

Environment (read here only):
    HUTCH_AGENT_LISTEN_FD   the inherited, already listening unix socket (default 3)
    HUTCH_AGENT_LISTEN_PATH bind and listen on a unix socket at this path instead (gVisor,
                            whose runsc cannot pass fds: the host takes the socket file away
                            once it appears, see hutch.runtime.container._gvisor)
    HUTCH_AGENT_WORKSPACE   what a relative exec ``cwd`` is relative to (default /workspace)
    HUTCH_AGENT_SHELL       JSON argv of the image's shell for terminals and sessions (optional)
    HUTCH_AGENT_WORK_FDS    open `cgroup.procs` files of the `work` cgroup (optional; _workcg)
    HUTCH_AGENT_WORK_TASK_FDS  open `tasks` files of `work`, for the spawner thread (optional)
    HUTCH_AGENT_NPROC       the hard RLIMIT_NPROC of every child (gVisor; optional)
    HUTCH_AGENT_LAUNCHER    a static program that sets it and execs, so that children are
                            vfork-ed (gVisor; optional, see _launch)
    HUTCH_AGENT_CLOSE_FLUSH a file on the root mount the agent may create and unlink to make
                            the host close what the sandbox closed (gVisor; see _close_flush)
"""

from __future__ import annotations

import _socket
import os

from . import _workcg
from ._loop import Loop, report
from ._server import Agent

TYPE_CHECKING = False
# NB: `signal`'s C module, not `signal` (which imports enum): see _loop.
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal

# The agent's own settings; children must not see them (PYTHONHOME would break any Python
# in the image).
_PRIVATE_PREFIX = "HUTCH_AGENT_"
_PRIVATE_NAMES = ("PYTHONHOME",)
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def child_environment(environ: dict[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in environ.items()
        if not k.startswith(_PRIVATE_PREFIX) and k not in _PRIVATE_NAMES
    }


def _prctl(option: int, value: int) -> None:
    from ._cfunc import prctl

    prctl(option, value)


def _protect_self() -> None:
    """Make the agent non-dumpable: root in the sandbox (without CAP_SYS_PTRACE) can then not
    ptrace-stop it, read its memory or environ, or open its fds through /proc/1. Processes
    the agent starts are exec'd, which resets the flag for them: strace and gdb still work."""
    try:
        _prctl(_PR_SET_DUMPABLE, 0)
    except (ImportError, OSError, AttributeError) as e:
        report(f"cannot make the agent non-dumpable ({e})")


def _retitle() -> None:
    """``hutch-agent`` in ps and top, not the loader's long command line (see _proctitle)."""
    from ._proctitle import set_process_title

    try:
        set_process_title()
    except (ImportError, OSError, AttributeError, ValueError) as e:
        report(f"cannot set the process title ({e})")


def _become_subreaper() -> None:
    """Outside a sandbox (tests, development) adopt orphaned descendants as PID 1 would, so
    that they are reaped and killed the same way."""
    try:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (ImportError, OSError, AttributeError) as e:
        report(f"cannot become a child subreaper ({e}); orphans go to the host's init")


def _ensure_stdio() -> None:
    # The runtime may start PID 1 with stdin/stdout/stderr closed; the first pipe would then
    # land on fd 0-2 and be confused with the agent's own stdio.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: this one


def _image_shell(text: str | None) -> list[str] | None:
    if not text:
        return None
    from hutch._wire.json_c import loads  # NB: already loaded by the frame codec

    try:
        argv = loads(text)
    except ValueError:
        argv = None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        report(f"ignoring HUTCH_AGENT_SHELL={text!r}: not a JSON list of strings")
        return None
    return argv


def _listener(environ: dict[str, str] | os._Environ[str]) -> _socket.socket:
    path = environ.get("HUTCH_AGENT_LISTEN_PATH")
    if path:
        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        # Only root (the host side, through the mount) connects; nothing in here needs to.
        old = os.umask(0o177)
        try:
            listener.bind(path)
        except OSError as e:
            raise SystemExit(f"hutch-agent: cannot listen on {path}: {e}") from None
        finally:
            os.umask(old)
        listener.listen(512)
        return listener
    listen_fd = int(environ.get("HUTCH_AGENT_LISTEN_FD", "3"))
    try:
        listener = _socket.socket(fileno=listen_fd)
    except OSError as e:
        raise SystemExit(f"hutch-agent: fd {listen_fd} is not a listening socket: {e}") from None
    os.set_inheritable(listen_fd, False)
    return listener


def _warm_spawning() -> None:
    """Import what the first exec needs and start the spawner thread, so that the first
    command does not wait for them (not `subprocess`, where `_child` can do without it)."""
    from . import _child, _exec  # noqa: F401

    if not _child.NATIVE:
        import subprocess  # noqa: F401

    _workcg.spawner()


def main() -> None:
    _ensure_stdio()
    workspace = os.environ.get("HUTCH_AGENT_WORKSPACE", "/workspace")
    listener = _listener(os.environ)
    problem = _workcg.configure(
        os.environ.get("HUTCH_AGENT_WORK_FDS"), os.environ.get("HUTCH_AGENT_WORK_TASK_FDS")
    )
    if problem:
        report(problem)
    problem = _workcg.configure_nproc(os.environ.get("HUTCH_AGENT_NPROC"))
    if problem:
        report(problem)
    problem = _workcg.configure_launcher(os.environ.get("HUTCH_AGENT_LAUNCHER"))
    if problem:
        report(problem)
    if os.getpid() != 1:
        _become_subreaper()

    loop = Loop()
    agent = Agent(
        loop,
        listener,
        workspace=workspace,
        base_env=child_environment(dict(os.environ)),
        image_shell=_image_shell(os.environ.get("HUTCH_AGENT_SHELL")),
    )
    agent.close_flush_path = os.environ.get("HUTCH_AGENT_CLOSE_FLUSH") or None
    agent.reaper.after_reaping = agent.files_may_be_closed
    loop.add_signal_handler(_signal.SIGCHLD, agent.reaper.reap)
    # NB: as PID 1 the kernel drops signals the agent has no handler for, so without these a
    # SIGTERM from the runtime would do nothing; with them, it is a graceful stop.
    loop.add_signal_handler(_signal.SIGTERM, agent.shutdown)
    loop.add_signal_handler(_signal.SIGINT, agent.shutdown)
    # NB: non-dumpable before anything runs in the sandbox besides the agent (see
    # defer_startup: nothing is spawned before it), and before it holds any secret.
    agent.defer_startup(_protect_self, _retitle, _warm_spawning)
    agent.start()
    agent.reaper.reap()  # anything that exited before the handler was in place
    if agent.base_env.get("HUTCH_CODE_PRESTART"):  # NB: imported only then (idle agent memory)
        from ._code import prestart

        agent.settle()
        prestart(agent)
    try:
        loop.run()
    finally:
        loop.close()


if __name__ == "__main__":
    main()
