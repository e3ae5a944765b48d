#!/usr/bin/env bash
# Runs the whole test suite: installs the test dependencies if missing, builds every
# binary (the end-to-end tests run the real `smime-agent` and `smime`), then runs all
# tests and prints one closing line with the totals, then fuzzes the agent's frame decoder
# for 20 s (SMIME_FUZZ_SECONDS; 0 skips it).
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
install_all
echo "==> building"
cargo build --workspace --all-targets --locked
# The virtual PIV card, its own workspace (tests/pivemu/Cargo.lock); tests/e2e/piv.rs runs it.
cargo build --release --locked --manifest-path tests/pivemu/Cargo.toml
echo "==> testing"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# cargo prints one "test result:" line per test binary; add them up.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
# A short fuzz run of the socket frame and message decoder (the code hostile clients
# reach first); scripts/fuzz.sh runs longer and more targets. SMIME_FUZZ_SECONDS=0 skips it.
fuzz_secs=${SMIME_FUZZ_SECONDS:-20}
if [ "$status" -eq 0 ] && [ "$fuzz_secs" -gt 0 ]; then
    echo "==> fuzzing proto_decode for ${fuzz_secs}s"
    if ! scripts/fuzz.sh "$fuzz_secs" proto_decode; then
        echo "fuzz: proto_decode failed (see fuzz/artifacts/proto_decode/)"
        status=1
    fi
fi
exit "$status"
