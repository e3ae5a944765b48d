//! The `smime` commands: each turns resolved flags into library calls, and every failure
//! into one of the documented exit statuses. This is the binary's edge, hence `anyhow`.

mod card;
mod certs;
mod crlf;
mod decrypt;
mod encrypt;
pub(crate) mod sign;
mod smime_entity;
pub(crate) mod verify;

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::agent::{AgentClient, AgentError, socket_path};
use crate::cms;
use crate::keys::KeySummary;
use anyhow::{Context, anyhow};
use der::Decode;
use smime_proto::{ErrorCode, Pin, PinState, Request, Response};
use x509_cert::Certificate;

use crate::cli::{Cli, Command};

/// How a command failed; decides the exit status.
pub(crate) enum Failure {
    /// 1: the signature or certificate did not verify.
    Verify(anyhow::Error),
    /// 2: bad arguments or input the user must fix.
    Usage(anyhow::Error),
    /// 3: the agent or the token is not available.
    Unavailable(anyhow::Error),
    /// 4: anything else.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        if e.downcast_ref::<AgentError>().is_some_and(unavailable) {
            Failure::Unavailable(e)
        } else {
            Failure::Other(e)
        }
    }
}

/// Agent errors that mean "the agent, token, key or PIN is not available" (exit 3).
fn unavailable(a: &AgentError) -> bool {
    match a {
        AgentError::Unreachable { .. } | AgentError::Transport(_) => true,
        AgentError::Agent(r) => r.code.0 / 100 == 2 || r.code.0 / 100 == 3,
        _ => false,
    }
}

/// What to do when no agent answers.
const NO_AGENT_FIX: &str = "start it with `smime-agent` or enable smime-agent.socket \
                            (systemctl --user enable --now smime-agent.socket)";

/// What to do about a locked PIN.
const PIN_LOCKED_FIX: &str = "unblock it with your PUK or SO PIN (e.g. `pkcs11-tool \
                              --unlock-pin`), then run `smime unlock`";

/// [`PIN_LOCKED_FIX`] as a sentence of its own.
const PIN_LOCKED_FIX_HINT: &str = "PIN locked: unblock it with your PUK or SO PIN (e.g. \
                                   `pkcs11-tool --unlock-pin`), then run `smime unlock`";

/// Whether the agent reports `token`'s user PIN as locked (blocked), on a new connection.
fn pin_blocked(socket: Option<&Path>, token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let Some(path) = socket_path(socket) else {
        return false;
    };
    let Ok(mut client) = AgentClient::connect(&path) else {
        return false;
    };
    matches!(
        client.request(&Request::Status),
        Ok(Response::Status { tokens, .. })
            if tokens.iter().any(|t| t.label == token && t.pin_state == PinState::Locked)
    )
}

/// What to do about an error, if we know; `socket` is the agent's, as given (`None`: the
/// default).
pub(crate) fn hint(socket: Option<&Path>, e: &anyhow::Error) -> Option<&'static str> {
    match e.downcast_ref::<AgentError>()? {
        AgentError::Unreachable { .. } => Some(NO_AGENT_FIX),
        AgentError::Agent(r) => match r.code {
            // "Log in" cannot help if the PIN itself is blocked: ask the agent.
            ErrorCode::PIN_REQUIRED if pin_blocked(socket, r.token.as_deref()) => {
                Some(PIN_LOCKED_FIX_HINT)
            }
            ErrorCode::PIN_REQUIRED => Some("log in first: smime unlock"),
            ErrorCode::PIN_INCORRECT => {
                Some("check the PIN; the agent never retries a wrong PIN by itself")
            }
            ErrorCode::PIN_LOCKED => Some(PIN_LOCKED_FIX_HINT),
            ErrorCode::TOKEN_ABSENT => Some("insert the card"),
            ErrorCode::CONFIRMATION_DECLINED => {
                Some("the key asks for a confirmation of each signature (confirm_sign)")
            }
            _ => None,
        },
        _ => None,
    }
}

/// Runs one command line and returns the process exit status.
pub fn run(cli: &Cli) -> ExitCode {
    let result = match &cli.command {
        Command::Keys { json } => keys(cli, *json),
        Command::Sign(a) => sign::sign(cli, a),
        Command::Verify(a) => verify::verify(a),
        Command::Status { json } => status(cli, *json),
        Command::Unlock {
            token,
            pin_stdin,
            confirm_final_try,
        } => unlock(cli, token.as_deref(), *pin_stdin, *confirm_final_try),
        Command::Lock { token } => lock(cli, token.clone()),
        Command::Encrypt(a) => encrypt::encrypt(cli, a),
        Command::Decrypt(a) => decrypt::decrypt(cli, a, a.verify),
        Command::Open(a) => decrypt::decrypt(cli, a, true),
        Command::Import { certs } => encrypt::import(certs),
        Command::Certs(a) => certs::certs(a),
        Command::Card(a) => card::card(a),
    };
    let (code, e, what) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Verify(e)) => (1, e, "verification failed"),
        Err(Failure::Usage(e)) => (2, e, "error"),
        Err(Failure::Unavailable(e)) => (3, e, "error"),
        Err(Failure::Other(e)) => (4, e, "error"),
    };
    // A closed pipe (`smime keys | head`) is not a failure.
    if e.downcast_ref::<io::Error>()
        .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    {
        return ExitCode::SUCCESS;
    }
    eprintln!("smime: {what}: {e:#}");
    if let Some(h) = hint(cli.socket.as_deref(), &e) {
        eprintln!("hint: {h}");
    }
    ExitCode::from(code)
}

fn connect(cli: &Cli) -> Result<AgentClient, Failure> {
    connect_socket(cli.socket.as_deref())
}

/// Connects to the agent on `socket` (default: `$SMIME_AGENT_SOCK`, else
/// `$XDG_RUNTIME_DIR/smime-agent/agent.sock`), starting one if none is running.
pub(crate) fn connect_socket(socket: Option<&Path>) -> Result<AgentClient, Failure> {
    let path = socket_path(socket).ok_or_else(|| {
        Failure::Unavailable(anyhow!(
            "no agent socket: set SMIME_AGENT_SOCK or XDG_RUNTIME_DIR, or pass --socket"
        ))
    })?;
    match AgentClient::connect(&path) {
        Err(AgentError::Unreachable { .. })
            if std::env::var_os("SMIME_AGENT_NO_AUTOSTART").is_none() =>
        {
            autostart(&path)?;
            AgentClient::connect(&path).map_err(|e| anyhow::Error::from(e).into())
        }
        Err(AgentError::Unreachable { path, source }) => Err(Failure::Unavailable(anyhow!(
            "no agent running on {} ({source}; SMIME_AGENT_NO_AUTOSTART is set): {NO_AGENT_FIX}",
            path.display()
        ))),
        r => r.map_err(|e| anyhow::Error::from(e).into()),
    }
}

/// Starts `smime-agent` (next to this program, else from PATH) on `path`, as gpg-agent
/// is started on demand. It detaches and returns once the socket answers.
fn autostart(path: &Path) -> Result<(), Failure> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("smime-agent")));
    let program = sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("smime-agent"));
    let out = std::process::Command::new(&program)
        .arg("--socket")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Failure::Unavailable(anyhow!(
                "no agent running, and {} cannot be run ({e}): install it and {NO_AGENT_FIX}",
                program.display()
            ))
        })?;
    if !out.status.success() {
        return Err(Failure::Unavailable(anyhow!(
            "no agent running, and starting one failed ({}): fix that and {NO_AGENT_FIX}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    eprintln!("smime: started an agent on {}", path.display());
    Ok(())
}

pub(crate) fn key_list(client: &mut AgentClient) -> Result<Vec<KeySummary>, Failure> {
    Ok(client
        .list_keys()
        .map_err(anyhow::Error::from)?
        .into_iter()
        .map(KeySummary::new)
        .collect())
}

fn keys(cli: &Cli, json: bool) -> Result<(), Failure> {
    let keys = key_list(&mut connect(cli)?)?;
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &keys).map_err(|e| Failure::Other(e.into()))?;
        writeln!(out).map_err(|e| Failure::Other(e.into()))?;
        return Ok(());
    }
    if keys.is_empty() {
        eprintln!("the agent has no keys (is the token present and unlocked? try `smime status`)");
    }
    for k in &keys {
        let w = |out: &mut io::StdoutLock<'_>| -> io::Result<()> {
            writeln!(out, "{}", k.id)?;
            writeln!(out, "  token:     {}", k.token)?;
            writeln!(out, "  label:     {}", k.label)?;
            writeln!(out, "  algorithm: {}", k.algorithm)?;
            writeln!(out, "  subject:   {}", k.subject)?;
            writeln!(out, "  email:     {}", k.emails.join(", "))?;
            writeln!(
                out,
                "  validity:  {} .. {}",
                k.not_before.as_deref().unwrap_or("-"),
                k.not_after.as_deref().unwrap_or("-")
            )?;
            writeln!(out, "  sha256:    {}", k.sha256.as_deref().unwrap_or("-"))?;
            writeln!(out, "  allows:    {}", k.operations.join(", "))
        };
        w(&mut out).map_err(|e| Failure::Other(e.into()))?;
    }
    Ok(())
}

fn open_input(path: Option<&Path>) -> Result<Box<dyn Read>, Failure> {
    Ok(match path {
        Some(p) if p != Path::new("-") => {
            let file = File::open(p)
                .with_context(|| format!("opening {}", p.display()))
                .map_err(Failure::Usage)?;
            Box::new(BufReader::with_capacity(
                cms::DIGEST_CHUNK,
                with_progress(
                    file,
                    &p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
            ))
        }
        _ => Box::new(io::stdin().lock()),
    })
}

/// An anonymous temporary file: for spooled input, and for output that must not appear
/// before it is complete and checked.
pub(super) fn spool() -> Result<File, Failure> {
    tempfile::tempfile()
        .map_err(|e| Failure::Other(anyhow!(e).context("creating a temporary file")))
}

/// Input that can be read several times (hash, then embed): the file itself, or standard
/// input spooled to an anonymous temporary file; with a name for progress bars.
pub(super) struct Rereadable {
    pub(super) file: File,
    pub(super) name: String,
}

impl Rereadable {
    /// `file` (another handle on the same file, or a prepared copy of it) as a reader
    /// with a progress bar named like this input (see [`with_progress`]).
    pub(super) fn progress(&self, file: &File) -> Result<Box<dyn Read>, Failure> {
        let f = file.try_clone().map_err(|e| Failure::Other(e.into()))?;
        Ok(with_progress(f, &self.name))
    }
}

pub(super) fn rereadable(path: Option<&Path>) -> Result<Rereadable, Failure> {
    match path {
        Some(p) if p != Path::new("-") => Ok(Rereadable {
            file: File::open(p)
                .with_context(|| format!("opening {}", p.display()))
                .map_err(Failure::Usage)?,
            name: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }),
        _ => {
            let mut spool = spool()?;
            io::copy(&mut io::stdin().lock(), &mut spool)
                .context("reading standard input")
                .map_err(Failure::Usage)?;
            io::Seek::rewind(&mut spool).map_err(|e| Failure::Other(e.into()))?;
            Ok(Rereadable {
                file: spool,
                name: "standard input".to_owned(),
            })
        }
    }
}

/// Inputs at least this big get a progress bar (on a terminal); `SMIME_PROGRESS_MIN`
/// (bytes) overrides it.
const PROGRESS_MIN: u64 = 64 << 20;

/// `file` as is, or, when standard error is a terminal and the file is big, wrapped in a
/// progress bar on standard error that disappears when the file has been read (or the
/// command ends). Pipes and redirected stderr never see one.
fn with_progress(file: File, name: &str) -> Box<dyn Read> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let min = std::env::var("SMIME_PROGRESS_MIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PROGRESS_MIN);
    if len < min.max(1) || !io::stderr().is_terminal() {
        return Box::new(file);
    }
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let bar = indicatif::ProgressBar::new(len)
        .with_style(style)
        .with_message(name.to_owned())
        .with_finish(indicatif::ProgressFinish::AndClear);
    Box::new(bar.wrap_read(file))
}

pub(crate) fn load_certs(paths: &[PathBuf]) -> Result<Vec<Certificate>, Failure> {
    let mut out = Vec::new();
    for p in paths {
        let bytes = std::fs::read(p)
            .with_context(|| format!("reading {}", p.display()))
            .map_err(Failure::Usage)?;
        let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
        let certs = if is_pem {
            Certificate::load_pem_chain(&bytes).map_err(|e| anyhow!(e))
        } else {
            Certificate::from_der(&bytes)
                .map(|c| vec![c])
                .map_err(|e| anyhow!(e))
        }
        .with_context(|| format!("{} holds no certificate", p.display()))
        .map_err(Failure::Usage)?;
        out.extend(certs);
    }
    Ok(out)
}

fn status(cli: &Cli, json: bool) -> Result<(), Failure> {
    let mut client = connect(cli)?;
    let Response::Status { tokens, agent } = client
        .request(&Request::Status)
        .map_err(anyhow::Error::from)?
    else {
        return Err(Failure::Other(anyhow!("unexpected response to status")));
    };
    if json {
        let j = serde_json::json!({ "agent": agent, "tokens": tokens });
        println!("{j}");
        return Ok(());
    }
    match &agent {
        Some(a) => println!("agent: {} (up {} s)", a.version, a.uptime_secs),
        None => println!("agent: {}", client.agent),
    }
    for m in agent.iter().flat_map(|a| &a.modules) {
        match &m.error {
            None => println!("module {}: loaded", m.path),
            Some(e) => println!("module {}: NOT LOADED: {e}", m.path),
        }
    }
    if let Some(p) = agent.as_ref().and_then(|a| a.pcsc.as_ref()) {
        if let Some(e) = &p.error {
            println!("card readers: unavailable ({e}); start pcscd to use smart cards");
        } else if p.readers.is_empty() {
            println!("card readers: none");
        }
        for r in &p.readers {
            match &r.atr {
                Some(atr) if r.card => println!("reader {}: card present (ATR {atr})", r.name),
                _ => println!("reader {}: empty", r.name),
            }
        }
    }
    for t in tokens {
        let tries = t
            .pin_state
            .tries_left()
            .map(|n| format!(" ({n} tries left)"))
            .unwrap_or_default();
        println!(
            "token {} (serial {}): {}, PIN {}{tries}, {} keys, module {}",
            t.label,
            t.serial,
            if t.logged_in { "unlocked" } else { "locked" },
            t.pin_state.as_str(),
            t.keys,
            t.module
        );
        if let Some(c) = &t.card {
            let tries = c
                .pin_tries_left
                .map_or_else(|| "not shown".to_owned(), |n| n.to_string());
            println!(
                "  card: reader {}, {}, PIV version {}, serial {}, PIN tries left {tries}",
                c.reader,
                if c.present { "present" } else { "REMOVED" },
                c.version,
                t.serial
            );
        }
        if t.pin_pad {
            println!("  PIN pad: enter the PIN on the reader's keypad when asked");
        }
        if let Some(w) = &t.waiting {
            println!("  busy: {w}");
        }
    }
    Ok(())
}

fn unlock(
    cli: &Cli,
    token: Option<&str>,
    pin_stdin: bool,
    confirm_final_try: bool,
) -> Result<(), Failure> {
    let mut client = connect(cli)?;
    let Response::Status { tokens, .. } = client
        .request(&Request::Status)
        .map_err(anyhow::Error::from)?
    else {
        return Err(Failure::Other(anyhow!("unexpected response to status")));
    };
    let t = match (token, tokens.as_slice()) {
        (Some(sel), all) => all
            .iter()
            .find(|t| t.label == sel || t.serial == sel)
            .ok_or_else(|| Failure::Usage(anyhow!("the agent has no token {sel:?}")))?,
        (None, [t]) => t,
        (None, []) => return Err(Failure::Unavailable(anyhow!("the agent has no token"))),
        (None, _) => {
            return Err(Failure::Usage(anyhow!(
                "several tokens: name one with --token"
            )));
        }
    };
    if t.logged_in {
        eprintln!("token {} is already unlocked", t.label);
        return Ok(());
    }
    let mut confirm = confirm_final_try;
    match t.pin_state {
        PinState::Locked => {
            return Err(Failure::Unavailable(anyhow!(
                "PIN locked on token {}: {PIN_LOCKED_FIX}",
                t.label
            )));
        }
        PinState::FinalTry if !confirm => {
            eprintln!(
                "WARNING: token {} is on its FINAL PIN try: one more wrong PIN locks it.",
                t.label
            );
            if pin_stdin || !io::stdin().is_terminal() {
                return Err(Failure::Unavailable(anyhow!(
                    "not sending a PIN on the final try without confirmation (use --confirm-final-try)"
                )));
            }
            eprint!("Type \"yes\" to enter the PIN anyway: ");
            let mut answer = String::new();
            io::stdin()
                .read_line(&mut answer)
                .map_err(|e| Failure::Usage(e.into()))?;
            if answer.trim() != "yes" {
                return Err(Failure::Usage(anyhow!("cancelled; no PIN was sent")));
            }
            confirm = true;
        }
        _ => {}
    }
    let pin = if pin_stdin {
        let mut line = String::new();
        io::stdin()
            .read_line(&mut line)
            .map_err(|e| Failure::Usage(e.into()))?;
        let pin = line.trim_end_matches(['\r', '\n']).to_owned();
        zeroize_string(line);
        pin
    } else {
        rpassword::prompt_password(format!("PIN for token {}: ", t.label))
            .map_err(|e| Failure::Usage(e.into()))?
    };
    client
        .unlock(&t.serial, Pin::new(pin), confirm)
        .map_err(anyhow::Error::from)?;
    eprintln!("token {} unlocked", t.label);
    Ok(())
}

fn zeroize_string(s: String) {
    drop(Pin::new(s)); // Pin wipes its memory on drop
}

fn lock(cli: &Cli, token: Option<String>) -> Result<(), Failure> {
    let mut client = connect(cli)?;
    client
        .request(&Request::Lock { token })
        .map_err(anyhow::Error::from)?;
    Ok(())
}
