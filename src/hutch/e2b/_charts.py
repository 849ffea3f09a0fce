"""Hutch's extracted charts (``application/vnd.hutch.chart+json``) in the shape that
``e2b-code-interpreter`` parses into its typed chart classes. Pure functions."""

from __future__ import annotations

import math
import re
from typing import Any

_UNIT = re.compile(r"\(([^()]+)\)\s*$")


def unit_of(label: object) -> str | None:
    """The unit an axis label gives in parentheses at its end: "Time (s)" -> "s"."""
    found = _UNIT.search(label) if isinstance(label, str) else None
    return found.group(1).strip() if found else None


def _two_d(chart: dict[str, Any]) -> dict[str, Any]:
    return {
        "x_label": chart.get("x_label") or None,
        "y_label": chart.get("y_label") or None,
        "x_unit": unit_of(chart.get("x_label")),
        "y_unit": unit_of(chart.get("y_label")),
    }


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _ticks(value: object) -> list[Any]:
    return [v for v in value if isinstance(v, str | int | float)] if isinstance(value, list) else []


def _point_axes(chart: dict[str, Any]) -> dict[str, Any]:
    scales = {"linear", "datetime", "categorical", "log", "symlog", "logit", "function_log"}
    return {
        **_two_d(chart),
        "x_scale": chart.get("x_scale") if chart.get("x_scale") in scales else "linear",
        "y_scale": chart.get("y_scale") if chart.get("y_scale") in scales else "linear",
        "x_ticks": _ticks(chart.get("x_ticks")),
        "x_tick_labels": _strings(chart.get("x_tick_labels")),
        "y_ticks": _ticks(chart.get("y_ticks")),
        "y_tick_labels": _strings(chart.get("y_tick_labels")),
    }


def e2b_chart(chart: dict[str, Any]) -> dict[str, Any]:
    kind = str(chart.get("type") or "unknown")
    title = chart.get("title") or None
    elements: list[Any] = list(chart.get("elements") or [])
    if kind == "line":
        lines = [
            {
                "label": e.get("label", ""),
                "points": [[x, y] for x, y in zip(e["x"], e["y"], strict=False)],
            }
            for e in elements
        ]
        return {"type": "line", "title": title, **_point_axes(chart), "elements": lines}
    if kind == "scatter":
        points = [{"label": e.get("label", ""), "points": e.get("points", [])} for e in elements]
        return {"type": "scatter", "title": title, **_point_axes(chart), "elements": points}
    if kind == "bar":
        bars = [
            {"label": str(e.get("label", "")), "value": e.get("value"), "group": e.get("group", "")}
            for e in elements
        ]
        return {"type": "bar", "title": title, **_two_d(chart), "elements": bars}
    if kind == "pie":
        slices = [
            {
                "label": str(e.get("label", "")),
                "angle": float(e.get("fraction") or 0.0) * 360.0,
                "radius": 1.0,
            }
            for e in elements
        ]
        return {"type": "pie", "title": title, "elements": slices}
    if kind == "box_and_whisker":
        return {"type": "box_and_whisker", "title": title, **_two_d(chart), "elements": elements}
    if kind == "composite":
        charts = [e2b_chart(e) for e in elements]
        return {"type": "superchart", "title": title, "elements": charts}
    return {"type": "unknown", "title": title, "elements": []}


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity; E2B sends null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
