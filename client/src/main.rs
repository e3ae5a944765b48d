//! `smime`: the command-line client. Thin: parse flags, run the command, exit.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    smime::commands::run(&smime::cli::Cli::parse_args())
}
