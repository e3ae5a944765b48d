//! Token backends. PKCS#11 is the first; the native PIV backend will sit beside it.
//!
//! ```text
//!   keystore ──► backend::pkcs11::Token ──jobs──► worker threads (one Session each) ──► C_* calls
//! ```

pub mod pkcs11;
