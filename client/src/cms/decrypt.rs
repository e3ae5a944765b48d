//! Decryption of CMS `EnvelopedData` (RFC 5652 §6) and `AuthEnvelopedData` (RFC 5083)
//! whose private-key step happens elsewhere (the agent, through a [`KeyUnwrapper`]).
//!
//! ```text
//! input ──BER, streamed──► ContentInfo ─► (Auth)EnvelopedData
//!   recipientInfos (≤ 16 MiB, decoded) ─► our RecipientInfo (issuerAndSerialNumber or SKI)
//!       KTRI: agent RSA-decrypts encryptedKey (PKCS#1 v1.5 / OAEP)        ─► CEK
//!       KARI: agent ECDH(originatorKey) = Z ─► X9.63 KDF ─► KEK ─► AES unwrap ─► CEK
//!   encryptedContent (primitive or chunked, any size) ─► AES-CBC / 3DES-CBC / AES-GCM ─► output
//!   authAttrs (AAD) + mac ─► GCM tag check
//! ```
//!
//! Memory use does not depend on the content size: the content is read and decrypted in
//! pieces of at most 64 KiB. Only `recipientInfos`, the algorithm identifiers and (for
//! AuthEnvelopedData) `authAttrs` and `mac` are held in memory, each under a size limit.
//!
//! **Plaintext is written before it is authenticated.** The GCM tag is only known at the
//! end and the CBC padding only with the last block; when [`decrypt`] fails, whatever it
//! wrote must be thrown away (write to a temporary file, rename only on `Ok`).

mod content;
mod recipient;

#[cfg(test)]
mod tests;

use std::io::{Read, Write};

use const_oid::ObjectIdentifier;
use der::Decode as _;
use smime_proto::{DecryptAlgorithm, SecretBytes};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;

use super::ber::{
    TAG_CTX0, TAG_OCTET_STRING, TAG_OCTET_STRING_CONSTRUCTED, TAG_SEQUENCE, TAG_SET, Tlv,
};
use super::stream::{Frame, Reader, stream_octets};
use super::{Error, gcm, malformed};
use content::ContentAlg;

/// Largest `recipientInfos` accepted (it is held in memory).
pub const MAX_RECIPIENT_INFOS: usize = 16 << 20;
/// Largest `authAttrs` / `unprotectedAttrs`-like in-memory element accepted.
const MAX_ATTRS: usize = 1 << 20;
/// Largest algorithm identifier or OID accepted.
const MAX_SMALL: usize = 64 << 10;

/// What the agent does: the private-key half of decryption.
pub trait KeyUnwrapper {
    /// The unwrapper's error, kept as the source of [`Error::Unwrapper`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// RSA-decrypt a wrapped content key with the key `key` (an index into the `keys`
    /// slice given to [`decrypt`]). `wrapped` is exactly the modulus length.
    fn decrypt_key(
        &self,
        key: usize,
        alg: DecryptAlgorithm,
        wrapped: &[u8],
    ) -> Result<SecretBytes, Self::Error>;

    /// ECDH: return Z (the x coordinate of the shared point) for the peer's uncompressed
    /// SEC1 point (validated to lie on the key's curve).
    fn ecdh(&self, key: usize, peer_point: &[u8]) -> Result<SecretBytes, Self::Error>;
}

/// The result of a successful [`decrypt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The content type inside (`encryptedContentInfo.contentType`), usually id-data.
    pub content_type: ObjectIdentifier,
    /// The content cipher, OpenSSL-style: `aes-128-gcm`, `aes-256-cbc`, `des-ede3-cbc`, …
    pub cipher: &'static str,
    /// Index into `keys` of the key that opened the message.
    pub recipient: usize,
    /// Whether the content was authenticated (AuthEnvelopedData with a good GCM tag).
    /// CBC content (EnvelopedData) is not: it can be altered without detection.
    pub authenticated: bool,
}

/// Decrypts a `ContentInfo` holding `EnvelopedData` or `AuthEnvelopedData` (DER or BER,
/// read from `input` as a stream) and writes the content to `output`.
///
/// `keys` are the certificates of the keys `unwrapper` holds; the `RecipientInfo` is
/// found by issuerAndSerialNumber or subjectKeyIdentifier (KTRI `rid`, KARI
/// `rKeyId`/`issuerAndSerialNumber`). When several match, they are tried in the order of
/// the message.
///
/// Content ciphers: AES-128/192/256-CBC and 3DES-CBC (EnvelopedData), AES-128/192/256-GCM
/// (AuthEnvelopedData). Key transport: `rsaEncryption`, `id-RSAES-OAEP` with SHA-1/256/
/// 384/512 (MGF1 over the same hash, empty label). Key agreement (RFC 5753):
/// `dhSinglePass-stdDH-sha{1,224,256,384,512}kdf-scheme` (and the cofactor variants) with
/// aes{128,192,256}-wrap on P-256 and P-384.
///
/// **Contract:** on `Err` the caller must discard everything written to `output` — for
/// GCM the tag is only checked at the end, for CBC the padding with the last block.
///
/// Errors: [`Error::NotEnveloped`] for another content type (e.g. SignedData);
/// [`Error::NotForUs`] when no recipient matches `keys` (listing the recipients);
/// [`Error::Unwrapper`] when the agent fails; [`Error::WrongKey`] when the key cannot be
/// recovered; [`Error::TagMismatch`]; [`Error::BadPadding`]; [`Error::Truncated`];
/// [`Error::UnsupportedAlgorithm`] naming the OID; [`Error::Malformed`] (also for an
/// in-memory part over its size limit, e.g. `recipientInfos` over
/// [`MAX_RECIPIENT_INFOS`]); [`Error::Io`] for read/write failures.
pub fn decrypt<R: Read, W: Write, U: KeyUnwrapper>(
    input: R,
    mut output: W,
    keys: &[Certificate],
    unwrapper: &U,
) -> Result<Decrypted, Error> {
    let mut rd = Reader::new(input);

    // ContentInfo ::= SEQUENCE { contentType, content [0] EXPLICIT }
    let first = rd.peek_tag("ContentInfo")?;
    if first != TAG_SEQUENCE {
        return Err(malformed(format!(
            "not a DER/BER ContentInfo (first byte {first:#04x}, expected 0x30){}",
            if first == b'-' || first.is_ascii_alphanumeric() {
                "; PEM/base64 input must be decoded first"
            } else {
                ""
            }
        )));
    }
    let ci = rd.expect(Frame::TOP, TAG_SEQUENCE, "ContentInfo")?;
    let ci_f = rd.frame(&ci);
    let content_type = read_oid(&mut rd, ci_f, "ContentInfo contentType")?;
    let auth = if content_type == oids::ENVELOPED_DATA {
        false
    } else if content_type == oids::AUTH_ENVELOPED_DATA {
        true
    } else {
        return Err(Error::NotEnveloped(content_type));
    };
    let what = if auth {
        "AuthEnvelopedData"
    } else {
        "EnvelopedData"
    };
    let c0 = rd.expect(ci_f, TAG_CTX0, "ContentInfo content")?;
    let c0_f = rd.frame(&c0);
    let ed = rd.expect(c0_f, TAG_SEQUENCE, what)?;
    let ed_f = rd.frame(&ed);

    // version, originatorInfo [0] OPTIONAL (skipped: certificates/CRLs are not needed)
    let version = rd.element(ed_f, 16, "version")?;
    if version.first() != Some(&0x02) {
        return Err(malformed(format!("{what}: version is not an INTEGER")));
    }
    if rd.peek_tag(what)? == TAG_CTX0 {
        let h = rd.header(ed_f, "originatorInfo")?;
        rd.skip(h, "originatorInfo")?;
    }

    // recipientInfos
    if rd.peek_tag(what)? != TAG_SET {
        return Err(malformed(format!("{what}: recipientInfos (SET) missing")));
    }
    let ris_raw = rd.element(ed_f, MAX_RECIPIENT_INFOS, "recipientInfos")?;
    let ris = recipient::parse_recipient_infos(&ris_raw)?;
    drop(ris_raw);

    // EncryptedContentInfo: contentType, contentEncryptionAlgorithm, [0] content
    let eci = rd.expect(ed_f, TAG_SEQUENCE, "EncryptedContentInfo")?;
    let eci_f = rd.frame(&eci);
    let inner_type = read_oid(&mut rd, eci_f, "EncryptedContentInfo contentType")?;
    let alg_raw = rd.element(eci_f, MAX_SMALL, "contentEncryptionAlgorithm")?;
    let alg = AlgorithmIdentifierOwned::from_der(&Tlv::parse_exact(&alg_raw)?.to_der()?)
        .map_err(|e| malformed(format!("contentEncryptionAlgorithm: {e}")))?;
    let content_alg = ContentAlg::from_alg(&alg, auth)?;

    // Only now bother the agent: everything needed to decrypt is understood.
    let our = recipient::our_keys(keys);
    let (recipient, cek) = recipient::recover_cek(&ris, &our, unwrapper, content_alg.key_len())?;
    let mut decryptor = content_alg.decryptor(&cek)?;
    drop(cek);

    if rd.at_end(eci_f, "EncryptedContentInfo")? {
        return Err(malformed(
            "encryptedContent is absent (detached encrypted content is not supported)",
        ));
    }
    let h = rd.header(eci_f, "encryptedContent")?;
    match h.tag {
        // [0] IMPLICIT OCTET STRING, primitive or constructed.
        0x80 | TAG_CTX0 => {}
        t => {
            return Err(malformed(format!(
                "encryptedContent: expected tag 0x80 or 0xa0, found {t:#04x}"
            )));
        }
    }
    stream_octets(&mut rd, h, "encryptedContent", &mut |piece| {
        decryptor.update(piece, &mut output)
    })?;
    rd.close(eci_f, "EncryptedContentInfo")?;

    // Trailer: EnvelopedData: unprotectedAttrs [1] OPTIONAL.
    // AuthEnvelopedData: authAttrs [1] OPTIONAL, mac, unauthAttrs [2] OPTIONAL.
    let mut aad = Vec::new();
    let mut mac = Vec::new();
    if auth {
        if rd.peek_tag(what)? == 0xA1 {
            let raw = rd.element(ed_f, MAX_ATTRS, "authAttrs")?;
            // AAD = DER of the attributes with the SET OF tag (RFC 5083 §2.2).
            aad = Tlv::parse_exact(&raw)?.to_der()?;
            if let Some(t) = aad.first_mut() {
                *t = TAG_SET;
            }
        }
        let raw = rd.element(ed_f, 256, "mac")?;
        let tlv = Tlv::parse_exact(&raw)?;
        if tlv.tag != TAG_OCTET_STRING && tlv.tag != TAG_OCTET_STRING_CONSTRUCTED {
            return Err(malformed("AuthEnvelopedData: mac is not an OCTET STRING"));
        }
        mac = tlv.octet_string_chunks()?.concat();
        if mac.len() != content_alg.icv_len() {
            return Err(malformed(format!(
                "mac of {} bytes, icvLen says {}",
                mac.len(),
                content_alg.icv_len()
            )));
        }
        if !rd.at_end(ed_f, what)? {
            let h = rd.header(ed_f, "unauthAttrs")?;
            if h.tag != 0xA2 {
                return Err(malformed(format!(
                    "{what}: unexpected element {:#04x} after mac",
                    h.tag
                )));
            }
            rd.skip(h, "unauthAttrs")?;
        }
    } else if !rd.at_end(ed_f, what)? {
        let h = rd.header(ed_f, "unprotectedAttrs")?;
        if h.tag != 0xA1 {
            return Err(malformed(format!(
                "{what}: unexpected element {:#04x} after encryptedContentInfo",
                h.tag
            )));
        }
        rd.skip(h, "unprotectedAttrs")?;
    }
    rd.close(ed_f, what)?;
    rd.close(c0_f, "ContentInfo content")?;
    rd.close(ci_f, "ContentInfo")?;

    decryptor.finish(&aad, &mac, &mut output)?;
    output.flush()?;
    Ok(Decrypted {
        content_type: inner_type,
        cipher: content_alg.name(),
        recipient,
        authenticated: auth,
    })
}

/// Reads a whole OBJECT IDENTIFIER element.
fn read_oid<R: Read>(
    rd: &mut Reader<R>,
    parent: Frame,
    what: &str,
) -> Result<ObjectIdentifier, Error> {
    let raw = rd.element(parent, 256, what)?;
    ObjectIdentifier::from_der(&raw).map_err(|e| malformed(format!("{what}: {e}")))
}

/// Object identifiers used here (spelled out: several are missing from the OID database
/// or have awkward names there).
mod oids {
    use const_oid::ObjectIdentifier as Oid;

    pub(super) const ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.3");
    pub(super) const AUTH_ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.1.23");

    pub(super) const AES_128_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.2");
    pub(super) const AES_192_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.22");
    pub(super) const AES_256_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.42");
    pub(super) const DES_EDE3_CBC: Oid = Oid::new_unwrap("1.2.840.113549.3.7");
    pub(super) const AES_128_GCM: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.6");
    pub(super) const AES_192_GCM: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.26");
    pub(super) const AES_256_GCM: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.46");

    pub(super) const AES_128_WRAP: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.5");
    pub(super) const AES_192_WRAP: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.25");
    pub(super) const AES_256_WRAP: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.45");

    pub(super) const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    pub(super) const RSAES_OAEP: Oid = Oid::new_unwrap("1.2.840.113549.1.1.7");
    pub(super) const MGF1: Oid = Oid::new_unwrap("1.2.840.113549.1.1.8");
    pub(super) const P_SPECIFIED: Oid = Oid::new_unwrap("1.2.840.113549.1.1.9");
    pub(super) const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
    pub(super) const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub(super) const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub(super) const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");

    pub(super) const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    pub(super) const SECP256R1: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
    pub(super) const SECP384R1: Oid = Oid::new_unwrap("1.3.132.0.34");

    // RFC 5753 §7.1.4 key-agreement schemes (X9.63 KDF hash in the name).
    pub(super) const STD_DH_SHA1KDF: Oid = Oid::new_unwrap("1.3.133.16.840.63.0.2");
    pub(super) const STD_DH_SHA224KDF: Oid = Oid::new_unwrap("1.3.132.1.11.0");
    pub(super) const STD_DH_SHA256KDF: Oid = Oid::new_unwrap("1.3.132.1.11.1");
    pub(super) const STD_DH_SHA384KDF: Oid = Oid::new_unwrap("1.3.132.1.11.2");
    pub(super) const STD_DH_SHA512KDF: Oid = Oid::new_unwrap("1.3.132.1.11.3");
    pub(super) const COFACTOR_DH_SHA1KDF: Oid = Oid::new_unwrap("1.3.133.16.840.63.0.3");
    pub(super) const COFACTOR_DH_SHA224KDF: Oid = Oid::new_unwrap("1.3.132.1.14.0");
    pub(super) const COFACTOR_DH_SHA256KDF: Oid = Oid::new_unwrap("1.3.132.1.14.1");
    pub(super) const COFACTOR_DH_SHA384KDF: Oid = Oid::new_unwrap("1.3.132.1.14.2");
    pub(super) const COFACTOR_DH_SHA512KDF: Oid = Oid::new_unwrap("1.3.132.1.14.3");
}
