#!/usr/bin/env bash
# Regenerates agent/startup.order: the functions of the release smime-agent that run from
# start until it is idle and serving, then those that serve requests (sign with RSA and
# ECDSA, RSA decrypt, ECDH), in that order. agent/build.rs hands the file to the linker,
# which lays these functions out together, so that an idle agent keeps about 1 MiB less of
# its binary resident (BENCHMARKS.md, round 6): the kernel maps 64 KiB of the file around
# each page the agent touches.
#
# Usage: scripts/order-agent.sh
#
# The names carry the hashes of this build (crate versions, features, rustc). After a
# dependency or toolchain change, run it again; a stale file costs no correctness, only the
# saving (scripts/bench.sh reports how many of its names the binary still has).
# Needs valgrind (installed if missing, Debian 12, as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
install_apt valgrind
install_rust

WORK=$(mktemp -d /tmp/smime-order.XXXXXX)
AGENT=
cleanup() {
    if [ -n "$AGENT" ]; then kill -KILL "$AGENT" 2>/dev/null || true; fi
    rm -rf -- "$WORK"
}
trap cleanup EXIT
softhsm-config/provision "$WORK/token" >/dev/null
. "$WORK/token/env"
export SMIME_AGENT_SOCK=$WORK/agent.sock
BIN=$PWD/target/release

# profile NAME HOW CARGO_ARGS...: builds with those arguments, runs that agent under
# callgrind, configured by flags (HOW=flags, as scripts/bench.sh starts it) or by the
# environment (HOW=env, as scripts/demo.sh does), and leaves two dumps: $WORK/NAME.out.1
# (start until idle) and $WORK/NAME.out.2 (requests).
profile() {
    local name=$1 how=$2
    shift 2
    echo "==> cargo build --release --locked $* ; the agent under callgrind (set by $how)"
    cargo build --release --locked "$@"
    local args=(--foreground)
    if [ "$how" = flags ]; then
        args+=(--socket "$SMIME_AGENT_SOCK" --module "$SMIME_AGENT_MODULE" --pin-file "$SMIME_AGENT_PIN_FILE")
    fi
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/$name.out" \
        "$BIN/smime-agent" "${args[@]}" >"$WORK/agent.log" 2>&1 &
    AGENT=$!
    for _ in $(seq 600); do [ -S "$SMIME_AGENT_SOCK" ] && break; sleep 0.1; done
    [ -S "$SMIME_AGENT_SOCK" ] || { cat "$WORK/agent.log"; echo "the agent did not start" >&2; exit 1; }
    # Idle and serving: one client says hello. Then the first dump.
    "$BIN/smime" keys >/dev/null
    sleep 1
    callgrind_control --dump "$AGENT" >/dev/null
    # The requests: sign (RSA, ECDSA), decrypt (RSA), ECDH; then the second dump.
    printf 'order\r\n' >"$WORK/in.txt"
    for k in alice-rsa alice-ec; do
        "$BIN/smime" sign --key "$k" --in "$WORK/in.txt" --out "$WORK/$k.p7s"
        "$BIN/smime" encrypt --to "$WORK/token/$k.pem" --in "$WORK/in.txt" --out "$WORK/$k.p7m"
        "$BIN/smime" decrypt --in "$WORK/$k.p7m" --out "$WORK/$k.out" 2>/dev/null
    done
    callgrind_control --dump "$AGENT" >/dev/null
    kill -KILL "$AGENT"
    wait "$AGENT" 2>/dev/null || true
    AGENT=
    rm -f "$SMIME_AGENT_SOCK"
}

# Which crates a build selects changes the features of shared dependencies, and with them
# the hashes in the agent's symbol names: one profile per way this repository builds the
# agent (bench.sh and the tests; install.sh; demo.sh; the agent alone).
profile workspace flags --workspace
profile install env -p smime -p smime-agent -p xtask
profile demo env -p smime-agent -p smime
profile alone flags -p smime-agent

# The agent's own functions (mangled) in each dump: start-to-idle first, then those only
# the requests ran; each group sorted, so that a regenerated file diffs well.
python3 - "$WORK" agent/startup.order <<'PY'
import re, sys
work, out = sys.argv[1], sys.argv[2]

def functions(path):
    names, objects, ob, found = {}, {}, None, set()
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?ob|c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if not m:
            continue
        kind, i, name = m.groups()
        if kind in ("ob", "cob"):
            if name:
                objects[i] = name
            if kind == "ob":
                ob = objects[i]
        else:
            if name:
                names[i] = name
            if kind == "fn" and ob and ob.endswith("/smime-agent"):
                f = names[i].split("'")[0]
                # Not callgrind's own names: "(below main)", bare addresses.
                if not f.startswith(("(", "0x")):
                    found.add(f)
    return found

idle, requests = set(), set()
for name in ("workspace", "install", "demo", "alone"):
    idle |= functions(f"{work}/{name}.out.1")
    requests |= functions(f"{work}/{name}.out.2")
requests -= idle
# First, the C runtime's start-up code, which callgrind counts as "(below main)".
crt = ["_start", "deregister_tm_clones", "register_tm_clones", "__do_global_dtors_aux", "frame_dummy"]
with open(out, "w") as f:
    f.write("\n".join(crt + sorted(idle - set(crt)) + sorted(requests)) + "\n")
print(f"==> {out}: {len(idle)} start-to-idle functions, then {len(requests)} for requests")
PY
