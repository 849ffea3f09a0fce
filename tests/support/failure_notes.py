"""Notes a test adds to its own report if it fails (conftest's `pytest_runtest_makereport`):
what a CI log must show because the state it describes is gone once the run ends."""

from __future__ import annotations

from collections.abc import Callable

import pytest

# item.stash[FAILURE_NOTES]: callables giving (section title, text), called only on failure.
FAILURE_NOTES = pytest.StashKey[list[Callable[[], tuple[str, str]]]]()
