"""The E2B layer's pure parts: shapes, tokens, signatures, charts (no sandbox)."""

from __future__ import annotations

import signal
import types
from pathlib import Path

import pytest
from connectrpc.errors import ConnectError
from e2b.sandbox.signature import get_signature
from e2b_code_interpreter.charts import BarChart, LineChart, PieChart
from e2b_code_interpreter.models import Result

import hutch.e2b
from hutch.e2b._charts import e2b_chart
from hutch.e2b._control import parse_metadata_filter
from hutch.e2b._identity import DEFAULT_USER, user_of
from hutch.e2b._interpreter import error_line, result_line
from hutch.e2b._process import end_event
from hutch.e2b._tokens import AccessTokens


def test_all_is_what_the_package_exports() -> None:
    public = {
        n
        for n, v in vars(hutch.e2b).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert hutch.e2b.__all__ == sorted(public)


def test_tokens_are_per_sandbox_and_survive_a_restart(tmp_path: Path) -> None:
    tokens = AccessTokens.open(tmp_path)
    a = tokens.token_for("sb-a")
    assert tokens.is_valid("sb-a", a)
    assert not tokens.is_valid("sb-b", a)
    assert not tokens.is_valid("sb-a", None) and not tokens.is_valid("sb-a", "")
    assert AccessTokens.open(tmp_path).token_for("sb-a") == a
    assert (tmp_path / "e2b-envd.key").stat().st_mode & 0o077 == 0


def test_signatures_match_the_sdks(tmp_path: Path) -> None:
    tokens = AccessTokens.open(tmp_path)
    token = tokens.token_for("sb-a")
    sdk = get_signature("/tmp/f", "read", None, token, 60)
    expires = sdk["expiration"]
    assert expires is not None
    assert tokens.signature("sb-a", "/tmp/f", "read", "", expires) == sdk["signature"]
    assert tokens.signature("sb-a", "/tmp/f", "write", "", expires) != sdk["signature"]
    plain = get_signature("/tmp/f", "write", "user", token)
    assert tokens.signature("sb-a", "/tmp/f", "write", "user", 0) == plain["signature"]


def test_metadata_filter_is_a_urlencoded_query() -> None:
    assert parse_metadata_filter("a=1&b=x%20y") == {"a": "1", "b": "x y"}
    assert parse_metadata_filter(None) == {}


def test_user_from_basic_auth() -> None:
    assert user_of({}) == DEFAULT_USER
    assert user_of({"authorization": "Basic cm9vdDo="}) == "root"  # "root:"
    # a header is latin-1: characters outside ASCII are a client's error, never a 500
    for bad in ("Basic \u00f0\u00e9", "Basic !!!", "Basic /w=="):
        with pytest.raises(ConnectError):
            user_of({"authorization": bad})


def test_end_event_like_envd() -> None:
    ok = end_event({"exit_code": 3, "signal": None})
    assert (ok.exit_code, ok.exited, ok.status) == (3, True, "exit status 3")
    killed = end_event({"exit_code": 137, "signal": int(signal.SIGKILL)})
    assert (killed.exit_code, killed.status, killed.error) == (
        -1,
        "signal: killed",
        "signal: killed",
    )


def test_result_lines_carry_every_mime_type() -> None:
    line = result_line(
        {
            "is_main_result": True,
            "data": {
                "text/plain": "1",
                "text/html": "<b>1</b>",
                "image/png": "iVBOR",
                "application/x-custom": {"k": 1},
            },
        }
    )
    assert line == {
        "type": "result",
        "is_main_result": True,
        "text": "1",
        "html": "<b>1</b>",
        "png": "iVBOR",
        "extra": {"application/x-custom": {"k": 1}},
    }
    err = error_line({"name": "ValueError", "value": "bad", "traceback": ["a", "b"]})
    assert err == {"type": "error", "name": "ValueError", "value": "bad", "traceback": "a\nb"}


def deserialize_chart(chart: dict[str, object]) -> object:
    """What the SDK does with a result line's ``chart``."""
    return Result(chart=chart).chart


def test_charts_parse_into_the_sdks_classes() -> None:
    base = {"title": "t", "x_label": "x", "y_label": "y", "x_scale": "linear", "y_scale": "log"}
    line = deserialize_chart(
        e2b_chart({**base, "type": "line", "elements": [{"label": "s", "x": [1, 2], "y": [3, 4]}]})
    )
    assert isinstance(line, LineChart)
    assert [tuple(p) for p in line.elements[0].points] == [(1, 3), (2, 4)]
    assert line.y_scale.value == "log"
    bar = deserialize_chart(
        e2b_chart({**base, "type": "bar", "elements": [{"label": "a", "value": 2, "group": ""}]})
    )
    assert isinstance(bar, BarChart) and bar.elements[0].value == 2
    pie = deserialize_chart(
        e2b_chart({"type": "pie", "title": "p", "elements": [{"label": "a", "fraction": 0.25}]})
    )
    assert isinstance(pie, PieChart) and pie.elements[0].angle == 90.0
    assert e2b_chart({"type": "weird"})["type"] == "unknown"
