// A real `hutch serve` for the tests: one per run (scripts/test.sh starts it and sets
// HUTCH_TEST_URL), or one per test file when a file is run alone.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, openSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after } from "node:test";

export const REPO = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const PYTHON = process.env.HUTCH_PYTHON ?? join(REPO, ".venv", "bin", "python");
export const HUTCH = join(dirname(PYTHON), "hutch");
export const TEST_KEY = "hk_test_" + "k".repeat(32);
export const IMAGES = process.env.HUTCH_TEST_IMAGES ?? "/var/lib/hutch/images";

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function startServer() {
  const home = mkdtempSync("/var/tmp/hutch-ts-test-");
  const port = await freePort();
  const log = openSync(join(home, "server.log"), "a");
  const proc = spawn(HUTCH, ["serve", "--host", "127.0.0.1", "--port", String(port)], {
    env: { ...process.env, HUTCH_HOME: home, HUTCH_IMAGES_DIR: IMAGES, HUTCH_API_KEY: TEST_KEY, HUTCH_STORAGE_SIZE_GB: "32" },
    stdio: ["ignore", log, log],
    detached: true,
  });
  const url = `http://127.0.0.1:${port}`;
  // NB: generous: on a machine shared with other test runs, start-up took over a minute.
  const deadline = Date.now() + 180_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`hutch serve exited (${proc.exitCode}); see ${home}/server.log`);
    try {
      if ((await fetch(url + "/healthz")).ok) break;
    } catch {}
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`hutch serve did not answer; see ${home}/server.log`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    apiKey: TEST_KEY,
    home,
    async stop() {
      // Sandboxes outlive the server by design: destroy what the tests left, then sweep.
      await destroyAll(url, TEST_KEY);
      proc.kill("SIGTERM");
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once("exit", r)));
      execFileSync(PYTHON, [join(REPO, "sdk-ts", "scripts", "sweep_home.py"), home], { stdio: "inherit" });
    },
  };
}

async function destroyAll(url, key) {
  const headers = { authorization: `Bearer ${key}` };
  try {
    const { sandboxes } = await (await fetch(url + "/v1/sandboxes", { headers })).json();
    await Promise.all(sandboxes.map((s) => fetch(`${url}/v1/sandboxes/${s.id}`, { method: "DELETE", headers })));
  } catch {}
}

let shared;
/** The server for this test file: the run's one, or a new one stopped after the file. */
export async function server() {
  if (process.env.HUTCH_TEST_URL) {
    return { url: process.env.HUTCH_TEST_URL, apiKey: process.env.HUTCH_TEST_KEY ?? TEST_KEY };
  }
  if (!shared) {
    shared = startServer();
    after(async () => (await shared).stop());
  }
  return shared;
}
