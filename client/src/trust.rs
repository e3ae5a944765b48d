//! Certificate trust: RFC 5280 path validation of S/MIME signer certificates.
//!
//! The validator is [`certval`] (RFC 5280 and RFC 5937, tested against NIST PKITS and
//! x509-limbo); this module only prepares its inputs and turns its results into a verdict
//! a person (or `--json`) can read:
//!
//! * anchors: [`TrustPolicy::anchors`] (`--trust`, or the system bundle);
//! * intermediates: the message's certificates plus [`TrustPolicy::intermediates`]
//!   (`--certs`, a store);
//! * the initial policy set and the explicit-policy, policy-mapping and anyPolicy
//!   inhibitors of RFC 5280 §6.1.1 ([`PolicySettings`]);
//! * S/MIME usage: the signer's keyUsage, if present, must allow digitalSignature or
//!   nonRepudiation, and its extendedKeyUsage, if present, must contain emailProtection or
//!   anyExtendedKeyUsage;
//! * name constraints (directoryName, rfc822Name, dNSName, URI), path length, critical
//!   extensions, signatures: all certval's;
//! * revocation (`trust/revocation.rs`), for the path valid *now*: the message's CRLs,
//!   [`TrustPolicy::crls`] (`--crl`), the CRL cache, OCSP and CRL distribution points.
//!   certval checks CRLs first; what its CRL handling lacks (delta CRLs, indirect CRLs,
//!   CRLs signed with another key than the certificate's: key rollover, separate CRL
//!   signing keys; onlySomeReasons; nameRelativeToCRLIssuer) is RFC 5280 §6.3 processing
//!   of our own, in `trust/crl.rs`, with the CRL issuers' paths validated by certval.
//!
//! Paths are those certval's builder finds, plus candidates found by following issuer names
//! through the available certificates (self-issued key-rollover certificates included),
//! so that a path certval's builder skips is still validated, and a path that fails is
//! reported with the check that failed rather than as "no path". Every candidate is
//! validated by certval; the first valid one wins.
//!
//! The path is validated at the verification time and, if the signature carries a
//! `signingTime`, at that time too: [`PathVerdict::checks`] says which one failed.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use certval::{
    CertFile, CertSource, CertVector as _, CertificationPath, CertificationPathResults,
    CertificationPathSettings, MemoryCrlSource, PDVCertificate, PDVTrustAnchorChoice,
    PathValidationStatus, PkiEnvironment, TaSource, TimeOfInterest, compare_names,
    get_certificate_from_trust_anchor, get_trust_anchor_name, parse_cert,
};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280::{ANY_EXTENDED_KEY_USAGE, ID_KP_EMAIL_PROTECTION};
use der::Encode as _;
use x509_cert::Certificate;
use x509_cert::certificate::{CertificateInner, Raw};
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage};

use crate::cms::{CheckedAt, fmt_time};

mod crl;
pub(crate) mod dsa;
pub mod fetch;
pub(crate) mod pre1970;
mod revocation;

pub use fetch::CrlCache;
pub use revocation::{CertRevocation, Retrieval};

/// The anyPolicy OID (RFC 5280 §4.2.1.4).
pub const ANY_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32.0");

/// How revocation status is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationMode {
    /// Not at all.
    Off,
    /// Revoked fails; unknown status (no usable CRL) passes, and the verdict says so.
    #[default]
    Soft,
    /// Revoked fails, and so does unknown status.
    Hard,
}

impl fmt::Display for RevocationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RevocationMode::Off => "off",
            RevocationMode::Soft => "soft",
            RevocationMode::Hard => "hard",
        })
    }
}

/// The policy inputs of RFC 5280 §6.1.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySettings {
    /// user-initial-policy-set; empty means {anyPolicy}.
    pub initial_policies: Vec<ObjectIdentifier>,
    /// initial-explicit-policy: the path must be valid for at least one policy of the set.
    pub require_explicit_policy: bool,
    /// initial-policy-mapping-inhibit.
    pub inhibit_policy_mapping: bool,
    /// initial-any-policy-inhibit.
    pub inhibit_any_policy: bool,
}

impl PolicySettings {
    /// The initial policy set as dotted strings, anyPolicy if none was given.
    pub fn initial_set(&self) -> Vec<String> {
        if self.initial_policies.is_empty() {
            vec![ANY_POLICY.to_string()]
        } else {
            self.initial_policies
                .iter()
                .map(|o| o.to_string())
                .collect()
        }
    }
}

/// What a signer certificate must chain to, and how.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// Trust anchors (self-signed roots, or any certificate trusted directly).
    pub anchors: Vec<Certificate>,
    /// Extra intermediate CA certificates besides the message's (`--certs`, a store).
    pub intermediates: Vec<Certificate>,
    /// DER-encoded CRLs besides the message's (`--crl`).
    pub crls: Vec<Vec<u8>>,
    /// Policy processing inputs.
    pub policy: PolicySettings,
    /// Revocation checking.
    pub revocation: RevocationMode,
    /// Fetching revocation data (OCSP, CRL distribution points) and the CRL cache.
    pub retrieval: Retrieval,
}

/// The role of a certificate in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The signer (end entity).
    Signer,
    /// An intermediate CA certificate.
    Intermediate,
    /// The trust anchor.
    Anchor,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Signer => "signer",
            Role::Intermediate => "intermediate",
            Role::Anchor => "anchor",
        })
    }
}

/// One certificate of a chain, described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCert {
    /// Signer, intermediate or anchor.
    pub role: Role,
    /// Subject name (RFC 4514).
    pub subject: String,
    /// Issuer name (RFC 4514).
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

/// Which check of path validation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No path from the signer to a trust anchor could be built.
    NoPath,
    /// An issuer name does not match the subject of the certificate above it.
    NameChaining,
    /// A certificate's signature does not verify with its issuer's key.
    Signature,
    /// A certificate is outside its validity period at the time checked.
    Validity,
    /// An intermediate is not a CA (basicConstraints).
    BasicConstraints,
    /// A pathLenConstraint is exceeded.
    PathLength,
    /// keyUsage: a CA without keyCertSign, or a signer without digitalSignature and
    /// nonRepudiation.
    KeyUsage,
    /// The signer's extendedKeyUsage has neither emailProtection nor anyExtendedKeyUsage.
    ExtendedKeyUsage,
    /// Certificate policies (empty valid policy set, forbidden mapping, explicit policy).
    Policy,
    /// Name constraints.
    NameConstraints,
    /// An unrecognised critical extension.
    CriticalExtension,
    /// A CA or anchor key is too short.
    KeySize,
    /// A certificate of the path is revoked.
    Revoked,
    /// Revocation status could not be determined (with `--revocation hard`).
    RevocationUnknown,
    /// Anything else certval reports.
    Other,
}

impl Check {
    /// A stable kebab-case name (used in JSON).
    pub fn name(self) -> &'static str {
        match self {
            Check::NoPath => "no-path",
            Check::NameChaining => "name-chaining",
            Check::Signature => "signature",
            Check::Validity => "validity",
            Check::BasicConstraints => "basic-constraints",
            Check::PathLength => "path-length",
            Check::KeyUsage => "key-usage",
            Check::ExtendedKeyUsage => "extended-key-usage",
            Check::Policy => "policy",
            Check::NameConstraints => "name-constraints",
            Check::CriticalExtension => "critical-extension",
            Check::KeySize => "key-size",
            Check::Revoked => "revoked",
            Check::RevocationUnknown => "revocation-unknown",
            Check::Other => "other",
        }
    }
}

/// Why a path did not validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathFailure {
    /// The check that failed.
    pub check: Check,
    /// Index into [`PathVerdict::chain`] of the certificate that failed it, if one did.
    pub index: Option<usize>,
    /// Subject of that certificate.
    pub certificate: Option<String>,
    /// What went wrong, in words.
    pub detail: String,
}

impl fmt::Display for PathFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The result of validating at one time of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeCheck {
    /// Now, or the signing time.
    pub at: CheckedAt,
    /// The instant.
    pub time: SystemTime,
    /// `None` if the path validated then.
    pub failure: Option<PathFailure>,
}

/// Revocation status of the validated path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationStatus {
    /// Not checked (`--revocation off`, or the signer is itself an anchor).
    NotChecked,
    /// Every certificate of the path was covered by a CRL that does not list it.
    Good,
    /// Some certificate's status could not be determined (no usable CRL).
    Unknown,
    /// A certificate of the path is revoked.
    Revoked,
}

impl RevocationStatus {
    /// A stable name (used in JSON).
    pub fn name(self) -> &'static str {
        match self {
            RevocationStatus::NotChecked => "not-checked",
            RevocationStatus::Good => "good",
            RevocationStatus::Unknown => "unknown",
            RevocationStatus::Revoked => "revoked",
        }
    }
}

/// The outcome of path validation for one signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathVerdict {
    /// The path: the signer first, the trust anchor last. On failure, the path that was
    /// tried (or just the signer, when none could be built).
    pub chain: Vec<ChainCert>,
    /// One entry per time of interest: now, then the signing time if there was one.
    pub checks: Vec<TimeCheck>,
    /// Revocation mode and what it found (checked at the verification time only).
    pub revocation_mode: RevocationMode,
    /// See [`RevocationStatus`].
    pub revocation: RevocationStatus,
    /// Per certificate of the path below the anchor (signer first): status and source.
    pub revocation_certs: Vec<CertRevocation>,
    /// The policy inputs used.
    pub policy: PolicySettings,
}

impl PathVerdict {
    /// Whether the path validated at every time of interest.
    pub fn is_valid(&self) -> bool {
        self.checks.iter().all(|c| c.failure.is_none())
    }

    /// The first failure, with the time it was checked at.
    pub fn failure(&self) -> Option<(&TimeCheck, &PathFailure)> {
        self.checks
            .iter()
            .find_map(|c| c.failure.as_ref().map(|f| (c, f)))
    }

    /// Where the revocation status came from: the sources of the certificates' statuses,
    /// deduplicated (`crl (message or --crl)`, `crl-cache URL`, `crl URL`, `ocsp URL`).
    pub fn revocation_source(&self) -> Option<String> {
        let mut out: Vec<&str> = Vec::new();
        for s in self
            .revocation_certs
            .iter()
            .filter_map(|r| r.source.as_deref())
        {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        (!out.is_empty()).then(|| out.join(", "))
    }

    /// The verdict as JSON: `valid`, `chain`, `checks`, `revocation`, `policy`, `failure`.
    pub fn to_json(&self) -> serde_json::Value {
        let fail = |f: &PathFailure| {
            serde_json::json!({
                "check": f.check.name(),
                "index": f.index,
                "certificate": f.certificate,
                "detail": f.detail,
            })
        };
        serde_json::json!({
            "valid": self.is_valid(),
            "chain": self.chain.iter().map(|c| serde_json::json!({
                "role": c.role.to_string(),
                "subject": c.subject,
                "issuer": c.issuer,
                "serial": c.serial,
                "not_before": fmt_time(c.not_before),
                "not_after": fmt_time(c.not_after),
            })).collect::<Vec<_>>(),
            "checks": self.checks.iter().map(|c| serde_json::json!({
                "at": checked_at_name(c.at),
                "time": fmt_time(c.time),
                "valid": c.failure.is_none(),
                "failure": c.failure.as_ref().map(fail),
            })).collect::<Vec<_>>(),
            "revocation": {
                "mode": self.revocation_mode.to_string(),
                "status": self.revocation.name(),
                "source": self.revocation_source(),
                "certificates": self.revocation_certs.iter().map(|r| serde_json::json!({
                    "index": r.index,
                    "subject": r.subject,
                    "status": r.status.name(),
                    "source": r.source,
                    "notes": r.notes,
                })).collect::<Vec<_>>(),
            },
            "policy": {
                "initial": self.policy.initial_set(),
                "require_explicit": self.policy.require_explicit_policy,
                "inhibit_mapping": self.policy.inhibit_policy_mapping,
                "inhibit_any": self.policy.inhibit_any_policy,
            },
            "failure": self.failure().map(|(c, f)| {
                let mut j = fail(f);
                j["at"] = checked_at_name(c.at).into();
                j
            }),
        })
    }
}

impl fmt::Display for PathVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failure() {
            Some((c, fail)) => write!(f, "{} ({}): {fail}", c.at, fmt_time(c.time)),
            None => {
                let names: Vec<&str> = self.chain.iter().map(|c| c.subject.as_str()).collect();
                write!(f, "chain: {}", names.join(" <- "))
            }
        }
    }
}

fn checked_at_name(at: CheckedAt) -> &'static str {
    match at {
        CheckedAt::Now => "now",
        CheckedAt::SigningTime => "signing-time",
    }
}

/// Error loading CRLs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file holds no CRL.
    #[error("{0}: not a CRL (want DER or PEM \"X509 CRL\")")]
    NotCrl(String),
}

/// Reads the CRLs in `path`: a DER or PEM file (several PEM blocks allowed), or a
/// directory of such files (not recursive; files that hold no CRL are skipped there).
///
/// # Errors
/// When `path` cannot be read, or is a file that holds no CRL.
pub fn load_crls(path: &Path) -> Result<Vec<Vec<u8>>, LoadError> {
    let io = |e| LoadError::Io {
        path: path.display().to_string(),
        source: e,
    };
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        let mut out = Vec::new();
        for p in entries {
            if let Ok(crls) = load_crl_file(&p) {
                out.extend(crls);
            }
        }
        return Ok(out);
    }
    load_crl_file(path)
}

fn load_crl_file(path: &Path) -> Result<Vec<Vec<u8>>, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| LoadError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let not_crl = || LoadError::NotCrl(path.display().to_string());
    let ders = if bytes.first() == Some(&0x30) {
        vec![bytes]
    } else {
        let text = String::from_utf8_lossy(&bytes);
        let mut out = Vec::new();
        let mut rest = text.as_ref();
        const BEGIN: &str = "-----BEGIN X509 CRL-----";
        const END: &str = "-----END X509 CRL-----";
        while let Some(start) = rest.find(BEGIN) {
            let body = &rest[start + BEGIN.len()..];
            let Some(end) = body.find(END) else { break };
            let der = crate::cms::pem::decode(&body.as_bytes()[..end]).map_err(|_| not_crl())?;
            out.push(der);
            rest = &body[end + END.len()..];
        }
        out
    };
    let ok: Vec<Vec<u8>> = ders
        .into_iter()
        .filter(|d| {
            use der::Decode as _;
            x509_cert::crl::CertificateList::<Raw>::from_der(d).is_ok()
        })
        .collect();
    if ok.is_empty() {
        return Err(not_crl());
    }
    Ok(ok)
}

/// Whether the signer's keyUsage (if any) allows signing mail.
fn signer_key_usage_ok(signer: &Certificate) -> Result<(), String> {
    match signer.tbs_certificate().get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) if !ku.digital_signature() && !ku.non_repudiation() => {
            Err("keyUsage allows neither digitalSignature nor nonRepudiation".to_owned())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("keyUsage does not decode: {e}")),
    }
}

/// Whether the signer's extendedKeyUsage (if any) allows mail protection.
fn signer_eku_ok(signer: &Certificate) -> bool {
    match signer.tbs_certificate().get_extension::<ExtendedKeyUsage>() {
        Ok(Some((_, eku))) => eku
            .0
            .iter()
            .any(|o| *o == ID_KP_EMAIL_PROTECTION || *o == ANY_EXTENDED_KEY_USAGE),
        Ok(None) => true,
        Err(_) => false,
    }
}

fn describe_raw(c: &CertificateInner<Raw>, role: Role) -> ChainCert {
    let tbs = c.tbs_certificate();
    ChainCert {
        role,
        subject: tbs.subject().to_string(),
        issuer: tbs.issuer().to_string(),
        serial: hex::encode_upper(tbs.serial_number().as_bytes()),
        not_before: tbs.validity().not_before.to_system_time(),
        not_after: tbs.validity().not_after.to_system_time(),
    }
}

fn describe(c: &Certificate, role: Role) -> ChainCert {
    let tbs = c.tbs_certificate();
    ChainCert {
        role,
        subject: tbs.subject().to_string(),
        issuer: tbs.issuer().to_string(),
        serial: hex::encode_upper(tbs.serial_number().as_bytes()),
        not_before: tbs.validity().not_before.to_system_time(),
        not_after: tbs.validity().not_after.to_system_time(),
    }
}

/// The chain of a certification path, signer first, with the true validity of
/// certificates dated before 1970 (`originals`).
fn describe_path(path: &CertificationPath, originals: &pre1970::Originals) -> Vec<ChainCert> {
    let described = |c: &PDVCertificate, role| {
        let mut d = describe_raw(c.decoded(), role);
        let [nb, na] = originals.true_validity(c.as_bytes());
        d.not_before = nb.unwrap_or(d.not_before);
        d.not_after = na.unwrap_or(d.not_after);
        d
    };
    let mut chain = vec![described(&path.target, Role::Signer)];
    for c in path.intermediates.iter().rev() {
        chain.push(described(c, Role::Intermediate));
    }
    if let Some(ta) = get_certificate_from_trust_anchor(path.trust_anchor.decoded()) {
        chain.push(describe_raw(ta, Role::Anchor));
    }
    chain
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A failure with no certificate attached.
fn general(check: Check, detail: impl Into<String>) -> PathFailure {
    PathFailure {
        check,
        index: None,
        certificate: None,
        detail: detail.into(),
    }
}

/// Turns certval's status and failure index into a [`PathFailure`] against `chain`.
fn failure_from(
    status: PathValidationStatus,
    certval_index: Option<u32>,
    chain: &[ChainCert],
    signer: &Certificate,
) -> PathFailure {
    use PathValidationStatus as S;
    // certval counts from the anchor (0) to the target (len - 1); the chain runs the other way.
    let index = certval_index.and_then(|i| (chain.len() - 1).checked_sub(i as usize));
    let cert = index.and_then(|i| chain.get(i));
    let who = cert
        .map(|c| format!("\"{}\"", c.subject))
        .unwrap_or_else(|| "a certificate of the path".to_owned());
    let issuer = index
        .and_then(|i| chain.get(i + 1))
        .map(|c| format!("\"{}\"", c.subject))
        .unwrap_or_else(|| "its issuer".to_owned());
    let (check, detail) = match status {
        S::NameChainingFailure => (
            Check::NameChaining,
            format!("the issuer of {who} does not match the subject of {issuer}"),
        ),
        S::SignatureVerificationFailure => (
            Check::Signature,
            format!("{issuer} did not sign {who} (signature does not verify)"),
        ),
        S::InvalidNotBeforeDate => (Check::Validity, format!("{who} is not yet valid")),
        S::InvalidNotAfterDate => (Check::Validity, format!("{who} has expired")),
        S::MissingBasicConstraints => (
            Check::BasicConstraints,
            format!("{who} has no basicConstraints: not a CA certificate"),
        ),
        S::InvalidBasicConstraints => (
            Check::BasicConstraints,
            format!("{who} is not a CA certificate (basicConstraints cA false)"),
        ),
        S::InvalidPathLength => (
            Check::PathLength,
            format!("path length constraint exceeded at {who}"),
        ),
        S::InvalidKeyUsage if index == Some(0) && !signer_eku_ok(signer) => (
            Check::ExtendedKeyUsage,
            format!(
                "extendedKeyUsage of {who} has neither emailProtection nor anyExtendedKeyUsage"
            ),
        ),
        S::InvalidKeyUsage => (
            Check::KeyUsage,
            format!("keyUsage or extendedKeyUsage of {who} does not allow this use"),
        ),
        S::NullPolicySet => (
            Check::Policy,
            format!(
                "no acceptable certificate policy (valid policy set empty at {who}, or an explicit policy is required)"
            ),
        ),
        S::InvalidPolicyMapping => (Check::Policy, format!("{who} maps to or from anyPolicy")),
        S::NameConstraintsViolation => (
            Check::NameConstraints,
            format!("{who} violates the name constraints of the path"),
        ),
        S::UnprocessedCriticalExtension => (
            Check::CriticalExtension,
            format!("{who} has an unrecognised critical extension"),
        ),
        S::InsufficientKeySize => (Check::KeySize, format!("the key of {who} is too short")),
        S::CertificateRevoked
        | S::CertificateRevokedEndEntity
        | S::CertificateRevokedIntermediateCa => (Check::Revoked, format!("{who} is revoked")),
        S::RevocationStatusNotDetermined => (
            Check::RevocationUnknown,
            format!(
                "the revocation status of {who} could not be determined (no CRL or OCSP response settled it)"
            ),
        ),
        S::NoPathsFound | S::MissingTrustAnchor => {
            (Check::NoPath, "no path to a trust anchor".to_owned())
        }
        other => (Check::Other, format!("{who}: {other}")),
    };
    PathFailure {
        check,
        index,
        certificate: cert.map(|c| c.subject.clone()),
        detail,
    }
}

/// The inputs of one validation, in certval's terms.
struct Inputs<'a> {
    policy: &'a TrustPolicy,
    anchors: Vec<Vec<u8>>,
    /// The message's certificates and the intermediates, as the validator gets them:
    /// certificates dated before 1970 as their decodable copies ([`pre1970`]).
    certs: Vec<Vec<u8>>,
    crls: Vec<Vec<u8>>,
    /// The originals of those copies: their signatures are verified over the original.
    originals: pre1970::Originals,
}

impl TrustPolicy {
    /// A policy with these anchors and defaults for the rest (anyPolicy, soft revocation).
    pub fn with_anchors(anchors: Vec<Certificate>) -> Self {
        TrustPolicy {
            anchors,
            ..TrustPolicy::default()
        }
    }

    /// Whether `cert` is one of the anchors.
    pub fn is_anchor(&self, cert: &Certificate) -> bool {
        self.anchors.contains(cert)
    }

    /// Validates the path from `signer_der` (the signer certificate as encoded) to one of
    /// the anchors, with the message's certificates `msg_certs` and CRLs `msg_crls` (DER),
    /// at `now` and, if given, at `signing_time`.
    ///
    /// Never fails: problems (a certificate that does not parse included) are part of the
    /// verdict.
    pub fn validate(
        &self,
        signer: &Certificate,
        signer_der: &[u8],
        msg_certs: &[&[u8]],
        msg_crls: &[&[u8]],
        now: SystemTime,
        signing_time: Option<SystemTime>,
    ) -> PathVerdict {
        let mut originals = pre1970::Originals::default();
        let certs = msg_certs
            .iter()
            .map(|c| originals.prepare(c))
            .chain(self.intermediates.iter().filter_map(|c| c.to_der().ok()))
            .collect();
        let signer_der = originals.prepare(signer_der);
        let inputs = Inputs {
            policy: self,
            anchors: self
                .anchors
                .iter()
                .filter_map(|c| c.to_der().ok())
                .collect(),
            certs,
            crls: msg_crls
                .iter()
                .map(|c| c.to_vec())
                .chain(self.crls.iter().cloned())
                .collect(),
            originals,
        };
        let mut times = vec![(CheckedAt::Now, now)];
        if let Some(t) = signing_time {
            times.push((CheckedAt::SigningTime, t));
        }
        let mut verdict = PathVerdict {
            chain: vec![describe(signer, Role::Signer)],
            checks: Vec::new(),
            revocation_mode: self.revocation,
            revocation: RevocationStatus::NotChecked,
            revocation_certs: Vec::new(),
            policy: self.policy.clone(),
        };
        let usage = signer_key_usage_ok(signer).err().map(|why| PathFailure {
            check: Check::KeyUsage,
            index: Some(0),
            certificate: Some(verdict.chain[0].subject.clone()),
            detail: format!("\"{}\": {why}", verdict.chain[0].subject),
        });
        for (at, time) in times {
            let (failure, chain, revocation) = match &usage {
                Some(f) => (Some(f.clone()), None, None),
                None => inputs.validate_at(signer, &signer_der, at, time),
            };
            // The chain found now is the one reported, unless only the signing-time check
            // found one.
            if let Some(chain) = chain
                && verdict.chain.len() == 1
            {
                verdict.chain = chain;
            }
            if at == CheckedAt::Now
                && let Some((r, certs)) = revocation
            {
                verdict.revocation = r;
                verdict.revocation_certs = certs;
            }
            verdict.checks.push(TimeCheck { at, time, failure });
        }
        verdict
    }
}

type AtResult = (
    Option<PathFailure>,
    Option<Vec<ChainCert>>,
    Option<(RevocationStatus, Vec<CertRevocation>)>,
);

impl Inputs<'_> {
    fn settings(
        &self,
        at: CheckedAt,
        time: SystemTime,
    ) -> Result<CertificationPathSettings, String> {
        let mut cps = CertificationPathSettings::new();
        let toi = TimeOfInterest::from_unix_secs(unix_secs(time))
            .map_err(|e| format!("time of interest: {e}"))?;
        cps.set_time_of_interest(toi);
        let p = &self.policy.policy;
        cps.set_initial_policy_set(p.initial_set());
        cps.set_initial_explicit_policy_indicator(p.require_explicit_policy);
        cps.set_initial_policy_mapping_inhibit_indicator(p.inhibit_policy_mapping);
        cps.set_initial_inhibit_any_policy_indicator(p.inhibit_any_policy);
        // The signer's EKU, when present, must allow mail (anyExtendedKeyUsage counts).
        cps.set_extended_key_usage(vec![ID_KP_EMAIL_PROTECTION.to_string()]);
        // Revocation is a question about now: a CRL published after the signing time says
        // nothing reliable about that earlier time.
        let check_rev = self.policy.revocation != RevocationMode::Off && at == CheckedAt::Now;
        cps.set_check_revocation_status(check_rev);
        cps.set_check_crls(check_rev);
        cps.set_check_crldp_http(false);
        cps.set_check_ocsp_from_aia(false);
        cps.set_retrieve_from_aia_sia_http(false);
        Ok(cps)
    }

    /// The settings for a CRL issuer's path: those of the signer's, without the signer's
    /// extendedKeyUsage and with the default policy inputs (anyPolicy, no inhibitors).
    fn crl_issuer_settings(&self, cps: &CertificationPathSettings) -> CertificationPathSettings {
        let mut out = cps.clone();
        out.0.remove(certval::PS_EXTENDED_KEY_USAGE);
        out.set_initial_policy_set(vec![ANY_POLICY.to_string()]);
        out.set_initial_explicit_policy_indicator(false);
        out.set_initial_policy_mapping_inhibit_indicator(false);
        out.set_initial_inhibit_any_policy_indicator(false);
        out
    }

    fn environment(
        &self,
        cps: &CertificationPathSettings,
    ) -> Result<(PkiEnvironment, MemoryCrlSource), String> {
        let mut pe = PkiEnvironment::new();
        pe.populate_5280_pki_environment();
        // One signature callback: RustCrypto's as before, DSA (certval verifies no DSA
        // signatures), and for a certificate dated before 1970 over its original encoding.
        let parsed: Vec<Certificate> = self
            .anchors
            .iter()
            .chain(&self.certs)
            .filter_map(|d| {
                use der::Decode as _;
                Certificate::from_der(d).ok()
            })
            .collect();
        let refs: Vec<&Certificate> = parsed.iter().collect();
        pe.clear_verify_signature_message_callbacks();
        pe.add_verify_signature_message_callback(pre1970::Verifier {
            originals: self.originals.clone(),
            dsa: dsa::CertvalDsa {
                inherited: dsa::inherited_parameters(&refs),
            },
        });
        let mut ta = TaSource::new();
        for (i, der) in self.anchors.iter().enumerate() {
            ta.push(CertFile {
                filename: format!("anchor #{i}"),
                bytes: der.clone(),
            });
        }
        ta.initialize()
            .map_err(|e| format!("trust anchors: {e:?}"))?;
        pe.add_trust_anchor_source(Box::new(ta));
        let mut cs = CertSource::new();
        for (i, der) in self.certs.iter().enumerate() {
            cs.push(CertFile {
                filename: format!("certificate #{i}"),
                bytes: der.clone(),
            });
        }
        cs.initialize(cps)
            .map_err(|e| format!("certificates: {e:?}"))?;
        cs.find_all_partial_paths(&pe, cps);
        pe.add_certificate_source(Box::new(cs));
        let crls = MemoryCrlSource::new();
        for c in &self.crls {
            crls.add(c);
        }
        pe.add_crl_source(Box::new(crls.clone()));
        Ok((pe, crls))
    }

    fn validate_at(
        &self,
        signer: &Certificate,
        signer_der: &[u8],
        at: CheckedAt,
        time: SystemTime,
    ) -> AtResult {
        let setup = self.settings(at, time).and_then(|cps| {
            let (pe, crls) = self.environment(&cps)?;
            Ok((cps, pe, crls))
        });
        let (cps, pe, crls) = match setup {
            Ok(x) => x,
            Err(e) => return (Some(general(Check::Other, e)), None, None),
        };
        let target: PDVCertificate = match parse_cert(signer_der, "signer") {
            Ok(t) => t,
            Err(e) => {
                return (
                    Some(general(
                        Check::Other,
                        format!("the signer certificate does not parse for validation: {e:?}"),
                    )),
                    None,
                    None,
                );
            }
        };
        let mut paths = Vec::new();
        let built = pe.get_paths_for_target(&target, &mut paths, 0, cps.get_time_of_interest());
        for cand in self.candidate_paths(&pe, &target) {
            if !paths.iter().any(|p| same_path(p, &cand)) {
                paths.push(cand);
            }
        }
        if paths.is_empty() {
            let why = match built {
                Err(e) if e.is_certificate_expired_error() => {
                    "the signer certificate has expired".to_owned()
                }
                _ => no_path_detail(signer, self),
            };
            return (
                Some(PathFailure {
                    check: Check::NoPath,
                    index: Some(0),
                    certificate: Some(signer.tbs_certificate().subject().to_string()),
                    detail: why,
                }),
                None,
                None,
            );
        }
        // CRL issuers other than the certificates' issuers (crl.rs) are looked for among the
        // same certificates, and validated to the same anchor with the same settings, less
        // the signer's extendedKeyUsage and policy requirements.
        let pool: Vec<PDVCertificate> = self
            .certs
            .iter()
            .enumerate()
            .filter_map(|(i, der)| parse_cert(der, &format!("certificate #{i}")).ok())
            .collect();
        let issuer_cps = self.crl_issuer_settings(&cps);
        let issuer_paths = |c: &PDVCertificate| {
            let mut out = Vec::new();
            let _ = pe.get_paths_for_target(c, &mut out, 0, cps.get_time_of_interest());
            for cand in self.candidate_paths(&pe, c) {
                if !out.iter().any(|p| same_path(p, &cand)) {
                    out.push(cand);
                }
            }
            out
        };
        let issuers = revocation::Issuers {
            pool: &pool,
            paths: &issuer_paths,
            cps: &issuer_cps,
            validating: Vec::new(),
        };
        // The failure reported is that of the path that got furthest: one that failed only
        // its revocation check beats one that failed validation; otherwise the first.
        let mut first_failure: Option<AtResult> = None;
        let mut revocation_failure: Option<AtResult> = None;
        for path in &paths {
            let chain = describe_path(path, &self.originals);
            let mut cpr = CertificationPathResults::new();
            let failed = |cpr: &CertificationPathResults, e: certval::Error| {
                let status = match (cpr.get_validation_status(), e) {
                    (Some(s), _)
                        if s != PathValidationStatus::NotYetValidated
                            && s != PathValidationStatus::Valid =>
                    {
                        s
                    }
                    (_, certval::Error::PathValidation(s)) => s,
                    _ => PathValidationStatus::NotYetValidated,
                };
                let mut f = failure_from(status, cpr.get_failure_index(), &chain, signer);
                if f.check == Check::Other && !matches!(e, certval::Error::PathValidation(_)) {
                    f.detail = format!("{}: {e:?}", f.detail);
                }
                f
            };
            if let Err(e) = pe.validate_path(&pe, &cps, path, &mut cpr) {
                let f = failed(&cpr, e);
                first_failure.get_or_insert((Some(f), Some(chain), None));
                continue;
            }
            if !cps.get_check_revocation_status() || pe.is_cert_a_trust_anchor(&path.target).is_ok()
            {
                return (
                    None,
                    Some(chain),
                    Some((RevocationStatus::NotChecked, Vec::new())),
                );
            }
            let outcome = revocation::check(
                &pe,
                &cps,
                &crls,
                path,
                &self.policy.retrieval,
                time,
                &issuers,
            );
            let rev = Some((outcome.status, outcome.certs.clone()));
            match outcome.failure {
                None => return (None, Some(chain), rev),
                Some(_)
                    if outcome.status == RevocationStatus::Unknown
                        && self.policy.revocation == RevocationMode::Soft =>
                {
                    return (None, Some(chain), rev);
                }
                Some((index, status)) => {
                    cpr.set_failure_index(index);
                    cpr.set_validation_status(status);
                    let mut f = failed(&cpr, certval::Error::PathValidation(status));
                    if let Some(r) = f
                        .index
                        .and_then(|i| outcome.certs.iter().find(|r| r.index == i))
                    {
                        if let Some(src) = &r.source {
                            f.detail = format!("{} (source: {src})", f.detail);
                        } else if !r.notes.is_empty() {
                            f.detail = format!(
                                "the revocation status of \"{}\" could not be determined: {}",
                                r.subject,
                                r.notes.join("; ")
                            );
                        }
                    }
                    revocation_failure.get_or_insert((Some(f), Some(chain), rev));
                }
            }
        }
        revocation_failure.or(first_failure).unwrap_or((
            Some(general(Check::NoPath, "no path to a trust anchor")),
            None,
            None,
        ))
    }
}

/// Whether two paths have the same anchor and intermediates.
fn same_path(a: &CertificationPath, b: &CertificationPath) -> bool {
    a.trust_anchor.as_bytes() == b.trust_anchor.as_bytes()
        && a.intermediates.len() == b.intermediates.len()
        && a.intermediates
            .iter()
            .zip(&b.intermediates)
            .all(|(x, y)| x.as_bytes() == y.as_bytes())
}

/// Most candidate paths tried beyond certval's own.
const MAX_CANDIDATES: usize = 16;
/// Longest candidate path (intermediates).
const MAX_DEPTH: usize = 10;

impl Inputs<'_> {
    /// Candidate paths by issuer name: every chain of available certificates from the
    /// target to an anchor whose names chain, without repeating a certificate.
    fn candidate_paths(
        &self,
        pe: &PkiEnvironment,
        target: &PDVCertificate,
    ) -> Vec<CertificationPath> {
        let certs: Vec<PDVCertificate> = self
            .certs
            .iter()
            .enumerate()
            .filter(|(_, der)| der.as_slice() != target.as_bytes())
            .filter_map(|(i, der)| parse_cert(der, &format!("certificate #{i}")).ok())
            .collect();
        let anchors = pe.get_trust_anchors();
        let mut out = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        extend(target, target, &certs, &anchors, &mut stack, &mut out);
        out
    }
}

/// Depth-first search for [`Inputs::candidate_paths`]: `stack` holds indices into `certs`
/// from the target's issuer upwards.
fn extend(
    target: &PDVCertificate,
    cur: &PDVCertificate,
    certs: &[PDVCertificate],
    anchors: &[&PDVTrustAnchorChoice],
    stack: &mut Vec<usize>,
    out: &mut Vec<CertificationPath>,
) {
    let issuer = cur.decoded().tbs_certificate().issuer();
    for ta in anchors {
        if out.len() >= MAX_CANDIDATES {
            return;
        }
        if get_trust_anchor_name(ta.decoded()).is_ok_and(|n| compare_names(n, issuer)) {
            let intermediates = stack
                .iter()
                .rev()
                .filter_map(|i| certs.get(*i).cloned())
                .collect();
            out.push(CertificationPath::new(
                (*ta).clone(),
                intermediates,
                target.clone(),
            ));
        }
    }
    if stack.len() >= MAX_DEPTH {
        return;
    }
    for (i, c) in certs.iter().enumerate() {
        if out.len() >= MAX_CANDIDATES {
            return;
        }
        if stack.contains(&i) || !compare_names(c.decoded().tbs_certificate().subject(), issuer) {
            continue;
        }
        stack.push(i);
        extend(target, c, certs, anchors, stack, out);
        stack.pop();
    }
}

/// Why no path could be built: what the issuer name is, and what was found under it.
fn no_path_detail(signer: &Certificate, inputs: &Inputs<'_>) -> String {
    let issuer = signer.tbs_certificate().issuer();
    let subject = signer.tbs_certificate().subject();
    let known = inputs
        .policy
        .anchors
        .iter()
        .any(|a| a.tbs_certificate().subject() == issuer);
    let mut s =
        format!("no path from \"{subject}\" to a trust anchor: its issuer \"{issuer}\" is not");
    if known {
        s.push_str(" a usable trust anchor (a trust anchor has that name, but a different key, or it was not valid then)");
    } else {
        s.push_str(
            " among the trust anchors, and no chain to one was found in the message's certificates",
        );
        if !inputs.policy.intermediates.is_empty() {
            s.push_str(" or --certs");
        }
    }
    s
}

#[cfg(test)]
mod tests;
