//! Configuration: command-line flags, environment, and the TOML file, resolved into one
//! [`Config`].
//!
//! Precedence, per setting: flag, then environment variable, then config file, then
//! default. Modules load only from these places; a client can never name a module.
//!
//! ```toml
//! # $XDG_CONFIG_HOME/smime-agent/config.toml
//! modules = ["/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"]
//! socket = "/run/user/1000/smime-agent/agent.sock"   # optional
//! sessions = 2            # worker sessions per token
//! max_connections = 4096  # also bounded by the open-file limit
//! pin_file = "/path/to/pin"   # CI only: a PIN for the single token that needs one
//! pin_token = "smime-demo"    # which token the PIN is for
//! pinentry = "/usr/bin/pinentry-gnome3"   # prompt for PINs the agent was not given
//! cache_ttl = 3600           # log out an hour after logging in (0: never)
//! idle_timeout = 900         # log out after 15 idle minutes (0: never)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;
use smime_proto::Pin;

/// Command-line flags of `smime-agent`.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "smime-agent",
    version,
    about = "Keeps smart-card and HSM sessions logged in and serves \
    sign, decrypt and ECDH requests on a local socket. Private keys never leave the token."
)]
pub struct Flags {
    /// PKCS#11 module to load (repeatable). Overrides SMIME_AGENT_MODULE and the config file.
    #[arg(long = "module", value_name = "PATH")]
    pub modules: Vec<PathBuf>,
    /// Socket path. Default: $SMIME_AGENT_SOCK, else $XDG_RUNTIME_DIR/smime-agent/agent.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Config file. Default: $XDG_CONFIG_HOME/smime-agent/config.toml (if it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Stay attached to the terminal (for systemd, tests and debugging). Without it the
    /// agent detaches and prints the shell line that exports SMIME_AGENT_SOCK.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// File holding the user PIN (CI). Also SMIME_AGENT_PIN_FILE, or the PIN itself in
    /// SMIME_AGENT_PIN. It is tried exactly once; a rejected PIN is never sent again.
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// Token (label or serial) the configured PIN is for. Needed when several tokens
    /// want a PIN. Also SMIME_AGENT_PIN_TOKEN.
    #[arg(long, value_name = "TOKEN")]
    pub pin_token: Option<String>,
    /// Worker sessions per token: how many requests a token serves at once.
    #[arg(long, value_name = "N")]
    pub sessions: Option<usize>,
    /// Ask for PINs with this pinentry program (e.g. /usr/bin/pinentry-gnome3) when a
    /// token needs a login and no PIN is configured. Also SMIME_AGENT_PINENTRY.
    #[arg(long, value_name = "PROGRAM")]
    pub pinentry: Option<PathBuf>,
    /// Log out of a token this many seconds after logging in (0: never).
    #[arg(long, value_name = "SECONDS")]
    pub cache_ttl: Option<u64>,
    /// Log out of a token after this many seconds without a private-key operation (0: never).
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,
    /// Log filter, e.g. `info` or `smime_agent=debug`. Also SMIME_AGENT_LOG.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    modules: Vec<PathBuf>,
    socket: Option<PathBuf>,
    sessions: Option<usize>,
    max_connections: Option<usize>,
    pin_file: Option<PathBuf>,
    pin_token: Option<String>,
    pinentry: Option<PathBuf>,
    cache_ttl: Option<u64>,
    idle_timeout: Option<u64>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// PKCS#11 modules to load.
    pub modules: Vec<PathBuf>,
    /// Where to listen.
    pub socket: PathBuf,
    /// Worker sessions per token.
    pub sessions: usize,
    /// Concurrent connections served; more wait in the accept queue.
    pub max_connections: usize,
    /// A PIN for CI, and the token it is for.
    pub pin: Option<(Arc<Pin>, Option<String>)>,
    /// How PINs are asked for and how long logins last.
    pub policy: Arc<PinPolicy>,
}

/// How the agent gets PINs it was not given, and how long a login lasts.
#[derive(Debug, Clone, Default)]
pub struct PinPolicy {
    /// The pinentry program, if the agent should prompt itself.
    pub pinentry: Option<PathBuf>,
    /// Log out this long after logging in.
    pub ttl: Option<std::time::Duration>,
    /// Log out after this long without a private-key operation.
    pub idle: Option<std::time::Duration>,
}

/// Where the agent listens when nothing says otherwise.
///
/// # Errors
/// When neither `$SMIME_AGENT_SOCK` nor `$XDG_RUNTIME_DIR` is set.
pub fn default_socket() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SMIME_AGENT_SOCK").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => Ok(Path::new(&d).join("smime-agent").join("agent.sock")),
        None => bail!("no socket path: set SMIME_AGENT_SOCK or XDG_RUNTIME_DIR, or pass --socket"),
    }
}

/// Reads a PIN file: the first line, without its line ending.
///
/// # Errors
/// When the file cannot be read or is empty.
pub fn read_pin_file(path: &Path) -> anyhow::Result<Pin> {
    let raw = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading PIN file {}", path.display()))?,
    );
    let line = raw.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!("PIN file {} is empty", path.display());
    }
    Ok(Pin::new(line.to_owned()))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Config {
    /// Resolves flags, environment and config file.
    ///
    /// # Errors
    /// A malformed config file, an unreadable PIN file, or no module at all.
    pub fn resolve(flags: &Flags) -> anyhow::Result<Self> {
        let file_path = flags.config.clone().or_else(|| {
            let base = env_path("XDG_CONFIG_HOME")
                .or_else(|| env_path("HOME").map(|h| h.join(".config")))?;
            Some(base.join("smime-agent").join("config.toml")).filter(|p| p.exists())
        });
        let file: FileConfig = match &file_path {
            Some(p) => toml::from_str(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?,
            )
            .with_context(|| format!("parsing config {}", p.display()))?,
            None => FileConfig::default(),
        };
        let modules = if !flags.modules.is_empty() {
            flags.modules.clone()
        } else if let Some(v) = std::env::var_os("SMIME_AGENT_MODULE").filter(|v| !v.is_empty()) {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        } else {
            file.modules
        };
        if modules.is_empty() {
            bail!(
                "no PKCS#11 module configured: pass --module PATH, set SMIME_AGENT_MODULE, \
                 or list `modules` in the config file"
            );
        }
        let socket = match flags
            .socket
            .clone()
            .or_else(|| env_path("SMIME_AGENT_SOCK"))
            .or(file.socket)
        {
            Some(s) => s,
            // Under socket activation the service manager passes the socket; its path
            // is only informative.
            None if std::env::var_os("LISTEN_FDS").is_some() => {
                default_socket().unwrap_or_default()
            }
            None => default_socket()?,
        };
        let pin_file = flags
            .pin_file
            .clone()
            .or_else(|| env_path("SMIME_AGENT_PIN_FILE"))
            .or(file.pin_file);
        let pin = match pin_file {
            Some(p) => Some(read_pin_file(&p)?),
            None => std::env::var("SMIME_AGENT_PIN")
                .ok()
                .filter(|p| !p.is_empty())
                .map(Pin::new),
        };
        let pin_token = flags
            .pin_token
            .clone()
            .or_else(|| {
                std::env::var("SMIME_AGENT_PIN_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
            })
            .or(file.pin_token);
        Ok(Self {
            modules,
            socket,
            sessions: flags.sessions.or(file.sessions).unwrap_or(2).clamp(1, 64),
            max_connections: file.max_connections.unwrap_or(4096).max(1),
            pin: pin.map(|p| (Arc::new(p), pin_token)),
            policy: Arc::new(PinPolicy {
                pinentry: flags
                    .pinentry
                    .clone()
                    .or_else(|| env_path("SMIME_AGENT_PINENTRY"))
                    .or(file.pinentry),
                ttl: flags
                    .cache_ttl
                    .or(file.cache_ttl)
                    .filter(|s| *s > 0)
                    .map(std::time::Duration::from_secs),
                idle: flags
                    .idle_timeout
                    .or(file.idle_timeout)
                    .filter(|s| *s > 0)
                    .map(std::time::Duration::from_secs),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_file_first_line_without_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "123456\r\n").unwrap();
        assert_eq!(read_pin_file(&p).unwrap().expose(), "123456");
        std::fs::write(&p, "").unwrap();
        assert!(read_pin_file(&p).is_err());
    }

    #[test]
    fn config_file_is_strict() {
        assert!(toml::from_str::<FileConfig>("modules = [\"/x.so\"]\nsessions = 3").is_ok());
        assert!(toml::from_str::<FileConfig>("modlues = []").is_err());
    }
}
