// The TypeScript SDK's side of bench/bench_ts.py: exec round trips and exec-stream throughput
// from Node, against a server and sandbox the Python driver made. Prints one JSON line.
//
//   node bench/bench_ts_node.mjs URL KEY SANDBOX_ID exec N
//   node bench/bench_ts_node.mjs URL KEY SANDBOX_ID stream BYTES
import { Sandbox } from "../sdk-ts/dist/index.js";

const [url, apiKey, id, what, count] = process.argv.slice(2);
const sb = await Sandbox.connect(id, { baseUrl: url, apiKey });

if (what === "exec") {
  const samples = [];
  for (let i = 0; i < 20; i++) await sb.run("true"); // warm the connection pool and the JIT
  for (let i = 0; i < Number(count); i++) {
    const t0 = performance.now();
    const r = await sb.run("true");
    samples.push((performance.now() - t0) / 1000);
    if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}`);
  }
  process.stdout.write(JSON.stringify({ samples }) + "\n");
} else if (what === "stream") {
  const size = Number(count);
  let got = 0;
  const t0 = performance.now();
  for await (const ev of sb.execStream(`head -c ${size} /dev/zero`)) {
    if (ev.type === "stdout") got += ev.bytes.length;
  }
  const seconds = (performance.now() - t0) / 1000;
  if (got !== size) throw new Error(`got ${got} of ${size} bytes`);
  process.stdout.write(JSON.stringify({ bytesPerSecond: size / seconds }) + "\n");
} else {
  throw new Error(`unknown measurement ${what}`);
}
