//! A client in another language: the Python example (`examples/python/smime_agent_client.py`,
//! standard library plus cbor2) talks the protocol of PROTOCOL.md; OpenSSL checks what it
//! got from the agent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smime_tests::{Agent, Token, assert_ok, openssl_in, root, run, s};

/// Runs the example client against `socket`.
fn client(socket: &Path, args: &[&str]) -> Output {
    run(Command::new("python3")
        .arg(root().join("examples/python/smime_agent_client.py"))
        .arg("--socket")
        .arg(socket)
        .args(args))
}

/// `openssl pkeyutl -verify` of a raw signature over the SHA-256 digest of `data`.
fn openssl_verify_digest(
    dir: &Path,
    pubkey: &Path,
    data: &Path,
    sig: &Path,
    opts: &[&str],
) -> Output {
    let digest = dir.join("digest.bin");
    assert_ok(
        &openssl_in(
            dir,
            &["dgst", "-sha256", "-binary", "-out", s(&digest), s(data)],
        ),
        "openssl dgst",
    );
    let mut args = vec![
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        s(pubkey),
        "-in",
        s(&digest),
        "-sigfile",
        s(sig),
    ];
    args.extend_from_slice(opts);
    run(Command::new("openssl").args(&args)) // may fail: no openssl_in
}

#[test]
fn python_example_lists_keys_like_smime() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let out = client(&agent.socket, &["keys"]);
    assert_ok(&out, "python keys");
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = keys.as_array().unwrap();
    let ours = agent.smime(&["keys", "--json"]);
    assert_ok(&ours, "smime keys --json");
    let theirs: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
    let ids = |v: &[serde_json::Value]| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(keys), ids(theirs.as_array().unwrap()));
    // The certificate it read off the token is the one provisioned, by OpenSSL's fingerprint.
    let rsa = keys.iter().find(|k| k["label"] == "alice-rsa").unwrap();
    assert_eq!(rsa["algorithm"], "rsa");
    assert_eq!(rsa["bits"], 2048);
    let fp = openssl_in(
        token.dir.path(),
        &[
            "x509",
            "-in",
            "alice-rsa.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    assert_ok(&fp, "openssl x509 -fingerprint");
    let fp = String::from_utf8_lossy(&fp.stdout)
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(rsa["certificate_sha256"], fp.as_str());
}

#[test]
fn python_example_signs_and_openssl_verifies() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, b"signed by a python client\n").unwrap();
    let tampered = dir.path().join("tampered");
    std::fs::write(&tampered, b"signed by a python client!\n").unwrap();
    // (label, --algorithm, openssl pkeyutl options)
    let cases: [(&str, Option<&str>, &[&str]); 3] = [
        ("alice-rsa", None, &["-pkeyopt", "digest:sha256"]),
        (
            "alice-rsa",
            Some("rsa-pss-sha256"),
            &[
                "-pkeyopt",
                "rsa_padding_mode:pss",
                "-pkeyopt",
                "rsa_pss_saltlen:32",
                "-pkeyopt",
                "digest:sha256",
            ],
        ),
        ("alice-ec", None, &[]),
    ];
    for (i, (label, alg, opts)) in cases.iter().enumerate() {
        let sig = dir.path().join(format!("{i}.sig"));
        let cert = dir.path().join(format!("{i}.cert.der"));
        let mut args = vec![
            "sign",
            "--key",
            label,
            "--in",
            s(&data),
            "--out",
            s(&sig),
            "--cert-out",
            s(&cert),
        ];
        if let Some(a) = alg {
            args.extend(["--algorithm", a]);
        }
        assert_ok(
            &client(&agent.socket, &args),
            &format!("python sign {label}"),
        );
        let pubkey = dir.path().join(format!("{i}.pub"));
        assert_ok(
            &openssl_in(
                dir.path(),
                &[
                    "x509",
                    "-inform",
                    "DER",
                    "-in",
                    s(&cert),
                    "-noout",
                    "-pubkey",
                    "-out",
                    s(&pubkey),
                ],
            ),
            "extract the public key",
        );
        let v = openssl_verify_digest(dir.path(), &pubkey, &data, &sig, opts);
        assert_ok(&v, &format!("openssl pkeyutl -verify ({label} {alg:?})"));
        let bad = openssl_verify_digest(dir.path(), &pubkey, &tampered, &sig, opts);
        assert!(!bad.status.success(), "a tampered input verified ({label})");
    }
    // A digest given in hex: what the agent signs is exactly that digest.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        b"signed by a python client\n",
    ));
    let sig = dir.path().join("hex.sig");
    assert_ok(
        &client(
            &agent.socket,
            &[
                "sign",
                "-k",
                "alice-ec",
                "--digest",
                &digest,
                "--out",
                s(&sig),
            ],
        ),
        "python sign --digest",
    );
    let v = openssl_verify_digest(
        dir.path(),
        &token.file("alice-ec.pub.pem"),
        &data,
        &sig,
        &[],
    );
    assert_ok(&v, "openssl pkeyutl -verify (--digest)");
    // A digest of the wrong length is the agent's BAD_REQUEST: exit 1, no file.
    let short = dir.path().join("short.sig");
    let out = client(
        &agent.socket,
        &[
            "sign",
            "-k",
            "alice-ec",
            "--digest",
            "abcd",
            "--out",
            s(&short),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent error 100"));
    assert!(!short.exists());
}

#[test]
fn python_example_unwraps_what_openssl_wrapped() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let pubkey = token.file("alice-rsa.pub.pem");
    let cek = dir.path().join("cek");
    assert_ok(
        &openssl_in(dir.path(), &["rand", "-out", s(&cek), "32"]),
        "openssl rand",
    );
    let cases: [(&str, &[&str]); 2] = [
        ("rsa-pkcs1", &[]),
        (
            "rsa-oaep-sha256",
            &[
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha256",
                "-pkeyopt",
                "rsa_mgf1_md:sha256",
            ],
        ),
    ];
    for (alg, opts) in cases {
        let wrapped = dir.path().join(format!("{alg}.wrapped"));
        let mut args = vec![
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            s(&pubkey),
            "-in",
            s(&cek),
            "-out",
            s(&wrapped),
        ];
        args.extend_from_slice(opts);
        assert_ok(&openssl_in(dir.path(), &args), "openssl pkeyutl -encrypt");
        let got: PathBuf = dir.path().join(format!("{alg}.out"));
        let out = client(
            &agent.socket,
            &[
                "decrypt",
                "--key",
                "alice-rsa",
                "--algorithm",
                alg,
                "--in",
                s(&wrapped),
                "--out",
                s(&got),
            ],
        );
        assert_ok(&out, &format!("python decrypt {alg}"));
        assert_eq!(
            std::fs::read(&got).unwrap(),
            std::fs::read(&cek).unwrap(),
            "{alg}"
        );
    }
    // Wrapped for another key: the token refuses (INVALID_INPUT), nothing is written.
    let bob = dir.path().join("bob.wrapped");
    assert_ok(
        &openssl_in(
            dir.path(),
            &[
                "pkeyutl",
                "-encrypt",
                "-pubin",
                "-inkey",
                s(&token.file("bob-rsa.pub.pem")),
                "-in",
                s(&cek),
                "-out",
                s(&bob),
            ],
        ),
        "openssl pkeyutl -encrypt (bob)",
    );
    let got = dir.path().join("bob.out");
    let out = client(
        &agent.socket,
        &[
            "decrypt",
            "--key",
            "alice-rsa",
            "--in",
            s(&bob),
            "--out",
            s(&got),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!got.exists(), "a failed decryption left a file");
}

#[test]
fn python_example_without_agent_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = client(&dir.path().join("no.sock"), &["keys"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start it with `smime-agent`"), "{err}");
}
