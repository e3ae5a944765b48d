//! Transfer encodings (RFC 2045 §6.7, §6.8): base64 with 76-column CRLF lines, a streaming
//! base64 writer, and quoted-printable for canonical (CRLF) text.
//!
//! Base64 is the `base64` crate, through the helpers in `cms::pem` shared with PEM.
//!
//! Quoted-printable stays hand-written: the `quoted_printable` crate (0.5) does not fit.
//! Its encoder leaves the `F` of a line starting with `From ` literal (mbox quoting turns
//! it into `>From `, which breaks a signature), and its decoder silently drops 8-bit and
//! control octets instead of keeping them, where RFC 2045 §6.7 note 4 asks for leniency.

use std::io::{self, Read, Write};

use crate::cms::pem::{self, Lenience};

pub(super) use crate::cms::pem::Base64Error;

/// Characters per base64 line (RFC 2045 §6.8).
const COLUMNS: usize = 76;

/// Body text: standard alphabet only, any number of `=` at the end.
const BODY: Lenience = Lenience {
    url_safe: false,
    max_padding: usize::MAX,
};

/// Base64 in lines of at most 76 characters, each ending in CRLF (nothing for empty input).
pub(super) fn base64_lines(data: &[u8]) -> Vec<u8> {
    pem::encode_lines(data, COLUMNS, "\r\n").into_bytes()
}

/// Streams `input` to `out` as [`base64_lines`] would encode it, in bounded memory.
pub(super) fn copy_base64_lines(mut input: impl Read, out: &mut impl Write) -> io::Result<()> {
    pem::copy_encoded_lines(&mut input, out, COLUMNS, "\r\n")
}

/// Decodes base64 body text: whitespace (line breaks) is ignored and padding is optional,
/// but any other character outside the alphabet is an error rather than skipped, so that
/// a damaged signature is reported as such instead of as a bogus DER parse failure.
pub(super) fn base64_decode(text: &[u8]) -> Result<Vec<u8>, Base64Error> {
    pem::decode_lenient(text, BODY)
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
