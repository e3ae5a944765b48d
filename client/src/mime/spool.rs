//! [`super::prepare_for_signing`] for input of any size: the input is a file (standard
//! input is spooled to one first), read in passes, and the inner entity is written to an
//! anonymous temporary file. Memory use does not depend on the input size.
//!
//! Two shapes stream, and they are what large input looks like in practice:
//! * a file without a header section (a document, an archive): it becomes a `text/plain`
//!   entity (7bit or quoted-printable) or an `application/octet-stream` one in base64;
//! * a message whose body is already 7-bit safe (what mail clients produce: attachments in
//!   base64, text in quoted-printable): only its line ends become CRLF.
//!
//! Anything else (8-bit text to re-encode inside a multipart, say) goes through the
//! in-memory canonicalization. Both give the same bytes for the same input: the streamed
//! shapes are exactly the cases where [`super::canon`] changes nothing but line ends, or
//! synthesizes the entity header itself.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

use super::canon::{self, MAX_LINE};
use super::header;
use super::{MimeError, Prepared, codec};

/// The prepared input: outer header fields, and the inner entity in a temporary file
/// (rewound).
#[derive(Debug)]
pub struct PreparedFile {
    /// As [`Prepared::outer_headers`].
    pub outer_headers: Vec<(String, String)>,
    /// As [`Prepared::inner`], in a file positioned at its start.
    pub inner: File,
}

/// Largest header section looked at; a longer one goes the in-memory way.
const HEAD_LIMIT: usize = 1 << 20;

/// Longest text line re-encoded as quoted-printable line by line.
const QP_LINE_LIMIT: usize = 1 << 20;

fn io_err(e: io::Error) -> MimeError {
    MimeError::Broken(format!("reading or spooling the message: {e}"))
}

/// What one pass over a body found.
#[derive(Debug, Default)]
struct Scan {
    /// Valid UTF-8 so far (with `utf8_carry` pending).
    utf8: bool,
    utf8_carry: Vec<u8>,
    has_nul: bool,
    ascii: bool,
    /// 7-bit clean once bare LFs become CRLF (no 8-bit octets, no bare CR, lines ≤ 998).
    clean: bool,
    /// A line with trailing whitespace or starting with `From `.
    fragile: bool,
    /// A `Content-Transfer-Encoding: 8bit|binary` line anywhere (a nested part that the
    /// canonicalization would relabel).
    relabel: bool,
    longest_line: usize,
    line_len: usize,
    line_start: Vec<u8>,
    last: u8,
    prev: u8,
}

impl Scan {
    fn new() -> Self {
        Self {
            utf8: true,
            ascii: true,
            clean: true,
            ..Self::default()
        }
    }

    fn end_line(&mut self) {
        let line = self
            .line_start
            .strip_suffix(b"\r")
            .unwrap_or(&self.line_start);
        if line.starts_with(b"From ") || matches!(self.last, b' ' | b'\t') {
            self.fragile = true;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix(b"content-transfer-encoding:") {
            let v = v.trim_ascii();
            if v.starts_with(b"8bit") || v.starts_with(b"binary") {
                self.relabel = true;
            }
        }
        self.longest_line = self.longest_line.max(self.line_len);
        self.last = 0;
        self.line_len = 0;
        self.line_start.clear();
    }

    fn feed(&mut self, data: &[u8]) {
        if self.utf8 {
            let mut buf = std::mem::take(&mut self.utf8_carry);
            buf.extend_from_slice(data);
            match std::str::from_utf8(&buf) {
                Ok(_) => {}
                Err(e) if e.error_len().is_none() => {
                    self.utf8_carry = buf.get(e.valid_up_to()..).unwrap_or_default().to_vec();
                }
                Err(_) => self.utf8 = false,
            }
        }
        for &b in data {
            match b {
                0 => {
                    self.has_nul = true;
                    self.clean = false;
                }
                128..=255 => {
                    self.ascii = false;
                    self.clean = false;
                }
                _ => {}
            }
            if self.prev == b'\r' && b != b'\n' {
                self.clean = false;
            }
            if b == b'\n' {
                self.end_line();
            } else {
                if b != b'\r' {
                    self.line_len += 1;
                    self.last = b;
                    if self.line_len > MAX_LINE {
                        self.clean = false;
                    }
                }
                if self.line_start.len() < 40 {
                    self.line_start.push(b);
                }
            }
            self.prev = b;
        }
    }

    fn finish(&mut self) {
        if self.prev == b'\r' {
            self.clean = false;
        }
        if self.line_len > 0 || !self.line_start.is_empty() {
            self.end_line();
        }
        if !self.utf8_carry.is_empty() {
            self.utf8 = false;
        }
    }
}

/// Scans `input` from `from` to its end.
fn scan(input: &mut File, from: u64) -> Result<Scan, MimeError> {
    input.seek(SeekFrom::Start(from)).map_err(io_err)?;
    let mut s = Scan::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        s.feed(buf.get(..n).unwrap_or_default());
    }
    s.finish();
    Ok(s)
}

/// Copies `input` from `from` to `out` with bare LFs made CRLF.
fn copy_crlf(input: &mut File, from: u64, out: &mut impl Write) -> Result<(), MimeError> {
    input.seek(SeekFrom::Start(from)).map_err(io_err)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut norm = Vec::with_capacity(buf.len() * 2);
    let mut prev = 0u8;
    loop {
        let n = input.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            return Ok(());
        }
        norm.clear();
        for &b in buf.get(..n).unwrap_or_default() {
            if b == b'\n' && prev != b'\r' {
                norm.push(b'\r');
            }
            norm.push(b);
            prev = b;
        }
        out.write_all(&norm).map_err(io_err)?;
    }
}

/// Quoted-printable of `input` from `from`, line by line (CRLF form first).
fn copy_qp(input: &mut File, from: u64, out: &mut impl Write) -> Result<(), MimeError> {
    input.seek(SeekFrom::Start(from)).map_err(io_err)?;
    let mut reader = BufReader::with_capacity(64 * 1024, &*input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = io::BufRead::read_until(&mut reader, b'\n', &mut line).map_err(io_err)?;
        if n == 0 {
            return Ok(());
        }
        let norm = header::normalize_crlf(&line);
        out.write_all(&codec::qp_encode(&norm)).map_err(io_err)?;
    }
}

fn new_spool() -> Result<io::BufWriter<File>, MimeError> {
    Ok(io::BufWriter::with_capacity(
        64 * 1024,
        tempfile::tempfile().map_err(io_err)?,
    ))
}

fn finish_spool(spool: io::BufWriter<File>) -> Result<File, MimeError> {
    let mut f = spool.into_inner().map_err(|e| io_err(e.into_error()))?;
    f.rewind().map_err(io_err)?;
    Ok(f)
}

/// Prepares `input` (a file, read from its start) for signing.
pub fn prepare_file(input: &mut File) -> Result<PreparedFile, MimeError> {
    match prepare_streamed(input)? {
        Some(p) => Ok(p),
        None => {
            input.rewind().map_err(io_err)?;
            let mut raw = Vec::new();
            input.read_to_end(&mut raw).map_err(io_err)?;
            let Prepared {
                outer_headers,
                inner,
            } = canon::prepare(&raw)?;
            let mut spool = new_spool()?;
            spool.write_all(&inner).map_err(io_err)?;
            Ok(PreparedFile {
                outer_headers,
                inner: finish_spool(spool)?,
            })
        }
    }
}

/// The streamed shapes; `None` for input that needs the in-memory canonicalization.
fn prepare_streamed(input: &mut File) -> Result<Option<PreparedFile>, MimeError> {
    let len = input.seek(SeekFrom::End(0)).map_err(io_err)?;
    input.rewind().map_err(io_err)?;
    let mut prefix = Vec::new();
    (&*input)
        .take(HEAD_LIMIT as u64)
        .read_to_end(&mut prefix)
        .map_err(io_err)?;
    let block = header::split(&prefix);
    let whole = usize::try_from(len).unwrap_or(usize::MAX);
    if !block.separated && block.body_start == prefix.len() && prefix.len() < whole {
        // A header section that may go on past what was read.
        return Ok(None);
    }
    let mut spool = new_spool()?;
    if !header::looks_like_headers(&block, whole) {
        // No header section: the whole input is the body (as `canon::synthesize`).
        let s = scan(input, 0)?;
        let text = s.utf8 && !s.has_nul;
        if text {
            let qp = !s.clean || s.fragile;
            if qp && s.longest_line > QP_LINE_LIMIT {
                return Ok(None);
            }
            let charset = if s.ascii { "us-ascii" } else { "utf-8" };
            write!(
                spool,
                "Content-Type: text/plain; charset={charset}\r\n\
                 Content-Transfer-Encoding: {}\r\n\r\n",
                if qp { "quoted-printable" } else { "7bit" }
            )
            .map_err(io_err)?;
            if qp {
                copy_qp(input, 0, &mut spool)?;
            } else {
                copy_crlf(input, 0, &mut spool)?;
            }
        } else {
            spool
                .write_all(
                    b"Content-Type: application/octet-stream\r\n\
                      Content-Transfer-Encoding: base64\r\n\r\n",
                )
                .map_err(io_err)?;
            input.rewind().map_err(io_err)?;
            codec::copy_base64_lines(BufReader::new(&*input), &mut spool).map_err(io_err)?;
        }
        return Ok(Some(PreparedFile {
            outer_headers: Vec::new(),
            inner: finish_spool(spool)?,
        }));
    }
    // A message: streams only when nothing but line ends would change.
    let has_type = block.fields.iter().any(|f| f.is("content-type"));
    let cte = header::transfer_encoding(&block.fields);
    if !has_type || !matches!(cte.as_str(), "7bit" | "base64" | "quoted-printable") {
        return Ok(None);
    }
    let body_start = block.body_start as u64;
    let s = scan(input, body_start)?;
    if !s.clean || s.fragile || s.relabel {
        return Ok(None);
    }
    let (outer_headers, content) = canon::split_fields(&block);
    for f in content {
        spool
            .write_all(&canon::field_bytes(&prefix, f))
            .map_err(io_err)?;
    }
    spool.write_all(b"\r\n").map_err(io_err)?;
    copy_crlf(input, body_start, &mut spool)?;
    Ok(Some(PreparedFile {
        outer_headers,
        inner: finish_spool(spool)?,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file_of(data: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f.rewind().unwrap();
        f
    }

    fn inner_of(p: PreparedFile) -> (Vec<(String, String)>, Vec<u8>) {
        let mut inner = Vec::new();
        { p.inner }.read_to_end(&mut inner).unwrap();
        (p.outer_headers, inner)
    }

    const MULTIPART: &str = "From: a@example.org\nTo: b@example.org\nSubject: files\n\
        MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"xx\"\n\n\
        preamble\n--xx\nContent-Type: text/plain; charset=us-ascii\n\nhello\nworld\n\
        --xx\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n\
        AAECAwQFBgcICQ==\n--xx--\nepilogue\n";

    /// The streamed shapes give exactly what the in-memory canonicalization gives, and
    /// the shapes that need re-encoding still come out right (through it).
    #[test]
    fn same_bytes_as_in_memory() {
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (b"plain ascii text\nsecond line\n".to_vec(), true),
            (b"crlf text\r\nline\r\n".to_vec(), true),
            ("Gr\u{fc}\u{df}e, 8-bit text\n".as_bytes().to_vec(), true),
            (b"trailing space \nFrom the start\n".to_vec(), true),
            (b"no final newline".to_vec(), true),
            (vec![0u8, 1, 2, 255, b'\n', 10, 13, 0], true),
            ((0..200_000u32).map(|i| (i % 251) as u8).collect(), true),
            (
                [b"long line: ".as_slice(), &[b'x'; 3000], b"\n"].concat(),
                true,
            ),
            (MULTIPART.as_bytes().to_vec(), true),
            (MULTIPART.replace("\n", "\r\n").into_bytes(), true),
            // 8-bit text inside a multipart: re-encoded in memory.
            (MULTIPART.replace("hello", "h\u{e9}llo").into_bytes(), false),
            // Trailing whitespace in a text part: re-encoded in memory.
            (MULTIPART.replace("hello", "hello ").into_bytes(), false),
            (
                b"From: a@example.org\nSubject: x\nContent-Transfer-Encoding: 8bit\n\nbody\n"
                    .to_vec(),
                false,
            ),
            (
                b"Subject: x\nContent-Type: text/plain\nContent-Transfer-Encoding: 8bit\n\nbody\n"
                    .to_vec(),
                false,
            ),
            (b"".to_vec(), true),
        ];
        for (i, (input, streams)) in cases.iter().enumerate() {
            let want = canon::prepare(input).unwrap();
            let streamed = prepare_streamed(&mut file_of(input)).unwrap();
            assert_eq!(streamed.is_some(), *streams, "case {i}: streamed or not");
            let (headers, inner) = inner_of(prepare_file(&mut file_of(input)).unwrap());
            assert_eq!(headers, want.outer_headers, "case {i}: outer headers");
            assert_eq!(
                String::from_utf8_lossy(&inner),
                String::from_utf8_lossy(&want.inner),
                "case {i}: inner entity"
            );
            assert_eq!(inner, want.inner, "case {i}: inner bytes");
        }
    }
}
