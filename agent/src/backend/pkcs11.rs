//! PKCS#11 backend: one [`Module`] per shared library, one [`Token`] per token in it.
//!
//! ```text
//!  tokio task ──Token::submit(job)──► job queue ───────► worker 1 (Session A) ─┐
//!       ▲                                             └──► worker 2 (Session B) ─┼─► C_Sign …
//!       └──────────── oneshot reply ◄────────── finish(result) on the worker ◄────┘
//!                                                 └─► response written to the client
//! ```
//!
//! A key operation's `finish` runs on the worker thread: for a request from a client it
//! writes a successful response to the socket itself (`session::Sink`), so the answer
//! does not wait for the tokio thread to be woken; the tokio task collects the oneshot
//! only when the client's next request arrives (see `server::Handler`).
//!
//! After that first key operation the connection waits on the token's [`Lane`]: the
//! workers read its next requests themselves and answer the key operations that need
//! nothing but the token ([`Token::sign_now`] and friends); the rest goes back to tokio.
//!
//! ```text
//!  client ──request──► lane (epoll) ──► worker: read, C_Sign, write ──► client
//!                          └── anything else ──► tokio task ──► job queue ──► worker
//! ```
//!
//! **No PKCS#11 call runs on a tokio thread.** Each worker thread owns one `Session`
//! (`Send`, not `Sync`) and takes jobs from the token's queue, so `sessions` requests can
//! run at once. Login state belongs to the application and token, so one `C_Login` on any
//! session serves them all; the agent logs in once and keeps the sessions.
//!
//! Each token has its own queue and workers, so a token that hangs (a card waiting for a
//! touch, a PIN pad waiting for the user) holds up only its own requests; the jobs running
//! on it are tracked and `Status` reports one running longer than a second as `waiting`.
//! Keys with CKA_ALWAYS_AUTHENTICATE go through the `raw` module for their
//! context-specific login, and so does `C_Initialize`, which lends the module the agent's
//! mutexes (`modlock`: they look for the lock before they sleep).
//! Per-token settings ([`PinPolicy`], from `[[token]]` in config.toml) decide where PINs
//! come from (pinentry, client, file, env, PIN pad), how long logins last, whether a PIN is
//! kept at all, and which keys need a confirmation before signing.

mod lane;
pub(crate) mod mechanism;
mod modlock;
pub(crate) mod oaep;
mod queue;
mod raw;
mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::Slot;
use smime_proto::{
    DecryptAlgorithm, KeyAlgorithm, KeyId, KeyInfo, Operation, Pin, PinState, SecretBytes,
    SignAlgorithm, TokenStatus,
};

use super::piv::{self, PivWorker};
use crate::config::{AlwaysAuth, Config, PinPolicy, PinSourceKind};
use crate::error::AgentError;
use lane::Lane;
pub use lane::{Guest, OnWorker, Served};
use queue::{JobQueue, Work};
pub(crate) use worker::Login;
pub use worker::PinSource;
use worker::Worker;

/// A unit of work for a token's worker thread.
type Job = Box<dyn FnOnce(&mut Device) + Send>;

/// What a token's worker thread drives: a PKCS#11 session, or (native PIV backend) a
/// card over PC/SC. The token's PIN policy is the same for both; only these calls differ.
#[derive(Debug)]
enum Device {
    /// A PKCS#11 session.
    P11(Worker),
    /// A PIV card through the `yubikey` crate.
    Piv(PivWorker),
}

impl Device {
    fn enumerate(&mut self, serial: &str, label: &str) -> Result<Vec<KeyEntry>, AgentError> {
        match self {
            Device::P11(w) => w.enumerate(serial, label),
            Device::Piv(w) => w.enumerate(serial, label),
        }
    }

    fn login(&mut self, pin: &Pin, source: PinSource) -> Result<Login, AgentError> {
        match self {
            Device::P11(w) => w.login(pin, source),
            Device::Piv(w) => w.login(pin, source),
        }
    }

    fn login_pinpad(&mut self) -> Result<Login, AgentError> {
        match self {
            Device::P11(w) => w.login_pinpad(),
            Device::Piv(_) => Err(AgentError::UnsupportedAlgorithm(
                "a native PIV card has no PIN pad: configure another PIN source".into(),
            )),
        }
    }

    fn logout(&mut self) -> Result<(), AgentError> {
        match self {
            Device::P11(w) => w.logout(),
            Device::Piv(w) => w.logout(),
        }
    }

    #[allow(clippy::too_many_arguments)] // one argument per part of the request
    fn sign(
        &mut self,
        id: &[u8],
        key: (KeyAlgorithm, u32),
        alg: SignAlgorithm,
        digest: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
        reauth: Option<&Pin>,
    ) -> Result<Vec<u8>, AgentError> {
        match self {
            Device::P11(w) => w.sign(id, key.0, alg, digest, ctx),
            Device::Piv(w) => w.sign(id, key, alg, digest, ctx, reauth),
        }
    }

    fn decrypt(
        &mut self,
        id: &[u8],
        bits: u32,
        alg: DecryptAlgorithm,
        ct: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
        reauth: Option<&Pin>,
    ) -> Result<SecretBytes, AgentError> {
        match self {
            Device::P11(w) => w.decrypt(id, alg, ct, ctx),
            Device::Piv(w) => w.decrypt(id, bits, alg, ct, ctx, reauth),
        }
    }

    fn ecdh(
        &mut self,
        id: &[u8],
        curve: KeyAlgorithm,
        peer: &[u8],
        ctx: Option<(Option<&Pin>, PinSource)>,
        reauth: Option<&Pin>,
    ) -> Result<SecretBytes, AgentError> {
        match self {
            Device::P11(w) => w.ecdh(id, curve, peer, ctx),
            Device::Piv(w) => w.ecdh(id, curve, peer, ctx, reauth),
        }
    }
}

/// Where a token lives.
#[derive(Debug)]
enum Kind {
    /// A PKCS#11 token: its module and slot, and the module's [`Module::ops`] lock.
    P11 {
        p11: Pkcs11,
        slot: Slot,
        ops: Arc<RwLock<()>>,
    },
    /// A card on the native PIV backend.
    Piv {
        /// PIV application version.
        version: String,
        /// The card is in its reader, as card events and operations last showed.
        present: std::sync::atomic::AtomicBool,
    },
}

/// A loaded and initialized PKCS#11 module.
#[derive(Debug)]
pub struct Module {
    path: PathBuf,
    p11: Pkcs11,
    /// The same module's C_Sign/C_Decrypt, for always-authenticate keys.
    raw: Option<Arc<raw::RawModule>>,
    /// Token jobs hold it shared; a slot rescan holds it alone. Card modules (OpenSC)
    /// deadlock when C_GetTokenInfo for a rescan meets an operation on a card that was just
    /// pulled out or put back (seen with OpenSC 0.23: its global and card locks taken in
    /// opposite orders), so the two never overlap.
    ops: Arc<RwLock<()>>,
}

/// How long a rescan waits for running token jobs before it gives up on a module (a card
/// waiting for a touch must not hold the rescan of every other token).
const RESCAN_WAIT: Duration = Duration::from_secs(3);

impl Module {
    /// Loads the library and calls `C_Initialize`. Blocking.
    ///
    /// # Errors
    /// When the library cannot be loaded or initialized.
    pub fn load(path: &Path) -> Result<Self, CkError> {
        let p11 = Pkcs11::new(path)?;
        let raw = match raw::RawModule::open(path) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!(module = %path.display(), error = %e,
                    "no direct C_Sign/C_Decrypt: always-authenticate keys will be refused");
                None
            }
        };
        // The module's mutexes are the agent's when it takes them (see `modlock`): a
        // waiter looks for the lock before it sleeps. Else the OS's, as cryptoki asks.
        // A module that cannot take them says CKR_CANT_LOCK (or, older ones,
        // CKR_ARGUMENTS_BAD); any other refusal is the module's answer to C_Initialize.
        match raw.as_ref().map(|r| r.initialize_with_our_locks()) {
            Some(Ok(())) => {
                tracing::debug!(module = %path.display(), "module initialized with the agent's locks");
            }
            Some(Err(cryptoki_sys::CKR_CRYPTOKI_ALREADY_INITIALIZED)) => {}
            Some(Err(rv))
                if rv != cryptoki_sys::CKR_CANT_LOCK && rv != cryptoki_sys::CKR_ARGUMENTS_BAD =>
            {
                cryptoki::error::Rv::from(rv)
                    .into_result(cryptoki::context::Function::Initialize)?;
            }
            refused => {
                if let Some(Err(rv)) = refused {
                    tracing::debug!(module = %path.display(), rv = format_args!("{rv:#x}"),
                        "the module does not take the agent's locks; it uses the OS's");
                }
                match p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
                    Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Self {
            path: path.to_owned(),
            p11,
            raw,
            ops: Arc::new(RwLock::new(())),
        })
    }

    /// The library path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The slots that hold an initialized token now (C_GetSlotList only: no call that
    /// touches the card). Blocking.
    pub fn token_slots(&self) -> Vec<Slot> {
        self.p11
            .get_slots_with_initialized_token()
            .unwrap_or_else(|e| {
                tracing::error!(module = %self.path.display(), error = %e, "cannot list slots");
                vec![]
            })
    }

    /// Every slot of the module, with or without a token (a card reader is a slot). Blocking.
    pub fn slots(&self) -> Vec<Slot> {
        self.p11.get_all_slots().unwrap_or_default()
    }

    /// Waits (up to a few seconds) until no token job of this module runs and returns a
    /// guard that keeps new ones waiting: for looking at the slots. `None` when jobs kept
    /// running (the rescan of this module is skipped).
    pub fn exclusive(&self) -> Option<std::sync::RwLockWriteGuard<'_, ()>> {
        let start = Instant::now();
        loop {
            match self.ops.try_write() {
                Ok(g) => return Some(g),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if start.elapsed() < RESCAN_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    tracing::warn!(module = %self.path.display(), "tokens busy: slots not rescanned");
                    return None;
                }
            }
        }
    }

    /// Opens the token in `slot` with `sessions` worker threads; a failure is logged.
    /// A token in a reader `native` names is left alone: the native PIV backend serves
    /// that card. Blocking.
    pub fn open_token(
        &self,
        slot: Slot,
        config: &Config,
        native: &dyn Fn(&str) -> bool,
    ) -> Option<Arc<Token>> {
        let reader = self
            .p11
            .get_slot_info(slot)
            .map(|i| i.slot_description().trim().to_owned())
            .unwrap_or_default();
        if !reader.is_empty() && native(&reader) {
            tracing::debug!(module = %self.path.display(), %reader,
                "slot skipped: the native PIV backend serves this reader");
            return None;
        }
        match Token::open(self, slot, config) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::warn!(module = %self.path.display(), slot = slot.id(), error = %e, "skipping token");
                None
            }
        }
    }

    /// Calls `C_Finalize`. Every token of the module must have been shut down.
    pub fn finalize(self) {
        if let Err(e) = self.p11.finalize() {
            tracing::warn!(module = %self.path.display(), error = %e, "C_Finalize failed");
        }
    }
}

/// A key as the keystore knows it.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// What `ListKeys` reports.
    pub info: KeyInfo,
    pub(crate) cka_id: Vec<u8>,
}

#[derive(Debug)]
struct TokenState {
    logged_in: bool,
    login_required: bool,
    /// Set when the PIN from the agent's configuration was rejected: it is never tried again.
    configured_pin_rejected: Option<PinState>,
    /// The configured PIN after the token accepted it, to log in again when the token
    /// comes back after a removal. Zeroized on drop; forgotten on `Lock`.
    configured_pin: Option<Arc<Pin>>,
    keys: Vec<Arc<KeyEntry>>,
    /// When the current login began (for the TTL).
    logged_in_at: Option<Instant>,
    /// The last private-key operation (for the idle timeout).
    last_used: Instant,
    /// With `always_auth = "cached-pin"`: the PIN the token was unlocked with, for the
    /// context-specific logins. Dropped on logout, expiry, removal and a rejection.
    cached_pin: Option<Arc<Pin>>,
    /// PC/SC said the card left (or pcscd went away) and has not said it is back: a
    /// module error meanwhile means "no card", whatever code the module picked (OpenSC
    /// answers CKR_GENERAL_ERROR on a dead PC/SC context).
    card_out: bool,
}

/// One token, served by its own worker threads.
#[derive(Debug)]
pub struct Token {
    /// CKA label of the token (trimmed).
    pub label: String,
    /// Serial number (trimmed); the first half of every [`KeyId`].
    pub serial: String,
    module: String,
    /// PKCS#11 slot or native PIV card.
    kind: Kind,
    /// The slot description: for a card module, the name of the reader the card is in.
    reader: String,
    /// The workers' session generation: bumped when the token's sessions are dead.
    epoch: Arc<AtomicU64>,
    jobs: Arc<JobQueue<Job>>,
    /// Where connections wait for a worker to read their next request (PKCS#11 tokens).
    lane: Option<Arc<Lane>>,
    /// Serializes logins, so two clients cannot spend two PIN tries at once.
    login_lock: tokio::sync::Mutex<()>,
    /// One pinentry dialog at a time per token.
    prompt_lock: tokio::sync::Mutex<()>,
    /// The token's settings; replaced when SIGHUP reloads the configuration.
    policy: Mutex<Arc<PinPolicy>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    state: Mutex<TokenState>,
    /// The token reports CKF_PROTECTED_AUTHENTICATION_PATH (a PIN-pad reader).
    protected_path: bool,
    /// Jobs running on the workers now: id → (start, what the token waits for).
    inflight: Arc<Mutex<BTreeMap<u64, (Instant, &'static str)>>>,
    next_job: AtomicU64,
}

/// A job running longer than this is shown as "waiting" in `Status`.
const WAITING_AFTER: Duration = Duration::from_secs(1);
/// What a slow job waits for, as `Status` shows it.
const WAIT_TOKEN: &str = "waiting for the token (touch it, or check the card)";
const WAIT_PINPAD: &str = "waiting for the PIN on the reader's keypad";

/// What a key operation waits for: a context login on a PIN pad waits for the user at the
/// keypad, anything else for the token.
fn wait_reason<P, S>(ctx: &Option<(Option<P>, S)>) -> &'static str {
    match ctx {
        Some((None, _)) => WAIT_PINPAD,
        _ => WAIT_TOKEN,
    }
}

/// How long an idle worker keeps looking for its next job before it sleeps, when no other
/// worker of its token looks (see [`queue`]).
///
/// A client that sends one request after another sends the next about 20–150 µs after its
/// answer. Looking that long costs at most this much CPU time after each burst of
/// requests, and it yields the CPU to anything else that wants it: under load, to the
/// clients whose requests it then takes without a wake-up.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(250);

/// Queue depth per token: beyond it requests get `BUSY` instead of piling up.
const QUEUE_DEPTH: usize = 4096;

/// The CPUs a token's `workers` run on, worker `n` on the `n`-th (in turn), when they are
/// at least as many as the CPUs the agent may use; `None` leaves them to the scheduler.
///
/// Then every CPU has a worker anyway, and the scheduler, left to itself, moves them from
/// CPU to CPU (each ran 40 % of its time on its other CPU), so that two often wait for
/// one CPU while the other runs clients. On two vCPUs at 8 ECDSA clients, both workers were running at
/// once 48–53 % of the time, pinned 70 %, and the agent served 1.07 × the signatures
/// (RSA 1.02 ×; BENCHMARKS.md, round 8). With more CPUs than workers there is room to
/// spread them, and pinning would only keep a worker off a CPU that happens to be free.
fn worker_cpus(workers: usize) -> Option<Vec<usize>> {
    use rustix::thread::CpuSet;
    // The main thread's set is the process's: a worker's may be pinned already.
    let allowed = rustix::thread::sched_getaffinity(Some(rustix::process::getpid())).ok()?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .collect();
    (cpus.len() >= 2 && workers >= cpus.len()).then_some(cpus)
}

/// Keeps the calling thread on `cpu` (a failure leaves it where the scheduler puts it).
fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::debug!(cpu, error = %e, "worker not pinned");
    }
}

impl Token {
    fn open(module: &Module, slot: Slot, config: &Config) -> Result<Self, CkError> {
        let sessions = config.sessions;
        let info = module.p11.get_token_info(slot)?;
        let reader = module
            .p11
            .get_slot_info(slot)
            .map(|i| i.slot_description().trim().to_owned())
            .unwrap_or_default();
        let policy = config.policy_for(info.label().trim(), info.serial_number().trim());
        let protected_path = info.protected_authentication_path();
        let label = info.label().trim().to_owned();
        let lane = Lane::new()
            .map(Arc::new)
            .inspect_err(|e| tracing::warn!(token = %label, error = %e, "no lane for this token"))
            .ok();
        let jobs = Arc::new(JobQueue::<Job>::new(QUEUE_DEPTH, lane.clone()));
        let epoch = Arc::new(AtomicU64::new(0));
        let serial = info.serial_number().trim().to_owned();
        let mut workers = Vec::new();
        let cpus = worker_cpus(sessions.max(1));
        for n in 0..sessions.max(1) {
            let cpu = cpus.as_ref().map(|c| c[n % c.len()]);
            let session = module.p11.open_ro_session(slot)?;
            let queue = jobs.clone();
            let ops = module.ops.clone();
            let lane = lane.clone();
            let mut d = Device::P11(Worker::new(
                session,
                module.p11.clone(),
                slot,
                label.clone(),
                epoch.clone(),
                module.raw.clone(),
            ));
            let handle = std::thread::Builder::new()
                .name(format!("p11-{label}-{n}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    while let Some(work) = queue.take(SPIN_BEFORE_SLEEP) {
                        let _shared = ops.read().unwrap_or_else(|e| e.into_inner());
                        if let Device::P11(w) = &mut d {
                            w.revive();
                        }
                        match work {
                            Work::Job(job, _running) => job(&mut d),
                            Work::Guest(id, guest, _running) => {
                                // Only a queue with a lane hands out guests.
                                if let Some(lane) = &lane {
                                    let served = guest.serve(&mut OnWorker { dev: &mut d, lane });
                                    lane.served(id, served);
                                }
                            }
                        }
                    }
                })
                .map_err(|_| {
                    CkError::Pkcs11(
                        RvError::HostMemory,
                        cryptoki::context::Function::OpenSession,
                    )
                })?;
            workers.push(handle);
        }
        tracing::info!(token = %label, serial = %serial, slot = slot.id(), sessions = workers.len(), protected_path, pinned = cpus.is_some(), "token opened");
        Ok(Self {
            label,
            serial,
            module: module.path.display().to_string(),
            kind: Kind::P11 {
                p11: module.p11.clone(),
                slot,
                ops: module.ops.clone(),
            },
            reader,
            epoch,
            jobs,
            lane,
            login_lock: tokio::sync::Mutex::new(()),
            prompt_lock: tokio::sync::Mutex::new(()),
            policy: Mutex::new(policy),
            workers: Mutex::new(workers),
            state: Mutex::new(TokenState {
                logged_in: false,
                logged_in_at: None,
                last_used: Instant::now(),
                login_required: info.login_required(),
                configured_pin_rejected: None,
                configured_pin: None,
                keys: vec![],
                cached_pin: None,
                card_out: false,
            }),
            protected_path,
            inflight: Arc::new(Mutex::new(BTreeMap::new())),
            next_job: AtomicU64::new(0),
        })
    }

    /// A token for a card on the native PIV backend: one worker thread owns the card's
    /// connection (a card does one thing at a time). The label is `PIV card <serial>`, the
    /// serial the card's, and the keys' CKA_IDs are their slot numbers (`<serial>:9a`).
    pub fn open_piv(card: piv::FoundCard, config: &Config) -> std::io::Result<Self> {
        let serial = card.serial.to_string();
        let label = format!("PIV card {serial}");
        let reader = card.reader.clone();
        let version = card.version.clone();
        let policy = config.policy_for(&label, &serial);
        let jobs = Arc::new(JobQueue::<Job>::new(QUEUE_DEPTH, None));
        let queue = jobs.clone();
        let epoch = Arc::new(AtomicU64::new(0));
        let mut d = Device::Piv(PivWorker::new(card, label.clone(), epoch.clone()));
        let handle = std::thread::Builder::new()
            .name(format!("piv-{serial}"))
            .spawn(move || {
                // A card takes milliseconds per operation: its worker sleeps at once.
                while let Some(work) = queue.take(Duration::ZERO) {
                    if let Work::Job(job, _running) = work {
                        job(&mut d);
                    }
                }
                // `d` drops here: the card is left with disconnect(LeaveCard).
            })?;
        tracing::info!(token = %label, %reader, %version, "native PIV card opened");
        Ok(Self {
            label,
            serial,
            module: piv::MODULE_NAME.to_owned(),
            kind: Kind::Piv {
                version,
                present: std::sync::atomic::AtomicBool::new(true),
            },
            reader,
            epoch,
            jobs,
            lane: None,
            login_lock: tokio::sync::Mutex::new(()),
            prompt_lock: tokio::sync::Mutex::new(()),
            policy: Mutex::new(policy),
            workers: Mutex::new(vec![handle]),
            state: Mutex::new(TokenState {
                logged_in: false,
                logged_in_at: None,
                last_used: Instant::now(),
                login_required: true,
                configured_pin_rejected: None,
                configured_pin: None,
                keys: vec![],
                cached_pin: None,
                card_out: false,
            }),
            protected_path: false,
            inflight: Arc::new(Mutex::new(BTreeMap::new())),
            next_job: AtomicU64::new(0),
        })
    }

    /// The reader the token's card is in (the slot description for PKCS#11 tokens).
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// The token's settings now.
    fn policy(&self) -> Arc<PinPolicy> {
        self.policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies new settings (a reloaded configuration). A login in force stays; a PIN
    /// kept for the old settings is dropped if the new ones say to keep none.
    pub fn set_policy(&self, policy: Arc<PinPolicy>) {
        if policy.login_only || policy.always_auth != AlwaysAuth::CachedPin {
            self.state().cached_pin = None;
        }
        if policy.login_only {
            self.state().configured_pin = None;
        }
        *self.policy.lock().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Whether logins go through the reader's PIN pad: the token has one, or the
    /// configuration says `pin_source = "pinpad"`.
    fn pinpad(&self) -> bool {
        match self.policy().source {
            Some(PinSourceKind::Pinpad) => true,
            None => self.protected_path,
            Some(_) => false,
        }
    }

    fn state(&self) -> MutexGuard<'_, TokenState> {
        // A poisoned lock means a worker panicked mid-update; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on one of the token's worker threads and awaits its result.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Device) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<T, AgentError> {
        self.run_as(WAIT_TOKEN, f).await
    }

    /// [`Token::run`], noting while it runs what the token waits for (see `Status`).
    async fn run_as<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Device) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<T, AgentError> {
        self.submit(what, f, |r| r)?.await.map_err(|_| stopped())?
    }

    /// Queues `f` for one of the token's worker threads; `finish` then runs on that
    /// worker thread with the result (the server uses it to write a response to the client
    /// straight from the worker: no hop back through tokio), and the receiver gets what
    /// `finish` returns.
    fn submit<T: Send + 'static, U: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Device) -> Result<T, AgentError> + Send + 'static,
        finish: impl FnOnce(Result<T, AgentError>) -> U + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<U>, AgentError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let inflight = self.inflight.clone();
        let job: Job = Box::new(move |w| {
            let r = {
                let _running = Running::start(inflight, id, what);
                f(w)
            };
            let _ = tx.send(finish(r));
        });
        self.jobs.push(job).map_err(|_| AgentError::Busy)?;
        Ok(rx)
    }

    /// Re-reads the token's keys and certificates.
    pub async fn refresh_keys(&self) -> Result<(), AgentError> {
        let (serial, label) = (self.serial.clone(), self.label.clone());
        let keys = self.run(move |w| w.enumerate(&serial, &label)).await?;
        tracing::info!(token = %self.label, keys = keys.len(), "keys enumerated");
        self.state().keys = keys.into_iter().map(Arc::new).collect();
        Ok(())
    }

    /// Logs in with `pin`: at most one `C_Login`, never retried (see [`Worker::login`]
    /// for when no PIN is sent at all).
    ///
    /// A PIN from the configuration that the token rejects is remembered and never sent
    /// again. Logins to one token are serialized, and one that finds the token already
    /// logged in does not send its PIN.
    pub async fn login(&self, pin: Arc<Pin>, source: PinSource) -> Result<(), AgentError> {
        let configured = source == PinSource::Configured;
        let _one_at_a_time = self.login_lock.lock().await;
        if configured && let Some(state) = self.state().configured_pin_rejected {
            return Err(AgentError::PinIncorrect {
                token: self.label.clone(),
                state,
                configured,
                tries: None,
            });
        }
        let keep = (configured && !self.policy().login_only).then(|| pin.clone());
        let cache = (self.policy().always_auth == AlwaysAuth::CachedPin
            && !self.policy().login_only)
            .then(|| pin.clone());
        let result = self.run(move |w| w.login(&pin, source)).await;
        match &result {
            Ok(outcome) => {
                {
                    let mut st = self.state();
                    st.logged_in = true;
                    st.logged_in_at = Some(Instant::now());
                    if keep.is_some() {
                        st.configured_pin = keep;
                    }
                    if cache.is_some() {
                        st.cached_pin = cache;
                    }
                }
                if *outcome == Login::AlreadyLoggedIn {
                    tracing::info!(token = %self.label, "already logged in; PIN not sent");
                } else {
                    tracing::info!(token = %self.label, "logged in");
                }
                self.refresh_keys().await?;
            }
            Err(AgentError::PinIncorrect { state, .. }) => {
                tracing::warn!(token = %self.label, pin_state = ?state, configured, "PIN not accepted; not retrying");
                if configured {
                    self.state().configured_pin_rejected = Some(*state);
                }
            }
            Err(e) => tracing::warn!(token = %self.label, error = %e, "login failed"),
        }
        result.map(|_| ())
    }

    /// Logs out (all sessions share the login) and forgets the login state.
    pub async fn logout(&self) -> Result<(), AgentError> {
        {
            // No automatic login after an explicit lock.
            let mut st = self.state();
            st.configured_pin = None;
            st.cached_pin = None;
        }
        self.run(Device::logout).await?;
        self.state().logged_in = false;
        tracing::info!(token = %self.label, "logged out");
        Ok(())
    }

    /// Whether the token needs a login before private-key operations.
    pub fn needs_login(&self) -> bool {
        let s = self.state();
        s.login_required && !s.logged_in
    }

    /// The keys found at the last enumeration.
    pub fn keys(&self) -> Vec<Arc<KeyEntry>> {
        self.state().keys.clone()
    }

    fn ready(&self, key: &KeyEntry, op: Operation) -> Result<(), AgentError> {
        let s = self.state();
        if s.login_required && !s.logged_in {
            return Err(match s.configured_pin_rejected {
                Some(state) => AgentError::PinIncorrect {
                    token: self.label.clone(),
                    state,
                    configured: true,
                    tries: None,
                },
                None => AgentError::PinRequired {
                    token: self.label.clone(),
                },
            });
        }
        if !key.info.operations.contains(&op) {
            let op = match op {
                Operation::Sign => "signing",
                Operation::Decrypt => "decryption",
                _ => "key agreement",
            };
            return Err(AgentError::NotAllowed {
                key: key.info.id.clone(),
                op,
            });
        }
        Ok(())
    }

    /// The pinentry program for this token, unless its PIN comes from elsewhere.
    fn pinentry(&self) -> Option<PathBuf> {
        match self.policy().source {
            None | Some(PinSourceKind::Pinentry) => self.policy().pinentry.clone(),
            Some(_) => None,
        }
    }

    /// The PIN from the token's `file` / `env` source, read now (it is not kept).
    fn source_pin(&self) -> Result<Option<Arc<Pin>>, AgentError> {
        self.policy()
            .read_pin()
            .map(|p| p.map(Arc::new))
            .map_err(|e| {
                tracing::warn!(token = %self.label, error = %e, "cannot read the configured PIN");
                AgentError::PinRequired {
                    token: self.label.clone(),
                }
            })
    }

    /// Asks the user for the PIN through pinentry, after reading the token's PIN flags:
    /// nothing is asked for a locked token, and the final try needs an explicit
    /// confirmation first. The caller holds `prompt_lock`.
    async fn prompt_pin(
        &self,
        program: PathBuf,
        description: String,
    ) -> Result<(Arc<Pin>, PinSource), AgentError> {
        let state = self.pin_state().await?;
        let token = self.label.clone();
        let mut source = PinSource::User;
        match state {
            PinState::Locked => return Err(AgentError::PinLocked { token }),
            PinState::FinalTry => {
                let prog = program.clone();
                let text = format!(
                    "Token \"{token}\" is on its FINAL PIN try: one more wrong PIN locks it.\n\nContinue?"
                );
                if !confirm(prog, text).await? {
                    return Err(AgentError::PinFinalTry { token });
                }
                source = PinSource::UserConfirmedFinalTry;
            }
            _ => {}
        }
        let prompt = crate::pinentry::Prompt {
            description,
            error: (state == PinState::CountLow)
                .then(|| "A wrong PIN was entered before: tries are running low.".to_owned()),
        };
        let pin = tokio::task::spawn_blocking(move || crate::pinentry::get_pin(&program, &prompt))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        match pin {
            Ok(pin) => Ok((Arc::new(pin), source)),
            Err(crate::pinentry::PinentryError::Cancelled) => {
                Err(AgentError::PinRequired { token })
            }
            Err(e) => {
                tracing::warn!(token = %self.label, error = %e, "pinentry failed");
                Err(AgentError::PinRequired { token })
            }
        }
    }

    /// Logs in through the reader's PIN pad: the user types the PIN on the reader.
    async fn login_pinpad(&self) -> Result<(), AgentError> {
        let _one_at_a_time = self.login_lock.lock().await;
        if !self.needs_login() {
            return Ok(());
        }
        tracing::warn!(token = %self.label, "enter the PIN on the reader's keypad (PIN pad login)");
        let r = self.run_as(WAIT_PINPAD, Device::login_pinpad).await;
        match &r {
            Ok(_) => {
                {
                    let mut st = self.state();
                    st.logged_in = true;
                    st.logged_in_at = Some(Instant::now());
                }
                tracing::info!(token = %self.label, "logged in through the PIN pad");
                self.refresh_keys().await?;
            }
            Err(e) => {
                tracing::warn!(token = %self.label, error = %e, "PIN pad login failed; not retrying")
            }
        }
        r.map(|_| ())
    }

    /// Makes sure the token is logged in before a private-key operation:
    /// - through the reader's PIN pad, for a token that has one;
    /// - with the agent's configured PIN, if the token accepted it before (after a
    ///   removal or an expired login), or the token's `file` / `env` PIN source;
    /// - else, with pinentry configured, by asking the user (one dialog at a time; the
    ///   final try needs an explicit confirmation; a cancelled dialog sends nothing).
    ///
    /// A PIN a client sent with `Unlock` is not kept; such a token waits for the next one.
    /// Returns the PIN the user typed for this request, if any (an always-authenticate
    /// key uses it for its first context login instead of asking twice).
    async fn ensure_login(
        &self,
        key: &KeyEntry,
        who: &str,
    ) -> Result<Option<(Arc<Pin>, PinSource)>, AgentError> {
        let pin = {
            let s = self.state();
            if !s.login_required || s.logged_in {
                return Ok(None);
            }
            if s.configured_pin_rejected.is_none() {
                s.configured_pin.clone()
            } else {
                None
            }
        };
        if self.pinpad() {
            return self.login_pinpad().await.map(|()| None);
        }
        if let Some(pin) = pin.map_or_else(|| self.source_pin(), |p| Ok(Some(p)))? {
            return match self.login(pin, PinSource::Configured).await {
                Err(e @ AgentError::TokenAbsent { .. }) => Err(e),
                _ => Ok(None),
            };
        }
        let Some(program) = self.pinentry() else {
            return Ok(None);
        };
        let _one_dialog = self.prompt_lock.lock().await;
        if !self.needs_login() {
            return Ok(None); // someone else's dialog logged in meanwhile
        }
        let description = format!(
            "Enter the PIN of token \"{}\" to use key \"{}\".\nRequested by {who}.",
            self.label, key.info.label
        );
        let (pin, source) = self.prompt_pin(program, description).await?;
        self.login(pin.clone(), source).await?;
        Ok(Some((pin, source)))
    }

    /// The PIN for the context-specific login of an always-authenticate key: the one the
    /// user typed for this request, else (policy `cached-pin`) the cached or configured
    /// one, else a new pinentry dialog.
    async fn context_pin(
        &self,
        key: &KeyEntry,
        op: &str,
        who: &str,
        fresh: Option<(Arc<Pin>, PinSource)>,
    ) -> Result<(Option<Arc<Pin>>, PinSource), AgentError> {
        if let Some((p, s)) = fresh {
            return Ok((Some(p), s));
        }
        if self.pinpad() {
            tracing::warn!(token = %self.label, key = %key.info.label,
                "enter the PIN on the reader's keypad (context-specific login)");
            return Ok((None, PinSource::User));
        }
        if self.policy().always_auth == AlwaysAuth::CachedPin {
            let cached = {
                let s = self.state();
                s.cached_pin.clone().or_else(|| s.configured_pin.clone())
            };
            if let Some(p) = cached {
                return Ok((Some(p), PinSource::Cached));
            }
            if let Some(p) = self.source_pin()? {
                return Ok((Some(p), PinSource::Configured));
            }
        }
        let Some(program) = self.pinentry() else {
            if let Some(p) = self.source_pin()? {
                return Ok((Some(p), PinSource::Configured));
            }
            return Err(AgentError::KeyNeedsPinPerUse {
                token: self.label.clone(),
            });
        };
        let _one_dialog = self.prompt_lock.lock().await;
        let description = format!(
            "Key \"{}\" on token \"{}\" needs the PIN for every use.\nEnter it to allow this {op}.\nRequested by {who}.",
            key.info.label, self.label
        );
        let (p, s) = self.prompt_pin(program, description).await?;
        Ok((Some(p), s))
    }

    /// For keys configured as high-assurance: asks the user to allow this signature.
    async fn confirm_sign(&self, key: &KeyEntry, who: &str) -> Result<(), AgentError> {
        if !self.policy().confirms(&key.info.label, &key.cka_id) {
            return Ok(());
        }
        let declined = || AgentError::ConfirmationDeclined {
            token: self.label.clone(),
            key: key.info.label.clone(),
        };
        let Some(program) = self.policy().pinentry.clone() else {
            tracing::warn!(token = %self.label, key = %key.info.label,
                "signature needs confirmation but no pinentry is configured; refused");
            return Err(declined());
        };
        let _one_dialog = self.prompt_lock.lock().await;
        let text = format!(
            "Allow {who} to make a signature with key \"{}\" on token \"{}\"?",
            key.info.label, self.label
        );
        if confirm(program, text).await? {
            Ok(())
        } else {
            tracing::info!(token = %self.label, key = %key.info.label, "signature declined by the user");
            Err(declined())
        }
    }

    /// The key's entry as enumerated now (a login re-reads the private attributes, such
    /// as CKA_ALWAYS_AUTHENTICATE, that the public half did not show).
    fn current(&self, key: &KeyEntry) -> Arc<KeyEntry> {
        self.key(&key.info.id)
            .unwrap_or_else(|| Arc::new(key.clone()))
    }

    /// After an operation on an always-authenticate key: a cached PIN the token rejected
    /// is dropped, never sent again.
    fn after_context<T>(
        &self,
        r: &Result<T, AgentError>,
        ctx: &Option<(Option<Arc<Pin>>, PinSource)>,
    ) {
        if let (
            Err(AgentError::PinIncorrect { .. }),
            Some((_, PinSource::Configured | PinSource::Cached)),
        ) = (r, ctx)
        {
            tracing::warn!(token = %self.label, "cached PIN rejected by the context login; dropped");
            let mut s = self.state();
            s.cached_pin = None;
            s.configured_pin = None;
        }
    }

    /// Whether the login is past its TTL or idle limit.
    pub fn login_expired(&self) -> bool {
        let s = self.state();
        let Some(at) = s.logged_in_at.filter(|_| s.logged_in && s.login_required) else {
            return false;
        };
        let policy = self.policy();
        policy.ttl.is_some_and(|ttl| at.elapsed() >= ttl)
            || policy
                .idle
                .is_some_and(|idle| s.last_used.elapsed() >= idle)
    }

    /// Logs out because the cache policy says so. A configured PIN stays, so an
    /// unattended agent logs in again on the next request.
    pub async fn expire(&self) -> Result<(), AgentError> {
        self.run(Device::logout).await?;
        {
            let mut s = self.state();
            s.logged_in = false;
            s.logged_in_at = None;
            s.cached_pin = None;
        }
        tracing::info!(token = %self.label, "login expired by the cache policy; logged out");
        Ok(())
    }

    /// Signs `digest`. RSA signatures come back raw, ECDSA signatures DER-encoded.
    ///
    /// The checks, login and dialogs run here; the token call is queued for a worker,
    /// which hands its result to `finish` (on the worker thread). Await the returned
    /// [`Submitted`] for what `finish` returned.
    pub async fn submit_sign<U: Send + 'static>(
        &self,
        key: &KeyEntry,
        alg: SignAlgorithm,
        digest: Vec<u8>,
        who: &str,
        finish: impl FnOnce(Result<Vec<u8>, AgentError>) -> Result<U, AgentError> + Send + 'static,
    ) -> Result<Submitted<U>, AgentError> {
        self.confirm_sign(key, who).await?;
        let fresh = self.ensure_login(key, who).await?;
        let key = &self.current(key);
        self.prepare(key, Operation::Sign, sign_rsa(alg))?;
        let (id, kalg) = (key.cka_id.clone(), (key.info.algorithm, key.info.bits));
        self.submit_key_op(key, "signature", who, fresh, finish, move |w, c, reauth| {
            w.sign(&id, kalg, alg, &digest, c, reauth)
        })
        .await
    }

    /// The checks every key operation passes once the token is logged in: `key` (as
    /// enumerated now) allows `op` and is of the kind `rsa` says (`None`: an algorithm
    /// this agent does not know). Counts as a use of the login.
    fn prepare(&self, key: &KeyEntry, op: Operation, rsa: Option<bool>) -> Result<(), AgentError> {
        self.ready(key, op)?;
        self.state().last_used = Instant::now();
        check_alg(key, rsa.unwrap_or(false), rsa.is_none())
    }

    /// A key operation run at once on the worker thread `here`, for a request a worker
    /// read from a connection on this token's lane. `None` when it needs more than the
    /// token (a login, a dialog, a context-specific login) or fails a check: the request
    /// then takes the way through tokio, which does all that and gives the errors. `key`
    /// is the entry as the token lists it now (from `Keystore::key`).
    fn run_now<T>(
        &self,
        here: &mut OnWorker<'_>,
        key: &KeyEntry,
        op: Operation,
        rsa: Option<bool>,
        f: impl FnOnce(&mut Device, &KeyEntry, Option<&Pin>) -> Result<T, AgentError>,
    ) -> Option<Result<T, AgentError>> {
        let mine = self
            .lane
            .as_deref()
            .is_some_and(|l| std::ptr::eq(l, here.lane));
        if !mine || self.needs_login() {
            return None;
        }
        if op == Operation::Sign && self.policy().confirms(&key.info.label, &key.cka_id) {
            return None;
        }
        // `key` was just read from the token's list: it is the current entry.
        if key.info.always_authenticate || self.prepare(key, op, rsa).is_err() {
            return None;
        }
        let reauth = self.kept_pin();
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let r = {
            let _running = Running::start(self.inflight.clone(), id, WAIT_TOKEN);
            f(here.dev, key, reauth.as_deref())
        };
        Some(self.settle(r, &None))
    }

    /// [`Token::submit_sign`], run at once on a worker thread (see [`Token::run_now`]).
    pub fn sign_now(
        &self,
        here: &mut OnWorker<'_>,
        key: &KeyEntry,
        alg: SignAlgorithm,
        digest: &[u8],
    ) -> Option<Result<Vec<u8>, AgentError>> {
        self.run_now(here, key, Operation::Sign, sign_rsa(alg), |d, k, reauth| {
            let kalg = (k.info.algorithm, k.info.bits);
            d.sign(&k.cka_id, kalg, alg, digest, None, reauth)
        })
    }

    /// [`Token::submit_decrypt`], run at once on a worker thread.
    pub fn decrypt_now(
        &self,
        here: &mut OnWorker<'_>,
        key: &KeyEntry,
        alg: DecryptAlgorithm,
        ct: &[u8],
    ) -> Option<Result<SecretBytes, AgentError>> {
        self.run_now(
            here,
            key,
            Operation::Decrypt,
            decrypt_rsa(alg),
            |d, k, reauth| d.decrypt(&k.cka_id, k.info.bits, alg, ct, None, reauth),
        )
    }

    /// [`Token::submit_ecdh`], run at once on a worker thread.
    pub fn ecdh_now(
        &self,
        here: &mut OnWorker<'_>,
        key: &KeyEntry,
        peer: &[u8],
    ) -> Option<Result<SecretBytes, AgentError>> {
        self.run_now(here, key, Operation::Ecdh, Some(false), |d, k, reauth| {
            d.ecdh(&k.cka_id, k.info.algorithm, peer, None, reauth)
        })
    }

    /// Whether connections can wait on this token's lane ([`Token::park`]).
    pub fn has_lane(&self) -> bool {
        self.lane.is_some()
    }

    /// Parks a connection on the token's lane (see [`Lane::park`]), and makes sure a
    /// worker watches the lane.
    ///
    /// # Errors
    /// Without a lane, or when the socket cannot join it: the guest comes back.
    pub fn park(&self, guest: Box<dyn Guest>) -> Result<u64, (std::io::Error, Box<dyn Guest>)> {
        let Some(lane) = &self.lane else {
            return Err((std::io::Error::other("the token has no lane"), guest));
        };
        let id = lane.park(guest)?;
        self.jobs.watch();
        Ok(id)
    }

    /// Calls a parked connection back (see [`Lane::reclaim`]).
    pub fn reclaim(&self, id: u64) {
        if let Some(lane) = &self.lane {
            lane.reclaim(id);
        }
    }

    /// The common tail of a key operation: the context-specific login of an
    /// always-authenticate key (`op` names it in the dialog), then `f` queued for a worker
    /// with that PIN and the PIN a native card may be re-verified with ([`Token::kept_pin`]).
    async fn submit_key_op<T: Send + 'static, U: Send + 'static>(
        &self,
        key: &KeyEntry,
        op: &str,
        who: &str,
        fresh: Option<(Arc<Pin>, PinSource)>,
        finish: impl FnOnce(Result<T, AgentError>) -> Result<U, AgentError> + Send + 'static,
        f: impl FnOnce(
            &mut Device,
            Option<(Option<&Pin>, PinSource)>,
            Option<&Pin>,
        ) -> Result<T, AgentError>
        + Send
        + 'static,
    ) -> Result<Submitted<U>, AgentError> {
        let ctx = match key.info.always_authenticate {
            true => Some(self.context_pin(key, op, who, fresh).await?),
            false => None,
        };
        let c = ctx.clone();
        let what = wait_reason(&ctx);
        let reauth = self.kept_pin();
        let rx = self.submit(
            what,
            move |w| {
                let c = c.as_ref().map(|(p, s)| (p.as_deref(), *s));
                f(w, c, reauth.as_deref())
            },
            finish,
        )?;
        Ok(Submitted { rx, ctx })
    }

    /// Decrypts a wrapped content-encryption key (see [`Token::submit_sign`] for `finish`).
    pub async fn submit_decrypt<U: Send + 'static>(
        &self,
        key: &KeyEntry,
        alg: DecryptAlgorithm,
        ct: Vec<u8>,
        who: &str,
        finish: impl FnOnce(Result<SecretBytes, AgentError>) -> Result<U, AgentError> + Send + 'static,
    ) -> Result<Submitted<U>, AgentError> {
        let fresh = self.ensure_login(key, who).await?;
        let key = &self.current(key);
        self.prepare(key, Operation::Decrypt, decrypt_rsa(alg))?;
        let (id, bits) = (key.cka_id.clone(), key.info.bits);
        self.submit_key_op(
            key,
            "decryption",
            who,
            fresh,
            finish,
            move |w, c, reauth| w.decrypt(&id, bits, alg, &ct, c, reauth),
        )
        .await
    }

    /// ECDH with a peer point; Z goes to `finish` (see [`Token::submit_sign`]).
    pub async fn submit_ecdh<U: Send + 'static>(
        &self,
        key: &KeyEntry,
        peer: Vec<u8>,
        who: &str,
        finish: impl FnOnce(Result<SecretBytes, AgentError>) -> Result<U, AgentError> + Send + 'static,
    ) -> Result<Submitted<U>, AgentError> {
        let fresh = self.ensure_login(key, who).await?;
        let key = &self.current(key);
        self.prepare(key, Operation::Ecdh, Some(false))?;
        let (id, curve) = (key.cka_id.clone(), key.info.algorithm);
        self.submit_key_op(
            key,
            "key agreement",
            who,
            fresh,
            finish,
            move |w, c, reauth| w.ecdh(&id, curve, &peer, c, reauth),
        )
        .await
    }

    /// The PIN the policy lets the agent keep (the configured one, not rejected; or the
    /// cached one with `always_auth = "cached-pin"`): a native PIV card that forgot its
    /// verified PIN (another application re-selected or reset it) gets this one again,
    /// never a PIN typed for an earlier request.
    fn kept_pin(&self) -> Option<Arc<Pin>> {
        let s = self.state();
        let configured = s
            .configured_pin
            .clone()
            .filter(|_| s.configured_pin_rejected.is_none());
        configured.or_else(|| s.cached_pin.clone())
    }

    /// The bookkeeping after a key operation that failed: a rejected cached PIN is
    /// dropped, a lost login noted.
    fn settle<T>(
        &self,
        r: Result<T, AgentError>,
        ctx: &Option<(Option<Arc<Pin>>, PinSource)>,
    ) -> Result<T, AgentError> {
        self.after_context(&r, ctx);
        self.after_op(r)
    }

    /// Keeps the login flag honest: the worker reports `PinRequired` only when its
    /// session is not logged in, and a removed token has lost its login.
    fn after_op<T>(&self, r: Result<T, AgentError>) -> Result<T, AgentError> {
        let r = match r {
            Err(AgentError::Pkcs11 {
                token,
                function,
                rv,
            }) if self.state().card_out => {
                tracing::info!(%token, %function, %rv, "module error with the card out: token absent");
                Err(AgentError::TokenAbsent { token })
            }
            // The card answered: it is in.
            Ok(v) => {
                self.state().card_out = false;
                Ok(v)
            }
            r => r,
        };
        if let Err(AgentError::PinRequired { .. } | AgentError::TokenAbsent { .. }) = &r {
            let mut s = self.state();
            s.logged_in = false;
            // Lock on card removal: a cached PIN goes with the login.
            s.cached_pin = None;
        }
        if let Kind::Piv { present, .. } = &self.kind {
            let gone = matches!(r, Err(AgentError::TokenAbsent { .. }));
            present.store(!gone, Ordering::SeqCst);
        }
        r
    }

    /// The user PIN state, read on a worker thread: from the token flags (PKCS#11), or
    /// from the card's count of tries left (native PIV).
    async fn pin_state(&self) -> Result<PinState, AgentError> {
        match &self.kind {
            Kind::P11 { p11, slot, .. } => {
                let (p11, slot) = (p11.clone(), *slot);
                self.run(move |_| {
                    Ok(p11
                        .get_token_info(slot)
                        .map(|i| worker::pin_state(&i))
                        .unwrap_or(PinState::Unknown))
                })
                .await
            }
            Kind::Piv { .. } => self.piv_pin_info().await.map(|(s, _)| s),
        }
    }

    /// The PIN state and tries left of a native PIV card (`Unknown` for other tokens).
    async fn piv_pin_info(&self) -> Result<(PinState, Option<u32>), AgentError> {
        self.run(|d| match d {
            Device::Piv(w) => w.pin_info(),
            Device::P11(_) => Ok((PinState::Unknown, None)),
        })
        .await
    }

    /// The PKCS#11 slot the token is in (`None` for a native PIV card).
    pub fn slot(&self) -> Option<Slot> {
        match &self.kind {
            Kind::P11 { slot, .. } => Some(*slot),
            Kind::Piv { .. } => None,
        }
    }

    /// Whether this is a card on the native PIV backend.
    pub fn is_native_piv(&self) -> bool {
        matches!(self.kind, Kind::Piv { .. })
    }

    /// A card came back into the token's reader: the sessions the workers hold belong to
    /// the card that left, so the next request opens new ones.
    pub fn card_inserted(&self) {
        self.state().card_out = false;
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Kind::Piv { present, .. } = &self.kind {
            present.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the token sits in the PC/SC reader `name` (its slot description names it).
    pub fn in_reader(&self, name: &str) -> bool {
        !self.reader.is_empty() && (self.reader == name || self.reader.starts_with(name))
    }

    /// A slot listing found the token's card in: module errors mean what they say again.
    pub fn card_seen(&self) {
        self.state().card_out = false;
    }

    /// The card left its reader: the login and any cached PIN go with it. (The sessions
    /// are found dead by the next request, which reopens them once the card is back:
    /// reopening them here, while the card is out, leaves OpenSC 0.23 with a card lock
    /// held that deadlocks the next operation.) Until it is back, a module error on this
    /// token is reported as "not present".
    pub fn card_removed(&self) {
        let mut s = self.state();
        s.logged_in = false;
        s.cached_pin = None;
        s.card_out = true;
        drop(s);
        if let Kind::Piv { present, .. } = &self.kind {
            // A native card's connection is dead: the next job opens a fresh one (or says
            // "card removed"), never touching the old handle's card again.
            present.store(false, Ordering::SeqCst);
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The token's status. Reads the PIN flags from the token.
    pub async fn status(&self) -> TokenStatus {
        // Read beside the workers, which may all be stuck in a slow call, and bounded:
        // status must answer while a token hangs.
        let (pin_state, card) = match &self.kind {
            Kind::P11 { p11, slot, ops } => {
                let (p11, slot, ops) = (p11.clone(), *slot, ops.clone());
                let read = tokio::task::spawn_blocking(move || {
                    let _shared = ops.read().unwrap_or_else(|e| e.into_inner());
                    p11.get_token_info(slot)
                        .map(|i| worker::pin_state(&i))
                        .unwrap_or(PinState::Unknown)
                });
                let pin_state = tokio::time::timeout(Duration::from_millis(500), read)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(PinState::Unknown);
                (pin_state, None)
            }
            Kind::Piv { version, present } => {
                // The card has one connection, on the token's thread: ask there, and
                // give up after a while if the card is busy or hangs.
                let info = match present.load(Ordering::SeqCst) {
                    true => tokio::time::timeout(Duration::from_millis(500), self.piv_pin_info())
                        .await
                        .ok()
                        .and_then(Result::ok),
                    false => None,
                };
                let (pin_state, tries) = info.unwrap_or((PinState::Unknown, None));
                let card = smime_proto::CardStatus {
                    reader: self.reader.clone(),
                    version: version.clone(),
                    pin_tries_left: tries,
                    present: present.load(Ordering::SeqCst),
                };
                (pin_state, Some(card))
            }
        };
        let waiting = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .min_by_key(|(at, _)| *at)
            .filter(|(at, _)| at.elapsed() >= WAITING_AFTER)
            .map(|(at, what)| format!("{what} ({} s)", at.elapsed().as_secs()));
        let s = self.state();
        TokenStatus {
            label: self.label.clone(),
            serial: self.serial.clone(),
            module: self.module.clone(),
            logged_in: s.logged_in || !s.login_required,
            pin_state,
            keys: u32::try_from(s.keys.len()).unwrap_or(u32::MAX),
            pin_pad: self.pinpad(),
            waiting,
            card,
        }
    }

    /// Stops the workers (after the jobs already queued) and closes their sessions.
    pub fn shutdown(&self) {
        self.jobs.close();
        for h in self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = h.join();
        }
    }

    /// Path of the module that serves the token.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// Whether `sel` names this token (label or serial).
    pub fn matches(&self, sel: &str) -> bool {
        self.label == sel || self.serial == sel
    }

    /// The key with this id, if enumerated: the entry itself, shared, not a copy (every
    /// request looks its key up, and an entry holds the certificate).
    pub fn key(&self, id: &KeyId) -> Option<Arc<KeyEntry>> {
        self.state().keys.iter().find(|k| &k.info.id == id).cloned()
    }
}

/// A key operation queued on a token's worker (from [`Token::submit_sign`] and friends).
#[derive(Debug)]
pub struct Submitted<U> {
    rx: tokio::sync::oneshot::Receiver<Result<U, AgentError>>,
    /// The PIN of a context-specific login, for the bookkeeping after a failure.
    ctx: Option<(Option<Arc<Pin>>, PinSource)>,
}

impl<U> Submitted<U> {
    /// Waits for the worker; a failure updates `token`'s login state first.
    pub async fn wait(self, token: &Token) -> Result<U, AgentError> {
        let r = self.rx.await.map_err(|_| stopped())?;
        token.settle(r, &self.ctx)
    }
}

fn stopped() -> AgentError {
    AgentError::Internal("token worker stopped".into())
}

/// A job's entry in [`Token::inflight`] while it runs; removed on drop, even if the job
/// panics.
struct Running {
    map: Arc<Mutex<BTreeMap<u64, (Instant, &'static str)>>>,
    id: u64,
}

impl Running {
    fn start(
        map: Arc<Mutex<BTreeMap<u64, (Instant, &'static str)>>>,
        id: u64,
        what: &'static str,
    ) -> Self {
        map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (Instant::now(), what));
        Self { map, id }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// A pinentry CONFIRM dialog, off the tokio threads.
async fn confirm(program: PathBuf, text: String) -> Result<bool, AgentError> {
    tokio::task::spawn_blocking(move || crate::pinentry::confirm(&program, &text))
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))?
        .map_err(|e| AgentError::Internal(e.to_string()))
}

/// Whether a signature algorithm wants an RSA key (`None`: unknown to this agent).
fn sign_rsa(alg: SignAlgorithm) -> Option<bool> {
    (!matches!(alg, SignAlgorithm::Unknown)).then(|| alg.is_rsa())
}

/// Whether a decryption algorithm wants an RSA key (all do; `None`: unknown).
fn decrypt_rsa(alg: DecryptAlgorithm) -> Option<bool> {
    (!matches!(alg, DecryptAlgorithm::Unknown)).then_some(true)
}

fn check_alg(key: &KeyEntry, wants_rsa: bool, unknown: bool) -> Result<(), AgentError> {
    let is_rsa = key.info.algorithm == KeyAlgorithm::Rsa;
    if unknown || is_rsa != wants_rsa {
        return Err(AgentError::UnsupportedAlgorithm(format!(
            "the algorithm does not fit key {} ({:?})",
            key.info.id, key.info.algorithm
        )));
    }
    Ok(())
}
