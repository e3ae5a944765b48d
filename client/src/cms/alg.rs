//! Signature algorithms shared by signing and verification: public keys from SPKI,
//! `AlgorithmIdentifier` <-> (scheme, hash), and prehash verification.

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5912;
use der::asn1::AnyRef;
use der::{Any, Decode as _, Encode as _};
use rsa::pkcs1::{RsaPssParamsOwned, RsaPssParamsRef, TrailerField};
use signature::hazmat::PrehashVerifier as _;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::{Error, HashAlg, malformed};

/// Largest RSA modulus accepted, in bits.
const MAX_RSA_BITS: usize = 8192;

/// A signature scheme, independent of the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// RSASSA-PKCS1-v1_5.
    Pkcs1,
    /// RSASSA-PSS with MGF1 over the same hash.
    Pss {
        /// Salt length in bytes.
        salt_len: usize,
    },
    /// ECDSA; signatures are DER `Ecdsa-Sig-Value`.
    Ecdsa,
}

/// A public key this module can verify with.
#[derive(Debug, Clone)]
pub(crate) enum PublicKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// Decodes a SubjectPublicKeyInfo (rsaEncryption / id-RSASSA-PSS, or id-ecPublicKey on
    /// P-256 or P-384).
    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, Error> {
        let oid = spki.algorithm.oid;
        let key_bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| malformed("public key BIT STRING has unused bits"))?;
        if oid == rfc5912::RSA_ENCRYPTION || oid == rfc5912::ID_RSASSA_PSS {
            let k = rsa::pkcs1::RsaPublicKeyRef::from_der(key_bits)
                .map_err(|e| malformed(format!("RSA public key: {e}")))?;
            let n = rsa::BoxedUint::from_be_slice_vartime(k.modulus.as_bytes());
            let e = rsa::BoxedUint::from_be_slice_vartime(k.public_exponent.as_bytes());
            let key = rsa::RsaPublicKey::new_with_max_size(n, e, MAX_RSA_BITS)
                .map_err(|e| malformed(format!("RSA public key: {e}")))?;
            return Ok(PublicKey::Rsa(key));
        }
        if oid == rfc5912::ID_EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = spki
                .algorithm
                .parameters
                .as_ref()
                .ok_or_else(|| malformed("EC public key without curve parameters"))?
                .decode_as()
                .map_err(|e| malformed(format!("EC curve parameters: {e}")))?;
            if curve == rfc5912::SECP_256_R_1 {
                return p256::ecdsa::VerifyingKey::from_sec1_bytes(key_bits)
                    .map(PublicKey::P256)
                    .map_err(|_| malformed("invalid P-256 public key"));
            }
            if curve == rfc5912::SECP_384_R_1 {
                return p384::ecdsa::VerifyingKey::from_sec1_bytes(key_bits)
                    .map(PublicKey::P384)
                    .map_err(|_| malformed("invalid P-384 public key"));
            }
            return Err(Error::UnsupportedAlgorithm(curve));
        }
        Err(Error::UnsupportedAlgorithm(oid))
    }

    /// Whether this is an RSA key.
    pub(crate) fn is_rsa(&self) -> bool {
        matches!(self, PublicKey::Rsa(_))
    }

    /// RSA modulus length in bytes (the signature length), `None` for EC keys.
    pub(crate) fn rsa_len(&self) -> Option<usize> {
        match self {
            PublicKey::Rsa(k) => Some(rsa::traits::PublicKeyParts::size(k)),
            _ => None,
        }
    }

    /// Verifies `sig` over an already computed `digest`.
    ///
    /// RSA signatures shorter than the modulus (leading zeros dropped) are left-padded, and
    /// longer ones are accepted when the excess is leading zero bytes (gpgsm with
    /// gnupg-pkcs11-scd sometimes writes 257 bytes for RSA-2048; OpenSSL rejects those,
    /// gpgsm accepts them, and the integer value is the same).
    pub(crate) fn verify_prehash(
        &self,
        scheme: Scheme,
        hash: HashAlg,
        digest: &[u8],
        sig: &[u8],
    ) -> Result<(), Error> {
        match (self, scheme) {
            (PublicKey::Rsa(k), Scheme::Pkcs1 | Scheme::Pss { .. }) => {
                let len = rsa::traits::PublicKeyParts::size(k);
                let sig = normalize_rsa_sig(sig, len).ok_or(Error::BadSignature)?;
                let res = match (scheme, hash) {
                    (Scheme::Pkcs1, HashAlg::Sha256) => {
                        k.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), digest, &sig)
                    }
                    (Scheme::Pkcs1, HashAlg::Sha384) => {
                        k.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha384>(), digest, &sig)
                    }
                    (Scheme::Pkcs1, HashAlg::Sha512) => {
                        k.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), digest, &sig)
                    }
                    (Scheme::Pss { salt_len }, HashAlg::Sha256) => k.verify(
                        rsa::pss::Pss::<sha2::Sha256>::new_with_salt(salt_len),
                        digest,
                        &sig,
                    ),
                    (Scheme::Pss { salt_len }, HashAlg::Sha384) => k.verify(
                        rsa::pss::Pss::<sha2::Sha384>::new_with_salt(salt_len),
                        digest,
                        &sig,
                    ),
                    (Scheme::Pss { salt_len }, HashAlg::Sha512) => k.verify(
                        rsa::pss::Pss::<sha2::Sha512>::new_with_salt(salt_len),
                        digest,
                        &sig,
                    ),
                    (Scheme::Ecdsa, _) => return Err(Error::BadSignature),
                    (_, HashAlg::Sha1) => {
                        return Err(Error::UnsupportedAlgorithm(rfc5912::ID_SHA_1));
                    }
                };
                res.map_err(|_| Error::BadSignature)
            }
            (PublicKey::P256(k), Scheme::Ecdsa) => {
                let s = p256::ecdsa::Signature::from_der(sig).map_err(|_| Error::BadSignature)?;
                k.verify_prehash(digest, &s)
                    .map_err(|_| Error::BadSignature)
            }
            (PublicKey::P384(k), Scheme::Ecdsa) => {
                let s = p384::ecdsa::Signature::from_der(sig).map_err(|_| Error::BadSignature)?;
                k.verify_prehash(digest, &s)
                    .map_err(|_| Error::BadSignature)
            }
            (_, scheme) => Err(malformed(format!(
                "signature scheme {scheme:?} does not fit the {} key",
                if self.is_rsa() { "RSA" } else { "EC" }
            ))),
        }
    }
}

/// Pads a short RSA signature or strips redundant leading zeros of a long one.
fn normalize_rsa_sig(sig: &[u8], len: usize) -> Option<Vec<u8>> {
    if sig.len() <= len {
        let mut v = vec![0u8; len - sig.len()];
        v.extend_from_slice(sig);
        return Some(v);
    }
    let (excess, rest) = sig.split_at(sig.len() - len);
    excess.iter().all(|b| *b == 0).then(|| rest.to_vec())
}

/// Resolves a `signatureAlgorithm` to (scheme, hash).
///
/// `digest` is the CMS `digestAlgorithm`; it supplies the hash for bare `rsaEncryption`
/// (what OpenSSL writes) and `id-ecPublicKey`, and must agree with the hash named by the
/// combined OIDs. Certificates pass `None`.
pub(crate) fn resolve(
    alg: &AlgorithmIdentifierOwned,
    digest: Option<HashAlg>,
) -> Result<(Scheme, HashAlg), Error> {
    let oid = alg.oid;
    let named = |scheme: Scheme, hash: HashAlg| -> Result<(Scheme, HashAlg), Error> {
        match digest {
            Some(d) if d != hash => Err(malformed(format!(
                "signatureAlgorithm uses {hash} but digestAlgorithm is {d}"
            ))),
            _ => Ok((scheme, hash)),
        }
    };
    let from_digest = |scheme: Scheme| -> Result<(Scheme, HashAlg), Error> {
        digest
            .map(|d| (scheme, d))
            .ok_or(Error::UnsupportedAlgorithm(oid))
    };
    match oid {
        o if o == rfc5912::RSA_ENCRYPTION => from_digest(Scheme::Pkcs1),
        o if o == rfc5912::SHA_256_WITH_RSA_ENCRYPTION => named(Scheme::Pkcs1, HashAlg::Sha256),
        o if o == rfc5912::SHA_384_WITH_RSA_ENCRYPTION => named(Scheme::Pkcs1, HashAlg::Sha384),
        o if o == rfc5912::SHA_512_WITH_RSA_ENCRYPTION => named(Scheme::Pkcs1, HashAlg::Sha512),
        o if o == rfc5912::ECDSA_WITH_SHA_256 => named(Scheme::Ecdsa, HashAlg::Sha256),
        o if o == rfc5912::ECDSA_WITH_SHA_384 => named(Scheme::Ecdsa, HashAlg::Sha384),
        o if o == rfc5912::ECDSA_WITH_SHA_512 => named(Scheme::Ecdsa, HashAlg::Sha512),
        o if o == rfc5912::ID_EC_PUBLIC_KEY => from_digest(Scheme::Ecdsa),
        o if o == rfc5912::ID_RSASSA_PSS => {
            let (hash, salt_len) = parse_pss_params(alg)?;
            named(Scheme::Pss { salt_len }, hash)
        }
        _ => Err(Error::UnsupportedAlgorithm(oid)),
    }
}

/// RSASSA-PSS-params: the hash, MGF1 over the same hash, salt length, trailer 1.
fn parse_pss_params(alg: &AlgorithmIdentifierOwned) -> Result<(HashAlg, usize), Error> {
    let params = alg
        .parameters
        .as_ref()
        .ok_or_else(|| malformed("RSASSA-PSS without parameters"))?;
    let der = params
        .to_der()
        .map_err(|e| malformed(format!("RSASSA-PSS parameters: {e}")))?;
    let p = RsaPssParamsOwned::from_der(&der)
        .map_err(|e| malformed(format!("RSASSA-PSS parameters: {e}")))?;
    // Absent hash means SHA-1, which is not supported.
    let hash = HashAlg::from_oid(&p.hash.oid).ok_or(Error::UnsupportedAlgorithm(p.hash.oid))?;
    if p.mask_gen.oid != rfc5912::ID_MGF_1 {
        return Err(Error::UnsupportedAlgorithm(p.mask_gen.oid));
    }
    let mgf_hash = p
        .mask_gen
        .parameters
        .as_ref()
        .ok_or_else(|| malformed("MGF1 without a hash"))?;
    if mgf_hash.oid != p.hash.oid {
        return Err(malformed(format!(
            "RSASSA-PSS with MGF1 hash {} different from hash {}",
            mgf_hash.oid, p.hash.oid
        )));
    }
    if p.trailer_field != TrailerField::BC {
        return Err(malformed("RSASSA-PSS trailer field other than 1"));
    }
    Ok((hash, usize::from(p.salt_len)))
}

/// The `signatureAlgorithm` written when signing: `sha*WithRSAEncryption` (NULL
/// parameters, RFC 4055 §5), `id-RSASSA-PSS` with explicit parameters (hash, MGF1 with the
/// same hash, salt length = hash length), or `ecdsa-with-SHA*` (parameters absent).
pub(crate) fn signature_algorithm_identifier(
    scheme: Scheme,
    hash: HashAlg,
) -> Result<AlgorithmIdentifierOwned, Error> {
    let rsa_null = |oid| AlgorithmIdentifierOwned {
        oid,
        parameters: Some(Any::from(AnyRef::NULL)),
    };
    Ok(match (scheme, hash) {
        (Scheme::Pkcs1, HashAlg::Sha256) => rsa_null(rfc5912::SHA_256_WITH_RSA_ENCRYPTION),
        (Scheme::Pkcs1, HashAlg::Sha384) => rsa_null(rfc5912::SHA_384_WITH_RSA_ENCRYPTION),
        (Scheme::Pkcs1, HashAlg::Sha512) => rsa_null(rfc5912::SHA_512_WITH_RSA_ENCRYPTION),
        (_, HashAlg::Sha1) => return Err(Error::UnsupportedAlgorithm(rfc5912::ID_SHA_1)),
        (Scheme::Pss { salt_len }, hash) => {
            let salt = u8::try_from(salt_len)
                .map_err(|_| Error::InvalidRequest(format!("PSS salt length {salt_len}")))?;
            let params: RsaPssParamsRef<'_> = match hash {
                HashAlg::Sha256 => RsaPssParamsRef::new::<sha2::Sha256>(salt),
                HashAlg::Sha384 => RsaPssParamsRef::new::<sha2::Sha384>(salt),
                HashAlg::Sha512 => RsaPssParamsRef::new::<sha2::Sha512>(salt),
                HashAlg::Sha1 => return Err(Error::UnsupportedAlgorithm(rfc5912::ID_SHA_1)),
            };
            AlgorithmIdentifierOwned {
                oid: rfc5912::ID_RSASSA_PSS,
                parameters: Some(
                    Any::encode_from(&params).map_err(|e| Error::Build(e.to_string()))?,
                ),
            }
        }
        (Scheme::Ecdsa, hash) => AlgorithmIdentifierOwned {
            oid: match hash {
                HashAlg::Sha256 => rfc5912::ECDSA_WITH_SHA_256,
                HashAlg::Sha384 => rfc5912::ECDSA_WITH_SHA_384,
                HashAlg::Sha512 => rfc5912::ECDSA_WITH_SHA_512,
                HashAlg::Sha1 => return Err(Error::UnsupportedAlgorithm(rfc5912::ID_SHA_1)),
            },
            parameters: None,
        },
    })
}

/// `ECC-CMS-SharedInfo` (RFC 5753 §7.2), the X9.63 KDF's SharedInfo, for key agreement in
/// both directions (encryption and decryption).
#[derive(Debug, Clone, der::Sequence)]
pub(crate) struct EccCmsSharedInfo {
    pub(crate) key_info: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub(crate) entity_u_info: Option<der::asn1::OctetString>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT")]
    pub(crate) supp_pub_info: der::asn1::OctetString,
}
