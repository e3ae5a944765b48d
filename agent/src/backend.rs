//! Token backends: PKCS#11 modules, and cards driven natively over PC/SC (PIV).
//!
//! ```text
//!   keystore ──► backend::pkcs11::Token ──jobs──► worker threads (one Session each) ──► C_* calls
//!                       (PIN policy)        └───► one thread per PIV card ──► yubikey crate ──► pcscd
//! ```

pub mod piv;
pub mod pkcs11;

use smime_proto::KeyAlgorithm;

/// How a token hands back an ECDSA signature.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EcdsaForm {
    /// `r || s` (PKCS#11).
    Raw,
    /// DER `Ecdsa-Sig-Value` (PIV cards).
    Der,
}

/// An ECDSA signature as the wire wants it (DER), checked on the way; on a malformed one,
/// what is wrong with it. Signatures of other algorithms pass through unchanged.
pub(crate) fn ecdsa_der(
    alg: KeyAlgorithm,
    sig: Vec<u8>,
    form: EcdsaForm,
) -> Result<Vec<u8>, String> {
    let e = |e: p256::ecdsa::Error| e.to_string();
    Ok(match (alg, form) {
        (KeyAlgorithm::EcP256, EcdsaForm::Raw) => p256::ecdsa::Signature::from_slice(&sig)
            .map_err(e)?
            .to_der()
            .as_bytes()
            .to_vec(),
        (KeyAlgorithm::EcP256, EcdsaForm::Der) => p256::ecdsa::Signature::from_der(&sig)
            .map_err(e)?
            .to_der()
            .as_bytes()
            .to_vec(),
        (KeyAlgorithm::EcP384, EcdsaForm::Raw) => p384::ecdsa::Signature::from_slice(&sig)
            .map_err(e)?
            .to_der()
            .as_bytes()
            .to_vec(),
        (KeyAlgorithm::EcP384, EcdsaForm::Der) => p384::ecdsa::Signature::from_der(&sig)
            .map_err(e)?
            .to_der()
            .as_bytes()
            .to_vec(),
        _ => sig,
    })
}

/// Refuses a peer point that is not an uncompressed SEC1 point on the key's curve: a
/// token that does not check it would leak the private key to an invalid-curve attack.
pub(crate) fn check_peer_point(
    curve: KeyAlgorithm,
    peer: &[u8],
) -> Result<(), crate::error::AgentError> {
    let on_curve = match curve {
        KeyAlgorithm::EcP256 => peer.len() == 65 && p256::PublicKey::from_sec1_bytes(peer).is_ok(),
        KeyAlgorithm::EcP384 => peer.len() == 97 && p384::PublicKey::from_sec1_bytes(peer).is_ok(),
        _ => false,
    };
    if !on_curve || peer.first() != Some(&0x04) {
        return Err(crate::error::AgentError::BadRequest(format!(
            "the peer point must be an uncompressed SEC1 point (04 || X || Y) on the key's curve ({curve:?})"
        )));
    }
    Ok(())
}
