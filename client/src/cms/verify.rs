//! Verifying CMS `SignedData`: detached (content supplied separately) or with
//! encapsulated content, DER or BER (`openssl cms -sign -stream`), PEM or binary.
//!
//! Per SignerInfo:
//! 1. find the signer certificate by `sid` (issuerAndSerialNumber or subjectKeyIdentifier)
//!    among the message's certificates, then the trust list (never "the first one": SET
//!    order is not preserved);
//! 2. stream-hash the content with the SignerInfo's digest algorithm;
//! 3. with signed attributes: compare `messageDigest`, check `contentType` equals
//!    `eContentType`, and verify the signature over the attributes exactly as sent,
//!    re-tagged `[0]` -> SET (decoding would re-sort them); without: verify over the
//!    content digest;
//! 4. check the signer certificate's validity now and at `signingTime`;
//! 5. with a [`TrustPolicy`]: validate the certification path from the signer to one of its
//!    anchors (RFC 5280, with [`crate::trust`]), now and at `signingTime`, using the
//!    message's certificates and CRLs.

use std::collections::HashMap;
use std::io::Read;
use std::time::SystemTime;

use cms::signed_data::{SignerIdentifier, SignerInfo};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5911;
use der::asn1::OctetString;
use der::{Decode as _, Encode as _};
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::time::Time;

use super::alg::{self, PublicKey};
use super::ber::{self, Tlv};
use super::{CheckedAt, Error, HashAlg, digest_reader_multi, malformed, oid_name, pem};
use crate::trust::{PathVerdict, TrustPolicy, dsa};

/// What a successful verification found out about one signer.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signer's certificate (matched by the SignerInfo's `sid`).
    pub signer: Certificate,
    /// The signer's certificate as encoded in the message (re-encoded if it came from the
    /// trust policy): for its fingerprint, and for dates `signer` cannot hold
    /// (`crate::trust::pre1970`).
    pub signer_der: Vec<u8>,
    /// The signed `signingTime` attribute, if present.
    pub signing_time: Option<SystemTime>,
    /// The SignerInfo's digest algorithm.
    pub digest_alg: HashAlg,
    /// Whether the signer's certification path validated (see [`Verified::path`]). Always
    /// `false` when no trust policy was given (then no chain check is made).
    pub trusted: bool,
    /// The path validation verdict: the chain, the checks at each time, revocation, and
    /// on failure which certificate failed which check. `None` without a trust policy.
    pub path: Option<PathVerdict>,
}

/// Verifies a detached CMS `SignedData` (or one with encapsulated content, when `content`
/// is `None` and `eContent` is present; if both are there, `content` is what gets
/// checked, like `openssl cms -verify -content`).
///
/// `cms` may be DER, BER or PEM/base64 (see [`parse_cms_input`]). Every SignerInfo must
/// verify; the result describes the first one (see [`verify_detached_all`] for all).
/// The content is read once, in 64 KiB pieces, whatever the number of signers.
///
/// Signature algorithms: RSA PKCS#1 v1.5 (`signatureAlgorithm` `rsaEncryption` or
/// `sha{256,384,512}WithRSAEncryption`), RSASSA-PSS (parameters parsed; MGF1 with the
/// same hash), ECDSA on P-256 and P-384, DSA (legacy: `trust/dsa.rs`); digests
/// SHA-256/384/512, and SHA-1 with DSA only.
///
/// The signer certificate must be within its validity period at `now` and, if a
/// `signingTime` attribute is present, at that time too ([`Error::CertExpired`] /
/// [`Error::CertNotYetValid`] say which).
///
/// With a `trust` policy, the signer's certification path must validate (RFC 5280 path
/// validation by [`TrustPolicy::validate`]: signatures, validity, basic and name
/// constraints, policies, key usage and extended key usage for S/MIME, CRLs), now and at
/// `signingTime`; otherwise [`Error::Untrusted`] says which certificate failed which check.
/// Intermediates come from the message and the policy; so do CRLs.
pub fn verify_detached<R: Read>(
    cms: &[u8],
    content: Option<R>,
    trust: Option<&TrustPolicy>,
    now: SystemTime,
) -> Result<Verified, Error> {
    verify_detached_all(cms, content, trust, now)?
        .into_iter()
        .next()
        .ok_or_else(|| malformed("no SignerInfo"))
}

/// Like [`verify_detached`], returning one [`Verified`] per SignerInfo, in encoded order.
pub fn verify_detached_all<R: Read>(
    cms: &[u8],
    content: Option<R>,
    trust: Option<&TrustPolicy>,
    now: SystemTime,
) -> Result<Vec<Verified>, Error> {
    let all = verify_detached_report(cms, content, trust, now)?;
    if let Some(v) = all.iter().find(|v| !v.trusted)
        && let Some(path) = &v.path
    {
        return Err(Error::Untrusted(path.to_string()));
    }
    Ok(all)
}

/// Like [`verify_detached_all`], except that a certification path that does not validate
/// is not an error: each [`Verified`] then has `trusted == false` and the reason in
/// [`Verified::path`]. The signatures and the signer certificates' validity periods are
/// checked as in [`verify_detached`]. For callers that report the verdict in detail; check
/// `trusted` before believing anything.
pub fn verify_detached_report<R: Read>(
    cms: &[u8],
    content: Option<R>,
    trust: Option<&TrustPolicy>,
    now: SystemTime,
) -> Result<Vec<Verified>, Error> {
    let bin = parse_cms_input(cms)?;
    let sd = parse_signed_data(&bin)?;
    if sd.signers.is_empty() {
        return Err(malformed(
            "no SignerInfo: not a signature (certificates-only message?)",
        ));
    }

    // One pass over the content for all digest algorithms in use.
    let mut algs: Vec<HashAlg> = Vec::new();
    for s in &sd.signers {
        let h = signer_digest_alg(&s.info)?;
        if !algs.contains(&h) {
            algs.push(h);
        }
    }
    let digests: Vec<Vec<u8>> = match (content, &sd.econtent) {
        (Some(r), _) => digest_reader_multi(&algs, r)?,
        (None, Some(chunks)) => algs
            .iter()
            .map(|a| {
                let mut h = a.hasher();
                for c in chunks {
                    h.update(c);
                }
                h.finalize()
            })
            .collect(),
        (None, None) => return Err(Error::MissingContent),
    };
    let digests: HashMap<HashAlg, Vec<u8>> = algs.into_iter().zip(digests).collect();

    let mut out = Vec::with_capacity(sd.signers.len());
    for signer in &sd.signers {
        out.push(verify_signer(&sd, signer, &digests, trust, now)?);
    }
    Ok(out)
}

/// The encapsulated content of a SignedData (`eContent`, chunks joined), or `None` for a
/// detached signature. Call it only after verification succeeded: the bytes are as
/// unverified as the message until then.
///
/// # Errors
/// When `cms` is not a SignedData.
pub fn encapsulated_content(cms: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let bin = parse_cms_input(cms)?;
    let sd = parse_signed_data(&bin)?;
    Ok(sd.econtent.map(|chunks| chunks.concat()))
}

/// PEM labels accepted for a signature: OpenSSL's `CMS` and `PKCS7`, the old
/// `PKCS #7 SIGNED DATA`, and gpgsm's (and git's X.509) `SIGNED MESSAGE`.
pub const SIGNATURE_PEM_LABELS: &[&str] =
    &["CMS", "PKCS7", "PKCS #7 SIGNED DATA", "SIGNED MESSAGE"];

/// The X.509 certificates a SignedData carries (its `certificates` field), in encoded
/// order, unverified: for extracting them (`smime certs`), not for trusting them.
///
/// # Errors
/// When `cms` is not a SignedData.
pub fn message_certificates(cms: &[u8]) -> Result<Vec<Certificate>, Error> {
    let bin = parse_cms_input(cms)?;
    Ok(parse_signed_data(&bin)?
        .certs
        .into_iter()
        .map(|c| c.cert)
        .collect())
}

/// Turns what a user hands in into the binary encoding: DER or BER as is (checked to be one
/// well-formed element; trailing whitespace/NULs allowed), PEM with the labels `CMS`,
/// `PKCS7`, `PKCS #7 SIGNED DATA` or `SIGNED MESSAGE` (gpgsm), or bare base64 (an S/MIME
/// `.p7s` body).
///
/// The result is the ContentInfo exactly as encoded, BER included: it is deliberately not
/// re-encoded, because re-encoding could disturb the signed bytes.
/// [`verify_detached`] accepts it (and calls this itself).
pub fn parse_cms_input(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    if bytes.first() == Some(&ber::TAG_SEQUENCE) {
        return binary_prefix(bytes);
    }
    let text = bytes.trim_ascii();
    let decoded = if text.starts_with(b"-----BEGIN ") {
        let (label, der) = pem::decode_armor(text)?;
        if !SIGNATURE_PEM_LABELS.contains(&label.as_str()) {
            return Err(malformed(format!(
                "unexpected PEM label {label:?} (want CMS or PKCS7)"
            )));
        }
        der
    } else if pem::looks_like_base64(text) {
        pem::decode(text)?
    } else {
        return Err(malformed("input is neither DER/BER, PEM nor base64"));
    };
    if decoded.first() != Some(&ber::TAG_SEQUENCE) {
        return Err(malformed("decoded data is not a ContentInfo SEQUENCE"));
    }
    binary_prefix(&decoded)
}

fn binary_prefix(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let (_, used) = Tlv::parse_prefix(bytes)?;
    let (body, rest) = bytes.split_at(used);
    if !rest.iter().all(|b| *b == 0 || b.is_ascii_whitespace()) {
        return Err(malformed(format!(
            "{} bytes of garbage after the ContentInfo",
            rest.len()
        )));
    }
    Ok(body.to_vec())
}

/// A certificate from the message, with its encoding (for the TBS bytes).
struct MsgCert {
    cert: Certificate,
    der: Vec<u8>,
}

struct ParsedSigner {
    info: SignerInfo,
    /// The signed attributes as sent, re-tagged as SET (0x31): the signed bytes.
    signed_attrs: Option<Vec<u8>>,
}

struct ParsedSignedData<'a> {
    econtent_type: ObjectIdentifier,
    /// eContent pieces (a BER OCTET STRING may come in chunks).
    econtent: Option<Vec<&'a [u8]>>,
    certs: Vec<MsgCert>,
    /// The `crls` field: DER CertificateLists.
    crls: Vec<Vec<u8>>,
    signers: Vec<ParsedSigner>,
}

fn decode_oid(t: &Tlv<'_>, what: &str) -> Result<ObjectIdentifier, Error> {
    let t = t.expect(ber::TAG_OID, what)?;
    ObjectIdentifier::from_der(&t.to_der()?).map_err(|e| malformed(format!("{what}: {e}")))
}

fn parse_signed_data(bin: &[u8]) -> Result<ParsedSignedData<'_>, Error> {
    let ci = Tlv::parse_exact(bin)?.expect(ber::TAG_SEQUENCE, "ContentInfo")?;
    let ci_parts = ci.children()?;
    let (Some(ct), Some(wrapped)) = (ci_parts.first(), ci_parts.get(1)) else {
        return Err(malformed("ContentInfo needs contentType and content"));
    };
    let ct = decode_oid(ct, "contentType")?;
    if ct != rfc5911::ID_SIGNED_DATA {
        return Err(malformed(format!(
            "ContentInfo holds {}, not signedData (encrypted or other message type?)",
            oid_name(&ct)
        )));
    }
    let wrapped = wrapped.expect(ber::TAG_CTX0, "ContentInfo content")?;
    let sd = match wrapped.children()?.as_slice() {
        [sd] => sd.expect(ber::TAG_SEQUENCE, "SignedData")?,
        _ => return Err(malformed("ContentInfo [0] must hold exactly one element")),
    };
    let parts = sd.children()?;
    let mut it = parts.iter().peekable();
    let _version = it
        .next()
        .ok_or_else(|| malformed("SignedData: missing version"))?;
    it.next()
        .ok_or_else(|| malformed("SignedData: missing digestAlgorithms"))?
        .expect(ber::TAG_SET, "digestAlgorithms")?;
    let eci = it
        .next()
        .ok_or_else(|| malformed("SignedData: missing encapContentInfo"))?
        .expect(ber::TAG_SEQUENCE, "encapContentInfo")?;
    let eci_parts = eci.children()?;
    let econtent_type = decode_oid(
        eci_parts
            .first()
            .ok_or_else(|| malformed("encapContentInfo: missing eContentType"))?,
        "eContentType",
    )?;
    let econtent = match eci_parts.get(1) {
        None => None,
        Some(e) => {
            let e = e.expect(ber::TAG_CTX0, "eContent")?;
            match e.children()?.as_slice() {
                [os] => Some(os.octet_string_chunks()?),
                _ => return Err(malformed("eContent [0] must hold one OCTET STRING")),
            }
        }
    };

    let mut certs = Vec::new();
    if let Some(c) = it.next_if(|t| t.tag == ber::TAG_CTX0) {
        for child in c.children()? {
            // Only plain X.509 certificates; attribute and other certificate formats are
            // skipped, as are certificates this decoder does not understand.
            if child.tag != ber::TAG_SEQUENCE {
                continue;
            }
            let der = child.to_der()?;
            // A certificate dated before 1970 is decoded from a copy with the dates moved
            // up to 1970 (see `trust::pre1970`); `der` stays the original, for signatures.
            if let Ok(cert) = crate::trust::pre1970::decode(&der) {
                certs.push(MsgCert { cert, der });
            }
        }
    }
    let mut crls = Vec::new();
    if let Some(c) = it.next_if(|t| t.tag == ber::TAG_CTX1) {
        // RevocationInfoChoices: plain CRLs only (OtherRevocationInfoFormat is [1]).
        for child in c.children()? {
            if child.tag == ber::TAG_SEQUENCE {
                crls.push(child.to_der()?);
            }
        }
    }
    let infos = it
        .next()
        .ok_or_else(|| malformed("SignedData: missing signerInfos"))?
        .expect(ber::TAG_SET, "signerInfos")?;
    if it.next().is_some() {
        return Err(malformed(
            "SignedData: unexpected element after signerInfos",
        ));
    }

    let mut signers = Vec::new();
    for si in infos.children()? {
        let si = si.expect(ber::TAG_SEQUENCE, "SignerInfo")?;
        let info = SignerInfo::from_der(&si.to_der()?)
            .map_err(|e| malformed(format!("SignerInfo: {e}")))?;
        // version, sid, digestAlgorithm, then [0] signedAttrs if present.
        let signed_attrs = match si.children()?.get(3) {
            Some(t) if t.tag == ber::TAG_CTX0 => {
                let mut der = t.to_der()?;
                if let Some(first) = der.first_mut() {
                    *first = ber::TAG_SET;
                }
                Some(der)
            }
            _ => None,
        };
        if signed_attrs.is_some() != info.signed_attrs.is_some() {
            return Err(malformed("SignerInfo: inconsistent signedAttrs"));
        }
        signers.push(ParsedSigner { info, signed_attrs });
    }
    Ok(ParsedSignedData {
        econtent_type,
        econtent,
        certs,
        crls,
        signers,
    })
}

/// The single value of a signed attribute, `None` if absent; several attributes of the
/// type or several values are malformed (RFC 5652 §11).
fn single_attr<'a>(
    info: &'a SignerInfo,
    oid: ObjectIdentifier,
    what: &str,
) -> Result<Option<&'a der::Any>, Error> {
    let Some(attrs) = &info.signed_attrs else {
        return Ok(None);
    };
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    let Some(attr) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() || attr.values.len() != 1 {
        return Err(malformed(format!(
            "{what} attribute must occur once with one value"
        )));
    }
    Ok(attr.values.get(0))
}

/// The message's certificates, then the trust policy's anchors and intermediates.
fn known_certificates<'a>(
    sd: &'a ParsedSignedData<'_>,
    trust: Option<&'a TrustPolicy>,
) -> impl Iterator<Item = &'a Certificate> {
    sd.certs.iter().map(|m| &m.cert).chain(
        trust
            .into_iter()
            .flat_map(|t| t.anchors.iter().chain(&t.intermediates)),
    )
}

fn verify_signer(
    sd: &ParsedSignedData<'_>,
    signer: &ParsedSigner,
    digests: &HashMap<HashAlg, Vec<u8>>,
    trust: Option<&TrustPolicy>,
    now: SystemTime,
) -> Result<Verified, Error> {
    let info = &signer.info;
    let hash = signer_digest_alg(info)?;
    let content_digest = digests
        .get(&hash)
        .ok_or_else(|| malformed("internal: digest not computed"))?;

    let cert = known_certificates(sd, trust)
        .find(|c| matches_sid(c, &info.sid))
        .ok_or(Error::SignerCertNotFound)?;
    let key = SignerKey::new(sd, cert, &info.signature_algorithm, hash, trust)?;
    let sig = info.signature.as_bytes();

    let mut signing_time = None;
    match &signer.signed_attrs {
        Some(attrs_der) => {
            let md = single_attr(info, rfc5911::ID_MESSAGE_DIGEST, "messageDigest")?
                .ok_or_else(|| malformed("signed attributes lack messageDigest"))?
                .decode_as::<OctetString>()
                .map_err(|e| malformed(format!("messageDigest: {e}")))?;
            if md.as_bytes() != content_digest.as_slice() {
                return Err(Error::DigestMismatch);
            }
            let ct = single_attr(info, rfc5911::ID_CONTENT_TYPE, "contentType")?
                .ok_or_else(|| malformed("signed attributes lack contentType"))?
                .decode_as::<ObjectIdentifier>()
                .map_err(|e| malformed(format!("contentType: {e}")))?;
            if ct != sd.econtent_type {
                return Err(Error::ContentTypeMismatch {
                    attribute: ct,
                    econtent: sd.econtent_type,
                });
            }
            if let Some(t) = single_attr(info, rfc5911::ID_SIGNING_TIME, "signingTime")? {
                let t = t
                    .decode_as::<Time>()
                    .map_err(|e| malformed(format!("signingTime: {e}")))?;
                signing_time = Some(t.to_system_time());
            }
            let d = key.hash.digest(attrs_der);
            key.verify_prehash(&d, sig)?;
        }
        None => {
            // RFC 5652 §5.4: without signed attributes the signature covers the content
            // digest itself, and eContentType must be id-data.
            if sd.econtent_type != rfc5911::ID_DATA {
                return Err(malformed(
                    "no signed attributes but eContentType is not id-data",
                ));
            }
            key.verify_prehash(content_digest, sig)?;
        }
    }

    let signer_der = match sd.certs.iter().find(|m| &m.cert == cert) {
        Some(m) => m.der.clone(),
        None => cert.to_der().unwrap_or_default(),
    };
    check_validity(cert, &signer_der, now, CheckedAt::Now)?;
    if let Some(t) = signing_time {
        check_validity(cert, &signer_der, t, CheckedAt::SigningTime)?;
    }

    let path = trust.map(|policy| {
        let msg_certs: Vec<&[u8]> = sd.certs.iter().map(|m| m.der.as_slice()).collect();
        let msg_crls: Vec<&[u8]> = sd.crls.iter().map(Vec::as_slice).collect();
        policy.validate(cert, &signer_der, &msg_certs, &msg_crls, now, signing_time)
    });
    Ok(Verified {
        signer: cert.clone(),
        signer_der,
        signing_time,
        digest_alg: hash,
        trusted: path.as_ref().is_some_and(PathVerdict::is_valid),
        path,
    })
}

/// A SignerInfo's digest algorithm: SHA-256/384/512, or SHA-1 for a DSA signature only
/// (dsaWithSHA1 or id-dsa; see [`crate::trust::dsa`]).
fn signer_digest_alg(info: &SignerInfo) -> Result<HashAlg, Error> {
    let oid = info.digest_alg.oid;
    if let Some(h) = HashAlg::from_oid(&oid) {
        return Ok(h);
    }
    let sig = &info.signature_algorithm.oid;
    if oid == HashAlg::Sha1.oid()
        && (*sig == const_oid::db::rfc5912::ID_DSA
            || dsa::DsaHash::from_signature_oid(sig) == Some(dsa::DsaHash::Sha1))
    {
        return Ok(HashAlg::Sha1);
    }
    Err(Error::UnsupportedAlgorithm(oid))
}

/// The signer's key with the scheme and hash its signature uses.
struct SignerKey {
    key: KeyKind,
    /// The hash the signature is over (that of the digest algorithm).
    hash: HashAlg,
}

enum KeyKind {
    Other(PublicKey, alg::Scheme),
    Dsa(Box<::dsa::VerifyingKey>),
}

impl SignerKey {
    fn new(
        sd: &ParsedSignedData<'_>,
        cert: &Certificate,
        sig_alg: &spki::AlgorithmIdentifierOwned,
        hash: HashAlg,
        trust: Option<&TrustPolicy>,
    ) -> Result<Self, Error> {
        let spki = cert.tbs_certificate().subject_public_key_info();
        if !dsa::is_dsa(spki) {
            let key = PublicKey::from_spki(spki)?;
            let (scheme, sig_hash) = alg::resolve(sig_alg, Some(hash))?;
            return Ok(SignerKey {
                key: KeyKind::Other(key, scheme),
                hash: sig_hash,
            });
        }
        // DSA: dsaWithSHA1, dsa-with-sha256 or id-dsa, with the digest algorithm's hash.
        let named = match dsa::DsaHash::from_signature_oid(&sig_alg.oid) {
            Some(dsa::DsaHash::Sha1) => Some(HashAlg::Sha1),
            Some(dsa::DsaHash::Sha256) => Some(HashAlg::Sha256),
            Some(dsa::DsaHash::Sha224) => return Err(Error::UnsupportedAlgorithm(sig_alg.oid)),
            None if sig_alg.oid == const_oid::db::rfc5912::ID_DSA => None,
            None => return Err(Error::UnsupportedAlgorithm(sig_alg.oid)),
        };
        if named.is_some_and(|n| n != hash) {
            return Err(malformed(format!(
                "signatureAlgorithm {} does not use digestAlgorithm {hash}",
                oid_name(&sig_alg.oid)
            )));
        }
        // A key without parameters inherits its issuer's (RFC 3279 §2.3.2).
        let pool: Vec<&Certificate> = known_certificates(sd, trust).collect();
        let inherited = dsa::inherited_for(spki, &pool);
        let key = dsa::verifying_key(spki, inherited.as_ref())
            .map_err(|e| malformed(format!("signer key: {e}")))?;
        Ok(SignerKey {
            key: KeyKind::Dsa(Box::new(key)),
            hash,
        })
    }

    fn verify_prehash(&self, digest: &[u8], sig: &[u8]) -> Result<(), Error> {
        match &self.key {
            KeyKind::Other(key, scheme) => key.verify_prehash(*scheme, self.hash, digest, sig),
            KeyKind::Dsa(key) => dsa::verify_prehash(key, digest, sig)
                .then_some(())
                .ok_or(Error::BadSignature),
        }
    }
}

fn matches_sid(cert: &Certificate, sid: &SignerIdentifier) -> bool {
    let tbs = cert.tbs_certificate();
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(isn) => {
            tbs.issuer() == &isn.issuer && tbs.serial_number() == &isn.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => {
            matches!(tbs.get_extension::<SubjectKeyIdentifier>(), Ok(Some((_, s))) if &s == ski)
        }
    }
}

/// `der` is `cert` as encoded: its validity times before 1970, which `cert` holds as the
/// epoch (`crate::trust::pre1970`), are taken from there.
fn check_validity(
    cert: &Certificate,
    der: &[u8],
    at: SystemTime,
    which: CheckedAt,
) -> Result<(), Error> {
    let v = cert.tbs_certificate().validity();
    let [nb, na] = crate::trust::pre1970::pre1970_validity(der);
    let not_before = nb.unwrap_or_else(|| v.not_before.to_system_time());
    let not_after = na.unwrap_or_else(|| v.not_after.to_system_time());
    if at < not_before {
        return Err(Error::CertNotYetValid {
            which,
            when: at,
            not_before,
        });
    }
    if at > not_after {
        return Err(Error::CertExpired {
            which,
            when: at,
            not_after,
        });
    }
    Ok(())
}
