"""`memory.oom_control`'s kill counter, as the agent and the death watch read it."""

from __future__ import annotations

from pathlib import Path

from hutch._wire.oom_control import parse_oom_kills, read_oom_kills


def test_the_kill_counter_is_read_and_nothing_else() -> None:
    text = b"oom_kill_disable 0\nunder_oom 1\noom_kill 7\n"
    assert parse_oom_kills(text) == 7  # not oom_kill_disable's 0
    assert parse_oom_kills(b"oom_kill_disable 0\nunder_oom 0\n") is None  # an old kernel
    assert parse_oom_kills(b"oom_kill x\n") is None
    assert parse_oom_kills(b"oom_kill\n") is None


def test_a_file_is_read_and_a_missing_one_is_none(tmp_path: Path) -> None:
    path = tmp_path / "memory.oom_control"
    path.write_bytes(b"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert read_oom_kills(str(path)) == 3
    assert read_oom_kills(str(tmp_path / "gone")) is None
    real = Path("/sys/fs/cgroup/memory/memory.oom_control")
    if real.exists():  # the host's own (cgroup v1): a number, as the kernel writes it
        assert isinstance(read_oom_kills(str(real)), int)
