"""SIGTERM drains: requests in flight finish, open streams end and their clients resume on
the next server with nothing lost or repeated, sandboxes keep running."""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Sandbox, SandboxEvent
from hutch.server._drain import DRAIN_SECONDS
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

pytestmark = pytest.mark.sandbox


@pytest.fixture()
def own_server() -> Iterator[ServerProcess]:
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-drain-", dir="/var/tmp")))
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)


def _in_thread(target: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(target())  # type: ignore[operator]
        except BaseException as exc:  # reported by the test's asserts
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_sigterm_finishes_requests_ends_streams_and_clients_resume(
    own_server: ServerProcess,
) -> None:
    sb = Sandbox.create(base_url=own_server.url, api_key=own_server.api_key)
    lines = 80
    p = sb.start_process(f"for i in $(seq 1 {lines}); do echo line-$i; sleep 0.1; done")
    events: list[SandboxEvent] = []

    def read_logs() -> bytes:
        return b"".join(e.data for e in p.stream_logs() if e.type == "stdout")

    def follow_events() -> None:
        for event in sb.events(timeout=120):
            events.append(event)

    logs_thread, logs = _in_thread(read_logs)
    events_thread, _ = _in_thread(follow_events)
    time.sleep(1.0)
    exec_thread, execs = _in_thread(lambda: sb.exec("touch /tmp/began; sleep 2; echo finished"))
    deadline = time.monotonic() + 30
    while not sb.exists("/tmp/began"):  # the exec is in flight on the server
        assert time.monotonic() < deadline
        time.sleep(0.05)

    assert own_server.proc is not None
    own_server.proc.send_signal(signal.SIGTERM)
    own_server.proc.wait(DRAIN_SECONDS + 10)  # a drain is bounded: it never hangs

    exec_thread.join(10)
    result = execs[0]
    assert not isinstance(result, BaseException), own_server.log_path.read_text()[-3000:]
    assert result.stdout == "finished\n" and result.exit_code == 0  # type: ignore[attr-defined]

    own_server.start()  # the next server, same address
    logs_thread.join(60)
    assert logs and not isinstance(logs[0], BaseException), logs
    expected = "".join(f"line-{i}\n" for i in range(1, lines + 1)).encode()
    assert logs[0] == expected  # every byte once, in order, across the restart
    assert p.wait(timeout=30).exit_code == 0  # the process ran on through the restart
    assert sb.info().status == "running"

    sb.pause()
    sb.destroy()
    events_thread.join(30)
    assert not events_thread.is_alive()
    assert [e.type for e in events] == ["created", "started", "paused", "destroyed"]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    log = own_server.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
