#!/usr/bin/env bash
# Browser tests: examples/chat in Debian's headless Chromium (driven by puppeteer-core from npm,
# no browser download) against the sidewire binary: WebSocket, fallback to http_stream and SSE,
# cross-origin pages (allowed and refused) on every transport, a streamed passthrough response.
#
# Usage (from anywhere):  tests/browser/run.sh
# Needs a built binary ($SIDEWIRE_BIN, else <repo>/target/debug/sidewire) and Chromium
# ($CHROMIUM_BIN, else /usr/bin/chromium: `apt-get install -y chromium`; .ci/run installs it).
# BROWSER_SCREENSHOTS=docs/img refreshes the README's screenshots.
# SIDEWIRE_TEST_LOG=1 copies sidewire's stderr into the output.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${SIDEWIRE_BIN:-$ROOT/target/debug/sidewire}"
case "$BIN" in
  /*) ;;
  *) BIN="$PWD/$BIN" ;;
esac
if [[ ! -x "$BIN" ]]; then
  echo "tests/browser/run.sh: sidewire binary not found or not executable: $BIN (cargo build, or set SIDEWIRE_BIN)" >&2
  exit 2
fi
export SIDEWIRE_BIN="$BIN"
CHROMIUM="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM" ]]; then
  echo "tests/browser/run.sh: Chromium not found at $CHROMIUM (apt-get install -y chromium, or set CHROMIUM_BIN)" >&2
  exit 2
fi
export CHROMIUM_BIN="$CHROMIUM"
case "${BROWSER_SCREENSHOTS:-}" in
  ''|/*) ;;
  *) export BROWSER_SCREENSHOTS="$PWD/$BROWSER_SCREENSHOTS" ;;
esac

cd "$ROOT"
echo "== installing browser test dependencies (examples/chat, puppeteer-core)"
npm ci --prefix examples/chat --no-audit --no-fund
npm ci --prefix tests/browser --no-audit --no-fund

echo "== examples/chat in headless Chromium ($("$CHROMIUM" --version 2>/dev/null | head -1)), binary: $SIDEWIRE_BIN"
start=$(date +%s)
status=0
node --test tests/browser/ || status=$?
echo "tests/browser/run.sh: browser tests took $(( $(date +%s) - start )) s"
exit "$status"
