//! `p11-count`: a PKCS#11 test double that wraps a real module (SoftHSM),
//! counts `C_Login` calls and injects faults SoftHSM cannot produce.
//!
//! The library exports exactly one PKCS#11 entry point, `C_GetFunctionList`.
//! It loads the real module, copies that module's `CK_FUNCTION_LIST` and
//! returns the copy with some functions replaced by wrappers (see
//! [`wrap_list`]); every other function goes straight to the real module.
//! `C_GetInterface`/`C_GetInterfaceList` are deliberately *not* exported, so
//! PKCS#11 3.x callers (cryptoki 0.12) fall back to `C_GetFunctionList` and
//! get the wrapped list.
//!
//! Environment (read once, on the first `C_GetFunctionList` call):
//!
//! * `P11_COUNT_MODULE` – path of the real module
//!   (default `/usr/lib/softhsm/libsofthsm2.so`).
//! * `P11_COUNT_LOG` – if set, every `C_Login` call appends one line
//!   `C_Login user_type=<n> rv=<0x..>` (the rv returned to the caller,
//!   including injected ones) to this file. The file is opened in append mode,
//!   written and closed per call. The PIN is never recorded anywhere.
//! * `P11_COUNT_LOCK_AFTER=N` – simulate a user PIN retry counter. Each
//!   `CKR_PIN_INCORRECT` for a user-PIN login (`CKU_USER`,
//!   `CKU_CONTEXT_SPECIFIC`) increments a counter; once it reaches N, further
//!   user-PIN `C_Login` calls return `CKR_PIN_LOCKED` without reaching the
//!   real module. `C_GetTokenInfo` then reports `CKF_USER_PIN_COUNT_LOW`
//!   (>= 1 wrong), `CKF_USER_PIN_FINAL_TRY` (exactly N-1 wrong) and
//!   `CKF_USER_PIN_LOCKED` (>= N wrong), replacing whatever the real module
//!   reported for those three bits. A successful login resets the counter
//!   unless already locked. `CKU_SO` logins are forwarded and logged but
//!   neither counted nor blocked.
//! * `P11_COUNT_STATE` – optional file holding the wrong-PIN counter (a
//!   decimal number) so that it persists across processes. Without it the
//!   counter lives in a process-global atomic only.
//! * `P11_COUNT_INIT_LOG` – if set, every `C_Initialize` appends one line
//!   `C_Initialize mutex_functions=<0..4> flags=<0x..> rv=<0x..>` to this file:
//!   how many of `CreateMutex`, `DestroyMutex`, `LockMutex`, `UnlockMutex` the
//!   caller supplied (the real module gets them unchanged), its flags, and the
//!   real module's answer.
//! * `P11_COUNT_CONTROL` – optional control file for run-time fault
//!   injection. It is `stat`ed on every intercepted call and re-parsed when
//!   it changed (inode, size, mtime or ctime). Lines are `key=value`, `#`
//!   starts a comment; a missing file means no faults. Knobs:
//!   * `removed=1` – the token is out of the reader: `C_GetSlotList(TRUE)`
//!     lists no slots, `C_GetSlotInfo` clears `CKF_TOKEN_PRESENT`,
//!     `C_GetTokenInfo` returns `CKR_TOKEN_NOT_PRESENT`, and `C_OpenSession`,
//!     `C_Login`, `C_Logout`, `C_GetSessionInfo`, `C_GetAttributeValue`,
//!     `C_FindObjects*`, `C_Sign*`, `C_Decrypt*` and `C_DeriveKey` return
//!     `CKR_DEVICE_REMOVED`. When the file no longer says `removed=1` the
//!     token is "reinserted": the generation counter is bumped, the real
//!     `C_CloseAllSessions` is called for every slot this process opened
//!     sessions on (SoftHSM drops the login with them), and sessions from
//!     before the removal answer `CKR_SESSION_HANDLE_INVALID` forever.
//!   * `delay_ms=N` – sleep N ms before forwarding `C_Sign`, `C_SignFinal`,
//!     `C_Decrypt`, `C_DecryptFinal` (not for length queries) and
//!     `C_DeriveKey`, then re-check the control file (so a removal during the
//!     "touch wait" is seen).
//!   * `always_authenticate=ID_HEX[,ID_HEX...]` – private keys whose `CKA_ID`
//!     is listed report `CKA_ALWAYS_AUTHENTICATE = TRUE`, and after
//!     `C_SignInit`/`C_DecryptInit` with such a key the next sign/decrypt call
//!     returns `CKR_USER_NOT_LOGGED_IN` (and ends the operation) unless a
//!     `C_Login(CKU_CONTEXT_SPECIFIC)` with the right PIN happened in between
//!     on that session. The context-specific login is forwarded first; if the
//!     real module refuses it for lack of a pending re-authentication, the
//!     PIN is compared with the one from the last successful `CKU_USER` login
//!     on that slot, which is kept in memory only and zeroized on logout,
//!     close of the last session, reinsertion and `C_Finalize`. Key agreement,
//!     as OpenSC does it: a context-specific login with no sign/decrypt
//!     operation pending checks the PIN the same way and lets the next
//!     `C_DeriveKey` on that session through; without it `C_DeriveKey` with
//!     such a base key returns `CKR_USER_NOT_LOGGED_IN` (see [`derive_login`]).
//!   * `delay_token=LABEL` – `delay_ms` applies only to sessions on the token
//!     with this label (to hang one token while another one answers).
//!   * `protected_auth_path=1` – `C_GetTokenInfo` reports
//!     `CKF_PROTECTED_AUTHENTICATION_PATH` (a reader with a PIN pad), and a
//!     `CKU_USER` or `CKU_CONTEXT_SPECIFIC` `C_Login` with a NULL PIN goes on with the PIN from
//!     `P11_COUNT_PINPAD_PIN` (what "the user typed on the keypad"; without it
//!     the login fails with `CKR_PIN_INCORRECT`), after `delay_ms` (typing
//!     time; no `delay_token` filter). Logged with a trailing ` pinpad`.
//!   * `fail_login_once=RV_HEX` – the next `C_Login` (of any user type, in
//!     any process) returns that rv without reaching the real module and
//!     without touching the lock counter; the knob is then spent until the
//!     file changes. "Spent" is shared between processes through an empty
//!     marker file `<control>.spent-<stamp>` created next to the control file.
//!
//!   Removal/reinsertion, sessions and PINs are tracked per process: a
//!   process only notices a removal if one of its intercepted calls runs
//!   while the file says `removed=1`.

mod control;

use std::collections::{BTreeSet, HashMap};
use std::ffi::c_void;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use cryptoki_sys::{
    CK_ATTRIBUTE, CK_ATTRIBUTE_PTR, CK_BBOOL, CK_BYTE_PTR, CK_FLAGS, CK_FUNCTION_LIST,
    CK_MECHANISM_PTR, CK_NOTIFY, CK_OBJECT_CLASS, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE_PTR, CK_RV,
    CK_SESSION_HANDLE, CK_SESSION_HANDLE_PTR, CK_SESSION_INFO, CK_SESSION_INFO_PTR, CK_SLOT_ID,
    CK_SLOT_ID_PTR, CK_SLOT_INFO_PTR, CK_TOKEN_INFO_PTR, CK_TRUE, CK_ULONG, CK_ULONG_PTR,
    CK_UNAVAILABLE_INFORMATION, CK_USER_TYPE, CK_UTF8CHAR_PTR, CKA_ALWAYS_AUTHENTICATE, CKA_CLASS,
    CKA_ID, CKF_PROTECTED_AUTHENTICATION_PATH, CKF_TOKEN_PRESENT, CKF_USER_PIN_COUNT_LOW,
    CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED, CKO_PRIVATE_KEY, CKR_ARGUMENTS_BAD,
    CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID, CKR_BUFFER_TOO_SMALL, CKR_DEVICE_REMOVED,
    CKR_FUNCTION_NOT_SUPPORTED, CKR_GENERAL_ERROR, CKR_OK, CKR_OPERATION_NOT_INITIALIZED,
    CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_SESSION_HANDLE_INVALID, CKR_TOKEN_NOT_PRESENT,
    CKR_USER_NOT_LOGGED_IN, CKR_USER_TYPE_INVALID, CKU_CONTEXT_SPECIFIC, CKU_USER,
};

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Everything set up by the first `C_GetFunctionList`; lives for the process lifetime.
struct Module {
    /// Keeps the real module mapped; a `static` is never dropped.
    _lib: libloading::Library,
    /// The real module's function list (copied).
    real: CK_FUNCTION_LIST,
    /// The list handed out to callers (leaked, never written after init).
    wrapped: *mut CK_FUNCTION_LIST,
    log: Option<PathBuf>,
    lock_after: Option<u64>,
    state: Option<PathBuf>,
    control: Option<PathBuf>,
    /// `P11_COUNT_PINPAD_PIN`: the PIN "typed on the keypad".
    pinpad_pin: Option<Vec<u8>>,
}

// SAFETY: `wrapped` points to a leaked, immutable-after-init allocation; all
// other fields are plain data or function pointers.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

static MODULE: OnceLock<Result<Module, String>> = OnceLock::new();

/// Wrong user-PIN results seen so far (mirrors `P11_COUNT_STATE` if set).
static WRONG: AtomicU64 = AtomicU64::new(0);
/// Serialises read-modify-write of the counter (and of the state file).
/// Lock order: `STATE_LOCK` before `FAULTS`, never the other way round.
static STATE_LOCK: Mutex<()> = Mutex::new(());

/// Run-time fault state, guarded by one mutex that is only ever held briefly
/// (never across a sleep; across a real call only for `C_CloseAllSessions`
/// on reinsertion).
static FAULTS: LazyLock<Mutex<Faults>> = LazyLock::new(|| Mutex::new(Faults::default()));

/// Context-specific-login state of one kind of operation on one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Auth {
    /// No operation on an always-authenticate key is pending.
    #[default]
    Idle,
    /// Init done on an always-authenticate key; no context login yet.
    Needed,
    /// Context login done; the operation may run.
    Granted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Sign,
    Decrypt,
}

#[derive(Debug)]
struct Sess {
    slot: CK_SLOT_ID,
    /// Value of `Faults::generation` when the session was opened.
    generation: u64,
    sign: Auth,
    decrypt: Auth,
    /// A context-specific login with no sign/decrypt operation pending (OpenSC's
    /// way for key agreement): `Granted` lets the next `C_DeriveKey` on this
    /// session use an always-authenticate key.
    derive: Auth,
}

impl Sess {
    fn auth(&mut self, op: Op) -> &mut Auth {
        match op {
            Op::Sign => &mut self.sign,
            Op::Decrypt => &mut self.decrypt,
        }
    }
}

/// A user PIN kept in memory for checking context-specific logins; zeroized on drop.
struct Pin(Vec<u8>);

impl Drop for Pin {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, exclusive reference into the vector.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    }
}

impl Pin {
    /// Compares without an early exit.
    fn matches(&self, other: &[u8]) -> bool {
        self.0.len() == other.len()
            && self
                .0
                .iter()
                .zip(other)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[derive(Default)]
struct Faults {
    /// Stamp of the control file the knobs were parsed from (`None`: absent).
    stamp: Option<control::Stamp>,
    knobs: control::Knobs,
    /// `fail_login_once` already fired for this version of the file.
    fail_login_spent: bool,
    /// `removed` as last seen; a 1 -> 0 edge is a reinsertion.
    removed: bool,
    /// Bumped on every reinsertion.
    generation: u64,
    /// Sessions opened through us. Entries of older generations are kept
    /// (until the handle is issued again) so they can be refused.
    sessions: HashMap<CK_SESSION_HANDLE, Sess>,
    /// PIN of the last successful `CKU_USER` login, per slot.
    pins: HashMap<CK_SLOT_ID, Pin>,
}

impl Faults {
    fn is_stale(&self, s: CK_SESSION_HANDLE) -> bool {
        self.sessions
            .get(&s)
            .is_some_and(|x| x.generation < self.generation)
    }

    /// The rv a session-based call must fail with, if any.
    fn check(&self, s: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
        if self.knobs.removed {
            Err(CKR_DEVICE_REMOVED)
        } else if self.is_stale(s) {
            Err(CKR_SESSION_HANDLE_INVALID)
        } else {
            Ok(())
        }
    }

    fn auth(&self, s: CK_SESSION_HANDLE, op: Op) -> Auth {
        self.sessions.get(&s).map_or(Auth::Idle, |x| match op {
            Op::Sign => x.sign,
            Op::Decrypt => x.decrypt,
        })
    }

    fn set_auth(&mut self, s: CK_SESSION_HANDLE, op: Op, a: Auth) {
        if let Some(x) = self.sessions.get_mut(&s) {
            *x.auth(op) = a;
        }
    }

    /// Forgets the PIN of `slot` and any context logins of its sessions
    /// (the user is logged out of that slot).
    fn logged_out(&mut self, slot: CK_SLOT_ID) {
        self.pins.remove(&slot);
        for x in self.sessions.values_mut().filter(|x| x.slot == slot) {
            x.sign = Auth::Idle;
            x.decrypt = Auth::Idle;
            x.derive = Auth::Idle;
        }
    }
}

fn load() -> Result<Module, String> {
    let path = std::env::var_os("P11_COUNT_MODULE").unwrap_or_else(|| DEFAULT_MODULE.into());
    // SAFETY: loading a PKCS#11 module runs its initialisers; that is the point.
    let lib = unsafe { libloading::Library::new(&path) }
        .map_err(|e| format!("cannot load {}: {e}", path.to_string_lossy()))?;
    let real = unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList\0")
                .map_err(|e| format!("C_GetFunctionList missing: {e}"))?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        let rv = get(&mut list);
        if rv != CKR_OK || list.is_null() {
            return Err(format!("real C_GetFunctionList failed: rv={rv:#x}"));
        }
        *list
    };
    let wrapped: *mut CK_FUNCTION_LIST = Box::leak(Box::new(wrap_list(&real)));

    let lock_after = match std::env::var("P11_COUNT_LOCK_AFTER") {
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                eprintln!("p11-count: ignoring invalid P11_COUNT_LOCK_AFTER={s:?}");
                None
            }
        },
        Err(_) => None,
    };
    Ok(Module {
        _lib: lib,
        real,
        wrapped,
        log: std::env::var_os("P11_COUNT_LOG").map(PathBuf::from),
        lock_after,
        state: std::env::var_os("P11_COUNT_STATE").map(PathBuf::from),
        control: std::env::var_os("P11_COUNT_CONTROL").map(PathBuf::from),
        pinpad_pin: std::env::var("P11_COUNT_PINPAD_PIN")
            .ok()
            .map(String::into_bytes),
    })
}

/// The list handed out: a copy of `real` with the intercepted functions
/// replaced (only where the real module implements them).
fn wrap_list(real: &CK_FUNCTION_LIST) -> CK_FUNCTION_LIST {
    let mut c = *real;
    c.C_GetFunctionList = Some(C_GetFunctionList);
    macro_rules! wrap {
        ($($f:ident => $w:ident),* $(,)?) => {
            $( c.$f = real.$f.map(|_| $w as _); )*
        };
    }
    wrap! {
        C_Initialize => wrap_initialize,
        C_Finalize => wrap_finalize,
        C_GetSlotList => wrap_get_slot_list,
        C_GetSlotInfo => wrap_get_slot_info,
        C_GetTokenInfo => wrap_get_token_info,
        C_OpenSession => wrap_open_session,
        C_CloseSession => wrap_close_session,
        C_CloseAllSessions => wrap_close_all_sessions,
        C_GetSessionInfo => wrap_get_session_info,
        C_Login => wrap_login,
        C_Logout => wrap_logout,
        C_GetAttributeValue => wrap_get_attribute_value,
        C_FindObjectsInit => wrap_find_objects_init,
        C_FindObjects => wrap_find_objects,
        C_FindObjectsFinal => wrap_find_objects_final,
        C_SignInit => wrap_sign_init,
        C_Sign => wrap_sign,
        C_SignUpdate => wrap_sign_update,
        C_SignFinal => wrap_sign_final,
        C_DecryptInit => wrap_decrypt_init,
        C_Decrypt => wrap_decrypt,
        C_DecryptUpdate => wrap_decrypt_update,
        C_DecryptFinal => wrap_decrypt_final,
        C_DeriveKey => wrap_derive_key,
    }
    c
}

fn module() -> Option<&'static Module> {
    MODULE.get().and_then(|m| m.as_ref().ok())
}

/// `module()` plus the real implementation of one function, or the rv to return.
macro_rules! setup {
    ($f:ident) => {{
        let Some(m) = module() else {
            return CKR_GENERAL_ERROR;
        };
        let Some(real) = m.real.$f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        (m, real)
    }};
}

/// Returns the error of a `Result<_, CK_RV>` from the enclosing wrapper.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(rv) => return rv,
        }
    };
}

impl Module {
    /// Runs `f` on the current wrong-PIN count (refreshed from the state file
    /// if any); if it returns `Some(new)`, stores (and persists) `new`.
    fn with_counter<T>(&self, f: impl FnOnce(u64) -> (T, Option<u64>)) -> T {
        // Held across `f` (which may call the real C_Login) so that concurrent
        // logins in one process see a consistent count.
        let _g = STATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let cur = match &self.state {
            Some(state) => std::fs::read_to_string(state)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0),
            None => WRONG.load(Ordering::SeqCst),
        };
        let (out, new) = f(cur);
        let new = new.unwrap_or(cur);
        WRONG.store(new, Ordering::SeqCst);
        if let Some(state) = &self.state
            && new != cur
            && let Err(e) = std::fs::write(state, format!("{new}\n"))
        {
            eprintln!("p11-count: cannot write {}: {e}", state.display());
        }
        out
    }

    fn wrong_count(&self) -> u64 {
        self.with_counter(|c| (c, None))
    }

    fn log_login(&self, user_type: CK_USER_TYPE, rv: CK_RV) {
        self.log_login_note(user_type, rv, "");
    }

    fn log_login_note(&self, user_type: CK_USER_TYPE, rv: CK_RV, note: &str) {
        let Some(path) = &self.log else { return };
        append_line(
            path,
            &format!("C_Login user_type={user_type} rv={rv:#x}{note}"),
        );
    }

    /// Locks the fault state after bringing it up to date with the control
    /// file (and performing a reinsertion if `removed` went from 1 to 0).
    fn faults(&self) -> MutexGuard<'static, Faults> {
        let mut f = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.control {
            let st = control::stamp(path);
            if st != f.stamp {
                f.stamp = st;
                f.knobs = if st.is_some() {
                    control::load(path)
                } else {
                    control::Knobs::default()
                };
                f.fail_login_spent = false;
            }
        }
        let now = f.knobs.removed;
        if f.removed && !now {
            self.reinsert(&mut f);
        }
        f.removed = now;
        f
    }

    /// The token came back: old sessions and the login are gone.
    fn reinsert(&self, f: &mut Faults) {
        f.generation += 1;
        let generation = f.generation;
        let slots: BTreeSet<CK_SLOT_ID> = f
            .sessions
            .values()
            .filter(|x| x.generation < generation)
            .map(|x| x.slot)
            .collect();
        for &slot in &slots {
            f.logged_out(slot);
        }
        f.pins.clear();
        if let Some(close) = self.real.C_CloseAllSessions {
            for slot in slots {
                // SAFETY: plain value argument. SoftHSM closes the sessions
                // and, with the last one, logs the user out.
                let rv = unsafe { close(slot) };
                if rv != CKR_OK {
                    eprintln!("p11-count: reinsertion: C_CloseAllSessions({slot}) = {rv:#x}");
                }
            }
        }
    }

    /// Sleeps for `delay_ms` (if any), then re-checks `s` (the token may
    /// have been removed meanwhile).
    fn delay(&self, s: CK_SESSION_HANDLE, delay_ms: u64) -> Result<(), CK_RV> {
        if delay_ms == 0 {
            return Ok(());
        }
        let only = self.faults().knobs.delay_token.clone();
        if let Some(label) = only
            && self.token_label(s).as_deref() != Some(label.as_str())
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        self.faults().check(s)
    }

    /// The label of the token `s` is a session on, from the real module.
    fn token_label(&self, s: CK_SESSION_HANDLE) -> Option<String> {
        let slot = self.slot_of(s)?;
        let get = self.real.C_GetTokenInfo?;
        // SAFETY: CK_TOKEN_INFO is plain C data; all zeroes is a valid value.
        let mut info: cryptoki_sys::CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-parameter.
        if unsafe { get(slot, &mut info) } != CKR_OK {
            return None;
        }
        Some(String::from_utf8_lossy(&info.label).trim().to_owned())
    }

    fn slot_of(&self, s: CK_SESSION_HANDLE) -> Option<CK_SLOT_ID> {
        if let Some(x) = self.faults().sessions.get(&s) {
            return Some(x.slot);
        }
        let get = self.real.C_GetSessionInfo?;
        let mut info = CK_SESSION_INFO {
            slotID: 0,
            state: 0,
            flags: 0,
            ulDeviceError: 0,
        };
        // SAFETY: `info` is a valid out-parameter.
        (unsafe { get(s, &mut info) } == CKR_OK).then_some(info.slotID)
    }

    /// Whether `obj` is a private key whose CKA_ID is in `ids`. Asks the real
    /// module directly (not through our wrappers).
    fn key_listed(&self, s: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, ids: &[Vec<u8>]) -> bool {
        if ids.is_empty() {
            return false;
        }
        let Some(get) = self.real.C_GetAttributeValue else {
            return false;
        };
        let mut class: CK_OBJECT_CLASS = 0;
        let mut t = [
            CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: (&raw mut class).cast::<c_void>(),
                ulValueLen: size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_ID,
                pValue: std::ptr::null_mut(),
                ulValueLen: 0,
            },
        ];
        // SAFETY: the template points at live locals of the right sizes.
        if unsafe { get(s, obj, t.as_mut_ptr(), 2) } != CKR_OK || class != CKO_PRIVATE_KEY {
            return false;
        }
        let n = t[1].ulValueLen;
        if n == CK_UNAVAILABLE_INFORMATION || n > 1024 {
            return false;
        }
        let mut id = vec![0u8; n as usize];
        let mut a = CK_ATTRIBUTE {
            type_: CKA_ID,
            pValue: id.as_mut_ptr().cast::<c_void>(),
            ulValueLen: n,
        };
        // SAFETY: `a` points at a buffer of `n` bytes.
        if unsafe { get(s, obj, &mut a, 1) } != CKR_OK {
            return false;
        }
        id.truncate(a.ulValueLen as usize);
        ids.contains(&id)
    }

    /// Ends the operation `op` that is active on `s` in the real module (the
    /// caller's sign/decrypt call "failed"). PKCS#11 2.40 has no cancel, so
    /// this completes it into a scratch buffer that is then wiped; any result
    /// other than a length answer terminates the operation.
    fn abort_op(&self, s: CK_SESSION_HANDLE, op: Op, data: CK_BYTE_PTR, len: CK_ULONG) {
        let real = match op {
            Op::Sign => self.real.C_Sign,
            Op::Decrypt => self.real.C_Decrypt,
        };
        let Some(real) = real else { return };
        let mut dummy = [0u8; 1];
        let (data, len) = if data.is_null() {
            (dummy.as_mut_ptr(), 1)
        } else {
            (data, len)
        };
        let mut buf = Pin(vec![0u8; 1024]);
        for _ in 0..2 {
            let mut n = buf.0.len() as CK_ULONG;
            // SAFETY: `data` is the caller's buffer (or ours); `buf` holds `n` bytes.
            let rv = unsafe { real(s, data, len, buf.0.as_mut_ptr(), &mut n) };
            if rv != CKR_BUFFER_TOO_SMALL {
                return;
            }
            buf = Pin(vec![0u8; n as usize]);
        }
    }
}

/// The only exported PKCS#11 symbol.
///
/// # Safety
/// `pp_function_list` must be null or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(pp_function_list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if pp_function_list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    match MODULE.get_or_init(load) {
        Ok(m) => {
            // SAFETY: checked non-null above; caller guarantees writability.
            unsafe { *pp_function_list = m.wrapped };
            CKR_OK
        }
        Err(e) => {
            eprintln!("p11-count: {e}");
            CKR_GENERAL_ERROR
        }
    }
}

fn is_user_pin(user_type: CK_USER_TYPE) -> bool {
    user_type == CKU_USER || user_type == CKU_CONTEXT_SPECIFIC
}

/// Whether a sign/decrypt call with result `rv` ended the operation
/// (everything except a successful length query and `CKR_BUFFER_TOO_SMALL`).
fn op_ended(rv: CK_RV, out: CK_BYTE_PTR) -> bool {
    !(rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && out.is_null()))
}

/// # Safety
/// `p` must be null or valid for reading `len` bytes.
unsafe fn bytes<'a>(p: CK_UTF8CHAR_PTR, len: CK_ULONG) -> &'a [u8] {
    if p.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: per the function contract.
        unsafe { std::slice::from_raw_parts(p, len as usize) }
    }
}

// ---------------------------------------------------------------------------
// General, slot and token functions
// ---------------------------------------------------------------------------

unsafe extern "C" fn wrap_initialize(args: *mut c_void) -> CK_RV {
    let (_, real) = setup!(C_Initialize);
    // SAFETY: a non-null `args` points at the caller's CK_C_INITIALIZE_ARGS.
    let seen = unsafe { args.cast::<cryptoki_sys::CK_C_INITIALIZE_ARGS>().as_ref() }.map(|a| {
        let given = [
            a.CreateMutex.is_some(),
            a.DestroyMutex.is_some(),
            a.LockMutex.is_some(),
            a.UnlockMutex.is_some(),
        ];
        (given.iter().filter(|&&g| g).count(), a.flags)
    });
    // SAFETY: passed through unchanged.
    let rv = unsafe { real(args) };
    if let Some(path) = std::env::var_os("P11_COUNT_INIT_LOG") {
        let (n, flags) = seen.unwrap_or((0, 0));
        append_line(
            Path::new(&path),
            &format!("C_Initialize mutex_functions={n} flags={flags:#x} rv={rv:#x}"),
        );
    }
    rv
}

/// Appends `line` and a newline to the log at `path`. One write per line on an O_APPEND
/// fd: lines from concurrent threads or processes do not interleave.
fn append_line(path: &Path, line: &str) {
    let res = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = res {
        eprintln!("p11-count: cannot append to {}: {e}", path.display());
    }
}

unsafe extern "C" fn wrap_finalize(reserved: *mut c_void) -> CK_RV {
    let (m, real) = setup!(C_Finalize);
    // SAFETY: passed through unchanged.
    let rv = unsafe { real(reserved) };
    if rv == CKR_OK {
        let mut f = m.faults();
        // Handles die with the library; the PINs are wiped on drop.
        f.sessions.clear();
        f.pins.clear();
    }
    rv
}

unsafe extern "C" fn wrap_get_slot_list(
    token_present: CK_BBOOL,
    list: CK_SLOT_ID_PTR,
    count: CK_ULONG_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_GetSlotList);
    if token_present != 0 && m.faults().knobs.removed {
        if count.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        // Ask for the count only, to keep the real module's errors (e.g.
        // CKR_CRYPTOKI_NOT_INITIALIZED).
        let mut n: CK_ULONG = 0;
        // SAFETY: valid out-parameter; null list means "count only".
        let rv = unsafe { real(token_present, std::ptr::null_mut(), &mut n) };
        if rv != CKR_OK {
            return rv;
        }
        // SAFETY: checked non-null; caller guarantees writability.
        unsafe { *count = 0 };
        return CKR_OK;
    }
    // SAFETY: passed through unchanged.
    unsafe { real(token_present, list, count) }
}

unsafe extern "C" fn wrap_get_slot_info(slot: CK_SLOT_ID, info: CK_SLOT_INFO_PTR) -> CK_RV {
    let (m, real) = setup!(C_GetSlotInfo);
    // SAFETY: passed through unchanged.
    let rv = unsafe { real(slot, info) };
    if rv == CKR_OK && !info.is_null() && m.faults().knobs.removed {
        // SAFETY: the real module just filled `*info`.
        unsafe { (*info).flags &= !CKF_TOKEN_PRESENT };
    }
    rv
}

unsafe extern "C" fn wrap_get_token_info(slot: CK_SLOT_ID, info: CK_TOKEN_INFO_PTR) -> CK_RV {
    let (m, real) = setup!(C_GetTokenInfo);
    let pinpad = {
        let f = m.faults();
        if f.knobs.removed {
            return CKR_TOKEN_NOT_PRESENT;
        }
        f.knobs.protected_auth_path
    };
    // SAFETY: arguments are passed through unchanged from our caller.
    let rv = unsafe { real(slot, info) };
    if rv != CKR_OK || info.is_null() {
        return rv;
    }
    if pinpad {
        // SAFETY: the real module just filled `*info` successfully.
        unsafe { (*info).flags |= CKF_PROTECTED_AUTHENTICATION_PATH };
    }
    if let Some(n) = m.lock_after {
        let wrong = m.wrong_count();
        let mut extra = 0;
        if wrong >= 1 {
            extra |= CKF_USER_PIN_COUNT_LOW;
        }
        if wrong >= n {
            extra |= CKF_USER_PIN_LOCKED;
        } else if wrong + 1 == n {
            extra |= CKF_USER_PIN_FINAL_TRY;
        }
        // The simulated counter is authoritative for these bits (SoftHSM
        // keeps its own persistent COUNT_LOW, which would make tests flaky).
        let mask = CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED;
        // SAFETY: the real module just filled `*info` successfully.
        unsafe { (*info).flags = ((*info).flags & !mask) | extra };
    }
    rv
}

// ---------------------------------------------------------------------------
// Sessions and login
// ---------------------------------------------------------------------------

unsafe extern "C" fn wrap_open_session(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    app: *mut c_void,
    notify: CK_NOTIFY,
    out: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_OpenSession);
    if m.faults().knobs.removed {
        return CKR_DEVICE_REMOVED;
    }
    // SAFETY: passed through unchanged.
    let rv = unsafe { real(slot, flags, app, notify, out) };
    if rv == CKR_OK && !out.is_null() {
        let mut f = m.faults();
        let generation = f.generation;
        // SAFETY: the real module just wrote the handle.
        let h = unsafe { *out };
        f.sessions.insert(
            h,
            Sess {
                slot,
                generation,
                sign: Auth::Idle,
                decrypt: Auth::Idle,
                derive: Auth::Idle,
            },
        );
    }
    rv
}

unsafe extern "C" fn wrap_close_session(s: CK_SESSION_HANDLE) -> CK_RV {
    let (m, real) = setup!(C_CloseSession);
    // A handle from before a reinsertion is never forwarded: the real module
    // might have issued the same number again.
    if m.faults().is_stale(s) {
        return CKR_SESSION_HANDLE_INVALID;
    }
    // SAFETY: passed through unchanged.
    let rv = unsafe { real(s) };
    if rv == CKR_OK {
        let mut f = m.faults();
        if let Some(x) = f.sessions.remove(&s) {
            let generation = f.generation;
            let last = !f
                .sessions
                .values()
                .any(|y| y.slot == x.slot && y.generation == generation);
            if last {
                // Closing the last session logs the user out.
                f.logged_out(x.slot);
            }
        }
    }
    rv
}

unsafe extern "C" fn wrap_close_all_sessions(slot: CK_SLOT_ID) -> CK_RV {
    let (m, real) = setup!(C_CloseAllSessions);
    drop(m.faults()); // refresh from the control file
    // SAFETY: plain value argument.
    let rv = unsafe { real(slot) };
    if rv == CKR_OK {
        let mut f = m.faults();
        let generation = f.generation;
        f.sessions
            .retain(|_, x| x.slot != slot || x.generation < generation);
        f.logged_out(slot);
    }
    rv
}

unsafe extern "C" fn wrap_get_session_info(
    s: CK_SESSION_HANDLE,
    info: CK_SESSION_INFO_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_GetSessionInfo);
    tri!(m.faults().check(s));
    // SAFETY: passed through unchanged.
    unsafe { real(s, info) }
}

unsafe extern "C" fn wrap_login(
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    pin: CK_UTF8CHAR_PTR,
    pin_len: CK_ULONG,
) -> CK_RV {
    let (m, real_login) = setup!(C_Login);

    // A PIN pad: no PIN from the caller; "the user types" P11_COUNT_PINPAD_PIN.
    let (pin, pin_len, note) = if pin.is_null() && is_user_pin(user_type) && {
        let f = m.faults();
        f.knobs.protected_auth_path
    } {
        let delay_ms = m.faults().knobs.delay_ms;
        std::thread::sleep(Duration::from_millis(delay_ms));
        match &m.pinpad_pin {
            Some(p) => (p.as_ptr().cast_mut(), p.len() as CK_ULONG, " pinpad"),
            None => {
                m.log_login_note(user_type, CKR_PIN_INCORRECT, " pinpad");
                return CKR_PIN_INCORRECT;
            }
        }
    } else {
        (pin, pin_len, "")
    };

    let injected = {
        let mut f = m.faults();
        match f.check(session) {
            Err(rv) => Some(rv),
            Ok(()) => match (f.knobs.fail_login_once, &m.control, f.stamp) {
                (Some(rv), Some(path), Some(stamp)) if !f.fail_login_spent => {
                    f.fail_login_spent = true;
                    control::claim_once(path, &stamp).then_some(rv)
                }
                _ => None,
            },
        }
    };
    if let Some(rv) = injected {
        m.log_login(user_type, rv);
        return rv;
    }

    let do_login = || {
        // SAFETY: arguments are passed through unchanged from our caller.
        let rv = unsafe { real_login(session, user_type, pin, pin_len) };
        if user_type == CKU_USER && rv == CKR_OK {
            if let Some(slot) = m.slot_of(session) {
                // SAFETY: the caller passes `pin_len` readable bytes at `pin`.
                let p = Pin(unsafe { bytes(pin, pin_len) }.to_vec());
                m.faults().pins.insert(slot, p);
            }
        } else if user_type == CKU_CONTEXT_SPECIFIC {
            // SAFETY: as above.
            return context_login(m, session, rv, unsafe { bytes(pin, pin_len) });
        }
        rv
    };

    let rv = match m.lock_after {
        Some(n) if is_user_pin(user_type) => m.with_counter(|wrong| {
            if wrong >= n {
                return (CKR_PIN_LOCKED, None);
            }
            let rv = do_login();
            let new = match rv {
                CKR_PIN_INCORRECT => Some(wrong + 1),
                CKR_OK if wrong != 0 => Some(0),
                _ => None,
            };
            (rv, new)
        }),
        _ => do_login(),
    };
    m.log_login_note(user_type, rv, note);
    rv
}

/// Finishes a `CKU_CONTEXT_SPECIFIC` login whose forwarded attempt returned
/// `real_rv`: grants our simulated always-authenticate operation on success,
/// or checks the PIN ourselves if the real module had no re-authentication
/// pending.
fn context_login(m: &Module, s: CK_SESSION_HANDLE, real_rv: CK_RV, pin: &[u8]) -> CK_RV {
    let mut f = m.faults();
    let Some(x) = f.sessions.get(&s) else {
        return real_rv;
    };
    let (slot, pending) = (x.slot, x.sign != Auth::Idle || x.decrypt != Auth::Idle);
    if !pending {
        return derive_login(&mut f, s, slot, real_rv, pin);
    }
    let rv = match real_rv {
        CKR_OK => CKR_OK,
        // "Nothing to re-authenticate" / "no such user type": the real module
        // does not know about our simulated key, so judge the PIN here.
        CKR_OPERATION_NOT_INITIALIZED | CKR_USER_TYPE_INVALID | CKR_FUNCTION_NOT_SUPPORTED => {
            match f.pins.get(&slot) {
                None => CKR_USER_NOT_LOGGED_IN,
                Some(p) if p.matches(pin) => CKR_OK,
                Some(_) => CKR_PIN_INCORRECT,
            }
        }
        other => other,
    };
    if rv == CKR_OK
        && let Some(x) = f.sessions.get_mut(&s)
    {
        for a in [&mut x.sign, &mut x.decrypt] {
            if *a != Auth::Idle {
                *a = Auth::Granted;
            }
        }
    }
    rv
}

/// A `CKU_CONTEXT_SPECIFIC` login with no sign/decrypt operation pending. With
/// `always_authenticate` in force this does what OpenSC does (its `C_Login`
/// only wants the user logged in, then verifies the PIN on the card, which
/// lets the next private-key operation through): no user login on record gives
/// `CKR_OPERATION_NOT_INITIALIZED`, a wrong PIN `CKR_PIN_INCORRECT`, the right
/// one `CKR_OK` and a grant for the next `C_DeriveKey` on this session.
/// Otherwise the real module's answer stands.
fn derive_login(
    f: &mut Faults,
    s: CK_SESSION_HANDLE,
    slot: CK_SLOT_ID,
    real_rv: CK_RV,
    pin: &[u8],
) -> CK_RV {
    let refused = matches!(
        real_rv,
        CKR_OPERATION_NOT_INITIALIZED | CKR_USER_TYPE_INVALID | CKR_FUNCTION_NOT_SUPPORTED
    );
    if f.knobs.always_authenticate.is_empty() || !refused {
        return real_rv;
    }
    let rv = match f.pins.get(&slot) {
        None => CKR_OPERATION_NOT_INITIALIZED,
        Some(p) if p.matches(pin) => CKR_OK,
        Some(_) => CKR_PIN_INCORRECT,
    };
    if rv == CKR_OK
        && let Some(x) = f.sessions.get_mut(&s)
    {
        x.derive = Auth::Granted;
    }
    rv
}

unsafe extern "C" fn wrap_logout(s: CK_SESSION_HANDLE) -> CK_RV {
    let (m, real) = setup!(C_Logout);
    tri!(m.faults().check(s));
    // SAFETY: passed through unchanged.
    let rv = unsafe { real(s) };
    if let Some(slot) = m.slot_of(s) {
        m.faults().logged_out(slot);
    }
    rv
}

// ---------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------

unsafe extern "C" fn wrap_get_attribute_value(
    s: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    let (m, real) = setup!(C_GetAttributeValue);
    let ids = {
        let f = m.faults();
        tri!(f.check(s));
        f.knobs.always_authenticate.clone()
    };
    // SAFETY: passed through unchanged.
    let mut rv = unsafe { real(s, obj, template, count) };
    if ids.is_empty() || template.is_null() || count == 0 {
        return rv;
    }
    if !matches!(
        rv,
        CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID | CKR_BUFFER_TOO_SMALL
    ) {
        return rv;
    }
    // SAFETY: the caller passes `count` attributes at `template`.
    let attrs = unsafe { std::slice::from_raw_parts_mut(template, count as usize) };
    if !attrs.iter().any(|a| a.type_ == CKA_ALWAYS_AUTHENTICATE) || !m.key_listed(s, obj, &ids) {
        return rv;
    }
    for a in attrs
        .iter_mut()
        .filter(|a| a.type_ == CKA_ALWAYS_AUTHENTICATE)
    {
        if a.pValue.is_null() {
            a.ulValueLen = 1;
        } else if a.ulValueLen >= 1 {
            // SAFETY: the caller provides `ulValueLen` (>= 1) bytes.
            unsafe { *a.pValue.cast::<CK_BBOOL>() = CK_TRUE };
            a.ulValueLen = 1;
        } else {
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
        }
    }
    if rv == CKR_ATTRIBUTE_TYPE_INVALID
        && attrs
            .iter()
            .all(|a| a.ulValueLen != CK_UNAVAILABLE_INFORMATION)
    {
        rv = CKR_OK;
    }
    rv
}

unsafe extern "C" fn wrap_find_objects_init(
    s: CK_SESSION_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    let (m, real) = setup!(C_FindObjectsInit);
    tri!(m.faults().check(s));
    // SAFETY: passed through unchanged.
    unsafe { real(s, template, count) }
}

unsafe extern "C" fn wrap_find_objects(
    s: CK_SESSION_HANDLE,
    out: CK_OBJECT_HANDLE_PTR,
    max: CK_ULONG,
    count: CK_ULONG_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_FindObjects);
    tri!(m.faults().check(s));
    // SAFETY: passed through unchanged.
    unsafe { real(s, out, max, count) }
}

unsafe extern "C" fn wrap_find_objects_final(s: CK_SESSION_HANDLE) -> CK_RV {
    let (m, real) = setup!(C_FindObjectsFinal);
    tri!(m.faults().check(s));
    // SAFETY: passed through unchanged.
    unsafe { real(s) }
}

// ---------------------------------------------------------------------------
// Sign and decrypt
// ---------------------------------------------------------------------------

/// Common part of C_SignInit / C_DecryptInit: forward, then note whether the
/// key needs a context-specific login.
fn op_init(
    m: &Module,
    op: Op,
    s: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    forward: impl FnOnce() -> CK_RV,
) -> CK_RV {
    let ids = {
        let f = m.faults();
        tri!(f.check(s));
        f.knobs.always_authenticate.clone()
    };
    let rv = forward();
    let auth = if rv == CKR_OK && m.key_listed(s, key, &ids) {
        Auth::Needed
    } else {
        Auth::Idle
    };
    m.faults().set_auth(s, op, auth);
    rv
}

/// Common part of the calls that do or continue the work
/// (C_Sign, C_SignUpdate, C_SignFinal and the decrypt equivalents).
///
/// `input` is the caller's data (for aborting the real operation), `out` the
/// caller's output buffer (null for a length query, or for *Update calls
/// that produce no output), `delays` whether `delay_ms` applies, `update`
/// whether this is an *Update call (which never ends the operation on
/// success).
#[allow(clippy::too_many_arguments)]
fn op_step(
    m: &Module,
    op: Op,
    s: CK_SESSION_HANDLE,
    input: (CK_BYTE_PTR, CK_ULONG),
    out: CK_BYTE_PTR,
    delays: bool,
    update: bool,
    forward: impl FnOnce() -> CK_RV,
) -> CK_RV {
    let (auth, delay_ms) = {
        let f = m.faults();
        tri!(f.check(s));
        (f.auth(s, op), f.knobs.delay_ms)
    };
    if auth == Auth::Needed {
        m.abort_op(s, op, input.0, input.1);
        m.faults().set_auth(s, op, Auth::Idle);
        return CKR_USER_NOT_LOGGED_IN;
    }
    if delays && !out.is_null() {
        tri!(m.delay(s, delay_ms));
    }
    let rv = forward();
    let ended = if update {
        rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL
    } else {
        op_ended(rv, out)
    };
    if auth == Auth::Granted && ended {
        m.faults().set_auth(s, op, Auth::Idle);
    }
    rv
}

unsafe extern "C" fn wrap_sign_init(
    s: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let (m, real) = setup!(C_SignInit);
    // SAFETY: passed through unchanged.
    op_init(m, Op::Sign, s, key, || unsafe { real(s, mech, key) })
}

unsafe extern "C" fn wrap_sign(
    s: CK_SESSION_HANDLE,
    data: CK_BYTE_PTR,
    len: CK_ULONG,
    sig: CK_BYTE_PTR,
    sig_len: CK_ULONG_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_Sign);
    op_step(m, Op::Sign, s, (data, len), sig, true, false, || {
        // SAFETY: passed through unchanged.
        unsafe { real(s, data, len, sig, sig_len) }
    })
}

unsafe extern "C" fn wrap_sign_update(
    s: CK_SESSION_HANDLE,
    part: CK_BYTE_PTR,
    len: CK_ULONG,
) -> CK_RV {
    let (m, real) = setup!(C_SignUpdate);
    op_step(
        m,
        Op::Sign,
        s,
        (part, len),
        std::ptr::null_mut(),
        false,
        true,
        || {
            // SAFETY: passed through unchanged.
            unsafe { real(s, part, len) }
        },
    )
}

unsafe extern "C" fn wrap_sign_final(
    s: CK_SESSION_HANDLE,
    sig: CK_BYTE_PTR,
    sig_len: CK_ULONG_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_SignFinal);
    let none = (std::ptr::null_mut(), 0);
    op_step(m, Op::Sign, s, none, sig, true, false, || {
        // SAFETY: passed through unchanged.
        unsafe { real(s, sig, sig_len) }
    })
}

unsafe extern "C" fn wrap_decrypt_init(
    s: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let (m, real) = setup!(C_DecryptInit);
    // SAFETY: passed through unchanged.
    op_init(m, Op::Decrypt, s, key, || unsafe { real(s, mech, key) })
}

unsafe extern "C" fn wrap_decrypt(
    s: CK_SESSION_HANDLE,
    ct: CK_BYTE_PTR,
    ct_len: CK_ULONG,
    pt: CK_BYTE_PTR,
    pt_len: CK_ULONG_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_Decrypt);
    op_step(m, Op::Decrypt, s, (ct, ct_len), pt, true, false, || {
        // SAFETY: passed through unchanged.
        unsafe { real(s, ct, ct_len, pt, pt_len) }
    })
}

unsafe extern "C" fn wrap_decrypt_update(
    s: CK_SESSION_HANDLE,
    ct: CK_BYTE_PTR,
    ct_len: CK_ULONG,
    pt: CK_BYTE_PTR,
    pt_len: CK_ULONG_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_DecryptUpdate);
    op_step(m, Op::Decrypt, s, (ct, ct_len), pt, false, true, || {
        // SAFETY: passed through unchanged.
        unsafe { real(s, ct, ct_len, pt, pt_len) }
    })
}

unsafe extern "C" fn wrap_decrypt_final(
    s: CK_SESSION_HANDLE,
    pt: CK_BYTE_PTR,
    pt_len: CK_ULONG_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_DecryptFinal);
    let none = (std::ptr::null_mut(), 0);
    op_step(m, Op::Decrypt, s, none, pt, true, false, || {
        // SAFETY: passed through unchanged.
        unsafe { real(s, pt, pt_len) }
    })
}

unsafe extern "C" fn wrap_derive_key(
    s: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    base: CK_OBJECT_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    out: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    let (m, real) = setup!(C_DeriveKey);
    let (ids, delay_ms) = {
        let f = m.faults();
        tri!(f.check(s));
        (f.knobs.always_authenticate.clone(), f.knobs.delay_ms)
    };
    // The grant of a context login is spent by the next derivation, whatever
    // its key or outcome (a card forgets the PIN after one operation).
    let granted = {
        let mut f = m.faults();
        f.sessions
            .get_mut(&s)
            .map(|x| std::mem::take(&mut x.derive))
            == Some(Auth::Granted)
    };
    if !granted && m.key_listed(s, base, &ids) {
        // What OpenSC answers when the card says "security status not satisfied".
        return CKR_USER_NOT_LOGGED_IN;
    }
    tri!(m.delay(s, delay_ms));
    // SAFETY: passed through unchanged.
    unsafe { real(s, mech, base, template, count, out) }
}
