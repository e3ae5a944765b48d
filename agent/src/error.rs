//! The agent's error type and its **single** mapping to wire error codes.

use smime_proto::{ErrorCode, ErrorResponse, KeyId, PinState};

/// Everything that can make an operation fail. Each variant carries what the user needs
/// to recover (which token, which key, the PIN state).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The request's fields do not make sense (e.g. a digest of the wrong length).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The algorithm is unknown or does not fit the key.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// No key with this id.
    #[error("no key {0}")]
    KeyNotFound(KeyId),
    /// No token with this label or serial.
    #[error("no token {0:?}")]
    TokenNotFound(String),
    /// The token went away (card pulled, device removed).
    #[error("card removed: token {token:?} is not present (insert it again)")]
    TokenAbsent {
        /// Token label.
        token: String,
    },
    /// The key exists but does not allow the operation.
    #[error("key {key} does not allow {op}")]
    NotAllowed {
        /// The key.
        key: KeyId,
        /// The operation asked for.
        op: &'static str,
    },
    /// The token needs a user PIN and the agent has none.
    #[error("token {token:?} is locked: unlock it with a PIN (`smime unlock`)")]
    PinRequired {
        /// Token label.
        token: String,
    },
    /// The PIN was wrong. The agent never retries it.
    #[error("{}", pin_incorrect_message(token, *configured, *tries))]
    PinIncorrect {
        /// Token label.
        token: String,
        /// The token's PIN flags after the attempt.
        state: PinState,
        /// The PIN came from the agent's configuration (file or environment) rather than
        /// from a client: it was tried once at start and is not used again.
        configured: bool,
        /// The exact tries left, where the token tells (a PIV card does; PKCS#11 only
        /// has the flags in `state`).
        tries: Option<u32>,
    },
    /// The PIN is locked.
    #[error("the user PIN of token {token:?} is locked: unblock it with the PUK or the SO PIN")]
    PinLocked {
        /// Token label.
        token: String,
    },
    /// The token is on its final PIN try and the user did not confirm spending it.
    #[error(
        "token {token:?} is on its final PIN try: one more wrong PIN locks it; \
             confirm to go on, or unblock it with the PUK / SO PIN"
    )]
    PinFinalTry {
        /// Token label.
        token: String,
    },
    /// The key wants the PIN before every use (CKA_ALWAYS_AUTHENTICATE).
    #[error(
        "a key on token {token:?} needs the PIN for every use (CKA_ALWAYS_AUTHENTICATE): \
             configure pinentry, or always_auth = \"cached-pin\" with a PIN the agent holds"
    )]
    KeyNeedsPinPerUse {
        /// Token label.
        token: String,
    },
    /// The key wants a confirmation before each signature and the user declined it (or
    /// no pinentry is configured to ask).
    #[error("the signature with key {key:?} on token {token:?} was not confirmed by the user")]
    ConfirmationDeclined {
        /// Token label.
        token: String,
        /// Key label.
        key: String,
    },
    /// The key was listed but is no longer on the token.
    #[error("key with CKA_ID {cka_id} is no longer on token {token:?}")]
    KeyGone {
        /// Token label.
        token: String,
        /// The key's CKA_ID (hex).
        cka_id: String,
    },
    /// The PIN's length is outside what the token accepts.
    #[error("the PIN has a length token {token:?} does not accept")]
    PinLenRange {
        /// Token label.
        token: String,
    },
    /// The token could not process the input (bad ciphertext, bad point).
    #[error("token {token:?} rejected the input: {detail}")]
    InvalidInput {
        /// Token label.
        token: String,
        /// What was rejected.
        detail: String,
    },
    /// Any other PKCS#11 failure, with the function and return value.
    #[error("token {token:?}: {function} failed with {rv}")]
    Pkcs11 {
        /// Token label.
        token: String,
        /// The PKCS#11 function.
        function: String,
        /// The CKR_ value, as cryptoki names it.
        rv: String,
    },
    /// The agent is shutting down or its queue is full.
    #[error("the agent is busy or shutting down")]
    Busy,
    /// A bug or an unexpected internal state.
    #[error("internal error: {0}")]
    Internal(String),
}

fn pin_incorrect_message(token: &str, configured: bool, tries: Option<u32>) -> String {
    let left = tries
        .map(|n| format!(" ({n} tries left)"))
        .unwrap_or_default();
    if configured {
        format!(
            "the configured PIN for token {token:?} was rejected; the agent will not try it again \
             (fix the PIN file or variable and restart, or use `smime unlock`){left}"
        )
    } else {
        format!("wrong PIN for token {token:?}{left}")
    }
}

impl AgentError {
    fn token(&self) -> Option<&str> {
        use AgentError::*;
        match self {
            TokenAbsent { token }
            | PinRequired { token }
            | PinIncorrect { token, .. }
            | PinLocked { token }
            | PinLenRange { token }
            | PinFinalTry { token }
            | KeyNeedsPinPerUse { token }
            | ConfirmationDeclined { token, .. }
            | KeyGone { token, .. }
            | InvalidInput { token, .. }
            | Pkcs11 { token, .. } => Some(token),
            _ => None,
        }
    }
}

/// The one place where internal errors become wire codes. PINs never appear here, and raw
/// CKR detail only as the return value's name.
impl From<&AgentError> for ErrorResponse {
    fn from(e: &AgentError) -> Self {
        use AgentError::*;
        let code = match e {
            BadRequest(_) => ErrorCode::BAD_REQUEST,
            UnsupportedAlgorithm(_) => ErrorCode::UNSUPPORTED_ALGORITHM,
            KeyNotFound(_) => ErrorCode::KEY_NOT_FOUND,
            TokenNotFound(_) => ErrorCode::TOKEN_NOT_FOUND,
            TokenAbsent { .. } => ErrorCode::TOKEN_ABSENT,
            NotAllowed { .. } => ErrorCode::OPERATION_NOT_ALLOWED,
            PinRequired { .. } => ErrorCode::PIN_REQUIRED,
            PinIncorrect { .. } => ErrorCode::PIN_INCORRECT,
            PinLocked { .. } => ErrorCode::PIN_LOCKED,
            PinLenRange { .. } => ErrorCode::PIN_LEN_RANGE,
            PinFinalTry { .. } => ErrorCode::PIN_FINAL_TRY,
            KeyNeedsPinPerUse { .. } => ErrorCode::OPERATION_NOT_ALLOWED,
            ConfirmationDeclined { .. } => ErrorCode::CONFIRMATION_DECLINED,
            KeyGone { .. } => ErrorCode::KEY_NOT_FOUND,
            InvalidInput { .. } => ErrorCode::INVALID_INPUT,
            Pkcs11 { .. } => ErrorCode::TOKEN_ERROR,
            Busy => ErrorCode::BUSY,
            Internal(_) => ErrorCode::INTERNAL,
        };
        let pin_state = match e {
            PinIncorrect { state, .. } => Some(*state),
            PinLocked { .. } => Some(PinState::Locked),
            PinFinalTry { .. } => Some(PinState::FinalTry),
            _ => None,
        };
        let mut r = ErrorResponse::new(code, e.to_string());
        r.pin_state = pin_state;
        r.tries_left = match e {
            PinIncorrect { tries: Some(n), .. } => Some(*n),
            _ => pin_state.and_then(PinState::tries_left),
        };
        r.token = e.token().map(str::to_owned);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_errors_carry_recovery_data() {
        let e = AgentError::PinIncorrect {
            token: "t".into(),
            state: PinState::FinalTry,
            configured: false,
            tries: None,
        };
        let r = ErrorResponse::from(&e);
        assert_eq!(r.code, ErrorCode::PIN_INCORRECT);
        assert_eq!(r.tries_left, Some(1));
        assert_eq!(r.token.as_deref(), Some("t"));
        let r = ErrorResponse::from(&AgentError::PinLocked { token: "t".into() });
        assert_eq!((r.code, r.tries_left), (ErrorCode::PIN_LOCKED, Some(0)));
        assert!(r.message.contains("PUK"));
    }
}
