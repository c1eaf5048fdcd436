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

echo "== real SDK suites"
SIDEWIRE_BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/debug/sidewire" bash tests/sdk/run.sh
