//! `smime verify`: CMS signatures and signed S/MIME messages.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use x509_cert::Certificate;

use super::{Failure, load_certs, open_input};
use crate::cli::{PathArgs, Revocation, VerifyArgs};
use crate::cms::pem::Base64Reader;
use crate::cms::{self, verify::Verified};
use crate::keys::certificate_emails;
use crate::mime::{self, InputKind, stream::Incoming};
use crate::output::Output;
use crate::store::CertStore;
use crate::trust::{Check, CrlCache, PolicySettings, Retrieval, RevocationMode, TrustPolicy};

/// The system's CA bundle (Debian's ca-certificates): the default anchors when neither
/// --trust nor the user's trust settings give any, and added by --system-trust.
pub(crate) const SYSTEM_ANCHORS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The environment variable naming the user's trust anchors.
pub const TRUST_ENV: &str = "SMIME_TRUST";

/// The user's trust anchors when no --trust is given (shared by `smime verify`, `open`
/// and `smime-git`): `$SMIME_TRUST`, a `:`-separated list of certificate files and
/// directories where the word `system` stands for the system CA bundle; else the
/// directory `$XDG_CONFIG_HOME/smime/trust` (`~/.config/smime/trust`) if it exists.
pub(crate) fn user_anchor_paths() -> Option<Vec<PathBuf>> {
    if let Some(list) = std::env::var_os(TRUST_ENV).filter(|v| !v.is_empty()) {
        return Some(
            std::env::split_paths(&list)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| {
                    if p == Path::new("system") {
                        PathBuf::from(SYSTEM_ANCHORS)
                    } else {
                        p
                    }
                })
                .collect(),
        );
    }
    let env = |n| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("XDG_CONFIG_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".config")))
        .map(|c| c.join("smime/trust"))
        .filter(|d| d.is_dir())
        .map(|d| vec![d])
}

/// The anchors in `paths`, which must hold at least one (`what` names the source).
pub(crate) fn load_anchors(paths: &[PathBuf], what: &str) -> Result<Vec<Certificate>, Failure> {
    let anchors = load_cert_paths(paths).map_err(|f| match f {
        Failure::Usage(e) => Failure::Usage(e.context(what.to_owned())),
        f => f,
    })?;
    if anchors.is_empty() {
        return Err(Failure::Usage(anyhow!(
            "{what}: no certificate found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(anchors)
}

/// The certificates in `paths`: PEM or DER files, or directories of them (every file in
/// a directory that holds certificates; others are skipped).
fn load_cert_paths(paths: &[PathBuf]) -> Result<Vec<Certificate>, Failure> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            out.extend(load_cert_dir(p)?);
        } else {
            out.extend(load_certs(std::slice::from_ref(p))?);
        }
    }
    Ok(out)
}

fn load_cert_dir(dir: &Path) -> Result<Vec<Certificate>, Failure> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))
        .map_err(Failure::Usage)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files
        .iter()
        .filter_map(|f| load_certs(std::slice::from_ref(f)).ok())
        .flatten()
        .collect())
}

/// The anchors `--trust`/`--no-chain` ask for.
pub(super) fn trust_anchors(
    trust: &[PathBuf],
    no_chain: bool,
) -> Result<Vec<Certificate>, Failure> {
    if !trust.is_empty() {
        return load_anchors(trust, "--trust");
    }
    if no_chain {
        return Ok(vec![]);
    }
    if let Some(paths) = user_anchor_paths() {
        return load_anchors(&paths, TRUST_ENV);
    }
    if Path::new(SYSTEM_ANCHORS).exists() {
        load_certs(&[PathBuf::from(SYSTEM_ANCHORS)])
    } else {
        Err(Failure::Usage(anyhow!(
            "no trust anchors: pass --trust CA.pem, set {TRUST_ENV}, or --no-chain to check only the signature"
        )))
    }
}

/// CA certificates of the local certificate store, as intermediates (a store that cannot
/// be read adds nothing).
fn store_intermediates() -> Vec<Certificate> {
    use x509_cert::ext::pkix::BasicConstraints;
    CertStore::default_location()
        .and_then(|s| s.all())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            matches!(
                c.tbs_certificate().get_extension::<BasicConstraints>(),
                Ok(Some((_, bc))) if bc.ca
            )
        })
        .collect()
}

/// The trust policy for `anchors` with the `--policy`/`--crl`/... settings; `None` with
/// `--no-chain`.
pub(super) fn trust_policy(
    mut anchors: Vec<Certificate>,
    no_chain: bool,
    path: &PathArgs,
) -> Result<Option<TrustPolicy>, Failure> {
    if no_chain {
        return Ok(None);
    }
    if path.system_trust {
        if !Path::new(SYSTEM_ANCHORS).exists() {
            return Err(Failure::Usage(anyhow!(
                "--system-trust: {SYSTEM_ANCHORS} does not exist (install ca-certificates)"
            )));
        }
        for c in load_certs(&[PathBuf::from(SYSTEM_ANCHORS)])? {
            if !anchors.contains(&c) {
                anchors.push(c);
            }
        }
    }
    let mut crls = Vec::new();
    for p in &path.crls {
        crls.extend(
            crate::trust::load_crls(p)
                .context("reading --crl")
                .map_err(Failure::Usage)?,
        );
    }
    if let Some(url) = &path.ocsp_url
        && !url.to_ascii_lowercase().starts_with("http://")
    {
        return Err(Failure::Usage(anyhow!(
            "--ocsp-url {url}: only http:// responders are supported"
        )));
    }
    let mut intermediates = load_cert_paths(&path.certs)?;
    intermediates.extend(store_intermediates());
    let revocation = match path.revocation {
        Revocation::Off => RevocationMode::Off,
        Revocation::Soft => RevocationMode::Soft,
        Revocation::Hard => RevocationMode::Hard,
    };
    Ok(Some(TrustPolicy {
        anchors,
        intermediates,
        crls,
        policy: PolicySettings {
            initial_policies: path.policies.clone(),
            require_explicit_policy: path.require_explicit_policy,
            inhibit_policy_mapping: path.inhibit_policy_mapping,
            inhibit_any_policy: path.inhibit_any_policy,
        },
        revocation,
        retrieval: Retrieval {
            fetch: !path.offline && revocation != RevocationMode::Off,
            ocsp_url: path.ocsp_url.clone(),
            cache: Some(CrlCache::default_location()),
        },
    }))
}

/// A verification failure with the verdict as JSON, for `--json` (carried inside
/// [`Failure::Verify`]).
#[derive(Debug)]
struct Rejected {
    message: String,
    json: serde_json::Value,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rejected {}

/// The JSON verdict of a failed verification: the detailed one if there is one.
fn rejection_json(e: &anyhow::Error) -> serde_json::Value {
    match e.downcast_ref::<Rejected>() {
        Some(r) => r.json.clone(),
        None => {
            let check = match e.downcast_ref::<cms::Error>() {
                Some(cms::Error::CertExpired { .. } | cms::Error::CertNotYetValid { .. }) => {
                    "validity"
                }
                Some(cms::Error::SignerCertNotFound) => "signer-certificate",
                Some(cms::Error::Untrusted(_)) => "chain",
                Some(cms::Error::UnsupportedAlgorithm(_)) => "algorithm",
                _ => "signature",
            };
            // Which time the signer's validity period failed at: now or the signing time.
            let at = match e.downcast_ref::<cms::Error>() {
                Some(
                    cms::Error::CertExpired { which, .. }
                    | cms::Error::CertNotYetValid { which, .. },
                ) => Some(match which {
                    cms::CheckedAt::Now => "now",
                    cms::CheckedAt::SigningTime => "signing-time",
                }),
                _ => None,
            };
            serde_json::json!({
                "valid": false,
                "trusted": false,
                "error": format!("{e:#}"),
                "failure": { "check": check, "at": at, "detail": format!("{e:#}") },
            })
        }
    }
}

/// What was checked, ready to print.
pub(super) struct Verdict {
    pub(super) verified: Verified,
    /// The message's From: addresses, for S/MIME input.
    pub(super) from: Vec<String>,
}

/// Mail header fields, in order.
pub(super) type Headers = Vec<(String, String)>;

/// A signed input taken apart: the signature, the content it carried (spooled to an
/// anonymous temporary file, so any size fits), and the mail headers if it was an S/MIME
/// message.
pub(super) struct Signed {
    cms: Vec<u8>,
    content: Option<File>,
    headers: Headers,
    /// Whether it was an S/MIME message (whose content cannot be replaced by --content).
    mime: bool,
}

/// A broken S/MIME structure (a usage error: the input is not what it should be).
fn broken(e: mime::MimeError) -> Failure {
    Failure::Usage(anyhow!(e).context("broken S/MIME message"))
}

/// Takes a signed input apart as a stream: DER/BER, PEM, or an S/MIME message
/// (multipart/signed or opaque signed-data). Memory use does not depend on its size.
pub(super) fn split_input(input: Box<dyn Read + '_>) -> Result<Signed, Failure> {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let kind = mime::sniff(
        input
            .fill_buf()
            .context("reading the input")
            .map_err(Failure::Usage)?,
    );
    let mut content = super::spool()?;
    let (cms_input, headers): (Box<dyn Read + '_>, Headers) = match kind {
        InputKind::Der => (Box::new(input), vec![]),
        InputKind::Pem => {
            let (label, body) =
                Base64Reader::pem(input).map_err(|e| Failure::Verify(anyhow!(e)))?;
            if !cms::verify::SIGNATURE_PEM_LABELS.contains(&label.as_str()) {
                return Err(Failure::Usage(anyhow!(
                    "unexpected PEM label {label:?} (want CMS or PKCS7)"
                )));
            }
            (Box::new(body), vec![])
        }
        InputKind::Mime => {
            match mime::stream::open(Box::new(input), &mut content).map_err(broken)? {
                Incoming::MultipartSigned {
                    headers, signature, ..
                } => {
                    content.rewind().map_err(|e| Failure::Other(e.into()))?;
                    return Ok(Signed {
                        cms: signature,
                        content: Some(content),
                        headers,
                        mime: true,
                    });
                }
                Incoming::Pkcs7Mime {
                    smime_type,
                    body,
                    headers,
                } if smime_type
                    .as_deref()
                    .is_none_or(|t| t.eq_ignore_ascii_case("signed-data")) =>
                {
                    (body, headers)
                }
                Incoming::Pkcs7Mime { smime_type, .. } => {
                    return Err(Failure::Usage(anyhow!(
                        "this is an encrypted message ({}): use smime decrypt",
                        smime_type.unwrap_or_default()
                    )));
                }
                Incoming::Other { content_type } => {
                    return Err(Failure::Usage(anyhow!(
                        "not an S/MIME message (Content-Type: {content_type})"
                    )));
                }
            }
        }
    };
    let detached = cms::detach::detach(cms_input, &mut content).map_err(|e| match e {
        cms::Error::Io(e) => match mime::stream::body_error(&e) {
            Some(m) => broken(m),
            None => Failure::Other(anyhow!(e).context("reading the signature")),
        },
        e => Failure::Verify(anyhow!(e)),
    })?;
    content.rewind().map_err(|e| Failure::Other(e.into()))?;
    Ok(Signed {
        cms: detached.cms,
        content: detached.had_content.then_some(content),
        mime: kind == InputKind::Mime,
        headers,
    })
}

/// Checks a signed input; returns the verdict and, if the input carried its content, the
/// verified content (rewound) with the mail headers to put back in front of it.
pub(super) fn check(
    mut signed: Signed,
    detached_content: Option<Box<dyn Read>>,
    trust: Option<&TrustPolicy>,
    no_chain: bool,
) -> Result<(Verdict, Option<(File, Headers)>), Failure> {
    if detached_content.is_some() && !signed.mime {
        // A CMS signature that carries its content checked against a given file
        // (`openssl cms -sign -stream` output, say): the file is what is verified.
        signed.content = None;
    }
    let content: Option<Box<dyn Read + '_>> = match (&signed.content, detached_content) {
        (Some(_), Some(_)) => {
            return Err(Failure::Usage(anyhow!(
                "the message carries its content: drop --content"
            )));
        }
        (Some(c), None) => Some(Box::new(BufReader::with_capacity(64 * 1024, c))),
        (None, c) => c,
    };
    let verified = match cms::verify::verify_detached_report(
        &signed.cms,
        content,
        trust,
        SystemTime::now(),
    )
    .and_then(|all| {
        all.into_iter()
            .next()
            .ok_or_else(|| cms::Error::Malformed("no SignerInfo".into()))
    }) {
        Ok(v) => v,
        Err(cms::Error::Io(e)) => {
            return Err(Failure::Other(anyhow!(e).context("reading the content")));
        }
        Err(cms::Error::MissingContent) => {
            return Err(Failure::Usage(anyhow!(
                "the signature is detached: give the signed data with --content FILE (- for stdin)"
            )));
        }
        Err(e) => return Err(Failure::Verify(anyhow!(e))),
    };
    // The certificate must belong to the sender the message claims (RFC 8550 §3).
    let from = mime::from_addresses(&signed.headers);
    let verdict = Verdict { verified, from };
    if !no_chain && !verdict.verified.trusted {
        let message = match &verdict.verified.path {
            Some(p)
                if p.failure().is_some_and(|(_, f)| {
                    matches!(f.check, Check::Revoked | Check::RevocationUnknown)
                }) =>
            {
                format!("untrusted: {p}")
            }
            Some(p) => {
                format!("untrusted: the signer's certificate does not chain to a trusted CA: {p}")
            }
            None => "untrusted: the signer's certificate does not chain to a trusted CA".to_owned(),
        };
        let mut json = verdict_json(&verdict);
        json["valid"] = false.into();
        json["error"] = message.clone().into();
        json["failure"] = json["path"]["failure"].clone();
        return Err(Failure::Verify(anyhow!(Rejected { message, json })));
    }
    let emails = certificate_emails(&verdict.verified.signer);
    // Every From: address must be the signer's, and there must be one From: field: a
    // reader shows the first, so a second one (or a second address) must not ride along
    // on someone else's signature.
    let from_fields = signed
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("from"))
        .count();
    if from_fields > 1
        || (!verdict.from.is_empty()
            && !verdict
                .from
                .iter()
                .all(|f| emails.iter().any(|e| e.eq_ignore_ascii_case(f))))
    {
        let message = format!(
            "the signature is good but the signer's certificate is for {} while the message is From: {}",
            if emails.is_empty() {
                "no e-mail address".to_owned()
            } else {
                emails.join(", ")
            },
            verdict.from.join(", ")
        );
        let mut json = verdict_json(&verdict);
        json["valid"] = false.into();
        json["error"] = message.clone().into();
        json["failure"] = serde_json::json!({ "check": "sender", "detail": message });
        return Err(Failure::Verify(anyhow!(Rejected { message, json })));
    }
    let content = match signed.content.take() {
        Some(mut f) => {
            f.rewind().map_err(|e| Failure::Other(e.into()))?;
            Some((f, signed.headers))
        }
        None => None,
    };
    Ok((verdict, content))
}

/// Writes verified content to `out`, with the mail headers put back in front of it.
pub(super) fn write_content(
    (file, headers): (File, Headers),
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let write_err = |e: std::io::Error| Failure::Other(anyhow!(e).context("writing the output"));
    let file = BufReader::with_capacity(64 * 1024, file);
    if headers.is_empty() {
        std::io::copy(&mut { file }, out).map_err(write_err)?;
    } else {
        let mut r = mime::reattached_reader(&headers, file).map_err(write_err)?;
        std::io::copy(&mut r, out).map_err(write_err)?;
    }
    Ok(())
}

pub(super) fn verify(a: &VerifyArgs) -> Result<(), Failure> {
    let result = verify_inner(a);
    if a.json
        && let Err(Failure::Verify(e)) = &result
    {
        println!("{}", rejection_json(e));
    }
    result
}

fn verify_inner(a: &VerifyArgs) -> Result<(), Failure> {
    let trust = trust_policy(trust_anchors(&a.trust, a.no_chain)?, a.no_chain, &a.path)?;
    let signed = split_input(open_input(a.input.as_deref())?)?;
    if a.output.is_some() && (signed.content.is_none() || a.content.is_some() && !signed.mime) {
        return Err(Failure::Usage(anyhow!(
            "--out: the signature is detached, so it carries no content to write (the signed \
             data is the --content file)"
        )));
    }
    let detached = a
        .content
        .as_deref()
        .map(|p| open_input(Some(p)))
        .transpose()?;
    let (verdict, content) = check(signed, detached, trust.as_ref(), a.no_chain)?;
    if a.store_signers {
        let store = CertStore::default_location().map_err(|e| Failure::Other(e.into()))?;
        store
            .add(&verdict.verified.signer)
            .map_err(|e| Failure::Other(e.into()))?;
    }
    if let Some(path) = a.output.as_deref() {
        let mut out = Output::create(Some(path))
            .context("creating the output")
            .map_err(Failure::Usage)?;
        if let Some(content) = content {
            write_content(content, &mut out)?;
        }
        out.commit()
            .context("writing the output")
            .map_err(Failure::Other)?;
        if a.openssl_status {
            eprintln!("Verification successful");
        }
        eprintln!("{}", describe(&verdict, a.json));
    } else if a.openssl_status {
        eprintln!("Verification successful\n{}", describe(&verdict, a.json));
    } else {
        println!("{}", describe(&verdict, a.json));
    }
    Ok(())
}

/// The verdict as JSON (`valid` is true: callers of a failure overwrite it).
fn verdict_json(v: &Verdict) -> serde_json::Value {
    let ks = crate::keys::KeySummary::from_der(&v.verified.signer_der);
    let emails = certificate_emails(&v.verified.signer);
    serde_json::json!({
        "valid": true,
        "trusted": v.verified.trusted,
        "signer": { "subject": ks.subject, "email": ks.email, "sha256": ks.sha256,
                    "not_before": ks.not_before, "not_after": ks.not_after },
        "from": v.from,
        "sender_match": v.from.is_empty()
            || v.from.iter().any(|f| emails.iter().any(|e| e.eq_ignore_ascii_case(f))),
        "digest": v.verified.digest_alg.name(),
        "signing_time": v.verified.signing_time
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        "path": v.verified.path.as_ref().map(crate::trust::PathVerdict::to_json),
    })
}

/// The revocation status with its source, or why it is unknown.
fn revocation_note(p: &crate::trust::PathVerdict) -> String {
    use crate::trust::RevocationStatus;
    let mut s = p.revocation.name().to_owned();
    match p.revocation {
        RevocationStatus::NotChecked if p.revocation_mode == RevocationMode::Off => {
            s.push_str(" (--revocation off)");
        }
        RevocationStatus::Unknown => {
            let why: Vec<String> = p
                .revocation_certs
                .iter()
                .filter(|r| r.status == RevocationStatus::Unknown)
                .map(|r| {
                    if r.notes.is_empty() {
                        format!("\"{}\": no CRL or OCSP response", r.subject)
                    } else {
                        format!("\"{}\": {}", r.subject, r.notes.join("; "))
                    }
                })
                .collect();
            s.push_str(&format!(" ({})", why.join("; ")));
        }
        _ => {
            if let Some(src) = p.revocation_source() {
                s.push_str(&format!(" (source: {src})"));
            }
        }
    }
    s
}

/// The verdict as one line, or as JSON.
pub(super) fn describe(v: &Verdict, json: bool) -> String {
    let ks = crate::keys::KeySummary::from_der(&v.verified.signer_der);
    if json {
        return verdict_json(v).to_string();
    }
    let trust_note = match (&v.verified.path, v.verified.trusted) {
        (Some(p), true) => {
            let chain: Vec<&str> = p.chain.iter().map(|c| c.subject.as_str()).collect();
            format!(
                "certificate chains to a trusted CA: {}; revocation {}",
                chain.join(" <- "),
                revocation_note(p)
            )
        }
        _ => "certificate NOT checked against a trust anchor (--no-chain)".to_owned(),
    };
    format!(
        "Good signature from {}{} ({trust_note})",
        ks.subject,
        ks.email
            .as_deref()
            .map(|e| format!(" <{e}>"))
            .unwrap_or_default()
    )
}
