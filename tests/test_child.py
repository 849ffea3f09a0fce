"""The agent's child start without `subprocess` (agent/_child.py) against Popen itself: the
same child, the same errors, and an agent whose first exec never imports `subprocess`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hutch.agent import _child
from hutch.agent._child import ChildError, start

pytestmark = pytest.mark.skipif(not _child.NATIVE, reason="fork_exec's arguments are 3.11's")

ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}


def _run(tmp_path: Path, how: str, argv: list[str], **kw: Any) -> tuple[int, bytes]:
    """Run argv with `start` or Popen, stdout into a file; (exit code, what it printed)."""
    out = tmp_path / f"out-{how}"
    with out.open("wb") as f:
        opts = {"env": ENV, "cwd": None, "stdout": f.fileno(), "stderr": f.fileno(), **kw}
        if how == "child":
            pid = start(argv, executable=opts.pop("executable", None), stdin=None, **opts).pid
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        else:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True, **opts
            )
            code = popen.wait()
    return code, out.read_bytes()


def test_a_child_starts_as_popen_starts_it(tmp_path: Path) -> None:
    probe = (
        "import os,sys; print(sys.argv[1:], os.getcwd(), os.environ['HOME'], "
        "os.getsid(0) == os.getpid(), sorted(os.listdir('/proc/self/fd')), "
        "os.read(0, 10), open('/proc/self/status').read().split('SigIgn:')[1].split()[0])"
    )
    argv = [sys.executable, "-c", probe, "a b", "ü"]
    for kw in ({}, {"cwd": str(tmp_path)}):
        assert _run(tmp_path, "child", argv, **kw) == _run(tmp_path, "popen", argv, **kw)
    # A program found on the child's PATH, and an executable other than argv[0].
    assert _run(tmp_path, "child", ["echo", "hi"]) == (0, b"hi\n")
    assert _run(tmp_path, "child", ["name-it-shows", "x"], executable="/bin/echo") == (0, b"x\n")
    # An inherited fd it was asked to keep, and none other.
    r, w = os.pipe()
    try:
        argv = [sys.executable, "-c", f"import os; os.write({w}, b'kept')"]
        assert _run(tmp_path, "child", argv, pass_fds=(w,))[0] == 0
        os.close(w)
        assert os.read(r, 100) == b"kept"
    finally:
        os.close(r)


def test_a_child_that_cannot_start_raises_what_popen_raises(tmp_path: Path) -> None:
    def raised(how: str, argv: list[str], **kw: Any) -> tuple[type[BaseException], Any, Any]:
        with pytest.raises(Exception) as info:
            _run(tmp_path, how, argv, **kw)
        e = info.value
        return type(e), getattr(e, "errno", None), getattr(e, "filename", None)

    script = tmp_path / "no-exec-bit"
    script.write_text("#!/bin/sh\n")
    for argv, kw in (
        (["no-such-program-here"], {}),
        ([str(tmp_path / "missing")], {}),
        ([str(script)], {}),
        (["true"], {"cwd": str(tmp_path / "gone")}),
    ):
        assert raised("child", argv, **kw) == raised("popen", argv, **kw)
    assert raised("child", ["true"], env={"A=B": "1"})[0] is ValueError
    with pytest.raises(ChildError, match="preexec_fn"):
        _run(tmp_path, "child", ["true"], preexec_fn=lambda: 1 / 0)  # type: ignore[func-returns-value]


def test_the_agents_first_exec_imports_no_subprocess(tmp_path: Path) -> None:
    """What made a new sandbox's first exec wait (~5-18 ms of imports): gone."""
    code = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from hutch.agent import __main__ as m\n"
        "m._warm_spawning()\n"
        "from hutch.agent._procs import spawn\n"
        "p = spawn(['true'], env={'PATH': '/bin:/usr/bin'}, cwd=None, identity=None,"
        " stdin=None, stdout=1, stderr=2)\n"
        "import os; os.waitpid(p.pid, 0)\n"
        "print(sorted(m for m in ('subprocess', 'locale', 're', 'enum') if m in sys.modules))\n"
    )
    from hutch.agent._host import build_code_dir

    code_dir = build_code_dir(tmp_path / "code")
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(code_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stderr
