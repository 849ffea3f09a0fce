"""The runc driver asks no runc process about a container runc keeps no state for: a stopped
sandbox's start used to run `runc state` and `runc delete --force` for nothing (5-15 ms each)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hutch.runtime.container._errors import RuncError
from hutch.runtime.container._runc import Runc


def test_no_runc_process_for_a_container_without_state(tmp_path: Path) -> None:
    # `false` stands in for runc: any process it runs fails with no "does not exist" message,
    # which the driver reports as an error. No error means no process was run.
    runc = Runc("false", tmp_path)
    assert asyncio.run(runc.state("sb-000000000001")) is None
    asyncio.run(runc.delete("sb-000000000001"))


def test_a_container_with_state_is_still_asked(tmp_path: Path) -> None:
    (tmp_path / "sb-000000000001").mkdir()
    runc = Runc("false", tmp_path)
    with pytest.raises(RuncError):
        asyncio.run(runc.state("sb-000000000001"))
    with pytest.raises(RuncError):
        asyncio.run(runc.delete("sb-000000000001"))
