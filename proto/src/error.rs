//! Errors of the protocol layer. They carry no I/O: sockets belong to the callers.

/// A framing failure: the byte stream cannot be trusted any more and the connection
/// must be closed (the first level of the two-level error model, see `PROTOCOL.md` §5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announced more than [`crate::MAX_FRAME_LEN`] bytes. Nothing of
    /// the payload was buffered.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced payload length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// A frame with a zero-length payload; no valid message encodes to zero bytes.
    #[error("empty frame")]
    Empty,
    /// The stream ended in the middle of a frame.
    #[error("connection closed inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },
}

/// A payload that is a complete frame but not a valid message.
///
/// Every variant except [`DecodeError::UnknownOperation`] means the peer does not speak
/// the protocol; an unknown operation is answered with an error response instead, so
/// that newer clients can probe older agents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is not well-formed CBOR, or not the shape of any message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Well-formed CBOR followed by more bytes inside the same frame.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A well-formed request whose `op` this side does not know.
    #[error("unknown operation {0:?}")]
    UnknownOperation(String),
}
