import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { CommandTimeoutError, Sandbox, SandboxNotFoundError } from "../dist/index.js";
import { server } from "./_server.mjs";

const srv = await server();
let sb;
before(async () => {
  sb = await Sandbox.create({ baseUrl: srv.url, apiKey: srv.apiKey });
});
after(async () => sb?.destroy());

test("exec: a shell string with cwd, env, stdin; run: argv without a shell", async () => {
  const r = await sb.exec("echo hi | tr a-z A-Z; pwd; echo $FOO; cat", { cwd: "/tmp", env: { FOO: "bar" }, stdin: "from stdin" });
  assert.equal(r.stdout, "HI\n/tmp\nbar\nfrom stdin");
  assert.equal(r.command, "echo hi | tr a-z A-Z; pwd; echo $FOO; cat");
  assert.ok(r.duration >= 0 && r.duration < 60_000, String(r.duration));
  const argv = await sb.run("printf", ["%s|", "a b", "$HOME", "*"]);
  assert.equal(argv.stdout, "a b|$HOME|*|"); // no shell: nothing expanded
  const bin = await sb.run("od", ["-An", "-tx1"], { stdin: new Uint8Array([0, 255, 10]) });
  assert.equal(bin.stdout.trim(), "00 ff 0a");
  const fail = await sb.exec("echo oops >&2; exit 3");
  assert.deepEqual([fail.exitCode, fail.success, fail.stderr], [3, false, "oops\n"]);
  assert.equal((await sb.run("no-such-program")).exitCode, 127);
});

test("exec: onOutput gets the output live, before the command ends", async () => {
  const seen = [];
  const started = Date.now();
  const r = await sb.exec("echo one; sleep 0.5; echo two >&2", {
    onOutput: (stream, data) => seen.push([stream, data, Date.now() - started]),
  });
  assert.deepEqual(seen.map(([s, d]) => [s, d]), [["stdout", "one\n"], ["stderr", "two\n"]]);
  assert.ok(seen[1][2] - seen[0][2] >= 400, `the first chunk came ${seen[1][2] - seen[0][2]} ms before the second`);
  assert.equal(r.stdout, "one\n");
});

test("exec: a timeout kills the command and throws CommandTimeoutError with its output", async () => {
  await assert.rejects(sb.exec("echo before; sleep 30", { timeout: 500 }), (err) => {
    assert.ok(err instanceof CommandTimeoutError);
    assert.equal(err.result.stdout, "before\n");
    assert.equal(err.result.exitCode, 124);
    return true;
  });
});

test("execStream: typed events with byte offsets, start to complete", async () => {
  const events = [];
  for await (const ev of sb.execStream("printf abc; printf def >&2; printf ghi")) events.push(ev);
  assert.equal(events[0].type, "start");
  assert.ok(events[0].pid > 0);
  const last = events.at(-1);
  assert.deepEqual([last.type, last.exitCode, last.timedOut], ["complete", 0, false]);
  const out = events.filter((e) => e.type === "stdout");
  assert.equal(out.map((e) => e.data).join(""), "abcghi");
  let next = 0;
  for (const e of out) {
    assert.equal(e.offset, next);
    next += e.bytes.length;
  }
  assert.equal(events.filter((e) => e.type === "stderr").map((e) => e.data).join(""), "def");
});

test("execStream: leaving the loop early kills the command", async () => {
  for await (const ev of sb.execStream("echo go; sleep 60; echo never")) {
    if (ev.type === "stdout") break;
  }
  // The command's tree is gone: no `sleep 60` left running.
  let left = "";
  for (let i = 0; i < 50; i++) {
    left = (await sb.run("pgrep", ["-x", "sleep"])).stdout.trim();
    if (!left) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(left, "");
});

test("sessions keep cd and export between commands; setEnvVars reaches new commands", async () => {
  const s = await sb.createSession({ id: "work", env: { A: "1" } });
  assert.equal(s.id, "work");
  await s.exec("cd /tmp && export B=2");
  const r = await s.exec("pwd; echo $A$B");
  assert.equal(r.stdout, "/tmp\n12\n");
  const events = [];
  for await (const ev of s.execStream("echo streamed")) events.push(ev.type);
  assert.ok(events.includes("stdout") && events.at(-1) === "complete", events.join(","));
  assert.equal((await sb.getSession("work")).id, "work");
  await sb.deleteSession("work");
  await assert.rejects(sb.deleteSession("work"), (err) => err.code === "session_not_found");

  await sb.setEnvVars({ HUTCH_TS: "yes" });
  assert.equal((await sb.exec("echo $HUTCH_TS")).stdout, "yes\n");
  await sb.setEnvVars({ HUTCH_TS: null });
  assert.equal((await sb.exec("echo -n $HUTCH_TS")).stdout, "");
});

test("a destroyed sandbox answers SandboxNotFoundError", async () => {
  const gone = await Sandbox.create({ baseUrl: srv.url, apiKey: srv.apiKey });
  await gone.destroy();
  await assert.rejects(gone.exec("true"), SandboxNotFoundError);
});
