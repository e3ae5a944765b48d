//! A PIV smart card through OpenSC's PKCS#11 module: the agent on the virtual card of
//! `tests/pivemu` (see `smime_tests::pcsc`), provisioned with `yubico-piv-tool`, with
//! OpenSSL as the judge. One card at a time: every test holds the card lock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use smime_tests::pcsc::{CARD_PIN, OPENSC_MODULE, VIRTUAL_READER};
use smime_tests::{Agent, AgentOptions, SoftCa, Token, VirtualCard, assert_ok, openssl_in, run, s};

/// The card's S/MIME identities (slot, algorithm, CN, e-mail).
pub(crate) const SIGNER: (&str, &str, &str, &str) =
    ("9a", "ECCP256", "Card Signer", "card-sign@example.org");
pub(crate) const RSA_KM: (&str, &str, &str, &str) =
    ("9d", "RSA2048", "Card RSA", "card-rsa@example.org");
/// A retired key-management slot: OpenSC gives its EC key CKA_DERIVE (9a's only signs).
pub(crate) const EC_KM: (&str, &str, &str, &str) =
    ("82", "ECCP256", "Card ECDH", "card-ecdh@example.org");

/// The provisioned card (made once per test process): its flash, the CA and the
/// certificates, and the public keys.
pub(crate) struct Master {
    pub(crate) dir: PathBuf,
    pub(crate) ca: SoftCa,
    pub(crate) certs: Vec<PathBuf>,
}

pub(crate) fn master() -> &'static Master {
    static MASTER: OnceLock<Master> = OnceLock::new();
    MASTER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("smime-piv-master-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = SoftCa::new(&dir, "piv");
        let mut card = VirtualCard::new();
        let certs = [SIGNER, RSA_KM, EC_KM]
            .iter()
            .map(|(slot, alg, cn, email)| card.provision(&ca, slot, alg, cn, email))
            .collect();
        std::fs::copy(card.file("9a.pub.pem"), dir.join("9a.pub.pem")).unwrap();
        card.save_flash(&dir.join("flash"));
        Master { dir, ca, certs }
    })
}

struct Setup {
    // Field order is drop order: the agent goes before the card.
    agent: Agent,
    ca: &'static SoftCa,
    certs: &'static [PathBuf],
    card: VirtualCard,
    _token: Token,
}

impl Setup {
    fn p(&self, name: &str) -> PathBuf {
        self.card.file(name)
    }
}

/// A card with the three keys and certificates (a copy of the master card), and an agent
/// on OpenSC's module with the card's PIN.
fn setup() -> Setup {
    let m = master();
    let card = VirtualCard::from_flash(&m.dir.join("flash"));
    std::fs::copy(m.dir.join("9a.pub.pem"), card.file("9a.pub.pem")).unwrap();
    // The agent needs a SoftHSM token only for its SOFTHSM2_CONF; it loads OpenSC alone.
    let token = Token::new();
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            module: Some(OPENSC_MODULE.into()),
            pin_file: Some(Some(card.pin_file())),
            ..Default::default()
        },
    );
    Setup {
        agent,
        ca: &m.ca,
        certs: &m.certs,
        card,
        _token: token,
    }
}

pub(crate) const MAIL: &str = "From: Card Signer <card-sign@example.org>\r\nTo: bob@example.org\r\n\
Subject: signed on a card\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
Signed by a PIV card through OpenSC.\r\n";

/// `smime sign --mime` with the card's EC key; `openssl smime -verify` must accept it.
fn sign_and_verify(t: &Setup, name: &str) {
    let mail = t.p("mail.eml");
    std::fs::write(&mail, MAIL).unwrap();
    let signed = t.p(&format!("{name}.eml"));
    assert_ok(
        &t.agent.sign(SIGNER.3, &mail, &signed, &["--mime"]),
        &format!("smime sign --mime ({name})"),
    );
    // Signed by the card's key: the signer certificate is the one in slot 9a.
    assert_eq!(
        openssl_verifies_mail(
            &signed,
            &t.ca.cert,
            "Signed by a PIV card through OpenSC.",
            name
        ),
        pem_der(&t.certs[0]),
        "{name}: signed with another key"
    );
}

/// `openssl smime -verify` (S/MIME signing purpose, chain to `ca`) must accept the message
/// `signed`, and the content it gives back must contain `text`. Returns the signer
/// certificate openssl names, as DER. Its files go next to `signed`.
pub(crate) fn openssl_verifies_mail(signed: &Path, ca: &Path, text: &str, name: &str) -> Vec<u8> {
    let out = signed.with_extension("verified");
    let signer = signed.with_extension("signer.pem");
    let r = run(Command::new("openssl").args([
        "smime",
        "-verify",
        "-in",
        s(signed),
        "-CAfile",
        s(ca),
        "-purpose",
        "smimesign",
        "-signer",
        s(&signer),
        "-out",
        s(&out),
    ]));
    assert_ok(&r, &format!("openssl smime -verify ({name})"));
    assert!(
        String::from_utf8_lossy(&std::fs::read(&out).unwrap()).contains(text),
        "{name}: the verified content is not the message"
    );
    pem_der(&signer)
}

pub(crate) fn pem_der(p: &Path) -> Vec<u8> {
    let out = run(Command::new("openssl").args(["x509", "-in", s(p), "-outform", "DER"]));
    assert_ok(&out, "openssl x509");
    out.stdout
}

#[test]
fn card_keys_are_listed_with_their_certificates() {
    let t = setup();
    let out = t.agent.smime(&["keys", "--json"]);
    assert_ok(&out, "smime keys --json");
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let by_email = |email: &str| {
        keys.iter()
            .find(|k| k["emails"].as_array().unwrap().iter().any(|e| e == email))
            .unwrap_or_else(|| panic!("no key for {email} in {keys:#?}"))
    };
    let cases = [
        (SIGNER, "ec-p256", "PIV AUTH key", "sign"),
        (RSA_KM, "rsa-2048", "KEY MAN key", "decrypt"),
        (EC_KM, "ec-p256", "Retired KEY MAN 1", "ecdh"),
    ];
    for ((_, _, cn, email), alg, label, op) in cases {
        let k = by_email(email);
        assert_eq!(k["algorithm"], alg, "{email}");
        assert_eq!(k["label"], label, "{email}");
        assert_eq!(k["subject"], format!("CN={cn}"), "{email}");
        assert!(
            k["operations"].as_array().unwrap().iter().any(|o| o == op),
            "{email}: want {op} in {}",
            k["operations"]
        );
    }
    // The certificates are the ones imported, byte for byte.
    for (cert, (_, _, _, email)) in t.certs.iter().zip([SIGNER, RSA_KM, EC_KM]) {
        let k = by_email(email);
        let want = hex::encode(sha2_256(&pem_der(cert)));
        assert_eq!(k["sha256"], want, "{email}: certificate fingerprint");
    }
    // The human-readable listing names them too.
    let out = t.agent.smime(&["keys"]);
    assert_ok(&out, "smime keys");
    let text = String::from_utf8_lossy(&out.stdout);
    for (_, _, cn, email) in [SIGNER, RSA_KM, EC_KM] {
        assert!(text.contains(email) && text.contains(cn), "{text}");
    }
}

fn sha2_256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

#[test]
fn the_card_signs_smime_mail_that_openssl_verifies() {
    let t = setup();
    sign_and_verify(&t, "first");
    // And again, on the same logged-in session.
    sign_and_verify(&t, "second");
}

#[test]
fn openssl_envelopes_to_the_card_decrypt_through_the_agent() {
    let t = setup();
    let entity = "Content-Type: text/plain; charset=us-ascii\r\n\r\nfor the card only\r\n";
    std::fs::write(t.p("entity.txt"), entity).unwrap();
    // (name, recipient certificate, extra openssl options)
    let oaep = [
        "-keyopt",
        "rsa_padding_mode:oaep",
        "-keyopt",
        "rsa_oaep_md:sha256",
        "-keyopt",
        "rsa_mgf1_md:sha256",
    ];
    let cases: [(&str, &Path, &[&str]); 4] = [
        ("rsa-pkcs1", &t.certs[1], &["-aes-256-cbc"]),
        ("rsa-oaep", &t.certs[1], &["-aes-128-gcm"]),
        ("ec-ecdh", &t.certs[2], &["-aes-256-cbc"]),
        ("ec-ecdh-gcm", &t.certs[2], &["-aes-128-gcm"]),
    ];
    for (name, cert, opts) in cases {
        let enc = format!("{name}.p7m");
        let mut args = vec!["cms", "-encrypt", "-in", "entity.txt", "-out", &enc];
        args.extend_from_slice(opts);
        args.extend(["-recip", s(cert)]);
        if name == "rsa-oaep" {
            args.extend(oaep);
        }
        openssl_in(t.card.dir.path(), &args);
        let out = t.p(&format!("{name}.dec"));
        let r = t
            .agent
            .smime(&["decrypt", "--in", s(&t.p(&enc)), "--out", s(&out)]);
        assert_ok(&r, &format!("smime decrypt ({name})"));
        let text = String::from_utf8(std::fs::read(&out).unwrap()).unwrap();
        assert!(
            text.contains("for the card only"),
            "{name}: decrypted to {text:?}"
        );
    }
}

#[test]
fn other_pcsc_clients_share_the_card_with_the_agent() {
    let t = setup();
    sign_and_verify(&t, "before");
    // OpenSC's tools open the card themselves in between (the agent keeps its session).
    let name = run(Command::new("opensc-tool").args(["-r", VIRTUAL_READER, "-n"]));
    assert_ok(&name, "opensc-tool -n");
    assert!(
        String::from_utf8_lossy(&name.stdout).contains("Personal Identity Verification Card"),
        "{}",
        String::from_utf8_lossy(&name.stdout)
    );
    let list = run(Command::new("pkcs11-tool").args(["--module", OPENSC_MODULE, "-L"]));
    assert_ok(&list, "pkcs11-tool -L");
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("piv_II"),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
    // A second PKCS#11 user logs in and signs with the same key.
    pkcs11_tool_signs(t.card.dir.path(), "01", "9a.pub.pem", "pkcs11-tool --sign");
    sign_and_verify(&t, "after");
}

/// Signs with the card's key; the `smime` output.
fn sign_once(t: &Setup, out: &Path) -> std::process::Output {
    let data = t.p("data.txt");
    std::fs::write(&data, b"card data").unwrap();
    t.agent.sign(SIGNER.3, &data, out, &[])
}

#[test]
fn a_removed_card_fails_cleanly_and_the_agent_stays_up() {
    let mut t = setup();
    let sig = t.p("sig.p7s");
    assert_ok(&sign_once(&t, &sig), "sign before removal");
    std::fs::remove_file(&sig).unwrap();
    t.card.remove();
    for _ in 0..2 {
        let out = sign_once(&t, &sig);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("is not present"), "{err}");
        assert!(
            out.stdout.is_empty() && !sig.exists(),
            "output despite the failure"
        );
    }
    assert!(t.agent.is_running(), "{}", t.agent.log_text());
    let status = t.agent.smime(&["status"]);
    assert!(t.agent.is_running());
    assert!(
        !String::from_utf8_lossy(&status.stdout).is_empty(),
        "status answers with the card removed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Inserted again, the same card (PIVEMU_STATE) is there for a new PKCS#11 user.
    t.card.insert();
    let objects = run(Command::new("pkcs11-tool").args(["--module", OPENSC_MODULE, "-O"]));
    assert_ok(&objects, "pkcs11-tool -O after reinsertion");
    assert!(
        String::from_utf8_lossy(&objects.stdout).contains("CN=Card Signer"),
        "{}",
        String::from_utf8_lossy(&objects.stdout)
    );
    assert!(t.agent.is_running());
}

/// A card pulled out and put back: the request in between fails with "not present", the
/// ones after work again with no agent restart (OpenSC re-detects the card when the agent
/// asks for the slot again, on the card event or before reopening its session).
#[test]
fn a_reinserted_card_works_again_without_an_agent_restart() {
    let mut t = setup();
    let sig = t.p("sig.p7s");
    assert_ok(&sign_once(&t, &sig), "sign before removal");
    t.card.remove();
    std::fs::remove_file(&sig).unwrap();
    assert_eq!(sign_once(&t, &sig).status.code(), Some(3));
    // Same PIVEMU_STATE: the same card, with its keys, comes back.
    t.card.insert();
    let agent_pid = t.agent.pid();
    for n in 0..3 {
        let out = sign_once(&t, &sig);
        assert_ok(&out, &format!("sign #{n} after reinsertion"));
    }
    assert_eq!(t.agent.pid(), agent_pid);
    assert!(t.agent.is_running());
    sign_and_verify(&t, "reinserted");
}

/// The fixture itself: Yubico's tool (5-byte RID select, answers without Le, GET VERSION)
/// finds a YubiKey-like card, and a reinserted card keeps its keys (`PIVEMU_STATE`).
#[test]
fn the_virtual_card_looks_like_a_yubikey_and_keeps_its_keys() {
    let mut card = VirtualCard::from_flash(&master().dir.join("flash"));
    let version = card.piv_tool(&["-a", "version"]);
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("5.4.3"),
        "{}",
        String::from_utf8_lossy(&version.stdout)
    );
    let status = |card: &VirtualCard| {
        String::from_utf8_lossy(&card.piv_tool(&["-a", "status"]).stdout).into_owned()
    };
    let before = status(&card);
    assert!(before.contains("Serial Number:\t5437251"), "{before}");
    for (slot, alg, cn, _) in [SIGNER, RSA_KM, EC_KM] {
        assert!(
            before.contains(&format!(
                "Slot {slot}:\t\n\tAlgorithm:\t{alg}\n\tSubject DN:\tCN={cn}\n"
            )),
            "slot {slot}: {before}"
        );
    }
    card.remove();
    assert!(!VirtualCard::present());
    card.insert();
    assert_eq!(status(&card), before, "the reinserted card changed");
    // The shims at the APDU level, in one PC/SC connection: SELECT by the 5-byte RID
    // without Le answers the application template at once; GET VERSION says 5.4.3; GET
    // METADATA is "not supported" (6D00) rather than an empty success; GET SERIAL.
    let out = run(Command::new("opensc-tool").args([
        "-r",
        VIRTUAL_READER,
        "-s",
        "00 A4 04 00 05 A0 00 00 03 08",
        "-s",
        "00 FD 00 00",
        "-s",
        "00 F7 00 00 9A",
        "-s",
        "00 F8 00 00",
    ]));
    assert_ok(&out, "opensc-tool -s");
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = text.split("Sending: ").skip(1).collect();
    assert_eq!(answers.len(), 4, "{text}");
    let sw_ok = "Received (SW1=0x90, SW2=0x00):\n";
    assert!(
        answers[0].contains(&format!("{sw_ok}61 ")),
        "{}",
        answers[0]
    );
    assert!(
        answers[1].contains(&format!("{sw_ok}05 04 03 ")),
        "{}",
        answers[1]
    );
    assert!(
        answers[2].contains("Received (SW1=0x6D, SW2=0x00)"),
        "{}",
        answers[2]
    );
    assert!(
        answers[3].contains(&format!("{sw_ok}00 52 F7 43 ")),
        "{}",
        answers[3]
    );
}

/// PC/SC card events: the agent sees the card go and come without any request failing
/// first. `smime status` shows the reader empty and the token's login dropped, then the
/// card back, and the first request after reinsertion works.
#[test]
fn card_events_show_in_status_and_bring_the_token_back() {
    let mut t = setup();
    let status = |t: &Setup| {
        let out = t.agent.smime(&["status", "--json"]);
        assert_ok(&out, "smime status --json");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let wait_for = |t: &Setup, what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let start = std::time::Instant::now();
        loop {
            let s = status(t);
            if f(&s) {
                return s;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(15),
                "{what}: {s}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let has_card = |s: &serde_json::Value| {
        s["agent"]["pcsc"]["readers"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["card"] == true))
    };
    let tokens = |s: &serde_json::Value| s["tokens"].as_array().map_or(0, Vec::len);
    let s = wait_for(&t, "card present at start", &|s| {
        has_card(s) && tokens(s) == 1
    });
    assert!(s["agent"]["pcsc"]["readers"][0]["atr"].is_string(), "{s}");
    let logged_in = |s: &serde_json::Value| s["tokens"][0]["logged_in"] == true;
    wait_for(&t, "logged in at start", &|s| logged_in(s));
    t.card.remove();
    // The token stays listed (its keys ask for the card), without its login.
    wait_for(&t, "card gone, login dropped", &|s| {
        !has_card(s) && tokens(s) == 1 && !logged_in(s)
    });
    t.card.insert();
    wait_for(&t, "card back", &|s| has_card(s) && tokens(s) == 1);
    let sig = t.p("after-events.p7s");
    assert_ok(&sign_once(&t, &sig), "sign after the card came back");
    let text = String::from_utf8_lossy(&t.agent.smime(&["status"]).stdout).into_owned();
    assert!(text.contains("card present (ATR "), "{text}");
}

/// `smime status --json`.
fn status_json(t: &Setup) -> serde_json::Value {
    let out = t.agent.smime(&["status", "--json"]);
    assert_ok(&out, "smime status --json");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `smime status --json` until `f` holds (at most `secs` seconds).
fn wait_status(
    t: &Setup,
    what: &str,
    secs: u64,
    f: &dyn Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let s = status_json(t);
        if f(&s) {
            return s;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(secs),
            "{what}: {s}\nagent log:\n{}",
            t.agent.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// pcscd dies under the running agent and comes back: meanwhile `smime status` says PC/SC
/// is unavailable and requests fail cleanly; afterwards the reader and card show again and
/// a signature through the same agent process verifies with OpenSSL.
#[test]
fn a_pcscd_restart_is_survived_without_an_agent_restart() {
    let mut t = setup();
    if !t.card.owns_pcscd() {
        // A pcscd we did not start (systemd's) is not ours to kill.
        eprintln!("skipped: pcscd was already running, not started by this test");
        return;
    }
    let has_card = |s: &serde_json::Value| {
        s["agent"]["pcsc"]["readers"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["name"] == VIRTUAL_READER && r["card"] == true)
        })
    };
    let tokens = |s: &serde_json::Value| s["tokens"].as_array().map_or(0, Vec::len);
    wait_status(&t, "card present at start", 15, &|s| {
        has_card(s) && tokens(s) == 1
    });
    sign_and_verify(&t, "before-restart");
    let agent_pid = t.agent.pid();

    t.card.kill_pcscd();
    let s = wait_status(&t, "PC/SC reported unavailable", 15, &|s| {
        s["agent"]["pcsc"]["error"].is_string()
    });
    assert!(!has_card(&s), "{s}");
    let text = String::from_utf8_lossy(&t.agent.smime(&["status"]).stdout).into_owned();
    assert!(
        text.contains("card readers: unavailable (pcscd is not available")
            && text.contains("start pcscd"),
        "{text}"
    );
    // A request meanwhile fails with the agent's "unavailable" code, and no output.
    let sig = t.p("during.p7s");
    let out = sign_once(&t, &sig);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sig.exists() && out.stdout.is_empty());
    assert!(t.agent.is_running(), "{}", t.agent.log_text());

    t.card.start_pcscd();
    // The monitor's backoff is at most a few seconds after a short outage.
    let s = wait_status(&t, "reader and card back", 40, &|s| {
        s["agent"]["pcsc"]["error"].is_null() && has_card(s) && tokens(s) == 1
    });
    assert!(s["agent"]["pcsc"]["readers"][0]["atr"].is_string(), "{s}");
    let text = String::from_utf8_lossy(&t.agent.smime(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!("reader {VIRTUAL_READER}: card present (ATR ")),
        "{text}"
    );
    let out = sign_once(&t, &t.p("after.p7s"));
    assert!(
        out.status.success(),
        "first signature after the restart: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        t.agent.log_text()
    );
    sign_and_verify(&t, "after-restart");
    assert_eq!(t.agent.pid(), agent_pid, "the agent was restarted");
    assert!(t.agent.is_running());
}

/// Another PKCS#11 user (pkcs11-tool over OpenSC, its own login) signs a digest with the
/// card key of OpenSC id `id`; `openssl pkeyutl` verifies it with `pubkey` (a file in
/// `dir`).
pub(super) fn pkcs11_tool_signs(dir: &Path, id: &str, pubkey: &str, what: &str) {
    std::fs::write(dir.join("digest.bin"), [7u8; 32]).unwrap();
    let sig = run(Command::new("pkcs11-tool").args([
        "--module",
        OPENSC_MODULE,
        "--login",
        "--pin",
        CARD_PIN,
        "--sign",
        "--id",
        id,
        "-m",
        "ECDSA",
        "-i",
        s(&dir.join("digest.bin")),
        "-o",
        s(&dir.join("other.sig")),
        "--signature-format",
        "openssl",
    ]));
    assert_ok(&sig, what);
    openssl_in(
        dir,
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            pubkey,
            "-in",
            "digest.bin",
            "-sigfile",
            "other.sig",
        ],
    );
}
