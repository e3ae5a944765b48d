//! `smime verify`: CMS signatures and signed S/MIME messages.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use x509_cert::Certificate;

use super::{Failure, load_certs, open_input};
use crate::cli::VerifyArgs;
use crate::cms::{self, verify::Verified};
use crate::keys::certificate_emails;
use crate::mime::{self, InputKind, Parsed};
use crate::output::Output;
use crate::store::CertStore;

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
    trust: &[Certificate],
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
    let verified = match cms::verify::verify_detached(
        &signed.cms,
        content,
        trust,
        SystemTime::now(),
    ) {
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
    if !no_chain && !verified.trusted {
        return Err(Failure::Verify(anyhow!(
            "the signer's certificate does not chain to a trusted CA"
        )));
    }
    // The certificate must belong to the sender the message claims (RFC 8550 §3).
    let from = mime::from_addresses(&signed.headers);
    let emails = certificate_emails(&verified.signer);
    if !from.is_empty()
        && !from
            .iter()
            .any(|f| emails.iter().any(|e| e.eq_ignore_ascii_case(f)))
    {
        return Err(Failure::Verify(anyhow!(
            "the signature is good but the signer's certificate is for {} while the message is From: {}",
            if emails.is_empty() {
                "no e-mail address".to_owned()
            } else {
                emails.join(", ")
            },
            from.join(", ")
        )));
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
    Ok((Verdict { verified, from }, content))
}

pub(super) fn verify(a: &VerifyArgs) -> Result<(), Failure> {
    let trust = trust_anchors(&a.trust, a.no_chain)?;
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
    let (verdict, content) = check(raw, detached, &trust, a.no_chain)?;
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
        eprintln!("{}", describe(&verdict, a.json));
    } else {
        println!("{}", describe(&verdict, a.json));
    }
    Ok(())
}

/// The verdict as one line, or as JSON.
pub(super) fn describe(v: &Verdict, json: bool) -> String {
    let ks = crate::keys::KeySummary::from_certificate(&v.verified.signer);
    if json {
        return serde_json::json!({
            "valid": true,
            "trusted": v.verified.trusted,
            "signer": { "subject": ks.subject, "email": ks.email, "sha256": ks.sha256,
                        "not_before": ks.not_before, "not_after": ks.not_after },
            "from": v.from,
            "digest": v.verified.digest_alg.name(),
            "signing_time": v.verified.signing_time
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        })
        .to_string();
    }
    let trust_note = if v.verified.trusted {
        "certificate chains to a trusted CA"
    } else {
        "certificate NOT checked against a trust anchor (--no-chain)"
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
