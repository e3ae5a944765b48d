//! `smime`: the command-line client. Thin: parse flags, run the command, exit.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    smime::commands::run(&smime::cli::Cli::parse())
}
