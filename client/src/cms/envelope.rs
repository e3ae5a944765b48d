//! The encryption side of S/MIME 4.0 (RFC 8551): CMS `EnvelopedData` (RFC 5652 §6) with
//! AES-CBC and `AuthEnvelopedData` (RFC 5083, RFC 5084) with AES-GCM, written as a stream
//! in constant memory.
//!
//! ```text
//! random CEK ──► one RecipientInfo per recipient certificate
//!                  RSA      → KeyTransRecipientInfo v0 (PKCS#1 v1.5 or RSAES-OAEP)
//!                  P-256/384 → KeyAgreeRecipientInfo v3 (RFC 5753 ephemeral-static ECDH,
//!                             X9.63 KDF, AES key wrap)
//! input ──64 KiB chunks──► AES-CBC/PKCS#7 or streaming AES-GCM ──► BER output
//! ```
//!
//! The output is a BER `ContentInfo`: indefinite lengths for the outer structures and the
//! encrypted content as a constructed `[0] IMPLICIT OCTET STRING` of 64 KiB pieces, the
//! form `openssl cms -encrypt -stream` writes. `recipientInfos` and the algorithm
//! identifiers are DER. OpenSSL (`openssl cms -decrypt -inform DER`) reads it.
//!
//! Nothing holds more than one chunk of content: memory use does not depend on the input
//! size.

mod recipient;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, Read, Write};

use aes::{Aes128, Aes256};
use cms::enveloped_data::RecipientInfo;
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5911;
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Encode as _, Sequence};
use rand::Rng as _;
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::Error;
use super::ber::write_header;
use super::gcm;

/// Largest content AES-GCM can encrypt under one key and nonce: 2^36 − 32 bytes (64 GiB).
pub const GCM_MAX_CONTENT: u64 = gcm::P_MAX;

/// Plaintext bytes per encrypted chunk (one `OCTET STRING` piece of the encrypted content).
pub const ENCRYPT_CHUNK: usize = 64 * 1024;

/// AES block size.
const BLOCK: usize = 16;
/// GCM nonce length (RFC 5084 recommends 12 octets).
const GCM_NONCE_LEN: usize = 12;
/// GCM tag length written as `icvLen` and used for the `mac`.
const GCM_TAG_LEN: usize = 16;

/// The content-encryption algorithm.
///
/// The default is [`ContentCipher::Aes128Gcm`], the AuthEnvelopedData algorithm S/MIME 4.0
/// (RFC 8551 §2.7) makes a MUST for receivers. AES-CBC (`EnvelopedData`) is for
/// correspondents that only speak S/MIME 3.2 (RFC 5751) and do not understand
/// `AuthEnvelopedData`; it is unauthenticated, so prefer GCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ContentCipher {
    /// AES-128-GCM in `AuthEnvelopedData` (RFC 5084); the default.
    #[default]
    Aes128Gcm,
    /// AES-256-GCM in `AuthEnvelopedData`.
    Aes256Gcm,
    /// AES-128-CBC with PKCS#7 padding in `EnvelopedData`.
    Aes128Cbc,
    /// AES-256-CBC with PKCS#7 padding in `EnvelopedData`.
    Aes256Cbc,
}

impl ContentCipher {
    /// All variants, for choosers and tests.
    pub const ALL: [ContentCipher; 4] = [
        ContentCipher::Aes128Gcm,
        ContentCipher::Aes256Gcm,
        ContentCipher::Aes128Cbc,
        ContentCipher::Aes256Cbc,
    ];

    /// The algorithm's object identifier (id-aes128-GCM etc.).
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            ContentCipher::Aes128Gcm => rfc5911::ID_AES_128_GCM,
            ContentCipher::Aes256Gcm => rfc5911::ID_AES_256_GCM,
            ContentCipher::Aes128Cbc => rfc5911::ID_AES_128_CBC,
            ContentCipher::Aes256Cbc => rfc5911::ID_AES_256_CBC,
        }
    }

    /// Content-encryption key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            ContentCipher::Aes128Gcm | ContentCipher::Aes128Cbc => 16,
            ContentCipher::Aes256Gcm | ContentCipher::Aes256Cbc => 32,
        }
    }

    /// Whether this is an AEAD cipher, written as `AuthEnvelopedData`.
    pub fn is_aead(self) -> bool {
        matches!(self, ContentCipher::Aes128Gcm | ContentCipher::Aes256Gcm)
    }

    /// The CMS content type of the result: id-ct-authEnvelopedData for GCM,
    /// id-envelopedData for CBC.
    pub fn content_type(self) -> ObjectIdentifier {
        if self.is_aead() {
            rfc5911::ID_CT_AUTH_ENVELOPED_DATA
        } else {
            rfc5911::ID_ENVELOPED_DATA
        }
    }

    /// The `smime-type` parameter of `application/pkcs7-mime` for the result:
    /// `authEnveloped-data` or `enveloped-data`.
    pub fn smime_type(self) -> &'static str {
        if self.is_aead() {
            "authEnveloped-data"
        } else {
            "enveloped-data"
        }
    }

    /// Short lowercase name, as OpenSSL spells it: `aes-128-gcm` etc.
    pub fn name(self) -> &'static str {
        match self {
            ContentCipher::Aes128Gcm => "aes-128-gcm",
            ContentCipher::Aes256Gcm => "aes-256-gcm",
            ContentCipher::Aes128Cbc => "aes-128-cbc",
            ContentCipher::Aes256Cbc => "aes-256-cbc",
        }
    }
}

impl fmt::Display for ContentCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// RSA key transport for recipients with RSA certificates (ignored for EC recipients).
///
/// The default is PKCS#1 v1.5 (`rsaEncryption`), which every S/MIME receiver must
/// support (RFC 8551 §2.3); RSAES-OAEP is SHOULD+ there. Choose OAEP for receivers known
/// to handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RsaKeyTransport {
    /// RSAES-PKCS1-v1_5 (`rsaEncryption`, NULL parameters).
    #[default]
    Pkcs1v15,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 4055 parameters written explicitly,
    /// empty label).
    OaepSha256,
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1: the all-default parameters, encoded as an empty
    /// SEQUENCE (`30 00`), as OpenSSL writes them.
    OaepSha1,
}

/// One recipient: a certificate whose public key the content-encryption key is
/// encrypted (RSA) or agreed (EC) to.
///
/// RSA certificates (`rsaEncryption`) get a `KeyTransRecipientInfo`; EC certificates on
/// P-256 or P-384 get a `KeyAgreeRecipientInfo`. Both identify the certificate by
/// issuerAndSerialNumber.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The recipient's certificate.
    pub cert: Certificate,
    /// Key transport for RSA certificates; ignored for EC certificates.
    pub rsa: RsaKeyTransport,
}

impl Recipient {
    /// A recipient with the default RSA key transport ([`RsaKeyTransport::Pkcs1v15`]).
    pub fn new(cert: Certificate) -> Self {
        Recipient {
            cert,
            rsa: RsaKeyTransport::default(),
        }
    }
}

/// Encrypts `input` for all `recipients`, writing a BER `ContentInfo` to `output`:
/// `AuthEnvelopedData` (version 0) for the GCM ciphers, `EnvelopedData` otherwise
/// (version 0 when all recipients are RSA, 2 when one is EC).
///
/// Indefinite lengths are used for the outer structures, and the encrypted content is a
/// constructed OCTET STRING of [`ENCRYPT_CHUNK`]-sized pieces. Memory use is constant
/// whatever the input size: the input is read and written one chunk at a time.
///
/// The content type is id-data. A fresh random content-encryption key and IV/nonce are
/// drawn for every call; the key is zeroized afterwards.
///
/// Errors: [`Error::InvalidRequest`] without recipients or for content beyond the GCM
/// limit ([`GCM_MAX_CONTENT`] bytes); [`Error::UnsupportedAlgorithm`] for a certificate
/// key that is neither RSA nor EC on P-256/P-384; [`Error::Malformed`] for an undecodable
/// certificate key; [`Error::Io`] when reading or writing fails (the output is then
/// incomplete and must be discarded).
pub fn encrypt<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    recipients: &[Recipient],
    cipher: ContentCipher,
) -> Result<(), Error> {
    if recipients.is_empty() {
        return Err(Error::InvalidRequest(
            "encryption needs at least one recipient".into(),
        ));
    }
    let mut rng = rand::rng();
    let mut cek = Zeroizing::new(vec![0u8; cipher.key_len()]);
    rng.fill_bytes(&mut cek);

    // Recipient infos first: a bad certificate fails before anything is written.
    let mut infos = Vec::with_capacity(recipients.len());
    for r in recipients {
        infos.push(recipient::recipient_info(r, &cek, cipher, &mut rng)?);
    }
    let any_kari = infos.iter().any(|i| matches!(i, RecipientInfo::Kari(_)));
    let recipient_infos = SetOfVec::try_from(infos)
        .and_then(|s| s.to_der())
        .map_err(build_err)?;

    let mut encryptor = ContentEncryptor::new(cipher, &cek, &mut rng)?;
    let content_alg = encryptor
        .algorithm_identifier(cipher)?
        .to_der()
        .map_err(build_err)?;

    // RFC 5652 §6.1: version 0 when originatorInfo and unprotectedAttrs are absent and all
    // RecipientInfos are v0 (KTRI with issuerAndSerialNumber); KARI (v3) makes it 2.
    // RFC 5083 §2.1: AuthEnvelopedData is always version 0.
    let version: u8 = if cipher.is_aead() || !any_kari { 0 } else { 2 };

    let mut head = Vec::with_capacity(64 + recipient_infos.len() + content_alg.len());
    head.extend_from_slice(&[TAG_SEQUENCE, INDEFINITE]); // ContentInfo
    push_der(&mut head, &cipher.content_type())?;
    head.extend_from_slice(&[TAG_CTX0, INDEFINITE]); // content [0] EXPLICIT
    head.extend_from_slice(&[TAG_SEQUENCE, INDEFINITE]); // (Auth)EnvelopedData
    head.extend_from_slice(&[TAG_INTEGER, 1, version]);
    head.extend_from_slice(&recipient_infos);
    head.extend_from_slice(&[TAG_SEQUENCE, INDEFINITE]); // EncryptedContentInfo
    push_der(&mut head, &rfc5911::ID_DATA)?;
    head.extend_from_slice(&content_alg);
    head.extend_from_slice(&[TAG_CTX0, INDEFINITE]); // encryptedContent [0] IMPLICIT, chunked
    output.write_all(&head)?;

    // One chunk of plaintext plus room for the CBC padding block.
    let mut buf = Zeroizing::new(vec![0u8; ENCRYPT_CHUNK + BLOCK]);
    let mut chunk_head = Vec::with_capacity(8);
    let mut wrote_chunk = false;
    loop {
        let n = read_full(&mut input, buf.get_mut(..ENCRYPT_CHUNK).unwrap_or_default())?;
        let last = n < ENCRYPT_CHUNK;
        let len = encryptor.update(&mut buf, n, last)?;
        if len > 0 || (last && !wrote_chunk) {
            // An empty GCM content still gets one (empty) piece: `A0 80 00 00` alone reads
            // as "no encrypted content" to some parsers.
            let piece = buf.get(..len).unwrap_or_default();
            chunk_head.clear();
            write_header(&mut chunk_head, TAG_OCTET_STRING, piece.len());
            output.write_all(&chunk_head)?;
            output.write_all(piece)?;
            wrote_chunk = true;
        }
        if last {
            break;
        }
    }
    output.write_all(&EOC)?; // encryptedContent
    output.write_all(&EOC)?; // EncryptedContentInfo
    if let Some(tag) = encryptor.finish() {
        // AuthEnvelopedData: authAttrs absent, mac = the GCM tag.
        let mut mac = Vec::with_capacity(2 + tag.len());
        write_header(&mut mac, TAG_OCTET_STRING, tag.len());
        mac.extend_from_slice(&tag);
        output.write_all(&mac)?;
    }
    output.write_all(&EOC)?; // (Auth)EnvelopedData
    output.write_all(&EOC)?; // [0]
    output.write_all(&EOC)?; // ContentInfo
    output.flush()?;
    Ok(())
}

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_CTX0: u8 = 0xA0;
const INDEFINITE: u8 = 0x80;
/// End-of-contents octets closing an indefinite length.
const EOC: [u8; 2] = [0, 0];

fn build_err(e: impl fmt::Display) -> Error {
    Error::Build(e.to_string())
}

fn push_der(out: &mut Vec<u8>, v: &impl der::Encode) -> Result<(), Error> {
    v.encode_to_vec(out).map_err(build_err)?;
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the number of bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `GCMParameters` (RFC 5084 §3.2). `icvLen` has DEFAULT 12; we always write 16.
#[derive(Debug, Clone, Sequence)]
struct GcmParameters {
    nonce: OctetString,
    icv_len: u8,
}

/// The streaming content cipher.
enum ContentEncryptor {
    Cbc128(cbc::Encryptor<Aes128>, [u8; BLOCK]),
    Cbc256(cbc::Encryptor<Aes256>, [u8; BLOCK]),
    Gcm128(Box<gcm::GcmStream<Aes128>>, [u8; GCM_NONCE_LEN]),
    Gcm256(Box<gcm::GcmStream<Aes256>>, [u8; GCM_NONCE_LEN]),
}

impl ContentEncryptor {
    fn new(
        cipher: ContentCipher,
        cek: &[u8],
        rng: &mut impl rand::CryptoRng,
    ) -> Result<Self, Error> {
        use cbc::cipher::KeyIvInit as _;
        let bad_key = |_| Error::Build("content-encryption key of the wrong length".into());
        Ok(match cipher {
            ContentCipher::Aes128Cbc | ContentCipher::Aes256Cbc => {
                let mut iv = [0u8; BLOCK];
                rng.fill_bytes(&mut iv);
                if cipher == ContentCipher::Aes128Cbc {
                    ContentEncryptor::Cbc128(
                        cbc::Encryptor::new_from_slices(cek, &iv).map_err(bad_key)?,
                        iv,
                    )
                } else {
                    ContentEncryptor::Cbc256(
                        cbc::Encryptor::new_from_slices(cek, &iv).map_err(bad_key)?,
                        iv,
                    )
                }
            }
            ContentCipher::Aes128Gcm | ContentCipher::Aes256Gcm => {
                let mut nonce = [0u8; GCM_NONCE_LEN];
                rng.fill_bytes(&mut nonce);
                if cipher == ContentCipher::Aes128Gcm {
                    ContentEncryptor::Gcm128(
                        Box::new(gcm::GcmStream::new(cek, &nonce).map_err(bad_key)?),
                        nonce,
                    )
                } else {
                    ContentEncryptor::Gcm256(
                        Box::new(gcm::GcmStream::new(cek, &nonce).map_err(bad_key)?),
                        nonce,
                    )
                }
            }
        })
    }

    /// `contentEncryptionAlgorithm`: the IV as an OCTET STRING for CBC (RFC 3565), or
    /// `GCMParameters` for GCM (RFC 5084).
    fn algorithm_identifier(
        &self,
        cipher: ContentCipher,
    ) -> Result<AlgorithmIdentifierOwned, Error> {
        let params = match self {
            ContentEncryptor::Cbc128(_, iv) | ContentEncryptor::Cbc256(_, iv) => {
                Any::encode_from(&OctetString::new(iv.as_slice()).map_err(build_err)?)
            }
            ContentEncryptor::Gcm128(_, nonce) | ContentEncryptor::Gcm256(_, nonce) => {
                Any::encode_from(&GcmParameters {
                    nonce: OctetString::new(nonce.as_slice()).map_err(build_err)?,
                    icv_len: GCM_TAG_LEN as u8,
                })
            }
        }
        .map_err(build_err)?;
        Ok(AlgorithmIdentifierOwned {
            oid: cipher.oid(),
            parameters: Some(params),
        })
    }

    /// Encrypts the first `n` bytes of `buf` in place; when `last`, finishes the content
    /// (CBC: PKCS#7 padding, for which `buf` has a spare block). Returns how many bytes of
    /// `buf` are ciphertext to write. Except for the last call, `n` is a multiple of the
    /// block size.
    fn update(&mut self, buf: &mut [u8], n: usize, last: bool) -> Result<usize, Error> {
        match self {
            ContentEncryptor::Cbc128(c, _) => cbc_update(c, buf, n, last),
            ContentEncryptor::Cbc256(c, _) => cbc_update(c, buf, n, last),
            ContentEncryptor::Gcm128(g, _) => {
                g.encrypt(buf.get_mut(..n).unwrap_or_default())?;
                Ok(n)
            }
            ContentEncryptor::Gcm256(g, _) => {
                g.encrypt(buf.get_mut(..n).unwrap_or_default())?;
                Ok(n)
            }
        }
    }

    /// The GCM tag (`None` for CBC).
    fn finish(self) -> Option<[u8; GCM_TAG_LEN]> {
        match self {
            ContentEncryptor::Cbc128(..) | ContentEncryptor::Cbc256(..) => None,
            ContentEncryptor::Gcm128(g, _) => Some(g.finish()),
            ContentEncryptor::Gcm256(g, _) => Some(g.finish()),
        }
    }
}

fn cbc_update<C>(
    enc: &mut cbc::Encryptor<C>,
    buf: &mut [u8],
    n: usize,
    last: bool,
) -> Result<usize, Error>
where
    C: aes::cipher::BlockCipherEncrypt
        + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
{
    use aes::cipher::BlockModeEncrypt as _;
    use aes::cipher::array::Array;
    let len = if last {
        // PKCS#7: 1..=16 bytes, each holding the pad length.
        let pad = BLOCK - n % BLOCK;
        buf.get_mut(n..n + pad)
            .ok_or_else(|| Error::Build("CBC buffer too small for padding".into()))?
            .fill(pad as u8);
        n + pad
    } else {
        n
    };
    let data = buf
        .get_mut(..len)
        .ok_or_else(|| Error::Build("CBC chunk out of range".into()))?;
    let (blocks, rest) = Array::<u8, aes::cipher::consts::U16>::slice_as_chunks_mut(data);
    if !rest.is_empty() {
        return Err(Error::Build(
            "CBC chunk is not a whole number of blocks".into(),
        ));
    }
    enc.encrypt_blocks(blocks);
    Ok(len)
}
