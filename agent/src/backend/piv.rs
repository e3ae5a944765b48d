//! Native PIV backend: a PIV card (a YubiKey, or any card with Yubico's PIV extensions)
//! driven over PC/SC with the `yubikey` crate, without a PKCS#11 module.
//!
//! ```text
//!  keystore ──► pkcs11::Token (PIN policy, login state, queue) ──jobs──► one thread:
//!                                                   PivWorker ──yubikey crate──► pcscd ──► card
//! ```
//!
//! A card becomes a [`Token`](super::pkcs11::Token) like any PKCS#11 token, so the PIN
//! policy (sources, cache, TTL, lock, no automatic retry, final-try confirmation) is the
//! same code; only the worker differs. Each card has its own worker thread: a card that
//! hangs holds up only its own requests.
//!
//! Keys are the slots 9a, 9c, 9d, 9e and the retired 82–95 that hold a certificate; the
//! certificate's public key gives the algorithm. The card does raw operations only:
//! - RSA signatures: the host builds the EMSA-PKCS1-v1_5 (DigestInfo) or EMSA-PSS block
//!   ([`padding`]) and the card applies the private key to it;
//! - RSA decryption: the card returns the raw block; the host removes PKCS#1 v1.5 or OAEP
//!   padding in constant time;
//! - ECDSA: the card signs the (truncated) digest and answers DER, as the wire wants;
//! - ECDH: GENERAL AUTHENTICATE with the peer point gives Z.
//!
//! **Sharing the card.** The crate connects in shared mode and runs each operation in one
//! PC/SC transaction, so OpenSC and other PC/SC clients can use the card between the
//! agent's operations. The connection is never dropped without
//! `disconnect(LeaveCard)`: dropping a `YubiKey` (or `reconnect()`) resets the card, which
//! logs every other application out. When an operation fails because another application
//! selected a different applet, the worker opens a fresh connection (which selects PIV
//! again) and, if the card forgot the PIN, verifies it again only with a PIN the policy
//! lets the agent keep; never with a PIN the user typed for an earlier request.
//!
//! **PIN.** The card says how many tries are left (VERIFY without data). A PIN is sent at
//! most once per request and never retried; a configured or cached PIN goes only to a card
//! with no wrong try on record. (The crate keeps its own copy of a verified PIN, in
//! ordinary memory, until the connection is closed: closed on lock, expiry and removal.)

pub(crate) mod padding;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use der::Encode;
use smime_proto::{
    DecryptAlgorithm, KeyAlgorithm, KeyId, KeyInfo, Operation, Pin, PinState, SecretBytes,
    SignAlgorithm,
};
use yubikey::piv::{AlgorithmId, SlotId};
use yubikey::{Error as YkError, YubiKey};

use super::pkcs11::KeyEntry;
use super::pkcs11::PinSource;
use crate::error::AgentError;

/// What `Status` shows for the module of a native card.
pub const MODULE_NAME: &str = "native PIV";

/// PIV's default number of PIN tries: a card reporting fewer has a wrong try on record.
const DEFAULT_PIN_TRIES: u8 = 3;

/// A card found in a reader, opened.
#[derive(Debug)]
pub struct FoundCard {
    /// The reader.
    pub reader: String,
    /// The card's serial.
    pub serial: u32,
    /// The PIV application version.
    pub version: String,
    /// The open connection, handed to the card's worker.
    pub(crate) yubikey: YubiKey,
}

/// Opens the PIV card in every reader `wanted` accepts (by reader name; then by serial,
/// once the card is open). Cards not wanted are left with `disconnect(LeaveCard)`.
/// Blocking.
pub fn discover(wanted: impl Fn(&str, Option<u32>) -> bool) -> Vec<FoundCard> {
    let mut ctx = match yubikey::reader::Context::open() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "PIV: no PC/SC context");
            return vec![];
        }
    };
    let readers = match ctx.iter() {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "PIV: cannot list readers");
            return vec![];
        }
    };
    let mut found = Vec::new();
    for r in readers {
        let name = r.name().into_owned();
        if !wanted(&name, None) {
            continue;
        }
        match r.open() {
            Ok(yk) => {
                let serial = yk.serial().0;
                if !wanted(&name, Some(serial)) {
                    close(yk);
                    continue;
                }
                tracing::info!(reader = %name, serial, version = %yk.version(), "PIV card found");
                found.push(FoundCard {
                    reader: name,
                    serial,
                    version: yk.version().to_string(),
                    yubikey: yk,
                });
            }
            Err(e) => tracing::debug!(reader = %name, error = %e, "no PIV card"),
        }
    }
    found
}

/// Opens a fresh connection to the card in `reader` (the crate selects PIV). Blocking.
fn open_reader(reader: &str) -> Result<YubiKey, YkError> {
    let mut ctx = yubikey::reader::Context::open()?;
    for r in ctx.iter()? {
        if r.name() == reader {
            return r.open();
        }
    }
    Err(YkError::NotFound)
}

/// Closes a connection without resetting the card. If PC/SC refuses, the handle is
/// leaked rather than dropped: a drop would reset the card.
fn close(yk: YubiKey) {
    if let Err((yk, e)) = yk.disconnect(pcsc::Disposition::LeaveCard) {
        tracing::debug!(error = %e, "PIV: disconnect failed; leaving the handle open");
        std::mem::forget(yk);
    }
}

/// Whether a crate error means the card (or pcscd) is gone.
fn card_gone(e: &YkError) -> bool {
    matches!(
        e,
        YkError::NotFound
            | YkError::PcscError {
                inner: Some(
                    pcsc::Error::RemovedCard
                        | pcsc::Error::NoSmartcard
                        | pcsc::Error::ReaderUnavailable
                        | pcsc::Error::UnknownReader
                        | pcsc::Error::NoService
                        | pcsc::Error::ServiceStopped
                        | pcsc::Error::InvalidHandle
                        | pcsc::Error::UnpoweredCard
                        | pcsc::Error::UnresponsiveCard
                        | pcsc::Error::NoReadersAvailable
                )
            }
    )
}

/// What VERIFY without data says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinStatus {
    /// The PIN is verified now (the card gives no count then).
    Verified,
    /// Not verified; this many tries left (0: blocked).
    Tries(u8),
}

/// The PIV slots that hold user keys, with the names OpenSC gives them.
fn slot_label(slot: SlotId) -> Option<&'static str> {
    Some(match slot {
        SlotId::Authentication => "PIV AUTH key",
        SlotId::Signature => "SIGN key",
        SlotId::KeyManagement => "KEY MAN key",
        SlotId::CardAuthentication => "CARD AUTH key",
        SlotId::Retired(_) => "Retired KEY MAN key",
        _ => return None,
    })
}

/// The card side of a native PIV token: one PC/SC connection, used by one thread.
#[derive(Debug)]
pub(crate) struct PivWorker {
    reader: String,
    serial: u32,
    /// Token label, for errors.
    token: String,
    yubikey: Option<YubiKey>,
    /// Bumped by card events: the connection belongs to a card that left.
    epoch: Arc<AtomicU64>,
    conn_epoch: u64,
    /// The PIN's tries in all (GET METADATA), else the most the card has shown (at least
    /// PIV's default 3): fewer left means a wrong try on record.
    max_tries: u8,
    /// Tries left as last read, for `Status` while the PIN is verified.
    last_tries: Option<u8>,
}

impl Drop for PivWorker {
    fn drop(&mut self) {
        self.disconnect();
    }
}

impl PivWorker {
    pub(crate) fn new(card: FoundCard, token: String, epoch: Arc<AtomicU64>) -> Self {
        let conn_epoch = epoch.load(Ordering::SeqCst);
        Self {
            reader: card.reader,
            serial: card.serial,
            token,
            yubikey: Some(card.yubikey),
            epoch,
            conn_epoch,
            max_tries: DEFAULT_PIN_TRIES,
            last_tries: None,
        }
    }

    fn absent(&self) -> AgentError {
        AgentError::TokenAbsent {
            token: self.token.clone(),
        }
    }

    fn disconnect(&mut self) {
        if let Some(yk) = self.yubikey.take() {
            close(yk);
        }
    }

    /// The connection, opened afresh if there is none or a card event made it stale.
    fn card(&mut self) -> Result<&mut YubiKey, AgentError> {
        let current = self.epoch.load(Ordering::SeqCst);
        if current != self.conn_epoch {
            self.disconnect();
            self.conn_epoch = current;
        }
        if self.yubikey.is_none() {
            let yk = open_reader(&self.reader).map_err(|e| {
                tracing::debug!(reader = %self.reader, error = %e, "PIV: cannot open the card");
                self.absent()
            })?;
            if yk.serial().0 != self.serial {
                tracing::warn!(reader = %self.reader, want = self.serial, found = yk.serial().0,
                    "another PIV card is in the reader");
                close(yk);
                return Err(self.absent());
            }
            tracing::info!(token = %self.token, "PIV: connection opened");
            self.yubikey = Some(yk);
        }
        self.yubikey
            .as_mut()
            .ok_or_else(|| AgentError::TokenAbsent {
                token: self.token.clone(),
            })
    }

    /// Runs `f` on the card. When another application reset the card since our last
    /// call (yubico-piv-tool does on exit), PC/SC refuses the handle before anything is
    /// sent: the connection is replaced by a fresh one (which selects PIV) and `f` runs
    /// once more. The card has forgotten any verified PIN then. The outer error is "no
    /// card"; the inner result is the crate's.
    fn call<T>(
        &mut self,
        f: impl Fn(&mut YubiKey) -> Result<T, YkError>,
    ) -> Result<Result<T, YkError>, AgentError> {
        let first = f(self.card()?);
        if let Err(YkError::PcscError {
            inner: Some(pcsc::Error::ResetCard),
        }) = first
        {
            tracing::info!(token = %self.token, "PIV: the card was reset by another application; reconnecting");
            self.disconnect();
            return Ok(f(self.card()?));
        }
        Ok(first)
    }

    /// Maps a crate error; a gone card also drops the connection.
    fn err(&mut self, e: YkError, what: &str) -> AgentError {
        if card_gone(&e) {
            self.disconnect();
            return self.absent();
        }
        match e {
            YkError::PinLocked | YkError::WrongPin { tries: 0 } => AgentError::PinLocked {
                token: self.token.clone(),
            },
            YkError::AuthenticationError => AgentError::PinRequired {
                token: self.token.clone(),
            },
            e => AgentError::Pkcs11 {
                token: self.token.clone(),
                function: format!("PIV {what}"),
                rv: e.to_string(),
            },
        }
    }

    /// VERIFY without data: verified, or the tries left. Sends no PIN.
    fn pin_status(&mut self) -> Result<PinStatus, AgentError> {
        let r = self.call(|yk| yk.verify_pin(&[]))?;
        let st = match r {
            Ok(()) => PinStatus::Verified,
            Err(YkError::WrongPin { tries }) => PinStatus::Tries(tries),
            Err(YkError::PinLocked) => PinStatus::Tries(0),
            Err(e) => return Err(self.err(e, "VERIFY")),
        };
        if let PinStatus::Tries(n) = st {
            self.max_tries = self.max_tries.max(n);
            self.last_tries = Some(n);
        }
        Ok(st)
    }

    fn state_of(&self, tries: u8) -> PinState {
        match tries {
            0 => PinState::Locked,
            1 => PinState::FinalTry,
            n if n < self.max_tries => PinState::CountLow,
            _ => PinState::Ok,
        }
    }

    /// GET METADATA for the PIN (YubiKey 5.3+): (tries in all, tries left), also while
    /// the PIN is verified. `None` where the card lacks it.
    fn pin_metadata(&mut self) -> Option<(u8, u8)> {
        let slot = SlotId::Management(yubikey::piv::ManagementSlotId::Pin);
        let r = self
            .call(|yk| yubikey::piv::metadata(yk, slot))
            .ok()?
            .ok()?;
        let r = r.retries?;
        self.max_tries = r.retry_count.max(1);
        Some((r.retry_count, r.remaining_count))
    }

    /// The PIN state and tries left, for `Status` and before a prompt. While the PIN is
    /// verified VERIFY gives no count: GET METADATA does where the card has it (YubiKey
    /// 5.3+); otherwise the state is `ok` (a good PIN resets the count) and the tries
    /// unknown.
    pub(crate) fn pin_info(&mut self) -> Result<(PinState, Option<u32>), AgentError> {
        Ok(match self.pin_status()? {
            PinStatus::Verified => match self.pin_metadata() {
                Some((_, left)) => (self.state_of(left), Some(u32::from(left))),
                None => (PinState::Ok, None),
            },
            PinStatus::Tries(n) => (self.state_of(n), Some(u32::from(n))),
        })
    }

    /// Verifies `pin`, at most once and never retried. The tries are read first: no PIN
    /// goes to a blocked card, to one on its final try without the user's consent, or,
    /// for a configured or cached PIN, to a card with a wrong try on record.
    pub(crate) fn login(
        &mut self,
        pin: &Pin,
        source: PinSource,
    ) -> Result<super::pkcs11::Login, AgentError> {
        let tries = match self.pin_status()? {
            PinStatus::Verified => return Ok(super::pkcs11::Login::AlreadyLoggedIn),
            PinStatus::Tries(n) => n,
        };
        // The card's own count of tries in all, where it tells (else PIV's default and
        // the most tries seen): fewer left means a wrong try on record.
        self.pin_metadata();
        self.check_tries(tries, source)?;
        self.verify(pin, source)?;
        Ok(super::pkcs11::Login::LoggedIn)
    }

    fn check_tries(&self, tries: u8, source: PinSource) -> Result<(), AgentError> {
        let token = self.token.clone();
        let configured = matches!(source, PinSource::Configured | PinSource::Cached);
        match self.state_of(tries) {
            PinState::Locked => Err(AgentError::PinLocked { token }),
            PinState::FinalTry if source != PinSource::UserConfirmedFinalTry => {
                Err(AgentError::PinFinalTry { token })
            }
            state @ (PinState::CountLow | PinState::FinalTry) if configured => {
                Err(AgentError::PinIncorrect {
                    token,
                    state,
                    configured: source == PinSource::Configured,
                    tries: Some(u32::from(tries)),
                })
            }
            _ => Ok(()),
        }
    }

    /// One VERIFY with the PIN.
    fn verify(&mut self, pin: &Pin, source: PinSource) -> Result<(), AgentError> {
        let bytes = pin.expose().as_bytes();
        if bytes.is_empty() || bytes.len() > 8 {
            return Err(AgentError::PinLenRange {
                token: self.token.clone(),
            });
        }
        let r = self.call(|yk| yk.verify_pin(bytes))?;
        match r {
            Ok(()) => {
                tracing::debug!(token = %self.token, "PIV: PIN verified");
                Ok(())
            }
            Err(YkError::WrongPin { tries }) if tries > 0 => {
                self.last_tries = Some(tries);
                Err(AgentError::PinIncorrect {
                    token: self.token.clone(),
                    state: self.state_of(tries),
                    configured: source == PinSource::Configured,
                    tries: Some(u32::from(tries)),
                })
            }
            Err(YkError::WrongPin { .. } | YkError::PinLocked) => {
                self.last_tries = Some(0);
                Err(AgentError::PinLocked {
                    token: self.token.clone(),
                })
            }
            Err(YkError::SizeError) => Err(AgentError::PinLenRange {
                token: self.token.clone(),
            }),
            Err(e) => Err(self.err(e, "VERIFY")),
        }
    }

    /// Lock: closes the connection and opens a fresh one, which selects PIV again (a
    /// YubiKey forgets the verified PIN on SELECT), and the crate's copy of the PIN goes
    /// with the old connection.
    pub(crate) fn logout(&mut self) -> Result<(), AgentError> {
        self.disconnect();
        match self.card() {
            Ok(_) | Err(AgentError::TokenAbsent { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads the certificates in the key slots: one key per slot with a certificate.
    pub(crate) fn enumerate(
        &mut self,
        serial: &str,
        label: &str,
    ) -> Result<Vec<KeyEntry>, AgentError> {
        let r = self.call(yubikey::piv::Key::list)?;
        let list = r.map_err(|e| self.err(e, "GET DATA"))?;
        let mut keys = Vec::new();
        for k in list {
            let slot = k.slot();
            let Some(slot_name) = slot_label(slot) else {
                continue;
            };
            let Ok(cert) = k.certificate().cert.to_der() else {
                continue;
            };
            let Ok(spki) = k
                .certificate()
                .cert
                .tbs_certificate()
                .subject_public_key_info()
                .to_der()
            else {
                continue;
            };
            let Some((algorithm, bits)) = key_algorithm(&spki) else {
                tracing::debug!(token = %self.token, ?slot, "PIV: key type not usable");
                continue;
            };
            let ops = match algorithm {
                KeyAlgorithm::Rsa => vec![Operation::Sign, Operation::Decrypt],
                _ => vec![Operation::Sign, Operation::Ecdh],
            };
            let id = u8::from(slot);
            keys.push(KeyEntry {
                info: KeyInfo {
                    id: KeyId::new(serial, &[id]),
                    token: label.to_owned(),
                    token_serial: serial.to_owned(),
                    label: format!("{slot_name} ({id:02x})"),
                    algorithm,
                    bits,
                    certificate: Some(serde_bytes::ByteBuf::from(cert)),
                    operations: ops,
                    // The digital-signature slot wants the PIN right before each use.
                    always_authenticate: slot == SlotId::Signature,
                },
                cka_id: vec![id],
            });
        }
        keys.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        Ok(keys)
    }

    /// Runs one card operation with the recoveries a shared card needs:
    /// - the card is gone: the connection is dropped, the error says "card removed";
    /// - another application selected a different applet (the card no longer answers
    ///   PIV's VERIFY): a fresh connection selects PIV again and the operation runs once
    ///   more;
    /// - the card forgot the verified PIN (another application reset or re-selected it):
    ///   the PIN is verified again only with `reauth`, the PIN the policy lets the agent
    ///   keep, and only on a card with no wrong try on record; otherwise "PIN required".
    fn op<T>(
        &mut self,
        what: &str,
        reauth: Option<&Pin>,
        f: impl Fn(&mut YubiKey) -> Result<T, YkError>,
    ) -> Result<T, AgentError> {
        let first = self.call(&f)?;
        let e = match first {
            Ok(v) => return Ok(v),
            Err(e) if card_gone(&e) => return Err(self.err(e, what)),
            Err(e) => e,
        };
        let need_pin = match e {
            YkError::AuthenticationError => true,
            _ => match self.pin_status() {
                // PIV answers: the failure was the operation's own.
                Ok(_) => return Err(self.err(e, what)),
                Err(AgentError::TokenAbsent { .. }) => return Err(self.absent()),
                Err(_) => {
                    tracing::info!(token = %self.token,
                        "PIV: the card answers for another applet; reopening and selecting PIV");
                    self.disconnect();
                    !matches!(self.pin_status()?, PinStatus::Verified)
                }
            },
        };
        if need_pin {
            let tries = match self.pin_status()? {
                PinStatus::Verified => None,
                PinStatus::Tries(n) => Some(n),
            };
            if let Some(tries) = tries {
                let Some(pin) = reauth else {
                    return Err(AgentError::PinRequired {
                        token: self.token.clone(),
                    });
                };
                self.check_tries(tries, PinSource::Cached)?;
                tracing::info!(token = %self.token, "PIV: the card forgot the PIN; verifying the kept PIN again");
                self.verify(pin, PinSource::Cached)?;
            }
        }
        let again = self.call(&f)?;
        again.map_err(|e| self.err(e, what))
    }

    /// For an always-authenticate slot: VERIFY right before the operation.
    fn context_login(&mut self, ctx: Option<(Option<&Pin>, PinSource)>) -> Result<(), AgentError> {
        let Some((pin, source)) = ctx else {
            return Ok(());
        };
        let Some(pin) = pin else {
            return Err(AgentError::UnsupportedAlgorithm(
                "a native PIV card has no PIN pad: configure another PIN source".into(),
            ));
        };
        let tries = match self.pin_status()? {
            PinStatus::Verified => self.last_tries.unwrap_or(self.max_tries),
            PinStatus::Tries(n) => n,
        };
        self.check_tries(tries, source)?;
        self.verify(pin, source)
    }

    pub(crate) fn sign(
        &mut self,
        slot: &[u8],
        key: (KeyAlgorithm, u32),
        alg: SignAlgorithm,
        digest: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
        reauth: Option<&Pin>,
    ) -> Result<Vec<u8>, AgentError> {
        let slot = slot_id(slot)?;
        let (kalg, bits) = key;
        let expected = alg.digest_len().ok_or_else(|| {
            AgentError::UnsupportedAlgorithm("unknown signature algorithm".into())
        })?;
        if digest.len() != expected {
            return Err(AgentError::BadRequest(format!(
                "{alg:?} needs a {expected}-byte digest, got {} bytes",
                digest.len()
            )));
        }
        let card_alg = algorithm_id(kalg, bits)?;
        let input = match kalg {
            KeyAlgorithm::Rsa => padding::sign_block(alg, digest, bits as usize)?,
            // ECDSA uses the leftmost bits of a longer digest (SEC 1 §4.1.3 step 5).
            KeyAlgorithm::EcP256 => digest[..digest.len().min(32)].to_vec(),
            _ => digest[..digest.len().min(48)].to_vec(),
        };
        self.context_login(ctx)?;
        let sig = self.op("GENERAL AUTHENTICATE (sign)", reauth, |yk| {
            yubikey::piv::sign_data(yk, &input, card_alg, slot)
        })?;
        let malformed = |e: &dyn std::fmt::Display| AgentError::Pkcs11 {
            token: self.token.clone(),
            function: "PIV GENERAL AUTHENTICATE (sign)".into(),
            rv: format!("malformed signature from the card: {e}"),
        };
        Ok(match kalg {
            // The card answers ECDSA in DER, as the wire wants; checked and re-encoded.
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                crate::backend::ecdsa_der(kalg, sig.to_vec(), crate::backend::EcdsaForm::Der)
                    .map_err(|e| malformed(&e))?
            }
            _ => {
                let k = (bits as usize).div_ceil(8);
                if sig.len() > k {
                    return Err(malformed(&"longer than the modulus"));
                }
                let mut out = vec![0u8; k - sig.len()];
                out.extend_from_slice(&sig);
                out
            }
        })
    }

    pub(crate) fn decrypt(
        &mut self,
        slot: &[u8],
        bits: u32,
        alg: DecryptAlgorithm,
        ct: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
        reauth: Option<&Pin>,
    ) -> Result<SecretBytes, AgentError> {
        let slot = slot_id(slot)?;
        let k = (bits as usize).div_ceil(8);
        if ct.len() != k {
            return Err(AgentError::InvalidInput {
                token: self.token.clone(),
                detail: format!("the wrapped key is {} bytes, the modulus {k}", ct.len()),
            });
        }
        if matches!(alg, DecryptAlgorithm::Unknown) {
            return Err(AgentError::UnsupportedAlgorithm(format!("{alg:?}")));
        }
        let card_alg = algorithm_id(KeyAlgorithm::Rsa, bits)?;
        self.context_login(ctx)?;
        let raw = self.op("GENERAL AUTHENTICATE (decrypt)", reauth, |yk| {
            yubikey::piv::decrypt_data(yk, ct, card_alg, slot)
        })?;
        if raw.len() > k {
            return Err(AgentError::InvalidInput {
                token: self.token.clone(),
                detail: "the card's answer is longer than the modulus".into(),
            });
        }
        let mut em = vec![0u8; k - raw.len()];
        em.extend_from_slice(&raw);
        padding::unpad(alg, em, k)
            .map(SecretBytes::new)
            .ok_or_else(|| AgentError::InvalidInput {
                token: self.token.clone(),
                detail: "the wrapped key does not decrypt".into(),
            })
    }

    pub(crate) fn ecdh(
        &mut self,
        slot: &[u8],
        curve: KeyAlgorithm,
        peer: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
        reauth: Option<&Pin>,
    ) -> Result<SecretBytes, AgentError> {
        let slot = slot_id(slot)?;
        crate::backend::check_peer_point(curve, peer)?;
        let card_alg = algorithm_id(curve, 0)?;
        self.context_login(ctx)?;
        let z = self.op("GENERAL AUTHENTICATE (ECDH)", reauth, |yk| {
            yubikey::piv::decrypt_data(yk, peer, card_alg, slot)
        })?;
        Ok(SecretBytes::new(z.to_vec()))
    }
}

fn slot_id(id: &[u8]) -> Result<SlotId, AgentError> {
    match id {
        [b] => SlotId::try_from(*b).map_err(|_| AgentError::BadRequest("no such PIV slot".into())),
        _ => Err(AgentError::BadRequest("no such PIV slot".into())),
    }
}

fn algorithm_id(alg: KeyAlgorithm, bits: u32) -> Result<AlgorithmId, AgentError> {
    Ok(match (alg, bits) {
        (KeyAlgorithm::Rsa, 1024) => AlgorithmId::Rsa1024,
        (KeyAlgorithm::Rsa, 2048) => AlgorithmId::Rsa2048,
        (KeyAlgorithm::Rsa, 3072) => AlgorithmId::Rsa3072,
        (KeyAlgorithm::Rsa, 4096) => AlgorithmId::Rsa4096,
        (KeyAlgorithm::EcP256, _) => AlgorithmId::EccP256,
        (KeyAlgorithm::EcP384, _) => AlgorithmId::EccP384,
        _ => {
            return Err(AgentError::UnsupportedAlgorithm(format!(
                "PIV has no {alg:?} key of {bits} bits"
            )));
        }
    })
}

/// The key type and size from a SubjectPublicKeyInfo (DER).
fn key_algorithm(spki: &[u8]) -> Option<(KeyAlgorithm, u32)> {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(spki) {
        return Some((KeyAlgorithm::Rsa, u32::try_from(k.size() * 8).ok()?));
    }
    if p256::PublicKey::from_public_key_der(spki).is_ok() {
        return Some((KeyAlgorithm::EcP256, 256));
    }
    if p384::PublicKey::from_public_key_der(spki).is_ok() {
        return Some((KeyAlgorithm::EcP384, 384));
    }
    None
}
