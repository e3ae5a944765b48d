//! `smime-bench`: measures smime-agent against the raw token and the peers in one run and
//! writes the results, as ratios, into BENCHMARKS.md. Run through `scripts/bench.sh`, which
//! installs the peers, builds the release binaries and provisions a throwaway token.
//!
//! Phases (each against the same SoftHSM token, one after the other):
//! 1. raw cryptoki in this process, 1 and 2 threads;
//! 2. the same operations through the agent, 1, 8 and 32 clients, and through the socket
//!    floor (the thinnest possible server: read → C_Sign → write, in this process);
//! 3. `smime sign` of 1 KiB vs `openssl cms -sign` (pkcs11 engine) vs gpgsm;
//! 4. large files: sign/verify/encrypt/decrypt vs `openssl cms` and `openssl dgst`;
//! 5. agent start-to-ready and idle RSS.

mod agent;
mod floor;
mod measure;
mod peers;
mod raw;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

use crate::measure::{Stats, median, timed, timed_rss};

/// The token `softhsm-config/provision` creates.
pub(crate) const TOKEN_LABEL: &str = "smime-demo";
/// The signed "digest": any 32 bytes do.
pub(crate) const DIGEST: [u8; 32] = [0x5a; 32];
/// DER DigestInfo prefix for SHA-256 (RFC 8017 §9.2 note 1).
pub(crate) const SHA256_DIGEST_INFO: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const MIB: u64 = 1 << 20;
/// Requests per connection in the "fresh connections" agent runs: below the agent's
/// per-connection burst (server.rs RATE_BURST = 500).
pub(crate) const RECONNECT: u64 = 400;

/// Benchmarks smime-agent and smime against raw PKCS#11, openssl and gpgsm.
#[derive(Debug, Parser)]
#[command(name = "smime-bench")]
struct Opts {
    /// Token directory made by `softhsm-config/provision` (pin, softhsm2.conf, *.pem).
    #[arg(long)]
    token: PathBuf,
    /// Scratch directory (large files, sockets, gpgsm home). Must be short for gpg-agent.
    #[arg(long)]
    work: PathBuf,
    /// Where the release `smime` and `smime-agent` are.
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,
    /// SoftHSM module.
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    module: PathBuf,
    /// Write the results into this file between its smime-bench markers.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measured seconds per throughput cell (after 0.5 s warm-up).
    #[arg(long, default_value_t = 1.0)]
    secs: f64,
    /// Rounds of the raw, socket-floor and agent cells. Each round measures every
    /// operation's raw, floor and agent cells back to back, so a ratio compares cells taken
    /// seconds apart; each cell is reported as its median over the rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Runs of each one-shot command (median).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Agent starts for start-to-ready (median).
    #[arg(long, default_value_t = 10)]
    starts: usize,
    /// Large file sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    sizes: Vec<u64>,
    /// Phases to run (for profiling one of them): raw, agent, floor, cli, large, start.
    /// Not run by default: event-floor (a socket floor with two threads over one epoll of
    /// all connections; printed to stderr only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raw,agent,floor,cli,large,start"
    )]
    phases: Vec<String>,
    /// Operations (rsa-sign, ecdsa-sign, rsa-decrypt) and client counts for the raw, agent
    /// and floor phases, e.g. `--ops ecdsa-sign --clients 1`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rsa-sign,ecdsa-sign,rsa-decrypt"
    )]
    ops: Vec<String>,
    /// Client counts through the agent and the socket floor.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,
    /// Skip gpgsm.
    #[arg(long)]
    skip_gpgsm: bool,
    /// The command that reproduces this run, for the report.
    #[arg(long, default_value = "scripts/bench.sh")]
    command: String,
}

/// Paths and secrets of the run.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) token: PathBuf,
    pub(crate) conf: PathBuf,
    pub(crate) module: PathBuf,
    pub(crate) pin: String,
    pub(crate) bin: PathBuf,
    pub(crate) work: PathBuf,
}

/// A private-key operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    RsaSign,
    EcdsaSign,
    RsaDecrypt,
}

impl Op {
    pub(crate) const ALL: [Op; 3] = [Op::RsaSign, Op::EcdsaSign, Op::RsaDecrypt];
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Op::RsaSign => "rsa-sign",
            Op::EcdsaSign => "ecdsa-sign",
            Op::RsaDecrypt => "rsa-decrypt",
        }
    }
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::RsaSign => "RSA-2048 PKCS#1 sign",
            Op::EcdsaSign => "ECDSA P-256 sign",
            Op::RsaDecrypt => "RSA-2048 PKCS#1 decrypt",
        }
    }
}

pub(crate) type R<T> = Result<T, String>;

fn r<T>(x: anyhow::Result<T>) -> R<T> {
    x.map_err(|e| format!("{e:#}").replace('\n', " "))
}

/// Median wall time of a one-shot command.
#[derive(Debug, Clone)]
pub(crate) struct OneShot {
    pub(crate) median_ms: f64,
    pub(crate) min_ms: f64,
    pub(crate) runs: usize,
}

/// One large-file job by one tool.
#[derive(Debug, Clone)]
pub(crate) struct Large {
    pub(crate) mib: u64,
    pub(crate) job: &'static str,
    pub(crate) tool: &'static str,
    /// Median wall seconds and the largest peak RSS (KiB) over the runs.
    pub(crate) result: R<(f64, u64)>,
}

/// Agent start-up.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub(crate) ready_ms: Vec<f64>,
    pub(crate) rss_ready_kib: Vec<f64>,
    pub(crate) rss_idle_kib: Vec<f64>,
    /// Of the idle RSS: anonymous memory (the rest is mapped files: the binary, libc,
    /// and the module's libraries).
    pub(crate) anon_idle_kib: Vec<f64>,
}

/// CPU used by processes other than this one and its children during a phase.
#[derive(Debug, Clone)]
pub(crate) struct Noise {
    pub(crate) phase: &'static str,
    pub(crate) wall_s: f64,
    /// CPU-seconds of others.
    pub(crate) foreign_cpu_s: f64,
}

/// Everything measured.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) raw: Vec<(Op, usize, R<Stats>)>,
    pub(crate) agent: Vec<(Op, usize, R<Stats>)>,
    pub(crate) agent_fresh: Vec<(Op, usize, R<Stats>)>,
    pub(crate) floor: Vec<(Op, usize, R<Stats>)>,
    pub(crate) cli: Vec<(&'static str, R<OneShot>)>,
    pub(crate) large: Vec<Large>,
    pub(crate) start: Option<R<Start>>,
    pub(crate) meta: Vec<(&'static str, String)>,
    pub(crate) noise: Vec<Noise>,
    pub(crate) loadavg: (String, String),
    pub(crate) command: String,
    pub(crate) secs: f64,
    /// Rounds of the raw, floor and agent cells (each cell is the median of its rounds).
    pub(crate) rounds: usize,
}

/// The rounds of each (operation, clients) cell, in the order first measured.
#[derive(Debug, Default)]
struct Cells(Vec<(Op, usize, Vec<R<Stats>>)>);

impl Cells {
    fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, op: Op, n: usize, s: R<Stats>) {
        match self.0.iter_mut().find(|(o, m, _)| *o == op && *m == n) {
            Some((_, _, v)) => v.push(s),
            None => self.0.push((op, n, vec![s])),
        }
    }

    /// Each cell's median over its rounds ([`measure::median_stats`]); a cell with no
    /// successful round keeps its first error.
    fn medians(self) -> Vec<(Op, usize, R<Stats>)> {
        self.0
            .into_iter()
            .map(|(op, n, v)| {
                let ok: Vec<Stats> = v.iter().filter_map(|s| s.as_ref().ok().cloned()).collect();
                let s = measure::median_stats(&ok).ok_or_else(|| {
                    v.into_iter()
                        .find_map(Result::err)
                        .unwrap_or_else(|| "no rounds".to_owned())
                });
                (op, n, s)
            })
            .collect()
    }
}

impl Results {
    pub(crate) fn raw(&self, op: Op, n: usize) -> Option<&Stats> {
        find(&self.raw, op, n)
    }
    pub(crate) fn agent(&self, op: Op, n: usize) -> Option<&Stats> {
        find(&self.agent, op, n)
    }
    pub(crate) fn agent_fresh(&self, op: Op, n: usize) -> Option<&Stats> {
        find(&self.agent_fresh, op, n)
    }
    pub(crate) fn floor(&self, op: Op, n: usize) -> Option<&Stats> {
        find(&self.floor, op, n)
    }
    pub(crate) fn cli(&self, name: &str) -> Option<&OneShot> {
        self.cli
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, r)| r.as_ref().ok())
    }
    pub(crate) fn large(&self, mib: u64, job: &str, tool: &str) -> Option<(f64, u64)> {
        self.large
            .iter()
            .find(|l| l.mib == mib && l.job == job && l.tool == tool)
            .and_then(|l| l.result.clone().ok())
    }
}

fn find(v: &[(Op, usize, R<Stats>)], op: Op, n: usize) -> Option<&Stats> {
    v.iter()
        .find(|(o, k, _)| *o == op && *k == n)
        .and_then(|(_, _, r)| r.as_ref().ok())
}

/// CPU ticks (USER_HZ, 100 on Linux): (busy ticks of the whole machine, ticks of this
/// process, its waited-for children and the live processes `ours`).
fn cpu_ticks(ours: Option<u32>) -> (u64, u64) {
    let all = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = all
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.iter().take(8).sum::<u64>()
        - f.get(3).copied().unwrap_or(0)
        - f.get(4).copied().unwrap_or(0);
    // Fields after "(comm)" start at field 3 (state); utime, stime, cutime, cstime are
    // fields 14..17.
    let proc_ticks = |pid: &str, fields: usize| -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = st.rsplit_once(')').map_or("", |(_, rest)| rest);
        after
            .split_whitespace()
            .skip(11)
            .take(fields)
            .filter_map(|x| x.parse::<u64>().ok())
            .sum()
    };
    let mut mine = proc_ticks("self", 4);
    if let Some(pid) = ours {
        mine += proc_ticks(&pid.to_string(), 2);
    }
    (busy, mine)
}

struct Phase {
    name: &'static str,
    t: Instant,
    ticks: (u64, u64),
}

impl Phase {
    /// `agent`: a live agent this phase uses (its CPU is ours, not noise).
    fn begin(name: &'static str, agent: Option<u32>) -> Self {
        eprintln!("==> {name}");
        Self {
            name,
            t: Instant::now(),
            ticks: cpu_ticks(agent),
        }
    }
    /// `extra`: ticks of other processes of ours that are gone by now (gpg daemons).
    fn end(self, res: &mut Results, agent: Option<u32>, extra: u64) {
        let (busy, mine) = cpu_ticks(agent);
        let mine = mine + extra;
        let foreign = busy
            .saturating_sub(self.ticks.0)
            .saturating_sub(mine.saturating_sub(self.ticks.1));
        res.noise.push(Noise {
            phase: self.name,
            wall_s: self.t.elapsed().as_secs_f64(),
            foreign_cpu_s: foreign as f64 / 100.0,
        });
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn machine() -> Vec<(&'static str, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1048576.0));
    let dirty = sh("git", &["status", "--porcelain", "--untracked-files=no"]);
    let commit = format!(
        "{}{}",
        sh("git", &["rev-parse", "--short", "HEAD"]),
        if dirty.is_empty() || dirty == "?" {
            ""
        } else {
            " (with uncommitted changes)"
        }
    );
    vec![
        ("date (UTC)", sh("date", &["-u", "+%Y-%m-%d %H:%M"])),
        ("CPU", cpu),
        (
            "nproc",
            std::thread::available_parallelism().map_or("?".into(), |n| n.to_string()),
        ),
        ("memory", mem),
        ("kernel", sh("uname", &["-r"])),
        ("commit", commit),
        ("openssl", sh("openssl", &["version"])),
        ("SoftHSM", sh("softhsm2-util", &["--version"])),
    ]
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let token = std::fs::canonicalize(&opts.token).context("--token")?;
    let conf = token.join("softhsm2.conf");
    // SoftHSM reads SOFTHSM2_CONF once, at C_Initialize in this process: run again with it.
    if std::env::var_os("SOFTHSM2_CONF").as_deref() != Some(conf.as_os_str()) {
        let st = Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("SOFTHSM2_CONF", &conf)
            .status()?;
        std::process::exit(st.code().unwrap_or(1));
    }
    std::fs::create_dir_all(&opts.work)?;
    let env = Env {
        pin: std::fs::read_to_string(token.join("pin"))?
            .trim()
            .to_owned(),
        token,
        conf,
        module: opts.module.clone(),
        bin: std::fs::canonicalize(&opts.bin).context("--bin")?,
        work: std::fs::canonicalize(&opts.work)?,
    };
    for b in ["smime", "smime-agent"] {
        if !env.bin.join(b).exists() {
            bail!(
                "{} missing: cargo build --release --workspace",
                env.bin.join(b).display()
            );
        }
    }
    let warm = Duration::from_millis(500);
    let dur = Duration::from_secs_f64(opts.secs);
    let mut res = Results {
        meta: machine(),
        command: opts.command.clone(),
        secs: opts.secs,
        ..Results::default()
    };
    let load_before = loadavg();
    let phase = |p: &str| opts.phases.iter().any(|x| x == p);
    let ops: Vec<Op> = Op::ALL
        .into_iter()
        .filter(|o| opts.ops.iter().any(|x| x == o.flag()))
        .collect();

    // A 32-byte content key encrypted to alice-rsa (RSAES-PKCS1-v1_5), for the decrypts.
    let key32 = env.work.join("key32");
    std::fs::write(&key32, [0x42u8; 32])?;
    let ct_path = env.work.join("key32.enc");
    timed(
        Command::new("openssl")
            .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
            .arg(env.token.join("alice-rsa.pub.pem"))
            .arg("-in")
            .arg(&key32)
            .arg("-out")
            .arg(&ct_path),
    )?;
    let ct = std::fs::read(&ct_path)?;

    // 1, 2 and 2c: raw, through the agent, and the socket floor, in rounds. Within a round
    // each operation's cells run back to back (raw, floor, agent, agent reconnecting), so
    // the ratios compare cells measured seconds apart on this noisy machine; every cell is
    // the median of its rounds. The module stays logged in here for raw and the floor.
    let rawp = if phase("raw") || phase("floor") || phase("event-floor") {
        Some(raw::Raw::open(&env)?)
    } else {
        None
    };
    let mut main_agent = agent::Agent::start(&env, "bench")?;
    let apid = Some(main_agent.pid());
    let (rsa_id, ec_id) = agent::key_ids(&main_agent.socket)?;
    let p = Phase::begin("raw, socket floor and agent, interleaved", apid);
    let (mut raw_c, mut floor_c, mut agent_c, mut fresh_c) =
        (Cells::new(), Cells::new(), Cells::new(), Cells::new());
    for round in 1..=opts.rounds.max(1) {
        eprintln!("  round {round} of {}", opts.rounds.max(1));
        for &op in &ops {
            if let Some(rawp) = rawp.as_ref().filter(|_| phase("raw")) {
                for n in [1, 2] {
                    let s = r(rawp.bench(op, n, &ct, warm, dur));
                    eprintln!("    raw {} x{n}: {}", op.name(), report::stats_line(&s));
                    raw_c.add(op, n, s);
                }
            }
            let floors = [
                (floor::Server::Threads, "floor"),
                (floor::Server::Events, "event-floor"),
            ];
            for (server, name) in floors {
                let Some(rawp) = rawp.as_ref().filter(|_| phase(name)) else {
                    continue;
                };
                for &n in &opts.clients {
                    let s = r(floor::bench(&env, rawp, server, op, n, &ct, warm, dur));
                    eprintln!("    {name} {} x{n}: {}", op.name(), report::stats_line(&s));
                    // The event floor is for diagnosis: printed, not reported.
                    if server == floor::Server::Threads {
                        floor_c.add(op, n, s);
                    }
                }
            }
            if !phase("agent") {
                continue;
            }
            let cell = |reconnect: Option<u64>, n: usize| {
                r(agent::bench(
                    &main_agent.socket,
                    reconnect,
                    &rsa_id,
                    &ec_id,
                    op,
                    n,
                    &ct,
                    warm,
                    dur,
                ))
            };
            for &n in &opts.clients {
                let s = cell(None, n);
                eprintln!("    agent {} x{n}: {}", op.name(), report::stats_line(&s));
                agent_c.add(op, n, s);
            }
            // The same with a fresh connection every RECONNECT requests: never throttled
            // by the agent's per-connection request rate, so this is the pipeline alone.
            for &n in opts.clients.iter().filter(|&&n| n <= 8) {
                let s = cell(Some(RECONNECT), n);
                eprintln!(
                    "    agent {} x{n}, reconnecting: {}",
                    op.name(),
                    report::stats_line(&s)
                );
                fresh_c.add(op, n, s);
            }
        }
    }
    p.end(&mut res, apid, 0);
    drop(rawp);
    res.raw = raw_c.medians();
    res.floor = floor_c.medians();
    res.agent = agent_c.medians();
    res.agent_fresh = fresh_c.medians();
    res.rounds = opts.rounds.max(1);

    // 3. One-shot CLI signing of 1 KiB, the agent warm.
    let ossl = peers::OpenSsl::new(&env);
    if phase("cli") {
        let p = Phase::begin("one-shot sign, 1 KiB", apid);
        let gpg_ticks = cli_phase(&env, &opts, &main_agent, ossl.as_ref().ok(), &mut res);
        if let Err(e) = &ossl {
            res.cli.push(("openssl", Err(format!("{e:#}"))));
        }
        p.end(&mut res, apid, gpg_ticks);
    }

    // 4. Large files.
    if phase("large") {
        let p = Phase::begin("large files", apid);
        large_phase(&env, &opts, &main_agent, ossl.as_ref().ok(), &mut res)?;
        p.end(&mut res, apid, 0);
    }
    main_agent.stop();

    // 5. Start-up and idle RSS.
    if phase("start") {
        let p = Phase::begin("agent start", None);
        res.start = Some(r(start_phase(&env, opts.starts)));
        p.end(&mut res, None, 0);
    }

    res.loadavg = (load_before, loadavg());
    let text = report::markdown(&res);
    println!("{text}");
    if let Some(out) = &opts.out {
        report::write_into(out, &text)?;
        eprintln!("==> wrote {}", out.display());
    }
    Ok(())
}

/// A one-shot command to time, by name.
type Maker<'a> = (&'static str, Box<dyn FnMut() -> Command + 'a>);

/// Times the commands round-robin (2 warm-up rounds, then `runs` rounds), so slow spells
/// of the machine (fsync latency of the virtual disk, say) hit every tool alike.
fn interleaved(runs: usize, makers: &mut [Maker<'_>]) -> Vec<(&'static str, R<OneShot>)> {
    let mut ms: Vec<Result<Vec<f64>, String>> = makers.iter().map(|_| Ok(vec![])).collect();
    for round in 0..runs + 2 {
        for ((_, make), acc) in makers.iter_mut().zip(ms.iter_mut()) {
            let Ok(v) = acc else { continue };
            match timed(&mut make()) {
                Ok(d) if round >= 2 => v.push(d.as_secs_f64() * 1e3),
                Ok(_) => {}
                Err(e) => *acc = Err(format!("{e:#}")),
            }
        }
    }
    makers
        .iter()
        .zip(ms)
        .map(|((name, _), v)| {
            (
                *name,
                v.map(|v| OneShot {
                    median_ms: median(&v),
                    min_ms: v.iter().copied().fold(f64::INFINITY, f64::min),
                    runs: v.len(),
                }),
            )
        })
        .collect()
}

/// Returns the CPU ticks the gpg daemons used (they are ours, but not our children).
fn cli_phase(
    env: &Env,
    opts: &Opts,
    agent: &agent::Agent,
    ossl: Option<&peers::OpenSsl>,
    res: &mut Results,
) -> u64 {
    let data = env.work.join("1k.bin");
    if let Err(e) = std::fs::write(&data, report::pseudo_random_vec(1024, 7)) {
        res.cli.push(("smime", Err(e.to_string())));
        return 0;
    }
    let ca = env.token.join("ca.pem");
    let cert = env.token.join("alice-rsa.pem");
    let smime_sig = env.work.join("1k.smime.p7s");
    let ossl_sig = env.work.join("1k.openssl.p7s");
    let gpg_sig = env.work.join("1k.gpgsm.p7s").to_string_lossy().into_owned();
    let data_s = data.to_string_lossy().into_owned();

    let gpg = if opts.skip_gpgsm {
        Err(anyhow::anyhow!("skipped (--skip-gpgsm)"))
    } else {
        peers::Gpgsm::setup(env).context("setting up gpgsm with gnupg-pkcs11-scd")
    };

    let mut makers: Vec<Maker<'_>> = vec![(
        "smime",
        Box::new(|| {
            let mut c = Command::new(env.bin.join("smime"));
            c.args(["sign", "--key", "alice-rsa", "--in"])
                .arg(&data)
                .arg("--out")
                .arg(&smime_sig)
                .env("SMIME_AGENT_SOCK", &agent.socket);
            c
        }),
    )];
    if let Some(o) = ossl {
        makers.push((
            "openssl",
            Box::new(|| {
                let mut c = o.cmd(&["cms", "-sign", "-binary", "-outform", "DER"]);
                c.arg("-in")
                    .arg(&data)
                    .arg("-out")
                    .arg(&ossl_sig)
                    .args([
                        "-engine", "pkcs11", "-keyform", "engine", "-inkey", &o.key_uri,
                    ])
                    .arg("-signer")
                    .arg(&cert);
                c
            }),
        ));
    }
    if let Ok(g) = &gpg {
        makers.push((
            "gpgsm",
            Box::new(|| {
                let _ = std::fs::remove_file(&gpg_sig);
                g.gpgsm(&[
                    "-u",
                    &g.signer,
                    "--detach-sign",
                    "--output",
                    &gpg_sig,
                    &data_s,
                ])
            }),
        ));
    }
    let mut results = interleaved(opts.runs, &mut makers);
    drop(makers);

    // The judge: smime's signature must verify.
    if let Some((_, Ok(_))) = results.iter().find(|(n, _)| *n == "smime") {
        let judged = timed(
            Command::new("openssl")
                .args([
                    "cms",
                    "-verify",
                    "-binary",
                    "-inform",
                    "DER",
                    "-purpose",
                    "smimesign",
                ])
                .arg("-in")
                .arg(&smime_sig)
                .arg("-content")
                .arg(&data)
                .arg("-CAfile")
                .arg(&ca)
                .args(["-out", "/dev/null"]),
        );
        if let Err(e) = judged {
            results[0].1 = Err(format!("openssl rejects smime's signature: {e:#}"));
        }
    }
    res.cli.extend(results);
    match gpg {
        Ok(g) => g.daemon_ticks(),
        Err(e) => {
            res.cli.push(("gpgsm", Err(format!("not measured: {e:#}"))));
            0
        }
    }
}

/// Fills `path` with `len` bytes of xorshift output (incompressible, not sparse).
fn make_file(path: &Path, len: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            c.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn large_phase(
    env: &Env,
    opts: &Opts,
    agent: &agent::Agent,
    ossl: Option<&peers::OpenSsl>,
    res: &mut Results,
) -> anyhow::Result<()> {
    let report = env.work.join("time.out");
    let ca = env.token.join("ca.pem");
    let cert = env.token.join("alice-rsa.pem");
    let smime = env.bin.join("smime");
    let openssl = PathBuf::from("openssl");
    for &mib in &opts.sizes {
        let dir = env.work.join(format!("large-{mib}"));
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("data");
        let t = Instant::now();
        make_file(&data, mib * MIB)?;
        eprintln!(
            "    {mib} MiB file made in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let f = |n: &str| dir.join(n);
        // Small files: median of 3. Large ones: best of 2, because on this kind of VM the
        // first write of a GiB of fresh page cache can cost seconds of host page faults
        // (kernel copy_folio_from_iter_atomic), whichever tool happens to run first.
        let (runs, best) = if mib <= 128 { (3, false) } else { (2, true) };
        // (job, tool, program, args); each runs `runs` times.
        let mut jobs: Vec<(&'static str, &'static str, &Path, Vec<std::ffi::OsString>)> = vec![];
        let os = |v: &[&dyn AsRef<std::ffi::OsStr>]| -> Vec<std::ffi::OsString> {
            v.iter().map(|a| a.as_ref().to_owned()).collect()
        };
        jobs.push((
            "hash",
            "openssl dgst",
            &openssl,
            os(&[&"dgst", &"-sha256", &data]),
        ));
        jobs.push((
            "sign",
            "smime",
            &smime,
            os(&[
                &"sign",
                &"--key",
                &"alice-rsa",
                &"--in",
                &data,
                &"--out",
                &f("s.p7s"),
            ]),
        ));
        jobs.push((
            "verify",
            "smime",
            &smime,
            os(&[
                &"verify",
                &"--in",
                &f("s.p7s"),
                &"--content",
                &data,
                &"--trust",
                &ca,
            ]),
        ));
        jobs.push((
            "encrypt",
            "smime",
            &smime,
            os(&[
                &"encrypt",
                &"--der",
                &"--to",
                &cert,
                &"--in",
                &data,
                &"--out",
                &f("s.p7m"),
            ]),
        ));
        jobs.push((
            "decrypt",
            "smime",
            &smime,
            os(&[&"decrypt", &"--in", &f("s.p7m"), &"--out", &f("s.dec")]),
        ));
        if let Some(o) = ossl {
            let uri: &str = &o.key_uri;
            jobs.push((
                "sign",
                "openssl cms",
                &openssl,
                os(&[
                    &"cms",
                    &"-sign",
                    &"-binary",
                    &"-outform",
                    &"DER",
                    &"-in",
                    &data,
                    &"-out",
                    &f("o.p7s"),
                    &"-engine",
                    &"pkcs11",
                    &"-keyform",
                    &"engine",
                    &"-inkey",
                    &uri,
                    &"-signer",
                    &cert,
                ]),
            ));
            jobs.push((
                "verify",
                "openssl cms",
                &openssl,
                os(&[
                    &"cms",
                    &"-verify",
                    &"-binary",
                    &"-inform",
                    &"DER",
                    &"-in",
                    &f("o.p7s"),
                    &"-content",
                    &data,
                    &"-CAfile",
                    &ca,
                    &"-purpose",
                    &"smimesign",
                    &"-out",
                    &"/dev/null",
                ]),
            ));
            jobs.push((
                "encrypt",
                "openssl cms",
                &openssl,
                os(&[
                    &"cms",
                    &"-encrypt",
                    &"-binary",
                    &"-aes-128-gcm",
                    &"-stream",
                    &"-outform",
                    &"DER",
                    &"-in",
                    &data,
                    &"-out",
                    &f("o.p7m"),
                    &"-recip",
                    &cert,
                ]),
            ));
            jobs.push((
                "decrypt",
                "openssl cms",
                &openssl,
                os(&[
                    &"cms",
                    &"-decrypt",
                    &"-binary",
                    &"-inform",
                    &"DER",
                    &"-in",
                    &f("o.p7m"),
                    &"-out",
                    &f("o.dec"),
                    &"-recip",
                    &cert,
                    &"-engine",
                    &"pkcs11",
                    &"-keyform",
                    &"engine",
                    &"-inkey",
                    &uri,
                ]),
            ));
        }
        for (job, tool, prog, args) in &jobs {
            let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            let prep = |c: &mut Command| {
                c.env("SMIME_AGENT_SOCK", &agent.socket);
                if let Some(o) = ossl {
                    o.prep(c);
                }
            };
            let mut walls = vec![];
            let mut rss = 0;
            let mut result = Ok(());
            for _ in 0..runs {
                match timed_rss(&report, prog, &argv, &prep) {
                    Ok((w, k)) => {
                        walls.push(w.as_secs_f64());
                        rss = rss.max(k);
                    }
                    Err(e) => {
                        result = Err(format!("{e:#}"));
                        break;
                    }
                }
            }
            // Round trips must give the input back.
            if result.is_ok() && *job == "decrypt" {
                let out = if *tool == "smime" {
                    f("s.dec")
                } else {
                    f("o.dec")
                };
                let got = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
                if got != mib * MIB {
                    result = Err(format!("decrypted {got} bytes, want {}", mib * MIB));
                }
                let _ = std::fs::remove_file(&out);
            }
            let result = result.map(|()| {
                let w = if best {
                    walls.iter().copied().fold(f64::INFINITY, f64::min)
                } else {
                    median(&walls)
                };
                (w, rss)
            });
            eprintln!(
                "    {mib} MiB {job:<7} {tool:<12} {}",
                match &result {
                    Ok((w, k)) => format!("{w:.3} s, {:.1} MiB peak RSS", *k as f64 / 1024.0),
                    Err(e) => format!("failed: {e}"),
                }
            );
            res.large.push(Large {
                mib,
                job,
                tool,
                result,
            });
        }
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn start_phase(env: &Env, starts: usize) -> anyhow::Result<Start> {
    let mut s = Start {
        ready_ms: vec![],
        rss_ready_kib: vec![],
        rss_idle_kib: vec![],
        anon_idle_kib: vec![],
    };
    for i in 0..starts.max(1) {
        let mut a = agent::Agent::start(env, &format!("start{i}"))?;
        s.ready_ms.push(a.ready.as_secs_f64() * 1e3);
        s.rss_ready_kib.push(a.rss_kib()? as f64);
        std::thread::sleep(Duration::from_millis(500));
        s.rss_idle_kib.push(a.rss_kib()? as f64);
        s.anon_idle_kib.push(a.status_kib("RssAnon:")? as f64);
        a.stop();
    }
    Ok(s)
}
