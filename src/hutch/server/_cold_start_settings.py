"""The cold-start admission's settings (services/_cold_starts.py): read and checked at start.

A bad value stops `hutch serve` with a message that says the accepted range, never later as
a create that waits forever (a wait of 1e9 s) or never starts (zero slots).
"""

from __future__ import annotations

from collections.abc import Mapping

from hutch.server._setting_checks import check_seconds, duration_setting, whole_number

# Long enough that a burst far larger than the slots still drains within it, short enough
# that a client's own request timeout (60 s in the SDK) does not fire first.
DEFAULT_COLD_START_WAIT = 40.0
MAX_COLD_START_SLOTS = 1024
# A create waiting longer than this has long been given up by its client.
MAX_COLD_START_WAIT = 3600.0
_SLOTS = "how many sandboxes may start at once; unset: one per CPU"


def check_cold_start_settings(slots: int | None, wait: float) -> None:
    """Raise ValueError saying what to set when `slots` or `wait` is out of range."""
    if slots is not None:
        whole_number("HUTCH_COLD_START_SLOTS", slots, MAX_COLD_START_SLOTS, _SLOTS)
    check_seconds("HUTCH_COLD_START_WAIT", wait, MAX_COLD_START_WAIT, '"40s" or "2m"')


def cold_start_env(env: Mapping[str, str]) -> dict[str, object]:
    """``cold_start_slots``/``cold_start_wait`` from ``HUTCH_COLD_START_*``, when set."""
    values: dict[str, object] = {}
    slots = env.get("HUTCH_COLD_START_SLOTS", "").strip()
    if slots:
        values["cold_start_slots"] = whole_number(
            "HUTCH_COLD_START_SLOTS", slots, MAX_COLD_START_SLOTS, _SLOTS
        )
    wait = env.get("HUTCH_COLD_START_WAIT", "").strip()
    if wait:
        values["cold_start_wait"] = duration_setting("HUTCH_COLD_START_WAIT", wait)
    return values
