"""Every ```python block in the README and docs/ runs against a real server, so the docs
cannot rot. A block that is not meant to run (it needs a key, the internet, or shows a
fragment) is fenced as ```python no-run. The blocks of one page run in order, as one program,
as a reader pasting them would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line of the fence, code, runs) of every python block; ``no-run`` blocks do not run."""
    blocks = []
    for match in FENCE.finditer(text):
        words = match.group(1).split()
        if words[:1] != ["python"]:
            continue
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((line, match.group(2), "no-run" not in words[1:]))
    return blocks


def page_program(page: Path) -> str | None:
    """The page's runnable blocks as one script, each headed by where it came from."""
    parts = [
        f"# --- {page.relative_to(ROOT)}, block at line {line}\n{code}"
        for line, code, runs in python_blocks(page.read_text())
        if runs
    ]
    return "\n".join(parts) if parts else None


def test_every_python_block_compiles_and_marks_are_known() -> None:
    seen = 0
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            words = match.group(1).split()
            if words[:1] == ["python"]:
                assert set(words[1:]) <= {"no-run"}, (page.name, words)
            elif words[:1] in (["py"], ["python3"]):
                pytest.fail(f"{page.name}: fence a python block as ```python, not {words[0]}")
        for line, code, _ in python_blocks(text):
            compile(code, f"{page.name}:{line}", "exec")  # a no-run block must still parse
            seen += 1
    assert seen >= 10


def test_the_getting_started_pages_have_runnable_blocks() -> None:
    for name in ("getting-started.md", "recipes.md", "troubleshooting.md", "e2b-names.md"):
        assert page_program(ROOT / "docs" / name) is not None, name


@pytest.mark.sandbox
@pytest.mark.parametrize(
    "page", [p for p in PAGES if page_program(p) is not None], ids=lambda p: p.name
)
def test_the_page_runs(page: Path, server: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / f"{page.stem}.py"
    script.write_text(page_program(page) or "")
    env = dict(os.environ, HUTCH_URL=server.url, HUTCH_API_KEY=server.api_key)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, f"{page.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
