"""A node's egress grants (node/_egress_grants.py): what a replica hands the node that holds a
sandbox with egress rules. Kept sealed on the node's disk, only what the rules name, and
nothing a tampered or foreign file can plant."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from hutch.node import RULES_NAME, EgressGrants

KEY = "sk-ant-grant-" + "Zq9" * 10
RULES = json.dumps([{"host": "api.anthropic.com", "header": "x-api-key", "secret": "K"}])


def test_a_grant_survives_a_restart_sealed_and_goes_with_drop(tmp_path: Path) -> None:
    grants = EgressGrants(tmp_path)
    grants.put("sb-aaaaaaaaaaaa", {RULES_NAME: RULES, "K": KEY})
    assert grants.open_all(grants.get_secrets("sb-aaaaaaaaaaaa"))["K"] == KEY
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files, "nothing kept: a restarted node would have lost it"
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path  # sealed, as on one host
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # A restarted node (a new object on the same home) reads it back.
    again = EgressGrants(tmp_path)
    assert again.load() == ["sb-aaaaaaaaaaaa"]
    assert again.open_all(again.get_secrets("sb-aaaaaaaaaaaa"))["K"] == KEY
    again.drop("sb-aaaaaaaaaaaa")
    assert again.get_secrets("sb-aaaaaaaaaaaa") == {}
    assert EgressGrants(tmp_path).load() == []


def test_a_grant_must_hold_its_rules_and_their_secrets(tmp_path: Path) -> None:
    grants = EgressGrants(tmp_path)
    for bad in ({"K": KEY}, {RULES_NAME: RULES}, {RULES_NAME: "not json", "K": KEY},
                {RULES_NAME: json.dumps([{"host": "x"}]), "K": KEY}):  # fmt: skip
        with pytest.raises(ValueError):
            grants.put("sb-bbbbbbbbbbbb", bad)
    assert grants.get_secrets("sb-bbbbbbbbbbbb") == {}


def test_a_tampered_or_moved_grant_file_is_not_served(tmp_path: Path) -> None:
    grants = EgressGrants(tmp_path)
    grants.put("sb-cccccccccccc", {RULES_NAME: RULES, "K": KEY})
    folder = tmp_path / "egress-grants"
    # Another sandbox's grant copied under this one's name: not this one's.
    (folder / "sb-dddddddddddd").write_bytes((folder / "sb-cccccccccccc").read_bytes())
    (folder / "sb-eeeeeeeeeeee").write_bytes(b"garbage")
    again = EgressGrants(tmp_path)
    assert again.load() == ["sb-cccccccccccc"]
    assert again.get_secrets("sb-dddddddddddd") == {}
    assert not (folder / "sb-eeeeeeeeeeee").exists()
