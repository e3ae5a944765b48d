//! The agent under stress and attack: concurrency, wrong PINs, hostile frames, other users.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use smime::agent::AgentClient;
use smime_proto::{ErrorCode, FrameDecoder, KeyAlgorithm, Request, Response, SignAlgorithm};
use smime_tests::{Agent, AgentOptions, Token, assert_ok, built, openssl_verify, run};
use x509_cert::Certificate;

fn read_response(s: &mut UnixStream) -> Option<Response> {
    let mut d = FrameDecoder::new();
    loop {
        let mut buf = vec![0u8; d.wanted()];
        if s.read_exact(&mut buf).is_err() {
            return None;
        }
        if let Some(p) = d.feed(&buf).unwrap() {
            return Some(Response::decode(&p).unwrap());
        }
    }
}

/// True once the agent has closed the connection (EOF or reset).
fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // an error response before closing is fine
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn hello(s: &mut UnixStream) {
    s.write_all(
        &Request::Hello {
            versions: vec![1],
            client: "test".into(),
        }
        .encode_frame()
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        read_response(s),
        Some(Response::Hello { version: 1, .. })
    ));
}

fn sign_ok(agent: &Agent, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::write(&data, b"still here").unwrap();
    let out = agent.sign(key, &data, &dir.path().join("s"), &[]);
    assert_ok(&out, "smime sign");
}

#[test]
fn eight_clients_sign_200_times_each() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let keys = AgentClient::connect(&agent.socket)
        .unwrap()
        .list_keys()
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let socket = agent.socket.clone();
            let key = keys[i % 2].clone(); // alice-rsa and alice-ec
            std::thread::spawn(move || {
                let mut c = AgentClient::connect(&socket).unwrap();
                let der = key.certificate.as_ref().unwrap();
                let spki = Certificate::from_der(der)
                    .unwrap()
                    .tbs_certificate()
                    .subject_public_key_info()
                    .to_der()
                    .unwrap();
                for n in 0..200u32 {
                    let digest = Sha256::digest(format!("client {i} message {n}"));
                    let (alg, ok) = match key.algorithm {
                        KeyAlgorithm::Rsa => (SignAlgorithm::RsaPkcs1Sha256, true),
                        _ => (SignAlgorithm::EcdsaSha256, false),
                    };
                    let sig = c.sign(&key.id, alg, &digest).unwrap();
                    // Judge with RustCrypto, independent of the token.
                    if ok {
                        use rsa::pkcs8::DecodePublicKey;
                        let pk = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
                        pk.verify(rsa::pkcs1v15::Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)
                            .unwrap();
                    } else {
                        use p256::pkcs8::DecodePublicKey;
                        use signature::hazmat::PrehashVerifier;
                        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
                        let s = p256::ecdsa::Signature::from_der(&sig).unwrap();
                        vk.verify_prehash(&digest, &s).unwrap();
                    }
                }
                200
            })
        })
        .collect();
    let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 1600);
    assert_signature_audit_lines(&agent, 1600);
}

/// The agent lends the module its own mutexes (`C_Initialize` with `CreateMutex` …
/// `UnlockMutex` and `CKF_OS_LOCKING_OK`; agent/src/backend/pkcs11/modlock.rs), the
/// module (SoftHSM, behind the p11-count wrapper that logs what it was given) takes
/// them, and signs with them. `eight_clients_sign_200_times_each` runs SoftHSM on them
/// under load.
#[test]
fn the_module_gets_the_agents_locks() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("init");
    let opts = AgentOptions::p11_count(&[("P11_COUNT_INIT_LOG", log.display().to_string())]);
    let agent = Agent::start_with(&token, opts);
    sign_ok(&agent, "alice-ec");
    sign_ok(&agent, "alice-rsa");
    let init = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = init.lines().collect();
    assert_eq!(
        lines,
        ["C_Initialize mutex_functions=4 flags=0x2 rv=0x0"],
        "one C_Initialize, with all four mutex functions, taken"
    );
}

/// The agent's log has `n` audit lines of signatures. Under load the agent writes them
/// in batches, at most 10 ms late: this waits up to 5 s for them.
fn assert_signature_audit_lines(agent: &Agent, n: usize) {
    let audit = || agent.log_text().matches("op=\"sign\"").count();
    let start = std::time::Instant::now();
    while audit() < n && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(audit(), n, "one audit line per signature");
}

#[test]
fn wrong_pin_is_tried_once_and_reported() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let bad_pin = dir.path().join("bad-pin");
    std::fs::write(&bad_pin, "00000000").unwrap();
    let log = dir.path().join("logins");
    let opts = AgentOptions {
        pin_file: Some(Some(bad_pin)),
        ..AgentOptions::p11_count(&[
            ("P11_COUNT_LOG", log.display().to_string()),
            // The wrapper simulates a card that locks after 3 wrong PINs (SoftHSM never does).
            ("P11_COUNT_LOCK_AFTER", "3".into()),
        ])
    };
    let mut agent = Agent::start_with(&token, opts);
    let logins = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let data = dir.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    let sig = dir.path().join("s");
    for _ in 0..3 {
        let out = agent.sign("alice-rsa", &data, &sig, &[]);
        assert_eq!(out.status.code(), Some(3));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("PIN") && err.contains("will not try it again"),
            "{err}"
        );
        assert!(!sig.exists(), "no output on failure");
    }
    assert_eq!(logins(), 1, "the configured PIN is sent exactly once");
    assert!(agent.is_running());
    // A PIN typed by the user: one C_Login, the tries left in the error, no retry.
    let out = agent.smime_stdin(
        &["unlock", "--token", "smime-demo", "--pin-stdin"],
        b"11111111\n",
    );
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wrong PIN") && err.contains("1 PIN tries left"),
        "{err}"
    );
    assert_eq!(logins(), 2);
    // The card is now on its final try: no PIN is sent without the user's consent,
    // neither by the client nor by the agent.
    let pin_line = format!("{}\n", token.pin());
    let out = agent.smime_stdin(
        &["unlock", "--token", "smime-demo", "--pin-stdin"],
        pin_line.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("final"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut raw = AgentClient::connect(&agent.socket).unwrap();
    match raw.unlock("smime-demo", smime_proto::Pin::new(token.pin()), false) {
        Err(smime::agent::AgentError::Agent(e)) => assert_eq!(e.code, ErrorCode::PIN_FINAL_TRY),
        other => panic!("{other:?}"),
    }
    assert_eq!(logins(), 2, "nothing was sent on the final try");
    // With consent, the right PIN still works (the simulated card is not locked).
    let out = agent.smime_stdin(
        &[
            "unlock",
            "--token",
            "smime-demo",
            "--pin-stdin",
            "--confirm-final-try",
        ],
        pin_line.as_bytes(),
    );
    assert_ok(&out, "smime unlock --confirm-final-try");
    assert_eq!(logins(), 3);
    // Unlocking an unlocked token sends nothing, so a wrong PIN cannot be "accepted".
    let out = agent.smime_stdin(&["unlock", "--pin-stdin"], b"99999999\n");
    assert_ok(&out, "unlock when unlocked");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already unlocked"));
    match raw.unlock(
        "smime-demo",
        smime_proto::Pin::new("99999999".into()),
        false,
    ) {
        Ok(()) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(logins(), 3, "no C_Login when already logged in");
    sign_ok(&agent, "alice-rsa");
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        !lines.contains(&token.pin()) && !agent.log_text().contains(&token.pin()),
        "PINs are never logged"
    );
}

#[test]
fn locked_pin_is_reported_and_never_sent() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logins");
    let state = dir.path().join("state");
    std::fs::write(&state, "3").unwrap(); // three wrong PINs already recorded: locked
    let opts = AgentOptions {
        pin_file: None,
        ..AgentOptions::p11_count(&[
            ("P11_COUNT_LOG", log.display().to_string()),
            ("P11_COUNT_LOCK_AFTER", "3".into()),
            ("P11_COUNT_STATE", state.display().to_string()),
        ])
    };
    let agent = Agent::start_with(&token, opts);
    let out = agent.smime_stdin(
        &["unlock", "--pin-stdin"],
        format!("{}\n", token.pin()).as_bytes(),
    );
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked") && err.contains("PUK"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count(),
        0,
        "no C_Login on a locked PIN"
    );
}

#[test]
fn hostile_frames_do_not_hurt_other_clients() {
    let token = Token::new();
    let mut agent = Agent::start(&token);
    // A keeps a good connection open throughout.
    let mut good = AgentClient::connect(&agent.socket).unwrap();
    let key = good.list_keys().unwrap()[0].id.clone();

    // Oversized length prefix: closed without buffering 4 GiB.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    assert!(closed(&mut s));
    // Just over the cap.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.write_all(&((1u32 << 20) + 1).to_be_bytes()).unwrap();
    assert!(closed(&mut s));
    // Truncated frame, then the client disappears.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.write_all(&[0, 0, 0, 100, 0xa1, 0x62]).unwrap();
    drop(s);
    // Garbage CBOR in a well-formed frame: an error, then the connection closes.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    hello(&mut s);
    s.write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).unwrap();
    match read_response(&mut s) {
        Some(Response::Error(e)) => assert_eq!(e.code, ErrorCode::BAD_REQUEST),
        other => panic!("{other:?}"),
    }
    assert!(closed(&mut s));
    // An unknown operation: an error response, and the connection stays usable.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    hello(&mut s);
    let mut p = vec![0xa1, 0x62, b'o', b'p', 0x67];
    p.extend_from_slice(b"explode");
    s.write_all(&(p.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&p).unwrap();
    match read_response(&mut s) {
        Some(Response::Error(e)) => assert_eq!(e.code, ErrorCode::UNKNOWN_OPERATION),
        other => panic!("{other:?}"),
    }
    s.write_all(&Request::Status.encode_frame().unwrap())
        .unwrap();
    assert!(matches!(
        read_response(&mut s),
        Some(Response::Status { .. })
    ));
    // Operations before hello are refused.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.write_all(&Request::ListKeys.encode_frame().unwrap())
        .unwrap();
    match read_response(&mut s) {
        Some(Response::Error(e)) => assert_eq!(e.code, ErrorCode::HELLO_REQUIRED),
        other => panic!("{other:?}"),
    }
    // Wrong digest length and a key that does not exist: operation errors.
    for (req, code) in [
        (
            Request::Sign {
                key: key.clone(),
                algorithm: SignAlgorithm::RsaPkcs1Sha256,
                digest: vec![0; 5].into(),
            },
            ErrorCode::BAD_REQUEST,
        ),
        (
            Request::Sign {
                key: smime_proto::KeyId("nope:01".into()),
                algorithm: SignAlgorithm::RsaPkcs1Sha256,
                digest: vec![0; 32].into(),
            },
            ErrorCode::KEY_NOT_FOUND,
        ),
    ] {
        match good.request(&req) {
            Err(smime::agent::AgentError::Agent(e)) => assert_eq!(e.code, code),
            other => panic!("{other:?}"),
        }
    }
    // The first connection and new ones still work.
    assert_eq!(
        good.sign(&key, SignAlgorithm::RsaPkcs1Sha256, &[1; 32])
            .unwrap()
            .len(),
        256
    );
    sign_ok(&agent, "alice-ec");
    assert!(agent.is_running());
}

#[test]
fn socket_is_private_and_other_users_are_refused() {
    let token = Token::new();
    let mut agent = Agent::start(&token);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&agent.socket), 0o600);
    assert_eq!(mode(agent.dir.path()), 0o700);
    if rustix_is_root() {
        // A copy of the client that `nobody` may execute.
        let bin = tempfile::Builder::new()
            .prefix("smime-bin-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let smime = bin.path().join("smime");
        std::fs::copy(built("smime"), &smime).unwrap();
        let as_nobody = || {
            run(Command::new("setpriv")
                .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
                .arg(&smime)
                .args(["keys", "--socket"])
                .arg(&agent.socket))
        };
        // 1. The directory keeps other users out.
        let out = as_nobody();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // 2. Even with the file system opened up, the agent checks the peer's uid.
        std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = as_nobody();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The agent logs the refusal when it gets to the connection.
        let refused = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            agent
                .log_text()
                .contains("refusing connection from another user")
        });
        assert!(refused, "{}", agent.log_text());
        assert!(agent.is_running());
        sign_ok(&agent, "alice-rsa");
    } else {
        eprintln!("not root: the uid check needs setpriv as root; only permissions were checked");
    }
}

fn rustix_is_root() -> bool {
    String::from_utf8_lossy(&run(Command::new("id").arg("-u")).stdout).trim() == "0"
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let token = Token::new();
    let mut agent = Agent::start(&token);
    sign_ok(&agent, "alice-ec");
    let st = agent.stop();
    assert!(st.success(), "{st}");
    assert!(!agent.socket.exists());
    assert!(agent.log_text().contains("shutting down"));
}

#[test]
fn agent_without_pin_asks_for_unlock() {
    let token = Token::new();
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            pin_file: Some(None),
            ..Default::default()
        },
    );
    // Keys are listed from the public objects before login.
    let keys = agent.smime(&["keys", "--json"]);
    assert_ok(&keys, "keys before login");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    let out = agent.sign("alice-ec", &data, &dir.path().join("s"), &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("smime unlock"));
    assert_ok(
        &agent.smime_stdin(
            &["unlock", "--pin-stdin"],
            format!("{}\n", token.pin()).as_bytes(),
        ),
        "unlock",
    );
    sign_ok(&agent, "alice-ec");
    assert_ok(&agent.smime(&["lock"]), "lock");
    let out = agent.sign("alice-ec", &data, &dir.path().join("s"), &[]);
    assert_eq!(out.status.code(), Some(3), "locked again");
}

#[test]
fn modules_come_from_config_file_or_environment() {
    let token = Token::new();
    let so = smime_tests::softhsm_module().display().to_string();
    let count = |agent: &Agent| {
        let out = agent.smime(&["keys", "--json"]);
        assert_ok(&out, "keys");
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    let from_file = Agent::start_with(
        &token,
        AgentOptions {
            config: Some(format!("modules = [{so:?}]\nsessions = 3\n")),
            ..Default::default()
        },
    );
    assert_eq!(count(&from_file), 3);
    assert!(from_file.log_text().contains("sessions=3"));
    drop(from_file);
    // A missing module is reported; the others still serve.
    let from_env = Agent::start_with(
        &token,
        AgentOptions {
            config: Some(String::new()),
            env: vec![(
                "SMIME_AGENT_MODULE".into(),
                format!("/nonexistent/pkcs11.so:{so}"),
            )],
            ..Default::default()
        },
    );
    assert_eq!(count(&from_env), 3);
    assert!(from_env.log_text().contains("cannot load PKCS#11 module"));
    // `smime status` names the module that failed and the one that serves.
    let status = from_env.smime(&["status"]);
    assert_ok(&status, "status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("module /nonexistent/pkcs11.so: NOT LOADED"),
        "{text}"
    );
    assert!(text.contains(&format!("module {so}: loaded")), "{text}");
    assert!(text.contains("up ") && text.contains("PIN ok"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&from_env.smime(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["agent"]["modules"].as_array().unwrap().len(), 2);
    assert_eq!(json["tokens"][0]["label"], "smime-demo");
}

#[test]
fn detached_agent_prints_its_socket_and_refuses_a_second_start() {
    let token = Token::new();
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let start = || {
        run(Command::new(built("smime-agent"))
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("XDG_CONFIG_HOME", runtime.path())
            .env_remove("SMIME_AGENT_SOCK")
            .env("SOFTHSM2_CONF", token.file("softhsm2.conf"))
            .env("SMIME_AGENT_MODULE", smime_tests::softhsm_module())
            .env("SMIME_AGENT_PIN_FILE", token.file("pin")))
    };
    let out = start();
    assert_ok(&out, "smime-agent (detached)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let socket = runtime.path().join("smime-agent/agent.sock");
    assert!(
        text.contains(&format!(
            "SMIME_AGENT_SOCK={}; export SMIME_AGENT_SOCK;",
            socket.display()
        )),
        "{text}"
    );
    let pid = text
        .split("Agent pid ")
        .nth(1)
        .unwrap()
        .trim_end_matches([';', '\n'])
        .to_owned();
    let second = start();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already listening"));
    let keys = run(Command::new(built("smime"))
        .env("SMIME_AGENT_SOCK", &socket)
        .arg("keys"));
    assert_ok(&keys, "keys via the detached agent");
    assert_ok(&run(Command::new("kill").arg(pid.trim())), "kill");
    for _ in 0..200 {
        if !socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(!socket.exists(), "SIGTERM removes the socket");
}

#[test]
fn configured_pin_is_not_sent_after_a_wrong_pin_on_record() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logins");
    let state = dir.path().join("state");
    std::fs::write(&state, "1").unwrap(); // one wrong PIN on record (COUNT_LOW)
    // The token's correct PIN file, as by default.
    let opts = AgentOptions::p11_count(&[
        ("P11_COUNT_LOG", log.display().to_string()),
        ("P11_COUNT_LOCK_AFTER", "3".into()),
        ("P11_COUNT_STATE", state.display().to_string()),
    ]);
    let agent = Agent::start_with(&token, opts);
    let dir2 = tempfile::tempdir().unwrap();
    let data = dir2.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    let out = agent.sign("alice-rsa", &data, &dir2.path().join("s"), &[]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count(),
        0,
        "an unattended agent spends no try"
    );
    // A user can still unlock.
    let out = agent.smime_stdin(
        &["unlock", "--pin-stdin"],
        format!("{}\n", token.pin()).as_bytes(),
    );
    assert_ok(&out, "unlock");
    sign_ok(&agent, "alice-rsa");
}

#[test]
fn the_socket_path_must_not_be_another_file() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let precious = dir.path().join("id_key");
    std::fs::write(&precious, b"do not delete").unwrap();
    let out = run(Command::new(built("smime-agent"))
        .args(["--foreground", "--socket"])
        .arg(&precious)
        .arg("--module")
        .arg(smime_tests::softhsm_module())
        .env("SOFTHSM2_CONF", token.file("softhsm2.conf")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&precious).unwrap(), b"do not delete");
}

#[test]
fn over_the_connection_limit_clients_are_told_at_once() {
    let token = Token::new();
    let so = smime_tests::softhsm_module().display().to_string();
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            config: Some(format!("modules = [{so:?}]\nmax_connections = 1\n")),
            ..Default::default()
        },
    );
    // The start-up probe's connection may still hold the one slot for a moment.
    let mut held = None;
    for _ in 0..100 {
        if let Ok(c) = AgentClient::connect(&agent.socket) {
            held = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = held.expect("one connection is served");
    let start = std::time::Instant::now();
    let out = agent.smime(&["status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connections"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "refused promptly, not left hanging"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_ok(&agent.smime(&["status"]), "status once the slot is free");
}

#[test]
fn a_slow_frame_is_cut_off() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    hello(&mut s);
    let start = std::time::Instant::now();
    // One byte every 2 s: each read is quick, the frame never completes.
    let frame = Request::Status.encode_frame().unwrap();
    let mut cut = false;
    for b in frame.iter().chain(std::iter::repeat_n(&0u8, 20)) {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            cut = true;
            break;
        }
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(_) => panic!("a response to a frame sent this slowly"),
            Err(_) => {}
        }
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    assert!(cut, "the agent closed the slow connection");
    assert!(
        start.elapsed() < Duration::from_secs(16),
        "within the 10 s frame deadline"
    );
}

#[test]
fn the_client_talks_only_to_an_agent_of_its_own_user() {
    if !rustix_is_root() {
        eprintln!("not root: cannot start an agent as another user");
        return;
    }
    let token = Token::new();
    let bin = tempfile::Builder::new()
        .prefix("smime-bin-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent_bin = bin.path().join("smime-agent");
    std::fs::copy(built("smime-agent"), &agent_bin).unwrap();
    let sock_dir = bin.path().join("nobody");
    std::fs::create_dir(&sock_dir).unwrap();
    assert_ok(
        &run(Command::new("chown")
            .args(["nobody:nogroup"])
            .arg(&sock_dir)),
        "chown",
    );
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = sock_dir.join("agent.sock");
    let mut agent = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&agent_bin)
        .args(["--foreground", "--socket"])
        .arg(&socket)
        .arg("--module")
        .arg(smime_tests::softhsm_module())
        .env("SOFTHSM2_CONF", token.file("softhsm2.conf"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..250 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(Command::new(built("smime"))
        .args(["status", "--socket"])
        .arg(&socket));
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not as this user"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lets this process hold a few thousand sockets.
fn raise_open_files() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
}

/// The number that `field` (`VmRSS`, `voluntary_ctxt_switches`, …) has in the `status`
/// file of the process or thread whose /proc directory is `dir`.
fn status_number(dir: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("{dir}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap();
    line.split_whitespace().next().unwrap().parse().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    status_number(&format!("/proc/{pid}"), "VmRSS")
}

#[test]
fn floods_and_slow_clients_do_not_starve_a_good_client() {
    raise_open_files();
    let token = Token::new();
    let mut agent = Agent::start(&token);
    let mut good = AgentClient::connect(&agent.socket).unwrap();
    let key = good.list_keys().unwrap()[0].id.clone();
    let sign_worst = |c: &mut AgentClient| {
        (0..20)
            .map(|_| {
                let t = std::time::Instant::now();
                c.sign(&key, SignAlgorithm::RsaPkcs1Sha256, &[1; 32])
                    .unwrap();
                t.elapsed()
            })
            .max()
            .unwrap()
    };
    let before = sign_worst(&mut good);
    let rss_before = rss_kib(agent.pid());
    // 1000 connections at once that say nothing, 100 slow-loris connections that start a
    // frame and stall, and a burst of garbage on 50 more.
    let flood: Vec<UnixStream> = (0..1000)
        .filter_map(|_| UnixStream::connect(&agent.socket).ok())
        .collect();
    assert!(
        flood.len() >= 990,
        "only {} connections were accepted",
        flood.len()
    );
    let slow: Vec<UnixStream> = (0..100)
        .map(|_| {
            let mut s = UnixStream::connect(&agent.socket).unwrap();
            s.write_all(&[0, 0]).unwrap();
            s
        })
        .collect();
    for i in 0..50u32 {
        let mut s = UnixStream::connect(&agent.socket).unwrap();
        let junk: Vec<u8> = (0..4096u32)
            .map(|b| (b.wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8)
            .collect();
        let _ = s.write_all(&junk);
    }
    // The client already connected, and a new one, are served as usual.
    let during = sign_worst(&mut good);
    let mut fresh = AgentClient::connect(&agent.socket).unwrap();
    let fresh_worst = sign_worst(&mut fresh);
    let limit = (before * 20).max(Duration::from_millis(500));
    assert!(
        during < limit && fresh_worst < limit,
        "before {before:?}, during {during:?}, new client {fresh_worst:?}"
    );
    let rss_during = rss_kib(agent.pid());
    assert!(
        rss_during < rss_before + 64 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_during} KiB"
    );
    // The silent and stalled connections are cut after the 10 s hello/frame deadline.
    std::thread::sleep(Duration::from_secs(12));
    let mut cut = 0;
    for mut s in flood.into_iter().chain(slow) {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 16];
        // A closed connection reads end-of-file at once; an open one times out.
        if matches!(s.read(&mut b), Ok(0)) {
            cut += 1;
        }
    }
    assert!(
        cut >= 1000,
        "only {cut} of 1100 idle or stalled connections were closed"
    );
    assert!(agent.is_running());
    assert_eq!(
        good.sign(&key, SignAlgorithm::RsaPkcs1Sha256, &[2; 32])
            .unwrap()
            .len(),
        256
    );
}

#[test]
fn the_client_starts_an_agent_when_none_answers() {
    let token = Token::new();
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let smime = |extra_env: &[(&str, &str)]| {
        let mut cmd = Command::new(built("smime"));
        cmd.arg("keys")
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("XDG_CONFIG_HOME", runtime.path())
            .env_remove("SMIME_AGENT_SOCK")
            .env("SOFTHSM2_CONF", token.file("softhsm2.conf"))
            .env("SMIME_AGENT_MODULE", smime_tests::softhsm_module())
            .env("SMIME_AGENT_PIN_FILE", token.file("pin"));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    let socket = runtime.path().join("smime-agent/agent.sock");
    // Opting out: no agent, a clear error.
    let out = smime(&[("SMIME_AGENT_NO_AUTOSTART", "1")]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!socket.exists());
    // By default the client starts one and gets its answer.
    let out = smime(&[]);
    assert_ok(&out, "smime keys with autostart");
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice-rsa"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("started an agent"));
    // The agent stays for the next command, which does not start another.
    let again = smime(&[]);
    assert_ok(&again, "second smime keys");
    assert!(!String::from_utf8_lossy(&again.stderr).contains("started an agent"));
    let s = UnixStream::connect(&socket).unwrap();
    let pid = rustix::net::sockopt::socket_peercred(&s)
        .unwrap()
        .pid
        .as_raw_nonzero()
        .get();
    assert_ok(
        &run(Command::new("kill").arg(pid.to_string())),
        "stop the started agent",
    );
}

#[test]
fn socket_activation_hands_the_agent_its_listener() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = dir.path().join("activated.sock");
    // systemd-socket-activate plays the service manager: it binds, then starts the agent
    // with LISTEN_FDS=1 on the first connection.
    let mut manager = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&socket)
        .arg("-E")
        .arg(format!(
            "SOFTHSM2_CONF={}",
            token.file("softhsm2.conf").display()
        ))
        .arg(built("smime-agent"))
        .args(["--foreground", "--module"])
        .arg(smime_tests::softhsm_module())
        .arg("--pin-file")
        .arg(token.file("pin"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd)");
    for _ in 0..250 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(Command::new(built("smime"))
        .args(["keys", "--socket"])
        .arg(&socket)
        .env("SMIME_AGENT_NO_AUTOSTART", "1"));
    let _ = manager.kill();
    let _ = manager.wait();
    assert_ok(&out, "smime keys through an activated agent");
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice-ec"));
}

#[test]
fn sighup_rereads_the_tokens_and_keeps_connections() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let mut client = AgentClient::connect(&agent.socket).unwrap();
    assert_eq!(client.list_keys().unwrap().len(), 3);
    // Another program adds a key to the token while the agent runs…
    let keygen = run(Command::new("pkcs11-tool")
        .arg("--module")
        .arg(smime_tests::softhsm_module())
        .args([
            "--token-label",
            "smime-demo",
            "--login",
            "--pin",
            &token.pin(),
        ])
        .args([
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "04",
            "--label",
            "carol-ec",
        ])
        .env("SOFTHSM2_CONF", token.file("softhsm2.conf")));
    assert_ok(&keygen, "pkcs11-tool --keypairgen");
    assert_eq!(
        client.list_keys().unwrap().len(),
        3,
        "nothing changes before the signal"
    );
    // …and SIGHUP makes the agent look again, without dropping this connection.
    agent.sighup();
    let mut n = 0;
    for _ in 0..100 {
        n = client.list_keys().unwrap().len();
        if n == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(n, 4, "{}", agent.log_text());
    let carol = client
        .list_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.label == "carol-ec")
        .unwrap();
    assert_eq!(
        client
            .sign(&carol.id, SignAlgorithm::EcdsaSha256, &[3; 32])
            .unwrap()[0],
        0x30
    );
}

/// Writes the fault module's control file atomically (it is read by inode and mtime).
fn control(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn faulty_agent(
    token: &Token,
    dir: &std::path::Path,
    with_pin: bool,
) -> (Agent, std::path::PathBuf) {
    let ctl = dir.join("control");
    control(&ctl, "removed=0\n");
    let opts = AgentOptions {
        pin_file: if with_pin { None } else { Some(None) },
        ..AgentOptions::p11_count(&[("P11_COUNT_CONTROL", ctl.display().to_string())])
    };
    (Agent::start_with(token, opts), ctl)
}

#[test]
fn a_pulled_card_fails_cleanly_and_works_again_when_reinserted() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, ctl) = faulty_agent(&token, dir.path(), true);
    let data = dir.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    let sig = dir.path().join("s");
    assert_ok(&agent.sign("alice-rsa", &data, &sig, &[]), "sign before");
    control(&ctl, "removed=1\n");
    std::fs::remove_file(&sig).unwrap();
    for key in ["alice-rsa", "alice-ec", "alice-rsa"] {
        let out = agent.sign(key, &data, &sig, &[]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not present"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!sig.exists());
    }
    assert!(agent.is_running());
    // Reinserted: the next requests work, with no restart (the configured PIN logs in again).
    control(&ctl, "removed=0\n");
    for key in ["alice-rsa", "alice-ec", "alice-rsa", "alice-ec"] {
        assert_ok(
            &agent.sign(key, &data, &sig, &[]),
            &format!("sign after reinsertion ({key})"),
        );
    }
    assert_ok(
        &openssl_verify(&sig, &data, &token.file("ca.pem"), "DER"),
        "openssl verify",
    );
}

#[test]
fn after_reinsertion_a_user_unlocked_token_asks_for_the_pin_again() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let (agent, ctl) = faulty_agent(&token, dir.path(), false);
    let pin = format!("{}\n", token.pin());
    assert_ok(
        &agent.smime_stdin(&["unlock", "--pin-stdin"], pin.as_bytes()),
        "unlock",
    );
    sign_ok(&agent, "alice-ec");
    control(&ctl, "removed=1\n");
    let data = dir.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    assert_eq!(
        agent
            .sign("alice-ec", &data, &dir.path().join("s"), &[])
            .status
            .code(),
        Some(3)
    );
    control(&ctl, "removed=0\n");
    // The agent kept no PIN a client sent: it asks again instead of guessing.
    let out = agent.sign("alice-ec", &data, &dir.path().join("s"), &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("smime unlock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ok(
        &agent.smime_stdin(&["unlock", "--pin-stdin"], pin.as_bytes()),
        "unlock again",
    );
    sign_ok(&agent, "alice-ec");
}

#[test]
fn an_always_authenticate_key_is_refused_without_locking_the_token() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let (agent, ctl) = faulty_agent(&token, dir.path(), true);
    control(&ctl, "removed=0\nalways_authenticate=01\n");
    let data = dir.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    let out = agent.sign("alice-rsa", &data, &dir.path().join("s"), &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("every use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The other keys on the token are unaffected: the token is still logged in.
    sign_ok(&agent, "alice-ec");
    let status = agent.smime(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("unlocked"));
}

fn pinentry_agent(
    token: &Token,
    dir: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Agent {
    let mut all_env = vec![
        (
            "P11_COUNT_MODULE".to_owned(),
            smime_tests::softhsm_module().display().to_string(),
        ),
        (
            "P11_COUNT_LOG".to_owned(),
            dir.join("logins").display().to_string(),
        ),
        (
            "PINENTRY_TEST_LOG".to_owned(),
            dir.join("dialogs").display().to_string(),
        ),
        ("PINENTRY_TEST_PIN".to_owned(), token.pin()),
    ];
    all_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let mut all_args = vec![
        "--pinentry".to_owned(),
        smime_tests::root()
            .join("tests/support/pinentry-test")
            .display()
            .to_string(),
    ];
    all_args.extend(args.iter().map(|a| (*a).to_owned()));
    Agent::start_with(
        token,
        AgentOptions {
            module: Some(built("libp11_count.so")),
            pin_file: Some(None),
            env: all_env,
            args: all_args,
            ..Default::default()
        },
    )
}

fn count_lines(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn pinentry_asks_once_naming_token_key_and_program() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let agent = pinentry_agent(&token, dir.path(), &[], &[]);
    sign_ok(&agent, "alice-rsa");
    let dialogs = std::fs::read_to_string(dir.path().join("dialogs")).unwrap();
    assert_eq!(count_lines(&dir.path().join("dialogs"), "GETPIN"), 1);
    assert!(
        dialogs.contains("smime-demo")
            && dialogs.contains("alice-rsa")
            && dialogs.contains("smime (pid"),
        "{dialogs}"
    );
    assert!(!dialogs.contains(&token.pin()));
    // Logged in now: no second dialog.
    sign_ok(&agent, "alice-ec");
    assert_eq!(count_lines(&dir.path().join("dialogs"), "GETPIN"), 1);
    assert_eq!(count_lines(&dir.path().join("logins"), "C_Login"), 1);
}

#[test]
fn a_cancelled_pinentry_sends_nothing() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let agent = pinentry_agent(&token, dir.path(), &[("PINENTRY_TEST_CANCEL", "1")], &[]);
    let data = dir.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    let out = agent.sign("alice-rsa", &data, &dir.path().join("s"), &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count_lines(&dir.path().join("dialogs"), "GETPIN"), 1);
    assert_eq!(
        count_lines(&dir.path().join("logins"), "C_Login"),
        0,
        "no PIN, no login attempt"
    );
}

#[test]
fn the_login_expires_after_the_cache_ttl() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let agent = pinentry_agent(&token, dir.path(), &[], &["--cache-ttl", "1"]);
    sign_ok(&agent, "alice-ec");
    std::thread::sleep(Duration::from_millis(2500));
    let status = agent.smime(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(": locked"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    sign_ok(&agent, "alice-ec");
    assert_eq!(
        count_lines(&dir.path().join("dialogs"), "GETPIN"),
        2,
        "asked again after the TTL"
    );
}

#[test]
fn pinentry_on_the_final_try_asks_for_confirmation_first() {
    let token = Token::new();
    for (confirm, expect_ok) in [("0", false), ("1", true)] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::write(&state, "2").unwrap(); // two wrong PINs on record: final try
        let state_s = state.display().to_string();
        let env = [
            ("P11_COUNT_LOCK_AFTER", "3"),
            ("P11_COUNT_STATE", state_s.as_str()),
            ("PINENTRY_TEST_CONFIRM", confirm),
        ];
        let agent = pinentry_agent(&token, dir.path(), &env, &[]);
        let data = dir.path().join("d");
        std::fs::write(&data, b"x").unwrap();
        let out = agent.sign("alice-rsa", &data, &dir.path().join("s"), &[]);
        assert_eq!(
            out.status.success(),
            expect_ok,
            "confirm={confirm}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(count_lines(&dir.path().join("dialogs"), "CONFIRM"), 1);
        let prompted = count_lines(&dir.path().join("dialogs"), "GETPIN");
        let logins = count_lines(&dir.path().join("logins"), "C_Login");
        if expect_ok {
            assert_eq!((prompted, logins), (1, 1));
        } else {
            assert_eq!(
                (prompted, logins),
                (0, 0),
                "declined: no PIN asked, none sent"
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("final"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// How often the agent's tokio thread has been switched out (its main thread: the runtime
/// is a current-thread one); it is woken once for each time it slept.
fn tokio_thread_switches(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/task/{pid}");
    status_number(&dir, "voluntary_ctxt_switches")
        + status_number(&dir, "nonvoluntary_ctxt_switches")
}

#[test]
fn key_operations_after_the_first_are_answered_without_the_tokio_thread() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let mut c = AgentClient::connect(&agent.socket).unwrap();
    let key = c
        .list_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.algorithm == KeyAlgorithm::EcP256)
        .unwrap();
    let vk = {
        use p256::pkcs8::DecodePublicKey;
        let cert = Certificate::from_der(key.certificate.as_ref().unwrap()).unwrap();
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap();
        p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap()
    };
    // The first goes through the tokio thread; then the connection waits on the token's
    // lane, where a worker thread reads the next request itself.
    c.sign(&key.id, SignAlgorithm::EcdsaSha256, &[7; 32])
        .unwrap();
    let before = tokio_thread_switches(agent.pid());
    for n in 0..300u32 {
        let digest = Sha256::digest(n.to_be_bytes());
        let sig = c
            .sign(&key.id, SignAlgorithm::EcdsaSha256, &digest)
            .unwrap();
        use signature::hazmat::PrehashVerifier;
        let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
        vk.verify_prehash(&digest, &sig).unwrap();
    }
    let woken = tokio_thread_switches(agent.pid()) - before;
    // Through the tokio thread, each request woke it (300 and more).
    assert!(
        woken < 100,
        "the tokio thread slept {woken} times during 300 requests"
    );
    assert_signature_audit_lines(&agent, 301);
}

#[test]
fn a_connection_on_the_lane_gets_every_answer_and_goes_back_when_it_must() {
    let token = Token::new();
    // No PIN file: after a lock, only an unlock logs in again.
    let opts = AgentOptions {
        pin_file: Some(None),
        ..AgentOptions::default()
    };
    let mut agent = Agent::start_with(&token, opts);
    let mut c = AgentClient::connect(&agent.socket).unwrap();
    c.unlock("smime-demo", smime_proto::Pin::new(token.pin()), false)
        .unwrap();
    let rsa = c
        .list_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.algorithm == KeyAlgorithm::Rsa)
        .unwrap()
        .id;
    let sign =
        |c: &mut AgentClient<UnixStream>| c.sign(&rsa, SignAlgorithm::RsaPkcs1Sha256, &[1; 32]);
    let code = |r: Result<Vec<u8>, smime::agent::AgentError>| match r {
        Err(smime::agent::AgentError::Agent(e)) => e.code,
        other => panic!("{other:?}"),
    };
    assert_eq!(sign(&mut c).unwrap().len(), 256, "through tokio");
    from_the_lane(&agent, &mut c, &rsa);
    // Not a key operation: the tokio thread answers, then the connection waits again.
    assert!(matches!(
        c.request(&Request::Status).unwrap(),
        Response::Status { .. }
    ));
    assert_eq!(sign(&mut c).unwrap().len(), 256);
    from_the_lane(&agent, &mut c, &rsa);
    // A key the agent does not know: the error comes from the usual way.
    let missing = smime_proto::KeyId("nope:01".into());
    assert_eq!(
        code(c.sign(&missing, SignAlgorithm::RsaPkcs1Sha256, &[1; 32])),
        ErrorCode::KEY_NOT_FOUND
    );
    // A wrong digest length: the token's error, from the worker on the lane.
    assert_eq!(
        code(c.sign(&rsa, SignAlgorithm::RsaPkcs1Sha256, &[1; 5])),
        ErrorCode::BAD_REQUEST
    );
    from_the_lane(&agent, &mut c, &rsa);
    // Another client locks the token: the waiting connection's next request needs a PIN.
    let mut other = AgentClient::connect(&agent.socket).unwrap();
    assert!(matches!(
        other.request(&Request::Lock { token: None }).unwrap(),
        Response::Ok
    ));
    assert_eq!(code(sign(&mut c)), ErrorCode::PIN_REQUIRED);
    c.unlock("smime-demo", smime_proto::Pin::new(token.pin()), false)
        .unwrap();
    assert_eq!(sign(&mut c).unwrap().len(), 256);
    from_the_lane(&agent, &mut c, &rsa);
    // Idle longer than a connection stays on the lane: back in tokio, still served.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sign(&mut c).unwrap().len(), 256);
    from_the_lane(&agent, &mut c, &rsa);
    // Two requests in one write: both answered, in order.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    hello(&mut s);
    let req = |d: u8| {
        Request::Sign {
            key: rsa.clone(),
            algorithm: SignAlgorithm::RsaPkcs1Sha256,
            digest: vec![d; 32].into(),
        }
        .encode_frame()
        .unwrap()
    };
    s.write_all(&req(1)).unwrap();
    let first = read_response(&mut s);
    assert!(
        matches!(first, Some(Response::Signature { .. })),
        "{first:?}"
    );
    let two = [req(2), req(3)].concat();
    s.write_all(&two).unwrap();
    let sigs: Vec<_> = (0..2)
        .map(|_| match read_response(&mut s) {
            Some(Response::Signature { signature }) => signature.into_vec(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sigs[0], sign_raw(&mut c, &rsa, 2));
    assert_eq!(sigs[1], sign_raw(&mut c, &rsa, 3));
    // Half a frame, then the rest later: the tokio thread waits for the rest.
    let frame = req(4);
    s.write_all(&frame[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&frame[10..]).unwrap();
    assert!(matches!(
        read_response(&mut s),
        Some(Response::Signature { .. })
    ));
    // Garbage on a waiting connection: an error and the connection closes; the agent
    // and the other connection go on.
    s.write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).unwrap();
    match read_response(&mut s) {
        Some(Response::Error(e)) => assert_eq!(e.code, ErrorCode::BAD_REQUEST),
        other => panic!("{other:?}"),
    }
    assert!(closed(&mut s));
    assert_eq!(sign(&mut c).unwrap().len(), 256);
    assert!(agent.is_running());
    // SIGTERM while a connection waits on the lane: the agent stops at once.
    let start = std::time::Instant::now();
    let st = agent.stop();
    assert!(st.success(), "{st}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        start.elapsed()
    );
    assert!(closed_client(&mut c, &rsa));
}

/// Signs 20 times on `c`, which must be waiting on its token's lane: the tokio thread
/// stays asleep for nearly all of them (through tokio it wakes at least once each).
fn from_the_lane(agent: &Agent, c: &mut AgentClient<UnixStream>, key: &smime_proto::KeyId) {
    let before = tokio_thread_switches(agent.pid());
    for n in 0..20 {
        assert_eq!(sign_raw(c, key, n).len(), 256);
    }
    let woken = tokio_thread_switches(agent.pid()) - before;
    assert!(
        woken < 10,
        "the tokio thread woke {woken} times for 20 requests"
    );
}

/// An RSA PKCS#1 signature is deterministic: the same digest signed again.
fn sign_raw(c: &mut AgentClient<UnixStream>, key: &smime_proto::KeyId, d: u8) -> Vec<u8> {
    c.sign(key, SignAlgorithm::RsaPkcs1Sha256, &[d; 32])
        .unwrap()
}

/// The agent is gone: a request fails.
fn closed_client(c: &mut AgentClient<UnixStream>, key: &smime_proto::KeyId) -> bool {
    c.sign(key, SignAlgorithm::RsaPkcs1Sha256, &[1; 32])
        .is_err()
}

/// The CPUs the thread `tid` may run on (`None`: the calling thread).
fn allowed_cpus(tid: Option<rustix::process::Pid>) -> Vec<usize> {
    let set = rustix::thread::sched_getaffinity(tid).unwrap();
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect()
}

/// The CPUs each PKCS#11 worker thread of the agent `pid` may run on, sorted.
fn worker_cpus(pid: u32) -> Vec<Vec<usize>> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("p11-") {
            continue;
        }
        let tid: i32 = dir.file_name().unwrap().to_str().unwrap().parse().unwrap();
        all.push(allowed_cpus(rustix::process::Pid::from_raw(tid)));
    }
    all.sort();
    all
}

#[test]
fn a_tokens_workers_get_a_cpu_each_when_they_are_as_many_as_the_cpus() {
    let allowed = allowed_cpus(None);
    if allowed.len() < 2 {
        eprintln!("skipped: this test needs two CPUs, it may use {allowed:?}");
        return;
    }
    // The agents inherit this thread's CPUs: two of them.
    let two = [allowed[0], allowed[1]];
    let set = |cpus: &[usize]| {
        let mut set = rustix::thread::CpuSet::new();
        for &c in cpus {
            set.set(c);
        }
        rustix::thread::sched_setaffinity(None, &set).unwrap();
    };
    set(&two);
    let token = Token::new();
    let start = |sessions: &str| {
        Agent::start_with(
            &token,
            AgentOptions {
                args: vec!["--sessions".into(), sessions.into()],
                ..AgentOptions::default()
            },
        )
    };
    let (pinned, free) = (start("2"), start("1"));
    set(&allowed);
    for agent in [&pinned, &free] {
        let mut c = AgentClient::connect(&agent.socket).unwrap();
        let key = c.list_keys().unwrap().remove(0);
        let alg = match key.algorithm {
            KeyAlgorithm::Rsa => SignAlgorithm::RsaPkcs1Sha256,
            _ => SignAlgorithm::EcdsaSha256,
        };
        c.sign(&key.id, alg, &[7; 32]).unwrap();
    }
    assert_eq!(
        worker_cpus(pinned.pid()),
        vec![vec![two[0]], vec![two[1]]],
        "two workers on two CPUs: one each"
    );
    assert_eq!(
        worker_cpus(free.pid()),
        vec![two.to_vec()],
        "one worker on two CPUs: left to the scheduler"
    );
}
