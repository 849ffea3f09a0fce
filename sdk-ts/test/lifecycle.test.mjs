import assert from "node:assert/strict";
import { test } from "node:test";
import {
  HutchClient,
  InvalidRequestError,
  Sandbox,
  SandboxExistsError,
  SandboxNotFoundError,
  AuthenticationError,
  HutchConnectionError,
  Images,
  ImageNotFoundError,
} from "../dist/index.js";
import { freePort, server } from "./_server.mjs";

const srv = await server();
const opts = { baseUrl: srv.url, apiKey: srv.apiKey };

test("the seed example runs as written (HUTCH_URL / HUTCH_API_KEY from the environment)", async () => {
  process.env.HUTCH_URL = srv.url;
  process.env.HUTCH_API_KEY = srv.apiKey;
  try {
    const sandbox = await Sandbox.create();
    const result = await sandbox.run("python", ["-c", 'print("Hello from sandbox")']);
    assert.equal(result.stdout, "Hello from sandbox\n");
    assert.equal(result.exitCode, 0);
    assert.equal(result.success, true);
    const url = await sandbox.getPreviewUrl(8080);
    assert.match(url, new RegExp(`^http://8080-${sandbox.id}-[0-9a-f]{32}\\.localhost:\\d+/$`));
    await sandbox.destroy();
  } finally {
    delete process.env.HUTCH_URL;
    delete process.env.HUTCH_API_KEY;
  }
});

test("create, connect, getOrCreate, list by label, destroy, asyncDispose", async () => {
  const label = `t${Date.now()}`;
  const a = await Sandbox.create({ ...opts, labels: { suite: label }, env: { GREETING: "hi" } });
  assert.match(a.id, /^sb-[0-9a-f]{12}$/);
  assert.equal((await a.info()).status, "running");
  assert.equal((await a.exec("echo $GREETING")).stdout, "hi\n");

  const again = await Sandbox.connect(a.id, opts);
  assert.equal(again.id, a.id);

  const id = `ts-user-${Date.now()}`;
  const b = await Sandbox.getOrCreate(id, { ...opts, labels: { suite: label } });
  const b2 = await Sandbox.getOrCreate(id, opts);
  assert.equal(b.id, id);
  assert.equal(b2.id, id);
  await assert.rejects(Sandbox.create({ ...opts, id }), SandboxExistsError);

  const listed = (await Sandbox.list({ ...opts, labels: { suite: label } })).map((s) => s.id).sort();
  assert.deepEqual(listed, [a.id, id].sort());

  await a.destroy();
  await assert.rejects(Sandbox.connect(a.id, opts), (err) => {
    assert.ok(err instanceof SandboxNotFoundError);
    assert.equal(err.code, "sandbox_not_found");
    assert.equal(err.status, 404);
    assert.match(err.message, new RegExp(a.id));
    return true;
  });
  // `await using sandbox = ...` calls this when the block ends.
  await b[Symbol.asyncDispose]();
  await b[Symbol.asyncDispose](); // gone already: not an error
  await assert.rejects(Sandbox.connect(id, opts), SandboxNotFoundError);
});

test("bad input is a typed 4xx error carrying the server's message and fields", async () => {
  await assert.rejects(Sandbox.create({ ...opts, memoryMb: -5 }), (err) => {
    assert.ok(err instanceof InvalidRequestError);
    assert.equal(err.status, 422);
    assert.ok(err.fields.some((f) => f.loc.includes("memory_mb")), JSON.stringify(err.fields));
    return true;
  });
  await assert.rejects(Sandbox.getOrCreate("Not_Valid!", opts), (err) => err.code === "invalid_sandbox_id" && err instanceof InvalidRequestError);
  await assert.rejects(Sandbox.create({ ...opts, image: "no-such-image:1" }), ImageNotFoundError);
  await assert.rejects(Sandbox.list({ baseUrl: srv.url, apiKey: "hk_wrong" }), AuthenticationError);
  const port = await freePort();
  await assert.rejects(Sandbox.list({ baseUrl: `http://127.0.0.1:${port}`, apiKey: "x" }), HutchConnectionError);
  assert.throws(() => new HutchClient({ baseUrl: "ftp://x" }), /http\(s\) URL/);
});

test("images: list, get, tag, remove", async () => {
  const images = new Images(opts);
  const names = (await images.list()).map((i) => i.name);
  assert.ok(names.includes("default"), names.join(","));
  const detail = await images.get("default");
  assert.ok(detail.size_bytes > 0);
  const alias = `ts-alias-${Date.now()}:1`;
  const tagged = await images.tag("default", alias);
  assert.equal(tagged.name, alias);
  assert.equal((await images.get(alias)).id, tagged.id);
  await images.remove(alias);
  await assert.rejects(images.get(alias), ImageNotFoundError);
});
