//! Streaming AES-GCM (NIST SP 800-38D) for CMS `AuthEnvelopedData` (RFC 5083, RFC 5084),
//! both directions: [`GcmStream`] encrypts (`envelope`), [`GcmDecryptor`] decrypts
//! (`decrypt`).
//!
//! `aes-gcm` itself only works on a whole message in memory, so this is built from the
//! same pieces as `aes-gcm` 0.11: `ctr::Ctr32BE` for the keystream and `ghash::GHash`
//! over the ciphertext. Both directions share [`GcmCore`]; they differ only in whether the
//! ciphertext is hashed after (encrypt) or before (decrypt) the keystream is applied.
//!
//! Associated data arrives *after* the ciphertext in CMS (`authAttrs` follow the encrypted
//! content). GHASH is linear, so
//! `GHASH(A ‖ C ‖ L) = GHASH(A) · H^(c+1) ⊕ GHASH(C ‖ L)` with `c` the number of
//! ciphertext blocks: the ciphertext is hashed as it streams by and the associated data
//! is folded in at the end. Any nonce length is accepted when decrypting (J0 per §7.1).
//!
//! Checked against `aes_gcm` one-shot on many lengths, split patterns and nonce lengths,
//! and against the McGrew–Viega test vector (`envelope::tests`, `decrypt::tests`).

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{
    BlockCipherEncrypt, BlockSizeUser, InnerIvInit as _, KeyInit, StreamCipher as _,
    StreamCipherCore as _, StreamCipherCoreWrapper, StreamCipherError,
};
use ctr::CtrCore;
use ctr::flavors::Ctr32BE;
use ghash::GHash;
use ghash::universal_hash::UniversalHash as _;
use p256::elliptic_curve::subtle::ConstantTimeEq as _;

use super::{Error, malformed};

/// Largest plaintext GCM allows under one nonce: 2^36 − 32 bytes (2^32 − 2 blocks).
pub(crate) const P_MAX: u64 = (1 << 36) - 32;

const BLOCK_LEN: usize = 16;

type Block = ghash::Block;

/// A block cipher GCM can run on: 128-bit blocks (AES-128, -192, -256).
pub(crate) trait GcmCipher: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16> {}

impl<C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>> GcmCipher for C {}

/// The state both directions share: the CTR keystream from inc32(J0), GHASH over the
/// ciphertext so far, and what the tag needs at the end.
struct GcmCore<C: GcmCipher> {
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

impl<C: GcmCipher> GcmCore<C> {
    /// Starts under `cipher` (already keyed) and `nonce` (any length; 12 is the fast path).
    fn new(cipher: C, nonce: &[u8]) -> Self {
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
            g.update(&[lengths_block(0, nonce.len() as u64)]);
            g.finalize()
        };
        let mut core = CtrCore::<C, Ctr32BE>::inner_iv_init(cipher, &j0);
        let mut mask = Block::default();
        // Uses counter block J0; the content starts at inc32(J0).
        core.write_keystream_block(&mut mask);
        GcmCore {
            ctr: StreamCipherCoreWrapper::from_core(core),
            h,
            ghash,
            mask,
            pending: Block::default(),
            pending_len: 0,
            len: 0,
        }
    }

    /// The ciphertext length after `more` bytes, or `None` past [`P_MAX`].
    fn len_after(&self, more: usize) -> Option<u64> {
        self.len
            .checked_add(more as u64)
            .filter(|total| *total <= P_MAX)
    }

    /// XORs the next `data.len()` keystream bytes into `data`.
    fn apply_keystream(&mut self, data: &mut [u8]) -> Result<(), StreamCipherError> {
        self.ctr.try_apply_keystream(data)
    }

    /// Feeds `ciphertext` (any length) to GHASH and counts it.
    fn hash_ciphertext(&mut self, ciphertext: &[u8]) {
        self.len += ciphertext.len() as u64;
        let mut rest = ciphertext;
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
    }

    /// The full 16-byte tag over `aad` and the ciphertext seen so far.
    fn tag(mut self, aad: &[u8]) -> [u8; 16] {
        if self.pending_len > 0 {
            self.ghash
                .update_padded(self.pending.get(..self.pending_len).unwrap_or_default());
        }
        self.ghash
            .update(&[lengths_block(aad.len() as u64, self.len)]);
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
}

/// Incremental AES-GCM encryption under a 96-bit nonce, no associated data. Feed any
/// number of [`GcmStream::encrypt`] calls of any lengths, then take the 16-byte tag
/// with [`GcmStream::finish`].
pub(crate) struct GcmStream<C: GcmCipher>(GcmCore<C>);

impl<C: GcmCipher + KeyInit> GcmStream<C> {
    /// Starts encrypting under `key` (16 or 32 bytes, matching `C`) and a 12-byte nonce.
    pub(crate) fn new(key: &[u8], nonce: &[u8; 12]) -> Result<Self, aes::cipher::InvalidLength> {
        Ok(GcmStream(GcmCore::new(C::new_from_slice(key)?, nonce)))
    }
}

impl<C: GcmCipher> GcmStream<C> {
    /// Encrypts `data` in place (any length) and feeds the ciphertext to GHASH.
    pub(crate) fn encrypt(&mut self, data: &mut [u8]) -> Result<(), Error> {
        if self.0.len_after(data.len()).is_none() {
            return Err(Error::InvalidRequest(format!(
                "content too large for AES-GCM: at most {P_MAX} bytes under one key"
            )));
        }
        self.0
            .apply_keystream(data)
            .map_err(|e| Error::Build(format!("AES-GCM counter: {e}")))?;
        self.0.hash_ciphertext(data);
        Ok(())
    }

    /// Finishes GHASH (no associated data) and returns the full 16-byte tag.
    pub(crate) fn finish(self) -> [u8; 16] {
        self.0.tag(&[])
    }
}

/// Incremental AES-GCM decryption, with the associated data given at the end.
///
/// Plaintext is released before the tag is checked: the caller must discard it unless
/// [`GcmDecryptor::verify`] succeeds.
pub(crate) struct GcmDecryptor<C: GcmCipher>(GcmCore<C>);

impl<C: GcmCipher + KeyInit> GcmDecryptor<C> {
    /// Starts decrypting under `key` (the length `C` needs) and a non-empty `nonce`.
    pub(crate) fn new(key: &[u8], nonce: &[u8]) -> Result<Self, Error> {
        let cipher = C::new_from_slice(key)
            .map_err(|_| Error::WrongKey("content key has the wrong length for AES-GCM".into()))?;
        if nonce.is_empty() {
            return Err(malformed("AES-GCM nonce is empty"));
        }
        Ok(GcmDecryptor(GcmCore::new(cipher, nonce)))
    }
}

impl<C: GcmCipher> GcmDecryptor<C> {
    /// Hashes the ciphertext `data` and decrypts it in place (any length).
    pub(crate) fn decrypt(&mut self, data: &mut [u8]) -> Result<(), Error> {
        if self.0.len_after(data.len()).is_none() {
            return Err(malformed(format!(
                "AES-GCM ciphertext longer than the limit of {P_MAX} bytes"
            )));
        }
        self.0.hash_ciphertext(data);
        self.0
            .apply_keystream(data)
            .map_err(|e| malformed(format!("AES-GCM counter: {e}")))
    }

    /// The full 16-byte tag over `aad` and the ciphertext seen so far.
    pub(crate) fn tag(self, aad: &[u8]) -> [u8; 16] {
        self.0.tag(aad)
    }

    /// Checks `expected` (12 to 16 bytes, a prefix of the full tag) in constant time.
    pub(crate) fn verify(self, aad: &[u8], expected: &[u8]) -> Result<(), Error> {
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

/// `[a]_64 || [c]_64` with both lengths in bits, big endian.
fn lengths_block(a_bytes: u64, c_bytes: u64) -> Block {
    let mut block = Block::default();
    if let Some(dst) = block.get_mut(..8) {
        dst.copy_from_slice(&(a_bytes * 8).to_be_bytes());
    }
    if let Some(dst) = block.get_mut(8..) {
        dst.copy_from_slice(&(c_bytes * 8).to_be_bytes());
    }
    block
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
