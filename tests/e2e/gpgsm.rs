//! gpgsm as a peer on the same SoftHSM token (gpg-agent + gnupg-pkcs11-scd): what gpgsm
//! signs with the on-token keys, `smime verify` accepts; what `smime encrypt` makes, gpgsm
//! decrypts with the on-token key; and the reverse. gpgsm judging *our* signatures is in
//! sign.rs. gnupg-pkcs11-scd is RSA-only, so alice-ec is not used here.

use std::path::Path;
use std::process::{Command, Output};

use smime_tests::{Agent, Gpgsm, Token, assert_ok, run, sha1_fingerprint};

/// How many signatures per key and form. gpgsm 2.2 + gnupg-pkcs11-scd writes an RSA
/// signature whose value has its top bit set as 257 bytes with a leading 00 (how often
/// depends on the modulus: about 1 in 4 on average); OpenSSL rejects those, `smime verify`
/// accepts them by design. Several signatures make it likely one of them is such a case.
const ROUNDS: usize = 8;

/// Length of the last OCTET STRING in a DER/BER CMS file: for a one-signer SignedData
/// without unsigned attributes, the signature value.
fn signature_len(sig: &Path) -> Option<usize> {
    let out = run(Command::new("openssl")
        .args(["asn1parse", "-inform", "DER", "-in"])
        .arg(sig));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rfind(|l| l.contains("prim: OCTET STRING"))
        .and_then(|l| l.split(" l=").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Distinct content per round (so the signatures differ), with CR LF and non-UTF-8 bytes:
/// the signatures are over binary content.
fn content(i: usize, key: &str) -> Vec<u8> {
    let mut d = format!("round {i} for {key}\r\nline two\n").into_bytes();
    d.extend_from_slice(&[0, 0xff, 0x80, b'\r', b'\n']);
    d.extend(std::iter::repeat_n(b'x', i * 37));
    d
}

/// Signers by the two selectors gpgsm takes: certificate fingerprint and e-mail address.
fn signers(token: &Token) -> [(String, &'static str); 2] {
    [
        (
            sha1_fingerprint(&token.file("alice-rsa.pem")),
            "alice@example.org",
        ),
        ("bob@example.org".to_owned(), "bob@example.org"),
    ]
}

#[test]
fn gpgsm_detached_signatures_from_the_card_verify_with_smime() {
    let token = Token::new();
    let gpgsm = Gpgsm::with_token(&token);
    let agent = Agent::start(&token);
    let ca = token.file("ca.pem");
    let dir = tempfile::tempdir().unwrap();
    let mut long = 0;
    for (user, email) in signers(&token) {
        for i in 0..ROUNDS {
            let data = dir.path().join(format!("data-{email}-{i}"));
            let sig = dir.path().join(format!("sig-{email}-{i}.p7s"));
            std::fs::write(&data, content(i, email)).unwrap();
            gpgsm.expect_ok(
                &[
                    "--detach-sign",
                    "-u",
                    &user,
                    "--output",
                    sig.to_str().unwrap(),
                    data.to_str().unwrap(),
                ],
                "gpgsm --detach-sign",
            );
            let len = signature_len(&sig);
            if len == Some(257) {
                long += 1;
            }
            let v = agent.verify(&sig, &data, &ca);
            assert_ok(
                &v,
                &format!(
                    "smime verify of gpgsm's detached signature #{i} by {email} ({len:?} bytes)"
                ),
            );
            assert!(
                stdout(&v).contains(email),
                "signer not named: {}",
                stdout(&v)
            );
        }
    }
    eprintln!(
        "{long} of {} gpgsm signatures were 257 bytes (leading 00)",
        2 * ROUNDS
    );
}

#[test]
fn gpgsm_attached_signatures_from_the_card_verify_with_smime() {
    let token = Token::new();
    let gpgsm = Gpgsm::with_token(&token);
    let agent = Agent::start(&token);
    let ca = token.file("ca.pem");
    let ca = ca.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (user, email) in signers(&token) {
        for i in 0..ROUNDS / 2 {
            let data = dir.path().join(format!("data-{email}-{i}"));
            let sig = dir.path().join(format!("sig-{email}-{i}.p7m"));
            std::fs::write(&data, content(i, email)).unwrap();
            gpgsm.expect_ok(
                &[
                    "--sign",
                    "--include-certs",
                    "-1",
                    "-u",
                    &user,
                    "--output",
                    sig.to_str().unwrap(),
                    data.to_str().unwrap(),
                ],
                "gpgsm --sign",
            );
            let v = agent.smime(&["verify", "--in", sig.to_str().unwrap(), "--trust", ca]);
            assert_ok(
                &v,
                &format!("smime verify of gpgsm's attached signature #{i} by {email}"),
            );
            assert!(
                stdout(&v).contains(email),
                "signer not named: {}",
                stdout(&v)
            );
        }
    }
}

/// `gpgsm --decrypt FILE` → the plaintext, decrypted with the on-token key.
fn gpgsm_decrypt(gpgsm: &Gpgsm, enc: &Path, out: &Path, what: &str) -> Vec<u8> {
    gpgsm.expect_ok(
        &[
            "--decrypt",
            "--output",
            out.to_str().unwrap(),
            enc.to_str().unwrap(),
        ],
        what,
    );
    std::fs::read(out).unwrap()
}

#[test]
fn smime_encrypt_cbc_is_decrypted_by_gpgsm_on_the_card() {
    let token = Token::new();
    let gpgsm = Gpgsm::with_token(&token);
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let plain = content(3, "bob");
    std::fs::write(p("plain"), &plain).unwrap();
    let bob = token.file("bob-rsa.pem");

    // Control: gpgsm's card decryption works on what OpenSSL encrypts.
    assert_ok(
        &run(Command::new("openssl")
            .args([
                "cms",
                "-encrypt",
                "-binary",
                "-aes-256-cbc",
                "-outform",
                "DER",
            ])
            .arg("-in")
            .arg(p("plain"))
            .arg("-out")
            .arg(p("openssl.p7m"))
            .arg("-recip")
            .arg(&bob)),
        "openssl cms -encrypt",
    );
    assert_eq!(
        gpgsm_decrypt(
            &gpgsm,
            &p("openssl.p7m"),
            &p("openssl.out"),
            "gpgsm --decrypt (OpenSSL's)"
        ),
        plain
    );

    // gpgsm 2.2 reads neither AuthEnvelopedData (our AES-GCM default) nor RSA-OAEP: CBC with
    // PKCS#1 v1.5 key transport is what it takes.
    for cipher in ["aes256-cbc", "aes128-cbc"] {
        let enc = p(&format!("{cipher}.p7m"));
        let e = agent.smime(&[
            "encrypt",
            "--to",
            bob.to_str().unwrap(),
            "--cipher",
            cipher,
            "--in",
            p("plain").to_str().unwrap(),
            "--out",
            enc.to_str().unwrap(),
            "--der",
        ]);
        assert_ok(&e, &format!("smime encrypt --cipher {cipher}"));
        assert_eq!(
            gpgsm_decrypt(
                &gpgsm,
                &enc,
                &p(&format!("{cipher}.out")),
                &format!("gpgsm --decrypt (smime encrypt --cipher {cipher})")
            ),
            plain
        );
    }
}

#[test]
fn gpgsm_encrypt_is_decrypted_by_smime_through_the_agent() {
    let token = Token::new();
    let gpgsm = Gpgsm::with_token(&token);
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let plain = content(5, "bob");
    std::fs::write(p("plain"), &plain).unwrap();
    let bob = sha1_fingerprint(&token.file("bob-rsa.pem"));
    // gpgsm 2.2 writes EnvelopedData, AES-128-CBC, RSA PKCS#1 v1.5 key transport.
    gpgsm.expect_ok(
        &[
            "--encrypt",
            "-r",
            &bob,
            "--output",
            p("gpgsm.p7m").to_str().unwrap(),
            p("plain").to_str().unwrap(),
        ],
        "gpgsm --encrypt",
    );
    let d = agent.smime(&[
        "decrypt",
        "--in",
        p("gpgsm.p7m").to_str().unwrap(),
        "--out",
        p("out").to_str().unwrap(),
    ]);
    assert_ok(&d, "smime decrypt of gpgsm's EnvelopedData");
    assert_eq!(std::fs::read(p("out")).unwrap(), plain);
}
