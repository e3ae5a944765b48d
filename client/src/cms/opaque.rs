//! Attached ("opaque") SignedData, written as a stream.
//!
//! The signed attributes (contentType, messageDigest, …) are the same whether the content
//! travels inside the SignedData or beside it, so an attached signature is the detached
//! one from [`super::sign::sign_detached`] with the content spliced into its
//! `encapContentInfo`. Splicing lets the content stream through in constant memory:
//!
//! ```text
//! 30 80  ContentInfo
//!   06 …   id-signedData
//!   A0 80  [0] EXPLICIT
//!     30 80  SignedData
//!       02 01 01            version (as signed)
//!       31 …                digestAlgorithms (as signed)
//!       30 80  EncapsulatedContentInfo
//!         06 09 …id-data
//!         A0 80  [0] EXPLICIT eContent
//!           24 80  OCTET STRING, constructed
//!             04 len chunk … (64 KiB each)
//!           00 00
//!         00 00
//!       00 00
//!       A0 … certificates, A1 … crls (as signed)
//!       31 …  signerInfos (as signed)
//!     00 00
//!   00 00
//! 00 00
//! ```

use std::io::{Read, Write};

use super::ber::{TAG_CTX0, TAG_OCTET_STRING, TAG_SEQUENCE, TAG_SET, Tlv, write_header};
use super::{Error, malformed};

const INDEFINITE: u8 = 0x80;
const TAG_OCTET_STRING_CONSTRUCTED: u8 = 0x24;
const EOC: [u8; 2] = [0, 0];
/// Content chunk size inside the constructed OCTET STRING.
pub const CHUNK: usize = 64 * 1024;

/// Writes the attached form of `detached` (a detached SignedData ContentInfo, DER or BER)
/// carrying `content`. The content must be what the signature's messageDigest covers;
/// nothing here re-hashes it.
///
/// # Errors
/// [`Error::Malformed`] if `detached` is not a detached SignedData, [`Error::Io`] on read
/// or write failure (the output is then incomplete and must be discarded).
pub fn write_attached<R: Read, W: Write>(
    detached: &[u8],
    mut content: R,
    mut out: W,
) -> Result<(), Error> {
    let ci = Tlv::parse_exact(detached)?.expect(TAG_SEQUENCE, "ContentInfo")?;
    let [ct, wrapped] = ci.children()?[..] else {
        return Err(malformed("ContentInfo has not two elements"));
    };
    let sd = wrapped
        .expect(TAG_CTX0, "ContentInfo content")?
        .children()?;
    let [sd] = sd[..] else {
        return Err(malformed("ContentInfo content is not one element"));
    };
    let parts = sd.expect(TAG_SEQUENCE, "SignedData")?.children()?;
    let [version, digest_algs, eci, rest @ ..] = &parts[..] else {
        return Err(malformed("SignedData is too short"));
    };
    digest_algs.expect(TAG_SET, "digestAlgorithms")?;
    let eci_parts = eci.expect(TAG_SEQUENCE, "encapContentInfo")?.children()?;
    let [econtent_type] = eci_parts[..] else {
        return Err(malformed("the signature already carries its content"));
    };
    let mut head =
        Vec::with_capacity(ct.raw.len() + version.raw.len() + digest_algs.raw.len() + 32);
    head.extend_from_slice(&[TAG_SEQUENCE, INDEFINITE]);
    head.extend_from_slice(ct.raw);
    head.extend_from_slice(&[TAG_CTX0, INDEFINITE, TAG_SEQUENCE, INDEFINITE]);
    head.extend_from_slice(version.raw);
    head.extend_from_slice(digest_algs.raw);
    head.extend_from_slice(&[TAG_SEQUENCE, INDEFINITE]);
    head.extend_from_slice(econtent_type.raw);
    head.extend_from_slice(&[
        TAG_CTX0,
        INDEFINITE,
        TAG_OCTET_STRING_CONSTRUCTED,
        INDEFINITE,
    ]);
    out.write_all(&head)?;
    let mut buf = vec![0u8; CHUNK];
    let mut chunk_head = Vec::with_capacity(8);
    loop {
        let n = read_full(&mut content, &mut buf)?;
        if n > 0 {
            chunk_head.clear();
            write_header(&mut chunk_head, TAG_OCTET_STRING, n);
            out.write_all(&chunk_head)?;
            out.write_all(buf.get(..n).unwrap_or_default())?;
        }
        if n < CHUNK {
            break;
        }
    }
    out.write_all(&[0, 0, 0, 0, 0, 0])?; // OCTET STRING, [0], EncapsulatedContentInfo
    for t in rest {
        out.write_all(t.raw)?; // certificates, crls, signerInfos as signed
    }
    out.write_all(&EOC)?; // SignedData
    out.write_all(&EOC)?; // [0]
    out.write_all(&EOC)?; // ContentInfo
    out.flush()?;
    Ok(())
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
