//! Tests for CMS sign/verify, with OpenSSL as the judge.
//!
//! Keys are software keys behind [`DigestSigner`]; certificates come from the x509-cert
//! builder (generated once per test process). `openssl` must be on PATH.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::fs;
use std::io::{Cursor, Read};
use std::path::Path;
use std::process::{Command, Output};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use der::pem::LineEnding;
use der::{Decode, DecodePem, Encode, EncodePem};
use p256::elliptic_curve::Generate;
use rsa::pkcs8::EncodePrivateKey;
use rsa::rand_core::{TryCryptoRng, TryRng};
use signature::hazmat::PrehashSigner;
use smime_proto::SignAlgorithm;
use spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::Certificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use super::sign::{DigestSigner, SignRequest, sign_detached, to_pem};
use super::verify::{parse_cms_input, verify_detached, verify_detached_all};
use super::{CheckedAt, Error, HashAlg, digest_reader};
use crate::trust::TrustPolicy;

// ---------------------------------------------------------------------------------------
// Fixtures

/// Test-only CSPRNG: the kernel's.
struct Urandom(fs::File);

impl Urandom {
    fn new() -> Self {
        Urandom(fs::File::open("/dev/urandom").unwrap())
    }
}

impl TryRng for Urandom {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.0.read_exact(&mut b).unwrap();
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.0.read_exact(&mut b).unwrap();
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.read_exact(dst).unwrap();
        Ok(())
    }
}
impl TryCryptoRng for Urandom {}

/// A software private key standing in for the agent.
#[derive(Clone)]
enum SoftKey {
    Rsa(rsa::RsaPrivateKey),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

#[derive(Debug, thiserror::Error)]
#[error("soft signer: {0}")]
struct SoftError(String);

impl DigestSigner for SoftKey {
    type Error = SoftError;

    fn sign_digest(&self, algorithm: SignAlgorithm, digest: &[u8]) -> Result<Vec<u8>, SoftError> {
        use SignAlgorithm as A;
        use sha2::{Sha256, Sha384, Sha512};
        let e = |x: &dyn std::fmt::Display| SoftError(x.to_string());
        assert_eq!(
            Some(digest.len()),
            algorithm.digest_len(),
            "digest length for {algorithm:?}"
        );
        match (self, algorithm) {
            (SoftKey::Rsa(k), A::RsaPkcs1Sha256) => k
                .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), digest)
                .map_err(|x| e(&x)),
            (SoftKey::Rsa(k), A::RsaPkcs1Sha384) => k
                .sign(rsa::Pkcs1v15Sign::new::<Sha384>(), digest)
                .map_err(|x| e(&x)),
            (SoftKey::Rsa(k), A::RsaPkcs1Sha512) => k
                .sign(rsa::Pkcs1v15Sign::new::<Sha512>(), digest)
                .map_err(|x| e(&x)),
            (SoftKey::Rsa(k), A::RsaPssSha256) => k
                .sign_with_rng(
                    &mut Urandom::new(),
                    rsa::pss::Pss::<Sha256>::new_with_salt(32),
                    digest,
                )
                .map_err(|x| e(&x)),
            (SoftKey::Rsa(k), A::RsaPssSha384) => k
                .sign_with_rng(
                    &mut Urandom::new(),
                    rsa::pss::Pss::<Sha384>::new_with_salt(48),
                    digest,
                )
                .map_err(|x| e(&x)),
            (SoftKey::Rsa(k), A::RsaPssSha512) => k
                .sign_with_rng(
                    &mut Urandom::new(),
                    rsa::pss::Pss::<Sha512>::new_with_salt(64),
                    digest,
                )
                .map_err(|x| e(&x)),
            (SoftKey::P256(k), A::EcdsaSha256 | A::EcdsaSha384 | A::EcdsaSha512) => {
                let s: p256::ecdsa::DerSignature = k.sign_prehash(digest).map_err(|x| e(&x))?;
                Ok(s.as_bytes().to_vec())
            }
            (SoftKey::P384(k), A::EcdsaSha256 | A::EcdsaSha384 | A::EcdsaSha512) => {
                let s: p384::ecdsa::DerSignature = k.sign_prehash(digest).map_err(|x| e(&x))?;
                Ok(s.as_bytes().to_vec())
            }
            (_, a) => Err(SoftError(format!("{a:?} does not fit this key"))),
        }
    }
}

impl SoftKey {
    fn spki(&self) -> SubjectPublicKeyInfoOwned {
        match self {
            SoftKey::Rsa(k) => SubjectPublicKeyInfoOwned::from_key(&k.to_public_key()).unwrap(),
            SoftKey::P256(k) => SubjectPublicKeyInfoOwned::from_key(k.verifying_key()).unwrap(),
            SoftKey::P384(k) => SubjectPublicKeyInfoOwned::from_key(k.verifying_key()).unwrap(),
        }
    }

    fn pkcs8_pem(&self) -> String {
        let doc = match self {
            SoftKey::Rsa(k) => k.to_pkcs8_pem(LineEnding::LF).unwrap(),
            SoftKey::P256(k) => k.to_pkcs8_pem(LineEnding::LF).unwrap(),
            SoftKey::P384(k) => k.to_pkcs8_pem(LineEnding::LF).unwrap(),
        };
        doc.to_string()
    }

    /// Issues a certificate for `spki` signed by this key.
    fn issue(
        &self,
        profile: TestProfile,
        serial: u32,
        validity: Validity,
        spki: SubjectPublicKeyInfoOwned,
    ) -> Certificate {
        let b =
            CertificateBuilder::new(profile, SerialNumber::from(serial), validity, spki).unwrap();
        match self {
            SoftKey::Rsa(k) => {
                let s = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k.clone());
                b.build::<_, rsa::pkcs1v15::Signature>(&s).unwrap()
            }
            SoftKey::P256(k) => b.build::<_, p256::ecdsa::DerSignature>(k).unwrap(),
            SoftKey::P384(k) => b.build::<_, p384::ecdsa::DerSignature>(k).unwrap(),
        }
    }
}

/// CA or S/MIME leaf profile for the x509-cert builder.
struct TestProfile {
    issuer: Name,
    subject: Name,
    ca: bool,
}

impl TestProfile {
    fn new(issuer: &str, subject: &str, ca: bool) -> Self {
        TestProfile {
            issuer: Name::from_str(issuer).unwrap(),
            subject: Name::from_str(subject).unwrap(),
            ca,
        }
    }
}

impl BuilderProfile for TestProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let subject = tbs.subject();
        let mut e = Vec::new();
        e.push(
            BasicConstraints {
                ca: self.ca,
                path_len_constraint: None,
            }
            .to_extension(subject, &e)?,
        );
        let ku = if self.ca {
            KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
        } else {
            KeyUsage(KeyUsages::DigitalSignature | KeyUsages::NonRepudiation)
        };
        e.push(ku.to_extension(subject, &e)?);
        if !self.ca {
            e.push(
                ExtendedKeyUsage(vec![const_oid::db::rfc5280::ID_KP_EMAIL_PROTECTION])
                    .to_extension(subject, &e)?,
            );
            e.push(
                SubjectAltName(vec![GeneralName::Rfc822Name(der::asn1::Ia5String::new(
                    "alice@example.org",
                )?)])
                .to_extension(subject, &e)?,
            );
        }
        e.push(SubjectKeyIdentifier::try_from(spk)?.to_extension(subject, &e)?);
        e.push(
            AuthorityKeyIdentifier {
                key_identifier: Some(SubjectKeyIdentifier::try_from(issuer_spk)?.0),
                ..Default::default()
            }
            .to_extension(subject, &e)?,
        );
        Ok(e)
    }
}

fn validity(from: SystemTime, to: SystemTime) -> Validity {
    Validity::new(Time::try_from(from).unwrap(), Time::try_from(to).unwrap())
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

fn normal_validity() -> Validity {
    let now = SystemTime::now();
    validity(now - days(1), now + days(30))
}

struct Fixture {
    ca_key: SoftKey,
    ca: Certificate,
    rsa_key: SoftKey,
    rsa_leaf: Certificate,
    p256_key: SoftKey,
    p256_leaf: Certificate,
    /// P-256 intermediate under the RSA root.
    inter: Certificate,
    p384_key: SoftKey,
    /// Issued by `inter` (ECDSA P-256 signature): a two-step chain.
    p384_leaf: Certificate,
    other_ca: Certificate,
}

const CA_DN: &str = "CN=Test Root CA,O=smime-agent tests";
const INTER_DN: &str = "CN=Test EC Intermediate,O=smime-agent tests";

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = Urandom::new();
        // Two RSA keygens for the whole test run.
        let ca_key = SoftKey::Rsa(rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap());
        let rsa_key = SoftKey::Rsa(rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap());
        let p256_key = SoftKey::P256(p256::ecdsa::SigningKey::generate_from_rng(&mut rng));
        let inter_key = SoftKey::P256(p256::ecdsa::SigningKey::generate_from_rng(&mut rng));
        let p384_key = SoftKey::P384(p384::ecdsa::SigningKey::generate_from_rng(&mut rng));
        let other_key = SoftKey::P256(p256::ecdsa::SigningKey::generate_from_rng(&mut rng));

        let ca = ca_key.issue(
            TestProfile::new(CA_DN, CA_DN, true),
            1,
            normal_validity(),
            ca_key.spki(),
        );
        let rsa_leaf = ca_key.issue(
            TestProfile::new(CA_DN, "CN=Alice RSA,O=smime-agent tests", false),
            2,
            normal_validity(),
            rsa_key.spki(),
        );
        let p256_leaf = ca_key.issue(
            TestProfile::new(CA_DN, "CN=Alice P-256,O=smime-agent tests", false),
            3,
            normal_validity(),
            p256_key.spki(),
        );
        let inter = ca_key.issue(
            TestProfile::new(CA_DN, INTER_DN, true),
            4,
            normal_validity(),
            inter_key.spki(),
        );
        let p384_leaf = inter_key.issue(
            TestProfile::new(INTER_DN, "CN=Alice P-384,O=smime-agent tests", false),
            5,
            normal_validity(),
            p384_key.spki(),
        );
        // Same subject name as the real root, different key: name matching alone must not do.
        let other_ca = other_key.issue(
            TestProfile::new(CA_DN, CA_DN, true),
            6,
            normal_validity(),
            other_key.spki(),
        );
        Fixture {
            ca_key,
            ca,
            rsa_key,
            rsa_leaf,
            p256_key,
            p256_leaf,
            inter,
            p384_key,
            p384_leaf,
            other_ca,
        }
    })
}

const DATA: &[u8] = b"Content-Type: text/plain\r\n\r\nHello, S/MIME!\r\n";

fn sign(
    key: &SoftKey,
    cert: &Certificate,
    extra: &[Certificate],
    hash: HashAlg,
    pss: bool,
    data: &[u8],
) -> Vec<u8> {
    let digest = digest_reader(hash, data).unwrap();
    let req = SignRequest {
        content_digest: &digest,
        hash,
        pss,
        signer_cert: cert,
        extra_certs: extra,
    };
    sign_detached(&req, key).unwrap()
}

fn verify(
    sig: &[u8],
    data: Option<&[u8]>,
    trust: &[Certificate],
) -> Result<super::verify::Verified, Error> {
    verify_detached(
        sig,
        data.map(Cursor::new),
        anchors(trust).as_ref(),
        SystemTime::now(),
    )
}

/// A trust policy with these anchors (none: no chain check).
fn anchors(trust: &[Certificate]) -> Option<TrustPolicy> {
    (!trust.is_empty()).then(|| TrustPolicy::with_anchors(trust.to_vec()))
}

// ---------------------------------------------------------------------------------------
// OpenSSL

fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (it must be installed for these tests)")
}

#[track_caller]
fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_pem_certs(path: &Path, certs: &[&Certificate]) {
    let mut s = String::new();
    for c in certs {
        s.push_str(&c.to_pem(LineEnding::LF).unwrap());
    }
    fs::write(path, s).unwrap();
}

/// `openssl cms -verify` of a detached signature against the test root.
#[track_caller]
fn openssl_verify(sig: &[u8], inform: &str, data: &[u8], ca: &Certificate) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("sig"), sig).unwrap();
    fs::write(dir.path().join("data"), data).unwrap();
    write_pem_certs(&dir.path().join("ca.pem"), &[ca]);
    let out = openssl(
        dir.path(),
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            inform,
            "-in",
            "sig",
            "-content",
            "data",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "smimesign",
            "-out",
            "/dev/null",
        ],
    );
    assert_ok(&out, "openssl cms -verify");
}

// ---------------------------------------------------------------------------------------
// Hashing, PEM, BER

/// Hands out data in small, uneven pieces.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.1 = self.1 % 7000 + 1;
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn digest_reader_matches_one_shot() {
    assert_eq!(
        hex::encode(digest_reader(HashAlg::Sha256, &b"abc"[..]).unwrap()),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for len in [0, 1, 65_535, 65_536, 65_537, 200_000] {
        for h in [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
            let data = &big[..len];
            let d = digest_reader(h, Trickle(data, 0)).unwrap();
            assert_eq!(d, h.digest(data));
            assert_eq!(d.len(), h.output_len());
            assert_eq!(HashAlg::from_oid(&h.oid()), Some(h));
        }
    }
}

#[test]
fn pem_and_base64_input() {
    let der = sign(
        &fixture().p256_key,
        &fixture().p256_leaf,
        &[],
        HashAlg::Sha256,
        false,
        DATA,
    );
    let pem = to_pem(&der);
    assert!(pem.starts_with("-----BEGIN CMS-----\n") && pem.ends_with("-----END CMS-----\n"));
    assert!(pem.lines().all(|l| l.len() <= 64));
    assert_eq!(parse_cms_input(pem.as_bytes()).unwrap(), der);
    assert_eq!(
        parse_cms_input(pem.replace("CMS", "PKCS7").replace('\n', "\r\n").as_bytes()).unwrap(),
        der
    );
    let bare: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(parse_cms_input(bare.as_bytes()).unwrap(), der);
    let mut trailing = der.clone();
    trailing.extend_from_slice(b"\r\n");
    assert_eq!(parse_cms_input(&trailing).unwrap(), der);
    assert!(verify(pem.as_bytes(), Some(DATA), &[]).is_ok());
    assert!(matches!(
        parse_cms_input(b"hello, world!"),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        parse_cms_input(b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        parse_cms_input(&der[..der.len() - 1]),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn ber_indefinite_and_chunks() {
    use super::ber::Tlv;
    // SEQUENCE (indefinite) { OCTET STRING (constructed, indefinite) { "ab", "c" }, NULL }
    let ber = [
        0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00, 0x00, 0x05, 0x00,
        0x00, 0x00,
    ];
    let t = Tlv::parse_exact(&ber).unwrap();
    let kids = t.children().unwrap();
    assert_eq!(kids.len(), 2);
    assert_eq!(
        kids[0].octet_string_chunks().unwrap(),
        vec![&b"ab"[..], &b"c"[..]]
    );
    assert_eq!(
        t.to_der().unwrap(),
        [0x30, 0x07, 0x04, 0x03, b'a', b'b', b'c', 0x05, 0x00]
    );
    assert!(Tlv::parse_exact(&ber[..ber.len() - 1]).is_err());
    assert!(Tlv::parse_exact(&[0x30, 0x05, 0x00]).is_err());
}

// ---------------------------------------------------------------------------------------
// Our signatures: verified by us and by OpenSSL

fn roundtrip(key: &SoftKey, leaf: &Certificate, extra: &[Certificate], hash: HashAlg, pss: bool) {
    let f = fixture();
    let sig = sign(key, leaf, extra, hash, pss, DATA);
    if let Some(dir) = std::env::var_os("SMIME_CMS_DUMP") {
        let name = format!(
            "{}-{hash}-{}.p7s",
            leaf.tbs_certificate().serial_number(),
            if pss { "pss" } else { "v15" }
        );
        fs::write(Path::new(&dir).join(name), &sig).unwrap();
        fs::write(Path::new(&dir).join("data"), DATA).unwrap();
    }

    let v = verify(&sig, Some(DATA), std::slice::from_ref(&f.ca)).unwrap();
    assert!(v.trusted);
    assert_eq!(
        &v.signer, leaf,
        "the signer must be found by sid, not position"
    );
    assert_eq!(v.digest_alg, hash);
    let st = v.signing_time.expect("signingTime is included");
    assert!(SystemTime::now().duration_since(st).unwrap_or_default() < Duration::from_secs(120));

    let untrusted = verify(&sig, Some(DATA), &[]).unwrap();
    assert!(!untrusted.trusted);

    openssl_verify(&sig, "DER", DATA, &f.ca);
}

#[test]
fn rsa_pkcs1_sha256_roundtrip() {
    let f = fixture();
    roundtrip(
        &f.rsa_key,
        &f.rsa_leaf,
        std::slice::from_ref(&f.ca),
        HashAlg::Sha256,
        false,
    );
}

#[test]
fn rsa_pkcs1_sha512_roundtrip() {
    let f = fixture();
    roundtrip(&f.rsa_key, &f.rsa_leaf, &[], HashAlg::Sha512, false);
}

#[test]
fn rsa_pss_sha256_roundtrip() {
    let f = fixture();
    roundtrip(&f.rsa_key, &f.rsa_leaf, &[], HashAlg::Sha256, true);
}

#[test]
fn rsa_pss_sha384_roundtrip() {
    let f = fixture();
    roundtrip(
        &f.rsa_key,
        &f.rsa_leaf,
        std::slice::from_ref(&f.ca),
        HashAlg::Sha384,
        true,
    );
}

#[test]
fn p256_roundtrip() {
    let f = fixture();
    roundtrip(
        &f.p256_key,
        &f.p256_leaf,
        &[f.ca.clone(), f.inter.clone()],
        HashAlg::Sha256,
        false,
    );
    roundtrip(&f.p256_key, &f.p256_leaf, &[], HashAlg::Sha384, false);
}

#[test]
fn p384_through_intermediate_roundtrip() {
    let f = fixture();
    roundtrip(
        &f.p384_key,
        &f.p384_leaf,
        std::slice::from_ref(&f.inter),
        HashAlg::Sha384,
        false,
    );
    // Without the intermediate there is no path to the root.
    let sig = sign(&f.p384_key, &f.p384_leaf, &[], HashAlg::Sha384, false, DATA);
    assert!(matches!(
        verify(&sig, Some(DATA), std::slice::from_ref(&f.ca)),
        Err(Error::Untrusted(_))
    ));
    // The intermediate itself may be the trust anchor.
    assert!(
        verify(&sig, Some(DATA), std::slice::from_ref(&f.inter))
            .unwrap()
            .trusted
    );
}

#[test]
fn pem_output_accepted_by_openssl() {
    let f = fixture();
    let sig = sign(&f.p256_key, &f.p256_leaf, &[], HashAlg::Sha256, false, DATA);
    openssl_verify(to_pem(&sig).as_bytes(), "PEM", DATA, &f.ca);
}

#[test]
fn large_content_streams() {
    let f = fixture();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let sig = sign(&f.p256_key, &f.p256_leaf, &[], HashAlg::Sha512, false, &big);
    let v = verify_detached(
        &sig,
        Some(Trickle(&big, 0)),
        anchors(std::slice::from_ref(&f.ca)).as_ref(),
        SystemTime::now(),
    )
    .unwrap();
    assert!(v.trusted);
    openssl_verify(&sig, "DER", &big, &f.ca);
}

// ---------------------------------------------------------------------------------------
// OpenSSL's signatures: verified by us

/// An OpenSSL-made key and self-signed certificate in `dir`.
fn openssl_self_signed(dir: &Path, newkey: &[&str]) -> Certificate {
    let mut args = vec![
        "req",
        "-x509",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=OpenSSL Signer",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
    ];
    args.extend_from_slice(newkey);
    assert_ok(&openssl(dir, &args), "openssl req -x509");
    Certificate::from_pem(fs::read(dir.join("cert.pem")).unwrap()).unwrap()
}

fn openssl_sign(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let mut args = vec![
        "cms", "-sign", "-binary", "-in", "data", "-signer", "cert.pem", "-inkey", "key.pem",
        "-out", "sig",
    ];
    args.extend_from_slice(extra);
    assert_ok(
        &openssl(dir, &args),
        &format!("openssl cms -sign {extra:?}"),
    );
    fs::read(dir.join("sig")).unwrap()
}

#[test]
fn openssl_rsa_signatures_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("data"), DATA).unwrap();
    let cert = openssl_self_signed(d, &["-newkey", "rsa:2048"]);
    let trust = std::slice::from_ref(&cert);

    // Detached DER, default (SHA-256, signatureAlgorithm rsaEncryption).
    let sig = openssl_sign(d, &["-outform", "DER"]);
    let v = verify(&sig, Some(DATA), trust).unwrap();
    assert!(v.trusted);
    assert_eq!(v.signer, cert);
    assert_eq!(v.digest_alg, HashAlg::Sha256);
    assert!(matches!(
        verify(&sig, Some(b"other"), trust),
        Err(Error::DigestMismatch)
    ));

    // SHA-384, subjectKeyIdentifier as sid.
    let sig = openssl_sign(d, &["-outform", "DER", "-md", "sha384", "-keyid"]);
    let v = verify(&sig, Some(DATA), trust).unwrap();
    assert_eq!(v.digest_alg, HashAlg::Sha384);

    // RSA-PSS.
    let sig = openssl_sign(d, &["-outform", "DER", "-keyopt", "rsa_padding_mode:pss"]);
    assert!(verify(&sig, Some(DATA), trust).unwrap().trusted);
    let sig = openssl_sign(
        d,
        &[
            "-outform",
            "DER",
            "-md",
            "sha512",
            "-keyopt",
            "rsa_padding_mode:pss",
            "-keyopt",
            "rsa_pss_saltlen:20",
        ],
    );
    assert!(verify(&sig, Some(DATA), trust).unwrap().trusted);

    // -stream: BER with indefinite lengths, content embedded.
    let sig = openssl_sign(d, &["-outform", "DER", "-stream"]);
    assert!(
        super::ber::Tlv::parse_exact(&sig).unwrap().raw[1] == 0x80,
        "expected indefinite length"
    );
    assert!(verify(&sig, None, trust).unwrap().trusted);
    assert!(matches!(
        verify(&sig, Some(b"not it"), trust),
        Err(Error::DigestMismatch)
    ));

    // Attached DER.
    let sig = openssl_sign(d, &["-outform", "DER", "-nodetach"]);
    assert!(verify(&sig, None, trust).unwrap().trusted);

    // No signed attributes: the signature covers the content digest.
    let sig = openssl_sign(d, &["-outform", "DER", "-noattr"]);
    let v = verify(&sig, Some(DATA), trust).unwrap();
    assert!(v.signing_time.is_none());
    assert!(matches!(
        verify(&sig, Some(b"other"), trust),
        Err(Error::BadSignature)
    ));

    // PEM ("CMS" label), and `openssl smime` PEM ("PKCS7" label).
    let sig = openssl_sign(d, &["-outform", "PEM"]);
    assert!(sig.starts_with(b"-----BEGIN CMS-----"));
    assert!(verify(&sig, Some(DATA), trust).unwrap().trusted);
    let out = openssl(
        d,
        &[
            "smime", "-sign", "-binary", "-in", "data", "-signer", "cert.pem", "-inkey", "key.pem",
            "-outform", "PEM", "-out", "sig7",
        ],
    );
    assert_ok(&out, "openssl smime -sign");
    let sig = fs::read(d.join("sig7")).unwrap();
    assert!(sig.starts_with(b"-----BEGIN PKCS7-----"));
    assert!(verify(&sig, Some(DATA), trust).unwrap().trusted);

    // Detached without content.
    let sig = openssl_sign(d, &["-outform", "DER"]);
    assert!(matches!(
        verify(&sig, None, trust),
        Err(Error::MissingContent)
    ));
}

#[test]
fn openssl_ec_signatures_verify() {
    for (curve, md, hash) in [
        ("prime256v1", "sha256", HashAlg::Sha256),
        ("secp384r1", "sha384", HashAlg::Sha384),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("data"), DATA).unwrap();
        let curve_opt = format!("ec_paramgen_curve:{curve}");
        let cert = openssl_self_signed(d, &["-newkey", "ec", "-pkeyopt", &curve_opt]);
        let trust = std::slice::from_ref(&cert);
        let sig = openssl_sign(d, &["-outform", "DER", "-md", md]);
        let v = verify(&sig, Some(DATA), trust).unwrap();
        assert!(v.trusted, "{curve}");
        assert_eq!(v.digest_alg, hash);
        let sig = openssl_sign(d, &["-outform", "DER", "-md", md, "-stream"]);
        assert!(
            verify(&sig, None, trust).unwrap().trusted,
            "{curve} -stream"
        );
    }
}

/// OpenSSL signs with our CA-issued keys; we verify the chain to our root.
#[test]
fn openssl_signs_with_our_certificates() {
    let f = fixture();
    for (key, cert, extra) in [
        (&f.rsa_key, &f.rsa_leaf, None),
        (&f.p384_key, &f.p384_leaf, Some(&f.inter)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("data"), DATA).unwrap();
        fs::write(d.join("key.pem"), key.pkcs8_pem()).unwrap();
        write_pem_certs(&d.join("cert.pem"), &[cert]);
        let mut args = vec!["-outform", "DER", "-stream"];
        if let Some(i) = extra {
            write_pem_certs(&d.join("chain.pem"), &[i]);
            args.extend(["-certfile", "chain.pem"]);
        }
        let sig = openssl_sign(d, &args);
        let v = verify(&sig, None, std::slice::from_ref(&f.ca)).unwrap();
        assert!(v.trusted);
        assert_eq!(&v.signer, cert);
    }
}

// ---------------------------------------------------------------------------------------
// Failures

/// Replaces the first occurrence of `needle` in `hay` after flipping one of its bytes.
fn flip_inside(hay: &[u8], needle: &[u8], at: usize) -> Vec<u8> {
    let pos = hay
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present");
    let mut out = hay.to_vec();
    out[pos + at] ^= 0x01;
    out
}

fn signer_info(sig: &[u8]) -> cms::signed_data::SignerInfo {
    let ci = cms::content_info::ContentInfo::from_der(sig).unwrap();
    let sd: cms::signed_data::SignedData = ci.content.decode_as().unwrap();
    sd.signer_infos.0.iter().next().unwrap().clone()
}

#[test]
fn tampering_is_detected() {
    let f = fixture();
    for (key, cert) in [(&f.rsa_key, &f.rsa_leaf), (&f.p256_key, &f.p256_leaf)] {
        let sig = sign(key, cert, &[], HashAlg::Sha256, false, DATA);
        let trust = std::slice::from_ref(&f.ca);

        let mut tampered = DATA.to_vec();
        tampered[30] ^= 0x20;
        assert!(matches!(
            verify(&sig, Some(&tampered), trust),
            Err(Error::DigestMismatch)
        ));

        let si = signer_info(&sig);
        let sig_bytes = si.signature.as_bytes();
        let bad = flip_inside(&sig, sig_bytes, sig_bytes.len() / 2);
        assert!(
            matches!(verify(&bad, Some(DATA), trust), Err(Error::BadSignature)),
            "flipped signature byte"
        );
        assert!(matches!(
            verify(&bad, Some(DATA), &[]),
            Err(Error::BadSignature)
        ));

        // A signed attribute changed (the ESS certificate hash): the signature breaks.
        let attrs_der = si.signed_attrs.as_ref().unwrap().to_der().unwrap();
        let cert_hash = HashAlg::Sha256.digest(&cert.to_der().unwrap());
        assert!(attrs_der.windows(32).any(|w| w == cert_hash.as_slice()));
        let bad = flip_inside(&sig, &cert_hash, 0);
        assert!(
            matches!(verify(&bad, Some(DATA), trust), Err(Error::BadSignature)),
            "flipped attribute byte"
        );
    }
}

#[test]
fn wrong_trust_anchor_is_untrusted() {
    let f = fixture();
    let sig = sign(
        &f.rsa_key,
        &f.rsa_leaf,
        std::slice::from_ref(&f.ca),
        HashAlg::Sha256,
        false,
        DATA,
    );
    // Same name as the real root, different key.
    match verify(&sig, Some(DATA), std::slice::from_ref(&f.other_ca)) {
        Err(Error::Untrusted(why)) => assert!(why.contains("did not sign"), "{why}"),
        other => panic!("expected Untrusted, got {other:?}"),
    }
    // A leaf is no CA for another leaf.
    let sig = sign(&f.p256_key, &f.p256_leaf, &[], HashAlg::Sha256, false, DATA);
    assert!(matches!(
        verify(&sig, Some(DATA), std::slice::from_ref(&f.rsa_leaf)),
        Err(Error::Untrusted(_))
    ));
    // OpenSSL agrees.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("sig"), &sig).unwrap();
    fs::write(dir.path().join("data"), DATA).unwrap();
    write_pem_certs(&dir.path().join("ca.pem"), &[&f.other_ca]);
    let out = openssl(
        dir.path(),
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "sig",
            "-content",
            "data",
            "-CAfile",
            "ca.pem",
            "-out",
            "/dev/null",
        ],
    );
    assert!(!out.status.success());
}

#[test]
fn validity_is_checked_now_and_at_signing_time() {
    let f = fixture();
    let sig = sign(&f.p256_key, &f.p256_leaf, &[], HashAlg::Sha256, false, DATA);
    let now = SystemTime::now();
    match verify_detached(&sig, Some(DATA), None, now + days(60)) {
        Err(Error::CertExpired {
            which: CheckedAt::Now,
            ..
        }) => {}
        other => panic!("expected CertExpired now, got {other:?}"),
    }
    match verify_detached(&sig, Some(DATA), None, now - days(2)) {
        Err(Error::CertNotYetValid {
            which: CheckedAt::Now,
            ..
        }) => {}
        other => panic!("expected CertNotYetValid now, got {other:?}"),
    }

    // A certificate valid from tomorrow, used today: fine tomorrow, except that it was
    // not valid when the signature was made.
    let future = f.ca_key.issue(
        TestProfile::new(CA_DN, "CN=Alice Future,O=smime-agent tests", false),
        7,
        validity(now + days(1), now + days(3)),
        f.p256_key.spki(),
    );
    let sig = sign(&f.p256_key, &future, &[], HashAlg::Sha256, false, DATA);
    let err = verify_detached(
        &sig,
        Some(DATA),
        anchors(std::slice::from_ref(&f.ca)).as_ref(),
        now + days(2),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::CertNotYetValid {
                which: CheckedAt::SigningTime,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at signing time"), "{err}");
}

#[test]
fn signer_errors_are_kept() {
    #[derive(Debug, thiserror::Error)]
    #[error("PIN locked on token 'Alice'")]
    struct PinLocked;
    struct Locked;
    impl DigestSigner for Locked {
        type Error = PinLocked;
        fn sign_digest(&self, _: SignAlgorithm, _: &[u8]) -> Result<Vec<u8>, PinLocked> {
            Err(PinLocked)
        }
    }
    let f = fixture();
    let digest = HashAlg::Sha256.digest(DATA);
    let req = SignRequest {
        content_digest: &digest,
        hash: HashAlg::Sha256,
        pss: false,
        signer_cert: &f.p256_leaf,
        extra_certs: &[],
    };
    match sign_detached(&req, &Locked) {
        Err(Error::Signer(e)) => {
            assert!(e.downcast_ref::<PinLocked>().is_some());
            assert_eq!(e.to_string(), "PIN locked on token 'Alice'");
        }
        other => panic!("expected Error::Signer, got {other:?}"),
    }

    // The key does not belong to the certificate.
    assert!(matches!(
        sign_detached(&req, &f.rsa_key),
        Err(Error::Signer(_))
    ));
    assert!(matches!(
        sign_detached(&req, &f.p384_key),
        Err(Error::SignerKeyMismatch)
    ));
    let wrong_p256 = SoftKey::P256(p256::ecdsa::SigningKey::generate_from_rng(
        &mut Urandom::new(),
    ));
    assert!(matches!(
        sign_detached(&req, &wrong_p256),
        Err(Error::SignerKeyMismatch)
    ));

    // Bad requests.
    let pss_ec = SignRequest { pss: true, ..req };
    assert!(matches!(
        sign_detached(&pss_ec, &f.p256_key),
        Err(Error::InvalidRequest(_))
    ));
    let short = SignRequest {
        hash: HashAlg::Sha384,
        ..req
    };
    assert!(matches!(
        sign_detached(&short, &f.p256_key),
        Err(Error::InvalidRequest(_))
    ));
}

#[test]
fn multiple_signers_all_verify() {
    // Two SignerInfos can't be made by sign_detached; OpenSSL can (two -signer options).
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("data"), DATA).unwrap();
    fs::write(d.join("k1.pem"), f.rsa_key.pkcs8_pem()).unwrap();
    fs::write(d.join("k2.pem"), f.p256_key.pkcs8_pem()).unwrap();
    write_pem_certs(&d.join("c1.pem"), &[&f.rsa_leaf]);
    write_pem_certs(&d.join("c2.pem"), &[&f.p256_leaf]);
    let out = openssl(
        d,
        &[
            "cms", "-sign", "-binary", "-in", "data", "-outform", "DER", "-out", "sig", "-signer",
            "c1.pem", "-inkey", "k1.pem", "-signer", "c2.pem", "-inkey", "k2.pem", "-md", "sha384",
        ],
    );
    assert_ok(&out, "openssl cms -sign (two signers)");
    let sig = fs::read(d.join("sig")).unwrap();
    let all = verify_detached_all(
        &sig,
        Some(DATA),
        anchors(std::slice::from_ref(&f.ca)).as_ref(),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|v| v.trusted && v.digest_alg == HashAlg::Sha384)
    );
    let signers: Vec<_> = all.iter().map(|v| v.signer.clone()).collect();
    assert!(signers.contains(&f.rsa_leaf) && signers.contains(&f.p256_leaf));
    // One bad signature spoils the lot.
    let si_sigs: Vec<Vec<u8>> = {
        let ci = cms::content_info::ContentInfo::from_der(&sig).unwrap();
        let sd: cms::signed_data::SignedData = ci.content.decode_as().unwrap();
        sd.signer_infos
            .0
            .iter()
            .map(|s| s.signature.as_bytes().to_vec())
            .collect()
    };
    let bad = flip_inside(&sig, &si_sigs[1], 5);
    assert!(matches!(
        verify(&bad, Some(DATA), &[]),
        Err(Error::BadSignature)
    ));
}

/// A sender that does not sort its signed attributes (the SET OF is not in DER order):
/// the signature is over the bytes as sent, which a decode/re-encode would re-sort.
#[test]
fn unsorted_signed_attributes_verify() {
    use super::ber::{Tlv, write_header};
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_header(&mut v, tag, body.len());
        v.extend_from_slice(body);
        v
    }
    let f = fixture();
    let sig = sign(&f.rsa_key, &f.rsa_leaf, &[], HashAlg::Sha256, false, DATA);

    let ci = Tlv::parse_exact(&sig).unwrap();
    let ci_kids = ci.children().unwrap(); // contentType, [0]
    let sd = ci_kids[1].children().unwrap()[0];
    let sd_kids = sd.children().unwrap(); // version, digestAlgorithms, encapContentInfo, [0] certs, signerInfos
    let si = sd_kids.last().unwrap().children().unwrap()[0];
    let si_kids = si.children().unwrap(); // version, sid, digestAlgorithm, [0] attrs, signatureAlgorithm, signature
    let mut attrs: Vec<&[u8]> = si_kids[3]
        .children()
        .unwrap()
        .iter()
        .map(|a| a.raw)
        .collect();
    attrs.reverse();
    let attrs_body = attrs.concat();
    let signed_set = tlv(0x31, &attrs_body);

    let SoftKey::Rsa(k) = &f.rsa_key else {
        unreachable!()
    };
    let new_sig = k
        .sign(
            rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
            &HashAlg::Sha256.digest(&signed_set),
        )
        .unwrap();
    let si_body = [
        si_kids[0].raw,
        si_kids[1].raw,
        si_kids[2].raw,
        &tlv(0xA0, &attrs_body),
        si_kids[4].raw,
        &tlv(0x04, &new_sig),
    ]
    .concat();
    let mut sd_body: Vec<u8> = sd_kids[..sd_kids.len() - 1]
        .iter()
        .flat_map(|t| t.raw.to_vec())
        .collect();
    sd_body.extend(tlv(0x31, &tlv(0x30, &si_body)));
    let unsorted = tlv(
        0x30,
        &[ci_kids[0].raw, &tlv(0xA0, &tlv(0x30, &sd_body))].concat(),
    );

    // The typed decoder re-sorts: its re-encoding is not what was signed.
    let typed = signer_info(&unsorted)
        .signed_attrs
        .unwrap()
        .to_der()
        .unwrap();
    assert_ne!(typed, signed_set);
    let v = verify(&unsorted, Some(DATA), std::slice::from_ref(&f.ca)).unwrap();
    assert!(v.trusted);
    if let Some(dir) = std::env::var_os("SMIME_CMS_DUMP") {
        fs::write(Path::new(&dir).join("unsorted.p7s"), &unsorted).unwrap();
    }
}
