"""Request bodies and query parameters, built once for the async and the sync client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from hutch._wire.sandbox_options import OPTION_NAMES


def sandbox_create_body(
    image: str, options: Mapping[str, Any], *, function: str, sandbox_id: str | None = None
) -> dict[str, Any]:
    """The JSON ``SandboxCreate`` body: the options given (the server has the defaults).

    Raises:
        TypeError: An option that does not exist, as Python says for an unknown keyword.
    """
    body: dict[str, Any] = {"id": sandbox_id, "image": image}
    for name, value in options.items():
        if name not in OPTION_NAMES:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
        if value is None:
            continue  # the server's default, as for an option not given
        if isinstance(value, Mapping):
            body[name] = dict(value)
        elif isinstance(value, Sequence) and not isinstance(value, str):
            body[name] = [dict(v) if isinstance(v, Mapping) else v for v in value]
        else:
            body[name] = value
    return body


def label_params(labels: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """``?label=k=v&label=k2=v2`` query parameters (the server ANDs them)."""
    return tuple(("label", f"{key}={value}") for key, value in (labels or {}).items())


def path_segment(value: str) -> str:
    """``value`` quoted to stay one path segment (an id cannot reach another route)."""
    if not value or value in (".", ".."):
        raise ValueError(f"{value!r} is not a valid id")
    return quote(value, safe="")
