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
                std::fs::write(dir.path().join("smime-agent/config.toml"), text).unwrap();
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
