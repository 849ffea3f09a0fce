"""The agent's contract: every op the agent dispatches is declared once in `hutch._wire`, with
its arguments and result (unary ops, `AgentCall`) or its OPEN body (stream ops,
`StreamRequest`), and mypy holds the server's calls to it. No sandbox, no root."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from hutch._wire import agent_calls
from hutch._wire.agent_calls import StreamRequest
from hutch._wire.agent_ops import OpName
from hutch.agent._ops import STREAM_OPS, UNARY_OPS, load_handler

ROOT = Path(__file__).resolve().parent.parent
# Stream ops whose only frame is their RESULT: the server runs them with `call`.
RESULT_ONLY_STREAMS = {"code_context_create", "code_context_restart"}


def _unary_declared() -> list[str]:
    """The op of each overload of `AgentCall.__call__` (read from the source: at run time
    a body-less overload is a placeholder)."""
    tree = ast.parse(Path(agent_calls.__file__).read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AgentCall"]
    ops = []
    for method in cls.body:
        if isinstance(method, ast.FunctionDef) and method.name == "__call__":
            [op] = [a for a in method.args.posonlyargs if a.arg == "op"]
            match = re.fullmatch(r"""Literal\[['"](\w+)['"]\]""", ast.unparse(op.annotation or op))
            assert match, ast.unparse(method)
            ops.append(match.group(1))
    return ops


def _streams_declared() -> list[str]:
    return [get_args(get_type_hints(request)["op"])[0] for request in get_args(StreamRequest)]


def test_every_unary_op_the_agent_serves_is_declared_once() -> None:
    declared = _unary_declared()
    assert len(declared) == len(set(declared)), "an op has two overloads"
    assert set(declared) == set(UNARY_OPS) | RESULT_ONLY_STREAMS
    assert RESULT_ONLY_STREAMS <= set(STREAM_OPS)


def test_every_stream_op_the_agent_serves_is_declared_once() -> None:
    declared = _streams_declared()
    assert len(declared) == len(set(declared))
    assert set(declared) == set(STREAM_OPS)


def test_every_stream_op_has_a_declared_result() -> None:
    results = agent_calls.StreamResults.__required_keys__
    assert set(results) == set(STREAM_OPS)


def test_the_declarations_are_exactly_the_op_names() -> None:
    assert set(_unary_declared()) | set(_streams_declared()) == set(get_args(OpName))


def test_every_handler_in_the_dispatch_tables_exists() -> None:
    for table in (UNARY_OPS, STREAM_OPS):
        for op in table:
            assert callable(load_handler(table, op)), op


def test_mypy_refuses_an_unknown_op_and_wrong_arguments(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from hutch.node import AgentConnection\n"
        "async def f(conn: AgentConnection) -> None:\n"
        "    await conn.call('fly')\n"  # line 3: not an op
        "    await conn.call('stat', pth='x')\n"  # line 4: no such argument
        "    r = await conn.call('stat', path='x')\n"
        "    r['sizee']\n"  # line 6: not a field of the result
        "    conn.open_stream({'op': 'stat', 'path': 'x'})\n"  # line 7: not a stream op
        "    await conn.call('ping')\n"  # fine
    )
    proc = subprocess.run(
        # NB: no cache: the checkout may be read-only to whoever runs the tests (nobody).
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary"]
        + ["--cache-dir", os.devnull, str(probe)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = {int(m.group(1)) for m in re.finditer(r"probe\.py:(\d+): error", proc.stdout)}
    assert lines == {3, 4, 6, 7}, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("name", "table", "contract"),
    [
        ("TYPED_UNARY_OPS", UNARY_OPS, agent_calls.UnaryHandlers),
        ("TYPED_STREAM_OPS", STREAM_OPS, agent_calls.StreamHandlers),
    ],
)
def test_the_handlers_mypy_checks_are_the_ones_the_agent_runs(
    name: str, table: dict[str, tuple[str, str]], contract: type
) -> None:
    """agent/_ops_typed.py's tables (type-checking only) bind each handler to its op's types;
    they must name the same functions as UNARY_OPS and STREAM_OPS, which the agent dispatches
    by."""
    tree = ast.parse((ROOT / "src" / "hutch" / "agent" / "_ops_typed.py").read_text())
    [typed] = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == name
    ]
    assert isinstance(typed, ast.Dict)
    bound = {
        ast.literal_eval(key): ast.unparse(value).removeprefix("_").split(".")
        for key, value in zip(typed.keys, typed.values, strict=True)
        if key is not None
    }
    assert {op: (f"_{m}", f) for op, (m, f) in bound.items()} == table
    # And the contract's table has every op (mypy checks a missing key at the literal).
    assert set(contract.__required_keys__) == set(table)  # type: ignore[attr-defined]


def test_mypy_refuses_a_stream_result_that_is_not_its_ops(tmp_path: Path) -> None:
    """A stream handler's RESULT is checked where it is sent, and a handler bound to the wrong
    op (as in agent/_ops_typed.py's TYPED_STREAM_OPS) is refused where it is bound."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from hutch._wire.agent_calls import ListResult, StreamOpener\n"
        "from hutch._wire.agent_ops import ExecResult\n"
        "from hutch.agent import _exec, _files\n"
        "def f(op: _files.ListOp) -> None:\n"
        "    op.send_result({'count': 1, 'truncated': False})\n"  # fine
        "    op.send_result({'count': 1})\n"  # line 6: a field left out
        "    op.send_result({'count': 1, 'truncated': False, 'size': 3})\n"  # line 7: not a field
        "ok: StreamOpener[ListResult] = _files.open_list\n"
        "bad: StreamOpener[ExecResult] = _files.open_list\n"  # line 9: list's handler for exec
        "bad2: StreamOpener[ListResult] = _exec.open_exec\n"  # line 10: the other way round
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary"]
        + ["--cache-dir", os.devnull, str(probe)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = {int(m.group(1)) for m in re.finditer(r"probe\.py:(\d+): error", proc.stdout)}
    assert lines == {6, 7, 9, 10}, proc.stdout + proc.stderr
