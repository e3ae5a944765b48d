//! CMS (RFC 5652) `SignedData`: building detached signatures whose private-key operation
//! happens elsewhere (the agent), and verifying signatures made by anyone.
//!
//! * [`sign`]: [`sign::sign_detached`] builds a detached `SignedData` around a content
//!   digest the caller computed (with [`digest_reader`]); a [`sign::DigestSigner`] (the
//!   agent) signs the digest of the signed attributes.
//! * [`verify`]: [`verify::verify_detached`] checks DER or BER (`openssl cms -stream`)
//!   input, detached or with encapsulated content.
//!
//! Shared here: the [`HashAlg`] choice, a streaming [`Hasher`], [`digest_reader`] and the
//! module's [`Error`].

pub mod decrypt;
pub mod envelope;
pub mod opaque;
pub mod sign;
pub mod verify;

mod alg;
pub(crate) mod ber;
pub mod detach;
mod gcm;
pub(crate) mod pem;
mod stream;
pub use pem::{decode_pem, write_pem};

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, Read};
use std::time::SystemTime;

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5912;
use sha2::Digest as _;
use spki::AlgorithmIdentifierOwned;

/// Size of the buffer [`digest_reader`] streams through.
pub const DIGEST_CHUNK: usize = 64 * 1024;

/// Digest algorithm used for content and signed attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-256 (the default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA-1: only to verify legacy DSA signatures (dsaWithSHA1). [`HashAlg::from_oid`] does
    /// not return it, and nothing signs with it.
    Sha1,
}

impl HashAlg {
    /// The algorithm's object identifier (id-sha256 etc.).
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            HashAlg::Sha256 => rfc5912::ID_SHA_256,
            HashAlg::Sha384 => rfc5912::ID_SHA_384,
            HashAlg::Sha512 => rfc5912::ID_SHA_512,
            HashAlg::Sha1 => rfc5912::ID_SHA_1,
        }
    }

    /// The algorithm for an object identifier, if it is one of ours.
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512]
            .into_iter()
            .find(|h| h.oid() == *oid)
    }

    /// Short lowercase name, as OpenSSL spells it: `sha256`, `sha384`, `sha512`.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
            HashAlg::Sha1 => "sha1",
        }
    }

    /// The name used in the `micalg` parameter of `multipart/signed` (RFC 5751 §3.4.3.2):
    /// `sha-256`, `sha-384`, `sha-512`.
    pub fn micalg(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha-256",
            HashAlg::Sha384 => "sha-384",
            HashAlg::Sha512 => "sha-512",
            HashAlg::Sha1 => "sha-1",
        }
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
            HashAlg::Sha1 => 20,
        }
    }

    /// The `AlgorithmIdentifier` for CMS `digestAlgorithm` fields: parameters absent, as
    /// RFC 5754 §2 asks of writers.
    pub fn algorithm_identifier(self) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: self.oid(),
            parameters: None,
        }
    }

    /// A fresh streaming hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }

    /// One-shot digest of an in-memory buffer.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut h = self.hasher();
        h.update(data);
        h.finalize()
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Incremental hasher for a [`HashAlg`]. Also an [`io::Write`], so `io::copy` can feed it.
#[derive(Debug, Clone)]
pub struct Hasher(HasherInner);

#[derive(Debug, Clone)]
enum HasherInner {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Sha1(sha1::Sha1),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(alg: HashAlg) -> Self {
        Hasher(match alg {
            HashAlg::Sha256 => HasherInner::Sha256(sha2::Sha256::new()),
            HashAlg::Sha384 => HasherInner::Sha384(sha2::Sha384::new()),
            HashAlg::Sha512 => HasherInner::Sha512(sha2::Sha512::new()),
            HashAlg::Sha1 => HasherInner::Sha1(sha1::Sha1::new()),
        })
    }

    /// Which algorithm this hasher computes.
    pub fn algorithm(&self) -> HashAlg {
        match self.0 {
            HasherInner::Sha256(_) => HashAlg::Sha256,
            HasherInner::Sha384(_) => HashAlg::Sha384,
            HasherInner::Sha512(_) => HashAlg::Sha512,
            HasherInner::Sha1(_) => HashAlg::Sha1,
        }
    }

    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherInner::Sha256(h) => h.update(data),
            HasherInner::Sha384(h) => h.update(data),
            HasherInner::Sha512(h) => h.update(data),
            HasherInner::Sha1(h) => h.update(data),
        }
    }

    /// Finishes and returns the digest ([`HashAlg::output_len`] bytes).
    pub fn finalize(self) -> Vec<u8> {
        match self.0 {
            HasherInner::Sha256(h) => h.finalize().to_vec(),
            HasherInner::Sha384(h) => h.finalize().to_vec(),
            HasherInner::Sha512(h) => h.finalize().to_vec(),
            HasherInner::Sha1(h) => h.finalize().to_vec(),
        }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Digests everything `r` yields, reading in [`DIGEST_CHUNK`] (64 KiB) pieces, so memory
/// use stays constant whatever the content size.
pub fn digest_reader<R: Read>(hash: HashAlg, r: R) -> io::Result<Vec<u8>> {
    let mut out = digest_reader_multi(&[hash], r)?;
    out.pop()
        .ok_or_else(|| io::Error::other("no digest computed"))
}

/// Like [`digest_reader`], for several algorithms in one pass (results in input order).
pub(crate) fn digest_reader_multi<R: Read>(algs: &[HashAlg], mut r: R) -> io::Result<Vec<Vec<u8>>> {
    let mut hashers: Vec<Hasher> = algs.iter().map(|a| a.hasher()).collect();
    let mut buf = vec![0u8; DIGEST_CHUNK];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let chunk = buf.get(..n).unwrap_or(&[]);
                for h in &mut hashers {
                    h.update(chunk);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hashers.into_iter().map(Hasher::finalize).collect())
}

/// The point in time a certificate validity check was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckedAt {
    /// The verification time (`now`).
    Now,
    /// The `signingTime` signed attribute.
    SigningTime,
}

impl fmt::Display for CheckedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckedAt::Now => "now",
            CheckedAt::SigningTime => "at signing time",
        })
    }
}

/// Errors of CMS signing and verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is not well-formed CMS (or a field has an unexpected shape).
    #[error("malformed CMS: {0}")]
    Malformed(String),

    /// An algorithm (digest, signature, curve, key type) this code does not handle.
    #[error("unsupported algorithm {}", oid_name(.0))]
    UnsupportedAlgorithm(ObjectIdentifier),

    /// The caller asked for something inconsistent, e.g. PSS with an EC key, or a digest
    /// of the wrong length.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The private-key holder (agent) failed; the original error is kept as the source.
    #[error("signer failed: {0}")]
    Signer(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The signature the signer returned does not verify with the certificate's public
    /// key: the key and certificate do not belong together.
    #[error("the signature made by the signer does not match the certificate's public key")]
    SignerKeyMismatch,

    /// A signature does not verify.
    #[error("bad signature: signature does not verify with the signer certificate")]
    BadSignature,

    /// The content's digest differs from the signed `messageDigest` attribute.
    #[error("content digest does not match the signed messageDigest attribute (content altered?)")]
    DigestMismatch,

    /// The signed `contentType` attribute differs from `eContentType`.
    #[error("contentType attribute {} does not match eContentType {}", oid_name(.attribute), oid_name(.econtent))]
    ContentTypeMismatch {
        /// Value of the signed attribute.
        attribute: ObjectIdentifier,
        /// The `eContentType` of the `SignedData`.
        econtent: ObjectIdentifier,
    },

    /// A detached signature was given without the signed content.
    #[error("detached signature: the signed content must be supplied")]
    MissingContent,

    /// No certificate in the message (or the trust list) matches the signer identifier.
    #[error("signer certificate not found (no certificate matches the SignerInfo sid)")]
    SignerCertNotFound,

    /// The signer certificate had expired at the checked time.
    #[error("signer certificate expired {which}: checked {}, notAfter {}", fmt_time(*.when), fmt_time(*.not_after))]
    CertExpired {
        /// Which check failed.
        which: CheckedAt,
        /// The instant that was checked.
        when: SystemTime,
        /// The certificate's notAfter.
        not_after: SystemTime,
    },

    /// The signer certificate was not yet valid at the checked time.
    #[error("signer certificate not yet valid {which}: checked {}, notBefore {}", fmt_time(*.when), fmt_time(*.not_before))]
    CertNotYetValid {
        /// Which check failed.
        which: CheckedAt,
        /// The instant that was checked.
        when: SystemTime,
        /// The certificate's notBefore.
        not_before: SystemTime,
    },

    /// Trust anchors were given and the signer certificate does not chain to one.
    #[error("untrusted: {0}")]
    Untrusted(String),

    /// Building the structure failed (encoding error inside the CMS builder).
    #[error("building CMS failed: {0}")]
    Build(String),

    /// Decryption: the input is a ContentInfo of another type (e.g. SignedData), not
    /// EnvelopedData or AuthEnvelopedData.
    #[error("not an encrypted message: the input is {}, not EnvelopedData or AuthEnvelopedData", oid_name(.0))]
    NotEnveloped(ObjectIdentifier),

    /// Decryption: no RecipientInfo is addressed to any of the available keys. The
    /// message lists the recipients the message is for.
    #[error("the message is not encrypted for any of the available keys; its recipients are: {0}")]
    NotForUs(String),

    /// Decryption: the private-key holder (agent) failed to unwrap the content key or to
    /// compute the ECDH secret; the original error is kept as the source.
    #[error("private-key operation failed: {0}")]
    Unwrapper(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// Decryption: the content-encryption key could not be recovered (AES key-unwrap
    /// integrity check failed, or a key of the wrong length came back).
    #[error("cannot recover the content-encryption key: {0}")]
    WrongKey(String),

    /// Decryption: the AES-GCM authentication tag does not match. Everything written so
    /// far must be discarded.
    #[error("authentication failed: the AES-GCM tag does not match (altered or wrong key)")]
    TagMismatch,

    /// Decryption: invalid CBC padding after decrypting the last block (corrupt
    /// ciphertext or wrong key). Everything written so far must be discarded.
    #[error("decryption failed: bad CBC padding (corrupt ciphertext or wrong key)")]
    BadPadding,

    /// Decryption: the input ends before the structure is complete.
    #[error("truncated input: {0}")]
    Truncated(String),

    /// Reading the content failed.
    #[error("reading content: {0}")]
    Io(#[from] io::Error),
}

/// `name (dotted)` when the OID database knows the name, else the dotted form.
pub(crate) fn oid_name(oid: &ObjectIdentifier) -> String {
    match const_oid::db::DB.by_oid(oid) {
        Some(name) => format!("{name} ({oid})"),
        None => oid.to_string(),
    }
}

/// RFC 3339-ish UTC rendering of a `SystemTime` for messages.
pub(crate) fn fmt_time(t: SystemTime) -> String {
    match der::DateTime::from_system_time(t) {
        Ok(dt) => dt.to_string(),
        Err(_) => crate::trust::pre1970::fmt_before_epoch(t).unwrap_or_else(|| format!("{t:?}")),
    }
}

pub(crate) fn malformed(what: impl fmt::Display) -> Error {
    Error::Malformed(what.to_string())
}
