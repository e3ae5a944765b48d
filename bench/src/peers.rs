//! The peers on the same token: `openssl cms` through the pkcs11 engine, and gpgsm through
//! gpg-agent with gnupg-pkcs11-scd as its scdaemon.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

use crate::Env;

/// The pkcs11 engine of `libengine-pkcs11-openssl`.
pub(crate) const ENGINE: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";

/// An `openssl` command that can use the token's keys (`-engine pkcs11 -keyform engine`).
#[derive(Debug)]
pub(crate) struct OpenSsl {
    cnf: PathBuf,
    conf: PathBuf,
    pub(crate) key_uri: String,
}

impl OpenSsl {
    /// Writes an openssl.cnf whose engine section points the pkcs11 engine at SoftHSM
    /// (without MODULE_PATH it would load p11-kit-proxy).
    pub(crate) fn new(env: &Env) -> anyhow::Result<Self> {
        ensure!(
            Path::new(ENGINE).exists(),
            "{ENGINE} missing: apt-get install libengine-pkcs11-openssl"
        );
        let cnf = env.work.join("openssl.cnf");
        std::fs::write(
            &cnf,
            format!(
                "openssl_conf = openssl_init\n\
                 [openssl_init]\nengines = engine_section\n\
                 [engine_section]\npkcs11 = pkcs11_section\n\
                 [pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {ENGINE}\n\
                 MODULE_PATH = {}\ninit = 0\n",
                env.module.display()
            ),
        )?;
        Ok(Self {
            cnf,
            conf: env.conf.clone(),
            key_uri: format!(
                "pkcs11:token={};object=alice-rsa;type=private;pin-value={}",
                crate::TOKEN_LABEL,
                env.pin
            ),
        })
    }

    /// Adds the environment the engine needs.
    pub(crate) fn prep(&self, cmd: &mut Command) {
        cmd.env("OPENSSL_CONF", &self.cnf)
            .env("SOFTHSM2_CONF", &self.conf);
    }

    /// `openssl ARGS` with the engine configured.
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("openssl");
        c.args(args);
        self.prep(&mut c);
        c
    }
}

/// A throwaway gpgsm home whose gpg-agent reaches the token through gnupg-pkcs11-scd.
#[derive(Debug)]
pub(crate) struct Gpgsm {
    home: PathBuf,
    conf: PathBuf,
    /// SHA-1 fingerprint of alice-rsa.pem, for `-u`.
    pub(crate) signer: String,
}

fn sha1_fpr(cert: &Path) -> anyhow::Result<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(cert)
        .output()?;
    ensure!(out.status.success(), "openssl x509 -fingerprint failed");
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .to_owned())
}

impl Gpgsm {
    pub(crate) fn setup(env: &Env) -> anyhow::Result<Self> {
        for tool in [
            "/usr/bin/gnupg-pkcs11-scd",
            "/usr/bin/gpg-agent",
            "/usr/bin/gpgsm",
        ] {
            ensure!(Path::new(tool).exists(), "{tool} is not installed");
        }
        // Short path: gpg-agent's socket lives in the home.
        let home = env.work.join("g");
        std::fs::create_dir_all(&home)?;
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let pinentry = home.join("pinentry");
        std::fs::write(
            &pinentry,
            format!(
                "#!/bin/sh\necho 'OK Pleased to meet you'\n\
                 while IFS= read -r line; do\n  case \"$line\" in\n\
                 \x20   GETPIN*) printf 'D %s\\nOK\\n' '{}' ;;\n\
                 \x20   BYE*) echo OK; exit 0 ;;\n\
                 \x20   *) echo OK ;;\n  esac\ndone\n",
                env.pin
            ),
        )?;
        std::fs::set_permissions(
            &pinentry,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        std::fs::write(
            home.join("gpg-agent.conf"),
            format!(
                "scdaemon-program /usr/bin/gnupg-pkcs11-scd\npinentry-program {}\n",
                pinentry.display()
            ),
        )?;
        std::fs::write(
            home.join("gnupg-pkcs11-scd.conf"),
            format!(
                "providers p1\nprovider-p1-library {}\n",
                env.module.display()
            ),
        )?;
        std::fs::write(home.join("gpgsm.conf"), "disable-crl-checks\n")?;
        let ca = env.token.join("ca.pem");
        std::fs::write(
            home.join("trustlist.txt"),
            format!("{} S relax\n", sha1_fpr(&ca)?),
        )?;
        let g = Self {
            home,
            conf: env.conf.clone(),
            signer: sha1_fpr(&env.token.join("alice-rsa.pem"))?.replace(':', ""),
        };
        // gpg-agent --daemon: all three streams on /dev/null, else it holds our pipes.
        let st = g
            .timeout_cmd("gpg-agent")
            .arg("--daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        ensure!(st.success(), "gpg-agent --daemon failed ({st})");
        g.expect_ok(&[
            "--import",
            &ca.to_string_lossy(),
            &env.token.join("alice-rsa.pem").to_string_lossy(),
        ])
        .context("gpgsm --import")?;
        g.expect_ok(&["--learn-card"])
            .context("gpgsm --learn-card")?;
        Ok(g)
    }

    fn timeout_cmd(&self, program: &str) -> Command {
        let mut c = Command::new("timeout");
        c.args(["--kill-after=5", "60", program])
            .env("GNUPGHOME", &self.home)
            .env("SOFTHSM2_CONF", &self.conf)
            .env_remove("GPG_AGENT_INFO");
        c
    }

    fn expect_ok(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self.gpgsm(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// CPU ticks (USER_HZ) used so far by the daemons of this home (gpg-agent and the
    /// scdaemon): not our children, so not in our rusage.
    pub(crate) fn daemon_ticks(&self) -> u64 {
        let want = format!("GNUPGHOME={}", self.home.display());
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut ticks = 0;
        for e in dir.flatten() {
            let p = e.path();
            let Ok(env) = std::fs::read(p.join("environ")) else {
                continue;
            };
            if !env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                continue;
            }
            let st = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
            let after = st.rsplit_once(')').map_or("", |(_, rest)| rest);
            ticks += after
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse::<u64>().ok())
                .sum::<u64>();
        }
        ticks
    }

    /// `gpgsm --batch --disable-dirmngr ARGS`.
    pub(crate) fn gpgsm(&self, args: &[&str]) -> Command {
        let mut c = self.timeout_cmd("gpgsm");
        c.args(["--batch", "--disable-dirmngr"]).args(args);
        c
    }
}

impl Drop for Gpgsm {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "all"])
            .env("GNUPGHOME", &self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
