//! The CLI as its ecosystem sees it: man pages and shell completions generated from the
//! clap definitions, the install script, OpenSSL-style flags, JSON output, and error
//! messages that name the fix.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use smime_tests::{
    Agent, AgentOptions, Token, assert_ok, bin_dir, built, openssl_verify, root, run, s,
};

/// The subcommands `smime help` lists (besides `help` itself), read from its output.
fn subcommands() -> Vec<String> {
    let out = run(Command::new(built("smime")).arg("help"));
    assert_ok(&out, "smime help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let list = text.split("Commands:").nth(1).expect("a Commands: section");
    let list = list.split("\n\n").next().unwrap();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    names
}

/// `man -l PAGE`, rendered as plain text.
fn man(page: &Path) -> String {
    let out = run(Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "200")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MAN_KEEP_FORMATTING", ""));
    assert_ok(&out, &format!("man -l {}", page.display()));
    assert!(
        out.stderr.is_empty(),
        "man -l {}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Strip overstrike (bold/underline) if a pager-less man left any.
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut text = String::new();
    for c in raw.chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    // Plain hyphens, and single spaces (man justifies lines), keeping the indentation.
    text.replace(['\u{2010}', '\u{2212}'], "-")
        .lines()
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            format!(
                "{}{}",
                &l[..indent],
                l.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn xtask(args: &[&str], dir: &Path) -> Output {
    let out = run(Command::new(built("xtask")).args(args).arg(dir));
    assert_ok(&out, &format!("xtask {args:?}"));
    out
}

#[test]
fn man_pages_cover_every_subcommand_and_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    xtask(&["man"], dir.path());
    let main = man(&dir.path().join("smime.1"));
    for section in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "SUBCOMMANDS",
        "EXIT STATUS",
        "ENVIRONMENT",
    ] {
        assert!(main.contains(section), "smime(1) lacks {section}:\n{main}");
    }
    let exit = main.split("EXIT STATUS").nth(1).unwrap();
    let exit = exit.split("ENVIRONMENT").next().unwrap();
    for (code, words) in [
        ("0", "success"),
        ("1", "bad signature or verification failure"),
        ("2", "usage error"),
        ("3", "agent or the token is unavailable"),
        ("4", "any other error"),
    ] {
        assert!(
            exit.lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} ")) && l.contains(words)),
            "exit status {code} ({words}) is not documented:\n{exit}"
        );
    }
    for sub in subcommands() {
        assert!(
            main.contains(&format!("smime-{sub}(1)")),
            "smime(1) does not list {sub}"
        );
        let page = man(&dir.path().join(format!("smime-{sub}.1")));
        assert!(
            page.contains(&format!("smime {sub}")),
            "smime-{sub}(1):\n{page}"
        );
        assert!(
            page.contains("EXIT STATUS"),
            "smime-{sub}(1) lacks EXIT STATUS"
        );
        assert!(
            page.contains("--socket"),
            "smime-{sub}(1) lacks the global --socket"
        );
    }
    // Nested families get a page per command, and `smime card` its walkthrough.
    let card = man(&dir.path().join("smime-card.1"));
    assert!(card.contains("Provisioning a card for S/MIME"), "{card}");
    assert!(card.contains("smime-card-generate(1)"), "{card}");
    let generate = man(&dir.path().join("smime-card-generate.1"));
    for flag in [
        "smime card generate",
        "--slot",
        "--csr",
        "--email",
        "rsa2048",
        "EXIT STATUS",
    ] {
        assert!(
            generate.contains(flag),
            "smime-card-generate(1) lacks {flag}"
        );
    }
    // Each page carries its own flags, as --help shows them.
    let sign = man(&dir.path().join("smime-sign.1"));
    for flag in ["--key", "--opaque", "--encrypt-to", "--digest", "sha384"] {
        assert!(sign.contains(flag), "smime-sign(1) lacks {flag}");
    }
    let agent = man(&dir.path().join("smime-agent.1"));
    for flag in [
        "--module",
        "--pin-file",
        "--foreground",
        "SMIME_AGENT_MODULE",
        "EXIT STATUS",
    ] {
        assert!(agent.contains(flag), "smime-agent(1) lacks {flag}");
    }
}

/// Runs a bash completion function as `complete -F` does: `COMP_WORDS`, `COMP_CWORD` and
/// the arguments (command, current word, previous word).
fn complete(file: &Path, func: &str, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let script = format!(
        "set -u; source '{}' || exit 9; COMP_WORDS=({}); COMP_CWORD={cword}; \
         {func} '{}' '{}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display(),
        quoted.join(" "),
        words[0],
        words[cword],
    );
    let out = run(Command::new("bash").arg("--norc").arg("-c").arg(&script));
    assert_ok(&out, &format!("bash completion of {words:?}"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn shell_completions_complete_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    xtask(&["completions"], dir.path());
    for f in [
        "bash/smime",
        "bash/smime-agent",
        "zsh/_smime",
        "zsh/_smime-agent",
        "fish/smime.fish",
        "fish/smime-agent.fish",
    ] {
        let len = std::fs::metadata(dir.path().join(f)).unwrap().len();
        assert!(len > 500, "{f} is only {len} bytes");
    }
    let smime = dir.path().join("bash/smime");
    assert_eq!(complete(&smime, "_smime", &["smime", "si"]), ["sign"]);
    assert_eq!(complete(&smime, "_smime", &["smime", "de"]), ["decrypt"]);
    assert_eq!(
        complete(&smime, "_smime", &["smime", "verify", "--no-c"]),
        ["--no-chain"]
    );
    assert_eq!(
        complete(
            &smime,
            "_smime",
            &["smime", "encrypt", "--cipher", "aes256"]
        ),
        ["aes256-gcm", "aes256-cbc"]
    );
    let agent = dir.path().join("bash/smime-agent");
    let mut pin = complete(&agent, "_smime__agent", &["smime-agent", "--pin"]);
    pin.sort();
    assert_eq!(pin, ["--pin-file", "--pin-token", "--pinentry"]);
    // zsh parses its functions; fish completes as bash does.
    for f in ["zsh/_smime", "zsh/_smime-agent"] {
        let out = run(Command::new("zsh").arg("-n").arg(dir.path().join(f)));
        assert_ok(&out, &format!("zsh -n {f}"));
    }
    let fish = |line: &str| {
        let out = run(Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg(format!(
                "source '{}'; complete -C '{line}'",
                s(&dir.path().join("fish/smime.fish"))
            )));
        assert_ok(&out, &format!("fish completion of {line}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(fish("smime si"), ["sign"]);
    assert!(fish("smime verify --no-c").contains(&"--no-chain".to_owned()));
}

#[test]
fn install_script_puts_everything_in_place() {
    let dest = tempfile::tempdir().unwrap();
    let target = bin_dir();
    let out = run(Command::new(root().join("scripts/install.sh"))
        .args(["--debug", "--no-build", "/opt/smime"])
        .env("DESTDIR", dest.path())
        .env("CARGO_TARGET_DIR", target.parent().unwrap()));
    assert_ok(&out, "scripts/install.sh");
    let p = dest.path().join("opt/smime");
    for f in [
        "bin/smime",
        "bin/smime-agent",
        "share/man/man1/smime.1",
        "share/man/man1/smime-sign.1",
        "share/man/man1/smime-agent.1",
        "share/bash-completion/completions/smime",
        "share/zsh/site-functions/_smime",
        "share/fish/vendor_completions.d/smime-agent.fish",
        "lib/systemd/user/smime-agent.socket",
        "lib/systemd/user/smime-agent.service",
    ] {
        assert!(p.join(f).is_file(), "{f} was not installed");
    }
    let version = run(Command::new(p.join("bin/smime")).arg("--version"));
    assert_ok(&version, "installed smime --version");
    let unit = std::fs::read_to_string(p.join("lib/systemd/user/smime-agent.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/opt/smime/bin/smime-agent --foreground\n"),
        "{unit}"
    );
    // The installed page renders.
    assert!(man(&p.join("share/man/man1/smime.1")).contains("EXIT STATUS"));
    // A relative PREFIX is a usage error.
    let bad = run(Command::new(root().join("scripts/install.sh")).args(["--no-build", "rel"]));
    assert_eq!(bad.status.code(), Some(2));
}

const MAIL: &str = "From: Alice Example <alice@example.org>\n\
To: Bob Example <bob@example.org>\n\
Subject: openssl habits\n\
\n\
Signed with -in, -out and -outform.\n";

#[test]
fn openssl_style_flags_work_and_openssl_agrees() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let data = d("data");
    std::fs::write(&data, b"content signed with openssl spellings\n").unwrap();
    let ca = token.file("ca.pem");

    // -in/-out/-outform PEM: a detached PEM signature that openssl cms checks.
    let pem = d("sig.pem");
    let out = agent.smime(&[
        "sign",
        "-k",
        "alice-rsa",
        "-in",
        s(&data),
        "-out",
        s(&pem),
        "-outform",
        "PEM",
    ]);
    assert_ok(&out, "smime sign -in -out -outform PEM");
    assert!(
        std::fs::read(&pem)
            .unwrap()
            .starts_with(b"-----BEGIN CMS-----")
    );
    assert_ok(
        &openssl_verify(&pem, &data, &ca, "PEM"),
        "openssl cms -verify (PEM)",
    );
    // ... and smime verify with openssl's names: -inform, -content, -CAfile.
    let out = agent.smime(&[
        "verify",
        "-in",
        s(&pem),
        "-inform",
        "PEM",
        "-content",
        s(&data),
        "-CAfile",
        s(&ca),
    ]);
    assert_ok(&out, "smime verify -in -inform -content -CAfile");
    // -in=FILE and -outform der (any case): DER, the default.
    let der = d("sig.der");
    let in_eq = format!("-in={}", s(&data));
    let out = agent.smime(&[
        "sign",
        "-k",
        "alice-ec",
        &in_eq,
        "-out",
        s(&der),
        "-outform",
        "der",
    ]);
    assert_ok(&out, "smime sign -in=FILE -outform der");
    assert_eq!(std::fs::read(&der).unwrap()[0], 0x30, "not DER");
    assert_ok(
        &openssl_verify(&der, &data, &ca, "DER"),
        "openssl cms -verify (DER)",
    );
    // A tampered content fails with the same flags: exit 1.
    let other = d("other");
    std::fs::write(&other, b"something else\n").unwrap();
    let out = agent.smime(&[
        "verify",
        "-in",
        s(&der),
        "-content",
        s(&other),
        "-CAfile",
        s(&ca),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // -noverify: the signature only, like openssl cms -noverify (no trust anchor given).
    let out = agent.smime(&["verify", "-in", s(&der), "-content", s(&data), "-noverify"]);
    assert_ok(&out, "smime verify -noverify");

    // -outform SMIME: a multipart/signed mail that openssl smime reads.
    let mail = d("mail.eml");
    std::fs::write(&mail, MAIL).unwrap();
    let signed = d("signed.eml");
    let out = agent.smime(&[
        "sign",
        "-k",
        "alice-rsa",
        "-in",
        s(&mail),
        "-out",
        s(&signed),
        "-outform",
        "SMIME",
    ]);
    assert_ok(&out, "smime sign -outform SMIME");
    assert!(String::from_utf8_lossy(&std::fs::read(&signed).unwrap()).contains("multipart/signed"));
    let o = run(Command::new("openssl").args([
        "cms",
        "-verify",
        "-in",
        s(&signed),
        "-CAfile",
        s(&ca),
        "-out",
        "/dev/null",
    ]));
    assert_ok(&o, "openssl cms -verify of -outform SMIME");
    // --opaque -outform DER: raw CMS with the content inside; openssl extracts it.
    let opaque = d("opaque.der");
    let out = agent.smime(&[
        "sign",
        "-k",
        "alice-rsa",
        "--opaque",
        "-in",
        s(&data),
        "-out",
        s(&opaque),
        "-outform",
        "DER",
    ]);
    assert_ok(&out, "smime sign --opaque -outform DER");
    let got = d("got");
    let o = run(Command::new("openssl").args([
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        s(&opaque),
        "-CAfile",
        s(&ca),
        "-purpose",
        "smimesign",
        "-out",
        s(&got),
    ]));
    assert_ok(&o, "openssl cms -verify of --opaque -outform DER");
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&data).unwrap());

    // encrypt -outform PEM / DER, decrypt -inform: openssl parses the CMS, we decrypt it.
    for (form, head) in [
        ("PEM", b"-----BEGIN CMS-----".as_slice()),
        ("DER", b"\x30".as_slice()),
    ] {
        let enc = d(&format!("enc.{form}"));
        let out = agent.smime(&[
            "encrypt",
            "-in",
            s(&data),
            "-out",
            s(&enc),
            "-outform",
            form,
            "--to",
            s(&token.file("alice-rsa.pem")),
        ]);
        assert_ok(&out, &format!("smime encrypt -outform {form}"));
        assert!(std::fs::read(&enc).unwrap().starts_with(head), "{form}");
        let o = run(Command::new("openssl").args([
            "cms",
            "-cmsout",
            "-print",
            "-noout",
            "-inform",
            form,
            "-in",
            s(&enc),
        ]));
        assert_ok(&o, &format!("openssl cms -cmsout -inform {form}"));
        let plain = d(&format!("plain.{form}"));
        let out = agent.smime(&[
            "decrypt",
            "-in",
            s(&enc),
            "-inform",
            form,
            "-out",
            s(&plain),
        ]);
        assert_ok(&out, &format!("smime decrypt -inform {form}"));
        assert_eq!(
            std::fs::read(&plain).unwrap(),
            std::fs::read(&data).unwrap()
        );
    }

    // Usage errors: exit 2, nothing written.
    let nothing = d("nothing");
    for args in [
        vec![
            "sign",
            "-k",
            "alice-rsa",
            "-in",
            s(&data),
            "-out",
            s(&nothing),
            "-outform",
            "PEM",
            "--mime",
        ],
        vec![
            "sign",
            "-k",
            "alice-rsa",
            "-in",
            s(&data),
            "-out",
            s(&nothing),
            "-outform",
            "XML",
        ],
        vec![
            "sign",
            "-k",
            "alice-rsa",
            "-in",
            s(&data),
            "-out",
            s(&nothing),
            "-outform",
            "PEM",
            "--encrypt-to",
            "x.pem",
        ],
        vec!["verify", "-in", s(&der), "-inform", "JSON"],
    ] {
        let out = agent.smime(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!nothing.exists(), "{args:?} wrote a file");
    }
    let help = agent.smime(&["sign", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--outform <FORM>"));
}

#[test]
fn openssl_spellings_are_rewritten_only_where_meant() {
    use std::ffi::OsString;
    let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    assert_eq!(
        smime::cli::openssl_args(os(&[
            "smime",
            "sign",
            "-in",
            "f",
            "-outform=PEM",
            "-k",
            "-in"
        ])),
        os(&["smime", "sign", "--in", "f", "--outform=PEM", "-k", "--in"])
    );
    assert_eq!(
        smime::cli::openssl_args(os(&[
            "smime",
            "verify",
            "-i",
            "f",
            "-noverify",
            "--",
            "-in"
        ])),
        os(&["smime", "verify", "-i", "f", "--no-chain", "--", "-in"])
    );
    // The program name is never touched, nor unknown single-dash words.
    assert_eq!(
        smime::cli::openssl_args(os(&["-in", "-inx", "-noverify=1", "-CAfile"])),
        os(&["-in", "-inx", "-noverify=1", "--trust"])
    );
}

#[test]
fn no_agent_errors_name_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let fix = "start it with `smime-agent` or enable smime-agent.socket";
    // Autostart disabled: one line that says what is wrong and what to do.
    let out = run(Command::new(built("smime"))
        .arg("keys")
        .env("SMIME_AGENT_SOCK", dir.path().join("none.sock"))
        .env("SMIME_AGENT_NO_AUTOSTART", "1"));
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("smime: error: no agent running on "),
        "{err}"
    );
    assert!(err.contains(fix), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Autostart fails (the agent refuses a socket directory others can enter): the
    // agent's reason, then the fix.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(Command::new(built("smime"))
        .arg("keys")
        .env("SMIME_AGENT_SOCK", open.join("agent.sock"))
        .env("XDG_CONFIG_HOME", dir.path())
        .env("SMIME_AGENT_MODULE", smime_tests::softhsm_module())
        .env_remove("SMIME_AGENT_NO_AUTOSTART"));
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no agent running, and starting one failed"),
        "{err}"
    );
    assert!(err.contains(fix), "{err}");
}

#[test]
fn locked_pin_error_names_the_fix() {
    let token = Token::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::write(&state, "3").unwrap(); // three wrong PINs on record: locked
    let agent = Agent::start_with(
        &token,
        AgentOptions {
            pin_file: None,
            ..AgentOptions::p11_count(&[
                ("P11_COUNT_LOCK_AFTER", "3".into()),
                ("P11_COUNT_STATE", state.display().to_string()),
            ])
        },
    );
    let fix = "unblock it with your PUK or SO PIN";
    let out = agent.smime_stdin(
        &["unlock", "--pin-stdin"],
        format!("{}\n", token.pin()).as_bytes(),
    );
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PIN locked on token smime-demo: "), "{err}");
    assert!(err.contains(fix), "{err}");
    // An operation on the locked token says the same.
    let data = dir.path().join("data");
    std::fs::write(&data, b"x").unwrap();
    let sig = dir.path().join("sig");
    let out = agent.sign("alice-rsa", &data, &sig, &[]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("hint: PIN locked: {fix}")), "{err}");
    assert!(!sig.exists());
    // A token that merely wants a login says so, and does not send anyone to the PUK.
    let fresh = Token::new();
    let agent = Agent::start_with(
        &fresh,
        AgentOptions {
            pin_file: Some(None),
            ..Default::default()
        },
    );
    let out = agent.sign("alice-rsa", &data, &sig, &[]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hint: log in first: smime unlock"), "{err}");
    assert!(!err.contains("PUK"), "{err}");
}

/// The SHA-256 fingerprint OpenSSL computes for a PEM certificate, lowercase hex.
fn openssl_fingerprint(cert: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert));
    assert_ok(&out, "openssl x509 -fingerprint");
    String::from_utf8_lossy(&out.stdout)
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .replace(':', "")
        .to_lowercase()
}

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[test]
fn json_output_of_keys_status_and_verify() {
    let token = Token::new();
    let agent = Agent::start(&token);
    // keys --json: every key, with the certificate's identity as OpenSSL sees it.
    let out = agent.smime(&["keys", "--json"]);
    assert_ok(&out, "smime keys --json");
    let keys = json(&out.stdout);
    let keys = keys.as_array().unwrap();
    let mut labels: Vec<&str> = keys.iter().map(|k| k["label"].as_str().unwrap()).collect();
    labels.sort_unstable();
    assert_eq!(labels, ["alice-ec", "alice-rsa", "bob-rsa"]);
    for k in keys {
        let label = k["label"].as_str().unwrap();
        let fp = openssl_fingerprint(&token.file(&format!("{label}.pem")));
        assert_eq!(
            k["sha256"]
                .as_str()
                .unwrap()
                .replace(':', "")
                .to_lowercase(),
            fp,
            "{label}"
        );
        assert_eq!(k["token"], "smime-demo");
        assert!(k["id"].as_str().unwrap().contains(':'));
        assert!(
            k["operations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "sign")
        );
    }
    let rsa = keys.iter().find(|k| k["label"] == "alice-rsa").unwrap();
    assert_eq!(rsa["algorithm"], "rsa-2048");
    assert_eq!(rsa["email"], "alice@example.org");
    assert!(
        rsa["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "decrypt")
    );

    // status --json: the agent and the token's login and PIN state, before and after lock.
    let out = agent.smime(&["status", "--json"]);
    assert_ok(&out, "smime status --json");
    let st = json(&out.stdout);
    assert!(
        st["agent"]["version"]
            .as_str()
            .unwrap()
            .starts_with("smime-agent")
    );
    let t = &st["tokens"][0];
    assert_eq!(t["label"], "smime-demo");
    assert_eq!(t["logged_in"], true);
    assert_eq!(t["pin_state"], "ok");
    assert_eq!(t["keys"], 3);
    assert_ok(&agent.smime(&["lock"]), "smime lock");
    let st = json(&agent.smime(&["status", "--json"]).stdout);
    assert_eq!(st["tokens"][0]["logged_in"], false);
    assert_ok(
        &agent.smime_stdin(
            &["unlock", "--pin-stdin"],
            format!("{}\n", token.pin()).as_bytes(),
        ),
        "smime unlock",
    );

    // verify --json: a good signature, a tampered content, an unchained check.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, b"json verdicts\n").unwrap();
    let sig = dir.path().join("sig.p7s");
    assert_ok(&agent.sign("alice-rsa", &data, &sig, &[]), "smime sign");
    let ca = token.file("ca.pem");
    let out = agent.smime(&[
        "verify",
        "--json",
        "--in",
        s(&sig),
        "--content",
        s(&data),
        "--trust",
        s(&ca),
    ]);
    assert_ok(&out, "smime verify --json");
    let v = json(&out.stdout);
    assert_eq!(v["valid"], true);
    assert_eq!(v["trusted"], true);
    assert_eq!(v["signer"]["email"], "alice@example.org");
    assert_eq!(
        v["signer"]["sha256"]
            .as_str()
            .unwrap()
            .replace(':', "")
            .to_lowercase(),
        openssl_fingerprint(&token.file("alice-rsa.pem"))
    );
    assert_eq!(v["digest"], "sha256");
    let other = dir.path().join("other");
    std::fs::write(&other, b"json verdicts?\n").unwrap();
    let out = agent.smime(&[
        "verify",
        "--json",
        "--in",
        s(&sig),
        "--content",
        s(&other),
        "--trust",
        s(&ca),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out.stdout);
    assert_eq!(v["valid"], false);
    assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
    let out = agent.smime(&[
        "verify",
        "--json",
        "--in",
        s(&sig),
        "--content",
        s(&data),
        "--no-chain",
    ]);
    assert_ok(&out, "smime verify --json --no-chain");
    let v = json(&out.stdout);
    assert_eq!(v["valid"], true);
    assert_eq!(v["trusted"], false);
    // With --out the content goes to the file and the JSON verdict to standard error.
    let opaque = dir.path().join("opaque.der");
    assert_ok(
        &agent.sign("alice-ec", &data, &opaque, &["--opaque", "--der"]),
        "sign --opaque",
    );
    let content = dir.path().join("content");
    let out = agent.smime(&[
        "verify",
        "--json",
        "--in",
        s(&opaque),
        "--trust",
        s(&ca),
        "--out",
        s(&content),
    ]);
    assert_ok(&out, "smime verify --json --out");
    assert_eq!(json(&out.stderr)["valid"], true);
    assert_eq!(
        std::fs::read(&content).unwrap(),
        std::fs::read(&data).unwrap()
    );
}

#[test]
fn progress_bar_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::new(); // for its certificate; encrypt needs no agent
    let big = dir.path().join("big.bin");
    std::fs::write(&big, smime_tests::pseudo_random(3 << 20, 7)).unwrap();
    let out_file = dir.path().join("big.p7m");
    let args = format!(
        "{} encrypt --to {} -in {} -out {}",
        s(&built("smime")),
        s(&token.file("alice-rsa.pem")),
        s(&big),
        s(&out_file)
    );
    // On a terminal (script(1) gives it a pty), past the threshold: a bar on stderr.
    let tty = run(Command::new("script")
        .args(["-qfec", &args, "/dev/null"])
        .env("SMIME_PROGRESS_MIN", "1000000"));
    assert_ok(&tty, "smime encrypt on a pty");
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(
        text.contains("big.bin [") && text.contains("MiB"),
        "no progress bar: {text:?}"
    );
    assert!(out_file.exists());
    // The same on a terminal below the threshold, and on a pipe: silent.
    std::fs::remove_file(&out_file).unwrap();
    let small = run(Command::new("script")
        .args(["-qfec", &args, "/dev/null"])
        .env("SMIME_PROGRESS_MIN", "100000000"));
    assert_ok(&small, "smime encrypt on a pty, small input");
    assert!(
        small.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&small.stdout)
    );
    std::fs::remove_file(&out_file).unwrap();
    let piped = run(Command::new("sh")
        .args(["-c", &args])
        .env("SMIME_PROGRESS_MIN", "1"));
    assert_ok(&piped, "smime encrypt on a pipe");
    assert!(
        piped.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(out_file.exists());
}
