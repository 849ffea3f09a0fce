"""The unmodified e2b-code-interpreter SDK (PyPI, pinned) against a real Hutch server."""

from __future__ import annotations

import time
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
    # E2B gives a string result without its quotes.
    assert ci.run_code("import os; os.getcwd()", context=ctx).text == "/tmp"
    assert ci.run_code("y").error is not None  # the default context is another one
    # E2B's default contexts start in /home/user, as e2b-code-interpreter's do.
    assert ci.run_code("import os; os.getcwd()").text == "/home/user"
    assert ci.run_code("process.cwd()", language="javascript").text == "/home/user"
    assert ctx.id in [c.id for c in ci.list_code_contexts()]

    ci.restart_code_context(ctx)
    assert ci.run_code("y", context=ctx).error is not None

    ci.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in ci.list_code_contexts()]
    with pytest.raises(NotFoundException):
        ci.run_code("1", context=ctx)

    js = ci.run_code("const a = 20; a * 2 + 2", language="javascript")
    assert js.text == "42"


def test_per_run_env_vars_last_one_run_in_every_language(ci: Sandbox) -> None:
    """`run_code(envs=...)`: the variables are there for that run (also for `!` commands),
    then as before: removed, or back to the sandbox's value."""
    get_py = "import os; os.environ.get('A', 'unset')"
    assert ci.run_code(get_py, envs={"A": "1"}).text == "1"
    assert ci.run_code("!echo $A", envs={"A": "shell"}).logs.stdout[0].strip() == "shell"
    assert ci.run_code(get_py).text == "unset"
    ci.run_code("import os; os.environ['B'] = 'mine'")
    assert ci.run_code("import os; os.environ['B']", envs={"B": "run"}).text == "run"
    assert ci.run_code("import os; os.environ['B']").text == "mine"

    get_js = "process.env.A || 'unset'"
    assert ci.run_code(get_js, language="javascript", envs={"A": "2"}).text == "2"
    assert ci.run_code(get_js, language="javascript").text == "unset"

    out = ci.run_code("echo ${A:-unset}", language="bash", envs={"A": "3 4"})
    assert "".join(out.logs.stdout) == "3 4\n"
    assert "".join(ci.run_code("echo ${A:-unset}", language="bash").logs.stdout) == "unset\n"


def test_per_run_env_abuse_is_refused_and_does_not_leak(ci: Sandbox) -> None:
    # A name that would smuggle a second variable or a command in: refused before the run.
    for bad in ({"A=B": "1"}, {"": "1"}):
        with pytest.raises(SandboxException, match="400|422"):
            ci.run_code("1", envs=bad)
    # A name bash cannot set is refused for a bash run, not silently left out.
    with pytest.raises(SandboxException, match="cannot be set in bash"):
        ci.run_code("echo ran", language="bash", envs={"A-B": "1"})
    # A value is a value, never code: quotes and command substitutions stay text.
    nasty = "'; touch /tmp/pwned; echo '$(touch /tmp/pwned2)\"`touch /tmp/pwned3`"
    for language in ("python", "javascript", "bash"):
        code = {
            "python": "import os; print(os.environ['V'])",
            "javascript": "console.log(process.env.V)",
            "bash": 'printf "%s\\n" "$V"',
        }[language]
        out = ci.run_code(code, language=language, envs={"V": nasty})
        assert "".join(out.logs.stdout) == nasty + "\n", (language, out)
    assert ci.commands.run("ls /tmp/pwned* 2>/dev/null | wc -l").stdout.strip() == "0"
    assert ci.run_code("1 + 1").text == "2"  # and the sandbox still runs code


def test_bash_context_keeps_its_shell(ci: Sandbox) -> None:
    """A `bash` context is one shell: cd, variables and functions last between runs; a
    failing command is an error; a run reads no stdin."""

    def bash(code: str, **kw: object) -> tuple[str, str]:
        out = ci.run_code(code, language=None if kw else "bash", **kw)  # type: ignore[arg-type]
        return "".join(out.logs.stdout), "".join(out.logs.stderr)

    assert bash("pwd") == ("/home/user\n", "")
    bash('cd /tmp && export K=v && f() { echo "f:$1"; }')
    assert bash("pwd; echo $K; f x; echo oops >&2") == ("/tmp\nv\nf:x\n", "oops\n")
    failed = ci.run_code("false", language="bash")
    assert failed.error is not None and failed.error.value == "exit status 1"
    assert bash("cat; echo after") == ("after\n", "")
    # Output that looks like a marker does not end the run early.
    assert bash("printf '\\036HUTCH 0\\n'; echo real") == ("\x1eHUTCH 0\nreal\n", "")
    ctx = ci.create_code_context(language="bash")
    ci.run_code("X=1", context=ctx)
    assert bash("echo ${X:-none}") == ("none\n", "")
    assert bash("echo $X", context=ctx) == ("1\n", "")


def test_interpreter_extras_e2b_suites_check(ci: Sandbox) -> None:
    """What e2b-code-interpreter's own tests look for: execution counts, DataFrames as
    `data`, ESM imports and indented top-level await in JS, default contexts listed, units
    and date scales of line charts, and R/Java refused clearly."""
    ci.run_code("x = 1")
    assert ci.run_code("x").execution_count == 2
    frame = ci.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', None]})")
    assert frame.results[0].data == {"a": [1, 2], "b": ["x", None]}

    esm = ci.run_code("import { join } from 'path'\nconsole.log(join('a', 'b'))", language="js")
    assert esm.logs.stdout == ["a/b\n"], esm
    assert ci.run_code("typeof join", language="js").text == "function"  # bound for good
    tla = ci.run_code("\n    await Promise.resolve('done')\n    ", language="js")
    assert tla.text == "done", tla

    languages = [c.language for c in ci.list_code_contexts()]
    assert languages[:2] == ["python", "javascript"]

    code = """
import datetime, matplotlib.pyplot as plt
days = [datetime.date(2024, 1, d) for d in range(1, 6)]
plt.plot(days, [0.5, 1.0, 1.5, 2.0, 2.5]); plt.xlabel("Day (d)"); plt.ylabel("Load (kW)")
plt.show()
"""
    chart = next(r.chart for r in ci.run_code(code).results if r.chart is not None)
    assert isinstance(chart, LineChart)
    assert (chart.x_unit, chart.y_unit) == ("d", "kW")
    assert chart.x_scale == "datetime" and chart.y_scale == "linear"
    assert chart.elements[0].points[0] == ("2024-01-01", 0.5)
    assert all(isinstance(t, str) for t in chart.x_ticks) and chart.y_tick_labels

    for language in ("r", "java"):
        with pytest.raises(SandboxException, match="not available on this server"):
            ci.run_code("1", language=language)


def test_run_cut_when_sandbox_is_killed_mid_run(ci: Sandbox) -> None:
    """The stream is cut as E2B's proxy cuts it, so the SDK says the sandbox was killed (a
    clean end with an error line would read as a finished run)."""
    import threading

    from e2b import TimeoutException

    ci.run_code("1")  # the default context is ready: the kill lands mid-run
    timer = threading.Timer(1.5, ci.kill)
    timer.start()
    try:
        with pytest.raises(TimeoutException, match="killed while the request was in progress"):
            ci.run_code("import time; time.sleep(60)", timeout=120)
    finally:
        timer.cancel()


def test_a_client_that_gives_up_while_the_kernel_starts(ci: Sandbox) -> None:
    """A client that gives up while the kernel is still starting: its code never runs (it
    would hold the kernel for nobody), and the next run does not wait behind it. (When the
    give-up lands just after the kernel is ready, the run starts and is interrupted: the
    next run used to come back empty, see the test below.)"""
    from e2b import TimeoutException

    with pytest.raises(TimeoutException):  # a fresh sandbox: the kernel is starting
        ci.run_code("import time; time.sleep(300)", timeout=0.3)
    ex = ci.run_code("1 + 1", timeout=30)
    assert ex.text == "2", ex


def test_a_run_after_a_failed_one_runs(ci: Sandbox) -> None:
    """ipykernel aborts, unrun, the requests that reach it just after a failed one (busy and
    idle only): the run after an interrupted or failing one came back empty, and a per-run
    env's restore after a failing cell was aborted, so the variable stayed for later runs."""
    import threading

    for _ in range(3):
        assert ci.run_code("1 / 0", envs={"HUTCH_ONCE": "1"}).error is not None
        ex = ci.run_code("import os; os.environ.get('HUTCH_ONCE', 'unset')")
        assert ex.text == "unset", ex

    # A run queued behind a failing one (two clients on one context) runs when it fails.
    queued: list[object] = []
    second = threading.Thread(target=lambda: queued.append(ci.run_code("2 + 3").text))
    first = threading.Thread(target=lambda: ci.run_code("import time; time.sleep(1); 1 / 0"))
    first.start()
    time.sleep(0.3)
    second.start()
    first.join()
    second.join()
    assert queued == ["5"]


def test_a_client_that_gives_up_interrupts_its_run(ci: Sandbox) -> None:
    """A client that gives up mid-run: the run is interrupted, and the next run does not wait
    behind it."""
    from e2b import TimeoutException

    assert ci.run_code("1 + 1", timeout=60).text == "2"  # the kernel is up
    with pytest.raises(TimeoutException):
        ci.run_code("import time; time.sleep(300)", timeout=2)
    assert ci.run_code("2 + 2", timeout=30).text == "4"
