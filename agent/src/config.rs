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
//! always_auth = "prompt"     # CKA_ALWAYS_AUTHENTICATE keys: "prompt" | "cached-pin"
//! card_events = true         # watch PC/SC readers: rescan tokens when a card comes or goes
//!
//! # Per-token settings, matched by label or serial; unset fields take the values above.
//! [[token]]
//! label = "PIV Card"         # or: serial = "4f1a9c0b7e2d3a11"
//! pin_source = "pinentry"    # "pinentry" | "client" | "file" | "env" | "pinpad"
//! pin_file = "/path/to/pin"  # with pin_source = "file"
//! pin_env = "PIV_PIN"        # with pin_source = "env"
//! cache = "pin"              # "pin" (keep the PIN while logged in) | "login-only"
//! cache_ttl = 600
//! idle_timeout = 120
//! always_auth = "cached-pin"
//! confirm_sign = ["sig-key"] # key labels or CKA_IDs (hex) to confirm before each
//!                            # signature; `true` for every key of the token
//!
//! # Which backend drives a smart card, matched by reader name (or its beginning) and/or
//! # the card's PIV serial; the first matching table wins. Default: PKCS#11 (the modules).
//! [[card]]
//! reader = "Yubico YubiKey"  # or: serial = "5437251"
//! backend = "native"         # "native": PIV over PC/SC, no module | "pkcs11"
//! ```
//!
//! A reader the native backend serves is left out of every PKCS#11 module's tokens, so a
//! card's keys are listed once even when OpenSC or ykcs11 is loaded too.

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
    /// Config file. Default: $XDG_CONFIG_HOME/smime-agent/config.toml (if it exists). It
    /// holds the settings below, per-token `[[token]]` tables (PIN source, cache,
    /// always-authenticate policy, confirmation before signing) and `[[card]]` tables
    /// (`reader` and/or `serial`, `backend = "native"`: drive that PIV card directly over
    /// PC/SC instead of through a PKCS#11 module); SIGHUP re-reads it.
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
    /// Worker sessions per token: how many requests a token serves at once. When they
    /// are at least as many as the CPUs the agent may use, each worker keeps to a CPU of
    /// its own.
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
    /// Keys with CKA_ALWAYS_AUTHENTICATE need the PIN for every operation: `prompt`
    /// asks every time through pinentry, `cached-pin` reuses the PIN the token was
    /// unlocked with (held in zeroizing memory while logged in).
    #[arg(long, value_name = "POLICY", value_parser = ["prompt", "cached-pin"])]
    pub always_auth: Option<String>,
    /// Log filter, e.g. `info` or `smime_agent=debug`. Also SMIME_AGENT_LOG. The log goes
    /// to standard error; at `info` it has one audit line per private-key operation
    /// (target `smime_agent::audit`), which a busy agent writes in batches, at most 10 ms
    /// late.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Do not watch PC/SC card events. By default the agent watches readers and cards
    /// (through pcscd) and looks at the tokens again when a card comes or goes.
    #[arg(long)]
    pub no_card_events: bool,
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
    always_auth: Option<AlwaysAuth>,
    card_events: Option<bool>,
    #[serde(default)]
    token: Vec<TokenRule>,
    #[serde(default)]
    card: Vec<CardRule>,
}

/// One `[[card]]` table: which backend drives the cards it matches.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardRule {
    /// The PC/SC reader name, or its beginning.
    pub reader: Option<String>,
    /// The card's PIV serial (decimal, as `yubico-piv-tool -a status` shows it).
    pub serial: Option<String>,
    /// The backend for matching cards.
    pub backend: CardBackend,
}

/// `backend` of a `[[card]]`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CardBackend {
    /// PIV over PC/SC through the `yubikey` crate: no PKCS#11 module.
    Native,
    /// The configured PKCS#11 modules (OpenSC, ykcs11): the default.
    #[default]
    Pkcs11,
}

impl CardRule {
    fn reader_matches(&self, reader: &str) -> bool {
        self.reader
            .as_deref()
            .is_none_or(|r| reader == r || reader.starts_with(r))
    }
}

/// One `[[token]]` table: settings for the tokens it matches.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRule {
    /// Token label to match.
    pub label: Option<String>,
    /// Token serial to match.
    pub serial: Option<String>,
    /// Where the PIN comes from.
    pub pin_source: Option<PinSourceKind>,
    /// With `pin_source = "file"`.
    pub pin_file: Option<PathBuf>,
    /// With `pin_source = "env"`: the variable's name.
    pub pin_env: Option<String>,
    /// The pinentry program for this token.
    pub pinentry: Option<PathBuf>,
    /// What the agent keeps after a login.
    pub cache: Option<CacheKind>,
    /// Seconds from login to logout (0: never).
    pub cache_ttl: Option<u64>,
    /// Seconds without use before logout (0: never).
    pub idle_timeout: Option<u64>,
    /// Always-authenticate keys.
    pub always_auth: Option<AlwaysAuth>,
    /// Keys to confirm before each signature.
    pub confirm_sign: Option<ConfirmSign>,
}

/// `pin_source` of a `[[token]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinSourceKind {
    /// The agent asks through pinentry.
    Pinentry,
    /// The client forwards the PIN (`smime unlock`); the agent never prompts.
    Client,
    /// A file holding the PIN (CI).
    File,
    /// An environment variable holding the PIN (CI).
    Env,
    /// The reader's PIN pad (CKF_PROTECTED_AUTHENTICATION_PATH): no PIN crosses the host.
    Pinpad,
}

/// `cache` of a `[[token]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheKind {
    /// Keep the PIN (zeroizing) while logged in, to log in again after a card
    /// reinsertion and for `always_auth = "cached-pin"`.
    Pin,
    /// Keep only the token's login state; no PIN stays in memory.
    LoginOnly,
}

/// Policy for CKA_ALWAYS_AUTHENTICATE keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlwaysAuth {
    /// Ask for the PIN before every operation.
    #[default]
    Prompt,
    /// Reuse the PIN the token was unlocked with.
    CachedPin,
}

/// `confirm_sign`: `true`/`false` for every key, or a list of key labels / CKA_IDs.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ConfirmSign {
    /// Every key of the token, or none.
    All(bool),
    /// These keys (label or CKA_ID in hex).
    Keys(Vec<String>),
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
    /// How PINs are asked for and how long logins last, for tokens no `[[token]]` matches.
    pub policy: Arc<PinPolicy>,
    /// The `[[token]]` tables, in file order (the first match wins).
    pub token_rules: Vec<TokenRule>,
    /// The flags the configuration was resolved from (to re-read it on SIGHUP).
    pub flags: Flags,
    /// Watch PC/SC readers and cards.
    pub card_events: bool,
    /// The `[[card]]` tables, in file order (the first match wins).
    pub card_rules: Vec<CardRule>,
}

/// How the agent gets PINs for one token, and how long a login lasts.
#[derive(Debug, Clone, Default)]
pub struct PinPolicy {
    /// The pinentry program, if the agent should prompt itself.
    pub pinentry: Option<PathBuf>,
    /// Log out this long after logging in.
    pub ttl: Option<std::time::Duration>,
    /// Log out after this long without a private-key operation.
    pub idle: Option<std::time::Duration>,
    /// The PIN source the configuration names (`None`: pinentry if configured, else
    /// client; a PIN pad if the token has one).
    pub source: Option<PinSourceKind>,
    /// For `file` / `env`: where the PIN is read, at each login (it is not kept here).
    pub pin_file: Option<PathBuf>,
    /// For `env`.
    pub pin_env: Option<String>,
    /// Keep no PIN after login.
    pub login_only: bool,
    /// Always-authenticate keys.
    pub always_auth: AlwaysAuth,
    /// Keys to confirm before each signature.
    pub confirm_sign: Option<ConfirmSign>,
}

impl PinPolicy {
    /// Whether signing with the key (`label`, `cka_id`) needs the user's confirmation.
    /// Keys are listed by label or CKA_ID in hex.
    pub fn confirms(&self, label: &str, cka_id: &[u8]) -> bool {
        match &self.confirm_sign {
            None | Some(ConfirmSign::All(false)) => false,
            Some(ConfirmSign::All(true)) => true,
            Some(ConfirmSign::Keys(k)) => {
                let id_hex = hex::encode(cka_id);
                k.iter()
                    .any(|k| k == label || k.eq_ignore_ascii_case(&id_hex))
            }
        }
    }

    /// Reads the PIN of a `file` or `env` source, if this policy has one.
    ///
    /// # Errors
    /// When the file cannot be read or the variable is unset.
    pub fn read_pin(&self) -> anyhow::Result<Option<Pin>> {
        match self.source {
            Some(PinSourceKind::File) => {
                let p = self
                    .pin_file
                    .as_deref()
                    .context("pin_source = \"file\" needs pin_file")?;
                read_pin_file(p).map(Some)
            }
            Some(PinSourceKind::Env) => {
                let v = self
                    .pin_env
                    .as_deref()
                    .context("pin_source = \"env\" needs pin_env")?;
                let pin = zeroize::Zeroizing::new(
                    std::env::var(v).with_context(|| format!("PIN variable {v} is not set"))?,
                );
                if pin.is_empty() {
                    bail!("PIN variable {v} is empty");
                }
                Ok(Some(Pin::new(pin.to_string())))
            }
            _ => Ok(None),
        }
    }
}

impl Config {
    /// Whether the card in `reader` (with PIV serial `serial`, once known) goes to the
    /// native PIV backend. Without the serial: whether it may (the card must be opened to
    /// decide by serial).
    pub fn native_card(&self, reader: &str, serial: Option<u32>) -> bool {
        let serial = serial.map(|s| s.to_string());
        for r in self.card_rules.iter().filter(|r| r.reader_matches(reader)) {
            match (&r.serial, &serial) {
                (Some(want), Some(got)) if want != got => continue,
                // A serial rule, serial not known yet: open the card to see.
                (Some(_), None) if r.backend == CardBackend::Native => return true,
                (Some(_), None) => continue,
                _ => return r.backend == CardBackend::Native,
            }
        }
        false
    }

    /// Whether a `[[card]]` table gives every card in `reader` to the native backend
    /// (by reader, whatever the serial): PKCS#11 modules leave that reader alone even
    /// while it is empty, so a card put in later is not claimed twice.
    pub fn native_reader(&self, reader: &str) -> bool {
        self.card_rules
            .iter()
            .find(|r| r.reader_matches(reader) && r.serial.is_none() && r.reader.is_some())
            .is_some_and(|r| r.backend == CardBackend::Native)
    }

    /// Whether any card may go to the native backend.
    pub fn any_native(&self) -> bool {
        self.card_rules
            .iter()
            .any(|r| r.backend == CardBackend::Native)
    }

    /// The policy for a token: the first `[[token]]` matching its label or serial, over
    /// the agent-wide defaults.
    pub fn policy_for(&self, label: &str, serial: &str) -> Arc<PinPolicy> {
        let Some(r) = self.token_rules.iter().find(|r| {
            r.label.as_deref().is_some_and(|l| l == label)
                || r.serial.as_deref().is_some_and(|s| s == serial)
        }) else {
            return self.policy.clone();
        };
        let secs = |v: Option<u64>, d| match v {
            Some(0) => None,
            Some(s) => Some(std::time::Duration::from_secs(s)),
            None => d,
        };
        let d = &self.policy;
        Arc::new(PinPolicy {
            pinentry: r.pinentry.clone().or_else(|| d.pinentry.clone()),
            ttl: secs(r.cache_ttl, d.ttl),
            idle: secs(r.idle_timeout, d.idle),
            source: r.pin_source.or(d.source),
            pin_file: r.pin_file.clone(),
            pin_env: r.pin_env.clone(),
            login_only: r.cache.map_or(d.login_only, |c| c == CacheKind::LoginOnly),
            always_auth: r.always_auth.unwrap_or(d.always_auth),
            confirm_sign: r.confirm_sign.clone().or_else(|| d.confirm_sign.clone()),
        })
    }
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
        for r in &file.card {
            if r.reader.is_none() && r.serial.is_none() {
                bail!("a [[card]] table needs `reader` or `serial`");
            }
        }
        let any_native = file.card.iter().any(|r| r.backend == CardBackend::Native);
        if modules.is_empty() && !any_native {
            bail!(
                "no PKCS#11 module configured: pass --module PATH, set SMIME_AGENT_MODULE, \
                 or list `modules` in the config file (or give a card to the native PIV \
                 backend with a [[card]] table)"
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
        for r in &file.token {
            if r.label.is_none() && r.serial.is_none() {
                bail!("a [[token]] table needs `label` or `serial`");
            }
            match r.pin_source {
                Some(PinSourceKind::File) if r.pin_file.is_none() => {
                    bail!("[[token]] with pin_source = \"file\" needs pin_file")
                }
                Some(PinSourceKind::Env) if r.pin_env.is_none() => {
                    bail!("[[token]] with pin_source = \"env\" needs pin_env")
                }
                _ => {}
            }
        }
        let always_auth = match flags.always_auth.as_deref() {
            Some("cached-pin") => AlwaysAuth::CachedPin,
            Some(_) => AlwaysAuth::Prompt,
            None => file.always_auth.unwrap_or_default(),
        };
        Ok(Self {
            flags: flags.clone(),
            token_rules: file.token,
            card_rules: file.card,
            modules,
            socket,
            sessions: flags.sessions.or(file.sessions).unwrap_or(2).clamp(1, 64),
            max_connections: file.max_connections.unwrap_or(4096).max(1),
            card_events: !flags.no_card_events && file.card_events.unwrap_or(true),
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
                always_auth,
                ..PinPolicy::default()
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

    #[test]
    fn token_tables_override_the_defaults() {
        let f: FileConfig = toml::from_str(
            "cache_ttl = 60\n\
             [[token]]\nlabel = \"a\"\npin_source = \"pinpad\"\ncache = \"login-only\"\n\
             always_auth = \"cached-pin\"\nconfirm_sign = [\"k1\", \"0A\"]\nidle_timeout = 5\n\
             [[token]]\nserial = \"s2\"\nconfirm_sign = true\ncache_ttl = 0\n",
        )
        .unwrap();
        let c = Config {
            modules: vec![],
            socket: PathBuf::new(),
            sessions: 1,
            max_connections: 1,
            card_events: false,
            pin: None,
            policy: Arc::new(PinPolicy {
                ttl: Some(std::time::Duration::from_secs(60)),
                ..PinPolicy::default()
            }),
            token_rules: f.token,
            card_rules: vec![],
            flags: Flags::default(),
        };
        let a = c.policy_for("a", "x");
        assert_eq!(a.source, Some(PinSourceKind::Pinpad));
        assert!(a.login_only);
        assert_eq!(a.always_auth, AlwaysAuth::CachedPin);
        assert_eq!(a.ttl, Some(std::time::Duration::from_secs(60)));
        assert_eq!(a.idle, Some(std::time::Duration::from_secs(5)));
        assert!(a.confirms("k1", &[1]) && a.confirms("other", &[0x0a]) && !a.confirms("k2", &[1]));
        let b = c.policy_for("b", "s2");
        assert!(b.confirms("any", &[1]));
        assert_eq!(b.ttl, None);
        let other = c.policy_for("z", "z");
        assert!(!other.confirms("k1", &[1]) && !other.login_only);
        assert!(
            toml::from_str::<FileConfig>("[[token]]\nlabel = \"a\"\npin_source = \"nope\"")
                .is_err()
        );
    }

    #[test]
    fn card_tables_choose_the_backend() {
        let f: FileConfig = toml::from_str(
            "[[card]]\nserial = \"42\"\nbackend = \"pkcs11\"\n\
             [[card]]\nreader = \"Yubico\"\nbackend = \"native\"\n\
             [[card]]\nserial = \"7\"\nbackend = \"native\"\n",
        )
        .unwrap();
        let c = Config {
            card_rules: f.card,
            ..Config::resolve(&Flags {
                modules: vec!["/x.so".into()],
                socket: Some("/tmp/s".into()),
                config: Some("/dev/null".into()),
                ..Flags::default()
            })
            .unwrap()
        };
        // By reader; a serial rule before it takes its card back to PKCS#11.
        assert!(c.native_card("Yubico YubiKey OTP+FIDO+CCID 00 00", Some(1)));
        assert!(!c.native_card("Yubico YubiKey OTP+FIDO+CCID 00 00", Some(42)));
        assert!(c.native_reader("Yubico YubiKey OTP+FIDO+CCID 00 00"));
        // By serial in any reader: the card must be opened to know.
        assert!(c.native_card("Other Reader 00 00", None));
        assert!(c.native_card("Other Reader 00 00", Some(7)));
        assert!(!c.native_card("Other Reader 00 00", Some(8)));
        assert!(!c.native_reader("Other Reader 00 00"));
        assert!(c.any_native());
        assert!(toml::from_str::<FileConfig>("[[card]]\nbackend = \"piv\"").is_err());
    }
}
