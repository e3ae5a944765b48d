//! A worker thread's view of a token: one session, a cache of key handles, and the
//! PKCS#11 calls themselves. Everything here is blocking and runs off the tokio threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use smime_proto::{
    DecryptAlgorithm, KeyAlgorithm, KeyId, KeyInfo, Operation, Pin, PinState, SecretBytes,
    SignAlgorithm,
};

use super::KeyEntry;
use super::mechanism::{decrypt_mechanism, sign_input};
use super::oaep;
use super::raw::RawModule;
use crate::error::AgentError;

/// Where a PIN comes from; decides what the agent may risk with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSource {
    /// The agent's configuration (file or environment): sent only to a token with a
    /// clean PIN record.
    Configured,
    /// A client forwarded what the user typed.
    User,
    /// As `User`, and the user agreed to spend the final try.
    UserConfirmedFinalTry,
    /// A PIN the agent cached from an earlier login (`always_auth = "cached-pin"`): sent,
    /// like a configured one, only to a token with a clean PIN record.
    Cached,
}

/// What a successful `login` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Login {
    /// C_Login succeeded.
    LoggedIn,
    /// The token was already logged in; the PIN was not sent.
    AlreadyLoggedIn,
}

/// The two operations that take a context-specific login.
#[derive(Debug, Clone, Copy)]
enum Op {
    Sign,
    Decrypt,
}

/// DER of the namedCurve OIDs in CKA_EC_PARAMS.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

#[derive(Debug)]
pub(super) struct Worker {
    session: Session,
    p11: Pkcs11,
    slot: Slot,
    token: String,
    /// CKA_ID → private key handle. Handles are valid for the application's lifetime
    /// with the token; on KEY_HANDLE_INVALID the entry is dropped and looked up again.
    handles: HashMap<Vec<u8>, ObjectHandle>,
    /// The token refused CKM_RSA_PKCS_OAEP with SHA-2: use CKM_RSA_X_509 + host decoding.
    host_oaep: bool,
    /// Bumped by the first worker that sees the token gone; a worker whose session is
    /// older than the token's current epoch reopens it before its next job.
    epoch: Arc<AtomicU64>,
    session_epoch: u64,
    /// `C_Sign`/`C_Decrypt` called directly, for always-authenticate keys.
    raw: Option<Arc<RawModule>>,
}

/// The user PIN state from the token flags.
pub(super) fn pin_state(info: &TokenInfo) -> PinState {
    if info.user_pin_locked() {
        PinState::Locked
    } else if info.user_pin_final_try() {
        PinState::FinalTry
    } else if info.user_pin_count_low() {
        PinState::CountLow
    } else {
        PinState::Ok
    }
}

impl Worker {
    pub(super) fn new(
        session: Session,
        p11: Pkcs11,
        slot: Slot,
        token: String,
        epoch: Arc<AtomicU64>,
        raw: Option<Arc<RawModule>>,
    ) -> Self {
        let session_epoch = epoch.load(Ordering::SeqCst);
        Self {
            session,
            p11,
            slot,
            token,
            handles: HashMap::new(),
            host_oaep: false,
            epoch,
            session_epoch,
            raw,
        }
    }

    fn err(&self, e: CkError, function: &str) -> AgentError {
        let token = self.token.clone();
        let CkError::Pkcs11(rv, f) = &e else {
            return AgentError::Pkcs11 {
                token,
                function: function.into(),
                rv: e.to_string(),
            };
        };
        tracing::debug!(token = %token, function = %f, rv = %rv, "PKCS#11 error");
        use RvError::*;
        match rv {
            // The session may be logged in and the *key* want a context-specific login
            // (CKA_ALWAYS_AUTHENTICATE): that is not "the token is locked".
            UserNotLoggedIn if self.logged_in() => AgentError::KeyNeedsPinPerUse { token },
            UserNotLoggedIn => AgentError::PinRequired { token },
            PinLocked => AgentError::PinLocked { token },
            DeviceRemoved | TokenNotPresent | TokenNotRecognized | SessionHandleInvalid
            | SessionClosed => AgentError::TokenAbsent { token },
            EncryptedDataInvalid | EncryptedDataLenRange | DataInvalid | DataLenRange => {
                AgentError::InvalidInput {
                    token,
                    detail: format!("{f}: {rv}"),
                }
            }
            MechanismInvalid
            | MechanismParamInvalid
            | KeyTypeInconsistent
            | KeyFunctionNotPermitted => AgentError::UnsupportedAlgorithm(format!(
                "token {token:?} refused the mechanism ({f}: {rv})"
            )),
            _ => AgentError::Pkcs11 {
                token,
                function: f.to_string(),
                rv: rv.to_string(),
            },
        }
    }

    /// Whether the application is logged in to the token (as seen by this session).
    pub(super) fn logged_in(&self) -> bool {
        use cryptoki::session::SessionState::{RoUser, RwUser};
        matches!(
            self.session.get_session_info().map(|i| i.session_state()),
            Ok(RoUser | RwUser)
        )
    }

    /// At most one C_Login, never retried. The token flags are read first: no PIN is sent
    /// to a locked token, to a token on its final try without the user's consent, or,
    /// for a PIN from the configuration, to a token with any wrong PIN on record.
    pub(super) fn login(&mut self, pin: &Pin, source: PinSource) -> Result<Login, AgentError> {
        let r = self.login_once(pin, source);
        self.track(r)
    }

    /// Refuses to send a PIN the token flags say must not be sent: to a locked token, to
    /// one on its final try without the user's consent, or, for a PIN from the
    /// configuration (or a cache), to a token with any wrong PIN on record.
    fn check_pin_flags(&self, source: PinSource) -> Result<(), AgentError> {
        let token = self.token.clone();
        let info = self
            .p11
            .get_token_info(self.slot)
            .map_err(|e| self.err(e, "C_GetTokenInfo"))?;
        let configured = matches!(source, PinSource::Configured | PinSource::Cached);
        match pin_state(&info) {
            PinState::Locked => Err(AgentError::PinLocked { token }),
            PinState::FinalTry if source != PinSource::UserConfirmedFinalTry => {
                Err(AgentError::PinFinalTry { token })
            }
            state @ (PinState::CountLow | PinState::FinalTry) if configured => {
                Err(AgentError::PinIncorrect {
                    token,
                    state,
                    configured: source == PinSource::Configured,
                    tries: None,
                })
            }
            _ => Ok(()),
        }
    }

    /// Maps a failed `C_Login` to what the user needs to know (tries left, locked).
    fn login_error(&self, e: CkError, source: PinSource) -> AgentError {
        let token = self.token.clone();
        let configured = source == PinSource::Configured;
        match e {
            CkError::Pkcs11(RvError::PinIncorrect, _) => {
                let state = self
                    .p11
                    .get_token_info(self.slot)
                    .map(|i| pin_state(&i))
                    .unwrap_or(PinState::Unknown);
                match state {
                    PinState::Locked => AgentError::PinLocked { token },
                    state => AgentError::PinIncorrect {
                        token,
                        state,
                        configured,
                        tries: None,
                    },
                }
            }
            CkError::Pkcs11(RvError::PinLocked, _) => AgentError::PinLocked { token },
            CkError::Pkcs11(RvError::PinLenRange | RvError::PinInvalid, _) => {
                AgentError::PinLenRange { token }
            }
            e => self.err(e, "C_Login"),
        }
    }

    fn login_once(&mut self, pin: &Pin, source: PinSource) -> Result<Login, AgentError> {
        if self.logged_in() {
            return Ok(Login::AlreadyLoggedIn);
        }
        self.check_pin_flags(source)?;
        let secret = cryptoki::types::AuthPin::from(pin.expose().to_owned());
        match self.session.login(UserType::User, Some(&secret)) {
            Ok(()) => Ok(Login::LoggedIn),
            // Someone else logged in between our check and the call: the PIN was not checked.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(Login::AlreadyLoggedIn),
            Err(e) => Err(self.login_error(e, source)),
        }
    }

    /// Logs in through the reader's PIN pad (CKF_PROTECTED_AUTHENTICATION_PATH): no PIN
    /// crosses the host; the user types it on the reader.
    pub(super) fn login_pinpad(&mut self) -> Result<Login, AgentError> {
        let r = if self.logged_in() {
            Ok(Login::AlreadyLoggedIn)
        } else {
            self.check_pin_flags(PinSource::User).and_then(|()| {
                match self.session.login(UserType::User, None) {
                    Ok(()) => Ok(Login::LoggedIn),
                    Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                        Ok(Login::AlreadyLoggedIn)
                    }
                    Err(e) => Err(self.login_error(e, PinSource::User)),
                }
            })
        };
        self.track(r)
    }

    /// Ends whatever operation is active on the session by replacing the session (the
    /// new one is opened first, so the token's login survives).
    fn reset_session(&mut self) {
        match self.p11.open_ro_session(self.slot) {
            Ok(s) => self.replace_session(s),
            Err(e) => tracing::warn!(token = %self.token, error = %e, "cannot reopen session"),
        }
    }

    /// Puts `new` in place of the current session, which is closed, unless the module
    /// handed out its handle again: then the old session is already gone (OpenSC uses the
    /// session's address as its handle, and a card reset or a pcscd restart closes every
    /// session of the slot), and closing "it" would close the new one.
    fn replace_session(&mut self, new: Session) {
        let old = std::mem::replace(&mut self.session, new);
        if old.handle() == self.session.handle() {
            tracing::debug!(token = %self.token, "the module reused the session handle");
            std::mem::forget(old);
        }
    }

    /// One operation on a CKA_ALWAYS_AUTHENTICATE key: `init` (C_SignInit or
    /// C_DecryptInit), then `C_Login(CKU_CONTEXT_SPECIFIC)` with `pin`, then the raw
    /// single-part call. A wrong PIN is reported, never retried.
    fn context_op<T>(
        &mut self,
        cka_id: &[u8],
        pin: Option<&Pin>,
        source: PinSource,
        init: impl Fn(&Session, ObjectHandle) -> Result<(), CkError>,
        call: impl Fn(&RawModule, cryptoki_sys::CK_SESSION_HANDLE) -> Result<T, CkError>,
        function: &str,
    ) -> Result<T, AgentError> {
        let Some(raw) = self.raw.clone() else {
            return Err(AgentError::KeyNeedsPinPerUse {
                token: self.token.clone(),
            });
        };
        self.check_pin_flags(source)?;
        let h = self.key_handle(cka_id)?;
        match init(&self.session, h) {
            Ok(()) => {}
            // A cached handle from before a logout or reinsertion: look it up once more.
            Err(CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)) => {
                self.handles.remove(cka_id);
                let h = self.key_handle(cka_id)?;
                init(&self.session, h).map_err(|e| self.err(e, function))?;
            }
            Err(e) => return Err(self.err(e, function)),
        }
        // No PIN: the reader's PIN pad asks the user.
        let secret = pin.map(|p| cryptoki::types::AuthPin::from(p.expose().to_owned()));
        if let Err(e) = self
            .session
            .login(UserType::ContextSpecific, secret.as_ref())
        {
            let e = self.login_error(e, source);
            self.reset_session();
            return Err(e);
        }
        tracing::debug!(token = %self.token, "context-specific login done");
        let r = call(&raw, self.session.handle()).map_err(|e| self.err(e, function));
        self.track(r)
    }

    /// One `C_DeriveKey` with a CKA_ALWAYS_AUTHENTICATE key. Key agreement has no Init
    /// call to hang the re-authentication on, so the context-specific login comes right
    /// before `C_DeriveKey`, on the same session: that is what OpenSC takes (its
    /// `C_Login(CKU_CONTEXT_SPECIFIC)` verifies the PIN on the card, which then allows
    /// the next private-key operation; without it the card answers "security status not
    /// satisfied" and `C_DeriveKey` fails with CKR_USER_NOT_LOGGED_IN). A wrong PIN is
    /// reported, never retried.
    fn context_derive(
        &mut self,
        cka_id: &[u8],
        pin: Option<&Pin>,
        source: PinSource,
        point: &[u8],
    ) -> Result<Option<Vec<u8>>, AgentError> {
        let r = self.context_derive_once(cka_id, pin, source, point);
        self.track(r)
    }

    fn context_derive_once(
        &mut self,
        cka_id: &[u8],
        pin: Option<&Pin>,
        source: PinSource,
        point: &[u8],
    ) -> Result<Option<Vec<u8>>, AgentError> {
        self.check_pin_flags(source)?;
        // The login is spent by the next derivation, so the handle must be good before
        // it: a stale cached one is looked up again now, not after a wasted login.
        let mut h = self.key_handle(cka_id)?;
        if let Err(CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)) =
            self.session.get_attributes(h, &[AttributeType::Id])
        {
            self.handles.remove(cka_id);
            h = self.key_handle(cka_id)?;
        }
        // No PIN: the reader's PIN pad asks the user.
        let secret = pin.map(|p| cryptoki::types::AuthPin::from(p.expose().to_owned()));
        match self
            .session
            .login(UserType::ContextSpecific, secret.as_ref())
        {
            Ok(()) => {}
            // The module knows no context login outside a sign or decrypt operation
            // (ykcs11 answers USER_TYPE_INVALID, SoftHSM OPERATION_NOT_INITIALIZED).
            Err(CkError::Pkcs11(
                rv @ (RvError::UserTypeInvalid | RvError::OperationNotInitialized),
                _,
            )) => {
                return Err(AgentError::Pkcs11 {
                    token: self.token.clone(),
                    function: "C_Login(CKU_CONTEXT_SPECIFIC)".into(),
                    rv: format!(
                        "{rv}: the module takes no context-specific login for key agreement, \
                         so this always-authenticate key cannot do ECDH through it"
                    ),
                });
            }
            Err(e) => return Err(self.login_error(e, source)),
        }
        tracing::debug!(token = %self.token, "context-specific login done (key agreement)");
        derive_z(&self.session, h, point).map_err(|e| self.err(e, "C_DeriveKey"))
    }

    /// Runs `op` (sign or decrypt) on the key: through [`Worker::with_key`], or, for an
    /// always-authenticate key (`ctx` holds the PIN), through [`Worker::context_op`].
    fn key_op<T>(
        &mut self,
        cka_id: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
        mech: &Mechanism,
        input: &[u8],
        op: Op,
        map: impl Fn(Result<Vec<u8>, CkError>) -> Result<T, CkError>,
    ) -> Result<T, AgentError> {
        let function = match op {
            Op::Sign => "C_Sign",
            Op::Decrypt => "C_Decrypt",
        };
        match ctx {
            None => self.with_key(
                cka_id,
                |s, h| {
                    map(match op {
                        Op::Sign => s.sign(mech, h, input),
                        Op::Decrypt => s.decrypt(mech, h, input),
                    })
                },
                function,
            ),
            Some((pin, source)) => self.context_op(
                cka_id,
                pin,
                source,
                |s, h| match op {
                    Op::Sign => s.sign_init(mech, h),
                    Op::Decrypt => s.decrypt_init(mech, h),
                },
                |raw, sh| {
                    map(match op {
                        Op::Sign => raw.sign(sh, input),
                        Op::Decrypt => raw.decrypt(sh, input),
                    })
                },
                function,
            ),
        }
    }

    pub(super) fn logout(&mut self) -> Result<(), AgentError> {
        match self.session.logout() {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => Ok(()),
            Err(e) => Err(self.err(e, "C_Logout")),
        }
    }

    /// Lists private keys (or, before login, the public halves) and pairs them with
    /// certificates by CKA_ID.
    pub(super) fn enumerate(
        &mut self,
        serial: &str,
        label: &str,
    ) -> Result<Vec<KeyEntry>, AgentError> {
        let r = self.enumerate_once(serial, label);
        self.track(r)
    }

    fn enumerate_once(&mut self, serial: &str, label: &str) -> Result<Vec<KeyEntry>, AgentError> {
        let s = &self.session;
        let find = |class| {
            s.find_objects(&[Attribute::Class(class)])
                .map_err(|e| self.err(e, "C_FindObjects"))
        };
        let mut certs: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for h in find(ObjectClass::CERTIFICATE)? {
            let attrs = s
                .get_attributes(
                    h,
                    &[
                        AttributeType::Id,
                        AttributeType::Value,
                        AttributeType::CertificateType,
                    ],
                )
                .map_err(|e| self.err(e, "C_GetAttributeValue"))?;
            let (mut id, mut value, mut x509) = (None, None, false);
            for a in attrs {
                match a {
                    Attribute::Id(v) => id = Some(v),
                    Attribute::Value(v) => value = Some(v),
                    Attribute::CertificateType(t) => x509 = t == CertificateType::X_509,
                    _ => {}
                }
            }
            if let (Some(id), Some(value), true) = (id, value, x509) {
                certs.entry(id).or_insert(value);
            }
        }
        let mut keys: Vec<KeyEntry> = Vec::new();
        let private = find(ObjectClass::PRIVATE_KEY)?;
        let (handles, is_private) = if private.is_empty() {
            (find(ObjectClass::PUBLIC_KEY)?, false)
        } else {
            (private, true)
        };
        for h in handles {
            let attrs = s
                .get_attributes(
                    h,
                    &[
                        AttributeType::Id,
                        AttributeType::Label,
                        AttributeType::KeyType,
                        AttributeType::Sign,
                        AttributeType::Decrypt,
                        AttributeType::Derive,
                        AttributeType::Verify,
                        AttributeType::Encrypt,
                        AttributeType::AlwaysAuthenticate,
                        AttributeType::Modulus,
                        AttributeType::EcParams,
                    ],
                )
                .map_err(|e| self.err(e, "C_GetAttributeValue"))?;
            // get_attributes drops attributes the token will not reveal: match by variant.
            let (mut id, mut klabel, mut ktype, mut ops, mut always, mut bits, mut curve) =
                (None, String::new(), None, Vec::new(), false, 0u32, None);
            for a in attrs {
                match a {
                    Attribute::Id(v) => id = Some(v),
                    Attribute::Label(v) => klabel = String::from_utf8_lossy(&v).into_owned(),
                    Attribute::KeyType(t) => ktype = Some(t),
                    Attribute::Sign(true) | Attribute::Verify(true) => ops.push(Operation::Sign),
                    Attribute::Decrypt(true) | Attribute::Encrypt(true) => {
                        ops.push(Operation::Decrypt)
                    }
                    Attribute::Derive(true) => ops.push(Operation::Ecdh),
                    Attribute::AlwaysAuthenticate(b) => always = b,
                    Attribute::Modulus(m) => {
                        let lead = m.iter().take_while(|b| **b == 0).count();
                        bits = u32::try_from((m.len() - lead) * 8).unwrap_or(0);
                    }
                    Attribute::EcParams(p) => curve = Some(p),
                    _ => {}
                }
            }
            let Some(id) = id else { continue };
            let algorithm = match (ktype, curve.as_deref()) {
                (Some(KeyType::RSA), _) => KeyAlgorithm::Rsa,
                (Some(KeyType::EC), Some(P256_PARAMS)) => KeyAlgorithm::EcP256,
                (Some(KeyType::EC), Some(P384_PARAMS)) => KeyAlgorithm::EcP384,
                _ => continue, // a key the agent cannot use
            };
            if algorithm != KeyAlgorithm::Rsa {
                bits = if algorithm == KeyAlgorithm::EcP256 {
                    256
                } else {
                    384
                };
                // EC keys "decrypt" only through ECDH.
                ops.retain(|o| *o != Operation::Decrypt);
            } else {
                ops.retain(|o| *o != Operation::Ecdh);
            }
            if !is_private && algorithm != KeyAlgorithm::Rsa && !ops.contains(&Operation::Ecdh) {
                // Public EC keys carry no CKA_DERIVE; assume the private half allows ECDH
                // until login shows the real attributes.
                ops.push(Operation::Ecdh);
            }
            ops.dedup();
            if keys.iter().any(|k| k.cka_id == id) {
                continue;
            }
            keys.push(KeyEntry {
                info: KeyInfo {
                    id: KeyId::new(serial, &id),
                    token: label.to_owned(),
                    token_serial: serial.to_owned(),
                    label: klabel,
                    algorithm,
                    bits,
                    certificate: certs.get(&id).cloned().map(serde_bytes::ByteBuf::from),
                    operations: ops,
                    always_authenticate: always,
                },
                cka_id: id,
            });
        }
        keys.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        self.handles.clear();
        Ok(keys)
    }

    fn key_handle(&mut self, cka_id: &[u8]) -> Result<ObjectHandle, AgentError> {
        if let Some(h) = self.handles.get(cka_id) {
            return Ok(*h);
        }
        let found = self
            .session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(cka_id.to_vec()),
            ])
            .map_err(|e| self.err(e, "C_FindObjects"))?;
        let Some(h) = found.first().copied() else {
            // Private objects are invisible before login; after it, the key is gone.
            return Err(if self.logged_in() {
                AgentError::KeyGone {
                    token: self.token.clone(),
                    cka_id: hex::encode(cka_id),
                }
            } else {
                AgentError::PinRequired {
                    token: self.token.clone(),
                }
            });
        };
        self.handles.insert(cka_id.to_vec(), h);
        Ok(h)
    }

    /// Runs `op` with the key's handle; a stale cached handle is looked up once more.
    fn with_key<T>(
        &mut self,
        cka_id: &[u8],
        op: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
        function: &str,
    ) -> Result<T, AgentError> {
        let r = self
            .key_handle(cka_id)
            .and_then(|h| match op(&self.session, h) {
                Err(CkError::Pkcs11(
                    RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                    _,
                )) => {
                    self.handles.remove(cka_id);
                    let h = self.key_handle(cka_id)?;
                    op(&self.session, h).map_err(|e| self.err(e, function))
                }
                r => r.map_err(|e| self.err(e, function)),
            });
        self.track(r)
    }

    /// Notes a dead session: the token went away (or was reset) under it, so every
    /// worker's session is stale.
    pub(super) fn track<T>(&mut self, r: Result<T, AgentError>) -> Result<T, AgentError> {
        if let Err(AgentError::TokenAbsent { .. }) = &r {
            let _ = self.epoch.compare_exchange(
                self.session_epoch,
                self.session_epoch + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        r
    }

    /// Reopens a session that died with its token. The token's login died with it; the
    /// caller decides whether to log in again.
    pub(super) fn revive(&mut self) {
        let current = self.epoch.load(Ordering::SeqCst);
        if current == self.session_epoch {
            return;
        }
        // Card modules such as OpenSC look at the reader again only in C_GetSlotList and
        // C_GetSlotInfo; without this, a reinserted card kept the removed card's PC/SC
        // handle and every operation failed with "card removed".
        if let Err(e) = self.p11.get_slot_info(self.slot) {
            tracing::debug!(token = %self.token, error = %e, "slot info");
        }
        match self.p11.open_ro_session(self.slot) {
            Ok(session) => {
                tracing::info!(token = %self.token, "session reopened");
                self.replace_session(session);
                self.handles.clear();
                self.session_epoch = current;
            }
            Err(e) => tracing::debug!(token = %self.token, error = %e, "token still absent"),
        }
    }

    pub(super) fn sign(
        &mut self,
        cka_id: &[u8],
        key_alg: KeyAlgorithm,
        alg: SignAlgorithm,
        digest: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
    ) -> Result<Vec<u8>, AgentError> {
        let (mech, input) = sign_input(alg, digest)?;
        let sig = self.key_op(cka_id, ctx, &mech, &input, Op::Sign, |r| r)?;
        // PKCS#11 returns ECDSA as r || s; CMS and X.509 want DER.
        crate::backend::ecdsa_der(key_alg, sig, crate::backend::EcdsaForm::Raw).map_err(|bad| {
            AgentError::Pkcs11 {
                token: self.token.clone(),
                function: "C_Sign".into(),
                rv: format!("malformed ECDSA signature from the token: {bad}"),
            }
        })
    }

    pub(super) fn decrypt(
        &mut self,
        cka_id: &[u8],
        alg: DecryptAlgorithm,
        ct: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
    ) -> Result<SecretBytes, AgentError> {
        let mech = decrypt_mechanism(alg)?;
        let oaep_sha2 = matches!(
            alg,
            DecryptAlgorithm::RsaOaepSha256
                | DecryptAlgorithm::RsaOaepSha384
                | DecryptAlgorithm::RsaOaepSha512
        );
        if !(oaep_sha2 && self.host_oaep) {
            // The token's answer, with the two refusals that need handling here kept apart.
            let outcome = self.key_op(cka_id, ctx, &mech, ct, Op::Decrypt, |r| match r {
                Ok(pt) => Ok(Ok(pt)),
                Err(CkError::Pkcs11(
                    rv @ (RvError::MechanismInvalid
                    | RvError::MechanismParamInvalid
                    | RvError::ArgumentsBad),
                    _,
                )) if oaep_sha2 => Ok(Err(rv)),
                // SoftHSM reports a bad PKCS#1 block as CKR_GENERAL_ERROR.
                Err(CkError::Pkcs11(rv @ RvError::GeneralError, _)) => Ok(Err(rv)),
                Err(e) => Err(e),
            })?;
            match outcome {
                Ok(pt) => return Ok(SecretBytes::new(pt)),
                Err(RvError::GeneralError) => {
                    return Err(AgentError::InvalidInput {
                        token: self.token.clone(),
                        detail: "the wrapped key does not decrypt".into(),
                    });
                }
                Err(rv) => {
                    tracing::info!(token = %self.token, %rv, "token lacks OAEP with SHA-2; unpadding on the host");
                    self.host_oaep = true;
                }
            }
        }
        // Raw RSA on the token, OAEP decoding here in constant time.
        let em = zeroize::Zeroizing::new(self.key_op(
            cka_id,
            ctx,
            &Mechanism::RsaX509,
            ct,
            Op::Decrypt,
            |r| r,
        )?);
        let k = ct.len();
        let mut padded = vec![0u8; k.saturating_sub(em.len())];
        padded.extend_from_slice(&em);
        let m = match alg {
            DecryptAlgorithm::RsaOaepSha256 => oaep::decode::<sha2::Sha256>(padded, k),
            DecryptAlgorithm::RsaOaepSha384 => oaep::decode::<sha2::Sha384>(padded, k),
            _ => oaep::decode::<sha2::Sha512>(padded, k),
        };
        m.map(SecretBytes::new)
            .ok_or_else(|| AgentError::InvalidInput {
                token: self.token.clone(),
                detail: "the wrapped key does not decrypt".into(),
            })
    }

    /// ECDH (CKM_ECDH1_DERIVE, no KDF): derives a session secret, reads Z, destroys it.
    /// An always-authenticate key (`ctx` holds the PIN) gets its context-specific login
    /// right before each `C_DeriveKey` (see [`Worker::context_derive`]).
    pub(super) fn ecdh(
        &mut self,
        cka_id: &[u8],
        curve: KeyAlgorithm,
        peer: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
    ) -> Result<SecretBytes, AgentError> {
        crate::backend::check_peer_point(curve, peer)?;
        let derive = |w: &mut Self, point: &[u8]| match ctx {
            None => w.with_key(cka_id, |s, h| derive_z(s, h, point), "C_DeriveKey"),
            Some((pin, source)) => w.context_derive(cka_id, pin, source, point),
        };
        // Modules disagree on the point's form: try it raw, then DER OCTET STRING wrapped.
        let z = match derive(self, peer) {
            Ok(z) => z,
            Err(
                e @ (AgentError::PinRequired { .. }
                | AgentError::TokenAbsent { .. }
                | AgentError::PinIncorrect { .. }
                | AgentError::PinLocked { .. }
                | AgentError::PinFinalTry { .. }
                | AgentError::PinLenRange { .. }
                | AgentError::KeyNeedsPinPerUse { .. }),
            ) => {
                return Err(e);
            }
            Err(_) if peer.len() < 128 => {
                let mut wrapped = vec![0x04, u8::try_from(peer.len()).unwrap_or(0)];
                wrapped.extend_from_slice(peer);
                derive(self, &wrapped)?
            }
            Err(e) => return Err(e),
        };
        z.map(SecretBytes::new).ok_or_else(|| AgentError::Pkcs11 {
            token: self.token.clone(),
            function: "C_GetAttributeValue".into(),
            rv: "the derived secret is not extractable".into(),
        })
    }
}

/// Derives an extractable session secret with CKM_ECDH1_DERIVE (CKD_NULL), reads its value
/// and destroys it.
fn derive_z(s: &Session, key: ObjectHandle, point: &[u8]) -> Result<Option<Vec<u8>>, CkError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    let mech = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), point));
    let k = s.derive_key(&mech, key, &template)?;
    let value = s.get_attributes(k, &[AttributeType::Value]);
    let _ = s.destroy_object(k);
    Ok(value?.into_iter().find_map(|a| match a {
        Attribute::Value(v) => Some(v),
        _ => None,
    }))
}
