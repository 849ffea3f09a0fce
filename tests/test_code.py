"""The code interpreter end to end: Python on a Jupyter kernel, JavaScript and TypeScript on
node, in real sandboxes through the SDK."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hutch import CodeContext, Conflict, ContextNotFound, InvalidRequest, Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def sb(server: ServerProcess) -> Iterator[Sandbox]:
    # NB: every Python context is a Jupyter kernel (~100 MB with pandas and matplotlib).
    box = Sandbox.create(
        base_url=server.url, api_key=server.api_key, labels={"suite": "code"}, memory_mb=2048
    )
    yield box
    box.destroy()


@pytest.fixture()
def new_context(sb: Sandbox) -> Iterator[Callable[..., CodeContext]]:
    """Make contexts that are deleted when the test ends (each one holds an interpreter)."""
    made: list[CodeContext] = []

    def make(language: str = "python", **kwargs: Any) -> CodeContext:
        made.append(sb.create_code_context(language, **kwargs))
        return made[-1]

    yield make
    for ctx in made:
        with contextlib.suppress(ContextNotFound):
            sb.delete_code_context(ctx)


def test_python_state_persists_and_last_value(
    sb: Sandbox, new_context: Callable[..., CodeContext]
) -> None:
    ctx = new_context("python")
    assert ctx.language == "python" and ctx.state == "ready"
    assert (
        sb.run_code("import math\nx = 40\ndef f(a):\n    return a + 2", context=ctx).results == []
    )
    ex = sb.run_code("print('hi')\nf(x)", context=ctx)
    assert ex.logs.stdout == ["hi\n"]
    assert ex.text == "42" and ex.error is None and ex.status == "ok"
    assert sb.run_code("math.floor(2.5)", context=ctx).text == "2"


def test_modules_kept_out_of_the_kernels_start_still_work(
    sb: Sandbox, new_context: Callable[..., CodeContext]
) -> None:
    """The kernel starts without psutil, debugpy, jedi and IPython's terminal (a faster cold
    context); user code gets the real modules, and the kernel's own psutil works."""
    ctx = new_context("python")
    code = (
        "import os, sys, types, psutil, debugpy, jedi\n"
        "import ipykernel.kernelbase as kb\n"
        "from IPython.terminal.embed import InteractiveShellEmbed\n"
        "pid = os.getpid()\n"
        "[psutil.Process().pid == pid, type(sys.modules['psutil']) is types.ModuleType,\n"
        " kb.psutil.Process().pid == pid, kb.psutil.NoSuchProcess is psutil.NoSuchProcess,\n"
        " callable(debugpy.listen), hasattr(jedi, 'Script'), InteractiveShellEmbed.__name__]"
    )
    ex = sb.run_code(code, context=ctx)
    assert ex.error is None, ex.error
    assert ex.text == "[True, True, True, True, True, True, 'InteractiveShellEmbed']"


def test_contexts_are_isolated_listed_and_deleted(
    sb: Sandbox, new_context: Callable[..., CodeContext]
) -> None:
    a = new_context("python")
    b = new_context("python", env={"WHO": "b"}, cwd="/tmp")
    sb.run_code("secret = 1", context=a)
    ex = sb.run_code("secret", context=b)
    assert ex.error is not None and ex.error.name == "NameError"
    assert sb.run_code("import os; os.getcwd(), os.environ['WHO']", context=b).text == (
        "('/tmp', 'b')"
    )
    listed = {c.id: c for c in sb.list_code_contexts()}
    assert {a.id, b.id} <= set(listed) and listed[b.id].language == "python"
    sb.delete_code_context(b)
    assert b.id not in {c.id for c in sb.list_code_contexts()}
    with pytest.raises(ContextNotFound):
        sb.run_code("1", context=b)
    with pytest.raises(ContextNotFound):
        sb.delete_code_context(b.id)
    assert sb.run_code("secret", context=a).text == "1"


def test_default_context_per_language(sb: Sandbox) -> None:
    sb.run_code("default_value = 5")
    assert sb.run_code("default_value * 2").text == "10"
    sb.run_code("var fromJs = 3", language="javascript")
    assert sb.run_code("fromJs + 1", language="js").text == "4"
    assert sb.run_code("typeof default_value", language="javascript").text == "'undefined'"


def test_every_mime_type_of_display_and_last_value(sb: Sandbox) -> None:
    code = """
import base64
from IPython.display import display, HTML, Markdown, Latex, SVG, JSON, Javascript
display(HTML('<b>bold</b>'))
display(Markdown('# title'))
display(Latex(r'$\\alpha$'))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"></svg>'))
display(JSON({'a': [1, 2]}))
display(Javascript('console.log(1)'))
display({'image/jpeg': base64.b64encode(b'\\xff\\xd8\\xff\\xe0jpeg').decode()}, raw=True)
'last'
"""
    ex = sb.run_code(code)
    assert ex.error is None, ex.error
    by_format = {f: r for r in ex.results for f in r.formats() if f != "text"}
    assert by_format["html"].html == "<b>bold</b>"
    assert by_format["markdown"].markdown == "# title"
    assert by_format["latex"].latex == "$\\alpha$"
    assert "<svg" in by_format["svg"].svg
    assert by_format["json"].json == {"a": [1, 2]}
    assert by_format["javascript"].javascript == "console.log(1)"
    assert by_format["jpeg"].jpeg == "/9j/4GpwZWc="
    main = [r for r in ex.results if r.is_main_result]
    assert len(main) == 1 and main[0].text == "'last'"


def test_pandas_dataframe_has_html_and_text(sb: Sandbox) -> None:
    ex = sb.run_code("import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'n': [1, 2]})")
    (result,) = ex.results
    assert "<table" in result.html and "Oslo" in result.html
    assert "city" in result.text and "Lima" in result.text


PLOT = "import matplotlib\nimport matplotlib.pyplot as plt\n"


def _chart(sb: Sandbox, code: str) -> dict:
    ex = sb.run_code(PLOT + code)
    assert ex.error is None, ex.error
    charts = [r for r in ex.results if r.chart is not None]
    assert charts, ex.results
    assert charts[0].png  # the picture comes with the data
    return charts[0].chart


def test_chart_line_with_labels_and_scales(sb: Sandbox) -> None:
    chart = _chart(
        sb,
        "fig, ax = plt.subplots()\n"
        "ax.plot([1, 2, 3], [1, 10, 100], label='growth')\n"
        "ax.plot([1, 2, 3], [3, 2, 1], label='decay')\n"
        "ax.set_title('Trend'); ax.set_xlabel('day'); ax.set_ylabel('count')\n"
        "ax.set_yscale('log')\nplt.show()",
    )
    assert chart["type"] == "line"
    assert (chart["title"], chart["x_label"], chart["y_label"]) == ("Trend", "day", "count")
    assert (chart["x_scale"], chart["y_scale"]) == ("linear", "log")
    assert chart["elements"] == [
        {"label": "growth", "x": [1, 2, 3], "y": [1, 10, 100]},
        {"label": "decay", "x": [1, 2, 3], "y": [3, 2, 1]},
    ]


def test_chart_bar_as_the_last_value(sb: Sandbox) -> None:
    ex = sb.run_code(
        PLOT + "fig, ax = plt.subplots()\nax.bar(['apples', 'pears', 'plums'], [5, 3.5, 7])\n"
        "ax.set_title('Fruit')\nfig"
    )
    main = [r for r in ex.results if r.is_main_result]
    assert main and main[0].chart is not None and main[0].png
    chart = main[0].chart
    assert chart["type"] == "bar" and chart["title"] == "Fruit"
    assert [(e["label"], e["value"]) for e in chart["elements"]] == [
        ("apples", 5),
        ("pears", 3.5),
        ("plums", 7),
    ]


def test_chart_scatter_pie_and_box(sb: Sandbox) -> None:
    scatter = _chart(sb, "plt.figure(); plt.scatter([1, 2, 3], [4, 5, 6], label='pts'); plt.show()")
    assert scatter["type"] == "scatter"
    assert scatter["elements"] == [{"label": "pts", "points": [[1, 4], [2, 5], [3, 6]]}]

    pie = _chart(
        sb,
        "plt.figure(); plt.pie([10, 30, 60], labels=['a', 'b', 'c']); plt.title('P'); plt.show()",
    )
    assert pie["type"] == "pie" and pie["title"] == "P"
    assert [(e["label"], e["value"]) for e in pie["elements"]] == [("a", 10), ("b", 30), ("c", 60)]
    assert [round(e["fraction"], 6) for e in pie["elements"]] == [0.1, 0.3, 0.6]

    box = _chart(
        sb,
        "plt.figure(); plt.boxplot([[1, 2, 3, 4, 5, 50], [2, 4, 6]], labels=['x', 'y'])\n"
        "plt.show()",
    )
    assert box["type"] == "box_and_whisker"
    x, y = box["elements"]
    assert (x["label"], x["median"], x["min"], x["max"], x["outliers"]) == ("x", 3.5, 1, 5, [50])
    assert (y["label"], y["median"], y["first_quartile"], y["third_quartile"]) == ("y", 4, 3, 5)


def test_output_streams_live(sb: Sandbox) -> None:
    code = "import time, sys\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.6)\n"
    arrivals: list[float] = []
    texts: list[str] = []
    for event in sb.run_code_stream(code):
        if event.type == "stdout":
            arrivals.append(time.monotonic())
            texts.append(event.text or "")
    assert "".join(texts) == "0\n1\n2\n3\n"
    # Printed 0.6 s apart: arriving live, they are spread over ~1.8 s, not in one batch.
    assert arrivals[-1] - arrivals[0] > 1.0

    seen: list[str] = []
    ex = sb.run_code(
        "import sys\nprint('out')\nprint('err', file=sys.stderr)\n1 / 0",
        on_stdout=seen.append,
        on_stderr=seen.append,
        on_error=lambda e: seen.append(e.name),
    )
    assert seen == ["out\n", "err\n", "ZeroDivisionError"]
    assert ex.logs.stderr == ["err\n"]


def test_error_has_plain_traceback_and_context_survives(
    sb: Sandbox, new_context: Callable[..., CodeContext]
) -> None:
    ctx = new_context()
    sb.run_code("kept = 'yes'", context=ctx)
    ex = sb.run_code("def boom():\n    raise ValueError('bad value')\nboom()", context=ctx)
    assert ex.status == "error" and ex.error is not None
    assert (ex.error.name, ex.error.value) == ("ValueError", "bad value")
    assert any("boom()" in line for line in ex.error.traceback)
    assert not any("\x1b[" in line for line in ex.error.traceback)
    assert sb.run_code("kept", context=ctx).text == "'yes'"


@pytest.mark.timeout(120)
def test_timeout_interrupts_and_state_survives(
    sb: Sandbox, new_context: Callable[..., CodeContext]
) -> None:
    ctx = new_context()
    sb.run_code("counter = 7", context=ctx)
    # An endless loop: without the timeout this never returns (the test's deadline fails it).
    ex = sb.run_code("import time\nwhile True:\n    time.sleep(0.1)", context=ctx, timeout=1)
    assert ex.status == "timeout"
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
    assert sb.run_code("counter + 1", context=ctx).text == "8"


def test_dead_kernel_is_reported_and_restartable(
    sb: Sandbox, new_context: Callable[..., CodeContext]
) -> None:
    ctx = new_context()
    sb.run_code("lost = 1", context=ctx)
    ex = sb.run_code("import os\nos._exit(3)", context=ctx)
    assert ex.status == "dead" and ex.error is not None and ex.error.name == "KernelDied"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = {c.id: c.state for c in sb.list_code_contexts()}[ctx.id]
        if state == "dead":
            break
        time.sleep(0.2)
    assert state == "dead"
    with pytest.raises(Conflict) as info:
        sb.run_code("1", context=ctx)
    assert info.value.code == "context_dead" and "restart" in info.value.message
    restarted = sb.restart_code_context(ctx)
    assert restarted.id == ctx.id and restarted.state == "ready"
    ex = sb.run_code("lost", context=ctx)
    assert ex.error is not None and ex.error.name == "NameError"
    assert sb.run_code("2 + 2", context=ctx).text == "4"


def test_the_default_context_comes_back_after_its_kernel_died(sb: Sandbox) -> None:
    sb.run_code("kept = 1")
    ex = sb.run_code("import os\nos._exit(3)")
    assert ex.error is not None and ex.error.name == "KernelDied"
    deadline = time.monotonic() + 30
    while True:  # the next run on the default context restarts it by itself, afresh
        ex = sb.run_code("kept")
        if ex.error is None or ex.error.name == "NameError" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ex.error is not None and ex.error.name == "NameError", ex
    assert sb.run_code("2 + 2").text == "4"
    sb.run_code("again = 5")
    restarted = sb.restart_code_context()  # no argument: the default context
    assert restarted.state == "ready" and restarted.language == "python"
    ex = sb.run_code("again")
    assert ex.error is not None and ex.error.name == "NameError"


def test_javascript_state_await_console_and_json(
    sb: Sandbox, new_context: Callable[..., CodeContext]
) -> None:
    ctx = new_context("javascript")
    sb.run_code("const base = 40; function add(a, b) { return a + b }", context=ctx)
    assert sb.run_code("add(base, 2)", context=ctx).text == "42"
    seen: list[str] = []
    ex = sb.run_code(
        "const v = await new Promise(r => setTimeout(() => r(5), 50));\n"
        "console.log('got', v)\n({ v, list: [1, 'two'] })",
        context=ctx,
        on_stdout=seen.append,
    )
    assert ex.error is None, ex.error
    assert seen == ["got 5\n"]
    (result,) = ex.results
    assert result.json == {"v": 5, "list": [1, "two"]}
    assert "list" in result.text
    assert sb.run_code("v * 2", context=ctx).text == "10"
    ex = sb.run_code("null.x", context=ctx)
    assert ex.error is not None and ex.error.name == "TypeError"
    assert sb.run_code("base", context=ctx).text == "40"


def test_javascript_timeout_breaks_a_busy_loop(
    sb: Sandbox, new_context: Callable[..., CodeContext]
) -> None:
    ctx = new_context("javascript")
    sb.run_code("var n = 1", context=ctx)
    ex = sb.run_code("while (true) {}", context=ctx, timeout=1)
    assert ex.status == "timeout" and ex.error is not None
    assert sb.run_code("n", context=ctx).text == "1"


def test_typescript_types_are_stripped_not_checked(
    sb: Sandbox, new_context: Callable[..., CodeContext]
) -> None:
    ctx = new_context("typescript")
    ex = sb.run_code(
        "interface Point { x: number; y: number }\n"
        "const p: Point = { x: 1, y: 2 };\n"
        "const wrong: number = 'not a number' as any;\n"
        "function norm(q: Point): number { return q.x * q.x + q.y * q.y }\n"
        "norm(p)",
        context=ctx,
    )
    assert ex.error is None, ex.error
    assert ex.text == "5"
    assert sb.run_code("const t: string = await Promise.resolve('ok'); t", context=ctx).text == (
        "'ok'"
    )
    assert sb.run_code("norm({x: 3, y: 4} as Point)", context=ctx).text == "25"


def test_installed_packages_become_importable(
    sb: Sandbox, new_context: Callable[..., CodeContext], tmp_path
) -> None:
    import base64
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hutchdemo.py", "ANSWER = 42\n")
        z.writestr(
            "hutchdemo-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: hutchdemo\nVersion: 1.0\n",
        )
        z.writestr(
            "hutchdemo-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr("hutchdemo-1.0.dist-info/RECORD", "")
    ctx = new_context()
    assert sb.run_code("import hutchdemo", context=ctx).error is not None
    wheel = "/tmp/hutchdemo-1.0-py3-none-any.whl"
    r = sb.exec(
        f"base64 -d > {wheel} && pip install --no-index -q {wheel}",
        stdin=base64.b64encode(buf.getvalue()),
    )
    assert r.exit_code == 0, r.stderr
    assert sb.run_code("import hutchdemo\nhutchdemo.ANSWER", context=ctx).text == "42"

    js = new_context("javascript")
    r = sb.exec(
        "mkdir -p /tmp/jsdemo && cd /tmp/jsdemo && "
        'echo \'{"name":"jsdemo","version":"1.0.0","main":"index.js"}\' > package.json && '
        "echo 'module.exports = { answer: 41 + 1 }' > index.js && "
        "cd /workspace && npm install --offline --no-audit --no-fund /tmp/jsdemo >/dev/null"
    )
    assert r.exit_code == 0, r.stderr
    assert sb.run_code("require('jsdemo').answer", context=js).text == "42"


def test_bad_input_codes(
    sb: Sandbox, new_context: Callable[..., CodeContext], server: ServerProcess
) -> None:
    with pytest.raises(InvalidRequest) as info:
        new_context("cobol")
    assert info.value.code == "unknown_language"
    assert "python, javascript, typescript" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        sb.run_code("1", language="cobol")
    assert info.value.code == "unknown_language"
    with pytest.raises(ContextNotFound):
        sb.run_code("1", context="ctx-nope")
    headers = {"Authorization": f"Bearer {server.api_key}"}
    r = httpx.post(
        f"{server.url}/v1/sandboxes/{sb.id}/code/contexts/ctx-nope/restart", headers=headers
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "context_not_found"


def test_language_unavailable_in_an_image_without_it(
    server: ServerProcess, busybox_image: str
) -> None:
    box = Sandbox.create(image=busybox_image, base_url=server.url, api_key=server.api_key)
    try:
        for language, lacking in (("python", "python3"), ("javascript", "node")):
            with pytest.raises(InvalidRequest) as info:
                box.create_code_context(language)
            assert info.value.status == 422 and info.value.code == "language_unavailable"
            assert lacking in info.value.message
        with pytest.raises(InvalidRequest) as info:
            box.run_code("1")
        assert info.value.code == "language_unavailable"
    finally:
        box.destroy()


def test_a_context_that_runs_out_of_memory_says_so(server: ServerProcess) -> None:
    """A sandbox too small for a Jupyter kernel (found by fuzzing: it was a 500): a 409 that
    names the cause and what to change, and the sandbox stays usable. (64 MiB was too small
    until the bridge stopped importing jupyter_client; 32 MiB, the least a sandbox may have,
    still is.)"""
    box = Sandbox.create(base_url=server.url, api_key=server.api_key, memory_mb=32)
    try:
        with pytest.raises(Conflict) as info:
            box.create_code_context("python")
        assert info.value.status == 409 and info.value.code == "context_failed"
        assert "out of memory" in info.value.message and "memory_mb" in info.value.message
        assert box.exec("echo still here").stdout == "still here\n"
    finally:
        box.destroy()


def _pool(box: Sandbox) -> dict[str, Any]:
    answer: dict[str, Any] = box.client.request("GET", f"/v1/sandboxes/{box.id}/code/contexts")
    return answer


def test_an_opted_in_sandbox_starts_its_first_kernel_with_the_agent(server: ServerProcess) -> None:
    """HUTCH_CODE_PRESTART=python in a sandbox's env: a kernel starts with the sandbox and the
    first context takes it, with its own cwd and env; a name it does not know is ignored.
    Without it, an idle sandbox runs no interpreter (density: a kernel is ~40-60 MB)."""
    opts: dict[str, Any] = {"base_url": server.url, "api_key": server.api_key, "memory_mb": 1024}
    plain = Sandbox.create(**opts)
    box = Sandbox.create(env={"HUTCH_CODE_PRESTART": "cobol, Python,"}, **opts)
    try:
        deadline = time.monotonic() + 120
        while _pool(box)["pool"].get("python") != "ready":
            assert time.monotonic() < deadline, _pool(box)
            time.sleep(0.2)
        assert _pool(box)["contexts"] == []
        box.mkdir("/workspace/here")
        ctx = box.create_code_context("python", cwd="here", env={"A": "1"})
        ex = box.run_code("import os; os.environ['A'] + ' ' + os.getcwd()", context=ctx)
        assert ex.text == "'1 /workspace/here'", ex
        assert box.run_code("x = 5", context=ctx).error is None

        time.sleep(1)
        assert _pool(plain) == {"contexts": [], "pool": {}}
        assert "python" not in plain.exec("ps -eo comm=").stdout
        # Asked for later (a pooled sandbox gets its env this way): it starts then.
        plain.set_env_vars({"HUTCH_CODE_PRESTART": "python"})
        assert _pool(plain)["pool"].get("python") in ("starting", "ready")
    finally:
        plain.destroy()
        box.destroy()


def test_interpreter_code_cannot_reach_the_api_or_other_sandboxes(
    sb: Sandbox, new_context: Callable[..., CodeContext], server: ServerProcess
) -> None:
    # NB: 127.0.0.1 inside a sandbox is the sandbox's own loopback. The API must be reached at
    # a host address where it really listens: a server bound to 0.0.0.0, at the gateway.
    wide = ServerProcess(
        Path(tempfile.mkdtemp(prefix="hutch-code-wide-", dir="/var/tmp")), bind="0.0.0.0"
    )
    wide.start()
    try:
        box = Sandbox.create(base_url=wide.url, api_key=wide.api_key)
        gateway = (
            box.run_code(
                "import socket\n"
                "for line in open('/proc/net/route').read().splitlines()[1:]:\n"
                "    f = line.split()\n"
                "    if f[1] == '00000000':\n"
                "        print(socket.inet_ntoa(int(f[2], 16).to_bytes(4, 'little')))"
            )
            .logs.stdout[0]
            .strip()
        )
        # Positive control: the API answers at that address, seen from the host.
        assert httpx.get(f"http://{gateway}:{wide.port}/healthz", timeout=10).status_code == 200
        for url in (f"http://{gateway}:{wide.port}/healthz", f"{wide.url}/healthz"):
            ex = box.run_code(
                "import urllib.request\n"
                f"try:\n    urllib.request.urlopen('{url}', timeout=3)\n"
                "    print('REACHED')\n"
                "except Exception as e:\n    print('blocked', type(e).__name__)"
            )
            assert "".join(ex.logs.stdout).startswith("blocked"), (url, ex.logs)
        box.destroy()
    finally:
        wide.stop()
        _cleanup_home(wide)
    other = Sandbox.create(base_url=server.url, api_key=server.api_key)
    try:
        mine = new_context("javascript")
        with pytest.raises(ContextNotFound):  # a context id means nothing in another sandbox
            other.run_code("1", context=mine)
    finally:
        other.destroy()


def test_contexts_outlive_a_server_kill_9(busybox_image: str) -> None:
    """Contexts live in the sandbox's agent, not in the server: a crash loses none."""
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-code-crash-", dir="/var/tmp")))
    srv.start()
    try:
        box = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
        ctx = box.create_code_context("javascript")
        box.run_code("var kept = 'still here'", context=ctx)
        srv.kill9()
        srv.start()
        assert box.run_code("kept", context=ctx).text == "'still here'"
        assert ctx.id in {c.id for c in box.list_code_contexts()}
        box.destroy()
    finally:
        srv.stop()
        _cleanup_home(srv)
