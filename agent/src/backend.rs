//! Token backends: PKCS#11 modules, and cards driven natively over PC/SC (PIV).
//!
//! ```text
//!   keystore ──► backend::pkcs11::Token ──jobs──► worker threads (one Session each) ──► C_* calls
//!                       (PIN policy)        └───► one thread per PIV card ──► yubikey crate ──► pcscd
//! ```

pub mod piv;
pub mod pkcs11;
