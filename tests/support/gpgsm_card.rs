//! gpgsm as a *peer* on the test token: gpg-agent with gnupg-pkcs11-scd as its scdaemon,
//! pointed at the same SoftHSM token the agent uses, so gpgsm signs and decrypts with the
//! on-token keys (RSA only: gnupg-pkcs11-scd 0.10 does not do EC).
//!
//! Setup, in a throwaway `GNUPGHOME` (0700):
//! - `gpg-agent.conf`: `scdaemon-program /usr/bin/gnupg-pkcs11-scd`, and as
//!   `pinentry-program` a script in the home that speaks just enough Assuan to answer
//!   `GETPIN` with the token's PIN;
//! - `gnupg-pkcs11-scd.conf`: `providers p1`, `provider-p1-library <SoftHSM module>`;
//! - `gpgsm.conf`: `disable-crl-checks` (the test CA publishes no CRL);
//! - gpg-agent started by hand (`--daemon`, stdio on /dev/null, else it holds our pipes) with
//!   `SOFTHSM2_CONF` in its environment: gpg-agent passes its environment on to the scdaemon
//!   it spawns, and that is the only way the token's config reaches SoftHSM there;
//! - ca.pem and the leaf certificates imported, the CA trusted in `trustlist.txt`;
//! - `gpgsm --learn-card`, which writes the shadowed-key stubs (`private-keys-v1.d`) that
//!   make gpgsm divert signing and decryption to the card.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{Gpgsm, Token, run, softhsm_module};

/// Seconds any single gpg-agent/gpgsm invocation may take before `timeout` kills it.
const GPG_TIMEOUT_SECS: &str = "60";

/// SHA-1 fingerprint of a PEM certificate as gpgsm prints it without colons (40 upper-case
/// hex digits); gpgsm takes it for `-u`/`-r`.
pub fn sha1_fingerprint(cert: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(cert));
    crate::assert_ok(
        &out,
        &format!("openssl x509 -fingerprint {}", cert.display()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let fpr = text.trim().rsplit('=').next().unwrap().replace(':', "");
    assert_eq!(fpr.len(), 40, "unexpected fingerprint output: {text}");
    fpr.to_ascii_uppercase()
}

/// Assuan percent-escaping for a `D` line.
fn assuan_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '%' | '\r' | '\n' => write!(out, "%{:02X}", c as u32).unwrap(),
            _ => out.push(c),
        }
    }
    out
}

/// Single-quoted for `/bin/sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Gpgsm {
    /// A gpgsm home whose gpg-agent reaches `token` through gnupg-pkcs11-scd: gpgsm can sign
    /// and decrypt with the token's RSA keys (alice-rsa, bob-rsa). Trusts the token's CA.
    /// Keep `token` alive as long as this; dropping this kills gpg-agent and the scdaemon.
    pub fn with_token(token: &Token) -> Self {
        for tool in [
            "/usr/bin/gnupg-pkcs11-scd",
            "/usr/bin/gpg-agent",
            "/usr/bin/gpgsm",
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install gnupg-pkcs11-scd gpgsm gpg-agent \
                 (scripts/deps.sh)"
            );
        }
        let home = tempfile::Builder::new().prefix("gpgsm-").tempdir().unwrap();
        let h = home.path();
        std::fs::set_permissions(h, PermissionsExt::from_mode(0o700)).unwrap();

        // The token's SoftHSM config, at a path derived from the home, so every gpgsm call
        // (and a gpg-agent gpgsm might have to autostart) gets it too.
        std::fs::copy(token.file("softhsm2.conf"), h.join("softhsm2.conf")).unwrap();

        let pinentry = h.join("pinentry");
        std::fs::write(
            &pinentry,
            format!(
                "#!/bin/sh\n\
                 # Minimal Assuan pinentry for tests: the token PIN for GETPIN, OK to the rest.\n\
                 PIN={pin}\n\
                 echo 'OK Pleased to meet you'\n\
                 while IFS= read -r line; do\n\
                 \x20   case \"$line\" in\n\
                 \x20       GETPIN*) printf 'D %s\\nOK\\n' \"$PIN\" ;;\n\
                 \x20       BYE*) echo OK; exit 0 ;;\n\
                 \x20       *) echo OK ;;\n\
                 \x20   esac\n\
                 done\n",
                pin = sh_quote(&assuan_escape(&token.pin())),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&pinentry, PermissionsExt::from_mode(0o700)).unwrap();

        std::fs::write(
            h.join("gpg-agent.conf"),
            format!(
                "scdaemon-program /usr/bin/gnupg-pkcs11-scd\n\
                 pinentry-program {}\n\
                 log-file {}\n",
                pinentry.display(),
                h.join("gpg-agent.log").display()
            ),
        )
        .unwrap();
        std::fs::write(
            h.join("gnupg-pkcs11-scd.conf"),
            format!(
                "providers p1\n\
                 provider-p1-library {}\n\
                 log-file {}\n",
                softhsm_module().display(),
                h.join("scd.log").display()
            ),
        )
        .unwrap();
        std::fs::write(h.join("gpgsm.conf"), "disable-crl-checks\n").unwrap();
        let ca = token.file("ca.pem");
        std::fs::write(
            h.join("trustlist.txt"),
            format!("{} S relax\n", colon_fpr(&sha1_fingerprint(&ca))),
        )
        .unwrap();

        let g = Self { home };

        // gpg-agent --daemon forks and the parent exits once the socket listens; all three
        // standard streams on /dev/null, else the daemon keeps the test's pipes open.
        let st = g
            .timed("gpg-agent")
            .args(["--daemon"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "gpg-agent --daemon failed ({st}){}", g.logs());

        let mut import: Vec<PathBuf> = vec![ca];
        for leaf in ["alice-rsa.pem", "alice-ec.pem", "bob-rsa.pem"] {
            import.push(token.file(leaf));
        }
        let mut args = vec!["--import"];
        args.extend(import.iter().map(|p| p.to_str().unwrap()));
        g.expect_ok(&args, "gpgsm --import");
        g.expect_ok(&["--learn-card"], "gpgsm --learn-card");

        // Both RSA keys must now be usable as secret keys (diverted to the card).
        let secret = g.expect_ok(&["--with-colons", "--list-secret-keys"], "gpgsm -K");
        let listing = String::from_utf8_lossy(&secret.stdout);
        for leaf in ["alice-rsa.pem", "bob-rsa.pem"] {
            let fpr = sha1_fingerprint(&token.file(leaf));
            assert!(
                listing.contains(&fpr),
                "gpgsm --learn-card did not make {leaf} ({fpr}) a secret key:\n{listing}{}",
                g.logs()
            );
        }
        g
    }

    /// The `GNUPGHOME` directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// A command running `program` under `timeout` in this home (with the token's
    /// `SOFTHSM2_CONF` when there is one).
    fn timed(&self, program: &str) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", GPG_TIMEOUT_SECS, program])
            .env("GNUPGHOME", self.home())
            .env_remove("GPG_AGENT_INFO");
        let conf = self.home().join("softhsm2.conf");
        if conf.exists() {
            cmd.env("SOFTHSM2_CONF", conf);
        }
        cmd
    }

    /// Runs `gpgsm --batch --disable-dirmngr ARGS…` in this home, killed after 60 s.
    pub fn run_timed(&self, args: &[&str]) -> Output {
        run(self
            .timed("gpgsm")
            .args(["--batch", "--disable-dirmngr"])
            .args(args.iter().map(OsStr::new)))
    }

    /// As [`Gpgsm::run_timed`]; panics unless gpgsm exited 0, with its output and the
    /// gpg-agent and scdaemon logs.
    pub fn expect_ok(&self, args: &[&str], what: &str) -> Output {
        let out = self.run_timed(args);
        if !out.status.success() {
            let why = if out.status.code() == Some(124) || out.status.code() == Some(137) {
                format!("timed out after {GPG_TIMEOUT_SECS} s")
            } else {
                out.status.to_string()
            };
            panic!(
                "{what} failed ({why}): gpgsm {}\nstdout: {}\nstderr: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
        }
        out
    }

    /// The tails of the gpg-agent and scdaemon logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["gpg-agent.log", "scd.log"] {
            if let Ok(text) = std::fs::read_to_string(self.home().join(name)) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(30)..];
                write!(
                    s,
                    "\n--- {name} (last {} lines) ---\n{}",
                    tail.len(),
                    tail.join("\n")
                )
                .unwrap();
            }
        }
        s
    }
}

/// `AABB…` → `AA:BB:…`, the form trustlist.txt takes.
fn colon_fpr(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}
