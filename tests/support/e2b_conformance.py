"""E2B's own test suites, unmodified, against a fresh Hutch server (run by scripts/e2b-conformance).

Each suite is taken from a fixed upstream commit with ``git archive`` (from the `fetch` tool's
mirror under /work/.mirror, or any clone given with --e2b-git / --ci-git) into a work directory,
never into this repository. The tests reach Hutch only: the server is on 127.0.0.1, and the
offline_guard plugin refuses any socket the Python tests open to an address off this machine.
The report counts passed / failed / skipped / deselected and sorts the failures by the known
causes in e2b_conformance_known; a failure matched by none is listed as NEW.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from tests._server import ServerProcess
from tests.support.e2b_conformance_known import CAUSES, DESELECT, cause_of

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
MIRRORS = Path("/work/.mirror")
# The newest commits the mirrors hold (2026-08-21). Neither repository has a commit with the
# versions pinned in pyproject.toml (e2b 2.63.0, e2b-code-interpreter 2.11.5): the nearest are
# these, python-sdk 2.45.1 / js-sdk 2.45.0, and code-interpreter python 2.9.1.
E2B_COMMIT = "b8029973aa7da5f741f7bb1a9f833b38a0885438"
CI_COMMIT = "7df1757bfd5baa037f909ce97c2dbe014da973c0"
# The JS SDK's test dependencies, from its package.json at E2B_COMMIT (the rest of its dev
# dependencies are build, lint and browser tooling the node tests do not load).
JS_DEPS = [
    "@bufbuild/protobuf@^2.12.1",
    "@connectrpc/connect@^2.1.2",
    "@connectrpc/connect-web@^2.1.2",
    "chalk@^5.3.0",
    "compare-versions@^6.1.0",
    "dockerfile-ast@^0.7.1",
    "glob@^13.0.6",
    "openapi-fetch@^0.14.1",
    "platform@^1.3.6",
    "tar@^7.5.19",
    "undici@^7.29.0",
    "vitest@^4.1.10",
    "msw@^2.12.10",
    "dotenv@^16.4.5",
    "error-stack-parser-es@^2.0.1",
]
PY_TEST_DEPS = [
    "pytest>=9.0.3,<10",
    "pytest-asyncio>=1.3.0,<2",
    "pytest-timeout>=2.4.0,<3",
    "python-dotenv>=1.0.0,<2",
]


@dataclass
class Outcome:
    suite: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deselected: int = 0
    seconds: float = 0.0
    load: str = ""


def git_dir(given: str | None, name: str) -> Path:
    path = Path(given) if given else MIRRORS / f"e2b-dev+{name}" / "repo"
    if not (path / "HEAD").exists() and not (path / ".git").exists():
        sys.exit(f"no git directory at {path}: fetch github:e2b-dev/{name}, or pass its clone")
    return path


def extract(repo: Path, commit: str, paths: list[str], dest: Path) -> None:
    """The files of `paths` at `commit` under `dest`, fresh each run (no upstream file is
    ever written into this repository)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", f"--git-dir={repo / '.git' if (repo / '.git').exists() else repo}", "archive"]
        + [commit, *paths],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def venv_with(work: Path, name: str, packages: list[str]) -> Path:
    """A venv of its own (uv, this machine's Python): the project's .venv keeps its pins."""
    venv = work / name
    uv = REPO / ".venv" / "bin" / "uv"
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", VIRTUAL_ENV=str(venv))
    if not (venv / "bin" / "python").exists():
        subprocess.run(
            [str(uv), "venv", "-q", "--python", str(REPO / ".venv" / "bin" / "python"), str(venv)],
            check=True,
            env=env,
        )
    subprocess.run([str(uv), "pip", "install", "-q", *packages], check=True, env=env)
    return venv


def parse_junit(path: Path, suite: str) -> Outcome:
    out = Outcome(suite)
    if not path.exists():
        return out
    for case in ET.parse(path).iter("testcase"):
        where = case.get("file") or case.get("classname", "")
        if not where.endswith((".py", ".ts")):  # pytest's junit names a module, dotted
            where = where.replace(".", "/") + ".py"
        name = f"{where}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out.failed.append(name)
        elif case.find("skipped") is not None:
            out.skipped.append(name)
        else:
            out.passed.append(name)
    return out


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_pytest(
    suite: str, python: Path, cwd: Path, targets: list[str], extra: list[str], env: dict[str, str]
) -> Outcome:
    xml = cwd / f"junit-{suite}.xml"
    # `pytest` as a program, not `python -m pytest`: the suite's directory stays off sys.path, so
    # `import e2b` is the installed SDK, never a source tree next to the tests.
    args = [str(python.parent / "pytest"), "-p", "offline_guard", "-p", "no:cacheprovider"]
    # A module that does not import (tests of another SDK release's internals) is one error;
    # the rest still run.
    args += ["-q", "-rfE", "--continue-on-collection-errors", f"--junitxml={xml}"]
    args += ["-o", "junit_family=xunit1"]  # its testcases name their file
    args += [*extra, *targets]
    for pattern, _ in DESELECT[suite]:
        args += ["--deselect", pattern]  # a prefix of test ids: a file or a whole directory
    env = dict(env, PYTHONPATH=str(SUPPORT))
    started, load = time.monotonic(), loadavg()
    run = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    (cwd / f"pytest-{suite}.log").write_text(run.stdout + run.stderr)
    out = parse_junit(xml, suite)
    out.seconds, out.load = time.monotonic() - started, f"{load} -> {loadavg()}"
    # Deselected tests appear only in pytest's last line.
    if m := re.search(r"(\d+) deselected", run.stdout.splitlines()[-1] if run.stdout else ""):
        out.deselected = int(m.group(1))
    if not out.passed and not out.failed:
        print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
    return out


def python_suite(args: argparse.Namespace, work: Path, env: dict[str, str]) -> Outcome:
    repo = git_dir(args.e2b_git, "E2B")
    src = work / "E2B"
    extract(repo, E2B_COMMIT, ["packages/python-sdk"], src)
    sdk = src / "packages" / "python-sdk"
    if args.sdk == "commit":
        # The SDK of the suite's own commit, so tests that check the SDK's internals match it.
        venv = venv_with(work, "venv-e2b", [str(sdk), *PY_TEST_DEPS])
    else:
        venv = REPO / ".venv"  # the pinned PyPI release (pyproject.toml)
    shutil.rmtree(sdk / "e2b")  # the tests import the installed SDK only
    return run_pytest("python", venv / "bin" / "python", sdk, ["tests"], ["--timeout", "120"], env)


def ci_suite(args: argparse.Namespace, work: Path, env: dict[str, str]) -> Outcome:
    repo = git_dir(args.ci_git, "code-interpreter")
    src = work / "code-interpreter"
    extract(repo, CI_COMMIT, ["python"], src)
    shutil.rmtree(src / "python" / "e2b_code_interpreter")
    # Its pytest.ini asks for xdist with 2 workers: run serially on this shared machine.
    extra = ["-o", "addopts=--import-mode=importlib", "--timeout", "300"]
    return run_pytest(
        "ci", REPO / ".venv" / "bin" / "python", src / "python", ["tests"], extra, env
    )


VITEST_CONFIG = """\
// Written by Hutch's scripts/e2b-conformance: the SDK's node tests only, one file at a time.
import { defineConfig } from 'vitest/config'
export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    exclude: %s,
    isolate: true,
    fileParallelism: false,
    pool: 'forks', // child processes: NODE_OPTIONS (the offline guard) reaches them
    testTimeout: 60_000,
    hookTimeout: 60_000,
    environment: 'node',
    setupFiles: ['tests/globalFetchFallback.setup.ts'],
    deps: { interopDefault: true },
    env: { ...(process.env as Record<string, string>) },
  },
})
"""


def js_suite(args: argparse.Namespace, work: Path, env: dict[str, str]) -> Outcome:
    repo = git_dir(args.e2b_git, "E2B")
    src = work / "E2B-js"
    extract(repo, E2B_COMMIT, ["packages/js-sdk"], src)
    sdk = src / "packages" / "js-sdk"
    # The test dependencies live in a node_modules above the SDK (node looks upward), installed
    # from the registry into the work directory, which keeps them between runs.
    deps = work / "js-deps"
    deps.mkdir(exist_ok=True)
    (deps / "package.json").write_text('{"name": "hutch-e2b-conformance", "private": true}\n')
    if not (deps / "node_modules" / "vitest").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", *JS_DEPS],
            cwd=deps,
            check=True,
        )
    (src / "node_modules").symlink_to(deps / "node_modules")
    excluded = [f"{p.removeprefix('tests/')}" for p, _ in DESELECT["js"]]
    globs = [f"tests/{p}**" if p.endswith("/") else f"tests/{p}" for p in excluded]
    (sdk / "vitest.hutch.config.mts").write_text(VITEST_CONFIG % json.dumps(globs))
    xml = sdk / "junit-js.xml"
    started, load = time.monotonic(), loadavg()
    run = subprocess.run(
        ["npx", "vitest", "run", "--config", "vitest.hutch.config.mts"]
        + ["--reporter=junit", f"--outputFile={xml}"],
        cwd=sdk,
        # vitest's workers are forks, which inherit NODE_OPTIONS: the guard is in each of them.
        env=dict(env, NODE_OPTIONS=f"--require {SUPPORT / 'offline_guard.cjs'}"),
        capture_output=True,
        text=True,
    )
    (sdk / "vitest.log").write_text(run.stdout + run.stderr)
    out = parse_junit(xml, "js")
    out.seconds, out.load = time.monotonic() - started, f"{load} -> {loadavg()}"
    if not out.passed and not out.failed:
        print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
    return out


SUITES = {"python": python_suite, "ci": ci_suite, "js": js_suite}


def report(out: Outcome) -> None:
    print(f"\n== {out.suite}: {len(out.passed)} passed, {len(out.failed)} failed, ", end="")
    print(f"{len(out.skipped)} skipped, {out.deselected} deselected, {out.seconds:.0f} s, ", end="")
    print(f"load {out.load}")
    by_cause: dict[str, list[str]] = {}
    for test in out.failed:
        known = cause_of(out.suite, test)
        label = f"{known[0]}" if known else "NEW"
        by_cause.setdefault(label, []).append(
            test + (f"  ({known[1]})" if known and known[1] else "")
        )
    uncounted = sum(len(v) for k, v in by_cause.items() if k in CAUSES and not CAUSES[k][0])
    counted = len(out.passed) + len(out.failed) - uncounted
    run = len(out.passed) + len(out.failed)
    if run:
        print(f"   passed / run = {len(out.passed)} / {run} = {100 * len(out.passed) / run:.1f}%")
    if counted:
        print(f"   passed / counted = {len(out.passed)} / {counted} = ", end="")
        print(
            f"{100 * len(out.passed) / counted:.1f}% (not counted: {uncounted} failures of ", end=""
        )
        print(
            "causes that are no fault of Hutch's: "
            + ", ".join(k for k in by_cause if k in CAUSES and not CAUSES[k][0])
            + ")"
        )
    for label, tests in sorted(by_cause.items()):
        print(f"   {label}: {CAUSES[label][1] if label in CAUSES else 'not a known cause'}")
        for test in tests:
            print(f"      {test}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suites", nargs="*", choices=list(SUITES), default=["python"])
    parser.add_argument("--e2b-git", help="git dir of e2b-dev/E2B (default: the fetch mirror)")
    parser.add_argument("--ci-git", help="git dir of e2b-dev/code-interpreter")
    parser.add_argument(
        "--sdk",
        choices=["commit", "pinned"],
        default="commit",
        help="Python suite: the e2b SDK of the suite's commit (default) or the pinned release",
    )
    parser.add_argument("--work", help="work directory (default: a new one under /var/tmp)")
    parser.add_argument("--url", help="a running Hutch server (else one is started)")
    parser.add_argument("--key", help="its API key in E2B's shape (e2b_<hex>)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="hutch-e2b-conformance-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    srv = None
    if args.url:
        url, key = args.url, args.key or os.environ.get("E2B_API_KEY", "")
    else:
        srv = ServerProcess(work / "server")
        srv.start()
        url = srv.url
        with srv.client() as client:
            key = client.post("/v1/keys", json={"name": "e2b", "e2b": True}).json()["key"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=key)
    print(
        f"work {work}; Hutch at {url}; E2B {E2B_COMMIT[:9]}, code-interpreter {CI_COMMIT[:9]}",
        flush=True,
    )
    try:
        outcomes = []
        for name in args.suites:
            print(f"running {name} (logs: {work})...", flush=True)
            outcomes.append(SUITES[name](args, work, env))
    finally:
        if srv is not None:
            srv.stop()
            from tests.conftest import _cleanup_home

            _cleanup_home(srv)
    for out in outcomes:
        report(out)
    print(f"\nlogs and junit files under {work}")


if __name__ == "__main__":
    main()
