"""Durations as users write them: ``"10m"``, ``"1h30m"``, ``"45s"``, ``"2d"``, or seconds as a
number (``90``, ``1.5``, ``"90"``). One parser for every API field that takes one."""

from __future__ import annotations

import math
import re

ACCEPTED_FORMS = (
    'a duration such as "30s", "10m", "1h30m" or "2d" (units d, h, m, s, largest first), '
    "or seconds as a number (600)"
)
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_RE = re.compile(
    r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?"
    r"(?:(\d+(?:\.\d+)?)s)?$"
)
_NUMBER_RE = re.compile(r"^\d+(?:\.\d+)?$")


MAX_SECONDS = 10 * 365 * 24 * 3600


def parse_duration(value: str | float | int) -> float:
    """Seconds in `value`; raises ValueError naming the accepted forms.

    Zero is allowed (the callers decide what it means); negative, NaN and infinite are not.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration: use {ACCEPTED_FORMS}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        if _NUMBER_RE.match(text):
            seconds = float(text)
        else:
            match = _DURATION_RE.match(text)
            if not text or match is None:
                raise ValueError(f"{value!r} is not a duration: use {ACCEPTED_FORMS}")
            seconds = sum(
                float(part) * unit
                for part, unit in zip(match.groups(), _UNITS.values(), strict=True)
                if part is not None
            )
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration: use {ACCEPTED_FORMS}")
    if seconds > MAX_SECONDS:
        # NB: a lifetime of 1.8e308 s overflowed the date it ends at (a 500, found by fuzzing).
        raise ValueError(f"{value!r} is longer than 10 years; use 0 for no limit")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``"1h30m"``: how a duration is shown back (whole seconds)."""
    left = round(seconds)
    if left == 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        count, left = divmod(left, int(size))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
