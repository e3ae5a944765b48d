//! Command-line definitions (clap only). `main` turns them into actions.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// S/MIME and CMS with keys that never leave the smart card or HSM.
///
/// `smime` does all message work (hashing, CMS, certificates) itself and asks
/// `smime-agent` only for the private-key operation.
#[derive(Debug, Parser)]
#[command(name = "smime", version, after_help = exit_status_help())]
pub struct Cli {
    /// Agent socket. Default: $SMIME_AGENT_SOCK, else $XDG_RUNTIME_DIR/smime-agent/agent.sock.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The exit statuses of `smime`, as `run` returns them: the single source for `--help`
/// and the man page.
pub const EXIT_STATUS: [(u8, &str); 5] = [
    (
        0,
        "success (for verify: a good signature from a trusted signer)",
    ),
    (
        1,
        "bad signature or verification failure, or a message that does not decrypt intact",
    ),
    (
        2,
        "usage error, or input that cannot be used as given (including a message \
         encrypted for none of the agent's keys)",
    ),
    (
        3,
        "the agent or the token is unavailable: no agent, token absent, PIN required, \
         wrong or locked",
    ),
    (4, "any other error (I/O, internal)"),
];

/// OpenSSL's single-dash spellings that `smime` accepts, and the flag each stands for.
pub const OPENSSL_FLAGS: [(&str, &str); 8] = [
    ("-in", "--in"),
    ("-out", "--out"),
    ("-inform", "--inform"),
    ("-outform", "--outform"),
    ("-content", "--content"),
    ("-CAfile", "--trust"),
    ("-certfile", "--certfile"),
    ("-noverify", "--no-chain"),
];

/// Rewrites OpenSSL's single-dash long flags (`-in FILE`, `-outform PEM`, `-in=FILE`) to
/// `smime`'s (`--in FILE`, ...), so that `openssl cms` habits work. Only the names in
/// [`OPENSSL_FLAGS`] are rewritten, and nothing after a `--`. clap alone cannot do this:
/// it reads `-in` as `-i n`.
pub fn openssl_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest = false;
    for arg in args {
        if rest || out.is_empty() {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        let rewritten = arg.to_str().and_then(|a| {
            let (name, value) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (a, None),
            };
            let (_, long) = OPENSSL_FLAGS.iter().find(|(o, _)| *o == name)?;
            Some(match value {
                Some(v) if *long != "--no-chain" => OsString::from(format!("{long}={v}")),
                Some(_) => return None,
                None => OsString::from(*long),
            })
        });
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

impl Cli {
    /// Parses the process's arguments, OpenSSL spellings included; exits 2 on a usage
    /// error, as clap does.
    pub fn parse_args() -> Self {
        let mut cli = Self::parse_from(openssl_args(std::env::args_os()));
        if let Err(e) = cli.apply_forms() {
            e.exit();
        }
        cli
    }

    /// Folds `--inform`/`--outform` into the flags the commands read (`--pem`, `--der`,
    /// `--mime`).
    pub fn apply_forms(&mut self) -> Result<(), clap::Error> {
        let conflict =
            |msg: String| Cli::command().error(clap::error::ErrorKind::ArgumentConflict, msg);
        match &mut self.command {
            Command::Sign(a) => match a.outform {
                None => {}
                Some(Form::Der | Form::Pem) if !a.encrypt_to.is_empty() => {
                    return Err(conflict(
                        "--outform DER|PEM cannot be used with --encrypt-to (it makes S/MIME)"
                            .into(),
                    ));
                }
                Some(Form::Pem) => a.pem = true,
                Some(Form::Der) => a.der = a.opaque,
                Some(Form::Smime) => a.mime = !a.opaque,
            },
            Command::Encrypt(a) => {
                let more = std::mem::take(&mut a.recipients);
                a.to.extend(more);
                match a.outform {
                    None => {}
                    Some(Form::Pem) => a.pem = true,
                    Some(Form::Der) => a.der = true,
                    Some(Form::Smime) => a.mime = true,
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn exit_status_help() -> String {
    let mut s = String::from(
        "OpenSSL spellings work too: -in, -out, -inform, -outform, -content, -CAfile \
         (--trust), -certfile, -noverify (--no-chain).\n\n",
    );
    s.push_str("Exit status:");
    for (c, what) in EXIT_STATUS {
        s.push_str(&format!("\n  {c}  {what}"));
    }
    s
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the agent's keys with their certificates.
    Keys {
        /// Print a JSON array (fields: id, token, label, algorithm, subject, email,
        /// not_before, not_after, sha256, …).
        #[arg(long)]
        json: bool,
    },
    /// Make a detached CMS signature (.p7s) of a file or of standard input.
    Sign(SignArgs),
    /// Check a detached CMS signature against its content.
    Verify(VerifyArgs),
    /// Encrypt for one or more recipients (S/MIME 4.0: AES-GCM AuthEnvelopedData by default).
    Encrypt(EncryptArgs),
    /// Decrypt a message or CMS for one of the agent's keys.
    Decrypt(DecryptArgs),
    /// Decrypt and verify a signed-then-encrypted message (`smime decrypt --verify`).
    Open(DecryptArgs),
    /// Add correspondents' certificates to the local store, to encrypt to them by address.
    Import {
        /// Certificate files (PEM with one or more certificates, or DER).
        #[arg(required = true, value_name = "CERT")]
        certs: Vec<PathBuf>,
    },
    /// Print the certificates of a signed message or CMS/PKCS#7 as PEM, or their e-mail
    /// addresses, or the PKCS#7 itself: what mail clients ask `openssl` for (see
    /// contrib/neomuttrc.smime). Only --signer checks anything (the signature).
    Certs(CertsArgs),
    /// Show the agent's tokens and their login state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Log in to a token: prompts for the PIN on the terminal and hands it to the agent.
    Unlock {
        /// Token label or serial (default: the only token).
        #[arg(long)]
        token: Option<String>,
        /// Read the PIN from the first line of standard input instead of the terminal.
        #[arg(long)]
        pin_stdin: bool,
        /// Send the PIN even if the token is on its final try (one more wrong PIN locks
        /// it). Without it `smime` asks on the terminal, or refuses.
        #[arg(long)]
        confirm_final_try: bool,
    },
    /// Log out of one token, or all, in the agent.
    Lock {
        /// Token label or serial (default: all tokens).
        #[arg(long)]
        token: Option<String>,
    },
    /// Provision a YubiKey (or a YubiKey-compatible PIV card) directly over PC/SC:
    /// list it, make keys and certificate requests, import certificates, change the
    /// PIN, PUK and management key. Does not need the agent.
    #[command(after_long_help = CARD_HELP)]
    Card(CardArgs),
}

/// The long help of `smime card`: how secrets are read, and a provisioning walkthrough.
const CARD_HELP: &str = "\
Secrets (PIN, PUK, management key) are never taken from the command line. On a terminal \
smime prompts for each one (new values twice). When standard input is not a terminal, it \
reads each value from its own line of standard input, in the order of the prompts, \
without confirmations: the current PIN first, then, if needed, the management key (hex), \
then new values.

A wrong PIN or PUK is reported with the tries left and never retried. The management key \
is taken from the card's PIN-protected storage when set (`set-mgmt-key --protected`), \
else the factory default is tried (with a warning: it is public), else it is asked for.

smime connects in shared mode and always leaves the card as it is (no reset), so the \
agent or OpenSC can use the same card at the same time. The card stays PIN-verified after \
a command that needed the PIN, as with other PIV tools.

Provisioning a card for S/MIME:
  smime card list
  smime card set-mgmt-key --protected
  smime card change-pin
  smime card change-puk
  smime card generate --slot 9a --alg p256 --subject 'CN=Alice' --email alice@example.org --csr alice.csr
  (have your CA sign alice.csr)
  smime card import-cert --slot 9a alice.pem";

/// `smime card`.
#[derive(Debug, Args)]
pub struct CardArgs {
    /// The card's reader: its full name, or a unique part of it (case does not matter).
    #[arg(long, global = true, value_name = "NAME")]
    pub reader: Option<String>,
    /// The card's serial number (decimal, as `smime card list` shows it).
    #[arg(long, global = true, value_name = "N")]
    pub serial: Option<u32>,
    /// What to do with the card.
    #[command(subcommand)]
    pub command: CardCommand,
}

/// `smime card` subcommands.
#[derive(Debug, Subcommand)]
pub enum CardCommand {
    /// List readers and PIV cards: serial, version, the slots' keys and certificates,
    /// PIN and PUK tries left, and whether the management key is the (insecure) default.
    List {
        /// Print JSON: an array of readers, each with its card (or null).
        #[arg(long)]
        json: bool,
    },
    /// Generate a key pair on the card, then make a certificate request signed by the
    /// new key (--csr), or a self-signed certificate written to the slot.
    ///
    /// Needs the PIN and the management key. The key usage follows the slot: 9a, 9c
    /// and 9e sign (9c also with non-repudiation); 9d and the retired slots 82-95 are
    /// for encryption (RSA key transport, EC key agreement). With --email the request or
    /// certificate is for S/MIME: subjectAltName e-mail and extended key usage
    /// emailProtection.
    Generate(CardGenerateArgs),
    /// Write a certificate (PEM or DER) into a slot. The certificate must belong to the
    /// key in the slot: smime checks this (by the card's key metadata, or by a test
    /// signature with the PIN) and refuses a certificate for another key.
    ImportCert {
        /// Slot: 9a, 9c, 9d, 9e or a retired slot 82-95.
        #[arg(long, value_name = "SLOT", value_parser = parse_slot)]
        slot: u8,
        /// The certificate file (one certificate, PEM or DER).
        #[arg(value_name = "CERT")]
        cert: PathBuf,
    },
    /// Print the YubiKey attestation certificate (PEM) of a key generated on the card.
    /// Cards without attestation fail with a clear error.
    Attest {
        /// Slot: 9a, 9c, 9d, 9e or a retired slot 82-95.
        #[arg(long, value_name = "SLOT", value_parser = parse_slot)]
        slot: u8,
        /// Where to write the certificate (default: standard output). Written atomically.
        #[arg(long = "out", short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Change the PIN (asks for the current PIN and the new one, 6-8 characters).
    ChangePin,
    /// Change the PUK (asks for the current PUK and the new one, 6-8 characters).
    ChangePuk,
    /// Unblock a locked PIN with the PUK, setting a new PIN.
    Unblock,
    /// Change the management key. Asks for the PIN, then the current management key
    /// (unless stored PIN-protected or default), then the new key in hex unless
    /// --generate or --protected.
    SetMgmtKey {
        /// Store the new key on the card, readable only after PIN verification, so that
        /// the PIN alone provisions the card. Implies a random new key (not printed).
        #[arg(long)]
        protected: bool,
        /// Generate a random new key and print it (hex) on standard output.
        #[arg(long, conflicts_with = "protected")]
        generate: bool,
        /// The new key's algorithm (default: that of the current key).
        #[arg(long, value_enum, value_name = "ALG")]
        algorithm: Option<MgmtAlg>,
    },
}

/// `smime card generate`.
#[derive(Debug, Args)]
pub struct CardGenerateArgs {
    /// Slot: 9a, 9c, 9d, 9e or a retired slot 82-95.
    #[arg(long, value_name = "SLOT", value_parser = parse_slot)]
    pub slot: u8,
    /// Key algorithm.
    #[arg(long, value_enum)]
    pub alg: CardAlg,
    /// When the card asks for the PIN before using the key (default: the card's).
    #[arg(long, value_enum, value_name = "POLICY")]
    pub pin_policy: Option<CardPinPolicy>,
    /// When the card asks for a touch before using the key (default: the card's).
    #[arg(long, value_enum, value_name = "POLICY")]
    pub touch_policy: Option<CardTouchPolicy>,
    /// Write a PKCS#10 certificate request (PEM) here instead of making a self-signed
    /// certificate; have a CA sign it, then `smime card import-cert`. The slot's old
    /// certificate, if any, is removed (it belonged to the replaced key).
    #[arg(long, value_name = "FILE")]
    pub csr: Option<PathBuf>,
    /// Subject name, RFC 4514 (e.g. 'CN=Alice Example,O=Example'). Default: CN=EMAIL.
    #[arg(long, value_name = "DN")]
    pub subject: Option<String>,
    /// E-mail address (subjectAltName) for S/MIME. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub email: Vec<String>,
    /// Self-signed certificate: also write it (PEM) to this file.
    #[arg(long = "out", short = 'o', value_name = "FILE", conflicts_with = "csr")]
    pub output: Option<PathBuf>,
    /// Self-signed certificate: days of validity.
    #[arg(long, default_value_t = 365, value_name = "N")]
    pub days: u32,
    /// Replace a key whose slot holds a certificate (the old key is lost for good).
    #[arg(long)]
    pub force: bool,
}

/// Parses a PIV slot: 9a, 9c, 9d, 9e or 82-95 (hex).
fn parse_slot(s: &str) -> Result<u8, String> {
    let t = s.trim_start_matches("0x").to_ascii_lowercase();
    match u8::from_str_radix(&t, 16) {
        Ok(n @ (0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95)) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a PIV key slot (9a, 9c, 9d, 9e, or a retired slot 82-95)"
        )),
    }
}

/// Card key algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CardAlg {
    /// ECDSA/ECDH on NIST P-256.
    P256,
    /// ECDSA/ECDH on NIST P-384.
    P384,
    /// RSA 2048.
    Rsa2048,
}

/// PIN policies of a card key.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CardPinPolicy {
    /// Never ask for the PIN.
    Never,
    /// Once per session.
    Once,
    /// Before every use.
    Always,
}

/// Touch policies of a card key.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CardTouchPolicy {
    /// Never ask for a touch.
    Never,
    /// Before every use.
    Always,
    /// Once per 15 seconds.
    Cached,
}

/// Management key algorithms.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MgmtAlg {
    /// Triple DES (24 bytes; the default before YubiKey 5.7).
    #[value(name = "3des")]
    TripleDes,
    /// AES-128 (16 bytes).
    Aes128,
    /// AES-192 (24 bytes).
    Aes192,
    /// AES-256 (32 bytes).
    Aes256,
}

/// `--inform`/`--outform` values, as `openssl cms` spells them (case does not matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Form {
    /// Raw CMS, DER (BER on input).
    Der,
    /// Raw CMS, PEM.
    Pem,
    /// An S/MIME entity.
    Smime,
}

/// Digest algorithms.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Digest {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// `smime sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Key: its id, label, an e-mail address of its certificate, or the certificate's
    /// SHA-256 fingerprint. An ambiguous selector lists the candidates.
    #[arg(long, short = 'k', value_name = "SEL")]
    pub key: String,
    /// Content to sign (default: standard input). It is hashed as a stream.
    #[arg(long = "in", short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Where to write the signature (default: standard output). Written atomically.
    #[arg(long = "out", short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// PEM output (`-----BEGIN CMS-----`) instead of DER.
    #[arg(long, conflicts_with = "mime")]
    pub pem: bool,
    /// With --opaque: raw CMS (BER) instead of an S/MIME entity.
    #[arg(long, requires = "opaque", conflicts_with = "pem")]
    pub der: bool,
    /// Output form, as `openssl cms -outform`: DER (the default: detached DER, or raw CMS
    /// with --opaque), PEM (--pem) or SMIME (--mime, or the entity with --opaque).
    #[arg(long, value_enum, ignore_case = true, value_name = "FORM",
          conflicts_with_all = ["pem", "der", "mime"])]
    pub outform: Option<Form>,
    /// Output a clear-signed `multipart/signed` S/MIME entity. A whole RFC 5322 message
    /// keeps its From/To/Subject/Date headers outside; the body is canonicalized to CRLF
    /// and a 7-bit-safe transfer encoding before signing.
    #[arg(long, conflicts_with = "opaque")]
    pub mime: bool,
    /// Output an opaque signed entity (application/pkcs7-mime; smime-type=signed-data):
    /// the content travels inside the signature. With --der or --pem: raw CMS.
    #[arg(long)]
    pub opaque: bool,
    /// Sign, then encrypt the signed S/MIME message to these recipients (certificate
    /// files or addresses in the store; repeatable). Implies --mime unless --opaque.
    #[arg(long = "encrypt-to", value_name = "CERT|EMAIL", conflicts_with_all = ["der", "pem"])]
    pub encrypt_to: Vec<String>,
    /// Sign the content with CRLF line ends (bare LF becomes CRLF), as S/MIME requires of
    /// a MIME entity and as `openssl smime -sign` does without -binary. For the detached
    /// signature of a multipart/signed part that a mail client assembles itself.
    #[arg(long, conflicts_with_all = ["mime", "opaque"])]
    pub crlf: bool,
    /// Digest algorithm.
    #[arg(long, value_enum, default_value = "sha256")]
    pub digest: Digest,
    /// RSA-PSS instead of PKCS#1 v1.5 (RSA keys only).
    #[arg(long)]
    pub pss: bool,
    /// Extra certificates (PEM) to include, e.g. intermediate CAs.
    #[arg(long = "certfile", value_name = "FILE")]
    pub certfile: Vec<PathBuf>,
}

/// `smime verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The signed message or signature (default: standard input): an S/MIME entity
    /// (multipart/signed or opaque pkcs7-mime), or CMS in DER, BER or PEM.
    #[arg(long = "in", short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Input form, as `openssl cms -inform` (DER, PEM or SMIME). Accepted for OpenSSL
    /// habits only: the form is detected from the input either way.
    #[arg(long, value_enum, ignore_case = true, value_name = "FORM")]
    pub inform: Option<Form>,
    /// The signed content of a detached CMS signature (`-` for standard input). Not
    /// needed when the input carries its content.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub content: Option<PathBuf>,
    /// Write the verified content here (`-` for standard output): the message with its
    /// mail headers for S/MIME input. Written only if verification succeeds. With it, the
    /// verdict goes to standard error.
    #[arg(long = "out", short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Trusted CA certificates (PEM or DER file, or a directory of them; repeatable). The
    /// signer's certificate must chain to one of them. Default: $SMIME_TRUST (files and
    /// directories, ':'-separated; `system` is the system CA bundle), else the certificates
    /// in $XDG_CONFIG_HOME/smime/trust/ (~/.config/smime/trust/) if it exists, else the
    /// system's CA bundle.
    #[arg(long, value_name = "FILE|DIR")]
    pub trust: Vec<PathBuf>,
    /// Check only the signature and the signer certificate's validity period, not its
    /// chain (like `openssl cms -verify -noverify`). The verdict says so.
    #[arg(long, conflicts_with = "trust")]
    pub no_chain: bool,
    /// Certification path settings.
    #[command(flatten)]
    pub path: PathArgs,
    /// Add the signer's certificate to the certificate store (to encrypt to them later).
    #[arg(long)]
    pub store_signers: bool,
    /// Print the verdict as JSON (on failure too, with the reason; the exit code is the same).
    #[arg(long)]
    pub json: bool,
    /// On success write `Verification successful` as the first line of standard error, and
    /// the verdict after it there (never on standard output), as `openssl smime -verify`
    /// does: mutt and neomutt look for that line.
    #[arg(long)]
    pub openssl_status: bool,
}

/// How the signer's certification path is validated (RFC 5280 §6.1.1 inputs and more).
#[derive(Debug, Clone, Default, Args)]
pub struct PathArgs {
    /// Acceptable certificate policy (OID; repeatable): the user-initial-policy-set.
    /// Default: anyPolicy.
    #[arg(long = "policy", value_name = "OID", value_parser = parse_oid)]
    pub policies: Vec<const_oid::ObjectIdentifier>,
    /// The path must be valid for one of the --policy policies (initial-explicit-policy).
    #[arg(long)]
    pub require_explicit_policy: bool,
    /// Policy mapping is not allowed (initial-policy-mapping-inhibit).
    #[arg(long)]
    pub inhibit_policy_mapping: bool,
    /// anyPolicy in CA certificates is not honoured (initial-any-policy-inhibit).
    #[arg(long)]
    pub inhibit_any_policy: bool,
    /// Extra intermediate CA certificates (PEM or DER file, or a directory of them;
    /// repeatable), for messages that lack them. The CA certificates of the certificate
    /// store are used too.
    #[arg(long = "certs", alias = "certfile", value_name = "FILE|DIR")]
    pub certs: Vec<PathBuf>,
    /// CRLs (DER or PEM file, or a directory of them; repeatable), besides those in the
    /// message.
    #[arg(long = "crl", value_name = "FILE|DIR")]
    pub crls: Vec<PathBuf>,
    /// Revocation checking: off; soft (a revoked certificate fails, unknown status passes
    /// and is reported); hard (unknown status fails too). Sources, in order: the message's
    /// CRLs and --crl, cached CRLs, OCSP (--ocsp-url or the certificate's AIA), CRLs fetched
    /// from http distribution points (cached in $SMIME_CRL_CACHE, else
    /// $XDG_CACHE_HOME/smime/crls, until their nextUpdate).
    #[arg(long, value_enum, default_value = "soft")]
    pub revocation: Revocation,
    /// OCSP responder (http URL) to ask about every certificate of the path, instead of
    /// the one named in each certificate's authorityInfoAccess.
    #[arg(long, value_name = "URL")]
    pub ocsp_url: Option<String>,
    /// Use no network for revocation: only the message's CRLs, --crl and cached CRLs.
    #[arg(long)]
    pub offline: bool,
    /// Also trust the system's CA bundle (/etc/ssl/certs/ca-certificates.crt) besides
    /// --trust.
    #[arg(long)]
    pub system_trust: bool,
}

/// `--revocation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Revocation {
    /// No revocation checking.
    Off,
    /// Revoked fails; unknown passes (and is reported).
    #[default]
    Soft,
    /// Revoked and unknown both fail.
    Hard,
}

fn parse_oid(s: &str) -> Result<const_oid::ObjectIdentifier, String> {
    s.parse().map_err(|e| {
        format!("{s:?} is not an OID (dotted decimal, e.g. 2.16.840.1.101.3.2.1.48.1): {e}")
    })
}

/// Content encryption algorithms.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Cipher {
    /// AES-128-GCM AuthEnvelopedData (RFC 5084; the S/MIME 4.0 default).
    #[default]
    Aes128Gcm,
    /// AES-256-GCM AuthEnvelopedData.
    Aes256Gcm,
    /// AES-128-CBC EnvelopedData, for S/MIME 3.x clients (OpenSSL's `aes128`).
    #[value(alias = "aes128", alias = "aes-128-cbc")]
    Aes128Cbc,
    /// AES-256-CBC EnvelopedData, for S/MIME 3.x clients (OpenSSL's `aes256`).
    #[value(alias = "aes256", alias = "aes-256-cbc")]
    Aes256Cbc,
}

/// RSA key transport.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum KeyTransport {
    /// RSAES-PKCS1-v1_5 (every S/MIME client reads it).
    #[default]
    Pkcs1,
    /// RSAES-OAEP with SHA-256.
    Oaep,
    /// RSAES-OAEP with SHA-1 (older peers and tokens).
    OaepSha1,
}

/// Output form of encrypted or opaque-signed data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutForm {
    /// An S/MIME entity (application/pkcs7-mime), with the input's mail headers kept.
    Smime,
    /// Raw CMS, BER/DER.
    Der,
    /// Raw CMS, PEM (`-----BEGIN CMS-----`).
    Pem,
}

/// `smime encrypt`.
#[derive(Debug, Clone, Default, Args)]
pub struct EncryptArgs {
    /// Recipient: a certificate file, or an e-mail address found in the certificate
    /// store (`smime import`). Repeatable.
    #[arg(
        long = "to",
        short = 't',
        value_name = "CERT|EMAIL",
        required_unless_present_any = ["self_", "recipients"]
    )]
    pub to: Vec<String>,
    /// More recipients, as `openssl cms -encrypt` takes them: certificate files or
    /// addresses after the flags (the same as --to).
    #[arg(value_name = "CERT|EMAIL")]
    pub recipients: Vec<String>,
    /// Also encrypt to your own certificate (from the agent), so you can read what you sent.
    #[arg(long = "self", id = "self_")]
    pub self_: bool,
    /// With --self: which of your keys (as for `smime sign --key`). Default: the only one
    /// that can decrypt.
    #[arg(long, short = 'k', value_name = "SEL")]
    pub key: Option<String>,
    /// Content (default: standard input).
    #[arg(long = "in", short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Where to write (default: standard output). Written atomically.
    #[arg(long = "out", short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output an S/MIME entity (application/pkcs7-mime), keeping the input's mail
    /// headers outside (the default).
    #[arg(long, conflicts_with_all = ["der", "pem"])]
    pub mime: bool,
    /// Output raw CMS (BER).
    #[arg(long, conflicts_with = "pem")]
    pub der: bool,
    /// Output raw CMS as PEM.
    #[arg(long)]
    pub pem: bool,
    /// Output form, as `openssl cms -outform`: SMIME (--mime, the default), DER (--der) or
    /// PEM (--pem).
    #[arg(long, value_enum, ignore_case = true, value_name = "FORM",
          conflicts_with_all = ["pem", "der", "mime"])]
    pub outform: Option<Form>,
    /// Content encryption.
    #[arg(long, value_enum, default_value = "aes128-gcm")]
    pub cipher: Cipher,
    /// Key transport for RSA recipients.
    #[arg(long = "rsa", value_enum, default_value = "pkcs1")]
    pub rsa: KeyTransport,
}

impl EncryptArgs {
    /// The output form the flags ask for.
    pub fn outform(&self) -> OutForm {
        if self.der {
            OutForm::Der
        } else if self.pem {
            OutForm::Pem
        } else {
            OutForm::Smime
        }
    }
}

/// `smime certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Input (default: standard input): a signed S/MIME message (multipart/signed or
    /// opaque), CMS/PKCS#7 in DER, BER or PEM, or certificates (PEM or DER).
    #[arg(long = "in", short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Where to write (default: standard output). Written only on success.
    #[arg(long = "out", short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Input form (DER, PEM or SMIME), as `openssl -inform`. Accepted for OpenSSL
    /// habits only: the form is detected from the input either way.
    #[arg(long, value_enum, ignore_case = true, value_name = "FORM")]
    pub inform: Option<Form>,
    /// Only the signer's certificate. The signature is verified first (not the chain),
    /// like `openssl smime -verify -noverify -signer FILE`; a bad signature yields nothing
    /// and exit status 1.
    #[arg(long)]
    pub signer: bool,
    /// Print the e-mail addresses of the certificates (subjectAltName, then the subject's
    /// emailAddress), one per line, like `openssl x509 -email`.
    #[arg(long, conflicts_with = "pkcs7")]
    pub emails: bool,
    /// Write the message's SignedData as PEM (`-----BEGIN PKCS7-----`), like `openssl
    /// smime -pk7out`.
    #[arg(long, conflicts_with = "signer")]
    pub pkcs7: bool,
}

/// `smime decrypt` and `smime open`.
#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// The encrypted message (default: standard input): S/MIME, or CMS in DER, BER or PEM.
    #[arg(long = "in", short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Input form, as `openssl cms -inform` (DER, PEM or SMIME). Accepted for OpenSSL
    /// habits only: the form is detected from the input either way.
    #[arg(long, value_enum, ignore_case = true, value_name = "FORM")]
    pub inform: Option<Form>,
    /// Where to write the plaintext (default: standard output). Nothing is written unless
    /// decryption (and, with --verify, verification) succeeds.
    #[arg(long = "out", short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The decrypted message must be signed; verify it and output its content.
    #[arg(long)]
    pub verify: bool,
    /// With --verify: trusted CA certificates (file or directory; default as for `verify`).
    #[arg(long, value_name = "CA.pem")]
    pub trust: Vec<PathBuf>,
    /// With --verify: do not check the signer's chain.
    #[arg(long, conflicts_with = "trust")]
    pub no_chain: bool,
    /// Use only this key (as for `smime sign --key`). Default: every key that can decrypt.
    #[arg(long, short = 'k', value_name = "SEL")]
    pub key: Option<String>,
    /// With --verify (and for `smime open`): certification path settings, as for `verify`.
    #[command(flatten)]
    pub path: PathArgs,
}
