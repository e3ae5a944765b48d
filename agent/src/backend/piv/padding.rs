//! RSA padding on the host, for a card that only applies the raw private key (PIV).
//!
//! - Signatures: EMSA-PKCS1-v1_5 with the DigestInfo prefix (RFC 8017 §9.2) and EMSA-PSS
//!   with MGF1 of the same hash and a salt as long as the hash (§9.1.1).
//! - Decryption: RSAES-PKCS1-v1_5 (§7.2.2) and RSAES-OAEP (§7.1.2, in
//!   [`crate::backend::pkcs11::oaep`]) unpadding in constant time: the checks are combined
//!   without early exits, so the time taken does not tell which one failed.

use rand::Rng as _;
use rsa::pkcs1v15::Pkcs1v15Sign;
use sha2::Digest;
use sha2::digest::FixedOutputReset;
use smime_proto::{DecryptAlgorithm, SignAlgorithm};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq, ConstantTimeLess};
use zeroize::Zeroize;

use crate::backend::pkcs11::oaep;
use crate::error::AgentError;

/// The block the card signs raw, for a modulus of `bits` bits. `digest` has the length
/// the scheme wants (checked by the caller).
pub(crate) fn sign_block(
    alg: SignAlgorithm,
    digest: &[u8],
    bits: usize,
) -> Result<Vec<u8>, AgentError> {
    use SignAlgorithm::*;
    let k = bits.div_ceil(8);
    let block = match alg {
        RsaPkcs1Sha256 => pkcs1v15_block(&Pkcs1v15Sign::new::<sha2::Sha256>().prefix, digest, k),
        RsaPkcs1Sha384 => pkcs1v15_block(&Pkcs1v15Sign::new::<sha2::Sha384>().prefix, digest, k),
        RsaPkcs1Sha512 => pkcs1v15_block(&Pkcs1v15Sign::new::<sha2::Sha512>().prefix, digest, k),
        RsaPssSha256 => pss_block::<sha2::Sha256>(digest, bits - 1, &salt(32)),
        RsaPssSha384 => pss_block::<sha2::Sha384>(digest, bits - 1, &salt(48)),
        RsaPssSha512 => pss_block::<sha2::Sha512>(digest, bits - 1, &salt(64)),
        _ => None,
    };
    block.ok_or_else(|| {
        AgentError::UnsupportedAlgorithm(format!("{alg:?} does not fit a {bits}-bit RSA key"))
    })
}

fn salt(len: usize) -> Vec<u8> {
    let mut s = vec![0u8; len];
    rand::rng().fill_bytes(&mut s);
    s
}

/// EM = 00 || 01 || FF…FF || 00 || DigestInfo prefix || digest, `k` bytes.
fn pkcs1v15_block(prefix: &[u8], digest: &[u8], k: usize) -> Option<Vec<u8>> {
    let t_len = prefix.len() + digest.len();
    if k < t_len + 11 {
        return None;
    }
    let mut em = vec![0xff; k];
    em[0] = 0;
    em[1] = 1;
    em[k - t_len - 1] = 0;
    em[k - t_len..k - digest.len()].copy_from_slice(prefix);
    em[k - digest.len()..].copy_from_slice(digest);
    Some(em)
}

/// EMSA-PSS-ENCODE (RFC 8017 §9.1.1) of a message hash, for `em_bits` = modulus bits − 1.
/// The result is left-padded to the modulus length (one more byte when `em_bits` is a
/// multiple of 8).
fn pss_block<D: Digest + FixedOutputReset>(
    m_hash: &[u8],
    em_bits: usize,
    salt: &[u8],
) -> Option<Vec<u8>> {
    let h_len = <D as Digest>::output_size();
    let em_len = em_bits.div_ceil(8);
    if m_hash.len() != h_len || em_len < h_len + salt.len() + 2 {
        return None;
    }
    let mut d = D::new();
    Digest::update(&mut d, [0u8; 8]);
    Digest::update(&mut d, m_hash);
    Digest::update(&mut d, salt);
    let h = d.finalize_reset();
    let mut em = vec![0u8; em_len];
    let db_len = em_len - h_len - 1;
    // DB = PS || 0x01 || salt
    em[db_len - salt.len() - 1] = 0x01;
    em[db_len - salt.len()..db_len].copy_from_slice(salt);
    oaep::mgf1_xor::<D>(&mut em[..db_len], &h);
    em[0] &= 0xff >> (8 * em_len - em_bits);
    em[db_len..em_len - 1].copy_from_slice(&h);
    em[em_len - 1] = 0xbc;
    // The card wants a block of the modulus length.
    let k = (em_bits + 1).div_ceil(8);
    let mut block = vec![0u8; k - em_len];
    block.extend_from_slice(&em);
    Some(block)
}

/// Removes the encryption padding from the raw RSA output `em` (`k` bytes). `None` if the
/// padding is invalid; `em` is wiped either way.
pub(crate) fn unpad(alg: DecryptAlgorithm, em: Vec<u8>, k: usize) -> Option<Vec<u8>> {
    match alg {
        DecryptAlgorithm::RsaPkcs1 => pkcs1v15_unpad(em, k),
        DecryptAlgorithm::RsaOaepSha1 => oaep::decode::<sha1::Sha1>(em, k),
        DecryptAlgorithm::RsaOaepSha256 => oaep::decode::<sha2::Sha256>(em, k),
        DecryptAlgorithm::RsaOaepSha384 => oaep::decode::<sha2::Sha384>(em, k),
        DecryptAlgorithm::RsaOaepSha512 => oaep::decode::<sha2::Sha512>(em, k),
        _ => {
            let mut em = em;
            em.zeroize();
            None
        }
    }
}

/// RSAES-PKCS1-v1_5 decoding (RFC 8017 §7.2.2 step 3) in constant time:
/// EM = 0x00 || 0x02 || PS (at least 8 non-zero bytes) || 0x00 || M.
pub(crate) fn pkcs1v15_unpad(mut em: Vec<u8>, k: usize) -> Option<Vec<u8>> {
    if em.len() != k || k < 11 {
        em.zeroize();
        return None;
    }
    let first_is_zero = em[0].ct_eq(&0);
    let second_is_two = em[1].ct_eq(&2);
    // The index of the first zero byte after the two header bytes.
    let mut looking = Choice::from(1);
    let mut index = 0u32;
    for (i, b) in em.iter().enumerate().skip(2) {
        let is0 = b.ct_eq(&0);
        index.conditional_assign(&(i as u32), looking & is0);
        looking &= !is0;
    }
    // PS is em[2..index] and must be at least 8 bytes: index >= 10.
    let ps_long_enough = !index.ct_lt(&10);
    let valid = first_is_zero & second_is_two & !looking & ps_long_enough;
    let out = em.get(index as usize + 1..).map(<[u8]>::to_vec);
    em.zeroize();
    if bool::from(valid) { out } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap()
            .status
            .success()
    }

    fn key(dir: &std::path::Path) {
        assert!(openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "k.pem",
            ],
        ));
    }

    /// Applies the private key raw, as the card does (an unpadded "decryption" is the
    /// same operation as an unpadded signature: x^d mod n).
    fn raw_private(dir: &std::path::Path, input: &[u8]) -> Vec<u8> {
        std::fs::write(dir.join("raw.in"), input).unwrap();
        assert!(openssl(
            dir,
            &[
                "pkeyutl",
                "-decrypt",
                "-inkey",
                "k.pem",
                "-in",
                "raw.in",
                "-out",
                "raw.out",
                "-pkeyopt",
                "rsa_padding_mode:none",
            ],
        ));
        std::fs::read(dir.join("raw.out")).unwrap()
    }

    /// Our blocks, signed raw, verify with OpenSSL's PKCS#1 v1.5 and PSS verifiers; a
    /// signature over another digest does not.
    #[test]
    fn signature_blocks_verify_with_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        key(d);
        let digest = sha2::Sha256::digest(b"signed content").to_vec();
        std::fs::write(d.join("digest"), &digest).unwrap();
        let cases: [(SignAlgorithm, &[&str]); 2] = [
            (
                SignAlgorithm::RsaPkcs1Sha256,
                &["-pkeyopt", "rsa_padding_mode:pkcs1"],
            ),
            (
                SignAlgorithm::RsaPssSha256,
                &[
                    "-pkeyopt",
                    "rsa_padding_mode:pss",
                    "-pkeyopt",
                    "rsa_pss_saltlen:32",
                    "-pkeyopt",
                    "rsa_mgf1_md:sha256",
                ],
            ),
        ];
        for (alg, opts) in cases {
            let block = sign_block(alg, &digest, 2048).unwrap();
            assert_eq!(block.len(), 256);
            let sig = raw_private(d, &block);
            std::fs::write(d.join("sig"), &sig).unwrap();
            let mut args = vec![
                "pkeyutl",
                "-verify",
                "-inkey",
                "k.pem",
                "-in",
                "digest",
                "-sigfile",
                "sig",
                "-pkeyopt",
                "digest:sha256",
            ];
            args.extend_from_slice(opts);
            assert!(openssl(d, &args), "{alg:?} does not verify");
            let mut other = digest.clone();
            other[0] ^= 1;
            std::fs::write(d.join("digest"), &other).unwrap();
            assert!(!openssl(d, &args), "{alg:?} verifies another digest");
            std::fs::write(d.join("digest"), &digest).unwrap();
        }
        // A PSS block for SHA-512 needs room: a 512-bit key has none.
        assert!(sign_block(SignAlgorithm::RsaPssSha512, &[0; 64], 512).is_err());
    }

    /// OpenSSL encrypts with PKCS#1 v1.5 padding; the raw decryption unpads to the
    /// message; any change to the header or the separator is refused.
    #[test]
    fn pkcs1v15_unpad_takes_what_openssl_pads_and_refuses_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        key(d);
        let msg = b"content key, 32 bytes long......";
        std::fs::write(d.join("m"), msg).unwrap();
        assert!(openssl(
            d,
            &[
                "pkeyutl",
                "-encrypt",
                "-inkey",
                "k.pem",
                "-in",
                "m",
                "-out",
                "c",
                "-pkeyopt",
                "rsa_padding_mode:pkcs1",
            ],
        ));
        let c = std::fs::read(d.join("c")).unwrap();
        let mut em = raw_private(d, &c);
        let k = 256;
        while em.len() < k {
            em.insert(0, 0);
        }
        assert_eq!(pkcs1v15_unpad(em.clone(), k).unwrap(), msg);
        assert_eq!(
            unpad(DecryptAlgorithm::RsaPkcs1, em.clone(), k).unwrap(),
            msg
        );
        assert!(
            unpad(DecryptAlgorithm::RsaOaepSha256, em.clone(), k).is_none(),
            "a PKCS#1 v1.5 block is no OAEP block"
        );
        let sep = k - msg.len() - 1;
        assert_eq!(em[sep], 0);
        for (i, v) in [(0, 1), (1, 1), (sep, 7)] {
            let mut bad = em.clone();
            bad[i] = v;
            let out = pkcs1v15_unpad(bad, k);
            assert_ne!(out.as_deref(), Some(&msg[..]), "change at {i}");
        }
        // A zero inside the first 8 bytes of PS makes it too short.
        let mut short = em.clone();
        short[5] = 0;
        assert!(pkcs1v15_unpad(short, k).is_none());
        // No separator at all.
        let mut none = em.clone();
        for b in &mut none[2..] {
            if *b == 0 {
                *b = 1;
            }
        }
        assert!(pkcs1v15_unpad(none, k).is_none());
        assert!(
            pkcs1v15_unpad(em[1..].to_vec(), k).is_none(),
            "wrong length"
        );
    }
}
