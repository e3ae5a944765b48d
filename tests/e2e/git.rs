//! git as a client of `smime-git` (`gpg.format=x509`, `gpg.x509.program`): real git in a
//! temporary repository signing commits and tags with SoftHSM keys through the agent, and
//! reading the verdicts back (`%G?`, `verify-commit`, `verify-tag`). OpenSSL and gpgsm judge
//! a signature git stored.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smime_tests::{
    Agent, Gpgsm, SoftCa, SoftKey, Token, assert_ok, base64_decode, built, openssl_in, run,
    run_stdin, s, sha1_fingerprint,
};

/// A git repository in a temporary directory, with a private HOME (no user or system
/// configuration), configured to sign with `smime-git` through `agent`.
struct Repo {
    dir: tempfile::TempDir,
    env: Vec<(String, OsString)>,
}

impl Repo {
    fn new(agent: &Agent, name: &str, email: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("smime-git-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        let env = vec![
            ("HOME".to_owned(), dir.path().join("home").into()),
            ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".into()),
            ("SMIME_AGENT_SOCK".to_owned(), agent.socket.clone().into()),
            ("SMIME_AGENT_NO_AUTOSTART".to_owned(), "1".into()),
        ];
        let repo = Self { dir, env };
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["config", "user.name", name],
            &["config", "user.email", email],
            &["config", "gpg.format", "x509"],
            &["config", "gpg.x509.program", s(&built("smime-git"))],
        ] {
            assert_ok(&repo.git(args), &format!("git {}", args.join(" ")));
        }
        repo
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// `git ARGS` in the work tree, trusting no CA.
    fn git(&self, args: &[&str]) -> Output {
        self.git_with(args, None, b"")
    }

    /// `git ARGS` with `SMIME_TRUST` set to `trust` (unset for `None`) and `stdin`.
    fn git_with(&self, args: &[&str], trust: Option<&Path>, stdin: &[u8]) -> Output {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(self.work())
            .env_remove("SMIME_TRUST")
            .env_remove("SMIME_CRL")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(t) = trust {
            cmd.env("SMIME_TRUST", t);
        }
        run_stdin(&mut cmd, stdin)
    }

    /// `git ARGS` with these environment variables.
    fn git_envs(&self, args: &[&str], envs: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(self.work())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(envs.iter().copied());
        run(&mut cmd)
    }

    /// Commits a new file with `git commit -S`; panics unless git succeeds.
    fn signed_commit(&self, file: &str, message: &str, extra: &[&str]) {
        std::fs::write(self.work().join(file), format!("{file}\n")).unwrap();
        assert_ok(&self.git(&["add", file]), "git add");
        let mut args = vec!["commit", "-q", "-S", "-m", message];
        args.extend_from_slice(extra);
        assert_ok(&self.git(&args), "git commit -S");
    }

    /// `git log -1 --format=FORMAT REV` with `SMIME_TRUST=trust`.
    fn log(&self, format: &str, rev: &str, trust: Option<&Path>) -> String {
        let out = self.git_with(
            &["log", "-1", &format!("--format={format}"), rev],
            trust,
            b"",
        );
        assert_ok(&out, "git log");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.git(args);
        assert_ok(&out, &format!("git {}", args.join(" ")));
        String::from_utf8(out.stdout).unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Splits a signed commit object into the signature (DER, from the `gpgsig` header) and the
/// payload git signed (the object without that header).
fn split_signed_commit(object: &str) -> (Vec<u8>, Vec<u8>) {
    let (headers, body) = object.split_once("\n\n").unwrap();
    let mut payload = String::new();
    let mut sig = String::new();
    let mut in_sig = false;
    for line in headers.lines() {
        if let Some(first) = line.strip_prefix("gpgsig ") {
            in_sig = true;
            sig.push_str(first);
            sig.push('\n');
        } else if in_sig && line.starts_with(' ') {
            sig.push_str(&line[1..]);
            sig.push('\n');
        } else {
            in_sig = false;
            payload.push_str(line);
            payload.push('\n');
        }
    }
    payload.push('\n');
    payload.push_str(body);
    assert!(
        sig.starts_with("-----BEGIN SIGNED MESSAGE-----\n")
            && sig.ends_with("-----END SIGNED MESSAGE-----\n"),
        "gpgsig is not a SIGNED MESSAGE: {sig}"
    );
    let b64: String = sig.lines().filter(|l| !l.starts_with("-----")).collect();
    (base64_decode(b64.as_bytes()), payload.into_bytes())
}

#[test]
fn commits_and_tags_signed_on_the_token_verify_in_git_openssl_and_gpgsm() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let ca = token.file("ca.pem");
    let repo = Repo::new(&agent, "Alice Example", "alice@example.org");
    let rsa_fpr = sha1_fingerprint(&token.file("alice-rsa.pem"));
    let ec_fpr = sha1_fingerprint(&token.file("alice-ec.pem"));
    assert_ok(
        &repo.git(&["config", "user.signingkey", &rsa_fpr]),
        "git config user.signingkey",
    );

    repo.signed_commit("a.txt", "first, RSA", &[]);
    assert_eq!(repo.log("%G?", "HEAD", Some(&ca)), "G");
    assert_eq!(repo.log("%GF", "HEAD", Some(&ca)), rsa_fpr);
    assert_eq!(repo.log("%GS", "HEAD", Some(&ca)), "CN=Alice Example");
    let v = repo.git_with(&["verify-commit", "HEAD"], Some(&ca), b"");
    assert_ok(&v, "git verify-commit");
    assert!(
        stderr(&v).contains("Good signature from \"CN=Alice Example\""),
        "{}",
        stderr(&v)
    );
    assert_ok(
        &repo.git_with(
            &["-c", "gpg.minTrustLevel=fully", "verify-commit", "HEAD"],
            Some(&ca),
            b"",
        ),
        "git verify-commit with gpg.minTrustLevel=fully",
    );

    // The EC key, named by a gpg-style 16-digit key id (the fingerprint's tail).
    let key_id = format!("0x{}", &ec_fpr[24..]);
    repo.signed_commit("b.txt", "second, EC", &[&format!("--gpg-sign={key_id}")]);
    assert_eq!(
        repo.log("%G? %GF", "HEAD", Some(&ca)),
        format!("G {ec_fpr}")
    );

    // A signed tag, verified by git.
    assert_ok(
        &repo.git(&["tag", "-s", "-m", "release 1", "v1", "HEAD~1"]),
        "git tag -s",
    );
    let tag = repo.stdout(&["cat-file", "tag", "v1"]);
    assert!(tag.contains("-----BEGIN SIGNED MESSAGE-----"), "{tag}");
    let vt = repo.git_with(&["verify-tag", "v1"], Some(&ca), b"");
    assert_ok(&vt, "git verify-tag");
    assert!(stderr(&vt).contains("Good signature"), "{}", stderr(&vt));

    // The other tools judge the signature git stored in the first commit.
    let object = repo.stdout(&["cat-file", "commit", "HEAD~1"]);
    let (sig, payload) = split_signed_commit(&object);
    let files = tempfile::tempdir().unwrap();
    let sig_path = files.path().join("commit.p7s");
    let payload_path = files.path().join("commit.payload");
    std::fs::write(&sig_path, &sig).unwrap();
    std::fs::write(&payload_path, &payload).unwrap();
    assert_ok(
        &smime_tests::openssl_verify(&sig_path, &payload_path, &ca, "DER"),
        "openssl cms -verify of a git commit signature",
    );
    let gpgsm = Gpgsm::trusting(&ca);
    let g = gpgsm.run(&[
        "--verify".as_ref(),
        sig_path.as_os_str(),
        payload_path.as_os_str(),
    ]);
    assert_ok(&g, "gpgsm --verify of a git commit signature");
    assert!(stderr(&g).contains("Good signature"), "{}", stderr(&g));
    // A changed payload fails with OpenSSL too: the judge can say no.
    let mut altered = payload.clone();
    altered.extend_from_slice(b"x");
    std::fs::write(&payload_path, &altered).unwrap();
    assert!(
        !smime_tests::openssl_verify(&sig_path, &payload_path, &ca, "DER")
            .status
            .success()
    );
    // `smime verify` reads the armored form git stores.
    std::fs::write(&payload_path, &payload).unwrap();
    let armored = files.path().join("commit.pem");
    let pem: String = object
        .lines()
        .skip_while(|l| !l.starts_with("gpgsig "))
        .take_while(|l| l.starts_with("gpgsig ") || l.starts_with(' '))
        .map(|l| format!("{}\n", l.strip_prefix("gpgsig ").unwrap_or(&l[1..])))
        .collect();
    std::fs::write(&armored, pem).unwrap();
    assert_ok(
        &agent.verify(&armored, &payload_path, &ca),
        "smime verify of a SIGNED MESSAGE",
    );
}

#[test]
fn without_signingkey_the_committer_identity_picks_the_key() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let ca = token.file("ca.pem");
    let bob = Repo::new(&agent, "Bob Example", "bob@example.org");
    bob.signed_commit("a.txt", "by Bob", &[]);
    assert_eq!(
        bob.log("%G? %GF", "HEAD", Some(&ca)),
        format!("G {}", sha1_fingerprint(&token.file("bob-rsa.pem")))
    );
    assert_ok(
        &bob.git(&["tag", "-s", "-m", "Bob's tag", "t1"]),
        "git tag -s",
    );
    assert_ok(
        &bob.git_with(&["verify-tag", "t1"], Some(&ca), b""),
        "git verify-tag",
    );
    assert_ok(
        &bob.git_with(&["verify-commit", "HEAD"], Some(&ca), b""),
        "git verify-commit",
    );

    // Alice has two keys with her address: git fails, and the message says what to set.
    let alice = Repo::new(&agent, "Alice Example", "alice@example.org");
    std::fs::write(alice.work().join("a.txt"), "a\n").unwrap();
    assert_ok(&alice.git(&["add", "a.txt"]), "git add");
    let out = alice.git(&["commit", "-q", "-S", "-m", "ambiguous"]);
    assert!(!out.status.success(), "commit with an ambiguous identity");
    let err = stderr(&out);
    assert!(
        err.contains("matches several keys")
            && err.contains("user.signingkey")
            && err.contains(&sha1_fingerprint(&token.file("alice-rsa.pem")))
            && err.contains(&sha1_fingerprint(&token.file("alice-ec.pem"))),
        "{err}"
    );
    assert!(
        !alice
            .git(&["rev-parse", "--verify", "-q", "HEAD"])
            .status
            .success(),
        "no commit may be made"
    );
    // Nobody's key.
    let carol = Repo::new(&agent, "Carol", "carol@example.org");
    std::fs::write(carol.work().join("c.txt"), "c\n").unwrap();
    assert_ok(&carol.git(&["add", "c.txt"]), "git add");
    let out = carol.git(&["commit", "-q", "-S", "-m", "no key"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("matches none of the agent's signing keys"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn log_shows_g_for_a_trusted_chain_u_for_an_untrusted_one_and_b_for_a_tampered_commit() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let ca = token.file("ca.pem");
    let repo = Repo::new(&agent, "Bob Example", "bob@example.org");
    repo.signed_commit("a.txt", "the original message", &[]);

    // Trusted: the token's CA as a file, or a directory holding it.
    assert_eq!(repo.log("%G?", "HEAD", Some(&ca)), "G");
    let anchors = tempfile::tempdir().unwrap();
    std::fs::copy(&ca, anchors.path().join("token-ca.pem")).unwrap();
    assert_eq!(repo.log("%G?", "HEAD", Some(anchors.path())), "G");
    assert_eq!(repo.log("%GT", "HEAD", Some(&ca)), "fully");

    // Untrusted: another CA, or none at all. The signature itself is good (U, not B).
    let other = SoftCa::new(anchors.path(), "other");
    let _ = other.issue(
        "somebody",
        "Somebody",
        "somebody@example.org",
        SoftKey::P256,
    );
    assert_eq!(repo.log("%G?", "HEAD", Some(&other.cert)), "U");
    assert_eq!(repo.log("%G?", "HEAD", None), "U");
    assert_eq!(repo.log("%GT", "HEAD", None), "undefined");
    let v = repo.git_with(&["verify-commit", "HEAD"], Some(&other.cert), b"");
    assert_ok(&v, "git verify-commit of an untrusted signature");
    assert!(stderr(&v).contains("NOT trusted"), "{}", stderr(&v));
    let strict = repo.git_with(
        &["-c", "gpg.minTrustLevel=fully", "verify-commit", "HEAD"],
        Some(&other.cert),
        b"",
    );
    assert!(
        !strict.status.success(),
        "gpg.minTrustLevel=fully must refuse an untrusted chain"
    );

    // Tampered: the same signature over a changed message.
    let object = repo.stdout(&["cat-file", "commit", "HEAD"]);
    assert!(object.contains("the original message"));
    let forged = object.replace("the original message", "a forged message");
    let out = repo.git_with(
        &["hash-object", "-t", "commit", "-w", "--stdin"],
        None,
        forged.as_bytes(),
    );
    assert_ok(&out, "git hash-object");
    let forged_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(repo.log("%G?", &forged_id, Some(&ca)), "B");
    let v = repo.git_with(&["verify-commit", &forged_id], Some(&ca), b"");
    assert!(!v.status.success(), "verify-commit of a tampered commit");
    assert!(stderr(&v).contains("BAD signature"), "{}", stderr(&v));
    // The original is still good.
    assert_eq!(repo.log("%G?", "HEAD", Some(&ca)), "G");

    // Revoked: the token's CA revokes Bob's certificate; with its CRL in SMIME_CRL the
    // signature is REVKEYSIG (R) and verify-commit fails. Without the CRL it is G again.
    let crl = revoke(&token, "bob-rsa.pem", anchors.path());
    assert_eq!(repo.log("%G?", "HEAD", Some(&ca)), "G");
    let with_crl = [("SMIME_TRUST", ca.as_path()), ("SMIME_CRL", crl.as_path())];
    let out = repo.git_envs(&["log", "-1", "--format=%G?", "HEAD"], &with_crl);
    assert_ok(&out, "git log with SMIME_CRL");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "R");
    let v = repo.git_envs(&["verify-commit", "HEAD"], &with_crl);
    assert!(!v.status.success(), "verify-commit of a revoked signer");
    assert!(stderr(&v).contains("REVOKED"), "{}", stderr(&v));
}

/// A CRL (PEM, in `dir`) from the token's CA that revokes the token certificate `leaf`.
fn revoke(token: &Token, leaf: &str, dir: &Path) -> PathBuf {
    std::fs::write(
        dir.join("revoke.cnf"),
        format!(
            "[ca]\ndefault_ca = c\n[c]\ndatabase = {db}\ndefault_md = sha256\n\
             default_crl_days = 7\ncrl_extensions = crl_ext\n[crl_ext]\n\
             authorityKeyIdentifier = keyid:always\n",
            db = dir.join("index.txt").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    let (ca_pem, ca_key, leaf) = (token.file("ca.pem"), token.file("ca.key"), token.file(leaf));
    let ca = [
        "-config",
        "revoke.cnf",
        "-cert",
        s(&ca_pem),
        "-keyfile",
        s(&ca_key),
    ];
    let mut args = vec!["ca", "-revoke", s(&leaf)];
    args.extend(ca);
    openssl_in(dir, &args);
    let mut args = vec!["ca", "-gencrl", "-out", "revoked.crl"];
    args.extend(ca);
    openssl_in(dir, &args);
    dir.join("revoked.crl")
}

/// `smime-git` run the way git runs it, with `SMIME_TRUST` unset.
fn smime_git(agent_socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    run_stdin(
        Command::new(built("smime-git"))
            .args(args)
            .env("SMIME_AGENT_SOCK", agent_socket)
            .env("SMIME_AGENT_NO_AUTOSTART", "1")
            .env_remove("SMIME_TRUST")
            .env_remove("SMIME_CRL"),
        stdin,
    )
}

#[test]
fn smime_git_status_lines_and_failures() {
    let token = Token::new();
    let agent = Agent::start(&token);
    let fpr = sha1_fingerprint(&token.file("alice-ec.pem"));
    let dir = tempfile::tempdir().unwrap();

    // Signing, with the status lines on fd 2 as git asks.
    let out = smime_git(
        &agent.socket,
        &["--status-fd=2", "-bsau", &fpr],
        b"payload\n",
    );
    assert_ok(&out, "smime-git -bsau");
    let status = stderr(&out);
    let begin = status.find("[GNUPG:] BEGIN_SIGNING\n").expect(&status);
    let created = status
        .find("[GNUPG:] SIG_CREATED D 19 8 00 ")
        .expect(&status);
    assert!(
        begin < created && status.trim_end().ends_with(&fpr),
        "{status}"
    );
    let sig = dir.path().join("sig.pem");
    std::fs::write(&sig, &out.stdout).unwrap();

    // Verifying: status on fd 1, words on fd 2.
    let out = smime_git(
        &agent.socket,
        &["--status-fd=1", "--verify", s(&sig), "-"],
        b"payload\n",
    );
    assert_ok(&out, "smime-git --verify");
    let status = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines[0], "[GNUPG:] NEWSIG", "{status}");
    assert_eq!(lines[1], format!("[GNUPG:] GOODSIG {fpr} CN=Alice Example"));
    assert!(
        lines[2].starts_with(&format!("[GNUPG:] VALIDSIG {fpr} ")),
        "{status}"
    );
    assert_eq!(lines[3], "[GNUPG:] TRUST_UNDEFINED 0 shell");
    assert_eq!(lines.len(), 4, "{status}");
    assert!(!stderr(&out).contains("[GNUPG:]"));

    // Bad: other data. Exit 1, BADSIG naming the certificate.
    let out = smime_git(
        &agent.socket,
        &["--status-fd=1", "--verify", s(&sig), "-"],
        b"payload!\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let status = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        status,
        format!("[GNUPG:] NEWSIG\n[GNUPG:] BADSIG {fpr} CN=Alice Example\n")
    );

    // Not a signature at all: ERRSIG, exit 1.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "-----BEGIN SIGNED MESSAGE-----\nnot base64\n").unwrap();
    let out = smime_git(
        &agent.socket,
        &["--status-fd=1", "--verify", s(&junk), "-"],
        b"payload\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let status = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        status.starts_with("[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG "),
        "{status}"
    );

    // A trust setting that names nothing usable is a usage error, not a silent U.
    let out = run_stdin(
        Command::new(built("smime-git"))
            .args(["--status-fd=1", "--verify", s(&sig), "-"])
            .env("SMIME_TRUST", dir.path().join("missing.pem")),
        b"payload\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("SMIME_TRUST"), "{}", stderr(&out));

    // No agent: exit 3, nothing on stdout, no SIG_CREATED.
    let out = smime_git(
        &dir.path().join("no-agent.sock"),
        &["--status-fd=2", "-bsau", &fpr],
        b"payload\n",
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(!stderr(&out).contains("SIG_CREATED"));

    // Usage errors: exit 2.
    let out = smime_git(&agent.socket, &["--status-fd=2", "-bsa"], b"x");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = smime_git(&agent.socket, &["--bogus"], b"");
    assert_eq!(out.status.code(), Some(2));
    let help = run(Command::new(built("smime-git")).arg("--help"));
    assert_ok(&help, "smime-git --help");
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("gpg.x509.program") && help.contains("SMIME_TRUST"),
        "{help}"
    );
}

#[test]
fn gpgsm_and_smime_git_read_each_others_git_signatures() {
    let token = Token::new();
    let gpgsm = Gpgsm::with_token(&token);
    let agent = Agent::start(&token);
    let ca = token.file("ca.pem");
    let bob_fpr = sha1_fingerprint(&token.file("bob-rsa.pem"));
    let mut repo = Repo::new(&agent, "Bob Example", "bob@example.org");
    repo.env
        .push(("GNUPGHOME".to_owned(), gpgsm.home().as_os_str().to_owned()));
    repo.env.push((
        "SOFTHSM2_CONF".to_owned(),
        gpgsm.home().join("softhsm2.conf").into(),
    ));
    assert_ok(
        &repo.git(&["config", "user.signingkey", &bob_fpr]),
        "git config user.signingkey",
    );
    let with_gpgsm = ["-c", "gpg.x509.program=gpgsm"];

    // smime-git signs, gpgsm verifies for git.
    repo.signed_commit("a.txt", "signed by smime-git", &[]);
    let mut args = with_gpgsm.to_vec();
    args.extend(["log", "-1", "--format=%G? %GF"]);
    let out = repo.git(&args);
    assert_ok(&out, "git log with gpgsm verifying");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("G {bob_fpr}"),
        "gpgsm's verdict on smime-git's commit: {}",
        stderr(&out)
    );

    // gpgsm signs (on the same token, through gnupg-pkcs11-scd), smime-git verifies.
    std::fs::write(repo.work().join("b.txt"), "b\n").unwrap();
    assert_ok(&repo.git(&["add", "b.txt"]), "git add");
    let mut args = with_gpgsm.to_vec();
    args.extend(["commit", "-q", "-S", "-m", "signed by gpgsm"]);
    let out = repo.git(&args);
    assert_ok(&out, "git commit -S with gpgsm");
    assert_eq!(
        repo.log("%G? %GF", "HEAD", Some(&ca)),
        format!("G {bob_fpr}")
    );
    assert_ok(
        &repo.git_with(&["verify-commit", "HEAD"], Some(&ca), b""),
        "smime-git verifying gpgsm's commit",
    );
    // And both agree on the earlier one.
    assert_eq!(repo.log("%G?", "HEAD~1", Some(&ca)), "G");
}

#[test]
fn a_signature_by_an_expired_certificate_is_expkeysig() {
    // OpenSSL signs with a certificate that expired in 2020; smime-git says EXPKEYSIG.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = SoftCa::new(d, "old");
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
         default_md = sha256\npolicy = p\nx509_extensions = ext\n[p]\ncommonName = supplied\n\
         [ext]\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n\
         extendedKeyUsage = emailProtection\nsubjectAltName = email:old@example.org\n",
    )
    .unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("serial"), "01\n").unwrap();
    openssl_in(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "exp.key",
            "-out",
            "exp.csr",
            "-subj",
            "/CN=Expired Signer",
        ],
    );
    openssl_in(
        d,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-cert",
            "old-ca.pem",
            "-keyfile",
            "old-ca.key",
            "-in",
            "exp.csr",
            "-out",
            "exp.pem",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
        ],
    );
    std::fs::write(d.join("payload"), "tree 0\n\nold\n").unwrap();
    openssl_in(
        d,
        &[
            "cms", "-sign", "-binary", "-md", "sha256", "-signer", "exp.pem", "-inkey", "exp.key",
            "-in", "payload", "-outform", "PEM", "-out", "sig.pem",
        ],
    );
    let out = run_stdin(
        Command::new(built("smime-git"))
            .args(["--status-fd=1", "--verify", s(&d.join("sig.pem")), "-"])
            .env("SMIME_TRUST", &ca.cert),
        b"tree 0\n\nold\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let fpr = sha1_fingerprint(&d.join("exp.pem"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("[GNUPG:] NEWSIG\n[GNUPG:] EXPKEYSIG {fpr} CN=Expired Signer\n")
    );
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
}

#[test]
fn smime_itself_works_as_gpg_x509_program() {
    // `smime` run with git's gpgsm-style arguments behaves as smime-git.
    let token = Token::new();
    let agent = Agent::start(&token);
    let ca = token.file("ca.pem");
    let repo = Repo::new(&agent, "Bob Example", "bob@example.org");
    assert_ok(
        &repo.git(&["config", "gpg.x509.program", s(&built("smime"))]),
        "git config gpg.x509.program smime",
    );
    repo.signed_commit("a.txt", "signed by smime", &[]);
    assert_eq!(repo.log("%G?", "HEAD", Some(&ca)), "G");
    assert_eq!(repo.log("%G?", "HEAD", None), "U");
    assert_ok(
        &repo.git_with(&["verify-commit", "HEAD"], Some(&ca), b""),
        "git verify-commit",
    );
}
