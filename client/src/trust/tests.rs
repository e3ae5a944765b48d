//! Path validation verdicts on small OpenSSL-made PKIs (PKITS covers RFC 5280 at large:
//! tests/pkits).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use der::{Decode, DecodePem, Encode};
use x509_cert::Certificate;

use super::{Check, PolicySettings, Role, TrustPolicy};
use crate::cms::CheckedAt;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pem(dir: &Path, name: &str) -> Certificate {
    Certificate::from_pem(std::fs::read(dir.join(name)).unwrap()).unwrap()
}

/// A root and leaves issued by it, one per extension set (`extfile` lines).
struct Pki {
    dir: tempfile::TempDir,
    root: Certificate,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("ca.ext"),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier=hash\ncertificatePolicies=1.2.3.4\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "ca.key",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                "/CN=Trust Test Root",
                "-out",
                "ca.csr",
            ],
        );
        openssl(
            d,
            &[
                "x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-days", "30", "-extfile",
                "ca.ext", "-out", "ca.pem",
            ],
        );
        let root = pem(d, "ca.pem");
        Pki { dir, root }
    }

    fn leaf(&self, name: &str, ext: &str) -> (Certificate, Vec<u8>) {
        let d = self.dir.path();
        std::fs::write(
            d.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n{ext}\n"),
        )
        .unwrap();
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-days",
                "10",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
        let c = pem(d, &format!("{name}.pem"));
        let der = c.to_der().unwrap();
        (Certificate::from_der(&der).unwrap(), der)
    }
}

fn policy(pki: &Pki) -> TrustPolicy {
    TrustPolicy::with_anchors(vec![pki.root.clone()])
}

/// A moment just after now: certificates issued during a test have a notBefore of the
/// issuing second, which may be later than a `now` taken before them.
fn soon() -> SystemTime {
    SystemTime::now() + Duration::from_secs(2)
}

#[test]
fn good_chain_is_described_signer_first() {
    let pki = Pki::new();
    let (leaf, der) = pki.leaf(
        "good",
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=emailProtection\ncertificatePolicies=1.2.3.4",
    );
    let now = soon();
    let v = policy(&pki).validate(&leaf, &der, &[], &[], now, Some(now));
    assert!(v.is_valid(), "{v}");
    assert_eq!(v.checks.len(), 2);
    assert_eq!(v.checks[1].at, CheckedAt::SigningTime);
    let roles: Vec<Role> = v.chain.iter().map(|c| c.role).collect();
    assert_eq!(roles, [Role::Signer, Role::Anchor]);
    assert_eq!(v.chain[1].subject, "CN=Trust Test Root");
    let j = v.to_json();
    assert_eq!(j["valid"], true);
    assert_eq!(j["chain"][0]["subject"], "CN=good");
}

#[test]
fn signer_usage_is_checked() {
    let pki = Pki::new();
    let now = soon();
    let (leaf, der) = pki.leaf(
        "tls",
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth",
    );
    let v = policy(&pki).validate(&leaf, &der, &[], &[], now, None);
    let (_, f) = v.failure().unwrap();
    assert_eq!(f.check, Check::ExtendedKeyUsage, "{v}");
    assert_eq!(f.index, Some(0));

    let (leaf, der) = pki.leaf(
        "any",
        "keyUsage=nonRepudiation\nextendedKeyUsage=anyExtendedKeyUsage",
    );
    assert!(
        policy(&pki)
            .validate(&leaf, &der, &[], &[], now, None)
            .is_valid()
    );

    let (leaf, der) = pki.leaf("enc", "keyUsage=keyEncipherment");
    let v = policy(&pki).validate(&leaf, &der, &[], &[], now, None);
    assert_eq!(v.failure().unwrap().1.check, Check::KeyUsage, "{v}");
}

#[test]
fn initial_policy_set_and_explicit_policy() {
    let pki = Pki::new();
    let now = soon();
    let (leaf, der) = pki.leaf("pol", "certificatePolicies=1.2.3.4");
    let mut p = policy(&pki);
    p.policy = PolicySettings {
        initial_policies: vec!["1.2.3.4".parse().unwrap()],
        require_explicit_policy: true,
        ..PolicySettings::default()
    };
    assert!(p.validate(&leaf, &der, &[], &[], now, None).is_valid());
    p.policy.initial_policies = vec!["1.2.3.5".parse().unwrap()];
    let v = p.validate(&leaf, &der, &[], &[], now, None);
    assert_eq!(v.failure().unwrap().1.check, Check::Policy, "{v}");
    // Without explicit policy, a policy-less leaf is fine; with it, not.
    let (leaf, der) = pki.leaf("nopol", "keyUsage=digitalSignature");
    let mut p = policy(&pki);
    assert!(p.validate(&leaf, &der, &[], &[], now, None).is_valid());
    p.policy.require_explicit_policy = true;
    let v = p.validate(&leaf, &der, &[], &[], now, None);
    assert_eq!(v.failure().unwrap().1.check, Check::Policy, "{v}");
}

#[test]
fn failures_say_which_time() {
    let pki = Pki::new();
    let (leaf, der) = pki.leaf("t", "keyUsage=digitalSignature");
    let now = soon();
    // Signed "a year ago", before the certificate existed.
    let v = policy(&pki).validate(
        &leaf,
        &der,
        &[],
        &[],
        now,
        Some(now - Duration::from_secs(365 * 86400)),
    );
    assert!(v.checks[0].failure.is_none());
    let (c, _) = v.failure().unwrap();
    assert_eq!(c.at, CheckedAt::SigningTime, "{v}");
}

#[test]
fn unknown_anchor_is_no_path() {
    let pki = Pki::new();
    let other = Pki::new();
    let (leaf, der) = pki.leaf("x", "keyUsage=digitalSignature");
    let v = policy(&other).validate(&leaf, &der, &[], &[], SystemTime::now(), None);
    let (_, f) = v.failure().unwrap();
    // Same anchor name, other key: the candidate path fails its signature check.
    assert_eq!(f.check, Check::Signature, "{v}");
    assert!(f.detail.contains("did not sign"), "{v}");
}

// ---- CRL processing beyond certval (crl.rs): edges PKITS does not cover ----

/// Issues a certificate for `subj` with a fresh P-256 key `{name}.key`, signed by
/// `ca_cert`/`ca_key` (files in the PKI's directory), with `ext` (extfile lines).
fn issue(pki: &Pki, name: &str, subj: &str, ca_cert: &str, ca_key: &str, ext: &str) -> Vec<u8> {
    let d = pki.dir.path();
    std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            subj,
            "-out",
            &format!("{name}.csr"),
        ],
    );
    let mut args = vec!["x509", "-req", "-in"];
    let csr = format!("{name}.csr");
    let out = format!("{name}.pem");
    let extfile = format!("{name}.ext");
    args.push(&csr);
    if ca_cert.is_empty() {
        args.extend(["-signkey", ca_key]);
    } else {
        args.extend(["-CA", ca_cert, "-CAkey", ca_key]);
    }
    args.extend(["-days", "10", "-extfile", &extfile, "-out", &out]);
    openssl(d, &args);
    pem(d, &out).to_der().unwrap()
}

/// A CRL signed with `key`, naming `cert`'s subject as its issuer, listing `revoked`
/// certificates, with cRLNumber `number` and the extension lines `exts` (an
/// `openssl ca -crlexts` section).
fn crl(
    pki: &Pki,
    cert: &str,
    key: &str,
    revoked: &[&Certificate],
    number: u32,
    exts: &str,
) -> Vec<u8> {
    let d = pki.dir.path();
    let mut index = String::new();
    for c in revoked {
        let serial = hex::encode_upper(c.tbs_certificate().serial_number().as_bytes());
        index.push_str(&format!(
            "R\t301231000000Z\t250101000000Z\t{serial}\tunknown\t/CN=x\n"
        ));
    }
    std::fs::write(d.join("index.txt"), index).unwrap();
    std::fs::write(d.join("crlnumber"), format!("{number:02X}\n")).unwrap();
    std::fs::write(
        d.join("crl.cnf"),
        format!(
            "[ca]\ndefault_ca = ca_default\n[ca_default]\ndatabase = index.txt\n\
             crlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n\
             [crl_ext]\n{exts}\n"
        ),
    )
    .unwrap();
    openssl(
        d,
        &[
            "ca", "-gencrl", "-config", "crl.cnf", "-cert", cert, "-keyfile", key, "-crlexts",
            "crl_ext", "-out", "crl.pem",
        ],
    );
    let p = std::fs::read_to_string(d.join("crl.pem")).unwrap();
    let b64: String = p.lines().filter(|l| !l.starts_with("-----")).collect();
    crate::cms::pem::decode(b64.as_bytes()).unwrap()
}

fn hard(pki: &Pki, extra_anchors: &[Vec<u8>]) -> TrustPolicy {
    let mut p = policy(pki);
    for a in extra_anchors {
        p.anchors.push(Certificate::from_der(a).unwrap());
    }
    p.revocation = super::RevocationMode::Hard;
    p
}

/// A CRL signer certificate, whose status is on the root's CRL of [`SIGNERS_ONLY`].
const CRL_SIGNER: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,cRLSign\n\
     subjectKeyIdentifier=hash\ncrlDistributionPoints=URI:http://crl.test/signers.crl\n";
/// The root's own CRL covers only its distribution point (so the CRL signer certificate),
/// not the leaf: the leaf's status must come from the separate CRL signer.
const SIGNERS_ONLY: &str =
    "issuingDistributionPoint=critical,@idp\n[idp]\nfullname=URI:http://crl.test/signers.crl";

#[test]
fn a_separate_crl_signer_must_chain_to_the_same_anchor() {
    let pki = Pki::new();
    let now = soon();
    let (leaf, der) = pki.leaf("l", "keyUsage=digitalSignature");
    let root_crl = crl(&pki, "ca.pem", "ca.key", &[], 1, SIGNERS_ONLY);
    // A CRL signer named as the root, certified by the root: accepted.
    let signer = issue(
        &pki,
        "s",
        "/CN=Trust Test Root",
        "ca.pem",
        "ca.key",
        CRL_SIGNER,
    );
    let good = crl(&pki, "s.pem", "s.key", &[], 2, "");
    let p = hard(&pki, &[]);
    let v = p.validate(&leaf, &der, &[&signer], &[&root_crl, &good], now, None);
    assert!(v.is_valid(), "{v}");
    assert_eq!(v.revocation, super::RevocationStatus::Good);
    let revoked = crl(&pki, "s.pem", "s.key", &[&leaf], 3, "");
    let v = p.validate(&leaf, &der, &[&signer], &[&root_crl, &revoked], now, None);
    assert_eq!(v.failure().unwrap().1.check, Check::Revoked, "{v}");
    // Without the root's CRL the signer's own status is unknown: not usable (its own CRL
    // does not vouch for it).
    let v = p.validate(&leaf, &der, &[&signer], &[&good], now, None);
    assert_eq!(
        v.failure().unwrap().1.check,
        Check::RevocationUnknown,
        "{v}"
    );

    // The same name and usage, certified by another trusted root: not this path's anchor.
    let other = issue(
        &pki,
        "o",
        "/CN=Other Root",
        "",
        "o.key",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    );
    let foreign = issue(
        &pki,
        "f",
        "/CN=Trust Test Root",
        "o.pem",
        "o.key",
        CRL_SIGNER,
    );
    let other_crl = crl(&pki, "o.pem", "o.key", &[], 1, "");
    let forged = crl(&pki, "f.pem", "f.key", &[], 4, "");
    let p = hard(&pki, &[other]);
    let v = p.validate(
        &leaf,
        &der,
        &[&foreign],
        &[&root_crl, &other_crl, &forged],
        now,
        None,
    );
    assert_eq!(
        v.failure().unwrap().1.check,
        Check::RevocationUnknown,
        "{v}"
    );
}

#[test]
fn delta_crls_apply_only_to_the_complete_crl_they_follow() {
    let pki = Pki::new();
    let now = soon();
    let (leaf, der) = pki.leaf("l", "keyUsage=digitalSignature");
    let (other, _) = pki.leaf("m", "keyUsage=digitalSignature");
    let p = hard(&pki, &[]);
    let complete = crl(&pki, "ca.pem", "ca.key", &[&other], 5, "");
    let delta = |base: u8, number: u32| {
        crl(
            &pki,
            "ca.pem",
            "ca.key",
            &[&leaf],
            number,
            &format!("2.5.29.27=critical,DER:02:01:{base:02X}"),
        )
    };
    // The complete CRL alone: good (certval).
    let v = p.validate(&leaf, &der, &[], &[&complete], now, None);
    assert!(v.is_valid(), "{v}");
    // A delta CRL following it (base 5 <= 5 < 6) revokes the leaf.
    let v = p.validate(&leaf, &der, &[], &[&complete, &delta(5, 6)], now, None);
    assert_eq!(v.failure().unwrap().1.check, Check::Revoked, "{v}");
    let v = p.validate(&leaf, &der, &[], &[&complete, &delta(3, 6)], now, None);
    assert_eq!(v.failure().unwrap().1.check, Check::Revoked, "{v}");
    // A delta CRL for a later base than this complete CRL does not apply to it...
    let v = p.validate(&leaf, &der, &[], &[&complete, &delta(6, 7)], now, None);
    assert!(v.is_valid(), "{v}");
    // ... nor does one older than it (its number is not above the complete CRL's).
    let v = p.validate(&leaf, &der, &[], &[&complete, &delta(4, 5)], now, None);
    assert!(v.is_valid(), "{v}");
    // A delta CRL alone settles nothing.
    let v = p.validate(&leaf, &der, &[], &[&delta(5, 6)], now, None);
    assert_eq!(
        v.failure().unwrap().1.check,
        Check::RevocationUnknown,
        "{v}"
    );
}

// ---- DSA (dsa.rs) ----

/// A DSA key made and used by OpenSSL: its signatures verify (SHA-1 and SHA-256); a
/// changed message does not.
#[test]
fn dsa_signatures_made_by_openssl_verify() {
    use der::DecodePem as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-genparam",
            "-algorithm",
            "DSA",
            "-pkeyopt",
            "dsa_paramgen_bits:2048",
            "-pkeyopt",
            "dsa_paramgen_q_bits:256",
            "-out",
            "p.pem",
        ],
    );
    openssl(d, &["genpkey", "-paramfile", "p.pem", "-out", "k.pem"]);
    openssl(d, &["pkey", "-in", "k.pem", "-pubout", "-out", "pub.pem"]);
    std::fs::write(d.join("m"), b"hello DSA").unwrap();
    let spki = spki::SubjectPublicKeyInfoOwned::from_pem(std::fs::read(d.join("pub.pem")).unwrap())
        .unwrap();
    assert!(super::dsa::is_dsa(&spki));
    let key = super::dsa::verifying_key(&spki, None).unwrap();
    for (md, digest) in [
        ("-sha1", {
            use sha1::Digest as _;
            sha1::Sha1::digest(b"hello DSA").to_vec()
        }),
        ("-sha256", {
            use sha2::Digest as _;
            sha2::Sha256::digest(b"hello DSA").to_vec()
        }),
    ] {
        openssl(d, &["dgst", md, "-sign", "k.pem", "-out", "sig", "m"]);
        let sig = std::fs::read(d.join("sig")).unwrap();
        assert!(super::dsa::verify_prehash(&key, &digest, &sig), "{md}");
        let mut other = digest.clone();
        other[0] ^= 1;
        assert!(!super::dsa::verify_prehash(&key, &other, &sig), "{md}");
    }
    // Without parameters, and none inherited: no key.
    let mut bare = spki.clone();
    bare.algorithm.parameters = None;
    assert!(super::dsa::verifying_key(&bare, None).is_err());
}

/// SHA-1 is accepted for DSA signatures only: an RSA signature over SHA-1 stays
/// unsupported.
#[test]
fn sha1_is_not_accepted_for_rsa_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-subj",
            "/CN=sha1", "-days", "2", "-out", "c.pem",
        ],
    );
    std::fs::write(d.join("m"), b"hello").unwrap();
    openssl(
        d,
        &[
            "cms", "-sign", "-binary", "-md", "sha1", "-signer", "c.pem", "-inkey", "k.pem", "-in",
            "m", "-outform", "DER", "-out", "s.der",
        ],
    );
    let cms = std::fs::read(d.join("s.der")).unwrap();
    let e = crate::cms::verify::verify_detached(&cms, Some(&b"hello"[..]), None, SystemTime::now())
        .unwrap_err();
    assert!(
        matches!(e, crate::cms::Error::UnsupportedAlgorithm(o) if o == const_oid::db::rfc5912::ID_SHA_1),
        "{e}"
    );
}

/// A certificate `subject` issued by `issuer` with the key `spki`, signed with a fixed
/// P-256 key (only names and keys matter to parameter inheritance).
fn bare_cert(subject: &str, issuer: &str, spki: spki::SubjectPublicKeyInfoOwned) -> Certificate {
    use std::str::FromStr as _;
    use x509_cert::builder::profile::BuilderProfile;
    use x509_cert::builder::{Builder as _, CertificateBuilder};
    use x509_cert::name::Name;
    struct Plain(Name, Name);
    impl BuilderProfile for Plain {
        fn get_issuer(&self, _: &Name) -> Name {
            self.1.clone()
        }
        fn get_subject(&self) -> Name {
            self.0.clone()
        }
        fn build_extensions(
            &self,
            _: spki::SubjectPublicKeyInfoRef<'_>,
            _: spki::SubjectPublicKeyInfoRef<'_>,
            _: &x509_cert::certificate::TbsCertificate,
        ) -> x509_cert::builder::Result<Vec<x509_cert::ext::Extension>> {
            Ok(Vec::new())
        }
    }
    let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let profile = Plain(
        Name::from_str(subject).unwrap(),
        Name::from_str(issuer).unwrap(),
    );
    CertificateBuilder::new(
        profile,
        x509_cert::serial_number::SerialNumber::from(1u32),
        x509_cert::time::Validity::from_now(Duration::from_secs(60)).unwrap(),
        spki,
    )
    .unwrap()
    .build::<_, p256::ecdsa::DerSignature>(&key)
    .unwrap()
}

fn dsa_spki(y: u8, params: Option<u8>) -> spki::SubjectPublicKeyInfoOwned {
    spki::SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ID_DSA,
            parameters: params.map(|p| {
                der::Any::encode_from(&der::asn1::OctetString::new(vec![p]).unwrap()).unwrap()
            }),
        },
        subject_public_key: der::asn1::BitString::from_bytes(&[2, 1, y]).unwrap(),
    }
}

/// A DSA key without parameters inherits its issuer's, through a parameter-less issuer
/// too, and only when every certificate carrying the issuer's name agrees.
#[test]
fn dsa_parameters_are_inherited_only_when_unambiguous() {
    let ca = bare_cert("CN=DSA CA", "CN=Root", dsa_spki(1, Some(0xaa)));
    let sub = bare_cert("CN=Sub", "CN=DSA CA", dsa_spki(2, None));
    let ee = bare_cert("CN=EE", "CN=Sub", dsa_spki(3, None));
    let got = super::dsa::inherited_parameters(&[&ca, &sub, &ee]);
    assert_eq!(got.len(), 2);
    let want = dsa_spki(1, Some(0xaa)).algorithm.parameters.unwrap();
    assert!(got.iter().all(|(_, p)| *p == want));
    assert!(got.iter().any(|(b, _)| b == &[2, 1, 3]));
    // Another "CN=DSA CA" with other parameters: neither is believed.
    let rogue = bare_cert("CN=DSA CA", "CN=Elsewhere", dsa_spki(4, Some(0xbb)));
    assert!(super::dsa::inherited_parameters(&[&ca, &rogue, &sub, &ee]).is_empty());
    // The same parameters twice are no ambiguity.
    let twin = bare_cert("CN=DSA CA", "CN=Elsewhere", dsa_spki(5, Some(0xaa)));
    assert_eq!(
        super::dsa::inherited_parameters(&[&ca, &twin, &sub, &ee]).len(),
        2
    );
}

/// A leaf issued by `pki`'s root with `openssl ca`, which takes any validity dates (here
/// UTCTime, `YYMMDDhhmmssZ`); the DER as OpenSSL wrote it.
fn leaf_dated(pki: &Pki, name: &str, start: &str, end: &str) -> Vec<u8> {
    let d = pki.dir.path();
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
         default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n",
    )
    .unwrap();
    if !d.join("serial").exists() {
        std::fs::write(d.join("index.txt"), "").unwrap();
        std::fs::write(d.join("serial"), "1000\n").unwrap();
    }
    std::fs::write(
        d.join(format!("{name}.ext")),
        "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=emailProtection\n",
    )
    .unwrap();
    let (csr, pem_out, der_out) = (
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.der"),
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &csr,
        ],
    );
    openssl(
        d,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            &csr,
            "-out",
            &pem_out,
            "-startdate",
            start,
            "-enddate",
            end,
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
    openssl(
        d,
        &["x509", "-in", &pem_out, "-outform", "DER", "-out", &der_out],
    );
    std::fs::read(d.join(der_out)).unwrap()
}

/// NIST PKITS 4.2.3 in small: a notBefore in 1950, which `x509-cert` cannot decode.
#[test]
fn a_certificate_from_1950_validates_over_its_original_encoding() {
    use super::pre1970;
    let pki = Pki::new();
    let der = leaf_dated(&pki, "old", "500101120100Z", "301231083000Z");
    assert!(
        Certificate::from_der(&der).is_err(),
        "x509-cert decodes 1950 now: drop pre1970?"
    );
    let cert = pre1970::decode(&der).unwrap();
    let now = soon();
    let v = policy(&pki).validate(&cert, &der, &[], &[], now, Some(now));
    assert!(v.is_valid(), "{v}");
    // The verdict shows the certificate's own dates, not the decodable copy's.
    assert_eq!(
        crate::cms::fmt_time(v.chain[0].not_before),
        "1950-01-01T12:01:00Z"
    );
    assert_eq!(
        crate::cms::fmt_time(v.chain[0].not_after),
        "2030-12-31T08:30:00Z"
    );

    // The signature is checked over the original: another pre-1970 date, which makes the
    // very same decodable copy, fails; so does any other change.
    let at = der.windows(13).position(|w| w == b"500101120100Z").unwrap();
    let mut other_date = der.clone();
    other_date[at + 1] = b'1'; // 1951
    assert_eq!(pre1970::rewrite(&other_date), pre1970::rewrite(&der));
    let at_cn = der.windows(3).position(|w| w == b"old").unwrap();
    let mut other_name = der.clone();
    other_name[at_cn + 2] = b'D';
    for tampered in [other_date, other_name] {
        let cert = pre1970::decode(&tampered).unwrap();
        let v = policy(&pki).validate(&cert, &tampered, &[], &[], now, None);
        let (_, f) = v.failure().expect("a tampered certificate must fail");
        assert_eq!(f.check, Check::Signature, "{v}");
    }
}

#[test]
fn a_certificate_that_expired_before_1970_stays_expired() {
    use super::pre1970;
    let pki = Pki::new();
    let der = leaf_dated(&pki, "expired", "500101120100Z", "600101120100Z");
    let cert = pre1970::decode(&der).unwrap();
    let [nb, na] = pre1970::pre1970_validity(&der);
    assert_eq!(crate::cms::fmt_time(nb.unwrap()), "1950-01-01T12:01:00Z");
    assert_eq!(crate::cms::fmt_time(na.unwrap()), "1960-01-01T12:01:00Z");
    for at in [soon(), SystemTime::UNIX_EPOCH + Duration::from_secs(1)] {
        let v = policy(&pki).validate(&cert, &der, &[], &[], at, None);
        let (_, f) = v.failure().expect("expired in 1960");
        assert_eq!(f.check, Check::Validity, "{v}");
    }
}

#[test]
fn only_validity_times_before_1970_are_rewritten_in_place() {
    use super::pre1970;
    let pki = Pki::new();
    // A certificate that decodes is left alone.
    let (_, der) = pki.leaf("new", "keyUsage=critical,digitalSignature");
    assert_eq!(pre1970::rewrite(&der), None);
    assert_eq!(pre1970::decodable(&der), None);
    let old = leaf_dated(&pki, "old", "691231235959Z", "700101000001Z");
    let copy = pre1970::rewrite(&old).unwrap();
    assert_eq!(copy.len(), old.len());
    let diff: Vec<usize> = (0..old.len()).filter(|&i| old[i] != copy[i]).collect();
    assert!(!diff.is_empty() && diff.len() <= 13, "{diff:?}");
    assert!(copy.windows(13).any(|w| w == b"700101000000Z"));
    assert!(
        copy.windows(13).any(|w| w == b"700101000001Z"),
        "notAfter kept"
    );
    assert_eq!(
        crate::cms::fmt_time(pre1970::pre1970_validity(&old)[0].unwrap()),
        "1969-12-31T23:59:59Z"
    );
}

/// Two certificates that differ only in a pre-1970 date make the same decodable copy: with
/// both at hand, neither signature is taken, so the wrong one cannot borrow the right one's.
#[test]
fn twins_that_differ_only_before_1970_are_both_refused() {
    use super::pre1970;
    let pki = Pki::new();
    let der = leaf_dated(&pki, "twin", "500101120100Z", "301231083000Z");
    let at = der.windows(13).position(|w| w == b"500101120100Z").unwrap();
    let mut twin = der.clone();
    twin[at + 1] = b'1';
    let cert = pre1970::decode(&der).unwrap();
    let now = soon();
    let v = policy(&pki).validate(&cert, &der, &[&twin], &[], now, None);
    let (_, f) = v.failure().expect("ambiguous originals");
    assert_eq!(f.check, Check::Signature, "{v}");
    let v = policy(&pki).validate(&cert, &der, &[&der], &[], now, None);
    assert!(v.is_valid(), "{v}");
}
