//! Header sections: splitting them off a body (LF or CRLF line ends), field classification,
//! and the parameters of `Content-Type`/`Content-Disposition` (parsed by mail-parser, which
//! handles quoting, comments and RFC 2231).
//!
//! The splitter is hand-written because canonicalization must re-emit every field byte for
//! byte (only line ends change), so it needs each field's raw extent, including folding.

use std::ops::Range;

use mail_parser::{MessageParser, MimeHeaders as _};

/// One header field.
#[derive(Debug, Clone)]
pub(super) struct Field {
    pub(super) name: String,
    /// After the colon, leading and trailing whitespace removed; folds kept as CRLF + WSP.
    pub(super) value: String,
    /// The whole field in the input, including its final line end.
    pub(super) raw: Range<usize>,
}

impl Field {
    pub(super) fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The header section at the start of an entity.
#[derive(Debug, Clone)]
pub(super) struct HeaderBlock {
    pub(super) fields: Vec<Field>,
    /// Where the body starts: after the blank line, or where a non-field line was met.
    pub(super) body_start: usize,
    /// Whether a blank line ended the header section.
    pub(super) separated: bool,
}

/// A field line: a name of printable ASCII without `:` (RFC 5322 §2.2; obsolete WSP
/// before the colon tolerated), then `:`.
pub(super) fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = trim_wsp_end(&line[..colon]);
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b))
}

fn trim_wsp_end(mut s: &[u8]) -> &[u8] {
    while let [head @ .., b' ' | b'\t'] = s {
        s = head;
    }
    s
}

/// Splits the header section off `input`; never fails (a body without headers gives no
/// fields).
pub(super) fn split(input: &[u8]) -> HeaderBlock {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    loop {
        if pos >= input.len() {
            return HeaderBlock {
                fields: finish(input, fields),
                body_start: input.len(),
                separated: false,
            };
        }
        let (line, next) = match input[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&input[pos..pos + i], pos + i + 1),
            None => (&input[pos..], input.len()),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return HeaderBlock {
                fields: finish(input, fields),
                body_start: next,
                separated: true,
            };
        }
        match fields.last_mut() {
            Some(last) if matches!(line[0], b' ' | b'\t') => last.raw.end = next,
            _ if is_field_line(line) => fields.push(Field {
                name: String::new(),
                value: String::new(),
                raw: pos..next,
            }),
            _ => {
                return HeaderBlock {
                    fields: finish(input, fields),
                    body_start: pos,
                    separated: false,
                };
            }
        }
        pos = next;
    }
}

/// Fills in names and values from the raw extents.
fn finish(input: &[u8], mut fields: Vec<Field>) -> Vec<Field> {
    for f in &mut fields {
        let raw = &input[f.raw.clone()];
        let colon = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
        f.name = String::from_utf8_lossy(trim_wsp_end(&raw[..colon])).into_owned();
        let value = normalize_crlf(raw.get(colon + 1..).unwrap_or_default());
        f.value = String::from_utf8_lossy(&value).trim().to_owned();
    }
    fields
}

/// Whether the input starts like an RFC 5322 message or MIME entity: a header section of
/// well-formed fields ended by a blank line (or the end of input) that includes at least
/// one field that messages actually carry. The last condition keeps a text that happens to
/// start with `Note: ...` from having its first paragraph moved out of the signature.
pub(super) fn looks_like_headers(block: &HeaderBlock, input_len: usize) -> bool {
    const KNOWN: &[&str] = &[
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "comments",
        "keywords",
        "return-path",
        "received",
        "mime-version",
        "user-agent",
        "x-mailer",
        "organization",
        "delivered-to",
    ];
    (block.separated || block.body_start == input_len)
        && block.fields.iter().any(|f| {
            let n = f.name.to_ascii_lowercase();
            KNOWN.contains(&n.as_str()) || n.starts_with("content-") || n.starts_with("resent-")
        })
}

/// `Content-*` and `MIME-Version`: the fields that describe the entity rather than the
/// message, and so belong to the signed inner entity.
pub(super) fn is_content_field(name: &str) -> bool {
    name.as_bytes()
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"content-"))
        || name.eq_ignore_ascii_case("mime-version")
}

/// Bare LF → CRLF; CRLF and bare CR unchanged.
pub(super) fn normalize_crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    let mut prev = 0u8;
    for &b in input {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// A parsed `Content-Type` (or `Content-Disposition`, whose "type" is the disposition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MimeType {
    /// `type/subtype`, lower case.
    pub(super) essence: String,
    /// Parameter names lower case, values as given (unquoted, RFC 2231 decoded).
    pub(super) params: Vec<(String, String)>,
}

impl MimeType {
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The top-level media type (`text`, `multipart`, ...).
    pub(super) fn top(&self) -> &str {
        self.essence.split('/').next().unwrap_or_default()
    }

    pub(super) fn is(&self, essence: &str) -> bool {
        self.essence == essence
    }
}

/// Parses one structured MIME header value with mail-parser.
fn parse_mime_value(name: &str, value: &str) -> Option<MimeType> {
    let raw = format!("{name}: {value}\r\n\r\n");
    let msg = MessageParser::new()
        .with_mime_headers()
        .parse_headers(raw.as_bytes())?;
    let part = msg.parts.first()?;
    let ct = if name.eq_ignore_ascii_case("content-type") {
        part.content_type()?
    } else {
        part.content_disposition()?
    };
    let essence = match ct.subtype() {
        Some(sub) => format!("{}/{}", ct.ctype(), sub),
        None => ct.ctype().to_owned(),
    }
    .to_ascii_lowercase();
    let params = ct
        .attributes()
        .unwrap_or_default()
        .iter()
        .map(|a| (a.name.to_ascii_lowercase(), a.value.to_string()))
        .collect();
    Some(MimeType { essence, params })
}

/// The entity's `Content-Type`, if it has a parseable one.
pub(super) fn content_type(fields: &[Field]) -> Option<MimeType> {
    let f = fields.iter().find(|f| f.is("content-type"))?;
    parse_mime_value("Content-Type", &f.value)
}

/// The entity's `Content-Disposition`, if any.
pub(super) fn content_disposition(fields: &[Field]) -> Option<MimeType> {
    let f = fields.iter().find(|f| f.is("content-disposition"))?;
    parse_mime_value("Content-Disposition", &f.value)
}

/// The `Content-Transfer-Encoding` mechanism, lower case (`7bit` when absent).
pub(super) fn transfer_encoding(fields: &[Field]) -> String {
    fields
        .iter()
        .find(|f| f.is("content-transfer-encoding"))
        .and_then(|f| {
            f.value
                .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
                .next()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or("7bit")
        .to_ascii_lowercase()
}

/// Converts fields to the public `(name, value)` form.
pub(super) fn pairs(fields: &[Field]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|f| (f.name.clone(), f.value.clone()))
        .collect()
}

/// Writes `name: value` CRLF, with the value's folds normalized to CRLF.
pub(super) fn write_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    if !value.is_empty() {
        out.push(b' ');
        out.extend_from_slice(&normalize_crlf(value.as_bytes()));
    }
    out.extend_from_slice(b"\r\n");
}
