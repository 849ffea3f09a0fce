"""Percentiles and a one-line report, shared by the benchmarks."""

from __future__ import annotations

import random
import statistics
from pathlib import Path


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def report(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<44} n={len(ms):<5} p50={percentile(ms, 50):8.2f} ms  "
        f"p95={percentile(ms, 95):8.2f} ms  p99={percentile(ms, 99):8.2f} ms  "
        f"mean={statistics.fmean(ms):8.2f} ms"
    )


def median_difference_interval(
    a: list[float], b: list[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A 95% bootstrap interval of p50(a) − p50(b): how far the measured difference of two
    medians may be from the true one, given these samples' spread (not the load's drift
    between runs: interleave for that)."""
    rng = random.Random(seed)
    diffs = sorted(
        percentile(rng.choices(a, k=len(a)), 50) - percentile(rng.choices(b, k=len(b)), 50)
        for _ in range(resamples)
    )
    return diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples) - 1]


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, for every figure printed (a shared 2-core
    machine: a figure means little without them)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
