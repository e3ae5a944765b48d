//! Timing primitives: closed-loop throughput with N threads, medians, peak RSS of a child.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// Result of a closed-loop run: every thread issues one operation after the other.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// Operations completed in the measured window, all threads together.
    pub(crate) ops: u64,
    /// Sum over threads of (ops / elapsed).
    pub(crate) ops_per_s: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

/// Runs `op` on every worker in its own thread: `warm` of warm-up, then `dur` measured.
/// Each worker is a thread's private state (a session, a connection).
pub(crate) fn run_threads<W: Send>(
    workers: Vec<W>,
    warm: Duration,
    dur: Duration,
    op: &(dyn Fn(&mut W) -> anyhow::Result<()> + Sync),
) -> anyhow::Result<Stats> {
    let n = workers.len();
    if n == 0 {
        bail!("no workers");
    }
    let barrier = Barrier::new(n);
    let failed = AtomicBool::new(false);
    type Out = anyhow::Result<(u64, Duration, Vec<Duration>)>;
    let results: Vec<Out> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|mut w| {
                let (barrier, failed) = (&barrier, &failed);
                s.spawn(move || -> Out {
                    let mut err = None;
                    // A failing thread still meets the barriers, so no one waits forever.
                    barrier.wait();
                    let t = Instant::now();
                    while err.is_none() && !failed.load(Ordering::Relaxed) && t.elapsed() < warm {
                        if let Err(e) = op(&mut w) {
                            failed.store(true, Ordering::Relaxed);
                            err = Some(e);
                        }
                    }
                    barrier.wait();
                    let mut lat = Vec::with_capacity(1 << 15);
                    let t0 = Instant::now();
                    let end = t0 + dur;
                    while err.is_none() && !failed.load(Ordering::Relaxed) {
                        let a = Instant::now();
                        if a >= end {
                            break;
                        }
                        match op(&mut w) {
                            Ok(()) => lat.push(a.elapsed()),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                err = Some(e);
                            }
                        }
                    }
                    match err {
                        Some(e) => Err(e),
                        None => Ok((lat.len() as u64, t0.elapsed(), lat)),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("worker thread panicked")))
            })
            .collect()
    });
    let mut ops = 0;
    let mut rate = 0.0;
    let mut all = Vec::new();
    for r in results {
        let (n, el, lat) = r?;
        ops += n;
        rate += n as f64 / el.as_secs_f64();
        all.extend(lat);
    }
    if failed.load(Ordering::Relaxed) {
        bail!("an operation failed");
    }
    all.sort_unstable();
    Ok(Stats {
        ops,
        ops_per_s: rate,
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
    })
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of unsorted samples.
pub(crate) fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of each field over rounds of the same cell (`None` for no rounds): ops/s,
/// p50 and p99 each taken on its own, `ops` summed.
pub(crate) fn median_stats(rounds: &[Stats]) -> Option<Stats> {
    if rounds.is_empty() {
        return None;
    }
    let of = |f: &dyn Fn(&Stats) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    Some(Stats {
        ops: rounds.iter().map(|s| s.ops).sum(),
        ops_per_s: of(&|s| s.ops_per_s),
        p50: Duration::from_secs_f64(of(&|s| s.p50.as_secs_f64())),
        p99: Duration::from_secs_f64(of(&|s| s.p99.as_secs_f64())),
    })
}

/// Runs a prepared command to completion with stdio on /dev/null (stderr kept for errors);
/// returns its wall time.
pub(crate) fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let el = t.elapsed();
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            cmd.get_program().to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(el)
}

/// Wall time and peak RSS (KiB) of `program args` under GNU time (`/usr/bin/time -f %M`).
/// `prep` adds environment to the command.
pub(crate) fn timed_rss(
    report: &Path,
    program: &Path,
    args: &[&std::ffi::OsStr],
    prep: &dyn Fn(&mut Command),
) -> anyhow::Result<(Duration, u64)> {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(report)
        .arg(program)
        .args(args);
    prep(&mut cmd);
    let el = timed(&mut cmd)?;
    let text = std::fs::read_to_string(report).context("reading the GNU time report")?;
    let rss = text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("cannot parse GNU time output {text:?}"))?;
    Ok((el, rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_field_takes_its_own_median() {
        let st = |ops_per_s: f64, p50: u64, p99: u64| Stats {
            ops: 10,
            ops_per_s,
            p50: Duration::from_micros(p50),
            p99: Duration::from_micros(p99),
        };
        let m = median_stats(&[st(100.0, 70, 900), st(300.0, 50, 100), st(200.0, 60, 300)])
            .expect("three rounds");
        assert_eq!(m.ops, 30);
        assert!((m.ops_per_s - 200.0).abs() < 1e-9);
        assert_eq!(m.p50, Duration::from_micros(60));
        assert_eq!(m.p99, Duration::from_micros(300));
        assert!(median_stats(&[]).is_none());
    }

    #[test]
    fn percentiles_and_medians() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_micros(1));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn threads_count_operations() {
        let s = run_threads(
            vec![0u64; 2],
            Duration::from_millis(5),
            Duration::from_millis(20),
            &|n| {
                *n += 1;
                Ok(())
            },
        )
        .expect("run");
        assert!(s.ops > 0 && s.ops_per_s > 0.0);
    }
}
