#!/usr/bin/env bash
# The demo: installs what is missing, builds, provisions a SoftHSM token with test keys,
# starts the agent, lists its keys, signs a file with a key that never leaves the token,
# and verifies the signature with `smime verify` and with `openssl cms -verify`.
# Usage: scripts/demo.sh [DIR]   (default DIR: ./demo; reruns reuse it)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
install_all
echo "==> building (release)"
cargo build --release --locked -p smime-agent -p smime
BIN=$PWD/target/release

DIR=$(realpath -m "${1:-demo}")
echo "==> provisioning a SoftHSM token in $DIR"
softhsm-config/provision "$DIR"
. "$DIR/env"

SOCK_DIR=$(mktemp -d /tmp/smime-demo-XXXXXX)   # mktemp makes it 0700
export SMIME_AGENT_SOCK=$SOCK_DIR/agent.sock
echo "==> starting the agent on $SMIME_AGENT_SOCK"
"$BIN/smime-agent" --foreground >"$DIR/agent.log" 2>&1 &
AGENT=$!
trap 'kill $AGENT 2>/dev/null; wait $AGENT 2>/dev/null; rm -rf "$SOCK_DIR"' EXIT
for _ in $(seq 100); do [ -S "$SMIME_AGENT_SOCK" ] && break; sleep 0.1; done
[ -S "$SMIME_AGENT_SOCK" ] || { cat "$DIR/agent.log"; echo "agent did not start"; exit 1; }

echo "==> smime keys"
"$BIN/smime" keys

printf 'Hello from smime-agent.\r\nThis file was signed by a key that never left the token.\r\n' >"$DIR/sample.txt"
echo "==> smime sign --key alice-rsa  (and alice-ec)"
"$BIN/smime" sign --key alice-rsa --in "$DIR/sample.txt" --out "$DIR/sample.rsa.p7s"
"$BIN/smime" sign --key alice-ec --in "$DIR/sample.txt" --out "$DIR/sample.ec.p7s"

ok=0
for s in rsa ec; do
    echo "==> verifying sample.$s.p7s"
    "$BIN/smime" verify --in "$DIR/sample.$s.p7s" --content "$DIR/sample.txt" --trust "$DIR/ca.pem" || ok=1
    openssl cms -verify -binary -inform DER -in "$DIR/sample.$s.p7s" -content "$DIR/sample.txt" \
        -CAfile "$DIR/ca.pem" -purpose smimesign -out /dev/null || ok=1
done
if [ $ok -eq 0 ]; then
    echo "==> DEMO OK: both signatures verified by smime and by OpenSSL (files in $DIR)"
else
    echo "==> DEMO FAILED (agent log: $DIR/agent.log)"
fi
exit $ok
