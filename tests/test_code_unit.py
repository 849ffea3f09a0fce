"""The code interpreter's sans-I/O parts: the run stream decoder and the result model."""

from __future__ import annotations

import pytest

from hutch import ContextNotFound, HutchConnectionError, Result
from hutch._wire.frames import Channel, Kind, encode_frame, encode_json_frame
from hutch.sdk._code import CHART_MIME, CodeRunDecoder


def _body() -> bytes:
    return b"".join(
        [
            encode_json_frame(Kind.EVENT, 0, {"event": "context", "id": "ctx-1"}),
            encode_frame(Kind.DATA, 0, "h\u00e9".encode()[:2], Channel.STDOUT, 0),
            encode_frame(Kind.DATA, 0, "h\u00e9\n".encode()[2:], Channel.STDOUT, 2),
            encode_frame(Kind.DATA, 0, b"warn\n", Channel.STDERR, 0),
            encode_json_frame(
                Kind.EVENT,
                0,
                {"event": "result", "data": {"text/plain": "2"}, "is_main_result": True},
            ),
            encode_json_frame(
                Kind.EVENT,
                0,
                {"event": "error", "name": "E", "value": "v", "traceback": ["a", "b"]},
            ),
            encode_json_frame(Kind.RESULT, 0, {"ok": True, "status": "error", "duration": 0.5}),
        ]
    )


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_decoder_gathers_an_execution_in_any_chunking(chunk: int) -> None:
    body = _body()
    decoder = CodeRunDecoder()
    events = []
    for i in range(0, len(body), chunk):
        events += decoder.feed(body[i : i + chunk])
    decoder.close()
    assert [e.type for e in events] == ["stdout", "stdout", "stderr", "result", "error", "end"]
    ex = events[-1].execution
    assert ex is not None
    assert "".join(ex.logs.stdout) == "h\u00e9\n" and ex.logs.stderr == ["warn\n"]
    assert ex.text == "2" and ex.status == "error" and ex.context_id == "ctx-1"
    assert ex.error is not None and ex.error.traceback_text == "a\nb"


def test_error_result_raises_the_mapped_exception() -> None:
    decoder = CodeRunDecoder()
    error = {"error": {"code": "context_not_found", "message": "no such context"}}
    with pytest.raises(ContextNotFound):
        decoder.feed(encode_json_frame(Kind.RESULT, 0, error))


def test_a_stream_cut_short_is_a_connection_error() -> None:
    decoder = CodeRunDecoder()
    decoder.feed(encode_frame(Kind.DATA, 0, b"x", Channel.STDOUT, 0))
    with pytest.raises(HutchConnectionError):
        decoder.close()


def test_result_formats_and_attributes() -> None:
    chart = {"type": "bar", "elements": []}
    r = Result(data={"text/plain": "x", "image/png": "AAA", CHART_MIME: chart})
    assert r.formats() == ["text", "png", "chart"]
    assert (r.text, r.png, r.chart, r.html) == ("x", "AAA", chart, None)
