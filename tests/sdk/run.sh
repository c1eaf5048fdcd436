#!/usr/bin/env bash
# Real-SDK smoke tests against the sidewire binary:
#   - npm `centrifuge` (JSON and Protobuf builds) under Node 20, with node's built-in test runner:
#     the same flow over websocket (json, protobuf), http_stream (json, protobuf) and sse (json),
#     one file each (run in parallel), plus transport fallback, and every transport through a
#     round-robin balancer in front of three replicas on Redis (replicas.test.mjs; needs
#     redis-server, installed by .ci/run)
#   - PyPI `centrifuge-python` (JSON and Protobuf) with pytest
#   - examples/chat in Debian's headless Chromium (tests/browser/run.sh; needs /usr/bin/chromium)
#   - PyPI `cent` (the server-API client): every Centrifugo OSS server API method, with pytest
#   - centrifuge-js -> sidecar -> the Python Link upstream of examples/upstream-python
#     (tests/sdk/js/python-upstream.test.mjs; needs grpcio + grpcio-tools from PyPI)
#   - centrifuge-js and centrifuge-python -> sidecar (proxy hooks) -> examples/centrifugo-backend,
#     a Node backend written for Centrifugo (tests/sdk/js/centrifugo-backend.test.mjs,
#     tests/sdk/python/test_proxy_backend.py; need only node)
#
# Usage (from anywhere):  tests/sdk/run.sh
# Needs a built binary: $SIDEWIRE_BIN if set, else <repo>/target/debug/sidewire.
# SIDEWIRE_TEST_LOG=1 copies the server's stderr into the test output.
# Runs both suites even if the first fails; exits non-zero if either failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

BIN="${SIDEWIRE_BIN:-$ROOT/target/debug/sidewire}"
case "$BIN" in
  /*) ;;
  *) BIN="$PWD/$BIN" ;;  # relative to the caller's directory
esac
if [[ ! -f "$BIN" || ! -x "$BIN" ]]; then
  echo "tests/sdk/run.sh: sidewire binary not found or not executable: $BIN" >&2
  echo "  build it first (cargo build), or point SIDEWIRE_BIN at it" >&2
  exit 2
fi
export SIDEWIRE_BIN="$BIN"

for tool in node npm python3; do
  command -v "$tool" >/dev/null || { echo "tests/sdk/run.sh: '$tool' not found on PATH" >&2; exit 2; }
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
  echo "tests/sdk/run.sh: Node >= 20 required, found $(node --version)" >&2
  exit 2
fi

cd "$ROOT"

echo "== installing SDK test dependencies"
npm ci --prefix tests/sdk/js --no-audit --no-fund
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check -r tests/sdk/python/requirements.txt
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check -r examples/upstream-python/requirements.txt

status=0
echo "== centrifuge-js (npm centrifuge) smoke tests, binary: $SIDEWIRE_BIN"
node --test tests/sdk/js/ || status=1
echo "== centrifuge-python and cent (server API) tests, binary: $SIDEWIRE_BIN"
python3 -m pytest tests/sdk/python -q || status=1
echo "== browser tests (examples/chat in headless Chromium)"
bash tests/browser/run.sh || status=1

if (( status != 0 )); then
  echo "tests/sdk/run.sh: SDK smoke or browser tests FAILED" >&2
fi
exit "$status"
