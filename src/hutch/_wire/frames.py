"""Binary frames: one format for agent <-> server and for streamed HTTP responses to the SDK.

A frame is an 18-byte header followed by ``length`` payload bytes::

    kind u8 | channel u8 | stream u32 | offset u64 | length u32 | payload

- ``stream`` multiplexes many requests over one connection; the opener picks the id.
- ``channel`` and ``offset`` only mean something for DATA/EOF frames: which byte stream
  (stdin/stdout/stderr) and where in it the payload starts, so a reader that reconnects can
  say exactly what it has seen. Output bytes are never base64'd or wrapped in JSON.
- OPEN, EVENT and RESULT payloads are UTF-8 JSON objects. RESULT ends a stream.

The decoder is sans-I/O (feed bytes, get frames) and refuses payloads over ``MAX_PAYLOAD``
so that a hostile peer (the agent runs inside the sandbox) cannot make the server buffer
without bound.
"""

from __future__ import annotations

# NB: struct.py only re-exports its C module; the agent imports this before its first answer.
from _struct import Struct

from hutch._wire.json_c import dumps, loads

# NB: not `from typing import ...`: typing costs the agent's start-up ~4 ms and ~1 MB, and the
# agent imports this module before it can answer anyone.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any, ClassVar, Self, TypeVar

    Payload = TypeVar("Payload", bytes, memoryview)
    N = TypeVar("N", bound="_Named")

FRAME_HEADER = Struct(">BBIQI")
MAX_PAYLOAD = 4 * 1024 * 1024


class _NamedType(type):
    # NB: typeshed's EnumMeta.__iter__ has this signature; mypy accepts it in stubs only.
    def __iter__(cls: type[N]) -> Iterator[N]:  # type: ignore[misc]
        return iter(cls._members.values())


class _Named(int, metaclass=_NamedType):
    """An int with a name: what the frames' kinds and channels used of ``enum.IntEnum``
    (``Kind(1) is Kind.OPEN``, ``.name``, ``.value``, ``for kind in Kind``, ValueError for an
    unknown value), without ``enum``.

    NB: the agent imports this module before it can answer the server's first ping (a cold
    create waits for that answer): ``import enum`` and making two IntEnum classes were ~5 ms
    of its start. They compare, hash, pack and print (``str``, f-strings) as their int, as
    IntEnum members do.
    """

    __slots__ = ()
    _members: ClassVar[dict[int, Any]]
    _names: ClassVar[dict[int, str]]

    def __new__(cls, value: int) -> Self:
        member: Self | None = cls._members.get(value)
        if member is None:
            raise ValueError(f"{value!r} is not a valid {cls.__name__}")
        return member

    @property
    def name(self) -> str:
        return self._names[self]

    @property
    def value(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {int(self)}>"

    __str__ = int.__repr__


def _name_members(cls: type[_Named], **values: int) -> None:
    cls._members = {}
    cls._names = {}
    for name, value in values.items():
        member = int.__new__(cls, value)
        setattr(cls, name, member)
        cls._members[value] = member
        cls._names[value] = name


class Kind(_Named):
    __slots__ = ()
    OPEN: ClassVar[Kind]  # opener -> peer: JSON request {"op": ..., ...}; starts a stream
    DATA: ClassVar[Kind]  # bytes on a channel, at an offset
    EOF: ClassVar[Kind]  # a channel is closed (stdin from the server; stdout/stderr from the agent)
    # JSON final answer: {"ok": ...} or {"error": {"code", "message"}}; ends the stream
    RESULT: ClassVar[Kind]
    CANCEL: ClassVar[Kind]  # opener -> peer: stop this stream (kills an exec's process tree)
    EVENT: ClassVar[Kind]  # JSON mid-stream event, e.g. {"event": "started", "pid": 12}


_name_members(Kind, OPEN=1, DATA=2, EOF=3, RESULT=4, CANCEL=5, EVENT=6)
_KINDS: dict[int, Kind] = Kind._members  # the decoders' check, without a call of Kind


class Channel(_Named):
    __slots__ = ()
    STDIN: ClassVar[Channel]
    STDOUT: ClassVar[Channel]
    STDERR: ClassVar[Channel]


_name_members(Channel, STDIN=0, STDOUT=1, STDERR=2)


class FrameError(ValueError):
    """The peer sent bytes that are not a valid frame."""


class Frame:
    """One decoded frame (immutable by convention; a plain slots class keeps imports small)."""

    __slots__ = ("channel", "kind", "offset", "payload", "stream")

    def __init__(
        self, kind: Kind, stream: int, payload: bytes = b"", channel: int = 0, offset: int = 0
    ) -> None:
        self.kind = kind
        self.stream = stream
        self.payload = payload
        self.channel = channel
        self.offset = offset

    def __repr__(self) -> str:
        return (
            f"Frame({self.kind.name}, stream={self.stream}, channel={self.channel}, "
            f"offset={self.offset}, {len(self.payload)} bytes)"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.kind, self.stream, self.payload, self.channel, self.offset) == (
            other.kind,
            other.stream,
            other.payload,
            other.channel,
            other.offset,
        )

    __hash__ = None  # type: ignore[assignment]

    def json(self) -> dict[str, Any]:
        value = loads(self.payload)
        if not isinstance(value, dict):
            raise FrameError(f"{self.kind.name} payload must be a JSON object")
        return value


def encode_frame(
    kind: Kind, stream: int, payload: bytes | memoryview = b"", channel: int = 0, offset: int = 0
) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return FRAME_HEADER.pack(kind, channel, stream, offset, len(payload)) + payload


# Payloads at least this big are handed on apart from their header: joining them would copy.
SEPARATE_PAYLOAD = 64 * 1024


def encode_frame_parts(
    kind: Kind, stream: int, payload: Payload, channel: int = 0, offset: int = 0
) -> tuple[bytes | Payload, ...]:
    """As ``encode_frame``, for a writer that takes several buffers (an HTTP body): a large
    payload is returned as its own part instead of being copied behind the header."""
    if len(payload) < SEPARATE_PAYLOAD:
        return (encode_frame(kind, stream, payload, channel, offset),)
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return FRAME_HEADER.pack(kind, channel, stream, offset, len(payload)), payload


def encode_json_frame(kind: Kind, stream: int, value: Mapping[str, object]) -> bytes:
    return encode_frame(kind, stream, dumps(value).encode())


def parse_header(header: bytes) -> tuple[Kind, int, int, int, int]:
    """``(kind, channel, stream, offset, length)`` of a frame's header, for a reader that takes
    each payload whole off its stream (no copy through a decoder's buffer).

    Raises:
        FrameError: an unknown kind, or a payload over ``MAX_PAYLOAD``.
    """
    kind, channel, stream, offset, length = FRAME_HEADER.unpack(header)
    return _checked_kind(kind, length), channel, stream, offset, length


def _checked_kind(kind: int, length: int) -> Kind:
    """The header's kind, once its payload length is within bounds (both checks of every
    reader: ``parse_header`` and ``FrameDecoder``)."""
    if length > MAX_PAYLOAD:
        raise FrameError(f"frame payload of {length} bytes exceeds {MAX_PAYLOAD}")
    member: Kind | None = _KINDS.get(kind)
    if member is None:
        raise FrameError(f"unknown frame kind {kind}")
    return member


class FrameDecoder:
    """Incremental decoder: ``feed()`` bytes as they arrive, get whole frames back."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        # NB: output runs at hundreds of MB/s through here (agent -> server -> SDK), so each
        # payload byte is copied once: straight out of ``data`` when no partial frame is
        # pending, else out of the buffer through a memoryview (a bytearray slice would copy
        # twice).
        buf = self._buf
        if buf:
            buf += data
            with memoryview(buf) as view:
                frames, pos = self._parse(view)
            if pos:
                del buf[:pos]
            return frames
        frames, pos = self._parse(data)
        if pos < len(data):
            buf += memoryview(data)[pos:]
        return frames

    @staticmethod
    def _parse(data: bytes | memoryview) -> tuple[list[Frame], int]:
        frames: list[Frame] = []
        pos = 0
        size = FRAME_HEADER.size
        total = len(data)
        unpack = FRAME_HEADER.unpack_from
        while total - pos >= size:
            kind, channel, stream, offset, length = unpack(data, pos)
            k = _checked_kind(kind, length)
            if total - pos - size < length:
                break
            start = pos + size
            frames.append(Frame(k, stream, bytes(data[start : start + length]), channel, offset))
            pos = start + length
        return frames, pos

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf)
