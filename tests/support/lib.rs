//! Test support: a provisioned SoftHSM token, the agent as a subprocess, the CLI as a
//! user runs it, and OpenSSL/gpgsm as judges.
//!
//! Every agent gets its own copy of the token directory and its own `SOFTHSM2_CONF`
//! (SoftHSM reads it once per process). The token is provisioned once per test run by
//! `softhsm-config/provision`, the same command users run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)] // test code: fail loudly
#![allow(unreachable_pub)] // the test binary is the only user

mod gpgsm_card;
pub use gpgsm_card::sha1_fingerprint;
pub mod pcsc;
pub use pcsc::{VirtualCard, pivemu_bin};

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    // target/debug/deps/e2e-<hash> → target/debug
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// Path of a workspace binary or library; panics with the fix if it was not built.
pub fn built(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// The SoftHSM module.
pub fn softhsm_module() -> PathBuf {
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("SoftHSM is not installed (Debian package softhsm2)");
}

/// The provisioned master token (created once per test process).
pub fn master() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("smime-tests-master-{}", std::process::id()));
        let out = Command::new(root().join("softhsm-config/provision"))
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "provision failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// A private copy of the provisioned token, with its own softhsm2.conf.
#[derive(Debug)]
pub struct Token {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl Token {
    /// Copies the master token.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("smime-token-")
            .tempdir()
            .unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", master().display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let conf = format!(
            "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("softhsm2.conf"), conf).unwrap();
        Self { dir }
    }

    /// A file in the token directory (ca.pem, pin, alice-rsa.pem, …).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The user PIN.
    pub fn pin(&self) -> String {
        std::fs::read_to_string(self.file("pin"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Default for Token {
    fn default() -> Self {
        Self::new()
    }
}

/// How to start an agent.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// PKCS#11 module (default: SoftHSM).
    pub module: Option<PathBuf>,
    /// PIN file (default: the token's `pin`); `Some(None)` starts without a PIN.
    pub pin_file: Option<Option<PathBuf>>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Contents of `$XDG_CONFIG_HOME/smime-agent/config.toml`; with it no `--module` flag
    /// is passed.
    pub config: Option<String>,
    /// More command-line arguments.
    pub args: Vec<String>,
}

impl AgentOptions {
    /// The agent on p11-count, the PKCS#11 wrapper around SoftHSM (`tests/p11-count`),
    /// with the wrapper's settings `env` (`P11_COUNT_LOG`, …).
    pub fn p11_count(env: &[(&str, String)]) -> Self {
        let mut all = vec![(
            "P11_COUNT_MODULE".to_owned(),
            softhsm_module().display().to_string(),
        )];
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        Self {
            module: Some(built("libp11_count.so")),
            env: all,
            ..Self::default()
        }
    }
}

/// The agent's configuration file when `XDG_CONFIG_HOME` is `xdg`.
fn config_file(xdg: &Path) -> PathBuf {
    xdg.join("smime-agent/config.toml")
}

/// A running agent; killed (SIGTERM) on drop.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    /// Socket directory (0700).
    pub dir: tempfile::TempDir,
    /// Socket path.
    pub socket: PathBuf,
    /// The agent's stderr log.
    pub log: PathBuf,
}

impl Agent {
    /// Starts an agent on `token` with default options.
    pub fn start(token: &Token) -> Self {
        Self::start_with(token, AgentOptions::default())
    }

    /// Starts an agent and waits until its socket answers.
    pub fn start_with(token: &Token, opts: AgentOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("smime-sock-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let socket = dir.path().join("agent.sock");
        let log = dir.path().join("agent.log");
        let mut cmd = Command::new(built("smime-agent"));
        cmd.arg("--foreground").arg("--socket").arg(&socket);
        match &opts.config {
            Some(text) => {
                std::fs::create_dir_all(dir.path().join("smime-agent")).unwrap();
                std::fs::write(config_file(dir.path()), text).unwrap();
            }
            None => {
                cmd.arg("--module")
                    .arg(opts.module.clone().unwrap_or_else(softhsm_module));
            }
        }
        cmd.env("SOFTHSM2_CONF", token.file("softhsm2.conf"))
            .env("SMIME_AGENT_LOG", "info")
            .env_remove("SMIME_AGENT_PIN")
            .env_remove("SMIME_AGENT_PIN_FILE")
            .env_remove("SMIME_AGENT_MODULE")
            .env_remove("SMIME_AGENT_SOCK")
            .env("XDG_CONFIG_HOME", dir.path()) // no user config file
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        match opts.pin_file {
            None => {
                cmd.arg("--pin-file").arg(token.file("pin"));
            }
            Some(Some(p)) => {
                cmd.arg("--pin-file").arg(p);
            }
            Some(None) => {}
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.args(&opts.args);
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "agent exited ({st}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            dir,
            socket,
            log,
        }
    }

    /// The agent's configuration file (`XDG_CONFIG_HOME` is [`Agent::dir`]).
    pub fn config_file(&self) -> PathBuf {
        config_file(self.dir.path())
    }

    /// Tells the agent to read its configuration again (SIGHUP).
    pub fn sighup(&self) {
        assert_ok(
            &run(Command::new("kill").args(["-HUP", &self.pid().to_string()])),
            "kill -HUP",
        );
    }

    /// Writes `text` as the agent's configuration file and tells the agent to read it.
    pub fn reconfigure(&self, text: &str) {
        std::fs::write(self.config_file(), text).unwrap();
        self.sighup();
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `smime` against this agent.
    pub fn smime(&self, args: &[&str]) -> Output {
        self.smime_stdin(args, b"")
    }

    /// `smime sign --key KEY --in DATA --out SIG [extra…]`.
    pub fn sign(&self, key: &str, data: &Path, sig: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "sign",
            "--key",
            key,
            "--in",
            data.to_str().unwrap(),
            "--out",
            sig.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.smime(&args)
    }

    /// `smime verify --in SIG --content DATA --trust CA`.
    pub fn verify(&self, sig: &Path, data: &Path, ca: &Path) -> Output {
        self.smime(&[
            "verify",
            "--in",
            sig.to_str().unwrap(),
            "--content",
            data.to_str().unwrap(),
            "--trust",
            ca.to_str().unwrap(),
        ])
    }

    /// Runs `smime` with `stdin` as input.
    pub fn smime_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_stdin(
            Command::new(built("smime"))
                .args(args)
                .env("SMIME_AGENT_SOCK", &self.socket),
            stdin,
        )
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("agent ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Runs a command with `stdin` and collects its output.
pub fn run_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Runs a command; returns its output.
pub fn run(cmd: &mut Command) -> Output {
    run_stdin(cmd, b"")
}

/// Panics with both streams unless the command succeeded.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl cms -verify` of a detached signature against the token's CA, as an S/MIME
/// signing certificate. Returns the output; the caller asserts.
pub fn openssl_verify(sig: &Path, content: &Path, ca: &Path, inform: &str) -> Output {
    run(Command::new("openssl")
        .args([
            "cms",
            "-verify",
            "-binary",
            "-inform",
            inform,
            "-purpose",
            "smimesign",
        ])
        .args([
            "-in".as_ref(),
            sig.as_os_str(),
            "-content".as_ref(),
            content.as_os_str(),
            "-CAfile".as_ref(),
            ca.as_os_str(),
            "-out".as_ref(),
            "/dev/null".as_ref(),
        ]))
}

/// A throwaway gpgsm home that trusts `ca`.
#[derive(Debug)]
pub struct Gpgsm {
    home: tempfile::TempDir,
}

impl Gpgsm {
    /// Imports and trusts `ca`; CRL checks off (the test CA publishes none).
    pub fn trusting(ca: &Path) -> Self {
        let home = tempfile::Builder::new().prefix("gpgsm-").tempdir().unwrap();
        std::fs::write(home.path().join("gpgsm.conf"), "disable-crl-checks\n").unwrap();
        let g = Self { home };
        assert_ok(
            &g.run(&["--import".as_ref(), ca.as_os_str()]),
            "gpgsm --import",
        );
        let fpr = run(Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
            .arg(ca));
        let fpr = String::from_utf8_lossy(&fpr.stdout);
        let fpr = fpr.trim().rsplit('=').next().unwrap().to_owned();
        std::fs::write(
            g.home.path().join("trustlist.txt"),
            format!("{fpr} S relax\n"),
        )
        .unwrap();
        g
    }

    /// Runs gpgsm in batch mode in this home.
    pub fn run(&self, args: &[&std::ffi::OsStr]) -> Output {
        run(Command::new("gpgsm")
            .env("GNUPGHOME", self.home.path())
            .arg("--batch")
            .arg("--disable-dirmngr")
            .args(args))
    }
}

impl Drop for Gpgsm {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .status();
    }
}

// --- S/MIME entity and envelope tests (smime_mail.rs, envelope.rs) ----------------------

/// Runs `openssl ARGS` in `dir`; panics with its output unless it succeeded.
pub fn openssl_in(dir: &Path, args: &[&str]) -> Output {
    let out = run(Command::new("openssl").args(args).current_dir(dir));
    assert_ok(&out, &format!("openssl {}", args.join(" ")));
    out
}

/// Key type of a software certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftKey {
    /// RSA 2048.
    Rsa,
    /// ECDSA/ECDH on P-256.
    P256,
}

/// A software S/MIME identity made by OpenSSL: certificate and private key files.
#[derive(Debug, Clone)]
pub struct SoftId {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, unencrypted).
    pub key: PathBuf,
    /// The certificate's e-mail address.
    pub email: String,
}

/// A software CA made by OpenSSL alone (P-256), issuing S/MIME certificates whose keys are
/// files: peers that are not on the token.
#[derive(Debug)]
pub struct SoftCa {
    dir: PathBuf,
    name: String,
    /// The CA certificate (PEM), for `--trust` / `-CAfile`.
    pub cert: PathBuf,
    serial: std::sync::atomic::AtomicU32,
}

impl SoftCa {
    /// Creates `DIR/NAME-ca.pem` and its key.
    pub fn new(dir: &Path, name: &str) -> Self {
        let cert = dir.join(format!("{name}-ca.pem"));
        openssl_in(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}-ca.key"),
                "-out",
                &format!("{name}-ca.pem"),
                "-subj",
                &format!("/CN={name} CA"),
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
            cert,
            serial: std::sync::atomic::AtomicU32::new(100),
        }
    }

    /// Issues an S/MIME certificate (emailProtection, SAN `email`) to a new key; files
    /// `DIR/FILE.pem` and `DIR/FILE.key`. RSA keys may sign and encrypt, P-256 keys sign
    /// and agree keys.
    pub fn issue(&self, file: &str, cn: &str, email: &str, key: SoftKey) -> SoftId {
        let (newkey, opt) = match key {
            SoftKey::Rsa => (["-newkey", "rsa:2048"], None),
            SoftKey::P256 => (["-newkey", "ec"], Some("ec_paramgen_curve:P-256")),
        };
        let keyf = format!("{file}.key");
        let csr = format!("{file}.csr");
        let mut args = vec!["req"];
        args.extend(newkey);
        if let Some(o) = opt {
            args.extend(["-pkeyopt", o]);
        }
        let subj = format!("/CN={cn}");
        args.extend(["-nodes", "-keyout", &keyf, "-out", &csr, "-subj", &subj]);
        openssl_in(&self.dir, &args);
        let ext = leaf_ext(&self.dir, file, key, email);
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let certf = format!("{file}.pem");
        openssl_in(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{}-ca.pem", self.name),
                "-CAkey",
                &format!("{}-ca.key", self.name),
                "-set_serial",
                &serial,
                "-days",
                "30",
                "-extfile",
                &ext,
                "-out",
                &certf,
            ],
        );
        SoftId {
            cert: self.dir.join(certf),
            key: self.dir.join(keyf),
            email: email.to_owned(),
        }
    }
}

/// Asserts that a failed `smime` run failed the way a user can act on: a defined exit
/// status other than 0, exactly one line on standard error, nothing on standard output and
/// no file at `out_path`. Returns the error line.
pub fn assert_failed_cleanly(out: &Output, out_path: &Path, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        matches!(code, Some(1..=4)),
        "{what}: want exit status 1..=4, got {}; stderr: {err}",
        out.status
    );
    let line = err.trim_end();
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "{what}: want a one-line error, got: {err:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: wrote to stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !out_path.exists(),
        "{what}: {} was written although the command failed",
        out_path.display()
    );
    line.to_owned()
}

/// Runs `program ARGS` with `envs` under GNU time (`/usr/bin/time -v`, Debian package
/// `time`) if installed; returns the output and the peak resident set size in KiB (`None`
/// without GNU time).
pub fn run_measured(
    program: &Path,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
) -> (Output, Option<u64>) {
    let time = Path::new("/usr/bin/time");
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.arg("-v").arg("-o").arg(report.path()).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    let rss = std::fs::read_to_string(report.path())
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|n| n.trim().parse().ok());
    (out, rss)
}

/// Deterministic pseudo-random bytes (xorshift64*), for binary test data.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A MIME entity split at its first empty line: the header fields (unfolded, names as
/// written) and the body. Accepts CRLF and LF.
pub fn split_entity(entity: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let (head, body) = match (
        find(entity, b"\r\n\r\n").map(|i| (i, 4)),
        find(entity, b"\n\n").map(|i| (i, 2)),
    ) {
        (Some(a), Some(b)) => {
            let (i, n) = if a.0 < b.0 { a } else { b };
            (&entity[..i], &entity[i + n..])
        }
        (Some((i, n)), None) | (None, Some((i, n))) => (&entity[..i], &entity[i + n..]),
        (None, None) => (entity, &b""[..]),
    };
    let head = String::from_utf8_lossy(head).replace("\r\n", "\n");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    (fields, body.to_vec())
}

/// The value of the first header field `name` (case-insensitive).
pub fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body of a single-part entity with its Content-Transfer-Encoding undone
/// (7bit/8bit/binary, quoted-printable, base64).
pub fn decoded_body(entity: &[u8]) -> Vec<u8> {
    let (fields, body) = split_entity(entity);
    let cte = header(&fields, "Content-Transfer-Encoding")
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    match cte.as_str() {
        "quoted-printable" => qp_decode(&body),
        "base64" => base64_decode(&body),
        _ => body,
    }
}

/// Quoted-printable decoding (RFC 2045 §6.7).
pub fn qp_decode(data: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'=' {
            if data[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if data[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            if let (Some(h), Some(l)) = (
                data.get(i + 1).copied().and_then(hex),
                data.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

/// Base64 decoding that skips line breaks and other non-alphabet bytes.
pub fn base64_decode(data: &[u8]) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in data {
        if c == b'=' {
            break;
        }
        let Some(v) = val(c) else { continue };
        acc = (acc << 6 | u32::from(v)) & 0xFFFF;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `data` with CRLF turned into LF: S/MIME canonicalizes line ends, mail readers undo it.
pub fn lf(data: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(data)
        .replace("\r\n", "\n")
        .into_bytes()
}

/// Writes `<file>.ext`, the extensions of an S/MIME end-entity certificate for `email`
/// (key usage by key type), for `openssl x509 -req -extfile`; returns its name.
pub(crate) fn leaf_ext(dir: &Path, file: &str, key: SoftKey, email: &str) -> String {
    let ku = match key {
        SoftKey::Rsa => "digitalSignature,keyEncipherment",
        SoftKey::P256 => "digitalSignature,keyAgreement",
    };
    let ext = format!("{file}.ext");
    std::fs::write(
        dir.join(&ext),
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage={ku}\nextendedKeyUsage=emailProtection\n\
             subjectAltName=email:{email}\n"
        ),
    )
    .unwrap();
    ext
}
