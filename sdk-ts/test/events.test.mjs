// sandbox.events(): a real sandbox's life over SSE, in order, live, and again from any point;
// the decoder copes with events split anywhere across chunks.
import assert from "node:assert/strict";
import { test } from "node:test";
import { EventStreamDecoder, Sandbox, SandboxNotFoundError } from "../dist/index.js";
import { server } from "./_server.mjs";

const srv = await server();
const opts = { baseUrl: srv.url, apiKey: srv.apiKey };

test("a sandbox's life arrives in order, live, and again after any seq", async () => {
  const sb = await Sandbox.create(opts);
  const seen = [];
  const following = (async () => {
    for await (const event of sb.events({ timeout: 120_000 })) seen.push(event);
  })();
  const waitFor = async (type) => {
    const until = Date.now() + 30_000;
    while (!seen.some((e) => e.type === type)) {
      assert.ok(Date.now() < until, `no ${type} in ${seen.map((e) => e.type)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await waitFor("started");
  await sb.pause();
  await waitFor("paused");
  await sb.resume();
  await waitFor("resumed");
  await sb.destroy();
  await following; // the stream ends by itself after `destroyed`
  assert.deepEqual(seen.map((e) => e.type), ["created", "started", "paused", "resumed", "destroyed"]);
  assert.deepEqual(seen.map((e) => e.seq), [...seen.keys()].map((i) => seen[0].seq + i));
  assert.equal(seen[0].data.image, "default");
  assert.equal(seen[2].reason, "paused by request");
  assert.ok(seen.every((e) => e.at instanceof Date && !Number.isNaN(e.at.getTime())));
});

test("after and follow: false give what is kept after a point, then stop", async () => {
  const sb = await Sandbox.create(opts);
  try {
    await sb.stop();
    const all = [];
    for await (const e of sb.events({ follow: false })) all.push(e);
    assert.deepEqual(all.map((e) => e.type), ["created", "started", "stopped"]);
    const later = [];
    for await (const e of sb.events({ after: all[0].seq, follow: false })) later.push(e);
    assert.deepEqual(later.map((e) => e.seq), all.slice(1).map((e) => e.seq));
  } finally {
    await sb.destroy();
  }
});

test("events of a sandbox that is gone: SandboxNotFoundError", async () => {
  const sb = await Sandbox.create(opts);
  await sb.destroy();
  await assert.rejects(async () => {
    for await (const _ of sb.events({ follow: false })) {
      // nothing: the sandbox is gone
    }
  }, SandboxNotFoundError);
});

test("the decoder: events split across chunks, comments, CRLF", () => {
  const text =
    'retry: 1000\r\n\r\n: keep-alive\n\nid: 7\nevent: stopped\ndata: {"seq":7,"type":"stopped","at":"2026-01-02T03:04:05.000000Z","data":{"reason":"idle for 10m"}}\n\n' +
    'id: 8\nevent: destroyed\ndata: {"seq":8,"type":"destroyed","at":"2026-01-02T03:04:06.000000Z","data":{}}\n\n';
  const bytes = new TextEncoder().encode(text);
  const decoder = new EventStreamDecoder();
  const events = [];
  for (let i = 0; i < bytes.length; i += 5) events.push(...decoder.feed(bytes.slice(i, i + 5)));
  assert.deepEqual(events.map((e) => [e.seq, e.type, e.reason]), [[7, "stopped", "idle for 10m"], [8, "destroyed", null]]);
  assert.equal(events[0].at.toISOString(), "2026-01-02T03:04:05.000Z");
});
