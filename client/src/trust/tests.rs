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

/// A verification time safely after every test certificate's notBefore: they are issued
/// after the test reads the clock, and "now" may fall in the second before (seen under load).
fn later() -> SystemTime {
    SystemTime::now() + Duration::from_secs(300)
}

fn policy(pki: &Pki) -> TrustPolicy {
    TrustPolicy::with_anchors(vec![pki.root.clone()])
}

#[test]
fn good_chain_is_described_signer_first() {
    let pki = Pki::new();
    let (leaf, der) = pki.leaf(
        "good",
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=emailProtection\ncertificatePolicies=1.2.3.4",
    );
    let now = later();
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
    let now = later();
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
    let now = later();
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
    let now = later();
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
