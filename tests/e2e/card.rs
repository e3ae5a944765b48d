//! `smime card`: provisioning the virtual PIV card of `tests/pivemu` (see
//! `smime_tests::pcsc`) directly over PC/SC. Every result is judged by another tool:
//! OpenSSL for requests, certificates and signed mail, yubico-piv-tool and OpenSC's
//! pkcs11-tool for the card's state (PIN, PUK, management key, slots). One card at a
//! time: every test holds the card lock.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smime_tests::pcsc::{CARD_PIN, OPENSC_MODULE, VIRTUAL_READER};
use smime_tests::{
    Agent, AgentOptions, SoftCa, Token, VirtualCard, assert_failed_cleanly, assert_ok, built,
    openssl_in, run, run_stdin, s,
};

/// The virtual card's factory PUK (piv-authenticator's default).
const CARD_PUK: &str = "12345678";
/// The factory management key (3DES), which `yubico-piv-tool` uses without `-k`.
const DEFAULT_MGM: &str = "010203040506070801020304050607080102030405060708";

/// `smime card ARGS` with `stdin` (the secrets, one per line).
fn card_cmd(args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["card"];
    all.extend_from_slice(args);
    run_stdin(
        Command::new(built("smime"))
            .args(&all)
            .env("SMIME_AGENT_NO_AUTOSTART", "1"),
        stdin.as_bytes(),
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `yubico-piv-tool -r READER ARGS`, success or not.
fn piv_tool(card: &VirtualCard, args: &[&str]) -> Output {
    run(Command::new("yubico-piv-tool")
        .arg("-r")
        .arg(VIRTUAL_READER)
        .args(args)
        .current_dir(card.dir.path()))
}

/// `yubico-piv-tool -a status`.
fn status(card: &VirtualCard) -> String {
    String::from_utf8_lossy(&card.piv_tool(&["-a", "status"]).stdout).into_owned()
}

/// "PIN tries left" as yubico-piv-tool reports it.
fn pin_tries(card: &VirtualCard) -> i32 {
    let st = status(card);
    st.lines()
        .find_map(|l| l.strip_prefix("PIN tries left:\t"))
        .unwrap_or_else(|| panic!("no PIN tries in {st}"))
        .trim()
        .parse()
        .unwrap()
}

/// A certificate file (PEM or DER) as DER, by openssl.
fn cert_der(p: &Path) -> Vec<u8> {
    let pem = std::fs::read(p).unwrap().starts_with(b"-----");
    let out = run(Command::new("openssl").args([
        "x509",
        "-in",
        s(p),
        "-inform",
        if pem { "PEM" } else { "DER" },
        "-outform",
        "DER",
    ]));
    assert_ok(&out, "openssl x509");
    out.stdout
}

/// The certificate in `slot`, read by yubico-piv-tool, as DER.
fn slot_cert(card: &VirtualCard, slot: &str) -> Vec<u8> {
    let f = card.file(&format!("slot-{slot}.pem"));
    card.piv_tool(&["-a", "read-certificate", "-s", slot, "-o", s(&f)]);
    cert_der(&f)
}

/// Has the CA sign a request made on the card (openssl x509 -req checks its signature
/// with -verify first), as an S/MIME signing certificate for `email`.
fn ca_sign(card: &VirtualCard, ca_name: &str, csr: &Path, email: &str, out: &str) -> PathBuf {
    let dir = card.dir.path();
    std::fs::write(
        dir.join("leaf.ext"),
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
             extendedKeyUsage=emailProtection\nsubjectAltName=email:{email}\n"
        ),
    )
    .unwrap();
    openssl_in(dir, &["req", "-in", s(csr), "-verify", "-noout"]);
    openssl_in(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            s(csr),
            "-CA",
            &format!("{ca_name}-ca.pem"),
            "-CAkey",
            &format!("{ca_name}-ca.key"),
            "-set_serial",
            "4242",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
            "-out",
            out,
        ],
    );
    dir.join(out)
}

const MAIL: &str = "From: Card Alice <alice@example.org>\r\nTo: bob@example.org\r\n\
Subject: provisioned by smime card\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
Signed with a key smime card made.\r\n";

/// The whole walkthrough of the README on a fresh card: a key and a request made by
/// `smime card generate`, certified by a CA (openssl), put back by `smime card
/// import-cert`; then the agent signs mail with that key over OpenSC's PKCS#11 module,
/// and `openssl smime -verify` accepts it.
#[test]
fn a_card_provisioned_by_smime_card_signs_mail_openssl_verifies() {
    let card = VirtualCard::new();
    let dir = card.dir.path();
    let ca = SoftCa::new(dir, "prov");
    let csr = card.file("alice.csr");
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9a",
            "--alg",
            "p256",
            "--subject",
            "CN=Card Alice,O=Example",
            "--email",
            "alice@example.org",
            "--csr",
            s(&csr),
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "smime card generate --csr");
    assert!(
        stderr(&out).contains("default management key"),
        "the default management key is flagged: {}",
        stderr(&out)
    );
    // The request: its signature verifies (made by the card's new key), with the
    // subject and the S/MIME extensions asked for.
    let text = openssl_in(dir, &["req", "-in", s(&csr), "-verify", "-noout", "-text"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    // The subject as given (RFC 4514 order: the most specific RDN first).
    let subject = openssl_in(
        dir,
        &[
            "req",
            "-in",
            s(&csr),
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&subject.stdout).trim(),
        "subject=CN=Card Alice,O=Example"
    );
    assert!(text.contains("email:alice@example.org"), "{text}");
    assert!(text.contains("E-mail Protection"), "{text}");
    // The request's key is the card's: OpenSC lists the same public key in slot 9a.
    let req_pub = openssl_in(dir, &["req", "-in", s(&csr), "-pubkey", "-noout"]);
    let cert = ca_sign(&card, "prov", &csr, "alice@example.org", "alice.pem");
    let out = card_cmd(
        &["import-cert", "--slot", "9a", s(&cert)],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "smime card import-cert");
    assert_eq!(
        slot_cert(&card, "9a"),
        cert_der(&cert),
        "slot 9a holds the certificate"
    );
    let cert_pub = openssl_in(dir, &["x509", "-in", s(&cert), "-pubkey", "-noout"]);
    assert_eq!(req_pub.stdout, cert_pub.stdout);

    // The agent signs with the provisioned key twice: over OpenSC's PKCS#11 module, then
    // with its native PIV backend; openssl verifies both, each by the imported certificate.
    let token = Token::new();
    let mail = card.file("mail.eml");
    std::fs::write(&mail, MAIL).unwrap();
    for (route, options) in [
        (
            "OpenSC",
            AgentOptions {
                module: Some(OPENSC_MODULE.into()),
                pin_file: Some(Some(card.pin_file())),
                ..Default::default()
            },
        ),
        (
            "native",
            AgentOptions {
                config: Some(super::piv_native::native_config(&[])),
                pin_file: Some(Some(card.pin_file())),
                ..Default::default()
            },
        ),
    ] {
        let agent = Agent::start_with(&token, options);
        let signed = card.file(&format!("signed-{route}.eml"));
        assert_ok(
            &agent.sign("alice@example.org", &mail, &signed, &["--mime"]),
            &format!("smime sign --mime with the provisioned key ({route})"),
        );
        let signer = super::piv::openssl_verifies_mail(
            &signed,
            &ca.cert,
            "Signed with a key smime card made.",
            route,
        );
        assert_eq!(
            signer,
            cert_der(&cert),
            "signed by the provisioned key ({route})"
        );
        drop(agent);
    }
}

/// A self-signed certificate: written to the slot and to --out, parsed and checked by
/// openssl (its signature is the card key's), and the card's key in that slot signs
/// for it through OpenSC.
#[test]
fn a_self_signed_generate_writes_a_certificate_for_the_card_key() {
    let card = VirtualCard::new();
    let dir = card.dir.path();
    let pem = card.file("self.pem");
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9c",
            "--alg",
            "p256",
            "--subject",
            "CN=Self Signed",
            "--email",
            "self@example.org",
            "--out",
            s(&pem),
            "--days",
            "10",
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "smime card generate (self-signed)");
    let text = openssl_in(dir, &["x509", "-in", s(&pem), "-noout", "-text"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("Subject: CN = Self Signed"), "{text}");
    assert!(text.contains("Issuer: CN = Self Signed"), "{text}");
    assert!(text.contains("email:self@example.org"), "{text}");
    assert!(
        text.contains("Non Repudiation"),
        "9c signs with non-repudiation: {text}"
    );
    // Self-signed by the key it names.
    openssl_in(
        dir,
        &[
            "verify",
            "-CAfile",
            s(&pem),
            "-purpose",
            "smimesign",
            s(&pem),
        ],
    );
    assert_eq!(
        slot_cert(&card, "9c"),
        cert_der(&pem),
        "the slot holds it too"
    );
    // The card's key in 9c (OpenSC id 02) signs; the certificate's key verifies.
    openssl_in(
        dir,
        &[
            "x509",
            "-in",
            s(&pem),
            "-pubkey",
            "-noout",
            "-out",
            "self.pub",
        ],
    );
    super::piv::pkcs11_tool_signs(dir, "02", "self.pub", "pkcs11-tool --sign with 9c");
}

/// `smime card list` says what `yubico-piv-tool -a status` says (serial, version, slots
/// with algorithm and subject, PIN tries), and flags the default management key until it
/// is changed.
#[test]
fn card_list_agrees_with_yubico_piv_tool() {
    let mut card = VirtualCard::new();
    for (slot, alg, cn) in [("9a", "p256", "CN=List A"), ("9d", "p384", "CN=List D")] {
        let out = card_cmd(
            &[
                "generate",
                "--slot",
                slot,
                "--alg",
                alg,
                "--subject",
                cn,
                "--out",
                s(&card.file("x.pem")),
            ],
            &format!("{CARD_PIN}\n"),
        );
        assert_ok(&out, &format!("generate {slot}"));
    }
    // A fresh insertion: the PIN is not verified, so both tools can read its tries.
    card.remove();
    card.insert();
    let st = status(&card);
    let out = card_cmd(&["list", "--json"], "");
    assert_ok(&out, "smime card list --json");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reader = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reader"] == VIRTUAL_READER)
        .unwrap_or_else(|| panic!("{list:#}"));
    let c = &reader["card"];
    assert!(
        st.contains(&format!("Serial Number:\t{}\n", c["serial"])),
        "{st}\n{c:#}"
    );
    assert!(
        st.contains(&format!("Version:\t{}\n", c["version"].as_str().unwrap())),
        "{st}"
    );
    assert_eq!(c["pin_tries"], pin_tries(&card), "{st}\n{c:#}");
    assert_eq!(c["pin_tries"], 3);
    assert_eq!(
        c["puk_tries"],
        serde_json::Value::Null,
        "the card cannot tell: unknown"
    );
    assert_eq!(c["management_key_insecure"], true);
    // Every slot yubico-piv-tool shows, with the same algorithm and subject; no others.
    let mut shown = 0;
    for block in st.split("Slot ").skip(1) {
        let slot = &block[..2];
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{name}:\t")))
                .unwrap()
                .to_owned()
        };
        let ours = c["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["slot"] == slot)
            .unwrap_or_else(|| panic!("slot {slot} missing: {c:#}"));
        assert_eq!(ours["algorithm"], field("Algorithm"), "slot {slot}");
        assert_eq!(ours["subject"], field("Subject DN"), "slot {slot}");
        shown += 1;
    }
    assert_eq!(shown, 2, "{st}");
    let with_certs = c["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| !x["subject"].is_null())
        .count();
    assert_eq!(with_certs, shown, "{c:#}");
    let text = card_cmd(&["list"], "");
    assert_ok(&text, "smime card list");
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("serial 5437251, version 5.4.3"), "{text}");
    assert!(text.contains("PIN: 3 tries left"), "{text}");
    assert!(text.contains("PUK: unknown"), "{text}");
    assert!(text.contains("management key: DEFAULT, INSECURE"), "{text}");
    assert!(
        text.contains("slot 9a (PIV authentication): ECCP256, CN=List A"),
        "{text}"
    );
    assert!(
        text.contains("slot 9d (key management): ECCP384, CN=List D"),
        "{text}"
    );
    // Once changed, the management key is no longer flagged.
    let out = card_cmd(&["set-mgmt-key", "--generate"], &format!("{CARD_PIN}\n"));
    assert_ok(&out, "set-mgmt-key --generate");
    let text = card_cmd(&["list"], "");
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("management key: not the default"), "{text}");
    assert!(!text.contains("INSECURE"), "{text}");
}

/// change-pin: the new PIN works with pkcs11-tool and yubico-piv-tool, the old one fails.
#[test]
fn change_pin_takes_effect_on_the_card() {
    let card = VirtualCard::new();
    let out = card_cmd(&["change-pin"], &format!("{CARD_PIN}\n24681357\n"));
    assert_ok(&out, "smime card change-pin");
    let p11 = |pin: &str| {
        run(Command::new("pkcs11-tool").args([
            "--module",
            OPENSC_MODULE,
            "--login",
            "--pin",
            pin,
            "--list-objects",
        ]))
    };
    assert_ok(&p11("24681357"), "pkcs11-tool login with the new PIN");
    assert!(
        !piv_tool(&card, &["-a", "verify-pin", "-P", CARD_PIN])
            .status
            .success(),
        "the old PIN still works"
    );
    assert!(
        piv_tool(&card, &["-a", "verify-pin", "-P", "24681357"])
            .status
            .success(),
        "yubico-piv-tool rejects the new PIN"
    );
}

/// A wrong PIN is reported with the tries left and costs exactly one try (no automatic
/// retry); a locked PIN points at `smime card unblock`, which with the PUK sets a new PIN;
/// a wrong PUK reports its tries left.
#[test]
fn wrong_pins_lock_and_the_puk_unblocks() {
    let mut card = VirtualCard::new();
    assert_eq!(pin_tries(&card), 3);
    // Through change-pin (CHANGE REFERENCE) ...
    let out = card_cmd(&["change-pin"], "000000\n111111\n");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong PIN: 2 tries left"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pin_tries(&card), 2, "one wrong PIN costs one try");
    // ... and through a command that verifies the PIN (VERIFY).
    let csr = card.file("never.csr");
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9a",
            "--alg",
            "p256",
            "--subject",
            "CN=x",
            "--csr",
            s(&csr),
        ],
        "000000\n",
    );
    let err = assert_failed_cleanly(&out, &csr, "generate with a wrong PIN");
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("wrong PIN: 1 try left"), "{err}");
    assert_eq!(pin_tries(&card), 1);
    let out = card_cmd(&["change-pin"], "000000\n111111\n");
    assert!(stderr(&out).contains("PIN locked"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("smime card unblock"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pin_tries(&card), 0);
    // Locked: smime does not even ask.
    let out = card_cmd(&["change-pin"], "");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("PIN locked: unblock it with the PUK: smime card unblock"),
        "{}",
        stderr(&out)
    );
    // A wrong PUK: tries left, PIN still locked.
    let out = card_cmd(&["unblock"], "87654321\n222222\n");
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("wrong PUK:"), "{}", stderr(&out));
    assert!(stderr(&out).contains("tries left"), "{}", stderr(&out));
    assert_eq!(pin_tries(&card), 0);
    let out = card_cmd(&["unblock"], &format!("{CARD_PUK}\n222222\n"));
    assert_ok(&out, "smime card unblock");
    card.remove();
    card.insert();
    assert_eq!(pin_tries(&card), 3, "unblocked");
    card.piv_tool(&["-a", "verify-pin", "-P", "222222"]);
}

/// change-puk: yubico-piv-tool unblocks with the new PUK, not with the old one.
#[test]
fn change_puk_takes_effect_on_the_card() {
    let card = VirtualCard::new();
    let out = card_cmd(&["change-puk"], &format!("{CARD_PUK}\n97531864\n"));
    assert_ok(&out, "smime card change-puk");
    // Changing the PUK again with the old one fails; with the new one it works.
    assert!(
        !piv_tool(
            &card,
            &["-a", "change-puk", "-P", CARD_PUK, "-N", "11112222"]
        )
        .status
        .success(),
        "the old PUK still works"
    );
    card.piv_tool(&["-a", "change-puk", "-P", "97531864", "-N", "11112222"]);
    // A new PUK shorter than 6 never reaches the card.
    let out = card_cmd(&["change-puk"], "11112222\n123\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("6 to 8 characters"),
        "{}",
        stderr(&out)
    );
}

/// set-mgmt-key: a generated key, then a typed one, then one stored PIN-protected;
/// yubico-piv-tool works with the new key and not the old one each time, and with the
/// protected key the PIN alone provisions the card.
#[test]
fn set_mgmt_key_takes_effect_on_the_card() {
    let card = VirtualCard::new();
    let chuid = |key: &str| piv_tool(&card, &[&format!("-k{key}"), "-a", "set-chuid"]);
    assert_ok(&chuid(DEFAULT_MGM), "the default key at first");
    let out = card_cmd(&["set-mgmt-key", "--generate"], &format!("{CARD_PIN}\n"));
    assert_ok(&out, "set-mgmt-key --generate");
    let generated = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(generated.len(), 48, "{generated}");
    assert!(
        !chuid(DEFAULT_MGM).status.success(),
        "the default key still works"
    );
    assert_ok(&chuid(&generated), "yubico-piv-tool with the generated key");
    // A typed new key: PIN, current key, new key.
    let typed = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a09080";
    let out = card_cmd(
        &["set-mgmt-key"],
        &format!("{CARD_PIN}\n{generated}\n{typed}\n"),
    );
    assert_ok(&out, "set-mgmt-key (typed)");
    assert!(!chuid(&generated).status.success());
    assert_ok(&chuid(typed), "yubico-piv-tool with the typed key");
    // A wrong current key is refused, and changes nothing.
    let out = card_cmd(
        &["set-mgmt-key", "--generate"],
        &format!("{CARD_PIN}\n{generated}\n"),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rejected the management key"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    assert_ok(&chuid(typed), "unchanged");
    // PIN-protected: nobody is told the key, and the PIN alone is enough afterwards.
    let out = card_cmd(
        &["set-mgmt-key", "--protected"],
        &format!("{CARD_PIN}\n{typed}\n"),
    );
    assert_ok(&out, "set-mgmt-key --protected");
    assert!(out.stdout.is_empty(), "a protected key is not printed");
    assert!(!chuid(typed).status.success(), "the old key still works");
    assert!(!chuid(DEFAULT_MGM).status.success());
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9e",
            "--alg",
            "p256",
            "--subject",
            "CN=Protected",
            "--out",
            s(&card.file("p.pem")),
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "generate with only the PIN");
    assert!(
        !stderr(&out).contains("default management key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(slot_cert(&card, "9e"), cert_der(&card.file("p.pem")));
}

/// import-cert refuses a certificate for another key, reads DER too, and a key that was
/// replaced needs --force.
#[test]
fn import_cert_checks_the_key_and_generate_protects_keys() {
    let card = VirtualCard::new();
    let dir = card.dir.path();
    let csr = card.file("k.csr");
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9a",
            "--alg",
            "p256",
            "--email",
            "k@example.org",
            "--csr",
            s(&csr),
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "generate");
    let ca = SoftCa::new(dir, "imp");
    let cert = ca_sign(&card, "imp", &csr, "k@example.org", "k.pem");
    // A certificate for another key (openssl's own) is refused, with the slot unchanged.
    let other = ca.issue(
        "other",
        "Other",
        "other@example.org",
        smime_tests::SoftKey::P256,
    );
    let out = card_cmd(
        &["import-cert", "--slot", "9a", s(&other.cert)],
        &format!("{CARD_PIN}\n"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not the key in slot 9a"),
        "{}",
        stderr(&out)
    );
    let st = status(&card);
    assert!(!st.contains("Slot 9a"), "{st}");
    // DER works.
    let der = card.file("k.der");
    std::fs::write(&der, cert_der(&cert)).unwrap();
    let out = card_cmd(
        &["import-cert", "--slot", "9a", s(&der)],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "import-cert DER");
    assert_eq!(slot_cert(&card, "9a"), cert_der(&cert));
    // A slot with a certificate is not overwritten without --force.
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9a",
            "--alg",
            "p256",
            "--subject",
            "CN=y",
            "--csr",
            s(&card.file("y.csr")),
        ],
        &format!("{CARD_PIN}\n"),
    );
    let err = assert_failed_cleanly(&out, &card.file("y.csr"), "generate over a key");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(slot_cert(&card, "9a"), cert_der(&cert), "untouched");
}

/// Attestation: the virtual card has none, so a clear error and no output.
#[test]
fn attest_on_a_card_without_attestation_fails_clearly() {
    let card = VirtualCard::new();
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9a",
            "--alg",
            "p256",
            "--subject",
            "CN=a",
            "--out",
            s(&card.file("a.pem")),
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "generate");
    let att = card.file("att.pem");
    let out = card_cmd(&["attest", "--slot", "9a", "--out", s(&att)], "");
    let err = assert_failed_cleanly(&out, &att, "attest");
    assert!(err.contains("cannot attest slot 9a"), "{err}");
    assert_eq!(out.status.code(), Some(4), "{err}");
}

/// No card, a bad slot, a bad certificate file: one-line errors, the documented exit
/// statuses, no output file.
#[test]
fn bad_requests_fail_cleanly() {
    let mut card = VirtualCard::new();
    let csr = card.file("out.csr");
    let gen_args = [
        "generate",
        "--slot",
        "9c",
        "--alg",
        "p256",
        "--subject",
        "CN=x",
        "--csr",
        s(&csr),
    ];
    // A slot that is not a key slot: a usage error before the card is touched.
    let mut bad = gen_args;
    bad[2] = "9b";
    let out = card_cmd(&bad, &format!("{CARD_PIN}\n"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a PIV key slot"),
        "{}",
        stderr(&out)
    );
    assert!(!csr.exists());
    // Not a certificate.
    let junk = card.file("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = card_cmd(
        &["import-cert", "--slot", "9c", s(&junk)],
        &format!("{CARD_PIN}\n"),
    );
    let err = assert_failed_cleanly(&out, &csr, "import-cert junk");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("holds no certificate"), "{err}");
    let out = card_cmd(
        &["import-cert", "--slot", "9c", s(&card.file("missing.pem"))],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // No secrets on standard input: says so, and sends nothing.
    let out = card_cmd(&["change-pin"], "");
    let err = assert_failed_cleanly(&out, &csr, "change-pin without input");
    assert!(
        err.contains("standard input ended before the Current PIN"),
        "{err}"
    );
    assert_eq!(pin_tries(&card), 3);
    // No card: every command says so (exit 3) and writes nothing.
    card.remove();
    let out = card_cmd(&gen_args, &format!("{CARD_PIN}\n"));
    let err = assert_failed_cleanly(&out, &csr, "generate without a card");
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no PIV card found"), "{err}");
    let att = card.file("att.pem");
    let out = card_cmd(&["attest", "--slot", "9a", "-o", s(&att)], "");
    let err = assert_failed_cleanly(&out, &att, "attest without a card");
    assert!(err.contains("no PIV card found"), "{err}");
    let out = card_cmd(&["list"], "");
    assert_ok(&out, "smime card list without a card");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("reader {VIRTUAL_READER}: no card")),
        "{text}"
    );
    // A serial no card has.
    card.insert();
    let out = card_cmd(&["--serial", "42", "change-pin"], "");
    let err = assert_failed_cleanly(&out, &csr, "wrong serial");
    assert!(err.contains("no PIV card found with serial 42"), "{err}");
    let out = card_cmd(&["change-pin", "--reader", "no such reader"], "");
    let err = assert_failed_cleanly(&out, &csr, "wrong reader");
    assert!(
        err.contains("no PIV card found in a reader matching"),
        "{err}"
    );
}

/// RSA 2048 in the key-management slot: the request asks for key encipherment and
/// verifies with openssl; import-cert checks an RSA certificate by a test signature
/// (PKCS#1 v1.5 made on the host, raw RSA on the card) and refuses another RSA key.
#[test]
fn rsa_requests_and_certificates_for_the_key_management_slot() {
    let card = VirtualCard::new();
    let dir = card.dir.path();
    let csr = card.file("rsa.csr");
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9d",
            "--alg",
            "rsa2048",
            "--subject",
            "CN=Card RSA",
            "--email",
            "rsa@example.org",
            "--csr",
            s(&csr),
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "generate rsa2048 --csr");
    let text = openssl_in(dir, &["req", "-in", s(&csr), "-verify", "-noout", "-text"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("Key Encipherment"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    SoftCa::new(dir, "rsa");
    let cert = ca_sign(&card, "rsa", &csr, "rsa@example.org", "rsa.pem");
    // Another RSA key's certificate (same subject, openssl's key) is refused.
    openssl_in(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "o.key",
            "-out",
            "other-rsa.pem",
            "-subj",
            "/CN=Card RSA",
            "-days",
            "2",
        ],
    );
    let out = card_cmd(
        &[
            "import-cert",
            "--slot",
            "9d",
            s(&card.file("other-rsa.pem")),
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not the key in slot 9d"),
        "{}",
        stderr(&out)
    );
    let out = card_cmd(
        &["import-cert", "--slot", "9d", s(&cert)],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "import-cert rsa");
    assert_eq!(slot_cert(&card, "9d"), cert_der(&cert));
    // OpenSC decrypts with the card's key what openssl encrypts to the certificate.
    std::fs::write(card.file("secret.txt"), b"for the card").unwrap();
    openssl_in(
        dir,
        &[
            "pkeyutl",
            "-encrypt",
            "-certin",
            "-inkey",
            "rsa.pem",
            "-in",
            "secret.txt",
            "-out",
            "secret.enc",
        ],
    );
    let dec = run(Command::new("pkcs11-tool").args([
        "--module",
        OPENSC_MODULE,
        "--login",
        "--pin",
        CARD_PIN,
        "--decrypt",
        "--id",
        "03",
        "-m",
        "RSA-PKCS",
        "-i",
        s(&card.file("secret.enc")),
        "-o",
        s(&card.file("secret.dec")),
    ]));
    assert_ok(&dec, "pkcs11-tool --decrypt with 9d");
    assert_eq!(
        std::fs::read(card.file("secret.dec")).unwrap(),
        b"for the card"
    );
}

/// A second virtual card in vpcd's second reader (port 35964), stopped by pid on drop.
struct SecondCard {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl SecondCard {
    /// Needs the first card's lock held (a [`VirtualCard`] alive).
    fn insert(_first: &VirtualCard) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(smime_tests::pivemu_bin())
            .env("PIVEMU_STATE", dir.path().join("flash"))
            .env("PIVEMU_PORT", "35964")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let card = Self { child, _dir: dir };
        wait_second(true);
        card
    }
}

impl Drop for SecondCard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        wait_second(false);
    }
}

/// Waits until `opensc-tool -l` shows a card in "Virtual PCD 00 01" (or none).
fn wait_second(present: bool) {
    let start = std::time::Instant::now();
    loop {
        let out = run(Command::new("opensc-tool").arg("-l"));
        let yes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains(" Yes ") && l.trim_end().ends_with("Virtual PCD 00 01"));
        if yes == present || start.elapsed() > std::time::Duration::from_secs(20) {
            assert_eq!(yes, present, "the second card did not come or go");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Two cards: a command must be told which (one-line usage error naming both), and
/// --reader picks one; the other card is not touched.
#[test]
fn several_cards_need_a_choice() {
    let card = VirtualCard::new();
    let second = SecondCard::insert(&card);
    let out = card_cmd(&["list", "--json"], "");
    assert_ok(&out, "list with two cards");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cards = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["card"].is_null())
        .count();
    assert_eq!(cards, 2, "{list:#}");
    let out = card_cmd(&["change-pin"], "");
    let err = assert_failed_cleanly(&out, &card.file("none"), "change-pin with two cards");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("several PIV cards"), "{err}");
    assert!(
        err.contains("Virtual PCD 00 00") && err.contains("Virtual PCD 00 01"),
        "{err}"
    );
    // The second reader's card, by a part of its reader's name.
    let out = card_cmd(
        &["--reader", "pcd 00 01", "change-pin"],
        &format!("{CARD_PIN}\n13572468\n"),
    );
    assert_ok(&out, "change-pin --reader");
    // The first card still has the factory PIN.
    card.piv_tool(&["-a", "verify-pin", "-P", CARD_PIN]);
    let other = run(Command::new("yubico-piv-tool").args([
        "-r",
        "Virtual PCD 00 01",
        "-a",
        "verify-pin",
        "-P",
        "13572468",
    ]));
    assert_ok(&other, "the second card has the new PIN");
    drop(second);
}

/// Whether the card's PIN is verified now, asked by OpenSC's tool (an empty VERIFY: 9000
/// when verified, 63Cx otherwise). A reset would clear it.
fn pin_verified_on_card() -> bool {
    let out = run(Command::new("opensc-tool").args([
        "-r",
        VIRTUAL_READER,
        "-s",
        "00 A4 04 00 05 A0 00 00 03 08",
        "-s",
        "00 20 00 80",
    ]));
    assert_ok(&out, "opensc-tool -s VERIFY");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let answers: Vec<&str> = text.split("Sending: ").skip(1).collect();
    assert_eq!(answers.len(), 2, "{text}");
    answers[1].contains("SW1=0x90, SW2=0x00")
}

/// smime card never resets the card (a reset logs every other application out): the PIN
/// that one command verified is still verified for the next user, after smime's own
/// commands and after a failed one.
#[test]
fn smime_card_leaves_the_card_as_it_is() {
    let mut card = VirtualCard::new();
    // A card whose reset logs the PIN out, as a real card's does.
    card.remove();
    card.insert_with_env(&[("PIVEMU_RESET_LOGOUT", "1")]);
    assert!(!pin_verified_on_card(), "a fresh card starts unverified");
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9a",
            "--alg",
            "p256",
            "--subject",
            "CN=l",
            "--out",
            s(&card.file("l.pem")),
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "generate");
    assert!(
        pin_verified_on_card(),
        "the PIN verification is gone: the card was reset"
    );
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["attest", "--slot", "9a"],
    ] {
        let _ = card_cmd(args, "");
        assert!(pin_verified_on_card(), "smime card {args:?} reset the card");
    }
    let text = card_cmd(&["list"], "");
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("PIN: verified now"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // The fixture does notice a reset: yubico-piv-tool resets the card when it is done.
    card.piv_tool(&["-a", "status"]);
    assert!(
        !pin_verified_on_card(),
        "a reset did not log the PIN out: this test could not see one"
    );
}

/// The agent, logged in to the card over OpenSC, keeps working while `smime card` uses the
/// same card (list, and a key generated in another slot, between signatures), with no new
/// `smime unlock`. This does not catch a card reset: OpenSC quietly verifies its cached
/// PIN again after one (a mutation of smime card to reset the card passed this test);
/// `smime_card_leaves_the_card_as_it_is` does.
#[test]
fn the_agent_keeps_its_login_while_smime_card_provisions() {
    let card = VirtualCard::new();
    let dir = card.dir.path().to_owned();
    let csr = card.file("a.csr");
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9a",
            "--alg",
            "p256",
            "--email",
            "agent@example.org",
            "--csr",
            s(&csr),
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "generate 9a");
    SoftCa::new(&dir, "live");
    let cert = ca_sign(&card, "live", &csr, "agent@example.org", "agent.pem");
    assert_ok(
        &card_cmd(
            &["import-cert", "--slot", "9a", s(&cert)],
            &format!("{CARD_PIN}\n"),
        ),
        "import-cert 9a",
    );
    // The agent logs in once, by `smime unlock`.
    let token = Token::new();
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            module: Some(OPENSC_MODULE.into()),
            pin_file: Some(None),
            ..Default::default()
        },
    );
    assert_ok(
        &agent.smime_stdin(
            &["unlock", "--pin-stdin"],
            format!("{CARD_PIN}\n").as_bytes(),
        ),
        "smime unlock",
    );
    let data = card.file("data.txt");
    std::fs::write(&data, b"live").unwrap();
    let sign = |n: usize| {
        agent.sign(
            "agent@example.org",
            &data,
            &card.file(&format!("{n}.p7s")),
            &[],
        )
    };
    assert_ok(&sign(0), "the agent signs");
    assert_ok(&card_cmd(&["list"], ""), "smime card list");
    assert_ok(
        &sign(1),
        "the agent signs after smime card list, without a new login",
    );
    let out = card_cmd(
        &[
            "generate",
            "--slot",
            "9e",
            "--alg",
            "p256",
            "--subject",
            "CN=side",
            "--out",
            s(&card.file("side.pem")),
        ],
        &format!("{CARD_PIN}\n"),
    );
    assert_ok(&out, "generate 9e meanwhile");
    assert_ok(
        &sign(2),
        "the agent signs after smime card generate, without a new login",
    );
    drop(agent);
}

/// On a terminal (script(1) gives smime a pty) the secrets are prompted for, new ones
/// twice; two different new PINs change nothing.
#[test]
fn on_a_terminal_secrets_are_prompted_for() {
    let card = VirtualCard::new();
    let on_pty = |input: &str| {
        run_stdin(
            Command::new("script").args([
                "-qfec",
                &format!("{} card change-pin", s(&built("smime"))),
                "/dev/null",
            ]),
            input.as_bytes(),
        )
    };
    let out = on_pty(&format!("{CARD_PIN}\n11223344\n11223344\n"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_ok(&out, "change-pin on a pty");
    for prompt in ["Current PIN: ", "New PIN: ", "New PIN again: "] {
        assert!(text.contains(prompt), "no prompt {prompt:?}: {text:?}");
    }
    assert!(
        text.contains("the PIN of card 5437251 is changed"),
        "{text:?}"
    );
    let out = on_pty("11223344\n12121212\n34343434\n");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text:?}");
    assert!(
        text.contains("the two new PINs differ; nothing was changed"),
        "{text:?}"
    );
    card.piv_tool(&["-a", "verify-pin", "-P", "11223344"]);
}
