import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { BackupNotFoundError, BackupTargetUnreachableError, BucketMountFailedError, BucketNotMountedError, Sandbox } from "../dist/index.js";
import { PYTHON, freePort, server } from "./_server.mjs";

const srv = await server();
let sb;
let s3;
let root;
const key = { accessKeyId: "HUTCHTSKEY", secretAccessKey: "hutch-ts-secret-" + Date.now() };

before(async () => {
  // A real S3 server (`rclone serve s3`, as the Python tests use) over a directory on loopback.
  root = mkdtempSync("/var/tmp/hutch-ts-s3-");
  mkdirSync(join(root, "data"));
  writeFileSync(join(root, "data", "hello.txt"), "from the bucket\n");
  const port = await freePort();
  s3 = spawn(join(dirname(PYTHON), "rclone"), ["serve", "s3", "--addr", `127.0.0.1:${port}`, "--auth-key", `${key.accessKeyId},${key.secretAccessKey}`, "--config", "/dev/null", "--dir-cache-time", "0s", root], { stdio: "ignore" });
  s3.endpoint = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      await fetch(s3.endpoint);
      break;
    } catch {
      if (i > 300) throw new Error("rclone serve s3 did not start");
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  sb = await Sandbox.create({ baseUrl: srv.url, apiKey: srv.apiKey });
});
after(async () => {
  // NB: rclone is killed whatever happens, or a failed destroy leaves node waiting on it.
  try {
    await sb?.destroy();
  } finally {
    s3?.kill();
    rmSync(root, { recursive: true, force: true });
  }
});

test("mountBucket: the bucket's objects are files in the sandbox, both ways", async () => {
  const m = await sb.mountBucket("data", "/mnt/data", { endpoint: s3.endpoint, credentials: key });
  assert.deepEqual([m.mount_path, m.bucket, m.read_only], ["/mnt/data", "data", false]);
  assert.equal((await sb.readFile("/mnt/data/hello.txt")).content, "from the bucket\n");
  await sb.exec("echo from the sandbox > /mnt/data/back.txt");
  assert.deepEqual((await sb.listBucketMounts()).map((x) => x.mount_path), ["/mnt/data"]);
  await sb.unmountBucket("/mnt/data");
  assert.equal(readFileSync(join(root, "data", "back.txt"), "utf8"), "from the sandbox\n");
  await assert.rejects(sb.unmountBucket("/mnt/data"), BucketNotMountedError);
  await assert.rejects(
    sb.mountBucket("data", "/mnt/bad", { endpoint: s3.endpoint, credentials: { accessKeyId: "wrong", secretAccessKey: "wrong" } }),
    BucketMountFailedError,
  );
});

test("backup, incremental backup, listBackups, restore; bad targets are typed errors", async () => {
  const bucket = `bk${Date.now() % 1e9}`;
  mkdirSync(join(root, bucket));
  const where = { endpoint: s3.endpoint, credentials: key, prefix: "team/a" };
  const opts = { baseUrl: srv.url, apiKey: srv.apiKey };
  const box = await Sandbox.create(opts);
  const restored = [];
  try {
    await box.exec("mkdir -p /proj && echo one > /proj/f");
    const first = await box.backup(bucket, where);
    assert.match(first.id, /^bk-/);
    assert.equal(first.parentId, null);
    assert.equal(first.sandboxId, box.id);
    await box.exec("echo two > /proj/f");
    const second = await box.backup(bucket, where);
    assert.equal(second.parentId, first.id); // incremental against the first
    assert.deepEqual((await box.listBackups()).map((b) => b.id), [first.id, second.id]);

    restored.push(await Sandbox.restore(second.id, bucket, { ...where, ...opts, labels: { from: "backup" } }));
    assert.equal((await restored[0].exec("cat /proj/f")).stdout, "two\n");
    assert.deepEqual((await restored[0].info()).labels, { from: "backup" });
    restored.push(await Sandbox.restore(first.id, bucket, { ...where, ...opts }));
    assert.equal((await restored[1].exec("cat /proj/f")).stdout, "one\n");

    await assert.rejects(box.backup("no-such-bucket", where), (err) => {
      assert.ok(err instanceof BackupTargetUnreachableError && err instanceof BucketMountFailedError);
      assert.equal(err.code, "backup_target_unreachable");
      return true;
    });
    assert.equal((await box.listBackups()).length, 2); // nothing was written
    await assert.rejects(Sandbox.restore("bk-000000000000", bucket, { ...where, ...opts }), (err) => err instanceof BackupNotFoundError && err.code === "backup_not_found");
  } finally {
    for (const r of restored) await r.destroy();
    await box.destroy();
  }
});
