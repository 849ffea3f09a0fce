import assert from "node:assert/strict";
import { request } from "node:http";
import { after, before, test } from "node:test";
import { InvalidPortError, PortNotExposedError, Sandbox } from "../dist/index.js";
import { server } from "./_server.mjs";

const srv = await server();
let sb;
before(async () => {
  sb = await Sandbox.create({ baseUrl: srv.url, apiKey: srv.apiKey });
});
after(async () => sb?.destroy());

// GET through the preview proxy: to the server's address, with the preview host as Host (this
// machine's resolver may not map *.localhost to loopback).
function previewGet(previewUrl) {
  const url = new URL(previewUrl);
  const api = new URL(srv.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: api.hostname, port: api.port, path: url.pathname, headers: { host: url.host } }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("exposePort gives a preview URL that reaches the sandbox's port; unexpose ends it", async () => {
  await sb.writeFile("/tmp/site/index.html", "hello from the sandbox");
  const web = await sb.startProcess("python3 -m http.server 8080", { cwd: "/tmp/site" });
  await web.waitForPort(8080, { mode: "http" });
  const exposed = await sb.exposePort(8080, { name: "web" });
  assert.deepEqual([exposed.port, exposed.name], [8080, "web"]);
  assert.equal(await sb.getPreviewUrl(8080), exposed.url);
  assert.deepEqual((await sb.getExposedPorts()).map((p) => p.port), [8080]);
  const page = await previewGet(exposed.url + "index.html");
  assert.deepEqual(page, { status: 200, body: "hello from the sandbox" });

  await sb.unexposePort(8080);
  assert.equal((await previewGet(exposed.url)).status, 404);
  await assert.rejects(sb.unexposePort(8080), PortNotExposedError);
  await assert.rejects(sb.exposePort(70000), InvalidPortError);
});

test("network policy: get and set", async () => {
  assert.equal((await sb.getNetwork()).network, "none");
  const n = await sb.setNetwork("none", { allow: ["203.0.113.0/24"] });
  assert.deepEqual(n.network_allow, ["203.0.113.0/24"]);
});
