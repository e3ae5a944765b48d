//! A virtual PIV card for the smart-card tests: `pcscd` with vsmartcard's `vpcd` reader
//! driver, and `tests/pivemu` (piv-authenticator on trussed's virtual platform) as the card.
//!
//! There is one `pcscd` per host (its socket is `/run/pcscd/pcscd.comm`, fixed at build
//! time) and one virtual reader per vpcd port, so every [`VirtualCard`] holds a lock: a
//! mutex within the test process and an advisory file lock across processes (another
//! worktree's tests on the same host). Tests using a card therefore run one at a time.
//!
//! Needs the Debian packages pcscd, vsmartcard-vpcd, opensc (opensc-tool), opensc-pkcs11
//! and yubico-piv-tool (see `scripts/deps.sh`), and the `pivemu` binary built by
//! `scripts/test.sh` (`cargo build --release --manifest-path tests/pivemu/Cargo.toml`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{SoftCa, SoftKey, assert_ok, run};

/// OpenSC's PKCS#11 module (Debian package opensc-pkcs11).
pub const OPENSC_MODULE: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";
/// The virtual card's user PIN (piv-authenticator's default).
pub const CARD_PIN: &str = "123456";
/// The reader vpcd offers on port 35963.
pub const VIRTUAL_READER: &str = "Virtual PCD 00 00";
/// pcscd's socket.
const PCSCD_SOCKET: &str = "/run/pcscd/pcscd.comm";

/// The `pivemu` test fixture; panics with the build command if it is missing.
pub fn pivemu_bin() -> PathBuf {
    let p = crate::root().join("tests/pivemu/target/release/pivemu");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --locked --manifest-path tests/pivemu/Cargo.toml` \
         (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Serializes the users of the one virtual reader within this process.
static CARD_LOCK: Mutex<()> = Mutex::new(());

/// A PIV card in vpcd's first reader, with pcscd running. Dropping it removes the card and
/// stops the pcscd it started (both by pid).
#[derive(Debug)]
pub struct VirtualCard {
    pivemu: Option<Child>,
    pcscd: Option<Child>,
    /// The card's flash (`PIVEMU_STATE`), keys and certificates, and logs.
    pub dir: tempfile::TempDir,
    _host_lock: std::fs::File,
    _lock: MutexGuard<'static, ()>,
}

impl VirtualCard {
    /// Starts pcscd (or reuses a running one) and inserts a factory-fresh card.
    pub fn new() -> Self {
        Self::with_flash(None)
    }

    /// As [`VirtualCard::new`], but the card starts with a copy of the flash directory
    /// `from` (see [`VirtualCard::save_flash`]): a provisioned card in no time.
    pub fn from_flash(from: &Path) -> Self {
        Self::with_flash(Some(from))
    }

    /// Copies the card's flash to `to` (the card is removed first, then inserted again).
    pub fn save_flash(&mut self, to: &Path) {
        self.remove();
        copy_dir(&self.file("flash"), to);
        self.insert();
    }

    fn with_flash(from: Option<&Path>) -> Self {
        let lock = CARD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let host_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("smime-tests-virtual-card.lock"))
            .unwrap();
        host_lock.lock().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("smime-piv-")
            .tempdir()
            .unwrap();
        if let Some(from) = from {
            copy_dir(from, &dir.path().join("flash"));
        }
        let pcscd = start_pcscd(dir.path());
        let mut card = Self {
            pivemu: None,
            pcscd,
            dir,
            _host_lock: host_lock,
            _lock: lock,
        };
        card.insert();
        card
    }

    /// A file in the card's directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A file holding the card's PIN, for `--pin-file`.
    pub fn pin_file(&self) -> PathBuf {
        let p = self.file("pin");
        if !p.exists() {
            std::fs::write(&p, format!("{CARD_PIN}\n")).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        p
    }

    /// Inserts the card: starts pivemu on the card's flash and waits until PC/SC shows it.
    pub fn insert(&mut self) {
        self.insert_with_env(&[]);
    }

    /// As [`VirtualCard::insert`], with more environment for pivemu (e.g.
    /// `PIVEMU_RESET_LOGOUT=1`: a card reset ends the PIN verification, as on a real card).
    pub fn insert_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.pivemu.is_none(), "the card is already inserted");
        // A card killed a moment ago may still be listed: wait until pcscd has seen it go,
        // or the new card would be taken for the old one.
        self.wait_for(false);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file("pivemu.log"))
            .unwrap();
        let child = Command::new(pivemu_bin())
            .env("PIVEMU_STATE", self.file("flash"))
            .env_remove("PIVEMU_PORT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.pivemu = Some(child);
        self.wait_for(true);
    }

    /// Removes the card: kills pivemu and waits until PC/SC shows the reader empty.
    pub fn remove(&mut self) {
        let mut child = self.pivemu.take().expect("the card is not inserted");
        let _ = child.kill();
        let _ = child.wait();
        self.wait_for(false);
    }

    /// The process id of the running card (`pivemu`), e.g. to stop it with SIGSTOP and
    /// make the card hang; `None` while the card is out.
    pub fn pivemu_pid(&self) -> Option<u32> {
        self.pivemu.as_ref().map(Child::id)
    }

    /// Whether `opensc-tool -l` lists the virtual reader with a card.
    pub fn present() -> bool {
        let out = Command::new("opensc-tool")
            .arg("-l")
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[1] == "Yes" && l.trim_end().ends_with(VIRTUAL_READER)
        })
    }

    fn wait_for(&mut self, present: bool) {
        let start = Instant::now();
        while Self::present() != present {
            if let Some(child) = self.pivemu.as_mut()
                && let Some(st) = child.try_wait().unwrap()
            {
                panic!(
                    "pivemu exited ({st}): {}",
                    std::fs::read_to_string(self.file("pivemu.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the virtual card did not {} in 20 s (is vsmartcard-vpcd installed, and was \
                 pcscd started after it?); pivemu log: {}",
                if present { "appear" } else { "go away" },
                std::fs::read_to_string(self.file("pivemu.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether this card started the pcscd it uses (only then may a test stop it).
    pub fn owns_pcscd(&self) -> bool {
        self.pcscd.is_some()
    }

    /// Kills the pcscd this card started (SIGKILL, by pid: a crash, not a clean stop),
    /// then the card, whose vpcd reader lived in that pcscd. Panics if this card did not
    /// start pcscd (see [`VirtualCard::owns_pcscd`]). [`VirtualCard::start_pcscd`] undoes it.
    pub fn kill_pcscd(&mut self) {
        let mut pcscd = self
            .pcscd
            .take()
            .expect("this card did not start pcscd: it is not ours to kill");
        let _ = pcscd.kill();
        let _ = pcscd.wait();
        if let Some(mut child) = self.pivemu.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts pcscd again (after [`VirtualCard::kill_pcscd`]) and inserts the card.
    pub fn start_pcscd(&mut self) {
        assert!(self.pcscd.is_none(), "pcscd is already ours and running");
        self.pcscd = start_pcscd(self.dir.path());
        self.insert();
    }

    /// `yubico-piv-tool -r <reader> ARGS` in the card's directory; panics unless it succeeds.
    pub fn piv_tool(&self, args: &[&str]) -> std::process::Output {
        let out = run(Command::new("yubico-piv-tool")
            .arg("-r")
            .arg(VIRTUAL_READER)
            .args(args)
            .current_dir(self.dir.path()));
        assert_ok(&out, &format!("yubico-piv-tool {}", args.join(" ")));
        out
    }

    /// Generates a key in `slot` (`ECCP256`, `RSA2048`, …) and has `ca` certify it as an
    /// S/MIME certificate for `email`, imported into the slot. Returns the certificate.
    pub fn provision(&self, ca: &SoftCa, slot: &str, alg: &str, cn: &str, email: &str) -> PathBuf {
        let public = self.file(&format!("{slot}.pub.pem"));
        self.piv_tool(&[
            "-a",
            "generate",
            "-s",
            slot,
            "-A",
            alg,
            "-o",
            crate::s(&public),
        ]);
        let kind = if alg.starts_with("RSA") {
            SoftKey::Rsa
        } else {
            SoftKey::P256
        };
        let cert = ca.issue_to(&format!("card-{slot}"), cn, email, kind, &public);
        self.piv_tool(&[
            "-a",
            "import-certificate",
            "-s",
            slot,
            "-i",
            crate::s(&cert),
        ]);
        cert
    }
}

impl Default for VirtualCard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        if let Some(mut child) = self.pivemu.take() {
            let _ = child.kill();
            let _ = child.wait();
            // A reused pcscd outlives this card: leave its reader empty for the next one.
            let start = Instant::now();
            while Self::present() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(mut child) = self.pcscd.take() {
            // SIGTERM: pcscd removes its socket and pid file on the way out.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Starts `pcscd --foreground` unless one is running; returns the child it started.
fn start_pcscd(dir: &Path) -> Option<Child> {
    if pcscd_running() {
        return None;
    }
    let mut child = Command::new("pcscd")
        .args(["--foreground", "--error"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("pcscd.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("pcscd.err")).unwrap())
        .spawn()
        .expect("pcscd is not installed (Debian packages pcscd and vsmartcard-vpcd)");
    let start = Instant::now();
    while !Path::new(PCSCD_SOCKET).exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "pcscd exited ({st}): {}{}",
                std::fs::read_to_string(dir.join("pcscd.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("pcscd.err")).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pcscd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child)
}

/// Whether a pcscd (or systemd's socket for one) answers on `/run/pcscd`. A stale socket
/// left by a killed pcscd is removed, so that a new one can start.
fn pcscd_running() -> bool {
    if std::os::unix::net::UnixStream::connect(PCSCD_SOCKET).is_ok() {
        return true;
    }
    let _ = std::fs::remove_file(PCSCD_SOCKET);
    false
}

impl SoftCa {
    /// Issues an S/MIME certificate (as [`SoftCa::issue`]) to an existing public key
    /// (`openssl x509 -req -force_pubkey`): for keys made on a card. Returns `DIR/FILE.pem`.
    pub fn issue_to(
        &self,
        file: &str,
        cn: &str,
        email: &str,
        kind: SoftKey,
        public: &Path,
    ) -> PathBuf {
        // The request only carries the subject; its key is replaced by the card's.
        let csr = format!("{file}.csr");
        crate::openssl_in(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "/dev/null",
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        let ext = crate::leaf_ext(&self.dir, file, kind, email);
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let cert = format!("{file}.pem");
        crate::openssl_in(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-force_pubkey",
                crate::s(public),
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
                &cert,
            ],
        );
        self.dir.join(cert)
    }
}
