// The core is web-standard: what ships in dist/ imports only its own modules (no `node:`
// modules, no packages), so it loads in Workers and browsers as it does in Node.
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const dist = join(dirname(fileURLToPath(import.meta.url)), "..", "dist");

test("dist/ imports nothing but its own modules", () => {
  const files = readdirSync(dist).filter((f) => f.endsWith(".js"));
  assert.ok(files.includes("index.js"));
  const foreign = [];
  for (const file of files) {
    // Comments hold examples (`import { Sandbox } from "@hutch/sandbox"`): only code counts.
    const text = readFileSync(join(dist, file), "utf8").replace(/\/\*[\s\S]*?\*\/|^\s*\/\/.*$/gm, "");
    for (const [, spec] of text.matchAll(/(?:import|export)\s[^;]*?from\s+["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)|require\(/g)) {
      if (spec === undefined || !spec.startsWith("./")) foreign.push(`${file}: ${spec ?? "require/dynamic import"}`);
    }
    if (/\bBuffer\.|__dirname|\brequire\(/.test(text)) foreign.push(`${file}: a Node-only global`);
  }
  assert.deepEqual(foreign, []);
});
