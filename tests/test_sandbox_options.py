"""Sandbox options: one list (hutch._wire.sandbox_options) behind the SDK, the CLI and the API."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pydantic
import pytest

from hutch import AsyncSandbox
from hutch._wire.sandbox_options import (
    DEFAULTS,
    HELP,
    LIMITS,
    OPTION_NAMES,
    SandboxOptions,
)
from hutch.cli import build_parser
from hutch.node._pools import POOL_LIMITS
from hutch.sdk._requests import sandbox_create_body
from hutch.server._models import SandboxCreate

ROOT = Path(__file__).resolve().parent.parent


def test_the_api_model_has_exactly_the_options() -> None:
    assert set(SandboxCreate.model_fields) == {"id", "image"} | OPTION_NAMES
    assert set(HELP) == {"image"} | OPTION_NAMES


def test_the_api_model_defaults_are_the_listed_ones() -> None:
    created = SandboxCreate()
    for name in vars(DEFAULTS):
        assert getattr(created, name) == getattr(DEFAULTS, name), name
    for name in OPTION_NAMES - set(vars(DEFAULTS)):
        assert not getattr(created, name), f"{name} defaults to empty"


@pytest.mark.parametrize("option", sorted(LIMITS))
def test_the_api_model_enforces_the_listed_limits(option: str) -> None:
    limits = LIMITS[option]
    number = float if option == "cpu" else int
    SandboxCreate.model_validate({option: number(limits.le)})
    with pytest.raises(pydantic.ValidationError):
        SandboxCreate.model_validate({option: number(limits.le * 2)})
    low = limits.gt if limits.gt is not None else limits.ge
    assert low is not None
    below = low if limits.gt is not None else low - 1
    with pytest.raises(pydantic.ValidationError):
        SandboxCreate.model_validate({option: number(below)})


def test_every_option_is_documented_for_sdk_users() -> None:
    doc = SandboxOptions.__doc__ or ""
    for name in OPTION_NAMES:
        assert re.search(rf"^\s+{name}: \S", doc, re.MULTILINE), name


def test_the_sdk_sends_what_was_given_and_refuses_unknown_options() -> None:
    body = sandbox_create_body(
        "img", {"cpu": 2.0, "labels": {"a": "b"}, "network_allow": ("10.0.0.0/8",)}, function="f"
    )
    assert body == {
        "id": None,
        "image": "img",
        "cpu": 2.0,
        "labels": {"a": "b"},
        "network_allow": ["10.0.0.0/8"],
    }
    # What the server then makes of it: the listed defaults for the rest.
    assert SandboxCreate.model_validate(body).memory_mb == DEFAULTS.memory_mb
    with pytest.raises(TypeError, match="unexpected keyword argument 'memroy_mb'"):
        # Refused before any request: nothing listens on this port.
        asyncio.run(AsyncSandbox.create(memroy_mb=1, base_url="http://127.0.0.1:9"))  # type: ignore[call-arg]


def test_the_cli_defaults_are_the_listed_ones() -> None:
    args = build_parser().parse_args(["create"])
    assert (args.image, args.cpu, args.memory, args.disk) == (
        DEFAULTS.image,
        DEFAULTS.cpu,
        DEFAULTS.memory_mb,
        DEFAULTS.disk_mb,
    )
    assert (args.network, args.runtime) == (DEFAULTS.network, DEFAULTS.runtime)


def test_pooled_sandboxes_have_the_default_limits() -> None:
    assert (POOL_LIMITS.cpu, POOL_LIMITS.memory_mb, POOL_LIMITS.disk_mb, POOL_LIMITS.pids) == (
        DEFAULTS.cpu,
        DEFAULTS.memory_mb,
        DEFAULTS.disk_mb,
        DEFAULTS.pids_limit,
    )


def test_docs_api_md_shows_every_option_with_its_default() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    match = re.search(r"`SandboxCreate` body.*?```json\n(.*?)```", text, re.DOTALL)
    assert match
    documented = json.loads(match.group(1))
    assert documented == SandboxCreate().model_dump(mode="json")
