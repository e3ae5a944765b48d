//! An attached (opaque) SignedData taken apart as a stream: the encapsulated content goes
//! to a sink as it arrives, and the rest (version, algorithms, certificates, CRLs,
//! signerInfos, all small) comes back re-assembled as a *detached* SignedData.
//!
//! This lets `smime verify` check an opaque-signed message of any size in constant memory:
//! the content is spooled to a temporary file, then verified like a detached signature
//! over that file. The signed bytes are the same either way (the signature covers the
//! content octets and the signed attributes, not the encoding of the envelope).

use std::io::{Read, Write};

use const_oid::ObjectIdentifier;
use der::Decode as _;

use super::ber::{
    TAG_CTX0, TAG_OCTET_STRING, TAG_OCTET_STRING_CONSTRUCTED, TAG_SEQUENCE, write_header,
};
use super::stream::{Frame, Reader, stream_octets};
use super::{Error, malformed, oid_name};

/// id-signedData.
const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");

/// Largest size of everything after the content (certificates, CRLs, signerInfos).
pub const MAX_REST: usize = 16 << 20;

/// A SignedData with its content taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// A detached SignedData `ContentInfo` (DER framing around the original elements).
    pub cms: Vec<u8>,
    /// Whether the input carried content (`eContent`); if not, it was detached already.
    pub had_content: bool,
}

fn wrap(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    write_header(&mut out, tag, body.len());
    out.extend_from_slice(body);
    out
}

/// Reads a SignedData `ContentInfo` (DER or BER) from `input`, writes its encapsulated
/// content to `content` piece by piece, and returns the signature without it.
///
/// Errors: [`Error::Malformed`] for another content type or a broken structure (also for
/// more than [`MAX_REST`] bytes after the content, or data after the `ContentInfo` other
/// than whitespace), [`Error::Truncated`], [`Error::Io`] from reading or from `content`.
/// On error, whatever went to `content` must be thrown away.
pub fn detach<R: Read>(input: R, content: &mut dyn Write) -> Result<Detached, Error> {
    let mut rd = Reader::new(input);
    let first = rd.peek_tag("ContentInfo")?;
    if first != TAG_SEQUENCE {
        return Err(malformed(format!(
            "not a DER/BER ContentInfo (first byte {first:#04x}, expected 0x30)"
        )));
    }
    let h = rd.expect(Frame::TOP, TAG_SEQUENCE, "ContentInfo")?;
    let ci = rd.frame(&h);
    let content_type = rd.element(ci, 256, "contentType")?;
    let oid = ObjectIdentifier::from_der(&content_type)
        .map_err(|e| malformed(format!("contentType: {e}")))?;
    if oid != SIGNED_DATA {
        return Err(malformed(format!(
            "not a signed message: the content type is {}",
            oid_name(&oid)
        )));
    }
    let h = rd.expect(ci, TAG_CTX0, "ContentInfo content")?;
    let c0 = rd.frame(&h);
    let h = rd.expect(c0, TAG_SEQUENCE, "SignedData")?;
    let sd = rd.frame(&h);
    let version = rd.element(sd, 16, "SignedData version")?;
    let digest_algs = rd.element(sd, 64 << 10, "digestAlgorithms")?;
    let h = rd.expect(sd, TAG_SEQUENCE, "encapContentInfo")?;
    let eci = rd.frame(&h);
    let econtent_type = rd.element(eci, 256, "eContentType")?;
    let mut had_content = false;
    if !rd.at_end(eci, "encapContentInfo")? {
        let h = rd.expect(eci, TAG_CTX0, "eContent")?;
        let e0 = rd.frame(&h);
        let h = rd.header(e0, "eContent")?;
        if h.tag != TAG_OCTET_STRING && h.tag != TAG_OCTET_STRING_CONSTRUCTED {
            return Err(malformed(format!(
                "eContent: expected OCTET STRING, found tag {:#04x}",
                h.tag
            )));
        }
        stream_octets(&mut rd, h, "eContent", &mut |piece| {
            content.write_all(piece).map_err(Error::Io)
        })?;
        rd.close(e0, "eContent")?;
        had_content = true;
    }
    rd.close(eci, "encapContentInfo")?;
    let mut rest = Vec::new();
    while !rd.at_end(sd, "SignedData")? {
        let limit = MAX_REST.saturating_sub(rest.len());
        rest.extend(rd.element(sd, limit, "SignedData certificates and signerInfos")?);
    }
    rd.close(sd, "SignedData")?;
    rd.close(c0, "ContentInfo content")?;
    rd.close(ci, "ContentInfo")?;
    if !rd.only_padding_left()? {
        return Err(malformed("garbage after the ContentInfo"));
    }
    content.flush()?;

    let signed_data = wrap(
        TAG_SEQUENCE,
        &[
            version,
            digest_algs,
            wrap(TAG_SEQUENCE, &econtent_type),
            rest,
        ]
        .concat(),
    );
    let cms = wrap(
        TAG_SEQUENCE,
        &[content_type, wrap(TAG_CTX0, &signed_data)].concat(),
    );
    Ok(Detached { cms, had_content })
}
