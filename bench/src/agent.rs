//! The agent as a subprocess, and the same operations over its socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use smime::agent::AgentClient;
use smime_proto::{DecryptAlgorithm, KeyId, SignAlgorithm};

use crate::measure::{Stats, run_threads};
use crate::{Env, Op};

/// A running `smime-agent --foreground`; stopped with SIGTERM on drop.
#[derive(Debug)]
pub(crate) struct Agent {
    child: Option<Child>,
    pub(crate) socket: PathBuf,
    /// From spawn until a client's `Hello` was answered.
    pub(crate) ready: Duration,
}

impl Agent {
    /// Spawns the agent on the token with the PIN file and waits until it answers.
    pub(crate) fn start(env: &Env, name: &str) -> anyhow::Result<Self> {
        let dir = env.work.join("sock");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let socket = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let xdg = env.work.join("xdg"); // no user config file
        std::fs::create_dir_all(&xdg)?;
        let log = std::fs::File::create(env.work.join(format!("{name}.log")))?;
        let mut cmd = Command::new(env.bin.join("smime-agent"));
        cmd.arg("--foreground")
            .arg("--socket")
            .arg(&socket)
            .arg("--module")
            .arg(&env.module)
            .arg("--pin-file")
            .arg(env.token.join("pin"))
            .env("SOFTHSM2_CONF", &env.conf)
            .env("XDG_CONFIG_HOME", &xdg)
            .env_remove("SMIME_AGENT_PIN")
            .env_remove("SMIME_AGENT_PIN_FILE")
            .env_remove("SMIME_AGENT_MODULE")
            .env_remove("SMIME_AGENT_SOCK")
            .env_remove("SMIME_AGENT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let t = Instant::now();
        let child = cmd.spawn().context("spawning smime-agent")?;
        let mut agent = Self {
            child: Some(child),
            socket,
            ready: Duration::ZERO,
        };
        loop {
            if AgentClient::connect(&agent.socket).is_ok() {
                agent.ready = t.elapsed();
                return Ok(agent);
            }
            if let Some(c) = agent.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!(
                    "smime-agent exited ({st}); see {}/{name}.log",
                    env.work.display()
                );
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("smime-agent did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// VmRSS of the agent, KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// A KiB field of /proc/PID/status (`VmRSS:`, `RssAnon:`, …).
    pub(crate) fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {field} in /proc/{}/status", self.pid()))
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The agent's key ids for alice-rsa and alice-ec.
pub(crate) fn key_ids(socket: &Path) -> anyhow::Result<(KeyId, KeyId)> {
    let keys = AgentClient::connect(socket)?.list_keys()?;
    let find = |label: &str| {
        keys.iter()
            .find(|k| k.label == label)
            .map(|k| k.id.clone())
            .ok_or_else(|| anyhow!("the agent does not list {label}"))
    };
    Ok((find("alice-rsa")?, find("alice-ec")?))
}

struct Client {
    conn: AgentClient,
    done: u64,
}

/// `clients` threads, one connection each, doing `op` back to back through the agent.
/// With `reconnect`, each client opens a new connection after that many requests (the
/// agent limits the request rate per connection; a fresh one starts with a full burst).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bench(
    socket: &Path,
    reconnect: Option<u64>,
    rsa: &KeyId,
    ec: &KeyId,
    op: Op,
    clients: usize,
    ct: &[u8],
    warm: Duration,
    dur: Duration,
) -> anyhow::Result<Stats> {
    let workers = (0..clients)
        .map(|_| {
            Ok(Client {
                conn: AgentClient::connect(socket)?,
                done: 0,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    run_threads(workers, warm, dur, &|c: &mut Client| {
        if let Some(n) = reconnect
            && c.done > 0
            && c.done.is_multiple_of(n)
        {
            c.conn = AgentClient::connect(socket)?;
        }
        c.done += 1;
        match op {
            Op::RsaSign => {
                let sig = c
                    .conn
                    .sign(rsa, SignAlgorithm::RsaPkcs1Sha256, &crate::DIGEST)
                    .context("sign")?;
                ensure!(sig.len() == 256, "RSA signature of {} bytes", sig.len());
            }
            Op::EcdsaSign => {
                let sig = c
                    .conn
                    .sign(ec, SignAlgorithm::EcdsaSha256, &crate::DIGEST)
                    .context("sign")?;
                ensure!(!sig.is_empty(), "empty ECDSA signature");
            }
            Op::RsaDecrypt => {
                let pt = c
                    .conn
                    .decrypt(rsa, DecryptAlgorithm::RsaPkcs1, ct)
                    .context("decrypt")?;
                ensure!(
                    pt.expose().len() == 32,
                    "decrypted {} bytes",
                    pt.expose().len()
                );
            }
        }
        Ok(())
    })
}
