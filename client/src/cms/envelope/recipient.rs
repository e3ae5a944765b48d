//! One `RecipientInfo` per recipient certificate:
//!
//! * RSA (`rsaEncryption`) → `KeyTransRecipientInfo` v0 (RFC 5652 §6.2.1), rid =
//!   issuerAndSerialNumber, key transport PKCS#1 v1.5 (RFC 3370 §4.2.1) or RSAES-OAEP
//!   (RFC 3560 / RFC 4055).
//! * EC on P-256/P-384 → `KeyAgreeRecipientInfo` v3 (RFC 5652 §6.2.2) with RFC 5753
//!   ephemeral-static ECDH (the cms crate's `KeyAgreeRecipientInfoBuilder` wraps the CEK
//!   under an all-zero KEK, so this is written by hand):
//!   1. a fresh key pair on the recipient's curve; originator = originatorKey
//!      {id-ecPublicKey, parameters absent (as OpenSSL writes it), uncompressed point};
//!   2. Z = x coordinate of ECDH(ephemeral, recipient);
//!   3. KEK = ANSI X9.63 KDF(Z, DER ECC-CMS-SharedInfo {keyInfo = wrap AlgId,
//!      suppPubInfo = KEK length in bits}) with SHA-256 (P-256,
//!      dhSinglePass-stdDH-sha256kdf-scheme) or SHA-384 (P-384, …-sha384kdf-scheme);
//!   4. encryptedKey = AES key wrap (RFC 3394) of the CEK under the KEK: aes128-wrap for
//!      AES-128 content, aes256-wrap for AES-256 content;
//!   5. no ukm; RecipientEncryptedKey rid = issuerAndSerialNumber.

use super::super::alg::EccCmsSharedInfo;
use cms::cert::IssuerAndSerialNumber;
use cms::content_info::CmsVersion;
use cms::enveloped_data::{
    KeyAgreeRecipientIdentifier, KeyAgreeRecipientInfo, KeyTransRecipientInfo,
    OriginatorIdentifierOrKey, OriginatorPublicKey, RecipientEncryptedKey, RecipientIdentifier,
    RecipientInfo,
};
use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5753, rfc5911, rfc5912};
use der::asn1::{AnyRef, BitString, OctetString};
use der::{Any, Decode as _, Encode as _};
use p256::elliptic_curve::group::Curve as _;
use p256::elliptic_curve::point::AffineCoordinates as _;
use p256::elliptic_curve::sec1::ToSec1Point as _;
use p256::elliptic_curve::{CurveArithmetic, Generate as _};
use spki::AlgorithmIdentifierOwned;
use zeroize::Zeroizing;

use super::super::{Error, malformed};
use super::{ContentCipher, Recipient, RsaKeyTransport, build_err};

/// Largest RSA modulus accepted, in bits.
const MAX_RSA_BITS: usize = 16384;

/// The recipient's public key, as far as encryption cares.
enum RecipientKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::PublicKey),
    P384(p384::PublicKey),
}

/// Builds the `RecipientInfo` that gives `r` the content-encryption key `cek`.
pub(super) fn recipient_info(
    r: &Recipient,
    cek: &[u8],
    cipher: ContentCipher,
    rng: &mut (impl rand::CryptoRng + ?Sized),
) -> Result<RecipientInfo, Error> {
    let tbs = r.cert.tbs_certificate();
    let ias = IssuerAndSerialNumber {
        issuer: tbs.issuer().clone(),
        serial_number: tbs.serial_number().clone(),
    };
    match recipient_key(r)? {
        RecipientKey::Rsa(key) => ktri(&key, ias, r.rsa, cek, rng),
        RecipientKey::P256(key) => kari::<p256::NistP256, sha2::Sha256>(
            &key,
            ias,
            rfc5753::DH_SINGLE_PASS_STD_DH_SHA_256_KDF_SCHEME,
            cek,
            cipher,
            rng,
        ),
        RecipientKey::P384(key) => kari::<p384::NistP384, sha2::Sha384>(
            &key,
            ias,
            rfc5753::DH_SINGLE_PASS_STD_DH_SHA_384_KDF_SCHEME,
            cek,
            cipher,
            rng,
        ),
    }
}

fn recipient_key(r: &Recipient) -> Result<RecipientKey, Error> {
    let spki = r.cert.tbs_certificate().subject_public_key_info();
    let oid = spki.algorithm.oid;
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| malformed("recipient public key BIT STRING has unused bits"))?;
    if oid == rfc5912::RSA_ENCRYPTION {
        let k = rsa::pkcs1::RsaPublicKeyRef::from_der(bits)
            .map_err(|e| malformed(format!("recipient RSA public key: {e}")))?;
        let n = rsa::BoxedUint::from_be_slice_vartime(k.modulus.as_bytes());
        let e = rsa::BoxedUint::from_be_slice_vartime(k.public_exponent.as_bytes());
        let key = rsa::RsaPublicKey::new_with_max_size(n, e, MAX_RSA_BITS)
            .map_err(|e| malformed(format!("recipient RSA public key: {e}")))?;
        return Ok(RecipientKey::Rsa(key));
    }
    if oid == rfc5912::ID_EC_PUBLIC_KEY {
        let curve: ObjectIdentifier = spki
            .algorithm
            .parameters
            .as_ref()
            .ok_or_else(|| malformed("recipient EC public key without curve parameters"))?
            .decode_as()
            .map_err(|e| malformed(format!("recipient EC curve parameters: {e}")))?;
        if curve == rfc5912::SECP_256_R_1 {
            return p256::PublicKey::from_sec1_bytes(bits)
                .map(RecipientKey::P256)
                .map_err(|_| malformed("invalid P-256 recipient public key"));
        }
        if curve == rfc5912::SECP_384_R_1 {
            return p384::PublicKey::from_sec1_bytes(bits)
                .map(RecipientKey::P384)
                .map_err(|_| malformed("invalid P-384 recipient public key"));
        }
        return Err(Error::UnsupportedAlgorithm(curve));
    }
    // id-RSASSA-PSS keys are for signatures only (RFC 4055 §1.2); other types are unknown.
    Err(Error::UnsupportedAlgorithm(oid))
}

fn ktri(
    key: &rsa::RsaPublicKey,
    rid: IssuerAndSerialNumber,
    transport: RsaKeyTransport,
    cek: &[u8],
    rng: &mut (impl rand::CryptoRng + ?Sized),
) -> Result<RecipientInfo, Error> {
    let rsa_err = |e: rsa::Error| Error::Build(format!("RSA key transport: {e}"));
    let (key_enc_alg, enc_key) = match transport {
        RsaKeyTransport::Pkcs1v15 => (
            AlgorithmIdentifierOwned {
                oid: rfc5912::RSA_ENCRYPTION,
                parameters: Some(Any::from(AnyRef::NULL)),
            },
            key.encrypt(rng, rsa::Pkcs1v15Encrypt, cek)
                .map_err(rsa_err)?,
        ),
        RsaKeyTransport::OaepSha256 => {
            let params = rsa::pkcs1::RsaOaepParamsRef::new::<sha2::Sha256>();
            (
                AlgorithmIdentifierOwned {
                    oid: rfc5912::ID_RSAES_OAEP,
                    parameters: Some(Any::encode_from(&params).map_err(build_err)?),
                },
                key.encrypt(rng, rsa::Oaep::<sha2::Sha256>::new(), cek)
                    .map_err(rsa_err)?,
            )
        }
        RsaKeyTransport::OaepSha1 => {
            // All defaults: SHA-1, MGF1-SHA-1, empty label → `30 00`.
            let params = rsa::pkcs1::RsaOaepParamsRef::default();
            (
                AlgorithmIdentifierOwned {
                    oid: rfc5912::ID_RSAES_OAEP,
                    parameters: Some(Any::encode_from(&params).map_err(build_err)?),
                },
                key.encrypt(rng, rsa::Oaep::<sha1::Sha1>::new(), cek)
                    .map_err(rsa_err)?,
            )
        }
    };
    Ok(RecipientInfo::Ktri(KeyTransRecipientInfo {
        version: CmsVersion::V0,
        rid: RecipientIdentifier::IssuerAndSerialNumber(rid),
        key_enc_alg,
        enc_key: OctetString::new(enc_key).map_err(build_err)?,
    }))
}

/// The key-wrap algorithm (and KEK length) used for a content cipher.
fn wrap_alg(cipher: ContentCipher) -> (ObjectIdentifier, usize) {
    match cipher.key_len() {
        16 => (rfc5911::ID_AES_128_WRAP, 16),
        _ => (rfc5911::ID_AES_256_WRAP, 32),
    }
}

fn kari<C, D>(
    recipient: &p256::elliptic_curve::PublicKey<C>,
    rid: IssuerAndSerialNumber,
    scheme: ObjectIdentifier,
    cek: &[u8],
    cipher: ContentCipher,
    rng: &mut (impl rand::CryptoRng + ?Sized),
) -> Result<RecipientInfo, Error>
where
    C: CurveArithmetic,
    p256::elliptic_curve::SecretKey<C>: p256::elliptic_curve::Generate,
    p256::elliptic_curve::AffinePoint<C>:
        p256::elliptic_curve::sec1::ToSec1Point<C> + p256::elliptic_curve::sec1::FromSec1Point<C>,
    p256::elliptic_curve::FieldBytesSize<C>: p256::elliptic_curve::sec1::ModulusSize,
    D: sha2::Digest + sha2::digest::FixedOutputReset,
{
    // 1. Ephemeral key pair on the recipient's curve.
    let eph = p256::elliptic_curve::SecretKey::<C>::generate_from_rng(rng);
    let eph_pub = eph.public_key().as_affine().to_sec1_point(false);

    // 2. Z = x(d_eph · Q_recipient). The point is never the identity: the scalar is
    //    non-zero and the recipient key is a valid non-identity point on a prime-order curve.
    let shared = (recipient.to_projective() * *eph.to_nonzero_scalar()).to_affine();
    let z = Zeroizing::new(shared.x().to_vec());

    // 3. KEK from the X9.63 KDF over ECC-CMS-SharedInfo.
    let (wrap_oid, kek_len) = wrap_alg(cipher);
    let wrap = AlgorithmIdentifierOwned {
        oid: wrap_oid,
        parameters: None,
    };
    let shared_info = EccCmsSharedInfo {
        key_info: wrap.clone(),
        entity_u_info: None,
        supp_pub_info: OctetString::new(((kek_len * 8) as u32).to_be_bytes().to_vec())
            .map_err(build_err)?,
    }
    .to_der()
    .map_err(build_err)?;
    let mut kek = Zeroizing::new(vec![0u8; kek_len]);
    ansi_x963_kdf::derive_key_into::<D>(&z, &shared_info, &mut kek)
        .map_err(|e| Error::Build(format!("X9.63 KDF: {e:?}")))?;

    // 4. Wrap the CEK (RFC 3394).
    let mut wrapped = vec![0u8; cek.len() + 8];
    let wrapped_len = {
        use aes_kw::cipher::KeyInit as _;
        let kw_err = |e: aes_kw::Error| Error::Build(format!("AES key wrap: {e}"));
        let bad_kek = |_| Error::Build("key-encryption key of the wrong length".into());
        if kek_len == 16 {
            aes_kw::KwAes128::new_from_slice(&kek)
                .map_err(bad_kek)?
                .wrap_key(cek, &mut wrapped)
                .map_err(kw_err)?
                .len()
        } else {
            aes_kw::KwAes256::new_from_slice(&kek)
                .map_err(bad_kek)?
                .wrap_key(cek, &mut wrapped)
                .map_err(kw_err)?
                .len()
        }
    };
    wrapped.truncate(wrapped_len);

    Ok(RecipientInfo::Kari(KeyAgreeRecipientInfo {
        version: CmsVersion::V3,
        originator: OriginatorIdentifierOrKey::OriginatorKey(OriginatorPublicKey {
            algorithm: AlgorithmIdentifierOwned {
                oid: rfc5912::ID_EC_PUBLIC_KEY,
                parameters: None,
            },
            public_key: BitString::from_bytes(eph_pub.as_bytes()).map_err(build_err)?,
        }),
        ukm: None,
        key_enc_alg: AlgorithmIdentifierOwned {
            oid: scheme,
            parameters: Some(Any::encode_from(&wrap).map_err(build_err)?),
        },
        recipient_enc_keys: vec![RecipientEncryptedKey {
            rid: KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(rid),
            enc_key: OctetString::new(wrapped).map_err(build_err)?,
        }],
    }))
}
