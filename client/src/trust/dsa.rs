//! DSA signature verification (FIPS 186-4, RustCrypto `dsa`), for legacy certificates, CRLs
//! and CMS signatures (NIST PKITS 4.1.4, 4.1.5). Verification only: nothing here signs.
//!
//! certval 0.2.0-rc.1 verifies no DSA signatures; [`CertvalDsa`] is a signature callback
//! for its [`PkiEnvironment`] that does. The CMS signature check uses [`verify_prehash`].
//!
//! **SHA-1.** DSA as deployed (and as PKITS uses it) is dsaWithSHA1. SHA-1 is accepted here,
//! and only here: with a DSA key. RSA and ECDSA signatures with SHA-1 stay unsupported
//! (certval is built without its `sha1_sig` feature; `cms::HashAlg::from_oid` does not
//! return SHA-1).
//!
//! **Parameter inheritance** (RFC 3279 §2.3.2, RFC 5280 §6.1.4 (f)): a DSA key without
//! parameters uses its issuer's. [`inherited_parameters`] works them out from the
//! certificates at hand, by issuer name, and only when every candidate issuer agrees: the
//! parameters decide the key, so an extra certificate carrying the issuer's name must not be
//! able to choose them (it makes the key unusable instead).

use certval::{PkiEnvironment, VerifySignatureMessage};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5912::{DSA_WITH_SHA_1, DSA_WITH_SHA_224, DSA_WITH_SHA_256, ID_DSA};
use der::asn1::{BitString, UintRef};
use der::{Any, Decode as _, Tagged as _};
use sha2::Digest as _;
use signature::hazmat::PrehashVerifier as _;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;
use x509_cert::name::Name;

/// Whether the key is a DSA key.
pub(crate) fn is_dsa(spki: &SubjectPublicKeyInfoOwned) -> bool {
    spki.algorithm.oid == ID_DSA
}

/// The hash of a DSA signature algorithm (dsaWithSHA1, dsa-with-sha224, dsa-with-sha256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DsaHash {
    Sha1,
    Sha224,
    Sha256,
}

impl DsaHash {
    /// For a signature algorithm OID.
    pub(crate) fn from_signature_oid(oid: &ObjectIdentifier) -> Option<Self> {
        match *oid {
            DSA_WITH_SHA_1 => Some(DsaHash::Sha1),
            DSA_WITH_SHA_224 => Some(DsaHash::Sha224),
            DSA_WITH_SHA_256 => Some(DsaHash::Sha256),
            _ => None,
        }
    }

    fn digest(self, msg: &[u8]) -> Vec<u8> {
        match self {
            DsaHash::Sha1 => sha1::Sha1::digest(msg).to_vec(),
            DsaHash::Sha224 => sha2::Sha224::digest(msg).to_vec(),
            DsaHash::Sha256 => sha2::Sha256::digest(msg).to_vec(),
        }
    }
}

/// The DSA verifying key of `spki`, with `inherited` parameters when the SPKI has none.
pub(crate) fn verifying_key(
    spki: &SubjectPublicKeyInfoOwned,
    inherited: Option<&Any>,
) -> Result<dsa::VerifyingKey, String> {
    if !is_dsa(spki) {
        return Err("not a DSA key".into());
    }
    let params = spki
        .algorithm
        .parameters
        .as_ref()
        .filter(|p| p.tag() != der::Tag::Null)
        .or(inherited)
        .ok_or("DSA key without parameters, and none to inherit")?;
    let components: dsa::Components = params
        .decode_as()
        .map_err(|e| format!("DSA parameters: {e}"))?;
    let y_der = spki
        .subject_public_key
        .as_bytes()
        .ok_or("DSA public key BIT STRING has unused bits")?;
    let y = UintRef::from_der(y_der).map_err(|e| format!("DSA public key: {e}"))?;
    let y = dsa::BoxedUint::from_be_slice_vartime(y.as_bytes());
    dsa::VerifyingKey::from_components(components, y).map_err(|_| "invalid DSA public key".into())
}

/// Verifies a DER `Dss-Sig-Value` over a digest.
pub(crate) fn verify_prehash(key: &dsa::VerifyingKey, digest: &[u8], sig: &[u8]) -> bool {
    dsa::Signature::try_from(sig)
        .ok()
        .is_some_and(|s| key.verify_prehash(digest, &s).is_ok())
}

/// For each DSA key without parameters among `certs`: the parameters it inherits from its
/// issuer, when all the certificates under the issuer's name agree (keyed by the public
/// key's bits).
pub(crate) fn inherited_parameters(certs: &[&Certificate]) -> Vec<(Vec<u8>, Any)> {
    let mut out = Vec::new();
    for c in certs {
        let spki = c.tbs_certificate().subject_public_key_info();
        if !is_dsa(spki) || own_params(spki).is_some() {
            continue;
        }
        if let (Some(bits), Some(p)) = (
            spki.subject_public_key.as_bytes(),
            issuer_params(certs, c.tbs_certificate().issuer(), 0),
        ) {
            out.push((bits.to_vec(), p));
        }
    }
    out
}

fn own_params(spki: &SubjectPublicKeyInfoOwned) -> Option<&Any> {
    spki.algorithm
        .parameters
        .as_ref()
        .filter(|p| p.tag() != der::Tag::Null)
}

/// The parameters of the DSA keys named `issuer` (inherited in turn), if they all agree.
fn issuer_params(certs: &[&Certificate], issuer: &Name, depth: usize) -> Option<Any> {
    if depth > 8 {
        return None;
    }
    let mut found: Option<Any> = None;
    for i in certs
        .iter()
        .filter(|i| certval::compare_names(i.tbs_certificate().subject(), issuer))
    {
        let spki = i.tbs_certificate().subject_public_key_info();
        if !is_dsa(spki) {
            return None;
        }
        let p = match own_params(spki) {
            Some(p) => p.clone(),
            None => {
                let up = i.tbs_certificate().issuer();
                if certval::compare_names(up, issuer) {
                    return None;
                }
                issuer_params(certs, up, depth + 1)?
            }
        };
        match &found {
            Some(f) if *f != p => return None,
            _ => found = Some(p),
        }
    }
    found
}

/// certval's signature callback for DSA (certificates and CRLs): dsaWithSHA1,
/// dsa-with-sha224, dsa-with-sha256; anything else is left to the other callbacks.
pub(crate) struct CertvalDsa {
    /// See [`inherited_parameters`].
    pub(crate) inherited: Vec<(Vec<u8>, Any)>,
}

impl VerifySignatureMessage for CertvalDsa {
    fn verify_signature_message(
        &self,
        _pe: &PkiEnvironment,
        message_to_verify: &[u8],
        signature: &BitString,
        signature_alg: &AlgorithmIdentifierOwned,
        spki: &SubjectPublicKeyInfoOwned,
    ) -> certval::Result<()> {
        let Some(hash) = DsaHash::from_signature_oid(&signature_alg.oid) else {
            return Err(certval::Error::Unrecognized);
        };
        let bad = || {
            certval::Error::PathValidation(
                certval::PathValidationStatus::SignatureVerificationFailure,
            )
        };
        let inherited = spki
            .subject_public_key
            .as_bytes()
            .and_then(|bits| self.inherited.iter().find(|(b, _)| b == bits))
            .map(|(_, p)| p);
        let key = verifying_key(spki, inherited).map_err(|_| bad())?;
        let sig = signature.as_bytes().ok_or_else(bad)?;
        if verify_prehash(&key, &hash.digest(message_to_verify), sig) {
            Ok(())
        } else {
            Err(bad())
        }
    }
}

/// The parameters `spki` inherits among `certs`, if it is a DSA key without its own.
pub(crate) fn inherited_for(
    spki: &SubjectPublicKeyInfoOwned,
    certs: &[&Certificate],
) -> Option<Any> {
    let bits = spki.subject_public_key.as_bytes()?;
    inherited_parameters(certs)
        .into_iter()
        .find(|(b, _)| b == bits)
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dsa_signature_algorithms_are_claimed() {
        assert_eq!(
            DsaHash::from_signature_oid(&DSA_WITH_SHA_1),
            Some(DsaHash::Sha1)
        );
        assert_eq!(
            DsaHash::from_signature_oid(&const_oid::db::rfc5912::SHA_1_WITH_RSA_ENCRYPTION),
            None
        );
    }
}
