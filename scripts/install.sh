#!/usr/bin/env bash
# install.sh [--debug] [--no-build] [PREFIX]
#
# Builds smime and smime-agent (cargo build --release) and installs, under $DESTDIR$PREFIX:
#   bin/smime, bin/smime-agent
#   share/man/man1/smime.1, smime-<command>.1, smime-agent.1     (generated from clap)
#   share/bash-completion/completions/{smime,smime-agent}
#   share/zsh/site-functions/{_smime,_smime-agent}
#   share/fish/vendor_completions.d/{smime,smime-agent}.fish
#   the systemd user units smime-agent.{socket,service}, with ExecStart pointing at
#   PREFIX/bin/smime-agent: in PREFIX/share/systemd/user for a home prefix
#   (~/.local, which systemd searches), else in PREFIX/lib/systemd/user.
#
# PREFIX defaults to ~/.local (a user install, no root needed); use /usr/local for a
# system-wide one. DESTDIR stages the tree for packaging. --debug installs the debug build;
# --no-build installs what is already built.
# Afterwards: systemctl --user daemon-reload && systemctl --user enable --now smime-agent.socket
set -euo pipefail
cd "$(dirname "$0")/.."

PROG=${0##*/}
profile=release
build=1
prefix=
while [[ $# -gt 0 ]]; do
    case $1 in
    --debug) profile=debug ;;
    --no-build) build=0 ;;
    -h | --help)
        sed -n '2,17s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    -*)
        echo "$PROG: unknown option $1 (see --help)" >&2
        exit 2
        ;;
    *)
        [[ -z $prefix ]] || {
            echo "$PROG: one PREFIX only" >&2
            exit 2
        }
        prefix=$1
        ;;
    esac
    shift
done
prefix=${prefix:-$HOME/.local}
[[ $prefix == /* ]] || {
    echo "$PROG: PREFIX must be an absolute path: $prefix" >&2
    exit 2
}
prefix=${prefix%/}
dest=${DESTDIR:-}${prefix}

target=${CARGO_TARGET_DIR:-target}/$profile
if ((build)); then
    flags=()
    [[ $profile == release ]] && flags+=(--release)
    echo "==> cargo build ${flags[*]} (smime, smime-agent, xtask)"
    cargo build "${flags[@]}" --locked -p smime -p smime-agent -p xtask
fi
for b in smime smime-agent xtask; do
    [[ -x $target/$b ]] || {
        echo "$PROG: $target/$b is missing; build it or drop --no-build" >&2
        exit 1
    }
done

gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$target/xtask" dist "$gen" >/dev/null

echo "==> installing into $dest"
install -d "$dest/bin" "$dest/share/man/man1" \
    "$dest/share/bash-completion/completions" "$dest/share/zsh/site-functions" \
    "$dest/share/fish/vendor_completions.d"
install -m755 "$target/smime" "$target/smime-agent" "$dest/bin/"
install -m644 "$gen"/man1/*.1 "$dest/share/man/man1/"
install -m644 "$gen"/completions/bash/* "$dest/share/bash-completion/completions/"
install -m644 "$gen"/completions/zsh/* "$dest/share/zsh/site-functions/"
install -m644 "$gen"/completions/fish/* "$dest/share/fish/vendor_completions.d/"

if [[ $prefix == "$HOME"/* ]]; then
    units=$dest/share/systemd/user
else
    units=$dest/lib/systemd/user
fi
install -d "$units"
install -m644 contrib/systemd/smime-agent.socket "$units/"
# The unit runs the binary installed here, not the one the example path names.
sed "s|^ExecStart=[^ ]*smime-agent|ExecStart=$prefix/bin/smime-agent|" \
    contrib/systemd/smime-agent.service >"$units/smime-agent.service"
chmod 644 "$units/smime-agent.service"

echo "installed: $prefix/bin/{smime,smime-agent}, man pages, bash/zsh/fish completions,"
echo "           systemd user units in ${units#"${DESTDIR:-}"}"
case ":$PATH:" in *":$prefix/bin:"*) ;; *) echo "note: $prefix/bin is not on PATH" ;; esac
echo "next: systemctl --user daemon-reload && systemctl --user enable --now smime-agent.socket"
