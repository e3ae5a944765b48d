//! Content-encryption algorithms: parsing `contentEncryptionAlgorithm` and streaming
//! decryption (AES-CBC and 3DES-CBC with PKCS#7 padding; AES-GCM).

use std::io::Write;

use aes::cipher::array::Array;
use aes::cipher::{BlockCipherDecrypt, BlockModeDecrypt, BlockSizeUser, KeyIvInit as _};
use aes::{Aes128, Aes192, Aes256};
use der::Sequence;
use der::asn1::OctetString;
use spki::AlgorithmIdentifierOwned;

use super::super::{Error, malformed, oid_name};
use super::gcm::GcmDecryptor;
use super::oids;

/// Size of the decryption work buffer.
const WORK_LEN: usize = 64 * 1024;

/// `GCMParameters` (RFC 5084 §3.2). `icvLen` has DEFAULT 12.
#[derive(Debug, Clone, Sequence)]
struct GcmParameters {
    nonce: OctetString,
    #[asn1(optional = "true")]
    icv_len: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Aes128Cbc,
    Aes192Cbc,
    Aes256Cbc,
    DesEde3Cbc,
    Aes128Gcm,
    Aes192Gcm,
    Aes256Gcm,
}

/// A parsed content-encryption algorithm with its parameters.
#[derive(Debug, Clone)]
pub(super) struct ContentAlg {
    kind: Kind,
    /// CBC IV or GCM nonce.
    iv: Vec<u8>,
    /// GCM tag length (`icvLen`).
    icv_len: usize,
}

impl ContentAlg {
    /// Parses `contentEncryptionAlgorithm`; `auth` says whether the container is
    /// AuthEnvelopedData (GCM only) or EnvelopedData (CBC only).
    pub(super) fn from_alg(alg: &AlgorithmIdentifierOwned, auth: bool) -> Result<Self, Error> {
        let kind = match alg.oid {
            oids::AES_128_CBC => Kind::Aes128Cbc,
            oids::AES_192_CBC => Kind::Aes192Cbc,
            oids::AES_256_CBC => Kind::Aes256Cbc,
            oids::DES_EDE3_CBC => Kind::DesEde3Cbc,
            oids::AES_128_GCM => Kind::Aes128Gcm,
            oids::AES_192_GCM => Kind::Aes192Gcm,
            oids::AES_256_GCM => Kind::Aes256Gcm,
            other => return Err(Error::UnsupportedAlgorithm(other)),
        };
        let gcm = matches!(kind, Kind::Aes128Gcm | Kind::Aes192Gcm | Kind::Aes256Gcm);
        if gcm && !auth {
            return Err(malformed(format!(
                "{} in EnvelopedData: AES-GCM belongs in AuthEnvelopedData (RFC 5084)",
                oid_name(&alg.oid)
            )));
        }
        if !gcm && auth {
            return Err(malformed(format!(
                "{} in AuthEnvelopedData: not an authenticated cipher",
                oid_name(&alg.oid)
            )));
        }
        let params = alg
            .parameters
            .as_ref()
            .ok_or_else(|| malformed(format!("{}: parameters missing", oid_name(&alg.oid))))?;
        let bad = |e: der::Error| malformed(format!("{} parameters: {e}", oid_name(&alg.oid)));
        if gcm {
            let p: GcmParameters = params.decode_as().map_err(bad)?;
            let nonce = p.nonce.as_bytes().to_vec();
            if nonce.is_empty() || nonce.len() > 256 {
                return Err(malformed(format!("AES-GCM nonce of {} bytes", nonce.len())));
            }
            let icv_len = usize::from(p.icv_len.unwrap_or(12));
            if !(12..=16).contains(&icv_len) {
                return Err(malformed(format!(
                    "AES-GCM icvLen {icv_len} (RFC 5084 allows 12 to 16)"
                )));
            }
            Ok(ContentAlg {
                kind,
                iv: nonce,
                icv_len,
            })
        } else {
            let iv: OctetString = params.decode_as().map_err(bad)?;
            let want = if kind == Kind::DesEde3Cbc { 8 } else { 16 };
            if iv.as_bytes().len() != want {
                return Err(malformed(format!(
                    "{}: IV of {} bytes, expected {want}",
                    oid_name(&alg.oid),
                    iv.as_bytes().len()
                )));
            }
            Ok(ContentAlg {
                kind,
                iv: iv.as_bytes().to_vec(),
                icv_len: 0,
            })
        }
    }

    /// Content-encryption key length in bytes.
    pub(super) fn key_len(&self) -> usize {
        match self.kind {
            Kind::Aes128Cbc | Kind::Aes128Gcm => 16,
            Kind::Aes192Cbc | Kind::Aes192Gcm | Kind::DesEde3Cbc => 24,
            Kind::Aes256Cbc | Kind::Aes256Gcm => 32,
        }
    }

    /// OpenSSL-style name, e.g. `aes-256-gcm`.
    pub(super) fn name(&self) -> &'static str {
        match self.kind {
            Kind::Aes128Cbc => "aes-128-cbc",
            Kind::Aes192Cbc => "aes-192-cbc",
            Kind::Aes256Cbc => "aes-256-cbc",
            Kind::DesEde3Cbc => "des-ede3-cbc",
            Kind::Aes128Gcm => "aes-128-gcm",
            Kind::Aes192Gcm => "aes-192-gcm",
            Kind::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// GCM tag length (0 for CBC).
    pub(super) fn icv_len(&self) -> usize {
        self.icv_len
    }

    /// A streaming decryptor under `cek`.
    pub(super) fn decryptor(&self, cek: &[u8]) -> Result<Box<dyn ContentDecrypt>, Error> {
        let wrong = |_| Error::WrongKey(format!("content key does not fit {}", self.name()));
        Ok(match self.kind {
            Kind::Aes128Cbc => Box::new(CbcStream::<Aes128>::new(
                cbc::Decryptor::new_from_slices(cek, &self.iv).map_err(wrong)?,
            )),
            Kind::Aes192Cbc => Box::new(CbcStream::<Aes192>::new(
                cbc::Decryptor::new_from_slices(cek, &self.iv).map_err(wrong)?,
            )),
            Kind::Aes256Cbc => Box::new(CbcStream::<Aes256>::new(
                cbc::Decryptor::new_from_slices(cek, &self.iv).map_err(wrong)?,
            )),
            Kind::DesEde3Cbc => Box::new(CbcStream::<des::TdesEde3>::new(
                cbc::Decryptor::new_from_slices(cek, &self.iv).map_err(wrong)?,
            )),
            Kind::Aes128Gcm => {
                Box::new(GcmStream::new(GcmDecryptor::<Aes128>::new(cek, &self.iv)?))
            }
            Kind::Aes192Gcm => {
                Box::new(GcmStream::new(GcmDecryptor::<Aes192>::new(cek, &self.iv)?))
            }
            Kind::Aes256Gcm => {
                Box::new(GcmStream::new(GcmDecryptor::<Aes256>::new(cek, &self.iv)?))
            }
        })
    }
}

/// A content decryptor fed with ciphertext pieces of any length.
pub(super) trait ContentDecrypt {
    /// Decrypts the next ciphertext piece, writing whatever plaintext is ready.
    fn update(&mut self, ciphertext: &[u8], out: &mut dyn Write) -> Result<(), Error>;
    /// Ends the content: CBC checks and strips the padding and writes the last block;
    /// GCM checks `mac` over `aad`.
    fn finish(self: Box<Self>, aad: &[u8], mac: &[u8], out: &mut dyn Write) -> Result<(), Error>;
}

/// CBC with PKCS#7 padding; the last full block is held back until the end.
struct CbcStream<C: BlockCipherDecrypt> {
    dec: cbc::Decryptor<C>,
    buf: Vec<u8>,
    /// Bytes of ciphertext buffered.
    len: usize,
}

impl<C: BlockCipherDecrypt> CbcStream<C> {
    fn new(dec: cbc::Decryptor<C>) -> Self {
        let bs = <C as BlockSizeUser>::block_size();
        CbcStream {
            dec,
            buf: vec![0u8; WORK_LEN + bs],
            len: 0,
        }
    }

    fn decrypt_in_place(&mut self, n: usize) {
        let data = self.buf.get_mut(..n).unwrap_or_default();
        let (blocks, _) = Array::<u8, C::BlockSize>::slice_as_chunks_mut(data);
        self.dec.decrypt_blocks(blocks);
    }
}

impl<C: BlockCipherDecrypt> ContentDecrypt for CbcStream<C> {
    fn update(&mut self, mut ciphertext: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        let bs = <C as BlockSizeUser>::block_size();
        while !ciphertext.is_empty() {
            let take = (self.buf.len() - self.len).min(ciphertext.len());
            let (head, tail) = ciphertext.split_at(take);
            if let Some(dst) = self.buf.get_mut(self.len..self.len + take) {
                dst.copy_from_slice(head);
            }
            self.len += take;
            ciphertext = tail;
            // Everything but the last block (which may carry the padding) is final.
            let ready = self.len.saturating_sub(1) / bs * bs;
            if ready > 0 {
                self.decrypt_in_place(ready);
                out.write_all(self.buf.get(..ready).unwrap_or_default())?;
                self.buf.copy_within(ready..self.len, 0);
                self.len -= ready;
            }
        }
        Ok(())
    }

    fn finish(
        mut self: Box<Self>,
        _aad: &[u8],
        _mac: &[u8],
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        let bs = <C as BlockSizeUser>::block_size();
        if self.len != bs {
            // Only a multiple of the block size can be left; 0 means no ciphertext at all.
            return Err(malformed(format!(
                "CBC ciphertext is not a positive multiple of the {bs}-byte block size"
            )));
        }
        self.decrypt_in_place(bs);
        let last = self.buf.get(..bs).unwrap_or_default();
        let pad = usize::from(last.last().copied().unwrap_or(0));
        let valid = (1..=bs).contains(&pad)
            && last
                .get(bs - pad..)
                .is_some_and(|p| p.iter().all(|b| usize::from(*b) == pad));
        if !valid {
            return Err(Error::BadPadding);
        }
        out.write_all(last.get(..bs - pad).unwrap_or_default())?;
        Ok(())
    }
}

/// AES-GCM: decrypts as it goes; the tag is checked at the end.
struct GcmStream<C>
where
    C: aes::cipher::BlockCipherEncrypt + BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
{
    gcm: GcmDecryptor<C>,
    buf: Vec<u8>,
}

impl<C> GcmStream<C>
where
    C: aes::cipher::BlockCipherEncrypt + BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
{
    fn new(gcm: GcmDecryptor<C>) -> Self {
        GcmStream {
            gcm,
            buf: vec![0u8; WORK_LEN],
        }
    }
}

impl<C> ContentDecrypt for GcmStream<C>
where
    C: aes::cipher::BlockCipherEncrypt + BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
{
    fn update(&mut self, ciphertext: &[u8], out: &mut dyn Write) -> Result<(), Error> {
        for piece in ciphertext.chunks(WORK_LEN) {
            let work = self.buf.get_mut(..piece.len()).unwrap_or_default();
            work.copy_from_slice(piece);
            self.gcm.decrypt(work)?;
            out.write_all(work)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>, aad: &[u8], mac: &[u8], _out: &mut dyn Write) -> Result<(), Error> {
        self.gcm.verify(aad, mac)
    }
}
