"""Processes: users from the image's files, spawning, reaping, killing whole trees."""

from __future__ import annotations

import os

from ._launch import MAX_GROUPS, bundled_launcher, launch
from ._workcg import active as work_active
from ._workcg import enter_work, nproc_launcher
from ._workcg import spawner as work_spawner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from ._child import Started

# NB: `signal`'s C module, not `signal` (which imports enum): see _loop.
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# -- users -------------------------------------------------------------------------------------


class Identity:
    """Who a process runs as: resolved from the image's /etc/passwd and /etc/group."""

    __slots__ = ("uid", "gid", "groups", "name", "home")

    def __init__(self, uid: int, gid: int, groups: list[int], name: str | None, home: str) -> None:
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.name = name
        self.home = home


def _read_db(path: str) -> list[list[str]]:
    # Parsed by hand rather than through pwd/grp: glibc's NSS would follow the image's
    # nsswitch.conf to modules the agent's (host) libc may not have; the files are the truth.
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip()]
    except OSError:
        return []


def default_user() -> str | None:
    """The image's USER (from the runtime), the default of every exec, session and terminal;
    None means the agent's own (root)."""
    return os.environ.get("HUTCH_AGENT_USER") or None


def command_identity(user: str | None) -> Identity | None:
    """Who a command, process, session or terminal runs as: `user`, else the image's USER;
    None is root (no switch).

    Raises:
        OpError: ``user_not_found``, a name that is not in the image's files.
    """
    from ._ops import OpError

    user = user if user is not None else default_user()
    if user is None:
        return None
    try:
        return resolve_user(user)
    except LookupError as e:
        raise OpError("user_not_found", str(e)) from None


def command_cwd(workspace: str, cwd: str | None) -> str | None:
    """Where a command starts: `cwd` under the workspace (join() keeps an absolute one), else
    the image's working directory when it exists, as in `docker exec`.

    Raises:
        OpError: ``cwd_not_found``.
    """
    from ._ops import OpError

    if cwd is None:
        return workspace if os.path.isdir(workspace) else None
    cwd = os.path.join(workspace, cwd)
    if not os.path.isdir(cwd):
        raise OpError("cwd_not_found", f"working directory {cwd} does not exist")
    return cwd


def resolve_user(spec: str, etc: str = "/etc") -> Identity:
    """Resolve Docker-style ``user``, ``uid``, ``user:group`` or ``uid:gid``.

    Raises:
        LookupError: a name is not in the image's files (numeric ids always work).
    """
    user, _, group = spec.partition(":")
    passwd = [e for e in _read_db(f"{etc}/passwd") if len(e) >= 7]
    if user.isdigit():
        uid = int(user)
        entry = next((e for e in passwd if e[2] == user), None)
    else:
        entry = next((e for e in passwd if e[0] == user), None)
        if entry is None:
            raise LookupError(
                f"user {user!r} is not in the image's /etc/passwd; "
                "create it in the image or pass a numeric uid"
            )
        if not entry[2].isdigit():  # never a silent root
            raise LookupError(f"user {user!r} has no numeric uid in the image's /etc/passwd")
        uid = int(entry[2])
    # As Docker does: a uid without a passwd entry runs with gid 0 and HOME=/.
    gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    name = entry[0] if entry else None
    home = entry[5] if entry and entry[5] else "/"
    groups_db = [e for e in _read_db(f"{etc}/group") if len(e) >= 4]
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gentry = next((e for e in groups_db if e[0] == group), None)
            if gentry is None or not gentry[2].isdigit():
                raise LookupError(f"group {group!r} is not in the image's /etc/group")
            gid = int(gentry[2])
    groups = [gid]
    if name is not None:
        for e in groups_db:
            if name in e[3].split(",") and e[2].isdigit() and int(e[2]) not in groups:
                groups.append(int(e[2]))
    return Identity(uid, gid, groups, name, home)


# -- spawning ----------------------------------------------------------------------------------


def spawn(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    identity: Identity | None,
    stdin: int | None,
    stdout: int,
    stderr: int,
    executable: str | None = None,
) -> Started:
    """Start ``args`` in a new session (so the whole tree can be signalled).

    ``stdin`` None means /dev/null; ``executable``, when given, is the program run with
    ``args`` as its argv (else ``args[0]`` looked up on the env's PATH). Raises OSError like
    ``subprocess.Popen``; the caller owns the returned object until the process is reaped
    (see ``Reaper``) and must then set its ``returncode`` so that Popen's own bookkeeping
    (where it is a Popen: `_child`) never waits for it.
    """
    # Imported on the first exec only: an agent that never runs anything stays smaller.
    from ._child import NATIVE
    from ._child import start as start_child

    def popen(
        preexec: Callable[[], None] | None,
        argv: Sequence[str] = args,
        pass_fds: tuple[int, ...] = (),
        program: str | None = executable,
        as_user: bool = True,
    ) -> Started:
        if NATIVE:
            return start_child(
                argv,
                executable=program,
                env=env,
                cwd=cwd,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=pass_fds,
                preexec_fn=preexec,
                **(identity_args(identity) if as_user else {}),
            )
        import subprocess

        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            executable=program,
            close_fds=True,
            pass_fds=pass_fds,
            start_new_session=True,
            restore_signals=True,
            preexec_fn=preexec,
            **(identity_args(identity) if as_user else {}),
        )

    if not work_active():
        return popen(None)
    limited = nproc_launcher()
    if limited is not None:
        # gVisor: vfork a launcher that sets the limit and execs, rather than fork the agent.
        start = lambda argv, fds: popen(None, argv, fds, None)  # noqa: E731
        return launch(*limited, args, env, start, executable=executable)
    in_work = work_spawner()
    if in_work is not None:
        launcher = bundled_launcher() if identity_args(identity) else None
        try:
            if launcher is not None and identity is not None and len(identity.groups) <= MAX_GROUPS:
                # Another user: subprocess would fork the agent to switch (it vforks only when
                # it keeps the user), so a vfork-ed launcher switches and execs instead.
                user = (identity.uid, identity.gid, identity.groups)
                return in_work.call(
                    lambda: launch(
                        launcher,
                        None,
                        args,
                        env,
                        lambda argv, fds: popen(None, argv, fds, None, as_user=False),
                        executable=executable,
                        user=user,
                    )
                )
            # Born in `work`, and by vfork: no fork of the agent, no Python in the child.
            return in_work.call(lambda: popen(None))
        except BlockingIOError:
            # EAGAIN: `work`'s pids are full (a fork bomb). Fork here, in the agent's own
            # reserve, and move the child: the exec that kills the bomb must still start.
            pass
    return popen(enter_work)


def find_program(name: str, path: str) -> str | None:
    """`name` if it is a path, else the first `name` on `path` (a PATH value), when it is an
    executable file; None otherwise."""
    candidates = [name] if "/" in name else [os.path.join(d, name) for d in path.split(":") if d]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def program_on_path(name: str, path: str) -> str | None:
    """Where the child's own PATH walk would find `name` (a bare name), looked up here.

    NB: subprocess walks PATH in the vfork-ed child, one ``execve`` per entry until one
    works: ``true`` under Debian's PATH is three failed execve before /usr/bin/true, while
    the agent's main thread waits. The same search done here first (the first regular file
    with an execute bit, as the kernel's walk would take it) gives the child one execve.
    None, and the child walks as before, for a name with a ``/``, a PATH with a relative or
    empty entry (relative to the child's cwd, not the agent's) or no match (the child's
    walk then raises the error it always raised)."""
    if "/" in name:
        return None
    dirs = path.split(":")
    if not all(d.startswith("/") for d in dirs):
        return None
    for d in dirs:
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def identity_args(identity: Identity | None) -> dict[str, Any]:
    """Popen's arguments to run as `identity`; none to stay who the agent is."""
    if identity is None or (os.geteuid() != 0 and identity.uid == os.geteuid()):
        return {}
    return {"user": identity.uid, "group": identity.gid, "extra_groups": identity.groups}


def command_env(
    base: Mapping[str, str], identity: Identity | None, extra: Mapping[str, str] | None
) -> dict[str, str]:
    """The environment a command starts with: `base` (the image's and the sandbox's), the
    HOME/USER/LOGNAME of `identity`, then `extra` (the request's), with a PATH."""
    env = dict(base)
    if identity is not None:
        env["HOME"] = identity.home
        if identity.name is not None:
            env["USER"] = env["LOGNAME"] = identity.name
    env.update(extra or {})
    env.setdefault("PATH", DEFAULT_PATH)
    return env


# -- reaping -----------------------------------------------------------------------------------


class Reaper:
    """Collects every exited child (all orphans too, when the agent is PID 1) and hands the
    exit status of the ones it was asked about to their callbacks."""

    __slots__ = ("_callbacks", "after_reaping")

    def __init__(self) -> None:
        self._callbacks: dict[int, Callable[[int], None]] = {}
        # Called once after a round that reaped anything (its files are closed by then).
        self.after_reaping: Callable[[], None] | None = None

    def watch(self, pid: int, callback: Callable[[int], None]) -> None:
        self._callbacks[pid] = callback

    def reap(self) -> None:
        reaped = False
        try:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                reaped = True
                callback = self._callbacks.pop(pid, None)
                if callback is not None:
                    callback(status)
        finally:
            if reaped and self.after_reaping is not None:
                self.after_reaping()

    @property
    def watched(self) -> int:
        return len(self._callbacks)


# Every exec's environment carries this variable with a value unique to the exec.
EXEC_TAG_VAR = "HUTCH_EXEC_ID"

# -- process trees -----------------------------------------------------------------------------


def _scan_processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session) of every live (not zombie) process in /proc."""
    procs: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # The command name sits in parentheses and may hold spaces or ')': split on the last.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 4 or fields[0] in (b"Z", b"X"):
            continue
        procs[int(name)] = (int(fields[1]), int(fields[3]))
    return procs


def _tagged(procs: dict[int, tuple[int, int]], tag: bytes | None) -> set[int]:
    """Processes whose environment carries ``EXEC_TAG_VAR=tag``: this finds what escaped both
    the session (setsid) and the parent chain (a double fork re-parents to PID 1)."""
    if tag is None:
        return set()
    marker = EXEC_TAG_VAR.encode() + b"=" + tag + b"\0"
    found = set()
    for pid in procs:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read():
                    found.add(pid)
        except OSError:
            continue
    return found


def _tree(
    procs: dict[int, tuple[int, int]], session: int, root: int | None, tag: bytes | None = None
) -> set[int]:
    """Everything in ``session`` or tagged with ``tag``, plus all descendants of those and
    of ``root``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    tree = {pid for pid, (_, sid) in procs.items() if sid == session} | _tagged(procs, tag)
    stack = list(tree)
    if root is not None and root in procs:
        tree.add(root)
        stack.append(root)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in tree:
                tree.add(child)
                stack.append(child)
    tree.discard(os.getpid())
    tree.discard(1)
    return tree


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(session: int, root: int | None, tag: bytes | None = None) -> set[int]:
    """SIGKILL a session and every descendant of ``root`` (pass None once it is reaped);
    returns the pids that were alive (not zombies) and signalled.

    Members are stopped first and the scan repeated until it finds nothing new, so that a
    process forking in a loop cannot outrun the kill.
    """
    stopped: set[int] = set()
    for _ in range(50):
        new = _tree(_scan_processes(), session, root, tag) - stopped
        if not new:
            break
        for pid in new:
            _send(pid, _signal.SIGSTOP)
        stopped |= new
    for pid in stopped:
        _send(pid, _signal.SIGKILL)
    return stopped


def signal_tree(session: int, root: int | None, sig: int, tag: bytes | None = None) -> set[int]:
    """Send ``sig`` once to a session and the descendants of ``root`` (graceful stop);
    returns the pids that were alive (not zombies) and signalled."""
    tree = _tree(_scan_processes(), session, root, tag)
    for pid in tree:
        _send(pid, sig)
    return tree
