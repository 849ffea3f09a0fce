import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { ConfigurationError, InvalidSizeError, Sandbox, TerminalNotFoundError } from "../dist/index.js";
import { server } from "./_server.mjs";

const srv = await server();
let sb;
before(async () => {
  // Node 20 has no global WebSocket: inject one (the core uses the global where there is one).
  sb = await Sandbox.create({ baseUrl: srv.url, apiKey: srv.apiKey, WebSocket });
});
after(async () => sb?.destroy());

test("a WebSocket terminal session: type, read, resize, detach, reattach with replay, exit", async () => {
  const t = await sb.terminal({ cols: 100, rows: 30 });
  assert.match(t.id, /^pty-/);
  assert.ok(t.pid > 0);
  t.send("stty size; echo $TERM\n");
  const out = await t.readUntil("xterm-256color");
  assert.match(out, /30 100/);

  await t.resize(120, 40);
  t.send("stty size\n");
  await t.readUntil("40 120");
  t.send("echo before-detach\n");
  await t.readUntil(/before-detach\r?\n/);
  t.detach();

  // The shell kept running; reattaching replays what it printed from offset 0.
  const again = await sb.attachTerminal(t.id);
  const replay = await again.readUntil("before-detach");
  assert.match(replay, /stty size/);
  assert.ok((await sb.listTerminals()).some((x) => x.id === t.id));
  again.send("exit 7\n");
  assert.equal(await again.wait(10_000), 7);
  await again.close();
  await assert.rejects(sb.attachTerminal(t.id), TerminalNotFoundError);
});

test("terminal sizes are checked and a runtime with no WebSocket is told what to pass", async () => {
  await assert.rejects(sb.terminal({ cols: 0 }), InvalidSizeError);
  const bare = await Sandbox.connect(sb.id, { baseUrl: srv.url, apiKey: srv.apiKey });
  if (typeof globalThis.WebSocket === "undefined") {
    await assert.rejects(bare.terminal(), (err) => err instanceof ConfigurationError && /ws/.test(err.message));
  }
});
