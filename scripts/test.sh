#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, unit and integration tests
# (which start the real binary on ephemeral loopback ports), then the real-SDK suites
# (centrifuge-js under Node 20, centrifuge-python) and the browser tests (examples/chat in
# Debian's headless Chromium, tests/browser) against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo build"
cargo build --locked --workspace --bins

echo "== cargo test"
cargo test --locked --workspace --all-targets

echo "== passthrough suite again on the hyper path (backend.fast_path: false)"
# The owned fast path (src/edge/fast_pass.rs) serves these tests by default; run them once more
# with it off so hyper's path stays proven too (no_backend_is_404 has no backend section).
SIDEWIRE_BACKEND_FAST_PATH=false cargo test --locked --test operations passthrough:: -- \
    --skip no_backend_is_404

echo "== real SDK suites"
SIDEWIRE_BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/debug/sidewire" bash tests/sdk/run.sh
