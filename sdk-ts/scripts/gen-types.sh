#!/usr/bin/env bash
# Regenerate src/api.gen.ts from the server's OpenAPI document; with --check, fail when the
# committed file differs from what the current server code gives (the types went stale).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/.." && pwd)"
python="${HUTCH_PYTHON:-$repo/.venv/bin/python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" "$here/scripts/dump_openapi.py" > "$tmp/openapi.json"
(cd "$here" && node_modules/.bin/openapi-typescript "$tmp/openapi.json" -o "$tmp/api.gen.ts" --default-non-nullable=false --silent)
if [[ "${1:-}" == "--check" ]]; then
  if ! diff -q "$tmp/api.gen.ts" "$here/src/api.gen.ts" >/dev/null; then
    diff -u "$here/src/api.gen.ts" "$tmp/api.gen.ts" | head -40 >&2 || true
    echo "sdk-ts/src/api.gen.ts is stale: the server's /openapi.json changed; run sdk-ts/scripts/gen-types.sh and commit" >&2
    exit 1
  fi
else
  cp "$tmp/api.gen.ts" "$here/src/api.gen.ts"
fi
