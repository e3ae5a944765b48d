//! `smime certs`: the certificates of a signed message, for mail clients that ask
//! `openssl smime -pk7out`, `openssl pkcs7 -print_certs`, `openssl smime -verify -noverify
//! -signer` and `openssl x509 -email` (neomutt's smime_*_command settings).

use std::io::{Read, Write};
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use der::{Decode, EncodePem, pem::LineEnding};
use x509_cert::Certificate;

use super::{Failure, open_input};
use crate::cli::CertsArgs;
use crate::cms;
use crate::keys::certificate_emails;
use crate::mime::{self, InputKind, Parsed};
use crate::output::Output;

/// What the input turned out to be.
enum Input {
    /// A CMS SignedData (binary), with the signed content of a multipart/signed message.
    Signed {
        cms: Vec<u8>,
        content: Option<Vec<u8>>,
    },
    /// Bare certificates.
    Certs(Vec<Certificate>),
}

fn read_input(raw: Vec<u8>) -> Result<Input, Failure> {
    let usage = |e: anyhow::Error| Failure::Usage(e);
    match mime::sniff(&raw) {
        InputKind::Mime => match mime::parse(&raw)
            .map_err(|e| usage(anyhow!(e).context("broken S/MIME message")))?
        {
            Parsed::MultipartSigned {
                signed, signature, ..
            } => Ok(Input::Signed {
                cms: signature,
                content: Some(signed),
            }),
            Parsed::Pkcs7Mime { der, .. } => Ok(Input::Signed {
                cms: der,
                content: None,
            }),
            Parsed::Other { content_type } => Err(usage(anyhow!(
                "not a signed S/MIME message (Content-Type: {content_type})"
            ))),
        },
        InputKind::Pem if raw.windows(17).any(|w| w == b"BEGIN CERTIFICATE") => {
            Certificate::load_pem_chain(&raw)
                .map(Input::Certs)
                .map_err(|e| usage(anyhow!(e).context("reading the certificates")))
        }
        InputKind::Der if Certificate::from_der(&raw).is_ok() => Ok(Input::Certs(vec![
            Certificate::from_der(&raw).map_err(|e| usage(anyhow!(e)))?,
        ])),
        _ => Ok(Input::Signed {
            cms: raw,
            content: None,
        }),
    }
}

pub(super) fn certs(a: &CertsArgs) -> Result<(), Failure> {
    let mut raw = Vec::new();
    open_input(a.input.as_deref())?
        .read_to_end(&mut raw)
        .context("reading the input")
        .map_err(Failure::Usage)?;
    let input = read_input(raw)?;
    let mut text = String::new();
    if a.pkcs7 {
        let Input::Signed { cms, .. } = input else {
            return Err(Failure::Usage(anyhow!(
                "--pkcs7 needs a signed message or CMS, not certificates"
            )));
        };
        let bin = cms::verify::parse_cms_input(&cms).map_err(|e| Failure::Usage(anyhow!(e)))?;
        // Check that it is a SignedData before calling it PKCS7.
        cms::verify::message_certificates(&bin).map_err(|e| Failure::Usage(anyhow!(e)))?;
        text = pem("PKCS7", &bin);
    } else {
        let certs = match input {
            Input::Certs(c) => {
                if a.signer {
                    return Err(Failure::Usage(anyhow!(
                        "--signer needs a signed message or CMS, not certificates"
                    )));
                }
                c
            }
            Input::Signed { cms, content } if a.signer => {
                let v =
                    cms::verify::verify_detached(&cms, content.as_deref(), None, SystemTime::now())
                        .map_err(|e| match e {
                            cms::Error::MissingContent => Failure::Usage(anyhow!(
                                "a detached signature without its content: give the whole message"
                            )),
                            cms::Error::Malformed(_) | cms::Error::UnsupportedAlgorithm(_) => {
                                Failure::Usage(anyhow!(e))
                            }
                            e => {
                                Failure::Verify(anyhow!(e).context("the signature does not verify"))
                            }
                        })?;
                vec![v.signer]
            }
            Input::Signed { cms, .. } => {
                cms::verify::message_certificates(&cms).map_err(|e| Failure::Usage(anyhow!(e)))?
            }
        };
        if certs.is_empty() {
            return Err(Failure::Usage(anyhow!("the input carries no certificates")));
        }
        for c in &certs {
            if a.emails {
                for e in certificate_emails(c) {
                    text.push_str(&e);
                    text.push('\n');
                }
            } else {
                text.push_str(
                    &c.to_pem(LineEnding::LF)
                        .map_err(|e| Failure::Other(anyhow!(e)))?,
                );
            }
        }
    }
    let mut out = Output::create(a.output.as_deref())
        .context("creating the output")
        .map_err(Failure::Usage)?;
    out.write_all(text.as_bytes())
        .map_err(|e| Failure::Other(e.into()))?;
    out.commit()
        .context("writing the output")
        .map_err(Failure::Other)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}
