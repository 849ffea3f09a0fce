"""Old agent bundles under the home are collected, unless a sandbox still mounts one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hutch.runtime.container._agent_bundle import AgentBundle, build_joined, collect_old_bundles


def test_old_bundles_go_the_current_and_the_mounted_stay(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    for name in (
        "runtime-new",
        "code-new",
        "runtime-old",
        "code-old",
        "code-mounted",
        ".tmp-code-x-1",
    ):
        (agent / name / "lib").mkdir(parents=True)
        (agent / name / "lib" / "f.py").write_text("x")
    (agent / "notes").write_text("not a bundle")
    sandboxes = tmp_path / "sandboxes"
    (sandboxes / "sb-1").mkdir(parents=True)
    (sandboxes / "sb-1" / "config.json").write_text(
        json.dumps({"mounts": [{"source": str(agent / "code-mounted"), "destination": "/x"}]})
    )
    current = AgentBundle(runtime_dir=agent / "runtime-new", code_dir=agent / "code-new")
    removed = collect_old_bundles(agent, current, sandboxes)
    assert sorted(removed) == [".tmp-code-x-1", "code-old", "runtime-old"]
    assert sorted(p.name for p in agent.iterdir()) == [
        "code-mounted",
        "code-new",
        "notes",
        "runtime-new",
    ]
    assert collect_old_bundles(agent, current, sandboxes) == []


def test_the_joined_bundle_has_the_runtime_and_code_as_links_and_is_kept(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    for name in ("runtime-r1", "code-c1"):
        (agent / name / "lib").mkdir(parents=True)
        (agent / name / "lib" / "f.py").write_text(name)
    (agent / "runtime-r1" / "python").mkdir()
    (agent / "runtime-r1" / "python" / "libpython.so").write_text("py")
    (agent / "runtime-r1" / "lib" / "ld.so").symlink_to("f.py")
    joined = build_joined(agent, agent / "runtime-r1", agent / "code-c1")
    assert joined.name == "joined-r1-c1"
    assert sorted(p.name for p in joined.iterdir()) == ["code", "lib", "python"]
    # The same files (one copy on disk), the symlink a symlink, readable by anyone.
    assert (joined / "python/libpython.so").samefile(agent / "runtime-r1/python/libpython.so")
    assert (joined / "code/lib/f.py").read_text() == "code-c1"
    assert os.readlink(joined / "lib/ld.so") == "f.py"
    assert joined.stat().st_mode & 0o777 == 0o755
    assert build_joined(agent, agent / "runtime-r1", agent / "code-c1") == joined  # built once

    current = AgentBundle(
        runtime_dir=agent / "runtime-r1", code_dir=agent / "code-c1", joined_dir=joined
    )
    mounts = current.mounts(joined=True)
    assert [(m.source, m.destination) for m in mounts] == [(str(joined), "/.hutch")]
    assert "ro" in mounts[0].options and "nosuid" in mounts[0].options
    assert [m.destination for m in current.mounts()] == [
        "/.hutch/python",
        "/.hutch/lib",
        "/.hutch/code",
    ]
    (agent / "joined-old-c0").mkdir()
    (agent / "joined-mounted-c0").mkdir()
    sandboxes = tmp_path / "sandboxes"
    (sandboxes / "sb-1").mkdir(parents=True)
    (sandboxes / "sb-1" / "config.json").write_text(
        json.dumps({"mounts": [{"source": str(agent / "joined-mounted-c0")}]})
    )
    assert collect_old_bundles(agent, current, sandboxes) == ["joined-old-c0"]
    assert joined.is_dir() and (agent / "joined-mounted-c0").is_dir()
