"""The binary frame format: what the agent, the server and the SDK all speak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hutch._wire import (
    FRAME_HEADER,
    MAX_PAYLOAD,
    Channel,
    Frame,
    FrameDecoder,
    FrameError,
    Kind,
    encode_frame,
    encode_json_frame,
    json_c,
)
from hutch.agent._host import build_code_dir


def test_round_trip_keeps_every_field() -> None:
    data = encode_frame(Kind.DATA, 2**32 - 1, b"\x00\xffhello", Channel.STDERR, 2**63)
    assert len(data) == FRAME_HEADER.size + 7
    assert FrameDecoder().feed(data) == [Frame(Kind.DATA, 2**32 - 1, b"\x00\xffhello", 2, 2**63)]


def test_json_frames_round_trip() -> None:
    data = encode_json_frame(Kind.OPEN, 7, {"op": "exec", "argv": ["echo", "é"]})
    [frame] = FrameDecoder().feed(data)
    assert frame.kind is Kind.OPEN
    assert frame.json() == {"op": "exec", "argv": ["echo", "é"]}


def test_json_payload_must_be_an_object() -> None:
    [frame] = FrameDecoder().feed(encode_frame(Kind.RESULT, 1, b"[1, 2]"))
    with pytest.raises(FrameError):
        frame.json()
    [frame] = FrameDecoder().feed(encode_frame(Kind.RESULT, 1, b"{not json"))
    with pytest.raises(ValueError):
        frame.json()


def test_every_kind_round_trips() -> None:
    data = b"".join(encode_frame(kind, kind.value, bytes([kind.value])) for kind in Kind)
    frames = FrameDecoder().feed(data)
    assert [(f.kind, f.stream, f.payload) for f in frames] == [
        (kind, kind.value, bytes([kind.value])) for kind in Kind
    ]


def test_byte_at_a_time_feed_gives_the_same_frames() -> None:
    frames = [
        encode_frame(Kind.DATA, 1, b"abc", Channel.STDOUT, 0),
        encode_frame(Kind.EOF, 1, b"", Channel.STDOUT, 3),
        encode_json_frame(Kind.RESULT, 1, {"ok": True}),
    ]
    decoder = FrameDecoder()
    got: list[Frame] = []
    for byte in b"".join(frames):
        got += decoder.feed(bytes([byte]))
    assert got == FrameDecoder().feed(b"".join(frames))
    assert len(got) == 3
    assert decoder.pending == 0


def test_partial_frame_is_held_until_complete() -> None:
    data = encode_frame(Kind.DATA, 3, b"x" * 1000, Channel.STDOUT, 5)
    decoder = FrameDecoder()
    assert decoder.feed(data[:10]) == []  # not even a header
    assert decoder.feed(data[10:500]) == []  # header, half the payload
    assert decoder.pending == 500
    [frame] = decoder.feed(data[500:] + data[:5])  # the rest, and the start of the next one
    assert frame.payload == b"x" * 1000
    assert decoder.pending == 5


def test_empty_payload() -> None:
    assert FrameDecoder().feed(encode_frame(Kind.CANCEL, 9)) == [Frame(Kind.CANCEL, 9)]


def test_largest_payload_is_accepted() -> None:
    [frame] = FrameDecoder().feed(encode_frame(Kind.DATA, 1, b"z" * MAX_PAYLOAD))
    assert len(frame.payload) == MAX_PAYLOAD


def test_oversize_payload_is_refused_on_encode() -> None:
    with pytest.raises(FrameError):
        encode_frame(Kind.DATA, 1, b"z" * (MAX_PAYLOAD + 1))


def test_oversize_length_is_refused_from_the_header_alone() -> None:
    # A hostile peer announcing 4 GiB must be refused before anything is buffered.
    header = FRAME_HEADER.pack(Kind.DATA, 1, 1, 0, 2**32 - 1)
    with pytest.raises(FrameError, match="exceeds"):
        FrameDecoder().feed(header)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(FrameError, match="unknown frame kind 99"):
        FrameDecoder().feed(FRAME_HEADER.pack(99, 0, 1, 0, 0))


def test_frames_before_a_bad_one_are_not_lost_silently() -> None:
    # The decoder raises on the batch; the caller then drops the connection. What matters is
    # that it raises rather than skipping ahead and misreading the rest of the stream.
    good = encode_frame(Kind.DATA, 1, b"ok", Channel.STDOUT, 0)
    with pytest.raises(FrameError):
        FrameDecoder().feed(good + FRAME_HEADER.pack(0, 0, 1, 0, 0))


JSON_VALUES = [
    {},
    {"op": "exec", "argv": ["echo", 'é ☃ \U0001f600 \x00 " \\'], "env": None, "timeout": 1.5},
    {"n": [0, -1, 2**70, 1e-300, -0.0, float("inf"), True, False, None], "o": {"k\n": [[]]}},
    {1: "int key", None: "null key", 2.5: "float key"},
    "a string",
]


@pytest.mark.parametrize("value", JSON_VALUES)
def test_frame_json_is_the_json_modules_text(value: object) -> None:
    # The frames' codec drives json's C code without importing json (the agent's start-up):
    # the same bytes out, the same values back.
    text = json.dumps(value, separators=(",", ":"))
    assert json_c.dumps(value) == text
    for data in (text, text.encode(), f" \n{text}\t ".encode()):
        assert repr(json_c.loads(data)) == repr(json.loads(data))


@pytest.mark.parametrize(
    "data", [b"", b" ", b"{", b"[1,]", b"{} x", b'{"a":1}{}', b"\xff", b"nul", b'{"a":"\x01"}']
)
def test_frame_json_refuses_what_json_refuses_with_the_same_error(data: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(data)
    with pytest.raises(ValueError) as got:
        json_c.loads(data)
    assert (type(got.value), str(got.value)) == (type(expected.value), str(expected.value))


def test_frame_json_refuses_what_json_cannot_encode() -> None:
    circular: dict[str, object] = {}
    circular["self"] = circular
    for value in ({"x": object()}, {(1, 2): 3}, circular):
        with pytest.raises((TypeError, ValueError)) as expected:
            json.dumps(value)
        with pytest.raises((TypeError, ValueError)) as got:
            json_c.dumps(value)
        assert (type(got.value), str(got.value)) == (type(expected.value), str(expected.value))


def test_the_agent_starts_without_json_re_typing_or_enum(tmp_path: Path) -> None:
    # What the agent imports before it answers the server's first ping (a cold create waits
    # for that answer): json brings re and its compiled patterns; typing is big; enum (which
    # `signal` imports) and building enum classes took ~5 ms; collections ~1 ms; heapq and
    # struct wrap C modules the agent takes directly (~0.2 ms).
    code = build_code_dir(tmp_path)
    probe = (
        f"import sys; sys.path.insert(0, {str(code)!r}); import hutch.agent.__main__; "
        "print(sorted({'json', 're', 'typing', 'subprocess', 'threading', 'enum', 'signal',"
        " 'collections', 'selectors', 'heapq', 'struct'} & set(sys.modules)))\n"
        # Bad JSON is still a JSONDecodeError there (json is imported to say what is wrong).
        "from hutch._wire.json_c import loads\n"
        "try:\n    loads(b'{not json')\nexcept ValueError as e:\n    print(type(e).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[:2] == ["[]", "JSONDecodeError"]


def test_kinds_and_channels_are_their_numbers_with_names() -> None:
    # Not enum.IntEnum (see frames._Named), but used as one: the decoder's kinds are the same
    # objects as the names, unknown numbers are refused, and they print as their numbers.
    assert [(k.name, k.value) for k in Kind] == [
        ("OPEN", 1),
        ("DATA", 2),
        ("EOF", 3),
        ("RESULT", 4),
        ("CANCEL", 5),
        ("EVENT", 6),
    ]
    assert [c.name for c in Channel] == ["STDIN", "STDOUT", "STDERR"]
    [frame] = FrameDecoder().feed(encode_json_frame(Kind.RESULT, 1, {"ok": True}))
    assert frame.kind is Kind.RESULT is Kind(4)
    assert Channel(2) is Channel.STDERR
    with pytest.raises(ValueError):
        Kind(7)
    with pytest.raises(ValueError):
        Channel(3)
    assert (str(Kind.DATA), f"{Channel.STDOUT}", repr(Kind.EOF)) == ("2", "1", "<Kind.EOF: 3>")
    assert {Channel.STDOUT: "out"}[1] == "out"
