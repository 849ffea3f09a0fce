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
