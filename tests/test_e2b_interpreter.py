"""The unmodified e2b-code-interpreter SDK (PyPI, pinned) against a real Hutch server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2b import NotFoundException, SandboxException
from e2b_code_interpreter import Sandbox
from e2b_code_interpreter.charts import BarChart, ChartType, LineChart

from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture()
def ci(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    monkeypatch.setenv("E2B_API_URL", server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", server.url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    sb = Sandbox.create()
    yield sb
    sb.kill()


def test_values_logs_and_errors(ci: Sandbox) -> None:
    ci.run_code("x = 41")
    ex = ci.run_code("print('out'); import sys; print('err', file=sys.stderr); x + 1")
    assert ex.text == "42"
    assert ex.logs.stdout == ["out\n"] and ex.logs.stderr == ["err\n"]
    assert ex.error is None

    seen: list[str] = []
    ex = ci.run_code("print('live')", on_stdout=lambda m: seen.append(m.line))
    assert seen == ["live\n"]

    ex = ci.run_code("1 / 0")
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError" and "division by zero" in ex.error.value
    assert "ZeroDivisionError" in ex.error.traceback


def test_rich_results_and_charts(ci: Sandbox) -> None:
    ex = ci.run_code("import pandas as pd; pd.DataFrame({'a': [1, 2]})")
    assert ex.results, ex
    assert "<table" in (ex.results[0].html or "") and "text" in ex.results[0].formats()

    code = """
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [4, 5, 6], label="up")
plt.title("rising"); plt.xlabel("t"); plt.ylabel("v")
plt.show()
"""
    ex = ci.run_code(code)
    charted = [r for r in ex.results if r.chart is not None]
    assert charted and charted[0].png
    chart = charted[0].chart
    assert isinstance(chart, LineChart) and chart.type == ChartType.LINE
    assert chart.title == "rising" and chart.x_label == "t"
    assert [(p[0], p[1]) for p in chart.elements[0].points] == [(1, 4), (2, 5), (3, 6)]

    ex = ci.run_code("plt.figure(); plt.bar(['a', 'b'], [3, 7]); plt.show()")
    bar = next(r.chart for r in ex.results if r.chart is not None)
    assert isinstance(bar, BarChart)
    assert [(e.label, e.value) for e in bar.elements] == [("a", 3), ("b", 7)]


def test_contexts(ci: Sandbox) -> None:
    ctx = ci.create_code_context(cwd="/tmp")
    assert ctx.language == "python" and ctx.cwd == "/tmp"
    ci.run_code("y = 5", context=ctx)
    assert ci.run_code("y", context=ctx).text == "5"
    assert ci.run_code("import os; os.getcwd()", context=ctx).text == "'/tmp'"
    assert ci.run_code("y").error is not None  # the default context is another one
    assert ctx.id in [c.id for c in ci.list_code_contexts()]

    ci.restart_code_context(ctx)
    assert ci.run_code("y", context=ctx).error is not None

    ci.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in ci.list_code_contexts()]
    with pytest.raises(NotFoundException):
        ci.run_code("1", context=ctx)

    js = ci.run_code("const a = 20; a * 2 + 2", language="javascript")
    assert js.text == "42"


def test_per_run_env_vars_are_refused_not_ignored(ci: Sandbox) -> None:
    with pytest.raises(SandboxException, match="400 Bad Request.*env_vars are not supported"):
        ci.run_code("import os; os.environ.get('A')", envs={"A": "1"})
    assert ci.run_code("1 + 1").text == "2"  # and the sandbox still runs code
