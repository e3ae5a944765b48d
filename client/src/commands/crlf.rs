//! Line-end canonicalization for `smime sign --crlf`: a reader that turns bare LF into
//! CRLF as it streams (RFC 8551 §3.1.1 canonical form; what `openssl smime -sign` does
//! without -binary).

use std::io::{self, Read};

/// `input` as is, or canonicalized to CRLF when `crlf`.
pub(super) fn maybe<'a>(crlf: bool, input: Box<dyn Read + 'a>) -> Box<dyn Read + 'a> {
    if crlf {
        Box::new(CrlfReader::new(input))
    } else {
        input
    }
}

/// Reads `inner` with every LF not preceded by CR turned into CRLF.
#[derive(Debug)]
pub(super) struct CrlfReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// The last byte passed on was CR.
    prev_cr: bool,
    /// The LF of a CRLF that did not fit in the caller's buffer.
    pending_lf: bool,
}

impl<R: Read> CrlfReader<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            prev_cr: false,
            pending_lf: false,
        }
    }
}

impl<R: Read> Read for CrlfReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pending_lf {
            self.pending_lf = false;
            out[0] = b'\n';
            return Ok(1);
        }
        // Every input byte becomes at most two: read half of what fits.
        self.buf.resize((out.len() / 2).max(1), 0);
        let got = loop {
            match self.inner.read(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        let mut n = 0;
        for &b in &self.buf[..got] {
            if b == b'\n' && !self.prev_cr {
                out[n] = b'\r';
                n += 1;
                if n == out.len() {
                    // Only when the caller's buffer holds one byte.
                    self.pending_lf = true;
                    self.prev_cr = false;
                    return Ok(n);
                }
            }
            out[n] = b;
            n += 1;
            self.prev_cr = b == b'\r';
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut r = CrlfReader::new(input);
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = r.read(&mut buf).expect("read");
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn bare_lf_becomes_crlf_and_crlf_stays() {
        let input = b"a\nb\r\nc\n\nd\re\r\n\n";
        let want = b"a\r\nb\r\nc\r\n\r\nd\re\r\n\r\n";
        for chunk in [1, 2, 3, 7, 64, 8192] {
            assert_eq!(canon(input, chunk), want, "chunk {chunk}");
        }
        assert_eq!(canon(b"", 1), b"");
        assert_eq!(canon(b"no newline", 4), b"no newline");
    }
}
