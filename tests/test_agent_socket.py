"""The agent's listening socket on the host (`listen_unix`): only root may connect, from the
moment it exists, and it replaces an old one without leaving anything beside it."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.runtime.container._host_files import listen_unix


@pytest.fixture
def no_umask() -> Iterator[None]:
    old = os.umask(0)  # the loosest: what the socket must not get
    try:
        yield
    finally:
        os.umask(old)


def test_a_socket_bound_after_its_own_chmod_is_born_with_that_mode(
    tmp_path: Path, no_umask: None
) -> None:
    # What listen_unix relies on (Linux's unix_bind): no window with the umask's mode.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(str(tmp_path / "s"))
        assert stat.S_IMODE(os.lstat(tmp_path / "s").st_mode) == 0o600


def test_the_agent_socket_is_root_only_replaces_an_old_one_and_leaves_nothing_else(
    tmp_path: Path, no_umask: None
) -> None:
    path = tmp_path / "agent.sock"
    path.write_text("a socket file of an earlier start")
    listener = listen_unix(path)
    with listener:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir()] == ["agent.sock"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            conn, _ = listener.accept()
            conn.close()


def test_a_socket_that_cannot_be_made_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    path.mkdir()  # a directory in its place: the rename fails
    (path / "x").write_text("")
    with pytest.raises(OSError):
        listen_unix(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.sock"]
