//! Writing S/MIME entities: multipart/signed (RFC 8551 §3.5.3, RFC 1847 §2.1) and
//! application/pkcs7-mime (RFC 8551 §3.2).
//!
//! The few header lines and delimiters are written by hand rather than with mail-builder:
//! the signed part must be embedded byte for byte, the boundary must be checked against it,
//! the outer header fields are passed through as they came (folding included), and the
//! pkcs7-mime body is streamed. mail-builder picks its own boundary, regenerates header
//! fields and wants the whole body in memory.

use std::io::{self, Read, Write};

use super::Prepared;
use super::codec;
use super::header::{self, is_content_field, write_field};

/// The message header fields, `Content-*`/`MIME-Version` dropped, then `MIME-Version: 1.0`.
fn write_outer(out: &mut Vec<u8>, outer: &[(String, String)]) {
    for (name, value) in outer {
        if !is_content_field(name) {
            write_field(out, name, value);
        }
    }
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
}

/// A parameter value reduced to RFC 2045 token characters (plus `,` for micalg lists),
/// quoted when it has to be. Keeps a caller's odd string from breaking the header.
fn param_value(value: &str) -> String {
    let v: String = value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ','))
        .collect();
    if v.contains(',') {
        format!("\"{v}\"")
    } else {
        v
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A random boundary that does not occur in `content` (RFC 2046 §5.1.1).
fn boundary_for(content: &[u8]) -> String {
    loop {
        let b = new_boundary();
        if !contains(content, b.as_bytes()) {
            return b;
        }
    }
}

/// A new random boundary (128 random bits: it cannot occur in content by chance, and
/// nobody can put it there on purpose before it is drawn).
pub(super) fn new_boundary() -> String {
    format!("----smime-{:032x}", rand::random::<u128>())
}

pub(super) fn multipart_signed(prep: &Prepared, p7s_der: &[u8], micalg: &str) -> Vec<u8> {
    let boundary = boundary_for(&prep.inner);
    let mut out = Vec::with_capacity(prep.inner.len() + p7s_der.len() * 4 / 3 + 1024);
    // Writing to a Vec cannot fail.
    let _ = write_multipart_signed(
        &prep.outer_headers,
        prep.inner.as_slice(),
        &boundary,
        p7s_der,
        micalg,
        &mut out,
    );
    out
}

pub(super) fn write_multipart_signed(
    outer: &[(String, String)],
    mut inner: impl Read,
    boundary: &str,
    p7s_der: &[u8],
    micalg: &str,
    mut out: impl Write,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(2048);
    write_outer(&mut head, outer);
    head.extend_from_slice(
        format!(
            "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\r\n\
             \tmicalg={}; boundary=\"{boundary}\"\r\n\r\n",
            param_value(micalg)
        )
        .as_bytes(),
    );
    head.extend_from_slice(b"This is a cryptographically signed message in MIME format.\r\n\r\n");
    head.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    out.write_all(&head)?;
    // The signed bytes exactly; the CRLF after them belongs to the delimiter.
    io::copy(&mut inner, &mut out)?;
    let mut tail = Vec::with_capacity(p7s_der.len() * 4 / 3 + 512);
    tail.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    tail.extend_from_slice(
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n\
          Content-Transfer-Encoding: base64\r\n\
          Content-Disposition: attachment; filename=smime.p7s\r\n\r\n",
    );
    tail.extend(codec::base64_lines(p7s_der));
    tail.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out.write_all(&tail)?;
    out.flush()
}

/// Outer fields and the pkcs7-mime header section, up to and including the blank line.
fn pkcs7_mime_head(outer: &[(String, String)], smime_type: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_outer(&mut out, outer);
    let smime_type = param_value(smime_type);
    // RFC 8551 §3.2.1 file names.
    let file = match smime_type.to_ascii_lowercase().as_str() {
        "certs-only" => "smime.p7c",
        "compressed-data" => "smime.p7z",
        _ => "smime.p7m",
    };
    let type_param = if smime_type.is_empty() {
        String::new()
    } else {
        format!(" smime-type={smime_type};")
    };
    out.extend_from_slice(
        format!(
            "Content-Type: application/pkcs7-mime;{type_param} name={file}\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename={file}\r\n\r\n"
        )
        .as_bytes(),
    );
    out
}

pub(super) fn pkcs7_mime(outer: &[(String, String)], smime_type: &str, der: &[u8]) -> Vec<u8> {
    let mut out = pkcs7_mime_head(outer, smime_type);
    out.extend(codec::base64_lines(der));
    out
}

pub(super) fn write_pkcs7_mime(
    outer: &[(String, String)],
    smime_type: &str,
    der: impl Read,
    mut out: impl Write,
) -> io::Result<()> {
    out.write_all(&pkcs7_mime_head(outer, smime_type))?;
    codec::copy_base64_lines(der, &mut out)?;
    out.flush()
}

/// How much of the inner entity [`reattached_reader`] looks at to find its header section.
const REATTACH_PREFIX: u64 = 64 * 1024;

/// The lines [`reattach_headers`] puts in front of the inner entity, judged from its
/// first bytes.
fn reattach_head(outer: &[(String, String)], inner_prefix: &[u8]) -> Vec<u8> {
    let block = header::split(inner_prefix);
    let mut out = Vec::with_capacity(1024);
    for (name, value) in outer {
        if !is_content_field(name) {
            write_field(&mut out, name, value);
        }
    }
    if !block.fields.iter().any(|f| f.is("mime-version")) {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    if block.fields.is_empty() && !block.separated {
        // Content without a header section of its own: a text/plain body by default.
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub(super) fn reattach_headers(outer: &[(String, String)], inner: &[u8]) -> Vec<u8> {
    let mut out = reattach_head(outer, inner);
    out.extend_from_slice(inner);
    out
}

pub(super) fn reattached_reader<'a, R: Read + 'a>(
    outer: &[(String, String)],
    mut inner: R,
) -> io::Result<impl Read + 'a> {
    let mut prefix = Vec::new();
    (&mut inner)
        .take(REATTACH_PREFIX)
        .read_to_end(&mut prefix)?;
    let head = reattach_head(outer, &prefix);
    Ok(io::Cursor::new(head)
        .chain(io::Cursor::new(prefix))
        .chain(inner))
}
