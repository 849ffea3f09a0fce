"""Durations as the API accepts them (sleep_after, timeout, set_timeout)."""

from __future__ import annotations

import pytest

from hutch.server._durations import format_duration, parse_duration
from hutch.server._models import SandboxCreate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600), ("1h30m", 5400), ("45s", 45), ("2d", 172800), ("1.5h", 5400), ("90", 90),
     (90, 90), (1.5, 1.5), ("0", 0), ("1d2h3m4s", 93784), (" 10M ", 600)],
)  # fmt: skip
def test_accepted_forms(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["10 minutes", "", "m", "-1", -1, "1m1h", "10x", "1e3", float("nan"), float("inf"), True]
)
def test_refused_forms_name_the_accepted_ones(bad: object) -> None:
    with pytest.raises(ValueError, match='"10m", "1h30m"') as err:
        parse_duration(bad)  # type: ignore[arg-type]
    assert "seconds as a number" in str(err.value)


def test_formatted_back() -> None:
    assert [format_duration(s) for s in (0, 45, 600, 5400, 93784)] == [
        "0s", "45s", "10m", "1h30m", "1d2h3m4s"
    ]  # fmt: skip


def test_create_body_converts_to_seconds() -> None:
    body = SandboxCreate(sleep_after="10m", timeout="1h")
    assert (body.idle_limit, body.lifetime) == (600, 3600)
    with pytest.raises(ValueError, match="not a duration"):
        SandboxCreate(sleep_after="10 minutes")


def test_a_duration_past_ten_years_is_refused() -> None:
    """Regression (schemathesis): PUT …/timeout with 1.8e308 overflowed the end date (a 500)."""
    with pytest.raises(ValueError, match="10 years"):
        parse_duration(1.7976931348623157e308)
    assert parse_duration("3650d") == 3650 * 86400
