import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { InvalidSignalError, ProcessExitedError, ProcessNotRunningError, ProcessTimeoutError, Sandbox } from "../dist/index.js";
import { cuttableProxy } from "./_proxy.mjs";
import { server } from "./_server.mjs";

const srv = await server();
let sb;
before(async () => {
  sb = await Sandbox.create({ baseUrl: srv.url, apiKey: srv.apiKey });
});
after(async () => sb?.destroy());

test("startProcess, waitForLog, waitForPort, preview URL, kill with a signal", async () => {
  const p = await sb.startProcess("python3 -u -m http.server 8080", { processId: "web", cwd: "/tmp" });
  assert.equal(p.id, "web");
  assert.ok(p.pid > 0);
  assert.ok(["starting", "running"].includes(p.status));
  const found = await p.waitForLog(/Serving HTTP on \S+ port (\d+)/, 30_000);
  assert.equal(found.match[1], "8080");
  assert.match(found.line, /^Serving HTTP/);
  await p.waitForPort(8080, { mode: "http", path: "/", timeout: 30_000 });

  const listed = (await sb.listProcesses()).map((x) => x.id);
  assert.ok(listed.includes("web"));
  assert.equal((await sb.getProcess("web")).pid, p.pid);
  assert.equal(await sb.getProcess("nope"), null);

  await assert.rejects(p.kill("SIGNOPE"), InvalidSignalError);
  await p.kill("SIGUSR1"); // python's default action for it: die
  const end = await p.waitForExit(10_000);
  assert.equal(end.status, "killed");
  assert.equal(p.info.signal, 10);
  await assert.rejects(p.writeStdin("x"), ProcessNotRunningError);
});

test("stdin, getLogs, waitForExit, killAllProcesses, timeouts", async () => {
  const cat = await sb.startProcess(["sh", "-c", "cat; echo done >&2; exit 4"]);
  await cat.writeStdin("hello ");
  await cat.writeStdin(new TextEncoder().encode("world"));
  await cat.closeStdin();
  const end = await cat.waitForExit(10_000);
  assert.deepEqual([end.exitCode, end.status], [4, "failed"]);
  assert.deepEqual(await sb.getProcessLogs(cat.id), { stdout: "hello world", stderr: "done\n", processId: cat.id });

  const sleeper = await sb.startProcess("sleep 300");
  await assert.rejects(sleeper.waitForExit(300), ProcessTimeoutError);
  await assert.rejects(sleeper.waitForLog("never printed", 300), ProcessTimeoutError);
  assert.equal(await sb.killAllProcesses("SIGKILL"), 1);
  assert.equal((await sleeper.waitForExit(10_000)).status, "killed");
  await assert.rejects(sleeper.waitForLog("never printed", 5_000), ProcessExitedError);
});

test("a process's timeout kills it and its children; timedOut says so", async () => {
  const p = await sb.startProcess("sleep 321 & echo up; sleep 322", { timeout: 1_000 });
  await p.waitForLog("up", 30_000);
  const end = await p.waitForExit(30_000);
  assert.deepEqual([end.status, p.timedOut, p.info.signal], ["killed", true, 9]);
  const left = await sb.exec("pgrep -c -f '^sleep 32[12]$' || true");
  assert.equal(left.stdout, "0\n");
  const quick = await sb.startProcess("true", { timeout: 60_000 });
  await quick.waitForExit(30_000);
  assert.deepEqual([quick.status, quick.timedOut], ["completed", false]);
});

test("streamProcessLogs: replay from an offset, then live, then an exit event", async () => {
  const p = await sb.startProcess("printf 0123456789; sleep 0.3; printf abc; printf E >&2");
  const got = [];
  let exit;
  for await (const ev of sb.streamProcessLogs(p.id, { since: 4, sinceStderr: 0 })) {
    if (ev.type === "exit") exit = ev;
    else got.push([ev.type, ev.offset, ev.data]);
  }
  assert.equal(got.filter(([t]) => t === "stdout").map(([, , d]) => d).join(""), "456789abc");
  assert.equal(got.find(([t]) => t === "stdout")[1], 4);
  assert.deepEqual(got.filter(([t]) => t === "stderr"), [["stderr", 0, "E"]]);
  assert.deepEqual([exit.status, exit.exitCode, exit.processId], ["completed", 0, p.id]);
});

test("streamProcessLogs resumes after a dropped connection: every byte once, in order", async () => {
  const proxy = await cuttableProxy(Number(new URL(srv.url).port));
  try {
    const viaProxy = await Sandbox.connect(sb.id, { baseUrl: proxy.url, apiKey: srv.apiKey });
    const lines = 80;
    const p = await viaProxy.startProcess(`for i in $(seq 1 ${lines}); do echo line-$i; sleep 0.03; done`);
    const before = proxy.connections;
    let text = "";
    let cuts = 0;
    let exit;
    for await (const ev of viaProxy.streamProcessLogs(p.id)) {
      if (ev.type === "exit") {
        exit = ev;
        break;
      }
      text += ev.data;
      // Drop the connection twice, mid-stream, while the process still prints.
      if ((cuts === 0 && text.includes("line-10\n")) || (cuts === 1 && text.includes("line-40\n"))) {
        cuts += 1;
        proxy.cut();
      }
    }
    assert.equal(cuts, 2);
    // Each cut closed the connection the stream was on; it went on over a new one each time.
    assert.ok(proxy.connections - before >= 2, `${proxy.connections - before} new connections`);
    const expected = Array.from({ length: lines }, (_, i) => `line-${i + 1}\n`).join("");
    assert.equal(text, expected);
    assert.equal(exit.exitCode, 0);
  } finally {
    proxy.close();
  }
});
