// API keys and image builds through the API, against a real server.
import assert from "node:assert/strict";
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { AuthenticationError, ImageBuildFailedError, Images, Keys, KeyNotFoundError, Sandbox } from "../dist/index.js";
import { server } from "./_server.mjs";

const srv = await server();
const opts = { baseUrl: srv.url, apiKey: srv.apiKey };

test("keys: a created key works until it is deleted; its secret is shown once", async () => {
  const keys = new Keys(opts);
  const name = `ts-ci-${Date.now()}`;
  const created = await keys.create(name);
  assert.match(created.key, /^hk_/);
  assert.ok(created.key.startsWith(created.prefix));
  assert.ok(created.createdAt instanceof Date);
  const listed = (await keys.list()).find((k) => k.id === created.id);
  assert.equal(listed.name, name);
  assert.equal(listed.key, undefined); // never shown again

  await Sandbox.list({ baseUrl: srv.url, apiKey: created.key }); // the new key is accepted
  await keys.delete(created.id);
  await assert.rejects(Sandbox.list({ baseUrl: srv.url, apiKey: created.key }), AuthenticationError);
  await assert.rejects(keys.delete(created.id), (err) => err instanceof KeyNotFoundError && err.code === "key_not_found");
});

test("build: a directory context and a Dockerfile outside it; progress lines, then a runnable image", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hutch-ts-build-"));
  const name = `ts-build-${Date.now()}:1`;
  const images = new Images(opts);
  try {
    await mkdir(join(dir, "app", "sub"), { recursive: true });
    await writeFile(join(dir, "app", "hello.txt"), "hello from the context\n");
    await writeFile(join(dir, "app", "sub", "n".repeat(120) + ".txt"), "a long name\n"); // past ustar's 100 bytes
    await writeFile(join(dir, "elsewhere.Dockerfile"), "FROM busybox\nENV BUILT=yes\nCOPY . /srv/\n");
    const lines = [];
    const image = await images.build(name, join(dir, "app"), {
      dockerfile: join(dir, "elsewhere.Dockerfile"),
      onProgress: (line) => lines.push(line),
    });
    assert.equal(image.name, name);
    assert.ok(lines.some((l) => l.startsWith("STEP")), lines.join("\n"));
    const sb = await Sandbox.create({ ...opts, image: name });
    try {
      const out = await sb.exec(`echo $BUILT; cat /srv/hello.txt /srv/sub/${"n".repeat(120)}.txt`);
      assert.equal(out.stdout, "yes\nhello from the context\na long name\n");
    } finally {
      await sb.destroy();
    }
  } finally {
    await images.remove(name).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
});

test("build: a failing step is ImageBuildFailedError with the build's last lines", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hutch-ts-build-"));
  try {
    await writeFile(join(dir, "Dockerfile"), "FROM scratch\nCOPY Dockerfile /x\nRUN /no/such/program\n");
    await assert.rejects(new Images(opts).build(`ts-fail-${Date.now()}:1`, dir), (err) => {
      assert.ok(err instanceof ImageBuildFailedError, String(err));
      assert.equal(err.code, "image_build_failed");
      assert.match(err.outputTail.join("\n"), /\/no\/such\/program/);
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
