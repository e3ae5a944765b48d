//! Wire algorithms → PKCS#11 mechanisms.

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use rsa::pkcs1v15::Pkcs1v15Sign;
use smime_proto::{DecryptAlgorithm, SignAlgorithm};

use crate::error::AgentError;

/// What to hand to C_Sign for a signature scheme over a digest.
pub(crate) fn sign_input(
    alg: SignAlgorithm,
    digest: &[u8],
) -> Result<(Mechanism<'static>, Vec<u8>), AgentError> {
    use SignAlgorithm::*;
    let expected = alg
        .digest_len()
        .ok_or_else(|| AgentError::UnsupportedAlgorithm("unknown signature algorithm".into()))?;
    if digest.len() != expected {
        return Err(AgentError::BadRequest(format!(
            "{alg:?} needs a {expected}-byte digest, got {} bytes",
            digest.len()
        )));
    }
    let pss = |hash_alg, mgf, s_len: u64| {
        Mechanism::RsaPkcsPss(PkcsPssParams {
            hash_alg,
            mgf,
            s_len: s_len.into(),
        })
    };
    // CKM_RSA_PKCS signs DigestInfo || hash; the prefixes come from the rsa crate.
    let digest_info = |prefix: &[u8]| [prefix, digest].concat();
    Ok(match alg {
        RsaPkcs1Sha256 => (
            Mechanism::RsaPkcs,
            digest_info(&Pkcs1v15Sign::new::<sha2::Sha256>().prefix),
        ),
        RsaPkcs1Sha384 => (
            Mechanism::RsaPkcs,
            digest_info(&Pkcs1v15Sign::new::<sha2::Sha384>().prefix),
        ),
        RsaPkcs1Sha512 => (
            Mechanism::RsaPkcs,
            digest_info(&Pkcs1v15Sign::new::<sha2::Sha512>().prefix),
        ),
        RsaPssSha256 => (
            pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32),
            digest.to_vec(),
        ),
        RsaPssSha384 => (
            pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48),
            digest.to_vec(),
        ),
        RsaPssSha512 => (
            pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64),
            digest.to_vec(),
        ),
        EcdsaSha256 | EcdsaSha384 | EcdsaSha512 => (Mechanism::Ecdsa, digest.to_vec()),
        _ => return Err(AgentError::UnsupportedAlgorithm(format!("{alg:?}"))),
    })
}

/// The mechanism for C_Decrypt.
pub(crate) fn decrypt_mechanism(alg: DecryptAlgorithm) -> Result<Mechanism<'static>, AgentError> {
    use DecryptAlgorithm::*;
    let oaep =
        |hash, mgf| Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()));
    Ok(match alg {
        RsaPkcs1 => Mechanism::RsaPkcs,
        RsaOaepSha1 => oaep(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        RsaOaepSha256 => oaep(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        RsaOaepSha384 => oaep(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        RsaOaepSha512 => oaep(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
        _ => return Err(AgentError::UnsupportedAlgorithm(format!("{alg:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_length_is_checked() {
        assert!(matches!(
            sign_input(SignAlgorithm::RsaPkcs1Sha256, &[0; 31]),
            Err(AgentError::BadRequest(_))
        ));
        assert!(matches!(
            sign_input(SignAlgorithm::Unknown, &[0; 32]),
            Err(AgentError::UnsupportedAlgorithm(_))
        ));
        let (_, input) = sign_input(SignAlgorithm::RsaPkcs1Sha256, &[7; 32]).unwrap();
        assert_eq!(
            input.len(),
            19 + 32,
            "DigestInfo prefix for SHA-256 is 19 bytes"
        );
        assert_eq!(&input[..2], &[0x30, 0x31]);
    }
}
