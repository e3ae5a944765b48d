# Sourced by demo.sh and test.sh: installs what is missing on Debian 12 (run as root, or
# with sudo available). Safe to run again; it does nothing when everything is there.

need_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_PACKAGES=(
    softhsm2          # the PKCS#11 token for the demo and the tests
    opensc            # pkcs11-tool, used by softhsm-config/provision
    openssl           # test CA; and the judge of our signatures
    gpgsm gpg-agent   # the second judge
    git               # git commit -S / verify-commit through smime-git (tests/e2e/git.rs)
    gnupg-pkcs11-scd  # gpgsm as a peer on the SoftHSM token (scdaemon over PKCS#11; tests/e2e/gpgsm.rs)
    coreutils         # timeout(1) around every gpg-agent/gpgsm call in the tests
    python3 python3-cbor2   # the Python protocol client test
    python3-pip       # pip download of the NIST PKITS data (install_pkits_data)
    gcc libc6-dev pkg-config   # linking Rust binaries
    g++               # libFuzzer (C++) for the short fuzz run at the end of test.sh
    util-linux        # setpriv, to run a client as another user
    procps            # kill(1), used by the tests to signal the agent
    time              # /usr/bin/time -f %M: peak memory of the streaming tests
    faketime          # a signingTime in the past (tests/e2e/trust.rs)
    systemd           # systemd-socket-activate, to test socket activation
    man-db            # man -l: the generated man pages render (tests/e2e/cli.rs)
    neomutt           # neomutt -Q reads contrib/neomuttrc.smime (tests/e2e/neomutt.rs)
    bsdutils          # script(1): a pty for the progress-bar test (tests/e2e/cli.rs)
    zsh fish          # the generated completions parse and complete (tests/e2e/cli.rs)
    ca-certificates curl  # rustup, if Rust is missing
    # The virtual PIV card (tests/pivemu, tests/support/pcsc.rs, tests/e2e/piv.rs):
    vsmartcard-vpcd   # vpcd reader driver the card plugs into (install before pcscd starts)
    pcscd             # PC/SC daemon
    opensc-pkcs11     # opensc-pkcs11.so, the agent's module for the card; opensc-tool
    yubico-piv-tool   # provisions the card (key generation, certificate import)
    libpcsclite-dev   # PC/SC headers and pkg-config file for Rust pcsc-sys builds
    libclang-dev      # bindgen, for littlefs2-sys in pivemu's build
)

# install_apt [EXTRA_PACKAGE...]: the packages above plus any given.
install_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing Debian packages: ${missing[*]}"
        need_root apt-get update -qq
        need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Edition 2024 needs Rust >= 1.85 (Debian 12's rustc is 1.63): use rustup's stable.
install_rust() {
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    if command -v cargo >/dev/null 2>&1; then
        local minor
        minor=$(cargo --version | sed -E 's/^cargo 1\.([0-9]+).*/\1/')
        if [ "${minor:-0}" -ge 89 ]; then return 0; fi
        if command -v rustup >/dev/null 2>&1; then
            echo "==> updating Rust (cargo 1.$minor is too old)"
            rustup toolchain install stable --profile minimal && rustup default stable
            return 0
        fi
    fi
    echo "==> installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    . "$HOME/.cargo/env"
}

# The Python client test needs cbor2 for whichever python3 is first on PATH.
install_python_cbor2() {
    python3 -c 'import cbor2' 2>/dev/null && return 0
    echo "==> installing cbor2 for $(command -v python3)"
    python3 -m pip install -q cbor2 2>/dev/null ||
        python3 -m pip install -q --break-system-packages cbor2
}

# NIST PKITS (tests/pkits): the certificates, CRLs and signed S/MIME messages ship in the
# PyPI package cryptography-vectors. Downloaded once (56 MB wheel) into a cache directory
# outside the work tree; only x509/PKITS_data is unpacked. Exports PKITS_DATA for the test.
PKITS_VECTORS="cryptography-vectors==50.0.2"
install_pkits_data() {
    local cache="${PKITS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smime-agent/pkits}"
    local data="$cache/cryptography_vectors/x509/PKITS_data"
    if [ ! -d "$data/smime" ]; then
        echo "==> downloading the NIST PKITS data ($PKITS_VECTORS) into $cache"
        mkdir -p "$cache"
        python3 -m pip download -q --no-deps -d "$cache" "$PKITS_VECTORS"
        python3 - "$cache" <<'PY'
import glob, sys, zipfile
wheel = sorted(glob.glob(sys.argv[1] + "/cryptography_vectors-*.whl"))[-1]
z = zipfile.ZipFile(wheel)
z.extractall(sys.argv[1], [n for n in z.namelist() if "/x509/PKITS_data/" in n])
z.close()
PY
        rm -f "$cache"/cryptography_vectors-*.whl
    fi
    export PKITS_DATA="$data"
}

install_all() {
    install_apt
    install_rust
    install_python_cbor2
    install_pkits_data
}
