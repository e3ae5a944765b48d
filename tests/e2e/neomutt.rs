//! neomutt's S/MIME commands from `contrib/neomuttrc.smime`, run as neomutt runs them:
//! the values as neomutt itself parses the file (`neomutt -Q`), the %-expandos substituted
//! as its `fmt_smime_command` does, `sh -c`, the passphrase line on stdin, and the output
//! judged the way neomutt reads it (and with OpenSSL).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smime_tests::{
    Agent, SoftCa, SoftKey, Token, assert_ok, base64_decode, bin_dir, root, run, run_stdin, s,
};

/// The smime_* settings of contrib/neomuttrc.smime, as neomutt parses them.
fn settings() -> HashMap<String, String> {
    let names = [
        "smime_sign_command",
        "smime_encrypt_command",
        "smime_decrypt_command",
        "smime_verify_command",
        "smime_verify_opaque_command",
        "smime_pk7out_command",
        "smime_get_cert_command",
        "smime_get_signer_cert_command",
        "smime_get_cert_email_command",
        "smime_import_cert_command",
        "smime_encrypt_with",
        "smime_sign_digest_alg",
    ];
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("neomutt");
    cmd.arg("-n")
        .arg("-F")
        .arg(root().join("contrib/neomuttrc.smime"))
        .env("HOME", home.path());
    for n in names {
        cmd.args(["-Q", n]);
    }
    let out = run(&mut cmd);
    assert_ok(&out, "neomutt -Q");
    assert!(
        out.stderr.is_empty(),
        "neomutt reports errors in the rc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // set NAME = "VALUE", with \" and \\ escaped
        let (name, value) = line
            .strip_prefix("set ")
            .and_then(|l| l.split_once(" = "))
            .unwrap_or_else(|| panic!("unexpected neomutt -Q line: {line}"));
        let value = value.strip_prefix('"').unwrap().strip_suffix('"').unwrap();
        let mut v = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            v.push(if c == '\\' { chars.next().unwrap() } else { c });
        }
        map.insert(name.to_owned(), v);
    }
    for n in names {
        assert!(map.get(n).is_some_and(|v| !v.is_empty()), "{n} is not set");
    }
    map
}

/// What neomutt substitutes for one command.
#[derive(Default)]
struct Expandos<'a> {
    f: Option<&'a Path>,
    s: Option<&'a Path>,
    c: Option<String>,
    k: Option<PathBuf>,
    a: Option<&'a str>,
    d: Option<&'a str>,
    /// $smime_ca_location: %C is `-CAfile 'FILE'`.
    ca: Option<&'a Path>,
}

/// neomutt's `fmt_smime_command`: `%x` expandos unquoted (%C quoted), `%?x?A?` optional
/// text, `%%` a percent sign.
fn expand(template: &str, e: &Expandos<'_>) -> String {
    let value = |x: char| -> Option<String> {
        match x {
            'f' => e.f.map(|p| s(p).to_owned()),
            's' => e.s.map(|p| s(p).to_owned()),
            'c' => e.c.clone(),
            'k' => e.k.as_ref().map(|p| s(p).to_owned()),
            'a' => e.a.map(str::to_owned),
            'd' => e.d.map(str::to_owned),
            'i' => Some(String::new()),
            'C' => e.ca.map(|p| format!("-CAfile '{}'", s(p))),
            _ => panic!("unknown expando %{x}"),
        }
    };
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next().unwrap() {
            '%' => out.push('%'),
            '?' => {
                let x = chars.next().unwrap();
                assert_eq!(chars.next(), Some('?'));
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == '?' {
                        break;
                    }
                    inner.push(c);
                }
                if value(x).is_some() {
                    out.push_str(&expand(&inner, e));
                }
            }
            x => out.push_str(&value(x).unwrap_or_default()),
        }
    }
    out
}

/// Runs one setting as neomutt does: `sh -c`, with the (empty) passphrase line on stdin.
fn neomutt_runs(rc: &HashMap<String, String>, name: &str, e: &Expandos<'_>, env: &Env) -> Output {
    let cmd = expand(&rc[name], e);
    let out = run_stdin(
        Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("PATH", &env.path)
            .env("SMIME_AGENT_SOCK", &env.socket)
            .env("SMIME_CERT_STORE", &env.store)
            .env("SMIME_AGENT_NO_AUTOSTART", "1"),
        b"\n",
    );
    eprintln!(
        "{name}: {cmd}\n  -> {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct Env {
    path: String,
    socket: PathBuf,
    store: PathBuf,
}

/// neomutt's test for a good signature: exit 0 and "verification successful" (any case)
/// as the first line of stderr.
fn neomutt_goodsig(out: &Output) -> bool {
    out.status.success()
        && String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .is_some_and(|l| l.eq_ignore_ascii_case("verification successful"))
}

/// What neomutt makes of a command's entity output: it turns CRLF into LF as it reads.
fn as_read(out: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(out)
        .replace("\r\n", "\n")
        .into_bytes()
}

fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' && (i == 0 || data[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn b64_lines(der: &[u8]) -> String {
    let b64 = {
        let out = run_stdin(Command::new("base64").arg("-w").arg("76"), der);
        assert_ok(&out, "base64");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(base64_decode(b64.as_bytes()), der);
    b64
}

/// The multipart/signed message neomutt builds around the part it signed and the
/// signature the sign command wrote.
fn neomutt_signed_message(from: &str, entity: &[u8], sig: &[u8], micalg: &str) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\nTo: bob@example.org\nSubject: signed by neomutt\nMIME-Version: 1.0\n\
         Content-Type: multipart/signed; micalg={micalg}; protocol=\"application/x-pkcs7-signature\"; \
         boundary=\"b0undary\"\n\n--b0undary\n"
    )
    .into_bytes();
    m.extend_from_slice(entity);
    m.extend_from_slice(
        format!(
            "\n--b0undary\nContent-Type: application/x-pkcs7-signature; name=\"smime.p7s\"\n\
             Content-Disposition: attachment; filename=\"smime.p7s\"\n\
             Content-Transfer-Encoding: base64\n\n{}\n--b0undary--\n",
            b64_lines(sig)
        )
        .as_bytes(),
    );
    m
}

fn fingerprint(cert_pem: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert_pem));
    assert_ok(&out, "openssl x509 -fingerprint");
    String::from_utf8(out.stdout).unwrap()
}

const ENTITY: &[u8] = b"Content-Type: text/plain; charset=us-ascii\n\
Content-Disposition: inline\n\
\n\
Hello from neomutt.\n\
A line.\n";

#[test]
fn neomutt_commands_sign_verify_encrypt_decrypt_and_extract_certificates() {
    let rc = settings();
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let env = Env {
        path: format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        socket: agent.socket.clone(),
        store: d("store"),
    };
    let ca = token.file("ca.pem");
    let keys = d("keys"); // $smime_keys: never read
    let entity = d("entity");
    std::fs::write(&entity, ENTITY).unwrap();
    let a = rc["smime_encrypt_with"].as_str();
    let digest = rc["smime_sign_digest_alg"].as_str();
    assert_eq!((a, digest), ("aes256", "sha256"));

    // --- sign: a DER signature on stdout, nothing on stderr (neomutt shows any stderr
    // output as an error), for both keys.
    let mut messages = Vec::new();
    for (key, dig, micalg) in [
        ("alice-rsa", digest, "sha-256"),
        ("alice-ec", "sha384", "sha-384"),
    ] {
        let out = neomutt_runs(
            &rc,
            "smime_sign_command",
            &Expandos {
                f: Some(&entity),
                k: Some(keys.join(key)),
                d: Some(dig),
                ..Default::default()
            },
            &env,
        );
        assert_ok(&out, &format!("smime_sign_command ({key})"));
        assert!(out.stderr.is_empty(), "sign wrote to stderr");
        assert_eq!(out.stdout[0], 0x30, "not DER");
        let sig = d(&format!("{key}.p7s"));
        std::fs::write(&sig, &out.stdout).unwrap();
        // OpenSSL checks the signature over the canonical (CRLF) part...
        let canon = d("entity.crlf");
        std::fs::write(&canon, crlf(ENTITY)).unwrap();
        let v = run(Command::new("openssl").args([
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            s(&sig),
            "-content",
            s(&canon),
            "-CAfile",
            s(&ca),
            "-purpose",
            "smimesign",
            "-out",
            "/dev/null",
        ]));
        assert_ok(
            &v,
            &format!("openssl cms -verify of the neomutt signature ({key})"),
        );
        // ... and the message neomutt assembles verifies as a mail with openssl smime.
        let msg = d(&format!("{key}.eml"));
        std::fs::write(
            &msg,
            neomutt_signed_message(
                "Alice Example <alice@example.org>",
                ENTITY,
                &out.stdout,
                micalg,
            ),
        )
        .unwrap();
        let v = run(Command::new("openssl").args([
            "smime",
            "-verify",
            "-in",
            s(&msg),
            "-CAfile",
            s(&ca),
            "-out",
            "/dev/null",
        ]));
        assert_ok(
            &v,
            &format!("openssl smime -verify of the neomutt message ({key})"),
        );
        messages.push((key, msg, sig, canon));
    }

    // --- verify (multipart/signed): %s the DER signature, %f the CRLF content.
    let (_, msg, sig, canon) = &messages[0];
    let e = Expandos {
        f: Some(canon),
        s: Some(sig),
        ca: Some(&ca),
        ..Default::default()
    };
    let out = neomutt_runs(&rc, "smime_verify_command", &e, &env);
    assert!(
        neomutt_goodsig(&out),
        "a good signature is not good for neomutt"
    );
    assert!(
        out.stdout.is_empty(),
        "neomutt closes the command's stdout at once"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Alice Example"));
    // Tampered content, or a CA that did not issue the signer: not good.
    let bad = d("tampered");
    std::fs::write(&bad, crlf(&ENTITY.to_ascii_uppercase())).unwrap();
    let out = neomutt_runs(
        &rc,
        "smime_verify_command",
        &Expandos {
            f: Some(&bad),
            s: Some(sig),
            ca: Some(&ca),
            ..Default::default()
        },
        &env,
    );
    assert!(!neomutt_goodsig(&out), "a tampered part verified");
    let other = SoftCa::new(dir.path(), "other");
    let out = neomutt_runs(
        &rc,
        "smime_verify_command",
        &Expandos {
            f: Some(canon),
            s: Some(sig),
            ca: Some(&other.cert),
            ..Default::default()
        },
        &env,
    );
    assert!(!neomutt_goodsig(&out), "an untrusted signer verified");
    // A signature OpenSSL made for a software identity (as another client would send).
    let carol = other.issue("carol", "Carol Peer", "carol@example.net", SoftKey::Rsa);
    let osig = d("openssl.p7s");
    assert_ok(
        &run(Command::new("openssl").args([
            "smime",
            "-sign",
            "-in",
            s(&entity),
            "-signer",
            s(&carol.cert),
            "-inkey",
            s(&carol.key),
            "-outform",
            "DER",
            "-out",
            s(&osig),
        ])),
        "openssl smime -sign",
    );
    let out = neomutt_runs(
        &rc,
        "smime_verify_command",
        &Expandos {
            f: Some(canon),
            s: Some(&osig),
            ca: Some(&other.cert),
            ..Default::default()
        },
        &env,
    );
    assert!(
        neomutt_goodsig(&out),
        "OpenSSL's signature is not good for neomutt"
    );

    // --- verify opaque: %s the DER signed-data; the entity on stdout.
    let opaque = d("opaque.p7m");
    assert_ok(
        &run(Command::new("openssl").args([
            "smime",
            "-sign",
            "-nodetach",
            "-in",
            s(&entity),
            "-signer",
            s(&carol.cert),
            "-inkey",
            s(&carol.key),
            "-outform",
            "DER",
            "-out",
            s(&opaque),
        ])),
        "openssl smime -sign -nodetach",
    );
    let ours = d("ours.p7m");
    assert_ok(
        &agent.sign("alice-ec", &canon.clone(), &ours, &["--opaque", "--der"]),
        "smime sign --opaque",
    );
    for (file, anchor) in [(&opaque, &other.cert), (&ours, &ca)] {
        let out = neomutt_runs(
            &rc,
            "smime_verify_opaque_command",
            &Expandos {
                s: Some(file),
                ca: Some(anchor),
                ..Default::default()
            },
            &env,
        );
        assert!(neomutt_goodsig(&out), "opaque {} not good", file.display());
        // neomutt turns CRLF into LF as it reads the entity.
        assert_eq!(as_read(&out.stdout), ENTITY);
    }

    // --- encrypt: %c the recipients' certificate files, unquoted, space-separated.
    let c = format!("{} {}", s(&carol.cert), s(&token.file("alice-rsa.pem")));
    let out = neomutt_runs(
        &rc,
        "smime_encrypt_command",
        &Expandos {
            f: Some(&entity),
            c: Some(c),
            a: Some(a),
            ..Default::default()
        },
        &env,
    );
    assert_ok(&out, "smime_encrypt_command");
    assert!(out.stderr.is_empty(), "encrypt wrote to stderr");
    let enc = d("enc.p7m");
    std::fs::write(&enc, &out.stdout).unwrap();
    let print = run(Command::new("openssl").args([
        "cms",
        "-cmsout",
        "-print",
        "-noout",
        "-inform",
        "DER",
        "-in",
        s(&enc),
    ]));
    assert_ok(&print, "openssl cms -cmsout -print");
    assert!(
        String::from_utf8_lossy(&print.stdout).contains("aes-256-cbc"),
        "neomutt labels it enveloped-data: it must be AES-256-CBC EnvelopedData"
    );
    // Carol (OpenSSL, software key) reads it...
    let plain = run(Command::new("openssl").args([
        "smime",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        s(&enc),
        "-recip",
        s(&carol.cert),
        "-inkey",
        s(&carol.key),
    ]));
    assert_ok(&plain, "openssl smime -decrypt");
    assert_eq!(plain.stdout, ENTITY);
    // --- decrypt: ... and so does Alice through neomutt's decrypt command.
    let e = Expandos {
        f: Some(&enc),
        k: Some(keys.join("alice-rsa")),
        ..Default::default()
    };
    let out = neomutt_runs(&rc, "smime_decrypt_command", &e, &env);
    assert_ok(&out, "smime_decrypt_command");
    assert_eq!(out.stdout, ENTITY);
    // What OpenSSL encrypted to Alice's EC key (ECDH) decrypts too.
    let ecenc = d("ec.p7m");
    assert_ok(
        &run(Command::new("openssl").args([
            "cms",
            "-encrypt",
            "-aes256",
            "-outform",
            "DER",
            "-in",
            s(&entity),
            "-out",
            s(&ecenc),
            s(&token.file("alice-ec.pem")),
        ])),
        "openssl cms -encrypt (EC)",
    );
    let out = neomutt_runs(
        &rc,
        "smime_decrypt_command",
        &Expandos {
            f: Some(&ecenc),
            ..Default::default()
        },
        &env,
    );
    assert_ok(&out, "smime_decrypt_command (EC)");
    assert_eq!(as_read(&out.stdout), ENTITY); // openssl canonicalized it to CRLF
    // Not for us: a failure neomutt can show, and no output.
    let notours = d("notours.p7m");
    assert_ok(
        &run(Command::new("openssl").args([
            "cms",
            "-encrypt",
            "-aes256",
            "-outform",
            "DER",
            "-in",
            s(&entity),
            "-out",
            s(&notours),
            s(&carol.cert),
        ])),
        "openssl cms -encrypt (carol)",
    );
    let out = neomutt_runs(
        &rc,
        "smime_decrypt_command",
        &Expandos {
            f: Some(&notours),
            ..Default::default()
        },
        &env,
    );
    assert!(!out.status.success() && out.stdout.is_empty() && !out.stderr.is_empty());

    // --- pk7out, then get_cert: the certificates of a signed message, as PEM.
    let out = neomutt_runs(
        &rc,
        "smime_pk7out_command",
        &Expandos {
            f: Some(msg),
            ..Default::default()
        },
        &env,
    );
    assert_ok(&out, "smime_pk7out_command");
    assert!(out.stdout.starts_with(b"-----BEGIN PKCS7-----\n"));
    let p7 = d("p7.pem");
    std::fs::write(&p7, &out.stdout).unwrap();
    let theirs = run(Command::new("openssl").args(["pkcs7", "-print_certs", "-in", s(&p7)]));
    assert_ok(&theirs, "openssl pkcs7 -print_certs of our pk7out");
    let out = neomutt_runs(
        &rc,
        "smime_get_cert_command",
        &Expandos {
            f: Some(&p7),
            ..Default::default()
        },
        &env,
    );
    assert_ok(&out, "smime_get_cert_command");
    let certs = d("certs.pem");
    std::fs::write(&certs, &out.stdout).unwrap();
    let pem_blocks = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .matches("-----BEGIN CERTIFICATE-----")
            .count()
    };
    assert_eq!(pem_blocks(&out.stdout), pem_blocks(&theirs.stdout));
    assert!(pem_blocks(&out.stdout) >= 1);
    assert_eq!(
        fingerprint(&certs),
        fingerprint(&token.file("alice-rsa.pem"))
    );

    // --- get_signer_cert: the signer's certificate into %c. neomutt creates %c first and
    // reads it through the handle it already holds, so the data must land in that file.
    let signer_cert = |msg: &Path, name: &str| -> (Output, Vec<u8>) {
        use std::io::Read;
        let path = d(name);
        let mut held = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let e = Expandos {
            f: Some(msg),
            c: Some(s(&path).to_owned()),
            ..Default::default()
        };
        let out = neomutt_runs(&rc, "smime_get_signer_cert_command", &e, &env);
        let mut got = Vec::new();
        held.read_to_end(&mut got).unwrap();
        (out, got)
    };
    let (out, got) = signer_cert(msg, "signer.pem");
    assert_ok(&out, "smime_get_signer_cert_command");
    let signer = d("signer-copy.pem");
    std::fs::write(&signer, &got).unwrap();
    assert_eq!(
        fingerprint(&signer),
        fingerprint(&token.file("alice-rsa.pem"))
    );
    let (_, ec_msg, _, _) = &messages[1];
    let (out, got) = signer_cert(ec_msg, "ec-signer.pem");
    assert_ok(&out, "signer (EC)");
    let ec_signer = d("ec-signer-copy.pem");
    std::fs::write(&ec_signer, &got).unwrap();
    assert_eq!(
        fingerprint(&ec_signer),
        fingerprint(&token.file("alice-ec.pem"))
    );
    // A tampered message yields an empty certificate file (neomutt: "no certfile").
    let forged = d("forged.eml");
    let text = String::from_utf8(std::fs::read(msg).unwrap()).unwrap();
    std::fs::write(
        &forged,
        text.replace("Hello from neomutt.", "Hello from mallory."),
    )
    .unwrap();
    let (out, got) = signer_cert(&forged, "nothing.pem");
    assert_eq!(out.status.code(), Some(1));
    assert!(got.is_empty());

    // --- get_cert_email: one address per line, as openssl x509 -email prints them.
    let out = neomutt_runs(
        &rc,
        "smime_get_cert_email_command",
        &Expandos {
            f: Some(&signer),
            ..Default::default()
        },
        &env,
    );
    assert_ok(&out, "smime_get_cert_email_command");
    let theirs = run(Command::new("openssl").args(["x509", "-noout", "-email", "-in", s(&signer)]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&theirs.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice@example.org\n");

    // --- import: the certificates file into smime's store; then encrypt by address.
    let out = neomutt_runs(
        &rc,
        "smime_import_cert_command",
        &Expandos {
            f: Some(&carol.cert),
            ..Default::default()
        },
        &env,
    );
    assert_ok(&out, "smime_import_cert_command");
    let by_addr = run_stdin(
        Command::new(bin_dir().join("smime"))
            .args([
                "encrypt",
                "--to",
                "carol@example.net",
                "-in",
                s(&entity),
                "-outform",
                "DER",
            ])
            .env("SMIME_CERT_STORE", &env.store),
        b"",
    );
    assert_ok(&by_addr, "smime encrypt --to an imported address");
}

/// neomutt itself, on a pty (script(1)), driven by keystrokes sent when the screen shows
/// what it waits for: `steps` are (text to wait for, keys to send). Returns the screen
/// output. Panics with the screen if a text does not appear within 30 s.
fn drive_neomutt(home: &Path, rc: &Path, env: &Env, steps: &[(&str, &[u8])]) -> String {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let cmd = format!("neomutt -n -F '{}' -f '{}'", s(rc), s(&home.join("mbox")));
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("HOME", home)
        .env("TERM", "xterm")
        .env("PATH", &env.path)
        .env("SMIME_AGENT_SOCK", &env.socket)
        .env("SMIME_CERT_STORE", &env.store)
        .env("SMIME_AGENT_NO_AUTOSTART", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = Arc::clone(&screen);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = 0;
    for (wait, keys) in steps {
        let start = Instant::now();
        loop {
            let text = String::from_utf8_lossy(&screen.lock().unwrap()[seen..]).into_owned();
            if let Some(i) = text.find(wait) {
                seen += text[..i + wait.len()].len();
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!(
                    "neomutt never showed {wait:?}; screen:\n{}",
                    String::from_utf8_lossy(&screen.lock().unwrap())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200)); // let it finish drawing
        stdin.write_all(keys).unwrap();
        stdin.flush().unwrap();
    }
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "neomutt did not quit; screen:\n{}",
                String::from_utf8_lossy(&screen.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    reader.join().unwrap();
    String::from_utf8_lossy(&screen.lock().unwrap()).into_owned()
}

#[test]
fn neomutt_itself_decrypts_and_verifies_through_the_agent() {
    settings(); // the rc parses cleanly
    let token = Token::new();
    let agent = Agent::start(&token);
    let home = tempfile::tempdir().unwrap();
    let h = |n: &str| home.path().join(n);
    let env = Env {
        path: format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        socket: agent.socket.clone(),
        store: h("store"),
    };
    let rc = h("neomuttrc");
    std::fs::write(
        &rc,
        format!(
            "source '{}'\nset smime_default_key=\"alice-rsa\"\nset folder='{}'\n\
             set smime_ca_location='{}'\nset pipe_decode=yes\nset wait_key=no\nset quit=yes\n\
             set crypt_verify_sig=yes\n",
            s(&root().join("contrib/neomuttrc.smime")),
            s(home.path()),
            s(&token.file("ca.pem")),
        ),
    )
    .unwrap();
    let plain = h("plain.eml");
    std::fs::write(
        &plain,
        "From: Bob <bob@example.org>\nTo: Alice <alice@example.org>\nSubject: secret\n\n\
         the secret for neomutt\n",
    )
    .unwrap();

    // An encrypted mail (made by OpenSSL for Alice's token certificate): neomutt pipes
    // the decrypted message, through smime_decrypt_command and the agent.
    let enc = run(Command::new("openssl").args([
        "smime",
        "-encrypt",
        "-aes256",
        "-from",
        "bob@example.org",
        "-to",
        "alice@example.org",
        "-subject",
        "secret",
        "-in",
        s(&plain),
        s(&token.file("alice-rsa.pem")),
    ]));
    assert_ok(&enc, "openssl smime -encrypt");
    let mut mbox = b"From bob@example.org Mon Nov 23 10:00:00 2026\n".to_vec();
    mbox.extend_from_slice(&enc.stdout);
    mbox.push(b'\n');
    std::fs::write(h("mbox"), &mbox).unwrap();
    let out = h("decrypted");
    drive_neomutt(
        home.path(),
        &rc,
        &env,
        &[
            ("NeoMutt: ", b"|"),
            (
                "Pipe to command:",
                format!("cat > '{}'\r", s(&out)).as_bytes(),
            ),
            ("Enter S/MIME passphrase:", b"\r"),
            ("NeoMutt: ", b"q"),
        ],
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("the secret for neomutt"), "{text}");

    // A clear-signed mail from Alice (made by smime with the token key): neomutt shows it
    // with our verdict, through smime_verify_command.
    let signed = agent.smime(&["sign", "--key", "alice-rsa", "--mime", "--in", s(&plain)]);
    assert_ok(&signed, "smime sign --mime");
    let signed_text = String::from_utf8_lossy(&signed.stdout).replace(
        "From: Bob <bob@example.org>",
        "From: Alice <alice@example.org>",
    );
    // (Signing covers the body, not these headers: the From: line is ours to choose.)
    let mut mbox = b"From alice@example.org Mon Nov 23 10:00:00 2026\n".to_vec();
    mbox.extend_from_slice(signed_text.replace("\r\n", "\n").as_bytes());
    mbox.push(b'\n');
    std::fs::write(h("mbox"), &mbox).unwrap();
    let screen = drive_neomutt(
        home.path(),
        &rc,
        &env,
        &[
            ("NeoMutt: ", b"\r"),
            ("Good signature from", b"q"),
            ("NeoMutt: ", b"q"),
        ],
    );
    let _ = std::fs::copy(h("debug.log0"), "/tmp/nm-debug.log");
    assert!(screen.contains("Verification successful"), "{screen}");
}
