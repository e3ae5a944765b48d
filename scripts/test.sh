#!/usr/bin/env bash
# Runs the whole test suite: installs the test dependencies if missing, builds every
# binary (the end-to-end tests run the real `smime-agent` and `smime`), then runs all
# tests. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
install_all
echo "==> building"
cargo build --workspace --all-targets --locked
echo "==> testing"
cargo test --workspace --locked "$@"
