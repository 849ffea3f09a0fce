import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { ContextNotFoundError, Result, Sandbox, UnknownLanguageError } from "../dist/index.js";
import { server } from "./_server.mjs";

const srv = await server();
let sb;
before(async () => {
  sb = await Sandbox.create({ baseUrl: srv.url, apiKey: srv.apiKey });
});
after(async () => sb?.destroy());

test("runCode: state persists in a context; output and results come live and typed", async () => {
  const ctx = await sb.createCodeContext({ language: "python" });
  assert.match(ctx.id, /^ctx-/);
  await sb.runCode("import time\nx = 20", { context: ctx });
  const live = [];
  const started = Date.now();
  const ex = await sb.runCode("print('first', flush=True)\ntime.sleep(0.5)\nprint('second')\nx * 2 + 2", {
    context: ctx,
    onStdout: (m) => live.push([m.text, Date.now() - started]),
    onResult: (r) => live.push(["result", Date.now() - started, r]),
  });
  assert.equal(ex.text, "42");
  assert.equal(ex.status, "ok");
  assert.equal(ex.contextId, ctx.id);
  assert.deepEqual(ex.logs.stdout.join(""), "first\nsecond\n");
  assert.equal(live[0][0], "first\n");
  assert.ok(live.at(-1)[1] - live[0][1] >= 400, "the first line arrived before the run ended");
  assert.ok(live.at(-1)[2] instanceof Result);
});

test("runCode: rich results (html, png, chart data) and errors", async () => {
  const ex = await sb.runCode(
    [
      "import pandas as pd",
      "import matplotlib.pyplot as plt",
      "from IPython.display import display",
      "display(pd.DataFrame({'a': [1, 2]}))",
      "plt.plot([1, 2, 3], [4, 5, 6], label='up'); plt.title('T'); plt.show()",
    ].join("\n"),
    { timeout: 60_000 },
  );
  assert.equal(ex.error, undefined, JSON.stringify(ex.error));
  const table = ex.results.find((r) => r.html);
  assert.match(table.html, /<table/);
  const figure = ex.results.find((r) => r.png);
  assert.ok(figure.formats().includes("png") && figure.formats().includes("chart"), figure.formats().join(","));
  assert.ok(Buffer.from(figure.png, "base64").subarray(1, 4).toString() === "PNG");
  assert.equal(figure.chart.type, "line");
  assert.equal(figure.chart.title, "T");

  const errors = [];
  const bad = await sb.runCode("1/0", { onError: (e) => errors.push(e) });
  assert.equal(bad.error.name, "ZeroDivisionError");
  assert.equal(errors[0].name, "ZeroDivisionError");
  assert.ok(bad.error.traceback.length > 0);
});

test("runCodeStream, JavaScript contexts, timeouts, list and delete", async () => {
  const js = await sb.createCodeContext({ language: "javascript" });
  const types = [];
  for await (const ev of sb.runCodeStream("console.log('hi'); 40 + 2", { context: js })) types.push(ev.type === "result" ? ev.result.text : ev.type);
  assert.deepEqual(types, ["stdout", "42", "end"]);
  const slow = await sb.runCode("import time\ntime.sleep(30)", { timeout: 500 });
  assert.equal(slow.status, "timeout");
  const ids = (await sb.listCodeContexts()).map((c) => c.id);
  assert.ok(ids.includes(js.id));
  await sb.deleteCodeContext(js);
  await assert.rejects(sb.runCode("1", { context: js.id }), ContextNotFoundError);
  await assert.rejects(sb.createCodeContext({ language: "cobol" }), UnknownLanguageError);
});
