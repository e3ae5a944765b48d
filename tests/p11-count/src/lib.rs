//! `p11-count`: a PKCS#11 test double that wraps a real module (SoftHSM).
//!
//! The library exports exactly one PKCS#11 entry point, `C_GetFunctionList`.
//! It loads the real module, copies that module's `CK_FUNCTION_LIST` and
//! returns the copy with `C_Login` and `C_GetTokenInfo` (and
//! `C_GetFunctionList`) replaced by wrappers; every other function goes
//! straight to the real module. `C_GetInterface`/`C_GetInterfaceList` are
//! deliberately *not* exported, so PKCS#11 3.x callers (cryptoki 0.12) fall
//! back to `C_GetFunctionList` and get the wrapped list.
//!
//! Environment (read once, on the first `C_GetFunctionList` call):
//!
//! * `P11_COUNT_MODULE` – path of the real module
//!   (default `/usr/lib/softhsm/libsofthsm2.so`).
//! * `P11_COUNT_LOG` – if set, every `C_Login` call appends one line
//!   `C_Login user_type=<n> rv=<0x..>` (the rv returned to the caller) to this
//!   file. The file is opened in append mode, written and closed per call. The
//!   PIN is never recorded anywhere.
//! * `P11_COUNT_LOCK_AFTER=N` – fault injection: simulate a user PIN retry
//!   counter. Each `CKR_PIN_INCORRECT` from the real module for a user-PIN
//!   login (`CKU_USER`, `CKU_CONTEXT_SPECIFIC`) increments a counter; once it
//!   reaches N, further user-PIN `C_Login` calls return `CKR_PIN_LOCKED`
//!   without reaching the real module. `C_GetTokenInfo` then reports
//!   `CKF_USER_PIN_COUNT_LOW` (>= 1 wrong), `CKF_USER_PIN_FINAL_TRY`
//!   (exactly N-1 wrong) and `CKF_USER_PIN_LOCKED` (>= N wrong), replacing
//!   whatever the real module reported for those three bits. A successful
//!   login resets the counter unless already locked. `CKU_SO` logins are
//!   forwarded and logged but neither counted nor blocked.
//! * `P11_COUNT_STATE` – optional file holding the wrong-PIN counter (a
//!   decimal number) so that it persists across processes. Without it the
//!   counter lives in a process-global atomic only.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use cryptoki_sys::{
    CK_FUNCTION_LIST, CK_RV, CK_SESSION_HANDLE, CK_SLOT_ID, CK_TOKEN_INFO_PTR, CK_ULONG,
    CK_USER_TYPE, CK_UTF8CHAR_PTR, CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY,
    CKF_USER_PIN_LOCKED, CKR_ARGUMENTS_BAD, CKR_FUNCTION_NOT_SUPPORTED, CKR_GENERAL_ERROR, CKR_OK,
    CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKU_CONTEXT_SPECIFIC, CKU_USER,
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
}

// SAFETY: `wrapped` points to a leaked, immutable-after-init allocation; all
// other fields are plain data or function pointers.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

static MODULE: OnceLock<Result<Module, String>> = OnceLock::new();

/// Wrong user-PIN results seen so far (mirrors `P11_COUNT_STATE` if set).
static WRONG: AtomicU64 = AtomicU64::new(0);
/// Serialises read-modify-write of the counter (and of the state file).
static STATE_LOCK: Mutex<()> = Mutex::new(());

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
    let mut copy = real;
    copy.C_GetFunctionList = Some(C_GetFunctionList);
    copy.C_Login = real.C_Login.map(|_| wrap_login as _);
    copy.C_GetTokenInfo = real.C_GetTokenInfo.map(|_| wrap_get_token_info as _);
    let wrapped: *mut CK_FUNCTION_LIST = Box::leak(Box::new(copy));

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
    })
}

fn module() -> Option<&'static Module> {
    MODULE.get().and_then(|m| m.as_ref().ok())
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
        let Some(path) = &self.log else { return };
        // One write per line on an O_APPEND fd: lines from concurrent threads
        // or processes do not interleave.
        let line = format!("C_Login user_type={user_type} rv={rv:#x}\n");
        let res = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = res {
            eprintln!("p11-count: cannot append to {}: {e}", path.display());
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

unsafe extern "C" fn wrap_login(
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    pin: CK_UTF8CHAR_PTR,
    pin_len: CK_ULONG,
) -> CK_RV {
    let Some(m) = module() else {
        return CKR_GENERAL_ERROR;
    };
    let Some(real_login) = m.real.C_Login else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };

    let rv = match m.lock_after {
        Some(n) if is_user_pin(user_type) => m.with_counter(|wrong| {
            if wrong >= n {
                return (CKR_PIN_LOCKED, None);
            }
            // SAFETY: arguments are passed through unchanged from our caller.
            let rv = unsafe { real_login(session, user_type, pin, pin_len) };
            let new = match rv {
                CKR_PIN_INCORRECT => Some(wrong + 1),
                CKR_OK if wrong != 0 => Some(0),
                _ => None,
            };
            (rv, new)
        }),
        // SAFETY: as above.
        _ => unsafe { real_login(session, user_type, pin, pin_len) },
    };
    m.log_login(user_type, rv);
    rv
}

unsafe extern "C" fn wrap_get_token_info(slot: CK_SLOT_ID, info: CK_TOKEN_INFO_PTR) -> CK_RV {
    let Some(m) = module() else {
        return CKR_GENERAL_ERROR;
    };
    let Some(real) = m.real.C_GetTokenInfo else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: arguments are passed through unchanged from our caller.
    let rv = unsafe { real(slot, info) };
    if rv != CKR_OK || info.is_null() {
        return rv;
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
