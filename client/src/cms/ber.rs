//! A minimal BER/DER TLV walker that keeps the original bytes.
//!
//! The typed `der` decoders re-sort `SET OF` on decode and reject indefinite lengths in DER
//! mode. Verification needs the signed attributes exactly as they were sent, and
//! `openssl cms -stream` writes indefinite lengths and chunked (constructed) OCTET STRINGs,
//! so the outer structure is walked here and only self-contained pieces (certificates,
//! algorithm identifiers, one SignerInfo) go to the typed decoders, after
//! [`Tlv::to_der`] has turned their lengths definite.

use super::{Error, malformed};

/// Nesting limit; CMS needs far less.
const MAX_DEPTH: u32 = 48;

/// Universal tag numbers this module cares about, with the constructed bit where relevant.
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OCTET_STRING_CONSTRUCTED: u8 = 0x24;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;
/// `[0]` constructed (EXPLICIT or IMPLICIT constructed).
pub(crate) const TAG_CTX0: u8 = 0xA0;
/// `[1]` constructed.
pub(crate) const TAG_CTX1: u8 = 0xA1;

/// One element: identifier octet, contents and the whole encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    /// Identifier octet (only the low-tag-number form is supported; CMS needs no other).
    pub(crate) tag: u8,
    /// Contents octets; for an indefinite length, everything before the end-of-contents.
    pub(crate) value: &'a [u8],
    /// The whole element as it was encoded (header, contents, end-of-contents).
    pub(crate) raw: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// Parses exactly one element filling `input` (trailing bytes are an error).
    pub(crate) fn parse_exact(input: &'a [u8]) -> Result<Self, Error> {
        let (tlv, used) = parse(input, 0)?;
        if used != input.len() {
            return Err(malformed(format!(
                "{} trailing bytes after the encoding",
                input.len() - used
            )));
        }
        Ok(tlv)
    }

    /// Parses the first element of `input`, returning it and the number of bytes used.
    pub(crate) fn parse_prefix(input: &'a [u8]) -> Result<(Self, usize), Error> {
        parse(input, 0)
    }

    /// Whether the constructed bit is set.
    pub(crate) fn constructed(&self) -> bool {
        self.tag & 0x20 != 0
    }

    /// The elements inside a constructed element.
    pub(crate) fn children(&self) -> Result<Vec<Tlv<'a>>, Error> {
        if !self.constructed() {
            return Err(malformed(format!(
                "expected a constructed element, found tag {:#04x}",
                self.tag
            )));
        }
        let mut out = Vec::new();
        let mut rest = self.value;
        while !rest.is_empty() {
            let (t, used) = parse(rest, 1)?;
            out.push(t);
            rest = rest.get(used..).unwrap_or(&[]);
        }
        Ok(out)
    }

    /// Checks the tag, naming `what` in the error.
    pub(crate) fn expect(self, tag: u8, what: &str) -> Result<Self, Error> {
        if self.tag == tag {
            Ok(self)
        } else {
            Err(malformed(format!(
                "{what}: expected tag {tag:#04x}, found {:#04x}",
                self.tag
            )))
        }
    }

    /// The pieces of an OCTET STRING, primitive or constructed (BER chunks), in order.
    pub(crate) fn octet_string_chunks(&self) -> Result<Vec<&'a [u8]>, Error> {
        let mut out = Vec::new();
        self.collect_chunks(&mut out, 0)?;
        Ok(out)
    }

    fn collect_chunks(&self, out: &mut Vec<&'a [u8]>, depth: u32) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(malformed("OCTET STRING nested too deeply"));
        }
        match self.tag {
            TAG_OCTET_STRING => {
                out.push(self.value);
                Ok(())
            }
            TAG_OCTET_STRING_CONSTRUCTED => {
                for c in self.children()? {
                    c.collect_chunks(out, depth + 1)?;
                }
                Ok(())
            }
            t => Err(malformed(format!(
                "expected OCTET STRING, found tag {t:#04x}"
            ))),
        }
    }

    /// Re-encodes with definite, minimal lengths and joins chunked OCTET STRINGs, so the
    /// typed DER decoders accept it. Element order is kept, so DER input comes back
    /// byte-for-byte unchanged.
    pub(crate) fn to_der(self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(self.raw.len());
        self.write_der(&mut out, 0)?;
        Ok(out)
    }

    fn write_der(&self, out: &mut Vec<u8>, depth: u32) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(malformed("nested too deeply"));
        }
        if self.tag == TAG_OCTET_STRING_CONSTRUCTED {
            let joined: Vec<u8> = self.octet_string_chunks()?.concat();
            write_header(out, TAG_OCTET_STRING, joined.len());
            out.extend_from_slice(&joined);
        } else if self.constructed() {
            let mut inner = Vec::with_capacity(self.value.len());
            for c in self.children()? {
                c.write_der(&mut inner, depth + 1)?;
            }
            write_header(out, self.tag, inner.len());
            out.extend_from_slice(&inner);
        } else {
            write_header(out, self.tag, self.value.len());
            out.extend_from_slice(self.value);
        }
        Ok(())
    }
}

/// Writes a DER identifier + definite length.
pub(crate) fn write_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or(&[]);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

fn parse(input: &[u8], depth: u32) -> Result<(Tlv<'_>, usize), Error> {
    if depth > MAX_DEPTH {
        return Err(malformed("nested too deeply"));
    }
    let truncated = || malformed("truncated encoding");
    let tag = *input.first().ok_or_else(truncated)?;
    if tag & 0x1f == 0x1f {
        return Err(malformed("high tag numbers are not supported"));
    }
    let first_len = *input.get(1).ok_or_else(truncated)?;
    let mut pos = 2usize;
    if first_len == 0x80 {
        // Indefinite length: contents run until the matching end-of-contents (00 00).
        if tag & 0x20 == 0 {
            return Err(malformed("indefinite length on a primitive element"));
        }
        let start = pos;
        loop {
            let rest = input.get(pos..).ok_or_else(truncated)?;
            if rest.len() >= 2 && rest.first() == Some(&0) && rest.get(1) == Some(&0) {
                let value = input.get(start..pos).ok_or_else(truncated)?;
                let end = pos + 2;
                let raw = input.get(..end).ok_or_else(truncated)?;
                return Ok((Tlv { tag, value, raw }, end));
            }
            let (_, used) = parse(rest, depth + 1)?;
            pos += used;
        }
    }
    let len = if first_len & 0x80 == 0 {
        usize::from(first_len)
    } else {
        let n = usize::from(first_len & 0x7f);
        if n == 0 || n > 4 {
            return Err(malformed("unsupported length encoding"));
        }
        let bytes = input.get(pos..pos + n).ok_or_else(truncated)?;
        pos += n;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let end = pos.checked_add(len).ok_or_else(truncated)?;
    let value = input.get(pos..end).ok_or_else(truncated)?;
    let raw = input.get(..end).ok_or_else(truncated)?;
    Ok((Tlv { tag, value, raw }, end))
}
