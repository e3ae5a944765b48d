//! Link options for the `smime-agent` binary that keep less of it resident while it idles
//! (BENCHMARKS.md, round 6). The kernel maps 64 KiB of a file around each page a process
//! touches, so what counts is how many 64 KiB stretches of the binary the agent touches:
//!
//! - `startup.order` lists the functions that run from start until the agent is idle, then
//!   those that serve requests; the linker lays them out together, in front. Scattered
//!   through 2 MiB, they kept about 1 MiB more of the binary resident.
//!   `scripts/order-agent.sh` regenerates the file; names a build no longer has (after a
//!   dependency or toolchain change) are ignored, and the layout is the default one.
//! - Relative relocations packed (`DT_RELR`): 5 KB of relocations instead of 80 KB that the
//!   loader reads at start. Only when building natively on glibc 2.36 or later, and the
//!   binary then needs glibc 2.36 or later to run: a packager building on a newer glibc
//!   for an older one sets `SMIME_AGENT_NO_ORDER`.
//!
//! Only where rustc links with its own lld: x86_64 Linux, rustc 1.90 or later, no other
//! linker configured (GNU ld and gold do not know these options). Setting
//! `SMIME_AGENT_NO_ORDER` (to anything) turns both off.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=startup.order");
    println!("cargo:rerun-if-env-changed=SMIME_AGENT_NO_ORDER");
    let target = env::var("TARGET").unwrap_or_default();
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let other_linker = env::var_os("RUSTC_LINKER").is_some()
        || flags.contains("linker")
        || flags.contains("link-self-contained")
        || flags.contains("fuse-ld");
    if target != "x86_64-unknown-linux-gnu"
        || other_linker
        || !rustc_at_least(90)
        || env::var_os("SMIME_AGENT_NO_ORDER").is_some()
    {
        return;
    }
    let dir = env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&dir).join("startup.order");
    if order.is_file() && !order.to_string_lossy().contains(',') {
        println!(
            "cargo:rustc-link-arg-bin=smime-agent=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=smime-agent=-Wl,--no-warn-symbol-ordering");
    }
    if env::var("HOST").is_ok_and(|h| h == target) && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bin=smime-agent=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the rustc that builds this is 1.`minor` or later (1.90 made its own lld the
/// default linker on x86_64 Linux).
fn rustc_at_least(minor: u32) -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    // "release: 1.95.0"
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .and_then(|v| v.split('.').nth(1)?.parse::<u32>().ok())
        .is_some_and(|m| m >= minor)
}

/// Whether this machine's glibc (the one the binary is built for and runs with) is at least
/// `major.minor`: an older one cannot load packed relocations.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    // "glibc 2.36"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    found >= (major, minor)
}
