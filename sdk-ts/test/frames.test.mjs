// The sans-I/O frame decoder, fed the real wire format in every chunking (no server needed).
import assert from "node:assert/strict";
import { test } from "node:test";
import { ExecStreamDecoder } from "../dist/exec.js";
import { FrameDecoder, FrameError, Kind, MAX_PAYLOAD, encodeFrame } from "../dist/frames.js";
import { SandboxUnavailableError } from "../dist/index.js";

const enc = new TextEncoder();
const json = (v) => enc.encode(JSON.stringify(v));

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const wire = concat([
  encodeFrame(Kind.EVENT, 0, json({ event: "started", pid: 12 })),
  encodeFrame(Kind.DATA, 0, enc.encode("héllo "), 1, 0),
  encodeFrame(Kind.DATA, 0, enc.encode("oops"), 2, 0),
  encodeFrame(Kind.DATA, 0, enc.encode("world"), 1, 7),
  encodeFrame(Kind.RESULT, 0, json({ exit_code: 3, duration: 0.25, timed_out: false })),
]);

test("every split of the stream decodes to the same events", () => {
  for (let cut = 0; cut <= wire.length; cut++) {
    for (const size of [1, 7, wire.length]) {
      const decoder = new ExecStreamDecoder("cmd");
      const events = [];
      const parts = [wire.subarray(0, cut), ...Array.from({ length: Math.ceil((wire.length - cut) / size) }, (_, i) => wire.subarray(cut + i * size, cut + (i + 1) * size))];
      for (const p of parts) events.push(...decoder.feed(p));
      decoder.close();
      assert.deepEqual(
        events.map((e) => (e.type === "start" ? ["start", e.pid] : e.type === "complete" ? ["complete", e.exitCode, e.duration] : [e.type, e.offset, e.data])),
        [["start", 12], ["stdout", 0, "héllo "], ["stderr", 0, "oops"], ["stdout", 7, "world"], ["complete", 3, 250]],
      );
    }
  }
});

test("a stream cut before its result, an error result and a hostile length are errors", () => {
  const cut = new ExecStreamDecoder("cmd");
  cut.feed(wire.subarray(0, wire.length - 3));
  assert.throws(() => cut.close(), /ended before the command's result/);

  const failed = new ExecStreamDecoder("cmd");
  assert.throws(
    () => failed.feed(encodeFrame(Kind.RESULT, 0, json({ error: { code: "sandbox_unavailable", message: "the agent did not answer" } }))),
    (err) => err instanceof SandboxUnavailableError && err.message === "the agent did not answer",
  );

  const header = encodeFrame(Kind.DATA, 0, new Uint8Array(0), 1, 0);
  new DataView(header.buffer).setUint32(14, MAX_PAYLOAD + 1);
  assert.throws(() => new FrameDecoder().feed(header), FrameError);
});
