"""Old agent bundles under the home are collected, unless a sandbox still mounts one."""

from __future__ import annotations

import json
from pathlib import Path

from hutch.runtime.container._agent_bundle import AgentBundle, collect_old_bundles


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
