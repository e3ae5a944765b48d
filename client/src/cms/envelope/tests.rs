//! Tests for CMS encryption, with OpenSSL as the judge: everything [`encrypt`] writes
//! must decrypt with `openssl cms -decrypt`. Recipient keys and certificates come from
//! `openssl req -x509` (generated once per test process). `openssl` must be on PATH.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::sync::OnceLock;

use aes::{Aes128, Aes256};
use aes_gcm::aead::Aead as _;
use aes_gcm::aead::KeyInit as _;
use der::DecodePem as _;
use rand::Rng as _;
use x509_cert::Certificate;

use super::super::ber::Tlv;
use super::gcm::GcmStream;
use super::{ContentCipher, ENCRYPT_CHUNK, Recipient, RsaKeyTransport, encrypt};
use crate::cms::Error;

// ---------------------------------------------------------------------------------------
// Fixtures

/// A recipient key pair made by OpenSSL, kept as PEM.
#[derive(Debug)]
struct KeyPair {
    name: &'static str,
    cert_pem: String,
    key_pem: String,
    cert: Certificate,
}

#[derive(Debug)]
struct Keys {
    rsa: [KeyPair; 3],
    p256: KeyPair,
    p384: KeyPair,
    p521: KeyPair,
    ed25519: KeyPair,
}

fn gen_key(dir: &Path, name: &'static str, newkey: &[&str]) -> KeyPair {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let mut args = vec!["req", "-x509", "-nodes", "-batch", "-days", "2"];
    args.extend_from_slice(newkey);
    let subj = format!("/CN=envelope test {name}");
    args.extend_from_slice(&["-subj", &subj]);
    args.extend_from_slice(&[
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    let out = Command::new("openssl").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl req for {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert_pem = fs::read_to_string(&cert).unwrap();
    KeyPair {
        name,
        key_pem: fs::read_to_string(&key).unwrap(),
        cert: Certificate::from_pem(cert_pem.as_bytes()).unwrap(),
        cert_pem,
    }
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let rsa = ["-newkey", "rsa:2048"];
        let ec = |curve| ["-newkey", "ec", "-pkeyopt", curve];
        Keys {
            rsa: [
                gen_key(d, "rsa1", &rsa),
                gen_key(d, "rsa2", &rsa),
                gen_key(d, "rsa3", &rsa),
            ],
            p256: gen_key(d, "p256", &ec("ec_paramgen_curve:P-256")),
            p384: gen_key(d, "p384", &ec("ec_paramgen_curve:P-384")),
            p521: gen_key(d, "p521", &ec("ec_paramgen_curve:P-521")),
            ed25519: gen_key(d, "ed25519", &["-newkey", "ed25519"]),
        }
    })
}

/// The five recipient kinds: RSA with each key transport, P-256, P-384.
fn recipient_kinds() -> Vec<(&'static KeyPair, Recipient)> {
    let k = keys();
    let with = |kp: &'static KeyPair, rsa| {
        (
            kp,
            Recipient {
                cert: kp.cert.clone(),
                rsa,
            },
        )
    };
    vec![
        with(&k.rsa[0], RsaKeyTransport::Pkcs1v15),
        with(&k.rsa[1], RsaKeyTransport::OaepSha256),
        with(&k.rsa[2], RsaKeyTransport::OaepSha1),
        with(&k.p256, RsaKeyTransport::default()),
        with(&k.p384, RsaKeyTransport::default()),
    ]
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
}

fn encrypt_vec(pt: &[u8], recipients: &[Recipient], cipher: ContentCipher) -> Vec<u8> {
    let mut out = Vec::new();
    encrypt(pt, &mut out, recipients, cipher).unwrap();
    out
}

/// `openssl cms -decrypt` with `kp`'s certificate and key; the plaintext or OpenSSL's stderr.
fn openssl_decrypt(ct: &[u8], kp: &KeyPair) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    fs::write(p("ct.der"), ct).unwrap();
    fs::write(p("cert.pem"), &kp.cert_pem).unwrap();
    fs::write(p("key.pem"), &kp.key_pem).unwrap();
    let out = Command::new("openssl")
        .args(["cms", "-decrypt", "-inform", "DER", "-in"])
        .arg(p("ct.der"))
        .arg("-recip")
        .arg(p("cert.pem"))
        .arg("-inkey")
        .arg(p("key.pem"))
        .arg("-out")
        .arg(p("pt"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(fs::read(p("pt")).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn assert_openssl_decrypts(ct: &[u8], kp: &KeyPair, pt: &[u8], what: &str) {
    match openssl_decrypt(ct, kp) {
        Ok(got) => assert!(
            got == pt,
            "{what}: OpenSSL with {} decrypted {} bytes, expected {}",
            kp.name,
            got.len(),
            pt.len()
        ),
        Err(e) => panic!("{what}: OpenSSL with {} failed: {e}", kp.name),
    }
}

// ---------------------------------------------------------------------------------------
// Streaming GCM against aes-gcm's one-shot implementation

fn gcm_stream<C>(key: &[u8], nonce: &[u8; 12], pt: &[u8], pieces: &[usize]) -> Vec<u8>
where
    C: aes::cipher::BlockCipherEncrypt
        + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>
        + aes::cipher::KeyInit,
{
    let mut g = GcmStream::<C>::new(key, nonce).unwrap();
    let mut data = pt.to_vec();
    let mut rest: &mut [u8] = &mut data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = pieces
            .get(i % pieces.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .min(rest.len());
        let (head, tail) = rest.split_at_mut(n);
        g.encrypt(head).unwrap();
        rest = tail;
        i += 1;
    }
    let tag = g.finish();
    data.extend_from_slice(&tag);
    data
}

#[test]
fn gcm_stream_matches_aes_gcm_one_shot() {
    let lengths = [
        0usize,
        1,
        15,
        16,
        17,
        31,
        32,
        33,
        255,
        4096,
        65_537,
        (1 << 20) + 3,
    ];
    let patterns: [&[usize]; 6] = [&[], &[1], &[7], &[16], &[5, 16, 33, 1, 64], &[65_536]];
    for len in lengths {
        let pt = random(len);
        let nonce: [u8; 12] = random(12).try_into().unwrap();
        let key128 = random(16);
        let key256 = random(32);
        let want128 = aes_gcm::Aes128Gcm::new_from_slice(&key128)
            .unwrap()
            .encrypt(&nonce.into(), pt.as_slice())
            .unwrap();
        let want256 = aes_gcm::Aes256Gcm::new_from_slice(&key256)
            .unwrap()
            .encrypt(&nonce.into(), pt.as_slice())
            .unwrap();
        for pieces in patterns {
            // Byte-at-a-time over 1 MiB is slow in debug builds and adds nothing.
            if pieces == [1] && len > 70_000 {
                continue;
            }
            assert_eq!(
                gcm_stream::<Aes128>(&key128, &nonce, &pt, pieces),
                want128,
                "AES-128-GCM, length {len}, pieces {pieces:?}"
            );
            assert_eq!(
                gcm_stream::<Aes256>(&key256, &nonce, &pt, pieces),
                want256,
                "AES-256-GCM, length {len}, pieces {pieces:?}"
            );
        }
    }
}

#[test]
fn gcm_stream_known_answer() {
    // McGrew & Viega, "The Galois/Counter Mode of Operation", test case 2.
    let key = [0u8; 16];
    let nonce = [0u8; 12];
    let ct = gcm_stream::<Aes128>(&key, &nonce, &[0u8; 16], &[]);
    assert_eq!(
        hex::encode(ct),
        "0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf"
    );
}

// ---------------------------------------------------------------------------------------
// OpenSSL decrypts what we write

#[test]
fn every_cipher_and_recipient_kind_decrypts_with_openssl() {
    let pt = random(1000);
    for cipher in ContentCipher::ALL {
        for (kp, r) in recipient_kinds() {
            let what = format!("{cipher} for {} ({:?})", kp.name, r.rsa);
            let ct = encrypt_vec(&pt, std::slice::from_ref(&r), cipher);
            assert_openssl_decrypts(&ct, kp, &pt, &what);
        }
    }
}

#[test]
fn many_recipients_at_once_each_decrypts() {
    let pt = random(70_000);
    let kinds = recipient_kinds();
    let recipients: Vec<Recipient> = kinds.iter().map(|(_, r)| r.clone()).collect();
    for cipher in ContentCipher::ALL {
        let ct = encrypt_vec(&pt, &recipients, cipher);
        for (kp, _) in &kinds {
            assert_openssl_decrypts(&ct, kp, &pt, &format!("{cipher}, five recipients"));
        }
    }
}

#[test]
fn sizes_around_block_and_chunk_boundaries_decrypt() {
    let k = keys();
    let c = ENCRYPT_CHUNK;
    let sizes = [
        0,
        1,
        15,
        16,
        17,
        31,
        32,
        c - 1,
        c,
        c + 1,
        2 * c,
        2 * c + 15,
        5 << 20,
    ];
    let cases = [
        (
            ContentCipher::Aes128Gcm,
            &k.rsa[0],
            RsaKeyTransport::Pkcs1v15,
        ),
        (ContentCipher::Aes256Cbc, &k.p256, RsaKeyTransport::Pkcs1v15),
        (
            ContentCipher::Aes128Cbc,
            &k.rsa[1],
            RsaKeyTransport::OaepSha256,
        ),
        (ContentCipher::Aes256Gcm, &k.p384, RsaKeyTransport::Pkcs1v15),
    ];
    for (cipher, kp, rsa) in cases {
        let r = Recipient {
            cert: kp.cert.clone(),
            rsa,
        };
        for size in sizes {
            let pt = random(size);
            let ct = encrypt_vec(&pt, std::slice::from_ref(&r), cipher);
            assert_openssl_decrypts(&ct, kp, &pt, &format!("{cipher}, {size} bytes"));
        }
    }
}

#[test]
fn openssl_rejects_tampered_gcm_content() {
    let k = keys();
    let pt = random(100);
    let r = Recipient::new(k.rsa[0].cert.clone());
    let mut ct = encrypt_vec(&pt, std::slice::from_ref(&r), ContentCipher::Aes128Gcm);
    assert_openssl_decrypts(&ct, &k.rsa[0], &pt, "untampered");
    // The encrypted content ends 2 (its EOC) + 2 (ECI EOC) + 18 (mac) + 6 (EOCs) bytes
    // before the end; flip a bit in its last byte.
    let pos = ct.len() - 6 - 18 - 2 - 2 - 1;
    if let Some(b) = ct.get_mut(pos) {
        *b ^= 1;
    }
    assert!(
        openssl_decrypt(&ct, &k.rsa[0]).is_err(),
        "tampered GCM content was accepted"
    );
}

// ---------------------------------------------------------------------------------------
// Structure

/// (content type, version, the RecipientInfos, content-encryption AlgId, chunks, mac).
struct Parsed {
    content_type: Vec<u8>,
    version: u8,
    recipient_infos: Vec<Vec<u8>>,
    content_alg: Vec<u8>,
    chunk_lens: Vec<usize>,
    mac: Option<Vec<u8>>,
}

fn parse(ct: &[u8]) -> Parsed {
    let ci = Tlv::parse_exact(ct).unwrap();
    assert_eq!(
        ci.raw.get(..2),
        Some(&[0x30, 0x80][..]),
        "ContentInfo is indefinite"
    );
    let [oid, explicit] = ci.children().unwrap()[..] else {
        panic!("ContentInfo fields")
    };
    let ed = explicit.children().unwrap()[0];
    let fields = ed.children().unwrap();
    let version = fields[0].expect(0x02, "version").unwrap().value[0];
    let ris = fields[1].expect(0x31, "recipientInfos").unwrap();
    let eci = fields[2].expect(0x30, "encryptedContentInfo").unwrap();
    let [ctype, alg, content] = eci.children().unwrap()[..] else {
        panic!("ECI fields")
    };
    assert_eq!(ctype.value, const_oid::db::rfc5911::ID_DATA.as_bytes());
    assert_eq!(content.tag, 0xA0);
    assert_eq!(content.raw[1], 0x80, "encryptedContent is indefinite");
    let chunk_lens = content
        .children()
        .unwrap()
        .iter()
        .map(|c| c.expect(0x04, "chunk").unwrap().value.len())
        .collect();
    let mac = fields
        .get(3)
        .map(|m| m.expect(0x04, "mac").unwrap().value.to_vec());
    Parsed {
        content_type: oid.value.to_vec(),
        version,
        recipient_infos: ris
            .children()
            .unwrap()
            .iter()
            .map(|r| r.raw.to_vec())
            .collect(),
        content_alg: alg.raw.to_vec(),
        chunk_lens,
        mac,
    }
}

#[test]
fn versions_chunks_and_parameters() {
    use der::{Decode as _, Encode as _};
    let k = keys();
    let rsa = Recipient::new(k.rsa[0].cert.clone());
    let ec = Recipient::new(k.p256.cert.clone());
    let pt = random(2 * ENCRYPT_CHUNK + 5);

    // EnvelopedData: v0 with only KTRI v0, v2 as soon as there is a KARI.
    let p = parse(&encrypt_vec(
        &pt,
        std::slice::from_ref(&rsa),
        ContentCipher::Aes128Cbc,
    ));
    assert_eq!(
        p.content_type,
        const_oid::db::rfc5911::ID_ENVELOPED_DATA.as_bytes()
    );
    assert_eq!(p.version, 0);
    assert_eq!(p.chunk_lens, vec![ENCRYPT_CHUNK, ENCRYPT_CHUNK, 16]);
    assert!(p.mac.is_none());
    let alg = spki::AlgorithmIdentifierOwned::from_der(&p.content_alg).unwrap();
    assert_eq!(alg.oid, const_oid::db::rfc5911::ID_AES_128_CBC);
    assert_eq!(alg.parameters.unwrap().value().len(), 16, "CBC IV");

    let p = parse(&encrypt_vec(
        &pt,
        &[rsa.clone(), ec.clone()],
        ContentCipher::Aes256Cbc,
    ));
    assert_eq!(p.version, 2);
    assert_eq!(p.recipient_infos.len(), 2);

    // AuthEnvelopedData: always v0; GCMParameters {12-byte nonce, icvLen 16}; 16-byte mac.
    let p = parse(&encrypt_vec(&pt, &[rsa, ec], ContentCipher::Aes256Gcm));
    assert_eq!(
        p.content_type,
        const_oid::db::rfc5911::ID_CT_AUTH_ENVELOPED_DATA.as_bytes()
    );
    assert_eq!(p.version, 0);
    assert_eq!(p.chunk_lens, vec![ENCRYPT_CHUNK, ENCRYPT_CHUNK, 5]);
    assert_eq!(p.mac.map(|m| m.len()), Some(16));
    let alg = spki::AlgorithmIdentifierOwned::from_der(&p.content_alg).unwrap();
    assert_eq!(alg.oid, const_oid::db::rfc5911::ID_AES_256_GCM);
    let params = alg.parameters.unwrap().to_der().unwrap();
    assert_eq!(params.len(), 2 + 14 + 3);
    assert_eq!(&params[..4], &[0x30, 17, 0x04, 12]);
    assert_eq!(&params[16..], &[0x02, 0x01, 16]);

    // Empty GCM content: one empty piece.
    let p = parse(&encrypt_vec(
        &[],
        &[Recipient::new(k.p384.cert.clone())],
        ContentCipher::Aes128Gcm,
    ));
    assert_eq!(p.chunk_lens, vec![0]);
}

#[test]
fn key_transport_and_agreement_parameters() {
    use cms::enveloped_data::{OriginatorIdentifierOrKey, RecipientInfo};
    use der::{Decode as _, Encode as _};
    let kinds = recipient_kinds();
    let recipients: Vec<Recipient> = kinds.iter().map(|(_, r)| r.clone()).collect();
    let p = parse(&encrypt_vec(b"x", &recipients, ContentCipher::Aes256Gcm));
    let mut seen = Vec::new();
    for raw in &p.recipient_infos {
        match RecipientInfo::from_der(raw).unwrap() {
            RecipientInfo::Ktri(k) => {
                assert_eq!(k.version, cms::content_info::CmsVersion::V0);
                let params = k.key_enc_alg.parameters.unwrap().to_der().unwrap();
                seen.push(format!("{} {}", k.key_enc_alg.oid, hex::encode(params)));
            }
            RecipientInfo::Kari(k) => {
                assert_eq!(k.version, cms::content_info::CmsVersion::V3);
                assert!(k.ukm.is_none());
                let OriginatorIdentifierOrKey::OriginatorKey(o) = k.originator else {
                    panic!("originator must be originatorKey")
                };
                assert_eq!(o.algorithm.oid, const_oid::db::rfc5912::ID_EC_PUBLIC_KEY);
                assert!(o.algorithm.parameters.is_none());
                assert_eq!(o.public_key.raw_bytes()[0], 0x04, "uncompressed point");
                let wrap = k.key_enc_alg.parameters.unwrap().to_der().unwrap();
                assert_eq!(k.recipient_enc_keys[0].enc_key.as_bytes().len(), 40);
                seen.push(format!(
                    "{} {} {}",
                    k.key_enc_alg.oid,
                    hex::encode(wrap),
                    o.public_key.raw_bytes().len()
                ));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    let want = [
        // dhSinglePass-stdDH-sha256kdf-scheme / sha384kdf, params id-aes256-wrap
        // (2.16.840.1.101.3.4.1.45, parameters absent); uncompressed point lengths
        "1.3.132.1.11.1 300b060960864801650304012d 65",
        "1.3.132.1.11.2 300b060960864801650304012d 97",
        // rsaEncryption, NULL
        "1.2.840.113549.1.1.1 0500",
        // id-RSAES-OAEP: SHA-1 defaults as an empty SEQUENCE
        "1.2.840.113549.1.1.7 3000",
        // id-RSAES-OAEP: [0] sha256 NULL, [1] mgf1(sha256 NULL)
        "1.2.840.113549.1.1.7 302fa00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500",
    ];
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn kari_uses_aes128_wrap_for_aes128_content() {
    use cms::enveloped_data::RecipientInfo;
    use der::{Decode as _, Encode as _};
    let k = keys();
    let p = parse(&encrypt_vec(
        b"x",
        &[Recipient::new(k.p384.cert.clone())],
        ContentCipher::Aes128Cbc,
    ));
    let RecipientInfo::Kari(kari) = RecipientInfo::from_der(&p.recipient_infos[0]).unwrap() else {
        panic!("KARI expected")
    };
    let wrap = kari.key_enc_alg.parameters.unwrap().to_der().unwrap();
    // id-aes128-wrap (2.16.840.1.101.3.4.1.5), parameters absent.
    assert_eq!(hex::encode(wrap), "300b0609608648016503040105");
    assert_eq!(kari.recipient_enc_keys[0].enc_key.as_bytes().len(), 24);
}

// ---------------------------------------------------------------------------------------
// Errors

#[test]
fn errors() {
    let k = keys();
    let mut out = Vec::new();
    assert!(matches!(
        encrypt(&b"x"[..], &mut out, &[], ContentCipher::default()),
        Err(Error::InvalidRequest(_))
    ));
    for kp in [&k.p521, &k.ed25519] {
        let mut out = Vec::new();
        let err = encrypt(
            &b"x"[..],
            &mut out,
            &[Recipient::new(kp.cert.clone())],
            ContentCipher::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedAlgorithm(_)),
            "{}: {err}",
            kp.name
        );
        assert!(
            out.is_empty(),
            "nothing is written before recipients are checked"
        );
    }
    // Read errors come back as Error::Io.
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("boom"))
        }
    }
    let r = Recipient::new(k.rsa[0].cert.clone());
    assert!(matches!(
        encrypt(Failing, io::sink(), &[r], ContentCipher::default()),
        Err(Error::Io(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Constant memory

/// Yields `remaining` pseudo-random bytes without holding them; records the output
/// position seen each time it is read from.
struct Source {
    remaining: u64,
    state: u64,
    read_so_far: Rc<Cell<u64>>,
    written: Rc<Cell<u64>>,
    max_lag: Rc<Cell<u64>>,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining).min(100_000) as usize;
        for b in buf.iter_mut().take(n) {
            // xorshift64
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        self.remaining -= n as u64;
        let read = self.read_so_far.get() + n as u64;
        self.read_so_far.set(read);
        // How far the output trails the input: bounded if nothing buffers the content.
        let lag = read.saturating_sub(self.written.get());
        self.max_lag.set(self.max_lag.get().max(lag));
        Ok(n)
    }
}

/// Counts bytes; keeps nothing.
struct CountingSink {
    written: Rc<Cell<u64>>,
    largest_write: usize,
}

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.set(self.written.get() + buf.len() as u64);
        self.largest_write = self.largest_write.max(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn stream_through(len: u64, cipher: ContentCipher) -> (u64, u64, usize) {
    let k = keys();
    let written = Rc::new(Cell::new(0));
    let max_lag = Rc::new(Cell::new(0));
    let src = Source {
        remaining: len,
        state: 0x9E37_79B9_7F4A_7C15,
        read_so_far: Rc::new(Cell::new(0)),
        written: written.clone(),
        max_lag: max_lag.clone(),
    };
    let mut sink = CountingSink {
        written: written.clone(),
        largest_write: 0,
    };
    let r = Recipient::new(k.p256.cert.clone());
    encrypt(src, &mut sink, &[r], cipher).unwrap();
    (written.get(), max_lag.get(), sink.largest_write)
}

#[test]
fn output_follows_input_chunk_by_chunk() {
    // 8 MiB through a reader that notes how far the output trails: with nothing buffering
    // the whole input the lag stays within one chunk (plus the header written up front).
    for cipher in [ContentCipher::Aes128Gcm, ContentCipher::Aes256Cbc] {
        let (written, max_lag, largest) = stream_through(8 << 20, cipher);
        assert!(written > 8 << 20, "{cipher}: wrote {written}");
        assert!(
            max_lag <= ENCRYPT_CHUNK as u64,
            "{cipher}: output trailed input by {max_lag}"
        );
        assert!(
            largest <= ENCRYPT_CHUNK + 16,
            "{cipher}: a write of {largest} bytes"
        );
    }
}

/// 256 MiB through `encrypt` into a counting sink, checking the process's peak RSS.
/// Slow in debug builds: `cargo test -p smime --release envelope -- --ignored`.
#[test]
#[ignore = "256 MiB; run with --release -- --ignored"]
fn constant_memory_256_mib() {
    let peak_kib = || -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let before = peak_kib();
    let len = 256u64 << 20;
    for cipher in [ContentCipher::Aes256Gcm, ContentCipher::Aes128Cbc] {
        let (written, max_lag, _) = stream_through(len, cipher);
        assert!(written > len);
        assert!(max_lag <= ENCRYPT_CHUNK as u64);
    }
    let after = peak_kib();
    assert!(after > 0, "VmHWM not readable");
    let grew_mib = after.saturating_sub(before) / 1024;
    eprintln!("peak RSS {before} kB before, {after} kB after 2 x 256 MiB");
    // Other tests may run in the same process; 256 MiB of input must not show up.
    assert!(grew_mib < 64, "peak RSS grew by {grew_mib} MiB");
}
