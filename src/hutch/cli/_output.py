"""Plain-text rendering for the CLI: tables, sizes, times, ``K=V`` pairs, errors."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import datetime


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, like ``docker ps``."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S")


def format_size(size: int) -> str:
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def short_id(content_id: str) -> str:
    """``"sha256:0123…"`` -> ``"0123456789ab"``: enough hex to tell images apart."""
    return content_id.partition(":")[2][:12] if ":" in content_id else content_id[:12]


def format_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def parse_pairs(pairs: Sequence[str] | None, what: str) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}``; raises ``ValueError`` on ``"A"``."""
    result: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r} is not of the form KEY=VALUE")
        result[key] = value
    return result


def print_error(message: str) -> None:
    """``hutch: error: MESSAGE`` on stderr, after what was written to stdout so far."""
    sys.stdout.flush()
    print(f"hutch: error: {message}", file=sys.stderr, flush=True)
