//! Transfer encodings (RFC 2045 §6.7, §6.8): base64 with 76-column CRLF lines, a streaming
//! base64 writer, and quoted-printable for canonical (CRLF) text.
//!
//! Hand-written rather than taken from a crate: the workspace has no `base64` dependency,
//! and the rules that matter here are MIME-specific anyway (line width, CRLF, which octets
//! a mail transport may damage).

use std::io::{self, Read, Write};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Input octets per 76-character base64 line.
const LINE_OCTETS: usize = 57;

fn encode_chunk(chunk: &[u8], out: &mut Vec<u8>) {
    let b0 = chunk.first().copied().unwrap_or(0);
    let b1 = chunk.get(1).copied().unwrap_or(0);
    let b2 = chunk.get(2).copied().unwrap_or(0);
    let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
    let sym = |shift: u32| ALPHABET[((n >> shift) & 0x3f) as usize];
    out.push(sym(18));
    out.push(sym(12));
    out.push(if chunk.len() > 1 { sym(6) } else { b'=' });
    out.push(if chunk.len() > 2 { sym(0) } else { b'=' });
}

/// Base64 in lines of at most 76 characters, each ending in CRLF (nothing for empty input).
pub(super) fn base64_lines(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().div_ceil(LINE_OCTETS) * 78);
    for line in data.chunks(LINE_OCTETS) {
        for chunk in line.chunks(3) {
            encode_chunk(chunk, &mut out);
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Streams `input` to `out` as [`base64_lines`] would encode it, in bounded memory.
pub(super) fn copy_base64_lines(mut input: impl Read, out: &mut impl Write) -> io::Result<()> {
    // A multiple of 57 so that every full buffer encodes to whole lines.
    const BUF: usize = LINE_OCTETS * 1024;
    let mut buf = vec![0u8; BUF];
    let mut encoded = Vec::with_capacity(BUF / LINE_OCTETS * 78);
    loop {
        // Fill the buffer completely unless the input ends: a short read must not produce
        // a short line (or padding) in the middle of the output.
        let mut filled = 0;
        while filled < BUF {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        encoded.clear();
        for line in buf[..filled].chunks(LINE_OCTETS) {
            for chunk in line.chunks(3) {
                encode_chunk(chunk, &mut encoded);
            }
            encoded.extend_from_slice(b"\r\n");
        }
        out.write_all(&encoded)?;
        if filled < BUF {
            return Ok(());
        }
    }
}

/// Why base64 text could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Base64Error {
    /// A character outside the alphabet (and not whitespace).
    InvalidChar(u8),
    /// Data after `=` padding.
    DataAfterPadding,
    /// A lone trailing character (6 bits cannot make an octet).
    Truncated,
}

impl std::fmt::Display for Base64Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidChar(c) if c.is_ascii_graphic() => {
                write!(f, "invalid character {:?}", char::from(*c))
            }
            Self::InvalidChar(c) => write!(f, "invalid octet 0x{c:02x}"),
            Self::DataAfterPadding => f.write_str("data after '=' padding"),
            Self::Truncated => f.write_str("truncated (a lone final character)"),
        }
    }
}

fn value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes base64 body text: whitespace (line breaks) is ignored and padding is optional,
/// but any other character outside the alphabet is an error rather than skipped, so that
/// a damaged signature is reported as such instead of as a bogus DER parse failure.
pub(super) fn base64_decode(text: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut symbols = 0usize;
    let mut padding = false;
    for &c in text {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding = true;
            continue;
        }
        if padding {
            return Err(Base64Error::DataAfterPadding);
        }
        let v = value(c).ok_or(Base64Error::InvalidChar(c))?;
        symbols += 1;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if symbols % 4 == 1 {
        return Err(Base64Error::Truncated);
    }
    Ok(out)
}

/// Quoted-printable for text already in canonical form (lines end in CRLF). CRLF stays a
/// hard line break; every other control octet, 8-bit octet and `=` is escaped, as is
/// whitespace at the end of a line (transports strip it) and the `F` of a line starting
/// with `From ` (mbox quoting would turn it into `>From `). Lines are at most 76 characters.
pub(super) fn qp_encode(text: &[u8]) -> Vec<u8> {
    const MAX: usize = 76;
    let mut out = Vec::with_capacity(text.len() + text.len() / 8);
    let mut rest = text;
    while !rest.is_empty() {
        let (line, has_crlf) = match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => (&rest[..i], true),
            None => (rest, false),
        };
        rest = &rest[line.len() + if has_crlf { 2 } else { 0 }..];

        let mut col = 0usize;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let literal = match b {
                b' ' | b'\t' => !last,
                b'F' => !(i == 0 && line.starts_with(b"From ")),
                b'=' => false,
                33..=126 => true,
                _ => false,
            };
            let width = if literal { 1 } else { 3 };
            // Leave room for the soft break `=` unless this is the line's last token.
            let limit = if last { MAX } else { MAX - 1 };
            if col + width > limit {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            }
            col += width;
        }
        if has_crlf {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Decodes quoted-printable leniently (RFC 2045 §6.7 note 4): soft breaks after `=`
/// (CRLF or LF), `=XX` in either case; a malformed `=` is kept literally and whitespace at
/// the end of an encoded line is dropped.
pub(super) fn qp_decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let pieces: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let last_piece = pieces.len() - 1;
    for (n, raw_line) in pieces.into_iter().enumerate() {
        let line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        let line = trim_end_wsp(line);
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            if b == b'=' {
                let hex = line
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|s| u8::from_str_radix(s, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b);
            i += 1;
        }
        // Every piece but the last was ended by a line break in the input.
        if !soft && n < last_piece {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

fn trim_end_wsp(mut line: &[u8]) -> &[u8] {
    while let Some((&last, head)) = line.split_last() {
        if last == b' ' || last == b'\t' {
            line = head;
        } else {
            break;
        }
    }
    line
}
