//! `smime verify`: CMS signatures and signed S/MIME messages.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use x509_cert::Certificate;

use super::{Failure, load_certs, open_input};
use crate::cli::{PathArgs, Revocation, VerifyArgs};
use crate::cms::{self, verify::Verified};
use crate::keys::certificate_emails;
use crate::mime::{self, InputKind, Parsed};
use crate::output::Output;
use crate::store::CertStore;
use crate::trust::{PolicySettings, RevocationMode, TrustPolicy};

/// The system's CA bundle (Debian's ca-certificates), used when no --trust is given.
const SYSTEM_ANCHORS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The anchors `--trust`/`--no-chain` ask for.
pub(super) fn trust_anchors(
    trust: &[PathBuf],
    no_chain: bool,
) -> Result<Vec<Certificate>, Failure> {
    if !trust.is_empty() {
        load_certs(trust)
    } else if no_chain {
        Ok(vec![])
    } else if Path::new(SYSTEM_ANCHORS).exists() {
        load_certs(&[PathBuf::from(SYSTEM_ANCHORS)])
    } else {
        Err(Failure::Usage(anyhow!(
            "no trust anchors: pass --trust CA.pem (or --no-chain to check only the signature)"
        )))
    }
}

/// The trust policy for `anchors` with the `--policy`/`--crl`/... settings; `None` with
/// `--no-chain`.
pub(super) fn trust_policy(
    anchors: Vec<Certificate>,
    no_chain: bool,
    path: &PathArgs,
) -> Result<Option<TrustPolicy>, Failure> {
    if no_chain {
        return Ok(None);
    }
    let mut crls = Vec::new();
    for p in &path.crls {
        crls.extend(
            crate::trust::load_crls(p)
                .context("reading --crl")
                .map_err(Failure::Usage)?,
        );
    }
    Ok(Some(TrustPolicy {
        anchors,
        intermediates: load_certs(&path.certs)?,
        crls,
        policy: PolicySettings {
            initial_policies: path.policies.clone(),
            require_explicit_policy: path.require_explicit_policy,
            inhibit_policy_mapping: path.inhibit_policy_mapping,
            inhibit_any_policy: path.inhibit_any_policy,
        },
        revocation: match path.revocation {
            Revocation::Off => RevocationMode::Off,
            Revocation::Soft => RevocationMode::Soft,
            Revocation::Hard => RevocationMode::Hard,
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
            serde_json::json!({
                "valid": false,
                "trusted": false,
                "error": format!("{e:#}"),
                "failure": { "check": check, "detail": format!("{e:#}") },
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

/// A signed input taken apart: the signature, the content if outside it, and the mail
/// headers if it was an S/MIME message.
struct Signed {
    cms: Vec<u8>,
    content: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

fn split_input(raw: Vec<u8>) -> Result<Signed, Failure> {
    if mime::sniff(&raw) != InputKind::Mime {
        return Ok(Signed {
            cms: raw,
            content: None,
            headers: vec![],
        });
    }
    match mime::parse(&raw)
        .map_err(|e| Failure::Usage(anyhow!(e).context("broken S/MIME message")))?
    {
        Parsed::MultipartSigned {
            headers,
            signed,
            signature,
            ..
        } => Ok(Signed {
            cms: signature,
            content: Some(signed),
            headers,
        }),
        Parsed::Pkcs7Mime {
            smime_type,
            der,
            headers,
        } if smime_type
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case("signed-data")) =>
        {
            Ok(Signed {
                cms: der,
                content: None,
                headers,
            })
        }
        Parsed::Pkcs7Mime { smime_type, .. } => Err(Failure::Usage(anyhow!(
            "this is an encrypted message ({}): use smime decrypt",
            smime_type.unwrap_or_default()
        ))),
        Parsed::Other { content_type } => Err(Failure::Usage(anyhow!(
            "not an S/MIME message (Content-Type: {content_type})"
        ))),
    }
}

/// Checks a signed input; returns the verdict and the verified content (the message with
/// its headers for S/MIME input), if the input carried content.
pub(super) fn check(
    raw: Vec<u8>,
    detached_content: Option<Box<dyn Read>>,
    trust: Option<&TrustPolicy>,
    no_chain: bool,
) -> Result<(Verdict, Option<Vec<u8>>), Failure> {
    let signed = split_input(raw)?;
    let content: Option<Box<dyn Read + '_>> = match (&signed.content, detached_content) {
        (Some(_), Some(_)) => {
            return Err(Failure::Usage(anyhow!(
                "the message carries its content: drop --content"
            )));
        }
        (Some(c), None) => Some(Box::new(c.as_slice())),
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
    let inner = match signed.content {
        Some(c) => Some(c),
        None => cms::verify::encapsulated_content(&signed.cms)
            .map_err(|e| Failure::Other(anyhow!(e)))?,
    };
    let content = inner.map(|c| {
        if signed.headers.is_empty() {
            c
        } else {
            mime::reattach_headers(&signed.headers, &c)
        }
    });
    Ok((verdict, content))
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
    let mut raw = Vec::new();
    open_input(a.input.as_deref())?
        .read_to_end(&mut raw)
        .context("reading the signature")
        .map_err(Failure::Usage)?;
    let detached = a
        .content
        .as_deref()
        .map(|p| open_input(Some(p)))
        .transpose()?;
    let (verdict, content) = check(raw, detached, trust.as_ref(), a.no_chain)?;
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
        out.write_all(content.as_deref().unwrap_or_default())
            .map_err(|e| Failure::Other(e.into()))?;
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
    let ks = crate::keys::KeySummary::from_certificate(&v.verified.signer);
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

/// The verdict as one line, or as JSON.
pub(super) fn describe(v: &Verdict, json: bool) -> String {
    let ks = crate::keys::KeySummary::from_certificate(&v.verified.signer);
    if json {
        return verdict_json(v).to_string();
    }
    let trust_note = match (&v.verified.path, v.verified.trusted) {
        (Some(p), true) => {
            let chain: Vec<&str> = p.chain.iter().map(|c| c.subject.as_str()).collect();
            format!(
                "certificate chains to a trusted CA: {}; revocation {}",
                chain.join(" <- "),
                p.revocation.name()
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
