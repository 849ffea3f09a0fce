import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, test } from "node:test";
import {
  DirectoryNotEmptyError,
  FileNotFoundError,
  InvalidPathError,
  Sandbox,
  streamFile,
} from "../dist/index.js";
import { server } from "./_server.mjs";

const srv = await server();
let sb;
before(async () => {
  sb = await Sandbox.create({ baseUrl: srv.url, apiKey: srv.apiKey });
});
after(async () => sb?.destroy());

test("text and bytes, both ways, in the sandbox's own filesystem", async () => {
  const w = await sb.writeFile("notes/hello.txt", "héllo\n");
  assert.deepEqual(w, { success: true, path: "/workspace/notes/hello.txt", size: 7 });
  assert.equal((await sb.exec("cat /workspace/notes/hello.txt")).stdout, "héllo\n");
  const r = await sb.readFile("notes/hello.txt");
  assert.equal(r.content, "héllo\n");
  assert.equal(r.encoding, "utf-8");

  const bytes = new Uint8Array(256).map((_, i) => i);
  await sb.writeFile("/tmp/all.bin", bytes, { mode: 0o755 });
  assert.deepEqual(await sb.readFileBytes("/tmp/all.bin"), bytes);
  const b64 = await sb.readFile("/tmp/all.bin", { encoding: "base64" });
  assert.equal(b64.content, Buffer.from(bytes).toString("base64"));
  await sb.writeFile("/tmp/from64", Buffer.from("decoded").toString("base64"), { encoding: "base64" });
  assert.equal((await sb.readFile("/tmp/from64")).content, "decoded");
  assert.equal((await sb.stat("/tmp/all.bin")).mode, "rwxr-xr-x");
});

test("ReadableStream both ways: 8 MiB streamed up and down unchanged", async () => {
  const size = 8 * 1024 * 1024;
  const chunk = new Uint8Array(64 * 1024).map((_, i) => (i * 7) & 0xff);
  let sent = 0;
  const upload = new ReadableStream({
    pull(controller) {
      if (sent >= size) return controller.close();
      controller.enqueue(chunk.slice());
      sent += chunk.length;
    },
  });
  const w = await sb.writeFile("/tmp/big.bin", upload);
  assert.equal(w.size, size);
  const md5 = createHash("md5");
  for (let i = 0; i < size / chunk.length; i++) md5.update(chunk);
  assert.equal((await sb.exec("md5sum < /tmp/big.bin")).stdout.split(" ")[0], md5.digest("hex"));

  const stream = await sb.readFileStream("/tmp/big.bin");
  assert.ok(stream instanceof ReadableStream);
  let got = 0;
  let mismatch = -1;
  for await (const part of streamFile(stream)) {
    for (let i = 0; i < part.length && mismatch < 0; i++) {
      if (part[i] !== chunk[(got + i) % chunk.length]) mismatch = got + i;
    }
    got += part.length;
  }
  assert.equal(got, size);
  assert.equal(mismatch, -1);
});

test("mkdir, list, exists, rename, move, delete, remove", async () => {
  await sb.mkdir("/tmp/tree/a/b", { recursive: true });
  await sb.writeFile("/tmp/tree/a/one.txt", "1");
  await sb.writeFile("/tmp/tree/.hidden", "h");
  const top = await sb.listFiles("/tmp/tree");
  assert.deepEqual(top.files.map((f) => f.name), ["a"]);
  const all = await sb.listFiles("/tmp/tree", { recursive: true, includeHidden: true });
  assert.deepEqual(all.files.map((f) => f.relativePath).sort(), [".hidden", "a", "a/b", "a/one.txt"]);
  const one = all.files.find((f) => f.name === "one.txt");
  assert.deepEqual([one.type, one.size, one.absolutePath], ["file", 1, "/tmp/tree/a/one.txt"]);
  assert.ok(!Number.isNaN(Date.parse(one.modifiedAt)));

  assert.equal((await sb.exists("/tmp/tree/a/one.txt")).exists, true);
  await sb.renameFile("/tmp/tree/a/one.txt", "/tmp/tree/a/uno.txt");
  await sb.moveFile("/tmp/tree/a/uno.txt", "/tmp/tree/a/b/uno.txt");
  assert.equal((await sb.exists("/tmp/tree/a/one.txt")).exists, false);
  assert.equal((await sb.readFile("/tmp/tree/a/b/uno.txt")).content, "1");
  await sb.deleteFile("/tmp/tree/a/b/uno.txt");
  await assert.rejects(sb.readFile("/tmp/tree/a/b/uno.txt"), FileNotFoundError);
  await assert.rejects(sb.remove("/tmp/tree/a"), DirectoryNotEmptyError);
  await sb.remove("/tmp/tree", { recursive: true });
  assert.equal((await sb.exists("/tmp/tree")).exists, false);
  await assert.rejects(sb.readFile(""), InvalidPathError);
});

test("watch: changes arrive as typed events until aborted", async () => {
  await sb.mkdir("/tmp/watched", { recursive: true });
  const abort = new AbortController();
  const events = [];
  const watching = (async () => {
    for await (const ev of sb.watch("/tmp/watched", { signal: abort.signal })) {
      events.push(ev);
      if (events.some((e) => e.type === "delete")) abort.abort();
    }
  })();
  // The watch is set up once the stream's first event came: give it a moment, then act.
  await new Promise((r) => setTimeout(r, 500));
  await sb.exec("echo x > /tmp/watched/f.txt && mkdir /tmp/watched/d && rm /tmp/watched/f.txt");
  await Promise.race([watching, new Promise((_, no) => setTimeout(() => no(new Error(`no delete event: ${JSON.stringify(events)}`)), 15_000))]);
  assert.ok(events.some((e) => e.type === "create" && e.path.endsWith("f.txt") && !e.isDirectory), JSON.stringify(events));
  assert.ok(events.some((e) => e.type === "create" && e.path.endsWith("d") && e.isDirectory), JSON.stringify(events));
});

test("gitCheckout clones inside the sandbox", async () => {
  const setup = await sb.exec(
    "git init -q /tmp/origin && cd /tmp/origin && echo v1 > README && git add README && git -c user.email=t@t -c user.name=t commit -qm one && git branch -M main",
  );
  assert.equal(setup.exitCode, 0, setup.stderr);
  const r = await sb.gitCheckout("file:///tmp/origin", { branch: "main", targetDir: "/tmp/clone", depth: 1 });
  assert.equal(r.targetDir, "/tmp/clone");
  assert.match(r.commit, /^[0-9a-f]{40}$/);
  assert.equal((await sb.readFile("/tmp/clone/README")).content, "v1\n");
  await assert.rejects(sb.gitCheckout("ext::sh -c touch% /tmp/pwned"), (err) => err.code === "invalid_git_url");
});
