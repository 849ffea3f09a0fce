// The seed, as written, plus `await using`: type-checked against the built package by
// scripts/test.sh (tsc --noEmit -p examples), so the public types keep accepting it.
import { Sandbox, CommandTimeoutError, type ExecEvent } from "@hutch/sandbox";

export async function seed(): Promise<string> {
  const sandbox = await Sandbox.create();
  const result = await sandbox.run("python", ["-c", 'print("Hello from sandbox")']);
  const url = await sandbox.getPreviewUrl(8080);
  await sandbox.destroy();
  return result.stdout + url;
}

export async function disposable(): Promise<number> {
  await using sandbox = await Sandbox.create({ image: "default", labels: { app: "demo" } });
  let bytes = 0;
  for await (const event of sandbox.execStream("head -c 1000 /dev/zero")) {
    const ev: ExecEvent = event;
    if (ev.type === "stdout") bytes += ev.bytes.length;
  }
  try {
    await sandbox.exec("sleep 10", { timeout: 100 });
  } catch (err) {
    if (err instanceof CommandTimeoutError) return err.result.exitCode;
  }
  return bytes;
}
