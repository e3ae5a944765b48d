//! PEM armor and plain base64, tolerant on input (any line width, CRLF, surrounding text),
//! canonical on output (64-column lines, LF), as OpenSSL writes it.

use super::{Error, malformed};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, wrapped at 64 columns, each line ending in `\n`.
pub(crate) fn encode_wrapped(data: &[u8]) -> String {
    let mut flat = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sym = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        flat.push(sym(18));
        flat.push(sym(12));
        flat.push(if chunk.len() > 1 { sym(6) } else { '=' });
        flat.push(if chunk.len() > 2 { sym(0) } else { '=' });
    }
    let mut out = String::with_capacity(flat.len() + flat.len() / 64 + 1);
    let mut rest = flat.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out
}

fn value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Decodes base64, ignoring ASCII whitespace; padding is optional.
pub(crate) fn decode(text: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut padding = 0usize;
    for &c in text {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return Err(malformed("base64: data after padding"));
        }
        let v = value(c)
            .ok_or_else(|| malformed(format!("base64: invalid character {:?}", char::from(c))))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if padding > 2 || bits >= 6 {
        return Err(malformed("base64: bad length"));
    }
    Ok(out)
}

/// Whether `bytes` (trimmed) could be bare base64 text.
pub(crate) fn looks_like_base64(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|c| c.is_ascii_whitespace() || *c == b'=' || value(*c).is_some())
}

/// Finds the first `-----BEGIN <label>-----` block; returns the label and the decoded body.
/// RFC 1421 headers (`Name: value` lines before a blank line) are skipped.
pub(crate) fn decode_armor(bytes: &[u8]) -> Result<(String, Vec<u8>), Error> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    let start = find(bytes, BEGIN).ok_or_else(|| malformed("PEM: no BEGIN line"))?;
    let after_begin = bytes.get(start + BEGIN.len()..).unwrap_or(&[]);
    let label_end =
        find(after_begin, DASHES).ok_or_else(|| malformed("PEM: unterminated BEGIN line"))?;
    let label_bytes = after_begin.get(..label_end).unwrap_or(&[]);
    let label = std::str::from_utf8(label_bytes)
        .map_err(|_| malformed("PEM: label is not UTF-8"))?
        .to_owned();
    let body_and_rest = after_begin.get(label_end + DASHES.len()..).unwrap_or(&[]);
    let end_marker = format!("-----END {label}-----");
    let body_end = find(body_and_rest, end_marker.as_bytes())
        .ok_or_else(|| malformed(format!("PEM: no matching END line for {label:?}")))?;
    let mut body = body_and_rest.get(..body_end).unwrap_or(&[]);
    // Skip encapsulated headers, if any: they contain ':' and end at a blank line.
    if body.contains(&b':')
        && let Some(blank) = find(body, b"\n\n").or_else(|| find(body, b"\r\n\r\n"))
    {
        body = body.get(blank..).unwrap_or(&[]);
    }
    Ok((label, decode(body)?))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Streams `der` out as PEM with the `CMS` label, in constant memory: chunks of a multiple
/// of 48 bytes encode to whole 64-column lines.
pub fn write_pem<R: std::io::Read, W: std::io::Write>(der: &mut R, out: &mut W) -> std::io::Result<()> {
    out.write_all(b"-----BEGIN CMS-----\n")?;
    let mut buf = vec![0u8; 48 * 1024];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match der.read(buf.get_mut(filled..).unwrap_or_default())? {
                0 => break,
                n => filled += n,
            }
        }
        out.write_all(encode_wrapped(buf.get(..filled).unwrap_or_default()).as_bytes())?;
        if filled < buf.len() {
            break;
        }
    }
    out.write_all(b"-----END CMS-----\n")
}

/// The DER inside PEM armor (`CMS`, `PKCS7`, … labels), for CMS given as PEM.
///
/// # Errors
/// When the armor or its base64 is broken.
pub fn decode_pem(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    decode_armor(bytes).map(|(_, der)| der)
}
