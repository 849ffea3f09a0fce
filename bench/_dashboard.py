"""One row per figure, and the table bench/all.py prints: figure, p50/p95/p99 or a rate,
its baseline from the same run, the ratio, the goal and whether it is met."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench._stats import percentile


@dataclass
class Row:
    """One figure. `samples` (seconds) make a latency row; `value` (with `unit`) a rate row.
    `goal` reads the ratio (or the value, when there is no baseline) and says if it is met."""

    figure: str
    samples: list[float] = field(default_factory=list)
    value: float | None = None
    unit: str = ""
    baseline_label: str = ""
    baseline: float | None = None  # ms for latency rows, `unit` for rate rows
    goal_text: str = ""
    goal: Callable[[float], bool] | None = None
    note: str = ""

    @property
    def main(self) -> float:
        """The figure compared with the baseline: p50 in ms, or the rate."""
        if self.samples:
            return percentile(self.samples, 50) * 1000
        assert self.value is not None
        return self.value

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.main / self.baseline

    @property
    def met(self) -> str:
        if self.goal is None:
            return ""
        judged = self.ratio if self.ratio is not None else self.main
        return "yes" if self.goal(judged) else "NO"

    def cells(self) -> list[str]:
        if self.samples:
            ms = [s * 1000 for s in self.samples]
            figure = (
                f"p50 {percentile(ms, 50):.2f} p95 {percentile(ms, 95):.2f} "
                f"p99 {percentile(ms, 99):.2f} ms (n={len(ms)})"
            )
            base = "" if self.baseline is None else f"{self.baseline:.2f} ms"
        else:
            figure = f"{self.main:,.0f} {self.unit}"
            base = "" if self.baseline is None else f"{self.baseline:,.0f} {self.unit}"
        if self.baseline_label:
            base = f"{base} ({self.baseline_label})"
        ratio = self.ratio
        if ratio is None:
            ratio_text = ""
        elif self.samples:
            ratio_text = f"{ratio:.2f}x"
        else:
            ratio_text = f"{ratio:.0%}"
        return [self.figure, figure, base, ratio_text, self.goal_text, self.met, self.note]


def table(rows: list[Row]) -> str:
    header = ["figure", "now", "baseline (same run)", "ratio", "goal", "met?", "note"]
    lines = [header, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def at_most(limit: float) -> Callable[[float], bool]:
    return lambda x: x <= limit


def at_least(limit: float) -> Callable[[float], bool]:
    return lambda x: x >= limit
