//! Reading S/MIME messages: multipart/signed and application/pkcs7-mime (also the
//! `x-pkcs7` types OpenSSL's `smime` command writes and `application/octet-stream` named
//! `*.p7m`), input sniffing, and From: addresses.

use mail_parser::{MessageParser, PartType};

use super::codec;
use super::header::{self, Field, MimeType};
use super::{InputKind, MimeError, Parsed};

pub(super) fn parse(input: &[u8]) -> Result<Parsed, MimeError> {
    // An mbox "From " separator line in front of a saved message.
    let input = match input.strip_prefix(b"From ") {
        Some(rest) => rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(&input[..0], |i| &rest[i + 1..]),
        None => input,
    };
    let block = header::split(input);
    let Some(ct) = header::content_type(&block.fields) else {
        // RFC 2045 §5.2: no (or an unparseable) Content-Type means text/plain.
        return Ok(Parsed::Other {
            content_type: "text/plain".to_owned(),
        });
    };
    let headers = header::pairs(&block.fields);
    if is_pkcs7_mime(&ct, &block.fields) {
        // Decoded from the input as it is: a `binary` body must not have its "line ends"
        // rewritten, and base64 does not care.
        let der = decode_der(
            &block.fields,
            &input[block.body_start..],
            "application/pkcs7-mime body",
        )?;
        return Ok(Parsed::Pkcs7Mime {
            headers,
            smime_type: ct.param("smime-type").map(str::to_owned),
            der,
        });
    }
    if ct.is("multipart/signed") {
        return parse_signed(input, &ct, headers);
    }
    Ok(Parsed::Other {
        content_type: ct.essence,
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

fn is_pkcs7_mime(ct: &MimeType, fields: &[Field]) -> bool {
    ct.is("application/pkcs7-mime")
        || ct.is("application/x-pkcs7-mime")
        || ct.is("application/octet-stream")
            && has_name_ending(ct, fields, &[".p7m", ".p7z", ".p7c"])
}

fn is_pkcs7_signature(ct: &MimeType, fields: &[Field]) -> bool {
    ct.is("application/pkcs7-signature")
        || ct.is("application/x-pkcs7-signature")
        || ct.is("application/octet-stream") && has_name_ending(ct, fields, &[".p7s"])
}

fn parse_signed(
    input: &[u8],
    ct: &MimeType,
    headers: Vec<(String, String)>,
) -> Result<Parsed, MimeError> {
    // RFC 1847 requires the protocol parameter; tolerate its absence (the second part's
    // type is checked below) but not a different protocol such as PGP/MIME's.
    if let Some(p) = ct.param("protocol") {
        let p = p.trim().to_ascii_lowercase();
        if p != "application/pkcs7-signature" && p != "application/x-pkcs7-signature" {
            return Err(MimeError::WrongProtocol { protocol: p });
        }
    }
    let Some(boundary) = ct.param("boundary").filter(|b| !b.is_empty()) else {
        return Err(MimeError::MissingBoundary {
            content_type: ct.essence.clone(),
        });
    };
    // The signature covers the canonical (CRLF) form; files and mbox often hold LF.
    let norm = header::normalize_crlf(input);
    // Our own scan first, for precise errors (no delimiter, no close delimiter) that
    // mail-parser, being lenient, does not give.
    let block = header::split(&norm);
    let ours = super::canon::split_multipart(&norm[block.body_start..], boundary, &ct.essence)?;

    let msg = MessageParser::new()
        .with_mime_headers()
        .parse(&norm)
        .ok_or_else(|| MimeError::Broken("no header section".to_owned()))?;
    let Some(PartType::Multipart(ids)) = msg.parts.first().map(|p| &p.body) else {
        return Err(MimeError::Broken(
            "multipart/signed body was not parsed as multipart".to_owned(),
        ));
    };
    let [content_id, sig_id] = ids.as_slice() else {
        return Err(MimeError::MissingSignaturePart { parts: ids.len() });
    };
    if ours.parts.len() != 2 {
        return Err(MimeError::Broken(format!(
            "multipart/signed: {} body parts by its boundary, 2 by mail-parser",
            ours.parts.len()
        )));
    }
    let part_bytes = |id: u32| -> Result<&[u8], MimeError> {
        let p = msg
            .parts
            .get(id as usize)
            .ok_or_else(|| MimeError::Broken(format!("body part {id} missing")))?;
        norm.get(p.offset_header as usize..p.offset_end as usize)
            .ok_or_else(|| MimeError::Broken(format!("body part {id} out of range")))
    };
    // From the part's first header octet to just before the CRLF preceding the delimiter:
    // exactly what was signed (RFC 1847 §2.1, RFC 8551 §3.5.3).
    let signed = part_bytes(*content_id)?.to_vec();

    let sig_raw = part_bytes(*sig_id)?;
    let sig_block = header::split(sig_raw);
    let sig_ct = header::content_type(&sig_block.fields).unwrap_or_else(|| MimeType {
        essence: "text/plain".to_owned(),
        params: Vec::new(),
    });
    if !is_pkcs7_signature(&sig_ct, &sig_block.fields) {
        return Err(MimeError::WrongSignatureType {
            content_type: sig_ct.essence,
        });
    }
    let signature = decode_der(
        &sig_block.fields,
        &sig_raw[sig_block.body_start..],
        "application/pkcs7-signature part",
    )?;
    Ok(Parsed::MultipartSigned {
        headers,
        signed,
        signature,
        micalg: ct.param("micalg").map(|m| m.trim().to_ascii_lowercase()),
    })
}

/// Decodes a DER/BER body by its `Content-Transfer-Encoding`.
fn decode_der(fields: &[Field], body: &[u8], part: &'static str) -> Result<Vec<u8>, MimeError> {
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
