"""The `hutch` command line against the in-process fake server of test_sdk_unit."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hutch.cli import main
from hutch.sdk import Client
from tests.test_sdk_unit import API_KEY, FakeHutch, free_port


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeHutch]:
    server = FakeHutch().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def hutch_env(fake: FakeHutch, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HUTCH_URL", fake.url)
    monkeypatch.setenv("HUTCH_API_KEY", API_KEY)
    yield
    Client.close_shared()


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> Run:
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


def test_create_ls_info_rm(cli: Any, fake: FakeHutch) -> None:
    r = cli(
        "create", "--env", "A=1", "--env", "B=x=y", "--label", "team=cli", "--cpu", "0.5",
        "--memory", "256", "--network", "internet", "--timeout", "600",
    )  # fmt: skip
    assert r.code == 0 and r.err == ""
    sandbox_id = r.out.strip()
    assert re.fullmatch(r"sb-[0-9a-f]{12}", sandbox_id)
    stored = fake.sandboxes[sandbox_id]
    assert stored["_env"] == {"A": "1", "B": "x=y"} and stored["labels"] == {"team": "cli"}
    assert (stored["cpu"], stored["memory_mb"], stored["network"]) == (0.5, 256, "internet")

    r = cli("ls")
    assert r.code == 0
    header, *rows = r.out.splitlines()
    assert header.split() == ["ID", "STATUS", "IMAGE", "NETWORK", "CREATED", "EXPIRES", "LABELS"]
    [row] = [line for line in rows if line.startswith(sandbox_id)]
    assert row.split() == [
        sandbox_id, "running", "default", "internet", "2026-11-26", "13:00:00",
        "2026-11-26", "13:10:00", "team=cli",
    ]  # fmt: skip

    other = cli("create").out.strip()
    assert cli("ls", "--label", "team=cli", "-q").out.split() == [sandbox_id]

    r = cli("info", sandbox_id)
    assert r.code == 0 and json.loads(r.out)["labels"] == {"team": "cli"}

    r = cli("rm", sandbox_id, "sb-nope", other)
    assert r.code == 1
    assert r.out.split() == [sandbox_id, other]
    assert r.err.count("\n") == 1 and r.err.startswith("hutch: error: sb-nope: ")
    assert "Traceback" not in r.err
    assert sandbox_id not in fake.sandboxes and other not in fake.sandboxes


def test_create_passes_lifetime_limits_and_secrets(
    cli: Any, fake: FakeHutch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN_FROM_SHELL", "s3cret")
    r = cli(
        "create", "--sleep-after", "10m", "--keep-alive", "--pids-limit", "64",
        "--secret", "API_KEY=abc", "--secret", "TOKEN_FROM_SHELL", "--timeout", "30",
    )  # fmt: skip
    assert r.code == 0, r.err
    body = fake.sandboxes[r.out.strip()]["_body"]
    assert (body["sleep_after"], body["keep_alive"], body["pids_limit"]) == ("10m", True, 64)
    assert body["secrets"] == {"API_KEY": "abc", "TOKEN_FROM_SHELL": "s3cret"}
    assert body["timeout"] == 30
    # A secret named but not set here is refused before anything is created.
    monkeypatch.delenv("TOKEN_FROM_SHELL")
    before = set(fake.sandboxes)
    with pytest.raises(SystemExit) as info:
        main(["create", "--secret", "TOKEN_FROM_SHELL"])
    assert "TOKEN_FROM_SHELL is not set here" in str(info.value.code)
    assert set(fake.sandboxes) == before


def test_exec_passes_user_and_warns_about_unsent_piped_stdin(
    cli: Any, fake: FakeHutch, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    sandbox_id = cli("create").out.strip()
    r = cli("exec", "--user", "user", sandbox_id, "--", "id -un")
    assert r.code == 0 and fake.exec_requests[-1]["user"] == "user"

    read_end, write_end = os.pipe()
    os.write(write_end, b"hello\n")
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(pipe))
        r = cli("exec", sandbox_id, "--", "cat")
    assert "add -i to send it" in r.err
    assert fake.exec_requests[-1].get("stdin") in (None, "")


def test_exec_streams_output_and_exits_with_the_command_code(
    cli: Any, fake: FakeHutch, tmp_path: Path
) -> None:
    sandbox_id = cli("create").out.strip()

    r = cli("exec", sandbox_id, "--", "echo out; echo err >&2; exit 3")
    assert (r.code, r.out, r.err) == (3, "out\n", "err\n")
    assert fake.exec_requests[-1]["command"] == "echo out; echo err >&2; exit 3"

    r = cli(
        "exec", sandbox_id, "--cwd", str(tmp_path), "--env", "X=1", "--", "sh", "-c", "pwd; echo $X"
    )
    assert (r.code, r.out) == (0, f"{tmp_path}\n1\n")
    assert fake.exec_requests[-1]["argv"] == ["sh", "-c", "pwd; echo $X"]

    r = cli("exec", sandbox_id, "--", "no-such-program-hutch", "arg")
    assert r.code == 127

    r = cli("exec", sandbox_id, "--timeout", "0.2", "--", "echo started; sleep 10")
    assert r.code == 124 and r.out == "started\n"
    assert "timeout of 0.2s" in r.err
    cli("rm", sandbox_id)


def test_exec_passes_binary_output_and_stdin(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert main(["create"]) == 0
    sandbox_id = capsysbinary.readouterr().out.decode().strip()
    code = main(["exec", sandbox_id, "--", "printf '\\000\\377\\n'"])
    assert code == 0 and capsysbinary.readouterr().out == b"\x00\xff\n"

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fed \xe2\x98\x83")))
    code = main(["exec", "-i", sandbox_id, "--", "cat"])
    assert code == 0 and capsysbinary.readouterr().out == "fed ☃".encode()
    main(["rm", sandbox_id])


def test_run_uses_a_throwaway_sandbox(cli: Any, fake: FakeHutch) -> None:
    before = set(fake.sandboxes)
    r = cli("run", "--", "python", "-c", "print('throwaway')")
    assert (r.code, r.out) == (0, "throwaway\n")
    r = cli("run", "--image", "default", "--", "exit 7")
    assert r.code == 7
    assert set(fake.sandboxes) == before
    r = cli("run", "--image", "nope", "--", "true")
    assert r.code == 1 and "hutch: error: no image 'nope'" in r.err


def test_connection_options_and_environment(
    cli: Any, fake: FakeHutch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUTCH_URL")
    monkeypatch.delenv("HUTCH_API_KEY")
    assert cli("--url", fake.url, "--api-key", API_KEY, "ls", "-q").code == 0
    assert cli("ls", "--url", fake.url, "--api-key", API_KEY).code == 0  # after the command too

    r = cli("--url", fake.url, "ls")
    assert r.code == 1 and r.err.startswith("hutch: error: ") and "unauthorized" in r.err

    r = cli("--url", f"http://127.0.0.1:{free_port()}", "ls")
    assert r.code == 1 and r.err.count("\n") == 1
    assert "HUTCH_URL" in r.err and "hutch serve" in r.err and "Traceback" not in r.err

    r = cli("--url", "not a url", "ls")
    assert r.code == 1 and "HUTCH_URL" in r.err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert "KEY=VALUE" in _usage_error(capsys, "create", "--env", "NOEQUALS")
    assert "required" in _usage_error(capsys)
    assert "required" in _usage_error(capsys, "exec", "sb-1")
    assert "invalid choice" in _usage_error(capsys, "create", "--network", "wifi")
    assert "required" in _usage_error(capsys, "keys")


def test_keys_and_images(cli: Any, fake: FakeHutch) -> None:
    r = cli("keys", "create", "ci")
    assert r.code == 0 and r.out.startswith("hk_")
    assert "shown only this once" in r.err
    [key_id] = [k for k, v in fake.keys.items() if v["name"] == "ci"]
    r = cli("keys", "ls")
    assert r.out.splitlines()[0].split() == [
        "ID",
        "NAME",
        "TEAM",
        "ROLE",
        "PREFIX",
        "CREATED",
        "EXPIRES",
    ]
    assert key_id in r.out and r.out.strip().split("\n")[1].split()[1] == "ci"
    assert cli("keys", "rm", key_id).code == 0 and key_id not in fake.keys
    r = cli("keys", "rm", key_id)
    assert r.code == 1 and "no such key" in r.err

    r = cli("image", "ls")
    assert r.code == 0
    header, row = r.out.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "CREATED"]
    assert row.split()[:4] == ["default", "abababababab", "700.0", "MiB"]


def test_serve_builds_the_server_config(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import hutch.server as server

    seen: list[Any] = []
    monkeypatch.setattr(server, "run", seen.append)
    monkeypatch.setenv("HUTCH_PORT", "7999")
    r = cli("serve", "--host", "0.0.0.0", "--home", str(tmp_path), "--api-key", "hk_x")
    assert r.code == 0
    [config] = seen
    assert (config.host, config.port, config.home, config.api_key) == (
        "0.0.0.0",
        7999,
        tmp_path,
        "hk_x",
    )
    monkeypatch.setenv("HUTCH_HOME", str(tmp_path / "env-home"))
    cli("serve", "--port", "8000")
    assert (seen[1].port, seen[1].home) == (8000, tmp_path / "env-home")


def test_image_build_needs_root(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    r = cli("image", "build")
    assert r.code == 1 and "needs root" in r.err and "sudo hutch image build" in r.err


def test_image_build_calls_the_runtime(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import hutch.runtime as runtime

    calls: list[dict[str, Any]] = []

    @dataclass
    class FakeImage:
        name: str = "default"
        id: str = "f" * 64
        size_bytes: int = 3 * 2**20

    def ensure(store: Any, recipe: Path, **kwargs: Any) -> FakeImage:
        calls.append({"store": store, "recipe": recipe, **kwargs})
        return FakeImage()

    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(runtime, "ensure_default_image", ensure)
    monkeypatch.setattr(runtime, "ImageStore", lambda root: ("store", root))
    monkeypatch.delenv("HUTCH_IMAGES_DIR", raising=False)
    r = cli("image", "build", "default", "--force", "--home", str(tmp_path))
    assert r.code == 0 and r.out == "default ffffffffffff 3.0 MiB\n"
    [call] = calls
    assert call["store"] == ("store", tmp_path / "images")
    assert call["cache_dir"] == tmp_path / "cache" and call["force"] is True
