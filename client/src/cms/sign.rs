//! Building detached CMS `SignedData` whose signature is made by a [`DigestSigner`]
//! (the agent), which only ever sees a digest.
//!
//! ```text
//! content ──digest_reader──► content digest ─┐
//!                                            ▼
//!   SignerInfoBuilder: signed attributes {contentType, messageDigest, signingTime,
//!                      signingCertificateV2} ──DER SET──► hash ──► DigestSigner::sign_digest
//!                                            ▼
//!   SignedDataBuilder: digestAlgorithms, certificates, signerInfo ──► ContentInfo DER
//! ```

use std::cell::Cell;

use cms::builder::{SignedDataBuilder, SignerInfoBuilder, create_signing_time_attribute};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::signed_data::{EncapsulatedContentInfo, SignerIdentifier};
use const_oid::db::rfc5911;
use der::asn1::{BitString, OctetString, SetOfVec};
use der::{Decode as _, Encode as _, Sequence};
use smime_proto::SignAlgorithm;
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SignatureBitStringEncoding, SubjectPublicKeyInfoOwned,
};
use x509_cert::Certificate;
use x509_cert::attr::{Attribute, AttributeValue};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::serial_number::SerialNumber;

use super::alg::{PublicKey, Scheme, signature_algorithm_identifier};
use super::{Error, HashAlg, pem};

/// What the agent (or any private-key holder) does: sign a digest.
pub trait DigestSigner {
    /// The signer's own error, handed back unchanged inside [`Error::Signer`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// Signs `digest`, which is already the hash `algorithm` names.
    ///
    /// For RSA PKCS#1 v1.5/PSS returns the raw signature block; for ECDSA returns DER
    /// (`Ecdsa-Sig-Value`). (A raw `r || s` ECDSA signature is also accepted and
    /// converted.)
    fn sign_digest(&self, algorithm: SignAlgorithm, digest: &[u8]) -> Result<Vec<u8>, Self::Error>;
}

impl<T: DigestSigner + ?Sized> DigestSigner for &T {
    type Error = T::Error;

    fn sign_digest(&self, algorithm: SignAlgorithm, digest: &[u8]) -> Result<Vec<u8>, Self::Error> {
        (**self).sign_digest(algorithm, digest)
    }
}

/// Everything [`sign_detached`] needs besides the signer.
#[derive(Debug, Clone, Copy)]
pub struct SignRequest<'a> {
    /// Digest of the content, computed with `hash` (see [`super::digest_reader`]).
    pub content_digest: &'a [u8],
    /// Digest algorithm for the content and the signed attributes.
    pub hash: HashAlg,
    /// RSA only: sign with RSASSA-PSS (salt length = hash length, MGF1 with the same hash)
    /// instead of PKCS#1 v1.5.
    pub pss: bool,
    /// The signer's certificate; its public key selects the algorithm (RSA, P-256, P-384).
    pub signer_cert: &'a Certificate,
    /// More certificates to include (intermediates). Duplicates are dropped.
    pub extra_certs: &'a [Certificate],
}

/// Builds a detached CMS `SignedData` (the DER of a `ContentInfo`).
///
/// Signed attributes: contentType (id-data), messageDigest, signingTime and ESS
/// signingCertificateV2 (RFC 5035; SHA-256 hash of the signer certificate plus its
/// issuer and serial). The signer is identified by issuerAndSerialNumber (SignerInfo v1).
/// The signer certificate and `extra_certs` are included. `signatureAlgorithm` is
/// `sha*WithRSAEncryption`, `id-RSASSA-PSS` with explicit parameters, or
/// `ecdsa-with-SHA*`.
///
/// The signature the signer returns is checked against the certificate's public key
/// before anything is returned, so a key/certificate mix-up fails here
/// ([`Error::SignerKeyMismatch`]) instead of at the recipient. A failure of the signer
/// itself comes back as [`Error::Signer`] with the original error inside.
pub fn sign_detached<S: DigestSigner>(req: &SignRequest<'_>, signer: &S) -> Result<Vec<u8>, Error> {
    if req.content_digest.len() != req.hash.output_len() {
        return Err(Error::InvalidRequest(format!(
            "content digest is {} bytes, {} needs {}",
            req.content_digest.len(),
            req.hash,
            req.hash.output_len()
        )));
    }
    let tbs = req.signer_cert.tbs_certificate();
    let spki = tbs.subject_public_key_info().clone();
    let key = PublicKey::from_spki(&spki)?;
    let scheme = match (key.is_rsa(), req.pss) {
        (true, false) => Scheme::Pkcs1,
        (true, true) => Scheme::Pss {
            salt_len: req.hash.output_len(),
        },
        (false, false) => Scheme::Ecdsa,
        (false, true) => {
            return Err(Error::InvalidRequest(
                "RSASSA-PSS needs an RSA key; the certificate has an EC key".into(),
            ));
        }
    };
    let remote = RemoteSigner {
        signer,
        algorithm: sign_algorithm(scheme, req.hash)
            .ok_or(Error::UnsupportedAlgorithm(req.hash.oid()))?,
        hash: req.hash,
        scheme,
        alg_id: signature_algorithm_identifier(scheme, req.hash)?,
        key,
        spki,
        failure: Cell::new(None),
    };

    let eci = EncapsulatedContentInfo {
        econtent_type: rfc5911::ID_DATA,
        econtent: None,
    };
    let sid = SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
        issuer: tbs.issuer().clone(),
        serial_number: tbs.serial_number().clone(),
    });
    let mut sib = SignerInfoBuilder::new(
        sid,
        req.hash.algorithm_identifier(),
        &eci,
        Some(req.content_digest),
    )
    .map_err(build_err)?;
    sib.add_signed_attribute(create_signing_time_attribute().map_err(build_err)?)
        .map_err(build_err)?;
    sib.add_signed_attribute(signing_certificate_v2(req.signer_cert)?)
        .map_err(build_err)?;
    sib.add_signed_attribute(smime_capabilities()?)
        .map_err(build_err)?;

    let mut builder = SignedDataBuilder::new(&eci);
    builder
        .add_digest_algorithm(req.hash.algorithm_identifier())
        .map_err(build_err)?;
    let mut included: Vec<&Certificate> = Vec::with_capacity(1 + req.extra_certs.len());
    for cert in std::iter::once(req.signer_cert).chain(req.extra_certs) {
        if !included.contains(&cert) {
            included.push(cert);
            builder
                .add_certificate(CertificateChoices::Certificate(cert.clone()))
                .map_err(build_err)?;
        }
    }
    if let Err(e) = builder.add_signer_info::<_, RawSignature>(sib, &remote) {
        // The builder flattens every failure into der::Error(Failed); the real one was
        // stashed by the RemoteSigner.
        return Err(remote.failure.take().unwrap_or_else(|| build_err(e)));
    }
    let ci = builder.build().map_err(build_err)?;
    ci.to_der().map_err(build_err)
}

/// PEM armor with the label `openssl cms -outform PEM` writes: `-----BEGIN CMS-----`,
/// 64-column base64, LF line ends. (`openssl cms -inform PEM` reads both `CMS` and
/// `PKCS7`; `openssl smime` writes `PKCS7`.)
pub fn to_pem(der: &[u8]) -> String {
    format!(
        "-----BEGIN CMS-----\n{}-----END CMS-----\n",
        pem::encode_wrapped(der)
    )
}

fn build_err(e: impl std::fmt::Display) -> Error {
    Error::Build(e.to_string())
}

/// The agent operation for a scheme and hash (none with SHA-1: verification only).
fn sign_algorithm(scheme: Scheme, hash: HashAlg) -> Option<SignAlgorithm> {
    Some(match (scheme, hash) {
        (Scheme::Pkcs1, HashAlg::Sha256) => SignAlgorithm::RsaPkcs1Sha256,
        (Scheme::Pkcs1, HashAlg::Sha384) => SignAlgorithm::RsaPkcs1Sha384,
        (Scheme::Pkcs1, HashAlg::Sha512) => SignAlgorithm::RsaPkcs1Sha512,
        (Scheme::Pss { .. }, HashAlg::Sha256) => SignAlgorithm::RsaPssSha256,
        (Scheme::Pss { .. }, HashAlg::Sha384) => SignAlgorithm::RsaPssSha384,
        (Scheme::Pss { .. }, HashAlg::Sha512) => SignAlgorithm::RsaPssSha512,
        (Scheme::Ecdsa, HashAlg::Sha256) => SignAlgorithm::EcdsaSha256,
        (Scheme::Ecdsa, HashAlg::Sha384) => SignAlgorithm::EcdsaSha384,
        (Scheme::Ecdsa, HashAlg::Sha512) => SignAlgorithm::EcdsaSha512,
        (_, HashAlg::Sha1) => return None,
    })
}

// ESS signingCertificateV2 (RFC 5035 §3):
//   SigningCertificateV2 ::= SEQUENCE { certs SEQUENCE OF ESSCertIDv2, policies ... OPTIONAL }
//   ESSCertIDv2 ::= SEQUENCE { hashAlgorithm AlgorithmIdentifier DEFAULT {id-sha256},
//                              certHash OCTET STRING, issuerSerial IssuerSerial OPTIONAL }
//   IssuerSerial ::= SEQUENCE { issuer GeneralNames, serialNumber CertificateSerialNumber }
// DEFAULT is modelled as an absent Option (der-derive's `default` needs a Copy type).

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct IssuerSerial {
    issuer: Vec<GeneralName>,
    serial: SerialNumber,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct EssCertIdV2 {
    hash_algorithm: Option<AlgorithmIdentifierOwned>,
    cert_hash: OctetString,
    issuer_serial: Option<IssuerSerial>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct SigningCertificateV2 {
    certs: Vec<EssCertIdV2>,
}

fn signing_certificate_v2(cert: &Certificate) -> Result<Attribute, Error> {
    let cert_der = cert.to_der().map_err(build_err)?;
    let tbs = cert.tbs_certificate();
    let value = SigningCertificateV2 {
        certs: vec![EssCertIdV2 {
            hash_algorithm: None, // DEFAULT id-sha256
            cert_hash: OctetString::new(HashAlg::Sha256.digest(&cert_der)).map_err(build_err)?,
            issuer_serial: Some(IssuerSerial {
                issuer: vec![GeneralName::DirectoryName(tbs.issuer().clone())],
                serial: tbs.serial_number().clone(),
            }),
        }],
    };
    let value_der = value.to_der().map_err(build_err)?;
    let mut values = SetOfVec::new();
    values
        .insert(AttributeValue::from_der(&value_der).map_err(build_err)?)
        .map_err(build_err)?;
    Ok(Attribute {
        oid: rfc5911::ID_AA_SIGNING_CERTIFICATE_V_2,
        values,
    })
}

/// S/MIME capabilities (RFC 8551 §2.5.2): what we can decrypt, strongest first, so that
/// a correspondent's client picks a content cipher we read.
fn smime_capabilities() -> Result<Attribute, Error> {
    let caps: Vec<AlgorithmIdentifierOwned> = [
        rfc5911::ID_AES_256_GCM,
        rfc5911::ID_AES_128_GCM,
        rfc5911::ID_AES_256_CBC,
        rfc5911::ID_AES_128_CBC,
    ]
    .into_iter()
    .map(|oid| AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    })
    .collect();
    let mut values = SetOfVec::new();
    values
        .insert(AttributeValue::from_der(&caps.to_der().map_err(build_err)?).map_err(build_err)?)
        .map_err(build_err)?;
    Ok(Attribute {
        oid: rfc5911::SMIME_CAPABILITIES,
        values,
    })
}

/// A signature exactly as the signer produced it (after normalization).
#[derive(Debug, Clone)]
struct RawSignature(Vec<u8>);

impl SignatureBitStringEncoding for RawSignature {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0)
    }
}

/// The public key half the builder asks for; only the SPKI is needed.
#[derive(Debug, Clone)]
struct SpkiKey(SubjectPublicKeyInfoOwned);

impl EncodePublicKey for SpkiKey {
    fn to_public_key_der(&self) -> spki::Result<spki::Document> {
        Ok(spki::Document::encode_msg(&self.0)?)
    }
}

/// Adapts a [`DigestSigner`] to the `signature`/`spki` traits `SignedDataBuilder` wants:
/// it hashes the DER of the signed attributes and has the signer sign that digest.
struct RemoteSigner<'a, S: DigestSigner> {
    signer: &'a S,
    algorithm: SignAlgorithm,
    hash: HashAlg,
    scheme: Scheme,
    alg_id: AlgorithmIdentifierOwned,
    key: PublicKey,
    spki: SubjectPublicKeyInfoOwned,
    /// The real error; the builder turns every failure into `der::Error(Failed)`.
    failure: Cell<Option<Error>>,
}

impl<S: DigestSigner> RemoteSigner<'_, S> {
    fn fail(&self, e: Error) -> signature::Error {
        self.failure.set(Some(e));
        signature::Error::new()
    }

    /// Accepts the formats signers actually return: RSA blocks with missing or extra
    /// leading zeros, and ECDSA as raw `r || s` instead of DER.
    fn normalize(&self, sig: Vec<u8>) -> Vec<u8> {
        if let Some(len) = self.key.rsa_len() {
            if sig.len() == len {
                return sig;
            }
            let stripped: &[u8] = {
                let zeros = sig.iter().take_while(|b| **b == 0).count();
                sig.get(zeros..).unwrap_or(&[])
            };
            if stripped.len() <= len {
                let mut v = vec![0u8; len - stripped.len()];
                v.extend_from_slice(stripped);
                return v;
            }
            return sig;
        }
        match &self.key {
            PublicKey::P256(_) if p256::ecdsa::Signature::from_der(&sig).is_err() => {
                p256::ecdsa::Signature::from_slice(&sig)
                    .map(|s| s.to_der().as_bytes().to_vec())
                    .unwrap_or(sig)
            }
            PublicKey::P384(_) if p384::ecdsa::Signature::from_der(&sig).is_err() => {
                p384::ecdsa::Signature::from_slice(&sig)
                    .map(|s| s.to_der().as_bytes().to_vec())
                    .unwrap_or(sig)
            }
            _ => sig,
        }
    }
}

impl<S: DigestSigner> std::fmt::Debug for RemoteSigner<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSigner")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl<S: DigestSigner> signature::Keypair for RemoteSigner<'_, S> {
    type VerifyingKey = SpkiKey;

    fn verifying_key(&self) -> SpkiKey {
        SpkiKey(self.spki.clone())
    }
}

impl<S: DigestSigner> DynSignatureAlgorithmIdentifier for RemoteSigner<'_, S> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.alg_id.clone())
    }
}

impl<S: DigestSigner> signature::Signer<RawSignature> for RemoteSigner<'_, S> {
    fn try_sign(&self, signed_attrs_der: &[u8]) -> Result<RawSignature, signature::Error> {
        let digest = self.hash.digest(signed_attrs_der);
        let sig = self
            .signer
            .sign_digest(self.algorithm, &digest)
            .map_err(|e| self.fail(Error::Signer(Box::new(e))))?;
        let sig = self.normalize(sig);
        self.key
            .verify_prehash(self.scheme, self.hash, &digest, &sig)
            .map_err(|_| self.fail(Error::SignerKeyMismatch))?;
        Ok(RawSignature(sig))
    }
}
