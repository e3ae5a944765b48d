//! Values carried inside messages.
//!
//! Algorithms and operations are closed enums with a catch-all `Unknown` variant, so an
//! agent can answer a newer client's unknown algorithm with an error instead of dropping
//! the connection. Error codes are an open newtype over `u16` (see [`ErrorCode`]).

use serde::{Deserialize, Serialize};

/// Stable identifier of a private key: `<token serial>:<CKA_ID in lowercase hex>`.
///
/// ```text
/// "4f1a9c0b7e2d3a11:01"      token serial 4f1a9c0b7e2d3a11, CKA_ID 0x01
/// ```
///
/// It never contains a slot id: slots renumber between processes (SoftHSM) and when
/// readers come and go, while the token serial and CKA_ID stay.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl KeyId {
    /// Builds the id from a token serial and a CKA_ID.
    pub fn new(token_serial: &str, cka_id: &[u8]) -> Self {
        Self(format!("{}:{}", token_serial.trim(), hex_lower(cka_id)))
    }

    /// Splits the id into token serial and CKA_ID bytes; `None` if malformed.
    pub fn parts(&self) -> Option<(&str, Vec<u8>)> {
        let (serial, id) = self.0.rsplit_once(':')?;
        Some((serial, from_hex(id)?))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A signature scheme applied to a digest the client computed.
///
/// | wire name          | PKCS#11 mechanism     | `digest` length |
/// |--------------------|-----------------------|-----------------|
/// | `rsa-pkcs1-sha256` | CKM_RSA_PKCS + DigestInfo | 32 |
/// | `rsa-pkcs1-sha384` | CKM_RSA_PKCS + DigestInfo | 48 |
/// | `rsa-pkcs1-sha512` | CKM_RSA_PKCS + DigestInfo | 64 |
/// | `rsa-pss-sha256`   | CKM_RSA_PKCS_PSS, MGF1 same hash, salt = hash length | 32 |
/// | `rsa-pss-sha384`   | idem | 48 |
/// | `rsa-pss-sha512`   | idem | 64 |
/// | `ecdsa-sha256`     | CKM_ECDSA | 32 |
/// | `ecdsa-sha384`     | CKM_ECDSA | 48 |
/// | `ecdsa-sha512`     | CKM_ECDSA | 64 |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SignAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RsaPkcs1Sha512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPssSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt.
    RsaPssSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt.
    RsaPssSha512,
    /// ECDSA over a SHA-256 digest; the signature comes back DER-encoded.
    EcdsaSha256,
    /// ECDSA over a SHA-384 digest.
    EcdsaSha384,
    /// ECDSA over a SHA-512 digest.
    EcdsaSha512,
    /// A name this side does not know.
    #[serde(other)]
    Unknown,
}

impl SignAlgorithm {
    /// The digest length the scheme expects, in bytes.
    pub fn digest_len(self) -> Option<usize> {
        use SignAlgorithm::*;
        match self {
            RsaPkcs1Sha256 | RsaPssSha256 | EcdsaSha256 => Some(32),
            RsaPkcs1Sha384 | RsaPssSha384 | EcdsaSha384 => Some(48),
            RsaPkcs1Sha512 | RsaPssSha512 | EcdsaSha512 => Some(64),
            Unknown => None,
        }
    }

    /// Whether the scheme needs an RSA key (otherwise an EC key).
    pub fn is_rsa(self) -> bool {
        use SignAlgorithm::*;
        matches!(
            self,
            RsaPkcs1Sha256
                | RsaPkcs1Sha384
                | RsaPkcs1Sha512
                | RsaPssSha256
                | RsaPssSha384
                | RsaPssSha512
        )
    }
}

/// How to decrypt a wrapped content-encryption key with an RSA private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DecryptAlgorithm {
    /// RSAES-PKCS1-v1_5 (CKM_RSA_PKCS).
    RsaPkcs1,
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1, empty label (the OAEP defaults).
    RsaOaepSha1,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256, empty label.
    RsaOaepSha256,
    /// RSAES-OAEP with SHA-384 and MGF1-SHA-384, empty label.
    RsaOaepSha384,
    /// RSAES-OAEP with SHA-512 and MGF1-SHA-512, empty label.
    RsaOaepSha512,
    /// A name this side does not know.
    #[serde(other)]
    Unknown,
}

/// The kind and size of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// RSA; the modulus size is in [`crate::KeyInfo::bits`].
    Rsa,
    /// ECDSA/ECDH on NIST P-256 (secp256r1).
    EcP256,
    /// ECDSA/ECDH on NIST P-384 (secp384r1).
    EcP384,
    /// A key type the agent cannot use.
    #[serde(other)]
    Unknown,
}

/// A private-key operation a key allows (from CKA_SIGN, CKA_DECRYPT, CKA_DERIVE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Operation {
    /// `Sign`.
    Sign,
    /// `Decrypt`.
    Decrypt,
    /// `Ecdh`.
    Ecdh,
    /// Something this side does not know.
    #[serde(other)]
    Unknown,
}

/// What the token says about its user PIN (from the CKF_USER_PIN_* token flags).
///
/// PKCS#11 reports no exact counter; the flags say "some wrong tries" (`count-low`),
/// "one try left" (`final-try`) or `locked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PinState {
    /// No wrong PIN recorded since the last good one.
    Ok,
    /// At least one wrong PIN was entered; more than one try is left.
    CountLow,
    /// The next wrong PIN locks the token.
    FinalTry,
    /// The PIN is locked; only the PUK / SO PIN can unblock it.
    Locked,
    /// A state this side does not know.
    #[serde(other)]
    Unknown,
}

impl PinState {
    /// The wire name (`ok`, `count-low`, `final-try`, `locked`).
    pub fn as_str(self) -> &'static str {
        match self {
            PinState::Ok => "ok",
            PinState::CountLow => "count-low",
            PinState::FinalTry => "final-try",
            PinState::Locked => "locked",
            PinState::Unknown => "unknown",
        }
    }

    /// Tries left when the flags pin it down: 1 on final try, 0 when locked.
    pub fn tries_left(self) -> Option<u32> {
        match self {
            PinState::FinalTry => Some(1),
            PinState::Locked => Some(0),
            _ => None,
        }
    }
}

/// Error code of an operation failure (an open set: unknown codes are kept as numbers).
///
/// Codes are grouped by hundreds: 1xx request, 2xx key/token, 3xx PIN, 4xx token
/// failure, 5xx agent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $val:expr;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($val);)*

            /// The constant's name, or `None` for a code this side does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($val => Some(stringify!($name)),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// The request is well-formed CBOR but its fields are wrong (bad digest length, …).
    BAD_REQUEST = 100;
    /// `Hello` listed no version the agent speaks.
    UNSUPPORTED_VERSION = 101;
    /// The `op` is not known to this agent.
    UNKNOWN_OPERATION = 102;
    /// The first request on a connection must be `Hello`.
    HELLO_REQUIRED = 103;
    /// The algorithm is unknown or does not fit the key.
    UNSUPPORTED_ALGORITHM = 104;
    /// No key with this id.
    KEY_NOT_FOUND = 200;
    /// No token with this label or serial.
    TOKEN_NOT_FOUND = 201;
    /// The token is not present (card removed).
    TOKEN_ABSENT = 202;
    /// The key does not allow this operation.
    OPERATION_NOT_ALLOWED = 203;
    /// The token needs a PIN: send `Unlock`.
    PIN_REQUIRED = 300;
    /// The PIN was wrong. The agent does not retry it; `pin_state` tells the tries left.
    PIN_INCORRECT = 301;
    /// The PIN is locked: unblock it with the PUK or SO PIN.
    PIN_LOCKED = 302;
    /// The PIN has a length the token refuses.
    PIN_LEN_RANGE = 303;
    /// The token is on its final PIN try: resend `unlock` with `confirm_final_try` once
    /// the user has agreed, or unblock the PIN another way.
    PIN_FINAL_TRY = 304;
    /// The key needs the user's confirmation before each signature (a high-assurance
    /// key) and the user declined, or the agent has no pinentry to ask. Nothing was signed.
    CONFIRMATION_DECLINED = 305;
    /// The token failed the operation (see `message`).
    TOKEN_ERROR = 400;
    /// The token could not decrypt or derive with the given input.
    INVALID_INPUT = 401;
    /// An internal agent failure.
    INTERNAL = 500;
    /// The agent is shutting down or overloaded; try again.
    BUSY = 501;
}

impl std::fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({})", self.0),
            None => write!(f, "ErrorCode({:#06x})", self.0),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_round_trip() {
        let id = KeyId::new("4f1a9c0b7e2d3a11 ", &[0x01, 0xab]);
        assert_eq!(id.0, "4f1a9c0b7e2d3a11:01ab");
        assert_eq!(id.parts(), Some(("4f1a9c0b7e2d3a11", vec![0x01, 0xab])));
        assert_eq!(KeyId("x:0".into()).parts(), None);
        assert_eq!(KeyId("nocolon".into()).parts(), None);
    }

    #[test]
    fn unknown_error_code_debug_is_hex() {
        assert_eq!(format!("{:?}", ErrorCode(0x1234)), "ErrorCode(0x1234)");
        assert_eq!(
            format!("{:?}", ErrorCode::PIN_INCORRECT),
            "PIN_INCORRECT(301)"
        );
    }
}
