#!/usr/bin/env bash
# Runs the chat example: the app on 127.0.0.1:3000 and sidewire (release build) on :8000 in
# front of it. Open http://localhost:8000/ in two browser tabs; try ?transports=sse or
# ?broken=websocket. Ctrl-C stops both.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
npm ci --prefix "$HERE" --no-audit --no-fund
SIDEWIRE_API=http://127.0.0.1:9100 SIDEWIRE_API_KEY=chat-example-key PORT=3000 node "$HERE/server.mjs" &
app=$!
trap 'kill "$app" 2>/dev/null || true' EXIT
cd "$ROOT"
cargo run --release -- --config examples/chat/sidewire.yaml
