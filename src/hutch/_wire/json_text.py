"""JSON text that is not Unicode text: a string holding a lone UTF-16 surrogate.

JSON lets a string escape half of a surrogate pair on its own (`"\\ud800"`); Python decodes it
into a str that no encoder takes, so it passes validation and fails wherever the text first
meets bytes (the agent's exec, env, cwd). Hutch's API (hutch.server) and the E2B front
(hutch.e2b) refuse such bodies where they enter.
"""

from __future__ import annotations

import json
import re
from typing import Any

LONE_SURROGATE_MESSAGE = (
    "the JSON body holds a string with a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
    "without its pair), which is not Unicode text; send the text as UTF-8, or escape a "
    "character beyond U+FFFF as a full pair"
)

# An escaped surrogate, paired or not: bodies without one (nearly all) are not parsed here.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def has_lone_surrogate(body: bytes) -> bool:
    """Whether the JSON `body` holds a string (or key) with a lone surrogate; False for what
    is not JSON (the route's own parsing answers that)."""
    if not SURROGATE_ESCAPE.search(body):
        return False
    try:
        value: Any = json.loads(body)
    except (ValueError, RecursionError):
        return False
    try:
        # NB: a pair decodes to one character and encodes; a lone half does not.
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def check_unicode_text(body: bytes) -> None:
    """Raises:
    ValueError: the JSON `body` holds a lone surrogate (the message says what to send)."""
    if has_lone_surrogate(body):
        raise ValueError(LONE_SURROGATE_MESSAGE)
