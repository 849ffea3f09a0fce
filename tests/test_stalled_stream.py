"""A client that stops reading its exec stream slows down nobody else: the stream has its
own agent connection, so other requests to the same sandbox still answer at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from hutch import Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture()
def sb(server: ServerProcess) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(image="busybox", base_url=server.url, api_key=server.api_key)
    yield sandbox
    sandbox.destroy()


def _exec_in_thread(sb: Sandbox, into: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.append(sb.exec("echo still here").stdout))
    thread.daemon = True
    thread.start()
    return thread


@pytest.mark.parametrize("route", ["exec", "session"])
def test_a_stream_nobody_reads_does_not_stall_other_requests(sb: Sandbox, route: str) -> None:
    command = "head -c 400000000 /dev/zero; echo done"  # far more than every buffer holds
    if route == "exec":
        events = sb.exec_stream(command)
    else:
        events = sb.create_session().exec_stream(command)
    first = next(iter(events))  # it runs and sends; from here on nobody reads
    assert first.type == "stdout"
    time.sleep(3)  # for every buffer on the way to fill (MBs: well under a second)
    answers: list[str] = []
    others = [_exec_in_thread(sb, answers) for _ in range(3)]
    for thread in others:
        thread.join(60)  # stalled behind the stream, they would wait for ever
    assert answers == ["still here\n"] * 3
    assert sb.exec("echo and again").stdout == "and again\n"
    events.close()  # type: ignore[attr-defined]
