"""Building protobuf oneof values."""

from __future__ import annotations

from typing import Any

from protobuf import Oneof


def oneof(field: str, value: object) -> Any:
    # NB: mypy infers `Oneof[str, ...]` for a literal field name, which the generated
    # messages' `Oneof[Literal[...], ...]` unions refuse; the field names are checked by
    # the protobuf runtime when the message is built.
    return Oneof(field, value)
