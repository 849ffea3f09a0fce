// A create answered 503 create_busy (the server made nothing: too many sandboxes were
// starting) is sent again after the server's Retry-After; any other 503 is raised at once.
// The server here is a stand-in on loopback that speaks Hutch's error shape.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";

import { APIError, Sandbox } from "../dist/index.js";

async function busyServer(busy, code = "create_busy") {
  const creates = [];
  const server = createServer((req, res) => {
    if (req.method !== "POST" || req.url !== "/v1/sandboxes") {
      res.writeHead(404).end();
      return;
    }
    creates.push(performance.now());
    req.resume();
    req.on("end", () => {
      if (busy > 0) {
        busy -= 1;
        const error = { code, message: "too many sandboxes starting; retry in 1 s" };
        res.writeHead(503, { "content-type": "application/json", "retry-after": "1" });
        res.end(JSON.stringify({ error }));
        return;
      }
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify({ id: "sb-made", status: "running", image: "busybox" }));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  return { url, creates, close: () => new Promise((resolve) => server.close(resolve)) };
}

test("a busy create is sent again after Retry-After", async () => {
  const fake = await busyServer(2);
  try {
    const sb = await Sandbox.create({ image: "busybox", baseUrl: fake.url, apiKey: "k" });
    assert.equal(sb.id, "sb-made");
    assert.equal(fake.creates.length, 3);
    assert.ok(fake.creates[1] - fake.creates[0] >= 950, "waited the server's Retry-After");
  } finally {
    await fake.close();
  }
});

test("another 503 is raised, not sent again", async () => {
  const fake = await busyServer(1, "sandbox_start_failed");
  try {
    await assert.rejects(
      Sandbox.create({ image: "busybox", baseUrl: fake.url, apiKey: "k" }),
      (err) => err instanceof APIError && err.status === 503 && err.code === "sandbox_start_failed",
    );
    assert.equal(fake.creates.length, 1);
  } finally {
    await fake.close();
  }
});
