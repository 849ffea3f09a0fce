"""How `hutch serve` logs: text or JSON lines (`log_format`), levels per logger
(`log_level`, `log_levels`), and the audit log also into `HOME/audit.log` (JSON lines,
rotated)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import stat
import time
from pathlib import Path
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
AUDIT_FILE_BYTES = 10 * 1024 * 1024
AUDIT_FILES_KEPT = 5


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class AuditFileHandler(logging.handlers.RotatingFileHandler):
    """The rotated audit file, at one format and no file-system call per record besides its
    write: every request that changes something writes a record, and the stdlib handler
    formats each twice (once to measure it) and stats the path twice (to skip rotating a
    non-regular file), which py-spy showed on the exec path. The file's size is read once
    per file (fstat) and then counted; a non-regular file (a FIFO, /dev/null) never rotates."""

    def __init__(self, filename: Path, max_bytes: int, backup_count: int) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backup_count)
        self._size: int | None = None  # bytes in the file now; None: fstat it next
        self._regular = True
        self._last: tuple[logging.LogRecord, str] | None = None

    def format(self, record: logging.LogRecord) -> str:
        last = self._last
        if last is not None and last[0] is record:
            return last[1]
        text = super().format(record)
        self._last = (record, text)
        return text

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        if self._size is None:
            info = os.fstat(self.stream.fileno())
            self._regular = stat.S_ISREG(info.st_mode)
            self._size = info.st_size
        if not self._regular or self.maxBytes <= 0:
            return False
        text = self.format(record) + self.terminator
        length = len(text.encode(self.stream.encoding, "replace"))
        if self._size + length >= self.maxBytes:
            return True
        self._size += length
        return False

    def doRollover(self) -> None:
        super().doRollover()
        self._size = None  # the new file holds what is written next; fstat it then

    def close(self) -> None:
        self._last = None
        super().close()


def parse_log_levels(spec: str) -> dict[str, str]:
    """`"hutch.access=warning,hutch.audit=info"` -> {logger: level}.

    Raises:
        ValueError: an entry is not `name=level` with a known level.
    """
    levels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, level = item.partition("=")
        level = level.strip().upper()
        if not sep or not name.strip() or level not in logging.getLevelNamesMapping():
            raise ValueError(
                f"log level entry {item!r} must be logger=level (debug, info, warning, error)"
            )
        levels[name.strip()] = level
    return levels


def configure_logging(
    *,
    level: str,
    log_format: str,
    levels: dict[str, str] | None = None,
    audit_file: Path | None = None,
) -> None:
    """Set up the root handler for `hutch serve` (a program's edge, not library code)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("hutch").setLevel(level.upper())
    for name, value in (levels or {}).items():
        logging.getLogger(name).setLevel(value)
    if audit_file is not None:
        audit_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = AuditFileHandler(audit_file, AUDIT_FILE_BYTES, AUDIT_FILES_KEPT)
        file_handler.setFormatter(JsonFormatter())
        logging.getLogger("hutch.audit").addHandler(file_handler)
