//! Reading S/MIME messages: multipart/signed and application/pkcs7-mime (also the
//! `x-pkcs7` types OpenSSL's `smime` command writes and `application/octet-stream` named
//! `*.p7m`), input sniffing, and From: addresses.

use std::io::Read as _;

use mail_parser::MessageParser;

use super::codec;
use super::header::{self, Field, MimeType};
use super::stream::{self, Incoming};
use super::{InputKind, MimeError, Parsed};

pub(super) fn parse(input: &[u8]) -> Result<Parsed, MimeError> {
    let mut signed = Vec::new();
    Ok(match stream::open(Box::new(input), &mut signed)? {
        Incoming::Pkcs7Mime {
            headers,
            smime_type,
            mut body,
        } => {
            let mut der = Vec::new();
            body.read_to_end(&mut der).map_err(|e| {
                stream::body_error(&e).unwrap_or_else(|| MimeError::Broken(e.to_string()))
            })?;
            // A binary body may end in a line end the writer added.
            let n = trim_after_der(&der).len();
            der.truncate(n);
            Parsed::Pkcs7Mime {
                headers,
                smime_type,
                der,
            }
        }
        Incoming::MultipartSigned {
            headers,
            signature,
            micalg,
        } => Parsed::MultipartSigned {
            headers,
            signed,
            signature,
            micalg,
        },
        Incoming::Other { content_type } => Parsed::Other { content_type },
    })
}

fn has_name_ending(ct: &MimeType, fields: &[Field], exts: &[&str]) -> bool {
    let disposition = header::content_disposition(fields);
    [
        ct.param("name"),
        disposition.as_ref().and_then(|d| d.param("filename")),
    ]
    .into_iter()
    .flatten()
    .any(|n| {
        let n = n.trim().to_ascii_lowercase();
        exts.iter().any(|e| n.ends_with(e))
    })
}

pub(super) fn is_pkcs7_mime(ct: &MimeType, fields: &[Field]) -> bool {
    ct.is("application/pkcs7-mime")
        || ct.is("application/x-pkcs7-mime")
        || ct.is("application/octet-stream")
            && has_name_ending(ct, fields, &[".p7m", ".p7z", ".p7c"])
}

pub(super) fn is_pkcs7_signature(ct: &MimeType, fields: &[Field]) -> bool {
    ct.is("application/pkcs7-signature")
        || ct.is("application/x-pkcs7-signature")
        || ct.is("application/octet-stream") && has_name_ending(ct, fields, &[".p7s"])
}

/// Decodes a DER/BER body by its `Content-Transfer-Encoding`.
pub(super) fn decode_der(
    fields: &[Field],
    body: &[u8],
    part: &'static str,
) -> Result<Vec<u8>, MimeError> {
    let cte = header::transfer_encoding(fields);
    let der = match cte.as_str() {
        "base64" => codec::base64_decode(body).map_err(|e| MimeError::BadBase64 {
            part,
            detail: e.to_string(),
        })?,
        "quoted-printable" => codec::qp_decode(body),
        "7bit" | "8bit" | "binary" => trim_after_der(body).to_vec(),
        _ => {
            return Err(MimeError::UnsupportedEncoding {
                part,
                encoding: cte,
            });
        }
    };
    if der.is_empty() {
        return Err(MimeError::EmptyBody { part });
    }
    Ok(der)
}

/// The definite length of the outer DER TLV, when it can be read.
fn der_len(der: &[u8]) -> Option<usize> {
    let first = *der.get(1)?;
    match first {
        0..=0x7f => Some(2 + usize::from(first)),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let len = der
                .get(2..2 + n)?
                .iter()
                .fold(0usize, |a, &b| (a << 8) | usize::from(b));
            Some(2 + n + len)
        }
        _ => None,
    }
}

/// A binary body may be followed by a line end the writer added; drop trailing
/// whitespace after a complete definite-length TLV.
fn trim_after_der(body: &[u8]) -> &[u8] {
    match der_len(body) {
        Some(n) if n <= body.len() && body[n..].iter().all(u8::is_ascii_whitespace) => &body[..n],
        _ => body,
    }
}

pub(super) fn sniff(prefix: &[u8]) -> InputKind {
    let p = prefix.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(prefix);
    let start = p
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(p.len());
    if p[start..].starts_with(b"-----BEGIN") {
        return InputKind::Pem;
    }
    // A ContentInfo: SEQUENCE, a length, then the contentType OID (tag 6). Checking past
    // the first octet keeps a text starting with "0" from passing as DER.
    if prefix.first() == Some(&0x30) {
        let oid_at = match prefix.get(1).copied() {
            Some(0..=0x80) => Some(2),
            Some(l @ 0x81..=0x84) => Some(2 + usize::from(l & 0x7f)),
            _ => None,
        };
        if let Some(at) = oid_at {
            match prefix.get(at) {
                Some(0x06) => return InputKind::Der,
                // A prefix too short to tell: take the length octet's word for it.
                None if prefix.get(1).is_some_and(|&l| l >= 0x80) => return InputKind::Der,
                _ => {}
            }
        }
    }
    InputKind::Mime
}

pub(super) fn from_addresses(headers: &[(String, String)]) -> Vec<String> {
    let parser = MessageParser::new().with_address_headers();
    let mut out = Vec::new();
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("from"))
    {
        let raw = format!("From: {value}\r\n\r\n");
        let Some(msg) = parser.parse_headers(raw.as_bytes()) else {
            continue;
        };
        if let Some(from) = msg.from() {
            out.extend(
                from.iter()
                    .filter_map(|a| a.address())
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty()),
            );
        }
    }
    out
}
