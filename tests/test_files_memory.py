"""read_file holds a large file once in the client, not twice (issue 21: a 600 MB read took
1.18 GB), and write_file of one large bytes object arrives whole."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hutch import Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox

SIZE = 96 * 1024 * 1024


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_read_file_takes_the_file_once_in_client_memory(server: ServerProcess) -> None:
    with Sandbox.create(base_url=server.url, api_key=server.api_key, disk_mb=1024) as sb:
        block = os.urandom(1024 * 1024)
        data = block * (SIZE // len(block))
        digest = hashlib.sha256(data).hexdigest()
        assert sb.write_file("big.bin", data) == SIZE  # one bytes object, sent in slices
        del data
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = peak_rss()
        back = sb.read_file("big.bin")
        grown = peak_rss() - before
        assert isinstance(back, bytes) and len(back) == SIZE
        assert hashlib.sha256(back).hexdigest() == digest
        # The buffer is the file; httpx's chunks on the way are small and freed as they go.
        assert grown <= 1.1 * SIZE, f"read_file took {grown / SIZE:.2f}x the file"
        assert sb.read_file("big.bin", offset=SIZE - 3, length=10) == back[-3:]
