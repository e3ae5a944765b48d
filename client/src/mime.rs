//! MIME for S/MIME (RFC 8551, RFC 1847, RFC 2045/2046, RFC 5322): pure functions from
//! bytes to bytes. No CMS here: callers pass DER in and get entity bytes out.
//!
//! ```text
//!  sign:    input ──prepare_for_signing──► Prepared { outer headers, inner (bytes to sign) }
//!           inner ──(cms, agent)──► p7s DER ──multipart_signed──► message
//!           or opaque/enveloped DER ──pkcs7_mime / write_pkcs7_mime──► message
//!  receive: message ──parse──► MultipartSigned { signed bytes, p7s DER } | Pkcs7Mime { DER }
//!           decrypted/verified inner entity ──reattach_headers──► readable message
//! ```
//!
//! Header fields travel as `(name, value)` pairs; a value is the text after the colon with
//! surrounding whitespace removed and folding kept (CRLF + WSP). Values are written back as
//! they are, so a caller building its own must not put CR or LF in them except as folds.
//!
//! Parsing uses mail-parser (body part offsets give the exact signed bytes; structured
//! header values, RFC 2231, addresses). Writing is by hand: see `build` for why.

mod build;
mod canon;
mod codec;
mod header;
mod parse;
mod spool;
pub mod stream;

pub use spool::{PreparedFile, prepare_file};

#[cfg(test)]
mod tests;

/// Content split for signing: see [`prepare_for_signing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The message header fields (`From`, `To`, `Subject`, `Date`, ...) in input order:
    /// everything except `Content-*` and `MIME-Version`. They stay outside the signature.
    pub outer_headers: Vec<(String, String)>,
    /// The inner MIME entity in canonical form (CRLF, 7-bit safe): the exact bytes to sign
    /// and to embed.
    pub inner: Vec<u8>,
}

/// A parsed incoming message or entity: see [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// multipart/signed (RFC 1847, RFC 8551 §3.5.3).
    MultipartSigned {
        /// All header fields of the message, `Content-*` included.
        headers: Vec<(String, String)>,
        /// The first body part exactly as signed: from its first header octet to just
        /// before the CRLF that precedes the delimiter, in CRLF form.
        signed: Vec<u8>,
        /// The decoded DER of the application/pkcs7-signature part.
        signature: Vec<u8>,
        /// The `micalg` parameter, lower case (e.g. `sha-256`), if present.
        micalg: Option<String>,
    },
    /// application/pkcs7-mime, application/x-pkcs7-mime, or application/octet-stream
    /// named `*.p7m` (RFC 8551 §3.2, §3.2.2).
    Pkcs7Mime {
        /// All header fields of the message, `Content-*` included.
        headers: Vec<(String, String)>,
        /// The `smime-type` parameter as given (`signed-data`, `enveloped-data`,
        /// `authEnveloped-data`, ...), if present.
        smime_type: Option<String>,
        /// The decoded DER (or BER) body.
        der: Vec<u8>,
    },
    /// Not S/MIME.
    Other {
        /// The content type (`type/subtype`, lower case; `text/plain` without one).
        content_type: String,
    },
}

/// What kind of input the CLI was given: see [`sniff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Binary DER/BER (a ContentInfo SEQUENCE).
    Der,
    /// PEM armor (`-----BEGIN ...`).
    Pem,
    /// A MIME entity or RFC 5322 message, or plain text (the fallback).
    Mime,
}

/// Errors from MIME structure.
#[derive(Debug, thiserror::Error)]
pub enum MimeError {
    #[error("{content_type} without a boundary parameter")]
    MissingBoundary { content_type: String },
    #[error("the boundary \"{boundary}\" of {content_type} does not occur in its body")]
    BoundaryNotFound {
        content_type: String,
        boundary: String,
    },
    #[error("{content_type} is cut off: no closing delimiter \"--{boundary}--\"")]
    Unterminated {
        content_type: String,
        boundary: String,
    },
    #[error(
        "multipart/signed with protocol \"{protocol}\" is not S/MIME \
         (expected application/pkcs7-signature)"
    )]
    WrongProtocol { protocol: String },
    #[error(
        "multipart/signed has {parts} body part(s), not 2 (the signed content and \
         the application/pkcs7-signature part)"
    )]
    MissingSignaturePart { parts: usize },
    #[error(
        "the second part of multipart/signed is {content_type}, not application/pkcs7-signature"
    )]
    WrongSignatureType { content_type: String },
    #[error("bad base64 in the {part}: {detail}")]
    BadBase64 { part: &'static str, detail: String },
    #[error("the {part} is empty")]
    EmptyBody { part: &'static str },
    #[error("unsupported Content-Transfer-Encoding \"{encoding}\" for the {part}")]
    UnsupportedEncoding {
        part: &'static str,
        encoding: String,
    },
    #[error("MIME entities nested more than {0} deep")]
    TooDeep(usize),
    #[error("broken MIME structure: {0}")]
    Broken(String),
}

/// Splits an input for signing.
///
/// * An RFC 5322 message (a header section with fields such as `From:`, `Subject:`, ...,
///   then a blank line): the `Content-*` fields and the body become the inner entity,
///   all other fields except `MIME-Version` stay outside.
/// * A bare MIME entity (only `Content-*` fields): it is the inner entity.
/// * No header section: the input is the body of a `text/plain` entity (charset `us-ascii`
///   or `utf-8`, 7bit or quoted-printable); input that is not UTF-8 or holds NUL octets
///   becomes `application/octet-stream` in base64, line ends untouched.
///
/// The inner entity is canonicalized (RFC 8551 §3.1): CRLF line ends throughout, and
/// leaves whose bodies are not 7-bit safe (8-bit or binary octets, lines over 998 octets;
/// for text also trailing whitespace and `From ` lines) are re-encoded, text as
/// quoted-printable and anything else as base64. Nested multipart/signed content is left
/// alone apart from line ends, since it is signed already.
pub fn prepare_for_signing(input: &[u8]) -> Result<Prepared, MimeError> {
    canon::prepare(input)
}

/// A multipart/signed message: the outer header fields, `MIME-Version: 1.0`, then
/// `Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=...`
/// with the inner entity verbatim as the first part and the detached signature
/// (`application/pkcs7-signature; name=smime.p7s`, base64) as the second. The boundary is
/// random and checked not to occur in the inner entity.
pub fn multipart_signed(prep: &Prepared, p7s_der: &[u8], micalg: &str) -> Vec<u8> {
    build::multipart_signed(prep, p7s_der, micalg)
}

/// [`multipart_signed`] streamed: the inner entity is read from `inner` (as prepared by
/// [`prepare_file`]) and the message written to `out`, with a new random boundary (128
/// random bits, so it cannot occur in the content; unlike [`multipart_signed`], the
/// content is not searched for it).
pub fn write_multipart_signed<R: std::io::Read, W: std::io::Write>(
    outer_headers: &[(String, String)],
    inner: R,
    p7s_der: &[u8],
    micalg: &str,
    out: W,
) -> std::io::Result<()> {
    build::write_multipart_signed(
        outer_headers,
        inner,
        &build::new_boundary(),
        p7s_der,
        micalg,
        out,
    )
}

/// An application/pkcs7-mime message (`smime-type=<smime_type>`, `name=smime.p7m`, base64
/// in 76-column lines) after the outer header fields and `MIME-Version: 1.0`.
pub fn pkcs7_mime(outer_headers: &[(String, String)], smime_type: &str, der: &[u8]) -> Vec<u8> {
    build::pkcs7_mime(outer_headers, smime_type, der)
}

/// [`pkcs7_mime`] streamed: reads the DER from `der`, writes the message to `out`.
pub fn write_pkcs7_mime<R: std::io::Read, W: std::io::Write>(
    outer_headers: &[(String, String)],
    smime_type: &str,
    der: R,
    out: W,
) -> std::io::Result<()> {
    build::write_pkcs7_mime(outer_headers, smime_type, der, out)
}

/// Parses an incoming S/MIME message or entity (LF or CRLF line ends).
///
/// For multipart/signed the input is first brought to CRLF form, which is what was signed.
/// Errors are for S/MIME structure that is broken; content that is simply not S/MIME is
/// [`Parsed::Other`].
pub fn parse(input: &[u8]) -> Result<Parsed, MimeError> {
    parse::parse(input)
}

/// Guesses the kind of input from its first octets (a few hundred are plenty): PEM armor,
/// a DER/BER ContentInfo, or otherwise MIME/text.
pub fn sniff(input_prefix: &[u8]) -> InputKind {
    parse::sniff(input_prefix)
}

/// A message from decrypted or verified content: the outer header fields (`Content-*` and
/// `MIME-Version` dropped; those of `inner_entity` apply), `MIME-Version: 1.0` unless the
/// entity has one, then the inner entity verbatim.
pub fn reattach_headers(outer: &[(String, String)], inner_entity: &[u8]) -> Vec<u8> {
    build::reattach_headers(outer, inner_entity)
}

/// [`reattach_headers`] as a stream: the message, read on demand from the inner entity
/// (only its first 64 KiB are looked at for its header section).
pub fn reattached_reader<'a, R: std::io::Read + 'a>(
    outer: &[(String, String)],
    inner: R,
) -> std::io::Result<impl std::io::Read + 'a> {
    build::reattached_reader(outer, inner)
}

/// The addresses in the `From:` field(s), as written (compare case-insensitively).
pub fn from_addresses(headers: &[(String, String)]) -> Vec<String> {
    parse::from_addresses(headers)
}
