//! Finding our `RecipientInfo` and recovering the content-encryption key with the
//! private-key holder ([`KeyUnwrapper`]):
//!
//! * `KeyTransRecipientInfo` (RSA): the agent decrypts `encryptedKey` with PKCS#1 v1.5
//!   (`rsaEncryption`) or RSAES-OAEP (`id-RSAES-OAEP`, RFC 4055 parameters).
//! * `KeyAgreeRecipientInfo` (RFC 5753 ephemeral-static ECDH): the agent computes Z with
//!   the originator's ephemeral key; here the ANSI X9.63 KDF over `ECC-CMS-SharedInfo`
//!   gives the KEK, which AES-key-unwraps (RFC 3394) `encryptedKey`.

use cms::enveloped_data::{
    KeyAgreeRecipientIdentifier, KeyAgreeRecipientInfo, KeyTransRecipientInfo,
    OriginatorIdentifierOrKey, RecipientIdentifier, RecipientInfo,
};
use const_oid::ObjectIdentifier;
use der::asn1::OctetString;
use der::{Decode as _, Encode as _, Sequence};
use p256::elliptic_curve::sec1::ToSec1Point as _;
use smime_proto::DecryptAlgorithm;
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use zeroize::Zeroizing;

use super::super::alg::EccCmsSharedInfo;
use super::super::ber::Tlv;
use super::super::{Error, malformed, oid_name};
use super::{KeyUnwrapper, oids};

/// `RSAES-OAEP-params` (RFC 4055 §4.1); every field has a DEFAULT, modelled as absent.
#[derive(Debug, Clone, Sequence)]
struct OaepParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    hash: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    mask_gen: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    p_source: Option<AlgorithmIdentifierOwned>,
}

/// What a key certificate offers for matching and key recovery.
#[derive(Debug)]
pub(super) struct OurKey {
    /// Index into the caller's `keys`.
    index: usize,
    issuer: Name,
    serial: SerialNumber,
    /// subjectKeyIdentifier extension, or SHA-1 of the public key (RFC 5280 §4.2.1.2
    /// method 1) when the certificate has none.
    ski: Vec<u8>,
    kind: KeyKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// RSA with the modulus length in bytes.
    Rsa(usize),
    P256,
    P384,
    /// Something we cannot decrypt with (the algorithm or curve OID).
    Other(ObjectIdentifier),
}

/// Collects the matching data of every key certificate.
pub(super) fn our_keys(keys: &[Certificate]) -> Vec<OurKey> {
    keys.iter()
        .enumerate()
        .map(|(index, cert)| {
            let tbs = cert.tbs_certificate();
            let spki = tbs.subject_public_key_info();
            let key_bits = spki.subject_public_key.raw_bytes();
            let ski = match tbs.get_extension::<SubjectKeyIdentifier>() {
                Ok(Some((_, ski))) => ski.0.as_bytes().to_vec(),
                _ => {
                    use sha1::Digest as _;
                    sha1::Sha1::digest(key_bits).to_vec()
                }
            };
            OurKey {
                index,
                issuer: tbs.issuer().clone(),
                serial: tbs.serial_number().clone(),
                ski,
                kind: key_kind(&spki.algorithm, key_bits),
            }
        })
        .collect()
}

fn key_kind(alg: &AlgorithmIdentifierOwned, key_bits: &[u8]) -> KeyKind {
    if alg.oid == oids::RSA_ENCRYPTION {
        return match rsa::pkcs1::RsaPublicKeyRef::from_der(key_bits) {
            Ok(k) => KeyKind::Rsa(k.modulus.as_bytes().len()),
            Err(_) => KeyKind::Other(alg.oid),
        };
    }
    if alg.oid == oids::EC_PUBLIC_KEY {
        let curve = alg
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        return match curve {
            Some(oids::SECP256R1) => KeyKind::P256,
            Some(oids::SECP384R1) => KeyKind::P384,
            Some(c) => KeyKind::Other(c),
            None => KeyKind::Other(alg.oid),
        };
    }
    KeyKind::Other(alg.oid)
}

impl OurKey {
    fn matches_ias(&self, issuer: &Name, serial: &SerialNumber) -> bool {
        self.issuer == *issuer && self.serial == *serial
    }

    fn matches_ktri(&self, rid: &RecipientIdentifier) -> bool {
        match rid {
            RecipientIdentifier::IssuerAndSerialNumber(ias) => {
                self.matches_ias(&ias.issuer, &ias.serial_number)
            }
            RecipientIdentifier::SubjectKeyIdentifier(ski) => ski.0.as_bytes() == self.ski,
        }
    }

    fn matches_kari(&self, rid: &KeyAgreeRecipientIdentifier) -> bool {
        match rid {
            KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(ias) => {
                self.matches_ias(&ias.issuer, &ias.serial_number)
            }
            KeyAgreeRecipientIdentifier::RKeyId(r) => {
                r.subject_key_identifier.0.as_bytes() == self.ski
            }
        }
    }
}

/// Splits the DER `recipientInfos` SET into its elements and decodes each on its own
/// (keeping the sender's order; an undecodable entry only matters if nothing else fits).
pub(super) fn parse_recipient_infos(
    set: &[u8],
) -> Result<Vec<Result<RecipientInfo, Error>>, Error> {
    let set = Tlv::parse_exact(set)?.expect(super::super::ber::TAG_SET, "recipientInfos")?;
    let mut out = Vec::new();
    for child in set.children()? {
        out.push(child.to_der().and_then(|der| {
            RecipientInfo::from_der(&der).map_err(|e| malformed(format!("RecipientInfo: {e}")))
        }));
    }
    if out.is_empty() {
        return Err(malformed("recipientInfos is empty"));
    }
    Ok(out)
}

/// The recipients a message names, for the "not for us" error.
pub(super) fn describe(ris: &[Result<RecipientInfo, Error>]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let ias = |issuer: &Name, serial: &SerialNumber| format!("issuer \"{issuer}\" serial {serial}");
    for ri in ris {
        match ri {
            Ok(RecipientInfo::Ktri(k)) => parts.push(match &k.rid {
                RecipientIdentifier::IssuerAndSerialNumber(i) => {
                    format!("RSA key transport to {}", ias(&i.issuer, &i.serial_number))
                }
                RecipientIdentifier::SubjectKeyIdentifier(s) => format!(
                    "RSA key transport to subjectKeyIdentifier {}",
                    hex::encode_upper(s.0.as_bytes())
                ),
            }),
            Ok(RecipientInfo::Kari(k)) => {
                for rek in &k.recipient_enc_keys {
                    parts.push(match &rek.rid {
                        KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(i) => {
                            format!("ECDH key agreement to {}", ias(&i.issuer, &i.serial_number))
                        }
                        KeyAgreeRecipientIdentifier::RKeyId(r) => format!(
                            "ECDH key agreement to subjectKeyIdentifier {}",
                            hex::encode_upper(r.subject_key_identifier.0.as_bytes())
                        ),
                    });
                }
            }
            Ok(RecipientInfo::Kekri(k)) => parts.push(format!(
                "pre-shared KEK {}",
                hex::encode_upper(k.kek_id.kek_identifier.as_bytes())
            )),
            Ok(RecipientInfo::Pwri(_)) => parts.push("password".into()),
            Ok(RecipientInfo::Ori(o)) => {
                parts.push(format!("other recipient type {}", oid_name(&o.ori_type)))
            }
            Err(e) => parts.push(format!("undecodable RecipientInfo ({e})")),
        }
    }
    parts.join("; ")
}

/// Tries every (RecipientInfo, key) pair that matches, in the message's order, and
/// returns the first content-encryption key recovered (`cek_len` bytes) with the key's
/// index. Errors: [`Error::NotForUs`] when nothing matches; otherwise the error of the
/// first matching pair that failed.
pub(super) fn recover_cek<U: KeyUnwrapper>(
    ris: &[Result<RecipientInfo, Error>],
    keys: &[OurKey],
    unwrapper: &U,
    cek_len: usize,
) -> Result<(usize, Zeroizing<Vec<u8>>), Error> {
    let mut first_err: Option<Error> = None;
    let mut note = |e: Error| {
        if first_err.is_none() {
            first_err = Some(e);
        }
    };
    for ri in ris.iter().flatten() {
        match ri {
            RecipientInfo::Ktri(k) => {
                for key in keys.iter().filter(|key| key.matches_ktri(&k.rid)) {
                    match ktri(k, key, unwrapper, cek_len) {
                        Ok(cek) => return Ok((key.index, cek)),
                        Err(e) => note(e),
                    }
                }
            }
            RecipientInfo::Kari(k) => {
                for rek in &k.recipient_enc_keys {
                    for key in keys.iter().filter(|key| key.matches_kari(&rek.rid)) {
                        match kari(k, rek.enc_key.as_bytes(), key, unwrapper, cek_len) {
                            Ok(cek) => return Ok((key.index, cek)),
                            Err(e) => note(e),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Err(Error::NotForUs(describe(ris))),
    }
}

fn check_cek(cek: &[u8], cek_len: usize, how: &str) -> Result<(), Error> {
    if cek.len() == cek_len {
        Ok(())
    } else {
        Err(Error::WrongKey(format!(
            "{how} gave a {}-byte key where the content cipher needs {cek_len} bytes",
            cek.len()
        )))
    }
}

/// The agent operation for a `KeyTransRecipientInfo` key-encryption algorithm.
pub(super) fn key_transport_alg(alg: &AlgorithmIdentifierOwned) -> Result<DecryptAlgorithm, Error> {
    if alg.oid == oids::RSA_ENCRYPTION {
        return Ok(DecryptAlgorithm::RsaPkcs1);
    }
    if alg.oid != oids::RSAES_OAEP {
        return Err(Error::UnsupportedAlgorithm(alg.oid));
    }
    let params: OaepParams = match &alg.parameters {
        None => OaepParams {
            hash: None,
            mask_gen: None,
            p_source: None,
        },
        Some(p) => p
            .decode_as()
            .map_err(|e| malformed(format!("RSAES-OAEP parameters: {e}")))?,
    };
    let hash = match &params.hash {
        None => oids::SHA1,
        Some(h) => hash_oid(h)?,
    };
    let mgf_hash = match &params.mask_gen {
        None => oids::SHA1,
        Some(m) => {
            if m.oid != oids::MGF1 {
                return Err(Error::UnsupportedAlgorithm(m.oid));
            }
            let inner: AlgorithmIdentifierOwned = m
                .parameters
                .as_ref()
                .ok_or_else(|| malformed("RSAES-OAEP: MGF1 without a hash algorithm"))?
                .decode_as()
                .map_err(|e| malformed(format!("RSAES-OAEP MGF1 parameters: {e}")))?;
            hash_oid(&inner)?
        }
    };
    if mgf_hash != hash {
        // Tokens (CKM_RSA_PKCS_OAEP) and the agent protocol pair each hash with MGF1 over
        // the same hash.
        return Err(Error::UnsupportedAlgorithm(mgf_hash));
    }
    if let Some(src) = &params.p_source {
        if src.oid != oids::P_SPECIFIED {
            return Err(Error::UnsupportedAlgorithm(src.oid));
        }
        let label: OctetString = match &src.parameters {
            None => OctetString::new(Vec::new()).map_err(|e| malformed(e.to_string()))?,
            Some(p) => p
                .decode_as()
                .map_err(|e| malformed(format!("RSAES-OAEP pSourceFunc: {e}")))?,
        };
        if !label.as_bytes().is_empty() {
            // A non-empty OAEP label: neither tokens nor the agent take one.
            return Err(Error::UnsupportedAlgorithm(oids::P_SPECIFIED));
        }
    }
    match hash {
        oids::SHA1 => Ok(DecryptAlgorithm::RsaOaepSha1),
        oids::SHA256 => Ok(DecryptAlgorithm::RsaOaepSha256),
        oids::SHA384 => Ok(DecryptAlgorithm::RsaOaepSha384),
        oids::SHA512 => Ok(DecryptAlgorithm::RsaOaepSha512),
        other => Err(Error::UnsupportedAlgorithm(other)),
    }
}

/// A hash AlgorithmIdentifier's OID; parameters must be absent or NULL.
fn hash_oid(alg: &AlgorithmIdentifierOwned) -> Result<ObjectIdentifier, Error> {
    if let Some(p) = &alg.parameters
        && !p.is_null()
    {
        return Err(malformed(format!(
            "{}: unexpected parameters",
            oid_name(&alg.oid)
        )));
    }
    Ok(alg.oid)
}

fn ktri<U: KeyUnwrapper>(
    k: &KeyTransRecipientInfo,
    key: &OurKey,
    unwrapper: &U,
    cek_len: usize,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let KeyKind::Rsa(modulus_len) = key.kind else {
        return Err(malformed(format!(
            "a KeyTransRecipientInfo names key #{}, which is not an RSA key",
            key.index
        )));
    };
    let alg = key_transport_alg(&k.key_enc_alg)?;
    let enc = k.enc_key.as_bytes();
    if enc.len() > modulus_len {
        return Err(malformed(format!(
            "encrypted key of {} bytes is longer than the {modulus_len}-byte RSA modulus",
            enc.len()
        )));
    }
    // Restore leading zero octets a sender may have dropped.
    let mut wrapped = vec![0u8; modulus_len - enc.len()];
    wrapped.extend_from_slice(enc);
    let cek = unwrapper
        .decrypt_key(key.index, alg, &wrapped)
        .map_err(|e| Error::Unwrapper(Box::new(e)))?;
    let cek = Zeroizing::new(cek.expose().to_vec());
    check_cek(&cek, cek_len, "RSA key transport")?;
    Ok(cek)
}

/// The X9.63 KDF hash for a `dhSinglePass-*` key-agreement scheme.
#[derive(Debug, Clone, Copy)]
enum KdfHash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

fn kdf_hash(oid: &ObjectIdentifier) -> Result<KdfHash, Error> {
    // The cofactor schemes give the same Z on P-256/P-384 (cofactor 1).
    Ok(match *oid {
        oids::STD_DH_SHA1KDF | oids::COFACTOR_DH_SHA1KDF => KdfHash::Sha1,
        oids::STD_DH_SHA224KDF | oids::COFACTOR_DH_SHA224KDF => KdfHash::Sha224,
        oids::STD_DH_SHA256KDF | oids::COFACTOR_DH_SHA256KDF => KdfHash::Sha256,
        oids::STD_DH_SHA384KDF | oids::COFACTOR_DH_SHA384KDF => KdfHash::Sha384,
        oids::STD_DH_SHA512KDF | oids::COFACTOR_DH_SHA512KDF => KdfHash::Sha512,
        other => return Err(Error::UnsupportedAlgorithm(other)),
    })
}

fn x963_kdf(hash: KdfHash, z: &[u8], shared_info: &[u8], kek: &mut [u8]) -> Result<(), Error> {
    use ansi_x963_kdf::derive_key_into as kdf;
    match hash {
        KdfHash::Sha1 => kdf::<sha1::Sha1>(z, shared_info, kek),
        KdfHash::Sha224 => kdf::<sha2::Sha224>(z, shared_info, kek),
        KdfHash::Sha256 => kdf::<sha2::Sha256>(z, shared_info, kek),
        KdfHash::Sha384 => kdf::<sha2::Sha384>(z, shared_info, kek),
        KdfHash::Sha512 => kdf::<sha2::Sha512>(z, shared_info, kek),
    }
    .map_err(|e| Error::WrongKey(format!("X9.63 KDF: {e:?}")))
}

/// The originator's ephemeral point, validated on `kind`'s curve, in uncompressed form.
fn peer_point(k: &KeyAgreeRecipientInfo, kind: KeyKind) -> Result<Vec<u8>, Error> {
    let OriginatorIdentifierOrKey::OriginatorKey(opk) = &k.originator else {
        return Err(malformed(
            "KeyAgreeRecipientInfo names the originator by certificate (static-static ECDH); \
             only an ephemeral originatorKey (RFC 5753 §3.1) is supported",
        ));
    };
    if opk.algorithm.oid != oids::EC_PUBLIC_KEY {
        return Err(Error::UnsupportedAlgorithm(opk.algorithm.oid));
    }
    let curve_oid = if kind == KeyKind::P256 {
        oids::SECP256R1
    } else {
        oids::SECP384R1
    };
    if let Some(p) = &opk.algorithm.parameters
        && !p.is_null()
    {
        let c: ObjectIdentifier = p
            .decode_as()
            .map_err(|e| malformed(format!("originatorKey curve parameters: {e}")))?;
        if c != curve_oid {
            return Err(malformed(format!(
                "originatorKey is on {}, the recipient key on {}",
                oid_name(&c),
                oid_name(&curve_oid)
            )));
        }
    }
    let bytes = opk
        .public_key
        .as_bytes()
        .ok_or_else(|| malformed("originatorKey BIT STRING has unused bits"))?;
    let bad = || {
        malformed(format!(
            "originatorKey is not a point on {}",
            oid_name(&curve_oid)
        ))
    };
    Ok(match kind {
        KeyKind::P256 => p256::PublicKey::from_sec1_bytes(bytes)
            .map_err(|_| bad())?
            .as_affine()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec(),
        _ => p384::PublicKey::from_sec1_bytes(bytes)
            .map_err(|_| bad())?
            .as_affine()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec(),
    })
}

fn kari<U: KeyUnwrapper>(
    k: &KeyAgreeRecipientInfo,
    wrapped: &[u8],
    key: &OurKey,
    unwrapper: &U,
    cek_len: usize,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let field_len = match key.kind {
        KeyKind::P256 => 32,
        KeyKind::P384 => 48,
        KeyKind::Other(oid) => return Err(Error::UnsupportedAlgorithm(oid)),
        KeyKind::Rsa(_) => {
            return Err(malformed(format!(
                "a KeyAgreeRecipientInfo names key #{}, which is an RSA key",
                key.index
            )));
        }
    };
    let hash = kdf_hash(&k.key_enc_alg.oid)?;
    let wrap: AlgorithmIdentifierOwned = k
        .key_enc_alg
        .parameters
        .as_ref()
        .ok_or_else(|| {
            malformed(format!(
                "{}: key-wrap algorithm (parameters) missing",
                oid_name(&k.key_enc_alg.oid)
            ))
        })?
        .decode_as()
        .map_err(|e| malformed(format!("key-wrap algorithm: {e}")))?;
    let kek_len = match wrap.oid {
        oids::AES_128_WRAP => 16,
        oids::AES_192_WRAP => 24,
        oids::AES_256_WRAP => 32,
        other => return Err(Error::UnsupportedAlgorithm(other)),
    };
    let peer = peer_point(k, key.kind)?;

    let z = unwrapper
        .ecdh(key.index, &peer)
        .map_err(|e| Error::Unwrapper(Box::new(e)))?;
    let z = z.expose();
    if z.is_empty() || z.len() > field_len {
        return Err(Error::WrongKey(format!(
            "ECDH returned {} bytes, expected {field_len}",
            z.len()
        )));
    }
    // Z is a field element of fixed length; restore leading zeros if they were dropped.
    let mut zz = Zeroizing::new(vec![0u8; field_len - z.len()]);
    zz.extend_from_slice(z);

    let der_err = |e: der::Error| malformed(format!("ECC-CMS-SharedInfo: {e}"));
    let shared_info = EccCmsSharedInfo {
        key_info: wrap,
        entity_u_info: k
            .ukm
            .as_ref()
            .map(|u| OctetString::new(u.as_bytes()))
            .transpose()
            .map_err(der_err)?,
        supp_pub_info: OctetString::new(((kek_len * 8) as u32).to_be_bytes().to_vec())
            .map_err(der_err)?,
    }
    .to_der()
    .map_err(der_err)?;
    let mut kek = Zeroizing::new(vec![0u8; kek_len]);
    x963_kdf(hash, &zz, &shared_info, &mut kek)?;

    if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
        return Err(malformed(format!(
            "wrapped key of {} bytes (AES key wrap needs a multiple of 8, at least 16)",
            wrapped.len()
        )));
    }
    let mut cek = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
    let unwrapped = {
        use aes_kw::KeyInit as _;
        let bad_kek = |_| Error::WrongKey("key-encryption key of the wrong length".into());
        match kek_len {
            16 => aes_kw::KwAes128::new_from_slice(&kek)
                .map_err(bad_kek)?
                .unwrap_key(wrapped, &mut cek)
                .map(<[u8]>::len),
            24 => aes_kw::KwAes192::new_from_slice(&kek)
                .map_err(bad_kek)?
                .unwrap_key(wrapped, &mut cek)
                .map(<[u8]>::len),
            _ => aes_kw::KwAes256::new_from_slice(&kek)
                .map_err(bad_kek)?
                .unwrap_key(wrapped, &mut cek)
                .map(<[u8]>::len),
        }
    };
    match unwrapped {
        Ok(n) => cek.truncate(n),
        Err(e) => {
            return Err(Error::WrongKey(format!(
                "AES key unwrap failed ({e}): the key-agreement secret does not match \
                 (wrong private key for the certificate, or a corrupt message)"
            )));
        }
    }
    check_cek(&cek, cek_len, "ECDH key agreement")?;
    Ok(cek)
}
