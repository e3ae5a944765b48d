//! The one place with `unsafe` code in the agent: the module's own function list, for
//! what cryptoki's safe API cannot do.
//!
//! ```text
//!  load:   RawModule::open(path)                 (C_GetFunctionList)
//!          RawModule::initialize_with_our_locks  (C_Initialize with the agent's mutexes)
//!  worker: session.sign_init(mech, key)          (cryptoki, safe)
//!          session.login(ContextSpecific, pin)   (cryptoki, safe)
//!          RawModule::sign(session.handle(), …)  (here: C_Sign from C_GetFunctionList)
//! ```
//!
//! - *`C_Initialize` with the agent's locks* (`CreateMutex` … `UnlockMutex`; see
//!   `modlock`): cryptoki's `CInitializeArgs` takes flags only.
//! - *Single-part `C_Sign` / `C_Decrypt` for keys with CKA_ALWAYS_AUTHENTICATE*:
//!   cryptoki's `Session::sign` calls `C_SignInit` and `C_Sign` back to back, so the
//!   context-specific login that such keys need *between* the two cannot happen.
//!
//! cryptoki keeps its function list private, so the module is opened a second time here
//! (`dlopen` of the same path returns the same handle, hence the same module state and
//! session handles). See `/work/shared/notes/crates.md`, "CKA_ALWAYS_AUTHENTICATE /
//! context-specific login".
#![allow(unsafe_code)] // the reason this module exists; every block has a SAFETY note

use std::ffi::c_void;
use std::path::Path;

use super::modlock::ModLock;
use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv};
use cryptoki_sys::{CK_BYTE_PTR, CK_FUNCTION_LIST, CK_RV, CK_SESSION_HANDLE, CK_ULONG};

/// The biggest signature or plaintext accepted from a module (RSA 16384 is 2 KiB).
const MAX_OUTPUT: usize = 64 * 1024;

/// `C_Initialize`, `C_Sign` and `C_Decrypt` of a loaded module, called directly.
pub(crate) struct RawModule {
    /// Keeps the library mapped while the function pointers below are in use.
    _lib: cryptoki_sys::Pkcs11,
    init: cryptoki_sys::CK_C_Initialize,
    sign: unsafe extern "C" fn(
        CK_SESSION_HANDLE,
        CK_BYTE_PTR,
        CK_ULONG,
        CK_BYTE_PTR,
        *mut CK_ULONG,
    ) -> CK_RV,
    decrypt: unsafe extern "C" fn(
        CK_SESSION_HANDLE,
        CK_BYTE_PTR,
        CK_ULONG,
        CK_BYTE_PTR,
        *mut CK_ULONG,
    ) -> CK_RV,
}

impl std::fmt::Debug for RawModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawModule")
    }
}

impl RawModule {
    /// Opens the module at `path` again (the caller has loaded it through cryptoki) and
    /// takes `C_Initialize`, `C_Sign` and `C_Decrypt` from its function list
    /// (`C_GetFunctionList` may come before `C_Initialize`).
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        // SAFETY: loading a PKCS#11 library runs its initializers; the same library is
        // already loaded by cryptoki, so this only takes another reference to it.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(path) }.map_err(|e| e.to_string())?;
        let get = lib
            .C_GetFunctionList
            .as_ref()
            .map_err(|e| format!("C_GetFunctionList: {e}"))?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `list` is a valid out-pointer for one pointer.
        let rv = unsafe { get(&mut list) };
        if rv != cryptoki_sys::CKR_OK || list.is_null() {
            return Err(format!("C_GetFunctionList returned {rv:#x}"));
        }
        // SAFETY: the module returned a non-null pointer to its function list, which
        // stays valid while the library is loaded (we hold `lib`).
        let fl = unsafe { &*list };
        let (Some(sign), Some(decrypt)) = (fl.C_Sign, fl.C_Decrypt) else {
            return Err("the module has no C_Sign or C_Decrypt".into());
        };
        Ok(Self {
            _lib: lib,
            init: fl.C_Initialize,
            sign,
            decrypt,
        })
    }

    /// `C_Initialize` with `CKF_OS_LOCKING_OK` and the agent's mutex functions (see
    /// `modlock`), which the module may use instead of the OS's (SoftHSM does).
    /// `Err` holds the module's refusal, e.g. `CKR_CRYPTOKI_ALREADY_INITIALIZED`.
    pub(crate) fn initialize_with_our_locks(&self) -> Result<(), CK_RV> {
        let Some(init) = self.init else {
            return Err(cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED);
        };
        let mut args = cryptoki_sys::CK_C_INITIALIZE_ARGS {
            CreateMutex: Some(create_mutex),
            DestroyMutex: Some(destroy_mutex),
            LockMutex: Some(lock_mutex),
            UnlockMutex: Some(unlock_mutex),
            flags: cryptoki_sys::CKF_OS_LOCKING_OK,
            pReserved: std::ptr::null_mut(),
        };
        // SAFETY: `args` is a valid CK_C_INITIALIZE_ARGS for the length of the call (the
        // module copies the function pointers, which are 'static).
        let rv = unsafe { init((&raw mut args).cast()) };
        if rv == cryptoki_sys::CKR_OK {
            Ok(())
        } else {
            Err(rv)
        }
    }

    /// Single-part `C_Sign` on `session`, whose `C_SignInit` (and context login) is done.
    pub(crate) fn sign(&self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<Vec<u8>, CkError> {
        self.call(self.sign, session, data, Function::Sign)
    }

    /// Single-part `C_Decrypt` on `session`, whose `C_DecryptInit` (and context login) is done.
    pub(crate) fn decrypt(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
    ) -> Result<Vec<u8>, CkError> {
        self.call(self.decrypt, session, data, Function::Decrypt)
    }

    /// The PKCS#11 two-call convention: ask for the length, then fetch the output.
    fn call(
        &self,
        f: unsafe extern "C" fn(
            CK_SESSION_HANDLE,
            CK_BYTE_PTR,
            CK_ULONG,
            CK_BYTE_PTR,
            *mut CK_ULONG,
        ) -> CK_RV,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        function: Function,
    ) -> Result<Vec<u8>, CkError> {
        let len = CK_ULONG::try_from(data.len())
            .map_err(|_| CkError::Pkcs11(cryptoki::error::RvError::DataLenRange, function))?;
        // PKCS#11 takes the input as a non-const pointer but never writes through it.
        let input = data.as_ptr().cast_mut();
        let mut out_len: CK_ULONG = 0;
        // SAFETY: `input` points at `len` readable bytes; a null output pointer asks only
        // for the length, written to the valid `out_len`.
        let rv = unsafe { f(session, input, len, std::ptr::null_mut(), &mut out_len) };
        Rv::from(rv).into_result(function)?;
        let n = usize::try_from(out_len).unwrap_or(usize::MAX);
        if n > MAX_OUTPUT {
            return Err(CkError::Pkcs11(
                cryptoki::error::RvError::GeneralError,
                function,
            ));
        }
        let mut out = vec![0u8; n];
        // SAFETY: `out` has `out_len` writable bytes; `input` as above.
        let rv = unsafe { f(session, input, len, out.as_mut_ptr(), &mut out_len) };
        Rv::from(rv).into_result(function)?;
        out.truncate(usize::try_from(out_len).unwrap_or(0));
        Ok(out)
    }
}

// The mutex functions a module gets from `initialize_with_our_locks`: a mutex is a boxed
// `ModLock`, made by `create_mutex` and freed by `destroy_mutex`; the module holds the
// pointer in between. A null pointer is refused rather than followed.

/// `CK_CREATEMUTEX`.
unsafe extern "C" fn create_mutex(out: *mut *mut c_void) -> CK_RV {
    if out.is_null() {
        return cryptoki_sys::CKR_ARGUMENTS_BAD;
    }
    let lock = Box::into_raw(Box::new(ModLock::default()));
    // SAFETY: the module passes a valid out-pointer for one pointer (checked non-null).
    unsafe { *out = lock.cast() };
    cryptoki_sys::CKR_OK
}

/// `CK_DESTROYMUTEX`.
unsafe extern "C" fn destroy_mutex(mutex: *mut c_void) -> CK_RV {
    if mutex.is_null() {
        return cryptoki_sys::CKR_MUTEX_BAD;
    }
    // SAFETY: `mutex` came from `create_mutex` (Box::into_raw) and the module destroys it
    // once, when it no longer uses it.
    drop(unsafe { Box::from_raw(mutex.cast::<ModLock>()) });
    cryptoki_sys::CKR_OK
}

/// `CK_LOCKMUTEX`.
unsafe extern "C" fn lock_mutex(mutex: *mut c_void) -> CK_RV {
    // SAFETY: a non-null `mutex` came from `create_mutex` and is not destroyed yet.
    match unsafe { mutex.cast::<ModLock>().as_ref() } {
        Some(lock) => {
            lock.lock();
            cryptoki_sys::CKR_OK
        }
        None => cryptoki_sys::CKR_MUTEX_BAD,
    }
}

/// `CK_UNLOCKMUTEX`.
unsafe extern "C" fn unlock_mutex(mutex: *mut c_void) -> CK_RV {
    // SAFETY: as for `lock_mutex`.
    match unsafe { mutex.cast::<ModLock>().as_ref() } {
        Some(lock) if lock.unlock() => cryptoki_sys::CKR_OK,
        Some(_) => cryptoki_sys::CKR_MUTEX_NOT_LOCKED,
        None => cryptoki_sys::CKR_MUTEX_BAD,
    }
}
