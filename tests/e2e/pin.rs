//! PINs beyond the plain login, through the fault-injecting module (p11-count) and the
//! scripted pinentry: always-authenticate keys under both policies, per-token settings
//! from config.toml, PIN pads, confirmation before signing, a hanging token beside a
//! working one, and configuration reload on SIGHUP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use smime::agent::AgentClient;
use smime_proto::{Request, Response, SignAlgorithm, TokenStatus};
use smime_tests::{Agent, AgentOptions, Token, assert_ok, built, openssl_verify, run};

/// Writes the fault module's control file atomically (it is read by inode and mtime).
fn control(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn pinentry_program() -> String {
    smime_tests::root()
        .join("tests/support/pinentry-test")
        .display()
        .to_string()
}

/// The environment of p11-count and the scripted pinentry, with their logs in `dir`.
fn fault_env(token: &Token, dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "P11_COUNT_MODULE".to_owned(),
            smime_tests::softhsm_module().display().to_string(),
        ),
        (
            "P11_COUNT_LOG".to_owned(),
            dir.join("logins").display().to_string(),
        ),
        (
            "P11_COUNT_CONTROL".to_owned(),
            dir.join("control").display().to_string(),
        ),
        (
            "PINENTRY_TEST_LOG".to_owned(),
            dir.join("dialogs").display().to_string(),
        ),
        ("PINENTRY_TEST_PIN".to_owned(), token.pin()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// An agent on p11-count with `control` in force, no configured PIN, and the scripted
/// pinentry; `args` go to the agent.
fn agent_with(token: &Token, dir: &Path, ctl: &str, env: &[(&str, &str)], args: &[&str]) -> Agent {
    control(&dir.join("control"), ctl);
    let mut all_args = vec!["--pinentry".to_owned(), pinentry_program()];
    all_args.extend(args.iter().map(|a| (*a).to_owned()));
    Agent::start_with(
        token,
        AgentOptions {
            module: Some(built("libp11_count.so")),
            pin_file: Some(None),
            env: fault_env(token, dir, env),
            args: all_args,
            ..Default::default()
        },
    )
}

/// An agent on p11-count configured by `config` (a config.toml body after `modules`).
fn agent_with_config(
    token: &Token,
    dir: &Path,
    ctl: &str,
    env: &[(&str, &str)],
    config: &str,
) -> Agent {
    control(&dir.join("control"), ctl);
    let text = format!(
        "modules = [\"{}\"]\npinentry = \"{}\"\n{config}",
        built("libp11_count.so").display(),
        pinentry_program()
    );
    Agent::start_with(
        token,
        AgentOptions {
            pin_file: Some(None),
            env: fault_env(token, dir, env),
            config: Some(text),
            ..Default::default()
        },
    )
}

/// Signs `data` with `key` into `dir/name`; returns the output and the signature path.
fn sign(agent: &Agent, dir: &Path, key: &str, name: &str) -> (std::process::Output, PathBuf) {
    let data = dir.join("data");
    if !data.exists() {
        std::fs::write(&data, b"a message worth a PIN").unwrap();
    }
    let sig = dir.join(name);
    (agent.sign(key, &data, &sig, &[]), sig)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn verify_with_openssl(token: &Token, dir: &Path, sig: &Path) {
    assert_ok(
        &openssl_verify(sig, &dir.join("data"), &token.file("ca.pem"), "DER"),
        "openssl cms -verify",
    );
}

/// CKU_USER and CKU_CONTEXT_SPECIFIC logins recorded by p11-count.
fn logins(dir: &Path) -> (usize, usize) {
    let log = dir.join("logins");
    (
        count_lines(&log, "user_type=1 rv=0x0"),
        count_lines(&log, "user_type=2 rv=0x0"),
    )
}

#[test]
fn always_authenticate_key_asks_for_the_pin_before_every_signature() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = agent_with(&token, d, "always_authenticate=01\n", &[], &[]);
    // First use: one dialog; the PIN typed for the login also serves the context login.
    let (out, sig) = sign(&agent, d, "alice-rsa", "s1");
    assert_ok(&out, "first signature");
    verify_with_openssl(&token, d, &sig);
    assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), 1);
    assert_eq!(logins(d), (1, 1));
    // Every further signature asks again and logs in for that operation only.
    for n in 2..=3 {
        let (out, sig) = sign(&agent, d, "alice-rsa", &format!("s{n}"));
        assert_ok(&out, "signature with a context login");
        verify_with_openssl(&token, d, &sig);
        assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), n);
        assert_eq!(logins(d), (1, n));
    }
    let dialogs = std::fs::read_to_string(d.join("dialogs")).unwrap();
    assert!(dialogs.contains("every use"), "{dialogs}");
    assert!(!dialogs.contains(&token.pin()));
    // A key without the attribute needs no dialog and no context login.
    let (out, _) = sign(&agent, d, "alice-ec", "e1");
    assert_ok(&out, "ordinary key");
    assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), 3);
    assert_eq!(logins(d), (1, 3));
}

#[test]
fn always_authenticate_with_cached_pin_reuses_the_unlock_pin() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = agent_with(
        &token,
        d,
        "always_authenticate=01\n",
        &[],
        &["--always-auth", "cached-pin"],
    );
    for n in 1..=3 {
        let (out, sig) = sign(&agent, d, "alice-rsa", &format!("s{n}"));
        assert_ok(&out, "signature with the cached PIN");
        verify_with_openssl(&token, d, &sig);
        assert_eq!(logins(d), (1, n));
    }
    assert_eq!(
        count_lines(&d.join("dialogs"), "GETPIN"),
        1,
        "one dialog, for the login"
    );
    // Decryption takes the same context login (C_DecryptInit, login, C_Decrypt).
    std::fs::write(d.join("secret.txt"), b"for alice only\n").unwrap();
    let recip = token.file("alice-rsa.pem");
    smime_tests::openssl_in(
        d,
        &[
            "cms",
            "-encrypt",
            "-binary",
            "-aes-128-cbc",
            "-in",
            "secret.txt",
            "-outform",
            "DER",
            "-out",
            "secret.p7m",
            "-recip",
            recip.to_str().unwrap(),
        ],
    );
    let plain = d.join("secret.out");
    let out = agent.smime(&[
        "decrypt",
        "--in",
        d.join("secret.p7m").to_str().unwrap(),
        "--out",
        plain.to_str().unwrap(),
    ]);
    assert_ok(&out, "smime decrypt with an always-authenticate key");
    assert_eq!(std::fs::read(&plain).unwrap(), b"for alice only\n");
    assert_eq!(logins(d), (1, 4));
    // `smime lock` forgets the cached PIN with the login: the next use asks again.
    assert_ok(&agent.smime(&["lock"]), "smime lock");
    let (out, _) = sign(&agent, d, "alice-rsa", "s4");
    assert_ok(&out, "after lock");
    assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), 2);
}

#[test]
fn a_rejected_context_pin_is_never_retried() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = agent_with(
        &token,
        d,
        "always_authenticate=01\n",
        &[],
        &["--always-auth", "cached-pin"],
    );
    let (out, _) = sign(&agent, d, "alice-rsa", "s1");
    assert_ok(&out, "first signature");
    // The token rejects the next login (the cached PIN at the context login).
    control(
        &d.join("control"),
        "always_authenticate=01\nfail_login_once=a0\n",
    );
    let (out, sig) = sign(&agent, d, "alice-rsa", "s2");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong PIN"), "{}", stderr(&out));
    assert!(!sig.exists());
    let tried = count_lines(&d.join("logins"), "user_type=2");
    assert_eq!(tried, 2, "one good, one rejected context login, no retry");
    // The rejected PIN is not sent again: the next signature asks the user.
    let (out, _) = sign(&agent, d, "alice-rsa", "s3");
    assert_ok(&out, "after asking again");
    assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), 2);
    assert_eq!(count_lines(&d.join("logins"), "user_type=2"), 3);
}

/// Encrypts `text` with `openssl cms -encrypt` to the token's EC certificate (ECDH key
/// agreement) into `dir/name`.
fn encrypt_to_ec(token: &Token, dir: &Path, name: &str, text: &[u8]) -> PathBuf {
    let plain = dir.join(format!("{name}.txt"));
    std::fs::write(&plain, text).unwrap();
    let recip = token.file("alice-ec.pem");
    smime_tests::openssl_in(
        dir,
        &[
            "cms",
            "-encrypt",
            "-binary",
            "-aes-256-cbc",
            "-in",
            plain.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            &format!("{name}.p7m"),
            "-recip",
            recip.to_str().unwrap(),
        ],
    );
    dir.join(format!("{name}.p7m"))
}

/// `smime decrypt` of `dir/name.p7m` into `dir/name.out`.
fn decrypt(agent: &Agent, dir: &Path, name: &str) -> (std::process::Output, PathBuf) {
    let out = dir.join(format!("{name}.out"));
    let r = agent.smime(&[
        "decrypt",
        "--in",
        dir.join(format!("{name}.p7m")).to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    (r, out)
}

#[test]
fn ecdh_with_an_always_authenticate_key_asks_for_the_pin_every_time() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // CKA_ID 02 is alice-ec; p11-count refuses its C_DeriveKey without a context login.
    let agent = agent_with(&token, d, "always_authenticate=02\n", &[], &[]);
    for n in 1..=3 {
        let name = format!("m{n}");
        let text = format!("key agreement number {n}\n");
        encrypt_to_ec(&token, d, &name, text.as_bytes());
        let (out, plain) = decrypt(&agent, d, &name);
        assert_ok(&out, "smime decrypt (ECDH) with an always-authenticate key");
        assert_eq!(std::fs::read(&plain).unwrap(), text.as_bytes());
        // One dialog per decryption (the first one's PIN also logs in), one context
        // login right before each C_DeriveKey.
        assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), n);
        assert_eq!(logins(d), (1, n));
    }
    let dialogs = std::fs::read_to_string(d.join("dialogs")).unwrap();
    assert!(dialogs.contains("key agreement"), "{dialogs}");
    assert!(!dialogs.contains(&token.pin()));
    // The module really wants those context logins: pkcs11-tool (which logs in but
    // does no context login before C_DeriveKey) is refused with USER_NOT_LOGGED_IN.
    smime_tests::openssl_in(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "peer.key",
        ],
    );
    smime_tests::openssl_in(
        d,
        &[
            "ec", "-in", "peer.key", "-pubout", "-outform", "DER", "-out", "peer.der",
        ],
    );
    let derive = |ctl: &str| {
        control(&d.join("control"), ctl);
        let mut cmd = Command::new("pkcs11-tool");
        cmd.args(["--module", built("libp11_count.so").to_str().unwrap()])
            .args([
                "--login",
                "--pin",
                &token.pin(),
                "--derive",
                "-m",
                "ECDH1-DERIVE",
            ])
            .args(["--id", "02", "-i", "peer.der", "-o", "z.bin"])
            .current_dir(d)
            .env("SOFTHSM2_CONF", token.file("softhsm2.conf"));
        for (k, v) in fault_env(&token, d, &[]) {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    let out = derive("always_authenticate=02\n");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("CKR_USER_NOT_LOGGED_IN"),
        "{}",
        stderr(&out)
    );
    assert_ok(&derive(""), "pkcs11-tool --derive on an ordinary key");
}

#[test]
fn ecdh_with_an_always_authenticate_key_and_cached_pin() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = agent_with(
        &token,
        d,
        "always_authenticate=02\n",
        &[],
        &["--always-auth", "cached-pin"],
    );
    for n in 1..=3 {
        let name = format!("m{n}");
        let text = format!("cached key agreement {n}\n");
        encrypt_to_ec(&token, d, &name, text.as_bytes());
        let (out, plain) = decrypt(&agent, d, &name);
        assert_ok(&out, "smime decrypt (ECDH) with the cached PIN");
        assert_eq!(std::fs::read(&plain).unwrap(), text.as_bytes());
        assert_eq!(logins(d), (1, n));
    }
    assert_eq!(
        count_lines(&d.join("dialogs"), "GETPIN"),
        1,
        "one dialog, for the login"
    );
}

#[test]
fn a_rejected_context_pin_for_ecdh_is_never_retried() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = agent_with(
        &token,
        d,
        "always_authenticate=02\n",
        &[],
        &["--always-auth", "cached-pin"],
    );
    encrypt_to_ec(&token, d, "m1", b"first\n");
    let (out, _) = decrypt(&agent, d, "m1");
    assert_ok(&out, "first decryption");
    // The token rejects the next login: the cached PIN at the context login.
    control(
        &d.join("control"),
        "always_authenticate=02\nfail_login_once=a0\n",
    );
    encrypt_to_ec(&token, d, "m2", b"second\n");
    let (out, plain) = decrypt(&agent, d, "m2");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong PIN"), "{}", stderr(&out));
    assert!(!plain.exists(), "no partial output");
    assert_eq!(
        count_lines(&d.join("logins"), "user_type=2"),
        2,
        "one good, one rejected context login, no retry"
    );
    // The rejected PIN is not sent again: the next decryption asks the user.
    let (out, plain) = decrypt(&agent, d, "m2");
    assert_ok(&out, "after asking again");
    assert_eq!(std::fs::read(&plain).unwrap(), b"second\n");
    assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), 2);
    assert_eq!(count_lines(&d.join("logins"), "user_type=2"), 3);
}

#[test]
fn token_tables_choose_pin_source_per_token() {
    let token = Token::new();
    // pin_source = "client": the agent never prompts, even with pinentry configured.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = agent_with_config(
        &token,
        d,
        "",
        &[],
        "[[token]]\nlabel = \"smime-demo\"\npin_source = \"client\"\n",
    );
    let (out, _) = sign(&agent, d, "alice-ec", "s");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("smime unlock"), "{}", stderr(&out));
    assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), 0);
    assert_eq!(count_lines(&d.join("logins"), "C_Login"), 0);
    drop(agent);
    // pin_source = "file", matched by serial, holding no PIN (cache = "login-only").
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let serial = {
        let a = Agent::start(&token);
        let mut c = AgentClient::connect(&a.socket).unwrap();
        c.list_keys().unwrap()[0].token_serial.clone()
    };
    let agent = agent_with_config(
        &token,
        d,
        "",
        &[],
        &format!(
            "[[token]]\nserial = \"{serial}\"\npin_source = \"file\"\npin_file = \"{}\"\ncache = \"login-only\"\n",
            token.file("pin").display()
        ),
    );
    let (out, sig) = sign(&agent, d, "alice-rsa", "s");
    assert_ok(&out, "PIN from the token's file");
    verify_with_openssl(&token, d, &sig);
    assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), 0);
    assert_eq!(logins(d), (1, 0));
}

#[test]
fn a_pin_pad_reader_logs_in_without_a_pin() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The keypad takes 2 s to "type" on; no pinentry, no PIN file.
    control(&d.join("control"), "protected_auth_path=1\ndelay_ms=2000\n");
    let pin = token.pin();
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            module: Some(built("libp11_count.so")),
            pin_file: Some(None),
            env: fault_env(&token, d, &[("P11_COUNT_PINPAD_PIN", pin.as_str())]),
            ..Default::default()
        },
    );
    let status = agent.smime(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("PIN pad"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let signer = {
        let socket = agent.socket.clone();
        std::thread::spawn(move || {
            let mut c = AgentClient::connect(&socket).unwrap();
            let k = c
                .list_keys()
                .unwrap()
                .into_iter()
                .find(|k| k.label == "alice-ec")
                .unwrap();
            c.sign(&k.id, SignAlgorithm::EcdsaSha256, &[7; 32])
        })
    };
    // While the reader waits for the keypad, status says so.
    let seen = wait_for_status(&agent.socket, Duration::from_secs(2), |t| {
        t.waiting.as_deref().is_some_and(|w| w.contains("keypad"))
    });
    assert!(seen.is_some(), "{}", agent.log_text());
    let sig = signer.join().unwrap().unwrap();
    assert_eq!(sig[0], 0x30);
    let log = std::fs::read_to_string(d.join("logins")).unwrap();
    assert_eq!(count_lines(&d.join("logins"), "pinpad"), 1, "{log}");
    assert_eq!(count_lines(&d.join("logins"), "C_Login"), 1, "{log}");
    assert!(agent.log_text().contains("keypad"));
}

#[test]
fn a_wrong_pin_on_the_pin_pad_is_reported_once() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    control(&d.join("control"), "protected_auth_path=1\n");
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            module: Some(built("libp11_count.so")),
            pin_file: Some(None),
            env: fault_env(&token, d, &[("P11_COUNT_PINPAD_PIN", "000000")]),
            ..Default::default()
        },
    );
    let (out, sig) = sign(&agent, d, "alice-ec", "s");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong PIN"), "{}", stderr(&out));
    assert!(!sig.exists());
    assert_eq!(count_lines(&d.join("logins"), "C_Login"), 1);
}

/// Polls `status` on a fresh connection until a token satisfies `pred`.
fn wait_for_status(
    socket: &Path,
    within: Duration,
    pred: impl Fn(&TokenStatus) -> bool,
) -> Option<TokenStatus> {
    let start = Instant::now();
    let mut c = AgentClient::connect(socket).unwrap();
    while start.elapsed() < within {
        let Response::Status { tokens, .. } = c.request(&Request::Status).unwrap() else {
            panic!("not a status response");
        };
        if let Some(t) = tokens.into_iter().find(&pred) {
            return Some(t);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn signing_asks_for_confirmation_on_high_assurance_keys() {
    let token = Token::new();
    let config = "[[token]]\nlabel = \"smime-demo\"\nconfirm_sign = [\"alice-rsa\"]\n";
    // Declined: a distinct error, no signature, and no PIN asked or sent.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = agent_with_config(&token, d, "", &[("PINENTRY_TEST_CONFIRM", "0")], config);
    let (out, sig) = sign(&agent, d, "alice-rsa", "s");
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("not confirmed"), "{}", stderr(&out));
    assert!(!sig.exists());
    assert_eq!(count_lines(&d.join("dialogs"), "CONFIRM"), 1);
    assert_eq!(count_lines(&d.join("logins"), "C_Login"), 0);
    let mut c = AgentClient::connect(&agent.socket).unwrap();
    let rsa = c
        .list_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.label == "alice-rsa")
        .unwrap();
    let err = c
        .sign(&rsa.id, SignAlgorithm::RsaPkcs1Sha256, &[1; 32])
        .unwrap_err();
    assert!(
        format!("{err}").contains("CONFIRMATION_DECLINED"),
        "{err:?}"
    );
    // Keys not listed sign without a dialog.
    let (out, _) = sign(&agent, d, "alice-ec", "e");
    assert_ok(&out, "unlisted key");
    assert_eq!(count_lines(&d.join("dialogs"), "CONFIRM"), 2);
    drop(agent);
    // Confirmed: every signature asks.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = agent_with_config(&token, d, "", &[("PINENTRY_TEST_CONFIRM", "1")], config);
    for n in 1..=2 {
        let (out, sig) = sign(&agent, d, "alice-rsa", &format!("s{n}"));
        assert_ok(&out, "confirmed signature");
        verify_with_openssl(&token, d, &sig);
        assert_eq!(count_lines(&d.join("dialogs"), "CONFIRM"), n);
    }
    let dialogs = std::fs::read_to_string(d.join("dialogs")).unwrap();
    assert!(
        dialogs.contains("alice-rsa") && dialogs.contains("smime (pid"),
        "{dialogs}"
    );
}

/// Adds a second token (label `second`, PIN 5678, one P-256 key `bob-ec`) beside the
/// provisioned one.
fn add_second_token(token: &Token) {
    let conf = token.file("softhsm2.conf");
    assert_ok(
        &run(Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "second"])
            .args(["--so-pin", "87654321", "--pin", "5678"])
            .env("SOFTHSM2_CONF", &conf)),
        "softhsm2-util --init-token",
    );
    assert_ok(
        &run(Command::new("pkcs11-tool")
            .arg("--module")
            .arg(smime_tests::softhsm_module())
            .args(["--token-label", "second", "--login", "--pin", "5678"])
            .args(["--keypairgen", "--key-type", "EC:prime256v1"])
            .args(["--id", "09", "--label", "bob-ec"])
            .env("SOFTHSM2_CONF", &conf)),
        "pkcs11-tool --keypairgen",
    );
}

#[test]
fn a_hanging_token_does_not_hold_up_another() {
    let token = Token::new();
    add_second_token(&token);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One module, two tokens, each with its own PIN source; smime-demo "waits for touch".
    let config = format!(
        "[[token]]\nlabel = \"smime-demo\"\npin_source = \"file\"\npin_file = \"{}\"\n\
         [[token]]\nlabel = \"second\"\npin_source = \"env\"\npin_env = \"SECOND_PIN\"\n",
        token.file("pin").display()
    );
    let agent = agent_with_config(
        &token,
        d,
        "delay_ms=6000\ndelay_token=smime-demo\n",
        &[("SECOND_PIN", "5678")],
        &config,
    );
    let mut c = AgentClient::connect(&agent.socket).unwrap();
    let keys = c.list_keys().unwrap();
    let alice = keys.iter().find(|k| k.label == "alice-ec").unwrap().clone();
    let bob = keys.iter().find(|k| k.label == "bob-ec").unwrap().clone();
    // Log both tokens in first (a quick signature on the second token).
    assert_eq!(
        c.sign(&bob.id, SignAlgorithm::EcdsaSha256, &[1; 32])
            .unwrap()[0],
        0x30
    );
    // As many slow signatures as the token has sessions (2): every worker hangs.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (socket, alice) = (agent.socket.clone(), alice.clone());
            std::thread::spawn(move || {
                let mut c = AgentClient::connect(&socket).unwrap();
                let start = Instant::now();
                let r = c.sign(&alice.id, SignAlgorithm::EcdsaSha256, &[2; 32]);
                (r, start.elapsed())
            })
        })
        .collect();
    // Status shows the first token waiting, and answers at once while it hangs.
    let waiting = wait_for_status(&agent.socket, Duration::from_secs(4), |t| {
        t.label == "smime-demo" && t.waiting.is_some()
    })
    .expect("smime-demo shown as waiting");
    assert!(
        waiting.waiting.unwrap().contains("touch"),
        "{}",
        agent.log_text()
    );
    let start = Instant::now();
    let out = agent.smime(&["status"]);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        start.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("busy: waiting"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The other token serves promptly meanwhile.
    for _ in 0..5 {
        let start = Instant::now();
        let sig = c
            .sign(&bob.id, SignAlgorithm::EcdsaSha256, &[3; 32])
            .unwrap();
        assert_eq!(sig[0], 0x30);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "second token took {:?} while the first hung",
            start.elapsed()
        );
    }
    assert!(
        slow.iter().all(|t| !t.is_finished()),
        "the slow signatures were not slow"
    );
    for t in slow {
        let (r, took) = t.join().unwrap();
        assert_eq!(r.unwrap()[0], 0x30);
        assert!(took >= Duration::from_secs(5), "{took:?}");
    }
    // Done: no longer waiting.
    let idle = wait_for_status(&agent.socket, Duration::from_secs(2), |t| {
        t.label == "smime-demo" && t.waiting.is_none()
    });
    assert!(idle.is_some());
}

#[test]
fn sighup_reloads_the_module_list_and_keeps_connections() {
    let token = Token::new();
    let module = smime_tests::softhsm_module();
    let missing = "/nonexistent/missing-pkcs11.so";
    let cfg = |mods: &[&str]| {
        let list: Vec<String> = mods.iter().map(|m| format!("\"{m}\"")).collect();
        format!("modules = [{}]\n", list.join(", "))
    };
    let module_s = module.display().to_string();
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            config: Some(cfg(&[&module_s])),
            ..Default::default()
        },
    );
    let mut c = AgentClient::connect(&agent.socket).unwrap();
    assert_eq!(c.list_keys().unwrap().len(), 3);
    let status = |c: &mut AgentClient| match c.request(&Request::Status).unwrap() {
        Response::Status { tokens, agent } => (tokens.len(), agent.unwrap().modules),
        r => panic!("{r:?}"),
    };
    let wait = |c: &mut AgentClient, want: usize| {
        for _ in 0..100 {
            let (_, mods) = status(c);
            if mods.len() == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("reload not applied: {}", agent.log_text());
    };
    // A module added: loaded (here: reported as failing), the others keep serving.
    agent.reconfigure(&cfg(&[&module_s, missing]));
    wait(&mut c, 2);
    let (tokens, mods) = status(&mut c);
    assert_eq!(tokens, 1);
    assert!(mods[0].loaded && !mods[1].loaded, "{mods:?}");
    assert!(mods[1].error.is_some());
    assert_eq!(c.list_keys().unwrap().len(), 3);
    // The module removed: its token goes, on the same connection.
    agent.reconfigure(&cfg(&[missing]));
    wait(&mut c, 1);
    assert_eq!(status(&mut c).0, 0);
    assert!(c.list_keys().unwrap().is_empty());
    // And back again: loaded afresh, the configured PIN logs in, signing works.
    agent.reconfigure(&cfg(&[&module_s]));
    for _ in 0..100 {
        if c.list_keys().unwrap().len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let keys = c.list_keys().unwrap();
    assert_eq!(keys.len(), 3, "{}", agent.log_text());
    let ec = keys.iter().find(|k| k.label == "alice-ec").unwrap();
    assert_eq!(
        c.sign(&ec.id, SignAlgorithm::EcdsaSha256, &[5; 32])
            .unwrap()[0],
        0x30
    );
    // A broken config file is refused; the agent keeps the one in force.
    agent.reconfigure("modules = [");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.list_keys().unwrap().len(), 3);
    assert!(agent.log_text().contains("configuration not reloaded"));
}

#[test]
fn dropping_a_module_while_its_workers_serve_requests_does_not_hang_the_agent() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

    // A worker that reads a request from its token's lane looks the key up in the
    // keystore's token list. A reload that dropped the module once stopped the token's
    // workers while it held that list locked: a worker that had just taken a request
    // waited for the lock, the reload for the worker, and the agent hung.
    let token = Token::new();
    let module = smime_tests::softhsm_module().display().to_string();
    let missing = "/nonexistent/missing-pkcs11.so";
    let cfg = |m: &str| format!("modules = [\"{m}\"]\n");
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            config: Some(cfg(&module)),
            ..Default::default()
        },
    );
    // A hung agent fails the test in seconds, not after the client's 120 s.
    let connect = || {
        let s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        AgentClient::hello(s).unwrap()
    };
    let mut c = connect();
    let ec = c
        .list_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.label == "alice-ec")
        .unwrap()
        .id;
    let stop = Arc::new(AtomicBool::new(false));
    let signed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (stop, signed, ec) = (stop.clone(), signed.clone(), ec.clone());
            let mut c = connect();
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    // While the module is out the key is unknown: an error, not a hang.
                    match c.sign(&ec, SignAlgorithm::EcdsaSha256, &[5; 32]) {
                        Ok(_) => {
                            signed.fetch_add(1, Relaxed);
                        }
                        Err(smime::agent::AgentError::Agent(_)) => {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => panic!("client: {e}"),
                    }
                }
            })
        })
        .collect();
    let tokens = |c: &mut AgentClient| match c.request(&Request::Status) {
        Ok(Response::Status { tokens, .. }) => tokens.len(),
        r => panic!("status: {r:?}; agent log:\n{}", agent.log_text()),
    };
    // Reloads with `module` as the only module, and waits until `want` tokens are open.
    let reload = |c: &mut AgentClient, module: &str, want: usize, round: usize| {
        agent.reconfigure(&cfg(module));
        let t = Instant::now();
        while tokens(c) != want {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "round {round}: not {want} tokens"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for round in 0..20 {
        // Out while the clients sign through the token's lane, and in again.
        let before = signed.load(Relaxed);
        let t = Instant::now();
        while signed.load(Relaxed) < before + 50 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no signatures in round {round}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        reload(&mut c, missing, 0, round);
        reload(&mut c, &module, 1, round);
    }
    stop.store(true, Relaxed);
    for h in clients {
        h.join().unwrap();
    }
}

#[test]
fn sighup_applies_new_token_settings_to_open_tokens() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = agent_with_config(&token, d, "", &[("PINENTRY_TEST_CONFIRM", "0")], "");
    let (out, _) = sign(&agent, d, "alice-rsa", "s1");
    assert_ok(&out, "no confirmation configured");
    assert_eq!(count_lines(&d.join("dialogs"), "CONFIRM"), 0);
    let mut c = AgentClient::connect(&agent.socket).unwrap();
    // The same token now wants a confirmation for alice-rsa; the user declines.
    let mut text = std::fs::read_to_string(agent.config_file()).unwrap();
    text.push_str("[[token]]\nlabel = \"smime-demo\"\nconfirm_sign = [\"alice-rsa\"]\n");
    agent.reconfigure(&text);
    let mut declined = false;
    for n in 2..40 {
        let (out, sig) = sign(&agent, d, "alice-rsa", &format!("s{n}"));
        if !out.status.success() {
            assert!(stderr(&out).contains("not confirmed"), "{}", stderr(&out));
            assert!(!sig.exists());
            declined = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(declined, "{}", agent.log_text());
    assert_eq!(count_lines(&d.join("dialogs"), "CONFIRM"), 1);
    // Still logged in (one PIN dialog in all), and the connection survived.
    assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), 1);
    assert_eq!(c.list_keys().unwrap().len(), 3);
}

#[test]
fn an_always_authenticate_key_behind_a_pin_pad_uses_the_keypad_every_time() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    control(
        &d.join("control"),
        "protected_auth_path=1\nalways_authenticate=01\n",
    );
    let pin = token.pin();
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            module: Some(built("libp11_count.so")),
            pin_file: Some(None),
            env: fault_env(&token, d, &[("P11_COUNT_PINPAD_PIN", pin.as_str())]),
            ..Default::default()
        },
    );
    for n in 1..=2 {
        let (out, sig) = sign(&agent, d, "alice-rsa", &format!("s{n}"));
        assert_ok(&out, "signature with a keypad context login");
        verify_with_openssl(&token, d, &sig);
    }
    let log = d.join("logins");
    assert_eq!(count_lines(&log, "user_type=1 rv=0x0 pinpad"), 1);
    assert_eq!(count_lines(&log, "user_type=2 rv=0x0 pinpad"), 2);
    assert_eq!(count_lines(&log, "C_Login"), 3);
}

#[test]
fn a_token_table_sets_the_login_ttl() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The agent-wide TTL is an hour; the token's own table says one second.
    let agent = agent_with_config(
        &token,
        d,
        "",
        &[],
        "cache_ttl = 3600\n[[token]]\nlabel = \"smime-demo\"\ncache_ttl = 1\n",
    );
    let (out, _) = sign(&agent, d, "alice-ec", "s1");
    assert_ok(&out, "first signature");
    std::thread::sleep(Duration::from_millis(2500));
    let status = agent.smime(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(": locked"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let (out, _) = sign(&agent, d, "alice-ec", "s2");
    assert_ok(&out, "after the TTL");
    assert_eq!(count_lines(&d.join("dialogs"), "GETPIN"), 2);
}

/// A signature that waits on the token (a touch, say): on a terminal, `smime sign` tells
/// the user what the token waits for; through a pipe (a mail client, git) it says nothing.
#[test]
fn a_slow_signature_says_what_the_token_waits_for_on_a_terminal() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            module: Some(built("libp11_count.so")),
            env: fault_env(&token, d, &[]),
            ..Default::default()
        },
    );
    // Log in first, so that only the signature itself is slow.
    let (out, _) = sign(&agent, d, "alice-rsa", "warm.p7s");
    assert_ok(&out, "sign before the delay");
    control(&d.join("control"), "delay_ms=3000\n");
    let data = d.join("data");
    let sig = d.join("slow.p7s");
    let cmd = format!(
        "{} sign --key alice-rsa --in {} --out {}",
        smime_tests::s(&built("smime")),
        smime_tests::s(&data),
        smime_tests::s(&sig)
    );
    // script(1) gives the command a terminal.
    let tty = run(Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("SMIME_AGENT_SOCK", &agent.socket)
        .env("SMIME_AGENT_NO_AUTOSTART", "1"));
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{text}");
    assert!(
        text.contains("smime: smime-demo: waiting for the token"),
        "no waiting notice: {text:?}"
    );
    verify_with_openssl(&token, d, &sig);
    // Through a pipe: the same slow signature, silently.
    let (out, sig) = sign(&agent, d, "alice-rsa", "piped.p7s");
    assert_ok(&out, "slow sign through a pipe");
    assert!(!stderr(&out).contains("waiting"), "{}", stderr(&out));
    verify_with_openssl(&token, d, &sig);
}

#[test]
fn a_request_waiting_on_a_hung_tokens_lane_is_answered_within_a_second() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = format!(
        "[[token]]\nlabel = \"smime-demo\"\npin_source = \"file\"\npin_file = \"{}\"\n",
        token.file("pin").display()
    );
    let agent = agent_with_config(&token, d, "", &[], &config);
    let mut c = AgentClient::connect(&agent.socket).unwrap();
    let keys = c.list_keys().unwrap();
    let alice = keys.iter().find(|k| k.label == "alice-ec").unwrap().clone();
    // After a signature the connection waits on smime-demo's lane, where the token's
    // workers read its requests.
    for _ in 0..2 {
        assert_eq!(
            c.sign(&alice.id, SignAlgorithm::EcdsaSha256, &[1; 32])
                .unwrap()[0],
            0x30
        );
    }
    // Now the token "waits for a touch" in every signature, and both workers hang in one.
    control(
        &d.join("control"),
        "delay_ms=5000\ndelay_token=smime-demo\n",
    );
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (socket, alice) = (agent.socket.clone(), alice.clone());
            std::thread::spawn(move || {
                let mut c = AgentClient::connect(&socket).unwrap();
                c.sign(&alice.id, SignAlgorithm::EcdsaSha256, &[2; 32])
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // No worker reads the lane now: the connection goes back to tokio within a second of
    // its last answer, and its status request is answered then, not after the hang.
    let start = Instant::now();
    let Response::Status { tokens, .. } = c.request(&Request::Status).unwrap() else {
        panic!("not a status response");
    };
    let took = start.elapsed();
    assert!(took < Duration::from_millis(2500), "status took {took:?}");
    assert!(tokens.iter().any(|t| t.label == "smime-demo"));
    assert!(
        slow.iter().all(|t| !t.is_finished()),
        "the slow signatures were not slow"
    );
    for t in slow {
        assert_eq!(t.join().unwrap().unwrap()[0], 0x30);
    }
}
