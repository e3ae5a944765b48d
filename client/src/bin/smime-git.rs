//! `smime-git`: git's X.509 signing program (`gpg.format=x509`, `gpg.x509.program`). See
//! `smime-git --help` and the `smime::git` module.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    smime::git::run(std::env::args_os())
}
