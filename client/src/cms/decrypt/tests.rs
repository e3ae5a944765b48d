//! Tests for CMS decryption, with OpenSSL as the peer: `openssl cms -encrypt` produces
//! the messages, a software [`KeyUnwrapper`] (the `rsa` crate, p256/p384 ECDH) stands in
//! for the agent. Keys and certificates come from `openssl req -x509`, generated once per
//! test process. `openssl` must be on PATH.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use cms::authenveloped_data::AuthEnvelopedData;
use cms::content_info::ContentInfo;
use cms::enveloped_data::{
    EnvelopedData, KeyAgreeRecipientIdentifier, RecipientEncryptedKey, RecipientInfo,
    RecipientInfos,
};
use const_oid::ObjectIdentifier;
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Decode as _, DecodePem as _, Encode as _};
use p256::elliptic_curve::point::AffineCoordinates as _;
use rand::{Rng as _, RngExt as _};
use rsa::pkcs8::DecodePrivateKey as _;
use smime_proto::{DecryptAlgorithm, SecretBytes};
use x509_cert::Certificate;

use super::gcm::GcmDecryptor;
use super::{Decrypted, KeyUnwrapper, decrypt, oids};
use crate::cms::Error;

// ---------------------------------------------------------------------------------------
// Fixtures

#[derive(Debug)]
struct KeyPair {
    name: &'static str,
    cert_pem: String,
    cert: Certificate,
    key_der: Vec<u8>,
}

#[derive(Debug)]
struct Keys {
    rsa: KeyPair,
    rsa_other: KeyPair,
    p256: KeyPair,
    p384: KeyPair,
    p256_other: KeyPair,
}

fn gen_key(dir: &Path, name: &'static str, newkey: &[&str]) -> KeyPair {
    let key = dir.join(format!("{name}.key"));
    let key_der = dir.join(format!("{name}.key.der"));
    let cert = dir.join(format!("{name}.pem"));
    let subj = format!("/CN=decrypt test {name}");
    let mut args = vec![
        "req", "-x509", "-nodes", "-batch", "-days", "2", "-subj", &subj,
    ];
    args.extend_from_slice(newkey);
    let (k, c) = (key.to_str().unwrap(), cert.to_str().unwrap());
    args.extend_from_slice(&["-keyout", k, "-out", c]);
    run_openssl(&args);
    run_openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        k,
        "-outform",
        "DER",
        "-out",
        key_der.to_str().unwrap(),
    ]);
    let cert_pem = fs::read_to_string(&cert).unwrap();
    KeyPair {
        name,
        cert: Certificate::from_pem(cert_pem.as_bytes()).unwrap(),
        cert_pem,
        key_der: fs::read(&key_der).unwrap(),
    }
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        Keys {
            rsa: gen_key(d, "rsa", &["-newkey", "rsa:2048"]),
            rsa_other: gen_key(d, "rsa-other", &["-newkey", "rsa:2048"]),
            p256: gen_key(
                d,
                "p256",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            ),
            p384: gen_key(
                d,
                "p384",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            ),
            p256_other: gen_key(
                d,
                "p256-other",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            ),
        }
    })
}

fn run_openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Writes the recipients' certificates into `dir`, returning their paths.
fn cert_file(dir: &Path, kp: &KeyPair) -> String {
    let p: PathBuf = dir.join(format!("{}.pem", kp.name));
    fs::write(&p, &kp.cert_pem).unwrap();
    p.to_str().unwrap().to_owned()
}

/// `openssl cms -encrypt -binary -outform DER` of `data` with extra `args`; `{name}` in
/// an argument is replaced by the path of that key pair's certificate.
fn openssl_encrypt(data: &[u8], args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in");
    let output = d.join("out.der");
    fs::write(&input, data).unwrap();
    let k = keys();
    let all = [&k.rsa, &k.rsa_other, &k.p256, &k.p384, &k.p256_other];
    let mut full: Vec<String> = ["cms", "-encrypt", "-binary", "-outform", "DER", "-in"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    full.push(input.to_str().unwrap().into());
    full.push("-out".into());
    full.push(output.to_str().unwrap().into());
    for a in args {
        let mut s = a.to_string();
        for kp in all {
            let pat = format!("{{{}}}", kp.name);
            if s.contains(&pat) {
                s = s.replace(&pat, &cert_file(d, kp));
            }
        }
        full.push(s);
    }
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    run_openssl(&refs);
    fs::read(&output).unwrap()
}

/// The software "agent".
enum SoftKey {
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
}

impl SoftKey {
    fn load(kp: &KeyPair) -> Self {
        match rsa::RsaPrivateKey::from_pkcs8_der(&kp.key_der) {
            Ok(k) => return SoftKey::Rsa(Box::new(k)),
            Err(e) if kp.name.starts_with("rsa") => panic!("{}: {e:?}", kp.name),
            Err(_) => {}
        }
        if let Ok(k) = p256::SecretKey::from_pkcs8_der(&kp.key_der) {
            return SoftKey::P256(k);
        }
        SoftKey::P384(p384::SecretKey::from_pkcs8_der(&kp.key_der).unwrap())
    }
}

#[derive(Debug)]
struct AgentError(String);
impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for AgentError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Decrypt(usize, DecryptAlgorithm, usize),
    Ecdh(usize, usize),
}

struct SoftUnwrapper {
    keys: Vec<SoftKey>,
    calls: RefCell<Vec<Call>>,
    fail: bool,
}

impl SoftUnwrapper {
    fn new(kps: &[&KeyPair]) -> Self {
        SoftUnwrapper {
            keys: kps.iter().map(|kp| SoftKey::load(kp)).collect(),
            calls: RefCell::new(Vec::new()),
            fail: false,
        }
    }
}

impl KeyUnwrapper for SoftUnwrapper {
    type Error = AgentError;

    fn decrypt_key(
        &self,
        key: usize,
        alg: DecryptAlgorithm,
        wrapped: &[u8],
    ) -> Result<SecretBytes, AgentError> {
        self.calls
            .borrow_mut()
            .push(Call::Decrypt(key, alg, wrapped.len()));
        if self.fail {
            return Err(AgentError("token removed".into()));
        }
        let Some(SoftKey::Rsa(k)) = self.keys.get(key) else {
            return Err(AgentError("not an RSA key".into()));
        };
        let r = match alg {
            DecryptAlgorithm::RsaPkcs1 => k.decrypt(rsa::Pkcs1v15Encrypt, wrapped),
            DecryptAlgorithm::RsaOaepSha1 => k.decrypt(rsa::Oaep::<sha1::Sha1>::new(), wrapped),
            DecryptAlgorithm::RsaOaepSha256 => k.decrypt(rsa::Oaep::<sha2::Sha256>::new(), wrapped),
            DecryptAlgorithm::RsaOaepSha384 => k.decrypt(rsa::Oaep::<sha2::Sha384>::new(), wrapped),
            DecryptAlgorithm::RsaOaepSha512 => k.decrypt(rsa::Oaep::<sha2::Sha512>::new(), wrapped),
            other => return Err(AgentError(format!("{other:?}"))),
        };
        r.map(SecretBytes::new)
            .map_err(|e| AgentError(format!("RSA decrypt: {e}")))
    }

    fn ecdh(&self, key: usize, peer: &[u8]) -> Result<SecretBytes, AgentError> {
        self.calls.borrow_mut().push(Call::Ecdh(key, peer.len()));
        if self.fail {
            return Err(AgentError("token removed".into()));
        }
        let bad = |_| AgentError("bad point".into());
        match self.keys.get(key) {
            Some(SoftKey::P256(sk)) => {
                let pk = p256::PublicKey::from_sec1_bytes(peer).map_err(bad)?;
                let z = (pk.to_projective() * *sk.to_nonzero_scalar()).to_affine();
                Ok(SecretBytes::new(z.x().to_vec()))
            }
            Some(SoftKey::P384(sk)) => {
                let pk = p384::PublicKey::from_sec1_bytes(peer).map_err(bad)?;
                let z = (pk.to_projective() * *sk.to_nonzero_scalar()).to_affine();
                Ok(SecretBytes::new(z.x().to_vec()))
            }
            _ => Err(AgentError("not an EC key".into())),
        }
    }
}

/// A reader that hands out pieces of 1..=max bytes, to exercise buffer refills.
struct Choppy<'a> {
    data: &'a [u8],
    max: usize,
    rng: rand::rngs::ThreadRng,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .rng
            .random_range(1..=self.max)
            .min(buf.len())
            .min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        buf.get_mut(..n).unwrap().copy_from_slice(head);
        self.data = tail;
        Ok(n)
    }
}

fn dec_with(
    ct: &[u8],
    kps: &[&KeyPair],
    agent: &SoftUnwrapper,
) -> Result<(Vec<u8>, Decrypted), Error> {
    let certs: Vec<Certificate> = kps.iter().map(|k| k.cert.clone()).collect();
    let mut out = Vec::new();
    let d = decrypt(ct, &mut out, &certs, agent)?;
    // The same through a reader that returns tiny pieces (small inputs only).
    if ct.len() < 200_000 {
        let mut out2 = Vec::new();
        let r = Choppy {
            data: ct,
            max: 7,
            rng: rand::rng(),
        };
        let d2 = decrypt(r, &mut out2, &certs, &SoftUnwrapper::new(kps))?;
        assert_eq!(d2, d);
        assert_eq!(out2, out);
    }
    Ok((out, d))
}

fn dec(ct: &[u8], kps: &[&KeyPair]) -> Result<(Vec<u8>, Decrypted), Error> {
    dec_with(ct, kps, &SoftUnwrapper::new(kps))
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

fn data_oid() -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1")
}

// ---------------------------------------------------------------------------------------
// OpenSSL matrix

const CIPHERS: [(&str, &str, bool); 7] = [
    ("-aes-128-cbc", "aes-128-cbc", false),
    ("-aes-192-cbc", "aes-192-cbc", false),
    ("-aes-256-cbc", "aes-256-cbc", false),
    ("-des3", "des-ede3-cbc", false),
    ("-aes-128-gcm", "aes-128-gcm", true),
    ("-aes-192-gcm", "aes-192-gcm", true),
    ("-aes-256-gcm", "aes-256-gcm", true),
];

#[test]
fn rsa_pkcs1_all_ciphers_der_and_stream() {
    let k = keys();
    let msg = random(1000);
    for (flag, name, aead) in CIPHERS {
        for stream in [false, true] {
            let mut args = vec![flag, "-recip", "{rsa}"];
            if stream {
                args.push("-stream");
            }
            let ct = openssl_encrypt(&msg, &args);
            if stream {
                // BER indefinite length.
                assert_eq!(ct.get(1), Some(&0x80), "{name}");
            }
            let agent = SoftUnwrapper::new(&[&k.rsa]);
            let (pt, d) = dec_with(&ct, &[&k.rsa], &agent)
                .unwrap_or_else(|e| panic!("{name} stream={stream}: {e}"));
            assert_eq!(pt, msg, "{name} stream={stream}");
            assert_eq!(d.cipher, name);
            assert_eq!(d.authenticated, aead);
            assert_eq!(d.recipient, 0);
            assert_eq!(d.content_type, data_oid());
            assert_eq!(
                *agent.calls.borrow(),
                [Call::Decrypt(0, DecryptAlgorithm::RsaPkcs1, 256)]
            );
        }
    }
}

#[test]
fn rsa_oaep_variants() {
    let k = keys();
    let msg = b"OAEP test message".to_vec();
    let cases: [(&[&str], DecryptAlgorithm); 4] = [
        (&[], DecryptAlgorithm::RsaOaepSha1),
        (
            &[
                "-keyopt",
                "rsa_oaep_md:sha256",
                "-keyopt",
                "rsa_mgf1_md:sha256",
            ],
            DecryptAlgorithm::RsaOaepSha256,
        ),
        (
            &["-keyopt", "rsa_oaep_md:sha384"],
            DecryptAlgorithm::RsaOaepSha384,
        ),
        (
            &["-keyopt", "rsa_oaep_md:sha512"],
            DecryptAlgorithm::RsaOaepSha512,
        ),
    ];
    for (extra, alg) in cases {
        for cipher in ["-aes-256-gcm", "-aes-128-cbc"] {
            let mut args = vec![
                cipher,
                "-recip",
                "{rsa}",
                "-keyopt",
                "rsa_padding_mode:oaep",
            ];
            args.extend_from_slice(extra);
            let ct = openssl_encrypt(&msg, &args);
            let agent = SoftUnwrapper::new(&[&k.rsa]);
            let (pt, _) = dec_with(&ct, &[&k.rsa], &agent).unwrap();
            assert_eq!(pt, msg);
            assert_eq!(*agent.calls.borrow(), [Call::Decrypt(0, alg, 256)]);
        }
    }
}

#[test]
fn rsa_oaep_unsupported_parameters() {
    let k = keys();
    // MGF1 hash differs from the OAEP hash.
    let ct = openssl_encrypt(
        b"x",
        &[
            "-aes-128-cbc",
            "-recip",
            "{rsa}",
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_md:sha256",
            "-keyopt",
            "rsa_mgf1_md:sha1",
        ],
    );
    let agent = SoftUnwrapper::new(&[&k.rsa]);
    match dec_with(&ct, &[&k.rsa], &agent) {
        Err(Error::UnsupportedAlgorithm(oid)) => assert_eq!(oid, oids::SHA1),
        other => panic!("expected UnsupportedAlgorithm, got {other:?}"),
    }
    assert!(agent.calls.borrow().is_empty());
    // A non-empty label (pSpecified).
    let ct = openssl_encrypt(
        b"x",
        &[
            "-aes-128-cbc",
            "-recip",
            "{rsa}",
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_label:0102",
        ],
    );
    match dec(&ct, &[&k.rsa]) {
        Err(e @ Error::UnsupportedAlgorithm(oid)) => {
            assert_eq!(oid, oids::P_SPECIFIED);
            assert!(e.to_string().contains("1.2.840.113549.1.1.9"), "{e}");
        }
        other => panic!("expected UnsupportedAlgorithm, got {other:?}"),
    }
}

#[test]
fn ec_kdf_variants_p256_and_p384() {
    let k = keys();
    let msg = random(333);
    let kdfs: [&[&str]; 7] = [
        &[],
        &["-keyopt", "ecdh_kdf_md:sha224"],
        &["-keyopt", "ecdh_kdf_md:sha256"],
        &["-keyopt", "ecdh_kdf_md:sha384"],
        &["-keyopt", "ecdh_kdf_md:sha512"],
        &["-keyopt", "ecdh_cofactor_mode:1"],
        &[
            "-keyopt",
            "ecdh_cofactor_mode:1",
            "-keyopt",
            "ecdh_kdf_md:sha256",
        ],
    ];
    for (kp, point_len) in [(&k.p256, 65), (&k.p384, 97)] {
        let recip = format!("{{{}}}", kp.name);
        for kdf in kdfs {
            // aes128-wrap, aes192-wrap and aes256-wrap follow the content key length.
            for cipher in [
                "-aes-128-cbc",
                "-aes-192-gcm",
                "-aes-256-gcm",
                "-aes-256-cbc",
            ] {
                let mut args = vec![cipher, "-recip", recip.as_str()];
                args.extend_from_slice(kdf);
                let ct = openssl_encrypt(&msg, &args);
                let agent = SoftUnwrapper::new(&[kp]);
                let (pt, d) = dec_with(&ct, &[kp], &agent)
                    .unwrap_or_else(|e| panic!("{} {cipher} {kdf:?}: {e}", kp.name));
                assert_eq!(pt, msg);
                assert_eq!(d.recipient, 0);
                assert_eq!(*agent.calls.borrow(), [Call::Ecdh(0, point_len)]);
            }
        }
    }
}

#[test]
fn ec_stream_and_3des_wrap_unsupported() {
    let k = keys();
    let msg = random(5000);
    let ct = openssl_encrypt(&msg, &["-aes-128-gcm", "-stream", "-recip", "{p256}"]);
    assert_eq!(dec(&ct, &[&k.p256]).unwrap().0, msg);
    // 3DES content with an EC recipient: OpenSSL wraps with id-alg-CMS3DESwrap.
    let ct = openssl_encrypt(&msg, &["-des3", "-recip", "{p384}"]);
    match dec(&ct, &[&k.p384]) {
        Err(e @ Error::UnsupportedAlgorithm(_)) => {
            assert!(e.to_string().contains("1.2.840.113549.1.9.16.3.6"), "{e}")
        }
        other => panic!("expected UnsupportedAlgorithm, got {other:?}"),
    }
}

#[test]
fn several_recipients_ours_not_first() {
    let k = keys();
    let msg = random(2000);
    for cipher in ["-aes-256-cbc", "-aes-128-gcm"] {
        for stream in [false, true] {
            let mut args = vec![
                cipher,
                "-recip",
                "{rsa-other}",
                "-recip",
                "{p384}",
                "-recip",
                "{rsa}",
                "-recip",
                "{p256}",
            ];
            if stream {
                args.push("-stream");
            }
            let ct = openssl_encrypt(&msg, &args);
            // Our keys: one not addressed, then the RSA one.
            let agent = SoftUnwrapper::new(&[&k.p256_other, &k.rsa]);
            let (pt, d) = dec_with(&ct, &[&k.p256_other, &k.rsa], &agent).unwrap();
            assert_eq!(pt, msg);
            assert_eq!(d.recipient, 1);
            assert_eq!(
                *agent.calls.borrow(),
                [Call::Decrypt(1, DecryptAlgorithm::RsaPkcs1, 256)]
            );
            // Only the P-256 key (last recipient).
            let (pt, d) = dec(&ct, &[&k.p256_other, &k.p256]).unwrap();
            assert_eq!(pt, msg);
            assert_eq!(d.recipient, 1);
        }
    }
}

#[test]
fn subject_key_identifier_rids() {
    let k = keys();
    let msg = b"keyid".to_vec();
    for kp in [&k.rsa, &k.p256, &k.p384] {
        let recip = format!("{{{}}}", kp.name);
        let ct = openssl_encrypt(&msg, &["-aes-128-gcm", "-keyid", "-recip", &recip]);
        // No issuerAndSerialNumber in the message: the issuer's name does not appear.
        assert!(
            !ct.windows(kp.name.len()).any(|w| w == kp.name.as_bytes()),
            "{}: rid is not a subjectKeyIdentifier",
            kp.name
        );
        let (pt, d) = dec(&ct, &[&k.rsa_other, kp]).unwrap();
        assert_eq!(pt, msg);
        assert_eq!(d.recipient, 1);
    }
}

#[test]
fn kari_with_several_recipient_encrypted_keys() {
    let k = keys();
    let msg = random(100);
    let ct = openssl_encrypt(&msg, &["-aes-128-cbc", "-recip", "{p256}"]);
    let ci = ContentInfo::from_der(&ct).unwrap();
    let mut ed: EnvelopedData = ci.content.decode_as().unwrap();
    let mut infos: Vec<RecipientInfo> = ed.recip_infos.0.into_vec();
    let RecipientInfo::Kari(kari) = infos.get_mut(0).unwrap() else {
        panic!("not a KARI")
    };
    let ias = |kp: &KeyPair| {
        KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(cms::cert::IssuerAndSerialNumber {
            issuer: kp.cert.tbs_certificate().issuer().clone(),
            serial_number: kp.cert.tbs_certificate().serial_number().clone(),
        })
    };
    let junk = |kp: &KeyPair| RecipientEncryptedKey {
        rid: ias(kp),
        enc_key: OctetString::new(random(24)).unwrap(),
    };
    // A foreign key first, then one for our P-384 key (which cannot work with a P-256
    // ephemeral point), then ours.
    kari.recipient_enc_keys.insert(0, junk(&k.p384));
    kari.recipient_enc_keys.insert(0, junk(&k.rsa_other));
    ed.recip_infos = RecipientInfos(SetOfVec::try_from(infos).unwrap());
    let ci = ContentInfo {
        content_type: ci.content_type,
        content: Any::encode_from(&ed).unwrap(),
    };
    let ct = ci.to_der().unwrap();
    let agent = SoftUnwrapper::new(&[&k.p384, &k.p256]);
    let (pt, d) = dec_with(&ct, &[&k.p384, &k.p256], &agent).unwrap();
    assert_eq!(pt, msg);
    assert_eq!(d.recipient, 1);
    assert_eq!(*agent.calls.borrow(), [Call::Ecdh(1, 65)]);
}

#[test]
fn sizes_around_chunk_boundaries_and_empty() {
    let k = keys();
    for n in [
        0usize,
        1,
        15,
        16,
        17,
        4095,
        4096,
        4097,
        65535,
        65536,
        65537,
        2 * 65536 + 15,
    ] {
        let msg = random(n);
        for cipher in ["-aes-128-cbc", "-aes-256-gcm", "-des3"] {
            for stream in [false, true] {
                if n == 0 && stream && cipher.ends_with("gcm") {
                    continue; // OpenSSL 3.0 fails to write this one.
                }
                let mut args = vec![cipher, "-recip", "{rsa}"];
                if stream {
                    args.push("-stream");
                }
                let ct = openssl_encrypt(&msg, &args);
                let (pt, _) = dec(&ct, &[&k.rsa])
                    .unwrap_or_else(|e| panic!("{n} {cipher} stream={stream}: {e}"));
                assert!(pt == msg, "{n} {cipher} stream={stream}");
            }
        }
    }
}

/// A writer that only counts and hashes, so large outputs need no memory.
#[derive(Default)]
struct Digesting {
    len: u64,
    h: sha2::Sha256,
}

impl io::Write for Digesting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        self.h.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn large_input_3_mib() {
    use sha2::Digest as _;
    let k = keys();
    let msg = random(3 * 1024 * 1024 + 5);
    let want = sha2::Sha256::digest(&msg);
    for args in [
        &["-aes-256-gcm", "-stream", "-recip", "{rsa}"][..],
        &["-aes-256-gcm", "-recip", "{p256}"],
        &["-aes-128-cbc", "-stream", "-recip", "{p384}"],
        &["-aes-192-cbc", "-recip", "{rsa}"],
    ] {
        let ct = openssl_encrypt(&msg, args);
        let mut out = Digesting::default();
        let certs = [k.rsa.cert.clone(), k.p256.cert.clone(), k.p384.cert.clone()];
        let agent = SoftUnwrapper::new(&[&k.rsa, &k.p256, &k.p384]);
        let input = io::BufReader::with_capacity(1000, &ct[..]);
        decrypt(input, &mut out, &certs, &agent).unwrap();
        assert_eq!(out.len, msg.len() as u64, "{args:?}");
        assert_eq!(out.h.finalize(), want, "{args:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Negative cases

#[test]
fn gcm_tampering_is_detected() {
    let k = keys();
    let msg = random(300);
    let ct = openssl_encrypt(&msg, &["-aes-128-gcm", "-recip", "{rsa}"]);
    // DER layout ends with: ... [0] ciphertext, OCTET STRING(16) mac.
    let n = ct.len();
    let mut bad = ct.clone();
    *bad.get_mut(n - 18 - 1).unwrap() ^= 0x01; // last ciphertext byte
    assert!(matches!(dec(&bad, &[&k.rsa]), Err(Error::TagMismatch)));
    let mut bad = ct.clone();
    *bad.get_mut(n - 18 - 300).unwrap() ^= 0x80; // first ciphertext byte
    assert!(matches!(dec(&bad, &[&k.rsa]), Err(Error::TagMismatch)));
    let mut bad = ct.clone();
    *bad.get_mut(n - 1).unwrap() ^= 0x01; // mac
    assert!(matches!(dec(&bad, &[&k.rsa]), Err(Error::TagMismatch)));
    assert_eq!(dec(&ct, &[&k.rsa]).unwrap().0, msg);
}

#[test]
fn cbc_tampering_is_detected() {
    let k = keys();
    let msg = random(100); // 7 blocks with 12 bytes of padding (0x0c)
    let ct = openssl_encrypt(&msg, &["-aes-256-cbc", "-recip", "{rsa}"]);
    let n = ct.len();
    // DER: the ciphertext is the last 112 bytes. XOR the last byte of the previous block
    // with 0x0c: the last plaintext byte becomes 0, which is never valid padding.
    let mut bad = ct.clone();
    *bad.get_mut(n - 17).unwrap() ^= 0x0c;
    assert!(matches!(dec(&bad, &[&k.rsa]), Err(Error::BadPadding)));
    // Any flip in the last block garbles it: bad padding or wrong plaintext.
    let mut bad = ct.clone();
    *bad.get_mut(n - 5).unwrap() ^= 0x40;
    match dec(&bad, &[&k.rsa]) {
        Err(Error::BadPadding) => {}
        Ok((pt, _)) => assert_ne!(pt, msg),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[test]
fn truncated_input() {
    let k = keys();
    let msg = random(5000);
    for args in [
        &["-aes-128-gcm", "-recip", "{p256}"][..],
        &["-aes-128-cbc", "-stream", "-recip", "{p256}"],
        &["-aes-128-gcm", "-stream", "-recip", "{p256}"],
    ] {
        let ct = openssl_encrypt(&msg, args);
        let n = ct.len();
        for cut in [
            0,
            1,
            2,
            5,
            30,
            150,
            300,
            n / 2,
            n - 100,
            n - 20,
            n - 3,
            n - 2,
            n - 1,
        ] {
            let r = dec(ct.get(..cut).unwrap(), &[&k.p256]);
            assert!(
                matches!(r, Err(Error::Truncated(_))),
                "{args:?} cut at {cut}/{n}: {r:?}"
            );
        }
    }
    let r = dec(&[], &[&k.p256]);
    assert!(
        matches!(&r, Err(Error::Truncated(m)) if m.contains("empty")),
        "{r:?}"
    );
}

#[test]
fn not_for_us_lists_recipients() {
    let k = keys();
    let ct = openssl_encrypt(
        b"x",
        &["-aes-128-gcm", "-recip", "{rsa-other}", "-recip", "{p384}"],
    );
    let agent = SoftUnwrapper::new(&[&k.rsa, &k.p256]);
    let certs = [k.rsa.cert.clone(), k.p256.cert.clone()];
    let err = decrypt(&ct[..], io::sink(), &certs, &agent).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NotForUs(_)), "{err:?}");
    assert!(msg.contains("CN=decrypt test rsa-other"), "{msg}");
    assert!(msg.contains("CN=decrypt test p384"), "{msg}");
    let serial = k
        .rsa_other
        .cert
        .tbs_certificate()
        .serial_number()
        .to_string();
    assert!(msg.contains(&serial), "{msg}");
    assert!(agent.calls.borrow().is_empty());
}

#[test]
fn signed_data_is_not_enveloped() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in");
    fs::write(&input, b"signed").unwrap();
    let key = d.join("k.der");
    fs::write(&key, &k.p256.key_der).unwrap();
    let cert = cert_file(d, &k.p256);
    let out = d.join("s.der");
    run_openssl(&[
        "cms",
        "-sign",
        "-binary",
        "-outform",
        "DER",
        "-in",
        input.to_str().unwrap(),
        "-signer",
        &cert,
        "-inkey",
        key.to_str().unwrap(),
        "-keyform",
        "DER",
        "-out",
        out.to_str().unwrap(),
    ]);
    let sd = fs::read(&out).unwrap();
    let err = dec(&sd, &[&k.p256]).unwrap_err();
    assert!(matches!(err, Error::NotEnveloped(_)), "{err:?}");
    assert!(err.to_string().contains("1.2.840.113549.1.7.2"), "{err}");
    // PEM input gets a hint.
    let pem = run_openssl(&[
        "cms",
        "-encrypt",
        "-in",
        input.to_str().unwrap(),
        "-outform",
        "PEM",
        &cert,
    ]);
    let err = dec(&pem, &[&k.p256]).unwrap_err();
    assert!(err.to_string().contains("PEM"), "{err}");
}

#[test]
fn unsupported_content_cipher_is_named_before_the_agent_is_asked() {
    let k = keys();
    let ct = openssl_encrypt(b"abc", &["-aes-128-cbc", "-recip", "{rsa}"]);
    // id-aes128-CBC → id-aes128-OFB (…4.1.3).
    let oid = [
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02,
    ];
    let pos = ct.windows(oid.len()).position(|w| w == oid).unwrap();
    let mut bad = ct.clone();
    *bad.get_mut(pos + oid.len() - 1).unwrap() = 0x03;
    let agent = SoftUnwrapper::new(&[&k.rsa]);
    let err = dec_with(&bad, &[&k.rsa], &agent).unwrap_err();
    assert!(err.to_string().contains("2.16.840.1.101.3.4.1.3"), "{err}");
    assert!(agent.calls.borrow().is_empty());
}

#[test]
fn agent_failure_and_wrong_key() {
    let k = keys();
    let ct = openssl_encrypt(b"abc", &["-aes-128-gcm", "-recip", "{p256}"]);
    let mut agent = SoftUnwrapper::new(&[&k.p256]);
    agent.fail = true;
    let err = decrypt(
        &ct[..],
        io::sink(),
        std::slice::from_ref(&k.p256.cert),
        &agent,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unwrapper(_)), "{err:?}");
    assert!(err.to_string().contains("token removed"), "{err}");
    // The agent holds a different key than the certificate says.
    let agent = SoftUnwrapper::new(&[&k.p256_other]);
    let err = decrypt(
        &ct[..],
        io::sink(),
        std::slice::from_ref(&k.p256.cert),
        &agent,
    )
    .unwrap_err();
    assert!(matches!(err, Error::WrongKey(_)), "{err:?}");
}

#[test]
fn recipient_infos_size_limit() {
    // ContentInfo/EnvelopedData headers, then a recipientInfos SET claiming 16 MiB + 1.
    let mut ct = vec![0x30, 0x80, 0x06, 0x09];
    ct.extend_from_slice(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03]);
    ct.extend_from_slice(&[0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x00]);
    ct.extend_from_slice(&[0x31, 0x84, 0x01, 0x00, 0x00, 0x01]);
    let k = keys();
    let err = dec(&ct, &[&k.rsa]).unwrap_err();
    assert!(
        matches!(&err, Error::Malformed(m) if m.contains("recipientInfos") && m.contains("limit")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// AuthEnvelopedData with authAttrs (AAD after the ciphertext)

#[test]
fn auth_attrs_are_authenticated() {
    let k = keys();
    // Take OpenSSL's recipient info (and with it the content key), then re-encrypt with
    // authAttrs present.
    let ct = openssl_encrypt(b"ignored", &["-aes-256-gcm", "-recip", "{rsa}"]);
    let ci = ContentInfo::from_der(&ct).unwrap();
    let mut aed: AuthEnvelopedData = ci.content.decode_as().unwrap();
    let RecipientInfo::Ktri(ktri) = aed.recip_infos.0.get(0).unwrap() else {
        panic!("not KTRI")
    };
    let SoftKey::Rsa(sk) = SoftKey::load(&k.rsa) else {
        panic!()
    };
    let cek = sk
        .decrypt(rsa::Pkcs1v15Encrypt, ktri.enc_key.as_bytes())
        .unwrap();

    let attr = x509_cert::attr::Attribute {
        oid: ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3"),
        values: SetOfVec::try_from(vec![Any::encode_from(&data_oid()).unwrap()]).unwrap(),
    };
    let attrs = SetOfVec::try_from(vec![attr]).unwrap();
    let aad = attrs.to_der().unwrap();
    assert_eq!(aad.first(), Some(&0x31));

    let msg = random(777);
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let gcm = aes_gcm::Aes256Gcm::new_from_slice(&cek).unwrap();
    let mut sealed = gcm
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &msg,
                aad: &aad,
            },
        )
        .unwrap();
    let tag = sealed.split_off(msg.len());
    #[derive(der::Sequence)]
    struct GcmParams {
        nonce: OctetString,
        icv_len: u8,
    }
    aed.auth_encrypted_content_info.content_enc_alg.parameters = Some(
        Any::encode_from(&GcmParams {
            nonce: OctetString::new(nonce.to_vec()).unwrap(),
            icv_len: 16,
        })
        .unwrap(),
    );
    aed.auth_encrypted_content_info.encrypted_content = Some(OctetString::new(sealed).unwrap());
    aed.auth_attrs = Some(attrs);
    aed.mac = OctetString::new(tag).unwrap();
    let build = |aed: &AuthEnvelopedData| {
        ContentInfo {
            content_type: ci.content_type,
            content: Any::encode_from(aed).unwrap(),
        }
        .to_der()
        .unwrap()
    };
    let good = build(&aed);
    assert_eq!(dec(&good, &[&k.rsa]).unwrap().0, msg);

    // OpenSSL 3.0 cannot judge this one: its ASN.1 template tags authAttrs [2] (not [1])
    // and reads them as AlgorithmIdentifiers, so it rejects RFC 5083 authAttrs.

    // Changing the attributes breaks the tag.
    let mut bad = aed.clone();
    let attr2 = x509_cert::attr::Attribute {
        oid: ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3"),
        values: SetOfVec::try_from(vec![
            Any::encode_from(&ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2")).unwrap(),
        ])
        .unwrap(),
    };
    bad.auth_attrs = Some(SetOfVec::try_from(vec![attr2]).unwrap());
    assert!(matches!(
        dec(&build(&bad), &[&k.rsa]),
        Err(Error::TagMismatch)
    ));
    // Dropping them too.
    let mut bad = aed.clone();
    bad.auth_attrs = None;
    assert!(matches!(
        dec(&build(&bad), &[&k.rsa]),
        Err(Error::TagMismatch)
    ));
}

// ---------------------------------------------------------------------------------------
// Streaming GCM against aes-gcm one-shot

fn gcm_stream_decrypt<C>(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ct: &[u8],
    tag: &[u8],
) -> Result<Vec<u8>, Error>
where
    C: aes::cipher::BlockCipherEncrypt
        + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>
        + aes::cipher::KeyInit,
{
    let mut g = GcmDecryptor::<C>::new(key, nonce)?;
    let mut out = ct.to_vec();
    // Random split points.
    let mut rng = rand::rng();
    let mut rest: &mut [u8] = &mut out;
    while !rest.is_empty() {
        let n = rng.random_range(0..=rest.len().min(40));
        let (head, tail) = rest.split_at_mut(n);
        g.decrypt(head)?;
        rest = tail;
    }
    g.verify(aad, tag)?;
    Ok(out)
}

#[test]
fn streaming_gcm_matches_aes_gcm() {
    use aes_gcm::AesGcm;
    use aes_gcm::aead::consts::{U12, U16};
    let mut lens: Vec<usize> = (0..=70).collect();
    lens.extend_from_slice(&[255, 256, 257, 4095, 4096, 4097, 65536 + 3]);
    for &n in &lens {
        for aad_len in [0usize, 1, 15, 16, 17, 100] {
            let msg = random(n);
            let aad = random(aad_len);
            // AES-128, 96-bit nonce.
            let key = random(16);
            let nonce = random(12);
            let c = AesGcm::<aes::Aes128, U12>::new_from_slice(&key).unwrap();
            let mut ct = c
                .encrypt(
                    nonce.as_slice().try_into().unwrap(),
                    Payload {
                        msg: &msg,
                        aad: &aad,
                    },
                )
                .unwrap();
            let tag = ct.split_off(n);
            let pt = gcm_stream_decrypt::<aes::Aes128>(&key, &nonce, &aad, &ct, &tag).unwrap();
            assert_eq!(pt, msg, "n={n} aad={aad_len}");
            // Truncated tag (icvLen 12).
            gcm_stream_decrypt::<aes::Aes128>(&key, &nonce, &aad, &ct, tag.get(..12).unwrap())
                .unwrap();
            // Wrong AAD or tag.
            let mut bad = tag.clone();
            *bad.get_mut(15).unwrap() ^= 1;
            assert!(matches!(
                gcm_stream_decrypt::<aes::Aes128>(&key, &nonce, &aad, &ct, &bad),
                Err(Error::TagMismatch)
            ));
            if aad_len > 0 {
                let mut a2 = aad.clone();
                *a2.get_mut(0).unwrap() ^= 1;
                assert!(matches!(
                    gcm_stream_decrypt::<aes::Aes128>(&key, &nonce, &a2, &ct, &tag),
                    Err(Error::TagMismatch)
                ));
            }
            // AES-256 and AES-192 with a 128-bit nonce (J0 through GHASH).
            let key = random(32);
            let nonce = random(16);
            let c = AesGcm::<aes::Aes256, U16>::new_from_slice(&key).unwrap();
            let mut ct = c
                .encrypt(
                    nonce.as_slice().try_into().unwrap(),
                    Payload {
                        msg: &msg,
                        aad: &aad,
                    },
                )
                .unwrap();
            let tag = ct.split_off(n);
            let pt = gcm_stream_decrypt::<aes::Aes256>(&key, &nonce, &aad, &ct, &tag).unwrap();
            assert_eq!(pt, msg, "aes256 n={n} aad={aad_len}");
            let key = random(24);
            let c = AesGcm::<aes::Aes192, U12>::new_from_slice(&key).unwrap();
            let nonce = random(12);
            let mut ct = c
                .encrypt(
                    nonce.as_slice().try_into().unwrap(),
                    Payload {
                        msg: &msg,
                        aad: &aad,
                    },
                )
                .unwrap();
            let tag = ct.split_off(n);
            let pt = gcm_stream_decrypt::<aes::Aes192>(&key, &nonce, &aad, &ct, &tag).unwrap();
            assert_eq!(pt, msg, "aes192 n={n} aad={aad_len}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Round trip with this crate's encryptor

#[test]
fn round_trip_with_envelope_encrypt() {
    use crate::cms::envelope::{ContentCipher, Recipient, encrypt};
    let k = keys();
    let msg = random(70_000);
    for cipher in ContentCipher::ALL {
        let mut ct = Vec::new();
        let recips = [
            Recipient::new(k.p384.cert.clone()),
            Recipient::new(k.rsa.cert.clone()),
        ];
        encrypt(&msg[..], &mut ct, &recips, cipher).unwrap();
        for kp in [&k.rsa, &k.p384] {
            let (pt, d) = dec(&ct, &[kp]).unwrap();
            assert_eq!(pt, msg);
            assert_eq!(d.cipher, cipher.name());
            assert_eq!(d.authenticated, cipher.is_aead());
        }
    }
}

// ---------------------------------------------------------------------------------------
// BER forms OpenSSL does not write

/// Re-encodes a DER (Auth)EnvelopedData ContentInfo with indefinite lengths everywhere
/// and the encrypted content split into nested constructed OCTET STRINGs of mixed forms
/// (definite and indefinite, with empty pieces).
fn rechunk(der: &[u8]) -> Vec<u8> {
    use super::super::ber::Tlv;
    let ci = Tlv::parse_exact(der).unwrap();
    let [ct_type, wrapped] = ci.children().unwrap()[..] else {
        panic!()
    };
    let [ed] = wrapped.children().unwrap()[..] else {
        panic!()
    };
    let parts = ed.children().unwrap();
    let mut out = vec![0x30, 0x80];
    out.extend_from_slice(ct_type.raw);
    out.extend_from_slice(&[0xA0, 0x80, 0x30, 0x80]);
    let mut rng = rand::rng();
    for p in &parts {
        if p.tag != 0x30 || p.children().unwrap().len() != 3 {
            out.extend_from_slice(p.raw);
            continue;
        }
        // EncryptedContentInfo.
        let [eci_type, alg, content] = p.children().unwrap()[..] else {
            panic!()
        };
        assert_eq!(content.tag, 0x80);
        out.extend_from_slice(&[0x30, 0x80]);
        out.extend_from_slice(eci_type.raw);
        out.extend_from_slice(alg.raw);
        out.extend_from_slice(&[0xA0, 0x80]);
        let mut rest = content.value;
        while !rest.is_empty() {
            let n = rng.random_range(0..=rest.len().min(3000));
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            let mut prim = Vec::new();
            super::super::ber::write_header(&mut prim, 0x04, piece.len());
            prim.extend_from_slice(piece);
            match rng.random_range(0..3) {
                0 => out.extend_from_slice(&prim),
                1 => {
                    // Indefinite constructed, with an empty piece first.
                    out.extend_from_slice(&[0x24, 0x80, 0x04, 0x00]);
                    out.extend_from_slice(&prim);
                    out.extend_from_slice(&[0, 0]);
                }
                _ => {
                    // Definite constructed around an indefinite constructed.
                    let mut inner = vec![0x24, 0x80];
                    inner.extend_from_slice(&prim);
                    inner.extend_from_slice(&[0, 0]);
                    super::super::ber::write_header(&mut out, 0x24, inner.len());
                    out.extend_from_slice(&inner);
                }
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
    }
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    out
}

#[test]
fn nested_constructed_encrypted_content() {
    let k = keys();
    let msg = random(20_000);
    for cipher in ["-aes-128-gcm", "-aes-256-cbc", "-des3"] {
        let ct = openssl_encrypt(&msg, &[cipher, "-recip", "{rsa}"]);
        for _ in 0..3 {
            let ber = rechunk(&ct);
            assert_eq!(dec(&ber, &[&k.rsa]).unwrap().0, msg, "{cipher}");
            // Cut off the last end-of-contents.
            let cut = ber.get(..ber.len() - 1).unwrap();
            assert!(matches!(dec(cut, &[&k.rsa]), Err(Error::Truncated(_))));
        }
    }
}
