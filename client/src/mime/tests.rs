//! Unit tests and interop with OpenSSL (`openssl smime` / `openssl cms` as the judge).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use mail_parser::{MessageParser, MimeHeaders as _, PartType};

use super::canon::is_7bit_clean;
use super::codec;
use super::*;

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Body of a parsed entity's root part, decoded.
fn decoded_body(entity: &[u8]) -> Vec<u8> {
    let msg = MessageParser::new()
        .with_mime_headers()
        .parse(entity)
        .unwrap();
    msg.parts[0].contents().to_vec()
}

/// A fake DER blob (a SEQUENCE) of a given size.
fn fake_der(len: usize) -> Vec<u8> {
    let mut v = vec![0x30, 0x82, (len >> 8) as u8, len as u8];
    v.extend((0..len).map(|i| (i * 7 + 3) as u8));
    v
}

// ---------------------------------------------------------------- codecs

#[test]
fn base64_lines_are_76_columns_crlf() {
    let data = fake_der(1000);
    let enc = codec::base64_lines(&data);
    let text = s(&enc);
    assert!(text.ends_with("\r\n"));
    for line in text.split_terminator("\r\n") {
        assert!(line.len() <= 76, "{line}");
    }
    assert_eq!(text.split_terminator("\r\n").next().unwrap().len(), 76);
    assert_eq!(codec::base64_decode(&enc).unwrap(), data);
    assert!(codec::base64_lines(b"").is_empty());
}

#[test]
fn base64_decode_errors() {
    assert_eq!(codec::base64_decode(b"aGVsbG8=").unwrap(), b"hello");
    assert_eq!(codec::base64_decode(b"aGVs\r\nbG8").unwrap(), b"hello");
    assert!(matches!(
        codec::base64_decode(b"aGVs*G8="),
        Err(codec::Base64Error::InvalidChar(b'*'))
    ));
    assert!(matches!(
        codec::base64_decode(b"aGVsbG8=aGVs"),
        Err(codec::Base64Error::DataAfterPadding)
    ));
    assert!(matches!(
        codec::base64_decode(b"aGVsb"),
        Err(codec::Base64Error::Truncated)
    ));
}

#[test]
fn streamed_base64_matches_in_memory() {
    /// Hands out data a few octets at a time, to exercise short reads.
    struct Trickle(Vec<u8>, usize);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }
    for len in [0, 1, 56, 57, 58, 57 * 1024, 57 * 1024 + 1, 200_000] {
        let data = fake_der(len);
        let outer = pairs(&[("From", "a@example.org"), ("Subject", "big")]);
        let mut streamed = Vec::new();
        write_pkcs7_mime(
            &outer,
            "enveloped-data",
            Trickle(data.clone(), 0),
            &mut streamed,
        )
        .unwrap();
        assert_eq!(
            streamed,
            pkcs7_mime(&outer, "enveloped-data", &data),
            "len {len}"
        );
    }
}

#[test]
fn quoted_printable_round_trips_any_octets() {
    use rand::RngExt as _;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let len = rng.random_range(0..3000);
        let data: Vec<u8> = (0..len)
            .map(|_| match rng.random_range(0..10) {
                0 => b'\r',
                1 => b'\n',
                2 => b' ',
                3 => b'=',
                4 => rng.random(),
                _ => rng.random_range(b'a'..=b'z'),
            })
            .collect();
        let enc = codec::qp_encode(&data);
        assert!(is_7bit_clean(&enc), "{}", s(&enc));
        for line in s(&enc).split("\r\n") {
            assert!(line.len() <= 76, "{line:?}");
            assert!(!line.ends_with(' ') && !line.ends_with('\t'), "{line:?}");
        }
        assert_eq!(codec::qp_decode(&enc), data);
    }
}

#[test]
fn quoted_printable_protects_fragile_lines() {
    let enc = codec::qp_encode(b"From me\r\ntrailing \r\ntab\t\r\na=b\r\n");
    assert_eq!(s(&enc), "=46rom me\r\ntrailing=20\r\ntab=09\r\na=3Db\r\n");
}

// ---------------------------------------------------------------- prepare_for_signing

#[test]
fn bare_ascii_text_becomes_7bit_text_plain() {
    let p = prepare_for_signing(b"hello\nworld\n").unwrap();
    assert!(p.outer_headers.is_empty());
    assert_eq!(
        s(&p.inner),
        "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\nhello\r\nworld\r\n"
    );
}

#[test]
fn bare_utf8_text_becomes_quoted_printable() {
    let p = prepare_for_signing("grüße\r\n".as_bytes()).unwrap();
    assert_eq!(
        s(&p.inner),
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ngr=C3=BC=C3=9Fe\r\n"
    );
    assert_eq!(decoded_body(&p.inner), "grüße\r\n".as_bytes());
}

#[test]
fn binary_input_becomes_base64_octet_stream_unchanged() {
    let data: Vec<u8> = (0..=255u8).chain(b"\n\r\n\x00".iter().copied()).collect();
    let p = prepare_for_signing(&data).unwrap();
    assert!(s(&p.inner).starts_with(
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ));
    assert!(is_7bit_clean(&p.inner));
    assert_eq!(
        decoded_body(&p.inner),
        data,
        "line ends in binary data must survive"
    );
}

#[test]
fn text_that_merely_starts_like_a_header_stays_inside() {
    let p = prepare_for_signing(b"Note: the plan\n\nis secret\n").unwrap();
    assert!(p.outer_headers.is_empty());
    assert!(contains(&p.inner, b"Note: the plan\r\n\r\nis secret\r\n"));
}

#[test]
fn message_headers_stay_outside_content_headers_inside() {
    let input = "From: Alice <a@example.org>\n\
                 To: b@example.org\n\
                 Subject: a folded\n  subject\n\
                 Date: Mon, 1 Jan 2024 00:00:00 +0000\n\
                 MIME-Version: 1.0\n\
                 Content-Type: text/plain; charset=utf-8\n\
                 Content-Transfer-Encoding: 8bit\n\
                 Message-ID: <1@example.org>\n\
                 \n\
                 héllo\n";
    let p = prepare_for_signing(input.as_bytes()).unwrap();
    assert_eq!(
        p.outer_headers,
        pairs(&[
            ("From", "Alice <a@example.org>"),
            ("To", "b@example.org"),
            ("Subject", "a folded\r\n  subject"),
            ("Date", "Mon, 1 Jan 2024 00:00:00 +0000"),
            ("Message-ID", "<1@example.org>"),
        ])
    );
    assert_eq!(
        s(&p.inner),
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nh=C3=A9llo\r\n"
    );
    // And in the signed message: the fields first, then MIME-Version once.
    let msg = multipart_signed(&p, &fake_der(300), "sha-256");
    let text = s(&msg);
    assert!(text.starts_with(
        "From: Alice <a@example.org>\r\nTo: b@example.org\r\nSubject: a folded\r\n  subject\r\n"
    ));
    assert_eq!(text.matches("MIME-Version:").count(), 1);
    let parsed = MessageParser::new()
        .with_minimal_headers()
        .parse(&msg)
        .unwrap();
    assert_eq!(parsed.subject(), Some("a folded subject"));
}

#[test]
fn message_without_mime_headers_gets_text_plain() {
    let p = prepare_for_signing("From: a@example.org\r\nSubject: x\r\n\r\nünïcode\r\n".as_bytes())
        .unwrap();
    assert_eq!(
        p.outer_headers,
        pairs(&[("From", "a@example.org"), ("Subject", "x")])
    );
    assert!(s(&p.inner).starts_with(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    ));
    assert_eq!(decoded_body(&p.inner), "ünïcode\r\n".as_bytes());
}

#[test]
fn bare_entity_is_the_inner_entity() {
    let input = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nplain\r\n";
    let p = prepare_for_signing(input).unwrap();
    assert!(p.outer_headers.is_empty());
    assert_eq!(p.inner, input);
}

#[test]
fn long_lines_and_fragile_lines_are_encoded() {
    let long = "x".repeat(1500);
    let input = format!("Content-Type: text/plain\n\n{long}\nFrom here\nend  \n");
    let p = prepare_for_signing(input.as_bytes()).unwrap();
    assert!(contains(
        &p.inner,
        b"Content-Transfer-Encoding: quoted-printable\r\n"
    ));
    assert!(is_7bit_clean(&p.inner));
    assert_eq!(
        decoded_body(&p.inner),
        format!("{long}\r\nFrom here\r\nend  \r\n").as_bytes()
    );

    let p =
        prepare_for_signing(format!("Content-Type: application/x-thing\n\n{long}\n").as_bytes())
            .unwrap();
    assert!(contains(&p.inner, b"Content-Transfer-Encoding: base64\r\n"));
    assert_eq!(decoded_body(&p.inner), format!("{long}\r\n").as_bytes());
}

const MIXED_LF: &str = "From: a@example.org\n\
    Subject: files\n\
    MIME-Version: 1.0\n\
    Content-Type: multipart/mixed; boundary=\"XYZ\"\n\
    Content-Transfer-Encoding: 8bit\n\
    \n\
    preamble here\n\
    --XYZ\n\
    Content-Type: text/plain; charset=utf-8\n\
    Content-Transfer-Encoding: 8bit\n\
    \n\
    Grüße\n\
    --XYZ  \n\
    Content-Type: application/octet-stream; name=blob.bin\n\
    Content-Disposition: attachment; filename=blob.bin\n\
    Content-Transfer-Encoding: binary\n\
    \n\
    BIN\x01\x02\n\x7f\n\
    --XYZ\n\
    Content-Type: message/rfc822\n\
    \n\
    Subject: inner\n\
    Content-Type: text/plain; charset=iso-8859-1\n\
    \n\
    caf\u{e9}\n\
    --XYZ--\n\
    epilogue\n";

#[test]
fn multipart_is_canonicalized_part_by_part() {
    let p = prepare_for_signing(MIXED_LF.as_bytes()).unwrap();
    assert_eq!(
        p.outer_headers,
        pairs(&[("From", "a@example.org"), ("Subject", "files")])
    );
    let inner = s(&p.inner);
    assert!(is_7bit_clean(&p.inner), "{inner}");
    assert!(!inner.contains("From: a@example.org"));
    assert!(inner.starts_with(
        "Content-Type: multipart/mixed; boundary=\"XYZ\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\npreamble here\r\n--XYZ\r\n"
    ), "{inner}");
    assert!(inner.contains("Gr=C3=BC=C3=9Fe\r\n--XYZ\r\n"));
    assert!(inner.contains("\r\n--XYZ--\r\nepilogue\r\n"));
    // The nested message keeps its own header fields and gets its body encoded.
    assert!(inner.contains("Subject: inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"));

    let msg = MessageParser::new()
        .with_mime_headers()
        .parse(&p.inner)
        .unwrap();
    let PartType::Multipart(ids) = &msg.parts[0].body else {
        panic!("not multipart")
    };
    assert_eq!(ids.len(), 3);
    assert_eq!(msg.parts[ids[0] as usize].contents(), "Grüße".as_bytes());
    // Binary content: base64 of the exact octets, LF not turned into CRLF.
    let bin = &msg.parts[ids[1] as usize];
    assert_eq!(bin.content_transfer_encoding(), Some("base64"));
    assert_eq!(bin.contents(), b"BIN\x01\x02\n\x7f");
    // Idempotent: the canonical form is its own canonical form.
    let again = prepare_for_signing(&p.inner).unwrap();
    assert_eq!(again.inner, p.inner);
}

#[test]
fn nested_signed_content_is_left_alone() {
    let input = "Content-Type: multipart/mixed; boundary=o\n\n--o\n\
        Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=i\n\n\
        --i\nContent-Type: text/plain\n\nx  \n--i\nContent-Type: application/pkcs7-signature\n\nAAAA\n--i--\n\
        --o--\n";
    let p = prepare_for_signing(input.as_bytes()).unwrap();
    assert!(contains(
        &p.inner,
        b"--i\r\nContent-Type: text/plain\r\n\r\nx  \r\n--i\r\n"
    ));
}

#[test]
fn broken_multiparts_are_refused_for_signing() {
    let no_boundary = b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\na\r\n--x--\r\n";
    assert!(matches!(
        prepare_for_signing(no_boundary),
        Err(MimeError::MissingBoundary { .. })
    ));
    let unterminated = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\na\r\n";
    assert!(matches!(
        prepare_for_signing(unterminated),
        Err(MimeError::Unterminated { .. })
    ));
    let absent = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--y\r\n\r\na\r\n--y--\r\n";
    assert!(matches!(
        prepare_for_signing(absent),
        Err(MimeError::BoundaryNotFound { .. })
    ));
    let bad64 =
        b"Content-Type: application/x-a\r\nContent-Transfer-Encoding: base64\r\n\r\n\xff\xfe\r\n";
    assert!(matches!(
        prepare_for_signing(bad64),
        Err(MimeError::BadBase64 { .. })
    ));
}

// ---------------------------------------------------------------- building and parsing

#[test]
fn multipart_signed_round_trip() {
    let p = prepare_for_signing(MIXED_LF.as_bytes()).unwrap();
    let sig = fake_der(1500);
    let msg = multipart_signed(&p, &sig, "sha-256");
    assert!(is_7bit_clean(&msg));
    let text = s(&msg);
    assert!(text.contains(
        "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\r\n\tmicalg=sha-256; boundary=\""
    ));
    assert!(text.contains("Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"));
    assert!(text.contains("Content-Disposition: attachment; filename=smime.p7s\r\n"));
    let boundary = text
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(
        !contains(&p.inner, boundary.as_bytes()),
        "boundary occurs in the content"
    );

    let Parsed::MultipartSigned {
        headers,
        signed,
        signature,
        micalg,
    } = parse(&msg).unwrap()
    else {
        panic!("not multipart/signed")
    };
    assert_eq!(signed, p.inner);
    assert_eq!(signature, sig);
    assert_eq!(micalg.as_deref(), Some("sha-256"));
    assert_eq!(&headers[..2], &p.outer_headers[..]);
    assert_eq!(from_addresses(&headers), ["a@example.org"]);

    // LF in transit or in a file: still the CRLF bytes that were signed.
    let lf = s(&msg).replace("\r\n", "\n");
    let Parsed::MultipartSigned { signed, .. } = parse(lf.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(signed, p.inner);
}

#[test]
fn signed_part_without_trailing_line_end() {
    let p = Prepared {
        outer_headers: Vec::new(),
        inner: b"Content-Type: text/plain\r\n\r\nno newline".to_vec(),
    };
    let msg = multipart_signed(&p, &fake_der(10), "sha-256");
    let Parsed::MultipartSigned { signed, .. } = parse(&msg).unwrap() else {
        panic!()
    };
    assert_eq!(signed, p.inner);
}

#[test]
fn pkcs7_mime_round_trip_and_types() {
    let outer = pairs(&[
        ("From", "\"A\" <a@example.org>"),
        ("To", "b@example.org"),
        ("Content-Type", "text/plain"),
    ]);
    let der = fake_der(700);
    for (smime_type, file) in [
        ("signed-data", "smime.p7m"),
        ("enveloped-data", "smime.p7m"),
        ("authEnveloped-data", "smime.p7m"),
        ("compressed-data", "smime.p7z"),
    ] {
        let msg = pkcs7_mime(&outer, smime_type, &der);
        let text = s(&msg);
        assert!(
            text.starts_with(
                "From: \"A\" <a@example.org>\r\nTo: b@example.org\r\nMIME-Version: 1.0\r\n"
            ),
            "{text}"
        );
        assert!(text.contains(&format!(
            "Content-Type: application/pkcs7-mime; smime-type={smime_type}; name={file}\r\n\
             Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename={file}\r\n\r\n"
        )));
        assert!(
            !text.contains("text/plain"),
            "outer Content-Type must be dropped"
        );
        let Parsed::Pkcs7Mime {
            headers,
            smime_type: t,
            der: d,
        } = parse(&msg).unwrap()
        else {
            panic!()
        };
        assert_eq!(t.as_deref(), Some(smime_type));
        assert_eq!(d, der);
        assert_eq!(from_addresses(&headers), ["a@example.org"]);
    }
}

#[test]
fn parse_accepts_x_pkcs7_and_octet_stream_names() {
    let b64 = s(&codec::base64_lines(&fake_der(100)));
    for ct in [
        "application/x-pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"",
        "application/pkcs7-mime; smime-type=enveloped-data",
        "APPLICATION/X-PKCS7-MIME; SMIME-TYPE=enveloped-data",
        "application/octet-stream; smime-type=enveloped-data; name=\"SMIME.P7M\"",
    ] {
        let msg = format!(
            "Content-Type: {ct}\nContent-Transfer-Encoding: base64\n\n{}",
            b64.replace("\r\n", "\n")
        );
        let Parsed::Pkcs7Mime {
            smime_type, der, ..
        } = parse(msg.as_bytes()).unwrap()
        else {
            panic!("{ct}")
        };
        assert_eq!(smime_type.as_deref(), Some("enveloped-data"), "{ct}");
        assert_eq!(der, fake_der(100));
    }
    // Disposition filename only, no smime-type.
    let msg = format!(
        "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"smime.p7m\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}"
    );
    assert!(matches!(
        parse(msg.as_bytes()).unwrap(),
        Parsed::Pkcs7Mime {
            smime_type: None,
            ..
        }
    ));
    // Binary transfer encoding: the octets as they are, a trailing line end dropped.
    let mut msg = b"Content-Type: application/pkcs7-mime; smime-type=signed-data\nContent-Transfer-Encoding: binary\n\n".to_vec();
    let der = [fake_der(10), b"\n".to_vec()].concat();
    msg.extend(&der);
    let Parsed::Pkcs7Mime { der: d, .. } = parse(&msg).unwrap() else {
        panic!()
    };
    assert_eq!(d, fake_der(10));
    // x-pkcs7-signature in multipart/signed.
    let msg = format!(
        "Content-Type: multipart/signed; protocol=\"application/x-pkcs7-signature\"; micalg=SHA-256; boundary=b\n\n\
         --b\nContent-Type: text/plain\n\nhi\n--b\nContent-Type: application/x-pkcs7-signature; name=smime.p7s\n\
         Content-Transfer-Encoding: base64\n\n{b64}--b--\n"
    );
    let Parsed::MultipartSigned {
        signed,
        signature,
        micalg,
        ..
    } = parse(msg.as_bytes()).unwrap()
    else {
        panic!()
    };
    assert_eq!(signed, b"Content-Type: text/plain\r\n\r\nhi");
    assert_eq!(signature, fake_der(100));
    assert_eq!(micalg.as_deref(), Some("sha-256"));
}

#[test]
fn parse_not_smime() {
    assert_eq!(
        parse(b"Content-Type: text/html\r\n\r\n<p>").unwrap(),
        Parsed::Other {
            content_type: "text/html".into()
        }
    );
    assert_eq!(
        parse(b"just text").unwrap(),
        Parsed::Other {
            content_type: "text/plain".into()
        }
    );
    let mixed = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n";
    assert_eq!(
        parse(mixed).unwrap(),
        Parsed::Other {
            content_type: "multipart/mixed".into()
        }
    );
}

#[test]
fn parse_broken_structures() {
    let sig = s(&codec::base64_lines(&fake_der(50)));
    let signed = |ct: &str, body: &str| format!("Content-Type: {ct}\r\n\r\n{body}");
    let good_body = format!(
        "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pkcs7-signature\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{sig}--b--\r\n"
    );
    let proto = "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256";
    assert!(matches!(
        parse(signed(&format!("{proto}; boundary=b"), &good_body).as_bytes()).unwrap(),
        Parsed::MultipartSigned { .. }
    ));
    // Missing protocol parameter is tolerated.
    assert!(matches!(
        parse(signed("multipart/signed; boundary=b", &good_body).as_bytes()).unwrap(),
        Parsed::MultipartSigned { .. }
    ));

    let err = |msg: String| parse(msg.as_bytes()).unwrap_err();
    assert!(matches!(
        err(signed(proto, &good_body)),
        MimeError::MissingBoundary { .. }
    ));
    assert!(matches!(
        err(signed("multipart/signed; protocol=\"application/pgp-signature\"; boundary=b", &good_body)),
        MimeError::WrongProtocol { protocol } if protocol == "application/pgp-signature"
    ));
    let one_part = "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n";
    assert!(matches!(
        err(signed(&format!("{proto}; boundary=b"), one_part)),
        MimeError::MissingSignaturePart { parts: 1 }
    ));
    let three = good_body.replace("--b--", "--b\r\n\r\nmore\r\n--b--");
    assert!(matches!(
        err(signed(&format!("{proto}; boundary=b"), &three)),
        MimeError::MissingSignaturePart { parts: 3 }
    ));
    let bad64 = good_body.replace(&sig[..8], "MII*!!!!");
    let e = err(signed(&format!("{proto}; boundary=b"), &bad64));
    assert!(matches!(e, MimeError::BadBase64 { .. }), "{e}");
    assert!(e.to_string().contains("invalid character '*'"), "{e}");
    let wrong_type = good_body.replace("application/pkcs7-signature", "application/pgp-signature");
    assert!(matches!(
        err(signed(&format!("{proto}; boundary=b"), &wrong_type)),
        MimeError::WrongSignatureType { content_type } if content_type == "application/pgp-signature"
    ));
    let cut = good_body.replace("--b--\r\n", "");
    assert!(matches!(
        err(signed(&format!("{proto}; boundary=b"), &cut)),
        MimeError::Unterminated { .. }
    ));
    assert!(matches!(
        err(signed(&format!("{proto}; boundary=zz"), &good_body)),
        MimeError::BoundaryNotFound { .. }
    ));
    let empty = "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\n\r\n";
    assert!(matches!(err(empty.to_owned()), MimeError::EmptyBody { .. }));
    let uu = "Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n";
    assert!(matches!(
        err(uu.to_owned()),
        MimeError::UnsupportedEncoding { .. }
    ));
}

#[test]
fn sniff_kinds() {
    assert_eq!(sniff(&[0x30, 0x82, 0x05, 0xfa, 0x06, 0x09]), InputKind::Der);
    assert_eq!(sniff(&[0x30, 0x80, 0x06, 0x09]), InputKind::Der);
    assert_eq!(sniff(&[0x30, 0x82]), InputKind::Der);
    assert_eq!(sniff(b"-----BEGIN PKCS7-----\n"), InputKind::Pem);
    assert_eq!(
        sniff(b"\xEF\xBB\xBF\n  -----BEGIN CMS-----"),
        InputKind::Pem
    );
    assert_eq!(sniff(b"From: a@example.org\r\n"), InputKind::Mime);
    assert_eq!(
        sniff(b"Content-Type: application/pkcs7-mime\r\n"),
        InputKind::Mime
    );
    assert_eq!(sniff(b"0 apples\n"), InputKind::Mime);
    assert_eq!(sniff(b""), InputKind::Mime);
}

#[test]
fn reattach_puts_message_headers_back() {
    let outer = pairs(&[
        ("From", "a@example.org"),
        ("Subject", "s"),
        ("MIME-Version", "1.0"),
        (
            "Content-Type",
            "application/pkcs7-mime; smime-type=enveloped-data",
        ),
        ("Content-Transfer-Encoding", "base64"),
    ]);
    let out = reattach_headers(&outer, b"Content-Type: text/plain\r\n\r\nhi\r\n");
    assert_eq!(
        s(&out),
        "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    );
    // Content without a header section of its own.
    let out = reattach_headers(&outer, b"just text\r\n");
    assert_eq!(
        s(&out),
        "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n\r\njust text\r\n"
    );
    // A whole round trip: prepare, (sign), parse, reattach gives the message back.
    let p = prepare_for_signing(MIXED_LF.as_bytes()).unwrap();
    let Parsed::MultipartSigned {
        headers, signed, ..
    } = parse(&multipart_signed(&p, &fake_der(9), "sha-256")).unwrap()
    else {
        panic!()
    };
    let back = reattach_headers(&headers, &signed);
    assert!(s(&back).starts_with("From: a@example.org\r\nSubject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed"));
}

#[test]
fn from_addresses_of_lists_and_groups() {
    let h = pairs(&[
        ("To", "x@example.org"),
        ("From", "\"Alice, A.\" <Alice@Example.org>, bob@example.org"),
        ("from", "=?utf-8?q?J=C3=B6rg?= <joerg@example.org>"),
    ]);
    assert_eq!(
        from_addresses(&h),
        ["Alice@Example.org", "bob@example.org", "joerg@example.org"]
    );
    assert!(from_addresses(&pairs(&[("To", "x@example.org")])).is_empty());
}

// ---------------------------------------------------------------- OpenSSL interop

fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl")
}

#[track_caller]
fn openssl_ok(dir: &Path, args: &[&str]) -> Output {
    let out = openssl(dir, args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        s(&out.stdout),
        s(&out.stderr)
    );
    out
}

/// A self-signed S/MIME certificate `c.pem` and key `k.pem` for a@example.org.
fn make_cert(dir: &Path) {
    openssl_ok(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Alice/emailAddress=a@example.org",
            "-addext",
            "extendedKeyUsage=emailProtection",
            "-addext",
            "subjectAltName=email:a@example.org",
            "-addext",
            "keyUsage=digitalSignature,keyEncipherment",
        ],
    );
}

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut long = "x".repeat(1200);
    long.push('\n');
    vec![
        ("message with 8-bit body", "From: Alice <a@example.org>\nTo: b@example.org\nSubject: Grüße\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nGrüße,\nFrom me  \n".as_bytes().to_vec()),
        ("multipart with binary attachment", MIXED_LF.as_bytes().to_vec()),
        ("bare text", format!("plain text\n\n{long}trailing \n").into_bytes()),
        ("binary file", (0..=255u8).cycle().take(3000).collect()),
    ]
}

#[test]
fn openssl_verifies_our_multipart_signed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_cert(d);
    for (what, input) in inputs() {
        let p = prepare_for_signing(&input).unwrap();
        std::fs::write(d.join("inner"), &p.inner).unwrap();
        openssl_ok(
            d,
            &[
                "cms", "-sign", "-binary", "-outform", "DER", "-in", "inner", "-signer", "c.pem",
                "-inkey", "k.pem", "-out", "sig.der",
            ],
        );
        let sig = std::fs::read(d.join("sig.der")).unwrap();
        let msg = multipart_signed(&p, &sig, "sha-256");
        std::fs::write(d.join("msg.eml"), &msg).unwrap();
        openssl_ok(
            d,
            &[
                "smime", "-verify", "-in", "msg.eml", "-CAfile", "c.pem", "-purpose", "any",
                "-out", "out",
            ],
        );
        let out = std::fs::read(d.join("out")).unwrap();
        assert_eq!(out, p.inner, "{what}: OpenSSL's verified content differs");
        // The same with the file in LF form, as a mailbox would store it (not for binary:
        // OpenSSL restores CRLF line by line, which is what was signed).
        let lf = s(&msg).replace("\r\n", "\n");
        std::fs::write(d.join("msg-lf.eml"), lf).unwrap();
        openssl_ok(
            d,
            &[
                "smime",
                "-verify",
                "-in",
                "msg-lf.eml",
                "-CAfile",
                "c.pem",
                "-purpose",
                "any",
                "-out",
                "out",
            ],
        );
        // And openssl cms as well.
        openssl_ok(
            d,
            &[
                "cms", "-verify", "-in", "msg.eml", "-CAfile", "c.pem", "-purpose", "any", "-out",
                "out",
            ],
        );
        // The body the reader sees is the body that went in.
        let body_in = MessageParser::new()
            .with_mime_headers()
            .parse(&input)
            .map(|m| {
                m.text_bodies()
                    .next()
                    .map(|t| t.contents().to_vec())
                    .unwrap_or_default()
            });
        let body_out = MessageParser::new()
            .with_mime_headers()
            .parse(&msg)
            .map(|m| {
                m.text_bodies()
                    .next()
                    .map(|t| t.contents().to_vec())
                    .unwrap_or_default()
            });
        if what != "bare text" && what != "binary file" {
            assert_eq!(
                body_in.map(|b| s(&b).replace("\r\n", "\n")),
                body_out.map(|b| s(&b).replace("\r\n", "\n")),
                "{what}"
            );
        }
    }
}

#[test]
fn openssl_verifies_and_decrypts_our_pkcs7_mime() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_cert(d);
    let outer = pairs(&[
        ("From", "a@example.org"),
        ("To", "a@example.org"),
        ("Subject", "opaque"),
    ]);
    for (what, input) in inputs() {
        let p = prepare_for_signing(&input).unwrap();
        std::fs::write(d.join("inner"), &p.inner).unwrap();
        openssl_ok(
            d,
            &[
                "cms",
                "-sign",
                "-nodetach",
                "-binary",
                "-outform",
                "DER",
                "-in",
                "inner",
                "-signer",
                "c.pem",
                "-inkey",
                "k.pem",
                "-out",
                "opaque.der",
            ],
        );
        let der = std::fs::read(d.join("opaque.der")).unwrap();
        std::fs::write(d.join("msg.eml"), pkcs7_mime(&outer, "signed-data", &der)).unwrap();
        openssl_ok(
            d,
            &[
                "smime", "-verify", "-in", "msg.eml", "-CAfile", "c.pem", "-purpose", "any",
                "-out", "out",
            ],
        );
        assert_eq!(std::fs::read(d.join("out")).unwrap(), p.inner, "{what}");

        for (cipher, smime_type) in [
            ("-aes-256-cbc", "enveloped-data"),
            ("-aes-256-gcm", "authEnveloped-data"),
        ] {
            openssl_ok(
                d,
                &[
                    "cms", "-encrypt", "-binary", cipher, "-outform", "DER", "-in", "inner",
                    "-out", "env.der", "c.pem",
                ],
            );
            let file = std::fs::File::open(d.join("env.der")).unwrap();
            let mut msg = Vec::new();
            write_pkcs7_mime(&outer, smime_type, file, &mut msg).unwrap();
            std::fs::write(d.join("env.eml"), &msg).unwrap();
            openssl_ok(
                d,
                &[
                    "cms", "-decrypt", "-in", "env.eml", "-recip", "c.pem", "-inkey", "k.pem",
                    "-out", "dec",
                ],
            );
            assert_eq!(
                std::fs::read(d.join("dec")).unwrap(),
                p.inner,
                "{what} {cipher}"
            );
        }
    }
}

/// `openssl cms -verify` of a detached signature over the extracted signed bytes: proves
/// they hash to the messageDigest.
fn check_detached(d: &Path, signed: &[u8], signature: &[u8]) -> bool {
    std::fs::write(d.join("signed.bin"), signed).unwrap();
    std::fs::write(d.join("sig.der"), signature).unwrap();
    openssl(
        d,
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "sig.der",
            "-content",
            "signed.bin",
            "-noverify",
            "-out",
            "/dev/null",
        ],
    )
    .status
    .success()
}

#[test]
fn we_parse_openssl_signed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_cert(d);
    std::fs::write(
        d.join("msg.txt"),
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nGrüße\nline two\n",
    )
    .unwrap();
    for (cmd, sig_type) in [
        ("smime", "application/x-pkcs7-signature"),
        ("cms", "application/pkcs7-signature"),
    ] {
        openssl_ok(
            d,
            &[
                cmd, "-sign", "-in", "msg.txt", "-signer", "c.pem", "-inkey", "k.pem", "-out",
                "s.eml", "-md", "sha256",
            ],
        );
        let mut raw = std::fs::read(d.join("s.eml")).unwrap();
        // OpenSSL's output: LF outside, CRLF inside the signed part.
        assert!(s(&raw).contains(sig_type));
        raw.splice(
            0..0,
            b"From: Alice <a@example.org>\nSubject: signed\n"
                .iter()
                .copied(),
        );
        for variant in [
            raw.clone(),
            s(&raw).replace("\r\n", "\n").into_bytes(),
            s(&raw)
                .replace('\n', "\r\n")
                .replace("\r\r\n", "\r\n")
                .into_bytes(),
        ] {
            let Parsed::MultipartSigned {
                headers,
                signed,
                signature,
                micalg,
            } = parse(&variant).unwrap()
            else {
                panic!("{cmd}: not multipart/signed")
            };
            assert_eq!(micalg.as_deref(), Some("sha-256"));
            assert_eq!(from_addresses(&headers), ["a@example.org"]);
            assert!(
                signed.starts_with(b"Content-Type: text/plain; charset=utf-8\r\n"),
                "{}",
                s(&signed)
            );
            assert!(
                check_detached(d, &signed, &signature),
                "{cmd}: signed bytes do not match the messageDigest"
            );
            // And the check is meaningful: one octet more fails.
            let mut tampered = signed.clone();
            tampered.extend_from_slice(b"\r\n");
            assert!(!check_detached(d, &tampered, &signature));
        }
        // Opaque signing.
        openssl_ok(
            d,
            &[
                cmd,
                "-sign",
                "-nodetach",
                "-in",
                "msg.txt",
                "-signer",
                "c.pem",
                "-inkey",
                "k.pem",
                "-out",
                "o.eml",
            ],
        );
        let raw = std::fs::read(d.join("o.eml")).unwrap();
        let Parsed::Pkcs7Mime {
            smime_type, der, ..
        } = parse(&raw).unwrap()
        else {
            panic!("{cmd} opaque")
        };
        assert_eq!(smime_type.as_deref(), Some("signed-data"));
        std::fs::write(d.join("o.der"), &der).unwrap();
        openssl_ok(
            d,
            &[
                "cms",
                "-verify",
                "-inform",
                "DER",
                "-in",
                "o.der",
                "-noverify",
                "-out",
                "/dev/null",
            ],
        );
    }
}

#[test]
fn we_parse_openssl_encrypted_messages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_cert(d);
    std::fs::write(d.join("msg.txt"), "Content-Type: text/plain\n\nsecret\n").unwrap();
    for (cmd, extra, want_type) in [
        ("smime", "-aes256", "enveloped-data"),
        ("cms", "-aes-256-cbc", "enveloped-data"),
        ("cms", "-aes-256-gcm", "authEnveloped-data"),
    ] {
        openssl_ok(
            d,
            &[
                cmd, "-encrypt", extra, "-in", "msg.txt", "-out", "e.eml", "c.pem",
            ],
        );
        let raw = std::fs::read(d.join("e.eml")).unwrap();
        let Parsed::Pkcs7Mime {
            headers,
            smime_type,
            der,
        } = parse(&raw).unwrap()
        else {
            panic!("{cmd}")
        };
        assert_eq!(smime_type.as_deref(), Some(want_type), "{cmd} {extra}");
        assert!(headers.iter().any(|(n, _)| n == "Content-Type"));
        std::fs::write(d.join("e.der"), &der).unwrap();
        let printed = openssl_ok(
            d,
            &["cms", "-cmsout", "-print", "-inform", "DER", "-in", "e.der"],
        );
        assert!(
            s(&printed.stdout).contains("recipientInfos"),
            "{cmd} {extra}"
        );
        let dec = openssl_ok(
            d,
            &[
                "cms", "-decrypt", "-inform", "DER", "-in", "e.der", "-recip", "c.pem", "-inkey",
                "k.pem",
            ],
        );
        assert_eq!(dec.stdout, b"Content-Type: text/plain\r\n\r\nsecret\r\n");
        // Reattaching the outer headers gives a readable message.
        let back = reattach_headers(&headers, &dec.stdout);
        assert_eq!(
            s(&back),
            "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nsecret\r\n"
        );
    }
}

#[test]
fn signed_part_edges_agree_with_rfc_1847() {
    let sig = s(&codec::base64_lines(&fake_der(20)));
    // A first part without header fields, transport padding after the delimiters, a
    // preamble, and an mbox "From " line in front.
    let msg = format!(
        "From a@example.org Mon Jan  1 00:00:00 2024\n\
         Subject: x\nContent-Type: multipart/signed; boundary=\"b b\"; protocol=\"application/pkcs7-signature\"\n\n\
         pre\n--b b \t\n\nbody\n\n--b b\nContent-Type: application/pkcs7-signature\n\
         Content-Transfer-Encoding: base64\n\n{sig}--b b-- \nepi\n"
    );
    let Parsed::MultipartSigned {
        headers,
        signed,
        signature,
        micalg,
    } = parse(msg.as_bytes()).unwrap()
    else {
        panic!()
    };
    assert_eq!(s(&signed), "\r\nbody\r\n");
    assert_eq!(signature, fake_der(20));
    assert_eq!(micalg, None);
    assert_eq!(headers[0], ("Subject".to_owned(), "x".to_owned()));
}
