"""The create admission's settings: HUTCH_COLD_START_SLOTS and HUTCH_COLD_START_WAIT are read at
start, a bad one stops `hutch serve` with the accepted range (no traceback), and a server
started with them admits that many starts and answers create_busy after that wait."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import httpx
import pytest

from hutch.server import ServerConfig
from tests._server import ServerProcess, serve_refusal
from tests.conftest import _cleanup_home


def _config(monkeypatch: pytest.MonkeyPatch, **env: str) -> ServerConfig:
    for name in ("HUTCH_COLD_START_SLOTS", "HUTCH_COLD_START_WAIT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ServerConfig.from_env()


def test_unset_means_one_per_cpu_and_40_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(monkeypatch)
    assert config.cold_start_slots is None and config.cold_start_wait == 40.0


def test_set_values_are_read_as_a_count_and_a_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(monkeypatch, HUTCH_COLD_START_SLOTS=" 3 ", HUTCH_COLD_START_WAIT="1m30s")
    assert config.cold_start_slots == 3 and config.cold_start_wait == 90.0
    assert _config(monkeypatch, HUTCH_COLD_START_WAIT="2.5").cold_start_wait == 2.5


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("HUTCH_COLD_START_SLOTS", "0", "from 1 to 1024"),
        ("HUTCH_COLD_START_SLOTS", "-2", "from 1 to 1024"),
        ("HUTCH_COLD_START_SLOTS", "two", "from 1 to 1024"),
        ("HUTCH_COLD_START_SLOTS", "100000", "from 1 to 1024"),
        ("HUTCH_COLD_START_WAIT", "0", "more than 0"),
        ("HUTCH_COLD_START_WAIT", "2h", "at most 3600"),
        ("HUTCH_COLD_START_WAIT", "soon", "is not a duration"),
        ("HUTCH_COLD_START_WAIT", "-1", "is not a duration"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting_and_the_range(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    with pytest.raises(ValueError, match=name) as caught:
        _config(monkeypatch, **{name: value})
    assert says in str(caught.value)


def test_explicit_arguments_are_checked_too() -> None:
    with pytest.raises(ValueError, match="HUTCH_COLD_START_SLOTS"):
        ServerConfig(cold_start_slots=0)
    with pytest.raises(ValueError, match="HUTCH_COLD_START_WAIT"):
        ServerConfig(cold_start_wait=float("nan"))


def test_serve_with_a_bad_value_stops_at_once_with_the_message(tmp_path: Path) -> None:
    stderr = serve_refusal(tmp_path / "home", HUTCH_COLD_START_SLOTS="none")
    assert "HUTCH_COLD_START_SLOTS must be a whole number from 1 to 1024" in stderr, stderr


@pytest.mark.sandbox
def test_one_slot_and_a_short_wait_turn_a_burst_away_with_create_busy(busybox_image: str) -> None:
    # With the defaults (a slot per CPU, 40 s) all 16 of these starts are admitted; with one
    # slot and half a second some of them must wait past it (a start takes more than 31 ms).
    home = Path(tempfile.mkdtemp(prefix="hutch-cold-start-settings-", dir="/var/tmp"))
    srv = ServerProcess(
        home, extra_env={"HUTCH_COLD_START_SLOTS": "1", "HUTCH_COLD_START_WAIT": "0.5"}
    )
    srv.start()

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {srv.api_key}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=60) as http:
            creates = [
                http.post("/v1/sandboxes", json={"image": "busybox", "memory_mb": 64})
                for _ in range(16)
            ]
            answers = await asyncio.gather(*creates)
            for r in answers:
                if r.status_code == 201:
                    await http.delete(f"/v1/sandboxes/{r.json()['id']}")
            return answers

    try:
        answers = asyncio.run(burst())
        made = [r for r in answers if r.status_code == 201]
        busy = [r for r in answers if r.status_code == 503]
        assert len(made) + len(busy) == 16, [r.text for r in answers]
        assert made and busy
        error = busy[0].json()["error"]
        assert error["code"] == "create_busy"
        assert "waited 0.5 s for its turn" in error["message"]
        assert int(busy[0].headers["Retry-After"]) >= 1
    finally:
        srv.stop()
        _cleanup_home(srv)
