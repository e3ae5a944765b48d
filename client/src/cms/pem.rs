//! PEM armor and plain base64, tolerant on input (any line width, CRLF, surrounding text),
//! canonical on output (64-column lines, LF), as OpenSSL writes it.
//!
//! Also the crate's one base64 helper, on top of the `base64` crate: line-wrapped encoding
//! (in memory and streamed) and lenient decoding, used here and by `mime::codec`.

use std::io::{self, Read, Write};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, Engine as _};
use base64::{DecodeError, alphabet};

use super::{Error, malformed};

/// PEM line width, as OpenSSL writes it.
const PEM_COLUMNS: usize = 64;

/// Standard base64 with padding, wrapped at 64 columns, each line ending in `\n`.
pub(crate) fn encode_wrapped(data: &[u8]) -> String {
    encode_lines(data, PEM_COLUMNS, "\n")
}

/// Standard base64 with padding in lines of `columns` characters (a multiple of 4), each
/// ending in `eol`; nothing for empty input. Shared by PEM (64, LF) and MIME (76, CRLF).
pub(crate) fn encode_lines(data: &[u8], columns: usize, eol: &str) -> String {
    let mut out = String::new();
    append_lines(data, columns, eol, &mut out);
    out
}

/// [`encode_lines`], appending to `out`.
fn append_lines(data: &[u8], columns: usize, eol: &str, out: &mut String) {
    let line_octets = columns / 4 * 3;
    out.reserve(data.len().div_ceil(line_octets) * (columns + eol.len()));
    for line in data.chunks(line_octets) {
        STANDARD.encode_string(line, out);
        out.push_str(eol);
    }
}

/// Streams `input` to `out` as [`encode_lines`] would encode it, in bounded memory.
pub(crate) fn copy_encoded_lines<R: Read + ?Sized, W: Write + ?Sized>(
    input: &mut R,
    out: &mut W,
    columns: usize,
    eol: &str,
) -> io::Result<()> {
    // A whole number of lines, so that every full buffer encodes to whole lines.
    let chunk = columns / 4 * 3 * 1024;
    let mut buf = vec![0u8; chunk];
    let mut encoded = String::new();
    loop {
        // Fill the buffer completely unless the input ends: a short read must not produce
        // a short line (or padding) in the middle of the output.
        let mut filled = 0;
        while filled < chunk {
            match input.read(buf.get_mut(filled..).unwrap_or_default()) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        encoded.clear();
        append_lines(
            buf.get(..filled).unwrap_or_default(),
            columns,
            eol,
            &mut encoded,
        );
        out.write_all(encoded.as_bytes())?;
        if filled < chunk {
            return Ok(());
        }
    }
}

/// Why base64 text could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base64Error {
    /// A character outside the alphabet (and not whitespace).
    InvalidChar(u8),
    /// Data after `=` padding.
    DataAfterPadding,
    /// A lone trailing character (6 bits cannot make an octet).
    Truncated,
    /// More `=` than [`Lenience::max_padding`] allows.
    ExcessPadding,
}

impl std::error::Error for Base64Error {}

impl std::fmt::Display for Base64Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidChar(c) if c.is_ascii_graphic() => {
                write!(f, "invalid character {:?}", char::from(*c))
            }
            Self::InvalidChar(c) => write!(f, "invalid octet 0x{c:02x}"),
            Self::DataAfterPadding => f.write_str("data after '=' padding"),
            Self::Truncated => f.write_str("truncated (a lone final character)"),
            Self::ExcessPadding => f.write_str("too much '=' padding"),
        }
    }
}

/// What [`decode_lenient`] accepts beyond the standard alphabet with ASCII whitespace
/// anywhere, padding optional and nonzero trailing bits ignored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lenience {
    /// Also read `-` and `_` (the URL-safe alphabet) as 62 and 63, mixed freely.
    pub(crate) url_safe: bool,
    /// How many `=` may end the text.
    pub(crate) max_padding: usize,
}

/// PEM and bare base64 CMS input: either alphabet, at most `==`.
const PEM_INPUT: Lenience = Lenience {
    url_safe: true,
    max_padding: 2,
};

/// Standard alphabet; padding, if any, is not checked against the length (that is
/// [`decode_lenient`]'s job, which strips it first).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes base64 leniently: ASCII whitespace (line breaks) is ignored and padding is
/// optional, but any other character outside the alphabet is an error rather than
/// skipped, so that damaged input is reported as such instead of as a bogus DER parse
/// failure. Errors are reported in input order, as a scan would find them.
pub(crate) fn decode_lenient(text: &[u8], lenience: Lenience) -> Result<Vec<u8>, Base64Error> {
    let compact: Vec<u8> = text
        .iter()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|&c| match c {
            b'-' if lenience.url_safe => b'+',
            b'_' if lenience.url_safe => b'/',
            c => c,
        })
        .collect();
    // The engine wants padding to match the length; strip it and check it here instead.
    let (symbols, padding) = compact.split_at(
        compact
            .iter()
            .position(|&c| c == b'=')
            .unwrap_or(compact.len()),
    );
    let decoded = LENIENT.decode(symbols);
    if let Err(DecodeError::InvalidByte(_, c)) = decoded {
        // The engine may name a later bad byte (a lone last one first); report the first.
        let valid = alphabet::STANDARD.as_str().as_bytes();
        let first = symbols.iter().find(|b| !valid.contains(b)).copied();
        return Err(Base64Error::InvalidChar(first.unwrap_or(c)));
    }
    if padding.iter().any(|&c| c != b'=') {
        return Err(Base64Error::DataAfterPadding);
    }
    if padding.len() > lenience.max_padding {
        return Err(Base64Error::ExcessPadding);
    }
    decoded.map_err(base64_error)
}

/// The engine's decoding error as ours.
fn base64_error(e: DecodeError) -> Base64Error {
    match e {
        DecodeError::InvalidByte(_, c) | DecodeError::InvalidLastSymbol(_, c) => {
            Base64Error::InvalidChar(c)
        }
        DecodeError::InvalidLength(_) => Base64Error::Truncated,
        DecodeError::InvalidPadding => Base64Error::DataAfterPadding,
    }
}

/// Decodes base64 (either alphabet), ignoring ASCII whitespace; padding is optional.
pub(crate) fn decode(text: &[u8]) -> Result<Vec<u8>, Error> {
    decode_lenient(text, PEM_INPUT).map_err(|e| match e {
        Base64Error::InvalidChar(c) => {
            malformed(format!("base64: invalid character {:?}", char::from(c)))
        }
        Base64Error::DataAfterPadding => malformed("base64: data after padding"),
        Base64Error::Truncated | Base64Error::ExcessPadding => malformed("base64: bad length"),
    })
}

/// Whether `bytes` (trimmed) could be bare base64 text.
pub(crate) fn looks_like_base64(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.iter().all(|c| {
            c.is_ascii_alphanumeric()
                || c.is_ascii_whitespace()
                || matches!(c, b'+' | b'/' | b'-' | b'_' | b'=')
        })
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

/// Streams `der` out as PEM with the `CMS` label, in constant memory.
pub fn write_pem<R: Read, W: Write>(der: &mut R, out: &mut W) -> io::Result<()> {
    out.write_all(b"-----BEGIN CMS-----\n")?;
    copy_encoded_lines(der, out, PEM_COLUMNS, "\n")?;
    out.write_all(b"-----END CMS-----\n")
}

/// The DER inside PEM armor (`CMS`, `PKCS7`, … labels), for CMS given as PEM.
///
/// # Errors
/// When the armor or its base64 is broken.
pub fn decode_pem(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    decode_armor(bytes).map(|(_, der)| der)
}

/// A streaming base64 decoder, the [`decode_lenient`] rules (standard alphabet, ASCII
/// whitespace ignored, padding optional, any other byte an error) in bounded memory.
///
/// For PEM ([`Base64Reader::pem`]), the data ends at the `-----END <label>-----` line,
/// which must be there; anything after it is ignored. Decoding errors come out of `read`
/// as [`io::ErrorKind::InvalidData`] with a [`Base64Error`] inside.
pub(crate) struct Base64Reader<R> {
    inner: R,
    raw: Box<[u8]>,
    /// Symbols not yet decoded (fewer than 4 between fills).
    symbols: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// `=` seen: only more `=` and whitespace may follow.
    padded: bool,
    /// The expected end line after the first `-` (PEM), and what of it has been read.
    end_line: Option<(Vec<u8>, Vec<u8>)>,
    in_end_line: bool,
    done: bool,
}

impl<R: Read> Base64Reader<R> {
    /// Base64 text up to the end of `inner` (a MIME body).
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            raw: vec![0u8; 48 * 1024].into_boxed_slice(),
            symbols: Vec::with_capacity(64 * 1024),
            out: Vec::with_capacity(48 * 1024),
            out_pos: 0,
            padded: false,
            end_line: None,
            in_end_line: false,
            done: false,
        }
    }

    /// PEM: reads the `-----BEGIN <label>-----` line (after optional whitespace) and
    /// returns the label and a reader of the data up to the matching END line.
    pub(crate) fn pem(mut inner: R) -> Result<(String, Self), Error> {
        const BEGIN: &[u8] = b"-----BEGIN ";
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        // Skip leading whitespace, then read the BEGIN line (bounded).
        loop {
            if inner.read(&mut byte)? == 0 {
                return Err(malformed("PEM: no BEGIN line"));
            }
            if !byte[0].is_ascii_whitespace() || !line.is_empty() {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
                if line.len() > 256 {
                    return Err(malformed("PEM: BEGIN line too long"));
                }
            }
        }
        let line = line.trim_ascii_end();
        let label = line
            .strip_prefix(BEGIN)
            .and_then(|l| l.strip_suffix(b"-----"))
            .ok_or_else(|| malformed("PEM: no BEGIN line"))?;
        let label = std::str::from_utf8(label)
            .map_err(|_| malformed("PEM: label is not UTF-8"))?
            .to_owned();
        let mut me = Self::new(inner);
        // The first '-' is consumed as the end of the data.
        me.end_line = Some((format!("----END {label}-----").into_bytes(), Vec::new()));
        Ok((label, me))
    }

    fn bad(e: Base64Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// Reads and decodes the next piece of input into `out`.
    fn fill(&mut self) -> io::Result<()> {
        let n = loop {
            match self.inner.read(&mut self.raw) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let eof = n == 0;
        for &c in self.raw.get(..n).unwrap_or_default() {
            if self.in_end_line {
                if let Some((want, got)) = &mut self.end_line
                    && got.len() < want.len()
                {
                    got.push(c);
                }
                continue;
            }
            match c {
                c if c.is_ascii_whitespace() => {}
                b'=' => self.padded = true,
                b'-' if self.end_line.is_some() => self.in_end_line = true,
                _ if self.padded => return Err(Self::bad(Base64Error::DataAfterPadding)),
                c if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' => self.symbols.push(c),
                c => return Err(Self::bad(Base64Error::InvalidChar(c))),
            }
        }
        if eof
            && let Some((want, got)) = &self.end_line
            && (!self.in_end_line || got != want)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                malformed("PEM: no matching END line"),
            ));
        }
        let whole = if eof || self.in_end_line || self.padded {
            self.symbols.len()
        } else {
            self.symbols.len() / 4 * 4
        };
        if self.symbols.len() % 4 == 1 && whole == self.symbols.len() {
            return Err(Self::bad(Base64Error::Truncated));
        }
        self.out.clear();
        self.out_pos = 0;
        LENIENT
            .decode_vec(self.symbols.get(..whole).unwrap_or_default(), &mut self.out)
            .map_err(|e| Self::bad(base64_error(e)))?;
        self.symbols.drain(..whole);
        self.done = eof;
        Ok(())
    }
}

impl<R: Read> Read for Base64Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos >= self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
        let avail = self.out.get(self.out_pos..).unwrap_or_default();
        let n = avail.len().min(buf.len());
        buf.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(avail.get(..n).unwrap_or_default());
        self.out_pos += n;
        Ok(n)
    }
}
