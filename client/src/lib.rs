//! # smime: the client side of smime-agent
//!
//! ```text
//!  smime CLI ── cli (clap) ──► options ──► cms::{sign,verify} ──► agent::AgentClient ──► socket
//!                                            │  hashing, CMS, certificates        (proto frames)
//!                                            └─ RemoteSigner: the agent signs digests only
//! ```
//!
//! Everything except the private-key operation happens here: hashing the content as a
//! stream, building and parsing CMS, checking certificates. The agent only ever sees a
//! digest.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod cms;
pub mod commands;
pub mod git;
pub mod keys;
pub mod mime;
pub mod output;
pub mod signer;
pub mod store;
pub mod trust;
