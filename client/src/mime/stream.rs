//! Reading an incoming S/MIME message as a stream, in bounded memory for any size: the
//! header section is read (at most [`MAX_HEAD`]), then
//!
//! * application/pkcs7-mime: the body is handed back as a reader that decodes the transfer
//!   encoding on the fly, for the CMS layer to stream;
//! * multipart/signed: the body is scanned line by line for the boundary; the first part
//!   (the signed entity, in CRLF form) goes to a sink as it arrives, the second part (the
//!   signature, at most [`MAX_SIGNATURE_PART`]) is kept and decoded.
//!
//! [`super::parse`] is this same code reading from memory.

use std::io::{self, BufRead, Read, Write};

use super::header::{self, Field, MimeType};
use super::parse::{decode_der, is_pkcs7_mime, is_pkcs7_signature};
use super::{MimeError, codec};
use crate::cms::pem::{Base64Error, Base64Reader};

/// Largest header section read.
pub const MAX_HEAD: usize = 1 << 20;

/// Largest application/pkcs7-signature part kept (raw, before decoding).
pub const MAX_SIGNATURE_PART: usize = 16 << 20;

/// Longest piece of a line read at once; longer lines are passed on in pieces (they cannot
/// be boundary delimiters).
const LINE_PIECE: u64 = 64 * 1024;

/// An incoming message, opened: see [`open`].
pub enum Incoming<'a> {
    /// application/pkcs7-mime (and its `x-` and `*.p7m` variants).
    Pkcs7Mime {
        /// All header fields of the message.
        headers: Vec<(String, String)>,
        /// The `smime-type` parameter, if any.
        smime_type: Option<String>,
        /// The decoded body: DER or BER, read on demand. Bad base64 surfaces as an
        /// [`io::ErrorKind::InvalidData`] error (see [`body_error`]).
        body: Box<dyn Read + 'a>,
    },
    /// multipart/signed: the signed part went to the sink given to [`open`].
    MultipartSigned {
        /// All header fields of the message.
        headers: Vec<(String, String)>,
        /// The decoded DER of the signature part.
        signature: Vec<u8>,
        /// The `micalg` parameter, lower case.
        micalg: Option<String>,
    },
    /// Not S/MIME.
    Other {
        /// The content type (`type/subtype`, lower case; `text/plain` without one).
        content_type: String,
    },
}

/// The MIME error inside an I/O error from a pkcs7-mime body reader, if that is what it is.
pub fn body_error(e: &io::Error) -> Option<MimeError> {
    let inner = e.get_ref()?;
    inner
        .downcast_ref::<Base64Error>()
        .map(|b| MimeError::BadBase64 {
            part: "application/pkcs7-mime body",
            detail: b.to_string(),
        })
}

fn read_err(e: io::Error) -> MimeError {
    MimeError::Broken(format!("reading the message: {e}"))
}

/// Reads the header section: lines up to and including the blank line that ends it, or
/// up to the end of input. A first line that is neither a header field nor a continuation
/// ends it too and comes back as the second value (the start of the body). A leading mbox
/// `From ` line is dropped.
fn read_head(input: &mut dyn BufRead) -> Result<(Vec<u8>, Vec<u8>), MimeError> {
    let mut head = Vec::new();
    let mut first = true;
    loop {
        let start = head.len();
        let remaining = (MAX_HEAD + 1).saturating_sub(head.len()) as u64;
        let n = input
            .take(remaining)
            .read_until(b'\n', &mut head)
            .map_err(read_err)?;
        if n == 0 {
            return Ok((head, Vec::new()));
        }
        if head.len() > MAX_HEAD {
            return Err(MimeError::Broken(format!(
                "header section over {} KiB",
                MAX_HEAD >> 10
            )));
        }
        let line = head.get(start..).unwrap_or_default();
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
        if first && line.starts_with(b"From ") {
            head.truncate(start);
        } else if bare.is_empty() {
            return Ok((head, Vec::new()));
        } else {
            let continuation = matches!(line.first(), Some(b' ' | b'\t')) && start > 0;
            if !continuation && !header::is_field_line(bare) {
                let rest = head.split_off(start);
                return Ok((head, rest));
            }
        }
        first = false;
    }
}

/// Opens an incoming message or entity (LF or CRLF line ends). For multipart/signed the
/// signed part, in CRLF form exactly as signed, is written to `signed`; the caller must
/// throw it away on error.
pub fn open<'a>(
    mut input: Box<dyn BufRead + 'a>,
    signed: &mut dyn Write,
) -> Result<Incoming<'a>, MimeError> {
    let (head, rest) = read_head(&mut input)?;
    let input: Box<dyn BufRead + 'a> = if rest.is_empty() {
        input
    } else {
        Box::new(io::Cursor::new(rest).chain(input))
    };
    let block = header::split(&head);
    let Some(ct) = header::content_type(&block.fields) else {
        // RFC 2045 §5.2: no (or an unparseable) Content-Type means text/plain.
        return Ok(Incoming::Other {
            content_type: "text/plain".to_owned(),
        });
    };
    let headers = header::pairs(&block.fields);
    if is_pkcs7_mime(&ct, &block.fields) {
        let body = pkcs7_body(&block.fields, input)?;
        return Ok(Incoming::Pkcs7Mime {
            headers,
            smime_type: ct.param("smime-type").map(str::to_owned),
            body,
        });
    }
    if ct.is("multipart/signed") {
        let (signature, micalg) = scan_signed(input, &ct, signed)?;
        return Ok(Incoming::MultipartSigned {
            headers,
            signature,
            micalg,
        });
    }
    Ok(Incoming::Other {
        content_type: ct.essence,
    })
}

/// The decoded pkcs7-mime body as a reader; fails at once if it is empty.
fn pkcs7_body<'a>(
    fields: &[Field],
    input: Box<dyn BufRead + 'a>,
) -> Result<Box<dyn Read + 'a>, MimeError> {
    const PART: &str = "application/pkcs7-mime body";
    let cte = header::transfer_encoding(fields);
    let body: Box<dyn Read + 'a> = match cte.as_str() {
        "base64" => Box::new(Base64Reader::new(input)),
        // A binary body streams as it is: the CMS reader stops at the end of the
        // ContentInfo and allows trailing line ends.
        "7bit" | "8bit" | "binary" => input,
        "quoted-printable" => {
            // Nobody sends DER like this; small enough to decode in memory.
            let mut raw = Vec::new();
            input
                .take(MAX_SIGNATURE_PART as u64 + 1)
                .read_to_end(&mut raw)
                .map_err(read_err)?;
            if raw.len() > MAX_SIGNATURE_PART {
                return Err(MimeError::Broken(
                    "quoted-printable pkcs7-mime body over 16 MiB".to_owned(),
                ));
            }
            Box::new(io::Cursor::new(codec::qp_decode(&raw)))
        }
        _ => {
            return Err(MimeError::UnsupportedEncoding {
                part: PART,
                encoding: cte,
            });
        }
    };
    let mut body = io::BufReader::with_capacity(64 * 1024, body);
    match body.fill_buf() {
        Ok([]) => Err(MimeError::EmptyBody { part: PART }),
        Ok(_) => Ok(Box::new(body)),
        Err(e) => Err(body_error(&e).unwrap_or_else(|| read_err(e))),
    }
}

/// Line-end state of the signed part being copied.
struct SignedSink<'s> {
    out: &'s mut dyn Write,
    /// The line end of the last line, held back until the next line shows that it is not
    /// the CRLF that belongs to the delimiter.
    pending_eol: bool,
    /// A CR ending the last piece of a long line, held back to be paired with an LF.
    pending_cr: bool,
}

impl SignedSink<'_> {
    /// Writes a piece of a line (without its line end) in CRLF form.
    fn content(&mut self, piece: &[u8]) -> io::Result<()> {
        if self.pending_eol {
            self.out.write_all(b"\r\n")?;
            self.pending_eol = false;
        }
        if self.pending_cr {
            self.out.write_all(b"\r")?;
            self.pending_cr = false;
        }
        let (piece, cr) = match piece.strip_suffix(b"\r") {
            Some(p) => (p, true),
            None => (piece, false),
        };
        self.out.write_all(piece)?;
        self.pending_cr = cr;
        Ok(())
    }

    /// A line end (LF or CRLF in the input) after the content written so far.
    fn eol(&mut self) -> io::Result<()> {
        if self.pending_eol {
            self.out.write_all(b"\r\n")?;
        }
        self.pending_cr = false;
        self.pending_eol = true;
        Ok(())
    }
}

/// What a line is, relative to the boundary.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Delimiter {
    None,
    Next,
    Close,
}

fn delimiter(line: &[u8], dash: &[u8]) -> Delimiter {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(rest) = line.strip_prefix(dash) else {
        return Delimiter::None;
    };
    let (kind, pad) = match rest.strip_prefix(b"--") {
        Some(pad) => (Delimiter::Close, pad),
        None => (Delimiter::Next, rest),
    };
    if pad.iter().all(|&b| b == b' ' || b == b'\t') {
        kind
    } else {
        Delimiter::None
    }
}

/// Scans a multipart/signed body: the first part to `signed`, the second decoded.
fn scan_signed(
    mut input: Box<dyn BufRead + '_>,
    ct: &MimeType,
    signed: &mut dyn Write,
) -> Result<(Vec<u8>, Option<String>), MimeError> {
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
    let dash = [b"--" as &[u8], boundary.as_bytes()].concat();
    let write_err = |e: io::Error| MimeError::Broken(format!("spooling the signed part: {e}"));

    // part 0 = preamble, 1 = signed entity, 2 = signature, 3.. = extra parts
    let mut part = 0usize;
    let mut sink = SignedSink {
        out: signed,
        pending_eol: false,
        pending_cr: false,
    };
    let mut sig_raw: Vec<u8> = Vec::new();
    let mut line = Vec::with_capacity(1024);
    let mut at_line_start = true;
    let mut closed = false;
    loop {
        line.clear();
        let n = (&mut input)
            .take(LINE_PIECE)
            .read_until(b'\n', &mut line)
            .map_err(read_err)?;
        if n == 0 {
            break;
        }
        let ends_line = line.ends_with(b"\n");
        let kind = if at_line_start {
            delimiter(&line, &dash)
        } else {
            Delimiter::None
        };
        at_line_start = ends_line;
        if kind != Delimiter::None {
            part += 1;
            if kind == Delimiter::Close {
                closed = true;
                break;
            }
            continue;
        }
        match part {
            0 => {}
            1 => {
                let body = line.strip_suffix(b"\n").unwrap_or(&line);
                let body = if ends_line {
                    body.strip_suffix(b"\r").unwrap_or(body)
                } else {
                    body
                };
                sink.content(body).map_err(write_err)?;
                if ends_line {
                    sink.eol().map_err(write_err)?;
                }
            }
            2 => {
                if sig_raw.len() + line.len() > MAX_SIGNATURE_PART {
                    return Err(MimeError::Broken(format!(
                        "the signature part is over {} MiB",
                        MAX_SIGNATURE_PART >> 20
                    )));
                }
                sig_raw.extend_from_slice(&line);
            }
            _ => {}
        }
    }
    if part == 0 {
        return Err(MimeError::BoundaryNotFound {
            content_type: ct.essence.clone(),
            boundary: boundary.to_owned(),
        });
    }
    if !closed {
        return Err(MimeError::Unterminated {
            content_type: ct.essence.clone(),
            boundary: boundary.to_owned(),
        });
    }
    // `part` counts delimiters: parts = delimiters - 1 (the close delimiter included).
    let parts = part - 1;
    if parts != 2 {
        return Err(MimeError::MissingSignaturePart { parts });
    }
    if sink.pending_cr {
        sink.out.write_all(b"\r").map_err(write_err)?;
    }
    sink.out.flush().map_err(write_err)?;

    // The signature part, without the line end that belongs to the close delimiter.
    let sig_raw = header::normalize_crlf(&sig_raw);
    let sig_raw = sig_raw.strip_suffix(b"\r\n").unwrap_or(&sig_raw);
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
        sig_raw.get(sig_block.body_start..).unwrap_or_default(),
        "application/pkcs7-signature part",
    )?;
    Ok((
        signature,
        ct.param("micalg").map(|m| m.trim().to_ascii_lowercase()),
    ))
}

impl std::fmt::Debug for Incoming<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pkcs7Mime {
                headers,
                smime_type,
                ..
            } => f
                .debug_struct("Pkcs7Mime")
                .field("headers", headers)
                .field("smime_type", smime_type)
                .finish_non_exhaustive(),
            Self::MultipartSigned {
                headers,
                signature,
                micalg,
            } => f
                .debug_struct("MultipartSigned")
                .field("headers", headers)
                .field("signature_len", &signature.len())
                .field("micalg", micalg)
                .finish(),
            Self::Other { content_type } => f
                .debug_struct("Other")
                .field("content_type", content_type)
                .finish(),
        }
    }
}
