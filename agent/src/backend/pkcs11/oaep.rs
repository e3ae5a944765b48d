//! OAEP decoding on the host, for tokens that decrypt raw RSA (CKM_RSA_X_509) but lack
//! CKM_RSA_PKCS_OAEP with SHA-2 (SoftHSM 2.6 has OAEP with SHA-1 only).
//!
//! RFC 8017 §7.1.2 step 3, written in constant time: the checks on the encoded message
//! are combined without early exits, so the timing does not say which check failed.
//! Adapted from the `rsa` crate's `algorithms/oaep.rs` (MIT/Apache-2.0), whose decoder is
//! not public.
//!
//! A client that can talk to the agent may ask it to decrypt anything with the user's
//! key, so the error/success distinction is no oracle beyond what the socket already
//! grants; the constant-time code keeps timing from leaking more than that.

use sha2::Digest;
use sha2::digest::FixedOutputReset;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// MGF1 (RFC 8017 B.2.1): XORs `out` with the mask generated from `seed`.
pub(crate) fn mgf1_xor<D: Digest + FixedOutputReset>(out: &mut [u8], seed: &[u8]) {
    let mut d = D::new();
    for (counter, chunk) in out.chunks_mut(<D as Digest>::output_size()).enumerate() {
        Digest::update(&mut d, seed);
        Digest::update(&mut d, (counter as u32).to_be_bytes());
        let mask = d.finalize_reset();
        for (o, m) in chunk.iter_mut().zip(mask.iter()) {
            *o ^= m;
        }
    }
}

/// Decodes `em` (the raw RSA output, left-padded to the modulus length `k`) with hash
/// and MGF1 hash `D` and an empty label. Returns the message, or `None` if the encoding
/// is invalid.
pub(crate) fn decode<D: Digest + FixedOutputReset>(mut em: Vec<u8>, k: usize) -> Option<Vec<u8>> {
    let h = <D as Digest>::output_size();
    if em.len() != k || k < 2 * h + 2 {
        return None;
    }
    let label_hash = D::digest([]);
    let first_is_zero = em[0].ct_eq(&0);
    let (seed, db) = em[1..].split_at_mut(h);
    mgf1_xor::<D>(seed, db);
    mgf1_xor::<D>(db, seed);
    let hash_ok = db[..h].ct_eq(&label_hash);
    // DB = lHash || PS (zero bytes) || 0x01 || M
    let mut looking = Choice::from(1);
    let mut index = 0u32;
    let mut nonzero_before_one = Choice::from(0);
    for (i, b) in db[h..].iter().enumerate() {
        let is0 = b.ct_eq(&0);
        let is1 = b.ct_eq(&1);
        index.conditional_assign(&(i as u32), looking & is1);
        looking &= !is1;
        nonzero_before_one |= looking & !is0;
    }
    let valid = first_is_zero & hash_ok & !nonzero_before_one & !looking;
    let start = 1 + h + h + index as usize + 1;
    let out = em.get(start..).map(<[u8]>::to_vec);
    em.fill(0);
    if bool::from(valid) { out } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(dir: &std::path::Path, args: &[&str]) {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(st.success(), "openssl {args:?}");
    }

    /// OpenSSL encodes (OAEP SHA-256) and decrypts raw, as CKM_RSA_X_509 would; we unpad.
    #[test]
    fn decodes_what_openssl_encodes_and_rejects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m"), b"content key 32 bytes long.......").unwrap();
        openssl(
            dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
                "-out",
                "k.pem",
            ],
        );
        openssl(
            dir.path(),
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
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha256",
                "-pkeyopt",
                "rsa_mgf1_md:sha256",
            ],
        );
        openssl(
            dir.path(),
            &[
                "pkeyutl",
                "-decrypt",
                "-inkey",
                "k.pem",
                "-in",
                "c",
                "-out",
                "em",
                "-pkeyopt",
                "rsa_padding_mode:none",
            ],
        );
        let em = std::fs::read(dir.path().join("em")).unwrap();
        let k = em.len();
        assert_eq!(k, 128);
        assert_eq!(
            decode::<sha2::Sha256>(em.clone(), k).unwrap(),
            b"content key 32 bytes long......."
        );
        assert!(decode::<sha1::Sha1>(em.clone(), k).is_none(), "wrong hash");
        for i in [0, 5, 40, 70, k - 1] {
            let mut bad = em.clone();
            bad[i] ^= 0x01;
            assert!(decode::<sha2::Sha256>(bad, k).is_none(), "flip at {i}");
        }
        assert!(
            decode::<sha2::Sha256>(em[1..].to_vec(), k).is_none(),
            "wrong length"
        );
    }
}
