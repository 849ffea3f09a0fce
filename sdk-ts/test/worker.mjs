// A Cloudflare-Worker-style module, written as one would for `@cloudflare/sandbox`: only the
// import differs. The test calls its `fetch` with a web Request, as the Workers runtime does.
import { getSandbox } from "../dist/index.js";

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const sandbox = getSandbox(env.Sandbox, url.searchParams.get("id") ?? "worker-default", {
      baseUrl: env.HUTCH_URL,
      apiKey: env.HUTCH_API_KEY,
    });
    if (url.pathname === "/run") {
      const code = await request.text();
      const result = await sandbox.exec(`python3 -c '${code.replaceAll("'", "'\\''")}'`);
      return Response.json({ stdout: result.stdout, exitCode: result.exitCode });
    }
    if (url.pathname === "/file") {
      await sandbox.writeFile("/workspace/upload.txt", request.body ?? "");
      const stream = await sandbox.readFileStream("/workspace/upload.txt");
      return new Response(stream, { headers: { "content-type": "text/plain" } });
    }
    if (url.pathname === "/preview") {
      const { url: preview } = await sandbox.exposePort(8080);
      return Response.json({ preview });
    }
    if (url.pathname === "/destroy") {
      await sandbox.destroy();
      return new Response(null, { status: 204 });
    }
    return new Response("not found", { status: 404 });
  },
};
