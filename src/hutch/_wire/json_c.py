"""JSON through the standard library's C codec (``_json``), without importing ``json``.

``json`` imports ``re`` and compiles six patterns at import time (~4 ms of the agent's
start-up, before it can answer anyone), although ``json.dumps``/``json.loads`` of plain values
run entirely in ``_json``'s C scanner and encoder. These two functions drive the same C code
with the same settings as ``json.dumps(value, separators=(",", ":"))`` and ``json.loads``
of UTF-8, so they produce and accept the same text; ``json`` is imported only to say what is
wrong with bad input (its ``JSONDecodeError``).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


def _not_serializable(value: object) -> NoReturn:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


class _Settings:
    """What ``json.JSONDecoder()`` hands the C scanner (it reads these attributes)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


# NB: typeshed types the context as a scanner; the C code reads the six attributes only.
_scan = _json.make_scanner(_Settings())  # type: ignore[arg-type]


def dumps(value: object) -> str:
    """``json.dumps(value, separators=(",", ":"))``."""
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    # A fresh encoder per call: its `markers` (the circular-reference check) must start empty.
    encode = _json.make_encoder(
        {}, _not_serializable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    return "".join(encode(value, 0))


def loads(data: bytes | str) -> Any:
    """``json.loads(data)`` of UTF-8 ``data``; raises ``ValueError`` (``JSONDecodeError``
    or ``UnicodeDecodeError``) for anything else."""
    text = data if isinstance(data, str) else data.decode("utf-8", "surrogatepass")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as e:
        _fail("Expecting value", text, e.value)
    except SystemError:
        # NB: the C scanner raises json's JSONDecodeError only if json.decoder is imported
        # already (else it fails without an exception set): json itself says what is wrong.
        import json

        return json.loads(text)
    if text[end:].strip(_WHITESPACE):
        _fail("Extra data", text, end + len(text[end:]) - len(text[end:].lstrip(_WHITESPACE)))
    return value


def _fail(message: str, text: str, position: int) -> NoReturn:
    from json import JSONDecodeError

    raise JSONDecodeError(message, text, position)
