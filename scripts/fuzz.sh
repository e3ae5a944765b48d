#!/usr/bin/env bash
# Fuzzes the parsers that see hostile input: socket frames (proto_decode), CMS signatures
# (cms_verify), enveloped CMS (cms_decrypt) and S/MIME entities (mime_parse).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]
# Seeds are made fresh with OpenSSL. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
install_all
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(proto_decode cms_verify cms_decrypt mime_parse)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes nightly-only flags; RUSTC_BOOTSTRAP lets the stable compiler accept them.
export RUSTC_BOOTSTRAP=1

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
(
    cd "$seeds"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout r.key -out r.pem -subj /CN=r -days 2 \
        -addext subjectAltName=email:r@example.org 2>/dev/null
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout e.key -out e.pem \
        -subj /CN=e -days 2 2>/dev/null
    printf 'From: r@example.org\nSubject: seed\n\nhello\n' >msg
    openssl cms -sign -binary -in msg -signer r.pem -inkey r.key -outform DER -out s1
    openssl cms -sign -binary -stream -in msg -signer e.pem -inkey e.key -outform DER -out s2
    openssl smime -sign -in msg -signer r.pem -inkey r.key -out m1
    openssl cms -encrypt -binary -aes-128-gcm -recip r.pem -in msg -outform DER -out c1
    openssl cms -encrypt -binary -aes-256-cbc -recip e.pem -in msg -outform DER -out c2
    openssl cms -encrypt -stream -binary -aes-128-cbc -recip r.pem -keyopt rsa_padding_mode:oaep -in msg -outform DER -out c3
    openssl smime -encrypt -aes256 -in msg -out m2 r.pem
)
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    case $t in
        cms_verify) cp "$seeds"/s1 "$seeds"/s2 "$seeds"/m1 "fuzz/corpus/$t/" ;;
        cms_decrypt) cp "$seeds"/c1 "$seeds"/c2 "$seeds"/c3 "fuzz/corpus/$t/" ;;
        mime_parse) cp "$seeds"/m1 "$seeds"/m2 "$seeds"/msg "fuzz/corpus/$t/" ;;
    esac
    echo "==> fuzzing $t for ${secs}s"
    (cd fuzz && cargo fuzz run -O "$t" -- -max_total_time="$secs")
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"
