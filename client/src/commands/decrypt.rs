//! `smime decrypt` and `smime open`.

use std::io::{BufRead, BufReader, Read, Seek};

use anyhow::{Context, anyhow};

use super::verify::Headers;
use super::{Failure, connect, key_list, open_input, verify};
use crate::agent::AgentError;
use crate::cli::{Cli, DecryptArgs};
use crate::cms::pem::Base64Reader;
use crate::cms::{self, Error as CmsError};
use crate::keys::{KeySummary, select};
use crate::mime::{self, InputKind, stream::Incoming};
use crate::output::Output;
use crate::signer::RemoteUnwrapper;

/// What the input holds: the CMS to decrypt (as a stream) and the mail headers around it.
fn unwrap_input(
    kind: InputKind,
    input: BufReader<Box<dyn Read>>,
) -> Result<(Headers, Box<dyn Read>), Failure> {
    match kind {
        // BER/DER streams straight through: constant memory for any size.
        InputKind::Der => Ok((vec![], Box::new(input))),
        InputKind::Pem => {
            let (_, body) = Base64Reader::pem(input).map_err(|e| Failure::Usage(anyhow!(e)))?;
            Ok((vec![], Box::new(body)))
        }
        InputKind::Mime => {
            // A multipart/signed input is refused below; its signed part is not needed.
            match mime::stream::open(Box::new(input), &mut std::io::sink())
                .map_err(|e| Failure::Usage(anyhow!(e).context("broken S/MIME message")))?
            {
                Incoming::Pkcs7Mime {
                    headers,
                    smime_type,
                    body,
                } if !smime_type
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case("signed-data")) =>
                {
                    Ok((headers, body))
                }
                Incoming::Pkcs7Mime { .. } | Incoming::MultipartSigned { .. } => {
                    Err(Failure::Usage(anyhow!(
                        "this message is signed, not encrypted: use smime verify"
                    )))
                }
                Incoming::Other { content_type } => Err(Failure::Usage(anyhow!(
                    "not an S/MIME message (Content-Type: {content_type})"
                ))),
            }
        }
    }
}

fn decrypt_error(e: CmsError) -> Failure {
    match e {
        CmsError::Unwrapper(inner) => match inner.downcast::<AgentError>() {
            Ok(agent) => anyhow::Error::from(*agent)
                .context("the agent could not unwrap the key")
                .into(),
            Err(other) => Failure::Other(anyhow!(other)),
        },
        e @ (CmsError::TagMismatch
        | CmsError::BadPadding
        | CmsError::Truncated(_)
        | CmsError::WrongKey(_)) => Failure::Verify(
            anyhow!(e).context("the message does not decrypt intact; nothing was written"),
        ),
        e @ CmsError::NotForUs(_) => Failure::Usage(anyhow!(e).context(
            "none of the agent's keys can open this message (is the right token inserted?)",
        )),
        e @ (CmsError::NotEnveloped(_)
        | CmsError::Malformed(_)
        | CmsError::UnsupportedAlgorithm(_)) => Failure::Usage(anyhow!(e)),
        CmsError::Io(e) => match mime::stream::body_error(&e) {
            Some(m) => Failure::Usage(anyhow!(m).context("broken S/MIME message")),
            None if e.kind() == std::io::ErrorKind::InvalidData => Failure::Usage(anyhow!(e)),
            None => Failure::Other(anyhow!(e).context("reading or writing")),
        },
        e => Failure::Other(anyhow!(e)),
    }
}

pub(super) fn decrypt(cli: &Cli, a: &DecryptArgs, verify_inner: bool) -> Result<(), Failure> {
    let trust = if verify_inner {
        verify::trust_policy(
            verify::trust_anchors(&a.trust, a.no_chain)?,
            a.no_chain,
            &a.path,
        )?
    } else {
        None
    };
    let mut client = connect(cli)?;
    let keys = key_list(&mut client)?;
    let can_decrypt = KeySummary::can_decrypt;
    let usable: Vec<&KeySummary> = match &a.key {
        Some(sel) => vec![select(&keys, sel, can_decrypt).map_err(|e| Failure::Usage(e.into()))?],
        None => keys.iter().filter(|k| can_decrypt(k)).collect(),
    };
    if usable.is_empty() {
        return Err(Failure::Unavailable(anyhow!(
            "the agent has no key that can decrypt"
        )));
    }
    let certs: Vec<_> = usable
        .iter()
        .filter_map(|k| k.certificate.clone())
        .collect();
    let ids = usable.iter().map(|k| k.info.id.clone()).collect();

    let mut input = BufReader::with_capacity(64 * 1024, open_input(a.input.as_deref())?);
    let kind = mime::sniff(
        input
            .fill_buf()
            .context("reading the input")
            .map_err(Failure::Usage)?,
    );
    let (headers, cms_input) = unwrap_input(kind, input)?;

    // The plaintext is not trustworthy until the whole message has decrypted (GCM tag,
    // CBC padding): it goes to an anonymous temporary file first.
    let mut plain = super::spool()?;
    let unwrapper = RemoteUnwrapper::new(&mut client, ids);
    let info =
        cms::decrypt::decrypt(cms_input, &mut plain, &certs, &unwrapper).map_err(decrypt_error)?;
    plain.rewind().map_err(|e| Failure::Other(e.into()))?;

    let mut out = Output::create(a.output.as_deref())
        .context("creating the output")
        .map_err(Failure::Usage)?;
    let write_err = |e: std::io::Error| Failure::Other(anyhow!(e).context("writing the output"));
    if verify_inner {
        // The outer headers (From: above all) go back on before verifying, so the sender
        // check sees what the reader will see.
        let inner: Box<dyn Read> = if headers.is_empty() {
            Box::new(plain)
        } else {
            Box::new(mime::reattached_reader(&headers, plain).map_err(write_err)?)
        };
        let signed = verify::split_input(inner).map_err(|e| match e {
            Failure::Usage(e) => Failure::Usage(e.context(
                "the decrypted message is not a signed message (use smime decrypt to read it); nothing was written",
            )),
            e => e,
        })?;
        let (verdict, content) = verify::check(signed, None, trust.as_ref(), a.no_chain)?;
        let content = content
            .ok_or_else(|| Failure::Verify(anyhow!("the signed message carries no content")))?;
        verify::write_content(content, &mut out)?;
        out.commit()
            .context("writing the output")
            .map_err(Failure::Other)?;
        eprintln!("{}", verify::describe(&verdict, false));
    } else {
        if headers.is_empty() {
            std::io::copy(&mut plain, &mut out).map_err(write_err)?;
        } else {
            let mut r =
                mime::reattached_reader(&headers, BufReader::with_capacity(64 * 1024, plain))
                    .map_err(write_err)?;
            std::io::copy(&mut r, &mut out).map_err(write_err)?;
        }
        out.commit()
            .context("writing the output")
            .map_err(Failure::Other)?;
    }
    eprintln!(
        "decrypted with {} ({}{})",
        usable.get(info.recipient).map_or("?", |k| k.label.as_str()),
        info.cipher,
        if info.authenticated {
            ", authenticated"
        } else {
            ""
        }
    );
    Ok(())
}
