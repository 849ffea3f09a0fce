import assert from "node:assert/strict";
import { connect } from "node:net";
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
// machine's resolver may not map *.localhost to loopback). A raw socket and `Connection: close`:
// the proxy's own 404 on a keep-alive connection carries 2 bytes more than its Content-Length
// (src/hutch/server/_proxy.py _simple_response), which node's HTTP parser refuses.
function previewGet(previewUrl) {
  const url = new URL(previewUrl);
  const api = new URL(srv.url);
  return new Promise((resolve, reject) => {
    const sock = connect(Number(api.port), api.hostname, () => {
      sock.write(`GET ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n\r\n`);
    });
    let data = Buffer.alloc(0);
    sock.on("error", reject);
    sock.on("data", (d) => {
      data = Buffer.concat([data, d]);
      const text = data.toString();
      const split = text.indexOf("\r\n\r\n");
      if (split < 0) return;
      const length = Number(/content-length: *(\d+)/i.exec(text.slice(0, split))?.[1] ?? 0);
      const body = data.subarray(split + 4).toString();
      // NB: answer once the declared length is in; the proxy may keep the connection open.
      if (Buffer.byteLength(body) < length) return;
      sock.destroy();
      resolve({ status: Number(text.split(" ")[1]), body: body.trim() });
    });
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
