// Copy the browser builds of the npm dependencies into static/vendor, where the Hutch server
// serves them. Run by scripts/install after `npm ci`; static/vendor is not committed.
const fs = require("fs");
const path = require("path");

const files = {
  "@xterm/xterm/lib/xterm.js": "xterm.js",
  "@xterm/xterm/css/xterm.css": "xterm.css",
  "@xterm/addon-fit/lib/addon-fit.js": "addon-fit.js",
};
const out = path.join(__dirname, "static", "vendor");
fs.mkdirSync(out, { recursive: true });
for (const [from, to] of Object.entries(files)) {
  fs.copyFileSync(require.resolve(from), path.join(out, to));
  console.log(`hutch console: ${from} -> static/vendor/${to}`);
}
