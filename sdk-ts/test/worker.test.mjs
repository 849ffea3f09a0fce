import assert from "node:assert/strict";
import { test } from "node:test";
import worker from "./worker.mjs";
import { server } from "./_server.mjs";

const srv = await server();
const env = { Sandbox: { note: "a Durable Object namespace in Cloudflare; unused by Hutch" }, HUTCH_URL: srv.url, HUTCH_API_KEY: srv.apiKey };

test("a Worker-style fetch handler runs the same SDK code", async () => {
  const id = `worker-${Date.now()}`;
  const run = await worker.fetch(new Request(`http://worker/run?id=${id}`, { method: "POST", body: "print(6 * 7)" }), env);
  assert.deepEqual(await run.json(), { stdout: "42\n", exitCode: 0 });

  // A request body streamed into the sandbox and the file streamed back as the response.
  const file = await worker.fetch(
    new Request(`http://worker/file?id=${id}`, { method: "POST", body: "streamed through", duplex: "half" }),
    env,
  );
  assert.equal(await file.text(), "streamed through");

  const { preview } = await (await worker.fetch(new Request(`http://worker/preview?id=${id}`), env)).json();
  assert.match(preview, new RegExp(`^http://8080-${id}-`));
  assert.equal((await worker.fetch(new Request(`http://worker/destroy?id=${id}`), env)).status, 204);
});
