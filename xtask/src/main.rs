//! Build helpers, run with `cargo run -p xtask -- <task>`:
//!
//! * `man DIR`: man pages for `smime` (one per subcommand too) and `smime-agent` into DIR;
//! * `completions DIR`: bash, zsh and fish completions for both into DIR/{bash,zsh,fish};
//! * `dist DIR`: both, as DIR/man1 and DIR/completions (what `scripts/install.sh` installs).
//!
//! Everything is generated from the clap definitions the binaries parse with, so the pages
//! cannot drift from `--help`.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["man", dir] => man(Path::new(dir)),
        ["completions", dir] => completions(Path::new(dir)),
        ["dist", dir] => {
            man(&Path::new(dir).join("man1"))?;
            completions(&Path::new(dir).join("completions"))
        }
        _ => bail!("usage: xtask (man DIR | completions DIR | dist DIR)"),
    }
}

/// The two programs' clap commands, fully built (global flags propagated).
fn commands() -> [clap::Command; 2] {
    let mut smime = smime::cli::Cli::command();
    smime.build();
    let mut agent = smime_agent::Flags::command();
    agent.build();
    [smime, agent]
}

const ENV_SMIME: &[(&str, &str)] = &[
    (
        "SMIME_AGENT_SOCK",
        "The agent's socket (overridden by --socket). Default: \
         $XDG_RUNTIME_DIR/smime-agent/agent.sock.",
    ),
    (
        "SMIME_AGENT_NO_AUTOSTART",
        "If set, smime does not start smime-agent when none answers.",
    ),
    (
        "SMIME_PROGRESS_MIN",
        "Input files of at least this many bytes get a progress bar when standard error \
         is a terminal (default 64 MiB). Pipes and redirected output never get one.",
    ),
    (
        "SMIME_CERT_STORE",
        "Directory of correspondents' certificates (smime import, verify \
         --store-signers). Default: ~/.local/share/smime/certs.",
    ),
];

const ENV_AGENT: &[(&str, &str)] = &[
    (
        "SMIME_AGENT_MODULE",
        "PKCS#11 modules to load, colon-separated (overridden by --module).",
    ),
    (
        "SMIME_AGENT_SOCK",
        "The socket to listen on (overridden by --socket).",
    ),
    (
        "SMIME_AGENT_PIN_FILE, SMIME_AGENT_PIN",
        "A user PIN for unattended use: the first line of the file, or the PIN itself. \
         It is sent once, and never again if the token rejects it.",
    ),
    (
        "SMIME_AGENT_PIN_TOKEN",
        "The token the configured PIN is for.",
    ),
    (
        "SMIME_AGENT_PINENTRY",
        "The pinentry program to ask for PINs with.",
    ),
    (
        "SMIME_AGENT_LOG",
        "Log filter, e.g. info or smime_agent=debug.",
    ),
];

const AGENT_EXIT: &[(u8, &str)] = &[
    (
        0,
        "the agent started (detached) or shut down cleanly (SIGTERM)",
    ),
    (1, "the agent could not start or failed while running"),
    (2, "bad flags or configuration"),
];

fn man(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let [smime, agent] = commands();
    let exits: Vec<(u8, &str)> = smime::cli::EXIT_STATUS.to_vec();
    write_page(dir, &smime, &exits, ENV_SMIME, "smime-agent(1)")?;
    for sub in smime.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap wants 'static names without its `string` feature; this program is short-lived.
        let name: &'static str = format!("smime-{}", sub.get_name()).leak();
        let bin: &'static str = format!("smime {}", sub.get_name()).leak();
        let page = sub
            .clone()
            .name(name)
            .bin_name(bin)
            .version(env!("CARGO_PKG_VERSION"));
        write_page(dir, &page, &exits, ENV_SMIME, "smime(1), smime-agent(1)")?;
        // Nested families (`smime card list`, ...): a page each.
        let nested = sub
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help");
        for subsub in nested.filter(|_| sub.get_name() != "help") {
            let name: &'static str =
                format!("smime-{}-{}", sub.get_name(), subsub.get_name()).leak();
            let bin: &'static str =
                format!("smime {} {}", sub.get_name(), subsub.get_name()).leak();
            let page = subsub
                .clone()
                .name(name)
                .bin_name(bin)
                .version(env!("CARGO_PKG_VERSION"));
            let also: &'static str = format!("smime-{}(1), smime(1)", sub.get_name()).leak();
            write_page(dir, &page, &exits, ENV_SMIME, also)?;
        }
    }
    write_page(dir, &agent, AGENT_EXIT, ENV_AGENT, "smime(1)")?;
    Ok(())
}

/// One page: clap's sections, then EXIT STATUS, ENVIRONMENT, SEE ALSO, VERSION.
fn write_page(
    dir: &Path,
    cmd: &clap::Command,
    exits: &[(u8, &str)],
    env: &[(&str, &str)],
    see_also: &str,
) -> anyhow::Result<()> {
    let man = Man::new(cmd.clone()).manual("smime-agent");
    let mut out: Vec<u8> = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    // Long notes after the options (`smime card`: secrets, walkthrough).
    if cmd.get_after_long_help().is_some() {
        man.render_extra_section(&mut out)?;
    }
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, what) in exits {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(*what)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (var, what) in env {
        roff.control("TP", []);
        roff.text([bold(*var)]);
        roff.text([roman(*what)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([italic(see_also), roman(", openssl-cms(1), gpgsm(1)")]);
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    let path = dir.join(format!("{}.1", cmd.get_name()));
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

fn completions(dir: &Path) -> anyhow::Result<()> {
    for mut cmd in commands() {
        let bin = cmd.get_name().to_owned();
        for (shell, sub, file) in [
            (Shell::Bash, "bash", bin.clone()),
            (Shell::Zsh, "zsh", format!("_{bin}")),
            (Shell::Fish, "fish", format!("{bin}.fish")),
        ] {
            let d: PathBuf = dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            let path = d.join(file);
            let mut f =
                fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            clap_complete::generate(shell, &mut cmd, &bin, &mut f);
            f.flush()?;
            println!("{}", path.display());
        }
    }
    Ok(())
}
