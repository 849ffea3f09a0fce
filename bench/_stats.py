"""Percentiles and a one-line report, shared by the benchmarks."""

from __future__ import annotations

import statistics


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
