//! A client in another language: Python with cbor2 talks the protocol from PROTOCOL.md.

use std::process::Command;

use smime_tests::{Agent, Token, assert_ok, root, run};

#[test]
fn python_client_signs_and_openssl_verifies() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, b"signed by a python client").unwrap();
    for label in ["alice-rsa", "alice-ec"] {
        let sig = dir.path().join(format!("{label}.sig"));
        let out = run(Command::new("python3")
            .arg(root().join("tests/python/agent_client.py"))
            .arg(&agent.socket)
            .arg(label)
            .arg(&data)
            .arg(&sig));
        assert_ok(&out, "python client");
        let pubkey = dir.path().join(format!("{label}.pub"));
        assert_ok(
            &run(Command::new("openssl")
                .args(["x509", "-inform", "DER", "-noout", "-pubkey", "-in"])
                .arg(format!("{}.cert.der", sig.display()))
                .arg("-out")
                .arg(&pubkey)),
            "extract public key",
        );
        let v = run(Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pubkey)
            .arg("-signature")
            .arg(&sig)
            .arg(&data));
        assert_ok(&v, &format!("openssl dgst -verify ({label})"));
    }
}
