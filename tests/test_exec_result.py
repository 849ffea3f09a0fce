"""One ExecResult: the agent's (wire), the API's and the SDK's carry the same fields, and each
field the agent reports reaches both the API response and the SDK's result.

A field added to one of them and not the others fails here (issue 15, item 4).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any, cast

from hutch._wire import Channel, Frame, Kind, encode_frame, encode_json_frame
from hutch._wire.agent_ops import ExecResult as WireExecResult
from hutch.node import AgentStream
from hutch.sdk._exec import ExecStreamDecoder, OutputCollector
from hutch.sdk._models import ExecEvent
from hutch.sdk._models import ExecResult as SdkExecResult
from hutch.server._models import ExecResult as ApiExecResult
from hutch.server._relay import gather_exec

# In the agent's RESULT but not in an exec's result, each for a reason.
WIRE_ONLY = {
    "ok": "the frame's success marker, not a property of the command",
    "signal": "folded into exit_code (128 + N) for callers",
}
# The output, which the agent streams as DATA frames rather than in its RESULT.
OUTPUT = {"stdout", "stderr"}
SDK_OUTPUT = {"stdout_bytes": "stdout", "stderr_bytes": "stderr"}

# One value per field, none of them a default, so that a dropped field shows.
WIRE: dict[str, Any] = {
    "ok": True,
    "exit_code": 137,
    "duration": 2.5,
    "timed_out": True,
    "signal": 9,
    "oom_killed": True,
}
STDOUT, STDERR = "out ü\n", "err\n"


def _wire_fields() -> set[str]:
    return set(WireExecResult.__required_keys__ | WireExecResult.__optional_keys__)


def test_the_three_results_have_the_same_fields() -> None:
    wire = _wire_fields() - set(WIRE_ONLY)
    api = set(ApiExecResult.model_fields) - OUTPUT
    sdk = {f.name for f in dataclasses.fields(SdkExecResult)} - set(SDK_OUTPUT)
    assert set(WIRE_ONLY) <= _wire_fields(), "a WIRE_ONLY field is gone: drop it from the list"
    assert api == wire, "the API's ExecResult (server/_models.py) and the agent's differ"
    assert sdk == wire, "the SDK's ExecResult (sdk/_models.py) and the agent's differ"
    assert set(ApiExecResult.model_fields) >= OUTPUT
    # The exit event of a streamed exec carries the same result fields.
    exit_fields = {f.name for f in dataclasses.fields(ExecEvent)} - {"type", "data", "offset"}
    assert exit_fields == wire


def test_every_field_is_filled_in() -> None:
    assert set(WIRE) == _wire_fields(), "give the new field a non-default value in WIRE"


def _agent_frames() -> list[Frame]:
    return [
        Frame(Kind.DATA, 1, STDOUT.encode(), channel=Channel.STDOUT),
        Frame(Kind.DATA, 1, STDERR.encode(), channel=Channel.STDERR),
        Frame(Kind.RESULT, 1, json.dumps(WIRE).encode()),
    ]


def test_the_api_result_carries_every_field_the_agent_sends() -> None:
    async def frames() -> AsyncIterator[Frame]:
        for frame in _agent_frames():
            yield frame

    gathered, raw = asyncio.run(gather_exec(cast(AgentStream, frames())))
    assert raw == WIRE
    expected = {k: v for k, v in WIRE.items() if k not in WIRE_ONLY}
    assert gathered.model_dump() == {**expected, "stdout": STDOUT, "stderr": STDERR}


def test_the_sdk_result_carries_every_field_the_agent_sends() -> None:
    # What the server relays for `exec/stream` (stream id 0): the agent's frames as sent.
    body = b"".join(
        encode_json_frame(Kind.RESULT, 0, WIRE)
        if f.kind is Kind.RESULT
        else encode_frame(f.kind, 0, f.payload, channel=f.channel)
        for f in _agent_frames()
    )
    decoder, collector = ExecStreamDecoder(), OutputCollector()
    for event in decoder.feed(body):
        collector.add(event)
    decoder.close()
    result = collector.result()
    expected = {k: v for k, v in WIRE.items() if k not in WIRE_ONLY}
    got = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    assert got == {
        **expected,
        "stdout_bytes": STDOUT.encode(),
        "stderr_bytes": STDERR.encode(),
    }
