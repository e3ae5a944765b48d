//! `smime encrypt` / `decrypt` / `open` and `sign --encrypt-to`, judged by OpenSSL, and
//! OpenSSL-made envelopes read through the agent.

use std::path::Path;
use std::process::Command;

use smime_tests::{
    Agent, SoftCa, SoftKey, Token, assert_failed_cleanly, assert_ok, built, decoded_body, lf,
    openssl_in, pseudo_random, run, run_measured, s, split_entity,
};

/// A whole RFC 5322 message: 8-bit UTF-8 body, LF line ends.
const MAIL: &str = "From: Alice Example <alice@example.org>\n\
    To: Bob Example <bob@example.org>\n\
    Subject: Quarterly figures\n\
    Date: Mon, 23 Nov 2026 10:00:00 +0000\n\
    MIME-Version: 1.0\n\
    Content-Type: text/plain; charset=utf-8\n\
    Content-Transfer-Encoding: 8bit\n\
    \n\
    Grüße aus Köln — the numbers are attached.\n\
    Zweite Zeile.\n";

/// The decoded body of `MAIL`.
const MAIL_BODY: &str = "Grüße aus Köln — the numbers are attached.\nZweite Zeile.\n";

#[test]
fn encrypted_to_software_recipients_openssl_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = SoftCa::new(dir.path(), "peer");
    let rsa = ca.issue("rsa", "Peer RSA", "rsa@example.net", SoftKey::Rsa);
    let ec = ca.issue("ec", "Peer EC", "ec@example.net", SoftKey::P256);
    std::fs::write(p("mail.eml"), MAIL).unwrap();
    // encrypt needs no private key: no agent is running, and none is started.
    let smime = |args: &[&str]| {
        run(Command::new(built("smime"))
            .args(args)
            .env("SMIME_AGENT_SOCK", p("no-agent.sock"))
            .env("SMIME_AGENT_NO_AUTOSTART", "1")
            .current_dir(dir.path()))
    };
    let mut cases = 0;
    for (who, id) in [("rsa", &rsa), ("ec", &ec)] {
        let paddings: &[&str] = if who == "rsa" {
            &["pkcs1", "oaep", "oaep-sha1"]
        } else {
            &[""]
        };
        for cipher in ["aes128-gcm", "aes256-gcm", "aes128-cbc", "aes256-cbc"] {
            for &rsa_mode in paddings {
                let what = format!("{who} {cipher} {rsa_mode}");
                let mut args = vec!["encrypt", "--to", s(&id.cert), "--cipher", cipher];
                if !rsa_mode.is_empty() {
                    args.extend(["--rsa", rsa_mode]);
                }
                args.extend(["--in", "mail.eml"]);

                // S/MIME (the default): the mail headers stay outside, OpenSSL recovers the
                // inner entity.
                let mut mime = args.clone();
                mime.extend(["--out", "enc.eml"]);
                assert_ok(&smime(&mime), &format!("smime encrypt ({what})"));
                let enc = std::fs::read(p("enc.eml")).unwrap();
                let (fields, _) = split_entity(&enc);
                for (name, want) in [
                    ("From", "Alice Example <alice@example.org>"),
                    ("Subject", "Quarterly figures"),
                    ("Date", "Mon, 23 Nov 2026 10:00:00 +0000"),
                ] {
                    assert_eq!(
                        smime_tests::header(&fields, name),
                        Some(want),
                        "{what}: {name}"
                    );
                }
                let ct = smime_tests::header(&fields, "Content-Type").unwrap();
                let smime_type = if cipher.ends_with("gcm") {
                    "authEnveloped-data"
                } else {
                    "enveloped-data"
                };
                assert!(
                    ct.starts_with("application/pkcs7-mime") && ct.contains(smime_type),
                    "{what}: Content-Type {ct}"
                );
                let _ = std::fs::remove_file(p("dec.eml"));
                openssl_in(
                    dir.path(),
                    &[
                        "cms",
                        "-decrypt",
                        "-in",
                        "enc.eml",
                        "-inkey",
                        s(&id.key),
                        "-recip",
                        s(&id.cert),
                        "-out",
                        "dec.eml",
                    ],
                );
                let inner = std::fs::read(p("dec.eml")).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&lf(&decoded_body(&inner))),
                    MAIL_BODY,
                    "{what}: body of the inner entity"
                );

                // Raw CMS: the content is the input, byte for byte.
                let mut der = args.clone();
                der.extend(["--der", "--out", "enc.der"]);
                assert_ok(&smime(&der), &format!("smime encrypt --der ({what})"));
                let _ = std::fs::remove_file(p("dec.bin"));
                openssl_in(
                    dir.path(),
                    &[
                        "cms",
                        "-decrypt",
                        "-inform",
                        "DER",
                        "-in",
                        "enc.der",
                        "-inkey",
                        s(&id.key),
                        "-recip",
                        s(&id.cert),
                        "-out",
                        "dec.bin",
                    ],
                );
                assert!(
                    std::fs::read(p("dec.bin")).unwrap() == MAIL.as_bytes(),
                    "{what}: DER content differs from the input"
                );

                // The requested algorithms, not some default.
                let print = openssl_in(
                    dir.path(),
                    &[
                        "cms", "-cmsout", "-print", "-inform", "DER", "-in", "enc.der",
                    ],
                );
                let print = String::from_utf8_lossy(&print.stdout);
                let (bits, mode) = cipher.split_once('-').unwrap();
                let name = format!("aes-{}-{mode}", &bits[3..]);
                assert!(print.contains(&name), "{what}: want {name} in\n{print}");
                let kea = match rsa_mode {
                    "pkcs1" => "rsaEncryption",
                    "oaep" | "oaep-sha1" => "rsaesOaep",
                    _ => "dhSinglePass-stdDH",
                };
                assert!(print.contains(kea), "{what}: want {kea} in\n{print}");
                if rsa_mode == "oaep" {
                    assert!(
                        print.contains(":sha256"),
                        "{what}: OAEP without SHA-256 parameters:\n{print}"
                    );
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 16);
}

#[test]
fn openssl_envelopes_decrypt_through_the_agent() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let bob = token.file("bob-rsa.pem");
    let alice_ec = token.file("alice-ec.pem");
    // A MIME entity (what S/MIME carries) and arbitrary bytes (what raw CMS carries).
    let body: String = (0..200)
        .map(|i| format!("line {i}: Grüße, the quick brown fox\r\n"))
        .collect();
    std::fs::write(
        p("entity.txt"),
        format!("Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"),
    )
    .unwrap();
    std::fs::write(p("binary.bin"), pseudo_random(100_000, 7)).unwrap();
    let oaep256 = [
        "-keyopt",
        "rsa_padding_mode:oaep",
        "-keyopt",
        "rsa_oaep_md:sha256",
        "-keyopt",
        "rsa_mgf1_md:sha256",
    ];
    let oaep1 = ["-keyopt", "rsa_padding_mode:oaep"];
    // (name, recipient, options, -keyopt options for the recipient, DER output, key)
    #[allow(clippy::type_complexity)]
    let cases: &[(&str, &Path, &[&str], &[&str], bool, &str)] = &[
        (
            "rsa-aes256cbc",
            &bob,
            &["-aes-256-cbc"],
            &[],
            false,
            "bob-rsa",
        ),
        (
            "rsa-aes128gcm",
            &bob,
            &["-aes-128-gcm"],
            &[],
            false,
            "bob-rsa",
        ),
        (
            "rsa-oaep-sha256",
            &bob,
            &["-aes-256-cbc"],
            &oaep256,
            false,
            "bob-rsa",
        ),
        (
            "rsa-oaep-sha1",
            &bob,
            &["-aes-128-gcm"],
            &oaep1,
            true,
            "bob-rsa",
        ),
        (
            "rsa-stream",
            &bob,
            &["-aes-256-cbc", "-stream"],
            &[],
            false,
            "bob-rsa",
        ),
        (
            "rsa-stream-der",
            &bob,
            &["-aes-128-gcm", "-stream"],
            &[],
            true,
            "bob-rsa",
        ),
        ("rsa-der", &bob, &["-aes-128-cbc"], &[], true, "bob-rsa"),
        (
            "ec-default-kdf",
            &alice_ec,
            &["-aes-256-cbc"],
            &[],
            false,
            "alice-ec",
        ),
        (
            "ec-gcm",
            &alice_ec,
            &["-aes-128-gcm"],
            &[],
            false,
            "alice-ec",
        ),
        (
            "ec-gcm-stream-der",
            &alice_ec,
            &["-aes-256-gcm", "-stream"],
            &[],
            true,
            "alice-ec",
        ),
    ];
    for &(name, recip, opts, keyopts, der, key) in cases {
        let input = if der { "binary.bin" } else { "entity.txt" };
        let enc = format!("{name}.enc");
        let mut args = vec!["cms", "-encrypt", "-binary", "-in", input, "-out", &enc];
        args.extend_from_slice(opts);
        if der {
            args.extend(["-outform", "DER"]);
        }
        // -keyopt applies to the -recip before it.
        args.extend(["-recip", s(recip)]);
        args.extend_from_slice(keyopts);
        openssl_in(dir.path(), &args);
        let out = p(&format!("{name}.out"));
        let r = agent.smime(&["decrypt", "--in", s(&p(&enc)), "--out", s(&out)]);
        assert_ok(&r, &format!("smime decrypt ({name})"));
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(key), "{name}: want {key} in {err}");
        let got = std::fs::read(&out).unwrap();
        if der {
            assert!(
                got == std::fs::read(p(input)).unwrap(),
                "{name}: plaintext differs"
            );
        } else {
            assert_eq!(
                String::from_utf8_lossy(&decoded_body(&got)),
                body,
                "{name}: body differs"
            );
        }
    }
    // Legacy: `openssl smime` with triple DES (text mode: CRLF canonicalization).
    std::fs::write(
        p("legacy.txt"),
        "Content-Type: text/plain\n\nOld school.\nStill readable.\n",
    )
    .unwrap();
    openssl_in(
        dir.path(),
        &[
            "smime",
            "-encrypt",
            "-des3",
            "-in",
            "legacy.txt",
            "-out",
            "legacy.eml",
            s(&bob),
        ],
    );
    let r = agent.smime(&[
        "decrypt",
        "--in",
        s(&p("legacy.eml")),
        "--out",
        s(&p("legacy.out")),
    ]);
    assert_ok(&r, "smime decrypt (des3)");
    assert_eq!(
        lf(&decoded_body(&std::fs::read(p("legacy.out")).unwrap())),
        b"Old school.\nStill readable.\n"
    );
}

#[test]
fn signed_then_encrypted_mail_opens_with_a_good_signature() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("msg.eml"), MAIL).unwrap();
    assert_ok(
        &agent.smime(&[
            "sign",
            "--key",
            "alice-rsa",
            "--encrypt-to",
            s(&token.file("bob-rsa.pem")),
            "--in",
            s(&p("msg.eml")),
            "--out",
            s(&p("sealed.eml")),
        ]),
        "smime sign --encrypt-to",
    );
    let sealed = std::fs::read(p("sealed.eml")).unwrap();
    let (fields, _) = split_entity(&sealed);
    assert!(
        smime_tests::header(&fields, "Content-Type")
            .unwrap()
            .starts_with("application/pkcs7-mime"),
        "sealed message is not enveloped"
    );
    assert!(
        smime_tests::find(&sealed, "Grüße".as_bytes()).is_none(),
        "plaintext visible in the sealed message"
    );
    let out = agent.smime(&[
        "open",
        "--in",
        s(&p("sealed.eml")),
        "--trust",
        s(&token.file("ca.pem")),
        "--out",
        s(&p("out.eml")),
    ]);
    assert_ok(&out, "smime open");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Good signature") && err.contains("alice@example.org"),
        "{err}"
    );
    let opened = std::fs::read(p("out.eml")).unwrap();
    let (fields, _) = split_entity(&opened);
    assert_eq!(
        smime_tests::header(&fields, "From"),
        Some("Alice Example <alice@example.org>")
    );
    assert_eq!(
        smime_tests::header(&fields, "Subject"),
        Some("Quarterly figures")
    );
    assert_eq!(
        String::from_utf8_lossy(&lf(&decoded_body(&opened))),
        MAIL_BODY
    );
}

#[test]
fn open_refuses_a_bad_inner_signature_or_none() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let bob = token.file("bob-rsa.pem");
    let ca = token.file("ca.pem");
    std::fs::write(p("msg.eml"), MAIL).unwrap();
    assert_ok(
        &agent.sign("alice-rsa", &p("msg.eml"), &p("signed.eml"), &["--mime"]),
        "smime sign --mime",
    );
    // The signed body altered before encryption: decryption succeeds, verification not.
    let signed = String::from_utf8(std::fs::read(p("signed.eml")).unwrap()).unwrap();
    assert!(signed.contains("Zweite Zeile."));
    std::fs::write(
        p("altered.eml"),
        signed.replacen("Zweite Zeile.", "Dritte Zeile.", 1),
    )
    .unwrap();
    for (name, input) in [("altered", "altered.eml"), ("unsigned", "msg.eml")] {
        let sealed = p(&format!("{name}.sealed"));
        assert_ok(
            &agent.smime(&[
                "encrypt",
                "--to",
                s(&bob),
                "--in",
                s(&p(input)),
                "--out",
                s(&sealed),
            ]),
            &format!("smime encrypt ({name})"),
        );
        for cmd in [&["open"][..], &["decrypt", "--verify"][..]] {
            let out_path = p(&format!("{name}.out"));
            let mut args = cmd.to_vec();
            args.extend(["--in", s(&sealed), "--trust", s(&ca), "--out", s(&out_path)]);
            let out = agent.smime(&args);
            let line = assert_failed_cleanly(&out, &out_path, &format!("{cmd:?} {name}"));
            if name == "altered" {
                assert_eq!(out.status.code(), Some(1), "{line}");
            }
        }
    }
}

#[test]
fn open_rejects_a_from_that_is_not_the_signer() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("msg.eml"), MAIL).unwrap();
    assert_ok(
        &agent.smime(&[
            "sign",
            "--key",
            "alice-rsa",
            "--encrypt-to",
            s(&token.file("bob-rsa.pem")),
            "--in",
            s(&p("msg.eml")),
            "--out",
            s(&p("sealed.eml")),
        ]),
        "smime sign --encrypt-to",
    );
    // The mail headers travel outside the envelope: anyone can rewrite them.
    let sealed = String::from_utf8(std::fs::read(p("sealed.eml")).unwrap()).unwrap();
    let forged = sealed.replacen(
        "From: Alice Example <alice@example.org>",
        "From: Mallory <mallory@example.org>",
        1,
    );
    assert_ne!(sealed, forged);
    std::fs::write(p("forged.eml"), forged).unwrap();
    // Decrypted alone, `smime verify` catches it …
    assert_ok(
        &agent.smime(&[
            "decrypt",
            "--in",
            s(&p("forged.eml")),
            "--out",
            s(&p("forged.dec")),
        ]),
        "smime decrypt",
    );
    let verify_out = p("verify.out");
    let out = agent.smime(&[
        "verify",
        "--in",
        s(&p("forged.dec")),
        "--trust",
        s(&token.file("ca.pem")),
        "--out",
        s(&verify_out),
    ]);
    let line = assert_failed_cleanly(&out, &verify_out, "verify of the forged message");
    assert!(line.contains("From"), "{line}");
    // … and `smime open` must too.
    let forged = p("forged.eml");
    let ca = token.file("ca.pem");
    for cmd in [&["open"][..], &["decrypt", "--verify"][..]] {
        let out_path = p("open.out");
        let mut args = cmd.to_vec();
        args.extend(["--in", s(&forged), "--trust", s(&ca), "--out", s(&out_path)]);
        let out = agent.smime(&args);
        let line = assert_failed_cleanly(&out, &out_path, &format!("{cmd:?} of a forged From"));
        assert_eq!(out.status.code(), Some(1), "{line}");
        assert!(line.contains("From"), "{line}");
    }
}

#[test]
fn openssl_signed_then_encrypted_mail_decrypts_and_verifies() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = SoftCa::new(dir.path(), "peer");
    let carol = ca.issue("carol", "Carol Peer", "carol@example.net", SoftKey::Rsa);
    std::fs::write(
        p("inner.txt"),
        "Content-Type: text/plain\n\nfor Bob's eyes only\n",
    )
    .unwrap();
    openssl_in(
        dir.path(),
        &[
            "smime",
            "-sign",
            "-in",
            "inner.txt",
            "-signer",
            s(&carol.cert),
            "-inkey",
            s(&carol.key),
            "-out",
            "signed.eml",
        ],
    );
    openssl_in(
        dir.path(),
        &[
            "smime",
            "-encrypt",
            "-aes256",
            "-in",
            "signed.eml",
            "-from",
            "carol@example.net",
            "-to",
            "bob@example.org",
            "-subject",
            "sealed",
            "-out",
            "sealed.eml",
            s(&token.file("bob-rsa.pem")),
        ],
    );
    let out = agent.smime(&[
        "decrypt",
        "--verify",
        "--trust",
        s(&ca.cert),
        "--in",
        s(&p("sealed.eml")),
        "--out",
        s(&p("out.eml")),
    ]);
    assert_ok(&out, "smime decrypt --verify");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Good signature") && err.contains("carol@example.net"),
        "{err}"
    );
    let opened = std::fs::read(p("out.eml")).unwrap();
    let (fields, _) = split_entity(&opened);
    assert_eq!(
        smime_tests::header(&fields, "From"),
        Some("carol@example.net")
    );
    assert_eq!(lf(&decoded_body(&opened)), b"for Bob's eyes only\n");
    // The token's CA did not issue Carol's certificate.
    let bad = p("untrusted.eml");
    let out = agent.smime(&[
        "decrypt",
        "--verify",
        "--trust",
        s(&token.file("ca.pem")),
        "--in",
        s(&p("sealed.eml")),
        "--out",
        s(&bad),
    ]);
    assert_failed_cleanly(&out, &bad, "decrypt --verify with the wrong trust anchor");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn undecryptable_input_fails_cleanly_without_output() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = SoftCa::new(dir.path(), "peer");
    let dave = ca.issue("dave", "Dave Peer", "dave@example.net", SoftKey::Rsa);
    std::fs::write(p("mail.eml"), MAIL).unwrap();
    std::fs::write(p("big.bin"), pseudo_random(1 << 20, 3)).unwrap();
    let smime_ok = |args: &[&str], what: &str| assert_ok(&agent.smime(args), what);

    // Encrypted, but only to a software certificate.
    smime_ok(
        &[
            "encrypt",
            "--to",
            s(&dave.cert),
            "--in",
            s(&p("mail.eml")),
            "--out",
            s(&p("not-for-us.eml")),
        ],
        "encrypt to dave",
    );
    // AES-GCM over 1 MiB, one ciphertext byte flipped in the middle: the tag must catch it
    // and no plaintext may come out, not even the intact first half.
    smime_ok(
        &[
            "encrypt",
            "--der",
            "--cipher",
            "aes256-gcm",
            "--to",
            s(&token.file("bob-rsa.pem")),
            "--in",
            s(&p("big.bin")),
            "--out",
            s(&p("big.der")),
        ],
        "encrypt 1 MiB",
    );
    let good = std::fs::read(p("big.der")).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(p("flipped.der"), &flipped).unwrap();
    std::fs::write(p("truncated.der"), &good[..good.len() - 1000]).unwrap();
    std::fs::write(p("short.der"), &good[..600]).unwrap();
    // Signed, not encrypted: S/MIME and raw CMS.
    smime_ok(
        &[
            "sign",
            "--key",
            "alice-rsa",
            "--mime",
            "--in",
            s(&p("mail.eml")),
            "--out",
            s(&p("signed.eml")),
        ],
        "sign --mime",
    );
    smime_ok(
        &[
            "sign",
            "--key",
            "alice-ec",
            "--in",
            s(&p("mail.eml")),
            "--out",
            s(&p("signed.p7s")),
        ],
        "sign",
    );
    std::fs::write(p("plain.txt"), "just some text\nnothing encrypted here\n").unwrap();
    // The intact message decrypts (so the failures below are the damage, not the setup).
    assert_ok(
        &agent.smime(&[
            "decrypt",
            "--in",
            s(&p("big.der")),
            "--out",
            s(&p("big.out")),
        ]),
        "decrypt the intact message",
    );
    for (file, want_code) in [
        ("not-for-us.eml", Some(2)),
        ("flipped.der", Some(1)),
        ("truncated.der", None),
        ("short.der", None),
        ("signed.eml", Some(2)),
        ("signed.p7s", Some(2)),
        ("mail.eml", Some(2)),
        ("plain.txt", Some(2)),
    ] {
        let out_path = p(&format!("{file}.out"));
        let out = agent.smime(&["decrypt", "--in", s(&p(file)), "--out", s(&out_path)]);
        let line = assert_failed_cleanly(&out, &out_path, file);
        if let Some(code) = want_code {
            assert_eq!(out.status.code(), Some(code), "{file}: {line}");
        }
        if file == "not-for-us.eml" {
            assert!(line.contains("Dave") || line.contains("peer CA"), "{line}");
        }
    }
    // `smime open` of a message that is encrypted but not signed: says so, writes nothing.
    let out_path = p("open.out");
    let out = agent.smime(&["open", "--in", s(&p("big.der")), "--out", s(&out_path)]);
    let line = assert_failed_cleanly(&out, &out_path, "open of an unsigned message");
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(line.contains("not a signed message"), "{line}");
}

/// Encrypts `size` bytes to bob-rsa with `cipher` and decrypts them again, both under GNU
/// time; asserts the plaintext survives and, with GNU time, that neither process's peak
/// RSS reaches `max_rss_kib`.
fn round_trip_measured(cipher: &str, size_mib: usize, max_rss_kib: u64) {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let mut f = std::fs::File::create(p("big.bin")).unwrap();
    let chunk = pseudo_random(1 << 20, 11);
    for i in 0..size_mib {
        let mut c = chunk.clone();
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        std::io::Write::write_all(&mut f, &c).unwrap();
    }
    drop(f);
    let smime = built("smime");
    let env = [("SMIME_AGENT_SOCK", agent.socket.as_os_str())];
    let bob = token.file("bob-rsa.pem");
    let (enc, enc_rss) = run_measured(
        &smime,
        &[
            "encrypt".as_ref(),
            "--der".as_ref(),
            "--cipher".as_ref(),
            cipher.as_ref(),
            "--to".as_ref(),
            bob.as_os_str(),
            "--in".as_ref(),
            p("big.bin").as_os_str(),
            "--out".as_ref(),
            p("big.der").as_os_str(),
        ],
        &env,
    );
    assert_ok(&enc, &format!("smime encrypt {size_mib} MiB ({cipher})"));
    let (dec, dec_rss) = run_measured(
        &smime,
        &[
            "decrypt".as_ref(),
            "--in".as_ref(),
            p("big.der").as_os_str(),
            "--out".as_ref(),
            p("big.out").as_os_str(),
        ],
        &env,
    );
    assert_ok(&dec, &format!("smime decrypt {size_mib} MiB ({cipher})"));
    assert_ok(
        &run(Command::new("cmp").arg(p("big.bin")).arg(p("big.out"))),
        "cmp plaintext",
    );
    match (enc_rss, dec_rss) {
        (Some(e), Some(d)) => {
            assert!(
                e < max_rss_kib,
                "encrypt of {size_mib} MiB peaked at {e} KiB RSS"
            );
            assert!(
                d < max_rss_kib,
                "decrypt of {size_mib} MiB peaked at {d} KiB RSS"
            );
        }
        _ => eprintln!("/usr/bin/time (Debian package time) missing: peak RSS not checked"),
    }
}

#[test]
fn sixty_four_mib_round_trip_streams() {
    // AES-CBC: the 64 MiB the requirement names, within the time budget of a debug build.
    round_trip_measured("aes128-cbc", 64, 64 * 1024);
}

#[test]
fn large_gcm_round_trip_streams() {
    // AES-GCM runs at ~6 MiB/s in a debug build: 20 MiB keeps this test under 15 s and
    // still shows that neither side holds the message (nor its plaintext) in memory.
    round_trip_measured("aes128-gcm", 20, 20 * 1024);
}
