"""The audit file: rotated at its size with no record lost or split, each record formatted
once (the stdlib handler formats every record twice and stats the path twice)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hutch.server._logging import AuditFileHandler, JsonFormatter


class CountingFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def format(self, record: logging.LogRecord) -> str:
        self.calls += 1
        return super().format(record)


def _record(i: int) -> logging.LogRecord:
    record = logging.LogRecord("hutch.audit", logging.INFO, __file__, 1, "op %d", (i,), None)
    record.fields = {"n": i, "action": "exec_command"}
    return record


def test_rotates_at_its_size_and_keeps_every_record_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    handler = AuditFileHandler(path, max_bytes=400, backup_count=50)
    formatter = CountingFormatter()
    handler.setFormatter(formatter)
    for i in range(60):
        handler.handle(_record(i))
    handler.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) > 5, "it never rotated"
    numbers = []
    for file in files:
        assert file.stat().st_size < 400, f"{file.name} outgrew its limit"
        numbers += [json.loads(line)["n"] for line in file.read_text().splitlines()]
    assert sorted(numbers) == list(range(60))
    assert formatter.calls == 60, "a record was formatted more than once"


def test_a_file_written_before_keeps_growing_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("x" * 350 + "\n")
    handler = AuditFileHandler(path, max_bytes=400, backup_count=3)
    handler.setFormatter(JsonFormatter())
    handler.handle(_record(1))  # 351 bytes + a line > 400: the old file rotates first
    handler.close()
    assert (tmp_path / "audit.log.1").read_text() == "x" * 350 + "\n"
    assert json.loads(path.read_text())["n"] == 1


def test_a_non_regular_file_never_rotates(tmp_path: Path) -> None:
    handler = AuditFileHandler(Path("/dev/null"), max_bytes=10, backup_count=3)
    handler.setFormatter(JsonFormatter())
    for i in range(5):
        handler.handle(_record(i))
    handler.close()
    assert Path("/dev/null").exists() and not Path("/dev/null.1").exists()
