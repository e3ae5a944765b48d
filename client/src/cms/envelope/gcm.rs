//! Streaming AES-GCM encryption (NIST SP 800-38D) for a 96-bit nonce and no associated
//! data, built exactly as `aes-gcm` 0.11 builds its one-shot mode: `ctr::Ctr32BE` for the
//! keystream and `ghash::GHash` over the ciphertext. `aes-gcm` itself only works on a
//! whole message in memory.
//!
//! Tested against `aes_gcm::Aes{128,256}Gcm` on many lengths and split patterns
//! (`envelope::tests`).

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{
    BlockCipherEncrypt, BlockSizeUser, InnerIvInit as _, KeyInit, StreamCipher as _,
    StreamCipherCore as _, StreamCipherCoreWrapper,
};
use ctr::CtrCore;
use ctr::flavors::Ctr32BE;
use ghash::GHash;
use ghash::universal_hash::UniversalHash as _;

use super::super::Error;

/// Largest plaintext GCM can encrypt under one nonce: 2^36 − 32 bytes (2^32 − 2 blocks).
pub(super) const P_MAX: u64 = (1 << 36) - 32;

type Block = ghash::Block;

/// Incremental AES-GCM encryption. Feed any number of [`GcmStream::encrypt`] calls of any
/// lengths, then take the 16-byte tag with [`GcmStream::finish`].
pub(crate) struct GcmStream<C>
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
{
    ctr: StreamCipherCoreWrapper<CtrCore<C, Ctr32BE>>,
    ghash: GHash,
    /// E(K, J0), XORed into the final GHASH value.
    mask: Block,
    /// Ciphertext not yet hashed (GHASH takes whole blocks until the end).
    pending: Block,
    pending_len: usize,
    /// Ciphertext bytes so far.
    len: u64,
}

impl<C> GcmStream<C>
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16> + KeyInit,
{
    /// Starts encrypting under `key` (16 or 32 bytes, matching `C`) and a 12-byte nonce.
    pub(crate) fn new(key: &[u8], nonce: &[u8; 12]) -> Result<Self, aes::cipher::InvalidLength> {
        let cipher = C::new_from_slice(key)?;
        // H = E(K, 0^128).
        let mut h = Block::default();
        cipher.encrypt_block(&mut h);
        let ghash = GHash::new(&h);
        // J0 = nonce || 0^31 || 1.
        let mut j0 = Block::default();
        if let Some(dst) = j0.get_mut(..12) {
            dst.copy_from_slice(nonce);
        }
        if let Some(last) = j0.last_mut() {
            *last = 1;
        }
        let mut core = CtrCore::<C, Ctr32BE>::inner_iv_init(cipher, &j0);
        let mut mask = Block::default();
        // Takes counter block J0; the content then starts at inc32(J0).
        core.write_keystream_block(&mut mask);
        Ok(GcmStream {
            ctr: StreamCipherCoreWrapper::from_core(core),
            ghash,
            mask,
            pending: Block::default(),
            pending_len: 0,
            len: 0,
        })
    }
}

impl<C> GcmStream<C>
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
{
    /// Encrypts `data` in place (any length) and feeds the ciphertext to GHASH.
    pub(crate) fn encrypt(&mut self, data: &mut [u8]) -> Result<(), Error> {
        let total = self.len.saturating_add(data.len() as u64);
        if total > P_MAX {
            return Err(Error::InvalidRequest(format!(
                "content too large for AES-GCM: at most {P_MAX} bytes under one key"
            )));
        }
        self.ctr
            .try_apply_keystream(data)
            .map_err(|e| Error::Build(format!("AES-GCM counter: {e}")))?;
        self.len = total;

        let mut rest: &[u8] = data;
        if self.pending_len > 0 {
            let take = (BLOCK_LEN - self.pending_len).min(rest.len());
            let (head, tail) = rest.split_at(take);
            if let Some(dst) = self
                .pending
                .get_mut(self.pending_len..self.pending_len + take)
            {
                dst.copy_from_slice(head);
            }
            self.pending_len += take;
            rest = tail;
            if self.pending_len == BLOCK_LEN {
                self.ghash.update(&[self.pending]);
                self.pending_len = 0;
            }
        }
        let (blocks, tail) = Array::<u8, U16>::slice_as_chunks(rest);
        self.ghash.update(blocks);
        if !tail.is_empty() {
            if let Some(dst) = self.pending.get_mut(..tail.len()) {
                dst.copy_from_slice(tail);
            }
            self.pending_len = tail.len();
        }
        Ok(())
    }

    /// Finishes GHASH (no associated data) and returns the full 16-byte tag.
    pub(crate) fn finish(mut self) -> [u8; 16] {
        if self.pending_len > 0 {
            self.ghash
                .update_padded(self.pending.get(..self.pending_len).unwrap_or_default());
        }
        // len(A) = 0 || len(C), both in bits, big endian.
        let mut lengths = Block::default();
        if let Some(dst) = lengths.get_mut(8..) {
            dst.copy_from_slice(&(self.len * 8).to_be_bytes());
        }
        self.ghash.update(&[lengths]);
        let s = self.ghash.finalize();
        let mut tag = [0u8; 16];
        for ((t, a), b) in tag.iter_mut().zip(s.iter()).zip(self.mask.iter()) {
            *t = a ^ b;
        }
        tag
    }
}

const BLOCK_LEN: usize = 16;
