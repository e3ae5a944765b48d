//! Framing: every message travels as one frame.
//!
//! ```text
//! +----------------------+---------------------------+
//! | length: u32 BE       | payload: `length` bytes   |
//! +----------------------+---------------------------+
//!   0 < length <= MAX_FRAME_LEN (1 MiB)
//! ```
//!
//! The decoder checks the length against [`MAX_FRAME_LEN`] as soon as the four prefix bytes
//! have arrived, *before* it reserves or buffers anything of the payload, so a hostile
//! length costs the agent nothing.

use crate::error::FrameError;

/// Largest payload a frame may carry. The largest legitimate message is a `ListKeys`
/// reply with a few dozen certificates; 1 MiB leaves ample room.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

const HEADER_LEN: usize = 4;

/// Prefixes `payload` with its length.
///
/// # Errors
/// [`FrameError::TooLarge`] or [`FrameError::Empty`] when the payload cannot be framed.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = check_len(payload.len())?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn check_len(len: usize) -> Result<u32, FrameError> {
    check_len_max(len, MAX_FRAME_LEN)
}

fn check_len_max(len: usize, max: u32) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(0) => Err(FrameError::Empty),
        Ok(n) if n <= max => Ok(n),
        Ok(n) => Err(FrameError::TooLarge { len: n, max }),
        Err(_) => Err(FrameError::TooLarge { len: u32::MAX, max }),
    }
}

/// Incremental frame decoder: feed it bytes as they arrive, take frames out.
///
/// The three outcomes of [`FrameDecoder::feed`] are the three states of a stream:
/// `Ok(None)` = incomplete (read more), `Err(_)` = invalid (close the connection),
/// `Ok(Some(payload))` = one complete frame. Bytes after a complete frame stay buffered
/// for the next call to [`FrameDecoder::next_frame`] or `feed`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limit: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The largest request an agent needs to accept: the biggest legitimate request is an RSA
/// decrypt with a 16384-bit key (2 KiB). Agents use this tighter limit for what they read.
pub const MAX_REQUEST_LEN: u32 = 64 * 1024;

impl FrameDecoder {
    /// A decoder with nothing buffered that accepts frames up to [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_LEN)
    }

    /// A decoder with a tighter payload limit (at most [`MAX_FRAME_LEN`]).
    pub fn with_limit(limit: u32) -> Self {
        Self {
            buf: Vec::new(),
            limit: limit.min(MAX_FRAME_LEN),
        }
    }

    /// Appends `data` and returns the next complete frame, if there is one.
    ///
    /// # Errors
    /// A [`FrameError`] when the prefix is invalid; the connection must then be closed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        // Validate the header from the bytes at hand before growing the buffer, so that
        // an oversized prefix is refused without buffering its payload.
        if self.buf.len() < HEADER_LEN {
            let mut header = self.buf.clone();
            header.extend(data.iter().take(HEADER_LEN - self.buf.len()));
            if let Ok(h) = <[u8; HEADER_LEN]>::try_from(header.as_slice()) {
                check_len_max(u32::from_be_bytes(h) as usize, self.limit)?;
            }
        }
        self.buf.extend_from_slice(data);
        self.next_frame()
    }

    /// [`FrameDecoder::feed`] with the bytes of a read buffer, which it then overwrites
    /// with zeros (they may hold a PIN or a key). Only the `data` given is wiped, not the
    /// whole buffer it came from: a 4 KiB wipe for every 100-byte frame is a cost on every
    /// request.
    ///
    /// # Errors
    /// As for [`FrameDecoder::feed`]; `data` is wiped either way.
    pub fn feed_wiping(&mut self, data: &mut [u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let r = self.feed(data);
        zeroize::Zeroize::zeroize(data);
        r
    }

    /// Takes the next complete frame out of what is already buffered.
    ///
    /// # Errors
    /// As for [`FrameDecoder::feed`].
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = check_len_max(u32::from_be_bytes(*header) as usize, self.limit)? as usize;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(payload))
    }

    /// How many bytes the decoder needs before it can say more: the rest of the header,
    /// or the rest of the payload. Lets a blocking reader use `read_exact`.
    pub fn wanted(&self) -> usize {
        match self.buf.first_chunk::<HEADER_LEN>() {
            None => HEADER_LEN - self.buf.len(),
            Some(h) => {
                (HEADER_LEN + u32::from_be_bytes(*h) as usize).saturating_sub(self.buf.len())
            }
        }
    }

    /// Whether part of a frame is buffered (a read is mid-frame).
    pub fn is_mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Called at end of stream: an error if a frame was left unfinished.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] when bytes of an unfinished frame are buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_wiping_decodes_and_wipes_what_it_was_given() {
        let mut frame = encode_frame(b"pin 123456").unwrap();
        frame.extend_from_slice(b"\0\0"); // the start of the next frame stays buffered
        let mut d = FrameDecoder::new();
        assert_eq!(
            d.feed_wiping(&mut frame).unwrap().as_deref(),
            Some(&b"pin 123456"[..])
        );
        assert!(frame.iter().all(|&b| b == 0), "{frame:?}");
        assert!(d.is_mid_frame());
        let mut bad = u32::MAX.to_be_bytes();
        assert!(FrameDecoder::new().feed_wiping(&mut bad).is_err());
        assert_eq!(bad, [0; 4], "wiped on an error too");
    }

    #[test]
    fn round_trip_in_pieces() {
        let frame = encode_frame(b"hello").unwrap();
        let mut d = FrameDecoder::new();
        for b in &frame[..frame.len() - 1] {
            assert_eq!(d.feed(std::slice::from_ref(b)).unwrap(), None);
        }
        assert!(d.finish().is_err());
        assert_eq!(
            d.feed(&frame[frame.len() - 1..]).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        d.finish().unwrap();
    }

    #[test]
    fn two_frames_in_one_read() {
        let mut bytes = encode_frame(b"a").unwrap();
        bytes.extend(encode_frame(b"bc").unwrap());
        let mut d = FrameDecoder::new();
        assert_eq!(d.feed(&bytes).unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(d.next_frame().unwrap().as_deref(), Some(&b"bc"[..]));
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn oversized_prefix_is_refused_before_payload() {
        let mut d = FrameDecoder::new();
        assert_eq!(d.feed(&[0x00, 0x10]).unwrap(), None);
        let err = d.feed(&[0x00, 0x01, 0xff]).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            }
        );
        assert_eq!(d.buf.len(), 2, "nothing after the bad prefix was buffered");
        assert!(matches!(
            FrameDecoder::new().feed(&[0xff; 4]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn tighter_limit() {
        let mut d = FrameDecoder::with_limit(10);
        assert!(matches!(
            d.feed(&[0, 0, 0, 11]),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        ));
        let mut d = FrameDecoder::with_limit(10);
        assert_eq!(
            d.feed(&[0, 0, 0, 2, 1, 2]).unwrap().as_deref(),
            Some(&[1u8, 2][..])
        );
    }

    #[test]
    fn empty_frame_is_invalid() {
        assert_eq!(
            FrameDecoder::new().feed(&[0, 0, 0, 0]),
            Err(FrameError::Empty)
        );
        assert_eq!(encode_frame(b""), Err(FrameError::Empty));
    }

    #[test]
    fn wanted_tracks_progress() {
        let mut d = FrameDecoder::new();
        assert_eq!(d.wanted(), 4);
        d.feed(&[0, 0]).unwrap();
        assert_eq!(d.wanted(), 2);
        d.feed(&[0, 3, 1]).unwrap();
        assert_eq!(d.wanted(), 2);
    }
}
