"""A sandbox sees its CPU limit where tools look: `nproc` (GNU, via OMP_NUM_THREADS) and
Python's os.cpu_count() (PYTHON_CPU_COUNT); its own env wins."""

from __future__ import annotations

import os

import pytest

from hutch import Sandbox
from hutch.server._cpu_env import cpu_env
from tests._server import ServerProcess


def test_the_limit_rounded_up_below_the_host_and_nothing_at_or_above_it() -> None:
    assert cpu_env(1.0, {}, host_cpus=8) == {"OMP_NUM_THREADS": "1", "PYTHON_CPU_COUNT": "1"}
    assert cpu_env(0.25, {}, host_cpus=8)["OMP_NUM_THREADS"] == "1"
    assert cpu_env(2.5, {}, host_cpus=8)["OMP_NUM_THREADS"] == "3"
    assert cpu_env(8.0, {}, host_cpus=8) == {}
    assert cpu_env(1.0, {"OMP_NUM_THREADS": "4"}, host_cpus=8) == {"PYTHON_CPU_COUNT": "1"}


@pytest.mark.sandbox
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a one-CPU host: nothing to limit")
def test_nproc_in_a_sandbox_says_its_cpu_limit_and_its_own_env_wins(
    server: ServerProcess,
) -> None:
    opts = {"base_url": server.url, "api_key": server.api_key}
    assert os.cpu_count() != 1
    sb = Sandbox.create(cpu=1.0, memory_mb=256, **opts)
    try:
        assert sb.exec("nproc").stdout == "1\n"
        assert (
            sb.exec("python3 -c 'import os; print(os.environ[\"PYTHON_CPU_COUNT\"])'").stdout
            == "1\n"
        )
    finally:
        sb.destroy()
    own = Sandbox.create(cpu=1.0, memory_mb=256, env={"OMP_NUM_THREADS": "2"}, **opts)
    try:
        assert own.exec("nproc").stdout == "2\n"
    finally:
        own.destroy()
