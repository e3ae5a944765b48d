//! `smime-git`: the gpgsm command-line interface git drives for X.509 signatures
//! (`gpg.format=x509`, `gpg.x509.program`), on top of this crate.
//!
//! ```text
//!  git commit -S ─► smime-git --status-fd=2 -bsau KEY ─► Signer (agent) ─► SIGNED MESSAGE on stdout
//!                                                       [GNUPG:] BEGIN_SIGNING, SIG_CREATED on the status fd
//!  git log --show-signature / verify-commit
//!             ─► smime-git --status-fd=1 --verify SIG - ─► cms::verify + trust (SMIME_TRUST)
//!                                                       [GNUPG:] NEWSIG, GOODSIG|BADSIG|…, VALIDSIG, TRUST_*
//! ```
//!
//! The status lines follow GnuPG's `doc/DETAILS` as gpgsm writes them; git reads `SIG_CREATED`
//! when signing and `GOODSIG`/`BADSIG`/`ERRSIG`/`EXPKEYSIG`/`REVKEYSIG`, `VALIDSIG` and the
//! `TRUST_*` level when verifying (`%G?`, `%GF`, `%GS`, `gpg.minTrustLevel`). Key ids and
//! fingerprints are the certificate's SHA-1 fingerprint, as gpgsm shows them.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use clap::Parser;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use const_oid::db::rfc5912;
use der::{Decode as _, Encode as _};
use sha1::{Digest as _, Sha1};
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectKeyIdentifier;

use crate::cms::{self as smime_cms, HashAlg, fmt_time};
use crate::commands::sign::{Signer, can_sign};
use crate::commands::verify::{load_anchors, user_anchor_paths};
use crate::commands::{Failure, connect_socket, hint, key_list};
use crate::keys::{KeySummary, SelectError, certificate_emails, select};
use crate::trust::{Check, TrustPolicy, load_crls};

/// The environment variable naming the trust anchors for verification.
pub use crate::commands::verify::TRUST_ENV;

/// The environment variable naming CRLs for verification, besides those in signatures.
pub const CRL_ENV: &str = "SMIME_CRL";

/// PEM label of the signatures: what gpgsm writes and git looks for.
const ARMOR_LABEL: &str = "SIGNED MESSAGE";

/// Sign or verify for git with keys held by smime-agent (the gpgsm interface).
///
/// git runs `smime-git --status-fd=2 -bsau KEY` to sign (the commit or tag on standard input,
/// the armored detached CMS signature on standard output) and `smime-git --status-fd=1
/// --verify SIGFILE -` to verify (the signed data on standard input; machine-readable
/// `[GNUPG:]` status lines on the status fd, the verdict in words on standard error).
#[derive(Debug, Parser)]
#[command(
    name = "smime-git",
    version,
    after_help = "\
Configure git:
  git config gpg.format x509
  git config gpg.x509.program smime-git
  git config user.signingkey SHA1-FINGERPRINT   # optional; default: the committer identity
  git commit -S ...; git tag -s ...; git log --show-signature; git verify-commit HEAD

KEY (-u, git's user.signingkey) selects one of the agent's keys that has a certificate: the
certificate's SHA-1 fingerprint (hex, colons allowed; gpgsm's notation) or a 16/8-digit key
id (its tail), an e-mail address of the certificate, git's committer identity \"Name <email>\",
or anything `smime sign --key` takes (key id, label, SHA-256 fingerprint prefix).

Trust: the signer's certificate must chain to an anchor named by $SMIME_TRUST, a list of
certificate files (PEM or DER) or directories of them, separated by ':'; the word `system`
stands for the system CA bundle (/etc/ssl/certs/ca-certificates.crt). $SMIME_CRL adds CRL
files or directories (same syntax) to those in the signature; a revoked certificate gives
REVKEYSIG (git shows `R`), an unknown status passes. Without $SMIME_TRUST, the certificates
in $XDG_CONFIG_HOME/smime/trust/ (~/.config/smime/trust/) are the anchors, as for `smime
verify`; without those no chain is trusted: a good signature is reported with TRUST_UNDEFINED (git shows `U`); with a trusted
chain TRUST_FULLY (git shows `G`). git accepts `U` unless gpg.minTrustLevel is set (e.g.
`git config gpg.minTrustLevel fully`).

`smime` run with `--status-fd` as its first argument behaves as smime-git, so
gpg.x509.program may also be `smime`.

Agent: $SMIME_AGENT_SOCK, else $XDG_RUNTIME_DIR/smime-agent/agent.sock (or --socket); an
agent is started if none runs, as for `smime`.

Exit status: 0 signature made, or good signature (trusted or not: the TRUST_* line says);
1 bad, unverifiable, expired or revoked signature; 2 usage error; 3 agent or token
unavailable; 4 other errors."
)]
pub struct GitArgs {
    /// Make a signature (gpg's -s; git passes it together with -b).
    #[arg(short = 's', long = "sign")]
    pub sign: bool,
    /// Make a detached signature (the only kind made here).
    #[arg(short = 'b', long = "detach-sign")]
    pub detach_sign: bool,
    /// ASCII armor: PEM `-----BEGIN SIGNED MESSAGE-----` (as gpgsm writes it). Without it
    /// the signature is DER.
    #[arg(short = 'a', long = "armor")]
    pub armor: bool,
    /// The signing key (see KEY below).
    #[arg(short = 'u', long = "local-user", value_name = "KEY")]
    pub local_user: Option<String>,
    /// Write `[GNUPG:]` status lines to this file descriptor (git: 2 when signing, 1 when
    /// verifying).
    #[arg(long = "status-fd", value_name = "FD")]
    pub status_fd: Option<u32>,
    /// Verify SIGFILE against DATA (`-` for standard input); with SIGFILE alone, a signature
    /// that carries its content.
    #[arg(long)]
    pub verify: bool,
    /// Accepted and ignored (gpg compatibility).
    #[arg(long = "keyid-format", value_name = "FORMAT", hide = true)]
    pub keyid_format: Option<String>,
    /// Agent socket (default: $SMIME_AGENT_SOCK, else $XDG_RUNTIME_DIR/smime-agent/agent.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Signing: the data to sign (default: standard input). Verifying: SIGFILE [DATA].
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Runs `smime-git` with these arguments (the first is the program name) and returns the
/// exit status.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let a = match GitArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = if a.verify {
        verify(&a)
    } else if a.sign || a.detach_sign {
        sign(&a)
    } else {
        Err(Failure::Usage(anyhow!(
            "nothing to do: sign with -bsau KEY or verify with --verify SIGFILE DATA (see --help)"
        )))
    };
    let (code, e) = match result {
        Ok(code) => return code,
        Err(Failure::Verify(e)) => (1, e),
        Err(Failure::Usage(e)) => (2, e),
        Err(Failure::Unavailable(e)) => (3, e),
        Err(Failure::Other(e)) => (4, e),
    };
    eprintln!("smime-git: error: {e:#}");
    if let Some(h) = hint(None, &e) {
        eprintln!("hint: {h}");
    }
    ExitCode::from(code)
}

/// The status channel: `[GNUPG:] ` lines on a file descriptor, or nowhere.
struct Status(Option<Box<dyn Write>>);

impl Status {
    fn open(fd: Option<u32>) -> Result<Self, Failure> {
        let w: Box<dyn Write> = match fd {
            None => return Ok(Self(None)),
            Some(1) => Box::new(io::stdout()),
            Some(2) => Box::new(io::stderr()),
            // Another inherited descriptor: reopen it through /dev/fd (no unsafe code).
            Some(n) => Box::new(
                File::options()
                    .append(true)
                    .open(format!("/dev/fd/{n}"))
                    .with_context(|| format!("--status-fd {n} is not an open file descriptor"))
                    .map_err(Failure::Usage)?,
            ),
        };
        Ok(Self(Some(w)))
    }

    /// Writes one status line. Errors are ignored: the caller may have closed its end.
    fn line(&mut self, keyword: &str, args: &str) {
        if let Some(w) = &mut self.0 {
            let text = if args.is_empty() {
                format!("[GNUPG:] {keyword}\n")
            } else {
                format!("[GNUPG:] {keyword} {args}\n")
            };
            let _ = w.write_all(text.as_bytes()).and_then(|()| w.flush());
        }
    }
}

/// The certificate's SHA-1 fingerprint: 40 uppercase hex digits, as gpgsm shows it.
pub fn sha1_fingerprint(cert: &Certificate) -> String {
    let der = cert.to_der().unwrap_or_default();
    Sha1::digest(&der).iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02X}");
        s
    })
}

/// OpenPGP public-key algorithm number of the certificate's key (RFC 9580 §9.1), as gpgsm
/// and smimesign report it: 1 RSA, 19 ECDSA, 0 unknown.
fn pk_algo(cert: &Certificate) -> u8 {
    match cert
        .tbs_certificate()
        .subject_public_key_info()
        .algorithm
        .oid
    {
        rfc5912::RSA_ENCRYPTION => 1,
        rfc5912::ID_EC_PUBLIC_KEY => 19,
        _ => 0,
    }
}

/// OpenPGP hash algorithm number (RFC 9580 §9.5).
fn hash_algo(h: HashAlg) -> u8 {
    match h {
        HashAlg::Sha256 => 8,
        HashAlg::Sha384 => 9,
        HashAlg::Sha512 => 10,
        HashAlg::Sha1 => 2,
    }
}

fn unix_time(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// GnuPG's escaping of a user id in a status line: `%XX` for `%` and control characters.
fn status_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The subject of a certificate, for status lines and messages.
fn subject(cert: &Certificate) -> String {
    cert.tbs_certificate().subject().to_string()
}

// --- signing -----------------------------------------------------------------------------

/// Picks the signing key `sel` names: a SHA-1 fingerprint or gpg-style key id (the last 8 or
/// 16 hex digits of it, optionally `0x`-prefixed), else whatever [`select`] accepts (id,
/// label, e-mail address, `Name <email>`, SHA-256 fingerprint prefix). Only keys with a
/// certificate that may sign count.
///
/// # Errors
/// When none or several keys match; the message lists them with their SHA-1 fingerprints
/// (what to put in `user.signingkey`).
pub fn select_key<'a>(keys: &'a [KeySummary], sel: &str) -> anyhow::Result<&'a KeySummary> {
    let hex: String = sel
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_uppercase();
    if matches!(hex.len(), 8 | 16 | 40) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let found: Vec<&KeySummary> = keys
            .iter()
            .filter(|k| can_sign(k))
            .filter(|k| {
                k.certificate
                    .as_ref()
                    .is_some_and(|c| sha1_fingerprint(c).ends_with(&hex))
            })
            .collect();
        match found.as_slice() {
            [k] => return Ok(k),
            [] => {}
            many => return Err(candidates_error(sel, "matches several keys", many)),
        }
    }
    select(keys, sel, can_sign).map_err(|e| match e {
        SelectError::NotFound { .. } => {
            let usable: Vec<&KeySummary> = keys.iter().filter(|k| can_sign(k)).collect();
            candidates_error(sel, "matches none of the agent's signing keys", &usable)
        }
        SelectError::Ambiguous { .. } => {
            let many: Vec<&KeySummary> = keys
                .iter()
                .filter(|k| can_sign(k) && k.matches(sel))
                .collect();
            candidates_error(sel, "matches several keys", &many)
        }
    })
}

fn candidates_error(sel: &str, what: &str, keys: &[&KeySummary]) -> anyhow::Error {
    let mut msg =
        format!("{sel:?} {what}; set git's user.signingkey to one of these SHA-1 fingerprints:");
    if keys.is_empty() {
        msg.push_str(" (none: the agent has no key with a certificate that may sign)");
    }
    for k in keys {
        if let Some(c) = &k.certificate {
            let _ = write!(msg, "\n  {}  {}", sha1_fingerprint(c), k.line());
        }
    }
    anyhow!(msg)
}

/// `-bsau KEY`: a detached signature of standard input (or FILE) on standard output.
fn sign(a: &GitArgs) -> Result<ExitCode, Failure> {
    if a.verify {
        return Err(Failure::Usage(anyhow!(
            "--verify and --sign do not go together"
        )));
    }
    if !a.detach_sign {
        return Err(Failure::Usage(anyhow!(
            "only detached signatures are made: add -b (git passes -bsau KEY)"
        )));
    }
    let sel = a.local_user.as_deref().ok_or_else(|| {
        Failure::Usage(anyhow!(
            "no key: pass -u KEY (git passes user.signingkey, else the committer identity)"
        ))
    })?;
    let input: Box<dyn Read> = match a.files.as_slice() {
        [] => Box::new(io::stdin().lock()),
        [p] if p == Path::new("-") => Box::new(io::stdin().lock()),
        [p] => Box::new(
            File::open(p)
                .with_context(|| format!("opening {}", p.display()))
                .map_err(Failure::Usage)?,
        ),
        _ => {
            return Err(Failure::Usage(anyhow!(
                "signing takes at most one input file"
            )));
        }
    };
    let mut status = Status::open(a.status_fd)?;
    let mut client = connect_socket(a.socket.as_deref())?;
    let keys = key_list(&mut client)?;
    let key = select_key(&keys, sel).map_err(Failure::Usage)?;
    let cert = key
        .certificate
        .clone()
        .ok_or_else(|| Failure::Usage(anyhow!("key has no certificate")))?;
    let hash = HashAlg::Sha256;
    let mut signer = Signer::with_key(client, &keys, key, hash, false, vec![])?;
    status.line("BEGIN_SIGNING", "");
    let der = signer.sign_reader(input)?;
    let out = if a.armor {
        armor(&der).into_bytes()
    } else {
        der
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .context("writing the signature")
        .map_err(Failure::Other)?;
    status.line(
        "SIG_CREATED",
        &format!(
            "D {} {} 00 {} {}",
            pk_algo(&cert),
            hash_algo(hash),
            unix_time(SystemTime::now()),
            sha1_fingerprint(&cert)
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// PEM armor with gpgsm's label, 64-column base64, LF line ends.
pub fn armor(der: &[u8]) -> String {
    format!(
        "-----BEGIN {ARMOR_LABEL}-----\n{}-----END {ARMOR_LABEL}-----\n",
        smime_cms::pem::encode_wrapped(der)
    )
}

// --- verifying ---------------------------------------------------------------------------

/// The trust anchors `$SMIME_TRUST` names, or `None` if it is unset or empty.
///
/// # Errors
/// When a named file or directory cannot be read or holds no certificate.
pub fn trust_from_env() -> anyhow::Result<Option<TrustPolicy>> {
    let Some(paths) = user_anchor_paths() else {
        return Ok(None);
    };
    let anchors = load_anchors(&paths, TRUST_ENV).map_err(failure_error)?;
    let mut policy = TrustPolicy::with_anchors(anchors);
    if let Some(v) = std::env::var_os(CRL_ENV) {
        for part in std::env::split_paths(&v) {
            if !part.as_os_str().is_empty() {
                policy.crls.extend(load_crls(&part).context(CRL_ENV)?);
            }
        }
    }
    Ok(Some(policy))
}

/// The error inside a [`Failure`].
fn failure_error(f: Failure) -> anyhow::Error {
    match f {
        Failure::Verify(e) | Failure::Usage(e) | Failure::Unavailable(e) | Failure::Other(e) => e,
    }
}

/// The certificate a signature claims as its (first) signer, found by the SignerInfo's
/// `sid` among its certificates; for reporting a bad signature. `None` when the signature
/// cannot be parsed (e.g. BER) or lacks the certificate.
fn claimed_signer(bin: &[u8]) -> Option<Certificate> {
    let ci = ContentInfo::from_der(bin).ok()?;
    let sd: SignedData = ci.content.decode_as().ok()?;
    let sid = sd.signer_infos.0.iter().next()?.sid.clone();
    sd.certificates?.0.iter().find_map(|c| match c {
        cms::cert::CertificateChoices::Certificate(cert) => {
            let tbs = cert.tbs_certificate();
            let hit = match &sid {
                SignerIdentifier::IssuerAndSerialNumber(isn) => {
                    tbs.issuer() == &isn.issuer && tbs.serial_number() == &isn.serial_number
                }
                SignerIdentifier::SubjectKeyIdentifier(ski) => matches!(
                    tbs.get_extension::<SubjectKeyIdentifier>(),
                    Ok(Some((_, s))) if &s == ski
                ),
            };
            hit.then(|| cert.clone())
        }
        _ => None,
    })
}

/// `--verify SIGFILE [DATA]`.
fn verify(a: &GitArgs) -> Result<ExitCode, Failure> {
    if a.sign || a.detach_sign {
        return Err(Failure::Usage(anyhow!(
            "--verify and --sign do not go together"
        )));
    }
    let (sig_path, data_path) = match a.files.as_slice() {
        [s] => (s, None),
        [s, d] => (s, Some(d)),
        _ => {
            return Err(Failure::Usage(anyhow!(
                "--verify takes SIGFILE and DATA (`-` for standard input)"
            )));
        }
    };
    let mut status = Status::open(a.status_fd)?;
    let trust = trust_from_env().map_err(Failure::Usage)?;
    let raw = if sig_path == Path::new("-") {
        let mut v = Vec::new();
        io::stdin()
            .lock()
            .read_to_end(&mut v)
            .context("reading the signature")
            .map_err(Failure::Usage)?;
        v
    } else {
        std::fs::read(sig_path)
            .with_context(|| format!("reading {}", sig_path.display()))
            .map_err(Failure::Usage)?
    };
    let content: Option<Box<dyn Read>> = match data_path {
        None => None,
        Some(p) if p == Path::new("-") => {
            if sig_path == Path::new("-") {
                return Err(Failure::Usage(anyhow!(
                    "the signature and the data cannot both come from standard input"
                )));
            }
            Some(Box::new(io::stdin().lock()))
        }
        Some(p) => Some(Box::new(
            File::open(p)
                .with_context(|| format!("opening {}", p.display()))
                .map_err(Failure::Usage)?,
        )),
    };
    status.line("NEWSIG", "");
    let bin = match smime_cms::verify::parse_cms_input(&raw) {
        Ok(b) => b,
        Err(e) => {
            status.line("ERRSIG", "0000000000000000 0 0 00 0 0");
            eprintln!("smime-git: cannot check the signature: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let claimed = claimed_signer(&bin);
    let who = |c: &Option<Certificate>| match c {
        Some(c) => (sha1_fingerprint(c), status_escape(&subject(c))),
        None => ("0000000000000000".to_owned(), "[unknown]".to_owned()),
    };
    let result =
        smime_cms::verify::verify_detached_report(&bin, content, trust.as_ref(), SystemTime::now())
            .and_then(|all| {
                all.into_iter()
                    .next()
                    .ok_or_else(|| smime_cms::Error::Malformed("no SignerInfo".into()))
            });
    let v = match result {
        Ok(v) => v,
        Err(smime_cms::Error::Io(e)) => {
            return Err(Failure::Other(
                anyhow!(e).context("reading the signed data"),
            ));
        }
        Err(smime_cms::Error::MissingContent) => {
            return Err(Failure::Usage(anyhow!(
                "the signature is detached: give the signed data as the second file (- for stdin)"
            )));
        }
        Err(e @ smime_cms::Error::CertExpired { .. }) => {
            let (fpr, subj) = who(&claimed);
            status.line("EXPKEYSIG", &format!("{fpr} {subj}"));
            eprintln!("smime-git: signature by an expired certificate: {e}");
            eprintln!("smime-git: certificate: {subj} (SHA-1 {fpr})");
            return Ok(ExitCode::from(1));
        }
        Err(
            e @ (smime_cms::Error::SignerCertNotFound | smime_cms::Error::UnsupportedAlgorithm(_)),
        ) => {
            let (fpr, _) = who(&claimed);
            let rc = if matches!(e, smime_cms::Error::SignerCertNotFound) {
                9
            } else {
                4
            };
            status.line("ERRSIG", &format!("{fpr} 0 0 00 0 {rc}"));
            eprintln!("smime-git: cannot check the signature: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e @ smime_cms::Error::Malformed(_)) => {
            status.line("ERRSIG", "0000000000000000 0 0 00 0 0");
            eprintln!("smime-git: cannot check the signature: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => {
            let (fpr, subj) = who(&claimed);
            status.line("BADSIG", &format!("{fpr} {subj}"));
            eprintln!("smime-git: BAD signature from \"{subj}\": {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let fpr = sha1_fingerprint(&v.signer);
    let subj = subject(&v.signer);
    let emails = certificate_emails(&v.signer);
    let revoked = v
        .path
        .as_ref()
        .and_then(|p| p.failure())
        .is_some_and(|(_, f)| f.check == Check::Revoked);
    let sig_time = v.signing_time;
    if let Some(t) = sig_time {
        eprintln!("smime-git: Signature made {}", fmt_time(t));
    }
    eprintln!("smime-git:                using certificate SHA-1 {fpr}");
    let aka: String = emails.iter().map(|e| format!(" aka \"{e}\"")).collect();
    let keyword = if revoked { "REVKEYSIG" } else { "GOODSIG" };
    status.line(keyword, &format!("{fpr} {}", status_escape(&subj)));
    let t = sig_time.map_or(0, unix_time);
    let date = sig_time.map_or_else(
        || "0".to_owned(),
        |t| fmt_time(t).chars().take(10).collect(),
    );
    status.line(
        "VALIDSIG",
        &format!(
            "{fpr} {date} {t} 0 0 0 {} {} 00 {fpr}",
            pk_algo(&v.signer),
            hash_algo(v.digest_alg)
        ),
    );
    if revoked {
        status.line("TRUST_NEVER", "0");
        eprintln!("smime-git: signature by a REVOKED certificate \"{subj}\"{aka}");
        if let Some(p) = &v.path {
            eprintln!("smime-git: {p}");
        }
        return Ok(ExitCode::from(1));
    }
    eprintln!("smime-git: Good signature from \"{subj}\"{aka}");
    match &v.path {
        Some(p) if v.trusted => {
            status.line("TRUST_FULLY", "0 shell");
            let chain: Vec<&str> = p.chain.iter().map(|c| c.subject.as_str()).collect();
            eprintln!(
                "smime-git: the certificate chains to a trusted CA: {} (revocation {})",
                chain.join(" <- "),
                p.revocation.name()
            );
        }
        Some(p) => {
            status.line("TRUST_UNDEFINED", "0 shell");
            eprintln!("smime-git: WARNING: the certificate is NOT trusted: {p}");
        }
        None => {
            status.line("TRUST_UNDEFINED", "0 shell");
            eprintln!(
                "smime-git: WARNING: the certificate was not checked against a trusted CA: \
                 set {TRUST_ENV} to your CA certificates (see smime-git --help)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_as_git_passes_them() {
        let a = GitArgs::try_parse_from(["smime-git", "--status-fd=2", "-bsau", "Ann <a@x.org>"])
            .unwrap();
        assert!(a.sign && a.detach_sign && a.armor && !a.verify);
        assert_eq!(a.status_fd, Some(2));
        assert_eq!(a.local_user.as_deref(), Some("Ann <a@x.org>"));
        let a =
            GitArgs::try_parse_from(["smime-git", "--status-fd", "1", "--verify", "/tmp/sig", "-"])
                .unwrap();
        assert!(a.verify && !a.sign);
        assert_eq!(a.files, [PathBuf::from("/tmp/sig"), PathBuf::from("-")]);
        let a = GitArgs::try_parse_from([
            "smime-git",
            "--detach-sign",
            "--sign",
            "--armor",
            "--local-user",
            "K",
        ])
        .unwrap();
        assert!(a.sign && a.detach_sign && a.armor);
        assert_eq!(a.local_user.as_deref(), Some("K"));
        let a = GitArgs::try_parse_from(["smime-git", "-b", "-s", "-a", "-uK"]).unwrap();
        assert_eq!(a.local_user.as_deref(), Some("K"));
        assert!(GitArgs::try_parse_from(["smime-git", "--frobnicate"]).is_err());
    }

    #[test]
    fn escaping_and_armor() {
        assert_eq!(status_escape("CN=A%B\nC"), "CN=A%25B%0AC");
        let pem = armor(&[0x30, 0x03, 0x02, 0x01, 0x05]);
        assert!(pem.starts_with("-----BEGIN SIGNED MESSAGE-----\n"));
        assert!(pem.ends_with("-----END SIGNED MESSAGE-----\n"));
        assert_eq!(
            smime_cms::pem::decode_armor(pem.as_bytes()).unwrap(),
            (
                "SIGNED MESSAGE".to_owned(),
                vec![0x30, 0x03, 0x02, 0x01, 0x05]
            )
        );
    }
}
