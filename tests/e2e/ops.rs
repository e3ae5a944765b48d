//! The agent's key-unwrapping operations against values OpenSSL computes with the public
//! halves: RSA decrypt (PKCS#1 v1.5, OAEP SHA-1 on the token, OAEP SHA-256 through the
//! raw-RSA fallback) and ECDH.

use std::path::Path;
use std::process::Command;

use smime::agent::{AgentClient, AgentError};
use smime_proto::{DecryptAlgorithm, ErrorCode, KeyInfo};
use smime_tests::{Agent, Token, assert_ok, run};

fn openssl(dir: &Path, args: &[&str]) {
    assert_ok(
        &run(Command::new("openssl").args(args).current_dir(dir)),
        &format!("openssl {args:?}"),
    );
}

fn key<'a>(keys: &'a [KeyInfo], label: &str) -> &'a KeyInfo {
    keys.iter().find(|k| k.label == label).unwrap()
}

#[test]
fn rsa_decrypt_matches_what_openssl_encrypted() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let mut c = AgentClient::connect(&agent.socket).unwrap();
    let keys = c.list_keys().unwrap();
    let bob = key(&keys, "bob-rsa");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(token.file("bob-rsa.pem"), d.join("bob.pem")).unwrap();
    std::fs::write(d.join("cek"), b"0123456789abcdef0123456789abcdef").unwrap();
    for (alg, opts) in [
        (
            DecryptAlgorithm::RsaPkcs1,
            &["-pkeyopt", "rsa_padding_mode:pkcs1"][..],
        ),
        (
            DecryptAlgorithm::RsaOaepSha1,
            &["-pkeyopt", "rsa_padding_mode:oaep"][..],
        ),
        (
            DecryptAlgorithm::RsaOaepSha256,
            &[
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha256",
                "-pkeyopt",
                "rsa_mgf1_md:sha256",
            ][..],
        ),
    ] {
        let mut args = vec![
            "pkeyutl", "-encrypt", "-certin", "-inkey", "bob.pem", "-in", "cek", "-out", "ct",
        ];
        args.extend_from_slice(opts);
        openssl(d, &args);
        let ct = std::fs::read(d.join("ct")).unwrap();
        let cek = c.decrypt(&bob.id, alg, &ct).unwrap();
        assert_eq!(cek.expose(), b"0123456789abcdef0123456789abcdef", "{alg:?}");
        // A corrupted ciphertext is an operation error, and the connection stays usable.
        let mut bad = ct.clone();
        bad[10] ^= 0xff;
        match c.decrypt(&bob.id, alg, &bad) {
            Err(AgentError::Agent(e)) => {
                assert_eq!(e.code, ErrorCode::INVALID_INPUT, "{alg:?}: {e}")
            }
            Ok(_) => panic!("{alg:?}: a corrupted ciphertext decrypted"),
            Err(e) => panic!("{alg:?}: {e}"),
        }
    }
    assert!(
        agent.log_text().contains("unpadding on the host"),
        "SoftHSM has no OAEP-SHA256: the fallback ran"
    );
}

#[test]
fn ecdh_matches_openssl_derive() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let mut c = AgentClient::connect(&agent.socket).unwrap();
    let keys = c.list_keys().unwrap();
    let alice = key(&keys, "alice-ec");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(token.file("alice-ec.pem"), d.join("alice.pem")).unwrap();
    openssl(
        d,
        &[
            "x509",
            "-in",
            "alice.pem",
            "-pubkey",
            "-noout",
            "-out",
            "alice.pub",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "eph.key",
        ],
    );
    openssl(
        d,
        &[
            "pkey", "-in", "eph.key", "-pubout", "-outform", "DER", "-out", "eph.spki",
        ],
    );
    openssl(
        d,
        &[
            "pkeyutl",
            "-derive",
            "-inkey",
            "eph.key",
            "-peerkey",
            "alice.pub",
            "-out",
            "z",
        ],
    );
    let spki = std::fs::read(d.join("eph.spki")).unwrap();
    let point = &spki[spki.len() - 65..];
    assert_eq!(point[0], 0x04);
    let z = c.ecdh(&alice.id, point).unwrap();
    assert_eq!(z.expose(), std::fs::read(d.join("z")).unwrap().as_slice());
    // ECDH with an RSA key, or RSA decrypt with the EC key, is refused.
    let bob = key(&keys, "bob-rsa");
    assert!(
        matches!(c.ecdh(&bob.id, point), Err(AgentError::Agent(e)) if e.code == ErrorCode::OPERATION_NOT_ALLOWED || e.code == ErrorCode::UNSUPPORTED_ALGORITHM)
    );
    assert!(matches!(
        c.decrypt(&alice.id, DecryptAlgorithm::RsaPkcs1, &[0; 32]),
        Err(AgentError::Agent(_))
    ));
    // A point that is not uncompressed SEC1.
    assert!(
        matches!(c.ecdh(&alice.id, &point[1..]), Err(AgentError::Agent(e)) if e.code == ErrorCode::BAD_REQUEST)
    );
}
