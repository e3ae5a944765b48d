//! Preparing content for signing: splitting off the message headers and putting the inner
//! entity into the canonical, 7-bit-safe form that survives mail transport unchanged
//! (RFC 8551 §3.1, §3.1.1, §3.1.3; RFC 2045 §2.7 for "7bit data").
//!
//! The entity tree is walked by hand rather than rebuilt with mail-builder: every header
//! field, boundary, preamble and epilogue is kept byte for byte (only line ends become CRLF),
//! and just the leaves that would not survive transport are re-encoded, with a new
//! `Content-Transfer-Encoding`. mail-builder would regenerate all of it.

use super::codec;
use super::header::{self, Field, HeaderBlock, MimeType};
use super::{MimeError, Prepared};

/// Deepest entity nesting accepted.
const MAX_DEPTH: usize = 32;

/// Longest line allowed in 7bit/8bit data, without the CRLF (RFC 5322 §2.1.1).
pub(super) const MAX_LINE: usize = 998;

pub(super) fn prepare(input: &[u8]) -> Result<Prepared, MimeError> {
    let block = header::split(input);
    if !header::looks_like_headers(&block, input.len()) {
        return Ok(Prepared {
            outer_headers: Vec::new(),
            inner: synthesize(&[], input),
        });
    }
    let (outer_headers, content) = split_fields(&block);
    let body = &input[block.body_start..];

    let has_type = content.iter().any(|f| f.is("content-type"));
    let cte = header::transfer_encoding(&block.fields);
    let inner = if !has_type && matches!(cte.as_str(), "7bit" | "8bit" | "binary") {
        // A plain RFC 5322 message (or one with, say, only Content-Language): label the
        // body ourselves, keeping the other Content-* fields.
        let kept: Vec<u8> = content
            .iter()
            .filter(|f| !f.is("content-transfer-encoding"))
            .flat_map(|f| field_bytes(input, f))
            .collect();
        synthesize(&kept, body)
    } else {
        let mut raw = Vec::with_capacity(body.len() + 256);
        if !has_type {
            // Content-Transfer-Encoding: quoted-printable/base64 without a type: make the
            // RFC 2045 §5.2 default explicit.
            raw.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii\r\n");
        }
        for f in &content {
            raw.extend(field_bytes(input, f));
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(body);
        canon_entity(&raw, "text/plain", 0)?
    };
    Ok(Prepared {
        outer_headers,
        inner,
    })
}

/// The message header fields that stay outside the signature (all but `Content-*` and
/// `MIME-Version`), and the `Content-*` fields that go inside.
pub(super) fn split_fields(block: &HeaderBlock) -> (Vec<(String, String)>, Vec<&Field>) {
    let outer = block
        .fields
        .iter()
        .filter(|f| !header::is_content_field(&f.name))
        .map(|f| (f.name.clone(), f.value.clone()))
        .collect();
    let content = block
        .fields
        .iter()
        .filter(|f| header::is_content_field(&f.name) && !f.is("mime-version"))
        .collect();
    (outer, content)
}

/// A field's bytes with CRLF line ends, always ending in CRLF.
pub(super) fn field_bytes(input: &[u8], f: &Field) -> Vec<u8> {
    let mut v = header::normalize_crlf(&input[f.raw.clone()]);
    if !v.ends_with(b"\r\n") {
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// An entity for a body without MIME headers: UTF-8 (or ASCII) text becomes `text/plain`
/// in 7bit or quoted-printable; anything else (not UTF-8, or with NUL octets) is taken to
/// be a binary file and becomes `application/octet-stream` in base64, line ends untouched.
fn synthesize(extra_fields: &[u8], body: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(body).is_ok() && !body.contains(&0);
    let mut out = Vec::with_capacity(body.len() * 4 / 3 + 256);
    if text {
        let norm = header::normalize_crlf(body);
        let charset = if body.is_ascii() { "us-ascii" } else { "utf-8" };
        let qp = !is_7bit_clean(&norm) || has_fragile_lines(&norm);
        out.extend_from_slice(
            format!("Content-Type: text/plain; charset={charset}\r\n").as_bytes(),
        );
        out.extend_from_slice(b"Content-Transfer-Encoding: ");
        out.extend_from_slice(if qp {
            b"quoted-printable" as &[u8]
        } else {
            b"7bit"
        });
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(extra_fields);
        out.extend_from_slice(b"\r\n");
        if qp {
            out.extend(codec::qp_encode(&norm));
        } else {
            out.extend(norm);
        }
    } else {
        out.extend_from_slice(b"Content-Type: application/octet-stream\r\n");
        out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
        out.extend_from_slice(extra_fields);
        out.extend_from_slice(b"\r\n");
        out.extend(codec::base64_lines(body));
    }
    out
}

/// "7bit data" (RFC 2045 §2.7): no NUL or 8-bit octets, CR and LF only as CRLF, lines of
/// at most 998 octets.
pub(super) fn is_7bit_clean(data: &[u8]) -> bool {
    let mut line = 0usize;
    for (i, &b) in data.iter().enumerate() {
        match b {
            0 | 128..=255 => return false,
            b'\r' if data.get(i + 1) != Some(&b'\n') => return false,
            b'\n' if i == 0 || data[i - 1] != b'\r' => return false,
            b'\n' => line = 0,
            b'\r' => {}
            _ => {
                line += 1;
                if line > MAX_LINE {
                    return false;
                }
            }
        }
    }
    true
}

/// Text lines that transports are known to alter: trailing whitespace (stripped) and
/// `From ` at the start of a line (mbox `>From `).
fn has_fragile_lines(data: &[u8]) -> bool {
    data.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        matches!(line.last(), Some(b' ' | b'\t')) || line.starts_with(b"From ")
    })
}

/// Canonicalizes one entity (header section + body) recursively.
fn canon_entity(raw: &[u8], default_type: &str, depth: usize) -> Result<Vec<u8>, MimeError> {
    if depth > MAX_DEPTH {
        return Err(MimeError::TooDeep(MAX_DEPTH));
    }
    let block = header::split(raw);
    let ct = header::content_type(&block.fields).unwrap_or_else(|| MimeType {
        essence: default_type.to_owned(),
        params: Vec::new(),
    });
    let cte = header::transfer_encoding(&block.fields);
    let body = &raw[block.body_start..];
    let is_composite_cte = matches!(cte.as_str(), "7bit" | "8bit" | "binary");

    match ct.top() {
        // Signed (or encrypted) content nested inside: its bytes are covered by a signature
        // already, so only the line ends may be put right.
        "multipart" if ct.is("multipart/signed") || ct.is("multipart/encrypted") => {
            Ok(header::normalize_crlf(raw))
        }
        // (A multipart in base64 or quoted-printable is illegal, RFC 2045 §6.4: it falls
        // through to `leaf` and is treated as encoded data.)
        "multipart" if is_composite_cte => {
            let boundary = ct
                .param("boundary")
                .ok_or_else(|| MimeError::MissingBoundary {
                    content_type: ct.essence.clone(),
                })?;
            let child_default = if ct.is("multipart/digest") {
                "message/rfc822"
            } else {
                "text/plain"
            };
            let parts = split_multipart(body, boundary, &ct.essence)?;
            let mut out = Vec::with_capacity(body.len() + 1024);
            if let Some(pre) = parts.preamble {
                out.extend(header::normalize_crlf(pre));
                out.extend_from_slice(b"\r\n");
            }
            for part in parts.parts {
                out.extend_from_slice(b"--");
                out.extend_from_slice(boundary.as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend(canon_entity(part, child_default, depth + 1)?);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"--");
            out.extend_from_slice(boundary.as_bytes());
            out.extend_from_slice(b"--");
            out.extend(header::normalize_crlf(parts.epilogue));
            Ok(composite(raw, &block, &cte, out))
        }
        "message" if is_composite_cte && (ct.is("message/rfc822") || ct.is("message/global")) => {
            let inner = canon_entity(body, "text/plain", depth + 1)?;
            Ok(composite(raw, &block, &cte, inner))
        }
        _ => leaf(raw, &block, &ct, &cte),
    }
}

/// A multipart or message entity with its canonical body; an `8bit`/`binary` label that
/// no longer applies becomes `7bit`.
fn composite(raw: &[u8], block: &HeaderBlock, cte: &str, body: Vec<u8>) -> Vec<u8> {
    if matches!(cte, "8bit" | "binary") && is_7bit_clean(&body) {
        return with_encoding(raw, block, "7bit", &body);
    }
    let mut out = header::normalize_crlf(&raw[..block.body_start]);
    out.extend(body);
    out
}

fn leaf(raw: &[u8], block: &HeaderBlock, ct: &MimeType, cte: &str) -> Result<Vec<u8>, MimeError> {
    let body = &raw[block.body_start..];
    let is_text = ct.top() == "text";
    let unchanged = |norm: Vec<u8>| {
        let mut out = header::normalize_crlf(&raw[..block.body_start]);
        out.extend(norm);
        out
    };
    Ok(match cte {
        "base64" => {
            let norm = header::normalize_crlf(body);
            if is_7bit_clean(&norm) {
                unchanged(norm)
            } else {
                let data = codec::base64_decode(&norm).map_err(|e| MimeError::BadBase64 {
                    part: "base64 body part being signed",
                    detail: e.to_string(),
                })?;
                with_encoding(raw, block, "base64", &codec::base64_lines(&data))
            }
        }
        "quoted-printable" => {
            let norm = header::normalize_crlf(body);
            if is_7bit_clean(&norm) {
                unchanged(norm)
            } else {
                let data = codec::qp_decode(&norm);
                with_encoding(raw, block, "quoted-printable", &codec::qp_encode(&data))
            }
        }
        // Binary data that is not text: line ends are not line ends, so encode it as is.
        "binary" if !is_text => with_encoding(raw, block, "base64", &codec::base64_lines(body)),
        "7bit" | "8bit" | "binary" => {
            let norm = header::normalize_crlf(body);
            let clean = is_7bit_clean(&norm);
            if clean && !(is_text && has_fragile_lines(&norm)) {
                if cte == "7bit" {
                    unchanged(norm)
                } else {
                    with_encoding(raw, block, "7bit", &norm)
                }
            } else if is_text {
                with_encoding(raw, block, "quoted-printable", &codec::qp_encode(&norm))
            } else {
                with_encoding(raw, block, "base64", &codec::base64_lines(&norm))
            }
        }
        // x-uuencode and other private encodings produce 7-bit text by definition.
        _ => unchanged(header::normalize_crlf(body)),
    })
}

/// The entity with its `Content-Transfer-Encoding` replaced (or added) and a new body.
fn with_encoding(raw: &[u8], block: &HeaderBlock, cte: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 512);
    for f in block
        .fields
        .iter()
        .filter(|f| !f.is("content-transfer-encoding"))
    {
        out.extend(field_bytes(raw, f));
    }
    out.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n\r\n").as_bytes());
    out.extend_from_slice(body);
    out
}

/// A multipart body split at its delimiter lines (RFC 2046 §5.1.1).
#[derive(Debug)]
pub(super) struct Multipart<'a> {
    /// Text before the first delimiter, without the line end that belongs to it.
    pub(super) preamble: Option<&'a [u8]>,
    /// Each body part, without the line end before the next delimiter.
    pub(super) parts: Vec<&'a [u8]>,
    /// Everything after `--boundary--`, starting with that line's end.
    pub(super) epilogue: &'a [u8],
}

/// Splits a multipart body; delimiter lines may end in CRLF or LF and carry trailing
/// whitespace (transport padding).
pub(super) fn split_multipart<'a>(
    body: &'a [u8],
    boundary: &str,
    content_type: &str,
) -> Result<Multipart<'a>, MimeError> {
    let dash = [b"--" as &[u8], boundary.as_bytes()].concat();
    // (start of the delimiter line, start of the next line, is the close delimiter)
    let mut delims: Vec<(usize, usize, bool)> = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let (line, next) = match body[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&body[pos..pos + i], pos + i + 1),
            None => (&body[pos..], body.len()),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(dash.as_slice()) {
            let (close, pad) = match rest.strip_prefix(b"--") {
                Some(pad) => (true, pad),
                None => (false, rest),
            };
            if pad.iter().all(|&b| b == b' ' || b == b'\t') {
                delims.push((pos, next, close));
                if close {
                    break;
                }
            }
        }
        pos = next;
    }
    let Some(&(first, _, _)) = delims.first() else {
        return Err(MimeError::BoundaryNotFound {
            content_type: content_type.to_owned(),
            boundary: boundary.to_owned(),
        });
    };
    let Some(&(close_at, _, true)) = delims.last() else {
        return Err(MimeError::Unterminated {
            content_type: content_type.to_owned(),
            boundary: boundary.to_owned(),
        });
    };
    let preamble = (first > 0).then(|| strip_line_end(&body[..first]));
    let parts = delims
        .windows(2)
        .map(|w| {
            let (start, end) = (w[0].1, w[1].0);
            if end <= start {
                &body[start..start]
            } else {
                strip_line_end(&body[start..end])
            }
        })
        .collect();
    let epilogue = &body[close_at + dash.len() + 2..];
    Ok(Multipart {
        preamble,
        parts,
        epilogue,
    })
}

fn strip_line_end(s: &[u8]) -> &[u8] {
    let s = s.strip_suffix(b"\n").unwrap_or(s);
    s.strip_suffix(b"\r").unwrap_or(s)
}
