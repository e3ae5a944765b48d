//! The agent's native PIV backend (the `yubikey` crate over PC/SC, no PKCS#11 module) on
//! the virtual card of `tests/pivemu`, provisioned as in `piv.rs` (P-256 in 9a, RSA-2048
//! in 9d, P-256 in 82). OpenSSL judges every signature and decryption; `yubico-piv-tool`
//! and OpenSC check the card independently. One card at a time: every test holds the
//! card lock.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smime_tests::pcsc::{CARD_PIN, OPENSC_MODULE, VIRTUAL_READER};
use smime_tests::{
    Agent, AgentOptions, Token, VirtualCard, assert_failed_cleanly, assert_ok, openssl_in, run,
    run_stdin, s,
};

use super::piv::{EC_KM, MAIL, RSA_KM, SIGNER, master, openssl_verifies_mail, pem_der};

/// The virtual card's PIV serial (pivemu answers GET SERIAL with 0x0052F743).
const SERIAL: &str = "5437251";

/// `[[card]]` giving the virtual reader to the native backend.
pub(super) fn native_config(modules: &[&str]) -> String {
    let modules: Vec<String> = modules.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "modules = [{}]\n[[card]]\nreader = {VIRTUAL_READER:?}\nbackend = \"native\"\n",
        modules.join(", ")
    )
}

struct Setup {
    // Field order is drop order: the agents go before the card.
    agent: Agent,
    card: VirtualCard,
    _token: Token,
}

impl Setup {
    fn p(&self, name: &str) -> PathBuf {
        self.card.file(name)
    }
}

/// A copy of the provisioned master card.
fn card() -> VirtualCard {
    let m = master();
    let card = VirtualCard::from_flash(&m.dir.join("flash"));
    std::fs::copy(m.dir.join("9a.pub.pem"), card.file("9a.pub.pem")).unwrap();
    card
}

/// An agent serving `card` natively, with the card's PIN configured (`pin`) or not.
fn native_agent(token: &Token, card: &VirtualCard, pin: bool, modules: &[&str]) -> Agent {
    Agent::start_with(
        token,
        AgentOptions {
            config: Some(native_config(modules)),
            pin_file: Some(pin.then(|| card.pin_file())),
            ..Default::default()
        },
    )
}

fn setup(pin: bool) -> Setup {
    let card = card();
    let token = Token::new();
    let agent = native_agent(&token, &card, pin, &[]);
    Setup {
        agent,
        card,
        _token: token,
    }
}

/// `smime sign --mime` with the card's 9a key through `agent`; `openssl smime -verify`
/// accepts it, and the signer certificate is the one in slot 9a.
fn sign_and_verify(agent: &Agent, card: &VirtualCard, name: &str) {
    let m = master();
    let mail = card.file("mail.eml");
    std::fs::write(&mail, MAIL).unwrap();
    let signed = card.file(&format!("{name}.eml"));
    assert_ok(
        &agent.sign(SIGNER.3, &mail, &signed, &["--mime"]),
        &format!("smime sign --mime ({name})"),
    );
    assert_eq!(
        openssl_verifies_mail(
            &signed,
            &m.ca.cert,
            "Signed by a PIV card through OpenSC.",
            name
        ),
        pem_der(&m.certs[0]),
        "{name}: signed with another key"
    );
}

fn sign_file(agent: &Agent, card: &VirtualCard, out: &Path) -> Output {
    let data = card.file("data.txt");
    std::fs::write(&data, b"card data").unwrap();
    agent.sign(SIGNER.3, &data, out, &[])
}

fn status(agent: &Agent) -> serde_json::Value {
    let out = agent.smime(&["status", "--json"]);
    assert_ok(&out, "smime status --json");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one native token in `status --json`.
fn piv_token(agent: &Agent) -> serde_json::Value {
    let st = status(agent);
    let tokens = st["tokens"].as_array().unwrap();
    let native: Vec<&serde_json::Value> = tokens
        .iter()
        .filter(|t| t["module"] == "native PIV")
        .collect();
    assert_eq!(native.len(), 1, "{st:#}");
    native[0].clone()
}

/// `smime unlock` for the card with `pin` on stdin.
fn unlock(agent: &Agent, pin: &str) -> Output {
    let mut cmd = Command::new(smime_tests::built("smime"));
    cmd.env("SMIME_AGENT_SOCK", &agent.socket)
        .env_remove("SMIME_AGENT_PIN")
        .args(["unlock", "--token", SERIAL, "--pin-stdin"]);
    run_stdin(&mut cmd, format!("{pin}\n").as_bytes())
}

/// The user PIN tries left as `yubico-piv-tool -a status` reads them from the card.
fn tries_by_piv_tool(card: &VirtualCard) -> u32 {
    let out = card.piv_tool(&["-a", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("PIN tries left:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PIN tries in: {text}"))
}

/// A PC/SC connection of its own to the virtual card that tells whether anyone reset the
/// card since it was opened (pcscd then refuses the handle with SCARD_W_RESET_CARD). A
/// reset logs every application out; PIV clients must leave the card with LeaveCard.
struct ResetWatch {
    card: Option<pcsc::Card>,
}

impl ResetWatch {
    fn new() -> Self {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
        let reader = std::ffi::CString::new(VIRTUAL_READER).unwrap();
        let card = ctx
            .connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
            .unwrap();
        Self { card: Some(card) }
    }

    /// Sends APDUs in one transaction, as another application would; the answers.
    fn send(&mut self, apdus: &[&[u8]]) -> Vec<Vec<u8>> {
        let card = self.card.as_mut().unwrap();
        let tx = card.transaction().unwrap();
        apdus
            .iter()
            .map(|apdu| {
                let mut buf = [0u8; 258];
                tx.transmit(apdu, &mut buf).unwrap().to_vec()
            })
            .collect()
    }

    fn was_reset(&mut self) -> bool {
        let card = self.card.as_mut().unwrap();
        match card.transaction() {
            Ok(_tx) => false, // the transaction ends with LeaveCard
            Err(pcsc::Error::ResetCard) => true,
            Err(e) => panic!("PC/SC: {e}"),
        }
    }
}

impl Drop for ResetWatch {
    fn drop(&mut self) {
        if let Some(card) = self.card.take()
            && let Err((card, _)) = card.disconnect(pcsc::Disposition::LeaveCard)
        {
            std::mem::forget(card);
        }
    }
}

/// Keys, certificates and status of a native card: the three slots with their
/// certificates byte for byte, ids `<serial>:<slot>`, and the card's reader, serial,
/// version, login and tries in `status`.
#[test]
fn native_keys_and_status() {
    let t = setup(true);
    let out = t.agent.smime(&["keys", "--json"]);
    assert_ok(&out, "smime keys --json");
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys.len(), 3, "{keys:#?}");
    let m = master();
    for (cert, (slot, _, cn, email), alg, op) in [
        (&m.certs[0], SIGNER, "ec-p256", "sign"),
        (&m.certs[1], RSA_KM, "rsa-2048", "decrypt"),
        (&m.certs[2], EC_KM, "ec-p256", "ecdh"),
    ] {
        let k = keys
            .iter()
            .find(|k| k["emails"].as_array().unwrap().iter().any(|e| e == email))
            .unwrap_or_else(|| panic!("no key for {email} in {keys:#?}"));
        assert_eq!(k["id"], format!("{SERIAL}:{slot}"), "{k}");
        assert_eq!(k["algorithm"], alg, "{k}");
        assert_eq!(k["subject"], format!("CN={cn}"), "{k}");
        assert!(
            k["operations"].as_array().unwrap().iter().any(|o| o == op),
            "{k}"
        );
        use sha2::Digest;
        assert_eq!(
            k["sha256"],
            hex::encode(sha2::Sha256::digest(pem_der(cert))),
            "{email}: certificate"
        );
    }
    let tok = piv_token(&t.agent);
    assert_eq!(tok["serial"], SERIAL, "{tok}");
    assert_eq!(tok["logged_in"], true, "{tok}");
    assert_eq!(tok["card"]["reader"], VIRTUAL_READER, "{tok}");
    assert_eq!(tok["card"]["version"], "5.4.3", "{tok}");
    assert_eq!(tok["card"]["present"], true, "{tok}");
    let text = String::from_utf8_lossy(&t.agent.smime(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!(
            "card: reader {VIRTUAL_READER}, present, PIV version 5.4.3, serial {SERIAL}"
        )),
        "{text}"
    );
}

/// The same card signs S/MIME mail through the native backend and, at the same time,
/// through an agent on OpenSC's PKCS#11 module; OpenSSL verifies both. Both agents are
/// unlocked by a client PIN they do not keep, and other PC/SC clients (`opensc-tool`,
/// `pkcs11-tool`) use the card in between: every request works, and a PC/SC handle of
/// our own shows that nobody reset the card meanwhile (it does notice the reset
/// `yubico-piv-tool` makes when it exits; after that the native agent reconnects).
#[test]
fn native_and_opensc_share_the_card_and_openssl_verifies_both() {
    let t = setup(false);
    let opensc = Agent::start_with(
        &t._token,
        AgentOptions {
            module: Some(OPENSC_MODULE.into()),
            pin_file: Some(None),
            ..Default::default()
        },
    );
    assert_ok(&unlock(&t.agent, CARD_PIN), "smime unlock (native)");
    let unlock_opensc = {
        let mut cmd = Command::new(smime_tests::built("smime"));
        cmd.env("SMIME_AGENT_SOCK", &opensc.socket)
            .args(["unlock", "--pin-stdin"]);
        run_stdin(&mut cmd, format!("{CARD_PIN}\n").as_bytes())
    };
    assert_ok(&unlock_opensc, "smime unlock (OpenSC)");
    let mut watch = ResetWatch::new();
    sign_and_verify(&t.agent, &t.card, "native-1");
    sign_and_verify(&opensc, &t.card, "opensc-1");
    let name = run(Command::new("opensc-tool").args(["-r", VIRTUAL_READER, "-n"]));
    assert_ok(&name, "opensc-tool -n");
    sign_and_verify(&t.agent, &t.card, "native-2");
    super::piv::pkcs11_tool_signs(t.card.dir.path(), "01", "9a.pub.pem", "pkcs11-tool --sign");
    sign_and_verify(&opensc, &t.card, "opensc-2");
    sign_and_verify(&t.agent, &t.card, "native-3");
    assert!(
        !watch.was_reset(),
        "the card was reset while the agents and OpenSC's tools shared it"
    );
    assert_eq!(piv_token(&t.agent)["logged_in"], true);
    // yubico-piv-tool resets the card when it exits: the watch sees it, and the native
    // agent opens a fresh connection.
    let status = String::from_utf8_lossy(&t.card.piv_tool(&["-a", "status"]).stdout).into_owned();
    assert!(status.contains("CN=Card Signer"), "{status}");
    assert!(watch.was_reset(), "the watch does not notice a reset");
    sign_and_verify(&t.agent, &t.card, "native-4");
    sign_and_verify(&opensc, &t.card, "opensc-3");
    assert_eq!(piv_token(&t.agent)["logged_in"], true);
}

/// Messages OpenSSL encrypts to the card's RSA key (PKCS#1 v1.5 and OAEP) and EC key
/// (ECDH, CBC and GCM content) decrypt through the native backend.
#[test]
fn openssl_envelopes_decrypt_natively() {
    let t = setup(true);
    let m = master();
    let entity = "Content-Type: text/plain; charset=us-ascii\r\n\r\nfor the card only\r\n";
    std::fs::write(t.p("entity.txt"), entity).unwrap();
    let oaep: &[&str] = &[
        "-keyopt",
        "rsa_padding_mode:oaep",
        "-keyopt",
        "rsa_oaep_md:sha256",
        "-keyopt",
        "rsa_mgf1_md:sha256",
    ];
    let cases: [(&str, &Path, &[&str]); 5] = [
        ("rsa-pkcs1", &m.certs[1], &["-aes-256-cbc"]),
        ("rsa-oaep", &m.certs[1], &["-aes-128-gcm"]),
        ("rsa-oaep-sha1", &m.certs[1], &["-aes-256-cbc"]),
        ("ec-ecdh", &m.certs[2], &["-aes-256-cbc"]),
        ("ec-ecdh-gcm", &m.certs[2], &["-aes-128-gcm"]),
    ];
    for (name, cert, opts) in cases {
        let enc = format!("{name}.p7m");
        let mut args = vec!["cms", "-encrypt", "-in", "entity.txt", "-out", &enc];
        args.extend_from_slice(opts);
        args.extend(["-recip", s(cert)]);
        match name {
            "rsa-oaep" => args.extend_from_slice(oaep),
            "rsa-oaep-sha1" => args.extend(["-keyopt", "rsa_padding_mode:oaep"]),
            _ => {}
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
    // A tampered RSA key transport does not decrypt; the agent answers and stays up.
    let mut der = Vec::new();
    openssl_in(
        t.card.dir.path(),
        &[
            "cms",
            "-encrypt",
            "-in",
            "entity.txt",
            "-outform",
            "DER",
            "-out",
            "t.der",
            "-aes-256-cbc",
            "-recip",
            s(&m.certs[1]),
        ],
    );
    der.extend(std::fs::read(t.p("t.der")).unwrap());
    // The 256-byte encryptedKey sits before the content; flip one of its bytes.
    let pos = der
        .windows(4)
        .position(|w| w == [0x04, 0x82, 0x01, 0x00])
        .expect("encryptedKey OCTET STRING");
    der[pos + 4 + 100] ^= 0x55;
    std::fs::write(t.p("t.der"), &der).unwrap();
    let out = t.p("tampered.dec");
    let r = t
        .agent
        .smime(&["decrypt", "--in", s(&t.p("t.der")), "--out", s(&out)]);
    assert_failed_cleanly(&r, &out, "decrypt a tampered key");
    sign_and_verify(&t.agent, &t.card, "after-tampered");
}

/// A card pulled out mid-session: the next request says "card removed" (exit 3, no
/// output) and the agent stays up; put back, requests work again, same agent process.
#[test]
fn a_removed_card_says_so_and_works_again_when_back() {
    let mut t = setup(true);
    let sig = t.p("sig.p7s");
    assert_ok(&sign_file(&t.agent, &t.card, &sig), "sign before removal");
    std::fs::remove_file(&sig).unwrap();
    let pid = t.agent.pid();
    t.card.remove();
    for _ in 0..2 {
        let out = sign_file(&t.agent, &t.card, &sig);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("card removed"), "{err}");
        assert!(
            out.stdout.is_empty() && !sig.exists(),
            "output despite the failure"
        );
    }
    assert!(t.agent.is_running(), "{}", t.agent.log_text());
    let tok = piv_token(&t.agent);
    assert_eq!(tok["card"]["present"], false, "{tok}");
    assert_eq!(tok["logged_in"], false, "{tok}");
    t.card.insert();
    for n in 0..2 {
        assert_ok(
            &sign_file(&t.agent, &t.card, &sig),
            &format!("sign #{n} after reinsertion"),
        );
    }
    sign_and_verify(&t.agent, &t.card, "reinserted");
    assert_eq!(t.agent.pid(), pid);
    assert!(t.agent.is_running());
    assert_eq!(piv_token(&t.agent)["card"]["present"], true);
}

/// A wrong PIN costs exactly one try (3 → 2, by our status and by yubico-piv-tool), is
/// reported with the tries left, and is never sent again: the next request says a PIN is
/// needed and the count stays. The right PIN then unlocks the card and it signs.
#[test]
fn a_wrong_pin_costs_one_try_and_is_not_retried() {
    let t = setup(false);
    let tok = piv_token(&t.agent);
    assert_eq!(tok["logged_in"], false, "{tok}");
    assert_eq!(tok["card"]["pin_tries_left"], 3, "{tok}");
    assert_eq!(tries_by_piv_tool(&t.card), 3);
    let out = unlock(&t.agent, "000000");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("wrong PIN") && err.contains("2 tries left"),
        "{err}"
    );
    assert_eq!(piv_token(&t.agent)["card"]["pin_tries_left"], 2);
    assert_eq!(piv_token(&t.agent)["pin_state"], "count-low");
    assert_eq!(tries_by_piv_tool(&t.card), 2, "more than one try was spent");
    // No PIN kept, none retried: a request fails and costs nothing.
    let sig = t.p("sig.p7s");
    let out = sign_file(&t.agent, &t.card, &sig);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("PIN_REQUIRED"), "{err}");
    assert!(!sig.exists(), "output despite the failure");
    assert_eq!(tries_by_piv_tool(&t.card), 2, "a PIN was sent again");
    assert_eq!(piv_token(&t.agent)["card"]["pin_tries_left"], 2);
    assert_ok(
        &unlock(&t.agent, CARD_PIN),
        "smime unlock with the right PIN",
    );
    sign_and_verify(&t.agent, &t.card, "after-unlock");
    // A good PIN resets the count.
    assert_ok(&t.agent.smime(&["lock"]), "smime lock");
    assert_eq!(piv_token(&t.agent)["logged_in"], false);
}

/// Both backends configured for the card (OpenSC loaded, the reader or the serial given
/// to the native backend): each key is listed once, by the native token, and OpenSC's
/// token for that reader is not opened.
#[test]
fn with_both_backends_each_key_is_listed_once() {
    let card = card();
    let token = Token::new();
    let by_serial = format!(
        "modules = [{OPENSC_MODULE:?}]\n[[card]]\nserial = {SERIAL:?}\nbackend = \"native\"\n"
    );
    for (name, config) in [
        ("by reader", native_config(&[OPENSC_MODULE])),
        ("by serial", by_serial),
    ] {
        let agent = Agent::start_with(
            &token,
            AgentOptions {
                config: Some(config),
                pin_file: Some(Some(card.pin_file())),
                ..Default::default()
            },
        );
        let out = agent.smime(&["keys", "--json"]);
        assert_ok(&out, "smime keys --json");
        let keys: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(keys.len(), 3, "{name}: {keys:#?}");
        for (slot, _, _, email) in [SIGNER, RSA_KM, EC_KM] {
            let with_email: Vec<_> = keys
                .iter()
                .filter(|k| k["emails"].as_array().unwrap().iter().any(|e| e == email))
                .collect();
            assert_eq!(with_email.len(), 1, "{name}: {email} in {keys:#?}");
            assert_eq!(with_email[0]["id"], format!("{SERIAL}:{slot}"), "{name}");
        }
        let st = status(&agent);
        let tokens = st["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 1, "{name}: {st:#}");
        assert_eq!(tokens[0]["module"], "native PIV", "{name}");
        assert!(
            st["agent"]["modules"][0]["loaded"] == true,
            "{name}: OpenSC is loaded: {st:#}"
        );
        sign_and_verify(&agent, &card, &format!("both-{}", name.replace(' ', "-")));
        drop(agent);
    }
}

/// Every signature scheme the backend builds on the host or gets from the card, judged
/// by `openssl cms -verify`: RSA PKCS#1 v1.5 (SHA-256, SHA-512) and RSA-PSS with the 9d
/// key, ECDSA P-384 (a key put in retired slot 83 here), and the digital-signature slot
/// 9c, which wants the PIN before every use (`always_auth = "cached-pin"` lets the agent
/// give it the configured PIN; without it the agent refuses). ECDH on P-384 decrypts.
#[test]
fn rsa_pkcs1_pss_p384_and_the_9c_slot_sign_natively() {
    let card = card();
    let m = master();
    let p384 = card.provision(
        &m.ca,
        "83",
        "ECCP384",
        "Card P-384",
        "card-p384@example.org",
    );
    let _sig9c = card.provision(&m.ca, "9c", "ECCP256", "Card 9c", "card-9c@example.org");
    let token = Token::new();
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            config: Some(format!(
                "always_auth = \"cached-pin\"\n{}",
                native_config(&[])
            )),
            pin_file: Some(Some(card.pin_file())),
            ..Default::default()
        },
    );
    let data = card.file("data.txt");
    std::fs::write(&data, b"signed by the card, natively\n").unwrap();
    let cases: [(&str, &str, &[&str], &str); 6] = [
        ("rsa-pkcs1-sha256", RSA_KM.3, &[], "sha256WithRSAEncryption"),
        (
            "rsa-pkcs1-sha512",
            RSA_KM.3,
            &["--digest", "sha512"],
            "sha512WithRSAEncryption",
        ),
        ("rsa-pss", RSA_KM.3, &["--pss"], "rsassaPss"),
        (
            "p384",
            "card-p384@example.org",
            &["--digest", "sha384"],
            "ecdsa-with-SHA384",
        ),
        (
            "p256-sha512",
            SIGNER.3,
            &["--digest", "sha512"],
            "ecdsa-with-SHA512",
        ),
        ("9c", "card-9c@example.org", &[], "ecdsa-with-SHA256"),
    ];
    for (name, key, extra, alg) in cases {
        let sig = card.file(&format!("{name}.p7s"));
        let mut args = vec!["--outform", "DER"];
        args.extend_from_slice(extra);
        assert_ok(
            &agent.sign(key, &data, &sig, &args),
            &format!("smime sign ({name})"),
        );
        assert_ok(
            &smime_tests::openssl_verify(&sig, &data, &m.ca.cert, "DER"),
            &format!("openssl cms -verify ({name})"),
        );
        let print = openssl_in(
            card.dir.path(),
            &["cms", "-cmsout", "-print", "-inform", "DER", "-in", s(&sig)],
        );
        let text = String::from_utf8_lossy(&print.stdout);
        assert!(text.contains(alg), "{name}: want {alg} in {text}");
    }
    // ECDH on P-384.
    std::fs::write(
        card.file("entity.txt"),
        "Content-Type: text/plain\r\n\r\nfor P-384\r\n",
    )
    .unwrap();
    openssl_in(
        card.dir.path(),
        &[
            "cms",
            "-encrypt",
            "-in",
            "entity.txt",
            "-out",
            "p384.p7m",
            "-aes-256-cbc",
            "-recip",
            s(&p384),
        ],
    );
    let out = card.file("p384.dec");
    assert_ok(
        &agent.smime(&[
            "decrypt",
            "--in",
            s(&card.file("p384.p7m")),
            "--out",
            s(&out),
        ]),
        "smime decrypt (ECDH P-384)",
    );
    assert!(
        String::from_utf8(std::fs::read(&out).unwrap())
            .unwrap()
            .contains("for P-384")
    );
    drop(agent);
    // The default policy asks for the PIN per use through pinentry; with none, the 9c key
    // is refused and nothing is signed.
    let strict = native_agent(&token, &card, true, &[]);
    let sig = card.file("9c-strict.p7s");
    let r = strict.sign("card-9c@example.org", &data, &sig, &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_ne!(r.status.code(), Some(0), "{err}");
    assert!(err.contains("needs the PIN for every use"), "{err}");
    assert!(!sig.exists(), "output despite the failure");
}

/// A card that is not in its reader when the agent starts is found when it is inserted
/// (PC/SC card event, no restart), logged in with the configured PIN, and signs.
#[test]
fn a_card_inserted_after_the_agent_started_is_found() {
    let mut card = card();
    card.remove();
    let token = Token::new();
    let agent = native_agent(&token, &card, true, &[]);
    let keys = |agent: &Agent| {
        let out = agent.smime(&["keys", "--json"]);
        assert_ok(&out, "smime keys --json");
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .len()
    };
    assert_eq!(keys(&agent), 0);
    card.insert();
    let start = std::time::Instant::now();
    while keys(&agent) < 3 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "the inserted card was not found: {}",
            agent.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(keys(&agent), 3);
    let sig = card.file("later.p7s");
    let out = sign_file(&agent, &card, &sig);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log_text()
    );
    sign_and_verify(&agent, &card, "inserted-later");
}

/// A native card that hangs (its process stopped with SIGSTOP, so the reader never
/// answers) holds up only its own requests: a SoftHSM token in the same agent signs
/// at once, `smime status` answers, and when the card wakes up its request completes.
#[test]
fn a_hung_card_holds_up_only_its_own_requests() {
    let card = card();
    let token = Token::new();
    let config = format!(
        "pin_token = \"smime-demo\"\n{}\
         [[token]]\nserial = {SERIAL:?}\npin_source = \"file\"\npin_file = {:?}\n",
        native_config(&[s(&smime_tests::softhsm_module())]),
        s(&card.pin_file()),
    );
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            config: Some(config),
            ..Default::default() // the SoftHSM token's PIN file
        },
    );
    sign_and_verify(&agent, &card, "before-hang");
    let pid = card.pivemu_pid().expect("the card is in").to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success(), "kill {sig}");
    };
    signal("-STOP");
    // A native request now waits for the card.
    let mut hung = {
        let data = card.file("hung.txt");
        std::fs::write(&data, b"waits for the card").unwrap();
        Command::new(smime_tests::built("smime"))
            .env("SMIME_AGENT_SOCK", &agent.socket)
            .args(["sign", "--key", SIGNER.3, "--in", s(&data), "--out"])
            .arg(card.file("hung.p7s"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let start = std::time::Instant::now();
    let data = card.file("soft.txt");
    std::fs::write(&data, b"signed on SoftHSM while the card hangs").unwrap();
    let sig = card.file("soft.p7s");
    let r = agent.sign("bob@example.org", &data, &sig, &[]);
    let soft = start.elapsed();
    let st = agent.smime(&["status", "--json"]);
    let both = start.elapsed();
    let still_hung = hung.try_wait().unwrap().is_none();
    signal("-CONT");
    assert_ok(&r, "SoftHSM sign while the card hangs");
    assert_ok(
        &smime_tests::openssl_verify(&sig, &data, &token.file("ca.pem"), "DER"),
        "openssl cms -verify (SoftHSM)",
    );
    assert_ok(&st, "smime status while the card hangs");
    assert!(still_hung, "the card request did not wait for the card");
    assert!(
        soft < std::time::Duration::from_secs(5) && both < std::time::Duration::from_secs(8),
        "held up by the hung card: sign {soft:?}, sign + status {both:?}"
    );
    let out = hung.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the card request after the card woke up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ok(
        &smime_tests::openssl_verify(
            &card.file("hung.p7s"),
            &card.file("hung.txt"),
            &master().ca.cert,
            "DER",
        ),
        "openssl cms -verify (the card's delayed signature)",
    );
}

/// Another application (this test, over PC/SC) selects another applet of the card (a
/// YubiKey's OTP applet; the virtual card then forgets the verified PIN, as a YubiKey
/// does).
/// The native agent opens a fresh connection, selects PIV again and verifies the PIN
/// again only if it may keep it: with a configured PIN the request works; an agent
/// unlocked by a PIN a client sent says a PIN is needed and sends none (the tries stay).
/// Nobody resets the card meanwhile.
#[test]
fn another_applet_selected_in_between() {
    let t = setup(true);
    let client_unlocked = native_agent(&t._token, &t.card, false, &[]);
    assert_ok(&unlock(&client_unlocked, CARD_PIN), "smime unlock");
    let mut watch = ResetWatch::new();
    sign_and_verify(&t.agent, &t.card, "kept-before");
    sign_and_verify(&client_unlocked, &t.card, "client-before");
    let select_otp = |watch: &mut ResetWatch| {
        let answers = watch.send(&[
            &[
                0x00, 0xA4, 0x04, 0x00, 0x07, 0xA0, 0x00, 0x00, 0x05, 0x27, 0x20, 0x01,
            ],
            // GET DATA (discovery object): a PIV command, no longer understood.
            &[0x00, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x00],
        ]);
        assert_eq!(answers[0], [0x90, 0x00], "select the OTP applet");
        assert_eq!(answers[1], [0x6D, 0x00], "PIV is still selected");
    };
    select_otp(&mut watch);
    let sig = t.p("client.p7s");
    let out = sign_file(&client_unlocked, &t.card, &sig);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("PIN_REQUIRED"), "{err}");
    assert!(!sig.exists());
    let tok = piv_token(&client_unlocked);
    assert_eq!(tok["card"]["pin_tries_left"], 3, "a PIN was sent: {tok}");
    assert_eq!(tok["logged_in"], false, "{tok}");
    select_otp(&mut watch);
    sign_and_verify(&t.agent, &t.card, "kept-after");
    assert!(
        t.agent.log_text().contains("answers for another applet"),
        "{}",
        t.agent.log_text()
    );
    assert_ok(&unlock(&client_unlocked, CARD_PIN), "smime unlock again");
    sign_and_verify(&client_unlocked, &t.card, "client-after");
    assert!(!watch.was_reset(), "the card was reset");
}

/// The final try needs the user's consent, and a card whose PIN is locked says so and
/// names the PUK: two wrong PINs (3 → 1), the third is refused without
/// `--confirm-final-try` (nothing sent: still 1 by yubico-piv-tool), sent with it, and
/// the card is locked (0 by our status and by yubico-piv-tool); the right PIN is then
/// refused without being sent.
#[test]
fn the_final_try_needs_consent_and_a_locked_pin_names_the_puk() {
    let mut t = setup(false);
    for left in [2, 1] {
        let out = unlock(&t.agent, "000000");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{left} tries left")), "{err}");
    }
    assert_eq!(piv_token(&t.agent)["pin_state"], "final-try");
    let out = unlock(&t.agent, "000000");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("final try"), "{err}");
    assert_eq!(
        tries_by_piv_tool(&t.card),
        1,
        "the final try was spent unasked"
    );
    let confirmed = {
        let mut cmd = Command::new(smime_tests::built("smime"));
        cmd.env("SMIME_AGENT_SOCK", &t.agent.socket).args([
            "unlock",
            "--token",
            SERIAL,
            "--pin-stdin",
            "--confirm-final-try",
        ]);
        run_stdin(&mut cmd, b"000000\n")
    };
    let err = String::from_utf8_lossy(&confirmed.stderr);
    assert_eq!(confirmed.status.code(), Some(3), "{err}");
    assert!(err.contains("locked") && err.contains("PUK"), "{err}");
    let tok = piv_token(&t.agent);
    assert_eq!(tok["pin_state"], "locked", "{tok}");
    assert_eq!(tok["card"]["pin_tries_left"], 0, "{tok}");
    assert_eq!(tries_by_piv_tool(&t.card), 0);
    let out = unlock(&t.agent, CARD_PIN);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("PUK"), "{err}");
    assert!(t.agent.is_running(), "{}", t.agent.log_text());
}

/// A card pulled out while a request waits on it (the card hangs, then goes): that
/// request fails with "card removed" (exit 3, no output); put back, requests work.
#[test]
fn a_request_in_flight_when_the_card_goes_fails_with_card_removed() {
    let mut t = setup(true);
    sign_and_verify(&t.agent, &t.card, "before");
    let pid = t.card.pivemu_pid().expect("the card is in").to_string();
    let st = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(st.success());
    let data = t.p("inflight.txt");
    std::fs::write(&data, b"in flight").unwrap();
    let sig = t.p("inflight.p7s");
    let inflight = Command::new(smime_tests::built("smime"))
        .env("SMIME_AGENT_SOCK", &t.agent.socket)
        .args([
            "sign",
            "--key",
            SIGNER.3,
            "--in",
            s(&data),
            "--out",
            s(&sig),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    t.card.remove(); // SIGKILL ends the stopped card
    let out = inflight.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}\n{}", t.agent.log_text());
    assert!(err.contains("card removed"), "{err}");
    assert!(
        out.stdout.is_empty() && !sig.exists(),
        "output despite the failure"
    );
    assert!(t.agent.is_running());
    t.card.insert();
    sign_and_verify(&t.agent, &t.card, "after");
}
