#!/usr/bin/env bash
# Benchmarks smime-agent and smime against raw PKCS#11 (SoftHSM), `openssl cms` with the
# pkcs11 engine and gpgsm with gnupg-pkcs11-scd, in one run, and rewrites the generated
# part of BENCHMARKS.md (the text outside its smime-bench markers is kept).
#
# Usage: scripts/bench.sh [extra smime-bench args, e.g. --secs 3 --sizes 100]
#
# Installs what it needs (Debian 12, as root or with sudo), builds the release binaries,
# provisions a throwaway token in a temporary directory, runs target/release/smime-bench and
# deletes the temporary directory (it holds up to 1 GiB files plus their outputs, ~4 GiB).
# Takes about 5 minutes on 2 cores. Not part of CI or the tests: it measures time and
# needs a quiet machine; it refuses to run when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${CI:-}" ]; then
    echo "bench.sh: CI is set; benchmarks are not run in CI (unset CI to run anyway)" >&2
    exit 2
fi

# The test dependencies, plus what only the benchmark needs.
. scripts/deps.sh
install_apt libengine-pkcs11-openssl   # openssl cms with the token key (the peer)

# Rust: the same toolchain setup as the tests (rustup stable if cargo is missing or old).
install_rust

echo "==> building (release)"
cargo build --release --workspace --locked
# The agent's startup code is laid out together by agent/startup.order (agent/build.rs);
# names this build no longer has are ignored, and the idle RSS grows back by about 1 MiB.
# The file holds the names of four builds (scripts/order-agent.sh, which regenerates it);
# a current one matches about 700 of them, a stale one far fewer.
echo "==> agent/startup.order: $(nm target/release/smime-agent | awk 'NR == FNR { have[$NF]; next } $0 in have { n++ } END { printf "%d of %d", n, FNR }' - agent/startup.order) names found in the agent binary (about 700 when current)"

# Short path: gpg-agent puts its sockets under the gpgsm home inside it.
WORK=$(mktemp -d /tmp/smime-bench.XXXXXX)
cleanup() { rm -rf -- "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

echo "==> provisioning a token in $WORK/token"
softhsm-config/provision "$WORK/token" >/dev/null

echo "==> load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
target/release/smime-bench \
    --token "$WORK/token" \
    --work "$WORK/run" \
    --bin target/release \
    --out BENCHMARKS.md \
    --command "scripts/bench.sh${*:+ $*}" \
    "$@" | tee "$WORK/report.md"
echo "==> BENCHMARKS.md updated"
