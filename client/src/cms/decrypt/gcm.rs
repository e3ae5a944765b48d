//! Streaming AES-GCM decryption (NIST SP 800-38D) with associated data that arrives
//! *after* the ciphertext, as it does in CMS `AuthEnvelopedData` (`authAttrs` follow the
//! encrypted content).
//!
//! Built from the same pieces as `aes-gcm` 0.11: `ctr::Ctr32BE` for the keystream and
//! `ghash::GHash`. GHASH is linear, so
//! `GHASH(A ‖ C ‖ L) = GHASH(A) · H^(c+1) ⊕ GHASH(C ‖ L)` with `c` the number of
//! ciphertext blocks: the ciphertext is hashed as it streams by and the associated
//! data is folded in at the end. Any nonce length is accepted (J0 per §7.1). Checked
//! against `aes_gcm::AesGcm` one-shot on many lengths (see `decrypt::tests`).
//!
//! Plaintext is released before the tag is checked: the caller must discard it unless
//! [`GcmDecryptor::verify`] succeeds.

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
use p256::elliptic_curve::subtle::ConstantTimeEq as _;

use super::super::Error;

/// Largest plaintext GCM allows under one nonce: 2^36 − 32 bytes.
pub(super) const P_MAX: u64 = (1 << 36) - 32;

const BLOCK_LEN: usize = 16;

type Block = ghash::Block;

/// Incremental AES-GCM decryption.
pub(super) struct GcmDecryptor<C>
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
{
    ctr: StreamCipherCoreWrapper<CtrCore<C, Ctr32BE>>,
    /// GHASH key H = E(K, 0^128).
    h: Block,
    ghash: GHash,
    /// E(K, J0), XORed into the final GHASH value.
    mask: Block,
    /// Ciphertext not yet hashed (GHASH takes whole blocks until the end).
    pending: Block,
    pending_len: usize,
    /// Ciphertext bytes so far.
    len: u64,
}

impl<C> GcmDecryptor<C>
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16> + KeyInit,
{
    /// Starts decrypting under `key` (the length `C` needs) and a non-empty `nonce`.
    pub(super) fn new(key: &[u8], nonce: &[u8]) -> Result<Self, Error> {
        let cipher = C::new_from_slice(key)
            .map_err(|_| Error::WrongKey("content key has the wrong length for AES-GCM".into()))?;
        if nonce.is_empty() {
            return Err(super::super::malformed("AES-GCM nonce is empty"));
        }
        let mut h = Block::default();
        cipher.encrypt_block(&mut h);
        let ghash = GHash::new(&h);
        let j0 = if nonce.len() == 12 {
            // J0 = IV || 0^31 || 1.
            let mut j0 = Block::default();
            if let Some(dst) = j0.get_mut(..12) {
                dst.copy_from_slice(nonce);
            }
            if let Some(last) = j0.last_mut() {
                *last = 1;
            }
            j0
        } else {
            // J0 = GHASH(IV || 0^(s+64) || [len(IV)]_64).
            let mut g = GHash::new(&h);
            g.update_padded(nonce);
            let mut lens = Block::default();
            if let Some(dst) = lens.get_mut(8..) {
                dst.copy_from_slice(&((nonce.len() as u64) * 8).to_be_bytes());
            }
            g.update(&[lens]);
            g.finalize()
        };
        let mut core = CtrCore::<C, Ctr32BE>::inner_iv_init(cipher, &j0);
        let mut mask = Block::default();
        // Uses counter block J0; the content starts at inc32(J0).
        core.write_keystream_block(&mut mask);
        Ok(GcmDecryptor {
            ctr: StreamCipherCoreWrapper::from_core(core),
            h,
            ghash,
            mask,
            pending: Block::default(),
            pending_len: 0,
            len: 0,
        })
    }
}

impl<C> GcmDecryptor<C>
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
{
    /// Hashes the ciphertext `data` and decrypts it in place (any length).
    pub(super) fn decrypt(&mut self, data: &mut [u8]) -> Result<(), Error> {
        let total = self
            .len
            .checked_add(data.len() as u64)
            .filter(|t| *t <= P_MAX)
            .ok_or_else(|| {
                super::super::malformed(format!(
                    "AES-GCM ciphertext longer than the limit of {P_MAX} bytes"
                ))
            })?;
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

        self.ctr
            .try_apply_keystream(data)
            .map_err(|e| super::super::malformed(format!("AES-GCM counter: {e}")))
    }

    /// The full 16-byte tag over `aad` and the ciphertext seen so far.
    pub(super) fn tag(mut self, aad: &[u8]) -> [u8; 16] {
        if self.pending_len > 0 {
            self.ghash
                .update_padded(self.pending.get(..self.pending_len).unwrap_or_default());
        }
        let mut lengths = Block::default();
        if let Some(dst) = lengths.get_mut(..8) {
            dst.copy_from_slice(&((aad.len() as u64) * 8).to_be_bytes());
        }
        if let Some(dst) = lengths.get_mut(8..) {
            dst.copy_from_slice(&(self.len * 8).to_be_bytes());
        }
        self.ghash.update(&[lengths]);
        let mut s = self.ghash.finalize();
        if !aad.is_empty() {
            // Fold in GHASH(A) · H^(c+1).
            let mut ga = GHash::new(&self.h);
            ga.update_padded(aad);
            let ga = ga.finalize();
            let c_blocks = self.len.div_ceil(BLOCK_LEN as u64);
            let term = mul(&ga, &pow(&self.h, c_blocks + 1));
            for (a, b) in s.iter_mut().zip(term.iter()) {
                *a ^= b;
            }
        }
        let mut tag = [0u8; 16];
        for ((t, a), b) in tag.iter_mut().zip(s.iter()).zip(self.mask.iter()) {
            *t = a ^ b;
        }
        tag
    }

    /// Checks `expected` (12 to 16 bytes, a prefix of the full tag) in constant time.
    pub(super) fn verify(self, aad: &[u8], expected: &[u8]) -> Result<(), Error> {
        let tag = self.tag(aad);
        let ok = (12..=16).contains(&expected.len())
            && bool::from(
                tag.get(..expected.len())
                    .unwrap_or_default()
                    .ct_eq(expected),
            );
        if ok { Ok(()) } else { Err(Error::TagMismatch) }
    }
}

/// Product in GHASH's field: GHASH keyed with `a` over the single block `b` is `b · a`.
fn mul(a: &Block, b: &Block) -> Block {
    let mut g = GHash::new(a);
    g.update(&[*b]);
    g.finalize()
}

/// `h^n` (n ≥ 1) by square-and-multiply.
fn pow(h: &Block, n: u64) -> Block {
    let mut result: Option<Block> = None;
    let mut base = *h;
    let mut n = n;
    while n > 0 {
        if n & 1 == 1 {
            result = Some(match result {
                None => base,
                Some(r) => mul(&r, &base),
            });
        }
        n >>= 1;
        if n > 0 {
            base = mul(&base, &base);
        }
    }
    result.unwrap_or(*h)
}
