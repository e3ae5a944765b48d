//! Requests and responses. Each is one CBOR map in one frame.
//!
//! A request is a map with an `op` key naming the operation; a response is a map with a
//! `type` key. `PROTOCOL.md` lists every message with a hex example.
//!
//! ```text
//! {"op": "sign", "key": "4f1a…:01", "algorithm": "rsa-pkcs1-sha256", "digest": h'…'}
//! {"type": "signature", "signature": h'…'}
//! ```

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{DecodeError, FrameError};
use crate::frame::encode_frame;
use crate::secret::{Pin, SecretBytes};
use crate::types::{
    DecryptAlgorithm, ErrorCode, KeyAlgorithm, KeyId, Operation, PinState, SignAlgorithm,
};

/// A client's request. Requests are answered one at a time, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Must come first on every connection. `versions` lists the protocol versions the
    /// client speaks; the agent answers with the highest one it shares.
    Hello {
        /// Protocol versions the client speaks.
        versions: Vec<u32>,
        /// Free-form client name and version, for the agent's audit log.
        client: String,
    },
    /// List every usable private key with its certificate.
    ListKeys,
    /// Sign a digest the client computed.
    Sign {
        /// The key.
        key: KeyId,
        /// The scheme; the digest length must match it.
        algorithm: SignAlgorithm,
        /// The digest (not the message: messages never leave the client).
        digest: ByteBuf,
    },
    /// RSA-decrypt a wrapped content-encryption key.
    Decrypt {
        /// The key.
        key: KeyId,
        /// The padding scheme.
        algorithm: DecryptAlgorithm,
        /// The wrapped key, exactly the modulus length.
        ciphertext: ByteBuf,
    },
    /// ECDH with the key and a peer's public point; returns the shared secret Z.
    Ecdh {
        /// The key.
        key: KeyId,
        /// The peer's point, SEC1 uncompressed (`04 || X || Y`).
        peer_point: ByteBuf,
    },
    /// Log in to a token with a PIN the client prompted for.
    Unlock {
        /// Token label or serial.
        token: String,
        /// The user PIN.
        pin: Pin,
        /// The client has warned the user that the token is on its final PIN try and the
        /// user chose to go on. Without it the agent refuses to send a PIN to a token in
        /// that state (`PIN_FINAL_TRY`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        confirm_final_try: bool,
    },
    /// Log out of one token (or all, when `token` is absent) and forget cached PINs.
    Lock {
        /// Token label or serial; absent means every token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Describe the tokens the agent holds.
    Status,
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// Answer to `Hello`.
    Hello {
        /// The negotiated protocol version.
        version: u32,
        /// Agent name and version.
        agent: String,
        /// Operations this agent serves (the `op` names).
        capabilities: Vec<String>,
    },
    /// Answer to `ListKeys`.
    Keys {
        /// The keys, in a stable order.
        keys: Vec<KeyInfo>,
    },
    /// Answer to `Sign`: RSA signatures as the raw modulus-length block, ECDSA signatures
    /// DER-encoded (`Ecdsa-Sig-Value`, RFC 5480 §2.2), as CMS and X.509 want them.
    Signature {
        /// The signature.
        signature: ByteBuf,
    },
    /// Answer to `Decrypt` (the content-encryption key) and `Ecdh` (the shared secret Z).
    Secret {
        /// The key material.
        secret: SecretBytes,
    },
    /// Answer to `Unlock` and `Lock`.
    Ok,
    /// Answer to `Status`.
    Status {
        /// One entry per token.
        tokens: Vec<TokenStatus>,
        /// The agent itself: version, uptime, modules. Absent from agents before 0.1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<AgentStatus>,
    },
    /// The operation failed; the connection stays usable.
    Error(ErrorResponse),
}

/// An operation failure, with what a user needs to recover from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// A sentence for a human.
    pub message: String,
    /// For PIN errors: the token's PIN state after the failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_state: Option<PinState>,
    /// For PIN errors: tries left, when the token's flags pin it down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
    /// The token concerned, by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ErrorResponse {
    /// An error with only a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            pin_state: None,
            tries_left: None,
            token: None,
        }
    }
}

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if let Some(t) = self.tries_left {
            write!(f, "; {t} PIN tries left")?;
        } else if self.pin_state == Some(PinState::CountLow) {
            write!(
                f,
                "; the token has recorded wrong PINs, tries are running low"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorResponse {}

/// One private key the agent can use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Stable key id.
    pub id: KeyId,
    /// Token label.
    pub token: String,
    /// Token serial number.
    pub token_serial: String,
    /// The key's CKA_LABEL.
    pub label: String,
    /// Key type.
    pub algorithm: KeyAlgorithm,
    /// Key size in bits (RSA modulus, or the curve's field size).
    pub bits: u32,
    /// DER X.509 certificate with the same CKA_ID, if the token holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<ByteBuf>,
    /// Operations the key allows.
    pub operations: Vec<Operation>,
    /// CKA_ALWAYS_AUTHENTICATE: the token wants the PIN before every use.
    #[serde(default)]
    pub always_authenticate: bool,
}

/// The agent, as `Status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Agent name and version.
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Every configured PKCS#11 module, loaded or not.
    pub modules: Vec<ModuleStatus>,
    /// PC/SC readers and cards, when the agent watches card events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcsc: Option<PcscStatus>,
}

/// PC/SC as the agent's card monitor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcscStatus {
    /// Why pcscd does not answer (not running, restarting); absent when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The readers, in PC/SC's order.
    pub readers: Vec<ReaderStatus>,
}

/// One smart-card reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderStatus {
    /// The reader name.
    pub name: String,
    /// Whether a card is in it.
    pub card: bool,
    /// The card's answer-to-reset, hex, when there is a card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atr: Option<String>,
}

/// One configured PKCS#11 module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStatus {
    /// Library path.
    pub path: String,
    /// Whether it loaded and initialized.
    pub loaded: bool,
    /// Why it did not load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One token, as `Status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStatus {
    /// Token label.
    pub label: String,
    /// Token serial number.
    pub serial: String,
    /// Path of the PKCS#11 module that serves it.
    pub module: String,
    /// Whether the agent holds a logged-in session.
    pub logged_in: bool,
    /// The user PIN state from the token flags.
    pub pin_state: PinState,
    /// Number of private keys found.
    pub keys: u32,
    /// Logins use the reader's PIN pad (CKF_PROTECTED_AUTHENTICATION_PATH): the user
    /// types the PIN on the reader, not on the computer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin_pad: bool,
    /// Set while an operation has been running on the token for more than a second: what
    /// the token waits for (a touch, the card, a PIN on the keypad), for clients to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// For a card the agent drives natively over PC/SC (its PIV backend, no PKCS#11
    /// module): the reader, the PIV application version and the PIN tries left read from
    /// the card. Absent for PKCS#11 tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardStatus>,
}

/// A card served by the agent's native PIV backend, as `Status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardStatus {
    /// The PC/SC reader the card is in.
    pub reader: String,
    /// The PIV application (firmware) version the card reports, e.g. `5.4.3`.
    pub version: String,
    /// User PIN tries left, read from the card (a VERIFY without data). Absent when the
    /// card cannot tell: it answers no count while the PIN is verified, or it is out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_tries_left: Option<u32>,
    /// Whether the card is in its reader now (as the agent last saw it).
    pub present: bool,
}

impl Request {
    /// Whether this asks for a private-key operation (sign, decrypt, ECDH), which the token
    /// answers.
    pub fn is_key_operation(&self) -> bool {
        self.key_operation().is_some()
    }

    /// For a private-key operation: the key it uses and the operation's `op` name
    /// (`sign`, `decrypt`, `ecdh`).
    pub fn key_operation(&self) -> Option<(&KeyId, &'static str)> {
        match self {
            Request::Sign { key, .. } => Some((key, "sign")),
            Request::Decrypt { key, .. } => Some((key, "decrypt")),
            Request::Ecdh { key, .. } => Some((key, "ecdh")),
            _ => None,
        }
    }

    /// The `op` names of every request this crate knows, `hello` first.
    pub const OPERATIONS: &[&str] = &[
        "hello",
        "list_keys",
        "sign",
        "decrypt",
        "ecdh",
        "unlock",
        "lock",
        "status",
    ];

    /// Encodes the request as a complete frame (length prefix + CBOR).
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the encoding exceeds [`crate::MAX_FRAME_LEN`].
    pub fn encode_frame(&self) -> Result<Vec<u8>, FrameError> {
        frame_of(self)
    }

    /// Decodes one frame payload.
    ///
    /// # Errors
    /// [`DecodeError::UnknownOperation`] for a well-formed request with an unknown `op`
    /// (answer it with an error response); any other error means the peer does not speak
    /// the protocol.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        // A first pass reads only `op`, so an unknown operation is told apart from garbage
        // without building a value tree of the whole payload.
        let head: OpOnly = decode_exact(payload).map_err(|e| match e {
            DecodeError::TrailingBytes(n) => DecodeError::TrailingBytes(n),
            _ => DecodeError::Malformed("a request is a CBOR map with a text \"op\"".into()),
        })?;
        let op = match head.op {
            Some(ciborium::Value::Text(op)) => op,
            _ => {
                return Err(DecodeError::Malformed(
                    "a request is a CBOR map with a text \"op\"".into(),
                ));
            }
        };
        if !Self::OPERATIONS.contains(&op.as_str()) {
            // Echoed back in the error: bounded, so the answer always fits a frame.
            let shown: String = op.chars().take(64).collect();
            return Err(DecodeError::UnknownOperation(shown));
        }
        decode_exact(payload).map_err(|e| {
            // serde's messages quote offending values: never echo those for `unlock`,
            // whose only secret is the PIN.
            if op == "unlock" {
                DecodeError::Malformed("malformed unlock request (token: text, pin: text)".into())
            } else {
                DecodeError::Malformed(format!("malformed {op} request: {e}"))
            }
        })
    }
}

impl Response {
    /// Encodes the response as a complete frame (length prefix + CBOR).
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the encoding exceeds [`crate::MAX_FRAME_LEN`].
    pub fn encode_frame(&self) -> Result<Vec<u8>, FrameError> {
        frame_of(self)
    }

    /// Decodes one frame payload.
    ///
    /// # Errors
    /// A [`DecodeError`] when the payload is not a response.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(payload)
    }
}

fn frame_of<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut payload = Vec::with_capacity(256);
    // Serializing our own types into a Vec cannot fail: every field is CBOR-representable
    // and the writer is memory.
    #[allow(clippy::expect_used)] // infallible, see above
    ciborium::into_writer(msg, &mut payload).expect("CBOR encoding into memory");
    encode_frame(&payload)
}

/// Only the `op` of a request; every other field is skipped without being built.
#[derive(Deserialize)]
struct OpOnly {
    op: Option<ciborium::Value>,
}

fn decode_exact<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let mut rest = payload;
    let value =
        ciborium::from_reader(&mut rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::TrailingBytes(rest.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &[u8] {
        &frame[4..]
    }

    #[test]
    fn every_request_round_trips() {
        let key = KeyId::new("abc", &[1]);
        let reqs = [
            Request::Hello {
                versions: vec![1],
                client: "t".into(),
            },
            Request::ListKeys,
            Request::Sign {
                key: key.clone(),
                algorithm: SignAlgorithm::EcdsaSha256,
                digest: ByteBuf::from(vec![7; 32]),
            },
            Request::Decrypt {
                key: key.clone(),
                algorithm: DecryptAlgorithm::RsaOaepSha1,
                ciphertext: ByteBuf::from(vec![1; 256]),
            },
            Request::Ecdh {
                key,
                peer_point: ByteBuf::from(vec![4; 65]),
            },
            Request::Unlock {
                token: "t".into(),
                pin: Pin::new("1234".into()),
                confirm_final_try: false,
            },
            Request::Unlock {
                token: "t".into(),
                pin: Pin::new("1234".into()),
                confirm_final_try: true,
            },
            Request::Lock { token: None },
            Request::Lock {
                token: Some("t".into()),
            },
            Request::Status,
        ];
        for r in reqs {
            let f = r.encode_frame().unwrap();
            assert_eq!(
                u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
                f.len() - 4
            );
            assert_eq!(Request::decode(payload(&f)).unwrap(), r);
        }
    }

    #[test]
    fn every_response_round_trips() {
        let resps = [
            Response::Hello {
                version: 1,
                agent: "a".into(),
                capabilities: vec!["sign".into()],
            },
            Response::Keys {
                keys: vec![KeyInfo {
                    id: KeyId::new("s", &[2]),
                    token: "t".into(),
                    token_serial: "s".into(),
                    label: "l".into(),
                    algorithm: KeyAlgorithm::EcP256,
                    bits: 256,
                    certificate: Some(ByteBuf::from(vec![0x30, 0])),
                    operations: vec![Operation::Sign, Operation::Ecdh],
                    always_authenticate: false,
                }],
            },
            Response::Signature {
                signature: ByteBuf::from(vec![9; 64]),
            },
            Response::Secret {
                secret: SecretBytes::new(vec![1; 16]),
            },
            Response::Ok,
            Response::Status {
                tokens: vec![TokenStatus {
                    label: "t".into(),
                    serial: "s".into(),
                    module: "m".into(),
                    logged_in: true,
                    pin_state: PinState::Ok,
                    keys: 3,
                    pin_pad: true,
                    waiting: Some("waiting for the token (2 s)".into()),
                    card: Some(CardStatus {
                        reader: "Virtual PCD 00 00".into(),
                        version: "5.4.3".into(),
                        pin_tries_left: Some(2),
                        present: true,
                    }),
                }],
                agent: None,
            },
            Response::Error(ErrorResponse {
                code: ErrorCode::PIN_INCORRECT,
                message: "wrong".into(),
                pin_state: Some(PinState::FinalTry),
                tries_left: Some(1),
                token: Some("t".into()),
            }),
        ];
        for r in resps {
            assert_eq!(
                Response::decode(payload(&r.encode_frame().unwrap())).unwrap(),
                r
            );
        }
    }

    #[test]
    fn unknown_op_is_distinguished_from_garbage() {
        // {"op": "frobnicate"}
        let mut p = vec![0xa1, 0x62, b'o', b'p', 0x6a];
        p.extend_from_slice(b"frobnicate");
        assert_eq!(
            Request::decode(&p),
            Err(DecodeError::UnknownOperation("frobnicate".into()))
        );
        assert!(matches!(
            Request::decode(&[0xff, 0x00]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Request::decode(&[0x01]),
            Err(DecodeError::Malformed(_))
        ));
        // {"op": "sign"} without its fields
        assert!(matches!(
            Request::decode(&[0xa1, 0x62, b'o', b'p', 0x64, b's', b'i', b'g', b'n']),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let f = Request::Status.encode_frame().unwrap();
        let mut p = payload(&f).to_vec();
        p.push(0);
        assert_eq!(Request::decode(&p), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn unknown_algorithm_decodes_as_unknown() {
        let r = Request::Sign {
            key: KeyId("k:01".into()),
            algorithm: SignAlgorithm::RsaPkcs1Sha256,
            digest: ByteBuf::from(vec![0; 32]),
        };
        let f = r.encode_frame().unwrap();
        let p = payload(&f);
        let needle = b"rsa-pkcs1-sha256";
        let at = p.windows(needle.len()).position(|w| w == needle).unwrap();
        let mut p = p.to_vec();
        p[at..at + needle.len()].copy_from_slice(b"rsa-pkcs1-sha999");
        match Request::decode(&p).unwrap() {
            Request::Sign { algorithm, .. } => assert_eq!(algorithm, SignAlgorithm::Unknown),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_unlock_never_echoes_the_pin() {
        // {"op": "unlock", "token": "t", "pin": 123456} — the PIN sent as an integer.
        let mut p = vec![0xa3, 0x62, b'o', b'p', 0x66];
        p.extend_from_slice(b"unlock");
        p.extend_from_slice(&[
            0x65, b't', b'o', b'k', b'e', b'n', 0x61, b't', 0x63, b'p', b'i', b'n', 0x1a,
        ]);
        p.extend_from_slice(&123_456u32.to_be_bytes());
        let err = Request::decode(&p).unwrap_err().to_string();
        assert!(!err.contains("123456"), "{err}");
    }

    #[test]
    fn unknown_op_echo_is_bounded() {
        let op = "x".repeat(100_000);
        let mut p = vec![0xa1, 0x62, b'o', b'p', 0x7a];
        p.extend_from_slice(&(op.len() as u32).to_be_bytes());
        p.extend_from_slice(op.as_bytes());
        match Request::decode(&p) {
            Err(DecodeError::UnknownOperation(shown)) => assert_eq!(shown.len(), 64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unlock_debug_hides_pin() {
        let r = Request::Unlock {
            token: "t".into(),
            pin: Pin::new("987654".into()),
            confirm_final_try: false,
        };
        assert!(!format!("{r:?}").contains("987654"));
    }
}
