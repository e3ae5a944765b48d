//! # smime-proto: the wire protocol of `smime-agent`
//!
//! ```text
//!  client (smime, mail client, Python script)            smime-agent
//!  ─────────────────────────────────────────             ───────────
//!  Request ──encode──► [u32 BE len][CBOR map] ─socket──► FrameDecoder::feed ─► Request::decode
//!  Response ◄─decode── [u32 BE len][CBOR map] ◄─socket── Response::encode_frame
//! ```
//!
//! This crate is **sans-IO**: it holds message types, the framing state machine and the
//! CBOR encoding, and nothing that touches a socket. The agent drives it with tokio, the
//! `smime` client with blocking std I/O, and any other language can speak it by following
//! `PROTOCOL.md` (the normative spec that sits next to this crate).
//!
//! * [`frame`]: the length prefix, [`MAX_FRAME_LEN`] and the [`FrameDecoder`].
//! * [`message`]: [`Request`] and [`Response`], one variant per operation.
//! * [`types`]: [`KeyId`], algorithms, [`ErrorCode`] and the other values messages carry.
//! * [`secret`]: [`Pin`] and [`SecretBytes`], zeroized on drop and redacted in `Debug`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod frame;
pub mod message;
pub mod secret;
pub mod types;

pub use error::{DecodeError, FrameError};
pub use frame::{FrameDecoder, MAX_FRAME_LEN, MAX_REQUEST_LEN, encode_frame};
pub use message::{
    AgentStatus, CardStatus, ErrorResponse, KeyInfo, ModuleStatus, PcscStatus, ReaderStatus,
    Request, Response, TokenStatus,
};
pub use secret::{Pin, SecretBytes};
pub use types::{
    DecryptAlgorithm, ErrorCode, KeyAlgorithm, KeyId, Operation, PinState, SignAlgorithm,
};

/// The protocol version this crate speaks. `Hello` negotiates the highest version both
/// sides list; a peer that shares none gets [`ErrorCode::UNSUPPORTED_VERSION`].
pub const PROTOCOL_VERSION: u32 = 1;
