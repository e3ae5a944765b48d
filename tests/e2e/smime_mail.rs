//! S/MIME signed mail: `smime sign --mime` / `--opaque` of whole RFC 5322 messages, judged
//! by `openssl smime -verify`, OpenSSL-signed mail read by `smime verify`, and broken or
//! forged mail rejected without output.

use std::path::Path;

use smime_tests::{
    Agent, SoftCa, SoftKey, Token, assert_failed_cleanly, assert_ok, decoded_body, find, header,
    lf, openssl_in, pseudo_random, s, split_entity,
};

/// A whole RFC 5322 message from alice: 8-bit UTF-8 body, LF line ends.
const MAIL: &str = "From: Alice Example <alice@example.org>\n\
    To: Bob Example <bob@example.org>\n\
    Subject: Quarterly figures\n\
    Date: Mon, 23 Nov 2026 10:00:00 +0000\n\
    MIME-Version: 1.0\n\
    Content-Type: text/plain; charset=utf-8\n\
    Content-Transfer-Encoding: 8bit\n\
    \n\
    Grüße aus Köln — the numbers are attached.\n\
    From here on: 12 % more.\n\
    Zweite Zeile.\n";

/// The decoded body of `MAIL`.
const MAIL_BODY: &str = "Grüße aus Köln — the numbers are attached.\n\
    From here on: 12 % more.\n\
    Zweite Zeile.\n";

/// The mail headers that must stay outside the signed entity, with their values in `MAIL`.
const OUTER: [(&str, &str); 4] = [
    ("From", "Alice Example <alice@example.org>"),
    ("To", "Bob Example <bob@example.org>"),
    ("Subject", "Quarterly figures"),
    ("Date", "Mon, 23 Nov 2026 10:00:00 +0000"),
];

/// The boundary parameter of a multipart Content-Type value.
fn boundary(content_type: &str) -> String {
    let i = content_type
        .find("boundary=")
        .unwrap_or_else(|| panic!("no boundary in {content_type}"));
    let b = &content_type[i + "boundary=".len()..];
    let b = b.split(';').next().unwrap().trim();
    b.trim_matches('"').to_owned()
}

/// The first body part of a multipart entity, without its delimiter lines.
fn first_part(entity: &[u8]) -> Vec<u8> {
    let (fields, body) = split_entity(entity);
    let delim = format!("--{}", boundary(header(&fields, "Content-Type").unwrap()));
    let start = find(&body, delim.as_bytes()).expect("no first delimiter");
    let rest = &body[start + delim.len()..];
    let rest = rest
        .strip_prefix(b"\r\n")
        .or_else(|| rest.strip_prefix(b"\n"))
        .unwrap();
    let end = find(rest, delim.as_bytes()).expect("no second delimiter");
    let part = &rest[..end];
    let part = part
        .strip_suffix(b"\r\n")
        .or_else(|| part.strip_suffix(b"\n"))
        .unwrap_or(part);
    part.to_vec()
}

/// `openssl smime -verify` of a whole message against `ca` for S/MIME signing; returns the
/// signed content it recovers.
fn openssl_smime_verify(dir: &Path, signed: &Path, ca: &Path) -> Vec<u8> {
    let out = dir.join("openssl-verified.out");
    openssl_in(
        dir,
        &[
            "smime",
            "-verify",
            "-in",
            s(signed),
            "-CAfile",
            s(ca),
            "-purpose",
            "smimesign",
            "-out",
            s(&out),
        ],
    );
    std::fs::read(out).unwrap()
}

#[test]
fn mime_signed_mail_is_accepted_by_openssl_and_smime() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = token.file("ca.pem");
    std::fs::write(p("mail.eml"), MAIL).unwrap();
    for key in ["alice-rsa", "alice-ec"] {
        let signed = p(&format!("{key}.eml"));
        assert_ok(
            &agent.sign(key, &p("mail.eml"), &signed, &["--mime"]),
            &format!("smime sign --mime --key {key}"),
        );
        let text = std::fs::read(&signed).unwrap();
        let (fields, _) = split_entity(&text);
        for (name, value) in OUTER {
            assert_eq!(header(&fields, name), Some(value), "{key}: outer {name}");
        }
        let ct = header(&fields, "Content-Type").unwrap().replace('"', "");
        assert!(
            ct.starts_with("multipart/signed")
                && ct.contains("protocol=application/pkcs7-signature")
                && ct.contains("micalg=sha-256"),
            "{key}: Content-Type {ct}"
        );
        // The signed entity carries the content headers only, in a 7-bit-safe encoding.
        let part = first_part(&text);
        let (inner, _) = split_entity(&part);
        for (name, _) in OUTER {
            assert!(
                header(&inner, name).is_none(),
                "{key}: {name} inside the signed part"
            );
        }
        assert!(
            header(&inner, "Content-Type")
                .unwrap()
                .starts_with("text/plain"),
            "{key}: {inner:?}"
        );
        assert!(part.is_ascii(), "{key}: 8-bit data in the signed part");
        assert_eq!(
            String::from_utf8_lossy(&lf(&decoded_body(&part))),
            MAIL_BODY,
            "{key}: signed body"
        );

        let recovered = openssl_smime_verify(dir.path(), &signed, &ca);
        assert_eq!(
            String::from_utf8_lossy(&lf(&decoded_body(&recovered))),
            MAIL_BODY,
            "{key}: body as OpenSSL verified it"
        );

        let out = agent.smime(&["verify", "--in", s(&signed), "--trust", s(&ca)]);
        assert_ok(&out, &format!("smime verify ({key})"));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("alice@example.org"),
            "{key}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // --out gives back the message with its mail headers.
        let verified = p(&format!("{key}.verified"));
        let out = agent.smime(&[
            "verify",
            "--in",
            s(&signed),
            "--trust",
            s(&ca),
            "--out",
            s(&verified),
        ]);
        assert_ok(&out, &format!("smime verify --out ({key})"));
        assert!(String::from_utf8_lossy(&out.stderr).contains("Good signature"));
        let verified = std::fs::read(&verified).unwrap();
        let (vfields, _) = split_entity(&verified);
        for (name, value) in OUTER {
            assert_eq!(
                header(&vfields, name),
                Some(value),
                "{key}: verified {name}"
            );
        }
        assert_eq!(
            String::from_utf8_lossy(&lf(&decoded_body(&verified))),
            MAIL_BODY
        );
    }
}

#[test]
fn awkward_mail_survives_mime_signing() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = token.file("ca.pem");
    let head =
        "From: alice@example.org\nTo: bob@example.org\nDate: Mon, 23 Nov 2026 10:00:00 +0000\n";
    let long: String = "x".repeat(2000) + "\n" + &"ä".repeat(500) + "\n\n\n";
    let bodies: [(&str, String); 6] = [
        (
            "awkward lines",
            format!(
                "{head}Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= and a subject that is\n folded\n\n\
                 From the start\n-- \ntrailing blanks   \n.\n--boundary-like\nno newline at end ü"
            ),
        ),
        ("long lines", format!("{head}Subject: long\n\n{long}")),
        ("empty body", format!("{head}Subject: empty\n\n")),
        (
            "multipart",
            format!(
                "{head}Subject: mp\nMIME-Version: 1.0\n\
                 Content-Type: multipart/alternative; boundary=\"b1\"\n\n\
                 --b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
                 hällo\n--b1\nContent-Type: text/html; charset=utf-8\n\n<p>hällo</p>\n--b1--\n"
            ),
        ),
        (
            "crlf",
            "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: crlf\r\n\r\nbody\r\n"
                .to_owned(),
        ),
        ("binary", String::new()),
    ];
    for (what, mail) in bodies {
        let mail = if what == "binary" {
            let mut m = format!(
                "{head}Subject: bin\nMIME-Version: 1.0\nContent-Type: application/octet-stream\n\
                 Content-Transfer-Encoding: binary\n\n"
            )
            .into_bytes();
            m.extend(pseudo_random(3000, 5));
            m
        } else {
            mail.into_bytes()
        };
        std::fs::write(p("in.eml"), &mail).unwrap();
        for key in ["alice-rsa", "alice-ec"] {
            let signed = p("signed.eml");
            assert_ok(
                &agent.sign(key, &p("in.eml"), &signed, &["--mime"]),
                &format!("smime sign --mime ({what}, {key})"),
            );
            assert!(
                std::fs::read(&signed).unwrap().is_ascii(),
                "{what}: the signed message is not 7-bit"
            );
            let out = p("openssl.out");
            let r = smime_tests::run(std::process::Command::new("openssl").args([
                "smime",
                "-verify",
                "-in",
                s(&signed),
                "-CAfile",
                s(&ca),
                "-purpose",
                "smimesign",
                "-out",
                s(&out),
            ]));
            assert_ok(&r, &format!("openssl smime -verify ({what}, {key})"));
            let r = agent.smime(&["verify", "--in", s(&signed), "--trust", s(&ca)]);
            assert_ok(&r, &format!("smime verify ({what}, {key})"));
        }
        if what == "binary" {
            let recovered = std::fs::read(p("openssl.out")).unwrap();
            assert_eq!(
                decoded_body(&recovered),
                pseudo_random(3000, 5),
                "binary body changed"
            );
        }
    }
}

#[test]
fn opaque_signed_mail_is_accepted_by_openssl() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = token.file("ca.pem");
    std::fs::write(p("mail.eml"), MAIL).unwrap();
    for key in ["alice-rsa", "alice-ec"] {
        let signed = p(&format!("{key}.eml"));
        assert_ok(
            &agent.sign(key, &p("mail.eml"), &signed, &["--opaque"]),
            &format!("smime sign --opaque --key {key}"),
        );
        let text = std::fs::read(&signed).unwrap();
        let (fields, _) = split_entity(&text);
        for (name, value) in OUTER {
            assert_eq!(header(&fields, name), Some(value), "{key}: outer {name}");
        }
        let ct = header(&fields, "Content-Type").unwrap().replace('"', "");
        assert!(
            ct.starts_with("application/pkcs7-mime") && ct.contains("smime-type=signed-data"),
            "{key}: Content-Type {ct}"
        );
        assert!(find(&text, "Köln".as_bytes()).is_none());
        let recovered = openssl_smime_verify(dir.path(), &signed, &ca);
        assert_eq!(
            String::from_utf8_lossy(&lf(&decoded_body(&recovered))),
            MAIL_BODY,
            "{key}: body as OpenSSL verified it"
        );
        let out = agent.smime(&["verify", "--in", s(&signed), "--trust", s(&ca)]);
        assert_ok(&out, &format!("smime verify --opaque ({key})"));
    }
}

#[test]
fn openssl_signed_mail_verifies() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = SoftCa::new(dir.path(), "peer");
    let carol = ca.issue("carol", "Carol Peer", "carol@example.net", SoftKey::Rsa);
    let erin = ca.issue("erin", "Erin Peer", "erin@example.net", SoftKey::P256);
    std::fs::write(
        p("content.txt"),
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
         Signed by OpenSSL, grüße.\nLine two.\n",
    )
    .unwrap();
    let cases: [(&str, &smime_tests::SoftId, &[&str]); 5] = [
        ("smime-sign", &carol, &["smime", "-sign"]),
        ("smime-sign-ec", &erin, &["smime", "-sign"]),
        ("cms-nodetach", &carol, &["cms", "-sign", "-nodetach"]),
        ("cms-stream", &erin, &["cms", "-sign", "-stream"]),
        (
            "cms-stream-nodetach",
            &carol,
            &["cms", "-sign", "-stream", "-nodetach"],
        ),
    ];
    for (name, id, cmd) in cases {
        let out_file = format!("{name}.eml");
        let mut args = cmd.to_vec();
        args.extend([
            "-in",
            "content.txt",
            "-signer",
            s(&id.cert),
            "-inkey",
            s(&id.key),
            "-from",
            &id.email,
            "-to",
            "bob@example.org",
            "-subject",
            "from openssl",
            "-out",
            &out_file,
        ]);
        openssl_in(dir.path(), &args);
        let text = std::fs::read(p(&out_file)).unwrap();
        if name == "smime-sign" {
            assert!(
                find(&text, b"application/x-pkcs7-signature").is_some(),
                "openssl smime uses the x-pkcs7 types"
            );
        }
        let verified = p(&format!("{name}.out"));
        let out = agent.smime(&[
            "verify",
            "--in",
            s(&p(&out_file)),
            "--trust",
            s(&ca.cert),
            "--out",
            s(&verified),
        ]);
        assert_ok(&out, &format!("smime verify ({name})"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Good signature") && err.contains(&id.email),
            "{name}: {err}"
        );
        let verified = std::fs::read(&verified).unwrap();
        let (fields, _) = split_entity(&verified);
        assert_eq!(header(&fields, "From"), Some(id.email.as_str()), "{name}");
        assert_eq!(
            String::from_utf8_lossy(&lf(&decoded_body(&verified))),
            "Signed by OpenSSL, grüße.\nLine two.\n",
            "{name}"
        );
    }
}

#[test]
fn broken_or_forged_signed_mail_fails_cleanly() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = token.file("ca.pem");
    std::fs::write(p("mail.eml"), MAIL).unwrap();
    let signed = p("signed.eml");
    assert_ok(
        &agent.sign("alice-rsa", &p("mail.eml"), &signed, &["--mime"]),
        "smime sign --mime",
    );
    let good = String::from_utf8(std::fs::read(&signed).unwrap()).unwrap();
    assert_ok(
        &agent.smime(&["verify", "--in", s(&signed), "--trust", s(&ca)]),
        "the intact message verifies",
    );
    let replace = |from: &str, to: &str| {
        assert!(good.contains(from), "{from:?} not in the signed message");
        good.replacen(from, to, 1).into_bytes()
    };
    // The base64 signature, cut in the middle of its lines.
    let sig_start = good.find("filename=smime.p7s").unwrap();
    let close = format!(
        "--{}--",
        boundary(header(&split_entity(good.as_bytes()).0, "Content-Type").unwrap())
    );
    let sig_end = good.rfind(&close).unwrap();
    let cut = good[..sig_start + (sig_end - sig_start) / 2]
        .rfind('\n')
        .unwrap()
        + 1;
    let truncated = format!("{}{}", &good[..cut], &good[sig_end..]).into_bytes();
    let unclosed = good.as_bytes()[..sig_end].to_vec();
    let cases: [(&str, Vec<u8>, Option<i32>, &str); 7] = [
        // Body text inside the signed part (quoted-printable "Zweite" line).
        (
            "tampered body",
            replace("Zweite Zeile.", "Dritte Zeile."),
            Some(1),
            "",
        ),
        (
            "signed header changed",
            replace("charset=utf-8", "charset=iso-8859-1"),
            Some(1),
            "",
        ),
        (
            "From changed",
            replace(
                "From: Alice Example <alice@example.org>",
                "From: Mallory <mallory@example.org>",
            ),
            Some(1),
            "From",
        ),
        ("truncated CMS", truncated, None, ""),
        ("no closing boundary", unclosed, None, ""),
        ("plain text mail", MAIL.as_bytes().to_vec(), Some(2), ""),
        ("random binary", pseudo_random(4096, 9), Some(2), ""),
    ];
    for (what, data, code, mention) in cases {
        let input = p("broken.eml");
        std::fs::write(&input, &data).unwrap();
        let out_path = p("verified.out");
        let out = agent.smime(&[
            "verify",
            "--in",
            s(&input),
            "--trust",
            s(&ca),
            "--out",
            s(&out_path),
        ]);
        let line = assert_failed_cleanly(&out, &out_path, what);
        if let Some(code) = code {
            assert_eq!(out.status.code(), Some(code), "{what}: {line}");
        }
        assert!(line.contains(mention), "{what}: want {mention:?} in {line}");
        if what != "random binary" && what != "plain text mail" {
            // OpenSSL agrees that these are bad.
            let r = smime_tests::run(std::process::Command::new("openssl").args([
                "smime",
                "-verify",
                "-in",
                s(&input),
                "-CAfile",
                s(&ca),
                "-out",
                "/dev/null",
            ]));
            if what != "From changed" {
                assert!(!r.status.success(), "{what}: OpenSSL accepted it");
            }
        }
    }
}

#[test]
fn a_second_from_field_does_not_pass_the_sender_check() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = token.file("ca.pem");
    // Bob signs mail that shows Alice as its author (RFC 5322 allows one From field; mail
    // readers display the first). His own address rides along in a second From field.
    std::fs::write(
        p("mail.eml"),
        "From: Alice Example <alice@example.org>\nFrom: bob@example.org\n\
         To: carol@example.net\nSubject: wire the money\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\n\nPlease pay Bob.\n",
    )
    .unwrap();
    assert_ok(
        &agent.sign("bob-rsa", &p("mail.eml"), &p("signed.eml"), &["--mime"]),
        "smime sign --mime --key bob-rsa",
    );
    let out_path = p("verified.out");
    let out = agent.smime(&[
        "verify",
        "--in",
        s(&p("signed.eml")),
        "--trust",
        s(&ca),
        "--out",
        s(&out_path),
    ]);
    let line = assert_failed_cleanly(&out, &out_path, "two From fields");
    assert_eq!(out.status.code(), Some(1), "{line}");
    assert!(line.contains("From"), "{line}");
}

/// A mail with a large base64 attachment goes through sign (clear and opaque), verify,
/// encrypt, decrypt and open without being held in memory: each `smime` run stays far
/// below the message size in peak RSS. OpenSSL judges the signature.
#[test]
fn large_attachment_mail_streams_through_every_command() {
    use smime_tests::{built, run, run_measured};
    use std::io::Write as _;
    const ATTACHMENT_MIB: usize = 12;
    // Above the RSS of the same command on a small message: a fraction of the message.
    const MAX_GROWTH_KIB: u64 = 4 * 1024;
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = token.file("ca.pem");

    // The message a mail client hands over: multipart/mixed, text + base64 attachment.
    let mut f = std::io::BufWriter::new(std::fs::File::create(p("mail.eml")).unwrap());
    write!(
        f,
        "From: Alice Example <alice@example.org>\nTo: Bob Example <bob@example.org>\n\
         Subject: the archive\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"=-=-=\"\n\n\
         --=-=-=\nContent-Type: text/plain; charset=us-ascii\n\nThe archive is attached.\n\n\
         --=-=-=\nContent-Type: application/octet-stream; name=data.bin\n\
         Content-Transfer-Encoding: base64\n\n"
    )
    .unwrap();
    let chunk = pseudo_random(57 * 1024, 5);
    use base64::Engine as _;
    for _ in 0..(ATTACHMENT_MIB << 20) / chunk.len() {
        for line in chunk.chunks(57) {
            writeln!(
                f,
                "{}",
                base64::engine::general_purpose::STANDARD.encode(line)
            )
            .unwrap();
        }
    }
    write!(f, "\n--=-=-=--\n").unwrap();
    drop(f);

    let smime = built("smime");
    let env = [("SMIME_AGENT_SOCK", agent.socket.as_os_str())];
    let rss_of = |what: &str, args: &[&str]| {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let (out, rss) = run_measured(&smime, &args, &env);
        assert_ok(&out, what);
        rss
    };
    // The baseline: signing a small message.
    std::fs::write(p("small.eml"), MAIL).unwrap();
    let small = p("small.signed");
    let baseline = rss_of(
        "smime sign (small)",
        &[
            "sign",
            "--key",
            "alice-rsa",
            "--mime",
            "--in",
            s(&p("small.eml")),
            "--out",
            s(&small),
        ],
    );
    let measured = |what: &str, args: &[&str]| match (rss_of(what, args), baseline) {
        (Some(kib), Some(base)) => {
            eprintln!("{what}: peak RSS {kib} KiB (small message: {base} KiB)");
            assert!(
                kib < base + MAX_GROWTH_KIB,
                "{what}: peak RSS {kib} KiB, {base} KiB for a small message"
            );
        }
        _ => eprintln!("/usr/bin/time missing: peak RSS of {what} not checked"),
    };
    let (mail, clear, opaque, enc) = (p("mail.eml"), p("clear.eml"), p("opaque.eml"), p("enc.eml"));
    measured(
        "smime sign --mime",
        &[
            "sign",
            "--key",
            "alice-rsa",
            "--mime",
            "--in",
            s(&mail),
            "--out",
            s(&clear),
        ],
    );
    measured(
        "smime sign --opaque",
        &[
            "sign",
            "--key",
            "alice-ec",
            "--opaque",
            "--in",
            s(&mail),
            "--out",
            s(&opaque),
        ],
    );
    // OpenSSL agrees with the clear-signed message and recovers the same content.
    let recovered = openssl_smime_verify(dir.path(), &clear, &ca);
    let original = std::fs::read(&mail).unwrap();
    let body_start = find(&original, b"\n\n").unwrap() + 2;
    assert!(
        lf(&recovered).ends_with(&original[body_start..]),
        "openssl's recovered content differs from the message body"
    );
    for (what, signed) in [("clear", &clear), ("opaque", &opaque)] {
        let verified = p(&format!("{what}.verified"));
        measured(
            &format!("smime verify ({what})"),
            &[
                "verify",
                "--trust",
                s(&ca),
                "--in",
                s(signed),
                "--out",
                s(&verified),
            ],
        );
        let verified = lf(&std::fs::read(&verified).unwrap());
        assert!(
            verified.ends_with(&original[body_start..]),
            "{what}: verified content differs from the message body"
        );
        assert!(verified.starts_with(b"From: Alice Example <alice@example.org>\n"));
    }
    measured(
        "smime encrypt",
        &[
            "encrypt",
            "--to",
            s(&token.file("bob-rsa.pem")),
            "--in",
            s(&clear),
            "--out",
            s(&enc),
        ],
    );
    let dec = p("dec.eml");
    measured(
        "smime decrypt",
        &["decrypt", "--in", s(&enc), "--out", s(&dec)],
    );
    assert_ok(
        &run(std::process::Command::new("cmp").arg(&clear).arg(&dec)),
        "decrypted message equals the signed one",
    );
    let opened = p("opened.eml");
    measured(
        "smime open",
        &[
            "open",
            "--trust",
            s(&ca),
            "--in",
            s(&enc),
            "--out",
            s(&opened),
        ],
    );
    assert!(lf(&std::fs::read(&opened).unwrap()).ends_with(&original[body_start..]));
}
