//! `smime`: the command-line client. Thin: parse flags, run the command, exit.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    // Run as git's gpg.x509.program (git passes `--status-fd=N` first, then gpgsm's
    // options): the same interface as `smime-git`.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a.to_str().is_some_and(|a| a.starts_with("--status-fd")))
    {
        return smime::git::run(std::env::args_os());
    }
    smime::commands::run(&smime::cli::Cli::parse_args())
}
