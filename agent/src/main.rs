//! `smime-agent`: flags, logging, signals; the work is in the library.
#![deny(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use smime_agent::logwriter::LogWriter;
use smime_agent::{Config, Flags};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = flags
        .log
        .clone()
        .or_else(|| std::env::var("SMIME_AGENT_LOG").ok())
        .unwrap_or_else(|| "info".into());
    // `Targets` ("info", "smime_agent=debug,warn") rather than `EnvFilter`: the same
    // syntax for levels per target, without the regex engine (a quarter MiB of resident
    // code in an agent that stays up all day).
    let targets: Targets = filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    // Audit lines are written in batches when the agent is busy (see `logwriter`).
    let log = LogWriter::stderr();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(log.clone())
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(targets)
        .init();
    let config = match Config::resolve(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smime-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = if flags.foreground {
        foreground(config)
    } else {
        detach(&config)
    };
    log.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smime-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn foreground(config: Config) -> anyhow::Result<()> {
    // One thread serves every connection: the token calls run on the tokens' own worker
    // threads (and blocking work on tokio's blocking pool), so the runtime thread only
    // parses frames and queues jobs. A second runtime thread only added wake-ups between
    // the two (measured in BENCHMARKS.md, "Where we miss and why").
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        };
        smime_agent::run(config, shutdown, || {}).await
    })
}

/// Starts a detached copy of ourselves in the foreground mode, waits until its socket
/// answers, and prints the line a shell evaluates (like ssh-agent).
fn detach(config: &Config) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        anyhow::bail!(
            "an agent is already listening on {}",
            config.socket.display()
        );
    }
    let exe = std::env::current_exe()?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--foreground".into());
    // The socket goes by environment: the flag may already be among the arguments.
    let mut child = Command::new(exe)
        .args(&args)
        .env("SMIME_AGENT_SOCK", &config.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
            let sock = config.socket.display();
            println!("SMIME_AGENT_SOCK={sock}; export SMIME_AGENT_SOCK;");
            println!("echo Agent pid {};", child.id());
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the agent exited during start ({status}); run it with --foreground to see why"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!(
        "the agent did not open {} within 20 s",
        config.socket.display()
    )
}
