//! `smime sign` / `smime verify`, judged by OpenSSL and gpgsm, and the reverse direction.

use std::path::Path;
use std::process::Command;

use smime_tests::{Agent, Gpgsm, Token, assert_ok, openssl_verify, run};

fn sign_with(agent: &Agent, key: &str, data: &Path, sig: &Path, extra: &[&str]) {
    assert_ok(
        &agent.sign(key, data, sig, extra),
        &format!("smime sign --key {key}"),
    );
}

#[test]
fn signatures_are_accepted_by_openssl_gpgsm_and_smime() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.txt");
    std::fs::write(
        &data,
        "Hello from the token.\r\nSecond line, no trailing newline",
    )
    .unwrap();
    let ca = token.file("ca.pem");
    let gpgsm = Gpgsm::trusting(&ca);
    for (key, extra) in [
        ("alice-rsa", &[][..]),
        ("alice-ec", &[][..]),
        ("alice-rsa", &["--pss"][..]),
        ("alice-ec", &["--digest", "sha384"][..]),
    ] {
        let sig = dir.path().join(format!("{key}{}.p7s", extra.join("")));
        sign_with(&agent, key, &data, &sig, extra);
        assert_ok(
            &openssl_verify(&sig, &data, &ca, "DER"),
            &format!("openssl cms -verify ({key} {extra:?})"),
        );
        let ours = agent.verify(&sig, &data, &ca);
        assert_ok(&ours, "smime verify");
        assert!(String::from_utf8_lossy(&ours.stdout).contains("alice@example.org"));
        if extra.is_empty() {
            // gpgsm 2.2 does not take RSA-PSS; it judges the PKCS#1 v1.5 and ECDSA signatures.
            let g = gpgsm.run(&["--verify".as_ref(), sig.as_os_str(), data.as_os_str()]);
            assert_ok(&g, &format!("gpgsm --verify ({key})"));
            assert!(
                String::from_utf8_lossy(&g.stderr).contains("Good signature"),
                "{}",
                String::from_utf8_lossy(&g.stderr)
            );
        }
    }
    // PEM output, read by OpenSSL as PEM.
    let pem = dir.path().join("sig.pem");
    sign_with(&agent, "alice-ec", &data, &pem, &["--pem"]);
    assert!(
        std::fs::read_to_string(&pem)
            .unwrap()
            .starts_with("-----BEGIN CMS-----")
    );
    assert_ok(
        &openssl_verify(&pem, &data, &ca, "PEM"),
        "openssl cms -verify -inform PEM",
    );
}

#[test]
fn key_selectors_and_ambiguity() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let keys = agent.smime(&["keys", "--json"]);
    assert_ok(&keys, "smime keys --json");
    let list: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for k in list {
        for f in [
            "id",
            "token",
            "label",
            "algorithm",
            "subject",
            "email",
            "not_before",
            "not_after",
            "sha256",
        ] {
            assert!(!k[f].is_null(), "field {f} missing in {k}");
        }
    }
    let bob = list.iter().find(|k| k["label"] == "bob-rsa").unwrap();
    assert_eq!(bob["email"], "bob@example.org");
    assert_eq!(bob["algorithm"], "rsa-2048");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    let sig = dir.path().join("s");
    // By fingerprint, by id, by e-mail: each picks bob.
    for sel in [
        bob["sha256"].as_str().unwrap(),
        bob["id"].as_str().unwrap(),
        "bob@example.org",
    ] {
        sign_with(&agent, sel, &data, &sig, &[]);
        assert_ok(
            &openssl_verify(&sig, &data, &token.file("ca.pem"), "DER"),
            "openssl verify",
        );
        let signer = run(Command::new("openssl")
            .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
            .arg(&sig));
        assert!(String::from_utf8_lossy(&signer.stdout).contains("Bob Example"));
    }
    // alice has two keys: the error lists both and nothing is written.
    let out_path = dir.path().join("never");
    let out = agent.sign("alice@example.org", &data, &out_path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alice-rsa") && err.contains("alice-ec"),
        "{err}"
    );
    assert!(!out_path.exists());
    // KeyIds survive an agent restart (and SoftHSM's slot renumbering).
    drop(agent);
    let again = Agent::start(&token).smime(&["keys", "--json"]);
    let ids = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&keys), ids(&again));
}

#[test]
fn openssl_signatures_are_accepted_and_tampering_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ossl = |args: &[&str]| {
        assert_ok(
            &run(Command::new("openssl").args(args).current_dir(dir.path())),
            &args.join(" "),
        )
    };
    // A software CA and signer, made by OpenSSL alone.
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=Peer CA",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    ossl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "u.key",
        "-out",
        "u.csr",
        "-subj",
        "/CN=Peer User",
    ]);
    std::fs::write(p("ext"), "keyUsage=digitalSignature\nextendedKeyUsage=emailProtection\nsubjectAltName=email:peer@example.net\n").unwrap();
    ossl(&[
        "x509",
        "-req",
        "-in",
        "u.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "7",
        "-days",
        "30",
        "-extfile",
        "ext",
        "-out",
        "u.pem",
    ]);
    std::fs::write(p("data"), vec![b'z'; 100_000]).unwrap();
    ossl(&[
        "cms", "-sign", "-binary", "-in", "data", "-signer", "u.pem", "-inkey", "u.key",
        "-outform", "DER", "-out", "sig.der",
    ]);
    ossl(&[
        "cms", "-sign", "-binary", "-stream", "-in", "data", "-signer", "u.pem", "-inkey", "u.key",
        "-outform", "DER", "-out", "sig.ber",
    ]);
    let token = Token::new();
    let agent = Agent::start(&token);
    let verify =
        |sig: &str, content: &str, trust: &str| agent.verify(&p(sig), &p(content), &p(trust));
    let good = verify("sig.der", "data", "ca.pem");
    assert_ok(&good, "smime verify of an openssl signature");
    assert!(String::from_utf8_lossy(&good.stdout).contains("peer@example.net"));
    // -stream output is BER with the content inside; detached verification still works.
    assert_ok(&verify("sig.ber", "data", "ca.pem"), "smime verify of BER");
    // Tampered content.
    let mut bad = std::fs::read(p("data")).unwrap();
    bad[50_000] ^= 1;
    std::fs::write(p("bad"), bad).unwrap();
    let out = verify("sig.der", "bad", "ca.pem");
    assert_eq!(
        out.status.code(),
        Some(1),
        "tampered content must fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Tampered signature value (last byte of the SignerInfo's signature).
    let mut sig = std::fs::read(p("sig.der")).unwrap();
    let n = sig.len();
    sig[n - 1] ^= 0x55;
    std::fs::write(p("sig.bad"), sig).unwrap();
    assert_eq!(
        verify("sig.bad", "data", "ca.pem").status.code(),
        Some(1),
        "tampered signature must fail"
    );
    // The wrong trust anchor.
    let other_ca = token.file("ca.pem");
    let out = agent.verify(&p("sig.der"), &p("data"), &other_ca);
    assert_eq!(out.status.code(), Some(1), "an untrusted chain must fail");
    // Garbage instead of CMS.
    std::fs::write(p("junk"), b"\x30\x03\x02\x01").unwrap();
    assert_ne!(verify("junk", "data", "ca.pem").status.code(), Some(0));
}

#[test]
fn our_signatures_fail_when_tampered() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, b"pay 100 EUR to Bob").unwrap();
    let sig = dir.path().join("sig");
    sign_with(&agent, "alice-ec", &data, &sig, &[]);
    std::fs::write(&data, b"pay 900 EUR to Bob").unwrap();
    let ca = token.file("ca.pem");
    assert!(
        !openssl_verify(&sig, &data, &ca, "DER").status.success(),
        "openssl must reject it too"
    );
    let out = agent.verify(&sig, &data, &ca);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn large_input_is_streamed_from_stdin() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("big");
    let chunk: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let mut f = std::fs::File::create(&data).unwrap();
    for _ in 0..64 {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
    drop(f);
    let sig = dir.path().join("big.p7s");
    let out = smime_tests::run_stdin(
        Command::new(smime_tests::built("smime"))
            .env("SMIME_AGENT_SOCK", &agent.socket)
            .args(["sign", "--key", "alice-rsa", "--out"])
            .arg(&sig),
        &std::fs::read(&data).unwrap(),
    );
    assert_ok(&out, "smime sign from stdin");
    assert_ok(
        &openssl_verify(&sig, &data, &token.file("ca.pem"), "DER"),
        "openssl verify 64 MiB",
    );
}

#[test]
fn without_a_trust_anchor_verification_fails_unless_asked_not_to_chain() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::write(&data, b"trust me").unwrap();
    let sig = dir.path().join("s.p7s");
    sign_with(&agent, "alice-rsa", &data, &sig, &[]);
    // The test CA is not in the system store.
    let out = agent.smime(&[
        "verify",
        "--in",
        sig.to_str().unwrap(),
        "--content",
        data.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("untrusted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent.smime(&[
        "verify",
        "--no-chain",
        "--in",
        sig.to_str().unwrap(),
        "--content",
        data.to_str().unwrap(),
    ]);
    assert_ok(&out, "verify --no-chain");
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT checked"));
    // A detached signature without its content is a usage error, not a silent read of stdin.
    let out = agent.smime(&[
        "verify",
        "--in",
        sig.to_str().unwrap(),
        "--trust",
        token.file("ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--content"));
}

#[test]
fn attached_openssl_signatures_verify_without_content() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ossl = |args: &[&str]| {
        assert_ok(
            &run(Command::new("openssl").args(args).current_dir(dir.path())),
            &args.join(" "),
        )
    };
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "k",
        "-out",
        "c.pem",
        "-subj",
        "/CN=Attached",
        "-days",
        "2",
        "-addext",
        "subjectAltName=email:att@example.net",
    ]);
    std::fs::write(p("data"), b"inside the signature").unwrap();
    ossl(&[
        "cms",
        "-sign",
        "-binary",
        "-nodetach",
        "-in",
        "data",
        "-signer",
        "c.pem",
        "-inkey",
        "k",
        "-outform",
        "DER",
        "-out",
        "att.der",
    ]);
    let out = agent.smime(&[
        "verify",
        "--in",
        p("att.der").to_str().unwrap(),
        "--trust",
        p("c.pem").to_str().unwrap(),
    ]);
    assert_ok(&out, "verify attached");
}
