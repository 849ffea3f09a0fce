"""A short soak (bench/soak.py): create/exec/stream/destroy cycles at mixed concurrency
across a kill -9 and restart, concurrent creates, then nothing of them left on the host."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.soak import RSS_GROWTH_LIMIT, print_report, run_soak
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

pytestmark = pytest.mark.sandbox


@pytest.fixture()
def soak_server(busybox_image: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-soak-", dir="/var/tmp")))
    srv.start(timeout=300)
    yield srv
    srv.stop()
    _cleanup_home(srv)


def test_a_short_soak_leaves_nothing_behind(soak_server: ServerProcess) -> None:
    result = run_soak(
        soak_server, cycles=60, restart_every=30, concurrent_creates=16, levels=(1, 4, 8, 2)
    )
    print_report(result)  # shown when the test fails
    assert result.failures == []
    assert result.cycles_ok == 60 and len(result.restarts) == 1
    assert result.concurrent_failures == [] and len(result.concurrent_creates) == 16
    assert result.leaks == {}
    assert all(growth <= RSS_GROWTH_LIMIT for growth in result.rss_growth), result.rss_growth
