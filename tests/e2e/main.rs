//! End-to-end tests: the agent as a subprocess on a private SoftHSM token, the `smime` CLI
//! as a user runs it, and OpenSSL and gpgsm as independent judges.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: fail loudly

mod agent;
mod card;
mod cli;
mod envelope;
mod git;
mod gpgsm;
mod neomutt;
mod ops;
mod pin;
mod piv;
mod piv_native;
mod python;
mod sign;
mod smime_mail;
mod trust;
