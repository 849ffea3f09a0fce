// Start one server for a whole test run: prints `URL HOME` then waits; SIGTERM stops it
// (destroying the sandboxes left) and sweeps its home.
import { startServer } from "./_server.mjs";

const srv = await startServer();
process.stdout.write(`${srv.url} ${srv.home}\n`);
const stop = async () => {
  await srv.stop();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
setInterval(() => {}, 1 << 30);
