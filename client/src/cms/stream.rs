//! An incremental BER reader over an [`io::Read`]: headers one at a time, small elements
//! copied whole into memory (with a size limit), large contents streamed in slices of
//! an internal buffer. Nothing here holds more than [`BUF_LEN`] bytes plus the elements
//! the caller asks for explicitly.

use std::io::{self, Read};

use super::ber::{TAG_OCTET_STRING, TAG_OCTET_STRING_CONSTRUCTED};
use super::{Error, malformed};

/// Size of the read buffer.
pub(super) const BUF_LEN: usize = 64 * 1024;

/// Nesting limit for elements copied into memory and for chunked OCTET STRINGs.
pub(super) const MAX_DEPTH: u32 = 32;

/// One element header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    /// Identifier octet (low tag numbers only).
    pub(super) tag: u8,
    /// Contents length; `None` for the indefinite form.
    pub(super) len: Option<u64>,
}

impl Header {
    pub(super) fn constructed(&self) -> bool {
        self.tag & 0x20 != 0
    }
}

/// The extent of a constructed element being read: where its contents end (absolute
/// input offset), or `None` for an indefinite length (ends at `00 00`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Frame {
    end: Option<u64>,
}

impl Frame {
    /// The top level: no enclosing length.
    pub(super) const TOP: Frame = Frame { end: None };
}

/// Buffered BER reader that tracks its absolute input position.
pub(super) struct Reader<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Absolute input offset of `buf[start]`.
    pos: u64,
    eof: bool,
}

impl<R: Read> Reader<R> {
    pub(super) fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            pos: 0,
            eof: false,
        }
    }

    /// Current absolute input offset.
    #[cfg(test)]
    pub(super) fn pos(&self) -> u64 {
        self.pos
    }

    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Makes at least `n` (≤ [`BUF_LEN`]) bytes available unless the input ends first;
    /// returns whether it did.
    fn ensure(&mut self, n: usize) -> Result<bool, Error> {
        while self.available() < n {
            if self.eof {
                return Ok(false);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let Some(space) = self.buf.get_mut(self.end..) else {
                return Ok(false);
            };
            if space.is_empty() {
                return Ok(false);
            }
            match self.inner.read(space) {
                Ok(0) => self.eof = true,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        Ok(true)
    }

    fn truncated(&self, what: &str) -> Error {
        if self.pos == 0 {
            Error::Truncated("the input is empty".into())
        } else {
            Error::Truncated(format!("the input ends at byte {} inside {what}", self.pos))
        }
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.pos += n as u64;
    }

    fn byte(&mut self, what: &str) -> Result<u8, Error> {
        if !self.ensure(1)? {
            return Err(self.truncated(what));
        }
        let b = self.buf.get(self.start).copied().unwrap_or(0);
        self.consume(1);
        Ok(b)
    }

    /// The next identifier octet, without consuming it.
    pub(super) fn peek_tag(&mut self, what: &str) -> Result<u8, Error> {
        if !self.ensure(1)? {
            return Err(self.truncated(what));
        }
        Ok(self.buf.get(self.start).copied().unwrap_or(0))
    }

    /// Reads an element header inside `parent`, naming `what` in errors.
    pub(super) fn header(&mut self, parent: Frame, what: &str) -> Result<Header, Error> {
        let (h, _) = self.header_raw(parent, what)?;
        Ok(h)
    }

    /// Like [`Reader::header`], also returning the header's own encoding.
    fn header_raw(&mut self, parent: Frame, what: &str) -> Result<(Header, Vec<u8>), Error> {
        let mut raw = Vec::with_capacity(6);
        let tag = self.byte(what)?;
        raw.push(tag);
        if tag & 0x1f == 0x1f {
            return Err(malformed(format!(
                "{what}: high tag numbers are not supported (tag {tag:#04x})"
            )));
        }
        let first = self.byte(what)?;
        raw.push(first);
        let len = if first == 0x80 {
            if tag & 0x20 == 0 {
                return Err(malformed(format!(
                    "{what}: indefinite length on a primitive element"
                )));
            }
            None
        } else if first & 0x80 == 0 {
            Some(u64::from(first))
        } else {
            let n = first & 0x7f;
            if n > 8 {
                return Err(malformed(format!("{what}: length of {n} octets")));
            }
            let mut len = 0u64;
            for _ in 0..n {
                let b = self.byte(what)?;
                raw.push(b);
                len = (len << 8) | u64::from(b);
            }
            Some(len)
        };
        if tag == 0 {
            return Err(malformed(format!(
                "{what}: unexpected end-of-contents at byte {}",
                self.pos.saturating_sub(raw.len() as u64)
            )));
        }
        if let (Some(len), Some(parent_end)) = (len, parent.end) {
            let end = self.pos.checked_add(len);
            if end.is_none_or(|e| e > parent_end) {
                return Err(malformed(format!(
                    "{what}: length {len} runs past the end of the enclosing element"
                )));
            }
        }
        Ok((Header { tag, len }, raw))
    }

    /// Reads a header and checks its identifier octet.
    pub(super) fn expect(&mut self, parent: Frame, tag: u8, what: &str) -> Result<Header, Error> {
        let h = self.header(parent, what)?;
        if h.tag != tag {
            return Err(malformed(format!(
                "{what}: expected tag {tag:#04x}, found {:#04x}",
                h.tag
            )));
        }
        Ok(h)
    }

    /// The frame of a constructed element whose header was just read.
    pub(super) fn frame(&self, h: &Header) -> Frame {
        Frame {
            end: h.len.map(|l| self.pos.saturating_add(l)),
        }
    }

    /// Whether `f` has no more elements (does not consume the end-of-contents).
    pub(super) fn at_end(&mut self, f: Frame, what: &str) -> Result<bool, Error> {
        match f.end {
            Some(end) => {
                if self.pos > end {
                    return Err(malformed(format!("{what}: contents overrun the length")));
                }
                Ok(self.pos == end)
            }
            None => {
                if !self.ensure(2)? {
                    return Err(self.truncated(what));
                }
                let rest = self.buf.get(self.start..self.start + 2).unwrap_or(&[]);
                Ok(rest == [0, 0])
            }
        }
    }

    /// Finishes `f`: checks that its contents are used up (definite) or reads its
    /// end-of-contents (indefinite).
    pub(super) fn close(&mut self, f: Frame, what: &str) -> Result<(), Error> {
        if !self.at_end(f, what)? {
            return Err(malformed(format!("{what}: unexpected extra element")));
        }
        if f.end.is_none() {
            self.consume(2);
        }
        Ok(())
    }

    /// Up to `max` (> 0) bytes of contents, straight from the buffer.
    pub(super) fn chunk(&mut self, max: u64, what: &str) -> Result<&[u8], Error> {
        if !self.ensure(1)? {
            return Err(self.truncated(what));
        }
        let n = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(self.available());
        let s = self.start;
        self.consume(n);
        Ok(self.buf.get(s..s + n).unwrap_or(&[]))
    }

    /// Skips the contents of the element whose header `h` was just read (streaming, no
    /// memory use).
    pub(super) fn skip(&mut self, h: Header, what: &str) -> Result<(), Error> {
        self.skip_depth(h, what, 0)
    }

    fn skip_depth(&mut self, h: Header, what: &str, depth: u32) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!("{what}: nested too deeply")));
        }
        match h.len {
            Some(mut left) => {
                while left > 0 {
                    let n = self.chunk(left, what)?.len() as u64;
                    left -= n;
                }
                Ok(())
            }
            None => {
                let f = self.frame(&h);
                while !self.at_end(f, what)? {
                    let c = self.header(f, what)?;
                    self.skip_depth(c, what, depth + 1)?;
                }
                self.close(f, what)
            }
        }
    }

    /// Whether all that is left of the input is padding (ASCII whitespace or NULs), read
    /// up to the first other byte.
    pub(super) fn only_padding_left(&mut self) -> Result<bool, Error> {
        while self.ensure(1)? {
            let avail = self.buf.get(self.start..self.end).unwrap_or_default();
            if avail.iter().any(|&b| b != 0 && !b.is_ascii_whitespace()) {
                return Ok(false);
            }
            let n = self.available();
            self.consume(n);
        }
        Ok(true)
    }

    /// Reads the next element inside `parent` whole (header, contents, end-of-contents),
    /// as encoded. Fails with [`Error::Malformed`] when it is larger than `limit` bytes,
    /// before reading that much.
    pub(super) fn element(
        &mut self,
        parent: Frame,
        limit: usize,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.element_into(parent, limit, what, &mut out, 0)?;
        Ok(out)
    }

    fn element_into(
        &mut self,
        parent: Frame,
        limit: usize,
        what: &str,
        out: &mut Vec<u8>,
        depth: u32,
    ) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!("{what}: nested too deeply")));
        }
        let too_big = || {
            malformed(format!(
                "{what} is larger than the limit of {limit} bytes; refusing to load it"
            ))
        };
        let (h, raw) = self.header_raw(parent, what)?;
        out.extend_from_slice(&raw);
        if out.len() > limit {
            return Err(too_big());
        }
        match h.len {
            Some(len) => {
                let len = usize::try_from(len).map_err(|_| too_big())?;
                if out.len().checked_add(len).is_none_or(|t| t > limit) {
                    return Err(too_big());
                }
                let mut left = len as u64;
                while left > 0 {
                    let c = self.chunk(left, what)?;
                    left -= c.len() as u64;
                    out.extend_from_slice(c);
                }
            }
            None => {
                let f = self.frame(&h);
                while !self.at_end(f, what)? {
                    self.element_into(f, limit, what, out, depth + 1)?;
                }
                self.close(f, what)?;
                out.extend_from_slice(&[0, 0]);
                if out.len() > limit {
                    return Err(too_big());
                }
            }
        }
        Ok(())
    }
}

/// Streams the contents of an OCTET STRING (or `[n] IMPLICIT OCTET STRING`) whose header
/// `h` was just read: primitive, or constructed from (possibly nested) OCTET STRING
/// pieces. Each piece goes to `sink` as it arrives; `what` names the element in errors.
pub(super) fn stream_octets<R: Read>(
    rd: &mut Reader<R>,
    h: Header,
    what: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    stream_octets_depth(rd, h, what, 0, sink)
}

fn stream_octets_depth<R: Read>(
    rd: &mut Reader<R>,
    h: Header,
    what: &str,
    depth: u32,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(malformed(format!("{what}: OCTET STRING nested too deeply")));
    }
    if !h.constructed() {
        let mut left = h
            .len
            .ok_or_else(|| malformed(format!("{what}: indefinite primitive")))?;
        while left > 0 {
            let piece = rd.chunk(left, what)?;
            left -= piece.len() as u64;
            sink(piece)?;
        }
        return Ok(());
    }
    let f = rd.frame(&h);
    while !rd.at_end(f, what)? {
        let c = rd.header(f, what)?;
        if c.tag != TAG_OCTET_STRING && c.tag != TAG_OCTET_STRING_CONSTRUCTED {
            return Err(malformed(format!(
                "{what} piece: expected OCTET STRING, found tag {:#04x}",
                c.tag
            )));
        }
        stream_octets_depth(rd, c, what, depth + 1, sink)?;
    }
    rd.close(f, what)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A reader that returns one byte per call, to exercise refills.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(dst)) => {
                    *dst = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn elements_definite_and_indefinite() {
        // SEQUENCE(indef) { INTEGER 5, [0](indef){ OCTET STRING "ab" }, NULL }
        let data = [
            0x30, 0x80, 0x02, 0x01, 0x05, 0xA0, 0x80, 0x04, 0x02, b'a', b'b', 0, 0, 0x05, 0x00, 0,
            0,
        ];
        let mut r = Reader::new(Trickle(&data));
        let h = r.expect(Frame::TOP, 0x30, "seq").unwrap();
        let f = r.frame(&h);
        assert_eq!(r.element(f, 100, "int").unwrap(), [2, 1, 5]);
        let e = r.element(f, 100, "ctx").unwrap();
        assert_eq!(e, [0xA0, 0x80, 0x04, 0x02, b'a', b'b', 0, 0]);
        let n = r.header(f, "null").unwrap();
        r.skip(n, "null").unwrap();
        assert!(r.at_end(f, "seq").unwrap());
        r.close(f, "seq").unwrap();
        assert_eq!(r.pos(), data.len() as u64);
    }

    #[test]
    fn limits_and_truncation() {
        let data = [0x30, 0x84, 0x7f, 0xff, 0xff, 0xff];
        let mut r = Reader::new(&data[..]);
        assert!(
            matches!(r.element(Frame::TOP, 1 << 20, "x"), Err(Error::Malformed(m)) if m.contains("limit"))
        );
        let data = [0x30, 0x05, 0x02, 0x01];
        let mut r = Reader::new(&data[..]);
        assert!(matches!(
            r.element(Frame::TOP, 100, "x"),
            Err(Error::Truncated(_))
        ));
        let mut r = Reader::new(&[][..]);
        assert!(
            matches!(r.header(Frame::TOP, "x"), Err(Error::Truncated(m)) if m.contains("empty"))
        );
        // A child longer than its parent.
        let data = [0x30, 0x03, 0x04, 0x05, 0, 0, 0, 0, 0];
        let mut r = Reader::new(&data[..]);
        let h = r.header(Frame::TOP, "x").unwrap();
        let f = r.frame(&h);
        assert!(matches!(r.header(f, "y"), Err(Error::Malformed(_))));
    }
}
