//! `smime decrypt` and `smime open`.

use std::io::{BufRead, BufReader, Read, Seek, Write};

use anyhow::{Context, anyhow};

use super::{Failure, connect, key_list, open_input, verify};
use crate::agent::AgentError;
use crate::cli::{Cli, DecryptArgs};
use crate::cms::{self, Error as CmsError};
use crate::keys::{KeySummary, select};
use crate::mime::{self, InputKind, Parsed};
use crate::output::Output;
use crate::signer::RemoteUnwrapper;

/// Mail header fields, in order.
type Headers = Vec<(String, String)>;

/// What the input holds: the CMS to decrypt and the mail headers around it.
fn unwrap_input(
    kind: InputKind,
    mut input: BufReader<Box<dyn Read>>,
) -> Result<(Headers, Box<dyn Read>), Failure> {
    let read_all = |input: &mut BufReader<Box<dyn Read>>| {
        let mut raw = Vec::new();
        input
            .read_to_end(&mut raw)
            .context("reading the message")
            .map_err(Failure::Usage)?;
        Ok::<_, Failure>(raw)
    };
    match kind {
        // BER/DER streams straight through: constant memory for any size.
        InputKind::Der => Ok((vec![], Box::new(input))),
        InputKind::Pem => {
            let der =
                cms::decode_pem(&read_all(&mut input)?).map_err(|e| Failure::Usage(anyhow!(e)))?;
            Ok((vec![], Box::new(std::io::Cursor::new(der))))
        }
        InputKind::Mime => match mime::parse(&read_all(&mut input)?)
            .map_err(|e| Failure::Usage(anyhow!(e).context("broken S/MIME message")))?
        {
            Parsed::Pkcs7Mime {
                headers,
                smime_type,
                der,
            } if !smime_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("signed-data")) =>
            {
                Ok((headers, Box::new(std::io::Cursor::new(der))))
            }
            Parsed::Pkcs7Mime { .. } | Parsed::MultipartSigned { .. } => Err(Failure::Usage(
                anyhow!("this message is signed, not encrypted: use smime verify"),
            )),
            Parsed::Other { content_type } => Err(Failure::Usage(anyhow!(
                "not an S/MIME message (Content-Type: {content_type})"
            ))),
        },
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
        e @ (CmsError::NotEnveloped(_)
        | CmsError::Malformed(_)
        | CmsError::UnsupportedAlgorithm(_)) => Failure::Usage(anyhow!(e)),
        CmsError::Io(e) => Failure::Other(anyhow!(e).context("reading or writing")),
        e => Failure::Other(anyhow!(e)),
    }
}

pub(super) fn decrypt(cli: &Cli, a: &DecryptArgs, verify_inner: bool) -> Result<(), Failure> {
    let trust = if verify_inner {
        verify::trust_policy(
            verify::trust_anchors(&a.trust, a.no_chain)?,
            a.no_chain,
            &crate::cli::PathArgs::default(),
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
    let mut plain = tempfile::tempfile().map_err(|e| Failure::Other(e.into()))?;
    let unwrapper = RemoteUnwrapper::new(&mut client, ids);
    let info =
        cms::decrypt::decrypt(cms_input, &mut plain, &certs, &unwrapper).map_err(decrypt_error)?;
    plain.rewind().map_err(|e| Failure::Other(e.into()))?;

    let mut out = Output::create(a.output.as_deref())
        .context("creating the output")
        .map_err(Failure::Usage)?;
    let write_err = |e: std::io::Error| Failure::Other(anyhow!(e).context("writing the output"));
    if verify_inner {
        let mut inner = Vec::new();
        plain
            .read_to_end(&mut inner)
            .map_err(|e| Failure::Other(e.into()))?;
        // The outer headers (From: above all) go back on before verifying, so the sender
        // check sees what the reader will see.
        let inner = if headers.is_empty() {
            inner
        } else {
            mime::reattach_headers(&headers, &inner)
        };
        let (verdict, content) = verify::check(inner, None, trust.as_ref(), a.no_chain)?;
        let content = content
            .ok_or_else(|| Failure::Verify(anyhow!("the signed message carries no content")))?;
        out.write_all(&content).map_err(write_err)?;
        out.commit()
            .context("writing the output")
            .map_err(Failure::Other)?;
        eprintln!("{}", verify::describe(&verdict, false));
    } else {
        if headers.is_empty() {
            std::io::copy(&mut plain, &mut out).map_err(write_err)?;
        } else {
            let mut inner = Vec::new();
            plain
                .read_to_end(&mut inner)
                .map_err(|e| Failure::Other(e.into()))?;
            out.write_all(&mime::reattach_headers(&headers, &inner))
                .map_err(write_err)?;
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
