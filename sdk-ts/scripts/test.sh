#!/usr/bin/env bash
# The TypeScript SDK's CI: install (npm ci, from the committed lock), check the generated types
# against the server's current OpenAPI, build with tsc, then run node's test runner against one
# real `hutch serve` (temp home, the shared image store) with real sandboxes. Run as root, after
# scripts/install and the default image build (scripts/test does both first).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v npm >/dev/null || { echo "sdk-ts: npm is missing; run scripts/install" >&2; exit 1; }
npm ci --no-audit --no-fund --loglevel=error
bash scripts/gen-types.sh --check
npm run --silent build
# The seed example and `await using`, type-checked against the built package's types.
node_modules/.bin/tsc -p examples/tsconfig.json

# The build test builds FROM busybox: make it in the shared image store as the Python suite's
# fixture does (a fresh machine has none; the same content id each time).
(cd .. && .venv/bin/python -c 'from hutch.runtime import ImageStore
from tests._server import SHARED_IMAGES
from tests.support.busybox import add_busybox_image
add_busybox_image(ImageStore(SHARED_IMAGES))')

out="$(mktemp)"
node test/_serve.mjs >"$out" &
serve=$!
# NB: the server process destroys the sandboxes left and sweeps its home when it gets SIGTERM.
trap 'kill -TERM $serve 2>/dev/null; wait $serve 2>/dev/null; rm -f "$out"' EXIT
until [[ -s "$out" ]]; do
  kill -0 "$serve" 2>/dev/null || { echo "sdk-ts: the test server did not start" >&2; exit 1; }
  sleep 0.1
done
read -r url _home <"$out"
HUTCH_TEST_URL="$url" node --test "$@" test/*.test.mjs
