// Lifecycle operations, snapshots, forks, lifetimes and metrics against a real server.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  InvalidRequestError,
  Sandbox,
  SandboxStateConflictError,
  SnapshotExistsError,
  SnapshotNotFoundError,
} from "../dist/index.js";
import { server } from "./_server.mjs";

const srv = await server();
const opts = { baseUrl: srv.url, apiKey: srv.apiKey };

test("pause freezes it, the next exec wakes it, resume and info show the state", async () => {
  const sb = await Sandbox.create(opts);
  try {
    await sb.exec("echo kept > /tmp/mem");
    const paused = await sb.pause();
    assert.equal(paused.status, "paused");
    assert.equal(paused.statusReason, "paused by request");
    assert.equal(paused.expiresAt, null); // an explicit pause stops the lifetime clock
    assert.equal((await sb.info()).status, "paused");
    assert.equal((await sb.exec("cat /tmp/mem")).stdout, "kept\n"); // any call wakes it
    const info = await sb.info();
    assert.equal(info.status, "running");
    assert.ok(info.expiresAt instanceof Date, "resuming gives the lifetime back");
    assert.equal((await sb.resume()).status, "running"); // running already: no-op
  } finally {
    await sb.destroy();
  }
});

test("stop keeps the disk, start boots it again; pause of a stopped one is invalid_state", async () => {
  const sb = await Sandbox.create(opts);
  try {
    await sb.writeFile("/data/f", "persisted\n");
    const stopped = await sb.stop();
    assert.equal(stopped.status, "stopped");
    assert.equal(stopped.statusReason, "stopped by request");
    await assert.rejects(sb.pause(), (err) => {
      assert.ok(err instanceof SandboxStateConflictError);
      assert.equal(err.status, 409);
      assert.equal(err.code, "invalid_state");
      return true;
    });
    assert.equal((await sb.start()).status, "running");
    assert.equal((await sb.readFile("/data/f")).content, "persisted\n");
  } finally {
    await sb.destroy();
  }
});

test("a snapshot starts new sandboxes with its files; listSnapshots, deleteSnapshot", async () => {
  const sb = await Sandbox.create(opts);
  const name = `ts-snap-${Date.now()}`;
  let fromSnap;
  try {
    await sb.writeFile("/data/snap.txt", "in the snapshot\n");
    const snap = await sb.snapshot(name);
    assert.match(snap.id, /^snap-/);
    assert.equal(snap.name, name);
    assert.equal(snap.sandboxId, sb.id);
    assert.ok(snap.createdAt instanceof Date);
    await assert.rejects(sb.snapshot(name), SnapshotExistsError);
    await sb.writeFile("/data/snap.txt", "changed after\n");

    fromSnap = await Sandbox.create({ ...opts, snapshot: snap.id });
    assert.equal((await fromSnap.readFile("/data/snap.txt")).content, "in the snapshot\n");

    const listed = await Sandbox.listSnapshots({ ...opts, sandboxId: sb.id });
    assert.deepEqual(listed.map((s) => s.id), [snap.id]);
    await Sandbox.deleteSnapshot(name, opts);
    assert.deepEqual(await Sandbox.listSnapshots({ ...opts, sandboxId: sb.id }), []);
    await assert.rejects(Sandbox.deleteSnapshot(snap.id, opts), (err) => err instanceof SnapshotNotFoundError && err.code === "snapshot_not_found");
    // sandboxes started from it are not affected
    assert.equal((await fromSnap.exec("cat /data/snap.txt")).stdout, "in the snapshot\n");
  } finally {
    await fromSnap?.destroy();
    await sb.destroy();
  }
});

test("fork makes running copies of its filesystem that then go their own way", async () => {
  const sb = await Sandbox.create(opts);
  let forks = [];
  try {
    await sb.writeFile("/data/f", "parent\n");
    forks = await sb.fork(2);
    assert.equal(forks.length, 2);
    assert.equal(new Set([sb.id, ...forks.map((f) => f.id)]).size, 3);
    for (const f of forks) assert.equal((await f.readFile("/data/f")).content, "parent\n");
    await forks[0].writeFile("/data/f", "child\n");
    assert.equal((await sb.readFile("/data/f")).content, "parent\n");
    assert.equal((await forks[1].readFile("/data/f")).content, "parent\n");
    await assert.rejects(sb.fork(0), InvalidRequestError);
  } finally {
    for (const f of forks) await f.destroy();
    await sb.destroy();
  }
});

test("setTimeout moves expiresAt (milliseconds or a duration string); a bad duration is invalid_request", async () => {
  const sb = await Sandbox.create({ ...opts, timeout: "2h", onTimeout: "stop", onIdle: "stop", sleepAfter: "30m" });
  try {
    const created = await sb.info();
    assert.equal(created.timeout, 7200);
    assert.equal(created.onTimeout, "stop");
    assert.equal(created.onIdle, "stop");
    assert.equal(created.sleep_after, 1800);
    const left = (created.expiresAt.getTime() - Date.now()) / 1000;
    assert.ok(left > 7000 && left <= 7200, String(left));

    const later = await sb.setTimeout("1h30m");
    assert.equal(later.timeout, 5400);
    const left2 = (later.expiresAt.getTime() - Date.now()) / 1000;
    assert.ok(left2 > 5300 && left2 <= 5400, String(left2));
    assert.equal((await sb.setTimeout(600_000)).timeout, 600);
    assert.equal((await sb.setTimeout(0)).expiresAt, null); // 0: no limit

    await assert.rejects(sb.setTimeout("ten minutes"), (err) => {
      assert.ok(err instanceof InvalidRequestError);
      assert.equal(err.code, "invalid_request");
      assert.match(err.message, /"10m"/);
      return true;
    });
    await assert.rejects(Sandbox.create({ ...opts, sleepAfter: "soon" }), (err) => err instanceof InvalidRequestError && err.code === "invalid_request");
  } finally {
    await sb.destroy();
  }
});

test("metrics: the memory limit it was created with, and what it uses", async () => {
  const sb = await Sandbox.create({ ...opts, memoryMb: 256 });
  try {
    const m = await sb.metrics();
    assert.equal(m.memoryLimitBytes, 256 * 1024 * 1024);
    assert.ok(m.memoryUsedBytes > 0);
    assert.ok(m.pids >= 1 && m.pidsLimit > m.pids);
    assert.ok(Array.isArray(m.history));
    assert.ok(Math.abs(m.timestamp - Date.now() / 1000) < 60);
  } finally {
    await sb.destroy();
  }
});
