"""Checks shared by the `HUTCH_*` settings: a bad value stops `hutch serve` with a message that
names the setting and what it accepts, never later as a server that misbehaves."""

from __future__ import annotations


def whole_number(setting: str, value: object, high: int, what: str) -> int:
    """`value` (an int, or the text of one) as an int if it is a whole number from 1 to
    `high`; else ValueError naming `setting`, the range and `what` the setting is."""
    number: int | None
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        number = None
    if number is None or not 1 <= number <= high:
        raise ValueError(
            f"{setting} must be a whole number from 1 to {high} ({what}), not {value!r}"
        )
    return number


def duration_setting(setting: str, text: str) -> float:
    """A duration setting's text (`"40s"`, `"2m"`, seconds) in seconds; else ValueError
    naming `setting` and the accepted forms."""
    from hutch.server._durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{setting}: {exc}") from None


def check_seconds(setting: str, seconds: float, high: float, example: str) -> None:
    """ValueError naming `setting` and the range unless 0 < `seconds` <= `high` (NaN fails
    this too); `example`: the forms to show, e.g. `'"10s"'`."""
    if not 0 < seconds <= high:
        raise ValueError(
            f"{setting} must be more than 0 and at most {high:.0f} seconds (e.g. {example}), "
            f"not {seconds!r}"
        )
